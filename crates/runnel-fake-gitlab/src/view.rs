//! What tests observe: snapshots of jobs, runners and requests as the fake saw them.
//!
//! Every type here is a plain owned copy taken under the state lock, so reading it never blocks
//! the server. Tokens are kept (tests assert on them) but wrapped in redacting types, or
//! redacted by hand in `Debug`, so a failing assertion does not print them.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use runnel_types::{JobToken, RunnerToken};
use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use crate::faults::Endpoint;

/// The job status as GitLab holds it, sent back in the `Job-Status` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteStatus {
    /// Queued, not yet handed to a runner.
    Pending,
    /// Handed to a runner.
    Running,
    /// Finished successfully (runner reported `success`).
    Success,
    /// Finished with a failure (runner reported `failed`, or the fake failed it).
    Failed,
    /// Cancel requested; the runner should stop the script and still run `after_script`.
    Canceling,
    /// Canceled; the runner must abort at once.
    Canceled,
}

impl RemoteStatus {
    /// The word GitLab uses on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceling => "canceling",
            Self::Canceled => "canceled",
        }
    }

    /// Whether the runner may still update the job (PUT, PATCH, artifacts).
    pub fn accepts_runner_updates(self) -> bool {
        matches!(self, Self::Running | Self::Canceling)
    }

    /// Whether the job reached an end state.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Canceled)
    }
}

impl fmt::Display for RemoteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of a job's remote status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusChange {
    /// The new status.
    pub status: RemoteStatus,
    /// Time since the fake started.
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
}

/// One `PATCH /jobs/:id/trace`, accepted or not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PatchRecord {
    /// First byte offset from `Content-Range`.
    pub start: u64,
    /// Last byte offset (inclusive) from `Content-Range`.
    pub end: u64,
    /// Body length.
    pub len: u64,
    /// Whether this patch restarted the trace at offset 0 after a 412.
    pub reset: bool,
    /// HTTP status the fake answered.
    pub status: u16,
    /// Time since the fake started, at arrival.
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
}

/// One `PUT /jobs/:id`, accepted or not (requests rejected before the body was understood,
/// for a bad token for example, are only in the request log).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpdateRecord {
    /// `running`, `success` or `failed`.
    pub state: String,
    /// `failure_reason`, if sent.
    pub failure_reason: Option<String>,
    /// `exit_code`, if sent (the runner omits 0).
    pub exit_code: Option<i64>,
    /// `output.checksum`, e.g. `crc32:0a1b2c3d`.
    pub checksum: Option<String>,
    /// `output.bytesize`.
    pub bytesize: Option<u64>,
    /// HTTP status the fake answered.
    pub status: u16,
    /// Time since the fake started, at arrival.
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
}

/// One uploaded artifact.
#[derive(Clone, PartialEq, Serialize)]
pub struct ArtifactRecord {
    /// File name of the multipart `file` part.
    pub filename: String,
    /// The uploaded bytes.
    #[serde(skip)]
    pub data: Bytes,
    /// `expire_in` query parameter.
    pub expire_in: Option<String>,
    /// `artifact_format` query parameter.
    pub artifact_format: Option<String>,
    /// `artifact_type` query parameter.
    pub artifact_type: Option<String>,
    /// Time since the fake started, at arrival.
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
}

impl ArtifactRecord {
    /// Whether this is the job's downloadable archive (`artifact_type` absent or `archive`).
    pub fn is_archive(&self) -> bool {
        self.artifact_type.as_deref().is_none_or(|t| t == "archive")
    }
}

impl fmt::Debug for ArtifactRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactRecord")
            .field("filename", &self.filename)
            .field("size", &self.data.len())
            .field("expire_in", &self.expire_in)
            .field("artifact_format", &self.artifact_format)
            .field("artifact_type", &self.artifact_type)
            .field("at", &self.at)
            .finish()
    }
}

/// Everything the fake knows about one job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    /// Job id.
    pub id: u64,
    /// Job token, as the runner must send it in `JOB-TOKEN`.
    pub token: JobToken,
    /// Current remote status.
    pub status: RemoteStatus,
    /// Every status the job had, oldest first, starting with `pending`.
    pub history: Vec<StatusChange>,
    /// The runner the job was handed to.
    pub runner_id: Option<u64>,
    /// The trace as accepted so far.
    pub trace: Vec<u8>,
    /// Every trace PATCH, in arrival order.
    pub patches: Vec<PatchRecord>,
    /// Every job PUT that passed authentication, in arrival order.
    pub updates: Vec<UpdateRecord>,
    /// Every stored upload, in arrival order.
    pub artifacts: Vec<ArtifactRecord>,
}

