//! SysV init: a self-contained POSIX `sh` script in `/etc/init.d`, enabled with `update-rc.d`
//! (Debian family) or `chkconfig` (Red Hat family) and driven through `service`.
//!
//! The script needs no distribution helper library. `start` launches a small supervisor (the
//! script itself, `supervise` action, in its own session when `setsid` exists) that restarts the
//! daemon whenever it exits. `stop` asks the supervisor to stop: it forwards SIGQUIT so jobs can
//! finish; after the stop timeout a second request forwards SIGTERM (jobs are aborted and
//! reported); SIGKILL is the last resort. The supervisor itself is signalled with SIGTERM because
//! a background shell starts with SIGQUIT ignored and cannot trap it.

use std::path::Path;

use crate::exec::Runner;
use crate::host::Host;
use crate::{
    FORCEFUL_STOP_TIMEOUT, Operation, RESTART_DELAY, ServiceError, ServiceSpec, Status, quote,
};

const TEMPLATE: &str = r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          @NAME@
# Required-Start:    $local_fs $remote_fs $network $syslog
# Required-Stop:     $local_fs $remote_fs $network $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: @DESCRIPTION@
# Description:       @DESCRIPTION@
### END INIT INFO
# chkconfig: 2345 99 01
# description: @DESCRIPTION@
#
# Written by `runnel install`; `runnel uninstall` removes it.

NAME=@NAME_Q@
PIDFILE=@PIDFILE@
LOGFILE=@LOGFILE@
RUN_AS=@RUN_AS@
STOP_TIMEOUT=@STOP_TIMEOUT@
KILL_TIMEOUT=@KILL_TIMEOUT@
RESTART_DELAY=@RESTART_DELAY@

# Runs the daemon in the foreground (as RUN_AS when set); replaces the calling shell.
exec_daemon() {
	set -- @COMMAND@
	trap - INT QUIT TERM
	if [ -n "$RUN_AS" ]; then
		if command -v setpriv >/dev/null 2>&1; then
			HOME=$(getent passwd "$RUN_AS" | cut -d: -f6)
			export HOME
			exec setpriv --reuid="$RUN_AS" --regid="$(id -g "$RUN_AS")" --init-groups -- "$@"
		fi
		exec su -s /bin/sh "$RUN_AS" -c 'exec "$0" "$@"' -- "$@"
	fi
	exec "$@"
}

# Keeps the daemon running until asked to stop. The first SIGTERM forwards SIGQUIT (finish
# running jobs), the next ones forward SIGTERM (abort them).
supervise() {
	child=
	stopping=
	trap 'on_stop' TERM INT
	while [ -z "$stopping" ]; do
		exec_daemon &
		child=$!
		while kill -0 "$child" 2>/dev/null; do
			wait "$child"
		done
		child=
		[ -n "$stopping" ] && break
		echo "$NAME: the daemon exited; starting it again in $RESTART_DELAY s" >&2
		sleep "$RESTART_DELAY" &
		wait $!
	done
}

on_stop() {
	if [ -z "$stopping" ]; then
		stopping=1
		signal=QUIT
	else
		signal=TERM
	fi
	if [ -n "$child" ]; then
		kill -"$signal" "$child" 2>/dev/null
	fi
}

running_pid() {
	[ -r "$PIDFILE" ] || return 1
	pid=$(cat "$PIDFILE" 2>/dev/null)
	[ -n "$pid" ] || return 1
	# kill -0 fails for other users' processes; /proc answers for everyone where it exists.
	if kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ]; then
		echo "$pid"
	else
		return 1
	fi
}

# wait_for_exit PID SECONDS: 0 once PID is gone, 1 if it is still there after SECONDS.
wait_for_exit() {
	waited=0
	while kill -0 "$1" 2>/dev/null; do
		[ "$waited" -ge "$2" ] && return 1
		sleep 1
		waited=$((waited + 1))
	done
	return 0
}

do_start() {
	if pid=$(running_pid); then
		echo "$NAME is already running (pid $pid)"
		return 0
	fi
	mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
	if command -v setsid >/dev/null 2>&1; then
		setsid "$0" supervise </dev/null >>"$LOGFILE" 2>&1 &
	else
		"$0" supervise </dev/null >>"$LOGFILE" 2>&1 &
	fi
	echo $! >"$PIDFILE"
	echo "Started $NAME"
}

do_stop() {
	if ! pid=$(running_pid); then
		rm -f "$PIDFILE"
		echo "$NAME is not running"
		return 0
	fi
	echo "Stopping $NAME: running jobs may take up to $STOP_TIMEOUT s to finish"
	kill -TERM "$pid"
	if ! wait_for_exit "$pid" "$STOP_TIMEOUT"; then
		echo "$NAME: jobs still running after $STOP_TIMEOUT s; aborting them"
		kill -TERM "$pid"
		if ! wait_for_exit "$pid" "$KILL_TIMEOUT"; then
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
		fi
	fi
	rm -f "$PIDFILE"
	echo "Stopped $NAME"
}

