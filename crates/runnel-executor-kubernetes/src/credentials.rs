//! The job's registry credentials as a pull secret, as the official runner makes it: one
//! `kubernetes.io/dockercfg` secret per job (`.dockercfg`: registry address → username,
//! password, server address), named as the pod is, listed in the pod's `imagePullSecrets`
//! after the configured ones and deleted with the pod.
//!
//! Sources, a later one winning for the same registry: the job's `credentials` of type
//! `registry` (the GitLab container registry's job token), the runner user's
//! `~/.docker/config.json`, the job's `DOCKER_AUTH_CONFIG` variable. Only static `auths`
//! entries are read (credential helpers are not run). The secret's content never reaches a log
//! or an error message.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use runnel_types::JobSpec;
use serde_json::{Value, json};

/// The secret type.
pub const SECRET_TYPE: &str = "kubernetes.io/dockercfg";
/// The secret's key.
pub const DOCKERCFG_KEY: &str = ".dockercfg";

/// One registry's login.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `https://registry.example.com/v1/` → `registry.example.com`; Docker Hub's index address
/// stays as it is.
fn address(text: &str) -> String {
    let text = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    if text.starts_with("index.docker.io") {
        return "https://index.docker.io/v1/".to_owned();
    }
    text.split('/').next().unwrap_or(text).to_owned()
}

/// The static `auths` entries of a `config.json` document (`auth` is `base64(user:pass)`).
fn from_config_json(text: &str) -> BTreeMap<String, Login> {
    let mut logins = BTreeMap::new();
    let Ok(document) = serde_json::from_str::<Value>(text) else {
        return logins;
    };
    let Some(auths) = document.get("auths").and_then(Value::as_object) else {
        return logins;
    };
    for (registry, entry) in auths {
        let field = |name: &str| entry.get(name).and_then(Value::as_str).map(str::to_owned);
        let decoded = field("auth")
            .and_then(|auth| {
                base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
            })
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let login = match decoded.as_deref().and_then(|text| text.split_once(':')) {
            Some((username, password)) => Some(Login {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
            None => match (field("username"), field("password")) {
                (Some(username), Some(password)) => Some(Login { username, password }),
                _ => None,
            },
        };
        if let Some(login) = login {
            logins.insert(address(registry), login);
        }
    }
    logins
}

/// Every registry login the job has, by registry address (`home_config`: the text of the
/// runner user's `~/.docker/config.json`, if any).
pub fn logins(job: &JobSpec, home_config: Option<&str>) -> BTreeMap<String, Login> {
    let mut logins = BTreeMap::new();
    for credential in job.credentials.iter().filter(|c| c.kind == "registry") {
        logins.insert(
            address(&credential.url),
            Login {
                username: credential.username.clone(),
                password: credential.password.expose().to_owned(),
            },
        );
    }
    if let Some(text) = home_config {
        logins.extend(from_config_json(text));
    }
    if let Some(variable) = job
        .variables
        .iter()
        .rev()
        .find(|variable| variable.key == "DOCKER_AUTH_CONFIG")
    {
        logins.extend(from_config_json(&variable.value));
    }
    logins
}

/// The runner user's `~/.docker/config.json`, if it can be read.
pub fn home_config() -> Option<String> {
    let home = std::env::var_os("HOME")?;
    std::fs::read_to_string(std::path::Path::new(&home).join(".docker/config.json")).ok()
}

/// The pull secret holding `logins`, or none when there is no login.
pub fn secret(
    logins: &BTreeMap<String, Login>,
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
) -> Option<Secret> {
    if logins.is_empty() {
        return None;
    }
    let content: serde_json::Map<String, Value> = logins
        .iter()
        .map(|(registry, login)| {
            (
                registry.clone(),
                json!({
                    "username": login.username,
                    "password": login.password,
                    "serveraddress": registry,
                }),
            )
        })
        .collect();
    let bytes = Value::Object(content).to_string().into_bytes();
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            DOCKERCFG_KEY.to_owned(),
            ByteString(bytes),
        )])),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use runnel_types::{Credential, Variable};

    use super::*;

    #[test]
    fn the_job_variable_wins_over_home_and_job_credentials() {
        let mut job = JobSpec::default();
        job.credentials.push(Credential {
            kind: "registry".to_owned(),
            url: "registry.example.com".to_owned(),
            username: "gitlab-ci-token".to_owned(),
            password: runnel_types::Secret::new("job-token".to_owned()),
        });
        job.credentials.push(Credential {
            kind: "other".to_owned(),
            url: "x.example.com".to_owned(),
            username: "u".to_owned(),
            password: runnel_types::Secret::new("p".to_owned()),
        });
        let home = r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOmh1Yi1wYXNz"}}}"#;
        job.variables.push(Variable {
            key: "DOCKER_AUTH_CONFIG".to_owned(),
            value: r#"{"auths": {"https://registry.example.com/v2/": {"username": "deploy", "password": "deploy-pass"}}}"#.to_owned(),
            public: false,
            file: false,
            masked: true,
            raw: false,
            internal: false,
        });
        let logins = logins(&job, Some(home));
        assert_eq!(
            logins.keys().collect::<Vec<_>>(),
            ["https://index.docker.io/v1/", "registry.example.com"]
        );
        assert_eq!(logins["registry.example.com"].username, "deploy");
        assert_eq!(logins["https://index.docker.io/v1/"].password, "hub-pass");
        assert!(!format!("{logins:?}").contains("deploy-pass"));
        let secret = secret(
            &logins,
            "runner-x-project-1-concurrent-0-abcdefgh",
            "ci",
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        let data: Value = serde_json::from_slice(&secret.data.unwrap()[DOCKERCFG_KEY].0).unwrap();
        assert_eq!(
            data["registry.example.com"],
            json!({"username": "deploy", "password": "deploy-pass", "serveraddress": "registry.example.com"})
        );
        assert!(super::secret(&BTreeMap::new(), "n", "ci", BTreeMap::new()).is_none());
    }
}
