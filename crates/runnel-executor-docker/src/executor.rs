//! The Docker executor: [`DockerProvider`] per `[[runners]]` entry, [`DockerExecutor`] per job.
//!
//! `prepare` follows the official container model: it checks and gets the images (pull
//! policies, `allowed_*`), creates the per-job network (with `FF_NETWORK_PER_BUILD` or
//! services, unless `network_mode` is set), the builds volume (the slot's reusable one for
//! `GIT_STRATEGY=fetch`, a temporary one otherwise) and the cache volumes, starts the services
//! and waits for them, then creates the helper ("predefined") container from the helper image
//! and the build container from the job's image and starts both: their shells read the stages
//! from stdin, one after another (the `stage` module). `cleanup` removes the containers, the
//! temporary volumes and the network (by id), also after a failure or a cancellation; reusable
//! volumes stay. Through `cleanup_deferred` (what the job runner uses) the removal waits until
//! the job's final state is reported: it is not on the path of the job's result, and the job's
//! journal record keeps the container ids until it is done.
//!
//! A job whose predefined stages only keep house (no git, no cache or artifact helper, no
//! hook: `PrepareContext::predefined_housekeeping_only`) and whose build container runs as
//! root gets no helper container: the build container runs those stages too, each with the
//! helper's `umask 0000`, so what they create is what the helper would have made. One
//! container starts instead of two, which is most of such a job's time.
//!
//! A trivial job costs 8 Engine requests once the provider has met its daemon: two container
//! creates, attaches, starts and removals (4 without a helper). The job image is not inspected
//! again while the provider follows the image events ([`crate::image_cache`]), and the
//! resource figures come from the containers' cgroups when they are visible here
//! ([`crate::resources`]).
//!
//! Volumes cost no requests of their own: the helper container mounts them all (`Mounts`), the
//! engine creating a missing cache volume with its labels and each temporary one as an
//! anonymous volume of the helper, and the build container takes the helper's (`VolumesFrom`).
//! The helper is removed last at cleanup, its anonymous volumes with it. Without a helper, the
//! build container mounts them itself, empty (`NoCopy`), and owns the temporary ones.
//!
//! `prepare` has no job log to write to, so what it would print (the image used, service
//! warnings) is kept and written to the sink before the first stage's output.
//!
//! Not done yet: Windows containers, the session terminal, and recreating a container that
//! vanished mid-job.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, RemoveVolumeOptions,
};
use runnel_config::{DockerConfig, RunnerConfig};
use runnel_executor::{
    BoxFuture, Executor, ExecutorError, ExecutorFeatures, ExecutorInfo, OutputSink, OutputStream,
    PrepareContext, Provider, Shell, StageCommand, StageExit, StageKind,
};
use runnel_types::{ImageSpec, JobSpec, RunnerToken};
use tokio_util::sync::CancellationToken;

use crate::image::{
    FoundImage, check_allowed, effective_pull_policies, ensure_image, ensure_image_found,
    runs_as_root,
};
use crate::naming::{
    JobNames, LabelContext, NameParts, ObjectType, labels, service_aliases, split_aliases,
};
use crate::options::{ContainerRole, DockerOptions, VolumeSpec};
use crate::services::{
    ServiceLogFollower, ServiceRequest, StartedService, service_env, start_service,
    wait_for_services,
};
use crate::stage::{Session, Target, open_session, run_stage, tell_exit, wait_ended};
use crate::{DockerError, client};

/// What the Docker executor is and reports.
pub const DOCKER_EXECUTOR_INFO: ExecutorInfo = ExecutorInfo {
    name: "docker",
    features: ExecutorFeatures {
        variables: true,
        image: true,
        services: true,
        shared: false,
        session: false,
        terminal: false,
        proxy: false,
        service_variables: true,
        service_multiple_aliases: true,
        image_executor_opts: true,
        service_executor_opts: false,
        native_steps_integration: false,
    },
    default_shell: Shell::Bash,
    default_builds_dir: "/builds",
    default_cache_dir: "/cache",
    shared_builds_dir: false,
};

/// How often a name that is taken is replaced by another before creating fails.
const NAME_ATTEMPTS: u32 = 3;

/// How long the shells of a finished job get to take their `exit`, and to end, before their
/// containers are removed anyway (which stops them).
const SESSION_EXIT_WAIT: Duration = Duration::from_secs(2);

/// How long cleanup may take in all.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The runner-level settings the executor needs besides `[runners.docker]`.
#[derive(Clone, Debug)]
pub struct DockerSettings {
    /// The short runner token, for names and labels.
    pub short_token: String,
    /// The full runner token: hashed into the names of reusable volumes, never shown.
    pub token: RunnerToken,
    /// The runner's system id, hashed into the names of reusable volumes.
    pub system_id: String,
    /// The runner id (`[[runners]] id`, 0 when unknown).
    pub runner_id: u64,
    /// The GitLab URL, for the `job.url` label.
    pub gitlab_url: String,
    /// The shell scripts are written for.
    pub shell: Shell,
    /// The configured `helper_image`; empty for Runnel's own helper image, which it assembles
    /// on first use ([`crate::helper_image`]).
    pub helper_image: String,
    /// The runner binary for Runnel's own helper image (default: the running executable).
    pub helper_binary: Option<std::path::PathBuf>,
}

/// Creates Docker executors for one `[[runners]]` entry. Build it once per entry and keep it:
/// it holds the negotiated client and what it learnt about the helper image.
#[derive(Debug)]
pub struct DockerProvider {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    host: String,
    options: DockerOptions,
    settings: DockerSettings,
    /// The client with the negotiated API version, made by the first job that reached the
    /// daemon.
    client: tokio::sync::OnceCell<Docker>,
    active_jobs: ActiveJobs,
    /// How long after a job's timeout its containers stop by themselves.
    hard_stop_grace: Duration,
    /// The configured helper image as the first job found it (not inspected for every job).
    known_helpers: crate::helper_image::KnownHelpers,
    /// The job images found locally, while no image event says they changed.
    images: crate::image_cache::ImageCache,
}

/// The ids of the jobs a runner's executors run or are preparing: leftover removal spares
/// their objects. Shared by the providers that follow each other on reloads.
type ActiveJobs = Arc<Mutex<BTreeSet<u64>>>;

/// A job registered in its runner's [`ActiveJobs`] until dropped.
#[derive(Debug)]
struct ActiveJob {
    jobs: ActiveJobs,
    job_id: u64,
}

impl ActiveJob {
    fn register(jobs: &ActiveJobs, job_id: u64) -> Self {
        lock(jobs).insert(job_id);
        ActiveJob {
            jobs: Arc::clone(jobs),
            job_id,
        }
    }
}

impl Drop for ActiveJob {
    fn drop(&mut self) {
        lock(&self.jobs).remove(&self.job_id);
    }
}

