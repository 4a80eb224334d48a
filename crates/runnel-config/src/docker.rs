//! `[runners.docker]`: the Docker executor's options, typed key by key.
//!
//! Values are kept as written (memory sizes like `"512m"` stay strings; the executor parses them
//! when it builds a container). Pull policies are checked here because a wrong one can only fail
//! jobs later. Talking to the Docker daemon is not done here.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::keyword::keyword_enum;
use crate::read::{read_section, section};

/// Default `wait_for_services_timeout`.
pub const DEFAULT_WAIT_FOR_SERVICES_TIMEOUT: Duration = Duration::from_secs(30);

keyword_enum! {
    /// A Docker image pull policy (`pull_policy` takes one or a list).
    pub enum PullPolicy ("pull policy", one_or_many = true) {
        /// Pull on every job.
        Always = "always",
        /// Pull only when the image is not present locally.
        IfNotPresent = "if-not-present",
        /// Never pull; the image must be present.
        Never = "never",
    }
}

section! {
    /// `[runners.docker]`, in the official key order.
    pub struct DockerConfig {
        /// Docker daemon address (`DOCKER_HOST` when unset).
        "host" => host: Option<String>,
        /// Directory with the TLS certificates for the daemon.
        "tls_cert_path" => tls_cert_path: Option<String>,
        /// Verifies the daemon's TLS certificate.
        "tls_verify" => tls_verify: bool,
        /// Container hostname.
        "hostname" => hostname: Option<String>,
        /// Default job image.
        "image" => image: Option<String>,
        /// Container runtime.
        "runtime" => runtime: Option<String>,
        /// Memory limit such as `"512m"`.
        "memory" => memory: Option<String>,
        /// Memory plus swap limit.
        "memory_swap" => memory_swap: Option<String>,
        /// Memory soft limit.
        "memory_reservation" => memory_reservation: Option<String>,
        /// Parent cgroup of job containers.
        "cgroup_parent" => cgroup_parent: Option<String>,
        /// CPUs the container may use (`"0-3"`).
        "cpuset_cpus" => cpuset_cpus: Option<String>,
        /// Memory nodes the container may use.
        "cpuset_mems" => cpuset_mems: Option<String>,
        /// Number of CPUs, a decimal string such as `"1.5"`.
        "cpus" => cpus: Option<String>,
        /// Relative CPU weight.
        "cpu_shares" => cpu_shares: i64,
        /// DNS servers.
        "dns" => dns: Vec<String>,
        /// DNS search domains.
        "dns_search" => dns_search: Vec<String>,
        /// Runs containers privileged.
        "privileged" => privileged: bool,
        /// Overrides `privileged` for service containers.
        "services_privileged" => services_privileged: Option<bool>,
        /// Keeps the image's entrypoint.
        "disable_entrypoint_overwrite" => disable_entrypoint_overwrite: bool,
        /// User commands run as.
        "user" => user: Option<String>,
        /// Users a job may select.
        "allowed_users" => allowed_users: Vec<String>,
        /// Extra groups.
        "group_add" => group_add: Vec<String>,
        /// User namespace mode.
        "userns_mode" => userns_mode: Option<String>,
        /// Added Linux capabilities.
        "cap_add" => cap_add: Vec<String>,
        /// Dropped Linux capabilities.
        "cap_drop" => cap_drop: Vec<String>,
        /// Disables the OOM killer.
        "oom_kill_disable" => oom_kill_disable: bool,
        /// OOM score adjustment.
        "oom_score_adjust" => oom_score_adjust: i64,
        /// Security options of job containers.
        "security_opt" => security_opt: Vec<String>,
        /// Security options of service containers.
        "services_security_opt" => services_security_opt: Vec<String>,
        /// Host devices for job containers.
        "devices" => devices: Vec<String>,
        /// Device cgroup rules.
        "device_cgroup_rules" => device_cgroup_rules: Vec<String>,
        /// GPUs (`"all"`).
        "gpus" => gpus: Option<String>,
        /// Host devices per service image pattern.
        "services_devices" => services_devices: BTreeMap<String, Vec<String>>,
        /// Disables the cache volume.
        "disable_cache" => disable_cache: bool,
        /// Extra volumes (`"/cache"`, `"/host:/container:ro"`).
        "volumes" => volumes: Vec<String>,
        /// Keeps volumes after the job.
        "volume_keep" => volume_keep: bool,
        /// Volume driver.
        "volume_driver" => volume_driver: Option<String>,
        /// Volume driver options.
        "volume_driver_ops" => volume_driver_ops: BTreeMap<String, String>,
        /// Where cache volumes live.
        "cache_dir" => cache_dir: Option<String>,
        /// Extra `/etc/hosts` entries.
        "extra_hosts" => extra_hosts: Vec<String>,
        /// Containers to take volumes from.
        "volumes_from" => volumes_from: Vec<String>,
        /// Network mode.
        "network_mode" => network_mode: Option<String>,
        /// PID namespace mode.
        "pid_mode" => pid_mode: Option<String>,
        /// IPC mode.
        "ipcmode" => ipcmode: Option<String>,
        /// Container MAC address.
        "mac_address" => mac_address: Option<String>,
        /// Legacy container links.
        "links" => links: Vec<String>,
        /// `[[runners.docker.services]]` started with every job.
        "services" => services: Vec<DockerService>,
        /// Most services per job.
        "services_limit" => services_limit: Option<i64>,
        /// Memory limit of service containers.
        "service_memory" => service_memory: Option<String>,
        /// Memory plus swap limit of service containers.
        "service_memory_swap" => service_memory_swap: Option<String>,
        /// Memory soft limit of service containers.
        "service_memory_reservation" => service_memory_reservation: Option<String>,
        /// Parent cgroup of service containers.
        "service_cgroup_parent" => service_cgroup_parent: Option<String>,
        /// CPUs service containers may use.
        "service_cpuset_cpus" => service_cpuset_cpus: Option<String>,
        /// Number of CPUs of service containers.
        "service_cpus" => service_cpus: Option<String>,
        /// Relative CPU weight of service containers.
        "service_cpu_shares" => service_cpu_shares: Option<i64>,
        /// GPUs of service containers.
        "service_gpus" => service_gpus: Option<String>,
        /// Seconds to wait for services; see [`DockerConfig::wait_for_services_timeout`].
        "wait_for_services_timeout" => wait_for_services_timeout: Option<i64>,
        /// Images a job may use (globs).
        "allowed_images" => allowed_images: Vec<String>,
        /// Images that may run privileged.
        "allowed_privileged_images" => allowed_privileged_images: Vec<String>,
        /// Services that may run privileged.
        "allowed_privileged_services" => allowed_privileged_services: Vec<String>,
        /// Pull policies a job may ask for.
        "allowed_pull_policies" => allowed_pull_policies: Vec<PullPolicy>,
        /// Services a job may use (globs).
        "allowed_services" => allowed_services: Vec<String>,
        /// Pull policies, tried in order; see [`DockerConfig::pull_policies`].
        "pull_policy" => pull_policy: Vec<PullPolicy>,
        /// Windows isolation technology.
        "isolation" => isolation: Option<String>,
        /// `/dev/shm` size in bytes.
        "shm_size" => shm_size: i64,
        /// tmpfs mounts of the job container (path → options).
        "tmpfs" => tmpfs: BTreeMap<String, String>,
        /// tmpfs mounts of service containers.
        "services_tmpfs" => services_tmpfs: BTreeMap<String, String>,
        /// sysctls of the job container.
        "sysctls" => sysctls: BTreeMap<String, String>,
        /// Helper image override.
        "helper_image" => helper_image: Option<String>,
        /// Helper image flavor (alpine, ubuntu, …).
        "helper_image_flavor" => helper_image_flavor: Option<String>,
        /// Labels of created containers.
        "container_labels" => container_labels: BTreeMap<String, String>,
        /// IPv6 on per-job networks.
        "enable_ipv6" => enable_ipv6: bool,
        /// ulimits (`nofile = "1024:2048"`).
        "ulimit" => ulimit: BTreeMap<String, String>,
        /// MTU of per-job networks.
        "network_mtu" => network_mtu: i64,
        /// Docker log driver options.
        "log_options" => log_options: BTreeMap<String, String>,
    }
}

