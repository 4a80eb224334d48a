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
}
