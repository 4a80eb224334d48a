//! Running one stage in a prepared container's shell session.
//!
//! The container was created with `OpenStdin` (stdin kept open) and a command that starts a
//! shell reading its commands from stdin. The first stage attaches to it and starts it; that
//! shell then serves every stage of the job, as the shell executor's session does: each stage
//! is sent as its script in a subshell followed by two end markers with a random nonce (the
//! exit status on stdout, a bare marker on stderr), which are taken out of the output. The
//! subshell keeps stages apart as separate shells would (variables, `cd`, traps, `exit`), and
//! the shell is the same process the container's entrypoint started. When the shell ends on
//! its own, the exit code comes from `ContainerWait` and the next stage starts the container
//! again. On cancellation or at the deadline the container's processes get `SIGTERM` (every
//! process through an exec of `kill -TERM -1`, and the shell through the daemon), then
//! `SIGKILL` after [`STOP_GRACE`]; the session ends with them and the next stage (such as
//! `after_script`) starts the container again. Processes a stage leaves in the background keep
//! running until the job's containers are removed, as under the shell executor's session.
//! This module does not create or remove containers.

use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::ExecConfig;
use bollard::query_parameters::{
    AttachContainerOptions, KillContainerOptions, WaitContainerOptions,
};
use futures::{Future, StreamExt};
use runnel_executor::{OutputSink, OutputStream, StageExit};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::DockerError;
use crate::services::ServiceLogFollower;

/// How long stopped processes get between `SIGTERM` and `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for a container to go away after `SIGKILL` before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// A container to run a stage in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// The container id.
    pub(crate) id: &'a str,
    /// The container name, for errors.
    pub(crate) name: &'a str,
}

