//! Test support: the Docker client, config sections, jobs, a collecting output sink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use runnel_config::DockerConfig;
use runnel_executor::{OutputSink, OutputStream};
use runnel_types::{JobId, JobSpec};
use tokio::sync::Notify;

/// A client for the local daemon; fails the test with a clear message when Docker is missing.
pub(crate) async fn docker() -> Docker {
    let docker = Docker::connect_with_defaults()
        .unwrap_or_else(|error| panic!("these tests need Docker: cannot set up a client: {error}"));
    let docker = docker.negotiate_version().await.unwrap_or_else(|error| {
        panic!("these tests need a running Docker engine (DOCKER_HOST or /var/run/docker.sock): {error}")
    });
    docker
        .ping()
        .await
        .unwrap_or_else(|error| panic!("these tests need a running Docker engine: {error}"));
    docker
}

/// A `[runners.docker]` section from TOML lines.
pub(crate) fn docker_config(section: &str) -> DockerConfig {
    let text = format!(
        "[[runners]]\nname = \"t\"\nurl = \"https://gitlab.example.com\"\ntoken = \"glrt-t\"\nexecutor = \"docker\"\n[runners.docker]\n{section}\n"
    );
    let file = runnel_config::ConfigFile::parse("config.toml", &text, |_| None)
        .unwrap_or_else(|error| panic!("invalid test config: {error}"));
    file.config().runners[0]
        .docker
        .clone()
        .expect("the test config has a docker section")
}

/// A job id and project id no other test (or earlier run) uses.
pub(crate) fn unique_ids() -> (u64, u64) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = u64::from(std::process::id()) * 1000;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (base + n, 900_000 + base + n)
}

/// A job with a unique id and project.
pub(crate) fn job(image: Option<&str>) -> JobSpec {
    let (job_id, project_id) = unique_ids();
    let mut job = JobSpec {
        id: JobId(job_id),
        ..JobSpec::default()
    };
    job.info.project_id = project_id;
    job.info.project_full_path = "group/project".to_owned();
    job.image = image.map(|name| runnel_types::ImageSpec {
        name: name.to_owned(),
        ..runnel_types::ImageSpec::default()
    });
    job
}

/// Collects a stage's output.
#[derive(Default)]
pub(crate) struct Collect {
    chunks: Mutex<Vec<(OutputStream, Vec<u8>)>>,
    changed: Notify,
    /// The last resource figures the executor reported.
    pub(crate) resources: Mutex<Option<runnel_executor::ResourceUsage>>,
}

impl Collect {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Everything written to `stream`, as text.
    pub(crate) fn text(&self, stream: OutputStream) -> String {
        let chunks = self.chunks.lock().expect("sink lock");
        let bytes: Vec<u8> = chunks
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, bytes)| bytes.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until stdout contains `needle` (fails the test after a generous timeout).
    pub(crate) async fn wait_for(&self, needle: &str) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if self.text(OutputStream::Stdout).contains(needle) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .unwrap_or_else(|_| panic!("`{needle}` never appeared in the output"));
    }
}

impl OutputSink for Collect {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        self.chunks
            .lock()
            .expect("sink lock")
            .push((stream, bytes.to_vec()));
        self.changed.notify_waiters();
    }

    fn resources_used(&self, usage: runnel_executor::ResourceUsage) {
        *self.resources.lock().expect("sink lock") = Some(usage);
    }
}
