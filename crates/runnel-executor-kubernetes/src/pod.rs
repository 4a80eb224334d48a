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
//! - containers: `build` (job image), `helper` (helper image), then `svc-0`, `svc-1`, … for the
//!   services; all share the `repo` emptyDir at the builds directory; `restartPolicy: Never`;
//!   service aliases resolve to 127.0.0.1 through `hostAliases`.
//!
//! Divergence, deliberate: the official build container gets the job's non-masked variables in
//! its `env`; Runnel puts no job variable in the pod spec (the stage scripts export them), so
//! nothing of the job leaks through the API objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, HostAlias, LocalObjectReference, Pod, PodSpec,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use runnel_executor::Shell;
use runnel_types::{ImageSpec, JobSpec};

use crate::KubernetesError;
use crate::options::{KubernetesOptions, Resources};

/// The build container's name.
pub const BUILD_CONTAINER: &str = "build";
/// The helper container's name.
pub const HELPER_CONTAINER: &str = "helper";
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
    for (key, value) in &inputs.options.pod_labels {
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
    for (key, value) in &inputs.options.pod_annotations {
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

/// The job's pod.
pub fn build_pod(inputs: &PodInputs<'_>) -> Result<Pod, KubernetesError> {
    let options = inputs.options;
    let job = inputs.job;
    let image = job
        .image
        .as_ref()
        .map(|image| expand(job, &image.name))
        .filter(|name| !name.is_empty())
        .or_else(|| options.image.clone().filter(|name| !name.is_empty()))
        .ok_or(KubernetesError::NoImage)?;
    if let Some(spec) = &job.image {
        if !spec.entrypoint.is_empty() {
            return Err(KubernetesError::Unsupported(
                "the job's `image:entrypoint` is not supported by Runnel's kubernetes executor yet"
                    .to_owned(),
            ));
        }
        if !spec.kubernetes_user.is_empty() {
            return Err(KubernetesError::Unsupported(
                "`image:kubernetes:user` is not supported by Runnel's kubernetes executor yet"
                    .to_owned(),
            ));
        }
        if !spec.pull_policy.is_empty() {
            return Err(KubernetesError::Unsupported(
                "`image:pull_policy` is not supported by Runnel's kubernetes executor yet (set `pull_policy` in [runners.kubernetes])"
                    .to_owned(),
            ));
        }
    }
    let pull_policy = options.pull_policy()?.map(str::to_owned);
    let security = options.privileged.then(|| SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    });
    let mounts = vec![VolumeMount {
        name: "repo".to_owned(),
        mount_path: inputs.builds_dir.to_owned(),
        ..VolumeMount::default()
    }];
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
        image_pull_policy: pull_policy.clone(),
        command: Some(shell_command(false)),
        resources: resources(&options.build_resources()),
        volume_mounts: Some(mounts.clone()),
        security_context: security.clone(),
        stdin: Some(true),
        ..Container::default()
    };
    let helper = Container {
        name: HELPER_CONTAINER.to_owned(),
        image: Some(inputs.helper_image.to_owned()),
        image_pull_policy: pull_policy.clone(),
        command: Some(shell_command(true)),
        resources: resources(&options.helper_resources()),
        volume_mounts: Some(mounts.clone()),
        security_context: security.clone(),
        stdin: Some(true),
        ..Container::default()
    };
    let mut containers = vec![build, helper];
    let mut host_aliases = Vec::new();
    for (index, service) in job.services.iter().enumerate() {
        if !service.pull_policy.is_empty() {
            return Err(KubernetesError::Unsupported(
                "`services:pull_policy` is not supported by Runnel's kubernetes executor yet (set `pull_policy` in [runners.kubernetes])"
                    .to_owned(),
            ));
        }
        if !service.kubernetes_user.is_empty() {
            return Err(KubernetesError::Unsupported(
                "`services:kubernetes:user` is not supported by Runnel's kubernetes executor yet"
                    .to_owned(),
            ));
        }
        let name = expand(job, &service.name);
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
            name: format!("svc-{index}"),
            image: Some(name.clone()),
            image_pull_policy: pull_policy.clone(),
            command: (!service.entrypoint.is_empty()).then(|| service.entrypoint.clone()),
            args: (!service.command.is_empty()).then(|| service.command.clone()),
            env: (!env.is_empty()).then_some(env),
            resources: resources(&options.service_resources()),
            volume_mounts: Some(mounts.clone()),
            security_context: security.clone(),
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
    let unique = project_unique_name(inputs.short_token, job.info.project_id, inputs.slot);
    let timeout = job.timeout.map_or(7200, |t| t.as_secs());
    let deadline = i64::try_from(timeout).unwrap_or(i64::MAX).saturating_add(1);
    let active_deadline = job
        .variable("FF_USE_POD_ACTIVE_DEADLINE_SECONDS")
        .is_none_or(|v| v.value != "false")
        .then_some(deadline);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(resource_name(&unique, inputs.suffix)),
            namespace: Some(inputs.namespace.to_owned()),
            labels: Some(labels(inputs)),
            annotations: Some(annotations(inputs)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            volumes: Some(vec![Volume {
                name: "repo".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            service_account_name: options.service_account.clone(),
            restart_policy: Some("Never".to_owned()),
            node_selector: (!options.node_selector.is_empty())
                .then(|| options.node_selector.clone()),
            containers,
            termination_grace_period_seconds: options.pod_termination_grace_period_seconds,
            active_deadline_seconds: active_deadline,
            image_pull_secrets: (!options.image_pull_secrets.is_empty()).then(|| {
                options
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            host_aliases: (!host_aliases.is_empty()).then_some(host_aliases),
            ..PodSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use runnel_types::{JobInfo, Variable};

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

    fn inputs<'a>(options: &'a KubernetesOptions, job: &'a JobSpec) -> PodInputs<'a> {
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
        }
    }

    #[test]
    fn the_pod_matches_the_official_layout() {
        let options = options(
            "image = \"busybox\"\ncpu_limit = \"1\"\nmemory_request = \"128Mi\"\nhelper_memory_limit = \"256Mi\"\nservice_cpu_request = \"100m\"\nprivileged = true\nservice_account = \"ci-sa\"\nimage_pull_secrets = [\"regcred\"]\npull_policy = \"if-not-present\"\npod_termination_grace_period_seconds = 5\n[node_selector]\n\"kubernetes.io/arch\" = \"amd64\"\n[pod_labels]\nteam = \"$TEAM\"\n\"manager.runner.gitlab.com/name\" = \"hijack\"\n[pod_annotations]\n\"example.com/owner\" = \"$TEAM-team\"\n",
        );
        let job = job();
        let pod = build_pod(&inputs(&options, &job)).unwrap();
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
    fn job_pull_policies_are_refused_rather_than_ignored() {
        let options = options("");
        let mut job = job();
        job.services[0].pull_policy = vec!["always".to_owned()];
        let error = build_pod(&inputs(&options, &job)).unwrap_err();
        assert!(
            error.to_string().contains("services:pull_policy"),
            "{error}"
        );
        assert_eq!(
            error.failure_reason(),
            runnel_types::FailureReason::RunnerConfigurationError
        );
    }

    #[test]
    fn jobs_without_an_image_are_refused() {
        let options = options("");
        let mut job = job();
        job.image = None;
        assert!(matches!(
            build_pod(&inputs(&options, &job)),
            Err(KubernetesError::NoImage)
        ));
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
