//! [`plan`]: from a [`JobSpec`] and [`PlanOptions`] to a [`JobPlan`].
//!
//! This is the only place that knows the order of the pieces: runner environment and job
//! variables first feed the feature flags and the job settings, the settings decide the
//! directories, and the directories complete the variable list the scripts export. No I/O.

use std::time::Duration;

use runnel_types::{DEFAULT_TOKEN_PREFIXES, JobId, JobSpec, PAT_PREFIX, Secret, Variable};

use crate::dirs::{self, Directories, clean_path, is_within, join};
use crate::duration::format_go_duration;
use crate::escape::Quoting;
use crate::features::{FeatureFlags, is_feature_flag};
use crate::options::PlanOptions;
use crate::script::ScriptStyle;
use crate::settings::{self, JobSettings};
use crate::stages::{PlannedStage, StageContext, StageKind};
use crate::variables::JobVariables;

/// The job timeout when the server sends none.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(7200);
/// The `after_script` timeout when the job sets none.
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Why a job cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `GIT_CLONE_PATH` is set but the runner does not allow custom build dirs.
    #[error(
        "job {job} sets GIT_CLONE_PATH={path:?}, which needs [runners.custom_build_dir] enabled"
    )]
    CustomBuildDirDisabled { job: JobId, path: String },
    /// `GIT_CLONE_PATH` points outside the builds dir.
    #[error(
        "job {job} sets GIT_CLONE_PATH={path:?}, which is not within the builds dir {builds_dir:?}"
    )]
    ClonePathOutsideBuildsDir {
        job: JobId,
        path: String,
        builds_dir: String,
    },
    /// The job turns on a feature flag that would change what it sees on this executor and
    /// that Runnel does not act upon.
    #[error(
        "feature flag {flag}=true ({what}) is not supported by Runnel's {executor} executor yet"
    )]
    UnsupportedFeatureFlag {
        flag: &'static str,
        what: &'static str,
        executor: &'static str,
    },
    /// The runner's builds or cache dir is not an absolute path.
    #[error("{setting} {path:?} must be an absolute path to plan job {job}")]
    RelativeDir {
        job: JobId,
        setting: &'static str,
        path: String,
    },
}

/// The deadlines of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole job (`runner_info.timeout`, default 2 h).
    pub job: Duration,
    /// User steps (`RUNNER_SCRIPT_TIMEOUT`, at most the job timeout).
    pub script: Duration,
    /// `after_script` (`RUNNER_AFTER_SCRIPT_TIMEOUT`, default 5 min, at most the job timeout).
    pub after_script: Duration,
    /// The executor's preparation and `prepare_script`, from the job's start
    /// (`prepare_timeout`, at most the job timeout).
    pub prepare: Duration,
    /// `get_sources`, every attempt together (`get_sources_timeout`, at most the job timeout).
    pub get_sources: Duration,
}

/// Everything a job run needs, computed up front.
#[derive(Clone, Debug)]
pub struct JobPlan {
    /// The header lines printed first (`Running with runnel …`).
    pub header: Vec<String>,
    /// Warnings about the job's settings, to print in the trace before the stages.
    pub warnings: Vec<String>,
    /// Resolved feature flags.
    pub feature_flags: FeatureFlags,
    /// Job-controlled settings.
    pub settings: JobSettings,
    /// The job's directories.
    pub dirs: Directories,
    /// The job's deadlines.
    pub timeouts: Timeouts,
    /// Every variable in official order, expanded (raw ones kept as sent).
    pub variables: JobVariables,
    /// Values to replace with `[MASKED]` in the trace (masked variables, expanded).
    pub masked_values: Vec<Secret>,
    /// Token prefixes whose tokens the trace masks.
    pub token_mask_prefixes: Vec<String>,
    /// The stages, in run order.
    pub stages: Vec<PlannedStage>,
    /// Whether the predefined (helper) stages do nothing but Runnel's own housekeeping:
    /// `Running on …`, the project and temp directories, file variables, stale lock files and
    /// the credential reject, with no git (`GIT_STRATEGY` `none` or `empty`), no cache or
    /// artifact helper and no user hook. Only then may a container executor run them in the
    /// build container instead of a helper container.
    pub predefined_housekeeping_only: bool,
    /// Runnel's own stage that runs after the final state is reported, when the executor
    /// does that ([`PlanOptions::credential_reject_after_report`]): `git credential reject`,
    /// taken out of `cleanup_file_variables`. Not part of the job log. The last stage its
    /// shell runs: its [`PlannedStage::inline`] form exports the job's variables in that shell.
    pub after_report: Option<PlannedStage>,
}

