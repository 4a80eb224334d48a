//! The local pipeline run: prepare (read the repository, load and evaluate the CI file), then
//! run (snapshot, coordinator, daemon, scheduler) and report [`Event`]s.
//!
//! Scheduling follows GitLab: a job becomes ready when every job it waits for (`after`: the
//! earlier stages, or its `needs`) is final; then its `when` decides: `on_success` runs if none
//! of those failed (failures allowed by `allow_failure` do not count), `on_failure` runs if one
//! did, `always` runs. A job skipped because of a failure counts as failed for later jobs.
//! `manual` and `delayed` jobs are skipped unless `--manual`. Failed jobs are retried up to
//! `retry:max` times when `retry:when`/`exit_codes` match. Concurrency is enforced by the
//! coordinator, which hands out at most `--concurrency` jobs at a time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use rand::distr::Alphanumeric;
use runnel_pipeline::{
    AllowFailure, Context, LoadOptions, LocalRun, Pipeline, Plan, PlannedJob, SourceFiles,
    SpecOptions, Warning, When, evaluate, load_with, slug, to_job_spec,
};
use runnel_service::{FixedConfigSource, RunOptions, RunnerSpec, ServiceConfig};
use runnel_types::{
    Dependency, GitInfo, JobFeatures, JobId, JobSpec, JobToken, RefType, Secret, Variable,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{Coordinator, CoordinatorEvent, NewJob, RunnerKind};
use crate::error::ExecError;
use crate::event::{Event, JobResult, JobStatus, PipelineJob, Reporter};
use crate::includes::{Files, IncludeSettings};
use crate::source::{self, RepoFacts};

/// Which executor runs the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExecutorChoice {
    /// Docker for jobs with an `image` when the engine answers, the shell otherwise.
    #[default]
    Auto,
    Shell,
    Docker,
}

/// What `runnel exec` was asked to do.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The project directory (`-C`).
    pub project_dir: PathBuf,
    /// The CI file, relative to the project (`--file`).
    pub file: String,
    /// Jobs named on the command line (instance or job names); empty = the whole pipeline.
    pub jobs: Vec<String>,
    /// Also run what the named jobs `needs`, transitively.
    pub needs: bool,
    pub executor: ExecutorChoice,
    /// Jobs running at once.
    pub concurrency: usize,
    /// `--variable`/`--variables-file` values: they override the YAML; not masked.
    pub variables: Vec<(String, String)>,
    /// `--secret` values: they override the YAML and `--variable`, and are masked in every log
    /// (so they must be maskable by GitLab's rule: see [`runnel_pipeline::unmaskable_reason`]).
    pub secrets: Vec<(String, String)>,
    /// Run `when: manual` (and delayed) jobs instead of skipping them.
    pub manual: bool,
    /// The docker helper image (default: the one `runnel docker build-helper-image` makes).
    pub helper_image: Option<String>,
    /// The image of docker jobs that name none.
    pub default_image: String,
    /// Pipeline inputs for the CI file's `spec:inputs` (`--input NAME=VALUE`; values as YAML).
    pub inputs: Vec<(String, String)>,
    /// Read external includes from `.runnel/includes/` only (`--offline`).
    pub offline: bool,
    /// `GITLAB_TOKEN`, for `include: project`, `template` and `component` of private projects.
    pub gitlab_token: Option<String>,
    /// `CI_JOB_TOKEN`, the same inside a CI job.
    pub job_token: Option<String>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            project_dir: PathBuf::from("."),
            file: ".gitlab-ci.yml".to_owned(),
            jobs: Vec::new(),
            needs: false,
            executor: ExecutorChoice::Auto,
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            variables: Vec::new(),
            secrets: Vec::new(),
            manual: false,
            helper_image: None,
            default_image: "alpine:latest".to_owned(),
            inputs: Vec::new(),
            offline: false,
            gitlab_token: None,
            job_token: None,
        }
    }
}

/// A loaded and evaluated pipeline, ready to list or run.
#[derive(Debug)]
pub struct Prepared {
    pub options: ExecOptions,
    pub facts: RepoFacts,
    pub pipeline: Pipeline,
    pub plan: Plan,
    pub pipeline_id: u64,
    /// Instance names that will run (selection and `when` applied), in plan order.
    pub selected: Vec<String>,
    /// Every job of the pipeline with why it will not run, in stage order.
    pub jobs: Vec<PipelineJob>,
}

fn state_dir(project: &Path) -> PathBuf {
    project.join(".runnel")
}

fn next_pipeline_id(state: &Path) -> u64 {
    std::fs::read_to_string(state.join("pipeline-id"))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1
}

