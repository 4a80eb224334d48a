//! The fake's memory: runners, the job queue, jobs and their traces, faults, the request log.
//!
//! One `std::sync::Mutex` guards it all; it is never held across an `.await`. Two watch
//! channels wake waiters: `queue_version` (bumped on every enqueue, the value sent as
//! `X-GitLab-Last-Update`) and `changes` (bumped on any change a test may wait for). The rules
//! of the HTTP endpoints live in `routes`; this module only stores and looks things up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use runnel_types::{JobToken, RunnerToken};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::builder::{GITLAB_FAILURE_REASONS, JobDefinition, JobIdentity};
use crate::config::FakeConfig;
use crate::error::FakeError;
use crate::faults::Faults;
use crate::git::GitHost;
use crate::view::{JobView, RemoteStatus, RequestRecord, RunnerKind, RunnerView, StatusChange};

/// Prefix of runner authentication tokens.
pub(crate) const AUTH_TOKEN_PREFIX: &str = "glrt-";

/// How `POST /jobs/:id/artifacts` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ArtifactUploadMode {
    /// Store the upload and answer 201.
    #[default]
    Accept,
    /// Answer the next upload with a 307 to another path of the fake, then accept again.
    RedirectOnce,
    /// Answer every upload with this status (413 "too large", 403 "forbidden"…).
    Reject(u16),
}

/// Settings of a runner created through the test API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerSettings {
    /// Free-text description.
    pub description: String,
    /// Tags; a tagged job needs all its tags here.
    pub tags: Vec<String>,
    /// Whether the runner picks jobs without tags.
    pub run_untagged: bool,
    /// A paused runner always gets 204 on job requests.
    pub paused: bool,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            description: "fake runner".to_owned(),
            tags: Vec::new(),
            run_untagged: true,
            paused: false,
        }
    }
}

/// A job as stored: what tests see plus what only the server needs. No `Debug`: the payload
/// holds the job token in clear.
pub(crate) struct JobRecord {
    pub(crate) view: JobView,
    pub(crate) payload: Value,
    pub(crate) tags: Vec<String>,
    pub(crate) runner_filter: Option<u64>,
    /// Failure reasons a PUT may report (see `accepted_failure_reasons`).
    pub(crate) failure_reasons: Vec<String>,
    /// Set by a 412 on the final update: the next PATCH may restart at offset 0.
    pub(crate) trace_reset_allowed: bool,
    /// How many more final updates to answer with 202 without completing the job.
    pub(crate) accept_without_completing: u32,
}

/// Outcome of looking for a job for a runner.
pub(crate) enum Assignment {
    Job(Value),
    Nothing,
    /// A job matched but "someone else took it" (test-triggered 409).
    Conflict,
}

/// Mutable state behind the lock. No `Debug`: it holds tokens in clear.
#[derive(Default)]
pub(crate) struct Inner {
    next_runner_id: u64,
    next_job_id: u64,
    pub(crate) registration_tokens: BTreeSet<String>,
    pub(crate) personal_access_tokens: BTreeSet<String>,
    pub(crate) runners: BTreeMap<u64, RunnerView>,
    pub(crate) jobs: BTreeMap<u64, JobRecord>,
    queue: VecDeque<u64>,
    pub(crate) faults: Faults,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) trace_update_interval_secs: u64,
    pub(crate) conflict_next_assignment: bool,
    pub(crate) artifact_upload: ArtifactUploadMode,
    pub(crate) direct_download_redirect: bool,
}

/// Shared state of one fake server.
pub(crate) struct State {
    inner: Mutex<Inner>,
    queue_version: watch::Sender<u64>,
    changes: watch::Sender<u64>,
    held_polls: AtomicUsize,
    started: Instant,
    pub(crate) url: String,
    pub(crate) long_poll: Duration,
    pub(crate) token_lifetime: Option<Duration>,
    /// [`FakeConfig::lenient_clients`].
    pub(crate) lenient_clients: bool,
    pub(crate) shutdown: CancellationToken,
    /// Repositories served over git smart HTTP.
    pub(crate) git: GitHost,
}

impl State {
    pub(crate) fn new(config: &FakeConfig, url: String) -> Self {
        let inner = Inner {
            next_runner_id: 1,
            next_job_id: 1,
            registration_tokens: config.registration_tokens.iter().cloned().collect(),
            trace_update_interval_secs: config.trace_update_interval_secs,
            ..Inner::default()
        };
        Self {
            inner: Mutex::new(inner),
            queue_version: watch::Sender::new(1),
            changes: watch::Sender::new(0),
            held_polls: AtomicUsize::new(0),
            started: Instant::now(),
            url,
            long_poll: config.long_poll,
            token_lifetime: config.token_lifetime,
            lenient_clients: config.lenient_clients,
            shutdown: CancellationToken::new(),
            git: GitHost::default(),
        }
    }

