//! Pickup latency: an idle runner, a job enqueued, time until the runner's `running` PUT.
//!
//! Four configurations: long polling on (the fake holds the request until the queue changes)
//! and off (the fake answers 204 at once, so the runner only sees the job on its next poll),
//! each at check_interval 3 s and 1 s. Without long polling the latency depends on where in the
//! poll cycle the job lands, so repetitions enqueue at spread-out phases of the interval
//! (golden-ratio steps) instead of right after a poll.

use std::time::Duration;

use super::{JOB_TIMEOUT, Plan, Session, ack_at, enqueued_at, millis, trivial_job};
use crate::error::BenchError;
use crate::report::Report;
use crate::runner::{RunnerSettings, Stop};

const CONFIGS: [(&str, bool, u32); 4] = [
    ("pickup_long_poll_ci3_ms", true, 3),
    ("pickup_long_poll_ci1_ms", true, 1),
    ("pickup_no_long_poll_ci3_ms", false, 3),
    ("pickup_no_long_poll_ci1_ms", false, 1),
];

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for (metric, long_poll, check_interval_secs) in CONFIGS {
        let settings = RunnerSettings {
            check_interval_secs,
            ..RunnerSettings::default()
        };
        let mut session = Session::start(plan, long_poll, settings).await?;
        for rep in 0..plan.repetitions {
            // Enqueue at a varying phase of the poll cycle (the runner polls right after a job).
            let phase = (f64::from(rep) * 0.618_034).fract();
            let settle = Duration::from_secs_f64(f64::from(check_interval_secs) * phase);
            tokio::time::sleep(settle).await;
            if long_poll {
                session.wait_for_held_poll().await?;
            }
            let id = session.fake.enqueue(trivial_job());
            let view = session.wait_success(id, JOB_TIMEOUT).await?;
            let ack = ack_at(&view).ok_or_else(|| BenchError::Job {
                job: id,
                problem: "succeeded without an accepted `running` update".to_owned(),
                log_tail: session.runner.log_tail(),
            })?;
            report.record(metric, millis(ack.saturating_sub(enqueued_at(&view)?)));
        }
        session.stop(Stop::Graceful).await;
    }
    Ok(())
}
