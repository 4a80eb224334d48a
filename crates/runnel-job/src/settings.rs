//! Job-controlled settings: the variables a `.gitlab-ci.yml` sets to steer the runner
//! (`GIT_STRATEGY`, `*_ATTEMPTS`, `RUNNER_SCRIPT_TIMEOUT`, …), parsed with their defaults.
//!
//! A bad value never fails the job: it produces a warning line (shown in the trace) and the
//! default is used. Paths (`GIT_CLONE_PATH`) are only read here; the planner validates them.

use std::time::Duration;

use crate::duration::parse_go_duration;
use crate::features::parse_go_bool;
use crate::variables::JobVariables;

/// How the sources reach the project dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitStrategy {
    /// Fresh clone into a removed directory.
    Clone,
    /// Reuse the existing checkout and fetch.
    Fetch,
    /// Leave the project dir as it is.
    None,
    /// Start from an empty project dir.
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

/// `GIT_SUBMODULE_STRATEGY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmoduleStrategy {
    None,
    Normal,
    Recursive,
}

/// Every job-controlled setting, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSettings {
    /// `GIT_STRATEGY` (default `fetch` if the job allows it, else `clone`).
    pub git_strategy: GitStrategy,
    /// `GIT_CHECKOUT` (default true).
    pub git_checkout: bool,
    /// `GIT_CLEAN_FLAGS` split on whitespace (default `-ffdx`); empty means no `git clean`.
    pub git_clean_flags: Vec<String>,
    /// `GIT_FETCH_EXTRA_FLAGS` (default `--prune --quiet`; `none` means no flags).
    pub git_fetch_extra_flags: Vec<String>,
    /// `GIT_CLONE_EXTRA_FLAGS` (default none).
    pub git_clone_extra_flags: Vec<String>,
    /// `GIT_SUBMODULE_STRATEGY` (default none).
    pub git_submodule_strategy: SubmoduleStrategy,
    /// `GIT_SUBMODULE_PATHS`.
    pub git_submodule_paths: Vec<String>,
    /// `GIT_SUBMODULE_DEPTH`; `None` means the job's clone depth.
    pub git_submodule_depth: Option<u32>,
    /// `GIT_SUBMODULE_UPDATE_FLAGS`.
    pub git_submodule_update_flags: Vec<String>,
    /// `GIT_SUBMODULE_FORCE_HTTPS`.
    pub git_submodule_force_https: bool,
    /// `GIT_CLONE_PATH` after expansion; validated by the planner.
    pub git_clone_path: Option<String>,
    /// `GIT_LFS_SKIP_SMUDGE`.
    pub git_lfs_skip_smudge: bool,
    /// `GET_SOURCES_ATTEMPTS` (1..=10, default 1).
    pub get_sources_attempts: u32,
    /// `ARTIFACT_DOWNLOAD_ATTEMPTS` (1..=10, default 1).
    pub artifact_download_attempts: u32,
    /// `RESTORE_CACHE_ATTEMPTS` (1..=10, default 1).
    pub restore_cache_attempts: u32,
    /// `EXECUTOR_JOB_SECTION_ATTEMPTS` (1..=10, default 1).
    pub executor_job_section_attempts: u32,
    /// `AFTER_SCRIPT_IGNORE_ERRORS` (default true).
    pub after_script_ignore_errors: bool,
    /// `CACHE_REQUEST_TIMEOUT` in minutes (default 10).
    pub cache_request_timeout: Duration,
    /// `CI_DEBUG_TRACE`, unless the runner disables it.
    pub debug_trace: bool,
    /// `CI_DEBUG_SERVICES`, unless the runner disables debug traces.
    pub debug_services: bool,
    /// `RUNNER_SCRIPT_TIMEOUT`, if set and valid (not yet clamped).
    pub script_timeout: Option<Duration>,
    /// `RUNNER_AFTER_SCRIPT_TIMEOUT`, if set and valid (not yet clamped).
    pub after_script_timeout: Option<Duration>,
    /// `CACHE_FALLBACK_KEY`, unless it ends in `-protected`.
    pub cache_fallback_key: Option<String>,
}

