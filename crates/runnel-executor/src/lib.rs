//! The executor interface, process supervision, and the shell executor.
//!
//! An executor runs the stages of a job somewhere: on the host (shell), in containers (docker),
//! in a pod (kubernetes). The job runner drives every executor the same way:
//!
//! ```text
//! Provider::create()           once per job             -> Box<dyn Executor>
//! Executor::configure(ctx)     once, before planning    -> PlanOverrides (custom, ssh)
//! Executor::prepare(ctx)       once                     directories, containers, …
//! Executor::banner()           once, into the job log   "Using Shell (bash) executor..."
//! Executor::run(stage, …)      once per stage           -> StageExit (Exited / Signaled / …)
//! Executor::cleanup()          always, exactly once
//! ```
//!
//! - The interface: the [`Executor`] and [`Provider`] traits, [`StageCommand`],
//!   [`StageExit`], the [`OutputSink`] that receives raw output bytes, and [`ExecutorInfo`] with
//!   the [`ExecutorFeatures`] reported to GitLab.
//! - [`process`]: the one place that spawns job processes. Each runs in its own process group
//!   that is killed and reaped on drop, on cancellation (`SIGTERM`, then `SIGKILL`) and, for
//!   leftover background processes, when the main process exits.
//! - [`contain`]: every process of a job carries a tag in its environment, so the job's
//!   processes can be found and killed after they left its group, or after a runner crash.
//! - [`shell`]: the shell executor (`bash -l` or `sh -l` with the script on stdin, optionally
//!   through `su` as another user).
//!
//! A non-zero exit of a script is a [`StageExit`], not an error; an [`ExecutorError`] means
//! the stage could not be run (a system failure).
//!
//! This crate does not generate scripts, mask or format the job log, talk to GitLab, or decide
//! which stage runs when: those are `runnel-job`, `runnel-trace`, `runnel-api` and
//! `runnel-service`.

pub mod contain;
mod error;
mod executor;
pub mod process;
pub mod shell;

pub use error::ExecutorError;
pub use executor::{
    AfterReport, BoxFuture, ConfigureContext, EarlyStart, Executor, ExecutorFeatures, ExecutorInfo,
    JobResource, OutputSink, OutputStream, PlanOverrides, PrepareContext, Provider, ResourceUsage,
    Shell, StageCommand, StageExit, StageKind,
};
pub use process::KillPolicy;
pub use shell::{SHELL_EXECUTOR_INFO, ShellExecutor, ShellOptions, ShellProvider};
