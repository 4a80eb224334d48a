//! `POST /jobs/request` (long polling, targeting, conflicts) and `PUT /jobs/:id`.

use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, JobBuilder, RemoteStatus, RunnerSettings};
use serde_json::{Value, json};

use crate::support::{
    SYSTEM_ID, WAIT, api, checksum, client, header, info, patch_trace, put_job, request_job, start,
    start_with, take_job,
};

#[tokio::test]
async fn no_job_is_204_with_last_update_and_a_queued_job_is_201() {
    let fake = start().await;
    let runner = fake.create_runner_token();
    let response = request_job(&fake, &runner, None).await;
    assert_eq!(response.status(), 204);
    let version = header(&response, "X-GitLab-Last-Update")
        .unwrap()
        .to_owned();
    assert_eq!(version, fake.queue_version());

    let id = fake.enqueue(JobBuilder::new("build").script(["echo hi"]));
    assert_ne!(
        fake.queue_version(),
        version,
        "enqueue bumps the queue version"
    );
    let response = request_job(&fake, &runner, Some(&version)).await;
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "Content-Type"), Some("application/json"));
    let payload: Value = response.json().await.unwrap();
    assert_eq!(payload["id"], json!(id));
    let job = fake.job(id).unwrap();
    assert_eq!(payload["token"].as_str(), Some(job.token.expose()));
    assert_eq!(job.status, RemoteStatus::Running);
    assert!(
        payload["git_info"]["repo_url"]
            .as_str()
            .unwrap()
            .contains(&format!("gitlab-ci-token:{}@", job.token.expose()))
    );

    let response = request_job(&fake, &runner, None).await;
    assert_eq!(response.status(), 204, "a job is handed out once");
}