/// The shell session of a started container: the attach streams of its main shell, which
/// waits on stdin for the next stage.
pub(crate) struct Session {
    attached: AttachContainerResults,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

/// Attaches to `target` and starts it: its shell then waits for stages.
pub(crate) async fn open_session(
    docker: &Docker,
    target: Target<'_>,
) -> Result<Session, DockerError> {
    let attached = docker
        .attach_container(
            target.id,
            Some(AttachContainerOptions {
                stream: true,
                stdin: true,
                stdout: true,
                stderr: true,
                logs: false,
                detach_keys: None,
            }),
        )
        .await
        .map_err(|source| DockerError::api("attach to container", target.name, source))?;
    docker
        .start_container(target.id, None)
        .await
        .map_err(|source| DockerError::api("start container", target.name, source))?;
    Ok(Session { attached })
}

/// Tells a session's shell (idle between stages) to exit, without an Engine request: its
/// container then stops by itself (its first process ends with the shell, and every other
/// process with it). Waits for `within` at most to hand the word over.
pub(crate) async fn tell_exit(session: &mut Session, within: Duration) {
    let input = &mut session.attached.input;
    let told = async {
        // A shell that is gone already has closed its input: nothing to say then.
        if input.write_all(b"exit\n").await.is_ok() {
            input.flush().await.ok();
        }
    };
    tokio::time::timeout(within, told).await.ok();
}

/// Reads a session's output (dropped) until the container's processes are gone, for `within`
/// at most; whether they were gone in time.
pub(crate) async fn wait_ended(mut session: Session, within: Duration) -> bool {
    let output = &mut session.attached.output;
    let ended = async { while let Some(Ok(_)) = output.next().await {} };
    tokio::time::timeout(within, ended).await.is_ok()
}

/// What a stage sends to the session shell: the script in a subshell with stdin closed, then
/// the two end markers (the status on stdout, a bare marker on stderr), written by the shell
/// once the subshell has exited, so they follow everything the stage wrote on either stream.
fn stage_input(nonce: &str, script: &str) -> Vec<u8> {
    let mut input = String::with_capacity(script.len() + 128);
    input.push_str("(\n");
    input.push_str(script);
    if !script.ends_with('\n') {
        input.push('\n');
    }
    input.push_str(") </dev/null\n");
    input.push_str(&format!(
        "printf '\\000RUNNEL-{nonce}:%d\\000' \"$?\"; printf '\\000RUNNEL-{nonce}\\000' >&2\n"
    ));
    input.into_bytes()
}

/// A random marker nonce for one executor's sessions: job output cannot end a stage by chance.
pub(crate) fn nonce() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Runs `script` in `target` as stage `stage`, in the container's shell session: the first
/// stage (or the first after the container stopped) attaches and starts the container, whose
/// shell then runs every later stage without another start. With `service_logs`, service
/// lines are written into the log as they come, but only where the job's own output is at the
/// start of a line, so a service line never splits a line of the job (nor a masked value being
/// written).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_stage(
    docker: &Docker,
    target: Target<'_>,
    session: &mut Option<Session>,
    nonce: &str,
    stage: &str,
    script: &str,
    sink: &dyn OutputSink,
    cancel: CancellationToken,
    deadline: Option<Instant>,
    mut service_logs: Option<&mut ServiceLogFollower>,
) -> Result<StageExit, DockerError> {
    let mut interleave = Interleave::default();
    if let Some(logs) = service_logs.as_deref_mut() {
        for line in logs.ready_lines() {
            interleave.service_line(sink, line);
        }
    }
    if session.is_none() {
        *session = Some(open_session(docker, target).await?);
    }
    let Some(live) = session.as_mut() else {
        return Err(DockerError::NotPrepared {
            stage: stage.to_owned(),
        });
    };
    let output = &mut live.attached.output;
    let input = &mut live.attached.input;
    // From here on, dropping this future (the job was abandoned) kills the stage.
    let mut guard = KillOnDrop {
        docker: Some(docker.clone()),
        id: target.id.to_owned(),
    };

    // The script is written while the output is read, so a chatty script cannot block on a
    // full pipe before it has been sent completely. Stdin stays open for the next stage.
    let bytes = stage_input(nonce, script);
    let writer = async move {
        input.write_all(&bytes).await?;
        input.flush().await
    };
    let mut writer: Option<Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + '_>>> =
        Some(Box::pin(writer));
    let mut stopper: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
    let mut stopped: Option<StageExit> = None;
    let deadline_sleep = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_sleep);
    let mut stdout = MarkerScan::new(nonce, OutputStream::Stdout);
    let mut stderr = MarkerScan::new(nonce, OutputStream::Stderr);
    // Some(code) once both markers came: the stage is over and the session lives on.
    let mut finished: Option<i32> = None;

    loop {
        if let (Some(status), true) = (stdout.status, stderr.done)
            && stopped.is_none()
        {
            finished = Some(status);
            break;
        }
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(LogOutput::StdErr { message })) => {
                    stderr.feed(&message, &mut |stream, bytes| interleave.job_output(sink, stream, bytes));
                }
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    stdout.feed(&message, &mut |stream, bytes| interleave.job_output(sink, stream, bytes));
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(source)) => {
                    if stopped.is_some() {
                        break;
                    }
                    return Err(DockerError::api("read the output of container", target.name, source));
                }
                None => break,
            },
            written = async { writer.as_mut().expect("guarded by the select condition").await }, if writer.is_some() => {
                writer = None;
                if let Err(source) = written {
                    // A shell that exits before reading its whole script closes stdin early.
                    if source.kind() != std::io::ErrorKind::BrokenPipe && stopped.is_none() {
                        return Err(DockerError::WriteStdin {
                            stage: stage.to_owned(),
                            container: target.name.to_owned(),
                            source,
                        });
                    }
                }
            },
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(StageExit::Cancelled);
                stopper = Some(Box::pin(stop_container(docker, target)));
            },
            () = &mut deadline_sleep, if stopped.is_none() => {
                stopped = Some(StageExit::TimedOut);
                stopper = Some(Box::pin(stop_container(docker, target)));
            },
            () = async { stopper.as_mut().expect("guarded by the select condition").await }, if stopper.is_some() => {
                stopper = None;
            },
            Some(line) = async { service_logs.as_deref_mut().expect("guarded by the select condition").next_line().await }, if service_logs.is_some() && interleave.can_hold() => {
                interleave.service_line(sink, line);
            },
        }
    }
    drop(writer);
    let mut emit = |stream, bytes: &[u8]| interleave.job_output(sink, stream, bytes);
    stdout.flush(&mut emit);
    stderr.flush(&mut emit);
    interleave.finish(sink);
    if let Some(status) = finished {
        guard.disarm();
        return Ok(StageExit::Exited(status));
    }
    // The session ended: the shell exited (or was stopped); the next stage starts it again.
    *session = None;
    if let Some(stopper) = stopper {
        stopper.await;
    }
    if let Some(exit) = stopped {
        guard.disarm();
        return Ok(exit);
    }
    let exit = wait_exit(docker, target).await;
    guard.disarm();
    exit
}

