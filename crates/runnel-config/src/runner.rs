//! One `[[runners]]` entry: credentials, limits, executor choice and executor sections.
//!
//! The typed view holds what the file says (after `$VAR` expansion of `url` and `token`);
//! methods such as [`RunnerConfig::request_concurrency`] apply the official defaults. Executors
//! with large, fast-moving option sets (Kubernetes, docker+machine, autoscaler, …) are kept as
//! [`RawTable`]s for their own crates to deserialize. Talking to GitLab is not done here.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_types::RunnerToken;
use time::OffsetDateTime;

use crate::cache::CacheConfig;
use crate::datetime::non_zero;
use crate::docker::DockerConfig;
use crate::keyword::keyword_enum;
use crate::labels::check_labels;
use crate::raw::RawTable;
use crate::read::{Context, Field, Node, Read, Section, or_default, read_section, section};

/// Default `output_limit`, in KiB (4 MiB).
pub const DEFAULT_OUTPUT_LIMIT_KIB: u32 = 4096;
/// Default `unhealthy_requests_limit`.
pub const DEFAULT_UNHEALTHY_REQUESTS_LIMIT: u32 = 3;
/// Default `unhealthy_interval`.
pub const DEFAULT_UNHEALTHY_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Default `job_status_final_update_retry_limit`.
pub const DEFAULT_FINAL_UPDATE_RETRY_LIMIT: u32 = 10;
/// Default `[runners.artifact] upload_timeout`.
pub const DEFAULT_ARTIFACT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Default `[runners.artifact] response_header_timeout`.
pub const DEFAULT_ARTIFACT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(10 * 60);

keyword_enum! {
    /// The `executor` of a runner: the official executor names.
    pub enum Executor ("executor", one_or_many = false) {
        /// Runs jobs as processes on the host.
        Shell = "shell",
        /// Runs jobs in Docker containers.
        Docker = "docker",
        /// Runs jobs in Windows Docker containers.
        DockerWindows = "docker-windows",
        /// Docker on machines created by docker-machine (deprecated upstream).
        DockerMachine = "docker+machine",
        /// Docker on autoscaled instances (fleeting).
        DockerAutoscaler = "docker-autoscaler",
        /// Runs jobs in Kubernetes pods.
        Kubernetes = "kubernetes",
        /// Runs jobs through user-provided executables.
        Custom = "custom",
        /// Runs jobs on autoscaled instances (fleeting).
        Instance = "instance",
        /// Runs jobs over SSH.
        Ssh = "ssh",
        /// Runs jobs in Parallels VMs.
        Parallels = "parallels",
        /// Runs jobs in VirtualBox VMs.
        Virtualbox = "virtualbox",
    }
}

impl Executor {
    /// The `[runners.<section>]` that holds this executor's options, if it has one.
    pub fn section(self) -> Option<&'static str> {
        match self {
            Self::Shell => None,
            Self::Docker | Self::DockerWindows | Self::DockerMachine | Self::DockerAutoscaler => {
                Some("docker")
            }
            Self::Kubernetes => Some("kubernetes"),
            Self::Custom => Some("custom"),
            Self::Instance => Some("instance"),
            Self::Ssh => Some("ssh"),
            Self::Parallels => Some("parallels"),
            Self::Virtualbox => Some("virtualbox"),
        }
    }
}

/// The executor is required: a runner without one cannot run anything.
impl Field for Executor {
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self> {
        match section.node(key) {
            Some(node) => Self::read(&node, cx),
            None => {
                let expected: Vec<&str> = Self::ALL.iter().map(|e| e.as_str()).collect();
                let message = format!(
                    "missing key \"{key}\", expected one of: {}",
                    expected.join(", ")
                );
                cx.error(section.path(), section.span(), message);
                None
            }
        }
    }
}

keyword_enum! {
    /// The `shell` a runner generates job scripts for (the shells the official runner registers).
    pub enum Shell ("shell", one_or_many = false) {
        /// GNU Bash.
        Bash = "bash",
        /// POSIX sh.
        Sh = "sh",
        /// PowerShell Core.
        Pwsh = "pwsh",
        /// Windows PowerShell.
        Powershell = "powershell",
    }
}

impl Read for RunnerToken {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        node.str(cx).map(RunnerToken::new)
    }
}

