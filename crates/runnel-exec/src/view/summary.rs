//! The table printed when a run ends: one row per job (job, stage, result, duration, log file)
//! and the pipeline's result line. Pure: both reporters print what [`render_summary`] returns.

use console::Style;

use super::{PipelineState, format_duration, pad, paint, status_look};
use crate::event::JobStatus;

/// The summary table and the pipeline result line, each line ending in `\n`.
///
/// Jobs that were still running or pending (an interrupted run) show as `interrupted` and
/// `not run`; without `PipelineFinished` the result line says the run did not finish.
pub fn render_summary(state: &PipelineState, colour: bool) -> String {
    let header = ["job", "stage", "result", "duration", "log"];
    let rows: Vec<([String; 5], Style)> = state
        .jobs
        .iter()
        .map(|job| {
            let (icon, word, style) = status_look(&job.status);
            let result = match (&job.status, &job.result) {
                (JobStatus::Running, _) => "● interrupted".to_owned(),
                (JobStatus::Pending, _) => "◌ not run".to_owned(),
                (JobStatus::Skipped, _) => match &job.skip_reason {
                    Some(why) => format!("{icon} {word}: {why}"),
                    None => format!("{icon} {word}"),
                },
                (JobStatus::Failed | JobStatus::FailedAllowed, Some(r)) => {
                    let detail = match (r.exit_code, r.failure_reason.as_deref()) {
                        (Some(code), Some("script_failure") | None) => {
                            format!(": exit code {code}")
                        }
                        (Some(code), Some(reason)) => format!(": {reason}, exit code {code}"),
                        (None, Some(reason)) => format!(": {reason}"),
                        (None, None) => String::new(),
                    };
                    format!("{icon} {word}{detail}")
                }
                _ => format!("{icon} {word}"),
            };
            let duration = job
                .result
                .as_ref()
                .filter(|r| r.status != JobStatus::Skipped)
                .map(|r| format_duration(r.duration))
                .unwrap_or_else(|| "-".to_owned());
            let log = job
                .result
                .as_ref()
                .and_then(|r| Some(log_text(r.log_file.as_ref()?, r.log_error.as_deref())))
                .unwrap_or_default();
            (
                [job.name.clone(), job.stage.clone(), result, duration, log],
                style,
            )
        })
        .collect();

    let mut widths = header.map(console::measure_text_width);
    for (row, _) in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(console::measure_text_width(cell));
        }
    }
    let line = |cells: [&str; 5], result_style: Option<&Style>| -> String {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            let padded = if last {
                (*cell).to_owned()
            } else {
                pad(cell, widths[i])
            };
            let padded = match (i, result_style) {
                (2, Some(style)) => paint(colour, style, &padded),
                (_, None) => paint(colour, &Style::new().bold(), &padded),
                _ => padded,
            };
            text.push_str(&padded);
            if !last {
                text.push_str("  ");
            }
        }
        format!("{}\n", text.trim_end())
    };

    let mut out = String::new();
    out.push_str(&line(header, None));
    for (row, style) in &rows {
        out.push_str(&line(
            [&row[0], &row[1], &row[2], &row[3], &row[4]],
            Some(style),
        ));
    }
    out.push('\n');

    let counts = state.counts();
    let (icon, verdict, style) = match state.finished {
        Some(end) if end.success => (
            "✔",
            format!("Pipeline passed in {}", format_duration(end.duration)),
            Style::new().green().bold(),
        ),
        Some(end) => (
            "✘",
            format!("Pipeline failed in {}", format_duration(end.duration)),
            Style::new().red().bold(),
        ),
        None => (
            "■",
            "Pipeline did not finish".to_owned(),
            Style::new().magenta().bold(),
        ),
    };
    let result = format!("{icon} {verdict}");
    out.push_str(&paint(colour, &style, &result));
    let detail = counts.describe();
    if !detail.is_empty() {
        out.push_str(": ");
        out.push_str(&detail);
    }
    out.push('\n');
    out
}

/// Where a job's log is, and that it is incomplete when writing it failed (review L11: a full
/// disk truncated the file while the summary pointed to it as if it were whole).
pub(crate) fn log_text(path: &std::path::Path, error: Option<&str>) -> String {
    match error {
        None => path.display().to_string(),
        Some(error) => format!("{} (INCOMPLETE: {error})", path.display()),
    }
}
