use std::os::unix::fs::PermissionsExt;

use runnel_config::{ConfigFile, WriteError};

use crate::{fake_env, load_copy};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn saved_files_are_private() {
    let (dir, mut file) = load_copy("commands_testdata_lint_valid.toml");
    let path = dir.path().join("config.toml");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    file.save().unwrap();
    assert_eq!(mode(&path), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
}

#[test]
fn a_missing_directory_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("nested/gitlab-runner");
    let path = config_dir.join("config.toml");
    let mut file = ConfigFile::load_with_env(&path, fake_env).unwrap();
    file.save().unwrap();
    assert_eq!(mode(&config_dir), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_directory_that_cannot_be_created_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let mut file = ConfigFile::parse(blocker.join("config.toml"), "", fake_env).unwrap();
    let error = file.save().unwrap_err();
    assert!(
        matches!(&error, WriteError::CreateDir { dir, .. } if *dir == blocker),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("failed to create directory {}", blocker.display())
    );
}

/// `/sys` refuses new files even for root, which makes it a portable unwritable directory.
#[test]
#[cfg(target_os = "linux")]
fn an_unwritable_directory_is_a_clear_error() {
    let mut file = ConfigFile::load_with_env("/sys/runnel-config-test.toml", fake_env).unwrap();
    let error = file.save().unwrap_err();
    assert!(
        matches!(error, WriteError::DirNotWritable { .. }),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "directory /sys is not writable");
}
