//! Runner endpoints: legacy registration, verify, unregister, token reset.
//!
//! Tokens must travel both in the `RUNNER-TOKEN` header and in the body, as the official runner
//! sends them. Expired tokens are refused like unknown ones. The fake does not model groups,
//! projects or runner ownership.

use std::sync::Arc;

use axum::Json;
use axum::extract::{self, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    ApiError, PRIVATE_TOKEN, expiry_json, header_str, json_body, require_info, runner_token,
};
use crate::state::{AUTH_TOKEN_PREFIX, Inner, RunnerSettings, State, random_token};
use crate::view::{RunnerKind, RunnerView};

type AppState = extract::State<Arc<State>>;

#[derive(Debug, Deserialize)]
pub(super) struct RegisterBody {
    token: Option<String>,
    description: Option<String>,
    maintenance_note: Option<String>,
    tag_list: Option<String>,
    run_untagged: Option<bool>,
    locked: Option<bool>,
    access_level: Option<String>,
    maximum_timeout: Option<u64>,
    paused: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenBody {
    token: Option<String>,
    system_id: Option<String>,
    info: Option<Value>,
}

/// `POST /runners`: registers a runner with a (legacy) registration token.
pub(super) async fn register(
    extract::State(state): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RegisterBody = json_body(&headers, &body)?;
    let token = runner_token(&headers, body.token.as_deref())?;
    if !state.lock().registration_tokens.contains(token) {
        return Err(ApiError::forbidden("invalid registration token"));
    }
    let tags: Vec<String> = body
        .tag_list
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect();
    let run_untagged = body.run_untagged.unwrap_or(true);
    if !run_untagged && tags.is_empty() {
        return Err(ApiError::bad_request(
            "tags list can not be empty when runner is not allowed to pick untagged jobs",
        ));
    }
    let access_level = body
        .access_level
        .unwrap_or_else(|| "not_protected".to_owned());
    if !matches!(access_level.as_str(), "not_protected" | "ref_protected") {
        return Err(ApiError::bad_request(
            "access_level does not have a valid value",
        ));
    }
    let settings = RunnerSettings {
        description: body.description.unwrap_or_default(),
        tags,
        run_untagged,
        paused: body.paused.unwrap_or(false),
    };
    let mut runner = state.create_runner(RunnerKind::Legacy, random_token("", 20), settings);
    runner.locked = body.locked.unwrap_or(true);
    runner.access_level = access_level;
    runner.maximum_timeout = body.maximum_timeout;
    runner.maintenance_note = body.maintenance_note.unwrap_or_default();
    state.lock().runners.insert(runner.id, runner.clone());
    Ok(credentials_response(StatusCode::CREATED, &runner))
}

/// `POST /runners/verify`: checks a token; for `glrt-` tokens also records the runner manager.
pub(super) async fn verify(
    extract::State(state): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: TokenBody = json_body(&headers, &body)?;
    let token = runner_token(&headers, body.token.as_deref())?;
    require_info(body.info.as_ref())?;
    let mut inner = state.lock();
    let runner = authenticate_runner(&mut inner, token)?;
    let system_id = match (runner.kind, body.system_id.as_deref()) {
        (RunnerKind::Authentication, None) => {
            return Err(ApiError::bad_request("system_id is missing"));
        }
        (_, system_id) => system_id,
    };
    if let Some(system_id) = system_id {
        record_manager(runner, system_id)?;
    }
    let response = credentials_response(StatusCode::OK, runner);
    drop(inner);
    state.notify_change();
    Ok(response)
}

/// `DELETE /runners`: deletes the runner.
pub(super) async fn unregister(
    extract::State(state): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body: TokenBody = json_body(&headers, &body)?;
    let token = runner_token(&headers, body.token.as_deref())?;
    let mut inner = state.lock();
    let id = authenticate_runner(&mut inner, token)?.id;
    inner.runners.remove(&id);
    drop(inner);
    state.notify_change();
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /runners/managers`: forgets one `system_id`; the token stays valid.
pub(super) async fn unregister_manager(
    extract::State(state): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body: TokenBody = json_body(&headers, &body)?;
    let token = runner_token(&headers, body.token.as_deref())?;
    let system_id = body
        .system_id
        .ok_or_else(|| ApiError::bad_request("system_id is missing"))?;
    let mut inner = state.lock();
    let runner = authenticate_runner(&mut inner, token)?;
    let before = runner.managers.len();
    runner.managers.retain(|manager| *manager != system_id);
    if runner.managers.len() == before {
        return Err(ApiError::not_found("Runner Manager"));
    }
    drop(inner);
    state.notify_change();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /runners/reset_authentication_token`: rotates a token; the old one stops working.
pub(super) async fn reset_token(
    extract::State(state): AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: TokenBody = json_body(&headers, &body)?;
    let token = body
        .token
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::bad_request("token is missing"))?;
    let expires_at = state.token_expiry();
    let mut inner = state.lock();
    let runner = authenticate_runner(&mut inner, &token)?;
    rotate(runner, expires_at);
    let response = rotated_response(runner);
    drop(inner);
    state.notify_change();
    Ok(response)
}

/// `POST /runners/:id/reset_authentication_token`: the same, authorised by a personal access
/// token instead of the runner token.
pub(super) async fn reset_token_with_pat(
    extract::State(state): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let expires_at = state.token_expiry();
    let mut inner = state.lock();
    let pat_ok = header_str(&headers, PRIVATE_TOKEN)
        .is_some_and(|pat| inner.personal_access_tokens.contains(pat));
    if !pat_ok {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "401 Unauthorized"));
    }
    let runner = id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.runners.get_mut(&id))
        .ok_or_else(|| ApiError::not_found("Runner"))?;
    rotate(runner, expires_at);
    let response = rotated_response(runner);
    drop(inner);
    state.notify_change();
    Ok(response)
}

