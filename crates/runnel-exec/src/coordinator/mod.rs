//! The in-process coordinator: the subset of GitLab's runner API that the daemon uses, served
//! on an ephemeral port for one local pipeline.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /api/v4/jobs/request` | hands the next queued job for the asking runner (201 with the payload), else holds the request until one is queued (long polling) and answers 204 |
//! | `PUT /api/v4/jobs/:id` | `running`, then the final `success`/`failed` with `failure_reason` and `exit_code` |
//! | `PATCH /api/v4/jobs/:id/trace` | appends at the `Content-Range` offset (416 with `Range` otherwise), to the job's log file (written by a task of its own, never under the coordinator's lock) and as [`CoordinatorEvent::Output`] |
//! | `POST`/`GET /api/v4/jobs/:id/artifacts` | stores uploads under `.runnel/artifacts/`; serves the archive to the job and its dependants |
//! | `/<project>.git/…` | the source snapshot through `git http-backend` ([`git`]) |
//!
//! Every job route checks the job's random token (`JOB-TOKEN`), and job requests check the
//! runner token. What the scheduler needs to know comes out as [`CoordinatorEvent`]s. The JSON
//! payload itself is made by `runnel_api::encode_job_payload`.

mod git;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post, put};
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;

/// How long a job request is held when no job is queued.
const LONG_POLL: Duration = Duration::from_secs(20);
/// `X-GitLab-Trace-Update-Interval`: the smallest the runner accepts, for a live log.
const TRACE_INTERVAL: &str = "1";
/// The largest JSON body the job routes read (review M2): a job request or update is a few
/// hundred bytes.
const JSON_BODY_LIMIT: usize = 64 * 1024;
/// The largest trace PATCH read: the runner sends at most 1 MiB per request.
const TRACE_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Trace appends waiting for a job's log writer (each at most [`TRACE_BODY_LIMIT`]); a runner
/// sends one at a time, so more only means a runner that does not wait for answers (503).
const LOG_QUEUE: usize = 4;

/// Which runner (executor) a job is queued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RunnerKind {
    Shell,
    Docker,
}

/// What happened to a job, for the scheduler.
#[derive(Debug)]
pub(crate) enum CoordinatorEvent {
    /// A runner took the job.
    Started(u64),
    /// Trace bytes (already masked by the runner).
    Output(u64, Vec<u8>),
    /// The final update (sent once the job's log file has everything the job sent).
    Finished {
        id: u64,
        success: bool,
        failure_reason: Option<String>,
        exit_code: Option<i32>,
        /// Why the log file is incomplete (a full disk), when it is.
        log_error: Option<String>,
    },
}

/// What a job's log writer is asked to do, in order.
#[derive(Debug)]
enum LogWrite {
    Append(Bytes),
    /// The job is over: send [`CoordinatorEvent::Finished`] with this and the log's error.
    Finish {
        id: u64,
        success: bool,
        failure_reason: Option<String>,
        exit_code: Option<i32>,
    },
}