    /// Locks the state. A panic elsewhere cannot leave it half-updated in a way that matters to
    /// a fake, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time since the fake started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wakes everyone waiting on [`State::subscribe_changes`].
    pub(crate) fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many job requests are being held by long polling right now.
    pub(crate) fn held_polls(&self) -> usize {
        self.held_polls.load(Ordering::SeqCst)
    }

    /// Counts a held job request until the returned guard is dropped.
    pub(crate) fn hold_poll(&self) -> HeldPoll<'_> {
        self.held_polls.fetch_add(1, Ordering::SeqCst);
        self.notify_change();
        HeldPoll { state: self }
    }

    /// The queue version as sent in `X-GitLab-Last-Update`.
    pub(crate) fn queue_version(&self) -> String {
        self.queue_version.borrow().to_string()
    }

    pub(crate) fn subscribe_queue(&self) -> watch::Receiver<u64> {
        self.queue_version.subscribe()
    }

    /// A new expiry for a token issued now.
    pub(crate) fn token_expiry(&self) -> Option<OffsetDateTime> {
        let lifetime = self.token_lifetime?;
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).ok()?;
        Some(now + lifetime)
    }

    /// Creates a runner and returns it.
    pub(crate) fn create_runner(
        &self,
        kind: RunnerKind,
        token: String,
        settings: RunnerSettings,
    ) -> RunnerView {
        let token_expires_at = self.token_expiry();
        let mut inner = self.lock();
        let id = inner.next_runner_id;
        inner.next_runner_id += 1;
        let runner = RunnerView {
            id,
            token: RunnerToken::new(token),
            kind,
            description: settings.description,
            tags: settings.tags,
            run_untagged: settings.run_untagged,
            locked: true,
            paused: settings.paused,
            access_level: "not_protected".to_owned(),
            maximum_timeout: None,
            maintenance_note: String::new(),
            managers: Vec::new(),
            token_expires_at,
        };
        inner.runners.insert(id, runner.clone());
        drop(inner);
        self.notify_change();
        runner
    }

    /// Stores a job (with `token`, or a fresh `glcbt-` one) and makes it visible to job
    /// requests.
    pub(crate) fn enqueue(
        &self,
        token: Option<String>,
        build: impl FnOnce(u64, &str) -> Value,
        tags: Vec<String>,
        runner_filter: Option<u64>,
    ) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_job_id;
        inner.next_job_id += 1;
        let token = token.unwrap_or_else(|| random_token("glcbt-64_", 20));
        let payload = build(id, &token);
        let failure_reasons = accepted_failure_reasons(&payload);
        let view = JobView {
            id,
            token: JobToken::new(token),
            status: RemoteStatus::Pending,
            history: vec![StatusChange {
                status: RemoteStatus::Pending,
                at: self.elapsed(),
            }],
            runner_id: None,
            trace: Vec::new(),
            patches: Vec::new(),
            updates: Vec::new(),
            artifacts: Vec::new(),
        };
        inner.jobs.insert(
            id,
            JobRecord {
                view,
                payload,
                tags,
                runner_filter,
                failure_reasons,
                trace_reset_allowed: false,
                accept_without_completing: 0,
            },
        );
        inner.queue.push_back(id);
        drop(inner);
        self.queue_version.send_modify(|v| *v += 1);
        self.notify_change();
        id
    }

    /// Hands the first matching queued job to `runner_id`.
    pub(crate) fn assign(&self, runner_id: u64) -> Assignment {
        let at = self.elapsed();
        let mut inner = self.lock();
        let Some(runner) = inner.runners.get(&runner_id).cloned() else {
            return Assignment::Nothing;
        };
        let position = inner.queue.iter().position(|id| {
            inner
                .jobs
                .get(id)
                .is_some_and(|job| job_matches(job, &runner))
        });
        let Some(position) = position else {
            return Assignment::Nothing;
        };
        if std::mem::take(&mut inner.conflict_next_assignment) {
            return Assignment::Conflict;
        }
        let Some(job_id) = inner.queue.remove(position) else {
            return Assignment::Nothing;
        };
        let Some(job) = inner.jobs.get_mut(&job_id) else {
            return Assignment::Nothing;
        };
        job.view.runner_id = Some(runner_id);
        set_status(job, RemoteStatus::Running, at);
        let payload = job.payload.clone();
        drop(inner);
        self.notify_change();
        Assignment::Job(payload)
    }

    /// Changes a job's remote status the way the GitLab UI would.
    pub(crate) fn set_remote_status(&self, id: u64, status: RemoteStatus) -> bool {
        let at = self.elapsed();
        let mut inner = self.lock();
        let Some(job) = inner.jobs.get_mut(&id) else {
            return false;
        };
        set_status(job, status, at);
        if status != RemoteStatus::Pending {
            inner.queue.retain(|queued| *queued != id);
        }
        drop(inner);
        self.notify_change();
        true
    }
}

