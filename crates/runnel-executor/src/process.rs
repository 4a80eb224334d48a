//! Process supervision: the one place that spawns child processes for jobs.
//!
//! [`run`] starts a program in its own process group with the script on stdin, streams its
//! stdout and stderr into an [`OutputSink`] as the bytes arrive, and returns how it ended. The
//! guarantees:
//!
//! - **Nothing leaks.** The process group is owned by a guard that sends `SIGKILL` to the whole
//!   group and reaps the leader when dropped, so a cancelled, aborted or panicking task leaves no
//!   processes behind.
//! - **Stopping is graceful first.** On cancellation or at the deadline the group gets `SIGTERM`;
//!   if the leader has not exited after [`KillPolicy::grace`], the group gets `SIGKILL`.
//! - **Leftovers are killed.** When the leader exits, every process still in its group
//!   (background jobs the script forgot) is killed with `SIGKILL`. Unlike the official runner,
//!   a stage cannot leave processes running after it.
//! - **Nothing hangs on open pipes.** After the leader exits the pipes are read for at most
//!   [`KillPolicy::drain`]; a process that left the group (`setsid`) and still holds stdout
//!   cannot keep the stage alive.
//! - **The process group id stays valid.** The leader is reaped only after the last signal to
//!   its group has been sent, so its id cannot be reused by an unrelated process meanwhile.
//!
//! Exits are observed without reaping (`waitid` with `WNOWAIT`, woken by `SIGCHLD`), so no
//! thread is parked per child. This module does not know about stages, shells or the job log.
//! [`run`] cannot reach processes that leave the group (`setsid`, daemons, `su -c`); a shell
//! [`Session`] can, as their subreaper.

use std::fmt;
use std::future::{Future, pending};
use std::io;
use std::path::Path;
use std::pin::pin;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::executor::EnvKeys;
use crate::{ExecutorError, OutputSink, OutputStream, StageExit};

mod session;
mod spawn;

pub use session::{MAX_STATUS, MarkerScanner, OverlongStatus, ScriptDelivery, Session};

/// How output is read: the largest chunk handed to the sink at once.
const READ_CHUNK: usize = 64 * 1024;

/// How a process group is stopped and how long the runner waits at each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillPolicy {
    /// After `SIGTERM`, how long the leader may take to exit before the group gets `SIGKILL`.
    ///
    /// Default 10 s. The official runner waits up to 10 minutes here
    /// (`process.GracefulTimeout`), but its scripts trap `TERM` and exit at once, so the wait
    /// only matters for a script that ignores `SIGTERM`; by then the job's result is decided.
    pub grace: Duration,
    /// After `SIGKILL`, how long to wait for the leader before giving up with
    /// [`ExecutorError::Unkillable`]. Default 10 s, as the official `process.KillTimeout`.
    pub force: Duration,
    /// After the leader exited and its group was killed, how long to keep reading output that
    /// is still arriving. Default 5 s.
    pub drain: Duration,
}

impl Default for KillPolicy {
    fn default() -> Self {
        KillPolicy {
            grace: Duration::from_secs(10),
            force: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

/// A program to run under supervision.
#[derive(Clone, Copy)]
pub struct ProcessSpec<'a> {
    /// The program, looked up on `PATH` when it has no slash.
    pub program: &'a str,
    /// Its arguments.
    pub args: &'a [&'a str],
    /// The working directory; `None` keeps the runner's.
    pub cwd: Option<&'a Path>,
    /// Variables added to the runner's own environment, which the child inherits.
    pub env: &'a [(String, String)],
    /// Written to the child's stdin, which is then closed.
    pub stdin: &'a [u8],
}

impl fmt::Debug for ProcessSpec<'_> {
    /// The stdin script and environment values can hold secrets: only sizes and keys are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("env_keys", &EnvKeys(self.env))
            .field("stdin_bytes", &self.stdin.len())
            .finish()
    }
}

/// When to stop a process early.
#[derive(Clone, Copy, Debug)]
pub struct StopWhen<'a> {
    /// Stop when this token is cancelled ([`StageExit::Cancelled`]).
    pub cancel: &'a CancellationToken,
    /// Stop at this instant ([`StageExit::TimedOut`]).
    pub deadline: Option<Instant>,
}

