//! The project as git sees it: facts for the predefined variables (read from the user's own
//! repository, never written), and the snapshot commit the jobs check out.
//!
//! The snapshot is the working tree as it is, uncommitted and untracked-but-not-ignored files
//! included: `git add -A` into a private index and object store (`.runnel/git/source.git`, with
//! `GIT_WORK_TREE` pointing at the project), `write-tree`, `commit-tree` with the real HEAD's
//! message and author. The user's `.git` is only read (`rev-parse`, `log`, `diff`), with
//! `GIT_OPTIONAL_LOCKS=0` so that not even the index stat cache is refreshed.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::error::ExecError;

/// What the user's checkout says about the pipeline GitLab would create for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoFacts {
    /// Whether the project directory is inside a git work tree.
    pub is_repo: bool,
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// The real HEAD commit, when there is one.
    pub head: Option<String>,
    pub message: String,
    pub author_name: String,
    pub author_email: String,
    /// ISO 8601 author date of HEAD.
    pub author_date: String,
    pub default_branch: String,
    /// `group/project`, from the `origin` remote, else `local/<directory name>`.
    pub project_path: String,
    /// The GitLab instance of the `origin` remote (`https://gitlab.example.com`), without
    /// credentials; `None` without a network remote.
    pub server_url: Option<String>,
    /// The project is a directory below its work tree's top level (`runnel exec -C
    /// examples/demo` in a clone): HEAD's tree is the whole repository's, so jobs always get a
    /// snapshot commit of the project directory.
    pub in_subdirectory: bool,
    /// Files changed by HEAD plus uncommitted and untracked ones, relative to the project
    /// directory and within it; `None` outside a repo.
    pub changed_files: Option<Vec<String>>,
    /// Whether the working tree differs from HEAD (changes, or untracked files that are not
    /// ignored); true outside a repository and when git cannot tell.
    pub dirty: bool,
}

