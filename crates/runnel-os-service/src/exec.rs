//! The one place manager tools (`systemctl`, `rc-service`, `launchctl`, …) are run.
//!
//! Tools are looked up on the host's `PATH` first, so a missing tool is reported by name, and
//! their output is captured so a failure can quote the tool's own explanation. Nothing here
//! interprets output; callers decide what a status means.

use std::process::{Command, Output, Stdio};

use crate::host::Host;
use crate::{ManagerKind, Operation, ServiceError};

/// Who is running tools, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Runner<'a> {
    pub(crate) host: &'a Host,
    pub(crate) kind: ManagerKind,
    pub(crate) name: &'a str,
    pub(crate) operation: Operation,
}

impl Runner<'_> {
    /// Whether `tool` is on `PATH`.
    pub(crate) fn has(&self, tool: &str) -> bool {
        self.host.find_tool(tool).is_some()
    }

    /// Runs `tool args…` and returns its output whatever the exit status.
    pub(crate) fn output(&self, tool: &'static str, args: &[&str]) -> Result<Output, ServiceError> {
        let program = self
            .host
            .find_tool(tool)
            .ok_or_else(|| ServiceError::ToolMissing {
                operation: self.operation,
                kind: self.kind,
                name: self.name.to_owned(),
                tool,
            })?;
        let command = command_line(tool, args);
        tracing::debug!(message = "Running service manager command.", command = %command);
        #[allow(clippy::disallowed_methods)] // this module is the process helper for the crate
        let output = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ServiceError::Spawn {
                command: command.clone(),
                source,
            })?;
        Ok(output)
    }

    /// Runs `tool args…` and fails unless it exits successfully.
    pub(crate) fn run(&self, tool: &'static str, args: &[&str]) -> Result<Output, ServiceError> {
        let output = self.output(tool, args)?;
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let detail = if stderr.is_empty() {
            stdout.trim()
        } else {
            stderr
        };
        Err(ServiceError::CommandFailed {
            command: command_line(tool, args),
            status: output.status.to_string(),
            stderr: if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            },
        })
    }
}

fn command_line(tool: &str, args: &[&str]) -> String {
    std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