impl JobView {
    /// The trace as text (invalid UTF-8 replaced).
    pub fn trace_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.trace)
    }

    /// Whether the job is in an end state.
    pub fn is_finished(&self) -> bool {
        self.status.is_final()
    }
}

/// What a job's progress looks like without its trace and upload bodies: cheap to copy, so
/// harnesses can check it as often as they like while a job prints hundreds of megabytes.
/// [`crate::FakeGitlab::trace_since`] reads only the trace bytes not seen yet.
#[derive(Clone, Debug, PartialEq)]
pub struct JobProgress {
    /// Job id.
    pub id: u64,
    /// Current remote status.
    pub status: RemoteStatus,
    /// Every status the job had, oldest first, starting with `pending`.
    pub history: Vec<StatusChange>,
    /// The runner the job was handed to.
    pub runner_id: Option<u64>,
    /// Bytes of trace accepted so far.
    pub trace_len: u64,
    /// Every trace PATCH, in arrival order.
    pub patches: Vec<PatchRecord>,
    /// Every job PUT that passed authentication, in arrival order.
    pub updates: Vec<UpdateRecord>,
    /// How many uploads were stored.
    pub artifacts: usize,
}

impl JobProgress {
    /// The progress part of `view`.
    pub fn of(view: &JobView) -> Self {
        Self {
            id: view.id,
            status: view.status,
            history: view.history.clone(),
            runner_id: view.runner_id,
            trace_len: view.trace.len() as u64,
            patches: view.patches.clone(),
            updates: view.updates.clone(),
            artifacts: view.artifacts.len(),
        }
    }

    /// Whether the job is in an end state.
    pub fn is_finished(&self) -> bool {
        self.status.is_final()
    }
}

/// How a runner came to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerKind {
    /// Registered with a registration token through `POST /runners`; token has no prefix.
    Legacy,
    /// Created "in the UI" with a `glrt-` authentication token.
    Authentication,
}

/// A runner and what it told the fake at registration.
#[derive(Clone, Debug, PartialEq)]
pub struct RunnerView {
    /// Runner id.
    pub id: u64,
    /// Current token (changes on reset).
    pub token: RunnerToken,
    /// How it was created.
    pub kind: RunnerKind,
    /// `description` at registration.
    pub description: String,
    /// Tags (`tag_list` at registration).
    pub tags: Vec<String>,
    /// `run_untagged`.
    pub run_untagged: bool,
    /// `locked`.
    pub locked: bool,
    /// `paused`: a paused runner gets no jobs.
    pub paused: bool,
    /// `access_level` (`not_protected` or `ref_protected`).
    pub access_level: String,
    /// `maximum_timeout` in seconds.
    pub maximum_timeout: Option<u64>,
    /// `maintenance_note`.
    pub maintenance_note: String,
    /// `system_id`s seen on verify / job requests ("runner managers").
    pub managers: Vec<String>,
    /// When the token stops working, if it expires.
    pub token_expires_at: Option<OffsetDateTime>,
}

/// One HTTP request the fake received on the GitLab API (control API calls are not logged).
#[derive(Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// All headers, tokens included, so tests can assert they were sent. `Debug` redacts them.
    pub headers: Vec<(String, String)>,
    /// The request body as received. `Debug` shows only its length (it may hold tokens).
    #[serde(skip)]
    pub body: Bytes,
    /// The API endpoint the request addressed, if any.
    pub endpoint: Option<Endpoint>,
    /// HTTP status answered; `None` when the connection was dropped on purpose.
    pub status: Option<u16>,
    /// Time since the fake started, at arrival.
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
}

/// Header names whose values never appear in `Debug` output.
const SECRET_HEADERS: [&str; 4] = [
    "runner-token",
    "job-token",
    "private-token",
    "authorization",
];

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl fmt::Debug for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(key, value)| {
                let shown = if SECRET_HEADERS.contains(&key.to_ascii_lowercase().as_str()) {
                    "[MASKED]"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("RequestRecord")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .field("endpoint", &self.endpoint)
            .field("status", &self.status)
            .field("at", &self.at)
            .finish()
    }
}

fn as_millis<S: Serializer>(at: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(at.as_millis()).unwrap_or(u64::MAX))
}
