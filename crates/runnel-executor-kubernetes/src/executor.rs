//! [`KubernetesProvider`] per `[[runners]]` entry, [`KubernetesExecutor`] per job.
//!
//! `prepare` connects (the `host` keys, else `KUBECONFIG`/`~/.kube/config`, else the in-cluster
//! service account), creates the job's pod and follows it by a watch (resumed from its last
//! resource version; an API server that does not serve watches is read every `poll_interval`)
//! until all its containers run, for at most `poll_timeout`; a container that cannot pull its
//! image makes the pod again with that container's next pull policy (several `pull_policy`
//! values, as official), and fails the job with what Kubernetes said when none is left; a
//! container that cannot start fails the job at once. `run` executes each stage in the
//! helper (predefined stages) or build container over the exec WebSocket: the command reads a
//! counted script from stdin and hands it to the shell, so the script (and the job's variables
//! it exports) never appears in an argument or in the pod spec. While a stage runs the pod's
//! watch goes on, so an eviction or an OOM kill ends the stage with the reason as soon as the
//! API server reports it.
//! Cancellation and timeouts send `SIGTERM`, then `SIGKILL`, to the container's processes.
//! `cleanup` deletes the pod, always.
//!
//! Stages run by attach (the official default, [`crate::attach`]) unless the job's
//! `FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY` is on, as in the official runner; the exec
//! mode is described above.
//!
//! Before the pod, the job's variables are checked against what the configuration lets them
//! overwrite ([`crate::overwrites`]; each overwrite is announced in the job log), and with
//! `namespace_per_job` the namespace `ci-job-<id>` is created (labelled with the runner, so
//! the next start deletes it if this run is killed; deleted again at cleanup).
//!
//! Not done yet (refused at start or job start, never ignored): the configuration keys not
//! in [`crate::options::SUPPORTED_KEYS`], `image:entrypoint` (but `[""]`).
//!
//! The job's registry logins reach the kubelet as a pull secret ([`crate::credentials`]),
//! created before the pod and deleted after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{ContainerStateWaiting, ContainerStatus, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as ExecStatus;
use kube::Client;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use runnel_config::RunnerConfig;
use runnel_executor::{
    BoxFuture, ConfigureContext, Executor, ExecutorError, ExecutorFeatures, ExecutorInfo,
    OutputSink, OutputStream, PlanOverrides, PrepareContext, Provider, Shell, StageCommand,
    StageExit, StageKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::KubernetesError;
use crate::attach::{AttachPaths, LogEvent, LogStream};
use crate::options::KubernetesOptions;
use crate::pod::{BUILD_CONTAINER, HELPER_CONTAINER, MANAGER_ID_LABEL, PodInputs};

/// What the Kubernetes executor is and reports.
pub const KUBERNETES_EXECUTOR_INFO: ExecutorInfo = ExecutorInfo {
    name: "kubernetes",
    features: ExecutorFeatures {
        variables: true,
        image: true,
        services: true,
        shared: false,
        session: false,
        terminal: false,
        proxy: false,
        service_variables: true,
        service_multiple_aliases: true,
        // `image:kubernetes:user`, as official.
        image_executor_opts: true,
        service_executor_opts: false,
        native_steps_integration: false,
    },
    default_shell: Shell::Bash,
    default_builds_dir: "/builds",
    default_cache_dir: "/cache",
    shared_builds_dir: false,
};

/// The helper image used when `helper_image` is not set (build it with
/// `runnel docker build-helper-image` and make it pullable by the cluster).
pub const DEFAULT_HELPER_IMAGE: &str = "runnel-helper:latest";

/// How long stopped processes get between `SIGTERM` and `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The names of `namespace_per_job` namespaces: `ci-job-<job id>`.
const JOB_NAMESPACE_PREFIX: &str = "ci-job-";

/// The feature flag choosing exec over attach.
pub const LEGACY_EXECUTION_FLAG: &str = "FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY";

/// The runner-level settings the executor needs besides `[runners.kubernetes]`.
#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    /// The runner's `name`.
    pub runner_name: String,
    /// The short runner token.
    pub short_token: String,
    /// The shell scripts are written for.
    pub shell: Shell,
}

/// Names of pods of jobs that run or are starting.
type ActivePods = Arc<Mutex<BTreeSet<String>>>;

#[derive(Debug)]
struct Shared {
    options: KubernetesOptions,
    settings: KubernetesSettings,
    slots: Mutex<BTreeSet<u32>>,
    /// Pods of this provider's jobs (created or being created), which leftover removal spares;
    /// shared with the provider that replaces this one after a configuration reload.
    active_pods: ActivePods,
    /// The same for the `ci-job-<id>` namespaces of `namespace_per_job`.
    active_namespaces: ActivePods,
    /// The same for the jobs' registry credentials secrets.
    active_secrets: ActivePods,
}

/// Creates Kubernetes executors for one `[[runners]]` entry.
#[derive(Debug)]
pub struct KubernetesProvider {
    shared: Arc<Shared>,
}

impl KubernetesProvider {
    /// A provider for `settings` and `[runners.kubernetes]` `options`.
    pub fn new(settings: KubernetesSettings, options: KubernetesOptions) -> Self {
        KubernetesProvider {
            shared: Arc::new(Shared {
                options,
                settings,
                slots: Mutex::new(BTreeSet::new()),
                active_pods: ActivePods::default(),
                active_namespaces: ActivePods::default(),
                active_secrets: ActivePods::default(),
            }),
        }
    }

    /// This (new) provider replaces `previous` for the same runner, after a reload changed
    /// its configuration: the pods of the jobs `previous` still runs stay spared by leftover
    /// removal.
    #[must_use]
    pub fn succeeding(mut self, previous: &KubernetesProvider) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.active_pods = Arc::clone(&previous.shared.active_pods);
            shared.active_namespaces = Arc::clone(&previous.shared.active_namespaces);
            shared.active_secrets = Arc::clone(&previous.shared.active_secrets);
        }
        self
    }

    /// A provider for a `[[runners]]` entry; its `[runners.kubernetes]` section is checked now
    /// (unsupported keys are refused). The cluster is contacted by each job.
    pub fn from_runner(runner: &RunnerConfig) -> Result<Self, KubernetesError> {
        let raw = runner
            .kubernetes
            .as_ref()
            .ok_or(KubernetesError::MissingSection)?;
        let mut options = KubernetesOptions::from_raw(raw)?;
        options.advanced_pod_spec_flag = runner
            .feature_flags
            .get(crate::options::ADVANCED_POD_SPEC_FLAG)
            .copied();
        let shell = match runner.shell.map(|shell| shell.as_str()) {
            Some("sh") => Shell::Sh,
            _ => Shell::Bash,
        };
        Ok(Self::new(
            KubernetesSettings {
                runner_name: runner.name.clone(),
                short_token: runner.token.short(),
                shell,
            },
            options,
        ))
    }

    /// Deletes the pods of this runner (by the `manager.runner.gitlab.com/id-short` label) that
    /// an earlier, killed run left, sparing the pods of the jobs this provider (and the ones it
    /// succeeded) runs or is starting: a job records its pod's name before creating it, so it
    /// may run at the same time as jobs start. The registry credentials secrets of its jobs
    /// (same label) are deleted the same way, and with `namespace_per_job`, the `ci-job-<id>`
    /// namespaces this runner made and left, with what is in them, sparing those of its jobs.
    /// Returns the names of the pods deleted, then `secret <name>` and `namespace <name>` for
    /// each secret and namespace.
    pub async fn remove_leftovers(&self) -> Result<Vec<String>, KubernetesError> {
        let (client, namespace, _) = connect(&self.shared.options, None).await?;
        let selector = self.manager_selector();
        let mut removed = self
            .remove_leftover_pods(client.clone(), &namespace, &selector)
            .await?;
        removed.extend(
            self.remove_leftover_secrets(client.clone(), &namespace, &selector)
                .await?,
        );
        if self.shared.options.namespace_per_job {
            removed.extend(self.remove_leftover_namespaces(client, &selector).await?);
        }
        Ok(removed)
    }

    /// `manager.runner.gitlab.com/id-short=<short token>`.
    fn manager_selector(&self) -> String {
        format!(
            "{MANAGER_ID_LABEL}={}",
            crate::pod::sanitize_label(&self.shared.settings.short_token)
        )
    }

    async fn remove_leftover_secrets(
        &self,
        client: Client,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<String>, KubernetesError> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let list = secrets
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|source| KubernetesError::api("list secrets in", namespace, source))?;
        let mut removed = Vec::new();
        for secret in list.items {
            let Some(name) = secret.metadata.name else {
                continue;
            };
            if lock(&self.shared.active_secrets).contains(&name) {
                continue;
            }
            match secrets.delete(&name, &DeleteParams::default()).await {
                Ok(_) => removed.push(format!("secret {name}")),
                Err(error) if not_found(&error) => {}
                Err(source) => {
                    return Err(KubernetesError::api("delete leftover secret", name, source));
                }
            }
        }
        Ok(removed)
    }

    async fn remove_leftover_namespaces(
        &self,
        client: Client,
        selector: &str,
    ) -> Result<Vec<String>, KubernetesError> {
        let namespaces: Api<Namespace> = Api::all(client);
        let list = namespaces
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|source| KubernetesError::api("list namespaces of", selector, source))?;
        let mut removed = Vec::new();
        for namespace in list.items {
            let Some(name) = namespace.metadata.name else {
                continue;
            };
            if !name.starts_with(JOB_NAMESPACE_PREFIX)
                || lock(&self.shared.active_namespaces).contains(&name)
            {
                continue;
            }
            match namespaces.delete(&name, &DeleteParams::default()).await {
                Ok(_) => removed.push(format!("namespace {name}")),
                Err(error) if not_found(&error) => {}
                Err(source) => {
                    return Err(KubernetesError::api(
                        "delete leftover namespace",
                        name,
                        source,
                    ));
                }
            }
        }
        Ok(removed)
    }

    async fn remove_leftover_pods(
        &self,
        client: Client,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<String>, KubernetesError> {
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|source| KubernetesError::api("list pods in", namespace, source))?;
        let mut removed = Vec::new();
        for pod in list.items {
            let Some(name) = pod.metadata.name else {
                continue;
            };
            if lock(&self.shared.active_pods).contains(&name) {
                continue;
            }
            match pods.delete(&name, &DeleteParams::default()).await {
                Ok(_) => removed.push(name),
                Err(error) if not_found(&error) => removed.push(name),
                Err(source) => {
                    return Err(KubernetesError::api("delete leftover pod", name, source));
                }
            }
        }
        Ok(removed)
    }
}

