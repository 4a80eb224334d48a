//! Images: which ones a job may use, getting them by pull policy, and building the helper image.
//!
//! - [`check_allowed`]: `allowed_images` / `allowed_services` globs (`*` stops at `/`, `**`
//!   crosses it), checked for images the job asks for, not for the runner's own defaults.
//! - [`effective_pull_policies`]: the job's `pull_policy` must be within `allowed_pull_policies`
//!   (or, when that is unset, within `pull_policy`).
//! - [`ensure_image`]: tries the policies in order: `never` needs the image locally,
//!   `if-not-present` pulls only when it is missing, `always` pulls. When all fail the error names
//!   the image and every policy tried, and maps to `image_pull_failure`.
//! - [`build_helper_image`]: builds a helper image locally from a base image and the runner's
//!   own binary (refusing a base where the binary cannot run), so no registry is needed; Runnel's
//!   own self-contained helper image is [`crate::helper_image`]'s.
//!
//! Registry credentials (`DOCKER_AUTH_CONFIG`, job credentials) are not handled yet.

use std::path::Path;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, RemoveImageOptions, TagImageOptions,
};
use futures::StreamExt;
use globset::GlobBuilder;
use runnel_config::PullPolicy;

use crate::DockerError;

/// Whether `image` matches one of the `allowed` patterns; an empty list allows everything.
pub fn check_allowed(
    what: &'static str,
    image: &str,
    allowed: &[String],
) -> Result<(), DockerError> {
    if allowed.is_empty() || matches_any(image, allowed) {
        Ok(())
    } else {
        Err(DockerError::NotAllowed {
            what,
            image: image.to_owned(),
            allowed: allowed.join(", "),
        })
    }
}

/// Whether `image` matches one of `patterns` (`*` stops at `/`, `**` crosses it).
pub fn matches_any(image: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|pattern| {
        GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .is_ok_and(|glob| glob.compile_matcher().is_match(image))
    })
}

/// Whether a container of `image` may run privileged: `privileged` is set and the image
/// matches `allowed_privileged` (an empty list allows every image).
pub fn privileged_allowed(privileged: bool, image: &str, allowed_privileged: &[String]) -> bool {
    privileged && (allowed_privileged.is_empty() || matches_any(image, allowed_privileged))
}

