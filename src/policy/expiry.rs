//! When a grant's sessions are warned and closed.
//!
//! Entry points: [`NoticeState::due`] (pure: which notice, if any, is due at `now`) and [`LiveSessions`]
//! with [`watch`]: every live session registers its grant; once a second the watcher re-reads those grants
//! from the store (so a revocation by another process or node is seen) and tells each session to warn its
//! vendor ten minutes and one minute before the end, and to close at the end, on revocation, or when an
//! approver terminated that session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch as stop_watch};

use crate::clock::{Clock, format_time};
use crate::model::UnixTime;
use crate::store::Store;

/// Seconds before the end at which vendors are warned.
pub const NOTICE_AT: [i64; 2] = [600, 60];

/// Which notices a session has had.
#[derive(Debug, Clone, Default)]
pub struct NoticeState {
    sent: [bool; 2],
}

impl NoticeState {
    /// The notice due at `now` for a grant ending at `ends_at`, if any; marks it (and any earlier one) sent.
    /// A session opened with five minutes left gets one notice at once, then the one-minute notice.
    pub fn due(&mut self, ends_at: UnixTime, now: UnixTime) -> Option<i64> {
        let left = ends_at - now;
        if left <= 0 {
            return None;
        }
        // Latest threshold first: at 30 s left only the one-minute notice is due.
        for i in (0..NOTICE_AT.len()).rev() {
            if left <= NOTICE_AT[i] {
                if self.sent[i] {
                    return None;
                }
                for s in &mut self.sent[..=i] {
                    *s = true;
                }
                return Some(left);
            }
        }
        None
    }
}

/// What the watcher tells a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Show this line to the vendor and mark it in the recording.
    Notice(String),
    /// Close now, for this reason (shown to the vendor, recorded, audited).
    Close(String),
}

#[derive(Debug)]
struct Entry {
    grant_id: i64,
    asset: String,
    ends_at: UnixTime,
    notices: NoticeState,
    tx: mpsc::UnboundedSender<Control>,
}

/// The sessions alive on this node, by session id.
#[derive(Debug, Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Removes a session from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    id: String,
    sessions: LiveSessions,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.sessions.inner.lock() {
            map.remove(&self.id);
        }
    }
}

