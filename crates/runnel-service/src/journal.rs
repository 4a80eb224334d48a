//! The job journal: every running job's state on disk as well as in memory.
//!
//! A runner that is killed, or that cannot reach GitLab for longer than its retry budget, must
//! not lose a job. So each job has two files in the journal directory (0700, beside
//! config.toml unless `--journal-dir` says otherwise):
//!
//! - `job-<id>-<runner>.json` (0600): what is needed to finish the job without the process
//!   that ran it: the coordinator URL, job id and job token, the tag its processes carry
//!   ([`runnel_executor::contain`]), its process groups, the ids of its containers (docker) or
//!   its pod (kubernetes), how many trace bytes GitLab has
//!   acknowledged, and the final state once it is known. Rewritten whole on the few events
//!   that change it. While it fits in a page (it always does but for jobs with hundreds of
//!   process groups or containers), in place, with one write at offset 0 that a killed runner
//!   cannot leave half done (a shorter record is padded with spaces): no new file per change.
//!   Otherwise, and the first time, the new record is written beside it (`.json.tmp`), the old
//!   one removed, and the new one renamed into its place. (Not renamed over the old one: ext4
//!   then writes the new file's data to disk at once, and removing it at the end of the job
//!   waits for that and, on a filesystem mounted with `discard`, for a discard. A runner
//!   killed between the removal and the rename leaves the complete `.json.tmp`, which is read
//!   instead.)
//! - `job-<id>-<runner>.log` (0600): the job log as sent to GitLab (masked), appended by a
//!   follower task as the log grows. It is bounded by the job's output limit, and it is the
//!   whole log, not only the unacknowledged tail: a 412 answer asks for the whole log again.
//!
//! Both are removed once GitLab accepted the final state (or said the job is gone): renamed
//! to a spare pair (`spare-<n>.json`, `spare-<n>.log`) and emptied, which the next job takes
//! instead of making new files (on ext4 without a journal a new inode costs a scan past every
//! inode deleted in the last minutes); a daemon removes the spares it finds at start. What is
//! left is *pending*: a job whose final update was abandoned after the retry budget, or whose
//! runner died. [`redeliver`] finishes pending jobs: a job that was still running has its
//! remaining processes killed and is reported failed (`runner_system_failure`) with the log it
//! had and a line saying the runner was restarted (its docker containers are force-removed by
//! id first, through its runner's docker settings); then the rest of the log and the final
//! state are delivered with the usual 416/412 handling. One daemon owns a journal directory at
//! a time (an exclusive `flock` on `.lock`), so every record not owned by a running job of
//! this daemon is pending.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runnel_api::{Client, RunnerInfo};
use runnel_trace::JobTrace;
use runnel_types::{FailureReason, JobId, JobState, JobToken};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::remote::ApiRemote;
use crate::uploader::{Delivery, FinalState, RemoteSignals, TraceUploader};

/// The journal format this build writes and reads.
const FORMAT_VERSION: u32 = 1;
/// The largest metadata file read back (they are a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Pause between redelivery passes: starts here after new work, doubles up to the cap.
const REDELIVERY_MIN: Duration = Duration::from_secs(1);
const REDELIVERY_MAX: Duration = Duration::from_secs(60);
/// Makes log writes fail with "no space left on device" once a job's log file would exceed
/// this many bytes: a test hook standing in for a full disk.
const TEST_DISK_LIMIT_VARIABLE: &str = "RUNNEL_TEST_JOURNAL_DISK_BYTES";

/// A journal that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot create or open the job journal directory {path} (it must be writable by the runner; choose another with --journal-dir)"
    )]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the job journal directory {path} is in use by another runnel process (one daemon per journal directory; give this one its own with --journal-dir)"
    )]
    InUse { path: PathBuf },
    #[error("cannot write the job journal {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the job journal {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the job journal {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The final state as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FinalRecord {
    state: String,
    failure_reason: Option<String>,
    exit_code: Option<i32>,
}

/// A kubernetes pod of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PodRecord {
    namespace: String,
    name: String,
}

/// One job's metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    version: u32,
    job_id: u64,
    /// The runner's `url`.
    url: String,
    /// The runner's short token, to find its client settings again.
    runner: String,
    /// The job token (this file is 0600).
    token: String,
    executor: String,
    /// The environment tag of the job's processes.
    tag: String,
    /// The daemon that ran the job.
    runnel_pid: u32,
    /// Unix time the job started.
    started_at: i64,
    /// Process groups the job started (informational: the tag finds every process).
    process_groups: Vec<u32>,
    /// Docker containers the job created (build, helper, services), by id.
    #[serde(default)]
    containers: Vec<String>,
    /// The job's kubernetes pod (recorded; a restarted runner's pod sweep deletes it).
    #[serde(default)]
    pods: Vec<PodRecord>,
    /// Trace bytes GitLab acknowledged when this file was last written.
    acked: u64,
    final_state: Option<FinalRecord>,
}

