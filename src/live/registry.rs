//! What is live on this node: every session from the moment it is registered (before its device is
//! dialled) and every signed-in vendor connection, so the watcher can warn and close them.
//!
//! Entry point: [`LiveSessions`]. A [`Registration`] or [`ConnectionRegistration`] removes its entry when
//! dropped, so nothing stays registered past the task that owns it. Pure bookkeeping: no I/O, no awaits
//! under the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::idle::{self, Activity, Idle, Quiet};
use crate::clock::format_time;
use crate::model::UnixTime;
use crate::policy::Principal;

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

/// Why the bastion closes a session (the `sessions.end_cause` column, with the session's other ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The grant's end time passed (or the grant is gone).
    Expired,
    /// The grant was revoked.
    Revoked,
    /// An approver terminated this session.
    Terminated,
    /// The vendor was disabled or locked, or lost the key they signed in with.
    Disabled,
    /// This chaperone process is stopping.
    Shutdown,
    /// Nothing passed on the session's connection for `[ssh] idle_timeout`.
    Idle,
    /// This node lost the database for `[database] lease`, or another node took it for gone and ended
    /// the session's row: what runs here can no longer be held to what the database says.
    Lost,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Expired => "expired",
            Cause::Revoked => "revoked",
            Cause::Terminated => "terminated",
            Cause::Disabled => "disabled",
            Cause::Shutdown => "shutdown",
            Cause::Idle => "idle",
            Cause::Lost => "lost",
        }
    }
}

/// The bastion closing a session: why, and the line the vendor is shown (and the recording marks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub cause: Cause,
    pub text: String,
}

/// What the watcher tells a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Show this line to the vendor and mark it in the recording.
    Notice(String),
    /// Close now (shown to the vendor, recorded, audited).
    Close(Close),
}

/// What the store says about a grant, as the watcher applies it.
#[derive(Debug)]
pub enum GrantState {
    Active { ends_at: UnixTime },
    Revoked { reason: String },
    Gone,
}

#[derive(Debug)]
struct Entry {
    grant_id: i64,
    /// The listener's number of the vendor connection it runs in (a ProxyJump's: the outer one's).
    connection: u64,
    /// Whose session: the vendor and the key they signed in with.
    login: Principal,
    asset: String,
    /// The asset's service it uses (name, port and kind): a session runs only while the asset still
    /// lists it so.
    service: crate::model::Service,
    ends_at: UnixTime,
    /// Notices go only to started sessions (a pending one has nobody to tell yet).
    started: bool,
    /// The session is writing its own end ([`Registration::mark_ending`]): a row found ended from now
    /// on is its own doing, not another node's.
    ending: bool,
    notices: NoticeState,
    tx: mpsc::UnboundedSender<Control>,
    /// The live view's tap, once a terminal session started.
    tap: Option<super::tap::Tap>,
    /// Its byte counts, once started (the approvers' live list shows them as they grow).
    meter: Option<super::Meter>,
}

impl Entry {
    fn close(&self, cause: Cause, text: String) {
        let _ = self.tx.send(Control::Close(Close { cause, text }));
    }
}

#[derive(Debug)]
struct Connection {
    login: Principal,
    /// The client's address, as its sessions' `client_addr` has it.
    peer: String,
    /// When it signed in.
    since: UnixTime,
    /// Cancelling it ends the connection whatever the client does (see `ssh::killswitch`).
    kill: CancellationToken,
    /// What passes through it (`idle`), and how long it has been quiet as the watcher saw it.
    activity: Arc<Activity>,
    quiet: Quiet,
    /// Tells the client why, just before a cut (set once the SSH layer can: `set_farewell`).
    farewell: Option<Farewell>,
    /// Set once the watcher decided to cut it (so a cut is counted, and audited, once).
    evicted: Option<Eviction>,
}

/// Tells a connection's client why it is being cut: for SSH, a disconnect message with the reason (OpenSSH
/// prints it), which reaches a vendor who has no session to be told in (`ssh -N -L`). Given the text;
/// what it returns is awaited briefly before the cut.
pub struct Farewell(Box<dyn FnOnce(String) -> BoxFuture + Send>);

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Farewell {
    pub fn new(f: impl FnOnce(String) -> BoxFuture + Send + 'static) -> Farewell {
        Farewell(Box::new(f))
    }
}

