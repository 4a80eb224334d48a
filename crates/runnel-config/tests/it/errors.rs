use runnel_config::{LoadError, Severity};

use crate::parse;

fn load_error(text: &str) -> LoadError {
    match parse(text) {
        Ok(_) => panic!("expected the config to be rejected"),
        Err(error) => error,
    }
}

#[test]
fn malformed_toml_names_line_and_column() {
    let error = load_error(
        "concurrent = 1\n\n[[runners]]\n  name = \"unterminated\n  executor = \"shell\"\n",
    );
    assert!(matches!(error, LoadError::Syntax(_)));
    insta::assert_snapshot!(error.to_string());
}

#[test]
fn every_validation_error_is_reported_at_once() {
    let text = r#"concurrent = -1
check_interval = "3s"
log_level = "loud"
connection_max_age = "15 minutes"

[[runners]]
  name = "first"
  url = "https://gitlab.example.com"
  token = "t"
  executor = "dockr"
  limit = true
  unhealthy_interval = "1x"
  shell = "fish"
  token_expires_at = "yesterday"
  [runners.docker]
    pull_policy = ["always", "sometimes"]
    privileged = "yes"

[[runners]]
  name = "second"
  url = "not a url"
  token = "t"
  executor = "shell"
  labels = { ok_label = "x", "no" = "y" }
  environment = ["A=1", 2]

[[runners]]
  name = "third"
  url = "https://gitlab.example.com"
  token = "t"
"#;
    let error = load_error(text);
    let LoadError::Invalid { errors, .. } = &error else {
        panic!("expected validation errors")
    };
    assert!(errors.iter().all(|e| e.severity == Severity::Error));
    insta::assert_snapshot!(error.to_string());
}

#[test]
fn lint_sees_errors_and_warnings_together() {
    let error = load_error("concurrent = \"many\"\nmystery = 1\n");
    let rendered: Vec<String> = error
        .diagnostics()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        rendered,
        [
            "config.toml:1:14: concurrent: expected an integer, found a string",
            "config.toml:2:1: mystery: unknown key (kept)",
        ]
    );
}

#[test]
fn wrong_section_type_is_an_error() {
    let error = load_error("session_server = 5\nrunners = \"none\"\n");
    insta::assert_snapshot!(error.to_string(), @r"
    invalid config file config.toml (2 errors)
      config.toml:1:18: session_server: expected a table, found an integer
      config.toml:2:11: runners: expected an array, found a string
    ");
}

#[test]
fn a_single_runners_table_is_the_wrong_section_kind() {
    let error = load_error("[runners]\n  executor = \"shell\"\n");
    let rendered: Vec<String> = error
        .diagnostics()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        rendered,
        ["config.toml:1:1: runners: expected an array, found a table"]
    );
}

/// Found by the `config_toml` fuzz target: toml_edit 0.23 panicked ("all items have spans") on
/// this input, a key redefined after a dotted key with control bytes in a string. It must be a
/// syntax error naming line and column, never a panic.
#[test]
fn a_fuzzed_file_that_crashed_the_toml_parser_is_a_syntax_error() {
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fuzz-toml-edit-span-panic.toml"),
    )
    .expect("fixture");
    let text = String::from_utf8_lossy(&bytes);
    let error = load_error(&text);
    assert!(matches!(error, LoadError::Syntax(_)), "{error}");
    assert!(error.to_string().contains(":3:2: invalid TOML"), "{error}");
}
