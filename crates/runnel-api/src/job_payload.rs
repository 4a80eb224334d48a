//! The other direction of [`crate::job_response`]: a [`JobSpec`] rendered as the JSON payload
//! GitLab answers `POST jobs/request` with (reference 3.4), for coordinators that Runnel itself
//! serves (`runnel exec`). Decoding the result gives back the same `JobSpec`.

use runnel_types::{ArtifactFormat, JobSpec, RefType, Variable, When};
use serde_json::{Value, json};

fn when(when: When) -> &'static str {
    match when {
        When::OnSuccess => "on_success",
        When::OnFailure => "on_failure",
        When::Always => "always",
    }
}

fn variables(variables: &[Variable]) -> Vec<Value> {
    variables
        .iter()
        .map(|v| {
            json!({
                "key": v.key,
                "value": v.value,
                "public": v.public,
                "file": v.file,
                "masked": v.masked,
                "raw": v.raw,
            })
        })
        .collect()
}

fn image(image: &runnel_types::ImageSpec) -> Value {
    json!({
        "name": image.name,
        "alias": image.aliases.join(","),
        "command": image.command,
        "entrypoint": image.entrypoint,
        "ports": image.ports.iter().map(|p| json!({
            "number": p.number,
            "protocol": p.protocol,
            "name": p.name,
        })).collect::<Vec<_>>(),
        "variables": variables(&image.variables),
        "pull_policy": image.pull_policy,
        "executor_opts": {
            "docker": {"platform": image.docker_platform, "user": image.docker_user},
            "kubernetes": {"user": image.kubernetes_user},
        },
    })
}

fn seconds(duration: Option<std::time::Duration>) -> Value {
    duration.map_or(Value::Null, |d| json!(d.as_secs()))
}

