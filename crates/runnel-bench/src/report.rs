//! The catalogue of metrics, the collected samples, and their two renderings: a text table for
//! people and a JSON document for machines.
//!
//! Every metric the tool can produce is declared once in [`METRICS`] (name, unit, meaning); the
//! scenarios only add samples by name. The report does not judge the numbers (no thresholds, no
//! comparisons with earlier runs).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::Summary;

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Bare process spawn and loopback HTTP round trip.
    Floors,
    /// Idle memory after polling for a while.
    Idle,
    /// Time from enqueue to the runner's `running` acknowledgement.
    Pickup,
    /// Enqueue to final state of a trivial job.
    E2e,
    /// Trivial jobs per second at several `concurrent` values.
    Throughput,
    /// Many sleeping jobs at once: memory and CPU per job.
    Scale,
    /// A job printing many megabytes: throughput, CPU and latency of the log path.
    Log,
    /// Runnel and independent peer runners measured alternately, with ratios.
    Peers,
    /// A trivial job with the docker executor: end to end time and Docker API round trips.
    Docker,
    /// A trivial job with the kubernetes executor through the test API server, attach and exec.
    Kubernetes,
    /// Cache archives of a generated tree: runnel against zip and tar+zstd.
    Archive,
}

impl Scenario {
    /// All scenarios in run order.
    pub const ALL: [Self; 11] = [
        Self::Floors,
        Self::Idle,
        Self::Pickup,
        Self::E2e,
        Self::Throughput,
        Self::Scale,
        Self::Log,
        Self::Peers,
        Self::Docker,
        Self::Kubernetes,
        Self::Archive,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Floors => "floors",
            Self::Idle => "idle",
            Self::Pickup => "pickup",
            Self::E2e => "e2e",
            Self::Throughput => "throughput",
            Self::Scale => "scale",
            Self::Log => "log",
            Self::Peers => "peers",
            Self::Docker => "docker",
            Self::Kubernetes => "kubernetes",
            Self::Archive => "archive",
        }
    }
}

/// One metric the tool can report.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// JSON key, e.g. `idle_tree_rss_kib`.
    pub name: &'static str,
    /// Unit, e.g. `ms`.
    pub unit: &'static str,
    /// The scenario producing it.
    pub scenario: Scenario,
    /// One line saying what it measures.
    pub about: &'static str,
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    scenario: Scenario,
    about: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        unit,
        scenario,
        about,
    }
}

