//! [`JobTrace`], the shared job log, and [`TraceWriter`], one output stream into it.
//!
//! Each writer owns its filter chain (masking, URL parameters, token prefixes, UTF-8
//! repair, timestamps) and runs it outside any lock; only appending the filtered bytes to
//! the shared buffer takes the lock. Keeping the chain per stream means stdout and stderr
//! never corrupt each other's half-written secrets, characters or lines. The runner's own
//! messages go through a chain of their own (stream 0, stdout).
//!
//! Nothing here talks to GitLab: the uploader reads with [`JobTrace::read_from`] and waits
//! with [`JobTrace::changed`].

use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use runnel_types::Secret;
use tokio::sync::Notify;

use crate::config::{PAT_PREFIX, TraceConfig};
use crate::error::TraceError;
use crate::format::{self, SectionOptions};
use crate::matcher::StreamMatcher;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::store::Store;
use crate::timestamp::{Clock, SystemClock};

/// The most bytes [`JobTrace::read_from`] returns at once: one trace PATCH (1 MiB).
pub const MAX_READ_BYTES: usize = 1024 * 1024;

/// Whether a stream is standard output or standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `O` in timestamp headers.
    Stdout,
    /// `E` in timestamp headers.
    Stderr,
}

/// An output stream of the job, as numbered in `FF_TIMESTAMPS` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    /// `00` for the runner and executor, `01` for the script, `0f` and up for services.
    pub id: u8,
    /// Standard output or standard error.
    pub kind: StreamKind,
}

impl Stream {
    /// The runner's and executor's own messages.
    pub const RUNNER: Self = Self::new(0, StreamKind::Stdout);
    /// The job script's standard output.
    pub const SCRIPT_STDOUT: Self = Self::new(1, StreamKind::Stdout);
    /// The job script's standard error.
    pub const SCRIPT_STDERR: Self = Self::new(1, StreamKind::Stderr);
    /// The id of the first service container's stream; later services count up.
    pub const FIRST_SERVICE_ID: u8 = 0x0f;

    /// A stream with the given id and kind.
    pub const fn new(id: u8, kind: StreamKind) -> Self {
        Self { id, kind }
    }
}

/// The log of one job: a cheaply cloneable handle shared by every writer and the uploader.
///
/// Memory is bounded by the output limit plus the limit notice. Once [`JobTrace::finish`]
/// is called, later writes are dropped.
#[derive(Clone)]
pub struct JobTrace {
    inner: Arc<Inner>,
}

struct Inner {
    spec: PipelineSpec,
    store: Mutex<Store>,
    /// The chain of the runner's own messages.
    runner: Mutex<Pipeline>,
    changed: Notify,
    /// False once the limit is reached or the log is finished: from then on every write
    /// would be dropped, so writers skip filtering altogether.
    accepting: AtomicBool,
}