case "$1" in
	start) do_start ;;
	stop) do_stop ;;
	restart|force-reload)
		do_stop
		do_start
		;;
	status)
		if pid=$(running_pid); then
			echo "$NAME is running (pid $pid)"
			exit 0
		fi
		echo "$NAME is not running"
		exit 3
		;;
	supervise) supervise ;;
	*)
		echo "Usage: $0 {start|stop|restart|status}" >&2
		exit 2
		;;
esac
"#;

pub(crate) fn render(spec: &ServiceSpec, name: &str, host: &Host) -> String {
    let pidfile = host
        .system_path(Path::new("/var/run"))
        .join(format!("{name}.pid"));
    let log = host
        .system_path(Path::new("/var/log"))
        .join(format!("{name}.log"));
    let program = spec.program.to_string_lossy();
    let command = quote::sh_words(
        std::iter::once(program.as_ref()).chain(spec.arguments.iter().map(String::as_str)),
    );
    let one_line = |text: &str| text.replace(['\n', '\r'], " ");
    TEMPLATE
        .replace("@NAME@", name)
        .replace("@DESCRIPTION@", &one_line(&spec.description))
        .replace("@NAME_Q@", &quote::sh(name))
        .replace("@PIDFILE@", &quote::sh(&pidfile.to_string_lossy()))
        .replace("@LOGFILE@", &quote::sh(&log.to_string_lossy()))
        .replace(
            "@RUN_AS@",
            &quote::sh(spec.init_user.as_deref().unwrap_or_default()),
        )
        .replace("@STOP_TIMEOUT@", &spec.stop_timeout.as_secs().to_string())
        .replace(
            "@KILL_TIMEOUT@",
            &FORCEFUL_STOP_TIMEOUT.as_secs().to_string(),
        )
        .replace("@RESTART_DELAY@", &RESTART_DELAY.as_secs().to_string())
        .replace("@COMMAND@", &command)
}

/// Registers the script for the default runlevels with whichever tool the system has; without
/// either, the service is installed but will not start at boot (a warning says so).
pub(crate) fn enable(runner: &Runner<'_>) -> Result<(), ServiceError> {
    if runner.has("update-rc.d") {
        runner
            .run("update-rc.d", &[runner.name, "defaults"])
            .map(drop)
    } else if runner.has("chkconfig") {
        runner.run("chkconfig", &["--add", runner.name]).map(drop)
    } else {
        tracing::warn!(
            message =
                "Neither update-rc.d nor chkconfig found: the service will not start at boot.",
            service = runner.name
        );
        Ok(())
    }
}

pub(crate) fn disable(runner: &Runner<'_>, script: &Path) -> Result<(), ServiceError> {
    let stop = Runner {
        operation: Operation::Stop,
        ..*runner
    };
    control(&stop, script)?;
    if runner.has("update-rc.d") {
        runner
            .run("update-rc.d", &["-f", runner.name, "remove"])
            .map(drop)
    } else if runner.has("chkconfig") {
        runner.run("chkconfig", &["--del", runner.name]).map(drop)
    } else {
        Ok(())
    }
}

/// `service NAME verb`, or the script itself where there is no `service` command.
fn invoke(
    runner: &Runner<'_>,
    script: &Path,
    verb: &str,
    checked: bool,
) -> Result<std::process::Output, ServiceError> {
    if runner.has("service") {
        let args = [runner.name, verb];
        return if checked {
            runner.run("service", &args)
        } else {
            runner.output("service", &args)
        };
    }
    let script = script.to_string_lossy();
    let args = [script.as_ref(), verb];
    if checked {
        runner.run("sh", &args)
    } else {
        runner.output("sh", &args)
    }
}

pub(crate) fn control(runner: &Runner<'_>, script: &Path) -> Result<(), ServiceError> {
    let verb = match runner.operation {
        Operation::Stop | Operation::Uninstall => "stop",
        Operation::Restart => "restart",
        _ => "start",
    };
    invoke(runner, script, verb, true).map(drop)
}

/// LSB: `status` exits 0 while running.
pub(crate) fn status(runner: &Runner<'_>, script: &Path) -> Result<Status, ServiceError> {
    let output = invoke(runner, script, "status", false)?;
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
                "/home/gitlab-runner",
                "--service",
                "runnel",
                "--syslog",
            ]
            .map(String::from)
            .to_vec(),
            init_user: Some("gitlab-runner".into()),
            stop_timeout: Duration::from_secs(7200),
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
