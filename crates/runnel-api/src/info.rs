//! The `info` object the runner sends with register, verify, job requests and job updates
//! (reference 3.2): who we are, what executor and shell we run, and which features we support.
//!
//! GitLab persists the feature set from every request, so every feature key is always sent.
//! This module only describes; the daemon decides which features its executor really has.

use std::collections::BTreeMap;
use std::ops::BitOr;

use serde::Serialize;

/// The name GitLab shows for this runner implementation.
const RUNNER_NAME: &str = "runnel";
/// Our version, as GitLab records it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision, when the build provides it.
const REVISION: &str = match option_env!("RUNNEL_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

macro_rules! features {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The feature flags reported in `info.features`, one bool per key GitLab knows.
        ///
        /// Combine the sets of the layers that make up the runner with `|`, e.g.
        /// `Features::network_client() | Features::shell() | Features::shell_executor()`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        #[allow(clippy::struct_excessive_bools)] // one flag per wire key, by design
        pub struct Features {
            $($(#[$doc])* pub $name: bool,)*
        }

        impl BitOr for Features {
            type Output = Self;

            fn bitor(self, other: Self) -> Self {
                Self { $($name: self.$name || other.$name,)* }
            }
        }
    };
}

features! {
    /// Job variables are passed to the job.
    variables,
    /// The job `image` is honoured.
    image,
    /// `services` are started.
    services,
    /// Artifacts are uploaded.
    artifacts,
    /// Caches are restored and saved.
    cache,
    /// `cache:fallback_keys` are used.
    fallback_cache_keys,
    /// The runner is shared (the shell executor reports this).
    shared,
    /// More than one artifact per job can be uploaded.
    upload_multiple_artifacts,
    /// Raw (non-archive) artifacts can be uploaded.
    upload_raw_artifacts,
    /// Interactive web sessions.
    session,
    /// Web terminals.
    terminal,
    /// `git_info.refspecs` are used for fetching.
    refspecs,
    /// Masked variables are hidden in the log.
    masking,
    /// Services can be proxied.
    proxy,
    /// `raw` variables are not expanded.
    raw_variables,
    /// `artifacts:exclude` is honoured.
    artifacts_exclude,
    /// Multiple build steps (`release`, …).
    multi_build_steps,
    /// The trace can be restarted from 0 (HTTP 416 handling).
    trace_reset,
    /// The final update carries the trace checksum.
    trace_checksum,
    /// The final update carries the trace size.
    trace_size,
    /// Vault secrets are resolved.
    vault_secrets,
    /// Jobs can be canceled.
    cancelable,
    /// The script exit code is reported.
    return_exit_code,
    /// Service variables are passed to services.
    service_variables,
    /// A service may have several aliases.
    service_multiple_aliases,
    /// `image:docker` / `image:kubernetes` options.
    image_executor_opts,
    /// Executor options for services.
    service_executor_opts,
    /// `canceling` runs `after_script` before stopping.
    cancel_gracefully,
    /// Native step-runner integration.
    native_steps_integration,
    /// A job is acknowledged with `state=running` right after it is received.
    two_phase_job_commit,
    /// Job inputs are interpolated.
    job_inputs,
}

impl Features {
    /// What the official network client reports.
    pub fn network_client() -> Self {
        Self {
            trace_reset: true,
            trace_checksum: true,
            trace_size: true,
            cancelable: true,
            cancel_gracefully: true,
            two_phase_job_commit: true,
            job_inputs: true,
            ..Self::default()
        }
    }

    /// What the official shell-script layer reports (common to every executor).
    pub fn shell() -> Self {
        Self {
            artifacts: true,
            upload_multiple_artifacts: true,
            upload_raw_artifacts: true,
            cache: true,
            fallback_cache_keys: true,
            refspecs: true,
            masking: true,
            raw_variables: true,
            artifacts_exclude: true,
            multi_build_steps: true,
            vault_secrets: true,
            return_exit_code: true,
            ..Self::default()
        }
    }

    /// What the official shell executor adds.
    pub fn shell_executor() -> Self {
        Self {
            variables: true,
            shared: true,
            session: true,
            terminal: true,
            native_steps_integration: true,
            ..Self::default()
        }
    }

    /// What the official docker executor adds.
    pub fn docker_executor() -> Self {
        Self {
            variables: true,
            image: true,
            image_executor_opts: true,
            services: true,
            service_executor_opts: true,
            service_multiple_aliases: true,
            service_variables: true,
            session: true,
            terminal: true,
            native_steps_integration: true,
            ..Self::default()
        }
    }

    /// What the official kubernetes executor adds.
    pub fn kubernetes_executor() -> Self {
        Self {
            artifacts: true,
            cache: true,
            fallback_cache_keys: true,
            proxy: true,
            ..Self::docker_executor()
        }
    }

    /// What the official custom executor adds.
    pub fn custom_executor() -> Self {
        Self {
            variables: true,
            shared: true,
            service_variables: true,
            ..Self::default()
        }
    }
}

/// What the caller tells GitLab about this runner in `info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerInfo {
    /// The executor name (`shell`, `docker`, …); empty is omitted.
    pub executor: String,
    /// The shell name (`bash`, `pwsh`, …); empty is omitted.
    pub shell: String,
    /// Runner labels; empty is omitted.
    pub labels: BTreeMap<String, String>,
    /// Supported features.
    pub features: Features,
    /// The `gpus` setting of the executor (sent as `config.gpus`).
    pub gpus: String,
}

/// The wire form of [`RunnerInfo`].
#[derive(Debug, Serialize)]
pub(crate) struct InfoWire<'a> {
    name: &'static str,
    version: &'static str,
    revision: &'static str,
    platform: &'static str,
    architecture: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    executor: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    shell: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    features: Features,
    config: ConfigWire<'a>,
}

#[derive(Debug, Serialize)]
struct ConfigWire<'a> {
    gpus: &'a str,
}

impl<'a> From<&'a RunnerInfo> for InfoWire<'a> {
    fn from(info: &'a RunnerInfo) -> Self {
        Self {
            name: RUNNER_NAME,
            version: VERSION,
            revision: REVISION,
            platform: platform(),
            architecture: architecture(),
            executor: &info.executor,
            shell: &info.shell,
            labels: &info.labels,
            features: info.features,
            config: ConfigWire { gpus: &info.gpus },
        }
    }
}

/// The operating system in Go's vocabulary (`GOOS`), as GitLab displays it.
pub(crate) fn platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    }
}

/// The CPU architecture in Go's vocabulary (`GOARCH`), as GitLab displays it.
pub(crate) fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        arch => arch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_key_is_always_sent() {
        let json = serde_json::to_value(Features::default()).unwrap();
        let keys = json.as_object().unwrap();
        assert_eq!(keys.len(), 31);
        assert!(keys.values().all(|v| v == false));
    }

    #[test]
    fn feature_sets_combine() {
        let all = Features::network_client() | Features::shell() | Features::docker_executor();
        assert!(all.cancel_gracefully && all.artifacts && all.image && all.services);
        assert!(!all.proxy && !all.shared);
        assert!(Features::kubernetes_executor().proxy);
    }
}
