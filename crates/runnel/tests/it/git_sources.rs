//! `get_sources` for real: the `runnel` binary clones and fetches repositories the fake serves
//! over git smart HTTP with the job token, through the shell executor.
//!
//! Each test registers a shell runner, queues jobs pointing at a fake repository and runs
//! `runnel run-single --max-builds 1` once per job, so later jobs reuse the same project
//! directory (slot 0). Assertions read the job trace and the checkout on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runnel_fake_gitlab::{Endpoint, GitStrategy, JobBuilder, JobView, RemoteStatus, RepoHandle};
use serde_json::json;

use crate::support::TestEnv;

const RUNNER: &str = "git";
const JOB_WAIT: Duration = Duration::from_secs(30);

struct GitTest {
    env: TestEnv,
}

impl GitTest {
    /// A registered shell runner named `git`; `runner_settings` are extra `[[runners]]` keys.
    async fn new(runner_settings: &str) -> Self {
        Self::with_tables(runner_settings, "").await
    }

    /// Like [`GitTest::new`], plus `tables` (`[runners.…]` sections) appended to the file.
    async fn with_tables(runner_settings: &str, tables: &str) -> Self {
        let env = TestEnv::new().await;
        let token = env.fake.create_runner_token();
        let args = [
            "register",
            "--non-interactive",
            "--url",
            env.url(),
            "--token",
            &token,
            "--executor",
            "shell",
            "--name",
            RUNNER,
        ];
        env.runnel(&args, "").await.assert_success();
        if !runner_settings.is_empty() {
            let text = env.config_text();
            let anchor = "executor = \"shell\"\n";
            assert!(text.contains(anchor), "unexpected config.toml:\n{text}");
            let text = text.replacen(anchor, &format!("{anchor}{runner_settings}\n"), 1);
            std::fs::write(env.config_path(), text).unwrap();
        }
        if !tables.is_empty() {
            let text = format!("{}\n{tables}\n", env.config_text());
            std::fs::write(env.config_path(), text).unwrap();
        }
        Self { env }
    }

    fn repo(&self, path: &str) -> RepoHandle {
        self.env.fake.create_repo(path).expect("repository created")
    }

    /// Queues `job`, runs one job with `runnel run-single` and returns the finished job.
    async fn run(&self, job: JobBuilder) -> JobView {
        let id = self.env.fake.enqueue(job);
        let args = ["run-single", "--runner", RUNNER, "--max-builds", "1"];
        self.env.runnel(&args, "").await.assert_success();
        self.env
            .fake
            .wait_for_job_state(id, JobView::is_finished, JOB_WAIT)
            .await
            .expect("job finished")
    }

    /// Like [`GitTest::run`], insists the job succeeded and returns its trace.
    async fn run_ok(&self, job: JobBuilder) -> String {
        self.run_ok_view(job).await.trace_text().into_owned()
    }

    /// Like [`GitTest::run`], and insists the job succeeded.
    async fn run_ok_view(&self, job: JobBuilder) -> JobView {
        let view = self.run(job).await;
        let status = view.status;
        assert_eq!(
            status,
            RemoteStatus::Success,
            "job failed:\n{}",
            view.trace_text()
        );
        view
    }

    /// The fake's `host:port`, as a credential helper stores it.
    fn host(&self) -> String {
        self.env
            .url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    }

    fn builds_dir(&self) -> PathBuf {
        self.env.dir.path().join("builds")
    }

    /// The checkout of `group/project` (the runner's only slot).
    fn project_dir(&self, project: &str) -> PathBuf {
        let found = files_under(&self.builds_dir(), true)
            .into_iter()
            .filter(|dir| dir.ends_with(project) && dir.join(".git").is_dir())
            .collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "one checkout of {project}: {found:?}");
        found.into_iter().next().unwrap()
    }
}

/// Every file (or, with `dirs`, directory) below `root`.
fn files_under(root: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if dirs {
                    found.push(path.clone());
                }
                pending.push(path);
            } else if !dirs && kind.is_file() {
                found.push(path);
            }
        }
    }
    found
}

/// Fails when a file below `root` contains `secret`.
#[track_caller]
fn assert_not_on_disk(root: &Path, secret: &str) {
    for file in files_under(root, false) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let found = bytes
            .windows(secret.len())
            .any(|window| window == secret.as_bytes());
        assert!(!found, "{} holds a credential", file.display());
    }
}

/// Runs `git` in `dir` and returns its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The `get_sources` section of a trace as a reader sees it: no timestamps or stream markers,
/// no section markers, and the run's paths, port and commit ids replaced by placeholders.
fn get_sources_section(trace: &str, test: &GitTest, shas: &[(&str, &str)]) -> String {
    let mut text = String::new();
    let mut inside = false;
    for line in trace.lines() {
        // `<RFC 3339 timestamp> <2-digit stream><O|E><'+' for a continued line, else ' '><text>`
        let content = line.split_once(' ').and_then(|(_, rest)| rest.get(4..));
        let content = content.unwrap_or_default();
        if content.contains(":get_sources\r") {
            inside = content.starts_with("section_start");
            continue;
        }
        if inside {
            text.push_str(content);
            text.push('\n');
        }
    }
    let port = test.env.url().rsplit(':').next().unwrap_or_default();
    let builds = test.builds_dir();
    let builds = builds.to_str().unwrap_or_default();
    // The short runner token names the first directory under the builds dir.
    if let Some(short) = text
        .split_once(&format!("{builds}/"))
        .and_then(|(_, rest)| rest.split('/').next())
        .map(str::to_owned)
    {
        text = text.replace(&format!("{builds}/{short}/"), "[BUILDS]/[SHORT]/");
    }
    let mut text = text.replace(&format!(":{port}/"), ":[PORT]/");
    for (sha, name) in shas {
        text = text.replace(sha, name).replace(&sha[..8], name);
    }
    text.replace('\x1b', "<ESC>")
}

