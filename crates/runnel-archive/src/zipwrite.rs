//! A minimal, streaming zip writer for entries whose data is already compressed.
//!
//! The `zip` crate compresses entries itself and has no public way to append data that was
//! deflated elsewhere, so archive creation writes the container here: local file headers, entry
//! data, data descriptors where the sizes are not known up front, the central directory and the
//! end-of-central-directory record (with the zip64 forms when the archive outgrows the 32-bit
//! fields). The output is written strictly in order and never sought, so it can be a pipe.
//!
//! What every entry carries (the same as the `zip` crate wrote before): "version made by" Unix
//! 2.0 (4.5 when the entry needs zip64), the unix type and permission bits (`mode & 0o777`) in
//! the high 16 bits of the external attributes, the MS-DOS date and time, and an extended
//! timestamp extra field (0x5455, modification time in whole seconds) in the local and the
//! central header when the time fits in 32 bits. Names are UTF-8 (general purpose flag bit 11
//! is set when a name is not ASCII).
//!
//! Entries whose data is known before the header is written (in-memory files, directories,
//! symlinks) carry their CRC and sizes in the local header. Streamed entries set flag bit 3 and
//! follow their data with a data descriptor (with 64-bit sizes when the local header carries a
//! zip64 extra field).

use std::io::{self, Write};

use crate::time::zip_datetime;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIRECTORY: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;

const ZIP64_EXTRA: u16 = 0x0001;
const EXTENDED_TIMESTAMP_EXTRA: u16 = 0x5455;

/// Host system "Unix" in the high byte of "version made by".
const MADE_BY_UNIX: u16 = 3 << 8;
const VERSION_DEFAULT: u16 = 20;
const VERSION_ZIP64: u16 = 45;

const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
const FLAG_UTF8: u16 = 1 << 11;

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Sizes and offsets at or above this need the zip64 forms.
const U32_LIMIT: u64 = 0xFFFF_FFFF;

/// How an entry's data is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// Stored as is.
    Stored,
    /// Raw deflate.
    Deflated,
}

impl Method {
    fn code(self) -> u16 {
        match self {
            Self::Stored => 0,
            Self::Deflated => 8,
        }
    }
}

/// What kind of entry a header describes (sets the unix file type bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory (its name ends in `/`).
    Dir,
    /// A symbolic link (its data is the target).
    Symlink,
}

/// Name and metadata of one entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta<'a> {
    /// The name inside the archive.
    pub name: &'a str,
    /// What kind of entry this is.
    pub kind: Kind,
    /// Unix mode; only the permission bits (`0o777`) are kept.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// CRC and sizes of an entry's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// CRC-32 of the uncompressed data.
    pub crc: u32,
    /// Bytes of uncompressed data.
    pub uncompressed: u64,
    /// Bytes of (compressed) data in the archive.
    pub compressed: u64,
}

/// A streamed entry between [`ZipStream::start_streamed`] and [`ZipStream::finish_streamed`].
#[derive(Debug)]
pub(crate) struct Streamed {
    record: CentralRecord,
}

/// What the central directory needs to know about one entry.
#[derive(Debug)]
struct CentralRecord {
    name: Box<str>,
    flags: u16,
    method: Method,
    dos_time: u16,
    dos_date: u16,
    mtime: Option<u32>,
    external: u32,
    offset: u64,
    sizes: Sizes,
    /// The local header carries a zip64 extra field (so the data descriptor has 64-bit sizes).
    local_zip64: bool,
}

/// Writes a zip archive to `out`, entry by entry, without seeking.
pub(crate) struct ZipStream<W> {
    out: W,
    offset: u64,
    central: Vec<u8>,
    entries: u64,
}

