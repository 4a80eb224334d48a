//! Includes from outside the project, end to end: a local HTTP server stands in for a remote
//! file and for the GitLab instance of the `origin` remote (repository files, templates,
//! releases); `prepare` fetches through it, caches under `.runnel/includes/`, and `--offline`
//! runs from that cache alone.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use runnel_exec::{ExecOptions, prepare};

#[derive(Default)]
struct Server {
    requests: AtomicUsize,
    /// Where `redirect/…` projects send their files (another host name of this server).
    redirect_to: std::sync::Mutex<String>,
    /// Requests that reached `/elsewhere` with a token.
    leaked: AtomicUsize,
    /// (project, file, ref) → text
    files: HashMap<(String, String, String), String>,
}

const TOKEN: &str = "glpat-test-token-1234";

async fn remote(State(server): State<Arc<Server>>) -> impl IntoResponse {
    server.requests.fetch_add(1, Ordering::SeqCst);
    "remote-job:\n  script: [echo remote]\n"
}

async fn raw_file(
    State(server): State<Arc<Server>>,
    UrlPath((project, file)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    if project.starts_with("redirect/") {
        let target = server
            .redirect_to
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        return (
            StatusCode::FOUND,
            [(axum::http::header::LOCATION, target)],
            "",
        )
            .into_response();
    }
    if project.starts_with("private/")
        && headers.get("PRIVATE-TOKEN").and_then(|v| v.to_str().ok()) != Some(TOKEN)
    {
        return (StatusCode::NOT_FOUND, "404 Project Not Found").into_response();
    }
    let reference = query
        .get("ref")
        .cloned()
        .unwrap_or_else(|| "main".to_owned());
    match server.files.get(&(project, file, reference)) {
        Some(text) => text.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "404 File Not Found").into_response(),
    }
}

async fn template(
    State(server): State<Arc<Server>>,
    UrlPath(name): UrlPath<String>,
) -> axum::response::Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    if name != "Demo" {
        return (StatusCode::NOT_FOUND, "{}").into_response();
    }
    axum::Json(serde_json::json!({
        "name": "Demo",
        "content": ".demo-template:\n  script: [echo from-template]\n"
    }))
    .into_response()
}

async fn elsewhere(State(server): State<Arc<Server>>, headers: HeaderMap) -> impl IntoResponse {
    if headers.contains_key("PRIVATE-TOKEN") || headers.contains_key("JOB-TOKEN") {
        server.leaked.fetch_add(1, Ordering::SeqCst);
    }
    "elsewhere:\n  script: [x]\n"
}

async fn releases(State(server): State<Arc<Server>>) -> impl IntoResponse {
    server.requests.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!([{ "tag_name": "2.0" }]))
}

async fn serve(server: Arc<Server>) -> (String, tokio::task::JoinHandle<()>) {
    let state = Arc::clone(&server);
    let app = Router::new()
        .route("/ci/remote.yml", get(remote))
        .route("/elsewhere", get(elsewhere))
        .route(
            "/api/v4/projects/{project}/repository/files/{file}/raw",
            get(raw_file),
        )
        .route("/api/v4/templates/gitlab_ci_ymls/{name}", get(template))
        .route("/api/v4/projects/{project}/releases", get(releases))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    if let Ok(mut target) = server.redirect_to.lock() {
        *target = format!("http://localhost:{}/elsewhere", address.port());
    }
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (format!("127.0.0.1:{}", address.port()), task)
}

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}");
}

fn repo(host: &str, ci: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join(".gitlab-ci.yml"), ci).unwrap();
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "ci"]);
    let origin = format!("http://{host}/group/proj.git");
    git(dir.path(), &["remote", "add", "origin", &origin]);
    dir
}

fn options(dir: &Path, offline: bool, token: bool) -> ExecOptions {
    ExecOptions {
        project_dir: dir.to_path_buf(),
        offline,
        gitlab_token: token.then(|| TOKEN.to_owned()),
        ..ExecOptions::default()
    }
}

fn ci(host: &str) -> String {
    format!(
        r#"include:
  - remote: http://{host}/ci/remote.yml
  - project: private/shared
    ref: v1
    file: /ci/base.yml
  - template: Demo.gitlab-ci.yml
  - component: $CI_SERVER_FQDN/group/components/lint@~latest
    inputs:
      stage: build
build:
  stage: build
  extends: .base-build
docs:
  extends: .demo-template
"#
    )
}

