//! Runner endpoints: register, verify, unregister, token resets.

use std::collections::BTreeMap;

use runnel_api::{Features, RegisterRequest, RunnerInfo, VerifyRequest};
use runnel_types::{RunnerToken, Secret};
use serde_json::json;
use time::macros::datetime;

use crate::support::{Reply, TestServer, without_port};

fn docker_info() -> RunnerInfo {
    RunnerInfo {
        executor: "docker".to_owned(),
        shell: "bash".to_owned(),
        labels: BTreeMap::from([("env".to_owned(), "ci".to_owned())]),
        features: Features::network_client() | Features::shell() | Features::docker_executor(),
        gpus: String::new(),
    }
}

#[tokio::test]
async fn verify_sends_token_twice_and_full_info() {
    let server = TestServer::start().await;
    server.reply(Reply::status(200).json(&json!({
        "id": 54321, "token": "glrt-new", "token_expires_at": "2684-10-16T13:25:59Z",
    })));
    let token = RunnerToken::new("glrt-secret-token");
    let info = docker_info();
    let verified = server
        .client()
        .verify_runner(&VerifyRequest {
            token: &token,
            system_id: "s_0123456789ab",
            info: &info,
        })
        .await
        .unwrap();
    assert_eq!(verified.id, Some(54321));
    assert_eq!(verified.token.expose(), "glrt-new");
    assert_eq!(
        verified.token_expires_at,
        Some(datetime!(2684-10-16 13:25:59 UTC))
    );

    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/v4/runners/verify");
    assert_eq!(request.header("runner-token"), Some("glrt-secret-token"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("accept"), Some("application/json"));
    let user_agent = request.header("user-agent").unwrap();
    assert!(user_agent.starts_with("runnel "), "{user_agent}");
    let request_id = request.header("x-request-id").unwrap();
    assert_eq!(request_id.len(), 32, "{request_id}");
    assert!(request_id.chars().all(|c| c.is_ascii_hexdigit()));

    let mut body = request.json();
    body["info"]["version"] = json!("[VERSION]");
    body["info"]["revision"] = json!("[REVISION]");
    body["info"]["platform"] = json!("[OS]");
    body["info"]["architecture"] = json!("[ARCH]");
    insta::assert_json_snapshot!(body);
}

#[tokio::test]
async fn verify_accepts_a_legacy_plain_text_answer() {
    let server = TestServer::start().await;
    server.reply(Reply::status(200).text("ok"));
    let token = RunnerToken::new("legacy-token");
    let verified = server
        .client()
        .verify_runner(&VerifyRequest {
            token: &token,
            system_id: "s_0123456789ab",
            info: &RunnerInfo::default(),
        })
        .await
        .unwrap();
    assert_eq!(verified.id, None);
    assert_eq!(verified.token, token);
    assert_eq!(verified.token_expires_at, None);
}

#[tokio::test]
async fn verify_with_an_invalid_token_names_the_request_but_not_the_token() {
    let server = TestServer::start().await;
    server.reply(Reply::status(403).text("403 Forbidden"));
    let token = RunnerToken::new("glrt-very-secret");
    let error = server
        .client()
        .verify_runner(&VerifyRequest {
            token: &token,
            system_id: "s_0123456789ab",
            info: &RunnerInfo::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(403));
    let message = without_port(&error.to_string(), &server);
    assert!(!message.contains("very-secret"));
    insta::assert_snapshot!(message, @"request to POST http://127.0.0.1:[PORT]/api/v4/runners/verify failed with 403 Forbidden after 1 attempt");
}

#[tokio::test]
async fn legacy_register_sends_the_registration_fields() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).json(&json!({
        "id": 12, "token": "runner-auth", "token_expires_at": null,
    })));
    let registration = RunnerToken::new("GR1348941registration");
    let tags = ["docker".to_owned(), "linux".to_owned()];
    let registered = server
        .client()
        .register_runner(&RegisterRequest {
            registration_token: &registration,
            description: "my runner",
            maintenance_note: "",
            tags: &tags,
            run_untagged: false,
            locked: true,
            access_level: "ref_protected",
            maximum_timeout: 0,
            paused: false,
            info: &RunnerInfo::default(),
        })
        .await
        .unwrap();
    assert_eq!(registered.id, Some(12));
    assert_eq!(registered.token.expose(), "runner-auth");
    assert_eq!(registered.token_expires_at, None);

    let request = server.only_request();
    assert_eq!(request.path, "/api/v4/runners");
    assert_eq!(
        request.header("runner-token"),
        Some("GR1348941registration")
    );
    let body = request.json();
    assert_eq!(body["token"], "GR1348941registration");
    assert_eq!(body["description"], "my runner");
    assert_eq!(body["tag_list"], "docker,linux");
    assert_eq!(body["locked"], true);
    assert_eq!(body["run_untagged"], false);
    assert_eq!(body["access_level"], "ref_protected");
    assert!(body.get("maintenance_note").is_none());
    assert!(body.get("maximum_timeout").is_none());
    assert_eq!(body["info"]["features"].as_object().unwrap().len(), 31);
    assert_eq!(body["info"]["config"], json!({"gpus": ""}));
}

