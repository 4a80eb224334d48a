//! `[runners.docker]` turned into what container creation needs, checked once up front.
//!
//! [`DockerOptions::from_config`] parses the values the config crate keeps as written (memory
//! sizes like `"512m"`, CPU counts like `"1.5"`, `ulimit`, `devices`, `volumes`), so a bad value
//! fails at startup with the key and value named, not in the middle of a job. The
//! [`DockerOptions::host_config`] builder is pure and snapshot-tested. Talking to Docker is not
//! done here.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    DeviceMapping, DeviceRequest, EndpointSettings, HostConfig, HostConfigLogConfig,
    NetworkingConfig, ResourcesUlimits,
};
use runnel_config::{DockerConfig, PullPolicy};

use crate::DockerError;

/// Which kind of container a host config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRole {
    /// The helper ("predefined") or the build container: the job's resource settings apply.
    Job,
    /// A service container: the `service_*` settings apply.
    Service,
}

/// One `volumes` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSpec {
    /// `host:container[:mode]`: a bind mount.
    Bind {
        /// The host path (or named volume).
        host: String,
        /// The container path.
        container: String,
        /// `ro`, `rw`, … when given.
        mode: Option<String>,
    },
    /// `container`: a cache volume managed by the runner.
    Cache {
        /// The container path.
        container: String,
    },
}

impl VolumeSpec {
    /// Parses `volumes` syntax.
    pub fn parse(spec: &str) -> Result<Self, DockerError> {
        let invalid = |reason| DockerError::InvalidOption {
            key: "volumes",
            value: spec.to_owned(),
            reason,
        };
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.as_slice() {
            [container] if container.starts_with('/') => Ok(VolumeSpec::Cache {
                container: (*container).to_owned(),
            }),
            [host, container] if container.starts_with('/') && !host.is_empty() => {
                Ok(VolumeSpec::Bind {
                    host: (*host).to_owned(),
                    container: (*container).to_owned(),
                    mode: None,
                })
            }
            [host, container, mode] if container.starts_with('/') && !host.is_empty() => {
                Ok(VolumeSpec::Bind {
                    host: (*host).to_owned(),
                    container: (*container).to_owned(),
                    mode: Some((*mode).to_owned()),
                })
            }
            _ => Err(invalid(
                "expected `/container/path`, `host:/container/path` or `host:/container/path:mode`",
            )),
        }
    }

    /// The path inside the container.
    pub fn container_path(&self) -> &str {
        match self {
            VolumeSpec::Bind { container, .. } | VolumeSpec::Cache { container } => container,
        }
    }
}

/// Resource limits of one container role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Resources {
    memory: Option<i64>,
    memory_swap: Option<i64>,
    memory_reservation: Option<i64>,
    nano_cpus: Option<i64>,
    cpuset_cpus: Option<String>,
    cpu_shares: Option<i64>,
    cgroup_parent: Option<String>,
}

/// `[runners.docker]`, validated and parsed.
#[derive(Clone, Debug)]
pub struct DockerOptions {
    /// The section as written.
    pub config: DockerConfig,
    job: Resources,
    service: Resources,
    ulimits: Vec<ResourcesUlimits>,
    devices: Vec<DeviceMapping>,
    /// `gpus`, for the build and helper containers.
    gpus: Option<DeviceRequest>,
    /// `service_gpus`, for service containers.
    service_gpus: Option<DeviceRequest>,
    /// `services_devices`: image pattern, and the devices of services whose image matches.
    services_devices: Vec<(String, Vec<DeviceMapping>)>,
    /// The parsed `volumes`.
    pub volumes: Vec<VolumeSpec>,
    /// How long to wait for services; `None` does not wait.
    pub wait_for_services_timeout: Option<Duration>,
}

