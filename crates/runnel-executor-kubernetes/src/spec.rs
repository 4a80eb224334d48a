//! The nested tables of `[runners.kubernetes]` (volumes, security contexts, affinity, DNS, host
//! aliases, lifecycle hooks, `pod_spec` patches), typed in the official TOML spelling, and
//! their conversion to the Kubernetes API objects the official runner puts in the pod.
//!
//! Every table refuses keys it does not know (`deny_unknown_fields`), so a misspelled or
//! unsupported nested key stops the runner at start instead of being ignored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, AppArmorProfile, CSIVolumeSource, Capabilities, ConfigMapVolumeSource,
    EmptyDirVolumeSource, ExecAction, HTTPGetAction, HTTPHeader, HostAlias, HostPathVolumeSource,
    KeyToPath, Lifecycle, LifecycleHandler, NFSVolumeSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, PodAffinity,
    PodAffinityTerm, PodAntiAffinity, PodDNSConfig, PodDNSConfigOption, PodSecurityContext,
    PreferredSchedulingTerm, SELinuxOptions, SeccompProfile, SecretVolumeSource, SecurityContext,
    TCPSocketAction, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::KubernetesError;

fn some_vec<T>(list: Vec<T>) -> Option<Vec<T>> {
    (!list.is_empty()).then_some(list)
}

