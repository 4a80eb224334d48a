//! Service containers: one per `services:` entry, on the job's network under every alias, and
//! the wait for their ports.
//!
//! The ports waited for are the job's `ports:` of the service, else `HEALTHCHECK_TCP_PORT` from
//! its variables, else every port the image exposes. Unlike the official runner, which starts a
//! health-check container, the runner reads the service's listening sockets from inside it
//! (`cat /proc/net/tcp*` through an exec, so it works wherever the runner itself runs), falls
//! back to TCP connects to the service's address when the image cannot do that, and stops
//! waiting early when the service container exits. A service that
//! does not come up is not an error: the job log gets the official warning and the service's
//! logs, and the job goes on. Creating the job's network and removing containers is not done
//! here.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, EndpointSettings, ExecConfig, NetworkingConfig};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions};
use futures::StreamExt;
use runnel_types::{ImageSpec, Variable};

use crate::DockerError;

/// How often a port is probed while waiting.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest service line kept whole: a service writing without newlines gets its output
/// cut into lines of this size, so no buffer grows with it.
pub(crate) const MAX_SERVICE_LINE: usize = 16 * 1024;

/// How many service lines wait for the job log at most (all services together); when the log
/// does not take them, the followers stop reading until it does (Docker keeps the rest).
const SERVICE_LINE_QUEUE: usize = 64;

/// How much of a service's last output the "didn't start properly" warning shows at most.
const MAX_WARNING_LOGS: usize = 64 * 1024;

/// How much `/proc/net/tcp*` text is read at most.
const MAX_SOCKET_TABLE: usize = 1024 * 1024;

/// A started service container.
#[derive(Clone, Debug)]
pub(crate) struct StartedService {
    /// The container id.
    pub(crate) id: String,
    /// The container name.
    pub(crate) name: String,
    /// How `CI_DEBUG_SERVICES` names it in the job log: `<image>-<alias>…`.
    pub(crate) log_name: String,
    /// The ports to wait for.
    pub(crate) ports: Vec<u16>,
}

/// Everything needed to create one service container.
pub(crate) struct ServiceRequest<'a> {
    pub(crate) spec: &'a ImageSpec,
    pub(crate) name: String,
    pub(crate) aliases: Vec<String>,
    pub(crate) labels: HashMap<String, String>,
    pub(crate) env: Vec<String>,
    pub(crate) host_config: bollard::models::HostConfig,
    pub(crate) network: Option<&'a str>,
}

/// The environment of a service: the job's public and internal variables, then its own.
pub(crate) fn service_env(job_variables: &[Variable], spec: &ImageSpec) -> Vec<String> {
    job_variables
        .iter()
        .filter(|variable| (variable.public || variable.internal) && !variable.file)
        .chain(spec.variables.iter())
        .map(|variable| format!("{}={}", variable.key, variable.value))
        .collect()
}

/// Creates and starts a service container.
pub(crate) async fn start_service(
    docker: &Docker,
    request: ServiceRequest<'_>,
) -> Result<StartedService, DockerError> {
    let spec = request.spec;
    let image = docker
        .inspect_image(&spec.name)
        .await
        .map_err(|source| DockerError::api("inspect service image", spec.name.clone(), source))?;
    let networking_config = request.network.map(|network| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.to_owned(),
            EndpointSettings {
                aliases: Some(request.aliases.clone()),
                ..EndpointSettings::default()
            },
        )])),
    });
    let body = ContainerCreateBody {
        image: Some(spec.name.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
        env: Some(request.env.clone()),
        labels: Some(request.labels),
        host_config: Some(request.host_config),
        networking_config,
        ..ContainerCreateBody::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(request.name.clone()),
                ..CreateContainerOptions::default()
            }),
            body,
        )
        .await
        .map_err(|source| {
            DockerError::api("create service container", request.name.clone(), source)
        })?;
    let started = StartedService {
        id: created.id,
        name: request.name,
        log_name: log_name(&spec.name, &spec.aliases),
        ports: ports_to_wait_for(
            spec,
            &request.env,
            image.config.and_then(|c| c.exposed_ports),
        ),
    };
    docker
        .start_container(&started.id, None)
        .await
        .map_err(|source| {
            DockerError::api("start service container", started.name.clone(), source)
        })?;
    Ok(started)
}

