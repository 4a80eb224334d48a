//! The job's pod, built as the official runner builds it (pure: no I/O).
//!
//! - name: `runner-<short token>-project-<id>-concurrent-<slot>` cut to 54 characters, then `-`
//!   and 8 random `[a-z0-9]` (`generateNameForK8sResources`);
//! - labels: `pod`, `project.runner.gitlab.com/{id,namespace-id,name,namespace,root-namespace,
//!   root-namespace-id}`, `job.runner.gitlab.com/pod`, `manager.runner.gitlab.com/{name,id-short}`
//!   (label values sanitized as the official `sanitizeLabel`), then `pod_labels` with `$VAR`
//!   expansion, except keys in a `runner.gitlab.com` namespace;
//! - annotations: `job.runner.gitlab.com/{id,url,sha,before_sha,ref,name,timeout}` and
//!   `project.runner.gitlab.com/id`, then `pod_annotations`;
//! - containers: `build` (job image), `helper` (helper image), then the services, each named
//!   after its first usable alias, else `svc-0`, `svc-1`, … ([`service_container_names`]);
//!   all share the `repo` emptyDir at the builds directory; `restartPolicy: Never`; service
//!   aliases resolve to 127.0.0.1 through `hostAliases`;
//! - init container: `init-permissions` (helper image) when the stage strategy asks for one
//!   (attach mode: it creates the log file, [`crate::attach`]);
//! - pull policies: per container, tried in order after failed pulls ([`pull_policies`]).
//!
//! Divergence, deliberate: the official build container gets the job's non-masked variables in
//! its `env`; Runnel puts no job variable in the pod spec (the stage scripts export them), so
//! nothing of the job leaks through the API objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, HostAlias, LocalObjectReference, Pod, PodSpec,
    ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use runnel_executor::Shell;
use runnel_types::{ImageSpec, JobSpec};

use crate::KubernetesError;
use crate::options::{KubernetesOptions, Resources};
use crate::overwrites::Overwrites;
use crate::spec::{HostAliasConfig, container_security_context};

/// The build container's name.
pub const BUILD_CONTAINER: &str = "build";
/// The helper container's name.
pub const HELPER_CONTAINER: &str = "helper";
/// The init container's name (attach mode prepares the shared volumes with it).
pub const INIT_PERMISSIONS_CONTAINER: &str = "init-permissions";
/// The label namespace the runner owns.
pub const LABEL_NAMESPACE: &str = "runner.gitlab.com";
/// The label that finds a runner's pods.
pub const MANAGER_ID_LABEL: &str = "manager.runner.gitlab.com/id-short";

/// What the pod is built from.
#[derive(Debug)]
pub struct PodInputs<'a> {
    pub options: &'a KubernetesOptions,
    pub job: &'a JobSpec,
    /// The runner's `name`.
    pub runner_name: &'a str,
    /// The first 8 characters of the runner token (`ShortDescription`).
    pub short_token: &'a str,
    /// The concurrency slot.
    pub slot: u32,
    /// The 8-character random name suffix.
    pub suffix: &'a str,
    /// The builds directory inside the containers.
    pub builds_dir: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The shell of the stage scripts.
    pub shell: Shell,
    /// The helper image.
    pub helper_image: &'a str,
    /// The job's settings after its variable overwrites ([`crate::overwrites::evaluate`]).
    pub overwrites: &'a Overwrites,
    /// `FF_USE_ADVANCED_POD_SPEC_CONFIGURATION`: apply the `[[pod_spec]]` patches.
    pub advanced_pod_spec: bool,
    /// The init-permissions container's command, when the stage strategy needs one.
    pub init_command: Option<Vec<String>>,
    /// Volumes the stage strategy adds (scripts, logs), besides the configured ones.
    pub extra_volumes: Vec<Volume>,
    /// Their mounts, first in every container (as official: scripts, logs, configured, repo).
    pub extra_mounts: Vec<VolumeMount>,
    /// Image pulls that failed so far per container name: each failure moves that container
    /// to its next pull policy ([`pull_policies`]).
    pub pull_failures: &'a BTreeMap<String, usize>,
    /// The job's registry credentials secret ([`crate::credentials`]), if one was made.
    pub credentials_secret: Option<&'a str>,
}

/// The pull policies each container of the job's pod tries in order, by container name
/// (`""`: the cluster's default): the build, helper and init-permissions containers follow
/// the job image's `pull_policy` (else the configured ones), each service its own, all within
/// `allowed_pull_policies`, as official.
pub fn pull_policies(
    options: &KubernetesOptions,
    job: &JobSpec,
) -> Result<BTreeMap<String, Vec<&'static str>>, KubernetesError> {
    let image_policies = job
        .image
        .as_ref()
        .map(|image| image.pull_policy.as_slice())
        .unwrap_or_default();
    let image = options.effective_pull_policies(image_policies)?;
    let mut map = BTreeMap::new();
    for name in [
        BUILD_CONTAINER,
        HELPER_CONTAINER,
        INIT_PERMISSIONS_CONTAINER,
    ] {
        map.insert(name.to_owned(), image.clone());
    }
    for (service, name) in job.services.iter().zip(service_container_names(job)) {
        map.insert(name, options.effective_pull_policies(&service.pull_policy)?);
    }
    Ok(map)
}

/// Whether `name` is a DNS-1123 label: `[a-z0-9-]`, alphanumeric at both ends, at most 63.
fn dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// The container names of the job's services, as the official runner names them: a service's
/// first alias that is a DNS-1123 label and not taken by an earlier service, else `svc-<n>`
/// (`n` counting the services named so). Aliases that are the names of the runner's own
/// containers are passed over too (the official runner would make an invalid pod).
pub fn service_container_names(job: &JobSpec) -> Vec<String> {
    let mut used: Vec<&str> = Vec::new();
    let mut unnamed = 0;
    let mut names = Vec::new();
    for service in &job.services {
        let mut chosen = None;
        for alias in &service.aliases {
            if used.contains(&alias.as_str()) {
                continue;
            }
            used.push(alias);
            let own = [
                BUILD_CONTAINER,
                HELPER_CONTAINER,
                INIT_PERMISSIONS_CONTAINER,
            ];
            if dns_label(alias) && !own.contains(&alias.as_str()) {
                chosen = Some(alias.clone());
                break;
            }
        }
        names.push(chosen.unwrap_or_else(|| {
            unnamed += 1;
            format!("svc-{}", unnamed - 1)
        }));
    }
    names
}

/// The `imagePullPolicy` of `container` after `failures` failed pulls.
fn pull_policy_for(
    policies: &BTreeMap<String, Vec<&'static str>>,
    failures: &BTreeMap<String, usize>,
    container: &str,
) -> Option<String> {
    let list = policies.get(container)?;
    let tried = failures.get(container).copied().unwrap_or(0);
    let policy = list.get(tried).or(list.last())?;
    (!policy.is_empty()).then(|| (*policy).to_owned())
}

/// `runner-<short>-project-<id>-concurrent-<slot>`.
pub fn project_unique_name(short_token: &str, project_id: u64, slot: u32) -> String {
    format!("runner-{short_token}-project-{project_id}-concurrent-{slot}")
}

/// `<pattern cut to 54>-<suffix>`.
pub fn resource_name(pattern: &str, suffix: &str) -> String {
    let cut: String = pattern.chars().take(63 - 8 - 1).collect();
    format!("{cut}-{suffix}")
}

/// 8 random characters from `[a-z0-9]`.
pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// A label value Kubernetes accepts: `[A-Za-z0-9_.-]`, alphanumeric at both ends, ≤ 63.
pub fn sanitize_label(value: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(['-', '_', '.']);
    let cut: String = trimmed.chars().take(63).collect();
    cut.trim_matches(['-', '_', '.']).to_owned()
}

/// Whether `key` is in a `runner.gitlab.com` label namespace (`x.runner.gitlab.com/…`).
fn reserved_label(key: &str) -> bool {
    let prefix = key.split('/').next().unwrap_or("").to_ascii_lowercase();
    prefix == LABEL_NAMESPACE || prefix.ends_with(&format!(".{LABEL_NAMESPACE}"))
}

