//! Git repositories served by the fake over smart HTTP, so jobs can really clone and fetch.
//!
//! [`crate::FakeGitlab::create_repo`] makes a bare repository under a temp dir owned by the fake
//! and returns a [`RepoHandle`]; the repository is served at `<fake url>/<path>.git` by the real
//! `git http-backend` (spawned per request as a CGI program, see `http`). Like GitLab, every
//! request needs HTTP basic auth as `gitlab-ci-token:<job token>` of a job that is running.
//! Tests fill repositories with [`CommitBuilder`] (plumbing commands on the bare repository
//! with a fixed author and clock, so commit ids are reproducible), branches, tags, submodules
//! and LFS files, whose content the LFS batch API serves.
//!
//! Deliberately not modelled: project visibility and the job-token allowlist (any running job
//! may read any repository), pushes and LFS uploads from jobs, redirects for URLs without
//! `.git`.
//! Creating commits runs short `git` processes on local files and blocks the calling thread.

mod http;
mod repo;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tempfile::TempDir;

use crate::error::FakeError;

pub(crate) use http::serve_or_not_found;
pub(crate) use repo::NULL_SHA;
pub use repo::{CommitBuilder, RepoHandle};

/// The fake's repositories: a lazily created root directory and the repositories in it.
#[derive(Debug, Default)]
pub(crate) struct GitHost {
    inner: Mutex<HostInner>,
}

#[derive(Debug, Default)]
struct HostInner {
    /// Created by the first `create_repo`; each handle keeps it alive too.
    root: Option<Arc<TempDir>>,
    repos: BTreeMap<String, RepoHandle>,
}

impl GitHost {
    /// Creates the bare repository `path` (`namespace/project`) served under `base_url`.
    pub(crate) fn create_repo(&self, base_url: &str, path: &str) -> Result<RepoHandle, FakeError> {
        validate_path(path)?;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.repos.contains_key(path) {
            return Err(FakeError::RepoExists {
                path: path.to_owned(),
            });
        }
        let root = match &inner.root {
            Some(root) => Arc::clone(root),
            None => {
                let root = tempfile::Builder::new()
                    .prefix("fake-gitlab-repos-")
                    .tempdir()
                    .map_err(|source| FakeError::RepoRoot { source })?;
                let root = Arc::new(root);
                inner.root = Some(Arc::clone(&root));
                root
            }
        };
        // `git init` runs without the lock: git requests look repositories up meanwhile.
        drop(inner);
        let repo = RepoHandle::init(root, base_url, path)?;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.repos.contains_key(path) {
            return Err(FakeError::RepoExists {
                path: path.to_owned(),
            });
        }
        inner.repos.insert(path.to_owned(), repo.clone());
        Ok(repo)
    }

    /// The repository at `path`, if one was created.
    pub(crate) fn repo(&self, path: &str) -> Option<RepoHandle> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.repos.get(path).cloned()
    }
}

/// Checks `path` the way GitLab would accept a project path, and so that it stays inside the
/// root directory.
fn validate_path(path: &str) -> Result<(), FakeError> {
    let invalid = |reason| {
        Err(FakeError::InvalidRepoPath {
            path: path.to_owned(),
            reason,
        })
    };
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 2 {
        return invalid("expected namespace/project");
    }
    for segment in &segments {
        if segment.is_empty() {
            return invalid("empty path segment");
        }
        if segment.starts_with('.') || segment.starts_with('-') {
            return invalid("a segment starts with '.' or '-'");
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !segment.chars().all(allowed) {
            return invalid("only letters, digits, '.', '_' and '-' are allowed");
        }
    }
    if path.ends_with(".git") {
        return invalid("the path must not end in .git");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_are_checked() {
        for ok in ["group/project", "a/b/c", "my-group/my_project.v2"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "project",
            "group//project",
            "group/../project",
            "group/.hidden",
            "group/project.git",
            "group/pro ject",
            "/group/project",
            "group/-project",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }
}
