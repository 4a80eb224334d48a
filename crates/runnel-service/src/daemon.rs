//! The `run` daemon: feeds runners to workers, supervises jobs, reloads, rotates, stops.
//!
//! The worker model follows the official runner (reference section 5): `concurrent` slots are
//! shared by job requests and running jobs; a feeder hands each runner to a free slot every
//! `check_interval / runners`; a worker that receives a job requeues its runner at once (unless
//! `strict_check_interval`) and then runs the job in its slot. Per runner, `limit` bounds running
//! jobs and `request_concurrency` bounds requests in flight. Slots and limits are semaphores whose
//! permits move into the tasks that use them, so they can never leak.
//!
//! Stopping (reference 2.4): SIGQUIT stops feeding and lets jobs finish; unlike the official
//! runner, requests already in flight are read to the end and any job they carry is run, so a
//! graceful stop never orphans a job GitLab already assigned. SIGTERM/SIGINT abort running jobs
//! (which still clean up, flush their logs and report `runner_interrupted`); a further signal or
//! `shutdown_timeout` ends the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use runnel_api::{Client, ClientConfig, JobRequest, JobRequestResult};
use runnel_types::JobSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::RunningJobs;
use crate::job::{JobContext, run_job};
use crate::metrics::{self as m, ApiObserver, metrics};
use crate::settings::{ConfigSource, RunnerSpec, ServiceConfig};
use crate::signals::{Signal, Signals};
use crate::{RunOptions, ServiceError};

/// How often the config file's mtime is checked.
const RELOAD_INTERVAL: Duration = Duration::from_secs(3);

/// A semaphore whose size can change while permits are out.
#[derive(Debug)]
struct Slots {
    semaphore: Arc<Semaphore>,
    size: Mutex<usize>,
}

impl Slots {
    fn new(size: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
        }
    }

    fn resize(&self, new: usize) {
        let Ok(mut size) = self.size.lock() else {
            return;
        };
        if new > *size {
            self.semaphore.add_permits(new - *size);
        } else if new < *size {
            // Take the surplus as permits become free, and never give them back.
            let surplus = u32::try_from(*size - new).unwrap_or(u32::MAX);
            let semaphore = Arc::clone(&self.semaphore);
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            });
        }
        *size = new;
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }

    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).acquire_owned().await.ok()
    }
}

fn limit_size(limit: usize) -> usize {
    if limit == 0 {
        Semaphore::MAX_PERMITS >> 1
    } else {
        limit
    }
}

/// Consecutive unhealthy answers and the resulting pause (reference 5, health).
#[derive(Debug, Default)]
struct Health {
    failures: u32,
    paused_until: Option<Instant>,
}

/// How often the same runner may log a failed job request; failures in between are counted and
/// reported with the next line, so a GitLab outage does not flood the log.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Rate limiting of "checking for jobs failed" lines.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<Instant>,
    suppressed: u32,
}

