//! Pod watches (`GET …/pods?watch=true`), as a real API server streams them: one JSON
//! `{"type": …, "object": …}` per line, from a resource version or from the current state.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::server::{PodFilter, status};
use crate::state::{PodEvent, Shared};

/// How long a watch lasts without `timeoutSeconds` (a real server picks 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest `timeoutSeconds` honoured.
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// One line of a watch stream.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The `ERROR` event of a watch from a version older than the kept history.
fn expired(version: u64, oldest: u64) -> Bytes {
    line(
        "ERROR",
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {version} ({oldest})"),
            "reason": "Expired",
            "code": 410,
        }),
    )
}

struct Stream {
    /// Lines to send before the live changes.
    initial: VecDeque<Bytes>,
    /// The live changes (`None`: the stream ends after `initial`).
    receiver: Option<broadcast::Receiver<PodEvent>>,
    filter: PodFilter,
    until: Instant,
    stop: CancellationToken,
}

impl Stream {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(line) = self.initial.pop_front() {
            return Some(line);
        }
        let receiver = self.receiver.as_mut()?;
        loop {
            tokio::select! {
                event = receiver.recv() => match event {
                    Ok(event) if self.filter.matches(&event.object) => {
                        return Some(line(event.kind, &event.object));
                    }
                    Ok(_) => {}
                    // Too far behind, or the server stops: the client resumes from its last
                    // version, as after any watch that ends.
                    Err(_) => return None,
                },
                () = tokio::time::sleep_until(self.until) => return None,
                () = self.stop.cancelled() => return None,
            }
        }
    }
}

/// Serves a watch of the pods `filter` passes, from `version` (empty or `0`: the current
/// state, as `ADDED` events).
pub(crate) fn watch(shared: &Shared, filter: PodFilter, version: &str, timeout: &str) -> Response {
    let since = match version {
        "" | "0" => None,
        text => match text.parse::<u64>() {
            Ok(number) => Some(number),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {text:?}"),
                    json!({}),
                );
            }
        },
    };
    let timeout = match timeout {
        "" => DEFAULT_TIMEOUT,
        text => match text.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds).min(MAX_TIMEOUT),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid timeoutSeconds: {text:?}"),
                    json!({}),
                );
            }
        },
    };
    let stream = {
        let inner = shared.lock();
        // Subscribed with the store locked: every change after the state read here comes
        // through the receiver, none twice.
        let receiver = shared.subscribe();
        let mut initial = VecDeque::new();
        let mut live = Some(receiver);
        match since {
            None => {
                for entry in inner.pods.values() {
                    if filter.matches(&entry.object) {
                        initial.push_back(line("ADDED", &entry.object));
                    }
                }
            }
            Some(version) if version < inner.history_floor => {
                initial.push_back(expired(version, inner.history_floor));
                live = None;
            }
            Some(version) => {
                for event in &inner.history {
                    if event.version > version && filter.matches(&event.object) {
                        initial.push_back(line(event.kind, &event.object));
                    }
                }
            }
        }
        Stream {
            initial,
            receiver: live,
            filter,
            until: Instant::now() + timeout,
            stop: shared.stop.clone(),
        }
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let line = stream.next().await?;
        Some((Ok::<_, std::convert::Infallible>(line), stream))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}