/// The policies to use for `image`: the job's when it gives any (each must be allowed), else
/// the runner's.
pub fn effective_pull_policies(
    image: &str,
    job_policies: &[String],
    configured: &[PullPolicy],
    allowed: &[PullPolicy],
) -> Result<Vec<PullPolicy>, DockerError> {
    if job_policies.is_empty() {
        return Ok(configured.to_vec());
    }
    let allowed = if allowed.is_empty() {
        configured
    } else {
        allowed
    };
    let allowed_text = || {
        allowed
            .iter()
            .map(|policy| policy.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    job_policies
        .iter()
        .map(|name| {
            let policy = name
                .parse::<PullPolicy>()
                .ok()
                .filter(|policy| allowed.contains(policy));
            policy.ok_or_else(|| DockerError::PullPolicyNotAllowed {
                image: image.to_owned(),
                policy: name.clone(),
                allowed: allowed_text(),
            })
        })
        .collect()
}

/// What the job log says when `if-not-present` finds the image locally.
pub(crate) const LOCAL_IMAGE_LINE: &str =
    "Using locally found image version due to \"if-not-present\" pull policy";

/// An image found locally (or pulled): its id and the user its containers run as unless told
/// otherwise (the image's `USER`; empty for root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundImage {
    /// The image id (`sha256:…`).
    pub id: String,
    /// The image's configured user (`Config.User`), as the image says it.
    pub user: String,
}

impl FoundImage {
    fn from_inspect(inspect: bollard::models::ImageInspect, image: &str) -> Self {
        FoundImage {
            id: inspect.id.unwrap_or_else(|| image.to_owned()),
            user: inspect
                .config
                .and_then(|config| config.user)
                .unwrap_or_default(),
        }
    }
}

/// Makes `image` available by trying `policies` in order; returns the image id. Pulls ask for
/// `platform` (`linux/arm64`, …) when it is not empty. Lines for the job log (`Pulling docker
/// image …`, pull warnings) are appended to `log`.
pub async fn ensure_image(
    docker: &Docker,
    image: &str,
    policies: &[PullPolicy],
    credentials: Option<DockerCredentials>,
    platform: &str,
    log: &mut Vec<String>,
) -> Result<String, DockerError> {
    ensure_image_found(docker, image, policies, credentials, platform, log)
        .await
        .map(|found| found.id)
}

/// [`ensure_image`] with the image's user too.
pub async fn ensure_image_found(
    docker: &Docker,
    image: &str,
    policies: &[PullPolicy],
    credentials: Option<DockerCredentials>,
    platform: &str,
    log: &mut Vec<String>,
) -> Result<FoundImage, DockerError> {
    let mut last_reason = "no pull policy was given";
    let mut last_source = None;
    for policy in policies {
        if *policy != PullPolicy::Always {
            match docker.inspect_image(image).await {
                Ok(inspect) => {
                    if *policy == PullPolicy::IfNotPresent {
                        log.push(LOCAL_IMAGE_LINE.to_owned());
                    }
                    return Ok(FoundImage::from_inspect(inspect, image));
                }
                Err(error) if *policy == PullPolicy::Never => {
                    last_reason = "the image is not present locally and the pull policy is `never`";
                    last_source = Some(Box::new(error));
                    log.push(format!(
                        "WARNING: Failed to pull image with policy \"never\": {image} is not present locally"
                    ));
                    continue;
                }
                Err(_) => {}
            }
        }
        log.push(format!("Pulling docker image {image} ..."));
        match pull(docker, image, credentials.clone(), platform).await {
            Ok(found) => return Ok(found),
            Err(error) => {
                log.push(format!(
                    "WARNING: Failed to pull image with policy \"{policy}\": {error}"
                ));
                tracing::warn!(image, policy = policy.as_str(), %error, "image pull failed");
                last_reason = "the registry pull failed";
                last_source = Some(Box::new(error));
            }
        }
    }
    Err(DockerError::ImagePull {
        image: image.to_owned(),
        policies: policies
            .iter()
            .map(|policy| policy.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        reason: last_reason.to_owned(),
        source: last_source,
    })
}

/// Whether a container of an image whose `USER` is `image_user`, created with `user` (the
/// configured or the job's user, if any), runs as root.
pub fn runs_as_root(user: Option<&str>, image_user: &str) -> bool {
    let user = user.filter(|user| !user.is_empty()).unwrap_or(image_user);
    // `user[:group]`: the group does not matter.
    let name = user.split(':').next().unwrap_or_default();
    matches!(name, "" | "root" | "0")
}

/// Pulls `image` and returns it as found after the pull.
async fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<DockerCredentials>,
    platform: &str,
) -> Result<FoundImage, bollard::errors::Error> {
    let (name, tag) = crate::naming::split_image(image);
    let options = CreateImageOptions {
        from_image: Some(name.to_owned()),
        tag: Some(tag.to_owned()),
        platform: platform.to_owned(),
        ..CreateImageOptions::default()
    };
    let mut progress = docker.create_image(Some(options), None, credentials);
    while let Some(event) = progress.next().await {
        let event = event?;
        if let Some(detail) = event.error_detail.and_then(|detail| detail.message) {
            return Err(bollard::errors::Error::DockerStreamError { error: detail });
        }
    }
    let inspect = docker.inspect_image(image).await?;
    Ok(FoundImage::from_inspect(inspect, image))
}

/// Where the helper image puts the runner binary; what `PlanOptions::runner_command` must be.
pub const HELPER_RUNNER_COMMAND: &str = "/usr/bin/gitlab-runner-helper";

/// Builds the helper image `tag` from `base`: the base plus `runner_binary` at
/// `/usr/bin/runnel` and `/usr/bin/gitlab-runner-helper` (a symlink). Tools such as `git` come
/// from the base image; the base needs a POSIX shell at `/bin/sh` (or `/busybox/sh`) to run
/// stages. The base image must be available locally or pullable; it is not pulled otherwise.
///
/// The binary is then run in the image (`--version`): when it cannot run there (a glibc
/// binary on a musl or static busybox base), the image is removed again and the error says
/// why. Returns the built image id.
pub async fn build_helper_image(
    docker: &Docker,
    base: &str,
    tag: &str,
    runner_binary: &Path,
) -> Result<String, DockerError> {
    let binary = std::fs::read(runner_binary).map_err(|source| DockerError::BuildContext {
        path: runner_binary.to_owned(),
        source,
    })?;
    let dockerfile = format!(
        "FROM {base}\nCOPY rootfs/ /\nENTRYPOINT []\nLABEL {}=\"runnel\" {}=\"{}\"\n",
        crate::helper_image::LABEL_HELPER,
        crate::helper_image::LABEL_VERSION,
        crate::helper_image::RUNNEL_VERSION,
    );
    let context =
        helper_context(&dockerfile, &binary).map_err(|source| DockerError::BuildContext {
            path: runner_binary.to_owned(),
            source,
        })?;
    let id = build_image(docker, tag, context).await?;
    let check = crate::helper_image::check_runs(
        docker,
        &id,
        tag,
        vec![HELPER_RUNNER_COMMAND.to_owned(), "--version".to_owned()],
    )
    .await;
    if let Err(error) = check {
        if let Err(remove) = docker
            .remove_image(tag, None::<RemoveImageOptions>, None)
            .await
        {
            tracing::warn!(image = tag, error = %remove, "failed to remove the unusable helper image");
        }
        return Err(error);
    }
    Ok(id)
}

/// `runnel docker build-helper-image [--from <base>] [--tag <tag>]` on the daemon `host` names
/// (else `DOCKER_HOST`, else the default socket), with the running executable. Without a base
/// it builds Runnel's own helper image, the one jobs use when `helper_image` is unset
/// ([`crate::helper_image::BuiltinHelper`]), and also tags it `tag` when given. With a base,
/// the image is tagged `tag`, else `runnel-helper:latest`. Returns the tag and the image id.
pub async fn build_helper_image_from_current_exe(
    host: Option<&str>,
    base: Option<&str>,
    tag: Option<&str>,
) -> Result<(String, String), DockerError> {
    let host = crate::client::host_or_default(host);
    let tls_verify = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|value| !value.is_empty());
    let docker = crate::client::connect_to(Some(&host), tls_verify, None)?;
    let docker = crate::client::ping(docker, &host).await?;
    let Some(base) = base else {
        let helper = crate::helper_image::BuiltinHelper::cached(None).await?;
        let mut log = Vec::new();
        let id = helper.ensure(&docker, &host, &mut log).await?;
        for line in log {
            tracing::info!("{line}");
        }
        let Some(tag) = tag else {
            return Ok((helper.tag().to_owned(), id));
        };
        let (repo, version) = crate::naming::split_image(tag);
        docker
            .tag_image(
                &id,
                Some(TagImageOptions {
                    repo: Some(repo.to_owned()),
                    tag: Some(version.to_owned()),
                }),
            )
            .await
            .map_err(|source| DockerError::api("tag image", tag, source))?;
        return Ok((tag.to_owned(), id));
    };
    let tag = tag.unwrap_or("runnel-helper:latest").to_owned();
    let exe = std::env::current_exe().map_err(|source| DockerError::BuildContext {
        path: "(the running executable)".into(),
        source,
    })?;
    let id = build_helper_image(&docker, base, &tag, &exe).await?;
    Ok((tag, id))
}

