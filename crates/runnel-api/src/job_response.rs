//! The job payload of `POST jobs/request` (reference 3.4) and its conversion into
//! [`runnel_types::JobSpec`].
//!
//! Decoding is tolerant: unknown fields are ignored, every field is optional, `null` means
//! absent, and numbers may arrive as strings. Of `run` (CI steps), `inputs` and `secrets` only
//! what names them is decoded (the steps' JSON text, input keys, secret variables and their
//! providers): Runnel implements none of them, and the planner refuses such a job by name
//! rather than run it without them. `policy_options`, `suspend_options` and tracing are not
//! decoded.
//! Unknown enum words fall back to the official defaults rather than failing the job.

use std::time::Duration;

use runnel_types::{
    ArtifactFormat, ArtifactSpec, CachePolicy, CacheSpec, Credential, Dependency, GitInfo, Hook,
    ImagePort, ImageSpec, JobFeatures, JobId, JobInfo, JobSpec, JobToken, RefType, Secret,
    SecretRequest, Step, Variable, When,
};
use serde::Deserialize;

use crate::error::ApiError;
use crate::lenient::{Float, Int, StringList, Text, strip_nulls};

/// The job id and token of a payload that [`decode_job`] refused, when they can still be read
/// (review L7: GitLab has assigned the job; without them it could not be reported failed).
pub(crate) fn job_identity(body: &[u8]) -> Option<(JobId, JobToken)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value
        .get("id")
        .and_then(|id| serde_json::from_value::<Int>(id.clone()).ok())
        .map(|id| JobId(id.unsigned()))
        .filter(|id| id.0 > 0)?;
    let token = value.get("token")?.as_str().filter(|t| !t.is_empty())?;
    Some((id, JobToken::new(token)))
}

