//! Where config.toml lives when the command line does not say.
//!
//! Like the official runner: `/etc/gitlab-runner/config.toml` for root,
//! `~/.gitlab-runner/config.toml` for other users, `./config.toml` when there is no home.
//! The `-c/--config` flag and `CONFIG_FILE` are parsed by the CLI, which passes the result in.

use std::path::{Path, PathBuf};

/// The config file name.
pub const CONFIG_FILE_NAME: &str = "config.toml";

/// The config path: `explicit` when given, the default for this user otherwise.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(path) => path.to_path_buf(),
        None => default_config_path(),
    }
}

/// The default config path for the current user (effective UID and `HOME`).
pub fn default_config_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from);
    default_config_path_for(nix::unistd::geteuid().is_root(), home.as_deref())
}

/// The default config path for a user who is root or not and has this home directory.
pub fn default_config_path_for(is_root: bool, home: Option<&Path>) -> PathBuf {
    match (is_root, home) {
        (true, _) => Path::new("/etc/gitlab-runner").join(CONFIG_FILE_NAME),
        (false, Some(home)) => home.join(".gitlab-runner").join(CONFIG_FILE_NAME),
        (false, None) => PathBuf::from(CONFIG_FILE_NAME),
    }
}

/// The directories searched for a GitLab host's certificates: `certs/` next to the config
/// file in use, then `certs/` next to the default config file (where the official runner
/// looks, whatever `-c` says).
pub fn certificate_dirs(config_path: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for config in [config_path.to_path_buf(), default_config_path()] {
        let dir = config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("certs");
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// A GitLab host's TLS files found in the certificate directories (the official lookup):
/// `<host>.crt` (CA chain), `<host>.auth.crt` and `<host>.auth.key` (client certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCertificates {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl HostCertificates {
    /// Looks for `url`'s host (without port) in `dirs`, first match per file.
    pub fn find(dirs: &[PathBuf], url: &str) -> Self {
        let Some(host) = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
            .filter(|h| !h.is_empty())
        else {
            return Self::default();
        };
        let find = |suffix: &str| {
            dirs.iter()
                .map(|dir| dir.join(format!("{host}{suffix}")))
                .find(|path| path.is_file())
        };
        Self {
            ca_file: find(".crt"),
            cert_file: find(".auth.crt"),
            key_file: find(".auth.key"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_official_rules() {
        let home = Path::new("/home/ci");
        assert_eq!(
            default_config_path_for(true, Some(home)),
            Path::new("/etc/gitlab-runner/config.toml")
        );
        assert_eq!(
            default_config_path_for(false, Some(home)),
            Path::new("/home/ci/.gitlab-runner/config.toml")
        );
        assert_eq!(
            default_config_path_for(false, None),
            Path::new("config.toml")
        );
    }

    #[test]
    fn an_explicit_path_wins() {
        assert_eq!(
            config_path(Some(Path::new("/tmp/c.toml"))),
            Path::new("/tmp/c.toml")
        );
    }

    #[test]
    fn host_certificates_are_found_by_host_name_without_port() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("gitlab.example.com.crt"), "ca").unwrap();
        std::fs::write(certs.join("gitlab.example.com.auth.crt"), "cert").unwrap();
        let dirs = certificate_dirs(&dir.path().join("config.toml"));
        assert_eq!(dirs[0], certs);
        let found = HostCertificates::find(&dirs, "https://gitlab.example.com:8443/");
        assert_eq!(found.ca_file, Some(certs.join("gitlab.example.com.crt")));
        assert_eq!(
            found.cert_file,
            Some(certs.join("gitlab.example.com.auth.crt"))
        );
        assert_eq!(found.key_file, None);
        assert_eq!(
            HostCertificates::find(&dirs, "https://other.example.com/"),
            HostCertificates::default()
        );
        assert_eq!(
            HostCertificates::find(&dirs, "not a url"),
            HostCertificates::default()
        );
    }
}
