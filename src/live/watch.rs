//! The authority watcher: once a second, everything live on this node is held against the store again.
//!
//! Entry point: [`watch`]. Each tick it
//! - closes sessions whose grant ended and warns those near the end (from memory: [`LiveSessions::tick`],
//!   so time alone still ends a grant while the database is unreachable);
//! - closes connections through which nothing passed for `[ssh] idle_timeout` and warns them before
//!   ([`LiveSessions::idle`], from memory too; audited `vendor.connections.ended`);
//! - when the audit chain's head moved (every change to grants, vendors and keys is audited in the same
//!   transaction, so an unmoved head means nothing changed, on any node) or at least every
//!   [`FULL_CHECK_EVERY`]: re-reads each live session's grant (revoked → closed), the sessions approvers
//!   terminated, whether each live session's asset still has its service (removed → closed), and each
//!   signed-in login's standing ([`policy::standing`]: disabled, locked or its key
//!   removed → its sessions are closed and its connections cut, audited `vendor.connections.ended`).
//!
//! A store error skips that tick's re-reads (a database hiccup does not end sessions); time still does.
//! The time check runs in a loop of its own that never waits for the database, and each re-read is
//! bounded by [`RECHECK_TIMEOUT`], so a database that hangs (a partition without a reset, a lock held
//! by another node's migration) delays only what only the database can say (revocations, disables).
//! But not for long: once the database has not answered a complete re-read for `[database] lease`
//! (20 s), the time loop closes every session of the node, cause `lost` (a revocation made on another
//! node would go unseen), and goes on closing any that start until the database answers again. The
//! lease is shorter than the 30 s after which other nodes take this one for gone and end its sessions'
//! rows; a session whose row another node ended all the same (this node's heartbeat stalled; liveness is told on the database's
//! clock, so a clock behind no longer does it) is closed at the next re-read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch as stop_watch;

use super::registry::{GrantState, LiveSessions};
use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::policy::{self, Principal};

/// The longest the watcher trusts an unmoved audit head before re-reading everything anyway.
pub const FULL_CHECK_EVERY: Duration = Duration::from_secs(15);
/// How long an evicted login's sessions have to tell the vendor and write their end before the
/// connection is cut.
const EVICTION_GRACE: Duration = Duration::from_millis(500);

/// How long one re-read of the store may take before the watcher gives up on it and tries again at a
/// later tick (a database that hangs rather than fails: a partition, a lock held by a migration).
pub const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Re-checks what is live every `every` until `stop`; see the module doc. Time and the store are two
/// loops of their own: whatever the database does (fail, or hang), grants still end on time.
pub async fn watch(
    app: App,
    live: LiveSessions,
    every: Duration,
    mut stop: stop_watch::Receiver<bool>,
) {
    // When the store loop's last complete re-read started (milliseconds since `epoch`, monotonic).
    let epoch = Instant::now();
    let heard = Arc::new(AtomicU64::new(0));
    let clock = {
        let (app, live, mut stop) = (app.clone(), live.clone(), stop.clone());
        let heard = Arc::clone(&heard);
        async move {
            let mut tick = interval(every);
            let mut lapsed = false;
            while next_tick(&mut tick, &mut stop).await {
                // From memory only: never waits for the database.
                live.tick(app.clock.now());
                let silent = epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(heard.load(Ordering::Relaxed)));
                lapsed = out_of_touch(&live, silent, app.config.database.lease, lapsed);
                // Idle time is counted on a monotonic clock: a wall clock set forward idles nobody.
                if let Some(timeout) = app.config.ssh.idle_timeout {
                    let now = i64::try_from(epoch.elapsed().as_secs()).unwrap_or(i64::MAX);
                    for (who, peer, why) in live.idle(now, timeout, EVICTION_GRACE) {
                        tracing::info!(vendor = %who.vendor, %peer, "closing an idle connection");
                        // Audited in a task of its own: this loop never waits for the database.
                        tokio::spawn(audit_eviction(app.clone(), who, why, (1, Some(peer))));
                    }
                }
            }
        }
    };
    let store = async move {
        let mut tick = interval(every);
        let mut seen_head: Option<i64> = None;
        let mut last_full = Instant::now();
        while next_tick(&mut tick, &mut stop).await {
            // What a complete re-read tells is as of its start (a revocation committed after the head
            // was read waits for the next one), so the lease counts from there, not from its end (up
            // to two `RECHECK_TIMEOUT`s later).
            let asked = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            let head = tokio::time::timeout(RECHECK_TIMEOUT, app.store.audit_head()).await;
            match head {
                Ok(Ok((head, _))) => {
                    let due = seen_head != Some(head) || last_full.elapsed() >= FULL_CHECK_EVERY;
                    // Heard out: nothing changed since the last complete re-read, or this one is.
                    let complete = !due || recheck_in_time(&app, &live).await;
                    if due && complete {
                        seen_head = Some(head);
                        last_full = Instant::now();
                    }
                    if complete {
                        heard.store(asked, Ordering::Relaxed);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the audit head; re-checking by time only")
                }
                Err(_) => tracing::warn!(
                    "the audit head did not come within {} s; re-checking by time only",
                    RECHECK_TIMEOUT.as_secs()
                ),
            }
        }
    };
    tokio::join!(clock, store);
}

