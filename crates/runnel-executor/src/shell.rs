//! The shell executor: runs each stage's script on the runner's host.
//!
//! Like the official shell executor, stages run in a login shell (`bash -l`, or `sh -l`) with
//! the runner's own environment (the script comes through an in-memory file the shell sources
//! rather than byte by byte on stdin, see [`ScriptDelivery`]); the script exports the job variables
//! and `cd`s into the project itself. The process starts in the builds directory. Unlike it, one
//! login shell serves all stages of a job, each stage in its own subshell
//! ([`crate::process::Session`]): the profile is read once per job, not once per stage.
//! With a configured `user`, the shell is started through `su -s /bin/<shell> <user> -c
//! '<shell> -l'`, which needs the runner to run as root.
//!
//! Both [`StageKind`](crate::StageKind)s run the same way. This module does not build scripts
//! and does not isolate jobs: builds directories are shared and the host is not cleaned.
//!
//! A known limit: `su -c` (util-linux) starts the shell in a new session, outside the process
//! group the runner supervises. Stopping a stage then reaches `su`, which passes `SIGTERM` on to
//! the shell, but background processes the script started are not killed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::process::{KillPolicy, ProcessSpec, ScriptDelivery, Session, StopWhen};
use crate::{
    AfterReport, BoxFuture, EarlyStart, Executor, ExecutorError, ExecutorFeatures, ExecutorInfo,
    OutputSink, OutputStream, PrepareContext, Provider, Shell, StageCommand, StageExit,
};

/// What the shell executor reports and defaults to.
pub const SHELL_EXECUTOR_INFO: ExecutorInfo = ExecutorInfo {
    name: "shell",
    features: ExecutorFeatures {
        variables: true,
        shared: true,
        session: true,
        terminal: true,
        native_steps_integration: true,
        image: false,
        services: false,
        proxy: false,
        service_variables: false,
        service_multiple_aliases: false,
        image_executor_opts: false,
        service_executor_opts: false,
    },
    default_shell: Shell::Bash,
    default_builds_dir: "builds",
    default_cache_dir: "cache",
    shared_builds_dir: true,
};

/// How the shell executor of one `[[runners]]` entry runs scripts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShellOptions {
    /// The shell (`shell` in `config.toml`).
    pub shell: Shell,
    /// Run scripts as this user (`user` in `config.toml`, `run --user`); needs root.
    pub user: Option<String>,
    /// How stages are stopped.
    pub kill: KillPolicy,
}

/// The program and arguments that start the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Invocation {
    program: String,
    args: Vec<String>,
}

impl Invocation {
    /// Validates `options` and works out the command line. `is_root` is whether the runner
    /// runs as root, which switching users requires.
    fn new(options: &ShellOptions, is_root: bool) -> Result<Self, ExecutorError> {
        let shell = options.shell.as_str();
        let Some(user) = options.user.as_deref() else {
            return Ok(Invocation {
                program: shell.to_owned(),
                args: vec!["-l".to_owned()],
            });
        };
        if user.is_empty() || user.starts_with('-') || user.contains(char::is_whitespace) {
            return Err(ExecutorError::InvalidUser {
                user: user.to_owned(),
            });
        }
        if !is_root {
            return Err(ExecutorError::UserRequiresRoot {
                user: user.to_owned(),
            });
        }
        Ok(Invocation {
            program: "su".to_owned(),
            args: vec![
                "-s".to_owned(),
                format!("/bin/{shell}"),
                user.to_owned(),
                "-c".to_owned(),
                format!("{shell} -l"),
            ],
        })
    }
}

/// Creates [`ShellExecutor`]s for one `[[runners]]` entry.
#[derive(Debug)]
pub struct ShellProvider {
    options: Arc<ShellOptions>,
    invocation: Arc<Invocation>,
    warm: Arc<WarmShell>,
}

impl ShellProvider {
    /// Checks the options once, so that a misconfigured `user` fails at startup rather than in
    /// every job.
    pub fn new(options: ShellOptions) -> Result<Self, ExecutorError> {
        let invocation = Invocation::new(&options, nix::unistd::geteuid().is_root())?;
        Ok(ShellProvider {
            options: Arc::new(options),
            invocation: Arc::new(invocation),
            warm: Arc::new(WarmShell::new(WARM_SHELL_MAX_AGE)),
        })
    }
}

