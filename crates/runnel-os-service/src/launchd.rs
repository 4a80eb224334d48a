//! launchd (macOS): a property list in `/Library/LaunchDaemons` (root) or
//! `~/Library/LaunchAgents` (other users), and the `launchctl` calls.
//!
//! launchd cannot be told which signal stops a job: `unload` always sends SIGTERM. So `stop`
//! first sends SIGQUIT itself (`launchctl kill SIGQUIT`), waits up to the stop timeout (kept in
//! the plist as `ExitTimeOut`) for the daemon to finish its jobs and exit, then unloads. The plist
//! keeps the daemon alive unless it exits successfully, which it only does after a graceful stop,
//! so a stop does not bounce back. `install` writes the plist without loading it; `start` loads
//! it (`RunAtLoad`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::Runner;
use crate::host::Host;
use crate::{DEFAULT_STOP_TIMEOUT, Operation, Scope, ServiceError, ServiceSpec, Status, quote};

pub(crate) fn definition_path(host: &Host, scope: Scope, name: &str) -> Option<PathBuf> {
    let dir = match scope {
        Scope::System => host.system_path(Path::new("/Library/LaunchDaemons")),
        Scope::User => host.user_home_dir()?.join("Library/LaunchAgents"),
    };
    Some(dir.join(format!("{name}.plist")))
}

/// Where stdout and stderr go: `/usr/local/var/log` for daemons (like the official runner),
/// `~/Library/Logs` for agents.
fn log_dir(host: &Host, scope: Scope) -> PathBuf {
    match (scope, host.home()) {
        (Scope::User, Some(home)) => host.system_path(&home.join("Library/Logs")),
        _ => host.system_path(Path::new("/usr/local/var/log")),
    }
}