/// The position of `needle` in `trace`, failing with the trace when it is missing.
#[track_caller]
fn position(trace: &str, needle: &str) -> usize {
    trace
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in trace:\n{trace}"))
}

#[tokio::test]
async fn clone_checks_out_the_job_commit_and_leaves_no_credential() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let first = repo
        .commit("main", "first")
        .file("README.md", "version one\n")
        .create()
        .unwrap();
    repo.commit("main", "second")
        .file("README.md", "version two\n")
        .create()
        .unwrap();

    let job = JobBuilder::new("build")
        .repo(&repo, "main", &first)
        .git_strategy(GitStrategy::Clone)
        // Keeps the log the same whether git-lfs is installed or not.
        .variable("GIT_LFS_SKIP_SMUDGE", "1")
        .script([
            "cat README.md",
            "echo \"head=$(git rev-parse HEAD)\"",
            // The job's own git commands reach the remote with the job token too.
            "echo \"remote=$(git ls-remote origin refs/heads/main)\"",
        ]);
    let view = test.run_ok_view(job).await;
    let trace = view.trace_text();
    assert!(trace.contains("Created fresh repository."), "{trace}");
    assert!(
        trace.contains(&format!(
            "Checking out {} as detached HEAD (ref is main)...",
            &first[..8]
        )),
        "{trace}"
    );
    assert!(trace.contains("version one\n"), "{trace}");
    assert!(trace.contains(&format!("head={first}")), "{trace}");
    insta::assert_snapshot!(
        "clone_get_sources",
        get_sources_section(&trace, &test, &[(&first, "[FIRST]")])
    );
    let main = repo.branch_head("main").unwrap().unwrap();
    assert!(
        trace.contains(&format!("remote={main}\trefs/heads/main")),
        "{trace}"
    );

    let project = test.project_dir("group/project");
    let origin = git(&project, &["remote", "get-url", "origin"]);
    assert_eq!(origin, repo.url(), "origin carries no credentials");
    let config = std::fs::read_to_string(project.join(".git/config")).unwrap();
    assert!(!config.contains("gitlab-ci-token"), "{config}");
    let token = view.token.expose();
    assert!(!trace.contains(token), "token in the trace");
    assert_not_on_disk(&test.builds_dir(), token);
    assert!(
        test.env
            .fake
            .requests()
            .iter()
            .any(|r| r.path == "/group/project.git/git-upload-pack"),
        "the sources came over HTTP"
    );
}

#[tokio::test]
async fn fetch_reuses_the_checkout_cleans_it_and_removes_stale_locks() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let first = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let fetch = |sha: &str| {
        JobBuilder::new("build")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
    };
    let trace = test
        .run_ok(fetch(&first).script(["touch untracked-marker", "mkdir -p out && touch out/x"]))
        .await;
    assert!(trace.contains("Created fresh repository."), "{trace}");
    let project = test.project_dir("group/project");
    assert!(project.join("untracked-marker").exists());

    // GIT_CLEAN_FLAGS=none keeps what the last job left.
    let second = repo
        .commit("main", "second")
        .file("b.txt", "b\n")
        .create()
        .unwrap();
    let trace = test
        .run_ok(fetch(&second).variable("GIT_CLEAN_FLAGS", "none").script([
            "test -e untracked-marker",
            "test -e out/x",
            "cat b.txt",
        ]))
        .await;
    assert!(
        trace.contains("Reinitialized existing Git repository"),
        "{trace}"
    );
    assert!(!trace.contains("Created fresh repository."), "{trace}");

    // A git killed mid-operation leaves lock files behind; the next fetch removes them.
    std::fs::write(project.join(".git/index.lock"), "").unwrap();
    std::fs::write(project.join(".git/shallow.lock"), "").unwrap();
    std::fs::write(project.join(".git/refs/heads/stale.lock"), "").unwrap();
    let third = repo
        .commit("main", "third")
        .file("c.txt", "c\n")
        .create()
        .unwrap();
    test.run_ok(fetch(&third).script([
        "test ! -e untracked-marker",
        "test ! -e out",
        "cat a.txt b.txt c.txt",
    ]))
    .await;
    assert_eq!(git(&project, &["rev-parse", "HEAD"]), third);
    assert!(!project.join(".git/index.lock").exists());
    assert!(!project.join(".git/refs/heads/stale.lock").exists());
}

