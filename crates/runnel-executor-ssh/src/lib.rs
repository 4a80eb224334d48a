//! The SSH executor: runs each stage in a login shell (`bash -l`, or `sh -l`) on a remote
//! host, with the stage script on the shell's stdin, as the official executor does.
//!
//! Built on [russh](https://docs.rs/russh) rather than the system `ssh` client: the runner
//! verifies the host key itself against `known_hosts_file` (so a mismatch is an error it can
//! word, not a prompt or an exit code 255), authenticates with a password without a helper
//! program or a password on a command line, and sees each stage's exit status, stdout and
//! stderr separately on one connection per job.
//!
//! ```text
//! configure  connect (3 attempts, 3 s apart), verify the host key, authenticate (key, password)
//!            relative builds_dir/cache_dir become absolute under the remote home directory
//! run        one channel per stage: `printf 'RUNNEL_PGID=%s\n' "$$"; exec bash -l` < script
//! stop       cancel/timeout: `kill -TERM -- -<pgid>`, `kill -KILL` after the grace period
//! cleanup    disconnect
//! ```
//!
//! sshd starts every command as a session leader, so the stage's shell leads a process group
//! holding everything the stage starts; its id is the first line the command prints. Stopping
//! a stage signals that group through a second channel, and when a stage ends, what it left in
//! its group is killed (Runnel's no-orphans rule; the official executor leaves such processes
//! running). Processes that start their own session (`setsid`, daemons) are out of reach.
//!
//! Caches and artifacts are handled by the runner binary on the remote host
//! ([`REMOTE_RUNNER_COMMAND`] on its `PATH`), as the official executor calls `gitlab-runner`
//! there; without it the transfer stages say `Missing runnel. … is disabled.` in the job log.

mod client;
mod error;
mod executor;
mod options;

pub use error::SshError;
pub use executor::{REMOTE_RUNNER_COMMAND, SSH_EXECUTOR_INFO, SshExecutor, SshProvider};
pub use options::SshOptions;
