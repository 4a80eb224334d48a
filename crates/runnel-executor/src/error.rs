//! The one error type every executor returns.
//!
//! A stage whose script exits non-zero is not an error: that is a [`crate::StageExit`]. An
//! [`ExecutorError`] means the runner could not run the stage at all (the shell is missing, a
//! directory cannot be created, a pipe broke), which the caller reports as a system failure.
//! This module does not decide how errors are shown to the user or mapped to failure reasons.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::OutputStream;

/// Why an executor could not prepare, run or clean up.
///
/// Messages state the operation and its object; the underlying cause is only in `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// A shell name that this executor cannot run.
    #[error("unsupported shell `{name}` (supported: bash, sh)")]
    UnsupportedShell {
        /// The name as configured.
        name: String,
    },

    /// `user` is set but the runner cannot switch users.
    #[error("cannot run scripts as user `{user}`: the runner is not running as root")]
    UserRequiresRoot {
        /// The configured user.
        user: String,
    },

    /// `user` is not something `su` would accept as a user name.
    #[error("invalid user name `{user}`")]
    InvalidUser {
        /// The configured user.
        user: String,
    },

    /// A directory the executor needs could not be created.
    #[error("failed to create the {purpose} directory")]
    CreateDir {
        /// What the directory is for (`builds`, `cache`).
        purpose: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause (it names the path too).
        #[source]
        source: io::Error,
    },

    /// The program could not be started (for example, the shell is not installed).
    #[error("failed to start `{program}`")]
    Spawn {
        /// The program, as it was looked up on `PATH`.
        program: String,
        /// The working directory it was to start in, if not the runner's own.
        cwd: Option<PathBuf>,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The child's standard streams could not be attached to the runtime.
    #[error("failed to attach to the standard streams of `{program}`")]
    Pipe {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The runner could not subscribe to `SIGCHLD`, so it cannot tell when a child exits.
    #[error("failed to watch for child process exits")]
    WatchExits {
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Writing the script to the child's stdin failed (other than the child closing it early).
    #[error("failed to write the script to the stdin of `{program}` (pid {pid})")]
    WriteStdin {
        /// The program.
        program: String,
        /// Its process id.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Reading the child's output failed.
    #[error("failed to read the {stream} of `{program}` (pid {pid})")]
    ReadOutput {
        /// The program.
        program: String,
        /// Its process id.
        pid: u32,
        /// Which stream.
        stream: OutputStream,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Collecting the child's exit status failed.
    #[error("failed to collect the exit status of `{program}` (pid {pid})")]
    Reap {
        /// The program.
        program: String,
        /// Its process id.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A failure of an executor backend (the Docker daemon, a Kubernetes cluster, …), with the
    /// failure reason the job should report when it is not a plain system failure.
    #[error("the {executor} executor failed")]
    Backend {
        /// The executor name (`docker`, …).
        executor: &'static str,
        /// The reason to report, such as `ImagePullFailure` or `RunnerConfigurationError`;
        /// `None` means a runner system failure.
        reason: Option<runnel_types::FailureReason>,
        /// The backend's error, which names the operation and its object.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The child was sent `SIGKILL` and still had not exited after `waited`.
    #[error("`{program}` (pid {pid}) did not exit within {waited:?} of SIGKILL")]
    Unkillable {
        /// The program.
        program: String,
        /// Its process id.
        pid: u32,
        /// How long the runner waited after `SIGKILL`.
        waited: Duration,
    },
}
