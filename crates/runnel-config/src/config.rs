//! The typed config: global keys, `[session_server]`, `[machine]` and the `[[runners]]` list,
//! plus [`parse`], the pure two-stage pipeline from text to [`Config`].
//!
//! Stage one parses the text into a TOML tree that keeps spans; stage two walks it, collecting
//! every problem with its line and column. Reading and writing files is `file.rs`'s job.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use runnel_types::Secret;
use toml_edit::{Document, DocumentMut};

use crate::diagnostic::{Diagnostic, Severity, Source};
use crate::expand::EnvLookup;
use crate::keyword::keyword_enum;
use crate::labels::check_labels;
use crate::raw::RawTable;
use crate::read::{Context, Field, Node, Read, Section, or_default, read_section, section};
use crate::runner::RunnerConfig;

/// Default `check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// Default `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `connection_max_age`.
pub const DEFAULT_CONNECTION_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Default `[session_server] session_timeout`.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Port of the metrics server when `listen_address` names none.
pub const DEFAULT_METRICS_PORT: u16 = 9252;

keyword_enum! {
    /// `log_level` (logrus names; `warn` is accepted for `warning`).
    pub enum LogLevel ("log level", one_or_many = false) {
        /// Only panics.
        Panic = "panic",
        /// Fatal errors.
        Fatal = "fatal",
        /// Errors.
        Error = "error",
        /// Warnings.
        Warning = "warning" | "warn",
        /// The default.
        Info = "info",
        /// Debug output.
        Debug = "debug",
        /// Everything.
        Trace = "trace",
    }
}

keyword_enum! {
    /// `log_format`.
    pub enum LogFormat ("log format", one_or_many = false) {
        /// The default: colored when on a terminal.
        Runner = "runner",
        /// Plain logfmt-like text.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
}

section! {
    /// The whole config.toml, in the official key order.
    pub struct Config {
        /// Metrics and debug HTTP server address.
        "listen_address" => listen_address: Option<String>,
        /// `[session_server]`.
        "session_server" => session_server: SessionServer,
        /// Most jobs running at once over all runners (`run` refuses values below 1).
        "concurrent" => concurrent: u32,
        /// Seconds between job requests; see [`Config::check_interval`].
        "check_interval" => check_interval: Option<u32>,
        /// Log level (the command line wins).
        "log_level" => log_level: Option<LogLevel>,
        /// Log format (the command line wins).
        "log_format" => log_format: Option<LogFormat>,
        /// User jobs run as (shell executor), set by `run --user`.
        "user" => user: Option<String>,
        /// The runners.
        "runners" => runners: Vec<RunnerConfig>,
        /// Sentry DSN for error reports.
        "sentry_dsn" => sentry_dsn: Option<Secret>,
        /// Seconds to wait for jobs on forceful shutdown; see [`Config::shutdown_timeout`].
        "shutdown_timeout" => shutdown_timeout: Option<u32>,
        /// Close idle connections after this age; see [`Config::connection_max_age`].
        "connection_max_age" => connection_max_age: Option<Duration>,
        /// Labels for every runner.
        "labels" => labels: BTreeMap<String, String>,
        /// `[machine]`, global docker+machine settings.
        "machine" => machine: Option<MachineSettings>,
        /// `[experimental]` (usage logger, …), untyped.
        "experimental" => experimental: Option<RawTable>,
    }
}

impl Config {
    /// Time between job requests: `check_interval` seconds, 3 s when unset or 0.
    pub fn check_interval(&self) -> Duration {
        seconds_or(self.check_interval, DEFAULT_CHECK_INTERVAL)
    }

    /// Forceful shutdown timeout: `shutdown_timeout` seconds, 30 s when unset or 0.
    pub fn shutdown_timeout(&self) -> Duration {
        seconds_or(self.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT)
    }

    /// Idle connection age limit, 15 min when unset.
    pub fn connection_max_age(&self) -> Duration {
        self.connection_max_age
            .unwrap_or(DEFAULT_CONNECTION_MAX_AGE)
    }

    /// The index of the first runner called `name` (for `-n/--name` style lookups).
    pub fn runner_index(&self, name: &str) -> Option<usize> {
        self.runners.iter().position(|runner| runner.name == name)
    }

    /// Where the metrics server listens: `listen_address`, with port 9252 added when it names
    /// none; `None` when unset (no metrics server).
    pub fn metrics_listen_address(&self) -> Option<String> {
        let address = self.listen_address.as_deref()?;
        let has_port = match address.strip_prefix('[') {
            Some(bracketed) => bracketed.contains("]:"),
            None => address.contains(':'),
        };
        Some(if has_port {
            address.to_owned()
        } else {
            format!("{address}:{DEFAULT_METRICS_PORT}")
        })
    }
}

fn seconds_or(seconds: Option<u32>, default: Duration) -> Duration {
    seconds
        .filter(|&s| s > 0)
        .map_or(default, |s| Duration::from_secs(u64::from(s)))
}

impl Read for Config {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let mut section = Section::open(node, cx)?;
        let config = Self::read_fields(&mut section, cx);
        check_labels(&mut section, cx);
        section.finish(cx);
        config
    }
}

