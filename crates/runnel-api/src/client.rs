//! The HTTP client: construction (base URL, TLS files, timeouts) and the one send loop every
//! endpoint goes through (request id, retries, `X-GitLab-Last-Update` bookkeeping, observation).
//!
//! Endpoint modules add methods to [`Client`]; this module knows no endpoint's body or status
//! semantics. Redirects are never followed automatically: artifact transfers follow them
//! explicitly, so that a job token never travels to another host.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{ApiError, SafeUrl, redact_userinfo};
use crate::info::{VERSION, architecture, platform};
use crate::observe::{Endpoint, RequestEvent, RequestObserver};
use crate::retry::{RetryPolicy, is_retriable_status, is_retriable_transport};
use crate::tls_chain::ChainCapture;

/// The largest response body read from the coordinator: a job payload with every variable,
/// step and dependency is far below it (review L6).
pub(crate) const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const LAST_UPDATE: &str = "X-GitLab-Last-Update";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest silence while waiting for a response (the official `ResponseHeaderTimeout`).
const READ_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The official `DefaultNetworkClientTimeout`: a whole request, long polls and artifacts
/// included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How to reach one GitLab instance.
#[derive(Clone, Default)]
pub struct ClientConfig {
    /// The GitLab URL (`url` in config.toml); a trailing `/` and a legacy `/ci` are ignored.
    pub url: String,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Retry policy for every request.
    pub retry: RetryPolicy,
    /// Called after every attempt of every request.
    pub observer: Option<Arc<dyn RequestObserver>>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &redact_userinfo(&self.url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("retry", &self.retry)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// A client for one GitLab instance and one set of runner credentials.
///
/// Cloning is cheap and clones share the `last_update` state, so a clone must serve the same
/// runner.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `<url>/api/v4/`.
    api: Url,
    retry: RetryPolicy,
    observer: Option<Arc<dyn RequestObserver>>,
    /// The last `X-GitLab-Last-Update` seen, echoed as `last_update` in job requests.
    last_update: Mutex<Option<String>>,
    /// The chain GitLab presented (only without a configured CA file).
    capture: Option<ChainCapture>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("api", &SafeUrl::new(&self.inner.api))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client. Fails (a "client error": the runner is unhealthy) when the URL is not
    /// an http(s) URL or a TLS file cannot be loaded.
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        let api = api_url(&config.url)?;
        // Without a CA file, the chain GitLab presents is kept for the jobs
        // (`CI_SERVER_TLS_CA_FILE`), as the official runner does.
        // (A lone certificate or key file is refused below, by the usual path.)
        let capture = (api.scheme() == "https"
            && config.tls_ca_file.is_none()
            && config.tls_cert_file.is_some() == config.tls_key_file.is_some())
        .then(ChainCapture::default);
        let capturing = capture.as_ref().and_then(|capture| {
            let cert_key = config
                .tls_cert_file
                .as_deref()
                .zip(config.tls_key_file.as_deref());
            match crate::tls_chain::client_config(capture, cert_key) {
                Ok(tls) => base_builder().tls_backend_preconfigured(tls).build().ok(),
                Err(error) => {
                    tracing::debug!(%error, "the presented TLS chain will not be kept for jobs");
                    None
                }
            }
        });
        let capture = capture.filter(|_| capturing.is_some());
        let built = match capturing {
            Some(http) => Ok(http),
            None => configure_tls(base_builder(), &config)?.build(),
        };
        let http = match built {
            Ok(http) => http,
            // A host without a CA store (a minimal helper image) can still talk plain HTTP:
            // build without the system roots, so only TLS connections fail.
            Err(error) if api.scheme() == "http" => {
                tracing::warn!(%error, "no usable system CA store; only plain HTTP will work");
                configure_tls(base_builder().tls_certs_only(Vec::new()), &config)?
                    .build()
                    .map_err(|source| ApiError::BuildClient {
                        url: SafeUrl::new(&api),
                        source,
                    })?
            }
            Err(source) => {
                return Err(ApiError::BuildClient {
                    url: SafeUrl::new(&api),
                    source,
                });
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                api,
                retry: config.retry,
                observer: config.observer,
                last_update: Mutex::new(None),
                capture,
            }),
        })
    }

    /// The certificate chain GitLab presented on this client's connections (PEM: its
    /// certificate, the intermediates and, when the system store has it, the root), for a job's
    /// `CI_SERVER_TLS_CA_FILE` when no CA file is configured; `None` over plain HTTP, with a
    /// configured CA file, or before a TLS connection was made.
    pub fn presented_tls_chain(&self) -> Option<String> {
        self.inner.capture.as_ref()?.pem()
    }

    /// The API base URL (`<url>/api/v4/`), without credentials.
    pub fn api_url(&self) -> SafeUrl {
        SafeUrl::new(&self.inner.api)
    }

    /// The last `X-GitLab-Last-Update` value received, if any.
    pub fn last_update(&self) -> Option<String> {
        self.inner
            .last_update
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `path` (a relative path of ASCII segments built by this crate) under the API base.
    ///
    /// # Panics
    ///
    /// Never for the paths this crate builds: joining a relative ASCII path onto an
    /// http(s) base URL cannot fail.
    pub(crate) fn endpoint_url(&self, path: &str) -> Url {
        self.inner
            .api
            .join(path)
            .expect("a relative ASCII path joins onto the validated API base URL")
    }

    /// Sends a request, retrying per the policy. `prepare` adds headers and a fresh body to
    /// each attempt. Returns the last response, whatever its status.
    pub(crate) async fn send(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &Url,
        prepare: impl Fn(RequestBuilder) -> Result<RequestBuilder, ApiError>,
    ) -> Result<Sent, ApiError> {
        let safe_url = SafeUrl::new(url);
        let max_attempts = self.inner.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let request_id = uuid::Uuid::new_v4().simple().to_string();
            let builder = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(REQUEST_ID, &request_id);
            let request = prepare(builder)?
                .build()
                .map_err(|source| ApiError::Transport {
                    method: method.clone(),
                    url: safe_url.clone(),
                    attempts: attempt,
                    source: source.without_url(),
                })?;
            let started = Instant::now();
            let result = self.inner.http.execute(request).await;
            let duration = started.elapsed();
            let retry = attempt < max_attempts;
            match result {
                Ok(response) => {
                    self.remember_last_update(response.headers());
                    let status = response.status();
                    let retry_in = (retry && is_retriable_status(status)).then(|| {
                        let headers = response.headers();
                        self.inner
                            .retry
                            .wait(attempt, Some(headers), SystemTime::now())
                    });
                    let request_id = response_request_id(&response).unwrap_or(request_id);
                    self.observe(endpoint, &method, Some(status), duration, attempt, retry_in);
                    tracing::debug!(
                        endpoint = endpoint.as_str(),
                        %method,
                        url = %safe_url,
                        status = status.as_u16(),
                        request_id,
                        attempt,
                        "API request"
                    );
                    let Some(wait) = retry_in else {
                        return Ok(Sent {
                            response,
                            method,
                            url: safe_url,
                            attempts: attempt,
                        });
                    };
                    tracing::warn!(
                        endpoint = endpoint.as_str(),
                        %method,
                        url = %safe_url,
                        status = status.as_u16(),
                        attempt,
                        retry_in_ms = wait.as_millis(),
                        "API request failed, retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    let error = error.without_url();
                    let retry_in = (retry && is_retriable_transport(&error))
                        .then(|| self.inner.retry.wait(attempt, None, SystemTime::now()));
                    self.observe(endpoint, &method, None, duration, attempt, retry_in);
                    let Some(wait) = retry_in else {
                        return Err(ApiError::Transport {
                            method,
                            url: safe_url,
                            attempts: attempt,
                            source: error,
                        });
                    };
                    tracing::warn!(
                        endpoint = endpoint.as_str(),
                        %method,
                        url = %safe_url,
                        %error,
                        attempt,
                        retry_in_ms = wait.as_millis(),
                        "API request failed, retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            attempt += 1;
        }
    }

    fn remember_last_update(&self, headers: &HeaderMap) {
        let Some(value) = headers.get(LAST_UPDATE).and_then(|v| v.to_str().ok()) else {
            return;
        };
        *self
            .inner
            .last_update
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(value.to_owned());
    }

    fn observe(
        &self,
        endpoint: Endpoint,
        method: &Method,
        status: Option<StatusCode>,
        duration: Duration,
        attempt: u32,
        retry_in: Option<Duration>,
    ) {
        if let Some(observer) = &self.inner.observer {
            observer.observe(&RequestEvent {
                endpoint,
                method: method.clone(),
                status,
                duration,
                attempt,
                retry_in,
            });
        }
    }
}

/// A response with what is needed to report about it.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) response: Response,
    pub(crate) method: Method,
    pub(crate) url: SafeUrl,
    pub(crate) attempts: u32,
}

impl Sent {
    pub(crate) fn status(&self) -> StatusCode {
        self.response.status()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.response.headers().get(name)?.to_str().ok()
    }

    /// The error for a status the endpoint did not expect.
    pub(crate) fn unexpected(&self) -> ApiError {
        ApiError::Status {
            method: self.method.clone(),
            url: self.url.clone(),
            status: self.status(),
            attempts: self.attempts,
        }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.header(header::CONTENT_TYPE.as_str())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    }

    /// The body, required to be `application/json`.
    ///
    /// Bounded by [`MAX_RESPONSE_BODY`].
    pub(crate) async fn json_bytes(self) -> Result<bytes::Bytes, ApiError> {
        if !self.is_json() {
            return Err(ApiError::NotJson {
                content_type: self.header("content-type").unwrap_or_default().to_owned(),
                method: self.method,
                url: self.url,
            });
        }
        self.bytes().await
    }

    /// The whole body, at most [`MAX_RESPONSE_BODY`] bytes (review L6: a hostile coordinator
    /// must not make the runner buffer gigabytes).
    pub(crate) async fn bytes(self) -> Result<bytes::Bytes, ApiError> {
        let Self {
            mut response,
            method,
            url,
            ..
        } = self;
        let too_large = |method, url| ApiError::BodyTooLarge {
            method,
            url,
            limit: MAX_RESPONSE_BODY,
        };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_RESPONSE_BODY as u64)
        {
            return Err(too_large(method, url));
        }
        let mut body = bytes::BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                        return Err(too_large(method, url));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(source) => {
                    return Err(ApiError::ReadBody {
                        method,
                        url,
                        source: source.without_url(),
                    });
                }
            }
        }
    }

    /// The body decoded as `T`, required to be `application/json`.
    pub(crate) async fn json<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        let method = self.method.clone();
        let url = self.url.clone();
        let body = self.json_bytes().await?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(deserializer).map_err(|error| ApiError::Decode {
            method,
            url,
            path: error.path().to_string(),
            source: error.into_inner(),
        })
    }
}

