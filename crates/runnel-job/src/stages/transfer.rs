//! The job-data stages (reference sections 4.1 and 4.5): `restore_cache`, `download_artifacts`,
//! `archive_cache`/`archive_cache_on_failure` and
//! `upload_artifacts_on_success`/`upload_artifacts_on_failure`.
//!
//! Each stage calls the runner binary itself ([`crate::PlanOptions::runner_command`]) as a
//! helper (`cache-extractor`, `artifacts-downloader`, `cache-archiver`, `artifacts-uploader`),
//! like the official runner. Cache helpers are guarded so that a failure only prints a warning;
//! artifact helpers fail their stage and so the job. Credentials never appear as arguments:
//! the helpers read `CI_SERVER_URL`, `CI_JOB_ID` and `CI_JOB_TOKEN` from the environment the
//! stage exports, and a dependency's token is handed over as an environment assignment in
//! front of the command (it stays out of the process list).
//!
//! Deliberately not here: distributed (S3/GCS/Azure) cache URLs, artifact metadata
//! generation, and the helpers themselves (the `runnel` binary).

use runnel_archive::cache_key::{self, LOCAL_ARCHIVE_NAME};
use runnel_types::{ArtifactSpec, CachePolicy, CacheSpec, Dependency};

use super::{PlannedStage, StageContext, StageKind, StageWhen};
use crate::dirs::join;
use crate::script::{ANSI_BOLD_GREEN, ANSI_RESET, ScriptWriter};

/// Yellow, as the official `Warningf`.
const ANSI_YELLOW: &str = "\x1b[0;33m";

/// Which job outcome an archive or upload stage is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    fn when(self) -> StageWhen {
        match self {
            Self::Success => StageWhen::OnSuccess,
            Self::Failure => StageWhen::OnFailure,
        }
    }
}

