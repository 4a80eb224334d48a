//! The kubernetes executor through `runnel run`, against `runnel-fake-gitlab` and
//! `runnel-fake-kube` (a test API server running pods on the local Docker engine).
//!
//! Images are the docker tests' (`runnel-e2e-busybox:1` as build image, the glibc git helper
//! with this runnel binary as helper image, `runnel-e2e-web:1` as a service). Stages run by
//! attach (the official default: the helper's `read-logs` streams the log file) unless a test
//! turns `FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY` on (exec; the busybox image then serves
//! as helper, since no stage needs the runner binary). Every test ends by checking that no pod
//! and no container of the fake API server is left.

use std::time::Duration;

use runnel_fake_gitlab::{GitStrategy, JobBuilder, RemoteStatus};
use runnel_fake_kube::{FakeConfig, FakeKube, Faults};
use serde_json::json;

use crate::docker::{IMAGE, ensure_git_helper, ensure_image};

/// The variable that selects the exec strategy.
const LEGACY: &str = "FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY";
use crate::run::{Daemon, Setup, final_update, job};

/// A fake API server, and a daemon whose runner uses it through `host`/`bearer_token`, with
/// `extra` lines in `[runners.kubernetes]`.
async fn start(config: FakeConfig, helper: &str, extra: &str) -> (FakeKube, Daemon) {
    ensure_image();
    let kube = FakeKube::start(config).await.unwrap();
    let daemon = Daemon::start(Setup {
        executor: Some("kubernetes"),
        tables: format!(
            "  [runners.kubernetes]\n    host = \"{url}\"\n    bearer_token = \"{token}\"\n    namespace = \"default\"\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    poll_interval = 1\n{extra}",
            url = kube.url(),
            token = kube.token(),
        ),
        ..Setup::default()
    })
    .await;
    (kube, daemon)
}

/// The fake API server's default settings with `faults` injected.
fn with_faults(faults: Faults) -> FakeConfig {
    FakeConfig {
        faults,
        ..FakeConfig::default()
    }
}

/// Asserts that the job's pod is gone with all its containers, then stops the server.
async fn assert_nothing_left(kube: FakeKube) {
    assert_eq!(kube.pod_names(), Vec::<String>::new(), "pods left");
    assert_eq!(
        kube.docker_containers().await,
        Vec::<String>::new(),
        "containers left"
    );
    kube.shutdown().await;
}

