//! Command-line definitions (clap) and nothing else.
//!
//! Command names, flags, short aliases and environment variables follow the official
//! `gitlab-runner` (reference section 1), so that scripts and unit files written for it keep
//! working. Behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A fast, drop-in GitLab Runner.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags accepted before any command.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Debug mode: log everything at debug level.
    #[arg(long, global = true, env = "RUNNER_DEBUG")]
    pub(crate) debug: bool,
    /// Log level (panic, fatal, error, warning, info, debug); overrides config.toml `log_level`.
    #[arg(long, short = 'l', global = true, env = "LOG_LEVEL")]
    pub(crate) log_level: Option<LogLevel>,
    /// Log format (runner, text, json); overrides config.toml `log_format`.
    #[arg(long, global = true, env = "LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
}

/// Daemon log levels, as the official runner names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogLevel {
    Panic,
    Fatal,
    Error,
    #[value(alias = "warn")]
    Warning,
    Info,
    Debug,
    Trace,
}

/// Daemon log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-friendly: the message, then `key=value` fields.
    Runner,
    /// `time=… level=… msg=…` lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Register a runner with GitLab and save it in config.toml.
    Register(Box<RegisterArgs>),
    /// Check that the configured runners can talk to GitLab.
    Verify(VerifyArgs),
    /// Unregister runners from GitLab and remove them from config.toml.
    Unregister(UnregisterArgs),
    /// List the runners in config.toml.
    List(ConfigArgs),
    /// Validate config.toml and print every problem found.
    Lint(ConfigArgs),
    /// Rotate runner authentication tokens.
    ResetToken(ResetTokenArgs),
    /// Run the runner daemon: poll GitLab for jobs of every configured runner.
    Run(RunArgs),
    /// Run a single runner, from flags or from one config.toml entry.
    RunSingle(Box<RunSingleArgs>),
    /// Install the runner as an OS service (systemd, OpenRC, SysV init or launchd).
    Install(ServiceInstallArgs),
    /// Stop the OS service and remove it.
    Uninstall(ServiceArgs),
    /// Start the OS service.
    Start(ServiceArgs),
    /// Stop the OS service; running jobs may finish first.
    Stop(ServiceArgs),
    /// Restart the OS service.
    Restart(ServiceArgs),
    /// Show whether the OS service is running (exit status 1 unless it is).
    Status(ServiceArgs),
    /// Docker executor tools.
    #[command(subcommand)]
    Docker(DockerCommand),
    /// Run this project's .gitlab-ci.yml locally, the way GitLab would run it.
    Exec(Box<ExecArgs>),
    /// Job helper: archive paths and upload them as job artifacts.
    #[command(hide = true)]
    ArtifactsUploader(Box<ArtifactsUploaderArgs>),
    /// Job helper: download a job's artifacts and extract them here.
    #[command(hide = true)]
    ArtifactsDownloader(ArtifactsDownloaderArgs),
    /// Job helper: archive paths into a local cache file.
    #[command(hide = true)]
    CacheArchiver(CacheArchiverArgs),
    /// Job helper: extract a local cache file here.
    #[command(hide = true)]
    CacheExtractor(CacheExtractorArgs),
    /// Job helper: stream a log file from an offset (the kubernetes executor's attach mode).
    #[command(hide = true)]
    ReadLogs(ReadLogsArgs),
}

