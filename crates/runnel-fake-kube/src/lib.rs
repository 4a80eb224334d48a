//! A test Kubernetes API server: the subset of the core/v1 API a CI executor uses, with every
//! pod's containers run as containers on the local Docker engine.
//!
//! ```text
//! FakeKube::start(config)   listens, writes a kubeconfig for itself (bearer token, plain HTTP)
//!   POST/GET/LIST/DELETE    /api/v1/namespaces/{ns}/pods[/{name}]   (labelSelector and
//!                           fieldSelector `metadata.name`/`metadata.namespace` on lists)
//!   GET  …/{ns}/pods?watch=true  a watch: from `resourceVersion` (the last 1024 pod changes
//!                           are kept; older is `410 Expired` as an ERROR event), or from
//!                           the current state (`ADDED` for every pod) without one or with
//!                           `0`; ended after `timeoutSeconds` (default 30 min) or at stop
//!   POST/GET/DELETE         /api/v1/namespaces[/{name}], …/{ns}/secrets[/{name}],
//!                           …/{ns}/configmaps[/{name}]                (see `objects`)
//!   GET  …/pods/{name}/exec WebSocket, v5.channel.k8s.io or v4.channel.k8s.io: stdin 0,
//!                           stdout 1, stderr 2, error 3 (a Status with the exit code), close 255
//!   GET  …/pods/{name}/attach the same protocols, to the container's main process (stdin
//!                           kept open for the next client, as `stdin: true` containers have it)
//!   stop_listening()        the API server goes away: no longer listening, every open
//!                           connection cut (pods keep running); resume_listening() brings
//!                           it back on the same address
//!   shutdown()              removes every container and volume it made
//! ```
//!
//! A pod becomes: one docker volume per `emptyDir`, then its init containers, each run to
//! completion in order (one that exits non-zero fails the pod, as with `restartPolicy: Never`;
//! they run before the pod's network namespace exists, in one of their own with the pod's
//! hostname and host aliases), then its containers in spec order, the first owning the network
//! namespace and every other joining it (`container:<first>`), so the containers of a pod
//! reach each other on `localhost`, as in a real pod. With
//! [`FakeConfig::host_network`] every container uses the host's network instead (tests whose
//! jobs must reach servers bound to 127.0.0.1). `hostAliases` go to the first container's
//! `/etc/hosts`, which the others share. Images are never pulled (there is no registry): a
//! container with `imagePullPolicy: Always`, or whose image is missing from the engine, leaves
//! the pod `Pending` with the container `waiting` on `ErrImagePull` (`ErrImageNeverPull` for
//! `Never`), as a real kubelet reports a pull that fails; `IfNotPresent` (and no policy) use
//! the engine's image. A container with a memory limit gets it (swap as much, none beyond):
//! when the kernel OOM-kills one of its processes, the whole container is killed and reported
//! `OOMKilled`, as the kubelet does on cgroup v2 hosts (`memory.oom.group`).
//!
//! [`Faults`] inject the other failures an executor must explain: pods that stay unschedulable
//! (`Pending` forever with a `PodScheduled=False` condition), eviction after a delay
//! (containers killed, phase `Failed`, reason `Evicted`), watches refused (`405`) and pods
//! refused by a `ResourceQuota` (`403 Forbidden`, `exceeded quota`). Errors are `Status` objects shaped like
//! the real ones (`NotFound`, `AlreadyExists`, `Invalid`, `Unauthorized`).
//!
//! The crate knows nothing of the executor: it reads pods as JSON, as an API server does.

