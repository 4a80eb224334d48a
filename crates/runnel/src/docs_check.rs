//! A check that docs/compatibility.md claims only what the binary has: every command (`runnel
//! <command>`), flag (`--flag`) and config.toml section or key (`[runners.x]`, `key = value`)
//! named in a row's Runnel column must exist. Test-only.

use std::collections::BTreeSet;

use clap::CommandFactory as _;

const COMPATIBILITY: &str = include_str!("../../../docs/compatibility.md");

/// Every subcommand path and every long flag (and alias) of the CLI.
fn cli_names() -> (BTreeSet<String>, BTreeSet<String>) {
    fn walk(
        command: &clap::Command,
        commands: &mut BTreeSet<String>,
        flags: &mut BTreeSet<String>,
    ) {
        for arg in command.get_arguments() {
            flags.extend(arg.get_long().map(str::to_owned));
            flags.extend(
                arg.get_all_aliases()
                    .into_iter()
                    .flatten()
                    .map(str::to_owned),
            );
        }
        for sub in command.get_subcommands() {
            commands.insert(sub.get_name().to_owned());
            commands.extend(sub.get_all_aliases().map(str::to_owned));
            walk(sub, commands, flags);
        }
    }
    let mut commands = BTreeSet::new();
    let mut flags = BTreeSet::from(["help".to_owned(), "version".to_owned()]);
    walk(&crate::cli::Cli::command(), &mut commands, &mut flags);
    (commands, flags)
}

/// The Runnel column of every table row whose header names a "Runnel" column.
fn runnel_cells() -> Vec<String> {
    let mut cells = Vec::new();
    let mut column = None;
    for line in COMPATIBILITY.lines() {
        if !line.starts_with('|') {
            column = None;
            continue;
        }
        let row: Vec<String> = line
            .replace("\\|", "\u{1}")
            .split('|')
            .map(|cell| cell.trim().replace('\u{1}', "|"))
            .collect();
        match column {
            None => column = row.iter().position(|cell| cell == "Runnel"),
            Some(index) => {
                if !row.iter().all(|c| c.is_empty() || c.starts_with("---")) {
                    cells.extend(row.get(index).cloned());
                }
            }
        }
    }
    cells
}

/// The `code spans` of `cell`.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Whether `fragment` (of a `[[runners]]` entry) parses with no unknown-key warning.
fn known_runner_config(fragment: &str) -> Result<(), String> {
    known_config("", fragment)
}

/// Whether `global` (top-level keys) and `fragment` (of a `[[runners]]` entry) parse with no
/// unknown-key warning.
fn known_config(global: &str, fragment: &str) -> Result<(), String> {
    let text = format!(
        "{global}\n[[runners]]\n  name = \"doc\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"shell\"\n{fragment}\n"
    );
    let file = runnel_config::ConfigFile::parse("doc.toml", &text, |_| None);
    let unknown: Vec<String> = match &file {
        Ok(file) => file
            .warnings()
            .iter()
            .map(ToString::to_string)
            .filter(|w| w.contains("unknown"))
            .collect(),
        // A bad value is fine: the key is known. An unknown key only warns.
        Err(_) => Vec::new(),
    };
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(unknown.join("; "))
    }
}

#[test]
fn every_command_flag_and_key_the_runnel_column_names_exists() {
    let (commands, flags) = cli_names();
    let mut missing = Vec::new();
    for cell in runnel_cells() {
        for span in code_spans(&cell) {
            let span = span.trim();
            if let Some(rest) = span.strip_prefix("runnel ") {
                let command = rest.split_whitespace().next().unwrap_or_default();
                if !command.starts_with('-') && !commands.contains(command) {
                    missing.push(format!("command `{span}`"));
                }
            }
            for word in span.split(|c: char| c.is_whitespace() || c == '/' || c == ',') {
                if let Some(flag) = word.strip_prefix("--") {
                    let flag: String = flag
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                        .collect();
                    let known = if word.ends_with("-*") {
                        // A family such as `--docker-*`.
                        flags.iter().any(|f| f.starts_with(&flag))
                    } else {
                        flags.contains(&flag)
                    };
                    if !flag.is_empty() && !known {
                        missing.push(format!("flag --{flag} (in `{span}`)"));
                    }
                }
            }
            if let Some(section) = span
                .strip_prefix("[runners.")
                .and_then(|s| s.strip_suffix(']'))
                && let Err(unknown) = known_runner_config(&format!("  [runners.{section}]"))
            {
                missing.push(format!("section `{span}`: {unknown}"));
            }
            if let Some((key, _)) = span.split_once(" = ")
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && let Err(unknown) = known_runner_config(&format!("  {span}"))
                && known_config(span, "").is_err()
            {
                missing.push(format!("key `{span}`: {unknown}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/compatibility.md names what the binary does not have:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_check_sees_the_rows() {
    let cells = runnel_cells();
    assert!(cells.len() > 50, "{} cells", cells.len());
    let (commands, flags) = cli_names();
    assert!(commands.contains("register") && flags.contains("template-config"));
    assert!(known_runner_config("  nonsense_key = 1").is_err());
    assert!(known_runner_config("  [runners.docker]\n    image = \"x\"").is_ok());
}
