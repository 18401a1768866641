//! This process as a node: it registers itself, says every few seconds that it is alive, and ends what
//! a node that stopped without ending its sessions left open (a crash, `kill -9`, a power cut).
//!
//! Entry point: [`run`], which `serve` starts before it accepts connections and stops after its
//! sessions have ended. A session whose node is gone gets an end time and a reason naming that node;
//! a recording left without a digest gets the SHA-256 of what reached the disk, from whichever node
//! finds the file under its recorded path (the one that wrote it, once it runs again, when recordings
//! are on each node's own disk). Both are audited: `session.end` with `"abandoned": true`, and
//! `recording.recovered`.
//!
//! Liveness is told on one clock, the database's ([`Store::database_now`]): heartbeats are written in
//! it and sweeps judge them in it, so a node whose own clock is off is not taken for gone by the others
//! (which would end its sessions under it, again at every sweep). The node's own clock still decides
//! TOTP codes and grant ends, so every heartbeat compares the two ([`Skew`]): past
//! [`CLOCK_SKEW_WARN_SECS`] it warns (and `chaperone_clock_skew_seconds` shows it).
//!
//! [`Store::database_now`]: crate::store::Store::database_now

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::live::LiveSessions;
use crate::model::{RecordingRow, UnixTime};
use crate::store::{AbandonedSession, StoreError};

/// How often a node says it is alive and looks for what others left.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node not seen for this many seconds (on the database's clock) is gone: six missed heartbeats.
pub const GONE_AFTER_SECS: i64 = 30;
/// A node clock this far from the database's is warned about (`serve`, `doctor`): TOTP codes are 30 s
/// steps, and each node ends grants by its own clock.
pub const CLOCK_SKEW_WARN_SECS: i64 = 5;
/// While the skew lasts, the warning is repeated this often.
const SKEW_WARN_EVERY: Duration = Duration::from_secs(600);

/// What one sweep found and ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    pub recordings: usize,
}

/// Heartbeats and sweeps until `stop` turns true (`serve` registered the node before accepting anyone).
pub async fn run(app: App, live: LiveSessions, mut skew: Skew, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = crate::ssh::stopped(&mut stop) => break,
            _ = tick.tick() => {}
        }
        let db_now = match heartbeat(&app, &mut skew).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the database this node is alive");
                continue;
            }
        };
        match sweep(&app, &live, db_now).await {
            Ok(s) if s != Swept::default() => tracing::warn!(
                sessions = s.sessions,
                recordings = s.recordings,
                "ended what a stopped node left open"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for abandoned sessions"),
        }
    }
}

/// Says this node is alive, on the database's clock (returned), after comparing that clock with the
/// node's own. `serve` calls it once before it accepts anyone, then [`run`] every [`HEARTBEAT`].
pub async fn heartbeat(app: &App, skew: &mut Skew) -> Result<UnixTime, StoreError> {
    let asked = app.clock.now();
    let db_now = app.store.node_alive(&app.node).await?;
    // Against the node's clock when asked and when answered: a wait for the pool is not skew.
    let mine = app.clock.now();
    skew.observe(if db_now < asked {
        asked - db_now
    } else if db_now > mine {
        mine - db_now
    } else {
        0
    });
    Ok(db_now)
}

/// What this node last said about its clock against the database's: a warning when they drift apart
/// (again every [`SKEW_WARN_EVERY`] while it lasts), a line when they agree again.
#[derive(Debug, Default)]
pub struct Skew {
    warned: Option<tokio::time::Instant>,
}

impl Skew {
    /// `skew` is the node's clock minus the database's, in seconds.
    fn observe(&mut self, skew: i64) {
        crate::ops::metrics::clock_skew(skew);
        if skew.abs() <= CLOCK_SKEW_WARN_SECS {
            if self.warned.take().is_some() {
                tracing::info!(skew, "this node's clock agrees with the database's again");
            }
            return;
        }
        let now = tokio::time::Instant::now();
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < SKEW_WARN_EVERY)
        {
            return;
        }
        self.warned = Some(now);
        tracing::warn!(
            skew,
            "this node's clock is {skew:+} s from the database's: run NTP on both (TOTP codes and grant \
             ends go by this node's clock; node liveness by the database's)"
        );
    }
}

/// Forgets this node (a clean stop: its sessions have ended) and nodes long gone.
pub async fn leave(app: &App) {
    let gone = async {
        let stale = app.store.database_now().await? - 24 * 3600;
        app.store.node_gone(&app.node, stale).await
    };
    if let Err(e) = gone.await {
        tracing::warn!(error = %e, "cannot remove this node from the database");
    }
}