/// `runnel exec` flags.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// Jobs to run (job or instance names); default: the whole pipeline.
    #[arg(value_name = "JOB")]
    pub(crate) jobs: Vec<String>,
    /// The project directory.
    #[arg(short = 'C', value_name = "DIR", default_value = ".")]
    pub(crate) directory: PathBuf,
    /// The CI file, relative to the project directory.
    #[arg(long, default_value = ".gitlab-ci.yml")]
    pub(crate) file: String,
    /// Print the pipeline (stages, jobs, needs, why jobs are skipped) and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// Also run the jobs that the named jobs `needs`, transitively.
    #[arg(long)]
    pub(crate) needs: bool,
    /// The executor; default: docker for jobs with an image when Docker answers, else shell.
    #[arg(long, value_enum)]
    pub(crate) executor: Option<ExecExecutor>,
    /// Jobs running at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub(crate) concurrency: Option<usize>,
    /// A variable that overrides the CI file (KEY=VALUE; repeatable); not masked.
    /// Other local users can read a process's arguments: pass secrets with --secrets-file.
    #[arg(long = "variable", value_name = "KEY=VALUE")]
    pub(crate) variables: Vec<String>,
    /// A file of variables (KEY=VALUE lines, or a YAML map of strings); not masked.
    #[arg(long, value_name = "FILE")]
    pub(crate) variables_file: Option<PathBuf>,
    /// A masked variable (KEY=VALUE; repeatable): replaced by [MASKED] in every log. As in
    /// GitLab, the value must be at least 8 characters from A-Z a-z 0-9 + / = @ : . ~ - _.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    pub(crate) secrets: Vec<String>,
    /// A file of masked variables (same format as --variables-file).
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    /// Plain output (one line per log line) even on a terminal.
    #[arg(long)]
    pub(crate) plain: bool,
    /// Run `when: manual` and `when: delayed` jobs instead of skipping them.
    #[arg(long)]
    pub(crate) manual: bool,
    /// A pipeline input for the CI file's `spec:inputs` (NAME=VALUE; repeatable). The value is
    /// read as YAML: `3` is a number, `true` a boolean, `[a, b]` a list.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub(crate) inputs: Vec<String>,
    /// Read remote, project, template and component includes from `.runnel/includes/` only
    /// (what earlier runs fetched). Private projects need GITLAB_TOKEN (or CI_JOB_TOKEN) in the
    /// environment when fetching.
    #[arg(long)]
    pub(crate) offline: bool,
    /// The docker helper image (default: the one Runnel builds itself on first use).
    #[arg(long, value_name = "IMAGE")]
    pub(crate) helper_image: Option<String>,
}

/// `runnel exec --executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExecExecutor {
    Shell,
    Docker,
}

/// `runnel docker …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DockerCommand {
    /// Build the helper image locally: by default the self-contained one jobs use when
    /// `helper_image` is unset (this binary, the host's git and their libraries, FROM scratch);
    /// with `--from`, this binary on top of a base image, for `[runners.docker] helper_image`.
    BuildHelperImage(BuildHelperImageArgs),
}

/// `runnel docker build-helper-image` flags.
#[derive(Debug, Args)]
pub(crate) struct BuildHelperImageArgs {
    /// A base image to put this binary on (must have a shell, git for git sources, and a C
    /// library this binary runs with: checked by running it). Default: no base, a
    /// self-contained image.
    #[arg(long = "from")]
    pub(crate) base: Option<String>,
    /// The tag to give the image (default: runnel-helper:<version>-<digest> without --from,
    /// runnel-helper:latest with it).
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// Docker daemon address (default DOCKER_HOST or the local socket).
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub(crate) host: Option<String>,
}

