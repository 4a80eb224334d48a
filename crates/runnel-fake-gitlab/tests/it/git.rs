//! Repositories over git smart HTTP: real `git clone` against the fake, GitLab's basic auth,
//! the commit helpers and the `git_info` a `.repo()` job carries.

use std::path::Path;
use std::process::Output;

use runnel_fake_gitlab::{Endpoint, FakeError, FakeGitlab, JobBuilder, RemoteStatus};
use serde_json::{Value, json};

use crate::support::{client, request_job, start};

/// Runs `git` without user or system configuration and without prompts.
async fn git(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .expect("git runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Enqueues `job` and takes it with a new runner: returns the payload (the job is running).
async fn run_job(fake: &FakeGitlab, job: JobBuilder) -> Value {
    fake.enqueue(job);
    let runner = fake.create_runner_token();
    let response = request_job(fake, &runner, None).await;
    assert_eq!(response.status(), 201);
    response.json().await.expect("json payload")
}

#[tokio::test]
async fn a_running_job_clones_its_commit_over_http() {
    let fake = start().await;
    let repo = fake.create_repo("group/project").unwrap();
    let first = repo
        .commit("main", "first")
        .file("README.md", "hello\n")
        .create()
        .unwrap();
    let second = repo
        .commit("main", "second")
        .executable("build.sh", "#!/bin/sh\necho built\n")
        .create()
        .unwrap();
    assert_eq!(repo.branch_head("main").unwrap().as_deref(), Some(&*second));
    assert_eq!(repo.parent_of(&second).as_deref(), Some(&*first));

    let payload = run_job(&fake, JobBuilder::new("build").repo(&repo, "main", &second)).await;
    let url = payload["git_info"]["repo_url"].as_str().unwrap();
    let token = payload["token"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "{}/group/project.git",
            fake.url()
                .replace("://", &format!("://gitlab-ci-token:{token}@"))
        )
    );
    let work = tempfile::tempdir().unwrap();
    let clone = git(work.path(), &["clone", "-q", url, "checkout"]).await;
    assert!(clone.status.success(), "{clone:?}");
    let checkout = work.path().join("checkout");
    assert_eq!(
        stdout(&git(&checkout, &["rev-parse", "HEAD"]).await),
        second
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("README.md")).unwrap(),
        "hello\n"
    );
    let log = git(&checkout, &["log", "--format=%an <%ae> %s"]).await;
    assert_eq!(
        stdout(&log),
        "Fake GitLab <fake@gitlab.test> second\nFake GitLab <fake@gitlab.test> first"
    );
    let modes = git(&checkout, &["ls-files", "-s", "build.sh"]).await;
    assert!(stdout(&modes).starts_with("100755 "), "{modes:?}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "POST" && r.path == "/group/project.git/git-upload-pack"),
        "git requests are in the request log"
    );
}