/// At most this many bytes of service lines are held back while the job's output is in the
/// middle of a line; then no more are taken until it ends the line (or the stage ends).
const MAX_HELD: usize = 256 * 1024;

/// Finds a stage's end marker in one output stream, whose frames may split it anywhere:
/// everything else is handed on, a possible marker start is held back until it is decided.
struct MarkerScan {
    marker: Vec<u8>,
    stream: OutputStream,
    pending: Vec<u8>,
    /// The status on stdout's marker.
    status: Option<i32>,
    /// The marker was seen.
    done: bool,
}

/// The longest status a marker carries (`-2147483648`): a longer one is not a marker.
const MAX_MARKER_PAYLOAD: usize = 12;

impl MarkerScan {
    fn new(nonce: &str, stream: OutputStream) -> Self {
        let mut marker = b"\0RUNNEL-".to_vec();
        marker.extend_from_slice(nonce.as_bytes());
        MarkerScan {
            marker,
            stream,
            pending: Vec::new(),
            status: None,
            done: false,
        }
    }

    fn feed(&mut self, bytes: &[u8], emit: &mut dyn FnMut(OutputStream, &[u8])) {
        if self.done {
            // Output after the marker (a background process of the stage): still the job's.
            emit(self.stream, bytes);
            return;
        }
        self.pending.extend_from_slice(bytes);
        loop {
            let Some(start) = memchr::memmem::find(&self.pending, &self.marker) else {
                let keep = partial_suffix(&self.pending, &self.marker);
                let emit_len = self.pending.len() - keep;
                if emit_len > 0 {
                    emit(self.stream, &self.pending[..emit_len]);
                    self.pending.drain(..emit_len);
                }
                return;
            };
            if start > 0 {
                emit(self.stream, &self.pending[..start]);
                self.pending.drain(..start);
            }
            let rest = &self.pending[self.marker.len()..];
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                if rest.len() > MAX_MARKER_PAYLOAD {
                    // Not a marker after all: hand the start on and look further.
                    emit(self.stream, &self.pending[..1]);
                    self.pending.drain(..1);
                    continue;
                }
                return;
            };
            let payload = &rest[..end];
            let valid = match self.stream {
                OutputStream::Stdout => payload
                    .strip_prefix(b":")
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .and_then(|digits| digits.parse::<i32>().ok())
                    .map(|status| self.status = Some(status))
                    .is_some(),
                OutputStream::Stderr => payload.is_empty(),
            };
            if !valid {
                emit(self.stream, &self.pending[..1]);
                self.pending.drain(..1);
                continue;
            }
            let after = self.marker.len() + end + 1;
            self.pending.drain(..after);
            self.done = true;
            let rest = std::mem::take(&mut self.pending);
            if !rest.is_empty() {
                emit(self.stream, &rest);
            }
            return;
        }
    }

    /// Hands on what is still held back (the stage ended without a marker).
    fn flush(&mut self, emit: &mut dyn FnMut(OutputStream, &[u8])) {
        if !self.pending.is_empty() {
            emit(self.stream, &self.pending);
            self.pending.clear();
        }
    }
}

