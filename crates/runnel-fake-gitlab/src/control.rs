//! The `/__fake/` JSON control API, so other processes (benchmarks, scripts) can drive the fake.
//!
//! It mirrors the library handle: queue jobs (builder-like JSON or a raw payload), read a job
//! back, cancel or abort it, create runner tokens, add registration tokens, inject faults, read
//! the request log, create git repositories and commit files to them. It answers with tokens in clear: it is a test tool on a loopback address.
//! It is neither authenticated nor logged.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{self, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::builder::{GitStrategy, JobBuilder, PayloadVariable};
use crate::error::FakeError;
use crate::faults::{Endpoint, EndpointFilter, FaultAction};
use crate::routes::{ApiError, job_id};
use crate::state::{AUTH_TOKEN_PREFIX, RunnerSettings, State, random_token};
use crate::view::{JobView, RemoteStatus, RunnerKind};

type AppState = extract::State<Arc<State>>;

/// The control routes, all under `/__fake/`.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/__fake/jobs", post(create_job))
        .route("/__fake/jobs/{id}", get(show_job))
        .route("/__fake/jobs/{id}/cancel", post(cancel_job))
        .route("/__fake/jobs/{id}/abort", post(abort_job))
        .route("/__fake/runner-tokens", post(create_runner))
        .route("/__fake/registration-tokens", post(add_registration_token))
        .route("/__fake/faults", post(add_fault))
        .route("/__fake/requests", get(requests))
        .route("/__fake/repos", post(create_repo))
        .route("/__fake/repos/commits", post(create_commit))
        .with_state(state)
}

