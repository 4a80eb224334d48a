//! Quoting strings for bash and sh the way the official runner does.
//!
//! [`ansi_c`] produces `$'…'` (ANSI-C) quoting with `\xHH` for bytes that have no printable
//! form; [`posix`] produces double-quoted POSIX quoting (`FF_POSIXLY_CORRECT_ESCAPES`);
//! [`double_quote`] is the Go-`%q`-like quoting used where the shell must still expand `$VAR`
//! (paths under `$PWD`). Nothing here runs a shell.

/// How one byte is written inside `$'…'`.
enum AnsiC {
    /// Allowed bare; a string of only these needs no quoting.
    Literal,
    /// Needs quoting but is written as itself.
    Quoted,
    /// Written as this escape sequence.
    Escape(&'static str),
    /// Written as `\xHH`.
    Hex,
}

fn ansi_c_class(byte: u8) -> AnsiC {
    match byte {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b',' | b'.' | b'_' | b'/' | b'@' | b'-' => {
            AnsiC::Literal
        }
        0x07 => AnsiC::Escape(r"\a"),
        0x08 => AnsiC::Escape(r"\b"),
        b'\t' => AnsiC::Escape(r"\t"),
        b'\n' => AnsiC::Escape(r"\n"),
        0x0b => AnsiC::Escape(r"\v"),
        0x0c => AnsiC::Escape(r"\f"),
        b'\r' => AnsiC::Escape(r"\r"),
        b'\'' => AnsiC::Escape(r"\'"),
        b'\\' => AnsiC::Escape(r"\\"),
        b' ' | b'!' | b'"' | b'#' | b'$' | b'%' | b'&' | b'(' | b')' | b'*' | b'+' | b':'
        | b';' | b'<' | b'=' | b'>' | b'?' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}'
        | b'~' => AnsiC::Quoted,
        _ => AnsiC::Hex,
    }
}

/// Quotes `input` for bash: unchanged if it only holds `[A-Za-z0-9,._/@-]`, `''` if empty,
/// else `$'…'` with control characters as C escapes and every other non-printable or
/// non-ASCII byte as `\xHH`.
pub fn ansi_c(input: &str) -> String {
    if input.is_empty() {
        return "''".to_owned();
    }
    let mut out = String::with_capacity(input.len() * 2);
    let mut needs_quotes = false;
    for byte in input.bytes() {
        match ansi_c_class(byte) {
            AnsiC::Literal => out.push(char::from(byte)),
            AnsiC::Quoted => {
                out.push(char::from(byte));
                needs_quotes = true;
            }
            AnsiC::Escape(seq) => {
                out.push_str(seq);
                needs_quotes = true;
            }
            AnsiC::Hex => {
                out.push_str(&format!("\\x{byte:02x}"));
                needs_quotes = true;
            }
        }
    }
    if needs_quotes {
        format!("$'{out}'")
    } else {
        out
    }
}

/// Quotes `input` with POSIX double quotes (`FF_POSIXLY_CORRECT_ESCAPES`): unchanged if it only
/// holds `[A-Za-z0-9,._/@-]`, else wrapped in `"…"` with `` ` `` `"` `\` `$` backslash-escaped.
///
/// Unlike the official table, every character outside the safe set triggers quoting (the
/// official one leaves `'` and `;` bare, which breaks the command line).
pub fn posix(input: &str) -> String {
    if input.is_empty() {
        return "''".to_owned();
    }
    if input
        .bytes()
        .all(|b| matches!(ansi_c_class(b), AnsiC::Literal))
    {
        return input.to_owned();
    }
    let mut out = String::with_capacity(input.len() + 8);
    out.push('"');
    for ch in input.chars() {
        if matches!(ch, '`' | '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Double-quotes `input` like Go's `%q`, so the shell still expands `$VAR` inside it; backticks
/// and `$(` are escaped, so it never runs a command.
pub fn double_quote(input: &str) -> String {
    let mut out = String::with_capacity(input.len() + 2);
    out.push('"');
    let mut chars = input.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '$' if chars.peek() == Some(&'(') => out.push_str("\\$"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // Review L8: no command substitution from a value (`$VAR` still expands).
            '`' => out.push_str("\\`"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Which quoting the generated scripts use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Quoting {
    AnsiC,
    Posix,
}

impl Quoting {
    pub(crate) fn quote(self, input: &str) -> String {
        match self {
            Self::AnsiC => ansi_c(input),
            Self::Posix => posix(input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_c_leaves_safe_strings_alone() {
        assert_eq!(ansi_c("abc-1.2_3/@,x"), "abc-1.2_3/@,x");
        assert_eq!(ansi_c(""), "''");
    }

    #[test]
    fn ansi_c_quotes_and_escapes() {
        assert_eq!(ansi_c("a b"), "$'a b'");
        assert_eq!(ansi_c("it's"), r"$'it\'s'");
        assert_eq!(ansi_c("a\\b"), r"$'a\\b'");
        assert_eq!(ansi_c("l1\nl2\t"), r"$'l1\nl2\t'");
        assert_eq!(ansi_c("\x1b[0m"), r"$'\x1b[0m'");
        assert_eq!(ansi_c("é"), r"$'\xc3\xa9'");
        assert_eq!(ansi_c("\x7f"), r"$'\x7f'");
    }

    #[test]
    fn posix_quotes_specials() {
        assert_eq!(posix("plain"), "plain");
        assert_eq!(posix("a b"), "\"a b\"");
        assert_eq!(posix("$HOME"), "\"\\$HOME\"");
        assert_eq!(posix("it's; `x`"), "\"it's; \\`x\\`\"");
    }

    #[test]
    fn double_quote_keeps_dollars() {
        assert_eq!(double_quote("$PWD/a \"b\""), r#""$PWD/a \"b\"""#);
    }

    /// Review L8 (`p_weird2.json`): a file-variable key `FILE$(touch …)` ran a command.
    #[test]
    fn double_quote_never_substitutes_commands() {
        assert_eq!(
            double_quote("a$(touch x)`id`${B}"),
            r#""a\$(touch x)\`id\`${B}""#
        );
    }
}
