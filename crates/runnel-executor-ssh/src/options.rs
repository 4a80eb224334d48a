//! `[runners.ssh]` resolved, with the official defaults.

use std::path::PathBuf;
use std::time::Duration;

use runnel_config::RunnerConfig;
use runnel_executor::Shell;
use runnel_types::Secret;

use crate::SshError;

/// Where and how the SSH executor connects, and what it runs there.
#[derive(Clone, Debug, PartialEq)]
pub struct SshOptions {
    /// `host` (default `localhost`).
    pub host: String,
    /// `port` (default 22).
    pub port: u16,
    /// `user` (default `root`).
    pub user: String,
    /// `password`, tried after the key.
    pub password: Option<Secret>,
    /// `identity_file`: a private key (OpenSSH or PEM format, without passphrase).
    pub identity_file: Option<PathBuf>,
    /// `known_hosts_file` (default `~/.ssh/known_hosts`).
    pub known_hosts_file: Option<PathBuf>,
    /// `disable_strict_host_key_checking`: accept any host key.
    pub accept_any_host_key: bool,
    /// The shell the stages run in.
    pub shell: Shell,
    /// `[[runners]] builds_dir`; relative (or unset: `builds`) means under the remote home.
    pub builds_dir: Option<String>,
    /// `[[runners]] cache_dir`; relative (or unset: `cache`) means under the remote home.
    pub cache_dir: Option<String>,
    /// Connection attempts before giving up (official: 3).
    pub connect_attempts: u32,
    /// Pause between attempts (official: 3 s).
    pub retry_interval: Duration,
    /// After `SIGTERM` to a stopped stage, how long before `SIGKILL`.
    pub grace: Duration,
}

impl SshOptions {
    /// Reads `[runners.ssh]` of a `[[runners]]` entry.
    pub fn from_runner(runner: &RunnerConfig, shell: Shell) -> Result<Self, SshError> {
        let ssh = runner.ssh.as_ref().ok_or(SshError::NotConfigured)?;
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let port = match non_empty(&ssh.port) {
            None => 22,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(SshError::InvalidPort { port })?,
        };
        Ok(SshOptions {
            host: non_empty(&ssh.host).unwrap_or_else(|| "localhost".to_owned()),
            port,
            user: non_empty(&ssh.user).unwrap_or_else(|| "root".to_owned()),
            password: ssh.password.clone(),
            identity_file: non_empty(&ssh.identity_file).map(PathBuf::from),
            known_hosts_file: non_empty(&ssh.known_hosts_file).map(PathBuf::from),
            accept_any_host_key: ssh.disable_strict_host_key_checking == Some(true),
            shell,
            builds_dir: runner.builds_dir.clone(),
            cache_dir: runner.cache_dir.clone(),
            connect_attempts: 3,
            retry_interval: Duration::from_secs(3),
            grace: Duration::from_secs(10),
        })
    }

    /// `host:port` as known_hosts writes it (`[host]:port` unless the port is 22).
    pub fn address(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}