impl DockerOptions {
    /// Parses and checks `config`.
    pub fn from_config(config: &DockerConfig) -> Result<Self, DockerError> {
        let job = Resources {
            memory: size("memory", config.memory.as_deref())?,
            memory_swap: size("memory_swap", config.memory_swap.as_deref())?,
            memory_reservation: size("memory_reservation", config.memory_reservation.as_deref())?,
            nano_cpus: nano_cpus("cpus", config.cpus.as_deref())?,
            cpuset_cpus: config.cpuset_cpus.clone(),
            cpu_shares: (config.cpu_shares != 0).then_some(config.cpu_shares),
            cgroup_parent: config.cgroup_parent.clone(),
        };
        let service = Resources {
            memory: size("service_memory", config.service_memory.as_deref())?,
            memory_swap: size("service_memory_swap", config.service_memory_swap.as_deref())?,
            memory_reservation: size(
                "service_memory_reservation",
                config.service_memory_reservation.as_deref(),
            )?,
            nano_cpus: nano_cpus("service_cpus", config.service_cpus.as_deref())?,
            cpuset_cpus: config.service_cpuset_cpus.clone(),
            cpu_shares: config.service_cpu_shares.filter(|shares| *shares != 0),
            cgroup_parent: config.service_cgroup_parent.clone(),
        };
        let ulimits = config
            .ulimit
            .iter()
            .map(|(name, value)| ulimit(name, value))
            .collect::<Result<_, _>>()?;
        let devices = config
            .devices
            .iter()
            .map(|spec| device(spec))
            .collect::<Result<_, _>>()?;
        let volumes = config
            .volumes
            .iter()
            .map(|spec| VolumeSpec::parse(spec))
            .collect::<Result<_, _>>()?;
        if let Some(mac) = config.mac_address.as_deref().filter(|mac| !mac.is_empty()) {
            let octets: Vec<&str> = mac.split(':').collect();
            let valid = octets.len() == 6
                && octets
                    .iter()
                    .all(|octet| octet.len() == 2 && u8::from_str_radix(octet, 16).is_ok());
            if !valid {
                return Err(DockerError::InvalidOption {
                    key: "mac_address",
                    value: mac.to_owned(),
                    reason: "expected six two-digit hex octets separated by `:`",
                });
            }
        }
        let services_devices = config
            .services_devices
            .iter()
            .map(|(pattern, specs)| {
                globset::Glob::new(pattern).map_err(|_| DockerError::InvalidOption {
                    key: "services_devices",
                    value: pattern.clone(),
                    reason: "not a valid image pattern",
                })?;
                let devices = specs
                    .iter()
                    .map(|spec| device(spec))
                    .collect::<Result<_, _>>()?;
                Ok((pattern.clone(), devices))
            })
            .collect::<Result<_, DockerError>>()?;
        Ok(DockerOptions {
            config: config.clone(),
            job,
            service,
            ulimits,
            devices,
            gpus: gpu_request("gpus", config.gpus.as_deref())?,
            service_gpus: gpu_request("service_gpus", config.service_gpus.as_deref())?,
            services_devices,
            volumes,
            wait_for_services_timeout: config.wait_for_services_timeout(),
        })
    }

