//! Every runner-config field of the official runner as a `register`/`run-single` flag with its
//! official environment variable, from one table ([`RUNNER_FLAGS`]), so the flags, their help
//! and the keys they write cannot drift apart.
//!
//! Each entry names the TOML key path below `[[runners]]` the flag writes (`docker.memory`,
//! `cache.s3.BucketName`, `debug_trace_disabled`). The few flags with typed fields of their
//! own in [`crate::cli::RunnerArgs`] (URL, token, executor, …, the docker/ssh questions of
//! `register`) are marked `typed`; every other one is added to the command by [`ConfigFlags`]
//! and written by [`ConfigFlags::apply`]. Values are checked when config.toml is parsed
//! again after the edit, so a bad value fails with the config parser's message.

use anyhow::{Context as _, bail};
use clap::{Arg, ArgAction, ArgMatches, Command};
use runnel_config::{NewRunner, RawTable};

/// How a flag's value becomes TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A string (durations too: `"1h30m"`).
    Str,
    /// A switch: `--flag` is true, `--flag=false` false.
    Bool,
    Int,
    Float,
    /// Repeatable; each occurrence is one element.
    List,
    /// Repeatable integers.
    IntList,
    /// Repeatable `key:value` pairs.
    Map,
    /// Repeatable `key:true|false` pairs (`--feature-flags FF_X:true`).
    BoolMap,
    /// Repeatable `key:number` pairs.
    IntMap,
    /// A structured value the command line cannot express: refused with a message.
    Unsupported,
}

/// One official runner-config flag.
#[derive(Debug)]
pub(crate) struct RunnerFlag {
    /// The flag without `--`.
    pub(crate) long: &'static str,
    /// Its environment variable; empty when the official flag has none.
    pub(crate) env: &'static str,
    /// The key path below `[[runners]]` it sets.
    pub(crate) key: &'static str,
    pub(crate) kind: Kind,
    /// Handled by a typed field of `RunnerArgs` rather than by [`ConfigFlags`].
    pub(crate) typed: bool,
}

impl RunnerFlag {
    fn arg(&'static self) -> Arg {
        let (section, key) = match self.key.rsplit_once('.') {
            Some((section, key)) => (format!("[runners.{section}]"), key),
            None => ("[[runners]]".to_owned(), self.key),
        };
        let mut arg = Arg::new(self.long)
            .long(self.long)
            .value_name("VALUE")
            .help(format!("Sets {section} {key}"))
            .help_heading("Runner settings (config.toml keys)");
        if !self.env.is_empty() {
            arg = arg.env(self.env);
        }
        match self.kind {
            Kind::Bool => arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .action(ArgAction::Set),
            Kind::List | Kind::IntList | Kind::Map | Kind::BoolMap | Kind::IntMap => {
                arg.action(ArgAction::Append)
            }
            Kind::Str | Kind::Int | Kind::Float | Kind::Unsupported => arg.action(ArgAction::Set),
        }
    }

    /// The TOML value of this flag's `values`.
    fn value(&self, values: &[String]) -> anyhow::Result<toml::Value> {
        let flag = self.long;
        let one = || values.last().map(String::as_str).unwrap_or_default();
        let int = |text: &str| -> anyhow::Result<i64> {
            text.trim()
                .parse()
                .with_context(|| format!("--{flag}: {text:?} is not an integer"))
        };
        let pairs = || {
            values.iter().map(|pair| {
                pair.split_once(':')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .with_context(|| format!("--{flag}: expected KEY:VALUE, got {pair:?}"))
            })
        };
        Ok(match self.kind {
            Kind::Str => toml::Value::String(one().to_owned()),
            Kind::Bool => toml::Value::Boolean(
                parse_bool(one())
                    .with_context(|| format!("--{flag}: {:?} is not true or false", one()))?,
            ),
            Kind::Int => toml::Value::Integer(int(one())?),
            Kind::Float => toml::Value::Float(
                one()
                    .trim()
                    .parse()
                    .with_context(|| format!("--{flag}: {:?} is not a number", one()))?,
            ),
            Kind::List => {
                toml::Value::Array(values.iter().cloned().map(toml::Value::String).collect())
            }
            Kind::IntList => toml::Value::Array(
                values
                    .iter()
                    .map(|v| int(v).map(toml::Value::Integer))
                    .collect::<anyhow::Result<_>>()?,
            ),
            Kind::Map => {
                let mut table = toml::Table::new();
                for pair in pairs() {
                    let (key, value) = pair?;
                    table.insert(key, toml::Value::String(value));
                }
                toml::Value::Table(table)
            }
            Kind::BoolMap => {
                let mut table = toml::Table::new();
                for pair in pairs() {
                    let (key, value) = pair?;
                    let on = parse_bool(&value).with_context(|| {
                        format!("--{flag}: {value:?} for {key} is not true or false")
                    })?;
                    table.insert(key, toml::Value::Boolean(on));
                }
                toml::Value::Table(table)
            }
            Kind::IntMap => {
                let mut table = toml::Table::new();
                for pair in pairs() {
                    let (key, value) = pair?;
                    table.insert(key, toml::Value::Integer(int(&value)?));
                }
                toml::Value::Table(table)
            }
            Kind::Unsupported => bail!(
                "--{flag} is not supported on the command line by Runnel; set {} in config.toml (or --template-config)",
                self.key
            ),
        })
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The runner-config flags without a typed field, as given on the command line or in the
/// environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigFlags {
    values: Vec<(&'static RunnerFlag, Vec<String>)>,
}

impl clap::FromArgMatches for ConfigFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for flag in RUNNER_FLAGS.iter().filter(|f| !f.typed) {
            if let Ok(Some(values)) = matches.try_get_many::<String>(flag.long) {
                let values: Vec<String> = values.cloned().collect();
                self.values.retain(|(f, _)| f.long != flag.long);
                self.values.push((flag, values));
            }
        }
        Ok(())
    }
}

