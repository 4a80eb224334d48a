//! A shell session: one shell process that runs a job's stage scripts one after another.
//!
//! Starting a login shell is the largest fixed cost of a stage (`bash -l` reads the profile,
//! which often runs `id -u` and more). A [`Session`] starts the shell once per job and feeds it
//! one stage at a time on stdin, each stage in its own subshell:
//!
//! ```text
//! { (
//! <stage script>
//! ) </dev/null
//! printf '\000RUNNEL-<nonce>:%d\000' "$?"; printf '\000RUNNEL-<nonce>\000' >&2
//! }
//! ```
//!
//! How the script reaches the shell is a [`ScriptDelivery`]. On stdin, as the official runner
//! does, the shell must read its input one byte per `read` call (input from a pipe cannot be
//! put back for the commands that share it), which for the few kilobytes of a stage script
//! costs more CPU than the rest of a trivial job's shell work. With [`ScriptDelivery::Memory`]
//! each stage script is written to an anonymous in-memory file of the runner's (closed when
//! the stage ends) and stdin only carries `( . /proc/<runner pid>/fd/<n> ) </dev/null`,
//! which the shell reads in one go. The stage runs as it would from stdin, except that bash's
//! own error messages name that path where they would name `bash` (as they named the script
//! file before); nothing of the script is ever on a disk.
//!
//! The subshell keeps the stages apart as separate shells did (variables, `cd`, traps, `exit`
//! only end the stage), and `$?` is the stage's exit status. The two markers come after
//! everything the stage's processes wrote, because the shell writes them once the subshell has
//! exited, so the runner knows where a stage's output ends on both streams without closing them;
//! the markers are removed from the output. The nonce is random per stage, so output cannot
//! end a stage by chance. The shell then waits on stdin for the next stage; the runner decides
//! in between what comes next, as with separate shells.
//!
//! Runnel's own housekeeping stages need no subshell: [`Session::run_inline`] runs commands
//! that leave the shell as they found it in a brace group instead (`{ . '<file>'\n}
//! </dev/null`), with the same markers, so such a stage costs no fork of the shell.
//!
//! The stage must not learn the nonce (it could then end itself early with a forged status,
//! or make the runner wait for a marker's end). The braces make the shell read the whole
//! input, trailer included, before it starts the subshell, so while the stage runs nothing of
//! the nonce is left unread in the shell's stdin (where the stage could read it through
//! `/proc/$$/fd/0`), in a file, in an argument or in the environment: it exists only in the
//! runner and in the shell's parsed command. A process of the job's user that reads the shell's
//! memory (ptrace, `/proc/<pid>/mem`, which Yama's `ptrace_scope` 1 forbids to descendants) can
//! still find it; what it gains is ending its own stage with a status of its choice, which
//! `exit` gives it anyway. Parsing is bounded whatever the output holds: bytes that cannot
//! start a marker are passed on at once, and a marker's status must end within
//! [`MAX_STATUS`] bytes or the stage fails with a protocol error.
//!
//! A stage that is cancelled or times out takes the whole session down (the process group is
//! stopped as [`super::run`] stops it); so does a shell that exits on its own. The caller then
//! starts a new session for the next stage. Processes a stage leaves in the background stay in
//! the session's process group until the session ends, as they would under the official runner
//! until the job ends; [`Session::close`] kills them. The shell is the child subreaper of
//! everything the stages start, so processes that leave its process group (`setsid`, double
//! forks) are still its descendants and are killed too (review M5), unless the shell itself is
//! killed first (a stage that kills its own shell). Processes that change user (`su`,
//! setuid programs) cannot be signalled by the runner's user.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::pin::pin;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::time::timeout;
use tracing::{debug, warn};

use super::{End, ExitWatch, KillPolicy, ProcessGroup, ProcessSpec, StopWhen, stage_exit};
use super::{READ_CHUNK, terminate, until};
use crate::{ExecutorError, OutputSink, OutputStream, StageExit};

/// How a [`Session`] hands each stage script to its shell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScriptDelivery {
    /// The whole script on stdin, as the official runner sends it.
    #[default]
    Stdin,
    /// The script in an anonymous in-memory file of the runner's (`memfd_create`), which the
    /// shell sources through `/proc/<runner pid>/fd/<n>`: no file on any filesystem, nothing
    /// to remove after a crash, and the shell reads it in one go. Needs the shell to run as
    /// the runner's own user (only that user may open the runner's descriptors). Where the
    /// kernel has no `memfd_create`, or `/proc` does not show the runner under its pid, the
    /// stage goes on stdin.
    Memory,
}

