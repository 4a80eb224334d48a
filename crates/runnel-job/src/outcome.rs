//! How a job ended, and what the runner then says and reports: the final trace line, the job
//! state, the failure reason and the exit code (reference sections 4.1 step 9 and 4.2), plus
//! the other fixed messages the engine prints.
//!
//! Pure strings: colouring and writing them to the trace is the trace writer's business, and
//! mapping the reason onto what the server supports is [`FailureReason::for_server`].

use std::time::Duration;

use runnel_types::{FailureReason, JobState};

use crate::duration::format_go_duration;
use crate::options::ExecutorKind;
use crate::stages::JobStatus;

/// How a job run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Every stage that had to succeed did.
    Success,
    /// A user script exited with a non-zero code.
    ScriptFailure { exit_code: i32 },
    /// The job (or script) deadline passed.
    Timeout { after: Duration },
    /// GitLab asked to cancel the job.
    Canceled,
    /// The runner or executor failed (not the user's script).
    SystemFailure { message: String },
    /// The job could not run for a reason with its own failure reason (an image that cannot be
    /// pulled, a forbidden image or setting).
    Failed {
        message: String,
        reason: FailureReason,
    },
    /// The runner was told to stop (SIGTERM/SIGINT) while the job ran.
    Interrupted { signal: String },
}

/// What the runner reports once a job has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStatus {
    /// The last line of the trace, without colours: `Job succeeded`, `ERROR: Job failed: …`.
    pub trace_line: String,
    /// Whether the line is an error (printed red) or a success (printed green).
    pub is_error: bool,
    /// The state for the final job update.
    pub state: JobState,
    /// The failure reason, before mapping onto what the server supports.
    pub failure_reason: Option<FailureReason>,
    /// The script's exit code, when a script failed.
    pub exit_code: Option<i32>,
}

impl JobOutcome {
    /// `CI_JOB_STATUS` for `after_script`.
    pub fn job_status(&self) -> JobStatus {
        match self {
            Self::Success => JobStatus::Success,
            Self::Timeout { .. } => JobStatus::TimedOut,
            Self::Canceled => JobStatus::Canceled,
            Self::ScriptFailure { .. }
            | Self::SystemFailure { .. }
            | Self::Failed { .. }
            | Self::Interrupted { .. } => JobStatus::Failed,
        }
    }

    /// The final trace line, state, failure reason and exit code, as the official runner
    /// words them for `executor`.
    pub fn final_status(&self, executor: ExecutorKind) -> FinalStatus {
        let failed = |message: String, reason: FailureReason| FinalStatus {
            trace_line: format!("ERROR: Job failed: {message}"),
            is_error: true,
            state: JobState::Failed,
            failure_reason: Some(reason),
            exit_code: None,
        };
        match self {
            Self::Success => FinalStatus {
                trace_line: "Job succeeded".to_owned(),
                is_error: false,
                state: JobState::Success,
                failure_reason: None,
                exit_code: None,
            },
            Self::ScriptFailure { exit_code } => FinalStatus {
                exit_code: Some(*exit_code),
                ..failed(
                    executor.exit_status_text(*exit_code),
                    FailureReason::ScriptFailure,
                )
            },
            Self::Timeout { after } => {
                failed(timeout_message(*after), FailureReason::JobExecutionTimeout)
            }
            Self::Canceled => failed("canceled".to_owned(), FailureReason::JobCanceled),
            Self::SystemFailure { message } => FinalStatus {
                trace_line: format!("ERROR: Job failed (system failure): {message}"),
                ..failed(String::new(), FailureReason::RunnerSystemFailure)
            },
            Self::Failed { message, reason } => failed(message.clone(), *reason),
            Self::Interrupted { signal } => failed(
                format!("aborted: {signal}"),
                FailureReason::RunnerInterrupted,
            ),
        }
    }
}

/// `execution took longer than <d> seconds`, with Go's duration format (`1h0m0s`) as the
/// official runner prints it.
pub fn timeout_message(after: Duration) -> String {
    format!(
        "execution took longer than {} seconds",
        format_go_duration(after)
    )
}

/// `Preparing the "<executor>" executor`.
pub fn preparing_executor_message(executor: ExecutorKind) -> String {
    format!("Preparing the \"{}\" executor", executor.as_str())
}
