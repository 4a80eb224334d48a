//! Integration tests of runnel-config: the official samples, round trips, edits, errors,
//! saving and the system ID file.

mod edit;
mod errors;
mod load;
mod roundtrip;
mod save;
mod system_id;

use std::path::{Path, PathBuf};

use runnel_config::ConfigFile;

/// The test data directory.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read_data(name: &str) -> String {
    std::fs::read_to_string(data(name)).unwrap()
}

/// A fixed environment, so expansion does not depend on the machine running the tests.
fn fake_env(name: &str) -> Option<String> {
    match name {
        "CUSTOM_RUNNER_TOKEN" => Some("glrt-from-the-environment".into()),
        "GITLAB_HOST" => Some("gitlab.internal".into()),
        _ => None,
    }
}

/// Copies a data file into a fresh temporary directory and loads it from there.
fn load_copy(name: &str) -> (tempfile::TempDir, ConfigFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::copy(data(name), &path).unwrap();
    let file = ConfigFile::load_with_env(&path, fake_env).unwrap();
    (dir, file)
}

/// Parses text as if it were `config.toml` in the current directory.
fn parse(text: &str) -> Result<ConfigFile, runnel_config::LoadError> {
    ConfigFile::parse("config.toml", text, fake_env)
}