impl Record {
    /// A record for a job that starts now.
    pub(crate) fn new(
        job: JobId,
        token: &JobToken,
        url: &str,
        runner: &str,
        executor: &str,
        tag: &str,
    ) -> Self {
        Self {
            version: FORMAT_VERSION,
            job_id: job.0,
            url: url.to_owned(),
            runner: runner.to_owned(),
            token: token.expose().to_owned(),
            executor: executor.to_owned(),
            tag: tag.to_owned(),
            runnel_pid: std::process::id(),
            started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            process_groups: Vec::new(),
            containers: Vec::new(),
            pods: Vec::new(),
            acked: 0,
            final_state: None,
        }
    }

    /// The runner's `url` (to pick the client for a redelivery).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The runner's short token.
    pub(crate) fn runner(&self) -> &str {
        &self.runner
    }

    /// The executor name.
    pub(crate) fn executor(&self) -> &str {
        &self.executor
    }

    fn name(&self) -> String {
        let runner: String = self
            .runner
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        format!("job-{}-{runner}", self.job_id)
    }

    fn final_state(&self) -> Option<FinalState> {
        let record = self.final_state.as_ref()?;
        let state = match record.state.as_str() {
            "success" => JobState::Success,
            "failed" => JobState::Failed,
            _ => return None,
        };
        Some(FinalState {
            state,
            failure_reason: record.failure_reason.as_deref().and_then(failure_reason),
            exit_code: record.exit_code,
        })
    }

    fn set_final(&mut self, state: &FinalState) {
        self.final_state = Some(FinalRecord {
            state: state.state.as_str().to_owned(),
            failure_reason: state.failure_reason.map(|r| r.as_str().to_owned()),
            exit_code: state.exit_code,
        });
    }
}

