//! `[runners.custom]` resolved: programs, arguments and timeouts with the official defaults.

use std::time::Duration;

use runnel_config::{CustomConfig, RunnerConfig};

/// The official default of `config_exec_timeout`, `prepare_exec_timeout` and
/// `cleanup_exec_timeout`.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The official default of `graceful_kill_timeout` (`process.GracefulTimeout`).
pub const DEFAULT_GRACEFUL_KILL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The official default of `force_kill_timeout` (`process.KillTimeout`).
pub const DEFAULT_FORCE_KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// One driver program and its arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// The executable; empty means not configured.
    pub exec: String,
    /// Its arguments, before any the runner adds.
    pub args: Vec<String>,
}

impl Program {
    fn new(exec: Option<&String>, args: &[String]) -> Self {
        Program {
            exec: exec.cloned().unwrap_or_default(),
            args: args.to_vec(),
        }
    }

    /// Whether a program is configured.
    pub fn is_set(&self) -> bool {
        !self.exec.is_empty()
    }
}

/// The custom executor's settings for one `[[runners]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomOptions {
    /// Whether `[runners.custom]` exists at all.
    pub configured: bool,
    /// `config_exec`/`config_args`.
    pub config: Program,
    /// `prepare_exec`/`prepare_args`.
    pub prepare: Program,
    /// `run_exec`/`run_args`.
    pub run: Program,
    /// `cleanup_exec`/`cleanup_args`.
    pub cleanup: Program,
    /// `config_exec_timeout`.
    pub config_timeout: Duration,
    /// `prepare_exec_timeout`.
    pub prepare_timeout: Duration,
    /// `cleanup_exec_timeout`.
    pub cleanup_timeout: Duration,
    /// `graceful_kill_timeout`.
    pub graceful_kill: Duration,
    /// `force_kill_timeout`.
    pub force_kill: Duration,
    /// Whether `[[runners]] builds_dir` is set (otherwise `config_exec` must return one).
    pub builds_dir_configured: bool,
    /// Whether `[[runners]] cache_dir` is set.
    pub cache_dir_configured: bool,
}

/// A timeout in seconds, where a missing or zero value means the default (as officially).
fn seconds(value: Option<u64>, default: Duration) -> Duration {
    match value {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => default,
    }
}

impl CustomOptions {
    /// Reads `[runners.custom]` and the directories of a `[[runners]]` entry.
    pub fn from_runner(runner: &RunnerConfig) -> Self {
        let mut options = match &runner.custom {
            Some(section) => Self::from_section(section),
            None => CustomOptions::default(),
        };
        options.builds_dir_configured = runner.builds_dir.is_some();
        options.cache_dir_configured = runner.cache_dir.is_some();
        options
    }

    fn from_section(custom: &CustomConfig) -> Self {
        CustomOptions {
            configured: true,
            config: Program::new(custom.config_exec.as_ref(), &custom.config_args),
            prepare: Program::new(custom.prepare_exec.as_ref(), &custom.prepare_args),
            run: Program::new(custom.run_exec.as_ref(), &custom.run_args),
            cleanup: Program::new(custom.cleanup_exec.as_ref(), &custom.cleanup_args),
            config_timeout: seconds(custom.config_exec_timeout, DEFAULT_EXEC_TIMEOUT),
            prepare_timeout: seconds(custom.prepare_exec_timeout, DEFAULT_EXEC_TIMEOUT),
            cleanup_timeout: seconds(custom.cleanup_exec_timeout, DEFAULT_EXEC_TIMEOUT),
            graceful_kill: seconds(custom.graceful_kill_timeout, DEFAULT_GRACEFUL_KILL_TIMEOUT),
            force_kill: seconds(custom.force_kill_timeout, DEFAULT_FORCE_KILL_TIMEOUT),
            builds_dir_configured: false,
            cache_dir_configured: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_missing_timeouts_take_the_official_defaults() {
        let section = CustomConfig {
            config_exec: None,
            config_args: Vec::new(),
            config_exec_timeout: Some(0),
            prepare_exec: None,
            prepare_args: Vec::new(),
            prepare_exec_timeout: Some(7),
            run_exec: Some("/bin/run".to_owned()),
            run_args: vec!["--flag".to_owned()],
            cleanup_exec: None,
            cleanup_args: Vec::new(),
            cleanup_exec_timeout: None,
            graceful_kill_timeout: Some(3),
            force_kill_timeout: None,
        };
        let options = CustomOptions::from_section(&section);
        assert_eq!(options.config_timeout, DEFAULT_EXEC_TIMEOUT);
        assert_eq!(options.prepare_timeout, Duration::from_secs(7));
        assert_eq!(options.cleanup_timeout, DEFAULT_EXEC_TIMEOUT);
        assert_eq!(options.graceful_kill, Duration::from_secs(3));
        assert_eq!(options.force_kill, DEFAULT_FORCE_KILL_TIMEOUT);
        assert_eq!(options.run.args, ["--flag"]);
        assert!(options.run.is_set() && !options.config.is_set());
    }
}
