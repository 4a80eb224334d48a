//! Runner endpoints (reference 1.5, 1.6, 3.1, 3.2): legacy registration, verify, unregister
//! (runner or runner manager) and token resets.
//!
//! Each sends the runner token both as `RUNNER-TOKEN` and in the body (except the token
//! resets, which the official runner sends without the header) and maps the one expected
//! status to a value; every other status is an [`ApiError::Status`]. Persisting the results is
//! the caller's job.

use reqwest::{Method, StatusCode};
use runnel_types::{RunnerToken, Secret};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::{Client, Sent, secret_header};
use crate::error::ApiError;
use crate::info::{InfoWire, RunnerInfo};
use crate::lenient::Int;
use crate::observe::Endpoint;

pub(crate) const RUNNER_TOKEN: &str = "runner-token";
const PRIVATE_TOKEN: &str = "private-token";

/// A legacy registration (`POST runners` with a registration token).
#[derive(Clone, Copy, Debug)]
pub struct RegisterRequest<'a> {
    /// The registration token.
    pub registration_token: &'a RunnerToken,
    /// The runner description (its name).
    pub description: &'a str,
    /// A maintenance note.
    pub maintenance_note: &'a str,
    /// Tags, sent comma-joined.
    pub tags: &'a [String],
    /// Whether the runner picks untagged jobs.
    pub run_untagged: bool,
    /// Whether the runner is locked to its project.
    pub locked: bool,
    /// `not_protected` or `ref_protected`; empty for the server default.
    pub access_level: &'a str,
    /// Maximum job timeout in seconds; 0 for none.
    pub maximum_timeout: u64,
    /// Whether the runner starts paused.
    pub paused: bool,
    /// What to report in `info`.
    pub info: &'a RunnerInfo,
}

/// A verify request (`POST runners/verify`), also the new-workflow registration.
#[derive(Clone, Copy, Debug)]
pub struct VerifyRequest<'a> {
    /// The runner token.
    pub token: &'a RunnerToken,
    /// The runner manager's system id.
    pub system_id: &'a str,
    /// What to report in `info`.
    pub info: &'a RunnerInfo,
}

/// A runner as GitLab knows it after registration or verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The runner id; `None` when the server did not send one (a legacy server).
    pub id: Option<u64>,
    /// The runner token to store.
    pub token: RunnerToken,
    /// When the token expires, if it does.
    pub token_expires_at: Option<OffsetDateTime>,
}

/// A fresh token from a token reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetToken {
    /// The new runner token.
    pub token: RunnerToken,
    /// When it expires, if it does.
    pub token_expires_at: Option<OffsetDateTime>,
}

#[derive(Serialize)]
struct RegisterWire<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    maintenance_note: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    tag_list: String,
    run_untagged: bool,
    locked: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    access_level: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    maximum_timeout: u64,
    paused: bool,
    info: InfoWire<'a>,
    token: &'a str,
}

#[derive(Serialize)]
struct VerifyWire<'a> {
    info: InfoWire<'a>,
    token: &'a str,
    system_id: &'a str,
}

