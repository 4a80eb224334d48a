//! The standalone binary: prints its URL, serves the control API, stops on SIGTERM.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{WAIT, client, request_job_at};

#[tokio::test]
async fn binary_prints_its_url_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-fake-gitlab"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--runner-token",
            "glrt-cli-token-123456",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("url printed in time")
        .expect("stdout readable")
        .expect("a line");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let response = request_job_at(&url, "glrt-cli-token-123456").await;
    assert_eq!(response.status(), 204, "the --runner-token runner exists");
    let log: Value = client()
        .get(format!("{url}/__fake/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log.as_array().map(Vec::len), Some(1));

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "{status}");
}
