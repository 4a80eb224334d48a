//! The provider and the executor: one SSH connection per job, one channel per stage.

use std::sync::Arc;

use runnel_executor::process::StopWhen;
use runnel_executor::{
    BoxFuture, ConfigureContext, Executor, ExecutorError, ExecutorFeatures, ExecutorInfo,
    OutputSink, OutputStream, PlanOverrides, PrepareContext, Provider, Shell, StageCommand,
    StageExit,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client::{Connection, stage_command};
use crate::{SshError, SshOptions};

/// The runner binary the helper stages call on the SSH host (on its `PATH`).
pub const REMOTE_RUNNER_COMMAND: &str = "runnel";

/// What the SSH executor reports (the official feature set: variables, shared builds dirs)
/// and defaults to.
pub const SSH_EXECUTOR_INFO: ExecutorInfo = ExecutorInfo {
    name: "ssh",
    features: ExecutorFeatures {
        variables: true,
        shared: true,
        image: false,
        services: false,
        session: false,
        terminal: false,
        proxy: false,
        service_variables: false,
        service_multiple_aliases: false,
        image_executor_opts: false,
        service_executor_opts: false,
        native_steps_integration: false,
    },
    default_shell: Shell::Bash,
    default_builds_dir: "builds",
    default_cache_dir: "cache",
    shared_builds_dir: true,
};

/// Creates [`SshExecutor`]s for one `[[runners]]` entry.
#[derive(Debug)]
pub struct SshProvider {
    options: Result<Arc<SshOptions>, Arc<SshError>>,
}

impl SshProvider {
    /// A provider for `options`.
    pub fn new(options: SshOptions) -> Self {
        SshProvider {
            options: Ok(Arc::new(options)),
        }
    }

    /// A provider for a `[[runners]]` entry. A missing `[runners.ssh]` or a bad port fails each
    /// job with a configuration error, as officially.
    pub fn from_runner(
        runner: &runnel_config::RunnerConfig,
        shell: Shell,
    ) -> Result<Self, SshError> {
        Ok(SshProvider {
            options: SshOptions::from_runner(runner, shell)
                .map(Arc::new)
                .map_err(Arc::new),
        })
    }
}

impl Provider for SshProvider {
    fn info(&self) -> &ExecutorInfo {
        &SSH_EXECUTOR_INFO
    }

    fn create(&self) -> Result<Box<dyn Executor>, ExecutorError> {
        let options = match &self.options {
            Ok(options) => Arc::clone(options),
            Err(error) => {
                // Errors are not Clone; say the same again.
                let again = match error.as_ref() {
                    SshError::InvalidPort { port } => SshError::InvalidPort { port: port.clone() },
                    _ => SshError::NotConfigured,
                };
                return Err(again.into());
            }
        };
        Ok(Box::new(SshExecutor {
            options,
            connection: None,
        }))
    }
}

/// Runs one job's stages on the SSH host; made by [`SshProvider`].
#[derive(Debug)]
pub struct SshExecutor {
    options: Arc<SshOptions>,
    connection: Option<Connection>,
}

impl SshExecutor {
    async fn connect(&mut self, ctx: ConfigureContext<'_>) -> Result<PlanOverrides, SshError> {
        ctx.sink
            .write(OutputStream::Stdout, b"Using SSH executor...\n");
        debug!(
            address = self.options.address(),
            "connecting to the SSH host"
        );
        let connection = Connection::open(&self.options, &ctx.cancel).await?;
        let connection = self.connection.insert(connection);
        // Relative directories are relative to the login directory, as officially; the
        // planner wants them absolute.
        let relative = |dir: &Option<String>| dir.as_deref().is_none_or(|d| !d.starts_with('/'));
        let mut overrides = PlanOverrides::default();
        if relative(&self.options.builds_dir) || relative(&self.options.cache_dir) {
            let home = remote_home(connection, &self.options).await?;
            let under_home = |dir: &Option<String>, default: &str| {
                let dir = dir.as_deref().unwrap_or(default);
                let dir = dir.trim_start_matches("./");
                format!("{}/{dir}", home.trim_end_matches('/'))
            };
            if relative(&self.options.builds_dir) {
                overrides.builds_dir = Some(under_home(&self.options.builds_dir, "builds"));
            }
            if relative(&self.options.cache_dir) {
                overrides.cache_dir = Some(under_home(&self.options.cache_dir, "cache"));
            }
        }
        Ok(overrides)
    }

    async fn run_stage(
        &mut self,
        cmd: StageCommand<'_>,
        sink: &dyn OutputSink,
        cancel: CancellationToken,
    ) -> Result<StageExit, SshError> {
        let connection = self.connection.as_ref().ok_or(SshError::NotConnected)?;
        let command = stage_command(self.options.shell.as_str());
        let stop = StopWhen {
            cancel: &cancel,
            deadline: cmd.deadline,
        };
        connection
            .run(
                cmd.stage,
                &command,
                cmd.script.as_bytes(),
                sink,
                stop,
                self.options.grace,
            )
            .await
    }

    async fn disconnect(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.close().await;
        }
    }
}

/// The login directory of the SSH user.
async fn remote_home(connection: &Connection, options: &SshOptions) -> Result<String, SshError> {
    let failed = |detail: String| SshError::RemoteHome {
        user: options.user.clone(),
        address: options.address(),
        detail,
    };
    let (status, stdout) = connection.capture("pwd").await?;
    let home = String::from_utf8_lossy(&stdout).trim().to_owned();
    match status {
        Some(0) if home.starts_with('/') => Ok(home),
        Some(0) => Err(failed(format!("`pwd` printed {home:?}"))),
        Some(code) => Err(failed(format!("`pwd` exited with status {code}"))),
        None => Err(failed("`pwd` ended without an exit status".to_owned())),
    }
}

impl Executor for SshExecutor {
    fn name(&self) -> &str {
        SSH_EXECUTOR_INFO.name
    }

    /// Empty: [`Executor::configure`] writes `Using SSH executor...` before connecting, as
    /// officially.
    fn banner(&self) -> String {
        String::new()
    }

    fn configure<'a>(
        &'a mut self,
        ctx: ConfigureContext<'a>,
    ) -> BoxFuture<'a, Result<PlanOverrides, ExecutorError>> {
        Box::pin(async move { self.connect(ctx).await.map_err(ExecutorError::from) })
    }

    fn prepare<'a>(
        &'a mut self,
        _ctx: &'a PrepareContext<'a>,
    ) -> BoxFuture<'a, Result<(), ExecutorError>> {
        Box::pin(async move {
            if self.connection.is_none() {
                return Err(SshError::NotConnected.into());
            }
            Ok(())
        })
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

    fn cleanup(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.disconnect())
    }
}
