//! Names and labels of everything the executor creates, as the official runner makes them.
//!
//! Containers are `runner-<short token>-project-<project id>-concurrent-<slot>-<random>-<role>`
//! where the role is `predefined`, `build` or `<service>-<index>`; every object carries the
//! `com.gitlab.gitlab-runner.*` labels so that leftovers can be found and removed. Service host
//! aliases follow the official rules (`tutum/wordpress:1` → `tutum-wordpress`,
//! `tutum__wordpress`). This module is pure: it does not talk to Docker.

use std::collections::HashMap;

use md5::Digest as _;
use runnel_types::JobSpec;

/// The prefix of every label the executor sets.
pub const LABEL_PREFIX: &str = "com.gitlab.gitlab-runner";

/// What a created object is for; the value of the `com.gitlab.gitlab-runner.type` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// The helper container running predefined stages.
    Predefined,
    /// The job image's container running the user's scripts.
    Build,
    /// A service container.
    Service,
    /// A cache or builds volume.
    Cache,
    /// The per-job network.
    Network,
}

impl ObjectType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Predefined => "predefined",
            ObjectType::Build => "build",
            ObjectType::Service => "service",
            ObjectType::Cache => "cache",
            ObjectType::Network => "network",
        }
    }
}

/// The names of one job's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobNames {
    /// `runner-<short>-project-<pid>-concurrent-<n>`: shared by the slot's reusable volumes.
    pub unique: String,
    /// `<unique>-<random>`: the prefix of this job's containers.
    pub prefix: String,
    /// The job id, for the network name.
    pub job_id: u64,
}

impl JobNames {
    /// Names for a job of `project_id` in concurrency `slot`, with the 8-character `random` part.
    pub fn new(short_token: &str, project_id: u64, slot: u32, random: &str, job_id: u64) -> Self {
        let unique = format!("runner-{short_token}-project-{project_id}-concurrent-{slot}");
        let prefix = format!("{unique}-{random}");
        JobNames {
            unique,
            prefix,
            job_id,
        }
    }

    /// Names with a fresh random part.
    pub fn random(short_token: &str, project_id: u64, slot: u32, job_id: u64) -> Self {
        let random = format!("{:08x}", rand::random::<u32>());
        Self::new(short_token, project_id, slot, &random, job_id)
    }

    /// The helper container.
    pub fn predefined(&self) -> String {
        format!("{}-predefined", self.prefix)
    }

    /// The build container.
    pub fn build(&self) -> String {
        format!("{}-build", self.prefix)
    }

    /// The container of service number `index` with image `image`.
    pub fn service(&self, image: &str, index: usize) -> String {
        let name = service_aliases(image)
            .into_iter()
            .next()
            .unwrap_or_else(|| "service".to_owned());
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{}-{name}-{index}", self.prefix)
    }

    /// The per-job network.
    pub fn network(&self) -> String {
        format!("{}-job-{}-network", self.unique, self.job_id)
    }

    /// A reusable cache volume for `destination` (kept between jobs of the slot).
    pub fn cache_volume(&self, destination: &str) -> String {
        format!("{}-cache-{}", self.unique, path_hash(destination))
    }

    /// A temporary volume for `destination`, removed with the job.
    pub fn temporary_volume(&self, destination: &str) -> String {
        format!("{}-tmp-{}", self.prefix, path_hash(destination))
    }
}

/// The hash of a container path in volume names and cache bind paths: the MD5 hex digest, as
/// the official runner names them, so a swapped-in Runnel reuses the existing cache volumes.
pub fn path_hash(path: &str) -> String {
    hex::encode(md5::Md5::digest(path.as_bytes()))
}

/// What the labels describe besides the job.
#[derive(Clone, Copy, Debug)]
pub struct LabelContext<'a> {
    /// The short runner token (`runner.id` of the official runner's labels).
    pub short_token: &'a str,
    /// The concurrency slot.
    pub slot: u32,
    /// The GitLab URL, for `job.url`.
    pub gitlab_url: &'a str,
    /// `container_labels` from `[runners.docker]`, added to containers (never overriding ours).
    pub extra: &'a std::collections::BTreeMap<String, String>,
}

/// The labels of an object of `kind` for `job`; `service` names the image of a service.
pub fn labels(
    ctx: &LabelContext<'_>,
    job: &JobSpec,
    kind: ObjectType,
    service: Option<&str>,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = ctx
        .extra
        .iter()
        .filter(|(key, _)| !key.starts_with(LABEL_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let mut put = |key: &str, value: String| {
        labels.insert(format!("{LABEL_PREFIX}.{key}"), value);
    };
    put("job.id", job.id.0.to_string());
    put(
        "job.url",
        format!(
            "{}/{}/-/jobs/{}",
            without_userinfo(ctx.gitlab_url).trim_end_matches('/'),
            job.info.project_full_path,
            job.id.0
        ),
    );
    put("job.sha", job.git.sha.clone());
    put("job.before_sha", job.git.before_sha.clone());
    put("job.ref", job.git.ref_name.clone());
    put(
        "job.timeout",
        job.timeout
            .map(|timeout| format!("{}s", timeout.as_secs()))
            .unwrap_or_default(),
    );
    put("project.id", job.info.project_id.to_string());
    put("pipeline.id", job.info.pipeline_id.to_string());
    put("runner.id", ctx.short_token.to_owned());
    put("runner.local_id", ctx.slot.to_string());
    put("managed", "true".to_owned());
    put("type", kind.as_str().to_owned());
    if let Some(image) = service {
        let (name, version) = split_image(image);
        put("service", name.to_owned());
        put("service.version", version.to_owned());
    }
    labels
}

/// `url` without a `user:password@` part, so labels (which anyone who can list containers
/// reads) never carry credentials.
pub fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return std::borrow::Cow::Borrowed(url);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => std::borrow::Cow::Owned(format!("{scheme}://{}", &rest[at + 1..])),
        None => std::borrow::Cow::Borrowed(url),
    }
}

