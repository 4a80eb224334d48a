//! The job model: what the coordinator asks us to run, and how a job can end.
//!
//! Field meanings follow the official runner's job payload (reference section 3.4). Optional
//! payload fields are plain defaults here (empty string, empty list, zero) so that downstream
//! code never has to unwrap.

use std::fmt;
use std::time::Duration;

use crate::{JobToken, Secret};

/// A job id as GitLab numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One job, as received from `POST /jobs/request`.
#[derive(Clone, Debug, Default)]
pub struct JobSpec {
    pub id: JobId,
    pub token: JobToken,
    /// If true the default `GIT_STRATEGY` is `fetch`, else `clone`.
    pub allow_git_fetch: bool,
    pub info: JobInfo,
    pub git: GitInfo,
    /// `runner_info.timeout`; `None` when absent or not positive (the runner then uses 2 h).
    pub timeout: Option<Duration>,
    /// Variables in the order GitLab sent them (later entries win on lookup).
    pub variables: Vec<Variable>,
    pub steps: Vec<Step>,
    pub image: Option<ImageSpec>,
    pub services: Vec<ImageSpec>,
    pub artifacts: Vec<ArtifactSpec>,
    pub cache: Vec<CacheSpec>,
    pub credentials: Vec<Credential>,
    pub dependencies: Vec<Dependency>,
    pub features: JobFeatures,
    pub hooks: Vec<Hook>,
    /// The `run` keyword (CI steps run by a step runner) as the JSON text GitLab sent; empty
    /// when the job has none.
    pub run: String,
    /// The keys of the job's `inputs` (interpolated by the runner into `${{ job.inputs.* }}`).
    pub inputs: Vec<String>,
    /// The job's `secrets`, each with the providers it names.
    pub secrets: Vec<SecretRequest>,
}

/// One entry of a job's `secrets:`: the variable it fills and the provider(s) that hold it
/// (`vault`, `gcp_secret_manager`, `azure_key_vault`, `aws_secrets_manager`,
/// `gitlab_secrets_manager`, …, as the payload names them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretRequest {
    pub variable: String,
    pub providers: Vec<String>,
}

impl JobSpec {
    /// The last variable named `key`, as GitLab's lookup rules pick it.
    pub fn variable(&self, key: &str) -> Option<&Variable> {
        self.variables.iter().rev().find(|v| v.key == key)
    }
}

/// `job_info`: names and ids that describe the job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobInfo {
    pub name: String,
    pub stage: String,
    pub pipeline_id: u64,
    pub project_id: u64,
    pub project_name: String,
    pub project_full_path: String,
    pub namespace_id: u64,
    pub root_namespace_id: u64,
    pub user_id: u64,
    pub time_in_queue_seconds: f64,
    pub queue_size: u64,
    pub queue_depth: u64,
    /// `project_jobs_running_on_instance_runners_count` as GitLab sends it (a bucket such as
    /// `"0"`, `"3+"`, `"+Inf"`), for the queue duration metric.
    pub project_jobs_running_on_instance_runners_count: String,
}

/// Whether `git_info.ref` names a branch or a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RefType {
    #[default]
    Branch,
    Tag,
}

/// `git_info`: where the sources come from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GitInfo {
    /// Clone URL; it carries `gitlab-ci-token:<job token>@`, hence a [`Secret`].
    pub repo_url: Secret,
    /// `sha1` or `sha256`; empty means sha1.
    pub repo_object_format: String,
    pub ref_name: String,
    pub sha: String,
    pub before_sha: String,
    pub ref_type: RefType,
    pub refspecs: Vec<String>,
    /// Shallow clone depth; 0 means full history.
    pub depth: u32,
    pub protected: Option<bool>,
}

/// One job variable.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Variable {
    pub key: String,
    pub value: String,
    pub public: bool,
    /// File-type: the value is written to a file and the variable holds its path.
    pub file: bool,
    /// The value must never appear in the job log.
    pub masked: bool,
    /// Not subject to `$VAR` expansion.
    pub raw: bool,
    /// Added by the runner itself (not sent by GitLab).
    pub internal: bool,
}

impl Variable {
    /// A plain public variable.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            public: true,
            ..Self::default()
        }
    }
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if self.masked || !self.public {
            &"[MASKED]"
        } else {
            &self.value
        };
        f.debug_struct("Variable")
            .field("key", &self.key)
            .field("value", value)
            .field("file", &self.file)
            .field("masked", &self.masked)
            .field("raw", &self.raw)
            .finish()
    }
}

/// When something runs relative to how the job went so far: a step, an artifact upload, a
/// cache save (GitLab's `when: on_success | on_failure | always`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

impl When {
    /// Whether it runs for a job that has (`failed`) or has not failed.
    pub fn applies(self, failed: bool) -> bool {
        match self {
            Self::Always => true,
            Self::OnSuccess => !failed,
            Self::OnFailure => failed,
        }
    }
}

/// One entry of `steps`: `script`, `after_script`, `release`, …
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub name: String,
    pub script: Vec<String>,
    pub timeout: Option<Duration>,
    pub when: When,
    pub allow_failure: bool,
}

/// A port a service image exposes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImagePort {
    pub number: u16,
    pub protocol: String,
    pub name: String,
}

/// The job `image` or one of its `services`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageSpec {
    pub name: String,
    /// Every alias (the payload's `alias` may list several, comma or space separated).
    pub aliases: Vec<String>,
    pub command: Vec<String>,
    pub entrypoint: Vec<String>,
    pub ports: Vec<ImagePort>,
    pub variables: Vec<Variable>,
    pub pull_policy: Vec<String>,
    /// `executor_opts.docker.platform`.
    pub docker_platform: String,
    /// `executor_opts.docker.user`.
    pub docker_user: String,
    /// `executor_opts.kubernetes.user`.
    pub kubernetes_user: String,
}

