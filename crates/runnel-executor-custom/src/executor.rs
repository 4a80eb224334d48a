//! The provider and the executor: one temporary directory and one driver environment per job.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use runnel_executor::process::{ProcessSpec, StopWhen};
use runnel_executor::{
    BoxFuture, ConfigureContext, Executor, ExecutorError, ExecutorFeatures, ExecutorInfo,
    KillPolicy, OutputSink, OutputStream, PlanOverrides, PrepareContext, Provider, Shell,
    StageCommand, StageExit,
};
use runnel_types::JobSpec;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::CustomError;
use crate::options::{CustomOptions, Program};

/// `BUILD_FAILURE_EXIT_CODE`: a driver exits with this when the job's script failed.
pub const BUILD_FAILURE_EXIT_CODE: i32 = 1;
/// `SYSTEM_FAILURE_EXIT_CODE`: a driver exits with this when its own work failed.
pub const SYSTEM_FAILURE_EXIT_CODE: i32 = 2;

/// The most `config_exec` may print on stdout.
const CONFIG_OUTPUT_LIMIT: usize = 1024 * 1024;
/// The most of `cleanup_exec`'s output kept for the daemon log, per stream.
const CLEANUP_LOG_LIMIT: usize = 64 * 1024;

/// What the custom executor reports (the official feature set: variables, a shared builds
/// dir, service variables) and defaults to.
pub const CUSTOM_EXECUTOR_INFO: ExecutorInfo = ExecutorInfo {
    name: "custom",
    features: ExecutorFeatures {
        variables: true,
        shared: true,
        service_variables: true,
        image: false,
        services: false,
        session: false,
        terminal: false,
        proxy: false,
        service_multiple_aliases: false,
        image_executor_opts: false,
        service_executor_opts: false,
        native_steps_integration: false,
    },
    default_shell: Shell::Bash,
    default_builds_dir: "builds",
    default_cache_dir: "cache",
    shared_builds_dir: false,
};

/// Creates [`CustomExecutor`]s for one `[[runners]]` entry.
#[derive(Debug)]
pub struct CustomProvider {
    options: Arc<CustomOptions>,
}

impl CustomProvider {
    /// A provider for `options`; a missing section or `run_exec` fails each job with a
    /// configuration error, as officially.
    pub fn new(options: CustomOptions) -> Self {
        CustomProvider {
            options: Arc::new(options),
        }
    }

    /// A provider for a `[[runners]]` entry.
    pub fn from_runner(runner: &runnel_config::RunnerConfig) -> Self {
        Self::new(CustomOptions::from_runner(runner))
    }
}

impl Provider for CustomProvider {
    fn info(&self) -> &ExecutorInfo {
        &CUSTOM_EXECUTOR_INFO
    }

    fn create(&self) -> Result<Box<dyn Executor>, ExecutorError> {
        if !self.options.configured {
            return Err(CustomError::NotConfigured.into());
        }
        if !self.options.run.is_set() {
            return Err(CustomError::MissingRunExec.into());
        }
        Ok(Box::new(CustomExecutor {
            options: Arc::clone(&self.options),
            dir: None,
            env: Vec::new(),
            sink: None,
            cancel: CancellationToken::new(),
            configured: false,
            scripts: 0,
        }))
    }
}

/// Runs one job through the driver programs; made by [`CustomProvider`].
pub struct CustomExecutor {
    options: Arc<CustomOptions>,
    /// The private directory: `TMPDIR`, the job response, the build exit code, the scripts.
    dir: Option<tempfile::TempDir>,
    /// The drivers' environment on top of the runner's.
    env: Vec<(String, String)>,
    /// The job log.
    sink: Option<Arc<dyn OutputSink>>,
    /// The job's cancellation, for `prepare_exec`.
    cancel: CancellationToken,
    /// Whether `configure` ran, so that `cleanup_exec` has something to clean.
    configured: bool,
    /// Scripts written so far (their directories are numbered).
    scripts: u32,
}

