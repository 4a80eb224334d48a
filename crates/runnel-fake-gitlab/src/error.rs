//! Errors of the fake's library API (starting it, driving it, waiting on it).
//!
//! HTTP error answers to the runner are not errors of this kind: they are responses, built in
//! `routes`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What can go wrong when a test drives the fake.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The listening socket could not be opened.
    #[error("failed to bind the fake coordinator to {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key of [`crate::FakeTls`] is not usable.
    #[error("invalid TLS setup for the fake coordinator: {message}")]
    Tls {
        /// What was wrong.
        message: String,
    },
    /// A job id the fake never handed out.
    #[error("job {id} does not exist")]
    UnknownJob {
        /// The unknown id.
        id: u64,
    },
    /// A raw payload given to `enqueue_raw` that is not a JSON object.
    #[error("raw job payload must be a JSON object, got {kind}")]
    RawPayloadNotAnObject {
        /// What the payload was instead ("an array", "null"…).
        kind: &'static str,
    },
    /// A repository path that GitLab would not accept (`namespace/project`, no `..`, no
    /// `.git` suffix).
    #[error("invalid repository path {path:?}: {reason}")]
    InvalidRepoPath {
        /// The path asked for.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `create_repo` for a path that already holds a repository.
    #[error("repository {path} already exists")]
    RepoExists {
        /// The repository path.
        path: String,
    },
    /// The directory holding the fake's repositories could not be created.
    #[error("failed to create the directory for git repositories")]
    RepoRoot {
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A file needed to build a commit could not be written.
    #[error("failed to write {path} for repository {repo}")]
    RepoFile {
        /// The repository path.
        repo: String,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// `git` could not be started (not installed?).
    #[error("failed to run `{command}` for repository {repo}")]
    GitSpawn {
        /// The repository path.
        repo: String,
        /// The git command line.
        command: String,
        /// Why it could not run.
        #[source]
        source: std::io::Error,
    },
    /// `git` ran and failed.
    #[error("`{command}` failed for repository {repo} ({status}): {stderr}")]
    GitFailed {
        /// The repository path.
        repo: String,
        /// The git command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// A `wait_for_*` helper whose condition did not hold in time.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}")]
    WaitTimedOut {
        /// What was awaited, e.g. `job 3`.
        what: String,
        /// How long the helper waited.
        timeout: Duration,
        /// The state at the deadline, to make the failure readable.
        last_seen: String,
    },
}
