//! Feature flags (`FF_*`): the table of names and defaults, and resolution
//! (`[runners.feature_flags]` > job or runner-environment variable > default).
//!
//! The table lists the flags the official runner 19.x knows that matter to a Linux runner.
//! Unknown `FF_*` names are not flags: they stay ordinary variables. Resolution never fails;
//! an unparsable value produces a warning and the default.

use crate::options::ExecutorKind;
use crate::variables::JobVariables;

/// Known flags Runnel does not act upon yet: a job that sets one of them to a value other than
/// the default gets a warning (it runs as with the default). docs/compatibility.md lists them.
pub(crate) const NOT_ACTED_UPON: &[&str] = &[
    "FF_SKIP_NOOP_BUILD_STAGES",
    "FF_USE_FASTZIP",
    "FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR",
    "FF_USE_DYNAMIC_TRACE_FORCE_SEND_INTERVAL",
    "FF_KUBERNETES_HONOR_ENTRYPOINT",
    "FF_RESOLVE_FULL_TLS_CHAIN",
    "FF_SECRET_RESOLVING_FAILS_IF_MISSING",
    "FF_USE_GIT_BUNDLE_URIS",
    "FF_USE_GIT_NATIVE_CLONE",
    "FF_USE_INIT_WITH_DOCKER_EXECUTOR",
    "FF_LOG_IMAGES_CONFIGURED_FOR_JOB",
    "FF_USE_NATIVE_CONTAINER_STOP",
    "FF_USE_LEGACY_GCS_CACHE_ADAPTER",
    "FF_USE_LEGACY_S3_CACHE_ADAPTER",
    "FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY",
    "FF_USE_ADAPTIVE_REQUEST_CONCURRENCY",
    "FF_USE_GITALY_CORRELATION_ID",
    "FF_USE_PARALLEL_ARTIFACT_TRANSFER",
    "FF_ENABLE_JOB_INPUTS_INTERPOLATION",
    "FF_USE_JOB_ROUTER",
];

/// Known flags that change what a job's processes see on the executors named, and that Runnel
/// does not act upon yet: a job that turns one on there is refused at its start with the flag
/// named ([`FeatureFlags::refused_on`]) rather than run without it. On other executors the
/// official runner ignores them too, so they only get the not-acted-upon warning.
const REFUSED_ON: &[(&str, ExecutorKind, &str)] = &[
    (
        "FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR",
        ExecutorKind::Docker,
        "files keep the image user's umask and ownership",
    ),
    (
        "FF_USE_INIT_WITH_DOCKER_EXECUTOR",
        ExecutorKind::Docker,
        "an init process as PID 1 of the job's containers",
    ),
    (
        "FF_KUBERNETES_HONOR_ENTRYPOINT",
        ExecutorKind::Kubernetes,
        "the image's entrypoint run in the build container",
    ),
];

/// `(name, default)` of every known flag, in the order the variables and the header list them.
pub const FEATURE_FLAGS: &[(&str, bool)] = &[
    ("FF_NETWORK_PER_BUILD", false),
    ("FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY", false),
    ("FF_USE_DIRECT_DOWNLOAD", true),
    ("FF_SKIP_NOOP_BUILD_STAGES", true),
    ("FF_USE_FASTZIP", false),
    ("FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR", false),
    ("FF_ENABLE_BASH_EXIT_CODE_CHECK", false),
    ("FF_USE_LEGACY_BASH_EVAL", false),
    ("FF_USE_DYNAMIC_TRACE_FORCE_SEND_INTERVAL", false),
    ("FF_SCRIPT_SECTIONS", false),
    ("FF_ENABLE_JOB_CLEANUP", false),
    ("FF_KUBERNETES_HONOR_ENTRYPOINT", false),
    ("FF_POSIXLY_CORRECT_ESCAPES", false),
    ("FF_RESOLVE_FULL_TLS_CHAIN", false),
    ("FF_USE_POD_ACTIVE_DEADLINE_SECONDS", true),
    ("FF_SET_PERMISSIONS_BEFORE_CLEANUP", true),
    ("FF_SECRET_RESOLVING_FAILS_IF_MISSING", true),
    ("FF_USE_GIT_BUNDLE_URIS", true),
    ("FF_USE_GIT_NATIVE_CLONE", false),
    ("FF_USE_INIT_WITH_DOCKER_EXECUTOR", false),
    ("FF_LOG_IMAGES_CONFIGURED_FOR_JOB", false),
    ("FF_USE_NATIVE_CONTAINER_STOP", false),
    ("FF_TIMESTAMPS", true),
    ("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION", false),
    ("FF_USE_LEGACY_GCS_CACHE_ADAPTER", false),
    ("FF_USE_LEGACY_S3_CACHE_ADAPTER", false),
    // On by default, unlike the official runner (review M4): the job token never reaches an
    // argument list (`git config`, `git-remote-http`); `false` brings back the insteadOf URL.
    ("FF_GIT_URLS_WITHOUT_TOKENS", true),
    ("FF_MASK_ALL_DEFAULT_TOKENS", true),
    ("FF_EXPORT_HIGH_CARDINALITY_METRICS", false),
    ("FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY", true),
    ("FF_USE_ADAPTIVE_REQUEST_CONCURRENCY", true),
    ("FF_USE_GITALY_CORRELATION_ID", true),
    ("FF_HASH_CACHE_KEYS", false),
    ("FF_USE_PARALLEL_ARTIFACT_TRANSFER", false),
    ("FF_ENABLE_JOB_INPUTS_INTERPOLATION", true),
    ("FF_USE_JOB_ROUTER", false),
];