impl fmt::Debug for CustomExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomExecutor")
            .field("options", &self.options)
            .field("dir", &self.dir.as_ref().map(tempfile::TempDir::path))
            .field(
                "env_keys",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

/// `config_exec`'s JSON, as documented.
#[derive(Debug, Default, Deserialize)]
struct ConfigOutput {
    driver: Option<DriverInfo>,
    hostname: Option<String>,
    builds_dir: Option<String>,
    cache_dir: Option<String>,
    builds_dir_is_shared: Option<bool>,
    job_env: Option<std::collections::BTreeMap<String, String>>,
    shell: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DriverInfo {
    name: Option<String>,
    version: Option<String>,
}

/// `Using Custom executor[ with driver NAME[ VERSION]]...`.
fn startup_message(driver: Option<&DriverInfo>) -> String {
    match driver.and_then(|d| d.name.as_deref().map(|name| (name, d.version.as_deref()))) {
        None => "Using Custom executor...".to_owned(),
        Some((name, None)) => format!("Using Custom executor with driver {name}..."),
        Some((name, Some(version))) => {
            format!("Using Custom executor with driver {name} {version}...")
        }
    }
}

fn parse_config_output(stdout: &[u8]) -> Result<ConfigOutput, CustomError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(ConfigOutput::default());
    }
    serde_json::from_slice(stdout).map_err(CustomError::ConfigOutput)
}

impl ConfigOutput {
    fn overrides(&self, options: &CustomOptions) -> Result<PlanOverrides, CustomError> {
        let absolute = |setting: &'static str, dir: &Option<String>| match dir {
            Some(path) if !path.starts_with('/') => Err(CustomError::RelativeDir {
                setting,
                path: path.clone(),
            }),
            _ => Ok(dir.clone()),
        };
        let shell = match self.shell.as_deref() {
            None => None,
            Some("bash") => Some(Shell::Bash),
            Some("sh") => Some(Shell::Sh),
            Some(other) => {
                return Err(CustomError::UnsupportedShell {
                    name: other.to_owned(),
                });
            }
        };
        let builds_dir = absolute("builds_dir", &self.builds_dir)?;
        let cache_dir = absolute("cache_dir", &self.cache_dir)?;
        if builds_dir.is_none() && !options.builds_dir_configured {
            return Err(CustomError::BuildsDirNotConfigured);
        }
        if cache_dir.is_none() && !options.cache_dir_configured {
            return Err(CustomError::CacheDirNotConfigured);
        }
        Ok(PlanOverrides {
            builds_dir,
            cache_dir,
            builds_dir_is_shared: self.builds_dir_is_shared,
            hostname: self.hostname.clone(),
            shell,
        })
    }
}

/// Whether `key=value` can go into a process environment.
fn valid_env(key: &str, value: &str) -> bool {
    !key.is_empty() && !key.contains(['=', '\0']) && !value.contains('\0')
}

/// `CI_JOB_SERVICES`: the job's services as JSON, empty without services (as officially).
fn job_services(job: &JobSpec) -> String {
    if job.services.is_empty() {
        return String::new();
    }
    let services: Vec<serde_json::Value> = job
        .services
        .iter()
        .map(|service| {
            let list = |items: &Vec<String>| {
                if items.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::json!(items)
                }
            };
            let mut value = serde_json::json!({
                "name": service.name,
                "alias": service.aliases.first().cloned().unwrap_or_default(),
                "entrypoint": list(&service.entrypoint),
                "command": list(&service.command),
            });
            if !service.variables.is_empty()
                && let Some(object) = value.as_object_mut()
            {
                let variables: serde_json::Map<String, serde_json::Value> = service
                    .variables
                    .iter()
                    .map(|v| (v.key.clone(), serde_json::Value::String(v.value.clone())))
                    .collect();
                object.insert("variables".to_owned(), serde_json::Value::Object(variables));
            }
            value
        })
        .collect();
    serde_json::Value::Array(services).to_string()
}