impl FailureLog {
    /// Whether to log this failure now, and how many were held back before it.
    fn admit(&mut self, now: Instant) -> Option<u32> {
        match self.last {
            Some(at) if now.duration_since(at) < FAILURE_LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Lowest-free index allocation for `CI_CONCURRENT_ID` and `CI_CONCURRENT_PROJECT_ID`.
#[derive(Debug, Default)]
pub(crate) struct SlotIds {
    used: Mutex<BTreeSet<(u64, usize)>>,
}

impl SlotIds {
    /// Takes the lowest free index in `scope` (0 for the runner, the project id + 1 for projects).
    pub(crate) fn take(self: &Arc<Self>, scope: u64) -> SlotId {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = (0..).find(|i| !used.contains(&(scope, *i))).unwrap_or(0);
        used.insert((scope, index));
        SlotId {
            owner: Arc::clone(self),
            scope,
            index,
        }
    }
}

/// A held slot index; freed on drop.
#[derive(Debug)]
pub(crate) struct SlotId {
    owner: Arc<SlotIds>,
    scope: u64,
    pub(crate) index: usize,
}

impl Drop for SlotId {
    fn drop(&mut self) {
        let mut used = self
            .owner
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        used.remove(&(self.scope, self.index));
    }
}

/// Everything the daemon keeps per runner.
#[derive(Debug)]
pub(crate) struct RunnerState {
    pub(crate) spec: Mutex<Arc<RunnerSpec>>,
    pub(crate) client: Mutex<Arc<Client>>,
    limit: Slots,
    requests: Slots,
    health: Mutex<Health>,
    failure_log: Mutex<FailureLog>,
    pub(crate) slot_ids: Arc<SlotIds>,
    /// Removed from the configuration: no more polling.
    retired: CancellationToken,
    /// The docker provider of this entry, with the section and system id it was made from:
    /// made once and reused by every job (its concurrency slots, negotiated client and the
    /// jobs the leftover sweep spares live there), made again only when those change.
    docker: Mutex<Option<DockerProviderCache>>,
    /// The kubernetes provider of this entry, made once like the docker one (concurrency slots
    /// and the pods the leftover sweep spares live there).
    kubernetes: Mutex<Option<KubernetesProviderCache>>,
    /// The shell provider and the options it was made with.
    shell: Mutex<
        Option<(
            runnel_executor::ShellOptions,
            Arc<runnel_executor::ShellProvider>,
        )>,
    >,
}

/// A kubernetes provider and the entry it was made from.
#[derive(Debug)]
struct KubernetesProviderCache {
    entry: Arc<runnel_config::RunnerConfig>,
    provider: Arc<runnel_executor_kubernetes::KubernetesProvider>,
}

/// A docker provider and what it was made from.
#[derive(Debug)]
struct DockerProviderCache {
    entry: Arc<runnel_config::RunnerConfig>,
    system_id: String,
    provider: Arc<runnel_executor_docker::DockerProvider>,
}

impl RunnerState {
    fn new(spec: RunnerSpec, system_id: &str) -> Result<Self, ServiceError> {
        let client = build_client(&spec, system_id)?;
        Ok(Self {
            limit: Slots::new(limit_size(spec.limit)),
            requests: Slots::new(spec.request_concurrency.max(1)),
            spec: Mutex::new(Arc::new(spec)),
            client: Mutex::new(Arc::new(client)),
            health: Mutex::new(Health::default()),
            failure_log: Mutex::new(FailureLog::default()),
            slot_ids: Arc::default(),
            retired: CancellationToken::new(),
            docker: Mutex::new(None),
            kubernetes: Mutex::new(None),
            shell: Mutex::new(None),
        })
    }

    /// The shell provider for `options`: the one made before when they are unchanged (it
    /// keeps the next job's login shell waiting), else a new one.
    pub(crate) fn shell_provider(
        &self,
        options: runnel_executor::ShellOptions,
    ) -> Result<Arc<runnel_executor::ShellProvider>, String> {
        let mut cached = self
            .shell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made_with, provider)) = cached.as_ref()
            && *made_with == options
        {
            return Ok(Arc::clone(provider));
        }
        let provider = Arc::new(
            runnel_executor::ShellProvider::new(options.clone()).map_err(|e| e.to_string())?,
        );
        *cached = Some((options, Arc::clone(&provider)));
        Ok(provider)
    }

    /// The docker provider for `spec`: the one made before when `spec`'s `[[runners]]` entry
    /// and `system_id` are unchanged, else a new one (kept for the next jobs).
    pub(crate) fn docker_provider(
        &self,
        spec: &RunnerSpec,
        system_id: &str,
    ) -> Result<Arc<runnel_executor_docker::DockerProvider>, String> {
        let entry = spec.config.as_ref().ok_or_else(|| {
            "the docker executor needs a [runners.docker] section in config.toml".to_owned()
        })?;
        let mut cached = self
            .docker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cache) = cached.as_ref()
            && cache.system_id == system_id
            && (Arc::ptr_eq(&cache.entry, entry) || cache.entry == *entry)
        {
            return Ok(Arc::clone(&cache.provider));
        }
        let mut provider = runnel_executor_docker::DockerProvider::from_runner(entry, system_id)
            .map_err(|error| crate::job::error_chain(&error))?;
        if let Some(previous) = cached.as_ref() {
            // Jobs of the previous configuration still run: the sweep must keep sparing them.
            provider = provider.succeeding(&previous.provider);
        }
        let provider = Arc::new(provider);
        *cached = Some(DockerProviderCache {
            entry: Arc::clone(entry),
            system_id: system_id.to_owned(),
            provider: Arc::clone(&provider),
        });
        Ok(provider)
    }

