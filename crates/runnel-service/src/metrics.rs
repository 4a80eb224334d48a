//! Prometheus metrics with the official runner's names, label sets, types and buckets, so
//! existing dashboards and alerts keep working, plus per-job resource figures the official runner
//! does not have (`runnel_job_*`).
//!
//! One process-wide registry ([`metrics`]); the HTTP side lives in `http.rs`. Label values never
//! contain tokens: runners are labelled by their short token, as the official runner does.
//! Official series that only make sense for features Runnel does not have are not exported; they
//! are listed, with the reason, in docs/compatibility.md (Metrics row) and in the test fixture
//! `crates/runnel/tests/data/official-metrics.txt`.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The metrics of this process.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) concurrent: IntGauge,
    pub(crate) limit: IntGaugeVec,
    /// Rebuilt at every scrape from the configured runners and the running jobs.
    jobs: IntGaugeVec,
    pub(crate) jobs_total: IntCounterVec,
    pub(crate) job_duration: HistogramVec,
    pub(crate) stage_duration: HistogramVec,
    job_execution_mode: IntCounterVec,
    job_queue_duration: HistogramVec,
    job_queue_size: IntGaugeVec,
    job_queue_depth: IntGaugeVec,
    acceptable_queuing_exceeded: IntCounterVec,
    pub(crate) failed_jobs: IntCounterVec,
    request_concurrency: IntGaugeVec,
    request_concurrency_exceeded: IntCounterVec,
    request_concurrency_hard_limit: IntGaugeVec,
    request_concurrency_used_limit: IntGaugeVec,
    pub(crate) api_statuses: IntCounterVec,
    pub(crate) api_duration: HistogramVec,
    pub(crate) api_retries: IntCounterVec,
    pub(crate) worker_feeds: IntCounterVec,
    worker_feed_failures: IntCounterVec,
    worker_slots: IntGauge,
    worker_slot_operations: IntCounterVec,
    worker_processing_failures: IntCounterVec,
    worker_health_check_failures: IntCounterVec,
    configuration_loaded: IntCounter,
    configuration_loading_error: IntCounter,
    configuration_saved: IntCounter,
    configuration_saving_error: IntCounter,
    process_state: IntGaugeVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) job_peak_memory: HistogramVec,
    pub(crate) job_cpu: HistogramVec,
    /// The configured runners (short token -> name, system id), for the idle `jobs` series.
    runners: Mutex<BTreeMap<String, (String, String)>>,
    /// The name of the process state (`process_state_info`'s label).
    state: Mutex<&'static str>,
}

const RUNNER: &[&str] = &["runner", "runner_name", "system_id"];
const RUNNER_SYSTEM: &[&str] = &["runner", "system_id"];

/// `failure_type` values of `gitlab_runner_worker_processing_failures_total`.
const FAILURE_TYPES: [&str; 3] = ["other", "no_free_executor", "job_failure"];

/// The log levels `gitlab_runner_errors_total` counts (logrus' names).
const ERROR_LEVELS: [&str; 4] = ["panic", "fatal", "error", "warning"];

/// Runnel runs every job the traditional way (script steps; `run:` steps are refused).
const MODE: &str = "traditional";

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

/// The state of the process, as `gitlab_runner_process_state_info` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcessState {
    Running,
    GracefulShutdown,
    ForcefulShutdown,
}

