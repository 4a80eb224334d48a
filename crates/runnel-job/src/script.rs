//! Bash/sh script generation: a line writer for stage bodies and the wrapper that turns a body
//! into the complete script fed on stdin (reference section 4.5).
//!
//! The writer knows shell syntax and the runner's conventions (colours, `$ cmd` echo, exports,
//! `GITLAB_ENV`), not which stage it writes: the stage bodies live in `stages`. Pwsh is not
//! supported.

use runnel_types::Variable;

use crate::escape::{Quoting, double_quote};
use crate::options::Shell;

pub(crate) const ANSI_BOLD_GREEN: &str = "\x1b[32;1m";
pub(crate) const ANSI_RESET: &str = "\x1b[0;m";
pub(crate) const ANSI_CLEAR: &str = "\x1b[0K";

/// How the final script is wrapped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScriptStyle {
    pub(crate) shell: Shell,
    pub(crate) quoting: Quoting,
    /// `FF_ENABLE_BASH_EXIT_CODE_CHECK`.
    pub(crate) exit_code_check: bool,
    /// `FF_USE_LEGACY_BASH_EVAL`.
    pub(crate) legacy_eval: bool,
    /// `CI_DEBUG_TRACE`.
    pub(crate) xtrace: bool,
    /// Jobs share the host (shell executor): the temp dir is private (0700, never a symlink)
    /// and file variables are 0600 (review M4, M5).
    pub(crate) private_temp: bool,
    /// [`crate::PlanOptions::stage_subshell`]: the executor already runs the script in a
    /// subshell of its own with stdin from `/dev/null`, so the body is evaluated directly.
    pub(crate) stage_subshell: bool,
    /// [`crate::PlanOptions::temp_dir_by_executor`].
    pub(crate) temp_dir_by_executor: bool,
}

/// Accumulates the body of one stage script.
pub(crate) struct ScriptWriter {
    style: ScriptStyle,
    body: String,
    indent: usize,
    /// Where each top-level command of the body starts ([`ScriptWriter::inline`]).
    statements: Vec<usize>,
    /// Whether every line so far is housekeeping that leaves the shell running it as it was
    /// ([`ScriptWriter::plain`]).
    plain: bool,
}

impl ScriptWriter {
    pub(crate) fn new(style: ScriptStyle) -> Self {
        Self {
            style,
            body: String::new(),
            indent: 0,
            statements: Vec::new(),
            plain: true,
        }
    }

    pub(crate) fn quote(&self, text: &str) -> String {
        self.style.quoting.quote(text)
    }

    /// Writes one raw line: anything, user commands included.
    pub(crate) fn line(&mut self, text: &str) {
        self.plain = false;
        self.push(text);
    }

    /// Writes one line of Runnel's own housekeeping that leaves the shell running it as it
    /// was: it sets no variable, option, trap, function or alias, does not change directory,
    /// reads nothing from stdin and does not `exit`. A stage written only with such lines can
    /// run in a shell session's own shell ([`ScriptWriter::inline`]).
    pub(crate) fn plain(&mut self, text: &str) {
        self.push(text);
    }

    fn push(&mut self, text: &str) {
        if self.indent == 0 {
            self.statements.push(self.body.len());
        }
        self.push_continued(text);
    }

    /// A line that continues the command above it (inside a block, or the block's end).
    fn push_continued(&mut self, text: &str) {
        for _ in 0..self.indent {
            self.body.push_str("  ");
        }
        self.body.push_str(text);
        self.body.push('\n');
    }

    /// Opens an indented block after `header` (e.g. `if …; then`).
    pub(crate) fn open(&mut self, header: &str) {
        self.line(header);
        self.indent += 1;
    }

    /// [`Self::open`] with a header that is [`Self::plain`] (a test of the file system).
    pub(crate) fn open_plain(&mut self, header: &str) {
        self.plain(header);
        self.indent += 1;
    }

