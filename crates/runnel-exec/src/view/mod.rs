//! What a person sees of a local pipeline run.
//!
//! Two [`Reporter`](crate::Reporter)s render the scheduler's [`Event`]s: [`PlainReporter`]
//! writes prefixed lines (for pipes, files, CI logs and `--plain`), [`LiveReporter`] keeps a
//! redrawn block of job states at the bottom of a terminal. Both fold events into the same
//! [`PipelineState`] and end with the same [`render_summary`] table. Everything that decides
//! *what* is shown is a pure function of that state (and of a clock reading passed in), so it
//! is snapshot-tested without a terminal; the reporters only write.
//!
//! Log bytes arrive exactly as the job trace holds them: split anywhere (even inside a UTF-8
//! sequence), with ANSI colours, `\r` progress updates and GitLab section markers
//! (`section_start:<unix time>:<name>[options]\r\x1b[0K`). [`LineBuffer`] reassembles lines
//! per job and [`clean_line`] turns one into what a person should read.

mod live;
mod plain;
mod summary;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use console::Style;

use crate::event::{Event, JobResult, JobStatus};

pub use live::{LiveReporter, render_frame};
pub use plain::PlainReporter;
pub use summary::render_summary;

/// The reporter for standard output: the live view on a terminal unless `plain`, prefixed
/// lines otherwise. Colours follow the terminal and the `NO_COLOR`/`CLICOLOR` conventions
/// (`console::colors_enabled`), so a pipe or a file gets plain text.
pub fn stdout_reporter(plain: bool) -> Box<dyn crate::Reporter> {
    let colour = console::colors_enabled();
    if !plain && console::Term::stdout().is_term() {
        Box::new(LiveReporter::stdout(colour))
    } else {
        Box::new(PlainReporter::new(std::io::stdout(), colour))
    }
}

/// Whether output to stdout should be coloured (a terminal, `NO_COLOR`/`CLICOLOR*` honoured).
pub fn colours_enabled() -> bool {
    console::colors_enabled()
}

/// How many lines of a running job the live view keeps.
const TAIL_LINES: usize = 3;

/// A line without a newline is cut after this many bytes, so a child that never prints one
/// cannot grow a buffer without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Reassembles one job's log bytes into lines.
///
/// Bytes may be split anywhere; a line is decoded only once its `\n` arrived, so a UTF-8
/// sequence split between two writes is decoded whole. Invalid UTF-8 becomes U+FFFD.
#[derive(Clone, Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Appends `bytes` and calls `line` with every line they complete (without the `\n`).
    pub fn push(&mut self, bytes: &[u8], mut line: impl FnMut(&str)) {
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..pos]);
            line(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() > MAX_LINE_BYTES {
            // Cut at a character boundary at or before the limit.
            let cut = match std::str::from_utf8(&self.pending[..MAX_LINE_BYTES]) {
                Ok(_) => MAX_LINE_BYTES,
                Err(e) if e.valid_up_to() > 0 => e.valid_up_to(),
                Err(_) => MAX_LINE_BYTES,
            };
            let head: Vec<u8> = self.pending.drain(..cut).collect();
            line(&String::from_utf8_lossy(&head));
        }
    }

    /// Calls `line` with the unterminated rest, if any, and empties the buffer.
    pub fn flush(&mut self, mut line: impl FnMut(&str)) {
        if !self.pending.is_empty() {
            line(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }

    /// The unterminated rest as text so far (a progress line being redrawn with `\r`).
    pub fn partial(&self) -> String {
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s,
            // An incomplete sequence at the end: show what is complete.
            Err(e) => std::str::from_utf8(&self.pending[..e.valid_up_to()]).unwrap_or_default(),
        };
        valid.to_owned()
    }
}

