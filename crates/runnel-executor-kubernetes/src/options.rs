//! `[runners.kubernetes]`: the keys this executor acts on, typed; every other key refused.
//!
//! The section reaches this crate as a [`RawTable`]. Keys of the official runner that Runnel does
//! not implement yet are refused by name (never parsed and ignored), so a configuration made for
//! the official runner fails at start with a message saying what is missing.

use std::collections::BTreeMap;
use std::time::Duration;

use runnel_config::RawTable;
use serde::Deserialize;

use crate::KubernetesError;

/// The keys acted on, in the official spelling.
pub const SUPPORTED_KEYS: &[&str] = &[
    "host",
    "bearer_token",
    "ca_file",
    "cert_file",
    "key_file",
    "namespace",
    "image",
    "helper_image",
    "privileged",
    "pull_policy",
    "image_pull_secrets",
    "service_account",
    "node_selector",
    "pod_labels",
    "pod_annotations",
    "cpu_limit",
    "cpu_request",
    "memory_limit",
    "memory_request",
    "ephemeral_storage_limit",
    "ephemeral_storage_request",
    "helper_cpu_limit",
    "helper_cpu_request",
    "helper_memory_limit",
    "helper_memory_request",
    "helper_ephemeral_storage_limit",
    "helper_ephemeral_storage_request",
    "service_cpu_limit",
    "service_cpu_request",
    "service_memory_limit",
    "service_memory_request",
    "service_ephemeral_storage_limit",
    "service_ephemeral_storage_request",
    "poll_interval",
    "poll_timeout",
    "pod_termination_grace_period_seconds",
    "cleanup_grace_period_seconds",
];

/// `[runners.kubernetes]` as far as Runnel implements it.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesOptions {
    /// API server URL; without it the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the
    /// in-cluster service account is used.
    pub host: Option<String>,
    /// Token for `host`.
    pub bearer_token: Option<String>,
    /// CA bundle (PEM) for `host`.
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for `host`.
    pub cert_file: Option<String>,
    /// Client key (PEM) for `host`.
    pub key_file: Option<String>,
    /// Namespace of the job pods (default: the kubeconfig's, else `default`).
    pub namespace: Option<String>,
    /// Image of the build container when the job has none.
    pub image: Option<String>,
    /// Image of the helper container.
    pub helper_image: Option<String>,
    /// Run build, helper and service containers privileged.
    #[serde(default)]
    pub privileged: bool,
    /// `imagePullPolicy` of every container: `always`, `never` or `if-not-present`.
    pub pull_policy: Option<PullPolicyValue>,
    /// `imagePullSecrets` of the pod.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// `serviceAccountName` of the pod.
    pub service_account: Option<String>,
    /// `nodeSelector` of the pod.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Extra pod labels (not in the `runner.gitlab.com` namespaces).
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default)]
    pub pod_annotations: BTreeMap<String, String>,
    pub cpu_limit: Option<String>,
    pub cpu_request: Option<String>,
    pub memory_limit: Option<String>,
    pub memory_request: Option<String>,
    pub ephemeral_storage_limit: Option<String>,
    pub ephemeral_storage_request: Option<String>,
    pub helper_cpu_limit: Option<String>,
    pub helper_cpu_request: Option<String>,
    pub helper_memory_limit: Option<String>,
    pub helper_memory_request: Option<String>,
    pub helper_ephemeral_storage_limit: Option<String>,
    pub helper_ephemeral_storage_request: Option<String>,
    pub service_cpu_limit: Option<String>,
    pub service_cpu_request: Option<String>,
    pub service_memory_limit: Option<String>,
    pub service_memory_request: Option<String>,
    pub service_ephemeral_storage_limit: Option<String>,
    pub service_ephemeral_storage_request: Option<String>,
    /// Seconds between pod status checks (default 3).
    pub poll_interval: Option<u64>,
    /// Seconds a pod may take to start running (default 180).
    pub poll_timeout: Option<u64>,
    /// `terminationGracePeriodSeconds` of the pod.
    pub pod_termination_grace_period_seconds: Option<i64>,
    /// Grace period of the pod deletion at cleanup.
    pub cleanup_grace_period_seconds: Option<i64>,
}

impl std::fmt::Debug for KubernetesOptions {
    /// `bearer_token` is a secret: only whether it is set is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesOptions")
            .field("host", &self.host)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("namespace", &self.namespace)
            .field("image", &self.image)
            .field("helper_image", &self.helper_image)
            .finish_non_exhaustive()
    }
}

/// `pull_policy`: one policy, or a list of exactly one.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PullPolicyValue {
    One(String),
    Many(Vec<String>),
}