    /// The endpoint settings that give the build container `mac_address` on the network it
    /// joins: the job's network, else `network_mode`, else the engine's default. Only the build
    /// container gets it: two containers with one address on one bridge would not both be
    /// reachable.
    pub fn mac_address_endpoint(&self, network: Option<&str>) -> Option<NetworkingConfig> {
        let mac = self
            .config
            .mac_address
            .as_deref()
            .filter(|mac| !mac.is_empty())?;
        let network = network
            .or(self.config.network_mode.as_deref())
            .filter(|mode| !mode.is_empty())
            .unwrap_or("default");
        Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_owned(),
                EndpointSettings {
                    mac_address: Some(mac.to_owned()),
                    ..EndpointSettings::default()
                },
            )])),
        })
    }

    /// The pull policies of `[runners.docker]` (`always` when unset).
    pub fn pull_policies(&self) -> Vec<PullPolicy> {
        self.config.pull_policies()
    }

    /// Whether a container of `role` running `image` is privileged, the official rule for
    /// every container (build, helper, services): `privileged` (`services_privileged` for
    /// services, else `privileged`) and `image` allowed by `allowed_privileged_images`
    /// (`allowed_privileged_services`); an empty list allows every image.
    pub fn privileged(&self, role: ContainerRole, image: &str) -> bool {
        let config = &self.config;
        match role {
            ContainerRole::Job => crate::image::privileged_allowed(
                config.privileged,
                image,
                &config.allowed_privileged_images,
            ),
            ContainerRole::Service => crate::image::privileged_allowed(
                config.services_privileged.unwrap_or(config.privileged),
                image,
                &config.allowed_privileged_services,
            ),
        }
    }

    /// The host config of a container of `role` running `image`, with `binds` mounted and
    /// attached to `network` (the per-job network, or `None` when `network_mode` is set or unset
    /// networks are used).
    pub fn host_config(
        &self,
        role: ContainerRole,
        image: &str,
        binds: Vec<String>,
        network: Option<&str>,
    ) -> HostConfig {
        let config = &self.config;
        let resources = match role {
            ContainerRole::Job => &self.job,
            ContainerRole::Service => &self.service,
        };
        let non_empty = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
        let map = |map: &std::collections::BTreeMap<String, String>| {
            (!map.is_empty()).then(|| {
                map.iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect::<HashMap<_, _>>()
            })
        };
        let privileged = self.privileged(role, image);
        let network_mode = match network {
            Some(network) => Some(network.to_owned()),
            None => config.network_mode.clone(),
        };
        let mut host = HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            network_mode,
            privileged: Some(privileged),
            memory: resources.memory,
            memory_swap: resources.memory_swap,
            memory_reservation: resources.memory_reservation,
            nano_cpus: resources.nano_cpus,
            cpuset_cpus: resources.cpuset_cpus.clone(),
            cpu_shares: resources.cpu_shares,
            cgroup_parent: resources.cgroup_parent.clone(),
            dns: non_empty(&config.dns),
            dns_search: non_empty(&config.dns_search),
            extra_hosts: non_empty(&config.extra_hosts),
            runtime: config.runtime.clone(),
            log_config: (!config.log_options.is_empty()).then(|| HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: map(&config.log_options),
            }),
            ..HostConfig::default()
        };
        match role {
            ContainerRole::Job => {
                host.cap_add = non_empty(&config.cap_add);
                host.cap_drop = non_empty(&config.cap_drop);
                host.security_opt = non_empty(&config.security_opt);
                host.devices = (!self.devices.is_empty()).then(|| self.devices.clone());
                host.device_requests = self.gpus.clone().map(|request| vec![request]);
                host.cpuset_mems = config.cpuset_mems.clone().filter(|mems| !mems.is_empty());
                host.device_cgroup_rules = non_empty(&config.device_cgroup_rules);
                host.group_add = non_empty(&config.group_add);
                host.oom_kill_disable = config.oom_kill_disable.then_some(true);
                host.oom_score_adj =
                    (config.oom_score_adjust != 0).then_some(config.oom_score_adjust);
                host.shm_size = (config.shm_size > 0).then_some(config.shm_size);
                host.tmpfs = map(&config.tmpfs);
                host.sysctls = map(&config.sysctls);
                host.ulimits = (!self.ulimits.is_empty()).then(|| self.ulimits.clone());
                host.volumes_from = non_empty(&config.volumes_from);
                host.userns_mode = config.userns_mode.clone();
                host.pid_mode = config.pid_mode.clone();
                host.ipc_mode = config.ipcmode.clone();
                host.links = non_empty(&config.links);
            }
            ContainerRole::Service => {
                host.security_opt = non_empty(&config.services_security_opt);
                host.tmpfs = map(&config.services_tmpfs);
                let devices: Vec<DeviceMapping> = self
                    .services_devices
                    .iter()
                    .filter(|(pattern, _)| {
                        crate::image::matches_any(image, std::slice::from_ref(pattern))
                    })
                    .flat_map(|(_, devices)| devices.iter().cloned())
                    .collect();
                host.devices = (!devices.is_empty()).then_some(devices);
                host.device_requests = self.service_gpus.clone().map(|request| vec![request]);
            }
        }
        host
    }
}