/// Runs `spec` to its end under supervision, streaming its output into `sink`.
///
/// Returns how the process ended; a non-zero exit is a normal result, not an error. See the
/// module documentation for what is guaranteed about stopping and cleaning up.
pub async fn run(
    spec: ProcessSpec<'_>,
    sink: &dyn OutputSink,
    stop: StopWhen<'_>,
    policy: &KillPolicy,
) -> Result<StageExit, ExecutorError> {
    let mut watch = ExitWatch::new()?;
    let mut group = ProcessGroup::spawn(&spec)?;
    let pipes = group.take_pipes()?;
    debug!(program = spec.program, pid = group.pid(), "started process");
    sink.process_group_started(group.pid());

    let io = pipes.transfer(&group, spec.stdin, sink);
    let supervise = supervise(&group, &mut watch, stop, policy);
    let (end, io_result) = drive(io, supervise, policy.drain).await;
    let end = end?;

    let status = group.reap()?;
    debug!(program = spec.program, pid = group.pid(), %status, "process exited");
    match io_result {
        Some(result) => result?,
        None => warn!(
            program = spec.program,
            pid = group.pid(),
            drain = ?policy.drain,
            "output still open after the process group was killed, stopped reading it"
        ),
    }
    Ok(match end {
        End::Exited => stage_exit(status),
        End::Cancelled => StageExit::Cancelled,
        End::TimedOut => StageExit::TimedOut,
    })
}

/// Why supervision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Exited,
    Cancelled,
    TimedOut,
}

/// Waits for the leader to exit or for a reason to stop it, stops it if needed, then kills
/// whatever is left in its group. The leader is not reaped here.
async fn supervise(
    group: &ProcessGroup,
    watch: &mut ExitWatch,
    stop: StopWhen<'_>,
    policy: &KillPolicy,
) -> Result<End, ExecutorError> {
    let pid = group.leader;
    let end = tokio::select! {
        biased;
        () = watch.exited(pid) => End::Exited,
        () = stop.cancel.cancelled() => End::Cancelled,
        () = until(stop.deadline) => End::TimedOut,
    };
    if end != End::Exited {
        debug!(pid = group.pid(), reason = ?end, "stopping process group");
        terminate(group, watch, policy).await?;
    }
    group.signal(Signal::SIGKILL);
    Ok(end)
}

/// `SIGTERM` to the group, then `SIGKILL` after the grace period; returns once the leader exited.
async fn terminate(
    group: &ProcessGroup,
    watch: &mut ExitWatch,
    policy: &KillPolicy,
) -> Result<(), ExecutorError> {
    let pid = group.leader;
    group.signal(Signal::SIGTERM);
    if timeout(policy.grace, watch.exited(pid)).await.is_ok() {
        return Ok(());
    }
    warn!(
        program = group.program,
        pid = group.pid(),
        grace = ?policy.grace,
        "process ignored SIGTERM, sending SIGKILL"
    );
    group.signal(Signal::SIGKILL);
    timeout(policy.force, watch.exited(pid))
        .await
        .map_err(|_| ExecutorError::Unkillable {
            program: group.program.clone(),
            pid: group.pid(),
            waited: policy.force,
        })
}

/// Polls the I/O and the supervision together; once supervision ends, gives the I/O at most
/// `drain` to finish. The I/O result is `None` if it did not finish in time.
async fn drive(
    io: impl Future<Output = Result<(), ExecutorError>>,
    supervise: impl Future<Output = Result<End, ExecutorError>>,
    drain: Duration,
) -> (
    Result<End, ExecutorError>,
    Option<Result<(), ExecutorError>>,
) {
    let mut io = pin!(io);
    let mut supervise = pin!(supervise);
    let mut io_result = None;
    let end = loop {
        tokio::select! {
            result = &mut io, if io_result.is_none() => io_result = Some(result),
            end = &mut supervise => break end,
        }
    };
    if io_result.is_none() {
        io_result = timeout(drain, io).await.ok();
    }
    (end, io_result)
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => pending().await,
    }
}

/// Maps a reaped status to a stage exit.
fn stage_exit(status: ExitStatus) -> StageExit {
    use std::os::unix::process::ExitStatusExt;

    match (status.code(), status.signal()) {
        (Some(code), _) => StageExit::Exited(code),
        (None, Some(signal)) => StageExit::Signaled(signal),
        // A reaped process either exited or was killed; keep the raw status otherwise.
        (None, None) => StageExit::Exited(status.into_raw()),
    }
}

