//! `PATCH jobs/:id/trace`.

use std::time::Duration;

use bytes::Bytes;
use runnel_api::{
    ApiError, PatchOutcome, PatchResult, RemoteStatus, TRACE_PATCH_LIMIT, TracePatch,
};
use runnel_types::{JobId, JobToken};

use crate::support::{Reply, TestServer};

/// Reply, expected outcome, expected remote state.
type PatchCase = (Reply, fn(&PatchOutcome) -> bool, Option<RemoteStatus>);

fn patch<'a>(token: &'a JobToken, offset: u64, content: &'static [u8]) -> TracePatch<'a> {
    TracePatch {
        job_id: JobId(7),
        token,
        offset,
        content: Bytes::from_static(content),
        debug_trace: false,
    }
}

async fn send(server: &TestServer, patch: &TracePatch<'_>) -> PatchResult {
    server.client().patch_trace(patch).await.unwrap()
}

#[tokio::test]
async fn a_patch_carries_an_inclusive_range_and_the_raw_bytes() {
    let server = TestServer::start().await;
    server.reply(
        Reply::status(202)
            .header("Range", "0-15")
            .header("X-GitLab-Trace-Update-Interval", "30"),
    );
    let token = JobToken::new("glcbt-job");
    let result = send(&server, &patch(&token, 10, b"hello!")).await;
    assert!(
        matches!(
            result.outcome,
            PatchOutcome::Accepted {
                remote_range_end: Some(15)
            }
        ),
        "{result:?}"
    );
    assert_eq!(result.update_interval, Some(Duration::from_secs(30)));

    let request = server.only_request();
    assert_eq!(request.method, "PATCH");
    assert_eq!(request.path, "/api/v4/jobs/7/trace");
    assert_eq!(request.query.as_deref(), Some("debug_trace=false"));
    assert_eq!(request.header("content-range"), Some("10-15"));
    assert_eq!(request.header("content-type"), Some("text/plain"));
    assert_eq!(request.header("job-token"), Some("glcbt-job"));
    assert_eq!(&request.body[..], b"hello!");
}

#[tokio::test]
async fn debug_trace_is_a_query_flag() {
    let server = TestServer::start().await;
    server.reply(Reply::status(202));
    let token = JobToken::new("glcbt-job");
    let mut debug = patch(&token, 0, b"x");
    debug.debug_trace = true;
    send(&server, &debug).await;
    let request = server.only_request();
    assert_eq!(request.query.as_deref(), Some("debug_trace=true"));
    assert_eq!(request.header("content-range"), Some("0-0"));
}

#[tokio::test]
async fn an_empty_patch_is_not_sent() {
    let server = TestServer::start().await;
    let token = JobToken::new("glcbt-job");
    let result = send(&server, &patch(&token, 100, b"")).await;
    assert!(matches!(
        result.outcome,
        PatchOutcome::Accepted {
            remote_range_end: None
        }
    ));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn an_oversized_patch_is_refused() {
    let server = TestServer::start().await;
    let token = JobToken::new("glcbt-job");
    let big = TracePatch {
        content: Bytes::from(vec![b'a'; TRACE_PATCH_LIMIT + 1]),
        ..patch(&token, 0, b"")
    };
    let error = server.client().patch_trace(&big).await.unwrap_err();
    assert!(matches!(error, ApiError::TracePatchTooLarge { .. }));
    insta::assert_snapshot!(error.to_string(), @"trace patch for job 7 is 1048577 bytes, more than the 1048576 bytes allowed");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_416_resumes_from_the_remote_range() {
    let server = TestServer::start().await;
    server.reply(Reply::status(416).header("Range", "0-4"));
    let token = JobToken::new("glcbt-job");
    let result = send(&server, &patch(&token, 10, b"abc")).await;
    assert!(
        matches!(
            result.outcome,
            PatchOutcome::RangeMismatch { resume_offset: 4 }
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn trace_statuses_map_to_outcomes() {
    let token = JobToken::new("glcbt-job");
    let cases: Vec<PatchCase> = vec![
        (
            Reply::status(404),
            |o| matches!(o, PatchOutcome::NotFound),
            None,
        ),
        (
            Reply::status(403),
            |o| matches!(o, PatchOutcome::Abort),
            None,
        ),
        (
            Reply::status(202).header("Job-Status", "canceled"),
            |o| matches!(o, PatchOutcome::Abort),
            Some(RemoteStatus::Canceled),
        ),
        (
            Reply::status(202)
                .header("Job-Status", "canceling")
                .header("Range", "0-2"),
            |o| {
                matches!(
                    o,
                    PatchOutcome::Accepted {
                        remote_range_end: Some(2)
                    }
                )
            },
            Some(RemoteStatus::Canceling),
        ),
        (
            Reply::status(416),
            |o| matches!(o, PatchOutcome::Failed(e) if e.status().map(|s| s.as_u16()) == Some(416)),
            None,
        ),
        (
            Reply::status(400),
            |o| matches!(o, PatchOutcome::Failed(_)),
            None,
        ),
    ];
    for (reply, expected, remote) in cases {
        let server = TestServer::start().await;
        server.reply(reply.clone());
        let result = send(&server, &patch(&token, 0, b"abc")).await;
        assert!(expected(&result.outcome), "{reply:?}: {result:?}");
        assert_eq!(result.remote_status, remote);
        assert_eq!(
            result.cancel_requested(),
            remote == Some(RemoteStatus::Canceling)
        );
    }
}
