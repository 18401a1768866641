//! The session history's filters, as people type them, turned into the store's [`HistoryFilter`]: one
//! parser for `chaperone session list --vendor … --since … --text …`, the history page and
//! `GET /api/sessions?…`.
//!
//! Entry point: [`filter`].

use chaperone_recorder::transcript::words;
use chaperone_web_approval::HistoryQuery;

use crate::model::{SESSION_ENDS, UnixTime};
use crate::store::HistoryFilter;

/// The session kinds a filter may name (`scp` is an sftp session: scp speaks sftp since OpenSSH 9).
const KINDS: [&str; 5] = ["shell", "exec", "sftp", "tunnel", "jump"];
/// The longest value of one filter, the text to find included: a search is audited with what was
/// typed, and the audit log is no place for a request's worth of text.
pub const MAX_FILTER: usize = 500;

/// The store's filter for `q`, or what is wrong with it (a sentence for the person who typed it).
pub fn filter(q: &HistoryQuery) -> Result<HistoryFilter, String> {
    if let Some((name, _)) = q
        .pairs()
        .into_iter()
        .find(|(_, v)| v.chars().count() > MAX_FILTER)
    {
        return Err(format!(
            "the {name} filter is longer than {MAX_FILTER} characters"
        ));
    }
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let kind = match text(&q.kind).as_deref() {
        None => None,
        Some("scp") => Some("sftp".to_owned()),
        Some(k) if KINDS.contains(&k) => Some(k.to_owned()),
        Some(k) => {
            return Err(format!(
                "unknown kind {k:?}: one of shell, exec, sftp (scp), tunnel, jump"
            ));
        }
    };
    let ended = match text(&q.ended) {
        Some(e) if e != "live" && !SESSION_ENDS.contains(&e.as_str()) => {
            return Err(format!(
                "unknown end {e:?}: one of live, {}",
                SESSION_ENDS.join(", ")
            ));
        }
        e => e,
    };
    let since = text(&q.since).map(|t| parse_time(&t, false)).transpose()?;
    let until = text(&q.until).map(|t| parse_time(&t, true)).transpose()?;
    let words = match text(&q.text) {
        None => None,
        Some(t) => {
            let w = words(&t);
            if w.is_empty() {
                return Err(
                    "the text to find has no letters or digits (punctuation is not searched)"
                        .into(),
                );
            }
            Some(w)
        }
    };
    Ok(HistoryFilter {
        id: None,
        vendor: text(&q.vendor),
        org: text(&q.org),
        asset: text(&q.asset),
        zone: text(&q.zone),
        kind,
        since,
        until,
        ended,
        words,
    })
}

/// The page asked for (1-based; 1 when absent).
pub fn page(q: &HistoryQuery) -> Result<u32, String> {
    match q.page.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(1),
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=100_000).contains(p))
            .ok_or_else(|| format!("page {p:?} is not a page number")),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time bound as typed: a day (`2026-11-01`: its start, or with `end_of_day` the start of the next
/// day, so the day counts whole), a UTC time (`2026-11-01T08:30`, `2026-11-01 08:30:15`, a trailing
/// `Z`), or unix seconds.
pub fn parse_time(text: &str, end_of_day: bool) -> Result<UnixTime, String> {
    let bad = || {
        format!(
            "{text:?} is not a time: use a day (2026-11-01), a UTC time (2026-11-01T08:30) or unix seconds"
        )
    };
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let mut parts = date.split('-');
    let num = |s: Option<&str>, len: usize| -> Result<i64, String> {
        s.filter(|s| s.len() == len && s.chars().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (y, m, d) = (
        num(parts.next(), 4)?,
        num(parts.next(), 2)?,
        num(parts.next(), 2)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let day = days_from_civil(y, m, d) * 86_400;
    let Some(time) = time else {
        return Ok(if end_of_day { day + 86_400 } else { day });
    };
    let mut hms = time.split(':');
    let (h, mi) = (num(hms.next(), 2)?, num(hms.next(), 2)?);
    let s = match hms.next() {
        Some(s) => num(Some(s), 2)?,
        None => 0,
    };
    if hms.next().is_some() || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    Ok(day + h * 3600 + mi * 60 + s)
}

/// `1h 2m 3s` for a duration in seconds.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_times_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01", false), Ok(0));
        assert_eq!(parse_time("2026-11-01", false), Ok(1_793_491_200));
        assert_eq!(parse_time("2026-11-01", true), Ok(1_793_577_600));
        assert_eq!(parse_time("2026-11-01T08:30", false), Ok(1_793_521_800));
        assert_eq!(parse_time("2026-11-01 08:30:15Z", false), Ok(1_793_521_815));
        assert_eq!(parse_time("1793491200", true), Ok(1_793_491_200));
        for bad in ["2026-13-01", "yesterday", "2026-11", "2026-11-01T25:00", ""] {
            assert!(parse_time(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_filter_longer_than_the_limit_is_refused() {
        let q = HistoryQuery {
            text: Some("a".repeat(MAX_FILTER + 1)),
            ..Default::default()
        };
        assert!(filter(&q).unwrap_err().contains("text filter is longer"));
        let q = HistoryQuery {
            vendor: Some("v".repeat(MAX_FILTER)),
            ..Default::default()
        };
        assert!(filter(&q).is_ok());
    }

    #[test]
    fn filters_are_checked_and_text_is_normalised() {
        let q = HistoryQuery {
            kind: Some("scp".into()),
            text: Some("RM -rf".into()),
            vendor: Some(" ".into()),
            ..Default::default()
        };
        let f = filter(&q).unwrap();
        assert_eq!(f.kind.as_deref(), Some("sftp"));
        assert_eq!(f.words.as_deref(), Some("rm rf"));
        assert_eq!(f.vendor, None);
        let bad = HistoryQuery {
            ended: Some("exploded".into()),
            ..Default::default()
        };
        assert!(filter(&bad).is_err());
        assert_eq!(duration(3723), "1h 2m 3s");
    }
}
