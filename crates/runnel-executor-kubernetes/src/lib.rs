//! The Kubernetes executor: every job runs in one pod on a cluster, the official runner's way.
//!
//! ```text
//! KubernetesProvider::from_runner(&runner)   once per [[runners]] entry: [runners.kubernetes]
//!                                            checked, unsupported keys refused by name
//!   create()        one KubernetesExecutor per job, in a concurrency slot
//!   prepare(ctx)    client (host keys / KUBECONFIG / in-cluster), pod created (build, helper,
//!                   service containers, init-permissions in attach mode, repo emptyDir, official
//!                   labels and annotations), watched until running (poll_timeout); a pull
//!                   error makes it again with the container's next pull policy, if any
//!   run(stage)      attach (default): script saved in the scripts volume, started through
//!                   the container's stdin, output and exit line from the log file that the
//!                   helper's `read-logs` streams; exec (FF_USE_LEGACY_KUBERNETES_EXECUTION_
//!                   STRATEGY): counted script on stdin, exit code from the Status; pod
//!                   checked while it runs
//!   cleanup()       pod deleted, always
//! ```
//!
//! - [`executor`]: [`KubernetesProvider`], [`KubernetesExecutor`], [`KUBERNETES_EXECUTOR_INFO`].
//! - [`options`]: `[runners.kubernetes]` ([`KubernetesOptions`]).
//! - [`pod`]: the pod spec, names, labels and annotations (pure).
//! - [`spec`]: the nested tables (volumes, security contexts, affinity, DNS, …) and their API
//!   objects; [`overwrites`]: what job variables may change; [`patch`]: `[[pod_spec]]` patches.
//! - [`attach`]: attach mode's volumes, commands and log stream.
//! - [`credentials`]: the job's registry logins as a pull secret.
//!
//! Predefined stages run in the helper image, which must hold the runner binary as
//! [`HELPER_RUNNER_COMMAND`] (the image `runnel docker build-helper-image` builds does); the
//! job planner uses `/builds` and `/cache` as seen inside the containers.

pub mod attach;
pub mod credentials;
mod error;
pub mod executor;
pub mod options;
pub mod overwrites;
pub mod patch;
pub mod pod;
pub mod spec;

pub use error::KubernetesError;
pub use executor::{
    DEFAULT_HELPER_IMAGE, KUBERNETES_EXECUTOR_INFO, KubernetesExecutor, KubernetesProvider,
    KubernetesSettings,
};
pub use options::KubernetesOptions;

/// Where the helper image has the runner binary; what `PlanOptions::runner_command` must be.
pub const HELPER_RUNNER_COMMAND: &str = "/usr/bin/gitlab-runner-helper";
