//! `POST jobs/request` and `PUT jobs/:id`.

use std::time::Duration;

use runnel_api::{
    ApiError, CancellationToken, JobRequest, JobRequestResult, JobUpdate, RemoteStatus, RunnerInfo,
    TraceSummary, UpdateOutcome, UpdateResult,
};
use runnel_types::{FailureReason, JobId, JobState, JobToken, RunnerToken};
use serde_json::json;

use crate::support::{Reply, TestServer};

/// Status, expected outcome, whether the runner counts as unhealthy.
type RequestCase = (u16, fn(&JobRequestResult) -> bool, bool);
/// Reply, expected outcome, expected remote state.
type UpdateCase = (Reply, fn(&UpdateOutcome) -> bool, Option<RemoteStatus>);

const FIXTURE: &[u8] = include_bytes!("../fixtures/job_response.network_gitlab_test.json");

async fn request(client: &runnel_api::Client) -> JobRequestResult {
    let token = RunnerToken::new("glrt-runner");
    let info = RunnerInfo::default();
    client
        .request_job(
            &JobRequest {
                token: &token,
                system_id: "s_0123456789ab",
                info: &info,
            },
            &CancellationToken::new(),
        )
        .await
}

async fn request_once(server: &TestServer) -> JobRequestResult {
    request(&server.client()).await
}

#[tokio::test]
async fn a_201_yields_the_job() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).raw_json(FIXTURE));
    let JobRequestResult::Job(job) = request_once(&server).await else {
        panic!("expected a job");
    };
    assert_eq!(job.id, JobId(10));
    assert_eq!(job.token.expose(), "job-token");

    let request = server.only_request();
    assert_eq!(request.path, "/api/v4/jobs/request");
    assert_eq!(request.header("runner-token"), Some("glrt-runner"));
    assert_eq!(request.header("accept"), Some("application/json"));
    let body = request.json();
    assert_eq!(body["token"], "glrt-runner");
    assert_eq!(body["system_id"], "s_0123456789ab");
    assert!(body.get("last_update").is_none());
    assert_eq!(body["info"]["name"], "runnel");
    assert_eq!(body["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn last_update_is_remembered_and_echoed() {
    let server = TestServer::start().await;
    server
        .reply(Reply::status(204).header("X-GitLab-Last-Update", "queue-v1"))
        .reply(Reply::status(204).header("X-GitLab-Last-Update", "queue-v2"))
        .reply(Reply::status(204));
    let client = server.client();
    for _ in 0..3 {
        assert!(matches!(request(&client).await, JobRequestResult::NoJob));
    }
    let sent: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.json().get("last_update").cloned())
        .collect();
    assert_eq!(
        sent,
        [None, Some(json!("queue-v1")), Some(json!("queue-v2"))]
    );
    assert_eq!(client.last_update().as_deref(), Some("queue-v2"));

    // A clone serves the same runner and shares the state; a new client does not.
    assert_eq!(client.clone().last_update().as_deref(), Some("queue-v2"));
    assert_eq!(server.client().last_update(), None);
}

#[tokio::test]
async fn statuses_map_to_outcomes_and_health() {
    let cases: [RequestCase; 4] = [
        (204, |r| matches!(r, JobRequestResult::NoJob), false),
        (403, |r| matches!(r, JobRequestResult::Forbidden), true),
        (409, |r| matches!(r, JobRequestResult::Conflict), false),
        (
            400,
            |r| matches!(r, JobRequestResult::Failed(e) if e.status().map(|s| s.as_u16()) == Some(400)),
            false,
        ),
    ];
    for (status, expected, unhealthy) in cases {
        let server = TestServer::start().await;
        server.reply(Reply::status(status));
        let result = request_once(&server).await;
        assert!(expected(&result), "{status}: {result:?}");
        assert_eq!(result.is_unhealthy(), unhealthy, "{status}");
        assert_eq!(server.requests().len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn a_503_is_retried_then_reported_unavailable() {
    let server = TestServer::start().await;
    for _ in 0..5 {
        server.reply(Reply::status(503));
    }
    let result = request_once(&server).await;
    assert!(
        matches!(result, JobRequestResult::Unavailable),
        "{result:?}"
    );
    assert!(!result.is_unhealthy());
    assert_eq!(server.requests().len(), 5);
}

#[tokio::test]
async fn a_201_that_is_not_json_fails() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).text("{}"));
    let result = request_once(&server).await;
    assert!(
        matches!(result, JobRequestResult::Failed(ApiError::NotJson { .. })),
        "{result:?}"
    );
    assert!(!result.is_unhealthy());
}

