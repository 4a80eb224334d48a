//! Runs one job: acknowledge, plan, prepare the executor, run the stages, report.
//!
//! The order of stages and the error rules follow the official runner (reference 4.1): the first
//! failing user step stops the user steps; `after_script` runs whatever happened (also after a
//! graceful cancel, not after an abort); the job's error wins over later stage errors; the final
//! line is `Job succeeded` or `ERROR: Job failed: …`. Three cancellation sources are kept apart:
//! `Job-Status: canceling` stops the script only, `canceled`/`failed`/403 abort the job, and the
//! daemon's SIGTERM/SIGINT interrupts it (`runner_interrupted`). Every path ends with the
//! executor's cleanup, a flushed trace and a final state sent to GitLab.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runnel_api::{Client, Features, RunnerInfo};
use runnel_executor::{
    Executor, OutputSink, OutputStream, PrepareContext, Provider, StageCommand, StageExit,
};
use runnel_job::{
    ExecutorKind, JobOutcome, JobPlan, JobStatus, PlanOptions, PlannedStage, Shell, StageWhen,
    TimeoutKind,
};
use runnel_trace::{JobTrace, TraceConfig};
use runnel_types::{JobId, JobSpec, JobState};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::remote::{ApiRemote, JobRemote, RemoteStatus, StateUpdate, UpdateReply};
use crate::settings::{RunnerSpec, ServiceConfig};
use crate::uploader::{Delivery, FinalState, RemoteSignals, TraceUploader};
use crate::usage::JobUsage;

/// How long cleanup may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Everything a job needs from the daemon.
#[derive(Debug)]
pub(crate) struct JobContext {
    /// The job's entry in the running-jobs registry (metrics, `/debug/jobs/list`).
    pub(crate) tracked: crate::http::RunningJob,
    pub(crate) runner: Arc<RunnerSpec>,
    pub(crate) config: Arc<ServiceConfig>,
    pub(crate) client: Arc<Client>,
    pub(crate) concurrent_id: usize,
    pub(crate) concurrent_project_id: usize,
    /// Fired when the runner is stopping forcefully.
    pub(crate) interrupt: CancellationToken,
}

/// A one-line account of how a job ended, for the daemon log.
#[derive(Debug)]
pub(crate) struct JobSummary {
    pub(crate) job: JobId,
    pub(crate) summary: String,
}

/// What this build tells GitLab about `runner` in `info`: the official feature set of its
/// executor, minus what Runnel cannot do yet (so GitLab never sends a job relying on it).
pub(crate) fn runner_info(runner: &RunnerSpec) -> RunnerInfo {
    let executor = match runner.executor.as_str() {
        "shell" => Features::shell_executor(),
        "docker" => Features::docker_executor(),
        _ => Features::default(),
    };
    let mut features = Features::network_client() | Features::shell() | executor;
    // Not supported yet: interactive web terminals, Vault secrets.
    features.session = false;
    features.terminal = false;
    features.vault_secrets = false;
    RunnerInfo {
        executor: runner.executor.clone(),
        shell: runner.shell.clone().unwrap_or_else(|| "bash".to_owned()),
        features,
        ..RunnerInfo::default()
    }
}

/// Runs `job` to the end and reports it. Never panics on job input; every failure ends up in
/// the trace and the final state.
pub(crate) async fn run_job(job: JobSpec, context: JobContext) -> JobSummary {
    let job_id = job.id;
    let remote = Arc::new(ApiRemote {
        client: Arc::clone(&context.client),
        job: job.id,
        token: job.token.clone(),
        info: runner_info(&context.runner),
    });
    // Every daemon log line about this job carries its id and runner (and, in a stage, the
    // stage's name from its own span).
    let span = tracing::info_span!(
        "job",
        job = %job_id,
        runner = %context.runner.token.short(),
    );
    let summary = supervise(job, &context, remote).instrument(span).await;
    JobSummary {
        job: job_id,
        summary,
    }
}