impl clap::Args for ConfigFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(
            RUNNER_FLAGS
                .iter()
                .filter(|f| !f.typed)
                .map(RunnerFlag::arg),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl ConfigFlags {
    /// Writes every given flag into `runner`: top-level keys into its settings, the others into
    /// their `[runners.<section>]` table (created when missing, merged when present).
    pub(crate) fn apply(&self, runner: &mut NewRunner) -> anyhow::Result<()> {
        for (flag, values) in &self.values {
            let value = flag.value(values)?;
            set_key(runner, flag.key, value);
        }
        Ok(())
    }
}

/// Sets the key path `key` (below `[[runners]]`) of `runner` to `value`.
pub(crate) fn set_key(runner: &mut NewRunner, key: &str, value: toml::Value) {
    let mut parts = key.split('.');
    let Some(first) = parts.next() else { return };
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        match value {
            // A map such as `feature_flags` is a `[runners.<key>]` table, merged key by key.
            toml::Value::Table(table) => {
                for (inner, value) in table {
                    set_key(runner, &format!("{first}.{inner}"), value);
                }
            }
            value => runner.settings.insert(first, value),
        }
        return;
    }
    let index = match runner.sections.iter().position(|(name, _)| name == first) {
        Some(index) => index,
        None => {
            runner.sections.push((first.to_owned(), RawTable::new()));
            runner.sections.len() - 1
        }
    };
    let mut table = runner.sections[index].1.as_table().clone();
    insert_path(&mut table, &rest, value);
    runner.sections[index].1 = RawTable::from(table);
}

fn insert_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Whether `key` (a path below `[[runners]]`) is already set in `runner` by flags.
fn is_set(runner: &NewRunner, path: &[&str]) -> bool {
    match path {
        [] => false,
        [key] => runner.settings.as_table().contains_key(*key),
        [section, rest @ ..] => runner
            .sections
            .iter()
            .find(|(name, _)| name == section)
            .is_some_and(|(_, table)| {
                let mut current = table.as_table();
                for (i, part) in rest.iter().enumerate() {
                    match current.get(*part) {
                        Some(toml::Value::Table(inner)) if i + 1 < rest.len() => current = inner,
                        Some(_) => return i + 1 == rest.len(),
                        None => return false,
                    }
                }
                false
            }),
    }
}

/// `--template-config`: fills what the flags left unset from the template's single
/// `[[runners]]` entry, as the official `register` merges it (flags and answers win; the
/// template's credentials are never used). `typed_set` names the typed keys already set.
pub(crate) fn merge_template(
    runner: &mut NewRunner,
    template: &toml::Table,
    typed_set: &[&str],
) -> anyhow::Result<()> {
    let runners = match template.get("runners") {
        None => return Ok(()),
        Some(toml::Value::Array(runners)) => runners,
        Some(_) => bail!("the template's `runners` is not an array of tables"),
    };
    let entry = match runners.as_slice() {
        [] => return Ok(()),
        [toml::Value::Table(entry)] => entry,
        [_] => bail!("the template's [[runners]] entry is not a table"),
        _ => bail!("the template must have exactly one [[runners]] entry"),
    };
    const NEVER: &[&str] = &[
        "url",
        "token",
        "id",
        "token_obtained_at",
        "token_expires_at",
        "name",
        "executor",
    ];
    for (key, value) in entry {
        if NEVER.contains(&key.as_str()) || typed_set.contains(&key.as_str()) {
            continue;
        }
        merge_value(runner, &mut vec![key.as_str()], value);
    }
    Ok(())
}

