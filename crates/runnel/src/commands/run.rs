//! `runnel run` and `runnel run-single`: start the daemon (`runnel-service`).

use std::collections::BTreeMap;
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
        ..RunOptions::default()
    };
    serve(Arc::new(source), options, context).await
}

pub(crate) async fn run_single(args: RunSingleArgs, context: Context) -> anyhow::Result<ExitCode> {
    let options = RunOptions {
        max_builds: (args.max_builds > 0).then_some(args.max_builds),
        wait_timeout: (args.wait_timeout > 0).then(|| Duration::from_secs(args.wait_timeout)),
        listen_address: None,
        ..RunOptions::default()
    };
    let path = super::config_path(&args.config);
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

/// `run-single` without `--runner`: one runner described entirely by flags.
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
    let token = RunnerToken::new(token.clone());
    let spec = RunnerSpec {
        name: runner
            .name
            .clone()
            .unwrap_or_else(|| "run-single".to_owned()),
        url: url.clone(),
        id: 0,
        token,
        token_obtained_at: None,
        token_expires_at: None,
        tls_ca_file: runner.tls_ca_file.clone(),
        tls_cert_file: runner.tls_cert_file.clone(),
        tls_key_file: runner.tls_key_file.clone(),
        limit: usize::try_from(runner.limit.unwrap_or(0)).unwrap_or(0),
        request_concurrency: usize::try_from(runner.request_concurrency.unwrap_or(1))
            .unwrap_or(1)
            .max(1),
        output_limit_bytes: usize::try_from(runner.output_limit.unwrap_or(4096)).unwrap_or(4096)
            * 1024,
        executor: executor.clone(),
        shell: runner.shell.clone(),
        builds_dir: runner.builds_dir.clone().map(Into::into),
        cache_dir: runner.cache_dir.clone().map(Into::into),
        clone_url: runner.clone_url.clone(),
        environment: runner.env.clone(),
        pre_get_sources_script: runner.pre_get_sources_script.clone(),
        post_get_sources_script: runner.post_get_sources_script.clone(),
        pre_build_script: runner.pre_build_script.clone(),
        post_build_script: runner.post_build_script.clone(),
        feature_flags: BTreeMap::new(),
        custom_build_dir_enabled: false,
        debug_trace_disabled: false,
        strict_check_interval: false,
        unhealthy_requests_limit: 3,
        unhealthy_interval: Duration::from_secs(300),
        final_update_retry_limit: 10,
        config: None,
    };
    let mut spec = spec;
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