/// How long [`DockerProvider::remove_containers`] waits for a removal already under way.
const REMOVAL_POLL: Duration = Duration::from_millis(250);
const REMOVAL_POLLS: u32 = 120;

impl DockerProvider {
    /// A provider for `settings` and `[runners.docker]` `config`. The values are checked now;
    /// the daemon is contacted by the first job's `prepare`, so it may start after the runner.
    pub fn new(settings: DockerSettings, config: &DockerConfig) -> Result<Self, DockerError> {
        let options = DockerOptions::from_config(config)?;
        Ok(DockerProvider {
            shared: Arc::new(Shared {
                host: client::docker_host(config),
                options,
                settings,
                client: tokio::sync::OnceCell::new(),
                active_jobs: ActiveJobs::default(),
                hard_stop_grace: crate::watchdog::HARD_STOP_GRACE,
                known_helpers: crate::helper_image::KnownHelpers::default(),
                images: crate::image_cache::ImageCache::default(),
            }),
        })
    }

    /// Sets how long after a job's timeout its containers stop by themselves (default
    /// [`crate::watchdog::HARD_STOP_GRACE`]). Only before the first job.
    pub fn with_hard_stop_grace(mut self, grace: Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.hard_stop_grace = grace;
        }
        self
    }

    /// This (new) provider replaces `previous` for the same runner, after a reload changed
    /// its configuration: the jobs `previous` still runs stay spared by leftover removal.
    #[must_use]
    pub fn succeeding(mut self, previous: &DockerProvider) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.active_jobs = Arc::clone(&previous.shared.active_jobs);
        }
        self
    }

    /// A provider for a `[[runners]]` entry, which needs a `[runners.docker]` section;
    /// `system_id` is the runner's `.runner_system_id`.
    pub fn from_runner(runner: &RunnerConfig, system_id: &str) -> Result<Self, DockerError> {
        let config = runner
            .docker
            .as_ref()
            .ok_or_else(|| DockerError::MissingSection {
                runner: runner.name.clone(),
            })?;
        let shell = match runner.shell.map(|shell| shell.as_str()) {
            Some("sh") => Shell::Sh,
            _ => Shell::Bash,
        };
        let settings = DockerSettings {
            short_token: runner.token.short(),
            token: runner.token.clone(),
            system_id: system_id.to_owned(),
            runner_id: runner.id.unwrap_or(0),
            // Review L4: it goes into the `job.url` label; never with credentials.
            gitlab_url: runnel_types::url_without_userinfo(&runner.url),
            shell,
            helper_image: config.helper_image.clone().unwrap_or_default(),
            helper_binary: None,
        };
        Self::new(settings, config)
    }

    /// Connects to the daemon and checks that it answers; returns a client with the
    /// negotiated API version.
    pub async fn ping(&self) -> Result<Docker, DockerError> {
        self.shared.connect().await
    }
}

impl Shared {
    /// The negotiated client: the first call negotiates the API version and pings, later
    /// calls reuse it (a failure is not kept, so the next job tries again).
    async fn connect(&self) -> Result<Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let docker = client::connect(&self.options.config)?;
                client::ping(docker, &self.host).await
            })
            .await
            .cloned()
    }

    /// The job's helper image and its name: Runnel's own (built on first use, never pulled)
    /// or the configured one, by the pull policies.
    async fn resolve_helper(
        &self,
        docker: &Docker,
        job: &JobSpec,
        log: &mut Vec<String>,
    ) -> Result<(String, String), DockerError> {
        crate::helper_image::resolve(
            docker,
            &self.host,
            &self.settings.helper_image,
            self.settings.helper_binary.as_deref(),
            &self.options.pull_policies(),
            job,
            &self.known_helpers,
            log,
        )
        .await
    }
}

impl Shared {
    /// The job image `image` (its id and user), by `policies`: the one an earlier job found locally
    /// when it is still valid ([`crate::image_cache`]) and the policies would use a local image
    /// first, else got by [`ensure_image`]. The job log gets the same lines either way.
    async fn job_image(
        &self,
        docker: &Docker,
        image: &str,
        policies: &[runnel_config::PullPolicy],
        job: &JobSpec,
        platform: &str,
        log: &mut Vec<String>,
    ) -> Result<FoundImage, DockerError> {
        use runnel_config::PullPolicy;
        let reusable = !policies.is_empty() && !policies.contains(&PullPolicy::Always);
        if !reusable {
            return ensure_image_found(
                docker,
                image,
                policies,
                crate::auth::credentials_for(image, job),
                platform,
                log,
            )
            .await;
        }
        self.images.watch(docker);
        if let Some(found) = self.images.get(image) {
            // What `ensure_image` says when its first policy finds the image locally.
            if policies.first() == Some(&PullPolicy::IfNotPresent) {
                log.push(crate::image::LOCAL_IMAGE_LINE.to_owned());
            }
            return Ok(found);
        }
        let token = self.images.token();
        let found = ensure_image_found(
            docker,
            image,
            policies,
            crate::auth::credentials_for(image, job),
            platform,
            log,
        )
        .await?;
        self.images.insert(image, &found, token);
        Ok(found)
    }
}

/// Force-removes container `id` with its anonymous volumes; `false` when it was gone already.
/// When another removal of it is under way (the leftover sweep and a journaled job's removal
/// can meet), waits until it is gone, so what it used (its volumes) is free afterwards.
async fn force_remove_container(docker: &Docker, id: &str) -> Result<bool, bollard::errors::Error> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(true),
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) if is_conflict(&error) => {
            for _ in 0..REMOVAL_POLLS {
                tokio::time::sleep(REMOVAL_POLL).await;
                if let Err(error) = docker.inspect_container(id, None).await
                    && is_not_found(&error)
                {
                    return Ok(true);
                }
            }
            Err(error)
        }
        Err(error) => Err(error),
    }
}

