//! Starting a process group leader without copying the runner's address space.
//!
//! `fork()` copies the runner's page tables and makes every page it writes afterwards
//! copy-on-write, in all its threads, until the child calls `exec`; with many jobs starting
//! shells that was a tenth of the runner's CPU (issue #18). std avoids it with `posix_spawn`,
//! but only without a `pre_exec` hook, and a job's shell needs one step `posix_spawn` cannot
//! do: `PR_SET_CHILD_SUBREAPER`, which a process can only set on itself and which `exec` keeps.
//!
//! So the child is cloned as glibc's `posix_spawn` clones it: it shares the runner's memory
//! (`CLONE_VM`) on a stack of its own, and the calling thread is suspended until the child has
//! called `execve` or exited (`CLONE_VFORK`). Everything it needs is prepared here first (the
//! program's candidate paths, argv, the environment, the working directory as C strings);
//! between `clone` and `execve` the child only makes system calls. What it does, in order:
//!
//! - resets every signal the runner catches to its default action, and `SIGPIPE` too (std
//!   ignores it in the runner and resets it for children), while every signal is still blocked
//!   (the runner blocked them all around the clone: a handler of the runner must never run in
//!   the child, on memory the two share);
//! - leads a new process group; becomes a child subreaper if asked;
//! - takes the pipes as stdin, stdout and stderr; changes to the working directory;
//! - unblocks every signal (a job starts with an empty signal mask, whatever thread of the
//!   runner started it; std would pass on that thread's mask);
//! - `execve`s each candidate path in turn, as `execvp` searches `PATH` (the child's `PATH`,
//!   the runner's unless the spec sets one). A file without a `#!` line is not run through
//!   `/bin/sh` (`ENOEXEC`), as with std's `posix_spawn` path.
//!
//! If a step fails the child writes its `errno` into a close-on-exec pipe and exits; the runner
//! reads the pipe once the child is gone or has exec'd (an empty read means it exec'd), so a
//! missing program is an error naming it (`ENOENT`), not a child that exits 127.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString, c_char};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::ptr;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::warn;

use super::ProcessSpec;

/// The child's stack until `execve`. Its frames need a few hundred bytes; glibc gives its
/// `posix_spawn` child about 32 KiB plus room for the arguments.
const CHILD_STACK: usize = 64 * 1024;

/// Where programs are looked up when no `PATH` is set (glibc's default, `confstr(_CS_PATH)`).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// The runner's ends of a started child's standard streams.
#[derive(Debug)]
pub(super) struct ChildStdio {
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
}

/// Starts `spec.program` as the leader of a new process group with piped standard streams,
/// a child subreaper with `subreaper`; see the module documentation.
pub(super) fn spawn(spec: &ProcessSpec<'_>, subreaper: bool) -> io::Result<(Pid, ChildStdio)> {
    let command = Command::new(spec)?;
    let (stdin_theirs, stdin) = pipe()?;
    let (stdout, stdout_theirs) = pipe()?;
    let (stderr, stderr_theirs) = pipe()?;
    let (report, report_theirs) = pipe()?;
    let plan = Plan {
        candidates: &command.candidates,
        argv: command.argv.as_ptr(),
        envp: command.envp.as_ptr(),
        cwd: command.cwd.as_deref(),
        stdio: [
            stdin_theirs.as_raw_fd(),
            stdout_theirs.as_raw_fd(),
            stderr_theirs.as_raw_fd(),
        ],
        report: report_theirs.as_raw_fd(),
        subreaper,
        default_action: SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty())
            .into(),
        empty_mask: *SigSet::empty().as_ref(),
        last_signal: libc::SIGRTMAX(),
    };
    let pid = clone_exec(&plan)?;
    drop((stdin_theirs, stdout_theirs, stderr_theirs, report_theirs));

    let failed = match exec_error(report) {
        Ok(None) => None,
        Ok(Some(errno)) => Some(io::Error::from_raw_os_error(errno)),
        Err(error) => {
            // Cannot tell whether it runs: make sure it does not.
            nix::sys::signal::kill(pid, Signal::SIGKILL).ok();
            Some(error)
        }
    };
    if let Some(error) = failed {
        // The child has exited (or is being killed): reap it, the error is what matters.
        reap(pid, true).ok();
        return Err(error);
    }
    Ok((
        pid,
        ChildStdio {
            stdin,
            stdout,
            stderr,
        },
    ))
}