pub(crate) fn render(spec: &ServiceSpec, name: &str, scope: Scope, host: &Host) -> String {
    let logs = log_dir(host, scope);
    let string = |text: &str| format!("<string>{}</string>", quote::xml(text));
    let mut plist = String::new();
    let mut line = |text: &str| {
        plist.push_str(text);
        plist.push('\n');
    };
    line(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    line(
        r#"<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">"#,
    );
    line("<!-- Written by `runnel install`; `runnel uninstall` removes it. -->");
    line(r#"<plist version="1.0">"#);
    line("<dict>");
    line("\t<key>Label</key>");
    line(&format!("\t{}", string(name)));
    line("\t<key>ProgramArguments</key>");
    line("\t<array>");
    line(&format!("\t\t{}", string(&spec.program.to_string_lossy())));
    for arg in &spec.arguments {
        line(&format!("\t\t{}", string(arg)));
    }
    line("\t</array>");
    if let (Scope::System, Some(user)) = (scope, &spec.init_user) {
        line("\t<key>UserName</key>");
        line(&format!("\t{}", string(user)));
    }
    line("\t<key>RunAtLoad</key>");
    line("\t<true/>");
    line("\t<key>KeepAlive</key>");
    line("\t<dict>");
    line("\t\t<key>SuccessfulExit</key>");
    line("\t\t<false/>");
    line("\t</dict>");
    line("\t<key>ExitTimeOut</key>");
    line(&format!(
        "\t<integer>{}</integer>",
        spec.stop_timeout.as_secs()
    ));
    line("\t<key>StandardOutPath</key>");
    line(&format!(
        "\t{}",
        string(&logs.join(format!("{name}.out.log")).to_string_lossy())
    ));
    line("\t<key>StandardErrorPath</key>");
    line(&format!(
        "\t{}",
        string(&logs.join(format!("{name}.err.log")).to_string_lossy())
    ));
    line("</dict>");
    line("</plist>");
    plist
}

/// launchd does not create the log directory.
pub(crate) fn prepare_logs(host: &Host, scope: Scope, _name: &str) -> Result<(), ServiceError> {
    fs_err::create_dir_all(log_dir(host, scope)).map_err(|source| ServiceError::File {
        action: "create the log directory of",
        source,
    })
}

fn target(runner: &Runner<'_>, scope: Scope) -> String {
    match scope {
        Scope::System => format!("system/{}", runner.name),
        Scope::User => format!("gui/{}/{}", runner.host.euid(), runner.name),
    }
}

/// `launchctl list NAME` succeeds while the job is loaded and shows `"PID" = N;` while it runs.
fn query(runner: &Runner<'_>) -> Result<(bool, bool), ServiceError> {
    let output = runner.output("launchctl", &["list", runner.name])?;
    let loaded = output.status.success();
    let running = loaded && String::from_utf8_lossy(&output.stdout).contains("\"PID\" =");
    Ok((loaded, running))
}

pub(crate) fn status(runner: &Runner<'_>) -> Result<Status, ServiceError> {
    let (_, running) = query(runner)?;
    Ok(if running {
        Status::Running
    } else {
        Status::Stopped
    })
}

pub(crate) fn control(runner: &Runner<'_>, scope: Scope, plist: &Path) -> Result<(), ServiceError> {
    match runner.operation {
        Operation::Stop => stop(runner, scope, plist),
        Operation::Restart => {
            stop(runner, scope, plist)?;
            start(runner, plist)
        }
        _ => start(runner, plist),
    }
}

fn start(runner: &Runner<'_>, plist: &Path) -> Result<(), ServiceError> {
    let plist = plist.to_string_lossy();
    runner.run("launchctl", &["load", "-w", &plist]).map(drop)
}

fn stop(runner: &Runner<'_>, scope: Scope, plist: &Path) -> Result<(), ServiceError> {
    let (loaded, running) = query(runner)?;
    if running {
        // Graceful first: a failure here (already exiting) is not worth failing the stop for.
        let target = target(runner, scope);
        if let Err(error) = runner.run("launchctl", &["kill", "SIGQUIT", &target]) {
            tracing::debug!(message = "Could not send SIGQUIT.", %error);
        }
        let timeout = stop_timeout(plist);
        let deadline = Instant::now() + timeout;
        tracing::info!(
            message = "Waiting for running jobs to finish.",
            service = runner.name,
            timeout_seconds = timeout.as_secs()
        );
        while Instant::now() < deadline && query(runner)?.1 {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if loaded {
        let plist = plist.to_string_lossy();
        runner.run("launchctl", &["unload", &plist])?;
    }
    Ok(())
}

pub(crate) fn unload_if_loaded(
    runner: &Runner<'_>,
    scope: Scope,
    plist: &Path,
) -> Result<(), ServiceError> {
    stop(runner, scope, plist)
}

/// The graceful stop timeout written at install (`ExitTimeOut`), or the default.
fn stop_timeout(plist: &Path) -> Duration {
    let Ok(text) = fs_err::read_to_string(plist) else {
        return DEFAULT_STOP_TIMEOUT;
    };
    text.split("<key>ExitTimeOut</key>")
        .nth(1)
        .and_then(|rest| rest.trim_start().strip_prefix("<integer>"))
        .and_then(|rest| rest.split("</integer>").next())
        .and_then(|number| number.trim().parse().ok())
        .map_or(DEFAULT_STOP_TIMEOUT, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            description: "Runnel GitLab Runner".into(),
            program: "/usr/local/bin/runnel".into(),
            arguments: [
                "run",
                "--config",
                "/Users/ci/.gitlab-runner/config.toml",
                "--working-directory",
                "/Users/ci",
                "--service",
                "runnel",
                "--syslog",
            ]
            .map(String::from)
            .to_vec(),
            init_user: None,
            stop_timeout: Duration::from_secs(7200),
        }
    }

    #[test]
    fn agent_plist() {
        let host = Host::new("/", 501).with_home("/Users/ci");
        insta::assert_snapshot!(render(&spec(), "runnel", Scope::User, &host));
    }

    #[test]
    fn daemon_plist_with_user() {
        let host = Host::new("/", 0);
        let spec = ServiceSpec {
            init_user: Some("_gitlab".into()),
            ..spec()
        };
        insta::assert_snapshot!(render(&spec, "runnel", Scope::System, &host));
    }

    #[test]
    fn stop_timeout_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runnel.plist");
        let host = Host::new("/", 0);
        let spec = ServiceSpec {
            stop_timeout: Duration::from_secs(42),
            ..spec()
        };
        fs_err::write(&path, render(&spec, "runnel", Scope::System, &host)).unwrap();
        assert_eq!(stop_timeout(&path), Duration::from_secs(42));
        assert_eq!(
            stop_timeout(&dir.path().join("missing")),
            DEFAULT_STOP_TIMEOUT
        );
    }
}
