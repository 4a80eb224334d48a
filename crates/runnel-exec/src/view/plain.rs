//! Line-by-line output, for anything that is not a terminal and for `--plain`.
//!
//! Every log line is prefixed by its job's name in a fixed-width column, so the output of
//! concurrent jobs interleaves line by line and stays readable (and greppable). Lines are cut
//! only at `\n`, per job, so a write split mid-line or mid-UTF-8 never garbles a line.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use console::Style;

use super::{
    LineBuffer, PipelineState, clean_line, fit, format_duration, pad, paint, render_summary,
    status_look,
};
use crate::event::{Event, JobResult, JobStatus, Reporter};

/// The widest job-name column; longer names are cut with `…`.
const MAX_NAME_WIDTH: usize = 24;

/// Colours for the name column, one per job in turn.
const PALETTE: [fn(Style) -> Style; 6] = [
    Style::cyan,
    Style::magenta,
    Style::blue,
    Style::yellow,
    Style::green,
    Style::red,
];

/// Writes events as prefixed lines to `W`, then the summary table.
#[derive(Debug)]
pub struct PlainReporter<W: Write> {
    out: W,
    ansi: bool,
    state: PipelineState,
    name_width: usize,
    buffers: HashMap<String, LineBuffer>,
    /// The rendered prefix of each job (padded, cut, coloured).
    prefixes: HashMap<String, String>,
    summary_written: bool,
}

impl<W: Write> PlainReporter<W> {
    /// A reporter writing to `out`; `ansi` keeps the jobs' colours (and colours the prefixes
    /// and results), otherwise every escape sequence is stripped.
    pub fn new(out: W, ansi: bool) -> Self {
        Self {
            out,
            ansi,
            state: PipelineState::default(),
            name_width: 12,
            buffers: HashMap::new(),
            prefixes: HashMap::new(),
            summary_written: false,
        }
    }

    /// The writer back (for tests and callers that buffer).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Renders `name`'s prefix once; later lines reuse it.
    fn ensure_prefix(&mut self, name: &str) {
        if !self.prefixes.contains_key(name) {
            let prefix = self.render_prefix(name);
            self.prefixes.insert(name.to_owned(), prefix);
        }
    }

    fn render_prefix(&self, name: &str) -> String {
        let index = self
            .state
            .jobs
            .iter()
            .position(|j| j.name == name)
            .unwrap_or(0);
        let text = format!("{} |", pad(&fit(name, self.name_width), self.name_width));
        let style = PALETTE[index % PALETTE.len()](Style::new());
        paint(self.ansi, &style, &text)
    }

    fn write_line(&mut self, name: &str, line: &str) {
        let reset = if self.ansi { "\x1b[0m" } else { "" };
        self.ensure_prefix(name);
        let prefix = self.prefixes.get(name).map_or("", String::as_str);
        writeln!(self.out, "{prefix} {line}{reset}").ok();
    }

    fn job_line(&mut self, name: &str, raw: &str) {
        if let Some(line) = clean_line(raw, self.ansi) {
            self.write_line(name, &line);
        }
    }

    fn finished_line(&self, result: &JobResult) -> String {
        let (icon, word, style) = status_look(&result.status);
        let text = match result.status {
            JobStatus::Skipped => format!("{icon} job {word}"),
            _ => {
                let mut text = format!("{icon} job {word} in {}", format_duration(result.duration));
                if let Some(code) = result.exit_code {
                    text.push_str(&format!(" (exit code {code})"));
                }
                if let Some(reason) = &result.failure_reason {
                    text.push_str(&format!(": {reason}"));
                }
                if let Some(log) = &result.log_file {
                    let log = super::summary::log_text(log, result.log_error.as_deref());
                    text.push_str(&format!("; log: {log}"));
                }
                text
            }
        };
        paint(self.ansi, &style, &text)
    }

    fn write_summary(&mut self) {
        if self.summary_written {
            return;
        }
        self.summary_written = true;
        let summary = render_summary(&self.state, self.ansi);
        write!(self.out, "\n{summary}").ok();
    }
}

impl<W: Write + Send> Reporter for PlainReporter<W> {
    fn event(&mut self, event: &Event) {
        self.state.apply(event, Instant::now());
        match event {
            Event::PipelineStarted { stages, jobs } => {
                self.name_width = jobs
                    .iter()
                    .map(|j| console::measure_text_width(&j.name))
                    .max()
                    .unwrap_or(0)
                    .clamp(4, MAX_NAME_WIDTH);
                self.prefixes.clear();
                let to_run = jobs.iter().filter(|j| j.skipped.is_none()).count();
                // Stages that hold a job (not the empty `.pre`/`.post` every pipeline has).
                let stages: Vec<&str> = stages
                    .iter()
                    .filter(|s| jobs.iter().any(|j| j.stage == **s))
                    .map(String::as_str)
                    .collect();
                let stages = stages.join(" → ");
                let title = format!("Pipeline: {to_run} jobs to run; stages {stages}");
                writeln!(
                    self.out,
                    "{}",
                    paint(self.ansi, &Style::new().bold(), &title)
                )
                .ok();
                for job in jobs {
                    if let Some(why) = &job.skipped {
                        let (icon, word, style) = status_look(&JobStatus::Skipped);
                        let text = paint(self.ansi, &style, &format!("{icon} {word}: {why}"));
                        self.write_line(&job.name, &text);
                    }
                }
            }
            Event::JobStarted { name } => {
                let stage = self
                    .state
                    .job(name)
                    .map(|j| j.stage.clone())
                    .unwrap_or_default();
                let text = paint(
                    self.ansi,
                    &Style::new().bold(),
                    &format!("▶ job started (stage {stage})"),
                );
                self.write_line(name, &text);
            }
            Event::JobOutput { name, bytes } => {
                let mut lines = Vec::new();
                self.buffers
                    .entry(name.clone())
                    .or_default()
                    .push(bytes, |l| lines.push(l.to_owned()));
                for line in lines {
                    self.job_line(name, &line);
                }
            }
            Event::JobFinished { name, result } => {
                let mut rest = None;
                if let Some(buffer) = self.buffers.get_mut(name) {
                    buffer.flush(|l| rest = Some(l.to_owned()));
                }
                if let Some(rest) = rest {
                    self.job_line(name, &rest);
                }
                let text = self.finished_line(result);
                self.write_line(name, &text);
            }
            Event::PipelineFinished { .. } => self.write_summary(),
        }
        self.out.flush().ok();
    }

    fn finish(&mut self) {
        let mut rests = Vec::new();
        for (name, buffer) in &mut self.buffers {
            buffer.flush(|l| rests.push((name.clone(), l.to_owned())));
        }
        rests.sort();
        for (name, line) in rests {
            self.job_line(&name, &line);
        }
        self.write_summary();
        self.out.flush().ok();
    }
}
