//! Archive creation: writes a [`Selection`] as zip, gzip, raw or tar+zstd to any `Write`.
//!
//! Speed: zip and gzip entries are independent, so regular files up to [`PARALLEL_MAX_FILE`]
//! are compressed on the rayon pool in batches of at most [`BATCH_BYTES`] input bytes and then
//! appended in selection order (the output stays deterministic and memory stays bounded);
//! bigger files are streamed straight into the output. Tar+zstd is one stream, so it uses
//! zstd's worker threads instead. Writers never seek: zip entries use data descriptors, so the
//! output can be a pipe or an HTTP body.
//!
//! Metadata: zip entries carry unix permissions and an extended timestamp (whole seconds);
//! tar headers carry mode and mtime; gzip members carry the mtime. Ownership is not stored.
//! This module does not choose paths (see `select`) and does not upload.

use std::io::{self, BufReader, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use rayon::prelude::*;
use zip::write::{FileOptions, FullFileOptions, SimpleFileOptions, StreamWriter, ZipFileBuilder};
use zip::{CompressionMethod, PreparedZipFile, ZipWriter};

use crate::format::{ArchiveFormat, CompressionLevel};
use crate::select::{Entry, EntryKind, Selection};
use crate::time::zip_datetime;

/// Files up to this size are compressed in parallel in memory; larger ones are streamed.
const PARALLEL_MAX_FILE: u64 = 32 * 1024 * 1024;
/// Upper bound on the input bytes of one parallel batch (bounds memory use).
const BATCH_BYTES: u64 = 128 * 1024 * 1024;
/// Upper bound on the entries of one parallel batch.
const BATCH_ENTRIES: usize = 4096;
/// Read buffer for streaming file contents.
const READ_BUFFER: usize = 256 * 1024;

/// How to write an archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// The container format.
    pub format: ArchiveFormat,
    /// The compression level (ignored by [`ArchiveFormat::Raw`]).
    pub level: CompressionLevel,
}

/// What [`create_archive`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Entries written (files, directories and symlinks).
    pub entries: usize,
    /// Bytes of file content read.
    pub bytes_read: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
    /// Entries the format cannot hold (gzip keeps regular files only), project-relative.
    pub skipped: Vec<String>,
}

/// Writing an archive failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry could not be read or added.
    #[error("failed to add `{entry}` to the {format} archive")]
    Entry {
        /// Project-relative path of the entry.
        entry: String,
        /// The format being written.
        format: ArchiveFormat,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The output could not be written or finished.
    #[error("failed to write the {format} archive")]
    Output {
        /// The format being written.
        format: ArchiveFormat,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The raw format holds exactly one regular file.
    #[error(
        "the raw artifact format needs exactly one regular file, but {count} entries were selected"
    )]
    RawNeedsOneFile {
        /// How many entries the selection holds.
        count: usize,
    },
}

/// Writes `selection` to `out` in the requested format.
///
/// `out` is written sequentially and never sought, so it may be a pipe or a request body; wrap
/// unbuffered writers in a `BufWriter`. On error the output is incomplete and must be
/// discarded.
pub fn create_archive<W: Write>(
    selection: &Selection,
    options: &ArchiveOptions,
    out: W,
) -> Result<ArchiveSummary, ArchiveError> {
    let mut out = CountingWriter {
        inner: out,
        written: 0,
    };
    let mut summary = ArchiveSummary::default();
    let format = options.format;
    match format {
        ArchiveFormat::Zip => write_zip(selection, options.level, &mut out, &mut summary)?,
        ArchiveFormat::Gzip => write_gzip(selection, options.level, &mut out, &mut summary)?,
        ArchiveFormat::Raw => write_raw(selection, &mut out, &mut summary)?,
        ArchiveFormat::TarZstd => write_tar_zstd(selection, options.level, &mut out, &mut summary)?,
    }
    out.flush()
        .map_err(|source| ArchiveError::Output { format, source })?;
    summary.bytes_written = out.written;
    tracing::debug!(
        message = "archive written",
        %format,
        entries = summary.entries,
        bytes_read = summary.bytes_read,
        bytes_written = summary.bytes_written
    );
    Ok(summary)
}

