//! The security review's findings and the helper image's provenance, as regression tests on
//! the real engine: privileged only as the allow-lists say, Runnel's own helper image (never a
//! same-named image of another origin), configured helper images checked, service aliases
//! validated, containers that stop by themselves, bounded service logs, resource figures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveImageOptions, TagImageOptions};
use runnel_executor::{
    Executor, ExecutorError, OutputStream, PrepareContext, Provider, Shell, StageCommand,
    StageExit, StageKind,
};
use runnel_executor_docker::helper_image::{BuiltinHelper, LABEL_VERSION, RUNNEL_VERSION};
use runnel_executor_docker::{DockerProvider, DockerSettings};
use runnel_types::{ImageSpec, JobSpec};
use tokio_util::sync::CancellationToken;

use crate::images::{self, BUSYBOX, HELPER, WEB};
use crate::support::{Collect, docker, docker_config, job};

/// A bound on every test step, so that a hang fails instead of blocking the suite.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn provider(helper_image: &str, helper_binary: Option<PathBuf>, section: &str) -> DockerProvider {
    let settings = DockerSettings {
        short_token: "hArDn1ng".to_owned(),
        token: format!("glrt-{}", "hArDn1ng").into(),
        system_id: "s_0123456789ab".to_owned(),
        runner_id: 7,
        gitlab_url: "https://gitlab.example.com".to_owned(),
        shell: Shell::Sh,
        helper_image: helper_image.to_owned(),
        helper_binary,
    };
    DockerProvider::new(settings, &docker_config(section)).expect("valid provider")
}

async fn setup() -> Docker {
    let docker = docker().await;
    images::ensure(&docker).await;
    docker
}

async fn prepare_with(
    executor: &mut Box<dyn Executor>,
    job: &JobSpec,
    debug_services: bool,
) -> Result<(), ExecutorError> {
    let ctx = PrepareContext {
        job,
        builds_dir: Path::new("/builds"),
        cache_dir: Path::new("/cache"),
        debug_services,
        project_slot: 0,
        git_fetch: false,
        network_per_build: false,
        predefined_housekeeping_only: false,
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

/// The ids of the containers labelled with the job's id.
async fn containers_of(docker: &Docker, job: &JobSpec) -> Vec<String> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("com.gitlab.gitlab-runner.job.id={}", job.id.0)],
            )])),
            ..ListContainersOptions::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|container| container.id)
        .collect()
}

/// Removes the job's volumes: its reusable cache volume outlives the job by design.
async fn remove_volumes(docker: &Docker, job: &JobSpec) {
    let volumes = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("com.gitlab.gitlab-runner.job.id={}", job.id.0)],
            )])),
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
            eprintln!("could not remove volume {}: {error}", volume.name);
        }
    }
}

fn error_text(error: &ExecutorError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn no_container_is_privileged_when_the_allow_lists_match_nothing() {
    let docker = setup().await;
    let provider = provider(
        HELPER,
        None,
        "pull_policy = \"never\"\nprivileged = true\nallowed_privileged_images = [\"nothing-matches:*\"]\nallowed_privileged_services = [\"nothing-matches:*\"]\nwait_for_services_timeout = 1",
    );
    let mut job = job(Some(BUSYBOX));
    job.services.push(ImageSpec {
        name: WEB.to_owned(),
        aliases: vec!["web".to_owned()],
        ..ImageSpec::default()
    });
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &job, false)
        .await
        .expect("prepare");
    let ids = containers_of(&docker, &job).await;
    assert_eq!(ids.len(), 3, "helper, build and service: {ids:?}");
    for id in &ids {
        let inspect = docker
            .inspect_container(id, None)
            .await
            .expect("inspect container");
        let role = inspect
            .config
            .and_then(|config| config.labels)
            .and_then(|labels| labels.get("com.gitlab.gitlab-runner.type").cloned())
            .unwrap_or_default();
        assert_eq!(
            inspect.host_config.and_then(|host| host.privileged),
            Some(false),
            "the {role} container is privileged"
        );
    }
    // And the job still runs, in both containers.
    for kind in [StageKind::Predefined, StageKind::Build] {
        let sink = Collect::new();
        let exit = run(&mut executor, kind, "echo still-runs\n", &sink).await;
        assert_eq!(exit, StageExit::Exited(0));
        assert!(sink.text(OutputStream::Stdout).contains("still-runs\n"));
    }
    executor.cleanup().await;
    assert!(containers_of(&docker, &job).await.is_empty());
    remove_volumes(&docker, &job).await;
}

#[tokio::test]
async fn invalid_service_aliases_fail_the_job_before_anything_is_created() {
    let docker = setup().await;
    let provider = provider(HELPER, None, "pull_policy = \"never\"");
    for alias in ["$(id)", "--privileged", "db\nother", "-v"] {
        let mut job = job(Some(BUSYBOX));
        job.services.push(ImageSpec {
            name: WEB.to_owned(),
            aliases: vec![alias.to_owned()],
            ..ImageSpec::default()
        });
        let mut executor = provider.create().expect("executor");
        let error = prepare_with(&mut executor, &job, false)
            .await
            .expect_err("an invalid alias fails the job");
        assert!(
            error_text(&error).contains(&format!("the service alias `{alias}` is invalid")),
            "{}",
            error_text(&error)
        );
        executor.cleanup().await;
        assert!(containers_of(&docker, &job).await.is_empty(), "{alias:?}");
    }
}

