//! Builds the job payload GitLab sends on `POST /jobs/request` (reference section 3.4).
//!
//! [`JobBuilder`] collects what a test cares about (script, variables, timeout, targeting) and
//! fills everything else with GitLab-like defaults: the predefined `CI_*` variables, `git_info`
//! with a `gitlab-ci-token` clone URL, the `script`/`after_script` steps and the `features`
//! object. The id, job token and server URL are only known at enqueue time, so the payload is
//! rendered then, by [`JobDefinition::payload`]. [`JobBuilder::repo`] points the job at a
//! repository the fake serves, so its sources can really be cloned. It does not model every payload field: use
//! [`JobBuilder::extra`] for image, services, cache, artifacts or dependencies.

use http::Uri;
use serde_json::{Map, Value, json};

use crate::git::RepoHandle;

/// The failure reasons modern GitLab lists in `features.failure_reasons`.
pub const GITLAB_FAILURE_REASONS: &[&str] = &[
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "missing_dependency_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
    "forward_deployment_failure",
    "user_blocked",
    "project_deleted",
    "ci_quota_exceeded",
    "pipeline_loop_detected",
    "no_matching_runner",
    "trace_size_exceeded",
    "builds_disabled",
    "environment_creation_failure",
    "deployment_rejected",
    "failed_outdated_deployment_job",
    "protected_environment_failure",
    "insufficient_bridge_permissions",
    "downstream_bridge_project_not_found",
    "invalid_bridge_trigger",
    "upstream_bridge_project_not_found",
    "insufficient_upstream_permissions",
    "bridge_pipeline_is_child_pipeline",
    "downstream_pipeline_creation_failed",
    "secrets_provider_not_found",
    "reached_max_descendant_pipelines_depth",
    "ip_restriction_failure",
    "reached_max_pipeline_hierarchy_size",
    "reached_downstream_pipeline_trigger_rate_limit",
];

/// The commit every built job points at unless told otherwise.
const DEFAULT_SHA: &str = "69b18e5ed3610cf646119c3e38f462c64ec462b7";
const DEFAULT_BEFORE_SHA: &str = "1ea27a9695f80d7816d9e8ce025d9b2df83d0dd7";

/// `GIT_STRATEGY` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitStrategy {
    /// Fresh clone.
    Clone,
    /// Fetch into an existing checkout.
    Fetch,
    /// No git operations.
    None,
    /// Empty project directory.
    Empty,
}

impl GitStrategy {
    /// The variable value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clone => "clone",
            Self::Fetch => "fetch",
            Self::None => "none",
            Self::Empty => "empty",
        }
    }
}

/// One job variable as it appears in the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadVariable {
    /// Variable name.
    pub key: String,
    /// Variable value (for file variables: the file content).
    pub value: String,
    /// Whether the value is not secret.
    pub public: bool,
    /// Whether the runner must mask the value in the trace.
    pub masked: bool,
    /// Whether the runner writes the value to a file and exports the path.
    pub file: bool,
    /// Whether `$VAR` references in the value must not be expanded.
    pub raw: bool,
}

impl PayloadVariable {
    /// A public, unmasked variable.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            public: true,
            masked: false,
            file: false,
            raw: false,
        }
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("key".into(), json!(self.key));
        object.insert("value".into(), json!(self.value));
        object.insert("public".into(), json!(self.public));
        object.insert("masked".into(), json!(self.masked));
        // GitLab omits these two when false; keep that shape so parsers see both forms.
        if self.file {
            object.insert("file".into(), json!(true));
        }
        if self.raw {
            object.insert("raw".into(), json!(true));
        }
        Value::Object(object)
    }
}

/// Describes a job to enqueue; see the module docs for the defaults.
#[derive(Clone, Debug)]
pub struct JobBuilder {
    name: String,
    stage: String,
    script: Vec<String>,
    after_script: Vec<String>,
    variables: Vec<PayloadVariable>,
    timeout_secs: u64,
    git_strategy: Option<GitStrategy>,
    git_depth: u32,
    failure_reasons: Vec<String>,
    trace_sections: bool,
    allow_git_fetch: bool,
    project_id: u64,
    project_path: String,
    pipeline_id: u64,
    git_ref: String,
    sha: String,
    before_sha: String,
    ref_is_tag: bool,
    clone_token: Option<String>,
    tags: Vec<String>,
    runner_id: Option<u64>,
    extra: Map<String, Value>,
}

