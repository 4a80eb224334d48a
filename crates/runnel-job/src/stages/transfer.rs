//! The job-data stages (reference sections 4.1 and 4.5): `restore_cache`, `download_artifacts`,
//! `archive_cache`/`archive_cache_on_failure` and
//! `upload_artifacts_on_success`/`upload_artifacts_on_failure`.
//!
//! Each stage calls the runner binary itself ([`crate::PlanOptions::runner_command`]) as a
//! helper (`cache-extractor`, `artifacts-downloader`, `cache-archiver`, `artifacts-uploader`),
//! like the official runner. Cache helpers are guarded so that a failure only prints a warning;
//! artifact helpers fail their stage and so the job. Credentials never appear as arguments:
//! the helpers read `CI_SERVER_URL`, `CI_JOB_ID` and `CI_JOB_TOKEN` from their environment.
//! `CI_JOB_TOKEN` is set in front of each artifact command to the payload's job credential
//! (the job's own `token`, or a dependency's), as an environment assignment, so it stays out
//! of the process list and a `CI_JOB_TOKEN` variable that differs from the credential does
//! not matter.
//!
//! With a distributed cache ([`crate::PlanOptions::remote_cache`]) each cache helper also gets
//! the presigned URLs of its key's object, as environment assignments in front of the command
//! (never as arguments), and [`StageContext::remote_cache_secrets`] hands their signed queries
//! to the trace masker.
//!
//! Deliberately not here: signing cache URLs (the daemon does), artifact metadata generation,
//! and the helpers themselves (the `runnel` binary).

use runnel_archive::cache_key::{self, LOCAL_ARCHIVE_NAME};
use runnel_types::{ArtifactSpec, CachePolicy, CacheSpec, Dependency, Secret};

use super::{PlannedStage, StageContext, StageKind, StageWhen};
use crate::dirs::join;
use crate::remote_cache::{CACHE_HEAD_URL_ENV, CACHE_URL_ENV, CacheUrls};
use crate::script::{ANSI_BOLD_GREEN, ANSI_RESET, ScriptWriter};

/// Yellow, as the official `Warningf`.
const ANSI_YELLOW: &str = "\x1b[0;33m";
const ANSI_BOLD_RED: &str = "\x1b[31;1m";

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

    /// The keys to try for `cache`, in order (its key, `fallback_keys`, `CACHE_FALLBACK_KEY`),
    /// and a warning for each that cannot be used.
    fn restore_keys(&self, cache: &CacheSpec) -> (Vec<String>, Vec<String>) {
        let mut keys: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        match self.cache_key(&cache.key) {
            Ok(key) => keys.push(key),
            Err(message) => warnings.push(message),
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
                Err(message) => warnings.push(message),
            }
        }
        (keys, warnings)
    }

    /// The presigned URLs for `key`, when a distributed cache is configured.
    fn remote_urls(&self, key: &str) -> Option<CacheUrls> {
        self.opts.remote_cache.as_ref()?.urls(key)
    }

    /// The signed queries of every presigned URL the cache stages carry, for the masker
    /// (a debug trace would otherwise show them).
    pub(crate) fn remote_cache_secrets(&self) -> Vec<Secret> {
        if self.opts.remote_cache.is_none() {
            return Vec::new();
        }
        let mut keys: Vec<String> = Vec::new();
        for cache in &self.job.cache {
            keys.extend(self.restore_keys(cache).0);
        }
        let mut secrets: Vec<Secret> = Vec::new();
        for urls in keys.iter().filter_map(|key| self.remote_urls(key)) {
            for query in urls.signed_queries() {
                if !secrets.contains(&query) {
                    secrets.push(query);
                }
            }
        }
        secrets
    }

    /// `VAR= …` in front of a cache helper command without a distributed cache: a job variable
    /// of the same name must not send the cache anywhere.
    fn no_url_assignments() -> String {
        format!("{CACHE_URL_ENV}= {CACHE_HEAD_URL_ENV}= ")
    }

    /// `VAR=<url> …` assignments to put in front of a cache helper command.
    fn url_assignments(w: &ScriptWriter, url: &Secret, head: &Secret) -> String {
        format!(
            "{CACHE_URL_ENV}={} {CACHE_HEAD_URL_ENV}={} ",
            w.quote(url.expose()),
            w.quote(head.expose())
        )
    }

    fn write_restore_cache(&self, w: &mut ScriptWriter, cache: &CacheSpec) {
        let (keys, warnings) = self.restore_keys(cache);
        for message in &warnings {
            warning(w, message);
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
            let env = self
                .remote_urls(key)
                .map(|urls| Self::url_assignments(w, &urls.get, &urls.head))
                .unwrap_or_else(Self::no_url_assignments);
            w.open(&format!("if {env}{line}; then"));
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
        let urls = self.remote_urls(&key);
        let max_size = self
            .opts
            .remote_cache
            .as_ref()
            .map_or(0, |remote| remote.max_uploaded_archive_size());
        if urls.is_some() && max_size > 0 {
            args.push("--max-uploaded-archive-size".into());
            args.push(max_size.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.open_helper_guard(w);
        notice(w, &format!("Creating cache {key}..."));
        let line = w.command_line(&self.runner_command(), &args);
        let env = urls
            .map(|urls| Self::url_assignments(w, &urls.put, &urls.head))
            .unwrap_or_else(Self::no_url_assignments);
        w.open(&format!("if {env}{line}; then"));
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
        // The job credential of the payload, not whatever the CI_JOB_TOKEN variable says (as
        // the official runner passes it): an assignment in front of the command, so it stays
        // out of the process list.
        let token = w.quote(self.job.token.expose());
        let line = w.command_line(&self.runner_command(), &args);
        w.line(&format!("CI_JOB_TOKEN={token} {line}"));
        w.check_for_errors();
        // Unlike a cache, artifacts are part of the job's result: no helper, no success.
        w.else_branch();
        let line = format!(
            "echo {} >&2",
            w.quote(&format!(
                "{ANSI_BOLD_RED}ERROR: Missing {}: artifacts cannot be uploaded. The runner binary must be available where the job runs (docker: leave helper_image unset to use the helper image Runnel builds itself; ssh: install runnel on the host).{ANSI_RESET}",
                self.runner_command()
            ))
        );
        w.line(&line);
        w.line("exit 1");
        w.close("fi");
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