/// Whether `key` names a known feature flag.
pub fn is_feature_flag(key: &str) -> bool {
    FEATURE_FLAGS.iter().any(|(name, _)| *name == key)
}

/// The resolved value of every known flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureFlags {
    values: Vec<(&'static str, bool)>,
}

impl Default for FeatureFlags {
    fn default() -> Self {
        Self {
            values: FEATURE_FLAGS.to_vec(),
        }
    }
}

impl FeatureFlags {
    /// Resolves every flag: a `config` entry wins, then the last variable of that name in
    /// `variables`, then the default. Unparsable variable values are reported in `warnings`.
    pub fn resolve(
        config: &[(String, bool)],
        variables: &JobVariables,
        warnings: &mut Vec<String>,
    ) -> Self {
        let values = FEATURE_FLAGS
            .iter()
            .map(|&(name, default)| {
                let from_config = config
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| *v);
                let value = from_config
                    .unwrap_or_else(|| from_variable(name, variables, warnings).unwrap_or(default));
                (name, value)
            })
            .collect();
        let flags = Self { values };
        for (name, value) in flags.non_default() {
            if NOT_ACTED_UPON.contains(&name) {
                warnings.push(format!(
                    "feature flag {name}={value} is not acted upon by Runnel yet; the job runs as with its default ({})",
                    !value
                ));
            }
        }
        flags
    }

    /// The first flag turned on that would change what a job sees on `executor` and that
    /// Runnel does not act upon: `(name, what it does)`.
    pub fn refused_on(&self, executor: ExecutorKind) -> Option<(&'static str, &'static str)> {
        REFUSED_ON
            .iter()
            .find(|(name, on, _)| *on == executor && self.is_on(name))
            .map(|&(name, _, what)| (name, what))
    }

    /// The value of flag `name`; `false` for an unknown name.
    pub fn is_on(&self, name: &str) -> bool {
        self.values.iter().any(|(n, v)| *n == name && *v)
    }

    /// Every flag with its resolved value, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        self.values.iter().copied()
    }

    /// Flags whose value differs from the default, in table order.
    pub fn non_default(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        self.values
            .iter()
            .zip(FEATURE_FLAGS)
            .filter(|((_, v), (_, d))| v != d)
            .map(|(&(n, v), _)| (n, v))
    }

    /// `FF_TIMESTAMPS`: prefix every trace line with a timestamp.
    pub fn timestamps(&self) -> bool {
        self.is_on("FF_TIMESTAMPS")
    }
    /// `FF_SCRIPT_SECTIONS`: collapsible sections around multi-line commands.
    pub fn script_sections(&self) -> bool {
        self.is_on("FF_SCRIPT_SECTIONS")
    }
    /// `FF_MASK_ALL_DEFAULT_TOKENS`: mask every known GitLab token prefix.
    pub fn mask_all_default_tokens(&self) -> bool {
        self.is_on("FF_MASK_ALL_DEFAULT_TOKENS")
    }
    /// `FF_ENABLE_BASH_EXIT_CODE_CHECK`: check `$?` after every command.
    pub fn bash_exit_code_check(&self) -> bool {
        self.is_on("FF_ENABLE_BASH_EXIT_CODE_CHECK")
    }
    /// `FF_USE_LEGACY_BASH_EVAL`: `: | eval …` instead of the subshell wrapper.
    pub fn legacy_bash_eval(&self) -> bool {
        self.is_on("FF_USE_LEGACY_BASH_EVAL")
    }
    /// `FF_POSIXLY_CORRECT_ESCAPES`: POSIX double quotes instead of `$'…'`.
    pub fn posixly_correct_escapes(&self) -> bool {
        self.is_on("FF_POSIXLY_CORRECT_ESCAPES")
    }
    /// `FF_HASH_CACHE_KEYS`: hash cache keys with SHA-256.
    pub fn hash_cache_keys(&self) -> bool {
        self.is_on("FF_HASH_CACHE_KEYS")
    }
    /// `FF_ENABLE_JOB_CLEANUP`: remove the project dir at the end of the job.
    pub fn job_cleanup(&self) -> bool {
        self.is_on("FF_ENABLE_JOB_CLEANUP")
    }
    /// `FF_USE_DIRECT_DOWNLOAD`: ask for a direct object-storage download of artifacts.
    pub fn direct_download(&self) -> bool {
        self.is_on("FF_USE_DIRECT_DOWNLOAD")
    }
    /// `FF_NETWORK_PER_BUILD`: one Docker network per job.
    pub fn network_per_build(&self) -> bool {
        self.is_on("FF_NETWORK_PER_BUILD")
    }
    /// `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION`: only log that the token should be rotated.
    pub fn disable_automatic_token_rotation(&self) -> bool {
        self.is_on("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION")
    }
    /// `FF_GIT_URLS_WITHOUT_TOKENS`: keep the job token out of git remote URLs.
    pub fn git_urls_without_tokens(&self) -> bool {
        self.is_on("FF_GIT_URLS_WITHOUT_TOKENS")
    }
    /// `FF_SET_PERMISSIONS_BEFORE_CLEANUP`: `chmod -R u+rwX` before removing a directory.
    pub fn set_permissions_before_cleanup(&self) -> bool {
        self.is_on("FF_SET_PERMISSIONS_BEFORE_CLEANUP")
    }
}

