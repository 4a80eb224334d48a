//! Docker executor overhead: a trivial job (`true`, GIT_STRATEGY none) in a busybox image with
//! `executor = "docker"`, from enqueue to the fake accepting its `success`, next to the shell
//! executor's `e2e` figure; and the Docker Engine API requests the runner makes for it.
//!
//! Images are built locally as the runnel integration tests build them (no registry needed):
//! [`IMAGE`] is `FROM scratch` plus the host's static busybox, and the helper image is the one
//! `runnel docker build-helper-image` assembles with the binary under test, tagged by the
//! binary's size and mtime so an unchanged binary reuses it. `pull_policy = ["never"]`.
//!
//! The runner's `[runners.docker] host` points at a counting proxy ([`EngineProxy`]) on a unix
//! socket in the scenario directory, which relays every byte to the real daemon and counts the
//! HTTP requests on the way (bodies skipped by `Content-Length` or chunked framing; a connection
//! upgraded for `attach` is relayed without further parsing). The count of one job runs from
//! just before its enqueue until the runner, back to idle, has made no Docker request for
//! [`SETTLE`].
//!
//! `docker_floor_run_ms` is `docker run --rm <image> true` with the docker CLI: the daemon's
//! own cost of a container, which no docker-based runner can go below. It is measured right
//! before each job, and `docker_trivial_ratio` is that job's time over that floor.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, FakeGitlab, RemoteStatus};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::time::Instant;

use super::{
    JOB_TIMEOUT, LONG_POLL, Plan, READY_TIMEOUT, Session, enqueued_at, millis, scenario_dir,
    status_at, trivial_job,
};
use crate::error::BenchError;
use crate::report::Report;
use crate::runner::RunnerProcess;

/// The job image: the host's static busybox on `scratch`.
pub(super) const IMAGE: &str = "runnel-bench-busybox:1";
/// How long the runner must make no Docker request before a job's count is closed.
const SETTLE: Duration = Duration::from_millis(500);

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    ensure_image().await?;
    let helper = ensure_helper(&plan.runnel).await?;
    let dir = scenario_dir()?;
    let proxy = EngineProxy::start(&dir.path().join("docker.sock"), upstream_socket()?)?;
    let mut session = start_session(plan, dir, &proxy, &helper).await?;
    let result = measure(plan, report, &mut session, &proxy).await;
    session.stop(crate::runner::Stop::Graceful).await;
    result
}

async fn measure(
    plan: &Plan,
    report: &mut Report,
    session: &mut Session,
    proxy: &EngineProxy,
) -> Result<(), BenchError> {
    for _ in 0..plan.repetitions {
        // The floor right before each job, so that the ratio compares like with like on a
        // machine whose load changes.
        let start = Instant::now();
        docker_cli(&["run", "--rm", "--network", "none", IMAGE, "true"]).await?;
        let floor = millis(start.elapsed());
        report.record("docker_floor_run_ms", floor);
        session.wait_for_held_poll().await?;
        proxy.settle().await;
        let before = proxy.count();
        let enqueued = Instant::now();
        let id = session.fake.enqueue(trivial_job());
        let view = session.wait_success(id, JOB_TIMEOUT).await?;
        let done = status_at(&view, RemoteStatus::Success)
            .ok_or_else(|| BenchError::Missing(format!("job {id} has no success entry")))?;
        let e2e = millis(done.saturating_sub(enqueued_at(&view)?));
        session.wait_for_held_poll().await?;
        proxy.settle().await;
        let engine = proxy.since(before);
        tracing::info!(
            job = id,
            requests = ?proxy.timeline(before, enqueued),
            "docker engine requests of one job (ms after the enqueue)"
        );
        let job_path = format!("/api/v4/jobs/{id}");
        let api = session
            .fake
            .requests()
            .iter()
            .filter(|r| r.path == job_path || r.path.starts_with(&format!("{job_path}/")))
            .count()
            + 1;
        report.record("docker_trivial_ms", e2e);
        if floor > 0.0 {
            report.record("docker_trivial_ratio", e2e / floor);
        }
        #[allow(clippy::cast_precision_loss)]
        {
            report.record("docker_api_requests", api as f64);
            report.record("docker_engine_requests", engine.len() as f64);
        }
    }
    Ok(())
}