async fn supervise<R: JobRemote>(job: JobSpec, context: &JobContext, remote: Arc<R>) -> String {
    let mut options = plan_options(context);
    let cache_warning = match crate::cache::remote_cache(
        context
            .runner
            .config
            .as_ref()
            .and_then(|c| c.cache.as_ref()),
        &context.runner.token.short(),
        job.info.project_id,
        job.timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(runnel_job::DEFAULT_JOB_TIMEOUT),
        std::time::SystemTime::now(),
    ) {
        Ok(remote) => {
            options.remote_cache = remote;
            None
        }
        Err(error) => {
            tracing::warn!(%error, "distributed cache disabled for this job");
            Some(error.to_string())
        }
    };
    let planned = runnel_job::plan(&job, &options).map(|mut plan| {
        plan.warnings.extend(cache_warning);
        plan
    });
    let trace = match JobTrace::new(trace_config(&job, &planned, context)) {
        Ok(trace) => trace,
        Err(error) => {
            // Fail closed: without a working masker no output may be collected.
            tracing::error!(job = %job.id, %error, "cannot set up the job log");
            let fallback = TraceConfig {
                masked: Vec::new(),
                ..trace_config(&job, &planned, context)
            };
            match JobTrace::new(fallback) {
                Ok(trace) => {
                    trace.error(&format!("cannot set up log masking: {error}"));
                    return finish_early(&job, context, &remote, trace).await;
                }
                Err(_) => return format!("failed before start: {error}"),
            }
        }
    };
    let signals = RemoteSignals::default();

    // Two-phase commit: tell GitLab at once that we have the job.
    let ack = remote
        .update(StateUpdate {
            state: JobState::Running,
            failure_reason: None,
            exit_code: None,
            crc32: trace.crc32(),
            bytesize: trace.bytesize() as u64,
        })
        .await;
    if ack.outcome == UpdateReply::Abort || ack.status == RemoteStatus::Gone {
        return "dropped: GitLab no longer wants this job".to_owned();
    }
    if ack.status == RemoteStatus::Canceling {
        signals.cancel_requested.cancel();
    }

    let mut uploader = TraceUploader::new(Arc::clone(&remote), trace.clone(), signals.clone());
    let stop_streaming = CancellationToken::new();
    let streaming = {
        let stop = stop_streaming.clone();
        tokio::spawn(async move {
            uploader.stream(&stop).await;
            uploader
        })
    };

    let started = Instant::now();
    let usage = Arc::new(JobUsage::default());
    let outcome = match planned {
        // Review M1: a panic while the job runs must still end in a final state, not leave the
        // job "running" in GitLab until its stuck-job timeout.
        Ok(plan) => {
            let run = execute(&job, &plan, context, &trace, &signals, &usage);
            match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
                Ok(outcome) => outcome,
                Err(panic) => {
                    let what = panic_message(panic.as_ref());
                    tracing::error!(job = %job.id, panic = %what, "the job task panicked");
                    JobOutcome::SystemFailure {
                        message: format!("the runner failed while running the job: {what}"),
                    }
                }
            }
        }
        Err(error) => {
            write_header_lines(&trace, &header_without_plan(context, &options));
            JobOutcome::SystemFailure {
                message: error.to_string(),
            }
        }
    };
    let usage = usage.finish();
    if usage.measured {
        trace.println(&format!(
            "Resource usage: {}",
            crate::usage::describe(&usage)
        ));
    }

    let final_status = outcome.final_status(options.executor);
    let reason = final_status
        .failure_reason
        .map(|r| r.for_server(&job.features.failure_reasons));
    let labels = [
        context.runner.token.short(),
        context.runner.name.clone(),
        context.config.system_id.clone(),
    ];
    crate::metrics::record_job(
        &labels,
        started.elapsed(),
        reason.map(|r| r.as_str()),
        usage.measured.then_some(&usage),
    );
    if final_status.is_error {
        let line = &final_status.trace_line;
        trace.error(line.strip_prefix("ERROR: ").unwrap_or(line));
    } else {
        trace.info(&final_status.trace_line);
    }
    trace.finish();
    stop_streaming.cancel();
    let mut uploader = match streaming.await {
        Ok(uploader) => uploader,
        Err(error) => {
            tracing::error!(job = %job.id, %error, "trace streaming task failed; resending the trace");
            TraceUploader::new(Arc::clone(&remote), trace.clone(), signals.clone())
        }
    };
    let state = FinalState {
        state: final_status.state,
        failure_reason: reason,
        exit_code: final_status.exit_code,
    };
    let delivery = uploader
        .finish(state, context.runner.final_update_retry_limit)
        .await;
    match &delivery {
        Delivery::Accepted => {}
        Delivery::Aborted => {
            tracing::warn!(job = %job.id, "GitLab refused the final update: the job was canceled or removed")
        }
        Delivery::GaveUp(error) => {
            tracing::error!(job = %job.id, %error, sent = uploader.sent(), "the final job update could not be delivered")
        }
    }
    format!("{} ({delivery:?})", final_status.state.as_str())
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Reports a job that failed before anything ran (the trace could not be set up properly).
async fn finish_early<R: JobRemote>(
    job: &JobSpec,
    context: &JobContext,
    remote: &Arc<R>,
    trace: JobTrace,
) -> String {
    let outcome = JobOutcome::SystemFailure {
        message: "the job log could not be set up".to_owned(),
    };
    let status = outcome.final_status(executor_kind(&context.runner));
    let line = &status.trace_line;
    trace.error(line.strip_prefix("ERROR: ").unwrap_or(line));
    trace.finish();
    let mut uploader = TraceUploader::new(Arc::clone(remote), trace, RemoteSignals::default());
    let state = FinalState {
        state: status.state,
        failure_reason: status
            .failure_reason
            .map(|r| r.for_server(&job.features.failure_reasons)),
        exit_code: None,
    };
    let delivery = uploader
        .finish(state, context.runner.final_update_retry_limit)
        .await;
    format!("failed before start ({delivery:?})")
}