/// Docker's answer for a name that is taken.
fn is_conflict(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// Docker's answer for an object that is gone.
fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerProvider {
    /// Force-removes the containers `ids` (of a job whose runner died: the job journal kept
    /// their ids); containers already gone are skipped. Returns how many were removed.
    pub async fn remove_containers(&self, ids: &[String]) -> Result<usize, DockerError> {
        let docker = self.shared.connect().await?;
        let mut removed = 0;
        for id in ids {
            if force_remove_container(&docker, id)
                .await
                .map_err(|source| DockerError::api("remove container", id.clone(), source))?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the containers, networks and temporary volumes that earlier runs with this
    /// runner's token left behind (a crash, a killed runner), sparing every job this provider
    /// (and the ones it succeeded) runs or is preparing: an object is checked against them after it was listed, and a job
    /// registers before it creates anything, so a job starting during the sweep is never
    /// touched. Objects are removed by id, so leftovers sharing a name all go. Reusable
    /// volumes (caches, the builds volumes of fetching jobs) are kept. Returns the names of
    /// what was removed.
    ///
    /// Objects are matched by the `runner.id` label (the short token), so another process
    /// running jobs with the same token on the same daemon would lose its containers.
    pub async fn remove_leftovers(&self) -> Result<Vec<String>, DockerError> {
        let docker = self.shared.connect().await?;
        let short_token = self.shared.settings.short_token.as_str();
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{}.managed=true", crate::naming::LABEL_PREFIX),
                format!("{}.runner.id={short_token}", crate::naming::LABEL_PREFIX),
            ],
        )]);
        let job_label = format!("{}.job.id", crate::naming::LABEL_PREFIX);
        // Asked for each object after it was listed, never from an earlier copy.
        let spared = |labels: Option<&HashMap<String, String>>| {
            labels
                .and_then(|labels| labels.get(&job_label))
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| lock(&self.shared.active_jobs).contains(&id))
        };
        let mut removed = Vec::new();
        let containers = docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .map_err(|source| DockerError::api("list leftover containers", "", source))?;
        for container in containers {
            if spared(container.labels.as_ref()) {
                continue;
            }
            let Some(id) = container.id else { continue };
            let name = container
                .names
                .and_then(|names| names.into_iter().next())
                .unwrap_or_else(|| id.clone());
            match force_remove_container(&docker, &id).await {
                Ok(true) => removed.push(name.trim_start_matches('/').to_owned()),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(container = %name, %error, "failed to remove leftover container")
                }
            }
        }
        let networks = docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(|source| DockerError::api("list leftover networks", "", source))?;
        for network in networks {
            if spared(network.labels.as_ref()) {
                continue;
            }
            let Some(id) = network.id else { continue };
            let name = network.name.unwrap_or_else(|| id.clone());
            match docker.remove_network(&id).await {
                Ok(()) => removed.push(name),
                Err(error) if is_not_found(&error) => {}
                Err(error) => {
                    tracing::warn!(network = %name, %error, "failed to remove leftover network")
                }
            }
        }
        let volumes = docker
            .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|source| DockerError::api("list leftover volumes", "", source))?;
        let reusable = format!("{}.reusable", crate::naming::LABEL_PREFIX);
        for volume in volumes.volumes.unwrap_or_default() {
            if volume.labels.get(&reusable).map(String::as_str) == Some("true")
                || spared(Some(&volume.labels))
            {
                continue;
            }
            match docker
                .remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true }))
                .await
            {
                Ok(()) => removed.push(volume.name),
                Err(error) if is_not_found(&error) => {}
                Err(error) => {
                    tracing::warn!(volume = %volume.name, %error, "failed to remove leftover volume")
                }
            }
        }
        Ok(removed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Provider for DockerProvider {
    fn info(&self) -> &ExecutorInfo {
        &DOCKER_EXECUTOR_INFO
    }

    fn create(&self) -> Result<Box<dyn Executor>, ExecutorError> {
        Ok(Box::new(DockerExecutor::new(Arc::clone(&self.shared))))
    }
}

/// A created container.
#[derive(Clone, Debug)]
struct Container {
    id: String,
    name: String,
}

impl Container {
    fn target(&self) -> Target<'_> {
        Target {
            id: &self.id,
            name: &self.name,
        }
    }
}

/// The per-job network, removed by id.
#[derive(Clone, Debug)]
struct Network {
    id: String,
    name: String,
}

/// Runs one job's stages in containers.
#[derive(Debug)]
pub struct DockerExecutor {
    shared: Arc<Shared>,
    docker: Option<Docker>,
    image: Option<String>,
    network: Option<Network>,
    containers: Vec<Container>,
    predefined: Option<Container>,
    build: Option<Container>,
    pending_output: Vec<u8>,
    /// Service output streamed into the job log (`CI_DEBUG_SERVICES`).
    service_logs: Option<ServiceLogFollower>,
    /// CPU and memory of the job's containers, from their stats.
    resources: crate::resources::ResourceMonitor,
    /// The shell sessions of the started helper and build containers.
    predefined_session: Option<Session>,
    build_session: Option<Session>,
    /// The predefined stages run in the build container (there is no helper container): they
    /// only keep house and the build container runs as root.
    predefined_in_build: bool,
    /// The stage marker nonce of this job's sessions.
    nonce: String,
    /// Registered from the start of `prepare` until this executor is dropped (after cleanup).
    active: Option<ActiveJob>,
}

impl DockerExecutor {
    fn new(shared: Arc<Shared>) -> Self {
        let cgroup_parent = shared.options.config.cgroup_parent.clone();
        DockerExecutor {
            shared,
            docker: None,
            image: None,
            network: None,
            containers: Vec::new(),
            predefined: None,
            build: None,
            pending_output: Vec::new(),
            service_logs: None,
            resources: crate::resources::ResourceMonitor::new(cgroup_parent),
            predefined_session: None,
            build_session: None,
            predefined_in_build: false,
            nonce: crate::stage::nonce(),
            active: None,
        }
    }

    fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The names of the containers this executor created, helper first.
    pub fn container_names(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.name.clone()).collect()
    }

    async fn prepare_job(&mut self, ctx: &PrepareContext<'_>) -> Result<(), DockerError> {
        let shared = Arc::clone(&self.shared);
        let options = &shared.options;
        let config = &options.config;
        let settings = &shared.settings;
        let job = ctx.job;
        if self.active.is_none() {
            // Before anything is created: the leftover sweep must see this job as running.
            self.active = Some(ActiveJob::register(&shared.active_jobs, job.id.0));
        }
        let docker = shared.connect().await?;
        self.docker = Some(docker.clone());
        if options.mac_address_endpoint(None).is_some() {
            // Before API 1.44 the address was a container setting, which the engine's newer
            // endpoint field does not replace: an older engine would ignore it.
            let version = docker.client_version();
            let (major, minor) = (version.major_version, version.minor_version);
            if (major, minor) < (1, 44) {
                return Err(DockerError::EngineTooOld {
                    feature: "mac_address",
                    needed: "1.44",
                    engine: format!("{major}.{minor}"),
                });
            }
        }

        // Images first: nothing is created for a job whose images are missing or forbidden.
        let job_image = job.image.as_ref().filter(|image| !image.name.is_empty());
        let image = match job_image {
            Some(image) => {
                let name = expand_job_variables(job, &image.name);
                check_allowed("image", &name, &config.allowed_images)?;
                name
            }
            None => config
                .image
                .clone()
                .filter(|image| !image.is_empty())
                .ok_or(DockerError::NoImage)?,
        };
        let policies = effective_pull_policies(
            &image,
            job_image.map_or(&[][..], |image| &image.pull_policy[..]),
            &options.pull_policies(),
            &config.allowed_pull_policies,
        )?;
        self.image = Some(image.clone());
        let platform = job_image.map_or("", |image| image.docker_platform.as_str());
        let mut log = Vec::new();
        let pulled = shared
            .job_image(&docker, &image, &policies, job, platform, &mut log)
            .await;
        self.note_lines(&mut log);
        let FoundImage {
            id: image_id,
            user: image_user,
        } = pulled?;
        self.note(&format!("Using docker image {image_id} for {image} ...\n"));
        let services = self.service_specs(job)?;
        for service in &services {
            let policies = effective_pull_policies(
                &service.name,
                &service.pull_policy,
                &options.pull_policies(),
                &config.allowed_pull_policies,
            )?;
            let pulled = ensure_image(
                &docker,
                &service.name,
                &policies,
                crate::auth::credentials_for(&service.name, job),
                &service.docker_platform,
                &mut log,
            )
            .await;
            self.note_lines(&mut log);
            pulled?;
        }
        // Runnel's own helper image (built on first use, never pulled), or the configured one.
        let helper_image = shared.resolve_helper(&docker, job, &mut log).await;
        self.note_lines(&mut log);
        let (helper_image, helper_name) = helper_image?;

        let names = JobNames::random(&NameParts {
            short_token: &settings.short_token,
            token: settings.token.expose(),
            system_id: &settings.system_id,
            project_id: job.info.project_id,
            slot: ctx.project_slot,
            job_id: job.id.0,
            protected: crate::naming::is_protected(job),
        });
        let label_ctx = LabelContext {
            short_token: &settings.short_token,
            slot: ctx.project_slot,
            gitlab_url: &settings.gitlab_url,
            extra: &config.container_labels,
        };

        // A job network as the official runner makes one with FF_NETWORK_PER_BUILD; without
        // the flag the official runner uses the default bridge, which Runnel also does for
        // jobs without services (it keeps a job network for services instead of legacy links).
        let wants_network = ctx.network_per_build || !services.is_empty();
        if wants_network && config.network_mode.as_deref().is_none_or(str::is_empty) {
            let mut network_options = HashMap::new();
            if config.network_mtu > 0 {
                network_options.insert(
                    "com.docker.network.driver.mtu".to_owned(),
                    config.network_mtu.to_string(),
                );
            }
            let mut name = names.network();
            // Engines before API 1.44 accept a second network of a name (bollard sends no
            // duplicate check), after which the name is ambiguous and containers on it cannot
            // start: a name a leftover holds is not used again.
            let free = matches!(
                docker.inspect_network(&name, None).await,
                Err(ref error) if is_not_found(error)
            );
            if !free {
                tracing::debug!(network = %name, "network name taken; using another");
                name = format!("{}-{}", names.network(), crate::naming::random_part());
            }
            let mut attempt = 0;
            loop {
                let created = docker
                    .create_network(NetworkCreateRequest {
                        name: name.clone(),
                        driver: Some("bridge".to_owned()),
                        enable_ipv6: config.enable_ipv6.then_some(true),
                        options: Some(network_options.clone()),
                        labels: Some(labels(&label_ctx, job, ObjectType::Network, None)),
                        ..NetworkCreateRequest::default()
                    })
                    .await;
                match created {
                    Ok(created) => {
                        self.network = Some(Network {
                            id: created.id,
                            name,
                        });
                        break;
                    }
                    // The name is taken (a leftover of a killed run): another name, never a
                    // failed job. The leftover goes with the next sweep.
                    Err(error) if is_conflict(&error) && attempt < NAME_ATTEMPTS => {
                        attempt += 1;
                        tracing::debug!(network = %name, "network name taken; using another");
                        name = format!("{}-{}", names.network(), crate::naming::random_part());
                    }
                    Err(source) => {
                        return Err(DockerError::api("create network", name, source));
                    }
                }
            }
        }
        // Containers join the network by id: on engines that accept duplicate network names
        // (API < 1.44 without CheckDuplicate), a leftover with the same name would make the
        // name ambiguous.
        let network = self.network.as_ref().map(|network| network.id.clone());
        let network_name = self.network.as_ref().map(|network| network.name.clone());

        let (binds, mounts) = self.volumes(ctx, &names, &label_ctx);

        let mut started = Vec::new();
        for (index, service) in services.iter().enumerate() {
            let mut aliases = service_aliases(&service.name);
            for alias in &service.aliases {
                if !aliases.contains(alias) {
                    aliases.push(alias.clone());
                }
            }
            let name = names.service(&service.name, index);
            let result = start_service(
                &docker,
                ServiceRequest {
                    spec: service,
                    name: name.clone(),
                    aliases,
                    labels: labels(&label_ctx, job, ObjectType::Service, Some(&service.name)),
                    env: service_env(&job.variables, service),
                    host_config: options.host_config(
                        ContainerRole::Service,
                        &service.name,
                        Vec::new(),
                        network.as_deref(),
                    ),
                    network: network.as_deref(),
                },
            )
            .await;
            match result {
                Ok(service) => {
                    self.containers.push(Container {
                        id: service.id.clone(),
                        name: service.name.clone(),
                    });
                    started.push(service);
                }
                Err(error) => {
                    // A created but unstarted container must still be cleaned up.
                    self.containers.push(Container {
                        id: name.clone(),
                        name,
                    });
                    return Err(error);
                }
            }
        }
        if ctx.debug_services && !started.is_empty() {
            // From the first line each service wrote, so its start-up is in the log too.
            self.service_logs = Some(ServiceLogFollower::start(&docker, &started));
        }
        self.wait_for(&docker, &started, network_name.as_deref())
            .await;

        let shell_command = detect_shell_command(settings.shell, false);
        // Containers stop by themselves after the job's timeout and a grace, even when this
        // runner is gone by then.
        let hard_deadline = crate::watchdog::hard_deadline(job.timeout, shared.hard_stop_grace);

        let user = job_image
            .map(|image| image.docker_user.clone())
            .filter(|user| !user.is_empty())
            .or_else(|| config.user.clone().filter(|user| !user.is_empty()));
        if let Some(user) = &user
            && job_image.is_some_and(|image| !image.docker_user.is_empty())
            && !config.allowed_users.is_empty()
            && !config.allowed_users.contains(user)
        {
            return Err(DockerError::NotAllowed {
                what: "user",
                image: user.clone(),
                allowed: config.allowed_users.join(", "),
            });
        }
        // Predefined stages that only keep house (no git, helper command or hook) run in the
        // build container when it runs as root, as the helper does, with the helper's umask
        // (`run`): the job then needs one container, not two. The build container owns the
        // volumes then.
        self.predefined_in_build =
            ctx.predefined_housekeeping_only && runs_as_root(user.as_deref(), &image_user);

        let helper = ContainerCreateBody {
            image: Some(helper_image),
            // Files the helper writes (sources, caches) must stay writable for any job user.
            cmd: Some(crate::watchdog::with_hard_deadline(
                detect_shell_command(settings.shell, true),
                hard_deadline,
            )),
            labels: Some(labels(&label_ctx, job, ObjectType::Predefined, None)),
            // The helper runs the job's own hooks: it is privileged only as the allow-list says.
            host_config: Some(HostConfig {
                mounts: (!mounts.is_empty()).then(|| mounts.clone()),
                ..options.host_config(
                    ContainerRole::Job,
                    &helper_name,
                    binds.clone(),
                    network.as_deref(),
                )
            }),
            ..stdin_container()
        };
        if !self.predefined_in_build {
            let predefined = self
                .create_helper(names.predefined(), helper.clone(), job, &docker)
                .await?;
            self.predefined = Some(predefined);
        }

        // Without a job network, services are reached through legacy links under their aliases.
        let links = if network.is_none() && !started.is_empty() {
            let mut links = options.config.links.clone();
            for (service, spec) in started.iter().zip(&services) {
                let mut aliases = service_aliases(&spec.name);
                aliases.extend(spec.aliases.iter().cloned());
                links.extend(
                    aliases
                        .iter()
                        .map(|alias| format!("{}:{alias}", service.name)),
                );
            }
            Some(links)
        } else {
            (!options.config.links.is_empty()).then(|| options.config.links.clone())
        };
        let entrypoint = job_image
            .map(|image| image.entrypoint.clone())
            .filter(|entrypoint| !entrypoint.is_empty() && !config.disable_entrypoint_overwrite);
        // The build container sees the very volumes of the helper (and owns none), or, with
        // no helper, mounts them itself: empty as the helper's image left them (`NoCopy`: the
        // job image's files at those paths are not copied in).
        let build_body = |image_id: String, helper: Option<&Container>| {
            let volumes = match helper {
                Some(helper) => HostConfig {
                    volumes_from: Some(vec![helper.id.clone()]),
                    ..options.host_config(
                        ContainerRole::Job,
                        &image,
                        Vec::new(),
                        network.as_deref(),
                    )
                },
                None => HostConfig {
                    mounts: (!mounts.is_empty())
                        .then(|| mounts.iter().cloned().map(without_copy).collect::<Vec<_>>()),
                    ..options.host_config(
                        ContainerRole::Job,
                        &image,
                        binds.clone(),
                        network.as_deref(),
                    )
                },
            };
            ContainerCreateBody {
                image: Some(image_id),
                cmd: Some(crate::watchdog::with_hard_deadline(
                    shell_command.clone(),
                    hard_deadline,
                )),
                entrypoint: entrypoint.clone(),
                user: user.clone(),
                hostname: config.hostname.clone().filter(|name| !name.is_empty()),
                labels: Some(labels(&label_ctx, job, ObjectType::Build, None)),
                networking_config: options.mac_address_endpoint(network.as_deref()),
                host_config: Some(HostConfig {
                    links: links.clone(),
                    init: ctx.init_process.then_some(true),
                    ..volumes
                }),
                ..stdin_container()
            }
        };
        let body = build_body(image_id, self.predefined.as_ref());
        let build = match self.create_container(names.build(), body).await {
            // The image known from an earlier job is gone (its removal was not seen): got
            // again by the pull policies, as the first job of the image got it.
            Err(error) if error.is_missing_image() => {
                shared.images.forget(&image);
                let pulled = ensure_image_found(
                    &docker,
                    &image,
                    &policies,
                    crate::auth::credentials_for(&image, job),
                    platform,
                    &mut log,
                )
                .await;
                self.note_lines(&mut log);
                let found = pulled?;
                self.note(&format!(
                    "Using docker image {} for {image} ...\n",
                    found.id
                ));
                if self.predefined_in_build && !runs_as_root(user.as_deref(), &found.user) {
                    // The image got again runs as another user: the helper keeps house after
                    // all.
                    let predefined = self
                        .create_helper(names.predefined(), helper, job, &docker)
                        .await?;
                    self.predefined = Some(predefined);
                    self.predefined_in_build = false;
                }
                let body = build_body(found.id, self.predefined.as_ref());
                self.create_container(names.build(), body).await?
            }
            created => created?,
        };
        // The shells start now, side by side (creating the build container first: the engine
        // holds the helper while it starts, and the build container is created from the
        // helper's volumes): the stages then only feed them.
        match self.predefined.clone() {
            Some(predefined) => {
                let (helper_session, build_session) = tokio::join!(
                    open_session(&docker, predefined.target()),
                    open_session(&docker, build.target()),
                );
                self.build = Some(build);
                self.predefined_session = Some(helper_session?);
                self.build_session = Some(build_session?);
            }
            None => {
                let session = open_session(&docker, build.target()).await;
                self.build = Some(build);
                self.build_session = Some(session?);
            }
        }
        Ok(())
    }

    /// Creates the helper ("predefined") container `name` from `helper`; when the helper image
    /// known from an earlier job is gone, it is found (or built) again first.
    async fn create_helper(
        &mut self,
        name: String,
        helper: ContainerCreateBody,
        job: &JobSpec,
        docker: &Docker,
    ) -> Result<Container, DockerError> {
        let shared = Arc::clone(&self.shared);
        let settings = &shared.settings;
        match self.create_container(name.clone(), helper.clone()).await {
            Err(error) if error.is_missing_image() => {
                crate::helper_image::forget(
                    &shared.host,
                    &settings.helper_image,
                    settings.helper_binary.as_deref(),
                    &shared.known_helpers,
                )
                .await;
                let mut log = Vec::new();
                let resolved = shared.resolve_helper(docker, job, &mut log).await;
                self.note_lines(&mut log);
                let helper = ContainerCreateBody {
                    image: Some(resolved?.0),
                    ..helper
                };
                self.create_container(name, helper).await
            }
            created => created,
        }
    }

    /// The job's services then `[[runners.docker.services]]`, checked against the allow lists.
    fn service_specs(&self, job: &JobSpec) -> Result<Vec<ImageSpec>, DockerError> {
        let config = &self.shared().options.config;
        let mut services = Vec::new();
        for service in &job.services {
            let mut service = service.clone();
            service.name = expand_job_variables(job, &service.name);
            for alias in &mut service.aliases {
                *alias = expand_job_variables(job, alias);
                crate::naming::check_alias(alias).map_err(|reason| DockerError::InvalidName {
                    what: "service alias",
                    value: alias.clone(),
                    reason,
                })?;
            }
            check_allowed("service", &service.name, &config.allowed_services)?;
            services.push(service);
        }
        for service in &config.services {
            services.push(ImageSpec {
                name: service.name.clone(),
                aliases: service
                    .alias
                    .as_deref()
                    .map(split_aliases)
                    .unwrap_or_default(),
                command: service.command.clone(),
                entrypoint: service.entrypoint.clone(),
                variables: service
                    .environment
                    .iter()
                    .filter_map(|entry| entry.split_once('='))
                    .map(|(key, value)| runnel_types::Variable {
                        key: key.to_owned(),
                        value: value.to_owned(),
                        ..runnel_types::Variable::default()
                    })
                    .collect(),
                ..ImageSpec::default()
            });
        }
        if let Some(limit) = config
            .services_limit
            .and_then(|limit| usize::try_from(limit).ok())
            && services.len() > limit
        {
            return Err(DockerError::InvalidOption {
                key: "services_limit",
                value: limit.to_string(),
                reason: "the job asks for more services than allowed",
            });
        }
        Ok(services)
    }

    /// The helper container's volumes: the host binds (`Binds`), and the builds and cache
    /// volumes as `Mounts`, which the engine creates with the container: a missing cache
    /// volume under its name with its labels, a temporary one as an anonymous volume of the
    /// helper (removed with it). No request of its own.
    fn volumes(
        &self,
        ctx: &PrepareContext<'_>,
        names: &JobNames,
        label_ctx: &LabelContext<'_>,
    ) -> (Vec<String>, Vec<Mount>) {
        let options = &self.shared().options;
        let config = &options.config;
        let mut specs = options.volumes.clone();
        let cache_dir = path_text(ctx.cache_dir);
        if !specs.iter().any(|spec| spec.container_path() == cache_dir) {
            specs.push(VolumeSpec::Cache {
                container: cache_dir,
            });
        }
        let builds_dir = path_text(ctx.builds_dir);
        let mut binds = Vec::new();
        let mut mounts = Vec::new();
        if !specs.iter().any(|spec| spec.container_path() == builds_dir) {
            if ctx.git_fetch {
                // As the official runner: a fetching job keeps its checkout in the slot's
                // builds volume (a cache volume), so the next job of the slot fetches into it.
                specs.insert(
                    0,
                    VolumeSpec::Cache {
                        container: builds_dir,
                    },
                );
            } else {
                mounts.push(self.volume_mount(None, ctx.job, label_ctx, &builds_dir));
            }
        }
        for spec in specs {
            match spec {
                VolumeSpec::Bind {
                    host,
                    container,
                    mode,
                } => binds.push(match mode {
                    Some(mode) => format!("{host}:{container}:{mode}"),
                    None => format!("{host}:{container}"),
                }),
                VolumeSpec::Cache { container } => {
                    if config.disable_cache {
                        mounts.push(self.volume_mount(None, ctx.job, label_ctx, &container));
                    } else if let Some(dir) =
                        config.cache_dir.as_deref().filter(|dir| !dir.is_empty())
                    {
                        let host = format!(
                            "{}/{}",
                            dir.trim_end_matches('/'),
                            names.cache_dir_path(&container)
                        );
                        binds.push(format!("{host}:{container}"));
                    } else {
                        let name = names.cache_volume(&container);
                        mounts.push(self.volume_mount(Some(name), ctx.job, label_ctx, &container));
                    }
                }
            }
        }
        (binds, mounts)
    }

    /// A volume mounted at `destination`: the reusable volume `name` (created by the engine,
    /// with these labels and the configured driver, when missing), or with `None` a temporary
    /// anonymous one.
    fn volume_mount(
        &self,
        name: Option<String>,
        job: &JobSpec,
        label_ctx: &LabelContext<'_>,
        destination: &str,
    ) -> Mount {
        let config = &self.shared().options.config;
        let reusable = name.is_some();
        let mut volume_labels = labels(label_ctx, job, ObjectType::Cache, None);
        volume_labels.insert(
            format!("{}.destination", crate::naming::LABEL_PREFIX),
            destination.to_owned(),
        );
        volume_labels.insert(
            format!("{}.reusable", crate::naming::LABEL_PREFIX),
            reusable.to_string(),
        );
        volume_labels.insert(
            format!("{}.protected", crate::naming::LABEL_PREFIX),
            crate::naming::is_protected(job).to_string(),
        );
        let driver = config
            .volume_driver
            .clone()
            .filter(|driver| !driver.is_empty());
        let driver_options = (!config.volume_driver_ops.is_empty()).then(|| {
            config
                .volume_driver_ops
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        });
        Mount {
            target: Some(destination.to_owned()),
            source: name,
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(volume_labels),
                driver_config: (driver.is_some() || driver_options.is_some()).then_some(
                    MountVolumeOptionsDriverConfig {
                        name: driver,
                        options: driver_options,
                    },
                ),
                ..MountVolumeOptions::default()
            }),
            ..Mount::default()
        }
    }

    /// Creates a container named `name`, or, when that name is taken (a leftover), named
    /// `name` with a random suffix: a name collision never fails a job.
    async fn create_container(
        &mut self,
        name: String,
        body: ContainerCreateBody,
    ) -> Result<Container, DockerError> {
        let docker = self.client()?;
        let mut name = name;
        let mut attempt = 0;
        let created = loop {
            let created = docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.clone()),
                        ..CreateContainerOptions::default()
                    }),
                    body.clone(),
                )
                .await;
            match created {
                Ok(created) => break created,
                Err(error) if is_conflict(&error) && attempt < NAME_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(container = %name, "container name taken; using another");
                    name = format!("{name}-{}", crate::naming::random_part());
                }
                Err(source) => return Err(DockerError::api("create container", name, source)),
            }
        };
        for warning in &created.warnings {
            tracing::warn!(container = %name, warning, "docker warning");
        }
        let container = Container {
            id: created.id,
            name,
        };
        self.containers.push(container.clone());
        Ok(container)
    }

    async fn wait_for(
        &mut self,
        docker: &Docker,
        services: &[StartedService],
        network: Option<&str>,
    ) {
        let Some(timeout) = self.shared().options.wait_for_services_timeout else {
            return;
        };
        if services.iter().all(|service| service.ports.is_empty()) {
            return;
        }
        self.note(&format!(
            "Waiting for services to be up and running (timeout {} seconds)...\n",
            timeout.as_secs()
        ));
        let text = wait_for_services(docker, services, network, timeout).await;
        if !text.is_empty() {
            self.note(&text);
        }
    }

    /// The client `prepare` connected.
    fn client(&self) -> Result<Docker, DockerError> {
        self.docker.clone().ok_or_else(|| DockerError::NotPrepared {
            stage: "prepare".to_owned(),
        })
    }

    /// Keeps `lines` (without newlines) for the job log.
    fn note_lines(&mut self, lines: &mut Vec<String>) {
        for line in lines.drain(..) {
            self.note(&format!("{line}\n"));
        }
    }

    /// Keeps a line for the job log; it is written before the first stage's output.
    fn note(&mut self, text: &str) {
        self.pending_output.extend_from_slice(text.as_bytes());
    }

    /// Takes what this executor created, for removal.
    fn take_created(&mut self) -> Option<Created> {
        let docker = self.docker.clone()?;
        // The helper owns the job's temporary volumes, or the build container when there is
        // no helper.
        let build = self.build.take();
        let volume_owner = match self.predefined.take() {
            Some(helper) => Some(helper.id),
            None if self.predefined_in_build => build.map(|build| build.id),
            None => None,
        };
        self.predefined_session = None;
        self.build_session = None;
        let created = Created {
            docker,
            containers: std::mem::take(&mut self.containers),
            volume_owner,
            network: self.network.take(),
            keep_volumes: self.shared().options.config.volume_keep,
        };
        (!created.is_empty()).then_some(created)
    }
}

