//! What `runnel exec --list` prints: the evaluated pipeline without running it.
//!
//! Stages in order, each job under its stage with its `when`, `allow_failure`, `needs` and
//! `dependencies`; the instances of a `parallel` job under their job; then the jobs that will
//! not run and why (their rules, `only`/`except`, `when: never`, hidden templates, and whatever
//! the caller adds, such as manual jobs or jobs not selected on the command line); then the
//! loader's warnings with file and line. Pure: it returns the text.

use std::fmt::Write as _;

use console::Style;
use runnel_pipeline::{AllowFailure, Plan, PlannedJob, Warning, When};

use crate::view::{pad, paint};

/// One line of a stage: (indented name, `when`, other attributes).
struct Row {
    name: String,
    when: String,
    when_style: Style,
    attrs: Vec<String>,
    quiet: bool,
}

/// The `--list` text for `plan`.
///
/// `skipped` names jobs that will not run for reasons outside the plan (job, why), such as
/// `when: manual` without `--manual` or a job not selected on the command line: a planned job
/// named there is marked in its stage, and every entry is listed with the plan's own
/// exclusions. `colour` adds ANSI styles.
pub fn render_list(
    plan: &Plan,
    warnings: &[Warning],
    skipped: &[(String, String)],
    colour: bool,
) -> String {
    let bold = Style::new().bold();
    let dim = Style::new().dim();
    let mut out = String::new();

    let title = match &plan.name {
        Some(name) => format!("Pipeline \"{name}\""),
        None => "Pipeline".to_owned(),
    };
    if let Some(reason) = plan.not_created {
        let line = format!("{title}: not created ({})", reason.as_str());
        writeln!(out, "{}", paint(colour, &Style::new().red().bold(), &line)).ok();
    } else {
        let stages_used = plan
            .stages
            .iter()
            .filter(|s| plan.jobs.iter().any(|j| &j.stage == *s))
            .count();
        let skipped_planned = plan
            .jobs
            .iter()
            .filter(|j| skipped.iter().any(|(n, _)| *n == j.name))
            .count();
        let line = format!(
            "{title}: {} of {} jobs run, in {stages_used} stages",
            plan.jobs.len() - skipped_planned,
            plan.jobs.len(),
        );
        writeln!(out, "{}", paint(colour, &bold, &line)).ok();
    }

    let mut stage_rows: Vec<(String, Vec<Row>)> = Vec::new();
    for stage in &plan.stages {
        let jobs: Vec<&PlannedJob> = plan.jobs.iter().filter(|j| &j.stage == stage).collect();
        if jobs.is_empty() {
            continue;
        }
        let mut rows = Vec::new();
        let mut i = 0;
        while i < jobs.len() {
            let job = jobs[i];
            if let Some(parallel) = &job.job.parallel {
                let base = &job.job.name;
                let group: Vec<&PlannedJob> = jobs[i..]
                    .iter()
                    .take_while(|j| &j.job.name == base)
                    .copied()
                    .collect();
                let what = match parallel {
                    runnel_pipeline::Parallel::Count(n) => format!("parallel: {n}"),
                    runnel_pipeline::Parallel::Matrix(_) => {
                        format!("parallel: matrix, {} jobs", group.len())
                    }
                };
                rows.push(Row {
                    name: format!("  {base}"),
                    when: String::new(),
                    when_style: Style::new(),
                    attrs: vec![what],
                    quiet: false,
                });
                for instance in &group {
                    rows.push(job_row(instance, "    ", skipped));
                }
                i += group.len();
            } else {
                rows.push(job_row(job, "  ", skipped));
                i += 1;
            }
        }
        stage_rows.push((stage.clone(), rows));
    }

    let name_width = stage_rows
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| console::measure_text_width(&r.name)))
        .max()
        .unwrap_or(0);
    let when_width = stage_rows
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| console::measure_text_width(&r.when)))
        .max()
        .unwrap_or(0);
    for (stage, rows) in &stage_rows {
        writeln!(out, "{}", paint(colour, &bold, &format!("stage {stage}"))).ok();
        for row in rows {
            let mut line = pad(&row.name, name_width);
            line.push_str("  ");
            if row.when.is_empty() {
                line.push_str(&" ".repeat(when_width));
            } else {
                // No padding after the last column, so no line ends in spaces.
                let when = if row.attrs.is_empty() {
                    row.when.clone()
                } else {
                    pad(&row.when, when_width)
                };
                if row.quiet {
                    line.push_str(&when);
                } else {
                    line.push_str(&paint(colour, &row.when_style, &when));
                }
            }
            for attr in &row.attrs {
                line.push_str("  ");
                line.push_str(attr);
            }
            let line = line.trim_end();
            if row.quiet {
                writeln!(out, "{}", paint(colour, &dim, line)).ok();
            } else {
                writeln!(out, "{line}").ok();
            }
        }
    }

    let mut not_run: Vec<(String, String, String)> = plan
        .excluded
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.stage.clone().unwrap_or_else(|| "-".to_owned()),
                e.reason.clone(),
            )
        })
        .collect();
    for (name, why) in skipped {
        let stage = plan
            .job(name)
            .map(|j| j.stage.clone())
            .unwrap_or_else(|| "-".to_owned());
        if !not_run.iter().any(|(n, _, _)| n == name) {
            not_run.push((name.clone(), stage, why.clone()));
        }
    }
    if !not_run.is_empty() {
        writeln!(out, "\n{}", paint(colour, &bold, "Will not run:")).ok();
        let name_width = not_run
            .iter()
            .map(|(n, _, _)| console::measure_text_width(n))
            .max()
            .unwrap_or(0);
        let stage_width = not_run
            .iter()
            .map(|(_, s, _)| console::measure_text_width(s))
            .max()
            .unwrap_or(0);
        for (name, stage, why) in &not_run {
            let line = format!(
                "  {}  {}  {why}",
                pad(name, name_width),
                pad(stage, stage_width)
            );
            writeln!(out, "{}", paint(colour, &dim, &line)).ok();
        }
    }

    if !warnings.is_empty() {
        writeln!(out, "\n{}", paint(colour, &bold, "Warnings:")).ok();
        for w in warnings {
            let line = format!("  {w}");
            writeln!(out, "{}", paint(colour, &Style::new().yellow(), &line)).ok();
        }
    }
    out
}

