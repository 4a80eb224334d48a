//! Go duration strings (`"1h30m"`, `"500ms"`, `"1.5h"`), as `time.ParseDuration` reads them.
//!
//! The official config decodes `unhealthy_interval`, `connection_max_age`, `prepare_timeout`,
//! `get_sources_timeout` and the artifact timeouts into Go `time.Duration`: a string in Go syntax,
//! or an integer counting nanoseconds. Negative durations are rejected here: none of these keys
//! has a meaning for them. Formatting durations back into Go syntax is not needed and not done.

use std::time::Duration;

use toml_edit::Value;

use crate::read::{Context, Node, Read};

/// Why a Go duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is not a sequence of `<number><unit>` pairs.
    #[error(
        "invalid duration {0:?}, expected a Go duration such as \"1h30m\", \"45s\" or \"500ms\""
    )]
    Syntax(String),
    /// A unit other than ns, us, µs, ms, s, m, h.
    #[error("unknown unit {unit:?} in duration {text:?}, expected one of: ns, us, ms, s, m, h")]
    Unit {
        /// The whole duration string.
        text: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// A leading `-`.
    #[error("duration {0:?} must not be negative")]
    Negative(String),
    /// More than about 292 years, Go's limit.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Go's `time.Duration` is an `int64` of nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration string such as `"1h30m10s"` or `"1.5s"`.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let body = match text.as_bytes().first() {
        Some(b'-') => return Err(DurationError::Negative(text.to_owned())),
        Some(b'+') => &text[1..],
        _ => text,
    };
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(syntax());
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = body;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(syntax());
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = unit_nanos(unit).ok_or_else(|| {
            if unit.is_empty() {
                syntax()
            } else {
                DurationError::Unit {
                    text: text.to_owned(),
                    unit: unit.to_owned(),
                }
            }
        })?;
        let value: f64 = number.parse().map_err(|_| syntax())?;
        total_nanos += value * scale;
    }
    if total_nanos > MAX_NANOS as f64 {
        return Err(DurationError::Overflow(text.to_owned()));
    }
    // Whole units are exact; fractions are rounded to the nanosecond like Go.
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

fn unit_nanos(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1.0,
        "us" | "µs" | "μs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    })
}

impl Read for Duration {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        match node.value() {
            // Clamped (review M1): deadlines are computed from these.
            Some(Value::String(text)) => match parse_go_duration(text.value()) {
                Ok(duration) => Some(runnel_types::clamp_duration(duration)),
                Err(error) => {
                    cx.error(&node.path, node.span(), error.to_string());
                    None
                }
            },
            Some(Value::Integer(nanos)) => match u64::try_from(*nanos.value()) {
                Ok(nanos) => Some(Duration::from_nanos(nanos)),
                Err(_) => {
                    cx.error(&node.path, node.span(), "duration must not be negative");
                    None
                }
            },
            _ => {
                node.wrong_type(cx, "a duration string such as \"1h30m\"");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        let secs = Duration::from_secs;
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("1h"), Ok(secs(3600)));
        assert_eq!(parse_go_duration("30m"), Ok(secs(1800)));
        assert_eq!(parse_go_duration("1h30m10s"), Ok(secs(5410)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Ok(secs(5400)));
        assert_eq!(parse_go_duration("3600s"), Ok(secs(3600)));
        assert_eq!(parse_go_duration("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(parse_go_duration("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(parse_go_duration("+10s"), Ok(secs(10)));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in ["", "10", "h", "1.2.3s", ".s", "1hh"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            parse_go_duration("1x").unwrap_err().to_string(),
            "unknown unit \"x\" in duration \"1x\", expected one of: ns, us, ms, s, m, h"
        );
        assert_eq!(
            parse_go_duration("-1h"),
            Err(DurationError::Negative("-1h".into()))
        );
        assert_eq!(
            parse_go_duration("9999999h"),
            Err(DurationError::Overflow("9999999h".into()))
        );
    }
}
