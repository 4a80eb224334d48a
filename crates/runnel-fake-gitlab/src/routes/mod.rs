//! The GitLab API as the runner sees it: routing plus the checks shared by every endpoint.
//!
//! Each submodule owns one group of endpoints (`runners`, `jobs`, `trace`, `artifacts`). Error
//! answers use GitLab's shape, `{"message": "403 Forbidden"}`. Fault injection and the request
//! log are not here: they wrap the router in `server`.

mod artifacts;
mod jobs;
mod runners;
mod trace;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::state::{Inner, JobRecord, State};
use crate::view::RemoteStatus;

pub(crate) const RUNNER_TOKEN: &str = "RUNNER-TOKEN";
pub(crate) const JOB_TOKEN: &str = "JOB-TOKEN";
pub(crate) const PRIVATE_TOKEN: &str = "PRIVATE-TOKEN";
pub(crate) const JOB_STATUS: &str = "Job-Status";
pub(crate) const TRACE_UPDATE_INTERVAL: &str = "X-GitLab-Trace-Update-Interval";
pub(crate) const LAST_UPDATE: &str = "X-GitLab-Last-Update";

/// The `/api/v4` router plus the fake object storage and redirect targets.
pub(crate) fn router(state: Arc<State>) -> Router {
    let api = Router::new()
        .route(
            "/runners",
            post(runners::register).delete(runners::unregister),
        )
        .route("/runners/verify", post(runners::verify))
        .route(
            "/runners/managers",
            axum::routing::delete(runners::unregister_manager),
        )
        .route(
            "/runners/reset_authentication_token",
            post(runners::reset_token),
        )
        .route(
            "/runners/{id}/reset_authentication_token",
            post(runners::reset_token_with_pat),
        )
        .route("/jobs/request", post(jobs::request))
        .route("/jobs/{id}", put(jobs::update))
        .route("/jobs/{id}/trace", axum::routing::patch(trace::patch))
        .route(
            "/jobs/{id}/artifacts",
            post(artifacts::upload).get(artifacts::download),
        );
    Router::new()
        .nest("/api/v4", api)
        .route(
            artifacts::REDIRECTED_UPLOAD_ROUTE,
            post(artifacts::upload_redirected),
        )
        .route(
            artifacts::OBJECT_STORAGE_ROUTE,
            get(artifacts::object_storage),
        )
        .fallback(crate::git::serve_or_not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// An error answer in GitLab's shape, optionally with the job's `Job-Status`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn bad_request(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("400 Bad request - {detail}"),
        )
    }

    pub(crate) fn forbidden(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::FORBIDDEN, format!("403 Forbidden - {detail}"))
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("404 {what} Not Found"))
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub(crate) fn with_job_status(self, status: RemoteStatus) -> Self {
        self.with_header(JOB_STATUS, status.as_str())
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "message": self.message }));
        let mut response = (self.status, body).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// The value of header `name`, if present and printable.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Parses a JSON body, insisting on `Content-Type: application/json` like GitLab's API does.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let is_json = content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("415 Unsupported Media Type - expected application/json, got {content_type:?}"),
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "invalid JSON body at line {} column {}: {error}",
            error.line(),
            error.column()
        ))
    })
}

/// Checks that `RUNNER-TOKEN` is sent and equals the body's `token`, and returns the token.
pub(crate) fn runner_token<'a>(
    headers: &HeaderMap,
    body_token: Option<&'a str>,
) -> Result<&'a str, ApiError> {
    let token = body_token
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::bad_request("token is missing"))?;
    match header_str(headers, RUNNER_TOKEN) {
        None => Err(ApiError::forbidden("RUNNER-TOKEN header is missing")),
        Some(header) if header != token => Err(ApiError::forbidden(
            "RUNNER-TOKEN header does not match the token in the body",
        )),
        Some(_) => Ok(token),
    }
}

/// Requires the runner `info` object with its `features`, which GitLab persists per manager.
pub(crate) fn require_info(info: Option<&Value>) -> Result<(), ApiError> {
    let info = info.ok_or_else(|| ApiError::bad_request("info is missing"))?;
    match info.get("features") {
        Some(Value::Object(_)) => Ok(()),
        _ => Err(ApiError::bad_request(
            "info.features is missing or not an object",
        )),
    }
}

/// Checks the job exists and `JOB-TOKEN` is its token; returns the job.
pub(crate) fn authorized_job<'a>(
    inner: &'a mut Inner,
    id: u64,
    headers: &HeaderMap,
) -> Result<&'a mut JobRecord, ApiError> {
    let job = inner
        .jobs
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("Job"))?;
    match header_str(headers, JOB_TOKEN) {
        Some(token) if token == job.view.token.expose() => Ok(job),
        Some(_) => Err(ApiError::forbidden("invalid JOB-TOKEN")),
        None => Err(ApiError::forbidden("JOB-TOKEN header is missing")),
    }
}

/// Refuses updates to jobs GitLab no longer runs (403 with the `Job-Status` that says why).
pub(crate) fn require_processing(job: &JobRecord) -> Result<(), ApiError> {
    if job.view.status.accepts_runner_updates() {
        Ok(())
    } else {
        Err(ApiError::forbidden("Job is not processing on runner").with_job_status(job.view.status))
    }
}

/// The two headers GitLab puts on PUT and PATCH answers.
pub(crate) fn job_headers(status: RemoteStatus, interval_secs: u64) -> [(&'static str, String); 2] {
    [
        (JOB_STATUS, status.as_str().to_owned()),
        (TRACE_UPDATE_INTERVAL, interval_secs.to_string()),
    ]
}

/// `token_expires_at` as GitLab renders it (RFC 3339, or null).
pub(crate) fn expiry_json(expires_at: Option<time::OffsetDateTime>) -> Value {
    expires_at
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
}

/// Parses the `:id` path segment; anything but a number is a 404, as in GitLab.
pub(crate) fn job_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("Job"))
}

/// `crc32:%08x` of the trace, as the runner computes it.
pub(crate) fn trace_checksum(trace: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(trace))
}
