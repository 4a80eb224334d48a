//! The executor interface: what the job runner asks of every executor.
//!
//! A [`Provider`] is built once per `[[runners]]` entry from its configuration. It describes the
//! executor ([`ExecutorInfo`]: name, features reported to GitLab, default shell and directories)
//! and creates one [`Executor`] per job. The job runner calls [`Executor::start_early`] while
//! the job's acknowledgement is in flight, then [`Executor::configure`] once
//! (before the stages are planned for good: custom's `config_exec` and the SSH host can decide
//! directories), [`Executor::prepare`] once, [`Executor::run`] once per stage, and [`Executor::cleanup`] once at the end, always, also after
//! a failure or a cancellation.
//!
//! The shape fits executors that run stages in different places: a stage says whether it is a
//! [`StageKind::Predefined`] one (git, cache and artifact work, which docker runs in the helper
//! container) or a [`StageKind::Build`] one (the user's script, run in the job's image). The shell
//! executor runs both on the host.
//!
//! This module does not generate scripts, format the job log or decide timeouts: the caller
//! hands in finished scripts, a sink for the raw output bytes, a cancellation token and an
//! optional deadline.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use runnel_types::JobSpec;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ExecutorError;

/// A boxed, `Send` future: what the [`Executor`] methods return, so that executors can be used
/// as `Box<dyn Executor>` and jobs can be `tokio::spawn`ed.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which of a child's output streams a chunk of bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a stage's output goes, as it arrives.
///
/// Chunks are passed on unchanged and unbuffered: they can split lines, UTF-8 sequences and
/// escape codes anywhere. Masking, line splitting and timestamps are the sink's business.
pub trait OutputSink: Send + Sync {
    /// Accepts one chunk of output. Called from the task running the stage; keep it quick.
    fn write(&self, stream: OutputStream, bytes: &[u8]);

    /// A stage's process group started on this host, led by `pid` (its process group id).
    /// Lets the caller account the group's CPU and memory; the default ignores it.
    fn process_group_started(&self, pid: u32) {
        let _ = pid;
    }

    /// What the job's containers (or other processes not on this host) used so far, as the
    /// executor measured it: cumulative for the job, so each call replaces the previous one.
    /// The default ignores it.
    fn resources_used(&self, usage: ResourceUsage) {
        let _ = usage;
    }
}

/// CPU and memory a job used where the runner cannot see its processes (containers).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceUsage {
    /// The highest memory use seen (bytes, page cache not counted).
    pub peak_memory_bytes: u64,
    /// CPU time used (seconds, all cores).
    pub cpu_seconds: f64,
    /// The highest CPU use seen, in cores.
    pub peak_cores: f64,
}

/// Where a stage runs, for executors that have more than one place to run things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// Runner-generated work (prepare, get sources, caches, artifacts, cleanup). Docker runs
    /// these in the helper ("predefined") container.
    Predefined,
    /// The user's scripts (`step_*`, `after_script`), run in the job's image.
    Build,
}

/// One stage to run.
#[derive(Clone, Copy)]
pub struct StageCommand<'a> {
    /// The stage name (`prepare_script`, `get_sources`, `step_script`, …), for logs and errors.
    pub stage: &'a str,
    /// The complete script, fed to the shell on stdin. It exports its own variables.
    pub script: &'a str,
    /// The stage as Runnel's own housekeeping, for an executor with a shell session to run in
    /// that shell itself rather than in a subshell (`runnel_job::PlannedStage::inline`): it
    /// leaves the shell as it found it, and its output and status are `script`'s. Executors
    /// without a session run `script`.
    pub inline: Option<&'a str>,
    /// Where the stage runs.
    pub kind: StageKind,
    /// Extra environment for the shell process itself; rarely needed, since scripts export the
    /// job variables themselves.
    pub env: &'a [(String, String)],
    /// When the stage must end. At the deadline the stage is stopped like a cancellation and
    /// reports [`StageExit::TimedOut`].
    pub deadline: Option<Instant>,
}

