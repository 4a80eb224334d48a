//! `runnel lint`: validates config.toml and prints every problem, errors and warnings alike.

use std::io::Write as _;
use std::process::ExitCode;

use runnel_config::{ConfigFile, LoadError};

use crate::cli::ConfigArgs;

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let path = super::config_path(args);
    let mut out = std::io::stderr().lock();
    if !path.exists() {
        anyhow::bail!("config file {} does not exist", path.display());
    }
    match ConfigFile::load(&path) {
        Ok(file) => {
            for warning in file.warnings() {
                writeln!(out, "WARNING: {warning}")?;
            }
            // Review L12: values only the executor parses (Docker sizes and CPUs) are checked
            // here too, so `lint` never calls valid a config that fails at job start.
            let problems: Vec<String> = file
                .config()
                .runners
                .iter()
                .filter_map(|runner| {
                    let docker = runner.docker.as_ref()?;
                    runnel_executor_docker::DockerOptions::from_config(docker)
                        .err()
                        .map(|error| format!("runner {:?}: [runners.docker]: {error}", runner.name))
                })
                .collect();
            if !problems.is_empty() {
                for problem in &problems {
                    writeln!(out, "{problem}")?;
                }
                writeln!(
                    out,
                    "{} is not valid ({} problem(s))",
                    path.display(),
                    problems.len()
                )?;
                return Ok(ExitCode::FAILURE);
            }
            writeln!(
                out,
                "{} is valid ({} runner(s), {} warning(s))",
                path.display(),
                file.config().runners.len(),
                file.warnings().len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ LoadError::Read { .. }) => Err(error.into()),
        Err(error) => {
            let diagnostics = error.diagnostics();
            for diagnostic in &diagnostics {
                writeln!(out, "{diagnostic}")?;
            }
            writeln!(
                out,
                "{} is not valid ({} problem(s))",
                path.display(),
                diagnostics.len()
            )?;
            Ok(ExitCode::FAILURE)
        }
    }
}
