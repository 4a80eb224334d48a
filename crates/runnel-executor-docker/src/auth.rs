//! Registry credentials for image pulls, from the places the official runner looks.
//!
//! In order, the first source with an entry for the image's registry wins:
//! 1. the job's `DOCKER_AUTH_CONFIG` variable (a `config.json` document),
//! 2. the runner user's `~/.docker/config.json`,
//! 3. the job's `credentials` of type `registry` (the GitLab container registry token).
//!
//! Only static `auths` entries are understood; credential helpers (`credsStore`,
//! `credHelpers`) are not run. Secrets never reach logs: [`DockerCredentials`] is only handed to
//! the daemon.

use bollard::auth::DockerCredentials;
use runnel_types::JobSpec;

/// The default registry of images without a registry host.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry host of `image`: its first path part when that looks like a host, else
/// Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => DOCKER_HUB,
    }
}

/// The credentials to pull `image` for `job`, if any source has some.
pub fn credentials_for(image: &str, job: &JobSpec) -> Option<DockerCredentials> {
    let registry = registry_of(image);
    let from_variable = job
        .variables
        .iter()
        .rev()
        .find(|variable| variable.key == "DOCKER_AUTH_CONFIG")
        .and_then(|variable| from_config_json(&variable.value, registry));
    if from_variable.is_some() {
        return from_variable;
    }
    let from_home = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".docker/config.json"))
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| from_config_json(&text, registry));
    if from_home.is_some() {
        return from_home;
    }
    job.credentials
        .iter()
        .filter(|credential| credential.kind == "registry")
        .find(|credential| normalize(&credential.url) == registry)
        .map(|credential| DockerCredentials {
            username: Some(credential.username.clone()),
            password: Some(credential.password.expose().to_owned()),
            serveraddress: Some(credential.url.clone()),
            ..DockerCredentials::default()
        })
}

/// The `auths` entry for `registry` in a `config.json` document.
pub fn from_config_json(text: &str, registry: &str) -> Option<DockerCredentials> {
    let document: serde_json::Value = serde_json::from_str(text).ok()?;
    let auths = document.get("auths")?.as_object()?;
    let (address, entry) = auths.iter().find(|(address, _)| {
        let address = normalize(address);
        address == registry || (registry == DOCKER_HUB && address == "index.docker.io")
    })?;
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let (username, password) = match field("auth").and_then(|auth| decode_base64(&auth)) {
        Some(decoded) => {
            let (user, pass) = decoded.split_once(':')?;
            (user.to_owned(), pass.to_owned())
        }
        None => (field("username")?, field("password")?),
    };
    Some(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: Some(address.clone()),
        ..DockerCredentials::default()
    })
}

/// `https://registry.example.com/v1/` → `registry.example.com`.
fn normalize(address: &str) -> &str {
    let address = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    address.split('/').next().unwrap_or(address)
}

/// Decodes standard base64 (padding optional) into UTF-8 text.
fn decode_base64(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.trim().trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_types::{Credential, Secret, Variable};

    #[test]
    fn registries_are_taken_from_the_image_name() {
        assert_eq!(registry_of("alpine:3"), "docker.io");
        assert_eq!(registry_of("library/alpine"), "docker.io");
        assert_eq!(
            registry_of("registry.example.com/group/img:1"),
            "registry.example.com"
        );
        assert_eq!(registry_of("localhost:5000/img"), "localhost:5000");
        assert_eq!(registry_of("localhost/img"), "localhost");
    }

    #[test]
    fn the_job_variable_wins_over_job_credentials() {
        let mut job = JobSpec::default();
        job.credentials.push(Credential {
            kind: "registry".into(),
            url: "registry.example.com".into(),
            username: "gitlab-ci-token".into(),
            password: Secret::new("job-token"),
        });
        let found = credentials_for("registry.example.com/g/img:1", &job).expect("credentials");
        assert_eq!(found.username.as_deref(), Some("gitlab-ci-token"));
        assert_eq!(found.password.as_deref(), Some("job-token"));
        assert!(credentials_for("other.example.com/img", &job).is_none());

        // "user:pa:ss" in base64.
        job.variables.push(Variable {
            key: "DOCKER_AUTH_CONFIG".into(),
            value:
                r#"{"auths": {"https://registry.example.com/v2/": {"auth": "dXNlcjpwYTpzcw=="}}}"#
                    .into(),
            ..Variable::default()
        });
        let found = credentials_for("registry.example.com/g/img:1", &job).expect("credentials");
        assert_eq!(found.username.as_deref(), Some("user"));
        assert_eq!(found.password.as_deref(), Some("pa:ss"));
    }

    #[test]
    fn docker_hub_entries_match_unqualified_images() {
        let json =
            r#"{"auths": {"https://index.docker.io/v1/": {"username": "u", "password": "p"}}}"#;
        let found = from_config_json(json, registry_of("alpine")).expect("credentials");
        assert_eq!(found.username.as_deref(), Some("u"));
        assert!(from_config_json("not json", "docker.io").is_none());
    }
}
