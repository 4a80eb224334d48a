//! The custom executor: runs a job through driver programs the administrator provides, with
//! the official runner's protocol (the base of the LXD, libvirt, Tart and Firecracker drivers).
//!
//! ```text
//! configure  config_exec  [config_args…]                 stdout: JSON settings, stderr: job log
//! prepare    prepare_exec [prepare_args…]                output: job log
//! run        run_exec     [run_args…] <script> <stage>   once per stage, output: job log
//! cleanup    cleanup_exec [cleanup_args…]                always; output: daemon log
//! ```
//!
//! Every program starts in a private temporary directory (also `TMPDIR`) with the runner's
//! environment plus `BUILD_FAILURE_EXIT_CODE`, `SYSTEM_FAILURE_EXIT_CODE`,
//! `BUILD_EXIT_CODE_FILE`, `JOB_RESPONSE_FILE` (the job as GitLab sent it), the `job_env` of
//! `config_exec` and every job variable as `CUSTOM_ENV_<KEY>` (with `CI_JOB_SERVICES`). A
//! program's exit code means what the official documentation says: `0` success,
//! `BUILD_FAILURE_EXIT_CODE` (1) a build failure whose exit code may be written to
//! `BUILD_EXIT_CODE_FILE`, `SYSTEM_FAILURE_EXIT_CODE` (2) a system failure, anything else an
//! unknown (system) failure. Stage scripts are the ones the shell executor runs, written to a
//! 0700 file that is removed when the stage ends; `step_script` is passed as `build_script`,
//! as officially.
//!
//! Stopping (cancel, job timeout, `*_exec_timeout`) sends `SIGTERM` to the program's process
//! group, then `SIGKILL` after `graceful_kill_timeout` (default 10 minutes, as officially), and
//! gives up after `force_kill_timeout`. Unlike the official runner, processes a driver leaves
//! in its own process group are killed when it exits (Runnel's no-orphans rule); a driver that
//! must leave something running (a VM monitor) starts it in a new session (`setsid`).
//!
//! This crate does not plan scripts or talk to GitLab; the daemon replans the job with the
//! directories `config_exec` returns ([`runnel_executor::PlanOverrides`]).

mod error;
mod executor;
mod options;

pub use error::CustomError;
pub use executor::{
    BUILD_FAILURE_EXIT_CODE, CUSTOM_EXECUTOR_INFO, CustomExecutor, CustomProvider,
    SYSTEM_FAILURE_EXIT_CODE,
};
pub use options::{
    CustomOptions, DEFAULT_EXEC_TIMEOUT, DEFAULT_FORCE_KILL_TIMEOUT, DEFAULT_GRACEFUL_KILL_TIMEOUT,
    Program,
};
