//! The docker executor through `runnel run`, against the real Docker engine and images built
//! here (no registry is reachable).

use std::process::Command;

use runnel_fake_gitlab::RemoteStatus;

use crate::run::{Daemon, Setup, final_update, job};

/// A `FROM scratch` image with the host's static busybox.
const IMAGE: &str = "runnel-e2e-busybox:1";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (these tests need Docker)")
}

fn ensure_image() {
    if docker(&["image", "inspect", IMAGE]).status.success() {
        return;
    }
    let context = tempfile::tempdir().unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("the docker tests need a static busybox: apt-get install busybox-static");
    std::fs::copy(busybox, context.path().join("busybox")).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && /bin/busybox mkdir -p /tmp && /bin/busybox chmod 1777 /tmp\"]\n",
    )
    .unwrap();
    let built = docker(&["build", "-q", "-t", IMAGE, context.path().to_str().unwrap()]);
    assert!(
        built.status.success(),
        "building {IMAGE} failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

fn docker_setup(image: &str) -> Setup {
    Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{image}\"\n    helper_image = \"{IMAGE}\"\n    pull_policy = [\"never\"]\n"
        ),
        ..Setup::default()
    }
}

fn containers_of(daemon: &Daemon) -> String {
    let short = runnel_types::short_token(&daemon.token);
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=runner-{short}"),
        "--format",
        "{{.Names}}",
    ]);
    String::from_utf8_lossy(&listed.stdout).into_owned()
}

#[tokio::test]
async fn a_job_runs_in_its_image_and_leaves_nothing_behind() {
    ensure_image();
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let id = daemon.fake.enqueue(job("in-docker").script([
        "echo \"in container as $(id -u)\"",
        "test -f /.dockerenv && echo dockerenv-present",
        "echo \"project dir $CI_PROJECT_DIR\"",
    ]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!("Using Docker executor with image {IMAGE}")),
        "{trace}"
    );
    assert!(trace.contains("in container as 0\n"), "{trace}");
    assert!(trace.contains("dockerenv-present\n"), "{trace}");
    assert!(
        containers_of(&daemon).trim().is_empty(),
        "containers left: {}",
        containers_of(&daemon)
    );
}

#[tokio::test]
async fn a_missing_image_fails_the_job_with_a_clear_message() {
    ensure_image();
    let daemon = Daemon::start(docker_setup("runnel-e2e-missing:404")).await;
    let id = daemon.fake.enqueue(job("no-image").script(["echo never"]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("runnel-e2e-missing:404"),
        "the image is named: {trace}"
    );
    assert!(!trace.contains("\nnever\n"), "{trace}");
    let reason = final_update(&view).failure_reason.clone();
    assert!(
        matches!(
            reason.as_deref(),
            Some("image_pull_failure" | "runner_system_failure")
        ),
        "{reason:?}"
    );
}

#[tokio::test]
async fn build_helper_image_puts_this_binary_into_the_image() {
    ensure_image();
    let home = tempfile::tempdir().unwrap();
    let tag = "runnel-e2e-helper:test";
    let run = crate::support::run_runnel(
        &[
            "docker",
            "build-helper-image",
            "--from",
            IMAGE,
            "--tag",
            tag,
        ],
        "",
        home.path(),
    )
    .await;
    run.assert_success();
    let listed = docker(&[
        "run",
        "--rm",
        tag,
        "/bin/ls",
        "/usr/bin/runnel",
        "/usr/bin/gitlab-runner-helper",
    ]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        stdout.contains("/usr/bin/runnel") && stdout.contains("/usr/bin/gitlab-runner-helper"),
        "{stdout}"
    );
}
