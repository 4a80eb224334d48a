//! The cache and artifact stages: which are planned, in which order, and their scripts.

use insta::assert_snapshot;
use runnel_job::{JobStatus, StageWhen};
use runnel_types::{
    ArtifactFormat, ArtifactSpec, CachePolicy, CacheSpec, Dependency, JobId, JobSpec, JobToken,
    When,
};

use crate::support::{after_script_step, job, opts, plan_ok, render, set_var, stage_script};

fn names(job: &JobSpec) -> Vec<String> {
    plan_ok(job, &opts())
        .stages
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

fn cache(key: &str, paths: &[&str]) -> CacheSpec {
    CacheSpec {
        key: key.into(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        ..CacheSpec::default()
    }
}

fn artifact(paths: &[&str]) -> ArtifactSpec {
    ArtifactSpec {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        ..ArtifactSpec::default()
    }
}

fn dependency(id: u64, name: &str, filename: &str) -> Dependency {
    Dependency {
        id: JobId(id),
        token: JobToken::new(format!("glcbt-dep{id}token")),
        name: name.into(),
        artifacts_filename: filename.into(),
        artifacts_size: 10,
    }
}

#[test]
fn no_cache_or_artifacts_plans_no_transfer_stages() {
    let mut job = job();
    job.cache.push(cache("empty", &[]));
    job.artifacts.push(artifact(&["", "  "]));
    job.dependencies.push(dependency(7, "build", ""));
    assert_eq!(
        names(&job),
        [
            "prepare_script",
            "get_sources",
            "step_script",
            "cleanup_file_variables"
        ]
    );
}

#[test]
fn every_transfer_stage_in_the_official_order() {
    let mut job = job();
    job.steps.push(after_script_step(&["echo after"]));
    job.cache.push(CacheSpec {
        when: When::Always,
        ..cache("deps", &["vendor/"])
    });
    job.artifacts.push(artifact(&["out/"]));
    job.artifacts.push(ArtifactSpec {
        when: When::OnFailure,
        ..artifact(&["logs/"])
    });
    job.dependencies
        .push(dependency(7, "build", "artifacts.zip"));
    let plan = plan_ok(&job, &opts());
    let stages: Vec<(&str, StageWhen, u32)> = plan
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.when, s.attempts))
        .collect();
    assert_eq!(
        stages,
        [
            ("prepare_script", StageWhen::OnSuccess, 1),
            ("get_sources", StageWhen::OnSuccess, 1),
            ("restore_cache", StageWhen::OnSuccess, 1),
            ("download_artifacts", StageWhen::OnSuccess, 1),
            ("step_script", StageWhen::OnSuccess, 1),
            ("after_script", StageWhen::Always, 1),
            ("archive_cache", StageWhen::OnSuccess, 1),
            ("archive_cache_on_failure", StageWhen::OnFailure, 1),
            ("upload_artifacts_on_success", StageWhen::OnSuccess, 1),
            ("upload_artifacts_on_failure", StageWhen::OnFailure, 1),
            ("cleanup_file_variables", StageWhen::Always, 1),
        ]
    );
    let descriptions: Vec<&str> = plan.stages.iter().map(|s| s.description.as_str()).collect();
    assert!(descriptions.contains(&"Saving cache for failed job"));
    assert!(descriptions.contains(&"Uploading artifacts for successful job"));
}

#[test]
fn attempts_come_from_the_job_variables() {
    let mut job = job();
    set_var(&mut job, "RESTORE_CACHE_ATTEMPTS", "3");
    set_var(&mut job, "ARTIFACT_DOWNLOAD_ATTEMPTS", "4");
    job.cache.push(cache("k", &["a"]));
    job.dependencies
        .push(dependency(7, "build", "artifacts.zip"));
    let plan = plan_ok(&job, &opts());
    assert_eq!(plan.stage("restore_cache").map(|s| s.attempts), Some(3));
    assert_eq!(
        plan.stage("download_artifacts").map(|s| s.attempts),
        Some(4)
    );
}