/// A Go `time.Duration` string (`1h0m0s`, `30m0s`, `45s`), as in the timeout annotation.
pub fn go_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn expand(job: &JobSpec, text: &str) -> String {
    runnel_types::expand(text, |name| {
        job.variable(name)
            .map(|variable| variable.value.clone())
            .unwrap_or_default()
    })
}

fn variable(job: &JobSpec, key: &str) -> String {
    job.variable(key)
        .map(|v| v.value.clone())
        .unwrap_or_default()
}

/// The pod's labels.
pub fn labels(inputs: &PodInputs<'_>) -> BTreeMap<String, String> {
    let job = inputs.job;
    let unique = sanitize_label(&project_unique_name(
        inputs.short_token,
        job.info.project_id,
        inputs.slot,
    ));
    let ns = LABEL_NAMESPACE;
    let mut labels = BTreeMap::from([
        ("pod".to_owned(), unique.clone()),
        (format!("project.{ns}/id"), job.info.project_id.to_string()),
        (
            format!("project.{ns}/namespace-id"),
            sanitize_label(&variable(job, "CI_PROJECT_NAMESPACE_ID")),
        ),
        (
            format!("project.{ns}/name"),
            sanitize_label(&job.info.project_name),
        ),
        (
            format!("project.{ns}/namespace"),
            sanitize_label(&variable(job, "CI_PROJECT_NAMESPACE")),
        ),
        (
            format!("project.{ns}/root-namespace"),
            sanitize_label(&variable(job, "CI_PROJECT_ROOT_NAMESPACE")),
        ),
        (
            format!("project.{ns}/root-namespace-id"),
            job.info.root_namespace_id.to_string(),
        ),
        (format!("job.{ns}/pod"), unique),
        (
            format!("manager.{ns}/name"),
            sanitize_label(inputs.runner_name),
        ),
        (
            MANAGER_ID_LABEL.to_owned(),
            sanitize_label(inputs.short_token),
        ),
    ]);
    for (key, value) in &inputs.overwrites.pod_labels {
        if !reserved_label(key) {
            labels.insert(key.clone(), sanitize_label(&expand(job, value)));
        }
    }
    labels
}

/// The pod's annotations.
pub fn annotations(inputs: &PodInputs<'_>) -> BTreeMap<String, String> {
    let job = inputs.job;
    let ns = LABEL_NAMESPACE;
    let timeout = job.timeout.map_or(7200, |t| t.as_secs());
    let mut annotations = BTreeMap::from([
        (format!("job.{ns}/id"), job.id.to_string()),
        (format!("job.{ns}/url"), variable(job, "CI_JOB_URL")),
        (format!("job.{ns}/sha"), job.git.sha.clone()),
        (format!("job.{ns}/before_sha"), job.git.before_sha.clone()),
        (format!("job.{ns}/ref"), job.git.ref_name.clone()),
        (format!("job.{ns}/name"), job.info.name.clone()),
        (format!("job.{ns}/timeout"), go_duration(timeout)),
        (format!("project.{ns}/id"), job.info.project_id.to_string()),
    ]);
    for (key, value) in &inputs.overwrites.pod_annotations {
        annotations.insert(key.clone(), expand(job, value));
    }
    annotations
}

/// `sh -c <script>` starting the first shell found, which reads its script from stdin;
/// `umask 0000` first with `umask_0000` (the helper, so the build container can write
/// what it creates).
pub fn detect_shell_script(shell: Shell, umask_0000: bool) -> String {
    let candidates: &[&str] = match shell {
        Shell::Bash => &[
            "/usr/local/bin/bash",
            "/usr/bin/bash",
            "/bin/bash",
            "/bin/sh",
            "/busybox/sh",
        ],
        Shell::Sh => &["/bin/sh", "/busybox/sh"],
    };
    let mut script = String::new();
    if umask_0000 {
        script.push_str("umask 0000\n");
    }
    for (index, candidate) in candidates.iter().enumerate() {
        let keyword = if index == 0 { "if" } else { "elif" };
        script.push_str(&format!(
            "{keyword} [ -x {candidate} ]; then\n\texec {candidate}\n"
        ));
    }
    script.push_str("else\n\techo shell not found\n\texit 1\nfi\n");
    script
}

/// The exec command of a stage: read exactly `bytes` bytes of script from stdin and feed them
/// to the shell, so the script never appears in arguments and the stage does not depend on the
/// server passing on the end of stdin.
pub fn stage_command(shell: Shell, umask_0000: bool, bytes: usize) -> Vec<String> {
    let detect = detect_shell_script(shell, umask_0000);
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("head -c {bytes} | {{\n{detect}}}\n"),
    ]
}

fn quantities(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

fn resources(resources: &Resources) -> Option<ResourceRequirements> {
    (resources != &Resources::default()).then(|| ResourceRequirements {
        limits: quantities(&resources.limits),
        requests: quantities(&resources.requests),
        ..ResourceRequirements::default()
    })
}

/// The image name without tag or digest, for default service aliases.
fn image_path(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// The hostnames a service answers to: its aliases, else the image path with `/` → `-`.
pub fn service_hostnames(service: &ImageSpec) -> Vec<String> {
    let mut names = vec![image_path(&service.name).replace('/', "-")];
    for alias in &service.aliases {
        if !names.contains(alias) {
            names.push(alias.clone());
        }
    }
    names
}

/// Whether `image` passes `allowed` (globs, `*` within a path segment, `**` across): always
/// when the list is empty or the image is one of the runner's own (`internal`).
pub fn check_allowed(
    what: &str,
    option: &str,
    image: &str,
    allowed: &[String],
    internal: &[&str],
) -> Result<(), KubernetesError> {
    if allowed.is_empty() || internal.contains(&image) {
        return Ok(());
    }
    let matches = allowed.iter().any(|pattern| {
        globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .is_ok_and(|glob| glob.compile_matcher().is_match(image))
    });
    if matches {
        Ok(())
    } else {
        Err(KubernetesError::NotAllowed(format!(
            "the {what} {image:?} is not present on the list of allowed {option} ({}): check the runner's `allowed_{option}`",
            allowed.join(", ")
        )))
    }
}

/// The init container that prepares shared volumes, built as the official
/// `buildPermissionsInitContainer`: helper image, every volume mount, helper resources,
/// `init_permissions_container_security_context`; `command` is what it runs.
pub fn init_permissions_container(
    inputs: &PodInputs<'_>,
    command: Vec<String>,
    mounts: Vec<VolumeMount>,
    pull_policy: Option<String>,
) -> Container {
    let options = inputs.options;
    Container {
        name: INIT_PERMISSIONS_CONTAINER.to_owned(),
        image: Some(inputs.helper_image.to_owned()),
        image_pull_policy: pull_policy,
        command: Some(command),
        resources: resources(&inputs.overwrites.helper),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context(
            &options.security_defaults(),
            &options.init_permissions_container_security_context,
            &options.pod_security_context,
        )),
        ..Container::default()
    }
}

/// Where a container's user or group id comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdSource {
    Container,
    Pod,
    Job,
}

impl IdSource {
    fn describe(self) -> &'static str {
        match self {
            IdSource::Container => "container security context",
            IdSource::Pod => "pod security context",
            IdSource::Job => "job configuration",
        }
    }
}

/// A job's user or group id checked against its allow list, as official: an empty text asks
/// for nothing; root only when listed; any other id when the list is empty or lists it.
fn job_id(kind: &str, what: &str, text: &str, allowed: &[&str]) -> Result<Option<i64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let id = text
        .parse::<i64>()
        .map_err(|error| format!("failed to parse {kind}: {error}"))?;
    if id < 0 {
        return Err(format!(
            "failed to parse {kind}: negative values not allowed"
        ));
    }
    let listed = allowed
        .iter()
        .any(|entry| entry.trim().parse::<i64>().ok() == Some(id));
    if listed || (id != 0 && allowed.is_empty()) {
        Ok(Some(id))
    } else {
        Err(format!(
            "validating {kind}: {what} \"{text}\" is not in the allowed list: [{}]",
            allowed.join(" ")
        ))
    }
}

