//! Job endpoints (reference 3.3, 3.5, 3.6): requesting a job, updating its state and
//! appending to its trace, with the official status semantics mapped to outcome enums.
//!
//! This module answers "what did GitLab say"; deciding when to poll, how to chunk the trace
//! and when to retry a final update is the daemon's job.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use runnel_types::{FailureReason, JobId, JobSpec, JobState, JobToken, RunnerToken};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Sent, secret_header};
use crate::error::ApiError;
use crate::info::{InfoWire, RunnerInfo};
use crate::job_response::decode_job;
use crate::observe::Endpoint;
use crate::runners::{RUNNER_TOKEN, json_body};

const JOB_TOKEN: &str = "job-token";
const JOB_STATUS: &str = "Job-Status";
const UPDATE_INTERVAL: &str = "X-GitLab-Trace-Update-Interval";
/// The longest update interval the server may ask for.
const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// The most bytes one trace patch may carry (`DefaultTracePatchLimit`).
pub const TRACE_PATCH_LIMIT: usize = 1024 * 1024;

/// A job request (`POST jobs/request`).
#[derive(Clone, Copy, Debug)]
pub struct JobRequest<'a> {
    /// The runner token.
    pub token: &'a RunnerToken,
    /// The runner manager's system id.
    pub system_id: &'a str,
    /// What to report in `info`.
    pub info: &'a RunnerInfo,
}

/// What a job request produced.
#[derive(Debug)]
pub enum JobRequestResult {
    /// A job to run (201).
    Job(Box<JobSpec>),
    /// No job right now (204).
    NoJob,
    /// The token is not valid (403).
    Forbidden,
    /// GitLab is unavailable (503, after retries).
    Unavailable,
    /// The job was taken by another runner (409).
    Conflict,
    /// The request was cancelled before an answer came.
    Cancelled,
    /// Anything else.
    Failed(ApiError),
    /// A job was assigned (201) but its payload could not be decoded; its id and token could
    /// still be read, so it can be reported failed instead of left pending.
    Undecodable(Box<UndecodableJob>),
}

/// A job whose payload could not be decoded.
#[derive(Debug)]
pub struct UndecodableJob {
    /// The job.
    pub id: JobId,
    /// Its token.
    pub token: JobToken,
    /// Why decoding failed.
    pub error: ApiError,
}

impl JobRequestResult {
    /// Whether the runner should count this as an unhealthy answer: a 403, or a client error
    /// (the request could not even be built).
    pub fn is_unhealthy(&self) -> bool {
        match self {
            Self::Forbidden => true,
            Self::Failed(error) => error.is_client_error(),
            _ => false,
        }
    }
}

/// The job state GitLab reports in the `Job-Status` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteStatus {
    /// The job runs.
    Running,
    /// A cancel was requested: stop the script, still run `after_script`.
    Canceling,
    /// The job was canceled: abort.
    Canceled,
    /// The job failed on the server side: abort.
    Failed,
    /// The job succeeded.
    Success,
}

impl RemoteStatus {
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "running" => Some(Self::Running),
            "canceling" => Some(Self::Canceling),
            "canceled" => Some(Self::Canceled),
            "failed" => Some(Self::Failed),
            "success" => Some(Self::Success),
            _ => None,
        }
    }

    fn is_aborted(self) -> bool {
        matches!(self, Self::Canceled | Self::Failed)
    }
}

/// The trace summary of a job update (`output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// CRC32 (IEEE) of every trace byte stored.
    pub crc32: u32,
    /// Number of trace bytes stored.
    pub bytesize: u64,
}

/// A job update (`PUT jobs/:id`).
#[derive(Clone, Copy, Debug)]
pub struct JobUpdate<'a> {
    /// The job.
    pub job_id: JobId,
    /// The job token.
    pub token: &'a JobToken,
    /// The state to report.
    pub state: JobState,
    /// Why the job failed, already mapped to what the server supports
    /// ([`FailureReason::for_server`]); omitted when `None`.
    pub failure_reason: Option<FailureReason>,
    /// The script exit code; omitted when `None` or 0.
    pub exit_code: Option<i32>,
    /// The trace checksum and size.
    pub output: TraceSummary,
    /// What to report in `info`.
    pub info: &'a RunnerInfo,
}