/// `-c/--config`, shared by most commands.
#[derive(Debug, Args, Clone)]
pub(crate) struct ConfigArgs {
    /// Config file (default /etc/gitlab-runner/config.toml as root, ~/.gitlab-runner/config.toml otherwise).
    #[arg(long, short = 'c', env = "CONFIG_FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Settings of one runner that can be given on the command line (shared by `register` and
/// `run-single`); they end up in a `[[runners]]` entry.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct RunnerArgs {
    /// GitLab instance URL.
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub(crate) url: Option<String>,
    /// Runner authentication token (glrt-…). Other local users can read a process's
    /// arguments: prefer the CI_SERVER_TOKEN environment variable.
    #[arg(long, short = 't', env = "CI_SERVER_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Runner name.
    #[arg(long = "name", visible_alias = "description", env = "RUNNER_NAME")]
    pub(crate) name: Option<String>,
    /// Executor: shell, docker, kubernetes, custom, ssh, …
    #[arg(long, env = "RUNNER_EXECUTOR")]
    pub(crate) executor: Option<String>,
    /// Shell to generate scripts for (bash, sh, pwsh, powershell).
    #[arg(long, env = "RUNNER_SHELL")]
    pub(crate) shell: Option<String>,
    /// Maximum concurrent jobs of this runner (0 = no limit).
    #[arg(long, env = "RUNNER_LIMIT")]
    pub(crate) limit: Option<i64>,
    /// Maximum job log size in kilobytes.
    #[arg(long, env = "RUNNER_OUTPUT_LIMIT")]
    pub(crate) output_limit: Option<i64>,
    /// Maximum concurrent job requests.
    #[arg(long, env = "RUNNER_REQUEST_CONCURRENCY")]
    pub(crate) request_concurrency: Option<i64>,
    /// Directory where builds are stored.
    #[arg(long, env = "RUNNER_BUILDS_DIR")]
    pub(crate) builds_dir: Option<String>,
    /// Directory where build cache is stored.
    #[arg(long, env = "RUNNER_CACHE_DIR")]
    pub(crate) cache_dir: Option<String>,
    /// Overwrite the URL of the GitLab instance used for git clones.
    #[arg(long, env = "CLONE_URL")]
    pub(crate) clone_url: Option<String>,
    /// Custom environment variables injected into jobs (KEY=VALUE, repeatable).
    #[arg(long = "env", env = "RUNNER_ENV", value_delimiter = ';')]
    pub(crate) env: Vec<String>,
    /// Script run before fetching sources.
    #[arg(long, env = "RUNNER_PRE_GET_SOURCES_SCRIPT")]
    pub(crate) pre_get_sources_script: Option<String>,
    /// Script run after fetching sources.
    #[arg(long, env = "RUNNER_POST_GET_SOURCES_SCRIPT")]
    pub(crate) post_get_sources_script: Option<String>,
    /// Script run before the job's script.
    #[arg(long, env = "RUNNER_PRE_BUILD_SCRIPT")]
    pub(crate) pre_build_script: Option<String>,
    /// Script run after the job's script.
    #[arg(long, env = "RUNNER_POST_BUILD_SCRIPT")]
    pub(crate) post_build_script: Option<String>,
    /// CA certificate file for the GitLab connection.
    #[arg(long = "tls-ca-file", env = "CI_SERVER_TLS_CA_FILE")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// Client certificate file for the GitLab connection.
    #[arg(long = "tls-cert-file", env = "CI_SERVER_TLS_CERT_FILE")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// Client key file for the GitLab connection.
    #[arg(long = "tls-key-file", env = "CI_SERVER_TLS_KEY_FILE")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Default Docker image (docker executors).
    #[arg(long = "docker-image", env = "DOCKER_IMAGE")]
    pub(crate) docker_image: Option<String>,
    /// Run Docker containers privileged.
    #[arg(long = "docker-privileged", env = "DOCKER_PRIVILEGED")]
    pub(crate) docker_privileged: bool,
    /// Docker volumes (repeatable).
    #[arg(long = "docker-volumes", env = "DOCKER_VOLUMES", value_delimiter = ',')]
    pub(crate) docker_volumes: Vec<String>,
    /// Docker pull policy (repeatable: always, if-not-present, never).
    #[arg(long = "docker-pull-policy", env = "DOCKER_PULL_POLICY")]
    pub(crate) docker_pull_policy: Vec<String>,
    /// Docker network mode.
    #[arg(long = "docker-network-mode", env = "DOCKER_NETWORK_MODE")]
    pub(crate) docker_network_mode: Option<String>,
    /// Do not create cache volumes.
    #[arg(long = "docker-disable-cache", env = "DOCKER_DISABLE_CACHE")]
    pub(crate) docker_disable_cache: bool,
    /// Docker daemon address.
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub(crate) docker_host: Option<String>,
    /// Helper image to use instead of the default.
    #[arg(long = "docker-helper-image", env = "DOCKER_HELPER_IMAGE")]
    pub(crate) docker_helper_image: Option<String>,
    /// SSH host (ssh executor).
    #[arg(long = "ssh-host", env = "SSH_HOST")]
    pub(crate) ssh_host: Option<String>,
    /// SSH port.
    #[arg(long = "ssh-port", env = "SSH_PORT")]
    pub(crate) ssh_port: Option<String>,
    /// SSH user.
    #[arg(long = "ssh-user", env = "SSH_USER")]
    pub(crate) ssh_user: Option<String>,
    /// SSH password.
    #[arg(long = "ssh-password", env = "SSH_PASSWORD", hide_env_values = true)]
    pub(crate) ssh_password: Option<String>,
    /// SSH identity file.
    #[arg(long = "ssh-identity-file", env = "SSH_IDENTITY_FILE")]
    pub(crate) ssh_identity_file: Option<String>,
    /// Executable for the custom executor's run stage.
    #[arg(long = "custom-run-exec", env = "CUSTOM_RUN_EXEC")]
    pub(crate) custom_run_exec: Option<String>,
    /// Every other official runner-config flag (`crate::runner_flags`).
    #[command(flatten)]
    pub(crate) settings: crate::runner_flags::ConfigFlags,
}