fn failure_reason(name: &str) -> Option<FailureReason> {
    use FailureReason as R;
    [
        R::ScriptFailure,
        R::RunnerSystemFailure,
        R::JobExecutionTimeout,
        R::ImagePullFailure,
        R::RunnerConfigurationError,
        R::RunnerExternalDependencyFailure,
        R::RunnerInterrupted,
        R::UnknownFailure,
        R::JobCanceled,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

/// The journal directory of one daemon.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Held for the daemon's lifetime: one daemon per directory.
    _lock: nix::fcntl::Flock<File>,
    /// Records of jobs this daemon is running (not pending).
    active: Mutex<HashSet<String>>,
    /// Woken when a job leaves work behind (an abandoned final update).
    pending_added: Notify,
    disk_limit: Option<u64>,
    /// Numbers of the emptied file pairs of finished jobs, kept for the next jobs
    /// ([`Journal::recycle`]).
    spares: Mutex<Vec<u64>>,
    next_spare: std::sync::atomic::AtomicU64,
}

/// The most emptied file pairs kept for later jobs.
const MAX_SPARES: usize = 64;
/// How the names of emptied file pairs start (`spare-<n>.json`, `spare-<n>.log`).
const SPARE_PREFIX: &str = "spare-";

impl Journal {
    /// Opens (creating it 0700 if needed) and locks the journal directory `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        let dir_error = |source| JournalError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_error)?;
        // An existing directory keeps its mode: tighten it (it holds job tokens).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
        let lock_path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(dir_error)?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| match errno {
                nix::errno::Errno::EWOULDBLOCK => JournalError::InUse {
                    path: dir.to_path_buf(),
                },
                other => dir_error(std::io::Error::from(other)),
            })?;
        let disk_limit = std::env::var(TEST_DISK_LIMIT_VARIABLE)
            .ok()
            .and_then(|v| v.parse().ok());
        // A killed daemon's spare files may still hold a finished job's record: they go.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(SPARE_PREFIX)
                {
                    std::fs::remove_file(entry.path()).ok();
                }
            }
        }
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            active: Mutex::default(),
            pending_added: Notify::new(),
            disk_limit,
            spares: Mutex::default(),
            next_spare: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the journal of a job: writes its record and an empty log.
    pub(crate) fn begin(self: &Arc<Self>, record: Record) -> Result<Arc<JobJournal>, JournalError> {
        let name = record.name();
        let log_path = self.dir.join(format!("{name}.log"));
        self.reuse_spare(&name);
        let log_error = |source| JournalError::Write {
            path: log_path.clone(),
            source,
        };
        // Not `O_TRUNC` on a reused spare, which is empty ([`write_record`] says why).
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&log_path)
            .map_err(log_error)?;
        if log.metadata().map_err(log_error)?.len() > 0 {
            log.set_len(0).map_err(log_error)?;
        }
        self.lock_active().insert(name.clone());
        let journal = Arc::new(JobJournal {
            journal: Arc::clone(self),
            name,
            record: Mutex::new(record),
            record_file: Mutex::new(None),
            log: Mutex::new(Some(log)),
            log_path,
            failed: CancellationToken::new(),
            error: Mutex::new(None),
            released: std::sync::atomic::AtomicBool::new(false),
        });
        if let Err(error) = journal.save() {
            journal.remove();
            return Err(error);
        }
        Ok(journal)
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Where a record is written before it replaces the old one ([`write_record`]).
    fn new_record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json.tmp"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Names of records no running job of this daemon owns, oldest name first.
    pub(crate) fn pending(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let active = self.lock_active();
        let mut records = HashSet::new();
        let mut new_versions = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if let Some(name) = file.strip_suffix(".json") {
                records.insert(name.to_owned());
            } else if let Some(name) = file.strip_suffix(".json.tmp") {
                new_versions.push(name.to_owned());
            }
        }
        let mut names: Vec<String> = records
            .iter()
            .cloned()
            .chain(new_versions.into_iter().filter(|name| {
                // Only a record whose runner died halfway through replacing it is there only
                // as its new version, and that one is complete. (A runner killed while writing
                // a job's first record leaves a partial one: the job was not acknowledged.)
                !records.contains(name) && read_record(&self.new_record_path(name)).is_ok()
            }))
            .filter(|name| name.starts_with("job-") && !active.contains(name))
            .collect();
        names.sort();
        names
    }

    /// Reads a record and its log.
    pub(crate) fn load(&self, name: &str) -> Result<(Record, Vec<u8>), JournalError> {
        // The record, or, when its runner died halfway through replacing it (the old one
        // removed, the new one not yet renamed), its new version, which is complete then.
        let mut path = self.record_path(name);
        if !path.exists() && self.new_record_path(name).exists() {
            path = self.new_record_path(name);
        }
        let record = read_record(&path)?;
        let log_path = self.log_path(name);
        // A missing log is an empty one (the runner died before the first byte).
        let log = match std::fs::read(&log_path) {
            Ok(log) => log,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(JournalError::Read {
                    path: log_path,
                    source,
                });
            }
        };
        Ok((record, log))
    }

    fn store(&self, record: &Record) -> Result<RecordFile, JournalError> {
        let name = record.name();
        write_record(
            &self.record_path(&name),
            &self.new_record_path(&name),
            record,
        )
    }

    fn append_log(&self, name: &str, bytes: &[u8]) -> Result<(), JournalError> {
        let path = self.log_path(name);
        let write_error = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(write_error)?;
        file.write_all(bytes).map_err(write_error)
    }

    /// Gives a finished job's emptied files to the job `name`, when there are some: its log
    /// and the first version of its record ([`write_record`]) then open existing empty files
    /// instead of making new ones. On ext4 without a journal every new inode costs a scan
    /// past the inodes deleted in the last minutes, which at hundreds of jobs a minute cost
    /// more CPU than the rest of the runner's work for a job.
    fn reuse_spare(&self, name: &str) {
        let Some(number) = self
            .spares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        else {
            return;
        };
        let (record, log) = self.spare_paths(number);
        for (from, to) in [
            (&log, self.log_path(name)),
            (&record, self.new_record_path(name)),
        ] {
            if let Err(error) = std::fs::rename(from, &to) {
                tracing::debug!(path = %from.display(), %error, "cannot reuse a spare journal file");
                std::fs::remove_file(from).ok();
            }
        }
    }

    fn spare_paths(&self, number: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{SPARE_PREFIX}{number}.json")),
            self.dir.join(format!("{SPARE_PREFIX}{number}.log")),
        )
    }

    /// Forgets a job whose final state GitLab has: its record and log are renamed to a spare
    /// pair and emptied, for a later job to reuse ([`Self::reuse_spare`]); the rename comes
    /// first, so that a daemon killed in between leaves no record of a job that is done (the
    /// next daemon removes spare files). Discarded instead when enough spares are kept or a
    /// step fails.
    fn recycle(&self, name: &str) {
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        if spares.len() >= MAX_SPARES || self.new_record_path(name).exists() {
            drop(spares);
            self.discard(name);
            return;
        }
        let number = self
            .next_spare
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (record, log) = self.spare_paths(number);
        let emptied = [
            (self.record_path(name), &record),
            (self.log_path(name), &log),
        ]
        .into_iter()
        .all(|(from, to)| {
            std::fs::rename(&from, to).is_ok()
                && OpenOptions::new()
                    .write(true)
                    .open(to)
                    .and_then(|file| file.set_len(0))
                    .is_ok()
        });
        if emptied {
            spares.push(number);
            return;
        }
        drop(spares);
        for path in [&record, &log] {
            std::fs::remove_file(path).ok();
        }
        self.discard(name);
    }

    fn discard(&self, name: &str) {
        for path in [
            self.record_path(name),
            self.new_record_path(name),
            self.log_path(name),
        ] {
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove a job journal file");
            }
        }
    }
}