/// Every metric, in display order.
pub const METRICS: &[MetricDef] = &[
    metric(
        "floor_bash_spawn_ms",
        "ms",
        Scenario::Floors,
        "spawn and reap `bash -c true`",
    ),
    metric(
        "floor_http_rtt_ms",
        "ms",
        Scenario::Floors,
        "one loopback POST /jobs/request answered 204 by the fake (kept-alive connection)",
    ),
    metric(
        "idle_runner_rss_kib",
        "KiB",
        Scenario::Idle,
        "VmRSS of the runner process after the idle period",
    ),
    metric(
        "idle_tree_rss_kib",
        "KiB",
        Scenario::Idle,
        "VmRSS of the runner and all its descendants after the idle period",
    ),
    metric(
        "idle_cpu_percent",
        "% core",
        Scenario::Idle,
        "runner CPU (utime+stime) during the idle period",
    ),
    metric(
        "pickup_long_poll_ci3_ms",
        "ms",
        Scenario::Pickup,
        "enqueue to `running` ack, long polling, check_interval 3 s",
    ),
    metric(
        "pickup_long_poll_ci1_ms",
        "ms",
        Scenario::Pickup,
        "enqueue to `running` ack, long polling, check_interval 1 s",
    ),
    metric(
        "pickup_no_long_poll_ci3_ms",
        "ms",
        Scenario::Pickup,
        "enqueue to `running` ack, fake answers 204 at once, check_interval 3 s",
    ),
    metric(
        "pickup_no_long_poll_ci1_ms",
        "ms",
        Scenario::Pickup,
        "enqueue to `running` ack, fake answers 204 at once, check_interval 1 s",
    ),
    metric(
        "e2e_trivial_ms",
        "ms",
        Scenario::E2e,
        "enqueue to accepted `success` of `true` (GIT_STRATEGY none), long polling",
    ),
    metric(
        "e2e_api_requests",
        "requests",
        Scenario::E2e,
        "API requests the runner made for that job (job request included)",
    ),
    metric(
        "e2e_overhead_ms",
        "ms",
        Scenario::E2e,
        "e2e_trivial_ms minus one bash spawn floor and e2e_api_requests loopback round trips",
    ),
    metric(
        "throughput_c4_jobs_per_s",
        "jobs/s",
        Scenario::Throughput,
        "trivial jobs per second, concurrent 4 (first enqueue to last success)",
    ),
    metric(
        "throughput_c16_jobs_per_s",
        "jobs/s",
        Scenario::Throughput,
        "trivial jobs per second, concurrent 16",
    ),
    metric(
        "throughput_c64_jobs_per_s",
        "jobs/s",
        Scenario::Throughput,
        "trivial jobs per second, concurrent 64",
    ),
    metric(
        "scale_jobs_running",
        "jobs",
        Scenario::Scale,
        "`sleep` jobs seen running at once (should equal the requested count)",
    ),
    metric(
        "scale_runner_rss_per_job_kib",
        "KiB",
        Scenario::Scale,
        "runner process RSS growth from idle, divided by the running jobs",
    ),
    metric(
        "scale_tree_rss_per_job_kib",
        "KiB",
        Scenario::Scale,
        "whole tree RSS growth (runner + bash + sleep) per running job",
    ),
    metric(
        "scale_runner_cpu_percent",
        "% core",
        Scenario::Scale,
        "runner CPU while every job sleeps",
    ),
    metric(
        "log_plain_mb_per_s",
        "MB/s",
        Scenario::Log,
        "job output reaching the fake, from the first to the last marker, no masked variable",
    ),
    metric(
        "log_plain_cpu_s_per_100mb",
        "s",
        Scenario::Log,
        "runner CPU seconds per 100 MB of job output, no masked variable",
    ),
    metric(
        "log_plain_latency_median_ms",
        "ms",
        Scenario::Log,
        "median delay from a marker line printed to the fake holding it",
    ),
    metric(
        "log_plain_latency_max_ms",
        "ms",
        Scenario::Log,
        "largest such delay",
    ),
    metric(
        "log_plain_first_line_ms",
        "ms",
        Scenario::Log,
        "that delay for the first line the script prints",
    ),
    metric(
        "log_masked_mb_per_s",
        "MB/s",
        Scenario::Log,
        "as log_plain_mb_per_s, with a masked variable whose value is on every line",
    ),
    metric(
        "log_masked_cpu_s_per_100mb",
        "s",
        Scenario::Log,
        "as log_plain_cpu_s_per_100mb, masked",
    ),
    metric(
        "log_masked_latency_median_ms",
        "ms",
        Scenario::Log,
        "as log_plain_latency_median_ms, masked",
    ),
    metric(
        "log_masked_latency_max_ms",
        "ms",
        Scenario::Log,
        "as log_plain_latency_max_ms, masked",
    ),
    metric(
        "log_masked_first_line_ms",
        "ms",
        Scenario::Log,
        "as log_plain_first_line_ms, masked",
    ),
    metric(
        "peers_runnel_idle_rss_kib",
        "KiB",
        Scenario::Peers,
        "Runnel's idle VmRSS, measured alternately with the peers",
    ),
    metric(
        "peers_rust_idle_rss_kib",
        "KiB",
        Scenario::Peers,
        "idle VmRSS of the gitlab-runner-crate peer (polls every 3 s)",
    ),
    metric(
        "peers_rust_idle_rss_ratio",
        "ratio",
        Scenario::Peers,
        "peers_rust_idle_rss_kib / peers_runnel_idle_rss_kib, per repetition",
    ),
    metric(
        "peers_python_idle_rss_kib",
        "KiB",
        Scenario::Peers,
        "idle VmRSS of gitlab-python-runner (polls every 40 s)",
    ),
    metric(
        "peers_python_idle_rss_ratio",
        "ratio",
        Scenario::Peers,
        "peers_python_idle_rss_kib / peers_runnel_idle_rss_kib, per repetition",
    ),
    metric(
        "peers_runnel_pickup_ms",
        "ms",
        Scenario::Peers,
        "Runnel: enqueue to job handed out, no long polling, check_interval 1 s",
    ),
    metric(
        "peers_rust_pickup_ms",
        "ms",
        Scenario::Peers,
        "gitlab-runner-crate peer: enqueue to job handed out, polling every 1 s",
    ),
    metric(
        "peers_rust_pickup_ratio",
        "ratio",
        Scenario::Peers,
        "peers_rust_pickup_ms / peers_runnel_pickup_ms, per repetition (same enqueue phase)",
    ),
    metric(
        "peers_runnel_e2e_ms",
        "ms",
        Scenario::Peers,
        "Runnel: trivial job from handed out to accepted `success`",
    ),
    metric(
        "peers_rust_e2e_ms",
        "ms",
        Scenario::Peers,
        "gitlab-runner-crate peer: trivial job from handed out to accepted `success`",
    ),
    metric(
        "peers_rust_e2e_ratio",
        "ratio",
        Scenario::Peers,
        "peers_rust_e2e_ms / peers_runnel_e2e_ms, per repetition",
    ),
    metric(
        "peers_python_e2e_ms",
        "ms",
        Scenario::Peers,
        "gitlab-python-runner: trivial job (with its forced clone) from handed out to `success`",
    ),
    metric(
        "peers_python_e2e_ratio",
        "ratio",
        Scenario::Peers,
        "peers_python_e2e_ms / peers_runnel_e2e_ms, per repetition",
    ),
    metric(
        "peers_runnel_throughput_c4_jobs_per_s",
        "jobs/s",
        Scenario::Peers,
        "Runnel: trivial jobs per second at concurrent 4, alternated with the peer",
    ),
    metric(
        "peers_rust_throughput_c4_jobs_per_s",
        "jobs/s",
        Scenario::Peers,
        "gitlab-runner-crate peer: trivial jobs per second, 4 at a time",
    ),
    metric(
        "peers_rust_throughput_c4_ratio",
        "ratio",
        Scenario::Peers,
        "peers_rust_throughput_c4_jobs_per_s / Runnel's, per repetition",
    ),
    metric(
        "docker_floor_run_ms",
        "ms",
        Scenario::Docker,
        "`docker run --rm` of `true` in the busybox image with the docker CLI",
    ),
    metric(
        "docker_trivial_ms",
        "ms",
        Scenario::Docker,
        "enqueue to accepted `success` of `true` with the docker executor, long polling",
    ),
    metric(
        "docker_trivial_ratio",
        "ratio",
        Scenario::Docker,
        "docker_trivial_ms / the docker_floor_run_ms measured right before it, per repetition",
    ),
    metric(
        "docker_api_requests",
        "requests",
        Scenario::Docker,
        "GitLab API requests the runner made for that job (job request included)",
    ),
    metric(
        "docker_engine_requests",
        "requests",
        Scenario::Docker,
        "Docker Engine API requests the runner made for that job",
    ),
    metric(
        "kubernetes_floor_run_ms",
        "ms",
        Scenario::Kubernetes,
        "`docker run --rm` of `true` in the busybox image with the docker CLI",
    ),
    metric(
        "kubernetes_trivial_ms",
        "ms",
        Scenario::Kubernetes,
        "enqueue to accepted `success` of `true` with the kubernetes executor (attach mode) against runnel-fake-kube, long polling",
    ),
    metric(
        "kubernetes_trivial_ratio",
        "ratio",
        Scenario::Kubernetes,
        "kubernetes_trivial_ms / the kubernetes_floor_run_ms measured right before it, per repetition",
    ),
    metric(
        "kubernetes_exec_trivial_ms",
        "ms",
        Scenario::Kubernetes,
        "the same job in exec mode (FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY=true)",
    ),
    metric(
        "archive_tree_mb",
        "MB",
        Scenario::Archive,
        "bytes in the generated tree's files",
    ),
    metric(
        "archive_runnel_zip_create_s",
        "s",
        Scenario::Archive,
        "`runnel cache-archiver`, zip (deflate 5, parallel)",
    ),
    metric(
        "archive_runnel_zip_extract_s",
        "s",
        Scenario::Archive,
        "`runnel cache-extractor` of that zip",
    ),
    metric(
        "archive_runnel_zip_create_mb_per_s",
        "MB/s",
        Scenario::Archive,
        "tree MB per second of the zip create",
    ),
    metric(
        "archive_runnel_zip_extract_mb_per_s",
        "MB/s",
        Scenario::Archive,
        "tree MB per second of the zip extract",
    ),
    metric(
        "archive_runnel_zip_mb",
        "MB",
        Scenario::Archive,
        "size of runnel's zip",
    ),
    metric(
        "archive_runnel_zip_create_peak_rss_mib",
        "MiB",
        Scenario::Archive,
        "peak RSS of the zip create",
    ),
    metric(
        "archive_runnel_zip_extract_peak_rss_mib",
        "MiB",
        Scenario::Archive,
        "peak RSS of the zip extract",
    ),
    metric(
        "archive_runnel_tarzst_create_s",
        "s",
        Scenario::Archive,
        "`runnel cache-archiver`, CACHE_COMPRESSION_FORMAT=tarzstd (zstd 3)",
    ),
    metric(
        "archive_runnel_tarzst_extract_s",
        "s",
        Scenario::Archive,
        "`runnel cache-extractor` of that tar.zst",
    ),
    metric(
        "archive_runnel_tarzst_create_mb_per_s",
        "MB/s",
        Scenario::Archive,
        "tree MB per second of the tar.zst create",
    ),
    metric(
        "archive_runnel_tarzst_extract_mb_per_s",
        "MB/s",
        Scenario::Archive,
        "tree MB per second of the tar.zst extract",
    ),
    metric(
        "archive_runnel_tarzst_mb",
        "MB",
        Scenario::Archive,
        "size of runnel's tar.zst",
    ),
    metric(
        "archive_runnel_tarzst_create_peak_rss_mib",
        "MiB",
        Scenario::Archive,
        "peak RSS of the tar.zst create",
    ),
    metric(
        "archive_runnel_tarzst_extract_peak_rss_mib",
        "MiB",
        Scenario::Archive,
        "peak RSS of the tar.zst extract",
    ),
    metric(
        "archive_zip_r_create_s",
        "s",
        Scenario::Archive,
        "`zip -r -q` (deflate 6, one thread)",
    ),
    metric(
        "archive_unzip_extract_s",
        "s",
        Scenario::Archive,
        "`unzip -q` of that zip",
    ),
    metric(
        "archive_zip_r_mb",
        "MB",
        Scenario::Archive,
        "size of zip's archive",
    ),
    metric(
        "archive_zip_create_speedup",
        "x",
        Scenario::Archive,
        "zip -r time divided by runnel's zip create time (same round)",
    ),
    metric(
        "archive_zip_extract_speedup",
        "x",
        Scenario::Archive,
        "unzip time divided by runnel's zip extract time (same round)",
    ),
    metric(
        "archive_tar_zstd_create_s",
        "s",
        Scenario::Archive,
        "`tar -cf - | zstd -T0 -q` (zstd 3, all cores)",
    ),
    metric(
        "archive_zstd_tar_extract_s",
        "s",
        Scenario::Archive,
        "`zstd -d | tar -xf -` of that archive",
    ),
    metric(
        "archive_tar_zstd_mb",
        "MB",
        Scenario::Archive,
        "size of that tar.zst",
    ),
    metric(
        "archive_tarzst_create_vs_peer",
        "x",
        Scenario::Archive,
        "runnel's tar.zst create time divided by tar | zstd -T0's (same round)",
    ),
    metric(
        "archive_tarzst_extract_vs_peer",
        "x",
        Scenario::Archive,
        "runnel's tar.zst extract time divided by zstd -d | tar -x's (same round)",
    ),
];

