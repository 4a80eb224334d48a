//! `runnel reset-token`: rotates runner authentication tokens now and saves the new ones.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use runnel_types::Secret;
use time::OffsetDateTime;

use crate::cli::ResetTokenArgs;

pub(crate) async fn run(args: ResetTokenArgs) -> anyhow::Result<ExitCode> {
    let path = super::config_path(&args.config);
    let mut file = super::load_config(&path)?;
    let selected: Vec<usize> =
        file.config()
            .runners
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                args.all_runners
                    || args.name.as_ref().is_some_and(|name| name == &r.name)
                    || (args.id.is_some_and(|id| Some(id) == r.id)
                        && args.url.as_ref().is_none_or(|url| {
                            url.trim_end_matches('/') == r.url.trim_end_matches('/')
                        }))
            })
            .map(|(i, _)| i)
            .collect();
    if selected.is_empty() {
        bail!(
            "no matching runner in {}: use --name, --url with --id, or --all-runners",
            path.display()
        );
    }
    let pat = args.pat.map(Secret::new);
    for index in selected {
        let runner = file.config().runners[index].clone();
        let client = super::runner_client(&runner, &path)?;
        let reset = match &pat {
            Some(pat) => {
                let Some(id) = runner.id else {
                    bail!(
                        "runner {:?} has no id in {}; --pat needs it",
                        runner.name,
                        path.display()
                    );
                };
                client.reset_token_with_pat(id, pat).await
            }
            None => client.reset_token(&runner.token).await,
        }
        .with_context(|| format!("cannot reset the token of runner {}", runner.token.short()))?;
        let now = OffsetDateTime::now_utc();
        let obtained = now.replace_nanosecond(0).unwrap_or(now);
        file.set_runner_token(index, &reset.token, obtained, reset.token_expires_at)?;
        file.save()
            .with_context(|| format!("cannot save {}", path.display()))?;
        tracing::info!(runner = %reset.token.short(), name = %runner.name, "runner token reset");
    }
    Ok(ExitCode::SUCCESS)
}