/// The build's exit code from `BUILD_EXIT_CODE_FILE`: `None` when the driver wrote none.
fn read_build_exit_code(path: &Path) -> Result<Option<i32>, ()> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let mut text = String::new();
    // The first line is all that counts; a few bytes are plenty.
    let read = file.take(64).read_to_string(&mut text);
    // Read once: a later stage must not inherit this stage's code.
    if let Err(error) = std::fs::remove_file(path) {
        debug!(%error, "cannot remove BUILD_EXIT_CODE_FILE");
    }
    let first = text.lines().next().unwrap_or_default().trim();
    match read {
        Ok(_) => first.parse().map(Some).map_err(|_| ()),
        Err(_) => Err(()),
    }
}

/// Keeps `config_exec`'s stdout (bounded) and passes its stderr on to the job log.
struct Capture {
    stdout: Mutex<Vec<u8>>,
    overflow: AtomicBool,
    forward: Arc<dyn OutputSink>,
    limit: usize,
}

impl OutputSink for Capture {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        match stream {
            OutputStream::Stdout => {
                let mut stdout = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
                if stdout.len() + bytes.len() > self.limit {
                    self.overflow.store(true, Ordering::Relaxed);
                } else {
                    stdout.extend_from_slice(bytes);
                }
            }
            OutputStream::Stderr => self.forward.write(stream, bytes),
        }
    }
}

/// Keeps the start of `cleanup_exec`'s output for the daemon log (the job log is almost
/// finished by then, and the official runner logs it there too).
#[derive(Default)]
struct LogCapture {
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
}

impl OutputSink for LogCapture {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        let buffer = match stream {
            OutputStream::Stdout => &self.stdout,
            OutputStream::Stderr => &self.stderr,
        };
        let mut buffer = buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let room = CLEANUP_LOG_LIMIT.saturating_sub(buffer.len());
        buffer.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }
}

/// A `WARNING:` line as the runner writes it into the job log.
fn warning_line(message: &str) -> String {
    format!("\x1b[0;33mWARNING: {message}\x1b[0;m\n")
}

/// How a driver program ended, in the protocol's terms (outside stages).
fn step_result(step: &'static str, exit: StageExit, code_file: &Path) -> Result<(), CustomError> {
    match protocol_exit(step, exit, code_file)? {
        StageExit::Exited(0) => Ok(()),
        StageExit::Exited(code) => Err(CustomError::BuildFailure { step, code }),
        // protocol_exit turns everything else into an error.
        other => Err(CustomError::UnknownFailure {
            step,
            code: other.exit_code().unwrap_or(-1),
            how: format!("{other:?}"),
        }),
    }
}

/// Maps a driver's exit to a stage exit (`Exited(code)` is the build's result) or an error.
fn protocol_exit(
    step: &'static str,
    exit: StageExit,
    code_file: &Path,
) -> Result<StageExit, CustomError> {
    match exit {
        StageExit::Exited(0) => Ok(StageExit::Exited(0)),
        StageExit::Exited(BUILD_FAILURE_EXIT_CODE) => match read_build_exit_code(code_file) {
            Ok(None) => Ok(StageExit::Exited(BUILD_FAILURE_EXIT_CODE)),
            Ok(Some(code)) => Ok(StageExit::Exited(code)),
            Err(()) => Err(CustomError::UnknownFailure {
                step,
                code: SYSTEM_FAILURE_EXIT_CODE,
                how: format!(
                    "exit status {BUILD_FAILURE_EXIT_CODE} with an unreadable BUILD_EXIT_CODE_FILE"
                ),
            }),
        },
        StageExit::Exited(SYSTEM_FAILURE_EXIT_CODE) => Err(CustomError::SystemFailure {
            step,
            code: SYSTEM_FAILURE_EXIT_CODE,
        }),
        StageExit::Exited(code) => Err(CustomError::UnknownFailure {
            step,
            code,
            how: format!("exit status {code}"),
        }),
        StageExit::Signaled(signal) => Err(CustomError::UnknownFailure {
            step,
            code: 128 + signal,
            how: format!("signal {signal}"),
        }),
        StageExit::Cancelled | StageExit::TimedOut => Ok(exit),
    }
}