/// Metrics of the Python peer: produced only when `gitlab-python-runner` is installed.
pub fn is_python_peer_metric(name: &str) -> bool {
    name.starts_with("peers_python_")
}

/// Looks up a metric's definition.
pub fn metric_def(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// A scenario that failed, with its error chain.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioError {
    /// The scenario.
    pub scenario: Scenario,
    /// The error and its causes, `: `-separated.
    pub error: String,
}

/// Facts about the run, stored next to the numbers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    /// Start time, RFC 3339.
    pub started_at: String,
    /// The `runnel` binary measured.
    pub runnel: String,
    /// The exact command line.
    pub command: String,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Repetitions per scenario.
    pub repetitions: u32,
    /// Online CPUs.
    pub cpus: usize,
    /// The scale and size parameters actually used.
    pub parameters: BTreeMap<String, u64>,
    /// The peer runners measured, by kind (`rust_peer`, `python_peer`), with their paths.
    pub peers: BTreeMap<String, String>,
}

/// Samples collected so far.
#[derive(Debug, Default)]
pub struct Report {
    /// Facts about the run.
    pub meta: Meta,
    samples: BTreeMap<&'static str, Vec<f64>>,
    /// Curves for the plots: `(x, y)` points by name (e.g. runner RSS against running jobs).
    series: BTreeMap<&'static str, Vec<(f64, f64)>>,
    /// Scenarios that failed.
    pub errors: Vec<ScenarioError>,
}