/// A running shell that accepts stage scripts; see the module documentation.
#[derive(Debug)]
pub struct Session {
    group: ProcessGroup,
    watch: ExitWatch,
    stdin: Option<ChildStdin>,
    stdout: Marked<ChildStdout>,
    stderr: Marked<ChildStderr>,
    /// `\0RUNNEL-<nonce>`: the start of both markers of the current stage (a new nonce per
    /// stage).
    marker: Vec<u8>,
    /// The extra environment of the shell: what it was started with, then what
    /// [`Session::export`] exported in it.
    env: Vec<(String, String)>,
    /// The `export` commands the next stage's input starts with.
    pending_exports: String,
    alive: bool,
    /// How stage scripts reach the shell.
    delivery: ScriptDelivery,
    /// Whether the shell has been sent [`END_FUNCTION`] (with the first stage's input).
    end_defined: bool,
    /// Whether the session ended only through [`Session::close`] with its shell alive and no
    /// descendant left (see [`Session::close`]).
    contained: bool,
}

impl Session {
    /// Starts the shell described by `spec` (its `stdin` is ignored: stages come through
    /// [`Session::run`]) and reports its process group to `sink`.
    pub fn start(
        spec: &ProcessSpec<'_>,
        delivery: ScriptDelivery,
        sink: &dyn OutputSink,
    ) -> Result<Self, ExecutorError> {
        let watch = ExitWatch::new()?;
        let mut group = ProcessGroup::spawn_with(spec, true)?;
        let pipes = group.take_pipes()?;
        // Room for a burst of output while the runner is busy with the last one, so a
        // chatty job keeps running instead of blocking on a full 64 KiB pipe.
        grow_pipe(&pipes.stdout);
        grow_pipe(&pipes.stderr);
        debug!(
            program = spec.program,
            pid = group.pid(),
            "started shell session"
        );
        sink.process_group_started(group.pid());
        Ok(Session {
            group,
            watch,
            stdin: Some(pipes.stdin),
            stdout: Marked::new(pipes.stdout),
            stderr: Marked::new(pipes.stderr),
            marker: Vec::new(),
            env: spec.env.to_vec(),
            pending_exports: String::new(),
            alive: true,
            delivery,
            end_defined: false,
            contained: true,
        })
    }

    /// The shell's process id (its process group's id).
    pub fn pid(&self) -> u32 {
        self.group.pid()
    }

    /// Whether the next stage can run in this session (the shell is still waiting for input).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// [`Session::is_alive`], and the shell has not exited meanwhile (a shell that waited
    /// for its job may have been killed, or may have ended its profile with `exit`).
    pub fn shell_running(&self) -> bool {
        self.alive && !super::has_exited(self.group.leader)
    }