impl State {
    /// Queues a built job; its payload is rendered with the assigned id and token.
    pub(crate) fn enqueue_definition(&self, job: &JobDefinition) -> u64 {
        self.enqueue(
            None,
            |id, token| {
                job.payload(JobIdentity {
                    id,
                    token,
                    server_url: &self.url,
                })
            },
            job.tags().to_vec(),
            job.runner_id(),
        )
    }

    /// Queues a hand-written payload for any runner (see `FakeGitlab::enqueue_raw`).
    pub(crate) fn enqueue_raw(&self, payload: Value) -> Result<u64, FakeError> {
        let Value::Object(object) = payload else {
            return Err(FakeError::RawPayloadNotAnObject {
                kind: json_kind(&payload),
            });
        };
        let given_token = object
            .get("token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        let id = self.enqueue(
            given_token,
            |id, token| {
                let mut object = object;
                object.insert("id".into(), Value::from(id));
                object.insert("token".into(), Value::from(token));
                Value::Object(object)
            },
            Vec::new(),
            None,
        );
        Ok(id)
    }

    /// The UI's cancel button: running jobs go `canceling`, pending ones `canceled`.
    pub(crate) fn cancel_job(&self, id: u64) -> Result<(), FakeError> {
        let current = self
            .lock()
            .jobs
            .get(&id)
            .map(|job| job.view.status)
            .ok_or(FakeError::UnknownJob { id })?;
        let next = match current {
            RemoteStatus::Pending => RemoteStatus::Canceled,
            RemoteStatus::Running => RemoteStatus::Canceling,
            finished_or_canceling => finished_or_canceling,
        };
        self.set_remote_status(id, next);
        Ok(())
    }
}

/// Marks one held job request; see [`State::hold_poll`].
pub(crate) struct HeldPoll<'a> {
    state: &'a State,
}

impl Drop for HeldPoll<'_> {
    fn drop(&mut self) {
        self.state.held_polls.fetch_sub(1, Ordering::SeqCst);
        self.state.notify_change();
    }
}

/// Reasons GitLab accepts for a job: those the payload advertises (or, for payloads that
/// advertise none, the modern list), plus the ones every GitLab version knows.
fn accepted_failure_reasons(payload: &Value) -> Vec<String> {
    const ALWAYS: [&str; 4] = [
        "unknown_failure",
        "script_failure",
        "runner_system_failure",
        "job_execution_timeout",
    ];
    let advertised: Vec<&str> = payload
        .pointer("/features/failure_reasons")
        .and_then(Value::as_array)
        .map(|reasons| reasons.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| GITLAB_FAILURE_REASONS.to_vec());
    let mut accepted: Vec<String> = advertised.into_iter().map(str::to_owned).collect();
    for reason in ALWAYS {
        if !accepted.iter().any(|known| known == reason) {
            accepted.push(reason.to_owned());
        }
    }
    accepted
}

fn job_matches(job: &JobRecord, runner: &RunnerView) -> bool {
    let runner_allowed = job.runner_filter.is_none_or(|only| only == runner.id);
    let tags_ok = if job.tags.is_empty() {
        runner.run_untagged
    } else {
        job.tags.iter().all(|tag| runner.tags.contains(tag))
    };
    runner_allowed && tags_ok
}

/// Records a status change (no-op when unchanged).
pub(crate) fn set_status(job: &mut JobRecord, status: RemoteStatus, at: Duration) {
    if job.view.status != status {
        job.view.status = status;
        job.view.history.push(StatusChange { status, at });
    }
}

/// A random token: `prefix` followed by `len` alphanumeric characters.
pub(crate) fn random_token(prefix: &str, len: usize) -> String {
    let body: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