/// Builder-like description of a job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpecJson {
    name: String,
    stage: Option<String>,
    #[serde(default)]
    script: Vec<String>,
    #[serde(default)]
    after_script: Vec<String>,
    #[serde(default)]
    variables: Vec<VariableJson>,
    timeout: Option<u64>,
    git_strategy: Option<GitStrategy>,
    #[serde(default)]
    tags: Vec<String>,
    runner_id: Option<u64>,
    trace_sections: Option<bool>,
    failure_reasons: Option<Vec<String>>,
    /// Extra top-level payload fields (image, services, cache, artifacts, dependencies…).
    #[serde(default)]
    extra: Map<String, Value>,
    /// A repository made with `POST /__fake/repos` to clone.
    repo: Option<JobRepoJson>,
    /// `git_info.depth`.
    git_depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRepoJson {
    path: String,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariableJson {
    key: String,
    value: String,
    public: Option<bool>,
    #[serde(default)]
    masked: bool,
    #[serde(default)]
    file: bool,
    #[serde(default)]
    raw: bool,
}

impl JobSpecJson {
    fn into_builder(self, state: &State) -> Result<JobBuilder, ApiError> {
        let mut builder = JobBuilder::new(self.name)
            .script(self.script)
            .after_script(self.after_script)
            .tags(self.tags);
        if let Some(stage) = self.stage {
            builder = builder.stage(stage);
        }
        for variable in self.variables {
            builder = builder.raw_variable(PayloadVariable {
                public: variable.public.unwrap_or(!variable.masked),
                masked: variable.masked,
                file: variable.file,
                raw: variable.raw,
                ..PayloadVariable::new(variable.key, variable.value)
            });
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(strategy) = self.git_strategy {
            builder = builder.git_strategy(strategy);
        }
        if let Some(runner_id) = self.runner_id {
            builder = builder.runner(runner_id);
        }
        if let Some(enabled) = self.trace_sections {
            builder = builder.trace_sections(enabled);
        }
        if let Some(reasons) = self.failure_reasons {
            builder = builder.failure_reasons(reasons);
        }
        for (key, value) in self.extra {
            builder = builder.extra(key, value);
        }
        if let Some(repo) = self.repo {
            let handle = state.git.repo(&repo.path).ok_or_else(|| {
                ApiError::bad_request(format!("repository {} does not exist", repo.path))
            })?;
            builder = builder.repo(&handle, repo.git_ref, &repo.sha);
        }
        if let Some(depth) = self.git_depth {
            builder = builder.git_depth(depth);
        }
        Ok(builder)
    }
}

/// `POST /__fake/jobs`: `{"raw": {...}}` queues a payload as is, anything else is a
/// [`JobSpecJson`].
async fn create_job(extract::State(state): AppState, body: Bytes) -> Result<Response, ApiError> {
    let mut value: Value = parse(&body)?;
    let id = match value
        .as_object_mut()
        .and_then(|object| object.remove("raw"))
    {
        Some(raw) => state.enqueue_raw(raw).map_err(ApiError::bad_request)?,
        None => {
            let spec: JobSpecJson = serde_json::from_value(value).map_err(ApiError::bad_request)?;
            state.enqueue_definition(&spec.into_builder(&state)?.build())
        }
    };
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoJson {
    path: String,
}

/// `POST /__fake/repos` `{"path": "group/project"}`: an empty repository; answers its URL.
async fn create_repo(extract::State(state): AppState, body: Bytes) -> Result<Response, ApiError> {
    let spec: RepoJson = parse(&body)?;
    let url = state.url.clone();
    let repo = tokio::task::spawn_blocking(move || state.git.create_repo(&url, &spec.path))
        .await
        .map_err(|error| ApiError::bad_request(format!("repository creation failed: {error}")))?
        .map_err(ApiError::bad_request)?;
    let answer = json!({"path": repo.path(), "url": repo.url()});
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitJson {
    path: String,
    #[serde(default = "default_branch")]
    branch: String,
    #[serde(default = "default_message")]
    message: String,
    /// File path → content.
    #[serde(default)]
    files: Map<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_message() -> String {
    "commit".to_owned()
}

/// `POST /__fake/repos/commits`: commits `files` (path → text) and `remove` on `branch` of
/// repository `path`; answers the commit id.
async fn create_commit(extract::State(state): AppState, body: Bytes) -> Result<Response, ApiError> {
    let spec: CommitJson = parse(&body)?;
    let repo = state
        .git
        .repo(&spec.path)
        .ok_or_else(|| ApiError::not_found("Repository"))?;
    let sha = tokio::task::spawn_blocking(move || {
        let mut commit = repo.commit(&spec.branch, &spec.message);
        for (path, content) in &spec.files {
            let content = match content {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            commit = commit.file(path, content);
        }
        for path in &spec.remove {
            commit = commit.remove(path);
        }
        commit.create()
    })
    .await
    .map_err(|error| ApiError::bad_request(format!("commit failed: {error}")))?
    .map_err(ApiError::bad_request)?;
    Ok((StatusCode::CREATED, Json(json!({ "sha": sha }))).into_response())
}

/// `GET /__fake/jobs/:id`: the job view, trace as text plus its byte length.
async fn show_job(
    extract::State(state): AppState,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let view = state
        .lock()
        .jobs
        .get(&id)
        .map(|job| job.view.clone())
        .ok_or_else(|| ApiError::not_found("Job"))?;
    Ok(Json(job_json(&view)))
}

fn job_json(view: &JobView) -> Value {
    json!({
        "id": view.id,
        "token": view.token.expose(),
        "status": view.status,
        "history": view.history,
        "runner_id": view.runner_id,
        "trace": view.trace_text(),
        "trace_bytes": view.trace.len(),
        "patches": view.patches,
        "updates": view.updates,
        "artifacts": view.artifacts.iter().map(|artifact| {
            let mut value = serde_json::to_value(artifact).unwrap_or(Value::Null);
            if let Value::Object(object) = &mut value {
                object.insert("size".into(), Value::from(artifact.data.len()));
            }
            value
        }).collect::<Vec<_>>(),
    })
}

/// `POST /__fake/jobs/:id/cancel`.
async fn cancel_job(
    extract::State(state): AppState,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = job_id(&id)?;
    state.cancel_job(id).map_err(unknown_job)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /__fake/jobs/:id/abort`.
async fn abort_job(
    extract::State(state): AppState,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = job_id(&id)?;
    if state.set_remote_status(id, RemoteStatus::Canceled) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("Job"))
    }
}

fn unknown_job(error: FakeError) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, error.to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunnerJson {
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    run_untagged: Option<bool>,
    #[serde(default)]
    paused: bool,
    /// Use this `glrt-` token instead of a random one.
    token: Option<String>,
}

/// `POST /__fake/runner-tokens` (body optional) -> `{id, token}`.
async fn create_runner(extract::State(state): AppState, body: Bytes) -> Result<Response, ApiError> {
    let spec: RunnerJson = if body.is_empty() {
        RunnerJson::default()
    } else {
        parse(&body)?
    };
    let defaults = RunnerSettings::default();
    let settings = RunnerSettings {
        description: spec.description.unwrap_or(defaults.description),
        tags: spec.tags,
        run_untagged: spec.run_untagged.unwrap_or(defaults.run_untagged),
        paused: spec.paused,
    };
    let token = spec
        .token
        .unwrap_or_else(|| random_token(AUTH_TOKEN_PREFIX, 20));
    let runner = state.create_runner(RunnerKind::Authentication, token, settings);
    let body = json!({ "id": runner.id, "token": runner.token.expose() });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationTokenJson {
    token: String,
}

/// `POST /__fake/registration-tokens` `{token}`.
async fn add_registration_token(
    extract::State(state): AppState,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let spec: RegistrationTokenJson = parse(&body)?;
    state.lock().registration_tokens.insert(spec.token);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultJson {
    /// Endpoint name (`patch_trace`, `request_job`…); absent means every endpoint.
    endpoint: Option<Endpoint>,
    /// Status to answer; absent means drop the connection.
    status: Option<u16>,
    /// Number of requests affected…
    count: Option<u32>,
    /// …or how long the fault lasts.
    duration_ms: Option<u64>,
}

/// `POST /__fake/faults`.
async fn add_fault(extract::State(state): AppState, body: Bytes) -> Result<StatusCode, ApiError> {
    let spec: FaultJson = parse(&body)?;
    let filter = spec
        .endpoint
        .map_or(EndpointFilter::Any, EndpointFilter::Only);
    let action = spec.status.map_or(FaultAction::Drop, FaultAction::Respond);
    let mut inner = state.lock();
    match (spec.count, spec.duration_ms) {
        (Some(count), None) => inner.faults.for_requests(filter, count, action),
        (None, Some(ms)) => {
            let until = Instant::now() + Duration::from_millis(ms);
            inner.faults.until(filter, until, action);
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of count and duration_ms",
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /__fake/requests`: the request log, tokens included.
async fn requests(extract::State(state): AppState) -> Json<Value> {
    let requests = state.lock().requests.clone();
    Json(serde_json::to_value(requests).unwrap_or(Value::Null))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "invalid JSON at line {} column {}: {error}",
            error.line(),
            error.column()
        ))
    })
}
