//! Test helpers: a sink that records output, and ways to wait for and inspect processes.

use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use runnel_executor::{OutputSink, OutputStream};

/// Hung tests fail after this long instead of hanging the suite.
pub(crate) const HANG: Duration = Duration::from_secs(60);

/// Records every chunk written to it.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    chunks: Mutex<Vec<(OutputStream, Vec<u8>)>>,
}

impl OutputSink for Recorder {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        self.chunks
            .lock()
            .expect("recorder lock")
            .push((stream, bytes.to_vec()));
    }
}

impl Recorder {
    /// Everything written to `stream`, concatenated.
    pub(crate) fn bytes(&self, stream: OutputStream) -> Vec<u8> {
        let chunks = self.chunks.lock().expect("recorder lock");
        chunks
            .iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, bytes)| bytes.iter().copied())
            .collect()
    }

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8(self.bytes(OutputStream::Stdout)).expect("utf-8 stdout")
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8(self.bytes(OutputStream::Stderr)).expect("utf-8 stderr")
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.lock().expect("recorder lock").len()
    }
}

/// Fails the test if `future` does not finish within [`HANG`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

/// Waits until `path` holds a pid (written by a script) and returns it.
pub(crate) async fn read_pid(path: &Path) -> i32 {
    within("waiting for a pid file", async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Whether `pid` is a running process (zombies count as gone: they cannot run anything).
pub(crate) fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits until `pid` is gone; panics if it is still running after [`HANG`].
pub(crate) async fn assert_gone(pid: i32) {
    within(&format!("process {pid} to die"), async {
        while is_running(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