impl LiveSessions {
    /// Registers a session under `grant_id`; controls arrive on the returned receiver.
    pub fn register(
        &self,
        session_id: &str,
        grant_id: i64,
        asset: &str,
        ends_at: UnixTime,
    ) -> (Registration, mpsc::UnboundedReceiver<Control>) {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut map) = self.inner.lock() {
            map.insert(
                session_id.to_owned(),
                Entry {
                    grant_id,
                    asset: asset.to_owned(),
                    ends_at,
                    notices: NoticeState::default(),
                    tx,
                },
            );
        }
        (
            Registration {
                id: session_id.to_owned(),
                sessions: self.clone(),
            },
            rx,
        )
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn grant_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .lock()
            .map(|m| m.values().map(|e| e.grant_id).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Applies what the store says about `grant_id` at `now`: close on end or revocation, else warn.
    fn apply(&self, grant_id: i64, state: GrantState, now: UnixTime) {
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        for entry in map.values_mut().filter(|e| e.grant_id == grant_id) {
            let control = match &state {
                GrantState::Revoked { reason } => Some(Control::Close(format!(
                    "access to {} was revoked ({reason})",
                    entry.asset
                ))),
                GrantState::Gone => {
                    Some(Control::Close(format!("access to {} ended", entry.asset)))
                }
                GrantState::Active { ends_at } if *ends_at <= now => Some(Control::Close(format!(
                    "access to {} ended at {}",
                    entry.asset,
                    format_time(*ends_at)
                ))),
                GrantState::Active { ends_at } => {
                    entry.ends_at = *ends_at;
                    entry.notices.due(*ends_at, now).map(|left| {
                        Control::Notice(format!(
                            "your access to {} ends in {} (at {})",
                            entry.asset,
                            minutes(left),
                            format_time(*ends_at)
                        ))
                    })
                }
            };
            if let Some(c) = control {
                let _ = entry.tx.send(c);
            }
        }
    }
}

impl LiveSessions {
    /// Closes the sessions of this node among `list` (`(session id, reason)`).
    fn terminate(&self, list: &[(String, String)]) {
        let Ok(map) = self.inner.lock() else {
            return;
        };
        for (id, reason) in list {
            if let Some(entry) = map.get(id) {
                let _ = entry.tx.send(Control::Close(reason.clone()));
            }
        }
    }
}

fn minutes(secs: i64) -> String {
    let m = (secs + 59) / 60;
    if m == 1 {
        "1 minute".into()
    } else {
        format!("{m} minutes")
    }
}

#[derive(Debug)]
enum GrantState {
    Active { ends_at: UnixTime },
    Revoked { reason: String },
    Gone,
}

/// Re-reads the grants of live sessions every `every` until `stop`; see the module doc.
pub async fn watch(
    store: Store,
    clock: Clock,
    sessions: LiveSessions,
    every: Duration,
    mut stop: stop_watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = clock.now();
        for id in sessions.grant_ids() {
            let state = match store.grant(id).await {
                Ok(Some(g)) if g.revoked_at.is_some() => GrantState::Revoked {
                    reason: g.revoke_reason.unwrap_or_else(|| "no reason given".into()),
                },
                Ok(Some(g)) => GrantState::Active { ends_at: g.ends_at },
                Ok(None) => GrantState::Gone,
                Err(e) => {
                    // Fail safe but not trigger-happy: a store hiccup does not end sessions, an end time does.
                    tracing::warn!(grant = id, error = %e, "cannot re-read grant");
                    continue;
                }
            };
            sessions.apply(id, state, now);
        }
        // Sessions an approver terminated (on any node): only those, the grant stays.
        match store.sessions_to_terminate().await {
            Ok(list) => sessions.terminate(&list),
            Err(e) => tracing::warn!(error = %e, "cannot read terminated sessions"),
        }
        // Grants whose end passed while the store was unreachable still close.
        if let Ok(map) = sessions.inner.lock() {
            for e in map.values().filter(|e| e.ends_at <= now) {
                let _ = e.tx.send(Control::Close(format!(
                    "access to {} ended at {}",
                    e.asset,
                    format_time(e.ends_at)
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_at_ten_and_one_minute_once_each() {
        let mut s = NoticeState::default();
        assert_eq!(s.due(10_000, 10_000 - 3600), None);
        assert_eq!(s.due(10_000, 10_000 - 600), Some(600));
        assert_eq!(s.due(10_000, 10_000 - 599), None);
        assert_eq!(s.due(10_000, 10_000 - 60), Some(60));
        assert_eq!(s.due(10_000, 10_000 - 30), None);
        assert_eq!(s.due(10_000, 10_000), None);
    }

    #[test]
    fn a_late_session_gets_one_notice_then_the_last_minute() {
        let mut s = NoticeState::default();
        assert_eq!(s.due(1000, 700), Some(300));
        assert_eq!(s.due(1000, 800), None);
        assert_eq!(s.due(1000, 950), Some(50));
        let mut late = NoticeState::default();
        assert_eq!(late.due(1000, 970), Some(30));
        assert_eq!(late.due(1000, 980), None);
    }

    #[test]
    fn watcher_decisions_reach_the_sessions_of_that_grant_only() {
        let live = LiveSessions::default();
        let (_a, mut ra) = live.register("a", 1, "mri-01", 1000);
        let (_b, mut rb) = live.register("b", 2, "ct-02", 5000);
        live.apply(1, GrantState::Active { ends_at: 1000 }, 500);
        assert!(matches!(ra.try_recv(), Ok(Control::Notice(m)) if m.contains("ends in 9 minutes")));
        live.apply(
            1,
            GrantState::Revoked {
                reason: "done".into(),
            },
            501,
        );
        assert_eq!(
            ra.try_recv(),
            Ok(Control::Close("access to mri-01 was revoked (done)".into()))
        );
        assert!(rb.try_recv().is_err());
        live.apply(2, GrantState::Active { ends_at: 5000 }, 5000);
        assert!(matches!(rb.try_recv(), Ok(Control::Close(m)) if m.contains("ended")));
        drop(_a);
        assert_eq!(live.len(), 1);
    }
}