/// How long a login shell started for the next job may wait for it. An older one is closed
/// and the job starts its own, so a job never gets a profile read long before it came.
const WARM_SHELL_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a shell started for the next job may take to read its profile before it is
/// given up (a job-started shell with such a profile would be as slow).
const WARM_SHELL_START_LIMIT: Duration = Duration::from_secs(60);

/// The next job's login shell, started while the runner waits for that job.
///
/// Reading the login profile is the slowest part of a job's start (`bash -l` with Debian's
/// `/etc/profile` runs `id`; user profiles often do much more). Once a job of the runner has
/// taken its shell, another one is started for the next job in the same builds directory, with
/// no job environment: the job's extra environment (its tag) is exported in it when a job
/// takes it ([`Session::export`]), so its profile runs without it. Each job still gets a login
/// shell of its own, read once; only when it was started changes. Shells behind `su` (a
/// configured `user`) are never started ahead: they open a login session for another user.
#[derive(Debug)]
struct WarmShell {
    state: std::sync::Mutex<Warm>,
    max_age: Duration,
}

#[derive(Debug, Default)]
enum Warm {
    #[default]
    Empty,
    /// A shell is being started for the next job.
    Starting,
    Ready {
        session: Box<Session>,
        /// What its profile printed, for the first stage of the job that takes it.
        profile_output: ProfileChunks,
        dir: PathBuf,
        since: Instant,
    },
}

/// The most a waiting shell's profile may print: it is kept for the job that takes the
/// shell. A profile that prints more makes the shell unusable; the job starts its own, whose
/// profile output streams as usual.
const PROFILE_OUTPUT_LIMIT: usize = 64 * 1024;

/// Keeps what a waiting shell's profile prints, up to [`PROFILE_OUTPUT_LIMIT`]: the chunks,
/// their size, and whether there was more.
#[derive(Default)]
struct ProfileOutput(std::sync::Mutex<(ProfileChunks, usize, bool)>);

impl OutputSink for ProfileOutput {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (chunks, size, overflow) = &mut *kept;
        *size += bytes.len();
        if *size > PROFILE_OUTPUT_LIMIT {
            *overflow = true;
            chunks.clear();
        } else {
            chunks.push((stream, bytes.to_vec()));
        }
    }
}

impl ProfileOutput {
    /// The output, unless there was more than the limit.
    fn into_chunks(self) -> Option<ProfileChunks> {
        let (chunks, _, overflow) = self
            .0
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!overflow).then_some(chunks)
    }
}