impl fmt::Debug for StageCommand<'_> {
    /// Scripts and environment values can hold secrets: only sizes and keys are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageCommand")
            .field("stage", &self.stage)
            .field("script_bytes", &self.script.len())
            .field("inline", &self.inline.is_some())
            .field("kind", &self.kind)
            .field("env_keys", &EnvKeys(self.env))
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A stage of Runnel's own that need not run before the job's final state is reported
/// (`runnel_job::JobPlan::after_report`: the cleanup's `git credential reject`, once GitLab
/// has revoked the job token anyway). An executor that takes it ([`Executor::defer`]) runs it
/// in the cleanup [`Executor::cleanup_deferred`] hands back; its output is not part of the job
/// log (the job log is complete by then) and is dropped.
#[derive(Clone)]
pub struct AfterReport {
    /// The stage name, for logs and errors.
    pub stage: String,
    /// The complete script, as [`StageCommand::script`].
    pub script: String,
    /// The same for a shell session to run in its shell itself, as [`StageCommand::inline`];
    /// the stage is the last its shell runs, so this may change the shell (it exports the
    /// job's variables).
    pub inline: Option<String>,
    /// Extra environment for the shell process, as [`StageCommand::env`].
    pub env: Vec<(String, String)>,
    /// How long it may take once started.
    pub timeout: std::time::Duration,
}

impl fmt::Debug for AfterReport {
    /// The script and environment values can hold secrets: only sizes and keys are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterReport")
            .field("stage", &self.stage)
            .field("script_bytes", &self.script.len())
            .field("inline", &self.inline.is_some())
            .field("env_keys", &EnvKeys(&self.env))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Shows only the keys of an environment list.
pub(crate) struct EnvKeys<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Debug for EnvKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, _)| key))
            .finish()
    }
}

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageExit {
    /// The script exited with this code.
    Exited(i32),
    /// The script's process was killed by this signal (not by the runner).
    Signaled(i32),
    /// The cancellation token fired; the runner stopped the stage.
    Cancelled,
    /// The deadline passed; the runner stopped the stage.
    TimedOut,
}

impl StageExit {
    /// The exit code a shell would report: the code itself, or 128 + the signal number.
    /// `None` when the runner stopped the stage.
    pub fn exit_code(self) -> Option<i32> {
        match self {
            StageExit::Exited(code) => Some(code),
            StageExit::Signaled(signal) => Some(128 + signal),
            StageExit::Cancelled | StageExit::TimedOut => None,
        }
    }

    /// Whether the script exited with code 0.
    pub fn success(self) -> bool {
        self == StageExit::Exited(0)
    }
}

/// What an executor needs to set itself up for one job.
#[derive(Clone, Copy, Debug)]
pub struct PrepareContext<'a> {
    /// The job (image, services and credentials matter to container executors).
    pub job: &'a JobSpec,
    /// The absolute builds directory (configured, or the executor's default made absolute).
    pub builds_dir: &'a Path,
    /// The absolute cache directory.
    pub cache_dir: &'a Path,
    /// `CI_DEBUG_SERVICES`: stream the output of service containers into the job log.
    pub debug_services: bool,
    /// The job's per-project concurrency slot (`CI_CONCURRENT_PROJECT_ID`): container
    /// executors name the slot's reusable volumes after it.
    pub project_slot: u32,
    /// The job's git strategy is `fetch`: container executors keep the builds directory of
    /// the slot for the next job.
    pub git_fetch: bool,
    /// `FF_NETWORK_PER_BUILD`: the docker executor creates a network for the job even when it
    /// has no services.
    pub network_per_build: bool,
    /// The predefined stages do only the runner's housekeeping: no git, no cache or artifact
    /// helper, no user hook (`JobPlan::predefined_housekeeping_only` of `runnel-job`). The
    /// docker executor may then run them in the build container, with no helper container.
    pub predefined_housekeeping_only: bool,
    /// `FF_USE_INIT_WITH_DOCKER_EXECUTOR`: the docker executor runs an init process as PID 1
    /// of the build container, which reaps orphaned processes and forwards signals.
    pub init_process: bool,
    /// The job's private temp dir, when the plan leaves making it (before the first stage)
    /// and removing it (after the last) to the executor (`PlanOptions::temp_dir_by_executor`
    /// of `runnel-job`); only the shell executor is given one.
    pub temp_dir: Option<&'a Path>,
}

