//! Safe extraction of zip, tar+zstd and gzip archives into the project directory.
//!
//! Nothing is ever written outside the project directory. An entry is refused (skipped with an
//! [`ExtractWarning`], the rest of the archive is still extracted) when:
//! - its name is absolute (`/etc/x`, `\x`, `C:x`), empty, or has a `..` component;
//! - it would be written through a symlink: any parent directory on the way is a symlink
//!   (including one planted by an earlier entry of the same archive);
//! - it is a symlink whose target is absolute outside the project directory or climbs out of it
//!   with `..`, or has a `..` after a name (`a/../x`): a name on the way may be (or later become)
//!   a symlink, after which `..` is no longer the lexical parent, so only leading `..` are
//!   allowed. Every link extracted therefore resolves inside the project directory, through any
//!   chain of links the archive creates (each link's directory is a real directory, each target
//!   climbs only from there and then descends through names, each of them a real directory or a
//!   link that itself resolves inside);
//! - it is a hard link, device, FIFO or socket.
//!
//! An archive as a whole is bounded (review L11: a zip bomb filled the builds volume): at most
//! [`ExtractLimits::max_entries`] entries, and at most as many bytes of file content as the
//! target filesystem has free at the start, less a reserve ([`ExtractLimits::for_dir`]).
//! Reaching a limit stops the extraction with [`ExtractError::Limit`]; what was written stays.
//!
//! The official runner's default (legacy) extractor has no such checks and its fastzip
//! extractor aborts the whole extraction; skipping with a warning keeps the legacy "warn and go
//! on" behaviour for everything else (per-entry I/O errors are warnings too) while staying safe.
//! An existing file, symlink or empty directory at an entry's path is replaced; the link itself
//! is removed, never followed. Permissions (`0o777` bits only: no setuid from archives) and
//! mtimes are restored; directory metadata is applied last so writing children does not undo
//! it. Ownership is not restored. Failing to open or decode the archive as a whole is an
//! [`ExtractError`].
//!
//! Speed: regular files are written on the rayon pool in batches. Entries are still checked
//! and placed in archive order on one thread; a batch is finished (every queued file written)
//! before anything that could change what a queued path means: a symlink entry, an entry at or
//! below a queued path, a refusal or failure (so warnings stay in archive order), the end. A zip
//! read by [`extract_file`] is decompressed by the workers too (each reads its entry with
//! positioned reads of the shared file); otherwise, and for tar+zstd, the reading thread
//! decompresses and files up to [`QUEUED_FILE_MAX`] are queued as bytes, bounded by
//! [`QUEUED_BYTES_MAX`] per batch; bigger ones are streamed to disk after the batch. No file is
//! synced to disk.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt as _, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::format::ArchiveFormat;
use crate::time::{from_unix_seconds, zip_datetime_seconds};