impl WarmShell {
    fn new(max_age: Duration) -> Self {
        WarmShell {
            state: std::sync::Mutex::new(Warm::Empty),
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Warm> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shell waiting for a job in `dir` with what its profile printed, if one is there
    /// and young enough; an unusable one comes back as the second value, to be closed.
    fn take(&self, dir: &Path) -> (Option<(Session, ProfileChunks)>, Option<Session>) {
        let mut state = self.lock();
        if !matches!(&*state, Warm::Ready { .. }) {
            return (None, None);
        }
        let Warm::Ready {
            session,
            profile_output,
            dir: started_in,
            since,
        } = std::mem::take(&mut *state)
        else {
            return (None, None);
        };
        if started_in == dir && since.elapsed() <= self.max_age && session.shell_running() {
            (Some((*session, profile_output)), None)
        } else {
            (None, Some(*session))
        }
    }

    /// Starts a shell for the next job in `dir` unless one is waiting or starting already.
    /// It counts as waiting once it answered a first (empty) stage, so its profile has run:
    /// a shell is never killed in the middle of its profile for want of a job (which could
    /// leave the profile's lock files behind), only when it takes longer than the shell may
    /// wait.
    fn refill(self: &Arc<Self>, dir: PathBuf, invocation: Arc<Invocation>, kill: KillPolicy) {
        {
            let mut state = self.lock();
            if !matches!(&*state, Warm::Empty) {
                return;
            }
            *state = Warm::Starting;
        }
        let warm = Arc::clone(self);
        tokio::spawn(async move {
            let ready = warm.start(dir.clone(), invocation, kill).await;
            let mut state = warm.lock();
            match ready {
                Some((session, profile_output)) if matches!(&*state, Warm::Starting) => {
                    debug!(pid = session.pid(), "a login shell waits for the next job");
                    *state = Warm::Ready {
                        session: Box::new(session),
                        profile_output,
                        dir,
                        since: Instant::now(),
                    };
                }
                // Dropping it kills it (its profile has run).
                Some(_) => {}
                None => *state = Warm::Empty,
            }
        });
    }

    /// Starts the login shell and waits until it has read its profile.
    async fn start(
        &self,
        dir: PathBuf,
        invocation: Arc<Invocation>,
        kill: KillPolicy,
    ) -> Option<(Session, ProfileChunks)> {
        let session = start_session_aside(
            dir,
            invocation,
            Vec::new(),
            ScriptDelivery::Memory,
            "could not start a login shell for the next job",
        )
        .await?;
        let output = ProfileOutput::default();
        let never = CancellationToken::new();
        let stop = StopWhen {
            cancel: &never,
            deadline: Some(tokio::time::Instant::now() + WARM_SHELL_START_LIMIT),
        };
        // Dropped while the profile runs (the runner stopping): let the shell finish it.
        let mut unready = Unready(Some(session));
        let session = unready.0.as_mut()?;
        let ready = session.run_inline(":\n", &output, stop, &kill).await;
        let session = unready.0.take()?;
        match ready {
            Ok(StageExit::Exited(0)) => match output.into_chunks() {
                Some(chunks) => Some((session, chunks)),
                None => {
                    debug!(
                        "the profile printed too much to keep; the next job starts its own shell"
                    );
                    session.close().await;
                    None
                }
            },
            other => {
                debug!(?other, "a login shell for the next job did not get ready");
                session.close().await;
                None
            }
        }
    }
}

/// A shell still reading its profile: released, not killed, if dropped ([`Session::release`]).
struct Unready(Option<Session>);

impl Drop for Unready {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.release();
        }
    }
}

/// What a waiting shell's profile printed, in order.
type ProfileChunks = Vec<(OutputStream, Vec<u8>)>;

/// [`start_session`] on a blocking-pool thread; a failure is logged with `failed` and gives
/// `None` (the callers have a fallback that reports it).
async fn start_session_aside(
    dir: PathBuf,
    invocation: Arc<Invocation>,
    env: Vec<(String, String)>,
    delivery: ScriptDelivery,
    failed: &'static str,
) -> Option<Session> {
    let started =
        tokio::task::spawn_blocking(move || start_session(&dir, &invocation, &env, delivery)).await;
    match started {
        Ok(Ok(session)) => Some(session),
        Ok(Err(error)) => {
            debug!(%error, "{failed}");
            None
        }
        Err(error) => {
            debug!(%error, "{failed}");
            None
        }
    }
}

/// Makes `dir` and starts the login shell of a session in it (blocking: forks the runner).
fn start_session(
    dir: &Path,
    invocation: &Invocation,
    env: &[(String, String)],
    delivery: ScriptDelivery,
) -> Result<Session, ExecutorError> {
    std::fs::create_dir_all(dir).map_err(|source| ExecutorError::CreateDir {
        purpose: "builds",
        path: dir.to_path_buf(),
        source,
    })?;
    let args: Vec<&str> = invocation.args.iter().map(String::as_str).collect();
    let spec = ProcessSpec {
        program: &invocation.program,
        args: &args,
        cwd: Some(dir),
        env,
        stdin: &[],
    };
    Session::start(&spec, delivery, &NoOutput)
}

impl Provider for ShellProvider {
    fn info(&self) -> &ExecutorInfo {
        &SHELL_EXECUTOR_INFO
    }

    fn create(&self) -> Result<Box<dyn Executor>, ExecutorError> {
        Ok(Box::new(ShellExecutor {
            options: Arc::clone(&self.options),
            invocation: Arc::clone(&self.invocation),
            warm: Arc::clone(&self.warm),
            profile_output: Vec::new(),
            refill_dir: None,
            after_report: None,
            builds_dir: None,
            temp_dir: None,
            session: None,
            session_dir: None,
            contained: true,
        }))
    }
}