#[tokio::test]
async fn job_request_validates_the_body() {
    let fake = start().await;
    let runner = fake.create_runner_token();
    let send = |body: Value| {
        client()
            .post(api(&fake, "jobs/request"))
            .header("RUNNER-TOKEN", &runner)
            .json(&body)
            .send()
    };
    let response = send(json!({"token": runner, "info": info()}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "system_id missing");
    let response = send(json!({"token": runner, "system_id": SYSTEM_ID}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "info missing");
    let response = send(json!({"token": runner, "system_id": SYSTEM_ID, "info": {"name": "x"}}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "info.features missing");
    let response = request_job(&fake, "glrt-unknown", None).await;
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn long_poll_is_held_and_released_by_an_enqueue() {
    let fake = start_with(FakeConfig {
        long_poll: Duration::from_secs(60),
        ..FakeConfig::default()
    })
    .await;
    let runner = fake.create_runner_token();
    let version = fake.queue_version();
    let held = {
        let url = api(&fake, "jobs/request");
        let runner = runner.clone();
        tokio::spawn(async move {
            client()
                .post(url)
                .header("RUNNER-TOKEN", &runner)
                .json(&json!({"token": runner, "system_id": SYSTEM_ID, "info": info(), "last_update": version}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !held.is_finished(),
        "a current last_update holds the request"
    );
    assert!(fake.requests().is_empty(), "nothing answered yet");

    let id = fake.enqueue(JobBuilder::new("build").script(["true"]));
    let response = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 201);
    let payload: Value = response.json().await.unwrap();
    assert_eq!(payload["id"], json!(id));
}

#[tokio::test]
async fn long_poll_ends_with_204_and_the_polling_header() {
    let fake = start_with(FakeConfig {
        long_poll: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    let runner = fake.create_runner_token();
    let response = request_job(&fake, &runner, Some(&fake.queue_version())).await;
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "Gitlab-Ci-Builds-Polling"), Some("yes"));

    let response = request_job(&fake, &runner, Some("stale")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        header(&response, "Gitlab-Ci-Builds-Polling"),
        None,
        "stale versions are not held"
    );
}

#[tokio::test]
async fn jobs_go_only_to_matching_runners() {
    let fake = start().await;
    let plain = fake.create_runner(RunnerSettings::default());
    let docker = fake.create_runner(RunnerSettings {
        tags: vec!["docker".into()],
        run_untagged: false,
        ..RunnerSettings::default()
    });
    let tagged = fake.enqueue(JobBuilder::new("tagged").tags(["docker"]));
    let targeted = fake.enqueue(JobBuilder::new("targeted").runner(plain.id));

    let response = request_job(&fake, docker.token.expose(), None).await;
    let payload: Value = response.json().await.unwrap();
    assert_eq!(payload["id"], json!(tagged));
    let response = request_job(&fake, docker.token.expose(), None).await;
    assert_eq!(
        response.status(),
        204,
        "untagged targeted job is not for the docker runner"
    );

    let response = request_job(&fake, plain.token.expose(), None).await;
    let payload: Value = response.json().await.unwrap();
    assert_eq!(payload["id"], json!(targeted));
    assert_eq!(fake.job(targeted).unwrap().runner_id, Some(plain.id));
}

#[tokio::test]
async fn a_forced_conflict_answers_409_and_keeps_the_job() {
    let fake = start().await;
    let runner = fake.create_runner_token();
    let id = fake.enqueue(JobBuilder::new("build"));
    fake.conflict_next_job_request();
    assert_eq!(request_job(&fake, &runner, None).await.status(), 409);
    let response = request_job(&fake, &runner, None).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.json::<Value>().await.unwrap()["id"], json!(id));
}

#[tokio::test]
async fn update_checks_tokens() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;

    let response = put_job(&fake, id, "glcbt-wrong", json!({"state": "running"})).await;
    assert_eq!(response.status(), 403);

    let response = client()
        .put(api(&fake, &format!("jobs/{id}")))
        .header("JOB-TOKEN", &token)
        .json(&json!({"token": "glcbt-other", "state": "running", "info": info()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "body token must match JOB-TOKEN");

    let response = put_job(&fake, 999, &token, json!({"state": "running"})).await;
    assert_eq!(response.status(), 404);
    assert!(fake.job(id).unwrap().updates.is_empty());
}

#[tokio::test]
async fn running_update_answers_status_and_interval_headers() {
    let fake = start().await;
    fake.set_trace_update_interval(7);
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let response = put_job(
        &fake,
        id,
        &token,
        json!({"state": "running", "output": {"checksum": checksum(b""), "bytesize": 0}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "Job-Status"), Some("running"));
    assert_eq!(
        header(&response, "X-GitLab-Trace-Update-Interval"),
        Some("7")
    );

    let response = put_job(&fake, id, &token, json!({"state": "done"})).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn final_update_is_checked_against_the_trace() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    assert_eq!(
        patch_trace(&fake, id, &token, "0-5", b"hello\n")
            .await
            .status(),
        202
    );

    let wrong =
        json!({"state": "success", "output": {"checksum": checksum(b"hello"), "bytesize": 6}});
    assert_eq!(put_job(&fake, id, &token, wrong).await.status(), 412);
    let missing = json!({"state": "success"});
    assert_eq!(put_job(&fake, id, &token, missing).await.status(), 400);

    let right =
        json!({"state": "success", "output": {"checksum": checksum(b"hello\n"), "bytesize": 6}});
    let response = put_job(&fake, id, &token, right.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "Job-Status"), Some("success"));

    let response = put_job(&fake, id, &token, right).await;
    assert_eq!(
        response.status(),
        403,
        "a finished job takes no more updates"
    );
    assert_eq!(header(&response, "Job-Status"), Some("success"));

    let job = fake.job(id).unwrap();
    let statuses: Vec<u16> = job.updates.iter().map(|u| u.status).collect();
    assert_eq!(statuses, [412, 200]);
    assert_eq!(job.updates[1].bytesize, Some(6));
}

#[tokio::test]
async fn checksum_format_matches_crc32_ieee() {
    assert_eq!(checksum(b"123456789"), "crc32:cbf43926");
}

#[tokio::test]
async fn failure_reason_must_be_one_the_job_lists() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build").failure_reasons(["script_failure"]));
    let (id, token) = take_job(&fake).await;
    let output = json!({"checksum": checksum(b""), "bytesize": 0});
    let unknown = json!({"state": "failed", "failure_reason": "job_canceled", "output": output});
    assert_eq!(put_job(&fake, id, &token, unknown).await.status(), 400);
    let unlisted =
        json!({"state": "failed", "failure_reason": "image_pull_failure", "output": output});
    assert_eq!(put_job(&fake, id, &token, unlisted).await.status(), 400);
    let known = json!({"state": "failed", "failure_reason": "script_failure", "exit_code": 2, "output": output});
    assert_eq!(put_job(&fake, id, &token, known).await.status(), 200);
    let job = fake.job(id).unwrap();
    assert_eq!(job.status, RemoteStatus::Failed);
    assert_eq!(job.updates[0].exit_code, Some(2));
    assert_eq!(
        job.updates[0].failure_reason.as_deref(),
        Some("script_failure")
    );
}

#[tokio::test]
async fn forced_202_makes_the_runner_retry_the_final_update() {
    let fake = start().await;
    let queued = fake.enqueue(JobBuilder::new("build"));
    fake.accept_without_completing(queued, 1).unwrap();
    let (id, token) = take_job(&fake).await;
    let done = json!({"state": "success", "output": {"checksum": checksum(b""), "bytesize": 0}});
    assert_eq!(put_job(&fake, id, &token, done.clone()).await.status(), 202);
    assert_eq!(fake.job(id).unwrap().status, RemoteStatus::Running);
    assert_eq!(put_job(&fake, id, &token, done).await.status(), 200);
    assert_eq!(fake.job(id).unwrap().status, RemoteStatus::Success);
}

#[tokio::test]
async fn cancel_flow_goes_canceling_then_canceled() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    fake.cancel_job(id).unwrap();

    let response = patch_trace(&fake, id, &token, "0-2", b"ab\n").await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "Job-Status"), Some("canceling"));

    let failed = json!({"state": "failed", "failure_reason": "unknown_failure", "output": {"checksum": checksum(b"ab\n"), "bytesize": 3}});
    let response = put_job(&fake, id, &token, failed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "Job-Status"), Some("canceled"));
    let history: Vec<RemoteStatus> = fake
        .job(id)
        .unwrap()
        .history
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        history,
        [
            RemoteStatus::Pending,
            RemoteStatus::Running,
            RemoteStatus::Canceling,
            RemoteStatus::Canceled
        ]
    );
}

#[tokio::test]
async fn aborted_jobs_refuse_updates_with_job_status_canceled() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    fake.abort_job(id).unwrap();
    let response = put_job(&fake, id, &token, json!({"state": "running"})).await;
    assert_eq!(response.status(), 403);
    assert_eq!(header(&response, "Job-Status"), Some("canceled"));
    let response = patch_trace(&fake, id, &token, "0-0", b"x").await;
    assert_eq!(response.status(), 403);
    assert_eq!(header(&response, "Job-Status"), Some("canceled"));
}