/// Longest symlink target read from an archive.
const MAX_LINK_TARGET: u64 = 4096;
/// Write buffer for extracted files.
const WRITE_BUFFER: usize = 256 * 1024;
/// Files up to this size are read into memory and queued for the parallel writers when the
/// archive is decompressed on the reading thread; bigger ones are streamed.
const QUEUED_FILE_MAX: u64 = 1024 * 1024;
/// Upper bound on the queued bytes of one batch (bounds memory use).
const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Upper bound on the files of one batch.
const QUEUED_FILES_MAX: usize = 1024;
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// The archive as a whole could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The archive file could not be opened or read.
    #[error("failed to read archive {}", path.display())]
    Open {
        /// The archive path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The archive does not start like a zip, zstd or gzip stream.
    #[error("failed to recognise the archive format of {}", path.display())]
    UnknownFormat {
        /// The archive path.
        path: PathBuf,
    },
    /// The project directory does not exist or cannot be resolved.
    #[error("failed to resolve project directory {}", path.display())]
    ProjectDir {
        /// The directory as given.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The archive is corrupt or truncated.
    #[error("failed to decode the {format} archive")]
    Decode {
        /// The format being read.
        format: ArchiveFormat,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Raw uploads have no structure to extract.
    #[error("raw archives cannot be extracted")]
    Raw,
    /// The archive holds more than the limits allow (a zip bomb, or not enough disk).
    #[error("extraction stopped: {0}")]
    Limit(String),
}

/// The most entries one archive may hold by default.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Free space left on the target filesystem: at most this much…
const RESERVE_MAX: u64 = 1024 * 1024 * 1024;
/// …or this fraction of the filesystem (1/50 = 2 %), whichever is smaller.
const RESERVE_DIVISOR: u64 = 50;

/// What one extraction may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Entries (files, directories, links, refused ones) the archive may hold.
    pub max_entries: u64,
    /// Bytes of file content that may be written.
    pub max_bytes: u64,
}

impl ExtractLimits {
    /// [`MAX_ENTRIES`], and the free space of the filesystem holding `dir` less a reserve of
    /// 2 % of it (at most 1 GiB), so an archive cannot fill the disk other jobs share. When the
    /// free space cannot be read, bytes are not limited.
    pub fn for_dir(dir: &Path) -> Self {
        let max_bytes = nix::sys::statvfs::statvfs(dir).map_or(u64::MAX, |stats| {
            let block = stats.fragment_size();
            let free = stats.blocks_available().saturating_mul(block);
            let size = stats.blocks().saturating_mul(block);
            free.saturating_sub((size / RESERVE_DIVISOR).min(RESERVE_MAX))
        });
        Self {
            max_entries: MAX_ENTRIES,
            max_bytes,
        }
    }
}

/// What is left of an extraction's [`ExtractLimits`], shared with the parallel writers.
#[derive(Debug)]
struct Budget {
    limits: ExtractLimits,
    entries: AtomicU64,
    bytes: AtomicU64,
    exceeded: AtomicBool,
}

impl Budget {
    fn new(limits: ExtractLimits) -> Self {
        Self {
            limits,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
        }
    }

    /// Counts one entry; `false` once there are too many.
    fn entry(&self) -> bool {
        let count = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if count > self.limits.max_entries {
            self.exceeded.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts `len` written bytes; an error once there are too many.
    fn take(&self, len: usize) -> io::Result<()> {
        let len = len as u64;
        let before = self.bytes.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > self.limits.max_bytes {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::other(self.bytes_message()));
        }
        Ok(())
    }

    fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    fn bytes_message(&self) -> String {
        format!(
            "the archive expands to more than {} bytes (the free space of the target filesystem, less a reserve)",
            self.limits.max_bytes
        )
    }

    /// The error for the limit that was reached.
    fn error(&self) -> ExtractError {
        if self.entries.load(Ordering::Relaxed) > self.limits.max_entries {
            ExtractError::Limit(format!(
                "the archive holds more than {} entries",
                self.limits.max_entries
            ))
        } else {
            ExtractError::Limit(self.bytes_message())
        }
    }
}

/// A reader whose bytes count against a [`Budget`].
struct Counted<'a> {
    inner: &'a mut dyn Read,
    budget: &'a Budget,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.budget.take(read)?;
        Ok(read)
    }
}

/// Why an entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The name is absolute.
    AbsolutePath,
    /// The name has a `..` component.
    ParentComponent,
    /// The name is empty or not a usable path.
    InvalidName,
    /// A parent directory on the way is a symlink.
    ThroughSymlink {
        /// The project-relative parent that is a symlink.
        parent: String,
    },
    /// A parent on the way exists and is not a directory.
    ParentNotDirectory {
        /// The project-relative parent.
        parent: String,
    },
    /// A symlink entry points outside the project directory.
    LinkEscapes {
        /// The link target as stored.
        target: String,
    },
    /// A symlink target has `..` after a name: through another link on the way it could lead
    /// anywhere, so only leading `..` components are allowed.
    LinkClimbsAfterName {
        /// The link target as stored.
        target: String,
    },
    /// Hard links, devices, FIFOs and sockets are not extracted.
    UnsupportedType,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AbsolutePath => f.write_str("absolute path"),
            Self::ParentComponent => f.write_str("path contains `..`"),
            Self::InvalidName => f.write_str("invalid entry name"),
            Self::ThroughSymlink { parent } => write!(f, "parent `{parent}` is a symlink"),
            Self::ParentNotDirectory { parent } => {
                write!(f, "parent `{parent}` is not a directory")
            }
            Self::LinkEscapes { target } => {
                write!(
                    f,
                    "symlink target `{target}` is outside the project directory"
                )
            }
            Self::LinkClimbsAfterName { target } => write!(
                f,
                "symlink target `{target}` has `..` after a name (only leading `..` are allowed)"
            ),
            Self::UnsupportedType => f.write_str("unsupported entry type"),
        }
    }
}

