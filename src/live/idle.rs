//! Idle connections: a signed-in vendor connection through which nothing has passed for
//! `[ssh] idle_timeout` is closed. The risk is an unattended terminal: a laptop left open on a shell to a
//! scanner, or a tunnel to a pump left up after the job (HIPAA's "automatic logoff").
//!
//! Entry points: [`Activity`], one per connection (shared with the ProxyJump connections inside it),
//! touched by what counts as activity: a session's data as [`counts`] says for its kind (applied where
//! every transport passes, the session's `Meter`), a channel opened, and a command of the bastion's own
//! running ([`Activity::busy`]: `request` waiting for its decision, `passkey add`). SSH keepalives,
//! window adjustments and other protocol messages are not activity: a client that only keeps the
//! connection alive is idle. [`Quiet`] is the watcher's view of one connection: it warns once before
//! the end and then closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::SessionKind;

/// What has happened on one connection since the watcher last looked.
#[derive(Debug, Default)]
pub struct Activity {
    seen: AtomicBool,
    busy: AtomicUsize,
}

impl Activity {
    /// Something passed. Cheap enough for every chunk: a load, and a store only when it changes.
    pub fn touch(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    /// The connection counts as active for as long as the returned guard lives.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether there was activity since the last call (or something is running now); clears it.
    pub fn take(&self) -> bool {
        let seen = self.seen.swap(false, Ordering::Relaxed);
        seen || self.busy.load(Ordering::Relaxed) > 0
    }
}

/// Holds a connection active (see [`Activity::busy`]); its end counts as activity too, so the quiet
/// time starts when the command ended.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// What of a session keeps its connection active: the one rule, by kind ([`counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// What the vendor types or sends: a terminal. Output alone (`tail -f`, `top`) is not a person
    /// at the keyboard.
    Input,
    /// Bytes either way: a file transfer or a tunnel (a download sends almost nothing up).
    Both,
    /// The session itself, for as long as it runs: a command without a terminal. A silent upgrade is
    /// work, not an unattended terminal, and cutting it could leave a device half updated.
    Running,
    /// Nothing of its own: a jump, whose stream also carries the inner connection's keepalives; the
    /// inner sessions count by their own kinds.
    Nothing,
}

/// What of a session of `kind` (with a terminal or not) keeps its connection active.
pub fn counts(kind: SessionKind, pty: bool) -> Counts {
    match (kind, pty) {
        (SessionKind::Shell, _) | (SessionKind::Exec, true) => Counts::Input,
        (SessionKind::Exec, false) => Counts::Running,
        (SessionKind::Sftp | SessionKind::Tunnel, _) => Counts::Both,
        (SessionKind::Jump, _) => Counts::Nothing,
    }
}

/// What the watcher is to do about a connection at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idle {
    /// Tell its sessions: nothing has passed for `quiet` seconds, and it closes in `left` seconds.
    Warn { quiet: i64, left: i64 },
    /// Close it: nothing has passed for `quiet` seconds.
    Close { quiet: i64 },
}

/// How long a connection has been quiet, as the watcher sees it at its ticks. Times are seconds on a
/// monotonic clock (the watcher's): a wall clock set forward (NTP, a VM resumed) must not make every
/// connection idle at once.
#[derive(Debug, Clone, Default)]
pub struct Quiet {
    /// Quiet since then; `None` until the first look (a connection that just signed in).
    since: Option<i64>,
    warned: bool,
}

impl Quiet {
    /// The watcher's look at `now`: `active` says whether anything passed since the last look.
    pub fn check(&mut self, active: bool, now: i64, timeout: Duration) -> Option<Idle> {
        let since = match self.since {
            Some(since) if !active => since,
            _ => {
                *self = Quiet {
                    since: Some(now),
                    warned: false,
                };
                return None;
            }
        };
        let timeout = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
        let quiet = now.saturating_sub(since);
        if quiet >= timeout {
            return Some(Idle::Close { quiet });
        }
        let left = timeout - quiet;
        if !self.warned && left <= warn_before(timeout) {
            self.warned = true;
            return Some(Idle::Warn { quiet, left });
        }
        None
    }
}

