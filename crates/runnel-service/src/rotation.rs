//! Token rotation: a runner's authentication token is renewed at 75 % of its life and the new
//! token saved to the configuration (reference 1.6).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::daemon::Shared;
use crate::settings::{ConfigSource, RunnerSpec};

/// Fraction of a token's life after which it is renewed.
const RESET_FACTOR: f64 = 0.75;
/// How often the rotation task looks again when nothing is due.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// Pause after a failed rotation before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// When `runner`'s token should be renewed, if it expires at all.
pub(crate) fn reset_due(runner: &RunnerSpec) -> Option<OffsetDateTime> {
    let expires = runner.token_expires_at?;
    let obtained = runner.token_obtained_at.unwrap_or(expires);
    let life = (expires - obtained).as_seconds_f64().max(0.0);
    Some(obtained + time::Duration::seconds_f64(life * RESET_FACTOR))
}

/// Runs until aborted: renews every token when it is due.
pub(crate) async fn rotate_tokens(shared: Arc<Shared>, source: Arc<dyn ConfigSource>) {
    loop {
        let config = shared.config();
        let now = OffsetDateTime::now_utc();
        let next = config
            .runners
            .iter()
            .filter(|r| !r.token.is_empty())
            .filter_map(|r| reset_due(r).map(|at| (at, r.clone())))
            .min_by_key(|(at, _)| *at);
        let Some((due, runner)) = next else {
            tokio::time::sleep(IDLE_RECHECK).await;
            continue;
        };
        if due > now {
            let wait = (due - now)
                .try_into()
                .unwrap_or(IDLE_RECHECK)
                .min(IDLE_RECHECK);
            tokio::time::sleep(wait).await;
            continue;
        }
        if runner
            .feature_flags
            .get("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION")
            .copied()
            .unwrap_or(false)
        {
            tracing::info!(runner = %runner.token.short(), "automatic token rotation is disabled; token should be rotated");
            tokio::time::sleep(IDLE_RECHECK).await;
            continue;
        }
        if let Err(error) = rotate_one(&runner, &config.system_id, source.as_ref()).await {
            tracing::error!(runner = %runner.token.short(), %error, "token rotation failed; will retry");
            tokio::time::sleep(RETRY_AFTER).await;
        } else {
            // Poll with the new token at once rather than at the next reload check.
            match source.load() {
                Ok(config) => {
                    if let Err(error) = crate::daemon::apply_config(&shared, config) {
                        tracing::error!(%error, "cannot apply the configuration after token rotation");
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot reload the configuration after token rotation");
                }
            }
        }
    }
}

async fn rotate_one(
    runner: &RunnerSpec,
    system_id: &str,
    source: &dyn ConfigSource,
) -> Result<(), String> {
    let client = crate::daemon::build_client(runner, system_id).map_err(|e| e.to_string())?;
    let reset = client
        .reset_token(&runner.token)
        .await
        .map_err(|e| e.to_string())?;
    let obtained = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    let saved = source.save_token(
        &runner.token,
        &reset.token,
        obtained,
        reset.token_expires_at,
    );
    crate::metrics::configuration_saved(saved.is_ok());
    saved.map_err(|e| e.to_string())?;
    tracing::info!(runner = %reset.token.short(), "runner token rotated and saved");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_three_quarters_of_the_life() {
        let obtained = time::macros::datetime!(2026-01-01 00:00 UTC);
        let expires = time::macros::datetime!(2026-01-05 00:00 UTC);
        let spec = crate::settings::tests::runner_spec_for_tests(Some(obtained), Some(expires));
        assert_eq!(
            reset_due(&spec),
            Some(time::macros::datetime!(2026-01-04 00:00 UTC))
        );
        let never = crate::settings::tests::runner_spec_for_tests(None, None);
        assert_eq!(reset_due(&never), None);
    }
}