/// `register` flags (reference 1.5).
#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Take missing values from flags and environment only; never prompt.
    #[arg(long, short = 'n', env = "REGISTER_NON_INTERACTIVE")]
    pub(crate) non_interactive: bool,
    /// Do not unregister the runner again when saving the configuration fails.
    #[arg(long, env = "REGISTER_LEAVE_RUNNER")]
    pub(crate) leave_runner: bool,
    /// TOML file with one [[runners]] entry whose settings are merged in.
    #[arg(long, env = "TEMPLATE_CONFIG_FILE")]
    pub(crate) template_config: Option<PathBuf>,
    /// Legacy registration token (deprecated by GitLab). Prefer the REGISTRATION_TOKEN
    /// environment variable: other local users can read a process's arguments.
    #[arg(long, short = 'r', env = "REGISTRATION_TOKEN", hide_env_values = true)]
    pub(crate) registration_token: Option<String>,
    /// Tags for the runner, comma separated (legacy registration only).
    #[arg(long, env = "RUNNER_TAG_LIST")]
    pub(crate) tag_list: Option<String>,
    /// Run jobs without tags (legacy registration only).
    #[arg(long, env = "REGISTER_RUN_UNTAGGED", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) run_untagged: Option<bool>,
    /// Lock the runner to its project (legacy registration only).
    #[arg(long, env = "REGISTER_LOCKED", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) locked: Option<bool>,
    /// not_protected or ref_protected (legacy registration only).
    #[arg(long, env = "REGISTER_ACCESS_LEVEL")]
    pub(crate) access_level: Option<String>,
    /// Maximum job timeout in seconds (legacy registration only).
    #[arg(long, env = "REGISTER_MAXIMUM_TIMEOUT")]
    pub(crate) maximum_timeout: Option<i64>,
    /// Register the runner paused (legacy registration only).
    #[arg(long, env = "REGISTER_PAUSED", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) paused: Option<bool>,
    /// Maintenance note (legacy registration only).
    #[arg(long, env = "REGISTER_MAINTENANCE_NOTE")]
    pub(crate) maintenance_note: Option<String>,
    #[command(flatten)]
    pub(crate) runner: RunnerArgs,
}

/// `verify` flags.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Only this runner (by name).
    #[arg(long, short = 'n')]
    pub(crate) name: Option<String>,
    /// Only runners with this URL.
    #[arg(long, short = 'u')]
    pub(crate) url: Option<String>,
    /// Only the runner with this token.
    #[arg(long, short = 't', hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Remove runners that fail verification from config.toml.
    #[arg(long)]
    pub(crate) delete: bool,
}

/// `unregister` flags.
#[derive(Debug, Args)]
pub(crate) struct UnregisterArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The runner to unregister, by name.
    #[arg(long, short = 'n')]
    pub(crate) name: Option<String>,
    /// Unregister every runner in config.toml.
    #[arg(long)]
    pub(crate) all_runners: bool,
    /// The runner's GitLab URL (with --token).
    #[arg(long, short = 'u', env = "CI_SERVER_URL")]
    pub(crate) url: Option<String>,
    /// The runner's token (with --url). Prefer the CI_SERVER_TOKEN environment variable:
    /// other local users can read a process's arguments.
    #[arg(long, short = 't', env = "CI_SERVER_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

/// `reset-token` flags.
#[derive(Debug, Args)]
pub(crate) struct ResetTokenArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The runner, by name.
    #[arg(long, short = 'n')]
    pub(crate) name: Option<String>,
    /// The runner, by URL (with --id).
    #[arg(long, short = 'u')]
    pub(crate) url: Option<String>,
    /// The runner, by id (with --url).
    #[arg(long, short = 'i')]
    pub(crate) id: Option<u64>,
    /// Every runner in config.toml.
    #[arg(long)]
    pub(crate) all_runners: bool,
    /// Personal access token to reset with (uses the runner id instead of the current token).
    #[arg(long, hide_env_values = true)]
    pub(crate) pat: Option<String>,
}

/// `run` flags (reference 1.2).
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Metrics and debug HTTP server address (default port 9252).
    #[arg(long, env = "LISTEN_ADDRESS")]
    pub(crate) listen_address: Option<String>,
    /// Service name (for logs).
    #[arg(long, short = 'n')]
    pub(crate) service: Option<String>,
    /// Change to this directory before running.
    #[arg(long, short = 'd')]
    pub(crate) working_directory: Option<PathBuf>,
    /// Run job scripts as this user (shell executor, as root).
    #[arg(long, short = 'u')]
    pub(crate) user: Option<String>,
    /// Log to the system log.
    #[arg(long, env = "LOG_SYSLOG")]
    pub(crate) syslog: bool,
    /// Job journal directory: each running job's state, kept to finish it after a crash or an
    /// outage (default: `runnel-journal` beside config.toml; 0700, one daemon per directory).
    #[arg(long, env = "RUNNEL_JOURNAL_DIR")]
    pub(crate) journal_dir: Option<PathBuf>,
}

