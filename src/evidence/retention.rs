//! Retention and legal hold: how long a recording is kept, and the daily pass that deletes the files
//! past it.
//!
//! Entry points: [`keeping`] (what `session list|show` say: kept until when, or held), [`sweep`] (one
//! pass at an explicit `now`: what `serve` runs daily, and what tests run at a chosen time) and
//! [`run`] (the daily job in `serve`).
//!
//! A recording is kept for `[recording] retain` (or its asset's zone's `retain`) after its session
//! ended; a session on legal hold (`session hold`) keeps all of them until released. Deleting removes
//! the file only: the `recordings` row keeps its path and digest, marked `deleted_at`, and every audit
//! event stays, with a `recording.deleted` event of its own.
//!
//! Several nodes: every node runs the pass, because a node can only delete files in its own recordings
//! directory (recordings may be on each node's own disk, as the node sweep assumes). A lease would let
//! one node at a time pass over files that are on another's disk; instead each deletion is a
//! conditional update ([`crate::store::Tx::mark_recording_deleted`]) that only one node wins, made by
//! the node that found the file, audited in the same transaction, and the file is removed after the
//! commit. A node that stops between the commit and the removal removes the file on its next pass (it
//! looks again at recordings marked deleted in the last [`LEFTOVER_DAYS`] days). A file that no node
//! finds is never marked: `session show` keeps saying it is past its retention.
//!
//! What decides a deletion is the audit chain, not the rows ([`Chained`]): whoever can write the
//! database could clear a session's hold or move its end back, and so make a node delete held evidence
//! as if by policy. A file is deleted only if the chain (checked where it sits, `super::holds_in_chain`)
//! says the session ended long enough ago (by the retention of the zone its `session.start` recorded,
//! as well as the row's), its last hold was released, and the file is the recording
//! the chain names; a leftover file only if the chain records its deletion. Where the rows and the chain
//! disagree nothing is deleted, and the log says so. "No hold" is the absence of an event, which no
//! event read can prove: each pass walks the chain from its sessions' events to the head afresh (its
//! own checkpoints, empty when it starts), so a hold deleted or rewritten since this process last
//! walked there breaks the chain, whatever it verified before.

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::config::RecordingConfig;
use crate::model::{Hold, SessionRow, UnixTime};
use crate::store::{ChainCheckpoints, RetentionCandidate, Store, StoreError};

/// How often `serve` runs a pass.
pub const EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long after starting `serve` runs its first pass (a node restarted daily still runs them).
pub const FIRST_AFTER: Duration = Duration::from_secs(60);
/// How far back a pass looks for files of recordings already marked deleted.
pub const LEFTOVER_DAYS: i64 = 30;

/// How long a session's recordings are kept, as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keeping {
    /// The session is live: its retention starts when it ends.
    Live,
    /// No retention applies: kept forever.
    Forever,
    /// Kept until then (past it, the next pass deletes them).
    Until(UnixTime),
    /// On legal hold: kept until released, whatever the retention (`until`: what it would be).
    Held { hold: Hold, until: Option<UnixTime> },
}

