//! Decoding job payloads into the job model.

use std::time::Duration;

use runnel_api::{ApiError, decode_job_payload};
use runnel_types::{CachePolicy, JobId, RefType, When};
use serde_json::json;

const FIXTURE: &[u8] = include_bytes!("../fixtures/job_response.network_gitlab_test.json");

#[test]
fn the_official_fixture_decodes_with_the_expected_values() {
    let job = decode_job_payload(FIXTURE).unwrap();
    assert_eq!(job.id, JobId(10));
    assert_eq!(job.token.expose(), "job-token");
    assert!(!job.allow_git_fetch);
    assert_eq!(job.info.name, "test-job");
    assert_eq!(job.info.stage, "test");
    assert_eq!(job.info.project_id, 123);
    assert_eq!(job.info.project_name, "test-project");
    assert_eq!(
        job.git.repo_url.expose(),
        "https://gitlab-ci-token:testTokenHere1234@gitlab.example.com/test/test-project.git"
    );
    assert_eq!(job.git.ref_name, "main");
    assert_eq!(job.git.sha, "abcdef123456");
    assert_eq!(job.git.before_sha, "654321fedcba");
    assert_eq!(job.git.ref_type, RefType::Branch);
    assert_eq!(job.timeout, Some(Duration::from_secs(3600)));

    let variable = job.variable("CI_REF_NAME").unwrap();
    assert_eq!(variable.value, "main");
    assert!(variable.public && variable.file && variable.raw && !variable.masked);

    assert_eq!(job.steps.len(), 2);
    assert_eq!(job.steps[0].name, "script");
    assert_eq!(job.steps[0].script, ["date", "ls -ls"]);
    assert_eq!(job.steps[0].when, When::OnSuccess);
    assert_eq!(job.steps[1].name, "after_script");
    assert_eq!(job.steps[1].when, When::Always);
    assert!(job.steps[1].allow_failure);

    let image = job.image.as_ref().unwrap();
    assert_eq!(image.name, "ruby:3.3");
    assert_eq!(image.entrypoint, ["/bin/sh"]);
    assert_eq!(image.docker_platform, "arm64/v8");

    assert_eq!(job.services.len(), 2);
    assert_eq!(job.services[0].name, "postgresql:9.5");
    assert_eq!(job.services[0].aliases, ["db-pg"]);
    assert_eq!(job.services[0].command, ["sleep", "30"]);
    assert_eq!(job.services[0].docker_platform, "amd64/linux");
    assert_eq!(job.services[1].aliases, ["db-mysql"]);

    assert_eq!(job.artifacts[0].name, "artifact.zip");
    assert_eq!(job.artifacts[0].paths, ["out/*"]);
    assert_eq!(job.artifacts[0].when, When::Always);
    assert_eq!(job.artifacts[0].expire_in, "7d");
    assert_eq!(job.artifacts[0].format, None);

    assert_eq!(job.cache[0].key, "$CI_COMMIT_SHA");
    assert_eq!(job.cache[0].policy, CachePolicy::Push);

    assert_eq!(job.credentials[0].kind, "Registry");
    assert_eq!(job.credentials[0].password.expose(), "job-token");

    let dependency = &job.dependencies[0];
    assert_eq!(dependency.id, JobId(9));
    assert_eq!(dependency.token.expose(), "other-job-token");
    assert_eq!(dependency.artifacts_filename, "binaries.zip");
    assert_eq!(dependency.artifacts_size, 13_631_488);
}

#[test]
fn the_decoded_fixture_debug_prints_without_secrets() {
    let job = decode_job_payload(FIXTURE).unwrap();
    let debug = format!("{job:#?}");
    assert!(!debug.contains("testTokenHere1234"));
    insta::assert_snapshot!(debug);
}

