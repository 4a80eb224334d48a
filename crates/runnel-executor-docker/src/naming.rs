//! Names and labels of everything the executor creates, as the official runner makes them.
//!
//! Containers are `runner-<short token>-project-<project id>-concurrent-<slot>-<random>-<role>`
//! where the role is `predefined`, `build` or `<service>-<index>` and the slot is the job's
//! per-project concurrency slot; the network is `runner-<short>-<project>-<slot>-<job id>`;
//! reusable volumes are `runner-<hash>-cache-<md5 of the path>`, where the hash covers the full
//! token, the system id, the project and the slot, so every slot of a project has its own
//! (`-protected` added for protected refs); temporary volumes are
//! `<container prefix>-cache-<md5 of the path>`. Every object carries the
//! `com.gitlab.gitlab-runner.*` labels so that leftovers can be found and removed. Service host
//! aliases follow the official rules (`tutum/wordpress:1` → `tutum-wordpress`,
//! `tutum__wordpress`). This module is pure: it does not talk to Docker.

use std::collections::HashMap;

use md5::Digest as _;
use runnel_types::JobSpec;
use sha2::Digest as _;

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

/// What names are made of, besides the random part.
#[derive(Clone, Copy, Debug)]
pub struct NameParts<'a> {
    /// The short runner token (the official `ShortDescription`).
    pub short_token: &'a str,
    /// The full runner token; only its SHA-256 (with the other parts) reaches a name.
    pub token: &'a str,
    /// The runner's system id (`.runner_system_id`).
    pub system_id: &'a str,
    /// The job's project.
    pub project_id: u64,
    /// The job's per-project concurrency slot (`CI_CONCURRENT_PROJECT_ID`).
    pub slot: u32,
    /// The job id.
    pub job_id: u64,
    /// Volumes get the `-protected` suffix (a protected ref, or a `-protected` cache key).
    pub protected: bool,
}

/// The names of one job's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobNames {
    /// `runner-<short>-project-<pid>-concurrent-<slot>` (RFC 1123): the official
    /// `ProjectUniqueName`.
    pub unique: String,
    /// `<unique>-<random>`: the prefix of this job's containers and temporary volumes.
    pub prefix: String,
    /// `runner-<32 hex>`: the official `ProjectRealUniqueName`, a truncated SHA-256 of the
    /// full token, the system id, the project and the slot; names the slot's reusable volumes
    /// and its directory under `cache_dir`.
    pub real_unique: String,
    /// `runner-<short>-<pid>-<slot>-<job id>` (RFC 1123): the per-job network.
    network: String,
    protected: bool,
}

impl JobNames {
    /// Names for `parts` with the 8-character `random` part.
    pub fn new(parts: &NameParts<'_>, random: &str) -> Self {
        let unique = rfc1123(&format!(
            "runner-{}-project-{}-concurrent-{}",
            parts.short_token, parts.project_id, parts.slot
        ));
        let prefix = format!("{unique}-{random}");
        let digest = sha2::Sha256::digest(
            format!(
                "{}-{}-{}-{}",
                parts.token, parts.system_id, parts.project_id, parts.slot
            )
            .as_bytes(),
        );
        let real_unique = format!("runner-{}", hex::encode(&digest[..16]));
        let network = rfc1123(&format!(
            "runner-{}-{}-{}-{}",
            parts.short_token, parts.project_id, parts.slot, parts.job_id
        ));
        JobNames {
            unique,
            prefix,
            real_unique,
            network,
            protected: parts.protected,
        }
    }

    /// Names with a fresh random part.
    pub fn random(parts: &NameParts<'_>) -> Self {
        Self::new(parts, &random_part())
    }

    /// The same names with a new random part, after a container name collision.
    pub fn rerolled(&self) -> Self {
        JobNames {
            prefix: format!("{}-{}", self.unique, random_part()),
            ..self.clone()
        }
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
        self.network.clone()
    }

    /// The slot's reusable volume for `destination`, kept between jobs.
    pub fn cache_volume(&self, destination: &str) -> String {
        self.with_protected(format!(
            "{}-cache-{}",
            self.real_unique,
            path_hash(destination)
        ))
    }

    /// A temporary volume for `destination`, removed with the job.
    pub fn temporary_volume(&self, destination: &str) -> String {
        self.with_protected(format!("{}-cache-{}", self.prefix, path_hash(destination)))
    }

    /// Where `destination` lives under `[runners.docker] cache_dir`, relative to it.
    pub fn cache_dir_path(&self, destination: &str) -> String {
        format!(
            "{}/{}",
            self.real_unique,
            self.with_protected(path_hash(destination))
        )
    }

