//! A GitLab behind a private CA: the fake coordinator serves HTTPS (API, git smart HTTP, LFS,
//! artifacts) with a certificate from a CA made in the test, which neither the host's git nor
//! the system trusts. With only the CA configured (`tls-ca-file`, or the official
//! `certs/<host>.crt` next to config.toml), jobs must clone with submodules and LFS, fetch,
//! upload and download artifacts and use their cache: every git and helper call trusts the CA
//! through `CI_SERVER_TLS_CA_FILE`.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use runnel_fake_gitlab::{FakeConfig, FakeTls, GitStrategy, JobBuilder, JobView, RemoteStatus};
use serde_json::json;

use crate::support::TestEnv;

const RUNNER: &str = "tls";
const JOB_WAIT: Duration = Duration::from_secs(60);

/// A CA (PEM) and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    server: FakeTls,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "runnel private CA test");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            server: FakeTls {
                cert_chain_pem: server_cert.pem(),
                key_pem: server_key.serialize_pem(),
            },
        }
    }
}

/// A shell runner against an HTTPS fake; `runner_tls` is the TLS part of `[[runners]]`.
async fn setup(pki: &Pki, runner_tls: impl FnOnce(&Path) -> String) -> TestEnv {
    let env = TestEnv::with_config(FakeConfig {
        long_poll: Duration::from_secs(1),
        tls: Some(pki.server.clone()),
        ..FakeConfig::default()
    })
    .await;
    assert!(env.url().starts_with("https://127.0.0.1:"), "{}", env.url());
    // What an admin does once on a shell runner host: the LFS filters in the global git config
    // of the user running the jobs (the tests give `runnel` the temp dir as HOME).
    let install = std::process::Command::new("git")
        .args(["lfs", "install", "--skip-repo"])
        .env("HOME", env.dir.path())
        .output()
        .expect("git lfs install runs");
    assert!(install.status.success(), "{install:?}");
    let token = env.fake.create_runner_token();
    let tls = runner_tls(env.dir.path());
    let config = format!(
        "concurrent = 1\ncheck_interval = 1\n\n[[runners]]\n  name = \"{RUNNER}\"\n  url = \"{url}\"\n  token = \"{token}\"\n  executor = \"shell\"\n  builds_dir = \"{builds}\"\n  cache_dir = \"{cache}\"\n{tls}\n  [runners.feature_flags]\n    FF_TIMESTAMPS = false\n",
        url = env.url(),
        builds = env.dir.path().join("builds").display(),
        cache = env.dir.path().join("cache").display(),
    );
    std::fs::write(env.config_path(), config).unwrap();
    env
}

async fn run(env: &TestEnv, job: JobBuilder) -> JobView {
    let id = env.fake.enqueue(job);
    let args = ["run-single", "--runner", RUNNER, "--max-builds", "1"];
    env.runnel(&args, "").await.assert_success();
    let view = env
        .fake
        .wait_for_job_state(id, JobView::is_finished, JOB_WAIT)
        .await
        .expect("job finished");
    assert_eq!(
        view.status,
        RemoteStatus::Success,
        "job failed:\n{}",
        view.trace_text()
    );
    view
}

#[tokio::test]
async fn with_only_tls_ca_file_jobs_clone_fetch_cache_and_move_artifacts() {
    let pki = Pki::new();
    let env = setup(&pki, |dir| {
        let ca = dir.join("private-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        format!("  tls-ca-file = \"{}\"", ca.display())
    })
    .await;
    let lib = env.fake.create_repo("group/lib").unwrap();
    let lib_sha = lib
        .commit("main", "lib")
        .file("lib.txt", "library\n")
        .create()
        .unwrap();
    let repo = env.fake.create_repo("group/project").unwrap();
    let first = repo
        .commit("main", "first")
        .file("README.md", "version one\n")
        .lfs_file("assets/big.bin", "large lfs content\n")
        .submodule_url("libs/lib", "../lib.git", &lib_sha)
        .create()
        .unwrap();

    let build = run(
        &env,
        JobBuilder::new("build")
            .repo(&repo, "main", &first)
            .git_strategy(GitStrategy::Fetch)
            .variable("GIT_SUBMODULE_STRATEGY", "normal")
            .script([
                "cat README.md libs/lib/lib.txt assets/big.bin",
                "head -n 1 \"$CI_SERVER_TLS_CA_FILE\"",
                "mkdir -p vendor && echo cached-dep > vendor/dep.txt",
                "echo built > out.txt",
                // The job's own git calls to the instance trust the CA too.
                "echo \"remote=$(git ls-remote origin refs/heads/main)\"",
            ])
            .extra(
                "cache",
                json!([{ "key": "deps", "paths": ["vendor/"], "policy": "pull-push" }]),
            )
            .extra(
                "artifacts",
                json!([{ "paths": ["out.txt"], "artifact_type": "archive", "artifact_format": "zip" }]),
            ),
    )
    .await;
    let trace = build.trace_text();
    assert!(
        trace.contains("version one\nlibrary\nlarge lfs content\n"),
        "{trace}"
    );
    assert!(trace.contains("-----BEGIN CERTIFICATE-----"), "{trace}");
    assert!(trace.contains(&format!("remote={first}")), "{trace}");
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{trace}"
    );
    assert_eq!(build.artifacts.len(), 1);

    let second = repo
        .commit("main", "second")
        .file("README.md", "version two\n")
        .create()
        .unwrap();
    let artifact = &build.artifacts[0];
    let test = run(
        &env,
        JobBuilder::new("test")
            .repo(&repo, "main", &second)
            .git_strategy(GitStrategy::Fetch)
            .script(["cat README.md out.txt vendor/dep.txt"])
            .extra(
                "cache",
                json!([{ "key": "deps", "paths": ["vendor/"], "policy": "pull" }]),
            )
            .extra(
                "dependencies",
                json!([{
                    "id": build.id,
                    "token": build.token.expose(),
                    "name": "build",
                    "artifacts_file": { "filename": artifact.filename, "size": artifact.data.len() },
                }]),
            ),
    )
    .await;
    let trace = test.trace_text();
    assert!(trace.contains("Fetching changes"), "{trace}");
    assert!(
        !trace.contains("Created fresh repository"),
        "a fetch into the checkout:\n{trace}"
    );
    assert!(
        trace.contains("version two\nbuilt\ncached-dep\n"),
        "{trace}"
    );
}

