//! Pods as docker containers: init containers run to completion, then the containers start;
//! watch, evict, remove.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    StartContainerOptions,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::state::{SERVER_LABEL, Shared};

/// How often running pods are checked for exited containers.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
/// How often a running init container is checked for its exit.
const INIT_WAIT_INTERVAL: Duration = Duration::from_millis(100);

type Key = (String, String);

/// `64Mi`, `1G`, `512` → bytes; `None` for what this fake does not understand.
pub(crate) fn memory_bytes(quantity: &str) -> Option<i64> {
    let units: [(&str, i64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number.parse::<i64>().ok()?.checked_mul(factor);
        }
    }
    quantity.parse().ok()
}

fn docker_labels(shared: &Shared, pod: &Value, container: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (SERVER_LABEL.to_owned(), shared.server_id.clone()),
        (
            "io.kubernetes.pod.name".to_owned(),
            pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        ),
        (
            "io.kubernetes.pod.namespace".to_owned(),
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ),
        (
            "io.kubernetes.container.name".to_owned(),
            container.to_owned(),
        ),
    ]);
    for (key, value) in crate::server::labels_of(pod) {
        labels.entry(key).or_insert(value);
    }
    labels
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value.as_array().map(|list| {
        list.iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect()
    })
}

/// A container's status entry.
fn container_status(container: &Value, state: Value) -> Value {
    let running = state.get("running").is_some();
    json!({"name": container["name"], "image": container["image"], "imageID": "", "ready": running, "started": running, "restartCount": 0, "state": state})
}

/// Init container statuses: those before `current` completed, the one at `current` in
/// `state`, the rest waiting.
fn init_statuses(init: &[Value], current: usize, state: &Value) -> Vec<Value> {
    init.iter()
        .enumerate()
        .map(|(index, container)| {
            let state = match index.cmp(&current) {
                std::cmp::Ordering::Less => {
                    json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
                }
                std::cmp::Ordering::Equal => state.clone(),
                std::cmp::Ordering::Greater => json!({"waiting": {"reason": "PodInitializing"}}),
            };
            container_status(container, state)
        })
        .collect()
}

/// The status of a pod whose init container `current` is in `state` (`phase` `Pending`, or
/// `Failed` for a failed init container); the other containers wait for initialization.
fn set_initializing(
    status: &mut Value,
    init: &[Value],
    containers: &[Value],
    current: usize,
    state: &Value,
    phase: &str,
) {
    status["phase"] = json!(phase);
    status["initContainerStatuses"] = json!(init_statuses(init, current, state));
    let waiting: Vec<Value> = containers
        .iter()
        .map(|c| container_status(c, json!({"waiting": {"reason": "PodInitializing"}})))
        .collect();
    status["containerStatuses"] = json!(waiting);
    status["conditions"] = json!([
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
    ]);
}

/// The status of a pod whose (initialized) containers are being created; `failed` waits for
/// `reason`.
fn set_waiting(
    status: &mut Value,
    init: &[Value],
    containers: &[Value],
    failed: &str,
    reason: &str,
    message: &str,
) {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|container| {
            let name = container["name"].as_str().unwrap_or("");
            let state = if name == failed {
                json!({"waiting": {"reason": reason, "message": message}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            container_status(container, state)
        })
        .collect();
    status["phase"] = json!("Pending");
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses(init, init.len(), &Value::Null));
    }
    status["containerStatuses"] = json!(statuses);
    status["conditions"] = json!([
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
    ]);
}

/// What keeps a container's image from being used, as `(reason, message)` the kubelet reports.
/// The fake has no registry, so every pull fails: `Always`, and an image missing from the
/// engine (`IfNotPresent`, or no policy); `Never` uses what the engine has.
async fn image_problem(shared: &Shared, container: &Value) -> Option<(&'static str, String)> {
    let image = container["image"].as_str().unwrap_or("");
    let present = shared.docker.inspect_image(image).await.is_ok();
    match container["imagePullPolicy"].as_str() {
        Some("Always") => Some((
            "ErrImagePull",
            format!(
                "Failed to pull image \"{image}\": rpc error: code = Unavailable desc = failed to resolve reference \"{image}\": runnel-fake-kube has no registry to pull from"
            ),
        )),
        _ if present => None,
        Some("Never") => Some((
            "ErrImageNeverPull",
            format!("Container image \"{image}\" is not present with pull policy of Never"),
        )),
        _ => Some((
            "ErrImagePull",
            format!(
                "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"
            ),
        )),
    }
}

