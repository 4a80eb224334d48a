//! Throughput: K trivial jobs queued at once, run at `concurrent` 4, 16 and 64; jobs per second
//! from the first enqueue to the last accepted `success` (both on the fake's clock).
//!
//! The runner keeps the official default `request_concurrency = 1`, so job requests are serial;
//! what this measures is the whole loop (request, ack, script, trace, final update) under load.

use std::time::Duration;

use runnel_fake_gitlab::RemoteStatus;
use tokio::time::Instant;

use super::{Plan, Session, enqueued_at, status_at, trivial_job};
use crate::error::BenchError;
use crate::report::Report;
use crate::runner::{RunnerSettings, Stop};

/// Upper bound for one batch, so a wedged runner fails the scenario instead of hanging it.
const BATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for &concurrent in &plan.concurrencies {
        let metric = match concurrent {
            4 => "throughput_c4_jobs_per_s",
            16 => "throughput_c16_jobs_per_s",
            64 => "throughput_c64_jobs_per_s",
            other => {
                return Err(BenchError::Missing(format!(
                    "no metric is declared for concurrent {other}"
                )));
            }
        };
        for _ in 0..plan.repetitions {
            let settings = RunnerSettings {
                concurrent,
                ..RunnerSettings::default()
            };
            let mut session = Session::start(plan, true, settings).await?;
            let ids: Vec<u64> = (0..plan.throughput_jobs)
                .map(|_| session.fake.enqueue(trivial_job()))
                .collect();
            let deadline = Instant::now() + BATCH_TIMEOUT;
            let mut first = Duration::MAX;
            let mut last = Duration::ZERO;
            for &id in &ids {
                let left = deadline.saturating_duration_since(Instant::now());
                let view = session.wait_success(id, left).await?;
                first = first.min(enqueued_at(&view)?);
                let done = status_at(&view, RemoteStatus::Success)
                    .ok_or_else(|| BenchError::Missing(format!("job {id} has no success entry")))?;
                last = last.max(done);
            }
            let span = last.saturating_sub(first).as_secs_f64().max(f64::EPSILON);
            report.record(metric, f64::from(plan.throughput_jobs) / span);
            session.stop(Stop::Graceful).await;
        }
    }
    Ok(())
}