/// Finds the runner owning `token`; unknown and expired tokens are both 403.
pub(super) fn authenticate_runner<'a>(
    inner: &'a mut Inner,
    token: &str,
) -> Result<&'a mut RunnerView, ApiError> {
    let runner = inner
        .runners
        .values_mut()
        .find(|runner| runner.token.expose() == token)
        .ok_or_else(|| ApiError::forbidden("invalid runner token"))?;
    if runner
        .token_expires_at
        .is_some_and(|expires_at| expires_at <= OffsetDateTime::now_utc())
    {
        return Err(ApiError::forbidden("runner token expired"));
    }
    Ok(runner)
}

/// Validates a `system_id` (`^[sr]_[0-9a-zA-Z]{12}$`) and remembers it as a manager.
pub(super) fn record_manager(runner: &mut RunnerView, system_id: &str) -> Result<(), ApiError> {
    if !is_valid_system_id(system_id) {
        return Err(ApiError::bad_request(format!(
            "system_id {system_id:?} does not match ^[sr]_[0-9a-zA-Z]{{12}}$"
        )));
    }
    if !runner.managers.iter().any(|manager| manager == system_id) {
        runner.managers.push(system_id.to_owned());
    }
    Ok(())
}

fn is_valid_system_id(system_id: &str) -> bool {
    let Some((kind, rest)) = system_id.split_once('_') else {
        return false;
    };
    matches!(kind, "s" | "r") && rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn rotate(runner: &mut RunnerView, expires_at: Option<OffsetDateTime>) {
    let prefix = match runner.kind {
        RunnerKind::Authentication => AUTH_TOKEN_PREFIX,
        RunnerKind::Legacy => "",
    };
    runner.token = random_token(prefix, 20).into();
    runner.token_expires_at = expires_at;
}

fn credentials_response(status: StatusCode, runner: &RunnerView) -> Response {
    let body = json!({
        "id": runner.id,
        "token": runner.token.expose(),
        "token_expires_at": expiry_json(runner.token_expires_at),
    });
    (status, Json(body)).into_response()
}

fn rotated_response(runner: &RunnerView) -> Response {
    let body = json!({
        "token": runner.token.expose(),
        "token_expires_at": expiry_json(runner.token_expires_at),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::is_valid_system_id;

    #[test]
    fn system_id_format() {
        assert!(is_valid_system_id("s_760931104d8c"));
        assert!(is_valid_system_id("r_ABCdef123456"));
        assert!(!is_valid_system_id("x_760931104d8c"));
        assert!(!is_valid_system_id("s_760931104d8"));
        assert!(!is_valid_system_id("s_760931104d8-"));
        assert!(!is_valid_system_id("s760931104d8cc"));
    }
}
