use std::os::unix::fs::PermissionsExt;

use runnel_config::{SystemId, SystemIdError, SystemIdFile};

fn ids_in(dir: &std::path::Path) -> SystemIdFile {
    SystemIdFile::next_to(&dir.join("config.toml"))
}

#[test]
fn generated_from_the_machine_id() {
    let dir = tempfile::tempdir().unwrap();
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
    let ids = ids_in(dir.path()).with_machine_id_path(&machine_id);

    let id = ids.load_or_create().unwrap();
    // HMAC-SHA256(key = machine ID, message = "gitlab-runner"), first 12 hex characters.
    assert_eq!(id.as_str(), "s_ee3af03959fe");
    assert_eq!(ids.path(), dir.path().join(".runner_system_id"));
    assert_eq!(
        std::fs::read_to_string(ids.path()).unwrap(),
        "s_ee3af03959fe"
    );
    let mode = std::fs::metadata(ids.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn random_when_there_is_no_machine_id() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ids_in(dir.path()).with_machine_id_path(dir.path().join("absent"));
    let id = ids.load_or_create().unwrap();
    assert!(id.as_str().starts_with("r_"), "{id}");
    assert_eq!(SystemId::parse(id.as_str()), Some(id.clone()));
    assert_eq!(ids.load_or_create().unwrap(), id, "the saved ID is reused");
}

#[test]
fn a_valid_saved_id_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".runner_system_id"), "s_760931104d8c\n").unwrap();
    let ids = ids_in(dir.path()).with_machine_id_path(dir.path().join("absent"));
    assert_eq!(ids.load_or_create().unwrap().as_str(), "s_760931104d8c");
}

#[test]
fn an_invalid_saved_id_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::write(dir.path().join(".runner_system_id"), "x_not-valid").unwrap();
    let ids = ids_in(dir.path()).with_machine_id_path(&machine_id);
    assert_eq!(ids.load_or_create().unwrap().as_str(), "s_ee3af03959fe");
}

#[test]
fn ids_follow_the_official_pattern() {
    assert!(SystemId::parse("r_AbC123xyz789").is_some());
    assert!(SystemId::parse("s_760931104d8c").is_some());
    for bad in [
        "",
        "s_",
        "t_760931104d8c",
        "s_760931104d8",
        "s_760931104d8cc",
        "s_76093110-d8c",
    ] {
        assert_eq!(SystemId::parse(bad), None, "{bad:?}");
    }
}

#[test]
#[cfg(target_os = "linux")]
fn a_save_failure_names_the_file() {
    let ids = SystemIdFile::next_to(std::path::Path::new("/sys/config.toml"))
        .with_machine_id_path("/nonexistent/machine-id");
    let error = ids.load_or_create().unwrap_err();
    assert!(matches!(error, SystemIdError::Save { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "failed to save system ID file /sys/.runner_system_id"
    );
}
