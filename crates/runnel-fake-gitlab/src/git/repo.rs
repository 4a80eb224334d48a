//! One served bare repository ([`RepoHandle`]) and the commits tests put into it
//! ([`CommitBuilder`]).
//!
//! Commits are made with plumbing (`hash-object`, `update-index` on a scratch index,
//! `write-tree`, `commit-tree`, `update-ref`) directly in the bare repository: no work tree, no
//! hooks, no user configuration. Author, committer and dates are fixed (the clock advances one
//! minute per commit), so the same sequence of commits always yields the same ids. The handle
//! remembers each commit's parent and the tags it created, which [`crate::JobBuilder::repo`]
//! uses for `before_sha` and `ref_type`. It does not run `git gc`, sign anything or write
//! reflogs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::error::FakeError;

/// Seconds since the epoch of the first commit's author date (2023-11-14T22:13:20Z).
const EPOCH: u64 = 1_700_000_000;
/// The id git uses for "no object".
pub(crate) const NULL_SHA: &str = "0000000000000000000000000000000000000000";

/// A bare repository served by the fake at [`RepoHandle::url`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RepoHandle {
    inner: Arc<Repo>,
}

#[derive(Debug)]
struct Repo {
    /// `namespace/project`.
    path: String,
    /// The bare repository directory.
    git_dir: PathBuf,
    /// `<fake url>/<path>.git`.
    url: String,
    /// Keeps the directory alive while a handle exists.
    root: Arc<TempDir>,
    commits: AtomicU64,
    known: Mutex<Known>,
}

/// What the handle learned from the commits and refs it made, and its LFS objects.
#[derive(Debug, Default)]
struct Known {
    parents: BTreeMap<String, Option<String>>,
    tags: BTreeSet<String>,
    /// LFS objects by `sha256` hex id.
    lfs: BTreeMap<String, Bytes>,
}