impl Field for RunnerToken {
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self> {
        or_default(section, key, cx)
    }
}

section! {
    /// One `[[runners]]` entry, in the official key order.
    pub struct RunnerConfig {
        /// Display name (`name`, `--description` on the command line).
        "name" => name: String,
        /// Most jobs this runner runs at once; 0 means no limit beyond `concurrent`.
        "limit" => limit: u32,
        /// Job log size cap in KiB; see [`RunnerConfig::output_limit_bytes`].
        "output_limit" => output_limit: Option<u32>,
        /// Concurrent `/jobs/request` calls; see [`RunnerConfig::request_concurrency`].
        "request_concurrency" => request_concurrency: Option<u32>,
        /// Failed requests before the runner backs off; see [`RunnerConfig::unhealthy_requests_limit`].
        "unhealthy_requests_limit" => unhealthy_requests_limit: Option<u32>,
        /// How long an unhealthy runner backs off; see [`RunnerConfig::unhealthy_interval`].
        "unhealthy_interval" => unhealthy_interval: Option<Duration>,
        /// Retries of the final job update; see [`RunnerConfig::job_status_final_update_retry_limit`].
        "job_status_final_update_retry_limit" => job_status_final_update_retry_limit: Option<u32>,
        /// GitLab URL, `$VAR`-expanded.
        "url" => url: String,
        /// Runner ID returned by registration; `None` when missing or 0.
        "id" => id: Option<u64>,
        /// Authentication token, `$VAR`-expanded.
        "token" => token: RunnerToken,
        /// When the token was obtained; `None` for Go's zero time.
        "token_obtained_at" => token_obtained_at: Option<OffsetDateTime>,
        /// When the token expires; `None` for Go's zero time (never).
        "token_expires_at" => token_expires_at: Option<OffsetDateTime>,
        /// CA bundle to verify GitLab's certificate.
        "tls-ca-file" => tls_ca_file: Option<String>,
        /// Client certificate for TLS authentication.
        "tls-cert-file" => tls_cert_file: Option<String>,
        /// Client key for TLS authentication.
        "tls-key-file" => tls_key_file: Option<String>,
        /// Which executor runs the jobs.
        "executor" => executor: Executor,
        /// Where builds are checked out (executor default when unset).
        "builds_dir" => builds_dir: Option<String>,
        /// Where local caches are kept (executor default when unset).
        "cache_dir" => cache_dir: Option<String>,
        /// Overrides the host part of the git remote.
        "clone_url" => clone_url: Option<String>,
        /// `KEY=VALUE` entries added to every job's variables.
        "environment" => environment: Vec<String>,
        /// Script run before fetching sources.
        "pre_get_sources_script" => pre_get_sources_script: Option<String>,
        /// Script run after fetching sources.
        "post_get_sources_script" => post_get_sources_script: Option<String>,
        /// Script run before the job script.
        "pre_build_script" => pre_build_script: Option<String>,
        /// Script run after the job script.
        "post_build_script" => post_build_script: Option<String>,
        /// Ignores `CI_DEBUG_TRACE` and `CI_DEBUG_SERVICES`.
        "debug_trace_disabled" => debug_trace_disabled: bool,
        /// Adds the build dir to git's `safe.directory`.
        "safe_directory_checkout" => safe_directory_checkout: Option<bool>,
        /// Removes the checkout's git config and hooks before fetching (unset: on for every
        /// executor but shell).
        "clean_git_config" => clean_git_config: Option<bool>,
        /// The shell job scripts are generated for (executor default when unset).
        "shell" => shell: Option<Shell>,
        /// Time limit of the prepare stage (clamped to the job timeout).
        "prepare_timeout" => prepare_timeout: Option<Duration>,
        /// Time limit of the get-sources stage (clamped to the job timeout).
        "get_sources_timeout" => get_sources_timeout: Option<Duration>,
        /// Experimental proxy-exec mode.
        "proxy_exec" => proxy_exec: Option<bool>,
        /// Do not request the next job right after getting one.
        "strict_check_interval" => strict_check_interval: bool,
        /// Labels of this runner (metrics, usage logs).
        "labels" => labels: BTreeMap<String, String>,
        /// `FF_NAME = true|false`, overriding job variables.
        "feature_flags" => feature_flags: BTreeMap<String, bool>,
        /// `[runners.custom_build_dir]`.
        "custom_build_dir" => custom_build_dir: Option<CustomBuildDir>,
        /// `[runners.artifact]`.
        "artifact" => artifact: Option<ArtifactConfig>,
        /// `[runners.cache]`.
        "cache" => cache: Option<CacheConfig>,
        /// `[runners.docker]`.
        "docker" => docker: Option<DockerConfig>,
        /// `[runners.kubernetes]`, untyped.
        "kubernetes" => kubernetes: Option<RawTable>,
        /// `[runners.custom]`.
        "custom" => custom: Option<CustomConfig>,
        /// `[runners.ssh]`.
        "ssh" => ssh: Option<SshConfig>,
        /// `[runners.machine]` (docker+machine), untyped.
        "machine" => machine: Option<RawTable>,
        /// `[runners.autoscaler]` (fleeting), untyped.
        "autoscaler" => autoscaler: Option<RawTable>,
        /// `[runners.instance]`, untyped.
        "instance" => instance: Option<RawTable>,
        /// `[runners.parallels]`, untyped.
        "parallels" => parallels: Option<RawTable>,
        /// `[runners.virtualbox]`, untyped.
        "virtualbox" => virtualbox: Option<RawTable>,
        /// `[runners.referees]`, untyped.
        "referees" => referees: Option<RawTable>,
        /// `[runners.monitoring]`, untyped.
        "monitoring" => monitoring: Option<RawTable>,
        /// `[runners.experimental]`, untyped.
        "experimental" => experimental: Option<RawTable>,
        /// Puts each job slot in its own cgroup.
        "use_slot_cgroups" => use_slot_cgroups: bool,
        /// cgroup path template for slot cgroups.
        "slot_cgroup_template" => slot_cgroup_template: Option<String>,
        /// Image of the step runner.
        "step_runner_image" => step_runner_image: Option<String>,
    }
}