#[test]
fn cache_policies_decide_restore_and_archive() {
    let mut pull = job();
    pull.cache.push(CacheSpec {
        policy: CachePolicy::Pull,
        ..cache("k", &["a"])
    });
    let pull_names = names(&pull);
    assert!(pull_names.contains(&"restore_cache".to_owned()));
    assert!(!pull_names.iter().any(|n| n.starts_with("archive_cache")));

    let mut push = job();
    push.cache.push(CacheSpec {
        policy: CachePolicy::Push,
        when: When::OnFailure,
        ..cache("k", &["a"])
    });
    let push_names = names(&push);
    assert!(!push_names.contains(&"restore_cache".to_owned()));
    assert!(push_names.contains(&"archive_cache_on_failure".to_owned()));
    assert!(!push_names.contains(&"archive_cache".to_owned()));
}

#[test]
fn restore_cache_script_with_fallback_keys() {
    let mut job = job();
    set_var(&mut job, "CACHE_FALLBACK_KEY", "global-fallback");
    set_var(&mut job, "BRANCH", "feature");
    job.cache.push(CacheSpec {
        fallback_keys: vec!["deps-main".into(), "global-fallback".into()],
        untracked: true,
        ..cache("deps-$BRANCH", &["vendor/"])
    });
    job.cache.push(cache("", &["node_modules/"]));
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(render(&stage_script(&plan, "restore_cache")));
}

#[test]
fn hashed_cache_keys() {
    let mut job = job();
    set_var(&mut job, "FF_HASH_CACHE_KEYS", "true");
    job.cache.push(cache("deps", &["vendor/"]));
    let plan = plan_ok(&job, &opts());
    let script = render(&stage_script(&plan, "archive_cache"));
    // SHA-256 of "deps", as `FF_HASH_CACHE_KEYS` stores it.
    let hashed = "f93464a48a2b9281080b555fac1081b1852154552800cbc6a2440ad1e3629033";
    assert!(
        script.contains(&format!(
            "/home/runner/cache/test/test-project/{hashed}/cache.zip"
        )),
        "{script}"
    );
}

#[test]
fn archive_cache_script() {
    let mut job = job();
    job.cache.push(CacheSpec {
        untracked: true,
        when: When::Always,
        ..cache("deps/$CI_JOB_ID", &["vendor/", "$CI_JOB_ID/*.o"])
    });
    set_var(&mut job, "CACHE_REQUEST_TIMEOUT", "3");
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(render(&stage_script(&plan, "archive_cache")));
    assert_eq!(
        stage_script(&plan, "archive_cache"),
        stage_script(&plan, "archive_cache_on_failure")
    );
}

#[test]
fn download_artifacts_script_keeps_tokens_off_the_command_line() {
    let mut job = job();
    job.dependencies
        .push(dependency(7, "build", "artifacts.zip"));
    job.dependencies.push(dependency(8, "no-artifacts", ""));
    job.dependencies
        .push(dependency(9, "lint", "artifacts.zip"));
    let plan = plan_ok(&job, &opts());
    let script = stage_script(&plan, "download_artifacts");
    assert!(!script.contains("--token"), "{script}");
    assert!(!script.contains("dep8token"), "{script}");
    assert_snapshot!(render(&script));
}

#[test]
fn upload_artifacts_scripts() {
    let mut job = job();
    job.artifacts.push(ArtifactSpec {
        name: "build-$CI_JOB_ID".into(),
        exclude: vec!["out/**/*.tmp".into()],
        expire_in: "1 week".into(),
        format: Some(ArtifactFormat::Zip),
        artifact_type: "archive".into(),
        ..artifact(&["out/", "bin/app"])
    });
    job.artifacts.push(ArtifactSpec {
        when: When::Always,
        format: Some(ArtifactFormat::Gzip),
        artifact_type: "junit".into(),
        ..artifact(&["report.xml"])
    });
    job.artifacts.push(ArtifactSpec {
        when: When::OnFailure,
        untracked: true,
        ..artifact(&[])
    });
    let plan = plan_ok(&job, &opts());
    assert_snapshot!(
        "upload_on_success",
        render(&stage_script(&plan, "upload_artifacts_on_success"))
    );
    assert_snapshot!(
        "upload_on_failure",
        render(&stage_script(&plan, "upload_artifacts_on_failure"))
    );
    let failure = plan.stage("upload_artifacts_on_failure").map(|s| s.when);
    assert_eq!(failure, Some(StageWhen::OnFailure));
    let script = plan
        .stage("upload_artifacts_on_failure")
        .map(|s| s.script(JobStatus::Failed).to_owned())
        .unwrap_or_default();
    assert!(script.contains("report.xml") && script.contains("--untracked"));
}

