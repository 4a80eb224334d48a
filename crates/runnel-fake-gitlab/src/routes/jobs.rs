//! Job endpoints: `POST /jobs/request` (with Workhorse-style long polling) and `PUT /jobs/:id`.
//!
//! A job request whose `last_update` equals the current queue version is held up to the
//! configured duration. When the queue changes the request is answered at once: 201 if the new
//! job is for this runner, else 204 with the new version (as Workhorse does); when the hold
//! ends, 204 with `Gitlab-Ci-Builds-Polling: yes`.
//!
//! The final PUT is checked against the trace received so far (`output.bytesize` and the
//! CRC32 `output.checksum`), as GitLab's two-phase job commit does. Multi-phase trace chunk
//! migration is not modelled; tests force the "accepted but not completed" 202 instead.

use std::sync::Arc;

use axum::Json;
use axum::extract::{self, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::runners::{authenticate_runner, record_manager};
use super::{
    ApiError, JOB_TOKEN, LAST_UPDATE, RUNNER_TOKEN, authorized_job, header_str, job_headers,
    job_id, json_body, require_info, require_processing, runner_token, trace_checksum,
};
use crate::state::{Assignment, JobRecord, State, set_status};
use crate::view::{RemoteStatus, UpdateRecord};

type AppState = extract::State<Arc<State>>;

/// Header Workhorse adds to answers of held job requests.
const BUILDS_POLLING: &str = "Gitlab-Ci-Builds-Polling";

#[derive(Debug, Deserialize)]
pub(super) struct JobRequestBody {
    token: Option<String>,
    system_id: Option<String>,
    last_update: Option<String>,
    info: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UpdateBody {
    token: Option<String>,
    state: Option<String>,
    failure_reason: Option<String>,
    exit_code: Option<i64>,
    output: Option<Output>,
    info: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Output {
    checksum: Option<String>,
    bytesize: Option<u64>,
}

/// `POST /jobs/request`: 201 with a job, 204 without, 409 on a (forced) conflict.
pub(super) async fn request(
    extract::State(state): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: JobRequestBody = json_body(&headers, &body)?;
    let token = if state.lenient_clients && header_str(&headers, RUNNER_TOKEN).is_none() {
        body.token
            .as_deref()
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::bad_request("token is missing"))?
    } else {
        runner_token(&headers, body.token.as_deref())?
    };
    require_info(body.info.as_ref())?;
    let system_id = body.system_id.as_deref().filter(|id| !id.is_empty());
    if system_id.is_none() && !state.lenient_clients {
        return Err(ApiError::bad_request("system_id is missing"));
    }
    let (runner_id, paused) = {
        let mut inner = state.lock();
        let runner = authenticate_runner(&mut inner, token)?;
        if let Some(system_id) = system_id {
            record_manager(runner, system_id)?;
        }
        (runner.id, runner.paused)
    };
    if paused {
        return Ok(no_job(&state, false));
    }
    let mut queue = state.subscribe_queue();
    let current = queue.borrow_and_update().to_string();
    let held = body.last_update.as_deref() == Some(current.as_str());
    if held {
        let _counted = state.hold_poll();
        let deadline = Instant::now() + state.long_poll;
        tokio::select! {
            _ = queue.changed() => {}
            () = tokio::time::sleep_until(deadline) => return Ok(no_job(&state, true)),
            () = state.shutdown.cancelled() => return Ok(no_job(&state, true)),
        }
    }
    let response = match state.assign(runner_id) {
        // Rails sends `X-GitLab-Last-Update` only with 204: a runner keeps the version of its
        // last empty answer, so jobs still queued behind this one are not held by long polling.
        Assignment::Job(payload) => (StatusCode::CREATED, Json(payload)).into_response(),
        Assignment::Nothing => no_job(&state, held),
        Assignment::Conflict => ApiError::new(StatusCode::CONFLICT, "409 Conflict").into_response(),
    };
    Ok(response)
}

fn no_job(state: &State, held: bool) -> Response {
    let mut response = (
        StatusCode::NO_CONTENT,
        [(LAST_UPDATE, state.queue_version())],
    )
        .into_response();
    if held {
        response
            .headers_mut()
            .insert(BUILDS_POLLING, axum::http::HeaderValue::from_static("yes"));
    }
    response
}

/// `PUT /jobs/:id`: state updates, keep-alives and the final result.
pub(super) async fn update(
    extract::State(state): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let body: UpdateBody = json_body(&headers, &body)?;
    let at = state.elapsed();
    let mut inner = state.lock();
    let interval = inner.trace_update_interval_secs;
    let lenient = state.lenient_clients;
    let job = if lenient && header_str(&headers, JOB_TOKEN).is_none() {
        inner
            .jobs
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("Job"))?
    } else {
        authorized_job(&mut inner, id, &headers)?
    };
    if body.token.as_deref() != Some(job.view.token.expose()) {
        return Err(ApiError::forbidden(
            "token in the body does not match JOB-TOKEN",
        ));
    }
    require_processing(job)?;
    if !(lenient && body.info.is_none()) {
        require_info(body.info.as_ref())?;
    }
    let reported = reported_state(&body, job)?;
    let status = apply_update(job, &body, reported, at, lenient)?;
    job.view.updates.push(UpdateRecord {
        state: reported.as_str().to_owned(),
        failure_reason: body.failure_reason.clone(),
        exit_code: body.exit_code,
        checksum: body.output.as_ref().and_then(|o| o.checksum.clone()),
        bytesize: body.output.as_ref().and_then(|o| o.bytesize),
        status: status.as_u16(),
        at,
    });
    let headers = job_headers(job.view.status, interval);
    drop(inner);
    state.notify_change();
    Ok((status, headers).into_response())
}

fn reported_state(body: &UpdateBody, job: &JobRecord) -> Result<RemoteStatus, ApiError> {
    let reported = match body.state.as_deref() {
        Some("running") => RemoteStatus::Running,
        Some("success") => RemoteStatus::Success,
        Some("failed") => RemoteStatus::Failed,
        other => {
            return Err(ApiError::bad_request(format!(
                "state does not have a valid value: {other:?}"
            )));
        }
    };
    if let Some(reason) = body.failure_reason.as_deref()
        && !job.failure_reasons.iter().any(|known| known == reason)
    {
        return Err(ApiError::bad_request(format!(
            "failure_reason does not have a valid value: {reason:?}"
        )));
    }
    Ok(reported)
}

/// Applies a validated update; returns the HTTP status to answer.
fn apply_update(
    job: &mut JobRecord,
    body: &UpdateBody,
    reported: RemoteStatus,
    at: std::time::Duration,
    lenient: bool,
) -> Result<StatusCode, ApiError> {
    if reported == RemoteStatus::Running {
        return Ok(StatusCode::OK);
    }
    match body.output.as_ref() {
        // A client without trace checksums (lenient mode only): nothing to verify.
        None if lenient => {}
        None => return Err(ApiError::bad_request("output is missing")),
        Some(output) => {
            let expected_size = job.view.trace.len() as u64;
            let expected_checksum = trace_checksum(&job.view.trace);
            if output.bytesize != Some(expected_size)
                || output.checksum.as_deref() != Some(&expected_checksum)
            {
                job.trace_reset_allowed = true;
                return Ok(StatusCode::PRECONDITION_FAILED);
            }
        }
    }
    if job.accept_without_completing > 0 {
        job.accept_without_completing -= 1;
        return Ok(StatusCode::ACCEPTED);
    }
    let final_status = match (job.view.status, reported) {
        (RemoteStatus::Canceling, RemoteStatus::Failed) => RemoteStatus::Canceled,
        (_, reported) => reported,
    };
    set_status(job, final_status, at);
    Ok(StatusCode::OK)
}