/// What a job update produced.
#[derive(Debug)]
pub enum UpdateOutcome {
    /// Accepted (200).
    Succeeded,
    /// Accepted but not completed (202): retry after the update interval.
    Accepted,
    /// The trace checksum did not match (412): resend the whole trace, then retry.
    TraceValidationFailed,
    /// Stop the job: 403, 404, or `Job-Status` canceled/failed.
    Abort,
    /// Anything else, after retries.
    Failed(ApiError),
}

/// The answer to a job update.
#[derive(Debug)]
pub struct UpdateResult {
    /// What happened.
    pub outcome: UpdateOutcome,
    /// The remote job state, when the server sent one.
    pub remote_status: Option<RemoteStatus>,
    /// The update interval the server asks for (capped at 15 minutes).
    pub update_interval: Option<Duration>,
}

impl UpdateResult {
    /// Whether the server asks for a graceful cancel (`Job-Status: canceling`).
    pub fn cancel_requested(&self) -> bool {
        self.remote_status == Some(RemoteStatus::Canceling)
    }
}

/// A chunk of trace to append (`PATCH jobs/:id/trace`).
#[derive(Clone, Debug)]
pub struct TracePatch<'a> {
    /// The job.
    pub job_id: JobId,
    /// The job token.
    pub token: &'a JobToken,
    /// Offset of the first byte of `content` in the whole trace.
    pub offset: u64,
    /// The bytes; at most [`TRACE_PATCH_LIMIT`].
    pub content: Bytes,
    /// Whether the job runs with debug tracing (`CI_DEBUG_TRACE`).
    pub debug_trace: bool,
}

/// What a trace patch produced.
#[derive(Debug)]
pub enum PatchOutcome {
    /// Appended (202), or nothing to send. `remote_range_end` is the end of the server's
    /// `Range: 0-N` answer, if any.
    Accepted {
        /// The trace size on the server.
        remote_range_end: Option<u64>,
    },
    /// The server has a different trace size (416): continue from `resume_offset`.
    RangeMismatch {
        /// Where to resume sending.
        resume_offset: u64,
    },
    /// The job is gone (404): stop sending.
    NotFound,
    /// Stop the job: 403 or `Job-Status` canceled/failed.
    Abort,
    /// Anything else, after retries.
    Failed(ApiError),
}

/// The answer to a trace patch.
#[derive(Debug)]
pub struct PatchResult {
    /// What happened.
    pub outcome: PatchOutcome,
    /// The remote job state, when the server sent one.
    pub remote_status: Option<RemoteStatus>,
    /// The update interval the server asks for (capped at 15 minutes).
    pub update_interval: Option<Duration>,
}

impl PatchResult {
    /// Whether the server asks for a graceful cancel (`Job-Status: canceling`).
    pub fn cancel_requested(&self) -> bool {
        self.remote_status == Some(RemoteStatus::Canceling)
    }
}

#[derive(Serialize)]
struct JobRequestWire<'a> {
    info: InfoWire<'a>,
    token: &'a str,
    system_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_update: Option<String>,
}

#[derive(Serialize)]
struct UpdateWire<'a> {
    info: InfoWire<'a>,
    token: &'a str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    output: OutputWire,
}

#[derive(Serialize)]
struct OutputWire {
    checksum: String,
    bytesize: u64,
}

impl Client {
    /// Asks for a job (`POST jobs/request`). A long poll may block for about 50 s; `cancel`
    /// aborts it (the result is then [`JobRequestResult::Cancelled`]).
    pub async fn request_job(
        &self,
        request: &JobRequest<'_>,
        cancel: &CancellationToken,
    ) -> JobRequestResult {
        tokio::select! {
            biased;
            () = cancel.cancelled() => JobRequestResult::Cancelled,
            result = self.request_job_uncancelled(request) => result,
        }
    }

