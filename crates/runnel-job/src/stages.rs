//! The stages of a job run (reference section 4.1 step 7) and the bodies of their scripts.
//!
//! Each [`PlannedStage`] carries the complete script to feed the executor's shell on stdin.
//! Stages with nothing to do are left out. The cache and artifact stages live in `transfer`;
//! they slot in between `get_sources` and the user steps, and after `after_script`.

mod transfer;

use std::fmt;

use runnel_types::{JobSpec, Step};

use crate::dirs::{Directories, join};
use crate::escape::double_quote;
use crate::features::FeatureFlags;
use crate::git::{GitSources, write_credential_reject};
use crate::options::PlanOptions;
use crate::script::{ScriptStyle, ScriptWriter};
use crate::settings::{GitStrategy, JobSettings};
use crate::variables::JobVariables;

/// Where a stage runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// A runner-defined stage (sources, cache, artifacts, cleanup): the helper container for
    /// container executors.
    Predefined,
    /// A user script stage: the build container for container executors.
    Build,
}

/// When a stage runs, given how the job is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageWhen {
    /// Only while every earlier stage succeeded.
    OnSuccess,
    /// Only once the job has failed.
    OnFailure,
    /// Whatever happened before (still not after an abort).
    Always,
}

/// Which deadline bounds a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The job timeout.
    Job,
    /// [`crate::Timeouts::script`] (inside the job timeout).
    Script,
    /// [`crate::Timeouts::after_script`], counted from the stage start.
    AfterScript,
    /// Cleanup after the job: not bound by the job deadline; the engine picks a short grace.
    Cleanup,
    /// [`crate::Timeouts::prepare`], counted from the job's start (with the executor's
    /// preparation), inside the job timeout.
    Prepare,
    /// [`crate::Timeouts::get_sources`], counted from the stage start (every attempt), inside
    /// the job timeout.
    GetSources,
}

/// `CI_JOB_STATUS` as `after_script` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Success,
    Failed,
    Canceled,
    TimedOut,
}

impl JobStatus {
    /// The variable value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::TimedOut => "timedout",
        }
    }

    const ALL: [JobStatus; 4] = [Self::Success, Self::Failed, Self::Canceled, Self::TimedOut];

    /// Position in [`JobStatus::ALL`].
    fn index(self) -> usize {
        match self {
            Self::Success => 0,
            Self::Failed => 1,
            Self::Canceled => 2,
            Self::TimedOut => 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum StageScript {
    Fixed(String),
    /// One script per [`JobStatus`], in `JobStatus::ALL` order.
    PerStatus([String; 4]),
}

/// One stage of the job, ready to run.
///
/// `Debug` leaves the script out: it holds variable values and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct PlannedStage {
    /// `prepare_script`, `get_sources`, `step_script`, `after_script`, … (the section name).
    pub name: String,
    /// The text shown at the start of the stage's section.
    pub description: String,
    /// Helper or build environment.
    pub kind: StageKind,
    /// When it runs.
    pub when: StageWhen,
    /// How many times it is tried (`GET_SOURCES_ATTEMPTS`, …).
    pub attempts: u32,
    /// Which deadline applies.
    pub timeout: TimeoutKind,
    /// Whether a failure of this stage leaves the job's result alone (`after_script` unless
    /// `AFTER_SCRIPT_IGNORE_ERRORS=false`).
    pub ignore_errors: bool,
    script: StageScript,
    /// [`PlannedStage::inline`].
    inline: Option<String>,
}

impl PlannedStage {
    /// The script to run. `status` only matters to `after_script`, whose `CI_JOB_STATUS`
    /// reflects the outcome of the job so far.
    pub fn script(&self, status: JobStatus) -> &str {
        match &self.script {
            StageScript::Fixed(script) => script,
            StageScript::PerStatus(scripts) => &scripts[status.index()],
        }
    }

    /// The same stage for a shell session to run in its own shell, without a subshell
    /// ([`crate::PlanOptions::inline_housekeeping`]): only for stages that are Runnel's own
    /// housekeeping (no user command, no hook, no variable), written so that the shell is left
    /// as it was. Its output and status are the script's. [`crate::JobPlan::after_report`]'s
    /// exports the job's variables: it is the last stage its shell runs.
    pub fn inline(&self) -> Option<&str> {
        self.inline.as_deref()
    }
}

impl fmt::Debug for PlannedStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedStage")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("kind", &self.kind)
            .field("when", &self.when)
            .field("attempts", &self.attempts)
            .field("timeout", &self.timeout)
            .field("ignore_errors", &self.ignore_errors)
            .field("inline", &self.inline.is_some())
            .finish_non_exhaustive()
    }
}