impl Read for RunnerConfig {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let mut section = Section::open(node, cx)?;
        let runner = Self::read_fields(&mut section, cx);
        check_labels(&mut section, cx);
        check_url(&mut section, cx);
        section.finish(cx);
        runner.map(|runner| runner.resolve(cx))
    }
}

/// Warns about a `url` that is not an http(s) URL once `$VAR`s are expanded (empty is
/// allowed). Like the official runner, the file still loads (its documentation's examples use
/// placeholders such as `gitlab.example.com`); such a runner fails when it connects.
fn check_url(section: &mut Section<'_>, cx: &mut Context<'_>) {
    let Some(node) = section.node("url") else {
        return;
    };
    let Some(url) = node.value().and_then(toml_edit::Value::as_str) else {
        return;
    };
    let expanded = cx.expand(url);
    let valid =
        url::Url::parse(&expanded).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !expanded.is_empty() && !valid {
        let message = format!(
            "invalid URL {expanded:?}, expected http(s)://host/: this runner cannot connect"
        );
        cx.warning(&node.path, node.span(), message);
    }
}

impl RunnerConfig {
    /// The keys of this entry that are set but that Runnel parses without acting on them, where
    /// ignoring them changes no job (the daemon warns about them at start; docs/compatibility.md
    /// lists them): `step_runner_image` (the official runner does not read it either) and
    /// `[runners.monitoring]` (metrics thresholds). Keys that would change what a job does are
    /// [`RunnerConfig::refused_keys`] instead. Sections of executors Runnel does not run are not
    /// listed: such runners are refused as a whole.
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        [
            ("step_runner_image", self.step_runner_image.is_some()),
            ("[runners.monitoring]", self.monitoring.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .chain(
            self.docker
                .as_ref()
                .filter(|_| self.executor == Executor::Docker)
                .map(crate::DockerConfig::ignored_keys)
                .unwrap_or_default(),
        )
        .collect()
    }

    /// The keys of this entry set to something Runnel cannot honour and that would change what
    /// a job does, one message each naming the key: such a runner is refused at start rather
    /// than run its jobs differently. Values equal to what Runnel does (`proxy_exec = false`,
    /// the default artifact timeouts) are accepted.
    pub fn refused_keys(&self) -> Vec<String> {
        let mut refused = Vec::new();
        if self.proxy_exec == Some(true) {
            refused.push(
                "proxy_exec = true (running job commands through the helper binary) is not supported by Runnel"
                    .to_owned(),
            );
        }
        if self.use_slot_cgroups {
            refused.push(
                "use_slot_cgroups = true (a cgroup per job slot) is not supported by Runnel"
                    .to_owned(),
            );
        }
        if self.referees.is_some() {
            refused.push(
                "[runners.referees] (metrics referee artifacts) is not supported by Runnel"
                    .to_owned(),
            );
        }
        if let Some(cache) = &self.cache {
            refused.extend(cache.refused_keys());
        }
        if let Some(artifact) = &self.artifact {
            let limits = [
                (
                    "upload_timeout",
                    artifact.upload_timeout,
                    DEFAULT_ARTIFACT_UPLOAD_TIMEOUT,
                ),
                (
                    "response_header_timeout",
                    artifact.response_header_timeout,
                    DEFAULT_ARTIFACT_RESPONSE_HEADER_TIMEOUT,
                ),
            ];
            for (key, value, default) in limits {
                if let Some(value) = value.filter(|&value| value != default) {
                    refused.push(format!(
                        "[runners.artifact] {key} = \"{}\" is not supported by Runnel (artifact uploads use the default {})",
                        go_duration(value),
                        go_duration(default)
                    ));
                }
            }
        }
        refused
    }

    /// Expands `url` and `token` like the official runner and normalises unset values.
    fn resolve(mut self, cx: &Context<'_>) -> Self {
        self.url = cx.expand(&self.url);
        self.token = RunnerToken::new(cx.expand(self.token.expose()));
        self.id = self.id.filter(|&id| id != 0);
        self.token_obtained_at = self.token_obtained_at.and_then(non_zero);
        self.token_expires_at = self.token_expires_at.and_then(non_zero);
        self
    }

    /// The job log cap in bytes (`output_limit` KiB, 4 MiB when unset or 0).
    pub fn output_limit_bytes(&self) -> u64 {
        let kib = self
            .output_limit
            .filter(|&kib| kib > 0)
            .unwrap_or(DEFAULT_OUTPUT_LIMIT_KIB);
        u64::from(kib) * 1024
    }

    /// Concurrent job requests, at least 1.
    pub fn request_concurrency(&self) -> u32 {
        self.request_concurrency.unwrap_or(1).max(1)
    }

    /// Failed requests before backing off (3 when unset or 0).
    pub fn unhealthy_requests_limit(&self) -> u32 {
        self.unhealthy_requests_limit
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_UNHEALTHY_REQUESTS_LIMIT)
    }