/// Parses a Docker memory size: a number with an optional binary unit (`b`, `k`, `m`, `g`, `t`,
/// `p`, optionally followed by `b`), case-insensitive.
pub fn parse_size(value: &str) -> Option<i64> {
    let value = value.trim().to_ascii_lowercase();
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix('b')
        .filter(|rest| !rest.is_empty())
        .unwrap_or(unit);
    let multiplier: f64 = match unit {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "p" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * multiplier;
    #[allow(clippy::cast_possible_truncation)]
    (0.0..9.0e18).contains(&bytes).then_some(bytes as i64)
}

fn size(key: &'static str, value: Option<&str>) -> Result<Option<i64>, DockerError> {
    match value.map(str::trim).filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(text) => parse_size(text)
            .map(Some)
            .ok_or_else(|| DockerError::InvalidOption {
                key,
                value: text.to_owned(),
                reason: "expected a size such as `512m` or `2g`",
            }),
    }
}

fn nano_cpus(key: &'static str, value: Option<&str>) -> Result<Option<i64>, DockerError> {
    match value.map(str::trim).filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(text) => {
            let cpus: f64 = text.parse().map_err(|_| DockerError::InvalidOption {
                key,
                value: text.to_owned(),
                reason: "expected a number of CPUs such as `1.5`",
            })?;
            if !(cpus.is_finite() && cpus > 0.0 && cpus < 1.0e6) {
                return Err(DockerError::InvalidOption {
                    key,
                    value: text.to_owned(),
                    reason: "expected a positive number of CPUs",
                });
            }
            #[allow(clippy::cast_possible_truncation)]
            Ok(Some((cpus * 1e9).round() as i64))
        }
    }
}

fn ulimit(name: &str, value: &str) -> Result<ResourcesUlimits, DockerError> {
    let invalid = || DockerError::InvalidOption {
        key: "ulimit",
        value: format!("{name} = {value}"),
        reason: "expected `soft:hard` or a single limit",
    };
    let (soft, hard) = match value.split_once(':') {
        Some((soft, hard)) => (soft, hard),
        None => (value, value),
    };
    let soft: i64 = soft.trim().parse().map_err(|_| invalid())?;
    let hard: i64 = hard.trim().parse().map_err(|_| invalid())?;
    Ok(ResourcesUlimits {
        name: Some(name.to_owned()),
        soft: Some(soft),
        hard: Some(hard),
    })
}

