//! `pods/{name}/exec` and `pods/{name}/attach` over WebSocket, in the channel protocols of real
//! API servers.
//!
//! Every binary frame starts with a channel byte: 0 stdin (client → server), 1 stdout, 2 stderr,
//! 3 error (server → client: a `Status` once the command ended, carrying its exit code), and, in
//! `v5.channel.k8s.io` only, 255 close (`[255, channel]`: the client closed that stream).

use std::sync::Arc;

use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{Message, WebSocket};
use axum::http::StatusCode;
use axum::response::Response;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::server::status;
use crate::state::Shared;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

pub(crate) async fn exec(
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    query: Vec<(String, String)>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let value = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let flag = |key: &str| value(key).is_some_and(|v| v == "true" || v == "1");
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
            json!({}),
        );
    }
    if !flag("stdout") && !flag("stderr") && !flag("stdin") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least one of stdin, stdout, stderr",
            json!({}),
        );
    }
    let id = match target(&shared, &namespace, &name, value("container")) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let stdin = flag("stdin");
    let created = shared
        .docker
        .create_exec(
            &id,
            ExecConfig {
                cmd: Some(command),
                attach_stdin: Some(stdin),
                attach_stdout: Some(flag("stdout")),
                attach_stderr: Some(flag("stderr")),
                tty: Some(flag("tty")),
                ..ExecConfig::default()
            },
        )
        .await;
    let exec_id = match created {
        Ok(created) => created.id,
        Err(error) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("Internal error occurred: error executing command in container: {error}"),
                json!({}),
            );
        }
    };
    // The protocol chosen from the client's list (v5 preferred); known once offered.
    let upgrade = upgrade.protocols([V5, V4]);
    let v5 = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == V5.as_bytes());
    upgrade.on_upgrade(move |socket| async move {
        if let Err(error) = pump(&shared, socket, &exec_id, stdin, v5).await {
            tracing::debug!(%error, "exec session ended with an error");
        }
    })
}

/// The docker container of `container` (or the pod's only container) of a running pod.
fn target(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: Option<String>,
) -> Result<String, Box<Response>> {
    let (pod, containers) = {
        let inner = shared.lock();
        match inner.pods.get(&(namespace.to_owned(), name.to_owned())) {
            Some(entry) => (entry.object.clone(), entry.backing.containers.clone()),
            None => {
                return Err(Box::new(status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                    json!({"name": name, "kind": "pods"}),
                )));
            }
        }
    };
    let spec_containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let container = match container {
        Some(container) => container,
        None if spec_containers.len() == 1 => spec_containers[0].clone(),
        None => {
            return Err(Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    spec_containers.join(" ")
                ),
                json!({}),
            )));
        }
    };
    if !spec_containers.contains(&container) {
        return Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {container} is not valid for pod {name}"),
            json!({}),
        )));
    }
    let running = pod["status"]["phase"] == json!("Running");
    let Some(id) = containers
        .iter()
        .find(|(n, _)| *n == container)
        .map(|(_, id)| id.clone())
        .filter(|_| running)
    else {
        return Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("unable to upgrade connection: container not found (\"{container}\")"),
            json!({}),
        )));
    };
    Ok(id)
}

/// The error-channel `Status` for an exit code, as the kubelet sends it.
pub(crate) fn exit_status(code: i64) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    }
}

fn frame(channel: u8, bytes: &[u8]) -> Message {
    let mut data = Vec::with_capacity(bytes.len() + 1);
    data.push(channel);
    data.extend_from_slice(bytes);
    Message::Binary(data.into())
}