#[tokio::test]
async fn a_configured_helper_that_is_not_runnels_fails_jobs_that_need_it() {
    let docker = setup().await;
    // A plain busybox image as helper_image: fine for a job without artifacts or caches…
    let provider = provider(BUSYBOX, None, "pull_policy = \"never\"");
    let plain = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &plain, false)
        .await
        .expect("a job that needs no helper commands runs");
    executor.cleanup().await;
    remove_volumes(&docker, &plain).await;
    // …but a job with artifacts fails at its start, naming the fix.
    let mut with_artifacts = job(Some(BUSYBOX));
    with_artifacts
        .artifacts
        .push(runnel_types::ArtifactSpec::default());
    let mut executor = provider.create().expect("executor");
    let error = prepare_with(&mut executor, &with_artifacts, false)
        .await
        .expect_err("no Runnel helper, no artifacts");
    executor.cleanup().await;
    insta::assert_snapshot!(error_text(&error), @"the docker executor failed: helper_image `runnel-test-busybox:1` is not a Runnel helper image (it lacks the label com.gitlab.gitlab-runner.helper=runnel), and this job needs Runnel's helper for artifacts: remove `helper_image` from [runners.docker] to use the helper Runnel builds itself, or build one with `runnel docker build-helper-image --from runnel-test-busybox:1 --tag <tag>`");

    // A missing helper with an unqualified name is never pulled (it would come from Docker Hub).
    let missing = self::provider(
        "runnel-test-no-such-helper:1",
        None,
        "pull_policy = \"never\"",
    );
    let mut executor = missing.create().expect("executor");
    let error = prepare_with(&mut executor, &job(Some(BUSYBOX)), false)
        .await
        .err()
        .map(|error| error_text(&error))
        .unwrap_or_default();
    executor.cleanup().await;
    assert!(
        error.contains(
            "is not present locally and Runnel does not pull a helper image by an unqualified name"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn runnels_own_helper_is_built_locally_and_never_taken_from_another_origin() {
    let docker = setup().await;
    // A stand-in runner binary of its own, so this test gets a helper tag of its own.
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = dir.path().join("runnel");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    std::fs::write(
        &binary,
        format!(
            "#!/bin/sh\necho \"own-runnel $*\"\n# {nonce} {}\n",
            std::process::id()
        ),
    )
    .expect("write the stand-in binary");
    let tag = BuiltinHelper::for_binary(&binary)
        .expect("helper")
        .tag()
        .to_owned();
    assert!(tag.starts_with(&format!("runnel-helper:{RUNNEL_VERSION}-")));
    // An image of another origin under that very name, as a pull from a registry would leave.
    let (repo, version) = tag.split_once(':').expect("a tag");
    docker
        .tag_image(
            BUSYBOX,
            Some(TagImageOptions {
                repo: Some(repo.to_owned()),
                tag: Some(version.to_owned()),
            }),
        )
        .await
        .expect("tag the impostor");
    let impostor = docker
        .inspect_image(BUSYBOX)
        .await
        .expect("inspect")
        .id
        .expect("an id");

    let provider = provider("", Some(binary), "pull_policy = \"never\"");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &job, false)
        .await
        .expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Predefined,
        "gitlab-runner-helper --version\ngit --version\ntest -e /etc/nsswitch.conf && echo own-helper-files\n",
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
        stdout.contains(&format!(
            "WARNING: the image {tag} on this Docker engine was not built by this Runnel"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "Building Runnel's helper image {tag} from this host's"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("own-runnel --version\n"), "{stdout}");
    assert!(stdout.contains("git version "), "{stdout}");
    assert!(stdout.contains("own-helper-files\n"), "{stdout}");
    let built = docker.inspect_image(&tag).await.expect("the helper image");
    assert_ne!(built.id.as_deref(), Some(impostor.as_str()));
    assert_eq!(
        built
            .config
            .clone()
            .and_then(|config| config.labels)
            .and_then(|labels| labels.get(LABEL_VERSION).cloned())
            .as_deref(),
        Some(RUNNEL_VERSION)
    );
    // The predefined container runs that image, by id.
    let mut predefined = 0;
    for id in containers_of(&docker, &job).await {
        let inspect = docker.inspect_container(&id, None).await.expect("inspect");
        let role = inspect
            .config
            .and_then(|config| config.labels)
            .and_then(|labels| labels.get("com.gitlab.gitlab-runner.type").cloned());
        if role.as_deref() == Some("predefined") {
            predefined += 1;
            assert_eq!(inspect.image, built.id);
        }
    }
    assert_eq!(predefined, 1);
    executor.cleanup().await;

    // Built once: the next job reuses it.
    let second = crate::support::job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &second, false)
        .await
        .expect("prepare");
    let sink = Collect::new();
    run(&mut executor, StageKind::Predefined, "true\n", &sink).await;
    assert!(
        !sink.text(OutputStream::Stdout).contains("Building"),
        "{}",
        sink.text(OutputStream::Stdout)
    );
    executor.cleanup().await;
    remove_volumes(&docker, &job).await;
    remove_volumes(&docker, &second).await;
    if let Err(error) = docker
        .remove_image(&tag, None::<RemoveImageOptions>, None)
        .await
    {
        eprintln!("could not remove {tag}: {error}");
    }
}

#[tokio::test]
async fn containers_stop_by_themselves_after_the_timeout_and_grace() {
    let docker = setup().await;
    // As if the runner were gone: the stage has no deadline of its own.
    let provider = provider(HELPER, None, "pull_policy = \"never\"")
        .with_hard_stop_grace(Duration::from_secs(4));
    let mut job = job(Some(BUSYBOX));
    job.timeout = Some(Duration::from_secs(1));
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &job, false)
        .await
        .expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "echo started\nsleep 120\necho not-reached\n",
        &sink,
    )
    .await;
    let stdout = sink.text(OutputStream::Stdout);
    let stderr = sink.text(OutputStream::Stderr);
    assert_ne!(exit, StageExit::Exited(0), "{stdout}{stderr}");
    assert!(!stdout.contains("not-reached"), "{stdout}");
    if stdout.contains("started") {
        assert!(
            stderr.contains("stopping every process of this container (runnel hard stop)"),
            "{stderr}"
        );
    } else {
        // A slow machine: the deadline passed before the stage even started.
        assert!(stderr.contains("past its timeout and grace"), "{stderr}");
    }
    // Nothing runs in the job's containers any more: a later stage either finds the session
    // gone (the container was killed: 137) or, when the container is started again, is
    // refused by the deadline check.
    let sink = Collect::new();
    let exit = run(&mut executor, StageKind::Predefined, "echo ran\n", &sink).await;
    let stderr = sink.text(OutputStream::Stderr);
    assert!(
        matches!(exit, StageExit::Exited(1 | 137)),
        "{exit:?}: {stderr}"
    );
    assert!(!sink.text(OutputStream::Stdout).contains("ran"));
    if exit == StageExit::Exited(1) {
        assert!(
            stderr.contains("this container stops by itself (runnel hard stop)"),
            "{stderr}"
        );
    }
    executor.cleanup().await;
    assert!(containers_of(&docker, &job).await.is_empty());
    remove_volumes(&docker, &job).await;
}