    /// The extra environment of the shell: what it was started with, then what
    /// [`Session::export`] exported in it.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Exports `vars` in the shell, for the stages that follow and everything they start, as
    /// if the shell had been started with them in its environment (but its profile has run
    /// without them, and the shell's own `/proc/<pid>/environ` does not show them). The
    /// `export` commands go ahead of the next stage. This is how a shell started before its
    /// job was known gets the job's environment. A key that is not a shell variable name is
    /// refused.
    pub fn export(&mut self, vars: &[(String, String)]) -> Result<(), ExecutorError> {
        for (key, value) in vars {
            let mut chars = key.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ExecutorError::WriteStdin {
                    program: self.group.program.clone(),
                    pid: self.group.pid(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{key:?} is not a shell variable name"),
                    ),
                });
            }
            let quoted = value.replace('\'', "'\\''");
            self.pending_exports
                .push_str(&format!("export {key}='{quoted}'\n"));
            self.env.push((key.clone(), value.clone()));
        }
        Ok(())
    }

    /// Runs one stage script in a subshell of the session, streaming its output into `sink`,
    /// and returns how it ended. Stopping (cancellation, deadline) works as in [`super::run`]
    /// and ends the session; so does the shell exiting.
    pub async fn run(
        &mut self,
        script: &str,
        sink: &dyn OutputSink,
        stop: StopWhen<'_>,
        policy: &KillPolicy,
    ) -> Result<StageExit, ExecutorError> {
        self.run_stage(Stage::Isolated(script), sink, stop, policy)
            .await
    }

    /// Runs `housekeeping` as one stage in the session's shell itself, without the subshell
    /// [`Session::run`] starts: no process of its own, and the same output, status and
    /// stopping. Only for Runnel's own commands that leave the shell as they found it (no
    /// variable, option, trap, directory change, input read or `exit`), such as
    /// `runnel_job::PlannedStage::inline`; anything else would reach the later stages.
    pub async fn run_inline(
        &mut self,
        housekeeping: &str,
        sink: &dyn OutputSink,
        stop: StopWhen<'_>,
        policy: &KillPolicy,
    ) -> Result<StageExit, ExecutorError> {
        self.run_stage(Stage::Inline(housekeeping), sink, stop, policy)
            .await
    }

    async fn run_stage(
        &mut self,
        stage: Stage<'_>,
        sink: &dyn OutputSink,
        stop: StopWhen<'_>,
        policy: &KillPolicy,
    ) -> Result<StageExit, ExecutorError> {
        if !self.alive {
            return Err(self.closed_error());
        }
        // The script's in-memory file stays open until the stage is over, however it ends.
        let (input, _script_file) = self.stage_input(stage);
        let pid = self.group.pid();
        let (end, reported) = {
            let Session {
                group,
                watch,
                stdin,
                stdout,
                stderr,
                marker,
                ..
            } = self;
            let program = group.program.clone();
            let leader = group.leader;
            let marker: &[u8] = marker;
            let io = async {
                let write = async {
                    match stdin.as_mut() {
                        Some(stdin) => match stdin.write_all(&input).await {
                            // The shell is gone; its end shows on the output streams.
                            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                            result => result,
                        },
                        None => Ok(()),
                    }
                };
                let (written, out, err) = tokio::join!(
                    write,
                    stdout.until_marker(marker, OutputStream::Stdout, sink),
                    stderr.until_marker(marker, OutputStream::Stderr, sink),
                );
                let read_error = |stream| {
                    let program = program.clone();
                    move |source| ExecutorError::ReadOutput {
                        program,
                        pid,
                        stream,
                        source,
                    }
                };
                let out = out.map_err(read_error(OutputStream::Stdout))?;
                let err = err.map_err(read_error(OutputStream::Stderr))?;
                written.map_err(|source| ExecutorError::WriteStdin {
                    program: program.clone(),
                    pid,
                    source,
                })?;
                Ok::<_, ExecutorError>(out.zip(err).map(|(status, _)| status))
            };
            let mut io = pin!(io);
            let ended = tokio::select! {
                biased;
                result = &mut io => Ended::Io(result),
                () = watch.exited(leader) => Ended::ShellExited,
                () = stop.cancel.cancelled() => Ended::Stopped(End::Cancelled),
                () = until(stop.deadline) => Ended::Stopped(End::TimedOut),
            };
            // What the shell said about the stage, if it got that far, and why the session ends.
            match ended {
                Ended::Io(Ok(Some(payload))) => match parse_status(&payload) {
                    Some(code) => return Ok(StageExit::Exited(code)),
                    None => (
                        Err(ExecutorError::ReadOutput {
                            program: program.clone(),
                            pid,
                            stream: OutputStream::Stdout,
                            source: io::Error::other("malformed stage status from the shell"),
                        }),
                        None,
                    ),
                },
                Ended::Io(Err(error)) => (Err(error), None),
                // Both streams closed without a marker: the shell is exiting.
                Ended::Io(Ok(None)) => {
                    let end = tokio::select! {
                        biased;
                        () = watch.exited(leader) => End::Exited,
                        () = stop.cancel.cancelled() => End::Cancelled,
                        () = until(stop.deadline) => End::TimedOut,
                    };
                    match end {
                        End::Exited => (Ok(end), None),
                        _ => {
                            group.kill_descendants(true).await;
                            (terminate(group, watch, policy).await.map(|()| end), None)
                        }
                    }
                }
                Ended::ShellExited => {
                    group.signal(Signal::SIGKILL);
                    let drained = timeout(policy.drain, &mut io).await;
                    (Ok(End::Exited), drained.ok().and_then(Result::ok).flatten())
                }
                Ended::Stopped(end) => {
                    debug!(pid, reason = ?end, "stopping shell session");
                    // Processes that left the group get no SIGTERM; kill them while the shell
                    // (their subreaper) is still there to hold them.
                    group.kill_descendants(true).await;
                    match terminate(group, watch, policy).await {
                        Ok(()) => {
                            group.signal(Signal::SIGKILL);
                            // Keep what the stage printed before it was stopped.
                            if timeout(policy.drain, &mut io).await.is_err() {
                                warn!(pid, "output still open after the shell session was killed");
                            }
                            (Ok(end), None)
                        }
                        Err(error) => (Err(error), None),
                    }
                }
            }
        };
        // The session ends here, not through `close`: what the stage started may have left
        // the shell's tree (a killed shell's orphans go to init).
        self.contained = false;
        let end = match end {
            Ok(end) => end,
            Err(error) => {
                self.shut_down().await;
                return Err(error);
            }
        };
        // The session is over: kill what the stages left behind and reap the shell.
        self.alive = false;
        // Before stdin closes: at end of input the shell exits, and what it held as subreaper
        // would go to init.
        self.group.kill_descendants(false).await;
        self.stdin = None;
        self.group.signal(Signal::SIGKILL);
        let status = self.group.reap()?;
        debug!(pid, %status, "shell session ended");
        Ok(match end {
            // The stage finished just as the shell went away: its own status counts.
            End::Exited => reported
                .as_deref()
                .and_then(parse_status)
                .map_or_else(|| stage_exit(status), StageExit::Exited),
            End::Cancelled => StageExit::Cancelled,
            End::TimedOut => StageExit::TimedOut,
        })
    }

    /// Ends the session without killing anything: the shell's input ends, so it exits once
    /// it has finished what it is doing (for a shell still reading its login profile, the
    /// profile), and it is reaped then. For a shell that must not be killed halfway through
    /// its profile, which could leave the profile's lock files behind.
    pub fn release(mut self) {
        self.alive = false;
        self.stdin = None;
        self.group.release();
    }

    /// Ends the session: kills the shell and anything the stages left behind, and reaps it.
    ///
    /// Returns whether the session is known to leave nothing behind: every stage ended with
    /// its marker (none was stopped, no shell exited), and the shell, the subreaper of all its
    /// stages started, was still alive when a look at its descendants found none left. While
    /// the shell lives every process a stage started is its descendant, and an idle shell
    /// starts none, so then no process of the session exists anywhere.
    pub async fn close(mut self) -> bool {
        self.shut_down().await;
        self.contained
    }

    async fn shut_down(&mut self) {
        if !self.alive {
            self.contained = false;
            return;
        }
        self.alive = false;
        // Between stages the shell only waits for input, so nothing is lost by killing it.
        // Everything the stages started goes first, also what left the process group (the
        // shell is their subreaper, so they are still its descendants), and before stdin
        // closes (at end of input the shell exits and would hand them to init).
        let none_left = self.group.kill_descendants(false).await;
        // The shell must still have been there (as subreaper) while that look was taken.
        let shell_lived = !super::has_exited(self.group.leader);
        self.contained &= none_left && shell_lived;
        self.stdin = None;
        self.group.signal(Signal::SIGKILL);
        let leader = self.group.leader;
        if timeout(KILL_WAIT, self.watch.exited(leader)).await.is_err() {
            warn!(
                pid = self.group.pid(),
                "shell session did not exit after SIGKILL"
            );
            return;
        }
        if let Err(error) = self.group.reap() {
            warn!(%error, "failed to reap the shell session");
        }
    }

    fn closed_error(&self) -> ExecutorError {
        ExecutorError::WriteStdin {
            program: self.group.program.clone(),
            pid: self.group.pid(),
            source: io::Error::new(io::ErrorKind::BrokenPipe, "the shell session has ended"),
        }
    }

    /// The text that runs `stage`, and the in-memory file holding its script, if any (to be
    /// kept open until the stage is over).
    fn stage_input(&mut self, stage: Stage<'_>) -> (Vec<u8>, Option<std::fs::File>) {
        let (script, open, close) = match stage {
            // A subshell keeps the stage's variables, `cd`, traps and `exit` to itself; the
            // session's own function is not the stage's to see.
            Stage::Isolated(script) => (script, ISOLATED_OPEN, ")"),
            // A brace group with its own stdin runs in the shell itself; what it leaves
            // behind is only the status.
            Stage::Inline(housekeeping) => (housekeeping, "{", "}"),
        };
        // A fresh nonce per stage. The marker is `\0RUNNEL-<hex>`.
        let nonce = nonce();
        self.marker = format!("\0RUNNEL-{nonce}").into_bytes();
        // The braces make the shell read everything up to `}` before it runs the stage, so the
        // trailer (and its nonce) is not left in the stdin pipe for the stage to read. The
        // shell reads its stdin (a pipe) one byte per system call, so what goes there is kept
        // short: the marker's `printf`s are a function defined once per session.
        let mut input = String::with_capacity(script.len() + 160);
        if !self.end_defined {
            input.push_str(END_FUNCTION);
            self.end_defined = true;
        }
        input.push_str(&std::mem::take(&mut self.pending_exports));
        input.push_str("{ ");
        let file = match self.delivery {
            ScriptDelivery::Memory if proc_shows_this_process() => match memory_file(script) {
                Ok(file) => Some(file),
                Err(error) => {
                    debug!(%error, "no in-memory file for the stage script; it goes on stdin");
                    None
                }
            },
            ScriptDelivery::Memory | ScriptDelivery::Stdin => None,
        };
        match &file {
            Some(file) => {
                // Digits only. (`.` reads the file in one go; the line break lets `}` close
                // the group.)
                input.push_str(&format!(
                    "{open} . /proc/{}/fd/{}\n{close} </dev/null\n",
                    std::process::id(),
                    std::os::fd::AsRawFd::as_raw_fd(file)
                ));
            }
            None => {
                input.push_str(open);
                input.push('\n');
                input.push_str(script);
                input.push('\n');
                input.push_str(close);
                input.push_str(" </dev/null\n");
            }
        }
        input.push_str(&format!("{END_FUNCTION_NAME} {nonce} \"$?\"\n}}\n"));
        (input.into_bytes(), file)
    }
}

