//! Conversions between `SystemTime` and the timestamps archives store (unix seconds, MS-DOS
//! date/time).
//!
//! Sub-second precision is dropped on purpose: no supported format keeps it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole seconds since the epoch, negative before 1970.
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The inverse of [`unix_seconds`].
pub(crate) fn from_unix_seconds(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// A zip `DateTime` (UTC, two-second resolution, clamped to 1980..=2107).
pub(crate) fn zip_datetime(seconds: i64) -> zip::DateTime {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let hour = (secs_of_day / 3600) as u8;
    let minute = (secs_of_day % 3600 / 60) as u8;
    let second = (secs_of_day % 60) as u8;
    u16::try_from(year)
        .ok()
        .and_then(|year| {
            zip::DateTime::from_date_and_time(year, month, day, hour, minute, second).ok()
        })
        .unwrap_or(zip::DateTime::DEFAULT)
}

/// Seconds since the epoch of a zip `DateTime`, read as UTC.
pub(crate) fn zip_datetime_seconds(time: zip::DateTime) -> i64 {
    let days = days_from_civil(
        i64::from(time.year()),
        i64::from(time.month()),
        i64::from(time.day()),
    );
    days * 86_400
        + i64::from(time.hour()) * 3600
        + i64::from(time.minute()) * 60
        + i64::from(time.second())
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Howard Hinnant's `days_from_civil`, the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_datetime_round_trips_even_seconds() {
        for seconds in [315_532_800, 1_700_000_000, 1_700_000_001, 4_102_444_800] {
            let back = zip_datetime_seconds(zip_datetime(seconds));
            assert_eq!(back, seconds - seconds % 2, "{seconds}");
        }
    }

    #[test]
    fn zip_datetime_clamps_before_1980() {
        assert_eq!(zip_datetime(0), zip::DateTime::DEFAULT);
    }

    #[test]
    fn unix_seconds_round_trip() {
        for seconds in [-86_401, 0, 1_700_000_000] {
            assert_eq!(unix_seconds(from_unix_seconds(seconds)), seconds);
        }
    }
}
