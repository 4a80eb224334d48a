//! Peers: the same metrics for Runnel and for independent runners, measured alternately in
//! one run (Runnel's repetition i, then each peer's repetition i), with per-pair
//! `peer / runnel` ratios.
//!
//! - **Rust peer**: `runnel-bench-peer`, a minimal shell runner on Collabora's `gitlab-runner`
//!   crate (a workspace member, never shipped). Idle RSS, pickup, trivial job, throughput.
//! - **Python peer**: PyPI's `gitlab-python-runner` (`gitlab-runner.py --start CONFIG`), when a
//!   path to it is given. Idle RSS and trivial job. It polls every 40 s (hard-coded) and clones
//!   the job's repository whatever `GIT_STRATEGY` says, so its job comes from a repository on
//!   the fake and is queued before it starts.
//!
//! The peers speak an older, simpler dialect of the runner API (no `RUNNER-TOKEN` header, no
//! trace checksum, …), so their fake runs with [`FakeConfig::lenient_clients`]; Runnel's fake
//! stays strict. Neither peer long-polls. Times are compared where they mean the same for all:
//!
//! - pickup: enqueue to the fake handing the job out (`running` in its history), no long
//!   polling, poll interval 1 s for everyone (Runnel's `check_interval = 1`);
//! - trivial job: from the job being handed out to the accepted `success` (the peers send no
//!   `running` acknowledgement), which leaves polling out;
//! - idle RSS: after `plan.idle` of polling (Runnel long-polls with `check_interval = 3`, the
//!   Rust peer polls every 3 s, the Python peer every 40 s);
//! - throughput: `plan.throughput_jobs` trivial jobs queued at once, `concurrent` 4 and 16.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, FakeGitlab, JobProgress, RemoteStatus};
use tokio::process::Command;
use tokio::time::Instant;

use super::{JOB_TIMEOUT, Plan, Session, millis, trivial_job};
use crate::error::BenchError;
use crate::procfs;
use crate::report::Report;
use crate::runner::{RunnerProcess, RunnerSettings, Stop, write_private};

/// Upper bound for one throughput batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// A trivial job for the Python peer: the clone plus `true` (it cannot skip the clone).
const PYTHON_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Which independent runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// `runnel-bench-peer` (Collabora's `gitlab-runner` crate).
    Rust,
    /// PyPI's `gitlab-python-runner`.
    Python,
}

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    if plan.rust_peer.is_none() && plan.python_peer.is_none() {
        tracing::warn!("no peer runner available; skipping the peers scenario");
        return Ok(());
    }
    idle(plan, report).await?;
    if let Some(peer) = &plan.rust_peer {
        pickup(plan, peer, report).await?;
    }
    e2e(plan, report).await?;
    if let Some(peer) = &plan.rust_peer {
        throughput(plan, peer, report).await?;
    }
    Ok(())
}

/// Idle RSS: a fresh Runnel, then a fresh peer of each kind, per repetition.
async fn idle(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for _ in 0..plan.repetitions {
        let session = Session::start(plan, true, RunnerSettings::default()).await?;
        tokio::time::sleep(plan.idle).await;
        let runnel = idle_rss(session).await?;
        report.record("peers_runnel_idle_rss_kib", runnel);
        if let Some(path) = &plan.rust_peer {
            let session = Session::start_peer(Peer::Rust, path, 3000, 1).await?;
            tokio::time::sleep(plan.idle).await;
            let peer = idle_rss(session).await?;
            report.record("peers_rust_idle_rss_kib", peer);
            report.record("peers_rust_idle_rss_ratio", peer / runnel);
        }
        if let Some(path) = &plan.python_peer {
            let session = Session::start_peer(Peer::Python, path, 40_000, 1).await?;
            tokio::time::sleep(plan.idle).await;
            let peer = idle_rss(session).await?;
            report.record("peers_python_idle_rss_kib", peer);
            report.record("peers_python_idle_rss_ratio", peer / runnel);
        }
    }
    Ok(())
}

async fn idle_rss(mut session: Session) -> Result<f64, BenchError> {
    session.runner.check_alive()?;
    let rss = procfs::rss_kib(session.runner.pid())?;
    session.stop(Stop::Graceful).await;
    #[allow(clippy::cast_precision_loss)]
    Ok(rss as f64)
}

/// Pickup without long polling at a 1 s interval, same enqueue phases for both.
async fn pickup(plan: &Plan, peer: &Path, report: &mut Report) -> Result<(), BenchError> {
    let settings = RunnerSettings {
        check_interval_secs: 1,
        ..RunnerSettings::default()
    };
    let mut runnel = Session::start(plan, false, settings).await?;
    let mut rust = Session::start_peer(Peer::Rust, peer, 1000, 1).await?;
    for rep in 0..plan.repetitions {
        let phase = (f64::from(rep) * 0.618_034).fract();
        let settle = Duration::from_secs_f64(phase);
        let mut pair = [0.0; 2];
        for (slot, session) in [&mut runnel, &mut rust].into_iter().enumerate() {
            tokio::time::sleep(settle).await;
            let id = session.fake.enqueue(trivial_job());
            let progress = session.wait_success_progress(id, JOB_TIMEOUT).await?;
            pair[slot] = millis(handed_out(&progress)?.saturating_sub(enqueued(&progress)?));
        }
        report.record("peers_runnel_pickup_ms", pair[0]);
        report.record("peers_rust_pickup_ms", pair[1]);
        report.record(
            "peers_rust_pickup_ratio",
            pair[1] / pair[0].max(f64::EPSILON),
        );
    }
    runnel.stop(Stop::Graceful).await;
    rust.stop(Stop::Graceful).await;
    Ok(())
}

