//! What the planner needs to know about the runner: [`PlanOptions`], filled by the daemon from
//! `config.toml`, the host and the build slot.
//!
//! This crate deliberately does not read `config.toml` itself (no dependency on
//! `runnel-config`), the environment, the clock or the filesystem: every host fact arrives here.

use std::sync::Arc;
use std::time::Duration;

use crate::remote_cache::RemoteCache;

/// Which executor runs the job; it decides the environment flavour and the builds-dir layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    #[default]
    Shell,
    Docker,
    DockerWindows,
    DockerMachine,
    DockerAutoscaler,
    Kubernetes,
    Custom,
    Instance,
    Ssh,
    Parallels,
    VirtualBox,
}

impl ExecutorKind {
    /// The name used in `config.toml` and in `Preparing the "<name>" executor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Docker => "docker",
            Self::DockerWindows => "docker-windows",
            Self::DockerMachine => "docker+machine",
            Self::DockerAutoscaler => "docker-autoscaler",
            Self::Kubernetes => "kubernetes",
            Self::Custom => "custom",
            Self::Instance => "instance",
            Self::Ssh => "ssh",
            Self::Parallels => "parallels",
            Self::VirtualBox => "virtualbox",
        }
    }

    /// Whether jobs share the host with other jobs (`CI_SHARED_ENVIRONMENT`) rather than
    /// running in a throw-away environment (`CI_DISPOSABLE_ENVIRONMENT`).
    pub fn is_shared_environment(self) -> bool {
        matches!(
            self,
            Self::Shell | Self::Ssh | Self::Custom | Self::Instance
        )
    }

    /// Whether the builds dir is shared between runners and slots, so project dirs are nested
    /// under `<short token>/<concurrent project id>/`.
    pub fn has_shared_builds_dir(self) -> bool {
        matches!(self, Self::Shell | Self::Ssh | Self::Instance)
    }

    /// How a failing script's exit status reads in `ERROR: Job failed: …`.
    pub(crate) fn exit_status_text(self, code: i32) -> String {
        match self {
            Self::Docker | Self::DockerWindows | Self::DockerMachine | Self::DockerAutoscaler => {
                format!("exit code {code}")
            }
            Self::Kubernetes => format!("command terminated with exit code {code}"),
            _ => format!("exit status {code}"),
        }
    }
}

/// The POSIX shell the scripts are generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Shell {
    #[default]
    Bash,
    Sh,
}

impl Shell {
    /// The program name (`bash` or `sh`), as written in the shebang.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bash => "bash",
            Self::Sh => "sh",
        }
    }
}