/// The function that ends each stage: prints the stage's markers with its nonce (`$1`) and
/// status (`$2`), `\0RUNNEL-<nonce>:<status>\0` on stdout and `\0RUNNEL-<nonce>\0` on
/// stderr (printf spells the NUL as `\000`). Defined in the session's shell once, with the
/// first stage's input, instead of spelled out in every stage's.
const END_FUNCTION: &str = "__runnel_stage_end() { printf '\\000RUNNEL-%s:%d\\000' \"$1\" \"$2\"; printf '\\000RUNNEL-%s\\000' \"$1\" >&2; }\n";

/// [`END_FUNCTION`]'s name.
const END_FUNCTION_NAME: &str = "__runnel_stage_end";

/// How a stage's subshell opens: without the session's function, which a stage has no use
/// for and whose name a stage listing its functions (`declare -F`, `set`) would otherwise see.
const ISOLATED_OPEN: &str = "( unset -f __runnel_stage_end;";

/// A stage's text and how the session's shell runs it.
#[derive(Clone, Copy)]
enum Stage<'a> {
    /// A stage script, in a subshell ([`Session::run`]).
    Isolated(&'a str),
    /// Housekeeping, in the shell itself ([`Session::run_inline`]).
    Inline(&'a str),
}

/// Whether the shell can reach this process's descriptors as `/proc/<our pid>/fd/<n>`: not
/// where `/proc` belongs to another pid namespace (one entered without mounting its own
/// `/proc`). Checked once; without it stage scripts go on stdin.
fn proc_shows_this_process() -> bool {
    static SHOWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHOWS.get_or_init(|| {
        let shows = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|pid| pid.to_str()?.parse::<u32>().ok())
            == Some(std::process::id());
        if !shows {
            debug!("/proc does not show this process under its pid; stage scripts go on stdin");
        }
        shows
    })
}