/// A header value that must not be shown, e.g. a token.
pub(crate) fn secret_header(
    method: &Method,
    url: &Url,
    header: &'static str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), ApiError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| ApiError::InvalidHeader {
        method: method.clone(),
        url: SafeUrl::new(url),
        header,
    })?;
    value.set_sensitive(true);
    Ok((HeaderName::from_static(header), value))
}

fn response_request_id(response: &Response) -> Option<String> {
    let value = response.headers().get(REQUEST_ID)?.to_str().ok()?;
    Some(value.to_owned())
}

/// `runnel <version> (<os>/<arch>)`.
fn user_agent() -> String {
    format!("runnel {VERSION} ({}/{})", platform(), architecture())
}

/// `<url>/api/v4/`, after dropping a trailing `/` and a legacy `/ci` suffix (`fixCIURL`).
pub(crate) fn api_url(configured: &str) -> Result<Url, ApiError> {
    let trimmed = configured.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/ci").unwrap_or(trimmed);
    let shown = || redact_userinfo(configured);
    let url = Url::parse(&format!("{trimmed}/api/v4/")).map_err(|source| ApiError::InvalidUrl {
        url: shown(),
        source,
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::UnsupportedScheme {
            url: shown(),
            scheme: url.scheme().to_owned(),
        });
    }
    Ok(url)
}