/// Job script lines that plant, in the checkout a later job fetches into, what
/// `clean_git_config` exists against: a hook git runs while fetching (in `.git/hooks` and in the
/// git template dir, which `git init` copies into a repository without hooks), and
/// `core.fsmonitor`/`core.sshCommand` config, each writing a marker when run.
pub(crate) const PLANT_GIT_CONFIG_AND_HOOKS: [&str; 6] = [
    "mkdir -p .git/hooks \"$RUNNER_TEMP_PROJECT_DIR/git-template/hooks\"",
    "printf '#!/bin/sh\\ncat >/dev/null\\necho ran >> %s/.git/planted-hook-ran\\n' \"$CI_PROJECT_DIR\" > .git/hooks/reference-transaction",
    "cp .git/hooks/reference-transaction \"$RUNNER_TEMP_PROJECT_DIR/git-template/hooks/\"",
    "printf '#!/bin/sh\\necho ran >> %s/.git/planted-fsmonitor-ran\\nexit 1\\n' \"$CI_PROJECT_DIR\" > .git/planted-fsmonitor",
    "chmod +x .git/hooks/reference-transaction \"$RUNNER_TEMP_PROJECT_DIR/git-template/hooks/reference-transaction\" .git/planted-fsmonitor",
    "printf '[core]\\n\\tfsmonitor = %s/.git/planted-fsmonitor\\n\\tsshCommand = %s/.git/planted-fsmonitor\\n[user]\\n\\tname = planted\\n' \"$CI_PROJECT_DIR\" \"$CI_PROJECT_DIR\" >> .git/config",
];

/// Job script lines that report what of [`PLANT_GIT_CONFIG_AND_HOOKS`] ran or is left, with
/// busybox alone (no git in the job image).
pub(crate) const REPORT_PLANTED: [&str; 4] = [
    "if [ -e .git/planted-hook-ran ]; then echo planted-hook=ran; else echo planted-hook=none; fi",
    "if [ -e .git/planted-fsmonitor-ran ]; then echo planted-fsmonitor=ran; else echo planted-fsmonitor=none; fi",
    "if grep -q planted .git/config; then echo planted-config=left; else echo planted-config=gone; fi",
    "if [ -e .git/hooks/reference-transaction ]; then echo planted-hooks=left; else echo planted-hooks=gone; fi",
];

/// Runs a fetch job that plants git config and hooks, then a fetch job of a new commit into the
/// same checkout; returns the second job's trace.
async fn plant_then_fetch(runner_settings: &str) -> String {
    let test = GitTest::new(runner_settings).await;
    let repo = test.repo("group/project");
    let first = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let fetch = |sha: &str| {
        JobBuilder::new("build")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
    };
    test.run_ok(fetch(&first).script(PLANT_GIT_CONFIG_AND_HOOKS))
        .await;
    let second = repo
        .commit("main", "second")
        .file("b.txt", "b\n")
        .create()
        .unwrap();
    let mut report = vec!["test -f b.txt"];
    report.extend(REPORT_PLANTED);
    let trace = test.run_ok(fetch(&second).script(report)).await;
    assert!(
        trace.contains("Reinitialized existing Git repository"),
        "{trace}"
    );
    trace
}

/// `clean_git_config = true`: nothing a job planted in `.git` (or the template dir) runs in the
/// next job's git, and the planted config is gone.
#[tokio::test]
async fn clean_git_config_removes_planted_config_and_hooks_before_fetching() {
    let trace = plant_then_fetch("  clean_git_config = true").await;
    for line in [
        "planted-hook=none\n",
        "planted-fsmonitor=none\n",
        "planted-config=gone\n",
        "planted-hooks=gone\n",
    ] {
        assert!(trace.contains(line), "{line}: {trace}");
    }
}

/// The shell executor keeps the checkout's git config by default, as the official runner does
/// (`clean_git_config` defaults to off for shell): what the last job planted stays and runs.
#[tokio::test]
async fn the_shell_executor_keeps_git_config_unless_told_to_clean_it() {
    let trace = plant_then_fetch("").await;
    for line in [
        "planted-hook=ran\n",
        "planted-config=left\n",
        "planted-hooks=left\n",
    ] {
        assert!(trace.contains(line), "{line}: {trace}");
    }
}

#[tokio::test]
async fn depth_makes_a_shallow_clone_and_depth_zero_unshallows_it() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let mut head = String::new();
    for n in 1..=3 {
        head = repo
            .commit("main", &format!("commit {n}"))
            .file("n.txt", n.to_string())
            .create()
            .unwrap();
    }
    let job = |depth| {
        JobBuilder::new("build")
            .repo(&repo, "main", &head)
            .git_strategy(GitStrategy::Fetch)
            .git_depth(depth)
            .script(["echo \"commits=$(git rev-list --count HEAD)\""])
    };
    let trace = test.run_ok(job(1)).await;
    assert!(
        trace.contains("Fetching changes with git depth set to 1..."),
        "{trace}"
    );
    assert!(trace.contains("commits=1\n"), "{trace}");
    let project = test.project_dir("group/project");
    assert!(project.join(".git/shallow").exists());

    let trace = test.run_ok(job(0)).await;
    assert!(trace.contains("commits=3\n"), "{trace}");
    assert!(!project.join(".git/shallow").exists());
}

#[tokio::test]
async fn git_checkout_false_fetches_without_a_work_tree() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "hi\n")
        .create()
        .unwrap();
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .variable("GIT_CHECKOUT", "false")
                .script([
                    "test ! -e README.md",
                    &format!("git cat-file -e {sha}"),
                    "echo fetched-only",
                ]),
        )
        .await;
    assert!(trace.contains("Skipping Git checkout"), "{trace}");
    assert!(trace.contains("fetched-only"), "{trace}");
}

