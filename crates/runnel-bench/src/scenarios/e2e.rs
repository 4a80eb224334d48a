//! End to end: a trivial job (`true`, GIT_STRATEGY none, shell executor) from enqueue to the
//! fake accepting its `success`, with an idle long-polling runner; and Runnel's overhead above
//! the floors.
//!
//! The overhead subtracts one bash spawn floor and one loopback round trip per API request the
//! runner made for the job. It deliberately does not subtract more spawns: how many processes a
//! job needs is part of the runner's cost.

use runnel_fake_gitlab::RemoteStatus;

use super::floors::{bash_spawns, http_round_trips};
use super::{JOB_TIMEOUT, Plan, Session, enqueued_at, millis, status_at, trivial_job};
use crate::error::BenchError;
use crate::report::Report;
use crate::runner::{RunnerSettings, Stop};
use crate::stats::median;

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let spawn_floor = match median(report.samples("floor_bash_spawn_ms")) {
        Some(floor) => floor,
        None => median(&bash_spawns(plan.floor_samples).await?).unwrap_or(0.0),
    };
    let http_floor = match median(report.samples("floor_http_rtt_ms")) {
        Some(floor) => floor,
        None => median(&http_round_trips(plan.floor_samples).await?).unwrap_or(0.0),
    };
    let mut session = Session::start(plan, true, RunnerSettings::default()).await?;
    for _ in 0..plan.repetitions {
        session.wait_for_held_poll().await?;
        let id = session.fake.enqueue(trivial_job());
        let view = session.wait_success(id, JOB_TIMEOUT).await?;
        let done = status_at(&view, RemoteStatus::Success)
            .ok_or_else(|| BenchError::Missing(format!("job {id} has no success entry")))?;
        let e2e = millis(done.saturating_sub(enqueued_at(&view)?));
        let job_path = format!("/api/v4/jobs/{id}");
        // The job's own calls plus the job request that delivered it.
        let requests = session
            .fake
            .requests()
            .iter()
            .filter(|r| r.path == job_path || r.path.starts_with(&format!("{job_path}/")))
            .count()
            + 1;
        #[allow(clippy::cast_precision_loss)]
        let requests = requests as f64;
        report.record("e2e_trivial_ms", e2e);
        report.record("e2e_api_requests", requests);
        report.record("e2e_overhead_ms", e2e - spawn_floor - requests * http_floor);
    }
    session.stop(Stop::Graceful).await;
    Ok(())
}
