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
use crate::spec::{
    AffinityConfig, ContainerSecurityContextConfig, DnsConfig, HostAliasConfig, LifecycleConfig,
    PodSecurityContextConfig, PodSpecPatch, Volumes,
};

/// The keys acted on, in the official spelling.
pub const SUPPORTED_KEYS: &[&str] = &[
    "host",
    "bearer_token",
    "bearer_token_overwrite_allowed",
    "ca_file",
    "cert_file",
    "key_file",
    "namespace",
    "namespace_overwrite_allowed",
    "namespace_per_job",
    "image",
    "helper_image",
    "privileged",
    "allow_privilege_escalation",
    "runtime_class_name",
    "pull_policy",
    "allowed_images",
    "allowed_services",
    "allowed_pull_policies",
    "allowed_users",
    "allowed_groups",
    "image_pull_secrets",
    "use_service_account_image_pull_secrets",
    "service_account",
    "service_account_overwrite_allowed",
    "automount_service_account_token",
    "scheduler_name",
    "priority_class_name",
    "node_selector",
    "node_selector_overwrite_allowed",
    "node_tolerations",
    "node_tolerations_overwrite_allowed",
    "affinity",
    "pod_labels",
    "pod_labels_overwrite_allowed",
    "pod_annotations",
    "pod_annotations_overwrite_allowed",
    "pod_security_context",
    "build_container_security_context",
    "helper_container_security_context",
    "service_container_security_context",
    "init_permissions_container_security_context",
    "cap_add",
    "logs_base_dir",
    "scripts_base_dir",
    "cap_drop",
    "volumes",
    "host_aliases",
    "dns_policy",
    "dns_config",
    "container_lifecycle",
    "pod_spec",
    "cpu_limit",
    "cpu_limit_overwrite_max_allowed",
    "cpu_request",
    "cpu_request_overwrite_max_allowed",
    "memory_limit",
    "memory_limit_overwrite_max_allowed",
    "memory_request",
    "memory_request_overwrite_max_allowed",
    "ephemeral_storage_limit",
    "ephemeral_storage_limit_overwrite_max_allowed",
    "ephemeral_storage_request",
    "ephemeral_storage_request_overwrite_max_allowed",
    "helper_cpu_limit",
    "helper_cpu_limit_overwrite_max_allowed",
    "helper_cpu_request",
    "helper_cpu_request_overwrite_max_allowed",
    "helper_memory_limit",
    "helper_memory_limit_overwrite_max_allowed",
    "helper_memory_request",
    "helper_memory_request_overwrite_max_allowed",
    "helper_ephemeral_storage_limit",
    "helper_ephemeral_storage_limit_overwrite_max_allowed",
    "helper_ephemeral_storage_request",
    "helper_ephemeral_storage_request_overwrite_max_allowed",
    "service_cpu_limit",
    "service_cpu_limit_overwrite_max_allowed",
    "service_cpu_request",
    "service_cpu_request_overwrite_max_allowed",
    "service_memory_limit",
    "service_memory_limit_overwrite_max_allowed",
    "service_memory_request",
    "service_memory_request_overwrite_max_allowed",
    "service_ephemeral_storage_limit",
    "service_ephemeral_storage_limit_overwrite_max_allowed",
    "service_ephemeral_storage_request",
    "service_ephemeral_storage_request_overwrite_max_allowed",
    "pod_cpu_limit",
    "pod_cpu_limit_overwrite_max_allowed",
    "pod_cpu_request",
    "pod_cpu_request_overwrite_max_allowed",
    "pod_memory_limit",
    "pod_memory_limit_overwrite_max_allowed",
    "pod_memory_request",
    "pod_memory_request_overwrite_max_allowed",
    "poll_interval",
    "poll_timeout",
    "pod_termination_grace_period_seconds",
    "cleanup_grace_period_seconds",
    "cleanup_resources_timeout",
];

/// The feature flag that turns the `[[pod_spec]]` patches on, as in the official runner.
pub const ADVANCED_POD_SPEC_FLAG: &str = "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION";

