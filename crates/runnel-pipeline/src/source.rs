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

/// A CI file that lives outside the project: what an `include:` other than `local` names,
/// with variables already expanded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum External {
    /// `include: remote` (or a plain `https://…` include): a URL.
    Remote { url: String },
    /// `include: project`: a file of another project on the same GitLab instance, at `reference`
    /// (the project's default branch when `None`).
    Project {
        project: String,
        reference: Option<String>,
        file: String,
    },
    /// `include: template`: one of GitLab's templates (`Auto-DevOps.gitlab-ci.yml`,
    /// `Jobs/Build.gitlab-ci.yml`).
    Template { name: String },
    /// `include: component`: `<host>/<project path>/<component>@<version>`.
    Component { address: String },
}

impl External {
    /// The include as a person would name it (also the file name in positions and errors).
    pub fn display_name(&self) -> String {
        match self {
            Self::Remote { url } => url.clone(),
            Self::Project {
                project,
                reference,
                file,
            } => format!(
                "{project}@{}:{}",
                reference.as_deref().unwrap_or("HEAD"),
                file.trim_start_matches('/')
            ),
            Self::Template { name } => format!("template:{name}"),
            Self::Component { address } => format!("component:{address}"),
        }
    }

    /// The include kind's keyword.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Remote { .. } => "remote",
            Self::Project { .. } => "project",
            Self::Template { .. } => "template",
            Self::Component { .. } => "component",
        }
    }
}

/// Why an external include could not be read: what was tried, and how a person can make it
/// available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError {
    pub tried: String,
    pub hint: String,
}

/// Read access to the project's files.
pub trait SourceFiles {
    /// The text of the file at `path` (relative to the project root).
    fn read(&self, path: &str) -> io::Result<String>;

    /// Every file of the project, relative to its root, used to expand `include: local` globs.
    fn list(&self) -> Vec<String>;

    /// The text of an include that lives outside the project. The default knows none.
    fn fetch(&self, include: &External) -> Result<String, FetchError> {
        Err(FetchError {
            tried: format!("nothing: this reader has no {} includes", include.kind()),
            hint: "run it through `runnel exec`, which fetches includes".to_owned(),
        })
    }
}

/// Files held in memory, for tests and for callers that already read them.
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles {
    files: BTreeMap<String, String>,
    external: BTreeMap<External, String>,
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

    /// Adds the text of an external include; builder style.
    pub fn with_external(mut self, include: External, text: &str) -> Self {
        self.external.insert(include, text.to_owned());
        self
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

    fn fetch(&self, include: &External) -> Result<String, FetchError> {
        self.external
            .get(include)
            .cloned()
            .ok_or_else(|| FetchError {
                tried: "the files given to MemoryFiles".to_owned(),
                hint: "add it with MemoryFiles::with_external".to_owned(),
            })
    }
}