/// An entry that was not extracted.
#[derive(Debug)]
pub enum ExtractWarning {
    /// Refused for safety.
    Rejected {
        /// The entry name as stored in the archive.
        entry: String,
        /// Why.
        reason: Rejection,
    },
    /// Extracting it failed.
    Failed {
        /// The entry name as stored in the archive.
        entry: String,
        /// What went wrong.
        error: io::Error,
    },
}

impl fmt::Display for ExtractWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { entry, reason } => write!(f, "{entry}: refused: {reason}"),
            Self::Failed { entry, error } => write!(f, "{entry}: {error}"),
        }
    }
}

/// What [`extract`] did.
#[derive(Debug, Default)]
pub struct ExtractSummary {
    /// Regular files written.
    pub files: usize,
    /// Directories created or updated.
    pub dirs: usize,
    /// Symlinks created.
    pub symlinks: usize,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries skipped, in archive order (at most [`MAX_WARNINGS`]).
    pub warnings: Vec<ExtractWarning>,
    /// Entries skipped beyond [`MAX_WARNINGS`], only counted.
    pub warnings_dropped: usize,
}

/// The most warnings an [`ExtractSummary`] lists.
pub const MAX_WARNINGS: usize = 1000;

/// Recognises an archive by its first bytes: zip (`PK`), zstd (tar+zstd) or gzip.
pub fn detect_format(head: &[u8]) -> Option<ArchiveFormat> {
    match head {
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Some(ArchiveFormat::Zip),
        [0x28, 0xB5, 0x2F, 0xFD, ..] => Some(ArchiveFormat::TarZstd),
        [0x1F, 0x8B, ..] => Some(ArchiveFormat::Gzip),
        _ => None,
    }
}

/// Extracts the archive at `archive` into `project_dir`, recognising its format by content,
/// within [`ExtractLimits::for_dir`].
pub fn extract_file(archive: &Path, project_dir: &Path) -> Result<ExtractSummary, ExtractError> {
    extract_file_with(archive, project_dir, ExtractLimits::for_dir(project_dir))
}

/// [`extract_file`] within `limits`.
pub fn extract_file_with(
    archive: &Path,
    project_dir: &Path,
    limits: ExtractLimits,
) -> Result<ExtractSummary, ExtractError> {
    let open_error = |source| ExtractError::Open {
        path: archive.to_owned(),
        source,
    };
    let mut file = fs_err::File::open(archive).map_err(open_error)?;
    let mut head = [0_u8; 4];
    let read = read_up_to(&mut file, &mut head).map_err(open_error)?;
    file.rewind().map_err(open_error)?;
    let format =
        head.get(..read)
            .and_then(detect_format)
            .ok_or_else(|| ExtractError::UnknownFormat {
                path: archive.to_owned(),
            })?;
    if format == ArchiveFormat::Zip {
        let root = project_root(project_dir)?;
        let decode = |source| ExtractError::Decode { format, source };
        let shared = SharedFile::new(file.into_parts().0).map_err(open_error)?;
        let archive = zip::ZipArchive::new(shared).map_err(|error| decode(error.into()))?;
        let mut sink = Sink::new(root, limits);
        extract_zip_shared(archive, &mut sink).map_err(decode)?;
        return sink.finish();
    }
    extract_with(BufReader::new(file), format, project_dir, limits)
}