    /// The kubernetes provider for `spec`: the one made before when `spec`'s `[[runners]]`
    /// entry is unchanged, else a new one (kept for the next jobs, sparing the pods of the
    /// jobs the previous one still runs).
    pub(crate) fn kubernetes_provider(
        &self,
        spec: &RunnerSpec,
    ) -> Result<Arc<runnel_executor_kubernetes::KubernetesProvider>, String> {
        let entry = spec.config.as_ref().ok_or_else(|| {
            "the kubernetes executor needs a [runners.kubernetes] section in config.toml".to_owned()
        })?;
        let mut cached = self
            .kubernetes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cache) = cached.as_ref()
            && (Arc::ptr_eq(&cache.entry, entry) || cache.entry == *entry)
        {
            return Ok(Arc::clone(&cache.provider));
        }
        let mut provider = runnel_executor_kubernetes::KubernetesProvider::from_runner(entry)
            .map_err(|error| crate::job::error_chain(&error))?;
        if let Some(previous) = cached.as_ref() {
            provider = provider.succeeding(&previous.provider);
        }
        let provider = Arc::new(provider);
        *cached = Some(KubernetesProviderCache {
            entry: Arc::clone(entry),
            provider: Arc::clone(&provider),
        });
        Ok(provider)
    }

    pub(crate) fn spec(&self) -> Arc<RunnerSpec> {
        Arc::clone(
            &self
                .spec
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(crate) fn client(&self) -> Arc<Client> {
        Arc::clone(
            &self
                .client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn update(&self, spec: RunnerSpec, system_id: &str) -> Result<(), ServiceError> {
        let old = self.spec();
        if old.url != spec.url
            || old.tls_ca_file != spec.tls_ca_file
            || old.tls_cert_file != spec.tls_cert_file
            || old.tls_key_file != spec.tls_key_file
        {
            let client = build_client(&spec, system_id)?;
            *self
                .client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(client);
        }
        self.limit.resize(limit_size(spec.limit));
        self.requests.resize(spec.request_concurrency.max(1));
        *self
            .spec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(spec);
        Ok(())
    }

    fn healthy(&self, now: Instant) -> bool {
        let health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        health.paused_until.is_none_or(|until| now >= until)
    }

    fn record_health(&self, healthy: bool) {
        let spec = self.spec();
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if healthy {
            *health = Health::default();
            return;
        }
        health.failures += 1;
        if health.failures >= spec.unhealthy_requests_limit.max(1) {
            tracing::warn!(
                runner = %spec.token.short(),
                failures = health.failures,
                pause = ?spec.unhealthy_interval,
                "runner is unhealthy and will not be polled for a while"
            );
            health.paused_until = Some(Instant::now() + spec.unhealthy_interval);
            // One forced attempt after the pause; a failure then pauses again.
            health.failures = spec.unhealthy_requests_limit.saturating_sub(1);
        }
    }
}

pub(crate) fn build_client(spec: &RunnerSpec, system_id: &str) -> Result<Client, ServiceError> {
    let observer = ApiObserver {
        runner: spec.token.short(),
        system_id: system_id.to_owned(),
    };
    let config = ClientConfig {
        url: spec.url.clone(),
        tls_ca_file: spec.tls_ca_file.clone(),
        tls_cert_file: spec.tls_cert_file.clone(),
        tls_key_file: spec.tls_key_file.clone(),
        observer: Some(Arc::new(observer)),
        ..ClientConfig::default()
    };
    Client::new(config).map_err(|error| ServiceError::Client {
        runner: spec.name.clone(),
        message: error.to_string(),
    })
}

/// State shared by the feeder, the workers and the jobs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Mutex<Arc<ServiceConfig>>,
    slots: Slots,
    runners: Mutex<Vec<Arc<RunnerState>>>,
    /// Fired on any stop: no new requests are started.
    stop_feeding: CancellationToken,
    /// Fired on a forceful stop: in-flight requests are cancelled and jobs aborted.
    pub(crate) abort: CancellationToken,
    tasks: TaskTracker,
    requeue: mpsc::UnboundedSender<Arc<RunnerState>>,
    options: RunOptions,
    builds: std::sync::atomic::AtomicU64,
    last_activity: Mutex<Instant>,
    pub(crate) running: Arc<RunningJobs>,
    journal: Option<Arc<crate::journal::Journal>>,
}

impl Shared {
    pub(crate) fn config(&self) -> Arc<ServiceConfig> {
        Arc::clone(
            &self
                .config
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn runners(&self) -> Vec<Arc<RunnerState>> {
        self.runners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn touch(&self) {
        *self
            .last_activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }
}

/// Runs the daemon until it is told to stop and every job has ended.
pub(crate) async fn run(
    source: Arc<dyn ConfigSource>,
    options: RunOptions,
    on_reload: Box<dyn Fn(&ServiceConfig) + Send + Sync>,
) -> Result<(), ServiceError> {
    let config = source.load();
    m::configuration_loaded(config.is_ok());
    let config = config?;
    if config.concurrent < 1 {
        return Err(ServiceError::Config {
            message: format!(
                "concurrent must be at least 1 (it is {})",
                config.concurrent
            ),
        });
    }
    warn_about(&config);
    on_reload(&config);
    let journal = match &options.journal_dir {
        Some(dir) => Some(crate::journal::Journal::open(dir)?),
        None => None,
    };
    let mut signals = Signals::install()?;
    let (requeue, requeue_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        slots: Slots::new(config.concurrent),
        runners: Mutex::new(Vec::new()),
        config: Mutex::new(Arc::new(config.clone())),
        stop_feeding: CancellationToken::new(),
        abort: CancellationToken::new(),
        tasks: TaskTracker::new(),
        requeue,
        options,
        builds: std::sync::atomic::AtomicU64::new(0),
        last_activity: Mutex::new(Instant::now()),
        running: Arc::default(),
        journal,
    });
    apply_runners(&shared, &config)?;
    metrics()
        .concurrent
        .set(i64::try_from(config.concurrent).unwrap_or(i64::MAX));
    m::slots_resized(0, config.concurrent);
    let stop_http = CancellationToken::new();
    let listen = shared
        .options
        .listen_address
        .clone()
        .or_else(|| config.listen_address.clone());
    let http = match listen {
        Some(address) => {
            let address = crate::http::listen_socket(&address)?;
            let running = Arc::clone(&shared.running);
            Some(tokio::spawn(crate::http::serve(
                address,
                running,
                stop_http.clone(),
            )))
        }
        None => None,
    };
    m::process_state(m::ProcessState::Running);
    tracing::info!(
        concurrent = config.concurrent,
        runners = config.runners.len(),
        "Runnel started; polling GitLab for jobs"
    );
    sweep_docker_leftovers(&shared, &config);
    sweep_kubernetes_leftovers(&shared);

    // Jobs a crashed predecessor was running, and final states not delivered yet.
    let stop_redelivery = CancellationToken::new();
    let redelivery = shared.journal.as_ref().map(|journal| {
        tracing::info!(dir = %journal.dir().display(), "job journal");
        tokio::spawn(crate::journal::redeliver(
            Arc::clone(journal),
            resolver(&shared),
            stop_redelivery.clone(),
        ))
    });
    let feeder = tokio::spawn(feed(Arc::clone(&shared), requeue_rx));
    let rotation = tokio::spawn(crate::rotation::rotate_tokens(
        Arc::clone(&shared),
        Arc::clone(&source),
    ));
    let idle = shared
        .options
        .on_idle
        .clone()
        .map(|hook| tokio::spawn(watch_idle(Arc::clone(&shared), hook)));
    let mut loaded_at = source.modified();
    let mut reload_tick = tokio::time::interval(RELOAD_INTERVAL);
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_tick = tokio::time::interval(Duration::from_millis(200));

    // Phase 1: run until a stop signal (or run-single's own limits).
    let first = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Reload => reload(&shared, source.as_ref(), &on_reload, &mut loaded_at, true),
                stop => break Some(stop),
            },
            _ = reload_tick.tick() => reload(&shared, source.as_ref(), &on_reload, &mut loaded_at, false),
            () = shared.options.stop.cancelled() => break None,
            _ = idle_tick.tick(), if shared.options.wait_timeout.is_some() || shared.options.max_builds.is_some() => {
                if single_done(&shared) {
                    break None;
                }
            }
        }
    };

    shared.stop_feeding.cancel();
    rotation.abort();
    if let Some(idle) = idle {
        idle.abort();
    }
    match first {
        Some(Signal::Graceful) => {
            m::process_state(m::ProcessState::GracefulShutdown);
            tracing::info!(
                "graceful stop requested: no new jobs; waiting for running jobs to finish (send SIGTERM or SIGINT to abort them)"
            );
        }
        Some(_) => {
            m::process_state(m::ProcessState::ForcefulShutdown);
            tracing::warn!(
                "stop requested: aborting running jobs (send the signal again to exit at once)"
            );
            shared.abort.cancel();
        }
        None => tracing::info!("run-single limits reached or stop requested; stopping"),
    }
    if let Err(error) = feeder.await {
        tracing::error!(%error, "the job feeder stopped unexpectedly");
    }
    m::slots_resized(shared.config().concurrent, 0);
    shared.tasks.close();

    // Phase 2: wait for the jobs, escalating on signals and on shutdown_timeout.
    let forceful = matches!(first, Some(Signal::Forceful));
    let shutdown_timeout = shared.config().shutdown_timeout;
    let mut deadline = forceful.then(|| Instant::now() + shutdown_timeout);
    loop {
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.tasks.wait() => {
                stop_http.cancel();
                if let Some(http) = http {
                    match http.await {
                        Ok(Err(error)) => tracing::error!(%error, "metrics server failed"),
                        Err(error) => tracing::error!(%error, "metrics server task failed"),
                        Ok(Ok(())) => {}
                    }
                }
                stop_redelivery.cancel();
                if let Some(redelivery) = redelivery
                    && let Err(error) = redelivery.await
                {
                    tracing::error!(%error, "the journal redelivery task failed");
                }
                return deliver_before_exit(&shared).await;
            }
            signal = signals.next() => match signal {
                Signal::Reload => {}
                _ if deadline.is_some() => return Err(ServiceError::ForcedExit),
                _ => {
                    m::process_state(m::ProcessState::ForcefulShutdown);
                    tracing::warn!("second stop signal: aborting running jobs");
                    shared.abort.cancel();
                    deadline = Some(Instant::now() + shutdown_timeout);
                }
            },
            () = timeout => return Err(ServiceError::ShutdownTimeout(shutdown_timeout)),
        }
    }
}

