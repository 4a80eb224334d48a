//! Install and control Runnel as an operating-system service, the way `gitlab-runner install`,
//! `uninstall`, `start`, `stop`, `restart` and `status` do.
//!
//! Four service managers are supported, each behind the same [`Service`] operations:
//!
//! | manager | definition written | commands issued |
//! |---|---|---|
//! | systemd (system) | `/etc/systemd/system/<name>.service` | `systemctl daemon-reload/enable/disable --now/start/stop/restart/is-active` |
//! | systemd (user, `--user-service`) | `$XDG_CONFIG_HOME/systemd/user/<name>.service` | the same with `systemctl --user` |
//! | OpenRC | `/etc/init.d/<name>` (`openrc-run`, `supervise-daemon`) | `rc-update add/del`, `rc-service` |
//! | SysV init | `/etc/init.d/<name>` (self-contained POSIX `sh`) | `update-rc.d` or `chkconfig`, `service` |
//! | launchd | `/Library/LaunchDaemons/<name>.plist` (root) or `~/Library/LaunchAgents/<name>.plist` | `launchctl load/unload/kill/list` |
//!
//! Every definition makes the daemon start after the network, restart whenever it exits, and
//! stop *gracefully*: SIGQUIT first, so running jobs can finish, then SIGTERM (jobs are aborted
//! and reported) once [`ServiceSpec::stop_timeout`] has passed. The official runner stops with
//! SIGTERM, which kills running jobs on every `systemctl stop` and every reboot.
//!
//! The unit and script texts are generated here (pure functions, snapshot-tested) rather than by
//! a generic crate such as `service-manager`: it has no SysV backend, cannot express the stop
//! signal ladder without replacing its templates wholesale, and writes to fixed system paths,
//! which would make the behaviour untestable without root.
//!
//! # Test hooks
//!
//! [`Host::from_env`] reads three variables that exist for tests (documented in
//! [`ROOT_ENV`], [`UID_ENV`], [`MANAGER_ENV`]): a root directory that every system path is
//! moved under, a fake effective user id, and a forced manager kind. The manager tools
//! (`systemctl`, …) are looked up on `PATH`, so tests put recording fakes first on it.
//!
//! This crate does not start the daemon itself, does not edit config.toml and does not support
//! Windows services yet ([`ServiceError::WindowsUnsupported`]).

mod exec;
mod host;
mod launchd;
mod openrc;
mod quote;
mod service;
mod systemd;
mod sysv;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use host::{Host, MANAGER_ENV, ROOT_ENV, UID_ENV};
pub use service::Service;

/// The service managers Runnel can install itself into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerKind {
    /// systemd units (system or per-user).
    Systemd,
    /// OpenRC init scripts run by `supervise-daemon`.
    OpenRc,
    /// Classic SysV init scripts in `/etc/init.d`.
    SysV,
    /// macOS launchd daemons (root) and agents (users).
    Launchd,
}

impl ManagerKind {
    /// The name used in messages and accepted by [`MANAGER_ENV`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::OpenRc => "openrc",
            Self::SysV => "sysv",
            Self::Launchd => "launchd",
        }
    }

    /// Parses a name as written by [`Self::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "systemd" => Some(Self::Systemd),
            "openrc" => Some(Self::OpenRc),
            "sysv" | "sysvinit" | "systemv" => Some(Self::SysV),
            "launchd" => Some(Self::Launchd),
            _ => None,
        }
    }
}

impl fmt::Display for ManagerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the service belongs to the whole system or to the invoking user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A system service: managing it needs root.
    System,
    /// A per-user service (systemd `--user`, launchd agent).
    User,
}

/// What `status` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The daemon is running.
    Running,
    /// Installed but not running (stopped, failed, or waiting to be restarted).
    Stopped,
}

/// The operations, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Write the definition and enable it at boot.
    Install,
    /// Stop, disable and remove the definition.
    Uninstall,
    /// Start the daemon.
    Start,
    /// Stop the daemon (gracefully first).
    Stop,
    /// Stop, then start.
    Restart,
    /// Ask whether it runs.
    Status,
}

impl Operation {
    /// Whether a system-scope service needs root for this operation.
    pub fn needs_root(self) -> bool {
        !matches!(self, Self::Status)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Install => "install",
            Self::Uninstall => "uninstall",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Status => "query the status of",
        })
    }
}

