//! What a job's containers use, from the Engine's container stats.
//!
//! The first time a stage runs in a container, one task starts following its stats stream
//! (one sample a second, one request per container for the whole job: the stream outlives the
//! container's stops and starts). From the samples it keeps the peak memory (the cgroup's
//! usage without inactive page cache, as `docker stats` shows it), the CPU time, and the peak
//! CPU use in cores. After each stage the executor hands the job's figures so far to the
//! sink, which prints them at the end of the job log and exports them as metrics, as the
//! shell executor's figures are. Samples come once a second, so a stage shorter than that may
//! be missed; the figures are never more than what the containers used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures::StreamExt;
use runnel_executor::ResourceUsage;

/// Follows the stats of a job's containers.
#[derive(Debug, Default)]
pub(crate) struct ResourceMonitor {
    state: Arc<Mutex<Figures>>,
    followed: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Figures {
    peak_memory: u64,
    peak_cores: f64,
    containers: HashMap<String, ContainerCpu>,
}

/// CPU accounting of one container.
#[derive(Debug, Default)]
struct ContainerCpu {
    /// CPU nanoseconds of earlier runs whose counter was reset (a new cgroup).
    earlier_ns: u64,
    /// The last counter value and when it was read (nanoseconds of the sample's clock).
    last: Option<(u64, i64)>,
}

impl ContainerCpu {
    fn total_ns(&self) -> u64 {
        self.earlier_ns + self.last.map_or(0, |(ns, _)| ns)
    }
}

impl ResourceMonitor {
    /// Starts following container `id`, once.
    pub(crate) fn follow(&mut self, docker: &Docker, id: &str) {
        if self.followed.iter().any(|known| known == id) {
            return;
        }
        self.followed.push(id.to_owned());
        let docker = docker.clone();
        let id = id.to_owned();
        let state = Arc::clone(&self.state);
        self.tasks.push(tokio::spawn(async move {
            let mut stats = docker.stats(
                &id,
                Some(StatsOptions {
                    stream: true,
                    one_shot: false,
                }),
            );
            while let Some(Ok(sample)) = stats.next().await {
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(&id, &sample);
            }
        }));
    }

    /// The job's figures so far.
    pub(crate) fn usage(&self) -> ResourceUsage {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let cpu_ns: u64 = state.containers.values().map(ContainerCpu::total_ns).sum();
        ResourceUsage {
            peak_memory_bytes: state.peak_memory,
            cpu_seconds: cpu_ns as f64 / 1e9,
            peak_cores: state.peak_cores,
        }
    }

    /// Whether any container was followed.
    pub(crate) fn is_following(&self) -> bool {
        !self.followed.is_empty()
    }
}

impl Drop for ResourceMonitor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Figures {
    fn record(&mut self, id: &str, sample: &ContainerStatsResponse) {
        let Some(read_ns) = sample
            .read
            .as_ref()
            .and_then(|read| {
                time::OffsetDateTime::parse(read, &time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .and_then(|read| i64::try_from(read.unix_timestamp_nanos()).ok())
            .filter(|ns| *ns > 0)
        else {
            // A stopped container's samples are empty.
            return;
        };
        if let Some(memory) = &sample.memory_stats
            && let Some(usage) = memory.usage
        {
            let stats = memory.stats.as_ref();
            let cache = ["inactive_file", "total_inactive_file", "cache"]
                .iter()
                .find_map(|key| stats.and_then(|stats| stats.get(*key)).copied())
                .unwrap_or(0);
            self.peak_memory = self.peak_memory.max(usage.saturating_sub(cache));
        }
        let Some(total) = sample
            .cpu_stats
            .as_ref()
            .and_then(|cpu| cpu.cpu_usage.as_ref())
            .and_then(|usage| usage.total_usage)
        else {
            return;
        };
        let cpu = self.containers.entry(id.to_owned()).or_default();
        match cpu.last {
            Some((last, at)) if total >= last => {
                let elapsed = read_ns.saturating_sub(at);
                if elapsed > 0 {
                    let cores = (total - last) as f64 / elapsed as f64;
                    self.peak_cores = self.peak_cores.max(cores);
                }
            }
            // The counter went back: the container runs in a new cgroup.
            Some((last, _)) => cpu.earlier_ns += last,
            None => {}
        }
        cpu.last = Some((total, read_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(read_ms: i64, memory: u64, inactive: u64, cpu_ns: u64) -> ContainerStatsResponse {
        serde_json::from_value(serde_json::json!({
            "read": chrono_like(read_ms),
            "memory_stats": { "usage": memory, "stats": { "inactive_file": inactive } },
            "cpu_stats": { "cpu_usage": { "total_usage": cpu_ns } },
        }))
        .expect("a stats sample")
    }

    fn chrono_like(ms: i64) -> String {
        format!("2026-12-06T07:00:{:02}.{:03}Z", ms / 1000, ms % 1000)
    }

    #[test]
    fn peaks_and_cpu_time_come_from_the_samples() {
        let mut figures = Figures::default();
        figures.record("a", &sample(0, 10 << 20, 2 << 20, 0));
        figures.record("a", &sample(1000, 30 << 20, 4 << 20, 500_000_000));
        figures.record("a", &sample(2000, 12 << 20, 0, 600_000_000));
        // A restart: the counter starts again.
        figures.record("a", &sample(3000, 1 << 20, 0, 100_000_000));
        figures.record("b", &sample(3000, 5 << 20, 0, 250_000_000));
        // A stopped container's empty sample changes nothing.
        let empty: ContainerStatsResponse =
            serde_json::from_value(serde_json::json!({"read": "0001-01-01T00:00:00Z"}))
                .expect("an empty sample");
        figures.record("a", &empty);
        let mut monitor = ResourceMonitor::default();
        monitor.state = Arc::new(Mutex::new(figures));
        let usage = monitor.usage();
        assert_eq!(usage.peak_memory_bytes, 26 << 20);
        assert!((usage.cpu_seconds - 0.95).abs() < 1e-9, "{usage:?}");
        assert!((usage.peak_cores - 0.5).abs() < 1e-9, "{usage:?}");
    }
}
