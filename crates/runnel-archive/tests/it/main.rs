//! Integration tests for `runnel-archive`: selection, round trips and hostile archives.

mod hostile;
mod roundtrip;
mod select;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use tempfile::TempDir;

/// A scratch area with a project directory and a sibling "outside" directory that extraction
/// must never touch.
pub(crate) struct Scratch {
    _dir: TempDir,
    pub(crate) project: PathBuf,
    pub(crate) outside: PathBuf,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let project = dir.path().join("project");
        let outside = dir.path().join("outside");
        fs_err::create_dir(&project).expect("project dir");
        fs_err::create_dir(&outside).expect("outside dir");
        let project = fs_err::canonicalize(project).expect("canonical project");
        let outside = fs_err::canonicalize(outside).expect("canonical outside");
        Self {
            _dir: dir,
            project,
            outside,
        }
    }

    /// Writes `content` at `rel` below the project, creating parents.
    pub(crate) fn file(&self, rel: &str, content: &str) -> PathBuf {
        write_file(&self.project.join(rel), content)
    }

    /// Every path below `dir` (relative, sorted), for "nothing was written" assertions.
    pub(crate) fn listing(dir: &Path) -> Vec<String> {
        let mut paths: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(false)
            .into_iter()
            .map(|entry| {
                let entry = entry.expect("walk");
                entry
                    .path()
                    .strip_prefix(dir)
                    .expect("prefix")
                    .display()
                    .to_string()
            })
            .collect();
        paths.sort();
        paths
    }
}

pub(crate) fn write_file(path: &Path, content: &str) -> PathBuf {
    if let Some(parent) = path.parent() {
        fs_err::create_dir_all(parent).expect("parents");
    }
    fs_err::write(path, content).expect("write");
    path.to_owned()
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    fs_err::set_permissions(path, PermissionsExt::from_mode(mode)).expect("chmod");
}

pub(crate) fn set_mtime(path: &Path, seconds: i64) {
    filetime::set_symlink_file_times(
        path,
        FileTime::from_unix_time(seconds, 0),
        FileTime::from_unix_time(seconds, 0),
    )
    .expect("mtime");
}
