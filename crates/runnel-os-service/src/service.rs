//! [`Service`]: one named service under one manager, and the six operations on it.
//!
//! The checks every operation shares live here (name, privileges, installed or not, writing and
//! removing the definition); the manager-specific text and commands live in one module per
//! manager. Nothing here retries or waits except launchd's graceful stop.

use std::path::{Path, PathBuf};

use crate::exec::Runner;
use crate::host::Host;
use crate::{
    ManagerKind, Operation, Scope, ServiceError, ServiceSpec, Status, launchd, openrc, systemd,
    sysv,
};

/// A service called `name`, managed by `kind` in `scope` on `host`.
#[derive(Debug, Clone)]
pub struct Service {
    host: Host,
    kind: ManagerKind,
    scope: Scope,
    name: String,
    definition: PathBuf,
}

impl Service {
    /// Checks the name and locates the definition file (a user service needs a home directory).
    pub fn new(
        host: Host,
        kind: ManagerKind,
        scope: Scope,
        name: &str,
    ) -> Result<Self, ServiceError> {
        validate_name(name)?;
        let definition = match kind {
            ManagerKind::Systemd => systemd::definition_path(&host, scope, name),
            ManagerKind::OpenRc | ManagerKind::SysV => {
                Some(host.system_path(Path::new("/etc/init.d")).join(name))
            }
            ManagerKind::Launchd => launchd::definition_path(&host, scope, name),
        }
        .ok_or(ServiceError::NoHome { kind })?;
        Ok(Self {
            host,
            kind,
            scope,
            name: name.to_owned(),
            definition,
        })
    }

    /// The manager.
    pub fn kind(&self) -> ManagerKind {
        self.kind
    }

    /// System or user.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unit, script or plist file this service is defined by.
    pub fn definition_path(&self) -> &Path {
        &self.definition
    }

    /// Whether the definition file exists.
    pub fn is_installed(&self) -> bool {
        self.definition.exists()
    }

    /// The definition text `install` writes for `spec`.
    pub fn render(&self, spec: &ServiceSpec) -> String {
        match self.kind {
            ManagerKind::Systemd => systemd::render(spec, &self.name, self.scope),
            ManagerKind::OpenRc => openrc::render(spec, &self.name, &self.host),
            ManagerKind::SysV => sysv::render(spec, &self.name, &self.host),
            ManagerKind::Launchd => launchd::render(spec, &self.name, self.scope, &self.host),
        }
    }

    /// What [`Self::install`] checks before changing anything: privileges, and that no
    /// definition is there yet. Lets callers fail before preparing anything else.
    pub fn check_install(&self) -> Result<(), ServiceError> {
        self.prepare(Operation::Install)?;
        if self.is_installed() {
            return Err(ServiceError::AlreadyInstalled {
                name: self.name.clone(),
                path: self.definition.clone(),
            });
        }
        Ok(())
    }

    /// Writes the definition and enables it at boot (it is not started; see [`Self::start`]).
    /// Returns the definition's path.
    pub fn install(&self, spec: &ServiceSpec) -> Result<PathBuf, ServiceError> {
        self.check_install()?;
        let runner = self.prepare(Operation::Install)?;
        let text = self.render(spec);
        let mode = match self.kind {
            ManagerKind::OpenRc | ManagerKind::SysV => 0o755,
            ManagerKind::Systemd | ManagerKind::Launchd => 0o644,
        };
        write_definition(&self.definition, &text, mode)?;
        let enabled = match self.kind {
            ManagerKind::Systemd => systemd::enable(&runner, self.scope),
            ManagerKind::OpenRc => openrc::enable(&runner),
            ManagerKind::SysV => sysv::enable(&runner),
            ManagerKind::Launchd => launchd::prepare_logs(&self.host, self.scope, &self.name),
        };
        if let Err(error) = enabled {
            // Leave nothing half-installed behind.
            remove_definition(&self.definition).ok();
            return Err(error);
        }
        tracing::debug!(
            message = "Installed service.",
            service = %self.name,
            manager = %self.kind,
            path = %self.definition.display()
        );
        Ok(self.definition.clone())
    }

