use crate::{data, load_copy};

#[track_caller]
fn check_byte_stable(name: &str) {
    let original = std::fs::read(data(name)).unwrap();
    let (dir, mut file) = load_copy(name);
    assert_eq!(
        file.contents().as_bytes(),
        original.as_slice(),
        "{name}: document differs"
    );
    file.save().unwrap();
    let saved = std::fs::read(dir.path().join("config.toml")).unwrap();
    assert_eq!(saved, original, "{name}: saved bytes differ");
}

#[test]
fn official_test_config_round_trips() {
    check_byte_stable("commands_testdata_test-config.toml");
}

#[test]
fn official_lint_sample_round_trips() {
    check_byte_stable("commands_testdata_lint_valid.toml");
}

#[test]
fn commented_file_with_unknown_keys_round_trips() {
    check_byte_stable("commented.toml");
}

#[track_caller]
fn check_text_stable(text: &str) {
    let file = crate::parse(text).unwrap();
    assert_eq!(file.contents(), text);
}

#[test]
fn unusual_layouts_round_trip() {
    check_text_stable("concurrent = 1\r\n\r\n[[runners]]\r\n  executor = \"shell\"\r\n");
    check_text_stable("concurrent=1\n[[runners]]\nexecutor='shell'\ndocker.image=\"x\"");
    check_text_stable("runners = [ { executor = \"shell\", name = \"inline\" } ] # inline\n");
    check_text_stable("# only a comment\n\n\n");
}
