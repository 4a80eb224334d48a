//! Why a local pipeline run could not start or went wrong outside the jobs themselves.

use std::path::PathBuf;

/// An error of `runnel exec` (not a failing job: those are results).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The pipeline definition is invalid (the message names file, line and column).
    #[error(transparent)]
    Pipeline(#[from] runnel_pipeline::PipelineError),
    /// A file or directory under `.runnel/` or the project could not be used.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A git command on the project or the snapshot repository failed.
    #[error("git {args} failed in {}: {message}", dir.display())]
    Git {
        args: String,
        dir: PathBuf,
        message: String,
    },
    /// A job named on the command line is not in the pipeline.
    #[error("no job named {name:?} in the pipeline (jobs: {known})")]
    UnknownJob { name: String, known: String },
    /// A bad option value (`--variable`, `--variables-file`, `--executor`, …).
    #[error("{0}")]
    Usage(String),
    /// The Docker engine is needed but cannot be used.
    #[error("docker: {0}")]
    Docker(String),
    /// The in-process coordinator could not listen.
    #[error("cannot listen on {address} for the local coordinator")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The runner daemon stopped with an error.
    #[error("runner daemon: {0}")]
    Service(#[from] runnel_service::ServiceError),
    /// The generated runner configuration was refused (a bug, or a bad `--helper-image`).
    #[error("runner configuration: {0}")]
    Config(String),
}

impl ExecError {
    /// Whether the error comes from the user's input (exit code 2) rather than the environment.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Pipeline(_) | Self::UnknownJob { .. } | Self::Usage(_)
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
