//! Prometheus metrics with the official runner's names and labels, so existing dashboards keep
//! working, plus per-job resource figures the official runner does not have.
//!
//! One process-wide registry ([`metrics`]); the HTTP side lives in `http.rs`. Label values never
//! contain tokens: runners are labelled by their short token, as the official runner does.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The metrics of this process.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) concurrent: IntGauge,
    pub(crate) limit: IntGaugeVec,
    pub(crate) jobs: IntGaugeVec,
    pub(crate) jobs_total: IntCounterVec,
    pub(crate) job_duration: HistogramVec,
    pub(crate) stage_duration: HistogramVec,
    pub(crate) failed_jobs: IntCounterVec,
    pub(crate) api_statuses: IntCounterVec,
    pub(crate) api_duration: HistogramVec,
    pub(crate) api_retries: IntCounterVec,
    pub(crate) worker_feeds: IntCounterVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) job_peak_memory: HistogramVec,
    pub(crate) job_cpu: HistogramVec,
}

const RUNNER: &[&str] = &["runner", "runner_name", "system_id"];

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            concurrent: IntGauge::new(
                "gitlab_runner_concurrent",
                "The current value of concurrent setting",
            )
            .expect("valid metric"),
            limit: gauge_vec(
                "gitlab_runner_limit",
                "The current value of limit setting",
                RUNNER,
            ),
            jobs: gauge_vec(
                "gitlab_runner_jobs",
                "The current number of running builds.",
                &[
                    "runner",
                    "runner_name",
                    "system_id",
                    "state",
                    "stage",
                    "executor_stage",
                ],
            ),
            jobs_total: counter_vec(
                "gitlab_runner_jobs_total",
                "Total number of handled jobs",
                RUNNER,
            ),
            job_duration: histogram_vec(
                "gitlab_runner_job_duration_seconds",
                "Histogram of job durations",
                &["runner", "runner_name", "system_id", "mode"],
                vec![
                    30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
                ],
            ),
            stage_duration: histogram_vec(
                "gitlab_runner_job_stage_duration_seconds",
                "Histogram of job stage durations",
                &["runner", "runner_name", "system_id", "stage"],
                vec![
                    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
                ],
            ),
            failed_jobs: counter_vec(
                "gitlab_runner_failed_jobs_total",
                "Total number of failed jobs",
                &["runner", "runner_name", "failure_reason", "mode"],
            ),
            api_statuses: counter_vec(
                "gitlab_runner_api_request_statuses_total",
                "The total number of API requests, partitioned by runner, endpoint and status.",
                &["runner", "system_id", "endpoint", "status", "method"],
            ),
            api_duration: histogram_vec(
                "gitlab_runner_api_request_duration_seconds",
                "Latency histogram of API requests made by GitLab Runner",
                &["runner", "system_id", "endpoint", "status_class", "method"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            api_retries: counter_vec(
                "gitlab_runner_api_request_retries_total",
                "Total number of API request retries",
                &["path", "method"],
            ),
            worker_feeds: counter_vec(
                "gitlab_runner_worker_feeds_total",
                "Total number of times a runner was fed to the workers",
                RUNNER,
            ),
            errors: counter_vec(
                "gitlab_runner_errors_total",
                "The number of caught errors.",
                &["level"],
            ),
            job_peak_memory: histogram_vec(
                "runnel_job_peak_memory_bytes",
                "Peak resident memory of a job's processes",
                RUNNER,
                prometheus::exponential_buckets(1024.0 * 1024.0, 4.0, 10).expect("valid buckets"),
            ),
            job_cpu: histogram_vec(
                "runnel_job_cpu_seconds",
                "CPU time used by a job's processes",
                RUNNER,
                prometheus::exponential_buckets(0.01, 4.0, 12).expect("valid buckets"),
            ),
            registry,
        };
        let version = gauge_vec(
            "gitlab_runner_version_info",
            "A metric with a constant '1' value labeled by different build stats fields.",
            &[
                "name",
                "version",
                "revision",
                "branch",
                "go_version",
                "built_at",
                "os",
                "architecture",
            ],
        );
        // The official label set; Runnel is not built with Go, so `go_version` is empty.
        version
            .with_label_values(&[
                "runnel",
                env!("CARGO_PKG_VERSION"),
                option_env!("RUNNEL_REVISION").unwrap_or("unknown"),
                option_env!("RUNNEL_BRANCH").unwrap_or("unknown"),
                "",
                option_env!("RUNNEL_BUILT_AT").unwrap_or("unknown"),
                std::env::consts::OS,
                std::env::consts::ARCH,
            ])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(version),
            Box::new(m.concurrent.clone()),
            Box::new(m.limit.clone()),
            Box::new(m.jobs.clone()),
            Box::new(m.jobs_total.clone()),
            Box::new(m.job_duration.clone()),
            Box::new(m.stage_duration.clone()),
            Box::new(m.failed_jobs.clone()),
            Box::new(m.api_statuses.clone()),
            Box::new(m.api_duration.clone()),
            Box::new(m.api_retries.clone()),
            Box::new(m.worker_feeds.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.job_peak_memory.clone()),
            Box::new(m.job_cpu.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            // Names are unique by construction; a failure would be a programming error caught
            // by the tests, so it is only logged.
            if let Err(error) = m.registry.register(collector) {
                tracing::error!(%error, "cannot register a metric");
            }
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric")
}

/// Records API calls of one runner (the client's observer).
#[derive(Debug)]
pub(crate) struct ApiObserver {
    pub(crate) runner: String,
    pub(crate) system_id: String,
}

impl runnel_api::RequestObserver for ApiObserver {
    fn observe(&self, event: &runnel_api::RequestEvent) {
        let m = metrics();
        let endpoint = event.endpoint.as_str();
        let status = event
            .status
            .map_or_else(|| "-1".to_owned(), |s| s.as_u16().to_string());
        m.api_statuses
            .with_label_values(&[
                &self.runner,
                &self.system_id,
                endpoint,
                &status,
                event.method.as_str(),
            ])
            .inc();
        let class = event.status.map_or("error", |s| match s.as_u16() / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        });
        m.api_duration
            .with_label_values(&[
                &self.runner,
                &self.system_id,
                endpoint,
                class,
                event.method.as_str(),
            ])
            .observe(event.duration.as_secs_f64());
        if event.retry_in.is_some() {
            m.api_retries
                .with_label_values(&[retry_path(event.endpoint), event.method.as_str()])
                .inc();
        }
    }
}

