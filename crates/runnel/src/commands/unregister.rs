//! `runnel unregister`: removes runners from GitLab and from config.toml.
//!
//! Select with `--name`, `--all-runners`, or `--url` + `--token`. A runner registered with a
//! `glrt-` token is unregistered as a runner manager (`DELETE /runners/managers` with this
//! machine's system id), as the official runner does; legacy runners with `DELETE /runners`.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use runnel_api::Client;
use runnel_types::RunnerToken;

use crate::cli::UnregisterArgs;

pub(crate) async fn run(args: UnregisterArgs) -> anyhow::Result<ExitCode> {
    let path = super::config_path(&args.config);
    let mut file = super::load_config(&path)?;
    let system_id = super::system_id(&path)?;

    let selected: Vec<usize> = {
        let runners = &file.config().runners;
        if args.all_runners {
            (0..runners.len()).collect()
        } else if let Some(name) = &args.name {
            let found: Vec<usize> = runners
                .iter()
                .enumerate()
                .filter(|(_, r)| &r.name == name)
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() {
                bail!("no runner named {name:?} in {}", path.display());
            }
            found
        } else if let (Some(url), Some(token)) = (&args.url, &args.token) {
            let found: Vec<usize> = runners
                .iter()
                .enumerate()
                .filter(|(_, r)| r.token.expose() == token && same_url(&r.url, url))
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() {
                // Not in the config: unregister it on GitLab only.
                let client = super::client_for(url, None, None, None, Some(&path))?;
                let token = RunnerToken::new(token.clone());
                unregister_one(&client, &token, &system_id).await?;
                return Ok(ExitCode::SUCCESS);
            }
            found
        } else {
            bail!(
                "say which runner to unregister: --name NAME, --all-runners, or --url URL --token TOKEN"
            );
        }
    };

    let mut failures = 0usize;
    let mut done = Vec::new();
    for index in selected {
        let runner = &file.config().runners[index];
        let client = super::runner_client(runner, &path)?;
        match unregister_one(&client, &runner.token, &system_id).await {
            Ok(()) => done.push(index),
            Err(error) => {
                tracing::error!(runner = %runner.token.short(), name = %runner.name, "{error:#}");
                failures += 1;
            }
        }
    }
    for index in done.iter().rev() {
        file.remove_runner(*index)?;
    }
    if !done.is_empty() {
        file.save()
            .with_context(|| format!("cannot save {}", path.display()))?;
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn unregister_one(
    client: &Client,
    token: &RunnerToken,
    system_id: &str,
) -> anyhow::Result<()> {
    if token.is_authentication_token() {
        client.unregister_runner_manager(token, system_id).await
    } else {
        client.unregister_runner(token).await
    }
    .with_context(|| format!("cannot unregister runner {}", token.short()))?;
    tracing::info!(runner = %token.short(), "Unregistering runner from GitLab succeeded");
    Ok(())
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}