/// Archive format of an artifact upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ArtifactFormat {
    #[default]
    Zip,
    Gzip,
    Raw,
    ZipZstd,
    TarZstd,
}

impl ArtifactFormat {
    /// The name used in the `artifact_format` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zip => "zip",
            Self::Gzip => "gzip",
            Self::Raw => "raw",
            Self::ZipZstd => "zipzstd",
            Self::TarZstd => "tarzstd",
        }
    }
}

/// One `artifacts` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArtifactSpec {
    pub name: String,
    pub untracked: bool,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub when: When,
    /// `archive`, `junit`, `dotenv`, …; empty means the GitLab default.
    pub artifact_type: String,
    /// `None` when the payload did not say (then zip, unsent).
    pub format: Option<ArtifactFormat>,
    pub expire_in: String,
}

/// Cache policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    #[default]
    PullPush,
    Pull,
    Push,
}

/// One `cache` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheSpec {
    pub key: String,
    pub untracked: bool,
    pub policy: CachePolicy,
    pub paths: Vec<String>,
    pub when: When,
    pub fallback_keys: Vec<String>,
}

/// Registry credentials.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credential {
    pub kind: String,
    pub url: String,
    pub username: String,
    pub password: Secret,
}

/// A job whose artifacts this job needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dependency {
    pub id: JobId,
    pub token: JobToken,
    pub name: String,
    /// Empty when the dependency has no artifacts to download.
    pub artifacts_filename: String,
    pub artifacts_size: u64,
}

/// `features`: what the server wants from the log and the final update.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFeatures {
    pub trace_sections: bool,
    pub token_mask_prefixes: Vec<String>,
    /// Failure reasons the server understands; others are mapped (see [`FailureReason`]).
    pub failure_reasons: Vec<String>,
}

/// A job hook (`pre_get_sources_script`, `post_get_sources_script`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hook {
    pub name: String,
    pub script: Vec<String>,
}

/// The state a job update reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Success,
    Failed,
}

impl JobState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }
}

/// Why a job failed, in the official runner's vocabulary (reference section 4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    ScriptFailure,
    RunnerSystemFailure,
    JobExecutionTimeout,
    ImagePullFailure,
    RunnerConfigurationError,
    RunnerExternalDependencyFailure,
    RunnerInterrupted,
    UnknownFailure,
    /// Internal only: GitLab does not know it and receives `unknown_failure`.
    JobCanceled,
}

impl FailureReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScriptFailure => "script_failure",
            Self::RunnerSystemFailure => "runner_system_failure",
            Self::JobExecutionTimeout => "job_execution_timeout",
            Self::ImagePullFailure => "image_pull_failure",
            Self::RunnerConfigurationError => "runner_configuration_error",
            Self::RunnerExternalDependencyFailure => "runner_external_dependency_failure",
            Self::RunnerInterrupted => "runner_interrupted",
            Self::UnknownFailure => "unknown_failure",
            Self::JobCanceled => "job_canceled",
        }
    }

    /// The reason to send to a server that supports `supported` (the job's
    /// `features.failure_reasons`): script_failure, runner_system_failure and
    /// job_execution_timeout are always understood; others fall back through the official
    /// compatibility map, and finally to `unknown_failure`.
    pub fn for_server(self, supported: &[String]) -> FailureReason {
        let always = [
            Self::ScriptFailure,
            Self::RunnerSystemFailure,
            Self::JobExecutionTimeout,
        ];
        let known =
            |r: FailureReason| always.contains(&r) || supported.iter().any(|s| s == r.as_str());
        if known(self) {
            return self;
        }
        let fallback = match self {
            Self::ImagePullFailure | Self::RunnerExternalDependencyFailure => {
                Self::RunnerSystemFailure
            }
            Self::RunnerConfigurationError => Self::ScriptFailure,
            _ => Self::UnknownFailure,
        };
        if known(fallback) {
            fallback
        } else {
            Self::UnknownFailure
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_map_like_the_official_runner() {
        let none: Vec<String> = vec![];
        assert_eq!(
            FailureReason::ScriptFailure.for_server(&none),
            FailureReason::ScriptFailure
        );
        assert_eq!(
            FailureReason::ImagePullFailure.for_server(&none),
            FailureReason::RunnerSystemFailure
        );
        assert_eq!(
            FailureReason::RunnerConfigurationError.for_server(&none),
            FailureReason::ScriptFailure
        );
        assert_eq!(
            FailureReason::RunnerInterrupted.for_server(&none),
            FailureReason::UnknownFailure
        );
        assert_eq!(
            FailureReason::JobCanceled.for_server(&none),
            FailureReason::UnknownFailure
        );
        let some = vec![
            "runner_interrupted".to_owned(),
            "image_pull_failure".to_owned(),
        ];
        assert_eq!(
            FailureReason::RunnerInterrupted.for_server(&some),
            FailureReason::RunnerInterrupted
        );
        assert_eq!(
            FailureReason::ImagePullFailure.for_server(&some),
            FailureReason::ImagePullFailure
        );
    }

    #[test]
    fn masked_variables_do_not_debug_print() {
        let mut v = Variable::new("SECRET", "hunter2");
        v.masked = true;
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn variable_lookup_takes_the_last() {
        let job = JobSpec {
            variables: vec![Variable::new("A", "1"), Variable::new("A", "2")],
            ..JobSpec::default()
        };
        assert_eq!(job.variable("A").map(|v| v.value.as_str()), Some("2"));
    }
}
