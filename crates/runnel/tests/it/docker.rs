//! The docker executor through `runnel run`, against the real Docker engine and images built
//! here (no registry is reachable).
//!
//! Images (built once per machine, reused by tag):
//! - `runnel-e2e-busybox:1`: `FROM scratch` plus the host's static busybox.
//! - `runnel-e2e-web:1`: busybox `httpd` serving a page on port 8080 (a service).
//! - `runnel-e2e-git:2-<hash>`: the busybox image plus the host's glibc `git`,
//!   `git-remote-http`, the libraries `ldd` lists for them and for the runnel binary, and the
//!   host's CA bundle.
//! - `runnel-e2e-helper-git:<binary fingerprint>`: the helper image
//!   `runnel docker build-helper-image` makes from that with the runnel binary under test.
//!
//! Every test ends by checking that no container, network or temporary volume of its runner is
//! left, then removes its runner's reusable cache volumes (they outlive jobs by design).

use std::hash::{Hash, Hasher};
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use md5::Digest as _;
use runnel_fake_gitlab::{GitStrategy, JobBuilder, RemoteStatus};
use serde_json::json;

use crate::run::{Daemon, Setup, final_update, job};

/// A `FROM scratch` image with the host's static busybox.
pub(crate) const IMAGE: &str = "runnel-e2e-busybox:1";
/// Busybox `httpd` serving `hello-from-service` on port 8080.
pub(crate) const WEB: &str = "runnel-e2e-web:1";
/// The busybox image plus the host's glibc git (for HTTP), its libraries and the runnel
/// binary's; the tag gets a suffix naming those libraries.
const GIT: &str = "runnel-e2e-git:2";

/// Serializes image builds: tests run in parallel and would otherwise build the same tag.
static BUILDS: Mutex<()> = Mutex::new(());

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (these tests need Docker)")
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", tag]).status.success()
}

