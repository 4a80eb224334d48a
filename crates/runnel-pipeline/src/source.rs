//! Where CI files come from: the [`SourceFiles`] trait and an in-memory implementation.
//!
//! The loader never touches the filesystem itself; the caller (the `runnel exec` command)
//! implements [`SourceFiles`] over the project directory, and tests use [`MemoryFiles`]. Paths
//! are relative to the project root and use `/`.
//!
//! A directory-backed implementation is a few lines in the caller:
//!
//! ```text
//! struct Dir(PathBuf);
//! impl SourceFiles for Dir {
//!     fn read(&self, path: &str) -> io::Result<String> {
//!         fs_err::read_to_string(self.0.join(path.trim_start_matches('/')))
//!     }
//!     fn list(&self) -> Vec<String> {
//!         walkdir::WalkDir::new(&self.0).into_iter().flatten()
//!             .filter(|e| e.file_type().is_file())
//!             .filter_map(|e| e.path().strip_prefix(&self.0).ok()?.to_str().map(str::to_owned))
//!             .collect()
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::io;

/// Read access to the project's files.
pub trait SourceFiles {
    /// The text of the file at `path` (relative to the project root).
    fn read(&self, path: &str) -> io::Result<String>;

    /// Every file of the project, relative to its root, used to expand `include: local` globs.
    fn list(&self) -> Vec<String>;
}

/// Files held in memory, for tests and for callers that already read them.
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles {
    files: BTreeMap<String, String>,
}

impl MemoryFiles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file; builder style.
    pub fn with(mut self, path: &str, text: &str) -> Self {
        self.insert(path, text);
        self
    }

    pub fn insert(&mut self, path: &str, text: &str) {
        self.files
            .insert(path.trim_start_matches('/').to_owned(), text.to_owned());
    }
}

impl SourceFiles for MemoryFiles {
    fn read(&self, path: &str) -> io::Result<String> {
        self.files
            .get(path.trim_start_matches('/'))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn list(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }
}