/// What a person should read of one log line, or `None` for a line that only carried section
/// markers.
///
/// GitLab section markers are removed (the header text that follows a `section_start` stays),
/// a `\r` keeps only the text after it (the last state of a progress line), and escape
/// sequences and other control characters are stripped; with `keep_ansi`, colours (SGR,
/// `CSI … m`) are kept and nothing else (review L10: titles, clipboard writes, DCS and cursor
/// movement from a job must not reach the user's terminal).
pub fn clean_line(raw: &str, keep_ansi: bool) -> Option<String> {
    let raw = strip_trace_prefix(raw);
    let raw = raw.strip_suffix('\r').unwrap_or(raw);
    // Most lines have neither markers, carriage returns nor other controls.
    if !raw.chars().any(|c| c.is_control() && c != '\t') {
        return Some(raw.to_owned());
    }
    if keep_ansi && !raw.contains('\r') {
        return Some(filter_escapes(raw, true).into_owned());
    }
    let (text, had_marker) = strip_section_markers(raw);
    // The last non-empty segment after a carriage return is what a terminal ends up showing.
    let text = text
        .rsplit('\r')
        .find(|s| !strip_ansi(s).trim().is_empty())
        .unwrap_or_default();
    let visible = strip_ansi(text);
    if had_marker && visible.trim().is_empty() {
        return None;
    }
    Some(if keep_ansi {
        filter_escapes(text, true).into_owned()
    } else {
        visible.into_owned()
    })
}

/// A line of a timestamped trace without its prefix: the RFC 3339 UTC time, a space, the
/// two-digit stream number, `O` or `E`, and ` ` (a new line) or `+` (a continued line), as in
/// `2026-11-28T05:00:18.234321Z 00O+`. Other lines come back unchanged.
pub fn strip_trace_prefix(line: &str) -> &str {
    let bytes = line.as_bytes();
    let head = line.get(..40).unwrap_or(line);
    let Some(zone) = head.find("Z ") else {
        return line;
    };
    let looks_like_time = zone >= 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[..4].iter().all(u8::is_ascii_digit);
    let tag = zone + 2;
    let tagged = bytes.len() >= tag + 4
        && bytes[tag].is_ascii_hexdigit()
        && bytes[tag + 1].is_ascii_hexdigit()
        && matches!(bytes[tag + 2], b'O' | b'E')
        && matches!(bytes[tag + 3], b' ' | b'+');
    if looks_like_time && tagged {
        &line[tag + 4..]
    } else {
        line
    }
}

/// `text` without ANSI escape sequences (CSI such as colours and erases, OSC such as titles and
/// links, DCS and other strings, and two-byte escapes) and other control characters but tabs.
pub fn strip_ansi(text: &str) -> std::borrow::Cow<'_, str> {
    filter_escapes(text, false)
}

