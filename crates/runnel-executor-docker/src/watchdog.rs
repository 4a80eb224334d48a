//! A hard stop inside the job's own containers, for when the runner is gone.
//!
//! The runner stops a stage at the job's timeout itself. But when the runner dies (SIGKILL, a
//! crash, the machine's runner service stopped) a stage's processes would run on until a
//! runner with the same token starts again and sweeps them. So the shell command of the helper
//! and build containers carries its own deadline: the job's timeout plus [`HARD_STOP_GRACE`]
//! (room for `after_script`, artifacts and caches after a timeout), as a wall-clock time.
//! Every start of the container (one per stage) checks it and starts a watchdog that kills
//! every process of the container at that time; the container then stops by itself. The
//! watchdog needs `date` and `sleep` in the image; without them the stage runs unguarded (the
//! runner's own deadline still applies while it lives).
//!
//! Not covered: service containers run their image's own command, which Runnel does not wrap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after the job's timeout the containers stop by themselves.
pub const HARD_STOP_GRACE: Duration = Duration::from_secs(15 * 60);

/// The wall-clock second (Unix time) at which a job with `timeout` starting now is stopped
/// from inside its containers, `grace` after the timeout; `None` without a timeout.
pub(crate) fn hard_deadline(timeout: Option<Duration>, grace: Duration) -> Option<u64> {
    let timeout = timeout.filter(|timeout| !timeout.is_zero())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some((now + timeout + grace).as_secs())
}

/// `command` (`sh -c <script>`, where the script `exec`s a shell) with the deadline check and
/// the watchdog in front, the shell run as a child (not `exec`ed) so the watchdog can kill it
/// and everything it started, and the shell's exit code passed on.
pub(crate) fn with_hard_deadline(command: Vec<String>, deadline: Option<u64>) -> Vec<String> {
    let (Some(deadline), [sh, flag, script]) = (deadline, command.as_slice()) else {
        return command;
    };
    let mut text = format!(
        "runnel_deadline={deadline}\n\
         runnel_now=$(date +%s 2>/dev/null) || runnel_now=\n\
         if [ -n \"$runnel_now\" ]; then\n\
         \tif [ \"$runnel_now\" -ge \"$runnel_deadline\" ]; then\n\
         \t\techo 'ERROR: the job is past its timeout and grace; this container stops by itself (runnel hard stop)' >&2\n\
         \t\texit 1\n\
         \tfi\n\
         \t(sleep $((runnel_deadline - runnel_now)) && echo 'ERROR: the job is past its timeout and grace; stopping every process of this container (runnel hard stop)' >&2 && kill -9 -1) </dev/null &\n\
         fi\n"
    );
    // The shell runs as a child: `exec` would make it process 1, which no signal from inside
    // the container can stop.
    text.push_str(&script.replace("\texec ", "\t"));
    text.push_str("exit $?\n");
    vec![sh.clone(), flag.clone(), text]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_runs_under_a_watchdog_until_the_deadline() {
        let command = crate::detect_shell_command(runnel_executor::Shell::Sh, true);
        assert_eq!(with_hard_deadline(command.clone(), None), command);
        let wrapped = with_hard_deadline(command, Some(1_900_000_000));
        insta::assert_snapshot!(wrapped[2], @r#"
        runnel_deadline=1900000000
        runnel_now=$(date +%s 2>/dev/null) || runnel_now=
        if [ -n "$runnel_now" ]; then
        	if [ "$runnel_now" -ge "$runnel_deadline" ]; then
        		echo 'ERROR: the job is past its timeout and grace; this container stops by itself (runnel hard stop)' >&2
        		exit 1
        	fi
        	(sleep $((runnel_deadline - runnel_now)) && echo 'ERROR: the job is past its timeout and grace; stopping every process of this container (runnel hard stop)' >&2 && kill -9 -1) </dev/null &
        fi
        umask 0000
        if [ -x /bin/sh ]; then
        	/bin/sh
        elif [ -x /busybox/sh ]; then
        	/busybox/sh
        else
        	echo shell not found
        	exit 1
        fi
        exit $?
        "#);
        assert!(hard_deadline(None, HARD_STOP_GRACE).is_none());
        assert!(hard_deadline(Some(Duration::from_secs(60)), HARD_STOP_GRACE).is_some());
    }
}