async fn pump(
    shared: &Shared,
    socket: WebSocket,
    exec_id: &str,
    stdin: bool,
    v5: bool,
) -> Result<(), String> {
    let started = shared
        .docker
        .start_exec(
            exec_id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err("exec started detached".to_owned());
    };
    let (mut send, mut receive) = socket.split();
    let mut stdin_open = stdin;
    let mut client_gone = false;
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if send.send(frame(1, &message)).await.is_err() { client_gone = true; break; }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if send.send(frame(2, &message)).await.is_err() { client_gone = true; break; }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(error)) => return Err(error.to_string()),
                None => break,
            },
            message = receive.next(), if !client_gone => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(0) if stdin_open && input.write_all(&data[1..]).await.is_err() => {
                        stdin_open = false;
                    }
                    Some(255) if v5 && data.get(1) == Some(&0) => {
                        stdin_open = false;
                        if let Err(error) = input.shutdown().await {
                            tracing::debug!(%error, "cannot close the exec's stdin");
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_gone = true;
                }
                Some(Ok(_)) => {}
            },
        }
        if client_gone {
            break;
        }
    }
    if client_gone {
        return Ok(());
    }
    let code = shared
        .docker
        .inspect_exec(exec_id)
        .await
        .ok()
        .and_then(|inspect| inspect.exit_code)
        .unwrap_or(-1);
    let status = serde_json::to_vec(&exit_status(code)).unwrap_or_default();
    if send.send(frame(3, &status)).await.is_ok()
        && let Err(error) = send.send(Message::Close(None)).await
    {
        tracing::debug!(%error, "cannot close the exec WebSocket");
    }
    Ok(())
}

/// `pods/{name}/attach`: the container's main process's stdin, stdout and stderr, in the same
/// channel protocols. Ending the session (closing stdin in v5 or the connection) never closes
/// the container's stdin: containers with `stdin: true` and no `stdinOnce` keep it open for
/// the next client, as with a real kubelet.
pub(crate) async fn attach(
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    query: Vec<(String, String)>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let value = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let flag = |key: &str| value(key).is_some_and(|v| v == "true" || v == "1");
    let (stdin, stdout, stderr) = (flag("stdin"), flag("stdout"), flag("stderr"));
    if !stdin && !stdout && !stderr {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least one of stdin, stdout, stderr",
            json!({}),
        );
    }
    let id = match target(&shared, &namespace, &name, value("container")) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let options = bollard::query_parameters::AttachContainerOptionsBuilder::new()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .stream(true)
        .logs(false)
        .build();
    let attached = match shared.docker.attach_container(&id, Some(options)).await {
        Ok(attached) => attached,
        Err(error) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("Internal error occurred: error attaching to container: {error}"),
                json!({}),
            );
        }
    };
    // The protocol chosen from the client's list (v5 preferred); known once offered.
    let upgrade = upgrade.protocols([V5, V4]);
    let v5 = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == V5.as_bytes());
    upgrade.on_upgrade(move |socket| async move {
        attach_pump(socket, attached, stdin, stdout || stderr, v5).await;
    })
}

async fn attach_pump(
    socket: WebSocket,
    attached: bollard::container::AttachContainerResults,
    stdin: bool,
    output_wanted: bool,
    v5: bool,
) {
    let bollard::container::AttachContainerResults {
        mut output,
        mut input,
    } = attached;
    let (mut send, mut receive) = socket.split();
    let mut stdin_open = stdin;
    let mut output_open = output_wanted;
    loop {
        tokio::select! {
            chunk = output.next(), if output_open => match chunk {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if send.send(frame(1, &message)).await.is_err() { break; }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if send.send(frame(2, &message)).await.is_err() { break; }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                // The container ended.
                Some(Err(_)) | None => output_open = false,
            },
            message = receive.next() => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(0)
                        if stdin_open
                            && (input.write_all(&data[1..]).await.is_err()
                                || input.flush().await.is_err()) =>
                    {
                        stdin_open = false;
                    }
                    Some(255) if v5 && data.get(1) == Some(&0) => stdin_open = false,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
        // Nothing left to carry: a stdin-only session ends once its stdin closed, any session
        // once the container's output ended.
        if !stdin_open && !output_open {
            break;
        }
    }
    if let Err(error) = send.send(Message::Close(None)).await {
        tracing::debug!(%error, "cannot close the attach WebSocket");
    }
}
