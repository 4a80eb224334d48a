//! Archive creation: writes a [`Selection`] as zip, gzip, raw or tar+zstd to any `Write`.
//!
//! Speed: zip and gzip entries are independent, so regular files up to [`PARALLEL_MAX_FILE`]
//! are compressed on the rayon pool in batches of at most [`BATCH_BYTES`] input bytes and then
//! appended in selection order (the output stays deterministic and memory stays bounded).
//! Tar+zstd is one stream, so it uses zstd's worker threads instead. Writers never seek, so the
//! output can be a pipe or an HTTP body.
//!
//! Zip specifics (the `zip` crate cannot append data compressed elsewhere, so the container is
//! written by [`crate::zipwrite`]):
//! - a small file is read whole and deflated in one call by libdeflate (`compress_small_file`),
//!   with one compressor per rayon thread and level, reused across files; its CRC and sizes are
//!   known before its header is written;
//! - a bigger file is streamed in [`CHUNK`]-sized pieces, two per worker at a time, each
//!   deflated by its own zlib stream ending in a sync flush; the pieces form one deflate stream
//!   closed by an empty final block, and the entry ends with a data descriptor
//!   (`stream_big_file`);
//! - data that looks incompressible (`looks_incompressible`: samples deflated at the fastest
//!   level do not shrink) is stored, as a stored entry or as stored deflate blocks, instead of
//!   spending deflate's time to the same result;
//! - `CACHE_COMPRESSION_LEVEL` keeps its meaning: `fastest` stores, the others map to
//!   libdeflate levels 1, 5, 9 and 12 (libdeflate's 5 matches zlib's 5 in size) and, for the
//!   chunks of big files, zlib levels 1, 5, 7 and 9.
//!
//! Metadata: zip entries carry unix permissions and an extended timestamp (whole seconds);
//! tar headers carry mode and mtime; gzip members carry the mtime. Ownership is not stored.
//! This module does not choose paths (see `select`) and does not upload.

use std::cell::RefCell;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use flate2::{Compress, Compression, FlushCompress, GzBuilder};
use rayon::prelude::*;

use crate::format::{ArchiveFormat, CompressionLevel};
use crate::select::{Entry, EntryKind, Selection};
use crate::zipwrite::{self, Kind, Method, Sizes, ZipStream};

/// Files up to this size are compressed in parallel in memory; larger ones are streamed.
const PARALLEL_MAX_FILE: u64 = 32 * 1024 * 1024;
/// Upper bound on the input bytes of one parallel batch (bounds memory use: two batches are
/// in flight, one being written while the next is compressed).
const BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Upper bound on the entries of one parallel batch.
const BATCH_ENTRIES: usize = 4096;
/// Read buffer for streaming file contents.
const READ_BUFFER: usize = 256 * 1024;
/// Files at least this big are written with zip64 sizes (leaves room for deflate's worst-case
/// growth below the 4 GiB limit of the 32-bit fields).
const ZIP64_THRESHOLD: u64 = 0xFFFF_FFFF - 64 * 1024 * 1024;
/// Input bytes of one piece of a big file compressed on its own (see [`stream_big_file`]).
const CHUNK: usize = 4 * 1024 * 1024;
/// A final, empty fixed-Huffman deflate block: ends a stream of sync-flushed chunks.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

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
/// order, on the calling thread. While one batch is emitted the next one is prepared, so the
/// workers keep compressing while the output is written (at most two batches are in memory).
fn parallel_in_order<T, E>(
    entries: &[Entry],
    prepare: impl Fn(&Entry) -> Result<T, E> + Sync,
    mut emit: impl FnMut(&Entry, T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    E: Send,
{
    let prepare_batch =
        |batch: &[Entry]| -> Vec<Result<T, E>> { batch.par_iter().map(&prepare).collect() };
    let mut batches = batches(entries);
    let Some(first) = batches.next() else {
        return Ok(());
    };
    let mut current = (first, prepare_batch(first));
    loop {
        let next = batches.next();
        let mut next_prepared = None;
        let emitted = rayon::in_place_scope(|scope| {
            if let Some(batch) = next {
                let slot = &mut next_prepared;
                let prepare_batch = &prepare_batch;
                scope.spawn(move |_| *slot = Some(prepare_batch(batch)));
            }
            let (batch, prepared) = current;
            batch
                .iter()
                .zip(prepared)
                .try_for_each(|(entry, item)| emit(entry, item?))
        });
        emitted?;
        match (next, next_prepared) {
            (Some(batch), Some(prepared)) => current = (batch, prepared),
            _ => return Ok(()),
        }
    }
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
    /// A regular file, complete in memory: its data (deflated or stored) and CRC and sizes.
    File(Method, Sizes, Vec<u8>),
    Dir,
    Symlink(String),
    /// A big file, compressed in chunks while it is appended.
    Streamed,
}

fn write_zip<W: Write>(
    selection: &Selection,
    level: CompressionLevel,
    out: &mut W,
    summary: &mut ArchiveSummary,
) -> Result<(), ArchiveError> {
    const FORMAT: ArchiveFormat = ArchiveFormat::Zip;
    let mut zip = ZipStream::new(out);
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
                compress_small_file(&selection.absolute(entry), level)
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
            source,
        })
}