#[tokio::test]
async fn submodules_follow_the_strategy() {
    let test = GitTest::new("").await;
    let inner = test.repo("group/inner");
    let inner_sha = inner
        .commit("main", "inner")
        .file("inner.txt", "deepest\n")
        .create()
        .unwrap();
    let lib = test.repo("group/lib");
    let lib_sha = lib
        .commit("main", "lib")
        .file("lib.txt", "library\n")
        .submodule("nested", &inner, &inner_sha)
        .create()
        .unwrap();
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "top")
        .file("top.txt", "top\n")
        .submodule_url("libs/lib", "../lib.git", &lib_sha)
        .create()
        .unwrap();
    let job = |strategy: Option<&str>, script: &[&str]| {
        let mut job = JobBuilder::new("build")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .script(script.iter().copied());
        if let Some(strategy) = strategy {
            job = job.variable("GIT_SUBMODULE_STRATEGY", strategy);
        }
        job
    };

    let trace = test
        .run_ok(job(None, &["test ! -e libs/lib/lib.txt"]))
        .await;
    assert!(trace.contains("Skipping Git submodules setup"), "{trace}");

    let trace = test
        .run_ok(job(
            Some("normal"),
            &[
                "cat libs/lib/lib.txt",
                "test ! -e libs/lib/nested/inner.txt",
            ],
        ))
        .await;
    assert!(
        trace.contains("Updating/initializing submodules..."),
        "{trace}"
    );
    assert!(trace.contains("library\n"), "{trace}");

    let view = test
        .run_ok_view(job(Some("recursive"), &["cat libs/lib/nested/inner.txt"]))
        .await;
    let trace = view.trace_text();
    assert!(
        trace.contains("Updating/initializing submodules recursively..."),
        "{trace}"
    );
    assert!(trace.contains("deepest\n"), "{trace}");
    let project = test.project_dir("group/project");
    let sub_origin = git(&project.join("libs/lib"), &["remote", "get-url", "origin"]);
    assert_eq!(sub_origin, lib.url());
    assert_not_on_disk(&test.builds_dir(), view.token.expose());
}

#[tokio::test]
async fn a_refused_token_fails_the_job_with_a_clear_error_and_no_leak() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "hi\n")
        .create()
        .unwrap();
    let wrong = "glcbt-64_revokedTokenValue123";
    let view = test
        .run(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .clone_token(wrong)
                // The token in the URL (the official default): with FF_GIT_URLS_WITHOUT_TOKENS
                // (Runnel's default) git authenticates with $CI_JOB_TOKEN instead, which the
                // fake keeps valid.
                .variable("FF_GIT_URLS_WITHOUT_TOKENS", "false")
                .variable("GIT_LFS_SKIP_SMUDGE", "1")
                .script(["echo should-not-run"]),
        )
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(!trace.contains("should-not-run\n"), "{trace}");
    assert!(
        trace.contains("Authentication failed") || trace.contains("HTTP Basic: Access denied"),
        "the log says why:\n{trace}"
    );
    assert!(!trace.contains(wrong), "token in the trace:\n{trace}");
    insta::assert_snapshot!(
        "refused_token_get_sources",
        get_sources_section(&trace, &test, &[])
    );
    assert!(
        !trace.contains("revokedTokenValue"),
        "token in the trace:\n{trace}"
    );
}

#[tokio::test]
async fn runner_and_job_get_sources_hooks_run_around_the_clone() {
    let settings = concat!(
        "  pre_get_sources_script = \"echo runner-pre-hook\"\n",
        "  post_get_sources_script = \"echo runner-post-hook; cat README.md\"",
    );
    let test = GitTest::new(settings).await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "readme-content\n")
        .create()
        .unwrap();
    let hooks = json!([
        {"name": "pre_get_sources_script", "script": ["echo job-pre-hook"]},
        {"name": "post_get_sources_script", "script": ["echo job-post-hook"]},
    ]);
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .extra("hooks", hooks)
                .script(["echo script-ran"]),
        )
        .await;
    let order = [
        "runner-pre-hook\n",
        "job-pre-hook\n",
        "Fetching changes",
        "job-post-hook\n",
        "runner-post-hook\n",
        "readme-content\n",
        "script-ran\n",
    ]
    .map(|needle| position(&trace, needle));
    assert!(order.is_sorted(), "hooks out of order {order:?}:\n{trace}");
}

#[tokio::test]
async fn fetch_updates_submodules_and_cleans_them() {
    let test = GitTest::new("").await;
    let lib = test.repo("group/lib");
    let lib_v1 = lib
        .commit("main", "v1")
        .file("version", "lib-v1\n")
        .create()
        .unwrap();
    let repo = test.repo("group/project");
    let top_v1 = repo
        .commit("main", "top")
        .submodule("lib", &lib, &lib_v1)
        .create()
        .unwrap();
    let job = |sha: &str, script: &[&str]| {
        JobBuilder::new("build")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
            .variable("GIT_SUBMODULE_STRATEGY", "normal")
            .script(script.iter().copied())
    };
    test.run_ok(job(&top_v1, &["cat lib/version", "touch lib/untracked"]))
        .await;

    let lib_v2 = lib
        .commit("main", "v2")
        .file("version", "lib-v2\n")
        .create()
        .unwrap();
    let top_v2 = repo
        .commit("main", "bump lib")
        .submodule("lib", &lib, &lib_v2)
        .create()
        .unwrap();
    let trace = test
        .run_ok(job(
            &top_v2,
            &["cat lib/version", "test ! -e lib/untracked"],
        ))
        .await;
    assert!(trace.contains("lib-v2\n"), "{trace}");
    let project = test.project_dir("group/project");
    assert_eq!(git(&project.join("lib"), &["rev-parse", "HEAD"]), lib_v2);
}

