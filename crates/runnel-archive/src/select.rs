//! Path selection: which files of the project directory go into an archive.
//!
//! The rules follow the official runner's `fileArchiver`:
//! - every `paths` pattern is made relative to the project directory; a pattern that is
//!   absolute outside it or climbs out with `..` is refused with a [`Warning`] (the job goes on);
//! - patterns use GitLab's glob syntax: `*` and `?` stay within one path segment, `**` spans
//!   segments, `[a-z]` classes and `{a,b}` alternatives work; a matching directory brings every
//!   file below it;
//! - every candidate (including those found below a matching directory) is tested against the
//!   `exclude` patterns on its own, so excluding a directory needs `dir/**`;
//! - `untracked` adds what `git ls-files -o --exclude-standard -z` reports;
//! - symlinks are recorded as symlinks and never followed.
//!
//! The result is sorted by path, so archives are deterministic. This module only reads
//! metadata; it never opens file contents.

use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use globset::{GlobBuilder, GlobMatcher};
use walkdir::WalkDir;

use crate::time::unix_seconds;

/// What to archive, as given by `artifacts:` / `cache:` (`--path`, `--exclude`, `--untracked`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathSpec {
    /// Glob patterns relative to the project directory.
    pub paths: Vec<String>,
    /// Glob patterns of paths to leave out.
    pub exclude: Vec<String>,
    /// Also add the files git reports as untracked.
    pub untracked: bool,
}

/// The selection cannot be made at all.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The project directory does not exist or cannot be resolved.
    #[error("failed to resolve project directory {}", path.display())]
    ProjectDir {
        /// The directory as given.
        path: PathBuf,
        /// Why it could not be resolved.
        #[source]
        source: io::Error,
    },
}

/// A problem that does not stop the selection; the official runner logs these and goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// The pattern points outside the project directory and was ignored.
    OutsideProject {
        /// The pattern as written.
        pattern: String,
    },
    /// The pattern is not a valid glob.
    InvalidPattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing matched the pattern.
    NoMatch {
        /// The project-relative pattern.
        pattern: String,
        /// The project directory, for the hint.
        project_dir: PathBuf,
    },
    /// `git ls-files` could not be run or failed.
    UntrackedUnavailable {
        /// Why.
        reason: String,
    },
    /// `untracked` was asked for and git reported nothing.
    NoUntrackedFiles,
    /// A path could not be read while walking.
    Unreadable {
        /// The path (project-relative when possible).
        path: String,
        /// Why.
        message: String,
    },
    /// A name that is not valid UTF-8 cannot be stored portably and was skipped.
    NonUtf8Path {
        /// The path, lossily decoded.
        path: String,
    },
    /// A socket, FIFO or device was skipped.
    SpecialFile {
        /// The project-relative path.
        path: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsideProject { pattern } => {
                write!(
                    f,
                    "{pattern}: artifact path is not a subpath of project directory"
                )
            }
            Self::InvalidPattern { pattern, message } => write!(f, "{pattern}: {message}"),
            Self::NoMatch {
                pattern,
                project_dir,
            } => write!(
                f,
                "{pattern}: no matching files. Ensure that the artifact path is relative to the \
                 working directory ({})",
                project_dir.display()
            ),
            Self::UntrackedUnavailable { reason } => write!(f, "untracked: {reason}"),
            Self::NoUntrackedFiles => f.write_str("untracked: no files"),
            Self::Unreadable { path, message } => write!(f, "{path}: {message}"),
            Self::NonUtf8Path { path } => {
                write!(f, "{path}: file name is not valid UTF-8, skipped")
            }
            Self::SpecialFile { path } => {
                write!(
                    f,
                    "{path}: not a regular file, directory or symlink, skipped"
                )
            }
        }
    }
}

/// What an [`Entry`] is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of `size` bytes (at selection time).
    File {
        /// Size in bytes.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link (stored as a link, never followed).
    Symlink,
}

/// One selected path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Project-relative path with `/` separators, no leading `./` and no trailing `/`.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Unix permission bits (`0o7777` mask).
    pub mode: u32,
    /// Modification time in seconds since the epoch.
    pub mtime: i64,
}

impl Entry {
    fn from_metadata(path: String, metadata: &Metadata) -> Option<Self> {
        let file_type = metadata.file_type();
        let kind = if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_file() {
            EntryKind::File {
                size: metadata.len(),
            }
        } else {
            return None;
        };
        let mtime = metadata.modified().map_or(0, unix_seconds);
        let mode = metadata.permissions().mode() & 0o7777;
        Some(Self {
            path,
            kind,
            mode,
            mtime,
        })
    }
}

/// Counts over a [`Selection`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectionStats {
    /// Regular files.
    pub files: usize,
    /// Directories.
    pub dirs: usize,
    /// Symbolic links.
    pub symlinks: usize,
    /// Total size of the regular files.
    pub bytes: u64,
}