impl std::fmt::Debug for Farewell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Farewell")
    }
}

/// How long a farewell may take before the connection is cut anyway.
const FAREWELL_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// A connection to cut: its kill switch, its farewell and the reason.
type Cut = (CancellationToken, Option<Farewell>, String);

/// Why the watcher cuts a connection.
#[derive(Debug, Clone)]
struct Eviction {
    /// `Disabled` ends everything of its login; `Idle` this connection only.
    cause: Cause,
    /// As the vendor is told.
    why: String,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: Mutex<HashMap<String, Entry>>,
    connections: Mutex<HashMap<u64, Connection>>,
    views: super::view::Views,
}

/// An asset's name and one of its services, as a session was decided on it.
pub type ServiceOf = (String, crate::model::Service);

/// The sessions and vendor connections alive on this node.
#[derive(Debug, Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Inner>,
}

/// Removes a session from the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    id: String,
    live: LiveSessions,
}

impl Registration {
    /// The session is writing its end: from now on it is not among [`LiveSessions::started_ids`], so
    /// the watcher does not take its own ended row for another node's doing (and close it as lost,
    /// with an error in the log) in the moment between the row's end and this registration's drop.
    pub fn mark_ending(&self) {
        if let Ok(mut map) = self.live.inner.sessions.lock()
            && let Some(e) = map.get_mut(&self.id)
        {
            e.ending = true;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live
            .inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Removes a vendor connection from the registry when dropped.
#[derive(Debug)]
pub struct ConnectionRegistration {
    id: u64,
    live: LiveSessions,
}

impl Drop for ConnectionRegistration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.live.inner.connections.lock() {
            map.remove(&self.id);
        }
    }
}

impl LiveSessions {
    /// Registers session `session_id` of `login`, in the vendor connection numbered `connection`, under a
    /// grant, on `asset`'s `service`; controls arrive on the returned receiver.
    pub fn register(
        &self,
        session_id: &str,
        (grant_id, connection): (i64, u64),
        login: &Principal,
        (asset, service): (&str, &crate::model::Service),
        ends_at: UnixTime,
    ) -> (Registration, mpsc::UnboundedReceiver<Control>) {
        let (tx, rx) = mpsc::unbounded_channel();
        // A login the watcher already judged (disabled, locked, key removed), or a connection it is
        // cutting as idle, starts nothing in the moment before the cut: the session is closed as it
        // registers.
        // The connections stay locked until the session is in: a cut decided meanwhile (`idle`, `evict`
        // lock the connections, then the sessions) either is seen here or finds the session there.
        let connections = self.inner.connections.lock();
        let evicted = connections.as_ref().ok().and_then(|m| {
            let own = m.get(&connection).and_then(|c| c.evicted.clone());
            own.or_else(|| {
                m.values()
                    .filter(|c| c.login == *login)
                    .filter_map(|c| c.evicted.clone())
                    .find(|e| e.cause == Cause::Disabled)
            })
        });
        if let Some(e) = evicted {
            let _ = tx.send(Control::Close(Close {
                cause: e.cause,
                text: e.why,
            }));
        }
        // Always in the map, even past a poisoned lock: `node::sweep` spares only what it finds there.
        {
            let mut map = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.insert(
                session_id.to_owned(),
                Entry {
                    grant_id,
                    connection,
                    login: login.clone(),
                    asset: asset.to_owned(),
                    service: service.clone(),
                    ends_at,
                    started: false,
                    ending: false,
                    notices: NoticeState::default(),
                    tx,
                    tap: None,
                    meter: None,
                },
            );
        }
        (
            Registration {
                id: session_id.to_owned(),
                live: self.clone(),
            },
            rx,
        )
    }

    /// The session started: from now on it gets the end-of-grant notices.
    pub fn mark_started(&self, registration: &Registration) {
        if let Ok(mut map) = self.inner.sessions.lock()
            && let Some(e) = map.get_mut(&registration.id)
        {
            e.started = true;
        }
    }

    /// The started session's tap for the live view (terminal sessions).
    pub fn set_tap(&self, registration: &Registration, tap: super::tap::Tap) {
        if let Ok(mut map) = self.inner.sessions.lock()
            && let Some(e) = map.get_mut(&registration.id)
        {
            e.tap = Some(tap);
        }
    }