#[tokio::test]
async fn an_undecodable_job_names_its_id_and_the_path() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).json(&json!({
        "id": 4711, "token": "t", "steps": [{"name": "script", "script": [1, 2]}],
    })));
    // Review L7: the job is assigned, so its id and token come back for a failed update.
    let JobRequestResult::Undecodable(job) = request_once(&server).await else {
        panic!("expected an undecodable job");
    };
    assert_eq!(job.id.0, 4711);
    assert_eq!(job.token.expose(), "t");
    insta::assert_snapshot!(job.error.to_string(), @"failed to decode job 4711 at `steps[0].script[0]`");
}

/// Review L7 (`project_id: "18446744073709551615"`): a payload whose identity cannot be read
/// is an ordinary failure.
#[tokio::test]
async fn a_payload_without_a_readable_identity_is_a_failure() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201).json(&json!({
        "id": "x", "steps": [{"name": "script", "script": [1]}],
    })));
    assert!(matches!(
        request_once(&server).await,
        JobRequestResult::Failed(_)
    ));
}

/// Review L6 (`bigbody.py`): a 1.2 GB answer pushed the runner to 2.5 GB RSS.
#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let server = TestServer::start().await;
    let filler = "x".repeat(65 * 1024 * 1024);
    server.reply(Reply::status(201).json(&json!({ "id": 1, "token": "t", "pad": filler })));
    let JobRequestResult::Failed(error) = request_once(&server).await else {
        panic!("expected a failure");
    };
    assert!(
        error.to_string().contains("is larger than 67108864 bytes"),
        "{error}"
    );
}

