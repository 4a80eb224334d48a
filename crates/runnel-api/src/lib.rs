//! The GitLab runner API client: the only code in Runnel that knows the wire format (URLs,
//! headers, status codes, JSON).
//!
//! One [`Client`] serves one runner (one URL and set of credentials): it remembers the
//! `X-GitLab-Last-Update` queue version and echoes it in job requests, retries per one
//! [`RetryPolicy`], and maps each endpoint's statuses to outcome types the way the official
//! runner does.
//!
//! | operation | method |
//! |---|---|
//! | legacy register `POST runners` | [`Client::register_runner`] |
//! | verify `POST runners/verify` | [`Client::verify_runner`] |
//! | unregister `DELETE runners` | [`Client::unregister_runner`] |
//! | unregister manager `DELETE runners/managers` | [`Client::unregister_runner_manager`] |
//! | reset token | [`Client::reset_token`], [`Client::reset_token_with_pat`] |
//! | request a job `POST jobs/request` | [`Client::request_job`] → [`JobRequestResult`] |
//! | update a job `PUT jobs/:id` | [`Client::update_job`] → [`UpdateResult`] |
//! | append trace `PATCH jobs/:id/trace` | [`Client::patch_trace`] → [`PatchResult`] |
//! | upload artifacts `POST jobs/:id/artifacts` | [`Client::upload_artifacts`] |
//! | download artifacts `GET jobs/:id/artifacts` | [`Client::download_artifacts`], [`Client::download_artifacts_to_file`] |
//!
//! Job payloads become [`runnel_types::JobSpec`] (and back, [`encode_job_payload`], for the
//! coordinator `runnel exec` serves); wire structs never leave this crate. What
//! this crate does not do: decide when to poll, chunk or resend traces, retry final updates,
//! or build and extract archives. Those belong to the daemon and the job crates.

mod artifacts;
mod client;
mod error;
mod info;
mod job_payload;
mod job_response;
mod jobs;
mod lenient;
mod observe;
mod retry;
mod runners;
mod tls_chain;

pub use artifacts::{ArtifactDownload, ArtifactUpload};
pub use client::{Client, ClientConfig};
pub use error::{ApiError, SafeUrl};
pub use info::{Features, RunnerInfo};
pub use job_payload::encode_job_payload;
pub use jobs::{
    JobRequest, JobRequestResult, JobUpdate, PatchOutcome, PatchResult, RemoteStatus,
    TRACE_PATCH_LIMIT, TracePatch, TraceSummary, UndecodableJob, UpdateOutcome, UpdateResult,
};
pub use observe::{Endpoint, RequestEvent, RequestObserver};
pub use retry::{RetryPolicy, is_retriable_status, is_retriable_transport};
pub use runners::{RegisterRequest, Registered, ResetToken, VerifyRequest};
pub use tokio_util::sync::CancellationToken;

/// Decodes a `POST jobs/request` payload into the job model, exactly as [`Client::request_job`]
/// does. Useful for tools and tests that hold a payload already.
pub fn decode_job_payload(body: &[u8]) -> Result<runnel_types::JobSpec, ApiError> {
    job_response::decode_job(body)
}