/// Why a stage was stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `Job-Status: canceling`.
    Canceled,
    /// GitLab says the job is over.
    Aborted,
    /// The runner is shutting down.
    Interrupted,
}

async fn execute(
    job: &JobSpec,
    plan: &JobPlan,
    context: &JobContext,
    trace: &JobTrace,
    signals: &RemoteSignals,
    usage: &Arc<JobUsage>,
) -> JobOutcome {
    write_header_lines(trace, &plan.header);
    for warning in &plan.warnings {
        trace.warning(warning);
    }
    let started = Instant::now();
    let job_deadline = saturating_deadline(started, plan.timeouts.job);
    let sections = job.features.trace_sections;

    // prepare_executor
    let provider = match provider_for(&context.runner, context.config.user.as_deref()) {
        Ok(provider) => provider,
        Err(message) => return JobOutcome::SystemFailure { message },
    };
    let mut executor = match provider.create() {
        Ok(executor) => executor,
        Err(error) => return executor_failure(&error),
    };
    section(
        trace,
        sections,
        "prepare_executor",
        &runnel_job::preparing_executor_message(executor_kind(&context.runner)),
    );
    let prepared = {
        let builds_dir = PathBuf::from(&plan.dirs.builds_dir);
        let cache_dir = PathBuf::from(&plan.dirs.cache_dir);
        let prepare = PrepareContext {
            job,
            builds_dir: &builds_dir,
            cache_dir: &cache_dir,
            debug_services: plan.settings.debug_services,
        };
        executor.prepare(&prepare).await
    };
    // The banner names what `prepare` resolved (the docker image, for one).
    trace.println(&executor.banner());
    section_end(trace, sections, "prepare_executor");
    if let Err(error) = prepared {
        executor.cleanup().await;
        return executor_failure(&error);
    }

    let sink = TraceSink::new(trace, Arc::clone(usage));
    let labels = [
        context.runner.token.short(),
        context.runner.name.clone(),
        context.config.system_id.clone(),
    ];
    let mut durations: Vec<(String, Duration)> = Vec::new();
    let cancels = Cancels::link(signals, context);
    let mut outcome: Option<JobOutcome> = None;
    let mut aborted = false;
    for stage in &plan.stages {
        if aborted {
            break;
        }
        let failed = outcome.is_some();
        let run = match stage.when {
            StageWhen::OnSuccess => !failed,
            StageWhen::OnFailure => failed,
            StageWhen::Always => true,
        };
        if !run {
            continue;
        }
        let status = outcome
            .as_ref()
            .map_or(JobStatus::Success, JobOutcome::job_status);
        let (deadline, cancel) = stage_limits(stage, plan, job_deadline, &cancels);
        section(trace, sections, &stage.name, &stage.description);
        context.tracked.set_stage(&stage.name);
        // A child span per stage: recording into the job span would make text logs repeat
        // `stage=` once per stage so far.
        let stage_span = tracing::info_span!("stage", stage = ?stage.name);
        let stage_started = Instant::now();
        let result = async {
            tracing::debug!("stage started");
            run_stage(executor.as_mut(), stage, status, &sink, deadline, &cancel).await
        }
        .instrument(stage_span)
        .await;
        let took = stage_started.elapsed();
        crate::metrics::metrics()
            .stage_duration
            .with_label_values(&[&labels[0], &labels[1], &labels[2], &stage.name])
            .observe(took.as_secs_f64());
        durations.push((stage.name.clone(), took));
        section_end(trace, sections, &stage.name);
        let stop = stop_reason(signals, context);
        match classify(stage, result, stop, deadline, plan) {
            StageResult::Ok => {}
            StageResult::Ignored(message) => trace.warning(&message),
            StageResult::Failed(failure) => {
                if matches!(stop, Some(Stop::Aborted)) {
                    aborted = true;
                }
                if outcome.is_none() {
                    outcome = Some(failure);
                }
            }
        }
        if outcome.is_some() && matches!(stop, Some(Stop::Interrupted | Stop::Aborted)) {
            // Nothing but cleanup runs after an abort.
            aborted = true;
        }
    }
    let cleanup = plan
        .stages
        .iter()
        .find(|s| s.name == "cleanup_file_variables");
    if let Some(cleanup) = cleanup.filter(|_| aborted) {
        {
            // Not cancellable: the abort already happened, this only removes secrets from disk.
            let never = CancellationToken::new();
            let deadline = Instant::now() + CLEANUP_TIMEOUT;
            let result = run_stage(
                executor.as_mut(),
                cleanup,
                JobStatus::Failed,
                &sink,
                deadline,
                &never,
            )
            .await;
            if let Err(error) = result {
                tracing::warn!(job = %job.id, %error, "cleanup after abort failed");
            }
        }
    }
    executor.cleanup().await;
    let timings: Vec<String> = durations
        .iter()
        .map(|(name, took)| format!("{name} {:.2}s", took.as_secs_f64()))
        .collect();
    trace.println(&format!("Stage durations: {}", timings.join(", ")));
    outcome.unwrap_or(JobOutcome::Success)
}