mod docker;
mod exec;
mod listener;
mod objects;
mod server;
mod state;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use server::status;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Failures the server injects into every pod it is given.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Pods are never scheduled: they stay `Pending` with `PodScheduled=False`,
    /// reason `Unschedulable`.
    pub pending_forever: bool,
    /// Running pods are evicted after this long: their containers are killed and the pod ends
    /// `Failed` with reason `Evicted`.
    pub evict_after: Option<Duration>,
    /// Watches are refused (`405 MethodNotAllowed`), as by a proxy in front of the API server
    /// that does not pass them on.
    pub refuse_watches: bool,
    /// Pod creation is refused as a `ResourceQuota` admission refuses a pod over the
    /// namespace's quota (`403 Forbidden`, reason `Forbidden`, `pods "…" is forbidden:
    /// exceeded quota: …`); the quota is one that allows no pod at all.
    pub exceed_pod_quota: bool,
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where to write the kubeconfig, once listening.
    pub kubeconfig: Option<PathBuf>,
    /// The bearer token clients must send; random when `None`.
    pub token: Option<String>,
    /// Run every pod in the host's network namespace.
    pub host_network: bool,
    /// Injected failures.
    pub faults: Faults,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig: None,
            token: None,
            host_network: false,
            faults: Faults::default(),
        }
    }
}

/// What can go wrong starting or stopping the server.
#[derive(Debug, thiserror::Error)]
pub enum FakeKubeError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig could not be written.
    #[error("cannot write the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Docker engine is unreachable.
    #[error("cannot connect to the Docker engine")]
    Docker(#[source] bollard::errors::Error),
}

/// A running fake API server. Call [`FakeKube::shutdown`] to remove what its pods left.
#[derive(Debug)]
pub struct FakeKube {
    url: String,
    token: String,
    address: SocketAddr,
    app: axum::Router,
    shared: Arc<state::Shared>,
    stop: CancellationToken,
    serving: std::sync::Mutex<Option<Serving>>,
}

/// The listener while the server is reachable: `cut` ends it and every open connection.
#[derive(Debug)]
struct Serving {
    cut: CancellationToken,
    task: JoinHandle<()>,
}

/// Serves `app` on `listener` until `cut` is cancelled, then cuts every connection.
fn serve(listener: tokio::net::TcpListener, app: axum::Router, cut: CancellationToken) -> Serving {
    let listener = listener::CutListener {
        inner: listener,
        cut: cut.clone(),
    };
    let stopping = cut.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopping.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "fake kube server failed");
        }
    });
    Serving { cut, task }
}

impl FakeKube {
    /// Binds, starts serving and writes the kubeconfig (when asked to).
    pub async fn start(config: FakeConfig) -> Result<Self, FakeKubeError> {
        let docker =
            bollard::Docker::connect_with_local_defaults().map_err(FakeKubeError::Docker)?;
        let token = config.token.clone().unwrap_or_else(random_token);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| FakeKubeError::Listen {
                address: config.listen,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| FakeKubeError::Listen {
                address: config.listen,
                source,
            })?;
        let url = format!("http://{address}");
        let stop = CancellationToken::new();
        let shared = Arc::new(state::Shared::new(
            docker,
            token.clone(),
            &config,
            stop.clone(),
        ));
        tokio::spawn(docker::follow_oom_kills(Arc::clone(&shared)));
        let app = server::router(Arc::clone(&shared));
        let serving = serve(listener, app.clone(), stop.child_token());
        if let Some(path) = &config.kubeconfig {
            write_kubeconfig(path, &url, &token).map_err(|source| FakeKubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
        }
        Ok(Self {
            url,
            token,
            address,
            app,
            shared,
            stop,
            serving: std::sync::Mutex::new(Some(serving)),
        })
    }

    /// The API server goes away, as when it restarts: it stops listening (connections are
    /// refused) and every open connection (watches, exec and attach sessions) is cut. Pods
    /// and their containers keep running. [`FakeKube::resume_listening`] brings it back.
    pub async fn stop_listening(&self) {
        let serving = self.lock_serving().take();
        if let Some(serving) = serving {
            serving.cut.cancel();
            if let Err(error) = serving.task.await {
                tracing::error!(%error, "fake kube server task failed");
            }
        }
    }

    /// Listens again on the same address after [`FakeKube::stop_listening`] (a no-op while
    /// listening).
    pub async fn resume_listening(&self) -> Result<(), FakeKubeError> {
        if self.lock_serving().is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .map_err(|source| FakeKubeError::Listen {
                address: self.address,
                source,
            })?;
        let serving = serve(listener, self.app.clone(), self.stop.child_token());
        *self.lock_serving() = Some(serving);
        Ok(())
    }

    fn lock_serving(&self) -> std::sync::MutexGuard<'_, Option<Serving>> {
        self.serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Replaces the injected failures (for pods created from now on).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// `namespace/name` of every pod that exists now.
    pub fn pod_names(&self) -> Vec<String> {
        self.shared.pod_names()
    }

    /// The stored pod object, as clients read it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        self.shared.pod_json(namespace, name)
    }

