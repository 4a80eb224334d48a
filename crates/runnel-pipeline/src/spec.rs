//! Turns one [`PlannedJob`] into the [`JobSpec`] the production engine runs, shaped the way the
//! coordinator would send it: a `script` step (`before_script` then `script`, `on_success`)
//! and an `after_script` step (`always`, failure allowed), the image and services, one
//! `archive` artifact plus one entry per report, the caches, the timeout, the variables (all
//! public, `expand: false` ones raw), the hooks and the dependencies by name.
//!
//! It does not fill what only a coordinator knows (job id and token, git remote, dependency
//! artifact files): the caller sets `id`, `token`, `git` and `info` ids itself.

use runnel_types::{
    ArtifactFormat, ArtifactSpec, CachePolicy as SpecCachePolicy, CacheSpec, Dependency, Hook,
    ImageSpec, JobInfo, JobSpec, Step, Variable, When,
};

use crate::eval::PlannedJob;
use crate::model::{Artifacts, CacheKey, CachePolicy, Image, SaveWhen};

/// Options for [`to_job_spec`].
pub struct SpecOptions<'a> {
    /// Computes the part of a `cache:key:files` key GitLab derives from the files' last commit;
    /// `None` means "no such commit" (the key is then `default`, after the prefix).
    pub files_key: &'a dyn Fn(&[String]) -> Option<String>,
}

impl std::fmt::Debug for SpecOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpecOptions").finish_non_exhaustive()
    }
}

impl Default for SpecOptions<'_> {
    fn default() -> Self {
        Self {
            files_key: &|_| None,
        }
    }
}

fn image_spec(image: &Image) -> ImageSpec {
    ImageSpec {
        name: image.name.clone(),
        aliases: image
            .alias
            .iter()
            .flat_map(|a| a.split([',', ' ']))
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        command: image.command.clone().unwrap_or_default(),
        entrypoint: image.entrypoint.clone().unwrap_or_default(),
        variables: image
            .variables
            .iter()
            .map(|v| {
                let mut var = Variable::new(v.key.clone(), v.value.clone());
                var.raw = !v.expand;
                var
            })
            .collect(),
        pull_policy: image.pull_policy.clone(),
        docker_platform: image.docker_platform.clone().unwrap_or_default(),
        docker_user: image.docker_user.clone().unwrap_or_default(),
        kubernetes_user: image.kubernetes_user.clone().unwrap_or_default(),
        ..ImageSpec::default()
    }
}

fn artifact_when(when: SaveWhen) -> When {
    match when {
        SaveWhen::OnSuccess => When::OnSuccess,
        SaveWhen::OnFailure => When::OnFailure,
        SaveWhen::Always => When::Always,
    }
}

/// GitLab's file name and format for each report type.
fn report_shape(kind: &str) -> (String, ArtifactFormat) {
    let gz = ArtifactFormat::Gzip;
    let raw = ArtifactFormat::Raw;
    let (name, format) = match kind {
        "junit" => ("junit.xml.gz", gz),
        "metrics" => ("metrics.txt.gz", gz),
        "dotenv" => (".env.gz", gz),
        "cobertura" => ("cobertura-coverage.xml.gz", gz),
        "coverage_report" => ("coverage-report.xml.gz", gz),
        "cyclonedx" => ("gl-sbom.cdx.json.gz", gz),
        "annotations" => ("gl-annotations.json.gz", gz),
        "codequality" => ("gl-code-quality-report.json", raw),
        "sast" => ("gl-sast-report.json", raw),
        "secret_detection" => ("gl-secret-detection-report.json", raw),
        "dependency_scanning" => ("gl-dependency-scanning-report.json", raw),
        "container_scanning" => ("gl-container-scanning-report.json", raw),
        "dast" => ("gl-dast-report.json", raw),
        "terraform" => ("tfplan.json", raw),
        "accessibility" => ("gl-accessibility.json", raw),
        "requirements" => ("requirements.json", raw),
        "load_performance" => ("load-performance.json", raw),
        "browser_performance" => ("browser-performance.json", raw),
        other => return (other.to_owned(), raw),
    };
    (name.to_owned(), format)
}

fn artifact_specs(a: &Artifacts) -> Vec<ArtifactSpec> {
    let mut out = Vec::new();
    if a.untracked || !a.paths.is_empty() {
        out.push(ArtifactSpec {
            name: a.name.clone().unwrap_or_default(),
            untracked: a.untracked,
            paths: a.paths.clone(),
            exclude: a.exclude.clone(),
            when: artifact_when(a.when),
            artifact_type: "archive".to_owned(),
            format: Some(ArtifactFormat::Zip),
            expire_in: a.expire_in.clone().unwrap_or_default(),
        });
    }
    for (kind, paths) in &a.reports {
        let (name, format) = report_shape(kind);
        out.push(ArtifactSpec {
            name,
            untracked: false,
            paths: paths.clone(),
            exclude: Vec::new(),
            when: When::Always,
            artifact_type: kind.clone(),
            format: Some(format),
            expire_in: a.expire_in.clone().unwrap_or_default(),
        });
    }
    out
}

/// The `JobSpec` for one planned job.
pub fn to_job_spec(job: &PlannedJob, options: &SpecOptions<'_>) -> JobSpec {
    let config = &job.job;
    let mut steps = vec![Step {
        name: "script".to_owned(),
        script: config
            .before_script
            .iter()
            .chain(config.script.iter())
            .cloned()
            .collect(),
        timeout: config.timeout,
        when: When::OnSuccess,
        allow_failure: false,
    }];
    if !config.after_script.is_empty() {
        steps.push(Step {
            name: "after_script".to_owned(),
            script: config.after_script.clone(),
            timeout: config.timeout,
            when: When::Always,
            allow_failure: true,
        });
    }
    let cache = config
        .cache
        .iter()
        .map(|c| CacheSpec {
            key: match &c.key {
                CacheKey::Literal(key) => key.clone(),
                CacheKey::Files { files, prefix } => {
                    let part = (options.files_key)(files).unwrap_or_else(|| "default".to_owned());
                    match prefix {
                        Some(prefix) => format!("{prefix}-{part}"),
                        None => part,
                    }
                }
            },
            untracked: c.untracked,
            policy: match c.policy {
                CachePolicy::PullPush => SpecCachePolicy::PullPush,
                CachePolicy::Pull => SpecCachePolicy::Pull,
                CachePolicy::Push => SpecCachePolicy::Push,
            },
            paths: c.paths.clone(),
            when: match c.when {
                SaveWhen::OnSuccess => When::OnSuccess,
                SaveWhen::OnFailure => When::OnFailure,
                SaveWhen::Always => When::Always,
            },
            fallback_keys: c.fallback_keys.clone(),
        })
        .collect();
    JobSpec {
        info: JobInfo {
            name: job.name.clone(),
            stage: job.stage.clone(),
            ..JobInfo::default()
        },
        timeout: config.timeout,
        variables: job.variables.clone(),
        steps,
        image: config.image.as_ref().map(image_spec),
        services: config.services.iter().map(image_spec).collect(),
        artifacts: config
            .artifacts
            .as_ref()
            .map(artifact_specs)
            .unwrap_or_default(),
        cache,
        dependencies: job
            .dependencies
            .iter()
            .map(|name| Dependency {
                name: name.clone(),
                ..Dependency::default()
            })
            .collect(),
        hooks: config
            .hooks
            .iter()
            .map(|(name, script)| Hook {
                name: name.clone(),
                script: script.clone(),
            })
            .collect(),
        ..JobSpec::default()
    }
}
