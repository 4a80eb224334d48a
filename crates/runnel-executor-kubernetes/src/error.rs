//! The errors of the Kubernetes executor and the failure reasons they map to.

use runnel_executor::ExecutorError;
use runnel_types::FailureReason;

/// Why the Kubernetes executor could not connect, prepare, run or clean up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    /// The runner uses the kubernetes executor without a `[runners.kubernetes]` section.
    #[error("the kubernetes executor needs a [runners.kubernetes] section in config.toml")]
    MissingSection,

    /// Keys that Runnel does not act on.
    #[error(
        "[runners.kubernetes] sets keys Runnel's kubernetes executor does not implement yet (refused rather than ignored): {}",
        keys.join(", ")
    )]
    UnsupportedKeys {
        /// The keys, as written.
        keys: Vec<String>,
    },

    /// The section does not have the expected shape.
    #[error("invalid [runners.kubernetes] section: {message}")]
    InvalidSection {
        /// What the parser said.
        message: String,
    },

    /// A value that cannot be used.
    #[error("invalid `{key}` in [runners.kubernetes]: {reason}")]
    InvalidOption {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The job names something the executor cannot honour.
    #[error("{0}")]
    Unsupported(String),

    /// A job variable overwrites a setting in a way the configuration does not allow.
    #[error("{what}: {message}")]
    Overwrite {
        /// The setting and what was checked (`invalid build limits specified`, …).
        what: String,
        /// Why it was refused.
        message: String,
    },

    /// The job asks for an image, service or pull policy the configuration does not allow.
    #[error("{0}")]
    NotAllowed(String),

    /// Neither the job nor the configuration names a build image.
    #[error(
        "no image to run the job in: the job has no `image:` and [runners.kubernetes] has no `image`"
    )]
    NoImage,

    /// The client configuration (kubeconfig, in-cluster, `host`) could not be loaded.
    #[error("cannot configure the Kubernetes client ({what})")]
    Config {
        /// Where the configuration came from.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An API call failed.
    #[error("Kubernetes API call failed: {operation} {object}")]
    Api {
        /// What was being done.
        operation: &'static str,
        /// On what (pod name, namespace).
        object: String,
        /// The client's error (with the API server's Status message).
        #[source]
        source: Box<kube::Error>,
    },

    /// The API server refused to create the pod (a `ResourceQuota` or `LimitRange` exceeded,
    /// a policy admission denied it): what it said, reason and message.
    #[error("the API server refused to create pod {pod}: {message} ({reason})")]
    PodRefused {
        /// `namespace/name`.
        pod: String,
        /// The `Status` reason (`Forbidden`, …).
        reason: String,
        /// The `Status` message (`pods "…" is forbidden: exceeded quota: …`).
        message: String,
    },

    /// A container image could not be pulled.
    #[error("image pull failed for container {container} ({image}): {message}")]
    ImagePull {
        /// The container.
        container: String,
        /// The image.
        image: String,
        /// What Kubernetes said.
        message: String,
    },

    /// The pod's containers are misconfigured (invalid image name, config error).
    #[error("pod {pod} cannot start: {message}")]
    PodConfiguration {
        /// `namespace/name`.
        pod: String,
        /// What Kubernetes said.
        message: String,
    },

    /// The pod did not become ready within `poll_timeout`.
    #[error("timed out waiting for pod {pod} to start (last phase: {phase}){detail}")]
    PodStartTimeout {
        /// `namespace/name`.
        pod: String,
        /// The last phase seen.
        phase: String,
        /// Scheduling conditions, formatted for the log.
        detail: String,
    },

    /// The pod failed or vanished under a running job.
    #[error("pod {pod} failed: {message}")]
    PodFailed {
        /// `namespace/name`.
        pod: String,
        /// The reason and message Kubernetes gave.
        message: String,
    },

    /// The API server stayed unreachable for longer than `poll_timeout` under a running job.
    #[error(
        "the Kubernetes API server {server} has been unreachable for more than {seconds}s (poll_timeout) while the job's pod {pod} runs: {message}"
    )]
    ApiServerUnreachable {
        /// Its URL.
        server: String,
        /// `namespace/name`.
        pod: String,
        /// `poll_timeout`, in seconds.
        seconds: u64,
        /// The last error.
        message: String,
    },

    /// An exec session broke without an exit status.
    #[error("the exec session of stage {stage} in container {container} broke: {message}")]
    Exec {
        /// The stage.
        stage: String,
        /// The container.
        container: &'static str,
        /// What happened.
        message: String,
    },

    /// Attach mode: the job's log could not be read from the pod.
    #[error("cannot follow the job's log in pod {pod}: {message}")]
    LogStream {
        /// `namespace/name`.
        pod: String,
        /// What went wrong.
        message: String,
    },
}

impl KubernetesError {
    /// The failure reason a job ending with this error reports.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            KubernetesError::ImagePull { .. } => FailureReason::ImagePullFailure,
            KubernetesError::MissingSection
            | KubernetesError::UnsupportedKeys { .. }
            | KubernetesError::InvalidSection { .. }
            | KubernetesError::InvalidOption { .. }
            | KubernetesError::Unsupported(_)
            | KubernetesError::Overwrite { .. }
            | KubernetesError::NotAllowed(_)
            | KubernetesError::NoImage
            | KubernetesError::PodConfiguration { .. } => FailureReason::RunnerConfigurationError,
            _ => FailureReason::RunnerSystemFailure,
        }
    }

    pub(crate) fn api(
        operation: &'static str,
        object: impl Into<String>,
        source: kube::Error,
    ) -> Self {
        KubernetesError::Api {
            operation,
            object: object.into(),
            source: Box::new(source),
        }
    }
}

impl From<KubernetesError> for ExecutorError {
    fn from(error: KubernetesError) -> Self {
        let reason = match error.failure_reason() {
            FailureReason::RunnerSystemFailure => None,
            reason => Some(reason),
        };
        ExecutorError::Backend {
            executor: "kubernetes",
            reason,
            source: Box::new(error),
        }
    }
}