/// Why a legal hold could not be placed or released.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The reason is missing, too long, or not one line of text.
    #[error("{0}")]
    Reason(String),
    #[error("session {0} is already on legal hold (since {at}, by {by}: {reason})", at = crate::clock::format_time(.1.at), by = .1.by, reason = .1.reason)]
    AlreadyHeld(String, Hold),
    #[error("session {0} is not on legal hold")]
    NotHeld(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest reason for a hold or its release.
pub const MAX_HOLD_REASON: usize = 1000;

/// Places (`on`) or releases the legal hold on session `id`, by `actor` (an audit actor: `os:NAME`,
/// `staff:NAME`), audited (`session.hold` / `session.release`) with the reason, in one transaction. The
/// one way a hold changes: the CLI and the web page both come here.
pub async fn set_hold(
    store: &Store,
    now: UnixTime,
    (actor, id): (&str, &str),
    reason: &str,
    on: bool,
) -> Result<(), HoldError> {
    let reason = reason.trim();
    crate::model::check_text("reason", reason, MAX_HOLD_REASON).map_err(HoldError::Reason)?;
    let s = store.session(id).await?;
    let mut tx = store.begin().await?;
    let changed = if on {
        tx.hold_session(&s.id, actor, reason, now).await?
    } else {
        tx.release_session(&s.id).await?
    };
    if !changed {
        return Err(match s.hold {
            Some(h) => HoldError::AlreadyHeld(s.id, h),
            None => HoldError::NotHeld(s.id),
        });
    }
    let action = if on {
        Action::SessionHold
    } else {
        Action::SessionRelease
    };
    tx.audit(
        AuditEvent::new(
            actor,
            action,
            format!("session:{}", s.id),
            json!({"reason": reason}),
        ),
        now,
    )
    .await?;
    tx.commit(action.as_str()).await?;
    Ok(())
}

/// How long session `s`'s recordings are kept under `config`. Pure: the same session and config give
/// the same answer.
pub fn keeping(config: &RecordingConfig, s: &SessionRow) -> Keeping {
    let until = s
        .ended_at
        .and_then(|ended| config.retain_in(&s.zone).kept_until(ended));
    match (&s.hold, s.ended_at) {
        (Some(hold), _) => Keeping::Held {
            hold: hold.clone(),
            until,
        },
        (None, None) => Keeping::Live,
        (None, Some(_)) => until.map_or(Keeping::Forever, Keeping::Until),
    }
}

/// Whether a recording of a session in `zone` that ended at `ended_at` is past its retention at `now`.
/// Pure; the hold is the store's to check (the candidates exclude held sessions).
pub fn due(config: &RecordingConfig, zone: &str, ended_at: UnixTime, now: UnixTime) -> bool {
    config
        .retain_in(zone)
        .kept_until(ended_at)
        .is_some_and(|until| until <= now)
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Recordings whose file this node deleted (each audited `recording.deleted`).
    pub deleted: usize,
    /// Recordings past their retention whose file is not in this node's recordings directory.
    pub not_here: usize,
    /// Files of recordings marked deleted earlier that were still here, now removed.
    pub leftovers: usize,
    /// Recordings past their retention whose file no longer hashes to the digest the audit log vouches
    /// for: kept (the change is evidence too), logged as an error at every pass.
    pub altered: usize,
}

/// Where a recording's file is, as far as this node can tell.
enum Found {
    Here(std::path::PathBuf),
    NotHere,
}

async fn locate(config: &RecordingConfig, path: &str) -> Found {
    let dir = config.dir.clone();
    let path = path.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        match super::open_recording(&dir, &path) {
            Ok(opened) => Found::Here(opened.path),
            Err(e) => {
                if !e.is_not_found() {
                    tracing::debug!(path = %path, error = %e, "a recording past its retention that is not in this node's recordings directory");
                }
                Found::NotHere
            }
        }
    })
    .await;
    found.unwrap_or(Found::NotHere)
}