impl Provider for KubernetesProvider {
    fn info(&self) -> &ExecutorInfo {
        &KUBERNETES_EXECUTOR_INFO
    }

    fn create(&self) -> Result<Box<dyn Executor>, ExecutorError> {
        let slot = {
            let mut slots = lock(&self.shared.slots);
            let number = (0..).find(|n| !slots.contains(n)).unwrap_or(0);
            slots.insert(number);
            number
        };
        Ok(Box::new(KubernetesExecutor {
            shared: Arc::clone(&self.shared),
            slot,
            client: None,
            server: String::new(),
            namespace: String::new(),
            pod: None,
            image: String::new(),
            pending_log: Vec::new(),
            own_namespace: false,
            attach: true,
            attach_paths: None,
            logs: None,
            watch: None,
            credentials: None,
        }))
    }
}

/// Whether the API server answered 404.
fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// PEM certificates → DER.
fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut certificates = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            current = Some(String::new());
        } else if line.starts_with("-----END CERTIFICATE-----") {
            if let Some(body) = current.take()
                && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body)
            {
                certificates.push(der);
            }
        } else if let Some(body) = current.as_mut() {
            body.push_str(line);
        }
    }
    certificates
}

/// A client and the default namespace: the `host` keys, else kubeconfig or in-cluster.
/// `token` replaces `bearer_token` (`KUBERNETES_BEARER_TOKEN`, when allowed).
async fn connect(
    options: &KubernetesOptions,
    token: Option<&str>,
) -> Result<(Client, String, String), KubernetesError> {
    let (config, what) = match &options.host {
        Some(host) if !host.is_empty() => {
            let url = host
                .parse::<http::Uri>()
                .map_err(|source| KubernetesError::Config {
                    what: format!("host `{host}`"),
                    source: Box::new(source),
                })?;
            let mut config = kube::Config::new(url);
            if let Some(token) = token
                .or(options.bearer_token.as_deref())
                .filter(|t| !t.is_empty())
            {
                config.auth_info.token = Some(token.to_owned().into());
            }
            if let Some(ca_file) = &options.ca_file {
                let text =
                    std::fs::read_to_string(ca_file).map_err(|source| KubernetesError::Config {
                        what: format!("ca_file {ca_file}"),
                        source: Box::new(source),
                    })?;
                let certificates = pem_certificates(&text);
                if certificates.is_empty() {
                    return Err(KubernetesError::InvalidOption {
                        key: "ca_file",
                        reason: format!("{ca_file} holds no PEM certificate"),
                    });
                }
                config.root_cert = Some(certificates);
            }
            config.auth_info.client_certificate = options.cert_file.clone();
            config.auth_info.client_key = options.key_file.clone();
            (config, format!("host {host}"))
        }
        _ => {
            let mut config =
                kube::Config::infer()
                    .await
                    .map_err(|source| KubernetesError::Config {
                        what: "KUBECONFIG, ~/.kube/config or the in-cluster service account"
                            .to_owned(),
                        source: Box::new(source),
                    })?;
            if let Some(token) = token.filter(|t| !t.is_empty()) {
                config.auth_info.token = Some(token.to_owned().into());
            }
            (config, "kubeconfig".to_owned())
        }
    };
    let namespace = options
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| KubernetesError::Config {
        what,
        source: Box::new(source),
    })?;
    Ok((client, namespace, server))
}

/// Runs one job in one pod.
pub struct KubernetesExecutor {
    shared: Arc<Shared>,
    slot: u32,
    client: Option<Client>,
    /// The API server's URL, once connected.
    server: String,
    namespace: String,
    /// The pod's name, once created.
    pod: Option<String>,
    image: String,
    /// Lines `prepare` would print, written after the banner.
    pending_log: Vec<String>,
    /// The job's namespace was created for it (`namespace_per_job`).
    own_namespace: bool,
    /// Stages run by attach (the default), not by exec.
    attach: bool,
    /// Attach mode: where the scripts and the log are.
    attach_paths: Option<AttachPaths>,
    /// Attach mode: the log file's stream, once the pod runs.
    logs: Option<LogStream>,
    /// The pod's watch, once it runs (stages end as soon as it fails).
    watch: Option<PodWatch>,
    /// The job's registry credentials secret, once created (deleted at cleanup).
    credentials: Option<String>,
}

impl std::fmt::Debug for KubernetesExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesExecutor")
            .field("slot", &self.slot)
            .field("namespace", &self.namespace)
            .field("pod", &self.pod)
            .field("image", &self.image)
            .field("attach", &self.attach)
            .finish_non_exhaustive()
    }
}

impl Drop for KubernetesExecutor {
    fn drop(&mut self) {
        lock(&self.shared.slots).remove(&self.slot);
    }
}

/// What a pod status says about the job.
enum PodState {
    Ready,
    Waiting(String),
}