/// Splits `entries` into consecutive batches whose small files total at most [`BATCH_BYTES`].
fn batches(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut len = 0;
        for entry in rest.iter().take(BATCH_ENTRIES) {
            let weight = match entry.kind {
                EntryKind::File { size } if size <= PARALLEL_MAX_FILE => size,
                _ => 0,
            };
            if len > 0 && bytes + weight > BATCH_BYTES {
                break;
            }
            bytes += weight;
            len += 1;
        }
        let (batch, tail) = rest.split_at(len);
        rest = tail;
        Some(batch)
    })
}

/// Prepares every entry of each batch on the rayon pool and hands the results to `emit` in
/// order.
fn parallel_in_order<T, E>(
    entries: &[Entry],
    prepare: impl Fn(&Entry) -> Result<T, E> + Sync,
    mut emit: impl FnMut(&Entry, T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    E: Send,
{
    for batch in batches(entries) {
        let prepared: Vec<Result<T, E>> = batch.par_iter().map(&prepare).collect();
        for (entry, item) in batch.iter().zip(prepared) {
            emit(entry, item?)?;
        }
    }
    Ok(())
}

fn is_small_file(entry: &Entry) -> bool {
    matches!(entry.kind, EntryKind::File { size } if size <= PARALLEL_MAX_FILE)
}

fn open(path: &Path) -> io::Result<BufReader<fs_err::File>> {
    Ok(BufReader::with_capacity(
        READ_BUFFER,
        fs_err::File::open(path)?,
    ))
}

fn read_link_text(path: &Path) -> io::Result<String> {
    let target = fs_err::read_link(path)?;
    target.into_os_string().into_string().map_err(|target| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "symlink target {} is not valid UTF-8",
                Path::new(&target).display()
            ),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// zip

/// A zip entry made ready on a worker thread.
enum ZipItem {
    Prepared(PreparedZipFile, u64),
    Dir,
    Symlink(String),
    Streamed,
}

fn write_zip<W: Write>(
    selection: &Selection,
    level: CompressionLevel,
    out: &mut W,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    const FORMAT: ArchiveFormat = ArchiveFormat::Zip;
    let mut zip = ZipWriter::new_stream(out);
    let entry_error = |entry: &Entry, source: io::Error| ArchiveError::Entry {
        entry: entry.path.clone(),
        format: FORMAT,
        source,
    };
    let prepare = |entry: &Entry| -> Result<ZipItem, ArchiveError> {
        let item = match entry.kind {
            EntryKind::Dir => Ok(ZipItem::Dir),
            EntryKind::Symlink => read_link_text(&selection.absolute(entry)).map(ZipItem::Symlink),
            EntryKind::File { .. } if is_small_file(entry) => {
                compress_zip_entry(&selection.absolute(entry), entry, level)
            }
            EntryKind::File { .. } => Ok(ZipItem::Streamed),
        };
        item.map_err(|source| entry_error(entry, source))
    };
    parallel_in_order(selection.entries(), prepare, |entry, item| {
        append_zip_item(&mut zip, selection, entry, item, level, summary)
            .map_err(|source| entry_error(entry, source))
    })?;
    zip.finish()
        .map(drop)
        .map_err(|source| ArchiveError::Output {
            format: FORMAT,
            source: source.into(),
        })
}

/// Appends one prepared item to the archive, in selection order.
fn append_zip_item<W: Write>(
    zip: &mut ZipWriter<StreamWriter<W>>,
    selection: &Selection,
    entry: &Entry,
    item: ZipItem,
    level: CompressionLevel,
    summary: &mut ArchiveSummary,
) -> io::Result<()> {
    let bytes_read = match item {
        ZipItem::Prepared(file, size) => {
            zip.add_prepared_file(file)?;
            size
        }
        ZipItem::Dir => {
            zip.add_directory(format!("{}/", entry.path), zip_options(entry, level)?)?;
            0
        }
        ZipItem::Symlink(target) => {
            zip.add_symlink(&entry.path, target, zip_options(entry, level)?)?;
            0
        }
        ZipItem::Streamed => {
            let mut file = open(&selection.absolute(entry))?;
            zip.start_file(entry.path.as_str(), zip_options(entry, level)?)?;
            io::copy(&mut file, zip)?
        }
    };
    summary.entries += 1;
    summary.bytes_read += bytes_read;
    Ok(())
}

fn zip_options(
    entry: &Entry,
    level: CompressionLevel,
) -> zip::result::ZipResult<FullFileOptions<'static, 'static>> {
    let (method, deflate_level) = match level.deflate() {
        Some(n) if matches!(entry.kind, EntryKind::File { .. }) => {
            (CompressionMethod::Deflated, Some(i64::from(n)))
        }
        _ => (CompressionMethod::Stored, None),
    };
    let large = matches!(entry.kind, EntryKind::File { size } if size >= zip::ZIP64_BYTES_THR);
    let options: SimpleFileOptions = FileOptions::default()
        .compression_method(method)
        .compression_level(deflate_level)
        .unix_permissions(entry.mode)
        .last_modified_time(zip_datetime(entry.mtime))
        .large_file(large);
    options.with_extended_timestamp(u32::try_from(entry.mtime).ok(), None, None)
}

fn compress_zip_entry(path: &Path, entry: &Entry, level: CompressionLevel) -> io::Result<ZipItem> {
    let options = zip_options(entry, level)?;
    let mut builder = ZipFileBuilder::new(&entry.path, options)?;
    let size = io::copy(&mut open(path)?, &mut builder)?;
    Ok(ZipItem::Prepared(builder.finish()?, size))
}

// ---------------------------------------------------------------------------------------------
// gzip

fn gzip_level(level: CompressionLevel) -> Compression {
    Compression::new(level.deflate().unwrap_or(1))
}

/// Writes one gzip member for the file at `path` into `out`; returns the bytes read.
fn gzip_member<W: Write>(
    path: &Path,
    entry: &Entry,
    level: CompressionLevel,
    out: W,
) -> io::Result<u64> {
    let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
    let mut encoder = GzBuilder::new()
        .filename(name.as_bytes())
        .comment(entry.path.as_bytes())
        .mtime(u32::try_from(entry.mtime).unwrap_or(0))
        .write(out, gzip_level(level));
    let size = io::copy(&mut open(path)?, &mut encoder)?;
    encoder.try_finish()?;
    Ok(size)
}

fn write_gzip<W: Write>(
    selection: &Selection,
    level: CompressionLevel,
    out: &mut W,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    const FORMAT: ArchiveFormat = ArchiveFormat::Gzip;
    let entry_error = |entry: &Entry, source| ArchiveError::Entry {
        entry: entry.path.clone(),
        format: FORMAT,
        source,
    };
    let prepare = |entry: &Entry| -> Result<Option<(Vec<u8>, u64)>, ArchiveError> {
        if !is_small_file(entry) {
            return Ok(None);
        }
        let mut member = Vec::new();
        let size = gzip_member(&selection.absolute(entry), entry, level, &mut member)
            .map_err(|source| entry_error(entry, source))?;
        Ok(Some((member, size)))
    };
    parallel_in_order(selection.entries(), prepare, |entry, member| {
        let result = match (member, entry.kind) {
            (Some((bytes, size)), _) => out.write_all(&bytes).map(|()| size),
            (None, EntryKind::File { .. }) => {
                gzip_member(&selection.absolute(entry), entry, level, &mut *out)
            }
            (None, EntryKind::Dir | EntryKind::Symlink) => {
                summary.skipped.push(entry.path.clone());
                return Ok(());
            }
        };
        let size = result.map_err(|source| entry_error(entry, source))?;
        summary.bytes_read += size;
        summary.entries += 1;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// raw

fn write_raw<W: Write>(
    selection: &Selection,
    out: &mut W,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    let [entry] = selection.entries() else {
        return Err(ArchiveError::RawNeedsOneFile {
            count: selection.entries().len(),
        });
    };
    if !matches!(entry.kind, EntryKind::File { .. }) {
        return Err(ArchiveError::RawNeedsOneFile { count: 0 });
    }
    let size = open(&selection.absolute(entry))
        .and_then(|mut file| io::copy(&mut file, out))
        .map_err(|source| ArchiveError::Entry {
            entry: entry.path.clone(),
            format: ArchiveFormat::Raw,
            source,
        })?;
    summary.entries = 1;
    summary.bytes_read = size;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tar + zstd

fn write_tar_zstd<W: Write>(
    selection: &Selection,
    level: CompressionLevel,
    out: &mut W,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    const FORMAT: ArchiveFormat = ArchiveFormat::TarZstd;
    let output_error = |source| ArchiveError::Output {
        format: FORMAT,
        source,
    };
    let mut encoder = zstd::Encoder::new(out, level.zstd()).map_err(output_error)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers > 1 {
        encoder
            .multithread(u32::try_from(workers).unwrap_or(1))
            .map_err(output_error)?;
    }
    encoder.include_checksum(true).map_err(output_error)?;
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    for entry in selection.entries() {
        tar.append_path_with_name(selection.absolute(entry), &entry.path)
            .map_err(|source| ArchiveError::Entry {
                entry: entry.path.clone(),
                format: FORMAT,
                source,
            })?;
        summary.entries += 1;
        if let EntryKind::File { size } = entry.kind {
            summary.bytes_read += size;
        }
    }
    let encoder = tar.into_inner().map_err(output_error)?;
    encoder.finish().map(drop).map_err(output_error)
}

/// Counts the bytes that pass through to the inner writer.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{PathSpec, select};

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.to_owned(),
            kind: EntryKind::File { size },
            mode: 0o644,
            mtime: 0,
        }
    }

    #[test]
    fn batches_keep_order_and_bound_memory() {
        let big = PARALLEL_MAX_FILE;
        let entries = vec![
            file("a", big),
            file("b", big),
            file("c", big),
            file("d", big),
            file("e", big),
            file("huge", u64::MAX),
            file("f", 1),
        ];
        let sizes: Vec<Vec<&str>> = batches(&entries)
            .map(|batch| batch.iter().map(|e| e.path.as_str()).collect())
            .collect();
        assert_eq!(sizes, [vec!["a", "b", "c", "d"], vec!["e", "huge", "f"]]);
    }

    #[test]
    fn large_files_are_streamed_into_the_zip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let size = PARALLEL_MAX_FILE + 1;
        let big = fs_err::File::create(dir.path().join("big.bin")).expect("create");
        big.set_len(size).expect("sparse file");
        fs_err::write(dir.path().join("small.txt"), "small").expect("write");
        let spec = PathSpec {
            paths: vec![".".into()],
            ..PathSpec::default()
        };
        let selection = select(dir.path(), &spec).expect("select");
        let mut out = Vec::new();
        let options = ArchiveOptions {
            format: ArchiveFormat::Zip,
            level: CompressionLevel::Fastest,
        };
        let summary = create_archive(&selection, &options, &mut out).expect("create");
        assert_eq!(summary.bytes_read, size + 5);

        let mut zip = zip::ZipArchive::new(io::Cursor::new(out)).expect("valid zip");
        let mut entry = zip.by_name("big.bin").expect("big entry");
        assert_eq!(entry.size(), size);
        let copied = io::copy(&mut entry, &mut io::sink()).expect("crc checks out");
        assert_eq!(copied, size);
    }
}