/// Parses a GPU request written as Docker's `--gpus` flag takes it: `all`, a count, or
/// comma-separated `count=`, `device=` (quoted when it lists several ids), `driver=`,
/// `capabilities=` (quoted when several) and `options=` (quoted `key=value` pairs) fields.
/// Empty means no request.
pub fn gpu_request(
    key: &'static str,
    value: Option<&str>,
) -> Result<Option<DeviceRequest>, DockerError> {
    let Some(text) = value.map(str::trim).filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    let invalid = |reason| DockerError::InvalidOption {
        key,
        value: text.to_owned(),
        reason,
    };
    let count = |value: &str| match value {
        "all" => Ok(-1),
        number => number
            .parse::<i64>()
            .map_err(|_| invalid("a GPU count is `all` or a whole number")),
    };
    let mut request = DeviceRequest::default();
    let mut seen: Vec<&str> = Vec::new();
    let fields = csv_fields(text).ok_or_else(|| invalid("a stray or unterminated quote"))?;
    for field in &fields {
        let (name, value) = match field.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => ("count", None),
        };
        if seen.contains(&name) {
            return Err(invalid("a GPU request key is given twice"));
        }
        seen.push(name);
        match (name, value) {
            ("count", None) => request.count = Some(count(field)?),
            ("count", Some(value)) => request.count = Some(count(value)?),
            ("driver", Some(value)) => request.driver = Some(value.to_owned()),
            ("device", Some(value)) => {
                request.device_ids = Some(value.split(',').map(str::to_owned).collect());
            }
            ("capabilities", Some(value)) => {
                let mut capabilities: Vec<String> = value.split(',').map(str::to_owned).collect();
                capabilities.push("gpu".to_owned());
                request.capabilities = Some(vec![capabilities]);
            }
            ("options", Some(value)) => {
                let pairs =
                    csv_fields(value).ok_or_else(|| invalid("a stray or unterminated quote"))?;
                request.options = Some(
                    pairs
                        .iter()
                        .map(|pair| match pair.split_once('=') {
                            Some((k, v)) => (k.to_owned(), v.to_owned()),
                            None => (pair.clone(), String::new()),
                        })
                        .collect(),
                );
            }
            _ => {
                return Err(invalid(
                    "expected `all`, a count, or count=, device=, driver=, capabilities= and options= fields",
                ));
            }
        }
    }
    if request.count.is_none() && request.device_ids.is_none() {
        request.count = Some(1);
    }
    if request.capabilities.is_none() {
        request.capabilities = Some(vec![vec!["gpu".to_owned()]]);
    }
    if request.options.is_none() {
        request.options = Some(HashMap::new());
    }
    Ok(Some(request))
}

/// Splits one line of comma-separated fields, where a field in double quotes may hold commas
/// and `""` stands for a quote. `None` for a stray or unterminated quote.
fn csv_fields(line: &str) -> Option<Vec<String>> {
    #[derive(PartialEq)]
    enum State {
        /// Reading a field that did not start with a quote.
        Bare,
        /// Inside quotes.
        Quoted,
        /// After a closing quote: only a comma or the end may follow.
        Closed,
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut state = State::Bare;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (state == State::Quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => state = State::Closed,
            (true, c) => field.push(c),
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                state = State::Bare;
            }
            (false, _) if state == State::Closed => return None,
            (false, '"') if field.is_empty() => state = State::Quoted,
            (false, '"') => return None,
            (false, c) => field.push(c),
        }
    }
    if state == State::Quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