fn from_variable(name: &str, variables: &JobVariables, warnings: &mut Vec<String>) -> Option<bool> {
    let value = variables.get(name)?.value.as_str();
    if value.is_empty() {
        return None;
    }
    let parsed = parse_go_bool(value);
    if parsed.is_none() {
        warnings.push(format!(
            "invalid value {value:?} for feature flag {name}, using the default"
        ));
    }
    parsed
}

/// Parses a boolean like Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use runnel_types::Variable;

    use super::*;

    #[test]
    fn parses_bools_like_go() {
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn non_default_lists_only_changed_flags() {
        let vars = JobVariables::new(vec![
            Variable::new("FF_TIMESTAMPS", "false"),
            Variable::new("FF_USE_FASTZIP", "false"),
            Variable::new("FF_UNKNOWN", "true"),
        ]);
        let mut warnings = Vec::new();
        let flags = FeatureFlags::resolve(&[], &vars, &mut warnings);
        let changed: Vec<_> = flags.non_default().collect();
        assert_eq!(changed, [("FF_TIMESTAMPS", false)]);
        assert!(!flags.is_on("FF_UNKNOWN"));
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_changed_flag_runnel_does_not_act_upon_is_named() {
        let vars = JobVariables::new(vec![
            Variable::new("FF_USE_FASTZIP", "true"),
            Variable::new("FF_USE_GIT_BUNDLE_URIS", "true"),
        ]);
        let mut warnings = Vec::new();
        FeatureFlags::resolve(
            &[("FF_RESOLVE_FULL_TLS_CHAIN".to_owned(), true)],
            &vars,
            &mut warnings,
        );
        assert_eq!(
            warnings,
            [
                "feature flag FF_USE_FASTZIP=true is not acted upon by Runnel yet; the job runs as with its default (false)",
                "feature flag FF_RESOLVE_FULL_TLS_CHAIN=true is not acted upon by Runnel yet; the job runs as with its default (false)",
            ]
        );
        for name in NOT_ACTED_UPON {
            assert!(FEATURE_FLAGS.iter().any(|(n, _)| n == name), "{name}");
        }
    }
}