/// The sorted set of paths to archive, with the warnings met while choosing them.
#[derive(Clone, Debug)]
pub struct Selection {
    root: PathBuf,
    entries: Vec<Entry>,
    warnings: Vec<Warning>,
    excluded: BTreeMap<String, usize>,
}

impl Selection {
    /// The canonical project directory every [`Entry::path`] is relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Problems met while selecting, in the order they happened.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// How many candidates each `exclude` pattern removed.
    pub fn excluded(&self) -> &BTreeMap<String, usize> {
        &self.excluded
    }

    /// Counts of files, directories, symlinks and bytes.
    pub fn stats(&self) -> SelectionStats {
        let mut stats = SelectionStats::default();
        for entry in &self.entries {
            match entry.kind {
                EntryKind::File { size } => {
                    stats.files += 1;
                    stats.bytes += size;
                }
                EntryKind::Dir => stats.dirs += 1,
                EntryKind::Symlink => stats.symlinks += 1,
            }
        }
        stats
    }

    /// The absolute path of an entry.
    pub fn absolute(&self, entry: &Entry) -> PathBuf {
        self.root.join(&entry.path)
    }
}

/// Selects the paths described by `spec` inside `project_dir`.
///
/// Only an unusable project directory is an error; everything else becomes a [`Warning`]
/// (also logged with `tracing`), because the official runner never fails a job over a pattern.
pub fn select(project_dir: &Path, spec: &PathSpec) -> Result<Selection, SelectionError> {
    let root = fs_err::canonicalize(project_dir).map_err(|source| SelectionError::ProjectDir {
        path: project_dir.to_owned(),
        source,
    })?;
    let mut selector = Selector::new(root);
    selector.compile_excludes(&spec.exclude);
    for pattern in &spec.paths {
        selector.add_pattern(pattern);
    }
    if spec.untracked {
        selector.add_untracked();
    }
    Ok(selector.finish())
}

struct Selector {
    root: PathBuf,
    excludes: Vec<(String, GlobMatcher)>,
    found: BTreeMap<String, Entry>,
    warnings: Vec<Warning>,
    excluded: BTreeMap<String, usize>,
}

impl Selector {
    fn new(root: PathBuf) -> Self {
        Self {
            root,
            excludes: Vec::new(),
            found: BTreeMap::new(),
            warnings: Vec::new(),
            excluded: BTreeMap::new(),
        }
    }

    fn warn(&mut self, warning: Warning) {
        tracing::warn!(message = %warning);
        self.warnings.push(warning);
    }

    fn compile_excludes(&mut self, patterns: &[String]) {
        for pattern in patterns {
            let Some(relative) = project_relative(&self.root, pattern) else {
                self.warn(Warning::OutsideProject {
                    pattern: pattern.clone(),
                });
                continue;
            };
            match compile(&relative) {
                Ok(matcher) => self.excludes.push((pattern.clone(), matcher)),
                Err(message) => {
                    self.warn(Warning::InvalidPattern {
                        pattern: pattern.clone(),
                        message,
                    });
                }
            }
        }
    }

    fn add_pattern(&mut self, pattern: &str) {
        let Some(relative) = project_relative(&self.root, pattern) else {
            self.warn(Warning::OutsideProject {
                pattern: pattern.to_owned(),
            });
            return;
        };
        let (base, glob) = split_literal_base(&relative);
        let added = if glob.is_empty() {
            self.add_tree(base)
        } else {
            match compile(&relative) {
                Ok(matcher) => self.add_matches(base, &matcher),
                Err(message) => {
                    self.warn(Warning::InvalidPattern {
                        pattern: pattern.to_owned(),
                        message,
                    });
                    return;
                }
            }
        };
        if added == 0 {
            let display = if relative.is_empty() {
                ".".to_owned()
            } else {
                relative
            };
            self.warn(Warning::NoMatch {
                pattern: display,
                project_dir: self.root.clone(),
            });
        } else {
            tracing::info!(message = "found matching artifact files and directories", pattern = %relative, count = added);
        }
    }

    /// Walks `base` (project-relative, may be empty) and adds the subtree of every match.
    fn add_matches(&mut self, base: &str, matcher: &GlobMatcher) -> usize {
        let start = self.root.join(base);
        if fs_err::symlink_metadata(&start).is_err() {
            return 0;
        }
        let mut added = 0;
        let mut walk = walk(&start).into_iter();
        while let Some(next) = walk.next() {
            let entry = match next {
                Ok(entry) => entry,
                Err(error) => {
                    self.walk_error(&error);
                    continue;
                }
            };
            let Some(relative) = self.relative(entry.path()) else {
                continue;
            };
            if relative.is_empty() || !matcher.is_match(&relative) {
                continue;
            }
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            added += self.add_tree(&relative);
        }
        added
    }

    /// Adds `relative` and, when it is a real directory, everything below it.
    fn add_tree(&mut self, relative: &str) -> usize {
        let start = self.root.join(relative);
        if fs_err::symlink_metadata(&start).is_err() {
            return 0;
        }
        let mut added = 0;
        for next in walk(&start) {
            match next {
                Ok(entry) => added += usize::from(self.add_path(entry.path())),
                Err(error) => self.walk_error(&error),
            }
        }
        added
    }

