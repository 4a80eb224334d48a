//! `runnel run` and `runnel run-single`: start the daemon (`runnel-service`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use runnel_service::{
    ConfigSource, FileConfigSource, FixedConfigSource, Overrides, RunOptions, RunnerSpec,
    ServiceConfig,
};
use runnel_types::RunnerToken;

use super::Context;
use crate::cli::{RunArgs, RunSingleArgs};
use crate::logging;

pub(crate) async fn run(args: RunArgs, context: Context) -> anyhow::Result<ExitCode> {
    let path = super::config_path(&args.config);
    if let Some(dir) = &args.working_directory {
        std::env::set_current_dir(dir)
            .with_context(|| format!("cannot change to working directory {}", dir.display()))?;
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        config = %path.display(),
        service = args.service.as_deref().unwrap_or("runnel"),
        "Starting runnel"
    );
    let journal = journal_dir(args.journal_dir.as_deref(), &path);
    let source = FileConfigSource::new(
        path,
        None,
        Overrides {
            user: args.user.clone(),
            concurrent: None,
        },
    );
    let options = RunOptions {
        listen_address: args.listen_address.clone(),
        journal_dir: Some(journal),
        on_idle: idle_hook(),
        ..RunOptions::default()
    };
    serve(Arc::new(source), options, context).await
}

pub(crate) async fn run_single(args: RunSingleArgs, context: Context) -> anyhow::Result<ExitCode> {
    let path = super::config_path(&args.config);
    let options = RunOptions {
        max_builds: (args.max_builds > 0).then_some(args.max_builds),
        wait_timeout: (args.wait_timeout > 0).then(|| Duration::from_secs(args.wait_timeout)),
        listen_address: None,
        journal_dir: Some(journal_dir(args.journal_dir.as_deref(), &path)),
        on_idle: idle_hook(),
        ..RunOptions::default()
    };
    let source: Arc<dyn ConfigSource> = match &args.runner_name {
        Some(name) => Arc::new(FileConfigSource::new(
            path,
            Some(name.clone()),
            Overrides {
                user: None,
                concurrent: Some(1),
            },
        )),
        None => Arc::new(FixedConfigSource::new(config_from_flags(&args, &path)?)),
    };
    serve(source, options, context).await
}

/// An idle daemon gives back the executable's pages start-up and jobs touched, and free heap
/// (docs/performance.md, "Idle memory").
fn idle_hook() -> Option<runnel_service::IdleHook> {
    let trimmer = crate::memory::Trimmer::new()?;
    Some(runnel_service::IdleHook(Arc::new(move || {
        trimmer.trim();
    })))
}

async fn serve(
    source: Arc<dyn ConfigSource>,
    options: RunOptions,
    context: Context,
) -> anyhow::Result<ExitCode> {
    let levels = context.levels.clone();
    let level_from_cli = context.level_from_cli;
    let on_reload = Box::new(move |config: &ServiceConfig| {
        if level_from_cli {
            return;
        }
        if let Some(level) = config.log_level.as_deref() {
            match logging::parse_level(level) {
                Some(level) => levels.set(level),
                None => tracing::warn!(
                    log_level = level,
                    "unknown log_level in config.toml; ignored"
                ),
            }
        }
    });
    runnel_service::run(source, options, on_reload)
        .await
        .context("runner stopped with an error")?;
    tracing::info!("runnel stopped");
    Ok(ExitCode::SUCCESS)
}

/// The job journal directory: the flag's, or `runnel-journal` beside config.toml.
fn journal_dir(flag: Option<&std::path::Path>, config: &std::path::Path) -> std::path::PathBuf {
    flag.map_or_else(
        || {
            config
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or_else(|| std::path::Path::new("."))
                .join("runnel-journal")
        },
        std::path::Path::to_path_buf,
    )
}