impl JobTrace {
    /// A new, empty job log that timestamps lines (if enabled) with the system clock.
    pub fn new(config: TraceConfig) -> Result<Self, TraceError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A new, empty job log that takes timestamps from `clock`.
    pub fn with_clock(config: TraceConfig, clock: Arc<dyn Clock>) -> Result<Self, TraceError> {
        let spec = PipelineSpec {
            masked: build_masker(&config.masked)?,
            token_prefixes: build_token_prefixes(&config.token_prefixes)?,
            clock: config.timestamps.then_some(clock),
        };
        let runner = Pipeline::new(&spec, Stream::RUNNER);
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                store: Mutex::new(Store::new(config.limit_bytes)),
                runner: Mutex::new(runner),
                changed: Notify::new(),
                accepting: AtomicBool::new(true),
            }),
        })
    }

    /// A finished log holding `bytes` as they are, unfiltered: a log read back from the job
    /// journal after a restart, which went through the filters when it was first written.
    pub fn recovered(bytes: &[u8]) -> Result<Self, TraceError> {
        let trace = Self::new(TraceConfig {
            masked: Vec::new(),
            token_prefixes: Vec::new(),
            limit_bytes: usize::MAX,
            timestamps: false,
        })?;
        trace.append(bytes);
        trace.finish();
        Ok(trace)
    }

    /// A writer for one output stream. Give each stream (stdout, stderr, each service) its
    /// own writer, and flush or drop it before [`JobTrace::finish`].
    pub fn writer(&self, stream: Stream) -> TraceWriter {
        TraceWriter {
            pipeline: Pipeline::new(&self.inner.spec, stream),
            trace: self.clone(),
            stream,
        }
    }

    /// Writes a plain runner line (`Println`).
    pub fn println(&self, message: &str) {
        self.write_runner(&format::println(message));
    }

    /// Writes a bold green runner line (`Infoln`).
    pub fn info(&self, message: &str) {
        self.write_runner(&format::info(message));
    }

    /// Writes a yellow `WARNING: ` runner line (`Warningln`).
    pub fn warning(&self, message: &str) {
        self.write_runner(&format::warning(message));
    }

    /// Writes a bold red `ERROR: ` runner line (`Errorln`).
    pub fn error(&self, message: &str) {
        self.write_runner(&format::error(message));
    }

    /// Opens a collapsible section: its start marker, then its header line.
    pub fn section_start(
        &self,
        name: &str,
        description: &str,
        unix_time: i64,
        options: SectionOptions,
    ) {
        self.write_runner(&format::section_start_marker(name, unix_time, options));
        self.write_runner(&format::section_header(description));
    }

    /// Closes a section opened with [`JobTrace::section_start`].
    pub fn section_end(&self, name: &str, unix_time: i64) {
        self.write_runner(&format::section_end_marker(name, unix_time));
    }

    /// Ends the log: nothing written afterwards is stored, and waiting readers wake up.
    pub fn finish(&self) {
        let released = lock(&self.inner.runner).flush();
        self.append(&released);
        lock(&self.inner.store).finish();
        self.inner.accepting.store(false, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
    }

    /// Whether [`JobTrace::finish`] was called.
    pub fn is_finished(&self) -> bool {
        lock(&self.inner.store).is_finished()
    }

    /// How many bytes are stored.
    pub fn len(&self) -> usize {
        lock(&self.inner.store).len()
    }

    /// Whether nothing is stored yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored size reported as `output.bytesize` in the final update.
    pub fn bytesize(&self) -> usize {
        self.len()
    }

    /// The CRC32 (IEEE) of everything stored, as `crc32:%08x` for `output.checksum`.
    pub fn checksum(&self) -> String {
        format!("crc32:{:08x}", self.crc32())
    }

    /// The CRC32 (IEEE) of everything stored.
    pub fn crc32(&self) -> u32 {
        lock(&self.inner.store).checksum()
    }

    /// Whether the output limit was reached and later output dropped.
    pub fn is_truncated(&self) -> bool {
        lock(&self.inner.store).is_truncated()
    }

    /// Up to `max` (at most [`MAX_READ_BYTES`]) stored bytes from `offset`. Any offset up
    /// to [`JobTrace::len`] is valid, so an uploader can restart from 0 or resume anywhere;
    /// at the end the result is empty.
    pub fn read_from(&self, offset: usize, max: usize) -> Result<Bytes, TraceError> {
        let store = lock(&self.inner.store);
        let available = store
            .bytes()
            .get(offset..)
            .ok_or(TraceError::OffsetBeyondEnd {
                offset,
                len: store.len(),
            })?;
        let len = available.len().min(max).min(MAX_READ_BYTES);
        Ok(Bytes::copy_from_slice(&available[..len]))
    }

    /// Waits until more than `seen_len` bytes are stored or the log is finished; returns at
    /// once if that is already so.
    pub async fn changed(&self, seen_len: usize) {
        loop {
            let mut notified = pin!(self.inner.changed.notified());
            // Register before checking, so a write between the check and the await wakes us.
            notified.as_mut().enable();
            if self.len() > seen_len || self.is_finished() {
                return;
            }
            notified.await;
        }
    }

    /// Whether stored output can still grow.
    fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Relaxed)
    }

    fn write_runner(&self, text: &str) {
        if !self.is_accepting() {
            return;
        }
        let mut runner = lock(&self.inner.runner);
        self.append(runner.write(text.as_bytes()));
        // A message is complete: release what the filters held back at its end.
        let released = runner.flush();
        self.append(&released);
    }

    fn append(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let stored = {
            let mut store = lock(&self.inner.store);
            if store.is_finished() {
                tracing::debug!(
                    bytes = bytes.len(),
                    "dropping output written after the job log was finished"
                );
            }
            let stored = store.append(bytes);
            if store.is_truncated() {
                self.inner.accepting.store(false, Ordering::Relaxed);
            }
            stored
        };
        if stored {
            self.inner.changed.notify_waiters();
        }
    }
}

impl std::fmt::Debug for JobTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = lock(&self.inner.store);
        f.debug_struct("JobTrace")
            .field("len", &store.len())
            .field("truncated", &store.is_truncated())
            .field("finished", &store.is_finished())
            .finish_non_exhaustive()
    }
}

/// One output stream into a [`JobTrace`].
///
/// Bytes that could still be the start of a masked value or token, a cut-off UTF-8
/// character, or (with timestamps) an unfinished line are held back until the next write.
/// [`io::Write::flush`], [`TraceWriter::finish`] and dropping the writer release them;
/// flush only when the stream ends, or a value split across the flush is not masked.
pub struct TraceWriter {
    trace: JobTrace,
    stream: Stream,
    pipeline: Pipeline,
}

impl TraceWriter {
    /// Filters `data` and stores what is ready. Never fails: output past the limit or after
    /// the log is finished is dropped.
    pub fn write_bytes(&mut self, data: &[u8]) {
        if !data.is_empty() && self.trace.is_accepting() {
            self.trace.append(self.pipeline.write(data));
        }
    }

    /// The stream this writer writes.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Releases everything held back and closes the stream.
    pub fn finish(mut self) {
        self.release_held();
    }

    fn release_held(&mut self) {
        let released = self.pipeline.flush();
        self.trace.append(&released);
    }
}

impl io::Write for TraceWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf);
        Ok(buf.len())
    }

    /// Releases everything held back (see [`TraceWriter`]).
    fn flush(&mut self) -> io::Result<()> {
        self.release_held();
        Ok(())
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        self.release_held();
    }
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent even if a holder panicked mid-append.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn build_masker(values: &[Secret]) -> Result<Option<Arc<StreamMatcher>>, TraceError> {
    let values = distinct_non_empty(values.iter().map(Secret::expose));
    if values.is_empty() {
        return Ok(None);
    }
    StreamMatcher::new(&values)
        .map(|matcher| Some(Arc::new(matcher)))
        .map_err(|source| TraceError::BuildMasker {
            count: values.len(),
            source,
        })
}

fn build_token_prefixes(prefixes: &[String]) -> Result<Arc<StreamMatcher>, TraceError> {
    let prefixes = distinct_non_empty(prefixes.iter().map(String::as_str).chain([PAT_PREFIX]));
    StreamMatcher::new(&prefixes)
        .map(Arc::new)
        .map_err(|source| TraceError::BuildTokenPrefixes {
            count: prefixes.len(),
            source,
        })
}

fn distinct_non_empty<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut values: Vec<&str> = values.filter(|v| !v.is_empty()).collect();
    values.sort_unstable();
    values.dedup();
    values
}