    /// Adds one path (not its children) unless it is the root or excluded.
    fn add_path(&mut self, path: &Path) -> bool {
        let Some(relative) = self.relative(path) else {
            return false;
        };
        if relative.is_empty() || self.is_excluded(&relative) {
            return false;
        }
        let metadata = match fs_err::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return false,
            Err(error) => {
                self.warn(Warning::Unreadable {
                    path: relative,
                    message: error.to_string(),
                });
                return false;
            }
        };
        match self.found.entry(relative) {
            btree_map::Entry::Occupied(_) => true,
            btree_map::Entry::Vacant(slot) => {
                let relative = slot.key().clone();
                match Entry::from_metadata(relative.clone(), &metadata) {
                    Some(entry) => {
                        slot.insert(entry);
                        true
                    }
                    None => {
                        self.warn(Warning::SpecialFile { path: relative });
                        false
                    }
                }
            }
        }
    }

    fn is_excluded(&mut self, relative: &str) -> bool {
        let Some((pattern, _)) = self.excludes.iter().find(|(_, m)| m.is_match(relative)) else {
            return false;
        };
        *self.excluded.entry(pattern.clone()).or_default() += 1;
        true
    }

    /// The `/`-separated path of `path` below the root; `None` (with a warning) for non-UTF-8
    /// names.
    fn relative(&mut self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.root).ok()?;
        match relative.to_str() {
            Some(text) => Some(text.to_owned()),
            None => {
                let path = relative.to_string_lossy().into_owned();
                self.warn(Warning::NonUtf8Path { path });
                None
            }
        }
    }

    fn walk_error(&mut self, error: &walkdir::Error) {
        let path = error.path().map_or_else(String::new, |path| {
            path.strip_prefix(&self.root)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        });
        self.warn(Warning::Unreadable {
            path,
            message: error.to_string(),
        });
    }

    fn add_untracked(&mut self) {
        let listing = match git_untracked(&self.root) {
            Ok(listing) => listing,
            Err(reason) => {
                self.warn(Warning::UntrackedUnavailable { reason });
                return;
            }
        };
        let mut added = 0;
        for raw in listing
            .split(|&byte| byte == 0)
            .filter(|raw| !raw.is_empty())
        {
            let Ok(name) = std::str::from_utf8(raw) else {
                let path = String::from_utf8_lossy(raw).into_owned();
                self.warn(Warning::NonUtf8Path { path });
                continue;
            };
            let Some(relative) = project_relative(&self.root, name) else {
                continue;
            };
            added += usize::from(self.add_path(&self.root.join(relative)));
        }
        if added == 0 {
            self.warn(Warning::NoUntrackedFiles);
        } else {
            tracing::info!(message = "found untracked files", count = added);
        }
    }

    fn finish(self) -> Selection {
        for (pattern, count) in &self.excluded {
            tracing::info!(message = "excluded files", %pattern, count);
        }
        Selection {
            root: self.root,
            entries: self.found.into_values().collect(),
            warnings: self.warnings,
            excluded: self.excluded,
        }
    }
}

/// A sorted walk that never follows symlinks, not even when `start` is one.
fn walk(start: &Path) -> WalkDir {
    WalkDir::new(start)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by_file_name()
}

/// Runs `git ls-files -o --exclude-standard -z` in `root` and returns its raw output.
fn git_untracked(root: &Path) -> Result<Vec<u8>, String> {
    let output = Command::new("git")
        .args(["ls-files", "-o", "--exclude-standard", "-z"])
        .current_dir(root)
        .output()
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => "git is not installed (not found in PATH)".to_owned(),
            _ => format!("failed to run git: {error}"),
        })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "git ls-files failed ({}): {}",
        output.status,
        stderr.trim()
    ))
}

/// Makes `pattern` relative to `root`, lexically resolving `.` and `..`.
///
/// Returns `None` when the pattern leaves the project directory; the empty string is the
/// project directory itself.
fn project_relative(root: &Path, pattern: &str) -> Option<String> {
    let relative = if pattern.starts_with('/') {
        let root = root.to_str()?;
        match pattern.strip_prefix(root) {
            Some("") => "",
            Some(rest) if rest.starts_with('/') => rest,
            _ => return None,
        }
    } else {
        pattern
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in relative.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    Some(segments.join("/"))
}

/// Splits a relative pattern into its leading literal directory and the glob remainder.
fn split_literal_base(pattern: &str) -> (&str, &str) {
    let is_glob = |segment: &str| segment.contains(['*', '?', '[', '{', '\\']);
    let mut end: usize = 0;
    for segment in pattern.split('/') {
        if is_glob(segment) {
            let base = pattern.get(..end.saturating_sub(1)).unwrap_or("");
            let rest = pattern.get(end..).unwrap_or("");
            return (base, rest);
        }
        end += segment.len() + 1;
    }
    (pattern, "")
}

fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|error| error.kind().to_string())
}
