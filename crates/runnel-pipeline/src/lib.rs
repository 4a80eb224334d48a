//! The `.gitlab-ci.yml` pipeline model behind `runnel exec`.
//!
//! [`load`] reads a CI file through [`SourceFiles`] and resolves it the way GitLab does
//! (YAML anchors and merge keys, `include: local` files and globs, `extends`, `!reference`,
//! `default:`), producing a typed [`Pipeline`]. [`evaluate`] applies `workflow:rules`, `parallel`,
//! `rules` or `only`/`except` to a [`Context`] (predefined variables, changed files, project
//! files) and returns a [`Plan`]: the jobs that run, each with its effective `when`,
//! `allow_failure` and variables, in stage order and in a DAG order that honours `needs`.
//! [`to_job_spec`] turns one planned job into the [`runnel_types::JobSpec`] that the production
//! engine runs. [`LocalRun`] computes the predefined variables (`CI_COMMIT_BRANCH`, …) that a
//! [`Context`] needs from facts the caller read from git.
//!
//! ```
//! use runnel_pipeline::{Context, MemoryFiles, evaluate, load};
//!
//! let files = MemoryFiles::new().with(".gitlab-ci.yml", "test:\n  script: [cargo test]\n");
//! let pipeline = load(&files, ".gitlab-ci.yml").unwrap();
//! let plan = evaluate(&pipeline, &Context::default()).unwrap();
//! assert_eq!(plan.ordered_names(), ["test"]);
//! ```
//!
//! The crate is pure: it performs no filesystem, process or network I/O (files come through
//! [`SourceFiles`], changed files through [`Context`]), and it runs nothing. Remote, project,
//! template and component includes, `trigger` jobs and other server-only features are reported
//! as [`Warning`]s with the file and line of the key, never silently dropped.

mod error;
mod eval;
mod expr;
mod inputs;
mod load;
mod local;
mod model;
mod resolve;
mod source;
mod spec;
mod vars;
mod yaml;

pub use error::{Location, PipelineError, Warning};
pub use eval::{Context, Excluded, NotCreated, Plan, PlannedJob, PlannedNeed, evaluate, expand};
pub use expr::{Expr, ExprError};
pub use load::{LoadOptions, load, load_with, parse_duration};
pub use local::{LocalRun, slug};
pub use model::{
    AllowFailure, Artifacts, Cache, CacheKey, CachePolicy, Condition, Environment, Image, Inherit,
    Job, Matrix, Need, Parallel, Pipeline, Refs, Retry, Rule, SaveWhen, VarDef, When, Workflow,
};
pub use source::{External, FetchError, MemoryFiles, SourceFiles};
pub use spec::{SpecOptions, to_job_spec};
pub use vars::{check_variable_cycles, expand_for_runner, unmaskable_reason};
