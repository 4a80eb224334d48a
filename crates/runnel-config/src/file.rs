//! [`ConfigFile`]: a loaded config.toml that can be inspected, edited and saved.
//!
//! The file's TOML document is kept alongside the typed [`Config`], so saving writes back the
//! user's comments, key order and layout unchanged except for what an edit touched. Every edit
//! is re-validated before it is accepted, so the typed view and the document never disagree.
//! Watching the file for changes (reload) is the daemon's job.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use runnel_types::RunnerToken;
use time::OffsetDateTime;
use toml_edit::DocumentMut;

use crate::config::{Config, ParseFailure, Parsed, parse};
use crate::diagnostic::Diagnostic;
use crate::edit::{self, NewRunner, NoSuchRunner};
use crate::expand::{EnvLookup, process_env};
use crate::write::{WriteError, write_private};

/// A config.toml: its path, its document and its typed, validated view.
///
/// `Debug` shows the typed view (whose secrets are redacted), never the raw text.
pub struct ConfigFile {
    path: PathBuf,
    existed: bool,
    /// The current contents: the file as read, or the text of the last accepted edit.
    text: String,
    /// The parsed form of `text`, the base of edits.
    document: DocumentMut,
    config: Config,
    warnings: Vec<Diagnostic>,
    env: EnvLookup,
    /// Whether the file used CRLF line endings, which edits of the document do not keep.
    crlf: bool,
}

impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field("existed", &self.existed)
            .field("config", &self.config)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but could not be read.
    #[error("failed to read config file {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML; the diagnostic has the line and column.
    #[error("{0}")]
    Syntax(Box<Diagnostic>),
    /// The TOML does not describe a valid config.
    #[error("{}", render_invalid(path, errors))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every error, in file order.
        errors: Vec<Diagnostic>,
        /// Every warning (unknown keys), in file order.
        warnings: Vec<Diagnostic>,
    },
}

impl LoadError {
    fn new(path: &Path, failure: ParseFailure) -> Self {
        match failure {
            ParseFailure::Syntax(diagnostic) => Self::Syntax(Box::new(diagnostic)),
            ParseFailure::Invalid { errors, warnings } => Self::Invalid {
                path: path.to_path_buf(),
                errors,
                warnings,
            },
        }
    }

    /// Every located problem, errors first (what `lint` prints); empty for I/O errors.
    pub fn diagnostics(&self) -> Vec<&Diagnostic> {
        match self {
            Self::Read { .. } => Vec::new(),
            Self::Syntax(diagnostic) => vec![diagnostic],
            Self::Invalid {
                errors, warnings, ..
            } => errors.iter().chain(warnings).collect(),
        }
    }
}

fn render_invalid(path: &Path, errors: &[Diagnostic]) -> String {
    let count = match errors.len() {
        1 => "1 error".to_owned(),
        n => format!("{n} errors"),
    };
    let mut text = format!("invalid config file {} ({count})", path.display());
    for error in errors {
        text.push_str("\n  ");
        text.push_str(&error.to_string());
    }
    text
}

/// Why an edit was refused; the file and its typed view are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// There is no runner at that index.
    #[error("no runner at index {index} in {}", path.display())]
    NoSuchRunner {
        /// The config file.
        path: PathBuf,
        /// The index asked for.
        index: usize,
    },
    /// The edited config would not load again.
    #[error("edit would make {} invalid", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The problems of the edited text.
        #[source]
        source: Box<LoadError>,
    },
}

