//! Running one stage in a prepared container: attach, (re)start, feed the script, stream, wait.
//!
//! The container was created with `OpenStdin`/`StdinOnce` and a command that starts a shell
//! reading its script from stdin. Each stage attaches to it, starts it again, writes the script
//! and closes stdin, forwards stdout and stderr to the sink as they arrive, and takes the exit
//! code from `ContainerWait` once the output ends. On cancellation or at the deadline the
//! container's processes get `SIGTERM` (every process through an exec of `kill -TERM -1`, and the
//! shell through the daemon), then `SIGKILL` after [`STOP_GRACE`]. This module does not create
//! or remove containers.

use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
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

/// Runs `script` in `target` as stage `stage`. With `service_logs`, service lines are written
/// into the log as they come, but only where the job's own output is at the start of a line,
/// so a service line never splits a line of the job (nor a masked value being written).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_stage(
    docker: &Docker,
    target: Target<'_>,
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
    let attach = docker
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
    let mut output = attach.output;
    let mut input = attach.input;
    // From here on, dropping this future (the job was abandoned) kills the stage.
    let mut guard = KillOnDrop {
        docker: Some(docker.clone()),
        id: target.id.to_owned(),
    };
    docker
        .start_container(target.id, None)
        .await
        .map_err(|source| DockerError::api("start container", target.name, source))?;

    // The script is written while the output is read, so a chatty script cannot block on a
    // full pipe before it has been sent completely.
    let script = script.as_bytes().to_vec();
    let writer = async move {
        input.write_all(&script).await?;
        input.shutdown().await
    };
    let mut writer: Option<Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>> =
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

    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(LogOutput::StdErr { message })) => {
                    interleave.job_output(sink, OutputStream::Stderr, &message);
                }
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    interleave.job_output(sink, OutputStream::Stdout, &message);
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
    interleave.finish(sink);
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