#[tokio::test]
async fn the_official_certs_dir_lookup_alone_is_enough() {
    let pki = Pki::new();
    let env = setup(&pki, |dir| {
        let certs = dir.join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("127.0.0.1.crt"), &pki.ca_pem).unwrap();
        String::new()
    })
    .await;
    let repo = env.fake.create_repo("group/project").unwrap();
    let sha = repo
        .commit("main", "only")
        .file("README.md", "from a private CA\n")
        .create()
        .unwrap();
    let view = run(
        &env,
        JobBuilder::new("build")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .variable("GIT_LFS_SKIP_SMUDGE", "1")
            .script([
                "cat README.md",
                "echo built > out.txt",
                "cmp \"$CI_SERVER_TLS_CA_FILE\" \"$HOME/certs/127.0.0.1.crt\" && echo same-ca",
            ])
            .extra("artifacts", json!([{ "paths": ["out.txt"] }])),
    )
    .await;
    let trace = view.trace_text();
    assert!(trace.contains("from a private CA\n"), "{trace}");
    assert!(trace.contains("same-ca"), "{trace}");
    assert_eq!(view.artifacts.len(), 1, "{trace}");
}

/// The base64 body of the PEM certificates in `pem`, one string each.
fn pem_bodies(pem: &str) -> Vec<String> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split_once("-----END CERTIFICATE-----"))
        .map(|(body, _)| body.chars().filter(|c| !c.is_whitespace()).collect())
        .collect()
}

#[tokio::test]
async fn without_a_ca_file_jobs_get_the_chain_gitlab_presented() {
    // The CA is in the runner host's system store (SSL_CERT_FILE for `runnel`), not configured;
    // the job's git trusts nothing of its own (SSL_CERT_FILE points nowhere in the job).
    let pki = Pki::new();
    let env = setup(&pki, |_| String::new()).await;
    let store = env.dir.path().join("system-store.pem");
    std::fs::write(&store, &pki.ca_pem).unwrap();
    let repo = env.fake.create_repo("group/project").unwrap();
    let sha = repo
        .commit("main", "only")
        .file("README.md", "cloned over the presented chain\n")
        .create()
        .unwrap();
    let id = env.fake.enqueue(
        JobBuilder::new("chain")
            .repo(&repo, "main", &sha)
            .git_strategy(GitStrategy::Clone)
            .variable("GIT_LFS_SKIP_SMUDGE", "1")
            .variable("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .script([
                "cat README.md",
                "cat \"$CI_SERVER_TLS_CA_FILE\"",
                "echo \"remote=$(git ls-remote origin refs/heads/main)\"",
                "echo built > out.txt",
            ])
            .extra("artifacts", json!([{ "paths": ["out.txt"] }])),
    );
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_runnel"));
    command
        .args(["run-single", "--runner", RUNNER, "--max-builds", "1", "-c"])
        .arg(env.config_path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("SSL_CERT_FILE", &store)
        .current_dir(env.dir.path())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("runnel finished in time")
        .expect("runnel ran");
    assert!(output.status.success(), "{output:?}");
    let view = env
        .fake
        .wait_for_job_state(id, JobView::is_finished, JOB_WAIT)
        .await
        .expect("job finished");
    let trace = view.trace_text();
    assert_eq!(view.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("cloned over the presented chain\n"),
        "{trace}"
    );
    assert!(trace.contains(&format!("remote={sha}")), "{trace}");
    assert_eq!(view.artifacts.len(), 1, "{trace}");
    // The file holds the server's certificate and the root it chains to, as PEM.
    let flat: String = trace.chars().filter(|c| !c.is_whitespace()).collect();
    let server = pem_bodies(&pki.server.cert_chain_pem);
    let ca = pem_bodies(&pki.ca_pem);
    assert_eq!((server.len(), ca.len()), (1, 1));
    assert!(
        flat.contains(&server[0]),
        "server certificate missing:\n{trace}"
    );
    assert!(flat.contains(&ca[0]), "root certificate missing:\n{trace}");
}

