//! Git smart HTTP: the router's fallback hands `<path>.git/…` requests to `git http-backend`.
//!
//! Each request checks basic auth like GitLab (`gitlab-ci-token` and the token of a running
//! job; 401 with `WWW-Authenticate` otherwise), then runs `git http-backend` as a CGI program:
//! the request becomes its environment (`PATH_INFO`, `QUERY_STRING`, `REQUEST_METHOD`,
//! `CONTENT_TYPE`, `REMOTE_USER`, `HTTP_GIT_PROTOCOL`…) and body on stdin, and its stdout is
//! parsed into a status, headers and a streamed body. Git LFS downloads are answered here
//! (the batch API and the object URLs it hands out); LFS uploads and locks are refused.
//! Anything that is not a repository path gets the API's JSON 404.

use std::process::Stdio;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::io::ReaderStream;
use tracing::{debug, warn};

use crate::routes::ApiError;
use crate::state::State;

/// The user name GitLab expects with a job token.
const JOB_TOKEN_USER: &str = "gitlab-ci-token";
/// What GitLab answers when credentials are missing or wrong.
const ACCESS_DENIED: &str = "HTTP Basic: Access denied. If a password was provided for Git \
                             authentication, the password was incorrect or you're required \
                             to use a token instead of a password.\n";
const NOT_FOUND: &str = "The project you were looking for could not be found or you don't have \
                         permission to view it.\n";

/// The router fallback: git requests go to `http-backend`, the rest is a 404.
pub(crate) async fn serve_or_not_found(
    AxumState(state): AxumState<Arc<State>>,
    request: Request<Body>,
) -> Response {
    match GitPath::parse(request.uri().path()) {
        Some(path) => serve(&state, path, request).await,
        None => ApiError::new(StatusCode::NOT_FOUND, "404 Not Found").into_response(),
    }
}

/// A request path split into the repository and what follows `.git`.
#[derive(Debug, PartialEq, Eq)]
struct GitPath {
    /// `namespace/project`.
    repo: String,
    /// `/info/refs`, `/git-upload-pack`, … (may be empty).
    rest: String,
}

impl GitPath {
    fn parse(path: &str) -> Option<Self> {
        let path = path.strip_prefix('/')?;
        if path.starts_with("api/") {
            return None;
        }
        let (repo, rest) = match path.find(".git/") {
            Some(at) => (&path[..at], &path[at + 4..]),
            None => (path.strip_suffix(".git")?, ""),
        };
        if repo.is_empty() || repo.split('/').any(|s| s.is_empty() || s == "..") {
            return None;
        }
        Some(Self {
            repo: repo.to_owned(),
            rest: rest.to_owned(),
        })
    }
}

async fn serve(state: &State, path: GitPath, request: Request<Body>) -> Response {
    if !authorized(state, request.headers()) {
        return denied();
    }
    let Some(repo) = state.git.repo(&path.repo) else {
        return text(StatusCode::NOT_FOUND, NOT_FOUND);
    };
    match (request.method().as_str(), path.rest.as_str()) {
        ("POST", "/info/lfs/objects/batch") => return lfs_batch(&repo, request).await,
        ("POST", rest) if rest.starts_with("/info/lfs/") => {
            return lfs_json(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"}));
        }
        ("GET", rest) if rest.starts_with(LFS_OBJECTS) => {
            let oid = &rest[LFS_OBJECTS.len()..];
            return match repo.lfs_object(oid) {
                Some(content) => (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    content,
                )
                    .into_response(),
                None => text(StatusCode::NOT_FOUND, "404 LFS object not found\n"),
            };
        }
        _ => {}
    }
    let root = repo.root().to_path_buf();
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            debug!(%error, "failed to read a git request body");
            return text(StatusCode::BAD_REQUEST, "unreadable request body\n");
        }
    };
    let header = |name: &HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", format!("/{}.git{}", path.repo, path.rest))
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header(&header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header(&header::CONTENT_ENCODING))
        .env(
            "HTTP_GIT_PROTOCOL",
            header(&HeaderName::from_static("git-protocol")),
        )
        .env("REMOTE_USER", JOB_TOKEN_USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            warn!(%error, "failed to start git http-backend");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git http-backend unavailable\n",
            );
        }
    };
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend pipes\n",
        );
    };
    tokio::spawn(async move {
        if let Err(error) = stdin.write_all(&body).await {
            debug!(%error, "git http-backend stopped reading its input");
        }
    });
    let repo_path = path.repo.clone();
    tokio::spawn(async move {
        let mut errors = String::new();
        if let Err(error) = stderr.read_to_string(&mut errors).await {
            debug!(%error, "failed to read git http-backend stderr");
        }
        match child.wait().await {
            Ok(status) if status.success() => {}
            Ok(status) => debug!(repo = repo_path, %status, errors, "git http-backend failed"),
            Err(error) => warn!(repo = repo_path, %error, "failed to wait for git http-backend"),
        }
    });
    cgi_response(BufReader::new(stdout)).await
}