/// A `*_overwrite_allowed` regular expression (Go RE2 syntax, which Rust's `regex` shares).
pub type Pattern = Option<String>;

/// `[runners.kubernetes]` as far as Runnel implements it.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesOptions {
    /// API server URL; without it the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the
    /// in-cluster service account is used.
    pub host: Option<String>,
    /// Token for `host`.
    pub bearer_token: Option<String>,
    /// `KUBERNETES_BEARER_TOKEN` of the job replaces `bearer_token`.
    #[serde(default)]
    pub bearer_token_overwrite_allowed: bool,
    /// CA bundle (PEM) for `host`.
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for `host`.
    pub cert_file: Option<String>,
    /// Client key (PEM) for `host`.
    pub key_file: Option<String>,
    /// Namespace of the job pods (default: the kubeconfig's, else `default`).
    pub namespace: Option<String>,
    /// `KUBERNETES_NAMESPACE_OVERWRITE` values matching this replace `namespace`.
    pub namespace_overwrite_allowed: Pattern,
    /// Every job gets (and at the end deletes) its own namespace `ci-job-<job id>`.
    #[serde(default)]
    pub namespace_per_job: bool,
    /// Image of the build container when the job has none.
    pub image: Option<String>,
    /// Image of the helper container.
    pub helper_image: Option<String>,
    /// Run build, helper and service containers privileged (unless their own security
    /// context says otherwise).
    pub privileged: Option<bool>,
    /// `allowPrivilegeEscalation` of every container (unless their own security context says
    /// otherwise).
    pub allow_privilege_escalation: Option<bool>,
    /// `runtimeClassName` of the pod.
    pub runtime_class_name: Option<String>,
    /// `imagePullPolicy` of every container: `always`, `never` or `if-not-present`.
    pub pull_policy: Option<PullPolicyValue>,
    /// Globs the job's `image:` must match (empty: any).
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Globs the job's `services:` must match (empty: any).
    #[serde(default)]
    pub allowed_services: Vec<String>,
    /// Pull policies a job may ask for (empty: those of `pull_policy`).
    #[serde(default)]
    pub allowed_pull_policies: Vec<String>,
    /// User ids a job's `kubernetes:user` may ask for (empty: any but root).
    pub allowed_users: Option<StringOrList>,
    /// Group ids a job's `kubernetes:user` may ask for (empty: any but root).
    pub allowed_groups: Option<StringOrList>,
    /// Attach mode: the directory the `logs-<project>-<job>` mount goes into (default `/`).
    pub logs_base_dir: Option<String>,
    /// Attach mode: the directory the `scripts-<project>-<job>` mount goes into (default `/`).
    pub scripts_base_dir: Option<String>,
    /// `imagePullSecrets` of the pod.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Leave `imagePullSecrets` to the service account.
    #[serde(default)]
    pub use_service_account_image_pull_secrets: bool,
    /// `serviceAccountName` of the pod.
    pub service_account: Option<String>,
    /// `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE` values matching this replace `service_account`.
    pub service_account_overwrite_allowed: Pattern,
    /// `automountServiceAccountToken` of the pod.
    pub automount_service_account_token: Option<bool>,
    /// `schedulerName` of the pod.
    pub scheduler_name: Option<String>,
    /// `priorityClassName` of the pod.
    pub priority_class_name: Option<String>,
    /// `nodeSelector` of the pod.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// `KUBERNETES_NODE_SELECTOR_*` values (`key=value`) matching this are added.
    pub node_selector_overwrite_allowed: Pattern,
    /// `key[=value]` → effect: the pod's tolerations.
    #[serde(default)]
    pub node_tolerations: BTreeMap<String, String>,
    /// `KUBERNETES_NODE_TOLERATIONS_*` values (`key[=value]:effect`) matching this are added.
    pub node_tolerations_overwrite_allowed: Pattern,
    /// `affinity` of the pod.
    #[serde(default)]
    pub affinity: AffinityConfig,
    /// Extra pod labels (not in the `runner.gitlab.com` namespaces).
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// `KUBERNETES_POD_LABELS_*` values (`key=value`) matching this are added.
    pub pod_labels_overwrite_allowed: Pattern,
    /// Extra pod annotations.
    #[serde(default)]
    pub pod_annotations: BTreeMap<String, String>,
    /// `KUBERNETES_POD_ANNOTATIONS_*` values (`key=value`) matching this are added.
    pub pod_annotations_overwrite_allowed: Pattern,
    /// The pod's `securityContext`.
    #[serde(default)]
    pub pod_security_context: PodSecurityContextConfig,
    #[serde(default)]
    pub build_container_security_context: ContainerSecurityContextConfig,
    #[serde(default)]
    pub helper_container_security_context: ContainerSecurityContextConfig,
    #[serde(default)]
    pub service_container_security_context: ContainerSecurityContextConfig,
    #[serde(default)]
    pub init_permissions_container_security_context: ContainerSecurityContextConfig,
    /// Capabilities added to every container.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from every container (besides the default `NET_RAW`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Volumes mounted in every container.
    #[serde(default)]
    pub volumes: Volumes,
    /// Extra `hostAliases` of the pod.
    #[serde(default)]
    pub host_aliases: Vec<HostAliasConfig>,
    /// `dnsPolicy` of the pod: `none`, `default`, `cluster-first`, `cluster-first-with-host-net`.
    pub dns_policy: Option<String>,
    /// `dnsConfig` of the pod.
    #[serde(default)]
    pub dns_config: DnsConfig,
    /// `lifecycle` of every container.
    #[serde(default)]
    pub container_lifecycle: LifecycleConfig,
    /// Patches of the generated pod spec.
    #[serde(default)]
    pub pod_spec: Vec<PodSpecPatch>,
    pub cpu_limit: Option<String>,
    pub cpu_limit_overwrite_max_allowed: Option<String>,
    pub cpu_request: Option<String>,
    pub cpu_request_overwrite_max_allowed: Option<String>,
    pub memory_limit: Option<String>,
    pub memory_limit_overwrite_max_allowed: Option<String>,
    pub memory_request: Option<String>,
    pub memory_request_overwrite_max_allowed: Option<String>,
    pub ephemeral_storage_limit: Option<String>,
    pub ephemeral_storage_limit_overwrite_max_allowed: Option<String>,
    pub ephemeral_storage_request: Option<String>,
    pub ephemeral_storage_request_overwrite_max_allowed: Option<String>,
    pub helper_cpu_limit: Option<String>,
    pub helper_cpu_limit_overwrite_max_allowed: Option<String>,
    pub helper_cpu_request: Option<String>,
    pub helper_cpu_request_overwrite_max_allowed: Option<String>,
    pub helper_memory_limit: Option<String>,
    pub helper_memory_limit_overwrite_max_allowed: Option<String>,
    pub helper_memory_request: Option<String>,
    pub helper_memory_request_overwrite_max_allowed: Option<String>,
    pub helper_ephemeral_storage_limit: Option<String>,
    pub helper_ephemeral_storage_limit_overwrite_max_allowed: Option<String>,
    pub helper_ephemeral_storage_request: Option<String>,
    pub helper_ephemeral_storage_request_overwrite_max_allowed: Option<String>,
    pub service_cpu_limit: Option<String>,
    pub service_cpu_limit_overwrite_max_allowed: Option<String>,
    pub service_cpu_request: Option<String>,
    pub service_cpu_request_overwrite_max_allowed: Option<String>,
    pub service_memory_limit: Option<String>,
    pub service_memory_limit_overwrite_max_allowed: Option<String>,
    pub service_memory_request: Option<String>,
    pub service_memory_request_overwrite_max_allowed: Option<String>,
    pub service_ephemeral_storage_limit: Option<String>,
    pub service_ephemeral_storage_limit_overwrite_max_allowed: Option<String>,
    pub service_ephemeral_storage_request: Option<String>,
    pub service_ephemeral_storage_request_overwrite_max_allowed: Option<String>,
    pub pod_cpu_limit: Option<String>,
    pub pod_cpu_limit_overwrite_max_allowed: Option<String>,
    pub pod_cpu_request: Option<String>,
    pub pod_cpu_request_overwrite_max_allowed: Option<String>,
    pub pod_memory_limit: Option<String>,
    pub pod_memory_limit_overwrite_max_allowed: Option<String>,
    pub pod_memory_request: Option<String>,
    pub pod_memory_request_overwrite_max_allowed: Option<String>,
    /// Seconds between pod status checks (default 3).
    pub poll_interval: Option<u64>,
    /// Seconds a pod may take to start running (default 180).
    pub poll_timeout: Option<u64>,
    /// `terminationGracePeriodSeconds` of the pod.
    pub pod_termination_grace_period_seconds: Option<i64>,
    /// Grace period of the pod deletion at cleanup.
    pub cleanup_grace_period_seconds: Option<i64>,
    /// How long cleanup may take (Go duration, default 5m).
    pub cleanup_resources_timeout: Option<String>,
    /// The `[[pod_spec]]` patches, read at start.
    #[serde(skip)]
    pub loaded_patches: Vec<(String, crate::patch::LoadedPatch)>,
    /// `FF_USE_ADVANCED_POD_SPEC_CONFIGURATION` in `[runners.feature_flags]`, which wins over
    /// the job's variable.
    #[serde(skip)]
    pub advanced_pod_spec_flag: Option<bool>,
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