/// What [`Executor::start_early`] may start a job's first stage environment with.
#[derive(Clone, Copy)]
pub struct EarlyStart<'a> {
    /// The absolute builds directory of the plan (made when missing, as `prepare` makes it).
    pub builds_dir: &'a Path,
    /// The extra environment of the job's stages ([`StageCommand::env`]).
    pub env: &'a [(String, String)],
}

impl fmt::Debug for EarlyStart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EarlyStart")
            .field("builds_dir", &self.builds_dir)
            .field("env_keys", &EnvKeys(self.env))
            .finish()
    }
}

/// What an executor may look at before the job's scripts are planned
/// ([`Executor::configure`]).
#[derive(Clone)]
pub struct ConfigureContext<'a> {
    /// The job.
    pub job: &'a JobSpec,
    /// Every job variable in official order, expanded (predefined ones included), as the
    /// planner resolved them with the configured directories.
    pub variables: &'a [(String, String)],
    /// The job as GitLab sent it (the JSON of the job request's answer).
    pub job_response: &'a [u8],
    /// Where the executor's own output goes (into the job log), for this and later calls.
    pub sink: Arc<dyn OutputSink>,
    /// Fired when the job is cancelled or aborted.
    pub cancel: CancellationToken,
}

impl fmt::Debug for ConfigureContext<'_> {
    /// Variable values and the job payload hold secrets: only sizes and keys are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigureContext")
            .field("job", &self.job.id)
            .field("variables", &EnvKeys(self.variables))
            .field("job_response_bytes", &self.job_response.len())
            .finish_non_exhaustive()
    }
}

/// Settings an executor learned in [`Executor::configure`] that change how the job is planned
/// (the custom executor's `config_exec`). `None` keeps the runner's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOverrides {
    /// The absolute builds directory, as the scripts see it.
    pub builds_dir: Option<String>,
    /// The absolute cache directory, as the scripts see it.
    pub cache_dir: Option<String>,
    /// Whether builds directories are shared between jobs (nested by token and slot).
    pub builds_dir_is_shared: Option<bool>,
    /// The host name for `Running on … via <hostname>...`.
    pub hostname: Option<String>,
    /// The shell the scripts are generated for.
    pub shell: Option<Shell>,
}

impl PlanOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self == &PlanOverrides::default()
    }
}

/// The shells the executors can run scripts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Shell {
    /// `bash`, the default.
    #[default]
    Bash,
    /// POSIX `sh`.
    Sh,
}

impl Shell {
    /// The name as written in `config.toml` and reported to GitLab.
    pub fn as_str(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Sh => "sh",
        }
    }
}

impl fmt::Display for Shell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Shell {
    type Err = ExecutorError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "bash" => Ok(Shell::Bash),
            "sh" => Ok(Shell::Sh),
            _ => Err(ExecutorError::UnsupportedShell {
                name: name.to_owned(),
            }),
        }
    }
}

/// The `info.features` an executor contributes to what the runner reports to GitLab.
///
/// Field names are the wire keys. Features that come from the shell or the API client
/// (`artifacts`, `trace_checksum`, …) are not the executor's to set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct ExecutorFeatures {
    /// Job variables are supported.
    pub variables: bool,
    /// `image:` is honoured.
    pub image: bool,
    /// `services:` are started.
    pub services: bool,
    /// Builds directories are shared between jobs (no disposable environment).
    pub shared: bool,
    /// An interactive web session can be attached.
    pub session: bool,
    /// A web terminal can be attached.
    pub terminal: bool,
    /// Service proxying through the session server.
    pub proxy: bool,
    /// Services get their own variables.
    pub service_variables: bool,
    /// Services may have several aliases.
    pub service_multiple_aliases: bool,
    /// `image:docker:` / `image:kubernetes:` options are honoured.
    pub image_executor_opts: bool,
    /// Executor options on services are honoured.
    pub service_executor_opts: bool,
    /// Native CI steps can run.
    pub native_steps_integration: bool,
}

