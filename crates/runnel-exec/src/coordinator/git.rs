//! The source snapshot over git smart HTTP: every `<path>.git/…` request is answered by
//! `git http-backend` (a CGI program) for `.runnel/git/source.git`, after checking basic auth
//! as GitLab does (`gitlab-ci-token` and the token of a running job).

use std::process::Stdio;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio_util::io::ReaderStream;

use super::{JobState, Shared};

/// The largest git request body read.
const GIT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The fallback route: git requests go to `git http-backend`, anything else is a 404.
pub(super) async fn serve(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.find(".git/").map(|at| path[at + 4..].to_owned()) else {
        return (StatusCode::NOT_FOUND, "404 Not Found").into_response();
    };
    if !authorized(&shared, request.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"GitLab\"")],
            "HTTP Basic: Access denied\n",
        )
            .into_response();
    }
    // Review L2: read-only, as for a GitLab job token: fetches (`git-upload-pack`) only.
    let service = request.uri().query().unwrap_or("");
    let upload_pack = match *request.method() {
        Method::GET => rest == "/info/refs" && service == "service=git-upload-pack",
        Method::POST => rest == "/git-upload-pack",
        _ => false,
    };
    if !upload_pack {
        return (
            StatusCode::FORBIDDEN,
            "only fetching is allowed (git-upload-pack)\n",
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    // Review M2: bounded (a fetch request lists wants and haves; pushes are refused above).
    let Some(body) = super::read_limited(&parts.headers, body, GIT_BODY_LIMIT).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body unreadable or larger than 16 MiB\n",
        )
            .into_response();
    };
    let header_text = |name: &HeaderName| {
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
        .env("HOME", &shared.git_root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.git_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", format!("/source.git{rest}"))
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header_text(&header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header_text(&header::CONTENT_ENCODING),
        )
        .env(
            "HTTP_GIT_PROTOCOL",
            header_text(&HeaderName::from_static("git-protocol")),
        )
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("GIT_CONFIG_PARAMETERS", "'http.receivepack'='false'")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            tracing::warn!(%error, "cannot start git http-backend");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "git http-backend unavailable\n",
            )
                .into_response();
        }
    };
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend pipes\n",
        )
            .into_response();
    };
    tokio::spawn(async move {
        if let Err(error) = stdin.write_all(&body).await {
            tracing::debug!(%error, "git http-backend stopped reading its input");
        }
    });
    tokio::spawn(async move {
        let mut errors = String::new();
        stderr.read_to_string(&mut errors).await.ok();
        match child.wait().await {
            Ok(status) if status.success() => {}
            Ok(status) => tracing::debug!(%status, errors, "git http-backend failed"),
            Err(error) => tracing::warn!(%error, "cannot wait for git http-backend"),
        }
    });
    cgi_response(BufReader::new(stdout)).await
}

/// Reads the CGI header block and streams the rest as the body.
async fn cgi_response<R>(mut stdout: BufReader<R>) -> Response
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let bad = || (StatusCode::BAD_GATEWAY, "bad CGI output\n").into_response();
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    loop {
        let mut line = String::new();
        match stdout.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return bad(),
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return bad();
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse::<u16>().ok())
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
        .unwrap_or_else(|_| bad())
}

/// Basic auth as `gitlab-ci-token:<token of a running job>`.
fn authorized(shared: &Shared, headers: &axum::http::HeaderMap) -> bool {
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
    user == "gitlab-ci-token"
        && shared
            .lock()
            .jobs
            .values()
            .any(|job| job.state == JobState::Running && job.token == password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cgi_headers_become_the_response() {
        let output: &[u8] = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nbody";
        let response = cgi_response(BufReader::new(output)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
    }
}
