//! The errors of the Docker executor.
//!
//! Every variant names the operation and its object (image, container, volume, network); the
//! Docker daemon's own message is only in `source`. [`DockerError::failure_reason`] tells the
//! job runner which failure reason to report. This module does not print or log anything.

use bollard::errors::Error as BollardError;
use runnel_executor::ExecutorError;
use runnel_types::FailureReason;

/// Why the Docker executor could not connect, prepare, run or build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The client for the daemon could not be set up (bad `host`, missing TLS files).
    #[error("failed to set up the docker client for `{host}`")]
    Connect {
        /// The daemon address, `DOCKER_HOST` or the default socket.
        host: String,
        /// The cause.
        #[source]
        source: Box<BollardError>,
    },

    /// The daemon did not answer.
    #[error("the docker daemon at `{host}` is not reachable")]
    Unreachable {
        /// The daemon address.
        host: String,
        /// The cause.
        #[source]
        source: Box<BollardError>,
    },

    /// The runner uses the docker executor but has no `[runners.docker]` section.
    #[error("runner `{runner}` uses the docker executor but has no [runners.docker] section")]
    MissingSection {
        /// The runner name.
        runner: String,
    },

    /// A `[runners.docker]` value could not be used.
    #[error("invalid `{key}` value `{value}` in [runners.docker]: {reason}")]
    InvalidOption {
        /// The config key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Neither the job nor `[runners.docker] image` names an image.
    #[error(
        "no image to run the job in: the job has no `image:` and [runners.docker] has no `image`"
    )]
    NoImage,

    /// The job asks for an image or service that `allowed_images`/`allowed_services` forbid.
    #[error("the {what} `{image}` is not allowed by `allowed_{what}s` ({allowed})")]
    NotAllowed {
        /// `image` or `service`.
        what: &'static str,
        /// The image name.
        image: String,
        /// The allowed patterns, comma-separated.
        allowed: String,
    },

    /// The job asks for a pull policy the runner does not allow.
    #[error("the pull policy `{policy}` of image `{image}` is not allowed (allowed: {allowed})")]
    PullPolicyNotAllowed {
        /// The image.
        image: String,
        /// The requested policy.
        policy: String,
        /// The allowed policies, comma-separated.
        allowed: String,
    },

    /// No pull policy could provide the image.
    #[error("failed to pull image `{image}` with policies [{policies}]: {reason}")]
    ImagePull {
        /// The image.
        image: String,
        /// The policies that were tried.
        policies: String,
        /// What the last policy reported.
        reason: String,
        /// The daemon's error of the last attempt, if any.
        #[source]
        source: Option<Box<BollardError>>,
    },

    /// A Docker API call failed.
    #[error("failed to {operation} `{object}`")]
    Api {
        /// The operation (`create container`, `remove volume`, …).
        operation: &'static str,
        /// The container, volume, network or image it was about.
        object: String,
        /// The cause.
        #[source]
        source: Box<BollardError>,
    },

    /// A stage could not be written to a container's stdin.
    #[error("failed to write the `{stage}` script to container `{container}`")]
    WriteStdin {
        /// The stage.
        stage: String,
        /// The container name.
        container: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A file for an image build context could not be read.
    #[error("failed to read `{path}` for the helper image build context")]
    BuildContext {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// `docker build` reported an error.
    #[error("failed to build image `{tag}`: {message}")]
    Build {
        /// The tag being built.
        tag: String,
        /// The daemon's build error message.
        message: String,
    },

    /// A name the job controls (a service alias) cannot be used.
    #[error("the {what} `{value}` is invalid: {reason}")]
    InvalidName {
        /// What the name is (`service alias`).
        what: &'static str,
        /// The name as the job gave it (after variable expansion).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The host files for Runnel's own helper image could not be collected.
    #[error("cannot assemble Runnel's helper image from this host: {message}")]
    HelperAssembly {
        /// What is missing or failed (names the file or tool).
        message: String,
    },

    /// The runner binary does not run in a helper image (wrong C library, missing loader).
    #[error(
        "the runnel binary cannot run in helper image `{image}` (`{command} --version` {outcome}); \
         its C library or loader does not suit this binary: run `runnel docker build-helper-image` \
         without `--from` for a self-contained helper image, or use a base with the same C library"
    )]
    HelperNotRunnable {
        /// The image (tag) that was tried.
        image: String,
        /// The command tried.
        command: String,
        /// What happened (exit code and output).
        outcome: String,
    },

    /// The configured `helper_image` is not a Runnel helper but the job needs one.
    #[error(
        "helper_image `{image}` is not a Runnel helper image (it lacks the label \
         com.gitlab.gitlab-runner.helper=runnel), and this job needs Runnel's helper for {needs}: \
         remove `helper_image` from [runners.docker] to use the helper Runnel builds itself, or \
         build one with `runnel docker build-helper-image --from {image} --tag <tag>`"
    )]
    NotARunnelHelper {
        /// The configured image.
        image: String,
        /// What the job needs the helper for (`artifacts`, `caches`, …).
        needs: String,
    },

    /// A configured helper image would have to be pulled by a name that does not say which
    /// registry it comes from.
    #[error(
        "helper_image `{image}` is not present locally and Runnel does not pull a helper image by \
         an unqualified name (it would come from Docker Hub): give a fully qualified name \
         (registry.example.com/group/helper:tag), build it locally with \
         `runnel docker build-helper-image`, or remove `helper_image` to use Runnel's own helper"
    )]
    UnqualifiedHelperPull {
        /// The configured image.
        image: String,
    },

    /// A `[runners.docker]` setting needs a newer Engine API than the daemon speaks.
    #[error(
        "`{feature}` in [runners.docker] needs Docker Engine API {needed} or newer; this engine speaks {engine}"
    )]
    EngineTooOld {
        /// The setting.
        feature: &'static str,
        /// The oldest API version that has it.
        needed: &'static str,
        /// The negotiated API version.
        engine: String,
    },

    /// `run` was called before a successful `prepare`.
    #[error("stage `{stage}` cannot run: the job's containers were not prepared")]
    NotPrepared {
        /// The stage.
        stage: String,
    },
}

