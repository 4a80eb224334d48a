//! A strict fake GitLab coordinator for tests and benchmarks.
//!
//! [`FakeGitlab`] serves the runner side of GitLab's API (`/api/v4/runners…`, `/api/v4/jobs…`)
//! on a loopback port and is as strict as GitLab about what it accepts: tokens in header and
//! body, `Content-Type`, `Content-Range` offsets, the final trace checksum. Tests queue jobs with
//! [`JobBuilder`], then assert on what the fake saw ([`JobView`], [`RequestRecord`]) and inject
//! faults. [`FakeGitlab::create_repo`] adds git repositories served over smart HTTP (through
//! `git http-backend`, with GitLab's job-token basic auth and LFS downloads), filled with
//! [`RepoHandle`] and [`CommitBuilder`]; [`JobBuilder::repo`] points a job at one. The same
//! server runs as the `runnel-fake-gitlab` binary, driven through a small JSON control API
//! under `/__fake/`.
//!
//! It is an independent implementation of the wire format: it deliberately shares no code with
//! `runnel-api`, so that a misunderstanding of the protocol does not cancel out in tests. It
//! keeps everything in memory (git repositories in a temp dir) and does not model projects, pipelines or permissions beyond the
//! tokens.
//!
//! ```
//! use std::time::Duration;
//!
//! use runnel_fake_gitlab::{FakeConfig, FakeGitlab, JobBuilder, RemoteStatus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runnel_fake_gitlab::FakeError> {
//! let fake = FakeGitlab::start(FakeConfig::default()).await?;
//! let runner_token = fake.create_runner_token(); // put into config.toml with fake.url()
//! let job = fake.enqueue(JobBuilder::new("build").script(["echo hi"]));
//! // ... run the runner under test against fake.url() ...
//! # fake.abort_job(job)?;
//! let view = fake
//!     .wait_for_job_state(job, |j| j.is_finished(), Duration::from_secs(30))
//!     .await?;
//! assert_eq!(view.status, RemoteStatus::Canceled);
//! # let _ = runner_token;
//! fake.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod builder;
mod config;
mod control;
mod error;
mod fake;
mod faults;
mod git;
mod routes;
mod server;
mod state;
mod view;

pub use builder::{
    GITLAB_FAILURE_REASONS, GitStrategy, JobBuilder, JobDefinition, JobIdentity, PayloadVariable,
};
pub use config::{FakeConfig, FakeTls};
pub use error::FakeError;
pub use fake::{CreatedRunner, FakeGitlab};
pub use faults::{Endpoint, EndpointFilter};
pub use git::{CommitBuilder, RepoHandle};
pub use state::{ArtifactUploadMode, RunnerSettings};
pub use view::{
    ArtifactRecord, JobProgress, JobView, PatchRecord, RemoteStatus, RequestRecord, RunnerKind,
    RunnerView, StatusChange, UpdateRecord,
};