/// The error a pod in this state is in, if it is one the job cannot recover from.
fn terminal_error(pod: &Pod, full_name: &str) -> Option<KubernetesError> {
    let status = pod.status.as_ref()?;
    if let Some(condition) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    {
        return Some(KubernetesError::PodFailed {
            pod: full_name.to_owned(),
            message: format!(
                "pod is disrupted: reason {:?}, message {:?}",
                condition.reason.clone().unwrap_or_default(),
                condition.message.clone().unwrap_or_default()
            ),
        });
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(KubernetesError::PodFailed {
            pod: full_name.to_owned(),
            message: "the pod is being deleted".to_owned(),
        });
    }
    for container in status.init_container_statuses.iter().flatten() {
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref())
            && let Some(error) = waiting_error(container, waiting, full_name)
        {
            return Some(error);
        }
        if let Some(terminated) = state.and_then(|s| s.terminated.as_ref())
            && terminated.exit_code != 0
        {
            return Some(KubernetesError::PodFailed {
                pod: full_name.to_owned(),
                message: format!(
                    "init container {} failed: reason {}, exit code {}{}",
                    container.name,
                    terminated.reason.clone().unwrap_or_default(),
                    terminated.exit_code,
                    terminated
                        .message
                        .as_deref()
                        .filter(|m| !m.is_empty())
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            });
        }
    }
    for container in status.container_statuses.iter().flatten() {
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref())
            && !container.ready
            && let Some(error) = waiting_error(container, waiting, full_name)
        {
            return Some(error);
        }
        if let Some(terminated) = state.and_then(|s| s.terminated.as_ref())
            && [BUILD_CONTAINER, HELPER_CONTAINER].contains(&container.name.as_str())
        {
            let reason = terminated.reason.clone().unwrap_or_default();
            let mut message = format!(
                "container {} terminated: reason {reason}, exit code {}",
                container.name, terminated.exit_code
            );
            if reason == "OOMKilled" {
                message = format!(
                    "container {} was OOM-killed: it used more memory than its limit{} (reason OOMKilled, exit code {})",
                    container.name,
                    memory_limit(pod, &container.name)
                        .map(|limit| format!(" of {limit}"))
                        .unwrap_or_default(),
                    terminated.exit_code
                );
            }
            return Some(KubernetesError::PodFailed {
                pod: full_name.to_owned(),
                message,
            });
        }
    }
    match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => Some(KubernetesError::PodFailed {
            pod: full_name.to_owned(),
            message: format!(
                "phase {}: reason {:?}, message {:?}",
                status.phase.clone().unwrap_or_default(),
                status.reason.clone().unwrap_or_default(),
                status.message.clone().unwrap_or_default()
            ),
        }),
        _ => None,
    }
}

/// The memory limit of the pod's container `name`, as written in its spec.
fn memory_limit(pod: &Pod, name: &str) -> Option<String> {
    let container = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)?;
    let limit = container
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")?;
    Some(limit.0.clone())
}

/// The error a container waiting for this reason is in, if the pod cannot start.
fn waiting_error(
    container: &ContainerStatus,
    waiting: &ContainerStateWaiting,
    full_name: &str,
) -> Option<KubernetesError> {
    let reason = waiting.reason.clone().unwrap_or_default();
    let message = waiting.message.clone().unwrap_or_default();
    match reason.as_str() {
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" => {
            Some(KubernetesError::ImagePull {
                container: container.name.clone(),
                image: container.image.clone(),
                message,
            })
        }
        "InvalidImageName" | "CrashLoopBackOff" | "CreateContainerConfigError" => {
            Some(KubernetesError::PodConfiguration {
                pod: full_name.to_owned(),
                message: format!("container {}: {reason}: {message}", container.name),
            })
        }
        _ => None,
    }
}

fn classify(pod: &Pod, full_name: &str) -> Result<PodState, KubernetesError> {
    if let Some(error) = terminal_error(pod, full_name) {
        return Err(error);
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".to_owned());
    let all_ready = status
        .container_statuses
        .as_ref()
        .is_some_and(|list| !list.is_empty() && list.iter().all(|c| c.ready));
    if phase == "Running" && all_ready {
        return Ok(PodState::Ready);
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.clone())
        .unwrap_or_else(|| "<unknown>".to_owned());
    let mut text =
        format!("Waiting for pod {full_name} to be running on the node {node}, status is {phase}");
    for condition in status.conditions.iter().flatten() {
        if let Some(reason) = condition.reason.as_ref().filter(|r| !r.is_empty()) {
            text.push_str(&format!(
                "\n\t{reason}: {:?}",
                condition.message.clone().unwrap_or_default()
            ));
        }
    }
    Ok(PodState::Waiting(text))
}

/// The exit of an exec session from its error-channel `Status`.
fn stage_exit(status: &ExecStatus) -> Result<StageExit, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(StageExit::Exited(0));
    }
    let reason = status.reason.clone().unwrap_or_default();
    if reason == "NonZeroExitCode" {
        let code = status
            .details
            .as_ref()
            .and_then(|details| details.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|cause| cause.message.as_deref()?.parse::<i32>().ok());
        if let Some(code) = code {
            return Ok(StageExit::Exited(code));
        }
    }
    Err(format!(
        "{} ({reason})",
        status.message.clone().unwrap_or_default()
    ))
}

/// The exit code an exec session's `Status` carries, if any.
pub(crate) fn exec_exit_code(status: &ExecStatus) -> Option<i32> {
    match stage_exit(status) {
        Ok(StageExit::Exited(code)) => Some(code),
        _ => None,
    }
}

/// One pod followed through a watch, resumed from the last resource version it saw when the
/// server ends it; when a watch cannot be opened (an API server that does not serve them, or
/// is away), the pod is read again after `poll_interval` instead.
struct PodWatch {
    pods: Api<Pod>,
    name: String,
    interval: Duration,
    version: String,
    /// The API server's URL, for messages.
    server: String,
    /// How long the API server may stay unreachable (`poll_timeout`) before the job fails.
    outage_limit: Duration,
    /// Since when requests have not reached the API server.
    unreachable_since: Option<Instant>,
    /// The open watch (in a mutex only so the executor is `Sync`: it is used through
    /// `&mut self`, never locked).
    stream: tokio::sync::Mutex<Option<PodEvents>>,
}

/// A pod's watch events.
type PodEvents = futures::stream::BoxStream<'static, Result<WatchEvent<Pod>, kube::Error>>;

impl PodWatch {
    fn new(pods: Api<Pod>, name: &str, server: &str, options: &KubernetesOptions) -> Self {
        PodWatch {
            pods,
            name: name.to_owned(),
            interval: options.poll_interval(),
            version: String::new(),
            server: server.to_owned(),
            outage_limit: options.poll_timeout(),
            unreachable_since: None,
            stream: tokio::sync::Mutex::new(None),
        }
    }

    /// A request reached the API server.
    fn reached(&mut self, full_name: &str) {
        if let Some(since) = self.unreachable_since.take() {
            tracing::warn!(pod = full_name, server = %self.server, after = ?since.elapsed(), "the Kubernetes API server answers again");
        }
    }

    /// A request did not reach the API server: fine until it has been so for `outage_limit`.
    fn unreachable(&mut self, full_name: &str, error: &kube::Error) -> Result<(), KubernetesError> {
        let since = *self.unreachable_since.get_or_insert_with(|| {
            tracing::warn!(pod = full_name, server = %self.server, error = %error_chain(error), "the Kubernetes API server is unreachable; retrying");
            Instant::now()
        });
        if since.elapsed() >= self.outage_limit {
            return Err(KubernetesError::ApiServerUnreachable {
                server: self.server.clone(),
                pod: full_name.to_owned(),
                seconds: self.outage_limit.as_secs(),
                message: error_chain(error),
            });
        }
        Ok(())
    }

    /// The pod read again after `poll_interval`; `None` when the API server is away (for
    /// less than `outage_limit`).
    async fn poll(&mut self, full_name: &str) -> Result<Option<Pod>, KubernetesError> {
        tokio::time::sleep(self.interval).await;
        match self.pods.get(&self.name).await {
            Ok(pod) => {
                self.reached(full_name);
                self.version = pod.metadata.resource_version.clone().unwrap_or_default();
                Ok(Some(pod))
            }
            Err(error) if transient(&error) => {
                self.unreachable(full_name, &error)?;
                Ok(None)
            }
            Err(source) => Err(KubernetesError::api("get pod", full_name, source)),
        }
    }

    /// The pod as it is now.
    async fn get(&mut self, full_name: &str) -> Result<Pod, KubernetesError> {
        let pod = self
            .pods
            .get(&self.name)
            .await
            .map_err(|source| KubernetesError::api("get pod", full_name, source))?;
        self.version = pod.metadata.resource_version.clone().unwrap_or_default();
        Ok(pod)
    }