#[tokio::test]
async fn a_tag_pipeline_fetches_and_checks_out_the_tag() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let tagged = repo
        .commit("main", "release")
        .file("f", "1")
        .create()
        .unwrap();
    repo.commit("main", "later")
        .file("f", "2")
        .create()
        .unwrap();
    repo.create_tag("v1.0", &tagged).unwrap();
    let trace = test
        .run_ok(
            JobBuilder::new("release")
                .repo(&repo, "v1.0", &tagged)
                .git_depth(5)
                .script([
                    "echo \"described=$(git describe --tags)\"",
                    "echo \"tag=$CI_COMMIT_TAG\"",
                ]),
        )
        .await;
    assert!(
        trace.contains(&format!(
            "Checking out {} as detached HEAD (ref is v1.0)...",
            &tagged[..8]
        )),
        "{trace}"
    );
    assert!(trace.contains("described=v1.0\n"), "{trace}");
    assert!(trace.contains("tag=v1.0\n"), "{trace}");
}

#[tokio::test]
async fn get_sources_attempts_retry_a_failed_fetch() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "retried\n")
        .create()
        .unwrap();
    test.env.fake.fail_next(Endpoint::GitHttp, 1, 500);
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .variable("GET_SOURCES_ATTEMPTS", "2")
                .script(["cat README.md"]),
        )
        .await;
    let failure = position(&trace, "The requested URL returned error: 500");
    let success = position(&trace, "retried\n");
    assert!(failure < success, "{trace}");

    let view = test
        .run(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .script(["cat README.md"]),
        )
        .await;
    assert_eq!(view.status, RemoteStatus::Success, "a fault is used up");
}

fn git_lfs_installed() -> bool {
    std::process::Command::new("git")
        .args(["lfs", "version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[tokio::test]
async fn lfs_files_are_pulled_unless_smudging_is_skipped() {
    assert!(
        git_lfs_installed(),
        "this test needs git-lfs (`apt-get install git-lfs`; .ci/run installs it)"
    );
    let test = GitTest::new("").await;
    // What an admin does once on a shell runner host: the LFS filters in the global config of
    // the user running the jobs (the tests give `runnel` the temp dir as HOME).
    let install = std::process::Command::new("git")
        .args(["lfs", "install", "--skip-repo"])
        .env("HOME", test.env.dir.path())
        .output()
        .expect("git lfs install runs");
    assert!(install.status.success(), "{install:?}");
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "lfs")
        .lfs_file("assets/big.bin", "large lfs content\n")
        .create()
        .unwrap();
    let job = || {
        JobBuilder::new("build")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .script(["cat assets/big.bin"])
    };
    let trace = test.run_ok(job()).await;
    assert!(trace.contains("large lfs content\n"), "{trace}");
    assert!(
        test.env
            .fake
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/info/lfs/objects/batch")),
        "the content came through the LFS API"
    );

    let trace = test
        .run_ok(job().variable("GIT_LFS_SKIP_SMUDGE", "1"))
        .await;
    assert!(trace.contains("oid sha256:"), "a pointer file:\n{trace}");
    assert!(!trace.contains("large lfs content"), "{trace}");
}

#[tokio::test]
async fn force_https_rewrites_ssh_submodule_urls_of_the_instance() {
    let test = GitTest::new("").await;
    let lib = test.repo("group/lib");
    let lib_sha = lib
        .commit("main", "lib")
        .file("lib.txt", "over https\n")
        .create()
        .unwrap();
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "top")
        .submodule_url("lib", "git@127.0.0.1:group/lib.git", &lib_sha)
        .submodule_url("ssh-lib", "ssh://git@127.0.0.1/group/lib.git", &lib_sha)
        .create()
        .unwrap();
    let view = test
        .run_ok_view(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .variable("GIT_SUBMODULE_STRATEGY", "normal")
                .variable("GIT_SUBMODULE_FORCE_HTTPS", "true")
                .script(["cat lib/lib.txt ssh-lib/lib.txt"]),
        )
        .await;
    let trace = view.trace_text();
    assert_eq!(trace.matches("over https\n").count(), 2, "{trace}");
    assert_not_on_disk(&test.builds_dir(), view.token.expose());
}

#[tokio::test]
async fn urls_without_tokens_authenticate_through_the_credential_helper() {
    let test = GitTest::new("").await;
    let lib = test.repo("group/lib");
    let lib_sha = lib
        .commit("main", "lib")
        .file("lib.txt", "helper-auth\n")
        .create()
        .unwrap();
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "top")
        .submodule_url("lib", "../lib.git", &lib_sha)
        .create()
        .unwrap();
    let view = test
        .run_ok_view(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .variable("FF_GIT_URLS_WITHOUT_TOKENS", "true")
                .variable("GIT_SUBMODULE_STRATEGY", "normal")
                .script([
                    "cat lib/lib.txt",
                    "ext=\"$RUNNER_TEMP_PROJECT_DIR/.gitlab-runner.ext.conf\"",
                    "echo \"token-urls=$(grep -c gitlab-ci-token: \"$ext\")\"",
                    "echo \"helpers=$(grep -c helper \"$ext\")\"",
                ]),
        )
        .await;
    let trace = view.trace_text();
    assert!(trace.contains("helper-auth\n"), "{trace}");
    assert!(
        trace.contains("token-urls=0\n"),
        "no token in any URL:\n{trace}"
    );
    assert!(trace.contains("helpers=1\n"), "{trace}");
    assert_not_on_disk(&test.builds_dir(), view.token.expose());
}