fn project_root(project_dir: &Path) -> Result<PathBuf, ExtractError> {
    fs_err::canonicalize(project_dir).map_err(|source| ExtractError::ProjectDir {
        path: project_dir.to_owned(),
        source,
    })
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Extracts `reader` (an archive in `format`) into `project_dir`; see the module rules.
pub fn extract<R: Read + Seek>(
    reader: R,
    format: ArchiveFormat,
    project_dir: &Path,
) -> Result<ExtractSummary, ExtractError> {
    extract_with(
        reader,
        format,
        project_dir,
        ExtractLimits::for_dir(project_dir),
    )
}

/// [`extract`] within `limits`.
pub fn extract_with<R: Read + Seek>(
    reader: R,
    format: ArchiveFormat,
    project_dir: &Path,
    limits: ExtractLimits,
) -> Result<ExtractSummary, ExtractError> {
    let root = project_root(project_dir)?;
    let mut sink = Sink::new(root, limits);
    let decode = |source| ExtractError::Decode { format, source };
    match format {
        ArchiveFormat::Zip => extract_zip(reader, &mut sink).map_err(decode)?,
        ArchiveFormat::TarZstd => extract_tar_zstd(reader, &mut sink).map_err(decode)?,
        ArchiveFormat::Gzip => extract_gzip(reader, &mut sink).map_err(decode)?,
        ArchiveFormat::Raw => return Err(ExtractError::Raw),
    }
    sink.finish()
}

fn extract_zip<R: Read + Seek>(reader: R, sink: &mut Sink) -> io::Result<()> {
    let mut archive = zip::ZipArchive::new(reader)?;
    walk_zip(&mut archive, sink, |sink, entry, _index, file| {
        let size = file.size();
        sink.file_buffered(&entry.name, entry.mode, entry.mtime, size, file);
    })
}

/// [`extract_zip`] for an archive the parallel writers can read themselves: regular files are
/// queued by index and decompressed by the workers.
fn extract_zip_shared(mut archive: zip::ZipArchive<SharedFile>, sink: &mut Sink) -> io::Result<()> {
    sink.zip = Some(archive.clone());
    walk_zip(&mut archive, sink, |sink, entry, index, _file| {
        sink.queue(&entry.name, entry.mode, entry.mtime, Data::ZipIndex(index));
    })
}

/// What a zip entry says about itself.
struct ZipEntry {
    name: String,
    mode: Option<u32>,
    mtime: Option<i64>,
}

/// Hands every entry of `archive` to `sink`: directories, symlinks and rejections here, regular
/// files to `file` (which reads or queues them).
fn walk_zip<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    sink: &mut Sink,
    mut file: impl FnMut(&mut Sink, &ZipEntry, usize, &mut zip::read::ZipFile<'_, R>),
) -> io::Result<()> {
    for index in 0..archive.len() {
        if !sink.budget.entry() {
            break;
        }
        let mut zip_file = archive.by_index(index)?;
        let entry = ZipEntry {
            name: String::from_utf8_lossy(zip_file.name_raw()).into_owned(),
            mode: zip_file.unix_mode(),
            mtime: zip_mtime(&zip_file),
        };
        let kind = entry.mode.map_or(0, |mode| mode & S_IFMT);
        if zip_file.is_dir() || kind == S_IFDIR {
            sink.dir(&entry.name, entry.mode, entry.mtime);
        } else if zip_file.is_symlink() {
            let target = read_link_target(&mut zip_file)?;
            sink.symlink(&entry.name, &target, entry.mtime);
        } else if matches!(kind, 0 | S_IFREG) {
            file(sink, &entry, index, &mut zip_file);
        } else {
            sink.reject(&entry.name, Rejection::UnsupportedType);
        }
    }
    Ok(())
}

fn zip_mtime<R: Read>(file: &zip::read::ZipFile<'_, R>) -> Option<i64> {
    let extended = file.extra_data_fields().find_map(|field| match field {
        zip::ExtraField::ExtendedTimestamp(ts) => ts.mod_time(),
        _ => None,
    });
    extended
        .map(i64::from)
        .or_else(|| file.last_modified().map(zip_datetime_seconds))
}

fn read_link_target(reader: &mut impl Read) -> io::Result<String> {
    let mut target = Vec::new();
    reader.take(MAX_LINK_TARGET).read_to_end(&mut target)?;
    Ok(String::from_utf8_lossy(&target).into_owned())
}

fn extract_tar_zstd<R: Read>(reader: R, sink: &mut Sink) -> io::Result<()> {
    let mut archive = tar::Archive::new(zstd::Decoder::new(reader)?);
    for entry in archive.entries()? {
        if !sink.budget.entry() {
            break;
        }
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header();
        let mode = header.mode().ok();
        let mtime = header.mtime().ok().and_then(|m| i64::try_from(m).ok());
        match header.entry_type() {
            tar::EntryType::Directory => sink.dir(&name, mode, mtime),
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|target| String::from_utf8_lossy(&target).into_owned())
                    .unwrap_or_default();
                sink.symlink(&name, &target, mtime);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                sink.file_buffered(&name, mode, mtime, size, &mut entry);
            }
            _ => sink.reject(&name, Rejection::UnsupportedType),
        }
    }
    Ok(())
}

