//! Edits of the config document: append a runner, remove one, rotate a runner's token.
//!
//! New runners are written as text in the official layout (keys indented by two spaces per
//! table level, Go's key order, Go's zero time for unset datetimes) and appended to the file;
//! token rotation replaces values in place, keeping each value's surrounding spaces and
//! comments. Everything else in the file stays byte for byte. Validation of the result is the
//! caller's job ([`crate::ConfigFile`] re-reads the edited text).

use runnel_types::RunnerToken;
use time::OffsetDateTime;
use toml_edit::{DocumentMut, Item, TableLike, Value};

use crate::datetime::to_toml;
use crate::raw::RawTable;
use crate::runner::{Executor, Shell};

/// What the official runner writes at the top of a config file it creates.
pub(crate) const NEW_FILE_HEADER: &str = "concurrent = 1\ncheck_interval = 0\nshutdown_timeout = \
                                          0\n\n[session_server]\n  session_timeout = 1800\n";

/// A runner to append as a new `[[runners]]` entry (what `register` learned).
#[derive(Debug, Clone)]
pub struct NewRunner {
    /// Display name.
    pub name: String,
    /// Most jobs at once (written when set and non-zero).
    pub limit: Option<u32>,
    /// Job log cap in KiB.
    pub output_limit: Option<u32>,
    /// Concurrent job requests.
    pub request_concurrency: Option<u32>,
    /// GitLab URL.
    pub url: String,
    /// Runner ID from registration (`id = 0` is written when unknown, like the official runner).
    pub id: Option<u64>,
    /// Authentication token.
    pub token: RunnerToken,
    /// When the token was obtained.
    pub token_obtained_at: Option<OffsetDateTime>,
    /// When the token expires (`None`: never).
    pub token_expires_at: Option<OffsetDateTime>,
    /// CA bundle for GitLab's certificate.
    pub tls_ca_file: Option<String>,
    /// Client certificate.
    pub tls_cert_file: Option<String>,
    /// Client key.
    pub tls_key_file: Option<String>,
    /// The executor.
    pub executor: Executor,
    /// Builds directory override.
    pub builds_dir: Option<String>,
    /// Cache directory override.
    pub cache_dir: Option<String>,
    /// Git remote override.
    pub clone_url: Option<String>,
    /// `KEY=VALUE` job variables.
    pub environment: Vec<String>,
    /// Script before fetching sources.
    pub pre_get_sources_script: Option<String>,
    /// Script after fetching sources.
    pub post_get_sources_script: Option<String>,
    /// Script before the job script.
    pub pre_build_script: Option<String>,
    /// Script after the job script.
    pub post_build_script: Option<String>,
    /// Shell for job scripts.
    pub shell: Option<Shell>,
    /// More keys of the `[[runners]]` entry itself (scalars and arrays, e.g.
    /// `debug_trace_disabled = true`), written after the typed ones.
    pub settings: RawTable,
    /// Sub-tables written as `[runners.<name>]` in this order, such as
    /// `("docker", {image = "alpine"})` or `("feature_flags", {FF_X = true})`.
    pub sections: Vec<(String, RawTable)>,
}

impl NewRunner {
    /// A runner with the required values; everything else unset.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        token: RunnerToken,
        executor: Executor,
    ) -> Self {
        Self {
            name: name.into(),
            limit: None,
            output_limit: None,
            request_concurrency: None,
            url: url.into(),
            id: None,
            token,
            token_obtained_at: None,
            token_expires_at: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            executor,
            builds_dir: None,
            cache_dir: None,
            clone_url: None,
            environment: Vec::new(),
            pre_get_sources_script: None,
            post_get_sources_script: None,
            pre_build_script: None,
            post_build_script: None,
            shell: None,
            settings: RawTable::new(),
            sections: Vec::new(),
        }
    }

    /// The `[[runners]]` entry as TOML text, in the official layout.
    pub(crate) fn to_toml(&self) -> String {
        let mut out = Lines::new(1);
        out.header("[[runners]]");
        out.string("name", &self.name);
        out.number("limit", self.limit.filter(|&n| n > 0));
        out.number("output_limit", self.output_limit);
        out.number("request_concurrency", self.request_concurrency);
        out.string("url", &self.url);
        out.number("id", Some(self.id.unwrap_or(0)));
        out.string("token", self.token.expose());
        out.raw(
            "token_obtained_at",
            &to_toml(self.token_obtained_at).to_string(),
        );
        out.raw(
            "token_expires_at",
            &to_toml(self.token_expires_at).to_string(),
        );
        out.optional("tls-ca-file", &self.tls_ca_file);
        out.optional("tls-cert-file", &self.tls_cert_file);
        out.optional("tls-key-file", &self.tls_key_file);
        out.string("executor", self.executor.as_str());
        out.optional("builds_dir", &self.builds_dir);
        out.optional("cache_dir", &self.cache_dir);
        out.optional("clone_url", &self.clone_url);
        if !self.environment.is_empty() {
            let values = self
                .environment
                .iter()
                .cloned()
                .map(toml::Value::String)
                .collect();
            out.raw("environment", &toml::Value::Array(values).to_string());
        }
        out.optional("pre_get_sources_script", &self.pre_get_sources_script);
        out.optional("post_get_sources_script", &self.post_get_sources_script);
        out.optional("pre_build_script", &self.pre_build_script);
        out.optional("post_build_script", &self.post_build_script);
        if let Some(shell) = self.shell {
            out.string("shell", shell.as_str());
        }
        for (key, value) in self.settings.as_table() {
            out.raw(key, &value.to_string());
        }
        let mut text = out.finish();
        for (name, table) in &self.sections {
            write_table(
                &mut text,
                &format!("runners.{}", toml_key(name)),
                table.as_table(),
                2,
                false,
            );
        }
        text
    }
}