impl DockerError {
    /// The failure reason a job failing with this error reports.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            DockerError::ImagePull { .. } => FailureReason::ImagePullFailure,
            DockerError::InvalidOption { .. }
            | DockerError::MissingSection { .. }
            | DockerError::NoImage
            | DockerError::NotAllowed { .. }
            | DockerError::PullPolicyNotAllowed { .. }
            | DockerError::NotARunnelHelper { .. }
            | DockerError::UnqualifiedHelperPull { .. }
            | DockerError::HelperNotRunnable { .. }
            | DockerError::EngineTooOld { .. } => FailureReason::RunnerConfigurationError,
            DockerError::InvalidName { .. } => FailureReason::ScriptFailure,
            _ => FailureReason::RunnerSystemFailure,
        }
    }

    /// Whether the engine refused to create a container because its image is not there.
    pub(crate) fn is_missing_image(&self) -> bool {
        matches!(
            self,
            DockerError::Api { operation: "create container", source, .. }
                if matches!(
                    source.as_ref(),
                    BollardError::DockerResponseServerError { status_code: 404, message }
                        if message.to_ascii_lowercase().contains("no such image")
                )
        )
    }

    pub(crate) fn api(
        operation: &'static str,
        object: impl Into<String>,
        source: BollardError,
    ) -> Self {
        DockerError::Api {
            operation,
            object: object.into(),
            source: Box::new(source),
        }
    }
}

impl From<DockerError> for ExecutorError {
    fn from(error: DockerError) -> Self {
        let reason = match error.failure_reason() {
            FailureReason::RunnerSystemFailure => None,
            reason => Some(reason),
        };
        ExecutorError::Backend {
            executor: "docker",
            reason,
            source: Box::new(error),
        }
    }
}
