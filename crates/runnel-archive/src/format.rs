//! Archive formats and compression levels, named as the official runner names them.
//!
//! Only the vocabulary lives here (parsing, file names, level numbers); the writers and readers
//! are in `create` and `extract`.

use std::fmt;
use std::str::FromStr;

/// The container written by [`create_archive`](crate::create_archive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// Deflate zip with unix permissions and extended timestamps; the artifact and cache
    /// default.
    #[default]
    Zip,
    /// One gzip member per regular file, concatenated (used for reports such as junit). Each
    /// member's header carries the file's base name, its project-relative path as the comment
    /// and its mtime.
    Gzip,
    /// A single regular file, as is.
    Raw,
    /// A tar stream compressed with (multithreaded) zstd; the faster cache option.
    TarZstd,
}

impl ArchiveFormat {
    /// The name used by `--artifact-format` / `CACHE_COMPRESSION_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zip => "zip",
            Self::Gzip => "gzip",
            Self::Raw => "raw",
            Self::TarZstd => "tarzstd",
        }
    }

    /// The upload file name for an artifact called `name` (`<name>.zip`, `<name>.gz`,
    /// `<name>.tar.zst`, or `name` itself for raw uploads).
    pub fn file_name(self, name: &str) -> String {
        match self {
            Self::Zip => format!("{name}.zip"),
            Self::Gzip => format!("{name}.gz"),
            Self::Raw => name.to_owned(),
            Self::TarZstd => format!("{name}.tar.zst"),
        }
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An archive format name that is not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported archive format `{0}` (expected zip, gzip, raw or tarzstd)")]
pub struct ParseFormatError(pub String);

impl FromStr for ArchiveFormat {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "zip" => Ok(Self::Zip),
            "gzip" => Ok(Self::Gzip),
            "raw" => Ok(Self::Raw),
            "tarzstd" => Ok(Self::TarZstd),
            _ => Err(ParseFormatError(s.to_owned())),
        }
    }
}

/// `ARTIFACT_COMPRESSION_LEVEL` / `CACHE_COMPRESSION_LEVEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressionLevel {
    /// No compression at all for zip (entries are stored), the fastest zstd level otherwise.
    Fastest,
    /// Deflate level 1.
    Fast,
    /// Deflate level 5, as the official fastzip archiver uses.
    #[default]
    Default,
    /// Deflate level 7.
    Slow,
    /// Deflate level 9.
    Slowest,
}

impl CompressionLevel {
    /// The deflate level, or `None` when entries should be stored uncompressed.
    pub(crate) fn deflate(self) -> Option<u32> {
        match self {
            Self::Fastest => None,
            Self::Fast => Some(1),
            Self::Default => Some(5),
            Self::Slow => Some(7),
            Self::Slowest => Some(9),
        }
    }

    /// The zstd level (zstd has no "store" mode worth using, so `Fastest` is level 1).
    pub(crate) fn zstd(self) -> i32 {
        match self {
            Self::Fastest => 1,
            Self::Fast => 2,
            Self::Default => 3,
            Self::Slow => 7,
            Self::Slowest => 11,
        }
    }
}

/// A compression level name that is not one of the five official names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression level `{0}` (expected fastest, fast, default, slow or slowest)")]
pub struct ParseLevelError(pub String);

impl FromStr for CompressionLevel {
    type Err = ParseLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fastest" => Ok(Self::Fastest),
            "fast" => Ok(Self::Fast),
            "" | "default" => Ok(Self::Default),
            "slow" => Ok(Self::Slow),
            "slowest" => Ok(Self::Slowest),
            _ => Err(ParseLevelError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_official_names() {
        assert_eq!("FASTEST".parse(), Ok(CompressionLevel::Fastest));
        assert_eq!("slowest".parse(), Ok(CompressionLevel::Slowest));
        assert_eq!("".parse(), Ok(CompressionLevel::Default));
        assert!("turbo".parse::<CompressionLevel>().is_err());
        assert_eq!("tarzstd".parse(), Ok(ArchiveFormat::TarZstd));
        assert_eq!("".parse(), Ok(ArchiveFormat::Zip));
        assert!("zipzstd".parse::<ArchiveFormat>().is_err());
    }

    #[test]
    fn upload_file_names() {
        assert_eq!(ArchiveFormat::Zip.file_name("artifacts"), "artifacts.zip");
        assert_eq!(ArchiveFormat::Gzip.file_name("junit"), "junit.gz");
        assert_eq!(ArchiveFormat::TarZstd.file_name("c"), "c.tar.zst");
        assert_eq!(ArchiveFormat::Raw.file_name("report.json"), "report.json");
    }
}
