//! The images the tests use, built locally once and reused by tag.
//!
//! - `runnel-test-busybox`: `FROM scratch` plus the host's static busybox (`busybox-static`).
//! - `runnel-test-web`: busybox `httpd` serving a page on port 8080 (a service).
//! - `runnel-test-helper`: the helper image built by `build_helper_image` from the busybox
//!   image, with a small stand-in for the runner binary.
//! - `runnel-test-nocat`: a service with nothing but the busybox binary (no `cat` to exec).
//! - `runnel-test-bash`: the busybox image plus the host's `/bin/bash` and the libraries `ldd`
//!   lists, and `runnel-test-helper-bash`, the helper image built on it.

use std::path::Path;

use bollard::Docker;
use runnel_executor_docker::image::append_file;
use tokio::sync::OnceCell;

pub(crate) const BUSYBOX: &str = "runnel-test-busybox:1";
pub(crate) const WEB: &str = "runnel-test-web:1";
pub(crate) const HELPER: &str = "runnel-test-helper:2";
pub(crate) const NOCAT: &str = "runnel-test-nocat:1";
pub(crate) const BASH: &str = "runnel-test-bash:1";
pub(crate) const HELPER_BASH: &str = "runnel-test-helper-bash:1";

/// What the stand-in runner binary prints.
pub(crate) const HELPER_BINARY: &str = "#!/bin/sh\necho \"runnel-helper $*\"\n";

/// Builds the test images once per test run (and only when their tags are missing).
pub(crate) async fn ensure(docker: &Docker) {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            if docker.inspect_image(BUSYBOX).await.is_err() {
                build_busybox(docker).await;
            }
            if docker.inspect_image(WEB).await.is_err() {
                let dockerfile = format!(
                    "FROM {BUSYBOX}\nRUN mkdir -p /www && echo hello-from-service > /www/index.html\nEXPOSE 8080\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
                );
                build(docker, WEB, &dockerfile, &[]).await;
            }
            if docker.inspect_image(HELPER).await.is_err() {
                let dir = tempfile::tempdir().expect("temp dir");
                let binary = dir.path().join("runnel");
                std::fs::write(&binary, HELPER_BINARY).expect("write the stand-in binary");
                runnel_executor_docker::build_helper_image(docker, BUSYBOX, HELPER, &binary)
                    .await
                    .unwrap_or_else(|error| panic!("building {HELPER}: {error:?}"));
            }
            if docker.inspect_image(NOCAT).await.is_err() {
                // Only the busybox binary, no applet links: a service image without `cat`.
                let dockerfile = format!(
                    "FROM {BUSYBOX} AS full\nFROM scratch\nCOPY --from=full /bin/busybox /bin/busybox\nEXPOSE 8080\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/\"]\n"
                );
                build(docker, NOCAT, &dockerfile, &[]).await;
            }
            if docker.inspect_image(BASH).await.is_err() {
                build_bash(docker).await;
            }
            if docker.inspect_image(HELPER_BASH).await.is_err() {
                let dir = tempfile::tempdir().expect("temp dir");
                let binary = dir.path().join("runnel");
                std::fs::write(&binary, HELPER_BINARY).expect("write the stand-in binary");
                runnel_executor_docker::build_helper_image(docker, BASH, HELPER_BASH, &binary)
                    .await
                    .unwrap_or_else(|error| panic!("building {HELPER_BASH}: {error:?}"));
            }
        })
        .await;
}

async fn build_busybox(docker: &Docker) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("the tests need a static busybox: apt-get install busybox-static")
        });
    let binary = std::fs::read(busybox).expect("read busybox");
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && /bin/busybox mkdir -p /tmp /usr/bin && /bin/busybox chmod 1777 /tmp\"]\n";
    build(docker, BUSYBOX, dockerfile, &[("busybox", &binary, 0o755)]).await;
}

/// The host's bash with the shared libraries it needs, on top of the busybox image.
async fn build_bash(docker: &Docker) {
    let ldd = std::process::Command::new("ldd")
        .arg("/bin/bash")
        .output()
        .unwrap_or_else(|error| panic!("the tests need `ldd` to copy bash into an image: {error}"));
    assert!(ldd.status.success(), "ldd /bin/bash failed");
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "rootfs/bin/bash".to_owned(),
        std::fs::read("/bin/bash").expect("read /bin/bash"),
    )];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
            None => line.trim().split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            let contents =
                std::fs::read(path).unwrap_or_else(|error| panic!("read {path}: {error}"));
            files.push((format!("rootfs{path}"), contents));
        }
    }
    let files: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(path, contents)| (path.as_str(), contents.as_slice(), 0o755))
        .collect();
    build(
        docker,
        BASH,
        &format!("FROM {BUSYBOX}\nCOPY rootfs/ /\n"),
        &files,
    )
    .await;
}

async fn build(docker: &Docker, tag: &str, dockerfile: &str, files: &[(&str, &[u8], u32)]) {
    let mut builder = tar::Builder::new(Vec::new());
    append_file(&mut builder, "Dockerfile", dockerfile.as_bytes(), 0o644).expect("tar");
    for (path, contents, mode) in files {
        append_file(&mut builder, path, contents, *mode).expect("tar");
    }
    let context = builder.into_inner().expect("tar");
    runnel_executor_docker::build_image(docker, tag, context)
        .await
        .unwrap_or_else(|error| panic!("building {tag}: {error:?}"));
}
