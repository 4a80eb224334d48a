//! The daemon's view of its configuration, and where it comes from.
//!
//! [`ServiceConfig`] is what the daemon needs from config.toml, resolved (defaults applied,
//! durations typed). A [`ConfigSource`] produces it and persists rotated tokens: `run` uses the
//! config file ([`FileConfigSource`]), `run-single` may use flags only ([`FixedConfigSource`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use runnel_config::{ConfigFile, RunnerConfig, SystemIdFile};
use runnel_types::RunnerToken;
use time::OffsetDateTime;

use crate::ServiceError;

/// Everything the daemon needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub concurrent: usize,
    pub check_interval: Duration,
    pub shutdown_timeout: Duration,
    pub log_level: Option<String>,
    /// Metrics server address (`listen_address`), if any.
    pub listen_address: Option<String>,
    pub user: Option<String>,
    pub system_id: String,
    pub runners: Vec<RunnerSpec>,
}

/// One `[[runners]]` entry, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerSpec {
    pub name: String,
    pub url: String,
    pub id: u64,
    pub token: RunnerToken,
    pub token_obtained_at: Option<OffsetDateTime>,
    pub token_expires_at: Option<OffsetDateTime>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// 0 = no limit.
    pub limit: usize,
    pub request_concurrency: usize,
    pub output_limit_bytes: usize,
    pub executor: String,
    pub shell: Option<String>,
    pub builds_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub clone_url: Option<String>,
    pub environment: Vec<String>,
    pub pre_get_sources_script: Option<String>,
    pub post_get_sources_script: Option<String>,
    pub pre_build_script: Option<String>,
    pub post_build_script: Option<String>,
    pub feature_flags: BTreeMap<String, bool>,
    /// `[runners.custom_build_dir] enabled`; `None` means the executor's default.
    pub custom_build_dir_enabled: Option<bool>,
    pub debug_trace_disabled: bool,
    pub strict_check_interval: bool,
    pub unhealthy_requests_limit: u32,
    pub unhealthy_interval: Duration,
    pub final_update_retry_limit: u32,
    /// The whole `[[runners]]` entry, for executors with sections of their own (docker);
    /// `None` for a runner described by flags only.
    pub config: Option<Arc<RunnerConfig>>,
}

impl RunnerSpec {
    /// The identity of a runner across reloads.
    pub(crate) fn key(&self) -> (String, String) {
        (self.url.clone(), self.token.expose().to_owned())
    }

    /// Fills the TLS files config.toml leaves unset from the official lookup in `dirs`
    /// (`<host>.crt`, `<host>.auth.crt`, `<host>.auth.key`; see
    /// [`runnel_config::certificate_dirs`]).
    pub fn find_host_certificates(&mut self, dirs: &[PathBuf]) {
        let found = runnel_config::HostCertificates::find(dirs, &self.url);
        for (slot, file) in [
            (&mut self.tls_ca_file, found.ca_file),
            (&mut self.tls_cert_file, found.cert_file),
            (&mut self.tls_key_file, found.key_file),
        ] {
            if slot.is_none() {
                *slot = file;
            }
        }
    }

    /// The configured shell when this build cannot generate scripts for it (only `bash` and
    /// `sh` are implemented; `pwsh`/`powershell` are refused rather than run as bash).
    pub(crate) fn unsupported_shell(&self) -> Option<&str> {
        match self.shell.as_deref() {
            None | Some("" | "bash" | "sh") => None,
            Some(other) => Some(other),
        }
    }

    /// Whether this runner may ask for jobs: its executor and its shell are implemented, and
    /// no key it sets would make Runnel run its jobs differently from what it asks.
    pub(crate) fn can_run_jobs(&self) -> bool {
        self.executor_supported()
            && self.unsupported_shell().is_none()
            && self.refused_keys().is_empty()
    }

    /// `[[runners]]` keys set to something Runnel cannot honour and that would change what a
    /// job does, each named (see `RunnerConfig::refused_keys`).
    pub(crate) fn refused_keys(&self) -> Vec<String> {
        self.config
            .as_ref()
            .map(|config| config.refused_keys())
            .unwrap_or_default()
    }

    /// Why the executor's own section cannot be used (checked at start, so that a key Runnel
    /// does not implement stops the runner instead of being ignored).
    pub(crate) fn executor_config_error(&self) -> Option<String> {
        match self.executor.as_str() {
            "kubernetes" => {
                let config = self.config.as_ref()?;
                runnel_executor_kubernetes::KubernetesProvider::from_runner(config)
                    .err()
                    .map(|error| error.to_string())
            }
            _ => None,
        }
    }