/// Ends the open sessions of nodes gone at `db_now` (the database's clock), and this node's own whose end
/// it could not write (the database did not answer for longer than the end's retries); finishes the
/// recordings nobody finished (those whose file is here). Never a session live in this process, nor
/// its recording: `live` is read after the database, and a session registers before its row is written,
/// so one that started meanwhile is not taken for left open.
pub async fn sweep(app: &App, live: &LiveSessions, db_now: UnixTime) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    let mut open = app
        .store
        .abandoned_sessions(db_now - GONE_AFTER_SECS)
        .await?;
    for own in app.store.open_sessions_of_node(&app.node).await? {
        if !open.iter().any(|s| s.id == own.id) {
            open.push(own);
        }
    }
    let recordings = app.store.unfinished_recordings().await?;
    let here = live.ids();
    for s in open.iter().filter(|s| !here.contains(&s.id)) {
        if end_abandoned(app, s).await? {
            swept.sessions += 1;
        }
    }
    for r in recordings.iter().filter(|r| !here.contains(&r.session_id)) {
        if finish_recording(app, r).await? {
            swept.recordings += 1;
        }
    }
    Ok(swept)
}

async fn end_abandoned(app: &App, s: &AbandonedSession) -> Result<bool, StoreError> {
    let now = app.clock.now();
    let node = &s.node;
    let reason = if *node == *app.node {
        format!(
            "its end could not be written when it ended (the database did not answer); ended by node {node}"
        )
    } else {
        format!(
            "the chaperone process running it (node {node}) stopped without ending it; ended by node {}",
            app.node
        )
    };
    let mut tx = app.store.begin().await?;
    // Its byte counts were never written (the node that counted them is gone): they stay zero.
    if !tx.end_session(&s.id, &reason, "lost", 0, 0, now).await? {
        return Ok(false);
    }
    tx.audit(
        AuditEvent::new(
            format!("node:{}", app.node),
            Action::SessionEnd,
            format!("session:{}", s.id),
            json!({"grant": s.grant_id, "vendor": s.vendor, "kind": s.kind, "reason": reason,
                   "abandoned": true, "node": s.node}),
        ),
        now,
    )
    .await?;
    tx.commit("session.end").await?;
    tracing::warn!(session = %s.id, vendor = %s.vendor, node = %node, "ended a session its node left open");
    Ok(true)
}

/// Hashes a recording whose writer stopped before finishing it, if its file is on this node; `false` when
/// it is not here or another node finished it first.
async fn finish_recording(app: &App, r: &RecordingRow) -> Result<bool, StoreError> {
    // The path comes from the database: only a file in this node's recordings directory is read (the
    // rule is `evidence::open_recording`'s, the same as the CLI's).
    let dir = app.config.recording.dir.clone();
    let path = r.path.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        let opened = match crate::evidence::open_recording(&dir, &path) {
            Ok(opened) => opened,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => {
                tracing::debug!(path = %path, error = %e, "an unfinished recording that is not in this node's recordings directory");
                return Ok(None);
            }
        };
        // Its writer still holds it (the node that runs the session is alive after all, only
        // stalled): not this sweep's to digest; the writer closes it, or its death frees it.
        if let Err(std::fs::TryLockError::WouldBlock) = opened.file.try_lock_shared() {
            tracing::debug!(path = %path, "an unfinished recording whose writer still holds it");
            return Ok(None);
        }
        let size = opened.file.metadata()?.len();
        let digest = chaperone_recorder::Sha256Reader::new(opened.file).finish_hex()?;
        Ok::<_, std::io::Error>(Some((digest, size)))
    })
    .await;
    let (digest, size) = match hashed {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => return Ok(false),
        Ok(Err(e)) => {
            tracing::warn!(path = %r.path, error = %e, "cannot read an unfinished recording");
            return Ok(false);
        }
        Err(e) => {
            tracing::warn!(path = %r.path, error = %e, "hashing an unfinished recording failed");
            return Ok(false);
        }
    };
    let now = app.clock.now();
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut tx = app.store.begin().await?;
    if !tx.close_recording(r.id, &digest, size, now).await? {
        return Ok(false);
    }
    tx.audit(
        AuditEvent::new(
            format!("node:{}", app.node),
            Action::RecordingRecovered,
            format!("session:{}", r.session_id),
            json!({"recording": r.id, "format": r.format, "path": r.path, "sha256": digest, "size": size,
                   "note": "its writer stopped before finishing it: the digest covers what had reached the disk when it was found"}),
        ),
        now,
    )
    .await?;
    tx.commit("recording.recovered").await?;
    tracing::warn!(session = %r.session_id, path = %r.path, "finished a recording its writer left open");
    Ok(true)
}