#[tokio::test]
async fn a_service_writing_without_newlines_gives_bounded_lines() {
    let docker = setup().await;
    let provider = provider(
        HELPER,
        None,
        "pull_policy = \"never\"\nwait_for_services_timeout = 1",
    );
    let mut job = job(Some(BUSYBOX));
    job.services.push(ImageSpec {
        name: WEB.to_owned(),
        aliases: vec!["noisy".to_owned()],
        command: vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "yes | head -c 3000000 | tr -d '\\n'; echo; echo noisy-done; exec sleep 300".to_owned(),
        ],
        ..ImageSpec::default()
    });
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &job, true)
        .await
        .expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        "sleep 4\necho job-done\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(0));
    let stdout = sink.text(OutputStream::Stdout);
    let prefix = "[service:runnel-test-web-noisy] ";
    let service_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(prefix)).collect();
    assert!(service_lines.len() > 10, "{}", service_lines.len());
    let longest = service_lines.iter().map(|l| l.len()).max().unwrap_or(0);
    assert!(
        longest <= prefix.len() + 16 * 1024,
        "a service line of {longest} bytes"
    );
    assert!(stdout.contains("job-done\n"));
    executor.cleanup().await;
    assert!(containers_of(&docker, &job).await.is_empty());
    remove_volumes(&docker, &job).await;
}

#[tokio::test]
async fn the_containers_cpu_and_memory_are_reported() {
    let docker = setup().await;
    let provider = provider(HELPER, None, "pull_policy = \"never\"");
    let job = job(Some(BUSYBOX));
    let mut executor = provider.create().expect("executor");
    prepare_with(&mut executor, &job, false)
        .await
        .expect("prepare");
    let sink = Collect::new();
    let exit = run(
        &mut executor,
        StageKind::Build,
        // About 30 MB held in a shell variable, a busy loop, then time for a sample.
        "x=$(head -c 30000000 /dev/zero | tr '\\0' a)\ni=0\nwhile [ $i -lt 300000 ]; do i=$((i+1)); done\nsleep 3\necho ${#x}\n",
        &sink,
    )
    .await;
    assert_eq!(exit, StageExit::Exited(0));
    assert!(sink.text(OutputStream::Stdout).contains("30000000\n"));
    let usage = (*sink.resources.lock().expect("lock")).expect("figures reported");
    assert!(usage.peak_memory_bytes > 20 << 20, "{usage:?}");
    assert!(usage.cpu_seconds > 0.1, "{usage:?}");
    assert!(usage.peak_cores > 0.0, "{usage:?}");
    executor.cleanup().await;
    assert!(containers_of(&docker, &job).await.is_empty());
    remove_volumes(&docker, &job).await;
}
