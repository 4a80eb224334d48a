//! The distributed (S3) cache end to end: `runnel run` daemons sign object URLs, their cache
//! helpers transfer archives to and from a real S3 server (`s3s-fs`, which checks SigV4
//! signatures), and nothing about the cache can fail a job.
//!
//! `s3s-fs` must be installed (`.ci/run` does it); these tests fail, never skip, without it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use runnel_fake_gitlab::RemoteStatus;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::job_data::{Daemon, cache_entry, job, walk, zip_entry};

const ACCESS_KEY: &str = "runnel-test-access";
const SECRET_KEY: &str = "runnel-test-secret-key";
const BUCKET: &str = "cache-bucket";
const INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --features binary --locked --root ~/.cache/runnel-tools (then put ~/.cache/runnel-tools/bin on PATH; .ci/run does both)";

/// A real S3 server on 127.0.0.1 with one bucket, storing objects as files.
struct S3Server {
    root: tempfile::TempDir,
    address: String,
    _child: tokio::process::Child,
}

fn s3s_fs_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|candidate| candidate.is_file())
    });
    let in_tools = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/runnel-tools/bin/s3s-fs"))
        .filter(|candidate| candidate.is_file());
    on_path
        .or(in_tools)
        .unwrap_or_else(|| panic!("the S3 cache tests need the s3s-fs server: {INSTALL}"))
}

impl S3Server {
    async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut child = tokio::process::Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("s3s-fs does not start ({e}); {INSTALL}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((_, rest)) = line.split_once("server is running at http://") {
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("s3s-fs exited before listening");
        })
        .await
        .expect("s3s-fs listens within 30 s");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move {
            let mut rest = lines.into_inner();
            let mut sink = Vec::new();
            rest.read_to_end(&mut sink).await.ok();
        });
        Self {
            root,
            address,
            _child: child,
        }
    }

    fn bucket(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// Object files (not directories) in the bucket, relative to it.
    fn objects(&self) -> Vec<String> {
        let bucket = self.bucket();
        let mut objects: Vec<String> = walk(&bucket)
            .into_iter()
            .filter(|p| p.is_file())
            .filter_map(|p| {
                p.strip_prefix(&bucket)
                    .ok()
                    .map(|rel| rel.display().to_string())
            })
            .filter(|rel| !rel.starts_with('.') && !rel.contains("/."))
            .collect();
        objects.sort();
        objects
    }

    /// `[runners.cache]` for this server.
    fn runner_config(&self, shared: bool, extra: &str) -> String {
        cache_config(&self.address, SECRET_KEY, shared, extra)
    }
}

fn cache_config(address: &str, secret: &str, shared: bool, extra: &str) -> String {
    format!(
        "  [runners.cache]\n    Type = \"s3\"\n    Path = \"ci\"\n    Shared = {shared}\n{extra}    [runners.cache.s3]\n      ServerAddress = \"{address}\"\n      AccessKey = \"{ACCESS_KEY}\"\n      SecretKey = \"{secret}\"\n      BucketName = \"{BUCKET}\"\n      Insecure = true\n"
    )
}

/// No part of a presigned URL's signature may reach the trace.
#[track_caller]
fn assert_no_signature(trace: &str) {
    for needle in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Date",
        ACCESS_KEY,
        SECRET_KEY,
    ] {
        assert!(!trace.contains(needle), "{needle} in the trace:\n{trace}");
    }
}

fn producing_job() -> runnel_fake_gitlab::JobBuilder {
    job("deps").project(42, "group/project").script([
        "mkdir -p vendor",
        "echo v1 > vendor/lib.txt",
        // Older than the archive, so an unchanged restore is recognised later.
        "touch -d @1577836800 vendor/lib.txt vendor",
    ])
}

fn local_archive(daemon: &Daemon) -> Option<PathBuf> {
    walk(&daemon.cache_root())
        .into_iter()
        .find(|p| p.ends_with("deps/cache.zip"))
}