/// Each gzip member becomes one file, named by its header comment (the project-relative path
/// the official archiver stores there) or, failing that, its file name.
fn extract_gzip<R: Read>(reader: R, sink: &mut Sink) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    while !reader.fill_buf()?.is_empty() && sink.budget.entry() {
        let mut member = flate2::bufread::GzDecoder::new(&mut reader);
        let header = member
            .header()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "invalid gzip header"))?;
        let name = header.comment().or(header.filename()).unwrap_or_default();
        let name = String::from_utf8_lossy(name).into_owned();
        let mtime = Some(i64::from(header.mtime())).filter(|&m| m != 0);
        sink.file(&name, None, mtime, &mut member);
        // Whatever was not written (refused or failed) must still be read to reach the next
        // member.
        io::copy(&mut member, &mut io::sink())?;
    }
    Ok(())
}

/// Places entries below the root, enforcing the module's rules.
struct Sink {
    root: PathBuf,
    /// Directories known to be real directories (created or checked by us). Our own operations
    /// never turn a directory into a symlink, so a checked directory stays safe.
    checked: HashSet<PathBuf>,
    /// Directory metadata to apply at the end.
    deferred: Vec<(PathBuf, u32, Option<i64>)>,
    summary: ExtractSummary,
    /// Regular files placed but not written yet, in archive order.
    pending: Vec<Pending>,
    /// Their paths.
    pending_paths: HashSet<PathBuf>,
    /// The directories those paths are in (below the root).
    pending_dirs: HashSet<PathBuf>,
    /// Bytes held by queued [`Data::Bytes`].
    pending_bytes: usize,
    /// The archive the workers read [`Data::ZipIndex`] entries from.
    zip: Option<zip::ZipArchive<SharedFile>>,
    /// What the archive may still write.
    budget: Arc<Budget>,
}

/// A regular file waiting for the parallel writers.
struct Pending {
    entry: String,
    path: PathBuf,
    mode: u32,
    mtime: Option<i64>,
    data: Data,
}

/// Where a queued file's contents come from.
enum Data {
    /// Already read.
    Bytes(Vec<u8>),
    /// The entry with this index of [`Sink::zip`].
    ZipIndex(usize),
}

/// A file read with positioned reads, so clones (one per worker) never disturb each other's
/// position.
#[derive(Clone, Debug)]
struct SharedFile {
    file: Arc<std::fs::File>,
    len: u64,
    position: u64,
}

impl SharedFile {
    fn new(file: std::fs::File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file: Arc::new(file),
            len,
            position: 0,
        })
    }
}

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the archive",
            )
        })?;
        Ok(self.position)
    }
}

impl Sink {
    fn new(root: PathBuf, limits: ExtractLimits) -> Self {
        let mut checked = HashSet::new();
        checked.insert(root.clone());
        Self {
            root,
            checked,
            deferred: Vec::new(),
            summary: ExtractSummary::default(),
            pending: Vec::new(),
            pending_paths: HashSet::new(),
            pending_dirs: HashSet::new(),
            pending_bytes: 0,
            zip: None,
            budget: Arc::new(Budget::new(limits)),
        }
    }

