//! Settings of a fake coordinator: listen address, long-poll hold, advertised intervals.
//!
//! Only plain values live here; behaviour that tests change while the fake runs (faults,
//! artifact modes) is set through [`crate::FakeGitlab`] methods instead.

use std::net::SocketAddr;
use std::time::Duration;

/// How a [`crate::FakeGitlab`] starts.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How long `POST /jobs/request` is held when the runner's `last_update` is current
    /// (Workhorse's `apiCiLongPollingDuration`, 50 s there).
    pub long_poll: Duration,
    /// Seconds advertised in `X-GitLab-Trace-Update-Interval`.
    pub trace_update_interval_secs: u64,
    /// Lifetime of runner tokens; `None` means tokens never expire (`token_expires_at: null`).
    pub token_lifetime: Option<Duration>,
    /// Registration tokens accepted by the legacy `POST /runners` from the start.
    pub registration_tokens: Vec<String>,
    /// Accepts the traffic of minimal third-party runner libraries that GitLab accepts but the
    /// official runner never sends (off by default, so tests stay strict about Runnel):
    /// `POST /jobs/request` without the `RUNNER-TOKEN` header (the body `token` authenticates)
    /// or without `system_id` (older runners); `PATCH /jobs/:id/trace` whose `Content-Range`
    /// end does not match the body length (only the start offset is used, as GitLab does);
    /// and `PUT /jobs/:id` without the `JOB-TOKEN` header (the body `token` authenticates),
    /// without `info`, and final updates without `output` (GitLab skips the trace checksum for
    /// runners that do not send one). The benchmark's peer runners need it.
    pub lenient_clients: bool,
    /// Serve HTTPS with this certificate instead of plain HTTP (the URL becomes
    /// `https://…`), for tests of private-CA setups.
    pub tls: Option<FakeTls>,
}

/// A server certificate chain and key, both PEM.
#[derive(Clone)]
pub struct FakeTls {
    /// The server certificate first, then any intermediates.
    pub cert_chain_pem: String,
    /// The private key of the server certificate.
    pub key_pem: String,
}

impl std::fmt::Debug for FakeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTls").finish_non_exhaustive()
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            long_poll: Duration::from_secs(50),
            trace_update_interval_secs: 3,
            token_lifetime: None,
            registration_tokens: Vec::new(),
            lenient_clients: false,
            tls: None,
        }
    }
}
