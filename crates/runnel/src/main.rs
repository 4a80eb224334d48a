//! The `runnel` binary: parses the command line, sets up logging, runs one command, and maps
//! its result to an exit status.
//!
//! Exit statuses: 0 success, 1 a command failed (bad config, unreachable server, rejected token:
//! the message says which), 2 bad command-line usage (clap). Errors are printed once, as the chain
//! of causes, and never contain a token.

mod cli;
mod commands;
#[cfg(test)]
mod docs_check;
mod logging;
mod memory;
mod runner_flags;
/// The build script's logic, unit-tested here (build.rs includes the same file).
#[cfg(test)]
#[path = "../build/symbol_order.rs"]
mod symbol_order;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, LogFormat, LogLevel};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.global.debug {
        LogLevel::Debug
    } else if matches!(cli.command, cli::Command::Exec(_)) {
        // The daemon inside `runnel exec` is an implementation detail: only its problems show.
        cli.global.log_level.unwrap_or(LogLevel::Warning)
    } else {
        cli.global.log_level.unwrap_or(LogLevel::Info)
    };
    let format = cli
        .global
        .log_format
        .or_else(|| config_log_format(&cli.command))
        .unwrap_or(LogFormat::Runner);
    let syslog = matches!(&cli.command, cli::Command::Run(args) if args.syslog);
    let levels = logging::init(level, format, syslog);
    // The dynamic loader is done with them: about a megabyte less resident for the daemon.
    memory::release_relocations();
    let context = commands::Context {
        levels,
        level_from_cli: cli.global.debug || cli.global.log_level.is_some(),
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            report(&anyhow::Error::new(error).context("failed to start the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli.command, context)) {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// The daemon commands honour config.toml's `log_format` when none is given on the command line.
/// (An unreadable config is reported later, by the command itself.)
fn config_log_format(command: &cli::Command) -> Option<LogFormat> {
    let config = match command {
        cli::Command::Run(args) => &args.config,
        cli::Command::RunSingle(args) => &args.config,
        _ => return None,
    };
    let path = runnel_config::config_path(config.config.as_deref());
    let file = runnel_config::ConfigFile::load(path).ok()?;
    logging::parse_format(file.config().log_format?.as_str())
}

/// Prints an error and its causes on one line, the way the official runner prints fatal errors.
fn report(error: &anyhow::Error) {
    tracing::error!("{error:#}");
}