/// Lines of one table at a nesting depth (1 for `[[runners]]`).
struct Lines {
    text: String,
    depth: usize,
}

impl Lines {
    fn new(depth: usize) -> Self {
        Self {
            text: String::new(),
            depth,
        }
    }

    fn header(&mut self, header: &str) {
        let indent = "  ".repeat(self.depth - 1);
        self.text.push_str(&format!("{indent}{header}\n"));
    }

    fn raw(&mut self, key: &str, value: &str) {
        let indent = "  ".repeat(self.depth);
        self.text
            .push_str(&format!("{indent}{} = {value}\n", toml_key(key)));
    }

    fn string(&mut self, key: &str, value: &str) {
        self.raw(key, &toml::Value::String(value.to_owned()).to_string());
    }

    fn optional(&mut self, key: &str, value: &Option<String>) {
        if let Some(value) = value {
            self.string(key, value);
        }
    }

    fn number(&mut self, key: &str, value: Option<impl Into<u64>>) {
        if let Some(value) = value {
            self.raw(key, &value.into().to_string());
        }
    }

    fn finish(self) -> String {
        self.text
    }
}

/// Writes `table` under `header`: plain values first, then sub-tables, then arrays of tables.
fn write_table(out: &mut String, header: &str, table: &toml::Table, depth: usize, array: bool) {
    let mut lines = Lines::new(depth);
    lines.header(&if array {
        format!("[[{header}]]")
    } else {
        format!("[{header}]")
    });
    for (key, value) in table {
        if !is_table(value) && !is_array_of_tables(value) {
            lines.raw(key, &value.to_string());
        }
    }
    out.push_str(&lines.finish());
    for (key, value) in table {
        let child = format!("{header}.{}", toml_key(key));
        match value {
            toml::Value::Table(inner) => write_table(out, &child, inner, depth + 1, false),
            toml::Value::Array(items) if is_array_of_tables(value) => {
                for item in items.iter().filter_map(toml::Value::as_table) {
                    write_table(out, &child, item, depth + 1, true);
                }
            }
            _ => {}
        }
    }
}

fn is_table(value: &toml::Value) -> bool {
    value.is_table()
}

fn is_array_of_tables(value: &toml::Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| !items.is_empty() && items.iter().all(is_table))
}

/// A key as TOML writes it: bare when possible, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

/// Appends a runner to the text of a config file. A file without settings yet (missing, empty
/// or only comments) first gets the settings the official runner writes into a new file.
pub(crate) fn append_runner(text: &str, has_settings: bool, runner: &NewRunner) -> String {
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !has_settings {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(NEW_FILE_HEADER);
    }
    // The official encoder leaves one blank line before each `[[runners]]`.
    out.push('\n');
    out.push_str(&runner.to_toml());
    out
}

/// Why a runner entry could not be edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoSuchRunner;

/// Removes the runner at `index`; drops the `runners` key when none are left.
pub(crate) fn remove_runner(document: &mut DocumentMut, index: usize) -> Result<(), NoSuchRunner> {
    let runners = document.get_mut("runners").ok_or(NoSuchRunner)?;
    let remaining = match runners {
        Item::ArrayOfTables(tables) if index < tables.len() => {
            tables.remove(index);
            tables.len()
        }
        Item::Value(Value::Array(array)) if index < array.len() => {
            array.remove(index);
            array.len()
        }
        _ => return Err(NoSuchRunner),
    };
    if remaining == 0 {
        document.remove("runners");
    }
    Ok(())
}

/// Replaces the token and its timestamps of the runner at `index`, keeping the layout.
pub(crate) fn set_runner_token(
    document: &mut DocumentMut,
    index: usize,
    token: &RunnerToken,
    obtained_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
) -> Result<(), NoSuchRunner> {
    let runner = runner_table_mut(document, index).ok_or(NoSuchRunner)?;
    let indent = key_indent(runner, "token");
    set_value(runner, "token", Value::from(token.expose()), &indent);
    set_value(
        runner,
        "token_obtained_at",
        Value::from(to_toml(Some(obtained_at))),
        &indent,
    );
    set_value(
        runner,
        "token_expires_at",
        Value::from(to_toml(expires_at)),
        &indent,
    );
    Ok(())
}

fn runner_table_mut(document: &mut DocumentMut, index: usize) -> Option<&mut dyn TableLike> {
    match document.get_mut("runners")? {
        Item::ArrayOfTables(tables) => tables.get_mut(index).map(|t| t as &mut dyn TableLike),
        Item::Value(Value::Array(array)) => array
            .get_mut(index)?
            .as_inline_table_mut()
            .map(|t| t as &mut dyn TableLike),
        _ => None,
    }
}

/// The whitespace before `key` (or before the first key) in `table`.
fn key_indent(table: &dyn TableLike, key: &str) -> String {
    let key = table
        .key(key)
        .or_else(|| table.iter().next().and_then(|(first, _)| table.key(first)));
    key.and_then(|key| key.leaf_decor().prefix())
        .and_then(|prefix| prefix.as_str())
        .map(|prefix| prefix.rsplit('\n').next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Sets `key` to `value`, keeping the old value's spacing and trailing comment.
fn set_value(table: &mut dyn TableLike, key: &str, mut value: Value, indent: &str) {
    if let Some(old) = table.get_mut(key).and_then(Item::as_value_mut) {
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    table.insert(key, Item::Value(value));
    if table.is_dotted() {
        return;
    }
    if let Some(mut key) = table.key_mut(key) {
        key.leaf_decor_mut().set_prefix(indent);
    }
}
