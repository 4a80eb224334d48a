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

/// Expands `$NAME`, `${NAME}` and the one-character specials (`$1`, `$?`, …) in `text`.
pub(crate) fn expand_env(text: &str, env: EnvLookup) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        match variable_name(after) {
            Name::Found { name, consumed } => {
                out.push_str(&env(name).unwrap_or_default());
                rest = &after[consumed..];
            }
            Name::BadSyntax { consumed } => rest = &after[consumed..],
            Name::None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

enum Name<'a> {
    /// A variable name, and how many bytes after the `$` it spans.
    Found { name: &'a str, consumed: usize },
    /// Broken `${…}` syntax: the bytes are dropped, like Go does.
    BadSyntax { consumed: usize },
    /// No name follows: the `$` stays as it is.
    None,
}

fn variable_name(after: &str) -> Name<'_> {
    let bytes = after.as_bytes();
    match bytes.first() {
        None => Name::None,
        Some(b'{') => braced_name(after),
        Some(&first) if is_special(first) => Name::Found {
            name: &after[..1],
            consumed: 1,
        },
        Some(_) => {
            let len = bytes
                .iter()
                .take_while(|&&b| b == b'_' || b.is_ascii_alphanumeric())
                .count();
            if len == 0 {
                Name::None
            } else {
                Name::Found {
                    name: &after[..len],
                    consumed: len,
                }
            }
        }
    }
}

fn braced_name(after: &str) -> Name<'_> {
    let bytes = after.as_bytes();
    if bytes.len() > 2 && is_special(bytes[1]) && bytes[2] == b'}' {
        return Name::Found {
            name: &after[1..2],
            consumed: 3,
        };
    }
    match after.find('}') {
        Some(1) => Name::BadSyntax { consumed: 2 },
        Some(close) => Name::Found {
            name: &after[1..close],
            consumed: close + 1,
        },
        None => Name::BadSyntax { consumed: 1 },
    }
}

fn is_special(byte: u8) -> bool {
    matches!(byte, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || byte.is_ascii_digit()
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