fn ports_to_wait_for(spec: &ImageSpec, env: &[String], exposed: Option<Vec<String>>) -> Vec<u16> {
    if !spec.ports.is_empty() {
        return spec.ports.iter().map(|port| port.number).collect();
    }
    if let Some(port) = env
        .iter()
        .rev()
        .find_map(|entry| entry.strip_prefix("HEALTHCHECK_TCP_PORT="))
        .and_then(|port| port.parse().ok())
    {
        return vec![port];
    }
    let mut ports: Vec<u16> = exposed
        .unwrap_or_default()
        .iter()
        .filter(|port| !port.ends_with("/udp"))
        .filter_map(|port| port.split('/').next()?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Waits up to `timeout` for each service's ports; returns the job-log text for the services
/// that did not come up (empty when all did).
pub(crate) async fn wait_for_services(
    docker: &Docker,
    services: &[StartedService],
    network: Option<&str>,
    timeout: Duration,
) -> String {
    let waits = services
        .iter()
        .map(|service| wait_for_service(docker, service, network, timeout));
    let results = futures::future::join_all(waits).await;
    let mut text = String::new();
    for (service, result) in services.iter().zip(results) {
        if let Err(reason) = result {
            let logs = service_logs(docker, service).await;
            // Writing to a String cannot fail.
            let _ignored = write!(
                text,
                "*** WARNING: Service {} probably didn't start properly.\n\nHealth check error:\n{reason}\n\nService container logs:\n{logs}\n*********\n\n",
                service.name
            );
        }
    }
    text
}

async fn wait_for_service(
    docker: &Docker,
    service: &StartedService,
    network: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    if service.ports.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending = service.ports.clone();
    let mut can_read_sockets = true;
    loop {
        let inspect = docker
            .inspect_container(&service.id, None)
            .await
            .map_err(|error| {
                format!("service {:?} could not be inspected: {error}", service.name)
            })?;
        let running = inspect
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        if !running {
            let code = inspect
                .state
                .and_then(|state| state.exit_code)
                .unwrap_or(-1);
            return Err(format!(
                "service {:?} exited with code {code} before it was up",
                service.name
            ));
        }
        let address = inspect.network_settings.and_then(|settings| {
            let networks = settings.networks.unwrap_or_default();
            let endpoint = match network {
                Some(network) => networks.get(network).cloned(),
                None => networks.into_values().next(),
            };
            endpoint
                .and_then(|endpoint| endpoint.ip_address)
                .filter(|ip| !ip.is_empty())
        });
        // Listening sockets as the service's own network namespace sees them: this works
        // wherever the runner runs (also inside a container on another network).
        if can_read_sockets {
            match listening_ports(docker, &service.id).await {
                Some(listening) => {
                    pending.retain(|port| !listening.contains(port));
                    if pending.is_empty() {
                        return Ok(());
                    }
                }
                None => can_read_sockets = false,
            }
        }
        if !can_read_sockets && let Some(address) = address {
            let mut still = Vec::new();
            for port in pending {
                let connect = tokio::net::TcpStream::connect((address.as_str(), port));
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(_)) => {}
                    _ => still.push(port),
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() + PROBE_INTERVAL > deadline {
            let ports: Vec<String> = pending.iter().map(u16::to_string).collect();
            return Err(format!(
                "service {:?} timeout: port(s) {} not reachable within {} seconds",
                service.name,
                ports.join(", "),
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The TCP ports listening in a container, read from `/proc/net/tcp{,6}` with an exec of
/// `cat`; `None` when the image cannot do that (no `cat`, exec refused).
async fn listening_ports(docker: &Docker, container: &str) -> Option<Vec<u16>> {
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(vec![
                    "cat".to_owned(),
                    "/proc/net/tcp".to_owned(),
                    "/proc/net/tcp6".to_owned(),
                ]),
                attach_stdout: Some(true),
                attach_stderr: Some(false),
                ..ExecConfig::default()
            },
        )
        .await
        .ok()?;
    let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.ok()?
    else {
        return None;
    };
    let mut text = Vec::new();
    let collect = async {
        while let Some(Ok(chunk)) = output.next().await {
            if text.len() < MAX_SOCKET_TABLE {
                text.extend_from_slice(chunk.as_ref());
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 5, collect)
        .await
        .ok()?;
    let inspect = docker.inspect_exec(&exec.id).await.ok()?;
    // `cat` exits 1 when only one of the files exists (no IPv6): the output still counts.
    if inspect.exit_code.is_some_and(|code| code > 1) || text.is_empty() {
        return None;
    }
    Some(parse_listening(&String::from_utf8_lossy(&text)))
}

/// The local ports of the `LISTEN` (state `0A`) lines of `/proc/net/tcp` text.
fn parse_listening(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            if *state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// The name a service's lines carry in the job log: the image path without registry port
/// confusion or tag (`/` becomes `__`), then each alias: `postgres-db` for `postgres:16` as `db`.
fn log_name(image: &str, aliases: &[String]) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag follows the last `:` after the last `/` (a `:` before it is a registry port).
    let base = match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    };
    let mut name = base.replace('/', "__");
    for alias in aliases {
        name.push('-');
        name.push_str(alias);
    }
    name
}

/// Streams the output of every service container into the job log while the job runs
/// (`CI_DEBUG_SERVICES`). One task per service follows its log and sends complete lines,
/// each `[service:<name>] <timestamp> <text>`; the stage runner writes them into the trace
/// between lines of the job's own output (where they count against `output_limit` like any
/// output). Memory is bounded whatever the services write: a line longer than
/// [`MAX_SERVICE_LINE`] is cut, at most [`SERVICE_LINE_QUEUE`] lines wait, and a follower
/// whose lines are not taken stops reading. Dropping the follower stops the tasks.
#[derive(Debug)]
pub(crate) struct ServiceLogFollower {
    lines: tokio::sync::mpsc::Receiver<Vec<u8>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Every sender is gone: all services stopped writing.
    closed: bool,
}

impl ServiceLogFollower {
    /// Starts following `services` from their first line.
    pub(crate) fn start(docker: &Docker, services: &[StartedService]) -> Self {
        let (sender, lines) = tokio::sync::mpsc::channel(SERVICE_LINE_QUEUE);
        let tasks = services
            .iter()
            .map(|service| {
                let docker = docker.clone();
                let sender = sender.clone();
                let id = service.id.clone();
                let prefix = format!("[service:{}] ", service.log_name);
                tokio::spawn(async move {
                    let mut logs = docker.logs(
                        &id,
                        Some(LogsOptions {
                            follow: true,
                            stdout: true,
                            stderr: true,
                            timestamps: true,
                            ..LogsOptions::default()
                        }),
                    );
                    let mut splitter = LineSplitter::new(prefix);
                    while let Some(Ok(chunk)) = logs.next().await {
                        for line in splitter.push(chunk.as_ref()) {
                            if sender.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    if let Some(line) = splitter.finish() {
                        drop(sender.send(line).await);
                    }
                })
            })
            .collect();
        Self {
            lines,
            tasks,
            closed: false,
        }
    }

    /// The next complete line; `None` once every service's log has ended (then forever).
    pub(crate) async fn next_line(&mut self) -> Option<Vec<u8>> {
        if self.closed {
            return std::future::pending().await;
        }
        let line = self.lines.recv().await;
        self.closed = line.is_none();
        line
    }

    /// Lines that are already waiting, without blocking.
    pub(crate) fn ready_lines(&mut self) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            ready.push(line);
        }
        ready
    }
}

impl Drop for ServiceLogFollower {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Cuts a service's output into prefixed lines of at most [`MAX_SERVICE_LINE`] bytes.
struct LineSplitter {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl LineSplitter {
    fn new(prefix: String) -> Self {
        Self {
            prefix: prefix.into_bytes(),
            partial: Vec::new(),
        }
    }

    /// The complete lines `bytes` finishes (each with its newline).
    fn push(&mut self, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let room = MAX_SERVICE_LINE - self.partial.len();
            let take = bytes
                .iter()
                .take(room)
                .position(|&b| b == b'\n')
                .map_or(room.min(bytes.len()), |end| end + 1);
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.last() == Some(&b'\n') || self.partial.len() >= MAX_SERVICE_LINE {
                lines.push(self.line());
            }
        }
        lines
    }

    /// What is left, as a line of its own.
    fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| self.line())
    }

    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.prefix.len() + self.partial.len() + 1);
        line.extend_from_slice(&self.prefix);
        line.append(&mut self.partial);
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        line
    }
}

/// The last lines of a service's output.
async fn service_logs(docker: &Docker, service: &StartedService) -> String {
    let mut logs = docker.logs(
        &service.id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: "100".to_owned(),
            ..LogsOptions::default()
        }),
    );
    let mut text = String::new();
    let collect = async {
        while let Some(Ok(chunk)) = logs.next().await {
            // The last lines may be one endless line: keep its start only.
            let room = MAX_WARNING_LOGS.saturating_sub(text.len());
            if room == 0 {
                continue;
            }
            let chunk = String::from_utf8_lossy(chunk.as_ref());
            let mut end = room.min(chunk.len());
            while !chunk.is_char_boundary(end) {
                end -= 1;
            }
            text.push_str(&chunk[..end]);
            if text.len() >= MAX_WARNING_LOGS {
                text.push_str("\n(service output cut at 64 KiB)\n");
            }
        }
    };
    // Logs that take too long are cut short, not waited for.
    if tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .is_err()
    {
        text.push_str("(log collection timed out)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_types::ImagePort;

    fn spec(ports: &[u16]) -> ImageSpec {
        ImageSpec {
            name: "db".into(),
            ports: ports
                .iter()
                .map(|number| ImagePort {
                    number: *number,
                    protocol: "tcp".into(),
                    name: String::new(),
                })
                .collect(),
            ..ImageSpec::default()
        }
    }

    #[test]
    fn service_output_without_newlines_is_cut_into_bounded_lines() {
        let mut splitter = LineSplitter::new("[s] ".to_owned());
        assert_eq!(splitter.push(b"a\nbc"), [b"[s] a\n".to_vec()]);
        assert_eq!(splitter.push(b"d\n"), [b"[s] bcd\n".to_vec()]);
        let endless = vec![b'y'; MAX_SERVICE_LINE * 3 + 10];
        let lines = splitter.push(&endless);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|line| line.len() == MAX_SERVICE_LINE + 5));
        assert_eq!(splitter.finish(), Some(b"[s] yyyyyyyyyy\n".to_vec()));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn service_log_names_drop_the_tag_and_add_the_aliases() {
        let aliases = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            log_name("alpine:3", &aliases(&["my-service"])),
            "alpine-my-service"
        );
        assert_eq!(log_name("postgres", &[]), "postgres");
        assert_eq!(
            log_name(
                "registry.local:5000/team/db:16@sha256:abc",
                &aliases(&["db", "pg"])
            ),
            "registry.local:5000__team__db-db-pg"
        );
        assert_eq!(
            log_name("registry.local:5000/web", &[]),
            "registry.local:5000__web"
        );
    }

    #[test]
    fn listening_ports_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0035 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   0: 00000000000000000000000000000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  999        0 3 1 0 100 0 0 10 0
";
        assert_eq!(parse_listening(text), [8080, 6379]);
    }

    #[test]
    fn ports_come_from_the_job_then_the_healthcheck_variable_then_the_image() {
        let exposed = Some(vec!["5432/tcp".into(), "53/udp".into(), "80/tcp".into()]);
        assert_eq!(
            ports_to_wait_for(&spec(&[1234]), &[], exposed.clone()),
            [1234]
        );
        assert_eq!(
            ports_to_wait_for(
                &spec(&[]),
                &["HEALTHCHECK_TCP_PORT=8080".into()],
                exposed.clone()
            ),
            [8080]
        );
        assert_eq!(ports_to_wait_for(&spec(&[]), &[], exposed), [80, 5432]);
    }
}