#[derive(Serialize)]
struct TokenWire<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_id: Option<&'a str>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RegisteredWire {
    id: Option<Int>,
    token: Option<String>,
    token_expires_at: Option<String>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Client {
    /// Registers a runner with a legacy registration token (`POST runners`, expects 201).
    pub async fn register_runner(
        &self,
        request: &RegisterRequest<'_>,
    ) -> Result<Registered, ApiError> {
        let token = request.registration_token.expose();
        let body = RegisterWire {
            description: request.description,
            maintenance_note: request.maintenance_note,
            tag_list: request.tags.join(","),
            run_untagged: request.run_untagged,
            locked: request.locked,
            access_level: request.access_level,
            maximum_timeout: request.maximum_timeout,
            paused: request.paused,
            info: request.info.into(),
            token,
        };
        let sent = self
            .runner_post(Endpoint::RegisterRunner, "runners", token, &body)
            .await?;
        if sent.status() != StatusCode::CREATED {
            return Err(sent.unexpected());
        }
        registered(sent, request.registration_token).await
    }

    /// Verifies a runner token (`POST runners/verify`, expects 200). A legacy server answers
    /// with plain text: the result then has no id and keeps the token.
    pub async fn verify_runner(&self, request: &VerifyRequest<'_>) -> Result<Registered, ApiError> {
        let token = request.token.expose();
        let body = VerifyWire {
            info: request.info.into(),
            token,
            system_id: request.system_id,
        };
        let sent = self
            .runner_post(Endpoint::VerifyRunner, "runners/verify", token, &body)
            .await?;
        if sent.status() != StatusCode::OK {
            return Err(sent.unexpected());
        }
        if !sent.is_json() {
            return Ok(Registered {
                id: None,
                token: request.token.clone(),
                token_expires_at: None,
            });
        }
        registered(sent, request.token).await
    }

    /// Deletes a runner registered with a legacy token (`DELETE runners`, expects 204).
    pub async fn unregister_runner(&self, token: &RunnerToken) -> Result<(), ApiError> {
        let body = TokenWire {
            token: token.expose(),
            system_id: None,
        };
        self.runner_delete(Endpoint::UnregisterRunner, "runners", token, &body)
            .await
    }

    /// Deletes this runner manager of a `glrt-` runner (`DELETE runners/managers`, expects
    /// 204).
    pub async fn unregister_runner_manager(
        &self,
        token: &RunnerToken,
        system_id: &str,
    ) -> Result<(), ApiError> {
        let body = TokenWire {
            token: token.expose(),
            system_id: Some(system_id),
        };
        self.runner_delete(
            Endpoint::UnregisterRunnerManager,
            "runners/managers",
            token,
            &body,
        )
        .await
    }

    /// Rotates a runner token (`POST runners/reset_authentication_token`, expects 201).
    pub async fn reset_token(&self, token: &RunnerToken) -> Result<ResetToken, ApiError> {
        let url = self.endpoint_url("runners/reset_authentication_token");
        let body = TokenWire {
            token: token.expose(),
            system_id: None,
        };
        let sent = self
            .send(Endpoint::ResetToken, Method::POST, &url, |request| {
                Ok(json_body(request, &body))
            })
            .await?;
        reset_token_result(sent).await
    }

    /// Rotates the token of runner `runner_id` with a personal access token
    /// (`POST runners/:id/reset_authentication_token`, no body, expects 201).
    pub async fn reset_token_with_pat(
        &self,
        runner_id: u64,
        pat: &Secret,
    ) -> Result<ResetToken, ApiError> {
        let url = self.endpoint_url(&format!("runners/{runner_id}/reset_authentication_token"));
        let (name, value) = secret_header(&Method::POST, &url, PRIVATE_TOKEN, pat.expose())?;
        let sent = self
            .send(Endpoint::ResetTokenWithPat, Method::POST, &url, |request| {
                Ok(accept_json(request).header(name.clone(), value.clone()))
            })
            .await?;
        reset_token_result(sent).await
    }

    async fn runner_post(
        &self,
        endpoint: Endpoint,
        path: &str,
        token: &str,
        body: &impl Serialize,
    ) -> Result<Sent, ApiError> {
        let url = self.endpoint_url(path);
        let (name, value) = secret_header(&Method::POST, &url, RUNNER_TOKEN, token)?;
        self.send(endpoint, Method::POST, &url, |request| {
            Ok(json_body(request, body).header(name.clone(), value.clone()))
        })
        .await
    }

    async fn runner_delete(
        &self,
        endpoint: Endpoint,
        path: &str,
        token: &RunnerToken,
        body: &impl Serialize,
    ) -> Result<(), ApiError> {
        let url = self.endpoint_url(path);
        let (name, value) = secret_header(&Method::DELETE, &url, RUNNER_TOKEN, token.expose())?;
        let sent = self
            .send(endpoint, Method::DELETE, &url, |request| {
                Ok(json_body(request, body).header(name.clone(), value.clone()))
            })
            .await?;
        if sent.status() == StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(sent.unexpected())
        }
    }
}

/// Adds a JSON body and asks for a JSON answer.
pub(crate) fn json_body(
    request: reqwest::RequestBuilder,
    body: &impl Serialize,
) -> reqwest::RequestBuilder {
    accept_json(request).json(body)
}

pub(crate) fn accept_json(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.header(reqwest::header::ACCEPT, "application/json")
}

async fn registered(sent: Sent, fallback_token: &RunnerToken) -> Result<Registered, ApiError> {
    let (method, url) = (sent.method.clone(), sent.url.clone());
    let wire: RegisteredWire = sent.json().await?;
    let token_expires_at = expiry(wire.token_expires_at, &method, &url)?;
    Ok(Registered {
        id: wire.id.map(Int::unsigned).filter(|id| *id != 0),
        token: wire
            .token
            .filter(|t| !t.is_empty())
            .map_or_else(|| fallback_token.clone(), RunnerToken::new),
        token_expires_at,
    })
}

async fn reset_token_result(sent: Sent) -> Result<ResetToken, ApiError> {
    if sent.status() != StatusCode::CREATED {
        return Err(sent.unexpected());
    }
    let (method, url) = (sent.method.clone(), sent.url.clone());
    let wire: RegisteredWire = sent.json().await?;
    let token_expires_at = expiry(wire.token_expires_at, &method, &url)?;
    let token = wire.token.unwrap_or_default();
    Ok(ResetToken {
        token: RunnerToken::new(token),
        token_expires_at,
    })
}

/// Parses an RFC 3339 expiry; absent, empty and Go's zero time mean "does not expire".
fn expiry(
    value: Option<String>,
    method: &Method,
    url: &crate::SafeUrl,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let at = OffsetDateTime::parse(&value, &Rfc3339).map_err(|source| ApiError::InvalidExpiry {
        method: method.clone(),
        url: url.clone(),
        value: value.clone(),
        source,
    })?;
    Ok((at.year() > 1).then_some(at))
}