/// Reads the repository (without writing anything), loads and evaluates the CI file, and
/// applies the job selection.
pub async fn prepare(mut options: ExecOptions) -> Result<Prepared, ExecError> {
    options.project_dir = std::path::absolute(&options.project_dir)
        .map_err(ExecError::io("resolve", &options.project_dir))?;
    if !options.project_dir.is_dir() {
        return Err(ExecError::Usage(format!(
            "project directory {} does not exist",
            options.project_dir.display()
        )));
    }
    if options.concurrency == 0 {
        return Err(ExecError::Usage(
            "--concurrency must be at least 1".to_owned(),
        ));
    }
    for (key, value) in &options.secrets {
        if let Some(reason) = runnel_pipeline::unmaskable_reason(value) {
            return Err(ExecError::Usage(format!(
                "--secret {key}: GitLab cannot mask this value because {reason}; pass values that need no masking with --variable"
            )));
        }
    }
    let facts = source::read_facts(&options.project_dir).await;
    let pipeline_id = next_pipeline_id(&state_dir(&options.project_dir));
    let files = Files::new(
        options.project_dir.clone(),
        IncludeSettings {
            server_url: facts.server_url.clone(),
            offline: options.offline,
            gitlab_token: options.gitlab_token.clone(),
            job_token: options.job_token.clone(),
        },
    );
    let local = LocalRun {
        branch: facts.branch.clone(),
        tag: facts.tag.clone(),
        sha: facts.head.clone().unwrap_or_else(|| "0".repeat(40)),
        message: facts.message.clone(),
        author: format!("{} <{}>", facts.author_name, facts.author_email),
        default_branch: facts.default_branch.clone(),
        source: String::new(),
        project_path: facts.project_path.clone(),
        server_url: facts.server_url.clone().unwrap_or_default(),
        pipeline_id,
    };
    let predefined = local.predefined_variables();
    let overrides: Vec<Variable> = options
        .variables
        .iter()
        .map(|(k, v)| Variable::new(k.as_str(), v.as_str()))
        .chain(options.secrets.iter().map(|(k, v)| masked_variable(k, v)))
        .collect();
    // Include values and `include:rules` see the predefined and the user's variables. Loading
    // may fetch includes (blocking HTTP on a runtime handle), so it runs off the async threads.
    let load_options = LoadOptions {
        variables: predefined.iter().chain(&overrides).cloned().collect(),
        changed_files: facts.changed_files.clone(),
        inputs: options.inputs.clone(),
    };
    let file = options.file.clone();
    let (pipeline, files) = tokio::task::spawn_blocking(move || {
        let pipeline = load_with(&files, &file, &load_options);
        (pipeline, files)
    })
    .await
    .map_err(|error| ExecError::Config(format!("loading the CI file failed: {error}")))?;
    let pipeline = pipeline?;
    let context = Context {
        predefined,
        overrides,
        changed_files: facts.changed_files.clone(),
        files: files.list(),
    };
    let plan = evaluate(&pipeline, &context)?;
    let (selected, jobs) = select(&pipeline, &plan, &options)?;
    Ok(Prepared {
        options,
        facts,
        pipeline,
        plan,
        pipeline_id,
        selected,
        jobs,
    })
}

fn masked_variable(key: &str, value: &str) -> Variable {
    let mut variable = Variable::new(key, value);
    variable.masked = true;
    variable
}

/// The instance names to run and every job with why it will not run.
fn select(
    pipeline: &Pipeline,
    plan: &Plan,
    options: &ExecOptions,
) -> Result<(Vec<String>, Vec<PipelineJob>), ExecError> {
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    if options.jobs.is_empty() {
        chosen.extend(plan.jobs.iter().map(|j| j.name.clone()));
    } else {
        for wanted in &options.jobs {
            let matches: Vec<&PlannedJob> = plan
                .jobs
                .iter()
                .filter(|j| j.name == *wanted || j.job.name == *wanted)
                .collect();
            if matches.is_empty() {
                if pipeline.job(wanted).is_some() {
                    return Err(ExecError::Usage(format!(
                        "job {wanted:?} is not part of this pipeline: its rules exclude it"
                    )));
                }
                let known: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
                return Err(ExecError::UnknownJob {
                    name: wanted.clone(),
                    known: known.join(", "),
                });
            }
            chosen.extend(matches.iter().map(|j| j.name.clone()));
        }
        if options.needs {
            let mut stack: Vec<String> = chosen.iter().cloned().collect();
            while let Some(name) = stack.pop() {
                let Some(job) = plan.job(&name) else { continue };
                for need in job.needs.iter().flatten() {
                    if chosen.insert(need.job.clone()) {
                        stack.push(need.job.clone());
                    }
                }
            }
        }
    }
    let waiting = waiting_for_manual(plan, options.manual);
    let mut selected = Vec::new();
    let mut jobs = Vec::new();
    for job in &plan.jobs {
        let skipped = if !chosen.contains(&job.name) {
            Some("not selected".to_owned())
        } else if let Some(upstream) = waiting.get(job.name.as_str()) {
            let kind = match plan.job(upstream).map(|j| j.when) {
                Some(When::Delayed) => "delayed",
                _ => "manual",
            };
            Some(format!(
                "waits for {kind} job `{upstream}` (play it with --manual)"
            ))
        } else {
            match job.when {
                When::Manual if !options.manual => {
                    Some("manual job (run with --manual)".to_owned())
                }
                When::Delayed if !options.manual => Some(format!(
                    "delayed job (start_in {}; run with --manual)",
                    job.start_in.as_deref().unwrap_or("?")
                )),
                When::Never => Some("when: never".to_owned()),
                _ => None,
            }
        };
        if skipped.is_none() {
            selected.push(job.name.clone());
        }
        jobs.push((
            job.stage_index,
            PipelineJob {
                name: job.name.clone(),
                stage: job.stage.clone(),
                skipped,
            },
        ));
    }
    for job in &pipeline.jobs {
        if plan.jobs.iter().any(|p| p.job.name == job.name) {
            continue;
        }
        let stage_index = pipeline
            .stages
            .iter()
            .position(|s| *s == job.stage)
            .unwrap_or(0);
        jobs.push((
            stage_index,
            PipelineJob {
                name: job.name.clone(),
                stage: job.stage.clone(),
                skipped: Some("excluded by its rules".to_owned()),
            },
        ));
    }
    jobs.sort_by_key(|(stage, _)| *stage);
    Ok((selected, jobs.into_iter().map(|(_, j)| j).collect()))
}