/// #15 on docker: with only `tls-ca-file`, a docker job (Runnel's own helper, a static busybox
/// build image) clones with submodules and LFS, fills a cache and uploads artifacts; the next
/// fetches, restores the cache and downloads the artifacts. git in the helper and the helper's
/// transfers trust the CA, and the build container gets `CI_SERVER_TLS_CA_FILE`.
#[tokio::test]
async fn a_docker_job_on_a_private_ca_gitlab_clones_caches_and_moves_artifacts() {
    use crate::docker::{Sweep, assert_nothing_left, ensure_image, own_helper_setup};
    use crate::run::Daemon;
    ensure_image();
    let pki = Pki::new();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("private-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let daemon = Daemon::start(crate::run::Setup {
        runner: format!("  tls-ca-file = \"{}\"\n", ca.display()),
        fake: Some(FakeConfig {
            long_poll: Duration::from_secs(2),
            trace_update_interval_secs: 1,
            tls: Some(pki.server.clone()),
            ..FakeConfig::default()
        }),
        ..own_helper_setup("")
    })
    .await;
    let _sweep = Sweep::new(&daemon);
    let lib = daemon.fake.create_repo("group/lib").unwrap();
    let lib_sha = lib
        .commit("main", "lib")
        .file("lib.txt", "library\n")
        .create()
        .unwrap();
    let repo = daemon.fake.create_repo("group/project").unwrap();
    let first = repo
        .commit("main", "first")
        .file("README.md", "version one\n")
        .lfs_file("assets/big.bin", "large lfs content\n")
        .submodule_url("libs/lib", "../lib.git", &lib_sha)
        .create()
        .unwrap();
    let id = daemon.fake.enqueue(
        JobBuilder::new("build")
            .repo(&repo, "main", &first)
            .git_strategy(GitStrategy::Fetch)
            .variable("GIT_SUBMODULE_STRATEGY", "normal")
            .script([
                "cat README.md libs/lib/lib.txt assets/big.bin",
                "head -n 1 \"$CI_SERVER_TLS_CA_FILE\"",
                "mkdir -p vendor && echo cached-dep > vendor/dep.txt",
                "echo built > out.txt",
            ])
            .extra(
                "cache",
                json!([{ "key": "deps", "paths": ["vendor/"], "policy": "pull-push" }]),
            )
            .extra(
                "artifacts",
                json!([{ "paths": ["out.txt"], "artifact_type": "archive", "artifact_format": "zip" }]),
            ),
    );
    let build = daemon.finished(id).await;
    let trace = build.trace_text();
    assert_eq!(build.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("version one\nlibrary\nlarge lfs content\n"),
        "{trace}"
    );
    assert!(trace.contains("-----BEGIN CERTIFICATE-----"), "{trace}");
    assert!(trace.contains("Created cache"), "{trace}");
    assert!(
        trace.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{trace}"
    );
    assert_eq!(build.artifacts.len(), 1, "{trace}");

    let second = repo
        .commit("main", "second")
        .file("README.md", "version two\n")
        .create()
        .unwrap();
    let artifact = &build.artifacts[0];
    let id = daemon.fake.enqueue(
        JobBuilder::new("test")
            .repo(&repo, "main", &second)
            .git_strategy(GitStrategy::Fetch)
            .script(["cat README.md out.txt vendor/dep.txt"])
            .extra(
                "cache",
                json!([{ "key": "deps", "paths": ["vendor/"], "policy": "pull" }]),
            )
            .extra(
                "dependencies",
                json!([{
                    "id": build.id,
                    "token": build.token.expose(),
                    "name": "build",
                    "artifacts_file": { "filename": artifact.filename, "size": artifact.data.len() },
                }]),
            ),
    );
    let test = daemon.finished(id).await;
    let trace = test.trace_text();
    assert_eq!(test.status, RemoteStatus::Success, "{trace}");
    assert!(
        trace.contains("Reinitialized existing Git repository"),
        "{trace}"
    );
    assert!(
        trace.contains("version two\nbuilt\ncached-dep\n"),
        "{trace}"
    );
    assert_nothing_left(&daemon);
}