/// Runs one job's stages on the host; made by [`ShellProvider`].
///
/// The stages of a job run in one shell [`Session`] (each in its own subshell), so a job starts
/// the login shell once rather than once per stage. A stage that is stopped, or a shell that
/// exits, ends the session; the next stage starts a new one.
#[derive(Debug)]
pub struct ShellExecutor {
    options: Arc<ShellOptions>,
    invocation: Arc<Invocation>,
    /// The provider's shell for the next job ([`WarmShell`]).
    warm: Arc<WarmShell>,
    /// Where the next job's shell is started once this job is over (where this job's shell
    /// was started early), [`WarmShell`].
    refill_dir: Option<PathBuf>,
    /// The stage to run after the job's final state is reported ([`Executor::defer`]).
    after_report: Option<AfterReport>,
    /// What the profile of the shell this job took from [`WarmShell`] printed: the first
    /// stage's output starts with it, as it would with a shell started for the job.
    profile_output: ProfileChunks,
    /// Where processes start; set by `prepare`.
    builds_dir: Option<PathBuf>,
    /// The job's private temp dir this executor made ready, emptied by `cleanup`.
    temp_dir: Option<PathBuf>,
    /// The shell the stages run in, once the first stage (or [`Executor::start_early`])
    /// started it.
    session: Option<Session>,
    /// Where `start_early` started the session's shell.
    session_dir: Option<PathBuf>,
    /// Whether every session so far ended with its whole process tree seen gone
    /// ([`Session::contained`]).
    contained: bool,
}

impl ShellExecutor {
    /// How stage scripts reach the shell: a shell of our own user can open our in-memory
    /// files; one behind `su` cannot.
    fn delivery(&self) -> ScriptDelivery {
        if self.options.user.is_none() {
            ScriptDelivery::Memory
        } else {
            ScriptDelivery::Stdin
        }
    }

    /// Gets the job's login shell going in its builds directory (made first, as `prepare`
    /// makes it): the one started ahead for this job when there is one ([`WarmShell`]),
    /// else a new one, off the runtime's threads (starting the shell blocks the calling thread
    /// until the shell has `exec`'d, which is the slow part, and the job's acknowledgement is
    /// in flight meanwhile). The next job's is started once this one is over.
    async fn start_session_early(&mut self, ctx: &EarlyStart<'_>, sink: &dyn OutputSink) -> bool {
        if self.session.is_some() {
            return true;
        }
        let dir = ctx.builds_dir.to_path_buf();
        let session = match self.take_warm(&dir).await {
            Some((mut session, profile_output)) => {
                self.profile_output = profile_output;
                // It was started without the job's environment.
                if let Err(error) = session.export(ctx.env) {
                    debug!(%error, "could not export the job's environment in its shell");
                    self.contained &= session.close().await;
                    return false;
                }
                session
            }
            None => {
                // On failure the first stage tries again and reports what goes wrong.
                let started = start_session_aside(
                    dir.clone(),
                    Arc::clone(&self.invocation),
                    ctx.env.to_vec(),
                    self.delivery(),
                    "could not start the shell session early",
                )
                .await;
                let Some(session) = started else {
                    return false;
                };
                session
            }
        };
        self.refill_dir = self.may_start_ahead().then(|| dir.clone());
        sink.process_group_started(session.pid());
        self.session = Some(session);
        self.session_dir = Some(dir);
        true
    }

    /// The provider's shell for the next job, when this executor may use one and it was
    /// started in `dir`; one it cannot use is closed.
    async fn take_warm(&mut self, dir: &Path) -> Option<(Session, ProfileChunks)> {
        if !self.may_start_ahead() {
            return None;
        }
        let (session, unusable) = self.warm.take(dir);
        if let Some(unusable) = unusable {
            unusable.close().await;
        }
        session
    }

    /// Whether this runner's shells may be started before their job ([`WarmShell`]).
    fn may_start_ahead(&self) -> bool {
        self.options.user.is_none()
    }