/// Reads and checks the record at `path`.
fn read_record(path: &Path) -> Result<Record, JournalError> {
    let read_error = |source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_RECORD_BYTES {
        return Err(JournalError::Invalid {
            path: path.to_path_buf(),
            message: format!("{size} bytes, more than a record can be"),
        });
    }
    let text = std::fs::read(path).map_err(read_error)?;
    let record: Record = serde_json::from_slice(&text).map_err(|error| JournalError::Invalid {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    if record.version != FORMAT_VERSION {
        return Err(JournalError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "format version {} (this runnel reads {FORMAT_VERSION})",
                record.version
            ),
        });
    }
    Ok(record)
}

/// Writes `record` to `path`, 0600, so that a runner killed at any point leaves a complete
/// record, old or new: the new one goes to `temporary` first, then the old one is removed and
/// the new one renamed to `path` ([`Journal::load`] reads `temporary` when `path` is missing).
/// The rename never replaces a file, which on ext4 would write the new file's data to disk at
/// once (and make its removal at the end of the job wait for that IO, and for a discard on a
/// filesystem mounted with `discard`).
fn write_record(
    path: &Path,
    temporary: &Path,
    record: &Record,
) -> Result<RecordFile, JournalError> {
    let write_error = |source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = record_text(path, record)?;
    // Not `O_TRUNC`: the file may be a reused spare (empty), and on ext4 truncating a file to
    // nothing makes closing it later write its new data to disk at once (`auto_da_alloc`).
    // What a killed daemon left there is cut to the new length instead.
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(temporary)
        .map_err(write_error)?;
    file.write_all(&text).map_err(write_error)?;
    if file.metadata().map_err(write_error)?.len() > text.len() as u64 {
        file.set_len(text.len() as u64).map_err(write_error)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(write_error(error));
        }
        _ => {}
    }
    std::fs::rename(temporary, path).map_err(write_error)?;
    Ok(RecordFile {
        file,
        len: text.len(),
    })
}