impl Drop for DockerExecutor {
    /// A job abandoned without `cleanup` still gets its objects removed, in the background.
    fn drop(&mut self) {
        let (Some(created), Ok(runtime)) =
            (self.take_created(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        tracing::warn!("docker executor dropped without cleanup; removing its containers");
        runtime.spawn(created.remove());
    }
}

/// The containers (with the temporary volumes of the helper) and network of one job.
#[derive(Debug)]
struct Created {
    docker: Docker,
    containers: Vec<Container>,
    /// The helper container's id: the owner of the job's anonymous (temporary) volumes, which
    /// the others use through `VolumesFrom`.
    volume_owner: Option<String>,
    network: Option<Network>,
    /// `volume_keep`: the temporary volumes stay (the next sweep removes them).
    keep_volumes: bool,
}

impl Created {
    fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.network.is_none()
    }

    /// Removes everything: services and the build container side by side, then the helper with
    /// its anonymous volumes (which the engine keeps while another container uses them), then
    /// the network. Problems are logged.
    async fn remove(self) {
        let docker = self.docker;
        let remove = |container: &Container, volumes: bool| {
            let docker = &docker;
            let id = container.id.clone();
            let name = container.name.clone();
            async move {
                let removed = docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: volumes,
                            link: false,
                        }),
                    )
                    .await;
                match removed {
                    Ok(()) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => {
                        tracing::warn!(container = %name, %error, "failed to remove container");
                    }
                }
            }
        };
        let (owner, others): (Vec<&Container>, Vec<&Container>) = self
            .containers
            .iter()
            .partition(|container| self.volume_owner.as_ref() == Some(&container.id));
        futures::future::join_all(others.into_iter().rev().map(|c| remove(c, true))).await;
        for container in owner {
            remove(container, !self.keep_volumes).await;
        }
        if let Some(network) = &self.network {
            match docker.remove_network(&network.id).await {
                Ok(()) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => {
                    tracing::warn!(network = %network.name, %error, "failed to remove network");
                }
            }
        }
    }
}