/// The official description of stage `name`.
pub fn stage_description(name: &str) -> String {
    let fixed = match name {
        "prepare_script" => "Preparing environment",
        "get_sources" => "Getting source from Git repository",
        "clear_worktree" => "Deleting all tracked and untracked files due to source fetch failure",
        "restore_cache" => "Restoring cache",
        "download_artifacts" => "Downloading artifacts",
        "after_script" => "Running after_script",
        "archive_cache" => "Saving cache for successful job",
        "archive_cache_on_failure" => "Saving cache for failed job",
        "upload_artifacts_on_success" => "Uploading artifacts for successful job",
        "upload_artifacts_on_failure" => "Uploading artifacts for failed job",
        "cleanup_file_variables" => "Cleaning up project directory and file based variables",
        other => return format!("Executing \"{other}\" stage of the job script"),
    };
    fixed.to_owned()
}

/// Everything the stage bodies read.
pub(crate) struct StageContext<'a> {
    pub(crate) job: &'a JobSpec,
    pub(crate) opts: &'a PlanOptions,
    pub(crate) variables: &'a JobVariables,
    pub(crate) dirs: &'a Directories,
    pub(crate) settings: &'a JobSettings,
    pub(crate) flags: &'a FeatureFlags,
    pub(crate) style: ScriptStyle,
}

const ENV_FILE: &str = "gitlab_runner_env";
const MASKING_DB: &str = "masking.db";
const EXT_GIT_CONFIG: &str = ".gitlab-runner.ext.conf";
const AFTER_SCRIPT: &str = "after_script";