/// A child that leads its own process group. Dropping it kills the group and reaps the leader.
#[derive(Debug)]
struct ProcessGroup {
    /// The leader's pid, which is also the process group id.
    leader: Pid,
    /// Whether the leader is still to be reaped (until then its pid, the group's id, cannot be
    /// reused).
    unreaped: bool,
    /// The runner's ends of the leader's standard streams, until taken.
    stdio: Option<spawn::ChildStdio>,
    program: String,
}

impl ProcessGroup {
    fn spawn(spec: &ProcessSpec<'_>) -> Result<Self, ExecutorError> {
        Self::spawn_with(spec, false)
    }

    /// [`ProcessGroup::spawn`]; with `subreaper`, the leader becomes the child subreaper of
    /// everything it starts (`PR_SET_CHILD_SUBREAPER`, kept across `exec`): a process that
    /// leaves the group (`setsid`, a double fork) is re-parented to the leader instead of
    /// init, so [`ProcessGroup::kill_descendants`] still finds it.
    ///
    /// The runner's address space is not copied (no `fork`); see the `spawn` module.
    fn spawn_with(spec: &ProcessSpec<'_>, subreaper: bool) -> Result<Self, ExecutorError> {
        let (leader, stdio) =
            spawn::spawn(spec, subreaper).map_err(|source| ExecutorError::Spawn {
                program: spec.program.to_owned(),
                cwd: spec.cwd.map(Path::to_path_buf),
                source,
            })?;
        Ok(ProcessGroup {
            leader,
            unreaped: true,
            stdio: Some(stdio),
            program: spec.program.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.leader.as_raw().unsigned_abs()
    }

    /// Moves the child's standard streams onto the runtime.
    fn take_pipes(&mut self) -> Result<Pipes, ExecutorError> {
        let pipe_error = |source| ExecutorError::Pipe {
            program: self.program.clone(),
            source,
        };
        let stdio = self
            .stdio
            .take()
            .ok_or_else(|| pipe_error(io::Error::other("streams already taken")))?;
        Ok(Pipes {
            stdin: ChildStdin::from_std(stdio.stdin.into()).map_err(pipe_error)?,
            stdout: ChildStdout::from_std(stdio.stdout.into()).map_err(pipe_error)?,
            stderr: ChildStderr::from_std(stdio.stderr.into()).map_err(pipe_error)?,
        })
    }

    /// Sends `signal` to every process in the group. Safe while the leader is unreaped.
    fn signal(&self, signal: Signal) {
        if !self.unreaped {
            return;
        }
        match killpg(self.leader, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                warn!(pid = self.pid(), %signal, %error, "failed to signal process group")
            }
        }
    }

    /// Kills (`SIGKILL`) the leader's descendants, all of them or only those that left its
    /// process group (`escaped_only`), until none is left (a process may fork while it is
    /// being killed; its children are re-parented to the leader when the leader is a
    /// subreaper). The leader itself is left alone. Review M5: a `setsid` process started by a
    /// job outlived it and stole the next job's secrets.
    ///
    /// Returns whether a last look found none left (`false`: `/proc` could not be read, the
    /// leader was already reaped, or processes kept appearing).
    async fn kill_descendants(&self, escaped_only: bool) -> bool {
        if !self.unreaped {
            return false;
        }
        for _ in 0..KILL_ROUNDS {
            let Some(all) = descendants(self.leader) else {
                return false;
            };
            let found: Vec<Pid> = all
                .into_iter()
                .filter(|&(_, pgid)| !escaped_only || pgid != self.leader)
                .map(|(pid, _)| pid)
                .collect();
            if found.is_empty() {
                return true;
            }
            debug!(
                leader = self.pid(),
                count = found.len(),
                "killing leftover processes"
            );
            for pid in found {
                match nix::sys::signal::kill(pid, Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(error) => {
                        warn!(pid = pid.as_raw(), %error, "cannot kill a leftover process")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        warn!(
            leader = self.pid(),
            "leftover processes keep appearing; giving up"
        );
        false
    }

    /// Lets the leader run on and end by itself (reaped by a thread of its own when it does):
    /// the guard no longer kills anything.
    fn release(&mut self) {
        if !self.unreaped {
            return;
        }
        self.unreaped = false;
        let leader = self.leader;
        let reaper = std::thread::Builder::new()
            .name("runnel-reaper".to_owned())
            .spawn(move || spawn::reap(leader, true));
        if let Err(error) = reaper {
            warn!(pid = self.pid(), %error, "failed to start a reaper thread");
        }
    }

    /// Collects the leader's exit status. Call only once the leader has exited.
    fn reap(&mut self) -> Result<ExitStatus, ExecutorError> {
        let pid = self.pid();
        let reap_error = |source| ExecutorError::Reap {
            program: self.program.clone(),
            pid,
            source,
        };
        if !self.unreaped {
            return Err(reap_error(io::Error::other("already reaped")));
        }
        self.unreaped = false;
        spawn::reap(self.leader, true)
            .and_then(|status| status.ok_or_else(|| io::Error::other("still running")))
            .map_err(reap_error)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Dropped unreaped (a session never closed, such as a shell that waited for a job
        // the runner did not get): what left the group goes first, while the leader (their
        // subreaper, if it is one) still holds them. One look: nothing here may wait.
        if self.unreaped
            && let Some(all) = descendants(self.leader)
        {
            for (pid, pgid) in all {
                if pgid != self.leader
                    && let Err(error) = nix::sys::signal::kill(pid, Signal::SIGKILL)
                {
                    debug!(pid = pid.as_raw(), %error, "cannot kill a leftover process");
                }
            }
        }
        self.signal(Signal::SIGKILL);
        if !self.unreaped {
            return;
        }
        self.unreaped = false;
        let leader = self.leader;
        if let Ok(Some(_)) = spawn::reap(leader, false) {
            return;
        }
        // SIGKILL is pending: the leader exits momentarily. Reap it off this thread so an async
        // caller is never blocked, even by a process stuck in uninterruptible sleep.
        let reaper = std::thread::Builder::new()
            .name("runnel-reaper".to_owned())
            .spawn(move || spawn::reap(leader, true));
        if let Err(error) = reaper {
            warn!(pid = self.pid(), %error, "failed to start a reaper thread");
        }
    }
}

/// Rounds of [`ProcessGroup::kill_descendants`] before it gives up.
const KILL_ROUNDS: usize = 50;

/// Every live descendant of `root` with its process group (zombies are skipped: they run
/// nothing). `None` when `/proc` cannot be read.
///
/// The tree is walked down from `root` through each thread's `children` list
/// (`/proc/<pid>/task/<tid>/children`), which reads only the job's own processes; a kernel
/// without those lists (`CONFIG_PROC_CHILDREN`) has every process's `stat` read instead.
fn descendants(root: Pid) -> Option<Vec<(Pid, Pid)>> {
    let Some(children) = children_of(root) else {
        return descendants_by_scan(root);
    };
    let mut found: Vec<(Pid, Pid)> = Vec::new();
    let mut frontier = children;
    while let Some(pid) = frontier.pop() {
        if pid == root || found.iter().any(|&(p, _)| p == pid) {
            continue;
        }
        // Gone meanwhile: nothing to kill, and its children went to `root`'s list.
        let Some((state, _, pgrp)) = stat_of(pid) else {
            continue;
        };
        if state == "Z" {
            continue;
        }
        found.push((pid, pgrp));
        frontier.extend(children_of(pid).unwrap_or_default());
    }
    Some(found)
}

/// The children of every thread of `pid`; `None` when its task list or a `children` file
/// cannot be read.
fn children_of(pid: Pid) -> Option<Vec<Pid>> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).ok()?;
        children.extend(
            text.split_ascii_whitespace()
                .filter_map(|field| field.parse::<i32>().ok())
                .map(Pid::from_raw),
        );
    }
    Some(children)
}

/// `(state, ppid, pgrp)` from `/proc/<pid>/stat`.
fn stat_of(pid: Pid) -> Option<(String, Pid, Pid)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// `(state, ppid, pgrp)` from the text of a `stat` file: `pid (comm) state ppid pgrp …`, where
/// comm may contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(String, Pid, Pid)> {
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest)?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse::<i32>().ok()?;
    let pgrp = fields.next()?.parse::<i32>().ok()?;
    Some((state.to_owned(), Pid::from_raw(ppid), Pid::from_raw(pgrp)))
}

/// [`descendants`] from every process's `/proc/<pid>/stat`.
fn descendants_by_scan(root: Pid) -> Option<Vec<(Pid, Pid)>> {
    let mut parents: Vec<(Pid, Pid, Pid)> = Vec::new();
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, ppid, pgrp)) = parse_stat(&stat)
            && state != "Z"
        {
            parents.push((Pid::from_raw(pid), ppid, pgrp));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, pgrp) in &parents {
            if ppid == parent && pid != root && !found.iter().any(|&(p, _)| p == pid) {
                found.push((pid, pgrp));
                frontier.push(pid);
            }
        }
    }
    Some(found)
}