    /// How long to back off once unhealthy (1 h when unset).
    pub fn unhealthy_interval(&self) -> Duration {
        self.unhealthy_interval
            .unwrap_or(DEFAULT_UNHEALTHY_INTERVAL)
    }

    /// Retries of the final job update (10 when unset or 0).
    pub fn job_status_final_update_retry_limit(&self) -> u32 {
        self.job_status_final_update_retry_limit
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_FINAL_UPDATE_RETRY_LIMIT)
    }

    /// Artifact upload timeout (1 h unless `[runners.artifact]` says otherwise).
    pub fn artifact_upload_timeout(&self) -> Duration {
        self.artifact
            .as_ref()
            .and_then(|a| a.upload_timeout)
            .unwrap_or(DEFAULT_ARTIFACT_UPLOAD_TIMEOUT)
    }

    /// Artifact response header timeout (10 min unless `[runners.artifact]` says otherwise).
    pub fn artifact_response_header_timeout(&self) -> Duration {
        self.artifact
            .as_ref()
            .and_then(|a| a.response_header_timeout)
            .unwrap_or(DEFAULT_ARTIFACT_RESPONSE_HEADER_TIMEOUT)
    }

    /// The configured value of a feature flag, if the runner sets it.
    pub fn feature_flag(&self, name: &str) -> Option<bool> {
        self.feature_flags.get(name).copied()
    }

    /// `[runners.custom_build_dir] enabled` as written; `None` when not set, where the
    /// executor's default applies (on for docker, off for shell, as the official runner).
    pub fn custom_build_dir_setting(&self) -> Option<bool> {
        self.custom_build_dir.as_ref().and_then(|dir| dir.enabled)
    }

    /// Whether the configuration explicitly lets jobs pick their own build dir with
    /// `GIT_CLONE_PATH` (see [`Self::custom_build_dir_setting`] for the default).
    pub fn custom_build_dir_enabled(&self) -> bool {
        self.custom_build_dir_setting() == Some(true)
    }
}

