//! `runnel register`: registers a runner with GitLab and saves it in config.toml.
//!
//! Two workflows, as in the official runner (reference 1.5):
//! - a `glrt-` authentication token (the runner was created in the GitLab UI): checked with
//!   `POST /runners/verify`; server-side settings (tags, locked, …) belong to the UI and are
//!   rejected here;
//! - a legacy registration token: a new runner is created with `POST /runners`.
//!
//! If saving config.toml fails after GitLab registered the runner, the runner is unregistered
//! again (unless `--leave-runner`), so no orphan is left on the server.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use runnel_api::{Client, Features, RegisterRequest, RunnerInfo, VerifyRequest};
use runnel_config::{ConfigFile, Executor, NewRunner, RawTable};
use runnel_types::RunnerToken;
use time::OffsetDateTime;

use super::prompt::{Prompter, Question};
use crate::cli::RegisterArgs;

/// Executors a runner can be registered with (the official list).
const EXECUTORS: &[&str] = &[
    "shell",
    "docker",
    "docker-windows",
    "docker+machine",
    "docker-autoscaler",
    "kubernetes",
    "custom",
    "instance",
    "ssh",
    "parallels",
    "virtualbox",
];

pub(crate) async fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let interactive = !args.non_interactive;
    register(args, Prompter::new(std::io::stdin().lock(), interactive)).await
}

