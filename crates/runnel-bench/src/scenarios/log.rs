//! The log path: a job prints X MB (10^6 bytes per MB) in 1 MB chunks, each followed by a
//! marker line with the wall-clock time it was printed (`$EPOCHREALTIME`); measured twice,
//! with the variable on every line unmasked and masked.
//!
//! - Throughput: script bytes from the first marker's print time to the arrival (PATCH `at`)
//!   of the patch holding the last marker.
//! - CPU: the runner process's utime+stime over the job, per 100 MB.
//! - Latency: for each marker, from its print time to the arrival of the first accepted patch
//!   that holds it; the first marker is the first line the script prints (first-line latency). The fake's clock is tied to the wall clock at enqueue time (the `pending`
//!   entry), with an error of half the enqueue call's duration.
//!
//! It measures the runner, not the fake: waiting for the job reads only its progress (status,
//! patch records), never the trace, so checking does not slow the fake's trace handling down;
//! the trace is copied once, after the job ended. The fake stores every byte in memory, which
//! is fine for a few hundred MB but not for gigabytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runnel_fake_gitlab::{GitStrategy, JobBuilder, JobView};

use super::{Plan, Session, enqueued_at};
use crate::error::BenchError;
use crate::procfs;
use crate::report::Report;
use crate::runner::{RunnerSettings, Stop};
use crate::stats::median;

/// Starts a marker line; followed by the print time in seconds since the epoch.
const MARKER: &[u8] = b"@@runnel-bench@@ ";
/// The masked (or not) value, present on every printed line.
const SECRET: &str = "bench-s3cr3t-value-0123456789";
/// Bytes per chunk between markers.
const CHUNK: u64 = 1_000_000;

struct Variant {
    masked: bool,
    mb_per_s: &'static str,
    cpu: &'static str,
    latency_median: &'static str,
    latency_max: &'static str,
    first_line: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        masked: false,
        mb_per_s: "log_plain_mb_per_s",
        cpu: "log_plain_cpu_s_per_100mb",
        latency_median: "log_plain_latency_median_ms",
        latency_max: "log_plain_latency_max_ms",
        first_line: "log_plain_first_line_ms",
    },
    Variant {
        masked: true,
        mb_per_s: "log_masked_mb_per_s",
        cpu: "log_masked_cpu_s_per_100mb",
        latency_median: "log_masked_latency_median_ms",
        latency_max: "log_masked_latency_max_ms",
        first_line: "log_masked_first_line_ms",
    },
];

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for variant in &VARIANTS {
        for _ in 0..plan.repetitions {
            measure(plan, variant, report).await?;
        }
    }
    Ok(())
}

async fn measure(plan: &Plan, variant: &Variant, report: &mut Report) -> Result<(), BenchError> {
    let settings = RunnerSettings {
        // Room for the whole log: the official default (4 MiB) would cut it short, and the
        // trace is bigger than the script output (per-line timestamp prefixes).
        output_limit_kib: plan.log_mb.saturating_mul(2000).saturating_add(10_240),
        ..RunnerSettings::default()
    };
    let mut session = Session::start(plan, true, settings).await?;
    let pid = session.runner.pid();
    let job = log_job(plan.log_mb, variant.masked);
    let cpu_before = procfs::cpu_seconds(pid)?;
    let before = unix_secs(SystemTime::now());
    let id = session.fake.enqueue(job);
    let after = unix_secs(SystemTime::now());
    let timeout = Duration::from_secs(120 + u64::from(plan.log_mb) * 2);
    // Waiting looks at the job's progress only; the trace is copied once, at the end.
    let view = session.wait_success(id, timeout).await?;
    let cpu = procfs::cpu_seconds(pid)? - cpu_before;
    // Wall-clock second at which the fake's clock read zero.
    let fake_epoch = f64::midpoint(before, after) - enqueued_at(&view)?.as_secs_f64();
    let arrivals = marker_arrivals(&view, fake_epoch);
    let expected = usize::try_from(plan.log_mb).unwrap_or(usize::MAX) + 1;
    if arrivals.len() != expected {
        return Err(BenchError::Missing(format!(
            "job {id}: found {} marker lines in the trace, expected {expected}",
            arrivals.len()
        )));
    }
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        return Err(BenchError::Missing(format!("job {id}: no marker lines")));
    };
    let span = (last.arrived - first.printed).max(f64::EPSILON);
    #[allow(clippy::cast_precision_loss)]
    let megabytes = (u64::from(plan.log_mb) * CHUNK) as f64 / 1e6;
    let latencies: Vec<f64> = arrivals
        .iter()
        .map(|m| (m.arrived - m.printed) * 1000.0)
        .collect();
    report.record(variant.mb_per_s, megabytes / span);
    report.record(variant.cpu, cpu * 100.0 / megabytes.max(f64::EPSILON));
    report.record(variant.latency_median, median(&latencies).unwrap_or(0.0));
    // The first marker is the first line the script prints.
    report.record(
        variant.first_line,
        latencies.first().copied().unwrap_or(0.0),
    );
    report.record(
        variant.latency_max,
        latencies.iter().copied().fold(0.0, f64::max),
    );
    if variant.masked && memchr::memmem::find(&view.trace, SECRET.as_bytes()).is_some() {
        return Err(BenchError::Job {
            job: id,
            problem: "trace holds the masked value in clear".to_owned(),
            log_tail: session.runner.log_tail(),
        });
    }
    session.stop(Stop::Graceful).await;
    Ok(())
}