/// The length of the longest end of `bytes` that is a proper start of `marker`.
fn partial_suffix(bytes: &[u8], marker: &[u8]) -> usize {
    let longest = marker.len().saturating_sub(1).min(bytes.len());
    (1..=longest)
        .rev()
        .find(|&len| bytes[bytes.len() - len..] == marker[..len])
        .unwrap_or(0)
}

/// Puts service lines between the job's lines: held back while the job's output is in the
/// middle of a line, written as soon as it ends one.
#[derive(Default)]
struct Interleave {
    mid_line: bool,
    held: Vec<Vec<u8>>,
    held_bytes: usize,
}

impl Interleave {
    /// Whether another service line may be taken (the held ones stay bounded).
    fn can_hold(&self) -> bool {
        self.held_bytes < MAX_HELD
    }

    fn job_output(&mut self, sink: &dyn OutputSink, stream: OutputStream, bytes: &[u8]) {
        sink.write(stream, bytes);
        if let Some(&last) = bytes.last() {
            self.mid_line = last != b'\n';
        }
        if !self.mid_line {
            self.held_bytes = 0;
            for line in self.held.drain(..) {
                sink.write(OutputStream::Stdout, &line);
            }
        }
    }

    fn service_line(&mut self, sink: &dyn OutputSink, line: Vec<u8>) {
        if self.mid_line {
            self.held_bytes += line.len();
            self.held.push(line);
        } else {
            sink.write(OutputStream::Stdout, &line);
        }
    }

    /// The stage is over: what was held back goes out on a line of its own.
    fn finish(&mut self, sink: &dyn OutputSink) {
        if self.held.is_empty() {
            return;
        }
        if self.mid_line {
            sink.write(OutputStream::Stdout, b"\n");
            self.mid_line = false;
        }
        self.held_bytes = 0;
        for line in self.held.drain(..) {
            sink.write(OutputStream::Stdout, &line);
        }
    }
}

/// Kills a started stage's container when the stage's future is dropped before it finished.
struct KillOnDrop {
    docker: Option<Docker>,
    id: String,
}

impl KillOnDrop {
    fn disarm(&mut self) {
        self.docker = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let (Some(docker), Ok(runtime)) =
            (self.docker.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        runtime.spawn(async move {
            let options = KillContainerOptions {
                signal: "SIGKILL".to_owned(),
            };
            if let Err(error) = docker.kill_container(&id, Some(options)).await {
                tracing::debug!(container = %id, %error, "killing an abandoned stage failed");
            }
        });
    }
}

/// Waits for the container to stop and returns its exit code.
async fn wait_exit(docker: &Docker, target: Target<'_>) -> Result<StageExit, DockerError> {
    let mut wait = docker.wait_container(
        target.id,
        Some(WaitContainerOptions {
            condition: "not-running".to_owned(),
        }),
    );
    match wait.next().await {
        Some(Ok(response)) => Ok(StageExit::Exited(clamp_code(response.status_code))),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
            Ok(StageExit::Exited(clamp_code(code)))
        }
        Some(Err(source)) => Err(DockerError::api("wait for container", target.name, source)),
        None => {
            let inspect = docker
                .inspect_container(target.id, None)
                .await
                .map_err(|source| DockerError::api("inspect container", target.name, source))?;
            let code = inspect
                .state
                .and_then(|state| state.exit_code)
                .unwrap_or(-1);
            Ok(StageExit::Exited(clamp_code(code)))
        }
    }
}

fn clamp_code(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(-1)
}

/// Stops what runs in the container: `SIGTERM` to every process, `SIGKILL` after the grace.
pub(crate) async fn stop_container(docker: &Docker, target: Target<'_>) {
    tracing::debug!(container = target.name, "stopping the stage");
    // The shell first, so that its TERM trap is pending when its foreground child dies.
    if let Err(error) = docker
        .kill_container(
            target.id,
            Some(KillContainerOptions {
                signal: "SIGTERM".to_owned(),
            }),
        )
        .await
    {
        tracing::debug!(container = target.name, %error, "SIGTERM to the container failed");
    }
    term_all_processes(docker, target).await;
    if wait_stopped(docker, target, STOP_GRACE).await {
        return;
    }
    if let Err(error) = docker
        .kill_container(
            target.id,
            Some(KillContainerOptions {
                signal: "SIGKILL".to_owned(),
            }),
        )
        .await
    {
        tracing::debug!(container = target.name, %error, "SIGKILL to the container failed");
    }
    if !wait_stopped(docker, target, KILL_WAIT).await {
        tracing::warn!(
            container = target.name,
            "container did not stop after SIGKILL"
        );
    }
}