/// How long before the end a quiet connection is warned: a minute, or half the timeout if shorter.
fn warn_before(timeout: i64) -> i64 {
    (timeout / 2).min(60)
}

/// `secs` as a vendor reads it: "1 minute", "30 minutes", "45 seconds"; from two minutes on, in whole
/// minutes (the watcher's ticks may make a quiet time a second longer).
pub fn spoken(secs: i64) -> String {
    match secs {
        60 => "1 minute".into(),
        s if s >= 120 => format!("{} minutes", (s + 30) / 60),
        s if s >= 60 && s % 60 == 0 => format!("{} minutes", s / 60),
        1 => "1 second".into(),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_HOUR: Duration = Duration::from_secs(1800);

    #[test]
    fn a_quiet_connection_is_warned_once_a_minute_before_and_then_closed() {
        let mut q = Quiet::default();
        assert_eq!(
            q.check(false, 1000, HALF_HOUR),
            None,
            "the first look starts the count"
        );
        assert_eq!(q.check(false, 1000 + 1739, HALF_HOUR), None);
        assert_eq!(
            q.check(false, 1000 + 1740, HALF_HOUR),
            Some(Idle::Warn {
                quiet: 1740,
                left: 60
            })
        );
        assert_eq!(q.check(false, 1000 + 1741, HALF_HOUR), None, "warned once");
        assert_eq!(
            q.check(false, 1000 + 1800, HALF_HOUR),
            Some(Idle::Close { quiet: 1800 })
        );
    }

    #[test]
    fn activity_starts_the_quiet_time_again_and_a_new_warning() {
        let mut q = Quiet::default();
        assert_eq!(q.check(false, 0, HALF_HOUR), None);
        assert!(matches!(
            q.check(false, 1750, HALF_HOUR),
            Some(Idle::Warn { .. })
        ));
        assert_eq!(q.check(true, 1790, HALF_HOUR), None);
        assert_eq!(
            q.check(false, 1790 + 1799, HALF_HOUR),
            Some(Idle::Warn {
                quiet: 1799,
                left: 1
            })
        );
        assert_eq!(
            q.check(false, 1790 + 1800, HALF_HOUR),
            Some(Idle::Close { quiet: 1800 })
        );
    }

    #[test]
    fn a_short_timeout_warns_at_half_time() {
        let mut q = Quiet::default();
        let four = Duration::from_secs(4);
        assert_eq!(q.check(false, 0, four), None);
        assert_eq!(q.check(false, 1, four), None);
        assert_eq!(
            q.check(false, 2, four),
            Some(Idle::Warn { quiet: 2, left: 2 })
        );
        assert_eq!(q.check(false, 4, four), Some(Idle::Close { quiet: 4 }));
    }

    #[test]
    fn touches_and_running_commands_count_and_are_taken_once() {
        let a = Arc::new(Activity::default());
        assert!(!a.take());
        a.touch();
        a.touch();
        assert!(a.take());
        assert!(!a.take(), "taken");
        let busy = a.busy();
        assert!(a.take() && a.take(), "active for as long as a command runs");
        drop(busy);
        assert!(a.take(), "its end counts");
        assert!(!a.take());
    }

    #[test]
    fn terminals_count_input_transfers_both_ways_and_commands_while_they_run() {
        assert_eq!(counts(SessionKind::Shell, true), Counts::Input);
        assert_eq!(counts(SessionKind::Shell, false), Counts::Input);
        assert_eq!(counts(SessionKind::Exec, true), Counts::Input);
        assert_eq!(counts(SessionKind::Exec, false), Counts::Running);
        assert_eq!(counts(SessionKind::Sftp, false), Counts::Both);
        assert_eq!(counts(SessionKind::Tunnel, false), Counts::Both);
        assert_eq!(counts(SessionKind::Jump, false), Counts::Nothing);
    }

    #[test]
    fn spans_read_as_words() {
        assert_eq!(spoken(1800), "30 minutes");
        assert_eq!(spoken(60), "1 minute");
        assert_eq!(spoken(90), "90 seconds");
        assert_eq!(spoken(4), "4 seconds");
        assert_eq!(spoken(1801), "30 minutes");
        assert_eq!(spoken(1741), "29 minutes");
    }
}