/// `text` in a new anonymous in-memory file (closed on exec, so no child inherits it).
/// Synchronous: a stage script is a few kilobytes, less work than handing it to another
/// thread.
fn memory_file(text: &str) -> io::Result<std::fs::File> {
    use std::io::Write as _;
    let fd = nix::sys::memfd::memfd_create(c"runnel-stage", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    // Only the runner's user can reach the descriptor anyway; 0600 as a file would be.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    Ok(file)
}

/// How long to wait for a killed shell before leaving it to the drop guard.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What ended the wait for a stage.
enum Ended {
    /// Both markers arrived (`Some(status)`), or both streams closed (`None`).
    Io(Result<Option<Vec<u8>>, ExecutorError>),
    ShellExited,
    Stopped(End),
}

fn parse_status(payload: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(payload).ok()?;
    text.strip_prefix(':')?.parse().ok()
}

/// Output pipes hold this much before the job's writes block (Linux's default is 64 KiB;
/// 1 MiB is the default `pipe-max-size`, so no privilege is needed). Pages are only taken
/// while output waits in the pipe.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Best effort: a pipe that cannot grow keeps working at its default size.
fn grow_pipe(pipe: &impl std::os::fd::AsFd) {
    use nix::fcntl::{FcntlArg, fcntl};
    if let Err(error) = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        debug!(%error, "could not grow an output pipe");
    }
}