async fn register<R: BufRead>(
    args: RegisterArgs,
    mut prompter: Prompter<R>,
) -> anyhow::Result<ExitCode> {
    let path = super::config_path(&args.config);
    // Load first: a broken config.toml must stop us before anything is registered on GitLab.
    let mut file = super::load_config(&path)?;
    let system_id = super::system_id(&path)?;

    let runner = &args.runner;
    let url = prompter.ask(
        runner.url.as_deref(),
        Question {
            text: "Enter the GitLab instance URL (for example, https://gitlab.com/):",
            flag: "--url",
            default: None,
            required: true,
        },
    )?;
    let client = super::client_for(
        &url,
        runner.tls_ca_file.clone(),
        runner.tls_cert_file.clone(),
        runner.tls_key_file.clone(),
        Some(&path),
    )?;

    let (token_value, via_registration_flag) = match (&runner.token, &args.registration_token) {
        (Some(token), _) if !token.is_empty() => (token.clone(), false),
        (_, Some(token)) if !token.is_empty() => (token.clone(), true),
        _ => (
            prompter.ask(
                None,
                Question {
                    text: "Enter the registration token:",
                    flag: "--token",
                    default: None,
                    required: true,
                },
            )?,
            true,
        ),
    };
    let token = RunnerToken::new(token_value);
    let hostname = hostname();
    let info = RunnerInfo {
        executor: runner.executor.clone().unwrap_or_default(),
        shell: runner.shell.clone().unwrap_or_default(),
        features: Features::network_client(),
        ..RunnerInfo::default()
    };

    let registered = if token.is_authentication_token() {
        check_no_server_side_settings(&args, via_registration_flag)?;
        let verified = verify(&client, &token, &system_id, &info, &url).await?;
        let Some(id) = verified.id.filter(|id| *id != 0) else {
            bail!(
                "GitLab at {} did not return a runner id for this token",
                super::redact_url(&url)
            );
        };
        let name = ask_name(&mut prompter, runner.name.as_deref(), &hostname)?;
        Registered {
            name,
            id,
            token: if verified.token.is_empty() {
                token
            } else {
                verified.token
            },
            obtained_at: Some(now_seconds()),
            expires_at: verified.token_expires_at,
            manager: true,
        }
    } else if !via_registration_flag {
        // An existing legacy runner token given with --token: verify it, store it as is.
        verify(&client, &token, &system_id, &info, &url).await?;
        let name = ask_name(&mut prompter, runner.name.as_deref(), &hostname)?;
        Registered {
            name,
            id: 0,
            token,
            obtained_at: None,
            expires_at: None,
            manager: false,
        }
    } else {
        tracing::warn!(
            "registration tokens are deprecated by GitLab; create the runner in the GitLab UI and register it with its glrt- token"
        );
        let name = prompter.ask(
            runner.name.as_deref(),
            Question {
                text: "Enter a description for the runner:",
                flag: "--description",
                default: Some(&hostname),
                required: false,
            },
        )?;
        let tag_list = prompter.ask(
            args.tag_list.as_deref(),
            Question {
                text: "Enter tags for the runner (comma-separated):",
                flag: "--tag-list",
                default: Some(""),
                required: false,
            },
        )?;
        let maintenance_note = prompter.ask(
            args.maintenance_note.as_deref(),
            Question {
                text: "Enter optional maintenance note for the runner:",
                flag: "--maintenance-note",
                default: Some(""),
                required: false,
            },
        )?;
        let tags: Vec<String> = tag_list
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .map(str::to_owned)
            .collect();
        let maximum_timeout = u64::try_from(args.maximum_timeout.unwrap_or(0))
            .map_err(|_| anyhow::anyhow!("--maximum-timeout must not be negative"))?;
        let request = RegisterRequest {
            registration_token: &token,
            description: &name,
            maintenance_note: &maintenance_note,
            // Untagged jobs are always allowed for a runner without tags.
            run_untagged: tags.is_empty() || args.run_untagged.unwrap_or(false),
            tags: &tags,
            locked: args.locked.unwrap_or(true),
            access_level: args.access_level.as_deref().unwrap_or(""),
            maximum_timeout,
            paused: args.paused.unwrap_or(false),
            info: &info,
        };
        let created = client.register_runner(&request).await.with_context(|| {
            format!("cannot register a runner with {}", super::redact_url(&url))
        })?;
        Registered {
            name,
            id: created.id.unwrap_or(0),
            token: created.token,
            obtained_at: Some(now_seconds()),
            expires_at: created.token_expires_at,
            manager: false,
        }
    };

    let executor = prompter.ask(
        runner.executor.as_deref(),
        Question {
            text: &format!("Enter an executor: {}:", EXECUTORS.join(", ")),
            flag: "--executor",
            default: None,
            required: true,
        },
    )?;
    let outcome = save(
        &mut file,
        &mut prompter,
        &args,
        &url,
        &executor,
        &registered,
    );
    if let Err(error) = outcome {
        if !args.leave_runner {
            undo_registration(&client, &registered, &system_id).await;
        }
        return Err(error);
    }
    let config = file.config();
    if let Some(r) = config.runners.last()
        && r.limit > config.concurrent
    {
        {
            tracing::warn!(
                limit = r.limit,
                concurrent = config.concurrent,
                "the runner's limit is larger than concurrent; raise concurrent in config.toml to use it"
            );
        }
    }
    tracing::info!(
        runner = %registered.token.short(),
        config = %path.display(),
        "Runner registered successfully. Feel free to start it, but if it's running already the config should be automatically reloaded!"
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks `token` with `POST /runners/verify`.
async fn verify(
    client: &Client,
    token: &RunnerToken,
    system_id: &str,
    info: &RunnerInfo,
    url: &str,
) -> anyhow::Result<runnel_api::Registered> {
    client
        .verify_runner(&VerifyRequest {
            token,
            system_id,
            info,
        })
        .await
        .with_context(|| {
            format!(
                "cannot verify the runner token with {}",
                super::redact_url(url)
            )
        })
}

struct Registered {
    name: String,
    id: u64,
    token: RunnerToken,
    obtained_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
    /// Registered through a glrt token: undo with `DELETE /runners/managers`.
    manager: bool,
}

fn ask_name<R: BufRead>(
    prompter: &mut Prompter<R>,
    given: Option<&str>,
    hostname: &str,
) -> anyhow::Result<String> {
    prompter.ask(
        given,
        Question {
            text: "Enter a name for the runner. This is stored only in the local config.toml file:",
            flag: "--name",
            default: Some(hostname),
            required: false,
        },
    )
}

/// Settings that live on the server for `glrt-` runners cannot be set at registration.
fn check_no_server_side_settings(
    args: &RegisterArgs,
    via_registration_flag: bool,
) -> anyhow::Result<()> {
    let mut given = Vec::new();
    if args.locked == Some(false) {
        given.push("--locked=false");
    }
    if args.access_level.is_some() {
        given.push("--access-level");
    }
    if args.run_untagged.is_some() {
        given.push("--run-untagged");
    }
    if args.maximum_timeout.is_some() {
        given.push("--maximum-timeout");
    }
    if args.paused.is_some() {
        given.push("--paused");
    }
    if args.tag_list.is_some() {
        given.push("--tag-list");
    }
    if args.maintenance_note.is_some() {
        given.push("--maintenance-note");
    }
    if given.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{} cannot be used with a runner authentication token (glrt-…): these settings are made when the runner is created in GitLab",
        given.join(", ")
    );
    if via_registration_flag {
        tracing::warn!("{message}; ignoring them");
        Ok(())
    } else {
        bail!(message)
    }
}

fn save<R: BufRead>(
    file: &mut ConfigFile,
    prompter: &mut Prompter<R>,
    args: &RegisterArgs,
    url: &str,
    executor: &str,
    registered: &Registered,
) -> anyhow::Result<()> {
    let kind: Executor = executor.parse().map_err(|_| {
        anyhow::anyhow!(
            "unknown executor {executor:?}; expected one of {}",
            EXECUTORS.join(", ")
        )
    })?;
    let runner = &args.runner;
    let mut new = NewRunner::new(&registered.name, url, registered.token.clone(), kind);
    new.id = (registered.id != 0).then_some(registered.id);
    new.token_obtained_at = registered.obtained_at;
    new.token_expires_at = registered.expires_at;
    new.shell = match runner.shell.as_deref() {
        Some(shell) => Some(shell.parse().map_err(|_| {
            anyhow::anyhow!("unknown shell {shell:?}; expected bash, sh, pwsh or powershell")
        })?),
        None => None,
    };
    if let Some(shell) = runner
        .shell
        .as_deref()
        .filter(|s| !matches!(*s, "bash" | "sh"))
    {
        tracing::warn!(
            "shell {shell:?} is not supported by Runnel (only bash and sh): the runner is registered, but Runnel will not request jobs for it"
        );
    }
    new.limit = to_u32(runner.limit, "--limit")?;
    new.output_limit = to_u32(runner.output_limit, "--output-limit")?;
    new.request_concurrency = to_u32(runner.request_concurrency, "--request-concurrency")?;
    copy_runner_settings(runner, &mut new);
    if executor.starts_with("docker") {
        let image = prompter.ask(
            runner.docker_image.as_deref(),
            Question {
                text: "Enter the default Docker image (for example, ruby:3.3):",
                flag: "--docker-image",
                default: None,
                required: true,
            },
        )?;
        let mut volumes = runner.docker_volumes.clone();
        let has_cache = volumes
            .iter()
            .any(|v| v == "/cache" || v.ends_with(":/cache"));
        if !runner.docker_disable_cache && !has_cache {
            volumes.push("/cache".to_owned());
        }
        let mut docker = RawTable::new();
        docker.insert("image", image);
        docker.insert("privileged", runner.docker_privileged);
        docker.insert("disable_cache", runner.docker_disable_cache);
        docker.insert("volumes", volumes);
        if !runner.docker_pull_policy.is_empty() {
            docker.insert("pull_policy", runner.docker_pull_policy.clone());
        }
        for (key, value) in [
            ("network_mode", &runner.docker_network_mode),
            ("host", &runner.docker_host),
            ("helper_image", &runner.docker_helper_image),
        ] {
            if let Some(value) = value {
                docker.insert(key, value.clone());
            }
        }
        new.sections.push(("docker".to_owned(), docker));
    } else if executor == "ssh" {
        let mut ssh = RawTable::new();
        let questions = [
            (
                &runner.ssh_host,
                "host",
                "Enter the SSH server address (for example, my.server.com):",
                "--ssh-host",
                true,
            ),
            (
                &runner.ssh_port,
                "port",
                "Enter the SSH server port (for example, 22):",
                "--ssh-port",
                false,
            ),
            (
                &runner.ssh_user,
                "user",
                "Enter the SSH user (for example, root):",
                "--ssh-user",
                true,
            ),
            (
                &runner.ssh_password,
                "password",
                "Enter the SSH password (for example, docker.io):",
                "--ssh-password",
                false,
            ),
            (
                &runner.ssh_identity_file,
                "identity_file",
                "Enter the path to the SSH identity file (for example, /home/user/.ssh/id_rsa):",
                "--ssh-identity-file",
                false,
            ),
        ];
        for (given, key, text, flag, required) in questions {
            let default = if required { None } else { Some("") };
            let answer = prompter.ask(
                given.as_deref(),
                Question {
                    text,
                    flag,
                    default,
                    required,
                },
            )?;
            if !answer.is_empty() {
                ssh.insert(key, answer);
            }
        }
        // `--ssh-known-hosts-file` and `--ssh-disable-strict-host-key-checking` come through
        // the flag table below.
        new.sections.push(("ssh".to_owned(), ssh));
    } else if executor == "custom" {
        // As officially, the custom executor asks nothing: its programs come from flags (the
        // other `--custom-*` flags come through the flag table below).
        if let Some(exec) = &runner.custom_run_exec {
            crate::runner_flags::set_key(&mut new, "custom.run_exec", exec.clone().into());
        }
    }
    runner
        .settings
        .apply(&mut new)
        .context("invalid runner setting")?;
    if let Some(path) = &args.template_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the template config {}", path.display()))?;
        let template: toml::Table = toml::from_str(&text)
            .with_context(|| format!("the template config {} is not valid TOML", path.display()))?;
        let typed = typed_keys_set(&new);
        crate::runner_flags::merge_template(&mut new, &template, &typed)
            .with_context(|| format!("cannot merge the template config {}", path.display()))?;
    }
    file.add_runner(&new)
        .context("cannot add the runner to the configuration")?;
    file.save().context("cannot save the configuration")?;
    Ok(())
}