#[tokio::test]
async fn a_shared_s3_cache_carries_caches_between_runners() {
    let s3 = S3Server::start().await;
    let first = Daemon::start_with_runner_config(None, &s3.runner_config(true, "")).await;
    let second = Daemon::start_with_runner_config(None, &s3.runner_config(true, "")).await;

    let pushed = first
        .run(producing_job().extra("cache", cache_entry("deps", "pull-push", &[])))
        .await;
    let trace = pushed.trace_text();
    assert_eq!(pushed.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!(
            "Uploading cache.zip to http://{}/{BUCKET}/ci/project/42/deps",
            s3.address
        )),
        "{trace}"
    );
    assert!(trace.contains("Created cache"), "{trace}");
    assert_no_signature(&trace);
    // Shared: no runner/<short token>/ part.
    assert_eq!(s3.objects(), ["ci/project/42/deps"]);
    let object = std::fs::read(s3.bucket().join("ci/project/42/deps")).unwrap();
    assert_eq!(zip_entry(&object, "vendor/lib.txt"), "v1\n");

    // Another runner, another local cache dir: the cache can only come through S3.
    assert!(local_archive(&second).is_none());
    let pulled = second
        .run(
            job("use")
                .project(42, "group/project")
                .script(["cat vendor/lib.txt"])
                .extra("cache", cache_entry("deps", "pull", &[])),
        )
        .await;
    let trace = pulled.trace_text();
    assert_eq!(pulled.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!(
            "Downloading cache from http://{}/{BUCKET}/ci/project/42/deps",
            s3.address
        )),
        "{trace}"
    );
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert!(trace.contains("v1\n"), "{trace}");
    assert_no_signature(&trace);
    let downloaded = std::fs::read(local_archive(&second).expect("downloaded archive")).unwrap();
    assert_eq!(downloaded, object);

    // The first runner again, nothing changed: neither download nor upload happens.
    let again = first
        .run(
            job("deps")
                .project(42, "group/project")
                .script(["true"])
                .extra("cache", cache_entry("deps", "pull-push", &[])),
        )
        .await;
    let trace = again.trace_text();
    assert_eq!(again.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("cache.zip is up to date"), "{trace}");
    assert!(trace.contains("Archive is up to date!"), "{trace}");
    assert!(
        trace.contains("cache.zip is already on the shared cache server"),
        "{trace}"
    );
    assert_no_signature(&trace);
}

#[tokio::test]
async fn unshared_caches_live_under_their_runner() {
    let s3 = S3Server::start().await;
    let first = Daemon::start_with_runner_config(None, &s3.runner_config(false, "")).await;
    let second = Daemon::start_with_runner_config(None, &s3.runner_config(false, "")).await;
    let pushed = first
        .run(producing_job().extra("cache", cache_entry("deps", "push", &[])))
        .await;
    let trace = pushed.trace_text();
    assert_eq!(pushed.status, RemoteStatus::Success, "{trace}");
    let objects = s3.objects();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let parts: Vec<&str> = objects[0].split('/').collect();
    assert_eq!(parts.len(), 6, "{objects:?}");
    assert_eq!(
        [parts[0], parts[1], parts[3], parts[4], parts[5]],
        ["ci", "runner", "project", "42", "deps"]
    );
    assert!(!parts[2].is_empty(), "the short runner token: {objects:?}");

    // The other runner looks under its own name and finds nothing; the job goes on.
    let pulled = second
        .run(
            job("use")
                .project(42, "group/project")
                .script(["test ! -e vendor/lib.txt"])
                .extra("cache", cache_entry("deps", "pull", &[])),
        )
        .await;
    let trace = pulled.trace_text();
    assert_eq!(pulled.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Cache file does not exist on the shared cache server (404 Not Found)"),
        "{trace}"
    );
    assert!(trace.contains("Failed to extract cache"), "{trace}");
}

#[tokio::test]
async fn a_wrong_secret_key_only_warns() {
    let s3 = S3Server::start().await;
    let config = cache_config(&s3.address, "not-the-secret", true, "");
    let daemon = Daemon::start_with_runner_config(None, &config).await;
    let view = daemon
        .run(producing_job().extra("cache", cache_entry("deps", "pull-push", &[])))
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Failed to download the cache: GET http://"),
        "{trace}"
    );
    assert!(trace.contains("403 Forbidden"), "{trace}");
    assert!(
        trace.contains("Failed to upload the cache: PUT http://"),
        "{trace}"
    );
    assert!(trace.contains("Failed to create cache"), "{trace}");
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert_no_signature(&trace);
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    // The local archive was still written.
    assert!(local_archive(&daemon).is_some());
}

#[tokio::test]
async fn an_unreachable_s3_server_only_warns() {
    // A port nobody listens on any more.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let config = cache_config(&address, SECRET_KEY, true, "");
    let daemon = Daemon::start_with_runner_config(None, &config).await;
    let view = daemon
        .run(producing_job().extra("cache", cache_entry("deps", "pull-push", &[])))
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!(
            "Failed to download the cache: GET http://{address}/"
        )),
        "{trace}"
    );
    assert!(
        trace.contains(&format!(
            "Failed to upload the cache: PUT http://{address}/"
        )),
        "{trace}"
    );
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert_no_signature(&trace);
}

#[tokio::test]
async fn archives_over_max_uploaded_archive_size_stay_local() {
    let s3 = S3Server::start().await;
    let config = s3.runner_config(true, "    MaxUploadedArchiveSize = 10\n");
    let daemon = Daemon::start_with_runner_config(None, &config).await;
    let view = daemon
        .run(producing_job().extra("cache", cache_entry("deps", "pull-push", &[])))
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    let archive = local_archive(&daemon).expect("the local archive");
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(
        trace.contains(&format!(
            "Cache archive size ({size}) is too big (Limit is set to 10). Cache will be stored only locally."
        )),
        "{trace}"
    );
    assert!(trace.contains("Created cache"), "{trace}");
    assert!(!trace.contains("Uploading cache.zip"), "{trace}");
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    assert!(Path::new(&archive).exists());
}