/// The JSON body of a `201` answer to `POST jobs/request` carrying `job`.
pub fn encode_job_payload(job: &JobSpec) -> Vec<u8> {
    let payload = json!({
        "id": job.id.0,
        "token": job.token.expose(),
        "allow_git_fetch": job.allow_git_fetch,
        "job_info": {
            "name": job.info.name,
            "stage": job.info.stage,
            "pipeline_id": job.info.pipeline_id,
            "project_id": job.info.project_id,
            "project_name": job.info.project_name,
            "project_full_path": job.info.project_full_path,
            "namespace_id": job.info.namespace_id,
            "root_namespace_id": job.info.root_namespace_id,
            "user_id": job.info.user_id,
            "time_in_queue_seconds": job.info.time_in_queue_seconds,
            "queue_size": job.info.queue_size,
            "queue_depth": job.info.queue_depth,
            "project_jobs_running_on_instance_runners_count": job.info.project_jobs_running_on_instance_runners_count,
        },
        "git_info": {
            "repo_url": job.git.repo_url.expose(),
            "repo_object_format": job.git.repo_object_format,
            "ref": job.git.ref_name,
            "sha": job.git.sha,
            "before_sha": job.git.before_sha,
            "ref_type": match job.git.ref_type {
                RefType::Tag => "tag",
                RefType::Branch => "branch",
            },
            "refspecs": job.git.refspecs,
            "depth": job.git.depth,
            "protected": job.git.protected,
        },
        "runner_info": {"timeout": seconds(job.timeout)},
        "variables": variables(&job.variables),
        "steps": job.steps.iter().map(|s| json!({
            "name": s.name,
            "script": s.script,
            "timeout": seconds(s.timeout),
            "when": when(s.when),
            "allow_failure": s.allow_failure,
        })).collect::<Vec<_>>(),
        "image": job.image.as_ref().map(image),
        "services": job.services.iter().map(image).collect::<Vec<_>>(),
        "artifacts": job.artifacts.iter().map(|a| json!({
            "name": a.name,
            "untracked": a.untracked,
            "paths": a.paths,
            "exclude": a.exclude,
            "when": when(a.when),
            "artifact_type": a.artifact_type,
            "artifact_format": a.format.map_or("", ArtifactFormat::as_str),
            "expire_in": a.expire_in,
        })).collect::<Vec<_>>(),
        "cache": job.cache.iter().map(|c| json!({
            "key": c.key,
            "untracked": c.untracked,
            "policy": match c.policy {
                runnel_types::CachePolicy::PullPush => "pull-push",
                runnel_types::CachePolicy::Pull => "pull",
                runnel_types::CachePolicy::Push => "push",
            },
            "paths": c.paths,
            "when": when(c.when),
            "fallback_keys": c.fallback_keys,
        })).collect::<Vec<_>>(),
        "credentials": job.credentials.iter().map(|c| json!({
            "type": c.kind,
            "url": c.url,
            "username": c.username,
            "password": c.password.expose(),
        })).collect::<Vec<_>>(),
        "dependencies": job.dependencies.iter().map(|d| json!({
            "id": d.id.0,
            "token": d.token.expose(),
            "name": d.name,
            "artifacts_file": {"filename": d.artifacts_filename, "size": d.artifacts_size},
        })).collect::<Vec<_>>(),
        "features": {
            "trace_sections": job.features.trace_sections,
            "token_mask_prefixes": job.features.token_mask_prefixes,
            "failure_reasons": job.features.failure_reasons,
        },
        "hooks": job.hooks.iter().map(|h| json!({"name": h.name, "script": h.script}))
            .collect::<Vec<_>>(),
        "run": serde_json::from_str::<Value>(&job.run).unwrap_or(Value::Null),
        "inputs": job.inputs.iter().map(|key| json!({"key": key})).collect::<Vec<_>>(),
        "secrets": job.secrets.iter().map(|s| {
            let providers: serde_json::Map<String, Value> =
                s.providers.iter().map(|p| (p.clone(), json!({}))).collect();
            (s.variable.clone(), Value::Object(providers))
        }).collect::<serde_json::Map<String, Value>>(),
    });
    payload.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runnel_types::{
        ArtifactSpec, CacheSpec, Dependency, GitInfo, ImageSpec, JobId, JobToken, Secret, Step,
    };

    use super::*;

    #[test]
    fn encoded_payloads_decode_to_the_same_job() {
        let mut masked = Variable::new("SECRET", "s3cr3t");
        masked.masked = true;
        masked.public = false;
        let job = JobSpec {
            id: JobId(42),
            token: JobToken::new("job-token"),
            allow_git_fetch: true,
            git: GitInfo {
                repo_url: Secret::new("http://gitlab-ci-token:t@127.0.0.1:1/g/p.git"),
                ref_name: "main".into(),
                sha: "abc".into(),
                ref_type: RefType::Tag,
                refspecs: vec!["+refs/tags/v1:refs/tags/v1".into()],
                depth: 20,
                ..GitInfo::default()
            },
            timeout: Some(Duration::from_secs(600)),
            variables: vec![Variable::new("A", "1"), masked],
            steps: vec![Step {
                name: "script".into(),
                script: vec!["echo hi".into()],
                timeout: Some(Duration::from_secs(60)),
                when: When::Always,
                allow_failure: true,
            }],
            image: Some(ImageSpec {
                name: "alpine".into(),
                aliases: vec!["a".into(), "b".into()],
                docker_user: "1000".into(),
                ..ImageSpec::default()
            }),
            artifacts: vec![ArtifactSpec {
                name: "out".into(),
                paths: vec!["out/".into()],
                when: When::OnFailure,
                artifact_type: "archive".into(),
                format: Some(ArtifactFormat::Zip),
                ..ArtifactSpec::default()
            }],
            cache: vec![CacheSpec {
                key: "k".into(),
                paths: vec!["vendor/".into()],
                policy: runnel_types::CachePolicy::Pull,
                ..CacheSpec::default()
            }],
            dependencies: vec![Dependency {
                id: JobId(41),
                token: JobToken::new("dep"),
                name: "build".into(),
                artifacts_filename: "artifacts.zip".into(),
                artifacts_size: 10,
            }],
            run: r#"[{"name":"hello","step":"echo"}]"#.into(),
            inputs: vec!["env".into()],
            secrets: vec![runnel_types::SecretRequest {
                variable: "DB_PASSWORD".into(),
                providers: vec!["vault".into()],
            }],
            ..JobSpec::default()
        };
        let back = crate::decode_job_payload(&encode_job_payload(&job)).unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(back.token.expose(), "job-token");
        assert_eq!(back.git.repo_url.expose(), job.git.repo_url.expose());
        assert_eq!(back.git.ref_type, RefType::Tag);
        assert_eq!(back.git.refspecs, job.git.refspecs);
        assert_eq!(back.git.depth, 20);
        assert_eq!(back.timeout, job.timeout);
        assert_eq!(back.variables, job.variables);
        assert_eq!(back.steps, job.steps);
        assert_eq!(back.image, job.image);
        assert_eq!(back.artifacts, job.artifacts);
        assert_eq!(back.cache, job.cache);
        assert_eq!(back.dependencies[0].artifacts_filename, "artifacts.zip");
        assert_eq!(back.dependencies[0].token.expose(), "dep");
        assert_eq!(back.run, job.run);
        assert_eq!(back.inputs, job.inputs);
        assert_eq!(back.secrets, job.secrets);
    }
}