/// `text` without escape sequences and control characters (tabs stay), except colours (SGR:
/// `CSI` with digits, `;` and `:` only, ending in `m`) when `keep_sgr`.
fn filter_escapes(text: &str, keep_sgr: bool) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\t' || !c.is_control() {
            out.push(c);
            continue;
        }
        // C1 controls (`U+009B` is a CSI to some terminals) and C0 controls but ESC go.
        if c != '\x1b' {
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates, then one final byte in `@`..=`~`.
            Some('[') => {
                let mut sequence = String::from("\x1b[");
                let mut complete = false;
                for c in chars.by_ref() {
                    sequence.push(c);
                    if ('@'..='~').contains(&c) {
                        complete = true;
                        break;
                    }
                }
                let colour = complete
                    && sequence.ends_with('m')
                    && sequence[2..sequence.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ';' || c == ':');
                if keep_sgr && colour {
                    out.push_str(&sequence);
                }
            }
            // DCS, SOS, PM and APC: strings up to ST (`ESC \`).
            Some('P' | 'X' | '^' | '_') => {
                while let Some(c) = chars.next() {
                    if c == '\x1b' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST (`ESC \`).
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // nF escapes (`ESC ( B`): intermediates, then one final byte.
            Some(c) if (' '..='/').contains(&c) => {
                while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                chars.next();
            }
            _ => {}
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Removes every `section_start:…\r\x1b[0K` and `section_end:…\r\x1b[0K` from `line`.
fn strip_section_markers(line: &str) -> (String, bool) {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut found = false;
    loop {
        let next = ["section_start:", "section_end:"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min();
        let Some(start) = next else { break };
        let after = &rest[start..];
        // A marker is `section_<kind>:<digits>:<name>` up to a `\r` on the same line.
        let Some(cr) = after.find('\r') else { break };
        let body = &after[..cr];
        let mut parts = body.splitn(3, ':');
        let valid = parts.next().is_some()
            && parts
                .next()
                .is_some_and(|ts| !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|name| !name.is_empty() && !name.contains(char::is_whitespace));
        if !valid {
            out.push_str(&rest[..start + 1]);
            rest = &rest[start + 1..];
            continue;
        }
        found = true;
        out.push_str(&rest[..start]);
        let tail = &after[cr + 1..];
        rest = tail.strip_prefix("\x1b[0K").unwrap_or(tail);
    }
    out.push_str(rest);
    (out, found)
}

/// `0.4s`, `12.3s`, `2m 05s`, `1h 02m`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// One job as the views know it.
#[derive(Clone, Debug)]
pub struct JobView {
    /// The instance name (`test 1/3`).
    pub name: String,
    /// Its stage (empty for a job no `PipelineStarted` named).
    pub stage: String,
    /// Where it is now.
    pub status: JobStatus,
    /// Why the job will not run, when the plan said so before the run.
    pub skip_reason: Option<String>,
    /// When `JobStarted` arrived.
    pub started: Option<Instant>,
    /// How it ended, once `JobFinished` arrived.
    pub result: Option<JobResult>,
    /// The last complete lines of its log, cleaned and without colours (for the live view).
    pub tail: VecDeque<String>,
    lines: LineBuffer,
}

impl JobView {
    fn new(name: String, stage: String, skip_reason: Option<String>) -> Self {
        let status = if skip_reason.is_some() {
            JobStatus::Skipped
        } else {
            JobStatus::Pending
        };
        Self {
            name,
            stage,
            status,
            skip_reason,
            started: None,
            result: None,
            tail: VecDeque::new(),
            lines: LineBuffer::default(),
        }
    }

    /// The line being written right now (a progress line), cleaned, if it has text.
    pub fn partial_line(&self) -> Option<String> {
        clean_line(&self.lines.partial(), false).filter(|l| !l.trim().is_empty())
    }

    /// How long the job ran: its final duration, or the time since it started.
    pub fn elapsed(&self, now: Instant) -> Option<Duration> {
        match (&self.result, self.started) {
            (Some(r), _) if r.status != JobStatus::Skipped => Some(r.duration),
            (None, Some(started)) => Some(now.saturating_duration_since(started)),
            _ => None,
        }
    }
}

/// How the pipeline ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineEnd {
    /// Whether the pipeline passed.
    pub success: bool,
    /// How long the whole run took.
    pub duration: Duration,
}

/// Everything the views know, folded from the events.
#[derive(Clone, Debug, Default)]
pub struct PipelineState {
    /// Every stage of the pipeline, in order.
    pub stages: Vec<String>,
    /// In the order of `PipelineStarted` (stage order); jobs first named by a later event are
    /// appended.
    pub jobs: Vec<JobView>,
    /// When `PipelineStarted` arrived.
    pub started: Option<Instant>,
    /// Set by `PipelineFinished`.
    pub finished: Option<PipelineEnd>,
}

impl PipelineState {
    /// Folds one event in; `now` is when it arrived.
    pub fn apply(&mut self, event: &Event, now: Instant) {
        match event {
            Event::PipelineStarted { stages, jobs } => {
                self.stages.clone_from(stages);
                self.started = Some(now);
                self.jobs = jobs
                    .iter()
                    .map(|j| JobView::new(j.name.clone(), j.stage.clone(), j.skipped.clone()))
                    .collect();
            }
            Event::JobStarted { name } => {
                let job = self.job_mut(name);
                job.status = JobStatus::Running;
                job.started = Some(now);
            }
            Event::JobOutput { name, bytes } => {
                let job = self.job_mut(name);
                // Only the last lines of a chunk can end up in the tail: keep the raw text of
                // the last few that are not blank (reusing their buffers), clean those.
                let mut recent: [String; TAIL_LINES] = Default::default();
                let mut count = 0usize;
                job.lines.push(bytes, |line| {
                    if !line.trim().is_empty() {
                        let slot = &mut recent[count % TAIL_LINES];
                        slot.clear();
                        slot.push_str(line);
                        count += 1;
                    }
                });
                let kept = count.min(TAIL_LINES);
                for k in 0..kept {
                    let index = (count - kept + k) % TAIL_LINES;
                    push_tail(&mut job.tail, &recent[index]);
                }
            }
            Event::JobFinished { name, result } => {
                let job = self.job_mut(name);
                let tail = &mut job.tail;
                job.lines.flush(|line| push_tail(tail, line));
                job.status = result.status.clone();
                job.result = Some(result.clone());
            }
            Event::PipelineFinished { success, duration } => {
                self.finished = Some(PipelineEnd {
                    success: *success,
                    duration: *duration,
                });
            }
        }
    }

    /// The job named `name`, if the run knows it.
    pub fn job(&self, name: &str) -> Option<&JobView> {
        self.jobs.iter().find(|j| j.name == name)
    }

    fn job_mut(&mut self, name: &str) -> &mut JobView {
        let index = match self.jobs.iter().position(|j| j.name == name) {
            Some(i) => i,
            None => {
                self.jobs
                    .push(JobView::new(name.to_owned(), String::new(), None));
                self.jobs.len() - 1
            }
        };
        &mut self.jobs[index]
    }

    /// How many jobs are in each state: (passed, failed, failed allowed, skipped, other).
    pub(crate) fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for j in &self.jobs {
            match j.status {
                JobStatus::Success => c.passed += 1,
                JobStatus::Failed => c.failed += 1,
                JobStatus::FailedAllowed => c.allowed += 1,
                JobStatus::Skipped => c.skipped += 1,
                JobStatus::Canceled => c.canceled += 1,
                JobStatus::Running => c.running += 1,
                JobStatus::Pending => c.pending += 1,
            }
        }
        c
    }
}

fn push_tail(tail: &mut VecDeque<String>, line: &str) {
    if let Some(line) = clean_line(line, false)
        && !line.trim().is_empty()
    {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Jobs per state.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) passed: usize,
    pub(crate) failed: usize,
    pub(crate) allowed: usize,
    pub(crate) skipped: usize,
    pub(crate) canceled: usize,
    pub(crate) running: usize,
    pub(crate) pending: usize,
}

impl Counts {
    /// `3 passed, 1 failed, 2 skipped` (states with no job are left out).
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for (n, what) in [
            (self.passed, "passed"),
            (self.failed, "failed"),
            (self.allowed, "failed (allowed)"),
            (self.canceled, "canceled"),
            (self.skipped, "skipped"),
            (self.running, "running"),
            (self.pending, "not run"),
        ] {
            if n > 0 {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                write!(out, "{n} {what}").ok();
            }
        }
        out
    }
}

/// The icon, word and colour of a job state.
pub(crate) fn status_look(status: &JobStatus) -> (&'static str, &'static str, Style) {
    match status {
        JobStatus::Pending => ("◌", "pending", Style::new().dim()),
        JobStatus::Running => ("●", "running", Style::new().cyan()),
        JobStatus::Success => ("✔", "passed", Style::new().green()),
        JobStatus::Failed => ("✘", "failed", Style::new().red().bold()),
        JobStatus::FailedAllowed => ("⚠", "failed (allowed)", Style::new().yellow()),
        JobStatus::Skipped => ("⊘", "skipped", Style::new().dim()),
        JobStatus::Canceled => ("■", "canceled", Style::new().magenta()),
    }
}

/// `text` in `style` when `colour`, else as is.
pub(crate) fn paint(colour: bool, style: &Style, text: &str) -> String {
    if colour {
        style.clone().force_styling(true).apply_to(text).to_string()
    } else {
        text.to_owned()
    }
}

/// `text` padded with spaces to `width` columns (ANSI-aware, wide characters count double).
pub(crate) fn pad(text: &str, width: usize) -> String {
    let w = console::measure_text_width(text);
    format!("{text}{}", " ".repeat(width.saturating_sub(w)))
}

/// `text` cut to `width` columns with an ellipsis (ANSI-aware).
pub(crate) fn fit(text: &str, width: usize) -> String {
    console::truncate_str(text, width, "…").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamped_trace_lines_lose_their_prefix() {
        assert_eq!(
            strip_trace_prefix("2026-11-28T04:41:57.643656Z 01O secret is [MASKED]"),
            "secret is [MASKED]"
        );
        assert_eq!(
            clean_line(
                "2026-11-28T04:41:56.783840Z 00O+\x1b[0K\x1b[36;1mPreparing\x1b[0;m",
                false
            )
            .as_deref(),
            Some("Preparing")
        );
        assert_eq!(
            clean_line(
                "2026-11-28T05:00:18.234439Z 00O section_start:1795842018:prepare_executor\r\x1b[0K",
                false
            ),
            None
        );
        assert_eq!(strip_trace_prefix("2026-11-28T05:33:00.023204Z 01O "), "");
        assert_eq!(strip_trace_prefix("2026 was a year"), "2026 was a year");
        assert_eq!(strip_trace_prefix("short"), "short");
        assert_eq!(
            strip_trace_prefix("2026-11-28T04:41:57Z 1"),
            "2026-11-28T04:41:57Z 1"
        );
    }

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut buf = LineBuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            buf.push(c, |l| out.push(l.to_owned()));
        }
        buf.flush(|l| out.push(format!("{l}<no newline>")));
        out
    }

    #[test]
    fn lines_split_anywhere_even_inside_utf8() {
        let text = "héllo wörld\nzweite Zeile ✔\nrest".as_bytes();
        let whole = lines(&[text]);
        assert_eq!(whole, ["héllo wörld", "zweite Zeile ✔", "rest<no newline>"]);
        for cut in 0..text.len() {
            assert_eq!(lines(&[&text[..cut], &text[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(lines(&bytes), whole);
    }

    #[test]
    fn invalid_utf8_and_endless_lines_do_not_stop_output() {
        assert_eq!(lines(&[b"ok \xff\xfe end\n"]), ["ok \u{fffd}\u{fffd} end"]);
        let long = "é".repeat(MAX_LINE_BYTES);
        let out = lines(&[long.as_bytes()]);
        assert!(out.len() >= 2, "cut into pieces");
        assert_eq!(
            out.concat().replace("<no newline>", ""),
            long,
            "nothing lost"
        );
    }

    #[test]
    fn partial_line_shows_complete_characters_only() {
        let mut buf = LineBuffer::default();
        buf.push(
            "50% ✔".as_bytes().split_last().map_or(&[][..], |(_, h)| h),
            |_| {},
        );
        assert_eq!(buf.partial(), "50% ");
    }

    #[test]
    fn section_markers_leave_the_header_text() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            (
                "section_start:1767261600:get_sources\r\x1b[0K\x1b[0K\x1b[36;1mGetting source from Git repository\x1b[0;m",
                false,
                Some("Getting source from Git repository"),
            ),
            (
                "section_start:1767261600:get_sources\r\x1b[0K\x1b[0K\x1b[36;1mGetting source\x1b[0;m",
                true,
                Some("\x1b[36;1mGetting source\x1b[0;m"),
            ),
            (
                "section_end:1767261601:get_sources\r\x1b[0Ksection_start:1767261601:step_script[collapsed=true]\r\x1b[0K\x1b[0K\x1b[36;1mExecuting \"step_script\" stage\x1b[0;m",
                false,
                Some("Executing \"step_script\" stage"),
            ),
            ("section_end:1767261602:step_script\r\x1b[0K", false, None),
            ("section_end:1767261602:step_script\r\x1b[0K", true, None),
            // Not markers: kept as written.
            (
                "echo section_start:now:x",
                false,
                Some("echo section_start:now:x"),
            ),
            ("section_end: done", false, Some("section_end: done")),
            // Progress lines keep their last state; CRLF endings go.
            (
                "Downloading 10%\rDownloading 90%\rDone",
                false,
                Some("Done"),
            ),
            (
                "Downloading 10%\rDownloading 90%\r",
                false,
                Some("Downloading 90%"),
            ),
            ("windows line\r", false, Some("windows line")),
            ("\x1b[32;1mgreen\x1b[0;m", false, Some("green")),
            (
                "\x1b[32;1mgreen\x1b[0;m",
                true,
                Some("\x1b[32;1mgreen\x1b[0;m"),
            ),
            ("", false, Some("")),
        ];
        for (raw, keep, want) in cases {
            assert_eq!(
                clean_line(raw, *keep).as_deref(),
                *want,
                "{raw:?} keep_ansi={keep}"
            );
        }
    }

    #[test]
    fn ansi_sequences_are_stripped() {
        let cases = [
            ("plain", "plain"),
            ("\x1b[0K\x1b[36;1mcyan\x1b[0;m text", "cyan text"),
            ("\x1b[38;5;208morange\x1b[m", "orange"),
            ("\x1b]0;title\x07after", "after"),
            (
                "\x1b]8;;https://example.invalid\x1b\\link\x1b]8;;\x1b\\",
                "link",
            ),
            ("a\x1b(Bb", "ab"),
            ("cut \x1b[31", "cut "),
            ("ünï\x1b[1mcødé", "ünïcødé"),
        ];
        for (text, want) in cases {
            assert_eq!(strip_ansi(text), want, "{text:?}");
            assert_eq!(
                strip_ansi(text),
                console::strip_ansi_codes(text),
                "{text:?}"
            );
        }
    }

    /// Review L10: under `script -qc "runnel exec"` a job set the clipboard (`OSC 52`) and the
    /// window title through the user's terminal.
    #[test]
    fn only_colours_reach_a_terminal() {
        let cases = [
            ("\x1b]52;c;ZWNobyBwd25lZA==\x07after", "after"),
            ("\x1b]0;FAKE TITLE\x07x", "x"),
            ("\x1b]0;FAKE TITLE\x1b\\x", "x"),
            ("a\x1bP1$qm\x1b\\b", "ab"),
            ("a\x1b_hidden\x1b\\b", "ab"),
            ("\x1b[2J\x1b[H\x1b[1Aup\x1b[10;10Hmoved", "upmoved"),
            ("\x1b[?1049hscreen", "screen"),
            (
                "\x1b[31mred\x1b[0m \x1b[38:5:208mo\x1b[m",
                "\x1b[31mred\x1b[0m \x1b[38:5:208mo\x1b[m",
            ),
            ("bell\x07 back\x08 c1\u{9b}31m", "bell back c131m"),
            ("tab\tkept", "tab\tkept"),
            ("cut \x1b[31", "cut "),
        ];
        for (raw, want) in cases {
            assert_eq!(clean_line(raw, true).as_deref(), Some(want), "{raw:?}");
            assert!(
                !clean_line(raw, false)
                    .unwrap()
                    .contains(['\x1b', '\x07', '\u{9b}']),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn durations_read_naturally() {
        let cases = [
            (Duration::from_millis(400), "0.4s"),
            (Duration::from_millis(12_345), "12.3s"),
            (Duration::from_secs(125), "2m 05s"),
            (Duration::from_secs(3720), "1h 02m"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
        }
    }
}