    /// Waits until the pod fails (evicted, a container killed, deleted …) and says how.
    async fn failure(&mut self, full_name: &str) -> KubernetesError {
        loop {
            match self.next(full_name).await {
                Ok(pod) => {
                    if let Some(error) = terminal_error(&pod, full_name) {
                        return error;
                    }
                }
                Err(error) => return error,
            }
        }
    }

    /// The pod after its next change.
    async fn next(&mut self, full_name: &str) -> Result<Pod, KubernetesError> {
        use futures::StreamExt;
        loop {
            let Some(stream) = self.stream.get_mut().as_mut() else {
                let params = WatchParams::default().fields(&format!("metadata.name={}", self.name));
                match self.pods.watch(&params, &self.version).await {
                    Ok(stream) => {
                        self.reached(full_name);
                        *self.stream.get_mut() = Some(stream.boxed());
                    }
                    Err(error) => {
                        if transient(&error) {
                            self.unreachable(full_name, &error)?;
                        } else {
                            tracing::debug!(pod = full_name, %error, "cannot watch the pod; reading it again");
                        }
                        if let Some(pod) = self.poll(full_name).await? {
                            return Ok(pod);
                        }
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                    if let Some(version) = &pod.metadata.resource_version {
                        self.version.clone_from(version);
                    }
                    return Ok(pod);
                }
                Some(Ok(WatchEvent::Deleted(_))) => {
                    return Err(KubernetesError::PodFailed {
                        pod: full_name.to_owned(),
                        message: "the pod no longer exists (deleted by someone else?)".to_owned(),
                    });
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                    self.version = bookmark.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    *self.stream.get_mut() = None;
                    tracing::debug!(pod = full_name, code = status.code, message = %status.message, "the pod's watch ended");
                    if status.code == 410 {
                        // Expired: the pod is read again and the next watch starts from what
                        // was read.
                        return self.get(full_name).await;
                    }
                    if let Some(pod) = self.poll(full_name).await? {
                        return Ok(pod);
                    }
                }
                Some(Err(error)) => {
                    *self.stream.get_mut() = None;
                    tracing::debug!(pod = full_name, %error, "the pod's watch broke; resuming it");
                    if transient(&error) {
                        self.unreachable(full_name, &error)?;
                    }
                    tokio::time::sleep(self.interval).await;
                }
                // The server ended the watch (its timeout): resumed from the last version.
                None => *self.stream.get_mut() = None,
            }
        }
    }
}

/// Whether a failed request may succeed when repeated: the API server was not reached, the
/// connection broke, or it answered that it cannot serve now (5xx).
pub(crate) fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The exit code of a process killed by `SIGKILL` (128 + 9), as the OOM killer does.
const KILLED_EXIT_CODE: i32 = 137;

/// How long a stopped attach-mode stage may take to print its exit line.
const ATTACH_STOP_WAIT: Duration = Duration::from_secs(3);

/// Output of an exec session kept for error messages.
const EXEC_OUTPUT_LIMIT: usize = 4096;

impl KubernetesExecutor {
    fn pods(&self) -> Result<Api<Pod>, KubernetesError> {
        let client = self.client.clone().ok_or_else(|| {
            KubernetesError::Unsupported("the executor was not prepared".to_owned())
        })?;
        Ok(Api::namespaced(client, &self.namespace))
    }

    fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.pod.as_deref().unwrap_or(""))
    }

    async fn prepare_pod(&mut self, ctx: &PrepareContext<'_>) -> Result<(), KubernetesError> {
        let shared = Arc::clone(&self.shared);
        let options = &shared.options;
        let overwrites = crate::overwrites::evaluate(options, ctx.job)?;
        let (client, default_namespace, server) =
            connect(options, overwrites.bearer_token.as_deref()).await?;
        self.client = Some(client.clone());
        self.server = server;
        self.namespace = if options.namespace_per_job {
            format!("{JOB_NAMESPACE_PREFIX}{}", ctx.job.id)
        } else if overwrites.namespace.is_empty() {
            default_namespace
        } else {
            overwrites.namespace.clone()
        };
        self.pending_log.extend(overwrites.log.iter().cloned());
        let advanced_pod_spec = options.advanced_pod_spec(ctx.job);
        if !options.pod_spec.is_empty() && !advanced_pod_spec {
            self.pending_log.push(format!(
                "WARNING: the [[runners.kubernetes.pod_spec]] patches are not applied: {} is off",
                crate::options::ADVANCED_POD_SPEC_FLAG
            ));
        } else if advanced_pod_spec && !options.pod_spec.is_empty() {
            self.pending_log.push(
                "WARNING: Advanced Pod Spec configuration enabled, merging the provided PodSpec to the generated one".to_owned(),
            );
        }
        if options.namespace_per_job {
            self.create_namespace(client).await?;
        }
        let builds_dir = ctx.builds_dir.display().to_string();
        let helper_image = options
            .helper_image
            .clone()
            .filter(|image| !image.is_empty())
            .unwrap_or_else(|| DEFAULT_HELPER_IMAGE.to_owned());
        // Attach mode's volumes and init container reach the pod as the configured volumes
        // do, so `[[pod_spec]]` patches see them.
        let paths = self.attach.then(|| {
            AttachPaths::with_bases(
                options.scripts_base_dir.as_deref(),
                options.logs_base_dir.as_deref(),
                ctx.job.info.project_id,
                ctx.job.id.0,
            )
        });
        self.attach_paths = paths.clone();
        self.pending_log
            .push(format!("Using Kubernetes namespace: {}", self.namespace));
        if ctx.debug_services {
            self.pending_log.push(
                "WARNING: CI_DEBUG_SERVICES is not supported by Runnel's kubernetes executor yet: service output is not streamed into this log".to_owned(),
            );
        }
        self.pending_log
            .extend(crate::pod::run_as_notes(options, ctx.job));
        let policies = crate::pod::pull_policies(options, ctx.job)?;
        let mut pull_failures = BTreeMap::new();
        let pods = self.pods()?;
        self.create_credentials(ctx.job).await?;
        // As official: a container whose image cannot be pulled moves to its next pull policy
        // and the pod is made again, until a pod runs or a container has no policy left.
        let name = loop {
            let suffix = crate::pod::random_suffix();
            let pod = crate::pod::build_pod(&PodInputs {
                options,
                job: ctx.job,
                runner_name: &self.shared.settings.runner_name,
                short_token: &self.shared.settings.short_token,
                slot: self.slot,
                suffix: &suffix,
                builds_dir: &builds_dir,
                namespace: &self.namespace,
                shell: self.shared.settings.shell,
                helper_image: &helper_image,
                overwrites: &overwrites,
                advanced_pod_spec,
                init_command: paths.as_ref().map(crate::attach::init_permissions_command),
                extra_volumes: if paths.is_some() {
                    crate::attach::volumes()
                } else {
                    Vec::new()
                },
                extra_mounts: paths
                    .as_ref()
                    .map(crate::attach::mounts)
                    .unwrap_or_default(),
                pull_failures: &pull_failures,
                credentials_secret: self.credentials.as_deref(),
            })?;
            self.image = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            // Recorded before the call: a pod created by a request whose answer is lost is
            // still deleted at cleanup.
            self.pod = Some(name.clone());
            lock(&self.shared.active_pods).insert(name.clone());
            pods.create(&PostParams::default(), &pod)
                .await
                .map_err(|source| match source {
                    // As official: a refusal (quota, admission) ends the job as a system
                    // failure; the log says what the API server said.
                    kube::Error::Api(status) if status.is_forbidden() => {
                        let status = *status;
                        KubernetesError::PodRefused {
                            pod: self.full_name(),
                            reason: status.reason,
                            message: status.message,
                        }
                    }
                    source => KubernetesError::api("create pod", self.full_name(), source),
                })?;
            match self.wait_until_running(&pods, &name).await {
                Ok(watch) => {
                    self.watch = Some(watch);
                    break name;
                }
                Err(KubernetesError::ImagePull {
                    container,
                    image,
                    message,
                }) => {
                    let list = policies.get(&container).map(Vec::as_slice).unwrap_or(&[]);
                    let failed = pull_failures.entry(container.clone()).or_insert(0);
                    let tried = list.get(*failed).copied().unwrap_or("");
                    *failed += 1;
                    let Some(next) = list.get(*failed).copied() else {
                        return Err(KubernetesError::ImagePull {
                            container,
                            image,
                            message,
                        });
                    };
                    let attempt = pull_failures.values().sum::<usize>() + 1;
                    self.pending_log.push(format!(
                        "WARNING: Failed to pull image {image:?} for container {container:?} with policy {tried:?}: {message}"
                    ));
                    self.pending_log.push(format!(
                        "Attempt #{attempt}: Trying {next:?} pull policy for {image:?} image for container {container:?}"
                    ));
                    if let Some(deletion) = self.delete_pod().await {
                        deletion.retry().await;
                    }
                }
                Err(error) => return Err(error),
            }
        };
        if let Some(paths) = self.attach_paths.clone() {
            // The detect-shell script every stage runs through (the init-permissions
            // container made the log file); then the helper starts streaming the log.
            let detect = crate::attach::detect_shell_script(self.shared.settings.shell);
            let command = crate::attach::save_command(&paths.detect_script(), detect.len(), true);
            self.exec_with_input(BUILD_CONTAINER, "prepare", command, detect.as_bytes())
                .await?;
            self.logs = Some(LogStream::start(
                pods,
                name,
                paths.log_file(),
                self.server.clone(),
                self.shared.options.poll_timeout(),
            ));
        }
        Ok(())
    }

    /// Runs `command` in `container` with `input` on its stdin; fails unless it exits with 0.
    async fn exec_with_input(
        &self,
        container: &'static str,
        stage: &str,
        command: Vec<String>,
        input: &[u8],
    ) -> Result<(), KubernetesError> {
        let pods = self.pods()?;
        let name = self.pod.clone().unwrap_or_default();
        let params = AttachParams::default()
            .container(container)
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let connected = self
            .reaching(|| pods.exec(&name, command.clone(), &params))
            .await?;
        let mut process = match connected {
            Ok(process) => process,
            Err(source) => {
                self.check_pod().await?;
                return Err(KubernetesError::api(
                    "exec in pod",
                    self.full_name(),
                    source,
                ));
            }
        };
        let exec_error = |message: String| KubernetesError::Exec {
            stage: stage.to_owned(),
            container,
            message,
        };
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr), Some(status)) = (
            process.stdin(),
            process.stdout(),
            process.stderr(),
            process.take_status(),
        ) else {
            return Err(exec_error("the exec session has no streams".to_owned()));
        };
        let input = input.to_vec();
        let feed = async move {
            let written = stdin.write_all(&input).await;
            if let Err(error) = stdin.shutdown().await {
                tracing::debug!(%error, "cannot close the exec's stdin");
            }
            written
        };
        let collect = async {
            let mut output = Vec::new();
            let mut out_buf = vec![0u8; 4096];
            let mut err_buf = vec![0u8; 4096];
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let (read, buf, open) = tokio::select! {
                    read = stdout.read(&mut out_buf), if out_open => (read, &out_buf, &mut out_open),
                    read = stderr.read(&mut err_buf), if err_open => (read, &err_buf, &mut err_open),
                };
                match read {
                    Ok(0) | Err(_) => *open = false,
                    Ok(n) => {
                        let room = EXEC_OUTPUT_LIMIT.saturating_sub(output.len());
                        output.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            output
        };
        let session = async { tokio::join!(feed, collect, status) };
        let (written, output, status) =
            match tokio::time::timeout(Duration::from_secs(120), session).await {
                Ok(done) => done,
                Err(_) => {
                    process.abort();
                    return Err(exec_error("no answer within 120 s".to_owned()));
                }
            };
        if let Err(error) = written {
            tracing::debug!(%error, "the exec's stdin closed early");
        }
        let output = String::from_utf8_lossy(&output).trim().to_owned();
        match status.as_ref().map(stage_exit) {
            Some(Ok(StageExit::Exited(0))) => Ok(()),
            Some(Ok(exit)) => Err(exec_error(format!("exited with {exit:?}: {output}"))),
            Some(Err(message)) => Err(exec_error(format!("{message}: {output}"))),
            None => {
                self.check_pod().await?;
                Err(exec_error(
                    "the connection ended without an exit status".to_owned(),
                ))
            }
        }
    }

    /// `request` again every `poll_interval` while it does not reach the API server, for at
    /// most `poll_timeout`; then the job fails naming the API server. Only for requests that
    /// do nothing unless they reach it (opening a session, reading).
    async fn reaching<T, F, Fut>(
        &self,
        mut request: F,
    ) -> Result<Result<T, kube::Error>, KubernetesError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut since: Option<Instant> = None;
        loop {
            match request().await {
                Err(error) if transient(&error) => {
                    let first = *since.get_or_insert_with(Instant::now);
                    if first.elapsed() >= self.shared.options.poll_timeout() {
                        return Err(KubernetesError::ApiServerUnreachable {
                            server: self.server.clone(),
                            pod: self.full_name(),
                            seconds: self.shared.options.poll_timeout().as_secs(),
                            message: error_chain(&error),
                        });
                    }
                    tracing::warn!(pod = %self.full_name(), server = %self.server, error = %error_chain(&error), "the Kubernetes API server is unreachable; trying again");
                    tokio::time::sleep(self.shared.options.poll_interval()).await;
                }
                other => return Ok(other),
            }
        }
    }

    /// Follows the pod (by a watch) until all its containers run, for at most `poll_timeout`;
    /// each new waiting state is printed before the first stage.
    async fn wait_until_running(
        &mut self,
        pods: &Api<Pod>,
        name: &str,
    ) -> Result<PodWatch, KubernetesError> {
        let deadline = Instant::now() + self.shared.options.poll_timeout();
        let full_name = self.full_name();
        let mut watch = PodWatch::new(pods.clone(), name, &self.server, &self.shared.options);
        let mut pod = watch.get(&full_name).await?;
        let mut shown = String::new();
        loop {
            let (phase, detail) = match classify(&pod, &full_name)? {
                PodState::Ready => return Ok(watch),
                PodState::Waiting(text) => {
                    let phase = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_else(|| "Unknown".to_owned());
                    let detail = text
                        .split_once('\n')
                        .map(|(_, conditions)| format!(":\n{conditions}"))
                        .unwrap_or_default();
                    if text != shown {
                        self.pending_log.push(text.clone());
                        shown = text;
                    }
                    (phase, detail)
                }
            };
            pod = match tokio::time::timeout_at(deadline, watch.next(&full_name)).await {
                Ok(next) => next?,
                Err(_) => {
                    return Err(KubernetesError::PodStartTimeout {
                        pod: full_name,
                        phase,
                        detail,
                    });
                }
            };
        }
    }

    /// The pod's state as an error, if it is failing.
    async fn check_pod(&self) -> Result<(), KubernetesError> {
        let pods = self.pods()?;
        let name = self.pod.clone().unwrap_or_default();
        match pods.get(&name).await {
            Ok(pod) => match terminal_error(&pod, &self.full_name()) {
                Some(error) => Err(error),
                None => Ok(()),
            },
            Err(error) if not_found(&error) => Err(KubernetesError::PodFailed {
                pod: self.full_name(),
                message: "the pod no longer exists (deleted by someone else?)".to_owned(),
            }),
            Err(source) => Err(KubernetesError::api("get pod", self.full_name(), source)),
        }
    }

    /// Sends `signal` to every process of `container` but its init.
    async fn signal_all(&self, container: &str, signal: &str) {
        let Ok(pods) = self.pods() else { return };
        let name = self.pod.clone().unwrap_or_default();
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("kill -{signal} -1 2>/dev/null; true"),
        ];
        if let Ok(process) = pods.exec(&name, command, &params).await {
            match tokio::time::timeout(Duration::from_secs(10), process.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, signal, "signalling the stage failed"),
                Err(_) => tracing::debug!(signal, "signalling the stage timed out"),
            }
        }
    }

    /// The pod's watch, for a stage (put back when it ends).
    fn take_watch(&mut self) -> Result<PodWatch, KubernetesError> {
        match self.watch.take() {
            Some(watch) => Ok(watch),
            None => Ok(PodWatch::new(
                self.pods()?,
                self.pod.as_deref().unwrap_or(""),
                &self.server,
                &self.shared.options,
            )),
        }
    }

    async fn run_stage(
        &mut self,
        cmd: StageCommand<'_>,
        sink: &dyn OutputSink,
        cancel: CancellationToken,
    ) -> Result<StageExit, KubernetesError> {
        if self.attach {
            return self.run_stage_attach(cmd, sink, cancel).await;
        }
        let (container, umask) = match cmd.kind {
            StageKind::Predefined => (HELPER_CONTAINER, true),
            StageKind::Build => (BUILD_CONTAINER, false),
        };
        let script = with_env(cmd.env, cmd.script);
        let pods = self.pods()?;
        let name = self.pod.clone().unwrap_or_default();
        let params = AttachParams::default()
            .container(container)
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let command = crate::pod::stage_command(self.shared.settings.shell, umask, script.len());
        let mut process = match pods.exec(&name, command, &params).await {
            Ok(process) => process,
            Err(source) => {
                self.check_pod().await?;
                return Err(KubernetesError::api(
                    "exec in pod",
                    self.full_name(),
                    source,
                ));
            }
        };
        let exec_error = |message: String| KubernetesError::Exec {
            stage: cmd.stage.to_owned(),
            container,
            message,
        };
        let mut stdin = process
            .stdin()
            .ok_or_else(|| exec_error("no stdin".to_owned()))?;
        let mut stdout = process
            .stdout()
            .ok_or_else(|| exec_error("no stdout".to_owned()))?;
        let mut stderr = process
            .stderr()
            .ok_or_else(|| exec_error("no stderr".to_owned()))?;
        let status = process
            .take_status()
            .ok_or_else(|| exec_error("no status channel".to_owned()))?;
        let script = script.into_owned().into_bytes();
        let feed = async move {
            let written = stdin.write_all(&script).await;
            if let Err(error) = stdin.shutdown().await {
                tracing::debug!(%error, "cannot close the stage's stdin");
            }
            written
        };
        let mut feed = std::pin::pin!(feed.fuse());
        let mut status = std::pin::pin!(status.fuse());
        let mut out_buf = vec![0u8; 16 * 1024];
        let mut err_buf = vec![0u8; 16 * 1024];
        let (mut out_open, mut err_open) = (true, true);
        let mut exit: Option<Option<ExecStatus>> = None;
        let full_name = self.full_name();
        let mut watch = self.take_watch()?;
        let deadline = async {
            match cmd.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut deadline = std::pin::pin!(deadline);
        let stopped = loop {
            if exit.is_some() && !out_open && !err_open {
                break None;
            }
            tokio::select! {
                written = &mut feed => {
                    if let Err(error) = written {
                        tracing::debug!(%error, "stage stdin closed early");
                    }
                }
                read = stdout.read(&mut out_buf), if out_open => match read {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => sink.write(OutputStream::Stdout, &out_buf[..n]),
                },
                read = stderr.read(&mut err_buf), if err_open => match read {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => sink.write(OutputStream::Stderr, &err_buf[..n]),
                },
                received = &mut status, if exit.is_none() => exit = Some(received),
                () = cancel.cancelled() => break Some(StageExit::Cancelled),
                () = &mut deadline => break Some(StageExit::TimedOut),
                error = watch.failure(&full_name) => return Err(error),
            }
        };
        self.watch = Some(watch);
        if let Some(stopped) = stopped {
            self.signal_all(container, "TERM").await;
            let drained = tokio::time::timeout(STOP_GRACE, async {
                while out_open || err_open {
                    tokio::select! {
                        read = stdout.read(&mut out_buf), if out_open => match read {
                            Ok(0) | Err(_) => out_open = false,
                            Ok(n) => sink.write(OutputStream::Stdout, &out_buf[..n]),
                        },
                        read = stderr.read(&mut err_buf), if err_open => match read {
                            Ok(0) | Err(_) => err_open = false,
                            Ok(n) => sink.write(OutputStream::Stderr, &err_buf[..n]),
                        },
                    }
                }
            })
            .await;
            if drained.is_err() {
                self.signal_all(container, "KILL").await;
            }
            process.abort();
            return Ok(stopped);
        }
        match exit.flatten() {
            Some(status) => {
                let exit = stage_exit(&status).map_err(exec_error)?;
                if !exit.success() {
                    let code = match exit {
                        StageExit::Exited(code) => code,
                        _ => 0,
                    };
                    let mut watch = self.take_watch()?;
                    let killed = self.killed_under_stage(&mut watch, code).await;
                    self.watch = Some(watch);
                    killed?;
                }
                Ok(exit)
            }
            None => {
                self.check_pod().await?;
                Err(exec_error(
                    "the connection ended without an exit status".to_owned(),
                ))
            }
        }
    }

    /// After a stage exited with `code` (not 0): a container killed under the stage (eviction,
    /// OOM) ends it with a non-zero code too, and the pod says whether that is the reason. A
    /// stage whose process was killed (137) may end before the pod's status says why (the
    /// kubelet reports an OOM kill after the kernel made it): the pod's next changes are
    /// followed for `poll_interval` first.
    async fn killed_under_stage(
        &self,
        watch: &mut PodWatch,
        code: i32,
    ) -> Result<(), KubernetesError> {
        self.check_pod().await?;
        if code == KILLED_EXIT_CODE {
            let full_name = self.full_name();
            let interval = self.shared.options.poll_interval();
            if let Ok(error) = tokio::time::timeout(interval, watch.failure(&full_name)).await {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Creates the job's own namespace (`namespace_per_job`); deleted again at cleanup.
    async fn create_namespace(&mut self, client: Client) -> Result<(), KubernetesError> {
        let namespaces: Api<Namespace> = Api::all(client);
        // Labelled with the runner, so a later start deletes it if this run is killed.
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGER_ID_LABEL.to_owned(),
                    crate::pod::sanitize_label(&self.shared.settings.short_token),
                )])),
                ..kube::api::ObjectMeta::default()
            },
            ..Namespace::default()
        };
        self.own_namespace = true;
        lock(&self.shared.active_namespaces).insert(self.namespace.clone());
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(source) => {
                self.own_namespace = false;
                lock(&self.shared.active_namespaces).remove(&self.namespace);
                Err(KubernetesError::api(
                    "create namespace",
                    &self.namespace,
                    source,
                ))
            }
        }
    }

    /// Deletes the namespace [`Self::create_namespace`] made.
    async fn delete_namespace(&mut self) {
        if !std::mem::take(&mut self.own_namespace) {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let namespaces: Api<Namespace> = Api::all(client);
        let timeout = self.shared.options.cleanup_timeout();
        match tokio::time::timeout(
            timeout,
            namespaces.delete(&self.namespace, &DeleteParams::default()),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) if not_found(&error) => {}
            Ok(Err(error)) => {
                tracing::warn!(namespace = %self.namespace, %error, "cannot delete the job's namespace");
            }
            Err(_) => {
                tracing::warn!(namespace = %self.namespace, "deleting the job's namespace timed out");
            }
        }
        lock(&self.shared.active_namespaces).remove(&self.namespace);
    }

    /// Attach mode: saves the script, starts it through the container's stdin and follows the
    /// log file until the script's exit line.
    async fn run_stage_attach(
        &mut self,
        cmd: StageCommand<'_>,
        sink: &dyn OutputSink,
        cancel: CancellationToken,
    ) -> Result<StageExit, KubernetesError> {
        let paths = self.attach_paths.clone().ok_or_else(|| {
            KubernetesError::Unsupported("the executor was not prepared".to_owned())
        })?;
        let (container, umask) = match cmd.kind {
            StageKind::Predefined => (HELPER_CONTAINER, true),
            StageKind::Build => (BUILD_CONTAINER, false),
        };
        let script = with_env(cmd.env, cmd.script);
        let script_path = paths.stage_script(cmd.stage);
        let save = crate::attach::save_command(&script_path, script.len(), false);
        self.exec_with_input(container, cmd.stage, save, script.as_bytes())
            .await?;
        let pods = self.pods()?;
        let name = self.pod.clone().unwrap_or_default();
        let line = crate::attach::stage_line(&paths, cmd.stage, umask);
        // Nothing is written unless the session is established: trying again cannot start
        // the stage twice.
        let written = self
            .reaching(|| crate::attach::write_to_container(&pods, &name, container, &line))
            .await?;
        if let Err(source) = written {
            self.check_pod().await?;
            return Err(KubernetesError::api(
                "attach to pod",
                self.full_name(),
                source,
            ));
        }
        let mut logs = self.logs.take().ok_or_else(|| KubernetesError::LogStream {
            pod: self.full_name(),
            message: "the log stream ended earlier".to_owned(),
        })?;
        let mut watch = self.take_watch()?;
        let result = self
            .follow_stage(
                &mut logs,
                &mut watch,
                &script_path,
                container,
                &cmd,
                sink,
                cancel,
            )
            .await;
        self.logs = Some(logs);
        self.watch = Some(watch);
        result
    }

    #[allow(clippy::too_many_arguments)] // one stage's state, borrowed from the executor
    async fn follow_stage(
        &self,
        logs: &mut LogStream,
        watch: &mut PodWatch,
        script_path: &str,
        container: &'static str,
        cmd: &StageCommand<'_>,
        sink: &dyn OutputSink,
        cancel: CancellationToken,
    ) -> Result<StageExit, KubernetesError> {
        let mut output = AttachOutput::default();
        let full_name = self.full_name();
        let deadline = async {
            match cmd.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut deadline = std::pin::pin!(deadline);
        let stopped = loop {
            tokio::select! {
                event = logs.events.recv() => {
                    if let Some(code) = self.log_event(event, &mut output, script_path, sink)? {
                        if code != 0 {
                            self.killed_under_stage(watch, code).await?;
                        }
                        return Ok(StageExit::Exited(code));
                    }
                }
                () = cancel.cancelled() => break StageExit::Cancelled,
                () = &mut deadline => break StageExit::TimedOut,
                error = watch.failure(&full_name) => return Err(error),
            }
        };
        let signal = crate::attach::signal_command(script_path, "TERM");
        self.exec_quietly(container, signal).await;
        if self
            .wait_for_exit_line(logs, &mut output, script_path, sink, STOP_GRACE)
            .await
        {
            return Ok(stopped);
        }
        let kill = crate::attach::signal_command(script_path, "KILL");
        self.exec_quietly(container, kill).await;
        self.wait_for_exit_line(logs, &mut output, script_path, sink, ATTACH_STOP_WAIT)
            .await;
        Ok(stopped)
    }

    /// Passes log text on until the stage's exit line, for at most `wait`.
    async fn wait_for_exit_line(
        &self,
        logs: &mut LogStream,
        output: &mut AttachOutput,
        script_path: &str,
        sink: &dyn OutputSink,
        wait: Duration,
    ) -> bool {
        let until = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, logs.events.recv()).await {
                Ok(event) => match self.log_event(event, output, script_path, sink) {
                    Ok(Some(_)) => return true,
                    Ok(None) => {}
                    Err(_) => return false,
                },
                Err(_) => return false,
            }
        }
    }

    /// Deletes what the job made; a pod the API server could not be reached for is handed
    /// back, to be deleted once it answers.
    async fn cleanup_job(&mut self) -> Option<PodDeletion> {
        let deletion = self.delete_pod().await;
        self.delete_credentials().await;
        self.delete_namespace().await;
        deletion
    }

    /// Creates the job's registry credentials secret, if it has logins ([`crate::credentials`]).
    async fn create_credentials(
        &mut self,
        job: &runnel_types::JobSpec,
    ) -> Result<(), KubernetesError> {
        let home = crate::credentials::home_config();
        let logins = crate::credentials::logins(job, home.as_deref());
        let unique = crate::pod::project_unique_name(
            &self.shared.settings.short_token,
            job.info.project_id,
            self.slot,
        );
        let name = crate::pod::resource_name(&unique, &crate::pod::random_suffix());
        let labels = BTreeMap::from([(
            MANAGER_ID_LABEL.to_owned(),
            crate::pod::sanitize_label(&self.shared.settings.short_token),
        )]);
        let Some(secret) = crate::credentials::secret(&logins, &name, &self.namespace, labels)
        else {
            return Ok(());
        };
        let client = self.client.clone().ok_or_else(|| {
            KubernetesError::Unsupported("the executor was not prepared".to_owned())
        })?;
        let secrets: Api<Secret> = Api::namespaced(client, &self.namespace);
        // Recorded first: a secret whose creation answer is lost is still deleted at cleanup.
        self.credentials = Some(name.clone());
        lock(&self.shared.active_secrets).insert(name.clone());
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|source| {
                KubernetesError::api(
                    "create the registry credentials secret",
                    format!("{}/{name}", self.namespace),
                    source,
                )
            })?;
        Ok(())
    }

    /// Deletes the secret [`Self::create_credentials`] made.
    async fn delete_credentials(&mut self) {
        let Some(name) = self.credentials.take() else {
            return;
        };
        let Some(client) = self.client.clone() else {
            lock(&self.shared.active_secrets).remove(&name);
            return;
        };
        let secrets: Api<Secret> = Api::namespaced(client, &self.namespace);
        let timeout = self.shared.options.cleanup_timeout();
        match tokio::time::timeout(timeout, secrets.delete(&name, &DeleteParams::default())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) if not_found(&error) => {}
            Ok(Err(error)) => {
                tracing::warn!(secret = %name, namespace = %self.namespace, %error, "cannot delete the job's registry credentials secret");
            }
            Err(_) => {
                tracing::warn!(secret = %name, namespace = %self.namespace, "deleting the job's registry credentials secret timed out");
            }
        }
        lock(&self.shared.active_secrets).remove(&name);
    }

    /// One event of the log stream: text is passed on; the stage's exit line gives its code.
    fn log_event(
        &self,
        event: Option<LogEvent>,
        output: &mut AttachOutput,
        script_path: &str,
        sink: &dyn OutputSink,
    ) -> Result<Option<i32>, KubernetesError> {
        match event {
            Some(LogEvent::Text(text)) => Ok(output.text(&text, script_path, sink)),
            Some(LogEvent::Failed(message)) => Err(KubernetesError::LogStream {
                pod: self.full_name(),
                message,
            }),
            None => Err(KubernetesError::LogStream {
                pod: self.full_name(),
                message: "the log stream stopped".to_owned(),
            }),
        }
    }

    /// Runs `command` in `container`, output discarded, for at most 10 s.
    async fn exec_quietly(&self, container: &str, command: Vec<String>) {
        let Ok(pods) = self.pods() else { return };
        let name = self.pod.clone().unwrap_or_default();
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        if let Ok(process) = pods.exec(&name, command, &params).await {
            match tokio::time::timeout(Duration::from_secs(10), process.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "stopping the stage failed"),
                Err(_) => tracing::debug!("stopping the stage timed out"),
            }
        }
    }

    /// Deletes the job's pod; when the API server cannot be reached, what is returned keeps
    /// trying until it can, for at most `cleanup_resources_timeout`.
    async fn delete_pod(&mut self) -> Option<PodDeletion> {
        self.logs = None;
        self.watch = None;
        let name = self.pod.take()?;
        let Ok(pods) = self.pods() else {
            lock(&self.shared.active_pods).remove(&name);
            return None;
        };
        let params = DeleteParams {
            grace_period_seconds: self
                .shared
                .options
                .cleanup_grace_period_seconds
                .and_then(|s| u32::try_from(s).ok()),
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let timeout = self.shared.options.cleanup_timeout();
        let deletion = PodDeletion {
            shared: Arc::clone(&self.shared),
            pods,
            name,
            namespace: self.namespace.clone(),
            params,
            deadline: Instant::now() + timeout,
        };
        match deletion.attempt().await {
            true => Some(deletion),
            false => None,
        }
    }
}