async fn hash(path: std::path::PathBuf) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || {
        chaperone_recorder::sha256_file(&path).map_err(std::io::Error::other)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

async fn remove(path: std::path::PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::remove_file(path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// One retention pass at `now`, as `actor` (`node:ID`): deletes the files of recordings past their
/// retention that are in this node's recordings directory, marks their rows and audits each deletion.
/// Held sessions are never touched. Files that cannot be removed are logged and retried by later passes.
pub async fn sweep(
    store: &Store,
    config: &RecordingConfig,
    actor: &str,
    now: UnixTime,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    // This pass's own checkpoints: what decides a deletion is checked now (see [`chained`]).
    let fresh = ChainCheckpoints::default();
    if let Some(shortest) = config.shortest_retention() {
        let shortest = i64::try_from(shortest.as_secs()).unwrap_or(i64::MAX);
        for c in store
            .retention_candidates(now.saturating_sub(shortest))
            .await?
        {
            if !due(config, &c.zone, c.ended_at, now) {
                continue;
            }
            let vouched = match chained(store, &fresh, &c.recording).await? {
                // Due by the row's zone and by the zone the chain recorded at the start: moving an
                // asset's row to a zone that keeps less deletes nothing sooner.
                Ok(ch)
                    if !ch.held
                        && ch.ended_at.is_some_and(|at| {
                            due(config, &c.zone, at, now)
                                && ch.zone.as_deref().is_none_or(|z| due(config, z, at, now))
                        }) =>
                {
                    ch.sha256
                }
                Ok(ch) => {
                    tracing::warn!(session = %c.recording.session_id, held = ch.held, ended_at = ?ch.ended_at,
                        "a recording past its retention by its rows is not by the audit log (held, or ended later); not deleted");
                    continue;
                }
                Err(why) => {
                    tracing::warn!(session = %c.recording.session_id, why = %why,
                        "a recording past its retention is not as the audit log says; not deleted");
                    continue;
                }
            };
            match locate(config, &c.recording.path).await {
                Found::NotHere => swept.not_here += 1,
                Found::Here(file) => {
                    // Hashed first: deleting a file that was changed would turn ALTERED into a
                    // policy's "deleted", and its `recording.deleted` event would vouch for a digest
                    // the file no longer had.
                    match hash(file.clone()).await {
                        Ok(actual) if actual == vouched => {}
                        Ok(actual) => {
                            tracing::error!(session = %c.recording.session_id, path = %c.recording.path,
                                %actual, %vouched,
                                "a recording past its retention does not hash to the digest the audit log vouches for (ALTERED): kept as evidence, not deleted");
                            swept.altered += 1;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(path = %c.recording.path, error = %e, "cannot read a recording past its retention; the next pass tries again");
                            continue;
                        }
                    }
                    if delete(store, config, actor, &c, &vouched, now).await? {
                        if let Err(e) = remove(file).await {
                            tracing::warn!(path = %c.recording.path, error = %e, "cannot delete a recording past its retention; the next pass tries again");
                        }
                        swept.deleted += 1;
                    }
                }
            }
        }
    }
    for r in store
        .recordings_deleted_since(now.saturating_sub(LEFTOVER_DAYS * 86_400))
        .await?
    {
        // Only a file the chain names, whose deletion the chain records.
        match chained(store, &fresh, &r).await? {
            Ok(ch) if ch.deleted => {}
            Ok(_) => {
                tracing::warn!(path = %r.path, "a recording marked deleted without an audited deletion of that file; its file is kept");
                continue;
            }
            Err(why) => {
                tracing::warn!(path = %r.path, why = %why, "a recording marked deleted is not as the audit log says; its file is kept");
                continue;
            }
        }
        if let Found::Here(file) = locate(config, &r.path).await {
            match remove(file).await {
                Ok(()) => swept.leftovers += 1,
                Err(e) => {
                    tracing::warn!(path = %r.path, error = %e, "cannot delete the file of a deleted recording")
                }
            }
        }
    }
    Ok(swept)
}

/// What the audit chain says about a recording's session, for retention.
#[derive(Debug)]
struct Chained {
    /// When its `session.end` was audited.
    ended_at: Option<UnixTime>,
    /// Whether its last `session.hold`/`session.release` was a hold.
    held: bool,
    /// Whether a `recording.deleted` of this recording is audited.
    deleted: bool,
    /// The asset's zone its `session.start` recorded (`None` for sessions started before the event
    /// carried it: the row's zone alone decides those).
    zone: Option<String>,
    /// The digest the audit log vouches for.
    sha256: String,
}

/// Reads what the chain says about `r`'s session, each event checked where it sits against `fresh`,
/// the pass's own checkpoints (a hold not found must not be there: see the module's notes); `Err`
/// (why) when the chain does not hold there, or when `r`'s path is not the file the chain names for it.
async fn chained(
    store: &Store,
    fresh: &ChainCheckpoints,
    r: &crate::model::RecordingRow,
) -> Result<Result<Chained, String>, StoreError> {
    let mut session = store.session(&r.session_id).await?;
    let evidence = super::evidence(store, &mut session).await?;
    let voucher = session
        .recordings
        .iter()
        .zip(&evidence)
        .find(|(row, _)| row.id == r.id)
        .and_then(|(_, ev)| ev.voucher());
    let Some(voucher) = voucher else {
        return Ok(Err("no audit event vouches for the recording".into()));
    };
    // The file the chain names, by its name (`SESSION.EXT`, one per recording): `restore --dir` moves
    // the recordings and rewrites the rows' directory, never a file's name.
    let name = |p: &str| std::path::Path::new(p).file_name().map(ToOwned::to_owned);
    if voucher
        .path
        .as_deref()
        .and_then(name)
        .is_none_or(|n| Some(n) != name(&r.path))
    {
        return Ok(Err(format!(
            "its row names {:?}, the audit log {:?}",
            r.path, voucher.path
        )));
    }
    let head = match super::chain_head(store).await? {
        Ok(head) => head,
        Err(b) => return Ok(Err(b.to_string())),
    };
    let events = store
        .audit_events_about(
            &format!("session:{}", r.session_id),
            &[
                Action::SessionStart.as_str(),
                "session.end",
                Action::SessionHold.as_str(),
                Action::SessionRelease.as_str(),
            ],
            1000,
        )
        .await?;
    let mut chained = Chained {
        ended_at: None,
        held: false,
        deleted: voucher.deleted.is_some(),
        zone: None,
        sha256: voucher.sha256.clone(),
    };
    for event in events.iter().filter(|e| e.seq <= head.0) {
        if let Err(b) = super::holds_in_chain(store, fresh, event, &head).await? {
            return Ok(Err(b.to_string()));
        }
        match event.action.as_str() {
            "session.end" => {
                chained.ended_at.get_or_insert(event.at);
            }
            a if a == Action::SessionStart.as_str() && chained.zone.is_none() => {
                chained.zone = serde_json::from_str::<serde_json::Value>(&event.detail)
                    .ok()
                    .and_then(|d| d["zone"].as_str().map(str::to_owned));
            }
            a if a == Action::SessionHold.as_str() => chained.held = true,
            a if a == Action::SessionRelease.as_str() => chained.held = false,
            _ => {}
        }
    }
    Ok(Ok(chained))
}

/// Marks one recording deleted and audits it; `false` when its session is now held or another node
/// marked it first.
async fn delete(
    store: &Store,
    config: &RecordingConfig,
    actor: &str,
    c: &RetentionCandidate,
    vouched: &str,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let r = &c.recording;
    let retain = config.retain_in(&c.zone);
    let mut tx = store.begin().await?;
    if !tx.mark_recording_deleted(r.id, &r.session_id, now).await? {
        return Ok(false);
    }
    tx.audit(
        AuditEvent::new(
            actor,
            Action::RecordingDeleted,
            format!("session:{}", r.session_id),
            json!({"recording": r.id, "format": r.format, "path": r.path, "sha256": vouched,
                   "size": r.size, "zone": c.zone, "retain": retain.to_string(),
                   "ended_at": c.ended_at, "kept_until": retain.kept_until(c.ended_at)}),
        ),
        now,
    )
    .await?;
    tx.commit("recording.deleted").await?;
    tracing::info!(session = %r.session_id, path = %r.path, "deleted a recording past its retention");
    Ok(true)
}

/// The daily job of `serve`: a pass [`FIRST_AFTER`] the start, then every [`EVERY`], until `stop`.
/// Does nothing while every retention is `forever`.
pub(crate) async fn run(app: crate::app::App, mut stop: watch::Receiver<bool>) {
    if app.config.recording.shortest_retention().is_none() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + FIRST_AFTER, EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let actor = format!("node:{}", app.node);
    loop {
        tokio::select! {
            () = crate::ssh::stopped(&mut stop) => break,
            _ = tick.tick() => {}
        }
        match sweep(&app.store, &app.config.recording, &actor, app.clock.now()).await {
            Ok(s) if s != Swept::default() => tracing::info!(
                deleted = s.deleted,
                not_here = s.not_here,
                leftovers = s.leftovers,
                altered = s.altered,
                "retention pass"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one tries again"),
        }
    }
}