/// 128 random bits in hex, from the standard library's randomly keyed hasher.
fn nonce() -> String {
    let a = RandomState::new().hash_one(std::process::id());
    let b = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{a:016x}{b:016x}")
}

/// The longest status a marker carries (`:` and a decimal exit status; the shell's `$?` is at
/// most three digits). A longer one is a protocol error, so a marker cannot make the runner
/// hold output.
pub const MAX_STATUS: usize = 16;

/// A marker whose status did not end within [`MAX_STATUS`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed stage marker: its status is longer than {MAX_STATUS} bytes")]
pub struct OverlongStatus;

/// The pure part of reading a stream that carries stage markers: output goes on at once unless
/// it could be the start of the marker, and a marker is taken out with its status. Memory is
/// bounded by the last chunk pushed plus the marker and [`MAX_STATUS`].
#[derive(Debug, Default)]
pub struct MarkerScanner {
    /// Bytes pushed but not yet handed on: a possible marker start, or what followed a marker.
    pending: Vec<u8>,
}

impl MarkerScanner {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// Bytes held back (a possible marker start or what followed a marker).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Passes everything before a marker (or everything that cannot start one) to `emit`; takes
    /// a complete marker out and returns its status (what followed `marker` up to its closing
    /// NUL). `Ok(None)`: more input is needed.
    pub fn next(
        &mut self,
        marker: &[u8],
        emit: &mut dyn FnMut(&[u8]),
    ) -> Result<Option<Vec<u8>>, OverlongStatus> {
        let (out, found) = match find(&self.pending, marker) {
            Some(start) => (start, true),
            None => (
                self.pending.len() - partial_suffix(&self.pending, marker),
                false,
            ),
        };
        if out > 0 {
            if let Some(bytes) = self.pending.get(..out) {
                emit(bytes);
            }
            self.pending.drain(..out);
        }
        if !found {
            return Ok(None);
        }
        let rest = self.pending.get(marker.len()..).unwrap_or_default();
        let Some(end) = rest.iter().take(MAX_STATUS + 1).position(|&b| b == 0) else {
            return if rest.len() > MAX_STATUS {
                Err(OverlongStatus)
            } else {
                Ok(None)
            };
        };
        let status = rest.get(..end).unwrap_or_default().to_vec();
        self.pending.drain(..marker.len() + end + 1);
        Ok(Some(status))
    }

    /// At end of stream: everything still held back.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// An output stream that carries stage markers.
#[derive(Debug)]
struct Marked<R> {
    reader: R,
    scanner: MarkerScanner,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Marked<R> {
    fn new(reader: R) -> Self {
        Marked {
            reader,
            scanner: MarkerScanner::default(),
            eof: false,
        }
    }

    /// Hands output to `sink` until the next marker, which is consumed; returns what followed
    /// `marker` up to its closing NUL, or `None` at end of file.
    async fn until_marker(
        &mut self,
        marker: &[u8],
        stream: OutputStream,
        sink: &dyn OutputSink,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0; READ_CHUNK];
        loop {
            let mut emit = |bytes: &[u8]| sink.write(stream, bytes);
            if let Some(status) = self
                .scanner
                .next(marker, &mut emit)
                .map_err(io::Error::other)?
            {
                return Ok(Some(status));
            }
            if self.eof {
                let rest = self.scanner.finish();
                if !rest.is_empty() {
                    sink.write(stream, &rest);
                }
                return Ok(None);
            }
            let read = self.reader.read(&mut buf).await?;
            match buf.get(..read).filter(|chunk| !chunk.is_empty()) {
                Some(chunk) => self.scanner.push(chunk),
                None => self.eof = true,
            }
        }
    }
}

/// Where `needle` first occurs in `haystack` (SIMD search: every byte of a stage's output
/// passes through here).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(haystack, needle)
}