    async fn request_job_uncancelled(&self, request: &JobRequest<'_>) -> JobRequestResult {
        let url = self.endpoint_url("jobs/request");
        let token = request.token.expose();
        let header = match secret_header(&Method::POST, &url, RUNNER_TOKEN, token) {
            Ok(header) => header,
            Err(error) => return JobRequestResult::Failed(error),
        };
        let body = JobRequestWire {
            info: request.info.into(),
            token,
            system_id: request.system_id,
            last_update: self.last_update(),
        };
        let sent = self
            .send(Endpoint::RequestJob, Method::POST, &url, |builder| {
                Ok(json_body(builder, &body).header(header.0.clone(), header.1.clone()))
            })
            .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(error) => return JobRequestResult::Failed(error),
        };
        if sent.header("Gitlab-Ci-Builds-Polling").is_some() {
            tracing::debug!("job request answered by long polling");
        }
        match sent.status() {
            StatusCode::CREATED => job_from(sent).await,
            StatusCode::NO_CONTENT => JobRequestResult::NoJob,
            StatusCode::FORBIDDEN => JobRequestResult::Forbidden,
            StatusCode::CONFLICT => JobRequestResult::Conflict,
            StatusCode::SERVICE_UNAVAILABLE => JobRequestResult::Unavailable,
            _ => JobRequestResult::Failed(sent.unexpected()),
        }
    }

    /// Reports a job's state (`PUT jobs/:id`).
    pub async fn update_job(&self, update: &JobUpdate<'_>) -> UpdateResult {
        let url = self.endpoint_url(&format!("jobs/{}", update.job_id));
        let token = update.token.expose();
        let header = match secret_header(&Method::PUT, &url, JOB_TOKEN, token) {
            Ok(header) => header,
            Err(error) => return UpdateResult::no_answer(error),
        };
        let body = UpdateWire {
            info: update.info.into(),
            token,
            state: update.state.as_str(),
            failure_reason: update.failure_reason.map(FailureReason::as_str),
            exit_code: update.exit_code.filter(|code| *code != 0),
            output: OutputWire {
                checksum: format!("crc32:{:08x}", update.output.crc32),
                bytesize: update.output.bytesize,
            },
        };
        let sent = self
            .send(Endpoint::UpdateJob, Method::PUT, &url, |builder| {
                Ok(json_body(builder, &body).header(header.0.clone(), header.1.clone()))
            })
            .await;
        match sent {
            Ok(sent) => update_result(&sent),
            Err(error) => UpdateResult::no_answer(error),
        }
    }

    /// Appends `patch.content` to a job's trace (`PATCH jobs/:id/trace`). An empty patch is
    /// not sent; a patch over [`TRACE_PATCH_LIMIT`] is refused.
    pub async fn patch_trace(&self, patch: &TracePatch<'_>) -> Result<PatchResult, ApiError> {
        let len = patch.content.len();
        if len > TRACE_PATCH_LIMIT {
            return Err(ApiError::TracePatchTooLarge {
                job_id: patch.job_id,
                len,
                limit: TRACE_PATCH_LIMIT,
            });
        }
        if len == 0 {
            return Ok(PatchResult {
                outcome: PatchOutcome::Accepted {
                    remote_range_end: None,
                },
                remote_status: None,
                update_interval: None,
            });
        }
        let mut url = self.endpoint_url(&format!("jobs/{}/trace", patch.job_id));
        url.query_pairs_mut().append_pair(
            "debug_trace",
            if patch.debug_trace { "true" } else { "false" },
        );
        let (name, value) = secret_header(&Method::PATCH, &url, JOB_TOKEN, patch.token.expose())?;
        let end = patch.offset.saturating_add(len as u64 - 1);
        let content_range = format!("{}-{end}", patch.offset);
        let sent = self
            .send(Endpoint::PatchTrace, Method::PATCH, &url, |builder| {
                Ok(builder
                    .header(name.clone(), value.clone())
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .header(reqwest::header::CONTENT_RANGE, &content_range)
                    .body(patch.content.clone()))
            })
            .await;
        Ok(match sent {
            Ok(sent) => trace_result(&sent),
            Err(error) => PatchResult {
                outcome: PatchOutcome::Failed(error),
                remote_status: None,
                update_interval: None,
            },
        })
    }
}

impl UpdateResult {
    /// The result for a request that got no answer: a client error aborts the job (reference
    /// 3.5), anything else is a failure to retry.
    fn no_answer(error: ApiError) -> Self {
        let outcome = if error.is_client_error() {
            tracing::warn!(%error, "cannot send the job update, aborting the job");
            UpdateOutcome::Abort
        } else {
            UpdateOutcome::Failed(error)
        };
        Self {
            outcome,
            remote_status: None,
            update_interval: None,
        }
    }
}