/// A fake with long polling and a docker runner on `proxy`, idle and polling.
async fn start_session(
    plan: &Plan,
    dir: tempfile::TempDir,
    proxy: &EngineProxy,
    helper: &str,
) -> Result<Session, BenchError> {
    let fake = FakeGitlab::start(FakeConfig {
        long_poll: LONG_POLL,
        ..FakeConfig::default()
    })
    .await
    .map_err(BenchError::fake("starting"))?;
    let text = format!(
        "concurrent = 1\n\
         check_interval = 3\n\
         shutdown_timeout = 30\n\
         \n\
         [[runners]]\n\
         \x20 name = \"bench-docker\"\n\
         \x20 url = \"{url}\"\n\
         \x20 token = \"{token}\"\n\
         \x20 executor = \"docker\"\n\
         \x20 [runners.docker]\n\
         \x20   host = \"unix://{socket}\"\n\
         \x20   image = \"{IMAGE}\"\n\
         \x20   helper_image = \"{helper}\"\n\
         \x20   pull_policy = [\"never\"]\n",
        url = fake.url(),
        token = fake.create_runner_token(),
        socket = proxy.path.display(),
    );
    let mut runner = RunnerProcess::start_with_config(&plan.runnel, &text, dir.path()).await?;
    super::wait_for_first_poll(&fake, &mut runner, "the docker runner").await?;
    let session = Session {
        fake,
        runner,
        _dir: dir,
    };
    session.wait_for_held_poll().await?;
    Ok(session)
}

/// The daemon's unix socket: `DOCKER_HOST` when it is a `unix://` address, else the default.
fn upstream_socket() -> Result<PathBuf, BenchError> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => {
            host.strip_prefix("unix://")
                .map(PathBuf::from)
                .ok_or_else(|| BenchError::Tool {
                    command: "docker".to_owned(),
                    problem: format!(
                        "DOCKER_HOST={host} is not a unix socket; the docker scenario counts \
                     requests through a unix-socket proxy"
                    ),
                })
        }
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

