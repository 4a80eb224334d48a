//! Problems found in a config file, each pinned to a key path and a line and column.
//!
//! A [`Diagnostic`] is plain data: the reading stage produces them, `lint` prints them and `run`
//! logs them. This module does not decide what is an error; it only locates and renders.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used: loading fails.
    Error,
    /// The file loads, but something looks wrong (an unknown key, kept as written).
    Warning,
}

/// A 1-based line and column (the column counts characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number, starting at 1.
    pub column: usize,
}

/// One problem in a config file.
///
/// Renders as `config.toml:12:3: runners[0].executr: unknown key (kept)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Whether this problem stops the file from loading.
    pub severity: Severity,
    /// The file the problem is in.
    pub file: PathBuf,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// The key path, such as `runners[1].docker.image`; empty for problems with the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The text of a config file with its name, able to turn byte offsets into positions.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text }
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// The line and column of a byte offset; offsets past the end point just after the text.
    pub(crate) fn position(&self, offset: usize) -> Position {
        let offset = floor_char_boundary(self.text, offset);
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    pub(crate) fn diagnostic(
        &self,
        severity: Severity,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            position: span.map(|span| self.position(span.start)),
            key: key.into(),
            message: message.into(),
        }
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let source = Source::new(Path::new("c.toml"), "a = 1\nbé = \"x\"\n");
        assert_eq!(source.position(0), Position { line: 1, column: 1 });
        assert_eq!(source.position(6), Position { line: 2, column: 1 });
        // "é" is two bytes; the `=` at byte 10 is the fourth character of its line.
        assert_eq!(source.position(10), Position { line: 2, column: 4 });
        assert_eq!(source.position(1000), Position { line: 3, column: 1 });
    }

    #[test]
    fn renders_file_position_key_and_message() {
        let source = Source::new(Path::new("config.toml"), "x\ny\n  z");
        let diagnostic = source.diagnostic(
            Severity::Warning,
            Some(6..7),
            "runners[0].executr",
            "unknown key",
        );
        assert_eq!(
            diagnostic.to_string(),
            "config.toml:3:3: runners[0].executr: unknown key"
        );
    }
}