#[tokio::test]
async fn waiting_for_a_state_that_never_comes_fails_with_a_description() {
    let fake = start().await;
    let id = fake.enqueue(JobBuilder::new("build"));
    let error = fake
        .wait_for_job_state(id, |job| job.is_finished(), Duration::from_millis(20))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&format!("job {id}")), "{message}");
    assert!(message.contains("status pending, 0 updates"), "{message}");
}

#[tokio::test]
async fn waiting_returns_once_the_runner_reports() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let waiter = fake.wait_for_job_state(id, |job| job.status == RemoteStatus::Success, WAIT);
    let report = async {
        let done =
            json!({"state": "success", "output": {"checksum": checksum(b""), "bytesize": 0}});
        put_job(&fake, id, &token, done).await
    };
    let (view, response) = tokio::join!(waiter, report);
    assert_eq!(response.status(), 200);
    assert_eq!(view.unwrap().updates.len(), 1);
}

#[tokio::test]
async fn a_held_poll_released_by_someone_elses_job_answers_204() {
    let fake = start_with(FakeConfig {
        long_poll: Duration::from_secs(60),
        ..FakeConfig::default()
    })
    .await;
    let runner = fake.create_runner_token();
    let other = fake.create_runner(RunnerSettings::default());
    let version = fake.queue_version();
    let poll = request_job(&fake, &runner, Some(&version));
    let enqueue = async {
        fake.wait_for_held_job_requests(1, WAIT).await.unwrap();
        fake.enqueue(JobBuilder::new("not yours").runner(other.id))
    };
    let (response, _) = tokio::join!(poll, enqueue);
    assert_eq!(response.status(), 204);
    assert_ne!(
        header(&response, "X-GitLab-Last-Update"),
        Some(version.as_str())
    );
}

#[tokio::test]
async fn shutdown_answers_held_polls() {
    let fake = start_with(FakeConfig {
        long_poll: Duration::from_secs(600),
        ..FakeConfig::default()
    })
    .await;
    let runner = fake.create_runner_token();
    let url = fake.url().to_owned();
    let version = fake.queue_version();
    let held = tokio::spawn(async move {
        crate::support::client()
            .post(format!("{url}/api/v4/jobs/request"))
            .header("RUNNER-TOKEN", &runner)
            .json(&json!({"token": runner, "system_id": SYSTEM_ID, "info": info(), "last_update": version}))
            .send()
            .await
    });
    fake.wait_for_held_job_requests(1, WAIT).await.unwrap();
    tokio::time::timeout(WAIT, fake.shutdown())
        .await
        .expect("shutdown does not wait for the hold");
    let response = tokio::time::timeout(WAIT, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 204);
}

/// What a minimal runner library sends: the runner token only in the body, job updates with
/// the token only in the body, no `info` and no `output`.
async fn library_style_job(fake: &runnel_fake_gitlab::FakeGitlab) -> (u64, String, Vec<u16>) {
    let runner = fake.create_runner_token();
    let id = fake.enqueue(JobBuilder::new("build").script(["true"]));
    let request = client()
        .post(api(fake, "jobs/request"))
        .json(&json!({"token": runner, "system_id": SYSTEM_ID, "info": {"features": {"refspecs": true}}}))
        .send()
        .await
        .unwrap();
    let mut statuses = vec![request.status().as_u16()];
    let token = if request.status() == 201 {
        let payload: Value = request.json().await.unwrap();
        payload["token"].as_str().unwrap().to_owned()
    } else {
        // Strict mode refuses the request: take the job the official way to test the PUT.
        take_job(fake).await.1
    };
    let trace = patch_trace(fake, id, &token, "0-2", b"ok\n").await;
    statuses.push(trace.status().as_u16());
    let done = client()
        .put(api(fake, &format!("jobs/{id}")))
        .json(&json!({"token": token, "state": "success"}))
        .send()
        .await
        .unwrap();
    statuses.push(done.status().as_u16());
    (id, token, statuses)
}

