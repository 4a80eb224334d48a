//! `runnel-fake-gitlab`: the fake coordinator as a standalone process.
//!
//! Prints the base URL on stdout once it listens, then serves until SIGTERM or SIGINT. Jobs,
//! runners and faults are driven through the `/__fake/` control API; this file only parses
//! flags and wires signals.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runnel_fake_gitlab::{FakeConfig, FakeGitlab};
use tokio::signal::unix::{SignalKind, signal};

/// A strict fake GitLab coordinator for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Accept this legacy registration token (repeatable).
    #[arg(long = "registration-token")]
    registration_tokens: Vec<String>,
    /// Create a runner with this `glrt-` authentication token (repeatable).
    #[arg(long = "runner-token")]
    runner_tokens: Vec<String>,
    /// How long job requests with a current `last_update` are held, in seconds.
    #[arg(long, default_value_t = 50)]
    long_poll_secs: u64,
    /// Seconds advertised in `X-GitLab-Trace-Update-Interval`.
    #[arg(long, default_value_t = 3)]
    trace_update_interval_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = FakeConfig {
        listen: args.listen,
        long_poll: Duration::from_secs(args.long_poll_secs),
        trace_update_interval_secs: args.trace_update_interval_secs,
        registration_tokens: args.registration_tokens,
        ..FakeConfig::default()
    };
    let mut terminate = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
    let fake = FakeGitlab::start(config).await?;
    for token in args.runner_tokens {
        fake.add_runner_token(token);
    }
    println!("{}", fake.url());
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    fake.shutdown().await;
    Ok(())
}