impl Report {
    /// An empty report.
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            samples: BTreeMap::new(),
            series: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Adds one `(x, y)` point to curve `name` (plotted, and written under `series` in JSON).
    pub fn record_point(&mut self, name: &'static str, x: f64, y: f64) {
        self.series.entry(name).or_default().push((x, y));
    }

    /// The points of curve `name` so far.
    pub fn points(&self, name: &str) -> &[(f64, f64)] {
        self.series.get(name).map_or(&[], Vec::as_slice)
    }

    /// Adds one sample of metric `name`.
    ///
    /// # Panics
    /// When `name` is not in [`METRICS`]: that is a bug in a scenario, not an input problem.
    pub fn record(&mut self, name: &'static str, sample: f64) {
        assert!(metric_def(name).is_some(), "metric {name} is not declared");
        tracing::debug!(metric = name, sample, "sample");
        self.samples.entry(name).or_default().push(sample);
    }

    /// The samples of `name` so far.
    pub fn samples(&self, name: &str) -> &[f64] {
        self.samples.get(name).map_or(&[], Vec::as_slice)
    }

    /// The JSON document: `meta`, `metrics` keyed by name, `errors`.
    pub fn to_json(&self) -> Value {
        let mut metrics = serde_json::Map::new();
        for def in METRICS {
            let samples = self.samples(def.name);
            if let Some(summary) = Summary::of(samples) {
                metrics.insert(
                    def.name.to_owned(),
                    json!({
                        "unit": def.unit,
                        "scenario": def.scenario,
                        "about": def.about,
                        "min": summary.min,
                        "median": summary.median,
                        "max": summary.max,
                        "samples": samples,
                    }),
                );
            }
        }
        json!({
            "meta": self.meta,
            "metrics": metrics,
            "series": self.series,
            "errors": self.errors,
        })
    }