#[tokio::test]
async fn strict_fake_refuses_library_style_traffic() {
    let fake = start().await;
    let (id, _, statuses) = library_style_job(&fake).await;
    assert_eq!(
        statuses,
        vec![403, 202, 403],
        "no RUNNER-TOKEN / JOB-TOKEN header"
    );
    let token = fake.job(id).unwrap().token;
    let exclusive_end = patch_trace(&fake, id, token.expose(), "3-6", b"abc").await;
    assert_eq!(
        exclusive_end.status(),
        400,
        "Content-Range end must match the body"
    );
    assert_eq!(fake.job(id).unwrap().status, RemoteStatus::Running);
}

#[tokio::test]
async fn lenient_fake_accepts_library_style_traffic_but_still_checks_tokens() {
    let fake = start_with(FakeConfig {
        lenient_clients: true,
        ..FakeConfig::default()
    })
    .await;
    let (id, token, statuses) = library_style_job(&fake).await;
    assert_eq!(statuses, vec![201, 202, 200]);
    let job = fake.job(id).unwrap();
    assert_eq!(job.status, RemoteStatus::Success);
    assert_eq!(job.trace, b"ok\n");

    // The body token still has to be the job's, and a present header must match it.
    let other = fake.enqueue(JobBuilder::new("other").script(["true"]));
    let (taken, other_token) = take_job(&fake).await;
    assert_eq!(taken, other);
    let wrong = client()
        .put(api(&fake, &format!("jobs/{other}")))
        .json(&json!({"token": token, "state": "success"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let mismatched = client()
        .put(api(&fake, &format!("jobs/{other}")))
        .header("JOB-TOKEN", &token)
        .json(&json!({"token": other_token, "state": "success"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), 403);
    // Older clients: no system_id, an exclusive Content-Range end (only the start is used).
    let no_system_id = client()
        .post(api(&fake, "jobs/request"))
        .json(&json!({"token": fake.create_runner_token(), "info": info()}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_system_id.status(), 204);
    assert_eq!(
        patch_trace(&fake, other, &other_token, "0-3", b"abc")
            .await
            .status(),
        202
    );
    assert_eq!(
        patch_trace(&fake, other, &other_token, "0-3", b"abc")
            .await
            .status(),
        416
    );
    // A client that does send `output` is still held to the checksum.
    let checked = put_job(
        &fake,
        other,
        &other_token,
        json!({"state": "success", "output": {"bytesize": 5, "checksum": checksum(b"wrong")}}),
    )
    .await;
    assert_eq!(checked.status(), 412);
}

#[tokio::test]
async fn progress_and_trace_since_read_without_the_whole_trace() {
    let fake = start().await;
    let id = fake.enqueue(JobBuilder::new("build").script(["true"]));
    let (taken, token) = take_job(&fake).await;
    assert_eq!(taken, id);
    assert_eq!(
        patch_trace(&fake, id, &token, "0-5", b"hello\n")
            .await
            .status(),
        202
    );
    assert_eq!(
        patch_trace(&fake, id, &token, "6-11", b"world\n")
            .await
            .status(),
        202
    );
    let progress = fake.job_progress(id).unwrap();
    assert_eq!(progress.trace_len, 12);
    assert_eq!(progress.patches.len(), 2);
    assert_eq!(progress.status, RemoteStatus::Running);
    assert!(!progress.is_finished());
    assert_eq!(fake.trace_since(id, 6).unwrap(), b"world\n");
    assert_eq!(fake.trace_since(id, 12).unwrap(), b"");
    assert_eq!(fake.trace_since(id, 99).unwrap(), b"");
    assert!(fake.trace_since(id + 1, 0).is_none());

    let waiter = {
        let done = put_job(
            &fake,
            id,
            &token,
            json!({"state": "success", "output": {"bytesize": 12, "checksum": checksum(b"hello\nworld\n")}}),
        );
        let wait = fake.wait_for_job_progress(id, |p| p.is_finished(), WAIT);
        let (response, progress) = tokio::join!(done, wait);
        assert_eq!(response.status(), 200);
        progress.unwrap()
    };
    assert_eq!(waiter.status, RemoteStatus::Success);
    assert_eq!(waiter.updates.len(), 1);
}