#[tokio::test]
async fn clones_need_the_token_of_a_running_job() {
    let fake = start().await;
    let repo = fake.create_repo("group/project").unwrap();
    repo.commit("main", "first")
        .file("a", "a")
        .create()
        .unwrap();
    let info_refs = format!("{}/info/refs?service=git-upload-pack", repo.url());

    fake.fail_next(Endpoint::GitHttp, 1, 503);
    let faulted = client().get(&info_refs).send().await.unwrap();
    assert_eq!(faulted.status(), 503, "faults apply to git requests");
    let anonymous = client().get(&info_refs).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Basic realm=\"GitLab\""
    );
    let not_a_job = client()
        .get(&info_refs)
        .basic_auth("gitlab-ci-token", Some("glcbt-64_not-a-job-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_job.status(), 401);
    assert!(
        not_a_job
            .text()
            .await
            .unwrap()
            .starts_with("HTTP Basic: Access denied")
    );

    let payload = run_job(&fake, JobBuilder::new("build")).await;
    let (id, token) = (
        payload["id"].as_u64().unwrap(),
        payload["token"].as_str().unwrap().to_owned(),
    );
    let wrong_user = client()
        .get(&info_refs)
        .basic_auth("root", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_user.status(), 401);
    let allowed = client()
        .get(&info_refs)
        .basic_auth("gitlab-ci-token", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["content-type"],
        "application/x-git-upload-pack-advertisement"
    );
    let unknown = client()
        .get(format!(
            "{}/group/other.git/info/refs?service=git-upload-pack",
            fake.url()
        ))
        .basic_auth("gitlab-ci-token", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    fake.set_remote_status(id, RemoteStatus::Success).unwrap();
    let after = client()
        .get(&info_refs)
        .basic_auth("gitlab-ci-token", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401, "a finished job's token is refused");
}

#[tokio::test]
async fn commits_are_reproducible_and_submodules_are_recorded() {
    let fake = start().await;
    let a = fake.create_repo("group/a").unwrap();
    let b = fake.create_repo("group/b").unwrap();
    let sha_a = a.commit("main", "same").file("x", "1").create().unwrap();
    let sha_b = b.commit("main", "same").file("x", "1").create().unwrap();
    assert_eq!(sha_a, sha_b, "fixed author and clock give the same id");

    let top = fake.create_repo("group/top").unwrap();
    let sha = top
        .commit("main", "with submodules")
        .file("README", "top")
        .submodule("libs/a", &a, &sha_a)
        .submodule_url("b", "../b.git", &sha_b)
        .create()
        .unwrap();
    let modules = top.git(&["show", &format!("{sha}:.gitmodules")]).unwrap();
    let expected = format!(
        "[submodule \"libs/a\"]\n\tpath = libs/a\n\turl = {}\n[submodule \"b\"]\n\tpath = b\n\turl = ../b.git",
        a.url()
    );
    assert_eq!(modules, expected);
    let tree = top.git(&["ls-tree", &sha, "libs/a", "b"]).unwrap();
    assert_eq!(
        tree,
        format!("160000 commit {sha_b}\tb\n160000 commit {sha_a}\tlibs/a")
    );
    let removed = top
        .commit("main", "drop")
        .remove("README")
        .create()
        .unwrap();
    let files = top.git(&["ls-tree", "--name-only", &removed]).unwrap();
    assert_eq!(files, ".gitmodules\nb\nlibs");

    assert!(matches!(
        fake.create_repo("group/a"),
        Err(FakeError::RepoExists { .. })
    ));
    assert!(matches!(
        fake.create_repo("../escape"),
        Err(FakeError::InvalidRepoPath { .. })
    ));
}

#[tokio::test]
async fn repo_jobs_carry_gitlab_git_info() {
    let fake = start().await;
    let repo = fake.create_repo("group/project").unwrap();
    let first = repo.commit("main", "1").file("f", "1").create().unwrap();
    let second = repo.commit("main", "2").file("f", "2").create().unwrap();
    repo.create_tag("v1.0", &second).unwrap();
    repo.create_branch("feature", &first).unwrap();

    let branch = run_job(
        &fake,
        JobBuilder::new("a")
            .pipeline_id(7)
            .repo(&repo, "main", &second),
    )
    .await;
    let info = &branch["git_info"];
    assert_eq!(info["sha"], json!(second));
    assert_eq!(info["before_sha"], json!(first));
    assert_eq!(info["ref"], json!("main"));
    assert_eq!(info["ref_type"], json!("branch"));
    assert_eq!(
        info["refspecs"],
        json!([
            format!("+{second}:refs/pipelines/7"),
            "+refs/heads/main:refs/remotes/origin/main"
        ])
    );
    assert_eq!(variable(&branch, "CI_COMMIT_BRANCH"), Some("main"));
    assert_eq!(variable(&branch, "CI_PROJECT_PATH"), Some("group/project"));
    assert_eq!(
        variable(&branch, "CI_REPOSITORY_URL"),
        info["repo_url"].as_str()
    );

    let tag = run_job(
        &fake,
        JobBuilder::new("b")
            .repo(&repo, "v1.0", &second)
            .git_depth(3),
    )
    .await;
    assert_eq!(tag["git_info"]["ref_type"], json!("tag"));
    assert_eq!(tag["git_info"]["depth"], json!(3));
    assert_eq!(
        tag["git_info"]["refspecs"][1],
        json!("+refs/tags/v1.0:refs/tags/v1.0")
    );
    assert_eq!(variable(&tag, "CI_COMMIT_TAG"), Some("v1.0"));
    assert_eq!(variable(&tag, "CI_COMMIT_BRANCH"), None);

    let full = run_job(
        &fake,
        JobBuilder::new("c")
            .repo(&repo, "main", &first)
            .git_depth(0)
            .clone_token("glcbt-64_someone-else"),
    )
    .await;
    let info = &full["git_info"];
    assert_eq!(info["before_sha"], json!("0".repeat(40)));
    assert_eq!(
        info["refspecs"][1],
        json!("+refs/heads/*:refs/remotes/origin/*")
    );
    assert_eq!(info["refspecs"][2], json!("+refs/tags/*:refs/tags/*"));
    let url = info["repo_url"].as_str().unwrap();
    assert!(
        url.contains("gitlab-ci-token:glcbt-64_someone-else@"),
        "{url}"
    );
}

fn variable<'a>(payload: &'a Value, key: &str) -> Option<&'a str> {
    payload["variables"]
        .as_array()?
        .iter()
        .find(|v| v["key"] == key)?["value"]
        .as_str()
}

