//! What a running job needs from the coordinator, as a narrow trait.
//!
//! The job supervisor and the trace uploader talk to GitLab only through [`JobRemote`]: a state
//! update (`PUT /jobs/:id`) and a trace append (`PATCH /jobs/:id/trace`). The real implementation
//! ([`ApiRemote`]) wraps `runnel-api`; tests use an in-memory one. The reply types here are
//! already interpreted (what should the runner do next?), so no HTTP detail leaks past this file.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_api::{
    Client, JobUpdate, PatchOutcome, RemoteStatus as ApiStatus, RunnerInfo, TracePatch,
    TraceSummary, UpdateOutcome,
};
use runnel_types::{FailureReason, JobId, JobState, JobToken};

/// The job's state as GitLab sees it, from the `Job-Status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RemoteStatus {
    #[default]
    Unknown,
    Running,
    /// A user pressed cancel: stop the script, still run after_script.
    Canceling,
    /// The job is over on GitLab's side: abort everything.
    Gone,
}

/// A state update for `PUT /jobs/:id`.
#[derive(Debug, Clone)]
pub(crate) struct StateUpdate {
    pub(crate) state: JobState,
    pub(crate) failure_reason: Option<FailureReason>,
    pub(crate) exit_code: Option<i32>,
    /// CRC32 (IEEE) of the whole trace.
    pub(crate) crc32: u32,
    pub(crate) bytesize: u64,
}

/// How GitLab answered a state update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpdateReply {
    /// 200: accepted (for a final state: the job is done).
    Accepted,
    /// 202: accepted but not completed yet; ask again after the update interval.
    NotYet,
    /// 412: the trace GitLab holds does not match our checksum; resend it from offset 0.
    ResendTrace,
    /// 403, 404, or `Job-Status` canceled/failed: stop the job, stop talking about it.
    Abort,
    /// Anything else, after the client's own retries: try again later.
    Failed(String),
}

/// How GitLab answered a trace append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatchReply {
    /// 202: appended.
    Accepted,
    /// 416: GitLab holds `resume_at` bytes; continue from there.
    RangeMismatch { resume_at: u64 },
    /// 404: the job's trace is gone; stop sending.
    NotFound,
    /// 403 or `Job-Status` canceled/failed.
    Abort,
    /// Anything else, after the client's own retries: try again later.
    Failed(String),
}

/// A reply plus the hints every job endpoint may carry.
#[derive(Debug, Clone)]
pub(crate) struct Reply<T> {
    pub(crate) outcome: T,
    pub(crate) status: RemoteStatus,
    /// `X-GitLab-Trace-Update-Interval`, already capped.
    pub(crate) update_interval: Option<Duration>,
}

/// The coordinator, as seen by one job.
pub(crate) trait JobRemote: Send + Sync + 'static {
    fn update(&self, update: StateUpdate) -> impl Future<Output = Reply<UpdateReply>> + Send;
    fn patch(&self, offset: u64, bytes: Bytes) -> impl Future<Output = Reply<PatchReply>> + Send;
}

/// [`JobRemote`] over the real API client.
#[derive(Debug, Clone)]
pub(crate) struct ApiRemote {
    pub(crate) client: Arc<Client>,
    pub(crate) job: JobId,
    pub(crate) token: JobToken,
    pub(crate) info: RunnerInfo,
    /// The job's log is a debug trace (`CI_DEBUG_TRACE`): every PATCH says so.
    pub(crate) debug_trace: bool,
}

fn status_of(status: Option<ApiStatus>) -> RemoteStatus {
    match status {
        None => RemoteStatus::Unknown,
        Some(ApiStatus::Running | ApiStatus::Success) => RemoteStatus::Running,
        Some(ApiStatus::Canceling) => RemoteStatus::Canceling,
        Some(ApiStatus::Canceled | ApiStatus::Failed) => RemoteStatus::Gone,
    }
}

impl JobRemote for ApiRemote {
    async fn update(&self, update: StateUpdate) -> Reply<UpdateReply> {
        let request = JobUpdate {
            job_id: self.job,
            token: &self.token,
            state: update.state,
            failure_reason: update.failure_reason,
            exit_code: update.exit_code,
            output: TraceSummary {
                crc32: update.crc32,
                bytesize: update.bytesize,
            },
            info: &self.info,
        };
        let result = self.client.update_job(&request).await;
        // After a final update GitLab reports the state we just set; that is acceptance, not
        // an abort.
        let echoed = matches!(
            (update.state, result.remote_status),
            (JobState::Success, Some(ApiStatus::Success))
                | (JobState::Failed, Some(ApiStatus::Failed))
        );
        let outcome = match result.outcome {
            UpdateOutcome::Abort if echoed => UpdateReply::Accepted,
            UpdateOutcome::Succeeded => UpdateReply::Accepted,
            UpdateOutcome::Accepted => UpdateReply::NotYet,
            UpdateOutcome::TraceValidationFailed => UpdateReply::ResendTrace,
            UpdateOutcome::Abort => UpdateReply::Abort,
            UpdateOutcome::Failed(error) => UpdateReply::Failed(error.to_string()),
        };
        Reply {
            outcome,
            status: if echoed {
                RemoteStatus::Unknown
            } else {
                status_of(result.remote_status)
            },
            update_interval: result.update_interval,
        }
    }

    async fn patch(&self, offset: u64, bytes: Bytes) -> Reply<PatchReply> {
        let patch = TracePatch {
            job_id: self.job,
            token: &self.token,
            offset,
            content: bytes,
            debug_trace: self.debug_trace,
        };
        match self.client.patch_trace(&patch).await {
            Ok(result) => {
                let outcome = match result.outcome {
                    PatchOutcome::Accepted { .. } => PatchReply::Accepted,
                    PatchOutcome::RangeMismatch { resume_offset } => PatchReply::RangeMismatch {
                        resume_at: resume_offset,
                    },
                    PatchOutcome::NotFound => PatchReply::NotFound,
                    PatchOutcome::Abort => PatchReply::Abort,
                    PatchOutcome::Failed(error) => PatchReply::Failed(error.to_string()),
                };
                Reply {
                    outcome,
                    status: status_of(result.remote_status),
                    update_interval: result.update_interval,
                }
            }
            Err(error) => Reply {
                outcome: PatchReply::Failed(error.to_string()),
                status: RemoteStatus::Unknown,
                update_interval: None,
            },
        }
    }
}
