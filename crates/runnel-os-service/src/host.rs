//! Facts about the machine the service is installed on: where system paths are, who is running,
//! which service manager is in charge, and where its tools are.
//!
//! Detection only looks at well-known marker paths (`/run/systemd/system`, `/run/openrc`,
//! `/etc/init.d`); it never asks a manager anything. It does not decide privileges beyond
//! "effective uid is 0".

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{ManagerKind, Scope, ServiceError};

/// Test-only: a directory every system path (`/etc/systemd/system`, `/etc/init.d`, pid and log
/// files, the user's home) is moved under, so tests never touch the real system. Unset (or `/`)
/// in real use.
pub const ROOT_ENV: &str = "RUNNEL_SERVICE_ROOT";

/// Test-only: the effective user id to assume instead of the real one. Honoured only together
/// with [`ROOT_ENV`], so it cannot change what happens on a real system.
pub const UID_ENV: &str = "RUNNEL_SERVICE_UID";

/// The service manager to use instead of the detected one: `systemd`, `openrc`, `sysv` or
/// `launchd`. Meant for tests and for machines whose markers mislead detection.
pub const MANAGER_ENV: &str = "RUNNEL_SERVICE_MANAGER";

/// The machine as the service commands see it.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    euid: u32,
    home: Option<PathBuf>,
    config_home: Option<PathBuf>,
    path: Option<OsString>,
    manager: Option<ManagerKind>,
}

impl Host {
    /// A host rooted at `root` (use `/` for the real system) with this effective user id and no
    /// home directory, manager override or `PATH`.
    pub fn new(root: impl Into<PathBuf>, euid: u32) -> Self {
        Self {
            root: root.into(),
            euid,
            home: None,
            config_home: None,
            path: None,
            manager: None,
        }
    }

    /// The running process's host: `/` (or [`ROOT_ENV`]), the effective uid (or [`UID_ENV`]
    /// under [`ROOT_ENV`]), `HOME`, `XDG_CONFIG_HOME`, `PATH` and [`MANAGER_ENV`].
    pub fn from_env() -> Result<Self, ServiceError> {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let root = var(ROOT_ENV).map(PathBuf::from);
        let euid = match (&root, var(UID_ENV)) {
            (Some(_), Some(value)) => {
                let value = value.to_string_lossy().into_owned();
                value
                    .trim()
                    .parse()
                    .map_err(|_| ServiceError::InvalidUid { value })?
            }
            _ => effective_uid(),
        };
        let manager = match var(MANAGER_ENV) {
            Some(value) => {
                let value = value.to_string_lossy().into_owned();
                Some(ManagerKind::from_name(&value).ok_or(ServiceError::UnknownManager { value })?)
            }
            None => None,
        };
        let mut host = Self::new(root.unwrap_or_else(|| PathBuf::from("/")), euid);
        host.home = var("HOME").map(PathBuf::from);
        host.config_home = var("XDG_CONFIG_HOME").map(PathBuf::from);
        host.path = var("PATH");
        host.manager = manager;
        Ok(host)
    }