/// A pod deletion the API server was not reachable for.
struct PodDeletion {
    shared: Arc<Shared>,
    pods: Api<Pod>,
    name: String,
    namespace: String,
    params: DeleteParams,
    deadline: Instant,
}

impl PodDeletion {
    /// One try; true when it should be tried again (the API server was not reached).
    async fn attempt(&self) -> bool {
        let name = &self.name;
        match tokio::time::timeout_at(self.deadline, self.pods.delete(name, &self.params)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) if not_found(&error) => {}
            Ok(Err(error)) if transient(&error) && Instant::now() < self.deadline => {
                tracing::warn!(pod = %name, namespace = %self.namespace, error = %error_chain(&error), "cannot reach the API server to delete the job's pod; trying again until it answers");
                return true;
            }
            Ok(Err(error)) => {
                tracing::warn!(pod = %name, namespace = %self.namespace, error = %error_chain(&error), "cannot delete the job's pod");
            }
            Err(_) => {
                tracing::warn!(pod = %name, namespace = %self.namespace, "deleting the job's pod timed out");
            }
        }
        lock(&self.shared.active_pods).remove(name);
        false
    }

    /// Tries again every `poll_interval` until the pod is deleted or the deadline passes.
    async fn retry(self) {
        let interval = self.shared.options.poll_interval();
        loop {
            tokio::time::sleep(interval).await;
            if !self.attempt().await {
                return;
            }
        }
    }
}