/// `run-single` flags (reference 1.3).
#[derive(Debug, Args)]
pub(crate) struct RunSingleArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Take the runner from config.toml by name.
    #[arg(long = "runner", short = 'r')]
    pub(crate) runner_name: Option<String>,
    /// Exit after this many seconds without a job (0 = never).
    #[arg(long, default_value_t = 0)]
    pub(crate) wait_timeout: u64,
    /// Exit after this many jobs (0 = never).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_builds: u64,
    /// Job journal directory: each running job's state, kept to finish it after a crash or an
    /// outage (default: `runnel-journal` beside config.toml; 0700, one daemon per directory).
    #[arg(long, env = "RUNNEL_JOURNAL_DIR")]
    pub(crate) journal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) runner: RunnerArgs,
}

/// Flags of every service command (reference 1.1).
#[derive(Debug, Args, Clone)]
pub(crate) struct ServiceArgs {
    /// Service name.
    #[arg(long, short = 'n', default_value = "runnel")]
    pub(crate) service: String,
    /// Manage a per-user systemd service (`systemctl --user`) instead of a system one.
    #[arg(long)]
    pub(crate) user_service: bool,
}

/// `install` flags (reference 1.1).
#[derive(Debug, Args, Clone)]
pub(crate) struct ServiceInstallArgs {
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
    /// Directory the service runs in (default: the --init-user's home, else yours).
    #[arg(long, short = 'd')]
    pub(crate) working_directory: Option<PathBuf>,
    /// Config file the service uses (default: as for `run`; ~USER/.gitlab-runner/config.toml with --init-user).
    #[arg(long, short = 'c')]
    pub(crate) config: Option<PathBuf>,
    /// Log to the system log (default: on, except under systemd, which keeps stderr in the journal).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) syslog: Option<bool>,
    /// Run jobs as this user (root only; the service itself runs as root).
    #[arg(long, short = 'u')]
    pub(crate) user: Option<String>,
    /// Run the service itself as this user (root only).
    #[arg(long, short = 'i')]
    pub(crate) init_user: Option<String>,
    /// Seconds a stop waits for running jobs (SIGQUIT) before aborting them (SIGTERM).
    #[arg(long, default_value_t = 7200, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) stop_timeout: u64,
}

/// How a helper command reaches GitLab for one job (the official `JobCredentials`). The values
/// normally come from the job's environment, so no token has to appear on a command line.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct JobCredentialArgs {
    /// Job id.
    #[arg(long, env = "CI_JOB_ID")]
    pub(crate) id: Option<u64>,
    /// Job token.
    #[arg(long, env = "CI_JOB_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// GitLab URL.
    #[arg(long, env = "CI_SERVER_URL")]
    pub(crate) url: Option<String>,
    /// CA certificates (PEM) to trust.
    #[arg(long, env = "CI_SERVER_TLS_CA_FILE")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "CI_SERVER_TLS_CERT_FILE")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "CI_SERVER_TLS_KEY_FILE")]
    pub(crate) tls_key_file: Option<PathBuf>,
}

/// What to archive (the official `fileArchiver` flags).
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct FileArchiverArgs {
    /// Path pattern to add (repeatable).
    #[arg(long = "path")]
    pub(crate) paths: Vec<String>,
    /// Path pattern to leave out (repeatable).
    #[arg(long = "exclude")]
    pub(crate) excludes: Vec<String>,
    /// Add the files git reports as untracked.
    #[arg(long)]
    pub(crate) untracked: bool,
    /// List every archived file.
    #[arg(long)]
    pub(crate) verbose: bool,
}

