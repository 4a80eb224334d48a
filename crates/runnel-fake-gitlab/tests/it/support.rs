//! Shared helpers: a client, a runner's `info` object, and one-liners for the endpoints.

use std::time::Duration;

use reqwest::{Client, Response};
use runnel_fake_gitlab::{FakeConfig, FakeGitlab};
use serde_json::{Value, json};

pub(crate) const SYSTEM_ID: &str = "s_760931104d8c";
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn start() -> FakeGitlab {
    start_with(FakeConfig::default()).await
}

pub(crate) async fn start_with(config: FakeConfig) -> FakeGitlab {
    FakeGitlab::start(config).await.expect("fake starts")
}

pub(crate) fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client builds")
}

pub(crate) fn info() -> Value {
    json!({
        "name": "gitlab-runner",
        "version": "19.4.0",
        "features": {"trace_checksum": true, "cancel_gracefully": true}
    })
}

pub(crate) fn api(fake: &FakeGitlab, path: &str) -> String {
    format!("{}/api/v4/{path}", fake.url())
}

/// `POST /jobs/request` with the token in header and body.
pub(crate) async fn request_job(
    fake: &FakeGitlab,
    token: &str,
    last_update: Option<&str>,
) -> Response {
    request_job_with(fake.url(), token, last_update).await
}

/// `POST /jobs/request` against a base URL.
pub(crate) async fn request_job_at(base_url: &str, token: &str) -> Response {
    request_job_with(base_url, token, None).await
}

async fn request_job_with(base_url: &str, token: &str, last_update: Option<&str>) -> Response {
    let mut body = json!({"token": token, "system_id": SYSTEM_ID, "info": info()});
    if let Some(last_update) = last_update {
        body["last_update"] = json!(last_update);
    }
    client()
        .post(format!("{base_url}/api/v4/jobs/request"))
        .header("RUNNER-TOKEN", token)
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

/// Picks the next job for a new runner; returns (job id, job token).
pub(crate) async fn take_job(fake: &FakeGitlab) -> (u64, String) {
    let runner = fake.create_runner_token();
    let response = request_job(fake, &runner, None).await;
    assert_eq!(response.status(), 201);
    let payload: Value = response.json().await.expect("json payload");
    let id = payload["id"].as_u64().expect("id");
    let token = payload["token"].as_str().expect("token").to_owned();
    (id, token)
}

pub(crate) async fn put_job(fake: &FakeGitlab, id: u64, token: &str, body: Value) -> Response {
    let mut body = body;
    body["token"] = json!(token);
    body["info"] = info();
    client()
        .put(api(fake, &format!("jobs/{id}")))
        .header("JOB-TOKEN", token)
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

pub(crate) async fn patch_trace(
    fake: &FakeGitlab,
    id: u64,
    token: &str,
    range: &str,
    body: &'static [u8],
) -> Response {
    client()
        .patch(api(fake, &format!("jobs/{id}/trace")))
        .header("JOB-TOKEN", token)
        .header("Content-Range", range)
        .header("Content-Type", "text/plain")
        .body(body)
        .send()
        .await
        .expect("request sent")
}

pub(crate) fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `crc32:%08x` computed independently of the fake.
pub(crate) fn checksum(data: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(data))
}
