//! systemd: the unit text and the `systemctl` calls, for system units and `--user` units.
//!
//! The unit starts after the network, restarts on every exit (no start rate limit) and stops in
//! two stages: `KillSignal=SIGQUIT` to the main process only (`KillMode=mixed`, so job processes
//! are left alone), then after `TimeoutStopSec=` `FinalKillSignal=SIGTERM` to everything left,
//! which makes Runnel abort its jobs and report them. It does not set resource limits or
//! sandboxing: jobs need the host as the user configured it.

use std::path::{Path, PathBuf};

use crate::exec::Runner;
use crate::host::Host;
use crate::{Operation, RESTART_DELAY, Scope, ServiceError, ServiceSpec, Status, quote};

pub(crate) fn definition_path(host: &Host, scope: Scope, name: &str) -> Option<PathBuf> {
    let dir = match scope {
        Scope::System => host.system_path(Path::new("/etc/systemd/system")),
        Scope::User => host.user_config_dir()?.join("systemd/user"),
    };
    Some(dir.join(format!("{name}.service")))
}

pub(crate) fn render(spec: &ServiceSpec, name: &str, scope: Scope) -> String {
    let exec_start = std::iter::once(spec.program.to_string_lossy().as_ref())
        .map(quote::systemd)
        .chain(spec.arguments.iter().map(|arg| quote::systemd(arg)))
        .collect::<Vec<_>>()
        .join(" ");
    let mut unit = String::new();
    let mut line = |text: &str| {
        unit.push_str(text);
        unit.push('\n');
    };
    line("# Written by `runnel install`; `runnel uninstall` removes it.");
    line("[Unit]");
    line(&format!(
        "Description={}",
        quote::systemd_value(&spec.description)
    ));
    if scope == Scope::System {
        line("Wants=network-online.target");
        line("After=network-online.target network.target");
    }
    line("StartLimitIntervalSec=0");
    line("");
    line("[Service]");
    line(&format!("ExecStart={exec_start}"));
    if let Some(user) = &spec.init_user {
        line(&format!("User={}", quote::systemd_value(user)));
    }
    if scope == Scope::System {
        line(&format!("EnvironmentFile=-/etc/sysconfig/{name}"));
    }
    line("Restart=always");
    line(&format!("RestartSec={}", RESTART_DELAY.as_secs()));
    line(
        "# Graceful stop: SIGQUIT lets running jobs finish; SIGTERM after the timeout aborts them.",
    );
    line("KillMode=mixed");
    line("KillSignal=SIGQUIT");
    line(&format!("TimeoutStopSec={}", spec.stop_timeout.as_secs()));
    line("FinalKillSignal=SIGTERM");
    line("");
    line("[Install]");
    line(match scope {
        Scope::System => "WantedBy=multi-user.target",
        Scope::User => "WantedBy=default.target",
    });
    unit
}

fn unit(runner: &Runner<'_>) -> String {
    format!("{}.service", runner.name)
}

fn systemctl(runner: &Runner<'_>, scope: Scope, args: &[&str]) -> Result<(), ServiceError> {
    let mut all = Vec::with_capacity(args.len() + 1);
    if scope == Scope::User {
        all.push("--user");
    }
    all.extend_from_slice(args);
    runner.run("systemctl", &all).map(drop)
}

pub(crate) fn daemon_reload(runner: &Runner<'_>, scope: Scope) -> Result<(), ServiceError> {
    systemctl(runner, scope, &["daemon-reload"])
}

pub(crate) fn enable(runner: &Runner<'_>, scope: Scope) -> Result<(), ServiceError> {
    daemon_reload(runner, scope)?;
    systemctl(runner, scope, &["enable", &unit(runner)])
}

/// Disables the unit and stops it (gracefully: this waits for running jobs).
pub(crate) fn disable(runner: &Runner<'_>, scope: Scope) -> Result<(), ServiceError> {
    systemctl(runner, scope, &["disable", "--now", &unit(runner)])
}

pub(crate) fn control(runner: &Runner<'_>, scope: Scope) -> Result<(), ServiceError> {
    let verb = match runner.operation {
        Operation::Stop => "stop",
        Operation::Restart => "restart",
        _ => "start",
    };
    systemctl(runner, scope, &[verb, &unit(runner)])
}

/// `systemctl is-active`: "active" (or "reloading") is running; anything else, whatever the exit
/// status, is not.
pub(crate) fn status(runner: &Runner<'_>, scope: Scope) -> Result<Status, ServiceError> {
    let unit = unit(runner);
    let mut args = Vec::new();
    if scope == Scope::User {
        args.push("--user");
    }
    args.extend_from_slice(&["is-active", &unit]);
    let output = runner.output("systemctl", &args)?;
    let state = String::from_utf8_lossy(&output.stdout);
    Ok(match state.trim() {
        "active" | "reloading" => Status::Running,
        _ => Status::Stopped,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(init_user: Option<&str>) -> ServiceSpec {
        ServiceSpec {
            description: "Runnel GitLab Runner".into(),
            program: "/usr/local/bin/runnel".into(),
            arguments: [
                "run",
                "--config",
                "/etc/gitlab-runner/config.toml",
                "--working-directory",
                "/home/gitlab runner",
                "--service",
                "runnel",
                "--user",
                "gitlab-runner",
            ]
            .map(String::from)
            .to_vec(),
            init_user: init_user.map(String::from),
            stop_timeout: Duration::from_secs(7200),
        }
    }

    #[test]
    fn system_unit() {
        insta::assert_snapshot!(render(&spec(None), "runnel", Scope::System));
    }

    #[test]
    fn system_unit_with_init_user() {
        insta::assert_snapshot!(render(
            &spec(Some("gitlab-runner")),
            "runnel",
            Scope::System
        ));
    }

    /// Where `systemd-analyze` exists (it does on the project's machines), the units must pass
    /// `systemd-analyze verify`: every key known, every value valid.
    #[test]
    fn units_pass_systemd_analyze_verify() {
        let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
            .into_iter()
            .map(Path::new)
            .find(|path| path.exists())
        else {
            eprintln!("systemd-analyze not installed: unit verification skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(Some("root"));
        spec.program = "/bin/sh".into();
        let unit = dir.path().join("runnel.service");
        fs_err::write(&unit, render(&spec, "runnel", Scope::System)).unwrap();
        let output = std::process::Command::new(analyze)
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        // Unknown keys and unparsable values are only warned about ("…, ignoring").
        assert!(!stderr.contains("ignoring"), "{stderr}");
    }

    #[test]
    fn user_unit() {
        insta::assert_snapshot!(render(&spec(None), "runnel", Scope::User));
    }
}