/// The user and group ids `container` runs as, as the official `getContainerUIDGID` picks
/// them: its security context table's, else the pod's, else the job's `kubernetes:user`
/// (`uid[:gid]`) within `allowed_users`/`allowed_groups`. Also the lines the job log gets
/// about a job's request that is not used.
pub fn run_as(
    options: &KubernetesOptions,
    table: &crate::spec::ContainerSecurityContextConfig,
    job_user: &str,
    container: &str,
) -> (Option<i64>, Option<i64>, Vec<String>) {
    let (uid_text, gid_text) = job_user.split_once(':').unwrap_or((job_user, ""));
    let pod = &options.pod_security_context;
    let mut notes = Vec::new();
    let allowed_users = crate::options::StringOrList::entries(&options.allowed_users);
    let allowed_groups = crate::options::StringOrList::entries(&options.allowed_groups);
    let mut pick = |configured: Option<i64>,
                    pod_value: Option<i64>,
                    kind: &str,
                    what: &str,
                    text: &str,
                    allowed: &[&str]| {
        let (id, source) = if let Some(id) = configured {
            (Some(id), IdSource::Container)
        } else if let Some(id) = pod_value {
            (Some(id), IdSource::Pod)
        } else {
            let id = job_id(kind, what, text, allowed).unwrap_or_else(|error| {
                notes.push(format!(
                    "WARNING: Error parsing '{}' from image options for container \"{container}\", using the configured security context: {error}",
                    kind.to_ascii_lowercase()
                ));
                None
            });
            (id, IdSource::Job)
        };
        if source != IdSource::Job && !text.is_empty() {
            notes.push(format!(
                "Overriding {what} for container \"{container}\" to \"{text}\" is not allowed: {what} is set to {} in {}",
                id.unwrap_or_default(),
                source.describe()
            ));
        }
        id
    };
    let uid = pick(
        table.run_as_user,
        pod.run_as_user,
        "UID",
        "user",
        uid_text,
        &allowed_users,
    );
    let gid = pick(
        table.run_as_group,
        pod.run_as_group,
        "GID",
        "group",
        gid_text,
        &allowed_groups,
    );
    (uid, gid, notes)
}

/// What the job log says about the `kubernetes:user` requests of the job's image and services
/// that are not used.
pub fn run_as_notes(options: &KubernetesOptions, job: &JobSpec) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(image) = &job.image {
        let user = expand(job, &image.kubernetes_user);
        notes.extend(
            run_as(
                options,
                &options.build_container_security_context,
                &user,
                BUILD_CONTAINER,
            )
            .2,
        );
    }
    for (service, name) in job.services.iter().zip(service_container_names(job)) {
        let user = expand(job, &service.kubernetes_user);
        notes.extend(
            run_as(
                options,
                &options.service_container_security_context,
                &user,
                &name,
            )
            .2,
        );
    }
    notes
}

/// `context` with the run-as ids [`run_as`] picked.
fn with_run_as(
    mut context: k8s_openapi::api::core::v1::SecurityContext,
    (uid, gid, _): (Option<i64>, Option<i64>, Vec<String>),
) -> k8s_openapi::api::core::v1::SecurityContext {
    if uid.is_some() {
        context.run_as_user = uid;
    }
    if gid.is_some() {
        context.run_as_group = gid;
    }
    context
}

/// `key[=value]` → effect as tolerations (`Equal` with a value, else `Exists`).
pub fn tolerations(map: &BTreeMap<String, String>) -> Vec<Toleration> {
    map.iter()
        .map(|(key_value, effect)| {
            let effect = (!effect.is_empty()).then(|| effect.clone());
            match key_value.split_once('=') {
                Some((key, value)) => Toleration {
                    key: Some(key.to_owned()),
                    value: Some(value.to_owned()),
                    operator: Some("Equal".to_owned()),
                    effect,
                    ..Toleration::default()
                },
                None => Toleration {
                    key: (!key_value.is_empty()).then(|| key_value.clone()),
                    operator: Some("Exists".to_owned()),
                    effect,
                    ..Toleration::default()
                },
            }
        })
        .collect()
}