/// A record as JSON.
fn record_text(path: &Path, record: &Record) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec_pretty(record).map_err(|error| JournalError::Invalid {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

/// The largest record rewritten in place ([`JobJournal::save`]): one page, which a single
/// write replaces whole or not at all when the writer is killed.
const IN_PLACE_MAX: usize = 4096;

/// A job's record file, open, and the length of what it holds.
#[derive(Debug)]
struct RecordFile {
    file: File,
    len: usize,
}

impl RecordFile {
    /// Replaces the record in place with one write at offset 0, when both the old and the
    /// new one fit in [`IN_PLACE_MAX`]: a new record shorter than the old is padded with
    /// spaces, which JSON ignores. No new file, so no inode to allocate and none to free:
    /// on ext4 without a journal each new inode costs a scan past the recently deleted ones,
    /// which grows with every job. Returns `Ok(false)` when the record does not fit.
    fn rewrite(&mut self, text: &[u8]) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt as _;
        if text.len() > IN_PLACE_MAX || self.len > IN_PLACE_MAX {
            return Ok(false);
        }
        let mut page = Vec::with_capacity(self.len.max(text.len()));
        page.extend_from_slice(text);
        page.resize(self.len.max(text.len()), b' ');
        self.file.write_all_at(&page, 0)?;
        self.len = page.len();
        Ok(true)
    }
}

/// The journal of one running job.
#[derive(Debug)]
pub(crate) struct JobJournal {
    journal: Arc<Journal>,
    name: String,
    record: Mutex<Record>,
    /// The record's file once written, kept open to rewrite it in place.
    record_file: Mutex<Option<RecordFile>>,
    /// The log file the follower appends to; `None` once the follower is done with it.
    log: Mutex<Option<File>>,
    log_path: PathBuf,
    /// Fired when the journal could not be written: the job must stop.
    failed: CancellationToken,
    error: Mutex<Option<String>>,
    /// Whether the job handed its record over (done or pending).
    released: std::sync::atomic::AtomicBool,
}

impl JobJournal {
    /// Fired when writing the journal failed.
    pub(crate) fn failed(&self) -> &CancellationToken {
        &self.failed
    }

    /// What went wrong, once [`Self::failed`] fired.
    pub(crate) fn error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, error: &JournalError) {
        let message = crate::job::error_chain(error);
        tracing::error!(error = %message, "the job journal could not be written; stopping the job");
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(message);
        self.failed.cancel();
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the record: the first time as a new file ([`write_record`]), then in place
    /// while it fits ([`RecordFile::rewrite`]).
    fn save(&self) -> Result<(), JournalError> {
        // The file first: saves land in the order their records were taken.
        let mut file = self
            .record_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let record = self.lock_record().clone();
        if let Some(open) = file.as_mut() {
            let path = self.journal.record_path(&self.name);
            let text = record_text(&path, &record)?;
            match open.rewrite(&text) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(source) => return Err(JournalError::Write { path, source }),
            }
        }
        *file = Some(self.journal.store(&record)?);
        Ok(())
    }

    /// Records a process group the job started.
    pub(crate) fn add_process_group(&self, pid: u32) {
        self.lock_record().process_groups.push(pid);
        if let Err(error) = self.save() {
            self.fail(&error);
        }
    }

    /// Records what the job created outside this process (containers, pods), when it changed.
    pub(crate) fn set_resources(&self, resources: &[runnel_executor::JobResource]) {
        let mut containers = Vec::new();
        let mut pods = Vec::new();
        for resource in resources {
            match resource {
                runnel_executor::JobResource::DockerContainer { id } => containers.push(id.clone()),
                runnel_executor::JobResource::KubernetesPod { namespace, name } => {
                    pods.push(PodRecord {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        {
            let mut record = self.lock_record();
            if record.containers == containers && record.pods == pods {
                return;
            }
            record.containers = containers;
            record.pods = pods;
        }
        if let Err(error) = self.save() {
            self.fail(&error);
        }
    }

    /// Records the final state (before it is sent).
    pub(crate) fn set_final(&self, state: &FinalState, acked: u64) {
        {
            let mut record = self.lock_record();
            record.set_final(state);
            record.acked = acked;
        }
        if let Err(error) = self.save() {
            self.fail(&error);
        }
    }

    /// Records how much of the log GitLab acknowledged (after an abandoned final update).
    pub(crate) fn set_final_acked(&self, acked: u64) {
        self.lock_record().acked = acked;
        if let Err(error) = self.save() {
            tracing::warn!(error = %crate::job::error_chain(&error), "cannot update the job journal");
        }
    }

    /// Copies the job log to disk as it grows, until the log is finished and written. A
    /// write error stops the job (see [`Self::failed`]) and ends the copy.
    pub(crate) fn follow(self: &Arc<Self>, trace: JobTrace) -> tokio::task::JoinHandle<bool> {
        let journal = Arc::clone(self);
        tokio::spawn(async move {
            let mut written = 0usize;
            loop {
                let finished = trace.is_finished();
                loop {
                    let chunk = match trace.read_from(written, runnel_trace::MAX_READ_BYTES) {
                        Ok(chunk) if chunk.is_empty() => break,
                        Ok(chunk) => chunk,
                        Err(error) => {
                            tracing::error!(%error, "job journal follower lost its place");
                            return false;
                        }
                    };
                    let len = chunk.len();
                    let target = Arc::clone(&journal);
                    let offset = written;
                    let result = tokio::task::spawn_blocking(move || {
                        target.write_log(offset as u64, &chunk)
                    })
                    .await;
                    match result {
                        Ok(Ok(())) => written += len,
                        Ok(Err(error)) => {
                            journal.fail(&error);
                            trace.error(&format!(
                                "the job journal could not be written: {}",
                                crate::job::error_chain(&error)
                            ));
                            return false;
                        }
                        Err(error) => {
                            tracing::error!(%error, "job journal write task failed");
                            return false;
                        }
                    }
                }
                if finished {
                    return true;
                }
                trace.changed(written).await;
            }
        })
    }

    fn write_log(&self, offset: u64, bytes: &[u8]) -> Result<(), JournalError> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let write_error = |source| JournalError::Write {
            path: self.log_path.clone(),
            source,
        };
        let Some(file) = log.as_mut() else {
            return Ok(());
        };
        if let Some(limit) = self.journal.disk_limit
            && offset + bytes.len() as u64 > limit
        {
            return Err(write_error(std::io::Error::from_raw_os_error(
                nix::errno::Errno::ENOSPC as i32,
            )));
        }
        file.write_all(bytes).map_err(write_error)
    }

    /// GitLab has the final state (or no longer wants the job): forget it.
    pub(crate) fn remove(&self) {
        self.release();
        self.journal.recycle(&self.name);
    }

    /// The final update was abandoned: leave the record for [`redeliver`].
    pub(crate) fn keep_pending(&self) {
        self.release();
        self.journal.pending_added.notify_one();
    }

    fn release(&self) {
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // What rewrites the record from now on (the redelivery) replaces the file.
        self.record_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.journal.lock_active().remove(&self.name);
    }
}

impl Drop for JobJournal {
    /// A job task that ended without handing its record over (a panic) leaves it pending, so
    /// the redelivery reports the job instead of leaving it running in GitLab.
    fn drop(&mut self) {
        if !self.released.load(std::sync::atomic::Ordering::SeqCst) {
            self.keep_pending();
        }
    }
}

/// How to reach the coordinator for a journaled job.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) client: Arc<Client>,
    pub(crate) info: RunnerInfo,
    /// The docker settings of the job's runner, to remove its containers (when the runner is
    /// still configured with the docker executor).
    pub(crate) docker: Option<Arc<runnel_executor_docker::DockerProvider>>,
}

/// Finds the client for a record (its runner's, or one made from its URL).
pub(crate) type Resolve = dyn Fn(&Record) -> Option<Route> + Send + Sync;

/// A pending job that could not be finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// The job (`job 42`), or the journal file that could not be read.
    pub job: String,
    pub url: String,
    pub reason: String,
}

/// Finishes pending jobs until `stop` fires: at once, again when a job leaves work behind,
/// and with a backoff (1 s doubling to 60 s) while something is left.
pub(crate) async fn redeliver(
    journal: Arc<Journal>,
    resolve: Arc<Resolve>,
    stop: CancellationToken,
) {
    let mut pause = REDELIVERY_MIN;
    loop {
        let left = redeliver_once(&journal, resolve.as_ref()).await;
        // A notification while the pass ran is kept (`notify_one` stores a permit).
        if left.is_empty() {
            pause = REDELIVERY_MIN;
            tokio::select! {
                () = stop.cancelled() => return,
                () = journal.pending_added.notified() => {}
            }
        } else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = journal.pending_added.notified() => pause = REDELIVERY_MIN,
                () = tokio::time::sleep(pause) => pause = (pause * 2).min(REDELIVERY_MAX),
            }
        }
    }
}

