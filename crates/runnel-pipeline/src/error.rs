//! Errors and warnings of loading and evaluating a pipeline.
//!
//! Every error that comes from the YAML names the file, line and column ([`Location`]);
//! warnings ([`Warning`]) do the same for keys that are understood but not supported locally.
//! This module does not decide *when* something is an error: `load` and `eval` do.

use std::fmt;

use crate::yaml::Loc;

/// A place in a CI file: path, 1-based line, 1-based column.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a pipeline could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A CI file (the root or an include) could not be read.
    #[error("read CI file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file named by `include: local` could not be read.
    #[error("{at}: read local include {path}")]
    Include {
        at: Location,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An include outside the project (remote, project, template, component) could not be
    /// read: names the include, what was tried and how to make it available.
    #[error("{at}: cannot include {include}: tried {tried}; {hint}")]
    External {
        at: Location,
        include: String,
        tried: String,
        hint: String,
    },
    /// The text is not valid YAML.
    #[error("parse YAML at {at}: {message}")]
    Yaml { at: Location, message: String },
    /// The YAML is valid but is not a valid GitLab CI configuration.
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    /// A `rules:if`, `only:variables` or `workflow:rules` expression is malformed.
    #[error("{at}: invalid expression `{expression}`: {message}")]
    Expression {
        at: Location,
        expression: String,
        message: String,
    },
    /// The evaluated pipeline is inconsistent (for example a non-optional `needs` of a job that
    /// rules left out).
    #[error("evaluate pipeline: {message}")]
    Evaluate { message: String },
}

/// `text`, cut to its first 120 characters with `…` when longer (for quoting input in errors).
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl PipelineError {
    pub(crate) fn invalid(loc: &Loc, message: String) -> Self {
        Self::Invalid {
            at: loc.location(),
            message,
        }
    }
}

/// Something the loader understood but will not honour locally, or ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub at: Location,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}
