//! The typed pipeline: what `.gitlab-ci.yml` says once includes, `extends`, `!reference`,
//! `default` and anchors are resolved, before any rule is evaluated.
//!
//! These types carry meaning, not YAML: every list is flattened, every short form (`image:
//! alpine`, `cache: {key: x}`, `allow_failure: true`) is expanded to one shape. They do not
//! decide which jobs run; see [`crate::evaluate`].

use std::time::Duration;

use crate::error::{Location, Warning};
use crate::expr::Expr;

/// A variable from `variables:` (global, job, rule or matrix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarDef {
    pub key: String,
    pub value: String,
    /// `false` for `expand: false`: the value is used as written, `$` and all.
    pub expand: bool,
    pub description: Option<String>,
}

impl VarDef {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            expand: true,
            description: None,
        }
    }
}

/// `when`: when a job runs relative to the jobs before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
    Manual,
    Delayed,
    Never,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
            Self::Manual => "manual",
            Self::Delayed => "delayed",
            Self::Never => "never",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on_success" => Self::OnSuccess,
            "on_failure" => Self::OnFailure,
            "always" => Self::Always,
            "manual" => Self::Manual,
            "delayed" => Self::Delayed,
            "never" => Self::Never,
            _ => return None,
        })
    }
}

/// `allow_failure`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowFailure {
    No,
    Yes,
    /// Failure is allowed only for these exit codes.
    ExitCodes(Vec<i32>),
}

impl AllowFailure {
    /// Whether any failure may be allowed (true for `ExitCodes`).
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::No)
    }
}

/// A parsed `if:` expression and its source text.
#[derive(Clone, Debug)]
pub struct Condition {
    pub source: String,
    pub at: Location,
    pub(crate) expr: Expr,
}

/// One entry of `rules:` (job or workflow).
#[derive(Clone, Debug, Default)]
pub struct Rule {
    pub condition: Option<Condition>,
    /// `changes` paths or globs; `None` when the rule has no `changes`.
    pub changes: Option<Vec<String>>,
    pub exists: Option<Vec<String>>,
    pub when: Option<When>,
    pub start_in: Option<String>,
    pub allow_failure: Option<AllowFailure>,
    pub variables: Vec<VarDef>,
    /// `rules:needs`, replacing the job's `needs` when the rule matches.
    pub needs: Option<Vec<Need>>,
}

/// `only:`/`except:` (the legacy job filter).
#[derive(Clone, Debug, Default)]
pub struct Refs {
    /// Branch names, `/regex/` patterns and keywords (`branches`, `tags`, `merge_requests`, …).
    pub refs: Vec<String>,
    /// Variable expressions; any true one matches.
    pub variables: Vec<Condition>,
    pub changes: Option<Vec<String>>,
    pub at: Location,
}

/// `workflow:`.
#[derive(Clone, Debug, Default)]
pub struct Workflow {
    pub name: Option<String>,
    pub rules: Option<Vec<Rule>>,
}

/// `image` or one entry of `services`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub alias: Option<String>,
    pub variables: Vec<VarDef>,
    pub pull_policy: Vec<String>,
    /// `docker: platform`.
    pub docker_platform: Option<String>,
    /// `docker: user`.
    pub docker_user: Option<String>,
    /// `kubernetes: user`.
    pub kubernetes_user: Option<String>,
}

/// One `needs` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub job: String,
    pub artifacts: bool,
    pub optional: bool,
    /// `parallel:matrix`: only the instances of `job` with these values (values may use
    /// `$[[ matrix.NAME ]]` for the needing job's own matrix value).
    pub matrix: Option<Matrix>,
    pub at: Location,
}

/// When artifacts or caches are saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SaveWhen {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

impl SaveWhen {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on_success" => Self::OnSuccess,
            "on_failure" => Self::OnFailure,
            "always" => Self::Always,
            _ => return None,
        })
    }
}

/// `artifacts:`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Artifacts {
    pub name: Option<String>,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub untracked: bool,
    pub when: SaveWhen,
    pub expire_in: Option<String>,
    pub expose_as: Option<String>,
    /// `reports:` as (artifact type, paths), in file order.
    pub reports: Vec<(String, Vec<String>)>,
}

/// `cache:key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheKey {
    Literal(String),
    Files {
        files: Vec<String>,
        prefix: Option<String>,
    },
}

impl Default for CacheKey {
    fn default() -> Self {
        Self::Literal("default".to_owned())
    }
}

/// `cache:policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    #[default]
    PullPush,
    Pull,
    Push,
}

/// One `cache` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cache {
    pub key: CacheKey,
    pub paths: Vec<String>,
    pub policy: CachePolicy,
    pub when: SaveWhen,
    pub untracked: bool,
    pub fallback_keys: Vec<String>,
}

/// A `parallel:matrix`: each entry is one matrix item, (variable, values) in file order.
pub type Matrix = Vec<Vec<(String, Vec<String>)>>;

/// `parallel:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parallel {
    Count(u32),
    Matrix(Matrix),
}

/// `retry:`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retry {
    pub max: u32,
    pub when: Vec<String>,
    pub exit_codes: Vec<i32>,
}

/// `environment:` (kept for display; deployments are not modelled locally).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    pub url: Option<String>,
    pub action: Option<String>,
}

/// What `inherit:` lets through from the global level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inherit {
    All,
    None,
    Only(Vec<String>),
}

impl Inherit {
    pub(crate) fn allows(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            Self::Only(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// A job as configured (after `extends` and `default`), before rules are evaluated.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub at: Location,
    pub stage: String,
    pub image: Option<Image>,
    pub services: Vec<Image>,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    /// `hooks:` as (hook name, script), e.g. `pre_get_sources_script`.
    pub hooks: Vec<(String, Vec<String>)>,
    /// Job-level `variables` (global ones are added at evaluation, subject to `inherit`).
    pub variables: Vec<VarDef>,
    pub inherit_variables: Inherit,
    pub rules: Option<Vec<Rule>>,
    pub only: Option<Refs>,
    pub except: Option<Refs>,
    /// Job-level `when`; `None` when not written.
    pub when: Option<When>,
    pub start_in: Option<String>,
    /// Job-level `allow_failure`; `None` when not written.
    pub allow_failure: Option<AllowFailure>,
    /// `None`: no `needs` (stage order); `Some(vec![])`: `needs: []`.
    pub needs: Option<Vec<Need>>,
    pub dependencies: Option<Vec<String>>,
    pub artifacts: Option<Artifacts>,
    pub cache: Vec<Cache>,
    pub parallel: Option<Parallel>,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub tags: Vec<String>,
    pub interruptible: bool,
    pub coverage: Option<String>,
    pub environment: Option<Environment>,
    pub resource_group: Option<String>,
    /// `secrets:`: the variables an external secret store would provide, with whether each is
    /// a file variable (`file:`, default true). `runnel exec` fetches none: the user passes them.
    pub secrets: Vec<(String, bool)>,
}

/// A loaded pipeline definition.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Stages in order, `.pre` first and `.post` last.
    pub stages: Vec<String>,
    pub variables: Vec<VarDef>,
    pub workflow: Workflow,
    /// Visible jobs in file order (hidden `.jobs` are templates only).
    pub jobs: Vec<Job>,
    /// The keys of hidden jobs (`.name`), in file order: templates that never run.
    pub hidden: Vec<String>,
    /// Keys understood but not supported locally, or ignored.
    pub warnings: Vec<Warning>,
    /// Every file read, root first.
    pub files: Vec<String>,
}

impl Pipeline {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}