/// One pass over the pending jobs; returns those still pending.
pub(crate) async fn redeliver_once(journal: &Arc<Journal>, resolve: &Resolve) -> Vec<Undelivered> {
    let mut left = Vec::new();
    for name in journal.pending() {
        let (mut record, mut log) = match journal.load(&name) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::error!(error = %crate::job::error_chain(&error), "skipping an unreadable job journal");
                left.push(Undelivered {
                    job: journal.record_path(&name).display().to_string(),
                    url: String::new(),
                    reason: error.to_string(),
                });
                continue;
            }
        };
        let span = tracing::info_span!("journal", job = record.job_id, runner = %record.runner);
        let outcome = async {
            let route = resolve(&record);
            if record.final_state().is_none() {
                abandon(journal, &name, &mut record, &mut log, route.as_ref()).await?;
            }
            deliver(journal, &mut record, &log, route).await
        };
        use tracing::Instrument as _;
        if let Err(reason) = outcome.instrument(span).await {
            left.push(Undelivered {
                job: format!("job {}", record.job_id),
                url: url::Url::parse(&record.url).map_or_else(
                    |_| "an invalid URL".to_owned(),
                    |url| runnel_api::SafeUrl::new(&url).to_string(),
                ),
                reason,
            });
        }
    }
    left
}

/// A job whose runner died while it ran: kill what is left of it and fail it.
async fn abandon(
    journal: &Arc<Journal>,
    name: &str,
    record: &mut Record,
    log: &mut Vec<u8>,
    route: Option<&Route>,
) -> Result<(), String> {
    let tag = record.tag.clone();
    let killed = tokio::task::spawn_blocking(move || runnel_executor::contain::kill_tagged(&tag))
        .await
        .unwrap_or(0);
    let containers = remove_containers(record, route).await;
    tracing::warn!(
        killed,
        containers = %containers,
        previous_pid = record.runnel_pid,
        "found a job that was running when the runner stopped; reporting it failed"
    );
    let outcome = runnel_job::JobOutcome::SystemFailure {
        message: format!(
            "the runner was restarted while this job was running (runnel process {} ended without finishing it{}{containers})",
            record.runnel_pid,
            match killed {
                0 => String::new(),
                n => format!("; {n} leftover job processes were killed"),
            }
        ),
    };
    let status = outcome.final_status(runnel_job::ExecutorKind::Shell);
    let mut text = String::new();
    if log.last().is_some_and(|b| *b != b'\n') {
        text.push('\n');
    }
    let line = &status.trace_line;
    text.push_str(&runnel_trace::format::error(
        line.strip_prefix("ERROR: ").unwrap_or(line),
    ));
    journal
        .append_log(name, text.as_bytes())
        .map_err(|e| crate::job::error_chain(&e))?;
    log.extend_from_slice(text.as_bytes());
    record.set_final(&FinalState {
        state: JobState::Failed,
        failure_reason: Some(FailureReason::RunnerSystemFailure),
        exit_code: None,
    });
    journal
        .store(record)
        .map(drop)
        .map_err(|e| crate::job::error_chain(&e))
}

