//! The commands: one module each, all returning `anyhow::Result` with context that names the
//! file, URL or runner involved.

mod cache_remote;
mod exec;
mod helpers;
mod lint;
mod list;
mod prompt;
mod read_logs;
mod register;
mod reset_token;
mod run;
mod service;
mod unregister;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use runnel_api::{Client, ClientConfig};

use crate::cli::{BuildHelperImageArgs, Command, ConfigArgs, DockerCommand};
use crate::logging::LevelHandle;

/// What every command may need besides its own flags.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) levels: LevelHandle,
    /// The log level was set on the command line, so config.toml's `log_level` is ignored.
    pub(crate) level_from_cli: bool,
}

/// Runs one command.
pub(crate) async fn dispatch(command: Command, context: Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::Register(args) => register::run(*args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Unregister(args) => unregister::run(args).await,
        Command::List(args) => list::run(&args),
        Command::Lint(args) => lint::run(&args),
        Command::ResetToken(args) => reset_token::run(args).await,
        Command::Run(args) => run::run(args, context).await,
        Command::RunSingle(args) => run::run_single(*args, context).await,
        Command::Install(args) => service::install(args).await,
        Command::Uninstall(args) => service::control(args, service::Operation::Uninstall).await,
        Command::Start(args) => service::control(args, service::Operation::Start).await,
        Command::Stop(args) => service::control(args, service::Operation::Stop).await,
        Command::Restart(args) => service::control(args, service::Operation::Restart).await,
        Command::Status(args) => service::control(args, service::Operation::Status).await,
        Command::Docker(DockerCommand::BuildHelperImage(args)) => build_helper_image(args).await,
        Command::Exec(args) => exec::run(*args).await,
        Command::ArtifactsUploader(args) => helpers::upload_artifacts(*args, &context).await,
        Command::ArtifactsDownloader(args) => helpers::download_artifacts(args, &context).await,
        Command::CacheArchiver(args) => helpers::archive_cache(&args, &context).await,
        Command::CacheExtractor(args) => helpers::extract_cache(&args, &context).await,
        Command::ReadLogs(args) => read_logs::run(args).await,
    }
}

/// `runnel docker build-helper-image`: builds the helper image locally and prints its tag.
async fn build_helper_image(args: BuildHelperImageArgs) -> anyhow::Result<ExitCode> {
    let (tag, id) = runnel_executor_docker::build_helper_image_from_current_exe(
        args.host.as_deref(),
        args.base.as_deref(),
        args.tag.as_deref(),
    )
    .await
    .with_context(|| match &args.base {
        Some(base) => format!("cannot build the helper image from {base}"),
        None => "cannot build Runnel's helper image".to_owned(),
    })?;
    if args.base.is_some() {
        tracing::info!(image = %tag, id = %id, "helper image built; set [runners.docker] helper_image to use it");
    } else {
        tracing::info!(image = %tag, id = %id, "helper image ready; jobs without helper_image use it");
    }
    println!("{tag}");
    Ok(ExitCode::SUCCESS)
}

/// The config file to use: `-c`/`CONFIG_FILE`, else the official default for this user.
pub(crate) fn config_path(args: &ConfigArgs) -> PathBuf {
    runnel_config::config_path(args.config.as_deref())
}

/// This machine's system id, from (or created in) `.runner_system_id` next to the config file.
pub(crate) fn system_id(config_path: &std::path::Path) -> anyhow::Result<String> {
    let id = runnel_config::SystemIdFile::next_to(config_path)
        .load_or_create()
        .context("cannot get this machine's system id")?;
    Ok(id.as_str().to_owned())
}

/// Opens config.toml, rendering every problem when it is not valid.
pub(crate) fn load_config(path: &std::path::Path) -> anyhow::Result<runnel_config::ConfigFile> {
    runnel_config::ConfigFile::load(path).map_err(|error| {
        let diagnostics = error.diagnostics();
        if diagnostics.is_empty() {
            anyhow::Error::new(error)
        } else {
            let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{} is not valid:\n{}", path.display(), lines.join("\n"))
        }
    })
}

/// A runner's TLS files as the client wants them (unset ones from the `certs/<host>` lookup).
pub(crate) fn runner_client(
    runner: &runnel_config::RunnerConfig,
    config_path: &Path,
) -> anyhow::Result<Client> {
    let path = |p: &Option<String>| p.as_ref().map(PathBuf::from);
    client_for(
        &runner.url,
        path(&runner.tls_ca_file),
        path(&runner.tls_cert_file),
        path(&runner.tls_key_file),
        Some(config_path),
    )
}

/// An API client for `url`, with the runner's TLS files. With `config_path`, files not given
/// are looked up as the official runner does: `certs/<host>.crt`, `.auth.crt`, `.auth.key`
/// next to config.toml (and next to the default config file).
pub(crate) fn client_for(
    url: &str,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    config_path: Option<&Path>,
) -> anyhow::Result<Client> {
    let found = config_path.map_or_else(runnel_config::HostCertificates::default, |path| {
        runnel_config::HostCertificates::find(&runnel_config::certificate_dirs(path), url)
    });
    Client::new(ClientConfig {
        url: url.to_owned(),
        tls_ca_file: tls_ca_file.or(found.ca_file),
        tls_cert_file: tls_cert_file.or(found.cert_file),
        tls_key_file: tls_key_file.or(found.key_file),
        ..ClientConfig::default()
    })
    .with_context(|| format!("cannot set up a GitLab client for {}", redact_url(url)))
}

/// A URL fit for messages: any userinfo (credentials) removed.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            // Both fail only for URLs that cannot carry credentials anyway.
            parsed.set_username("").ok();
            parsed.set_password(None).ok();
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}
