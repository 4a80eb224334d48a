//! Errors of a benchmark run: starting the fake or the runner, waiting for jobs, reading /proc.
//!
//! Each error names the scenario step and its object (path, job id, pid). Errors are per
//! scenario: the driver records them in the report and goes on with the next scenario, so one
//! broken measurement does not hide the others.

use std::path::PathBuf;

use runnel_fake_gitlab::FakeError;

/// What can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The fake coordinator could not be started or driven.
    #[error("fake coordinator failed while {doing}")]
    Fake {
        /// The step, e.g. `waiting for job 3 to finish`.
        doing: String,
        /// What the fake reported.
        #[source]
        source: FakeError,
    },
    /// A file or directory of the benchmark could not be written or read.
    #[error("cannot {doing} {path}")]
    Io {
        /// The operation, e.g. `write config`.
        doing: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `runnel` binary could not be started.
    #[error("cannot start runner {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why spawning failed.
        #[source]
        source: std::io::Error,
    },
    /// The runner exited while the scenario still needed it.
    #[error("runner exited early ({status}); last log lines:\n{log_tail}")]
    RunnerExited {
        /// Its exit status.
        status: String,
        /// The end of its stderr log.
        log_tail: String,
    },
    /// A job did not reach the expected state.
    #[error("job {job} {problem}; last runner log lines:\n{log_tail}")]
    Job {
        /// The job id.
        job: u64,
        /// What was wrong, e.g. `ended failed instead of success`.
        problem: String,
        /// The end of the runner's stderr log.
        log_tail: String,
    },
    /// A /proc file of a process could not be read or parsed.
    #[error("cannot read {path}")]
    Proc {
        /// The /proc file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A measurement the scenario needs was not produced (the fake saw no such record).
    #[error("missing measurement: {0}")]
    Missing(String),
    /// A measured command (runnel helper, peer tool, docker CLI) could not run or failed.
    #[error("`{command}` {problem}")]
    Tool {
        /// The command, e.g. `zip -r`.
        command: String,
        /// What went wrong, with the end of its output when there is any.
        problem: String,
    },
    /// The loopback HTTP floor request failed.
    #[error("loopback request to {url} failed")]
    Http {
        /// The URL (the fake's, no credentials).
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
}

impl BenchError {
    /// Wraps a fake error with the step it happened in.
    pub(crate) fn fake(doing: impl Into<String>) -> impl FnOnce(FakeError) -> Self {
        let doing = doing.into();
        move |source| Self::Fake { doing, source }
    }
}
