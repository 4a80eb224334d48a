//! The metrics and debug HTTP server (`listen_address`): `/metrics`, `/health/ready`,
//! `/debug/jobs/list` and `/debug/process/state`, as the official runner serves them, plus the
//! registry of running jobs those pages show.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use runnel_types::JobId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ServiceError;
use crate::metrics::metrics;

/// Port used when `listen_address` has none.
const DEFAULT_PORT: u16 = 9252;

/// The jobs running right now, for `/debug/jobs/list` and the `gitlab_runner_jobs` gauge.
#[derive(Debug, Default)]
pub(crate) struct RunningJobs {
    jobs: Mutex<BTreeMap<JobId, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    labels: [String; 3],
    url: String,
    stage: String,
    started: Instant,
}

/// A job's place in [`RunningJobs`]; removed on drop.
#[derive(Debug)]
pub(crate) struct RunningJob {
    jobs: Arc<RunningJobs>,
    id: JobId,
}

impl RunningJobs {
    /// Adds a job; `labels` are runner (short token), runner name and system id.
    pub(crate) fn register(
        self: &Arc<Self>,
        id: JobId,
        labels: [String; 3],
        url: String,
    ) -> RunningJob {
        let entry = Entry {
            labels,
            url,
            stage: String::new(),
            started: Instant::now(),
        };
        self.lock().insert(id, entry);
        RunningJob {
            jobs: Arc::clone(self),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, Entry>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn render(&self) -> String {
        self.lock()
            .iter()
            .map(|(id, e)| {
                format!(
                    "url={}/-/jobs/{id} state=running stage={} executor_stage={} duration={:?}\n",
                    e.url.trim_end_matches('/'),
                    e.stage,
                    e.stage,
                    Duration::from_secs(e.started.elapsed().as_secs())
                )
            })
            .collect()
    }
}

impl RunningJob {
    /// The job entered `stage`.
    pub(crate) fn set_stage(&self, stage: &str) {
        let mut jobs = self.jobs.lock();
        if let Some(entry) = jobs.get_mut(&self.id) {
            stage.clone_into(&mut entry.stage);
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.jobs.lock().remove(&self.id);
    }
}

/// `listen_address` with the default port added when it has none.
pub(crate) fn listen_socket(address: &str) -> Result<SocketAddr, ServiceError> {
    let with_port = if address
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        address.to_owned()
    } else {
        format!("{address}:{DEFAULT_PORT}")
    };
    let with_host = if with_port.starts_with(':') {
        format!("0.0.0.0{with_port}")
    } else {
        with_port
    };
    with_host.parse().map_err(|_| ServiceError::Config {
        message: format!("listen_address {address:?} is not a host:port address"),
    })
}

/// Serves the metrics pages until `stop` fires.
pub(crate) async fn serve(
    address: SocketAddr,
    jobs: Arc<RunningJobs>,
    stop: CancellationToken,
) -> Result<(), ServiceError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServiceError::Listen { address, source })?;
    tracing::info!(address = %address, "metrics server listening");
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health/ready", get(|| async { "OK\n" }))
        .route("/debug/jobs/list", get(jobs_page))
        .route(
            "/debug/process/state",
            get(|| async { format!("{}\n", crate::metrics::current_process_state()) }),
        )
        .with_state(jobs);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|source| ServiceError::Listen { address, source })
}

async fn metrics_page(State(jobs): State<Arc<RunningJobs>>) -> impl IntoResponse {
    let page = {
        let running = jobs.lock();
        metrics().render(running.values().map(|e| (&e.labels, e.stage.as_str())))
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
}

async fn jobs_page(State(jobs): State<Arc<RunningJobs>>) -> String {
    jobs.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_get_the_default_port() {
        assert_eq!(
            listen_socket("127.0.0.1").unwrap(),
            "127.0.0.1:9252".parse().unwrap()
        );
        assert_eq!(
            listen_socket(":9300").unwrap(),
            "0.0.0.0:9300".parse().unwrap()
        );
        assert_eq!(
            listen_socket("[::1]:9000").unwrap(),
            "[::1]:9000".parse().unwrap()
        );
        assert!(listen_socket("not an address").is_err());
    }
}
