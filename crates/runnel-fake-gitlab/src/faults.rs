//! Fault injection: canned error statuses and dropped connections, per endpoint or for all.
//!
//! Faults are checked before routing, so an injected answer never touches job or runner state.
//! They apply to the GitLab API endpoints and to git smart HTTP, never to the `/__fake/`
//! control API or to the fake object storage.

use http::Method;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A GitLab API endpoint the runner talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /api/v4/runners`
    Register,
    /// `POST /api/v4/runners/verify`
    Verify,
    /// `DELETE /api/v4/runners`
    Unregister,
    /// `DELETE /api/v4/runners/managers`
    UnregisterManager,
    /// `POST /api/v4/runners/reset_authentication_token`
    ResetToken,
    /// `POST /api/v4/runners/:id/reset_authentication_token`
    ResetTokenWithPat,
    /// `POST /api/v4/jobs/request`
    RequestJob,
    /// `PUT /api/v4/jobs/:id`
    UpdateJob,
    /// `PATCH /api/v4/jobs/:id/trace`
    PatchTrace,
    /// `POST /api/v4/jobs/:id/artifacts`
    UploadArtifacts,
    /// `GET /api/v4/jobs/:id/artifacts`
    DownloadArtifacts,
    /// Any git smart-HTTP request to a repository (`/<namespace>/<project>.git/…`).
    GitHttp,
}

impl Endpoint {
    /// Which endpoint a request addresses, from its method and path.
    pub fn classify(method: &Method, path: &str) -> Option<Self> {
        let Some(rest) = path.strip_prefix("/api/v4/") else {
            return path.contains(".git/").then_some(Self::GitHttp);
        };
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let endpoint = match (method.as_str(), segments.as_slice()) {
            ("POST", ["runners"]) => Self::Register,
            ("POST", ["runners", "verify"]) => Self::Verify,
            ("DELETE", ["runners"]) => Self::Unregister,
            ("DELETE", ["runners", "managers"]) => Self::UnregisterManager,
            ("POST", ["runners", "reset_authentication_token"]) => Self::ResetToken,
            ("POST", ["runners", _, "reset_authentication_token"]) => Self::ResetTokenWithPat,
            ("POST", ["jobs", "request"]) => Self::RequestJob,
            ("PUT", ["jobs", _]) => Self::UpdateJob,
            ("PATCH", ["jobs", _, "trace"]) => Self::PatchTrace,
            ("POST", ["jobs", _, "artifacts"]) => Self::UploadArtifacts,
            ("GET", ["jobs", _, "artifacts"]) => Self::DownloadArtifacts,
            _ => return None,
        };
        Some(endpoint)
    }
}

/// Which endpoints a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointFilter {
    /// Every GitLab API endpoint and git smart HTTP.
    Any,
    /// One endpoint.
    Only(Endpoint),
}

impl EndpointFilter {
    fn matches(self, endpoint: Endpoint) -> bool {
        match self {
            Self::Any => true,
            Self::Only(only) => only == endpoint,
        }
    }
}

impl From<Endpoint> for EndpointFilter {
    fn from(endpoint: Endpoint) -> Self {
        Self::Only(endpoint)
    }
}

/// What an active fault does to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultAction {
    /// Answer with this status and a JSON error body.
    Respond(u16),
    /// Close the connection without answering.
    Drop,
    /// Handle the request (its effects happen), then close the connection without answering:
    /// the client cannot tell whether it was applied.
    LoseAnswer,
}

/// How long a fault stays active.
#[derive(Clone, Copy, Debug)]
enum Lifetime {
    Requests(u32),
    Until(Instant),
}

#[derive(Clone, Debug)]
struct Fault {
    filter: EndpointFilter,
    action: FaultAction,
    lifetime: Lifetime,
}

/// The active faults, first added first checked.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: Vec<Fault>,
}

impl Faults {
    pub(crate) fn for_requests(&mut self, filter: EndpointFilter, count: u32, action: FaultAction) {
        if count > 0 {
            self.active.push(Fault {
                filter,
                action,
                lifetime: Lifetime::Requests(count),
            });
        }
    }

    pub(crate) fn until(&mut self, filter: EndpointFilter, until: Instant, action: FaultAction) {
        self.active.push(Fault {
            filter,
            action,
            lifetime: Lifetime::Until(until),
        });
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }

    /// The fault that applies to a request to `endpoint` now, consuming one use of it.
    pub(crate) fn take(&mut self, endpoint: Endpoint, now: Instant) -> Option<FaultAction> {
        self.active.retain(|fault| match fault.lifetime {
            Lifetime::Requests(left) => left > 0,
            Lifetime::Until(until) => now < until,
        });
        let fault = self
            .active
            .iter_mut()
            .find(|fault| fault.filter.matches(endpoint))?;
        if let Lifetime::Requests(left) = &mut fault.lifetime {
            *left -= 1;
        }
        Some(fault.action)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn classifies_every_endpoint() {
        let cases = [
            (Method::POST, "/api/v4/runners", Some(Endpoint::Register)),
            (
                Method::POST,
                "/api/v4/runners/verify",
                Some(Endpoint::Verify),
            ),
            (
                Method::DELETE,
                "/api/v4/runners",
                Some(Endpoint::Unregister),
            ),
            (
                Method::DELETE,
                "/api/v4/runners/managers",
                Some(Endpoint::UnregisterManager),
            ),
            (
                Method::POST,
                "/api/v4/runners/reset_authentication_token",
                Some(Endpoint::ResetToken),
            ),
            (
                Method::POST,
                "/api/v4/runners/7/reset_authentication_token",
                Some(Endpoint::ResetTokenWithPat),
            ),
            (
                Method::POST,
                "/api/v4/jobs/request",
                Some(Endpoint::RequestJob),
            ),
            (Method::PUT, "/api/v4/jobs/12", Some(Endpoint::UpdateJob)),
            (
                Method::PATCH,
                "/api/v4/jobs/12/trace",
                Some(Endpoint::PatchTrace),
            ),
            (
                Method::POST,
                "/api/v4/jobs/12/artifacts",
                Some(Endpoint::UploadArtifacts),
            ),
            (
                Method::GET,
                "/api/v4/jobs/12/artifacts",
                Some(Endpoint::DownloadArtifacts),
            ),
            (Method::GET, "/api/v4/jobs/12", None),
            (Method::GET, "/__fake/requests", None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                Endpoint::classify(&method, path),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn counted_faults_run_out_and_filters_apply() {
        let now = Instant::now();
        let mut faults = Faults::default();
        faults.for_requests(Endpoint::PatchTrace.into(), 2, FaultAction::Respond(502));
        assert_eq!(faults.take(Endpoint::UpdateJob, now), None);
        assert_eq!(
            faults.take(Endpoint::PatchTrace, now),
            Some(FaultAction::Respond(502))
        );
        assert_eq!(
            faults.take(Endpoint::PatchTrace, now),
            Some(FaultAction::Respond(502))
        );
        assert_eq!(faults.take(Endpoint::PatchTrace, now), None);
    }

    #[test]
    fn timed_faults_expire() {
        let now = Instant::now();
        let mut faults = Faults::default();
        faults.until(
            EndpointFilter::Any,
            now + Duration::from_secs(5),
            FaultAction::Drop,
        );
        assert_eq!(
            faults.take(Endpoint::RequestJob, now),
            Some(FaultAction::Drop)
        );
        assert_eq!(
            faults.take(Endpoint::RequestJob, now + Duration::from_secs(5)),
            None
        );
    }
}