/// A container resource block: `(cpu, memory, ephemeral-storage)` limits and requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub limits: BTreeMap<String, String>,
    pub requests: BTreeMap<String, String>,
}

impl Resources {
    fn of(pairs: [(&str, &Option<String>, &Option<String>); 3]) -> Self {
        let mut resources = Resources::default();
        for (name, limit, request) in pairs {
            if let Some(limit) = limit.as_ref().filter(|v| !v.is_empty()) {
                resources.limits.insert(name.to_owned(), limit.clone());
            }
            if let Some(request) = request.as_ref().filter(|v| !v.is_empty()) {
                resources.requests.insert(name.to_owned(), request.clone());
            }
        }
        resources
    }
}

impl KubernetesOptions {
    /// Reads the section; any key outside [`SUPPORTED_KEYS`] is an error naming it.
    pub fn from_raw(raw: &RawTable) -> Result<Self, KubernetesError> {
        let unsupported: Vec<String> = raw
            .as_table()
            .keys()
            .filter(|key| !SUPPORTED_KEYS.contains(&key.as_str()))
            .cloned()
            .collect();
        if !unsupported.is_empty() {
            return Err(KubernetesError::UnsupportedKeys { keys: unsupported });
        }
        let table = toml::Value::Table(raw.as_table().clone());
        let options: KubernetesOptions =
            serde_path_to_error::deserialize(table).map_err(|error| {
                KubernetesError::InvalidSection {
                    message: format!("`{}`: {}", error.path(), error.inner().message()),
                }
            })?;
        options.pull_policy()?;
        if options.poll_interval == Some(0) {
            return Err(KubernetesError::InvalidOption {
                key: "poll_interval",
                reason: "must be at least 1 second".to_owned(),
            });
        }
        for (key, quantity) in options.quantities() {
            if !valid_quantity(quantity) {
                return Err(KubernetesError::InvalidOption {
                    key,
                    reason: format!(
                        "`{quantity}` is not a Kubernetes quantity (like 500m, 2, 128Mi)"
                    ),
                });
            }
        }
        if options.cert_file.is_some() != options.key_file.is_some() {
            return Err(KubernetesError::InvalidOption {
                key: "cert_file",
                reason: "cert_file and key_file must be set together".to_owned(),
            });
        }
        Ok(options)
    }

    fn quantities(&self) -> Vec<(&'static str, &str)> {
        let all: [(&'static str, &Option<String>); 18] = [
            ("cpu_limit", &self.cpu_limit),
            ("cpu_request", &self.cpu_request),
            ("memory_limit", &self.memory_limit),
            ("memory_request", &self.memory_request),
            ("ephemeral_storage_limit", &self.ephemeral_storage_limit),
            ("ephemeral_storage_request", &self.ephemeral_storage_request),
            ("helper_cpu_limit", &self.helper_cpu_limit),
            ("helper_cpu_request", &self.helper_cpu_request),
            ("helper_memory_limit", &self.helper_memory_limit),
            ("helper_memory_request", &self.helper_memory_request),
            (
                "helper_ephemeral_storage_limit",
                &self.helper_ephemeral_storage_limit,
            ),
            (
                "helper_ephemeral_storage_request",
                &self.helper_ephemeral_storage_request,
            ),
            ("service_cpu_limit", &self.service_cpu_limit),
            ("service_cpu_request", &self.service_cpu_request),
            ("service_memory_limit", &self.service_memory_limit),
            ("service_memory_request", &self.service_memory_request),
            (
                "service_ephemeral_storage_limit",
                &self.service_ephemeral_storage_limit,
            ),
            (
                "service_ephemeral_storage_request",
                &self.service_ephemeral_storage_request,
            ),
        ];
        all.into_iter()
            .filter_map(|(key, value)| Some((key, value.as_deref().filter(|v| !v.is_empty())?)))
            .collect()
    }

    /// The `imagePullPolicy` for every container, if configured.
    pub fn pull_policy(&self) -> Result<Option<&'static str>, KubernetesError> {
        let name = match &self.pull_policy {
            None => return Ok(None),
            Some(PullPolicyValue::One(one)) => one.as_str(),
            Some(PullPolicyValue::Many(list)) if list.is_empty() => return Ok(None),
            Some(PullPolicyValue::Many(list)) if list.len() == 1 => list[0].as_str(),
            Some(PullPolicyValue::Many(_)) => {
                return Err(KubernetesError::InvalidOption {
                    key: "pull_policy",
                    reason: "Runnel does not support several pull policies (fallback on pull failure) for kubernetes yet".to_owned(),
                });
            }
        };
        match name {
            "always" => Ok(Some("Always")),
            "never" => Ok(Some("Never")),
            "if-not-present" => Ok(Some("IfNotPresent")),
            "" => Ok(None),
            other => Err(KubernetesError::InvalidOption {
                key: "pull_policy",
                reason: format!("unknown pull policy `{other}` (always, never, if-not-present)"),
            }),
        }
    }