/// Force-removes the docker containers of a job whose runner died, before it is reported;
/// returns what to tell the job log (empty when it had none).
async fn remove_containers(record: &Record, route: Option<&Route>) -> String {
    if record.containers.is_empty() {
        return String::new();
    }
    let count = record.containers.len();
    let Some(docker) = route.and_then(|r| r.docker.as_ref()) else {
        tracing::warn!(containers = ?record.containers, "the job's runner is no longer configured for docker; its containers are not removed");
        return format!(
            "; its {count} docker containers were not removed: its runner is no longer configured for docker"
        );
    };
    match docker.remove_containers(&record.containers).await {
        Ok(removed) => format!(
            "; {removed} of its {count} docker containers were still there and were removed"
        ),
        Err(error) => {
            let error = crate::job::error_chain(&error);
            tracing::warn!(%error, "cannot remove the containers of a job whose runner died");
            format!("; its docker containers could not be removed: {error}")
        }
    }
}

/// Sends the rest of the log and the final state, once (the caller retries later).
async fn deliver(
    journal: &Arc<Journal>,
    record: &mut Record,
    log: &[u8],
    route: Option<Route>,
) -> Result<(), String> {
    let Some(state) = record.final_state() else {
        return Err("the journal has no valid final state".to_owned());
    };
    let Some(route) = route else {
        return Err(format!("no GitLab client can be made for {}", record.url));
    };
    let trace = JobTrace::recovered(log).map_err(|e| e.to_string())?;
    let remote = Arc::new(ApiRemote {
        client: route.client,
        job: JobId(record.job_id),
        token: JobToken::new(record.token.clone()),
        info: route.info,
        // The journal does not keep CI_DEBUG_TRACE: a recovered log is patched without it.
        debug_trace: false,
    });
    let mut uploader = TraceUploader::new(remote, trace, RemoteSignals::default());
    uploader.resume_at(record.acked.min(log.len() as u64));
    // A 202 answer ends this pass: the next pass (after the backoff) asks again.
    uploader.not_yet_budget(Duration::ZERO);
    match uploader.finish(state, 0).await {
        Delivery::Accepted => {
            tracing::info!(
                bytes = log.len(),
                "delivered a journaled job's log and final state"
            );
            journal.discard(&record.name());
            Ok(())
        }
        Delivery::Aborted => {
            tracing::warn!("GitLab no longer wants a journaled job; forgetting it");
            journal.discard(&record.name());
            Ok(())
        }
        Delivery::GaveUp(error) => {
            record.acked = uploader.sent();
            if let Err(store) = journal.store(record) {
                tracing::warn!(error = %crate::job::error_chain(&store), "cannot update a job journal");
            }
            tracing::debug!(%error, "a journaled job could not be delivered yet");
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Record {
        Record::new(
            JobId(id),
            &JobToken::new("glcbt-secret"),
            "http://127.0.0.1:1",
            "t1_abc",
            "shell",
            "tag",
        )
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_job_journal_is_private_and_holds_what_finishing_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let journal = Journal::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        let job = journal.begin(record(7)).unwrap();
        let trace = JobTrace::new(runnel_trace::TraceConfig::default()).unwrap();
        let follower = job.follow(trace.clone());
        trace.println("hello");
        trace.finish();
        assert!(follower.await.unwrap());
        job.set_final(
            &FinalState {
                state: JobState::Failed,
                failure_reason: Some(FailureReason::ScriptFailure),
                exit_code: Some(3),
            },
            2,
        );
        for file in ["job-7-t1_abc.json", "job-7-t1_abc.log"] {
            assert_eq!(mode(&path.join(file)), 0o600, "{file}");
        }
        // The job still runs in this daemon: not pending.
        assert!(journal.pending().is_empty());
        job.keep_pending();
        assert_eq!(journal.pending(), vec!["job-7-t1_abc".to_owned()]);
        let (loaded, log) = journal.load("job-7-t1_abc").unwrap();
        assert_eq!(log, trace.read_from(0, 1024).unwrap());
        assert_eq!(loaded.acked, 2);
        assert_eq!(loaded.token, "glcbt-secret");
        let state = loaded.final_state().unwrap();
        assert_eq!(state.state, JobState::Failed);
        assert_eq!(state.failure_reason, Some(FailureReason::ScriptFailure));
        assert_eq!(state.exit_code, Some(3));
    }

    /// A record is replaced without renaming over the old one (on ext4 that forces the new
    /// data to disk and makes the job's end wait for it): a runner killed at any point of a
    /// replacement leaves a complete record, the old or the new one; a first record cut short
    /// (the job was not acknowledged yet) is not taken for a pending job.
    #[test]
    fn a_record_replaced_halfway_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let old = record(3);
        let mut new = record(3);
        new.acked = 42;
        let name = old.name();
        let (path, temporary) = (journal.record_path(&name), journal.new_record_path(&name));
        journal.store(&old).unwrap();
        let old_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        journal.store(&new).unwrap();
        assert!(!temporary.exists());
        assert_eq!(journal.load(&name).unwrap().0.acked, 42);
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
            old_inode,
            "a new file, not the old one rewritten"
        );

        // Killed after the new version was written, before the old one went: the old one.
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        std::fs::write(&temporary, serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(journal.pending(), vec![name.clone()]);
        assert_eq!(journal.load(&name).unwrap().0.acked, 0);
        // Killed after the old one went, before the rename: the new one.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&temporary, serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(journal.pending(), vec![name.clone()]);
        assert_eq!(journal.load(&name).unwrap().0.acked, 42);
        // Killed while writing a job's first record: nothing to finish.
        std::fs::write(&temporary, b"{\"version\": 1, \"job_").unwrap();
        assert!(journal.pending().is_empty());
        journal.discard(&name);
        assert!(!temporary.exists());
    }

    /// A running job's later records rewrite its record file in place while they fit in a
    /// page (no new inode per change): a shorter record is padded and read back whole; one
    /// that outgrows the page is written as a new file, as the first one is.
    #[test]
    fn a_running_jobs_record_is_rewritten_in_place_while_it_fits_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut first = record(9);
        first.process_groups = vec![4_000_000; 20];
        let name = first.name();
        let path = journal.record_path(&name);
        let job = journal.begin(first).unwrap();
        let inode =
            |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
        let written = inode(&path);
        let long = std::fs::metadata(&path).unwrap().len();

        // Shorter than before: padded, same file.
        job.lock_record().process_groups.clear();
        job.add_process_group(7);
        assert_eq!(inode(&path), written, "rewritten in place");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), long, "padded");
        assert_eq!(journal.load(&name).unwrap().0.process_groups, vec![7]);

        // Longer than a page: a new file, complete.
        job.lock_record().process_groups = vec![4_000_000; 600];
        job.add_process_group(8);
        assert_ne!(inode(&path), written, "a new file");
        let loaded = journal.load(&name).unwrap().0;
        assert_eq!(loaded.process_groups.len(), 601);
        assert!(!journal.new_record_path(&name).exists());
        job.remove();
        assert!(!path.exists());
    }

    /// A finished job's files are emptied and kept for the next job (no new inode per job):
    /// nothing of the finished job is left in them, they are no pending job, the next job's
    /// record and log are those same files, and a new daemon removes spares a killed one left.
    #[test]
    fn a_finished_jobs_files_are_emptied_and_reused_by_the_next_job() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let first = journal.begin(record(1)).unwrap();
        first.write_log(0, b"the first job's log").unwrap();
        first.add_process_group(11);
        first.remove();
        let mut spares: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(SPARE_PREFIX))
            .collect();
        spares.sort();
        assert_eq!(spares, ["spare-0.json", "spare-0.log"]);
        for spare in &spares {
            assert_eq!(std::fs::metadata(dir.path().join(spare)).unwrap().len(), 0);
        }
        assert!(journal.pending().is_empty());
        let inodes: Vec<u64> = spares
            .iter()
            .map(|spare| std::fs::metadata(dir.path().join(spare)).unwrap().ino())
            .collect();

        let second = journal.begin(record(2)).unwrap();
        second.write_log(0, b"second").unwrap();
        let name = record(2).name();
        assert_eq!(
            std::fs::metadata(journal.record_path(&name)).unwrap().ino(),
            inodes[0],
            "the spare record file"
        );
        assert_eq!(
            std::fs::metadata(journal.log_path(&name)).unwrap().ino(),
            inodes[1],
            "the spare log"
        );
        second.keep_pending();
        let (loaded, log) = journal.load(&name).unwrap();
        assert_eq!(loaded.job_id, 2);
        assert_eq!(log, b"second");
        drop((first, second, journal));

        // A daemon killed between a rename and the emptying leaves a spare with a record.
        std::fs::write(dir.path().join("spare-7.json"), b"{\"token\": \"x\"}").unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert!(!dir.path().join("spare-7.json").exists());
        assert_eq!(journal.pending(), vec![name]);
    }

    #[test]
    fn a_second_daemon_cannot_take_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Journal::open(dir.path()).unwrap();
        let second = Journal::open(dir.path()).unwrap_err();
        assert!(matches!(second, JournalError::InUse { .. }), "{second}");
    }

    #[test]
    fn a_broken_record_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("job-1-x.json"), b"{ not json").unwrap();
        let error = journal.load("job-1-x").unwrap_err();
        assert!(error.to_string().contains("job-1-x.json"), "{error}");
    }

    #[tokio::test]
    async fn removing_forgets_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let job = journal.begin(record(9)).unwrap();
        job.write_log(0, b"log").unwrap();
        job.remove();
        // Only emptied spares for the next job are left.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != ".lock")
            .filter(|e| {
                !e.file_name().to_string_lossy().starts_with(SPARE_PREFIX)
                    || e.metadata().unwrap().len() > 0
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