#[tokio::test]
async fn git_clone_path_puts_the_checkout_where_the_job_asks() {
    let test = GitTest::with_tables("", "[runners.custom_build_dir]\n  enabled = true").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "custom place\n")
        .create()
        .unwrap();
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .variable("GIT_CLONE_PATH", "$CI_BUILDS_DIR/custom/checkout")
                .script(["echo \"dir=$(pwd)\"", "cat README.md"]),
        )
        .await;
    let expected = test.builds_dir().join("custom/checkout");
    assert!(
        trace.contains(&format!("dir={}\n", expected.display())),
        "{trace}"
    );
    assert!(trace.contains("custom place\n"), "{trace}");
    assert_eq!(git(&expected, &["rev-parse", "HEAD"]), sha);
}

#[tokio::test]
async fn clone_url_replaces_the_remote_and_brings_the_job_token() {
    let test = GitTest::new("").await;
    // The job's repo_url carries a token the fake refuses and names 127.0.0.1; clone_url names
    // the same server as `localhost`, so only the rewritten URL (with the job's own token) works.
    let clone_url = test.env.url().replace("127.0.0.1", "localhost");
    assert_ne!(clone_url, test.env.url(), "the fake listens on 127.0.0.1");
    let text = test.env.config_text().replacen(
        "executor = \"shell\"\n",
        &format!("executor = \"shell\"\nclone_url = \"{clone_url}/\"\n"),
        1,
    );
    std::fs::write(test.env.config_path(), text).unwrap();
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "through clone_url\n")
        .create()
        .unwrap();
    let view = test
        .run_ok_view(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .clone_token("refused-token")
                .variable("GIT_LFS_SKIP_SMUDGE", "1")
                .script(["cat README.md"]),
        )
        .await;
    let trace = view.trace_text();
    assert!(trace.contains("through clone_url\n"), "{trace}");
    let project = test.project_dir("group/project");
    assert_eq!(
        git(&project, &["config", "--get", "remote.origin.url"]),
        format!("{clone_url}/group/project.git"),
        "origin is the clone_url remote, without credentials"
    );
    assert!(!trace.contains(view.token.expose()), "token in the trace");
}

#[tokio::test]
async fn strategies_none_and_empty_skip_git() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "kept\n")
        .create()
        .unwrap();
    let job = || JobBuilder::new("build").repo(&repo, "main", &sha);
    test.run_ok(job().git_strategy(GitStrategy::Fetch).script(["true"]))
        .await;
    let git_requests = || {
        test.env
            .fake
            .requests()
            .iter()
            .filter(|r| r.path.contains(".git/"))
            .count()
    };
    let before = git_requests();

    let trace = test
        .run_ok(
            job()
                .git_strategy(GitStrategy::None)
                .script(["cat README.md"]),
        )
        .await;
    assert!(trace.contains("Skipping Git repository setup"), "{trace}");
    assert!(
        trace.contains("kept\n"),
        "the last checkout is used as is:\n{trace}"
    );

    let trace = test
        .run_ok(
            job()
                .git_strategy(GitStrategy::Empty)
                .script(["echo \"entries=$(ls -A | wc -l)\""]),
        )
        .await;
    assert!(
        trace.contains("Skipping Git repository setup and creating an empty build directory"),
        "{trace}"
    );
    assert!(trace.contains("entries=0\n"), "{trace}");
    assert_eq!(
        git_requests(),
        before,
        "no git traffic without a git strategy"
    );
}

/// Scans every process's arguments for `needle` until `stop` is set; returns what it saw.
fn watch_argv(
    needle: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                    && cmdline
                        .windows(needle.len())
                        .any(|w| w == needle.as_bytes())
                {
                    seen.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    })
}