/// What one stage run amounted to.
enum StageResult {
    Ok,
    /// A failure that does not fail the job (after_script, by default).
    Ignored(String),
    Failed(JobOutcome),
}

fn classify(
    stage: &PlannedStage,
    result: Result<StageExit, String>,
    stop: Option<Stop>,
    deadline: Instant,
    plan: &JobPlan,
) -> StageResult {
    let failure = match result {
        Ok(exit) if exit.success() => return StageResult::Ok,
        Ok(StageExit::TimedOut) => {
            let after = if stage.timeout == TimeoutKind::AfterScript {
                plan.timeouts.after_script
            } else if Instant::now() >= deadline && stage.timeout == TimeoutKind::Script {
                plan.timeouts.script
            } else {
                plan.timeouts.job
            };
            JobOutcome::Timeout { after }
        }
        Ok(StageExit::Cancelled) => match stop {
            Some(Stop::Interrupted) => JobOutcome::Interrupted {
                signal: "terminated".to_owned(),
            },
            Some(Stop::Aborted) => JobOutcome::SystemFailure {
                message: "job aborted by GitLab".to_owned(),
            },
            Some(Stop::Canceled) | None => JobOutcome::Canceled,
        },
        Ok(exit) => JobOutcome::ScriptFailure {
            exit_code: exit.exit_code().unwrap_or(1),
        },
        Err(message) => JobOutcome::SystemFailure { message },
    };
    if stage.ignore_errors {
        let message = match &failure {
            JobOutcome::ScriptFailure { exit_code } => {
                format!("{} failed: exit status {exit_code}", stage.name)
            }
            JobOutcome::Timeout { after } => format!(
                "{} failed: {}",
                stage.name,
                runnel_job::timeout_message(*after)
            ),
            other => format!("{} failed: {other:?}", stage.name),
        };
        return StageResult::Ignored(message);
    }
    StageResult::Failed(failure)
}