/// Deletes the pods that a killed earlier run of a kubernetes runner left (found by the
/// runner's `manager.runner.gitlab.com/id-short` label). Runs in the background, with the
/// provider the runner's jobs use, which spares the pods of the jobs it runs or is starting.
fn sweep_kubernetes_leftovers(shared: &Shared) {
    for runner in shared.runners() {
        let spec = runner.spec();
        if spec.executor != "kubernetes" || !spec.can_run_jobs() {
            continue;
        }
        let short = spec.token.short();
        let provider = match runner.kubernetes_provider(&spec) {
            Ok(provider) => provider,
            Err(error) => {
                tracing::warn!(runner = %short, %error, "cannot check for leftover pods");
                continue;
            }
        };
        tokio::spawn(async move {
            match provider.remove_leftovers().await {
                Ok(removed) if removed.is_empty() => {}
                Ok(removed) => {
                    tracing::info!(runner = %short, pods = ?removed, "deleted pods left by an earlier run")
                }
                Err(error) => {
                    tracing::warn!(runner = %short, error = %crate::job::error_chain(&error), "cannot delete leftover pods")
                }
            }
        });
    }
}

/// How a journaled job reaches GitLab: through its runner's client when the runner is still
/// configured (same URL and token), else through a client made from the journaled URL.
fn resolver(shared: &Arc<Shared>) -> Arc<crate::journal::Resolve> {
    let shared = Arc::downgrade(shared);
    Arc::new(move |record: &crate::journal::Record| {
        let shared = shared.upgrade()?;
        let runner = shared.runners().into_iter().find(|runner| {
            let spec = runner.spec();
            spec.url == record.url() && spec.token.short() == record.runner()
        });
        if let Some(runner) = runner {
            let spec = runner.spec();
            let docker = (spec.executor == "docker")
                .then(|| runner.docker_provider(&spec, &shared.config().system_id))
                .and_then(|provider| {
                    provider
                        .map_err(|error| tracing::warn!(%error, "cannot reach docker for a journaled job"))
                        .ok()
                });
            return Some(crate::journal::Route {
                client: runner.client(),
                info: crate::job::runner_info(&spec),
                docker,
            });
        }
        let config = ClientConfig {
            url: record.url().to_owned(),
            ..ClientConfig::default()
        };
        let client = Client::new(config)
            .map_err(|error| tracing::warn!(%error, "cannot make a client for a journaled job"))
            .ok()?;
        Some(crate::journal::Route {
            client: Arc::new(client),
            info: runnel_api::RunnerInfo {
                executor: record.executor().to_owned(),
                ..runnel_api::RunnerInfo::default()
            },
            docker: None,
        })
    })
}