/// Builds `tag` from `context` with the docker CLI, panicking with its stderr on failure.
fn build(tag: &str, context: &Path) {
    let built = docker(&["build", "-q", "-t", tag, context.to_str().unwrap()]);
    assert!(
        built.status.success(),
        "building {tag} failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

pub(crate) fn ensure_image() {
    let _guard = BUILDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !image_exists(IMAGE) {
        let context = tempfile::tempdir().unwrap();
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("the docker tests need a static busybox: apt-get install busybox-static");
        std::fs::copy(busybox, context.path().join("busybox")).unwrap();
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && /bin/busybox mkdir -p /tmp && /bin/busybox chmod 1777 /tmp\"]\n",
        )
        .unwrap();
        build(IMAGE, context.path());
    }
    if !image_exists(WEB) {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(
            context.path().join("Dockerfile"),
            format!(
                "FROM {IMAGE}\nRUN mkdir -p /www && echo hello-from-service > /www/index.html\nEXPOSE 8080\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            ),
        )
        .unwrap();
        build(WEB, context.path());
    }
}

/// The shared libraries `ldd` lists for `binary` (absolute paths, the loader included).
fn libraries(binary: &Path) -> Vec<String> {
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|error| panic!("the docker tests need `ldd`: {error}"));
    assert!(ldd.status.success(), "ldd {} failed", binary.display());
    String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => line.trim().split(' ').next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// Copies `binary` to `rootfs/<inside>` (when given) and every library `ldd` lists for it to
/// the same path under `rootfs`.
fn copy_with_libraries(binary: &Path, inside: Option<&str>, rootfs: &Path) {
    if let Some(inside) = inside {
        let target = rootfs.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(binary, &target)
            .unwrap_or_else(|error| panic!("copy {}: {error}", binary.display()));
    }
    for path in libraries(binary) {
        let library = rootfs.join(path.trim_start_matches('/'));
        if library.exists() {
            continue;
        }
        std::fs::create_dir_all(library.parent().unwrap()).unwrap();
        std::fs::copy(&path, &library).unwrap_or_else(|error| panic!("copy {path}: {error}"));
    }
}

/// The glibc helper image with git and the runnel binary under test; returns its tag.
///
/// The git base is built once per machine (its tag names the libraries it carries, so a
/// binary linking a new library gets a new base); the helper is tagged with the binary's size
/// and modification time, so a rebuilt binary gets a fresh helper and an unchanged one is
/// reused.
pub(crate) async fn ensure_git_helper() -> String {
    ensure_image();
    let exe = env!("CARGO_BIN_EXE_runnel");
    let meta = std::fs::metadata(exe).unwrap();
    let modified = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let tag = format!(
        "runnel-e2e-helper-git:{:x}-{:x}",
        meta.len(),
        modified.as_nanos()
    );
    let mut hasher = std::hash::DefaultHasher::new();
    libraries(Path::new(exe)).hash(&mut hasher);
    let base = format!("{GIT}-{:016x}", hasher.finish());
    {
        let _guard = BUILDS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !image_exists(&base) {
            let (git, core) = ["/usr/bin/git", "/usr/local/bin/git"]
                .into_iter()
                .map(|git| {
                    let exec_path = Command::new(git).arg("--exec-path").output();
                    let core = exec_path
                        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                        .unwrap_or_default();
                    (git, core)
                })
                .find(|(_, core)| Path::new(core).join("git-remote-http").exists())
                .expect("the docker tests need git with git-remote-http (apt-get install git)");
            let context = tempfile::tempdir().unwrap();
            let rootfs = context.path().join("rootfs");
            copy_with_libraries(Path::new(git), Some("/usr/bin/git"), &rootfs);
            copy_with_libraries(
                &Path::new(&core).join("git-remote-http"),
                Some(&format!("{core}/git-remote-http")),
                &rootfs,
            );
            copy_with_libraries(Path::new(exe), None, &rootfs);
            std::fs::create_dir_all(rootfs.join("usr/share/git-core/templates")).unwrap();
            // Real helper bases carry CA certificates; the runner's HTTP client wants them
            // even for an http:// URL.
            let bundle = "/etc/ssl/certs/ca-certificates.crt";
            std::fs::create_dir_all(rootfs.join("etc/ssl/certs")).unwrap();
            std::fs::copy(bundle, rootfs.join(bundle.trim_start_matches('/')))
                .unwrap_or_else(|error| panic!("the docker tests need {bundle}: {error}"));
            std::fs::write(
                context.path().join("Dockerfile"),
                format!(
                    "FROM {IMAGE}\nCOPY rootfs/ /\nRUN ln -s /usr/bin/git {core}/git && ln -s git-remote-http {core}/git-remote-https\n"
                ),
            )
            .unwrap();
            build(&base, context.path());
        }
        if image_exists(&tag) {
            return tag;
        }
    }
    let home = tempfile::tempdir().unwrap();
    let run = crate::support::run_runnel(
        &[
            "docker",
            "build-helper-image",
            "--from",
            &base,
            "--tag",
            &tag,
        ],
        "",
        home.path(),
    )
    .await;
    run.assert_success();
    tag
}

fn docker_setup(image: &str) -> Setup {
    docker_setup_with(image, "")
}

/// A docker runner on `image` with the busybox helper, pull policy `never`, and `extra` lines
/// in `[runners.docker]`.
fn docker_setup_with(image: &str, extra: &str) -> Setup {
    Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{image}\"\n    helper_image = \"{IMAGE}\"\n    pull_policy = [\"never\"]\n{extra}"
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

/// The names of the `kind` objects (`container`, `network`, `volume`) labelled with this
/// daemon's runner.
fn labelled(daemon: &Daemon, kind: &str, extra_filter: Option<&str>) -> Vec<String> {
    let short = runnel_types::short_token(&daemon.token);
    let label = format!("label=com.gitlab.gitlab-runner.runner.id={short}");
    let mut args = match kind {
        "container" => vec!["ps", "-a", "-q"],
        "network" => vec!["network", "ls", "-q"],
        _ => vec!["volume", "ls", "-q"],
    };
    args.extend(["--filter", &label]);
    if let Some(filter) = extra_filter {
        args.extend(["--filter", filter]);
    }
    let listed = docker(&args);
    assert!(
        listed.status.success(),
        "listing {kind}s: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts that nothing of this runner is left but its reusable cache volumes ([`Sweep`]
/// removes those). Containers are removed right after a job's final state is reported, so
/// this waits (a minute at most) for the runner to be done with them first.
pub(crate) fn assert_nothing_left(daemon: &Daemon) {
    let left = || {
        !labelled(daemon, "container", None).is_empty()
            || !labelled(daemon, "network", None).is_empty()
            || !labelled(
                daemon,
                "volume",
                Some("label=com.gitlab.gitlab-runner.reusable=false"),
            )
            .is_empty()
    };
    for _ in 0..300 {
        if !left() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        labelled(daemon, "container", None),
        Vec::<String>::new(),
        "containers left"
    );
    assert!(containers_of(daemon).trim().is_empty(), "containers left");
    assert_eq!(
        labelled(daemon, "network", None),
        Vec::<String>::new(),
        "networks left"
    );
    assert_eq!(
        labelled(
            daemon,
            "volume",
            Some("label=com.gitlab.gitlab-runner.reusable=false")
        ),
        Vec::<String>::new(),
        "temporary volumes left"
    );
}

/// Removes whatever this runner left, when dropped: a failing test must not litter the
/// machine (a passing one has already checked there is nothing but cache volumes).
pub(crate) struct Sweep(String);

impl Sweep {
    pub(crate) fn new(daemon: &Daemon) -> Self {
        Self(runnel_types::short_token(&daemon.token).to_string())
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let label = format!("label=com.gitlab.gitlab-runner.runner.id={}", self.0);
        for (list, remove) in [
            (&["ps", "-a", "-q"][..], &["rm", "-f"][..]),
            (&["network", "ls", "-q"][..], &["network", "rm"][..]),
            (&["volume", "ls", "-q"][..], &["volume", "rm", "-f"][..]),
        ] {
            let listed = docker(&[list, &["--filter", &label]].concat());
            for name in String::from_utf8_lossy(&listed.stdout).lines() {
                docker(&[remove, &[name]].concat());
            }
        }
    }
}

/// The official `ProjectRealUniqueName` of `project`'s concurrency `slot` on this runner:
/// `runner-` and the first 16 bytes of the SHA-256 of `<token>-<system id>-<project>-<slot>`,
/// in hex (computed here independently of the executor's code).
fn real_unique_name(daemon: &Daemon, project: u64, slot: u32) -> String {
    use sha2::Digest as _;
    let system_id = std::fs::read_to_string(daemon.dir.path().join(".runner_system_id"))
        .expect("the daemon wrote its system id");
    let digest = sha2::Sha256::digest(
        format!("{}-{}-{project}-{slot}", daemon.token, system_id.trim()).as_bytes(),
    );
    format!("runner-{}", hex::encode(&digest[..16]))
}

fn zip_names(data: &[u8]) -> Vec<String> {
    let archive = zip::ZipArchive::new(Cursor::new(data)).expect("a zip archive");
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .collect();
    names.sort();
    names
}

fn zip_entry(data: &[u8], name: &str) -> String {
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).expect("a zip archive");
    let mut entry = archive.by_name(name).expect("the entry");
    let mut text = String::new();
    entry.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn a_job_runs_in_its_image_and_leaves_nothing_behind() {
    ensure_image();
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
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
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_missing_image_fails_the_job_with_a_clear_message() {
    ensure_image();
    let daemon = Daemon::start(docker_setup("runnel-e2e-missing:404")).await;
    let _sweep = Sweep::new(&daemon);
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
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn build_helper_image_refuses_a_base_where_this_binary_cannot_run() {
    ensure_image();
    let home = tempfile::tempdir().unwrap();
    let tag = format!("runnel-e2e-helper-refused:{}", std::process::id());
    // A static busybox image has no C library and no loader for this (dynamic) binary.
    let run = crate::support::run_runnel(
        &[
            "docker",
            "build-helper-image",
            "--from",
            IMAGE,
            "--tag",
            &tag,
        ],
        "",
        home.path(),
    )
    .await;
    assert!(!run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the runnel binary cannot run in helper image `{tag}`"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("run `runnel docker build-helper-image` without `--from`"),
        "the fix is named: {}",
        run.stderr
    );
    assert!(!image_exists(&tag), "the unusable image is not left behind");
}

#[tokio::test]
async fn build_helper_image_without_a_base_is_self_contained() {
    ensure_image();
    let home = tempfile::tempdir().unwrap();
    let tag = "runnel-e2e-own-helper:test";
    let run = crate::support::run_runnel(
        &["docker", "build-helper-image", "--tag", tag],
        "",
        home.path(),
    )
    .await;
    run.assert_success();
    let versioned = run.stdout.trim().to_owned();
    assert_eq!(versioned, tag, "{}", run.stderr);
    // FROM scratch: everything the helper runs comes with it.
    let ran = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        tag,
        "sh",
        "-c",
        "gitlab-runner-helper --version && git --version && git lfs version && ls /bin/bash",
    ]);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(stdout.contains("git version "), "{stdout}");
    assert!(stdout.contains("git-lfs/"), "{stdout}");
    docker(&["rmi", tag]);
}

/// `[runners.docker]` with an image and nothing about a helper: Runnel's own helper.
pub(crate) fn own_helper_setup(extra: &str) -> Setup {
    Setup {
        executor: Some("docker"),
        // The fake listens on loopback: the containers share the host's network to reach it.
        tables: format!(
            "  [runners.docker]\n    image = \"{IMAGE}\"\n    pull_policy = [\"never\"]\n    network_mode = \"host\"\n{extra}"
        ),
        ..Setup::default()
    }
}

#[tokio::test]
async fn without_helper_image_jobs_clone_cache_and_upload_artifacts_in_a_static_image() {
    ensure_image();
    let daemon = Daemon::start(own_helper_setup("")).await;
    let _sweep = Sweep::new(&daemon);
    let repo = daemon.fake.create_repo("group/project").unwrap();
    let sha = repo
        .commit("main", "first")
        .file("README.md", "from-the-repository\n")
        .create()
        .unwrap();
    let cache = json!([{
        "key": "deps",
        "untracked": false,
        "policy": "pull-push",
        "paths": ["vendor/"],
        "when": "on_success",
        "fallback_keys": [],
    }]);
    let first = daemon.fake.enqueue(
        JobBuilder::new("build")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .script([
                "cat README.md",
                "mkdir -p out vendor",
                "echo built > out/result.txt",
                "echo cached-v1 > vendor/lib.txt",
            ])
            .extra("cache", cache.clone())
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
    let view = daemon.finished(first).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Created fresh repository."), "{trace}");
    assert!(trace.contains("from-the-repository\n"), "{trace}");
    assert!(trace.contains("Created cache"), "{trace}");
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{trace}"
    );
    assert!(trace.contains("Resource usage: peak memory "), "{trace}");
    assert_eq!(view.artifacts.len(), 1, "{:?}", view.artifacts);
    assert_eq!(
        zip_entry(&view.artifacts[0].data, "out/result.txt"),
        "built\n"
    );

    // The next job restores the cache with the same helper, which is not built again.
    let second = daemon.fake.enqueue(
        JobBuilder::new("use")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .script(["cat vendor/lib.txt"])
            .extra("cache", cache),
    );
    let view = daemon.finished(second).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert!(trace.contains("cached-v1\n"), "{trace}");
    assert!(!trace.contains("Building Runnel's helper image"), "{trace}");
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_helper_image_that_is_not_runnels_fails_a_job_with_artifacts() {
    ensure_image();
    // The busybox image as helper_image: no runner binary in it.
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("needs-helper")
            .script(["mkdir -p out", "echo built > out/result.txt"])
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
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains(&format!(
            "helper_image `{IMAGE}` is not a Runnel helper image"
        )),
        "{trace}"
    );
    assert!(trace.contains("remove `helper_image`"), "{trace}");
    assert!(view.artifacts.is_empty());
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_service_is_reached_by_its_alias() {
    ensure_image();
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("with-service")
            .extra("services", json!([{ "name": WEB, "alias": "web" }]))
            .script(["wget -qO- http://web:8080/"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Waiting for services to be up and running (timeout 30 seconds)..."),
        "{trace}"
    );
    assert!(trace.contains("hello-from-service\n"), "{trace}");
    assert!(
        !trace.contains("probably didn't start properly"),
        "the service came up: {trace}"
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_service_that_never_listens_is_reported_and_the_job_goes_on() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    wait_for_services_timeout = 2\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("broken-service")
            .extra(
                "services",
                json!([{
                    "name": WEB,
                    "alias": "broken",
                    "command": ["sh", "-c", "echo broken-service-says-hi; exec sleep 300"]
                }]),
            )
            .script(["echo job-went-on"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    let warning = trace
        .find("*** WARNING: Service ")
        .unwrap_or_else(|| panic!("the official warning: {trace}"));
    let job_output = trace.find("job-went-on\n").expect("the script ran");
    assert!(warning < job_output, "the warning comes first: {trace}");
    assert!(
        trace.contains("Waiting for services to be up and running (timeout 2 seconds)..."),
        "{trace}"
    );
    assert!(trace.contains("probably didn't start properly."), "{trace}");
    assert!(trace.contains("Health check error:"), "{trace}");
    assert!(trace.contains("8080"), "the port is named: {trace}");
    assert!(trace.contains("Service container logs:"), "{trace}");
    assert!(
        trace.contains("broken-service-says-hi"),
        "the service's own output: {trace}"
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn ci_debug_services_streams_service_output_into_the_job_log() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    wait_for_services_timeout = 1\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("debug-services")
            .variable("CI_DEBUG_SERVICES", "true")
            .extra(
                "services",
                json!([{
                    "name": WEB,
                    "alias": "chatty",
                    "command": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo service-line-$i; sleep 0.3; done; exec sleep 300"]
                }]),
            )
            .script(["sleep 4", "echo job-line-done"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    let prefix = "[service:runnel-e2e-web-chatty] ";
    let service_lines: Vec<&str> = trace.lines().filter(|l| l.starts_with(prefix)).collect();
    assert!(
        service_lines.iter().any(|l| l.ends_with(" service-line-1")),
        "the first line, timestamped: {trace}"
    );
    // Lines written while the script sleeps arrive during the script, before its last line.
    let streamed = trace
        .find("service-line-10")
        .unwrap_or_else(|| panic!("the tenth line: {trace}"));
    assert!(
        streamed < trace.find("job-line-done\n").expect("the script ran"),
        "{trace}"
    );
    // Each service line is a whole line of its own: timestamp, then the text.
    for line in &service_lines {
        let rest = &line[prefix.len()..];
        let (stamp, _text) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(stamp.ends_with('Z') && stamp.contains('T'), "{line:?}");
    }
    assert_nothing_left(&daemon);
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon runs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmHWM in /proc/<pid>/status")
        * 1024
}

#[tokio::test]
async fn output_without_newlines_cannot_grow_the_daemon() {
    ensure_image();
    let daemon = Daemon::start(Setup {
        runner: "  output_limit = 256".to_owned(),
        ..docker_setup_with(IMAGE, "    wait_for_services_timeout = 1\n")
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let pid = daemon.pid().expect("the daemon runs");
    let noisy_job = |bytes: u64| {
        job("noisy-service")
            .variable("CI_DEBUG_SERVICES", "true")
            .extra(
                "services",
                json!([{
                    "name": WEB,
                    "alias": "noisy",
                    "command": ["sh", "-c", format!("yes | head -c {bytes} | tr -d '\\n'; echo; echo noisy-finished; exec sleep 300")]
                }]),
            )
            .script(["sleep 8", "echo job-line-done"])
    };
    // The same job with a quiet service first: what any such job costs is not counted.
    let quiet = daemon.fake.enqueue(noisy_job(100));
    let view = daemon.finished(quiet).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    let before = peak_memory(pid);
    // 40 MB without a newline, `yes`-like; the job waits for it to be streamed.
    let id = daemon.fake.enqueue(noisy_job(40_000_000));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("[service:runnel-e2e-web-noisy] "), "{trace}");
    assert!(trace.contains("Job's log exceeded limit"), "{trace}");
    let grown = peak_memory(pid).saturating_sub(before);
    eprintln!(
        "daemon peak memory: {} KiB before, grown by {} KiB",
        before >> 10,
        grown >> 10
    );
    assert!(
        grown < 16 << 20,
        "the daemon grew by {} MiB for a service writing 40 MB without newlines",
        grown >> 20
    );
    // Nor can a job that never ends its line.
    let before = peak_memory(pid);
    let id = daemon.fake.enqueue(job("endless-line").script([
        "head -c 40000000 /dev/zero | tr '\\0' y",
        "echo",
        "echo done",
    ]));
    let view = daemon.finished(id).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    let grown = peak_memory(pid).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the daemon grew by {} MiB for a job writing 40 MB without newlines",
        grown >> 20
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn without_ci_debug_services_service_output_stays_out_of_the_job_log() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    wait_for_services_timeout = 1\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("quiet-services")
            .extra(
                "services",
                json!([{
                    "name": WEB,
                    "alias": "chatty",
                    "command": ["sh", "-c", "echo service-line-1; exec sleep 300"]
                }]),
            )
            .script(["sleep 1", "echo job-line-done"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("job-line-done"), "{trace}");
    assert!(!trace.contains("[service:"), "{trace}");
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_disallowed_image_fails_the_job_and_names_the_rule() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    allowed_images = [\"runnel-e2e-busybox:*\"]\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("forbidden")
            .extra("image", json!({ "name": "runnel-e2e-web:1" }))
            .script(["echo never-ran"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains(
            "the image `runnel-e2e-web:1` is not allowed by `allowed_images` (runnel-e2e-busybox:*)"
        ),
        "{trace}"
    );
    assert!(!trace.contains("\nnever-ran\n"), "{trace}");
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn the_memory_limit_reaches_the_job_container() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(IMAGE, "    memory = \"64m\"\n")).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(job("memory").script([
        // cgroup v2 first, then v1.
        "echo \"limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\"",
    ]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!("limit={}\n", 64 * 1024 * 1024)),
        "{trace}"
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn cpuset_mems_reaches_the_job_container() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(IMAGE, "    cpuset_mems = \"0\"\n")).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon
        .fake
        .enqueue(job("mems").script(["echo ready", "sleep 3"]));
    // The container's cpuset files are not visible inside it on every host: the engine says.
    daemon.printed(id, "ready\n").await;
    let containers = labelled(&daemon, "container", None);
    let inspected = docker(
        &[
            ["inspect", "--format"].as_slice(),
            &["{{index .Config.Labels \"com.gitlab.gitlab-runner.type\"}}={{.HostConfig.CpusetMems}}"],
            &containers.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let inspected = String::from_utf8_lossy(&inspected.stdout).into_owned();
    assert!(
        inspected.lines().any(|line| line == "build=0"),
        "{inspected}"
    );
    daemon.succeeded(id).await;
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn mac_address_is_the_build_containers_or_the_job_fails_naming_the_engine() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    mac_address = \"92:d0:c6:0a:29:33\"\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon
        .fake
        .enqueue(job("mac").script(["echo \"mac=$(cat /sys/class/net/eth0/address)\""]));
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    // Engines before API 1.44 took the address as a container setting, which the current API
    // no longer has: there the job fails, naming the setting and the engine's version.
    let version = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let (major, minor) = version.split_once('.').expect("an API version");
    if (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) < (1, 44) {
        assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
        assert!(
            trace.contains(&format!(
                "`mac_address` in [runners.docker] needs Docker Engine API 1.44 or newer; this engine speaks {version}"
            )),
            "{trace}"
        );
        assert!(!trace.contains("mac="), "{trace}");
    } else {
        assert_eq!(view.status, RemoteStatus::Success, "{trace}");
        assert!(trace.contains("mac=92:d0:c6:0a:29:33\n"), "{trace}");
    }
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn gpus_are_requested_from_the_engine() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(IMAGE, "    gpus = \"all\"\n")).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon
        .fake
        .enqueue(job("gpus").script(["echo not-reached"]));
    // This engine has no GPU driver: it refuses the request, and the job says so.
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("could not select device driver \"\" with capabilities: [[gpu]]"),
        "{trace}"
    );
    assert!(!trace.contains("not-reached\n"), "{trace}");
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn services_devices_reach_the_services_whose_image_matches() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    wait_for_services_timeout = 1\n    [runners.docker.services_devices]\n      \"runnel-e2e-web:*\" = [\"/dev/null:/dev/runnel-null\"]\n      \"no-such-image\" = [\"/dev/zero:/dev/runnel-zero\"]\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("services-devices")
            .variable("CI_DEBUG_SERVICES", "true")
            .extra(
                "services",
                json!([{
                    "name": WEB,
                    "alias": "devices",
                    "command": ["sh", "-c", "ls /dev/runnel-null /dev/runnel-zero; exec sleep 300"]
                }]),
            )
            .script([
                "sleep 2",
                "test ! -e /dev/runnel-null && echo not-in-the-job",
            ]),
    );
    let trace = daemon.succeeded(id).await;
    assert!(trace.contains("not-in-the-job\n"), "{trace}");
    let service: Vec<&str> = trace
        .lines()
        .filter(|line| line.starts_with("[service:runnel-e2e-web-devices] "))
        .collect();
    assert!(
        service
            .iter()
            .any(|line| line.ends_with(" /dev/runnel-null")),
        "{trace}"
    );
    assert!(
        service
            .iter()
            .any(|line| line.contains("/dev/runnel-zero: No such file or directory")),
        "only the matching pattern's devices: {trace}"
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_canceled_job_stops_and_its_containers_are_removed() {
    ensure_image();
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("cancel-me")
            // A job network although the job has no services, as the official flag asks.
            .variable("FF_NETWORK_PER_BUILD", "true")
            .script(["echo started", "sleep 60", "echo not-reached"])
            .after_script(["echo \"after-cancel status=$CI_JOB_STATUS\""]),
    );
    let seen = |v: &runnel_fake_gitlab::JobView| v.trace_text().contains("started\n");
    daemon
        .fake
        .wait_for_job_state(id, seen, std::time::Duration::from_secs(90))
        .await
        .expect("the job started");
    // While the job runs, the label filters see its objects: the final check is not vacuous.
    // Its helper stages only keep house: the build container is its only one, and runs them
    // after the cancel too.
    assert_eq!(
        labelled(&daemon, "container", None).len(),
        1,
        "the build container carries the runner's label"
    );
    assert_eq!(
        labelled(&daemon, "network", None).len(),
        1,
        "the job network"
    );
    assert!(
        !labelled(
            &daemon,
            "volume",
            Some("label=com.gitlab.gitlab-runner.reusable=false")
        )
        .is_empty(),
        "the temporary builds volume"
    );
    daemon.fake.cancel_job(id).unwrap();
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Canceled, "{trace}");
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(trace.contains("after-cancel status=canceled"), "{trace}");
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_job_that_runs_too_long_times_out_and_its_containers_are_removed() {
    ensure_image();
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("slow")
            .timeout(2)
            .script(["echo started", "sleep 60", "echo not-reached"])
            .after_script(["echo after-timeout"]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("job_execution_timeout"),
        "{trace}"
    );
    assert!(trace.contains("execution took longer than"), "{trace}");
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(
        trace.contains("after-timeout"),
        "after_script still runs: {trace}"
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_cache_volume_is_shared_by_the_jobs_of_a_project() {
    ensure_image();
    let daemon = Daemon::start(docker_setup_with(
        IMAGE,
        "    disable_cache = false\n    volumes = [\"/cache\"]\n",
    ))
    .await;
    let _sweep = Sweep::new(&daemon);
    let first = daemon
        .fake
        .enqueue(job("writer").script(["echo \"from-job-$CI_JOB_ID\" > /cache/x", "echo written"]));
    let view = daemon.finished(first).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());
    let reusable = labelled(
        &daemon,
        "volume",
        Some("label=com.gitlab.gitlab-runner.reusable=true"),
    );
    assert!(
        // The official name, so volumes survive a swap of runners.
        reusable.contains(&format!(
            "{}-cache-3c3f060a0374fc8bc39395164f415a70",
            real_unique_name(&daemon, 1, 0)
        )),
        "the cache volume is kept between jobs: {reusable:?}"
    );

    let second = daemon
        .fake
        .enqueue(job("reader").script(["echo \"read=$(cat /cache/x)\""]));
    let view = daemon.finished(second).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!("read=from-job-{first}\n")),
        "{trace}"
    );
    assert_nothing_left(&daemon);
}

#[tokio::test]
async fn a_glibc_helper_clones_over_http_and_uploads_artifacts() {
    let helper = ensure_git_helper().await;
    // The fake listens on loopback: the containers share the host's network to reach it.
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    pull_policy = [\"never\"]\n    network_mode = \"host\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let _sweep = Sweep::new(&daemon);
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
                "mkdir -p out",
                "echo built > out/result.txt",
            ])
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
    assert!(
        trace.contains(&format!(
            "Checking out {} as detached HEAD (ref is main)...",
            &sha[..8]
        )),
        "{trace}"
    );
    assert!(trace.contains("from-the-repository\n"), "{trace}");
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{trace}"
    );
    assert!(!trace.contains(view.token.expose()), "the job token leaked");
    assert!(
        daemon
            .fake
            .requests()
            .iter()
            .any(|r| r.path == "/group/project.git/git-upload-pack"),
        "the sources came over HTTP"
    );
    assert_eq!(view.artifacts.len(), 1, "{:?}", view.artifacts);
    let artifact = &view.artifacts[0];
    assert_eq!(artifact.filename, "result.zip");
    assert_eq!(zip_names(&artifact.data), ["out/", "out/result.txt"]);
    assert_eq!(zip_entry(&artifact.data, "out/result.txt"), "built\n");
    assert_nothing_left(&daemon);
}

/// The objects (`container`, `network`, `volume`) of job `id` that are not reusable volumes.
fn objects_of_job(daemon: &Daemon, id: u64) -> Vec<String> {
    let job = format!("label=com.gitlab.gitlab-runner.job.id={id}");
    let mut left = labelled(daemon, "container", Some(&job));
    left.extend(labelled(daemon, "network", Some(&job)));
    left.extend(
        labelled(daemon, "volume", Some(&job))
            .into_iter()
            .filter(|volume| {
                let inspected = docker(&[
                    "volume",
                    "inspect",
                    "--format",
                    "{{index .Labels \"com.gitlab.gitlab-runner.reusable\"}}",
                    volume,
                ]);
                String::from_utf8_lossy(&inspected.stdout).trim() != "true"
            }),
    );
    left
}

/// A script line that waits (at most a minute) until `count` jobs have written their marker
/// into the host directory mounted at `/together`, so those jobs provably run at once.
fn rendezvous(count: usize) -> [String; 2] {
    [
        "touch /together/$CI_JOB_ID".to_owned(),
        format!(
            "i=0; while [ $(ls /together | wc -l) -lt {count} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo \"together=$(ls /together | wc -l) slot=$CI_CONCURRENT_PROJECT_ID\""
        ),
    ]
}

/// #13.2: a runner killed with SIGKILL while a job's shell still runs in its container, then
/// started again at `concurrent = 4` with four jobs of one project queued. The start-up sweep
/// of the killed run's objects races the first four jobs: it must not touch them, they must
/// all succeed, each in its own per-project slot, and within a minute nothing of the killed
/// job may be left.
#[tokio::test]
async fn a_runner_killed_mid_job_restarts_with_four_queued_jobs_and_removes_the_leftovers() {
    ensure_image();
    let together = tempfile::tempdir().unwrap();
    let tables = |concurrent: usize| Setup {
        concurrent,
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{IMAGE}\"\n    helper_image = \"{IMAGE}\"\n    pull_policy = [\"never\"]\n    volumes = [\"{}:/together\"]\n",
            together.path().display()
        ),
        ..Setup::default()
    };
    let mut daemon = Daemon::start(tables(1)).await;
    let _sweep = Sweep::new(&daemon);
    // Job networks (FF_NETWORK_PER_BUILD) for all: the observed race was about networks.
    let killed = daemon.fake.enqueue(
        job("killed")
            .variable("FF_NETWORK_PER_BUILD", "true")
            .script(["echo started", "sleep 300"]),
    );
    daemon.printed(killed, "started\n").await;
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit().await;
    let left = objects_of_job(&daemon, killed);
    // Its helper stages only keep house: one container (no helper), as its network and
    // builds volume.
    assert!(
        left.len() >= 3,
        "the killed job left its container, network and builds volume: {left:?}"
    );

    let script = rendezvous(4);
    let queued: Vec<u64> = (0..4)
        .map(|n| {
            daemon.fake.enqueue(
                job(&format!("queued-{n}"))
                    .variable("FF_NETWORK_PER_BUILD", "true")
                    .script(script.clone()),
            )
        })
        .collect();
    daemon.restart(&tables(4));
    let mut slots = Vec::new();
    for id in &queued {
        let view = daemon.finished(*id).await;
        let trace = view.trace_text();
        assert_eq!(
            view.status,
            RemoteStatus::Success,
            "{trace}\nrunnel log:\n{}",
            daemon.log()
        );
        let line = trace
            .lines()
            .find(|line| line.starts_with("together="))
            .unwrap_or_else(|| panic!("no rendezvous line: {trace}"));
        assert!(line.starts_with("together=4 "), "{trace}");
        slots.push(line.rsplit('=').next().unwrap().to_owned());
    }
    slots.sort();
    assert_eq!(
        slots,
        ["0", "1", "2", "3"],
        "each concurrent job of the project has its own slot"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = objects_of_job(&daemon, killed);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed job's objects are still there after a minute: {left:?}\nrunnel log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        !daemon.log().contains("failed to remove"),
        "every removal worked: {}",
        daemon.log()
    );
    assert_nothing_left(&daemon);
}

/// #13.3: with `GIT_STRATEGY=fetch` the checkout lives in the slot's builds volume (named as
/// the official runner names it, and kept), so the next job of the slot fetches into it
/// instead of cloning afresh.
#[tokio::test]
async fn fetching_jobs_reuse_the_checkout_of_their_slot() {
    let helper = ensure_git_helper().await;
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{IMAGE}\"\n    helper_image = \"{helper}\"\n    pull_policy = [\"never\"]\n    network_mode = \"host\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let repo = daemon.fake.create_repo("group/project").unwrap();
    let first_sha = repo
        .commit("main", "first")
        .file("README.md", "one\n")
        .create()
        .unwrap();
    let fetch_job = |sha: &str| {
        JobBuilder::new("fetch")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
            .variable("GIT_LFS_SKIP_SMUDGE", "1")
            .script(["cat README.md"])
    };
    let first = daemon.fake.enqueue(fetch_job(&first_sha));
    let view = daemon.finished(first).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Created fresh repository."), "{trace}");
    let builds_volume = format!(
        "{}-cache-{}",
        real_unique_name(&daemon, 1, 0),
        // The test config sets builds_dir, which is the path inside the containers.
        hex::encode(md5::Md5::digest(
            daemon.dir.path().join("builds").display().to_string()
        ))
    );
    let reusable = labelled(
        &daemon,
        "volume",
        Some("label=com.gitlab.gitlab-runner.reusable=true"),
    );
    assert!(
        reusable.contains(&builds_volume),
        "the slot's builds volume is kept: {reusable:?}"
    );

    let second_sha = repo
        .commit("main", "second")
        .file("README.md", "two\n")
        .create()
        .unwrap();
    let second = daemon.fake.enqueue(fetch_job(&second_sha));
    let view = daemon.finished(second).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    // The second job fetched into the first one's checkout (`clean_git_config`, on by default
    // for docker, removed its `.git/config`, so `origin` is added again, as upstream).
    assert!(
        trace.contains("Reinitialized existing Git repository in "),
        "{trace}"
    );
    assert!(trace.contains("\ntwo\n"), "{trace}");
    assert_nothing_left(&daemon);
}

/// `clean_git_config` is on by default for docker (as upstream): a job that plants git config
/// (`core.fsmonitor`, `core.sshCommand`) and hooks in its slot's builds volume cannot make the
/// next job's git run them; the config is gone when the next job's script runs.
#[tokio::test]
async fn a_job_cannot_plant_git_config_or_hooks_for_the_next_job_of_its_slot() {
    use crate::git_sources::{PLANT_GIT_CONFIG_AND_HOOKS, REPORT_PLANTED};
    ensure_image();
    let daemon = Daemon::start(own_helper_setup("")).await;
    let _sweep = Sweep::new(&daemon);
    let repo = daemon.fake.create_repo("group/project").unwrap();
    let fetch_job = |sha: &str| {
        JobBuilder::new("fetch")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
            .variable("GIT_LFS_SKIP_SMUDGE", "1")
    };
    let first_sha = repo
        .commit("main", "first")
        .file("README.md", "one\n")
        .create()
        .unwrap();
    let first = daemon
        .fake
        .enqueue(fetch_job(&first_sha).script(PLANT_GIT_CONFIG_AND_HOOKS));
    let view = daemon.finished(first).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());

    let second_sha = repo
        .commit("main", "second")
        .file("README.md", "two\n")
        .create()
        .unwrap();
    let mut report = vec!["cat README.md"];
    report.extend(REPORT_PLANTED);
    let second = daemon.fake.enqueue(fetch_job(&second_sha).script(report));
    let view = daemon.finished(second).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Reinitialized existing Git repository in "),
        "{trace}"
    );
    for line in [
        "\ntwo\n",
        "planted-hook=none\n",
        "planted-fsmonitor=none\n",
        "planted-config=gone\n",
        "planted-hooks=gone\n",
    ] {
        assert!(trace.contains(line), "{line}: {trace}");
    }
    assert_nothing_left(&daemon);
}

/// `clean_git_config` (on by default for docker) cleans at the end of the job too, as upstream:
/// what a job planted in its checkout's `.git` is gone once it ends. The runner's
/// `pre_get_sources_script` looks before the next job's `get_sources` cleans again (with shell
/// builtins alone: the helper image has no coreutils to rely on).
#[tokio::test]
async fn planted_git_config_and_hooks_are_gone_when_the_job_ends() {
    use crate::git_sources::PLANT_GIT_CONFIG_AND_HOOKS;
    ensure_image();
    let look = r#"  pre_get_sources_script = '''
git_dir="$CI_PROJECT_DIR/.git"
if [ -d "$git_dir" ]; then
  config=gone
  if [ -f "$git_dir/config" ]; then
    while IFS= read -r line; do case "$line" in *planted*) config=left ;; esac; done < "$git_dir/config"
  fi
  echo "before-fetch-config=$config"
  if [ -e "$git_dir/hooks/reference-transaction" ]; then echo before-fetch-hooks=left; else echo before-fetch-hooks=gone; fi
fi
'''
"#;
    let daemon = Daemon::start(Setup {
        runner: look.to_owned(),
        ..own_helper_setup("")
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let repo = daemon.fake.create_repo("group/project").unwrap();
    let fetch_job = |sha: &str| {
        JobBuilder::new("fetch")
            .repo(&repo, "main", sha)
            .git_strategy(GitStrategy::Fetch)
            .variable("GIT_LFS_SKIP_SMUDGE", "1")
    };
    let first_sha = repo
        .commit("main", "first")
        .file("README.md", "one\n")
        .create()
        .unwrap();
    let first = daemon
        .fake
        .enqueue(fetch_job(&first_sha).script(PLANT_GIT_CONFIG_AND_HOOKS));
    let view = daemon.finished(first).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(!trace.contains("before-fetch-"), "no checkout yet: {trace}");

    let second_sha = repo
        .commit("main", "second")
        .file("README.md", "two\n")
        .create()
        .unwrap();
    let second = daemon
        .fake
        .enqueue(fetch_job(&second_sha).script(["cat README.md"]));
    let view = daemon.finished(second).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    for line in [
        "before-fetch-config=gone\n",
        "before-fetch-hooks=gone\n",
        "\ntwo\n",
    ] {
        assert!(trace.contains(line), "{line}: {trace}");
    }
    assert_nothing_left(&daemon);
}

/// `safe_directory_checkout` is on by default for docker (as upstream, gitlab#368133): a job
/// whose image leaves the checkout owned by another user (uid 4242 here) does not make the next
/// job's fetch fail with git's "dubious ownership"; with it off, the fetch fails that way.
#[tokio::test]
async fn a_checkout_left_owned_by_another_user_is_fetched_into_by_default() {
    ensure_image();
    for (setting, succeeds) in [("", true), ("  safe_directory_checkout = false\n", false)] {
        let daemon = Daemon::start(Setup {
            runner: setting.to_owned(),
            ..own_helper_setup("")
        })
        .await;
        let _sweep = Sweep::new(&daemon);
        let repo = daemon.fake.create_repo("group/project").unwrap();
        let fetch_job = |sha: &str| {
            JobBuilder::new("fetch")
                .repo(&repo, "main", sha)
                .git_strategy(GitStrategy::Fetch)
                .variable("GIT_LFS_SKIP_SMUDGE", "1")
        };
        let first_sha = repo
            .commit("main", "first")
            .file("README.md", "one\n")
            .create()
            .unwrap();
        let first = daemon
            .fake
            .enqueue(fetch_job(&first_sha).script(["chown -R 4242:4242 \"$CI_PROJECT_DIR\""]));
        let view = daemon.finished(first).await;
        assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());

        let second_sha = repo
            .commit("main", "second")
            .file("README.md", "two\n")
            .create()
            .unwrap();
        let second = daemon
            .fake
            .enqueue(fetch_job(&second_sha).script(["cat README.md"]));
        let view = daemon.finished(second).await;
        let trace = view.trace_text();
        if succeeds {
            assert_eq!(view.status, RemoteStatus::Success, "{trace}");
            assert!(trace.contains("\ntwo\n"), "{trace}");
        } else {
            assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
            assert!(trace.contains("dubious ownership"), "{trace}");
        }
        assert_nothing_left(&daemon);
    }
}

/// #13.4: the helper image is inspected by the first job only; when it is gone later (removed
/// and built again under its tag, so its id changed), the next job finds it again instead of
/// failing, and says nothing of it.
#[tokio::test]
async fn a_helper_image_rebuilt_between_jobs_is_found_again() {
    ensure_image();
    let unique = format!(
        "runnel-e2e-helper-rebuilt:{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let context = tempfile::tempdir().unwrap();
    let build_helper = || {
        // A new LABEL value each time: a new image id under the same tag.
        let dockerfile = format!(
            "FROM {IMAGE}\nLABEL runnel.e2e.build=\"{}\"\n",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        build(&unique, context.path());
        let id = docker(&["image", "inspect", "-f", "{{.Id}}", &unique]);
        String::from_utf8_lossy(&id.stdout).trim().to_owned()
    };
    struct RemoveImage<'a>(&'a str);
    impl Drop for RemoveImage<'_> {
        fn drop(&mut self) {
            docker(&["rmi", "-f", self.0]);
        }
    }
    let first_id = build_helper();
    let _remove = RemoveImage(&unique);
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{IMAGE}\"\n    helper_image = \"{unique}\"\n    pull_policy = [\"never\"]\n"
        ),
        ..Setup::default()
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let first = daemon.fake.enqueue(job("first").script(["echo first-ran"]));
    let view = daemon.finished(first).await;
    assert_eq!(view.status, RemoteStatus::Success, "{}", view.trace_text());

    assert!(docker(&["rmi", "-f", &unique]).status.success());
    let second_id = build_helper();
    assert_ne!(first_id, second_id, "the rebuilt helper is another image");
    let second = daemon
        .fake
        .enqueue(job("second").script(["echo second-ran"]));
    let view = daemon.finished(second).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("second-ran"), "{trace}");
    assert_nothing_left(&daemon);
}

/// #13.3: `[runners.custom_build_dir]` is on by default for docker, as in the official runner:
/// a job may pick its directory with `GIT_CLONE_PATH` without the section in config.toml.
#[tokio::test]
async fn git_clone_path_works_without_a_custom_build_dir_section() {
    ensure_image();
    let daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon.fake.enqueue(
        job("clone-path")
            .variable("GIT_CLONE_PATH", "$CI_BUILDS_DIR/custom/place")
            .script(["echo \"dir=$CI_PROJECT_DIR pwd=$(pwd)\""]),
    );
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    let builds = daemon.dir.path().join("builds");
    let expected = format!("{}/custom/place", builds.display());
    assert!(
        trace.contains(&format!("dir={expected} pwd={expected}\n")),
        "{trace}"
    );
    assert_nothing_left(&daemon);
}

/// The container ids in job `id`'s journal record (the daemon's default journal directory).
fn journaled_containers(daemon: &Daemon, id: u64) -> Vec<String> {
    let dir = daemon.dir.path().join("runnel-journal");
    let prefix = format!("job-{id}-");
    let record = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".json")
        })
        .unwrap_or_else(|| panic!("no journal record of job {id} in {}", dir.display()));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let containers: Vec<String> = record["containers"]
        .as_array()
        .expect("a containers list")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert!(!containers.is_empty(), "{record}");
    containers
}

#[tokio::test]
async fn a_docker_job_whose_runner_was_killed_is_failed_and_removed_on_restart() {
    ensure_image();
    let mut daemon = Daemon::start(docker_setup(IMAGE)).await;
    let _sweep = Sweep::new(&daemon);
    let id = daemon
        .fake
        .enqueue(job("killed-in-docker").script(["echo started", "sleep 600"]));
    let seen = |v: &runnel_fake_gitlab::JobView| v.trace_text().contains("started\n");
    daemon
        .fake
        .wait_for_job_state(id, seen, std::time::Duration::from_secs(90))
        .await
        .expect("the job started");
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit().await;
    let left = labelled(&daemon, "container", None);
    assert!(
        !left.is_empty(),
        "the job's containers outlive a SIGKILLed runner"
    );
    // The job's journal names every container it created, by id.
    let journaled = journaled_containers(&daemon, id);
    for short in &left {
        assert!(
            journaled
                .iter()
                .any(|full| full.starts_with(short.as_str())),
            "container {short} is not in the journal: {journaled:?}"
        );
    }

    daemon.spawn(&["run"]);
    let view = daemon.finished(id).await;
    // Removed by id before the job was reported failed.
    for full in &journaled {
        let inspected = docker(&["container", "inspect", "--format", "{{.Id}}", full]);
        assert!(
            !inspected.status.success(),
            "container {full} still exists when the job is reported failed"
        );
    }
    let trace = view.trace_text();
    assert!(
        trace.contains("docker containers were still there and were removed"),
        "{trace}"
    );
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert_eq!(
        final_update(&view).failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert!(trace.contains("started\n"), "the log the job had: {trace}");
    assert!(
        trace.contains("the runner was restarted while this job was running"),
        "{trace}"
    );
    // The start removes what the crashed run left (by label), in the background: the
    // containers may be gone (removed by id) before its network and volumes are.
    for _ in 0..300 {
        if labelled(&daemon, "container", None).is_empty()
            && labelled(&daemon, "network", None).is_empty()
            && labelled(
                &daemon,
                "volume",
                Some("label=com.gitlab.gitlab-runner.reusable=false"),
            )
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_nothing_left(&daemon);
    daemon.signal(nix::sys::signal::Signal::SIGQUIT);
    daemon.wait_exit().await;
}

// ---------------------------------------------------------------------------------------------
// #13.4: Engine requests per job

/// A unix-socket relay between the runner and the Docker daemon that records every Engine API
/// request as `METHOD /path` (API version and query left out, object ids and names as `{id}`).
/// With `mute_events`, an image event stream (`GET /events`) is answered here and stays silent,
/// as if the daemon had lost track: the runner then cannot learn that an image changed.
struct EngineRecorder {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    requests: std::sync::Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EngineRecorder {
    fn start(mute_events: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let requests = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = std::sync::Arc::clone(&log);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A connection's end (or a reset) is not the test's business.
                    relay_recording(client, &upstream, log, mute_events)
                        .await
                        .ok();
                });
            }
        });
        EngineRecorder {
            _dir: dir,
            socket,
            requests,
            task,
        }
    }

    /// `host = "unix://…"` for `[runners.docker]`.
    fn host_line(&self) -> String {
        format!("    host = \"unix://{}\"\n", self.socket.display())
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until no request came for half a second: the runner is done with the engine.
    async fn settle(&self) -> Vec<String> {
        let mut seen = self.requests().len();
        for _ in 0..120 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = self.requests().len();
            if now == seen {
                break;
            }
            seen = now;
        }
        self.requests()
    }
}

impl Drop for EngineRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection, recording the head of each request the client sends. Bodies are
/// skipped by their `Content-Length`; after an upgrade (`attach`) or a chunked body, bytes go
/// through unread.
async fn relay_recording(
    client: tokio::net::UnixStream,
    upstream: &str,
    log: std::sync::Arc<Mutex<Vec<String>>>,
    mute_events: bool,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = tokio::net::UnixStream::connect(upstream).await?;
    let (mut client_read, client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let client_write = std::sync::Arc::new(tokio::sync::Mutex::new(client_write));
    let writer = std::sync::Arc::clone(&client_write);
    let down = tokio::spawn(async move {
        let mut buf = vec![0_u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 || writer.lock().await.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        writer.lock().await.shutdown().await.ok();
    });
    let mut head = Vec::new();
    let mut skip: u64 = 0;
    let mut raw = false;
    let mut buf = vec![0_u8; 64 * 1024];
    let result = 'relay: loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(error) => break Err(error),
        };
        let mut at = 0;
        while at < n && !raw {
            if skip > 0 {
                let take = usize::try_from(skip).unwrap_or(usize::MAX).min(n - at);
                at += take;
                skip -= take as u64;
                continue;
            }
            head.push(buf[at]);
            at += 1;
            if !head.ends_with(b"\r\n\r\n") {
                continue;
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            head.clear();
            let mut lines = text.split("\r\n");
            let mut request = lines.next().unwrap_or_default().split(' ');
            let method = request.next().unwrap_or_default().to_owned();
            let path = engine_path(request.next().unwrap_or_default());
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => skip = value.trim().parse().unwrap_or(0),
                    "transfer-encoding" | "upgrade" => raw = true,
                    _ => {}
                }
            }
            log.lock().unwrap().push(format!("{method} {path}"));
            if mute_events && method == "GET" && path == "/events" {
                // Answered here (what came before it was relayed): headers, then silence
                // until the runner hangs up.
                let mut writer = client_write.lock().await;
                if let Err(error) = writer
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await
                {
                    break 'relay Err(error);
                }
                drop(writer);
                if let Err(error) = server_write.write_all(&buf[..at - text.len()]).await {
                    break 'relay Err(error);
                }
                while matches!(client_read.read(&mut buf).await, Ok(n) if n > 0) {}
                break 'relay Ok(());
            }
        }
        if let Err(error) = server_write.write_all(&buf[..n]).await {
            break Err(error);
        }
        if raw {
            break tokio::io::copy(&mut client_read, &mut server_write)
                .await
                .map(drop);
        }
    };
    if mute_events {
        down.abort();
    } else {
        server_write.shutdown().await.ok();
        down.await.ok();
    }
    result
}

/// `/v1.41/containers/0123…/start?x=y` → `/containers/{id}/start`.
fn engine_path(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let mut out = String::new();
    for (index, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        let version = index == 0
            && segment.strip_prefix('v').is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
            });
        if version {
            continue;
        }
        let id = segment.len() >= 12 && segment.chars().all(|c| c.is_ascii_hexdigit());
        let named =
            segment.starts_with("runner-") || segment.contains("%3A") || segment.contains(':');
        out.push('/');
        out.push_str(if id || named { "{id}" } else { segment });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Runs `script` as a job and returns its log, after checking that it succeeded.
async fn run_ok(daemon: &Daemon, name: &str, builder: JobBuilder) -> String {
    let id = daemon.fake.enqueue(builder);
    let view = daemon.finished(id).await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "job {name}: {trace}");
    trace.into_owned()
}

/// Runs a job that must succeed; returns its log and the Engine requests it made, counted
/// until its containers are gone (they are removed after the final state is reported) and
/// the runner is quiet.
async fn job_requests(
    daemon: &Daemon,
    engine: &EngineRecorder,
    name: &str,
    builder: JobBuilder,
) -> (String, Vec<String>) {
    let before = engine.settle().await.len();
    let trace = run_ok(daemon, name, builder).await;
    for _ in 0..300 {
        if labelled(daemon, "container", None).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let requests = engine.settle().await;
    (trace, requests.get(before..).unwrap_or_default().to_vec())
}

/// #13.4: a trivial job (`true`, no sources) costs at most 8 Engine requests once the runner
/// has met its daemon: no image inspect, no stats stream, and nothing per stage (a job with
/// more stages costs the same). With a helper (here for a `get_sources` hook), two containers
/// created, attached, started and removed; without one (its helper stages only keep house,
/// [`housekeeping_helper_stages_run_in_a_root_build_container_with_the_same_log`]), four.
#[tokio::test]
async fn a_trivial_docker_job_makes_at_most_eight_engine_requests() {
    ensure_image();
    let engine = EngineRecorder::start(false);
    let daemon = Daemon::start(docker_setup_with(IMAGE, &engine.host_line())).await;
    let _sweep = Sweep::new(&daemon);
    // The first jobs also negotiate the API version, inspect the helper image, start
    // following image events (whose replay may name the job image: it is inspected again
    // once) and inspect the job image: once per runner.
    for name in ["first", "second"] {
        job_requests(&daemon, &engine, name, job(name).script(["true"])).await;
    }
    let (trace, requests) =
        job_requests(&daemon, &engine, "trivial", job("trivial").script(["true"])).await;
    assert!(
        requests.len() <= 8,
        "{} Engine requests for a trivial job: {requests:#?}",
        requests.len()
    );
    for needless in ["/stats", "/json", "/wait"] {
        assert!(
            !requests.iter().any(|r| r.ends_with(needless)),
            "{needless}: {requests:#?}"
        );
    }
    // The log is what it was when every job inspected its image and followed stats streams.
    assert!(
        trace.contains("Using docker image sha256:")
            && trace.contains(&format!(" for {IMAGE} ...")),
        "{trace}"
    );
    assert!(trace.contains("Resource usage: peak memory "), "{trace}");

    // Twice the stages (a multi-line script, after_script): not one request more.
    let (trace, more) = job_requests(
        &daemon,
        &engine,
        "more-stages",
        job("more-stages")
            .script(["echo one", "cd /", "echo two"])
            .after_script(["echo after"]),
    )
    .await;
    assert!(trace.contains("after\n"), "{trace}");
    assert_eq!(
        more.len(),
        requests.len(),
        "{more:#?}\nagainst\n{requests:#?}"
    );

    // With the helper container: at most 8.
    let (trace, hooked) = job_requests(
        &daemon,
        &engine,
        "hooked",
        job("hooked").script(["true"]).extra(
            "hooks",
            json!([{ "name": "pre_get_sources_script", "script": ["echo hooked"] }]),
        ),
    )
    .await;
    assert!(trace.contains("\nhooked\n"), "{trace}");
    assert!(
        hooked.len() <= 8 && hooked.len() > requests.len(),
        "{} Engine requests for a trivial job with a helper: {hooked:#?}",
        hooked.len()
    );
    assert_nothing_left(&daemon);
}

/// The log of a job as a reader compares it: the host name in `Running on`, the section
/// times, the stage durations and the resource figures left out.
fn comparable_log(trace: &str) -> String {
    trace
        .lines()
        .map(|line| {
            let mut line = line.to_owned();
            for marker in ["section_start:", "section_end:"] {
                let mut from = 0;
                while let Some(at) = line[from..].find(marker) {
                    let digits = from + at + marker.len();
                    let end = line[digits..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(line.len(), |n| digits + n);
                    line.replace_range(digits..end, "[time]");
                    from = digits;
                }
            }
            if let Some(rest) = line.strip_prefix("Running on ") {
                let end = rest
                    .find(" via ")
                    .or_else(|| rest.find("..."))
                    .unwrap_or(rest.len());
                line = format!("Running on [host]{}", &rest[end..]);
            }
            if let Some(at) = line.find("Stage durations:") {
                line.replace_range(at.., "Stage durations: [figures]");
            }
            if let Some(at) = line.find("Resource usage:") {
                line.replace_range(at.., "Resource usage: [figures]");
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `trace` says `Running on <host>` (followed by ` via …` or `...`).
fn runs_on(trace: &str, host: &str) -> bool {
    trace.contains(&format!("Running on {host} via "))
        || trace.contains(&format!("Running on {host}..."))
}

/// Session 7 (#13 item 4): a job whose helper stages only keep house (no git, cache, artifacts
/// or hook) runs them in its build container when that runs as root: one container, four
/// Engine requests, and the log, directories and permissions a helper would have made.
#[tokio::test]
async fn housekeeping_helper_stages_run_in_a_root_build_container_with_the_same_log() {
    ensure_image();
    let engine = EngineRecorder::start(false);
    let daemon = Daemon::start(docker_setup_with(IMAGE, &engine.host_line())).await;
    let _sweep = Sweep::new(&daemon);
    // What the job sees of what the predefined stages made, and where it runs.
    let script = [
        "ls -ld \"$CI_PROJECT_DIR\" | cut -c1-10",
        "ls -ld \"$CI_PROJECT_DIR.tmp\" | cut -c1-10",
        "echo \"umask=$(umask) uid=$(id -u)\"",
        "echo \"host=$(hostname)\"",
    ];
    let house = |name: &str| job(name).variable("FF_TIMESTAMPS", "false").script(script);
    // The first job also meets the daemon (version, events, image inspects).
    job_requests(&daemon, &engine, "first", house("first")).await;
    let (trace, requests) = job_requests(&daemon, &engine, "house", house("house")).await;
    let creates = |requests: &[String]| {
        requests
            .iter()
            .filter(|r| *r == "POST /containers/create")
            .count()
    };
    assert_eq!(creates(&requests), 1, "{requests:#?}");
    assert!(requests.len() <= 4, "{requests:#?}");
    // `Running on` names the container the job runs in.
    let host = trace
        .lines()
        .find_map(|line| line.strip_prefix("host="))
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(runs_on(&trace, host), "{trace}");
    assert_eq!(trace.matches("\ndrwxrwxrwx\n").count(), 2, "{trace}");
    assert!(trace.contains("\numask=0022 uid=0\n"), "{trace}");

    // The same job with a hook in `get_sources` keeps the helper: two containers, and the
    // same log but for the hook's lines.
    let hooked = house("hooked").extra(
        "hooks",
        json!([{ "name": "pre_get_sources_script", "script": ["echo hooked"] }]),
    );
    let (hooked_trace, hooked_requests) = job_requests(&daemon, &engine, "hooked", hooked).await;
    assert_eq!(creates(&hooked_requests), 2, "{hooked_requests:#?}");
    let hooked_host = hooked_trace
        .lines()
        .find_map(|line| line.strip_prefix("host="))
        .unwrap_or_else(|| panic!("{hooked_trace}"));
    assert!(
        !runs_on(&hooked_trace, hooked_host),
        "the helper says where it runs: {hooked_trace}"
    );
    let without_hook = hooked_trace
        .lines()
        .filter(|line| !line.contains("$ echo hooked") && *line != "hooked")
        .map(|line| {
            if line == format!("host={hooked_host}") {
                format!("host={host}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(comparable_log(&trace), comparable_log(&without_hook));

    // A build container that does not run as root keeps the helper, which makes what the
    // job's user must write to.
    let daemon_user = Daemon::start(docker_setup_with(
        IMAGE,
        &format!("    user = \"65534\"\n{}", engine.host_line()),
    ))
    .await;
    let _sweep_user = Sweep::new(&daemon_user);
    let (user_trace, user_requests) =
        job_requests(&daemon_user, &engine, "user", house("user")).await;
    assert!(creates(&user_requests) >= 2, "{user_requests:#?}");
    assert_eq!(
        user_trace.matches("\ndrwxrwxrwx\n").count(),
        2,
        "{user_trace}"
    );
    assert!(
        user_trace.contains("\numask=0022 uid=65534\n"),
        "{user_trace}"
    );
    assert_nothing_left(&daemon);
    assert_nothing_left(&daemon_user);
}

/// Builds `tag` from the busybox image with `/marker` holding `text`, labelled with the tag;
/// returns the image id.
fn build_marked(tag: &str, text: &str) -> String {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("marker"), text).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        // The label keeps images of other tags (other tests) from being this very image.
        format!("FROM {IMAGE}\nCOPY marker /marker\nLABEL runnel.e2e.tag=\"{tag}\"\n"),
    )
    .unwrap();
    build(tag, context.path());
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", tag]);
    String::from_utf8_lossy(&id.stdout).trim().to_owned()
}

/// Removes the image tag when dropped.
struct RemoveTag(String);

impl Drop for RemoveTag {
    fn drop(&mut self) {
        docker(&["rmi", "-f", &self.0]);
    }
}

fn unique_tag(repository: &str) -> String {
    format!(
        "{repository}:{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

/// #13.4: job images are inspected once while nothing changes, but a tag rebuilt between two
/// jobs (the image events say so) runs the new image, and the log names the new id.
#[tokio::test]
async fn a_job_image_rebuilt_between_jobs_is_the_one_used() {
    ensure_image();
    let tag = unique_tag("runnel-e2e-moving");
    let _remove = RemoveTag(tag.clone());
    let first_id = build_marked(&tag, "one");
    let engine = EngineRecorder::start(false);
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{tag}\"\n    helper_image = \"{IMAGE}\"\n    pull_policy = [\"if-not-present\"]\n{}",
            engine.host_line()
        ),
        ..Setup::default()
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let local = "Using locally found image version due to \"if-not-present\" pull policy";
    let inspects = |requests: &[String]| {
        requests
            .iter()
            .filter(|r| *r == "GET /images/{id}/json")
            .count()
    };
    let mut before = 0;
    for round in 0..3 {
        before = inspects(&engine.settle().await);
        let trace = run_ok(&daemon, "one", job("marker").script(["cat /marker; echo"])).await;
        assert!(trace.contains("\none\n"), "{trace}");
        assert!(trace.contains(local), "{trace}");
        assert!(
            trace.contains(&format!("Using docker image {first_id} for {tag} ...")),
            "round {round}: {trace}"
        );
    }
    assert_eq!(
        inspects(&engine.settle().await),
        before,
        "the third job used the image id the runner knew"
    );

    let second_id = build_marked(&tag, "two");
    assert_ne!(first_id, second_id);
    let trace = run_ok(&daemon, "two", job("marker").script(["cat /marker; echo"])).await;
    assert!(trace.contains("\ntwo\n"), "{trace}");
    assert!(trace.contains(local), "{trace}");
    assert!(
        trace.contains(&format!("Using docker image {second_id} for {tag} ...")),
        "{trace}"
    );
    assert!(
        inspects(&engine.settle().await) > before,
        "the moved tag was looked up again"
    );
    assert_nothing_left(&daemon);
}

/// #13.4: when the runner misses that a job image was removed (here its image events are
/// silenced), the container create that fails for want of the image makes it get the image
/// again by the pull policy (`if-not-present` finds the tag's new image), and the job runs.
#[tokio::test]
async fn a_job_image_removed_unseen_is_got_again_by_its_pull_policy() {
    ensure_image();
    let tag = unique_tag("runnel-e2e-removed");
    let _remove = RemoveTag(tag.clone());
    let first_id = build_marked(&tag, "one");
    let engine = EngineRecorder::start(true);
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{tag}\"\n    helper_image = \"{IMAGE}\"\n    pull_policy = [\"if-not-present\"]\n{}",
            engine.host_line()
        ),
        ..Setup::default()
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    for _ in 0..2 {
        let trace = run_ok(&daemon, "one", job("marker").script(["cat /marker; echo"])).await;
        assert!(trace.contains("\none\n"), "{trace}");
    }
    let before = engine.settle().await.len();
    assert!(docker(&["rmi", "-f", &tag]).status.success());
    assert!(
        !docker(&["image", "inspect", &first_id]).status.success(),
        "the first image is gone"
    );
    let second_id = build_marked(&tag, "three");
    let trace = run_ok(
        &daemon,
        "three",
        job("marker").script(["cat /marker; echo"]),
    )
    .await;
    assert!(trace.contains("\nthree\n"), "{trace}");
    assert!(
        trace.contains(&format!("Using docker image {second_id} for {tag} ...")),
        "{trace}"
    );
    let requests = engine.settle().await[before..].to_vec();
    assert!(
        requests.iter().any(|r| r == "GET /images/{id}/json"),
        "the image was looked up after the failed create: {requests:#?}"
    );
    assert_nothing_left(&daemon);
}

/// The `Resource usage:` figures of a job's log: (peak MiB, CPU seconds, peak cores).
fn usage_figures(trace: &str) -> (f64, f64, f64) {
    let line = trace
        .lines()
        .find_map(|line| line.split("Resource usage: ").nth(1))
        .unwrap_or_else(|| panic!("no resource usage line: {trace}"));
    let number = |after: &str| -> f64 {
        line.split(after)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {after:?} in {line:?}"))
    };
    (
        number("peak memory "),
        number("CPU time "),
        number("peak CPU "),
    )
}

/// #13.6: the figures at the end of a docker job's log and in the metrics are what its
/// containers used: 64 MiB held in a shell variable, and CPU spent hashing 300 MB.
#[tokio::test]
async fn a_docker_jobs_memory_and_cpu_are_in_its_log_and_metrics() {
    ensure_image();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let global: &'static str =
        Box::leak(format!("listen_address = \"127.0.0.1:{port}\"").into_boxed_str());
    let daemon = Daemon::start(Setup {
        global,
        ..docker_setup(IMAGE)
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let trace = run_ok(
        &daemon,
        "heavy",
        job("heavy").script([
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a)",
            "head -c 300000000 /dev/zero | md5sum",
            "sleep 2",
            "echo ${#x}",
        ]),
    )
    .await;
    assert!(trace.contains("67108864\n"), "{trace}");
    let (memory, cpu, cores) = usage_figures(&trace);
    assert!(memory >= 64.0, "peak memory {memory} MiB: {trace}");
    assert!(cpu >= 0.2, "CPU time {cpu} s: {trace}");
    assert!(cores > 0.0, "peak CPU {cores}: {trace}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(&format!("{name}_sum")))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name}_sum in:\n{metrics}"))
    };
    assert!(
        sum("runnel_job_peak_memory_bytes") >= 64.0 * 1024.0 * 1024.0,
        "{metrics}"
    );
    assert!(sum("runnel_job_cpu_seconds") >= 0.2, "{metrics}");
    assert_nothing_left(&daemon);
}

/// #13.4: the job image is kept between jobs only for policies that use a local image: with
/// `always` first, every job pulls again (here the pull fails, no registry being reachable,
/// and `if-not-present` then takes the local image), not only the first.
#[tokio::test]
async fn with_pull_policy_always_every_job_pulls() {
    ensure_image();
    let engine = EngineRecorder::start(false);
    let daemon = Daemon::start(Setup {
        executor: Some("docker"),
        tables: format!(
            "  [runners.docker]\n    image = \"{IMAGE}\"\n    helper_image = \"{IMAGE}\"\n    pull_policy = [\"always\", \"if-not-present\"]\n{}",
            engine.host_line()
        ),
        ..Setup::default()
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    for round in 0..3 {
        let before = engine.settle().await.len();
        let trace = run_ok(&daemon, "pulled", job("pulled").script(["true"])).await;
        assert!(
            trace.contains(&format!("Pulling docker image {IMAGE} ...")),
            "round {round}: {trace}"
        );
        assert!(
            trace.contains("WARNING: Failed to pull image with policy \"always\""),
            "round {round}: {trace}"
        );
        let requests = engine.settle().await[before..].to_vec();
        assert!(
            requests.iter().any(|r| r == "POST /images/create"),
            "round {round}: {requests:#?}"
        );
    }
    assert_nothing_left(&daemon);
}