    /// Seconds between pod status checks.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval.unwrap_or(3))
    }

    /// How long a pod may take to start.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_secs(self.poll_timeout.unwrap_or(180))
    }

    /// Resources of the build container.
    pub fn build_resources(&self) -> Resources {
        Resources::of([
            ("cpu", &self.cpu_limit, &self.cpu_request),
            ("memory", &self.memory_limit, &self.memory_request),
            (
                "ephemeral-storage",
                &self.ephemeral_storage_limit,
                &self.ephemeral_storage_request,
            ),
        ])
    }

    /// Resources of the helper container.
    pub fn helper_resources(&self) -> Resources {
        Resources::of([
            ("cpu", &self.helper_cpu_limit, &self.helper_cpu_request),
            (
                "memory",
                &self.helper_memory_limit,
                &self.helper_memory_request,
            ),
            (
                "ephemeral-storage",
                &self.helper_ephemeral_storage_limit,
                &self.helper_ephemeral_storage_request,
            ),
        ])
    }

    /// Resources of every service container.
    pub fn service_resources(&self) -> Resources {
        Resources::of([
            ("cpu", &self.service_cpu_limit, &self.service_cpu_request),
            (
                "memory",
                &self.service_memory_limit,
                &self.service_memory_request,
            ),
            (
                "ephemeral-storage",
                &self.service_ephemeral_storage_limit,
                &self.service_ephemeral_storage_request,
            ),
        ])
    }
}

/// `123`, `0.5`, `500m`, `128Mi`, `1G`, `1e3`: the quantity syntax, roughly.
fn valid_quantity(text: &str) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    if number.is_empty() || number.parse::<f64>().is_err() {
        return false;
    }
    matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.starts_with(['e', 'E']) && suffix[1..].parse::<i32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawTable {
        RawTable::from(text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn unsupported_official_keys_are_refused_by_name() {
        let error = KubernetesOptions::from_raw(&raw(
            "namespace = \"ci\"\nallowed_images = [\"a\"]\nservice_account_overwrite_allowed = \".*\"\n",
        ))
        .unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"[runners.kubernetes] sets keys Runnel's kubernetes executor does not implement yet (refused rather than ignored): allowed_images, service_account_overwrite_allowed");
    }

    #[test]
    fn wrong_types_and_values_are_refused() {
        let error = KubernetesOptions::from_raw(&raw("poll_timeout = \"soon\"\n")).unwrap_err();
        insta::assert_snapshot!(error.to_string(), @r#"invalid [runners.kubernetes] section: `poll_timeout`: invalid type: string "soon", expected u64"#);
        let error = KubernetesOptions::from_raw(&raw("memory_limit = \"lots\"\n")).unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"invalid `memory_limit` in [runners.kubernetes]: `lots` is not a Kubernetes quantity (like 500m, 2, 128Mi)");
        let error = KubernetesOptions::from_raw(&raw("pull_policy = \"sometimes\"\n")).unwrap_err();
        assert!(error.to_string().contains("sometimes"), "{error}");
    }

    #[test]
    fn supported_keys_are_read() {
        let options = KubernetesOptions::from_raw(&raw(
            "namespace = \"ci\"\nimage = \"alpine\"\npoll_interval = 1\npoll_timeout = 5\ncpu_limit = \"500m\"\nmemory_request = \"64Mi\"\npull_policy = [\"if-not-present\"]\n[pod_labels]\nteam = \"a\"\n",
        ))
        .unwrap();
        assert_eq!(options.namespace.as_deref(), Some("ci"));
        assert_eq!(options.poll_timeout(), Duration::from_secs(5));
        assert_eq!(options.pull_policy().unwrap(), Some("IfNotPresent"));
        assert_eq!(
            options.build_resources().limits,
            BTreeMap::from([("cpu".to_owned(), "500m".to_owned())])
        );
        assert_eq!(options.pod_labels["team"], "a");
    }

    #[test]
    fn debug_hides_the_bearer_token() {
        let options =
            KubernetesOptions::from_raw(&raw("host = \"https://k\"\nbearer_token = \"s3cret\"\n"))
                .unwrap();
        assert!(!format!("{options:?}").contains("s3cret"));
    }
}