fn stop_reason(signals: &RemoteSignals, context: &JobContext) -> Option<Stop> {
    if context.interrupt.is_cancelled() {
        Some(Stop::Interrupted)
    } else if signals.abort.is_cancelled() {
        Some(Stop::Aborted)
    } else if signals.cancel_requested.is_cancelled() {
        Some(Stop::Canceled)
    } else {
        None
    }
}

/// The cancellations of one job: `hard` stops everything (abort, interrupt), `soft` stops
/// the user script (graceful cancel, or anything that fires `hard`).
struct Cancels {
    hard: CancellationToken,
    soft: CancellationToken,
}

impl Cancels {
    fn link(signals: &RemoteSignals, context: &JobContext) -> Self {
        let hard = CancellationToken::new();
        let soft = hard.child_token();
        let (abort, interrupt, target) = (
            signals.abort.clone(),
            context.interrupt.clone(),
            hard.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = abort.cancelled() => target.cancel(),
                () = interrupt.cancelled() => target.cancel(),
                () = target.cancelled() => {}
            }
        });
        let (requested, target) = (signals.cancel_requested.clone(), soft.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = requested.cancelled() => target.cancel(),
                () = target.cancelled() => {}
            }
        });
        Self { hard, soft }
    }
}

impl Drop for Cancels {
    /// Ends the forwarding tasks when the job is over.
    fn drop(&mut self) {
        self.hard.cancel();
    }
}

/// `start + timeout`, or the latest deadline that can be represented (review M1: a timeout near
/// `u64::MAX` seconds must not panic the job task).
fn saturating_deadline(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(runnel_types::MAX_DURATION))
        .unwrap_or(start)
}

/// The deadline and the cancellation a stage runs under.
fn stage_limits(
    stage: &PlannedStage,
    plan: &JobPlan,
    job_deadline: Instant,
    cancels: &Cancels,
) -> (Instant, CancellationToken) {
    let now = Instant::now();
    match stage.timeout {
        TimeoutKind::Job => (job_deadline, cancels.soft.clone()),
        TimeoutKind::Script => (
            job_deadline.min(saturating_deadline(now, plan.timeouts.script)),
            cancels.soft.clone(),
        ),
        // after_script and cleanup survive a graceful cancel; only an abort stops them.
        TimeoutKind::AfterScript => (
            saturating_deadline(now, plan.timeouts.after_script),
            cancels.hard.clone(),
        ),
        TimeoutKind::Cleanup => (now + CLEANUP_TIMEOUT, cancels.hard.clone()),
    }
}