/// Jobs that GitLab would leave waiting because a manual (or delayed) job that is not played
/// comes before them: one they `need`, or a blocking one (`allow_failure: false`) of an earlier
/// stage; and, transitively, the jobs after those. Each maps to the manual job it waits for.
fn waiting_for_manual(plan: &Plan, manual: bool) -> HashMap<&str, &str> {
    let mut waiting: HashMap<&str, &str> = HashMap::new();
    if manual {
        return waiting;
    }
    for &i in &plan.order {
        let job = &plan.jobs[i];
        let needed = |name: &str| job.needs.iter().flatten().any(|n| n.job == name);
        for after in &job.after {
            let Some(upstream) = plan.job(after) else {
                continue;
            };
            let unplayed = matches!(upstream.when, When::Manual | When::Delayed);
            if unplayed && (needed(after) || upstream.allow_failure == AllowFailure::No) {
                waiting.insert(&job.name, &upstream.name);
                break;
            }
            if let Some(&manual) = waiting.get(after.as_str()) {
                waiting.insert(&job.name, manual);
                break;
            }
        }
    }
    waiting
}

/// Where a node of the run is.
#[derive(Debug)]
struct Node {
    plan_index: usize,
    name: String,
    status: JobStatus,
    /// Failed, or skipped because of a failure: `on_success` jobs after it do not run.
    failing: bool,
    queued: bool,
    attempt: u32,
    job_id: u64,
    token: String,
    kind: RunnerKind,
    started: Option<Instant>,
    after: Vec<usize>,
    deps: Vec<usize>,
    log_file: PathBuf,
    /// Why the log file is incomplete (a full disk), once an attempt found out.
    log_error: Option<String>,
    /// The job's own name for files (log, artifacts): its slug, made unique.
    file_key: String,
}

/// One file name per job name: the slug, with `-2`, `-3`… added when two names have the
/// same slug (`build a` and `build-a`), so no two jobs share a log or artifacts (review L3).
fn file_keys<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Vec<String> {
    let bases: HashSet<String> = names
        .clone()
        .into_iter()
        .map(|n| crate::slug_or(n, "job"))
        .collect();
    let mut used = HashSet::new();
    let mut keys = Vec::new();
    for name in names {
        let base = crate::slug_or(name, "job");
        let mut key = base.clone();
        let mut n = 2u32;
        while used.contains(&key) || (key != base && bases.contains(&key)) {
            key = format!("{base}-{n}");
            n += 1;
        }
        used.insert(key.clone());
        keys.push(key);
    }
    keys
}

/// The docker engine's bridge gateway (where containers reach the host), when Docker answers.
async fn docker_gateway() -> Result<IpAddr, String> {
    let docker = bollard::Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), docker.ping())
        .await
        .map_err(|_| "the Docker engine did not answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let bridge = docker
        .inspect_network("bridge", None)
        .await
        .map_err(|e| format!("cannot inspect the bridge network: {e}"))?;
    bridge
        .ipam
        .and_then(|ipam| ipam.config)
        .into_iter()
        .flatten()
        .find_map(|c| {
            c.gateway
                .and_then(|g| g.parse::<Ipv4Addr>().ok())
                .or_else(|| c.subnet.as_deref().and_then(first_host))
        })
        .map(IpAddr::V4)
        .ok_or_else(|| "the bridge network has no IPv4 gateway".to_owned())
}

/// The first host address of an IPv4 subnet (`172.17.0.0/16` → `172.17.0.1`): where Docker
/// puts the bridge gateway when the network does not name it.
fn first_host(subnet: &str) -> Option<Ipv4Addr> {
    let (address, bits) = subnet.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 30)?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Some(Ipv4Addr::from((u32::from(address) & mask) + 1))
}

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The runner token, kept across runs so builds and cache volumes are reused.
fn runner_token(state: &Path) -> Result<String, ExecError> {
    let path = state.join("runner-token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim();
        if token.len() >= 16 && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Ok(token.to_owned());
        }
    }
    let token = format!("glrt-{}", random_token(24));
    write_private(&path, &token)?;
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> Result<(), ExecError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(ExecError::io("write", path))?;
    file.write_all(text.as_bytes())
        .map_err(ExecError::io("write", path))
}

fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// The daemon's configuration: one runner per executor in use.
fn service_config(
    options: &ExecOptions,
    state: &Path,
    url: &str,
    runners: &[(String, RunnerKind)],
) -> Result<ServiceConfig, ExecError> {
    let mut text = String::new();
    for (token, kind) in runners {
        match kind {
            RunnerKind::Shell => text.push_str(&format!(
                "[[runners]]\nname = \"runnel-exec-shell\"\nurl = {}\ntoken = {}\nexecutor = \"shell\"\nrequest_concurrency = 1\nbuilds_dir = {}\ncache_dir = {}\n",
                toml_string(url),
                toml_string(token),
                toml_string(&state.join("builds").to_string_lossy()),
                toml_string(&state.join("cache").to_string_lossy()),
            )),
            RunnerKind::Docker => text.push_str(&format!(
                "[[runners]]\nname = \"runnel-exec-docker\"\nurl = {}\ntoken = {}\nexecutor = \"docker\"\nrequest_concurrency = 1\n[runners.docker]\nimage = {}\n{}pull_policy = [\"if-not-present\"]\nvolumes = [{}]\n",
                toml_string(url),
                toml_string(token),
                toml_string(&options.default_image),
                // Without one, the daemon uses the helper image Runnel builds itself.
                options
                    .helper_image
                    .as_deref()
                    .map(|image| format!("helper_image = {}\n", toml_string(image)))
                    .unwrap_or_default(),
                toml_string(&format!("{}:/cache", state.join("cache").to_string_lossy())),
            )),
        }
    }
    let path = state.join("config.toml");
    let file = runnel_config::ConfigFile::parse(&path, &text, |_| None)
        .map_err(|error| ExecError::Config(error.to_string()))?;
    Ok(ServiceConfig {
        concurrent: options.concurrency + runners.len(),
        check_interval: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(30),
        log_level: None,
        listen_address: None,
        user: None,
        system_id: "r_runnelexec0001".to_owned(),
        runners: file
            .config()
            .runners
            .iter()
            .map(RunnerSpec::from_config)
            .collect(),
    })
}