/// What the runner needs to know about an executor before any job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecutorInfo {
    /// The executor name as in `config.toml` (`shell`, `docker`, …).
    pub name: &'static str,
    /// Features reported to GitLab.
    pub features: ExecutorFeatures,
    /// The shell used and reported when `shell` is not configured.
    pub default_shell: Shell,
    /// The default builds directory; a relative one is relative to the runner's working
    /// directory and must be made absolute by the caller.
    pub default_builds_dir: &'static str,
    /// The default cache directory, relative like `default_builds_dir`.
    pub default_cache_dir: &'static str,
    /// Whether builds directories are shared between jobs, which puts the runner's short token
    /// and the concurrency slot into project paths.
    pub shared_builds_dir: bool,
}

/// Creates executors of one kind, configured for one `[[runners]]` entry.
pub trait Provider: Send + Sync {
    /// What this executor is and reports.
    fn info(&self) -> &ExecutorInfo;

    /// A fresh executor for one job.
    fn create(&self) -> Result<Box<dyn Executor>, ExecutorError>;
}

/// Runs the stages of one job.
///
/// The job runner calls [`prepare`](Executor::prepare) once, [`run`](Executor::run) for each
/// stage in order, then [`cleanup`](Executor::cleanup) exactly once, even when preparing or a
/// stage failed or the job was cancelled. Dropping any returned future must stop and reap every
/// process it started.
pub trait Executor: Send {
    /// The executor name as in `config.toml`.
    fn name(&self) -> &str;

    /// The line announcing the executor in the job log, without colours or newline, such as
    /// `Using Shell (bash) executor...`. Call it after [`prepare`](Executor::prepare).
    fn banner(&self) -> String;

