//! `runnel-bench-peer`: the smallest useful shell runner built on Collabora's `gitlab-runner`
//! crate (crates.io), used by `runnel-bench` as an independent peer. Not shipped, not a
//! dependency of `runnel`.
//!
//! It registers nothing: it takes the server URL and a runner authentication token, polls
//! `POST /api/v4/jobs/request` every `--poll-interval-ms` while it has room for another job
//! (the library does not long-poll), and runs each job's script (then `after_script`) as one
//! `bash -c` per step with `set -eo pipefail`, the job's variables in the environment and the
//! job's build directory as working directory. Output goes to the job trace as it arrives; the
//! library sends the trace and the final state. SIGQUIT or SIGINT: stop polling, let running
//! jobs finish, exit. SIGTERM: exit at once.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gitlab_runner::job::Job;
use gitlab_runner::{GitlabLayer, JobHandler, JobResult, Phase, RunnerBuilder};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::prelude::*;
use url::Url;

/// A minimal gitlab-runner-crate shell runner for benchmarks.
#[derive(Debug, Parser)]
#[command(name = "runnel-bench-peer", version, about)]
struct Args {
    /// GitLab base URL, e.g. `http://127.0.0.1:4321`.
    url: Url,
    /// Runner authentication token (`glrt-…`).
    #[arg(long, env = "PEER_RUNNER_TOKEN", hide_env_values = true)]
    token: String,
    /// Directory under which each job gets its build directory.
    #[arg(long)]
    builds_dir: std::path::PathBuf,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    concurrent: usize,
    /// Pause between job requests that returned no job, milliseconds.
    #[arg(long, default_value_t = 3000)]
    poll_interval_ms: u64,
}

/// One job: runs its steps with bash.
#[derive(Debug)]
struct Shell {
    job: Job,
}

impl Shell {
    async fn run_step(&self, script: &[String]) -> JobResult {
        let mut text = String::from("set -eo pipefail\nexec 2>&1\n");
        for line in script {
            text.push_str(line);
            text.push('\n');
        }
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(&text)
            .current_dir(self.job.build_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for variable in self.job.variables() {
            command.env(variable.key(), variable.value());
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                self.job.trace(format!("cannot start bash: {error}\n"));
                return Err(());
            }
        };
        if let Some(mut stdout) = child.stdout.take() {
            let mut buffer = vec![0_u8; 64 * 1024];
            loop {
                match stdout.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => self.job.trace(&buffer[..n]),
                    Err(error) => {
                        self.job.trace(format!("cannot read the output: {error}\n"));
                        break;
                    }
                }
            }
        }
        match child.wait().await {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => {
                self.job.trace(format!("ERROR: Job failed: {status}\n"));
                Err(())
            }
            Err(error) => {
                self.job.trace(format!("cannot wait for bash: {error}\n"));
                Err(())
            }
        }
    }
}

#[async_trait::async_trait]
impl JobHandler for Shell {
    async fn step(&mut self, script: &[String], _phase: Phase) -> JobResult {
        self.run_step(script).await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (layer, jobs) = GitlabLayer::new();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                ),
        )
        .with(layer)
        .init();
    std::fs::create_dir_all(&args.builds_dir)
        .with_context(|| format!("cannot create {}", args.builds_dir.display()))?;
    let mut runner = RunnerBuilder::new(args.url.clone(), args.token, &args.builds_dir, jobs)
        .build()
        .await;
    let mut quit = signal(SignalKind::quit()).context("cannot listen for SIGQUIT")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let poll_interval = Duration::from_millis(args.poll_interval_ms);
    let concurrent = args.concurrent.max(1);
    loop {
        let got_job = tokio::select! {
            () = runner.wait_for_space(concurrent) => {
                match runner.request_job(|job| async move { Ok(Shell { job }) }).await {
                    Ok(got) => got,
                    Err(error) => {
                        tracing::warn!(url = %args.url, ?error, "job request failed");
                        false
                    }
                }
            }
            _ = quit.recv() => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => return Ok(()),
        };
        if got_job {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(poll_interval) => {}
            _ = quit.recv() => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => return Ok(()),
        }
    }
    tokio::select! {
        () = runner.drain() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