async fn run_stage(
    executor: &mut dyn Executor,
    stage: &PlannedStage,
    status: JobStatus,
    sink: &TraceSink,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<StageExit, String> {
    let mut last = Ok(StageExit::Exited(0));
    for attempt in 1..=stage.attempts.max(1) {
        let command = StageCommand {
            stage: &stage.name,
            script: stage.script(status),
            kind: match stage.kind {
                runnel_job::StageKind::Predefined => runnel_executor::StageKind::Predefined,
                runnel_job::StageKind::Build => runnel_executor::StageKind::Build,
            },
            env: &[],
            deadline: Some(deadline),
        };
        last = executor
            .run(command, sink, cancel.clone())
            .await
            .map_err(|e| e.to_string());
        match &last {
            Ok(exit) if exit.success() => break,
            Ok(StageExit::Cancelled | StageExit::TimedOut) => break,
            _ if attempt < stage.attempts => {
                sink.trace.warning(&format!(
                    "Retrying {} (attempt {} of {})",
                    stage.name,
                    attempt + 1,
                    stage.attempts
                ));
            }
            _ => {}
        }
    }
    last
}

/// The executor's output goes into the trace, one writer per stream (a writer keeps the
/// partial line and UTF-8 state of its stream).
struct TraceSink {
    trace: JobTrace,
    usage: Arc<JobUsage>,
    stdout: std::sync::Mutex<runnel_trace::TraceWriter>,
    stderr: std::sync::Mutex<runnel_trace::TraceWriter>,
}

impl TraceSink {
    fn new(trace: &JobTrace, usage: Arc<JobUsage>) -> Self {
        Self {
            trace: trace.clone(),
            usage,
            stdout: std::sync::Mutex::new(trace.writer(runnel_trace::Stream::SCRIPT_STDOUT)),
            stderr: std::sync::Mutex::new(trace.writer(runnel_trace::Stream::SCRIPT_STDERR)),
        }
    }
}

impl OutputSink for TraceSink {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        let writer = match stream {
            OutputStream::Stdout => &self.stdout,
            OutputStream::Stderr => &self.stderr,
        };
        writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_bytes(bytes);
    }

    fn process_group_started(&self, pid: u32) {
        self.usage.add_group(pid);
    }
}

fn section(trace: &JobTrace, markers: bool, name: &str, description: &str) {
    if markers {
        trace.section_start(
            name,
            description,
            unix_now(),
            runnel_trace::SectionOptions::default(),
        );
    } else {
        trace.println(description);
    }
}

fn section_end(trace: &JobTrace, markers: bool, name: &str) {
    if markers {
        trace.section_end(name, unix_now());
    }
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn write_header_lines(trace: &JobTrace, lines: &[String]) {
    for line in lines {
        trace.println(line);
    }
}

fn header_without_plan(context: &JobContext, options: &PlanOptions) -> Vec<String> {
    vec![
        format!(
            "Running with runnel {} ({})",
            options.version, options.revision
        ),
        format!(
            "  on {} {}, system ID: {}",
            context.runner.name,
            context.runner.token.short(),
            context.config.system_id
        ),
    ]
}

fn provider_for(runner: &RunnerSpec, user: Option<&str>) -> Result<Box<dyn Provider>, String> {
    match runner.executor.as_str() {
        "shell" => {
            let shell = shell_of(runner);
            let options = runnel_executor::ShellOptions {
                shell: match shell {
                    Shell::Bash => runnel_executor::Shell::Bash,
                    Shell::Sh => runnel_executor::Shell::Sh,
                },
                user: user.map(str::to_owned),
                ..runnel_executor::ShellOptions::default()
            };
            let provider =
                runnel_executor::ShellProvider::new(options).map_err(|e| e.to_string())?;
            Ok(Box::new(provider))
        }
        "docker" => {
            let config = runner.config.as_ref().ok_or_else(|| {
                "the docker executor needs a [runners.docker] section in config.toml".to_owned()
            })?;
            let provider = runnel_executor_docker::DockerProvider::from_runner(config)
                .map_err(|error| error_chain(&error))?;
            Ok(Box::new(provider))
        }
        other => Err(format!(
            "the {other:?} executor is not supported by this build of Runnel"
        )),
    }
}

/// The planner's name for the runner's executor.
fn executor_kind(runner: &RunnerSpec) -> ExecutorKind {
    match runner.executor.as_str() {
        "docker" => ExecutorKind::Docker,
        _ => ExecutorKind::Shell,
    }
}

/// The error and its causes on one line, for the job log.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A job outcome for an executor error, with the failure reason the executor asks for.
fn executor_failure(error: &runnel_executor::ExecutorError) -> JobOutcome {
    let message = error_chain(error);
    match error {
        runnel_executor::ExecutorError::Backend {
            reason: Some(reason),
            ..
        } => JobOutcome::Failed {
            message,
            reason: *reason,
        },
        _ => JobOutcome::SystemFailure { message },
    }
}

fn shell_of(runner: &RunnerSpec) -> Shell {
    match runner.shell.as_deref() {
        Some("sh") => Shell::Sh,
        _ => Shell::Bash,
    }
}

fn absolute(dir: Option<&Path>, default: &str) -> String {
    let path = dir.map_or_else(|| PathBuf::from(default), Path::to_path_buf);
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    };
    path.display().to_string()
}