impl JobPlan {
    /// The stage named `name`, if the job has it.
    pub fn stage(&self, name: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Plans `job` for the runner described by `opts`.
///
/// Fails only on input no run can fix: a `GIT_CLONE_PATH` the runner does not allow, or
/// relative builds/cache dirs. Bad job settings become [`JobPlan::warnings`].
pub fn plan(job: &JobSpec, opts: &PlanOptions) -> Result<JobPlan, PlanError> {
    let mut warnings = Vec::new();
    let (valid, dropped_secrets) = drop_invalid_keys(job, &mut warnings);
    let job = valid.as_ref().unwrap_or(job);
    let builds_dir = absolute_dir(job, "builds_dir", &opts.builds_dir)?;
    let cache_dir = absolute_dir(job, "cache_dir", &opts.cache_dir)?;
    let runner_env = runner_environment(&opts.environment, &mut warnings);

    let base = base_variables(job, opts, &runner_env, &builds_dir);
    let feature_flags = FeatureFlags::resolve(&opts.feature_flags, &base, &mut warnings);
    if let Some((flag, what)) = feature_flags.refused_on(opts.executor) {
        return Err(PlanError::UnsupportedFeatureFlag {
            flag,
            what,
            executor: opts.executor.as_str(),
        });
    }
    let settings = settings::parse(
        &base.expanded(),
        job.allow_git_fetch,
        opts.debug_trace_disabled,
        &mut warnings,
    );
    let dirs = directories(job, opts, &settings, builds_dir, &cache_dir)?;
    let timeouts = timeouts(job, opts, &settings, &mut warnings);

    let variables = all_variables(job, opts, &runner_env, &feature_flags, &dirs, &timeouts);
    let variables = variables.expanded();
    let masked_values = masked_values(&variables);
    let token_mask_prefixes = token_mask_prefixes(job, &feature_flags);

    let style = ScriptStyle {
        shell: opts.shell,
        quoting: if feature_flags.posixly_correct_escapes() {
            Quoting::Posix
        } else {
            Quoting::AnsiC
        },
        exit_code_check: feature_flags.bash_exit_code_check(),
        legacy_eval: feature_flags.legacy_bash_eval(),
        xtrace: settings.debug_trace,
        private_temp: opts.executor.is_shared_environment(),
        stage_subshell: opts.stage_subshell,
        temp_dir_by_executor: opts.temp_dir_by_executor,
    };
    let context = StageContext {
        job,
        opts,
        variables: &variables,
        dirs: &dirs,
        settings: &settings,
        flags: &feature_flags,
        style,
    };
    let stages = context.stages();
    let after_report = context.after_report_stage();
    let housekeeping_only = predefined_housekeeping_only(job, opts, &settings, &stages);
    let mut masked_values = masked_values;
    // The job credential reaches the helpers' command lines (xtrace shows them): mask it even
    // when no masked CI_JOB_TOKEN variable carries the same value.
    let credentials = std::iter::once(job.token.expose())
        .chain(job.dependencies.iter().map(|d| d.token.expose()))
        .filter(|token| !token.is_empty())
        .map(Secret::new);
    for secret in credentials
        .chain(context.remote_cache_secrets())
        .chain(dropped_secrets)
    {
        if !masked_values.contains(&secret) {
            masked_values.push(secret);
        }
    }

    Ok(JobPlan {
        header: header_lines(opts, &feature_flags),
        warnings,
        feature_flags,
        settings,
        dirs,
        timeouts,
        variables,
        masked_values,
        token_mask_prefixes,
        stages,
        predefined_housekeeping_only: housekeeping_only,
        after_report,
    })
}

/// The predefined stages every job has, which do only housekeeping unless git or a hook runs
/// in them.
const HOUSEKEEPING_STAGES: [&str; 3] = ["prepare_script", "get_sources", "cleanup_file_variables"];

/// Whether the predefined stages of a job with `stages` do only housekeeping
/// ([`JobPlan::predefined_housekeeping_only`]): the job's git strategy runs no git, no
/// `pre_get_sources_script`/`post_get_sources_script` runs (the runner's or the job's), and
/// no predefined stage other than [`HOUSEKEEPING_STAGES`] is planned (caches and artifacts run
/// the runner's helper commands).
fn predefined_housekeeping_only(
    job: &JobSpec,
    opts: &PlanOptions,
    settings: &JobSettings,
    stages: &[PlannedStage],
) -> bool {
    let no_git = matches!(
        settings.git_strategy,
        settings::GitStrategy::None | settings::GitStrategy::Empty
    );
    let runner_hooks = [&opts.pre_get_sources_script, &opts.post_get_sources_script]
        .iter()
        .any(|script| !script.trim().is_empty());
    let job_hooks = job.hooks.iter().any(|hook| {
        matches!(
            hook.name.as_str(),
            "pre_get_sources_script" | "post_get_sources_script"
        ) && hook.script.iter().any(|line| !line.trim().is_empty())
    });
    let only_housekeeping_stages = stages
        .iter()
        .filter(|stage| stage.kind == StageKind::Predefined)
        .all(|stage| HOUSEKEEPING_STAGES.contains(&stage.name.as_str()));
    no_git && !runner_hooks && !job_hooks && only_housekeeping_stages
}

fn absolute_dir(job: &JobSpec, setting: &'static str, path: &str) -> Result<String, PlanError> {
    if path.starts_with('/') {
        Ok(clean_path(path))
    } else {
        Err(PlanError::RelativeDir {
            job: job.id,
            setting,
            path: path.to_owned(),
        })
    }
}

/// The client certificate and key for `CI_SERVER_TLS_CERT_FILE`/`_KEY_FILE`: both or neither.
pub(crate) fn tls_identity(opts: &PlanOptions) -> Option<(&str, &str)> {
    let cert = opts.tls_cert.as_deref().filter(|c| !c.is_empty())?;
    let key = opts
        .tls_key
        .as_ref()
        .map(|k| k.expose())
        .filter(|k| !k.is_empty())?;
    Some((cert, key))
}

fn internal(key: &str, value: impl Into<String>) -> Variable {
    Variable {
        internal: true,
        ..Variable::new(key, value)
    }
}

/// Parses `[[runners]] environment`; entries without `=` are skipped with a warning.
fn runner_environment(entries: &[String], warnings: &mut Vec<String>) -> Vec<Variable> {
    entries
        .iter()
        .filter_map(|entry| match entry.split_once('=') {
            Some((key, value)) => Some(internal(key, value)),
            None => {
                warnings.push(format!(
                    "ignoring runner environment entry {entry:?}: expected KEY=VALUE"
                ));
                None
            }
        })
        .collect()
}

/// What feature flags and job settings are read from: runner environment, the directory
/// variables `GIT_CLONE_PATH` may refer to, then the job's variables.
fn base_variables(
    job: &JobSpec,
    opts: &PlanOptions,
    runner_env: &[Variable],
    builds_dir: &str,
) -> JobVariables {
    let mut base = JobVariables::new(runner_env.to_vec());
    base.push(internal("CI_BUILDS_DIR", builds_dir));
    base.push(internal("CI_CONCURRENT_ID", opts.concurrent_id.to_string()));
    base.push(internal(
        "CI_CONCURRENT_PROJECT_ID",
        opts.concurrent_project_id.to_string(),
    ));
    for variable in &job.variables {
        base.push(variable.clone());
    }
    base
}

fn directories(
    job: &JobSpec,
    opts: &PlanOptions,
    settings: &JobSettings,
    builds_dir: String,
    cache_dir: &str,
) -> Result<Directories, PlanError> {
    let project_dir = match &settings.git_clone_path {
        Some(path) => clone_path(job, opts, path, &builds_dir)?,
        None => join(
            &builds_dir,
            &dirs::unique_dir(job, opts, settings.git_strategy),
        ),
    };
    Ok(Directories {
        temp_dir: format!("{project_dir}.tmp"),
        cache_dir: join(cache_dir, &dirs::cache_subdir(job, settings.git_strategy)),
        project_dir,
        builds_dir,
    })
}

fn clone_path(
    job: &JobSpec,
    opts: &PlanOptions,
    path: &str,
    builds_dir: &str,
) -> Result<String, PlanError> {
    if !opts.custom_build_dir {
        return Err(PlanError::CustomBuildDirDisabled {
            job: job.id,
            path: path.to_owned(),
        });
    }
    let cleaned = clean_path(path);
    if cleaned.starts_with('/') && is_within(&cleaned, builds_dir) && cleaned != builds_dir {
        Ok(cleaned)
    } else {
        Err(PlanError::ClonePathOutsideBuildsDir {
            job: job.id,
            path: path.to_owned(),
            builds_dir: builds_dir.to_owned(),
        })
    }
}

fn timeouts(
    job: &JobSpec,
    opts: &PlanOptions,
    settings: &JobSettings,
    warnings: &mut Vec<String>,
) -> Timeouts {
    let job_timeout = job
        .timeout
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_JOB_TIMEOUT);
    Timeouts {
        job: job_timeout,
        script: settings
            .script_timeout
            .unwrap_or(job_timeout)
            .min(job_timeout),
        after_script: settings
            .after_script_timeout
            .unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT)
            .min(job_timeout),
        prepare: stage_timeout(
            "prepare_timeout",
            opts.prepare_timeout,
            job_timeout,
            warnings,
        ),
        get_sources: stage_timeout(
            "get_sources_timeout",
            opts.get_sources_timeout,
            job_timeout,
            warnings,
        ),
    }
}

