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

/// Formats unix time for an e-mail `Date:` header (RFC 5322), `Mon, 23 Nov 2026 09:07:53 +0000`.
pub fn format_rfc5322(t: UnixTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let text = format_time(t);
    // `YYYY-MM-DD HH:MM:SSZ`, as made above.
    let (date, time) = text.split_once(' ').unwrap_or((&text, "00:00:00Z"));
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (
        parts.next().unwrap_or("1970"),
        parts
            .next()
            .and_then(|m| m.parse::<usize>().ok())
            .unwrap_or(1),
        parts.next().unwrap_or("01"),
    );
    // 1970-01-01 was a Thursday.
    let weekday = usize::try_from((t.div_euclid(86400) + 4).rem_euclid(7)).unwrap_or(0);
    format!(
        "{}, {d} {} {y} {} +0000",
        DAYS[weekday],
        MONTHS[(m.clamp(1, 12)) - 1],
        time.trim_end_matches('Z')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_mail_dates() {
        assert_eq!(format_rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            format_rfc5322(1_795_424_873),
            "Mon, 23 Nov 2026 09:07:53 +0000"
        );
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_time(1_795_424_873), "2026-11-23 09:07:53Z");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00Z");
    }
}