/// The HTTP client settings shared by every client (timeouts as the official runner's).
fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(user_agent())
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
}

fn configure_tls(
    builder: reqwest::ClientBuilder,
    config: &ClientConfig,
) -> Result<reqwest::ClientBuilder, ApiError> {
    let mut builder = builder;
    if let Some(path) = &config.tls_ca_file {
        let pem = read_tls_file("tls-ca-file", path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            ApiError::InvalidTlsFile {
                what: "tls-ca-file",
                path: path.clone(),
                source,
            }
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read_tls_file("tls-cert-file", cert)?;
            pem.push(b'\n');
            pem.extend(read_tls_file("tls-key-file", key)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|source| ApiError::InvalidTlsFile {
                    what: "tls-cert-file/tls-key-file",
                    path: cert.clone(),
                    source,
                })?;
            builder = builder.identity(identity);
        }
        (Some(path), None) | (None, Some(path)) => {
            return Err(ApiError::IncompleteTlsIdentity { path: path.clone() });
        }
        (None, None) => {}
    }
    Ok(builder)
}

fn read_tls_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::ReadTlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_strips_trailing_slash_and_ci() {
        for (configured, expected) in [
            (
                "https://gitlab.example.com",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "https://gitlab.example.com/",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "https://gitlab.example.com/ci",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "https://gitlab.example.com/ci/",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "http://host:8080/gitlab//",
                "http://host:8080/gitlab/api/v4/",
            ),
        ] {
            assert_eq!(
                api_url(configured).unwrap().as_str(),
                expected,
                "{configured}"
            );
        }
    }

    #[test]
    fn api_url_rejects_other_schemes_and_garbage() {
        let err = api_url("ftp://user:secret@host").unwrap_err();
        assert!(matches!(err, ApiError::UnsupportedScheme { .. }));
        assert!(err.is_client_error());
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = api_url("not a url").unwrap_err();
        assert!(matches!(err, ApiError::InvalidUrl { .. }));
        assert_eq!(err.to_string(), "invalid GitLab URL `not a url`");
    }

    #[test]
    fn user_agent_names_runnel() {
        let ua = user_agent();
        assert!(ua.starts_with(&format!("runnel {VERSION} (")), "{ua}");
        assert!(ua.ends_with(')'));
    }
}
