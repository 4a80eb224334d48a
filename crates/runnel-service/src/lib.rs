//! The runner daemon: polling, job supervision, trace upload, reload and shutdown.
//!
//! [`run`] is `runnel run` and `runnel run-single`: it reads the configuration through a
//! [`ConfigSource`], keeps workers polling GitLab for every runner, runs each job it receives
//! through an executor, streams the job's trace, and reports the final state. It is the only
//! crate that spawns long-lived tasks or listens for signals.
//!
//! It does not parse TOML or JSON itself (`runnel-config` and `runnel-api` do), and it does not
//! generate scripts (`runnel-job` does).

mod cache;
mod daemon;
mod http;
mod job;
mod journal;
mod metrics;
mod remote;
mod rotation;
mod settings;
mod signals;
mod uploader;
mod usage;

use std::time::Duration;

pub use journal::{Journal, JournalError, Undelivered};
pub use metrics::record_log_event;
pub use settings::{
    ConfigSource, FileConfigSource, FixedConfigSource, Overrides, RunnerSpec, ServiceConfig,
};

/// Limits for `run-single`; both unset for `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many jobs.
    pub max_builds: Option<u64>,
    /// Stop after this long without a job.
    pub wait_timeout: Option<Duration>,
    /// Serve metrics here (`--listen-address`); wins over config.toml's `listen_address`.
    pub listen_address: Option<String>,
    /// Fired by an embedding program (`runnel exec`) to stop like SIGQUIT: no new jobs, running
    /// jobs finish, then [`run`] returns.
    pub stop: tokio_util::sync::CancellationToken,
    /// The job journal directory (`--journal-dir`, by default beside config.toml); `None` keeps
    /// jobs in memory only (`runnel exec`, whose coordinator lives in the same process).
    pub journal_dir: Option<std::path::PathBuf>,
    /// Called on a blocking thread each time the daemon has gone idle: no job running and none
    /// received or finished for [`IDLE_AFTER`] (so also once soon after start). `runnel run`
    /// gives memory back there.
    pub on_idle: Option<IdleHook>,
}

/// How long the daemon is without jobs before [`RunOptions::on_idle`] is called.
pub const IDLE_AFTER: Duration = Duration::from_secs(2);

/// What the daemon calls when it goes idle (see [`RunOptions::on_idle`]).
#[derive(Clone)]
pub struct IdleHook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for IdleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdleHook")
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid configuration: {message}")]
    Config { message: String },
    #[error("cannot set up the GitLab client for runner {runner:?}: {message}")]
    Client { runner: String, message: String },
    #[error("cannot listen for {name}")]
    Signal {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("jobs did not finish within shutdown_timeout ({0:?}); exiting anyway")]
    ShutdownTimeout(Duration),
    #[error("forced exit on a repeated stop signal")]
    ForcedExit,
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the final state of {} could not be delivered; kept in the job journal {} for the next start",
        describe_undelivered(.jobs),
        .dir.display()
    )]
    Undelivered {
        jobs: Vec<Undelivered>,
        dir: std::path::PathBuf,
    },
    #[error("internal state lock poisoned")]
    Poisoned,
}

fn describe_undelivered(jobs: &[Undelivered]) -> String {
    jobs.iter()
        .map(|job| {
            if job.url.is_empty() {
                format!("{} ({})", job.job, job.reason)
            } else {
                format!("{} of {} (last error: {})", job.job, job.url, job.reason)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the daemon until a stop signal (or run-single's limits) and until every job has ended.
///
/// `on_reload` is called with every configuration that is applied, first at start (the binary
/// uses it to apply `log_level`).
pub async fn run(
    source: std::sync::Arc<dyn ConfigSource>,
    options: RunOptions,
    on_reload: Box<dyn Fn(&ServiceConfig) + Send + Sync>,
) -> Result<(), ServiceError> {
    daemon::run(source, options, on_reload).await
}