    /// The started session's byte counts, for the approvers' live list.
    pub fn set_meter(&self, registration: &Registration, meter: super::Meter) {
        if let Ok(mut map) = self.inner.sessions.lock()
            && let Some(e) = map.get_mut(&registration.id)
        {
            e.meter = Some(meter);
        }
    }

    /// Bytes up and down so far of session `id`, if it runs on this node and has started.
    pub fn bytes(&self, id: &str) -> Option<(u64, u64)> {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|m| m.get(id).and_then(|e| e.meter.as_ref().map(|m| m.totals())))
    }

    /// This node's signed-in vendor logins: vendor, client address, since when; the oldest first.
    pub fn connections(&self) -> Vec<(String, String, UnixTime)> {
        let mut list: Vec<(String, String, UnixTime)> = self
            .inner
            .connections
            .lock()
            .map(|m| {
                m.values()
                    .filter(|c| c.evicted.is_none())
                    .map(|c| (c.login.vendor.clone(), c.peer.clone(), c.since))
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.1.cmp(&b.1)));
        list
    }

    /// The live views open on this node.
    pub fn views(&self) -> &super::view::Views {
        &self.inner.views
    }

    /// The tap of session `id`, if it is live on this node and has one.
    pub fn tap(&self, id: &str) -> Option<super::tap::Tap> {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|m| m.get(id).and_then(|e| e.tap.clone()))
    }

    /// Registers a signed-in connection (`id` is the listener's connection number) from `peer`, signed
    /// in at `since`; `activity` is what its sessions and channels touch (see `idle`).
    pub fn connect(
        &self,
        id: u64,
        login: &Principal,
        (peer, since): (String, UnixTime),
        kill: CancellationToken,
        activity: Arc<Activity>,
    ) -> ConnectionRegistration {
        if let Ok(mut map) = self.inner.connections.lock() {
            map.insert(
                id,
                Connection {
                    login: login.clone(),
                    peer,
                    since,
                    kill,
                    activity,
                    quiet: Quiet::default(),
                    farewell: None,
                    evicted: None,
                },
            );
        }
        ConnectionRegistration {
            id,
            live: self.clone(),
        }
    }

    /// How connection `id`'s client is told why, should it be cut.
    pub fn set_farewell(&self, id: u64, farewell: Farewell) {
        if let Ok(mut map) = self.inner.connections.lock()
            && let Some(c) = map.get_mut(&id)
        {
            c.farewell = Some(farewell);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.sessions.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The grants that live sessions run under, each once.
    pub fn grant_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .sessions
            .lock()
            .map(|m| m.values().map(|e| e.grant_id).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every session registered on this node, started or not. A session registers before its row is
    /// written and leaves once its end is written (or given up), so a row not among these, read before
    /// this was taken, is of no session alive here (`node::sweep`).
    pub fn ids(&self) -> std::collections::HashSet<String> {
        // A poisoned lock still holds the map: an empty answer would have the sweep end them all.
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The started sessions of this node (those with a row in the store), but for those writing their
    /// own end.
    pub fn started_ids(&self) -> Vec<String> {
        self.inner
            .sessions
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| e.started && !e.ending)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The signed-in logins (vendor and key) of this node, each once.
    pub fn logins(&self) -> Vec<Principal> {
        let mut logins: Vec<Principal> = self
            .inner
            .connections
            .lock()
            .map(|m| m.values().map(|c| c.login.clone()).collect())
            .unwrap_or_default();
        logins.sort();
        logins.dedup();
        logins
    }

    /// Applies what the store says about `grant_id` at `now`: close on end or revocation, else warn.
    pub fn apply(&self, grant_id: i64, state: &GrantState, now: UnixTime) {
        let Ok(mut map) = self.inner.sessions.lock() else {
            return;
        };
        for entry in map.values_mut().filter(|e| e.grant_id == grant_id) {
            match state {
                GrantState::Revoked { reason } => entry.close(
                    Cause::Revoked,
                    format!("access to {} was revoked ({reason})", entry.asset),
                ),
                GrantState::Gone => {
                    entry.close(Cause::Expired, format!("access to {} ended", entry.asset));
                }
                GrantState::Active { ends_at } => entry.ends_at = *ends_at,
            }
        }
        drop(map);
        self.tick(now);
    }

    /// Time alone: closes sessions whose grant's end has passed and warns those near it. Needs no store,
    /// so a grant still ends on time while the database is unreachable.
    pub fn tick(&self, now: UnixTime) {
        let Ok(mut map) = self.inner.sessions.lock() else {
            return;
        };
        for entry in map.values_mut() {
            if entry.ends_at <= now {
                entry.close(
                    Cause::Expired,
                    format!(
                        "access to {} ended at {}",
                        entry.asset,
                        format_time(entry.ends_at)
                    ),
                );
            } else if entry.started
                && let Some(left) = entry.notices.due(entry.ends_at, now)
            {
                let _ = entry.tx.send(Control::Notice(format!(
                    "your access to {} ends in {} (at {})",
                    entry.asset,
                    minutes(left),
                    format_time(entry.ends_at)
                )));
            }
        }
    }

    /// The `(asset, service)` pairs this node's sessions use, started or not, each once.
    pub fn services(&self) -> Vec<ServiceOf> {
        let Ok(map) = self.inner.sessions.lock() else {
            return Vec::new();
        };
        let pairs: std::collections::HashSet<ServiceOf> = map
            .values()
            .map(|e| (e.asset.clone(), e.service.clone()))
            .collect();
        pairs.into_iter().collect()
    }

    /// Closes the sessions using an `(asset, service)` pair among `asked` that is not among `present`
    /// (name, port and kind: a service removed and added again on another port is not the one the
    /// session was decided on): no grant reaches a service the asset no longer lists.
    pub fn close_removed_services(
        &self,
        asked: &[ServiceOf],
        present: &std::collections::HashSet<ServiceOf>,
    ) {
        let Ok(map) = self.inner.sessions.lock() else {
            return;
        };
        for entry in map.values() {
            let pair = (entry.asset.clone(), entry.service.clone());
            if asked.contains(&pair) && !present.contains(&pair) {
                entry.close(
                    Cause::Terminated,
                    format!(
                        "the service {} was removed from {}",
                        entry.service.name, entry.asset
                    ),
                );
            }
        }
    }

    /// Closes the sessions of this node among `list` (`(session id, reason)`): an approver ended them.
    pub fn terminate(&self, list: &[(String, String)]) {
        let Ok(map) = self.inner.sessions.lock() else {
            return;
        };
        for (id, reason) in list {
            if let Some(entry) = map.get(id) {
                entry.close(Cause::Terminated, reason.clone());
            }
        }
    }

    /// Ends everything `login` has on this node: its sessions are told why and closed, and its connections
    /// are cut `grace` later whatever the client does. Returns how many connections this call cut (not
    /// counting those an earlier call is cutting already).
    pub fn evict(&self, login: &Principal, why: &str, grace: std::time::Duration) -> usize {
        // The connections are marked first: a session registering from then on is closed as it
        // registers, one registered before is closed below (`register`).
        let kills: Vec<Cut> = self
            .inner
            .connections
            .lock()
            .map(|mut m| {
                m.values_mut()
                    .filter(|c| c.login == *login && c.evicted.is_none())
                    .map(|c| {
                        c.evicted = Some(Eviction {
                            cause: Cause::Disabled,
                            why: why.to_owned(),
                        });
                        (c.kill.clone(), c.farewell.take(), why.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(map) = self.inner.sessions.lock() {
            for entry in map.values().filter(|e| e.login == *login) {
                entry.close(Cause::Disabled, why.to_owned());
            }
        }
        let n = kills.len();
        cut_after(kills, grace);
        n
    }

    /// Time alone, for `[ssh] idle_timeout`: at each call (`now`: seconds on a monotonic clock), a
    /// signed-in connection through which nothing passed since the last call is quieter; one quiet for
    /// `timeout` has its sessions told why and closed, and is cut `grace` later; a minute before (half
    /// the timeout if shorter) its started sessions are warned. Returns the connections this call cut:
    /// whose, from where, and why (for the audit).
    pub fn idle(
        &self,
        now: i64,
        timeout: std::time::Duration,
        grace: std::time::Duration,
    ) -> Vec<(Principal, String, String)> {
        let mut notices: Vec<(u64, String)> = Vec::new();
        let mut closes: Vec<(u64, String)> = Vec::new();
        let mut cut = Vec::new();
        let mut kills = Vec::new();
        if let Ok(mut m) = self.inner.connections.lock() {
            for (id, c) in m.iter_mut().filter(|(_, c)| c.evicted.is_none()) {
                match c.quiet.check(c.activity.take(), now, timeout) {
                    None => {}
                    Some(Idle::Warn { quiet, left }) => notices.push((
                        *id,
                        format!(
                            "nothing has passed on this connection for {}: it closes in {} unless something is typed or sent",
                            idle::spoken(quiet),
                            idle::spoken(left)
                        ),
                    )),
                    Some(Idle::Close { .. }) => {
                        let why = format!(
                            "the connection was closed after {} without activity",
                            idle::spoken(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX))
                        );
                        c.evicted = Some(Eviction {
                            cause: Cause::Idle,
                            why: why.clone(),
                        });
                        kills.push((c.kill.clone(), c.farewell.take(), why.clone()));
                        closes.push((*id, why.clone()));
                        cut.push((c.login.clone(), c.peer.clone(), why));
                    }
                }
            }
        }
        if let Ok(map) = self.inner.sessions.lock() {
            for entry in map.values() {
                if let Some((_, why)) = closes.iter().find(|(id, _)| *id == entry.connection) {
                    entry.close(Cause::Idle, why.clone());
                } else if let Some((_, text)) =
                    notices.iter().find(|(id, _)| *id == entry.connection)
                    && entry.started
                {
                    let _ = entry.tx.send(Control::Notice(text.clone()));
                }
            }
        }
        cut_after(kills, grace);
        cut
    }

    /// Closes the sessions among `ids`, or every session of this node when `ids` is `None`, as lost
    /// ([`Cause::Lost`]), telling the vendor `text`; returns how many it closed.
    pub fn lose(&self, ids: Option<&[String]>, text: &str) -> usize {
        let Ok(map) = self.inner.sessions.lock() else {
            return 0;
        };
        let mut n = 0;
        for (id, entry) in map.iter() {
            if ids.is_none_or(|ids| ids.contains(id)) {
                entry.close(Cause::Lost, text.to_owned());
                n += 1;
            }
        }
        n
    }

    /// Closes every session on this node (the process is stopping).
    pub fn close_all(&self, text: &str) {
        if let Ok(map) = self.inner.sessions.lock() {
            for entry in map.values() {
                entry.close(Cause::Shutdown, text.to_owned());
            }
        }
    }
}

/// Cuts `kills` `grace` from now: their sessions write their end and tell the vendor first; then each
/// client is told why (its farewell, at most `FAREWELL_WAIT`), and the connection goes.
fn cut_after(mut kills: Vec<Cut>, grace: std::time::Duration) {
    if kills.is_empty() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let deadline = tokio::time::Instant::now() + FAREWELL_WAIT;
        let mut said = false;
        for (_, farewell, why) in &mut kills {
            if let Some(Farewell(say)) = farewell.take() {
                let _ = tokio::time::timeout_at(deadline, say(why.clone())).await;
                said = true;
            }
        }
        if said {
            // Handed to the connection's task, which writes it out: give it the time to.
            tokio::time::sleep_until(deadline).await;
        }
        for (kill, _, _) in kills {
            kill.cancel();
        }
    });
}

fn minutes(secs: i64) -> String {
    let m = (secs + 59) / 60;
    if m == 1 {
        "1 minute".into()
    } else {
        format!("{m} minutes")
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn login(vendor_id: i64, key: &str) -> Principal {
        Principal {
            vendor_id,
            vendor: format!("v{vendor_id}"),
            key_fingerprint: key.into(),
        }
    }

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
        let who = login(7, "SHA256:one");
        let (a, mut ra) = live.register("a", (1, 1), &who, ("mri-01", &svc("ssh")), 1000);
        let (_b, mut rb) = live.register("b", (2, 2), &who, ("ct-02", &svc("ssh")), 5000);
        live.apply(1, &GrantState::Active { ends_at: 1000 }, 500);
        assert!(
            ra.try_recv().is_err(),
            "no notice before the session started"
        );
        live.mark_started(&a);
        live.apply(1, &GrantState::Active { ends_at: 1000 }, 500);
        assert!(matches!(ra.try_recv(), Ok(Control::Notice(m)) if m.contains("ends in 9 minutes")));
        live.apply(
            1,
            &GrantState::Revoked {
                reason: "done".into(),
            },
            501,
        );
        assert_eq!(
            ra.try_recv(),
            Ok(Control::Close(Close {
                cause: Cause::Revoked,
                text: "access to mri-01 was revoked (done)".into()
            }))
        );
        assert!(rb.try_recv().is_err());
        live.tick(5000);
        assert!(
            matches!(rb.try_recv(), Ok(Control::Close(c)) if c.cause == Cause::Expired && c.text.contains("ended"))
        );
        drop(a);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn a_session_writing_its_own_end_is_not_taken_for_one_another_node_ended() {
        let live = LiveSessions::default();
        let who = login(7, "SHA256:one");
        let (a, _ra) = live.register("a", (1, 1), &who, ("mri-01", &svc("ssh")), 1000);
        let (b, _rb) = live.register("b", (1, 2), &who, ("mri-01", &svc("ssh")), 1000);
        live.mark_started(&a);
        live.mark_started(&b);
        let mut ids = live.started_ids();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        a.mark_ending();
        assert_eq!(live.started_ids(), ["b"]);
    }

    #[tokio::test]
    async fn evicting_a_login_closes_its_sessions_and_cuts_its_connections_only() {
        let live = LiveSessions::default();
        let (_a, mut ra) = live.register(
            "a",
            (1, 1),
            &login(7, "SHA256:one"),
            ("mri-01", &svc("ssh")),
            9000,
        );
        let (_b, mut rb) = live.register(
            "b",
            (2, 2),
            &login(7, "SHA256:two"),
            ("mri-01", &svc("ssh")),
            9000,
        );
        let (_c, mut rc) = live.register(
            "c",
            (3, 3),
            &login(8, "SHA256:one"),
            ("mri-01", &svc("ssh")),
            9000,
        );
        let (k1, k2, k3) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let _c1 = live.connect(
            1,
            &login(7, "SHA256:one"),
            (format!("127.0.0.1:{}", 5000 + 1), 100),
            k1.clone(),
            Arc::default(),
        );
        let _c2 = live.connect(
            2,
            &login(7, "SHA256:two"),
            (format!("127.0.0.1:{}", 5000 + 2), 100),
            k2.clone(),
            Arc::default(),
        );
        let _c3 = live.connect(
            3,
            &login(8, "SHA256:one"),
            (format!("127.0.0.1:{}", 5000 + 3), 100),
            k3.clone(),
            Arc::default(),
        );
        assert_eq!(live.logins().len(), 3);
        let n = live.evict(
            &login(7, "SHA256:one"),
            "your account was disabled",
            std::time::Duration::ZERO,
        );
        assert_eq!(n, 1);
        assert!(matches!(ra.try_recv(), Ok(Control::Close(c)) if c.cause == Cause::Disabled));
        assert!(rb.try_recv().is_err() && rc.try_recv().is_err());
        tokio::time::timeout(std::time::Duration::from_secs(2), k1.cancelled())
            .await
            .unwrap();
        assert!(!k2.is_cancelled() && !k3.is_cancelled());
        assert_eq!(
            live.evict(&login(7, "SHA256:one"), "again", std::time::Duration::ZERO),
            0,
            "a connection is cut once"
        );
        // A session of the evicted login registered in the moment before its connection goes is
        // closed as it registers; another login's is not.
        let (_d, mut rd) = live.register(
            "d",
            (1, 4),
            &login(7, "SHA256:one"),
            ("mri-01", &svc("ssh")),
            9000,
        );
        assert!(matches!(rd.try_recv(), Ok(Control::Close(c))
            if c.cause == Cause::Disabled && c.text == "your account was disabled"));
        let (_e, mut re) = live.register(
            "e",
            (2, 5),
            &login(7, "SHA256:two"),
            ("mri-01", &svc("ssh")),
            9000,
        );
        assert!(re.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_idle_connection_is_warned_then_cut_and_no_other() {
        let live = LiveSessions::default();
        let who = login(7, "SHA256:one");
        let (quiet, busy) = (Arc::new(Activity::default()), Arc::new(Activity::default()));
        let (k1, k2) = (CancellationToken::new(), CancellationToken::new());
        let _c1 = live.connect(1, &who, ("127.0.0.1:5001".into(), 100), k1.clone(), quiet);
        let _c2 = live.connect(
            2,
            &who,
            ("127.0.0.1:5002".into(), 100),
            k2.clone(),
            busy.clone(),
        );
        let (a, mut ra) = live.register("a", (1, 1), &who, ("mri-01", &svc("ssh")), 9000);
        let (b, mut rb) = live.register("b", (1, 2), &who, ("mri-01", &svc("ssh")), 9000);
        live.mark_started(&a);
        live.mark_started(&b);
        let timeout = std::time::Duration::from_secs(600);
        let grace = std::time::Duration::ZERO;
        assert!(live.idle(100, timeout, grace).is_empty(), "the first look");
        busy.touch();
        assert!(live.idle(100 + 539, timeout, grace).is_empty());
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err());
        busy.touch();
        assert!(live.idle(100 + 540, timeout, grace).is_empty());
        assert!(
            matches!(ra.try_recv(), Ok(Control::Notice(t)) if t.contains("for 9 minutes") && t.contains("closes in 1 minute"))
        );
        assert!(
            rb.try_recv().is_err(),
            "the active connection is not warned"
        );
        busy.touch();
        let cut = live.idle(100 + 600, timeout, grace);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].0, who);
        assert!(matches!(ra.try_recv(), Ok(Control::Close(c))
            if c.cause == Cause::Idle && c.text == "the connection was closed after 10 minutes without activity"));
        assert!(rb.try_recv().is_err());
        tokio::time::timeout(std::time::Duration::from_secs(2), k1.cancelled())
            .await
            .unwrap();
        assert!(!k2.is_cancelled());
        assert!(live.idle(100 + 601, timeout, grace).is_empty(), "cut once");
        // A session opened on the idle connection before its cut is closed as it registers; one of the
        // same login on its other connection is not.
        let (_c, mut rc) = live.register("c", (1, 1), &who, ("mri-01", &svc("ssh")), 9000);
        assert!(matches!(rc.try_recv(), Ok(Control::Close(c)) if c.cause == Cause::Idle));
        let (_d, mut rd) = live.register("d", (1, 2), &who, ("mri-01", &svc("ssh")), 9000);
        assert!(rd.try_recv().is_err());
    }

    fn svc(name: &str) -> crate::model::Service {
        let port = if name == "ssh" { 22 } else { 104 };
        let kind = if name == "ssh" { "ssh" } else { "tcp" };
        format!("{name}:{port}/{kind}").parse().unwrap()
    }

    /// Sessions on a service the inventory no longer lists are closed, started or pending; others stay.
    #[test]
    fn sessions_on_a_removed_service_are_closed() {
        let live = LiveSessions::default();
        let who = login(7, "SHA256:one");
        let (_a, mut ra) = live.register("a", (1, 1), &who, ("mri-01", &svc("dicom")), 9000);
        let (_b, mut rb) = live.register("b", (1, 1), &who, ("mri-01", &svc("ssh")), 9000);
        let (_c, mut rc) = live.register("c", (2, 1), &who, ("ct-02", &svc("dicom")), 9000);
        let asked = live.services();
        assert_eq!(asked.len(), 3);
        // ct-02's dicom was removed and added again on another port: not the service decided on.
        let moved: crate::model::Service = "dicom:11112/tcp".parse().unwrap();
        let present: std::collections::HashSet<ServiceOf> = [
            ("mri-01".to_owned(), svc("ssh")),
            ("ct-02".to_owned(), moved),
        ]
        .into();
        live.close_removed_services(&asked, &present);
        match ra.try_recv() {
            Ok(Control::Close(c)) => {
                assert_eq!(c.cause, Cause::Terminated);
                assert_eq!(c.text, "the service dicom was removed from mri-01");
            }
            other => panic!("{other:?}"),
        }
        assert!(rb.try_recv().is_err());
        assert!(matches!(rc.try_recv(), Ok(Control::Close(_))));
        // A pair registered after the re-read was asked is not judged by it.
        let (_d, mut rd) = live.register("d", (3, 1), &who, ("us-03", &svc("ssh")), 9000);
        live.close_removed_services(&asked, &present);
        assert!(rd.try_recv().is_err());
    }
}