/// The child's standard streams, on the runtime.
struct Pipes {
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl Pipes {
    /// Writes `input` to stdin (then closes it) while streaming stdout and stderr into `sink`.
    async fn transfer(
        self,
        group: &ProcessGroup,
        input: &[u8],
        sink: &dyn OutputSink,
    ) -> Result<(), ExecutorError> {
        let (written, out, err) = tokio::join!(
            write_stdin(self.stdin, input),
            pump(self.stdout, OutputStream::Stdout, sink),
            pump(self.stderr, OutputStream::Stderr, sink),
        );
        let read_error = |stream| {
            move |source| ExecutorError::ReadOutput {
                program: group.program.clone(),
                pid: group.pid(),
                stream,
                source,
            }
        };
        out.map_err(read_error(OutputStream::Stdout))?;
        err.map_err(read_error(OutputStream::Stderr))?;
        written.map_err(|source| ExecutorError::WriteStdin {
            program: group.program.clone(),
            pid: group.pid(),
            source,
        })
    }
}

/// Writes everything and closes stdin. A child that exits without reading all of it (a script
/// that ends with `exit`) is not an error.
async fn write_stdin(mut stdin: ChildStdin, input: &[u8]) -> io::Result<()> {
    match stdin.write_all(input).await {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// Copies one stream into the sink chunk by chunk, as the bytes arrive, until end of file.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: OutputStream,
    sink: &dyn OutputSink,
) -> io::Result<()> {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let read = reader.read(&mut buf).await?;
        let Some(chunk) = buf.get(..read).filter(|chunk| !chunk.is_empty()) else {
            return Ok(());
        };
        sink.write(stream, chunk);
    }
}

/// Observes child exits without reaping them, woken by `SIGCHLD`.
#[derive(Debug)]
struct ExitWatch {
    sigchld: tokio::signal::unix::Signal,
}

impl ExitWatch {
    /// Subscribes to `SIGCHLD`; do it before spawning so no exit goes unnoticed.
    fn new() -> Result<Self, ExecutorError> {
        let sigchld =
            signal(SignalKind::child()).map_err(|source| ExecutorError::WatchExits { source })?;
        Ok(ExitWatch { sigchld })
    }