/// The length of the longest end of `bytes` that is a proper start of `marker`.
fn partial_suffix(bytes: &[u8], marker: &[u8]) -> usize {
    let longest = marker.len().saturating_sub(1).min(bytes.len());
    (1..=longest)
        .rev()
        .find(|&k| marker.get(..k).is_some_and(|start| bytes.ends_with(start)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_markers_are_held_back_only_when_they_could_be_one() {
        let marker = b"\0RUNNEL-ab";
        assert_eq!(partial_suffix(b"hello", marker), 0);
        assert_eq!(partial_suffix(b"hello\0", marker), 1);
        assert_eq!(partial_suffix(b"hello\0RUN", marker), 4);
        assert_eq!(partial_suffix(b"hello\0RUNX", marker), 0);
        assert_eq!(partial_suffix(b"\0RUNNEL-a", marker), 9);
        assert_eq!(find(b"xx\0RUNNEL-ab:0\0yy", marker), Some(2));
    }

    /// Feeds `chunks` to a scanner and returns what it emitted and every status it found.
    fn scan(marker: &[u8], chunks: &[&[u8]]) -> (Vec<u8>, Vec<Vec<u8>>, Option<OverlongStatus>) {
        let mut scanner = MarkerScanner::default();
        let (mut out, mut statuses) = (Vec::new(), Vec::new());
        for chunk in chunks {
            scanner.push(chunk);
            loop {
                match scanner.next(marker, &mut |b| out.extend_from_slice(b)) {
                    Ok(Some(status)) => statuses.push(status),
                    Ok(None) => break,
                    Err(error) => return (out, statuses, Some(error)),
                }
            }
        }
        out.extend(scanner.finish());
        (out, statuses, None)
    }

    #[test]
    fn markers_are_found_across_chunks_and_taken_out() {
        let marker = b"\0RUNNEL-ab";
        let (out, statuses, error) = scan(
            marker,
            &[b"one\0RUN", b"NEL-ab:", b"3\0two\0RUNNEL-ab:0", b"\0"],
        );
        assert_eq!(out, b"onetwo", "output without the markers");
        assert_eq!(statuses, [b":3".to_vec(), b":0".to_vec()]);
        assert_eq!(error, None);
    }

    /// Review H2 (`nonce_job3.sh`): a marker followed by endless non-NUL bytes made the runner
    /// keep and rescan all of them. Now that is a protocol error after [`MAX_STATUS`] bytes,
    /// and nothing is held back beyond that.
    #[test]
    fn an_overlong_status_is_an_error_not_a_growing_buffer() {
        let marker = b"\0RUNNEL-ab";
        let mut scanner = MarkerScanner::default();
        scanner.push(b"\0RUNNEL-ab:");
        let mut out = Vec::new();
        assert_eq!(
            scanner.next(marker, &mut |b| out.extend_from_slice(b)),
            Ok(None)
        );
        scanner.push(&[b'A'; 64 * 1024]);
        assert_eq!(
            scanner.next(marker, &mut |b| out.extend_from_slice(b)),
            Err(OverlongStatus)
        );
        assert!(out.is_empty());
        // Output that is not a marker is never held back beyond a possible marker start.
        let mut scanner = MarkerScanner::default();
        for _ in 0..100 {
            scanner.push(&[b'A'; 64 * 1024]);
            scanner.push(b"\0RUNNEL-a");
            assert_eq!(scanner.next(marker, &mut |_| {}), Ok(None));
            assert!(scanner.pending() < marker.len());
        }
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(parse_status(b":0"), Some(0));
        assert_eq!(parse_status(b":137"), Some(137));
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(b":x"), None);
    }
}