    /// Executors this build can run jobs with.
    pub(crate) fn executor_supported(&self) -> bool {
        match self.executor.as_str() {
            "shell" => true,
            "docker" => self.config.as_ref().is_some_and(|c| c.docker.is_some()),
            // Without their section, each job fails with a configuration error, as officially.
            "custom" | "ssh" => self.config.is_some(),
            "kubernetes" => {
                self.config.as_ref().is_some_and(|c| c.kubernetes.is_some())
                    && self.executor_config_error().is_none()
            }
            _ => false,
        }
    }
}

/// Where configuration comes from, and where rotated tokens go.
pub trait ConfigSource: Send + Sync + 'static {
    /// Reads the configuration; errors are already rendered for the log.
    fn load(&self) -> Result<ServiceConfig, ServiceError>;
    /// When the source last changed (None when it cannot tell).
    fn modified(&self) -> Option<SystemTime>;
    /// Stores a rotated token for the runner that had `old`.
    fn save_token(
        &self,
        old: &RunnerToken,
        new: &RunnerToken,
        obtained_at: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(), ServiceError>;
}

/// A fixed configuration (run-single with flags); tokens rotate in memory only.
#[derive(Debug)]
pub struct FixedConfigSource(Mutex<ServiceConfig>);

impl FixedConfigSource {
    pub fn new(config: ServiceConfig) -> Self {
        Self(Mutex::new(config))
    }
}

impl ConfigSource for FixedConfigSource {
    fn load(&self) -> Result<ServiceConfig, ServiceError> {
        Ok(self.0.lock().map_err(|_| ServiceError::Poisoned)?.clone())
    }

    fn modified(&self) -> Option<SystemTime> {
        None
    }

    fn save_token(
        &self,
        old: &RunnerToken,
        new: &RunnerToken,
        obtained_at: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(), ServiceError> {
        let mut config = self.0.lock().map_err(|_| ServiceError::Poisoned)?;
        for runner in config.runners.iter_mut().filter(|r| &r.token == old) {
            runner.token = new.clone();
            runner.token_obtained_at = Some(obtained_at);
            runner.token_expires_at = expires_at;
        }
        Ok(())
    }
}

/// config.toml on disk.
#[derive(Debug)]
pub struct FileConfigSource {
    path: PathBuf,
    /// Only these runners (run-single --runner NAME); None = all.
    only: Option<String>,
    overrides: Overrides,
}

/// Settings given on the command line that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub user: Option<String>,
    /// Force `concurrent` (run-single runs one job at a time).
    pub concurrent: Option<usize>,
}