/// Writes one job's log file (blocking file I/O stays off the coordinator's lock, review
/// L11), and reports the job finished after its last byte is written. A write error (a full
/// disk) stops the writing and is reported with the final state.
async fn write_log(
    file: std::fs::File,
    path: PathBuf,
    mut writes: mpsc::Receiver<LogWrite>,
    events: mpsc::UnboundedSender<CoordinatorEvent>,
) {
    let mut file = Some(tokio::fs::File::from_std(file));
    let mut error: Option<String> = None;
    while let Some(write) = writes.recv().await {
        match write {
            LogWrite::Append(bytes) => {
                let Some(open) = file.as_mut() else { continue };
                // Flushed each time: a tokio file reports a failed write only on the next call.
                let written = match open.write_all(&bytes).await {
                    Ok(()) => open.flush().await,
                    Err(error) => Err(error),
                };
                if let Err(failure) = written {
                    tracing::warn!(path = %path.display(), error = %failure, "cannot write the job log file; the rest of the log is not saved");
                    error = Some(failure.to_string());
                    file = None;
                }
            }
            LogWrite::Finish {
                id,
                success,
                failure_reason,
                exit_code,
            } => {
                events
                    .send(CoordinatorEvent::Finished {
                        id,
                        success,
                        failure_reason,
                        exit_code,
                        log_error: error.clone(),
                    })
                    .ok();
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum JobState {
    Queued,
    Running,
    Done,
}

#[derive(Debug)]
struct JobRecord {
    token: String,
    kind: RunnerKind,
    payload: Option<Vec<u8>>,
    state: JobState,
    trace_len: u64,
    /// The job's log writer ([`write_log`]); taken at the final update.
    log: Option<mpsc::Sender<LogWrite>>,
    artifacts_dir: PathBuf,
    /// The archive artifact: file and name as uploaded.
    archive: Option<(PathBuf, String, u64)>,
    /// Tokens of dependants allowed to download the archive.
    readers: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<u64, JobRecord>,
    queue: Vec<u64>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    queue_version: watch::Sender<u64>,
    events: mpsc::UnboundedSender<CoordinatorEvent>,
    runners: Vec<(String, RunnerKind)>,
    git_root: PathBuf,
    /// At most this many jobs run at once (`--concurrency`).
    max_running: usize,
    /// Fired at the end of the pipeline: held job requests are answered at once.
    closing: CancellationToken,
    /// Fired on interruption: running jobs are told `Job-Status: canceled`.
    canceled: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A job to queue.
#[derive(Debug)]
pub(crate) struct NewJob {
    pub(crate) id: u64,
    pub(crate) token: String,
    pub(crate) kind: RunnerKind,
    pub(crate) payload: Vec<u8>,
    /// The job's log file (created or appended to).
    pub(crate) log_file: PathBuf,
    /// Where the job's artifacts are stored.
    pub(crate) artifacts_dir: PathBuf,
}

/// The running coordinator.
#[derive(Debug)]
pub(crate) struct Coordinator {
    shared: Arc<Shared>,
    /// The base URL runners use (`http://<ip>:<port>`).
    pub(crate) url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Coordinator {
    /// Listens on `ip` (an ephemeral port) and serves until [`Self::shutdown`].
    pub(crate) async fn start(
        ip: IpAddr,
        runners: Vec<(String, RunnerKind)>,
        git_root: PathBuf,
        max_running: usize,
        events: mpsc::UnboundedSender<CoordinatorEvent>,
    ) -> Result<Self, ExecError> {
        let address = SocketAddr::new(ip, 0);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ExecError::Listen {
                address: address.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ExecError::Listen {
            address: address.to_string(),
            source,
        })?;
        let shared = Arc::new(Shared {
            inner: Mutex::default(),
            queue_version: watch::Sender::new(0),
            events,
            runners,
            git_root,
            max_running: max_running.max(1),
            closing: CancellationToken::new(),
            canceled: CancellationToken::new(),
        });
        // Review M2: every route bounds what it reads, and routes whose token is in a header
        // check it before reading the body. Only the authenticated artifact upload streams an
        // unbounded body (to a file).
        let api = Router::new()
            .route("/jobs/request", post(request_job))
            .route("/jobs/{id}", put(update_job))
            .route("/jobs/{id}/trace", patch(patch_trace))
            .route(
                "/jobs/{id}/artifacts",
                post(upload_artifacts)
                    .layer(DefaultBodyLimit::disable())
                    .get(download_artifacts),
            );
        let router = Router::new()
            .nest("/api/v4", api)
            .fallback(git::serve)
            .with_state(Arc::clone(&shared));
        let closing = shared.closing.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { closing.cancelled().await });
            if let Err(error) = serve.await {
                tracing::error!(%error, "local coordinator stopped");
            }
        });
        Ok(Self {
            shared,
            url: format!("http://{local}"),
            server,
        })
    }

    /// Queues a job for its runner.
    pub(crate) fn enqueue(&self, job: NewJob) -> Result<(), ExecError> {
        if let Some(parent) = job.log_file.parent() {
            std::fs::create_dir_all(parent).map_err(ExecError::io("create", parent))?;
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&job.log_file)
            .map_err(ExecError::io("open log file", &job.log_file))?;
        let (log, writes) = mpsc::channel(LOG_QUEUE);
        tokio::spawn(write_log(
            log_file,
            job.log_file,
            writes,
            self.shared.events.clone(),
        ));
        let mut inner = self.shared.lock();
        inner.jobs.insert(
            job.id,
            JobRecord {
                token: job.token,
                kind: job.kind,
                payload: Some(job.payload),
                state: JobState::Queued,
                trace_len: 0,
                log: Some(log),
                artifacts_dir: job.artifacts_dir,
                archive: None,
                readers: Vec::new(),
            },
        );
        inner.queue.push(job.id);
        drop(inner);
        self.shared.queue_version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// The archive artifact of job `id` (file name and size), allowing `reader` (a dependant's
    /// token) to download it.
    pub(crate) fn share_archive(&self, id: u64, reader: &str) -> Option<(String, u64)> {
        let mut inner = self.shared.lock();
        let job = inner.jobs.get_mut(&id)?;
        let (_, name, size) = job.archive.clone()?;
        job.readers.push(reader.to_owned());
        Some((name, size))
    }

    /// Removes queued jobs (they were never picked up) and tells running ones to stop.
    pub(crate) fn cancel(&self) -> Vec<u64> {
        self.shared.canceled.cancel();
        let mut inner = self.shared.lock();
        let queued = std::mem::take(&mut inner.queue);
        for id in &queued {
            if let Some(job) = inner.jobs.get_mut(id) {
                job.state = JobState::Done;
                job.payload = None;
            }
        }
        queued
    }

    /// Answers held requests and stops serving once the daemon is gone.
    pub(crate) fn close(&self) {
        self.shared.closing.cancel();
    }

    /// Waits for the server to end (after [`Self::close`] and the daemon's exit).
    pub(crate) async fn shutdown(self) {
        self.shared.closing.cancel();
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}

type AppState = State<Arc<Shared>>;

fn status_header(shared: &Shared, state: &JobState) -> HeaderValue {
    HeaderValue::from_static(match state {
        _ if shared.canceled.is_cancelled() => "canceled",
        JobState::Done => "success",
        _ => "running",
    })
}

fn plain(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

/// The body, unless it is (or announces to be) longer than `limit`: then nothing more is read.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Option<Bytes> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return None;
    }
    axum::body::to_bytes(body, limit).await.ok()
}

fn job_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("JOB-TOKEN").and_then(|v| v.to_str().ok())
}

#[derive(Debug, Deserialize)]
struct RequestBody {
    token: Option<String>,
}

/// `POST /jobs/request`.
async fn request_job(State(shared): AppState, headers: HeaderMap, body: Body) -> Response {
    // The runner token is in the body (as on GitLab), so the body is read, but no more than
    // a job request can be.
    let Some(body) = read_limited(&headers, body, JSON_BODY_LIMIT).await else {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Request Entity Too Large",
        );
    };
    let Ok(body) = serde_json::from_slice::<RequestBody>(&body) else {
        return plain(StatusCode::BAD_REQUEST, "400 invalid JSON");
    };
    let Some(kind) = shared
        .runners
        .iter()
        .find(|(token, _)| Some(token.as_str()) == body.token.as_deref())
        .map(|(_, kind)| *kind)
    else {
        return plain(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    let mut version = shared.queue_version.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        version.borrow_and_update();
        if shared.closing.is_cancelled() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let picked = {
            let mut inner = shared.lock();
            let Inner { jobs, queue } = &mut *inner;
            let running = jobs
                .values()
                .filter(|j| j.state == JobState::Running)
                .count();
            let position = queue
                .iter()
                .position(|id| jobs.get(id).is_some_and(|j| j.kind == kind))
                .filter(|_| running < shared.max_running);
            position.and_then(|at| {
                let id = queue.remove(at);
                let job = jobs.get_mut(&id)?;
                job.state = JobState::Running;
                Some((id, job.payload.take()?))
            })
        };
        if let Some((id, payload)) = picked {
            shared.events.send(CoordinatorEvent::Started(id)).ok();
            return (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                payload,
            )
                .into_response();
        }
        tokio::select! {
            changed = version.changed() => if changed.is_err() {
                return StatusCode::NO_CONTENT.into_response();
            },
            () = tokio::time::sleep_until(deadline) => return StatusCode::NO_CONTENT.into_response(),
            () = shared.closing.cancelled() => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    token: Option<String>,
    state: Option<String>,
    failure_reason: Option<String>,
    exit_code: Option<i64>,
}

/// `PUT /jobs/:id`.
async fn update_job(
    State(shared): AppState,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Authenticate from the header before reading anything, when the runner sends it.
    if let Some(token) = job_token(&headers) {
        let inner = shared.lock();
        match inner.jobs.get(&id) {
            None => return plain(StatusCode::NOT_FOUND, "404 Job Not Found"),
            Some(job) if job.token != token => {
                return plain(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            Some(_) => {}
        }
    }
    let Some(body) = read_limited(&headers, body, JSON_BODY_LIMIT).await else {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Request Entity Too Large",
        );
    };
    let Ok(body) = serde_json::from_slice::<UpdateBody>(&body) else {
        return plain(StatusCode::BAD_REQUEST, "400 invalid JSON");
    };
    // Decided under the lock; the lock is released before anything is awaited. `newly_done`
    // holds the job's log writer when this update is the one that ends the job.
    let (success, newly_done) = {
        let mut inner = shared.lock();
        let Some(job) = inner.jobs.get_mut(&id) else {
            return plain(StatusCode::NOT_FOUND, "404 Job Not Found");
        };
        let token = body.token.as_deref().or_else(|| job_token(&headers));
        if token != Some(job.token.as_str()) {
            return plain(StatusCode::FORBIDDEN, "403 Forbidden");
        }
        let success = match body.state.as_deref() {
            Some("running") => {
                let status = status_header(&shared, &job.state);
                return (StatusCode::OK, [("Job-Status", status)]).into_response();
            }
            Some("success") => true,
            Some("failed") => false,
            other => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("400 state is invalid: {other:?}"),
                );
            }
        };
        if job.state == JobState::Done {
            (success, None)
        } else {
            job.state = JobState::Done;
            (success, Some(job.log.take()))
        }
    };
    if let Some(log) = newly_done {
        let failure_reason = body.failure_reason.filter(|r| !r.is_empty());
        let exit_code = body.exit_code.and_then(|c| i32::try_from(c).ok());
        let finish = LogWrite::Finish {
            id,
            success,
            failure_reason: failure_reason.clone(),
            exit_code,
        };
        // After the log's last byte: the scheduler then knows whether the file is whole.
        let sent = match log {
            Some(log) => log.send(finish).await.is_ok(),
            None => false,
        };
        if !sent {
            shared
                .events
                .send(CoordinatorEvent::Finished {
                    id,
                    success,
                    failure_reason,
                    exit_code,
                    log_error: Some("the log writer stopped early".to_owned()),
                })
                .ok();
        }
        // A slot is free: held requests look at the queue again.
        shared.queue_version.send_modify(|v| *v += 1);
    }
    let status = if success { "success" } else { "failed" };
    (StatusCode::OK, [("Job-Status", status)]).into_response()
}

/// `PATCH /jobs/:id/trace`.
async fn patch_trace(
    State(shared): AppState,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    {
        let inner = shared.lock();
        let Some(job) = inner.jobs.get(&id) else {
            return plain(StatusCode::NOT_FOUND, "404 Job Not Found");
        };
        if job_token(&headers) != Some(job.token.as_str()) {
            return plain(StatusCode::FORBIDDEN, "403 Forbidden");
        }
    }
    let Some(body) = read_limited(&headers, body, TRACE_BODY_LIMIT).await else {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Request Entity Too Large",
        );
    };
    let mut inner = shared.lock();
    let Some(job) = inner.jobs.get_mut(&id) else {
        return plain(StatusCode::NOT_FOUND, "404 Job Not Found");
    };
    let range = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('-'))
        .and_then(|(start, end)| Some((start.parse::<u64>().ok()?, end.parse::<u64>().ok()?)));
    let Some((start, end)) = range else {
        return plain(StatusCode::BAD_REQUEST, "400 invalid Content-Range");
    };
    let len = body.len() as u64;
    let status = status_header(&shared, &job.state);
    let interval = (
        "X-GitLab-Trace-Update-Interval",
        HeaderValue::from_static(TRACE_INTERVAL),
    );
    if start != job.trace_len || end.checked_sub(start).map(|d| d + 1) != Some(len) {
        let range = format!("0-{}", job.trace_len);
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [("Range", range)],
            [("Job-Status", status), interval],
        )
            .into_response();
    }
    // A place in the writer's queue first: the offset only moves for bytes the log will get.
    let permit = match job.log.as_ref().map(mpsc::Sender::try_reserve) {
        Some(Ok(permit)) => Some(permit),
        Some(Err(mpsc::error::TrySendError::Full(()))) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "503 the job log is busy");
        }
        Some(Err(mpsc::error::TrySendError::Closed(()))) | None => None,
    };
    job.trace_len += len;
    if let Some(permit) = permit {
        permit.send(LogWrite::Append(body.clone()));
    }
    shared
        .events
        .send(CoordinatorEvent::Output(id, body.to_vec()))
        .ok();
    let range = format!("0-{}", job.trace_len);
    (
        StatusCode::ACCEPTED,
        [("Range", range)],
        [("Job-Status", status), interval],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct UploadParams {
    artifact_type: Option<String>,
}

/// `POST /jobs/:id/artifacts`: a multipart upload with a `file` part.
async fn upload_artifacts(
    State(shared): AppState,
    UrlPath(id): UrlPath<u64>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let dir = {
        let inner = shared.lock();
        let Some(job) = inner.jobs.get(&id) else {
            return plain(StatusCode::NOT_FOUND, "404 Job Not Found");
        };
        if job_token(&headers) != Some(job.token.as_str()) {
            return plain(StatusCode::FORBIDDEN, "403 Forbidden");
        }
        job.artifacts_dir.clone()
    };
    let archive = params
        .artifact_type
        .as_deref()
        .is_none_or(|t| t == "archive");
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return plain(StatusCode::BAD_REQUEST, "400 file is missing"),
            Err(error) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("400 bad multipart body: {error}"),
                );
            }
        };
        if field.name() != Some("file") {
            continue;
        }
        let name = field
            .file_name()
            .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| "artifacts.zip".to_owned());
        match store(&dir, &name, field).await {
            Ok((path, size)) => {
                if archive {
                    let mut inner = shared.lock();
                    if let Some(job) = inner.jobs.get_mut(&id) {
                        job.archive = Some((path, name, size));
                    }
                }
                return (StatusCode::CREATED, "{}").into_response();
            }
            Err(message) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &message),
        }
    }
}

