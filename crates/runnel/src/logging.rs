//! Daemon logging: `tracing` to stderr in the official runner's three formats.
//!
//! These are the runner's own logs. Job output never goes here: it goes to the job trace
//! (`runnel-trace`), which is uploaded to GitLab. Log lines carry short tokens only; the redacting
//! token types make anything else impossible to print by accident.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::Visit;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{LogFormat, LogLevel};

/// Changes the log level of a running process (config reload).
#[derive(Clone)]
pub(crate) struct LevelHandle(reload::Handle<EnvFilter, tracing_subscriber::Registry>);

impl fmt::Debug for LevelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LevelHandle")
    }
}

impl LevelHandle {
    /// Applies a new level; an unknown level string is reported and ignored.
    pub(crate) fn set(&self, level: LogLevel) {
        if let Err(error) = self.0.modify(|filter| *filter = filter_for(level)) {
            tracing::warn!(%error, "failed to change the log level");
        }
    }
}

/// Installs the global subscriber. Call once, before anything logs. With `syslog`, lines go to
/// the system log (`/dev/log`) instead of stderr when it is there.
pub(crate) fn init(level: LogLevel, format: LogFormat, syslog: bool) -> LevelHandle {
    let (filter, handle) = reload::Layer::new(filter_for(level));
    let mut syslog_error = None;
    let (writer, ansi) = match syslog.then(Syslog::connect) {
        Some(Ok(syslog)) => (BoxMakeWriter::new(syslog), false),
        other => {
            syslog_error = other.and_then(Result::err);
            (
                BoxMakeWriter::new(std::io::stderr),
                std::io::stderr().is_terminal(),
            )
        }
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(ErrorCounter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(JsonFormat)
                    .with_writer(writer),
            )
            .init(),
        LogFormat::Text | LogFormat::Runner => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(LineFormat { format, ansi })
                    .with_writer(writer),
            )
            .init(),
    }
    if let Some(error) = syslog_error {
        tracing::warn!(%error, "cannot log to the system log; logging to stderr");
    }
    LevelHandle(handle)
}

/// Where syslog listens on Linux.
const SYSLOG_SOCKET: &str = "/dev/log";

/// Log lines as syslog datagrams (RFC 3164 framing, facility `daemon`).
struct Syslog {
    socket: std::os::unix::net::UnixDatagram,
    pid: u32,
}

impl Syslog {
    fn connect() -> std::io::Result<Self> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect(SYSLOG_SOCKET).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot connect to {SYSLOG_SOCKET}: {error}"),
            )
        })?;
        Ok(Self {
            socket,
            pid: std::process::id(),
        })
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            syslog: self,
            severity: 6,
            line: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        SyslogLine {
            syslog: self,
            severity,
            line: Vec::new(),
        }
    }
}

/// One log line, sent as one datagram when the formatter is done with it.
struct SyslogLine<'a> {
    syslog: &'a Syslog,
    severity: u8,
    line: Vec<u8>,
}

impl std::io::Write for SyslogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        const DAEMON: u8 = 3;
        let text = String::from_utf8_lossy(&self.line);
        let priority = DAEMON * 8 + self.severity;
        let message = format!(
            "<{priority}>runnel[{}]: {}",
            self.syslog.pid,
            text.trim_end()
        );
        // A full or missing syslog must not stop the runner; the line is lost, nothing else.
        self.syslog.socket.send(message.as_bytes()).ok();
    }
}

/// Feeds `gitlab_runner_errors_total` with every warning and error logged.
struct ErrorCounter;

impl<S: Subscriber> tracing_subscriber::Layer<S> for ErrorCounter {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        runnel_service::record_log_event(*event.metadata().level());
    }
}

/// Parses the config.toml `log_level` spelling.
pub(crate) fn parse_level(value: &str) -> Option<LogLevel> {
    Some(match value.to_ascii_lowercase().as_str() {
        "panic" => LogLevel::Panic,
        "fatal" => LogLevel::Fatal,
        "error" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warning,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

/// Parses the config.toml `log_format` spelling.
pub(crate) fn parse_format(value: &str) -> Option<LogFormat> {
    Some(match value.to_ascii_lowercase().as_str() {
        "runner" => LogFormat::Runner,
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => return None,
    })
}

fn filter_for(level: LogLevel) -> EnvFilter {
    let directive = match level {
        LogLevel::Panic | LogLevel::Fatal | LogLevel::Error => "error",
        LogLevel::Warning => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    // Our crates log at the requested level; dependencies only from warnings up unless tracing.
    let deps = if level == LogLevel::Trace {
        "trace"
    } else {
        "warn"
    };
    // Review L12: bollard logs every Docker request and response body at debug (container
    // create bodies with the job's variables), so it never logs below warnings.
    EnvFilter::new(format!(
        "{deps},bollard=warn,runnel={directive},runnel_service={directive},runnel_api={directive},runnel_config={directive},runnel_executor={directive}"
    ))
}

/// The `runner` and `text` line formats.
struct LineFormat {
    format: LogFormat,
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Fields of enclosing spans (job id, runner) follow the event's own.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let data = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>();
                if let Some(data) = data.filter(|data| !data.fields.is_empty()) {
                    fields.pairs.push(' ');
                    fields.pairs.push_str(&data.fields);
                }
            }
        }
        let level = *event.metadata().level();
        match self.format {
            LogFormat::Text => {
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                writeln!(
                    writer,
                    "time=\"{now}\" level={} msg={:?}{}",
                    level_name(level),
                    fields.message,
                    fields.pairs
                )
            }
            _ => {
                let (prefix, colour) = match level {
                    Level::ERROR => ("ERROR: ", "\x1b[31;1m"),
                    Level::WARN => ("WARNING: ", "\x1b[0;33m"),
                    Level::DEBUG | Level::TRACE => ("", "\x1b[0;37m"),
                    Level::INFO => ("", ""),
                };
                let mut line = String::with_capacity(96);
                write!(line, "{prefix}{:<50}", fields.message).ok();
                if self.ansi && !colour.is_empty() {
                    writeln!(writer, "{colour}{line}\x1b[0;m{}", fields.pairs)
                } else {
                    writeln!(writer, "{line}{}", fields.pairs)
                }
            }
        }
    }
}

/// The `json` format as the official runner's logrus writes it: one object per line with
/// `level`, `msg` and `time`, and every field (the event's and its spans': job id, runner,
/// stage) flat beside them.
struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut object = serde_json::Map::new();
        // Span fields first (outermost to innermost), so the event's own fields win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(data) = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>()
                else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(&data.fields)
                {
                    object.extend(fields);
                }
            }
        }
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        object.extend(fields.0);
        let message = object
            .remove("message")
            .unwrap_or(serde_json::Value::String(String::new()));
        // logrus keeps its own keys and renames clashing fields to `fields.<key>`.
        for key in ["level", "msg", "time"] {
            if let Some(value) = object.remove(key) {
                object.insert(format!("fields.{key}"), value);
            }
        }
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        object.insert(
            "level".to_owned(),
            level_name(*event.metadata().level()).into(),
        );
        object.insert("msg".to_owned(), message);
        object.insert("time".to_owned(), now.into());
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values (numbers and bools kept, the rest as text).
#[derive(Default)]
struct JsonVisitor(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.contains(' ') || value.is_empty() {
            write!(self.pairs, " {}={value:?}", field.name()).ok();
        } else {
            write!(self.pairs, " {}={value}", field.name()).ok();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            write!(self.message, "{value:?}").ok();
        } else {
            let rendered = format!("{value:?}");
            self.record_str(field, &rendered);
        }
    }
}
