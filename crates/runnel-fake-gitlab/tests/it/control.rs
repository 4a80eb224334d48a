//! The `/__fake/` JSON control API.

use serde_json::{Value, json};

use crate::support::{client, patch_trace, request_job, start};

#[tokio::test]
async fn jobs_are_created_read_and_canceled_through_json() {
    let fake = start().await;
    let base = format!("{}/__fake", fake.url());
    let response = client()
        .post(format!("{base}/runner-tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let runner: Value = response.json().await.unwrap();
    let runner_token = runner["token"].as_str().unwrap().to_owned();
    assert!(runner_token.starts_with("glrt-"));

    let spec = json!({
        "name": "bench",
        "script": ["echo hi"],
        "variables": [{"key": "SECRET", "value": "s3cr3t-value", "masked": true}],
        "git_strategy": "none",
    });
    let response = client()
        .post(format!("{base}/jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();

    let response = request_job(&fake, &runner_token, None).await;
    let payload: Value = response.json().await.unwrap();
    let variables = payload["variables"].as_array().unwrap();
    assert!(variables.contains(
        &json!({"key": "SECRET", "value": "s3cr3t-value", "public": false, "masked": true})
    ));
    assert!(variables.contains(
        &json!({"key": "GIT_STRATEGY", "value": "none", "public": true, "masked": false})
    ));
    let job_token = payload["token"].as_str().unwrap();
    patch_trace(&fake, id, job_token, "0-2", b"hi\n").await;

    let response = client()
        .post(format!("{base}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let view: Value = client()
        .get(format!("{base}/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "canceling");
    assert_eq!(view["trace"], "hi\n");
    assert_eq!(view["trace_bytes"], 3);
    assert_eq!(view["patches"][0]["end"], 2);

    let log: Value = client()
        .get(format!("{base}/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/api/v4/jobs/request", &format!("/api/v4/jobs/{id}/trace")],
        "control calls are not logged"
    );
}

#[tokio::test]
async fn raw_payloads_keep_their_token_and_get_a_fresh_id() {
    let fake = start().await;
    let raw = json!({"raw": {"id": 10, "token": "job-token", "steps": []}});
    let response = client()
        .post(format!("{}/__fake/jobs", fake.url()))
        .json(&raw)
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let payload = fake.job_payload(id).unwrap();
    assert_eq!(payload["id"], json!(id));
    assert_eq!(payload["token"], "job-token");
    assert_eq!(fake.job(id).unwrap().token.expose(), "job-token");
}

#[tokio::test]
async fn bad_control_requests_say_what_is_wrong() {
    let fake = start().await;
    let response = client()
        .post(format!("{}/__fake/jobs", fake.url()))
        .json(&json!({"name": "x", "scirpt": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let message = response.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("scirpt"), "{message}");

    let response = client()
        .post(format!("{}/__fake/faults", fake.url()))
        .json(&json!({"endpoint": "patch_trace", "status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "neither count nor duration");
}