#[tokio::test]
async fn cancellation_aborts_a_long_poll() {
    let server = TestServer::start().await;
    server.reply(Reply::status(204).delay(Duration::from_secs(120)));
    let client = server.client();
    let cancel = CancellationToken::new();
    let token = RunnerToken::new("glrt-runner");
    let info = RunnerInfo::default();
    let job_request = JobRequest {
        token: &token,
        system_id: "s_0123456789ab",
        info: &info,
    };
    let poll = client.request_job(&job_request, &cancel);
    let canceller = async {
        // Cancel once the server has the request, so the poll is really in flight.
        while server.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(poll, canceller);
    assert!(matches!(result, JobRequestResult::Cancelled), "{result:?}");
}

fn update<'a>(token: &'a JobToken, info: &'a RunnerInfo, state: JobState) -> JobUpdate<'a> {
    JobUpdate {
        job_id: JobId(42),
        token,
        state,
        failure_reason: None,
        exit_code: None,
        output: TraceSummary {
            crc32: 0xbeef,
            bytesize: 1234,
        },
        info,
    }
}

async fn update_once(server: &TestServer, update: &JobUpdate<'_>) -> UpdateResult {
    server.client().update_job(update).await
}

#[tokio::test]
async fn update_sends_state_output_and_both_tokens() {
    let server = TestServer::start().await;
    server.reply(Reply::status(200).header("X-GitLab-Trace-Update-Interval", "10"));
    let token = JobToken::new("glcbt-job");
    let info = RunnerInfo::default();
    let result = update_once(&server, &update(&token, &info, JobState::Running)).await;
    assert!(
        matches!(result.outcome, UpdateOutcome::Succeeded),
        "{result:?}"
    );
    assert_eq!(result.update_interval, Some(Duration::from_secs(10)));
    assert!(!result.cancel_requested());

    let request = server.only_request();
    assert_eq!(request.method, "PUT");
    assert_eq!(request.path, "/api/v4/jobs/42");
    assert_eq!(request.header("job-token"), Some("glcbt-job"));
    let body = request.json();
    assert_eq!(body["token"], "glcbt-job");
    assert_eq!(body["state"], "running");
    assert_eq!(
        body["output"],
        json!({"checksum": "crc32:0000beef", "bytesize": 1234})
    );
    assert!(body.get("failure_reason").is_none());
    assert!(body.get("exit_code").is_none());
    assert_eq!(body["info"]["features"].as_object().unwrap().len(), 31);
}

#[tokio::test]
async fn a_final_failed_update_carries_reason_and_exit_code() {
    let server = TestServer::start().await;
    server.reply(Reply::status(200)).reply(Reply::status(200));
    let token = JobToken::new("glcbt-job");
    let info = RunnerInfo::default();
    let mut failed = update(&token, &info, JobState::Failed);
    failed.failure_reason = Some(FailureReason::ScriptFailure);
    failed.exit_code = Some(3);
    update_once(&server, &failed).await;
    failed.exit_code = Some(0);
    update_once(&server, &failed).await;

    let requests = server.requests();
    let body = requests[0].json();
    assert_eq!(body["state"], "failed");
    assert_eq!(body["failure_reason"], "script_failure");
    assert_eq!(body["exit_code"], 3);
    assert!(
        requests[1].json().get("exit_code").is_none(),
        "exit code 0 is omitted"
    );
}

#[tokio::test]
async fn update_statuses_follow_the_official_evaluation_order() {
    let token = JobToken::new("glcbt-job");
    let info = RunnerInfo::default();
    let cases: Vec<UpdateCase> = vec![
        (
            Reply::status(202),
            |o| matches!(o, UpdateOutcome::Accepted),
            None,
        ),
        (
            Reply::status(412),
            |o| matches!(o, UpdateOutcome::TraceValidationFailed),
            None,
        ),
        (
            Reply::status(403),
            |o| matches!(o, UpdateOutcome::Abort),
            None,
        ),
        (
            Reply::status(404),
            |o| matches!(o, UpdateOutcome::Abort),
            None,
        ),
        (
            Reply::status(200).header("Job-Status", "canceled"),
            |o| matches!(o, UpdateOutcome::Abort),
            Some(RemoteStatus::Canceled),
        ),
        (
            Reply::status(202).header("Job-Status", "failed"),
            |o| matches!(o, UpdateOutcome::Abort),
            Some(RemoteStatus::Failed),
        ),
        (
            Reply::status(200).header("Job-Status", "canceling"),
            |o| matches!(o, UpdateOutcome::Succeeded),
            Some(RemoteStatus::Canceling),
        ),
        (
            Reply::status(400),
            |o| matches!(o, UpdateOutcome::Failed(e) if e.status().map(|s| s.as_u16()) == Some(400)),
            None,
        ),
    ];
    for (reply, expected, remote) in cases {
        let server = TestServer::start().await;
        server.reply(reply.clone());
        let result = update_once(&server, &update(&token, &info, JobState::Running)).await;
        assert!(expected(&result.outcome), "{reply:?}: {result:?}");
        assert_eq!(result.remote_status, remote, "{reply:?}");
        assert_eq!(
            result.cancel_requested(),
            remote == Some(RemoteStatus::Canceling)
        );
    }
}

#[tokio::test]
async fn update_interval_is_capped_and_garbage_ignored() {
    let token = JobToken::new("glcbt-job");
    let info = RunnerInfo::default();
    for (value, expected) in [
        ("86400", Some(Duration::from_secs(15 * 60))),
        ("0", None),
        ("-3", None),
        ("soon", None),
    ] {
        let server = TestServer::start().await;
        server.reply(Reply::status(200).header("X-GitLab-Trace-Update-Interval", value));
        let result = update_once(&server, &update(&token, &info, JobState::Running)).await;
        assert_eq!(result.update_interval, expected, "{value}");
    }
}

#[tokio::test]
async fn an_update_that_keeps_failing_reports_the_attempts() {
    let server = TestServer::start().await;
    for _ in 0..5 {
        server.reply(Reply::status(502));
    }
    let token = JobToken::new("glcbt-job");
    let info = RunnerInfo::default();
    let result = update_once(&server, &update(&token, &info, JobState::Success)).await;
    let UpdateOutcome::Failed(error) = result.outcome else {
        panic!("expected a failure: {result:?}");
    };
    assert!(
        error
            .to_string()
            .ends_with("failed with 502 Bad Gateway after 5 attempts"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 5);
}

#[tokio::test]
async fn a_token_that_cannot_be_a_header_aborts_without_a_request() {
    let server = TestServer::start().await;
    let token = JobToken::new("bad\ntoken");
    let info = RunnerInfo::default();
    let result = update_once(&server, &update(&token, &info, JobState::Running)).await;
    assert!(matches!(result.outcome, UpdateOutcome::Abort), "{result:?}");
    assert!(server.requests().is_empty());

    let runner_token = RunnerToken::new("bad\ntoken");
    let result = server
        .client()
        .request_job(
            &JobRequest {
                token: &runner_token,
                system_id: "s_0123456789ab",
                info: &info,
            },
            &CancellationToken::new(),
        )
        .await;
    assert!(result.is_unhealthy(), "{result:?}");
    let JobRequestResult::Failed(error) = result else {
        panic!("expected a failure");
    };
    assert!(!error.to_string().contains("bad\ntoken"));
}
