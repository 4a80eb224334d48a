//! CPU and memory of each job's processes, sampled from `/proc` (Linux).
//!
//! Executors report the process group of every stage they start; once a second one sampler task
//! walks each group leader's descendants in `/proc` and keeps, per job, the peak
//! resident memory of its process group, the CPU time its processes used, and the peak CPU use
//! in cores. The official runner has nothing like this (users ask for it: peers-and-user-pain
//! 1.14 and 4.7). Where `/proc` is missing the figures stay at zero; nothing fails.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How often `/proc` is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What a job's processes used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    /// Whether any process of the job ran on this host (a docker job's processes do not).
    pub(crate) measured: bool,
    pub(crate) peak_rss_bytes: u64,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_cores: f64,
}

/// The running account of one job.
#[derive(Debug, Default)]
pub(crate) struct JobUsage {
    state: Mutex<UsageState>,
}

#[derive(Debug, Default)]
struct UsageState {
    groups: Vec<u32>,
    /// CPU ticks last seen per process (they only grow while it lives).
    ticks: HashMap<u32, u64>,
    usage: Usage,
    last: Option<(Instant, u64)>,
    /// What the executor measured itself (a docker job's containers), cumulative.
    reported: Option<runnel_executor::ResourceUsage>,
}

impl JobUsage {
    /// Starts accounting a new process group of this job.
    pub(crate) fn add_group(self: &Arc<Self>, pgid: u32) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.groups.contains(&pgid) {
            state.groups.push(pgid);
        }
        drop(state);
        SAMPLER.watch(self);
    }

    /// Records what the executor measured where this host's `/proc` cannot see (containers);
    /// cumulative for the job, so it replaces what was reported before.
    pub(crate) fn report(&self, reported: runnel_executor::ResourceUsage) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reported = Some(reported);
    }

    /// The figures so far (a last sample of this job's processes is taken first), with what
    /// the executor reported added.
    pub(crate) fn finish(self: &Arc<Self>) -> Usage {
        SAMPLER.forget(self);
        SAMPLER.sample(self, Instant::now());
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut usage = Usage {
            measured: !state.groups.is_empty(),
            ..state.usage
        };
        if let Some(reported) = state.reported {
            usage.measured = true;
            usage.peak_rss_bytes = usage.peak_rss_bytes.max(reported.peak_memory_bytes);
            usage.cpu_seconds += reported.cpu_seconds;
            usage.peak_cores = usage.peak_cores.max(reported.peak_cores);
        }
        usage
    }

    fn leaders(&self) -> Vec<u32> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .groups
            .clone()
    }

    fn record(&self, stats: &[ProcStat], now: Instant, page_size: u64, ticks_per_second: f64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rss = 0u64;
        let state = &mut *state;
        for stat in stats {
            rss += stat.rss_pages * page_size;
            let seen = state.ticks.entry(stat.pid).or_default();
            *seen = (*seen).max(stat.cpu_ticks);
        }
        let total: u64 = state.ticks.values().sum();
        state.usage.peak_rss_bytes = state.usage.peak_rss_bytes.max(rss);
        state.usage.cpu_seconds = total as f64 / ticks_per_second;
        if let Some((at, ticks)) = state.last {
            let elapsed = now.duration_since(at).as_secs_f64();
            if elapsed > 0.0 {
                let cores = total.saturating_sub(ticks) as f64 / ticks_per_second / elapsed;
                state.usage.peak_cores = state.usage.peak_cores.max(cores);
            }
        }
        state.last = Some((now, total));
    }
}

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    cpu_ticks: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    // Fields after the name, numbered from 3 (state) as in proc(5).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        cpu_ticks: field(14)? + field(15)?,
        rss_pages: field(24)?,
    })
}

/// The process `leader` and all its descendants that are still alive, from the kernel's
/// `task/*/children` lists: the cost follows the job's own processes, not the host's.
fn tree_stats(leader: u32) -> Vec<ProcStat> {
    let mut stats = Vec::new();
    let mut queue = vec![leader];
    while let Some(pid) = queue.pop() {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(stat) = parse_stat(&text) else {
            continue;
        };
        stats.push(stat);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                queue.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    stats
}

/// The one sampler shared by all jobs.
struct Sampler {
    jobs: Mutex<Vec<Arc<JobUsage>>>,
    started: std::sync::Once,
    page_size: u64,
    ticks_per_second: f64,
}

static SAMPLER: LazyLock<Sampler> = LazyLock::new(|| {
    use nix::unistd::{SysconfVar, sysconf};
    let value = |var| {
        sysconf(var)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
    };
    Sampler {
        jobs: Mutex::new(Vec::new()),
        started: std::sync::Once::new(),
        page_size: value(SysconfVar::PAGE_SIZE).unwrap_or(4096),
        ticks_per_second: value(SysconfVar::CLK_TCK).unwrap_or(100) as f64,
    }
});

impl Sampler {
    fn watch(&'static self, job: &Arc<JobUsage>) {
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            if !jobs.iter().any(|j| Arc::ptr_eq(j, job)) {
                jobs.push(Arc::clone(job));
            }
        }
        self.started.call_once(|| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    if tokio::task::spawn_blocking(|| SAMPLER.sample_now())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        });
    }

    fn forget(&self, job: &Arc<JobUsage>) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|j| !Arc::ptr_eq(j, job));
    }

    fn sample_now(&self) {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if jobs.is_empty() {
            return;
        }
        let now = Instant::now();
        for job in jobs {
            self.sample(&job, now);
        }
    }

    /// Samples one job's processes.
    fn sample(&self, job: &JobUsage, now: Instant) {
        let stats: Vec<ProcStat> = job.leaders().into_iter().flat_map(tree_stats).collect();
        job.record(&stats, now, self.page_size, self.ticks_per_second);
    }
}

/// A human summary for the end of the job log.
pub(crate) fn describe(usage: &Usage) -> String {
    format!(
        "peak memory {:.1} MiB, CPU time {:.2} s, peak CPU {:.2} cores",
        usage.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        usage.cpu_seconds,
        usage.peak_cores
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_tricky_name() {
        let line = "4242 (we ird) name)) S 1 4240 4240 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 1000000 777 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                cpu_ticks: 300,
                rss_pages: 777
            }
        );
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(parse_stat("nonsense"), None);
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[tokio::test]
    async fn figures_an_executor_reports_count_for_the_job() {
        let usage = Arc::new(JobUsage::default());
        assert!(!usage.finish().measured);
        let usage = Arc::new(JobUsage::default());
        usage.report(runnel_executor::ResourceUsage {
            peak_memory_bytes: 1,
            cpu_seconds: 0.5,
            peak_cores: 0.2,
        });
        // Cumulative: the later report replaces the earlier one.
        usage.report(runnel_executor::ResourceUsage {
            peak_memory_bytes: 8 << 20,
            cpu_seconds: 1.5,
            peak_cores: 0.75,
        });
        let result = usage.finish();
        assert!(result.measured);
        assert_eq!(
            describe(&result),
            "peak memory 8.0 MiB, CPU time 1.50 s, peak CPU 0.75 cores"
        );
    }

    #[tokio::test]
    async fn accounts_a_real_process_group() {
        let usage = Arc::new(JobUsage::default());
        // This test process itself: it certainly uses memory.
        usage.add_group(std::process::id());
        let result = usage.finish();
        assert!(result.peak_rss_bytes > 0, "{result:?}");
    }
}