/// Reaps `pid`, a child of ours: waits for it with `block`, otherwise returns `None` while it
/// runs.
pub(super) fn reap(pid: Pid, block: bool) -> io::Result<Option<ExitStatus>> {
    let flags = (!block).then_some(WaitPidFlag::WNOHANG);
    loop {
        match waitpid(pid, flags) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok(Some(ExitStatus::from_raw((code & 0xff) << 8)));
            }
            Ok(WaitStatus::Signaled(_, signal, core_dumped)) => {
                let core = if core_dumped { 0x80 } else { 0 };
                return Ok(Some(ExitStatus::from_raw(signal as i32 | core)));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            // Stops are not asked for; anything else is not an exit.
            Ok(_) if block => {}
            Ok(_) => return Ok(None),
            Err(Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// A pipe whose ends are closed on `exec` and are not standard streams (if the runner's own
/// were closed, a new pipe could get fd 0–2 and be overwritten by the child's `dup2`s).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // std duplicates with `F_DUPFD_CLOEXEC` from 3 up.
    let moved = fd.try_clone()?;
    if moved.as_raw_fd() > 2 {
        Ok(moved)
    } else {
        Err(io::Error::other(
            "cannot move a pipe above the standard streams",
        ))
    }
}

/// The `errno` the child reported before exiting, `None` if it exec'd (the pipe closed empty).
fn exec_error(report: OwnedFd) -> io::Result<Option<i32>> {
    let mut bytes = Vec::new();
    std::fs::File::from(report).read_to_end(&mut bytes)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let errno = <[u8; 4]>::try_from(bytes.as_slice())
        .map_err(|_| io::Error::other("malformed error report from a starting child"))?;
    Ok(Some(i32::from_ne_bytes(errno)))
}

/// What the child executes, as C strings, built before the clone (the child must not allocate).
struct Command {
    /// The paths to try in order: the program itself when it names a path (has a `/`),
    /// otherwise the program in each directory of `PATH`.
    candidates: Vec<CString>,
    /// `argv`, null-terminated, pointing into `_args`.
    argv: Vec<*const c_char>,
    _args: Vec<CString>,
    /// The environment, null-terminated, pointing into `_env`.
    envp: Vec<*const c_char>,
    _env: Vec<CString>,
    cwd: Option<CString>,
}

impl Command {
    fn new(spec: &ProcessSpec<'_>) -> io::Result<Self> {
        // The runner's environment with the spec's on top, in key order as std passes it.
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (key, value) in spec.env {
            env.insert(key.into(), value.into());
        }
        let candidates = candidates(
            spec.program,
            env.get(OsStr::new("PATH")).map(OsString::as_os_str),
        )?;
        let args = std::iter::once(spec.program)
            .chain(spec.args.iter().copied())
            .map(c_string)
            .collect::<io::Result<Vec<_>>>()?;
        let env = env
            .into_iter()
            .map(|(key, value)| {
                let mut entry = key.into_vec();
                entry.push(b'=');
                entry.extend(value.into_vec());
                c_string(entry)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = spec
            .cwd
            .map(|cwd| c_string(cwd.as_os_str().as_bytes()))
            .transpose()?;
        Ok(Command {
            candidates,
            argv: null_terminated(&args),
            _args: args,
            envp: null_terminated(&env),
            _env: env,
            cwd,
        })
    }
}

/// Where `execvp` would look for `program`, in order, given the `PATH` in effect. An empty
/// name is found nowhere (`ENOENT`); an empty `PATH` entry is the working directory.
fn candidates(program: &str, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Ok(Vec::new());
    }
    if program.contains('/') {
        return Ok(vec![c_string(program)?]);
    }
    path.map_or(DEFAULT_PATH, OsStrExt::as_bytes)
        .split(|&byte| byte == b':')
        .map(|dir| {
            let mut full = Vec::with_capacity(dir.len() + 1 + program.len());
            if !dir.is_empty() {
                full.extend_from_slice(dir);
                full.push(b'/');
            }
            full.extend_from_slice(program.as_bytes());
            c_string(full)
        })
        .collect()
}

fn c_string(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte in the program, an argument, the working directory or the environment",
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Everything the child reads between `clone` and `execve`, borrowed from the parent's frame.
struct Plan<'a> {
    candidates: &'a [CString],
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: Option<&'a CStr>,
    /// The child's ends of the pipes, in the order of fds 0, 1, 2.
    stdio: [RawFd; 3],
    /// The write end of the error report pipe.
    report: RawFd,
    subreaper: bool,
    default_action: libc::sigaction,
    empty_mask: libc::sigset_t,
    last_signal: libc::c_int,
}

/// Clones the child (`CLONE_VM | CLONE_VFORK`) and runs the steps of the module documentation
/// in it; returns its pid once it has exec'd or exited.
#[allow(unsafe_code)]
fn clone_exec(plan: &Plan<'_>) -> io::Result<Pid> {
    let child = move || -> isize {
        let fail = |errno: libc::c_int| -> ! {
            let bytes = errno.to_ne_bytes();
            // SAFETY: write(2) and _exit(2) are async-signal-safe system calls; `bytes` is on
            // the child's stack and `report` is open (close-on-exec, not yet exec'd). A write
            // of 4 bytes to a pipe is atomic; should it fail, the runner sees no report and
            // the leader seems to have exited with 127 at once.
            unsafe {
                libc::write(plan.report, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            }
        };
        for signal in 1..=plan.last_signal {
            let mut current = plan.default_action;
            // SAFETY: sigaction(2) with no new action only reads the disposition into
            // `current`, on the child's stack. It fails for numbers the C library keeps for
            // itself; those are left alone.
            if unsafe { libc::sigaction(signal, ptr::null(), &raw mut current) } != 0 {
                continue;
            }
            let caught =
                current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
            if caught || signal == libc::SIGPIPE {
                // SAFETY: installs SIG_DFL (a plain value) for this process only: without
                // CLONE_SIGHAND the child has its own copy of the disposition table.
                unsafe { libc::sigaction(signal, &plan.default_action, ptr::null_mut()) };
            }
        }
        // SAFETY: setpgid(2) on this process, which has not exec'd.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            fail(Errno::last_raw());
        }
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: prctl(2) with the integer arguments PR_SET_CHILD_SUBREAPER takes.
        if plan.subreaper
            && unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on, unused, unused, unused) } != 0
        {
            fail(Errno::last_raw());
        }
        for (fd, target) in plan.stdio.into_iter().zip(0..) {
            // SAFETY: dup2(2) between fds of the child's own table (no CLONE_FILES); the pipes
            // are above 2 (`above_stdio`), so no source is overwritten before it is copied,
            // and the copies are not close-on-exec.
            if unsafe { libc::dup2(fd, target) } < 0 {
                fail(Errno::last_raw());
            }
        }
        if let Some(cwd) = plan.cwd {
            // SAFETY: chdir(2) with a NUL-terminated path the parent keeps alive; the child
            // has its own working directory (no CLONE_FS).
            if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
                fail(Errno::last_raw());
            }
        }
        // SAFETY: sigprocmask(2) on the child, single-threaded; every handler it could run
        // was reset to SIG_DFL above.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, ptr::null_mut()) } != 0 {
            fail(Errno::last_raw());
        }
        let mut denied = false;
        let mut errno = libc::ENOENT;
        for path in plan.candidates {
            // SAFETY: execve(2) with a NUL-terminated path and null-terminated arrays of
            // NUL-terminated strings, all owned by the suspended parent; returns only on
            // failure.
            unsafe { libc::execve(path.as_ptr(), plan.argv, plan.envp) };
            errno = Errno::last_raw();
            match errno {
                // As `execvp`: try the next directory, report EACCES if one had the file.
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(errno),
            }
        }
        fail(if denied { libc::EACCES } else { errno })
    };

    let mut stack = vec![0_u8; CHILD_STACK];
    // Blocked from before the clone until the child has reset its handlers (it inherits this
    // mask) and restored right after in the runner.
    let mut previous = SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )?;
    let flags = CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
    // SAFETY: the child shares the runner's memory and runs `child` on `stack`, a buffer of
    // this frame far larger than its frames need. CLONE_VFORK suspends this thread until the
    // child has exec'd or exited, so `plan`, `stack` and what they point to stay alive and
    // unchanged for as long as the child uses them; the runner's other threads cannot reach
    // them. The child allocates nothing, takes no lock, cannot panic, makes only
    // async-signal-safe system calls, and ends in execve or _exit without returning into
    // the runner's code; errno it sets is this suspended thread's, which is not read after a
    // successful clone. No handler of the runner can run in it: every signal is blocked until
    // it has reset the caught ones (but the two glibc reserves and will not block, which it
    // only sends to the runner's own threads). SIGCHLD as its exit signal makes it an
    // ordinary child to wait for.
    let cloned =
        unsafe { nix::sched::clone(Box::new(child), &mut stack, flags, Some(libc::SIGCHLD)) };
    if let Err(error) =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)
    {
        warn!(%error, "cannot restore the signal mask after starting a process");
    }
    Ok(cloned?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(found: &[CString]) -> Vec<&str> {
        found
            .iter()
            .map(|path| path.to_str().expect("utf-8"))
            .collect()
    }

    #[test]
    fn candidates_follow_execvp() {
        let path = Some(OsStr::new("/usr/local/bin::/bin"));
        assert_eq!(
            strings(&candidates("sh", path).expect("valid")),
            ["/usr/local/bin/sh", "sh", "/bin/sh"]
        );
        assert_eq!(
            strings(&candidates("./run", path).expect("valid")),
            ["./run"]
        );
        assert_eq!(
            strings(&candidates("sh", None).expect("valid")),
            ["/bin/sh", "/usr/bin/sh"]
        );
        assert!(candidates("", path).expect("valid").is_empty());
        let error = candidates("s\0h", path).expect_err("nul byte");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