/// Decodes a job payload, naming the job id (when the payload has one) and the failing path
/// in errors.
pub(crate) fn decode_job(body: &[u8]) -> Result<JobSpec, ApiError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|source| ApiError::DecodeJob {
            job_id: None,
            path: ".".to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
    strip_nulls(&mut value);
    let job_id = value
        .get("id")
        .and_then(|id| serde_json::from_value::<Int>(id.clone()).ok())
        .map(|id| JobId(id.unsigned()));
    let wire: JobResponse =
        serde_path_to_error::deserialize(value).map_err(|error| ApiError::DecodeJob {
            job_id,
            path: error.path().to_string(),
            line: 0,
            column: 0,
            source: error.into_inner(),
        })?;
    Ok(wire.into_spec())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JobResponse {
    id: Int,
    token: String,
    allow_git_fetch: bool,
    job_info: JobInfoWire,
    git_info: GitInfoWire,
    runner_info: RunnerInfoWire,
    variables: Vec<VariableWire>,
    steps: Vec<StepWire>,
    image: Option<ImageWire>,
    services: Vec<ImageWire>,
    artifacts: Vec<ArtifactWire>,
    cache: Vec<CacheWire>,
    credentials: Vec<CredentialWire>,
    dependencies: Vec<DependencyWire>,
    features: FeaturesWire,
    hooks: Vec<HookWire>,
    run: Option<serde_json::Value>,
    inputs: Vec<InputWire>,
    secrets: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InputWire {
    key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JobInfoWire {
    name: String,
    stage: String,
    pipeline_id: Int,
    project_id: Int,
    project_name: String,
    project_full_path: String,
    namespace_id: Int,
    root_namespace_id: Int,
    user_id: Int,
    time_in_queue_seconds: Float,
    queue_size: Int,
    queue_depth: Int,
    project_jobs_running_on_instance_runners_count: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitInfoWire {
    repo_url: String,
    repo_object_format: String,
    #[serde(rename = "ref")]
    ref_name: String,
    sha: String,
    before_sha: String,
    ref_type: String,
    refspecs: StringList,
    depth: Int,
    protected: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunnerInfoWire {
    timeout: Int,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VariableWire {
    key: String,
    value: String,
    public: bool,
    file: bool,
    masked: bool,
    raw: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StepWire {
    name: String,
    script: StringList,
    timeout: Int,
    when: String,
    allow_failure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageWire {
    name: String,
    alias: String,
    command: StringList,
    entrypoint: StringList,
    ports: Vec<PortWire>,
    variables: Vec<VariableWire>,
    pull_policy: StringList,
    executor_opts: ExecutorOptsWire,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PortWire {
    number: Int,
    protocol: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ExecutorOptsWire {
    docker: DockerOptsWire,
    kubernetes: KubernetesOptsWire,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DockerOptsWire {
    platform: String,
    user: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KubernetesOptsWire {
    user: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArtifactWire {
    name: String,
    untracked: bool,
    paths: StringList,
    exclude: StringList,
    when: String,
    artifact_type: String,
    artifact_format: String,
    expire_in: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CacheWire {
    key: String,
    untracked: bool,
    policy: String,
    paths: StringList,
    when: String,
    fallback_keys: StringList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CredentialWire {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    username: String,
    password: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DependencyWire {
    id: Int,
    token: String,
    name: String,
    artifacts_file: ArtifactsFileWire,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArtifactsFileWire {
    filename: String,
    size: Int,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FeaturesWire {
    trace_sections: bool,
    token_mask_prefixes: StringList,
    failure_reasons: StringList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HookWire {
    name: String,
    script: StringList,
}

impl JobResponse {
    fn into_spec(self) -> JobSpec {
        JobSpec {
            id: JobId(self.id.unsigned()),
            token: JobToken::new(self.token),
            allow_git_fetch: self.allow_git_fetch,
            info: self.job_info.into_info(),
            git: self.git_info.into_git(),
            timeout: positive_seconds(self.runner_info.timeout),
            variables: convert(self.variables, VariableWire::into_variable),
            steps: convert(self.steps, StepWire::into_step),
            image: self
                .image
                .filter(|image| !image.name.is_empty())
                .map(ImageWire::into_image),
            services: convert(self.services, ImageWire::into_image),
            artifacts: convert(self.artifacts, ArtifactWire::into_artifact),
            cache: convert(self.cache, CacheWire::into_cache),
            credentials: convert(self.credentials, CredentialWire::into_credential),
            dependencies: convert(self.dependencies, DependencyWire::into_dependency),
            features: JobFeatures {
                trace_sections: self.features.trace_sections,
                token_mask_prefixes: self.features.token_mask_prefixes.0,
                failure_reasons: self.features.failure_reasons.0,
            },
            hooks: convert(self.hooks, |hook| Hook {
                name: hook.name,
                script: hook.script.0,
            }),
            run: self
                .run
                .filter(has_content)
                .map_or_else(String::new, |run| run.to_string()),
            inputs: convert(self.inputs, |input| input.key),
            secrets: self
                .secrets
                .into_iter()
                .map(|(variable, secret)| SecretRequest {
                    variable,
                    providers: secret
                        .as_object()
                        .map(|providers| {
                            providers
                                .keys()
                                .filter(|key| *key != "file")
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Whether a `run` value asks for anything (`[]`, `""` and `{}` do not).
fn has_content(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::String(s) => !s.trim().is_empty(),
        serde_json::Value::Array(items) => !items.is_empty(),
        serde_json::Value::Object(map) => !map.is_empty(),
        _ => true,
    }
}

impl JobInfoWire {
    fn into_info(self) -> JobInfo {
        JobInfo {
            name: self.name,
            stage: self.stage,
            pipeline_id: self.pipeline_id.unsigned(),
            project_id: self.project_id.unsigned(),
            project_name: self.project_name,
            project_full_path: self.project_full_path,
            namespace_id: self.namespace_id.unsigned(),
            root_namespace_id: self.root_namespace_id.unsigned(),
            user_id: self.user_id.unsigned(),
            time_in_queue_seconds: self.time_in_queue_seconds.0,
            queue_size: self.queue_size.unsigned(),
            queue_depth: self.queue_depth.unsigned(),
            project_jobs_running_on_instance_runners_count: self
                .project_jobs_running_on_instance_runners_count
                .0,
        }
    }
}

impl GitInfoWire {
    fn into_git(self) -> GitInfo {
        GitInfo {
            repo_url: Secret::new(self.repo_url),
            repo_object_format: self.repo_object_format,
            ref_name: self.ref_name,
            sha: self.sha,
            before_sha: self.before_sha,
            ref_type: if self.ref_type == "tag" {
                RefType::Tag
            } else {
                RefType::Branch
            },
            refspecs: self.refspecs.0,
            depth: u32::try_from(self.depth.unsigned()).unwrap_or(u32::MAX),
            protected: self.protected,
        }
    }
}

impl VariableWire {
    fn into_variable(self) -> Variable {
        Variable {
            key: self.key,
            value: self.value,
            public: self.public,
            file: self.file,
            masked: self.masked,
            raw: self.raw,
            internal: false,
        }
    }
}

impl StepWire {
    fn into_step(self) -> Step {
        Step {
            name: self.name,
            script: self.script.0,
            timeout: positive_seconds(self.timeout),
            when: match self.when.as_str() {
                "on_failure" => When::OnFailure,
                "always" => When::Always,
                _ => When::OnSuccess,
            },
            allow_failure: self.allow_failure,
        }
    }
}

impl ImageWire {
    fn into_image(self) -> ImageSpec {
        ImageSpec {
            name: self.name,
            aliases: split_aliases(&self.alias),
            command: self.command.0,
            entrypoint: self.entrypoint.0,
            ports: convert(self.ports, |port| ImagePort {
                number: u16::try_from(port.number.0).unwrap_or(0),
                protocol: port.protocol,
                name: port.name,
            }),
            variables: convert(self.variables, VariableWire::into_variable),
            pull_policy: self.pull_policy.0,
            docker_platform: self.executor_opts.docker.platform,
            docker_user: self.executor_opts.docker.user.0,
            kubernetes_user: self.executor_opts.kubernetes.user.0,
        }
    }
}

impl ArtifactWire {
    fn into_artifact(self) -> ArtifactSpec {
        ArtifactSpec {
            format: artifact_format(&self.artifact_format),
            name: self.name,
            untracked: self.untracked,
            paths: self.paths.0,
            exclude: self.exclude.0,
            when: match self.when.as_str() {
                "on_failure" => When::OnFailure,
                "always" => When::Always,
                _ => When::OnSuccess,
            },
            artifact_type: self.artifact_type,
            expire_in: self.expire_in,
        }
    }
}

impl CacheWire {
    fn into_cache(self) -> CacheSpec {
        CacheSpec {
            key: self.key,
            untracked: self.untracked,
            policy: match self.policy.as_str() {
                "pull" => CachePolicy::Pull,
                "push" => CachePolicy::Push,
                _ => CachePolicy::PullPush,
            },
            paths: self.paths.0,
            when: match self.when.as_str() {
                "on_failure" => When::OnFailure,
                "always" => When::Always,
                _ => When::OnSuccess,
            },
            fallback_keys: self.fallback_keys.0,
        }
    }
}

impl CredentialWire {
    fn into_credential(self) -> Credential {
        Credential {
            kind: self.kind,
            url: self.url,
            username: self.username,
            password: Secret::new(self.password),
        }
    }
}

impl DependencyWire {
    fn into_dependency(self) -> Dependency {
        Dependency {
            id: JobId(self.id.unsigned()),
            token: JobToken::new(self.token),
            name: self.name,
            artifacts_filename: self.artifacts_file.filename,
            artifacts_size: self.artifacts_file.size.unsigned(),
        }
    }
}

fn convert<W, T>(items: Vec<W>, f: impl FnMut(W) -> T) -> Vec<T> {
    items.into_iter().map(f).collect()
}

/// `None` for absent, zero or negative timeouts; longer than [`runnel_types::MAX_DURATION`]
/// is clamped to it (a huge value must not overflow the deadline computed from it).
fn positive_seconds(seconds: Int) -> Option<Duration> {
    (seconds.0 > 0).then(|| runnel_types::clamp_duration(Duration::from_secs(seconds.unsigned())))
}

/// A service `alias` may list several names separated by commas and/or spaces.
fn split_aliases(alias: &str) -> Vec<String> {
    alias
        .split([',', ' '])
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `None` when unset; unknown formats are logged and treated as unset (a zip archive).
fn artifact_format(format: &str) -> Option<ArtifactFormat> {
    match format {
        "" => None,
        "zip" => Some(ArtifactFormat::Zip),
        "gzip" => Some(ArtifactFormat::Gzip),
        "raw" => Some(ArtifactFormat::Raw),
        "zipzstd" => Some(ArtifactFormat::ZipZstd),
        "tarzstd" => Some(ArtifactFormat::TarZstd),
        other => {
            tracing::warn!(format = other, "unknown artifact format, using zip");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_inputs_and_secrets_are_named() {
        let job = decode_job(
            br#"{"id": 7, "run": [{"name": "a", "script": "exit 1"}],
                "inputs": [{"key": "env", "value": {"type": "string", "content": "x"}}],
                "secrets": {"DB": {"vault": {"path": "p"}, "file": true}, "EMPTY": null}}"#,
        )
        .unwrap();
        assert!(job.run.contains("exit 1"));
        assert_eq!(job.inputs, ["env"]);
        assert_eq!(job.secrets.len(), 1);
        assert_eq!(job.secrets[0].variable, "DB");
        assert_eq!(job.secrets[0].providers, ["vault"]);
        let plain = decode_job(br#"{"id": 8, "run": [], "inputs": [], "secrets": {}}"#).unwrap();
        assert!(plain.run.is_empty() && plain.inputs.is_empty() && plain.secrets.is_empty());
    }

    #[test]
    fn aliases_split_on_commas_and_spaces() {
        assert_eq!(split_aliases("db, pg  postgres,"), ["db", "pg", "postgres"]);
        assert!(split_aliases("").is_empty());
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert_eq!(positive_seconds(Int(0)), None);
        assert_eq!(positive_seconds(Int(-5)), None);
        assert_eq!(positive_seconds(Int(60)), Some(Duration::from_secs(60)));
        // review M1 (p_timeout.json): i64::MAX seconds is clamped, not an Instant overflow.
        assert_eq!(
            positive_seconds(Int(i64::MAX)),
            Some(runnel_types::MAX_DURATION)
        );
    }

    #[test]
    fn artifact_formats_parse() {
        assert_eq!(artifact_format(""), None);
        assert_eq!(artifact_format("gzip"), Some(ArtifactFormat::Gzip));
        assert_eq!(artifact_format("tarzstd"), Some(ArtifactFormat::TarZstd));
        assert_eq!(artifact_format("bogus"), None);
    }
}
