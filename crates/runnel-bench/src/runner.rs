//! Starts and stops a real `runnel run` process against a fake coordinator.
//!
//! [`RunnerProcess::start`] writes a config.toml (one shell-executor runner with a fresh `glrt-`
//! token from the fake, builds and cache dirs under the scenario's temp dir), starts
//! `runnel run -c …` with its daemon log in `runner.log` next to the config, and
//! [`RunnerProcess::stop`] ends it with a signal, escalating to SIGKILL after a timeout. It does
//! not interpret the runner's log; errors only quote its tail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runnel_fake_gitlab::FakeGitlab;
use tokio::process::{Child, Command};

use crate::error::BenchError;

/// How long a stopping runner may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The global and runner settings a scenario varies.
#[derive(Clone, Copy, Debug)]
pub struct RunnerSettings {
    /// `concurrent`.
    pub concurrent: u32,
    /// `check_interval`, seconds.
    pub check_interval_secs: u32,
    /// `output_limit`, KiB (the official default is 4096).
    pub output_limit_kib: u32,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            concurrent: 1,
            check_interval_secs: 3,
            output_limit_kib: 4096,
        }
    }
}

/// How to stop the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGQUIT: stop polling, let running jobs finish.
    Graceful,
    /// SIGTERM: cancel running jobs, report them, exit.
    Force,
}

/// A running `runnel run` process. Dropping it kills the process.
#[derive(Debug)]
pub struct RunnerProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl RunnerProcess {
    /// Writes `dir/config.toml` for `fake` and starts `runnel run` on it.
    pub async fn start(
        runnel: &Path,
        fake: &FakeGitlab,
        settings: RunnerSettings,
        dir: &Path,
    ) -> Result<Self, BenchError> {
        let text = config_toml(fake.url(), &fake.create_runner_token(), settings, dir);
        Self::start_with_config(runnel, &text, dir).await
    }

    /// Writes `text` as `dir/config.toml` and starts `runnel run` on it (for scenarios that
    /// need another executor than the shell one).
    pub async fn start_with_config(
        runnel: &Path,
        text: &str,
        dir: &Path,
    ) -> Result<Self, BenchError> {
        let config = dir.join("config.toml");
        write_private(&config, text)?;
        let mut command = Command::new(runnel);
        command
            .arg("--log-level")
            .arg(log_level())
            .arg("run")
            .arg("-c")
            .arg(&config);
        let runner = Self::spawn(command, runnel, dir)?;
        tracing::debug!(pid = runner.pid, config = %config.display(), "runner started");
        Ok(runner)
    }

    /// Starts `command` (whose program is `program`) in `dir` with `HOME=dir`, no stdin,
    /// stdout discarded and stderr in `dir/runner.log`: how every runner, Runnel or peer, runs.
    pub fn spawn(mut command: Command, program: &Path, dir: &Path) -> Result<Self, BenchError> {
        let log = dir.join("runner.log");
        let log_file = std::fs::File::create(&log).map_err(|source| BenchError::Io {
            doing: "create runner log",
            path: log.clone(),
            source,
        })?;
        command
            .current_dir(dir)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| BenchError::Spawn {
            path: program.to_owned(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| BenchError::RunnerExited {
            status: "exited before its pid was read".to_owned(),
            log_tail: String::new(),
        })?;
        Ok(Self { child, pid, log })
    }

    /// The runner's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails with the log tail when the runner has already exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::RunnerExited {
                status: status.to_string(),
                log_tail: self.log_tail(),
            }),
            Err(error) => Err(BenchError::RunnerExited {
                status: format!("unknown ({error})"),
                log_tail: self.log_tail(),
            }),
        }
    }

    /// The last lines of the runner's daemon log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Sends the stop signal and waits for the exit; kills the runner after a timeout.
    pub async fn stop(self, how: Stop) {
        self.signal(how);
        self.wait().await;
    }

    /// Sends the stop signal.
    pub fn signal(&self, how: Stop) {
        let signal = match how {
            Stop::Graceful => Signal::SIGQUIT,
            Stop::Force => Signal::SIGTERM,
        };
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        if let Err(error) = kill(pid, signal) {
            tracing::warn!(pid = self.pid, %error, "cannot signal the runner");
        }
    }

    /// Waits for the exit after [`Self::signal`]; kills the runner after a timeout.
    pub async fn wait(mut self) {
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => tracing::debug!(pid = self.pid, %status, "runner stopped"),
            Ok(Err(error)) => tracing::warn!(pid = self.pid, %error, "cannot wait for the runner"),
            Err(_) => {
                tracing::warn!(pid = self.pid, "runner did not stop in time; killing it");
                if let Err(error) = self.child.kill().await {
                    tracing::warn!(pid = self.pid, %error, "cannot kill the runner");
                }
            }
        }
    }
}

/// The runner's daemon log level: `RUNNEL_BENCH_RUNNER_LOG_LEVEL`, else `warning`.
fn log_level() -> String {
    std::env::var("RUNNEL_BENCH_RUNNER_LOG_LEVEL").unwrap_or_else(|_| "warning".to_owned())
}

/// The config.toml text for one shell runner. The token is the fake's: it only works locally.
fn config_toml(url: &str, token: &str, settings: RunnerSettings, dir: &Path) -> String {
    let RunnerSettings {
        concurrent,
        check_interval_secs,
        output_limit_kib,
    } = settings;
    let builds = dir.join("builds");
    let cache = dir.join("cache");
    format!(
        "concurrent = {concurrent}\n\
         check_interval = {check_interval_secs}\n\
         shutdown_timeout = 30\n\
         \n\
         [[runners]]\n\
         \x20 name = \"bench\"\n\
         \x20 url = \"{url}\"\n\
         \x20 token = \"{token}\"\n\
         \x20 executor = \"shell\"\n\
         \x20 shell = \"bash\"\n\
         \x20 builds_dir = \"{}\"\n\
         \x20 cache_dir = \"{}\"\n\
         \x20 output_limit = {output_limit_kib}\n",
        builds.display(),
        cache.display(),
    )
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), BenchError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| BenchError::Io {
        doing: "write config",
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_shape() {
        let settings = RunnerSettings {
            concurrent: 16,
            check_interval_secs: 1,
            output_limit_kib: 409_600,
        };
        let text = config_toml(
            "http://127.0.0.1:4321",
            "glrt-TOKEN",
            settings,
            Path::new("/tmp/scenario"),
        );
        insta::assert_snapshot!(text);
    }
}