fn device(spec: &str) -> Result<DeviceMapping, DockerError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [host] => (*host, *host, "rwm"),
        [host, container] => (*host, *container, "rwm"),
        [host, container, permissions] => (*host, *container, *permissions),
        _ => ("", "", ""),
    };
    if host.is_empty() || container.is_empty() {
        return Err(DockerError::InvalidOption {
            key: "devices",
            value: spec.to_owned(),
            reason: "expected `/dev/host[:/dev/container[:permissions]]`",
        });
    }
    Ok(DeviceMapping {
        path_on_host: Some(host.to_owned()),
        path_in_container: Some(container.to_owned()),
        cgroup_permissions: Some(permissions.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[runners.docker]` section from TOML lines.
    pub(crate) fn docker_config(section: &str) -> DockerConfig {
        let text = format!(
            "[[runners]]\nname = \"t\"\nurl = \"https://gitlab.example.com\"\ntoken = \"glrt-t\"\nexecutor = \"docker\"\n[runners.docker]\n{section}\n"
        );
        let file = runnel_config::ConfigFile::parse("config.toml", &text, |_| None)
            .expect("valid test config");
        file.config().runners[0]
            .docker
            .clone()
            .expect("docker section")
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("512m"), Some(512 * 1024 * 1024));
        assert_eq!(parse_size("1g"), Some(1024 * 1024 * 1024));
        assert_eq!(parse_size("1.5GB"), Some(1536 * 1024 * 1024));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("10x"), None);
        assert_eq!(parse_size("m"), None);
    }

    #[test]
    fn volumes_parse_into_binds_and_cache_volumes() {
        assert_eq!(
            VolumeSpec::parse("/cache").ok(),
            Some(VolumeSpec::Cache {
                container: "/cache".into()
            })
        );
        assert_eq!(
            VolumeSpec::parse("/var/run/docker.sock:/var/run/docker.sock:ro").ok(),
            Some(VolumeSpec::Bind {
                host: "/var/run/docker.sock".into(),
                container: "/var/run/docker.sock".into(),
                mode: Some("ro".into()),
            })
        );
        assert!(VolumeSpec::parse("relative").is_err());
    }

    #[test]
    fn bad_values_name_the_key() {
        let config = docker_config("memory = \"lots\"");
        let error = DockerOptions::from_config(&config)
            .err()
            .map(|e| e.to_string());
        insta::assert_snapshot!(error.unwrap_or_default(), @"invalid `memory` value `lots` in [runners.docker]: expected a size such as `512m` or `2g`");
    }

    #[test]
    fn gpu_requests_read_as_dockers_gpus_flag() {
        let request = |text: &str| gpu_request("gpus", Some(text));
        let all = request("all").unwrap().unwrap();
        assert_eq!(all.count, Some(-1));
        assert_eq!(all.capabilities, Some(vec![vec!["gpu".to_owned()]]));
        assert_eq!(all.options, Some(HashMap::new()));
        assert_eq!(request("2").unwrap().unwrap().count, Some(2));
        let devices = request(r#""device=0,2",driver=nvidia"#).unwrap().unwrap();
        assert_eq!(
            devices.device_ids,
            Some(vec!["0".to_owned(), "2".to_owned()])
        );
        assert_eq!(devices.count, None, "ids, no count");
        assert_eq!(devices.driver.as_deref(), Some("nvidia"));
        let capabilities = request(r#"count=1,"capabilities=compute,utility""#)
            .unwrap()
            .unwrap();
        assert_eq!(
            capabilities.capabilities,
            Some(vec![vec![
                "compute".to_owned(),
                "utility".to_owned(),
                "gpu".to_owned()
            ]])
        );
        let options = request(r#"all,"options=""a=1"",b""#).unwrap().unwrap();
        assert_eq!(
            options.options,
            Some(HashMap::from([
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), String::new())
            ]))
        );
        assert_eq!(gpu_request("gpus", Some("  ")).unwrap(), None);
        assert_eq!(gpu_request("gpus", None).unwrap(), None);
        for bad in [
            "two",
            "all,count=2",
            "colour=red",
            r#""device=0"#,
            r#"device="0,1""#,
        ] {
            let error = request(bad).expect_err(bad).to_string();
            assert!(error.contains("gpus"), "{bad}: {error}");
        }
    }

    #[test]
    fn gpus_devices_and_memory_nodes_reach_the_containers_they_are_for() {
        let config = docker_config(
            r#"
gpus = "all"
service_gpus = "1"
cpuset_mems = "0"
[runners.docker.services_devices]
"postgres:*" = ["/dev/null:/dev/pg-null"]
"**/redis*" = ["/dev/zero"]
"#,
        );
        let options = DockerOptions::from_config(&config).expect("valid options");
        let job = options.host_config(ContainerRole::Job, "alpine:3", Vec::new(), None);
        assert_eq!(job.device_requests.as_ref().unwrap()[0].count, Some(-1));
        assert_eq!(job.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(job.devices, None);
        let postgres = options.host_config(ContainerRole::Service, "postgres:16", Vec::new(), None);
        assert_eq!(postgres.device_requests.as_ref().unwrap()[0].count, Some(1));
        let devices = postgres.devices.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(
            devices[0].path_in_container.as_deref(),
            Some("/dev/pg-null")
        );
        assert_eq!(
            postgres.cpuset_mems, None,
            "the official runner sets it on job containers"
        );
        let redis =
            options.host_config(ContainerRole::Service, "library/redis:7", Vec::new(), None);
        assert_eq!(
            redis.devices.unwrap()[0].path_on_host.as_deref(),
            Some("/dev/zero")
        );
        let other = options.host_config(ContainerRole::Service, "mysql:8", Vec::new(), None);
        assert_eq!(other.devices, None);
        let mac = docker_config("mac_address = \"92:d0:c6:0a:29:33\"\n");
        let endpoint = DockerOptions::from_config(&mac)
            .unwrap()
            .mac_address_endpoint(Some("runner-net"))
            .unwrap();
        assert_eq!(
            endpoint.endpoints_config.unwrap()["runner-net"]
                .mac_address
                .as_deref(),
            Some("92:d0:c6:0a:29:33")
        );
        assert!(options.mac_address_endpoint(None).is_none());
        let bad = docker_config("mac_address = \"92:d0:c6\"\n");
        assert!(DockerOptions::from_config(&bad).is_err());
        let bad = docker_config("gpus = \"some\"\n");
        assert!(DockerOptions::from_config(&bad).is_err());
        let bad = docker_config("[runners.docker.services_devices]\n\"a[\" = [\"/dev/null\"]\n");
        assert!(DockerOptions::from_config(&bad).is_err());
    }

    #[test]
    fn host_config_carries_the_job_settings() {
        let config = docker_config(
            r#"
privileged = true
memory = "256m"
cpus = "1.5"
cpuset_cpus = "0-1"
cpu_shares = 512
shm_size = 67108864
cap_add = ["NET_ADMIN"]
cap_drop = ["MKNOD"]
security_opt = ["no-new-privileges"]
devices = ["/dev/fuse"]
dns = ["1.1.1.1"]
dns_search = ["example.com"]
extra_hosts = ["db.local:10.0.0.2"]
group_add = ["wheel"]
oom_kill_disable = true
runtime = "runc"
service_memory = "64m"
services_privileged = false
[runners.docker.tmpfs]
"/tmp" = "rw,size=64m"
[runners.docker.sysctls]
"net.ipv4.ip_forward" = "1"
[runners.docker.ulimit]
nofile = "1024:2048"
"#,
        );
        let options = DockerOptions::from_config(&config).expect("valid options");
        let job = options.host_config(
            ContainerRole::Job,
            "alpine:3",
            vec!["vol:/builds".into()],
            Some("net-1"),
        );
        let service = options.host_config(
            ContainerRole::Service,
            "postgres:16",
            Vec::new(),
            Some("net-1"),
        );
        insta::assert_json_snapshot!("job_and_service_host_config", (job, service));
    }

    #[test]
    fn every_container_is_privileged_only_as_the_allow_lists_say() {
        let restrictive = DockerOptions::from_config(&docker_config(
            "privileged = true\nallowed_privileged_images = [\"docker:*-dind\"]\nallowed_privileged_services = [\"docker:*-dind\"]",
        ))
        .expect("valid options");
        // The helper image is checked like any other (it runs the job's hooks).
        for image in ["runnel-helper:0.1.0-abc", "alpine:3"] {
            assert!(
                !restrictive.privileged(ContainerRole::Job, image),
                "{image}"
            );
            let host = restrictive.host_config(ContainerRole::Job, image, Vec::new(), None);
            assert_eq!(host.privileged, Some(false), "{image}");
        }
        assert!(restrictive.privileged(ContainerRole::Job, "docker:27-dind"));
        assert!(restrictive.privileged(ContainerRole::Service, "docker:27-dind"));
        assert!(!restrictive.privileged(ContainerRole::Service, "postgres:16"));
        let open =
            DockerOptions::from_config(&docker_config("privileged = true")).expect("valid options");
        assert!(open.privileged(ContainerRole::Job, "runnel-helper:x"));
        let off = DockerOptions::from_config(&docker_config("")).expect("valid options");
        assert!(!off.privileged(ContainerRole::Job, "docker:27-dind"));
        assert!(!off.privileged(ContainerRole::Service, "docker:27-dind"));
    }
}