/// `pull_policy`: one policy, or a list tried in order when a pull fails.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PullPolicyValue {
    One(String),
    Many(Vec<String>),
}

/// A string, or a list of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    /// The entries (an empty string is none).
    pub fn entries(list: &Option<Self>) -> Vec<&str> {
        match list {
            None => Vec::new(),
            Some(StringOrList::One(one)) => (!one.is_empty())
                .then_some(one.as_str())
                .into_iter()
                .collect(),
            Some(StringOrList::Many(many)) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// Whose resources a setting is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceGroup {
    Build,
    Helper,
    Service,
    Pod,
}

/// One `*_{limit,request}` key: its value, its `*_overwrite_max_allowed` and the job variable
/// that may overwrite it.
#[derive(Clone, Debug)]
pub struct ResourceSetting<'a> {
    pub key: &'static str,
    pub group: ResourceGroup,
    pub limit: bool,
    /// `cpu`, `memory` or `ephemeral-storage`.
    pub resource: &'static str,
    /// The official field name, for messages (`CPULimit`, `HelperMemoryRequest`, …).
    pub field: &'static str,
    pub variable: &'static str,
    pub value: Option<&'a str>,
    pub max: Option<&'a str>,
}

/// A container resource block: `(cpu, memory, ephemeral-storage)` limits and requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub limits: BTreeMap<String, String>,
    pub requests: BTreeMap<String, String>,
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
        let mut options = options;
        options.validate()?;
        for spec in &options.pod_spec {
            let loaded = crate::patch::load(spec)?;
            options.loaded_patches.push((spec.name.clone(), loaded));
        }
        Ok(options)
    }

    fn validate(&self) -> Result<(), KubernetesError> {
        let invalid =
            |key: &'static str, reason: String| KubernetesError::InvalidOption { key, reason };
        self.pull_policies()?;
        for policy in &self.allowed_pull_policies {
            pull_policy_name(policy).map_err(|reason| invalid("allowed_pull_policies", reason))?;
        }
        // The official runner skips entries that are not ids with a warning; Runnel refuses
        // them, as they can never match.
        for (key, list) in [
            ("allowed_users", &self.allowed_users),
            ("allowed_groups", &self.allowed_groups),
        ] {
            for entry in StringOrList::entries(list) {
                if entry.trim().parse::<i64>().is_err() {
                    return Err(invalid(key, format!("`{entry}` is not a numeric id")));
                }
            }
        }
        if self.poll_interval == Some(0) {
            return Err(invalid(
                "poll_interval",
                "must be at least 1 second".to_owned(),
            ));
        }
        for setting in self.resource_settings() {
            if let Some(quantity) = setting.value
                && !valid_quantity(quantity)
            {
                return Err(invalid(
                    setting.key,
                    format!("`{quantity}` is not a Kubernetes quantity (like 500m, 2, 128Mi)"),
                ));
            }
            for (what, quantity) in [("_overwrite_max_allowed", setting.max)] {
                if let Some(quantity) = quantity
                    && !valid_quantity(quantity)
                {
                    return Err(KubernetesError::InvalidSection {
                        message: format!(
                            "`{}{what}`: `{quantity}` is not a Kubernetes quantity (like 500m, 2, 128Mi)",
                            setting.key
                        ),
                    });
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "cert_file",
                "cert_file and key_file must be set together".to_owned(),
            ));
        }
        for (key, pattern) in [
            (
                "namespace_overwrite_allowed",
                &self.namespace_overwrite_allowed,
            ),
            (
                "service_account_overwrite_allowed",
                &self.service_account_overwrite_allowed,
            ),
            (
                "node_selector_overwrite_allowed",
                &self.node_selector_overwrite_allowed,
            ),
            (
                "node_tolerations_overwrite_allowed",
                &self.node_tolerations_overwrite_allowed,
            ),
            (
                "pod_labels_overwrite_allowed",
                &self.pod_labels_overwrite_allowed,
            ),
            (
                "pod_annotations_overwrite_allowed",
                &self.pod_annotations_overwrite_allowed,
            ),
        ] {
            if let Some(pattern) = pattern.as_deref().filter(|p| !p.is_empty()) {
                regex::Regex::new(pattern).map_err(|error| {
                    invalid(
                        key,
                        format!("`{pattern}` is not a regular expression: {error}"),
                    )
                })?;
            }
        }
        for pattern in self.allowed_images.iter().chain(&self.allowed_services) {
            globset::Glob::new(pattern).map_err(|error| {
                invalid(
                    "allowed_images",
                    format!("`{pattern}` is not a glob: {error}"),
                )
            })?;
        }
        if let Some(policy) = &self.dns_policy {
            crate::spec::dns_policy(policy).map_err(|reason| invalid("dns_policy", reason))?;
        }
        self.pod_security_context
            .validate()
            .map_err(|reason| invalid("pod_security_context", reason))?;
        for (key, table) in [
            (
                "build_container_security_context",
                &self.build_container_security_context,
            ),
            (
                "helper_container_security_context",
                &self.helper_container_security_context,
            ),
            (
                "service_container_security_context",
                &self.service_container_security_context,
            ),
            (
                "init_permissions_container_security_context",
                &self.init_permissions_container_security_context,
            ),
        ] {
            table.validate().map_err(|reason| invalid(key, reason))?;
        }
        self.volumes.validate()?;
        for alias in &self.host_aliases {
            if alias.ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "host_aliases",
                    format!("`{}` is not an IP address", alias.ip),
                ));
            }
        }
        if let Some(timeout) = &self.cleanup_resources_timeout {
            runnel_config::parse_go_duration(timeout).map_err(|error| {
                invalid("cleanup_resources_timeout", format!("`{timeout}`: {error}"))
            })?;
        }
        Ok(())
    }

    /// How long cleanup may take (`cleanup_resources_timeout`, default 5 minutes).
    pub fn cleanup_timeout(&self) -> Duration {
        self.cleanup_resources_timeout
            .as_deref()
            .and_then(|text| runnel_config::parse_go_duration(text).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(300))
    }

    /// The security settings every container starts from.
    pub fn security_defaults(&self) -> crate::spec::SecurityDefaults {
        crate::spec::SecurityDefaults {
            privileged: self.privileged,
            allow_privilege_escalation: self.allow_privilege_escalation,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
        }
    }

    /// Every resource key with its overwrite maximum and job variable.
    pub fn resource_settings(&self) -> Vec<ResourceSetting<'_>> {
        vec![
            ResourceSetting {
                key: "cpu_limit",
                group: ResourceGroup::Build,
                limit: true,
                resource: "cpu",
                field: "CPULimit",
                variable: "KUBERNETES_CPU_LIMIT",
                value: self.cpu_limit.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .cpu_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "cpu_request",
                group: ResourceGroup::Build,
                limit: false,
                resource: "cpu",
                field: "CPURequest",
                variable: "KUBERNETES_CPU_REQUEST",
                value: self.cpu_request.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .cpu_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "memory_limit",
                group: ResourceGroup::Build,
                limit: true,
                resource: "memory",
                field: "MemoryLimit",
                variable: "KUBERNETES_MEMORY_LIMIT",
                value: self.memory_limit.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .memory_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "memory_request",
                group: ResourceGroup::Build,
                limit: false,
                resource: "memory",
                field: "MemoryRequest",
                variable: "KUBERNETES_MEMORY_REQUEST",
                value: self.memory_request.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .memory_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "ephemeral_storage_limit",
                group: ResourceGroup::Build,
                limit: true,
                resource: "ephemeral-storage",
                field: "EphemeralStorageLimit",
                variable: "KUBERNETES_EPHEMERAL_STORAGE_LIMIT",
                value: self
                    .ephemeral_storage_limit
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .ephemeral_storage_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "ephemeral_storage_request",
                group: ResourceGroup::Build,
                limit: false,
                resource: "ephemeral-storage",
                field: "EphemeralStorageRequest",
                variable: "KUBERNETES_EPHEMERAL_STORAGE_REQUEST",
                value: self
                    .ephemeral_storage_request
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .ephemeral_storage_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "helper_cpu_limit",
                group: ResourceGroup::Helper,
                limit: true,
                resource: "cpu",
                field: "HelperCPULimit",
                variable: "KUBERNETES_HELPER_CPU_LIMIT",
                value: self.helper_cpu_limit.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .helper_cpu_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "helper_cpu_request",
                group: ResourceGroup::Helper,
                limit: false,
                resource: "cpu",
                field: "HelperCPURequest",
                variable: "KUBERNETES_HELPER_CPU_REQUEST",
                value: self.helper_cpu_request.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .helper_cpu_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "helper_memory_limit",
                group: ResourceGroup::Helper,
                limit: true,
                resource: "memory",
                field: "HelperMemoryLimit",
                variable: "KUBERNETES_HELPER_MEMORY_LIMIT",
                value: self
                    .helper_memory_limit
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .helper_memory_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "helper_memory_request",
                group: ResourceGroup::Helper,
                limit: false,
                resource: "memory",
                field: "HelperMemoryRequest",
                variable: "KUBERNETES_HELPER_MEMORY_REQUEST",
                value: self
                    .helper_memory_request
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .helper_memory_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "helper_ephemeral_storage_limit",
                group: ResourceGroup::Helper,
                limit: true,
                resource: "ephemeral-storage",
                field: "HelperEphemeralStorageLimit",
                variable: "KUBERNETES_HELPER_EPHEMERAL_STORAGE_LIMIT",
                value: self
                    .helper_ephemeral_storage_limit
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .helper_ephemeral_storage_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "helper_ephemeral_storage_request",
                group: ResourceGroup::Helper,
                limit: false,
                resource: "ephemeral-storage",
                field: "HelperEphemeralStorageRequest",
                variable: "KUBERNETES_HELPER_EPHEMERAL_STORAGE_REQUEST",
                value: self
                    .helper_ephemeral_storage_request
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .helper_ephemeral_storage_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "service_cpu_limit",
                group: ResourceGroup::Service,
                limit: true,
                resource: "cpu",
                field: "ServiceCPULimit",
                variable: "KUBERNETES_SERVICE_CPU_LIMIT",
                value: self.service_cpu_limit.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .service_cpu_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "service_cpu_request",
                group: ResourceGroup::Service,
                limit: false,
                resource: "cpu",
                field: "ServiceCPURequest",
                variable: "KUBERNETES_SERVICE_CPU_REQUEST",
                value: self
                    .service_cpu_request
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .service_cpu_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "service_memory_limit",
                group: ResourceGroup::Service,
                limit: true,
                resource: "memory",
                field: "ServiceMemoryLimit",
                variable: "KUBERNETES_SERVICE_MEMORY_LIMIT",
                value: self
                    .service_memory_limit
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .service_memory_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "service_memory_request",
                group: ResourceGroup::Service,
                limit: false,
                resource: "memory",
                field: "ServiceMemoryRequest",
                variable: "KUBERNETES_SERVICE_MEMORY_REQUEST",
                value: self
                    .service_memory_request
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .service_memory_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "service_ephemeral_storage_limit",
                group: ResourceGroup::Service,
                limit: true,
                resource: "ephemeral-storage",
                field: "ServiceEphemeralStorageLimit",
                variable: "KUBERNETES_SERVICE_EPHEMERAL_STORAGE_LIMIT",
                value: self
                    .service_ephemeral_storage_limit
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .service_ephemeral_storage_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "service_ephemeral_storage_request",
                group: ResourceGroup::Service,
                limit: false,
                resource: "ephemeral-storage",
                field: "ServiceEphemeralStorageRequest",
                variable: "KUBERNETES_SERVICE_EPHEMERAL_STORAGE_REQUEST",
                value: self
                    .service_ephemeral_storage_request
                    .as_deref()
                    .filter(|v| !v.is_empty()),
                max: self
                    .service_ephemeral_storage_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "pod_cpu_limit",
                group: ResourceGroup::Pod,
                limit: true,
                resource: "cpu",
                field: "PodCPULimit",
                variable: "KUBERNETES_POD_CPU_LIMIT",
                value: self.pod_cpu_limit.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .pod_cpu_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "pod_cpu_request",
                group: ResourceGroup::Pod,
                limit: false,
                resource: "cpu",
                field: "PodCPURequest",
                variable: "KUBERNETES_POD_CPU_REQUEST",
                value: self.pod_cpu_request.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .pod_cpu_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "pod_memory_limit",
                group: ResourceGroup::Pod,
                limit: true,
                resource: "memory",
                field: "PodMemoryLimit",
                variable: "KUBERNETES_POD_MEMORY_LIMIT",
                value: self.pod_memory_limit.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .pod_memory_limit_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
            ResourceSetting {
                key: "pod_memory_request",
                group: ResourceGroup::Pod,
                limit: false,
                resource: "memory",
                field: "PodMemoryRequest",
                variable: "KUBERNETES_POD_MEMORY_REQUEST",
                value: self.pod_memory_request.as_deref().filter(|v| !v.is_empty()),
                max: self
                    .pod_memory_request_overwrite_max_allowed
                    .as_deref()
                    .filter(|v| !v.is_empty()),
            },
        ]
    }

    /// The configured pull policies in the API spelling, in the order they are tried (empty:
    /// not configured).
    pub fn pull_policies(&self) -> Result<Vec<&'static str>, KubernetesError> {
        let names: Vec<&str> = match &self.pull_policy {
            None => Vec::new(),
            Some(PullPolicyValue::One(one)) => vec![one.as_str()],
            Some(PullPolicyValue::Many(list)) => list.iter().map(String::as_str).collect(),
        };
        names
            .into_iter()
            .filter(|name| !name.is_empty())
            .map(|name| {
                pull_policy_name(name).map_err(|reason| KubernetesError::InvalidOption {
                    key: "pull_policy",
                    reason,
                })
            })
            .collect()
    }

    /// Whether the `[[pod_spec]]` patches apply to `job` (`FF_USE_ADVANCED_POD_SPEC_CONFIGURATION`
    /// from `[runners.feature_flags]`, else the job's variable, default off).
    pub fn advanced_pod_spec(&self, job: &runnel_types::JobSpec) -> bool {
        self.advanced_pod_spec_flag.unwrap_or_else(|| {
            job.variable(ADVANCED_POD_SPEC_FLAG).is_some_and(|v| {
                matches!(v.value.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")
            })
        })
    }

    /// The configured pull policies in the API spelling (`""`: the cluster's default).
    fn configured_pull_policies(&self) -> Vec<&'static str> {
        match self.pull_policies() {
            Ok(policies) if !policies.is_empty() => policies,
            _ => vec![""],
        }
    }

    /// The `imagePullPolicy` values a container whose image asks for `job_policies` (empty:
    /// the configured ones) gets, in the order they are tried when a pull fails, limited to
    /// `allowed_pull_policies` as the official `ComputeEffectivePullPolicies` limits them.
    /// `""`: the cluster's default.
    pub fn effective_pull_policies(
        &self,
        job_policies: &[String],
    ) -> Result<Vec<&'static str>, KubernetesError> {
        let mut requested = Vec::new();
        for name in job_policies {
            requested.push(pull_policy_name(name).map_err(|reason| {
                KubernetesError::NotAllowed(format!("conversion to Kubernetes policy: {reason}"))
            })?);
        }
        let source = if requested.is_empty() {
            requested = self.configured_pull_policies();
            if self.pull_policy.is_some() {
                "Runner config"
            } else {
                "Runner config (default)"
            }
        } else {
            "GitLab pipeline config"
        };
        let allowed: Vec<&str> = if self.allowed_pull_policies.is_empty() {
            self.configured_pull_policies()
        } else {
            self.allowed_pull_policies
                .iter()
                .filter_map(|name| pull_policy_name(name).ok())
                .collect()
        };
        let mut effective: Vec<&'static str> = Vec::new();
        for policy in requested.iter().copied() {
            if allowed.contains(&policy) && !effective.contains(&policy) {
                effective.push(policy);
            }
        }
        if effective.is_empty() {
            return Err(KubernetesError::NotAllowed(format!(
                "pull_policy ([{}]) defined in {source} is not one of the allowed_pull_policies ([{}])",
                requested.join(" "),
                allowed.join(" ")
            )));
        }
        Ok(effective)
    }

    /// Seconds between pod status checks.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval.unwrap_or(3))
    }

    /// How long a pod may take to start.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_secs(self.poll_timeout.unwrap_or(180))
    }
}

