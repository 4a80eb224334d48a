//! `runnel exec`: runs a project's `.gitlab-ci.yml` on this machine with the production engine.
//!
//! The pipeline is loaded and evaluated by `runnel-pipeline`; each job becomes a job payload
//! served by an in-process coordinator on loopback and is run by the normal daemon
//! (`runnel-service`) with the shell or docker executor, so "works locally" means "works in CI".
//! What a person sees is decoupled from running: the scheduler emits [`Event`]s and a
//! [`Reporter`] (plain lines, or a live terminal view) renders them.

pub mod event;
pub mod list;
pub mod view;

pub use event::{Event, JobResult, JobStatus, PipelineJob, Reporter};
pub use list::render_list;
pub use view::{LiveReporter, PlainReporter, render_frame, render_summary, stdout_reporter};
