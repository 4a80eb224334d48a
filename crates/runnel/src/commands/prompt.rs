//! Asking the user for missing values (interactive `register`).
//!
//! Values given by flag or environment variable are never asked for, as in the official runner.
//! In non-interactive mode a missing required value is an error naming the flag to set.

use std::io::{BufRead, Write};

use anyhow::bail;

/// Reads answers line by line from stdin.
#[derive(Debug)]
pub(crate) struct Prompter<R> {
    input: R,
    interactive: bool,
}

/// One question.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Question<'a> {
    pub(crate) text: &'a str,
    /// The flag that provides the value, for the non-interactive error.
    pub(crate) flag: &'a str,
    /// Used when the answer is empty.
    pub(crate) default: Option<&'a str>,
    pub(crate) required: bool,
}

impl<R: BufRead> Prompter<R> {
    pub(crate) fn new(input: R, interactive: bool) -> Self {
        Self { input, interactive }
    }

    /// `given` if set, else the user's answer (or the default).
    pub(crate) fn ask(
        &mut self,
        given: Option<&str>,
        question: Question<'_>,
    ) -> anyhow::Result<String> {
        if let Some(value) = given.filter(|v| !v.is_empty()) {
            return Ok(value.to_owned());
        }
        if !self.interactive {
            return match question.default {
                Some(default) => Ok(default.to_owned()),
                None if question.required => {
                    bail!(
                        "missing value for {} (required in non-interactive mode)",
                        question.flag
                    )
                }
                None => Ok(String::new()),
            };
        }
        loop {
            let mut out = std::io::stdout().lock();
            match question.default {
                Some(default) if !default.is_empty() => {
                    writeln!(out, "{}\n[{default}]: ", question.text)?
                }
                _ => writeln!(out, "{}", question.text)?,
            }
            out.flush()?;
            let mut line = String::new();
            if self.input.read_line(&mut line)? == 0 {
                bail!("no answer for {} (standard input closed)", question.flag);
            }
            let answer = line.trim();
            if !answer.is_empty() {
                return Ok(answer.to_owned());
            }
            if let Some(default) = question.default {
                return Ok(default.to_owned());
            }
            if !question.required {
                return Ok(String::new());
            }
        }
    }
}