    /// The human table: one row per metric with samples, then the errors.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 6]> = METRICS
            .iter()
            .filter_map(|def| {
                let samples = self.samples(def.name);
                let s = Summary::of(samples)?;
                Some([
                    def.name.to_owned(),
                    def.unit.to_owned(),
                    number(s.min),
                    number(s.median),
                    number(s.max),
                    samples.len().to_string(),
                ])
            })
            .collect();
        let header = ["metric", "unit", "min", "median", "max", "n"].map(str::to_owned);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let [name, unit, rest @ ..] = row;
            out.push_str(&format!(
                "{name:<w0$}  {unit:<w1$}",
                w0 = widths[0],
                w1 = widths[1]
            ));
            for (cell, width) in rest.iter().zip(&widths[2..]) {
                out.push_str(&format!("  {cell:>width$}"));
            }
            out.push('\n');
        }
        for error in &self.errors {
            out.push_str(&format!(
                "FAILED {}: {}\n",
                error.scenario.as_str(),
                error.error
            ));
        }
        out
    }
}

/// Three significant-looking decimals for small numbers, fewer for big ones.
fn number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1000.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        let mut report = Report::new(Meta::default());
        report.record("floor_bash_spawn_ms", 1.25);
        report.record("floor_bash_spawn_ms", 0.75);
        report.record("floor_bash_spawn_ms", 2.5);
        report.record("idle_tree_rss_kib", 10240.0);
        report.record("throughput_c64_jobs_per_s", 123.456);
        report.errors.push(ScenarioError {
            scenario: Scenario::Scale,
            error: "runner exited early".to_owned(),
        });
        report
    }

    #[test]
    fn table_layout() {
        insta::assert_snapshot!(sample_report().table());
    }

    #[test]
    fn json_has_summaries_for_recorded_metrics_only() {
        let json = sample_report().to_json();
        let spawn = &json["metrics"]["floor_bash_spawn_ms"];
        assert_eq!(spawn["min"], 0.75);
        assert_eq!(spawn["median"], 1.25);
        assert_eq!(spawn["max"], 2.5);
        assert_eq!(spawn["unit"], "ms");
        assert!(json["metrics"].get("pickup_long_poll_ci3_ms").is_none());
        assert_eq!(json["errors"][0]["scenario"], "scale");
    }

    #[test]
    fn metric_names_are_unique() {
        for (i, def) in METRICS.iter().enumerate() {
            assert!(
                METRICS[i + 1..].iter().all(|other| other.name != def.name),
                "{} declared twice",
                def.name
            );
        }
    }
}