impl RepoHandle {
    pub(super) fn init(root: Arc<TempDir>, base_url: &str, path: &str) -> Result<Self, FakeError> {
        let git_dir = root.path().join(format!("{path}.git"));
        let repo = Self {
            inner: Arc::new(Repo {
                path: path.to_owned(),
                url: format!("{}/{path}.git", base_url.trim_end_matches('/')),
                git_dir,
                root,
                commits: AtomicU64::new(0),
                known: Mutex::new(Known::default()),
            }),
        };
        let git_dir = repo.inner.git_dir.to_string_lossy().into_owned();
        repo.run(
            None,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                &git_dir,
            ],
            None,
        )?;
        // What Gitaly allows: fetching any commit by id (GitLab's `+<sha>:refs/pipelines/<id>`
        // refspec) and partial clone filters.
        repo.git(&["config", "uploadpack.allowAnySHA1InWant", "true"])?;
        repo.git(&["config", "uploadpack.allowFilter", "true"])?;
        repo.git(&["config", "http.receivepack", "false"])?;
        Ok(repo)
    }

    /// `namespace/project`.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The clone URL without credentials, e.g. `http://127.0.0.1:4321/group/project.git`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The bare repository on disk (to inspect it with `git --git-dir`).
    pub fn git_dir(&self) -> &Path {
        &self.inner.git_dir
    }

    /// The directory holding every repository of the fake (`GIT_PROJECT_ROOT`).
    pub(super) fn root(&self) -> &Path {
        self.inner.root.path()
    }

    /// Starts a commit on `branch` (created if missing, as a root commit).
    pub fn commit(&self, branch: &str, message: &str) -> CommitBuilder<'_> {
        CommitBuilder {
            repo: self,
            branch: branch.to_owned(),
            message: message.to_owned(),
            changes: Vec::new(),
        }
    }

    /// The commit `branch` points at, if the branch exists.
    pub fn branch_head(&self, branch: &str) -> Result<Option<String>, FakeError> {
        self.resolve(&format!("refs/heads/{branch}"))
    }

    /// Creates or moves branch `name` to commit `sha`.
    pub fn create_branch(&self, name: &str, sha: &str) -> Result<(), FakeError> {
        self.git(&["update-ref", &format!("refs/heads/{name}"), sha])?;
        Ok(())
    }

    /// Creates or moves the lightweight tag `name` to commit `sha`.
    pub fn create_tag(&self, name: &str, sha: &str) -> Result<(), FakeError> {
        self.git(&["update-ref", &format!("refs/tags/{name}"), sha])?;
        self.known().tags.insert(name.to_owned());
        Ok(())
    }

    /// Whether [`RepoHandle::create_tag`] made tag `name`.
    pub fn is_tag(&self, name: &str) -> bool {
        self.known().tags.contains(name)
    }

    /// The parent of a commit made through this handle (`None` for root commits and commits
    /// the handle did not make).
    pub fn parent_of(&self, sha: &str) -> Option<String> {
        self.known().parents.get(sha).cloned().flatten()
    }

    /// The LFS object `oid` (`sha256` hex), if a commit stored it.
    pub fn lfs_object(&self, oid: &str) -> Option<Bytes> {
        self.known().lfs.get(oid).cloned()
    }

    /// Runs `git --git-dir=<repo> <args>` and returns its trimmed stdout, for inspections the
    /// handle does not offer.
    pub fn git(&self, args: &[&str]) -> Result<String, FakeError> {
        let git_dir = format!("--git-dir={}", self.inner.git_dir.display());
        let mut full = vec![git_dir.as_str()];
        full.extend(args);
        self.run(None, &full, None)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn resolve(&self, rev: &str) -> Result<Option<String>, FakeError> {
        let spec = format!("{rev}^{{commit}}");
        match self.git(&["rev-parse", "--verify", "--quiet", &spec]) {
            Ok(sha) => Ok(Some(sha)),
            Err(FakeError::GitFailed { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Runs git with a clean, fixed environment; `index` sets `GIT_INDEX_FILE`.
    fn run(
        &self,
        index: Option<&Path>,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, FakeError> {
        let command_line = format!("git {}", args.join(" "));
        let clock = EPOCH + 60 * self.inner.commits.load(Ordering::SeqCst);
        let date = format!("@{clock} +0000");
        let mut command = Command::new("git");
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.inner.root.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", "Fake GitLab")
            .env("GIT_AUTHOR_EMAIL", "fake@gitlab.test")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "Fake GitLab")
            .env("GIT_COMMITTER_EMAIL", "fake@gitlab.test")
            .env("GIT_COMMITTER_DATE", &date)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(index) = index {
            command.env("GIT_INDEX_FILE", index);
        }
        let spawn_error = |source| FakeError::GitSpawn {
            repo: self.inner.path.clone(),
            command: command_line.clone(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Every command fed here reads all of stdin before writing anything.
            pipe.write_all(input).map_err(spawn_error)?;
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if !output.status.success() {
            return Err(FakeError::GitFailed {
                repo: self.inner.path.clone(),
                command: command_line,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// One change of a commit.
#[derive(Debug)]
enum Change {
    File {
        path: String,
        content: Vec<u8>,
        mode: &'static str,
    },
    Remove {
        path: String,
    },
    Submodule {
        path: String,
        url: String,
        sha: String,
    },
    Lfs {
        path: String,
        content: Bytes,
    },
}

/// A commit being described; [`CommitBuilder::create`] writes it and moves the branch.
#[derive(Debug)]
#[must_use = "a commit is only made by `create`"]
pub struct CommitBuilder<'a> {
    repo: &'a RepoHandle,
    branch: String,
    message: String,
    changes: Vec<Change>,
}

impl CommitBuilder<'_> {
    /// Adds or replaces a regular file.
    pub fn file(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.changes.push(Change::File {
            path: path.to_owned(),
            content: content.into(),
            mode: "100644",
        });
        self
    }

    /// Adds or replaces an executable file.
    pub fn executable(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.changes.push(Change::File {
            path: path.to_owned(),
            content: content.into(),
            mode: "100755",
        });
        self
    }

    /// Adds or replaces a Git LFS file: the commit holds its pointer and a `.gitattributes`
    /// line, the fake's LFS API serves the content.
    pub fn lfs_file(mut self, path: &str, content: impl Into<Bytes>) -> Self {
        self.changes.push(Change::Lfs {
            path: path.to_owned(),
            content: content.into(),
        });
        self
    }

    /// Removes a file (or submodule entry; `.gitmodules` is left alone).
    pub fn remove(mut self, path: &str) -> Self {
        self.changes.push(Change::Remove {
            path: path.to_owned(),
        });
        self
    }

    /// Adds submodule `sub` at `path`, pinned to commit `sha`, recorded in `.gitmodules` with
    /// `sub`'s absolute URL (without credentials).
    pub fn submodule(self, path: &str, sub: &RepoHandle, sha: &str) -> Self {
        let url = sub.url().to_owned();
        self.submodule_url(path, &url, sha)
    }

    /// Adds a submodule at `path` with `url` as written in `.gitmodules` (for example a
    /// relative `../other.git`), pinned to commit `sha`.
    pub fn submodule_url(mut self, path: &str, url: &str, sha: &str) -> Self {
        self.changes.push(Change::Submodule {
            path: path.to_owned(),
            url: url.to_owned(),
            sha: sha.to_owned(),
        });
        self
    }

    /// Writes the commit, moves the branch to it and returns its id.
    pub fn create(self) -> Result<String, FakeError> {
        let repo = self.repo;
        let branch_ref = format!("refs/heads/{}", self.branch);
        let parent = repo.resolve(&branch_ref)?;
        let scratch = tempfile::Builder::new()
            .prefix(".commit-")
            .tempdir_in(repo.inner.root.path())
            .map_err(|source| FakeError::RepoRoot { source })?;
        let index = scratch.path().join("index");
        let git = |args: &[&str], stdin: Option<&[u8]>| {
            let git_dir = format!("--git-dir={}", repo.inner.git_dir.display());
            let mut full = vec![git_dir.as_str()];
            full.extend(args);
            repo.run(Some(&index), &full, stdin)
        };
        match &parent {
            Some(parent) => git(&["read-tree", parent], None)?,
            None => git(&["read-tree", "--empty"], None)?,
        };
        // The content of `path` in the scratch index, newline-terminated, or "".
        let staged_blob = |path: &str| -> Result<String, FakeError> {
            let staged = git(&["ls-files", "--stage", "--", path], None)?;
            Ok(match staged.split_whitespace().nth(1) {
                Some(blob) => git(&["cat-file", "blob", blob], None)? + "\n",
                None => String::new(),
            })
        };
        let mut submodules = Vec::new();
        let mut lfs_paths = Vec::new();
        for change in &self.changes {
            match change {
                Change::File {
                    path,
                    content,
                    mode,
                } => {
                    let blob = git(&["hash-object", "-w", "--stdin"], Some(content))?;
                    let info = format!("{mode},{blob},{path}");
                    git(&["update-index", "--add", "--cacheinfo", &info], None)?;
                }
                Change::Remove { path } => {
                    // Mode 0 removes the entry; `--force-remove` would need a work tree.
                    let entry = format!("0 {NULL_SHA}\t{path}\n");
                    git(&["update-index", "--index-info"], Some(entry.as_bytes()))?;
                }
                Change::Submodule { path, url, sha } => {
                    let info = format!("160000,{sha},{path}");
                    git(&["update-index", "--add", "--cacheinfo", &info], None)?;
                    submodules.push((path, url));
                }
                Change::Lfs { path, content } => {
                    let oid = format!("{:x}", Sha256::digest(content));
                    let pointer = format!(
                        "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
                        content.len()
                    );
                    let blob = git(&["hash-object", "-w", "--stdin"], Some(pointer.as_bytes()))?;
                    let info = format!("100644,{blob},{path}");
                    git(&["update-index", "--add", "--cacheinfo", &info], None)?;
                    repo.known().lfs.insert(oid, content.clone());
                    lfs_paths.push(path);
                }
            }
        }
        if !submodules.is_empty() {
            let modules = scratch.path().join("gitmodules");
            let current = staged_blob(".gitmodules")?;
            std::fs::write(&modules, current).map_err(|source| FakeError::RepoFile {
                repo: repo.inner.path.clone(),
                path: modules.clone(),
                source,
            })?;
            let modules_arg = modules.to_string_lossy().into_owned();
            for (path, url) in submodules {
                for (key, value) in [("path", path), ("url", url)] {
                    let key = format!("submodule.{path}.{key}");
                    git(&["config", "-f", &modules_arg, &key, value], None)?;
                }
            }
            let blob = git(&["hash-object", "-w", &modules_arg], None)?;
            let info = format!("100644,{blob},.gitmodules");
            git(&["update-index", "--add", "--cacheinfo", &info], None)?;
        }
        if !lfs_paths.is_empty() {
            let mut attributes = staged_blob(".gitattributes")?;
            for path in lfs_paths {
                attributes.push_str(&format!("{path} filter=lfs diff=lfs merge=lfs -text\n"));
            }
            let blob = git(
                &["hash-object", "-w", "--stdin"],
                Some(attributes.as_bytes()),
            )?;
            let info = format!("100644,{blob},.gitattributes");
            git(&["update-index", "--add", "--cacheinfo", &info], None)?;
        }
        let tree = git(&["write-tree"], None)?;
        let mut commit_tree = vec!["commit-tree", tree.as_str(), "-m", self.message.as_str()];
        if let Some(parent) = &parent {
            commit_tree.extend(["-p", parent.as_str()]);
        }
        let sha = git(&commit_tree, None)?;
        let old = parent.as_deref().unwrap_or(NULL_SHA);
        git(&["update-ref", &branch_ref, &sha, old], None)?;
        repo.inner.commits.fetch_add(1, Ordering::SeqCst);
        repo.known().parents.insert(sha.clone(), parent);
        Ok(sha)
    }
}