impl JobBuilder {
    /// A job named `name` in stage `test` of project `group/project`, with no script yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            stage: "test".to_owned(),
            script: Vec::new(),
            after_script: Vec::new(),
            variables: Vec::new(),
            timeout_secs: 3600,
            git_strategy: None,
            git_depth: 20,
            failure_reasons: GITLAB_FAILURE_REASONS
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            trace_sections: true,
            allow_git_fetch: true,
            project_id: 1,
            project_path: "group/project".to_owned(),
            pipeline_id: 1,
            git_ref: "main".to_owned(),
            sha: DEFAULT_SHA.to_owned(),
            before_sha: DEFAULT_BEFORE_SHA.to_owned(),
            ref_is_tag: false,
            clone_token: None,
            tags: Vec::new(),
            runner_id: None,
            extra: Map::new(),
        }
    }

    /// The stage name (`job_info.stage`, `CI_JOB_STAGE`).
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = stage.into();
        self
    }

    /// The `script` step's lines.
    pub fn script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, lines: I) -> Self {
        self.script = lines.into_iter().map(Into::into).collect();
        self
    }

    /// The `after_script` step's lines; no `after_script` step is sent when empty.
    pub fn after_script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, lines: I) -> Self {
        self.after_script = lines.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a public variable.
    pub fn variable(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.raw_variable(PayloadVariable::new(key, value))
    }

    /// Adds a masked, non-public variable.
    pub fn masked_variable(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.raw_variable(PayloadVariable {
            public: false,
            masked: true,
            ..PayloadVariable::new(key, value)
        })
    }

    /// Adds a file-type variable.
    pub fn file_variable(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.raw_variable(PayloadVariable {
            public: false,
            file: true,
            ..PayloadVariable::new(key, value)
        })
    }

    /// Adds a variable with every flag spelled out.
    pub fn raw_variable(mut self, variable: PayloadVariable) -> Self {
        self.variables.push(variable);
        self
    }

    /// `runner_info.timeout` and the steps' timeout, in seconds.
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Sends `GIT_STRATEGY`.
    pub fn git_strategy(mut self, strategy: GitStrategy) -> Self {
        self.git_strategy = Some(strategy);
        self
    }

    /// `git_info.depth` (GitLab's default is 20; 0 means a full clone).
    pub fn git_depth(mut self, depth: u32) -> Self {
        self.git_depth = depth;
        self
    }

    /// `features.failure_reasons` (defaults to [`GITLAB_FAILURE_REASONS`]).
    pub fn failure_reasons<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        reasons: I,
    ) -> Self {
        self.failure_reasons = reasons.into_iter().map(Into::into).collect();
        self
    }

    /// `features.trace_sections`.
    pub fn trace_sections(mut self, enabled: bool) -> Self {
        self.trace_sections = enabled;
        self
    }

    /// `allow_git_fetch`.
    pub fn allow_git_fetch(mut self, allowed: bool) -> Self {
        self.allow_git_fetch = allowed;
        self
    }

    /// The project (`group/name` path) and its id.
    pub fn project(mut self, id: u64, full_path: impl Into<String>) -> Self {
        self.project_id = id;
        self.project_path = full_path.into();
        self
    }

    /// The pipeline id.
    pub fn pipeline_id(mut self, id: u64) -> Self {
        self.pipeline_id = id;
        self
    }

    /// The branch and commit the job runs on.
    pub fn commit(mut self, git_ref: impl Into<String>, sha: impl Into<String>) -> Self {
        self.git_ref = git_ref.into();
        self.sha = sha.into();
        self
    }

    /// Runs the job on commit `sha` of `git_ref` (a branch, or a tag made with
    /// [`RepoHandle::create_tag`]) of a repository the fake serves: sets the project path,
    /// `git_info` (clone URL, ref, ref type, `before_sha` — the commit's parent when the handle
    /// made it, else zeros) and the `CI_COMMIT_*`/`CI_REPOSITORY_URL` variables.
    pub fn repo(mut self, repo: &RepoHandle, git_ref: impl Into<String>, sha: &str) -> Self {
        self.git_ref = git_ref.into();
        self.ref_is_tag = repo.is_tag(&self.git_ref);
        self.project_path = repo.path().to_owned();
        self.sha = sha.to_owned();
        self.before_sha = repo
            .parent_of(sha)
            .unwrap_or_else(|| crate::git::NULL_SHA.to_owned());
        self
    }

    /// `git_info.before_sha` and `CI_COMMIT_BEFORE_SHA`.
    pub fn before_sha(mut self, sha: impl Into<String>) -> Self {
        self.before_sha = sha.into();
        self
    }

    /// Puts `token` instead of the job token into the clone URL (`git_info.repo_url` and
    /// `CI_REPOSITORY_URL`), to see a clone the fake refuses.
    pub fn clone_token(mut self, token: impl Into<String>) -> Self {
        self.clone_token = Some(token.into());
        self
    }

    /// Only runners carrying all these tags may pick the job (untagged jobs need runners that
    /// run untagged jobs).
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Only this runner may pick the job.
    pub fn runner(mut self, runner_id: u64) -> Self {
        self.runner_id = Some(runner_id);
        self
    }

    /// Sets a top-level payload field as is (`image`, `services`, `cache`, `artifacts`,
    /// `dependencies`, `hooks`…), replacing the default if any.
    pub fn extra(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// Finishes the description.
    pub fn build(self) -> JobDefinition {
        JobDefinition { spec: self }
    }
}