impl FileConfigSource {
    pub fn new(path: impl Into<PathBuf>, only: Option<String>, overrides: Overrides) -> Self {
        Self {
            path: path.into(),
            only,
            overrides,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ConfigSource for FileConfigSource {
    fn load(&self) -> Result<ServiceConfig, ServiceError> {
        let file = ConfigFile::load(&self.path).map_err(|error| ServiceError::Config {
            message: render_load_error(&error),
        })?;
        for warning in file.warnings() {
            tracing::warn!("{warning}");
        }
        let system_id = SystemIdFile::next_to(&self.path)
            .load_or_create()
            .map_err(|error| ServiceError::Config {
                message: error.to_string(),
            })?
            .as_str()
            .to_owned();
        let config = file.config();
        let mut runners = Vec::new();
        for runner in &config.runners {
            if self.only.as_ref().is_some_and(|only| only != &runner.name) {
                continue;
            }
            let mut spec = runner_spec(runner);
            spec.find_host_certificates(&runnel_config::certificate_dirs(&self.path));
            runners.push(spec);
        }
        if let Some(only) = &self.only
            && runners.is_empty()
        {
            {
                return Err(ServiceError::Config {
                    message: format!("no runner named {only:?} in {}", self.path.display()),
                });
            }
        }
        Ok(ServiceConfig {
            concurrent: self
                .overrides
                .concurrent
                .unwrap_or(usize::try_from(config.concurrent).unwrap_or(usize::MAX)),
            check_interval: config.check_interval(),
            shutdown_timeout: config.shutdown_timeout(),
            log_level: config.log_level.map(|level| level.as_str().to_owned()),
            listen_address: config.metrics_listen_address(),
            user: self.overrides.user.clone().or_else(|| config.user.clone()),
            system_id,
            runners,
        })
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    fn save_token(
        &self,
        old: &RunnerToken,
        new: &RunnerToken,
        obtained_at: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(), ServiceError> {
        let mut file = ConfigFile::load(&self.path).map_err(|error| ServiceError::Config {
            message: render_load_error(&error),
        })?;
        let index = file
            .config()
            .runners
            .iter()
            .position(|r| &r.token == old)
            .ok_or_else(|| ServiceError::Config {
                message: format!(
                    "runner {} is no longer in {}; the new token was not saved",
                    old.short(),
                    self.path.display()
                ),
            })?;
        file.set_runner_token(index, new, obtained_at, expires_at)
            .map_err(|error| ServiceError::Config {
                message: error.to_string(),
            })?;
        file.save().map_err(|error| ServiceError::Config {
            message: error.to_string(),
        })
    }
}

/// A load error with every diagnostic, one per line.
pub(crate) fn render_load_error(error: &runnel_config::LoadError) -> String {
    let diagnostics = error.diagnostics();
    if diagnostics.is_empty() {
        return error.to_string();
    }
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl RunnerSpec {
    /// A `[[runners]]` entry of a parsed config.toml, resolved (defaults applied).
    pub fn from_config(runner: &RunnerConfig) -> Self {
        runner_spec(runner)
    }
}

fn runner_spec(runner: &RunnerConfig) -> RunnerSpec {
    RunnerSpec {
        name: runner.name.clone(),
        url: runner.url.clone(),
        id: runner.id.unwrap_or(0),
        token: runner.token.clone(),
        token_obtained_at: runner.token_obtained_at,
        token_expires_at: runner.token_expires_at,
        tls_ca_file: runner.tls_ca_file.as_ref().map(PathBuf::from),
        tls_cert_file: runner.tls_cert_file.as_ref().map(PathBuf::from),
        tls_key_file: runner.tls_key_file.as_ref().map(PathBuf::from),
        limit: usize::try_from(runner.limit).unwrap_or(usize::MAX),
        request_concurrency: usize::try_from(runner.request_concurrency()).unwrap_or(1),
        output_limit_bytes: usize::try_from(runner.output_limit_bytes()).unwrap_or(usize::MAX),
        executor: runner.executor.as_str().to_owned(),
        shell: runner.shell.map(|shell| shell.as_str().to_owned()),
        builds_dir: runner.builds_dir.clone().map(PathBuf::from),
        cache_dir: runner.cache_dir.clone().map(PathBuf::from),
        clone_url: runner.clone_url.clone(),
        environment: runner.environment.clone(),
        pre_get_sources_script: runner.pre_get_sources_script.clone(),
        post_get_sources_script: runner.post_get_sources_script.clone(),
        pre_build_script: runner.pre_build_script.clone(),
        post_build_script: runner.post_build_script.clone(),
        feature_flags: runner.feature_flags.clone(),
        custom_build_dir_enabled: runner.custom_build_dir_setting(),
        debug_trace_disabled: runner.debug_trace_disabled,
        strict_check_interval: runner.strict_check_interval,
        unhealthy_requests_limit: runner.unhealthy_requests_limit(),
        unhealthy_interval: runner.unhealthy_interval(),
        final_update_retry_limit: runner.job_status_final_update_retry_limit(),
        config: Some(Arc::new(runner.clone())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A shell runner with the given token timestamps.
    pub(crate) fn runner_spec_for_tests(
        obtained: Option<OffsetDateTime>,
        expires: Option<OffsetDateTime>,
    ) -> RunnerSpec {
        RunnerSpec {
            name: "test".to_owned(),
            url: "http://127.0.0.1:1/".to_owned(),
            id: 1,
            token: RunnerToken::new("glrt-test-token-0001"),
            token_obtained_at: obtained,
            token_expires_at: expires,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            limit: 0,
            request_concurrency: 1,
            output_limit_bytes: 4 * 1024 * 1024,
            executor: "shell".to_owned(),
            shell: None,
            builds_dir: None,
            cache_dir: None,
            clone_url: None,
            environment: Vec::new(),
            pre_get_sources_script: None,
            post_get_sources_script: None,
            pre_build_script: None,
            post_build_script: None,
            feature_flags: BTreeMap::new(),
            custom_build_dir_enabled: None,
            debug_trace_disabled: false,
            strict_check_interval: false,
            unhealthy_requests_limit: 3,
            unhealthy_interval: Duration::from_secs(3600),
            final_update_retry_limit: 10,
            config: None,
        }
    }
}