impl ConfigFile {
    /// Loads `path`, expanding `$VAR`s from the process environment.
    ///
    /// A missing file loads as an empty config, like the official runner; [`Self::existed`]
    /// tells the two apart.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, LoadError> {
        Self::load_with_env(path, process_env)
    }

    /// Loads `path`, looking `$VAR`s up with `env`.
    pub fn load_with_env(path: impl Into<PathBuf>, env: EnvLookup) -> Result<Self, LoadError> {
        let path = path.into();
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_text(path, true, &text, env),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Self::from_text(path, false, "", env)
            }
            Err(source) => Err(LoadError::Read { path, source }),
        }
    }

    /// Reads config text that claims to come from `path`, without touching the file system.
    pub fn parse(path: impl Into<PathBuf>, text: &str, env: EnvLookup) -> Result<Self, LoadError> {
        Self::from_text(path.into(), true, text, env)
    }

    fn from_text(
        path: PathBuf,
        existed: bool,
        text: &str,
        env: EnvLookup,
    ) -> Result<Self, LoadError> {
        let Parsed {
            config,
            warnings,
            document,
        } = parse(&path, text, env).map_err(|failure| LoadError::new(&path, failure))?;
        let crlf = text.contains("\r\n");
        Ok(Self {
            path,
            existed,
            text: text.to_owned(),
            document,
            config,
            warnings,
            env,
            crlf,
        })
    }

    /// The file this config belongs to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file existed when loaded (or has been saved since).
    pub fn existed(&self) -> bool {
        self.existed
    }

    /// The typed, validated config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Problems that did not stop loading (unknown keys, kept in the file).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Logs each warning at `warn` level (what `run` does after loading).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!(message = "Problem in config file.", %warning);
        }
    }

    /// The text [`Self::save`] would write: the file as read until an edit changes it.
    pub fn contents(&self) -> &str {
        &self.text
    }

    /// Appends a `[[runners]]` entry in the official layout and returns its index.
    ///
    /// A file with no settings yet first gets `concurrent = 1`, `check_interval = 0`,
    /// `shutdown_timeout = 0` and `[session_server] session_timeout = 1800`, like the official
    /// `register`.
    pub fn add_runner(&mut self, runner: &NewRunner) -> Result<usize, EditError> {
        let has_settings = !self.document.as_table().is_empty();
        let text = edit::append_runner(&self.document.to_string(), has_settings, runner);
        self.replace(text)?;
        Ok(self.config.runners.len().saturating_sub(1))
    }

    /// Removes the runner at `index`, with the comments attached to it.
    pub fn remove_runner(&mut self, index: usize) -> Result<(), EditError> {
        let mut document = self.document.clone();
        edit::remove_runner(&mut document, index).map_err(|NoSuchRunner| self.no_runner(index))?;
        self.replace(document.to_string())
    }

    /// Stores a rotated token and its timestamps (`expires_at` `None`: never expires).
    pub fn set_runner_token(
        &mut self,
        index: usize,
        token: &RunnerToken,
        obtained_at: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(), EditError> {
        let mut document = self.document.clone();
        edit::set_runner_token(&mut document, index, token, obtained_at, expires_at)
            .map_err(|NoSuchRunner| self.no_runner(index))?;
        self.replace(document.to_string())
    }

    /// Writes the file atomically with mode 0600, creating its directory (0700) if needed.
    pub fn save(&mut self) -> Result<(), WriteError> {
        write_private(&self.path, self.contents().as_bytes())?;
        self.existed = true;
        tracing::debug!(message = "Saved config file.", path = %self.path.display());
        Ok(())
    }

    fn no_runner(&self, index: usize) -> EditError {
        EditError::NoSuchRunner {
            path: self.path.clone(),
            index,
        }
    }

    /// Accepts edited text only if it loads; otherwise nothing changes.
    fn replace(&mut self, text: String) -> Result<(), EditError> {
        // The document writes `\n`; give a CRLF file its line endings back.
        let text = if self.crlf {
            text.replace("\r\n", "\n").replace('\n', "\r\n")
        } else {
            text
        };
        let Parsed {
            config,
            warnings,
            document,
        } = parse(&self.path, &text, self.env).map_err(|failure| EditError::Invalid {
            path: self.path.clone(),
            source: Box::new(LoadError::new(&self.path, failure)),
        })?;
        self.text = text;
        self.config = config;
        self.warnings = warnings;
        self.document = document;
        Ok(())
    }
}
