//! `runnel exec`: runs a project's `.gitlab-ci.yml` on this machine with the production engine.
//!
//! The pipeline is loaded and evaluated by `runnel-pipeline`; each job becomes a job payload
//! served by an in-process coordinator on loopback and is run by the normal daemon
//! (`runnel-service`) with the shell or docker executor, so "works locally" means "works in CI".
//! What a person sees is decoupled from running: the scheduler emits [`Event`]s and a
//! [`Reporter`] (plain lines, or a live terminal view) renders them.
//!
//! - [`prepare`] reads the repository (read-only), loads and evaluates the CI file and applies
//!   the job selection; [`Prepared::run`] snapshots the working tree ([`source`]), starts the
//!   coordinator (`coordinator`) and the daemon, and schedules the jobs (`run`).
//! - Everything a run writes lives under `<project>/.runnel/`: `git/` (the snapshot repository),
//!   `builds/`, `cache/`, `logs/<pipeline>/<job>.log`, `artifacts/<pipeline>/<job>/`.

mod coordinator;
mod error;
pub mod event;
mod includes;
pub mod list;
mod run;
pub mod source;
pub mod view;

pub use error::ExecError;
pub use event::{Event, JobResult, JobStatus, PipelineJob, Reporter};
pub use includes::IncludeSettings;
pub use list::render_list;
pub use run::{ExecOptions, ExecutorChoice, Prepared, prepare};
pub use view::{
    LiveReporter, PlainReporter, colours_enabled, render_frame, render_summary, stdout_reporter,
};

/// GitLab's slug of `text`, or `fallback` when nothing is left of it.
pub(crate) fn slug_or(text: &str, fallback: &str) -> String {
    let slug = runnel_pipeline::slug(text);
    if slug.is_empty() {
        fallback.to_owned()
    } else {
        slug
    }
}
