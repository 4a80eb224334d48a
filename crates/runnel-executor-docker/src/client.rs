//! Connecting to the Docker daemon as `[runners.docker]` says.
//!
//! `host` wins over `DOCKER_HOST`, which wins over the default socket. `tcp://` addresses use
//! TLS when `tls_verify` is set or `tls_cert_path` is given (`ca.pem`, `cert.pem`, `key.pem` in
//! that directory, like the docker CLI; `DOCKER_CERT_PATH` and `~/.docker` are the fallbacks).
//! The API version is negotiated on the first request by [`ping`], since daemons as old as
//! API 1.41 are common. This module does not retry.

use std::path::PathBuf;

use bollard::{API_DEFAULT_VERSION, Docker};
use runnel_config::DockerConfig;

use crate::DockerError;

/// Seconds a single API request may take; image pulls and builds stream, so this only bounds
/// silence.
const REQUEST_TIMEOUT_SECS: u64 = 300;

/// The default daemon address on Unix.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// The address a client for `config` talks to.
pub fn docker_host(config: &DockerConfig) -> String {
    host_or_default(config.host.as_deref())
}

/// `host`, else `DOCKER_HOST`, else the default socket.
pub fn host_or_default(host: Option<&str>) -> String {
    host.filter(|host| !host.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("DOCKER_HOST")
                .ok()
                .filter(|host| !host.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned())
}

/// A client for the daemon `config` names. No request is made yet.
pub fn connect(config: &DockerConfig) -> Result<Docker, DockerError> {
    connect_to(
        config.host.as_deref(),
        config.tls_verify,
        config.tls_cert_path.as_deref(),
    )
}

/// A client for `host` (see [`host_or_default`]), with TLS as `tls_verify`/`tls_cert_path` say.
pub fn connect_to(
    host: Option<&str>,
    tls_verify: bool,
    tls_cert_path: Option<&str>,
) -> Result<Docker, DockerError> {
    let host = host_or_default(host);
    let connect_error = |source| DockerError::Connect {
        host: host.clone(),
        source: Box::new(source),
    };
    let configured_certs = tls_cert_path.filter(|path| !path.is_empty());
    let cert_path = configured_certs
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("DOCKER_CERT_PATH").map(PathBuf::from));
    let wants_tls = tls_verify || configured_certs.is_some() || host.starts_with("https://");
    if let Some(socket) = host.strip_prefix("unix://") {
        return Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|source| match source {
                // No socket means no daemon, not a bad setting.
                bollard::errors::Error::SocketNotFoundError(_) => DockerError::Unreachable {
                    host: host.clone(),
                    source: Box::new(source),
                },
                source => connect_error(source),
            });
    }
    if wants_tls {
        let dir = cert_path
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"));
        return Docker::connect_with_ssl(
            &host,
            &dir.join("key.pem"),
            &dir.join("cert.pem"),
            &dir.join("ca.pem"),
            REQUEST_TIMEOUT_SECS,
            API_DEFAULT_VERSION,
        )
        .map_err(connect_error);
    }
    Docker::connect_with_http(&host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(connect_error)
}

/// Checks that the daemon answers and agrees on an API version; returns the negotiated client.
pub async fn ping(docker: Docker, host: &str) -> Result<Docker, DockerError> {
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|source| DockerError::Unreachable {
            host: host.to_owned(),
            source: Box::new(source),
        })?;
    docker
        .ping()
        .await
        .map_err(|source| DockerError::Unreachable {
            host: host.to_owned(),
            source: Box::new(source),
        })?;
    Ok(docker)
}