/// Records why the pod's containers could not start.
fn start_failed(
    shared: &Shared,
    key: &Key,
    init: &[Value],
    containers: &[Value],
    error: StartError,
) {
    match error {
        StartError::Mount(message) => {
            // The kubelet retries the mount, and reports it in events only: the pod stays
            // pending with its containers being created.
            tracing::info!(pod = %key.1, %message, "a volume cannot be mounted");
            shared.update_status(&key.0, &key.1, |status| {
                if init.is_empty() {
                    set_waiting(status, init, containers, "", "ContainerCreating", "");
                } else {
                    let state = json!({"waiting": {"reason": "PodInitializing"}});
                    set_initializing(status, init, containers, 0, &state, "Pending");
                }
            });
        }
        StartError::Failed(message) => {
            shared.update_status(&key.0, &key.1, |status| {
                status["phase"] = json!("Failed");
                status["reason"] = json!("ContainerCannotRun");
                status["message"] = json!(message);
            });
        }
    }
}

/// Brings a created pod up (volumes, then each init container run to completion in order,
/// then the containers), then watches it until it ends or is deleted.
pub(crate) async fn run_pod(shared: Arc<Shared>, key: Key) {
    let Some(pod) = shared.pod_json(&key.0, &key.1) else {
        return;
    };
    let faults = shared.faults();
    if faults.pending_forever {
        shared.update_status(&key.0, &key.1, |status| {
            status["phase"] = json!("Pending");
            status["conditions"] = json!([{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            }]);
        });
        return;
    }
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let setup = match PodSetup::prepare(&shared, &key, &pod).await {
        Ok(setup) => setup,
        Err(error) => {
            start_failed(&shared, &key, &init, &containers, error);
            return;
        }
    };
    for (index, container) in init.iter().enumerate() {
        let name = container["name"].as_str().unwrap_or("").to_owned();
        if let Some((reason, message)) = image_problem(&shared, container).await {
            let state = json!({"waiting": {"reason": reason, "message": message}});
            shared.update_status(&key.0, &key.1, |status| {
                set_initializing(status, &init, &containers, index, &state, "Pending");
            });
            return;
        }
        let id = match setup.create(&shared, &key, container, true).await {
            Ok(id) => id,
            Err(error) => {
                start_failed(&shared, &key, &init, &containers, error);
                return;
            }
        };
        let state = json!({"running": {"startedAt": crate::server::now()}});
        shared.update_status(&key.0, &key.1, |status| {
            set_initializing(status, &init, &containers, index, &state, "Pending");
        });
        let Some(code) = wait_for_exit(&shared, &key, &id).await else {
            return;
        };
        if code != 0 {
            tracing::info!(pod = %key.1, container = %name, code, "an init container failed");
            let state = json!({"terminated": {"exitCode": code, "reason": "Error"}});
            shared.update_status(&key.0, &key.1, |status| {
                set_initializing(status, &init, &containers, index, &state, "Failed");
            });
            return;
        }
    }
    for container in &containers {
        if let Some((reason, message)) = image_problem(&shared, container).await {
            let name = container["name"].as_str().unwrap_or("").to_owned();
            shared.update_status(&key.0, &key.1, |status| {
                set_waiting(status, &init, &containers, &name, reason, &message);
            });
            return;
        }
    }
    for container in &containers {
        if let Err(error) = setup.create(&shared, &key, container, false).await {
            start_failed(&shared, &key, &init, &containers, error);
            return;
        }
    }
    let pod_ip = if shared.host_network {
        "127.0.0.1".to_owned()
    } else {
        first_ip(&shared, &key).await.unwrap_or_default()
    };
    let started = crate::server::now();
    shared.update_status(&key.0, &key.1, |status| {
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| container_status(c, json!({"running": {"startedAt": started}})))
            .collect();
        status["phase"] = json!("Running");
        status["podIP"] = json!(pod_ip);
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses(&init, init.len(), &Value::Null));
        }
        status["containerStatuses"] = json!(statuses);
        status["conditions"] = json!([
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ]);
    });
    monitor(&shared, &key, faults.evict_after).await;
}