/// `d` as Go prints a `time.Duration` of whole seconds (`1h0m0s`, `10m0s`, `45s`); a
/// fraction shows as decimal seconds.
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}s", d.as_secs_f64());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

section! {
    /// `[runners.custom_build_dir]`.
    pub struct CustomBuildDir {
        /// Allows `GIT_CLONE_PATH`; unset means the executor's default.
        "enabled" => enabled: Option<bool>,
    }
}

section! {
    /// `[runners.artifact]`.
    pub struct ArtifactConfig {
        /// Time limit of an artifact upload (Go duration).
        "upload_timeout" => upload_timeout: Option<Duration>,
        /// Time to wait for the response headers of an upload (Go duration).
        "response_header_timeout" => response_header_timeout: Option<Duration>,
    }
}

section! {
    /// `[runners.custom]`: the custom executor's programs. Timeouts are in seconds.
    pub struct CustomConfig {
        /// Program that returns executor settings as JSON.
        "config_exec" => config_exec: Option<String>,
        /// Arguments of `config_exec`.
        "config_args" => config_args: Vec<String>,
        /// Time limit of `config_exec`, in seconds.
        "config_exec_timeout" => config_exec_timeout: Option<u64>,
        /// Program that prepares the environment.
        "prepare_exec" => prepare_exec: Option<String>,
        /// Arguments of `prepare_exec`.
        "prepare_args" => prepare_args: Vec<String>,
        /// Time limit of `prepare_exec`, in seconds.
        "prepare_exec_timeout" => prepare_exec_timeout: Option<u64>,
        /// Program that runs each job script.
        "run_exec" => run_exec: Option<String>,
        /// Arguments of `run_exec`.
        "run_args" => run_args: Vec<String>,
        /// Program that cleans up.
        "cleanup_exec" => cleanup_exec: Option<String>,
        /// Arguments of `cleanup_exec`.
        "cleanup_args" => cleanup_args: Vec<String>,
        /// Time limit of `cleanup_exec`, in seconds.
        "cleanup_exec_timeout" => cleanup_exec_timeout: Option<u64>,
        /// Grace period after SIGTERM, in seconds.
        "graceful_kill_timeout" => graceful_kill_timeout: Option<u64>,
        /// Wait after SIGKILL before giving up on a process, in seconds.
        "force_kill_timeout" => force_kill_timeout: Option<u64>,
    }
}

section! {
    /// `[runners.ssh]`: where the SSH executor (and VM executors) connect.
    pub struct SshConfig {
        /// Login user.
        "user" => user: Option<String>,
        /// Login password.
        "password" => password: Option<runnel_types::Secret>,
        /// Host to connect to.
        "host" => host: Option<String>,
        /// Port, as a string like the official config.
        "port" => port: Option<String>,
        /// Private key file.
        "identity_file" => identity_file: Option<String>,
        /// Skips host key verification.
        "disable_strict_host_key_checking" => disable_strict_host_key_checking: Option<bool>,
        /// known_hosts file to verify against.
        "known_hosts_file" => known_hosts_file: Option<String>,
    }
}

read_section!(CustomBuildDir, ArtifactConfig, CustomConfig, SshConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_parse_by_their_official_names() {
        for executor in Executor::ALL {
            assert_eq!(executor.as_str().parse::<Executor>(), Ok(*executor));
        }
        assert_eq!(
            "dockr".parse::<Executor>().unwrap_err().to_string(),
            "unknown executor \"dockr\", expected one of: shell, docker, docker-windows, \
             docker+machine, docker-autoscaler, kubernetes, custom, instance, ssh, parallels, \
             virtualbox"
        );
    }

    #[test]
    fn docker_flavours_share_the_docker_section() {
        assert_eq!(Executor::DockerAutoscaler.section(), Some("docker"));
        assert_eq!(Executor::DockerWindows.section(), Some("docker"));
        assert_eq!(Executor::Shell.section(), None);
        assert_eq!(Executor::Kubernetes.section(), Some("kubernetes"));
    }
}
