//! Pure job planning: from a [`runnel_types::JobSpec`] and the runner's [`PlanOptions`] to a
//! [`JobPlan`] holding everything a run needs — the header lines, the resolved variables, the
//! feature flags and job settings, the directories, the timeouts and the ordered stages, each
//! with the complete bash/sh script to feed the executor's shell on stdin.
//!
//! The crate does no I/O: no filesystem, no environment, no clock, no processes. Host facts
//! (hostname, builds dir, slot ids, CA chain) come in through [`PlanOptions`]; the daemon fills
//! it from `config.toml`. Running the stages, streaming their output and masking the trace
//! belong to the executor and trace crates; the cache and artifact stages only call the
//! runner's helper commands, which do the transfers.
//!
//! ```
//! use runnel_job::{JobOutcome, JobStatus, PlanOptions, StageWhen, plan};
//! use runnel_types::{JobSpec, Step};
//!
//! let job = JobSpec {
//!     steps: vec![Step { name: "script".into(), script: vec!["make test".into()], ..Step::default() }],
//!     ..JobSpec::default()
//! };
//! let opts = PlanOptions {
//!     builds_dir: "/home/runner/builds".into(),
//!     cache_dir: "/home/runner/cache".into(),
//!     ..PlanOptions::default()
//! };
//! let plan = plan(&job, &opts)?;
//! // The engine prints `plan.header` and `plan.warnings`, masks `plan.masked_values`, then:
//! let status = JobStatus::Success; // updated as stages fail, time out or get canceled
//! for stage in &plan.stages {
//!     let runs = match stage.when {
//!         StageWhen::Always => true,
//!         StageWhen::OnSuccess => status == JobStatus::Success,
//!         StageWhen::OnFailure => status != JobStatus::Success,
//!     };
//!     if runs {
//!         let script: &str = stage.script(status); // feed to `bash -l` on stdin
//!         assert!(script.starts_with("#!/usr/bin/env bash"));
//!     }
//! }
//! let last = JobOutcome::Success.final_status(opts.executor);
//! assert_eq!(last.trace_line, "Job succeeded");
//! # Ok::<(), runnel_job::PlanError>(())
//! ```

mod dirs;
mod duration;
mod escape;
mod features;
mod git;
mod options;
mod outcome;
mod plan;
mod remote_cache;
mod script;
mod settings;
mod stages;
mod unsupported;
mod variables;

pub use dirs::{Directories, project_slug};
pub use duration::{DurationError, format_go_duration, parse_go_duration};
pub use escape::{ansi_c as shell_escape, double_quote, posix as posix_shell_escape};
pub use features::{FEATURE_FLAGS, FeatureFlags, is_feature_flag};
pub use options::{ExecutorKind, PlanOptions, Shell};
pub use outcome::{FinalStatus, JobOutcome, preparing_executor_message, timeout_message};
pub use plan::{
    DEFAULT_AFTER_SCRIPT_TIMEOUT, DEFAULT_JOB_TIMEOUT, JobPlan, PlanError, Timeouts, plan,
};
pub use remote_cache::{CACHE_HEAD_URL_ENV, CACHE_URL_ENV, CacheUrls, RemoteCache};
pub use settings::{GitStrategy, JobSettings, SubmoduleStrategy, debug_trace_enabled};
pub use stages::{JobStatus, PlannedStage, StageKind, StageWhen, TimeoutKind, stage_description};
pub use unsupported::{UNSUPPORTED_EXIT_CODE, unsupported_features};
pub use variables::{JobVariables, expand};