section! {
    /// `[session_server]`: the interactive web terminal server.
    #[derive(Default)]
    pub struct SessionServer {
        /// Address the session server listens on.
        "listen_address" => listen_address: Option<String>,
        /// Address advertised to GitLab.
        "advertise_address" => advertise_address: Option<String>,
        /// Seconds a session stays open after its job; see [`SessionServer::session_timeout`].
        "session_timeout" => session_timeout: Option<u32>,
    }
}

impl SessionServer {
    /// How long a terminal session may outlive its job (30 min when unset or 0).
    pub fn session_timeout(&self) -> Duration {
        seconds_or(self.session_timeout, DEFAULT_SESSION_TIMEOUT)
    }
}

impl Field for SessionServer {
    fn take(section: &mut Section<'_>, key: &'static str, cx: &mut Context<'_>) -> Option<Self> {
        or_default(section, key, cx)
    }
}

section! {
    /// `[machine]`: global docker+machine settings.
    pub struct MachineSettings {
        /// `[machine.shutdown_drain]` (`enabled`, `concurrency`, `max_retries`,
        /// `retry_backoff`): kept as written; Runnel has no docker+machine executor to drain.
        "shutdown_drain" => shutdown_drain: Option<RawTable>,
    }
}

read_section!(SessionServer, MachineSettings);

/// What [`parse`] found: the config, its warnings and the editable document.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) config: Config,
    pub(crate) warnings: Vec<Diagnostic>,
    pub(crate) document: DocumentMut,
}

/// Why [`parse`] could not produce a config.
#[derive(Debug)]
pub(crate) enum ParseFailure {
    /// The text is not TOML.
    Syntax(Diagnostic),
    /// The TOML does not describe a valid config: every error and every warning.
    Invalid {
        errors: Vec<Diagnostic>,
        warnings: Vec<Diagnostic>,
    },
}

/// Parses and validates config text; pure apart from reading variables through `env`.
pub(crate) fn parse(file: &Path, text: &str, env: EnvLookup) -> Result<Parsed, ParseFailure> {
    let source = Source::new(file, text);
    let document = Document::parse(source.text()).map_err(|error| {
        let message = format!(
            "invalid TOML: {}",
            error.message().trim().replace('\n', "; ")
        );
        ParseFailure::Syntax(source.diagnostic(Severity::Error, error.span(), "", message))
    })?;
    let mut cx = Context::new(&source, env);
    let config = Config::read(&Node::root(document.as_item()), &mut cx);
    sort_by_position(&mut cx.errors);
    sort_by_position(&mut cx.warnings);
    match config {
        Some(config) if cx.errors.is_empty() => Ok(Parsed {
            config,
            warnings: cx.warnings,
            document: document.into_mut(),
        }),
        _ => Err(ParseFailure::Invalid {
            errors: cx.errors,
            warnings: cx.warnings,
        }),
    }
}

/// File order; problems without a position go last.
fn sort_by_position(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| d.position.map_or((usize::MAX, 0), |p| (p.line, p.column)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn config(text: &str) -> Config {
        parse(Path::new("config.toml"), text, no_env)
            .unwrap()
            .config
    }

    #[test]
    fn metrics_address_gets_the_default_port() {
        let address = |text| config(text).metrics_listen_address();
        assert_eq!(address(""), None);
        assert_eq!(
            address("listen_address = \"127.0.0.1\""),
            Some("127.0.0.1:9252".into())
        );
        assert_eq!(address("listen_address = \":9000\""), Some(":9000".into()));
        assert_eq!(
            address("listen_address = \"[::1]\""),
            Some("[::1]:9252".into())
        );
        assert_eq!(
            address("listen_address = \"[::1]:80\""),
            Some("[::1]:80".into())
        );
    }

    #[test]
    fn interval_and_timeouts_fall_back_to_official_defaults() {
        let defaults = config("");
        assert_eq!(defaults.check_interval(), DEFAULT_CHECK_INTERVAL);
        assert_eq!(defaults.shutdown_timeout(), DEFAULT_SHUTDOWN_TIMEOUT);
        let set = config("check_interval = 10\nshutdown_timeout = 0\nconnection_max_age = \"1m\"");
        assert_eq!(set.check_interval(), Duration::from_secs(10));
        assert_eq!(set.shutdown_timeout(), DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(set.connection_max_age(), Duration::from_secs(60));
    }
}
