//! Idle: memory and CPU of a runner that has polled an empty queue for a while.
//!
//! Each repetition starts a fresh runner (concurrent 1, check_interval 3 s) against a fake with
//! long polling, as GitLab behind Workhorse is, lets it poll for `plan.idle`, then reads the RSS
//! of the runner and its descendants and the CPU it used meanwhile.

use tokio::time::Instant;

use super::{Plan, Session};
use crate::error::BenchError;
use crate::procfs;
use crate::report::Report;
use crate::runner::{RunnerSettings, Stop};

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for _ in 0..plan.repetitions {
        let mut session = Session::start(plan, true, RunnerSettings::default()).await?;
        let pid = session.runner.pid();
        let cpu_before = procfs::cpu_seconds(pid)?;
        let start = Instant::now();
        tokio::time::sleep(plan.idle).await;
        session.runner.check_alive()?;
        let cpu = procfs::cpu_seconds(pid)? - cpu_before;
        let elapsed = start.elapsed().as_secs_f64();
        let memory = procfs::tree_memory(pid)?;
        #[allow(clippy::cast_precision_loss)]
        {
            report.record("idle_runner_rss_kib", memory.root_kib as f64);
            report.record("idle_tree_rss_kib", memory.tree_kib as f64);
        }
        report.record("idle_cpu_percent", cpu / elapsed * 100.0);
        session.stop(Stop::Graceful).await;
    }
    Ok(())
}
