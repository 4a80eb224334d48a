//! `runnel-fake-kube`: the fake Kubernetes API server as a standalone process.
//!
//! Writes the kubeconfig once it listens, prints the URL on stdout, serves until SIGTERM or
//! SIGINT, then removes every container and volume it made. SIGUSR1 makes the API server go
//! away (listener closed, open connections cut, pods running on), SIGUSR2 brings it back on
//! the same address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runnel_fake_kube::{FakeConfig, FakeKube, Faults};
use tokio::signal::unix::{SignalKind, signal};

/// A test Kubernetes API server running pods on the local Docker engine.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for this server (mode 0600).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The bearer token clients must send (random when not given).
    #[arg(long)]
    token: Option<String>,
    /// Run pods in the host's network namespace.
    #[arg(long)]
    host_network: bool,
    /// Fault: pods are never scheduled.
    #[arg(long)]
    pending_forever: bool,
    /// Fault: running pods are evicted after this many seconds.
    #[arg(long)]
    evict_after_secs: Option<u64>,
    /// Fault: watches are refused (405), as by a proxy that does not pass them on.
    #[arg(long)]
    refuse_watches: bool,
    /// Fault: pod creation is refused as over the namespace's resource quota (403).
    #[arg(long)]
    exceed_pod_quota: bool,
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
        kubeconfig: args.kubeconfig,
        token: args.token,
        host_network: args.host_network,
        faults: Faults {
            pending_forever: args.pending_forever,
            evict_after: args.evict_after_secs.map(Duration::from_secs),
            refuse_watches: args.refuse_watches,
            exceed_pod_quota: args.exceed_pod_quota,
        },
    };
    let mut terminate = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
    let mut away = signal(SignalKind::user_defined1()).context("failed to listen for SIGUSR1")?;
    let mut back = signal(SignalKind::user_defined2()).context("failed to listen for SIGUSR2")?;
    let fake = FakeKube::start(config).await?;
    println!("{}", fake.url());
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = away.recv() => fake.stop_listening().await,
            _ = back.recv() => {
                if let Err(error) = fake.resume_listening().await {
                    tracing::error!(error = %anyhow::Error::from(error), "cannot listen again");
                }
            }
        }
    }
    fake.shutdown().await;
    Ok(())
}
