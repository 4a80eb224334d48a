//! The retry policy shared by every endpoint (reference 3.9).
//!
//! One classifier decides what is worth retrying ([`is_retriable_status`],
//! [`is_retriable_transport`]) and one function decides how long to wait ([`RetryPolicy::wait`]):
//! a server hint (`RateLimit-ResetTime`, then `Retry-After`) when present, otherwise exponential
//! backoff with jitter. This module does not send anything; the client's send loop uses it.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// How often and how patiently requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (at least 1 is always made).
    pub max_attempts: u32,
    /// Backoff before the second attempt; it doubles after each further attempt.
    pub min_backoff: Duration,
    /// Cap on the backoff and on waits the server asks for.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// The official runner's policy: 5 attempts, 100 ms doubling up to 60 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that sends each request once.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// How long to wait after failed attempt number `attempt` (1-based) whose response had
    /// `headers` (none for transport errors), as seen at `now`.
    pub fn wait(&self, attempt: u32, headers: Option<&HeaderMap>, now: SystemTime) -> Duration {
        let hint = headers.and_then(|headers| server_hint(headers, now));
        hint.unwrap_or_else(|| self.backoff(attempt))
            .min(self.max_backoff)
    }

    /// Exponential backoff with jitter: a random wait in `[b/2, b]` where
    /// `b = min_backoff * 2^(attempt-1)`, capped at `max_backoff`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let base = self
            .min_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        let half = base / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=jitter_nanos))
    }
}

/// Whether a response status is worth another attempt: 408, 429, 500, 502, 503, 504 and
/// everything from 512 on.
pub fn is_retriable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504 | 512..)
}

/// Whether a transport error is worth another attempt: connection refused or reset, timeouts
/// and other failures to exchange the request (not errors building it).
pub fn is_retriable_transport(error: &reqwest::Error) -> bool {
    !error.is_builder()
        && !error.is_decode()
        && (error.is_connect() || error.is_timeout() || error.is_request())
}

/// The wait a response asks for: `RateLimit-ResetTime` (an HTTP date) or `Retry-After`
/// (seconds, or an HTTP date).
fn server_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let until = |date: &str| {
        let at = httpdate::parse_http_date(date.trim()).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    };
    if let Some(wait) = header("RateLimit-ResetTime").and_then(until) {
        return Some(wait);
    }
    let retry_after = header("Retry-After")?.trim();
    match retry_after.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => until(retry_after),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap()
    }

    #[test]
    fn classifies_statuses_like_the_official_runner() {
        for code in [408, 429, 500, 502, 503, 504, 512, 599] {
            assert!(
                is_retriable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [
            200, 201, 204, 400, 401, 403, 404, 409, 412, 413, 416, 501, 505, 511,
        ] {
            assert!(
                !is_retriable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn rate_limit_reset_time_wins_over_retry_after() {
        let h = headers(&[
            ("RateLimit-ResetTime", "Sun, 06 Nov 1994 08:49:40 GMT"),
            ("Retry-After", "7"),
        ]);
        let wait = RetryPolicy::default().wait(1, Some(&h), now());
        assert_eq!(wait, Duration::from_secs(3));
    }

    #[test]
    fn retry_after_seconds_and_dates_are_honoured() {
        let policy = RetryPolicy::default();
        let h = headers(&[("Retry-After", "7")]);
        assert_eq!(policy.wait(1, Some(&h), now()), Duration::from_secs(7));
        let h = headers(&[("Retry-After", "Sun, 06 Nov 1994 08:49:47 GMT")]);
        assert_eq!(policy.wait(1, Some(&h), now()), Duration::from_secs(10));
    }

    #[test]
    fn dates_in_the_past_mean_no_wait() {
        let h = headers(&[("RateLimit-ResetTime", "Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(
            RetryPolicy::default().wait(1, Some(&h), now()),
            Duration::ZERO
        );
    }

    #[test]
    fn hints_are_capped_at_max_backoff() {
        let h = headers(&[("Retry-After", "3600")]);
        let wait = RetryPolicy::default().wait(1, Some(&h), now());
        assert_eq!(wait, Duration::from_secs(60));
    }

    #[test]
    fn garbage_hints_fall_back_to_backoff() {
        let h = headers(&[("Retry-After", "soon"), ("RateLimit-ResetTime", "tomorrow")]);
        let wait = RetryPolicy::default().wait(1, Some(&h), now());
        assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let policy = RetryPolicy::default();
        for (attempt, base_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (20, 60_000)] {
            let wait = policy.wait(attempt, None, now());
            let base = Duration::from_millis(base_ms);
            assert!(
                wait >= base / 2 && wait <= base,
                "attempt {attempt}: {wait:?}"
            );
        }
    }
}
