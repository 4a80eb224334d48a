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
use std::process::{Child, ExitStatus, Stdio};
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
    /// `None` once reaped.
    child: Option<Child>,
    /// The leader's pid, which is also the process group id.
    leader: Pid,
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
    fn spawn_with(spec: &ProcessSpec<'_>, subreaper: bool) -> Result<Self, ExecutorError> {
        use std::os::unix::process::CommandExt;

        let mut command = std::process::Command::new(spec.program);
        if subreaper {
            // SAFETY: the closure runs in the forked child before `exec` and only makes the
            // `prctl` system call, which is async-signal-safe; it touches no memory of the
            // parent and does not allocate.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
                });
            }
        }
        command
            .args(spec.args)
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(cwd) = spec.cwd {
            command.current_dir(cwd);
        }
        let child = command.spawn().map_err(|source| ExecutorError::Spawn {
            program: spec.program.to_owned(),
            cwd: spec.cwd.map(Path::to_path_buf),
            source,
        })?;
        // std got the id from a `pid_t`, so it converts back losslessly.
        #[allow(clippy::cast_possible_wrap)]
        let leader = Pid::from_raw(child.id() as i32);
        Ok(ProcessGroup {
            child: Some(child),
            leader,
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
        let missing = || io::Error::other("stream was not piped");
        let child = self.child.as_mut().ok_or_else(|| pipe_error(missing()))?;
        let stdin = child.stdin.take().ok_or_else(missing);
        let stdout = child.stdout.take().ok_or_else(missing);
        let stderr = child.stderr.take().ok_or_else(missing);
        Ok(Pipes {
            stdin: stdin.and_then(ChildStdin::from_std).map_err(pipe_error)?,
            stdout: stdout.and_then(ChildStdout::from_std).map_err(pipe_error)?,
            stderr: stderr.and_then(ChildStderr::from_std).map_err(pipe_error)?,
        })
    }

    /// Sends `signal` to every process in the group. Safe while the leader is unreaped.
    fn signal(&self, signal: Signal) {
        if self.child.is_none() {
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
        if self.child.is_none() {
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
        let Some(mut child) = self.child.take() else {
            return;
        };
        let reaper = std::thread::Builder::new()
            .name("runnel-reaper".to_owned())
            .spawn(move || child.wait());
        if let Err(error) = reaper {
            warn!(pid = self.pid(), %error, "failed to start a reaper thread");
        }
    }

    /// Collects the leader's exit status. Call only once the leader has exited.
    fn reap(&mut self) -> Result<ExitStatus, ExecutorError> {
        let pid = self.pid();
        let Some(mut child) = self.child.take() else {
            return Err(ExecutorError::Reap {
                program: self.program.clone(),
                pid,
                source: io::Error::other("already reaped"),
            });
        };
        child.wait().map_err(|source| ExecutorError::Reap {
            program: self.program.clone(),
            pid,
            source,
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Dropped unreaped (a session never closed, such as a shell that waited for a job
        // the runner did not get): what left the group goes first, while the leader (their
        // subreaper, if it is one) still holds them. One look: nothing here may wait.
        if self.child.is_some()
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
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SIGKILL is pending: the leader exits momentarily. Reap it off this thread so an async
        // caller is never blocked, even by a process stuck in uninterruptible sleep.
        let reaper = std::thread::Builder::new()
            .name("runnel-reaper".to_owned())
            .spawn(move || child.wait());
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
}
