//! Per-request observations for metrics: which endpoint, which status, how long, which attempt.
//!
//! The client calls a [`RequestObserver`] after every attempt, retries included. This module
//! defines the hook only; counting and exporting is the daemon's business.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};

/// The API operations of the client, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST runners` (legacy registration).
    RegisterRunner,
    /// `POST runners/verify`.
    VerifyRunner,
    /// `DELETE runners`.
    UnregisterRunner,
    /// `DELETE runners/managers`.
    UnregisterRunnerManager,
    /// `POST runners/reset_authentication_token`.
    ResetToken,
    /// `POST runners/:id/reset_authentication_token`.
    ResetTokenWithPat,
    /// `POST jobs/request`.
    RequestJob,
    /// `PUT jobs/:id`.
    UpdateJob,
    /// `PATCH jobs/:id/trace`.
    PatchTrace,
    /// `POST jobs/:id/artifacts`.
    UploadArtifacts,
    /// `GET jobs/:id/artifacts`.
    DownloadArtifacts,
}

impl Endpoint {
    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RegisterRunner => "register_runner",
            Self::VerifyRunner => "verify_runner",
            Self::UnregisterRunner => "unregister_runner",
            Self::UnregisterRunnerManager => "unregister_runner_manager",
            Self::ResetToken => "reset_token",
            Self::ResetTokenWithPat => "reset_token_with_pat",
            Self::RequestJob => "request_job",
            Self::UpdateJob => "update_job",
            Self::PatchTrace => "patch_trace",
            Self::UploadArtifacts => "upload_artifacts",
            Self::DownloadArtifacts => "download_artifacts",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt of one request.
#[derive(Clone, Debug)]
pub struct RequestEvent {
    /// The operation.
    pub endpoint: Endpoint,
    /// The HTTP method.
    pub method: Method,
    /// The status, or `None` on a transport error.
    pub status: Option<StatusCode>,
    /// From sending to receiving the response head (or the error).
    pub duration: Duration,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the request will be retried, the wait before the next attempt.
    pub retry_in: Option<Duration>,
}

/// Receives a [`RequestEvent`] after every attempt. Must be cheap and must not block.
pub trait RequestObserver: Send + Sync {
    /// Called once per attempt.
    fn observe(&self, event: &RequestEvent);
}