/// Where the batch API sends clients to download an object (GitLab's path).
const LFS_OBJECTS: &str = "/gitlab-lfs/objects/";
const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

#[derive(Debug, Deserialize)]
struct BatchRequest {
    operation: String,
    objects: Vec<BatchObject>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    size: u64,
}

/// The LFS batch API: download actions pointing back at the fake, with the caller's auth.
async fn lfs_batch(repo: &super::RepoHandle, request: Request<Body>) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(error) => {
            let message = format!("invalid batch request: {error}");
            return lfs_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": message}),
            );
        }
    };
    if batch.operation != "download" {
        return lfs_json(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"}));
    }
    let objects: Vec<Value> = batch
        .objects
        .iter()
        .map(|object| match repo.lfs_object(&object.oid) {
            Some(content) => json!({
                "oid": object.oid,
                "size": content.len(),
                "authenticated": true,
                "actions": {"download": {
                    "href": format!("{}{LFS_OBJECTS}{}", repo.url(), object.oid),
                    "header": {"Authorization": authorization},
                }},
            }),
            None => json!({
                "oid": object.oid,
                "size": object.size,
                "error": {"code": 404, "message": "Object does not exist on the server"},
            }),
        })
        .collect();
    lfs_json(
        StatusCode::OK,
        json!({"transfer": "basic", "objects": objects}),
    )
}

fn lfs_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, LFS_MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// Reads the CGI header block from `stdout` and streams the rest as the body.
async fn cgi_response<R>(mut stdout: BufReader<R>) -> Response
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    loop {
        let mut line = String::new();
        match stdout.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "unreadable git http-backend output");
                return text(StatusCode::BAD_GATEWAY, "bad CGI output\n");
            }
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            warn!(line, "malformed CGI header from git http-backend");
            return text(StatusCode::BAD_GATEWAY, "bad CGI output\n");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response = response.header(name, value);
        }
    }
    response
        .status(status)
        .body(Body::from_stream(ReaderStream::new(stdout)))
        .unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "bad CGI output\n"))
}

/// Whether the request carries basic auth as `gitlab-ci-token:<token of a running job>`.
fn authorized(state: &State, headers: &axum::http::HeaderMap) -> bool {
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|c| c.split_once(':')) else {
        return false;
    };
    let running =
        state.lock().jobs.values().any(|job| {
            job.view.status.accepts_runner_updates() && job.view.token.expose() == password
        });
    if user != JOB_TOKEN_USER || !running {
        debug!(
            user,
            "git request with credentials that match no running job"
        );
        return false;
    }
    true
}

fn denied() -> Response {
    let mut response = text(StatusCode::UNAUTHORIZED, ACCESS_DENIED);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"GitLab\""),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_are_recognised() {
        let parsed = GitPath::parse("/group/sub/project.git/info/refs").unwrap();
        assert_eq!(parsed.repo, "group/sub/project");
        assert_eq!(parsed.rest, "/info/refs");
        assert_eq!(GitPath::parse("/g/p.git").unwrap().rest, "");
        for other in [
            "/api/v4/jobs/request",
            "/group/project",
            "/.git/info/refs",
            "/g/../p.git/info/refs",
        ] {
            assert_eq!(GitPath::parse(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn cgi_headers_become_the_response() {
        let output: &[u8] =
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nExpires: never\r\n\r\nbody";
        let response = cgi_response(BufReader::new(output)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let body = axum::body::to_bytes(response.into_body(), 100)
            .await
            .unwrap();
        assert_eq!(&body[..], b"body");
    }
}
