//! The retry layer as seen on the wire.

use std::sync::Arc;
use std::time::Duration;

use runnel_api::{ApiError, Endpoint, PatchOutcome, RetryPolicy, TracePatch};
use runnel_types::{JobId, JobToken, RunnerToken};

use crate::support::{Events, Reply, TestServer, client_for, without_port};

fn trace_patch(token: &JobToken) -> TracePatch<'_> {
    TracePatch {
        job_id: JobId(1),
        token,
        offset: 0,
        content: bytes::Bytes::from_static(b"line\n"),
        debug_trace: false,
    }
}

#[tokio::test]
async fn retriable_statuses_are_retried_and_the_body_resent() {
    let server = TestServer::start().await;
    server
        .reply(Reply::status(500))
        .reply(Reply::status(429))
        .reply(Reply::status(408))
        .reply(Reply::status(202));
    let token = JobToken::new("glcbt-job");
    let result = server
        .client()
        .patch_trace(&trace_patch(&token))
        .await
        .unwrap();
    assert!(
        matches!(result.outcome, PatchOutcome::Accepted { .. }),
        "{result:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    for request in &requests {
        assert_eq!(&request.body[..], b"line\n");
        assert_eq!(request.header("content-range"), Some("0-4"));
    }
    let ids: std::collections::HashSet<_> = requests
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "every attempt has its own request id");
}

#[tokio::test]
async fn the_final_error_reports_the_attempt_count() {
    let server = TestServer::start().await;
    for _ in 0..5 {
        server.reply(Reply::status(504));
    }
    let error = server
        .client()
        .reset_token(&RunnerToken::new("glrt-x"))
        .await
        .unwrap_err();
    assert_eq!(server.requests().len(), 5);
    let message = without_port(&error.to_string(), &server);
    insta::assert_snapshot!(message, @"request to POST http://127.0.0.1:[PORT]/api/v4/runners/reset_authentication_token failed with 504 Gateway Timeout after 5 attempts");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = TestServer::start().await;
    server
        .reply(Reply::status(503).header("Retry-After", "1"))
        .reply(Reply::status(202));
    let events = Arc::new(Events::default());
    let policy = RetryPolicy {
        max_attempts: 3,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_secs(2),
    };
    let client = client_for(&server.url(), policy, Some(events.clone()));
    let token = JobToken::new("glcbt-job");
    client.patch_trace(&trace_patch(&token)).await.unwrap();

    let events = events.0.lock().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].endpoint, Endpoint::PatchTrace);
    assert_eq!(events[0].status.map(|s| s.as_u16()), Some(503));
    assert_eq!(events[0].attempt, 1);
    assert_eq!(events[0].retry_in, Some(Duration::from_secs(1)));
    assert_eq!(events[1].status.map(|s| s.as_u16()), Some(202));
    assert_eq!(events[1].attempt, 2);
    assert_eq!(events[1].retry_in, None);
}

#[tokio::test]
async fn non_retriable_statuses_are_sent_once() {
    for status in [400, 401, 403, 404, 409, 413, 501] {
        let server = TestServer::start().await;
        server
            .reply(Reply::status(status))
            .reply(Reply::status(202));
        let token = JobToken::new("glcbt-job");
        server
            .client()
            .patch_trace(&trace_patch(&token))
            .await
            .unwrap();
        assert_eq!(server.requests().len(), 1, "{status}");
    }
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let events = Arc::new(Events::default());
    let policy = RetryPolicy {
        max_attempts: 3,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    let client = client_for(
        &format!("http://127.0.0.1:{port}"),
        policy,
        Some(events.clone()),
    );
    let error = client
        .reset_token(&RunnerToken::new("glrt-x"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::Transport { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(!error.is_client_error());
    let message = error.to_string().replace(&port.to_string(), "[PORT]");
    insta::assert_snapshot!(message, @"request to POST http://127.0.0.1:[PORT]/api/v4/runners/reset_authentication_token failed after 3 attempts");
    let events = events.0.lock().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.status.is_none()));
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    // A server that closes the first connection without answering, then answers properly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (first, _) = listener.accept().await.unwrap();
        drop(first);
        let (mut second, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 64 * 1024];
        tokio::io::AsyncReadExt::read(&mut second, &mut buf)
            .await
            .unwrap();
        let answer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut second, answer)
            .await
            .unwrap();
    });
    let client = client_for(
        &format!("http://{addr}"),
        crate::support::fast_retry(),
        None,
    );
    client
        .unregister_runner(&RunnerToken::new("glrt-x"))
        .await
        .unwrap();
}