/// The lease: once the database has been silent for `lease`, every session of the node is closed (and
/// any that starts, at each tick, until it answers). Logs the lapse and its end once; returns whether
/// the node is out of touch now.
fn out_of_touch(live: &LiveSessions, silent: Duration, lease: Duration, was: bool) -> bool {
    let lapsed = silent >= lease;
    if lapsed {
        let closed = live.lose(
            None,
            "this bastion node has lost its database and can no longer check your access; \
             the session is closed (connect again)",
        );
        if !was || closed > 0 {
            tracing::error!(
                silent_secs = silent.as_secs(),
                sessions = closed,
                "the database has not answered a complete re-read within [database] lease: \
                 closing this node's sessions (a revocation made elsewhere would go unseen)"
            );
        }
    } else if was {
        tracing::warn!("the database answers again: sessions may start on this node");
    }
    lapsed
}

/// A tick every `every`; one missed waits for the next (no burst of catch-up ticks).
fn interval(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; false once `stop` says so.
async fn next_tick(
    tick: &mut tokio::time::Interval,
    stop: &mut stop_watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tick.tick() => {}
        _ = stop.changed() => return false,
    }
    !*stop.borrow()
}

/// [`recheck`] within [`RECHECK_TIMEOUT`]; a re-read that does not finish in time is incomplete (the
/// next tick tries again).
async fn recheck_in_time(app: &App, live: &LiveSessions) -> bool {
    match tokio::time::timeout(RECHECK_TIMEOUT, recheck(app, live)).await {
        Ok(complete) => complete,
        Err(_) => {
            tracing::warn!(
                "re-reading grants and logins took over {} s; trying again",
                RECHECK_TIMEOUT.as_secs()
            );
            false
        }
    }
}

/// Re-reads grants, terminations and logins; returns whether every read succeeded.
async fn recheck(app: &App, live: &LiveSessions) -> bool {
    let now = app.clock.now();
    let mut complete = true;
    let ids = live.grant_ids();
    match app.store.grants_by_id(&ids).await {
        Ok(rows) => {
            let mut rows: std::collections::HashMap<i64, _> =
                rows.into_iter().map(|g| (g.id, g)).collect();
            for id in ids {
                let state = match rows.remove(&id) {
                    Some(g) if g.revoked_at.is_some() => GrantState::Revoked {
                        reason: g.revoke_reason.unwrap_or_else(|| "no reason given".into()),
                    },
                    Some(g) => GrantState::Active { ends_at: g.ends_at },
                    None => GrantState::Gone,
                };
                live.apply(id, &state, now);
            }
        }
        Err(e) => {
            // Fail safe but not trigger-happy: a store hiccup does not end sessions, an end time does.
            tracing::warn!(error = %e, "cannot re-read grants");
            complete = false;
        }
    }
    // No grant reaches a service its asset no longer has: sessions on a removed service close, pending
    // ones too (the removal is audited, so the head moved; `policy::still_holds` saw it if it came
    // before the session was registered).
    let services = live.services();
    if !services.is_empty() {
        match app.store.services_present(&services).await {
            Ok(present) => live.close_removed_services(&services, &present),
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the services of live sessions");
                complete = false;
            }
        }
    }
    match app.store.sessions_to_terminate().await {
        Ok(list) => live.terminate(&list),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read terminated sessions");
            complete = false;
        }
    }
    // A row ended while its session runs here: another node took this one for gone. What runs is
    // brought in line with what the database says (and the approvers' live list shows).
    match app.store.ended_among(&live.started_ids()).await {
        Ok(ended) if !ended.is_empty() => {
            let n = live.lose(
                Some(&ended),
                "this session was ended by another bastion node, which took this one for stopped; \
                 it is closed (connect again)",
            );
            tracing::error!(
                sessions = n,
                "another node ended sessions live here (this node's heartbeat stalled, or its clock \
                 is behind the others'): closing them"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read live sessions' ends");
            complete = false;
        }
    }
    match policy::standing_all(&app.store, now, live.logins()).await {
        Ok(judged) => {
            for (who, judged) in judged {
                let Err(denial) = judged else { continue };
                // Each connection is cut (and audited) once, by the first check that finds it bad.
                let cut = live.evict(&who, &denial.vendor_message(""), EVICTION_GRACE);
                if cut > 0 {
                    tracing::warn!(vendor = %who.vendor, reason = %denial.audit_reason(), connections = cut, "ending a vendor's connections");
                    // A task of its own: the connections are cut already, and a re-read given up
                    // on (RECHECK_TIMEOUT) must not drop the audit of it half written.
                    tokio::spawn(audit_eviction(
                        app.clone(),
                        who.clone(),
                        denial.audit_reason(),
                        (cut, None),
                    ));
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read the signed-in vendors");
            complete = false;
        }
    }
    complete
}

/// `vendor.connections.ended`: `connections` of `who`'s were cut, for `reason`; `peer`: the client's
/// address, when one connection was cut on its own (idle).
async fn audit_eviction(
    app: App,
    who: Principal,
    reason: String,
    (connections, peer): (usize, Option<String>),
) {
    let now = app.clock.now();
    let mut detail = json!({"key": who.key_fingerprint, "reason": reason, "connections": connections, "node": &*app.node});
    if let Some(peer) = peer {
        detail["peer"] = json!(peer);
    }
    let result = async {
        let mut tx = app.store.begin().await?;
        tx.audit(
            AuditEvent::new(
                "system",
                Action::VendorConnectionsEnded,
                format!("vendor:{}", who.vendor),
                detail,
            ),
            now,
        )
        .await?;
        tx.commit("vendor.connections.ended").await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot audit the end of a vendor's connections");
    }
}
