//! This process as a node: it registers itself, says every few seconds that it is alive, and ends what
//! a node that stopped without ending its sessions left open (a crash, `kill -9`, a power cut).
//!
//! Entry point: [`run`], which `serve` starts before it accepts connections and stops after its
//! sessions have ended. A session whose node is gone gets an end time and a reason naming that node;
//! a recording left without a digest gets the SHA-256 of what reached the disk, from whichever node
//! finds the file under its recorded path (the one that wrote it, once it runs again, when recordings
//! are on each node's own disk). Both are audited: `session.end` with `"abandoned": true`, and
//! `recording.recovered`.

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::model::RecordingRow;
use crate::store::{AbandonedSession, StoreError};

/// How often a node says it is alive and looks for what others left.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node not seen for this many seconds is gone: six missed heartbeats.
pub const GONE_AFTER_SECS: i64 = 30;

/// What one sweep found and ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub sessions: usize,
    pub recordings: usize,
}

/// Heartbeats and sweeps until `stop` turns true (`serve` registered the node before accepting anyone).
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = crate::ssh::stopped(&mut stop) => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = app.store.node_seen(&app.node, app.clock.now()).await {
            tracing::warn!(error = %e, "cannot tell the database this node is alive");
            continue;
        }
        match sweep(&app).await {
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

/// Forgets this node (a clean stop: its sessions have ended) and nodes long gone.
pub async fn leave(app: &App) {
    let stale = app.clock.now() - 24 * 3600;
    if let Err(e) = app.store.node_gone(&app.node, stale).await {
        tracing::warn!(error = %e, "cannot remove this node from the database");
    }
}

/// Ends the open sessions of nodes that are gone and finishes the recordings nobody finished (those whose
/// file is here, of sessions another node ran).
pub async fn sweep(app: &App) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    let alive_after = app.clock.now() - GONE_AFTER_SECS;
    for s in app.store.abandoned_sessions(alive_after).await? {
        // This process's own sessions are live here: never ours to end from a sweep.
        if *s.node == *app.node {
            continue;
        }
        if end_abandoned(app, &s).await? {
            swept.sessions += 1;
        }
    }
    for r in app.store.unfinished_recordings(&app.node).await? {
        if finish_recording(app, &r).await? {
            swept.recordings += 1;
        }
    }
    Ok(swept)
}

async fn end_abandoned(app: &App, s: &AbandonedSession) -> Result<bool, StoreError> {
    let now = app.clock.now();
    let node = &s.node;
    let reason = format!(
        "the chaperone process running it (node {node}) stopped without ending it; ended by node {}",
        app.node
    );
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