/// Attach mode: what of the log file reaches the job log. The wrapper prints an empty line
/// before the exit line; it is shown only where the script's output did not end a line.
#[derive(Debug)]
struct AttachOutput {
    held_newline: bool,
    ends_with_newline: bool,
}

impl Default for AttachOutput {
    fn default() -> Self {
        AttachOutput {
            held_newline: false,
            ends_with_newline: true,
        }
    }
}

impl AttachOutput {
    /// Writes `text` to `sink`; returns the exit code when it is the exit line of `script`.
    fn text(&mut self, text: &[u8], script: &str, sink: &dyn OutputSink) -> Option<i32> {
        if let Some(exit) = crate::attach::exit_line(text) {
            if self.held_newline && !self.ends_with_newline {
                sink.write(OutputStream::Stdout, b"\n");
            }
            self.held_newline = false;
            self.ends_with_newline = true;
            // The exit line of an earlier, stopped stage is dropped.
            return (exit.script.as_deref() == Some(script)).then_some(exit.command_exit_code);
        }
        if self.held_newline {
            sink.write(OutputStream::Stdout, b"\n");
            self.held_newline = false;
            self.ends_with_newline = true;
        }
        if text == b"\n" {
            self.held_newline = true;
        } else if let Some(last) = text.last() {
            sink.write(OutputStream::Stdout, text);
            self.ends_with_newline = *last == b'\n';
        }
        None
    }
}