/// The request path as the official runner labels retries: the API path with numeric
/// segments as `{id}` (a GitLab installed under a sub-path is not reflected).
fn retry_path(endpoint: runnel_api::Endpoint) -> &'static str {
    use runnel_api::Endpoint as E;
    match endpoint {
        E::RegisterRunner => "/api/v4/runners",
        E::VerifyRunner => "/api/v4/runners/verify",
        E::UnregisterRunner => "/api/v4/runners",
        E::UnregisterRunnerManager => "/api/v4/runners/managers",
        E::ResetToken => "/api/v4/runners/reset_authentication_token",
        E::ResetTokenWithPat => "/api/v4/runners/{id}/reset_authentication_token",
        E::RequestJob => "/api/v4/jobs/request",
        E::UpdateJob => "/api/v4/jobs/{id}",
        E::PatchTrace => "/api/v4/jobs/{id}/trace",
        E::UploadArtifacts | E::DownloadArtifacts => "/api/v4/jobs/{id}/artifacts",
        _ => "/api/v4/",
    }
}

/// Counts a warning or error log event for `gitlab_runner_errors_total`.
pub fn record_log_event(level: tracing::Level) {
    let label = match level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warning",
        _ => return,
    };
    metrics().errors.with_label_values(&[label]).inc();
}

/// Records one finished job.
pub(crate) fn record_job(
    labels: &[String; 3],
    duration: Duration,
    failure: Option<&str>,
    usage: Option<&crate::usage::Usage>,
) {
    let m = metrics();
    m.jobs_total.with_label_values(labels).inc();
    // Runnel runs every job the traditional way (script steps; no step runner).
    const MODE: &str = "traditional";
    m.job_duration
        .with_label_values(&[&labels[0], &labels[1], &labels[2], MODE])
        .observe(duration.as_secs_f64());
    if let Some(reason) = failure {
        m.failed_jobs
            .with_label_values(&[&labels[0], &labels[1], reason, MODE])
            .inc();
    }
    if let Some(usage) = usage {
        m.job_peak_memory
            .with_label_values(labels)
            .observe(usage.peak_rss_bytes as f64);
        m.job_cpu
            .with_label_values(labels)
            .observe(usage.cpu_seconds);
    }
}
