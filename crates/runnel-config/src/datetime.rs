//! TOML datetimes to and from [`OffsetDateTime`], with Go's zero time meaning "unset".
//!
//! The official runner writes `token_expires_at = 0001-01-01T00:00:00Z` for tokens that never
//! expire (Go's zero `time.Time`). Reading maps that instant to `None`; writing maps `None` back
//! to it. Datetimes without an offset are read as UTC. Nothing here touches the clock.

use time::macros::datetime;
use time::{Month, OffsetDateTime, PrimitiveDateTime, UtcOffset};
use toml_edit::{Date, Datetime, Offset, Time, Value};

use crate::read::{Context, Node, Read};

/// Go's zero `time.Time`, the official way of writing "no time".
const GO_ZERO: OffsetDateTime = datetime!(0001-01-01 0:00 UTC);

/// `None` for Go's zero time, the time itself otherwise.
pub(crate) fn non_zero(time: OffsetDateTime) -> Option<OffsetDateTime> {
    (time != GO_ZERO).then_some(time)
}

/// The TOML datetime for `time` in UTC, or Go's zero time for `None`.
pub(crate) fn to_toml(time: Option<OffsetDateTime>) -> Datetime {
    let time = time.unwrap_or(GO_ZERO).to_offset(UtcOffset::UTC);
    let year = u16::try_from(time.year()).unwrap_or(if time.year() < 0 { 0 } else { 9999 });
    Datetime {
        date: Some(Date {
            year,
            month: u8::from(time.month()),
            day: time.day(),
        }),
        time: Some(Time {
            hour: time.hour(),
            minute: time.minute(),
            second: Some(time.second()),
            nanosecond: (time.nanosecond() != 0).then_some(time.nanosecond()),
        }),
        offset: Some(Offset::Z),
    }
}

fn from_toml(datetime: &Datetime) -> Option<OffsetDateTime> {
    let date = datetime.date?;
    let clock = datetime.time?;
    let date = time::Date::from_calendar_date(
        i32::from(date.year),
        Month::try_from(date.month).ok()?,
        date.day,
    )
    .ok()?;
    let clock = time::Time::from_hms_nano(
        clock.hour,
        clock.minute,
        clock.second.unwrap_or(0),
        clock.nanosecond.unwrap_or(0),
    )
    .ok()?;
    let offset = match datetime.offset {
        None | Some(Offset::Z) => UtcOffset::UTC,
        Some(Offset::Custom { minutes }) => {
            UtcOffset::from_whole_seconds(i32::from(minutes) * 60).ok()?
        }
    };
    Some(PrimitiveDateTime::new(date, clock).assume_offset(offset))
}

impl Read for OffsetDateTime {
    fn read(node: &Node<'_>, cx: &mut Context<'_>) -> Option<Self> {
        let parsed = match node.value() {
            Some(Value::Datetime(datetime)) => from_toml(datetime.value()),
            // Go's time.Time also accepts an RFC 3339 string.
            Some(Value::String(text)) => {
                OffsetDateTime::parse(text.value(), &time::format_description::well_known::Rfc3339)
                    .ok()
            }
            _ => {
                node.wrong_type(cx, "a datetime such as 2024-01-31T12:00:00Z");
                return None;
            }
        };
        if parsed.is_none() {
            cx.error(
                &node.path,
                node.span(),
                "expected a date and time such as 2024-01-31T12:00:00Z",
            );
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let time = datetime!(2024-01-31 12:30:05 UTC);
        let toml = to_toml(Some(time));
        assert_eq!(toml.to_string(), "2024-01-31T12:30:05Z");
        assert_eq!(from_toml(&toml), Some(time));
    }

    #[test]
    fn go_zero_time_means_unset() {
        assert_eq!(to_toml(None).to_string(), "0001-01-01T00:00:00Z");
        let zero = from_toml(&to_toml(None)).and_then(non_zero);
        assert_eq!(zero, None);
    }

    #[test]
    fn offsets_are_honoured() {
        let datetime: Datetime = "2024-01-31T14:30:05+02:00".parse().unwrap();
        assert_eq!(
            from_toml(&datetime),
            Some(datetime!(2024-01-31 12:30:05 UTC))
        );
    }
}
