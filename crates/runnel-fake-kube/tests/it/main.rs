//! The `runnel-fake-kube` binary: kubeconfig, bearer-token check, `Status` errors, pod
//! lifecycle on the Docker engine, clean stop.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

struct Server {
    child: std::process::Child,
    url: String,
    kubeconfig: String,
}

impl Server {
    fn start(dir: &std::path::Path) -> Self {
        let path = dir.join("kubeconfig");
        let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-fake-kube"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--token",
                "t0ken",
                "--kubeconfig",
            ])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let kubeconfig = std::fs::read_to_string(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the kubeconfig holds a token");
        Self {
            child,
            url: line.trim().to_owned(),
            kubeconfig,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached with the server still running when the test failed.
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

async fn pod_phase(client: &reqwest::Client, url: &str, name: &str) -> Value {
    let pod: Value = client
        .get(format!("{url}/api/v1/namespaces/default/pods/{name}"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    pod["status"].clone()
}

#[tokio::test]
async fn the_binary_serves_pods_with_kubernetes_semantics() {
    let dir = tempfile_dir();
    let server = Server::start(&dir);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(
        server
            .kubeconfig
            .contains(&format!("server: {}", server.url)),
        "{}",
        server.kubeconfig
    );
    assert!(server.kubeconfig.contains("token: t0ken"));
    let client = reqwest::Client::new();
    let pods = format!("{}/api/v1/namespaces/default/pods", server.url);

    let anonymous = client.get(&pods).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let status: Value = anonymous.json().await.unwrap();
    assert_eq!(status["kind"], json!("Status"));
    assert_eq!(status["reason"], json!("Unauthorized"));

    let missing = client
        .get(format!("{pods}/nope"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let status: Value = missing.json().await.unwrap();
    assert_eq!(status["message"], json!("pods \"nope\" not found"));

    let invalid = client
        .post(&pods)
        .bearer_auth("t0ken")
        .json(
            &json!({"metadata": {"name": "bad"}, "spec": {"containers": [
                {"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}
            ]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);

    // An image the engine does not have: the pod waits on ErrImagePull, as with a failed pull.
    let created = client
        .post(&pods)
        .bearer_auth("t0ken")
        .json(
            &json!({"metadata": {"name": "absent", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "runnel-fake-kube-absent:0"}]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert!(created["metadata"]["uid"].is_string());
    assert!(created["metadata"]["resourceVersion"].is_string());
    let conflict = client
        .post(&pods)
        .bearer_auth("t0ken")
        .json(&json!({"metadata": {"name": "absent"},
            "spec": {"containers": [{"name": "c", "image": "y"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
    let mut status = Value::Null;
    for _ in 0..50 {
        status = pod_phase(&client, &server.url, "absent").await;
        if status["containerStatuses"].is_array() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["phase"], json!("Pending"));
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["reason"],
        json!("ErrImagePull")
    );

    let listed: Value = client
        .get(format!("{pods}?labelSelector=app%3Dx"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["kind"], json!("PodList"));
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let deleted = client
        .delete(format!("{pods}/absent"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let gone = client
        .get(format!("{pods}/absent"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    let mut server = server;
    let stopped = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(
        server.child.wait().unwrap().success(),
        "SIGTERM stops it cleanly"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runnel-fake-kube-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn namespaces_secrets_and_config_maps_behave_as_kubernetes_objects() {
    let dir = std::env::temp_dir().join(format!("runnel-fake-kube-objects-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&dir);
    let client = reqwest::Client::new();
    let url = server.url.clone();
    let post = |path: String, body: Value| {
        client
            .post(format!("{url}{path}"))
            .bearer_auth("t0ken")
            .json(&body)
            .send()
    };
    // Objects need their namespace.
    let absent = post(
        "/api/v1/namespaces/e2e-ns/secrets".to_owned(),
        json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
    )
    .await
    .unwrap();
    assert_eq!(absent.status(), 404);
    let body: Value = absent.json().await.unwrap();
    assert_eq!(body["message"], json!("namespaces \"e2e-ns\" not found"));
    let created = post(
        "/api/v1/namespaces".to_owned(),
        json!({"metadata": {"name": "e2e-ns"}}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let again = post(
        "/api/v1/namespaces".to_owned(),
        json!({"metadata": {"name": "e2e-ns"}}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 409);
    let secret = post(
        "/api/v1/namespaces/e2e-ns/secrets".to_owned(),
        json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
    )
    .await
    .unwrap();
    assert_eq!(secret.status(), 201);
    let secret: Value = secret.json().await.unwrap();
    assert_eq!(
        secret["data"],
        json!({"k": "dg=="}),
        "stringData is folded in"
    );
    assert!(secret.get("stringData").is_none());
    let bad = post(
        "/api/v1/namespaces/e2e-ns/configmaps".to_owned(),
        json!({"metadata": {"name": "c"}, "binaryData": {"k": "not base64!"}}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 422);
    // Deleting the namespace deletes what is in it.
    let deleted = client
        .delete(format!("{url}/api/v1/namespaces/e2e-ns"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let gone = client
        .get(format!("{url}/api/v1/namespaces/e2e-ns/secrets/s"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let default = client
        .delete(format!("{url}/api/v1/namespaces/default"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(default.status(), 403, "built-in namespaces stay");
    drop(server);
    drop(std::fs::remove_dir_all(&dir));
}

#[tokio::test]
async fn the_api_server_goes_away_cutting_open_watches_and_comes_back_on_the_same_address() {
    let kube = runnel_fake_kube::FakeKube::start(runnel_fake_kube::FakeConfig::default())
        .await
        .unwrap();
    let url = kube.url().to_owned();
    let token = kube.token().to_owned();
    let client = reqwest::Client::new();
    let mut watch = client
        .get(format!("{url}/api/v1/namespaces/default/pods?watch=true"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    kube.stop_listening().await;
    // The open watch ends (no pod changed: it would otherwise stay open for 30 minutes).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = watch.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the open watch was cut");
    let address = url.trim_start_matches("http://").to_owned();
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "connections are refused while it is away"
    );
    kube.resume_listening().await.unwrap();
    let list = client
        .get(format!("{url}/api/v1/namespaces/default/pods"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    kube.shutdown().await;
}

#[tokio::test]
async fn pods_over_the_quota_are_refused_as_the_resource_quota_admission_does() {
    let kube = runnel_fake_kube::FakeKube::start(runnel_fake_kube::FakeConfig {
        faults: runnel_fake_kube::Faults {
            exceed_pod_quota: true,
            ..runnel_fake_kube::Faults::default()
        },
        ..runnel_fake_kube::FakeConfig::default()
    })
    .await
    .unwrap();
    let refused = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/default/pods", kube.url()))
        .bearer_auth(kube.token())
        .json(&json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let status: Value = refused.json().await.unwrap();
    assert_eq!(status["kind"], json!("Status"));
    assert_eq!(status["reason"], json!("Forbidden"));
    assert_eq!(
        status["message"],
        json!(
            "pods \"p\" is forbidden: exceeded quota: runnel-fake-kube-pods, requested: pods=1, used: pods=0, limited: pods=0"
        )
    );
    assert!(kube.pod_names().is_empty());
    kube.shutdown().await;
}

/// Sends `signal` (`USR1`, …) to the server process.
fn send_signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_binary_goes_away_on_sigusr1_and_comes_back_on_sigusr2() {
    let dir = std::env::temp_dir().join(format!("runnel-fake-kube-away-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Server::start(&dir);
    let address = server.url.trim_start_matches("http://").to_owned();
    send_signal(&server, "USR1");
    let mut away = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&address).await.is_err() {
            away = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(away, "the listener closed on SIGUSR1");
    send_signal(&server, "USR2");
    let mut listed = None;
    for _ in 0..100 {
        let answer = reqwest::Client::new()
            .get(format!("{}/api/v1/namespaces/default/pods", server.url))
            .bearer_auth("t0ken")
            .send()
            .await;
        if let Ok(answer) = answer {
            listed = Some(answer.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, Some(reqwest::StatusCode::OK), "back on SIGUSR2");
    send_signal(&server, "TERM");
    assert!(server.child.wait().unwrap().success());
}
