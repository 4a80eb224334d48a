//! Floors: what no runner can beat on this machine, a bare `bash -c true` spawn and a bare
//! loopback HTTP round trip to the fake coordinator.
//!
//! The HTTP floor is a `POST /api/v4/jobs/request` that the fake answers 204 at once (long
//! polling off), on a kept-alive connection, so it is the cost of one API call minus connection
//! setup. It does not include TLS, which a real GitLab adds.

use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, FakeGitlab};
use serde_json::json;
use tokio::time::Instant;

use super::{Plan, millis};
use crate::error::BenchError;
use crate::report::Report;

pub(super) async fn run(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    for sample in bash_spawns(plan.floor_samples).await? {
        report.record("floor_bash_spawn_ms", sample);
    }
    for sample in http_round_trips(plan.floor_samples).await? {
        report.record("floor_http_rtt_ms", sample);
    }
    Ok(())
}

/// `count` timings of spawning and reaping `bash -c true`, in ms.
pub(super) async fn bash_spawns(count: u32) -> Result<Vec<f64>, BenchError> {
    let mut samples = Vec::new();
    for _ in 0..count {
        let start = Instant::now();
        let status = tokio::process::Command::new("bash")
            .args(["-c", "true"])
            .status()
            .await
            .map_err(|source| BenchError::Spawn {
                path: "bash".into(),
                source,
            })?;
        samples.push(millis(start.elapsed()));
        if !status.success() {
            return Err(BenchError::Missing(format!(
                "`bash -c true` exited {status}"
            )));
        }
    }
    Ok(samples)
}

/// `count` timings of a 204 job request to a fresh fake, in ms (after one warm-up request).
pub(super) async fn http_round_trips(count: u32) -> Result<Vec<f64>, BenchError> {
    let fake = FakeGitlab::start(FakeConfig {
        long_poll: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await
    .map_err(BenchError::fake("starting"))?;
    let url = format!("{}/api/v4/jobs/request", fake.url());
    let token = fake.create_runner_token();
    let body = json!({
        "token": token,
        "system_id": "s_runnelbench1",
        "info": { "name": "runnel-bench", "features": {} },
    })
    .to_string();
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for i in 0..=count {
        let start = Instant::now();
        let response = client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("RUNNER-TOKEN", &token)
            .body(body.clone())
            .send()
            .await
            .map_err(|source| BenchError::Http {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        response.bytes().await.map_err(|source| BenchError::Http {
            url: url.clone(),
            source,
        })?;
        if status.as_u16() != 204 {
            return Err(BenchError::Missing(format!(
                "the fake answered {status} to the floor job request, expected 204"
            )));
        }
        if i > 0 {
            samples.push(millis(start.elapsed()));
        }
    }
    fake.shutdown().await;
    Ok(samples)
}
