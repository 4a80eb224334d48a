//! `PATCH /jobs/:id/trace`: appends a chunk of the job log.
//!
//! Strict on offsets: the chunk must start exactly where the stored trace ends (else 416 with
//! `Range: 0-<len>`), its `Content-Range` end must be inclusive and match the body length, and
//! the trace may restart at 0 only after the final update was refused with 412. GitLab itself
//! would also accept overwrites at earlier offsets; the fake refuses them to catch runner bugs.

use std::sync::Arc;

use axum::extract::{self, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{
    ApiError, TRACE_UPDATE_INTERVAL, authorized_job, header_str, job_headers, job_id,
    require_processing,
};
use crate::state::State;
use crate::view::PatchRecord;

type AppState = extract::State<Arc<State>>;

/// `PATCH /jobs/:id/trace`.
pub(super) async fn patch(
    extract::State(state): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let at = state.elapsed();
    let mut inner = state.lock();
    let interval = inner.trace_update_interval_secs;
    let job = authorized_job(&mut inner, id, &headers)?;
    require_processing(job)
        .map_err(|error| error.with_header(TRACE_UPDATE_INTERVAL, &interval.to_string()))?;
    let raw_range = header_str(&headers, "Content-Range")
        .ok_or_else(|| ApiError::bad_request("Missing header Content-Range"))?;
    let (start, end) = parse_content_range(raw_range).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid Content-Range {raw_range:?}, expected <start>-<end>"
        ))
    })?;
    let len = body.len() as u64;
    let current = job.view.trace.len() as u64;
    let reset = start == 0 && current > 0 && job.trace_reset_allowed;
    let end_matches = end.checked_sub(start).and_then(|span| span.checked_add(1)) == Some(len);
    // Lenient mode uses only the start offset, as GitLab does.
    let outcome = if !end_matches && !state.lenient_clients {
        Err(ApiError::bad_request(format!(
            "Content-Range {raw_range:?} does not match the body length {len}"
        )))
    } else if start != current && !reset {
        Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "416 Range Not Satisfiable",
        )
        .with_header("Range", &format!("0-{current}"))
        .with_job_status(job.view.status)
        .with_header(TRACE_UPDATE_INTERVAL, &interval.to_string()))
    } else {
        if reset {
            job.view.trace.clear();
            job.trace_reset_allowed = false;
        }
        job.view.trace.extend_from_slice(&body);
        Ok(job.view.trace.len())
    };
    let status = match &outcome {
        Ok(_) => StatusCode::ACCEPTED,
        Err(error) => error.status(),
    };
    job.view.patches.push(PatchRecord {
        start,
        end,
        len,
        reset: reset && outcome.is_ok(),
        status: status.as_u16(),
        at,
    });
    let job_status = job.view.status;
    drop(inner);
    state.notify_change();
    let new_len = outcome?;
    let range = [("Range", format!("0-{new_len}"))];
    Ok((
        StatusCode::ACCEPTED,
        range,
        job_headers(job_status, interval),
    )
        .into_response())
}

/// Parses `start-end` (inclusive, no unit) as the runner sends it.
fn parse_content_range(raw: &str) -> Option<(u64, u64)> {
    let (start, end) = raw.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = end.parse().ok()?;
    (end >= start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("0-9"), Some((0, 9)));
        assert_eq!(parse_content_range("10-10"), Some((10, 10)));
        assert_eq!(parse_content_range("bytes 0-9"), None);
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("0-"), None);
        assert_eq!(parse_content_range("-3"), None);
    }
}