/// The job's pod.
pub fn build_pod(inputs: &PodInputs<'_>) -> Result<Pod, KubernetesError> {
    let options = inputs.options;
    let job = inputs.job;
    let overwrites = inputs.overwrites;
    let default_image = options
        .image
        .as_ref()
        .map(|image| expand(job, image))
        .filter(|name| !name.is_empty());
    let job_image = job
        .image
        .as_ref()
        .map(|image| expand(job, &image.name))
        .filter(|name| !name.is_empty());
    let internal: Vec<&str> = [default_image.as_deref(), Some(inputs.helper_image)]
        .into_iter()
        .flatten()
        .collect();
    let image = job_image
        .clone()
        .or_else(|| default_image.clone())
        .ok_or(KubernetesError::NoImage)?;
    check_allowed(
        "image",
        "images",
        &image,
        &options.allowed_images,
        &internal,
    )?;
    // `entrypoint: [""]` asks for what the build container does anyway (its command is the
    // shell, so the image's entrypoint never runs); any other entrypoint is refused.
    if job
        .image
        .as_ref()
        .is_some_and(|spec| spec.entrypoint.iter().any(|part| !part.is_empty()))
    {
        return Err(KubernetesError::Unsupported(
            "the job's `image:entrypoint` is not supported by Runnel's kubernetes executor yet (only `entrypoint: [\"\"]`, which the build container's shell command already means)"
                .to_owned(),
        ));
    }
    let job_user = job
        .image
        .as_ref()
        .map(|image| expand(job, &image.kubernetes_user))
        .unwrap_or_default();
    let policies = pull_policies(options, job)?;
    let pull_policy = |container: &str| pull_policy_for(&policies, inputs.pull_failures, container);
    let pod_security = &options.pod_security_context;
    let defaults = options.security_defaults();
    let expander = |text: &str| expand(job, text);
    let mut mounts = inputs.extra_mounts.clone();
    mounts.extend(options.volumes.mounts(&expander));
    // The builds directory gets the `repo` emptyDir unless a configured volume is mounted there.
    let builds_volume_required = !mounts.iter().any(|m| m.mount_path == inputs.builds_dir);
    if builds_volume_required {
        mounts.push(VolumeMount {
            name: "repo".to_owned(),
            mount_path: inputs.builds_dir.to_owned(),
            ..VolumeMount::default()
        });
    }
    let lifecycle = options.container_lifecycle.to_api();
    let shell_command = |umask| {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            detect_shell_script(inputs.shell, umask),
        ]
    };
    let build = Container {
        name: BUILD_CONTAINER.to_owned(),
        image: Some(image),
        image_pull_policy: pull_policy(BUILD_CONTAINER),
        command: Some(shell_command(false)),
        resources: resources(&overwrites.build),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(with_run_as(
            container_security_context(
                &defaults,
                &options.build_container_security_context,
                pod_security,
            ),
            run_as(
                options,
                &options.build_container_security_context,
                &job_user,
                BUILD_CONTAINER,
            ),
        )),
        lifecycle: lifecycle.clone(),
        stdin: Some(true),
        ..Container::default()
    };
    let helper = Container {
        name: HELPER_CONTAINER.to_owned(),
        image: Some(inputs.helper_image.to_owned()),
        image_pull_policy: pull_policy(HELPER_CONTAINER),
        command: Some(shell_command(true)),
        resources: resources(&overwrites.helper),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(container_security_context(
            &defaults,
            &options.helper_container_security_context,
            pod_security,
        )),
        lifecycle: lifecycle.clone(),
        stdin: Some(true),
        ..Container::default()
    };
    let mut containers = vec![build, helper];
    let mut host_aliases = Vec::new();
    let service_names = service_container_names(job);
    for ((index, service), container_name) in job.services.iter().enumerate().zip(service_names) {
        let name = expand(job, &service.name);
        check_allowed(
            "service",
            "services",
            &name,
            &options.allowed_services,
            &internal,
        )?;
        let env: Vec<EnvVar> = service
            .variables
            .iter()
            .map(|variable| EnvVar {
                name: variable.key.clone(),
                value: Some(variable.value.clone()),
                ..EnvVar::default()
            })
            .collect();
        containers.push(Container {
            name: container_name.clone(),
            image: Some(name.clone()),
            image_pull_policy: pull_policy(&container_name),
            command: (!service.entrypoint.is_empty()).then(|| service.entrypoint.clone()),
            args: (!service.command.is_empty()).then(|| service.command.clone()),
            env: (!env.is_empty()).then_some(env),
            resources: resources(overwrites.service_resources(index)),
            volume_mounts: Some(mounts.clone()),
            security_context: Some(with_run_as(
                container_security_context(
                    &defaults,
                    &options.service_container_security_context,
                    pod_security,
                ),
                run_as(
                    options,
                    &options.service_container_security_context,
                    &expand(job, &service.kubernetes_user),
                    &container_name,
                ),
            )),
            lifecycle: lifecycle.clone(),
            stdin: Some(true),
            ..Container::default()
        });
        host_aliases.push(HostAlias {
            ip: "127.0.0.1".to_owned(),
            hostnames: Some(service_hostnames(&ImageSpec {
                name,
                ..service.clone()
            })),
        });
    }
    // Configured aliases come after the services', which must win name resolution.
    host_aliases.extend(options.host_aliases.iter().map(HostAliasConfig::to_api));
    let init_containers = inputs.init_command.clone().map(|command| {
        vec![init_permissions_container(
            inputs,
            command,
            mounts.clone(),
            pull_policy(INIT_PERMISSIONS_CONTAINER),
        )]
    });
    let mut volumes = options.volumes.volumes(&expander);
    if builds_volume_required {
        volumes.push(Volume {
            name: "repo".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    volumes.extend(inputs.extra_volumes.iter().cloned());
    let unique = project_unique_name(inputs.short_token, job.info.project_id, inputs.slot);
    let timeout = job.timeout.map_or(7200, |t| t.as_secs());
    let deadline = i64::try_from(timeout).unwrap_or(i64::MAX).saturating_add(1);
    let active_deadline = job
        .variable("FF_USE_POD_ACTIVE_DEADLINE_SECONDS")
        .is_none_or(|v| v.value != "false")
        .then_some(deadline);
    let image_pull_secrets: Vec<LocalObjectReference> =
        if options.use_service_account_image_pull_secrets {
            Vec::new()
        } else {
            options
                .image_pull_secrets
                .iter()
                .map(String::as_str)
                .chain(inputs.credentials_secret)
                .map(|name| LocalObjectReference {
                    name: name.to_owned(),
                })
                .collect()
        };
    let dns_policy =
        crate::spec::dns_policy(options.dns_policy.as_deref().unwrap_or("")).map_err(|reason| {
            KubernetesError::InvalidOption {
                key: "dns_policy",
                reason,
            }
        })?;
    let tolerations = tolerations(&overwrites.node_tolerations);
    let spec = PodSpec {
        volumes: Some(volumes),
        scheduler_name: options.scheduler_name.clone().filter(|s| !s.is_empty()),
        service_account_name: overwrites.service_account.clone(),
        automount_service_account_token: options.automount_service_account_token,
        restart_policy: Some("Never".to_owned()),
        node_selector: (!overwrites.node_selector.is_empty())
            .then(|| overwrites.node_selector.clone()),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        init_containers,
        containers,
        termination_grace_period_seconds: options.pod_termination_grace_period_seconds,
        active_deadline_seconds: active_deadline,
        image_pull_secrets: (!image_pull_secrets.is_empty()).then_some(image_pull_secrets),
        security_context: pod_security.to_api(),
        host_aliases: (!host_aliases.is_empty()).then_some(host_aliases),
        affinity: options.affinity.to_api(),
        dns_policy: Some(dns_policy.to_owned()),
        dns_config: options.dns_config.to_api(),
        runtime_class_name: options.runtime_class_name.clone().filter(|s| !s.is_empty()),
        priority_class_name: options
            .priority_class_name
            .clone()
            .filter(|s| !s.is_empty()),
        resources: resources(&overwrites.pod),
        ..PodSpec::default()
    };
    let spec = if inputs.advanced_pod_spec && !options.loaded_patches.is_empty() {
        apply_patches(spec, options)?
    } else {
        spec
    };
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(resource_name(&unique, inputs.suffix)),
            namespace: Some(inputs.namespace.to_owned()),
            labels: Some(labels(inputs)),
            annotations: Some(annotations(inputs)),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The `[[pod_spec]]` patches applied in order to the generated spec.
fn apply_patches(spec: PodSpec, options: &KubernetesOptions) -> Result<PodSpec, KubernetesError> {
    let mut value =
        serde_json::to_value(&spec).map_err(|error| KubernetesError::InvalidOption {
            key: "pod_spec",
            reason: format!("the generated pod spec cannot be serialized: {error}"),
        })?;
    for (name, patch) in &options.loaded_patches {
        crate::patch::apply(&mut value, patch, name)?;
    }
    serde_json::from_value(value).map_err(|error| KubernetesError::InvalidOption {
        key: "pod_spec",
        reason: format!("the patched pod spec is not a valid PodSpec: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runnel_types::{JobInfo, Variable};
    use serde_json::json;

    use super::*;

    fn job() -> JobSpec {
        let var = |key: &str, value: &str| Variable {
            key: key.to_owned(),
            value: value.to_owned(),
            public: true,
            file: false,
            masked: false,
            raw: false,
            internal: false,
        };
        let mut job = JobSpec {
            id: runnel_types::JobId(1001),
            token: runnel_types::JobToken::new("glcbt-secret".to_owned()),
            allow_git_fetch: false,
            run: String::new(),
            inputs: Vec::new(),
            secrets: Vec::new(),
            info: JobInfo {
                name: "test job".to_owned(),
                project_id: 42,
                project_name: "My Project!".to_owned(),
                root_namespace_id: 7,
                ..JobInfo::default()
            },
            git: Default::default(),
            timeout: Some(Duration::from_secs(3600)),
            variables: vec![
                var("CI_PROJECT_NAMESPACE", "group/sub"),
                var("CI_PROJECT_NAMESPACE_ID", "9"),
                var("CI_PROJECT_ROOT_NAMESPACE", "group"),
                var(
                    "CI_JOB_URL",
                    "https://gitlab.example.com/group/sub/p/-/jobs/1001",
                ),
                var("TEAM", "blue"),
                var("SECRET_PASSWORD", "hunter2"),
            ],
            steps: vec![],
            image: Some(ImageSpec {
                name: "alpine:3.20".to_owned(),
                ..ImageSpec::default()
            }),
            services: vec![
                ImageSpec {
                    name: "postgres:16".to_owned(),
                    aliases: vec!["db".to_owned()],
                    variables: vec![var("POSTGRES_PASSWORD", "pw")],
                    ..ImageSpec::default()
                },
                ImageSpec {
                    name: "registry.example.com/tools/redis:7".to_owned(),
                    command: vec!["redis-server".to_owned(), "--save".to_owned()],
                    ..ImageSpec::default()
                },
            ],
            artifacts: vec![],
            cache: vec![],
            credentials: vec![],
            dependencies: vec![],
            features: Default::default(),
            hooks: vec![],
        };
        job.git.sha = "abc123".to_owned();
        job.git.before_sha = "000000".to_owned();
        job.git.ref_name = "main".to_owned();
        job
    }

    fn options(text: &str) -> KubernetesOptions {
        KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            text.parse::<toml::Table>().unwrap(),
        ))
        .unwrap()
    }

    fn inputs<'a>(
        options: &'a KubernetesOptions,
        job: &'a JobSpec,
        overwrites: &'a Overwrites,
    ) -> PodInputs<'a> {
        PodInputs {
            options,
            job,
            runner_name: "my runner",
            short_token: "xyzABC12",
            slot: 3,
            suffix: "a1b2c3d4",
            builds_dir: "/builds",
            namespace: "ci",
            shell: Shell::Bash,
            helper_image: "runnel-helper:latest",
            overwrites,
            advanced_pod_spec: options.advanced_pod_spec(job),
            init_command: None,
            extra_volumes: Vec::new(),
            extra_mounts: Vec::new(),
            pull_failures: &NO_FAILURES,
            credentials_secret: None,
        }
    }

    static NO_FAILURES: BTreeMap<String, usize> = BTreeMap::new();

    /// The pod built for `job` with `options`.
    fn pod(options: &KubernetesOptions, job: &JobSpec) -> Result<Pod, KubernetesError> {
        let overwrites = crate::overwrites::evaluate(options, job)?;
        build_pod(&inputs(options, job, &overwrites))
    }

    fn pod_json(text: &str, job: &JobSpec) -> serde_json::Value {
        serde_json::to_value(pod(&options(text), job).unwrap()).unwrap()
    }

    #[test]
    fn the_pod_matches_the_official_layout() {
        let options = options(
            "image = \"busybox\"\ncpu_limit = \"1\"\nmemory_request = \"128Mi\"\nhelper_memory_limit = \"256Mi\"\nservice_cpu_request = \"100m\"\nprivileged = true\nservice_account = \"ci-sa\"\nimage_pull_secrets = [\"regcred\"]\npull_policy = \"if-not-present\"\npod_termination_grace_period_seconds = 5\n[node_selector]\n\"kubernetes.io/arch\" = \"amd64\"\n[pod_labels]\nteam = \"$TEAM\"\n\"manager.runner.gitlab.com/name\" = \"hijack\"\n[pod_annotations]\n\"example.com/owner\" = \"$TEAM-team\"\n",
        );
        let job = job();
        let pod = pod(&options, &job).unwrap();
        let text = serde_json::to_string_pretty(&pod).unwrap();
        assert!(!text.contains("hunter2"), "no job variable in the pod spec");
        assert!(
            !text.contains("hijack"),
            "reserved labels cannot be overwritten"
        );
        insta::assert_snapshot!(text);
    }

    #[test]
    fn names_follow_generate_name_for_k8s_resources() {
        let long = project_unique_name("xyzABC12", 123_456_789_012, 12);
        assert_eq!(long, "runner-xyzABC12-project-123456789012-concurrent-12");
        assert_eq!(
            resource_name(&long, "abcdefgh"),
            "runner-xyzABC12-project-123456789012-concurrent-12-abcdefgh"
        );
        let very_long = "x".repeat(80);
        assert_eq!(resource_name(&very_long, "abcdefgh").len(), 63);
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 8);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }

    #[test]
    fn labels_are_sanitized_like_the_official_ones() {
        assert_eq!(sanitize_label("My Project!"), "My_Project");
        assert_eq!(sanitize_label("-._abc._-"), "abc");
        assert_eq!(sanitize_label(&"a".repeat(70)).len(), 63);
        assert!(reserved_label("manager.runner.gitlab.com/name"));
        assert!(reserved_label("runner.gitlab.com/x"));
        assert!(!reserved_label("example.com/runner.gitlab.com"));
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(5400), "1h30m0s");
        assert_eq!(go_duration(90), "1m30s");
        assert_eq!(go_duration(5), "5s");
    }

    #[test]
    fn job_pull_policies_are_limited_by_allowed_pull_policies() {
        // Official pull_policies_test facts: the job's policies must be within
        // allowed_pull_policies (else within pull_policy); the helper follows the job image.
        let mut job = job();
        job.services[0].pull_policy = vec!["always".to_owned()];
        let error = pod(&options(""), &job).unwrap_err();
        assert_eq!(
            error.to_string(),
            "pull_policy ([Always]) defined in GitLab pipeline config is not one of the allowed_pull_policies ([])"
        );
        assert_eq!(
            error.failure_reason(),
            runnel_types::FailureReason::RunnerConfigurationError
        );
        let spec = pod_json(
            "pull_policy = \"if-not-present\"\nallowed_pull_policies = [\"always\", \"if-not-present\"]\n",
            &job,
        );
        let containers = &spec["spec"]["containers"];
        assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(containers[2]["imagePullPolicy"], "Always");
        assert_eq!(containers[3]["imagePullPolicy"], "IfNotPresent");
        job.image.as_mut().unwrap().pull_policy = vec!["never".to_owned()];
        let error = pod(&options("pull_policy = \"always\"\n"), &job).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("allowed_pull_policies ([Always])"),
            "{error}"
        );
        let spec = pod_json(
            "pull_policy = \"always\"\nallowed_pull_policies = [\"always\", \"never\"]\n",
            &job,
        );
        let containers = &spec["spec"]["containers"];
        assert_eq!(containers[0]["imagePullPolicy"], "Never");
        assert_eq!(containers[1]["imagePullPolicy"], "Never");
        assert_eq!(containers[2]["imagePullPolicy"], "Always");
        assert_eq!(containers[3]["imagePullPolicy"], "Always");
    }

    #[test]
    fn several_pull_policies_are_tried_in_order_per_container() {
        // Official pull manager facts: each container has its own list (build, helper and
        // init-permissions the job image's, services their own) and moves to the next
        // policy after each failed pull of its image.
        let options = options(
            "pull_policy = [\"always\", \"if-not-present\"]\nallowed_pull_policies = [\"always\", \"if-not-present\", \"never\"]\n",
        );
        let mut job = job();
        job.services[1].pull_policy = vec!["never".to_owned()];
        let policies = pull_policies(&options, &job).unwrap();
        assert_eq!(policies["build"], ["Always", "IfNotPresent"]);
        assert_eq!(policies["init-permissions"], ["Always", "IfNotPresent"]);
        assert_eq!(
            policies["svc-0"],
            ["Never"],
            "the second service has no alias"
        );
        let overwrites = crate::overwrites::evaluate(&options, &job).unwrap();
        let failures = BTreeMap::from([("build".to_owned(), 1)]);
        let mut inputs = inputs(&options, &job, &overwrites);
        inputs.pull_failures = &failures;
        let spec = serde_json::to_value(build_pod(&inputs).unwrap()).unwrap();
        let containers = &spec["spec"]["containers"];
        assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(containers[1]["imagePullPolicy"], "Always");
        assert_eq!(containers[2]["imagePullPolicy"], "Always");
        assert_eq!(containers[3]["imagePullPolicy"], "Never");
        // A list the allowed policies cut to nothing is refused naming both.
        let error = pull_policies(
            &super::tests::options(
                "pull_policy = [\"always\", \"never\"]\nallowed_pull_policies = [\"if-not-present\"]\n",
            ),
            &job,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("pull_policy ([Always Never])"),
            "{error}"
        );
    }

    #[test]
    fn allowed_images_and_services_are_globs_sparing_the_runners_own_images() {
        let job = job();
        let error = pod(&options("allowed_images = [\"debian:*\"]\n"), &job).unwrap_err();
        assert!(error.to_string().contains("\"alpine:3.20\""), "{error}");
        assert_eq!(
            error.failure_reason(),
            runnel_types::FailureReason::RunnerConfigurationError
        );
        pod(&options("allowed_images = [\"alpine:*\"]\n"), &job).unwrap();
        let error = pod(&options("allowed_services = [\"postgres:*\"]\n"), &job).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("registry.example.com/tools/redis:7"),
            "{error}"
        );
        pod(
            &options("allowed_services = [\"postgres:*\", \"registry.example.com/**\"]\n"),
            &job,
        )
        .unwrap();
        // The configured default image is always allowed.
        let mut no_image = job.clone();
        no_image.image = None;
        pod(
            &options("image = \"busybox\"\nallowed_images = [\"debian:*\"]\n"),
            &no_image,
        )
        .unwrap();
    }

    #[test]
    fn security_contexts_follow_get_container_security_context() {
        // Official facts: NET_RAW is dropped from every container by default; cap_add puts a
        // capability back; a container table's capabilities replace add/drop list by list;
        // privileged and allow_privilege_escalation fall back to the runner-wide keys; the
        // run-as ids fall back to the pod security context.
        let job = job();
        let spec = pod_json("", &job);
        for container in spec["spec"]["containers"].as_array().unwrap() {
            assert_eq!(
                container["securityContext"],
                json!({"capabilities": {"drop": ["NET_RAW"]}})
            );
        }
        let spec = pod_json(
            r#"privileged = true
allow_privilege_escalation = false
cap_add = ["NET_RAW", "SYS_TIME"]
cap_drop = ["CHOWN"]
[pod_security_context]
run_as_user = 1000
run_as_group = 3000
fs_group = 2000
run_as_non_root = true
supplemental_groups = [5, 6]
selinux_type = "spc_t"
[pod_security_context.seccomp_profile]
type = "RuntimeDefault"
[build_container_security_context]
run_as_user = 65534
privileged = false
read_only_root_filesystem = true
proc_mount = "unmasked"
[build_container_security_context.capabilities]
drop = ["ALL"]
[helper_container_security_context]
allow_privilege_escalation = true
[helper_container_security_context.app_armor_profile]
type = "Localhost"
localhost_profile = "k8s-helper"
[service_container_security_context.capabilities]
add = ["NET_ADMIN"]
"#,
            &job,
        );
        assert_eq!(
            spec["spec"]["securityContext"],
            json!({"fsGroup": 2000, "runAsGroup": 3000, "runAsNonRoot": true, "runAsUser": 1000,
                   "supplementalGroups": [5, 6], "seLinuxOptions": {"type": "spc_t"},
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        let containers = &spec["spec"]["containers"];
        assert_eq!(
            containers[0]["securityContext"],
            json!({"allowPrivilegeEscalation": false,
                   "capabilities": {"add": ["NET_RAW", "SYS_TIME"], "drop": ["ALL"]},
                   "privileged": false, "procMount": "Unmasked", "readOnlyRootFilesystem": true,
                   "runAsGroup": 3000, "runAsUser": 65534})
        );
        assert_eq!(
            containers[1]["securityContext"],
            json!({"allowPrivilegeEscalation": true,
                   "appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-helper"},
                   "capabilities": {"add": ["NET_RAW", "SYS_TIME"], "drop": ["CHOWN"]},
                   "privileged": true, "runAsGroup": 3000, "runAsUser": 1000})
        );
        assert_eq!(
            containers[2]["securityContext"]["capabilities"],
            json!({"add": ["NET_ADMIN"], "drop": ["CHOWN"]})
        );
        let bad = KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            "[build_container_security_context]\nproc_mount = \"sometimes\"\n"
                .parse::<toml::Table>()
                .unwrap(),
        ))
        .unwrap_err();
        assert!(bad.to_string().contains("proc_mount"), "{bad}");
    }

    #[test]
    fn volumes_are_mounted_in_every_container_in_the_official_order() {
        let job = job();
        let spec = pod_json(
            r#"[[volumes.host_path]]
name = "docker"
mount_path = "/var/run/docker.sock"
read_only = true
[[volumes.host_path]]
name = "old-syntax"
mount_path = "/data"
host_path = "/srv/data"
sub_path = "$TEAM"
[[volumes.secret]]
name = "tls"
mount_path = "/etc/tls"
[volumes.secret.items]
"tls.crt" = "cert.pem"
[[volumes.pvc]]
name = "cache-$TEAM"
mount_path = "/cache"
[[volumes.pvc]]
name = "cache-$TEAM"
mount_path = "/cache2"
[[volumes.config_map]]
name = "settings"
mount_path = "/etc/settings"
read_only = true
[[volumes.empty_dir]]
name = "scratch"
mount_path = "/scratch"
medium = "Memory"
size_limit = "1Gi"
[[volumes.csi]]
name = "inline"
mount_path = "/csi"
driver = "secrets-store.csi.k8s.io"
fs_type = "ext4"
[volumes.csi.volume_attributes]
secretProviderClass = "vault"
[[volumes.nfs]]
name = "share"
mount_path = "/share"
server = "nfs.example.com"
path = "/exports"
read_only = true
"#,
            &job,
        );
        assert_eq!(
            spec["spec"]["volumes"],
            json!([
                {"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}},
                {"name": "old-syntax", "hostPath": {"path": "/srv/data"}},
                {"name": "tls", "secret": {"secretName": "tls", "items": [{"key": "tls.crt", "path": "cert.pem"}]}},
                {"name": "cache-blue", "persistentVolumeClaim": {"claimName": "cache-blue"}},
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                {"name": "inline", "csi": {"driver": "secrets-store.csi.k8s.io", "fsType": "ext4", "readOnly": false, "volumeAttributes": {"secretProviderClass": "vault"}}},
                {"name": "share", "nfs": {"path": "/exports", "readOnly": true, "server": "nfs.example.com"}},
                {"name": "repo", "emptyDir": {}},
            ])
        );
        let expected_mounts = json!([
            {"name": "docker", "mountPath": "/var/run/docker.sock", "readOnly": true},
            {"name": "old-syntax", "mountPath": "/data", "subPath": "blue"},
            {"name": "tls", "mountPath": "/etc/tls"},
            {"name": "cache-blue", "mountPath": "/cache"},
            {"name": "cache-blue", "mountPath": "/cache2"},
            {"name": "settings", "mountPath": "/etc/settings", "readOnly": true},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "inline", "mountPath": "/csi"},
            {"name": "share", "mountPath": "/share", "readOnly": true},
            {"name": "repo", "mountPath": "/builds"},
        ]);
        for container in spec["spec"]["containers"].as_array().unwrap() {
            assert_eq!(
                container["volumeMounts"], expected_mounts,
                "{}",
                container["name"]
            );
        }
        // A configured volume at the builds directory replaces the `repo` emptyDir.
        let spec = pod_json(
            "[[volumes.pvc]]\nname = \"builds\"\nmount_path = \"/builds\"\n",
            &job,
        );
        let names: Vec<&str> = spec["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["builds"]);
        let bad = KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            "[[volumes.empty_dir]]\nname = \"a\"\nmount_path = \"/a\"\n[[volumes.host_path]]\nname = \"a\"\nmount_path = \"/b\"\n"
                .parse::<toml::Table>()
                .unwrap(),
        ))
        .unwrap_err();
        assert!(
            bad.to_string().contains("two volumes are named `a`"),
            "{bad}"
        );
        let typo = KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            "[[volumes.empty_dir]]\nname = \"a\"\nmount_path = \"/a\"\nsizelimit = \"1G\"\n"
                .parse::<toml::Table>()
                .unwrap(),
        ))
        .unwrap_err();
        assert!(typo.to_string().contains("sizelimit"), "{typo}");
    }

    #[test]
    fn scheduling_keys_reach_the_pod_spec() {
        let job = job();
        let spec = pod_json(
            r#"scheduler_name = "custom"
priority_class_name = "ci"
runtime_class_name = "gvisor"
automount_service_account_token = false
dns_policy = "none"
use_service_account_image_pull_secrets = true
image_pull_secrets = ["ignored-by-the-option"]
pod_cpu_limit = "4"
pod_memory_request = "1Gi"
[node_tolerations]
"node-role=ci" = "NoSchedule"
"dedicated" = ""
"spot=true" = "NoExecute"
[dns_config]
nameservers = ["1.2.3.4"]
searches = ["ns1.svc.cluster-domain.example"]
[[dns_config.options]]
name = "ndots"
value = "2"
[[dns_config.options]]
name = "edns0"
[[host_aliases]]
ip = "10.0.0.1"
hostnames = ["registry.internal", "mirror.internal"]
[affinity.node_affinity.required_during_scheduling_ignored_during_execution]
[[affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms]]
[[affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms.match_expressions]]
key = "kubernetes.io/e2e-az-name"
operator = "In"
values = ["e2e-az1", "e2e-az2"]
[[affinity.node_affinity.preferred_during_scheduling_ignored_during_execution]]
weight = 100
[affinity.node_affinity.preferred_during_scheduling_ignored_during_execution.preference]
[[affinity.node_affinity.preferred_during_scheduling_ignored_during_execution.preference.match_expressions]]
key = "cpu_speed"
operator = "In"
values = ["fast"]
[[affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution]]
weight = 50
[affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution.pod_affinity_term]
topology_key = "kubernetes.io/hostname"
[affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution.pod_affinity_term.label_selector.match_labels]
job = "ci"
[[affinity.pod_affinity.required_during_scheduling_ignored_during_execution]]
topology_key = "zone"
namespaces = ["ci"]
[[affinity.pod_affinity.required_during_scheduling_ignored_during_execution.label_selector.match_expressions]]
key = "app"
operator = "Exists"
[container_lifecycle.pre_stop.exec]
command = ["sleep", "5"]
[container_lifecycle.post_start.http_get]
port = 8080
path = "/ready"
scheme = "HTTP"
"#,
            &job,
        );
        let spec = &spec["spec"];
        assert_eq!(spec["schedulerName"], "custom");
        assert_eq!(spec["priorityClassName"], "ci");
        assert_eq!(spec["runtimeClassName"], "gvisor");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["dnsPolicy"], "None");
        assert!(spec.get("imagePullSecrets").is_none());
        assert_eq!(
            spec["resources"],
            json!({"limits": {"cpu": "4"}, "requests": {"memory": "1Gi"}})
        );
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "dedicated", "operator": "Exists"},
                {"effect": "NoSchedule", "key": "node-role", "operator": "Equal", "value": "ci"},
                {"effect": "NoExecute", "key": "spot", "operator": "Equal", "value": "true"},
            ])
        );
        assert_eq!(
            spec["dnsConfig"],
            json!({"nameservers": ["1.2.3.4"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}], "searches": ["ns1.svc.cluster-domain.example"]})
        );
        // Service aliases first: the configured ones must not shadow them.
        assert_eq!(spec["hostAliases"][0]["ip"], "127.0.0.1");
        assert_eq!(
            spec["hostAliases"][2],
            json!({"ip": "10.0.0.1", "hostnames": ["registry.internal", "mirror.internal"]})
        );
        assert_eq!(
            spec["affinity"],
            json!({
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/e2e-az-name", "operator": "In", "values": ["e2e-az1", "e2e-az2"]}]}
                    ]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "preference": {"matchExpressions": [{"key": "cpu_speed", "operator": "In", "values": ["fast"]}]}}
                    ]
                },
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "namespaces": ["ci"], "topologyKey": "zone"}
                ]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"job": "ci"}}, "topologyKey": "kubernetes.io/hostname"}}
                ]}
            })
        );
        for container in spec["containers"].as_array().unwrap() {
            assert_eq!(
                container["lifecycle"],
                json!({"postStart": {"httpGet": {"httpHeaders": [], "path": "/ready", "port": 8080, "scheme": "HTTP"}},
                       "preStop": {"exec": {"command": ["sleep", "5"]}}})
            );
        }
        let bad = KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            "dns_policy = \"cluster\"\n".parse::<toml::Table>().unwrap(),
        ))
        .unwrap_err();
        assert!(
            bad.to_string().contains("cluster-first-with-host-net"),
            "{bad}"
        );
    }

    #[test]
    fn overwrites_reach_the_pod() {
        let mut job = job();
        for (key, value) in [
            ("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "deployer"),
            ("KUBERNETES_POD_ANNOTATIONS_1", "example.com/reason=release"),
            ("KUBERNETES_POD_LABELS_1", "stage=deploy"),
            ("KUBERNETES_NODE_SELECTOR_1", "pool=large"),
            ("KUBERNETES_NODE_TOLERATIONS_1", "gpu:NoSchedule"),
            ("KUBERNETES_MEMORY_LIMIT", "2Gi"),
            ("KUBERNETES_HELPER_CPU_LIMIT", "500m"),
        ] {
            job.variables.push(Variable {
                key: key.to_owned(),
                value: value.to_owned(),
                public: true,
                file: false,
                masked: false,
                raw: false,
                internal: false,
            });
        }
        let spec = pod_json(
            r#"service_account = "ci"
service_account_overwrite_allowed = ".*"
pod_annotations_overwrite_allowed = ".*"
pod_labels_overwrite_allowed = "stage=.*"
node_selector_overwrite_allowed = ".*"
node_tolerations_overwrite_allowed = ".*"
memory_limit = "1Gi"
memory_limit_overwrite_max_allowed = "4Gi"
helper_cpu_limit_overwrite_max_allowed = "1"
"#,
            &job,
        );
        assert_eq!(spec["spec"]["serviceAccountName"], "deployer");
        assert_eq!(
            spec["metadata"]["annotations"]["example.com/reason"],
            "release"
        );
        assert_eq!(spec["metadata"]["labels"]["stage"], "deploy");
        assert_eq!(spec["spec"]["nodeSelector"], json!({"pool": "large"}));
        assert_eq!(
            spec["spec"]["tolerations"],
            json!([{"effect": "NoSchedule", "key": "gpu", "operator": "Exists"}])
        );
        assert_eq!(
            spec["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "2Gi"
        );
        assert_eq!(
            spec["spec"]["containers"][1]["resources"]["limits"]["cpu"],
            "500m"
        );
    }

    #[test]
    fn pod_spec_patches_apply_only_with_their_feature_flag() {
        let text = r#"[[pod_spec]]
name = "hostname"
patch = '''
hostname: "custom-hostname"
'''
[[pod_spec]]
name = "build-env"
patch_type = "strategic"
patch = '''
containers:
  - name: build
    env:
      - name: FROM_PATCH
        value: "1"
'''
[[pod_spec]]
name = "json"
patch_type = "json"
patch = '''
[{"op": "add", "path": "/nodeSelector", "value": {"disk": "ssd"}}]
'''
[[pod_spec]]
name = "merge"
patch_type = "merge"
patch = '{"terminationGracePeriodSeconds": 7}'
"#;
        let mut job = job();
        let spec = pod_json(text, &job);
        assert!(spec["spec"].get("hostname").is_none(), "off by default");
        job.variables.push(Variable {
            key: "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION".to_owned(),
            value: "true".to_owned(),
            public: true,
            file: false,
            masked: false,
            raw: false,
            internal: false,
        });
        let spec = pod_json(text, &job);
        assert_eq!(spec["spec"]["hostname"], "custom-hostname");
        assert_eq!(
            spec["spec"]["containers"][0]["env"],
            json!([{"name": "FROM_PATCH", "value": "1"}])
        );
        assert_eq!(spec["spec"]["containers"][0]["name"], "build");
        assert_eq!(spec["spec"]["containers"][1]["name"], "helper");
        assert_eq!(spec["spec"]["nodeSelector"], json!({"disk": "ssd"}));
        assert_eq!(spec["spec"]["terminationGracePeriodSeconds"], 7);
        let mut flagged_off = options(text);
        flagged_off.advanced_pod_spec_flag = Some(false);
        let spec = serde_json::to_value(pod(&flagged_off, &job).unwrap()).unwrap();
        assert!(
            spec["spec"].get("hostname").is_none(),
            "[runners.feature_flags] wins over the job"
        );
    }

    #[test]
    fn attach_mode_adds_its_volumes_and_init_container_as_official() {
        // Official facts (getVolumes, getVolumeMounts, buildPermissionsInitContainer): volumes
        // are the configured ones, `repo`, `scripts`, `logs`; every container (services and
        // the init container too) mounts `scripts`, `logs`, the configured ones, `repo`; the
        // init container runs the helper image with the helper's resources, the job image's
        // pull policy and `init_permissions_container_security_context`, and creates the log.
        let options = options(
            "helper_cpu_limit = \"200m\"\npull_policy = \"if-not-present\"\n[init_permissions_container_security_context]\nrun_as_user = 0\n[[volumes.empty_dir]]\nname = \"scratch\"\nmount_path = \"/scratch\"\n",
        );
        let job = job();
        let overwrites = crate::overwrites::evaluate(&options, &job).unwrap();
        let mut inputs = inputs(&options, &job, &overwrites);
        let paths = crate::attach::AttachPaths::new(42, 1001);
        inputs.init_command = Some(crate::attach::init_permissions_command(&paths));
        inputs.extra_volumes = crate::attach::volumes();
        inputs.extra_mounts = crate::attach::mounts(&paths);
        let spec = serde_json::to_value(build_pod(&inputs).unwrap()).unwrap();
        let mounts = json!([
            {"name": "scripts", "mountPath": "/scripts-42-1001"},
            {"name": "logs", "mountPath": "/logs-42-1001"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "repo", "mountPath": "/builds"}
        ]);
        assert_eq!(
            spec["spec"]["initContainers"],
            json!([{
                "name": "init-permissions",
                "image": "runnel-helper:latest",
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "touch /logs-42-1001/output.log && (chmod 777 /logs-42-1001/output.log || exit 0)"],
                "resources": {"limits": {"cpu": "200m"}},
                "securityContext": {"capabilities": {"drop": ["NET_RAW"]}, "runAsUser": 0},
                "volumeMounts": mounts
            }])
        );
        let volumes: Vec<&str> = spec["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(volumes, ["scratch", "repo", "scripts", "logs"]);
        let containers = spec["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 4, "build, helper and two services");
        for container in containers {
            assert_eq!(container["volumeMounts"], mounts, "{}", container["name"]);
        }
        // Exec mode (no init command): no init container.
        inputs.init_command = None;
        let spec = serde_json::to_value(build_pod(&inputs).unwrap()).unwrap();
        assert!(spec["spec"].get("initContainers").is_none());
    }

    #[test]
    fn pod_spec_patches_see_attach_modes_volumes() {
        let options = options(
            "[[pod_spec]]\nname = \"logs-in-memory\"\npatch_type = \"strategic\"\npatch = '''\nvolumes:\n  - name: logs\n    emptyDir:\n      medium: Memory\n'''\n",
        );
        let mut job = job();
        job.variables.push(Variable {
            key: "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION".to_owned(),
            value: "true".to_owned(),
            public: true,
            file: false,
            masked: false,
            raw: false,
            internal: false,
        });
        let overwrites = crate::overwrites::evaluate(&options, &job).unwrap();
        let mut inputs = inputs(&options, &job, &overwrites);
        let paths = crate::attach::AttachPaths::new(42, 1001);
        inputs.extra_volumes = crate::attach::volumes();
        inputs.extra_mounts = crate::attach::mounts(&paths);
        let spec = serde_json::to_value(build_pod(&inputs).unwrap()).unwrap();
        assert_eq!(
            spec["spec"]["volumes"],
            json!([
                {"name": "repo", "emptyDir": {}},
                {"name": "scripts", "emptyDir": {}},
                {"name": "logs", "emptyDir": {"medium": "Memory"}},
            ])
        );
    }

    #[test]
    fn service_containers_are_named_after_their_first_usable_alias() {
        // Official getServiceName facts: the first alias that is a DNS-1123 label and not used
        // by an earlier service, else svc-N counting only those.
        let mut job = job();
        let service = |name: &str, aliases: &[&str]| ImageSpec {
            name: name.to_owned(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            ..ImageSpec::default()
        };
        job.services = vec![
            service("postgres:16", &["db"]),
            service("redis:7", &[]),
            service("mysql:8", &["db", "Bad_Alias", "mysql"]),
            service("mysql:8", &["Bad_Alias"]),
            service("busybox", &["helper"]),
        ];
        assert_eq!(
            service_container_names(&job),
            ["db", "svc-0", "mysql", "svc-1", "svc-2"]
        );
        let spec = pod_json("", &job);
        let names: Vec<&str> = spec["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["build", "helper", "db", "svc-0", "mysql", "svc-1", "svc-2"]
        );
    }

    #[test]
    fn job_keys_not_supported_yet_are_refused_by_name() {
        let options = options("");
        let mut job = job();
        job.image.as_mut().unwrap().entrypoint = vec!["/bin/custom".to_owned()];
        let error = pod(&options, &job).unwrap_err();
        assert!(error.to_string().contains("`image:entrypoint`"), "{error}");
        // An empty entrypoint is what the build container's command does anyway.
        job.image.as_mut().unwrap().entrypoint = vec![String::new()];
        let spec = serde_json::to_value(pod(&options, &job).unwrap()).unwrap();
        assert_eq!(spec["spec"]["containers"][0]["command"][0], "sh");
    }

    #[test]
    fn the_jobs_kubernetes_user_is_used_within_the_allowed_ids() {
        // Official getContainerUIDGID facts: the container's table wins, then the pod's, then
        // the job's `uid[:gid]` if allowed; root only when listed; the others are announced.
        let mut job = job();
        job.image.as_mut().unwrap().kubernetes_user = "1000:2000".to_owned();
        job.services[0].kubernetes_user = "0".to_owned();
        job.services[1].kubernetes_user = "$TEAM".to_owned();
        let options = options("allowed_users = [\"1000\", \"1001\"]\n");
        let spec = serde_json::to_value(pod(&options, &job).unwrap()).unwrap();
        let containers = &spec["spec"]["containers"];
        assert_eq!(containers[0]["securityContext"]["runAsUser"], 1000);
        assert_eq!(containers[0]["securityContext"]["runAsGroup"], 2000);
        assert!(
            containers[1]["securityContext"].get("runAsUser").is_none(),
            "not the helper"
        );
        assert!(
            containers[2]["securityContext"].get("runAsUser").is_none(),
            "root is not listed"
        );
        assert!(containers[3]["securityContext"].get("runAsUser").is_none());
        assert_eq!(
            run_as_notes(&options, &job),
            [
                "WARNING: Error parsing 'uid' from image options for container \"db\", using the configured security context: validating UID: user \"0\" is not in the allowed list: [1000 1001]",
                "WARNING: Error parsing 'uid' from image options for container \"svc-0\", using the configured security context: failed to parse UID: invalid digit found in string",
            ]
        );
        // Any id but root without a list; the configured tables win.
        let options = self::options(
            "[build_container_security_context]\nrun_as_user = 500\n[pod_security_context]\nrun_as_group = 600\n",
        );
        let spec = serde_json::to_value(pod(&options, &job).unwrap()).unwrap();
        let build = &spec["spec"]["containers"][0]["securityContext"];
        assert_eq!(build["runAsUser"], 500);
        assert_eq!(build["runAsGroup"], 600);
        let notes = run_as_notes(&options, &job);
        assert!(
            notes.contains(&"Overriding user for container \"build\" to \"1000\" is not allowed: user is set to 500 in container security context".to_owned()),
            "{notes:?}"
        );
        assert!(
            notes.contains(&"Overriding group for container \"build\" to \"2000\" is not allowed: group is set to 600 in pod security context".to_owned()),
            "{notes:?}"
        );
        let bad = KubernetesOptions::from_raw(&runnel_config::RawTable::from(
            "allowed_groups = [\"wheel\"]\n"
                .parse::<toml::Table>()
                .unwrap(),
        ))
        .unwrap_err();
        assert!(
            bad.to_string().contains("`wheel` is not a numeric id"),
            "{bad}"
        );
    }

    #[test]
    fn jobs_without_an_image_are_refused() {
        let options = options("");
        let mut job = job();
        job.image = None;
        assert!(matches!(pod(&options, &job), Err(KubernetesError::NoImage)));
    }

    #[test]
    fn the_stage_command_reads_a_counted_script() {
        let command = stage_command(Shell::Sh, true, 42);
        insta::assert_snapshot!(command.join(" "), @r#"
        sh -c head -c 42 | {
        umask 0000
        if [ -x /bin/sh ]; then
        	exec /bin/sh
        elif [ -x /busybox/sh ]; then
        	exec /busybox/sh
        else
        	echo shell not found
        	exit 1
        fi
        }
        "#);
    }
}