    /// Sets the user's home directory (as seen inside the root).
    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Sets the `PATH` searched for manager tools.
    pub fn with_path(mut self, path: impl Into<OsString>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Forces a manager kind instead of detecting one.
    pub fn with_manager(mut self, kind: ManagerKind) -> Self {
        self.manager = Some(kind);
        self
    }

    /// Whether the (possibly assumed) effective user is root.
    pub fn is_root(&self) -> bool {
        self.euid == 0
    }

    /// The (possibly assumed) effective user id.
    pub fn euid(&self) -> u32 {
        self.euid
    }

    /// The user's home directory, as the daemon will see it (not moved under the root).
    pub fn home(&self) -> Option<&Path> {
        self.home.as_deref()
    }

    /// Where the absolute system path `path` really is: under the root directory.
    pub fn system_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/") {
            Ok(relative) => self.root.join(relative),
            Err(_) => self.root.join(path),
        }
    }

    /// The user's systemd unit directory: `$XDG_CONFIG_HOME/systemd/user` or
    /// `~/.config/systemd/user`, moved under the root.
    pub(crate) fn user_config_dir(&self) -> Option<PathBuf> {
        let base = match (&self.config_home, &self.home) {
            (Some(config), _) => config.clone(),
            (None, Some(home)) => home.join(".config"),
            (None, None) => return None,
        };
        Some(self.system_path(&base))
    }

    /// The user's home, moved under the root.
    pub(crate) fn user_home_dir(&self) -> Option<PathBuf> {
        self.home.as_deref().map(|home| self.system_path(home))
    }

    /// The manager in charge: the override, launchd on macOS, else the first marker found.
    pub fn detect(&self) -> Result<ManagerKind, ServiceError> {
        if let Some(kind) = self.manager {
            return Ok(kind);
        }
        if cfg!(windows) {
            return Err(ServiceError::WindowsUnsupported);
        }
        if cfg!(target_os = "macos") {
            return Ok(ManagerKind::Launchd);
        }
        let is_dir = |path: &str| self.system_path(Path::new(path)).is_dir();
        let exists = |path: &str| self.system_path(Path::new(path)).exists();
        if is_dir("/run/systemd/system") {
            Ok(ManagerKind::Systemd)
        } else if is_dir("/run/openrc") || exists("/sbin/openrc-run") {
            Ok(ManagerKind::OpenRc)
        } else if is_dir("/etc/init.d") {
            Ok(ManagerKind::SysV)
        } else {
            let mut root = self.root.display().to_string();
            if !root.ends_with('/') {
                root.push('/');
            }
            Err(ServiceError::NoServiceManager { root })
        }
    }

    /// The scope a service of `kind` gets: systemd honours `user_service`, launchd follows the
    /// user (daemon for root, agent otherwise), the others are system-only.
    pub fn scope(&self, kind: ManagerKind, user_service: bool) -> Result<Scope, ServiceError> {
        match kind {
            ManagerKind::Systemd if user_service => Ok(Scope::User),
            ManagerKind::Systemd => Ok(Scope::System),
            ManagerKind::Launchd if self.is_root() => Ok(Scope::System),
            ManagerKind::Launchd => Ok(Scope::User),
            ManagerKind::OpenRc | ManagerKind::SysV if user_service => {
                Err(ServiceError::UserServiceUnsupported { kind })
            }
            ManagerKind::OpenRc | ManagerKind::SysV => Ok(Scope::System),
        }
    }

    /// Finds an executable on `PATH`.
    pub(crate) fn find_tool(&self, name: &str) -> Option<PathBuf> {
        let path = self.path.as_ref()?;
        std::env::split_paths(path)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs_err::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(not(unix))]
fn effective_uid() -> u32 {
    // No uid on Windows; nothing there reaches a privilege check.
    u32::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_follows_markers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), 0);
        let error = host.detect().unwrap_err().to_string();
        assert!(
            error.contains("no supported service manager found"),
            "{error}"
        );
        assert!(error.contains("etc/init.d"), "{error}");

        fs_err::create_dir_all(dir.path().join("etc/init.d")).unwrap();
        assert_eq!(host.detect().unwrap(), ManagerKind::SysV);
        fs_err::create_dir_all(dir.path().join("run/openrc")).unwrap();
        assert_eq!(host.detect().unwrap(), ManagerKind::OpenRc);
        fs_err::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
        assert_eq!(host.detect().unwrap(), ManagerKind::Systemd);
        let forced = host.clone().with_manager(ManagerKind::Launchd);
        assert_eq!(forced.detect().unwrap(), ManagerKind::Launchd);
    }

    #[test]
    fn scopes() {
        let root = Host::new("/", 0);
        let user = Host::new("/", 1000);
        assert_eq!(
            root.scope(ManagerKind::Systemd, false).unwrap(),
            Scope::System
        );
        assert_eq!(user.scope(ManagerKind::Systemd, true).unwrap(), Scope::User);
        assert_eq!(
            root.scope(ManagerKind::Launchd, false).unwrap(),
            Scope::System
        );
        assert_eq!(
            user.scope(ManagerKind::Launchd, false).unwrap(),
            Scope::User
        );
        let error = user.scope(ManagerKind::SysV, true).unwrap_err().to_string();
        assert_eq!(
            error,
            "--user-service needs systemd, but this system's service manager is sysv"
        );
    }

    #[test]
    fn system_paths_move_under_the_root() {
        let host = Host::new("/tmp/x", 0).with_home("/home/u");
        assert_eq!(
            host.system_path(Path::new("/etc/init.d/runnel")),
            PathBuf::from("/tmp/x/etc/init.d/runnel")
        );
        assert_eq!(
            host.user_config_dir().unwrap(),
            PathBuf::from("/tmp/x/home/u/.config")
        );
        let real = Host::new("/", 0);
        assert_eq!(
            real.system_path(Path::new("/etc/init.d/runnel")),
            PathBuf::from("/etc/init.d/runnel")
        );
    }
}