    async fn prepare_dirs(&mut self, ctx: &PrepareContext<'_>) -> Result<(), ExecutorError> {
        // A shell started early elsewhere than the stages' builds directory is not theirs.
        if self.session_dir.as_deref() != Some(ctx.builds_dir)
            && let Some(session) = self.session.take()
        {
            self.contained &= session.close().await;
            self.profile_output.clear();
        }
        create_dir("builds", ctx.builds_dir.to_path_buf()).await?;
        // A cache problem must never fail a job: the cache stages warn on their own.
        if let Err(error) = create_dir("cache", ctx.cache_dir.to_path_buf()).await {
            tracing::warn!(%error, "cannot create the cache directory; caches will not be saved");
        }
        self.builds_dir = Some(ctx.builds_dir.to_path_buf());
        if let Some(temp) = ctx.temp_dir {
            let temp = temp.to_path_buf();
            let made = temp.clone();
            tokio::task::spawn_blocking(move || make_private_dir(&made))
                .await
                .map_err(|error| ExecutorError::CreateDir {
                    purpose: "temporary",
                    path: temp.clone(),
                    source: std::io::Error::other(error),
                })?
                .map_err(|source| ExecutorError::CreateDir {
                    purpose: "temporary",
                    path: temp.clone(),
                    source,
                })?;
            self.temp_dir = Some(temp);
        }
        Ok(())
    }

    async fn run_stage(
        &mut self,
        cmd: StageCommand<'_>,
        sink: &dyn OutputSink,
        cancel: CancellationToken,
    ) -> Result<StageExit, ExecutorError> {
        debug!(stage = cmd.stage, kind = ?cmd.kind, program = self.invocation.program, "running stage");
        let reusable = self
            .session
            .as_ref()
            .is_some_and(|session| session.is_alive() && session.env() == cmd.env);
        if !reusable && let Some(old) = self.session.take() {
            self.contained &= old.close().await;
        }
        let session = match self.session.take() {
            Some(session) => session,
            None => {
                let args: Vec<&str> = self.invocation.args.iter().map(String::as_str).collect();
                let spec = ProcessSpec {
                    program: &self.invocation.program,
                    args: &args,
                    cwd: self.builds_dir.as_deref(),
                    env: cmd.env,
                    stdin: &[],
                };
                Session::start(&spec, self.delivery(), sink)?
            }
        };
        let session = self.session.insert(session);
        for (stream, bytes) in std::mem::take(&mut self.profile_output) {
            sink.write(stream, &bytes);
        }
        let stop = StopWhen {
            cancel: &cancel,
            deadline: cmd.deadline,
        };
        match cmd.inline {
            Some(housekeeping) => {
                session
                    .run_inline(housekeeping, sink, stop, &self.options.kill)
                    .await
            }
            None => {
                session
                    .run(cmd.script, sink, stop, &self.options.kill)
                    .await
            }
        }
    }

    /// What is left to do once the job's stages are over, taken out of the executor.
    fn ending(&mut self) -> Ending {
        self.session_dir = None;
        Ending {
            after_report: self.after_report.take(),
            session: self.session.take(),
            temp_dir: self.temp_dir.take(),
            builds_dir: self.builds_dir.take(),
            refill_dir: self.refill_dir.take(),
            invocation: Arc::clone(&self.invocation),
            delivery: self.delivery(),
            kill: self.options.kill,
            warm: Arc::clone(&self.warm),
            contained: self.contained,
        }
    }
}

/// The end of a job's run on the host, owned so that it can run after the job's final state
/// is reported ([`Executor::cleanup_deferred`]): the [`AfterReport`] stage, in the job's shell
/// session (or a new one, if that ended), then the session's end, the emptying of the temp dir
/// this executor made, and the start of the next job's shell ([`WarmShell`]).
struct Ending {
    after_report: Option<AfterReport>,
    session: Option<Session>,
    temp_dir: Option<PathBuf>,
    builds_dir: Option<PathBuf>,
    refill_dir: Option<PathBuf>,
    invocation: Arc<Invocation>,
    delivery: ScriptDelivery,
    kill: KillPolicy,
    warm: Arc<WarmShell>,
    contained: bool,
}

