//! Streams a job's trace to GitLab while it runs, then delivers the final state.
//!
//! Cadence: the first bytes after a quiet spell go out at once (a user watching the job sees
//! output within a fraction of a second), then appends are batched at the update interval GitLab
//! asks for (`X-GitLab-Trace-Update-Interval`, default 3 s). With nothing to send, a keep-alive
//! `PUT` goes out every update interval (3 s to 30 s) so GitLab knows the job is alive and a cancel
//! is noticed promptly.
//!
//! Nothing is lost: the sent offset only moves when GitLab accepts bytes; 416 answers move it to
//! where GitLab really is; transport errors and 5xx are retried (the API client retries each call,
//! this loop retries again after the interval); a 412 on the final update resends the whole
//! trace. The final state is retried with backoff up to the configured limit.

use std::sync::Arc;
use std::time::Duration;

use runnel_trace::JobTrace;
use runnel_types::JobState;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::remote::{JobRemote, PatchReply, RemoteStatus, Reply, StateUpdate, UpdateReply};

/// Largest trace append GitLab accepts in one request.
const PATCH_LIMIT: usize = 1024 * 1024;
/// Default trace update interval.
pub(crate) const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_secs(3);
/// GitLab may not slow us down beyond this.
const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Keep-alive period when there is nothing to send.
const FORCE_SEND_INTERVAL: Duration = Duration::from_secs(30);
/// First and largest pause between attempts of the final update.
const FINAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
const FINAL_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the job asked of GitLab's answers: stop the script, or stop everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteSignals {
    /// Fired on `Job-Status: canceling` (graceful cancel).
    pub(crate) cancel_requested: CancellationToken,
    /// Fired on `Job-Status: canceled|failed`, 403 or 404 (abort).
    pub(crate) abort: CancellationToken,
}

/// How the final update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// GitLab accepted the final state.
    Accepted,
    /// GitLab said the job is gone (canceled, deleted, token revoked).
    Aborted,
    /// Every attempt failed; the message is the last error.
    GaveUp(String),
}

/// The per-job trace streaming state.
#[derive(Debug)]
pub(crate) struct TraceUploader<R> {
    remote: Arc<R>,
    trace: JobTrace,
    signals: RemoteSignals,
    /// Bytes GitLab has acknowledged.
    sent: u64,
    interval: Duration,
    last_patch: Option<Instant>,
    last_contact: Instant,
    /// GitLab no longer accepts trace appends for this job (404).
    trace_gone: bool,
}

impl<R: JobRemote> TraceUploader<R> {
    pub(crate) fn new(remote: Arc<R>, trace: JobTrace, signals: RemoteSignals) -> Self {
        Self {
            remote,
            trace,
            signals,
            sent: 0,
            interval: DEFAULT_UPDATE_INTERVAL,
            last_patch: None,
            last_contact: Instant::now(),
            trace_gone: false,
        }
    }