fn plan_options(context: &JobContext) -> PlanOptions {
    let runner = &context.runner;
    // Docker paths are inside the containers; shell paths are on this host.
    let (dirs, runner_command) = if executor_kind(runner) == ExecutorKind::Docker {
        let inside = |dir: Option<&Path>, default: &str| {
            dir.map_or_else(|| default.to_owned(), |d| d.display().to_string())
        };
        (
            (
                inside(runner.builds_dir.as_deref(), "/builds"),
                inside(runner.cache_dir.as_deref(), "/cache"),
            ),
            runnel_executor_docker::HELPER_RUNNER_COMMAND.to_owned(),
        )
    } else {
        (
            (
                absolute(runner.builds_dir.as_deref(), "builds"),
                absolute(runner.cache_dir.as_deref(), "cache"),
            ),
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "runnel".to_owned()),
        )
    };
    PlanOptions {
        runner_name: runner.name.clone(),
        short_token: runner.token.short(),
        system_id: context.config.system_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: option_env!("RUNNEL_REVISION")
            .unwrap_or("unknown")
            .to_owned(),
        executor: executor_kind(runner),
        shell: shell_of(runner),
        builds_dir: dirs.0,
        cache_dir: dirs.1,
        concurrent_id: u32::try_from(context.concurrent_id).unwrap_or(u32::MAX),
        concurrent_project_id: u32::try_from(context.concurrent_project_id).unwrap_or(u32::MAX),
        environment: runner.environment.clone(),
        pre_get_sources_script: runner.pre_get_sources_script.clone().unwrap_or_default(),
        post_get_sources_script: runner.post_get_sources_script.clone().unwrap_or_default(),
        pre_build_script: runner.pre_build_script.clone().unwrap_or_default(),
        post_build_script: runner.post_build_script.clone().unwrap_or_default(),
        feature_flags: runner
            .feature_flags
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        custom_build_dir: runner.custom_build_dir_enabled,
        debug_trace_disabled: runner.debug_trace_disabled,
        hostname: String::new(),
        // The shell executor runs the scripts here, so `$(hostname)` would print this.
        script_host: (runner.executor == "shell")
            .then(|| nix::unistd::gethostname().ok()?.into_string().ok())
            .flatten(),
        runner_command,
        server_url: runner.url.clone(),
        clone_url: runner.clone_url.clone().unwrap_or_default(),
        tls_ca: None,
        os_arch: format!("{}/{}", std::env::consts::OS, go_arch()),
        remote_cache: None,
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}

fn trace_config(
    job: &JobSpec,
    plan: &Result<JobPlan, runnel_job::PlanError>,
    context: &JobContext,
) -> TraceConfig {
    match plan {
        Ok(plan) => TraceConfig {
            masked: plan.masked_values.clone(),
            token_prefixes: plan.token_mask_prefixes.clone(),
            limit_bytes: context.runner.output_limit_bytes,
            timestamps: plan.feature_flags.timestamps(),
        },
        // Review L1: the planning error can quote expanded variables, so mask what the job
        // marks masked (and its token) even without a plan.
        Err(_) => TraceConfig {
            masked: job
                .variables
                .iter()
                .filter(|v| v.masked && !v.value.is_empty())
                .map(|v| runnel_types::Secret::new(v.value.as_str()))
                .chain(
                    Some(job.token.expose())
                        .filter(|t| !t.is_empty())
                        .map(runnel_types::Secret::new),
                )
                .collect(),
            token_prefixes: runnel_trace::default_token_prefixes(true),
            limit_bytes: context.runner.output_limit_bytes,
            timestamps: false,
        },
    }
}