impl StageContext<'_> {
    /// Every stage of the job, in run order.
    pub(crate) fn stages(&self) -> Vec<PlannedStage> {
        let mut stages = vec![self.prepare_stage(), self.get_sources_stage()];
        stages.extend(self.restore_cache_stage());
        stages.extend(self.download_artifacts_stage());
        stages.extend(
            self.job
                .steps
                .iter()
                .filter(|step| step.name != AFTER_SCRIPT)
                .filter_map(|step| self.user_step_stage(step)),
        );
        stages.extend(self.after_script_stage());
        stages.extend(self.archive_cache_stages());
        stages.extend(self.upload_artifacts_stages());
        stages.push(self.cleanup_stage());
        stages
    }

    fn writer(&self) -> ScriptWriter {
        ScriptWriter::new(self.style)
    }

    fn temp_file(&self, name: &str) -> String {
        join(&self.dirs.temp_dir, name)
    }

    fn stage(&self, name: &str, kind: StageKind, when: StageWhen, script: String) -> PlannedStage {
        PlannedStage {
            name: name.to_owned(),
            description: stage_description(name),
            kind,
            when,
            attempts: 1,
            timeout: TimeoutKind::Job,
            ignore_errors: false,
            script: StageScript::Fixed(script),
            inline: None,
        }
    }

    /// `w`'s body as [`PlannedStage::inline`], when the executor runs such stages.
    fn inline(&self, w: &ScriptWriter) -> Option<String> {
        if self.opts.inline_housekeeping {
            w.inline()
        } else {
            None
        }
    }

    fn prepare_stage(&self) -> PlannedStage {
        let mut w = self.writer();
        let host = &self.opts.hostname;
        // A known host name goes in literally when it cannot mean anything to the shell.
        let here = match self.opts.script_host.as_deref() {
            Some(name) if is_plain_host_name(name) => name,
            _ => "$(hostname)",
        };
        let rest = if host.is_empty() {
            "...".to_owned()
        } else {
            format!(" via {host}...")
        };
        // `double_quote` never lets a `$(` through, so the one command substitution wanted
        // here (`$(hostname)`) goes between two quoted parts.
        let head = double_quote("Running on ");
        let tail = double_quote(&format!("{here}{rest}"));
        let message = match here {
            "$(hostname)" => format!(
                "{}$(hostname){}",
                head.strip_suffix('"').unwrap_or(&head),
                double_quote(&rest).strip_prefix('"').unwrap_or_default()
            ),
            _ => format!(
                "{}{}",
                head.strip_suffix('"').unwrap_or(&head),
                tail.strip_prefix('"').unwrap_or_default()
            ),
        };
        w.plain(&format!("echo {message}"));
        w.rm_file_arg_expand(&self.temp_file(ENV_FILE));
        w.rm_file_arg_expand(&self.temp_file(MASKING_DB));
        let mut stage = self.stage(
            "prepare_script",
            StageKind::Predefined,
            StageWhen::OnSuccess,
            w.finish(),
        );
        stage.inline = self.inline(&w);
        stage.timeout = TimeoutKind::Prepare;
        stage
    }

    fn write_exports(&self, w: &mut ScriptWriter, status: Option<JobStatus>) {
        for variable in self.variables {
            match status {
                Some(status) if variable.key == "CI_JOB_STATUS" => {
                    let mut overridden = variable.clone();
                    overridden.value = status.as_str().to_owned();
                    w.variable(&overridden, &self.dirs.temp_dir);
                }
                _ => w.variable(variable, &self.dirs.temp_dir),
            }
        }
        self.write_gitlab_env(w);
    }

    /// Exports `GITLAB_ENV` and reads what earlier stages wrote to it.
    fn write_gitlab_env(&self, w: &mut ScriptWriter) {
        let env_file = self.temp_file(ENV_FILE);
        let export = format!("export GITLAB_ENV={}", w.quote(&env_file));
        w.line(&export);
        w.source_env(&env_file, &self.dirs.temp_dir);
    }

    /// Writes user commands: each echoed as `$ cmd` in green, then run.
    fn write_commands(&self, w: &mut ScriptWriter, prefix: &str, commands: &[String]) {
        let sections = self.flags.script_sections() && self.job.features.trace_sections;
        for (index, command) in commands.iter().enumerate() {
            let command = command.trim();
            match command.split_once('\n') {
                _ if command.is_empty() => w.empty_line(),
                None => w.notice(&format!("$ {command}")),
                Some(_) if sections => {
                    let id = format!("{prefix}_{index}");
                    w.section_start(&id, &format!("$ {command}"));
                    w.section_end(&id);
                }
                Some((first, _)) => w.notice(&format!("$ {first} # collapsed multi-line command")),
            }
            w.line(command);
            w.check_for_errors();
        }
    }

    fn write_script_hook(&self, w: &mut ScriptWriter, prefix: &str, script: &str) {
        if !script.trim().is_empty() {
            self.write_commands(w, prefix, &[script.to_owned()]);
        }
    }

    fn write_job_hook(&self, w: &mut ScriptWriter, name: &str) {
        for hook in self.job.hooks.iter().filter(|h| h.name == name) {
            self.write_commands(w, name, &hook.script);
        }
    }

    fn get_sources_stage(&self) -> PlannedStage {
        let mut w = self.writer();
        self.write_exports(&mut w, None);
        self.write_sources(&mut w);
        let mut stage = self.stage(
            "get_sources",
            StageKind::Predefined,
            StageWhen::OnSuccess,
            w.finish(),
        );
        // Without git or a hook (`GIT_STRATEGY` none or empty) nothing in the stage reads the
        // job's variables, so its housekeeping runs inline without exporting them; the paths
        // must then mean the same without them.
        let literal = |path: &str| !path.contains(['$', '`', '\\']);
        if literal(&self.dirs.temp_dir) && literal(&self.dirs.project_dir) {
            let mut housekeeping = self.writer();
            housekeeping.touch_env(&self.temp_file(ENV_FILE), &self.dirs.temp_dir);
            self.write_sources(&mut housekeeping);
            stage.inline = self.inline(&housekeeping);
        }
        stage.attempts = self.settings.get_sources_attempts;
        stage.timeout = TimeoutKind::GetSources;
        stage
    }

    /// What `get_sources` does after exporting the variables: hooks, then git.
    fn write_sources(&self, w: &mut ScriptWriter) {
        self.write_script_hook(w, "pre_clone_script", &self.opts.pre_get_sources_script);
        self.write_job_hook(w, "pre_get_sources_script");
        match self.settings.git_strategy {
            GitStrategy::None => {
                w.notice("Skipping Git repository setup");
                w.mkdir(&self.dirs.project_dir);
                w.notice("Skipping Git checkout");
                w.notice("Skipping Git submodules setup");
            }
            GitStrategy::Empty => {
                w.notice("Skipping Git repository setup and creating an empty build directory");
                let set_permissions = self.flags.set_permissions_before_cleanup();
                w.rm_dir(&self.dirs.project_dir, set_permissions);
                w.mkdir(&self.dirs.project_dir);
                w.notice("Skipping Git checkout");
                w.notice("Skipping Git submodules setup");
            }
            GitStrategy::Clone | GitStrategy::Fetch => {
                GitSources::new(self).write(w);
            }
        }
        self.write_job_hook(w, "post_get_sources_script");
        self.write_script_hook(w, "post_clone_script", &self.opts.post_get_sources_script);
        // As the official runner, so a credential helper keeps no job token from the fetch.
        // Not after `GIT_STRATEGY: none|empty`, where no git ran: the cleanup stage's reject
        // covers whatever the job's own commands stored (one process fewer per such job).
        if matches!(
            self.settings.git_strategy,
            GitStrategy::Clone | GitStrategy::Fetch
        ) {
            write_credential_reject(w, self);
        }
    }

    fn user_step_stage(&self, step: &Step) -> Option<PlannedStage> {
        if step.script.is_empty() {
            return None;
        }
        let mut w = self.writer();
        self.write_exports(&mut w, None);
        w.cd(&self.dirs.project_dir);
        self.write_script_hook(&mut w, "pre_build_script", &self.opts.pre_build_script);
        let script: Vec<String> = if step.name == "release" {
            step.script
                .iter()
                .map(|line| self.variables.expand_value(line))
                .collect()
        } else {
            step.script.clone()
        };
        self.write_commands(&mut w, "script_step", &script);
        self.write_script_hook(&mut w, "post_build_script", &self.opts.post_build_script);
        // Review L5: the name becomes a section marker and a log field; a hostile step name
        // (newlines, escapes) must not break either.
        let safe: String = step
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("step_{safe}");
        let mut stage = self.stage(&name, StageKind::Build, StageWhen::OnSuccess, w.finish());
        stage.timeout = TimeoutKind::Script;
        Some(stage)
    }

    fn after_script_stage(&self) -> Option<PlannedStage> {
        let step = self
            .job
            .steps
            .iter()
            .find(|s| s.name == AFTER_SCRIPT && !s.script.is_empty())?;
        let scripts = JobStatus::ALL.map(|status| {
            let mut w = self.writer();
            self.write_exports(&mut w, Some(status));
            w.cd(&self.dirs.project_dir);
            w.notice("Running after script...");
            self.write_commands(&mut w, "after_script_step", &step.script);
            w.finish()
        });
        let mut stage = self.stage(
            AFTER_SCRIPT,
            StageKind::Build,
            StageWhen::Always,
            String::new(),
        );
        stage.script = StageScript::PerStatus(scripts);
        stage.timeout = TimeoutKind::AfterScript;
        stage.ignore_errors = self.settings.after_script_ignore_errors;
        Some(stage)
    }

    fn cleanup_stage(&self) -> PlannedStage {
        let mut w = self.writer();
        // A credential helper the job or the host set up (`credential.helper=store`) forgets
        // the job token it may have kept: first, as the official runner, while the checkout's
        // config (which may name the helper) is there; last when `clean_git_config` treats
        // that config as the job's, so no helper the job planted there runs.
        let cleans_git_config = self.cleans_git_config();
        let defers_reject = self.defers_credential_reject();
        if !cleans_git_config && !defers_reject {
            write_credential_reject(&mut w, self);
        }
        // With a private temp dir the whole dir goes right after, files included: one `rm`
        // process instead of one more for each file there (the env file always is).
        if !self.style.private_temp {
            for variable in self.variables.iter().filter(|v| v.file) {
                w.rm_file(&self.temp_file(&variable.key));
            }
            w.rm_file(&self.temp_file(ENV_FILE));
            w.rm_file(&self.temp_file(MASKING_DB));
            w.rm_file(&self.temp_file(EXT_GIT_CONFIG));
        }
        if self.style.private_temp && !self.style.temp_dir_by_executor {
            // Review M5: the next job makes a fresh private temp dir, so nothing planted in
            // this one (a symlink, a FIFO) is there for it. (An executor that makes it
            // removes it itself.)
            w.rm_dir(&self.dirs.temp_dir, false);
        }
        if self.flags.job_cleanup() {
            let set_permissions = self.flags.set_permissions_before_cleanup();
            w.rm_dir(&self.dirs.project_dir, set_permissions);
        }
        // The checkout outlives the job: what the job left in its `.git` (lock files, and with
        // `clean_git_config` its config and hooks) goes now too, not only before the next
        // job's git runs, as the official runner does (whatever the job's `GIT_STRATEGY`: a
        // job may have made or changed the checkout itself).
        let git = GitSources::new(self);
        git.remove_stale_locks(&mut w);
        if cleans_git_config {
            git.remove_git_configs(&mut w);
            if !defers_reject {
                write_credential_reject(&mut w, self);
            }
        }
        let mut stage = self.stage(
            "cleanup_file_variables",
            StageKind::Predefined,
            StageWhen::Always,
            w.finish(),
        );
        stage.inline = self.inline(&w);
        stage.timeout = TimeoutKind::Cleanup;
        stage.ignore_errors = true;
        stage
    }

    /// Whether the cleanup's `git credential reject` runs after the final state is reported
    /// ([`crate::PlanOptions::credential_reject_after_report`]): where the executor keeps the
    /// job's temp dir (and its `$GITLAB_ENV` file) until then, and not where the cleanup
    /// removes the checkout (`FF_ENABLE_JOB_CLEANUP`: a helper its config names would be gone)
    /// or the debug trace would show the command in the job log.
    fn defers_credential_reject(&self) -> bool {
        self.opts.credential_reject_after_report
            && self.style.private_temp
            && self.style.temp_dir_by_executor
            && !self.style.xtrace
            && !self.flags.job_cleanup()
    }

    /// The stage that runs after the final state is reported ([`crate::JobPlan::after_report`]):
    /// the job's variables exported as the official cleanup exports them (file variables by
    /// their paths, which still hold them, and what the job wrote to `$GITLAB_ENV`), so that a
    /// credential helper the job configured through them is the one asked, then `git credential
    /// reject`.
    pub(crate) fn after_report_stage(&self) -> Option<PlannedStage> {
        if !self.defers_credential_reject() {
            return None;
        }
        let mut w = self.writer();
        for variable in self.variables {
            if variable.file {
                let path = self.temp_file(&variable.key);
                w.line(&format!(
                    "export {}={}",
                    w.quote(&variable.key),
                    double_quote(&path)
                ));
            } else {
                w.variable(variable, &self.dirs.temp_dir);
            }
        }
        self.write_gitlab_env(&mut w);
        if !write_credential_reject(&mut w, self) {
            return None;
        }
        let mut stage = self.stage(
            "cleanup_git_credentials",
            StageKind::Predefined,
            StageWhen::Always,
            w.finish(),
        );
        // The last stage of its shell: it may run in that shell itself, its exports reach
        // nothing after it.
        stage.inline = if self.opts.inline_housekeeping {
            w.inline_last()
        } else {
            None
        };
        stage.timeout = TimeoutKind::Cleanup;
        stage.ignore_errors = true;
        Some(stage)
    }

    pub(crate) fn ext_git_config(&self) -> String {
        self.temp_file(EXT_GIT_CONFIG)
    }

    /// `clean_git_config` for this job: as configured, else the official default (on for
    /// every executor but shell, off with `GIT_STRATEGY=none`).
    pub(crate) fn cleans_git_config(&self) -> bool {
        match self.opts.clean_git_config {
            Some(clean) => clean,
            None => {
                self.opts.cleans_git_config() && self.settings.git_strategy != GitStrategy::None
            }
        }
    }
}

/// Letters, digits, `-`, `.` and `_` only: safe inside a double-quoted shell word.
fn is_plain_host_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}