/// The job: a 1 MB file of lines carrying `$BENCH_SECRET`, printed `mb` times, with a marker
/// before the first chunk and after each one.
fn log_job(mb: u32, masked: bool) -> JobBuilder {
    let marker = String::from_utf8_lossy(MARKER).trim_end().to_owned();
    let job = JobBuilder::new("log")
        .git_strategy(GitStrategy::None)
        .script([
            "L=\"log line $BENCH_SECRET ................................................\""
                .to_owned(),
            // `|| true`: head closing the pipe kills `yes` with SIGPIPE, fatal under pipefail.
            format!("{{ yes \"$L\" | head -c {CHUNK} > chunk.txt; }} || true"),
            format!("printf '{marker} %s\\n' \"$EPOCHREALTIME\""),
            format!(
                "for i in $(seq 1 {mb}); do cat chunk.txt; \
                 printf '\\n{marker} %s\\n' \"$EPOCHREALTIME\"; done"
            ),
        ]);
    if masked {
        job.masked_variable("BENCH_SECRET", SECRET)
    } else {
        job.variable("BENCH_SECRET", SECRET)
    }
}

/// One marker line: when it was printed and when the fake had it, wall-clock seconds.
#[derive(Debug, PartialEq)]
struct Arrival {
    printed: f64,
    arrived: f64,
}

/// Every marker line of the trace with the arrival of the first accepted patch holding it.
/// Lines where the marker is not followed by a number (the echoed command) are skipped.
fn marker_arrivals(view: &JobView, fake_epoch: f64) -> Vec<Arrival> {
    let trace = &view.trace;
    let mut arrivals = Vec::new();
    for start in memchr::memmem::find_iter(trace, MARKER) {
        let value_start = start + MARKER.len();
        let line_end =
            memchr::memchr(b'\n', &trace[value_start..]).map_or(trace.len(), |n| value_start + n);
        let Some(printed) = std::str::from_utf8(&trace[value_start..line_end])
            .ok()
            .and_then(|text| text.trim_end_matches('\r').trim().parse::<f64>().ok())
        else {
            continue;
        };
        let last_byte = u64::try_from(line_end.saturating_sub(1)).unwrap_or(u64::MAX);
        let patch = view.patches.iter().find(|p| {
            (200..300).contains(&p.status)
                && p.len > 0
                && p.start <= last_byte
                && last_byte <= p.end
        });
        if let Some(patch) = patch {
            arrivals.push(Arrival {
                printed,
                arrived: fake_epoch + patch.at.as_secs_f64(),
            });
        }
    }
    arrivals
}

fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use runnel_fake_gitlab::{PatchRecord, RemoteStatus};
    use runnel_types::JobToken;

    use super::*;

    fn patch(start: u64, end: u64, at_ms: u64, status: u16) -> PatchRecord {
        PatchRecord {
            start,
            end,
            len: end - start + 1,
            reset: false,
            status,
            at: Duration::from_millis(at_ms),
        }
    }

    #[test]
    fn markers_are_matched_to_the_patch_that_delivered_them() {
        let trace = b"$ printf '@@runnel-bench@@ %s\\n'\n@@runnel-bench@@ 100.5\nxxxx\n@@runnel-bench@@ 101.25\n".to_vec();
        let second = trace.len() - 1;
        let view = JobView {
            id: 1,
            token: JobToken::new("t"),
            status: RemoteStatus::Success,
            history: Vec::new(),
            runner_id: None,
            trace,
            patches: vec![
                patch(0, 40, 1000, 416),
                patch(0, 60, 1500, 202),
                patch(61, u64::try_from(second).unwrap(), 3000, 202),
            ],
            updates: Vec::new(),
            artifacts: Vec::new(),
        };
        let arrivals = marker_arrivals(&view, 100.0);
        assert_eq!(
            arrivals,
            vec![
                Arrival {
                    printed: 100.5,
                    arrived: 101.5
                },
                Arrival {
                    printed: 101.25,
                    arrived: 103.0
                },
            ]
        );
    }
}
