//! The executor end to end: prepare, stages in the right containers, cancel, deadline,
//! services, pull policies, cleanup.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListVolumesOptions};
use runnel_executor::{
    Executor, ExecutorError, OutputStream, PrepareContext, Provider, Shell, StageCommand,
    StageExit, StageKind,
};
use runnel_executor_docker::{DockerProvider, DockerSettings};
use runnel_types::{FailureReason, ImageSpec, JobSpec};
use tokio_util::sync::CancellationToken;

use crate::images::{self, BUSYBOX, HELPER, NOCAT, WEB};
use crate::support::{Collect, docker, docker_config, job};

/// A bound on every test step, so that a hang fails instead of blocking the suite.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

fn provider(section: &str) -> DockerProvider {
    provider_for("tEsT1234", section)
}

/// A provider with its own short token, for tests that act on everything of a runner.
fn provider_for(short_token: &str, section: &str) -> DockerProvider {
    let settings = DockerSettings {
        short_token: short_token.to_owned(),
        token: format!("glrt-{}", short_token).into(),
        system_id: "s_0123456789ab".to_owned(),
        runner_id: 7,
        gitlab_url: "https://gitlab.example.com".to_owned(),
        shell: Shell::Sh,
        helper_image: HELPER.to_owned(),
        helper_binary: None,
    };
    DockerProvider::new(settings, &docker_config(section)).expect("valid provider")
}

async fn setup() -> Docker {
    let docker = docker().await;
    images::ensure(&docker).await;
    docker
}

async fn prepare(executor: &mut Box<dyn Executor>, job: &JobSpec) -> Result<(), ExecutorError> {
    prepare_with(executor, job, false).await
}

/// `prepare` with `FF_NETWORK_PER_BUILD` as given.
async fn prepare_with(
    executor: &mut Box<dyn Executor>,
    job: &JobSpec,
    network_per_build: bool,
) -> Result<(), ExecutorError> {
    prepare_full(executor, job, network_per_build, false).await
}

/// `prepare` with `FF_NETWORK_PER_BUILD` and `predefined_housekeeping_only` as given.
async fn prepare_full(
    executor: &mut Box<dyn Executor>,
    job: &JobSpec,
    network_per_build: bool,
    predefined_housekeeping_only: bool,
) -> Result<(), ExecutorError> {
    let ctx = PrepareContext {
        job,
        builds_dir: Path::new("/builds"),
        cache_dir: Path::new("/cache"),
        debug_services: false,
        project_slot: 0,
        git_fetch: false,
        network_per_build,
        predefined_housekeeping_only,
        init_process: false,
        temp_dir: None,
    };
    tokio::time::timeout(STEP_TIMEOUT, executor.prepare(&ctx))
        .await
        .expect("prepare hung")
}

async fn run(
    executor: &mut Box<dyn Executor>,
    kind: StageKind,
    script: &str,
    sink: &Collect,
) -> StageExit {
    let cmd = StageCommand {
        stage: "test_stage",
        script,
        inline: None,
        kind,
        env: &[],
        deadline: None,
    };
    tokio::time::timeout(
        STEP_TIMEOUT,
        executor.run(cmd, sink, CancellationToken::new()),
    )
    .await
    .expect("stage hung")
    .expect("stage ran")
}

fn job_filter(job: &JobSpec) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![format!("com.gitlab.gitlab-runner.job.id={}", job.id.0)],
    )])
}

/// Names of the containers, networks and temporary volumes labelled with the job's id.
async fn leftovers(docker: &Docker, job: &JobSpec) -> (Vec<String>, Vec<String>, Vec<String>) {
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(job_filter(job)),
            ..ListContainersOptions::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(job_filter(job)),
        }))
        .await
        .expect("list networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(job_filter(job)),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter(|v| {
            v.labels
                .get("com.gitlab.gitlab-runner.reusable")
                .map(String::as_str)
                != Some("true")
        })
        .map(|v| v.name)
        .collect();
    (containers, networks, volumes)
}

/// Removes the reusable cache volumes of the test's project, which outlive jobs by design.
async fn remove_cache_volumes(docker: &Docker, job: &JobSpec) {
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(job_filter(job)),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    for volume in volumes {
        if let Err(error) = docker
            .remove_volume(
                &volume.name,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            eprintln!("could not remove cache volume {}: {error}", volume.name);
        }
    }
}