const MAX_ATTEMPTS: u32 = 10;
const DEFAULT_CACHE_REQUEST_TIMEOUT_MINUTES: u64 = 10;

/// Parses the settings from the (expanded) job variables.
pub(crate) fn parse(
    variables: &JobVariables,
    allow_git_fetch: bool,
    debug_trace_disabled: bool,
    warnings: &mut Vec<String>,
) -> JobSettings {
    let mut p = Parser {
        variables,
        warnings,
    };
    let default_strategy = if allow_git_fetch {
        GitStrategy::Fetch
    } else {
        GitStrategy::Clone
    };
    let debug_trace = p.debug_flag("CI_DEBUG_TRACE", debug_trace_disabled);
    let debug_services = p.debug_flag("CI_DEBUG_SERVICES", debug_trace_disabled);
    JobSettings {
        git_strategy: p.git_strategy(default_strategy),
        git_checkout: p.bool("GIT_CHECKOUT", true),
        git_clean_flags: p.flags("GIT_CLEAN_FLAGS", "-ffdx"),
        git_fetch_extra_flags: p.flags("GIT_FETCH_EXTRA_FLAGS", "--prune --quiet"),
        git_clone_extra_flags: p.flags("GIT_CLONE_EXTRA_FLAGS", ""),
        git_submodule_strategy: p.submodule_strategy(),
        git_submodule_paths: p.flags("GIT_SUBMODULE_PATHS", ""),
        git_submodule_depth: p.submodule_depth(),
        git_submodule_update_flags: p.flags("GIT_SUBMODULE_UPDATE_FLAGS", ""),
        git_submodule_force_https: p.bool("GIT_SUBMODULE_FORCE_HTTPS", false),
        git_clone_path: p.non_empty("GIT_CLONE_PATH"),
        git_lfs_skip_smudge: p.bool("GIT_LFS_SKIP_SMUDGE", false),
        get_sources_attempts: p.attempts("GET_SOURCES_ATTEMPTS"),
        artifact_download_attempts: p.attempts("ARTIFACT_DOWNLOAD_ATTEMPTS"),
        restore_cache_attempts: p.attempts("RESTORE_CACHE_ATTEMPTS"),
        executor_job_section_attempts: p.attempts("EXECUTOR_JOB_SECTION_ATTEMPTS"),
        after_script_ignore_errors: p.bool("AFTER_SCRIPT_IGNORE_ERRORS", true),
        cache_request_timeout: p.cache_request_timeout(),
        debug_trace,
        debug_services,
        script_timeout: p.duration("RUNNER_SCRIPT_TIMEOUT"),
        after_script_timeout: p.duration("RUNNER_AFTER_SCRIPT_TIMEOUT"),
        cache_fallback_key: p.cache_fallback_key(),
    }
}