/// The last attempt to deliver what the journal holds; an error names every job left.
async fn deliver_before_exit(shared: &Arc<Shared>) -> Result<(), ServiceError> {
    let Some(journal) = &shared.journal else {
        return Ok(());
    };
    let left = crate::journal::redeliver_once(journal, resolver(shared).as_ref()).await;
    if left.is_empty() {
        return Ok(());
    }
    Err(ServiceError::Undelivered {
        jobs: left,
        dir: journal.dir().to_path_buf(),
    })
}

/// Removes containers, networks and volumes that a crashed earlier run of a docker runner left
/// behind (found by their labels; the jobs this process runs or is starting are spared). Runs
/// in the background, with the provider the runner's jobs use.
fn sweep_docker_leftovers(shared: &Shared, config: &ServiceConfig) {
    for runner in shared.runners() {
        let spec = runner.spec();
        if spec.executor != "docker" {
            continue;
        }
        let short = spec.token.short();
        let provider = match runner.docker_provider(&spec, &config.system_id) {
            Ok(provider) => provider,
            Err(error) => {
                tracing::warn!(runner = %short, %error, "cannot check for docker leftovers");
                continue;
            }
        };
        tokio::spawn(async move {
            match provider.remove_leftovers().await {
                Ok(removed) if removed.is_empty() => {}
                Ok(removed) => {
                    tracing::info!(runner = %short, removed = removed.len(), "removed docker objects left by an earlier run")
                }
                Err(error) => {
                    tracing::warn!(runner = %short, %error, "cannot remove docker leftovers")
                }
            }
        });
    }
}

fn single_done(shared: &Shared) -> bool {
    let options = &shared.options;
    let builds = shared.builds.load(std::sync::atomic::Ordering::SeqCst);
    if options
        .max_builds
        .is_some_and(|max| max > 0 && builds >= max)
    {
        return true;
    }
    if let Some(wait) = options.wait_timeout {
        let idle = shared
            .last_activity
            .lock()
            .map(|at| at.elapsed())
            .unwrap_or_default();
        let jobs_running = !shared.tasks.is_empty() && running_jobs(shared) > 0;
        return !jobs_running && idle >= wait;
    }
    false
}