/// Waits until container `id` of the pod exited; its exit code, or `None` when the pod was
/// deleted meanwhile.
async fn wait_for_exit(shared: &Shared, key: &Key, id: &str) -> Option<i64> {
    loop {
        if !shared.lock().pods.contains_key(key) {
            return None;
        }
        let inspect = shared
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let state = inspect.state?;
        if state.running != Some(true) && state.status != Some(ContainerStateStatusEnum::CREATED) {
            return Some(state.exit_code.unwrap_or(0));
        }
        tokio::time::sleep(INIT_WAIT_INTERVAL).await;
    }
}

async fn first_ip(shared: &Shared, key: &Key) -> Option<String> {
    let id = {
        let inner = shared.lock();
        inner.pods.get(key)?.backing.containers.first()?.1.clone()
    };
    let inspect = shared
        .docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .ok()?;
    inspect
        .network_settings?
        .networks?
        .into_values()
        .find_map(|network| network.ip_address.filter(|ip| !ip.is_empty()))
}

/// What every container of a pod is made with: the volumes (docker volumes, host paths,
/// secret and config map files) and the host aliases.
struct PodSetup<'a> {
    pod: &'a Value,
    volume_names: HashMap<String, String>,
    extra_hosts: Vec<String>,
}

impl<'a> PodSetup<'a> {
    async fn prepare(shared: &Arc<Shared>, key: &Key, pod: &'a Value) -> Result<Self, StartError> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("pod");
        let short_uid: String = uid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect();
        let mut volume_names = HashMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or("");
            if volume.get("emptyDir").is_some() {
                let docker_name = format!("rfk-{}-{short_uid}-{name}", shared.server_id);
                shared
                    .docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(docker_name.clone()),
                        labels: Some(HashMap::from([(
                            SERVER_LABEL.to_owned(),
                            shared.server_id.clone(),
                        )])),
                        ..VolumeCreateRequest::default()
                    })
                    .await
                    .map_err(|error| format!("creating volume {name}: {error}"))?;
                if !register(shared, key, |backing| {
                    backing.volumes.push(docker_name.clone())
                }) {
                    remove_volume(shared, &docker_name).await;
                    return Err("pod deleted".into());
                }
                volume_names.insert(name.to_owned(), docker_name);
            } else if let Some(path) = volume["hostPath"]["path"].as_str() {
                volume_names.insert(name.to_owned(), path.to_owned());
            } else if let Some(files) = crate::objects::volume_files(shared, &key.0, volume) {
                // As the kubelet: the pod does not start while a volume's object is missing.
                let files = files.map_err(|message| {
                    StartError::Mount(format!(
                        "MountVolume.SetUp failed for volume \"{name}\" : {message}"
                    ))
                })?;
                let dir = std::env::temp_dir()
                    .join(format!("rfk-{}-{short_uid}-{name}", shared.server_id));
                if !register(shared, key, |backing| backing.host_dirs.push(dir.clone())) {
                    return Err("pod deleted".into());
                }
                write_volume_files(&dir, &files, volume)
                    .map_err(|error| format!("writing the files of volume {name}: {error}"))?;
                volume_names.insert(name.to_owned(), format!("{}:ro", dir.display()));
            }
        }
        let extra_hosts: Vec<String> = pod["spec"]["hostAliases"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|alias| {
                let ip = alias["ip"].as_str().unwrap_or("127.0.0.1").to_owned();
                strings(&alias["hostnames"])
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |host| format!("{host}:{ip}"))
            })
            .collect();
        Ok(PodSetup {
            pod,
            volume_names,
            extra_hosts,
        })
    }

    /// Creates and starts one container of the pod; returns its docker id. The first of the
    /// pod's (non-init) containers owns the network namespace the others join; an init
    /// container runs before it exists, in a namespace of its own with the pod's hostname and
    /// host aliases.
    async fn create(
        &self,
        shared: &Arc<Shared>,
        key: &Key,
        container: &Value,
        init: bool,
    ) -> Result<String, StartError> {
        let pod = self.pod;
        let pod_name = key.1.clone();
        let name = container["name"].as_str().unwrap_or("").to_owned();
        let binds: Vec<String> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|mount| {
                let source = self.volume_names.get(mount["name"].as_str()?)?;
                let target = mount["mountPath"].as_str()?;
                // Secret and config map volumes are always read-only, as in Kubernetes.
                let (source, forced_ro) = match source.strip_suffix(":ro") {
                    Some(path) => (path.to_owned(), true),
                    None => (source.clone(), false),
                };
                let source = match mount["subPath"].as_str().filter(|p| !p.is_empty()) {
                    Some(sub) if source.starts_with('/') => format!("{source}/{sub}"),
                    // A named docker volume has no sub paths through binds.
                    Some(_) => return Some(Err(format!("volumeMounts[{}].subPath: runnel-fake-kube serves subPath only on hostPath, secret and configMap volumes", mount["name"]))),
                    None => source,
                };
                let mode = if forced_ro || mount["readOnly"].as_bool() == Some(true) {
                    ":ro"
                } else {
                    ""
                };
                Some(Ok(format!("{source}:{target}{mode}")))
            })
            .collect::<Result<_, String>>()?;
        let env: Vec<String> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some(format!(
                    "{}={}",
                    e["name"].as_str()?,
                    e["value"].as_str().unwrap_or("")
                ))
            })
            .collect();
        let first = if init {
            None
        } else {
            shared
                .lock()
                .pods
                .get(key)
                .and_then(|entry| entry.backing.containers.first().map(|(_, id)| id.clone()))
        };
        let network_mode = match (&first, shared.host_network) {
            (_, true) => "host".to_owned(),
            (None, false) => "bridge".to_owned(),
            (Some(id), false) => format!("container:{id}"),
        };
        let joins = first.is_some() && !shared.host_network;
        let memory = container["resources"]["limits"]["memory"]
            .as_str()
            .and_then(memory_bytes);
        let body = ContainerCreateBody {
            image: container["image"].as_str().map(str::to_owned),
            entrypoint: strings(&container["command"]),
            cmd: strings(&container["args"]),
            env: Some(env),
            working_dir: container["workingDir"].as_str().map(str::to_owned),
            open_stdin: Some(container["stdin"].as_bool() == Some(true)),
            stdin_once: Some(container["stdinOnce"].as_bool() == Some(true)),
            tty: Some(container["tty"].as_bool() == Some(true)),
            labels: Some(docker_labels(shared, pod, &name)),
            hostname: (!joins && !shared.host_network).then(|| pod_name.chars().take(63).collect()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(network_mode),
                privileged: container["securityContext"]["privileged"].as_bool(),
                extra_hosts: (!joins && !self.extra_hosts.is_empty())
                    .then(|| self.extra_hosts.clone()),
                memory,
                memory_swap: memory,
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let docker_name = format!("rfk-{}-{}-{name}", shared.server_id, pod_name);
        let created = shared
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(docker_name),
                    ..CreateContainerOptions::default()
                }),
                body,
            )
            .await
            .map_err(|error| format!("creating container {name}: {error}"))?;
        if !register(shared, key, |backing| {
            let list = if init {
                &mut backing.init_containers
            } else {
                &mut backing.containers
            };
            list.push((name.clone(), created.id.clone()));
        }) {
            remove_container(shared, &created.id).await;
            return Err("pod deleted".into());
        }
        shared
            .docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|error| format!("starting container {name}: {error}"))?;
        Ok(created.id)
    }
}