    /// Whether `entry` would land at or below a queued file, or on a directory a queued file
    /// goes into: then the queue must be written first, or this entry's checks would look at
    /// the disk before the queue changed it (or replace a directory being written into).
    fn touches_pending(&self, entry: &str) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let Ok(components) = entry_components(entry) else {
            return false;
        };
        let mut path = self.root.clone();
        let on_the_way = components.iter().any(|component| {
            path.push(component);
            self.pending_paths.contains(&path)
        });
        on_the_way || self.pending_dirs.contains(&path)
    }

    /// Queues a regular file for the parallel writers (after the checks [`Self::file`] makes).
    fn queue(&mut self, entry: &str, mode: Option<u32>, mtime: Option<i64>, data: Data) {
        if self.touches_pending(entry) {
            self.flush();
        }
        let Some((_, path)) = self.place(entry) else {
            return;
        };
        self.checked.remove(&path);
        if let Data::Bytes(bytes) = &data {
            self.pending_bytes += bytes.len();
        }
        let mut dir = path.parent();
        while let Some(parent) = dir.filter(|d| d.starts_with(&self.root) && *d != self.root) {
            if !self.pending_dirs.insert(parent.to_owned()) {
                break;
            }
            dir = parent.parent();
        }
        self.pending_paths.insert(path.clone());
        self.pending.push(Pending {
            entry: entry.to_owned(),
            path,
            mode: mode.map_or(DEFAULT_FILE_MODE, |m| m & 0o777),
            mtime,
            data,
        });
        if self.pending.len() >= QUEUED_FILES_MAX || self.pending_bytes >= QUEUED_BYTES_MAX {
            self.flush();
        }
    }

    /// A regular file whose contents only `reader` can give: small ones (by `size`, as the
    /// archive declares it) are read and queued, bigger ones streamed after the queue.
    fn file_buffered(
        &mut self,
        entry: &str,
        mode: Option<u32>,
        mtime: Option<i64>,
        size: u64,
        reader: &mut dyn Read,
    ) {
        if size > QUEUED_FILE_MAX {
            return self.file(entry, mode, mtime, reader);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // A lying size must not make this unbounded: past the limit, stream the rest.
        match reader.take(QUEUED_FILE_MAX + 1).read_to_end(&mut bytes) {
            Ok(_) if bytes.len() as u64 <= QUEUED_FILE_MAX => {
                self.queue(entry, mode, mtime, Data::Bytes(bytes));
            }
            Ok(_) => self.file(
                entry,
                mode,
                mtime,
                &mut io::Cursor::new(bytes).chain(reader),
            ),
            Err(error) => self.fail(entry, error),
        }
    }

    /// Writes every queued file (in parallel) and records the outcomes in archive order.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_paths.clear();
        self.pending_dirs.clear();
        self.pending_bytes = 0;
        let zip = self.zip.as_ref();
        let budget = self.budget.as_ref();
        let results: Vec<io::Result<u64>> = pending
            .par_iter()
            .map(|file| match &file.data {
                Data::Bytes(bytes) => write_file(
                    &file.path,
                    file.mode,
                    file.mtime,
                    &mut bytes.as_slice(),
                    budget,
                ),
                Data::ZipIndex(index) => {
                    let mut archive = zip
                        .ok_or_else(|| io::Error::other("no zip archive to read the entry from"))?
                        .clone();
                    let mut reader = archive.by_index(*index)?;
                    write_file(&file.path, file.mode, file.mtime, &mut reader, budget)
                }
            })
            .collect();
        for (file, result) in pending.iter().zip(results) {
            match result {
                Ok(bytes) => {
                    self.summary.files += 1;
                    self.summary.bytes += bytes;
                }
                Err(error) => self.record_failure(&file.entry, error),
            }
        }
    }

    fn reject(&mut self, entry: &str, reason: Rejection) {
        self.flush();
        self.warn(ExtractWarning::Rejected {
            entry: entry.to_owned(),
            reason,
        });
    }

    /// Records a warning; past [`MAX_WARNINGS`] only counts it (review L11: an archive of
    /// millions of refused entries must not grow the summary without bound).
    fn warn(&mut self, warning: ExtractWarning) {
        if self.summary.warnings.len() >= MAX_WARNINGS {
            self.summary.warnings_dropped += 1;
            return;
        }
        match &warning {
            ExtractWarning::Rejected { entry, reason } => {
                tracing::warn!(message = "archive entry refused", entry, %reason);
            }
            ExtractWarning::Failed { entry, error } => {
                tracing::warn!(message = "archive entry not extracted", entry, %error);
            }
        }
        self.summary.warnings.push(warning);
    }

    fn fail(&mut self, entry: &str, error: io::Error) {
        self.flush();
        self.record_failure(entry, error);
    }

    fn record_failure(&mut self, entry: &str, error: io::Error) {
        self.warn(ExtractWarning::Failed {
            entry: entry.to_owned(),
            error,
        });
    }

    /// Validates `entry` and creates its parent directories; returns the path to write.
    fn place(&mut self, entry: &str) -> Option<(Vec<String>, PathBuf)> {
        let components = match entry_components(entry) {
            Ok(components) => components,
            Err(reason) => {
                self.reject(entry, reason);
                return None;
            }
        };
        let mut path = self.root.clone();
        let (last, parents) = components.split_last()?;
        for (depth, parent) in parents.iter().enumerate() {
            path.push(parent);
            if let Err(outcome) = self.ensure_dir(&path) {
                let shown = components.get(..=depth).unwrap_or_default().join("/");
                match outcome {
                    DirOutcome::Symlink => {
                        self.reject(entry, Rejection::ThroughSymlink { parent: shown });
                    }
                    DirOutcome::NotDirectory => {
                        self.reject(entry, Rejection::ParentNotDirectory { parent: shown });
                    }
                    DirOutcome::Io(error) => self.fail(entry, error),
                }
                return None;
            }
        }
        path.push(last);
        Some((components, path))
    }

    fn ensure_dir(&mut self, path: &Path) -> Result<(), DirOutcome> {
        if self.checked.contains(path) {
            return Ok(());
        }
        match fs_err::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(DirOutcome::Symlink),
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(DirOutcome::NotDirectory),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                create_dir(path).map_err(DirOutcome::Io)?;
            }
            Err(error) => return Err(DirOutcome::Io(error)),
        }
        self.checked.insert(path.to_owned());
        Ok(())
    }

    /// Writes a regular file from `reader` (which may be left partly unread on failure).
    fn file(&mut self, entry: &str, mode: Option<u32>, mtime: Option<i64>, reader: &mut dyn Read) {
        self.flush();
        let Some((_, path)) = self.place(entry) else {
            return;
        };
        let mode = mode.map_or(DEFAULT_FILE_MODE, |m| m & 0o777);
        // The path may have been a checked (empty) directory that is about to be replaced.
        self.checked.remove(&path);
        let budget = Arc::clone(&self.budget);
        match write_file(&path, mode, mtime, reader, &budget) {
            Ok(bytes) => {
                self.summary.files += 1;
                self.summary.bytes += bytes;
            }
            Err(error) => self.fail(entry, error),
        }
    }

    fn dir(&mut self, entry: &str, mode: Option<u32>, mtime: Option<i64>) {
        if self.touches_pending(entry) {
            self.flush();
        }
        let Some((_, path)) = self.place(entry) else {
            return;
        };
        match fs_err::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                if let Err(error) = fs_err::remove_file(&path).and_then(|()| create_dir(&path)) {
                    return self.fail(entry, error);
                }
            }
            Err(_) => {
                if let Err(error) = create_dir(&path) {
                    return self.fail(entry, error);
                }
            }
        }
        self.checked.insert(path.clone());
        let mode = mode.map_or(DEFAULT_DIR_MODE, |m| m & 0o777);
        self.deferred.push((path, mode, mtime));
        self.summary.dirs += 1;
    }

    fn symlink(&mut self, entry: &str, target: &str, mtime: Option<i64>) {
        // A link may replace a directory that queued files are about to be written into.
        self.flush();
        let Some((components, path)) = self.place(entry) else {
            return;
        };
        let parents = components
            .split_last()
            .map_or(&[][..], |(_, parents)| parents);
        if let Err(reason) = check_link_target(&self.root, parents, target) {
            return self.reject(entry, reason);
        }
        self.checked.remove(&path);
        let result = remove_existing(&path)
            .and_then(|()| std::os::unix::fs::symlink(target, &path))
            .and_then(|()| set_symlink_mtime(&path, mtime));
        match result {
            Ok(()) => self.summary.symlinks += 1,
            Err(error) => self.fail(entry, error),
        }
    }

    /// Writes what is queued, applies directory metadata, and fails if a limit was reached.
    fn finish(mut self) -> Result<ExtractSummary, ExtractError> {
        self.flush();
        // Deepest first, so a read-only parent is locked only after its children are done.
        self.deferred.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode, mtime) in std::mem::take(&mut self.deferred) {
            let result =
                fs_err::set_permissions(&path, PermissionsExt::from_mode(mode)).and_then(|()| {
                    match mtime {
                        Some(m) => filetime::set_file_mtime(
                            &path,
                            filetime::FileTime::from_system_time(from_unix_seconds(m)),
                        ),
                        None => Ok(()),
                    }
                });
            if let Err(error) = result {
                let entry = path
                    .strip_prefix(&self.root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                self.fail(&entry, error);
            }
        }
        if self.budget.exceeded() {
            return Err(self.budget.error());
        }
        Ok(self.summary)
    }
}