/// A runner-configured stage limit: the job timeout when unset; zero or more than the job
/// timeout also fall back to it, with the official warning in the job log.
fn stage_timeout(
    key: &str,
    configured: Option<Duration>,
    job_timeout: Duration,
    warnings: &mut Vec<String>,
) -> Duration {
    let Some(configured) = configured else {
        return job_timeout;
    };
    let (value, job) = (
        format_go_duration(configured),
        format_go_duration(job_timeout),
    );
    if configured.is_zero() {
        warnings.push(format!(
            "{key} ({value}) must be greater than 0; using job timeout ({job})"
        ));
        job_timeout
    } else if configured > job_timeout {
        warnings.push(format!(
            "{key} ({value}) exceeds job timeout ({job}); using job timeout"
        ));
        job_timeout
    } else {
        configured
    }
}

/// The full variable list in the official order (reference section 4.3), unexpanded.
fn all_variables(
    job: &JobSpec,
    opts: &PlanOptions,
    runner_env: &[Variable],
    flags: &FeatureFlags,
    dirs: &Directories,
    timeouts: &Timeouts,
) -> JobVariables {
    let mut vars = JobVariables::default();
    for (name, value) in flags.iter() {
        vars.push(internal(name, value.to_string()));
    }
    if let Some(image) = job.image.as_ref().filter(|i| !i.name.is_empty()) {
        vars.push(internal("CI_JOB_IMAGE", image.name.as_str()));
    }
    vars.push(internal("CI_RUNNER_SHORT_TOKEN", opts.short_token.as_str()));
    for variable in runner_env.iter().filter(|v| !is_feature_flag(&v.key)) {
        vars.push(variable.clone());
    }
    vars.push(internal("CI_BUILDS_DIR", dirs.builds_dir.as_str()));
    vars.push(internal("CI_PROJECT_DIR", dirs.project_dir.as_str()));
    vars.push(internal("CI_CONCURRENT_ID", opts.concurrent_id.to_string()));
    vars.push(internal(
        "CI_CONCURRENT_PROJECT_ID",
        opts.concurrent_project_id.to_string(),
    ));
    vars.push(internal("CI_SERVER", "yes"));
    vars.push(internal("CI_JOB_STATUS", "running"));
    vars.push(internal(
        "CI_JOB_TIMEOUT",
        timeouts.job.as_secs().to_string(),
    ));
    if let Some(ca) = opts.tls_ca.as_ref().filter(|ca| !ca.is_empty()) {
        vars.push(Variable {
            file: true,
            raw: true,
            ..internal("CI_SERVER_TLS_CA_FILE", ca.as_str())
        });
    }
    if let Some((cert, key)) = tls_identity(opts) {
        vars.push(Variable {
            file: true,
            raw: true,
            ..internal("CI_SERVER_TLS_CERT_FILE", cert)
        });
        vars.push(Variable {
            file: true,
            raw: true,
            public: false,
            ..internal("CI_SERVER_TLS_KEY_FILE", key)
        });
    }
    for variable in job.variables.iter().filter(|v| !is_feature_flag(&v.key)) {
        vars.push(variable.clone());
    }
    let environment = if opts.executor.is_shared_environment() {
        "CI_SHARED_ENVIRONMENT"
    } else {
        "CI_DISPOSABLE_ENVIRONMENT"
    };
    vars.push(internal(environment, "true"));
    vars.push(internal("CI_RUNNER_VERSION", opts.version.as_str()));
    vars.push(internal("CI_RUNNER_REVISION", opts.revision.as_str()));
    vars.push(internal("CI_RUNNER_EXECUTABLE_ARCH", opts.os_arch.as_str()));
    vars.push(internal("RUNNER_TEMP_PROJECT_DIR", dirs.temp_dir.as_str()));
    vars
}

