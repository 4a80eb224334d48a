//! Streams a job's trace to GitLab while it runs, then delivers the final state.
//!
//! Cadence: the first bytes after a quiet spell go out after a short coalescing window
//! ([`FIRST_SEND_DELAY`]: a user watching the job sees output within a fraction of a second, and
//! a job that ends within the window costs one append instead of two), then appends are batched
//! at the update interval GitLab
//! asks for (`X-GitLab-Trace-Update-Interval`, default 3 s), each time sending everything that is
//! pending. A whole patch (1 MiB) of pending output is sent at once rather than at the next
//! interval: batching cannot make it bigger, and a chatty job's log then reaches GitLab while
//! it runs instead of piling up for the final flush. With nothing to send, a keep-alive `PUT` goes out after 30 s of silence, as the
//! official runner does, so GitLab knows the job is alive and can tell it about a cancel.
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
/// Nor speed us up beyond this (the header is in whole seconds; a shorter interval from any
/// source would turn the loops below into busy loops: review L11).
const MIN_UPDATE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a final update answered with 202 ("accepted, not completed yet") is asked again,
/// each time after the update interval. The official runner asks for ever; here the job is
/// left to the journal after this long (review L11), and [`crate::journal::redeliver`] asks
/// again later, also after a restart.
pub(crate) const NOT_YET_BUDGET: Duration = Duration::from_secs(10 * 60);
/// How long the first output after a quiet spell waits for more before it is sent.
const FIRST_SEND_DELAY: Duration = Duration::from_millis(100);
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
    /// When the uploader noticed output that is not sent yet.
    pending_since: Option<Instant>,
    last_contact: Instant,
    /// GitLab no longer accepts trace appends for this job (404).
    trace_gone: bool,
    /// After a failed append, no early (full-patch) append before this time.
    retry_after: Option<Instant>,
    /// How long [`Self::finish`] keeps asking again after 202 answers.
    not_yet_budget: Duration,
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
            pending_since: None,
            last_contact: Instant::now(),
            trace_gone: false,
            retry_after: None,
            not_yet_budget: NOT_YET_BUDGET,
        }
    }

    /// How long [`Self::finish`] keeps asking again while GitLab answers 202 (a redelivery
    /// pass asks once and leaves the rest to its next pass).
    pub(crate) fn not_yet_budget(&mut self, budget: Duration) {
        self.not_yet_budget = budget;
    }

    /// Continues from `offset` (acknowledged by an earlier process); a wrong offset is
    /// corrected by GitLab's 416 answer.
    pub(crate) fn resume_at(&mut self, offset: u64) {
        self.sent = offset.min(self.trace_len());
    }

    /// Bytes GitLab has acknowledged so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Streams until `stop` fires, then returns (the caller finishes with [`Self::finish`]).
    pub(crate) async fn stream(&mut self, stop: &CancellationToken) {
        loop {
            if self.has_pending() {
                // A full patch goes out at once: the interval batches small appends, and a
                // full one is as big as an append gets (the same requests, sent earlier).
                if self.full_patch_pending() && !self.backing_off() {
                    if let Some(error) = self.send_chunk().await {
                        tracing::debug!(%error, "trace update deferred");
                        self.retry_after = Some(Instant::now() + self.interval);
                    }
                    continue;
                }
                let noticed = *self.pending_since.get_or_insert_with(Instant::now);
                let coalesced = noticed + FIRST_SEND_DELAY;
                let due = self
                    .last_patch
                    .map_or(coalesced, |at| (at + self.interval).max(coalesced));
                // Wake up early when a full patch has built up (not while backing off, and
                // not once the log is finished: nothing more will come).
                let trace = self.trace.clone();
                let full_at = usize::try_from(self.sent)
                    .unwrap_or(usize::MAX)
                    .saturating_add(PATCH_LIMIT - 1);
                let watch_growth = !self.backing_off() && !trace.is_finished();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = trace.changed(full_at), if watch_growth => continue,
                    () = sleep_until(due) => {}
                }
                // Send everything that is pending, not one chunk per interval: a fast job's
                // log must not fall behind (1 MiB per 3 s is all the official loop sends).
                self.pending_since = None;
                self.retry_after = None;
                if let Err(error) = self.flush().await {
                    tracing::debug!(%error, "trace update deferred");
                    self.retry_after = Some(Instant::now() + self.interval);
                }
            } else {
                let keepalive_due = self.last_contact + FORCE_SEND_INTERVAL;
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
    /// Answers of 202 are asked again after the update interval until the 202 budget is
    /// spent; then the delivery gives up like after the last failed retry (a journaled job is
    /// kept and redelivered later).
    pub(crate) async fn finish(&mut self, state: FinalState, retry_limit: u32) -> Delivery {
        self.interval = DEFAULT_UPDATE_INTERVAL;
        let mut backoff = FINAL_BACKOFF_MIN;
        let mut failures = 0u32;
        let mut not_yet_since: Option<Instant> = None;
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
                            let since = *not_yet_since.get_or_insert_with(Instant::now);
                            let waited = since.elapsed();
                            if waited + self.interval > self.not_yet_budget {
                                return Delivery::GaveUp(format!(
                                    "GitLab answered 202 (accepted, not completed) to every final update for {}s",
                                    waited.as_secs()
                                ));
                            }
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

    /// Whether at least a whole patch of output waits to be sent.
    fn full_patch_pending(&self) -> bool {
        !self.trace_gone && self.trace_len() >= self.sent + PATCH_LIMIT as u64
    }

    /// Whether a failed append asked for a pause before the next early one.
    fn backing_off(&self) -> bool {
        self.retry_after.is_some_and(|at| Instant::now() < at)
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
            self.interval = interval.clamp(MIN_UPDATE_INTERVAL, MAX_UPDATE_INTERVAL);
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use runnel_trace::{Stream, TraceConfig};

    use super::*;

    /// What the uploader asked of the coordinator.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Patch { offset: u64, len: usize },
        Update { state: JobState },
    }

    /// A coordinator that answers from a script, then accepts everything.
    #[derive(Default)]
    struct Scripted {
        patches: Mutex<VecDeque<Reply<PatchReply>>>,
        updates: Mutex<VecDeque<Reply<UpdateReply>>>,
        calls: Mutex<Vec<Call>>,
    }

    fn reply<T>(outcome: T) -> Reply<T> {
        Reply {
            outcome,
            status: RemoteStatus::Running,
            update_interval: None,
        }
    }

    impl Scripted {
        fn patches(self, replies: impl IntoIterator<Item = PatchReply>) -> Self {
            self.patches
                .lock()
                .unwrap()
                .extend(replies.into_iter().map(reply));
            self
        }

        fn updates(self, replies: impl IntoIterator<Item = Reply<UpdateReply>>) -> Self {
            self.updates.lock().unwrap().extend(replies);
            self
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl JobRemote for Scripted {
        async fn update(&self, update: StateUpdate) -> Reply<UpdateReply> {
            self.calls.lock().unwrap().push(Call::Update {
                state: update.state,
            });
            self.updates
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| reply(UpdateReply::Accepted))
        }

        async fn patch(&self, offset: u64, bytes: Bytes) -> Reply<PatchReply> {
            self.calls.lock().unwrap().push(Call::Patch {
                offset,
                len: bytes.len(),
            });
            self.patches
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| reply(PatchReply::Accepted))
        }
    }

    fn trace_with(text: &str) -> JobTrace {
        let trace = JobTrace::new(TraceConfig::default()).unwrap();
        let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
        writer.write_bytes(text.as_bytes());
        writer.finish();
        trace
    }

    fn success() -> FinalState {
        FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_output_goes_out_after_the_coalescing_window() {
        let remote = Arc::new(Scripted::default());
        let trace = trace_with("hello\n");
        let mut uploader = TraceUploader::new(Arc::clone(&remote), trace, RemoteSignals::default());
        let stop = CancellationToken::new();
        let streaming = async {
            uploader.stream(&stop).await;
        };
        let observe = async {
            tokio::time::sleep(FIRST_SEND_DELAY - Duration::from_millis(1)).await;
            assert_eq!(
                remote.calls(),
                vec![],
                "output waits for more within the window"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert_eq!(remote.calls(), vec![Call::Patch { offset: 0, len: 6 }]);
            stop.cancel();
        };
        tokio::join!(streaming, observe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_patch_goes_out_without_waiting_for_the_interval() {
        let remote = Arc::new(Scripted::default());
        let trace = JobTrace::new(TraceConfig {
            limit_bytes: 8 * PATCH_LIMIT,
            ..TraceConfig::default()
        })
        .unwrap();
        let mut writer = trace.writer(Stream::SCRIPT_STDOUT);
        writer.write_bytes(b"hello\n");
        let mut uploader =
            TraceUploader::new(Arc::clone(&remote), trace.clone(), RemoteSignals::default());
        let stop = CancellationToken::new();
        let streaming = async {
            uploader.stream(&stop).await;
        };
        let observe = async {
            tokio::time::sleep(FIRST_SEND_DELAY * 2).await;
            assert_eq!(remote.calls(), vec![Call::Patch { offset: 0, len: 6 }]);
            // Well inside the interval, one and a half patches of output arrive.
            let line = [b'x'; 1023]
                .iter()
                .chain(b"\n")
                .copied()
                .collect::<Vec<u8>>();
            for _ in 0..(PATCH_LIMIT * 3 / 2 / line.len()) {
                writer.write_bytes(&line);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let calls = remote.calls();
            assert_eq!(calls.len(), 2, "{calls:?}");
            assert_eq!(
                calls[1],
                Call::Patch {
                    offset: 6,
                    len: PATCH_LIMIT
                }
            );
            // The partial rest still waits for the interval.
            tokio::time::sleep(DEFAULT_UPDATE_INTERVAL / 2).await;
            assert_eq!(remote.calls().len(), 2);
            tokio::time::sleep(DEFAULT_UPDATE_INTERVAL).await;
            assert_eq!(remote.calls().len(), 3);
            stop.cancel();
        };
        tokio::join!(streaming, observe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_range_mismatch_resumes_from_gitlabs_offset() {
        let remote =
            Arc::new(Scripted::default().patches([PatchReply::RangeMismatch { resume_at: 4 }]));
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("0123456789"),
            RemoteSignals::default(),
        );
        assert_eq!(uploader.finish(success(), 3).await, Delivery::Accepted);
        assert_eq!(
            remote.calls(),
            vec![
                Call::Patch { offset: 0, len: 10 },
                Call::Patch { offset: 4, len: 6 },
                Call::Update {
                    state: JobState::Success
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_checksum_rejection_resends_the_whole_trace() {
        let remote = Arc::new(Scripted::default().updates([reply(UpdateReply::ResendTrace)]));
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("abc"),
            RemoteSignals::default(),
        );
        assert_eq!(uploader.finish(success(), 3).await, Delivery::Accepted);
        assert_eq!(
            remote.calls(),
            vec![
                Call::Patch { offset: 0, len: 3 },
                Call::Update {
                    state: JobState::Success
                },
                Call::Patch { offset: 0, len: 3 },
                Call::Update {
                    state: JobState::Success
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_accepted() {
        let failed = || PatchReply::Failed("502 Bad Gateway".to_owned());
        let remote = Arc::new(
            Scripted::default()
                .patches([failed(), failed()])
                .updates([reply(UpdateReply::Failed("connection reset".to_owned()))]),
        );
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("data"),
            RemoteSignals::default(),
        );
        assert_eq!(uploader.finish(success(), 5).await, Delivery::Accepted);
        assert_eq!(uploader.sent(), 4);
        let patches = remote
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Patch { .. }))
            .count();
        assert_eq!(patches, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_update_gives_up_after_the_retry_limit() {
        let failing = (0..10).map(|_| reply(UpdateReply::Failed("503".to_owned())));
        let remote = Arc::new(Scripted::default().updates(failing));
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("x"),
            RemoteSignals::default(),
        );
        assert!(matches!(
            uploader.finish(success(), 2).await,
            Delivery::GaveUp(_)
        ));
        let updates = remote
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Update { .. }))
            .count();
        assert_eq!(updates, 3, "one attempt plus two retries");
    }

    /// Review L11: a coordinator answering 202 to every final update is not asked for ever.
    #[tokio::test(start_paused = true)]
    async fn endless_202_answers_give_up_after_the_budget() {
        let not_yet = (0..10_000).map(|_| reply(UpdateReply::NotYet));
        let remote = Arc::new(Scripted::default().updates(not_yet));
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("x"),
            RemoteSignals::default(),
        );
        let started = Instant::now();
        let delivery = uploader.finish(success(), 3).await;
        assert!(
            matches!(&delivery, Delivery::GaveUp(e) if e.contains("202")),
            "{delivery:?}"
        );
        assert!(
            started.elapsed() <= NOT_YET_BUDGET,
            "{:?}",
            started.elapsed()
        );
        let updates = remote
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Update { .. }))
            .count();
        // Asked at once, then again after every default interval until the budget is spent.
        let expected = (NOT_YET_BUDGET.as_secs() / DEFAULT_UPDATE_INTERVAL.as_secs()) as usize + 1;
        assert_eq!(updates, expected, "{updates}");
    }

    /// Review L11: a few 202 answers are waited out, as the official runner does.
    #[tokio::test(start_paused = true)]
    async fn a_few_202_answers_are_waited_out() {
        let remote = Arc::new(
            Scripted::default().updates([reply(UpdateReply::NotYet), reply(UpdateReply::NotYet)]),
        );
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("x"),
            RemoteSignals::default(),
        );
        assert_eq!(uploader.finish(success(), 0).await, Delivery::Accepted);
    }

    /// Review L11: an update interval shorter than a second is raised to one second.
    #[tokio::test(start_paused = true)]
    async fn a_tiny_update_interval_is_raised_to_a_second() {
        let remote = Arc::new(Scripted::default());
        let mut uploader = TraceUploader::new(
            Arc::clone(&remote),
            trace_with("x"),
            RemoteSignals::default(),
        );
        uploader.note_hints(&Reply {
            outcome: (),
            status: RemoteStatus::Running,
            update_interval: Some(Duration::from_millis(1)),
        });
        assert_eq!(uploader.interval, MIN_UPDATE_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_canceling_status_requests_a_graceful_cancel() {
        let remote = Arc::new(Scripted::default());
        remote.patches.lock().unwrap().push_back(Reply {
            outcome: PatchReply::Accepted,
            status: RemoteStatus::Canceling,
            update_interval: Some(Duration::from_secs(7)),
        });
        let signals = RemoteSignals::default();
        let mut uploader =
            TraceUploader::new(Arc::clone(&remote), trace_with("x"), signals.clone());
        assert_eq!(uploader.finish(success(), 1).await, Delivery::Accepted);
        assert!(signals.cancel_requested.is_cancelled());
        assert!(!signals.abort.is_cancelled());
    }
}
