//! Go `time.Duration` strings: parsing (`"1h30m"`, `"90s"`, `"500ms"`) and formatting
//! (`"1h0m0s"`), because job variables and the official messages use that syntax.
//!
//! Negative durations are rejected: every duration a job can set is a timeout.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not a Go duration.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// The duration is negative.
    #[error("negative duration {0:?}")]
    Negative(String),
}

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration string such as `"1h30m"`, `"1.5s"` or `"0"`.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, tail) = parse_component(rest).ok_or_else(invalid)?;
        total = total.checked_add(nanos).ok_or_else(invalid)?;
        rest = tail;
    }
    if negative && total > 0 {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| invalid())?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| invalid())?;
    Ok(Duration::new(secs, nanos))
}

/// One `<number>[.<fraction>]<unit>` component: its value in nanoseconds and the rest.
fn parse_component(text: &str) -> Option<(u128, &str)> {
    let int_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, rest) = text.split_at(int_len);
    let (frac_part, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let len = after.bytes().take_while(u8::is_ascii_digit).count();
            after.split_at(len)
        }
        None => ("", rest),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let unit_len = rest
        .char_indices()
        .find(|(_, c)| c.is_ascii_digit() || *c == '.')
        .map_or(rest.len(), |(i, _)| i);
    let (unit, rest) = rest.split_at(unit_len);
    let scale = NANOS_PER_UNIT.iter().find(|(u, _)| *u == unit)?.1;
    let whole: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut nanos = whole.checked_mul(scale)?;
    let mut divisor: u128 = 1;
    for digit in frac_part.bytes().take(18) {
        divisor *= 10;
        nanos += u128::from(digit - b'0') * scale / divisor;
    }
    Some((nanos, rest))
}

/// Formats like Go's `Duration.String()`: `"1h0m0s"`, `"1m30s"`, `"1.5s"`, `"500ms"`, `"0s"`.
pub fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", decimal(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos, 1_000_000));
    }
    let secs = duration.as_secs();
    let (hours, minutes) = (secs / 3600, (secs % 3600) / 60);
    let seconds = decimal(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(duration.subsec_nanos()),
        1_000_000_000,
    );
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `value / unit` as a decimal without trailing zeros.
fn decimal(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ok = |s: &str| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(ok("1h30m"), Ok(5_400_000));
        assert_eq!(ok("90s"), Ok(90_000));
        assert_eq!(ok("500ms"), Ok(500));
        assert_eq!(ok("1.5s"), Ok(1_500));
        assert_eq!(ok("0"), Ok(0));
        assert_eq!(ok("2h45m10s"), Ok(9_910_000));
        assert_eq!(ok(".5m"), Ok(30_000));
        assert!(matches!(
            parse_go_duration("10"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("1d"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration(""),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("abc"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_go_duration("-5m"),
            Err(DurationError::Negative(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(7200)), "2h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }
}