    /// Switches an open `if` block to its `else` branch.
    pub(crate) fn else_branch(&mut self) {
        self.indent = self.indent.saturating_sub(1);
        self.push_continued("else");
        self.indent += 1;
    }

    /// Closes a block with `footer` (e.g. `fi`).
    pub(crate) fn close(&mut self, footer: &str) {
        self.indent = self.indent.saturating_sub(1);
        self.push_continued(footer);
    }

    /// `_runner_exit_code=$?; …` after a command, when `FF_ENABLE_BASH_EXIT_CODE_CHECK` is on.
    pub(crate) fn check_for_errors(&mut self) {
        if self.style.exit_code_check {
            self.line(
                "_runner_exit_code=$?; if [ $_runner_exit_code -ne 0 ]; then exit $_runner_exit_code; fi",
            );
        }
    }

    /// A command whose name and arguments are all quoted.
    pub(crate) fn command(&mut self, name: &str, args: &[&str]) {
        let line = self.command_line(name, args);
        self.line(&line);
        self.check_for_errors();
    }

    pub(crate) fn command_line(&self, name: &str, args: &[&str]) -> String {
        let mut line = self.quote(name);
        for arg in args {
            line.push(' ');
            line.push_str(&self.quote(arg));
        }
        line
    }

    pub(crate) fn cd(&mut self, dir: &str) {
        self.command("cd", &[dir]);
    }

    /// `mkdir -p <dir>`, skipped when the directory exists (a test is a builtin; `mkdir` is a
    /// process, and most stages find their directories already made).
    pub(crate) fn mkdir(&mut self, dir: &str) {
        let dir = self.quote(dir);
        self.plain(&format!("test -d {dir} || mkdir -p {dir}"));
        self.check_for_errors();
    }

    /// `rm -r -f <dir>`, preceded by a `chmod` when `set_permissions` is on.
    pub(crate) fn rm_dir(&mut self, dir: &str, set_permissions: bool) {
        if set_permissions {
            self.open_plain(&format!("if [ -d {} ]; then", double_quote(dir)));
            let chmod = self.command_line("chmod", &["-R", "u+rwX", dir]);
            self.plain(&chmod);
            self.check_for_errors();
            self.close("fi");
        }
        let rm = self.command_line("rm", &["-r", "-f", dir]);
        self.plain(&rm);
        self.check_for_errors();
    }

    /// `rm -f <file>`, run only when something is there to remove.
    pub(crate) fn rm_file(&mut self, file: &str) {
        let file = self.quote(file);
        self.remove_existing(&file);
    }

    /// Like [`Self::rm_file`], but the path is double-quoted, so `$VAR` in it still expands.
    pub(crate) fn rm_file_arg_expand(&mut self, file: &str) {
        self.remove_existing(&double_quote(file));
    }

    /// `rm -f <quoted>` behind a test for the file (or a dangling symlink): the same effect,
    /// without starting a process for the files a fresh job does not have.
    fn remove_existing(&mut self, quoted: &str) {
        self.plain(&format!(
            "if [ -e {quoted} ] || [ -L {quoted} ]; then rm -f {quoted}; fi"
        ));
        self.check_for_errors();
    }

    fn echo_colored(&mut self, color: &str, text: &str) {
        let line = format!("echo {}", self.quote(&format!("{color}{text}{ANSI_RESET}")));
        self.plain(&line);
    }

    /// A bold green message.
    pub(crate) fn notice(&mut self, text: &str) {
        self.echo_colored(ANSI_BOLD_GREEN, text);
    }

    pub(crate) fn empty_line(&mut self) {
        self.plain("echo");
    }

    /// `export KEY=value`, or for file variables the file write and `export KEY=<path>`.
    pub(crate) fn variable(&mut self, variable: &Variable, temp_dir: &str) {
        let key = self.quote(&variable.key);
        if variable.file {
            let path = format!("{temp_dir}/{}", variable.key);
            let value = self.quote(&variable.value);
            self.temp_dir(temp_dir);
            let write = format!("printf '%s' {value} > {}", double_quote(&path));
            if self.style.private_temp {
                // Only the job's user may read a secret file (review M4).
                self.line(&format!("(umask 077 && {write})"));
            } else {
                self.line(&write);
            }
            self.line(&format!("export {key}={}", double_quote(&path)));
        } else {
            let value = self.quote(&variable.value);
            self.line(&format!("export {key}={value}"));
        }
    }