/// Sends `SIGTERM` to every process of the container but its init, from inside it.
async fn term_all_processes(docker: &Docker, target: Target<'_>) {
    let exec = docker
        .create_exec(
            target.id,
            ExecConfig {
                cmd: Some(vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    "kill -TERM -1 2>/dev/null; true".to_owned(),
                ]),
                attach_stdout: Some(false),
                attach_stderr: Some(false),
                ..ExecConfig::default()
            },
        )
        .await;
    let result = match exec {
        Ok(exec) => docker
            .start_exec(
                &exec.id,
                Some(bollard::exec::StartExecOptions {
                    detach: true,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map(drop),
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        tracing::debug!(container = target.name, %error, "could not signal the container's processes");
    }
}

/// Whether the container stopped within `within`.
async fn wait_stopped(docker: &Docker, target: Target<'_>, within: Duration) -> bool {
    let wait = async {
        let mut wait = docker.wait_container(
            target.id,
            Some(WaitContainerOptions {
                condition: "not-running".to_owned(),
            }),
        );
        // An error means the container is gone or stopped with a non-zero code: stopped.
        let _ = wait.next().await;
    };
    tokio::time::timeout(within, wait).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(nonce: &str, stream: OutputStream, chunks: &[&[u8]]) -> (Vec<u8>, MarkerScan) {
        let mut scan = MarkerScan::new(nonce, stream);
        let mut out = Vec::new();
        for chunk in chunks {
            scan.feed(chunk, &mut |s, bytes| {
                assert_eq!(s, stream);
                out.extend_from_slice(bytes);
            });
        }
        (out, scan)
    }

    #[test]
    fn markers_split_across_frames_end_the_stage_and_are_taken_out() {
        let (out, stdout) = scan(
            "n1",
            OutputStream::Stdout,
            &[b"hello\n\0RUN", b"NEL-n1:4", b"2\0"],
        );
        assert_eq!(
            (out.as_slice(), stdout.status, stdout.done),
            (&b"hello\n"[..], Some(42), true)
        );
        let (out, stderr) = scan("n1", OutputStream::Stderr, &[b"oops\n\0RUNNEL-n1\0"]);
        assert_eq!((out.as_slice(), stderr.done), (&b"oops\n"[..], true));
    }

    #[test]
    fn lookalikes_and_other_nonces_are_output() {
        let text: &[u8] = b"a\0RUNNEL-other:1\0b\0RUNNEL-n1:x\0c\0RUNNEL-n1";
        let (out, mut stdout) = scan("n1", OutputStream::Stdout, &[text]);
        assert!(!stdout.done);
        let mut rest = Vec::new();
        stdout.flush(&mut |_, bytes| rest.extend_from_slice(bytes));
        assert_eq!([out, rest].concat(), text);
        // A payload that never ends is not held back for ever.
        let long = [&b"\0RUNNEL-n1:"[..], &[b'1'; 64][..]].concat();
        let (out, stdout) = scan("n1", OutputStream::Stdout, &[&long]);
        assert!(!stdout.done);
        assert!(out.len() >= 64 - MAX_MARKER_PAYLOAD, "{}", out.len());
    }

    #[test]
    fn the_stage_runs_in_a_subshell_followed_by_the_markers() {
        let input = String::from_utf8(stage_input("abc", "echo hi")).unwrap();
        insta::assert_snapshot!(input, @r#"
        (
        echo hi
        ) </dev/null
        printf '\000RUNNEL-abc:%d\000' "$?"; printf '\000RUNNEL-abc\000' >&2
        "#);
    }
}