#[tokio::test]
async fn a_job_runs_in_a_pod_built_as_the_official_one() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    [runners.kubernetes.pod_labels]\n      team = \"$TEAM\"\n",
    )
    .await;
    let id = daemon.fake.enqueue(
        job("in-a-pod")
            .variable("TEAM", "blue")
            .masked_variable("SECRET_TOKEN", "s3cr3t-value-123")
            .script([
                "echo \"hello from $(hostname)\"",
                "echo \"secret=$SECRET_TOKEN\"",
                "ls -d \"$CI_PROJECT_DIR\"",
                "printf partial; sleep 1; echo ' rest'",
                "echo to-stderr >&2",
            ]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Using Kubernetes namespace: default"),
        "{trace}"
    );
    assert!(
        trace.contains(&format!("Using Kubernetes executor with image {IMAGE} ...")),
        "{trace}"
    );
    assert!(trace.contains("hello from runner-"), "{trace}");
    assert!(trace.contains("secret=[MASKED]"), "{trace}");
    assert!(trace.contains("\npartial rest\n"), "{trace}");
    assert!(trace.contains("to-stderr\n"), "{trace}");
    assert!(
        !trace.contains("command_exit_code"),
        "the exit line is not shown: {trace}"
    );
    let pods = kube.created_pods();
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let short = runnel_types::short_token(&daemon.token);
    let name = pod["metadata"]["name"].as_str().unwrap();
    let prefix = format!("runner-{short}-project-");
    assert!(name.starts_with(&prefix), "{name}");
    let labels = &pod["metadata"]["labels"];
    assert_eq!(
        labels["manager.runner.gitlab.com/id-short"],
        json!(short.to_string())
    );
    assert_eq!(labels["team"], json!("blue"));
    assert_eq!(
        pod["metadata"]["annotations"]["job.runner.gitlab.com/id"],
        json!(id.to_string())
    );
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(containers, ["build", "helper"]);
    // Attach mode: the scripts and logs volumes, named and mounted as the official ones.
    let project = pod["metadata"]["labels"]["project.runner.gitlab.com/id"]
        .as_str()
        .unwrap()
        .to_owned();
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        volumes.contains(&"scripts") && volumes.contains(&"logs"),
        "{volumes:?}"
    );
    for container in &pod["spec"]["containers"].as_array().unwrap()[..2] {
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert!(
            mounts.contains(&format!("/scripts-{project}-{id}").as_str())
                && mounts.contains(&format!("/logs-{project}-{id}").as_str()),
            "{mounts:?}"
        );
    }
    let spec = pod.to_string();
    assert!(
        !spec.contains("s3cr3t-value-123"),
        "a secret is in the pod spec: {spec}"
    );
    assert!(
        !spec.contains(view.token.expose()),
        "the job token is in the pod spec"
    );
    assert!(
        kube.watches_served() >= 1,
        "the pod's start is followed by a watch"
    );
    // The job's registry login reaches the kubelet as a pull secret, as official.
    let pull_secrets = pod["spec"]["imagePullSecrets"].as_array().unwrap();
    assert_eq!(pull_secrets.len(), 1, "{pull_secrets:?}");
    let secret_name = pull_secrets[0]["name"].as_str().unwrap();
    assert!(secret_name.starts_with(&prefix), "{secret_name}");
    let secret = kube
        .created_objects()
        .into_iter()
        .find(|object| object["metadata"]["name"] == json!(secret_name))
        .expect("the secret was created");
    assert_eq!(secret["type"], json!("kubernetes.io/dockercfg"));
    use base64::Engine;
    let dockercfg: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(secret["data"][".dockercfg"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let login = dockercfg.as_object().unwrap().values().next().unwrap();
    assert_eq!(login["username"], json!("gitlab-ci-token"));
    assert_eq!(login["password"], json!(view.token.expose()));
    assert_eq!(
        kube.objects(),
        Vec::new(),
        "the secret is deleted with the pod"
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_failing_script_reports_its_exit_code_and_runs_after_script() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon.fake.enqueue(
        job("fails")
            .script(["echo before-failure", "exit 3", "echo not-reached"])
            .after_script(["echo \"after status=$CI_JOB_STATUS\""]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("script_failure")
    );
    assert!(trace.contains("exit code 3"), "{trace}");
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(trace.contains("after status=failed"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn the_legacy_exec_strategy_runs_stages_by_exec() {
    // The busybox helper has no runner binary: attach mode could not read the log with it.
    let (kube, daemon) = start(FakeConfig::default(), IMAGE, "").await;
    let id = daemon.fake.enqueue(
        job("by-exec")
            .variable(LEGACY, "true")
            .masked_variable("SECRET_TOKEN", "s3cr3t-value-123")
            .script(["echo \"secret=$SECRET_TOKEN\"", "exit 4"])
            .after_script(["echo \"after status=$CI_JOB_STATUS\""]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(trace.contains("secret=[MASKED]"), "{trace}");
    assert!(trace.contains("exit code 4"), "{trace}");
    assert!(trace.contains("after status=failed"), "{trace}");
    let pod = &kube.created_pods()[0];
    assert!(
        !pod.to_string().contains("/scripts-"),
        "no scripts volume in exec mode"
    );
    assert!(
        pod["spec"].get("initContainers").is_none(),
        "no init-permissions container in exec mode"
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn after_script_exit_codes_do_not_change_the_result_in_attach_mode() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon
        .fake
        .enqueue(job("after-fails").script(["echo main-ok"]).after_script([
            "echo after-ran",
            "exit 5",
            "echo after-not-reached",
        ]));
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("main-ok\n"), "{trace}");
    assert!(trace.contains("after-ran\n"), "{trace}");
    assert!(!trace.contains("after-not-reached"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn attach_mode_with_a_helper_image_without_the_runner_fails_clearly() {
    let (kube, daemon) = start(FakeConfig::default(), IMAGE, "").await;
    let id = daemon
        .fake
        .enqueue(job("no-read-logs").script(["echo not-shown-anyway"]));
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(trace.contains("gitlab-runner-helper read-logs"), "{trace}");
    assert!(trace.contains(LEGACY), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_service_container_is_reached_by_its_alias() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon.fake.enqueue(
        job("with-service")
            .extra(
                "services",
                json!([{ "name": crate::docker::WEB, "alias": "web" }]),
            )
            .script([
                "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web:8080/ && break; sleep 1; done",
            ]),
    );
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("hello-from-service\n"), "{trace}");
    let pod = &kube.created_pods()[0];
    // Named after its alias, as official.
    assert_eq!(pod["spec"]["containers"][2]["name"], json!("web"));
    assert_eq!(
        pod["spec"]["hostAliases"][0],
        json!({"ip": "127.0.0.1", "hostnames": ["runnel-e2e-web", "web"]})
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn the_helper_clones_caches_and_uploads_artifacts_in_the_pod() {
    let helper = ensure_git_helper().await;
    // The fake coordinator listens on loopback: the pods share the host's network to reach it.
    let (kube, daemon) = start(
        FakeConfig {
            host_network: true,
            ..FakeConfig::default()
        },
        &helper,
        "",
    )
    .await;
    let repo = daemon.fake.create_repo("group/project").unwrap();
    let sha = repo
        .commit("main", "first")
        .file("README.md", "from-the-repository\n")
        .create()
        .unwrap();
    let id = daemon.fake.enqueue(
        JobBuilder::new("build")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .variable("GIT_LFS_SKIP_SMUDGE", "1")
            .script([
                "cat README.md",
                "mkdir -p out vendor",
                "echo built > out/result.txt",
                "echo dependency > vendor/lib.txt",
            ])
            .extra("cache", crate::job_data::cache_entry("deps", "push", &[]))
            .extra(
                "artifacts",
                json!([{
                    "name": "result",
                    "paths": ["out/"],
                    "when": "on_success",
                    "artifact_type": "archive",
                    "artifact_format": "zip",
                    "expire_in": "1 day"
                }]),
            ),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Created fresh repository."), "{trace}");
    assert!(trace.contains("from-the-repository\n"), "{trace}");
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{trace}"
    );
    assert!(
        trace.contains("Created cache"),
        "the helper archived the cache: {trace}"
    );
    assert!(!trace.contains(view.token.expose()), "the job token leaked");
    assert_eq!(view.artifacts.len(), 1, "{:?}", view.artifacts);
    assert_eq!(view.artifacts[0].filename, "result.zip");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_canceled_job_stops_and_its_pod_is_deleted() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon.fake.enqueue(
        job("cancel-me")
            .script(["echo started", "sleep 60", "echo not-reached"])
            .after_script(["echo \"after-cancel status=$CI_JOB_STATUS\""]),
    );
    let seen = |v: &runnel_fake_gitlab::JobView| v.trace_text().contains("started\n");
    daemon
        .fake
        .wait_for_job_state(id, seen, Duration::from_secs(90))
        .await
        .expect("the job started");
    assert_eq!(
        kube.pod_names().len(),
        1,
        "the job's pod exists while it runs"
    );
    assert!(kube.docker_containers().await.len() >= 2);
    daemon.fake.cancel_job(id).unwrap();
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Canceled, "{trace}");
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(trace.contains("after-cancel status=canceled"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_job_that_runs_too_long_times_out_and_its_pod_is_deleted() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon.fake.enqueue(
        job("slow")
            .timeout(8)
            .script(["echo started", "sleep 60", "echo not-reached"])
            .after_script(["echo after-timeout"]),
    );
    let trace = daemon.failed_with(id, "job_execution_timeout").await;
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(trace.contains("after-timeout"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_with_image_pull_failure() {
    let (kube, daemon) = start(FakeConfig::default(), IMAGE, "").await;
    let id = daemon.fake.enqueue(
        job("no-image")
            .failure_reasons(
                runnel_fake_gitlab::GITLAB_FAILURE_REASONS
                    .iter()
                    .copied()
                    .chain(["image_pull_failure"]),
            )
            .extra("image", json!({"name": "runnel-e2e-no-such-image:404"}))
            .script(["echo not-reached"]),
    );
    let trace = daemon.failed_with(id, "image_pull_failure").await;
    assert!(
        trace.contains("image pull failed for container build (runnel-e2e-no-such-image:404)"),
        "{trace}"
    );
    assert!(
        trace.contains("Failed to pull image"),
        "what Kubernetes said: {trace}"
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn an_unschedulable_pod_fails_after_poll_timeout_with_the_scheduler_message() {
    let config = with_faults(Faults {
        pending_forever: true,
        ..Faults::default()
    });
    let (kube, daemon) = start(config, IMAGE, "    poll_timeout = 2\n").await;
    let id = daemon
        .fake
        .enqueue(job("pending").script(["echo not-reached"]));
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(trace.contains("timed out waiting for pod"), "{trace}");
    assert!(
        trace.contains("Unschedulable: \"0/1 nodes are available"),
        "{trace}"
    );
    // What the pod went through is in the log, also when it never ran.
    assert!(trace.contains("Waiting for pod default/runner-"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn an_evicted_pod_ends_the_job_with_what_kubernetes_said() {
    let config = with_faults(Faults {
        evict_after: Some(Duration::from_secs(4)),
        ..Faults::default()
    });
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(config, &helper, "").await;
    let id = daemon.fake.enqueue(job("evicted").script([
        "echo started",
        "sleep 60",
        "echo not-reached",
    ]));
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(
        trace.contains("Evicted") || trace.contains("disrupted"),
        "{trace}"
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_pod_over_the_resource_quota_fails_with_what_the_api_server_said() {
    let config = with_faults(Faults {
        exceed_pod_quota: true,
        ..Faults::default()
    });
    let (kube, daemon) = start(config, IMAGE, "").await;
    let id = daemon
        .fake
        .enqueue(job("over-quota").script(["echo not-reached"]));
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(
        trace.contains("ERROR: Job failed (system failure): "),
        "{trace}"
    );
    assert!(
        trace.contains("the API server refused to create pod default/runner-"),
        "{trace}"
    );
    assert!(
        trace.contains(
            "is forbidden: exceeded quota: runnel-fake-kube-pods, requested: pods=1, used: pods=0, limited: pods=0 (Forbidden)"
        ),
        "what Kubernetes said: {trace}"
    );
    // The refused pod was never made; the build's secrets are gone too.
    assert!(kube.created_pods().is_empty());
    assert_eq!(kube.objects(), Vec::<(String, String, String)>::new());
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_build_container_over_its_memory_limit_is_oom_killed_and_the_job_says_so() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    memory_limit = \"32Mi\"\n",
    )
    .await;
    // `tail` keeps the last lines of a file without newlines: its buffer grows until the
    // kernel kills it for the container's limit.
    let id = daemon.fake.enqueue(job("oom").script([
        "echo started",
        "tail /dev/zero",
        "echo not-reached",
    ]));
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(trace.contains("started\n"), "{trace}");
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(
        trace.contains(
            "container build was OOM-killed: it used more memory than its limit of 32Mi (reason OOMKilled, exit code 137)"
        ),
        "{trace}"
    );
    let pods = kube.created_pods();
    assert_eq!(
        pods[0]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        json!("32Mi")
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn an_oom_killed_build_container_is_the_reason_in_exec_mode_too() {
    let (kube, daemon) = start(
        FakeConfig::default(),
        IMAGE,
        "    memory_limit = \"32Mi\"\n",
    )
    .await;
    let id = daemon
        .fake
        .enqueue(job("oom-by-exec").variable(LEGACY, "true").script([
            "echo started",
            "tail /dev/zero",
            "echo not-reached",
        ]));
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(
        trace
            .contains("container build was OOM-killed: it used more memory than its limit of 32Mi"),
        "{trace}"
    );
    assert_nothing_left(kube).await;
}

/// Waits (at most a minute) until the fake API server has no pod (nor pod container) left.
async fn wait_for_no_pods(kube: &FakeKube) {
    for _ in 0..120 {
        if kube.pod_names().is_empty() && kube.docker_containers().await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("pods left: {:?}", kube.pod_names());
}

#[tokio::test]
async fn a_job_survives_an_api_server_that_goes_away_for_a_few_seconds() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon.fake.enqueue(job("outage").script([
        "echo started",
        "sleep 12",
        "echo finished-after-the-outage",
    ]));
    let seen = |v: &runnel_fake_gitlab::JobView| v.trace_text().contains("started\n");
    daemon
        .fake
        .wait_for_job_state(id, seen, Duration::from_secs(90))
        .await
        .expect("the job started");
    let watches = kube.watches_served();
    kube.stop_listening().await;
    let address = kube.url().trim_start_matches("http://").to_owned();
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "the API server is away"
    );
    assert_eq!(kube.pod_names().len(), 1, "the pod runs on meanwhile");
    tokio::time::sleep(Duration::from_secs(4)).await;
    kube.resume_listening().await.unwrap();
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("finished-after-the-outage\n"), "{trace}");
    assert!(
        kube.watches_served() > watches,
        "the pod's watch was opened again"
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn an_api_server_that_stays_away_ends_the_job_and_its_pod_is_deleted_once_it_is_back() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "    poll_timeout = 5\n").await;
    let id =
        daemon
            .fake
            .enqueue(job("gone").script(["echo started", "sleep 120", "echo not-reached"]));
    let seen = |v: &runnel_fake_gitlab::JobView| v.trace_text().contains("started\n");
    daemon
        .fake
        .wait_for_job_state(id, seen, Duration::from_secs(90))
        .await
        .expect("the job started");
    kube.stop_listening().await;
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(!trace.contains("not-reached"), "{trace}");
    // The pod's watch or the job's log stream, whichever notices first, names the server.
    assert!(
        trace.contains("ERROR: Job failed (system failure): the kubernetes executor failed: "),
        "{trace}"
    );
    assert!(
        trace.contains(&format!(
            "the Kubernetes API server {}/ has been unreachable for more than 5s (poll_timeout)",
            kube.url()
        )),
        "{trace}"
    );
    // Nobody could delete the pod while the server was away; it is deleted once it is back.
    assert_eq!(kube.pod_names().len(), 1);
    kube.resume_listening().await.unwrap();
    wait_for_no_pods(&kube).await;
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_kubeconfig_in_home_is_used_without_host_keys() {
    let helper = ensure_git_helper().await;
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let daemon = Daemon::start(Setup {
        executor: Some("kubernetes"),
        tables: format!(
            "  [runners.kubernetes]\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    poll_interval = 1\n"
        ),
        ..Setup::default()
    })
    .await;
    // The daemon's HOME is its directory; the client reads ~/.kube/config at the first job.
    let dot_kube = daemon.dir.path().join(".kube");
    std::fs::create_dir_all(&dot_kube).unwrap();
    std::fs::write(
        dot_kube.join("config"),
        runnel_fake_kube::kubeconfig_text(kube.url(), kube.token()),
    )
    .unwrap();
    let id = daemon
        .fake
        .enqueue(job("kubeconfig").script(["echo via-kubeconfig"]));
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("via-kubeconfig\n"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn concurrent_jobs_get_their_own_pods() {
    let helper = ensure_git_helper().await;
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let daemon = Daemon::start(Setup {
        concurrent: 2,
        runner: "  limit = 2\n".to_owned(),
        executor: Some("kubernetes"),
        tables: format!(
            "  [runners.kubernetes]\n    host = \"{url}\"\n    bearer_token = \"{token}\"\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    poll_interval = 1\n",
            url = kube.url(),
            token = kube.token(),
        ),
        ..Setup::default()
    })
    .await;
    let ids: Vec<u64> = (0..2)
        .map(|n| {
            daemon.fake.enqueue(job(&format!("parallel-{n}")).script([
                "echo \"in $(hostname)\"",
                "sleep 3",
                "echo done",
            ]))
        })
        .collect();
    for id in ids {
        let view = daemon.finished(id).await;
        assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    }
    let names: std::collections::BTreeSet<String> = kube
        .created_pods()
        .iter()
        .map(|pod| pod["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn unsupported_kubernetes_keys_stop_the_runner_with_their_names() {
    let (kube, mut daemon) = start(
        FakeConfig::default(),
        IMAGE,
        "    context = \"prod\"\n    retry_limit = 3\n",
    )
    .await;
    let log = daemon.wait_log("does not implement yet").await;
    assert!(log.contains("context, retry_limit"), "{log}");
    assert!(log.contains("the runner will not request jobs"), "{log}");
    daemon.stop().await;
    assert!(
        daemon
            .fake
            .requests()
            .iter()
            .all(|r| r.path != "/api/v4/jobs/request"),
        "the runner never asked for a job"
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn configured_volumes_are_mounted_in_the_build_container() {
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("from-host.txt"), "host-file-content\n").unwrap();
    // The containers may run as another user than the test.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(host_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "    [[runners.kubernetes.volumes.host_path]]\n      name = \"host\"\n      mount_path = \"/mnt/host\"\n      host_path = \"{host}\"\n      read_only = true\n    [[runners.kubernetes.volumes.empty_dir]]\n      name = \"scratch\"\n      mount_path = \"/scratch\"\n    [[runners.kubernetes.volumes.secret]]\n      name = \"e2e-credentials\"\n      mount_path = \"/etc/credentials\"\n      [runners.kubernetes.volumes.secret.items]\n        password = \"db/password.txt\"\n    [[runners.kubernetes.volumes.config_map]]\n      name = \"e2e-settings\"\n      mount_path = \"/etc/settings\"\n",
        host = host_dir.path().display(),
    );
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, &extra).await;
    kube.add_secret(
        "default",
        "e2e-credentials",
        &[("password", b"p4ss-from-secret"), ("other", b"not-listed")],
    );
    kube.add_config_map("default", "e2e-settings", &[("app.conf", "mode=fast")]);
    let id = daemon.fake.enqueue(job("volumes").script([
        "cat /mnt/host/from-host.txt",
        "echo \"secret=$(cat /etc/credentials/db/password.txt)\"",
        "ls /etc/credentials",
        "echo \"setting=$(cat /etc/settings/app.conf)\"",
        "echo scratch-works > /scratch/file && cat /scratch/file",
        "if touch /mnt/host/new 2>/dev/null; then echo host-writable; else echo host-read-only; fi",
    ]));
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("host-file-content\n"), "{trace}");
    assert!(trace.contains("secret=p4ss-from-secret\n"), "{trace}");
    assert!(
        !trace.contains("not-listed"),
        "only the listed keys: {trace}"
    );
    assert!(trace.contains("setting=mode=fast\n"), "{trace}");
    assert!(trace.contains("scratch-works\n"), "{trace}");
    assert!(trace.contains("host-read-only\n"), "{trace}");
    let pod = &kube.created_pods()[0];
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    // Attach mode adds its `scripts` and `logs` volumes after these.
    assert_eq!(
        volumes[..5],
        ["host", "e2e-credentials", "e2e-settings", "scratch", "repo"]
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_missing_secret_keeps_the_pod_pending_until_poll_timeout() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    poll_timeout = 3\n    [[runners.kubernetes.volumes.secret]]\n      name = \"e2e-absent\"\n      mount_path = \"/etc/absent\"\n",
    )
    .await;
    let id = daemon
        .fake
        .enqueue(job("missing-secret").script(["echo not-reached"]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(trace.contains("timed out waiting for pod"), "{trace}");
    assert!(!trace.contains("not-reached\n"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn job_variables_overwrite_what_the_configuration_allows() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    namespace_overwrite_allowed = \"^kube-p.*\"\n    pod_labels_overwrite_allowed = \"team=.*\"\n    memory_limit = \"64Mi\"\n    memory_limit_overwrite_max_allowed = \"256Mi\"\n    service_account = \"ci\"\n",
    )
    .await;
    let id = daemon.fake.enqueue(
        job("overwrites")
            .variable("KUBERNETES_NAMESPACE_OVERWRITE", "kube-public")
            .variable("KUBERNETES_POD_LABELS_TEAM", "team=red")
            .variable("KUBERNETES_MEMORY_LIMIT", "128Mi")
            .variable("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "not-allowed")
            .script(["echo overwritten"]),
    );
    let trace = daemon.succeeded(id).await;
    assert!(
        trace.contains("\"Namespace\" overwritten with \"kube-public\""),
        "{trace}"
    );
    assert!(
        trace.contains("\"MemoryLimit\" overwritten with \"128Mi\""),
        "{trace}"
    );
    assert!(
        trace.contains("Using Kubernetes namespace: kube-public"),
        "{trace}"
    );
    let pod = &kube.created_pods()[0];
    assert_eq!(pod["metadata"]["namespace"], json!("kube-public"));
    assert_eq!(pod["metadata"]["labels"]["team"], json!("red"));
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
        json!("128Mi")
    );
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        json!("ci"),
        "no service_account_overwrite_allowed: the overwrite is not used"
    );

    let refused = daemon.fake.enqueue(
        job("too-much")
            .variable("KUBERNETES_MEMORY_LIMIT", "1Gi")
            .script(["echo not-reached"]),
    );
    let view = daemon.finished(refused).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains(
            "the resource \"MemoryLimit\" requested \"1Gi\" is higher than limit allowed \"256Mi\""
        ),
        "{trace}"
    );
    assert!(!trace.contains("not-reached\n"), "{trace}");
    assert_eq!(kube.created_pods().len(), 1, "no pod for the refused job");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn namespace_per_job_creates_and_deletes_the_jobs_namespace() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    namespace_per_job = true\n",
    )
    .await;
    let id = daemon
        .fake
        .enqueue(job("own-namespace").script(["echo in-own-namespace"]));
    let trace = daemon.succeeded(id).await;
    let namespace = format!("ci-job-{id}");
    assert!(
        trace.contains(&format!("Using Kubernetes namespace: {namespace}")),
        "{trace}"
    );
    assert_eq!(kube.created_namespaces(), vec![namespace.clone()]);
    assert_eq!(
        kube.created_pods()[0]["metadata"]["namespace"],
        json!(namespace)
    );
    assert_eq!(kube.namespaces(), Vec::<String>::new(), "namespace deleted");
    // Labelled with the runner, for the sweep of a later start.
    let short = runnel_types::short_token(&daemon.token).to_string();
    assert_eq!(
        kube.created_namespace_objects()[0]["metadata"]["labels"]["manager.runner.gitlab.com/id-short"],
        json!(short)
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn register_kubernetes_flags_write_a_section_the_executor_acts_on() {
    ensure_image();
    let helper = ensure_git_helper().await;
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let env = crate::support::TestEnv::new().await;
    let token = env.fake.create_runner_token();
    let args = [
        "register",
        "--non-interactive",
        "--url",
        env.url(),
        "--token",
        &token,
        "--executor",
        "kubernetes",
        "--kubernetes-host",
        kube.url(),
        "--kubernetes-bearer_token",
        kube.token(),
        "--kubernetes-namespace",
        "default",
        "--kubernetes-image",
        IMAGE,
        "--kubernetes-helper-image",
        &helper,
        "--kubernetes-poll-interval",
        "1",
        "--kubernetes-cpu-limit",
        "1",
        "--kubernetes-cpu-limit-overwrite-max-allowed",
        "2",
        "--kubernetes-node-tolerations",
        "dedicated=ci:NoSchedule",
        "--kubernetes-pod-labels",
        "team:blue",
        "--kubernetes-pod_labels_overwrite_allowed",
        "stage=.*",
        "--kubernetes-build_container_security_context-capabilities-drop",
        "ALL",
        "--kubernetes-pod-security-context-fs-group",
        "2000",
        "--kubernetes-allowed-images",
        IMAGE,
        "--kubernetes-dns-policy",
        "cluster-first",
    ];
    env.runnel(&args, "").await.assert_success();
    let parsed: toml::Table = toml::from_str(&env.config_text()).unwrap();
    let section = parsed["runners"][0]["kubernetes"].clone();
    // The daemon's runner gets exactly the section `register` wrote.
    let mut runner = toml::Table::new();
    runner.insert("kubernetes".to_owned(), section);
    let mut wrapper = toml::Table::new();
    wrapper.insert(
        "runners".to_owned(),
        toml::Value::Array(vec![toml::Value::Table(runner)]),
    );
    let text = toml::to_string(&wrapper).unwrap();
    let tables = text
        .lines()
        .filter(|line| line.trim() != "[[runners]]")
        .map(|line| format!("  {line}\n"))
        .collect::<String>();
    let daemon = Daemon::start(Setup {
        executor: Some("kubernetes"),
        tables,
        ..Setup::default()
    })
    .await;
    let id = daemon.fake.enqueue(
        job("registered")
            .variable("KUBERNETES_CPU_LIMIT", "1500m")
            .variable("KUBERNETES_POD_LABELS_STAGE", "stage=test")
            .script(["echo registered-runner-ran"]),
    );
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("registered-runner-ran\n"), "{trace}");
    let pod = &kube.created_pods()[0];
    let spec = &pod["spec"];
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["cpu"],
        json!("1500m")
    );
    assert_eq!(
        spec["tolerations"],
        json!([{"effect": "NoSchedule", "key": "dedicated", "operator": "Equal", "value": "ci"}])
    );
    assert_eq!(pod["metadata"]["labels"]["team"], json!("blue"));
    assert_eq!(pod["metadata"]["labels"]["stage"], json!("test"));
    assert_eq!(
        spec["containers"][0]["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(spec["securityContext"]["fsGroup"], json!(2000));
    assert_eq!(spec["dnsPolicy"], json!("ClusterFirst"));
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn pod_spec_patches_change_the_pod_when_their_feature_flag_is_on() {
    let patches = "    [[runners.kubernetes.pod_spec]]\n      name = \"env\"\n      patch = '''\ncontainers:\n  - name: build\n    env:\n      - name: FROM_PATCH\n        value: patched-by-strategic-merge\n'''\n    [[runners.kubernetes.pod_spec]]\n      name = \"grace\"\n      patch_type = \"json\"\n      patch = '[{\"op\": \"add\", \"path\": \"/terminationGracePeriodSeconds\", \"value\": 3}]'\n";
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, patches).await;
    let id = daemon.fake.enqueue(
        job("patched")
            .variable("FF_USE_ADVANCED_POD_SPEC_CONFIGURATION", "true")
            .script(["echo \"patch=$FROM_PATCH\""]),
    );
    let trace = daemon.succeeded(id).await;
    assert!(
        trace.contains("patch=patched-by-strategic-merge\n"),
        "{trace}"
    );
    assert!(
        trace.contains("Advanced Pod Spec configuration enabled"),
        "{trace}"
    );
    let pod = &kube.created_pods()[0];
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], json!(3));
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["build", "helper"], "merged by name, not appended");
    assert_nothing_left(kube).await;
}

/// Creates, through the API, a pod of runner `short` as a killed earlier run would have left
/// it (its image does not exist, so it stays `Pending` without containers).
async fn create_leftover_pod(kube: &FakeKube, name: &str, short: &str) {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"manager.runner.gitlab.com/id-short": short},
        },
        "spec": {"containers": [{"name": "build", "image": "runnel-it-absent:0"}]},
    });
    post_object(kube, "/api/v1/namespaces/default/pods", &body).await;
}

/// POSTs `body` to `path` of the fake API server; asserts it was created.
async fn post_object(kube: &FakeKube, path: &str, body: &serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let address = kube.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        kube.token(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[tokio::test]
async fn leftover_pods_are_swept_while_concurrent_jobs_start_and_theirs_are_spared() {
    let helper = ensure_git_helper().await;
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let setup = || Setup {
        concurrent: 2,
        runner: "  limit = 2\n".to_owned(),
        executor: Some("kubernetes"),
        tables: format!(
            "  [runners.kubernetes]\n    host = \"{url}\"\n    bearer_token = \"{token}\"\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    poll_interval = 1\n",
            url = kube.url(),
            token = kube.token(),
        ),
        ..Setup::default()
    };
    let mut daemon = Daemon::start(setup()).await;
    daemon.stop().await;
    // A killed earlier run left pods; jobs are waiting when the runner starts again.
    let short = runnel_types::short_token(&daemon.token).to_string();
    let leftovers: Vec<String> = (0..6)
        .map(|n| format!("runner-{short}-project-1-concurrent-{n}-leftover"))
        .collect();
    for name in &leftovers {
        create_leftover_pod(&kube, name, &short).await;
    }
    // A registry credentials secret of that run, and one of another runner.
    for (name, owner) in [
        ("runner-leftover-credentials", short.as_str()),
        ("runner-other-credentials", "zzzz9999"),
    ] {
        post_object(
            &kube,
            "/api/v1/namespaces/default/secrets",
            &json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "labels": {"manager.runner.gitlab.com/id-short": owner}},
                "type": "kubernetes.io/dockercfg",
                "data": {".dockercfg": "e30="},
            }),
        )
        .await;
    }
    let ids: Vec<u64> = (0..2)
        .map(|n| {
            daemon.fake.enqueue(job(&format!("at-start-{n}")).script([
                "echo \"in $(hostname)\"",
                "sleep 4",
                "echo still-here",
            ]))
        })
        .collect();
    daemon.restart(&setup());
    for id in ids {
        let trace = daemon.succeeded(id).await;
        assert!(trace.contains("still-here\n"), "{trace}");
    }
    let log = daemon.log();
    assert!(log.contains("deleted pods left by an earlier run"), "{log}");
    assert!(log.contains("secret runner-leftover-credentials"), "{log}");
    assert_eq!(
        kube.objects(),
        [(
            "secrets".to_owned(),
            "default".to_owned(),
            "runner-other-credentials".to_owned()
        )],
        "only this runner's secrets are swept; the jobs' own were deleted at their end"
    );
    for name in &leftovers {
        assert!(
            !kube.pod_names().contains(&format!("default/{name}")),
            "{name} was not swept"
        );
    }
    // The jobs' pods were spared, and the runner's one provider gave them their own slots.
    let slots: std::collections::BTreeSet<String> = kube
        .created_pods()
        .iter()
        .filter_map(|pod| {
            let name = pod["metadata"]["name"].as_str()?;
            (!name.ends_with("-leftover"))
                .then(|| name.split("-concurrent-").nth(1)?.split('-').next())
                .flatten()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        slots,
        ["0".to_owned(), "1".to_owned()].into(),
        "concurrent jobs get slots 0 and 1"
    );
    assert_nothing_left(kube).await;
}

/// Runnel's runner-manager image (`dist/Dockerfile`), built by `dist/build-image.sh` from this
/// test binary's `runnel`; tagged by the binary's size and modification time, so an unchanged
/// binary reuses it.
fn ensure_manager_image() -> String {
    let exe = env!("CARGO_BIN_EXE_runnel");
    let meta = std::fs::metadata(exe).unwrap();
    let modified = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist");
    let mut hasher = std::hash::DefaultHasher::new();
    for file in ["Dockerfile", "build-image.sh", "entrypoint"] {
        std::hash::Hash::hash(
            &std::fs::read(format!("{dist}/{file}")).unwrap(),
            &mut hasher,
        );
    }
    let tag = format!(
        "runnel-e2e-manager:{:x}-{:x}-{:x}",
        meta.len(),
        modified.as_nanos(),
        std::hash::Hasher::finish(&hasher)
    );
    let exists = std::process::Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    if exists.status.success() {
        return tag;
    }
    let built = std::process::Command::new("sh")
        .args([
            &format!("{dist}/build-image.sh"),
            "--binary",
            exe,
            "--tag",
            &tag,
        ])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "dist/build-image.sh failed: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&built.stdout).trim(), tag);
    tag
}

/// Removes the named container when dropped.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Err(error) = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output()
        {
            eprintln!("cannot remove container {}: {error}", self.0);
        }
    }
}

#[tokio::test]
async fn the_runner_manager_image_registers_and_runs_jobs_as_the_helm_chart_starts_it() {
    let helper = ensure_git_helper().await;
    let image = ensure_manager_image();
    let version = env!("CARGO_PKG_VERSION");
    for entrypoint in [None, Some("gitlab-runner"), Some("runnel")] {
        let mut args = vec!["run", "--rm"];
        if let Some(entrypoint) = entrypoint {
            args.extend(["--entrypoint", entrypoint]);
        }
        args.extend([image.as_str(), "--version"]);
        let out = std::process::Command::new("docker")
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(version),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // What the chart's ConfigMap gives the runner container: the global config.toml, the
    // [[runners]] template, and the scripts its command runs.
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let fake = runnel_fake_gitlab::FakeGitlab::start(runnel_fake_gitlab::FakeConfig {
        long_poll: Duration::from_secs(2),
        trace_update_interval_secs: 1,
        ..runnel_fake_gitlab::FakeConfig::default()
    })
    .await
    .unwrap();
    let token = fake.create_runner_token();
    let configmaps = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = configmaps.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    };
    std::fs::set_permissions(
        configmaps.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    write(
        "config.toml",
        "concurrent = 2\ncheck_interval = 1\nshutdown_timeout = 10\n".to_owned(),
    );
    write(
        "config.template.toml",
        format!(
            "[[runners]]\n  [runners.feature_flags]\n    FF_TIMESTAMPS = false\n  [runners.kubernetes]\n    host = \"{url}\"\n    bearer_token = \"{bearer}\"\n    namespace = \"default\"\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    poll_interval = 1\n",
            url = kube.url(),
            bearer = kube.token(),
        ),
    );
    write(
        "entrypoint",
        "#!/bin/bash\nset -e\nmkdir -p /home/gitlab-runner/.gitlab-runner/\ncp /configmaps/config.toml /home/gitlab-runner/.gitlab-runner/\nif ! bash /configmaps/register-the-runner; then\n  exit 1\nfi\nexec /entrypoint run --user=gitlab-runner --working-directory=/home/gitlab-runner\n".to_owned(),
    );
    write(
        "register-the-runner",
        "#!/bin/bash\n/entrypoint register --non-interactive --template-config /configmaps/config.template.toml\n".to_owned(),
    );
    let name = format!("runnel-e2e-manager-{}", std::process::id());
    let _guard = ContainerGuard(name.clone());
    let mount = format!("{}:/configmaps:ro", configmaps.path().display());
    let server_url = format!("CI_SERVER_URL={}", fake.url());
    let server_token = format!("CI_SERVER_TOKEN={token}");
    let started = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &name,
            // The fakes listen on the host's loopback.
            "--network",
            "host",
            "--user",
            "999:999",
            "-v",
            &mount,
            "-e",
            &server_url,
            "-e",
            &server_token,
            "-e",
            "RUNNER_EXECUTOR=kubernetes",
            "-e",
            "RUNNER_NAME=manager-in-a-pod",
            "--entrypoint",
            "/usr/bin/dumb-init",
            &image,
            "--",
            "/bin/bash",
            "/configmaps/entrypoint",
        ])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let logs = || {
        let out = std::process::Command::new("docker")
            .args(["logs", &name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let id = fake.enqueue(job("in-the-cluster").script(["echo \"manager ran me in $(hostname)\""]));
    let view = match fake
        .wait_for_job_state(
            id,
            runnel_fake_gitlab::JobView::is_finished,
            Duration::from_secs(120),
        )
        .await
    {
        Ok(view) => view,
        Err(error) => panic!("{error}\nmanager log:\n{}", logs()),
    };
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}\n{}", logs());
    assert!(trace.contains("manager ran me in runner-"), "{trace}");
    let log = logs();
    assert!(!log.contains(&token), "the runner token is never logged");
    // The registered runner is the template's, with the chart's environment applied.
    let config = std::process::Command::new("docker")
        .args([
            "exec",
            &name,
            "cat",
            "/home/gitlab-runner/.gitlab-runner/config.toml",
        ])
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&config.stdout);
    assert!(config.contains("name = \"manager-in-a-pod\""), "{config}");
    assert!(config.contains("executor = \"kubernetes\""), "{config}");
    assert!(config.contains("[runners.kubernetes]"), "{config}");
    drop(_guard);
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn the_init_permissions_container_prepares_the_log_file_before_the_job() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, "").await;
    let id = daemon.fake.enqueue(
        job("init-permissions")
            .extra(
                "services",
                json!([{ "name": crate::docker::WEB, "alias": "web" }]),
            )
            .script(["stat -c 'log-mode=%a' /logs-*/output.log"]),
    );
    let trace = daemon.succeeded(id).await;
    // Made by the init container (a file the stage's `tee` made would be 644).
    assert!(trace.contains("log-mode=777\n"), "{trace}");
    let pod = &kube.created_pods()[0];
    let project = pod["metadata"]["labels"]["project.runner.gitlab.com/id"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = format!("/logs-{project}-{id}/output.log");
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1, "{init:?}");
    assert_eq!(init[0]["name"], json!("init-permissions"));
    assert_eq!(init[0]["image"], json!(helper));
    assert_eq!(
        init[0]["command"],
        json!([
            "sh",
            "-c",
            format!("touch {log} && (chmod 777 {log} || exit 0)")
        ])
    );
    // As official, every container mounts the scripts and logs volumes first.
    for container in init
        .iter()
        .chain(pod["spec"]["containers"].as_array().unwrap())
    {
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(mounts, ["scripts", "logs", "repo"], "{}", container["name"]);
    }
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_failing_init_container_ends_the_job_with_what_kubernetes_said() {
    let patch = "    [[runners.kubernetes.pod_spec]]\n      name = \"break-init\"\n      patch = '''\ninitContainers:\n  - name: init-permissions\n    command: [\"sh\", \"-c\", \"exit 3\"]\n'''\n";
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(FakeConfig::default(), &helper, patch).await;
    let id = daemon.fake.enqueue(
        job("broken-init")
            .variable("FF_USE_ADVANCED_POD_SPEC_CONFIGURATION", "true")
            .script(["echo not-reached"]),
    );
    let trace = daemon.failed_with(id, "runner_system_failure").await;
    assert!(
        trace.contains("init container init-permissions failed: reason Error, exit code 3"),
        "{trace}"
    );
    assert!(!trace.contains("not-reached\n"), "{trace}");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn namespaces_per_job_left_by_a_killed_run_are_swept_at_start() {
    let helper = ensure_git_helper().await;
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let setup = || Setup {
        executor: Some("kubernetes"),
        tables: format!(
            "  [runners.kubernetes]\n    host = \"{url}\"\n    bearer_token = \"{token}\"\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    poll_interval = 1\n    namespace_per_job = true\n",
            url = kube.url(),
            token = kube.token(),
        ),
        ..Setup::default()
    };
    let mut daemon = Daemon::start(setup()).await;
    daemon.stop().await;
    let short = runnel_types::short_token(&daemon.token).to_string();
    let namespace = |name: &str, owner: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"manager.runner.gitlab.com/id-short": owner}},
        })
    };
    // Left by a killed run of this runner (with a pod in it), of another runner, and a
    // namespace of this runner's label that is not a job's.
    post_object(
        &kube,
        "/api/v1/namespaces",
        &namespace("ci-job-900001", &short),
    )
    .await;
    post_object(
        &kube,
        "/api/v1/namespaces/ci-job-900001/pods",
        &json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "left-in-namespace"},
            "spec": {"containers": [{"name": "build", "image": "runnel-it-absent:0"}]},
        }),
    )
    .await;
    post_object(
        &kube,
        "/api/v1/namespaces",
        &namespace("ci-job-900002", "zzzz9999"),
    )
    .await;
    post_object(
        &kube,
        "/api/v1/namespaces",
        &namespace("team-tools", &short),
    )
    .await;
    let id = daemon
        .fake
        .enqueue(job("after-restart").script(["echo \"in $(hostname)\"", "sleep 2"]));
    daemon.restart(&setup());
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    let log = daemon.wait_log("left by an earlier run").await;
    assert!(log.contains("namespace ci-job-900001"), "{log}");
    assert_eq!(
        kube.namespaces(),
        ["ci-job-900002".to_owned(), "team-tools".to_owned()],
        "only this runner's job namespaces are swept; the job's own was deleted at its end"
    );
    assert_eq!(
        kube.pod_names(),
        Vec::<String>::new(),
        "the pod went with its namespace"
    );
    daemon.stop().await;
    kube.shutdown().await;
}

#[tokio::test]
async fn a_failed_pull_makes_the_pod_again_with_the_next_pull_policy() {
    let helper = ensure_git_helper().await;
    // runnel-fake-kube has no registry: `Always` cannot pull, `IfNotPresent` uses the engine's
    // image, as a node that cannot reach its registry.
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    pull_policy = [\"always\", \"if-not-present\"]\n",
    )
    .await;
    let id = daemon
        .fake
        .enqueue(job("pull-fallback").script(["echo ran-after-fallback"]));
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("ran-after-fallback\n"), "{trace}");
    // Each container moves on after its own failure: the init container, the build
    // container, then the helper, as the official pull manager does.
    for (attempt, container, image) in [
        (2, "init-permissions", helper.as_str()),
        (3, "build", IMAGE),
        (4, "helper", helper.as_str()),
    ] {
        assert!(
            trace.contains(&format!(
                "WARNING: Failed to pull image \"{image}\" for container \"{container}\" with policy \"Always\""
            )),
            "{trace}"
        );
        assert!(
            trace.contains(&format!(
                "Attempt #{attempt}: Trying \"IfNotPresent\" pull policy for \"{image}\" image for container \"{container}\""
            )),
            "{trace}"
        );
    }
    let pods = kube.created_pods();
    assert_eq!(pods.len(), 4, "one pod per attempt");
    let policy = |pod: &serde_json::Value, container: usize| {
        pod["spec"]["containers"][container]["imagePullPolicy"].clone()
    };
    assert_eq!(policy(&pods[0], 0), json!("Always"));
    assert_eq!(
        pods[0]["spec"]["initContainers"][0]["imagePullPolicy"],
        json!("Always")
    );
    assert_eq!(policy(&pods[3], 0), json!("IfNotPresent"));
    assert_eq!(policy(&pods[3], 1), json!("IfNotPresent"));
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn a_pull_failure_with_no_policy_left_fails_with_image_pull_failure() {
    let (kube, daemon) = start(
        FakeConfig::default(),
        IMAGE,
        "    pull_policy = [\"always\"]\n",
    )
    .await;
    let id = daemon.fake.enqueue(
        job("always-fails")
            .failure_reasons(
                runnel_fake_gitlab::GITLAB_FAILURE_REASONS
                    .iter()
                    .copied()
                    .chain(["image_pull_failure"]),
            )
            .script(["echo not-reached"]),
    );
    let trace = daemon.failed_with(id, "image_pull_failure").await;
    assert!(
        trace.contains("runnel-fake-kube has no registry to pull from"),
        "what Kubernetes said: {trace}"
    );
    assert_eq!(kube.created_pods().len(), 1, "no second attempt");
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn the_jobs_kubernetes_user_reaches_the_build_container_within_allowed_users() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    allowed_users = [\"1000\"]\n",
    )
    .await;
    let id = daemon.fake.enqueue(
        job("as-user")
            .extra(
                "image",
                // `entrypoint: [""]`, as pipelines written for the docker executor often
                // have: what the build container's shell command means anyway.
                json!({"name": IMAGE, "entrypoint": [""], "executor_opts": {"kubernetes": {"user": "1000:2000"}}}),
            )
            .extra(
                "services",
                json!([{ "name": crate::docker::WEB, "alias": "web", "executor_opts": {"kubernetes": {"user": "0"}} }]),
            )
            .script(["echo as-user-ran"]),
    );
    let trace = daemon.succeeded(id).await;
    assert!(
        trace.contains("validating UID: user \"0\" is not in the allowed list: [1000]"),
        "the service's root request is refused in the log: {trace}"
    );
    let pod = &kube.created_pods()[0];
    let build = &pod["spec"]["containers"][0]["securityContext"];
    assert_eq!(build["runAsUser"], json!(1000));
    assert_eq!(build["runAsGroup"], json!(2000));
    assert!(
        pod["spec"]["containers"][2]["securityContext"]
            .get("runAsUser")
            .is_none()
    );
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn an_api_server_that_refuses_watches_is_read_every_poll_interval() {
    let helper = ensure_git_helper().await;
    let config = with_faults(Faults {
        refuse_watches: true,
        ..Faults::default()
    });
    let (kube, daemon) = start(config, &helper, "").await;
    let id = daemon
        .fake
        .enqueue(job("no-watches").script(["echo polled-pod-ran"]));
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("polled-pod-ran\n"), "{trace}");
    assert_eq!(kube.watches_served(), 0);
    assert_nothing_left(kube).await;
}

#[tokio::test]
async fn attach_mode_puts_its_scripts_and_logs_under_the_configured_base_dirs() {
    let helper = ensure_git_helper().await;
    let (kube, daemon) = start(
        FakeConfig::default(),
        &helper,
        "    scripts_base_dir = \"/opt/ci/\"\n    logs_base_dir = \"/var/tmp\"\n",
    )
    .await;
    let id = daemon
        .fake
        .enqueue(job("base-dirs").script(["ls -d /opt/ci/scripts-* /var/tmp/logs-*/output.log"]));
    let trace = daemon.succeeded(id).await;
    let pod = &kube.created_pods()[0];
    let project = pod["metadata"]["labels"]["project.runner.gitlab.com/id"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = format!("/var/tmp/logs-{project}-{id}");
    assert!(trace.contains(&format!("{logs}/output.log\n")), "{trace}");
    let mounts: Vec<&str> = pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts[..2],
        [
            format!("/opt/ci/scripts-{project}-{id}").as_str(),
            logs.as_str()
        ]
    );
    assert_nothing_left(kube).await;
}
