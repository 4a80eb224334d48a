//! The Docker executor: jobs run in containers on a Docker daemon, the official runner's way.
//!
//! ```text
//! DockerProvider::from_runner(&runner, id)  once per [[runners]] entry (no request yet)
//!   create()                                one DockerExecutor per job, in a concurrency slot
//!   prepare(ctx)   images (pull policy, allowed_*), per-job network, /builds and /cache
//!                  volumes, services (+ wait), helper "predefined" and "build" containers
//!   run(stage)     the script on the stdin of its container's shell, output streamed
//!   cleanup()      containers, temporary volumes and the network removed, always (with
//!                  cleanup_deferred(), after the job's final state is reported)
//! ```
//!
//! - [`executor`]: [`DockerProvider`], [`DockerExecutor`], [`DOCKER_EXECUTOR_INFO`].
//! - [`options`]: `[runners.docker]` parsed and checked ([`DockerOptions`]).
//! - [`naming`]: container, volume and network names and `com.gitlab.gitlab-runner.*` labels.
//! - [`image`]: allowed images, pull policies, and [`build_helper_image`], which builds the
//!   helper image locally from a base image and the runner binary.
//! - [`helper_image`]: Runnel's own helper image and the checks of a configured one.
//! - [`watchdog`]: the hard stop inside job containers at the timeout plus a grace.
//! - [`client`]: connecting to the daemon (`host`, `DOCKER_HOST`, TLS).
//! - [`auth`]: registry credentials for pulls (`DOCKER_AUTH_CONFIG`, job credentials).
//! - `image_cache`: job image ids kept per provider while the Engine's image events allow.
//! - `resources`: CPU and memory of a job's containers, from their cgroups or stats streams.
//!
//! Predefined stages run in the helper image, where the runner binary is
//! [`HELPER_RUNNER_COMMAND`]; the job planner must use `/builds` and `/cache` (or the
//! configured `builds_dir`/`cache_dir`) as seen inside the containers.
//!
//! # The helper image
//!
//! Runnel does not pull the official helper image. With no `helper_image` configured, it
//! assembles its own on first use, `FROM scratch` with the running binary, the host's git and
//! shell tools and every library they need ([`helper_image`]), tagged per Runnel version and
//! binary, verified by its labels, never pulled; `runnel docker build-helper-image` builds the
//! same image on demand. `--from <base>` instead puts the binary on a base image
//! ([`build_helper_image`]), refusing a base where the binary cannot run. A configured
//! `helper_image` is pulled only by a fully qualified name, and a job that needs Runnel's
//! helper commands fails at start when it is not a Runnel helper.
//!
//! This crate does not generate scripts, format the job log or talk to GitLab.

pub mod auth;
pub mod client;
mod error;
pub mod executor;
pub mod helper_image;
pub mod image;
mod image_cache;
pub mod naming;
pub mod options;
mod resources;
mod services;
mod stage;
pub mod watchdog;

pub use error::DockerError;
pub use executor::{
    DOCKER_EXECUTOR_INFO, DockerExecutor, DockerProvider, DockerSettings, detect_shell_command,
};
pub use image::{
    HELPER_RUNNER_COMMAND, build_helper_image, build_helper_image_from_current_exe, build_image,
};
pub use options::DockerOptions;
pub use stage::STOP_GRACE;