async fn job_from(sent: Sent) -> JobRequestResult {
    let body = match sent.json_bytes().await {
        Ok(body) => body,
        Err(error) => return JobRequestResult::Failed(error),
    };
    match decode_job(&body) {
        Ok(job) => JobRequestResult::Job(Box::new(job)),
        Err(error) => match crate::job_response::job_identity(&body) {
            Some((id, token)) => {
                JobRequestResult::Undecodable(Box::new(UndecodableJob { id, token, error }))
            }
            None => JobRequestResult::Failed(error),
        },
    }
}

/// Reference 3.5: `Job-Status` canceled/failed and 403 abort first, then the status decides.
fn update_result(sent: &Sent) -> UpdateResult {
    let remote_status = remote_status(sent);
    let status = sent.status();
    let outcome =
        if remote_status.is_some_and(RemoteStatus::is_aborted) || status == StatusCode::FORBIDDEN {
            UpdateOutcome::Abort
        } else {
            match status {
                StatusCode::OK => UpdateOutcome::Succeeded,
                StatusCode::ACCEPTED => UpdateOutcome::Accepted,
                StatusCode::PRECONDITION_FAILED => UpdateOutcome::TraceValidationFailed,
                StatusCode::NOT_FOUND => UpdateOutcome::Abort,
                _ => UpdateOutcome::Failed(sent.unexpected()),
            }
        };
    UpdateResult {
        outcome,
        remote_status,
        update_interval: update_interval(sent),
    }
}

/// Reference 3.6: `Job-Status` canceled/failed and 403 abort first, then the status decides.
fn trace_result(sent: &Sent) -> PatchResult {
    let remote_status = remote_status(sent);
    let status = sent.status();
    let range_end = sent.header("Range").and_then(range_end);
    let outcome =
        if remote_status.is_some_and(RemoteStatus::is_aborted) || status == StatusCode::FORBIDDEN {
            PatchOutcome::Abort
        } else {
            match (status, range_end) {
                (StatusCode::ACCEPTED, _) => PatchOutcome::Accepted {
                    remote_range_end: range_end,
                },
                (StatusCode::RANGE_NOT_SATISFIABLE, Some(resume_offset)) => {
                    PatchOutcome::RangeMismatch { resume_offset }
                }
                (StatusCode::NOT_FOUND, _) => PatchOutcome::NotFound,
                _ => PatchOutcome::Failed(sent.unexpected()),
            }
        };
    PatchResult {
        outcome,
        remote_status,
        update_interval: update_interval(sent),
    }
}

fn remote_status(sent: &Sent) -> Option<RemoteStatus> {
    sent.header(JOB_STATUS).and_then(RemoteStatus::parse)
}

/// `X-GitLab-Trace-Update-Interval` in seconds; non-positive values are ignored.
fn update_interval(sent: &Sent) -> Option<Duration> {
    let seconds: i64 = sent.header(UPDATE_INTERVAL)?.trim().parse().ok()?;
    let seconds = u64::try_from(seconds).ok().filter(|s| *s > 0)?;
    Some(Duration::from_secs(seconds).min(MAX_UPDATE_INTERVAL))
}

/// The `N` of a `Range: 0-N` header.
fn range_end(range: &str) -> Option<u64> {
    let (start, end) = range.trim().split_once('-')?;
    start.trim().parse::<u64>().ok()?;
    end.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_range_headers() {
        assert_eq!(range_end("0-1234"), Some(1234));
        assert_eq!(range_end(" 0-0 "), Some(0));
        assert_eq!(range_end("bytes 0-12"), None);
        assert_eq!(range_end("0-"), None);
        assert_eq!(range_end("garbage"), None);
    }

    #[test]
    fn parses_remote_statuss() {
        assert_eq!(
            RemoteStatus::parse("canceling"),
            Some(RemoteStatus::Canceling)
        );
        assert_eq!(
            RemoteStatus::parse("canceled"),
            Some(RemoteStatus::Canceled)
        );
        assert_eq!(RemoteStatus::parse("weird"), None);
        assert!(RemoteStatus::Failed.is_aborted());
        assert!(!RemoteStatus::Canceling.is_aborted());
    }

    #[test]
    fn unhealthy_only_for_forbidden_and_client_errors() {
        assert!(JobRequestResult::Forbidden.is_unhealthy());
        assert!(!JobRequestResult::Unavailable.is_unhealthy());
        assert!(!JobRequestResult::NoJob.is_unhealthy());
        let client_error = crate::client::api_url("ftp://x").unwrap_err();
        assert!(JobRequestResult::Failed(client_error).is_unhealthy());
    }
}