/// Why a service alias cannot be used, if it cannot: an alias is a host name on the job's
/// network, so it is 1 to 253 characters of dot-separated parts of at most 63 letters, digits,
/// `-` and `_` (`__` appears in the official derived aliases), no part starting or ending with
/// `-`. GitLab and the official runner refuse anything else; so does Runnel, rather than hand
/// newlines, `$(...)` or option-like words to Docker.
pub fn check_alias(alias: &str) -> Result<(), &'static str> {
    if alias.is_empty() || alias.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    for part in alias.split('.') {
        if part.is_empty() || part.len() > 63 {
            return Err("each dot-separated part of a host name has 1 to 63 characters");
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err("a host name has only letters, digits, `-`, `_` and `.`");
        }
        if part.starts_with('-') || part.ends_with('-') {
            return Err("a part of a host name does not start or end with `-`");
        }
    }
    Ok(())
}

/// Splits `registry/name:tag@digest` into the name and the tag (`latest` when none).
pub fn split_image(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    let last_slash = image.rfind('/').map_or(0, |index| index + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            &image[last_slash + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

/// The default host aliases of a service image: the name without tag with `/` replaced by `-`,
/// and (when different) by `__`.
pub fn service_aliases(image: &str) -> Vec<String> {
    let (name, _) = split_image(image);
    let dashed = name.replace('/', "-");
    let underscored = name.replace('/', "__");
    let mut aliases = vec![dashed];
    if underscored != aliases[0] {
        aliases.push(underscored);
    }
    aliases
}

/// Splits an alias list as written in config (`"db, cache other"`) into aliases.
pub fn split_aliases(aliases: &str) -> Vec<String> {
    aliases
        .split([' ', ','])
        .filter(|alias| !alias.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_official_pattern() {
        let names = JobNames::new("xyzABC12", 42, 3, "0a1b2c3d", 1001);
        insta::assert_snapshot!(
            [
                names.predefined(),
                names.build(),
                names.service("tutum/wordpress:1.2", 0),
                names.service("registry.example.com:5000/db/postgres:15@sha256:abc", 1),
                names.network(),
                names.cache_volume("/cache"),
                names.temporary_volume("/builds"),
            ]
            .join("\n"),
            @r"
        runner-xyzABC12-project-42-concurrent-3-0a1b2c3d-predefined
        runner-xyzABC12-project-42-concurrent-3-0a1b2c3d-build
        runner-xyzABC12-project-42-concurrent-3-0a1b2c3d-tutum-wordpress-0
        runner-xyzABC12-project-42-concurrent-3-0a1b2c3d-registry.example.com-5000-db-postgres-1
        runner-xyzABC12-project-42-concurrent-3-job-1001-network
        runner-xyzABC12-project-42-concurrent-3-cache-3c3f060a0374fc8bc39395164f415a70
        runner-xyzABC12-project-42-concurrent-3-0a1b2c3d-tmp-c33bcaa1fd2c77edfc3893b41966cea8
        "
        );
    }

    #[test]
    fn labels_show_the_gitlab_url_without_credentials() {
        assert_eq!(
            without_userinfo("https://user:s3cret@gitlab.example.com/"),
            "https://gitlab.example.com/"
        );
        assert_eq!(
            without_userinfo("http://tok@host:8080/path/a@b"),
            "http://host:8080/path/a@b"
        );
        assert_eq!(
            without_userinfo("https://gitlab.example.com"),
            "https://gitlab.example.com"
        );
        let extra = std::collections::BTreeMap::new();
        let ctx = LabelContext {
            short_token: "abc",
            slot: 0,
            gitlab_url: "https://u:p4ss@gitlab.example.com",
            extra: &extra,
        };
        let mut job = JobSpec::default();
        job.info.project_full_path = "g/p".into();
        job.id = runnel_types::JobId(5);
        let labels = labels(&ctx, &job, ObjectType::Build, None);
        assert_eq!(
            labels
                .get("com.gitlab.gitlab-runner.job.url")
                .map(String::as_str),
            Some("https://gitlab.example.com/g/p/-/jobs/5")
        );
        assert!(!labels.values().any(|value| value.contains("p4ss")));
    }

    #[test]
    fn aliases_must_be_host_names() {
        for good in ["db", "my-db", "tutum__wordpress", "a.b-c.d", "x1"] {
            assert_eq!(check_alias(good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "--privileged",
            "x y",
            "y\nz",
            "$(id)",
            "-v",
            "a..b",
            "db-",
            long.as_str(),
        ] {
            assert!(check_alias(bad).is_err(), "{bad:?}");
        }
        insta::assert_snapshot!(check_alias("$(id)").err().unwrap_or_default(), @"a host name has only letters, digits, `-`, `_` and `.`");
    }

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(split_image("alpine"), ("alpine", "latest"));
        assert_eq!(split_image("alpine:3.20"), ("alpine", "3.20"));
        assert_eq!(
            split_image("localhost:5000/group/img"),
            ("localhost:5000/group/img", "latest")
        );
        assert_eq!(
            split_image("localhost:5000/img:1@sha256:00"),
            ("localhost:5000/img", "1")
        );
    }

    #[test]
    fn aliases_are_derived_and_split_like_the_official_runner() {
        assert_eq!(service_aliases("postgres:15"), ["postgres"]);
        assert_eq!(
            service_aliases("tutum/wordpress:latest"),
            ["tutum-wordpress", "tutum__wordpress"]
        );
        assert_eq!(split_aliases("db, cache  other,"), ["db", "cache", "other"]);
    }
}