/// Predefined stages that only keep house run in a root build container, with the helper's
/// umask and the volumes mounted there (empty: not filled from the image); no helper is made.
#[tokio::test]
async fn housekeeping_predefined_stages_run_in_the_build_container() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"if-not-present\"");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare_full(&mut executor, &job, false, true)
        .await
        .expect("prepare");

    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Predefined,
        "echo \"$(umask) $(hostname)\"; ls -A /builds /cache; mkdir -p /builds/made\n",
        &sink,
    )
    .await;
    assert_eq!(
        exit,
        StageExit::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let stdout = sink.text(OutputStream::Stdout);
    let helper_line = stdout
        .lines()
        .find(|line| line.starts_with("0000 "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    assert!(
        stdout.ends_with(&format!("{helper_line}\n/builds:\n\n/cache:\n")),
        "{stdout}"
    );

    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "echo \"$(umask) $(hostname)\"; stat -c %a /builds/made\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(0));
    let host = helper_line.trim_start_matches("0000 ");
    assert_eq!(
        sink.text(OutputStream::Stdout),
        format!("0022 {host}\n777\n")
    );

    let (containers, _, volumes) = leftovers(&docker, &job).await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert!(containers[0].ends_with("-build"), "{containers:?}");
    assert_eq!(volumes.len(), 1, "the temporary builds volume: {volumes:?}");
    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    assert_eq!(
        leftovers(&docker, &job).await,
        (vec![], vec![], vec![]),
        "cleanup left objects behind"
    );
    remove_cache_volumes(&docker, &job).await;
}

#[tokio::test]
async fn stages_run_in_their_containers_and_share_the_builds_volume() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"if-not-present\"");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");
    insta::assert_snapshot!(executor.banner(), @"Using Docker executor with image runnel-test-busybox:1 ...");

    // Predefined stages run in the helper image, which has the runner binary.
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Predefined,
        "gitlab-runner-helper artifacts-uploader\necho from-helper > /builds/shared.txt\necho cached > /cache/c.txt\n",
        &sink,
    )
    .await;
    assert_eq!(
        exit,
        StageExit::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    let stdout = sink.text(OutputStream::Stdout);
    assert!(
        stdout.starts_with(
            "Using locally found image version due to \"if-not-present\" pull policy\nUsing docker image sha256:"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("for runnel-test-busybox:1 ...\n"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("runnel-helper artifacts-uploader\n"),
        "{stdout}"
    );

    // Build stages run in the job image: no runner binary there, but the helper's files are.
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "test ! -e /usr/bin/gitlab-runner-helper && echo no-helper-here\ncat /builds/shared.txt /cache/c.txt\necho oops >&2\nexit 3\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(3));
    assert_eq!(
        sink.text(OutputStream::Stdout),
        "no-helper-here\nfrom-helper\ncached\n"
    );
    assert_eq!(sink.text(OutputStream::Stderr), "oops\n");

    // The build container starts again for the next stage, with its files still there.
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "echo again; ls /builds\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(sink.text(OutputStream::Stdout), "again\nshared.txt\n");

    let (containers, networks, volumes) = leftovers(&docker, &job).await;
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert!(
        containers.iter().any(|name| name.ends_with("-predefined")),
        "{containers:?}"
    );
    assert!(
        containers.iter().all(|name| name.starts_with(&format!(
            "/runner-test1234-project-{}-concurrent-0-",
            job.info.project_id
        ))),
        "{containers:?}"
    );
    // No services and FF_NETWORK_PER_BUILD off: the default bridge, as the official runner.
    assert_eq!(networks.len(), 0, "{networks:?}");
    assert_eq!(volumes.len(), 1, "{volumes:?}");

    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    let after = leftovers(&docker, &job).await;
    assert_eq!(
        after,
        (vec![], vec![], vec![]),
        "cleanup left objects behind"
    );
    remove_cache_volumes(&docker, &job).await;
}

/// The container's start time, as the daemon reports it.
async fn started_at(docker: &Docker, name: &str) -> String {
    docker
        .inspect_container(name, None)
        .await
        .expect("inspect container")
        .state
        .and_then(|state| state.started_at)
        .unwrap_or_default()
}

/// #13.4: one container start serves every stage; each stage still runs in a shell of its own
/// (variables, `cd`, `exit` end with the stage), and the markers never reach the output.
#[tokio::test]
async fn stages_share_one_container_start_but_not_their_shell_state() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"never\"\ndisable_cache = true");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "export LEAK=1\ncd /tmp\necho first\nexit 7\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(7));
    assert!(
        sink.text(OutputStream::Stdout).ends_with(" ...\nfirst\n"),
        "{}",
        sink.text(OutputStream::Stdout)
    );
    let (containers, _, _) = leftovers(&docker, &job).await;
    let build = containers
        .into_iter()
        .find(|name| name.ends_with("-build"))
        .expect("a build container");
    let build = build.trim_start_matches('/');
    let started = started_at(&docker, build).await;

    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "echo \"leak=${LEAK:-none} dir=$(pwd)\"; printf 'no newline'; echo err >&2\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(0));
    assert_eq!(
        sink.text(OutputStream::Stdout),
        "leak=none dir=/\nno newline"
    );
    assert_eq!(sink.text(OutputStream::Stderr), "err\n");
    assert_eq!(
        started_at(&docker, build).await,
        started,
        "the second stage ran without starting the container again"
    );

    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
}