    /// Bytes GitLab has acknowledged so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Streams until `stop` fires, then returns (the caller finishes with [`Self::finish`]).
    pub(crate) async fn stream(&mut self, stop: &CancellationToken) {
        loop {
            if self.has_pending() {
                let due = self
                    .last_patch
                    .map_or_else(Instant::now, |at| at + self.interval);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = sleep_until(due) => {}
                }
                self.send_chunk().await;
            } else {
                let keepalive_due = self.last_contact + self.keepalive_period();
                let trace = self.trace.clone();
                let seen = self.trace.len();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = trace.changed(seen) => {}
                    () = sleep_until(keepalive_due) => self.keepalive().await,
                }
            }
        }
    }

    /// Sends what is left of the trace and then the final state, retrying as configured.
    pub(crate) async fn finish(&mut self, state: FinalState, retry_limit: u32) -> Delivery {
        self.interval = DEFAULT_UPDATE_INTERVAL;
        let mut backoff = FINAL_BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            let error = match self.flush().await {
                Err(error) => error,
                Ok(()) => {
                    let reply = self.remote.update(self.final_update(&state)).await;
                    self.note_hints(&reply);
                    match reply.outcome {
                        UpdateReply::Accepted => return Delivery::Accepted,
                        UpdateReply::Abort => return Delivery::Aborted,
                        UpdateReply::NotYet => {
                            sleep(self.interval).await;
                            continue;
                        }
                        UpdateReply::ResendTrace => {
                            tracing::warn!(
                                sent = self.sent,
                                "GitLab rejected the trace checksum; resending the trace"
                            );
                            self.sent = 0;
                            continue;
                        }
                        UpdateReply::Failed(error) => error,
                    }
                }
            };
            failures += 1;
            if failures > retry_limit {
                return Delivery::GaveUp(error);
            }
            tracing::warn!(attempt = failures, %error, "final job update failed; retrying");
            sleep(backoff).await;
            backoff = (backoff * 2).min(FINAL_BACKOFF_MAX);
        }
    }

    /// How long a silent job waits before telling GitLab it is alive. The official runner waits
    /// 30 s, so a silent job notices a cancel only that late; we use GitLab's own update interval
    /// (its load hint), bounded below by 3 s and above by 30 s.
    fn keepalive_period(&self) -> Duration {
        self.interval
            .clamp(DEFAULT_UPDATE_INTERVAL, FORCE_SEND_INTERVAL)
    }

    fn has_pending(&self) -> bool {
        !self.trace_gone && self.trace_len() > self.sent
    }

    fn trace_len(&self) -> u64 {
        self.trace.len() as u64
    }

    /// Sends everything not yet acknowledged, in 1 MiB chunks.
    async fn flush(&mut self) -> Result<(), String> {
        while self.has_pending() {
            match self.send_chunk().await {
                Some(error) => return Err(error),
                None => continue,
            }
        }
        Ok(())
    }

    /// Sends one chunk from the acknowledged offset; returns the error if it failed.
    async fn send_chunk(&mut self) -> Option<String> {
        let offset = usize::try_from(self.sent).unwrap_or(usize::MAX);
        let bytes = match self.trace.read_from(offset, PATCH_LIMIT) {
            Ok(bytes) => bytes,
            Err(error) => {
                // Only possible if our offset is past the end: start over from GitLab's view.
                tracing::warn!(%error, sent = self.sent, "trace offset out of range; resending");
                self.sent = 0;
                return Some(error.to_string());
            }
        };
        if bytes.is_empty() {
            return None;
        }
        let len = bytes.len() as u64;
        let reply = self.remote.patch(self.sent, bytes).await;
        self.note_hints(&reply);
        match reply.outcome {
            PatchReply::Accepted => {
                self.sent += len;
                self.last_patch = Some(Instant::now());
                self.last_contact = Instant::now();
                None
            }
            PatchReply::RangeMismatch { resume_at } => {
                tracing::debug!(
                    sent = self.sent,
                    resume_at,
                    "trace offset mismatch; resuming from GitLab's offset"
                );
                self.sent = resume_at.min(self.trace_len());
                self.last_patch = Some(Instant::now());
                None
            }
            PatchReply::NotFound => {
                tracing::warn!("GitLab no longer has this job's trace; stopping trace updates");
                self.trace_gone = true;
                None
            }
            PatchReply::Abort => {
                self.signals.abort.cancel();
                self.trace_gone = true;
                None
            }
            PatchReply::Failed(error) => {
                tracing::warn!(%error, "trace update failed; will retry");
                self.last_patch = Some(Instant::now());
                Some(error)
            }
        }
    }

    async fn keepalive(&mut self) {
        let update = StateUpdate {
            state: JobState::Running,
            failure_reason: None,
            exit_code: None,
            crc32: self.trace.crc32(),
            bytesize: self.trace.bytesize() as u64,
        };
        let reply = self.remote.update(update).await;
        self.note_hints(&reply);
        match reply.outcome {
            UpdateReply::Abort => self.signals.abort.cancel(),
            UpdateReply::Failed(error) => tracing::warn!(%error, "keep-alive update failed"),
            _ => {}
        }
        // Retry a failed keep-alive only after another full period.
        self.last_contact = Instant::now();
    }

    fn note_hints<T>(&mut self, reply: &Reply<T>) {
        if let Some(interval) = reply.update_interval {
            self.interval = interval.clamp(Duration::from_millis(1), MAX_UPDATE_INTERVAL);
        }
        match reply.status {
            RemoteStatus::Canceling => self.signals.cancel_requested.cancel(),
            RemoteStatus::Gone => self.signals.abort.cancel(),
            RemoteStatus::Running | RemoteStatus::Unknown => {}
        }
    }

    fn final_update(&self, state: &FinalState) -> StateUpdate {
        StateUpdate {
            state: state.state,
            failure_reason: state.failure_reason,
            exit_code: state.exit_code,
            crc32: self.trace.crc32(),
            bytesize: self.trace.bytesize() as u64,
        }
    }
}

/// The final state of a job, as reported to GitLab.
#[derive(Debug, Clone)]
pub(crate) struct FinalState {
    pub(crate) state: JobState,
    pub(crate) failure_reason: Option<runnel_types::FailureReason>,
    pub(crate) exit_code: Option<i32>,
}
