//! [`FakeGitlab`]: the handle tests hold to start, drive, observe and stop the fake.
//!
//! Methods are synchronous and cheap (they take the state lock briefly) except the `wait_for_*`
//! helpers and [`FakeGitlab::shutdown`]. The handle does not retry or interpret anything: it
//! reports exactly what the server saw.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::builder::JobDefinition;
use crate::config::FakeConfig;
use crate::control;
use crate::error::FakeError;
use crate::faults::{EndpointFilter, FaultAction};
use crate::routes;
use crate::server;
use crate::state::{AUTH_TOKEN_PREFIX, ArtifactUploadMode, RunnerSettings, State, random_token};
use crate::view::{JobProgress, JobView, RemoteStatus, RequestRecord, RunnerKind, RunnerView};

/// A runner created through the test API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedRunner {
    /// Runner id (for targeting jobs with [`crate::JobBuilder::runner`]).
    pub id: u64,
    /// Its `glrt-` authentication token.
    pub token: runnel_types::RunnerToken,
}

/// A running fake coordinator. Dropping it stops the server (in the background);
/// [`FakeGitlab::shutdown`] stops it and waits.
pub struct FakeGitlab {
    state: Arc<State>,
    server: Option<JoinHandle<()>>,
}

impl FakeGitlab {
    /// Binds `config.listen` and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: FakeConfig) -> Result<Self, FakeError> {
        let bind_error = |source| FakeError::Bind {
            addr: config.listen,
            source,
        };
        let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(State::new(&config, format!("{scheme}://{addr}")));
        let app = routes::router(Arc::clone(&state)).merge(control::router(Arc::clone(&state)));
        let server = tokio::spawn(server::serve(listener, tls, Arc::clone(&state), app));
        Ok(Self {
            state,
            server: Some(server),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:4321` (what goes into `url =` in config.toml).
    pub fn url(&self) -> &str {
        &self.state.url
    }

    /// Stops accepting connections, answers held long polls, and waits for the server to end.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
        {
            tracing::warn!(%error, "fake coordinator task ended abnormally");
        }
    }

    // ----- runners -----

    /// Accepts `token` as a registration token for the legacy `POST /runners`.
    pub fn add_registration_token(&self, token: impl Into<String>) {
        self.state.lock().registration_tokens.insert(token.into());
    }

    /// Accepts `token` as a personal access token for the PAT token reset.
    pub fn add_personal_access_token(&self, token: impl Into<String>) {
        self.state
            .lock()
            .personal_access_tokens
            .insert(token.into());
    }

    /// Creates a runner "in the UI" and returns its new `glrt-` token.
    pub fn create_runner_token(&self) -> String {
        self.create_runner(RunnerSettings::default())
            .token
            .expose()
            .to_owned()
    }

    /// Creates a runner "in the UI" with the given settings.
    pub fn create_runner(&self, settings: RunnerSettings) -> CreatedRunner {
        let token = random_token(AUTH_TOKEN_PREFIX, 20);
        let runner = self
            .state
            .create_runner(RunnerKind::Authentication, token, settings);
        CreatedRunner {
            id: runner.id,
            token: runner.token,
        }
    }

    /// Registers an existing authentication token (for example one given on the command line).
    pub fn add_runner_token(&self, token: impl Into<String>) -> CreatedRunner {
        let runner = self.state.create_runner(
            RunnerKind::Authentication,
            token.into(),
            RunnerSettings::default(),
        );
        CreatedRunner {
            id: runner.id,
            token: runner.token,
        }
    }

    /// One runner.
    pub fn runner(&self, id: u64) -> Option<RunnerView> {
        self.state.lock().runners.get(&id).cloned()
    }

    /// All runners, by id.
    pub fn runners(&self) -> Vec<RunnerView> {
        self.state.lock().runners.values().cloned().collect()
    }

    // ----- git repositories -----

    /// Creates an empty bare repository served at `<url>/<path>.git` (`path` is
    /// `namespace/project`, as in GitLab). Fill it through the handle; clone it with the token of
    /// a running job, as a [`crate::JobBuilder::repo`] job does. Runs `git init` on the calling
    /// thread (a few milliseconds), like the handle's commit helpers.
    pub fn create_repo(&self, path: &str) -> Result<crate::RepoHandle, FakeError> {
        self.state.git.create_repo(&self.state.url, path)
    }

    // ----- jobs -----

    /// Queues a job; returns its id.
    pub fn enqueue(&self, job: impl Into<JobDefinition>) -> u64 {
        self.state.enqueue_definition(&job.into())
    }

    /// Queues a hand-written payload for any runner. Its `id` is replaced by the assigned one;
    /// its `token` is kept when it is a non-empty string, otherwise a fresh one is set.
    pub fn enqueue_raw(&self, payload: Value) -> Result<u64, FakeError> {
        self.state.enqueue_raw(payload)
    }

    /// The current queue version (the value of `X-GitLab-Last-Update`).
    pub fn queue_version(&self) -> String {
        self.state.queue_version()
    }

    /// A snapshot of one job.
    pub fn job(&self, id: u64) -> Option<JobView> {
        self.state.lock().jobs.get(&id).map(|job| job.view.clone())
    }

    /// The payload the job was (or will be) handed out with.
    pub fn job_payload(&self, id: u64) -> Option<Value> {
        self.state
            .lock()
            .jobs
            .get(&id)
            .map(|job| job.payload.clone())
    }

    /// Waits until `predicate` holds for job `id`; fails with a description of the job's last
    /// state when `timeout` passes first.
    pub async fn wait_for_job_state(
        &self,
        id: u64,
        predicate: impl Fn(&JobView) -> bool,
        timeout: Duration,
    ) -> Result<JobView, FakeError> {
        // The predicate sees the job in place, under the state lock; only a match is copied,
        // so waiting on a job with a large trace does not copy the trace at every change.
        let check = || {
            let inner = self.state.lock();
            let job = inner.jobs.get(&id).ok_or(FakeError::UnknownJob { id })?;
            Ok(predicate(&job.view).then(|| job.view.clone()))
        };
        self.wait_until(&format!("job {id}"), timeout, check, || {
            self.describe_job(id)
        })
        .await
    }

    /// A snapshot of one job without its trace and upload bodies (cheap at any trace size).
    pub fn job_progress(&self, id: u64) -> Option<JobProgress> {
        self.state
            .lock()
            .jobs
            .get(&id)
            .map(|job| JobProgress::of(&job.view))
    }

    /// The trace bytes of job `id` from byte `offset` on (empty when `offset` is at or past
    /// the end): lets a harness search only what arrived since its last look.
    pub fn trace_since(&self, id: u64, offset: u64) -> Option<Vec<u8>> {
        let inner = self.state.lock();
        let trace = &inner.jobs.get(&id)?.view.trace;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(trace.len());
        Some(trace[start..].to_vec())
    }

    /// Like [`Self::wait_for_job_state`], on the job's [`JobProgress`]: nothing proportional
    /// to the trace is copied while waiting.
    pub async fn wait_for_job_progress(
        &self,
        id: u64,
        predicate: impl Fn(&JobProgress) -> bool,
        timeout: Duration,
    ) -> Result<JobProgress, FakeError> {
        let check = || {
            let progress = self.job_progress(id).ok_or(FakeError::UnknownJob { id })?;
            Ok(predicate(&progress).then_some(progress))
        };
        self.wait_until(&format!("job {id}"), timeout, check, || {
            self.describe_job(id)
        })
        .await
    }

    fn describe_job(&self, id: u64) -> String {
        match self.job_progress(id) {
            Some(progress) => format!(
                "status {}, {} updates, {} patches, {} trace bytes",
                progress.status,
                progress.updates.len(),
                progress.patches.len(),
                progress.trace_len
            ),
            None => "no such job".to_owned(),
        }
    }

    /// Waits until some logged request satisfies `predicate`, and returns it.
    pub async fn wait_for_request(
        &self,
        predicate: impl Fn(&RequestRecord) -> bool,
        timeout: Duration,
    ) -> Result<RequestRecord, FakeError> {
        let check = || {
            Ok(self
                .state
                .lock()
                .requests
                .iter()
                .find(|r| predicate(r))
                .cloned())
        };
        let describe = || {
            let requests = self.requests();
            let recent: Vec<String> = requests
                .iter()
                .rev()
                .take(5)
                .map(|r| format!("{} {} -> {:?}", r.method, r.path, r.status))
                .collect();
            format!(
                "{} requests, latest: [{}]",
                requests.len(),
                recent.join(", ")
            )
        };
        self.wait_until("a matching request", timeout, check, describe)
            .await
    }

    /// Job requests currently held by long polling.
    pub fn held_job_requests(&self) -> usize {
        self.state.held_polls()
    }

    /// Waits until exactly `count` job requests are held by long polling.
    pub async fn wait_for_held_job_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<(), FakeError> {
        let check = || Ok((self.state.held_polls() == count).then_some(()));
        let describe = || format!("{} held job requests", self.state.held_polls());
        let what = format!("{count} held job requests");
        self.wait_until(&what, timeout, check, describe).await
    }

    async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<T>, FakeError>,
        describe: impl Fn() -> String,
    ) -> Result<T, FakeError> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.state.subscribe_changes();
        loop {
            changes.borrow_and_update();
            if let Some(found) = check()? {
                return Ok(found);
            }
            let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(FakeError::WaitTimedOut {
                    what: what.to_owned(),
                    timeout,
                    last_seen: describe(),
                });
            }
        }
    }

    /// Requests cancelation like the UI's cancel button: a running job becomes `canceling`
    /// (the runner then reports `failed` and the job ends `canceled`); a pending one is
    /// `canceled` at once.
    pub fn cancel_job(&self, id: u64) -> Result<(), FakeError> {
        self.state.cancel_job(id)
    }

    /// Cancels the job at once (`canceled`): the runner must abort without `after_script`.
    pub fn abort_job(&self, id: u64) -> Result<(), FakeError> {
        self.set_remote_status(id, RemoteStatus::Canceled)
    }

    /// Sets the remote status directly (e.g. `failed` to mimic a job failed on the server).
    pub fn set_remote_status(&self, id: u64, status: RemoteStatus) -> Result<(), FakeError> {
        if self.state.set_remote_status(id, status) {
            Ok(())
        } else {
            Err(FakeError::UnknownJob { id })
        }
    }

    /// Answers the next `count` valid final updates of job `id` with 202 (accepted but not
    /// completed), so the runner has to retry them.
    pub fn accept_without_completing(&self, id: u64, count: u32) -> Result<(), FakeError> {
        let mut inner = self.state.lock();
        let job = inner
            .jobs
            .get_mut(&id)
            .ok_or(FakeError::UnknownJob { id })?;
        job.accept_without_completing = count;
        Ok(())
    }

    /// The next job request that would receive a job gets 409 (taken concurrently) instead;
    /// the job stays queued.
    pub fn conflict_next_job_request(&self) {
        self.state.lock().conflict_next_assignment = true;
    }

    // ----- observation and faults -----

    /// Every request received on the GitLab API so far, in completion order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.lock().requests.clone()
    }

    /// Answers the next `count` requests matching `filter` with `status`.
    pub fn fail_next(&self, filter: impl Into<EndpointFilter>, count: u32, status: u16) {
        let action = FaultAction::Respond(status);
        self.state
            .lock()
            .faults
            .for_requests(filter.into(), count, action);
    }

    /// Answers every request matching `filter` with `status` for `duration`.
    pub fn fail_for(&self, filter: impl Into<EndpointFilter>, duration: Duration, status: u16) {
        let until = Instant::now() + duration;
        let action = FaultAction::Respond(status);
        self.state.lock().faults.until(filter.into(), until, action);
    }

    /// Closes the connection without an answer for the next `count` matching requests.
    pub fn drop_next(&self, filter: impl Into<EndpointFilter>, count: u32) {
        self.state
            .lock()
            .faults
            .for_requests(filter.into(), count, FaultAction::Drop);
    }

    /// Handles the next `count` matching requests, then closes the connection without the
    /// answer: a connection reset after GitLab applied a trace append or a state update.
    pub fn lose_answers_next(&self, filter: impl Into<EndpointFilter>, count: u32) {
        self.state
            .lock()
            .faults
            .for_requests(filter.into(), count, FaultAction::LoseAnswer);
    }

    /// Ends every injected fault at once (the coordinator is back).
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Closes the connection without an answer for every API request during `duration`.
    pub fn drop_connections_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut inner = self.state.lock();
        inner
            .faults
            .until(EndpointFilter::Any, until, FaultAction::Drop);
    }

    /// Changes the advertised `X-GitLab-Trace-Update-Interval`.
    pub fn set_trace_update_interval(&self, secs: u64) {
        self.state.lock().trace_update_interval_secs = secs;
    }

    /// Changes how artifact uploads are answered.
    pub fn set_artifact_upload_mode(&self, mode: ArtifactUploadMode) {
        self.state.lock().artifact_upload = mode;
    }

    /// Whether `direct_download=true` downloads are redirected (302) to the fake object storage.
    pub fn set_direct_download_redirect(&self, enabled: bool) {
        self.state.lock().direct_download_redirect = enabled;
    }
}

impl std::fmt::Debug for FakeGitlab {
    /// Shows the URL only: the state holds tokens in clear.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGitlab")
            .field("url", &self.state.url)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeGitlab {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}