struct Parser<'a> {
    variables: &'a JobVariables,
    warnings: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn non_empty(&self, key: &str) -> Option<String> {
        let value = self.variables.value(key);
        (!value.is_empty()).then(|| value.to_owned())
    }

    fn warn(&mut self, key: &str, value: &str, expected: &str, default: &str) {
        self.warnings.push(format!(
            "invalid value {value:?} for {key} (expected {expected}), using {default}"
        ));
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        let Some(value) = self.non_empty(key) else {
            return default;
        };
        parse_go_bool(&value).unwrap_or_else(|| {
            self.warn(key, &value, "true or false", &default.to_string());
            default
        })
    }

    fn debug_flag(&mut self, key: &str, disabled: bool) -> bool {
        let on = self.bool(key, false);
        if on && disabled {
            self.warnings
                .push(format!("{key} usage is disabled on this runner"));
            return false;
        }
        on
    }

    fn flags(&self, key: &str, default: &str) -> Vec<String> {
        let value = self.non_empty(key).unwrap_or_else(|| default.to_owned());
        if value == "none" {
            return Vec::new();
        }
        value.split_whitespace().map(str::to_owned).collect()
    }

    fn git_strategy(&mut self, default: GitStrategy) -> GitStrategy {
        let Some(value) = self.non_empty("GIT_STRATEGY") else {
            return default;
        };
        match value.as_str() {
            "clone" => GitStrategy::Clone,
            "fetch" => GitStrategy::Fetch,
            "none" => GitStrategy::None,
            "empty" => GitStrategy::Empty,
            _ => {
                self.warn(
                    "GIT_STRATEGY",
                    &value,
                    "clone, fetch, none or empty",
                    default.as_str(),
                );
                default
            }
        }
    }

    fn submodule_strategy(&mut self) -> SubmoduleStrategy {
        let Some(value) = self.non_empty("GIT_SUBMODULE_STRATEGY") else {
            return SubmoduleStrategy::None;
        };
        match value.as_str() {
            "none" => SubmoduleStrategy::None,
            "normal" => SubmoduleStrategy::Normal,
            "recursive" => SubmoduleStrategy::Recursive,
            _ => {
                let expected = "none, normal or recursive";
                self.warn("GIT_SUBMODULE_STRATEGY", &value, expected, "none");
                SubmoduleStrategy::None
            }
        }
    }

    fn submodule_depth(&mut self) -> Option<u32> {
        let value = self.non_empty("GIT_SUBMODULE_DEPTH")?;
        value.parse().map_or_else(
            |_| {
                let default = "the clone depth";
                self.warn(
                    "GIT_SUBMODULE_DEPTH",
                    &value,
                    "a non-negative integer",
                    default,
                );
                None
            },
            Some,
        )
    }

    fn attempts(&mut self, key: &str) -> u32 {
        let Some(value) = self.non_empty(key) else {
            return 1;
        };
        match value.parse::<i64>() {
            Ok(n) if (1..=i64::from(MAX_ATTEMPTS)).contains(&n) => u32::try_from(n).unwrap_or(1),
            Ok(n) => {
                let clamped = if n < 1 { 1 } else { MAX_ATTEMPTS };
                self.warn(
                    key,
                    &value,
                    "a number of attempts from 1 to 10",
                    &clamped.to_string(),
                );
                clamped
            }
            Err(_) => {
                self.warn(key, &value, "a number of attempts from 1 to 10", "1");
                1
            }
        }
    }

    fn cache_request_timeout(&mut self) -> Duration {
        let default = Duration::from_secs(DEFAULT_CACHE_REQUEST_TIMEOUT_MINUTES * 60);
        let Some(value) = self.non_empty("CACHE_REQUEST_TIMEOUT") else {
            return default;
        };
        match value.parse::<u64>() {
            Ok(minutes) if minutes > 0 => {
                runnel_types::clamp_duration(Duration::from_secs(minutes.saturating_mul(60)))
            }
            _ => {
                let key = "CACHE_REQUEST_TIMEOUT";
                self.warn(key, &value, "a positive number of minutes", "10");
                default
            }
        }
    }

    fn duration(&mut self, key: &str) -> Option<Duration> {
        let value = self.non_empty(key)?;
        match parse_go_duration(&value) {
            // Clamped (review M1): deadlines are computed from these.
            Ok(d) if !d.is_zero() => Some(runnel_types::clamp_duration(d)),
            Ok(_) => None,
            Err(_) => {
                let expected = "a duration such as 30m or 1h30m";
                self.warn(key, &value, expected, "the default timeout");
                None
            }
        }
    }

    fn cache_fallback_key(&mut self) -> Option<String> {
        let value = self.non_empty("CACHE_FALLBACK_KEY")?;
        if value.ends_with("-protected") {
            self.warnings.push(format!(
                "CACHE_FALLBACK_KEY {value:?} not allowed to end with \"-protected\", ignoring it"
            ));
            return None;
        }
        Some(value)
    }
}

/// Whether `job`'s log is a debug trace: `CI_DEBUG_TRACE` is true and the runner does not
/// disable it (`debug_trace_disabled`). Trace PATCHes say so with `debug_trace=true`.
pub fn debug_trace_enabled(job: &runnel_types::JobSpec, disabled: bool) -> bool {
    !disabled
        && job
            .variable("CI_DEBUG_TRACE")
            .and_then(|v| parse_go_bool(v.value.trim()))
            .unwrap_or(false)
}