fn job_row(job: &PlannedJob, indent: &str, skipped: &[(String, String)]) -> Row {
    let when = match (job.when, &job.start_in) {
        (When::Delayed, Some(start_in)) => format!("delayed ({start_in})"),
        (when, _) => when.as_str().to_owned(),
    };
    let when_style = match job.when {
        When::Manual | When::Delayed => Style::new().yellow(),
        When::OnFailure | When::Always => Style::new().cyan(),
        _ => Style::new().green(),
    };
    let mut attrs = Vec::new();
    match &job.allow_failure {
        AllowFailure::No => {}
        AllowFailure::Yes => attrs.push("allow_failure".to_owned()),
        AllowFailure::ExitCodes(codes) => {
            let codes: Vec<String> = codes.iter().map(ToString::to_string).collect();
            attrs.push(format!("allow_failure: exit codes {}", codes.join(", ")));
        }
    }
    match &job.needs {
        None => {}
        Some(needs) if needs.is_empty() => attrs.push("needs: [] (starts at once)".to_owned()),
        Some(needs) => {
            let needs: Vec<String> = needs
                .iter()
                .map(|n| {
                    if n.artifacts {
                        n.job.clone()
                    } else {
                        format!("{} (artifacts: false)", n.job)
                    }
                })
                .collect();
            attrs.push(format!("needs: {}", needs.join(", ")));
        }
    }
    if job.job.dependencies.is_some() {
        attrs.push(format!("dependencies: [{}]", job.dependencies.join(", ")));
    }
    let why = skipped.iter().find(|(n, _)| *n == job.name).map(|(_, w)| w);
    if let Some(why) = why {
        attrs.push(format!("(will not run: {why})"));
    }
    Row {
        name: format!("{indent}{}", job.name),
        when,
        when_style,
        attrs,
        quiet: why.is_some(),
    }
}
