//! OpenRC: an `openrc-run` script supervised by `supervise-daemon`, and the `rc-update` /
//! `rc-service` calls.
//!
//! `supervise-daemon` restarts the daemon whenever it exits (`respawn_max=0`), and `retry=`
//! gives the stop ladder: SIGQUIT, wait for jobs, SIGTERM, then SIGKILL. Output goes to
//! `/var/log/<name>.log`. Only the `default` runlevel is touched.

use std::path::Path;

use crate::exec::Runner;
use crate::host::Host;
use crate::{
    FORCEFUL_STOP_TIMEOUT, Operation, RESTART_DELAY, ServiceError, ServiceSpec, Status, quote,
};

pub(crate) fn render(spec: &ServiceSpec, name: &str, host: &Host) -> String {
    let log = host
        .system_path(Path::new("/var/log"))
        .join(format!("{name}.log"));
    let pidfile = host
        .system_path(Path::new("/run"))
        .join(format!("{name}.pid"));
    let args = quote::sh_words(spec.arguments.iter().map(String::as_str));
    let mut script = String::new();
    let mut line = |text: &str| {
        script.push_str(text);
        script.push('\n');
    };
    line("#!/sbin/openrc-run");
    line("# Written by `runnel install`; `runnel uninstall` removes it.");
    line("");
    line(&format!("name={}", quote::sh(name)));
    line(&format!("description={}", quote::sh(&spec.description)));
    line("supervisor=supervise-daemon");
    line(&format!(
        "command={}",
        quote::sh(&spec.program.to_string_lossy())
    ));
    // command_args is evaluated again by openrc-run, so it holds already-quoted words.
    line(&format!("command_args={}", quote::sh(&args)));
    if let Some(user) = &spec.init_user {
        line(&format!("command_user={}", quote::sh(user)));
    }
    line(&format!(
        "pidfile={}",
        quote::sh(&pidfile.to_string_lossy())
    ));
    line(&format!("output_log={}", quote::sh(&log.to_string_lossy())));
    line(&format!("error_log={}", quote::sh(&log.to_string_lossy())));
    line("respawn_max=0");
    line(&format!("respawn_delay={}", RESTART_DELAY.as_secs()));
    line(
        "# Graceful stop: SIGQUIT lets running jobs finish; SIGTERM after the timeout aborts them.",
    );
    line(&format!(
        "retry=\"SIGQUIT/{}/SIGTERM/{}/SIGKILL/5\"",
        spec.stop_timeout.as_secs(),
        FORCEFUL_STOP_TIMEOUT.as_secs()
    ));
    line("");
    line("depend() {");
    line("\tneed net");
    line("\tuse dns logger");
    line("}");
    script
}

pub(crate) fn enable(runner: &Runner<'_>) -> Result<(), ServiceError> {
    runner
        .run("rc-update", &["add", runner.name, "default"])
        .map(drop)
}

pub(crate) fn disable(runner: &Runner<'_>) -> Result<(), ServiceError> {
    runner.run("rc-service", &["--ifstarted", runner.name, "stop"])?;
    runner
        .run("rc-update", &["del", runner.name, "default"])
        .map(drop)
}

pub(crate) fn control(runner: &Runner<'_>) -> Result<(), ServiceError> {
    let verb = match runner.operation {
        Operation::Stop => "stop",
        Operation::Restart => "restart",
        _ => "start",
    };
    runner.run("rc-service", &[runner.name, verb]).map(drop)
}

/// `rc-service NAME status` exits 0 only while the service is started.
pub(crate) fn status(runner: &Runner<'_>) -> Result<Status, ServiceError> {
    let output = runner.output("rc-service", &[runner.name, "status"])?;
    Ok(if output.status.success() {
        Status::Running
    } else {
        Status::Stopped
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn script() {
        let spec = ServiceSpec {
            description: "Runnel GitLab Runner".into(),
            program: "/usr/local/bin/runnel".into(),
            arguments: [
                "run",
                "--config",
                "/etc/gitlab-runner/config.toml",
                "--working-directory",
                "/home/it's mine",
                "--service",
                "runnel",
                "--syslog",
            ]
            .map(String::from)
            .to_vec(),
            init_user: Some("gitlab-runner".into()),
            stop_timeout: Duration::from_secs(3600),
        };
        let text = render(&spec, "runnel", &Host::new("/", 0));
        let output = std::process::Command::new("sh")
            .args(["-n", "-c", &text])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        insta::assert_snapshot!(render(&spec, "runnel", &Host::new("/", 0)));
    }
}