#[tokio::test]
async fn register_wants_201() {
    let server = TestServer::start().await;
    server.reply(Reply::status(400).json(&json!({"message": {"runner_namespaces.base": ["Maximum number of ci registered group runners (3) exceeded"]}})));
    let registration = RunnerToken::new("GR1348941registration");
    let error = server
        .client()
        .register_runner(&RegisterRequest {
            registration_token: &registration,
            description: "",
            maintenance_note: "",
            tags: &[],
            run_untagged: true,
            locked: true,
            access_level: "",
            maximum_timeout: 3600,
            paused: false,
            info: &RunnerInfo::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(server.only_request().json()["maximum_timeout"], 3600);
}

#[tokio::test]
async fn unregister_and_unregister_manager() {
    let server = TestServer::start().await;
    server
        .reply(Reply::status(204))
        .reply(Reply::status(204))
        .reply(Reply::status(403));
    let client = server.client();
    let token = RunnerToken::new("glrt-abc");
    client.unregister_runner(&token).await.unwrap();
    client
        .unregister_runner_manager(&token, "s_0123456789ab")
        .await
        .unwrap();
    let error = client.unregister_runner(&token).await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(403));

    let requests = server.requests();
    assert_eq!(requests[0].method, "DELETE");
    assert_eq!(requests[0].path, "/api/v4/runners");
    assert_eq!(requests[0].json(), json!({"token": "glrt-abc"}));
    assert_eq!(requests[0].header("runner-token"), Some("glrt-abc"));
    assert_eq!(requests[1].method, "DELETE");
    assert_eq!(requests[1].path, "/api/v4/runners/managers");
    assert_eq!(
        requests[1].json(),
        json!({"token": "glrt-abc", "system_id": "s_0123456789ab"})
    );
}

#[tokio::test]
async fn reset_token_posts_the_token_in_the_body() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).json(&json!({
        "token": "glrt-rotated", "token_expires_at": "2030-01-02T03:04:05Z",
    })));
    let reset = server
        .client()
        .reset_token(&RunnerToken::new("glrt-old"))
        .await
        .unwrap();
    assert_eq!(reset.token.expose(), "glrt-rotated");
    assert_eq!(
        reset.token_expires_at,
        Some(datetime!(2030-01-02 03:04:05 UTC))
    );
    let request = server.only_request();
    assert_eq!(request.path, "/api/v4/runners/reset_authentication_token");
    assert_eq!(request.json(), json!({"token": "glrt-old"}));
}

#[tokio::test]
async fn reset_token_with_pat_uses_private_token_and_no_body() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).json(&json!({"token": "glrt-fresh"})));
    let reset = server
        .client()
        .reset_token_with_pat(77, &Secret::new("glpat-xyz"))
        .await
        .unwrap();
    assert_eq!(reset.token.expose(), "glrt-fresh");
    assert_eq!(reset.token_expires_at, None);
    let request = server.only_request();
    assert_eq!(
        request.path,
        "/api/v4/runners/77/reset_authentication_token"
    );
    assert_eq!(request.header("private-token"), Some("glpat-xyz"));
    assert_eq!(request.header("runner-token"), None);
    assert!(request.body.is_empty());
}

#[tokio::test]
async fn a_bad_expiry_is_an_error_naming_the_value() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).json(&json!({"token": "t", "token_expires_at": "soon"})));
    let error = server
        .client()
        .reset_token(&RunnerToken::new("glrt-old"))
        .await
        .unwrap_err();
    let message = without_port(&error.to_string(), &server);
    insta::assert_snapshot!(message, @"invalid token expiry `soon` in the response to POST http://127.0.0.1:[PORT]/api/v4/runners/reset_authentication_token");
}

#[tokio::test]
async fn a_json_answer_must_be_labelled_json() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).text(r#"{"token":"t"}"#));
    let error = server
        .client()
        .reset_token(&RunnerToken::new("glrt-old"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, runnel_api::ApiError::NotJson { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_legacy_ci_suffix_and_trailing_slash_are_ignored() {
    let server = TestServer::start().await;
    server.reply(Reply::status(204));
    let client = crate::support::client_for(
        &format!("{}/ci/", server.url()),
        crate::support::fast_retry(),
        None,
    );
    client
        .unregister_runner(&RunnerToken::new("glrt-x"))
        .await
        .unwrap();
    assert_eq!(server.only_request().path, "/api/v4/runners");
}