/// Runs the docker CLI; fails with its stderr.
pub(super) async fn docker_cli(args: &[&str]) -> Result<Vec<u8>, BenchError> {
    let command = format!("docker {}", args.join(" "));
    let output = Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| BenchError::Tool {
            command: command.clone(),
            problem: format!("cannot start (the docker scenario needs the docker CLI): {source}"),
        })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(BenchError::Tool {
            command,
            problem: format!(
                "exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

async fn image_exists(tag: &str) -> bool {
    docker_cli(&["image", "inspect", "--format", "{{.Id}}", tag])
        .await
        .is_ok()
}

/// Builds [`IMAGE`] from the host's static busybox unless it exists.
pub(super) async fn ensure_image() -> Result<(), BenchError> {
    if image_exists(IMAGE).await {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| BenchError::Tool {
            command: "busybox".to_owned(),
            problem: "is not installed; the docker scenario builds its image from the host's \
                      static busybox (apt-get install busybox-static)"
                .to_owned(),
        })?;
    let context = scenario_dir()?;
    let io = |doing, path: PathBuf| {
        move |source| BenchError::Io {
            doing,
            path,
            source,
        }
    };
    let target = context.path().join("busybox");
    std::fs::copy(busybox, &target).map_err(io("copy busybox to", target.clone()))?;
    let dockerfile = context.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox --install -s /bin && /bin/busybox mkdir -p /tmp && /bin/busybox chmod \
         1777 /tmp\"]\n",
    )
    .map_err(io("write", dockerfile))?;
    let path = context.path().display().to_string();
    docker_cli(&["build", "-q", "-t", IMAGE, &path]).await?;
    Ok(())
}

/// Runnel's own helper image, as `runnel docker build-helper-image` makes it with `runnel`;
/// returns its tag.
pub(super) async fn ensure_helper(runnel: &Path) -> Result<String, BenchError> {
    let meta = std::fs::metadata(runnel).map_err(|source| BenchError::Io {
        doing: "read the metadata of",
        path: runnel.to_owned(),
        source,
    })?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let tag = format!(
        "runnel-bench-helper:{:x}-{:x}",
        meta.len(),
        modified.as_nanos()
    );
    if image_exists(&tag).await {
        return Ok(tag);
    }
    let home = scenario_dir()?;
    let output = Command::new(runnel)
        .args(["docker", "build-helper-image", "--tag", &tag])
        .env("HOME", home.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| BenchError::Spawn {
            path: runnel.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(BenchError::Tool {
            command: format!("runnel docker build-helper-image --tag {tag}"),
            problem: format!(
                "exited {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(tag)
}

// ---------------------------------------------------------------------------------------------
// The counting proxy

/// A unix-socket relay to the Docker daemon that records every HTTP request line it passes.
struct EngineProxy {
    path: PathBuf,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EngineProxy {
    /// Listens on `path` and relays each connection to `upstream`.
    fn start(path: &Path, upstream: PathBuf) -> Result<Self, BenchError> {
        let listener = UnixListener::bind(path).map_err(|source| BenchError::Io {
            doing: "listen on",
            path: path.to_owned(),
            source,
        })?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    Err(error) => {
                        tracing::warn!(%error, "docker proxy cannot accept");
                        continue;
                    }
                };
                let upstream = upstream.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    if let Err(error) = relay(client, &upstream, log).await {
                        tracing::debug!(%error, "docker proxy connection ended");
                    }
                });
            }
        });
        Ok(Self {
            path: path.to_owned(),
            requests,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests seen so far.
    fn count(&self) -> usize {
        self.lock().len()
    }

    /// The requests seen after the first `start`.
    fn since(&self, start: usize) -> Vec<String> {
        let requests = self.lock();
        let since = requests.get(start..).unwrap_or_default();
        since.iter().map(|(_, line)| line.clone()).collect()
    }

    /// The requests after the first `start`, each with its time after `origin`.
    fn timeline(&self, start: usize, origin: Instant) -> Vec<String> {
        let requests = self.lock();
        let since = requests.get(start..).unwrap_or_default();
        since
            .iter()
            .map(|(at, line)| format!("{:.1} {line}", millis(at.saturating_duration_since(origin))))
            .collect()
    }

    /// Waits until no request has arrived for [`SETTLE`] (or [`READY_TIMEOUT`] passed).
    async fn settle(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = self.count();
        while Instant::now() < deadline {
            tokio::time::sleep(SETTLE).await;
            let now = self.count();
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one client connection, recording its requests.
async fn relay(
    client: UnixStream,
    upstream: &Path,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
) -> std::io::Result<()> {
    let server = UnixStream::connect(upstream).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = tokio::spawn(async move {
        let copied = tokio::io::copy(&mut server_read, &mut client_write).await;
        client_write.shutdown().await.ok();
        copied
    });
    let mut parser = RequestParser::default();
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let n = client_read.read(&mut buf).await?;
        if n == 0 {
            server_write.shutdown().await.ok();
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        parser.feed(chunk, |line| {
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((Instant::now(), line));
        });
        server_write.write_all(chunk).await?;
    }
    down.await.map_err(std::io::Error::other)??;
    Ok(())
}

/// Where the client side of a connection is in its HTTP/1.1 stream.
#[derive(Debug)]
enum State {
    /// Reading a request head (bytes so far).
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data plus its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk, up to the empty line.
    Trailer(Vec<u8>),
    /// Upgraded (attach): raw bytes, no more requests.
    Raw,
}

/// Splits a client byte stream into requests, reporting `METHOD /path` of each (API version
/// prefix and query dropped, ids and runner object names replaced by `{id}`).
#[derive(Debug)]
struct RequestParser {
    state: State,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self {
            state: State::Head(Vec::new()),
        }
    }
}

/// Longest request head accepted before the parser gives up on the connection.
const MAX_HEAD: usize = 64 * 1024;

impl RequestParser {
    fn feed(&mut self, mut input: &[u8], mut report: impl FnMut(String)) {
        while !input.is_empty() {
            match &mut self.state {
                State::Raw => return,
                State::Head(head) => {
                    let (byte, rest) = (input[0], &input[1..]);
                    input = rest;
                    head.push(byte);
                    if head.ends_with(b"\r\n\r\n") {
                        let head = std::mem::take(head);
                        self.state = Self::after_head(&head, &mut report);
                    } else if head.len() > MAX_HEAD {
                        self.state = State::Raw;
                    }
                }
                State::Body(left) => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    input = &input[take..];
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let (byte, rest) = (input[0], &input[1..]);
                    input = rest;
                    if byte != b'\n' {
                        line.push(byte);
                        continue;
                    }
                    let text = String::from_utf8_lossy(line);
                    let hex = text.split(';').next().unwrap_or_default().trim();
                    self.state = match u64::from_str_radix(hex, 16) {
                        Ok(0) => State::Trailer(Vec::new()),
                        Ok(size) => State::ChunkData(size + 2),
                        Err(_) => State::Raw,
                    };
                }
                State::ChunkData(left) => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    input = &input[take..];
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(line) => {
                    let (byte, rest) = (input[0], &input[1..]);
                    input = rest;
                    if byte != b'\n' {
                        line.push(byte);
                    } else if line.iter().all(|&b| b == b'\r') {
                        self.state = State::Head(Vec::new());
                    } else {
                        line.clear();
                    }
                }
            }
        }
    }

    fn after_head(head: &[u8], report: &mut impl FnMut(String)) -> State {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let request = lines.next().unwrap_or_default();
        let mut parts = request.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        report(format!("{method} {}", normalize(target)));
        let mut length = 0;
        let mut chunked = false;
        let mut upgrade = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "upgrade" => upgrade = true,
                _ => {}
            }
        }
        if upgrade {
            State::Raw
        } else if chunked {
            State::ChunkSize(Vec::new())
        } else if length > 0 {
            State::Body(length)
        } else {
            State::Head(Vec::new())
        }
    }
}

/// `/v1.47/containers/runner-abc-…/start?x=y` → `/containers/{id}/start`.
fn normalize(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let mut out = String::new();
    for (index, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        let version = index == 0
            && segment.strip_prefix('v').is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
            });
        if version {
            continue;
        }
        let id = segment.len() >= 12 && segment.chars().all(|c| c.is_ascii_hexdigit());
        let named = segment.starts_with("runner-") || segment.contains("%3A");
        out.push('/');
        out.push_str(if id || named { "{id}" } else { segment });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = RequestParser::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |line| seen.push(line));
        }
        seen
    }

    #[test]
    fn counts_requests_and_skips_their_bodies() {
        let stream: &[u8] = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n\
            POST /v1.47/containers/create?name=runner-x HTTP/1.1\r\nContent-Length: 27\r\n\r\n\
            GET /fake HTTP/1.1\r\n\r\nxxxxx\
            POST /v1.47/build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nGET /\r\n0\r\n\r\n\
            DELETE /v1.47/containers/0123456789abcdef HTTP/1.1\r\n\r\n";
        // Split at every byte, as a slow socket might deliver it.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            parse(&bytes),
            [
                "GET /_ping",
                "POST /containers/create",
                "POST /build",
                "DELETE /containers/{id}"
            ]
        );
    }

    #[test]
    fn stops_at_an_upgraded_connection() {
        let stream: &[u8] = b"POST /v1.47/containers/runner-a/attach?stream=1 HTTP/1.1\r\n\
            Upgrade: tcp\r\nConnection: Upgrade\r\n\r\nGET /not-a-request HTTP/1.1\r\n\r\n";
        assert_eq!(parse(&[stream]), ["POST /containers/{id}/attach"]);
    }
}
