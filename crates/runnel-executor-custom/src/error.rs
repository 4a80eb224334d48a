//! What can go wrong with the custom executor, worded for the job log.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use runnel_executor::ExecutorError;
use runnel_types::FailureReason;

/// Why a custom executor step failed. Wrapped into [`ExecutorError::Backend`] with the failure
/// reason the official runner reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustomError {
    /// `executor = "custom"` without a `[runners.custom]` section.
    #[error("custom executor not configured: config.toml has no [runners.custom] section")]
    NotConfigured,

    /// `[runners.custom]` without `run_exec`.
    #[error("custom executor is missing RunExec: set run_exec in [runners.custom]")]
    MissingRunExec,

    /// Neither config.toml nor `config_exec` named a builds directory.
    #[error(
        "the builds_dir is not configured: set builds_dir in [[runners]] or return it from config_exec"
    )]
    BuildsDirNotConfigured,

    /// Neither config.toml nor `config_exec` named a cache directory.
    #[error(
        "the cache_dir is not configured: set cache_dir in [[runners]] or return it from config_exec"
    )]
    CacheDirNotConfigured,

    /// The private temporary directory could not be made.
    #[error("failed to create the custom executor's temporary directory")]
    TempDir(#[source] io::Error),

    /// A file for the driver could not be written or read.
    #[error("failed to {action} {}", path.display())]
    File {
        /// `write`, `read`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A driver program could not be run at all.
    #[error("failed to run {step} ({program})")]
    Run {
        /// `config_exec`, `prepare_exec`, `run_exec`, `cleanup_exec`.
        step: &'static str,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: ExecutorError,
    },

    /// A program exited with `BUILD_FAILURE_EXIT_CODE` outside a stage.
    #[error("{step} failed: exit status {code}")]
    BuildFailure {
        /// Which program.
        step: &'static str,
        /// The build's exit code (from `BUILD_EXIT_CODE_FILE`, or 1).
        code: i32,
    },

    /// A program exited with `SYSTEM_FAILURE_EXIT_CODE`.
    #[error("{step} failed: exit status {code}")]
    SystemFailure {
        /// Which program.
        step: &'static str,
        /// Always `SYSTEM_FAILURE_EXIT_CODE`.
        code: i32,
    },

    /// A program exited with a code the protocol does not define, or was killed by a signal.
    #[error(
        "unknown Custom executor executable exit code {code}; executable execution terminated with: {how} ({step})"
    )]
    UnknownFailure {
        /// Which program.
        step: &'static str,
        /// The exit code (2 for an unreadable `BUILD_EXIT_CODE_FILE`, as officially).
        code: i32,
        /// `exit status N` or `signal N`.
        how: String,
    },

    /// A program ran past its `*_exec_timeout`.
    #[error("{step} did not finish within its timeout of {after:?} and was stopped")]
    Timeout {
        /// Which program.
        step: &'static str,
        /// The timeout.
        after: Duration,
    },

    /// The job was cancelled while a program ran.
    #[error("{step} was stopped: the job was cancelled")]
    Cancelled {
        /// Which program.
        step: &'static str,
    },

    /// `config_exec` printed something that is not the documented JSON.
    #[error("error while parsing JSON output of config_exec")]
    ConfigOutput(#[source] serde_json::Error),

    /// `config_exec` printed more than Runnel reads.
    #[error("the output of config_exec is larger than {limit} bytes")]
    ConfigOutputTooLarge {
        /// The limit.
        limit: usize,
    },

    /// `config_exec` asked for a shell Runnel cannot generate scripts for.
    #[error(
        "config_exec asked for shell {name:?}, which Runnel does not support (supported: bash, sh)"
    )]
    UnsupportedShell {
        /// The shell name.
        name: String,
    },

    /// `config_exec` returned a relative directory.
    #[error("config_exec returned a relative {setting} {path:?}; it must be absolute")]
    RelativeDir {
        /// `builds_dir` or `cache_dir`.
        setting: &'static str,
        /// The value.
        path: String,
    },
}

impl CustomError {
    /// The failure reason the job should report, `None` for a runner system failure.
    fn reason(&self) -> Option<FailureReason> {
        match self {
            CustomError::NotConfigured
            | CustomError::MissingRunExec
            | CustomError::BuildsDirNotConfigured
            | CustomError::CacheDirNotConfigured
            | CustomError::UnsupportedShell { .. }
            | CustomError::RelativeDir { .. } => Some(FailureReason::RunnerConfigurationError),
            CustomError::BuildFailure { .. } => Some(FailureReason::ScriptFailure),
            _ => None,
        }
    }
}

impl From<CustomError> for ExecutorError {
    fn from(error: CustomError) -> Self {
        ExecutorError::Backend {
            executor: "custom",
            reason: error.reason(),
            source: Box::new(error),
        }
    }
}