/// Review M4 (`procwatch.py`, `out-filevar`) and M5 (`scratch/p8`): the job token was in the
/// arguments of `git config` and `git-remote-http` for the whole fetch, file variables and the
/// ext config were world-readable, and a `<project>.tmp` symlink planted by an earlier job made
/// the next job write its secrets through it. Now git gets the token from a credential helper,
/// the temp dir is a fresh 0700 directory (a planted link is removed, never followed) and secret
/// files are 0600.
#[tokio::test]
async fn the_job_token_reaches_no_argv_and_secret_files_stay_private() {
    let test = GitTest::new("").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("README.md", "private\n")
        .create()
        .unwrap();
    test.run_ok(
        JobBuilder::new("first")
            .repo(&repo, "main", &sha)
            .script(["true"]),
    )
    .await;
    // What an earlier job (or a process it left behind) plants for the next one.
    let project = test.project_dir("group/project");
    let stolen = test.env.dir.path().join("stolen");
    std::fs::create_dir(&stolen).unwrap();
    let temp = PathBuf::from(format!("{}.tmp", project.display()));
    std::fs::remove_dir_all(&temp).ok();
    std::os::unix::fs::symlink(&stolen, &temp).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_argv("gitlab-ci-token:", std::sync::Arc::clone(&stop));
    let view = test
        .run_ok_view(
            JobBuilder::new("victim")
                .repo(&repo, "main", &sha)
                .file_variable("DEPLOY_KEY", "deploy-key-material")
                .script([
                    "stat -c 'key=%a' \"$DEPLOY_KEY\"",
                    "stat -c 'tmp=%a' \"$RUNNER_TEMP_PROJECT_DIR\"",
                    "test -L \"$RUNNER_TEMP_PROJECT_DIR\" && echo tmp-is-link || echo tmp-is-dir",
                    // `[:]`: the watcher must not find this command's own argument.
                    "echo \"ext-tokens=$(grep -c 'gitlab-ci-token[:]' \"$RUNNER_TEMP_PROJECT_DIR/.gitlab-runner.ext.conf\")\"",
                ]),
        )
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let trace = view.trace_text();
    assert!(
        seen.is_empty(),
        "the job token was in process arguments: {seen:?}"
    );
    for line in ["key=600\n", "tmp=700\n", "tmp-is-dir\n", "ext-tokens=0\n"] {
        assert!(trace.contains(line), "{line:?} missing from:\n{trace}");
    }
    assert_eq!(
        std::fs::read_dir(&stolen).unwrap().count(),
        0,
        "nothing was written through the planted link"
    );
    // The job's end empties the temp dir and keeps it (0700) for the next job.
    let kept = std::fs::symlink_metadata(&temp).unwrap();
    assert!(kept.is_dir(), "a directory, not the planted link");
    assert_eq!(
        std::fs::read_dir(&temp).unwrap().count(),
        0,
        "nothing of the job is left in it"
    );
    assert_not_on_disk(&test.builds_dir(), view.token.expose());
}

/// Job script lines that hand the checkout to another user (uid 4242), as a job whose image
/// runs as a non-root user leaves it; git then refuses to work in it for anyone else unless
/// the directory is in `safe.directory`.
const CHOWN_CHECKOUT: [&str; 1] = ["chown -R 4242:4242 \"$CI_PROJECT_DIR\""];

/// Runs a fetch job that hands its checkout to another user, then a fetch job of a new commit
/// into it; returns the second job.
async fn foreign_checkout_then_fetch(test: &GitTest) -> JobView {
    let repo = test.repo("group/project");
    let first = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let fetch = |sha: &str| {
        JobBuilder::new("build")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
    };
    test.run_ok(fetch(&first).script(CHOWN_CHECKOUT)).await;
    let second = repo
        .commit("main", "second")
        .file("b.txt", "b\n")
        .create()
        .unwrap();
    test.run(fetch(&second).script(["cat b.txt"])).await
}

/// `safe_directory_checkout = true`: git fetches into a checkout another user owns, because
/// `get_sources` added the project dir to the global `safe.directory` list (in the job's
/// `$HOME/.gitconfig`, here the test's home), once however many jobs run.
#[tokio::test]
async fn safe_directory_checkout_lets_git_fetch_into_a_checkout_another_user_owns() {
    let test = GitTest::new("  safe_directory_checkout = true").await;
    let view = foreign_checkout_then_fetch(&test).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.lines().any(|line| line.ends_with(" b")), "{trace}");
    let project = test.project_dir("group/project");
    let gitconfig = std::fs::read_to_string(test.env.dir.path().join(".gitconfig"))
        .expect("the global git config was written");
    let entries: Vec<&str> = gitconfig
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("directory = "))
        .collect();
    assert_eq!(
        entries,
        [format!("directory = {}", project.display())],
        "{gitconfig}"
    );
}

/// The shell executor leaves `safe.directory` alone by default (as the official runner): the
/// same fetch fails, with git's own reason in the log.
#[tokio::test]
async fn the_shell_executor_adds_no_safe_directory_unless_told_to() {
    let test = GitTest::new("").await;
    let view = foreign_checkout_then_fetch(&test).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(trace.contains("dubious ownership"), "{trace}");
    assert!(!test.env.dir.path().join(".gitconfig").exists());
}

/// `git credential reject` at the end of `get_sources` and of the job: a credential helper the
/// host set up (`credential.helper=store`) keeps the job token neither from the fetch (git hands
/// it every credential that worked) nor from the job script; other credentials stay.
#[tokio::test]
async fn a_credential_helper_forgets_the_job_token_after_get_sources_and_after_the_job() {
    let test = GitTest::new("").await;
    let home = test.env.dir.path();
    let store = home.join("stored-credentials");
    std::fs::write(&store, "https://keeper:kept@example.invalid\n").unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        format!(
            "[credential]\n\thelper = store --file={}\n",
            store.display()
        ),
    )
    .unwrap();
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let host = test.host();
    let store_path = store.display().to_string();
    let report = format!(
        "if grep -q gitlab-ci-token {store_path}; then echo stored=token; else echo stored=none; fi"
    );
    let keep = format!("echo \"http://gitlab-ci-token:$CI_JOB_TOKEN@{host}\" >> {store_path}");
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .script([report.as_str(), keep.as_str()]),
        )
        .await;
    assert!(trace.contains("stored=none\n"), "{trace}");
    let stored = std::fs::read_to_string(&store).unwrap();
    assert!(!stored.contains("gitlab-ci-token"), "{stored}");
    assert!(stored.contains("keeper:kept@example.invalid"), "{stored}");
}