    /// Returns once `pid` has exited (it stays a zombie until reaped).
    async fn exited(&mut self, pid: Pid) {
        while !has_exited(pid) {
            if self.sigchld.recv().await.is_none() {
                // The signal driver is gone (runtime shutting down): nothing will wake us.
                pending::<()>().await;
            }
        }
    }
}

/// Whether `pid` (a child of ours) has exited, without reaping it.
fn has_exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => return false,
            Err(Errno::EINTR) => {}
            // Exited, or no longer our child to wait for (ECHILD): either way it is gone.
            Ok(_) | Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk down the `children` lists finds what a scan of every process finds: the
    /// whole tree (grandchildren too) with process groups, nothing else.
    #[test]
    fn the_children_walk_finds_the_tree_a_full_scan_finds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("ready");
        let script = format!(
            "sleep 60 & (setsid sleep 60 & sleep 60 & wait) & sleep 0.1; touch '{}'; wait",
            ready.display()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("spawn sh");
        while !ready.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        #[allow(clippy::cast_possible_wrap)]
        let root = Pid::from_raw(child.id() as i32);
        let mut walked = descendants(root).expect("walk");
        let mut scanned = descendants_by_scan(root).expect("scan");
        for pid in walked.iter().map(|&(pid, _)| pid) {
            nix::sys::signal::kill(pid, Signal::SIGKILL).ok();
        }
        child.wait().ok();
        walked.sort();
        scanned.sort();
        // The subshell and three sleeps; one sleep in a session (and group) of its own.
        assert_eq!(walked.len(), 4, "{walked:?}");
        assert_eq!(walked, scanned);
        assert!(walked.iter().any(|&(pid, pgrp)| pid == pgrp), "{walked:?}");
        assert_eq!(descendants(Pid::from_raw(i32::MAX)), Some(Vec::new()));
    }

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560";
        assert_eq!(
            parse_stat(stat),
            Some(("S".to_owned(), Pid::from_raw(1), Pid::from_raw(4242)))
        );
        assert_eq!(parse_stat("4242 (x"), None);
    }

    /// A spec for `program` with `args` and nothing else.
    fn command<'a>(program: &'a str, args: &'a [&'a str]) -> ProcessSpec<'a> {
        ProcessSpec {
            program,
            args,
            cwd: None,
            env: &[],
            stdin: &[],
        }
    }

    /// Starts `spec` as a group leader, closes its stdin, and returns its stdout and exit.
    fn output_of(spec: &ProcessSpec<'_>, subreaper: bool) -> (String, ExitStatus) {
        use std::io::Read as _;

        let mut group = ProcessGroup::spawn_with(spec, subreaper).expect("starts");
        let stdio = group.stdio.take().expect("pipes");
        drop(stdio.stdin);
        let mut stdout = String::new();
        std::fs::File::from(stdio.stdout)
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let status = group.reap().expect("reaped");
        (stdout, status)
    }

    fn spawn_error(spec: &ProcessSpec<'_>, subreaper: bool) -> (String, Option<i32>) {
        match ProcessGroup::spawn_with(spec, subreaper) {
            Err(ExecutorError::Spawn {
                program, source, ..
            }) => (program, source.raw_os_error()),
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }

    /// The leader leads a new process group in the runner's session, as our child, and has
    /// none of our pipe ends: with its stdin closed, `cat` ends.
    #[test]
    fn the_leader_leads_its_own_process_group() {
        for subreaper in [false, true] {
            let mut group =
                ProcessGroup::spawn_with(&command("cat", &[]), subreaper).expect("cat starts");
            let leader = group.leader;
            assert_eq!(nix::unistd::getpgid(Some(leader)), Ok(leader));
            assert_eq!(nix::unistd::getsid(Some(leader)), nix::unistd::getsid(None));
            let (_, ppid, pgrp) = stat_of(leader).expect("stat of the leader");
            assert_eq!((ppid, pgrp), (nix::unistd::getpid(), leader));
            drop(group.stdio.take());
            let status = group.reap().expect("reaped");
            assert_eq!(status.code(), Some(0), "subreaper {subreaper}");
        }
    }

    /// With `subreaper` an orphaned grandchild is re-parented to the leader; without, it is
    /// not. (The session test of review M5 relies on this.)
    #[test]
    fn only_a_subreaper_leader_adopts_orphans() {
        use std::io::BufRead as _;

        let script = "sh -c 'sleep 30 </dev/null >/dev/null 2>&1 & echo $!'; echo $$; exec cat";
        for subreaper in [false, true] {
            let mut group = ProcessGroup::spawn_with(&command("sh", &["-c", script]), subreaper)
                .expect("sh starts");
            let stdio = group.stdio.take().expect("pipes");
            let mut lines = std::io::BufReader::new(std::fs::File::from(stdio.stdout)).lines();
            let mut pid = || -> Pid {
                let line = lines.next().expect("a line").expect("readable");
                Pid::from_raw(line.trim().parse().expect("a pid"))
            };
            let (orphan, shell) = (pid(), pid());
            let parent = stat_of(orphan).map(|(_, ppid, _)| ppid);
            nix::sys::signal::kill(orphan, Signal::SIGKILL).ok();
            assert_eq!(shell, group.leader);
            assert_eq!(
                parent == Some(group.leader),
                subreaper,
                "subreaper {subreaper}: the orphan's parent is {parent:?}, the leader {shell}"
            );
        }
    }

    #[test]
    fn working_directory_and_environment_reach_the_child() {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = [("RUNNEL_SPAWN_TEST".to_owned(), "a value".to_owned())];
        let script = r#"pwd -P; printf '%s\n' "$RUNNEL_SPAWN_TEST" "$HOME""#;
        let expected = format!(
            "{}\na value\n{}\n",
            dir.path().canonicalize().expect("canonical").display(),
            std::env::var("HOME").unwrap_or_default()
        );
        let args = ["-c", script];
        for subreaper in [false, true] {
            let spec = ProcessSpec {
                cwd: Some(dir.path()),
                env: &env,
                ..command("sh", &args)
            };
            let (stdout, status) = output_of(&spec, subreaper);
            assert_eq!(stdout, expected, "subreaper {subreaper}");
            assert!(status.success());
        }
    }

    /// The program is looked up on the `PATH` the child gets, as `execvp` does: a directory
    /// holding a file of that name that is not executable is passed over.
    #[test]
    fn the_program_is_found_on_the_childs_path() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};

        let dirs = [
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        ];
        let name = "runnel-spawn-echo";
        let plain = dirs[0].path().join(name);
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        symlink("/bin/echo", dirs[1].path().join(name)).expect("symlink");
        let path = format!("{}:{}", dirs[0].path().display(), dirs[1].path().display());
        let env = [("PATH".to_owned(), path)];
        for subreaper in [false, true] {
            let spec = ProcessSpec {
                env: &env,
                ..command(name, &["found"])
            };
            let (stdout, status) = output_of(&spec, subreaper);
            assert_eq!(stdout, "found\n", "subreaper {subreaper}");
            assert!(status.success());
        }
    }

    #[test]
    fn a_missing_program_is_enoent_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing_dir = dir.path().join("missing");
        for subreaper in [false, true] {
            let (program, errno) = spawn_error(&command("runnel-no-such-program", &[]), subreaper);
            assert_eq!(program, "runnel-no-such-program");
            assert_eq!(errno, Some(libc::ENOENT));
            let (program, errno) = spawn_error(&command("/nonexistent/runnel", &[]), subreaper);
            assert_eq!(program, "/nonexistent/runnel");
            assert_eq!(errno, Some(libc::ENOENT));
            let spec = ProcessSpec {
                cwd: Some(&missing_dir),
                ..command("true", &[])
            };
            match ProcessGroup::spawn_with(&spec, subreaper) {
                Err(ExecutorError::Spawn { cwd, source, .. }) => {
                    assert_eq!(cwd.as_deref(), Some(missing_dir.as_path()));
                    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
                }
                other => panic!("expected a spawn error, got {other:?}"),
            }
        }
    }

    /// Root too: `execve` needs an execute bit.
    #[test]
    fn a_file_that_is_not_executable_is_eacces() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().expect("temp dir");
        let name = "runnel-plain-file";
        let file = dir.path().join(name);
        std::fs::write(&file, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let file = file.to_str().expect("utf-8 path");
        let env = [(
            "PATH".to_owned(),
            format!("{}:/nonexistent", dir.path().display()),
        )];
        for subreaper in [false, true] {
            let (program, errno) = spawn_error(&command(file, &[]), subreaper);
            assert_eq!((program.as_str(), errno), (file, Some(libc::EACCES)));
            let on_path = ProcessSpec {
                env: &env,
                ..command(name, &[])
            };
            let (program, errno) = spawn_error(&on_path, subreaper);
            assert_eq!((program.as_str(), errno), (name, Some(libc::EACCES)));
        }
    }

    /// `SigBlk` and `SigIgn` of `/proc/<pid>/status` text.
    fn signal_masks(status: &str) -> (u64, u64) {
        let mask = |field: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {field} in {status}"))
        };
        (mask("SigBlk:"), mask("SigIgn:"))
    }

    /// The child starts with no signal blocked, whatever the starting thread blocks, and with
    /// `SIGPIPE` (which std ignores in the runner) and `SIGCHLD` (which the runner catches) at
    /// their defaults; other ignored signals stay ignored, as with std.
    #[tokio::test]
    async fn the_child_starts_with_default_signal_handling() {
        use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

        let _sigchld_caught = ExitWatch::new().expect("watch SIGCHLD");
        let bit = |signal: Signal| 1_u64 << (signal as u32 - 1);
        let ours = std::fs::read_to_string("/proc/self/status").expect("our status");
        let (_, ignored) = signal_masks(&ours);
        assert_ne!(ignored & bit(Signal::SIGPIPE), 0, "std ignores SIGPIPE");

        let blocked = SigSet::from_iter([Signal::SIGUSR1, Signal::SIGTERM]);
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut previous)).expect("block");
        let outputs = [false, true]
            .map(|subreaper| output_of(&command("cat", &["/proc/self/status"]), subreaper));
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None).expect("restore");

        for (stdout, status) in outputs {
            assert!(status.success());
            let (child_blocked, child_ignored) = signal_masks(&stdout);
            assert_eq!(child_blocked, 0, "{stdout}");
            assert_eq!(child_ignored, ignored & !bit(Signal::SIGPIPE), "{stdout}");
            assert_eq!(child_ignored & bit(Signal::SIGCHLD), 0);
        }
    }
}
