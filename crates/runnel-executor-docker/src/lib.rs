//! The Docker executor: jobs run in containers on a Docker daemon, the official runner's way.
//!
//! ```text
//! DockerProvider::from_runner(&runner, id)  once per [[runners]] entry (no request yet)
//!   create()                                one DockerExecutor per job, in a concurrency slot
//!   prepare(ctx)   images (pull policy, allowed_*), per-job network, /builds and /cache
//!                  volumes, services (+ wait), helper "predefined" and "build" containers
//!   run(stage)     attach + (re)start the stage's container, script on stdin, output streamed
//!   cleanup()      containers, temporary volumes and the network removed, always
//! ```
//!
//! - [`executor`]: [`DockerProvider`], [`DockerExecutor`], [`DOCKER_EXECUTOR_INFO`].
//! - [`options`]: `[runners.docker]` parsed and checked ([`DockerOptions`]).
//! - [`naming`]: container, volume and network names and `com.gitlab.gitlab-runner.*` labels.
//! - [`image`]: allowed images, pull policies, and [`build_helper_image`], which builds the
//!   helper image locally from a base image and the runner binary.
//! - [`client`]: connecting to the daemon (`host`, `DOCKER_HOST`, TLS).
//! - [`auth`]: registry credentials for pulls (`DOCKER_AUTH_CONFIG`, job credentials).
//!
//! Predefined stages run in the helper image, where the runner binary is
//! [`HELPER_RUNNER_COMMAND`]; the job planner must use `/builds` and `/cache` (or the
//! configured `builds_dir`/`cache_dir`) as seen inside the containers.
//!
//! # The helper image
//!
//! Runnel does not pull the official helper image: it builds its own from any base image and
//! the running `runnel` binary ([`build_helper_image_from_current_exe`], behind
//! `runnel docker build-helper-image --from <base>`). The generated build context is
//!
//! ```text
//! Dockerfile                 FROM <base> / COPY rootfs/ / / ENTRYPOINT []
//! rootfs/usr/bin/runnel      the binary
//! rootfs/usr/bin/gitlab-runner-helper -> runnel
//! ```
//!
//! so the base provides the shell (`/bin/sh` at least), `git` and anything else the
//! predefined stages call, and its C library must suit the binary (a glibc build of runnel
//! needs a glibc base such as `debian:bookworm-slim` with `git` installed). The image is tagged
//! [`DEFAULT_HELPER_IMAGE`] unless told otherwise, which is also what jobs use when
//! `[runners.docker] helper_image` is unset. It is used when present locally and pulled
//! otherwise.
//!
//! This crate does not generate scripts, format the job log or talk to GitLab.

pub mod auth;
pub mod client;
mod error;
pub mod executor;
pub mod image;
pub mod naming;
pub mod options;
mod services;
mod stage;

pub use error::DockerError;
pub use executor::{
    DEFAULT_HELPER_IMAGE, DOCKER_EXECUTOR_INFO, DockerExecutor, DockerProvider, DockerSettings,
    detect_shell_command,
};
pub use image::{
    HELPER_RUNNER_COMMAND, build_helper_image, build_helper_image_from_current_exe, build_image,
};
pub use options::DockerOptions;
pub use stage::STOP_GRACE;
