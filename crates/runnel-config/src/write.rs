//! Atomic, private file writes: a temporary file with mode 0600 in the same directory, then a
//! rename over the target, creating the directory (mode 0700) when it is missing.
//!
//! A reader of the file sees the old bytes or the new bytes, never half of them. Calls go to
//! `std::fs` directly because every [`WriteError`] already names its path; `fs-err` would say it
//! twice. Locking against concurrent writers is not done (the official runner does not either).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The directory did not exist and could not be created.
    #[error("failed to create directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The directory exists but refuses new files.
    #[error("directory {} is not writable", dir.display())]
    DirNotWritable {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Writing the new contents failed.
    #[error("failed to write {}", path.display())]
    Write {
        /// The file being written (the temporary file next to the target).
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The new file could not be moved over the old one.
    #[error("failed to replace {}", path.display())]
    Replace {
        /// The target file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// Replaces `path` with `contents`, readable and writable by the owner only.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let dir = parent_dir(path);
    create_private_dir(dir)?;
    let temp = temp_path(dir, path);
    let result = write_new_file(dir, &temp, contents).and_then(|()| {
        fs::rename(&temp, path).map_err(|source| WriteError::Replace {
            path: path.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        remove_leftover(&temp);
    }
    result
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), WriteError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| WriteError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

fn temp_path(dir: &Path, target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy());
    let suffix: u32 = rand::random();
    dir.join(format!(".{name}.{}.{suffix:08x}.tmp", std::process::id()))
}

fn write_new_file(dir: &Path, temp: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let mut file = create_private_file(temp).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            WriteError::DirNotWritable {
                dir: dir.to_path_buf(),
                source,
            }
        }
        _ => WriteError::Write {
            path: temp.to_path_buf(),
            source,
        },
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| WriteError::Write {
            path: temp.to_path_buf(),
            source,
        })
}

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn remove_leftover(temp: &Path) {
    if let Err(error) = fs::remove_file(temp)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!(message = "Failed to remove temporary file.", path = %temp.display(), %error);
    }
}