impl Ending {
    /// Does it all; returns whether every session of the job ended with its whole process
    /// tree seen gone ([`Session::close`]).
    async fn finish(mut self) -> bool {
        if let Some(stage) = self.after_report.take() {
            self.run_after_report(&stage).await;
        }
        if let Some(session) = self.session.take() {
            self.contained &= session.close().await;
        }
        // After the session: nothing of the job writes there any more.
        if let Some(temp) = self.temp_dir.take() {
            let removed = temp.clone();
            let error = match tokio::task::spawn_blocking(move || empty_private_dir(&removed)).await
            {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(error) => Some(error.to_string()),
            };
            if let Some(error) = error {
                tracing::warn!(path = %temp.display(), %error, "cannot empty the job's temporary directory");
            }
        }
        if let Some(dir) = self.refill_dir.take() {
            self.warm
                .refill(dir, Arc::clone(&self.invocation), self.kill);
        }
        self.contained
    }

    /// Runs `stage` in the job's session, or in a new one when that one ended (a stopped
    /// stage ends it; the stage must run all the same). Its output is dropped; a failure is
    /// logged, as the cleanup's failures are.
    async fn run_after_report(&mut self, stage: &AfterReport) {
        let reusable = self
            .session
            .as_ref()
            .is_some_and(|session| session.is_alive() && session.env() == stage.env.as_slice());
        if !reusable {
            if let Some(old) = self.session.take() {
                self.contained &= old.close().await;
            }
            let Some(dir) = self.builds_dir.clone() else {
                tracing::warn!(stage = %stage.stage, "no builds directory to run the stage in");
                return;
            };
            self.session = start_session_aside(
                dir,
                Arc::clone(&self.invocation),
                stage.env.clone(),
                self.delivery,
                "could not start a shell for the stage after the final report",
            )
            .await;
        }
        let Some(session) = self.session.as_mut() else {
            tracing::warn!(stage = %stage.stage, "no shell to run the stage in");
            return;
        };
        let never = CancellationToken::new();
        let stop = StopWhen {
            cancel: &never,
            deadline: Some(tokio::time::Instant::now() + stage.timeout),
        };
        // The session's last stage: in its shell itself when it can, no subshell to fork.
        let ran = match &stage.inline {
            Some(inline) => {
                session
                    .run_inline(inline, &NoOutput, stop, &self.kill)
                    .await
            }
            None => {
                session
                    .run(&stage.script, &NoOutput, stop, &self.kill)
                    .await
            }
        };
        match ran {
            Ok(StageExit::Exited(0)) => {}
            Ok(exit) => {
                debug!(stage = %stage.stage, ?exit, "the stage after the final report failed")
            }
            Err(error) => {
                tracing::warn!(stage = %stage.stage, %error, "the stage after the final report could not run");
            }
        }
    }
}

/// The sink of a shell started on another thread: its process group is reported to the
/// job's sink once it is back; a session writes nothing while it starts.
struct NoOutput;

impl OutputSink for NoOutput {
    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        debug!(%stream, bytes = bytes.len(), "output of a starting shell session dropped");
    }
}

/// Makes the job's private temp dir ready as the stage scripts would (review M5): a symlink
/// or non-directory planted at its path is removed, never followed; a missing directory is
/// made 0700 (its parent, the project's directory, exists or is made as the builds dir's).
/// One that is already there (the last job's, emptied at its end, or a killed job's) is kept
/// if it is the runner user's: made 0700 again and emptied, so the job finds nothing of an
/// earlier one, as in a new directory. (Keeping it spares every job a `mkdir` and an `rmdir`:
/// a directory always has a block, so its removal frees one, which on a filesystem mounted
/// with `discard` waits for the disk.) Another user's is replaced.
fn make_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw() => {
            return empty_private_dir(path);
        }
        Ok(meta) if meta.is_dir() => remove_private_dir(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            // Made meanwhile by another process: what the scripts accept, if a directory.
            if std::fs::symlink_metadata(path)?.is_dir() {
                Ok(())
            } else {
                Err(error)
            }
        }
        other => other,
    }
}