/// The per-run facts every payload needs.
#[derive(Debug)]
struct RunContext {
    url: String,
    sha: String,
    ref_name: String,
    ref_type: RefType,
    refspecs: Vec<String>,
    pipeline_id: u64,
    project_path: String,
}

impl Prepared {
    /// The jobs of the plan that run, with the reasons for the others.
    pub fn listing(&self, colour: bool) -> String {
        // Jobs the plan made but this run leaves out (manual, delayed, not selected); the
        // plan itself explains the ones its rules excluded.
        let skipped: Vec<(String, String)> = self
            .jobs
            .iter()
            .filter(|job| self.plan.job(&job.name).is_some())
            .filter_map(|job| Some((job.name.clone(), job.skipped.clone()?)))
            .collect();
        crate::render_list(&self.plan, self.warnings(), &skipped, colour)
    }

    /// What a person should know about the source the jobs get: a dirty working tree is run as
    /// a snapshot commit, not as HEAD.
    pub fn source_note(&self) -> Option<String> {
        if !self.facts.is_repo || !(self.facts.dirty || self.facts.in_subdirectory) {
            return None;
        }
        if !self.facts.dirty {
            return Some(
                "the project is a directory inside its repository: jobs run a snapshot commit of that directory, so CI_COMMIT_SHA is not HEAD"
                    .to_owned(),
            );
        }
        Some(match &self.facts.head {
            Some(head) => format!(
                "the working tree has uncommitted or untracked changes: jobs run a snapshot commit of it, so CI_COMMIT_SHA is not HEAD ({})",
                head.get(..8).unwrap_or(head)
            ),
            None => {
                "the repository has no commit yet: jobs run a snapshot commit of the working tree"
                    .to_owned()
            }
        })
    }

    /// Pipeline warnings (unsupported keys), with file and line.
    pub fn warnings(&self) -> &[Warning] {
        &self.pipeline.warnings
    }

    /// Refuses to run a job whose `secrets:` the user did not pass (`--secret`): runnel exec
    /// fetches no secret store, and a job without them would run with them empty.
    pub fn check_secrets(&self) -> Result<(), ExecError> {
        let given: BTreeSet<&str> = self
            .options
            .secrets
            .iter()
            .chain(&self.options.variables)
            .map(|(k, _)| k.as_str())
            .collect();
        let mut missing = Vec::new();
        for name in &self.selected {
            let Some(job) = self.plan.job(name) else {
                continue;
            };
            let lacking: Vec<&str> = job
                .job
                .secrets
                .iter()
                .map(|(secret, _)| secret.as_str())
                .filter(|secret| !given.contains(secret))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!("`{name}` needs {}", lacking.join(", ")));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(ExecError::Usage(format!(
            "jobs use `secrets:`, which runnel exec does not fetch from a secret store: {}; pass each with --secret NAME=VALUE (a file variable unless the secret says `file: false`)",
            missing.join("; ")
        )))
    }

