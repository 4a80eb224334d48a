//! The benchmark scenarios and what they share: the [`Plan`], a fake-plus-runner [`Session`],
//! and helpers to wait for jobs and read times off the fake's records.
//!
//! Times between coordinator events are taken from the fake's own records (`StatusChange`,
//! `UpdateRecord`, `PatchRecord` carry `at`, time since the fake started), so they measure what
//! GitLab would see, not when this process happened to notice. Scenarios do not assert on
//! speed: they report numbers and fail only when a job did not run correctly.

mod archive;
mod docker;
mod e2e;
mod floors;
mod idle;
mod kubernetes;
mod log;
mod peers;
mod pickup;
mod scale;
mod throughput;

pub use peers::default_python_peer;

use std::path::PathBuf;
use std::time::Duration;

use runnel_fake_gitlab::{
    FakeConfig, FakeGitlab, GitStrategy, JobBuilder, JobProgress, JobView, RemoteStatus,
};
use tempfile::TempDir;

use crate::error::BenchError;
use crate::report::{Report, Scenario, ScenarioError};
use crate::runner::{RunnerProcess, RunnerSettings, Stop};

/// Long-poll hold of the fake when long polling is on (Workhorse's default).
const LONG_POLL: Duration = Duration::from_secs(50);
/// How long a runner may take to make its first job request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one trivial job may take before the scenario fails.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run and how big.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The `runnel` binary.
    pub runnel: PathBuf,
    /// Scenarios to run, in [`Scenario::ALL`] order.
    pub scenarios: Vec<Scenario>,
    /// Repetitions of each measurement.
    pub repetitions: u32,
    /// Samples of each floor.
    pub floor_samples: u32,
    /// How long the runner polls before idle memory is read.
    pub idle: Duration,
    /// Trivial jobs per throughput run.
    pub throughput_jobs: u32,
    /// `concurrent` values of the throughput runs.
    pub concurrencies: Vec<u32>,
    /// Jobs running at once in the scale scenario.
    pub scale_jobs: u32,
    /// Seconds each scale job sleeps.
    pub scale_sleep_secs: u32,
    /// How long runner CPU is sampled while the scale jobs sleep.
    pub scale_window: Duration,
    /// Megabytes (10^6 bytes) the log job prints.
    pub log_mb: u32,
    /// The Rust peer (`runnel-bench-peer`); `None` skips it.
    pub rust_peer: Option<PathBuf>,
    /// The Python peer (`gitlab-python-runner`'s `gitlab-runner.py`); `None` skips it.
    pub python_peer: Option<PathBuf>,
    /// Megabytes (10^6 bytes) in the archive scenario's tree.
    pub archive_mb: u32,
    /// Files in the archive scenario's tree.
    pub archive_files: u32,
}

impl Plan {
    /// The full benchmark with the documented defaults.
    pub fn full(runnel: PathBuf) -> Self {
        Self {
            runnel,
            scenarios: Scenario::ALL.to_vec(),
            repetitions: 5,
            floor_samples: 50,
            idle: Duration::from_secs(10),
            throughput_jobs: 1000,
            concurrencies: vec![4, 16, 64],
            scale_jobs: 1000,
            scale_sleep_secs: 600,
            scale_window: Duration::from_secs(5),
            log_mb: 200,
            rust_peer: None,
            python_peer: None,
            archive_mb: 1000,
            archive_files: 50_000,
        }
    }

    /// A tiny version of every scenario, one repetition: for smoke tests.
    pub fn quick(runnel: PathBuf) -> Self {
        Self {
            repetitions: 1,
            floor_samples: 5,
            idle: Duration::from_secs(2),
            throughput_jobs: 12,
            scale_jobs: 6,
            scale_window: Duration::from_secs(1),
            log_mb: 2,
            archive_mb: 4,
            archive_files: 200,
            ..Self::full(runnel)
        }
    }
}

/// Runs every scenario of `plan`, adding samples to `report`; a failing scenario is recorded
/// in `report.errors` and the next one runs.
pub async fn run(plan: &Plan, report: &mut Report) {
    for scenario in Scenario::ALL {
        if !plan.scenarios.contains(&scenario) {
            continue;
        }
        tracing::info!(scenario = scenario.as_str(), "running scenario");
        let result = match scenario {
            Scenario::Floors => floors::run(plan, report).await,
            Scenario::Idle => idle::run(plan, report).await,
            Scenario::Pickup => pickup::run(plan, report).await,
            Scenario::E2e => e2e::run(plan, report).await,
            Scenario::Throughput => throughput::run(plan, report).await,
            Scenario::Scale => scale::run(plan, report).await,
            Scenario::Log => log::run(plan, report).await,
            Scenario::Peers => peers::run(plan, report).await,
            Scenario::Docker => docker::run(plan, report).await,
            Scenario::Kubernetes => kubernetes::run(plan, report).await,
            Scenario::Archive => archive::run(plan, report).await,
        };
        if let Err(error) = result {
            let chain = error_chain(&error);
            tracing::error!(scenario = scenario.as_str(), error = %chain, "scenario failed");
            report.errors.push(ScenarioError {
                scenario,
                error: chain,
            });
        }
    }
}

/// `error: cause: cause…`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A fake coordinator with one runner process polling it.
#[derive(Debug)]
struct Session {
    fake: FakeGitlab,
    runner: RunnerProcess,
    // Dropped last: holds the config, builds dir and runner log.
    _dir: TempDir,
}