/// Review L8: a variable key becomes a shell name and, for file variables, a file name in the
/// temp dir, so only `[A-Za-z0-9_]+` (what GitLab allows) is used. Others are left out
/// with a warning; masked values among them are still masked. `None` when every key is valid.
fn drop_invalid_keys(job: &JobSpec, warnings: &mut Vec<String>) -> (Option<JobSpec>, Vec<Secret>) {
    if job.variables.iter().all(|v| is_valid_key(&v.key)) {
        return (None, Vec::new());
    }
    let mut valid = job.clone();
    let mut secrets = Vec::new();
    valid.variables.retain(|v| {
        if is_valid_key(&v.key) {
            return true;
        }
        warnings.push(format!(
            "variable {:?} ignored: a variable name must be letters, digits and `_` only",
            v.key.escape_debug().to_string()
        ));
        if v.masked && !v.value.is_empty() {
            secrets.push(Secret::new(v.value.as_str()));
        }
        false
    });
    (Some(valid), secrets)
}

fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn masked_values(variables: &JobVariables) -> Vec<Secret> {
    let mut values: Vec<Secret> = Vec::new();
    for variable in variables.iter().filter(|v| v.masked && !v.value.is_empty()) {
        let secret = Secret::new(variable.value.as_str());
        if !values.contains(&secret) {
            values.push(secret);
        }
    }
    values
}

