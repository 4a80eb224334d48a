//! The stored pods and their resource versions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use serde_json::{Value, json};

use crate::{FakeConfig, Faults};

/// The docker objects that run one pod.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backing {
    /// `(container name in the pod, docker container id)`, in spec order.
    pub(crate) containers: Vec<(String, String)>,
    /// The same for the init containers, which ran to completion before `containers` started.
    pub(crate) init_containers: Vec<(String, String)>,
    /// Docker volume names.
    pub(crate) volumes: Vec<String>,
    /// Host directories holding secret and config map files.
    pub(crate) host_dirs: Vec<std::path::PathBuf>,
}

#[derive(Debug)]
pub(crate) struct PodEntry {
    pub(crate) object: Value,
    pub(crate) backing: Backing,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) pods: BTreeMap<(String, String), PodEntry>,
    /// Namespaces made through the API (the built-in ones are not stored).
    pub(crate) namespaces: BTreeMap<String, Value>,
    /// Secrets and config maps by `(plural, namespace, name)`.
    pub(crate) objects: BTreeMap<(String, String, String), Value>,
    /// Every namespace created through the API, in order.
    pub(crate) created_namespaces: Vec<String>,
    /// Their objects as stored at creation.
    pub(crate) created_namespace_objects: Vec<Value>,
    /// Every secret and config map created through the API, as stored at creation.
    pub(crate) created_objects: Vec<Value>,
    version: u64,
    created: Vec<Value>,
    /// The latest pod changes, oldest first, for watches that resume from a version.
    pub(crate) history: VecDeque<PodEvent>,
    /// The newest version no longer in `history` (watches from before it are expired).
    pub(crate) history_floor: u64,
}

/// A change to a pod, as a watch delivers it.
#[derive(Clone, Debug)]
pub(crate) struct PodEvent {
    /// The resource version of the change.
    pub(crate) version: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(crate) kind: &'static str,
    /// The pod after the change.
    pub(crate) object: Value,
}

/// Pod changes kept for watches that resume from a resource version.
const HISTORY: usize = 1024;
/// Pod changes buffered for each open watch; a watch that falls further behind is ended (the
/// client resumes it from its last version).
const WATCH_BUFFER: usize = 1024;

impl Inner {
    /// The next resource version.
    pub(crate) fn bump(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    pub(crate) fn version(&self) -> String {
        self.version.to_string()
    }

    pub(crate) fn record_created(&mut self, pod: Value) {
        self.created.push(pod);
    }

    /// The current version as a number.
    pub(crate) fn version_number(&self) -> u64 {
        self.version
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) docker: bollard::Docker,
    pub(crate) token: String,
    /// Labels every docker object this server makes (`runnel-fake-kube=<id>`).
    pub(crate) server_id: String,
    pub(crate) host_network: bool,
    faults: Mutex<Faults>,
    inner: Mutex<Inner>,
    /// Pod changes, sent while `inner` is locked (so they come in version order).
    events: broadcast::Sender<PodEvent>,
    /// Cancelled when the server stops: open watches end.
    pub(crate) stop: CancellationToken,
    /// Watches served so far.
    pub(crate) watches: AtomicU64,
}

/// The docker label marking objects of a fake server.
pub(crate) const SERVER_LABEL: &str = "runnel-fake-kube";

impl Shared {
    pub(crate) fn new(
        docker: bollard::Docker,
        token: String,
        config: &FakeConfig,
        stop: CancellationToken,
    ) -> Self {
        Self {
            events: broadcast::channel(WATCH_BUFFER).0,
            stop,
            watches: AtomicU64::new(0),
            docker,
            token,
            server_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            host_network: config.host_network,
            faults: Mutex::new(config.faults.clone()),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records a change of `object` (whose `resourceVersion` is `version`) for watches; call
    /// with `inner` locked.
    pub(crate) fn record_event(
        &self,
        inner: &mut Inner,
        kind: &'static str,
        version: u64,
        object: &Value,
    ) {
        let event = PodEvent {
            version,
            kind,
            object: object.clone(),
        };
        if inner.history.len() >= HISTORY
            && let Some(dropped) = inner.history.pop_front()
        {
            inner.history_floor = dropped.version;
        }
        inner.history.push_back(event.clone());
        // No receiver: no watch is open.
        drop(self.events.send(event));
    }

    /// A receiver of the changes from now on; call with `inner` locked.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PodEvent> {
        self.watches.fetch_add(1, Ordering::Relaxed);
        self.events.subscribe()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    pub(crate) fn pod_names(&self) -> Vec<String> {
        self.lock()
            .pods
            .keys()
            .map(|(namespace, name)| format!("{namespace}/{name}"))
            .collect()
    }

    pub(crate) fn pod_json(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|entry| entry.object.clone())
    }

    pub(crate) fn created_pods(&self) -> Vec<Value> {
        self.lock().created.clone()
    }

    /// Applies `change` to the pod's `status` and bumps its resource version. False when the
    /// pod is gone.
    pub(crate) fn update_status(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> bool {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if !inner.pods.contains_key(&key) {
            return false;
        }
        let version = inner.bump();
        let Some(entry) = inner.pods.get_mut(&key) else {
            return false;
        };
        if !entry.object["status"].is_object() {
            entry.object["status"] = json!({});
        }
        change(&mut entry.object["status"]);
        entry.object["metadata"]["resourceVersion"] = Value::String(version);
        let object = entry.object.clone();
        let number = inner.version_number();
        self.record_event(&mut inner, "MODIFIED", number, &object);
        true
    }
}