    /// Runs the pipeline; `Ok(true)` when it succeeded. `cancel` interrupts it (Ctrl-C):
    /// queued jobs are dropped, running ones are told to stop and still clean up.
    pub async fn run(
        self,
        reporter: &mut dyn Reporter,
        cancel: CancellationToken,
    ) -> Result<bool, ExecError> {
        self.check_secrets()?;
        let started = Instant::now();
        let project = self.options.project_dir.clone();
        let state = state_dir(&project);
        std::fs::create_dir_all(&state).map_err(ExecError::io("create", &state))?;
        // Keep `git status` of the user's repository unchanged.
        let ignore = state.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "*\n").map_err(ExecError::io("write", &ignore))?;
        }
        let id_file = state.join("pipeline-id");
        std::fs::write(&id_file, self.pipeline_id.to_string())
            .map_err(ExecError::io("write", &id_file))?;

        // Executors.
        let wants_docker = |job: &PlannedJob| job.job.image.is_some();
        let any_image = self
            .selected
            .iter()
            .filter_map(|n| self.plan.job(n))
            .any(wants_docker);
        let gateway = match self.options.executor {
            ExecutorChoice::Shell => None,
            ExecutorChoice::Docker => Some(docker_gateway().await.map_err(ExecError::Docker)?),
            ExecutorChoice::Auto if any_image => match docker_gateway().await {
                Ok(ip) => Some(ip),
                Err(error) => {
                    tracing::warn!(%error, "Docker is not available; jobs with an image run in the shell executor");
                    None
                }
            },
            ExecutorChoice::Auto => None,
        };
        let kind_of = |job: &PlannedJob| match (self.options.executor, gateway) {
            (ExecutorChoice::Docker, _) => RunnerKind::Docker,
            (ExecutorChoice::Auto, Some(_)) if wants_docker(job) => RunnerKind::Docker,
            _ => RunnerKind::Shell,
        };
        let token = runner_token(&state)?;
        let mut runners: Vec<(String, RunnerKind)> = Vec::new();
        for name in &self.selected {
            if let Some(job) = self.plan.job(name) {
                let kind = kind_of(job);
                if !runners.iter().any(|(_, k)| *k == kind) {
                    let suffix = if kind == RunnerKind::Docker {
                        "-docker"
                    } else {
                        ""
                    };
                    runners.push((format!("{token}{suffix}"), kind));
                }
            }
        }

        // The source.
        let (ref_name, ref_type) = match (&self.facts.tag, &self.facts.branch) {
            (Some(tag), _) => (tag.clone(), RefType::Tag),
            (None, Some(branch)) => (branch.clone(), RefType::Branch),
            (None, None) => ("HEAD".to_owned(), RefType::Branch),
        };
        let pipeline_ref = format!("refs/pipelines/{}", self.pipeline_id);
        let named_ref = match ref_type {
            RefType::Tag => format!("refs/tags/{ref_name}"),
            RefType::Branch => format!("refs/heads/{ref_name}"),
        };
        let mut refs = vec![pipeline_ref.clone()];
        if ref_name != "HEAD" {
            refs.push(named_ref.clone());
        }
        let snapshot = source::snapshot(&project, &state, &self.facts, &refs).await?;
        let mut refspecs = vec![format!("+{pipeline_ref}:{pipeline_ref}")];
        if ref_name != "HEAD" {
            refspecs.push(match ref_type {
                RefType::Tag => format!("+{named_ref}:{named_ref}"),
                RefType::Branch => format!("+{named_ref}:refs/remotes/origin/{ref_name}"),
            });
        }

        // Coordinator and daemon.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let listen_ip = gateway.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let coordinator = Coordinator::start(
            listen_ip,
            runners.clone(),
            state.join("git"),
            self.options.concurrency,
            events_tx,
        )
        .await?;
        let config = service_config(&self.options, &state, &coordinator.url, &runners)?;
        let stop = CancellationToken::new();
        let run_options = RunOptions {
            stop: stop.clone(),
            ..RunOptions::default()
        };
        let mut daemon = tokio::spawn(runnel_service::run(
            Arc::new(FixedConfigSource::new(config)),
            run_options,
            Box::new(|_| {}),
        ));

        let context = RunContext {
            url: coordinator.url.clone(),
            sha: snapshot.sha.clone(),
            ref_name,
            ref_type,
            refspecs,
            pipeline_id: self.pipeline_id,
            project_path: self.facts.project_path.clone(),
        };
        let logs_dir = state.join("logs").join(self.pipeline_id.to_string());
        let artifacts_dir = state.join("artifacts").join(self.pipeline_id.to_string());

        // Nodes.
        let index_of: HashMap<&str, usize> = self
            .selected
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut nodes: Vec<Node> = Vec::new();
        let keys = file_keys(self.selected.iter().map(String::as_str));
        for (name, file_key) in self.selected.iter().zip(keys) {
            let Some(plan_index) = self.plan.jobs.iter().position(|j| j.name == *name) else {
                continue;
            };
            let job = &self.plan.jobs[plan_index];
            nodes.push(Node {
                plan_index,
                name: name.clone(),
                status: JobStatus::Pending,
                failing: false,
                queued: false,
                attempt: 0,
                job_id: 0,
                token: String::new(),
                kind: kind_of(job),
                started: None,
                after: job
                    .after
                    .iter()
                    .filter_map(|a| index_of.get(a.as_str()).copied())
                    .collect(),
                deps: job
                    .dependencies
                    .iter()
                    .filter_map(|a| index_of.get(a.as_str()).copied())
                    .collect(),
                log_file: logs_dir.join(format!("{file_key}.log")),
                log_error: None,
                file_key,
            });
        }

        reporter.event(&Event::PipelineStarted {
            stages: self.plan.stages.clone(),
            jobs: self.jobs.clone(),
        });
        for job in self.jobs.iter().filter(|j| j.skipped.is_some()) {
            reporter.event(&Event::JobFinished {
                name: job.name.clone(),
                result: JobResult {
                    status: JobStatus::Skipped,
                    duration: Duration::ZERO,
                    exit_code: None,
                    failure_reason: None,
                    log_file: None,
                    log_error: None,
                },
            });
        }

        let mut next_id = self.pipeline_id * 10_000;
        let mut interrupted = false;
        let mut daemon_result: Option<Result<(), ExecError>> = None;
        let mut cancel_deadline: Option<tokio::time::Instant> = None;
        loop {
            if !interrupted {
                self.schedule(
                    &mut nodes,
                    &coordinator,
                    &context,
                    &artifacts_dir,
                    &mut next_id,
                    reporter,
                )?;
            }
            if nodes.iter().all(|n| n.status.is_final()) {
                break;
            }
            let deadline = async {
                match cancel_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.handle(event, &mut nodes, &coordinator, &context, &artifacts_dir, &mut next_id, reporter, interrupted)?,
                    None => break,
                },
                () = cancel.cancelled(), if !interrupted => {
                    interrupted = true;
                    coordinator.cancel();
                    cancel_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                    for node in nodes.iter_mut().filter(|n| n.status == JobStatus::Pending) {
                        finish(reporter, node, JobStatus::Canceled, None, None);
                    }
                }
                result = &mut daemon, if daemon_result.is_none() => {
                    daemon_result = Some(match result {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(ExecError::Service(error)),
                        Err(error) => Err(ExecError::Config(format!("the runner daemon task failed: {error}"))),
                    });
                    // The daemon stopped by itself (a signal): nothing more will run.
                    interrupted = true;
                    coordinator.cancel();
                    for node in nodes.iter_mut().filter(|n| !n.status.is_final()) {
                        finish(reporter, node, JobStatus::Canceled, None, None);
                    }
                }
                () = deadline => {
                    for node in nodes.iter_mut().filter(|n| !n.status.is_final()) {
                        finish(reporter, node, JobStatus::Canceled, None, None);
                    }
                }
            }
        }

        coordinator.close();
        stop.cancel();
        let daemon_result = match daemon_result {
            Some(result) => result,
            None => match tokio::time::timeout(Duration::from_secs(60), &mut daemon).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(error))) => Err(ExecError::Service(error)),
                Ok(Err(error)) => Err(ExecError::Config(format!(
                    "the runner daemon task failed: {error}"
                ))),
                Err(_) => {
                    daemon.abort();
                    Ok(())
                }
            },
        };
        coordinator.shutdown().await;
        let success = !interrupted
            && nodes
                .iter()
                .all(|n| !matches!(n.status, JobStatus::Failed | JobStatus::Canceled));
        reporter.event(&Event::PipelineFinished {
            success,
            duration: started.elapsed(),
        });
        reporter.finish();
        daemon_result.map(|()| success)
    }

    /// Queues every ready job, or skips it when its `when` does not match; repeats until
    /// nothing changes.
    fn schedule(
        &self,
        nodes: &mut [Node],
        coordinator: &Coordinator,
        context: &RunContext,
        artifacts_dir: &Path,
        next_id: &mut u64,
        reporter: &mut dyn Reporter,
    ) -> Result<(), ExecError> {
        loop {
            let mut changed = false;
            for i in 0..nodes.len() {
                if nodes[i].status != JobStatus::Pending || nodes[i].queued {
                    continue;
                }
                if !nodes[i].after.iter().all(|&a| nodes[a].status.is_final()) {
                    continue;
                }
                let upstream_failed = nodes[i].after.iter().any(|&a| nodes[a].failing);
                let when = self.plan.jobs[nodes[i].plan_index].when;
                let runs = match when {
                    When::OnFailure => upstream_failed,
                    When::Always => true,
                    _ => !upstream_failed,
                };
                changed = true;
                if runs {
                    self.enqueue(nodes, i, coordinator, context, artifacts_dir, next_id)?;
                } else {
                    nodes[i].failing = upstream_failed;
                    finish(reporter, &mut nodes[i], JobStatus::Skipped, None, None);
                }
            }
            if !changed {
                return Ok(());
            }
        }
    }

    fn enqueue(
        &self,
        nodes: &mut [Node],
        i: usize,
        coordinator: &Coordinator,
        context: &RunContext,
        artifacts_dir: &Path,
        next_id: &mut u64,
    ) -> Result<(), ExecError> {
        *next_id += 1;
        let id = *next_id;
        let token = format!("glcbt-{}", random_token(24));
        let planned = &self.plan.jobs[nodes[i].plan_index];
        let project = &self.options.project_dir;
        let files_key = |files: &[String]| source::last_commit_of(project, files);
        let mut spec = to_job_spec(
            planned,
            &SpecOptions {
                files_key: &files_key,
            },
        );
        let dependencies: Vec<Dependency> = nodes[i]
            .deps
            .iter()
            .filter_map(|&d| {
                let (filename, size) = coordinator.share_archive(nodes[d].job_id, &token)?;
                Some(Dependency {
                    id: JobId(nodes[d].job_id),
                    token: JobToken::new(token.clone()),
                    name: nodes[d].name.clone(),
                    artifacts_filename: filename,
                    artifacts_size: size,
                })
            })
            .collect();
        self.complete_spec(&mut spec, id, &token, context, dependencies)
            .map_err(|message| ExecError::Usage(format!("job `{}`: {message}", nodes[i].name)))?;
        let node = &mut nodes[i];
        node.job_id = id;
        node.token = token.clone();
        node.queued = true;
        node.attempt += 1;
        coordinator.enqueue(NewJob {
            id,
            token,
            kind: node.kind,
            payload: runnel_api::encode_job_payload(&spec),
            log_file: node.log_file.clone(),
            artifacts_dir: artifacts_dir.join(&node.file_key),
        })
    }

    /// Fills what only a coordinator knows: ids, token, git remote, server variables.
    fn complete_spec(
        &self,
        spec: &mut JobSpec,
        id: u64,
        token: &str,
        context: &RunContext,
        dependencies: Vec<Dependency>,
    ) -> Result<(), String> {
        let (host_port, protocol) = match context.url.split_once("://") {
            Some((protocol, rest)) => (rest.to_owned(), protocol.to_owned()),
            None => (context.url.clone(), "http".to_owned()),
        };
        let (host, port) = host_port
            .rsplit_once(':')
            .map_or((host_port.clone(), "80".to_owned()), |(h, p)| {
                (h.to_owned(), p.to_owned())
            });
        let project_url = format!("{}/{}", context.url, context.project_path);
        let repo_url = format!(
            "{protocol}://gitlab-ci-token:{token}@{host_port}/{}.git",
            context.project_path
        );
        let name = spec.info.name.clone();
        spec.id = JobId(id);
        spec.token = JobToken::new(token);
        spec.allow_git_fetch = true;
        spec.info.pipeline_id = context.pipeline_id;
        spec.info.project_id = 1;
        spec.info.project_full_path = context.project_path.clone();
        spec.info.project_name = context
            .project_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        spec.git = GitInfo {
            repo_url: Secret::new(repo_url.clone()),
            repo_object_format: "sha1".to_owned(),
            ref_name: context.ref_name.clone(),
            sha: context.sha.clone(),
            before_sha: "0".repeat(40),
            ref_type: context.ref_type,
            refspecs: context.refspecs.clone(),
            depth: 20,
            protected: Some(false),
        };
        if spec.timeout.is_none() {
            spec.timeout = Some(Duration::from_secs(3600));
        }
        spec.features = JobFeatures {
            trace_sections: true,
            token_mask_prefixes: Vec::new(),
            failure_reasons: [
                "script_failure",
                "runner_system_failure",
                "job_execution_timeout",
                "image_pull_failure",
                "runner_unsupported",
                "unknown_failure",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        spec.dependencies = dependencies;
        let mut job_token = Variable::new("CI_JOB_TOKEN", token);
        job_token.masked = true;
        let mut server = vec![
            Variable::new("CI_SERVER", "yes"),
            Variable::new("CI_SERVER_URL", context.url.clone()),
            Variable::new("CI_SERVER_HOST", host),
            Variable::new("CI_SERVER_PORT", port),
            Variable::new("CI_SERVER_PROTOCOL", protocol),
            Variable::new("CI_SERVER_NAME", "Runnel"),
            Variable::new("CI_API_V4_URL", format!("{}/api/v4", context.url)),
            Variable::new("CI_PROJECT_ID", "1"),
            Variable::new("CI_PROJECT_URL", project_url.clone()),
            Variable::new("CI_PROJECT_VISIBILITY", "private"),
            Variable::new(
                "CI_PIPELINE_URL",
                format!("{project_url}/-/pipelines/{}", context.pipeline_id),
            ),
            Variable::new("CI_JOB_ID", id.to_string()),
            Variable::new("CI_JOB_URL", format!("{project_url}/-/jobs/{id}")),
            Variable::new("CI_JOB_NAME_SLUG", slug(&name)),
            Variable::new("CI_COMMIT_REF_PROTECTED", "false"),
            Variable::new("CI_COMMIT_TIMESTAMP", self.facts.author_date.clone()),
            Variable::new("GITLAB_USER_NAME", self.facts.author_name.clone()),
            Variable::new("GITLAB_USER_EMAIL", self.facts.author_email.clone()),
            Variable::new("GITLAB_USER_LOGIN", self.facts.author_name.clone()),
            job_token,
        ];
        let mut repository = Variable::new("CI_REPOSITORY_URL", repo_url);
        repository.public = false;
        server.push(repository);
        let masked_keys: BTreeSet<&str> = self
            .options
            .secrets
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        let planned_secrets: &[(String, bool)] = self
            .plan
            .job(&name)
            .map_or(&[], |j| j.job.secrets.as_slice());
        let mut job_vars = std::mem::take(&mut spec.variables);
        for variable in &mut job_vars {
            if masked_keys.contains(variable.key.as_str()) {
                variable.masked = true;
            }
            // A `secrets:` entry is a file variable unless it says `file: false`, as in GitLab.
            if let Some((_, file)) = planned_secrets.iter().find(|(k, _)| *k == variable.key) {
                variable.file = *file;
            }
        }
        server.extend(job_vars);
        // The snapshot is what the job checks out.
        server.push(Variable::new("CI_COMMIT_SHA", context.sha.clone()));
        server.push(Variable::new(
            "CI_COMMIT_SHORT_SHA",
            context.sha.get(..8).unwrap_or(&context.sha).to_owned(),
        ));
        // What GitLab's server does before it sends a job: nested references expanded.
        spec.variables = runnel_pipeline::expand_for_runner(&server)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        event: CoordinatorEvent,
        nodes: &mut [Node],
        coordinator: &Coordinator,
        context: &RunContext,
        artifacts_dir: &Path,
        next_id: &mut u64,
        reporter: &mut dyn Reporter,
        interrupted: bool,
    ) -> Result<(), ExecError> {
        let find = |nodes: &[Node], id: u64| nodes.iter().position(|n| n.job_id == id);
        match event {
            CoordinatorEvent::Started(id) => {
                if let Some(i) = find(nodes, id) {
                    let node = &mut nodes[i];
                    if node.started.is_none() {
                        node.started = Some(Instant::now());
                    }
                    if node.status == JobStatus::Pending {
                        node.status = JobStatus::Running;
                        reporter.event(&Event::JobStarted {
                            name: node.name.clone(),
                        });
                    }
                }
            }
            CoordinatorEvent::Output(id, bytes) => {
                if let Some(i) = find(nodes, id) {
                    reporter.event(&Event::JobOutput {
                        name: nodes[i].name.clone(),
                        bytes,
                    });
                }
            }
            CoordinatorEvent::Finished {
                id,
                success,
                failure_reason,
                exit_code,
                log_error,
            } => {
                let Some(i) = find(nodes, id) else {
                    return Ok(());
                };
                // Attempts append to one file: an earlier attempt's gap stays reported.
                if log_error.is_some() {
                    nodes[i].log_error = log_error;
                }
                if nodes[i].status.is_final() {
                    return Ok(());
                }
                let planned = &self.plan.jobs[nodes[i].plan_index];
                if success {
                    finish(reporter, &mut nodes[i], JobStatus::Success, None, None);
                    return Ok(());
                }
                let canceled = matches!(
                    failure_reason.as_deref(),
                    Some("runner_interrupted" | "job_canceled")
                ) || interrupted;
                if !canceled
                    && retry_applies(
                        planned,
                        nodes[i].attempt,
                        failure_reason.as_deref(),
                        exit_code,
                    )
                {
                    let message = format!(
                        "\n\x1b[0;33mJob failed; retrying (attempt {} of {})\x1b[0m\n",
                        nodes[i].attempt + 1,
                        planned.job.retry.as_ref().map_or(0, |r| r.max) + 1
                    );
                    reporter.event(&Event::JobOutput {
                        name: nodes[i].name.clone(),
                        bytes: message.into_bytes(),
                    });
                    self.enqueue(nodes, i, coordinator, context, artifacts_dir, next_id)?;
                    return Ok(());
                }
                let allowed = match &planned.allow_failure {
                    AllowFailure::No => false,
                    AllowFailure::Yes => true,
                    AllowFailure::ExitCodes(codes) => exit_code.is_some_and(|c| codes.contains(&c)),
                };
                let status = if canceled {
                    JobStatus::Canceled
                } else if allowed {
                    JobStatus::FailedAllowed
                } else {
                    JobStatus::Failed
                };
                finish(reporter, &mut nodes[i], status, exit_code, failure_reason);
            }
        }
        Ok(())
    }
}

/// Whether `retry` lets a failed attempt run again.
fn retry_applies(
    job: &PlannedJob,
    attempt: u32,
    reason: Option<&str>,
    exit_code: Option<i32>,
) -> bool {
    let Some(retry) = &job.job.retry else {
        return false;
    };
    if attempt > retry.max {
        return false;
    }
    let reason = reason.unwrap_or("unknown_failure");
    let when_ok = retry.when.is_empty()
        || retry.when.iter().any(|w| {
            w == "always"
                || w == reason
                || (w == "stuck_or_timeout_failure" && reason == "job_execution_timeout")
        });
    let code_ok =
        retry.exit_codes.is_empty() || exit_code.is_some_and(|c| retry.exit_codes.contains(&c));
    when_ok && code_ok
}

fn finish(
    reporter: &mut dyn Reporter,
    node: &mut Node,
    status: JobStatus,
    exit_code: Option<i32>,
    failure_reason: Option<String>,
) {
    if matches!(status, JobStatus::Failed | JobStatus::Canceled) {
        node.failing = true;
    }
    let ran = node.started.is_some();
    node.status = status.clone();
    reporter.event(&Event::JobFinished {
        name: node.name.clone(),
        result: JobResult {
            status,
            duration: node.started.map_or(Duration::ZERO, |s| s.elapsed()),
            exit_code,
            failure_reason,
            log_file: ran.then(|| node.log_file.clone()),
            log_error: node.log_error.clone(),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_pipeline::MemoryFiles;

    fn plan_of(yaml: &str) -> (Pipeline, Plan) {
        let files = MemoryFiles::new().with(".gitlab-ci.yml", yaml);
        let pipeline = runnel_pipeline::load(&files, ".gitlab-ci.yml").unwrap();
        let plan = evaluate(&pipeline, &Context::default()).unwrap();
        (pipeline, plan)
    }

    /// Review L3: names with the same slug get files of their own.
    #[test]
    fn names_sharing_a_slug_get_distinct_file_keys() {
        assert_eq!(
            file_keys(["build a", "build-a", "build/a", "build-a-2", "test"]),
            ["build-a", "build-a-3", "build-a-4", "build-a-2", "test"]
        );
        assert_eq!(file_keys(["", "!!"]), ["job", "job-2"]);
    }

    #[test]
    fn selection_pulls_in_needs_and_skips_manual_jobs() {
        let (pipeline, plan) = plan_of(
            "stages: [build, test, deploy]\nbuild:\n  stage: build\n  script: [b]\nlint:\n  stage: build\n  script: [l]\ntest:\n  stage: test\n  needs: [build]\n  script: [t]\ndeploy:\n  stage: deploy\n  when: manual\n  script: [d]\n",
        );
        let options = ExecOptions {
            jobs: vec!["test".into()],
            needs: true,
            ..ExecOptions::default()
        };
        let (selected, jobs) = select(&pipeline, &plan, &options).unwrap();
        assert_eq!(selected, ["build", "test"]);
        let lint = jobs.iter().find(|j| j.name == "lint").unwrap();
        assert_eq!(lint.skipped.as_deref(), Some("not selected"));

        let (selected, jobs) = select(&pipeline, &plan, &ExecOptions::default()).unwrap();
        assert_eq!(selected, ["build", "lint", "test"]);
        let deploy = jobs.iter().find(|j| j.name == "deploy").unwrap();
        assert!(deploy.skipped.as_deref().unwrap().contains("manual"));

        let unknown = ExecOptions {
            jobs: vec!["nope".into()],
            ..ExecOptions::default()
        };
        let error = select(&pipeline, &plan, &unknown).unwrap_err();
        assert!(error.is_bad_input());
        assert!(error.to_string().contains("\"nope\""), "{error}");
    }

    #[test]
    fn bridge_gateways_default_to_the_first_host() {
        assert_eq!(
            first_host("172.17.0.0/16"),
            Some(Ipv4Addr::new(172, 17, 0, 1))
        );
        assert_eq!(
            first_host("10.1.2.128/25"),
            Some(Ipv4Addr::new(10, 1, 2, 129))
        );
        assert_eq!(first_host("fd00::/64"), None);
    }

    #[test]
    fn retries_follow_when_and_exit_codes() {
        let (_, plan) = plan_of(
            "a:\n  script: [x]\n  retry:\n    max: 1\n    when: [script_failure]\n    exit_codes: [3]\n",
        );
        let job = &plan.jobs[0];
        assert!(retry_applies(job, 1, Some("script_failure"), Some(3)));
        assert!(
            !retry_applies(job, 2, Some("script_failure"), Some(3)),
            "max reached"
        );
        assert!(
            !retry_applies(job, 1, Some("script_failure"), Some(4)),
            "other exit code"
        );
        assert!(!retry_applies(
            job,
            1,
            Some("runner_system_failure"),
            Some(3)
        ));
    }
}