/// `run-single` without `--runner`: one runner described entirely by flags. The flags become a
/// `[[runners]]` entry exactly as `register` would write it, parsed and validated by the
/// config parser, so every executor section (`--docker-*`, `--cache-*`, …) works from flags.
fn config_from_flags(
    args: &RunSingleArgs,
    path: &std::path::Path,
) -> anyhow::Result<ServiceConfig> {
    let runner = &args.runner;
    let (Some(url), Some(token), Some(executor)) = (&runner.url, &runner.token, &runner.executor)
    else {
        bail!(
            "run-single needs --url, --token and --executor (or --runner NAME to take a runner from config.toml)"
        );
    };
    if let Some(shell) = runner
        .shell
        .as_deref()
        .filter(|s| !matches!(*s, "bash" | "sh"))
    {
        bail!("shell {shell:?} is not supported by Runnel (only bash and sh)");
    }
    let system_id = super::system_id(path)?;
    let kind: runnel_config::Executor = executor
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown executor {executor:?}"))?;
    let name = runner
        .name
        .clone()
        .unwrap_or_else(|| "run-single".to_owned());
    let mut new = runnel_config::NewRunner::new(name, url, RunnerToken::new(token.clone()), kind);
    let number = |value: Option<i64>, flag: &str| -> anyhow::Result<Option<u32>> {
        value
            .map(|v| u32::try_from(v).with_context(|| format!("{flag} {v} is out of range")))
            .transpose()
    };
    new.limit = number(runner.limit, "--limit")?;
    new.output_limit = number(runner.output_limit, "--output-limit")?;
    new.request_concurrency = number(runner.request_concurrency, "--request-concurrency")?;
    new.shell = runner
        .shell
        .as_deref()
        .map(|shell| {
            shell
                .parse()
                .map_err(|_| anyhow::anyhow!("unknown shell {shell:?}"))
        })
        .transpose()?;
    super::register::copy_runner_settings(runner, &mut new);
    let set = |new: &mut runnel_config::NewRunner, key: &str, value: toml::Value| {
        crate::runner_flags::set_key(new, key, value);
    };
    if executor.starts_with("docker") {
        // The docker section exists for a docker runner even when no flag fills it.
        set(
            &mut new,
            "docker.privileged",
            runner.docker_privileged.into(),
        );
        set(
            &mut new,
            "docker.disable_cache",
            runner.docker_disable_cache.into(),
        );
    }
    for (key, value) in [
        ("docker.image", &runner.docker_image),
        ("docker.network_mode", &runner.docker_network_mode),
        ("docker.host", &runner.docker_host),
        ("docker.helper_image", &runner.docker_helper_image),
        ("ssh.host", &runner.ssh_host),
        ("ssh.port", &runner.ssh_port),
        ("ssh.user", &runner.ssh_user),
        ("ssh.password", &runner.ssh_password),
        ("ssh.identity_file", &runner.ssh_identity_file),
        ("custom.run_exec", &runner.custom_run_exec),
    ] {
        if let Some(value) = value {
            set(&mut new, key, value.clone().into());
        }
    }
    if !runner.docker_volumes.is_empty() {
        set(
            &mut new,
            "docker.volumes",
            runner.docker_volumes.clone().into(),
        );
    }
    if !runner.docker_pull_policy.is_empty() {
        set(
            &mut new,
            "docker.pull_policy",
            runner.docker_pull_policy.clone().into(),
        );
    }
    runner
        .settings
        .apply(&mut new)
        .context("invalid runner setting")?;
    let mut file = runnel_config::ConfigFile::parse(path, "", runnel_config::process_env)
        .context("cannot start a configuration")?;
    file.add_runner(&new)
        .context("the runner flags do not make a valid [[runners]] entry")?;
    for warning in file.warnings() {
        tracing::warn!("{warning}");
    }
    let config = file
        .config()
        .runners
        .first()
        .context("the runner flags made no [[runners]] entry")?;
    let mut spec = RunnerSpec::from_config(config);
    spec.find_host_certificates(&runnel_config::certificate_dirs(path));
    Ok(ServiceConfig {
        concurrent: 1,
        check_interval: Duration::from_secs(3),
        shutdown_timeout: Duration::from_secs(30),
        log_level: None,
        listen_address: None,
        user: None,
        system_id,
        runners: vec![spec],
    })
}