impl DockerConfig {
    /// `[runners.docker]` keys that are set but that the docker executor does not act on, where
    /// that changes no job: `isolation` (Windows containers only) and `helper_image_flavor`
    /// (Runnel assembles its own helper image, whatever the flavor).
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        [
            ("[runners.docker] isolation", self.isolation.is_some()),
            (
                "[runners.docker] helper_image_flavor",
                self.helper_image_flavor.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// The pull policies to use: `pull_policy`, or `["always"]` when unset.
    pub fn pull_policies(&self) -> Vec<PullPolicy> {
        if self.pull_policy.is_empty() {
            vec![PullPolicy::Always]
        } else {
            self.pull_policy.clone()
        }
    }

    /// How long to wait for services: 30 s when unset or 0, `None` (do not wait) when negative.
    pub fn wait_for_services_timeout(&self) -> Option<Duration> {
        match self.wait_for_services_timeout.unwrap_or(0) {
            0 => Some(DEFAULT_WAIT_FOR_SERVICES_TIMEOUT),
            // Clamped (review M1): the readiness deadline is "now" plus this.
            seconds => u64::try_from(seconds)
                .ok()
                .map(|s| runnel_types::clamp_duration(Duration::from_secs(s))),
        }
    }
}

section! {
    /// One `[[runners.docker.services]]` entry.
    pub struct DockerService {
        /// Image of the service.
        "name" => name: String,
        /// Space- or comma-separated host aliases.
        "alias" => alias: Option<String>,
        /// Command override.
        "command" => command: Vec<String>,
        /// Entrypoint override.
        "entrypoint" => entrypoint: Vec<String>,
        /// `KEY=VALUE` environment of the service.
        "environment" => environment: Vec<String>,
    }
}

read_section!(DockerConfig, DockerService);
