//! `runnel list`: the runners in config.toml, one line each.
//!
//! Like the official runner this writes to stderr; unlike it, tokens are shown in their short
//! form only.

use std::io::Write as _;
use std::process::ExitCode;

use crate::cli::ConfigArgs;

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let path = super::config_path(args);
    let file = super::load_config(&path)?;
    let mut out = std::io::stderr().lock();
    writeln!(
        out,
        "{:<50} ConfigFile={}",
        "Listing configured runners",
        path.display()
    )?;
    for runner in &file.config().runners {
        writeln!(
            out,
            "{:<50} Executor={} Token={} URL={}",
            runner.name,
            runner.executor.as_str(),
            runner.token.short(),
            super::redact_url(&runner.url),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
