//! Artifact upload and download, plus the fake object storage behind direct downloads.
//!
//! Uploads are `multipart/form-data` with one `file` part; the bytes are kept in memory. Test
//! switches make the upload answer a one-time 307 (to `/-/redirected/…`, which accepts the
//! same upload) or a fixed error, and make `direct_download=true` downloads answer 302 to
//! `/-/object-storage/…`. Archive formats are not inspected.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{self, Multipart, Path, Query, RawQuery};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, authorized_job, job_id, require_processing};
use crate::state::{ArtifactUploadMode, State};
use crate::view::ArtifactRecord;

type AppState = extract::State<Arc<State>>;

/// Where a redirected upload goes (served by the same handler).
pub(super) const REDIRECTED_UPLOAD_ROUTE: &str = "/-/redirected/api/v4/jobs/{id}/artifacts";
/// Where direct downloads are redirected to; `{index}` is the artifact's position in the job.
pub(super) const OBJECT_STORAGE_ROUTE: &str = "/-/object-storage/jobs/{id}/artifacts/{index}";

#[derive(Debug, Deserialize)]
pub(super) struct UploadParams {
    expire_in: Option<String>,
    artifact_format: Option<String>,
    artifact_type: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct DownloadParams {
    direct_download: Option<String>,
}

/// `POST /api/v4/jobs/:id/artifacts`.
pub(super) async fn upload(
    extract::State(state): AppState,
    Path(id): Path<String>,
    Query(params): Query<UploadParams>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    if let Some(response) = check_upload(&state, id, &headers, raw_query.as_deref(), true)? {
        return Ok(response);
    }
    store_upload(&state, id, params, multipart).await
}

/// The redirect target of [`upload`]: same checks, never redirects again.
pub(super) async fn upload_redirected(
    extract::State(state): AppState,
    Path(id): Path<String>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    check_upload(&state, id, &headers, None, false)?;
    store_upload(&state, id, params, multipart).await
}

/// Authenticates the upload and applies the test switch; `Some` is an early answer.
fn check_upload(
    state: &State,
    id: u64,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    may_redirect: bool,
) -> Result<Option<Response>, ApiError> {
    let mut inner = state.lock();
    let mode = inner.artifact_upload;
    let job = authorized_job(&mut inner, id, headers)?;
    require_processing(job)?;
    match mode {
        ArtifactUploadMode::Accept => Ok(None),
        ArtifactUploadMode::RedirectOnce if !may_redirect => Ok(None),
        ArtifactUploadMode::RedirectOnce => {
            inner.artifact_upload = ArtifactUploadMode::Accept;
            let query = raw_query.map(|q| format!("?{q}")).unwrap_or_default();
            let location = format!(
                "{}/-/redirected/api/v4/jobs/{id}/artifacts{query}",
                state.url
            );
            let response = (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            );
            Ok(Some(response.into_response()))
        }
        ArtifactUploadMode::Reject(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("Error");
            Err(ApiError::new(
                status,
                format!("{} {reason}", status.as_u16()),
            ))
        }
    }
}

async fn store_upload(
    state: &State,
    id: u64,
    params: UploadParams,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|rejection| {
        ApiError::bad_request(format!("not a multipart upload: {rejection}"))
    })?;
    let (filename, data) = read_file_part(&mut multipart).await?;
    let record = ArtifactRecord {
        filename,
        data,
        expire_in: params.expire_in,
        artifact_format: params.artifact_format,
        artifact_type: params.artifact_type,
        at: state.elapsed(),
    };
    let mut inner = state.lock();
    let job = inner
        .jobs
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("Job"))?;
    job.view.artifacts.push(record);
    drop(inner);
    state.notify_change();
    Ok((StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response())
}

/// Reads the `file` part (name and bytes); other parts are ignored.
async fn read_file_part(multipart: &mut Multipart) -> Result<(String, Bytes), ApiError> {
    let malformed = |error: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("malformed multipart body: {error}"))
    };
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        if field.name() != Some("file") {
            continue;
        }
        let filename = field
            .file_name()
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request("file part has no filename"))?;
        let data = field.bytes().await.map_err(malformed)?;
        return Ok((filename, data));
    }
    Err(ApiError::bad_request("file is missing"))
}

/// `GET /api/v4/jobs/:id/artifacts`: the job's latest archive, with the job's own token.
pub(super) async fn download(
    extract::State(state): AppState,
    Path(id): Path<String>,
    Query(params): Query<DownloadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let mut inner = state.lock();
    let redirect =
        inner.direct_download_redirect && params.direct_download.as_deref() == Some("true");
    let job = authorized_job(&mut inner, id, &headers)?;
    let (index, artifact) = job
        .view
        .artifacts
        .iter()
        .enumerate()
        .rev()
        .find(|(_, artifact)| artifact.is_archive())
        .ok_or_else(|| ApiError::not_found("Artifact"))?;
    if redirect {
        let location = format!("{}/-/object-storage/jobs/{id}/artifacts/{index}", state.url);
        return Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
    }
    Ok(file_response(artifact))
}

/// The fake object storage: serves a stored artifact without authentication, like a
/// pre-signed URL would.
pub(super) async fn object_storage(
    extract::State(state): AppState,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let inner = state.lock();
    let artifact = index
        .parse::<usize>()
        .ok()
        .and_then(|index| inner.jobs.get(&id)?.view.artifacts.get(index))
        .ok_or_else(|| ApiError::not_found("Object"))?;
    Ok(file_response(artifact))
}

fn file_response(artifact: &ArtifactRecord) -> Response {
    let disposition = format!(
        "attachment; filename=\"{}\"",
        artifact.filename.replace('"', "")
    );
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    (StatusCode::OK, headers, artifact.data.clone()).into_response()
}