/// Builds `tag` from a tar `context` holding a `Dockerfile`; returns the image id.
pub async fn build_image(
    docker: &Docker,
    tag: &str,
    context: Vec<u8>,
) -> Result<String, DockerError> {
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".to_owned(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        ..BuildImageOptions::default()
    };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(event) = stream.next().await {
        let event = event.map_err(|source| match source {
            bollard::errors::Error::DockerStreamError { error } => DockerError::Build {
                tag: tag.to_owned(),
                message: error,
            },
            source => DockerError::api("build image", tag, source),
        })?;
        if let Some(message) = event.error_detail.and_then(|detail| detail.message) {
            return Err(DockerError::Build {
                tag: tag.to_owned(),
                message,
            });
        }
        if let Some(line) = event
            .stream
            .as_deref()
            .map(str::trim_end)
            .filter(|line| !line.is_empty())
        {
            tracing::debug!(tag, "{line}");
        }
    }
    let inspect = docker
        .inspect_image(tag)
        .await
        .map_err(|source| DockerError::api("inspect built image", tag, source))?;
    Ok(inspect.id.unwrap_or_else(|| tag.to_owned()))
}

/// The tar build context of the helper image.
fn helper_context(dockerfile: &str, binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append_file(&mut builder, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    append_file(&mut builder, "rootfs/usr/bin/runnel", binary, 0o755)?;
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder.append_link(&mut link, "rootfs/usr/bin/gitlab-runner-helper", "runnel")?;
    builder.into_inner()
}

/// Appends one regular file to a build context.
pub fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    builder.append_data(&mut header, path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_images_use_path_aware_globs() {
        let allowed = vec!["alpine:*".to_owned(), "registry.local/**".to_owned()];
        assert!(check_allowed("image", "alpine:3", &allowed).is_ok());
        assert!(check_allowed("image", "registry.local/a/b:1", &allowed).is_ok());
        let denied = check_allowed("image", "evil/alpine:3", &allowed).err();
        insta::assert_snapshot!(denied.map(|e| e.to_string()).unwrap_or_default(), @"the image `evil/alpine:3` is not allowed by `allowed_images` (alpine:*, registry.local/**)");
        assert!(check_allowed("image", "anything", &[]).is_ok());
    }

    #[test]
    fn privileged_mode_is_limited_to_allowed_images() {
        let allowed = vec!["docker:*-dind".to_owned()];
        assert!(privileged_allowed(true, "docker:27-dind", &allowed));
        assert!(!privileged_allowed(true, "alpine:3", &allowed));
        assert!(!privileged_allowed(false, "docker:27-dind", &allowed));
        assert!(privileged_allowed(true, "alpine:3", &[]));
    }

    #[test]
    fn job_pull_policies_must_be_allowed() {
        let configured = [PullPolicy::IfNotPresent];
        let allowed = [PullPolicy::IfNotPresent, PullPolicy::Never];
        assert_eq!(
            effective_pull_policies("img", &[], &configured, &allowed).ok(),
            Some(vec![PullPolicy::IfNotPresent])
        );
        assert_eq!(
            effective_pull_policies("img", &["never".into()], &configured, &allowed).ok(),
            Some(vec![PullPolicy::Never])
        );
        let error = effective_pull_policies("img", &["always".into()], &configured, &allowed).err();
        insta::assert_snapshot!(error.map(|e| e.to_string()).unwrap_or_default(), @"the pull policy `always` of image `img` is not allowed (allowed: if-not-present, never)");
        // Without allowed_pull_policies, the configured ones are the limit.
        assert!(effective_pull_policies("img", &["always".into()], &configured, &[]).is_err());
    }

    #[test]
    fn helper_context_holds_the_binary_and_the_alias() {
        let context = helper_context("FROM base\n", b"\x7fELF").expect("context");
        let mut archive = tar::Archive::new(context.as_slice());
        let entries: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let entry = entry.expect("entry");
                let link = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|link| format!(" -> {}", link.display()))
                    .unwrap_or_default();
                format!(
                    "{} {:o}{link}",
                    entry.path().expect("path").display(),
                    entry.header().mode().expect("mode")
                )
            })
            .collect();
        insta::assert_snapshot!(entries.join("\n"), @r"
        Dockerfile 644
        rootfs/usr/bin/runnel 755
        rootfs/usr/bin/gitlab-runner-helper 777 -> runnel
        ");
    }
}
