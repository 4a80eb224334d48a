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
