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
    ConfigureContext, Executor, OutputSink, OutputStream, PrepareContext, Provider, StageCommand,
    StageExit,
};
use runnel_job::{
    ExecutorKind, JobOutcome, JobPlan, JobStatus, PlanOptions, PlannedStage, Shell, StageWhen,
    TimeoutKind, UNSUPPORTED_EXIT_CODE,
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
    /// The executor provider of the runner (or why there is none).
    pub(crate) provider: JobProvider,
    /// Fired when the runner is stopping forcefully.
    pub(crate) interrupt: CancellationToken,
    /// Where the job's state is kept on disk (`None`: memory only).
    pub(crate) journal: Option<Arc<crate::journal::Journal>>,
}

/// The provider a job's executor comes from, or why there is none.
pub(crate) struct JobProvider(pub(crate) Result<Arc<dyn Provider>, String>);

impl std::fmt::Debug for JobProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(provider) => write!(f, "JobProvider({})", provider.info().name),
            Err(message) => write!(f, "JobProvider(Err({message:?}))"),
        }
    }
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
        // The official custom and ssh executors' feature sets.
        "custom" => Features {
            variables: true,
            shared: true,
            service_variables: true,
            ..Features::default()
        },
        "ssh" => Features {
            variables: true,
            shared: true,
            ..Features::default()
        },
        "kubernetes" => Features {
            // No session server, hence no service proxy.
            proxy: false,
            ..Features::kubernetes_executor()
        },
        _ => Features::default(),
    };
    let mut features = Features::network_client() | Features::shell() | executor;
    // Not supported yet: interactive web terminals, secrets providers, CI steps (`run`), job
    // inputs. Such jobs are refused by name if they arrive anyway (`unsupported_features`).
    features.session = false;
    features.terminal = false;
    features.vault_secrets = false;
    features.native_steps_integration = false;
    features.job_inputs = false;
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
        debug_trace: runnel_job::debug_trace_enabled(&job, context.runner.debug_trace_disabled),
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
                    let outcome = JobOutcome::SystemFailure {
                        message: "the job log could not be set up".to_owned(),
                    };
                    return finish_early(&job, context, &remote, trace, outcome, None).await;
                }
                Err(_) => return format!("failed before start: {error}"),
            }
        }
    };
    // A job that needs what Runnel does not implement is refused before it is acknowledged,
    // as the official runner refuses unsupported options: reason in the log, system failure.
    let refusals = runnel_job::unsupported_features(&job);
    if !refusals.is_empty() {
        for line in &refusals {
            trace.error(line);
        }
        let outcome = JobOutcome::SystemFailure {
            message: refusals.join("; "),
        };
        return finish_early(
            &job,
            context,
            &remote,
            trace,
            outcome,
            Some(UNSUPPORTED_EXIT_CODE),
        )
        .await;
    }
    let signals = RemoteSignals::default();
    // Every process of the job carries this tag, so none outlives it (runnel_executor::contain).
    let tag = job_tag();
    let journal = match &context.journal {
        None => None,
        Some(journal) => {
            let record = crate::journal::Record::new(
                job.id,
                &job.token,
                &context.runner.url,
                &context.runner.token.short(),
                &context.runner.executor,
                &tag,
            );
            match journal.begin(record) {
                Ok(journal) => Some(journal),
                Err(error) => {
                    let message = error_chain(&error);
                    tracing::error!(error = %message, "cannot start the job journal");
                    let outcome = JobOutcome::SystemFailure {
                        message: format!("the job journal could not be written: {message}"),
                    };
                    return finish_early(&job, context, &remote, trace, outcome, None).await;
                }
            }
        }
    };
    let follower = journal
        .as_ref()
        .map(|journal| journal.follow(trace.clone()));
    let journal_failed = journal
        .as_ref()
        .map_or_else(CancellationToken::new, |j| j.failed().clone());

    let usage = Arc::new(JobUsage::default());
    let stage_env = stage_env(context, &tag);
    // Made before the acknowledgement, so that what it is slow to start (the shell executor's
    // login shell) starts while the acknowledgement is in flight.
    let mut executor = planned.as_ref().ok().map(|_| create_executor(context));

    // Two-phase commit: tell GitLab at once that we have the job.
    let running = StateUpdate {
        state: JobState::Running,
        failure_reason: None,
        exit_code: None,
        crc32: trace.crc32(),
        bytesize: trace.bytesize() as u64,
    };
    let (ack, started_early) = match (&planned, executor.as_mut()) {
        (Ok(plan), Some(Ok(executor))) => {
            let early = runnel_executor::EarlyStart {
                builds_dir: Path::new(&plan.dirs.builds_dir),
                env: &stage_env,
            };
            let groups = ProcessGroups {
                usage: Arc::clone(&usage),
                journal: journal.clone(),
            };
            // The update first: its request is on its way before the executor starts.
            tokio::join!(
                remote.update(running),
                executor.start_early(&early, &groups)
            )
        }
        _ => (remote.update(running).await, false),
    };
    if ack.outcome == UpdateReply::Abort || ack.status == RemoteStatus::Gone {
        // Nothing of the job ran: only what the executor started early is stopped.
        if started_early && let Some(Ok(executor)) = executor.as_mut() {
            executor.cleanup().await;
            if !executor.contained() {
                kill_tagged(context, &tag).await;
            }
        }
        trace.finish();
        if let Some(journal) = &journal {
            journal.remove();
        }
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
    // The executor's cleanup that waits until the final state is reported (docker's removals).
    let mut cleanup_after_report: Option<runnel_executor::BoxFuture<'static, bool>> = None;
    let outcome = match planned {
        // Review M1: a panic while the job runs must still end in a final state, not leave the
        // job "running" in GitLab until its stuck-job timeout.
        Ok(plan) => {
            let executor = executor.unwrap_or_else(|| create_executor(context));
            let run = JobRun {
                trace: &trace,
                signals: &signals,
                usage: &usage,
                tag: &tag,
                stage_env: &stage_env,
                journal: journal.as_ref(),
                journal_failed: &journal_failed,
                contained: std::sync::atomic::AtomicBool::new(false),
                cleanup_after_report: std::sync::Mutex::new(None),
            };
            let executed = execute(&job, &plan, &options, context, &run, executor);
            let outcome =
                futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(executed)).await;
            cleanup_after_report = run
                .cleanup_after_report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match outcome {
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
    // The whole log is on disk before the final state is: a crash from here on is redelivered.
    let journaled = match follower {
        Some(follower) => follower.await.unwrap_or(false),
        None => false,
    };
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
    if let Some(journal) = &journal
        && journaled
    {
        journal.set_final(&state, uploader.sent());
    }
    let delivery = uploader
        .finish(state, context.runner.final_update_retry_limit)
        .await;
    match &delivery {
        Delivery::Accepted => {}
        Delivery::Aborted => {
            tracing::warn!(job = %job.id, "GitLab refused the final update: the job was canceled or removed")
        }
        Delivery::GaveUp(error) if journaled => {
            tracing::error!(job = %job.id, %error, sent = uploader.sent(), "the final job update could not be delivered; the job journal keeps it and it will be retried")
        }
        Delivery::GaveUp(error) => {
            tracing::error!(job = %job.id, %error, sent = uploader.sent(), "the final job update could not be delivered")
        }
    }
    // Before the journal forgets the job: a crash meanwhile leaves its record, and the next
    // start removes what the job created by the ids recorded there.
    if let Some(later) = cleanup_after_report
        && !later.await
    {
        kill_tagged(context, &tag).await;
    }
    if let Some(journal) = &journal {
        match &delivery {
            Delivery::GaveUp(_) if journaled => {
                journal.set_final_acked(uploader.sent());
                journal.keep_pending();
            }
            _ => journal.remove(),
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

/// Reports a job that failed before anything ran (the trace could not be set up properly, or
/// the job needs what Runnel does not implement).
async fn finish_early<R: JobRemote>(
    job: &JobSpec,
    context: &JobContext,
    remote: &Arc<R>,
    trace: JobTrace,
    outcome: JobOutcome,
    exit_code: Option<i32>,
) -> String {
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
        exit_code,
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
    /// The job journal cannot be written: the job's state would not survive a crash.
    JournalFailed,
}

/// What one job run shares between its stages.
struct JobRun<'a> {
    trace: &'a JobTrace,
    signals: &'a RemoteSignals,
    usage: &'a Arc<JobUsage>,
    /// The environment tag of the job's processes.
    tag: &'a str,
    /// The extra environment of the stages' shells ([`stage_env`]).
    stage_env: &'a [(String, String)],
    journal: Option<&'a Arc<crate::journal::JobJournal>>,
    /// Fired when the job journal cannot be written.
    journal_failed: &'a CancellationToken,
    /// Set when the executor, after its cleanup, knows every process of the job is gone
    /// ([`runnel_executor::Executor::contained`]).
    contained: std::sync::atomic::AtomicBool,
    /// What the executor's cleanup left for after the final state is reported
    /// ([`runnel_executor::Executor::cleanup_deferred`]).
    cleanup_after_report: std::sync::Mutex<Option<runnel_executor::BoxFuture<'static, bool>>>,
}

async fn execute(
    job: &JobSpec,
    plan: &JobPlan,
    options: &PlanOptions,
    context: &JobContext,
    run: &JobRun<'_>,
    executor: Result<Box<dyn Executor>, JobOutcome>,
) -> JobOutcome {
    let outcome = execute_stages(job, plan, options, context, run, executor).await;
    // Nothing the job started outlives it, also what left its process group. Only shell
    // executor processes carry the tag, and the scan reads every process's environment, so it
    // is skipped when the executor saw every process of the job end.
    if !run.contained.load(std::sync::atomic::Ordering::Relaxed) {
        kill_tagged(context, run.tag).await;
    }
    if run.journal_failed.is_cancelled() {
        let message = run
            .journal
            .and_then(|j| j.error())
            .unwrap_or_else(|| "unknown error".to_owned());
        return JobOutcome::SystemFailure {
            message: format!("the job journal could not be written: {message}"),
        };
    }
    outcome
}

/// Kills every process that carries the job's `tag` (only shell executor processes do).
async fn kill_tagged(context: &JobContext, tag: &str) {
    if context.runner.executor != "shell" {
        return;
    }
    let tag = tag.to_owned();
    let killed = tokio::task::spawn_blocking(move || runnel_executor::contain::kill_tagged(&tag))
        .await
        .unwrap_or(0);
    if killed > 0 {
        tracing::info!(killed, "killed processes the job left running");
    }
}

/// The runner's executor for one job, or why there is none.
fn create_executor(context: &JobContext) -> Result<Box<dyn Executor>, JobOutcome> {
    match &context.provider.0 {
        Ok(provider) => provider.create().map_err(|error| executor_failure(&error)),
        Err(message) => Err(JobOutcome::SystemFailure {
            message: message.clone(),
        }),
    }
}

/// The extra environment of the stages' shells: the job's tag, for the shell executor only,
/// whose processes run on this host where the tag can find them.
fn stage_env(context: &JobContext, tag: &str) -> Vec<(String, String)> {
    if context.runner.executor == "shell" {
        vec![(
            runnel_executor::contain::JOB_TAG_VARIABLE.to_owned(),
            tag.to_owned(),
        )]
    } else {
        Vec::new()
    }
}

async fn execute_stages(
    job: &JobSpec,
    plan: &JobPlan,
    options: &PlanOptions,
    context: &JobContext,
    run: &JobRun<'_>,
    executor: Result<Box<dyn Executor>, JobOutcome>,
) -> JobOutcome {
    let (trace, signals, usage) = (run.trace, run.signals, run.usage);
    let journal_failed = run.journal_failed;
    write_header_lines(trace, &plan.header);
    for warning in &plan.warnings {
        trace.warning(warning);
    }
    let started = Instant::now();
    let job_deadline = saturating_deadline(started, plan.timeouts.job);
    // `prepare_timeout` bounds the executor's preparation and `prepare_script` together.
    let prepare_deadline = job_deadline.min(saturating_deadline(started, plan.timeouts.prepare));
    let sections = job.features.trace_sections;

    // prepare_executor
    let mut executor = match executor {
        Ok(executor) => executor,
        Err(outcome) => return outcome,
    };
    section(
        trace,
        sections,
        "prepare_executor",
        &runnel_job::preparing_executor_message(executor_kind(&context.runner)),
    );
    let cancels = Cancels::link(signals, context, journal_failed);
    // Executors whose environment decides directories or shell (custom's config_exec, the SSH
    // host's home) say so before the stages are planned for good.
    // Part of the executor's preparation: bound by `prepare_timeout` too.
    let configured = tokio::time::timeout_at(
        prepare_deadline,
        configure(
            executor.as_mut(),
            job,
            plan,
            options,
            trace,
            usage,
            &cancels,
        ),
    )
    .await
    .unwrap_or_else(|_elapsed| {
        Err(deadline_passed(
            TimeoutKind::Prepare,
            plan,
            prepare_deadline,
            job_deadline,
        ))
    });
    let replanned = match configured {
        Ok(replanned) => replanned,
        Err(outcome) => {
            section_end(trace, sections, "prepare_executor");
            executor.cleanup().await;
            return outcome;
        }
    };
    let plan = replanned.as_ref().unwrap_or(plan);
    let prepared = {
        let builds_dir = PathBuf::from(&plan.dirs.builds_dir);
        let cache_dir = PathBuf::from(&plan.dirs.cache_dir);
        let temp_dir = PathBuf::from(&plan.dirs.temp_dir);
        let prepare = PrepareContext {
            job,
            builds_dir: &builds_dir,
            cache_dir: &cache_dir,
            debug_services: plan.settings.debug_services,
            project_slot: u32::try_from(context.concurrent_project_id).unwrap_or(u32::MAX),
            git_fetch: plan.settings.git_strategy == runnel_job::GitStrategy::Fetch,
            network_per_build: plan.feature_flags.network_per_build(),
            predefined_housekeeping_only: plan.predefined_housekeeping_only,
            init_process: plan.feature_flags.is_on("FF_USE_INIT_WITH_DOCKER_EXECUTOR"),
            temp_dir: options.temp_dir_by_executor.then_some(temp_dir.as_path()),
        };
        match tokio::time::timeout_at(prepare_deadline, executor.prepare(&prepare)).await {
            Ok(result) => result.map_err(|error| executor_failure(&error)),
            Err(_elapsed) => Err(deadline_passed(
                TimeoutKind::Prepare,
                plan,
                prepare_deadline,
                job_deadline,
            )),
        }
    };
    // The banner names what `prepare` resolved (the docker image, for one). An executor that
    // wrote its own while configuring returns none.
    let banner = executor.banner();
    if !banner.is_empty() {
        trace.println(&banner);
    }
    section_end(trace, sections, "prepare_executor");
    // What prepare created (containers, a pod) is journaled: a runner restarted after a crash
    // removes it by id before it reports the job.
    if let Some(journal) = run.journal {
        journal.set_resources(&executor.job_resources());
    }
    if let Err(outcome) = prepared {
        executor.cleanup().await;
        return outcome;
    }

    let sink = TraceSink::new(trace, Arc::clone(usage), run.journal.cloned());
    let stage_env = run.stage_env;
    let labels = [
        context.runner.token.short(),
        context.runner.name.clone(),
        context.config.system_id.clone(),
    ];
    let mut durations: Vec<(String, Duration)> = Vec::new();
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
        let (deadline, cancel) =
            stage_limits(stage, plan, job_deadline, prepare_deadline, &cancels);
        section(trace, sections, &stage.name, &stage.description);
        context.tracked.set_stage(&stage.name);
        // A child span per stage: recording into the job span would make text logs repeat
        // `stage=` once per stage so far.
        // Review L5: a job-controlled step name is escaped (control characters, newlines)
        // before it reaches the daemon log; ordinary names stay as they are.
        let stage_span = tracing::info_span!("stage", stage = %stage.name.escape_default());
        let stage_started = Instant::now();
        let result = async {
            tracing::debug!("stage started");
            run_stage(
                executor.as_mut(),
                stage,
                status,
                &sink,
                stage_env,
                deadline,
                &cancel,
            )
            .await
        }
        .instrument(stage_span)
        .await;
        let took = stage_started.elapsed();
        // Per-stage series only on request, as the official runner does.
        if plan
            .feature_flags
            .is_on("FF_EXPORT_HIGH_CARDINALITY_METRICS")
        {
            crate::metrics::metrics()
                .stage_duration
                .with_label_values(&[&labels[0], &labels[1], &labels[2], &stage.name])
                .observe(took.as_secs_f64());
        }
        durations.push((stage.name.clone(), took));
        section_end(trace, sections, &stage.name);
        let stop = stop_reason(signals, context, journal_failed);
        match classify(stage, result, stop, (deadline, job_deadline), plan) {
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
        if outcome.is_some()
            && matches!(
                stop,
                Some(Stop::Interrupted | Stop::Aborted | Stop::JournalFailed)
            )
        {
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
                stage_env,
                deadline,
                &never,
            )
            .await;
            if let Err(error) = result {
                tracing::warn!(job = %job.id, %error, "cleanup after abort failed");
            }
        }
    }
    // Runnel's own stage that need not delay the final state (the credential reject) runs
    // after it, when the executor can; otherwise now, as the last stage, outside the log.
    if let Some(stage) = &plan.after_report {
        let deferred = runnel_executor::AfterReport {
            stage: stage.name.clone(),
            script: stage.script(JobStatus::Success).to_owned(),
            inline: stage.inline().map(str::to_owned),
            env: stage_env.to_vec(),
            timeout: CLEANUP_TIMEOUT,
        };
        if let Some(now) = executor.defer(deferred) {
            run_unlogged(executor.as_mut(), &now).await;
        }
    }
    // What need not delay the final state (docker's container removal, the shell session's
    // end) runs after it; it answers for the job's processes itself.
    let contained = match executor.cleanup_deferred().await {
        Some(later) => {
            *run.cleanup_after_report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(later);
            true
        }
        None => executor.contained(),
    };
    run.contained
        .store(contained, std::sync::atomic::Ordering::Relaxed);
    let timings: Vec<String> = durations
        .iter()
        .map(|(name, took)| format!("{name} {:.2}s", took.as_secs_f64()))
        .collect();
    trace.println(&format!("Stage durations: {}", timings.join(", ")));
    outcome.unwrap_or(JobOutcome::Success)
}

/// Runs an [`runnel_executor::AfterReport`] stage the executor did not take, now: its output
/// is not part of the job log (a failure is only logged here).
async fn run_unlogged(executor: &mut dyn Executor, stage: &runnel_executor::AfterReport) {
    struct Dropped;
    impl runnel_executor::OutputSink for Dropped {
        fn write(&self, _: OutputStream, _: &[u8]) {}
    }
    let command = StageCommand {
        stage: &stage.stage,
        script: &stage.script,
        inline: None,
        kind: runnel_executor::StageKind::Predefined,
        env: &stage.env,
        deadline: Some(Instant::now() + stage.timeout),
    };
    match executor
        .run(command, &Dropped, CancellationToken::new())
        .await
    {
        Ok(exit) if exit.success() => {}
        Ok(exit) => {
            tracing::debug!(stage = %stage.stage, ?exit, "stage outside the job log failed")
        }
        Err(error) => {
            tracing::warn!(stage = %stage.stage, error = %error_chain(&error), "stage outside the job log could not run")
        }
    }
}

/// Lets the executor configure itself with the job's variables; plans the job again when it
/// changed a directory, the host name or the shell. `Ok(None)` keeps `plan`.
async fn configure(
    executor: &mut dyn Executor,
    job: &JobSpec,
    plan: &JobPlan,
    options: &PlanOptions,
    trace: &JobTrace,
    usage: &Arc<JobUsage>,
    cancels: &Cancels,
) -> Result<Option<JobPlan>, JobOutcome> {
    let variables: Vec<(String, String)> = plan
        .variables
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    let job_response = runnel_api::encode_job_payload(job);
    let ctx = ConfigureContext {
        job,
        variables: &variables,
        job_response: &job_response,
        // config_exec ends before the job's stages; its process group is not journaled.
        sink: Arc::new(TraceSink::new(trace, Arc::clone(usage), None)),
        cancel: cancels.soft.clone(),
    };
    let overrides = executor
        .configure(ctx)
        .await
        .map_err(|error| executor_failure(&error))?;
    if overrides.is_empty() {
        return Ok(None);
    }
    let mut options = options.clone();
    if let Some(dir) = overrides.builds_dir {
        options.builds_dir = dir;
    }
    if let Some(dir) = overrides.cache_dir {
        options.cache_dir = dir;
    }
    if let Some(shared) = overrides.builds_dir_is_shared {
        options.shared_builds_dir = Some(shared);
    }
    if let Some(hostname) = overrides.hostname {
        options.hostname = hostname;
    }
    if let Some(shell) = overrides.shell {
        options.shell = match shell {
            runnel_executor::Shell::Bash => Shell::Bash,
            runnel_executor::Shell::Sh => Shell::Sh,
        };
    }
    runnel_job::plan(job, &options)
        .map(Some)
        .map_err(|error| JobOutcome::SystemFailure {
            message: error.to_string(),
        })
}

/// What one stage run amounted to.
enum StageResult {
    Ok,
    /// A failure that does not fail the job (after_script, by default).
    Ignored(String),
    Failed(JobOutcome),
}

/// What running out of time at `deadline` amounts to for a stage bound by `kind` (or the
/// executor's preparation): the stage's own limit (`prepare_timeout`, `get_sources_timeout`)
/// when it is the one that passed, worded and reported as the official runner does, else the
/// job timeout.
fn deadline_passed(
    kind: TimeoutKind,
    plan: &JobPlan,
    deadline: Instant,
    job_deadline: Instant,
) -> JobOutcome {
    let (name, limit) = match kind {
        TimeoutKind::Prepare => ("prepare", plan.timeouts.prepare),
        TimeoutKind::GetSources => ("get sources", plan.timeouts.get_sources),
        _ => {
            return JobOutcome::Timeout {
                after: plan.timeouts.job,
            };
        }
    };
    if deadline >= job_deadline {
        return JobOutcome::Timeout {
            after: plan.timeouts.job,
        };
    }
    JobOutcome::Failed {
        message: format!(
            "{name} timeout: exceeded timeout of {}",
            runnel_job::format_go_duration(limit)
        ),
        reason: runnel_types::FailureReason::JobExecutionTimeout,
    }
}

fn classify(
    stage: &PlannedStage,
    result: Result<StageExit, String>,
    stop: Option<Stop>,
    (deadline, job_deadline): (Instant, Instant),
    plan: &JobPlan,
) -> StageResult {
    let failure = match result {
        Ok(exit) if exit.success() => return StageResult::Ok,
        Ok(StageExit::TimedOut)
            if matches!(
                stage.timeout,
                TimeoutKind::Prepare | TimeoutKind::GetSources
            ) =>
        {
            deadline_passed(stage.timeout, plan, deadline, job_deadline)
        }
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
            Some(Stop::JournalFailed) => JobOutcome::SystemFailure {
                message: "the job journal could not be written".to_owned(),
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

fn stop_reason(
    signals: &RemoteSignals,
    context: &JobContext,
    journal_failed: &CancellationToken,
) -> Option<Stop> {
    if journal_failed.is_cancelled() {
        Some(Stop::JournalFailed)
    } else if context.interrupt.is_cancelled() {
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
    fn link(
        signals: &RemoteSignals,
        context: &JobContext,
        journal_failed: &CancellationToken,
    ) -> Self {
        let hard = CancellationToken::new();
        let soft = hard.child_token();
        let (abort, interrupt, journal, target) = (
            signals.abort.clone(),
            context.interrupt.clone(),
            journal_failed.clone(),
            hard.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = abort.cancelled() => target.cancel(),
                () = interrupt.cancelled() => target.cancel(),
                () = journal.cancelled() => target.cancel(),
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
    prepare_deadline: Instant,
    cancels: &Cancels,
) -> (Instant, CancellationToken) {
    let now = Instant::now();
    match stage.timeout {
        TimeoutKind::Job => (job_deadline, cancels.soft.clone()),
        TimeoutKind::Prepare => (prepare_deadline, cancels.soft.clone()),
        TimeoutKind::GetSources => (
            job_deadline.min(saturating_deadline(now, plan.timeouts.get_sources)),
            cancels.soft.clone(),
        ),
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
    env: &[(String, String)],
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<StageExit, String> {
    let mut last = Ok(StageExit::Exited(0));
    for attempt in 1..=stage.attempts.max(1) {
        let command = StageCommand {
            stage: &stage.name,
            script: stage.script(status),
            inline: stage.inline(),
            kind: match stage.kind {
                runnel_job::StageKind::Predefined => runnel_executor::StageKind::Predefined,
                runnel_job::StageKind::Build => runnel_executor::StageKind::Build,
            },
            env,
            deadline: Some(deadline),
        };
        last = executor
            .run(command, sink, cancel.clone())
            .await
            .map_err(|e| error_chain(&e));
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
    journal: Option<Arc<crate::journal::JobJournal>>,
    stdout: std::sync::Mutex<runnel_trace::TraceWriter>,
    stderr: std::sync::Mutex<runnel_trace::TraceWriter>,
}

impl TraceSink {
    fn new(
        trace: &JobTrace,
        usage: Arc<JobUsage>,
        journal: Option<Arc<crate::journal::JobJournal>>,
    ) -> Self {
        Self {
            trace: trace.clone(),
            usage,
            journal,
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
        if let Some(journal) = &self.journal {
            journal.add_process_group(pid);
        }
    }

    fn resources_used(&self, usage: runnel_executor::ResourceUsage) {
        self.usage.report(usage);
    }
}

/// The sink of [`Executor::start_early`]: it only hears of process groups, which the job's
/// usage and journal keep as the stages' sink does.
struct ProcessGroups {
    usage: Arc<JobUsage>,
    journal: Option<Arc<crate::journal::JobJournal>>,
}

impl OutputSink for ProcessGroups {
    /// Nothing may reach the job log before GitLab acknowledged the job.
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        tracing::warn!(%stream, bytes = bytes.len(), "output before the job was acknowledged dropped");
    }

    fn process_group_started(&self, pid: u32) {
        self.usage.add_group(pid);
        if let Some(journal) = &self.journal {
            journal.add_process_group(pid);
        }
    }
}

/// A random tag for the job's processes (128 bits, hex).
fn job_tag() -> String {
    format!("{:032x}", rand::random::<u128>())
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

/// The executor provider for a job of `runner`: docker and kubernetes providers live as long
/// as their `[[runners]]` entry (`docker`, `kubernetes`, from the daemon's runner state), shell
/// ones are made per job.
pub(crate) fn provider_for(
    runner: &RunnerSpec,
    user: Option<&str>,
    docker: impl FnOnce() -> Result<Arc<runnel_executor_docker::DockerProvider>, String>,
    kubernetes: impl FnOnce() -> Result<Arc<runnel_executor_kubernetes::KubernetesProvider>, String>,
    shell_provider: impl FnOnce(
        runnel_executor::ShellOptions,
    ) -> Result<Arc<runnel_executor::ShellProvider>, String>,
) -> Result<Arc<dyn Provider>, String> {
    if let Some(shell) = runner.unsupported_shell() {
        return Err(format!(
            "shell {shell:?} is not supported by Runnel (only bash and sh)"
        ));
    }
    if let Some(refused) = runner.refused_keys().first() {
        return Err(format!("config.toml: {refused}"));
    }
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
            Ok(shell_provider(options)?)
        }
        "custom" | "ssh"
            if runner
                .shell
                .as_deref()
                .is_some_and(|shell| !matches!(shell, "bash" | "sh")) =>
        {
            Err(format!(
                "the {} executor runs bash or sh scripts; shell = {:?} is not supported by this build of Runnel",
                runner.executor,
                runner.shell.as_deref().unwrap_or_default()
            ))
        }
        "custom" => {
            let config = runner.config.as_ref().ok_or_else(|| {
                "the custom executor needs a [runners.custom] section in config.toml".to_owned()
            })?;
            Ok(Arc::new(
                runnel_executor_custom::CustomProvider::from_runner(config),
            ))
        }
        "ssh" => {
            let config = runner.config.as_ref().ok_or_else(|| {
                "the ssh executor needs a [runners.ssh] section in config.toml".to_owned()
            })?;
            let shell = match shell_of(runner) {
                Shell::Bash => runnel_executor::Shell::Bash,
                Shell::Sh => runnel_executor::Shell::Sh,
            };
            let provider = runnel_executor_ssh::SshProvider::from_runner(config, shell)
                .map_err(|error| error_chain(&error))?;
            Ok(Arc::new(provider))
        }
        "docker" => Ok(docker()?),
        "kubernetes" => Ok(kubernetes()?),
        other => Err(format!(
            "the {other:?} executor is not supported by this build of Runnel"
        )),
    }
}

/// The planner's name for the runner's executor.
fn executor_kind(runner: &RunnerSpec) -> ExecutorKind {
    match runner.executor.as_str() {
        "docker" => ExecutorKind::Docker,
        "custom" => ExecutorKind::Custom,
        "ssh" => ExecutorKind::Ssh,
        "kubernetes" => ExecutorKind::Kubernetes,
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
    // Docker and Kubernetes paths are inside the containers; shell paths are on this host.
    let in_containers = matches!(
        executor_kind(runner),
        ExecutorKind::Docker | ExecutorKind::Kubernetes
    );
    let (dirs, runner_command) = if in_containers {
        let inside = |dir: Option<&Path>, default: &str| {
            dir.map_or_else(|| default.to_owned(), |d| d.display().to_string())
        };
        (
            (
                inside(runner.builds_dir.as_deref(), "/builds"),
                inside(runner.cache_dir.as_deref(), "/cache"),
            ),
            if executor_kind(runner) == ExecutorKind::Kubernetes {
                runnel_executor_kubernetes::HELPER_RUNNER_COMMAND.to_owned()
            } else {
                runnel_executor_docker::HELPER_RUNNER_COMMAND.to_owned()
            },
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
    // Helpers run on the SSH host, through the runner binary installed there (the official
    // executor calls `gitlab-runner` the same way); the transfer stages say when it is missing.
    let runner_command = if runner.executor == "ssh" {
        runnel_executor_ssh::REMOTE_RUNNER_COMMAND.to_owned()
    } else {
        runner_command
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
        shared_builds_dir: None,
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
        // Official defaults when unset: on for docker, off for shell.
        custom_build_dir: runner
            .custom_build_dir_enabled
            .unwrap_or(executor_kind(runner) == ExecutorKind::Docker),
        debug_trace_disabled: runner.debug_trace_disabled,
        // Unset: the official default (on for every executor but shell).
        clean_git_config: runner
            .config
            .as_ref()
            .and_then(|config| config.clean_git_config),
        safe_directory_checkout: runner
            .config
            .as_ref()
            .and_then(|config| config.safe_directory_checkout),
        prepare_timeout: runner
            .config
            .as_ref()
            .and_then(|config| config.prepare_timeout),
        get_sources_timeout: runner
            .config
            .as_ref()
            .and_then(|config| config.get_sources_timeout),
        // The SSH executor names the runner's host too (`Running on $(hostname) via …`).
        hostname: (runner.executor == "ssh")
            .then(|| nix::unistd::gethostname().ok()?.into_string().ok())
            .flatten()
            .unwrap_or_default(),
        // The shell executor runs the scripts here, so `$(hostname)` would print this.
        script_host: (runner.executor == "shell")
            .then(|| nix::unistd::gethostname().ok()?.into_string().ok())
            .flatten(),
        runner_command,
        server_url: runner.url.clone(),
        clone_url: runner.clone_url.clone().unwrap_or_default(),
        // Without a CA file, the chain GitLab presented (as the official runner does).
        tls_ca: read_tls_file(runner.tls_ca_file.as_deref())
            .or_else(|| context.client.presented_tls_chain()),
        tls_cert: read_tls_file(runner.tls_cert_file.as_deref()),
        tls_key: read_tls_file(runner.tls_key_file.as_deref()).map(runnel_types::Secret::new),
        os_arch: format!("{}/{}", std::env::consts::OS, go_arch()),
        remote_cache: None,
        // The shell executor's session runs every stage in a subshell (stdin /dev/null).
        stage_subshell: runner.executor == "shell",
        // It makes and removes the job's private temp dir itself, when the jobs run as the
        // runner's own user (behind `su`, the scripts make it as that user).
        temp_dir_by_executor: runner.executor == "shell" && context.config.user.is_none(),
        // And runs Runnel's housekeeping stages in that shell itself, without a subshell.
        inline_housekeeping: runner.executor == "shell",
        // And the cleanup's `git credential reject` after the final state is reported.
        credential_reject_after_report: runner.executor == "shell",
    }
}

/// A TLS file of the runner (`tls-*-file` or the `certs/<host>` lookup) for the job's
/// `CI_SERVER_TLS_*` file variables. The client already loaded it at start, so a failure here
/// (the file went away) only loses the variable, with a warning.
fn read_tls_file(path: Option<&Path>) -> Option<String> {
    let path = path?;
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read a TLS file for the job");
            None
        }
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
