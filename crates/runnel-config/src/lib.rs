//! config.toml: read, validate, edit and save the official GitLab Runner configuration.
//!
//! Runnel reads the same `config.toml` as the official `gitlab-runner`, with the same keys and
//! defaults, and writes it back the way the user left it.
//!
//! # Loading
//!
//! [`ConfigFile::load`] reads a file in two stages: the text is parsed into a TOML tree that
//! keeps positions, then walked into a typed [`Config`]. The walk is pure and reports *every*
//! problem at once, each as a [`Diagnostic`] with the key path, line and column:
//!
//! ```text
//! invalid config file /etc/gitlab-runner/config.toml (2 errors)
//!   /etc/gitlab-runner/config.toml:10:14: runners[0].executor: unknown executor "dockr", expected one of: shell, docker, …
//!   /etc/gitlab-runner/config.toml:12:24: runners[0].unhealthy_interval: unknown unit "x" in duration "1x", …
//! ```
//!
//! Unknown keys are not errors: they stay in the file and come back as warnings
//! ([`ConfigFile::warnings`]), rendered like `config.toml:12:3: runners[0].executr: unknown key
//! (kept)`. A missing file loads as an empty config ([`ConfigFile::existed`] is `false`). After
//! loading, each runner's `url` and `token` get `$VAR`/`${VAR}` expansion like Go's
//! `os.ExpandEnv` (only in the typed view; the file keeps the reference).
//!
//! # Defaults
//!
//! The typed structs hold what the file says (`Option` for keys whose absence matters); methods
//! apply the official defaults: [`Config::check_interval`] (3 s when ≤ 0),
//! [`Config::shutdown_timeout`] (30 s), [`Config::connection_max_age`] (15 min),
//! [`RunnerConfig::output_limit_bytes`] (4096 KiB), [`RunnerConfig::request_concurrency`]
//! (at least 1), [`RunnerConfig::unhealthy_requests_limit`] (3),
//! [`RunnerConfig::unhealthy_interval`] (1 h), [`RunnerConfig::job_status_final_update_retry_limit`]
//! (10), [`DockerConfig::pull_policies`] (`always`), [`SessionServer::session_timeout`] (30 min).
//!
//! # Editing and saving
//!
//! The parsed document is kept, so [`ConfigFile::save`] preserves comments, key order and layout
//! byte for byte except what an edit changed: [`ConfigFile::add_runner`] (a new `[[runners]]` in
//! the official layout), [`ConfigFile::remove_runner`] and [`ConfigFile::set_runner_token`]
//! (token rotation). Saving writes a 0600 temporary file next to the target and renames it.
//!
//! # Also here
//!
//! [`config_path`] / [`default_config_path`] pick the file like the official runner, and
//! [`SystemIdFile`] reads or creates `.runner_system_id`.
//!
//! This crate does no network I/O, starts nothing and does not watch the file for changes.

mod cache;
mod config;
mod datetime;
mod diagnostic;
mod docker;
mod duration;
mod edit;
mod expand;
mod file;
mod keyword;
mod labels;
mod paths;
mod raw;
mod read;
mod runner;
mod system_id;
mod write;

pub use cache::{CacheAzureConfig, CacheConfig, CacheGcsConfig, CacheS3Config};
pub use config::{
    Config, DEFAULT_CHECK_INTERVAL, DEFAULT_CONNECTION_MAX_AGE, DEFAULT_METRICS_PORT,
    DEFAULT_SESSION_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, LogFormat, LogLevel, MachineSettings,
    SessionServer,
};
pub use diagnostic::{Diagnostic, Position, Severity};
pub use docker::{DEFAULT_WAIT_FOR_SERVICES_TIMEOUT, DockerConfig, DockerService, PullPolicy};
pub use duration::{DurationError, parse_go_duration};
pub use edit::NewRunner;
pub use expand::{EnvLookup, process_env};
pub use file::{ConfigFile, EditError, LoadError};
pub use keyword::UnknownKeyword;
pub use paths::{
    CONFIG_FILE_NAME, HostCertificates, certificate_dirs, config_path, default_config_path,
    default_config_path_for,
};
pub use raw::RawTable;
pub use runner::{
    ArtifactConfig, CustomBuildDir, CustomConfig, DEFAULT_ARTIFACT_RESPONSE_HEADER_TIMEOUT,
    DEFAULT_ARTIFACT_UPLOAD_TIMEOUT, DEFAULT_FINAL_UPDATE_RETRY_LIMIT, DEFAULT_OUTPUT_LIMIT_KIB,
    DEFAULT_UNHEALTHY_INTERVAL, DEFAULT_UNHEALTHY_REQUESTS_LIMIT, Executor, RunnerConfig, Shell,
    SshConfig,
};
pub use system_id::{MACHINE_ID_PATH, SYSTEM_ID_FILE_NAME, SystemId, SystemIdError, SystemIdFile};
pub use write::WriteError;