impl Session {
    /// Starts a fake (long polling on or off) and a runner, and waits until the runner polls.
    async fn start(
        plan: &Plan,
        long_poll: bool,
        settings: RunnerSettings,
    ) -> Result<Self, BenchError> {
        let fake = FakeGitlab::start(FakeConfig {
            long_poll: if long_poll { LONG_POLL } else { Duration::ZERO },
            ..FakeConfig::default()
        })
        .await
        .map_err(BenchError::fake("starting"))?;
        let dir = scenario_dir()?;
        let mut runner = RunnerProcess::start(&plan.runnel, &fake, settings, dir.path()).await?;
        wait_for_first_poll(&fake, &mut runner, "the runner").await?;
        let session = Self {
            fake,
            runner,
            _dir: dir,
        };
        if long_poll {
            session.wait_for_held_poll().await?;
        }
        Ok(session)
    }

    /// Waits until the runner has a job request held by long polling (it is idle and waiting).
    async fn wait_for_held_poll(&self) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while self.fake.held_job_requests() == 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(BenchError::Missing(
                    "no long-polled job request held by the fake within 60 s".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits until job `id` is final and checks it succeeded; returns the whole job (one copy
    /// of its trace, taken at the end).
    async fn wait_success(&mut self, id: u64, timeout: Duration) -> Result<JobView, BenchError> {
        self.wait_success_progress(id, timeout).await?;
        self.fake
            .job(id)
            .ok_or_else(|| BenchError::Missing(format!("job {id} vanished from the fake")))
    }

    /// Waits until job `id` is final and checks it succeeded, looking only at its progress:
    /// nothing proportional to the trace is copied while the job runs.
    async fn wait_success_progress(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Result<JobProgress, BenchError> {
        let waited = self
            .fake
            .wait_for_job_progress(id, JobProgress::is_finished, timeout)
            .await;
        let progress = match waited {
            Ok(progress) => progress,
            Err(source) => {
                self.runner.check_alive()?;
                return Err(BenchError::Job {
                    job: id,
                    problem: format!("did not finish: {}", error_chain(&source)),
                    log_tail: self.runner.log_tail(),
                });
            }
        };
        if progress.status == RemoteStatus::Success {
            Ok(progress)
        } else {
            Err(BenchError::Job {
                job: id,
                problem: format!(
                    "ended {} instead of success; trace tail: {}",
                    progress.status,
                    trace_tail(&self.fake, &progress)
                ),
                log_tail: self.runner.log_tail(),
            })
        }
    }

    /// Stops the runner and the fake. Graceful: signal, shut the fake down (which answers held
    /// long polls at once, so the runner does not wait out the hold), wait for the runner.
    /// Force: signal, wait for the runner (it reports its canceled jobs), shut the fake down.
    async fn stop(self, how: Stop) {
        self.runner.signal(how);
        match how {
            Stop::Graceful => {
                self.fake.shutdown().await;
                self.runner.wait().await;
            }
            Stop::Force => {
                self.runner.wait().await;
                self.fake.shutdown().await;
            }
        }
    }
}

/// Waits until `runner` (named `who` in the error) has made its first job request; a runner
/// that died instead is reported as such.
pub(crate) async fn wait_for_first_poll(
    fake: &FakeGitlab,
    runner: &mut RunnerProcess,
    who: &str,
) -> Result<(), BenchError> {
    let polled = fake
        .wait_for_request(|r| r.path == "/api/v4/jobs/request", READY_TIMEOUT)
        .await;
    if let Err(source) = polled {
        runner.check_alive()?;
        return Err(BenchError::Fake {
            doing: format!("waiting for {who}'s first job request"),
            source,
        });
    }
    Ok(())
}

/// A fresh scenario directory (kept when `RUNNEL_BENCH_KEEP` is set).
fn scenario_dir() -> Result<TempDir, BenchError> {
    let mut dir = tempfile::Builder::new()
        .prefix("runnel-bench-")
        .tempdir()
        .map_err(|source| BenchError::Io {
            doing: "create temp dir in",
            path: std::env::temp_dir(),
            source,
        })?;
    if std::env::var_os("RUNNEL_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        tracing::info!(dir = %dir.path().display(), "keeping the scenario directory");
    }
    Ok(dir)
}

/// `true` with no git work: the smallest job.
fn trivial_job() -> JobBuilder {
    JobBuilder::new("trivial")
        .script(["true"])
        .git_strategy(GitStrategy::None)
}

/// When the job first had `status` (fake clock).
fn status_at(view: &JobView, status: RemoteStatus) -> Option<Duration> {
    view.history
        .iter()
        .find(|change| change.status == status)
        .map(|change| change.at)
}

/// When the job was enqueued (fake clock).
fn enqueued_at(view: &JobView) -> Result<Duration, BenchError> {
    status_at(view, RemoteStatus::Pending)
        .ok_or_else(|| BenchError::Missing(format!("job {} has no pending entry", view.id)))
}

/// When the runner's first accepted `running` PUT arrived (fake clock).
fn ack_at(view: &JobView) -> Option<Duration> {
    view.updates
        .iter()
        .find(|u| u.state == "running" && (200..300).contains(&u.status))
        .map(|u| u.at)
}

/// The last 400 bytes or so of the job's trace, read without copying the rest.
fn trace_tail(fake: &FakeGitlab, progress: &JobProgress) -> String {
    let bytes = fake
        .trace_since(progress.id, progress.trace_len.saturating_sub(400))
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
