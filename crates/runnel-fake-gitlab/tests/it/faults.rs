//! Fault injection and the request log.

use std::time::Duration;

use runnel_fake_gitlab::{Endpoint, EndpointFilter, JobBuilder};

use crate::support::{patch_trace, request_job, start, take_job};

#[tokio::test]
async fn fail_next_hits_only_its_endpoint_and_runs_out() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    fake.fail_next(Endpoint::PatchTrace, 2, 502);
    let runner = fake.create_runner_token();
    assert_eq!(
        request_job(&fake, &runner, None).await.status(),
        204,
        "other endpoints unaffected"
    );
    assert_eq!(
        patch_trace(&fake, id, &token, "0-0", b"x").await.status(),
        502
    );
    assert_eq!(
        patch_trace(&fake, id, &token, "0-0", b"x").await.status(),
        502
    );
    assert_eq!(
        patch_trace(&fake, id, &token, "0-0", b"x").await.status(),
        202
    );
    assert_eq!(
        fake.job(id).unwrap().patches.len(),
        1,
        "injected answers never reach the job"
    );
}

#[tokio::test]
async fn fail_for_affects_every_endpoint_while_active() {
    let fake = start().await;
    let runner = fake.create_runner_token();
    fake.fail_for(EndpointFilter::Any, Duration::from_secs(3600), 503);
    assert_eq!(request_job(&fake, &runner, None).await.status(), 503);
    assert_eq!(request_job(&fake, &runner, None).await.status(), 503);
}

#[tokio::test]
async fn dropped_connections_get_no_answer_and_are_logged() {
    let fake = start().await;
    let runner = fake.create_runner_token();
    fake.drop_next(Endpoint::RequestJob, 1);
    let error = crate::support::client()
        .post(crate::support::api(&fake, "jobs/request"))
        .header("RUNNER-TOKEN", &runner)
        .json(&serde_json::json!({"token": runner}))
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_status(), "no HTTP answer: {error}");
    assert_eq!(request_job(&fake, &runner, None).await.status(), 204);

    let log = fake.requests();
    let statuses: Vec<Option<u16>> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [None, Some(204)]);
    assert_eq!(
        log[1].header("runner-token"),
        Some(runner.as_str()),
        "tokens kept for assertions"
    );
    assert!(
        !format!("{:?}", log[1]).contains(&runner),
        "but never in Debug"
    );
    assert_eq!(log[1].endpoint, Some(Endpoint::RequestJob));
    let body = log[1].body_json().expect("JSON body kept");
    assert_eq!(body["token"], runner.as_str());
    assert_eq!(body["info"]["features"]["cancel_gracefully"], true);
}

#[tokio::test]
async fn drop_connections_for_a_while() {
    let fake = start().await;
    fake.drop_connections_for(Duration::from_secs(3600));
    let result = crate::support::client()
        .post(crate::support::api(&fake, "jobs/request"))
        .json(&serde_json::json!({}))
        .send()
        .await;
    assert!(result.is_err());
    let waited = fake
        .wait_for_request(|r| r.status.is_none(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(waited.path, "/api/v4/jobs/request");
}