/// Calls `hook` each time the daemon goes idle: no job running, and none received or finished
/// for [`crate::IDLE_AFTER`]. Once per idle period: a new job starts the next one.
async fn watch_idle(shared: Arc<Shared>, hook: crate::IdleHook) {
    const CHECK: Duration = Duration::from_millis(500);
    let mut called_for = None;
    loop {
        tokio::time::sleep(CHECK).await;
        let last = *shared
            .last_activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if called_for == Some(last)
            || last.elapsed() < crate::IDLE_AFTER
            || running_jobs(&shared) > 0
        {
            continue;
        }
        called_for = Some(last);
        let hook = hook.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || (hook.0)()).await {
            tracing::warn!(%error, "the idle hook failed");
        }
    }
}

fn running_jobs(shared: &Shared) -> usize {
    shared
        .runners()
        .iter()
        .map(|r| {
            r.slot_ids
                .used
                .lock()
                .map(|u| u.iter().filter(|(scope, _)| *scope == 0).count())
                .unwrap_or(0)
        })
        .sum()
}

fn warn_about(config: &ServiceConfig) {
    for runner in &config.runners {
        if runner.token.is_empty() {
            tracing::warn!(runner = %runner.name, "runner has no token and will not be polled");
        }
        if let Some(error) = runner.executor_config_error() {
            tracing::error!(
                runner = %runner.name,
                executor = %runner.executor,
                "{error}; the runner will not request jobs"
            );
        } else if !runner.executor_supported() {
            tracing::warn!(
                runner = %runner.name,
                executor = %runner.executor,
                "this executor is not supported by this build of Runnel yet; the runner will not request jobs"
            );
        }
        let ignored = runner
            .config
            .as_ref()
            .map(|config| config.ignored_keys())
            .unwrap_or_default();
        if !ignored.is_empty() {
            tracing::warn!(
                runner = %runner.name,
                keys = %ignored.join(", "),
                "config.toml keys parsed but not acted upon by Runnel (no job depends on them): {}",
                ignored.join(", ")
            );
        }
        for refused in runner.refused_keys() {
            tracing::error!(
                runner = %runner.name,
                "{refused}; the runner will not request jobs"
            );
        }
        if let Some(shell) = runner.unsupported_shell() {
            tracing::warn!(
                runner = %runner.name,
                shell = %shell,
                "shell {shell:?} is not supported by Runnel (only bash and sh); the runner will not request jobs"
            );
        }
        if runner.limit > config.concurrent || runner.request_concurrency > config.concurrent {
            tracing::warn!(
                runner = %runner.name,
                limit = runner.limit,
                request_concurrency = runner.request_concurrency,
                concurrent = config.concurrent,
                "limit or request_concurrency is larger than concurrent; concurrent bounds them"
            );
        }
    }
}

/// Makes `config` the running configuration: slots resized, runners updated in place.
pub(crate) fn apply_config(shared: &Shared, config: ServiceConfig) -> Result<(), ServiceError> {
    apply_runners(shared, &config)?;
    let previous = shared.config().concurrent;
    shared.slots.resize(config.concurrent);
    m::slots_resized(previous, config.concurrent);
    metrics()
        .concurrent
        .set(i64::try_from(config.concurrent).unwrap_or(i64::MAX));
    *shared
        .config
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
    Ok(())
}

/// Brings the runner list in line with `config`: new runners start, removed ones retire,
/// changed ones update in place. Running jobs keep the state they started with.
fn apply_runners(shared: &Shared, config: &ServiceConfig) -> Result<(), ServiceError> {
    let mut current = shared
        .runners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut by_key: HashMap<(String, String), Arc<RunnerState>> =
        current.drain(..).map(|r| (r.spec().key(), r)).collect();
    let mut next = Vec::with_capacity(config.runners.len());
    let configured: Vec<_> = config
        .runners
        .iter()
        .map(|spec| {
            let labels = [
                spec.token.short(),
                spec.name.clone(),
                config.system_id.clone(),
            ];
            (labels, spec.limit, spec.request_concurrency)
        })
        .collect();
    m::runners_configured(&configured);
    for spec in &config.runners {
        match by_key.remove(&spec.key()) {
            Some(state) => {
                state.update(spec.clone(), &config.system_id)?;
                next.push(state);
            }
            None => next.push(Arc::new(RunnerState::new(spec.clone(), &config.system_id)?)),
        }
    }
    for retired in by_key.into_values() {
        tracing::info!(runner = %retired.spec().token.short(), "runner removed from the configuration; no longer polling it");
        retired.retired.cancel();
    }
    *current = next;
    Ok(())
}

fn reload(
    shared: &Shared,
    source: &dyn ConfigSource,
    on_reload: &(dyn Fn(&ServiceConfig) + Send + Sync),
    loaded_at: &mut Option<SystemTime>,
    forced: bool,
) {
    let modified = source.modified();
    if !forced && (modified.is_none() || modified <= *loaded_at) {
        return;
    }
    // Remember the new mtime even if the file is broken, so we do not retry the same content.
    *loaded_at = modified;
    let loaded = source.load();
    m::configuration_loaded(loaded.is_ok());
    match loaded {
        Ok(config) if config.concurrent >= 1 => {
            warn_about(&config);
            on_reload(&config);
            let (concurrent, runners) = (config.concurrent, config.runners.len());
            match apply_config(shared, config) {
                Ok(()) => tracing::info!(concurrent, runners, "configuration loaded"),
                Err(error) => tracing::error!(
                    %error,
                    "configuration reload failed; keeping the previous runners"
                ),
            }
        }
        Ok(config) => tracing::error!(
            concurrent = config.concurrent,
            "configuration reload ignored: concurrent must be at least 1"
        ),
        Err(error) => {
            tracing::error!(%error, "configuration reload failed; keeping the previous configuration")
        }
    }
}

