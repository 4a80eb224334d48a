//! Quoting for the three languages definitions are written in: POSIX `sh` words, systemd
//! `ExecStart=` words, and XML text. Pure string functions; nothing here validates meaning.

/// Characters that never need quoting, in either `sh` or systemd command lines.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '=' | '@' | '+' | ',')
}

/// One `sh` word: bare when safe, else single-quoted (`'` becomes `'\''`).
pub(crate) fn sh(word: &str) -> String {
    if !word.is_empty() && word.chars().all(is_plain) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Several `sh` words separated by spaces.
pub(crate) fn sh_words<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().map(sh).collect::<Vec<_>>().join(" ")
}

/// One word of a systemd command line (`ExecStart=`): bare when safe, else double-quoted with
/// C-style escapes. `%` (specifiers) and `$` (variables) are doubled in both cases.
pub(crate) fn systemd(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if !word.is_empty() && word.chars().all(|c| is_plain(c) || c == '%' || c == '$') {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 2);
    out.push('"');
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value on the right of a systemd `Key=` line (no quoting syntax there): specifiers escaped,
/// newlines flattened.
pub(crate) fn systemd_value(value: &str) -> String {
    value.replace('%', "%%").replace(['\n', '\r'], " ")
}

/// XML text or attribute content.
pub(crate) fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quoting() {
        assert_eq!(sh("/usr/bin/runnel"), "/usr/bin/runnel");
        assert_eq!(sh("--config"), "--config");
        assert_eq!(sh(""), "''");
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's $HOME"), r"'it'\''s $HOME'");
        assert_eq!(sh_words(["run", "a b"]), "run 'a b'");
    }

    #[test]
    fn systemd_quoting() {
        assert_eq!(systemd("/usr/bin/runnel"), "/usr/bin/runnel");
        assert_eq!(systemd("100%"), "100%%");
        assert_eq!(systemd("$HOME"), "$$HOME");
        assert_eq!(systemd("a b"), "\"a b\"");
        assert_eq!(systemd(r#"say "hi"\"#), r#""say \"hi\"\\""#);
        assert_eq!(systemd(""), "\"\"");
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(xml(r#"<a & "b">'"#), "&lt;a &amp; &quot;b&quot;&gt;&apos;");
    }
}