/// Appends one prepared item to the archive, in selection order.
fn append_zip_item<W: Write>(
    zip: &mut ZipStream<W>,
    selection: &Selection,
    entry: &Entry,
    item: ZipItem,
    level: CompressionLevel,
    summary: &mut ArchiveSummary,
) -> io::Result<()> {
    let meta = |name, kind| zipwrite::Meta {
        name,
        kind,
        mode: entry.mode,
        mtime: entry.mtime,
    };
    let bytes_read = match item {
        ZipItem::File(method, sizes, data) => {
            zip.add(&meta(&entry.path, Kind::File), method, sizes, &data)?;
            sizes.uncompressed
        }
        ZipItem::Dir => {
            let name = format!("{}/", entry.path);
            zip.add(
                &meta(&name, Kind::Dir),
                Method::Stored,
                Sizes::default(),
                &[],
            )?;
            0
        }
        ZipItem::Symlink(target) => {
            let sizes = Sizes {
                crc: crc32fast::hash(target.as_bytes()),
                uncompressed: target.len() as u64,
                compressed: target.len() as u64,
            };
            zip.add(
                &meta(&entry.path, Kind::Symlink),
                Method::Stored,
                sizes,
                target.as_bytes(),
            )?;
            0
        }
        ZipItem::Streamed => {
            let file = fs_err::File::open(selection.absolute(entry))?;
            let size = match entry.kind {
                EntryKind::File { size } => size,
                EntryKind::Dir | EntryKind::Symlink => 0,
            };
            stream_big_file(zip, &meta(&entry.path, Kind::File), file, size, level)?
        }
    };
    summary.entries += 1;
    summary.bytes_read += bytes_read;
    Ok(())
}

/// The libdeflate level for a zip entry (`None`: store). libdeflate's level 5 compresses as
/// well as zlib's level 5 (the `Default` before libdeflate) at about 1.5-2x the speed.
fn libdeflate_level(level: CompressionLevel) -> Option<i32> {
    match level {
        CompressionLevel::Fastest => None,
        CompressionLevel::Fast => Some(1),
        CompressionLevel::Default => Some(5),
        CompressionLevel::Slow => Some(9),
        CompressionLevel::Slowest => Some(12),
    }
}

thread_local! {
    /// libdeflate compressors of this rayon thread, one per level used: making one allocates
    /// and clears several hundred KiB, far more work than a small file's deflate.
    static COMPRESSORS: RefCell<Vec<(i32, libdeflater::Compressor)>> =
        const { RefCell::new(Vec::new()) };
}

/// Runs `work` with this thread's libdeflate compressor for `level`.
fn with_compressor<T>(
    level: i32,
    work: impl FnOnce(&mut libdeflater::Compressor) -> T,
) -> io::Result<T> {
    COMPRESSORS.with_borrow_mut(|compressors| {
        let index = match compressors
            .iter()
            .position(|(made_for, _)| *made_for == level)
        {
            Some(index) => index,
            None => {
                let lvl = libdeflater::CompressionLvl::new(level).map_err(|error| {
                    io::Error::other(format!("invalid libdeflate level {level}: {error:?}"))
                })?;
                compressors.push((level, libdeflater::Compressor::new(lvl)));
                compressors.len() - 1
            }
        };
        let (_, compressor) = compressors
            .get_mut(index)
            .ok_or_else(|| io::Error::other("libdeflate compressor vanished"))?;
        Ok(work(compressor))
    })
}

