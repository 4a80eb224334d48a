//! What a job's containers use: peak memory, CPU time and peak CPU, for the figures printed at
//! the end of the job log and exported as metrics (as the shell executor's are).
//!
//! The first time a stage runs in a container, the monitor starts following it, one of two ways:
//!
//! - **From its cgroup, without an Engine request**, when the container's cgroup is visible on
//!   this host (a local daemon; cgroup v2 or v1, the `cgroupfs` or `systemd` driver, a configured
//!   `cgroup_parent`, rootless under systemd): the directory is found by the container's full id
//!   under `/sys/fs/cgroup`, which no other container can have. One task per job reads the files
//!   of its containers every [`SAMPLE_EVERY`], and once more at the end of every stage, so the
//!   CPU time is exact to the stage's end.
//! - **From the Engine's stats stream** otherwise (a remote daemon, a runner in a container
//!   that sees only its own cgroup): one request per container for the whole job, a sample a
//!   second; a stage shorter than that may be missed.
//!
//! Either way the memory figure is the cgroup's usage without its inactive page cache, as
//! `docker stats` shows it, and the peak is the highest sample; the CPU time survives the
//! container's stops and starts (a restarted container's counter starts again). After each
//! stage the executor hands the job's figures so far to the sink. The figures are never more
//! than what the containers used.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures::StreamExt;
use runnel_executor::ResourceUsage;
use tokio::time::Instant;

/// How often the cgroup files of a job's containers are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The shortest span a CPU rate is computed over: the files of one sample are not read at
/// one instant, so shorter spans (a stage's end right after a sample) would give noise.
const MIN_RATE_SPAN_NS: i64 = 250_000_000;

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The most read from one cgroup file (they are a few hundred bytes).
const MAX_CGROUP_FILE: u64 = 64 * 1024;

/// Follows what a job's containers use.
#[derive(Debug)]
pub(crate) struct ResourceMonitor {
    state: Arc<Mutex<Figures>>,
    /// The configured `cgroup_parent` of job containers.
    cgroup_parent: Option<String>,
    /// Where cgroups are mounted (tests use a directory of their own).
    cgroup_root: PathBuf,
    /// The containers followed, and how.
    followed: Vec<String>,
    /// The containers whose cgroup files are read here.
    cgroups: Arc<Mutex<Vec<(String, Cgroup)>>>,
    /// Reads `cgroups` every [`SAMPLE_EVERY`].
    sampler: Option<tokio::task::JoinHandle<()>>,
    /// The stats streams of the containers whose cgroup is not visible here.
    streams: Vec<tokio::task::JoinHandle<()>>,
    /// The clock the cgroup samples are timed by.
    epoch: Instant,
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
    /// The last counter value.
    last: Option<u64>,
    /// The job's CPU nanoseconds in this container, and when (nanoseconds of the sample's
    /// clock), at the start of the span the next rate is computed over.
    anchor: Option<(u64, i64)>,
}

impl ContainerCpu {
    fn total_ns(&self) -> u64 {
        self.earlier_ns + self.last.unwrap_or(0)
    }
}

/// One reading of a container's usage.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    /// When, in nanoseconds of the sample's clock.
    at_ns: i64,
    /// Memory in use without the inactive page cache.
    memory: Option<u64>,
    /// CPU nanoseconds since the container (re)started.
    cpu_ns: Option<u64>,
}

impl ResourceMonitor {
    /// A monitor for containers created with `cgroup_parent` (the configured one, if any).
    pub(crate) fn new(cgroup_parent: Option<String>) -> Self {
        Self::with_cgroup_root(cgroup_parent, PathBuf::from(CGROUP_ROOT))
    }

    fn with_cgroup_root(cgroup_parent: Option<String>, cgroup_root: PathBuf) -> Self {
        ResourceMonitor {
            state: Arc::default(),
            cgroup_parent: cgroup_parent.filter(|parent| !parent.trim_matches('/').is_empty()),
            cgroup_root,
            followed: Vec::new(),
            cgroups: Arc::default(),
            sampler: None,
            streams: Vec::new(),
            epoch: Instant::now(),
        }
    }

    /// Starts following the running container `id`, once: by its cgroup files when they are
    /// visible here, else by its stats stream.
    pub(crate) fn follow(&mut self, docker: &Docker, id: &str) {
        if self.followed.iter().any(|known| known == id) {
            return;
        }
        self.followed.push(id.to_owned());
        let cgroup = Cgroup::find(&self.cgroup_root, id, self.cgroup_parent.as_deref());
        match cgroup {
            Some(cgroup) => {
                tracing::debug!(container = id, ?cgroup, "container figures from its cgroup");
                lock(&self.cgroups).push((id.to_owned(), cgroup));
                self.sample_now();
                self.start_sampler();
            }
            None => {
                tracing::debug!(
                    container = id,
                    "container cgroup not visible here; figures from the stats stream"
                );
                self.follow_stream(docker, id);
            }
        }
    }