    /// Runs once before the job's scripts are planned, with the job's variables and a sink
    /// into the job log; returns settings that change the plan. Most executors need nothing
    /// here (the default); the custom executor runs its `config_exec`, the SSH executor
    /// connects. A failure here is reported like a failure of
    /// [`prepare`](Executor::prepare), and [`cleanup`](Executor::cleanup) still runs.
    fn configure<'a>(
        &'a mut self,
        ctx: ConfigureContext<'a>,
    ) -> BoxFuture<'a, Result<PlanOverrides, ExecutorError>> {
        let _ = ctx;
        Box::pin(async { Ok(PlanOverrides::default()) })
    }

    /// Starts, while the job's acknowledgement is on its way to GitLab, what the first stage
    /// needs and is slow to start (the shell executor's login shell), so the round trip and the
    /// start overlap. Runs nothing of the job's scripts and writes nothing to the job log; `sink`
    /// only hears of the process groups it starts. Returns whether it started anything: a job
    /// GitLab then refuses ends with [`cleanup`](Executor::cleanup), which stops it. Failing
    /// here is not an error: the first stage starts what is missing and reports its own
    /// failure. The default starts nothing.
    fn start_early<'a>(
        &'a mut self,
        ctx: &'a EarlyStart<'a>,
        sink: &'a dyn OutputSink,
    ) -> BoxFuture<'a, bool> {
        let _ = (ctx, sink);
        Box::pin(async { false })
    }

    /// Sets up the job's environment: directories here, containers for docker.
    fn prepare<'a>(
        &'a mut self,
        ctx: &'a PrepareContext<'a>,
    ) -> BoxFuture<'a, Result<(), ExecutorError>>;

    /// Runs one stage to its end, streaming its output into `sink`.
    ///
    /// When `cancel` fires or the deadline passes, the stage is stopped (gracefully first) and
    /// [`StageExit::Cancelled`] or [`StageExit::TimedOut`] is returned once it is gone.
    fn run<'a>(
        &'a mut self,
        cmd: StageCommand<'a>,
        sink: &'a dyn OutputSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<StageExit, ExecutorError>>;

    /// Releases what [`prepare`](Executor::prepare) set up. Never fails: problems are logged.
    fn cleanup(&mut self) -> BoxFuture<'_, ()>;

    /// [`cleanup`](Executor::cleanup) for a job runner that reports the job's final state right
    /// after it: what need not delay that report is handed back (the docker executor's
    /// container removal, the shell executor's [`AfterReport`] stage and session end), for the
    /// caller to await after the report, before it forgets the job (its journal record keeps
    /// what the job created until then); the rest is done here. The work handed back ends
    /// with [`contained`](Executor::contained)'s answer for the whole job, and while it is
    /// pending the caller must not look for the job's processes itself (the shell executor's
    /// session still runs). Use one of the two, once. The default runs `cleanup` and hands
    /// back nothing.
    fn cleanup_deferred(&mut self) -> BoxFuture<'_, Option<BoxFuture<'static, bool>>> {
        Box::pin(async move {
            self.cleanup().await;
            None
        })
    }

    /// Takes `stage` to run after the job's final state is reported, in the work
    /// [`cleanup_deferred`](Executor::cleanup_deferred) hands back (and in
    /// [`cleanup`](Executor::cleanup), first, when that is used instead). An executor that
    /// cannot hands it back (the default), and the job runner runs it at once, as the last
    /// stage, with its output dropped.
    fn defer(&mut self, stage: AfterReport) -> Option<AfterReport> {
        Some(stage)
    }

    /// After [`cleanup`](Executor::cleanup): whether every process the job started on this
    /// host is known to be gone, so the job runner need not scan `/proc` for processes carrying
    /// the job's tag ([`crate::contain`]). `false` (the default) keeps that scan; an executor
    /// says `true` only when it saw the whole process tree of every stage end.
    fn contained(&self) -> bool {
        false
    }

    /// What the job has created outside this process so far (containers, pods), for the job
    /// journal: a runner restarted after a crash removes them by id. The default is nothing
    /// (processes on this host are found by their tag, [`crate::contain`]).
    fn job_resources(&self) -> Vec<JobResource> {
        Vec::new()
    }
}

/// Something a job created outside the runner process, by its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobResource {
    /// A Docker container (build, helper or service), by container id.
    DockerContainer { id: String },
    /// A Kubernetes pod.
    KubernetesPod { namespace: String, name: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        let exits = [
            StageExit::Exited(0),
            StageExit::Exited(42),
            StageExit::Signaled(15),
            StageExit::Cancelled,
            StageExit::TimedOut,
        ];
        let codes: Vec<_> = exits
            .map(|exit| (exit.exit_code(), exit.success()))
            .to_vec();
        assert_eq!(
            codes,
            [
                (Some(0), true),
                (Some(42), false),
                (Some(143), false),
                (None, false),
                (None, false),
            ]
        );
    }

    #[test]
    fn stage_debug_hides_the_script_and_env_values() {
        let env = [("CI_JOB_TOKEN".to_owned(), "glcbt-secret".to_owned())];
        let cmd = StageCommand {
            stage: "get_sources",
            script: "export CI_JOB_TOKEN=glcbt-secret",
            inline: None,
            kind: StageKind::Predefined,
            env: &env,
            deadline: None,
        };
        let debug = format!("{cmd:?}");
        assert!(!debug.contains("secret"), "{debug}");
        insta::assert_snapshot!(debug, @r#"StageCommand { stage: "get_sources", script_bytes: 32, inline: false, kind: Predefined, env_keys: ["CI_JOB_TOKEN"], deadline: None }"#);
    }
}