impl<W: Write> ZipStream<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            central: Vec::new(),
            entries: 0,
        }
    }

    /// Adds an entry whose (possibly compressed) data is complete in memory.
    pub(crate) fn add(
        &mut self,
        meta: &Meta<'_>,
        method: Method,
        sizes: Sizes,
        data: &[u8],
    ) -> io::Result<()> {
        if data.len() as u64 != sizes.compressed {
            return Err(io::Error::other(format!(
                "zip entry data is {} bytes, but its header says {}",
                data.len(),
                sizes.compressed
            )));
        }
        let local_zip64 = sizes.uncompressed >= U32_LIMIT || sizes.compressed >= U32_LIMIT;
        let record = self.record(meta, method, sizes, 0, local_zip64);
        self.write_local_header(&record)?;
        self.write(data)?;
        self.push_central(&record);
        Ok(())
    }

    /// Writes the local header of an entry whose data follows through [`Self::write_data`];
    /// `large` must be set when the data may reach 4 GiB (the entry then uses zip64).
    pub(crate) fn start_streamed(
        &mut self,
        meta: &Meta<'_>,
        method: Method,
        large: bool,
    ) -> io::Result<Streamed> {
        let record = self.record(meta, method, Sizes::default(), FLAG_DATA_DESCRIPTOR, large);
        self.write_local_header(&record)?;
        Ok(Streamed { record })
    }

    /// Writes (compressed) entry data of a streamed entry.
    pub(crate) fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data)
    }

    /// Ends a streamed entry with its data descriptor.
    pub(crate) fn finish_streamed(&mut self, streamed: Streamed, sizes: Sizes) -> io::Result<()> {
        let mut record = streamed.record;
        let written = self.offset - record.offset - local_header_len(&record);
        if written != sizes.compressed {
            return Err(io::Error::other(format!(
                "zip entry data is {written} bytes, but its descriptor says {}",
                sizes.compressed
            )));
        }
        if !record.local_zip64 && (sizes.uncompressed >= U32_LIMIT || sizes.compressed >= U32_LIMIT)
        {
            return Err(io::Error::other(
                "zip entry grew past 4 GiB without a zip64 header",
            ));
        }
        record.sizes = sizes;
        let mut buf = Vec::with_capacity(24);
        put32(&mut buf, DATA_DESCRIPTOR);
        put32(&mut buf, sizes.crc);
        if record.local_zip64 {
            put64(&mut buf, sizes.compressed);
            put64(&mut buf, sizes.uncompressed);
        } else {
            put32(&mut buf, low32(sizes.compressed));
            put32(&mut buf, low32(sizes.uncompressed));
        }
        self.write(&buf)?;
        self.push_central(&record);
        Ok(())
    }

    /// Writes the central directory and the end records; returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let central_offset = self.offset;
        let central = std::mem::take(&mut self.central);
        self.write(&central)?;
        let central_len = central.len() as u64;
        let entries = self.entries;
        let mut buf = Vec::with_capacity(98);
        let zip64 = entries >= 0xFFFF || central_len >= U32_LIMIT || central_offset >= U32_LIMIT;
        if zip64 {
            let record_offset = self.offset;
            put32(&mut buf, ZIP64_END_OF_CENTRAL_DIRECTORY);
            put64(&mut buf, 44); // size of the rest of this record
            put16(&mut buf, MADE_BY_UNIX | VERSION_ZIP64);
            put16(&mut buf, VERSION_ZIP64);
            put32(&mut buf, 0); // this disk
            put32(&mut buf, 0); // disk with the central directory
            put64(&mut buf, entries);
            put64(&mut buf, entries);
            put64(&mut buf, central_len);
            put64(&mut buf, central_offset);
            put32(&mut buf, ZIP64_LOCATOR);
            put32(&mut buf, 0); // disk with the zip64 end record
            put64(&mut buf, record_offset);
            put32(&mut buf, 1); // total disks
        }
        put32(&mut buf, END_OF_CENTRAL_DIRECTORY);
        put16(&mut buf, 0); // this disk
        put16(&mut buf, 0); // disk with the central directory
        let short_entries = u16::try_from(entries).unwrap_or(0xFFFF);
        put16(&mut buf, short_entries);
        put16(&mut buf, short_entries);
        put32(&mut buf, clamp32(central_len));
        put32(&mut buf, clamp32(central_offset));
        put16(&mut buf, 0); // comment length
        self.write(&buf)?;
        Ok(self.out)
    }

    fn record(
        &self,
        meta: &Meta<'_>,
        method: Method,
        sizes: Sizes,
        flags: u16,
        local_zip64: bool,
    ) -> CentralRecord {
        let time = zip_datetime(meta.mtime);
        let file_type = match meta.kind {
            Kind::File => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
        };
        let utf8 = if meta.name.is_ascii() { 0 } else { FLAG_UTF8 };
        CentralRecord {
            name: meta.name.into(),
            flags: flags | utf8,
            method,
            dos_time: time.timepart(),
            dos_date: time.datepart(),
            mtime: u32::try_from(meta.mtime).ok(),
            external: (file_type | (meta.mode & 0o777)) << 16,
            offset: self.offset,
            sizes,
            local_zip64,
        }
    }

    fn write_local_header(&mut self, record: &CentralRecord) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64 + record.name.len());
        let streamed = record.flags & FLAG_DATA_DESCRIPTOR != 0;
        put32(&mut buf, LOCAL_HEADER);
        put16(&mut buf, version_needed(record.local_zip64));
        put16(&mut buf, record.flags);
        put16(&mut buf, record.method.code());
        put16(&mut buf, record.dos_time);
        put16(&mut buf, record.dos_date);
        put32(&mut buf, record.sizes.crc);
        if record.local_zip64 {
            put32(&mut buf, 0xFFFF_FFFF);
            put32(&mut buf, 0xFFFF_FFFF);
        } else {
            put32(&mut buf, low32(record.sizes.compressed));
            put32(&mut buf, low32(record.sizes.uncompressed));
        }
        put16(&mut buf, name_len(&record.name)?);
        put16(&mut buf, local_extra_len(record));
        buf.extend_from_slice(record.name.as_bytes());
        if record.local_zip64 {
            // A streamed entry's sizes follow in the data descriptor.
            let (uncompressed, compressed) = if streamed {
                (0, 0)
            } else {
                (record.sizes.uncompressed, record.sizes.compressed)
            };
            put16(&mut buf, ZIP64_EXTRA);
            put16(&mut buf, 16);
            put64(&mut buf, uncompressed);
            put64(&mut buf, compressed);
        }
        put_timestamp(&mut buf, record.mtime);
        self.write(&buf)
    }

    fn push_central(&mut self, record: &CentralRecord) {
        let sizes = record.sizes;
        let big_uncompressed = sizes.uncompressed >= U32_LIMIT || record.local_zip64;
        let big_compressed = sizes.compressed >= U32_LIMIT || record.local_zip64;
        let big_offset = record.offset >= U32_LIMIT;
        let zip64_len =
            8 * (u16::from(big_uncompressed) + u16::from(big_compressed) + u16::from(big_offset));
        let zip64 = zip64_len > 0;
        let timestamp_len = if record.mtime.is_some() { 9 } else { 0 };
        let extra_len = if zip64 { 4 + zip64_len } else { 0 } + timestamp_len;
        let buf = &mut self.central;
        put32(buf, CENTRAL_HEADER);
        put16(buf, MADE_BY_UNIX | version_needed(zip64));
        put16(buf, version_needed(zip64));
        put16(buf, record.flags);
        put16(buf, record.method.code());
        put16(buf, record.dos_time);
        put16(buf, record.dos_date);
        put32(buf, sizes.crc);
        put32(
            buf,
            if big_compressed {
                0xFFFF_FFFF
            } else {
                low32(sizes.compressed)
            },
        );
        put32(
            buf,
            if big_uncompressed {
                0xFFFF_FFFF
            } else {
                low32(sizes.uncompressed)
            },
        );
        // The name length was checked when the local header was written.
        put16(buf, u16::try_from(record.name.len()).unwrap_or(u16::MAX));
        put16(buf, extra_len);
        put16(buf, 0); // comment length
        put16(buf, 0); // disk number start
        put16(buf, 0); // internal attributes
        put32(buf, record.external);
        put32(
            buf,
            if big_offset {
                0xFFFF_FFFF
            } else {
                low32(record.offset)
            },
        );
        buf.extend_from_slice(record.name.as_bytes());
        if zip64 {
            put16(buf, ZIP64_EXTRA);
            put16(buf, zip64_len);
            if big_uncompressed {
                put64(buf, sizes.uncompressed);
            }
            if big_compressed {
                put64(buf, sizes.compressed);
            }
            if big_offset {
                put64(buf, record.offset);
            }
        }
        put_timestamp(buf, record.mtime);
        self.entries += 1;
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }
}