async fn store(
    dir: &Path,
    name: &str,
    mut field: axum::extract::multipart::Field<'_>,
) -> Result<(PathBuf, u64), String> {
    use tokio::io::AsyncWriteExt as _;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut size = 0u64;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| format!("upload interrupted: {e}"))?
    {
        size += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((path, size))
}

/// `GET /jobs/:id/artifacts`: the archive, for the job itself or a dependant.
async fn download_artifacts(
    State(shared): AppState,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
) -> Response {
    let (path, name) = {
        let inner = shared.lock();
        let Some(job) = inner.jobs.get(&id) else {
            return plain(StatusCode::NOT_FOUND, "404 Job Not Found");
        };
        let token = job_token(&headers).unwrap_or("");
        if token != job.token && !job.readers.iter().any(|r| r == token) {
            return plain(StatusCode::FORBIDDEN, "403 Forbidden");
        }
        match &job.archive {
            Some((path, name, _)) => (path.clone(), name.clone()),
            None => return plain(StatusCode::NOT_FOUND, "404 Artifact Not Found"),
        }
    };
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let disposition = format!("attachment; filename=\"{}\"", name.replace('"', ""));
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                Body::from_stream(tokio_util::io::ReaderStream::new(file)),
            )
                .into_response()
        }
        Err(error) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read {}: {error}", path.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator for one shell runner (`runner-token`) with job 7 (`job-token`) queued; its
    /// log goes to `<dir>/logs/job.log`.
    async fn coordinator_with_job(
        dir: &Path,
    ) -> (Coordinator, mpsc::UnboundedReceiver<CoordinatorEvent>) {
        let (tx, events) = mpsc::unbounded_channel();
        let runners = vec![("runner-token".to_owned(), RunnerKind::Shell)];
        let coordinator = Coordinator::start(
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            runners,
            dir.to_path_buf(),
            1,
            tx,
        )
        .await
        .unwrap();
        coordinator
            .enqueue(NewJob {
                id: 7,
                token: "job-token".to_owned(),
                kind: RunnerKind::Shell,
                payload: b"{\"id\":7}".to_vec(),
                log_file: dir.join("logs/job.log"),
                artifacts_dir: dir.join("artifacts"),
            })
            .unwrap();
        (coordinator, events)
    }

    #[tokio::test]
    async fn jobs_are_handed_out_traced_and_finished_with_tokens_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (coordinator, mut events) = coordinator_with_job(dir.path()).await;
        let log_file = dir.path().join("logs/job.log");
        let http = reqwest::Client::new();
        let api = format!("{}/api/v4", coordinator.url);
        let request = |token: &str| {
            http.post(format!("{api}/jobs/request"))
                .body(format!("{{\"token\":\"{token}\"}}"))
                .send()
        };
        assert_eq!(request("wrong").await.unwrap().status(), 403);
        let picked = request("runner-token").await.unwrap();
        assert_eq!(picked.status(), 201);
        assert_eq!(picked.text().await.unwrap(), "{\"id\":7}");
        assert!(matches!(
            events.recv().await,
            Some(CoordinatorEvent::Started(7))
        ));

        let patch = |range: &str, token: &str, body: &'static str| {
            http.patch(format!("{api}/jobs/7/trace"))
                .header("JOB-TOKEN", token)
                .header("Content-Range", range)
                .body(body)
                .send()
        };
        assert_eq!(patch("0-4", "wrong", "hello").await.unwrap().status(), 403);
        let gap = patch("5-9", "job-token", "world").await.unwrap();
        assert_eq!(gap.status(), 416);
        assert_eq!(gap.headers()["Range"], "0-0");
        let first = patch("0-4", "job-token", "hello").await.unwrap();
        assert_eq!(first.status(), 202);
        assert_eq!(first.headers()["Range"], "0-5");
        match events.recv().await {
            Some(CoordinatorEvent::Output(7, bytes)) => assert_eq!(bytes, b"hello"),
            other => panic!("expected output, got {other:?}"),
        }

        let denied = http
            .get(format!("{api}/jobs/7/artifacts"))
            .header("JOB-TOKEN", "someone-else")
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 403);

        let done = http
            .put(format!("{api}/jobs/7"))
            .header("JOB-TOKEN", "job-token")
            .body(r#"{"token":"job-token","state":"failed","failure_reason":"script_failure","exit_code":3}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
        match events.recv().await {
            Some(CoordinatorEvent::Finished {
                id: 7,
                success: false,
                failure_reason,
                exit_code: Some(3),
                log_error: None,
            }) => assert_eq!(failure_reason.as_deref(), Some("script_failure")),
            other => panic!("expected the final state, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&log_file).unwrap(), "hello");

        // Nothing queued: the request is held, then answered 204 when the run closes.
        let held = tokio::spawn(request("runner-token"));
        tokio::task::yield_now().await;
        coordinator.close();
        assert_eq!(held.await.unwrap().unwrap().status(), 204);
        coordinator.shutdown().await;
    }

    /// Review L11: a log write failing (a full disk, `/dev/full` here) is reported with the
    /// final state instead of only a daemon warning.
    #[tokio::test]
    async fn a_log_write_error_comes_with_the_final_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("logs/job.log")).unwrap();
        let (coordinator, mut events) = coordinator_with_job(dir.path()).await;
        let http = reqwest::Client::new();
        let api = format!("{}/api/v4", coordinator.url);
        let picked = http
            .post(format!("{api}/jobs/request"))
            .body(r#"{"token":"runner-token"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(picked.status(), 201);
        let patched = http
            .patch(format!("{api}/jobs/7/trace"))
            .header("JOB-TOKEN", "job-token")
            .header("Content-Range", "0-4")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 202);
        let done = http
            .put(format!("{api}/jobs/7"))
            .header("JOB-TOKEN", "job-token")
            .body(r#"{"token":"job-token","state":"success"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
        loop {
            match events.recv().await {
                Some(CoordinatorEvent::Finished {
                    id: 7,
                    success: true,
                    log_error: Some(error),
                    ..
                }) => {
                    assert!(error.contains("No space left on device"), "{error}");
                    break;
                }
                Some(CoordinatorEvent::Started(_) | CoordinatorEvent::Output(..)) => {}
                other => panic!("expected the final state with the log error, got {other:?}"),
            }
        }
        coordinator.close();
        coordinator.shutdown().await;
    }

    /// Sends a request head announcing `length` body bytes, then a little of the body, and
    /// returns the status line of the answer (review M2: `bigpost.py` made the coordinator
    /// buffer 1.5 GB before it looked at the token).
    async fn status_of_huge(url: &str, head: &str, length: u64) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address = url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("{head}\r\nHost: {address}\r\nContent-Length: {length}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(&[b'x'; 4096]).await.unwrap();
        let mut answer = vec![0; 256];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{head:?}: no answer without reading the whole body"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn huge_or_unauthenticated_bodies_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (coordinator, _events) = coordinator_with_job(dir.path()).await;
        let url = coordinator.url.clone();
        let huge = 1_572_864_000;
        let cases = [
            ("POST /api/v4/jobs/request HTTP/1.1", "413"),
            ("PUT /api/v4/jobs/7 HTTP/1.1\r\nJOB-TOKEN: wrong", "403"),
            ("PUT /api/v4/jobs/7 HTTP/1.1", "413"),
            (
                "PATCH /api/v4/jobs/7/trace HTTP/1.1\r\nJOB-TOKEN: wrong",
                "403",
            ),
            (
                "PATCH /api/v4/jobs/7/trace HTTP/1.1\r\nJOB-TOKEN: job-token\r\nContent-Range: 0-1",
                "413",
            ),
            (
                "POST /api/v4/jobs/7/artifacts HTTP/1.1\r\nJOB-TOKEN: wrong\r\nContent-Type: multipart/form-data; boundary=x",
                "403",
            ),
            ("POST /g/p.git/git-upload-pack HTTP/1.1", "401"),
        ];
        for (head, status) in cases {
            let line = status_of_huge(&url, head, huge).await;
            assert!(line.contains(status), "{head:?}: {line}");
        }
        coordinator.close();
        coordinator.shutdown().await;
    }

    /// Review L2: a job pushed `HEAD:refs/heads/evil` into the snapshot repository.
    #[tokio::test]
    async fn the_git_endpoint_refuses_pushes() {
        let dir = tempfile::tempdir().unwrap();
        let (coordinator, _events) = coordinator_with_job(dir.path()).await;
        let http = reqwest::Client::new();
        let picked = http
            .post(format!("{}/api/v4/jobs/request", coordinator.url))
            .body(r#"{"token":"runner-token"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(picked.status(), 201);
        for (method, path) in [
            (reqwest::Method::GET, "info/refs?service=git-receive-pack"),
            (reqwest::Method::POST, "git-receive-pack"),
            (reqwest::Method::PUT, "git-upload-pack"),
        ] {
            let answer = http
                .request(
                    method.clone(),
                    format!("{}/g/p.git/{path}", coordinator.url),
                )
                .basic_auth("gitlab-ci-token", Some("job-token"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 403, "{method} {path}");
        }
        coordinator.close();
        coordinator.shutdown().await;
    }
}