/// Trivial job, handed out to success: Runnel and the Rust peer stay up; the Python peer is
/// started per repetition with its job already queued.
async fn e2e(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let mut runnel = Session::start(plan, true, RunnerSettings::default()).await?;
    let mut rust = match &plan.rust_peer {
        Some(path) => Some(Session::start_peer(Peer::Rust, path, 1000, 1).await?),
        None => None,
    };
    for _ in 0..plan.repetitions {
        runnel.wait_for_held_poll().await?;
        let id = runnel.fake.enqueue(trivial_job());
        let progress = runnel.wait_success_progress(id, JOB_TIMEOUT).await?;
        let base = handed_out_to_success(&progress)?;
        report.record("peers_runnel_e2e_ms", base);
        if let Some(session) = rust.as_mut() {
            let id = session.fake.enqueue(trivial_job());
            let progress = session.wait_success_progress(id, JOB_TIMEOUT).await?;
            let peer = handed_out_to_success(&progress)?;
            report.record("peers_rust_e2e_ms", peer);
            report.record("peers_rust_e2e_ratio", peer / base.max(f64::EPSILON));
        }
        if let Some(path) = &plan.python_peer {
            let peer = python_e2e(path).await?;
            report.record("peers_python_e2e_ms", peer);
            report.record("peers_python_e2e_ratio", peer / base.max(f64::EPSILON));
        }
    }
    runnel.stop(Stop::Graceful).await;
    if let Some(session) = rust {
        session.stop(Stop::Graceful).await;
    }
    Ok(())
}

/// One trivial job run by a fresh Python peer: `true` in a one-commit repository.
async fn python_e2e(path: &Path) -> Result<f64, BenchError> {
    let (fake, dir) = lenient_fake().await?;
    let repo = fake
        .create_repo("bench/trivial")
        .map_err(BenchError::fake("creating a repository"))?;
    let sha = repo
        .commit("main", "trivial")
        .file("README", "runnel-bench\n")
        .create()
        .map_err(BenchError::fake("committing to the repository"))?;
    // GitLab always sends CI_CONFIG_PATH; the Python peer needs it (the file itself is absent,
    // so it builds the job from the payload's steps).
    let job = trivial_job()
        .repo(&repo, "main", &sha)
        .variable("CI_CONFIG_PATH", ".gitlab-ci.yml");
    let id = fake.enqueue(job);
    let mut session = Session::start_peer_on(Peer::Python, path, 40_000, 1, fake, dir).await?;
    let progress = session
        .wait_success_progress(id, PYTHON_JOB_TIMEOUT)
        .await?;
    let e2e = handed_out_to_success(&progress)?;
    session.stop(Stop::Graceful).await;
    Ok(e2e)
}

/// Throughput at `concurrent` 4 and 16, a fresh Runnel and a fresh Rust peer per repetition
/// and concurrency, alternated.
async fn throughput(plan: &Plan, peer: &Path, report: &mut Report) -> Result<(), BenchError> {
    for _ in 0..plan.repetitions {
        for (concurrent, [runnel_metric, peer_metric, ratio_metric]) in THROUGHPUT_METRICS {
            let settings = RunnerSettings {
                concurrent,
                ..RunnerSettings::default()
            };
            let runnel = Session::start(plan, true, settings).await?;
            let base = jobs_per_second(runnel, plan.throughput_jobs).await?;
            report.record(runnel_metric, base);
            let rust = Session::start_peer(Peer::Rust, peer, 1000, concurrent).await?;
            let peer_rate = jobs_per_second(rust, plan.throughput_jobs).await?;
            report.record(peer_metric, peer_rate);
            report.record(ratio_metric, peer_rate / base.max(f64::EPSILON));
        }
    }
    Ok(())
}

/// The concurrencies of the peers' throughput runs and their metrics (Runnel's, the peer's,
/// the ratio).
const THROUGHPUT_METRICS: [(u32, [&str; 3]); 2] = [
    (
        4,
        [
            "peers_runnel_throughput_c4_jobs_per_s",
            "peers_rust_throughput_c4_jobs_per_s",
            "peers_rust_throughput_c4_ratio",
        ],
    ),
    (
        16,
        [
            "peers_runnel_throughput_c16_jobs_per_s",
            "peers_rust_throughput_c16_jobs_per_s",
            "peers_rust_throughput_c16_ratio",
        ],
    ),
];