impl ProcessState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::GracefulShutdown => "graceful-shutdown",
            Self::ForcefulShutdown => "forceful-shutdown",
        }
    }
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            registry: Registry::new(),
            concurrent: IntGauge::new(
                "gitlab_runner_concurrent",
                "The concurrent setting in effect",
            )
            .expect("valid metric"),
            limit: gauge_vec(
                "gitlab_runner_limit",
                "The limit setting of each runner",
                RUNNER,
            ),
            jobs: gauge_vec(
                "gitlab_runner_jobs",
                "Jobs running now, by state and stage (an idle series per runner)",
                &[
                    "runner",
                    "runner_name",
                    "system_id",
                    "state",
                    "stage",
                    "executor_stage",
                ],
            ),
            jobs_total: counter_vec("gitlab_runner_jobs_total", "Jobs received", RUNNER),
            job_duration: histogram_vec(
                "gitlab_runner_job_duration_seconds",
                "How long jobs took",
                &["runner", "runner_name", "system_id", "mode"],
                vec![
                    30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
                ],
            ),
            stage_duration: histogram_vec(
                "gitlab_runner_job_stage_duration_seconds",
                "How long job stages took (with FF_EXPORT_HIGH_CARDINALITY_METRICS)",
                &["runner", "runner_name", "system_id", "stage"],
                QUEUE_AND_STAGE_BUCKETS.to_vec(),
            ),
            job_execution_mode: counter_vec(
                "gitlab_runner_job_execution_mode_total",
                "Jobs started, by execution mode and executor",
                &["mode", "executor"],
            ),
            job_queue_duration: histogram_vec(
                "gitlab_runner_job_queue_duration_seconds",
                "How long received jobs had waited in GitLab's queue",
                &["runner", "runner_name", "system_id", "project_jobs_running"],
                QUEUE_AND_STAGE_BUCKETS.to_vec(),
            ),
            job_queue_size: gauge_vec(
                "gitlab_runner_job_queue_size",
                "The queue size GitLab reported with the last job",
                RUNNER,
            ),
            job_queue_depth: gauge_vec(
                "gitlab_runner_job_queue_depth",
                "The queue search depth GitLab reported with the last job",
                RUNNER,
            ),
            acceptable_queuing_exceeded: counter_vec(
                "gitlab_runner_acceptable_job_queuing_duration_exceeded_total",
                "Jobs that waited longer than the [runners.monitoring] threshold (not evaluated by Runnel)",
                RUNNER,
            ),
            failed_jobs: counter_vec(
                "gitlab_runner_failed_jobs_total",
                "Failed jobs, by failure reason",
                &["runner", "runner_name", "failure_reason", "mode"],
            ),
            request_concurrency: gauge_vec(
                "gitlab_runner_request_concurrency",
                "Job requests in flight",
                RUNNER_SYSTEM,
            ),
            request_concurrency_exceeded: counter_vec(
                "gitlab_runner_request_concurrency_exceeded_total",
                "Job requests not made because request_concurrency were already in flight",
                RUNNER_SYSTEM,
            ),
            request_concurrency_hard_limit: gauge_vec(
                "gitlab_runner_request_concurrency_hard_limit",
                "The request_concurrency setting",
                RUNNER_SYSTEM,
            ),
            request_concurrency_used_limit: gauge_vec(
                "gitlab_runner_request_concurrency_used_limit",
                "The request concurrency limit applied (Runnel applies request_concurrency as is)",
                RUNNER_SYSTEM,
            ),
            api_statuses: counter_vec(
                "gitlab_runner_api_request_statuses_total",
                "API requests, by runner, endpoint, status and method",
                &["runner", "system_id", "endpoint", "status", "method"],
            ),
            api_duration: histogram_vec(
                "gitlab_runner_api_request_duration_seconds",
                "API request latency, by runner, endpoint, status class and method",
                &["runner", "system_id", "endpoint", "status_class", "method"],
                vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            api_retries: counter_vec(
                "gitlab_runner_api_request_retries_total",
                "Attempts made to complete API requests (the first one included), by path and method",
                &["path", "method"],
            ),
            worker_feeds: counter_vec(
                "gitlab_runner_worker_feeds_total",
                "Times a runner was handed to a worker slot",
                RUNNER,
            ),
            worker_feed_failures: counter_vec(
                "gitlab_runner_worker_feed_failures_total",
                "Times a runner was not handed to a worker slot (unhealthy)",
                RUNNER,
            ),
            worker_slots: IntGauge::new(
                "gitlab_runner_worker_slots_number",
                "Worker slots (concurrent)",
            )
            .expect("valid metric"),
            worker_slot_operations: counter_vec(
                "gitlab_runner_worker_slot_operations_total",
                "Worker slots started and stopped",
                &["operation"],
            ),
            worker_processing_failures: counter_vec(
                "gitlab_runner_worker_processing_failures_total",
                "Worker turns that ended in a failure, by type",
                &["failure_type", "runner", "runner_name", "system_id"],
            ),
            worker_health_check_failures: counter_vec(
                "gitlab_runner_worker_health_check_failures_total",
                "Job requests that counted against the runner's health",
                RUNNER,
            ),
            configuration_loaded: IntCounter::new(
                "gitlab_runner_configuration_loaded_total",
                "Times config.toml was loaded",
            )
            .expect("valid metric"),
            configuration_loading_error: IntCounter::new(
                "gitlab_runner_configuration_loading_error_total",
                "Times config.toml could not be loaded",
            )
            .expect("valid metric"),
            configuration_saved: IntCounter::new(
                "gitlab_runner_configuration_saved_total",
                "Times config.toml was saved",
            )
            .expect("valid metric"),
            configuration_saving_error: IntCounter::new(
                "gitlab_runner_configuration_saving_error_total",
                "Times config.toml could not be saved",
            )
            .expect("valid metric"),
            process_state: gauge_vec(
                "gitlab_runner_process_state_info",
                "The state of the runner process (1 for the current one)",
                &["state"],
            ),
            errors: counter_vec(
                "gitlab_runner_errors_total",
                "Warnings and errors logged",
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
            runners: Mutex::new(BTreeMap::new()),
            state: Mutex::new("starting"),
        };
        let version = gauge_vec(
            "gitlab_runner_version_info",
            "A constant 1 labelled with what this build is",
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
        // Series the official runner shows from the start, at zero.
        for level in ERROR_LEVELS {
            m.errors.with_label_values(&[level]).inc_by(0);
        }
        for operation in ["started", "stopped"] {
            m.worker_slot_operations
                .with_label_values(&[operation])
                .inc_by(0);
        }
        m.process_state.with_label_values(&["starting"]).set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(version),
            Box::new(m.concurrent.clone()),
            Box::new(m.limit.clone()),
            Box::new(m.jobs.clone()),
            Box::new(m.jobs_total.clone()),
            Box::new(m.job_duration.clone()),
            Box::new(m.stage_duration.clone()),
            Box::new(m.job_execution_mode.clone()),
            Box::new(m.job_queue_duration.clone()),
            Box::new(m.job_queue_size.clone()),
            Box::new(m.job_queue_depth.clone()),
            Box::new(m.acceptable_queuing_exceeded.clone()),
            Box::new(m.failed_jobs.clone()),
            Box::new(m.request_concurrency.clone()),
            Box::new(m.request_concurrency_exceeded.clone()),
            Box::new(m.request_concurrency_hard_limit.clone()),
            Box::new(m.request_concurrency_used_limit.clone()),
            Box::new(m.api_statuses.clone()),
            Box::new(m.api_duration.clone()),
            Box::new(m.api_retries.clone()),
            Box::new(m.worker_feeds.clone()),
            Box::new(m.worker_feed_failures.clone()),
            Box::new(m.worker_slots.clone()),
            Box::new(m.worker_slot_operations.clone()),
            Box::new(m.worker_processing_failures.clone()),
            Box::new(m.worker_health_check_failures.clone()),
            Box::new(m.configuration_loaded.clone()),
            Box::new(m.configuration_loading_error.clone()),
            Box::new(m.configuration_saved.clone()),
            Box::new(m.configuration_saving_error.clone()),
            Box::new(m.process_state.clone()),
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

    /// The Prometheus text exposition of every metric; `running` yields the labels (runner,
    /// runner name, system id) and stage of every running job.
    pub(crate) fn render<'a>(
        &self,
        running: impl IntoIterator<Item = (&'a [String; 3], &'a str)>,
    ) -> String {
        {
            let runners = self.runners.lock().unwrap_or_else(PoisonError::into_inner);
            self.jobs.reset();
            for (short, (name, system_id)) in runners.iter() {
                self.jobs
                    .with_label_values(&[short, name, system_id, "idle", "idle", "idle"])
                    .set(0);
            }
            for ([runner, name, system_id], stage) in running {
                self.jobs
                    .with_label_values(&[runner, name, system_id, "running", stage, stage])
                    .inc();
            }
        }
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The official buckets of the queue and stage duration histograms.
const QUEUE_AND_STAGE_BUCKETS: [f64; 10] = [
    1.0, 3.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

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

/// The configured runners changed: `runners` holds (short token, name, system id, limit,
/// request_concurrency) of each. Series of runners no longer configured go away.
pub(crate) fn runners_configured(runners: &[([String; 3], usize, usize)]) {
    let m = metrics();
    m.limit.reset();
    m.request_concurrency_hard_limit.reset();
    m.request_concurrency_used_limit.reset();
    let mut known = m.runners.lock().unwrap_or_else(PoisonError::into_inner);
    known.clear();
    for (labels, limit, request_concurrency) in runners {
        let [short, name, system_id] = labels;
        known.insert(short.clone(), (name.clone(), system_id.clone()));
        m.limit
            .with_label_values(labels)
            .set(i64::try_from(*limit).unwrap_or(i64::MAX));
        let rs = [short.as_str(), system_id.as_str()];
        let request_concurrency = i64::try_from((*request_concurrency).max(1)).unwrap_or(i64::MAX);
        m.request_concurrency_hard_limit
            .with_label_values(&rs)
            .set(request_concurrency);
        m.request_concurrency_used_limit
            .with_label_values(&rs)
            .set(request_concurrency);
        m.request_concurrency.with_label_values(&rs).add(0);
        m.request_concurrency_exceeded
            .with_label_values(&rs)
            .inc_by(0);
        m.jobs_total.with_label_values(labels).inc_by(0);
        m.worker_feeds.with_label_values(labels).inc_by(0);
        m.worker_feed_failures.with_label_values(labels).inc_by(0);
        m.worker_health_check_failures
            .with_label_values(labels)
            .inc_by(0);
        for failure_type in FAILURE_TYPES {
            m.worker_processing_failures
                .with_label_values(&[failure_type, short, name, system_id])
                .inc_by(0);
        }
    }
}

/// The number of worker slots (`concurrent`) changed from `old` to `new`.
pub(crate) fn slots_resized(old: usize, new: usize) {
    let m = metrics();
    m.worker_slots.set(i64::try_from(new).unwrap_or(i64::MAX));
    let (operation, count) = if new >= old {
        ("started", new - old)
    } else {
        ("stopped", old - new)
    };
    m.worker_slot_operations
        .with_label_values(&[operation])
        .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
}

/// The process entered `state`.
pub(crate) fn process_state(state: ProcessState) {
    let m = metrics();
    let mut current = m.state.lock().unwrap_or_else(PoisonError::into_inner);
    *current = state.as_str();
    m.process_state.reset();
    m.process_state.with_label_values(&[state.as_str()]).set(1);
}

/// The state of the process (`starting`, `running`, `graceful-shutdown`, `forceful-shutdown`),
/// for `/debug/process/state`.
pub(crate) fn current_process_state() -> &'static str {
    *metrics()
        .state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// config.toml was loaded (`Ok`) or failed to load.
pub(crate) fn configuration_loaded(ok: bool) {
    let m = metrics();
    if ok {
        m.configuration_loaded.inc();
    } else {
        m.configuration_loading_error.inc();
    }
}

/// config.toml was saved (`Ok`) or failed to save.
pub(crate) fn configuration_saved(ok: bool) {
    let m = metrics();
    if ok {
        m.configuration_saved.inc();
    } else {
        m.configuration_saving_error.inc();
    }
}

/// A runner was handed to a worker slot (`fed`) or held back because it is unhealthy.
pub(crate) fn worker_fed(labels: &[String; 3], fed: bool) {
    let m = metrics();
    if fed {
        m.worker_feeds.with_label_values(labels).inc();
    } else {
        m.worker_feed_failures.with_label_values(labels).inc();
    }
}

/// A job request counted against the runner's health.
pub(crate) fn health_check_failed(labels: &[String; 3]) {
    metrics()
        .worker_health_check_failures
        .with_label_values(labels)
        .inc();
}

/// Keeps `gitlab_runner_request_concurrency` up while a job request is in flight.
#[derive(Debug)]
pub(crate) struct RequestInFlight {
    gauge: IntGauge,
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A job request for runner `short` starts (`Some`), or is not made because
/// `request_concurrency` requests are already in flight (`None` given as `admitted = false`).
pub(crate) fn job_request(short: &str, system_id: &str, admitted: bool) -> Option<RequestInFlight> {
    let m = metrics();
    if !admitted {
        m.request_concurrency_exceeded
            .with_label_values(&[short, system_id])
            .inc();
        return None;
    }
    let gauge = m.request_concurrency.with_label_values(&[short, system_id]);
    gauge.inc();
    Some(RequestInFlight { gauge })
}

/// A job was received: its queue figures and its execution mode.
pub(crate) fn record_job_received(
    labels: &[String; 3],
    executor: &str,
    info: &runnel_types::JobInfo,
) {
    let m = metrics();
    m.jobs_total.with_label_values(labels).inc();
    // A label value from the server: bounded (GitLab sends short buckets like "3+").
    let running: String = info
        .project_jobs_running_on_instance_runners_count
        .chars()
        .take(32)
        .collect();
    m.job_queue_duration
        .with_label_values(&[&labels[0], &labels[1], &labels[2], &running])
        .observe(info.time_in_queue_seconds);
    m.job_queue_size
        .with_label_values(labels)
        .set(i64::try_from(info.queue_size).unwrap_or(i64::MAX));
    m.job_queue_depth
        .with_label_values(labels)
        .set(i64::try_from(info.queue_depth).unwrap_or(i64::MAX));
    // `[runners.monitoring]` thresholds are not evaluated (the key is named at start as not
    // acted upon); the series exists, as the official runner's does without that section.
    m.acceptable_queuing_exceeded
        .with_label_values(labels)
        .inc_by(0);
    let executor = if executor.is_empty() {
        "unknown"
    } else {
        executor
    };
    m.job_execution_mode
        .with_label_values(&[MODE, executor])
        .inc();
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
        let method = event.method.as_str().to_ascii_lowercase();
        if event.retry_in.is_none() {
            // The request is complete: count all its attempts, as the official runner does.
            m.api_retries
                .with_label_values(&[retry_path(event.endpoint), &method])
                .inc_by(u64::from(event.attempt.max(1)));
        }
        // The official runner observes these endpoints only, and not transport errors.
        use runnel_api::Endpoint as E;
        let observed = matches!(
            event.endpoint,
            E::ResetToken | E::RequestJob | E::UpdateJob | E::PatchTrace
        );
        let Some(status) = event.status.filter(|_| observed) else {
            return;
        };
        let status = status.as_u16();
        m.api_statuses
            .with_label_values(&[
                &self.runner,
                &self.system_id,
                event.endpoint.as_str(),
                &status.to_string(),
                &method,
            ])
            .inc();
        m.api_duration
            .with_label_values(&[
                &self.runner,
                &self.system_id,
                event.endpoint.as_str(),
                status_class(status),
                &method,
            ])
            .observe(event.duration.as_secs_f64());
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        600.. => "unknown",
        500.. => "5xx",
        400.. => "4xx",
        300.. => "3xx",
        200.. => "2xx",
        100.. => "1xx",
        _ => "unknown",
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
    m.job_duration
        .with_label_values(&[&labels[0], &labels[1], &labels[2], MODE])
        .observe(duration.as_secs_f64());
    if let Some(reason) = failure {
        m.failed_jobs
            .with_label_values(&[&labels[0], &labels[1], reason, MODE])
            .inc();
        // The official worker reports a job that failed on its own (the script) as a
        // `job_failure`, every other failed turn as `other`.
        let failure_type = if reason == "script_failure" {
            "job_failure"
        } else {
            "other"
        };
        m.worker_processing_failures
            .with_label_values(&[failure_type, &labels[0], &labels[1], &labels[2]])
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