/// Identity assigned at enqueue time.
#[derive(Clone, Copy, Debug)]
pub struct JobIdentity<'a> {
    /// Job id.
    pub id: u64,
    /// Job token (`glcbt-…`).
    pub token: &'a str,
    /// Base URL of the fake, e.g. `http://127.0.0.1:4321`.
    pub server_url: &'a str,
}

/// A finished job description, ready to be enqueued.
#[derive(Clone, Debug)]
pub struct JobDefinition {
    spec: JobBuilder,
}

impl From<JobBuilder> for JobDefinition {
    fn from(builder: JobBuilder) -> Self {
        builder.build()
    }
}

impl JobDefinition {
    /// Tags a runner needs to pick the job.
    pub fn tags(&self) -> &[String] {
        &self.spec.tags
    }

    /// The only runner allowed to pick the job, if any.
    pub fn runner_id(&self) -> Option<u64> {
        self.spec.runner_id
    }

    /// The JSON payload GitLab would send for this job.
    pub fn payload(&self, identity: JobIdentity<'_>) -> Value {
        let spec = &self.spec;
        let server = ServerParts::parse(identity.server_url);
        let clone_token = spec.clone_token.as_deref().unwrap_or(identity.token);
        let repo_url = format!(
            "{}://gitlab-ci-token:{clone_token}@{}/{}.git",
            server.scheme, server.authority, spec.project_path
        );
        let mut payload = json!({
            "id": identity.id,
            "token": identity.token,
            "allow_git_fetch": spec.allow_git_fetch,
            "job_info": self.job_info(),
            "git_info": {
                "repo_url": repo_url,
                "repo_object_format": "sha1",
                "ref": spec.git_ref,
                "sha": spec.sha,
                "before_sha": spec.before_sha,
                "ref_type": if spec.ref_is_tag { "tag" } else { "branch" },
                "refspecs": self.refspecs(),
                "depth": spec.git_depth,
            },
            "runner_info": { "timeout": spec.timeout_secs },
            "variables": self.variables(identity, &server, &repo_url),
            "steps": self.steps(),
            "image": null,
            "services": [],
            "artifacts": [],
            "cache": [],
            "credentials": [{
                "type": "registry",
                "url": format!("{}:5050", server.host),
                "username": "gitlab-ci-token",
                "password": identity.token,
            }],
            "dependencies": [],
            "features": {
                "trace_sections": spec.trace_sections,
                "token_mask_prefixes": ["glpat-", "glcbt-", "glrt-"],
                "failure_reasons": spec.failure_reasons,
            },
        });
        if let Value::Object(object) = &mut payload {
            object.extend(spec.extra.clone());
        }
        payload
    }

