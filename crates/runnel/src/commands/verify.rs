//! `runnel verify`: checks every configured runner's token with GitLab; `--delete` removes the
//! runners GitLab no longer knows from config.toml.

use std::process::ExitCode;

use anyhow::Context as _;
use runnel_api::{Features, RunnerInfo, VerifyRequest};

use crate::cli::VerifyArgs;

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let path = super::config_path(&args.config);
    let mut file = super::load_config(&path)?;
    let system_id = super::system_id(&path)?;
    let mut removed = Vec::new();
    let mut failed = 0usize;
    for (index, runner) in file.config().runners.iter().enumerate() {
        if args.name.as_ref().is_some_and(|name| name != &runner.name)
            || args.url.as_ref().is_some_and(|url| url != &runner.url)
            || args
                .token
                .as_ref()
                .is_some_and(|token| token != runner.token.expose())
        {
            continue;
        }
        let client = super::runner_client(runner, &path)?;
        let info = RunnerInfo {
            executor: runner.executor.as_str().to_owned(),
            shell: runner
                .shell
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            features: Features::network_client(),
            ..RunnerInfo::default()
        };
        let request = VerifyRequest {
            token: &runner.token,
            system_id: &system_id,
            info: &info,
        };
        match client.verify_runner(&request).await {
            Ok(_) => {
                tracing::info!(runner = %runner.token.short(), name = %runner.name, "Verifying runner... is valid")
            }
            Err(error) if error.is_forbidden() => {
                tracing::error!(runner = %runner.token.short(), name = %runner.name, "Verifying runner... is removed");
                removed.push(index);
            }
            Err(error) => {
                tracing::error!(runner = %runner.token.short(), name = %runner.name, %error, "Verifying runner... failed");
                failed += 1;
            }
        }
    }
    if args.delete && !removed.is_empty() {
        for index in removed.iter().rev() {
            file.remove_runner(*index)?;
        }
        file.save()
            .with_context(|| format!("cannot save {}", path.display()))?;
        tracing::info!(
            removed = removed.len(),
            "removed runners that GitLab no longer knows"
        );
        removed.clear();
    }
    if failed > 0 || !removed.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