/// The cleanup's `git credential reject` sees the job's variables, as the official cleanup
/// exports them, and what the job wrote to `$GITLAB_ENV`: a credential helper the job set up
/// through them (here a global git config of its own) forgets the job token too. (It runs
/// after the final state is reported, once GitLab has revoked the token; `run-single` waits
/// for it.)
#[tokio::test]
async fn the_credential_reject_sees_the_jobs_variables_and_gitlab_env() {
    let test = GitTest::new("").await;
    let home = test.env.dir.path();
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let host = test.host();
    for (name, through_gitlab_env) in [("variable", false), ("gitlab-env", true)] {
        let store = home.join(format!("{name}-credentials"));
        std::fs::write(&store, "https://keeper:kept@example.invalid\n").unwrap();
        let config = home.join(format!("{name}.gitconfig"));
        std::fs::write(
            &config,
            format!(
                "[credential]\n\thelper = store --file={}\n",
                store.display()
            ),
        )
        .unwrap();
        let keep = format!(
            "echo \"http://gitlab-ci-token:$CI_JOB_TOKEN@{host}\" >> {}",
            store.display()
        );
        let mut job = JobBuilder::new("build").repo(&repo, "main", &sha);
        let mut script = Vec::new();
        if through_gitlab_env {
            script.push(format!(
                "echo \"GIT_CONFIG_GLOBAL={}\" >> \"$GITLAB_ENV\"",
                config.display()
            ));
        } else {
            job = job.variable("GIT_CONFIG_GLOBAL", config.display().to_string());
        }
        script.push(keep);
        let trace = test.run_ok(job.script(script)).await;
        let stored = std::fs::read_to_string(&store).unwrap();
        assert!(
            !stored.contains("gitlab-ci-token"),
            "{name}: {stored}\n{trace}"
        );
        assert!(
            stored.contains("keeper:kept@example.invalid"),
            "{name}: {stored}"
        );
    }
}

/// `clean_git_config = true` also cleans at the end of the job: once the job is over, nothing
/// it planted in the checkout's `.git` is left for whatever runs git there next.
#[tokio::test]
async fn clean_git_config_also_removes_planted_config_and_hooks_when_the_job_ends() {
    let test = GitTest::new("  clean_git_config = true").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let mut script = PLANT_GIT_CONFIG_AND_HOOKS.to_vec();
    script.push("touch .git/index.lock");
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .git_strategy(GitStrategy::Fetch)
                .script(script),
        )
        .await;
    let project = test.project_dir("group/project");
    let git_dir = project.join(".git");
    assert!(!git_dir.join("config").exists(), "{trace}");
    assert!(!git_dir.join("hooks").exists(), "{trace}");
    assert!(!git_dir.join("index.lock").exists(), "{trace}");
    // Nothing planted ran on the way out either.
    assert!(!git_dir.join("planted-hook-ran").exists(), "{trace}");
    assert!(!git_dir.join("planted-fsmonitor-ran").exists(), "{trace}");
    // The checkout itself stays for the next job.
    assert_eq!(
        std::fs::read_to_string(project.join("a.txt")).unwrap(),
        "a\n"
    );
}

/// `get_sources_timeout`: a `get_sources` that takes longer fails the job as the official
/// runner words it, with `job_execution_timeout`, and the user script never runs.
#[tokio::test]
async fn get_sources_timeout_fails_a_get_sources_that_takes_longer() {
    let test =
        GitTest::new("  get_sources_timeout = \"2s\"\n  pre_get_sources_script = \"sleep 60\"")
            .await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let view = test
        .run(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .script(["echo script-ran"]),
        )
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("ERROR: Job failed: get sources timeout: exceeded timeout of 2s"),
        "{trace}"
    );
    assert!(!trace.contains("script-ran\n"), "{trace}");
    let last = crate::run::final_update(&view);
    assert_eq!(
        last.failure_reason.as_deref(),
        Some("job_execution_timeout")
    );
}

/// A `get_sources_timeout` longer than the job timeout gives way to it, with the official
/// warning in the job log.
#[tokio::test]
async fn a_get_sources_timeout_beyond_the_job_timeout_is_clamped_with_a_warning() {
    let test = GitTest::new("  get_sources_timeout = \"3h\"").await;
    let repo = test.repo("group/project");
    let sha = repo
        .commit("main", "first")
        .file("a.txt", "a\n")
        .create()
        .unwrap();
    let trace = test
        .run_ok(
            JobBuilder::new("build")
                .repo(&repo, "main", &sha)
                .script(["cat a.txt"]),
        )
        .await;
    assert!(
        trace.contains(
            "get_sources_timeout (3h0m0s) exceeds job timeout (1h0m0s); using job timeout"
        ),
        "{trace}"
    );
}