    fn start_sampler(&mut self) {
        if self.sampler.is_some() {
            return;
        }
        let cgroups = Arc::clone(&self.cgroups);
        let state = Arc::clone(&self.state);
        let epoch = self.epoch;
        self.sampler = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sample_cgroups(&cgroups, &state, epoch);
            }
        }));
    }

    fn follow_stream(&mut self, docker: &Docker, id: &str) {
        let docker = docker.clone();
        let id = id.to_owned();
        let state = Arc::clone(&self.state);
        self.streams.push(tokio::spawn(async move {
            let mut stats = docker.stats(
                &id,
                Some(StatsOptions {
                    stream: true,
                    one_shot: false,
                }),
            );
            while let Some(Ok(sample)) = stats.next().await {
                if let Some(sample) = stats_sample(&sample) {
                    lock(&state).record(&id, sample);
                }
            }
        }));
    }

    /// Reads the cgroup files of the containers followed that way.
    fn sample_now(&self) {
        sample_cgroups(&self.cgroups, &self.state, self.epoch);
    }

    /// The job's figures so far (the cgroups are read once more first).
    pub(crate) fn usage(&self) -> ResourceUsage {
        self.sample_now();
        let state = lock(&self.state);
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
        for task in self.sampler.iter().chain(&self.streams) {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads every cgroup in `cgroups` into `state`; a container that is not running (its cgroup
/// is gone until it starts again) is skipped.
fn sample_cgroups(cgroups: &Mutex<Vec<(String, Cgroup)>>, state: &Mutex<Figures>, epoch: Instant) {
    let cgroups = lock(cgroups).clone();
    for (id, cgroup) in &cgroups {
        let Some((memory, cpu_ns)) = cgroup.read() else {
            continue;
        };
        let at_ns = i64::try_from(epoch.elapsed().as_nanos()).unwrap_or(i64::MAX);
        lock(state).record(
            id,
            Sample {
                at_ns,
                memory: Some(memory),
                cpu_ns: Some(cpu_ns),
            },
        );
    }
}

/// The figures of one stats-stream sample; `None` for a stopped container's empty one.
fn stats_sample(sample: &ContainerStatsResponse) -> Option<Sample> {
    let at_ns = sample
        .read
        .as_ref()
        .and_then(|read| {
            time::OffsetDateTime::parse(read, &time::format_description::well_known::Rfc3339).ok()
        })
        .and_then(|read| i64::try_from(read.unix_timestamp_nanos()).ok())
        .filter(|ns| *ns > 0)?;
    let memory = sample.memory_stats.as_ref().and_then(|memory| {
        let usage = memory.usage?;
        let stats = memory.stats.as_ref();
        let cache = ["inactive_file", "total_inactive_file", "cache"]
            .iter()
            .find_map(|key| stats.and_then(|stats| stats.get(*key)).copied())
            .unwrap_or(0);
        Some(usage.saturating_sub(cache))
    });
    let cpu_ns = sample
        .cpu_stats
        .as_ref()
        .and_then(|cpu| cpu.cpu_usage.as_ref())
        .and_then(|usage| usage.total_usage);
    Some(Sample {
        at_ns,
        memory,
        cpu_ns,
    })
}

impl Figures {
    fn record(&mut self, id: &str, sample: Sample) {
        if let Some(memory) = sample.memory {
            self.peak_memory = self.peak_memory.max(memory);
        }
        let Some(counter) = sample.cpu_ns else {
            return;
        };
        let cpu = self.containers.entry(id.to_owned()).or_default();
        if let Some(last) = cpu.last
            && counter < last
        {
            // The counter went back: the container runs in a new cgroup.
            cpu.earlier_ns += last;
        }
        cpu.last = Some(counter);
        let total = cpu.total_ns();
        match cpu.anchor {
            Some((then, at)) => {
                let span = sample.at_ns.saturating_sub(at);
                if span >= MIN_RATE_SPAN_NS {
                    let cores = total.saturating_sub(then) as f64 / span as f64;
                    self.peak_cores = self.peak_cores.max(cores);
                    cpu.anchor = Some((total, sample.at_ns));
                }
            }
            None => cpu.anchor = Some((total, sample.at_ns)),
        }
    }
}

/// A container's cgroup as this host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cgroup {
    /// cgroup v2: one directory with every controller's files.
    Unified(PathBuf),
    /// cgroup v1: the directories of the memory and the CPU accounting controllers.
    Split { memory: PathBuf, cpuacct: PathBuf },
}

impl Cgroup {
    /// The cgroup of container `id` (its full 64-digit id) under `root`, when it is visible.
    fn find(root: &Path, id: &str, parent: Option<&str>) -> Option<Cgroup> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let candidates = cgroup_candidates(id, parent, current_uid());
        let found = if root.join("cgroup.controllers").is_file() {
            candidates
                .iter()
                .map(|relative| root.join(relative))
                .find(|dir| dir.join("cpu.stat").is_file() && dir.join("memory.current").is_file())
                .map(Cgroup::Unified)
        } else {
            candidates.iter().find_map(|relative| {
                let memory = root.join("memory").join(relative);
                let cpuacct = root.join("cpuacct").join(relative);
                (memory.join("memory.usage_in_bytes").is_file()
                    && cpuacct.join("cpuacct.usage").is_file())
                .then_some(Cgroup::Split { memory, cpuacct })
            })
        };
        // Only a cgroup whose files can be read counts as found.
        found.filter(|cgroup| cgroup.read().is_some())
    }

    /// (memory without inactive page cache, CPU nanoseconds); `None` when the files cannot be
    /// read (the container stopped and its cgroup went away).
    fn read(&self) -> Option<(u64, u64)> {
        match self {
            Cgroup::Unified(dir) => {
                let usage = read_number(&dir.join("memory.current"))?;
                let inactive = read_key(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
                let cpu_us = read_key(&dir.join("cpu.stat"), "usage_usec")?;
                Some((usage.saturating_sub(inactive), cpu_us.saturating_mul(1000)))
            }
            Cgroup::Split { memory, cpuacct } => {
                let usage = read_number(&memory.join("memory.usage_in_bytes"))?;
                let inactive =
                    read_key(&memory.join("memory.stat"), "total_inactive_file").unwrap_or(0);
                let cpu_ns = read_number(&cpuacct.join("cpuacct.usage"))?;
                Some((usage.saturating_sub(inactive), cpu_ns))
            }
        }
    }
}

/// Where Docker puts container `id`'s cgroup, relative to a hierarchy's root: under the
/// configured parent first (a systemd slice or a plain path), then the defaults of the
/// `cgroupfs` driver, the `systemd` driver, and rootless Docker under systemd.
fn cgroup_candidates(id: &str, parent: Option<&str>, uid: Option<u32>) -> Vec<String> {
    let mut candidates = Vec::new();
    if let Some(parent) = parent.map(|parent| parent.trim_matches('/')) {
        match parent.strip_suffix(".slice") {
            Some(_) => {
                let slice = slice_path(parent);
                candidates.push(if slice.is_empty() {
                    format!("docker-{id}.scope")
                } else {
                    format!("{slice}/docker-{id}.scope")
                });
            }
            None => candidates.push(format!("{parent}/{id}")),
        }
    }
    candidates.push(format!("docker/{id}"));
    candidates.push(format!("system.slice/docker-{id}.scope"));
    if let Some(uid) = uid {
        candidates.push(format!(
            "user.slice/user-{uid}.slice/user@{uid}.service/user.slice/docker-{id}.scope"
        ));
    }
    candidates
}

/// A systemd slice's path in the hierarchy: `a-b.slice` is `a.slice/a-b.slice`.
fn slice_path(slice: &str) -> String {
    let name = slice.strip_suffix(".slice").unwrap_or(slice);
    if name == "-" || name.is_empty() {
        return String::new();
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path.join("/")
}

/// The uid this process runs as.
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").ok().map(|meta| meta.uid())
}

/// The start of a cgroup file, bounded.
fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_CGROUP_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// A file holding one number.
fn read_number(path: &Path) -> Option<u64> {
    read_small(path)?.trim().parse().ok()
}

/// The value of `key` in a file of `key value` lines.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    read_small(path)?.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
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

    fn monitor_with(figures: Figures) -> ResourceMonitor {
        let monitor = ResourceMonitor::new(None);
        *lock(&monitor.state) = figures;
        monitor
    }

    #[test]
    fn peaks_and_cpu_time_come_from_the_stream_samples() {
        let mut figures = Figures::default();
        let mut record = |id: &str, stats: &ContainerStatsResponse| {
            if let Some(sample) = stats_sample(stats) {
                figures.record(id, sample);
            }
        };
        record("a", &sample(0, 10 << 20, 2 << 20, 0));
        record("a", &sample(1000, 30 << 20, 4 << 20, 500_000_000));
        record("a", &sample(2000, 12 << 20, 0, 600_000_000));
        // A restart: the counter starts again.
        record("a", &sample(3000, 1 << 20, 0, 100_000_000));
        record("b", &sample(3000, 5 << 20, 0, 250_000_000));
        // A stopped container's empty sample changes nothing.
        let empty: ContainerStatsResponse =
            serde_json::from_value(serde_json::json!({"read": "0001-01-01T00:00:00Z"}))
                .expect("an empty sample");
        record("a", &empty);
        let usage = monitor_with(figures).usage();
        assert_eq!(usage.peak_memory_bytes, 26 << 20);
        assert!((usage.cpu_seconds - 0.95).abs() < 1e-9, "{usage:?}");
        assert!((usage.peak_cores - 0.5).abs() < 1e-9, "{usage:?}");
    }

    #[test]
    fn rates_are_not_computed_over_spans_too_short_to_mean_anything() {
        let mut figures = Figures::default();
        let at = |ms: i64, cpu_ms: u64| Sample {
            at_ns: ms * 1_000_000,
            memory: None,
            cpu_ns: Some(cpu_ms * 1_000_000),
        };
        figures.record("a", at(0, 0));
        // 40 ms of CPU read 10 ms later: no rate of 4 cores.
        figures.record("a", at(10, 40));
        assert_eq!(figures.peak_cores, 0.0);
        // Over the half second since the anchor: 0.2 cores.
        figures.record("a", at(500, 100));
        assert!((figures.peak_cores - 0.2).abs() < 1e-9, "{figures:?}");
        assert_eq!(figures.containers["a"].total_ns(), 100_000_000);
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_cgroup_v2_directory_is_found_and_read() {
        let root = tempfile::tempdir().expect("tempdir");
        write(&root.path().join("cgroup.controllers"), "cpu memory\n");
        let dir = root.path().join(format!("system.slice/docker-{ID}.scope"));
        write(&dir.join("memory.current"), "41943040\n");
        write(
            &dir.join("memory.stat"),
            "anon 30000000\nfile 11943040\ninactive_file 10485760\nactive_file 0\n",
        );
        write(
            &dir.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        );
        let cgroup = Cgroup::find(root.path(), ID, None).expect("found");
        assert_eq!(cgroup, Cgroup::Unified(dir.clone()));
        assert_eq!(cgroup.read(), Some((31_457_280, 1_500_000_000)));
        // Not another container's, nor a short id.
        assert_eq!(Cgroup::find(root.path(), &ID.replace('0', "f"), None), None);
        assert_eq!(Cgroup::find(root.path(), &ID[..12], None), None);

        let mut monitor = ResourceMonitor::with_cgroup_root(None, root.path().to_owned());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let docker =
                Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                    .expect("a client (not used)");
            monitor.follow(&docker, ID);
            write(&dir.join("cpu.stat"), "usage_usec 2000000\n");
            let usage = monitor.usage();
            assert_eq!(usage.peak_memory_bytes, 31_457_280);
            assert!((usage.cpu_seconds - 2.0).abs() < 1e-9, "{usage:?}");
            assert!(monitor.streams.is_empty(), "no stats stream was opened");
        });
    }

    #[test]
    fn a_cgroup_v1_pair_is_found_under_the_configured_parent() {
        let root = tempfile::tempdir().expect("tempdir");
        let memory = root.path().join(format!("memory/ci/jobs/{ID}"));
        let cpuacct = root.path().join(format!("cpuacct/ci/jobs/{ID}"));
        write(&memory.join("memory.usage_in_bytes"), "20971520\n");
        write(
            &memory.join("memory.stat"),
            "cache 4194304\ninactive_file 1048576\ntotal_inactive_file 2097152\n",
        );
        write(&cpuacct.join("cpuacct.usage"), "250000000\n");
        let cgroup = Cgroup::find(root.path(), ID, Some("/ci/jobs/")).expect("found");
        assert_eq!(
            cgroup,
            Cgroup::Split {
                memory,
                cpuacct: cpuacct.clone()
            }
        );
        assert_eq!(cgroup.read(), Some((18_874_368, 250_000_000)));
        // Gone with a stopped container: nothing read, nothing found.
        std::fs::remove_file(cpuacct.join("cpuacct.usage")).expect("rm");
        assert_eq!(cgroup.read(), None);
        assert_eq!(Cgroup::find(root.path(), ID, Some("/ci/jobs/")), None);
    }

    #[test]
    fn candidates_follow_the_drivers_layouts() {
        assert_eq!(
            cgroup_candidates("ID", Some("runner-ci.slice"), Some(1000)),
            [
                "runner.slice/runner-ci.slice/docker-ID.scope",
                "docker/ID",
                "system.slice/docker-ID.scope",
                "user.slice/user-1000.slice/user@1000.service/user.slice/docker-ID.scope",
            ]
        );
        assert_eq!(
            cgroup_candidates("ID", Some("/ci"), None),
            ["ci/ID", "docker/ID", "system.slice/docker-ID.scope"]
        );
    }
}
