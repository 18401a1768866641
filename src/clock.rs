//! Time. Everything that decides on time (grant expiry, TOTP, lockout) asks the app's [`Clock`]; the
//! decisions themselves are functions of an explicit `now` (`NoticeState::due`, `LiveSessions::tick`,
//! `totp::check`…), which is how tests pin time.
//!
//! Entry point: [`Clock`].

use crate::model::UnixTime;

/// The system clock, in unix seconds.
#[derive(Debug, Clone, Default)]
pub struct Clock;

impl Clock {
    pub fn system() -> Clock {
        Clock
    }

    pub fn now(&self) -> UnixTime {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

/// Formats unix time as `2026-11-23 09:07:53Z` (UTC), without pulling in a date crate.
pub fn format_time(t: UnixTime) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Formats unix time as RFC 3339 in UTC, `2026-11-23T09:07:53Z` (syslog's TIMESTAMP).
pub fn format_rfc3339(t: UnixTime) -> String {
    format_time(t).replacen(' ', "T", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_time(1_795_424_873), "2026-11-23 09:07:53Z");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00Z");
    }
}