    /// Stops the daemon (gracefully), disables it at boot and removes the definition.
    pub fn uninstall(&self) -> Result<PathBuf, ServiceError> {
        let runner = self.prepare(Operation::Uninstall)?;
        self.require_installed(Operation::Uninstall)?;
        match self.kind {
            ManagerKind::Systemd => systemd::disable(&runner, self.scope)?,
            ManagerKind::OpenRc => openrc::disable(&runner)?,
            ManagerKind::SysV => sysv::disable(&runner, &self.definition)?,
            ManagerKind::Launchd => {
                launchd::unload_if_loaded(&runner, self.scope, &self.definition)?
            }
        }
        remove_definition(&self.definition)?;
        if self.kind == ManagerKind::Systemd {
            systemd::daemon_reload(&runner, self.scope)?;
        }
        tracing::debug!(
            message = "Uninstalled service.",
            service = %self.name,
            manager = %self.kind,
            path = %self.definition.display()
        );
        Ok(self.definition.clone())
    }

    /// Starts the daemon.
    pub fn start(&self) -> Result<(), ServiceError> {
        self.control(Operation::Start)
    }

    /// Stops the daemon: SIGQUIT, then SIGTERM after the stop timeout.
    pub fn stop(&self) -> Result<(), ServiceError> {
        self.control(Operation::Stop)
    }

    /// Stops (gracefully) and starts the daemon.
    pub fn restart(&self) -> Result<(), ServiceError> {
        self.control(Operation::Restart)
    }

    /// Whether the daemon runs. A service that is not installed is an error.
    pub fn status(&self) -> Result<Status, ServiceError> {
        let runner = self.prepare(Operation::Status)?;
        self.require_installed(Operation::Status)?;
        match self.kind {
            ManagerKind::Systemd => systemd::status(&runner, self.scope),
            ManagerKind::OpenRc => openrc::status(&runner),
            ManagerKind::SysV => sysv::status(&runner, &self.definition),
            ManagerKind::Launchd => launchd::status(&runner),
        }
    }

    fn control(&self, operation: Operation) -> Result<(), ServiceError> {
        let runner = self.prepare(operation)?;
        self.require_installed(operation)?;
        match self.kind {
            ManagerKind::Systemd => systemd::control(&runner, self.scope),
            ManagerKind::OpenRc => openrc::control(&runner),
            ManagerKind::SysV => sysv::control(&runner, &self.definition),
            ManagerKind::Launchd => launchd::control(&runner, self.scope, &self.definition),
        }
    }

    /// The privilege check, and a tool runner for `operation`.
    fn prepare(&self, operation: Operation) -> Result<Runner<'_>, ServiceError> {
        if self.scope == Scope::System && operation.needs_root() && !self.host.is_root() {
            return Err(ServiceError::NeedsRoot {
                operation,
                kind: self.kind,
                name: self.name.clone(),
                hint: match self.kind {
                    ManagerKind::Systemd => ", or pass --user-service for a per-user unit",
                    _ => "",
                },
            });
        }
        Ok(Runner {
            host: &self.host,
            kind: self.kind,
            name: &self.name,
            operation,
        })
    }

    fn require_installed(&self, operation: Operation) -> Result<(), ServiceError> {
        if self.is_installed() {
            return Ok(());
        }
        Err(ServiceError::NotInstalled {
            operation,
            name: self.name.clone(),
            path: self.definition.clone(),
        })
    }
}

/// Names become file names, unit names and shell words: keep them boring.
fn validate_name(name: &str) -> Result<(), ServiceError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn write_definition(path: &Path, text: &str, mode: u32) -> Result<(), ServiceError> {
    let file_error = |source| ServiceError::File {
        action: "write",
        source,
    };
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir).map_err(file_error)?;
    }
    fs_err::write(path, text).map_err(file_error)?;
    set_mode(path, mode).map_err(file_error)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

fn remove_definition(path: &Path) -> Result<(), ServiceError> {
    match fs_err::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServiceError::File {
            action: "remove",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["runnel", "gitlab-runner", "runnel@2", "a.b_c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "x;rm", "ü"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn privilege_error_names_what_is_missing() {
        let host = Host::new("/nonexistent-root", 1000);
        let service = Service::new(host, ManagerKind::Systemd, Scope::System, "runnel").unwrap();
        let error = service.start().unwrap_err().to_string();
        assert_eq!(
            error,
            "cannot start the systemd service \"runnel\": managing system services needs root \
             privileges (run it with sudo, or pass --user-service for a per-user unit)"
        );
    }
}