/// `mount` without the engine's copy of the image's files at its target into a new volume.
fn without_copy(mut mount: Mount) -> Mount {
    let options = mount
        .volume_options
        .get_or_insert_with(MountVolumeOptions::default);
    options.no_copy = Some(true);
    mount
}

/// The container settings shared by the helper and the build container: a shell on stdin.
fn stdin_container() -> ContainerCreateBody {
    ContainerCreateBody {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        // Stdin stays open between stages: the shell serves every stage of the job.
        stdin_once: Some(false),
        tty: Some(false),
        ..ContainerCreateBody::default()
    }
}

/// `sh -c <script>` that starts the first shell found, reading the stage script from stdin;
/// with `umask_0000` (the helper container) files it creates are writable by everyone.
pub fn detect_shell_command(shell: Shell, umask_0000: bool) -> Vec<String> {
    let candidates: &[&str] = match shell {
        Shell::Bash => &[
            "/usr/local/bin/bash",
            "/usr/bin/bash",
            "/bin/bash",
            "/bin/sh",
            "/busybox/sh",
        ],
        Shell::Sh => &["/bin/sh", "/busybox/sh"],
    };
    let mut script = String::new();
    if umask_0000 {
        script.push_str("umask 0000\n");
    }
    for (index, candidate) in candidates.iter().enumerate() {
        let keyword = if index == 0 { "if" } else { "elif" };
        script.push_str(&format!(
            "{keyword} [ -x {candidate} ]; then\n\texec {candidate}\n"
        ));
    }
    script.push_str("else\n\techo shell not found\n\texit 1\nfi\n");
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// A predefined stage's script as the build container runs it in place of the helper: with
/// the helper's `umask 0000` (what it creates stays writable for any later user), and with
/// `hostname` as the shell's own read of the kernel's host name where the image has no
/// `hostname` command (`prepare_script` prints the container's host name). Such stages run no
/// user code (`PrepareContext::predefined_housekeeping_only`), so neither is visible to it.
fn as_helper(script: &str) -> String {
    let mut text = String::with_capacity(script.len() + 160);
    text.push_str("umask 0000\n");
    text.push_str(
        "command -v hostname >/dev/null 2>&1 || hostname() { read -r name </proc/sys/kernel/hostname && printf '%s\\n' \"$name\"; }\n",
    );
    text.push_str(script);
    text
}

/// `$NAME`/`${NAME}` in image names and aliases expanded with the job's variables.
fn expand_job_variables(job: &JobSpec, text: &str) -> String {
    runnel_types::expand(text, |name| {
        job.variables
            .iter()
            .rev()
            .find(|variable| variable.key == name)
            .map(|variable| variable.value.clone())
            .unwrap_or_default()
    })
}

/// The script with `export` lines for the stage's extra environment in front.
fn with_env<'a>(env: &[(String, String)], script: &'a str) -> std::borrow::Cow<'a, str> {
    if env.is_empty() {
        return std::borrow::Cow::Borrowed(script);
    }
    let mut text = String::new();
    for (key, value) in env {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            text.push_str(&format!(
                "export {key}='{}'\n",
                value.replace('\'', "'\\''")
            ));
        } else {
            tracing::warn!(key, "skipping an environment variable with an invalid name");
        }
    }
    text.push_str(script);
    std::borrow::Cow::Owned(text)
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl Executor for DockerExecutor {
    fn name(&self) -> &str {
        DOCKER_EXECUTOR_INFO.name
    }

    fn banner(&self) -> String {
        format!(
            "Using Docker executor with image {} ...",
            self.image.as_deref().unwrap_or("")
        )
    }

    fn prepare<'a>(
        &'a mut self,
        ctx: &'a PrepareContext<'a>,
    ) -> BoxFuture<'a, Result<(), ExecutorError>> {
        Box::pin(async move { self.prepare_job(ctx).await.map_err(ExecutorError::from) })
    }

    fn run<'a>(
        &'a mut self,
        cmd: StageCommand<'a>,
        sink: &'a dyn OutputSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<StageExit, ExecutorError>> {
        Box::pin(async move {
            if !self.pending_output.is_empty() {
                sink.write(
                    OutputStream::Stdout,
                    &std::mem::take(&mut self.pending_output),
                );
            }
            let script = with_env(cmd.env, cmd.script);
            let (container, session, script) = match cmd.kind {
                StageKind::Predefined if self.predefined_in_build => (
                    self.build.as_ref(),
                    &mut self.build_session,
                    std::borrow::Cow::Owned(as_helper(&script)),
                ),
                StageKind::Predefined => (
                    self.predefined.as_ref(),
                    &mut self.predefined_session,
                    script,
                ),
                StageKind::Build => (self.build.as_ref(), &mut self.build_session, script),
            };
            let (Some(container), Some(docker)) = (container, self.docker.as_ref()) else {
                return Err(DockerError::NotPrepared {
                    stage: cmd.stage.to_owned(),
                }
                .into());
            };
            let target = Target {
                id: &container.id,
                name: &container.name,
            };
            self.resources.follow(docker, &container.id);
            let exit = run_stage(
                docker,
                target,
                session,
                &self.nonce,
                cmd.stage,
                &script,
                sink,
                cancel,
                cmd.deadline,
                self.service_logs.as_mut(),
            )
            .await
            .map_err(ExecutorError::from);
            if self.resources.is_following() {
                sink.resources_used(self.resources.usage());
            }
            exit
        })
    }

    fn cleanup(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.service_logs = None;
            let Some(created) = self.take_created() else {
                return;
            };
            if tokio::time::timeout(CLEANUP_TIMEOUT, created.remove())
                .await
                .is_err()
            {
                tracing::warn!("docker cleanup did not finish within {CLEANUP_TIMEOUT:?}");
            }
        })
    }

    /// The containers are removed after the job's final state is reported: their removal
    /// (the build container, then the helper with its volumes) is handed back. What runs in
    /// them ends now: the shells are told to exit and their containers stop by themselves,
    /// side by side with the report (no Engine request); the removal waits for that first.
    /// The job's processes are in its containers, not on this host: nothing is `contained`
    /// in the shell executor's sense (the job runner's tag scan is for shell jobs only).
    fn cleanup_deferred(&mut self) -> BoxFuture<'_, Option<BoxFuture<'static, bool>>> {
        Box::pin(async move {
            self.service_logs = None;
            let mut sessions: Vec<Session> =
                [self.predefined_session.take(), self.build_session.take()]
                    .into_iter()
                    .flatten()
                    .collect();
            for session in &mut sessions {
                tell_exit(session, SESSION_EXIT_WAIT).await;
            }
            let created = self.take_created()?;
            let removal: BoxFuture<'static, bool> = Box::pin(async move {
                let ended = futures::future::join_all(
                    sessions
                        .into_iter()
                        .map(|session| wait_ended(session, SESSION_EXIT_WAIT)),
                )
                .await;
                if ended.contains(&false) {
                    tracing::debug!("a job container did not stop by itself; removing it stops it");
                }
                if tokio::time::timeout(CLEANUP_TIMEOUT, created.remove())
                    .await
                    .is_err()
                {
                    tracing::warn!("docker cleanup did not finish within {CLEANUP_TIMEOUT:?}");
                }
                false
            });
            Some(removal)
        })
    }

    fn job_resources(&self) -> Vec<runnel_executor::JobResource> {
        self.containers
            .iter()
            .map(|c| runnel_executor::JobResource::DockerContainer { id: c.id.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_is_built_from_a_runner_entry() {
        let text = r#"
[[runners]]
name = "docker-runner"
url = "https://gitlab.example.com"
id = 42
token = "glrt-abcdefghijklmnop"
executor = "docker"
shell = "sh"
[runners.docker]
image = "alpine:3"
helper_image = "my-helper:1"
"#;
        let file = runnel_config::ConfigFile::parse("config.toml", text, |_| None).expect("config");
        let runner = &file.config().runners[0];
        let provider = DockerProvider::from_runner(runner, "s_0123456789ab").expect("provider");
        let settings = &provider.shared.settings;
        assert_eq!(
            (
                settings.short_token.as_str(),
                settings.runner_id,
                settings.shell,
                settings.helper_image.as_str()
            ),
            ("abcdefghi", 42, Shell::Sh, "my-helper:1")
        );
        assert_eq!(provider.info().default_builds_dir, "/builds");

        let mut without_section = runner.clone();
        without_section.docker = None;
        let error = DockerProvider::from_runner(&without_section, "s_0123456789ab")
            .err()
            .map(|e| e.to_string());
        insta::assert_snapshot!(error.unwrap_or_default(), @"runner `docker-runner` uses the docker executor but has no [runners.docker] section");
    }

    #[test]
    fn image_names_expand_job_variables() {
        let mut job = JobSpec::default();
        job.variables.push(runnel_types::Variable {
            key: "CI_REGISTRY_IMAGE".into(),
            value: "registry.example.com/group/project".into(),
            ..runnel_types::Variable::default()
        });
        assert_eq!(
            expand_job_variables(&job, "$CI_REGISTRY_IMAGE/builder:${TAG}latest"),
            "registry.example.com/group/project/builder:latest"
        );
    }

    #[test]
    fn stage_env_is_exported_before_the_script() {
        let env = [
            ("A".to_owned(), "it's".to_owned()),
            ("1BAD".to_owned(), "x".to_owned()),
        ];
        insta::assert_snapshot!(with_env(&env, "echo \"$A\"\n"), @r#"
        export A='it'\''s'
        echo "$A"
        "#);
        assert_eq!(with_env(&[], "x"), "x");
    }

    #[test]
    fn the_shell_is_detected_in_the_official_order() {
        assert_eq!(
            detect_shell_command(Shell::Sh, true)[2]
                .lines()
                .take(2)
                .collect::<Vec<_>>(),
            ["umask 0000", "if [ -x /bin/sh ]; then"]
        );
        let command = detect_shell_command(Shell::Bash, false);
        insta::assert_snapshot!(command.join(" | "), @r"
        sh | -c | if [ -x /usr/local/bin/bash ]; then
        	exec /usr/local/bin/bash
        elif [ -x /usr/bin/bash ]; then
        	exec /usr/bin/bash
        elif [ -x /bin/bash ]; then
        	exec /bin/bash
        elif [ -x /bin/sh ]; then
        	exec /bin/sh
        elif [ -x /busybox/sh ]; then
        	exec /busybox/sh
        else
        	echo shell not found
        	exit 1
        fi
        ");
    }
}
