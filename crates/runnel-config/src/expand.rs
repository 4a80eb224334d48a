//! Environment expansion of `$VAR` and `${VAR}`, with the rules of Go's `os.ExpandEnv`.
//!
//! The official runner expands the runner `url` and `token` after loading config.toml, so a file
//! can say `token = "${RUNNER_TOKEN}"`. Unset variables expand to nothing. Only the typed view is
//! expanded: the file keeps what the user wrote. There is no `$$` escape and no default syntax
//! (`${VAR:-x}` names a variable called `VAR:-x`), exactly like Go.

/// Looks up an environment variable; the real one is [`process_env`].
pub type EnvLookup = fn(&str) -> Option<String>;

/// Reads the process environment (non-Unicode values count as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Expands `$NAME`, `${NAME}` and the one-character specials (`$1`, `$?`, …) in `text`;
/// unset variables expand to nothing.
pub(crate) fn expand_env(text: &str, env: EnvLookup) -> String {
    runnel_types::expand(text, |name| env(name).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("glrt-secret".into()),
            "HOST" => Some("gitlab.example.com".into()),
            "1" => Some("one".into()),
            _ => None,
        }
    }

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(expand_env(input, fake_env), expected, "expanding {input:?}");
    }

    #[test]
    fn expands_like_go_os_expand_env() {
        check("plain", "plain");
        check("$TOKEN", "glrt-secret");
        check("${TOKEN}", "glrt-secret");
        check("https://${HOST}/", "https://gitlab.example.com/");
        check("https://$HOST/x", "https://gitlab.example.com/x");
        check("$MISSING-x", "-x");
        check("a$1b", "aoneb");
        check("${1}", "one");
        check("cost: 5$", "cost: 5$");
        check("$ sign", "$ sign");
        check("${}x", "x");
        check("${TOKEN", "TOKEN");
        check("${HOST:-x}", "");
        check("é$TOKEN", "églrt-secret");
    }
}