/// How the daemon is run: what goes into the unit or script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// A human description (`Description=` and friends).
    pub description: String,
    /// The absolute path of the program to run.
    pub program: PathBuf,
    /// Its arguments, e.g. `["run", "--config", "/etc/gitlab-runner/config.toml", …]`.
    pub arguments: Vec<String>,
    /// The account the service manager runs the daemon as (`--init-user`); root when `None`.
    pub init_user: Option<String>,
    /// How long SIGQUIT may take (jobs finishing) before SIGTERM is sent.
    pub stop_timeout: Duration,
}

/// The graceful stop timeout used when none is given: two hours, long enough for most jobs.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// How long the daemon gets after SIGTERM (aborting jobs and reporting them) before it is killed,
/// where the manager lets us say so.
pub const FORCEFUL_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds between the daemon exiting and the manager starting it again.
pub const RESTART_DELAY: Duration = Duration::from_secs(5);

/// Everything that can go wrong installing or controlling the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Windows has no backend yet.
    #[error(
        "windows services are not supported yet: run `runnel run` under a service wrapper instead"
    )]
    WindowsUnsupported,
    /// None of the known managers was found.
    #[error(
        "no supported service manager found: looked for systemd ({root}run/systemd/system), \
         OpenRC ({root}run/openrc, {root}sbin/openrc-run) and SysV init ({root}etc/init.d)"
    )]
    NoServiceManager {
        /// The root directory searched (`/` outside tests).
        root: String,
    },
    /// [`MANAGER_ENV`] names no known manager.
    #[error(
        "unknown service manager {value:?} in {MANAGER_ENV}: expected systemd, openrc, sysv or launchd"
    )]
    UnknownManager {
        /// What the variable said.
        value: String,
    },
    /// [`UID_ENV`] is not a number.
    #[error("invalid {UID_ENV} {value:?}: expected a numeric user id")]
    InvalidUid {
        /// What the variable said.
        value: String,
    },
    /// The service name cannot be used as a file name and unit name.
    #[error(
        "invalid service name {name:?}: use letters, digits, '.', '_', '-' and '@', \
         not starting with '.' or '-'"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// `--user-service` on a manager without per-user services.
    #[error("--user-service needs systemd, but this system's service manager is {kind}")]
    UserServiceUnsupported {
        /// The detected manager.
        kind: ManagerKind,
    },
    /// A system service needs root for this operation.
    #[error(
        "cannot {operation} the {kind} service {name:?}: managing system services needs root \
         privileges (run it with sudo{hint})"
    )]
    NeedsRoot {
        /// What was attempted.
        operation: Operation,
        /// The manager.
        kind: ManagerKind,
        /// The service name.
        name: String,
        /// Extra advice, empty or starting with ", ".
        hint: &'static str,
    },
    /// A per-user service needs a home directory.
    #[error("cannot locate the {kind} user service: HOME is not set")]
    NoHome {
        /// The manager.
        kind: ManagerKind,
    },
    /// `install` found a definition already there.
    #[error("service {name:?} is already installed: {path} exists (run `runnel uninstall` first)")]
    AlreadyInstalled {
        /// The service name.
        name: String,
        /// The existing definition.
        path: PathBuf,
    },
    /// The operation needs an installed service.
    #[error("cannot {operation} service {name:?}: it is not installed ({path} does not exist)")]
    NotInstalled {
        /// What was attempted.
        operation: Operation,
        /// The service name.
        name: String,
        /// Where the definition would be.
        path: PathBuf,
    },
    /// A manager tool is not on `PATH`.
    #[error("cannot {operation} the {kind} service {name:?}: `{tool}` was not found on PATH")]
    ToolMissing {
        /// What was attempted.
        operation: Operation,
        /// The manager.
        kind: ManagerKind,
        /// The service name.
        name: String,
        /// The missing program.
        tool: &'static str,
    },
    /// A manager tool could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A manager tool ran and failed.
    #[error("`{command}` failed with {status}{stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, as `: <text>`, or empty.
        stderr: String,
    },
    /// Reading, writing or removing a definition failed (the source names the path).
    #[error("cannot {action} the service definition")]
    File {
        /// What was being done: "write", "remove", …
        action: &'static str,
        /// The error, with the path.
        #[source]
        source: std::io::Error,
    },
}
