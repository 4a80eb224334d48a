//! What happens during a local pipeline run, as the scheduler reports it to a [`Reporter`].
//!
//! Events carry job *names* (the instance names of the plan, such as `test 1/3`), never
//! internal ids, so reporters need nothing but this module. Log bytes are the job trace exactly
//! as the coordinator received it: masked, with ANSI colours and GitLab section markers.

use std::time::Duration;

/// A job of the pipeline as the reporter first sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineJob {
    pub name: String,
    pub stage: String,
    /// Why the job will not run (its rules, `when: manual`/`never`, not selected on the
    /// command line); `None` when it is scheduled.
    pub skipped: Option<String>,
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for its stage or its `needs`.
    Pending,
    Running,
    Success,
    Failed,
    /// Failed, but `allow_failure` lets the pipeline go on.
    FailedAllowed,
    /// Not run: an earlier failure, or its `when` did not match the pipeline's state.
    Skipped,
    Canceled,
}

impl JobStatus {
    /// Whether the job will not change any more.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    pub status: JobStatus,
    pub duration: Duration,
    /// The script's exit code, when the job failed with one.
    pub exit_code: Option<i32>,
    /// GitLab's failure reason (`script_failure`, `job_execution_timeout`, …).
    pub failure_reason: Option<String>,
    /// Where the job's full log was saved (`.runnel/logs/…`).
    pub log_file: Option<std::path::PathBuf>,
    /// Why that file is incomplete (for example a full disk): the log is not all there.
    pub log_error: Option<String>,
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The run begins: every job of the plan in stage order, including the skipped ones.
    PipelineStarted {
        stages: Vec<String>,
        jobs: Vec<PipelineJob>,
    },
    /// The runner picked the job up.
    JobStarted { name: String },
    /// Bytes appended to the job's log (masked; may split lines and UTF-8 sequences).
    JobOutput { name: String, bytes: Vec<u8> },
    /// The job reached a final state (also for jobs skipped because an earlier one failed).
    JobFinished { name: String, result: JobResult },
    /// Every job is final.
    PipelineFinished { success: bool, duration: Duration },
}

/// Renders events for a person. Called from one task, in order.
pub trait Reporter: Send {
    /// One event.
    fn event(&mut self, event: &Event);
    /// The run is over (after `PipelineFinished`, or on interruption): restore the terminal,
    /// print what remains.
    fn finish(&mut self);
}
