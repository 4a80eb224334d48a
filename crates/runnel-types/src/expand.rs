//! `$NAME` and `${NAME}` expansion with the rules of Go's `os.Expand`, which the official runner
//! uses for config.toml values and job variables alike.
//!
//! A `$` not followed by a name stays as it is; `${}` and an unclosed `${` are dropped; the
//! one-character specials (`$1`, `$?`, `$$`, …) are names too. There is no default syntax:
//! `${VAR:-x}` names a variable called `VAR:-x`, exactly like Go.

/// Expands `$NAME` and `${NAME}` in `input` with `lookup`, following Go's `os.Expand`:
/// a `$` not followed by a name stays; `${}` and an unclosed `${` are dropped.
pub fn expand(input: &str, mut lookup: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match shell_name(after) {
            Name::Found { name, consumed } => {
                out.push_str(&lookup(name));
                rest = &after[consumed..];
            }
            Name::Invalid { consumed } => rest = &after[consumed..],
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
    Found { name: &'a str, consumed: usize },
    Invalid { consumed: usize },
    None,
}

fn is_special(byte: u8) -> bool {
    matches!(
        byte,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_name_byte(byte: u8) -> bool {
    byte == b'_' || byte.is_ascii_alphanumeric()
}

fn shell_name(s: &str) -> Name<'_> {
    let bytes = s.as_bytes();
    match bytes.first() {
        None => Name::None,
        Some(b'{') => braced_name(s),
        Some(&b) if is_special(b) => Name::Found {
            name: &s[..1],
            consumed: 1,
        },
        Some(_) => {
            let len = bytes.iter().take_while(|b| is_name_byte(**b)).count();
            if len == 0 {
                Name::None
            } else {
                Name::Found {
                    name: &s[..len],
                    consumed: len,
                }
            }
        }
    }
}

fn braced_name(s: &str) -> Name<'_> {
    let bytes = s.as_bytes();
    if let (Some(&special), Some(b'}')) = (bytes.get(1), bytes.get(2))
        && is_special(special)
    {
        return Name::Found {
            name: &s[1..2],
            consumed: 3,
        };
    }
    match s.find('}') {
        Some(1) => Name::Invalid { consumed: 2 },
        Some(end) => Name::Found {
            name: &s[1..end],
            consumed: end + 1,
        },
        None => Name::Invalid { consumed: 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn lookup(name: &str) -> String {
        match name {
            "TOKEN" => "glrt-secret".into(),
            "HOST" => "gitlab.example.com".into(),
            "1" => "one".into(),
            _ => String::new(),
        }
    }

    #[test]
    fn expands_like_go_os_expand() {
        for (input, expected) in [
            ("plain", "plain"),
            ("$TOKEN", "glrt-secret"),
            ("${TOKEN}", "glrt-secret"),
            ("https://${HOST}/", "https://gitlab.example.com/"),
            ("https://$HOST/x", "https://gitlab.example.com/x"),
            ("$MISSING-x", "-x"),
            ("a$1b", "aoneb"),
            ("${1}", "one"),
            ("cost: 5$", "cost: 5$"),
            ("$ sign", "$ sign"),
            ("${}x", "x"),
            ("${TOKEN", "TOKEN"),
            ("${HOST:-x}", ""),
            ("é$TOKEN", "églrt-secret"),
        ] {
            assert_eq!(expand(input, lookup), expected, "expanding {input:?}");
        }
    }
}