async fn git_in(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Result<String, ExecError> {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().await.map_err(|error| ExecError::Git {
        args: args.join(" "),
        dir: dir.to_path_buf(),
        message: format!("cannot start git: {error}"),
    })?;
    if !output.status.success() {
        return Err(ExecError::Git {
            args: args.join(" "),
            dir: dir.to_path_buf(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A read-only query of the user's repository: `None` when git says no.
async fn query(dir: &Path, args: &[&str]) -> Option<String> {
    git_in(dir, args, &[])
        .await
        .ok()
        .map(|out| out.trim_end_matches('\n').to_owned())
        .filter(|out| !out.is_empty())
}

/// `group/sub/project` from a remote URL (`https://host/group/project.git`,
/// `git@host:group/project.git`, `ssh://git@host:22/group/project`).
pub(crate) fn project_path_from_url(url: &str) -> Option<String> {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => url.split_once(':')?.1,
    };
    let path = rest
        .trim_matches('/')
        .trim_end_matches(".git")
        .trim_matches('/');
    (path.contains('/') && !path.split('/').any(|s| s.is_empty() || s == ".."))
        .then(|| path.to_owned())
}

/// The web URL of the GitLab instance behind a remote URL: `https://host[:port]` for HTTP(S)
/// remotes (credentials dropped), `https://host` for SSH and git remotes (their port is not the
/// web port); `None` for local paths.
pub(crate) fn server_url_from_remote(url: &str) -> Option<String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => {
            // scp-like `user@host:path`; a plain path has no `:` before its first `/`.
            let (host_part, _) = url.split_once(':')?;
            if host_part.contains('/') || host_part.is_empty() {
                return None;
            }
            let host = host_part.rsplit('@').next()?;
            return valid_host(host).then(|| format!("https://{host}"));
        }
    };
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    match scheme.as_str() {
        "http" | "https" => {
            let host = host_port.split(':').next()?;
            valid_host(host).then(|| format!("{scheme}://{host_port}"))
        }
        "ssh" | "git" | "git+ssh" | "ssh+git" => {
            let host = host_port.split(':').next()?;
            valid_host(host).then(|| format!("https://{host}"))
        }
        _ => None,
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Reads the facts of the checkout at `dir` (never writing to it).
pub async fn read_facts(dir: &Path) -> RepoFacts {
    let dir_name = dir
        .file_name()
        .map(|n| crate::slug_or(&n.to_string_lossy(), "project"))
        .unwrap_or_else(|| "project".to_owned());
    let local_path = format!("local/{dir_name}");
    if query(dir, &["rev-parse", "--is-inside-work-tree"])
        .await
        .as_deref()
        != Some("true")
    {
        return RepoFacts {
            default_branch: "main".to_owned(),
            project_path: local_path,
            dirty: true,
            ..RepoFacts::default()
        };
    }
    let in_subdirectory = query(dir, &["rev-parse", "--show-prefix"])
        .await
        .is_some_and(|prefix| !prefix.is_empty());
    let branch = query(dir, &["symbolic-ref", "--short", "-q", "HEAD"]).await;
    let head = query(dir, &["rev-parse", "-q", "--verify", "HEAD^{commit}"]).await;
    let tag = match (&branch, &head) {
        (None, Some(_)) => query(dir, &["describe", "--tags", "--exact-match", "HEAD"]).await,
        _ => None,
    };
    let log = match head {
        Some(_) => query(dir, &["log", "-1", "--format=%an%x00%ae%x00%aI%x00%B"]).await,
        None => None,
    };
    let mut parts = log.as_deref().unwrap_or("").splitn(4, '\0');
    let mut next = || parts.next().unwrap_or("").to_owned();
    let (author_name, author_email, author_date, message) = (next(), next(), next(), next());
    let default_branch = match query(
        dir,
        &["symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD"],
    )
    .await
    {
        Some(origin) => origin.trim_start_matches("origin/").to_owned(),
        None => match query(dir, &["config", "init.defaultBranch"]).await {
            Some(configured) => configured,
            None => "main".to_owned(),
        },
    };
    let origin = query(dir, &["remote", "get-url", "origin"]).await;
    let project_path = origin
        .as_deref()
        .and_then(project_path_from_url)
        .unwrap_or(local_path);
    let server_url = origin.as_deref().and_then(server_url_from_remote);
    let mut changed = Vec::new();
    let lists: [&[&str]; 3] = [
        &[
            "diff-tree",
            "--no-commit-id",
            "--name-only",
            "--relative",
            "-r",
            "--root",
            "HEAD",
        ],
        &["diff", "--name-only", "--relative", "HEAD"],
        &["ls-files", "--others", "--exclude-standard"],
    ];
    for args in lists {
        if let Some(out) = query(dir, args).await {
            changed.extend(out.lines().map(str::to_owned));
        }
    }
    changed.sort();
    changed.dedup();
    let dirty = match git_in(
        dir,
        &[
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            ".",
        ],
        &[],
    )
    .await
    {
        Ok(out) => !out.trim().is_empty(),
        Err(_) => true,
    };
    RepoFacts {
        is_repo: true,
        branch,
        tag,
        head,
        message: message.trim_end_matches('\n').to_owned(),
        author_name,
        author_email,
        author_date,
        default_branch,
        project_path,
        server_url,
        changed_files: Some(changed),
        dirty,
        in_subdirectory,
    }
}

/// The snapshot: a commit of the working tree in `.runnel/git/source.git`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The commit jobs check out (`CI_COMMIT_SHA`).
    pub sha: String,
    /// The bare repository served over smart HTTP.
    pub repo: PathBuf,
    /// True when `sha` is HEAD itself (a clean working tree), false for a snapshot commit.
    pub is_head: bool,
}

/// Commits the working tree of `project` into `state_dir/git/source.git` and points `refs` at it.
pub async fn snapshot(
    project: &Path,
    state_dir: &Path,
    facts: &RepoFacts,
    refs: &[String],
) -> Result<Snapshot, ExecError> {
    let git_dir = state_dir.join("git");
    let repo = git_dir.join("source.git");
    if !repo.join("HEAD").exists() {
        std::fs::create_dir_all(&git_dir).map_err(ExecError::io("create", &git_dir))?;
        let repo_arg = repo.to_string_lossy().into_owned();
        git_in(project, &["init", "-q", "--bare", &repo_arg], &[]).await?;
    }
    // The user's own excludes apply too, and `.runnel/` itself is never part of the source.
    let mut exclude = String::from("/.runnel/\n");
    if facts.is_repo
        && let Some(info) = query(project, &["rev-parse", "--git-path", "info/exclude"]).await
        && let Ok(text) = std::fs::read_to_string(project.join(info))
    {
        exclude.push_str(&text);
    }
    let info_dir = repo.join("info");
    std::fs::create_dir_all(&info_dir).map_err(ExecError::io("create", &info_dir))?;
    let exclude_path = info_dir.join("exclude");
    std::fs::write(&exclude_path, exclude).map_err(ExecError::io("write", &exclude_path))?;

    // The user's objects are reachable from the snapshot repository (read-only, through
    // `objects/info/alternates`), so a clean tree is served as HEAD itself and a dirty one
    // stores only what changed.
    let alternates = repo.join("objects").join("info").join("alternates");
    let objects = match facts.is_repo {
        true => query(
            project,
            &[
                "rev-parse",
                "--path-format=absolute",
                "--git-path",
                "objects",
            ],
        )
        .await
        .filter(|path| Path::new(path).is_dir()),
        false => None,
    };
    match &objects {
        Some(objects) => {
            if let Some(parent) = alternates.parent() {
                std::fs::create_dir_all(parent).map_err(ExecError::io("create", parent))?;
            }
            std::fs::write(&alternates, format!("{objects}\n"))
                .map_err(ExecError::io("write", &alternates))?;
            // A shallow checkout's boundary commits have no parents here either.
            let shallow = repo.join("shallow");
            match query(
                project,
                &[
                    "rev-parse",
                    "--path-format=absolute",
                    "--git-path",
                    "shallow",
                ],
            )
            .await
            .and_then(|path| std::fs::read_to_string(path).ok())
            {
                Some(text) => {
                    std::fs::write(&shallow, text).map_err(ExecError::io("write", &shallow))?
                }
                None => remove_if_present(&shallow)?,
            }
        }
        None => remove_if_present(&alternates)?,
    }
    if objects.is_some()
        && !facts.dirty
        && !facts.in_subdirectory
        && let Some(head) = &facts.head
    {
        let envs: [(&str, &Path); 1] = [("GIT_DIR", &repo)];
        for name in refs {
            git_in(project, &["update-ref", name, head], &envs).await?;
        }
        return Ok(Snapshot {
            sha: head.clone(),
            repo,
            is_head: true,
        });
    }

    let index = git_dir.join("index");
    let envs: [(&str, &Path); 3] = [
        ("GIT_DIR", &repo),
        ("GIT_WORK_TREE", project),
        ("GIT_INDEX_FILE", &index),
    ];
    git_in(project, &["add", "-A", "--ignore-errors", "."], &envs).await?;
    let tree = git_in(project, &["write-tree"], &envs).await?;
    let tree = tree.trim();
    let message = if facts.message.trim().is_empty() {
        "runnel exec: working tree snapshot".to_owned()
    } else {
        facts.message.clone()
    };
    let name = if facts.author_name.is_empty() {
        "Runnel"
    } else {
        &facts.author_name
    };
    let email = if facts.author_email.is_empty() {
        "runnel@localhost"
    } else {
        &facts.author_email
    };
    let mut command = Command::new("git");
    command
        .args(["commit-tree", tree, "-m", &message])
        .current_dir(project)
        .env("GIT_DIR", &repo)
        .env("GIT_INDEX_FILE", &index)
        .env("GIT_AUTHOR_NAME", name)
        .env("GIT_AUTHOR_EMAIL", email)
        .env("GIT_COMMITTER_NAME", name)
        .env("GIT_COMMITTER_EMAIL", email)
        .stdin(Stdio::null());
    if !facts.author_date.is_empty() {
        command.env("GIT_AUTHOR_DATE", &facts.author_date);
    }
    let output = command.output().await.map_err(|error| ExecError::Git {
        args: "commit-tree".to_owned(),
        dir: repo.clone(),
        message: error.to_string(),
    })?;
    if !output.status.success() {
        return Err(ExecError::Git {
            args: "commit-tree".to_owned(),
            dir: repo.clone(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    for name in refs {
        git_in(project, &["update-ref", name, &sha], &envs).await?;
    }
    Ok(Snapshot {
        sha,
        repo,
        is_head: false,
    })
}

/// Removes `path`; a file that is not there is fine.
fn remove_if_present(path: &Path) -> Result<(), ExecError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(ExecError::io("remove", path)(error))
        }
        _ => Ok(()),
    }
}

/// The last commit of the user's repository that touched `files` (for `cache:key:files`).
pub(crate) fn last_commit_of(project: &Path, files: &[String]) -> Option<String> {
    let mut command = std::process::Command::new("git");
    command
        .args(["log", "-1", "--format=%H", "--"])
        .args(files)
        .current_dir(project)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null());
    let output = command.output().ok()?;
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !sha.is_empty()).then_some(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_come_from_remote_urls() {
        let cases = [
            (
                "https://user:secret@gitlab.gnome.org/GNOME/gtk.git",
                Some("https://gitlab.gnome.org"),
            ),
            ("http://host:8080/g/p", Some("http://host:8080")),
            ("git@gitlab.com:group/proj.git", Some("https://gitlab.com")),
            ("ssh://git@host:2222/group/proj", Some("https://host")),
            ("/srv/repos/x", None),
            ("../x", None),
            ("file:///srv/x.git", None),
        ];
        for (url, expected) in cases {
            assert_eq!(server_url_from_remote(url).as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn project_paths_come_from_remote_urls() {
        let cases = [
            (
                "https://gitlab.com/group/sub/proj.git",
                Some("group/sub/proj"),
            ),
            ("git@gitlab.com:group/proj.git", Some("group/proj")),
            ("ssh://git@host:2222/group/proj", Some("group/proj")),
            ("https://host/proj.git", None),
            ("/srv/repos/x", None),
        ];
        for (url, expected) in cases {
            assert_eq!(project_path_from_url(url).as_deref(), expected, "{url}");
        }
    }
}