    /// Reads the dotenv file earlier stages wrote through `$GITLAB_ENV`.
    pub(crate) fn source_env(&mut self, env_file: &str, temp_dir: &str) {
        self.touch_env(env_file, temp_dir);
        self.line(&format!(
            "while read -r line; do export \"$line\"; done < {}",
            double_quote(env_file)
        ));
    }

    /// Makes the temp dir and the dotenv file behind `$GITLAB_ENV` if they are missing.
    pub(crate) fn touch_env(&mut self, env_file: &str, temp_dir: &str) {
        self.temp_dir(temp_dir);
        // `touch` without a process: creates the file if missing, keeps its contents.
        self.plain(&format!(": >> {}", double_quote(env_file)));
    }

    /// Creates the job's temp dir (the path is double-quoted, so `$VAR` in it still expands).
    /// With [`ScriptStyle::private_temp`] a symlink or non-directory planted there is removed
    /// (never followed) and the directory is made 0700 (review M5).
    pub(crate) fn temp_dir(&mut self, dir: &str) {
        let dir = double_quote(dir);
        if self.style.private_temp {
            self.plain(&format!(
                "if [ -L {dir} ] || {{ [ -e {dir} ] && [ ! -d {dir} ]; }}; then rm -f {dir}; fi"
            ));
            // Made 0700 when created; the cleanup stage removes it, so each job makes it anew.
            self.plain(&format!("test -d {dir} || (umask 077 && mkdir -p {dir})"));
        } else {
            self.plain(&format!("test -d {dir} || mkdir -p {dir}"));
        }
    }

    /// `printf` of a collapsed section start marker for `FF_SCRIPT_SECTIONS`.
    pub(crate) fn section_start(&mut self, id: &str, title: &str) {
        let title = self.quote(&format!("{ANSI_BOLD_GREEN}{title}{ANSI_RESET}"));
        self.line(&format!(
            "printf '%b\\n' section_start:$(date +%s):section_{id}[hide_duration=true,collapsed=true]\r{ANSI_CLEAR}{title}"
        ));
    }

    pub(crate) fn section_end(&mut self, id: &str) {
        self.line(&format!(
            "printf '%b\\n' section_end:$(date +%s):section_{id}\r{ANSI_CLEAR}"
        ));
    }

    /// The body as one list for a shell session to run in its own shell, without the
    /// subshell, traps and options of [`Self::finish`]: each top-level command runs only if
    /// the one before succeeded, and the list's status is the first failure's (or 0), as the
    /// full script's `errexit` gives. `None` unless every line is [`Self::plain`] and the style
    /// needs nothing only the full script has (`CI_DEBUG_TRACE`'s xtrace, the legacy `eval`).
    pub(crate) fn inline(&self) -> Option<String> {
        if !self.plain {
            return None;
        }
        self.inline_last()
    }

    /// [`Self::inline`] for the last stage a shell runs: nothing runs in that shell after it,
    /// so its lines need not leave the shell as they found it (exported variables reach
    /// nothing); they must still be Runnel's own (no `exit`, no stdin).
    pub(crate) fn inline_last(&self) -> Option<String> {
        if self.style.xtrace || self.style.legacy_eval {
            return None;
        }
        if self.statements.is_empty() {
            return Some(":\n".to_owned());
        }
        let mut out = String::with_capacity(self.body.len() + 8 * self.statements.len());
        let ends = self
            .statements
            .iter()
            .skip(1)
            .copied()
            .chain([self.body.len()]);
        for (index, (start, end)) in self.statements.iter().copied().zip(ends).enumerate() {
            out.push_str(if index == 0 { "{ " } else { "} && { " });
            // Each command ends with its line break; the brace closing it goes on the next
            // line, after a here-document's delimiter too.
            out.push_str(&self.body[start..end]);
        }
        out.push_str("}\n");
        Some(out)
    }