fn token_mask_prefixes(job: &JobSpec, flags: &FeatureFlags) -> Vec<String> {
    let defaults: &[&str] = if flags.mask_all_default_tokens() {
        DEFAULT_TOKEN_PREFIXES
    } else {
        &[]
    };
    let mut prefixes: Vec<String> = Vec::new();
    let all = std::iter::once(&PAT_PREFIX)
        .chain(defaults)
        .copied()
        .chain(job.features.token_mask_prefixes.iter().map(String::as_str));
    for prefix in all.filter(|p| !p.is_empty()) {
        if !prefixes.iter().any(|p| p == prefix) {
            prefixes.push(prefix.to_owned());
        }
    }
    prefixes
}

fn header_lines(opts: &PlanOptions, flags: &FeatureFlags) -> Vec<String> {
    let mut lines = vec![
        format!("Running with runnel {} ({})", opts.version, opts.revision),
        format!(
            "  on {} {}, system ID: {}",
            opts.runner_name, opts.short_token, opts.system_id
        ),
    ];
    let changed: Vec<String> = flags
        .non_default()
        .map(|(name, value)| format!("{name}:{value}"))
        .collect();
    if !changed.is_empty() {
        lines.push(format!("  feature flags: {}", changed.join(", ")));
    }
    lines
}