enum DirOutcome {
    Symlink,
    NotDirectory,
    Io(io::Error),
}

/// Splits an entry name into normal components, refusing absolute names and `..`.
fn entry_components(name: &str) -> Result<Vec<String>, Rejection> {
    if name.starts_with(['/', '\\']) || has_drive_prefix(name) {
        return Err(Rejection::AbsolutePath);
    }
    if name.contains('\0') {
        return Err(Rejection::InvalidName);
    }
    let mut components = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Rejection::ParentComponent),
            other => components.push(other.to_owned()),
        }
    }
    if components.is_empty() {
        return Err(Rejection::InvalidName);
    }
    Ok(components)
}

fn has_drive_prefix(name: &str) -> bool {
    let mut chars = name.chars();
    matches!((chars.next(), chars.next()), (Some(letter), Some(':')) if letter.is_ascii_alphabetic())
}

/// Whether a link to `target` in the directory `parents` (relative to `root`) may be created:
/// relative targets are some `..` (not above `root`) then names only; absolute ones are `root`
/// then names only.
fn check_link_target(root: &Path, parents: &[String], target: &str) -> Result<(), Rejection> {
    let escapes = || Rejection::LinkEscapes {
        target: target.to_owned(),
    };
    if target.is_empty() || target.contains('\0') {
        return Err(escapes());
    }
    let target_path = Path::new(target);
    let (mut depth, rest) = if target_path.is_absolute() {
        let rest = target_path.strip_prefix(root).map_err(|_| escapes())?;
        (0, rest)
    } else {
        (parents.len(), target_path)
    };
    let mut climbing = !target_path.is_absolute();
    for component in rest.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if climbing => depth = depth.checked_sub(1).ok_or_else(escapes)?,
            Component::ParentDir if target_path.is_absolute() => return Err(escapes()),
            Component::ParentDir => {
                return Err(Rejection::LinkClimbsAfterName {
                    target: target.to_owned(),
                });
            }
            Component::Normal(_) => climbing = false,
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    Ok(())
}

