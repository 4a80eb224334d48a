//! Scale: M jobs running `sleep` at once (concurrent M); the runner's memory per running job
//! and its CPU while every job just waits.
//!
//! The runner's RSS is read once idle and once with all jobs running; the growth divided by
//! the running jobs is its per-job cost (the `bash` and `sleep` processes are reported
//! separately in the tree figure). Running jobs are counted as `sleep` processes under the
//! runner, not as acknowledgements, so a job that was acked but never started does not count.
//! At the end the runner gets SIGTERM, which cancels the jobs, so no repetition waits for the
//! sleeps to end; the sleep is long (600 s by default, not 30 s) so that the first jobs are
//! still running when the last one starts, however slowly a runner picks a thousand jobs up.

use std::time::Duration;

use runnel_fake_gitlab::{GitStrategy, JobBuilder};
use tokio::time::Instant;

use super::{Plan, Session, ack_at};
use crate::error::BenchError;
use crate::procfs;
use crate::report::Report;
use crate::runner::{RunnerSettings, Stop};

/// How long all jobs may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for _ in 0..plan.repetitions {
        let settings = RunnerSettings {
            concurrent: plan.scale_jobs,
            ..RunnerSettings::default()
        };
        let mut session = Session::start(plan, true, settings).await?;
        let pid = session.runner.pid();
        let idle = procfs::tree_memory(pid)?;
        let job = JobBuilder::new("sleeper")
            .script([format!("sleep {}", plan.scale_sleep_secs)])
            .git_strategy(GitStrategy::None);
        let ids: Vec<u64> = (0..plan.scale_jobs)
            .map(|_| session.fake.enqueue(job.clone()))
            .collect();
        // Wait until every job is acked, or until the first one finishes (sleep too short to
        // have them all at once); then until the sleeps have started.
        let deadline = Instant::now() + START_TIMEOUT;
        let mut next_point = Instant::now();
        loop {
            session.runner.check_alive()?;
            // The memory curve for the plot: runner and tree RSS against running jobs.
            if Instant::now() >= next_point {
                next_point = Instant::now() + Duration::from_millis(500);
                let running = procfs::count_descendants_named(pid, "sleep")?;
                let memory = procfs::tree_memory(pid)?;
                #[allow(clippy::cast_precision_loss)]
                {
                    let jobs = running as f64;
                    report.record_point("scale_runner_rss_kib", jobs, memory.root_kib as f64);
                    report.record_point("scale_tree_rss_kib", jobs, memory.tree_kib as f64);
                }
            }
            let views: Vec<_> = ids.iter().filter_map(|&id| session.fake.job(id)).collect();
            let acked = views.iter().filter(|v| ack_at(v).is_some()).count();
            let finished = views.iter().any(|v| v.is_finished());
            if acked == ids.len() || finished || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wanted = usize::try_from(plan.scale_jobs).unwrap_or(usize::MAX);
        let mut running = 0;
        let settle_deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < settle_deadline {
            running = procfs::count_descendants_named(pid, "sleep")?;
            if running >= wanted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if running == 0 {
            return Err(BenchError::Missing(format!(
                "no `sleep` job process under runner {pid}; runner log:\n{}",
                session.runner.log_tail()
            )));
        }
        let loaded = procfs::tree_memory(pid)?;
        #[allow(clippy::cast_precision_loss)]
        {
            let jobs = running as f64;
            report.record_point("scale_runner_rss_kib", jobs, loaded.root_kib as f64);
            report.record_point("scale_tree_rss_kib", jobs, loaded.tree_kib as f64);
        }
        let cpu_before = procfs::cpu_seconds(pid)?;
        let start = Instant::now();
        tokio::time::sleep(plan.scale_window).await;
        let cpu = procfs::cpu_seconds(pid)? - cpu_before;
        let window = start.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        {
            let jobs = running as f64;
            report.record("scale_jobs_running", jobs);
            report.record(
                "scale_runner_rss_per_job_kib",
                (loaded.root_kib as f64 - idle.root_kib as f64) / jobs,
            );
            report.record(
                "scale_tree_rss_per_job_kib",
                (loaded.tree_kib as f64 - idle.tree_kib as f64) / jobs,
            );
        }
        report.record("scale_runner_cpu_percent", cpu / window * 100.0);
        if running < wanted {
            tracing::warn!(
                running,
                wanted,
                "not every scale job ran at once; raise --scale-sleep or lower --scale-jobs"
            );
        }
        session.stop(Stop::Force).await;
    }
    Ok(())
}