    /// The complete script: shebang, traps, shell options and the quoted body run by `eval`.
    pub(crate) fn finish(&self) -> String {
        let style = self.style;
        let mut out = format!("#!/usr/bin/env {}\n\n", style.shell.as_str());
        out.push_str("trap 'exit 1' TERM\n\n");
        if style.xtrace {
            out.push_str("set -o xtrace\n");
        }
        match style.shell {
            // Every bash has pipefail; asking `set -o` costs a subshell per stage.
            Shell::Bash => out.push_str("set -o pipefail; set -o errexit\n"),
            Shell::Sh => out.push_str(
                "case \"$(set -o)\" in *pipefail*) set -o pipefail;; esac; set -o errexit\n",
            ),
        }
        out.push_str("set +o noclobber\n");
        let body = style.quoting.quote(&self.body);
        if style.legacy_eval {
            out.push_str(&format!(": | eval {body}\n"));
        } else if style.stage_subshell {
            // The same commands as below without the subshell's fork: the executor's subshell
            // (stdin `/dev/null`) already keeps variables, `cd`, traps and `exit` in the stage,
            // and the TERM trap is still set right before the body (also in the xtrace output).
            out.push_str(&format!("trap 'exit 1' TERM; eval {body}\n"));
        } else {
            out.push_str(&format!("(trap 'exit 1' TERM; eval {body}) < /dev/null\n"));
        }
        out.push_str("exit 0\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn style() -> ScriptStyle {
        ScriptStyle {
            shell: Shell::Bash,
            quoting: Quoting::AnsiC,
            exit_code_check: false,
            legacy_eval: false,
            xtrace: false,
            private_temp: true,
            stage_subshell: true,
            temp_dir_by_executor: true,
        }
    }

    #[test]
    fn plain_lines_join_into_one_list_that_stops_at_the_first_failure() {
        let mut w = ScriptWriter::new(style());
        w.notice("hello");
        w.rm_dir("/tmp/x y", true);
        w.plain("git credential reject <<'END' || true\nurl=https://h\nEND");
        w.mkdir("/tmp/p");
        let inline = w.inline().expect("all plain");
        insta::assert_snapshot!(inline, @r#"
        { echo $'\x1b[32;1mhello\x1b[0;m'
        } && { if [ -d "/tmp/x y" ]; then
          chmod -R $'u+rwX' $'/tmp/x y'
        fi
        } && { rm -r -f $'/tmp/x y'
        } && { git credential reject <<'END' || true
        url=https://h
        END
        } && { test -d /tmp/p || mkdir -p /tmp/p
        }
        "#);
        assert_eq!(ScriptWriter::new(style()).inline().as_deref(), Some(":\n"));
    }

    #[test]
    fn anything_else_has_no_inline_form() {
        let writes: [fn(&mut ScriptWriter); 4] = [
            |w| w.line("echo user command"),
            |w| w.cd("/tmp"),
            |w| w.variable(&Variable::new("KEY", "value"), "/tmp/t"),
            |w| w.source_env("/tmp/t/env", "/tmp/t"),
        ];
        for write in writes {
            let mut w = ScriptWriter::new(style());
            w.notice("housekeeping");
            write(&mut w);
            assert_eq!(w.inline(), None);
        }
        for style in [
            ScriptStyle {
                xtrace: true,
                ..style()
            },
            ScriptStyle {
                legacy_eval: true,
                ..style()
            },
            ScriptStyle {
                exit_code_check: true,
                ..style()
            },
        ] {
            let mut w = ScriptWriter::new(style);
            w.mkdir("/tmp/p");
            assert_eq!(w.inline(), None, "{style:?}");
        }
    }
}