fn server_files() -> HashMap<(String, String, String), String> {
    let mut files = HashMap::new();
    let mut add = |project: &str, file: &str, reference: &str, text: &str| {
        files.insert(
            (project.to_owned(), file.to_owned(), reference.to_owned()),
            text.to_owned(),
        );
    };
    // A project file that includes a file of its own project with `local`.
    add(
        "private/shared",
        "ci/base.yml",
        "v1",
        "include:\n  - local: ci/templates.yml\n",
    );
    add(
        "private/shared",
        "ci/templates.yml",
        "v1",
        ".base-build:\n  script: [make]\n",
    );
    add(
        "group/components",
        "templates/lint/template.yml",
        "2.0",
        "spec:\n  inputs:\n    stage:\n      default: test\n---\ncomponent-lint:\n  stage: $[[ inputs.stage ]]\n  script: [lint]\n",
    );
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_includes_are_fetched_cached_and_used_offline() {
    let server = Arc::new(Server {
        files: server_files(),
        ..Server::default()
    });
    let (host, task) = serve(Arc::clone(&server)).await;
    let dir = repo(&host, &ci(&host));

    let prepared = prepare(options(dir.path(), false, true))
        .await
        .unwrap_or_else(|e| panic!("prepare: {e}"));
    let names: Vec<(&str, &str)> = prepared
        .plan
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.stage.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("component-lint", "build"),
            ("build", "build"),
            ("remote-job", "test"),
            ("docs", "test"),
        ]
    );
    assert!(prepared.warnings().is_empty(), "{:?}", prepared.warnings());
    let fetched = server.requests.load(Ordering::SeqCst);
    assert!(fetched >= 5, "requests: {fetched}");

    // The cache names each file's source and ref, readable by its owner only.
    let cache = dir.path().join(".runnel/includes");
    let mut metas: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    metas.sort();
    assert_eq!(metas.len(), 5, "{metas:?}");
    assert!(
        metas.iter().any(
            |m| m.contains("\"source\": \"private/shared@v1:ci/templates.yml\"")
                && m.contains("\"ref\": \"v1\"")
        ),
        "{metas:?}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }

    // Offline: the same plan from the cache, without a request.
    task.abort();
    let offline = prepare(options(dir.path(), true, false))
        .await
        .unwrap_or_else(|e| panic!("offline prepare: {e}"));
    assert_eq!(offline.plan.jobs.len(), 4);
    assert_eq!(server.requests.load(Ordering::SeqCst), fetched);

    // Offline, an include that was never fetched is one error saying so.
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        "include:\n  - project: group/other\n    file: new.yml\njob:\n  script: [x]\n",
    )
    .unwrap();
    let error = prepare(options(dir.path(), true, false))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(".gitlab-ci.yml:3:11: cannot include project `group/other@HEAD:new.yml`: tried the cache only (--offline)"),
        "{error}"
    );
    assert!(error.contains("run once without --offline"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_include_is_one_error_that_says_what_to_do() {
    let server = Arc::new(Server {
        files: server_files(),
        ..Server::default()
    });
    let (host, _task) = serve(Arc::clone(&server)).await;
    // A private project without a token; a job extends a template of it.
    let dir = repo(
        &host,
        "include:\n  - project: private/shared\n    ref: v1\n    file: ci/templates.yml\nbuild:\n  extends: .base-build\n",
    );
    let error = prepare(options(dir.path(), false, false))
        .await
        .unwrap_err()
        .to_string();
    let expected_url = format!(
        "http://{host}/api/v4/projects/private%2Fshared/repository/files/ci%2Ftemplates.yml/raw?ref=v1 (HTTP 404)"
    );
    assert!(
        error.starts_with(".gitlab-ci.yml:4:11: cannot include project `private/shared@v1:ci/templates.yml`: tried "),
        "{error}"
    );
    assert!(error.contains(&expected_url), "{error}");
    assert!(error.contains("set GITLAB_TOKEN"), "{error}");
    assert!(!error.contains("extends"), "{error}");

    // With the token it works.
    let prepared = prepare(options(dir.path(), false, true))
        .await
        .unwrap_or_else(|e| panic!("prepare: {e}"));
    assert_eq!(prepared.plan.jobs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_do_not_follow_redirects_to_other_hosts() {
    let server = Arc::new(Server::default());
    let (host, _task) = serve(Arc::clone(&server)).await;
    let dir = repo(
        &host,
        "include:\n  - project: redirect/shared\n    file: ci.yml\njob:\n  script: [x]\n",
    );
    let error = prepare(options(dir.path(), false, true))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("a redirect to another host, not followed with credentials"),
        "{error}"
    );
    assert_eq!(server.leaked.load(Ordering::SeqCst), 0);
}
