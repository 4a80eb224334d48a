//! The stored pods and their resource versions.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::{FakeConfig, Faults};

/// The docker objects that run one pod.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backing {
    /// `(container name in the pod, docker container id)`, in spec order.
    pub(crate) containers: Vec<(String, String)>,
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
    version: u64,
    created: Vec<Value>,
}

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
}

/// The docker label marking objects of a fake server.
pub(crate) const SERVER_LABEL: &str = "runnel-fake-kube";

impl Shared {
    pub(crate) fn new(docker: bollard::Docker, token: String, config: &FakeConfig) -> Self {
        Self {
            docker,
            token,
            server_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            host_network: config.host_network,
            faults: Mutex::new(config.faults.clone()),
            inner: Mutex::new(Inner::default()),
        }
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
        let version = inner.bump();
        let Some(entry) = inner.pods.get_mut(&(namespace.to_owned(), name.to_owned())) else {
            return false;
        };
        if !entry.object["status"].is_object() {
            entry.object["status"] = json!({});
        }
        change(&mut entry.object["status"]);
        entry.object["metadata"]["resourceVersion"] = Value::String(version);
        true
    }
}