    /// GitLab's refspecs: the pipeline's persistent ref, then the job's branch or tag when the
    /// clone is shallow, or every branch and tag when it is not.
    fn refspecs(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut refspecs = vec![format!("+{}:refs/pipelines/{}", spec.sha, spec.pipeline_id)];
        if spec.git_depth == 0 {
            refspecs.push("+refs/heads/*:refs/remotes/origin/*".to_owned());
            refspecs.push("+refs/tags/*:refs/tags/*".to_owned());
        } else if spec.ref_is_tag {
            refspecs.push(format!("+refs/tags/{0}:refs/tags/{0}", spec.git_ref));
        } else {
            refspecs.push(format!(
                "+refs/heads/{0}:refs/remotes/origin/{0}",
                spec.git_ref
            ));
        }
        refspecs
    }

    fn job_info(&self) -> Value {
        let spec = &self.spec;
        json!({
            "name": spec.name,
            "stage": spec.stage,
            "pipeline_id": spec.pipeline_id,
            "project_id": spec.project_id,
            "project_name": project_name(&spec.project_path),
            "project_full_path": spec.project_path,
            "namespace_id": 1,
            "root_namespace_id": 1,
            "organization_id": 1,
            "user_id": 1,
            "time_in_queue_seconds": 0.0,
            "project_jobs_running_on_instance_runners_count": "0",
            "queue_size": 0,
            "queue_depth": 0,
        })
    }

    fn steps(&self) -> Value {
        let spec = &self.spec;
        let mut steps = vec![json!({
            "name": "script",
            "script": spec.script,
            "timeout": spec.timeout_secs,
            "when": "on_success",
            "allow_failure": false,
        })];
        if !spec.after_script.is_empty() {
            steps.push(json!({
                "name": "after_script",
                "script": spec.after_script,
                "timeout": spec.timeout_secs,
                "when": "always",
                "allow_failure": true,
            }));
        }
        Value::Array(steps)
    }