fn some_str(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn some_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

// ---------------------------------------------------------------------------------------------
// Volumes

/// `[runners.kubernetes.volumes]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volumes {
    #[serde(default)]
    pub host_path: Vec<HostPathVolume>,
    #[serde(default)]
    pub pvc: Vec<PvcVolume>,
    #[serde(default)]
    pub config_map: Vec<ConfigMapVolume>,
    #[serde(default)]
    pub secret: Vec<SecretVolume>,
    #[serde(default)]
    pub empty_dir: Vec<EmptyDirVolume>,
    #[serde(default)]
    pub csi: Vec<CsiVolume>,
    #[serde(default)]
    pub nfs: Vec<NfsVolume>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathVolume {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    #[serde(default)]
    pub read_only: bool,
    /// The path on the node; the mount path when empty (the official 9.3 syntax).
    #[serde(default)]
    pub host_path: String,
    pub mount_propagation: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvcVolume {
    /// The claim's name (job variables expanded), also the volume's.
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    #[serde(default)]
    pub read_only: bool,
    pub mount_propagation: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapVolume {
    /// The config map's name, also the volume's.
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    #[serde(default)]
    pub read_only: bool,
    /// key → path inside the mount.
    #[serde(default)]
    pub items: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretVolume {
    /// The secret's name, also the volume's.
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    #[serde(default)]
    pub read_only: bool,
    /// key → path inside the mount.
    #[serde(default)]
    pub items: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyDirVolume {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    /// `""` (node disk) or `Memory`.
    #[serde(default)]
    pub medium: String,
    #[serde(default)]
    pub size_limit: String,
    pub mount_propagation: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsiVolume {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    pub driver: String,
    #[serde(default)]
    pub fs_type: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub volume_attributes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsVolume {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub sub_path: String,
    pub server: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

fn key_to_paths(items: &BTreeMap<String, String>) -> Option<Vec<KeyToPath>> {
    some_vec(
        items
            .iter()
            .map(|(key, path)| KeyToPath {
                key: key.clone(),
                path: path.clone(),
                mode: None,
            })
            .collect(),
    )
}

impl Volumes {
    /// Checks what the API server would refuse anyway, at start and with the key named.
    pub fn validate(&self) -> Result<(), KubernetesError> {
        let invalid = |reason: String| KubernetesError::InvalidOption {
            key: "volumes",
            reason,
        };
        // Every volume: its table, name, mount path, and what else its kind requires.
        let mut all: Vec<(&str, &str, &str, Option<String>)> = Vec::new();
        all.extend(
            self.host_path
                .iter()
                .map(|v| ("host_path", v.name.as_str(), v.mount_path.as_str(), None)),
        );
        all.extend(
            self.secret
                .iter()
                .map(|v| ("secret", v.name.as_str(), v.mount_path.as_str(), None)),
        );
        all.extend(
            self.config_map
                .iter()
                .map(|v| ("config_map", v.name.as_str(), v.mount_path.as_str(), None)),
        );
        all.extend(self.empty_dir.iter().map(|v| {
            let bad_size =
                !v.size_limit.trim().is_empty() && !crate::options::valid_quantity(&v.size_limit);
            let problem = bad_size.then(|| {
                format!(
                    "empty_dir {}: size_limit `{}` is not a Kubernetes quantity",
                    v.name, v.size_limit
                )
            });
            ("empty_dir", v.name.as_str(), v.mount_path.as_str(), problem)
        }));
        all.extend(self.csi.iter().map(|v| {
            let problem = v
                .driver
                .is_empty()
                .then(|| format!("csi volume {} needs a driver", v.name));
            ("csi", v.name.as_str(), v.mount_path.as_str(), problem)
        }));
        all.extend(self.nfs.iter().map(|v| {
            let problem = (v.server.is_empty() || v.path.is_empty())
                .then(|| format!("nfs volume {} needs a server and a path", v.name));
            ("nfs", v.name.as_str(), v.mount_path.as_str(), problem)
        }));
        let mut names = Vec::new();
        for (kind, name, mount_path, problem) in all {
            if name.is_empty() || mount_path.is_empty() {
                return Err(invalid(format!(
                    "every [[volumes.{kind}]] needs a name and a mount_path"
                )));
            }
            if let Some(problem) = problem {
                return Err(invalid(problem));
            }
            names.push(name);
        }
        // PVCs may share a claim (several mounts of one volume); the others may not.
        let mut sorted = names.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(invalid(format!("two volumes are named `{}`", pair[0])));
        }
        for v in &self.pvc {
            if v.name.is_empty() || v.mount_path.is_empty() {
                return Err(invalid(
                    "every [[volumes.pvc]] needs a name and a mount_path".to_owned(),
                ));
            }
            if names.contains(&v.name.as_str()) {
                return Err(invalid(format!("two volumes are named `{}`", v.name)));
            }
        }
        Ok(())
    }

    /// The volumes, in the official order: host paths, secrets, PVCs (one per claim), config
    /// maps, empty dirs, CSI, NFS. `expand` expands job variables (PVC names only, as official).
    pub fn volumes(&self, expand: &dyn Fn(&str) -> String) -> Vec<Volume> {
        let mut volumes = Vec::new();
        for v in &self.host_path {
            let path = if v.host_path.is_empty() {
                &v.mount_path
            } else {
                &v.host_path
            };
            volumes.push(Volume {
                name: v.name.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: None,
                }),
                ..Volume::default()
            });
        }
        for v in &self.secret {
            volumes.push(Volume {
                name: v.name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(v.name.clone()),
                    items: key_to_paths(&v.items),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        let mut claims: Vec<&str> = Vec::new();
        for v in &self.pvc {
            if claims.contains(&v.name.as_str()) {
                continue;
            }
            claims.push(&v.name);
            let name = expand(&v.name);
            volumes.push(Volume {
                name: name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: name,
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
        for v in &self.config_map {
            volumes.push(Volume {
                name: v.name.clone(),
                config_map: Some(ConfigMapVolumeSource {
                    name: v.name.clone(),
                    items: key_to_paths(&v.items),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        for v in &self.empty_dir {
            volumes.push(Volume {
                name: v.name.clone(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: some_str(&v.medium),
                    size_limit: some_str(v.size_limit.trim()).map(Quantity),
                }),
                ..Volume::default()
            });
        }
        for v in &self.csi {
            volumes.push(Volume {
                name: v.name.clone(),
                csi: Some(CSIVolumeSource {
                    driver: v.driver.clone(),
                    fs_type: Some(v.fs_type.clone()),
                    read_only: Some(v.read_only),
                    volume_attributes: some_map(&v.volume_attributes),
                    node_publish_secret_ref: None,
                }),
                ..Volume::default()
            });
        }
        for v in &self.nfs {
            volumes.push(Volume {
                name: v.name.clone(),
                nfs: Some(NFSVolumeSource {
                    path: v.path.clone(),
                    read_only: Some(v.read_only),
                    server: v.server.clone(),
                }),
                ..Volume::default()
            });
        }
        volumes
    }

    /// The mounts every container gets, in the official order (host paths, secrets, PVCs,
    /// config maps, empty dirs, CSI, NFS); paths have job variables expanded.
    pub fn mounts(&self, expand: &dyn Fn(&str) -> String) -> Vec<VolumeMount> {
        let mount =
            |name: String, path: &str, sub: &str, read_only: bool, propagation: &Option<String>| {
                VolumeMount {
                    name,
                    mount_path: expand(path),
                    sub_path: some_str(&expand(sub)),
                    read_only: read_only.then_some(true),
                    mount_propagation: propagation.clone(),
                    ..VolumeMount::default()
                }
            };
        let mut mounts = Vec::new();
        for v in &self.host_path {
            mounts.push(mount(
                v.name.clone(),
                &v.mount_path,
                &v.sub_path,
                v.read_only,
                &v.mount_propagation,
            ));
        }
        for v in &self.secret {
            mounts.push(mount(
                v.name.clone(),
                &v.mount_path,
                &v.sub_path,
                v.read_only,
                &None,
            ));
        }
        for v in &self.pvc {
            mounts.push(mount(
                expand(&v.name),
                &v.mount_path,
                &v.sub_path,
                v.read_only,
                &v.mount_propagation,
            ));
        }
        for v in &self.config_map {
            mounts.push(mount(
                v.name.clone(),
                &v.mount_path,
                &v.sub_path,
                v.read_only,
                &None,
            ));
        }
        for v in &self.empty_dir {
            mounts.push(mount(
                v.name.clone(),
                &v.mount_path,
                &v.sub_path,
                false,
                &v.mount_propagation,
            ));
        }
        for v in &self.csi {
            mounts.push(mount(
                v.name.clone(),
                &v.mount_path,
                &v.sub_path,
                v.read_only,
                &None,
            ));
        }
        for v in &self.nfs {
            mounts.push(mount(
                v.name.clone(),
                &v.mount_path,
                &v.sub_path,
                v.read_only,
                &None,
            ));
        }
        mounts
    }
}

// ---------------------------------------------------------------------------------------------
// Security contexts

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub localhost_profile: String,
}

impl ProfileConfig {
    fn validate(&self, what: &str) -> Result<(), String> {
        match self.type_.as_str() {
            "" | "RuntimeDefault" | "Unconfined" => Ok(()),
            "Localhost" if !self.localhost_profile.is_empty() => Ok(()),
            "Localhost" => Err(format!(
                "{what} profile type is Localhost but localhost_profile is not set"
            )),
            other => Err(format!(
                "invalid {what} profile type `{other}` (RuntimeDefault, Unconfined, Localhost)"
            )),
        }
    }

    fn parts(profile: &Option<Self>) -> Option<(String, Option<String>)> {
        let profile = profile.as_ref().filter(|p| !p.type_.is_empty())?;
        let localhost = (profile.type_ == "Localhost").then(|| profile.localhost_profile.clone());
        Some((profile.type_.clone(), localhost))
    }
}

fn seccomp(profile: &Option<ProfileConfig>) -> Option<SeccompProfile> {
    ProfileConfig::parts(profile).map(|(type_, localhost_profile)| SeccompProfile {
        type_,
        localhost_profile,
    })
}

fn app_armor(profile: &Option<ProfileConfig>) -> Option<AppArmorProfile> {
    ProfileConfig::parts(profile).map(|(type_, localhost_profile)| AppArmorProfile {
        type_,
        localhost_profile,
    })
}

fn se_linux(type_: &str) -> Option<SELinuxOptions> {
    (!type_.is_empty()).then(|| SELinuxOptions {
        type_: Some(type_.to_owned()),
        ..SELinuxOptions::default()
    })
}

/// `[runners.kubernetes.pod_security_context]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodSecurityContextConfig {
    pub fs_group: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<i64>,
    #[serde(default)]
    pub supplemental_groups: Vec<i64>,
    #[serde(default)]
    pub selinux_type: String,
    pub seccomp_profile: Option<ProfileConfig>,
    pub app_armor_profile: Option<ProfileConfig>,
}

impl PodSecurityContextConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.seccomp_profile {
            p.validate("seccomp")?;
        }
        if let Some(p) = &self.app_armor_profile {
            p.validate("apparmor")?;
        }
        Ok(())
    }

    /// The pod's `securityContext`; none when nothing is set (as official).
    pub fn to_api(&self) -> Option<PodSecurityContext> {
        if self == &Self::default() {
            return None;
        }
        Some(PodSecurityContext {
            fs_group: self.fs_group,
            run_as_group: self.run_as_group,
            run_as_non_root: self.run_as_non_root,
            run_as_user: self.run_as_user,
            supplemental_groups: some_vec(self.supplemental_groups.clone()),
            se_linux_options: se_linux(&self.selinux_type),
            seccomp_profile: seccomp(&self.seccomp_profile),
            app_armor_profile: app_armor(&self.app_armor_profile),
            ..PodSecurityContext::default()
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesConfig {
    pub add: Option<Vec<String>>,
    pub drop: Option<Vec<String>>,
}

/// `[runners.kubernetes.{build,helper,service,init_permissions}_container_security_context]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerSecurityContextConfig {
    pub capabilities: Option<CapabilitiesConfig>,
    pub privileged: Option<bool>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default)]
    pub selinux_type: String,
    #[serde(default)]
    pub proc_mount: String,
    pub seccomp_profile: Option<ProfileConfig>,
    pub app_armor_profile: Option<ProfileConfig>,
}

impl ContainerSecurityContextConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.proc_mount()?;
        if let Some(p) = &self.seccomp_profile {
            p.validate("seccomp")?;
        }
        if let Some(p) = &self.app_armor_profile {
            p.validate("apparmor")?;
        }
        Ok(())
    }

    /// `Default`/`Unmasked` in any case; empty when unset.
    fn proc_mount(&self) -> Result<Option<String>, String> {
        match self.proc_mount.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "default" => Ok(Some("Default".to_owned())),
            "unmasked" => Ok(Some("Unmasked".to_owned())),
            _ => Err(format!(
                "invalid proc_mount `{}` (Default, Unmasked)",
                self.proc_mount
            )),
        }
    }
}

/// What every container's security context is made from besides its own table.
#[derive(Clone, Debug, Default)]
pub struct SecurityDefaults {
    /// `privileged` of `[runners.kubernetes]`.
    pub privileged: Option<bool>,
    /// `allow_privilege_escalation` of `[runners.kubernetes]`.
    pub allow_privilege_escalation: Option<bool>,
    /// `cap_add`.
    pub cap_add: Vec<String>,
    /// `cap_drop`.
    pub cap_drop: Vec<String>,
}

/// The capabilities the official runner drops from every Linux container unless `cap_add`
/// adds them back.
pub const DEFAULT_CAP_DROP: &[&str] = &["NET_RAW"];

/// A container's security context as the official `GetContainerSecurityContext` makes it:
/// `cap_add`/`cap_drop` over the default drop list (`NET_RAW`), replaced list by list by the
/// container table's `capabilities`; `privileged` and `allow_privilege_escalation` from the
/// table, else the runner-wide keys; the run-as ids from the table, else the pod's.
pub fn container_security_context(
    defaults: &SecurityDefaults,
    table: &ContainerSecurityContextConfig,
    pod: &PodSecurityContextConfig,
) -> SecurityContext {
    // name → added?
    let mut enabled: BTreeMap<&str, bool> = BTreeMap::new();
    for cap in DEFAULT_CAP_DROP {
        enabled.insert(cap, false);
    }
    for cap in &defaults.cap_add {
        enabled.insert(cap, true);
    }
    for cap in &defaults.cap_drop {
        enabled.insert(cap, false);
    }
    let mut add: Option<Vec<String>> = None;
    let mut drop: Option<Vec<String>> = None;
    for (cap, added) in enabled {
        let list = if added { &mut add } else { &mut drop };
        list.get_or_insert_with(Vec::new).push(cap.to_owned());
    }
    if let Some(own) = &table.capabilities {
        if own.add.is_some() {
            add.clone_from(&own.add);
        }
        if own.drop.is_some() {
            drop.clone_from(&own.drop);
        }
    }
    let capabilities = (add.is_some() || drop.is_some()).then_some(Capabilities { add, drop });
    SecurityContext {
        capabilities,
        privileged: table.privileged.or(defaults.privileged),
        allow_privilege_escalation: table
            .allow_privilege_escalation
            .or(defaults.allow_privilege_escalation),
        run_as_user: table.run_as_user.or(pod.run_as_user),
        run_as_group: table.run_as_group.or(pod.run_as_group),
        run_as_non_root: table.run_as_non_root,
        read_only_root_filesystem: table.read_only_root_filesystem,
        proc_mount: table.proc_mount().ok().flatten(),
        se_linux_options: se_linux(&table.selinux_type),
        seccomp_profile: seccomp(&table.seccomp_profile),
        app_armor_profile: app_armor(&table.app_armor_profile),
        ..SecurityContext::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Affinity

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    pub node_affinity: Option<NodeAffinityConfig>,
    pub pod_affinity: Option<PodAffinityConfig>,
    pub pod_anti_affinity: Option<PodAffinityConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAffinityConfig {
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelectorConfig>,
    #[serde(default)]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTermConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelectorConfig {
    #[serde(default)]
    pub node_selector_terms: Vec<NodeSelectorTermConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferredSchedulingTermConfig {
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub preference: NodeSelectorTermConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelectorTermConfig {
    #[serde(default)]
    pub match_expressions: Vec<RequirementConfig>,
    #[serde(default)]
    pub match_fields: Vec<RequirementConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementConfig {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// Pod affinity and pod anti-affinity have the same shape.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAffinityConfig {
    #[serde(default)]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTermConfig>,
    #[serde(default)]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTermConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAffinityTermConfig {
    pub label_selector: Option<LabelSelectorConfig>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub topology_key: String,
    pub namespace_selector: Option<LabelSelectorConfig>,
    #[serde(default)]
    pub match_label_keys: Vec<String>,
    #[serde(default)]
    pub mismatch_label_keys: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedPodAffinityTermConfig {
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub pod_affinity_term: PodAffinityTermConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorConfig {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<RequirementConfig>,
}

impl RequirementConfig {
    fn node(&self) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: self.key.clone(),
            operator: self.operator.clone(),
            values: some_vec(self.values.clone()),
        }
    }

    fn label(&self) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: self.key.clone(),
            operator: self.operator.clone(),
            values: some_vec(self.values.clone()),
        }
    }
}

impl NodeSelectorTermConfig {
    fn to_api(&self) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: some_vec(
                self.match_expressions
                    .iter()
                    .map(RequirementConfig::node)
                    .collect(),
            ),
            match_fields: some_vec(
                self.match_fields
                    .iter()
                    .map(RequirementConfig::node)
                    .collect(),
            ),
        }
    }
}

impl LabelSelectorConfig {
    fn to_api(&self) -> LabelSelector {
        LabelSelector {
            match_labels: some_map(&self.match_labels),
            match_expressions: some_vec(
                self.match_expressions
                    .iter()
                    .map(RequirementConfig::label)
                    .collect(),
            ),
        }
    }
}

impl PodAffinityTermConfig {
    fn to_api(&self) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: self
                .label_selector
                .as_ref()
                .map(LabelSelectorConfig::to_api),
            namespaces: some_vec(self.namespaces.clone()),
            topology_key: self.topology_key.clone(),
            namespace_selector: self
                .namespace_selector
                .as_ref()
                .map(LabelSelectorConfig::to_api),
            match_label_keys: some_vec(self.match_label_keys.clone()),
            mismatch_label_keys: some_vec(self.mismatch_label_keys.clone()),
        }
    }
}

impl PodAffinityConfig {
    fn parts(
        &self,
    ) -> (
        Option<Vec<PodAffinityTerm>>,
        Option<Vec<WeightedPodAffinityTerm>>,
    ) {
        (
            some_vec(
                self.required_during_scheduling_ignored_during_execution
                    .iter()
                    .map(PodAffinityTermConfig::to_api)
                    .collect(),
            ),
            some_vec(
                self.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .map(|term| WeightedPodAffinityTerm {
                        weight: term.weight,
                        pod_affinity_term: term.pod_affinity_term.to_api(),
                    })
                    .collect(),
            ),
        )
    }
}

impl AffinityConfig {
    /// The pod's `affinity`; none when no part is configured.
    pub fn to_api(&self) -> Option<Affinity> {
        if self.node_affinity.is_none()
            && self.pod_affinity.is_none()
            && self.pod_anti_affinity.is_none()
        {
            return None;
        }
        Some(Affinity {
            node_affinity: self.node_affinity.as_ref().map(|node| NodeAffinity {
                required_during_scheduling_ignored_during_execution: node
                    .required_during_scheduling_ignored_during_execution
                    .as_ref()
                    .map(|selector| NodeSelector {
                        node_selector_terms: selector
                            .node_selector_terms
                            .iter()
                            .map(NodeSelectorTermConfig::to_api)
                            .collect(),
                    }),
                preferred_during_scheduling_ignored_during_execution: some_vec(
                    node.preferred_during_scheduling_ignored_during_execution
                        .iter()
                        .map(|term| PreferredSchedulingTerm {
                            weight: term.weight,
                            preference: term.preference.to_api(),
                        })
                        .collect(),
                ),
            }),
            pod_affinity: self.pod_affinity.as_ref().map(|pod| {
                let (required, preferred) = pod.parts();
                PodAffinity {
                    required_during_scheduling_ignored_during_execution: required,
                    preferred_during_scheduling_ignored_during_execution: preferred,
                }
            }),
            pod_anti_affinity: self.pod_anti_affinity.as_ref().map(|pod| {
                let (required, preferred) = pod.parts();
                PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: required,
                    preferred_during_scheduling_ignored_during_execution: preferred,
                }
            }),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// DNS, host aliases, lifecycle

/// `[runners.kubernetes.dns_config]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub options: Vec<DnsOption>,
    #[serde(default)]
    pub searches: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsOption {
    pub name: String,
    pub value: Option<String>,
}

impl DnsConfig {
    /// The pod's `dnsConfig`; none when empty.
    pub fn to_api(&self) -> Option<PodDNSConfig> {
        if self.nameservers.is_empty() && self.options.is_empty() && self.searches.is_empty() {
            return None;
        }
        Some(PodDNSConfig {
            nameservers: some_vec(self.nameservers.clone()),
            searches: some_vec(self.searches.clone()),
            options: some_vec(
                self.options
                    .iter()
                    .map(|option| PodDNSConfigOption {
                        name: Some(option.name.clone()),
                        value: option.value.clone(),
                    })
                    .collect(),
            ),
        })
    }
}

/// `dns_policy` → the API spelling.
pub fn dns_policy(value: &str) -> Result<&'static str, String> {
    match value {
        "" | "cluster-first" => Ok("ClusterFirst"),
        "none" => Ok("None"),
        "default" => Ok("Default"),
        "cluster-first-with-host-net" => Ok("ClusterFirstWithHostNet"),
        other => Err(format!(
            "unsupported dns_policy `{other}` (none, default, cluster-first, cluster-first-with-host-net)"
        )),
    }
}

/// One `[[runners.kubernetes.host_aliases]]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAliasConfig {
    pub ip: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

impl HostAliasConfig {
    pub fn to_api(&self) -> HostAlias {
        HostAlias {
            ip: self.ip.clone(),
            hostnames: some_vec(self.hostnames.clone()),
        }
    }
}

/// `[runners.kubernetes.container_lifecycle]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    pub post_start: Option<LifecycleHandlerConfig>,
    pub pre_stop: Option<LifecycleHandlerConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleHandlerConfig {
    pub exec: Option<LifecycleExec>,
    pub http_get: Option<LifecycleHttpGet>,
    pub tcp_socket: Option<LifecycleTcpSocket>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleExec {
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleHttpGet {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub http_headers: Vec<HttpHeaderConfig>,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub port: i32,
    #[serde(default)]
    pub scheme: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeaderConfig {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleTcpSocket {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: i32,
}

impl LifecycleHandlerConfig {
    fn to_api(&self) -> LifecycleHandler {
        LifecycleHandler {
            exec: self.exec.as_ref().map(|exec| ExecAction {
                command: Some(exec.command.clone()),
            }),
            http_get: self.http_get.as_ref().map(|get| HTTPGetAction {
                host: some_str(&get.host),
                http_headers: Some(
                    get.http_headers
                        .iter()
                        .map(|h| HTTPHeader {
                            name: h.name.clone(),
                            value: h.value.clone(),
                        })
                        .collect(),
                ),
                path: some_str(&get.path),
                port: IntOrString::Int(get.port),
                scheme: some_str(&get.scheme),
            }),
            tcp_socket: self.tcp_socket.as_ref().map(|tcp| TCPSocketAction {
                host: some_str(&tcp.host),
                port: IntOrString::Int(tcp.port),
            }),
            ..LifecycleHandler::default()
        }
    }
}

impl LifecycleConfig {
    /// Every container's `lifecycle`; none when neither hook is set.
    pub fn to_api(&self) -> Option<Lifecycle> {
        if self.post_start.is_none() && self.pre_stop.is_none() {
            return None;
        }
        Some(Lifecycle {
            post_start: self.post_start.as_ref().map(LifecycleHandlerConfig::to_api),
            pre_stop: self.pre_stop.as_ref().map(LifecycleHandlerConfig::to_api),
            ..Lifecycle::default()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// pod_spec patches

/// One `[[runners.kubernetes.pod_spec]]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpecPatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub patch_path: String,
    #[serde(default)]
    pub patch: String,
    /// `strategic` (default), `merge` (RFC 7386) or `json` (RFC 6902).
    #[serde(default)]
    pub patch_type: String,
}