#[tokio::test]
async fn lfs_batch_hands_out_downloads_for_stored_objects() {
    let fake = start().await;
    let repo = fake.create_repo("group/project").unwrap();
    let sha = repo
        .commit("main", "lfs")
        .lfs_file("assets/big.bin", "large content\n")
        .file("small.txt", "small\n")
        .create()
        .unwrap();
    let attributes = repo
        .git(&["show", &format!("{sha}:.gitattributes")])
        .unwrap();
    assert_eq!(
        attributes,
        "assets/big.bin filter=lfs diff=lfs merge=lfs -text"
    );
    let pointer = repo
        .git(&["show", &format!("{sha}:assets/big.bin")])
        .unwrap();
    let oid = pointer
        .lines()
        .find_map(|line| line.strip_prefix("oid sha256:"))
        .unwrap()
        .to_owned();
    assert_eq!(
        pointer,
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 14")
    );

    let payload = run_job(&fake, JobBuilder::new("build").repo(&repo, "main", &sha)).await;
    let token = payload["token"].as_str().unwrap();
    let batch_url = format!("{}/info/lfs/objects/batch", repo.url());
    let batch = |operation: &str| {
        client()
            .post(&batch_url)
            .header("Content-Type", "application/vnd.git-lfs+json")
            .json(&json!({
                "operation": operation,
                "objects": [{"oid": oid, "size": 14}, {"oid": "0".repeat(64), "size": 1}],
            }))
    };
    assert_eq!(batch("download").send().await.unwrap().status(), 401);
    let answer: Value = batch("download")
        .basic_auth("gitlab-ci-token", Some(token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let download = &answer["objects"][0]["actions"]["download"];
    let href = download["href"].as_str().unwrap();
    assert_eq!(href, format!("{}/gitlab-lfs/objects/{oid}", repo.url()));
    assert_eq!(answer["objects"][1]["error"]["code"], json!(404));
    let authorization = download["header"]["Authorization"].as_str().unwrap();
    let content = client()
        .get(href)
        .header("Authorization", authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    assert_eq!(content.text().await.unwrap(), "large content\n");
    let upload = batch("upload")
        .basic_auth("gitlab-ci-token", Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 403);
}

#[tokio::test]
async fn repositories_and_repo_jobs_through_the_control_api() {
    let fake = start().await;
    let control = |path: &str| format!("{}/__fake/{path}", fake.url());
    let created: Value = client()
        .post(control("repos"))
        .json(&json!({"path": "group/project"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        created["url"],
        json!(format!("{}/group/project.git", fake.url()))
    );
    let commit = client()
        .post(control("repos/commits"))
        .json(&json!({"path": "group/project", "files": {"README.md": "from json\n"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(commit.status(), 201);
    let sha = commit.json::<Value>().await.unwrap()["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let missing = client()
        .post(control("repos/commits"))
        .json(&json!({"path": "group/nope", "files": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let job = client()
        .post(control("jobs"))
        .json(&json!({
            "name": "build",
            "repo": {"path": "group/project", "ref": "main", "sha": sha},
            "git_depth": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 201);
    let runner = fake.create_runner_token();
    let payload: Value = request_job(&fake, &runner, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(payload["git_info"]["sha"], json!(sha));
    assert_eq!(payload["git_info"]["depth"], json!(0));
    let work = tempfile::tempdir().unwrap();
    let url = payload["git_info"]["repo_url"].as_str().unwrap();
    let clone = git(work.path(), &["clone", "-q", url, "checkout"]).await;
    assert!(clone.status.success(), "{clone:?}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("checkout/README.md")).unwrap(),
        "from json\n"
    );
}
