//! What can go wrong with the SSH executor, worded for the job log.

use std::io;
use std::path::PathBuf;

use runnel_executor::ExecutorError;
use runnel_types::FailureReason;

/// Why the SSH executor could not connect or run a stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// `executor = "ssh"` without a `[runners.ssh]` section.
    #[error("missing SSH configuration: config.toml has no [runners.ssh] section")]
    NotConfigured,

    /// `port` is not a TCP port number.
    #[error("invalid [runners.ssh] port {port:?}: expected a number from 1 to 65535")]
    InvalidPort {
        /// The configured value.
        port: String,
    },

    /// The identity file could not be read or parsed.
    #[error("cannot load the SSH identity_file {}", path.display())]
    IdentityFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: russh::keys::Error,
    },

    /// There is no home directory to find `~/.ssh/known_hosts` in.
    #[error("cannot find ~/.ssh/known_hosts: no home directory; set known_hosts_file")]
    NoHome,

    /// The host key is not in the known_hosts file.
    #[error(
        "host key verification failed: the {algorithm} key {fingerprint} of {address} is not in {}; add it, or set disable_strict_host_key_checking",
        file.display()
    )]
    UnknownHostKey {
        /// `[host]:port`.
        address: String,
        /// The key type.
        algorithm: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// The known_hosts file.
        file: PathBuf,
    },

    /// The host key differs from the one recorded.
    #[error(
        "host key verification failed: the {algorithm} key {fingerprint} of {address} does not match the key for it on line {line} of {} (possible man-in-the-middle attack, or the host was reinstalled)",
        file.display()
    )]
    HostKeyMismatch {
        /// `[host]:port`.
        address: String,
        /// The key type.
        algorithm: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// The known_hosts file.
        file: PathBuf,
        /// The line of the recorded key.
        line: usize,
    },

    /// The known_hosts file exists but cannot be read.
    #[error("cannot read the known_hosts file {}", file.display())]
    KnownHosts {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: russh::keys::Error,
    },

    /// No TCP connection (after every attempt).
    #[error("cannot connect to {address} (tried {attempts} times)")]
    Connect {
        /// `host:port`.
        address: String,
        /// Attempts made.
        attempts: u32,
        /// The last cause.
        #[source]
        source: io::Error,
    },

    /// The SSH handshake or a request failed.
    #[error("SSH {operation} with {address} failed")]
    Protocol {
        /// What was being done.
        operation: &'static str,
        /// `host:port`.
        address: String,
        /// The cause.
        #[source]
        source: russh::Error,
    },

    /// The server refused every configured credential.
    #[error("SSH authentication of {user}@{address} failed (tried: {methods})")]
    Authentication {
        /// The user.
        user: String,
        /// `host:port`.
        address: String,
        /// The methods tried.
        methods: String,
    },

    /// The connection ended while a stage ran.
    #[error("the SSH connection to {address} closed while {stage} ran, without an exit status")]
    Lost {
        /// `host:port`.
        address: String,
        /// The stage.
        stage: String,
    },

    /// The job was cancelled while connecting.
    #[error("connecting to {address} was stopped: the job was cancelled")]
    Cancelled {
        /// `host:port`.
        address: String,
    },

    /// A stage was run before the executor connected.
    #[error("the SSH executor ran a stage before connecting")]
    NotConnected,

    /// The remote home directory could not be found (for relative builds_dir/cache_dir).
    #[error("cannot find the home directory of {user} on {address}: {detail}")]
    RemoteHome {
        /// The user.
        user: String,
        /// `host:port`.
        address: String,
        /// What happened.
        detail: String,
    },
}

impl SshError {
    fn reason(&self) -> Option<FailureReason> {
        match self {
            SshError::NotConfigured | SshError::InvalidPort { .. } => {
                Some(FailureReason::RunnerConfigurationError)
            }
            _ => None,
        }
    }
}

impl From<SshError> for ExecutorError {
    fn from(error: SshError) -> Self {
        ExecutorError::Backend {
            executor: "ssh",
            reason: error.reason(),
            source: Box::new(error),
        }
    }
}
