//! `PATCH /jobs/:id/trace`: offsets, Content-Range, reset after 412.

use runnel_fake_gitlab::JobBuilder;
use serde_json::json;

use crate::support::{api, checksum, client, header, patch_trace, put_job, start, take_job};

#[tokio::test]
async fn patches_append_and_answer_the_new_range() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let response = patch_trace(&fake, id, &token, "0-5", b"hello\n").await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "Range"), Some("0-6"));
    assert_eq!(header(&response, "Job-Status"), Some("running"));
    assert_eq!(
        header(&response, "X-GitLab-Trace-Update-Interval"),
        Some("3")
    );
    let response = patch_trace(&fake, id, &token, "6-11", b"world\n").await;
    assert_eq!(header(&response, "Range"), Some("0-12"));

    let job = fake.job(id).unwrap();
    assert_eq!(job.trace_text(), "hello\nworld\n");
    let ranges: Vec<(u64, u64, u64)> = job
        .patches
        .iter()
        .map(|p| (p.start, p.end, p.len))
        .collect();
    assert_eq!(ranges, [(0, 5, 6), (6, 11, 6)]);
}

#[tokio::test]
async fn a_wrong_start_is_416_with_the_remote_range() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    patch_trace(&fake, id, &token, "0-3", b"abcd").await;
    for range in ["2-5", "6-9"] {
        let response = patch_trace(&fake, id, &token, range, b"efgh").await;
        assert_eq!(response.status(), 416, "{range}");
        assert_eq!(header(&response, "Range"), Some("0-4"));
    }
    assert_eq!(fake.job(id).unwrap().trace, b"abcd");
}

#[tokio::test]
async fn malformed_or_inconsistent_content_range_is_400() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    for range in ["bytes 0-3", "0-", "3-0"] {
        let response = patch_trace(&fake, id, &token, range, b"abcd").await;
        assert_eq!(response.status(), 400, "{range}");
    }
    let response = patch_trace(&fake, id, &token, "0-4", b"abcd").await;
    assert_eq!(response.status(), 400, "an exclusive end is a runner bug");
    let response = client()
        .patch(api(&fake, &format!("jobs/{id}/trace")))
        .header("JOB-TOKEN", &token)
        .body("abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "Content-Range is required");
    assert!(fake.job(id).unwrap().trace.is_empty());
}

#[tokio::test]
async fn wrong_job_token_is_403() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, _token) = take_job(&fake).await;
    let response = patch_trace(&fake, id, "glcbt-wrong", "0-0", b"x").await;
    assert_eq!(response.status(), 403);
    assert!(fake.job(id).unwrap().patches.is_empty());
}

#[tokio::test]
async fn the_trace_restarts_at_zero_only_after_a_412() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    patch_trace(&fake, id, &token, "0-3", b"abXd").await;
    assert_eq!(
        patch_trace(&fake, id, &token, "0-3", b"abcd")
            .await
            .status(),
        416
    );

    let claimed =
        json!({"state": "success", "output": {"checksum": checksum(b"abcd"), "bytesize": 4}});
    assert_eq!(
        put_job(&fake, id, &token, claimed.clone()).await.status(),
        412
    );
    let response = patch_trace(&fake, id, &token, "0-3", b"abcd").await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "Range"), Some("0-4"));
    assert_eq!(put_job(&fake, id, &token, claimed).await.status(), 200);

    let job = fake.job(id).unwrap();
    assert_eq!(job.trace, b"abcd");
    let resets: Vec<bool> = job.patches.iter().map(|p| p.reset).collect();
    assert_eq!(resets, [false, false, true]);
}
