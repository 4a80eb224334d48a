//! Cache and artifact archives: path selection, archive creation and safe extraction.
//!
//! This crate is the pure filesystem half of the `artifacts-uploader`, `cache-archiver`,
//! `cache-extractor` and `artifacts-downloader` helper commands. It never talks to the network;
//! the only process it may start is `git ls-files` when untracked files are asked for.
//!
//! The flow mirrors the official runner:
//!
//! 1. [`select`] turns a [`PathSpec`] (`paths`, `exclude`, `untracked`) into a sorted
//!    [`Selection`] of files, directories and symlinks inside the project directory. Patterns use
//!    GitLab's glob syntax (`*`, `**`, `?`, `[a-z]`, `{a,b}`); a matching directory brings
//!    everything below it; patterns escaping the project directory are refused with a
//!    [`Warning`], exactly like the official runner, instead of failing the job.
//! 2. [`create_archive`] writes a [`Selection`] as [`ArchiveFormat::Zip`],
//!    [`ArchiveFormat::Gzip`], [`ArchiveFormat::Raw`] or [`ArchiveFormat::TarZstd`] to any
//!    [`std::io::Write`], so an upload can stream it. Zip and gzip entries are compressed in
//!    parallel and written in order; tar+zstd uses zstd's own worker threads.
//! 3. [`extract_file`] / [`extract`] unpack zip, tar+zstd and gzip archives into the project
//!    directory and never write outside it (see [`extract`] for the exact rules).
//! 4. [`cache_key`] sanitizes cache keys and builds local cache paths.
//!
//! ```no_run
//! use std::path::Path;
//! use runnel_archive::{ArchiveFormat, ArchiveOptions, CompressionLevel, PathSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = PathSpec { paths: vec!["target/**/*.so".into()], ..PathSpec::default() };
//! let selection = runnel_archive::select(Path::new("/builds/group/project"), &spec)?;
//! let out = std::io::BufWriter::new(std::fs::File::create("/tmp/artifacts.zip")?);
//! let options = ArchiveOptions { format: ArchiveFormat::Zip, level: CompressionLevel::Fast };
//! let summary = runnel_archive::create_archive(&selection, &options, out)?;
//! # let _ = summary;
//! # Ok(())
//! # }
//! ```
//!
//! Not here: HTTP transfer, retries, artifact metadata, the `zipzstd` format (the coordinator
//! does not accept it for artifacts; caches use zip or tar+zstd) and the CLI flags themselves.

pub mod cache_key;
mod create;
mod extract;
mod format;
mod select;
mod time;
mod zipwrite;

pub use create::{ArchiveError, ArchiveOptions, ArchiveSummary, create_archive};
pub use extract::{
    ExtractError, ExtractLimits, ExtractSummary, ExtractWarning, MAX_ENTRIES, MAX_WARNINGS,
    Rejection, detect_format, extract, extract_file, extract_file_with, extract_with,
};
pub use format::{ArchiveFormat, CompressionLevel, ParseFormatError, ParseLevelError};
pub use select::{
    Entry, EntryKind, PathSpec, Selection, SelectionError, SelectionStats, Warning, select,
};