    /// Whether volumes carry the `-protected` suffix.
    pub fn protected(&self) -> bool {
        self.protected
    }

    fn with_protected(&self, name: String) -> String {
        if self.protected {
            name + "-protected"
        } else {
            name
        }
    }
}

/// 8 random hex digits.
pub(crate) fn random_part() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// `name` as the official runner makes names DNS-compatible: lower case, only `[-a-z0-9]`
/// (others dropped), starting with a letter or digit, at most 63 characters.
pub fn rfc1123(name: &str) -> String {
    let kept: String = name
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect();
    let trimmed = kept.trim_start_matches('-');
    trimmed.chars().take(63).collect()
}

/// Whether a job's volumes are protected: its ref is protected, or one of its cache keys ends
/// in `-protected` (not `-non_protected`), as the official runner decides.
pub fn is_protected(job: &JobSpec) -> bool {
    job.git.protected == Some(true)
        || job.cache.iter().any(|cache| {
            cache.key.ends_with("-protected") && !cache.key.ends_with("-non_protected")
        })
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
        let parts = NameParts {
            short_token: "xyzABC12",
            token: "glrt-xyzABC12_full_token",
            system_id: "s_0123456789ab",
            project_id: 42,
            slot: 3,
            job_id: 1001,
            protected: false,
        };
        let names = JobNames::new(&parts, "0a1b2c3d");
        insta::assert_snapshot!(
            [
                names.predefined(),
                names.build(),
                names.service("tutum/wordpress:1.2", 0),
                names.service("registry.example.com:5000/db/postgres:15@sha256:abc", 1),
                names.network(),
                names.cache_volume("/cache"),
                names.temporary_volume("/builds"),
                names.cache_dir_path("/builds"),
            ]
            .join("\n"),
            @r"
        runner-xyzabc12-project-42-concurrent-3-0a1b2c3d-predefined
        runner-xyzabc12-project-42-concurrent-3-0a1b2c3d-build
        runner-xyzabc12-project-42-concurrent-3-0a1b2c3d-tutum-wordpress-0
        runner-xyzabc12-project-42-concurrent-3-0a1b2c3d-registry.example.com-5000-db-postgres-1
        runner-xyzabc12-42-3-1001
        runner-8f4b4666ee44ef080c16b765b7375cbb-cache-3c3f060a0374fc8bc39395164f415a70
        runner-xyzabc12-project-42-concurrent-3-0a1b2c3d-cache-c33bcaa1fd2c77edfc3893b41966cea8
        runner-8f4b4666ee44ef080c16b765b7375cbb/c33bcaa1fd2c77edfc3893b41966cea8
        "
        );
        // The hashed part changes with every input but the job.
        let other_slot = JobNames::new(&NameParts { slot: 4, ..parts }, "0a1b2c3d");
        assert_ne!(other_slot.real_unique, names.real_unique);
        let other_job = JobNames::new(&NameParts { job_id: 7, ..parts }, "ffffffff");
        assert_eq!(other_job.real_unique, names.real_unique);
        assert_eq!(
            other_job.cache_volume("/cache"),
            names.cache_volume("/cache")
        );
        let protected = JobNames::new(
            &NameParts {
                protected: true,
                ..parts
            },
            "0a1b2c3d",
        );
        assert_eq!(
            protected.cache_volume("/cache"),
            format!("{}-protected", names.cache_volume("/cache"))
        );
        assert_eq!(
            protected.temporary_volume("/builds"),
            format!("{}-protected", names.temporary_volume("/builds"))
        );
        let rerolled = names.rerolled();
        assert_ne!(rerolled.prefix, names.prefix);
        assert_eq!(rerolled.unique, names.unique);
    }

    #[test]
    fn names_are_made_dns_compatible_like_the_official_runner() {
        assert_eq!(rfc1123("runner-AB_c.d-project-1"), "runner-abcd-project-1");
        assert_eq!(rfc1123("--_x"), "x");
        assert_eq!(rfc1123(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn protection_follows_the_ref_and_the_cache_keys() {
        let mut job = JobSpec::default();
        assert!(!is_protected(&job));
        job.cache.push(runnel_types::CacheSpec {
            key: "deps-non_protected".to_owned(),
            ..runnel_types::CacheSpec::default()
        });
        assert!(!is_protected(&job));
        job.cache[0].key = "deps-protected".to_owned();
        assert!(is_protected(&job));
        job.cache.clear();
        job.git.protected = Some(true);
        assert!(is_protected(&job));
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