/// The script with `export` lines for the stage's extra environment in front.
fn with_env<'a>(env: &[(String, String)], script: &'a str) -> std::borrow::Cow<'a, str> {
    if env.is_empty() {
        return std::borrow::Cow::Borrowed(script);
    }
    let mut text = String::new();
    for (key, value) in env {
        text.push_str(&format!(
            "export {key}='{}'\n",
            value.replace('\'', "'\\''")
        ));
    }
    text.push_str(script);
    std::borrow::Cow::Owned(text)
}

impl Executor for KubernetesExecutor {
    fn name(&self) -> &str {
        "kubernetes"
    }

    /// The executor line, then what `prepare` had to say (overwrites, the namespace, the pod's
    /// waiting states, pull retries), as the official runner prints them while preparing; also
    /// when `prepare` failed.
    fn banner(&self) -> String {
        let mut text = if self.image.is_empty() {
            "Using Kubernetes executor...".to_owned()
        } else {
            format!("Using Kubernetes executor with image {} ...", self.image)
        };
        for line in &self.pending_log {
            text.push('\n');
            text.push_str(line);
        }
        text
    }

    fn configure<'a>(
        &'a mut self,
        ctx: ConfigureContext<'a>,
    ) -> BoxFuture<'a, Result<PlanOverrides, ExecutorError>> {
        // The resolved feature flags come first in the job's variables.
        self.attach = ctx
            .variables
            .iter()
            .find(|(key, _)| key == LEGACY_EXECUTION_FLAG)
            .is_none_or(|(_, value)| value != "true");
        Box::pin(async { Ok(PlanOverrides::default()) })
    }

    fn prepare<'a>(
        &'a mut self,
        ctx: &'a PrepareContext<'a>,
    ) -> BoxFuture<'a, Result<(), ExecutorError>> {
        Box::pin(async move { self.prepare_pod(ctx).await.map_err(ExecutorError::from) })
    }

    fn run<'a>(
        &'a mut self,
        cmd: StageCommand<'a>,
        sink: &'a dyn OutputSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<StageExit, ExecutorError>> {
        Box::pin(async move {
            self.run_stage(cmd, sink, cancel)
                .await
                .map_err(ExecutorError::from)
        })
    }

    fn job_resources(&self) -> Vec<runnel_executor::JobResource> {
        self.pod
            .iter()
            .map(|name| runnel_executor::JobResource::KubernetesPod {
                namespace: self.namespace.clone(),
                name: name.clone(),
            })
            .collect()
    }

    fn cleanup(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(deletion) = self.cleanup_job().await {
                deletion.retry().await;
            }
        })
    }

    /// The job's processes run in its pod, not on this host: nothing is `contained` in the
    /// shell executor's sense (the job runner's tag scan is for shell jobs only).
    fn cleanup_deferred(&mut self) -> BoxFuture<'_, Option<BoxFuture<'static, bool>>> {
        Box::pin(async move {
            // The job's result need not wait for an API server that is away.
            let deletion = self.cleanup_job().await?;
            Some(Box::pin(async move {
                deletion.retry().await;
                false
            }) as BoxFuture<'static, bool>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status_causes() {
        let status: ExecStatus = serde_json::from_value(serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }))
        .unwrap();
        assert_eq!(stage_exit(&status), Ok(StageExit::Exited(3)));
        let success: ExecStatus =
            serde_json::from_value(serde_json::json!({"metadata": {}, "status": "Success"}))
                .unwrap();
        assert_eq!(stage_exit(&success), Ok(StageExit::Exited(0)));
        let other: ExecStatus = serde_json::from_value(serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "InternalError", "message": "boom"
        }))
        .unwrap();
        assert_eq!(stage_exit(&other), Err("boom (InternalError)".to_owned()));
    }

    #[test]
    fn image_pull_errors_are_terminal_with_their_reason() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "build", "image": "nope:1", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}
            }]}
        }))
        .unwrap();
        let error = terminal_error(&pod, "ns/p").unwrap();
        assert_eq!(
            error.failure_reason(),
            runnel_types::FailureReason::ImagePullFailure
        );
        insta::assert_snapshot!(error.to_string(), @"image pull failed for container build (nope:1): not found");
    }

    #[test]
    fn an_oom_killed_container_says_so_with_its_limit() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "build", "resources": {"limits": {"memory": "64Mi"}}},
                {"name": "helper"}
            ]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "build", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
                {"name": "helper", "image": "h", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {}}}
            ]}
        }))
        .unwrap();
        let error = terminal_error(&pod, "ns/p").unwrap();
        assert_eq!(
            error.failure_reason(),
            runnel_types::FailureReason::RunnerSystemFailure
        );
        insta::assert_snapshot!(error.to_string(), @"pod ns/p failed: container build was OOM-killed: it used more memory than its limit of 64Mi (reason OOMKilled, exit code 137)");
    }

    #[test]
    fn only_unreached_or_unavailable_api_servers_are_tried_again() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            }))
        };
        assert!(transient(&status(503)));
        assert!(!transient(&status(403)));
        assert!(!transient(&status(404)));
        assert!(transient(&kube::Error::ReadEvents(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!transient(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }

    #[test]
    fn unschedulable_pods_wait_with_the_scheduler_message() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available"
            }]}
        }))
        .unwrap();
        let Ok(PodState::Waiting(text)) = classify(&pod, "ns/p") else {
            panic!("a pending pod is waited for");
        };
        insta::assert_snapshot!(text, @r#"
        Waiting for pod ns/p to be running on the node <unknown>, status is Pending
        	Unschedulable: "0/1 nodes are available"
        "#);
    }

    #[test]
    fn pem_bundles_are_decoded() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem), vec![vec![0, 1, 2, 3]]);
    }
}
