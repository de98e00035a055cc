//! Time as the health tracker and the metrics see it, injectable so tests control it.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time. `monotonic` measures how long an update has been queued (immune to wall
/// clock steps); `wall` is what the `/healthz` body and the timestamp metrics report.
pub trait Clock: Send + Sync + fmt::Debug {
    fn monotonic(&self) -> Instant;
    fn wall(&self) -> SystemTime;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct FakeClock {
    origin: Instant,
    wall_origin: SystemTime,
    elapsed: Mutex<Duration>,
}

impl FakeClock {
    /// A clock whose wall time starts at `wall` (seconds since the Unix epoch).
    pub fn at_unix(secs: u64) -> Self {
        Self {
            origin: Instant::now(),
            wall_origin: UNIX_EPOCH + Duration::from_secs(secs),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut e = self.elapsed.lock().unwrap_or_else(PoisonError::into_inner);
        *e += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for FakeClock {
    fn monotonic(&self) -> Instant {
        self.origin + self.elapsed()
    }
    fn wall(&self) -> SystemTime {
        self.wall_origin + self.elapsed()
    }
}

/// Seconds since the Unix epoch as a float (the unit of the `*_timestamp_seconds` gauges).
pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// RFC 3339 in UTC with nanoseconds, trailing zeros of the fraction dropped (and the fraction
/// too when it is zero): the form Go's `time.Time` takes in JSON, which is what clients of
/// kube-proxy's `/healthz` parse. Times before the epoch are clamped to it.
pub(crate) fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Go's zero `time.Time` in JSON: what upstream reports as `lastUpdated` before any update.
pub(crate) const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Proleptic Gregorian date of a day count since 1970-01-01. Works in 400-year eras (146097
/// days each) counted from 0000-03-01, so the leap day falls at the end of each shifted year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month, March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_nano(at(951_868_799, 0)), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339_nano(at(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339_nano(at(1_700_000_000, 120_000_000)),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            rfc3339_nano(at(4_102_444_800, 1)),
            "2100-01-01T00:00:00.000000001Z"
        );
        assert_eq!(rfc3339_nano(at(1_709_164_800, 0)), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339_nano(at(1_735_689_599, 0)), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn fake_clock_moves_both_clocks_together() {
        let c = FakeClock::at_unix(100);
        let (m0, w0) = (c.monotonic(), c.wall());
        c.advance(Duration::from_secs(5));
        assert_eq!(c.monotonic() - m0, Duration::from_secs(5));
        assert_eq!(unix_seconds(c.wall()), 105.0);
        assert_eq!(unix_seconds(w0), 100.0);
    }
}