/// The runner-side inputs of a plan.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `[[runners]] name`.
    pub runner_name: String,
    /// The short runner token (`CI_RUNNER_SHORT_TOKEN`, directory names).
    pub short_token: String,
    /// The runner manager's system id (`s_…`/`r_…`).
    pub system_id: String,
    /// Runnel's version, e.g. `0.1.0`.
    pub version: String,
    /// Runnel's revision (short commit).
    pub revision: String,
    /// The executor running the job.
    pub executor: ExecutorKind,
    /// The shell the scripts target.
    pub shell: Shell,
    /// Absolute builds dir (as seen by the job).
    pub builds_dir: String,
    /// Whether builds dirs are shared between jobs (project dirs nested under
    /// `<short token>/<concurrent project id>/`), when the executor decides it at run time (the
    /// custom executor's `builds_dir_is_shared`); `None` takes the executor kind's default.
    pub shared_builds_dir: Option<bool>,
    /// Absolute cache dir (as seen by the job).
    pub cache_dir: String,
    /// `CI_CONCURRENT_ID`: the job's slot among this runner's running jobs.
    pub concurrent_id: u32,
    /// `CI_CONCURRENT_PROJECT_ID`: the slot among this runner's jobs of the same project.
    pub concurrent_project_id: u32,
    /// `[[runners]] environment` entries, `"KEY=VALUE"`.
    pub environment: Vec<String>,
    /// `pre_get_sources_script`.
    pub pre_get_sources_script: String,
    /// `post_get_sources_script`.
    pub post_get_sources_script: String,
    /// `pre_build_script`.
    pub pre_build_script: String,
    /// `post_build_script`.
    pub post_build_script: String,
    /// `[runners.feature_flags]`, which win over job variables.
    pub feature_flags: Vec<(String, bool)>,
    /// `[runners.custom_build_dir] enabled`: whether `GIT_CLONE_PATH` is allowed.
    pub custom_build_dir: bool,
    /// `debug_trace_disabled`: ignore `CI_DEBUG_TRACE`.
    pub debug_trace_disabled: bool,
    /// `clean_git_config`: before fetching into a checkout, remove its `.git/config` and
    /// `.git/hooks` (those of its submodules and of the git template dir too), so a job cannot
    /// plant git config or hooks that the next job's git runs. `None` takes the official
    /// default: on for every executor but shell (see [`PlanOptions::cleans_git_config`]).
    pub clean_git_config: Option<bool>,
    /// `safe_directory_checkout`: before fetching, add the project dir to git's global
    /// `safe.directory` list, so git works in a checkout another user owns (a previous job's
    /// rootless image). `None` takes the official default: on for docker and kubernetes, off
    /// for shell, ssh and custom (see [`PlanOptions::adds_safe_directory`]).
    pub safe_directory_checkout: Option<bool>,
    /// `prepare_timeout`: limit of the executor's preparation and the `prepare_script` stage,
    /// from the job's start (clamped to the job timeout; `None` or zero = the job timeout).
    pub prepare_timeout: Option<Duration>,
    /// `get_sources_timeout`: limit of the `get_sources` stage, all its attempts together
    /// (clamped to the job timeout; `None` or zero = the job timeout).
    pub get_sources_timeout: Option<Duration>,
    /// The host name shown in `Running on $(hostname) via <hostname>...`; empty omits it.
    pub hostname: String,
    /// The name of the host the scripts run on, when the daemon knows it (the shell executor
    /// runs them on its own host): written into `Running on … via …` literally, where
    /// `$(hostname)` would start a process that prints the same. `None` keeps `$(hostname)`.
    pub script_host: Option<String>,
    /// Path of the runner binary, for helper stages (cache, artifacts).
    pub runner_command: String,
    /// The GitLab URL from the runner's configuration, which artifact helpers talk to (it can
    /// differ from the job's `CI_SERVER_URL`, e.g. behind a proxy); empty = use `CI_SERVER_URL`.
    pub server_url: String,
    /// `clone_url`: fetch sources from this base URL instead of the job's `repo_url` (the
    /// project path and the job token are added to it); empty = use `repo_url`.
    pub clone_url: String,
    /// Contents of the TLS CA chain for `CI_SERVER_TLS_CA_FILE`, if any.
    pub tls_ca: Option<String>,
    /// Contents of the TLS client certificate for `CI_SERVER_TLS_CERT_FILE`; used only
    /// together with [`Self::tls_key`].
    pub tls_cert: Option<String>,
    /// Contents of the TLS client key for `CI_SERVER_TLS_KEY_FILE`; used only together with
    /// [`Self::tls_cert`].
    pub tls_key: Option<runnel_types::Secret>,
    /// `CI_RUNNER_EXECUTABLE_ARCH`, e.g. `linux/amd64`.
    pub os_arch: String,
    /// The distributed cache (`[runners.cache]`), if one is configured: presigned URLs for the
    /// cache helpers. `None` keeps caches local.
    pub remote_cache: Option<Arc<dyn RemoteCache>>,
    /// Whether the executor runs each stage script in a subshell of its own with stdin from
    /// `/dev/null` (the shell executor's session does, see `runnel-executor`): the script then
    /// evaluates its body directly instead of starting another subshell for it, one process
    /// fewer per stage with the same effects. `false` (the official script) for executors that
    /// run the script as a shell's whole input.
    pub stage_subshell: bool,
    /// Whether the executor makes the job's private temp dir before the first stage (0700,
    /// replacing a symlink or non-directory planted there) and removes it after the last, as
    /// the shell executor does for a runner running jobs as its own user: the cleanup stage
    /// then does not remove it (one `rm` process fewer per job). The stages still make it
    /// when it is missing (a script may remove it), which costs no process when it is there.
    pub temp_dir_by_executor: bool,
    /// Whether the executor runs a stage's [`crate::PlannedStage::inline`] form, when it has
    /// one, in its shell session's own shell instead of a subshell (the shell executor's
    /// session does): Runnel's housekeeping stages (`prepare_script`, `get_sources` without
    /// git or hooks, `cleanup_file_variables`) then cost no process of their own. Their
    /// output and status are the full script's.
    pub inline_housekeeping: bool,
    /// Whether the executor runs [`crate::JobPlan::after_report`] after the job's final state
    /// is reported, in the job's shell, before it removes the job's temp dir (the shell
    /// executor does): the cleanup's `git credential reject` then moves there, with the job's
    /// variables exported as the official cleanup exports them. GitLab revokes the job token
    /// when the job ends, so erasing it from a credential helper need not delay the job's
    /// result. Only with a temp dir the executor makes and removes
    /// ([`PlanOptions::temp_dir_by_executor`]).
    pub credential_reject_after_report: bool,
}

impl PlanOptions {
    /// Whether `get_sources` removes the git config and hooks a previous job may have left
    /// (`clean_git_config`; unset: on for every executor but shell, as the official runner).
    pub fn cleans_git_config(&self) -> bool {
        self.clean_git_config
            .unwrap_or(self.executor != ExecutorKind::Shell)
    }

    /// Whether `get_sources` adds the project dir to git's global `safe.directory`
    /// (`safe_directory_checkout`; unset: the official per-executor default, on where the
    /// sources are fetched in a container or VM and off where jobs run as the runner's user).
    pub fn adds_safe_directory(&self) -> bool {
        self.safe_directory_checkout.unwrap_or(matches!(
            self.executor,
            ExecutorKind::Docker
                | ExecutorKind::DockerWindows
                | ExecutorKind::DockerMachine
                | ExecutorKind::DockerAutoscaler
                | ExecutorKind::Kubernetes
                | ExecutorKind::Parallels
                | ExecutorKind::VirtualBox
        ))
    }
}