thread_local! {
    /// Deflate output buffer of this rayon thread, reused across small files.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A scratch buffer bigger than this is freed after use (rare big files do not pin memory).
const SCRATCH_KEEP: usize = 1024 * 1024;

/// Data at least this long is probed before it is deflated.
const PROBE_MIN: usize = 256 * 1024;
/// Bytes of one probe sample.
const PROBE_SAMPLE: usize = 16 * 1024;
/// Samples taken, evenly spread over the data.
const PROBE_SAMPLES: usize = 8;

/// Whether `data` looks incompressible (random or already compressed), judged by deflating
/// [`PROBE_SAMPLES`] samples spread over it at libdeflate's fastest level: if they do not
/// shrink by at least 1/32, deflate would spend its time emitting stored blocks anyway
/// (at around 100 MB/s per core), so the caller stores the data instead. Deterministic; the
/// probe deflates at most 128 KiB at the fastest level (1/32 of a big file's [`CHUNK`]).
fn looks_incompressible(data: &[u8]) -> io::Result<bool> {
    if data.len() < PROBE_MIN {
        return Ok(false);
    }
    let stride = data.len() / PROBE_SAMPLES;
    with_compressor(1, |compressor| {
        let mut out = vec![0; PROBE_SAMPLE];
        let (mut sampled, mut compressed) = (0, 0);
        for sample in (0..PROBE_SAMPLES).filter_map(|i| data.get(i * stride..)) {
            let sample = sample.get(..PROBE_SAMPLE).unwrap_or(sample);
            sampled += sample.len();
            // Output that does not fit in the sample's size did not shrink.
            compressed += compressor
                .deflate_compress(sample, &mut out)
                .unwrap_or(sample.len());
        }
        compressed >= sampled - sampled / 32
    })
}

/// Reads a small file whole and deflates it in one call; data that does not shrink is stored.
fn compress_small_file(path: &Path, level: CompressionLevel) -> io::Result<ZipItem> {
    let data = fs_err::read(path)?;
    let crc = crc32fast::hash(&data);
    let uncompressed = data.len() as u64;
    let stored = |data: Vec<u8>| {
        let sizes = Sizes {
            crc,
            uncompressed,
            compressed: uncompressed,
        };
        Ok(ZipItem::File(Method::Stored, sizes, data))
    };
    let Some(level) = libdeflate_level(level) else {
        return stored(data);
    };
    if looks_incompressible(&data)? {
        return stored(data);
    }
    let deflated = SCRATCH.with_borrow_mut(|scratch| -> io::Result<Option<Vec<u8>>> {
        // Room for exactly the input: output that would not fit is not worth deflating.
        scratch.resize(data.len(), 0);
        let written = with_compressor(level, |compressor| {
            compressor.deflate_compress(&data, scratch).ok()
        })?;
        // Copied out at its exact size: a batch holds many of these until they are written.
        let deflated = written
            .filter(|&written| written < data.len())
            .and_then(|written| scratch.get(..written))
            .map(<[u8]>::to_vec);
        if scratch.capacity() > SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        Ok(deflated)
    })?;
    match deflated {
        Some(deflated) => {
            let sizes = Sizes {
                crc,
                uncompressed,
                compressed: deflated.len() as u64,
            };
            Ok(ZipItem::File(Method::Deflated, sizes, deflated))
        }
        None => stored(data),
    }
}

/// Appends a big file as one deflate stream made of [`CHUNK`]-sized pieces compressed in
/// parallel (pigz-style); returns the bytes read.
///
/// Each chunk is deflated by its own raw zlib stream ending in a sync flush (byte aligned, no
/// final block) and none refers back into the previous chunk, so the chunks concatenate into a
/// valid stream; an empty final block (`03 00`) ends it. Losing the 32 KiB history at each
/// chunk boundary costs well under 1 % of ratio at this chunk size. The CRCs of the chunks are
/// combined. At most [`chunks_in_flight`] chunks are held in memory.
fn stream_big_file<W: Write>(
    zip: &mut ZipStream<W>,
    meta: &zipwrite::Meta<'_>,
    mut file: fs_err::File,
    expected_size: u64,
    level: CompressionLevel,
) -> io::Result<u64> {
    let deflate_level = level.deflate();
    let method = if deflate_level.is_some() {
        Method::Deflated
    } else {
        Method::Stored
    };
    let large = expected_size >= ZIP64_THRESHOLD;
    let streamed = zip.start_streamed(meta, method, large)?;
    let mut crc = crc32fast::Hasher::new();
    let mut sizes = Sizes::default();
    let in_flight = chunks_in_flight();
    loop {
        let mut chunks = Vec::with_capacity(in_flight);
        let mut eof = false;
        while chunks.len() < in_flight {
            let chunk = read_chunk(&mut file)?;
            eof = chunk.len() < CHUNK;
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
            if eof {
                break;
            }
        }
        let compressed: Vec<io::Result<(u32, u64, Vec<u8>)>> = chunks
            .into_par_iter()
            .map(|chunk| {
                let chunk_crc = crc32fast::hash(&chunk);
                let len = chunk.len() as u64;
                let data = match deflate_level {
                    Some(_) if looks_incompressible(&chunk)? => stored_blocks(&chunk),
                    Some(level) => deflate_chunk(&chunk, level)?,
                    None => chunk,
                };
                Ok((chunk_crc, len, data))
            })
            .collect();
        for result in compressed {
            let (chunk_crc, len, data) = result?;
            crc.combine(&crc32fast::Hasher::new_with_initial_len(chunk_crc, len));
            zip.write_data(&data)?;
            sizes.uncompressed += len;
            sizes.compressed += data.len() as u64;
        }
        if eof {
            break;
        }
    }
    if deflate_level.is_some() {
        zip.write_data(&FINAL_EMPTY_BLOCK)?;
        sizes.compressed += FINAL_EMPTY_BLOCK.len() as u64;
    }
    sizes.crc = crc.finalize();
    zip.finish_streamed(streamed, sizes)?;
    Ok(sizes.uncompressed)
}

/// Chunks of a big file read and compressed at a time: two per worker keeps every core busy
/// while bounding memory (input and output of each chunk).
fn chunks_in_flight() -> usize {
    rayon::current_num_threads().max(1) * 2
}

/// Reads up to [`CHUNK`] bytes; a shorter chunk means the end of the file.
fn read_chunk(file: &mut fs_err::File) -> io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(CHUNK);
    file.take(CHUNK as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// `input` as non-final stored deflate blocks (each at most 65535 bytes). A chunk starts byte
/// aligned (after the previous chunk's sync flush) and stored blocks end byte aligned.
fn stored_blocks(input: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = 0xFFFF;
    let mut out = Vec::with_capacity(input.len() + input.len() / MAX_BLOCK * 5 + 5);
    for block in input.chunks(MAX_BLOCK) {
        // The length fits: blocks are at most 65535 bytes.
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(0); // BFINAL 0, BTYPE 00 (stored), padding to the byte boundary
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}

/// Raw-deflates `input` with a fresh zlib stream and ends it with a sync flush.
fn deflate_chunk(input: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(Compression::new(level), false);
    // Stored blocks cost 5 bytes per 64 KiB at worst; the sync flush adds a few more.
    let mut out = Vec::with_capacity(input.len() + input.len() / 1024 + 64);
    loop {
        let consumed = usize::try_from(compress.total_in())
            .map_err(|_| io::Error::other("deflate consumed more input than it was given"))?;
        let rest = input.get(consumed..).unwrap_or_default();
        let before = (compress.total_in(), compress.total_out());
        compress
            .compress_vec(rest, &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let full = out.len() == out.capacity();
        if compress.total_in() == input.len() as u64 && !full {
            return Ok(out);
        }
        if !full && before == (compress.total_in(), compress.total_out()) {
            return Err(io::Error::other("deflate made no progress"));
        }
        out.reserve(64 * 1024);
    }
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
        assert_eq!(
            sizes,
            [vec!["a", "b"], vec!["c", "d"], vec!["e", "huge", "f"]]
        );
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

    /// Deterministic bytes that do not compress.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// Text-like bytes that compress well.
    fn text(len: usize) -> Vec<u8> {
        let words = [
            "fn ", "let ", "match ", "Some(x) ", "=> ", "{\n", "}\n", "value ",
        ];
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0_usize;
        while out.len() < len {
            out.extend_from_slice(words[(i * 7 + i / 3) % words.len()].as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    /// Runs `unzip -t` (Info-ZIP) on `archive` and fails unless it reports no errors.
    fn unzip_test(archive: &Path) {
        let output = std::process::Command::new("unzip")
            .arg("-t")
            .arg(archive)
            .output()
            .expect("run `unzip -t` (Info-ZIP unzip must be installed)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("No errors detected"),
            "unzip -t failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn big_files_are_deflated_in_chunks_into_one_valid_stream() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Three and a half chunks: compressible, incompressible, compressible, a short tail.
        let mut contents = text(CHUNK);
        contents.extend(noise(CHUNK, 7));
        contents.extend(text(CHUNK + CHUNK / 2));
        let path = dir.path().join("big.bin");
        fs_err::write(&path, &contents).expect("write");
        let meta = zipwrite::Meta {
            name: "big.bin",
            kind: Kind::File,
            mode: 0o640,
            mtime: 1_700_000_000,
        };
        let mut zip = ZipStream::new(Vec::new());
        let file = fs_err::File::open(&path).expect("open");
        let size = contents.len() as u64;
        let read = stream_big_file(&mut zip, &meta, file, size, CompressionLevel::Default)
            .expect("stream");
        assert_eq!(read, size);
        let out = zip.finish().expect("finish");
        assert!(out.len() < contents.len() * 2 / 3, "{} bytes", out.len());
        let archive_path = dir.path().join("big.zip");
        fs_err::write(&archive_path, &out).expect("write zip");
        unzip_test(&archive_path);

        let mut zip = zip::ZipArchive::new(io::Cursor::new(out)).expect("valid zip");
        let mut entry = zip.by_name("big.bin").expect("entry");
        assert_eq!(entry.compression(), zip::CompressionMethod::Deflated);
        assert_eq!(entry.size(), size);
        assert_eq!(entry.unix_mode(), Some(0o100_640));
        let mut back = Vec::new();
        entry
            .read_to_end(&mut back)
            .expect("inflate, crc checks out");
        assert!(back == contents, "contents differ");
    }

    #[test]
    fn a_generated_tree_round_trips_and_passes_unzip_test() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("tree");
        let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..40_usize {
            let (name, contents) = match i % 4 {
                0 => (format!("text/{i}.txt"), text(i * 997)),
                1 => (format!("noise/{i}.bin"), noise(i * 1_531, i as u64)),
                2 => (format!("empty/{i}"), Vec::new()),
                _ => (format!("deep/a/b/{i}.dat"), text(1)),
            };
            let path = root.join(&name);
            fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs_err::write(&path, &contents).expect("write");
            expected.push((format!("tree/{name}"), contents));
        }
        let random = noise(PROBE_MIN * 2, 99);
        fs_err::write(root.join("random.bin"), &random).expect("write");
        expected.push(("tree/random.bin".to_owned(), random));
        fs_err::create_dir_all(root.join("empty-dir")).expect("mkdir");
        std::os::unix::fs::symlink("text/0.txt", root.join("link")).expect("symlink");
        let spec = PathSpec {
            paths: vec!["tree".into()],
            ..PathSpec::default()
        };
        let selection = select(dir.path(), &spec).expect("select");
        for level in [CompressionLevel::Fastest, CompressionLevel::Default] {
            let mut out = Vec::new();
            let options = ArchiveOptions {
                format: ArchiveFormat::Zip,
                level,
            };
            let summary = create_archive(&selection, &options, &mut out).expect("create");
            assert_eq!(summary.entries, selection.entries().len());
            assert_eq!(summary.bytes_written, out.len() as u64);
            let archive_path = dir.path().join("tree.zip");
            fs_err::write(&archive_path, &out).expect("write zip");
            unzip_test(&archive_path);

            let mut zip = zip::ZipArchive::new(io::Cursor::new(out)).expect("valid zip");
            assert_eq!(zip.len(), selection.entries().len());
            for (name, contents) in &expected {
                let mut entry = zip.by_name(name).expect("entry");
                let mut back = Vec::new();
                entry.read_to_end(&mut back).expect("read, crc checks out");
                assert!(&back == contents, "{name} differs at {level:?}");
            }
            let random = zip.by_name("tree/random.bin").expect("random entry");
            assert_eq!(random.compression(), zip::CompressionMethod::Stored);
            drop(random);
            let text = zip.by_name("tree/text/36.txt").expect("text entry");
            let method = match level {
                CompressionLevel::Fastest => zip::CompressionMethod::Stored,
                _ => zip::CompressionMethod::Deflated,
            };
            assert_eq!(text.compression(), method);
            drop(text);
            let dir_entry = zip.by_name("tree/empty-dir/").expect("dir entry");
            assert!(dir_entry.is_dir());
            drop(dir_entry);
            let mut link = zip.by_name("tree/link").expect("symlink entry");
            assert!(link.is_symlink());
            let mut target = String::new();
            link.read_to_string(&mut target).expect("target");
            assert_eq!(target, "text/0.txt");
        }
    }
}