/// The feeder: hands runners to free slots, evenly over `check_interval`.
async fn feed(shared: Arc<Shared>, mut requeue: mpsc::UnboundedReceiver<Arc<RunnerState>>) {
    loop {
        let runners: Vec<_> = shared
            .runners()
            .into_iter()
            .filter(|r| {
                let spec = r.spec();
                !spec.token.is_empty() && spec.can_run_jobs()
            })
            .collect();
        let check_interval = shared.config().check_interval;
        if runners.is_empty() {
            tokio::select! {
                () = shared.stop_feeding.cancelled() => return,
                () = tokio::time::sleep(check_interval) => continue,
            }
        }
        let pace = check_interval / u32::try_from(runners.len()).unwrap_or(u32::MAX);
        for runner in runners {
            if !start_worker(&shared, runner).await {
                return;
            }
            let next_feed = Instant::now() + pace;
            // Between feeds, serve requeues at once: a runner that just got a job asks again.
            loop {
                tokio::select! {
                    () = shared.stop_feeding.cancelled() => return,
                    () = tokio::time::sleep_until(next_feed) => break,
                    Some(runner) = requeue.recv() => {
                        if !start_worker(&shared, runner).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Waits for a free slot and starts a worker for `runner`; false when stopping.
async fn start_worker(shared: &Arc<Shared>, runner: Arc<RunnerState>) -> bool {
    if runner.retired.is_cancelled() {
        return true;
    }
    let permit = tokio::select! {
        () = shared.stop_feeding.cancelled() => return false,
        permit = shared.slots.take() => permit,
    };
    let Some(permit) = permit else { return false };
    let spec = runner.spec();
    let labels = [
        spec.token.short(),
        spec.name.clone(),
        shared.config().system_id.clone(),
    ];
    // As the official feeder does, an unhealthy runner is not handed to the worker.
    let healthy = runner.healthy(Instant::now());
    m::worker_fed(&labels, healthy);
    if !healthy {
        return true;
    }
    let worker_shared = Arc::clone(shared);
    shared
        .tasks
        .spawn(async move { work(worker_shared, runner, permit).await });
    true
}

/// One worker turn: request a job for `runner`, and run it if there is one.
async fn work(shared: Arc<Shared>, runner: Arc<RunnerState>, slot: OwnedSemaphorePermit) {
    if !runner.healthy(Instant::now()) {
        return;
    }
    let Some(limit) = runner.limit.try_take() else {
        return;
    };
    let spec = runner.spec();
    let config = shared.config();
    let short = spec.token.short();
    let request_permit = runner.requests.try_take();
    let Some(in_flight) = m::job_request(&short, &config.system_id, request_permit.is_some())
    else {
        return;
    };
    let info = crate::job::runner_info(&spec);
    let request = JobRequest {
        token: &spec.token,
        system_id: &config.system_id,
        info: &info,
    };
    let client = runner.client();
    tracing::debug!(runner = %spec.token.short(), "checking for jobs");
    let result = client.request_job(&request, &shared.abort).await;
    drop(in_flight);
    drop(request_permit);
    match result {
        JobRequestResult::Job(job) => {
            runner.record_health(true);
            *runner
                .failure_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = FailureLog::default();
            shared.touch();
            if !spec.strict_check_interval && !shared.stop_feeding.is_cancelled() {
                // The feeder only stops receiving when the daemon stops; then no requeue is wanted.
                shared.requeue.send(Arc::clone(&runner)).ok();
            }
            shared
                .builds
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            run_received_job(&shared, &runner, *job, client).await;
            shared.touch();
        }
        JobRequestResult::Undecodable(job) => {
            runner.record_health(true);
            shared.touch();
            report_undecodable(&client, &info, *job).await;
        }
        JobRequestResult::NoJob => {
            runner.record_health(true);
            tracing::debug!(runner = %spec.token.short(), "no job");
        }
        JobRequestResult::Cancelled => {}
        other => {
            runner.record_health(!other.is_unhealthy());
            if other.is_unhealthy() {
                m::health_check_failed(&[
                    short.clone(),
                    spec.name.clone(),
                    config.system_id.clone(),
                ]);
            }
            let problem = match &other {
                JobRequestResult::Forbidden => "forbidden (is the runner token valid?)".to_owned(),
                JobRequestResult::Unavailable => "GitLab instance currently unavailable".to_owned(),
                JobRequestResult::Conflict => "job taken by another runner".to_owned(),
                JobRequestResult::Failed(error) => crate::job::error_chain(error),
                _ => "unexpected answer".to_owned(),
            };
            let admitted = runner
                .failure_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .admit(Instant::now());
            if let Some(suppressed) = admitted {
                tracing::warn!(
                    runner = %spec.token.short(),
                    %problem,
                    similar_failures_not_logged = suppressed,
                    "checking for jobs failed"
                );
            }
        }
    }
    drop(limit);
    drop(slot);
}

/// Review L7: GitLab assigned a job whose payload could not be decoded. Report it failed
/// (`runner_system_failure`) with the decoding error as its log, instead of leaving it pending
/// until GitLab's stuck-job timeout.
async fn report_undecodable(
    client: &Client,
    info: &runnel_api::RunnerInfo,
    job: runnel_api::UndecodableJob,
) {
    let runnel_api::UndecodableJob { id, token, error } = job;
    let error = crate::job::error_chain(&error);
    tracing::error!(job = %id, %error, "the job payload could not be decoded; reporting the job failed");
    let config = runnel_trace::TraceConfig {
        masked: vec![runnel_types::Secret::new(token.expose())],
        ..runnel_trace::TraceConfig::default()
    };
    let Ok(trace) = runnel_trace::JobTrace::new(config) else {
        return;
    };
    trace.error(&format!(
        "Job failed (system failure): the runner could not read the job: {error}"
    ));
    trace.finish();
    let content = trace
        .read_from(0, runnel_api::TRACE_PATCH_LIMIT)
        .unwrap_or_default();
    let patch = runnel_api::TracePatch {
        job_id: id,
        token: &token,
        offset: 0,
        content,
        debug_trace: false,
    };
    if let Err(error) = client.patch_trace(&patch).await {
        tracing::warn!(job = %id, %error, "could not send the log of an undecodable job");
    }
    let update = runnel_api::JobUpdate {
        job_id: id,
        token: &token,
        state: runnel_types::JobState::Failed,
        failure_reason: Some(runnel_types::FailureReason::RunnerSystemFailure),
        exit_code: None,
        output: runnel_api::TraceSummary {
            crc32: trace.crc32(),
            bytesize: trace.bytesize() as u64,
        },
        info,
    };
    let result = client.update_job(&update).await;
    if let runnel_api::UpdateOutcome::Failed(error) = result.outcome {
        tracing::warn!(job = %id, %error, "could not report an undecodable job failed");
    }
}

async fn run_received_job(
    shared: &Arc<Shared>,
    runner: &Arc<RunnerState>,
    job: JobSpec,
    client: Arc<Client>,
) {
    let spec = runner.spec();
    let config = shared.config();
    let slot = runner.slot_ids.take(0);
    let project_slot = runner.slot_ids.take(job.info.project_id.saturating_add(1));
    tracing::info!(job = %job.id, runner = %spec.token.short(), "job received");
    let labels = [
        spec.token.short(),
        spec.name.clone(),
        config.system_id.clone(),
    ];
    m::record_job_received(&labels, &spec.executor, &job.info);
    let tracked = shared.running.register(
        job.id,
        labels,
        // Review L4: the debug page shows this URL; it must not carry credentials.
        runnel_types::url_without_userinfo(&spec.url),
    );
    let provider = crate::job::JobProvider(crate::job::provider_for(
        &spec,
        config.user.as_deref(),
        || runner.docker_provider(&spec, &config.system_id),
        || runner.kubernetes_provider(&spec),
        |options| runner.shell_provider(options),
    ));
    let context = JobContext {
        tracked,
        runner: spec,
        config,
        client,
        concurrent_id: slot.index,
        concurrent_project_id: project_slot.index,
        provider,
        interrupt: shared.abort.clone(),
        journal: shared.journal.clone(),
    };
    let outcome = run_job(job, context).await;
    tracing::info!(job = %outcome.job, state = %outcome.summary, "job finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_lines_are_rate_limited_and_count_what_they_hold_back() {
        let mut log = FailureLog::default();
        let start = Instant::now();
        assert_eq!(log.admit(start), Some(0));
        assert_eq!(log.admit(start + Duration::from_secs(1)), None);
        assert_eq!(log.admit(start + Duration::from_secs(2)), None);
        assert_eq!(
            log.admit(start + FAILURE_LOG_EVERY + Duration::from_secs(1)),
            Some(2)
        );
    }

    #[test]
    fn slot_ids_are_the_lowest_free() {
        let ids = Arc::new(SlotIds::default());
        let a = ids.take(0);
        let b = ids.take(0);
        assert_eq!((a.index, b.index), (0, 1));
        drop(a);
        assert_eq!(ids.take(0).index, 0);
        assert_eq!(ids.take(7).index, 0, "scopes are independent");
    }
}
