//! The HTTP server loop: accepts connections, logs requests, injects faults, shuts down.
//!
//! It drives hyper directly rather than `axum::serve` because dropping a connection without an
//! answer (a fault tests need) is only possible from the connection's service. Everything under
//! `/__fake/` (the control API) bypasses the log and the faults.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::config::FakeTls;
use crate::error::FakeError;
use crate::faults::{Endpoint, FaultAction};
use crate::routes::ApiError;
use crate::state::State;
use crate::view::RequestRecord;

/// Prefix of the control API, which is neither logged nor subject to faults.
pub(crate) const CONTROL_PREFIX: &str = "/__fake/";

/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Returned by the connection's service to make hyper close the socket without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct DroppedConnection;

/// Serves `app` on `listener` until `state.shutdown` is cancelled, then waits for open
/// connections to finish their current request. Connections not yet accepted at that point
/// are closed unanswered.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    app: Router,
) {
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match &tls {
                    None => {
                        connections.spawn(serve_connection(stream, Arc::clone(&state), app.clone()));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let state = Arc::clone(&state);
                        let app = app.clone();
                        connections.spawn(async move {
                            match acceptor.accept(stream).await {
                                Ok(stream) => serve_connection(stream, state, app).await,
                                // A client that does not trust us: what some tests expect.
                                Err(error) => debug!(%error, "TLS handshake failed"),
                            }
                        });
                    }
                },
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections.close();
    connections.wait().await;
}

/// A TLS acceptor for `tls`; errors name what could not be read.
pub(crate) fn tls_acceptor(tls: &FakeTls) -> Result<TlsAcceptor, FakeError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, error: &dyn std::fmt::Display| FakeError::Tls {
        message: format!("{what}: {error}"),
    };
    let chain = CertificateDer::pem_slice_iter(tls.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate chain", &e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| invalid("private key", &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve_connection<S>(stream: S, state: Arc<State>, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let state = Arc::clone(&state);
        service_fn(move |request| handle(Arc::clone(&state), app.clone(), request))
    };
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = state.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection ended with an error");
    }
}

async fn handle(
    state: Arc<State>,
    app: Router,
    request: Request<Incoming>,
) -> Result<Response, DroppedConnection> {
    let request = request.map(Body::new);
    if request.uri().path().starts_with(CONTROL_PREFIX) {
        return Ok(route(app, request).await);
    }
    let endpoint = Endpoint::classify(request.method(), request.uri().path());
    let (parts, body) = request.into_parts();
    // Buffered so the log can keep it; the runner's bodies are small, artifacts are kept anyway.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            debug!(%error, "failed to read a request body");
            return Err(DroppedConnection);
        }
    };
    let request = Request::from_parts(parts, Body::from(body.clone()));
    let mut record = RequestRecord {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        endpoint,
        status: None,
        at: state.elapsed(),
    };
    let fault = endpoint.and_then(|endpoint| state.lock().faults.take(endpoint, Instant::now()));
    let response = match fault {
        Some(FaultAction::Drop) => {
            debug!(method = %record.method, path = %record.path, "dropping connection (fault)");
            log(&state, record);
            return Err(DroppedConnection);
        }
        Some(FaultAction::Respond(code)) => injected(code),
        Some(FaultAction::LoseAnswer) => {
            let response = route(app, request).await;
            record.status = Some(response.status().as_u16());
            debug!(method = %record.method, path = %record.path, "handled, then dropping the connection (fault)");
            log(&state, record);
            return Err(DroppedConnection);
        }
        None => route(app, request).await,
    };
    record.status = Some(response.status().as_u16());
    debug!(method = %record.method, path = %record.path, status = response.status().as_u16(), "request");
    log(&state, record);
    Ok(response)
}

async fn route(app: Router, request: Request<Body>) -> Response {
    match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn injected(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    ApiError::new(status, format!("{} {reason} (injected)", status.as_u16())).into_response()
}

fn log(state: &State, record: RequestRecord) {
    state.lock().requests.push(record);
    state.notify_change();
}
