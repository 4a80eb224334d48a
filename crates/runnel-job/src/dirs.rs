//! Where a job lives on the executor: builds dir, project dir, its `.tmp` sibling and the cache
//! dir (reference section 4.4).
//!
//! Paths are the executor's paths (POSIX, `/`-separated), computed as strings: nothing here
//! touches the filesystem or resolves symlinks.

use runnel_types::JobSpec;

use crate::options::PlanOptions;
use crate::settings::GitStrategy;

/// The directories of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directories {
    /// `CI_BUILDS_DIR`.
    pub builds_dir: String,
    /// `CI_PROJECT_DIR`: where the sources are checked out and scripts run.
    pub project_dir: String,
    /// `RUNNER_TEMP_PROJECT_DIR` (`<project dir>.tmp`): file variables, env file, git config.
    pub temp_dir: String,
    /// The job's cache dir (`<cache dir>/<project slug>`).
    pub cache_dir: String,
}

/// The project dir relative to the builds dir when `GIT_CLONE_PATH` is not used.
pub(crate) fn unique_dir(job: &JobSpec, opts: &PlanOptions, strategy: GitStrategy) -> String {
    let slug = project_slug(job);
    let shared = opts
        .shared_builds_dir
        .unwrap_or_else(|| opts.executor.has_shared_builds_dir());
    let dir = if shared {
        format!("{}/{}/{slug}", opts.short_token, opts.concurrent_project_id)
    } else {
        slug
    };
    with_strategy_suffix(dir, strategy)
}

/// The cache subdirectory: the project slug, never nested by token or slot.
pub(crate) fn cache_subdir(job: &JobSpec, strategy: GitStrategy) -> String {
    with_strategy_suffix(project_slug(job), strategy)
}

fn with_strategy_suffix(dir: String, strategy: GitStrategy) -> String {
    if strategy == GitStrategy::Empty {
        format!("{dir}-empty")
    } else {
        dir
    }
}

/// `<namespace>/<project>` from the repository URL (without `.git`), or `project-<id>`.
pub fn project_slug(job: &JobSpec) -> String {
    slug_from_url(job.git.repo_url.expose())
        .unwrap_or_else(|| format!("project-{}", job.info.project_id))
}

fn slug_from_url(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (_, path) = after_scheme.split_once('/')?;
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.strip_suffix(".git").unwrap_or(path);
    let cleaned = clean_path(path);
    let cleaned = cleaned.trim_start_matches('/');
    let escapes = cleaned == ".." || cleaned.starts_with("../");
    (!cleaned.is_empty() && cleaned != "." && !escapes).then(|| cleaned.to_owned())
}

/// Joins two POSIX paths.
pub(crate) fn join(base: &str, rest: &str) -> String {
    if rest.is_empty() {
        return base.to_owned();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rest.trim_start_matches('/')
    )
}

/// Lexically cleans a POSIX path like Go's `path.Clean` (`.`/`..`/duplicate slashes).
pub(crate) fn clean_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Whether `path` is `dir` itself or below it (both already cleaned).
pub(crate) fn is_within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_from_urls() {
        let s = |u: &str| slug_from_url(u);
        assert_eq!(
            s("https://gitlab-ci-token:x@gitlab.example.com/group/sub/proj.git").as_deref(),
            Some("group/sub/proj")
        );
        assert_eq!(s("https://h/a/b").as_deref(), Some("a/b"));
        assert_eq!(s("https://h/"), None);
        assert_eq!(s("https://h/../../etc"), None);
        assert_eq!(s("not a url"), None);
    }

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_path("/a/b/../c//./d/"), "/a/c/d");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("a/../../b"), "../b");
        assert!(is_within("/builds/x", "/builds"));
        assert!(is_within("/builds", "/builds/"));
        assert!(!is_within("/buildsx", "/builds"));
    }
}