/// The stage name the protocol passes to `run_exec`.
fn protocol_stage(stage: &str) -> &str {
    if stage == "step_script" {
        "build_script"
    } else {
        stage
    }
}

impl CustomExecutor {
    fn dir(&self) -> Result<&Path, CustomError> {
        self.dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .ok_or_else(|| {
                CustomError::TempDir(std::io::Error::other("the executor was not configured"))
            })
    }

    fn code_file(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|dir| dir.path().join("build_exit_code"))
            .unwrap_or_default()
    }

    fn kill_policy(&self) -> KillPolicy {
        KillPolicy {
            grace: self.options.graceful_kill,
            force: self.options.force_kill,
            ..KillPolicy::default()
        }
    }

    /// Runs one driver program with the protocol's environment in the private directory.
    async fn exec(
        &self,
        step: &'static str,
        program: &Program,
        extra: &[&str],
        sink: &dyn OutputSink,
        stop: StopWhen<'_>,
    ) -> Result<StageExit, CustomError> {
        let dir = self.dir()?;
        let args: Vec<&str> = program
            .args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        let spec = ProcessSpec {
            program: &program.exec,
            args: &args,
            cwd: Some(dir),
            env: &self.env,
            stdin: &[],
        };
        debug!(
            step,
            program = program.exec,
            "running custom executor driver"
        );
        runnel_executor::process::run(spec, sink, stop, &self.kill_policy())
            .await
            .map_err(|source| CustomError::Run {
                step,
                program: program.exec.clone(),
                source,
            })
    }

    /// Runs `config_exec`/`prepare_exec` under its own timeout and the job's cancellation.
    async fn exec_step(
        &self,
        step: &'static str,
        program: &Program,
        timeout: std::time::Duration,
        sink: &dyn OutputSink,
    ) -> Result<(), CustomError> {
        let stop = StopWhen {
            cancel: &self.cancel,
            deadline: Some(Instant::now() + timeout),
        };
        match self.exec(step, program, &[], sink, stop).await? {
            StageExit::TimedOut => Err(CustomError::Timeout {
                step,
                after: timeout,
            }),
            StageExit::Cancelled => Err(CustomError::Cancelled { step }),
            exit => step_result(step, exit, &self.code_file()),
        }
    }

    async fn start(&mut self, ctx: ConfigureContext<'_>) -> Result<PlanOverrides, CustomError> {
        self.sink = Some(Arc::clone(&ctx.sink));
        self.cancel = ctx.cancel.clone();
        self.configured = true;
        let dir = tempfile::Builder::new()
            .prefix("custom-executor")
            .tempdir()
            .map_err(CustomError::TempDir)?;
        let response = dir.path().join("response.json");
        write_private(&response, ctx.job_response, 0o600)?;
        let code_file = dir.path().join("build_exit_code");
        let mut base = vec![
            ("TMPDIR".to_owned(), dir.path().display().to_string()),
            (
                "BUILD_FAILURE_EXIT_CODE".to_owned(),
                BUILD_FAILURE_EXIT_CODE.to_string(),
            ),
            (
                "SYSTEM_FAILURE_EXIT_CODE".to_owned(),
                SYSTEM_FAILURE_EXIT_CODE.to_string(),
            ),
            (
                "BUILD_EXIT_CODE_FILE".to_owned(),
                code_file.display().to_string(),
            ),
            (
                "JOB_RESPONSE_FILE".to_owned(),
                response.display().to_string(),
            ),
        ];
        let mut custom: Vec<(String, String)> = ctx
            .variables
            .iter()
            .filter(|(key, value)| valid_env(key, value))
            .map(|(key, value)| (format!("CUSTOM_ENV_{key}"), value.clone()))
            .collect();
        custom.push((
            "CUSTOM_ENV_CI_JOB_SERVICES".to_owned(),
            job_services(ctx.job),
        ));
        self.dir = Some(dir);
        self.env = base.iter().cloned().chain(custom.iter().cloned()).collect();

        let output = if self.options.config.is_set() {
            let capture = Capture {
                stdout: Mutex::new(Vec::new()),
                overflow: AtomicBool::new(false),
                forward: Arc::clone(&ctx.sink),
                limit: CONFIG_OUTPUT_LIMIT,
            };
            let program = self.options.config.clone();
            self.exec_step(
                "config_exec",
                &program,
                self.options.config_timeout,
                &capture,
            )
            .await?;
            if capture.overflow.load(Ordering::Relaxed) {
                return Err(CustomError::ConfigOutputTooLarge {
                    limit: CONFIG_OUTPUT_LIMIT,
                });
            }
            let stdout = capture
                .stdout
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            parse_config_output(&stdout)?
        } else {
            ConfigOutput::default()
        };
        let overrides = output.overrides(&self.options)?;
        if let Some(job_env) = &output.job_env {
            base.extend(
                job_env
                    .iter()
                    .filter(|(key, value)| valid_env(key, value))
                    .map(|(key, value)| (key.clone(), value.clone())),
            );
            self.env = base.into_iter().chain(custom).collect();
        }
        let banner = startup_message(output.driver.as_ref());
        ctx.sink
            .write(OutputStream::Stdout, format!("{banner}\n").as_bytes());
        Ok(overrides)
    }

    async fn prepare_exec(&mut self) -> Result<(), CustomError> {
        if !self.options.prepare.is_set() {
            return Ok(());
        }
        let sink = self.sink.clone().ok_or_else(|| {
            CustomError::TempDir(std::io::Error::other("the executor was not configured"))
        })?;
        let program = self.options.prepare.clone();
        self.exec_step(
            "prepare_exec",
            &program,
            self.options.prepare_timeout,
            sink.as_ref(),
        )
        .await
    }

    async fn run_stage(
        &mut self,
        cmd: StageCommand<'_>,
        sink: &dyn OutputSink,
        cancel: CancellationToken,
    ) -> Result<StageExit, CustomError> {
        self.scripts += 1;
        let script_dir = self.dir()?.join(format!("script{}", self.scripts));
        std::fs::create_dir(&script_dir).map_err(|source| CustomError::File {
            action: "create",
            path: script_dir.clone(),
            source,
        })?;
        let script = script_dir.join("script");
        let result = async {
            write_private(&script, cmd.script.as_bytes(), 0o700)?;
            let stage = protocol_stage(cmd.stage);
            if stage != cmd.stage {
                sink.write(
                    OutputStream::Stdout,
                    warning_line(
                        "Starting with version 17.0 the 'build_script' stage will be replaced with \
                         'step_script': https://gitlab.com/groups/gitlab-org/-/epics/6112",
                    )
                    .as_bytes(),
                );
            }
            let script_arg = script.display().to_string();
            let stop = StopWhen {
                cancel: &cancel,
                deadline: cmd.deadline,
            };
            let program = self.options.run.clone();
            let exit = self
                .exec("run_exec", &program, &[&script_arg, stage], sink, stop)
                .await?;
            protocol_exit("run_exec", exit, &self.code_file())
        }
        .await;
        // The script holds the job's variables: it lives only as long as its stage.
        if let Err(error) = std::fs::remove_dir_all(&script_dir) {
            warn!(%error, dir = %script_dir.display(), "cannot remove a stage script");
        }
        result
    }

    async fn cleanup_exec(&mut self) {
        if self.configured && self.options.cleanup.is_set() && self.dir.is_some() {
            let capture = LogCapture::default();
            let never = CancellationToken::new();
            let timeout = self.options.cleanup_timeout;
            let stop = StopWhen {
                cancel: &never,
                deadline: Some(Instant::now() + timeout),
            };
            let program = self.options.cleanup.clone();
            let result = match self
                .exec("cleanup_exec", &program, &[], &capture, stop)
                .await
            {
                Ok(StageExit::TimedOut) => Err(CustomError::Timeout {
                    step: "cleanup_exec",
                    after: timeout,
                }),
                Ok(exit) => step_result("cleanup_exec", exit, &self.code_file()),
                Err(error) => Err(error),
            };
            let text = |buffer: Mutex<Vec<u8>>| {
                let bytes = buffer.into_inner().unwrap_or_else(PoisonError::into_inner);
                String::from_utf8_lossy(&bytes).trim_end().to_owned()
            };
            let (stdout, stderr) = (text(capture.stdout), text(capture.stderr));
            if !stdout.is_empty() {
                debug!(cleanup_std = "out", output = %stdout, "cleanup_exec output");
            }
            if !stderr.is_empty() {
                warn!(cleanup_std = "err", output = %stderr, "cleanup_exec output");
            }
            if let Err(error) = result {
                let message = error_chain(&error);
                warn!(error = %message, "custom executor cleanup failed");
                if let Some(sink) = &self.sink {
                    sink.write(
                        OutputStream::Stdout,
                        warning_line(&format!("Cleanup script failed: {message}")).as_bytes(),
                    );
                }
            }
        }
        self.configured = false;
        self.sink = None;
        if let Some(dir) = self.dir.take()
            && let Err(error) = dir.close()
        {
            warn!(%error, "cannot remove the custom executor's temporary directory");
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Writes a new file only its owner can read (`mode`).
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CustomError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|source| CustomError::File {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
}

impl Executor for CustomExecutor {
    fn name(&self) -> &str {
        CUSTOM_EXECUTOR_INFO.name
    }

    /// Empty: the banner names the driver, so [`Executor::configure`] writes it itself, after
    /// `config_exec` and before `prepare_exec`, as officially.
    fn banner(&self) -> String {
        String::new()
    }

    fn configure<'a>(
        &'a mut self,
        ctx: ConfigureContext<'a>,
    ) -> BoxFuture<'a, Result<PlanOverrides, ExecutorError>> {
        Box::pin(async move { self.start(ctx).await.map_err(ExecutorError::from) })
    }

    fn prepare<'a>(
        &'a mut self,
        _ctx: &'a PrepareContext<'a>,
    ) -> BoxFuture<'a, Result<(), ExecutorError>> {
        Box::pin(async move { self.prepare_exec().await.map_err(ExecutorError::from) })
    }

    fn run<'a>(
        &'a mut self,
        cmd: StageCommand<'a>,
        sink: &'a dyn OutputSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<StageExit, ExecutorError>> {
        Box::pin(async move {
            self.run_stage(cmd, sink, cancel)
                .await
                .map_err(ExecutorError::from)
        })
    }

    /// Runs `cleanup_exec` (never cancelled, bounded by `cleanup_exec_timeout`) and removes
    /// the temporary directory.
    fn cleanup(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.cleanup_exec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> CustomOptions {
        CustomOptions {
            configured: true,
            builds_dir_configured: true,
            cache_dir_configured: true,
            ..CustomOptions::default()
        }
    }

    #[test]
    fn config_output_becomes_plan_overrides() {
        let json = br#"{"driver":{"name":"lxd","version":"v1"},"hostname":"vm-1",
            "builds_dir":"/builds","cache_dir":"/cache","builds_dir_is_shared":true,
            "job_env":{"A":"b"},"shell":"sh"}"#;
        let output = parse_config_output(json).unwrap();
        let overrides = output.overrides(&options()).unwrap();
        assert_eq!(
            overrides,
            PlanOverrides {
                builds_dir: Some("/builds".to_owned()),
                cache_dir: Some("/cache".to_owned()),
                builds_dir_is_shared: Some(true),
                hostname: Some("vm-1".to_owned()),
                shell: Some(Shell::Sh),
            }
        );
        assert_eq!(
            startup_message(output.driver.as_ref()),
            "Using Custom executor with driver lxd v1..."
        );
    }

    #[test]
    fn config_output_errors_name_the_problem() {
        let cases: [&[u8]; 4] = [
            b"not json",
            br#"{"shell":"pwsh"}"#,
            br#"{"builds_dir":"relative"}"#,
            b"{}",
        ];
        let mut unconfigured = options();
        unconfigured.builds_dir_configured = false;
        let messages: Vec<String> = cases
            .iter()
            .map(
                |json| match parse_config_output(json).and_then(|o| o.overrides(&unconfigured)) {
                    Ok(o) => format!("ok {o:?}"),
                    Err(e) => error_chain(&e),
                },
            )
            .collect();
        insta::assert_snapshot!(messages.join("\n"), @r#"
        error while parsing JSON output of config_exec: expected ident at line 1 column 2
        config_exec asked for shell "pwsh", which Runnel does not support (supported: bash, sh)
        config_exec returned a relative builds_dir "relative"; it must be absolute
        the builds_dir is not configured: set builds_dir in [[runners]] or return it from config_exec
        "#);
        assert!(
            parse_config_output(b"  \n")
                .unwrap()
                .overrides(&options())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn startup_messages() {
        let driver = |name: Option<&str>, version: Option<&str>| DriverInfo {
            name: name.map(str::to_owned),
            version: version.map(str::to_owned),
        };
        assert_eq!(startup_message(None), "Using Custom executor...");
        assert_eq!(
            startup_message(Some(&driver(None, Some("1")))),
            "Using Custom executor..."
        );
        assert_eq!(
            startup_message(Some(&driver(Some("d"), None))),
            "Using Custom executor with driver d..."
        );
    }

    #[test]
    fn exit_codes_follow_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("code");
        let show = |exit| match protocol_exit("run_exec", exit, &file) {
            Ok(exit) => format!("{exit:?}"),
            Err(error) => error.to_string(),
        };
        let mut lines = vec![
            show(StageExit::Exited(0)),
            show(StageExit::Exited(1)),
            show(StageExit::Exited(2)),
            show(StageExit::Exited(3)),
            show(StageExit::Signaled(9)),
            show(StageExit::TimedOut),
        ];
        std::fs::write(&file, "42\n").unwrap();
        lines.push(show(StageExit::Exited(1)));
        std::fs::write(&file, "forty-two\n").unwrap();
        lines.push(show(StageExit::Exited(1)));
        insta::assert_snapshot!(lines.join("\n"), @r"
        Exited(0)
        Exited(1)
        run_exec failed: exit status 2
        unknown Custom executor executable exit code 3; executable execution terminated with: exit status 3 (run_exec)
        unknown Custom executor executable exit code 137; executable execution terminated with: signal 9 (run_exec)
        TimedOut
        Exited(42)
        unknown Custom executor executable exit code 2; executable execution terminated with: exit status 1 with an unreadable BUILD_EXIT_CODE_FILE (run_exec)
        ");
    }

    #[test]
    fn services_are_listed_as_officially() {
        let mut job = JobSpec::default();
        assert_eq!(job_services(&job), "");
        job.services.push(runnel_types::ImageSpec {
            name: "postgres:16".to_owned(),
            aliases: vec!["db".to_owned(), "pg".to_owned()],
            variables: vec![runnel_types::Variable::new("POSTGRES_DB", "app")],
            ..runnel_types::ImageSpec::default()
        });
        insta::assert_snapshot!(job_services(&job), @r#"[{"alias":"db","command":null,"entrypoint":null,"name":"postgres:16","variables":{"POSTGRES_DB":"app"}}]"#);
    }

    #[test]
    fn only_step_script_is_renamed() {
        assert_eq!(protocol_stage("step_script"), "build_script");
        assert_eq!(protocol_stage("step_release"), "step_release");
        assert_eq!(protocol_stage("after_script"), "after_script");
    }
}