/// A pull policy's API spelling.
pub fn pull_policy_name(name: &str) -> Result<&'static str, String> {
    match name {
        "always" => Ok("Always"),
        "never" => Ok("Never"),
        "if-not-present" => Ok("IfNotPresent"),
        other => Err(format!(
            "unknown pull policy `{other}` (always, never, if-not-present)"
        )),
    }
}

/// The value of a quantity (`500m` → 0.5, `1Ki` → 1024), for comparisons.
pub fn quantity_value(text: &str) -> Option<f64> {
    if !valid_quantity(text) {
        return None;
    }
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => 10f64.powi(exponent[1..].parse::<i32>().ok()?),
    };
    Some(number * factor)
}

/// `123`, `0.5`, `500m`, `128Mi`, `1G`, `1e3`: the quantity syntax, roughly.
pub(crate) fn valid_quantity(text: &str) -> bool {
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
            "namespace = \"ci\"\ncontext = \"prod\"\nhelper_image_flavor = \"ubuntu\"\n",
        ))
        .unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"[runners.kubernetes] sets keys Runnel's kubernetes executor does not implement yet (refused rather than ignored): context, helper_image_flavor");
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
        assert_eq!(options.pull_policies().unwrap(), ["IfNotPresent"]);
        let cpu = options
            .resource_settings()
            .into_iter()
            .find(|s| s.key == "cpu_limit")
            .unwrap();
        assert_eq!(cpu.value, Some("500m"));
        assert_eq!(cpu.variable, "KUBERNETES_CPU_LIMIT");
        assert_eq!(cpu.field, "CPULimit");
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
