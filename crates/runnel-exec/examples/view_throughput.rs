//! Measures what the `runnel exec` views cost (docs/performance.md, "`runnel exec` views"):
//! `cargo run --release -p runnel-exec --example view_throughput`.

use std::time::{Duration, Instant};

use runnel_exec::view::{PipelineState, render_frame};
use runnel_exec::{Event, PipelineJob, PlainReporter, Reporter};

/// Bytes of log pushed through each measurement.
const VOLUME: usize = 64 << 20;

fn jobs(names: &[String]) -> Vec<PipelineJob> {
    names
        .iter()
        .map(|n| PipelineJob {
            name: n.clone(),
            stage: "test".to_owned(),
            skipped: None,
        })
        .collect()
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / took.as_secs_f64().max(1e-9)
}

fn main() {
    let line =
        "\x1b[32mcompiling crate number 123 of 456 (some text to make the line realistic)\x1b[0m\n";
    let mut chunk = Vec::new();
    while chunk.len() < 4096 {
        chunk.extend_from_slice(line.as_bytes());
    }
    let names: Vec<String> = ["build", "test 1/3", "test 2/3", "test 3/3"]
        .map(str::to_owned)
        .to_vec();
    for ansi in [true, false] {
        let mut reporter = PlainReporter::new(std::io::sink(), ansi);
        reporter.event(&Event::PipelineStarted {
            stages: vec!["test".to_owned()],
            jobs: jobs(&names),
        });
        let start = Instant::now();
        let mut sent = 0;
        for name in names.iter().cycle() {
            if sent >= VOLUME {
                break;
            }
            reporter.event(&Event::JobOutput {
                name: name.clone(),
                bytes: chunk.clone(),
            });
            sent += chunk.len();
        }
        let colours = if ansi { "kept" } else { "stripped" };
        println!(
            "PlainReporter, colours {colours}: {:.0} MiB/s",
            mib_per_s(sent, start.elapsed())
        );
    }

    let names: Vec<String> = (1..=200).map(|i| format!("job {i}/200")).collect();
    let t0 = Instant::now();
    let mut state = PipelineState::default();
    state.apply(
        &Event::PipelineStarted {
            stages: vec!["test".to_owned()],
            jobs: jobs(&names),
        },
        t0,
    );
    for name in names.iter().take(50) {
        state.apply(&Event::JobStarted { name: name.clone() }, t0);
        state.apply(
            &Event::JobOutput {
                name: name.clone(),
                bytes: chunk.clone(),
            },
            t0,
        );
    }
    for (width, height) in [(120, 60), (120, 250)] {
        let frames = 2000u32;
        let start = Instant::now();
        let mut bytes = 0;
        for k in 0..frames {
            let now = t0 + Duration::from_millis(u64::from(k));
            bytes += render_frame(&state, width, height, now, true).len();
        }
        let per_frame = start.elapsed() / frames;
        println!(
            "render_frame, 200 jobs (50 running), {width}x{height}: {:.2} ms per frame, {} bytes",
            per_frame.as_secs_f64() * 1e3,
            bytes / frames as usize
        );
    }

    let start = Instant::now();
    let mut sent = 0;
    for name in names.iter().take(50).cycle() {
        if sent >= VOLUME {
            break;
        }
        state.apply(
            &Event::JobOutput {
                name: name.clone(),
                bytes: chunk.clone(),
            },
            t0,
        );
        sent += chunk.len();
    }
    println!(
        "PipelineState folding (live view): {:.0} MiB/s",
        mib_per_s(sent, start.elapsed())
    );
}