#[tokio::test]
async fn cancel_and_deadline_stop_a_sleeping_stage() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"never\"\ndisable_cache = true");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");

    let sink = Collect::new();
    let cancel = CancellationToken::new();
    let cmd = StageCommand {
        stage: "step_script",
        script: "trap 'exit 1' TERM\necho started\nsleep 600\necho not-reached\n",
        inline: None,
        kind: StageKind::Build,
        env: &[],
        deadline: None,
    };
    let stage = executor.run(cmd, sink.as_ref(), cancel.clone());
    let canceller = async {
        sink.wait_for("started").await;
        cancel.cancel();
    };
    let (exit, ()) = tokio::time::timeout(STEP_TIMEOUT, async { tokio::join!(stage, canceller) })
        .await
        .expect("cancel did not stop the stage");
    assert_eq!(exit.expect("stage ran"), StageExit::Cancelled);
    assert!(!sink.text(OutputStream::Stdout).contains("not-reached"));

    let sink = Collect::new();
    let cmd = StageCommand {
        stage: "step_script",
        script: "echo waiting\nsleep 600\n",
        inline: None,
        kind: StageKind::Build,
        env: &[],
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(2)),
    };
    let exit = tokio::time::timeout(
        STEP_TIMEOUT,
        executor.run(cmd, sink.as_ref(), CancellationToken::new()),
    )
    .await
    .expect("the deadline did not stop the stage");
    assert_eq!(exit.expect("stage ran"), StageExit::TimedOut);
    assert_eq!(
        sink.text(OutputStream::Stdout)
            .trim_start_matches(|c| c != 'w'),
        "waiting\n"
    );

    // The container is usable after a cancelled stage.
    let sink = Collect::new();
    assert_eq!(
        run(&mut executor, StageKind::Build, "echo after\n", &sink).await,
        StageExit::Exited(0)
    );
    assert_eq!(sink.text(OutputStream::Stdout), "after\n");

    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
    // disable_cache makes the cache volume temporary: nothing reusable is left either.
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(job_filter(&job)),
        }))
        .await
        .expect("list volumes");
    assert!(volumes.volumes.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn services_are_reachable_by_alias() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"if-not-present\"\nwait_for_services_timeout = 60");
    let mut job = job(Some(BUSYBOX));
    job.services.push(ImageSpec {
        name: WEB.to_owned(),
        aliases: vec!["web-alias".to_owned()],
        ..ImageSpec::default()
    });
    // Waited for by TCP connects, since it has no `cat` to read its sockets with.
    job.services.push(ImageSpec {
        name: NOCAT.to_owned(),
        aliases: vec!["bare".to_owned()],
        ..ImageSpec::default()
    });
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "wget -q -O - http://web-alias:8080/\nwget -q -O - http://runnel-test-web:8080/\nwget -q -O /dev/null http://bare:8080/bin/busybox && echo bare-up\n",
        &sink,
    )
    .await;
    let stdout = sink.text(OutputStream::Stdout);
    assert_eq!(
        exit,
        StageExit::Exited(0),
        "{stdout}{}",
        sink.text(OutputStream::Stderr)
    );
    assert!(
        stdout.contains("Waiting for services to be up and running (timeout 60 seconds)...\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("WARNING"), "{stdout}");
    assert!(
        stdout.ends_with("hello-from-service\nhello-from-service\nbare-up\n"),
        "{stdout}"
    );
    let (containers, _, _) = leftovers(&docker, &job).await;
    assert!(
        containers
            .iter()
            .any(|name| name.ends_with("-runnel-test-web-0")),
        "{containers:?}"
    );
    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
    remove_cache_volumes(&docker, &job).await;
}

#[tokio::test]
async fn a_service_that_never_listens_gets_the_official_warning() {
    let docker = setup().await;
    let provider =
        provider("pull_policy = \"never\"\nwait_for_services_timeout = 2\ndisable_cache = true");
    let mut job = job(Some(BUSYBOX));
    job.services.push(ImageSpec {
        name: WEB.to_owned(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo service-starting; sleep 600".into(),
        ],
        ..ImageSpec::default()
    });
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");
    let sink = Collect::new();
    let exit = run(&mut executor, StageKind::Build, "echo job-goes-on\n", &sink).await;
    assert_eq!(exit, StageExit::Exited(0));
    let stdout = sink.text(OutputStream::Stdout);
    assert!(
        stdout.contains("*** WARNING: Service runner-test1234-project-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-runnel-test-web-0 probably didn't start properly."),
        "{stdout}"
    );
    assert!(
        stdout.contains("port(s) 8080 not reachable within 2 seconds"),
        "{stdout}"
    );
    assert!(
        stdout.contains("service-starting"),
        "the service logs are shown: {stdout}"
    );
    assert!(stdout.ends_with("job-goes-on\n"), "{stdout}");
    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
}

#[tokio::test]
async fn missing_images_fail_with_an_image_pull_failure_naming_the_image() {
    let docker = setup().await;
    for (policy, image) in [
        ("never", "runnel-test-missing:404"),
        ("always", "127.0.0.1:9/runnel/missing:1"),
    ] {
        let provider = provider(&format!("pull_policy = \"{policy}\""));
        let job = job(Some(image));
        let mut executor = provider.create().expect("executor");
        let error = prepare(&mut executor, &job)
            .await
            .expect_err("the image is missing");
        let ExecutorError::Backend { reason, source, .. } = &error else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(*reason, Some(FailureReason::ImagePullFailure));
        let message = source.to_string();
        assert!(
            message.starts_with(&format!(
                "failed to pull image `{image}` with policies [{policy}]: "
            )),
            "{message}"
        );
        if policy == "never" {
            insta::assert_snapshot!(message, @"failed to pull image `runnel-test-missing:404` with policies [never]: the image is not present locally and the pull policy is `never`");
        }
        executor.cleanup().await;
        assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
    }
}

#[tokio::test]
async fn forbidden_images_and_policies_are_configuration_errors() {
    let _docker = setup().await;
    let provider = provider(
        "allowed_images = [\"runnel-test-*\"]\nallowed_pull_policies = [\"if-not-present\"]\npull_policy = \"if-not-present\"",
    );
    let mut job = job(Some("evil/image:1"));
    let mut executor = provider.create().expect("executor");
    let error = prepare(&mut executor, &job)
        .await
        .expect_err("forbidden image");
    let ExecutorError::Backend { reason, source, .. } = &error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(*reason, Some(FailureReason::RunnerConfigurationError));
    insta::assert_snapshot!(source.to_string(), @"the image `evil/image:1` is not allowed by `allowed_images` (runnel-test-*)");
    executor.cleanup().await;

    job.image = Some(ImageSpec {
        name: BUSYBOX.to_owned(),
        pull_policy: vec!["always".to_owned()],
        ..ImageSpec::default()
    });
    let mut executor = provider.create().expect("executor");
    let error = prepare(&mut executor, &job)
        .await
        .expect_err("forbidden policy");
    let ExecutorError::Backend { source, .. } = &error else {
        panic!("unexpected error {error:?}");
    };
    insta::assert_snapshot!(source.to_string(), @"the pull policy `always` of image `runnel-test-busybox:1` is not allowed (allowed: if-not-present)");
    executor.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_daemon_is_a_clear_error() {
    let provider = provider("host = \"unix:///nonexistent/docker.sock\"");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    let error = prepare(&mut executor, &job)
        .await
        .expect_err("no daemon there");
    let ExecutorError::Backend { reason, source, .. } = &error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(*reason, None);
    insta::assert_snapshot!(source.to_string(), @"the docker daemon at `unix:///nonexistent/docker.sock` is not reachable");
    executor.cleanup().await;
}

/// Polls until nothing labelled with the job's id is left (fails after a generous timeout).
async fn wait_until_gone(docker: &Docker, job: &JobSpec) {
    let poll = async {
        loop {
            if leftovers(docker, job).await == (vec![], vec![], vec![]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if tokio::time::timeout(STEP_TIMEOUT, poll).await.is_err() {
        panic!(
            "objects were left behind: {:?}",
            leftovers(docker, job).await
        );
    }
}

#[tokio::test]
async fn dropping_a_stage_kills_it_and_dropping_the_executor_removes_everything() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"never\"\ndisable_cache = true");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");

    let sink = Collect::new();
    let cmd = StageCommand {
        stage: "step_script",
        script: "echo started\nsleep 600\n",
        inline: None,
        kind: StageKind::Build,
        env: &[],
        deadline: None,
    };
    let stage = executor.run(cmd, sink.as_ref(), CancellationToken::new());
    let abandoned = tokio::time::timeout(STEP_TIMEOUT, async {
        tokio::select! {
            _ = stage => panic!("the stage ended on its own"),
            () = sink.wait_for("started") => {}
        }
    });
    abandoned.await.expect("the stage never started");
    // The stage future is dropped here: its container must stop (the helper's idle shell
    // waits for the next stage until the executor goes).
    let stopped = async {
        loop {
            let containers = docker
                .list_containers(Some(ListContainersOptions {
                    all: false,
                    filters: Some(job_filter(&job)),
                    ..ListContainersOptions::default()
                }))
                .await
                .expect("list running containers");
            let build_running = containers
                .iter()
                .flat_map(|c| c.names.iter().flatten())
                .any(|name| name.ends_with("-build"));
            if !build_running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, stopped)
        .await
        .expect("the abandoned stage kept running");

    drop(executor);
    wait_until_gone(&docker, &job).await;
}

/// A network with `name` labelled as an object of `job` on runner `token`, as a killed run
/// leaves it; created through the API without a duplicate check, which engines before API
/// 1.44 accept, so two of them may share a name.
async fn leftover_network(docker: &Docker, name: &str, token: &str, job: &JobSpec) -> String {
    let labels = HashMap::from([
        (
            "com.gitlab.gitlab-runner.managed".to_owned(),
            "true".to_owned(),
        ),
        (
            "com.gitlab.gitlab-runner.runner.id".to_owned(),
            token.to_owned(),
        ),
        (
            "com.gitlab.gitlab-runner.job.id".to_owned(),
            job.id.0.to_string(),
        ),
    ]);
    docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .expect("create a leftover network")
        .id
}

#[tokio::test]
async fn leftovers_of_a_crashed_runner_are_removed_but_running_jobs_are_spared() {
    let docker = setup().await;
    // Its own token: other tests' jobs run in other providers and must not be touched.
    let token = format!("left{}", std::process::id() % 10_000);
    let crashed = provider_for(&token, "pull_policy = \"never\"\ndisable_cache = true");
    let lost_job = job(Some(BUSYBOX));
    let mut lost = crashed.create().expect("executor");
    prepare_with(&mut lost, &lost_job, true)
        .await
        .expect("prepare");
    // A crash: neither cleanup nor drop runs.
    std::mem::forget(lost);
    // Two leftovers of one name (an engine that accepted the duplicate).
    let duplicate = format!("{token}-duplicate-network");
    let first = leftover_network(&docker, &duplicate, &token, &lost_job).await;
    let second = leftover_network(&docker, &duplicate, &token, &lost_job).await;

    // The restarted runner: another provider, as another process would have.
    let restarted = provider_for(&token, "pull_policy = \"never\"\ndisable_cache = true");
    let running_job = job(Some(BUSYBOX));
    // The name this job's network gets is taken by a leftover: the job still runs.
    let taken = format!(
        "runner-{token}-{}-0-{}",
        running_job.info.project_id, running_job.id.0
    );
    let squatter = leftover_network(&docker, &taken, &token, &lost_job).await;
    let mut running = restarted.create().expect("executor");
    prepare_with(&mut running, &running_job, true)
        .await
        .expect("prepare");
    let sink = Collect::new();
    let exit = run(&mut running, StageKind::Build, "echo still-runs\n", &sink).await;
    assert_eq!(
        exit,
        StageExit::Exited(0),
        "{}",
        sink.text(OutputStream::Stderr)
    );
    assert!(sink.text(OutputStream::Stdout).ends_with("still-runs\n"));

    let removed = restarted
        .remove_leftovers()
        .await
        .expect("remove leftovers");
    assert_eq!(
        leftovers(&docker, &lost_job).await,
        (vec![], vec![], vec![])
    );
    assert!(
        removed.iter().any(|name| name.ends_with("-predefined")),
        "{removed:?}"
    );
    for id in [first, second, squatter] {
        assert!(
            docker.inspect_network(&id, None).await.is_err(),
            "leftover network {id} was removed"
        );
    }
    let (containers, networks, volumes) = leftovers(&docker, &running_job).await;
    assert_eq!((containers.len(), networks.len(), volumes.len()), (2, 1, 2));

    running.cleanup().await;
    assert_eq!(
        leftovers(&docker, &running_job).await,
        (vec![], vec![], vec![])
    );
}

#[tokio::test]
async fn with_a_network_mode_services_are_linked_under_their_aliases() {
    let docker = setup().await;
    let provider = provider(
        "pull_policy = \"never\"\nnetwork_mode = \"bridge\"\ndisable_cache = true\nwait_for_services_timeout = 60",
    );
    let mut job = job(Some(BUSYBOX));
    job.services.push(ImageSpec {
        name: WEB.to_owned(),
        aliases: vec!["linked-web".to_owned()],
        ..ImageSpec::default()
    });
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "wget -q -O - http://linked-web:8080/\n",
        &sink,
    )
    .await;
    let stdout = sink.text(OutputStream::Stdout);
    assert_eq!(
        exit,
        StageExit::Exited(0),
        "{stdout}{}",
        sink.text(OutputStream::Stderr)
    );
    assert!(stdout.ends_with("hello-from-service\n"), "{stdout}");
    let (_, networks, _) = leftovers(&docker, &job).await;
    assert!(
        networks.is_empty(),
        "no job network with a network_mode: {networks:?}"
    );
    tokio::time::timeout(STEP_TIMEOUT, executor.cleanup())
        .await
        .expect("cleanup hung");
    assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
}

/// `cleanup_deferred` ends what runs in the job's containers at once (the shells are told to
/// exit and the containers stop) and hands back the removal, which has not begun: the
/// containers and the temporary volumes are still there until it is awaited, and gone after.
#[tokio::test]
async fn deferred_cleanup_removes_only_when_awaited() {
    let docker = setup().await;
    let provider = provider("pull_policy = \"never\"\ndisable_cache = true");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare(&mut executor, &job).await.expect("prepare");
    let sink = Collect::new();
    assert_eq!(
        run(&mut executor, StageKind::Build, "echo built\n", &sink).await,
        StageExit::Exited(0)
    );
    let removal = tokio::time::timeout(STEP_TIMEOUT, executor.cleanup_deferred())
        .await
        .expect("cleanup hung")
        .expect("a removal is handed back");
    let stopped = async {
        loop {
            let running = docker
                .list_containers(Some(ListContainersOptions {
                    all: false,
                    filters: Some(job_filter(&job)),
                    ..ListContainersOptions::default()
                }))
                .await
                .expect("list running containers");
            if running.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, stopped)
        .await
        .expect("the shells kept running after their sessions ended");
    let (containers, _, volumes) = leftovers(&docker, &job).await;
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert_eq!(
        volumes.len(),
        2,
        "the temporary builds and (disable_cache) cache volumes: {volumes:?}"
    );
    drop(executor);
    tokio::time::timeout(STEP_TIMEOUT, removal)
        .await
        .expect("the removal hung");
    assert_eq!(leftovers(&docker, &job).await, (vec![], vec![], vec![]));
}
