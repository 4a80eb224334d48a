//! The `runnel-bench` command line: parses flags into a [`Plan`], runs it, prints the table to
//! stdout and writes the JSON report. Logs go to stderr (`RUST_LOG`, default `info`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use runnel_bench::report::Meta;
use runnel_bench::{Plan, Report, Scenario};

/// Benchmarks a `runnel` binary against an in-process fake GitLab.
#[derive(Debug, Parser)]
#[command(name = "runnel-bench", version, about)]
struct Args {
    /// The runnel binary [default: `runnel` next to this executable].
    #[arg(long)]
    runnel: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A tiny version of every scenario with one repetition (a smoke test, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Repetitions of each measurement [default: 5, 1 with --quick].
    #[arg(long, short = 'n')]
    repetitions: Option<u32>,
    /// Only these scenarios (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Trivial jobs per throughput run [default: 1000].
    #[arg(long)]
    jobs: Option<u32>,
    /// Jobs sleeping at once in the scale scenario [default: 1000].
    #[arg(long)]
    scale_jobs: Option<u32>,
    /// Seconds each scale job sleeps; jobs are canceled once measured [default: 600].
    #[arg(long)]
    scale_sleep: Option<u32>,
    /// Megabytes the log job prints [default: 200].
    #[arg(long)]
    log_mb: Option<u32>,
    /// Megabytes in the archive scenario's generated tree [default: 1000].
    #[arg(long)]
    archive_mb: Option<u32>,
    /// Files in the archive scenario's generated tree [default: 50000].
    #[arg(long)]
    archive_files: Option<u32>,
    /// Seconds the runner polls before idle memory is read [default: 10].
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Require the peer runners (fail if the Rust peer is missing) [default: use the ones found].
    #[arg(long, conflicts_with = "no_peers")]
    peers: bool,
    /// Skip the peer runners.
    #[arg(long)]
    no_peers: bool,
    /// The Rust peer [default: `runnel-bench-peer` next to this executable].
    #[arg(long)]
    rust_peer: Option<PathBuf>,
    /// gitlab-python-runner's `gitlab-runner.py` [default:
    /// `$HOME/.cache/runnel-bench/pyrunner/bin/gitlab-runner.py` if it exists].
    #[arg(long)]
    python_peer: Option<PathBuf>,
    /// Write PNG plots into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// TrueType font for the plots' text.
    #[arg(long, default_value = runnel_bench::plots::DEFAULT_FONT)]
    plot_font: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("runnel-bench: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let Some(runnel) = args.runnel.clone().or_else(default_runnel) else {
        eprintln!("runnel-bench: no runnel binary next to this executable; pass --runnel PATH");
        return ExitCode::from(2);
    };
    if !runnel.is_file() {
        eprintln!(
            "runnel-bench: runnel binary {} does not exist",
            runnel.display()
        );
        return ExitCode::from(2);
    }
    let mut plan = plan(&args, runnel);
    if let Err(message) = choose_peers(&args, &mut plan) {
        eprintln!("runnel-bench: {message}");
        return ExitCode::from(2);
    }
    if args.plots.is_some()
        && let Err(error) = runnel_bench::plots::load_font(&args.plot_font)
    {
        eprintln!("runnel-bench: {error} (pass --plot-font PATH)");
        return ExitCode::from(2);
    }
    let mut report = Report::new(meta(&args, &plan));
    runnel_bench::run(&plan, &mut report).await;
    print!("{}", report.table());
    if let Some(dir) = &args.plots {
        match runnel_bench::plots::write_all(&report, dir) {
            Ok((written, skipped)) => {
                for path in written {
                    eprintln!("runnel-bench: wrote {}", path.display());
                }
                for name in skipped {
                    eprintln!("runnel-bench: no data for {name}; not drawn");
                }
            }
            Err(error) => {
                eprintln!("runnel-bench: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(&report.to_json()) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("runnel-bench: cannot serialise the report: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(error) = fs_err::write(path, text + "\n") {
            eprintln!("runnel-bench: {error}");
            return ExitCode::FAILURE;
        }
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn plan(args: &Args, runnel: PathBuf) -> Plan {
    let mut plan = if args.quick {
        Plan::quick(runnel)
    } else {
        Plan::full(runnel)
    };
    if !args.only.is_empty() {
        plan.scenarios.clone_from(&args.only);
    }
    if let Some(n) = args.repetitions {
        plan.repetitions = n.max(1);
    }
    if let Some(jobs) = args.jobs {
        plan.throughput_jobs = jobs.max(1);
    }
    if let Some(jobs) = args.scale_jobs {
        plan.scale_jobs = jobs.max(1);
    }
    if let Some(secs) = args.scale_sleep {
        plan.scale_sleep_secs = secs.max(1);
    }
    if let Some(mb) = args.log_mb {
        plan.log_mb = mb.max(1);
    }
    if let Some(mb) = args.archive_mb {
        plan.archive_mb = mb.max(1);
    }
    if let Some(files) = args.archive_files {
        plan.archive_files = files.max(4);
    }
    if let Some(secs) = args.idle_secs {
        plan.idle = std::time::Duration::from_secs(secs);
    }
    plan
}

fn meta(args: &Args, plan: &Plan) -> Meta {
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let peers = [
        ("rust_peer", &plan.rust_peer),
        ("python_peer", &plan.python_peer),
    ]
    .into_iter()
    .filter(|_| plan.scenarios.contains(&Scenario::Peers))
    .filter_map(|(name, path)| Some((name.to_owned(), path.as_ref()?.display().to_string())))
    .collect();
    let parameters = [
        ("throughput_jobs", u64::from(plan.throughput_jobs)),
        ("scale_jobs", u64::from(plan.scale_jobs)),
        ("scale_sleep_secs", u64::from(plan.scale_sleep_secs)),
        ("log_mb", u64::from(plan.log_mb)),
        ("idle_secs", plan.idle.as_secs()),
        ("floor_samples", u64::from(plan.floor_samples)),
        ("archive_mb", u64::from(plan.archive_mb)),
        ("archive_files", u64::from(plan.archive_files)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Meta {
        started_at,
        runnel: plan.runnel.display().to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        repetitions: plan.repetitions,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        parameters,
        peers,
    }
}

/// `runnel` in the directory of this executable (the cargo target dir).
fn default_runnel() -> Option<PathBuf> {
    sibling("runnel")
}

/// `name` in the directory of this executable.
fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(name))
}

/// Fills in the peers the run measures: none with `--no-peers`; else the given or found ones
/// (with `--peers`, a missing Rust peer is an error).
fn choose_peers(args: &Args, plan: &mut Plan) -> Result<(), String> {
    if args.no_peers {
        plan.scenarios.retain(|s| *s != Scenario::Peers);
        return Ok(());
    }
    let rust = args
        .rust_peer
        .clone()
        .or_else(|| sibling("runnel-bench-peer"));
    plan.rust_peer = match rust {
        Some(path) if path.is_file() => Some(path),
        Some(path) if args.peers || args.rust_peer.is_some() => {
            return Err(format!(
                "Rust peer {} does not exist (build it: cargo build --release -p runnel-bench-peer)",
                path.display()
            ));
        }
        _ => None,
    };
    plan.python_peer = match &args.python_peer {
        Some(path) if path.is_file() => Some(path.clone()),
        Some(path) => return Err(format!("Python peer {} does not exist", path.display())),
        None => runnel_bench::default_python_peer(),
    };
    if plan.rust_peer.is_none() && plan.python_peer.is_none() {
        tracing::warn!("no peer runner found; the peers scenario is skipped");
    }
    Ok(())
}