#[test]
fn every_transfer_script_is_valid_bash() {
    let mut job = job();
    job.cache.push(CacheSpec {
        when: When::Always,
        fallback_keys: vec!["a".into(), "b".into()],
        ..cache("deps", &["vendor/"])
    });
    job.artifacts.push(ArtifactSpec {
        when: When::Always,
        ..artifact(&["out/"])
    });
    job.dependencies
        .push(dependency(7, "build", "artifacts.zip"));
    let plan = plan_ok(&job, &opts());
    let dir = tempfile::tempdir().expect("temp dir");
    for stage in &plan.stages {
        let script = stage.script(JobStatus::Success);
        let body_check = format!("bash -n <<'RUNNEL_EOF'\n{script}\nRUNNEL_EOF\n");
        let (code, _, stderr) = crate::support::run_bash(&body_check, dir.path());
        assert_eq!(code, 0, "{}: {stderr}", stage.name);
        // The eval body is only parsed when it runs: check it on its own too.
        let rendered = render(script);
        let body = rendered
            .split_once("--- decoded eval body ---\n")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let (code, _, stderr) = crate::support::run_bash(
            &format!("bash -n <<'RUNNEL_EOF'\n{body}\nRUNNEL_EOF\n"),
            dir.path(),
        );
        assert_eq!(code, 0, "{} body: {stderr}\n{body}", stage.name);
    }
}

/// A distributed cache that "signs" by appending the method and key.
#[derive(Debug)]
struct FakeRemote;

impl runnel_job::RemoteCache for FakeRemote {
    fn urls(&self, key: &str) -> Option<runnel_job::CacheUrls> {
        let url = |method: &str| {
            runnel_types::Secret::new(format!(
                "http://s3.test/bucket/project/1/{key}?X-Amz-Signature={method}-{key}-sig"
            ))
        };
        (key != "local-only").then(|| runnel_job::CacheUrls {
            get: url("get"),
            head: url("head"),
            put: url("put"),
        })
    }

    fn max_uploaded_archive_size(&self) -> u64 {
        1024
    }
}

#[test]
fn a_distributed_cache_hands_presigned_urls_to_the_helpers_through_their_environment() {
    let mut job = job();
    job.cache.push(CacheSpec {
        fallback_keys: vec!["local-only".into()],
        ..cache("deps", &["vendor/"])
    });
    let options = runnel_job::PlanOptions {
        remote_cache: Some(std::sync::Arc::new(FakeRemote)),
        ..opts()
    };
    let plan = plan_ok(&job, &options);
    let restore = render(&stage_script(&plan, "restore_cache"));
    assert_snapshot!(restore);
    let archive = render(&stage_script(&plan, "archive_cache"));
    assert!(
        archive.contains("RUNNEL_CACHE_URL=$'http://s3.test/bucket/project/1/deps?X-Amz-Signature=put-deps-sig' RUNNEL_CACHE_HEAD_URL=$'http://s3.test/bucket/project/1/deps?X-Amz-Signature=head-deps-sig' "),
        "{archive}"
    );
    assert!(
        archive.contains("--max-uploaded-archive-size 1024"),
        "{archive}"
    );
    for method in ["get", "head", "put"] {
        let query = runnel_types::Secret::new(format!("X-Amz-Signature={method}-deps-sig"));
        assert!(plan.masked_values.contains(&query), "{method}");
    }
    // Without a distributed cache the helpers get empty URLs, so a job variable of the same
    // name cannot send the cache anywhere.
    let local = plan_ok(&job, &opts());
    let local_archive = render(&stage_script(&local, "archive_cache"));
    assert!(
        local_archive.contains("if RUNNEL_CACHE_URL= RUNNEL_CACHE_HEAD_URL= /usr/bin/runnel"),
        "{local_archive}"
    );
    assert!(!local_archive.contains("--max-uploaded"), "{local_archive}");
}