impl StageContext<'_> {
    /// `restore_cache`: one guarded `cache-extractor` per pulled cache, falling back through
    /// `fallback_keys` and `CACHE_FALLBACK_KEY`.
    pub(super) fn restore_cache_stage(&self) -> Option<PlannedStage> {
        let caches: Vec<&CacheSpec> = self
            .job
            .cache
            .iter()
            .filter(|c| c.policy != CachePolicy::Push && has_paths(&c.paths, c.untracked))
            .collect();
        if caches.is_empty() {
            return None;
        }
        let mut w = self.writer();
        self.write_exports(&mut w, None);
        w.cd(&self.dirs.project_dir);
        for cache in caches {
            self.write_restore_cache(&mut w, cache);
        }
        let mut stage = self.stage(
            "restore_cache",
            StageKind::Predefined,
            StageWhen::OnSuccess,
            w.finish(),
        );
        stage.attempts = self.settings.restore_cache_attempts;
        Some(stage)
    }

    fn write_restore_cache(&self, w: &mut ScriptWriter, cache: &CacheSpec) {
        let mut keys: Vec<String> = Vec::new();
        match self.cache_key(&cache.key) {
            Ok(key) => keys.push(key),
            Err(message) => warning(w, &message),
        }
        let fallbacks = cache
            .fallback_keys
            .iter()
            .chain(self.settings.cache_fallback_key.as_ref())
            .filter(|key| !key.trim().is_empty());
        for raw in fallbacks {
            match self.cache_key(raw) {
                Ok(key) if !keys.contains(&key) => keys.push(key),
                Ok(_) => {}
                Err(message) => warning(w, &message),
            }
        }
        if keys.is_empty() {
            return;
        }
        let command = self.runner_command();
        self.open_helper_guard(w);
        let mut opened = 0;
        for key in &keys {
            notice(w, &format!("Checking cache for {key}..."));
            let archive = self.cache_archive(key);
            let timeout = self.cache_timeout_minutes();
            let line = w.command_line(
                &command,
                &["cache-extractor", "--file", &archive, "--timeout", &timeout],
            );
            w.open(&format!("if {line}; then"));
            opened += 1;
            notice(w, "Successfully extracted cache");
            w.else_branch();
            warning(w, "Failed to extract cache");
        }
        for _ in 0..opened {
            w.close("fi");
        }
        self.close_helper_guard(w, "Extracting cache");
    }

    /// `download_artifacts`: one `artifacts-downloader` per dependency that has artifacts.
    pub(super) fn download_artifacts_stage(&self) -> Option<PlannedStage> {
        let dependencies: Vec<&Dependency> = self
            .job
            .dependencies
            .iter()
            .filter(|d| !d.artifacts_filename.is_empty())
            .collect();
        if dependencies.is_empty() {
            return None;
        }
        let mut w = self.writer();
        self.write_exports(&mut w, None);
        w.cd(&self.dirs.project_dir);
        let command = self.runner_command();
        for dependency in dependencies {
            notice(
                &mut w,
                &format!(
                    "Downloading artifacts for {} ({})...",
                    dependency.name, dependency.id.0
                ),
            );
            let id = dependency.id.0.to_string();
            let token = w.quote(dependency.token.expose());
            let mut args = vec!["artifacts-downloader", "--id", &id];
            if !self.opts.server_url.is_empty() {
                args.extend(["--url", self.opts.server_url.as_str()]);
            }
            let line = w.command_line(&command, &args);
            w.line(&format!("CI_JOB_TOKEN={token} {line}"));
            w.check_for_errors();
        }
        let mut stage = self.stage(
            "download_artifacts",
            StageKind::Predefined,
            StageWhen::OnSuccess,
            w.finish(),
        );
        stage.attempts = self.settings.artifact_download_attempts;
        Some(stage)
    }

    /// `archive_cache` and `archive_cache_on_failure`, for the pushed caches whose `when`
    /// matches; empty ones are left out.
    pub(super) fn archive_cache_stages(&self) -> Vec<PlannedStage> {
        [Outcome::Success, Outcome::Failure]
            .into_iter()
            .filter_map(|outcome| self.archive_cache_stage(outcome))
            .collect()
    }

    fn archive_cache_stage(&self, outcome: Outcome) -> Option<PlannedStage> {
        let caches: Vec<&CacheSpec> = self
            .job
            .cache
            .iter()
            .filter(|c| c.policy != CachePolicy::Pull && has_paths(&c.paths, c.untracked))
            .filter(|c| c.when.applies(outcome == Outcome::Failure))
            .collect();
        if caches.is_empty() {
            return None;
        }
        let mut w = self.writer();
        self.write_exports(&mut w, None);
        w.cd(&self.dirs.project_dir);
        for cache in caches {
            self.write_archive_cache(&mut w, cache);
        }
        let name = match outcome {
            Outcome::Success => "archive_cache",
            Outcome::Failure => "archive_cache_on_failure",
        };
        Some(self.stage(name, StageKind::Predefined, outcome.when(), w.finish()))
    }

    fn write_archive_cache(&self, w: &mut ScriptWriter, cache: &CacheSpec) {
        let key = match self.cache_key(&cache.key) {
            Ok(key) => key,
            Err(message) => {
                warning(w, &message);
                return;
            }
        };
        let archive = self.cache_archive(&key);
        let timeout = self.cache_timeout_minutes();
        let mut args: Vec<String> = vec![
            "cache-archiver".into(),
            "--file".into(),
            archive,
            "--timeout".into(),
            timeout,
        ];
        for path in &cache.paths {
            args.push("--path".into());
            args.push(self.variables.expand_value(path));
        }
        if cache.untracked {
            args.push("--untracked".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.open_helper_guard(w);
        notice(w, &format!("Creating cache {key}..."));
        let line = w.command_line(&self.runner_command(), &args);
        w.open(&format!("if {line}; then"));
        notice(w, "Created cache");
        w.else_branch();
        warning(w, "Failed to create cache");
        w.close("fi");
        self.close_helper_guard(w, "Creating cache");
    }

    /// `upload_artifacts_on_success` and `upload_artifacts_on_failure`, for the artifacts
    /// entries whose `when` matches; empty ones are left out.
    pub(super) fn upload_artifacts_stages(&self) -> Vec<PlannedStage> {
        [Outcome::Success, Outcome::Failure]
            .into_iter()
            .filter_map(|outcome| self.upload_artifacts_stage(outcome))
            .collect()
    }

    fn upload_artifacts_stage(&self, outcome: Outcome) -> Option<PlannedStage> {
        let artifacts: Vec<&ArtifactSpec> = self
            .job
            .artifacts
            .iter()
            .filter(|a| has_paths(&a.paths, a.untracked))
            .filter(|a| a.when.applies(outcome == Outcome::Failure))
            .collect();
        if artifacts.is_empty() {
            return None;
        }
        let mut w = self.writer();
        self.write_exports(&mut w, None);
        w.cd(&self.dirs.project_dir);
        for artifact in artifacts {
            self.write_upload_artifacts(&mut w, artifact);
        }
        let name = match outcome {
            Outcome::Success => "upload_artifacts_on_success",
            Outcome::Failure => "upload_artifacts_on_failure",
        };
        Some(self.stage(name, StageKind::Predefined, outcome.when(), w.finish()))
    }

    fn write_upload_artifacts(&self, w: &mut ScriptWriter, artifact: &ArtifactSpec) {
        let mut args: Vec<String> = vec!["artifacts-uploader".into()];
        if !self.opts.server_url.is_empty() {
            args.push("--url".into());
            args.push(self.opts.server_url.clone());
        }
        for path in &artifact.paths {
            args.push("--path".into());
            args.push(self.variables.expand_value(path));
        }
        for exclude in &artifact.exclude {
            args.push("--exclude".into());
            args.push(self.variables.expand_value(exclude));
        }
        if artifact.untracked {
            args.push("--untracked".into());
        }
        let name = self.variables.expand_value(&artifact.name);
        let optional = [
            ("--name", name.as_str()),
            ("--expire-in", artifact.expire_in.as_str()),
            (
                "--artifact-format",
                artifact.format.map_or("", |f| f.as_str()),
            ),
            ("--artifact-type", artifact.artifact_type.as_str()),
        ];
        for (flag, value) in optional {
            if !value.is_empty() {
                args.push(flag.into());
                args.push(value.into());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.open_helper_guard(w);
        notice(w, "Uploading artifacts...");
        w.command(&self.runner_command(), &args);
        self.close_helper_guard(w, "Uploading artifacts");
    }

    /// The resolved key for a cache key as written (job variables expanded, then the default
    /// key, hashing or sanitizing); `Err` holds the warning to print.
    fn cache_key(&self, raw: &str) -> Result<String, String> {
        let expanded = self.variables.expand_value(raw);
        cache_key::resolve(
            &expanded,
            &self.job.info.name,
            &self.job.git.ref_name,
            self.flags.hash_cache_keys(),
        )
        .map_err(|error| format!("Skipping cache: {error}"))
    }

    /// `<job cache dir>/<key>/cache.zip`.
    fn cache_archive(&self, key: &str) -> String {
        join(&join(&self.dirs.cache_dir, key), LOCAL_ARCHIVE_NAME)
    }

    fn cache_timeout_minutes(&self) -> String {
        (self.settings.cache_request_timeout.as_secs() / 60)
            .max(1)
            .to_string()
    }

    fn runner_command(&self) -> String {
        if self.opts.runner_command.is_empty() {
            "runnel".to_owned()
        } else {
            self.opts.runner_command.clone()
        }
    }

    /// `if <runner> --version >/dev/null 2>&1; then`.
    fn open_helper_guard(&self, w: &mut ScriptWriter) {
        let check = w.command_line(&self.runner_command(), &["--version"]);
        w.open(&format!("if {check} >/dev/null 2>/dev/null; then"));
    }

    /// Closes [`Self::open_helper_guard`] with a warning that `what` is disabled.
    fn close_helper_guard(&self, w: &mut ScriptWriter, what: &str) {
        w.else_branch();
        warning(
            w,
            &format!("Missing {}. {what} is disabled.", self.runner_command()),
        );
        w.close("fi");
    }
}

fn has_paths(paths: &[String], untracked: bool) -> bool {
    untracked || paths.iter().any(|p| !p.trim().is_empty())
}

fn notice(w: &mut ScriptWriter, text: &str) {
    let line = format!(
        "echo {}",
        w.quote(&format!("{ANSI_BOLD_GREEN}{text}{ANSI_RESET}"))
    );
    w.line(&line);
}

fn warning(w: &mut ScriptWriter, text: &str) {
    let line = format!(
        "echo {}",
        w.quote(&format!("{ANSI_YELLOW}{text}{ANSI_RESET}"))
    );
    w.line(&line);
}