/// Why a pod's containers did not start.
#[derive(Debug)]
enum StartError {
    /// A secret or config map volume cannot be set up (its object is missing).
    Mount(String),
    /// Anything else: the pod fails.
    Failed(String),
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError::Failed(message)
    }
}

impl From<&str> for StartError {
    fn from(message: &str) -> Self {
        StartError::Failed(message.to_owned())
    }
}

/// Writes a secret or config map volume's files (mode 0644, or the volume's `defaultMode`)
/// into `dir` (0755).
fn write_volume_files(
    dir: &std::path::Path,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    volume: &Value,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let source = volume.get("secret").or_else(|| volume.get("configMap"));
    let mode = source
        .and_then(|s| s["defaultMode"].as_u64())
        .and_then(|m| u32::try_from(m & 0o777).ok())
        .unwrap_or(0o644);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, content) in files {
        // Keys and item paths are checked at pod creation: relative, without `..`.
        if path.starts_with('/') || path.split('/').any(|p| p == ".." || p.is_empty()) {
            continue;
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Records a docker object on the pod; false (and nothing recorded) when it was deleted.
fn register(shared: &Shared, key: &Key, add: impl FnOnce(&mut crate::state::Backing)) -> bool {
    let mut inner = shared.lock();
    match inner.pods.get_mut(key) {
        Some(entry) => {
            add(&mut entry.backing);
            true
        }
        None => false,
    }
}

/// Follows the pod's containers until all exited, the pod is evicted or deleted.
async fn monitor(shared: &Shared, key: &Key, evict_after: Option<Duration>) {
    let evict_at = evict_after.map(|after| Instant::now() + after);
    loop {
        tokio::time::sleep(MONITOR_INTERVAL).await;
        let Some(containers) = shared
            .lock()
            .pods
            .get(key)
            .map(|entry| entry.backing.containers.clone())
        else {
            return;
        };
        if evict_at.is_some_and(|at| Instant::now() >= at) {
            // As the kubelet does: the pod is marked first, then its containers are killed.
            shared.update_status(&key.0, &key.1, |status| {
                status["phase"] = json!("Failed");
                status["reason"] = json!("Evicted");
                let message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. ";
                status["message"] = json!(message);
                if let Some(conditions) = status["conditions"].as_array_mut() {
                    for condition in conditions.iter_mut() {
                        if condition["type"] == json!("Ready") {
                            condition["status"] = json!("False");
                        }
                    }
                    conditions.push(json!({
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "TerminationByKubelet",
                        "message": message,
                    }));
                }
                if let Some(list) = status["containerStatuses"].as_array_mut() {
                    for item in list {
                        item["ready"] = json!(false);
                        item["state"] = json!({"terminated": {"exitCode": 137, "reason": "Error"}});
                    }
                }
            });
            for (_, id) in &containers {
                if let Err(error) = shared
                    .docker
                    .kill_container(id, None::<KillContainerOptions>)
                    .await
                {
                    tracing::debug!(%error, "cannot kill an evicted pod's container");
                }
            }
            return;
        }
        let mut terminated = Vec::new();
        for (name, id) in &containers {
            let Ok(inspect) = shared
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            else {
                continue;
            };
            let Some(state) = inspect.state else { continue };
            if state.running == Some(true) {
                continue;
            }
            let code = state.exit_code.unwrap_or(0);
            let reason = if state.oom_killed == Some(true) {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            terminated.push((name.clone(), code, reason));
        }
        if terminated.is_empty() {
            continue;
        }
        let all = terminated.len() == containers.len();
        shared.update_status(&key.0, &key.1, |status| {
            if let Some(list) = status["containerStatuses"].as_array_mut() {
                for item in list {
                    if let Some((_, code, reason)) = terminated
                        .iter()
                        .find(|(name, _, _)| item["name"] == json!(name))
                    {
                        // An OOM kill seen in the engine's events stays the reason.
                        let reason = if item["state"]["terminated"]["reason"] == json!("OOMKilled")
                        {
                            "OOMKilled"
                        } else {
                            reason
                        };
                        item["ready"] = json!(false);
                        item["state"] = json!({"terminated": {"exitCode": code, "reason": reason}});
                    }
                }
            }
            if all {
                let failed = terminated.iter().any(|(_, code, _)| *code != 0);
                status["phase"] = json!(if failed { "Failed" } else { "Succeeded" });
            }
        });
        if all {
            return;
        }
    }
}

/// As the kubelet does on cgroup v2 hosts (`memory.oom.group`): when the kernel OOM-kills a
/// process of a pod's container, the whole container is killed, and its status says
/// `terminated`, reason `OOMKilled`, exit code 137 (set before the kill, so that a client
/// reading the pod after the killed process's parent noticed sees why). Follows the engine's
/// `oom` events of this server's containers until `stop`.
pub(crate) async fn follow_oom_kills(shared: Arc<Shared>) {
    use futures::StreamExt;
    let stop = shared.stop.clone();
    loop {
        let mut events = shared.docker.events(Some(EventsOptions {
            since: None,
            until: None,
            filters: Some(HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                ("event".to_owned(), vec!["oom".to_owned()]),
                (
                    "label".to_owned(),
                    vec![format!("{SERVER_LABEL}={}", shared.server_id)],
                ),
            ])),
        }));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        if let Some(id) = event.actor.and_then(|actor| actor.id) {
                            oom_killed(&shared, &id).await;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "docker oom events broke off");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Marks the pod container with docker id `id` OOM-killed, then kills it.
async fn oom_killed(shared: &Shared, id: &str) {
    let found = shared.lock().pods.iter().find_map(|(key, entry)| {
        entry
            .backing
            .containers
            .iter()
            .find(|(_, container)| container == id)
            .map(|(name, _)| (key.clone(), name.clone()))
    });
    let Some(((namespace, pod), name)) = found else {
        return;
    };
    tracing::debug!(%namespace, %pod, container = %name, "a container was OOM-killed");
    shared.update_status(&namespace, &pod, |status| {
        if let Some(list) = status["containerStatuses"].as_array_mut() {
            for item in list {
                if item["name"] == json!(name) {
                    item["ready"] = json!(false);
                    item["state"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
                }
            }
        }
    });
    if let Err(error) = shared
        .docker
        .kill_container(id, None::<KillContainerOptions>)
        .await
    {
        tracing::debug!(%error, "cannot kill an OOM-killed container");
    }
}

async fn remove_container(shared: &Shared, id: &str) {
    let removed = shared
        .docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..RemoveContainerOptions::default()
            }),
        )
        .await;
    if let Err(error) = removed {
        tracing::debug!(%error, container = id, "cannot remove container");
    }
}

async fn remove_volume(shared: &Shared, name: &str) {
    let removed = shared
        .docker
        .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
        .await;
    if let Err(error) = removed {
        tracing::debug!(%error, volume = name, "cannot remove volume");
    }
}

/// Removes the containers (reverse order: the network owner last) and volumes of a pod.
pub(crate) async fn remove_backing(shared: &Shared, backing: &crate::state::Backing) {
    for (_, id) in backing
        .containers
        .iter()
        .rev()
        .chain(&backing.init_containers)
    {
        remove_container(shared, id).await;
    }
    for volume in &backing.volumes {
        remove_volume(shared, volume).await;
    }
    for dir in &backing.host_dirs {
        if let Err(error) = std::fs::remove_dir_all(dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(%error, dir = %dir.display(), "cannot remove a volume directory");
        }
    }
}

fn server_filter(shared: &Shared) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![format!("{SERVER_LABEL}={}", shared.server_id)],
    )])
}

/// Ids of the containers this server made that still exist.
pub(crate) async fn containers_of(shared: &Shared) -> Vec<String> {
    shared
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(server_filter(shared)),
            ..ListContainersOptions::default()
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Removes every container and volume this server made, pods or not.
pub(crate) async fn remove_everything(shared: &Shared) {
    let pods: Vec<_> = std::mem::take(&mut shared.lock().pods)
        .into_values()
        .collect();
    for entry in pods {
        remove_backing(shared, &entry.backing).await;
    }
    for id in containers_of(shared).await {
        remove_container(shared, &id).await;
    }
    if let Ok(volumes) = shared
        .docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(server_filter(shared)),
        }))
        .await
    {
        for volume in volumes.volumes.into_iter().flatten() {
            remove_volume(shared, &volume.name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_bytes("64Mi"), Some(64 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("512"), Some(512));
        assert_eq!(memory_bytes("lots"), None);
    }
}