    /// Stores a secret (`data` given as plain bytes), as `POST …/secrets` would.
    pub fn add_secret(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        use base64::Engine;
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_owned(),
                    serde_json::Value::String(
                        base64::engine::general_purpose::STANDARD.encode(value),
                    ),
                )
            })
            .collect();
        self.add_object(
            "secrets",
            "Secret",
            namespace,
            name,
            serde_json::json!({"data": data}),
        );
    }

    /// Stores a config map, as `POST …/configmaps` would.
    pub fn add_config_map(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_owned(),
                    serde_json::Value::String((*value).to_owned()),
                )
            })
            .collect();
        self.add_object(
            "configmaps",
            "ConfigMap",
            namespace,
            name,
            serde_json::json!({"data": data}),
        );
    }

    fn add_object(
        &self,
        plural: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        mut object: serde_json::Value,
    ) {
        object["apiVersion"] = serde_json::json!("v1");
        object["kind"] = serde_json::json!(kind);
        object["metadata"] = serde_json::json!({"name": name, "namespace": namespace});
        self.shared.lock().objects.insert(
            (plural.to_owned(), namespace.to_owned(), name.to_owned()),
            object,
        );
    }

    /// The namespaces made through the API that still exist (built-in ones not listed).
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.lock().namespaces.keys().cloned().collect()
    }

    /// Names of every namespace ever created through the API, in order.
    pub fn created_namespaces(&self) -> Vec<String> {
        self.shared.lock().created_namespaces.clone()
    }

    /// Every namespace created through the API, as it was stored, in order.
    pub fn created_namespace_objects(&self) -> Vec<serde_json::Value> {
        self.shared.lock().created_namespace_objects.clone()
    }

    /// Every secret and config map created through the API, as stored at creation.
    pub fn created_objects(&self) -> Vec<serde_json::Value> {
        self.shared.lock().created_objects.clone()
    }

    /// The secrets and config maps that exist now, as `(plural, namespace, name)`.
    pub fn objects(&self) -> Vec<(String, String, String)> {
        self.shared.lock().objects.keys().cloned().collect()
    }

    /// Every pod created since the start, as it was posted (for checking pod specs).
    pub fn created_pods(&self) -> Vec<serde_json::Value> {
        self.shared.created_pods()
    }

    /// How many pod watches (`?watch=true`) the server has opened.
    pub fn watches_served(&self) -> u64 {
        self.shared
            .watches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The ids of the docker containers that exist for this server's pods.
    pub async fn docker_containers(&self) -> Vec<String> {
        docker::containers_of(&self.shared).await
    }

    /// Stops serving and removes every container and volume made for pods.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let serving = self.lock_serving().take();
        if let Some(serving) = serving
            && let Err(error) = serving.task.await
        {
            tracing::error!(%error, "fake kube server task failed");
        }
        docker::remove_everything(&self.shared).await;
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// A kubeconfig naming this server, its token and the `default` namespace (mode 0600).
pub fn kubeconfig_text(url: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: runnel-fake-kube\n  cluster:\n    server: {url}\ncontexts:\n- name: runnel-fake-kube\n  context:\n    cluster: runnel-fake-kube\n    user: runnel-fake-kube\n    namespace: default\ncurrent-context: runnel-fake-kube\nusers:\n- name: runnel-fake-kube\n  user:\n    token: {token}\n"
    )
}

fn write_kubeconfig(path: &std::path::Path, url: &str, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(kubeconfig_text(url, token).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