fn version_needed(zip64: bool) -> u16 {
    if zip64 {
        VERSION_ZIP64
    } else {
        VERSION_DEFAULT
    }
}

fn local_extra_len(record: &CentralRecord) -> u16 {
    let zip64 = if record.local_zip64 { 20 } else { 0 };
    let timestamp = if record.mtime.is_some() { 9 } else { 0 };
    zip64 + timestamp
}

fn local_header_len(record: &CentralRecord) -> u64 {
    30 + record.name.len() as u64 + u64::from(local_extra_len(record))
}

fn name_len(name: &str) -> io::Result<u16> {
    u16::try_from(name.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("zip entry name is {} bytes, the limit is 65535", name.len()),
        )
    })
}

/// Extended timestamp extra field with the modification time only.
fn put_timestamp(buf: &mut Vec<u8>, mtime: Option<u32>) {
    if let Some(mtime) = mtime {
        put16(buf, EXTENDED_TIMESTAMP_EXTRA);
        put16(buf, 5);
        buf.push(1); // flags: modification time present
        put32(buf, mtime);
    }
}

fn low32(value: u64) -> u32 {
    (value & 0xFFFF_FFFF) as u32
}

fn clamp32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn put16(buf: &mut Vec<u8>, value: u16) {
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put32(buf: &mut Vec<u8>, value: u32) {
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put64(buf: &mut Vec<u8>, value: u64) {
    buf.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};

    use super::*;

    fn meta(name: &str) -> Meta<'_> {
        Meta {
            name,
            kind: Kind::File,
            mode: 0o644,
            mtime: 1_700_000_000,
        }
    }

    #[test]
    fn headers_carry_mode_timestamp_and_utf8_names() {
        let mut zip = ZipStream::new(Vec::new());
        let data = b"hello";
        let sizes = Sizes {
            crc: crc32fast::hash(data),
            uncompressed: 5,
            compressed: 5,
        };
        zip.add(&meta("ünï.txt"), Method::Stored, sizes, data)
            .expect("add");
        let out = zip.finish().expect("finish");
        let mut archive = zip::ZipArchive::new(Cursor::new(out)).expect("valid zip");
        let mut entry = archive.by_index(0).expect("entry");
        assert_eq!(entry.name().expect("utf-8 name"), "ünï.txt");
        assert_eq!(entry.unix_mode(), Some(0o100_644));
        let mtime = entry.extra_data_fields().find_map(|field| match field {
            zip::ExtraField::ExtendedTimestamp(ts) => ts.mod_time(),
            _ => None,
        });
        assert_eq!(mtime, Some(1_700_000_000));
        let mut back = Vec::new();
        entry.read_to_end(&mut back).expect("read");
        assert_eq!(back, data);
    }

    #[test]
    fn data_that_disagrees_with_its_sizes_is_an_error() {
        let mut zip = ZipStream::new(Vec::new());
        let sizes = Sizes {
            crc: 0,
            uncompressed: 3,
            compressed: 3,
        };
        assert!(zip.add(&meta("a"), Method::Stored, sizes, b"ab").is_err());
        let streamed = zip
            .start_streamed(&meta("b"), Method::Stored, false)
            .expect("start");
        zip.write_data(b"ab").expect("data");
        assert!(zip.finish_streamed(streamed, sizes).is_err());
    }

    #[test]
    fn more_than_65535_entries_use_the_zip64_end_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let count = 70_000_u64;
        let mut zip = ZipStream::new(Vec::new());
        for i in 0..count {
            let name = format!("f{i}");
            zip.add(&meta(&name), Method::Stored, Sizes::default(), &[])
                .expect("add");
        }
        let streamed = zip
            .start_streamed(&meta("streamed-zip64"), Method::Stored, true)
            .expect("start");
        zip.write_data(b"tail").expect("data");
        let sizes = Sizes {
            crc: crc32fast::hash(b"tail"),
            uncompressed: 4,
            compressed: 4,
        };
        zip.finish_streamed(streamed, sizes).expect("descriptor");
        let out = zip.finish().expect("finish");
        let path = dir.path().join("many.zip");
        fs_err::write(&path, &out).expect("write");
        let output = std::process::Command::new("unzip")
            .arg("-tq")
            .arg(&path)
            .output()
            .expect("run `unzip -tq` (Info-ZIP unzip must be installed)");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        let mut archive = zip::ZipArchive::new(Cursor::new(out)).expect("valid zip");
        assert_eq!(archive.len() as u64, count + 1);
        let mut last = archive.by_name("streamed-zip64").expect("entry");
        let mut back = Vec::new();
        last.read_to_end(&mut back).expect("read");
        assert_eq!(back, b"tail");
    }

    /// An archive whose first `prefix` bytes read as zeros, followed by `data`: lets the reader
    /// check offsets past 4 GiB without writing 4 GiB.
    struct Prefixed {
        prefix: u64,
        data: Vec<u8>,
        pos: u64,
    }

    impl Read for Prefixed {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos < self.prefix {
                let zeros = usize::try_from(self.prefix - self.pos)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                buf[..zeros].fill(0);
                self.pos += zeros as u64;
                return Ok(zeros);
            }
            let start = usize::try_from(self.pos - self.prefix).expect("in memory");
            let rest = self.data.get(start..).unwrap_or_default();
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n as u64;
            Ok(n)
        }
    }

    impl io::Seek for Prefixed {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            let len = self.prefix + self.data.len() as u64;
            let target = match pos {
                io::SeekFrom::Start(n) => Some(n),
                io::SeekFrom::End(d) => len.checked_add_signed(d),
                io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            };
            self.pos = target.ok_or_else(|| io::Error::other("seek before start"))?;
            Ok(self.pos)
        }
    }

    #[test]
    fn entries_past_4_gib_get_zip64_offsets() {
        let prefix = 5 * 1024 * 1024 * 1024_u64;
        let mut zip = ZipStream::new(Vec::new());
        // As if 5 GiB of entries had been written already.
        zip.offset = prefix;
        let data = b"after the 4 GiB mark";
        let sizes = Sizes {
            crc: crc32fast::hash(data),
            uncompressed: data.len() as u64,
            compressed: data.len() as u64,
        };
        zip.add(&meta("late"), Method::Stored, sizes, data)
            .expect("add");
        let streamed = zip
            .start_streamed(&meta("late-streamed"), Method::Stored, false)
            .expect("start");
        zip.write_data(data).expect("data");
        zip.finish_streamed(streamed, sizes).expect("descriptor");
        let out = zip.finish().expect("finish");
        let reader = Prefixed {
            prefix,
            data: out,
            pos: 0,
        };
        let mut archive = zip::ZipArchive::new(reader).expect("valid zip64 archive");
        for name in ["late", "late-streamed"] {
            let mut entry = archive.by_name(name).expect("entry");
            assert!(entry.header_start() >= prefix, "{name}");
            let mut back = Vec::new();
            entry.read_to_end(&mut back).expect("read");
            assert_eq!(back, data, "{name}");
        }
    }
}