fn create_dir(path: &Path) -> io::Result<()> {
    match fs_err::create_dir(path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // Lost a race or a duplicate entry: accept only a real directory.
            match fs_err::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => Ok(()),
                _ => Err(error),
            }
        }
        other => other,
    }
}

/// Removes a file or symlink at `path` (never following it); a missing path is fine.
fn remove_existing(path: &Path) -> io::Result<()> {
    match fs_err::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs_err::remove_dir(path),
        Ok(_) => fs_err::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn write_file(
    path: &Path,
    mode: u32,
    mtime: Option<i64>,
    reader: &mut dyn Read,
    budget: &Budget,
) -> io::Result<u64> {
    let reader = &mut Counted {
        inner: reader,
        budget,
    };
    remove_existing(path)?;
    let file = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
    let bytes = io::copy(reader, &mut writer)?;
    let file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.set_permissions(PermissionsExt::from_mode(mode))?;
    if let Some(mtime) = mtime {
        file.file().set_modified(from_unix_seconds(mtime))?;
    }
    Ok(bytes)
}

fn set_symlink_mtime(path: &Path, mtime: Option<i64>) -> io::Result<()> {
    let Some(mtime) = mtime else { return Ok(()) };
    let time = filetime::FileTime::from_system_time(from_unix_seconds(mtime));
    filetime::set_symlink_file_times(path, time, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(
            entry_components("a/./b/"),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            entry_components("/etc/passwd"),
            Err(Rejection::AbsolutePath)
        );
        assert_eq!(entry_components("C:/x"), Err(Rejection::AbsolutePath));
        assert_eq!(
            entry_components("a/../../b"),
            Err(Rejection::ParentComponent)
        );
        assert_eq!(entry_components("./"), Err(Rejection::InvalidName));
    }

    #[test]
    fn link_targets() {
        let root = Path::new("/p");
        let parents = ["a".to_owned(), "b".to_owned()];
        let ok = |parents: &[String], target| check_link_target(root, parents, target).is_ok();
        assert!(ok(&parents, "../../c"));
        assert!(ok(&parents, "./../.././c/d"));
        assert!(!ok(&parents, "../../../c"));
        assert!(!ok(&parents, "x/../../../../c"));
        // Review M3: `..` after a name could climb out of a link (`a -> .`, `esc -> a/..`).
        assert_eq!(
            check_link_target(root, &[], "x/../y"),
            Err(Rejection::LinkClimbsAfterName {
                target: "x/../y".to_owned()
            })
        );
        assert!(!ok(&parents, "../c/../d"));
        assert!(ok(&[], "."));
        assert!(ok(&[], "/p/y"));
        assert!(ok(&[], "/p"));
        assert!(!ok(&[], "/etc"));
        assert!(!ok(&[], "/p/../etc"));
        assert!(!ok(&[], "/pq"));
        assert!(!ok(&[], ""));
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"PK\x03\x04rest"), Some(ArchiveFormat::Zip));
        assert_eq!(
            detect_format(&[0x28, 0xB5, 0x2F, 0xFD]),
            Some(ArchiveFormat::TarZstd)
        );
        assert_eq!(detect_format(&[0x1F, 0x8B, 8]), Some(ArchiveFormat::Gzip));
        assert_eq!(detect_format(b"PK"), None);
    }
}
