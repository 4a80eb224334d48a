//! Job data end to end: artifacts and local caches through the real `runnel run` daemon, real
//! bash and the helper subcommands, against the fake coordinator.

use std::io::{Cursor, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use runnel_fake_gitlab::{FakeConfig, FakeGitlab, GitStrategy, JobBuilder, JobView, RemoteStatus};
use serde_json::json;
use tempfile::TempDir;

/// Generous limit for a job to finish; only a hung test ever reaches it.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// A `runnel run` daemon with its own config, builds and cache dirs, and fake GitLab.
pub(crate) struct Daemon {
    fake: FakeGitlab,
    dir: TempDir,
    _child: tokio::process::Child,
}

impl Daemon {
    async fn start() -> Self {
        Self::start_with_cache_dir(None).await
    }

    /// `cache_dir` overrides the default `<temp>/cache`.
    async fn start_with_cache_dir(cache_dir: Option<PathBuf>) -> Self {
        Self::start_with_runner_config(cache_dir, "").await
    }

    /// `runner_config` is appended to the `[[runners]]` entry (e.g. a `[runners.cache]` table).
    pub(crate) async fn start_with_runner_config(
        cache_dir: Option<PathBuf>,
        runner_config: &str,
    ) -> Self {
        let fake = FakeGitlab::start(FakeConfig {
            long_poll: Duration::from_secs(2),
            trace_update_interval_secs: 1,
            ..FakeConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = fake.create_runner_token();
        let cache = cache_dir.unwrap_or_else(|| dir.path().join("cache"));
        let config = format!(
            "concurrent = 1\ncheck_interval = 1\nshutdown_timeout = 10\n\n[[runners]]\n  name = \"test\"\n  url = \"{url}\"\n  token = \"{token}\"\n  executor = \"shell\"\n  builds_dir = \"{builds}\"\n  cache_dir = \"{cache}\"\n  [runners.feature_flags]\n    FF_TIMESTAMPS = false\n{runner_config}",
            url = fake.url(),
            builds = dir.path().join("builds").display(),
            cache = cache.display(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("runnel.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(["--log-level", "debug"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            fake,
            dir,
            _child: child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runnel.log")).unwrap_or_default()
    }

    /// Runs one job to its end.
    pub(crate) async fn run(&self, job: JobBuilder) -> JobView {
        let id = self.fake.enqueue(job);
        match self
            .fake
            .wait_for_job_state(id, JobView::is_finished, JOB_TIMEOUT)
            .await
        {
            Ok(view) => view,
            Err(error) => panic!("{error}\nrunnel log:\n{}", self.log()),
        }
    }

    pub(crate) fn cache_root(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

/// Every job starts from an empty project dir, so only restored or downloaded files are there.
pub(crate) fn job(name: &str) -> JobBuilder {
    JobBuilder::new(name).git_strategy(GitStrategy::Empty)
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

pub(crate) fn zip_entry(data: &[u8], name: &str) -> String {
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).expect("a zip archive");
    let mut entry = archive.by_name(name).expect("the entry");
    let mut text = String::new();
    entry.read_to_string(&mut text).unwrap();
    text
}

fn dependency_on(view: &JobView, name: &str) -> serde_json::Value {
    let artifact = view.artifacts.first().expect("an uploaded artifact");
    json!([{
        "id": view.id,
        "token": view.token.expose(),
        "name": name,
        "artifacts_file": { "filename": artifact.filename, "size": artifact.data.len() },
    }])
}

#[tokio::test]
async fn artifacts_are_uploaded_as_zip_and_downloaded_by_a_dependent_job() {
    let daemon = Daemon::start().await;
    let build = daemon
        .run(
            job("build")
                .script([
                    "mkdir -p out/sub",
                    "echo hello > out/a.txt",
                    "echo nested > out/sub/b.log",
                    "echo scratch > out/skip.tmp",
                    "echo top > top.txt",
                    "echo other > other.txt",
                ])
                .extra(
                    "artifacts",
                    json!([
                        {
                            "name": "build-$CI_JOB_NAME",
                            "untracked": false,
                            "paths": ["out/", "top.txt"],
                            "exclude": ["out/*.tmp"],
                            "when": "on_success",
                            "artifact_type": "archive",
                            "artifact_format": "zip",
                            "expire_in": "1 week"
                        },
                        {
                            "name": "never",
                            "paths": ["other.txt"],
                            "when": "on_failure",
                            "artifact_type": "archive",
                            "artifact_format": "zip"
                        }
                    ]),
                ),
        )
        .await;
    let trace = build.trace_text();
    assert_eq!(build.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Uploading artifacts for successful job"),
        "{trace}"
    );
    assert!(
        !trace.contains("Uploading artifacts for failed job"),
        "{trace}"
    );
    assert!(
        trace.contains("out/: found 4 matching artifact files and directories"),
        "{trace}"
    );
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{trace}"
    );
    assert!(
        !trace.contains(build.token.expose()),
        "the job token leaked: {trace}"
    );
    assert_eq!(
        build.artifacts.len(),
        1,
        "only the on_success entry is uploaded"
    );
    let artifact = &build.artifacts[0];
    assert_eq!(artifact.filename, "build-build.zip");
    assert_eq!(artifact.expire_in.as_deref(), Some("1 week"));
    assert_eq!(artifact.artifact_format.as_deref(), Some("zip"));
    assert_eq!(artifact.artifact_type.as_deref(), Some("archive"));
    assert_eq!(
        zip_names(&artifact.data),
        ["out/", "out/a.txt", "out/sub/", "out/sub/b.log", "top.txt"]
    );
    assert_eq!(zip_entry(&artifact.data, "out/a.txt"), "hello\n");

    let test = daemon
        .run(
            job("test")
                .script([
                    "cat out/a.txt out/sub/b.log top.txt",
                    "test ! -e out/skip.tmp",
                    "test ! -e other.txt",
                ])
                .extra("dependencies", dependency_on(&build, "build")),
        )
        .await;
    let trace = test.trace_text();
    assert_eq!(test.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!(
            "Downloading artifacts for build ({})...",
            build.id
        )),
        "{trace}"
    );
    assert!(
        trace.contains("Downloading artifacts from coordinator... ok"),
        "{trace}"
    );
    assert!(trace.contains("hello\nnested\ntop\n"), "{trace}");
    assert!(
        !trace.contains(build.token.expose()),
        "a token leaked: {trace}"
    );
}

#[tokio::test]
async fn a_failed_job_uploads_only_its_on_failure_artifacts() {
    let daemon = Daemon::start().await;
    let view = daemon
        .run(
            job("flaky")
                .script(["echo log > failure.log", "echo ok > ok.txt", "exit 4"])
                .extra(
                    "artifacts",
                    json!([
                        { "paths": ["ok.txt"], "when": "on_success" },
                        { "paths": ["failure.log"], "when": "on_failure" },
                        { "paths": ["ok.txt"], "when": "always", "artifact_type": "junit",
                          "artifact_format": "gzip", "name": "junit" }
                    ]),
                ),
        )
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("Uploading artifacts for failed job"),
        "{trace}"
    );
    assert!(
        !trace.contains("Uploading artifacts for successful job"),
        "{trace}"
    );
    let uploaded: Vec<(&str, Option<&str>, Option<&str>)> = view
        .artifacts
        .iter()
        .map(|a| {
            (
                a.filename.as_str(),
                a.artifact_format.as_deref(),
                a.artifact_type.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        uploaded,
        [
            ("artifacts.zip", None, None),
            ("junit.gz", Some("gzip"), Some("junit")),
        ]
    );
    assert_eq!(zip_names(&view.artifacts[0].data), ["failure.log"]);
    // The failure stays the script's: exit code 4.
    let last = view
        .updates
        .iter()
        .rev()
        .find(|u| u.state != "running")
        .unwrap();
    assert_eq!(last.exit_code, Some(4));
}

#[tokio::test]
async fn a_failed_upload_fails_the_job() {
    let daemon = Daemon::start().await;
    daemon
        .fake
        .set_artifact_upload_mode(runnel_fake_gitlab::ArtifactUploadMode::Reject(413));
    let view = daemon
        .run(
            job("big")
                .script(["echo data > big.bin"])
                .extra("artifacts", json!([{ "paths": ["big.bin"] }])),
        )
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Failed, "{trace}");
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 413"),
        "{trace}"
    );
    assert!(
        trace.contains("ERROR: failed to upload the artifacts of job"),
        "{trace}"
    );
}

/// A zip whose entries try to leave the project dir, next to one harmless file.
fn hostile_zip(outside: &Path) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("good.txt", options).unwrap();
        zip.write_all(b"good\n").unwrap();
        zip.start_file("../../../../escaped.txt", options).unwrap();
        zip.write_all(b"evil\n").unwrap();
        zip.start_file(outside.join("absolute.txt").display().to_string(), options)
            .unwrap();
        zip.write_all(b"evil\n").unwrap();
        zip.add_symlink("link", outside.display().to_string(), options)
            .unwrap();
        zip.start_file("link/through-link.txt", options).unwrap();
        zip.write_all(b"evil\n").unwrap();
        zip.finish().unwrap();
    }
    out.into_inner()
}

#[tokio::test]
async fn a_hostile_artifact_is_never_extracted_outside_the_project() {
    let daemon = Daemon::start().await;
    let outside = daemon.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let evil = daemon.dir.path().join("evil.zip");
    std::fs::write(&evil, hostile_zip(&outside)).unwrap();
    // The raw format uploads the file as it is, so the fake serves the hostile zip.
    let producer = daemon
        .run(
            job("producer")
                .script([format!("cp {} evil.zip", evil.display())])
                .extra(
                    "artifacts",
                    json!([{ "paths": ["evil.zip"], "artifact_format": "raw",
                             "artifact_type": "archive" }]),
                ),
        )
        .await;
    assert_eq!(
        producer.status,
        RemoteStatus::Success,
        "{}",
        producer.trace_text()
    );
    let consumer = daemon
        .run(
            job("consumer")
                .script(["cat good.txt", "ls -la"])
                .extra("dependencies", dependency_on(&producer, "producer")),
        )
        .await;
    let trace = consumer.trace_text();
    assert_eq!(consumer.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("good\n"), "{trace}");
    assert!(trace.contains("refused"), "{trace}");
    let mut leaked = Vec::new();
    for entry in walk(daemon.dir.path()) {
        let name = entry.file_name().unwrap_or_default().to_string_lossy();
        let in_project = entry.components().any(|c| c.as_os_str() == "project-empty");
        let hostile = ["escaped.txt", "absolute.txt", "through-link.txt"].contains(&name.as_ref());
        if hostile && !in_project {
            leaked.push(entry);
        }
    }
    assert!(leaked.is_empty(), "written outside: {leaked:?}\n{trace}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

pub(crate) fn cache_entry(key: &str, policy: &str, fallback_keys: &[&str]) -> serde_json::Value {
    json!([{
        "key": key,
        "untracked": false,
        "policy": policy,
        "paths": ["vendor/"],
        "when": "on_success",
        "fallback_keys": fallback_keys,
    }])
}

#[tokio::test]
async fn caches_are_saved_restored_pulled_and_found_through_fallback_keys() {
    let daemon = Daemon::start().await;

    let first = daemon
        .run(
            job("deps")
                .script([
                    "mkdir -p vendor",
                    "echo v1 > vendor/lib.txt",
                    // Older than the archive, so an unchanged restore is recognised below.
                    "touch -d @1577836800 vendor/lib.txt vendor",
                ])
                .extra("cache", cache_entry("deps-$CI_JOB_NAME", "pull-push", &[])),
        )
        .await;
    let trace = first.trace_text();
    assert_eq!(first.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Checking cache for deps-deps..."), "{trace}");
    assert!(trace.contains("Failed to extract cache"), "{trace}");
    assert!(trace.contains("Creating cache deps-deps..."), "{trace}");
    assert!(trace.contains("vendor/: found 2 matching"), "{trace}");
    assert!(trace.contains("Created cache"), "{trace}");
    let archives: Vec<PathBuf> = walk(&daemon.cache_root())
        .into_iter()
        .filter(|p| p.ends_with("deps-deps/cache.zip"))
        .collect();
    assert_eq!(archives.len(), 1, "{:?}", walk(&daemon.cache_root()));
    let archive = archives[0].clone();
    let saved = std::fs::read(&archive).unwrap();
    assert_eq!(zip_entry(&saved, "vendor/lib.txt"), "v1\n");

    // Same key, pull only: restored, changed, not saved back.
    let second = daemon
        .run(
            job("deps")
                .script(["cat vendor/lib.txt", "echo v2 > vendor/lib.txt"])
                .extra("cache", cache_entry("deps-deps", "pull", &[])),
        )
        .await;
    let trace = second.trace_text();
    assert_eq!(second.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert!(trace.contains("v1\n"), "{trace}");
    assert!(!trace.contains("Saving cache"), "{trace}");
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        saved,
        "pull must not save"
    );

    // A missing key falls back to `fallback_keys`, then to CACHE_FALLBACK_KEY.
    let third = daemon
        .run(job("other").script(["cat vendor/lib.txt"]).extra(
            "cache",
            cache_entry("missing", "pull", &["also-missing", "deps-deps"]),
        ))
        .await;
    let trace = third.trace_text();
    assert_eq!(third.status, RemoteStatus::Success, "{trace}");
    let order = [
        "Checking cache for missing...",
        "Failed to extract cache",
        "Checking cache for also-missing...",
        "Checking cache for deps-deps...",
        "Successfully extracted cache",
        "v1\n",
    ];
    let mut rest: &str = &trace;
    for needle in order {
        let at = rest
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in order:\n{trace}"));
        rest = &rest[at + needle.len()..];
    }

    let fourth = daemon
        .run(
            job("other")
                .variable("CACHE_FALLBACK_KEY", "deps-deps")
                .script(["cat vendor/lib.txt"])
                .extra("cache", cache_entry("missing", "pull", &[])),
        )
        .await;
    let trace = fourth.trace_text();
    assert_eq!(fourth.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Checking cache for deps-deps..."), "{trace}");
    assert!(trace.contains("v1\n"), "{trace}");

    // Unchanged files: the archive is left alone.
    let fifth = daemon
        .run(
            job("deps")
                .script(["true"])
                .extra("cache", cache_entry("deps-deps", "pull-push", &[])),
        )
        .await;
    let trace = fifth.trace_text();
    assert_eq!(fifth.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Archive is up to date!"), "{trace}");
}

#[tokio::test]
async fn an_unwritable_cache_dir_only_warns() {
    let daemon = Daemon::start().await;
    // A regular file where the key's directory should be: not even root can save there.
    let project_cache = daemon.cache_root().join("group/project-empty");
    std::fs::create_dir_all(&project_cache).unwrap();
    std::fs::write(project_cache.join("k"), "x").unwrap();
    let view = daemon
        .run(
            job("cached")
                .script(["mkdir -p vendor", "echo v1 > vendor/lib.txt"])
                .extra("cache", cache_entry("k", "pull-push", &[])),
        )
        .await;
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("Failed to extract cache"), "{trace}");
    assert!(
        trace.contains("ERROR: failed to create the cache directory"),
        "{trace}"
    );
    assert!(trace.contains("Failed to create cache"), "{trace}");
    assert!(trace.contains("Job succeeded"), "{trace}");
}

#[tokio::test]
async fn uploads_follow_a_307_and_downloads_go_direct_to_object_storage() {
    let daemon = Daemon::start().await;
    daemon
        .fake
        .set_artifact_upload_mode(runnel_fake_gitlab::ArtifactUploadMode::RedirectOnce);
    daemon.fake.set_direct_download_redirect(true);
    let build = daemon
        .run(job("build").script(["echo payload > data.txt"]).extra(
            "artifacts",
            json!([
                { "paths": ["data.txt"], "expire_in": "2 days" },
                { "paths": ["nothing-*.txt"], "name": "empty" }
            ]),
        ))
        .await;
    let trace = build.trace_text();
    assert_eq!(build.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("nothing-*.txt: no matching files"),
        "{trace}"
    );
    assert!(trace.contains("ERROR: No files to upload"), "{trace}");
    assert_eq!(build.artifacts.len(), 1, "the empty entry uploads nothing");
    assert_eq!(build.artifacts[0].expire_in.as_deref(), Some("2 days"));

    let test = daemon
        .run(
            job("test")
                .script(["cat data.txt"])
                .extra("dependencies", dependency_on(&build, "build")),
        )
        .await;
    let trace = test.trace_text();
    assert_eq!(test.status, RemoteStatus::Success, "{trace}");
    assert!(trace.contains("payload\n"), "{trace}");
    let paths: Vec<String> = daemon
        .fake
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(
        paths.iter().any(|p| p.contains("/-/redirected/")),
        "{paths:?}"
    );
    let storage: Vec<_> = daemon
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/-/object-storage/"))
        .collect();
    assert_eq!(storage.len(), 1, "{paths:?}");
}

/// Runs a helper command directly in `dir` with only `env` set.
fn helper(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn cache_helpers_round_trip_tar_zstd_and_report_a_missing_cache() {
    let base = tempfile::tempdir().unwrap();
    let project = base.path().join("project");
    std::fs::create_dir_all(project.join("vendor/deep")).unwrap();
    std::fs::write(project.join("vendor/deep/lib.txt"), "zstd\n").unwrap();
    let archive = base.path().join("cache/key/cache.zip");
    let archive_arg = archive.display().to_string();
    let saved = helper(
        &project,
        &[
            "cache-archiver",
            "--file",
            &archive_arg,
            "--path",
            "vendor/",
        ],
        &[("CACHE_COMPRESSION_FORMAT", "tarzstd")],
    );
    assert!(saved.status.success(), "{saved:?}");
    let head = std::fs::read(&archive).unwrap();
    assert_eq!(head[..4], [0x28, 0xB5, 0x2F, 0xFD], "a zstd stream");

    let restored_dir = base.path().join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    let restored = helper(
        &restored_dir,
        &["cache-extractor", "--file", &archive_arg],
        &[],
    );
    assert!(restored.status.success(), "{restored:?}");
    let text = std::fs::read_to_string(restored_dir.join("vendor/deep/lib.txt")).unwrap();
    assert_eq!(text, "zstd\n");

    let missing = helper(
        &restored_dir,
        &["cache-extractor", "--file", "/nonexistent/cache.zip"],
        &[],
    );
    assert_eq!(missing.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&missing.stdout);
    assert!(stdout.contains("cache file does not exist"), "{stdout}");
    assert!(missing.stderr.is_empty(), "no daemon logs: {missing:?}");
}

/// Review L11: the docker helper container runs with `umask 0000`, which made the cache
/// directories it creates (on the host with a `cache_dir`) world-writable.
#[test]
fn cache_directories_are_not_world_writable_under_umask_0000() {
    use std::os::unix::fs::PermissionsExt as _;
    let base = tempfile::tempdir().unwrap();
    let project = base.path().join("project");
    std::fs::create_dir_all(project.join("vendor")).unwrap();
    std::fs::write(project.join("vendor/lib.txt"), "x\n").unwrap();
    let archive = base.path().join("cache/group/project/key/cache.zip");
    let archive_arg = archive.display().to_string();
    // As in the helper container: `umask 0000`, then the helper command.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "umask 0000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "cache-archiver",
            "--file",
            &archive_arg,
            "--path",
            "vendor/",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(&project);
    let saved = command.output().unwrap();
    assert!(saved.status.success(), "{saved:?}");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut dir = archive.parent().unwrap();
    while dir != base.path() {
        assert_eq!(mode(dir), 0o755, "{}", dir.display());
        dir = dir.parent().unwrap();
    }
    assert_eq!(
        mode(&archive) & 0o022,
        0,
        "the archive is not writable by others"
    );
}

#[test]
fn artifact_helpers_need_credentials_and_never_print_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = helper(dir.path(), &["artifacts-uploader", "--path", "x"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("missing GitLab URL (--url or CI_SERVER_URL)"),
        "{stdout}"
    );

    // Nothing listens on port 9 of loopback: the download fails and names only the short token.
    let out = helper(
        dir.path(),
        &["artifacts-downloader", "--retry", "0"],
        &[
            ("CI_SERVER_URL", "http://127.0.0.1:9"),
            ("CI_JOB_TOKEN", "glcbt-secretsecretsecret"),
            ("CI_JOB_ID", "42"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("id=42"), "{all}");
    assert!(
        all.contains("failed to download the artifacts of job 42"),
        "{all}"
    );
    assert!(!all.contains("secretsecretsecret"), "{all}");
}