/// Empties the job's temp dir at the end of the job and keeps it (0700) for the next one
/// ([`make_private_dir`]): everything in it goes, as `rm -r -f` would take it (directories a
/// job made unwritable are made writable first); a symlink or file the job put in its place
/// is removed, never followed; a missing one is fine.
fn empty_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let entry_path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_private_dir(&entry_path)?;
        } else {
            match std::fs::remove_file(&entry_path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Removes a directory and everything in it, as `rm -r -f` would: a missing one is fine, and
/// directories a job made unwritable are made writable first when that is what stops the
/// removal.
fn remove_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// `chmod u+rwx` on `path` and every directory under it (never through a symlink).
fn make_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode() | 0o700;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).ok();
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

async fn create_dir(purpose: &'static str, path: PathBuf) -> Result<(), ExecutorError> {
    fs_err::tokio::create_dir_all(&path)
        .await
        .map_err(|source| ExecutorError::CreateDir {
            purpose,
            path,
            source,
        })
}

impl Executor for ShellExecutor {
    fn name(&self) -> &str {
        SHELL_EXECUTOR_INFO.name
    }

    fn banner(&self) -> String {
        format!("Using Shell ({}) executor...", self.options.shell)
    }

    /// Starts the login shell, which reads the profile while GitLab answers.
    fn start_early<'a>(
        &'a mut self,
        ctx: &'a EarlyStart<'a>,
        sink: &'a dyn OutputSink,
    ) -> BoxFuture<'a, bool> {
        Box::pin(self.start_session_early(ctx, sink))
    }

    fn prepare<'a>(
        &'a mut self,
        ctx: &'a PrepareContext<'a>,
    ) -> BoxFuture<'a, Result<(), ExecutorError>> {
        Box::pin(self.prepare_dirs(ctx))
    }

    fn run<'a>(
        &'a mut self,
        cmd: StageCommand<'a>,
        sink: &'a dyn OutputSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<StageExit, ExecutorError>> {
        Box::pin(self.run_stage(cmd, sink, cancel))
    }

    /// Ends the job's shell session (and what its stages left running), after a stage taken
    /// by [`Executor::defer`]; builds directories stay between jobs.
    fn cleanup(&mut self) -> BoxFuture<'_, ()> {
        let ending = self.ending();
        Box::pin(async move {
            self.contained = ending.finish().await;
        })
    }

    /// [`Executor::cleanup`], all of it after the final state is reported: the deferred
    /// stage, the session's end (the job's shell is the one place its processes are known to
    /// be, so nothing else may look for them meanwhile) and the next job's login shell, whose
    /// profile then does not compete with the end of this job.
    fn cleanup_deferred(&mut self) -> BoxFuture<'_, Option<BoxFuture<'static, bool>>> {
        let ending = self.ending();
        let su = self.options.user.is_some();
        // Nothing of the job's is left in the executor: its own `contained` has no more to say.
        self.contained = false;
        Box::pin(async move {
            let later: BoxFuture<'static, bool> =
                Box::pin(async move { ending.finish().await && !su });
            Some(later)
        })
    }

    /// Runs `stage` in the job's shell after the final state is reported.
    fn defer(&mut self, stage: AfterReport) -> Option<AfterReport> {
        self.after_report = Some(stage);
        None
    }

    /// Each session's shell is the child subreaper of everything its stages start, so while
    /// it lives every such process is its descendant; a session closed while its shell still
    /// lived, with no descendant left, leaves nothing anywhere. A session that ended any other
    /// way (a stopped stage, a shell that exited or was killed, a failure) and a shell behind
    /// `su` (a new session, another user) leave the job runner's scan for the job's tag on.
    fn contained(&self) -> bool {
        self.contained && self.session.is_none() && self.options.user.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temp dir the executor makes for a plan that leaves it to it: a planted symlink is
    /// removed (its target untouched) and a 0700 directory made; at the end it is emptied,
    /// also when the job made a directory in it unwritable, and kept; the next job finds it
    /// 0700 and empty, also when a killed job left something in it or loosened its mode.
    #[test]
    fn the_private_temp_dir_is_made_safely_and_emptied_for_the_next_job() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let root = tempfile::tempdir().expect("temp dir");
        let target = root.path().join("target");
        std::fs::create_dir(&target).expect("target");
        let temp = root.path().join("project").join("p.tmp");
        std::fs::create_dir(root.path().join("project")).expect("project");
        std::os::unix::fs::symlink(&target, &temp).expect("planted link");

        make_private_dir(&temp).expect("made");
        let meta = std::fs::symlink_metadata(&temp).expect("there");
        assert!(meta.is_dir(), "a directory, not the link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(target.exists(), "the link's target is left alone");

        let locked = temp.join("locked");
        std::fs::create_dir(&locked).expect("locked");
        std::fs::write(locked.join("file"), "x").expect("file");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        std::fs::write(temp.join("secret"), "x").expect("file");
        std::os::unix::fs::symlink(&target, temp.join("link")).expect("link");
        empty_private_dir(&temp).expect("emptied");
        assert_eq!(std::fs::read_dir(&temp).expect("kept").count(), 0);
        assert!(target.exists(), "a link in it is removed, not followed");

        // What a killed job leaves: something in it, a looser mode.
        std::fs::write(temp.join("left"), "x").expect("file");
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let inode = std::fs::metadata(&temp).expect("dir").ino();
        make_private_dir(&temp).expect("ready");
        let meta = std::fs::symlink_metadata(&temp).expect("there");
        assert_eq!(meta.ino(), inode, "the same directory, kept");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(&temp).expect("dir").count(), 0);

        // A job that put a link in its place: the link goes at the end, the next job gets a
        // new directory.
        std::fs::remove_dir(&temp).expect("removed");
        std::os::unix::fs::symlink(&target, &temp).expect("link");
        empty_private_dir(&temp).expect("link removed");
        assert!(std::fs::symlink_metadata(&temp).is_err());
        assert!(target.exists());
        empty_private_dir(&temp).expect("a missing one is fine");
    }

    /// A shell that waited longer than the provider allows is handed back to be closed, not
    /// used; so is one started in another directory.
    #[tokio::test]
    async fn a_shell_that_waited_too_long_or_elsewhere_is_not_used() {
        let root = tempfile::tempdir().expect("temp dir");
        let invocation =
            Arc::new(Invocation::new(&ShellOptions::default(), false).expect("invocation"));
        for (max_age, dir) in [
            (Duration::ZERO, root.path().to_path_buf()),
            (Duration::from_secs(600), root.path().join("elsewhere")),
        ] {
            let warm = Arc::new(WarmShell::new(max_age));
            warm.refill(
                root.path().to_path_buf(),
                Arc::clone(&invocation),
                KillPolicy::default(),
            );
            for _ in 0..400 {
                if matches!(&*warm.lock(), Warm::Ready { .. }) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (usable, stale) = warm.take(&dir);
            assert!(usable.is_none());
            let stale = stale.expect("the waiting shell comes back");
            let pid = nix::unistd::Pid::from_raw(stale.pid().cast_signed());
            assert!(stale.close().await, "nothing of it is left");
            assert!(
                nix::sys::signal::kill(pid, None).is_err(),
                "the shell is gone"
            );
            assert!(matches!(&*warm.lock(), Warm::Empty));
        }
    }

    fn options(shell: Shell, user: Option<&str>) -> ShellOptions {
        ShellOptions {
            shell,
            user: user.map(str::to_owned),
            kill: KillPolicy::default(),
        }
    }

    fn command_line(options: &ShellOptions, is_root: bool) -> String {
        match Invocation::new(options, is_root) {
            Ok(invocation) => format!("{} {:?}", invocation.program, invocation.args),
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn command_lines() {
        let cases = [
            (options(Shell::Bash, None), false),
            (options(Shell::Sh, None), false),
            (options(Shell::Bash, Some("gitlab-runner")), true),
            (options(Shell::Sh, Some("gitlab-runner")), true),
            (options(Shell::Bash, Some("gitlab-runner")), false),
            (options(Shell::Bash, Some("-c")), true),
            (options(Shell::Bash, Some("")), true),
            (options(Shell::Bash, Some("a b")), true),
        ];
        let lines: Vec<String> = cases
            .iter()
            .map(|(options, is_root)| {
                format!(
                    "shell={} user={:?} root={is_root}: {}",
                    options.shell,
                    options.user,
                    command_line(options, *is_root)
                )
            })
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }
}