#[test]
fn lenient_fields_are_accepted() {
    let job = decode_job_payload(
        json!({
            "id": "55",
            "token": "t",
            "unknown_top_level": {"anything": [1, 2, 3]},
            "job_info": {
                "project_id": "17",
                "project_jobs_running_on_instance_runners_count": "+Inf",
                "time_in_queue_seconds": 1.25,
                "user_id": null,
                "scoped_user_id": 3,
            },
            "git_info": {"ref_type": "tag", "depth": 50, "protected": true, "refspecs": null},
            "runner_info": {"timeout": 0},
            "variables": null,
            "steps": [{"name": "script", "script": "echo hi", "timeout": "-1", "when": "on_failure"}],
            "image": {"name": ""},
            "services": [{
                "name": "pg", "alias": "db, pg  postgres",
                "pull_policy": "always",
                "ports": [{"number": "5432", "protocol": "tcp"}],
                "executor_opts": {"docker": {"user": 1000}, "kubernetes": {"user": "1000:1000"}},
            }],
            "artifacts": [{"artifact_format": "gzip", "artifact_type": "junit", "when": "on_failure"}],
            "features": {"failure_reasons": ["script_failure"], "trace_sections": true},
            "hooks": [{"name": "pre_get_sources_script", "script": ["echo pre"]}],
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(job.id, JobId(55));
    assert_eq!(job.info.project_id, 17);
    assert_eq!(job.info.time_in_queue_seconds, 1.25);
    assert_eq!(
        job.info.project_jobs_running_on_instance_runners_count,
        "+Inf"
    );
    assert_eq!(job.git.ref_type, RefType::Tag);
    assert_eq!(job.git.depth, 50);
    assert_eq!(job.git.protected, Some(true));
    assert_eq!(job.timeout, None);
    assert_eq!(job.steps[0].script, ["echo hi"]);
    assert_eq!(job.steps[0].timeout, None);
    assert_eq!(job.steps[0].when, When::OnFailure);
    assert!(job.image.is_none());
    let service = &job.services[0];
    assert_eq!(service.aliases, ["db", "pg", "postgres"]);
    assert_eq!(service.pull_policy, ["always"]);
    assert_eq!(service.ports[0].number, 5432);
    assert_eq!(service.docker_user, "1000");
    assert_eq!(service.kubernetes_user, "1000:1000");
    assert_eq!(
        job.artifacts[0].format,
        Some(runnel_types::ArtifactFormat::Gzip)
    );
    assert_eq!(job.artifacts[0].artifact_type, "junit");
    assert!(job.features.trace_sections);
    assert_eq!(job.features.failure_reasons, ["script_failure"]);
    assert_eq!(job.hooks[0].script, ["echo pre"]);
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let error = decode_job_payload(b"{\n  \"id\": 1,\n  oops").unwrap_err();
    let ApiError::DecodeJob {
        job_id,
        line,
        column,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!((*job_id, *line, *column), (None, 3, 3));
    insta::assert_snapshot!(error.to_string(), @"failed to decode job (unknown id) at `.`");
}

#[test]
fn type_errors_name_the_job_and_the_path() {
    let body = json!({"id": 99, "dependencies": [{"id": 1, "artifacts_file": {"size": "big"}}]});
    let error = decode_job_payload(body.to_string().as_bytes()).unwrap_err();
    let ApiError::DecodeJob { job_id, path, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*job_id, Some(JobId(99)));
    assert_eq!(path, "dependencies[0].artifacts_file.size");
}

/// Every prefix of the fixture, and a few mangled versions, decode or fail cleanly.
#[test]
fn truncated_and_garbage_bodies_never_panic() {
    for end in 0..FIXTURE.len() {
        decodes_or_fails_cleanly(&FIXTURE[..end]);
    }
    let garbage: [&[u8]; 8] = [
        b"",
        b"null",
        b"[]",
        b"\"job\"",
        b"\xff\xfe\x00",
        b"{\"id\": -1}",
        b"{\"id\": 1e999}",
        b"{\"steps\": {\"name\": 1}}",
    ];
    for body in garbage {
        decodes_or_fails_cleanly(body);
    }
}

/// Every field of the fixture replaced by a value of each JSON type decodes or fails cleanly.
#[test]
fn wrong_typed_fields_never_panic() {
    let fixture: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
    let replacements = [
        json!(null),
        json!(true),
        json!(-1),
        json!(1.5),
        json!("text"),
        json!([]),
        json!({}),
        json!([null]),
    ];
    let mut paths = Vec::new();
    collect_paths(&fixture, &mut Vec::new(), &mut paths);
    assert!(paths.len() > 50, "{}", paths.len());
    for path in &paths {
        for replacement in &replacements {
            let mut mangled = fixture.clone();
            *pointer_mut(&mut mangled, path) = replacement.clone();
            decodes_or_fails_cleanly(mangled.to_string().as_bytes());
        }
    }
}

fn decodes_or_fails_cleanly(body: &[u8]) {
    match decode_job_payload(body) {
        Ok(_) | Err(ApiError::DecodeJob { .. }) => {}
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

fn collect_paths(value: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<String>) {
    out.push(format!("/{}", at.join("/")));
    let children: Vec<(String, &serde_json::Value)> = match value {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Vec::new(),
    };
    for (key, child) in children {
        at.push(key);
        collect_paths(child, at, out);
        at.pop();
    }
}

fn pointer_mut<'a>(value: &'a mut serde_json::Value, path: &str) -> &'a mut serde_json::Value {
    if path == "/" {
        return value;
    }
    value.pointer_mut(path).unwrap()
}
