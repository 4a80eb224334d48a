//! `runnel install`, `uninstall`, `start`, `stop`, `restart` and `status`: Runnel as an OS
//! service, through `runnel-os-service`.
//!
//! Flags and checks follow the official runner (reference 1.1): `install` as root needs `--user`
//! or `--init-user` (not both), those two are root-only, the installed service runs
//! `runnel run --config … --working-directory … --service … [--syslog] [--user …]`, a missing
//! config file is created empty, and `status` exits 1 unless the service runs. Paths are made
//! absolute before they go into the definition. This module does not talk to GitLab.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
pub(crate) use runnel_os_service::Operation;
use runnel_os_service::{Host, ManagerKind, Service, ServiceSpec, Status};

use crate::cli::{ServiceArgs, ServiceInstallArgs};

const DESCRIPTION: &str = "Runnel GitLab Runner";

pub(crate) async fn install(args: ServiceInstallArgs) -> anyhow::Result<ExitCode> {
    let host = Host::from_env()?;
    let service = open(&host, &args.service)?;
    let spec = install_spec(&host, service.kind(), &args)?;
    service.check_install()?;
    ensure_config(&spec, &args)?;
    let path = blocking(move || service.install(&spec)).await?;
    let mut start = String::from("runnel start");
    if args.service.service != "runnel" {
        start.push_str(" -n ");
        start.push_str(&args.service.service);
    }
    if args.service.user_service {
        start.push_str(" --user-service");
    }
    tracing::info!(
        message = "Installed the service.",
        service = %args.service.service,
        path = %path.display(),
        start = %start
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn control(args: ServiceArgs, operation: Operation) -> anyhow::Result<ExitCode> {
    let host = Host::from_env()?;
    let service = open(&host, &args)?;
    let name = args.service;
    match operation {
        Operation::Status => {
            let status = blocking(move || service.status()).await?;
            return Ok(match status {
                Status::Running => {
                    println!("{name}: Service is running");
                    ExitCode::SUCCESS
                }
                Status::Stopped => {
                    eprintln!("{name}: Service has stopped");
                    ExitCode::FAILURE
                }
            });
        }
        Operation::Uninstall => {
            let path = blocking(move || service.uninstall()).await?;
            tracing::info!(message = "Uninstalled the service.", service = %name, path = %path.display());
        }
        Operation::Start => {
            blocking(move || service.start()).await?;
            tracing::info!(message = "Started the service.", service = %name);
        }
        Operation::Stop => {
            blocking(move || service.stop()).await?;
            tracing::info!(message = "Stopped the service.", service = %name);
        }
        Operation::Restart => {
            blocking(move || service.restart()).await?;
            tracing::info!(message = "Restarted the service.", service = %name);
        }
        Operation::Install => bail!("install takes its own flags"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The service `args` name, under the detected manager.
fn open(host: &Host, args: &ServiceArgs) -> anyhow::Result<Service> {
    let kind = host.detect()?;
    let scope = host.scope(kind, args.user_service)?;
    Ok(Service::new(host.clone(), kind, scope, &args.service)?)
}

/// Manager calls block (a graceful stop can wait for jobs): keep them off the async workers.
async fn blocking<T, F>(work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Result<T, runnel_os_service::ServiceError> + Send + 'static,
    T: Send + 'static,
{
    let result = tokio::task::spawn_blocking(work)
        .await
        .context("the service command stopped unexpectedly")?;
    Ok(result?)
}

fn install_spec(
    host: &Host,
    kind: ManagerKind,
    args: &ServiceInstallArgs,
) -> anyhow::Result<ServiceSpec> {
    if args.user.is_some() && args.init_user.is_some() {
        bail!("only one of --user or --init-user can be given");
    }
    if !host.is_root() {
        if args.user.is_some() {
            bail!("--user is only supported when installing as root");
        }
        if args.init_user.is_some() {
            bail!("--init-user is only supported when installing as root");
        }
    } else if args.user.is_none() && args.init_user.is_none() {
        bail!(
            "please specify the user that runs the service: --user USER (jobs run as USER) or \
             --init-user USER (the service itself runs as USER)"
        );
    }
    let init_home = match &args.init_user {
        Some(user) if args.config.is_none() || args.working_directory.is_none() => {
            Some(home_of(user)?)
        }
        _ => None,
    };
    let config = match (&args.config, &init_home) {
        (Some(config), _) => absolute(config)?,
        (None, Some(home)) => home.join(".gitlab-runner").join("config.toml"),
        (None, None) => runnel_config::default_config_path_for(host.is_root(), host.home()),
    };
    let config = absolute(&config)?;
    let working_directory = match (&args.working_directory, &init_home, host.home()) {
        (Some(dir), _, _) => absolute(dir)?,
        (None, Some(home), _) => home.clone(),
        (None, None, Some(home)) => home.to_path_buf(),
        (None, None, None) => {
            std::env::current_dir().context("cannot read the current directory")?
        }
    };
    let program = std::env::current_exe().context("cannot find the runnel executable")?;
    let mut arguments = vec![
        "run".to_owned(),
        "--config".to_owned(),
        utf8(&config)?,
        "--working-directory".to_owned(),
        utf8(&working_directory)?,
        "--service".to_owned(),
        args.service.service.clone(),
    ];
    // Like the official runner: syslog by default, except under systemd (the journal has stderr).
    if args.syslog.unwrap_or(kind != ManagerKind::Systemd) {
        arguments.push("--syslog".to_owned());
    }
    if let Some(user) = &args.user {
        arguments.extend(["--user".to_owned(), user.clone()]);
    }
    Ok(ServiceSpec {
        description: DESCRIPTION.to_owned(),
        program,
        arguments,
        init_user: args.init_user.clone(),
        stop_timeout: Duration::from_secs(args.stop_timeout),
    })
}

/// Like the official `install`: the config must load, and a missing one is created (empty, 0600)
/// so the service has something to start with; it goes to the init user when there is one.
fn ensure_config(spec: &ServiceSpec, args: &ServiceInstallArgs) -> anyhow::Result<()> {
    let Some(path) = spec
        .arguments
        .iter()
        .position(|arg| arg == "--config")
        .and_then(|index| spec.arguments.get(index + 1))
        .map(PathBuf::from)
    else {
        return Ok(());
    };
    let mut file = super::load_config(&path)?;
    if file.existed() {
        return Ok(());
    }
    let dir_existed = path.parent().is_some_and(Path::exists);
    file.save()
        .with_context(|| format!("cannot create config file {}", path.display()))?;
    tracing::info!(message = "Created an empty config file.", path = %path.display());
    if let Some(user) = &args.init_user {
        give_to(user, &path, dir_existed);
    }
    Ok(())
}

/// Hands a freshly created config file (and its new directory) to the init user, so the service
/// can read it; failures only warn, the service manager will report an unreadable file.
fn give_to(user: &str, path: &Path, dir_existed: bool) {
    let Ok(Some(account)) = nix::unistd::User::from_name(user) else {
        return;
    };
    let mut paths = vec![path];
    if !dir_existed && let Some(dir) = path.parent() {
        paths.push(dir);
    }
    for path in paths {
        if let Err(error) = nix::unistd::chown(path, Some(account.uid), Some(account.gid)) {
            tracing::warn!(message = "Cannot hand the config file to the init user.", path = %path.display(), user, %error);
        }
    }
}

fn home_of(user: &str) -> anyhow::Result<PathBuf> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(account)) => Ok(account.dir),
        Ok(None) => bail!("user {user:?} does not exist"),
        Err(error) => Err(error).with_context(|| format!("cannot look up user {user:?}")),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

fn utf8(path: &Path) -> anyhow::Result<String> {
    match path.to_str() {
        Some(text) => Ok(text.to_owned()),
        None => bail!("path {} is not valid UTF-8", path.display()),
    }
}
