//! Domain types shared by every Runnel crate.
//!
//! This crate holds the vocabulary of the runner: redacting secret types ([`Secret`],
//! [`RunnerToken`], [`JobToken`]), the job model the coordinator hands us ([`JobSpec`] and its
//! parts), and the words used to report how a job ended ([`JobState`], [`FailureReason`]).
//!
//! It deliberately knows nothing about the wire format (no serde): `runnel-api` converts the
//! coordinator's JSON into these types, and everything downstream (planning, executors, the
//! daemon) works on them. It does no I/O.

mod expand;
mod job;
mod secret;
mod token;

pub use expand::expand;
pub use job::{
    ArtifactFormat, ArtifactSpec, CachePolicy, CacheSpec, Credential, Dependency, FailureReason,
    GitInfo, Hook, ImagePort, ImageSpec, JobFeatures, JobId, JobInfo, JobSpec, JobState, RefType,
    SecretRequest, Step, Variable, When,
};
pub use secret::Secret;
pub use token::{DEFAULT_TOKEN_PREFIXES, JobToken, PAT_PREFIX, RunnerToken, short_token};

/// The longest duration Runnel takes from a job payload, `.gitlab-ci.yml` or config.toml (one
/// year; GitLab's own job timeout limit is a month). Longer values are clamped to it, so any
/// deadline computed from such a value (`Instant::now() + d`) stays representable.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// `duration`, clamped to [`MAX_DURATION`].
pub fn clamp_duration(duration: std::time::Duration) -> std::time::Duration {
    duration.min(MAX_DURATION)
}

/// `raw` without a `user:password@` part (for URLs shown in pages, labels and logs).
pub fn url_without_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else {
        return raw.to_owned();
    };
    let (head, rest) = raw.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!(
            "{head}{}{tail}",
            authority.get(at + 1..).unwrap_or_default()
        ),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_clamp() {
        assert_eq!(clamp_duration(std::time::Duration::MAX), MAX_DURATION);
        assert_eq!(
            clamp_duration(std::time::Duration::from_secs(5)),
            std::time::Duration::from_secs(5)
        );
    }

    /// Review L4: `/debug/jobs/list` and the Docker `job.url` label showed the password.
    #[test]
    fn userinfo_is_removed_from_urls() {
        assert_eq!(
            url_without_userinfo("http://deploy:s3cretpass@127.0.0.1:50835/x?y"),
            "http://127.0.0.1:50835/x?y"
        );
        assert_eq!(url_without_userinfo("https://host/a@b"), "https://host/a@b");
        assert_eq!(url_without_userinfo("not a url"), "not a url");
    }
}