/// `artifacts-uploader` flags (reference 1.4).
#[derive(Debug, Args, Clone)]
pub(crate) struct ArtifactsUploaderArgs {
    #[command(flatten)]
    pub(crate) credentials: JobCredentialArgs,
    #[command(flatten)]
    pub(crate) files: FileArchiverArgs,
    /// Artifacts name.
    #[arg(long, default_value = "artifacts")]
    pub(crate) name: String,
    /// How long GitLab keeps the artifacts.
    #[arg(long, default_value = "")]
    pub(crate) expire_in: String,
    /// zip, gzip, raw or tarzstd.
    #[arg(long, default_value = "")]
    pub(crate) artifact_format: String,
    /// archive, junit, dotenv, …
    #[arg(long, default_value = "")]
    pub(crate) artifact_type: String,
    /// fastest, fast, default, slow or slowest.
    #[arg(long, env = "ARTIFACT_COMPRESSION_LEVEL", default_value = "")]
    pub(crate) compression_level: String,
    /// Overall upload timeout (accepted for compatibility; the client's limits apply).
    #[arg(long, default_value = "1h")]
    pub(crate) timeout: String,
    /// Response header timeout (accepted for compatibility).
    #[arg(long, default_value = "10m")]
    pub(crate) response_header_timeout: String,
    /// Where the archive is staged before the upload (default: the system temp dir).
    #[arg(long, env = "ARCHIVER_STAGING_DIR")]
    pub(crate) archiver_staging_dir: Option<PathBuf>,
}

/// `artifacts-downloader` flags (reference 1.4).
#[derive(Debug, Args, Clone)]
pub(crate) struct ArtifactsDownloaderArgs {
    #[command(flatten)]
    pub(crate) credentials: JobCredentialArgs,
    /// Ask GitLab for a redirect to object storage.
    #[arg(long, env = "FF_USE_DIRECT_DOWNLOAD")]
    pub(crate) direct_download: bool,
    /// Where the archive is staged before extraction (default: the system temp dir).
    #[arg(long, env = "ARCHIVER_STAGING_DIR")]
    pub(crate) archiver_staging_dir: Option<PathBuf>,
    /// Extra attempts after a failed download.
    #[arg(long, default_value_t = 2)]
    pub(crate) retry: u32,
    /// Seconds between attempts.
    #[arg(long, default_value = "1s")]
    pub(crate) retry_time: String,
}

/// `cache-archiver` flags (reference 1.4).
#[derive(Debug, Args, Clone)]
pub(crate) struct CacheArchiverArgs {
    #[command(flatten)]
    pub(crate) files: FileArchiverArgs,
    /// The local cache archive.
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// Presigned PUT URL of the distributed cache object (the planner passes it in the
    /// environment: it carries a signature).
    #[arg(long, env = "RUNNEL_CACHE_URL", hide_env_values = true)]
    pub(crate) url: Option<String>,
    /// Presigned HEAD URL of the same object, to skip uploading an unchanged archive.
    #[arg(long, env = "RUNNEL_CACHE_HEAD_URL", hide_env_values = true)]
    pub(crate) check_url: Option<String>,
    /// Archives larger than this many bytes are kept local only; 0 = no limit.
    #[arg(long, env = "CACHE_MAX_UPLOADED_ARCHIVE_SIZE", default_value_t = 0)]
    pub(crate) max_uploaded_archive_size: u64,
    /// Timeout of each transfer request, in minutes.
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout: u64,
    /// fastest, fast, default, slow or slowest.
    #[arg(long, env = "CACHE_COMPRESSION_LEVEL", default_value = "")]
    pub(crate) compression_level: String,
    /// zip or tarzstd.
    #[arg(long, env = "CACHE_COMPRESSION_FORMAT", default_value = "")]
    pub(crate) compression_format: String,
}

/// `read-logs` flags (as the official helper's).
#[derive(Debug, Args, Clone)]
pub(crate) struct ReadLogsArgs {
    /// The log file.
    #[arg(long)]
    pub(crate) path: PathBuf,
    /// Where to start, in bytes.
    #[arg(long, default_value_t = 0)]
    pub(crate) offset: u64,
    /// How long to wait for the file to appear (a Go duration: 1m0s).
    #[arg(long, default_value = "1s")]
    pub(crate) wait_file_timeout: String,
}

/// `cache-extractor` flags (reference 1.4).
#[derive(Debug, Args, Clone)]
pub(crate) struct CacheExtractorArgs {
    /// The local cache archive.
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// Presigned GET URL of the distributed cache object (the planner passes it in the
    /// environment: it carries a signature).
    #[arg(long, env = "RUNNEL_CACHE_URL", hide_env_values = true)]
    pub(crate) url: Option<String>,
    /// Presigned HEAD URL of the same object (accepted; the GET asks with `If-None-Match`).
    #[arg(long, env = "RUNNEL_CACHE_HEAD_URL", hide_env_values = true)]
    pub(crate) head_url: Option<String>,
    /// Timeout of each transfer request, in minutes.
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout: u64,
}
