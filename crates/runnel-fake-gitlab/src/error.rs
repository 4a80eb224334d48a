//! Errors of the fake's library API (starting it, driving it, waiting on it).
//!
//! HTTP error answers to the runner are not errors of this kind: they are responses, built in
//! `routes`.

use std::net::SocketAddr;
use std::time::Duration;

/// What can go wrong when a test drives the fake.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The listening socket could not be opened.
    #[error("failed to bind the fake coordinator to {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// A job id the fake never handed out.
    #[error("job {id} does not exist")]
    UnknownJob {
        /// The unknown id.
        id: u64,
    },
    /// A raw payload given to `enqueue_raw` that is not a JSON object.
    #[error("raw job payload must be a JSON object, got {kind}")]
    RawPayloadNotAnObject {
        /// What the payload was instead ("an array", "null"…).
        kind: &'static str,
    },
    /// A `wait_for_*` helper whose condition did not hold in time.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}")]
    WaitTimedOut {
        /// What was awaited, e.g. `job 3`.
        what: String,
        /// How long the helper waited.
        timeout: Duration,
        /// The state at the deadline, to make the failure readable.
        last_seen: String,
    },
}
