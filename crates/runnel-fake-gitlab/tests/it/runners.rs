//! Runner endpoints: registration, verify, unregister, token reset.

use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, RunnerKind};
use serde_json::{Value, json};

use crate::support::{SYSTEM_ID, api, client, info, start, start_with};

async fn post_runner_json(
    url: String,
    method: reqwest::Method,
    token: &str,
    body: Value,
) -> reqwest::Response {
    client()
        .request(method, url)
        .header("RUNNER-TOKEN", token)
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn legacy_registration_creates_an_unprefixed_token_and_records_settings() {
    let fake = start().await;
    fake.add_registration_token("GR1348941regtoken");
    let body = json!({
        "token": "GR1348941regtoken",
        "description": "ci box",
        "tag_list": "docker, linux",
        "run_untagged": false,
        "locked": false,
        "maximum_timeout": 600,
        "info": info(),
    });
    let response = post_runner_json(
        api(&fake, "runners"),
        reqwest::Method::POST,
        "GR1348941regtoken",
        body,
    )
    .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(
        !token.starts_with("glrt-"),
        "legacy tokens carry no prefix: {token}"
    );
    assert_eq!(created["token_expires_at"], Value::Null);

    let runner = fake.runner(created["id"].as_u64().unwrap()).unwrap();
    assert_eq!(runner.kind, RunnerKind::Legacy);
    assert_eq!(runner.token.expose(), token);
    assert_eq!(runner.description, "ci box");
    assert_eq!(runner.tags, ["docker", "linux"]);
    assert!(!runner.run_untagged);
    assert!(!runner.locked);
    assert_eq!(runner.maximum_timeout, Some(600));
}

#[tokio::test]
async fn registration_rejects_unknown_tokens_and_bad_bodies() {
    let fake = start().await;
    fake.add_registration_token("regtoken");
    let url = api(&fake, "runners");

    let unknown = json!({"token": "nope"});
    let response = post_runner_json(url.clone(), reqwest::Method::POST, "nope", unknown).await;
    assert_eq!(response.status(), 403);

    let untagged_without_tags = json!({"token": "regtoken", "run_untagged": false});
    let response = post_runner_json(
        url.clone(),
        reqwest::Method::POST,
        "regtoken",
        untagged_without_tags,
    )
    .await;
    assert_eq!(response.status(), 400);

    let response = client()
        .post(url.clone())
        .header("RUNNER-TOKEN", "regtoken")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let message: Value = response.json().await.unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column 2"),
        "{message}"
    );

    let response = client()
        .post(url)
        .header("RUNNER-TOKEN", "regtoken")
        .body(r#"{"token":"regtoken"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        415,
        "JSON without Content-Type is refused"
    );
}

#[tokio::test]
async fn runner_token_header_must_be_sent_and_match_the_body() {
    let fake = start().await;
    let token = fake.create_runner_token();
    let body = json!({"token": token, "system_id": SYSTEM_ID, "info": info()});

    let missing = client()
        .post(api(&fake, "runners/verify"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 403);

    let other = post_runner_json(
        api(&fake, "runners/verify"),
        reqwest::Method::POST,
        "glrt-other",
        body,
    )
    .await;
    assert_eq!(other.status(), 403);
}

#[tokio::test]
async fn verify_requires_system_id_for_glrt_tokens_and_records_the_manager() {
    let fake = start().await;
    let created = fake.create_runner(Default::default());
    let token = created.token.expose();
    let url = api(&fake, "runners/verify");

    let without = json!({"token": token, "info": info()});
    let response = post_runner_json(url.clone(), reqwest::Method::POST, token, without).await;
    assert_eq!(response.status(), 400);

    let malformed = json!({"token": token, "system_id": "s_short", "info": info()});
    let response = post_runner_json(url.clone(), reqwest::Method::POST, token, malformed).await;
    assert_eq!(response.status(), 400);

    let good = json!({"token": token, "system_id": SYSTEM_ID, "info": info()});
    let response = post_runner_json(url.clone(), reqwest::Method::POST, token, good).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], json!(created.id));
    assert_eq!(body["token"], json!(token));
    assert_eq!(fake.runner(created.id).unwrap().managers, [SYSTEM_ID]);

    let unknown = json!({"token": "glrt-unknown", "system_id": SYSTEM_ID, "info": info()});
    let response = post_runner_json(url, reqwest::Method::POST, "glrt-unknown", unknown).await;
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn unregistering_a_manager_keeps_the_token_but_unregistering_the_runner_does_not() {
    let fake = start().await;
    let token = fake.create_runner_token();
    let verify = json!({"token": token, "system_id": SYSTEM_ID, "info": info()});
    let response = post_runner_json(
        api(&fake, "runners/verify"),
        reqwest::Method::POST,
        &token,
        verify.clone(),
    )
    .await;
    assert_eq!(response.status(), 200);

    let manager = json!({"token": token, "system_id": SYSTEM_ID});
    let url = api(&fake, "runners/managers");
    let response = post_runner_json(
        url.clone(),
        reqwest::Method::DELETE,
        &token,
        manager.clone(),
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = post_runner_json(url, reqwest::Method::DELETE, &token, manager).await;
    assert_eq!(response.status(), 404, "the manager is gone");

    let response = post_runner_json(
        api(&fake, "runners/verify"),
        reqwest::Method::POST,
        &token,
        verify.clone(),
    )
    .await;
    assert_eq!(response.status(), 200, "token still valid");

    let response = post_runner_json(
        api(&fake, "runners"),
        reqwest::Method::DELETE,
        &token,
        json!({"token": token}),
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = post_runner_json(
        api(&fake, "runners/verify"),
        reqwest::Method::POST,
        &token,
        verify,
    )
    .await;
    assert_eq!(response.status(), 403, "token removed");
}

#[tokio::test]
async fn token_reset_invalidates_the_old_token_and_sets_an_expiry() {
    let fake = start_with(FakeConfig {
        token_lifetime: Some(Duration::from_secs(3600)),
        ..FakeConfig::default()
    })
    .await;
    let old = fake.create_runner_token();
    let response = client()
        .post(api(&fake, "runners/reset_authentication_token"))
        .json(&json!({"token": old}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let new = body["token"].as_str().unwrap();
    assert!(new.starts_with("glrt-") && new != old);
    let expires_at = body["token_expires_at"].as_str().unwrap();
    time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 expiry");

    let verify = |token: &str| json!({"token": token, "system_id": SYSTEM_ID, "info": info()});
    let url = api(&fake, "runners/verify");
    let response = post_runner_json(url.clone(), reqwest::Method::POST, &old, verify(&old)).await;
    assert_eq!(response.status(), 403);
    let response = post_runner_json(url, reqwest::Method::POST, new, verify(new)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn token_reset_with_a_personal_access_token() {
    let fake = start().await;
    fake.add_personal_access_token("glpat-admin");
    let runner = fake.create_runner(Default::default());
    let url = api(
        &fake,
        &format!("runners/{}/reset_authentication_token", runner.id),
    );

    let response = client()
        .post(url.clone())
        .header("PRIVATE-TOKEN", "glpat-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client()
        .post(url)
        .header("PRIVATE-TOKEN", "glpat-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        fake.runner(runner.id).unwrap().token.expose(),
        body["token"].as_str().unwrap()
    );

    let response = client()
        .post(api(&fake, "runners/999/reset_authentication_token"))
        .header("PRIVATE-TOKEN", "glpat-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