/// Queues `jobs` trivial jobs at once; jobs per second from the first enqueue to the last
/// accepted `success`. Stops the session.
async fn jobs_per_second(mut session: Session, jobs: u32) -> Result<f64, BenchError> {
    let ids: Vec<u64> = (0..jobs)
        .map(|_| session.fake.enqueue(trivial_job()))
        .collect();
    let deadline = Instant::now() + BATCH_TIMEOUT;
    let mut first = Duration::MAX;
    let mut last = Duration::ZERO;
    for &id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let progress = session.wait_success_progress(id, left).await?;
        first = first.min(enqueued(&progress)?);
        last = last.max(status_time(&progress, RemoteStatus::Success)?);
    }
    session.stop(Stop::Graceful).await;
    let span = last.saturating_sub(first).as_secs_f64().max(f64::EPSILON);
    Ok(f64::from(jobs) / span)
}

fn status_time(progress: &JobProgress, status: RemoteStatus) -> Result<Duration, BenchError> {
    progress
        .history
        .iter()
        .find(|change| change.status == status)
        .map(|change| change.at)
        .ok_or_else(|| BenchError::Missing(format!("job {} was never {status}", progress.id)))
}

fn enqueued(progress: &JobProgress) -> Result<Duration, BenchError> {
    status_time(progress, RemoteStatus::Pending)
}

/// When the fake handed the job to a runner (its `running` status).
fn handed_out(progress: &JobProgress) -> Result<Duration, BenchError> {
    status_time(progress, RemoteStatus::Running)
}

fn handed_out_to_success(progress: &JobProgress) -> Result<f64, BenchError> {
    let done = status_time(progress, RemoteStatus::Success)?;
    Ok(millis(done.saturating_sub(handed_out(progress)?)))
}

/// A fake that accepts the peers' dialect, without long polling, and a scenario directory.
async fn lenient_fake() -> Result<(FakeGitlab, tempfile::TempDir), BenchError> {
    let fake = FakeGitlab::start(FakeConfig {
        long_poll: Duration::ZERO,
        lenient_clients: true,
        ..FakeConfig::default()
    })
    .await
    .map_err(BenchError::fake("starting"))?;
    Ok((fake, super::scenario_dir()?))
}

impl Session {
    /// A lenient fake and a peer runner polling it every `poll_ms` with room for `concurrent`
    /// jobs; returns once the peer has made its first job request.
    async fn start_peer(
        peer: Peer,
        program: &Path,
        poll_ms: u64,
        concurrent: u32,
    ) -> Result<Self, BenchError> {
        let (fake, dir) = lenient_fake().await?;
        Self::start_peer_on(peer, program, poll_ms, concurrent, fake, dir).await
    }

    /// [`Self::start_peer`] on a given fake and directory.
    async fn start_peer_on(
        peer: Peer,
        program: &Path,
        poll_ms: u64,
        concurrent: u32,
        fake: FakeGitlab,
        dir: tempfile::TempDir,
    ) -> Result<Self, BenchError> {
        let token = fake.create_runner_token();
        let builds = dir.path().join("builds");
        let command = match peer {
            Peer::Rust => {
                let mut command = Command::new(program);
                command
                    .arg(fake.url())
                    .arg("--builds-dir")
                    .arg(&builds)
                    .arg("--concurrent")
                    .arg(concurrent.to_string())
                    .arg("--poll-interval-ms")
                    .arg(poll_ms.to_string())
                    .env("PEER_RUNNER_TOKEN", &token);
                command
            }
            Peer::Python => {
                std::fs::create_dir_all(&builds).map_err(|source| BenchError::Io {
                    doing: "create builds dir",
                    path: builds.clone(),
                    source,
                })?;
                let config = dir.path().join("gitlab-runner.yml");
                let text = python_config(fake.url(), &token, &builds);
                write_private(&config, &text)?;
                let mut command = Command::new(program);
                command.arg("--start").arg(&config);
                command
            }
        };
        let mut runner = RunnerProcess::spawn(command, program, dir.path())?;
        super::wait_for_first_poll(&fake, &mut runner, "the peer").await?;
        Ok(Self {
            fake,
            runner,
            _dir: dir,
        })
    }
}

/// gitlab-python-runner's `gitlab-runner.yml` (YAML; JSON strings are valid YAML scalars).
fn python_config(url: &str, token: &str, builds: &Path) -> String {
    let quote = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    format!(
        "server: {}\ntoken: {}\nexecutor: shell\nshell: bash\ndir: {}\n",
        quote(url),
        quote(token),
        quote(&builds.display().to_string())
    )
}

/// The default Python peer: `gitlab-runner.py` in the venv `scripts/bench.sh` creates.
pub fn default_python_peer() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".cache/runnel-bench/pyrunner/bin/gitlab-runner.py");
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_config_quotes_values() {
        let text = python_config(
            "http://127.0.0.1:1234",
            "glrt-a\"b",
            Path::new("/tmp/x y/builds"),
        );
        assert_eq!(
            text,
            "server: \"http://127.0.0.1:1234\"\ntoken: \"glrt-a\\\"b\"\nexecutor: shell\n\
             shell: bash\ndir: \"/tmp/x y/builds\"\n"
        );
    }
}
