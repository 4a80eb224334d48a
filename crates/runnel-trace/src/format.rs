//! The exact bytes of the runner's own log lines and section markers, as the official
//! runner writes them.
//!
//! Pure functions: the unix time of a section marker is an argument, never read from a
//! clock. Nothing here writes to a log; [`crate::JobTrace`] does that.

/// Erases to the end of the line (`ANSI_CLEAR`).
pub const ANSI_CLEAR: &str = "\x1b[0K";
/// Resets all attributes (`ANSI_RESET`).
pub const ANSI_RESET: &str = "\x1b[0;m";
/// Bold green, for [`info`].
pub const ANSI_BOLD_GREEN: &str = "\x1b[32;1m";
/// Yellow, for [`warning`].
pub const ANSI_YELLOW: &str = "\x1b[0;33m";
/// Bold yellow, for the output-limit notice.
pub const ANSI_BOLD_YELLOW: &str = "\x1b[33;1m";
/// Bold red, for [`error`].
pub const ANSI_BOLD_RED: &str = "\x1b[31;1m";
/// Bold cyan, for section descriptions.
pub const ANSI_BOLD_CYAN: &str = "\x1b[36;1m";

/// A plain runner line: `\x1b[0K<message>\x1b[0;m\n`.
pub fn println(message: &str) -> String {
    line(ANSI_CLEAR, message)
}

/// An informational line in bold green.
pub fn info(message: &str) -> String {
    line(ANSI_BOLD_GREEN, message)
}

/// A `WARNING: ` line in yellow.
pub fn warning(message: &str) -> String {
    line(&format!("{ANSI_YELLOW}WARNING: "), message)
}

/// An `ERROR: ` line in bold red.
pub fn error(message: &str) -> String {
    line(&format!("{ANSI_BOLD_RED}ERROR: "), message)
}

fn line(prefix: &str, message: &str) -> String {
    format!("{prefix}{message}{ANSI_RESET}\n")
}

/// Options of a section, rendered after its name in the start marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SectionOptions {
    /// Whether GitLab shows the section collapsed (`[collapsed=true]`).
    pub collapsed: bool,
}

/// `section_start:<unix>:<name>[options]\r\x1b[0K`.
pub fn section_start_marker(name: &str, unix_time: i64, options: SectionOptions) -> String {
    let options = if options.collapsed {
        "[collapsed=true]"
    } else {
        ""
    };
    format!("section_start:{unix_time}:{name}{options}\r{ANSI_CLEAR}")
}

/// The header line shown for a section: `\x1b[0K\x1b[36;1m<description>\x1b[0;m\n`.
pub fn section_header(description: &str) -> String {
    println(&format!("{ANSI_BOLD_CYAN}{description}"))
}

/// `section_end:<unix>:<name>\r\x1b[0K`.
pub fn section_end_marker(name: &str, unix_time: i64) -> String {
    format!("section_end:{unix_time}:{name}\r{ANSI_CLEAR}")
}

/// The notice stored once when the output limit is reached.
pub fn limit_exceeded(limit_bytes: usize) -> String {
    format!(
        "\n{ANSI_BOLD_YELLOW}Job's log exceeded limit of {limit_bytes} bytes.\n\
         Job execution will continue but no more output will be collected.{ANSI_RESET}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_lines() {
        insta::assert_debug_snapshot!([
            println("plain"),
            info("Job succeeded"),
            warning("careful"),
            error("Job failed: exit code 1"),
        ]);
    }

    #[test]
    fn section_markers() {
        insta::assert_debug_snapshot!([
            section_start_marker("prepare_executor", 1_767_261_600, SectionOptions::default()),
            section_start_marker(
                "step_script",
                1_767_261_601,
                SectionOptions { collapsed: true }
            ),
            section_header("Preparing the \"shell\" executor"),
            section_end_marker("step_script", 1_767_261_602),
        ]);
    }

    #[test]
    fn limit_notice() {
        insta::assert_debug_snapshot!(limit_exceeded(4_194_304));
    }
}