fn merge_value<'a>(runner: &mut NewRunner, path: &mut Vec<&'a str>, value: &'a toml::Value) {
    match value {
        // Sections and maps alike merge key by key: a flag's `FF_A` and the template's `FF_B`
        // both end up in `feature_flags`.
        toml::Value::Table(table) if !path.is_empty() => {
            for (key, inner) in table {
                path.push(key.as_str());
                merge_value(runner, path, inner);
                path.pop();
            }
        }
        _ => {
            if !is_set(runner, path) {
                set_key(runner, &path.join("."), value.clone());
            }
        }
    }
}

mod table;

pub(crate) use table::RUNNER_FLAGS;

#[cfg(test)]
mod tests {
    use super::*;

    /// The official list (flag, env, key, Go type), derived from the official struct tags.
    const OFFICIAL: &str = include_str!("../tests/data/official-runner-flags.tsv");

    #[test]
    fn the_table_is_the_official_flag_list() {
        let official: Vec<Vec<&str>> = OFFICIAL
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split('\t').collect())
            .collect();
        assert_eq!(
            official.len(),
            RUNNER_FLAGS.len(),
            "one entry per official flag"
        );
        for (row, flag) in official.iter().zip(RUNNER_FLAGS) {
            assert_eq!(
                (row[0], row[1], row[2]),
                (flag.long, flag.env, flag.key),
                "table entry {flag:?} differs from the official list"
            );
        }
    }

    #[test]
    fn register_and_run_single_accept_every_flag_with_its_env_var() {
        use clap::CommandFactory as _;
        let cli = crate::cli::Cli::command();
        for name in ["register", "run-single"] {
            let command = cli.find_subcommand(name).expect(name);
            for flag in RUNNER_FLAGS {
                let arg = command
                    .get_arguments()
                    .find(|a| {
                        a.get_long() == Some(flag.long)
                            || a.get_all_aliases()
                                .is_some_and(|aliases| aliases.contains(&flag.long))
                    })
                    .unwrap_or_else(|| panic!("{name} has no --{}", flag.long));
                let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
                assert_eq!(env, flag.env, "{name} --{}", flag.long);
            }
        }
    }

    #[test]
    fn values_become_toml_of_the_right_type() {
        let mut runner = NewRunner::new(
            "r",
            "https://gitlab.example.com",
            runnel_types::RunnerToken::new("glrt-x"),
            runnel_config::Executor::Docker,
        );
        let find = |long: &str| RUNNER_FLAGS.iter().find(|f| f.long == long).unwrap();
        let flags = ConfigFlags {
            values: vec![
                (find("docker-memory"), vec!["1g".into()]),
                (find("docker-cpus"), vec!["2".into()]),
                (find("docker-tlsverify"), vec!["true".into()]),
                (find("docker-shm-size"), vec!["300000".into()]),
                (
                    find("docker-cap-add"),
                    vec!["NET_ADMIN".into(), "SYS_TIME".into()],
                ),
                (find("docker-sysctls"), vec!["net.ipv4.ip_forward:1".into()]),
                (find("cache-s3-bucket-name"), vec!["runner".into()]),
                (find("feature-flags"), vec!["FF_TIMESTAMPS:false".into()]),
                (find("debug-trace-disabled"), vec!["true".into()]),
            ],
        };
        flags.apply(&mut runner).unwrap();
        let mut text = String::new();
        for (name, table) in &runner.sections {
            text.push_str(&format!(
                "[{name}]\n{}\n",
                toml::to_string(table.as_table()).unwrap()
            ));
        }
        text.push_str(&toml::to_string(runner.settings.as_table()).unwrap());
        insta::assert_snapshot!(text);
        let bad = ConfigFlags {
            values: vec![(find("docker-shm-size"), vec!["big".into()])],
        };
        let error = bad.apply(&mut runner).unwrap_err().to_string();
        assert_eq!(error, "--docker-shm-size: \"big\" is not an integer");
        let unsupported = ConfigFlags {
            values: vec![(find("kubernetes-affinity"), vec!["{}".into()])],
        };
        let error = unsupported.apply(&mut runner).unwrap_err().to_string();
        assert!(
            error.contains("kubernetes.affinity in config.toml"),
            "{error}"
        );
    }
}