    fn variables(&self, identity: JobIdentity<'_>, server: &ServerParts, repo_url: &str) -> Value {
        let spec = &self.spec;
        let project_url = format!("{}/{}", identity.server_url, spec.project_path);
        let namespace = namespace(&spec.project_path);
        let secret = |key: &str, value: &str| PayloadVariable {
            public: false,
            masked: true,
            ..PayloadVariable::new(key, value)
        };
        let mut variables = vec![
            PayloadVariable::new("CI_PIPELINE_ID", spec.pipeline_id.to_string()),
            PayloadVariable::new(
                "CI_PIPELINE_URL",
                format!("{project_url}/-/pipelines/{}", spec.pipeline_id),
            ),
            PayloadVariable::new("CI_JOB_ID", identity.id.to_string()),
            PayloadVariable::new(
                "CI_JOB_URL",
                format!("{project_url}/-/jobs/{}", identity.id),
            ),
            secret("CI_JOB_TOKEN", identity.token),
            PayloadVariable::new("CI_JOB_NAME", &spec.name),
            PayloadVariable::new("CI_JOB_STAGE", &spec.stage),
            secret("CI_REGISTRY_PASSWORD", identity.token),
            PayloadVariable {
                public: false,
                ..PayloadVariable::new("CI_REPOSITORY_URL", repo_url)
            },
            PayloadVariable::new("CI", "true"),
            PayloadVariable::new("GITLAB_CI", "true"),
            PayloadVariable::new("CI_SERVER", "yes"),
            PayloadVariable::new("CI_SERVER_URL", identity.server_url),
            PayloadVariable::new("CI_SERVER_HOST", &server.host),
            PayloadVariable::new("CI_SERVER_PORT", server.port.to_string()),
            PayloadVariable::new("CI_SERVER_PROTOCOL", &server.scheme),
            PayloadVariable::new("CI_SERVER_NAME", "GitLab"),
            PayloadVariable::new("CI_PROJECT_ID", spec.project_id.to_string()),
            PayloadVariable::new("CI_PROJECT_NAME", project_name(&spec.project_path)),
            PayloadVariable::new("CI_PROJECT_PATH", &spec.project_path),
            PayloadVariable::new("CI_PROJECT_NAMESPACE", namespace),
            PayloadVariable::new("CI_PROJECT_URL", &project_url),
            PayloadVariable::new("CI_DEFAULT_BRANCH", "main"),
            PayloadVariable::new("CI_COMMIT_SHA", &spec.sha),
            PayloadVariable::new(
                "CI_COMMIT_SHORT_SHA",
                spec.sha.chars().take(8).collect::<String>(),
            ),
            PayloadVariable::new("CI_COMMIT_BEFORE_SHA", &spec.before_sha),
            PayloadVariable::new("CI_COMMIT_REF_NAME", &spec.git_ref),
            PayloadVariable::new(
                if spec.ref_is_tag {
                    "CI_COMMIT_TAG"
                } else {
                    "CI_COMMIT_BRANCH"
                },
                &spec.git_ref,
            ),
            PayloadVariable::new("CI_PIPELINE_SOURCE", "push"),
            PayloadVariable::new("CI_NODE_TOTAL", "1"),
        ];
        if let Some(strategy) = spec.git_strategy {
            variables.push(PayloadVariable::new("GIT_STRATEGY", strategy.as_str()));
        }
        variables.extend(spec.variables.iter().cloned());
        Value::Array(variables.iter().map(PayloadVariable::to_json).collect())
    }
}

/// Scheme, host and port of the server URL, for the `CI_SERVER_*` variables.
struct ServerParts {
    scheme: String,
    host: String,
    port: u16,
    authority: String,
}

impl ServerParts {
    fn parse(server_url: &str) -> Self {
        let uri = Uri::try_from(server_url).ok();
        let scheme = uri
            .as_ref()
            .and_then(Uri::scheme_str)
            .unwrap_or("http")
            .to_owned();
        let host = uri
            .as_ref()
            .and_then(Uri::host)
            .unwrap_or("localhost")
            .to_owned();
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = uri.as_ref().and_then(Uri::port_u16).unwrap_or(default_port);
        let authority = uri
            .as_ref()
            .and_then(Uri::authority)
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        Self {
            scheme,
            host,
            port,
            authority,
        }
    }
}

fn project_name(full_path: &str) -> &str {
    full_path.rsplit('/').next().unwrap_or(full_path)
}

fn namespace(full_path: &str) -> &str {
    full_path
        .rsplit_once('/')
        .map_or("", |(namespace, _)| namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(builder: JobBuilder) -> Value {
        builder.build().payload(JobIdentity {
            id: 42,
            token: "glcbt-64_TESTTOKEN",
            server_url: "http://gitlab.test:8080",
        })
    }

    #[test]
    fn default_payload_shape() {
        let payload = render(
            JobBuilder::new("build")
                .script(["echo hi"])
                .after_script(["echo bye"])
                .variable("PLAIN", "1")
                .masked_variable("SECRET", "hunter22")
                .file_variable("CONF", "a=b")
                .git_strategy(GitStrategy::Fetch)
                .failure_reasons(["script_failure", "runner_system_failure"]),
        );
        insta::assert_json_snapshot!(payload);
    }

    #[test]
    fn extra_fields_replace_defaults_and_no_after_script_step_when_empty() {
        let payload = render(
            JobBuilder::new("build")
                .script(["true"])
                .extra("image", json!({"name": "alpine:3"})),
        );
        assert_eq!(payload["image"], json!({"name": "alpine:3"}));
        assert_eq!(payload["steps"].as_array().map(Vec::len), Some(1));
    }
}
