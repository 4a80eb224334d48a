//! The scripted test server: records every request and answers from a queue of replies.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use runnel_api::{Client, ClientConfig, RequestEvent, RequestObserver, RetryPolicy};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Option<Duration>,
}

impl Reply {
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn json(self, body: &serde_json::Value) -> Self {
        self.raw_json(body.to_string().as_bytes())
    }

    pub(crate) fn raw_json(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self.header("Content-Type", "application/json")
    }

    pub(crate) fn text(mut self, body: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self.header("Content-Type", "text/plain")
    }

    pub(crate) fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    pub(crate) fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct ServerState {
    requests: Mutex<Vec<Recorded>>,
    replies: Mutex<VecDeque<Reply>>,
}

/// A scripted server; answers 418 when its queue is empty.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    state: Arc<ServerState>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (router, state) = router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    /// Serves over `listener` (e.g. a TLS one) instead of plain TCP.
    pub(crate) async fn start_on<L>(listener: L, addr: SocketAddr) -> Self
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let (router, state) = router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn reply(&self, reply: Reply) -> &Self {
        self.state.replies.lock().unwrap().push_back(reply);
        self
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub(crate) fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests.into_iter().next().unwrap()
    }

    /// A client with a fast retry policy.
    pub(crate) fn client(&self) -> Client {
        client_for(&self.url(), fast_retry(), None)
    }
}

fn router() -> (Router, Arc<ServerState>) {
    let state = Arc::new(ServerState::default());
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&state));
    (router, state)
}

async fn handle(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    });
    let reply = state.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| Reply::status(418).text("no scripted reply"));
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(reply.body)).unwrap()
}

pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

pub(crate) fn client_for(
    url: &str,
    retry: RetryPolicy,
    observer: Option<Arc<dyn RequestObserver>>,
) -> Client {
    Client::new(ClientConfig {
        url: url.to_owned(),
        retry,
        observer,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// Collects observer events.
#[derive(Default)]
pub(crate) struct Events(pub(crate) Mutex<Vec<RequestEvent>>);

impl RequestObserver for Events {
    fn observe(&self, event: &RequestEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// Replaces the port of the test server in text to keep snapshots stable.
pub(crate) fn without_port(text: &str, server: &TestServer) -> String {
    text.replace(&server.addr.port().to_string(), "[PORT]")
}
