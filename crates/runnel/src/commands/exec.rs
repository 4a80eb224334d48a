//! `runnel exec`: runs the project's `.gitlab-ci.yml` locally through `runnel-exec`.
//!
//! Exit statuses: 0 when the pipeline succeeds, 1 when it fails (or cannot run), 2 for bad input
//! (an invalid CI file, an unknown job, a malformed `--variable`).

use std::process::ExitCode;

use anyhow::Context as _;
use runnel_api::CancellationToken;
use runnel_exec::{ExecOptions, ExecutorChoice};

use crate::cli::{ExecArgs, ExecExecutor};

/// Bad input: printed, exit status 2.
const BAD_INPUT: u8 = 2;

/// Runs `runnel exec`.
pub(crate) async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let parsed = variables(
        args.variables_file.as_deref(),
        &args.variables,
        "--variable",
    )
    .and_then(|plain| {
        let secrets = variables(args.secrets_file.as_deref(), &args.secrets, "--secret")?;
        Ok((plain, secrets))
    });
    let (variables, secrets) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return Ok(bad_input(&error)),
    };
    let mut inputs = Vec::new();
    for raw in &args.inputs {
        match raw.split_once('=').filter(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            Some((name, value)) => inputs.push((name.to_owned(), value.to_owned())),
            None => {
                return Ok(bad_input(&anyhow::anyhow!(
                    "--input {:?}: expected NAME=VALUE",
                    raw.split('=').next().unwrap_or("")
                )));
            }
        }
    }
    let defaults = ExecOptions::default();
    let options = ExecOptions {
        project_dir: args.directory.clone(),
        file: args.file.clone(),
        jobs: args.jobs.clone(),
        needs: args.needs,
        executor: match args.executor {
            None => ExecutorChoice::Auto,
            Some(ExecExecutor::Shell) => ExecutorChoice::Shell,
            Some(ExecExecutor::Docker) => ExecutorChoice::Docker,
        },
        concurrency: args.concurrency.unwrap_or(defaults.concurrency),
        variables,
        secrets,
        manual: args.manual,
        helper_image: args.helper_image.clone(),
        inputs,
        offline: args.offline,
        // Tokens come from the environment only, never from arguments.
        gitlab_token: std::env::var("GITLAB_TOKEN").ok().filter(|t| !t.is_empty()),
        job_token: std::env::var("CI_JOB_TOKEN").ok().filter(|t| !t.is_empty()),
        ..defaults
    };
    let prepared = match runnel_exec::prepare(options).await {
        Ok(prepared) => prepared,
        Err(error) if error.is_bad_input() => return Ok(bad_input(&anyhow::Error::new(error))),
        Err(error) => return Err(error).context("cannot prepare the pipeline"),
    };
    if args.list {
        // The listing ends with the loader's warnings.
        let colour = runnel_exec::colours_enabled();
        print!("{}", prepared.listing(colour));
        return Ok(ExitCode::SUCCESS);
    }
    for warning in prepared.warnings() {
        eprintln!("warning: {warning}");
    }
    if let Some(note) = prepared.source_note() {
        eprintln!("note: {note}");
    }
    if prepared.selected.is_empty() {
        if let Some(reason) = prepared.plan.not_created {
            eprintln!("no pipeline: {}", reason.as_str());
        } else {
            eprintln!("no job to run");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let mut reporter = runnel_exec::stdout_reporter(args.plain);
    let success = prepared
        .run(reporter.as_mut(), cancel)
        .await
        .context("the local pipeline could not run")?;
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bad_input(error: &anyhow::Error) -> ExitCode {
    tracing::error!("{error:#}");
    ExitCode::from(BAD_INPUT)
}

/// `--variable` and `--variables-file` (or `--secret` and `--secrets-file`) values, in order
/// (later ones win).
fn variables(
    file: Option<&std::path::Path>,
    given: &[String],
    flag: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if let Some(path) = file {
        let text = fs_err::read_to_string(path)?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line == "---" {
                continue;
            }
            let (key, value) = split_variable(line).with_context(|| {
                format!(
                    "{}:{}: expected KEY=VALUE or KEY: VALUE",
                    path.display(),
                    number + 1
                )
            })?;
            out.push((key, value));
        }
    }
    for raw in given {
        let (key, value) = raw
            .split_once('=')
            .filter(|(key, _)| valid_key(key))
            .with_context(|| {
                format!(
                    "{flag} {:?}: expected KEY=VALUE",
                    raw.split('=').next().unwrap_or("")
                )
            })?;
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One line of a variables file: `KEY=VALUE`, or a YAML `KEY: VALUE` with an optionally quoted
/// value.
fn split_variable(line: &str) -> Option<(String, String)> {
    let equals = line.find('=');
    let colon = line
        .find(": ")
        .or_else(|| line.strip_suffix(':').map(str::len));
    let (key, value, yaml) = match (equals, colon) {
        (Some(e), Some(c)) if c < e => (&line[..c], line.get(c + 1..).unwrap_or(""), true),
        (Some(e), _) => (&line[..e], &line[e + 1..], false),
        (None, Some(c)) => (&line[..c], line.get(c + 1..).unwrap_or(""), true),
        (None, None) => return None,
    };
    let key = key.trim();
    if !valid_key(key) {
        return None;
    }
    let mut value = if yaml { value.trim() } else { value };
    if yaml
        && value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')))
    {
        value = &value[1..value.len() - 1];
    }
    Some((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_file_lines() {
        assert_eq!(split_variable("A=b=c"), Some(("A".into(), "b=c".into())));
        assert_eq!(
            split_variable("TOKEN: \"x: y\""),
            Some(("TOKEN".into(), "x: y".into()))
        );
        assert_eq!(
            split_variable("URL=http://h:1"),
            Some(("URL".into(), "http://h:1".into()))
        );
        assert_eq!(
            split_variable("EMPTY:"),
            Some(("EMPTY".into(), String::new()))
        );
        assert_eq!(split_variable("no separator"), None);
        assert_eq!(split_variable("bad key=1"), None);
    }
}