async fn undo_registration(client: &Client, registered: &Registered, system_id: &str) {
    let result = if registered.manager {
        client
            .unregister_runner_manager(&registered.token, system_id)
            .await
    } else {
        client.unregister_runner(&registered.token).await
    };
    match result {
        Ok(()) => {
            tracing::warn!(runner = %registered.token.short(), "the runner was unregistered again because the configuration could not be saved")
        }
        Err(error) => {
            tracing::error!(runner = %registered.token.short(), %error, "the configuration could not be saved and unregistering the runner failed too; remove it in GitLab")
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "runnel".to_owned())
}

fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// The directory, hook-script, environment and TLS settings that `register` and `run-single`
/// take from the same flags, into the new `[[runners]]` entry.
pub(super) fn copy_runner_settings(
    runner: &crate::cli::RunnerArgs,
    new: &mut runnel_config::NewRunner,
) {
    new.builds_dir.clone_from(&runner.builds_dir);
    new.cache_dir.clone_from(&runner.cache_dir);
    new.clone_url.clone_from(&runner.clone_url);
    new.environment.clone_from(&runner.env);
    new.pre_get_sources_script
        .clone_from(&runner.pre_get_sources_script);
    new.post_get_sources_script
        .clone_from(&runner.post_get_sources_script);
    new.pre_build_script.clone_from(&runner.pre_build_script);
    new.post_build_script.clone_from(&runner.post_build_script);
    let display = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    new.tls_ca_file = display(&runner.tls_ca_file);
    new.tls_cert_file = display(&runner.tls_cert_file);
    new.tls_key_file = display(&runner.tls_key_file);
}

fn to_u32(value: Option<i64>, flag: &str) -> anyhow::Result<Option<u32>> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| anyhow::anyhow!("{flag} must be between 0 and {}, not {v}", u32::MAX))
        })
        .transpose()
}

/// The `[[runners]]` keys with typed fields in `new` that flags or answers already set; a
/// template never overrides them.
fn typed_keys_set(new: &NewRunner) -> Vec<&'static str> {
    let mut set = Vec::new();
    let mut mark = |key: &'static str, present: bool| {
        if present {
            set.push(key);
        }
    };
    mark("limit", new.limit.is_some());
    mark("output_limit", new.output_limit.is_some());
    mark("request_concurrency", new.request_concurrency.is_some());
    mark("tls-ca-file", new.tls_ca_file.is_some());
    mark("tls-cert-file", new.tls_cert_file.is_some());
    mark("tls-key-file", new.tls_key_file.is_some());
    mark("builds_dir", new.builds_dir.is_some());
    mark("cache_dir", new.cache_dir.is_some());
    mark("clone_url", new.clone_url.is_some());
    mark("environment", !new.environment.is_empty());
    mark(
        "pre_get_sources_script",
        new.pre_get_sources_script.is_some(),
    );
    mark(
        "post_get_sources_script",
        new.post_get_sources_script.is_some(),
    );
    mark("pre_build_script", new.pre_build_script.is_some());
    mark("post_build_script", new.post_build_script.is_some());
    mark("shell", new.shell.is_some());
    set
}
