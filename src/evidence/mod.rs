//! What proves a recording: the audit event that vouches for its digest, checked where it sits in the
//! hash chain, and the one rule for where a recording's file may be read from.
//!
//! Entry points: [`evidence`] (for each recording of a session, the digest the audit log vouches for, or
//! why there is none), [`prove`] (a recording's file checked against that digest before any of it is
//! used) and [`open_recording`] (a path from the database, opened only inside the recordings
//! directory). `chaperone session` (cli/session.rs), the evidence bundle ([`bundle`]), retention
//! ([`retention`]) and the node sweep (node.rs) use them. [`signer`] holds the key that signs bundles;
//! [`audit_view`] records who looked at a recording.
//!
//! The `recordings` row (its `sha256` and `path` columns) is bookkeeping, not evidence: whoever can write
//! the database can rewrite the file and the column together. The digest is proved by the audit event
//! that carries it: `session.end` (`recording_sha256`, written when the recorder closed the file) or
//! `recording.recovered` (`recording`, `sha256`: a recording a node's sweep digested after its writer
//! died). The first such event for a recording is the one that counts; a later one vouching for another
//! digest is a conflict, never a replacement, so appending an event cannot re-vouch a recording.
//!
//! Each event that says something about the recording (its session's `session.start`, `session.end`,
//! `recording.recovered`) is checked where it sits: its hash recomputes from its content and the hash
//! of the event before it, and every event after it links on, up to the chain head or to an event whose
//! hash this process verified before in an unbroken chain ([`crate::store::ChainCheckpoints`]).
//! Rewriting the event's JSON is therefore caught here, and so is rewriting it with the events after it
//! linked again, unless every later event and the head were rewritten too (and, in a process that
//! verified them before, not even then); that only `audit verify` against a copy kept outside (`audit
//! export`, the webhook, the ATNA repository) can tell. ARCHITECTURE.md argues the choice.

pub mod bundle;
pub mod proven;
pub mod retention;
pub mod signer;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::audit::{AuditEvent, AuditRow, ChainBreak, Verifier};
use crate::model::{RecordingRow, SessionRow, UnixTime};
use crate::store::{ChainCheckpoints, Store, StoreError};

/// The actions that say something about a session's recording.
const START: &str = "session.start";
const END: &str = "session.end";
const RECOVERED: &str = "recording.recovered";
/// Someone looked at a recording ([`audit_view`]).
pub const VIEW: crate::audit::Action = crate::audit::Action::RecordingView;
/// Retention deleted the recording's file (`retention::sweep`, in the transaction that marks its row).
const DELETED: &str = "recording.deleted";
/// The actions that say someone looked at a session or took a copy: anyone who may look adds one, so
/// lists of a session's events read the newest of these apart from the rest (the session page, the
/// evidence bundle, `session show`), and a flood of them never pushes out a later hold or deletion.
pub const LOOKS: [&str; 5] = {
    use crate::audit::Action as A;
    [
        A::RecordingView.as_str(),
        A::RecordingSearch.as_str(),
        A::SessionWatch.as_str(),
        A::EvidenceExport.as_str(),
        A::EvidenceSigned.as_str(),
    ]
};

/// How a tunnel and a jump start (their start events, for [`row_disagrees`]).
const TUNNEL_OPEN: &str = "tunnel.open";
const JUMP_OPEN: &str = "jump.open";

/// The most events about one session read (a session has a handful: start, end, a recovery, a
/// termination).
const MAX_EVENTS: i64 = 1000;

/// The audit event that vouches for a recording's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voucher {
    /// The event's sequence number.
    pub seq: i64,
    /// `session.end` or `recording.recovered`.
    pub action: String,
    /// The SHA-256 (hex) it vouches for.
    pub sha256: String,
    /// Where the audit log says the file was written (`session.start`'s or `recording.recovered`'s
    /// path), when it says.
    pub path: Option<String>,
    /// The `recording.deleted` event, when retention deleted the file: the audit log's word, not the
    /// row's `deleted_at`, says a file is gone by policy rather than missing.
    pub deleted: Option<Deletion>,
}

impl Voucher {
    /// Whether a node's sweep digested the recording after its writer died (`recording.recovered`):
    /// the digest vouches for the file as the sweep found it, not as the recorder wrote it.
    pub fn recovered(&self) -> bool {
        self.action == RECOVERED
    }
}

/// The audit event that records retention deleting a recording's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    pub seq: i64,
    pub at: UnixTime,
}

/// What the audit log says about one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// An event vouches for a digest, and every event about the recording holds in the chain.
    Vouched(Voucher),
    /// No event vouches for a digest (yet): nothing proves the file.
    Unvouched(Unvouched),
    /// The audit log cannot be believed about this recording.
    Broken(Broken),
}

/// Why no event vouches for a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unvouched {
    /// The session is live: its recording is being written and has no digest yet.
    Live,
    /// The session ended but nothing digested the recording: its writer failed (no digest ever speaks
    /// for such a recording), or the node running it stopped and no node has found the file to digest
    /// it yet (`recording.recovered`).
    NotDigested,
}

impl fmt::Display for Unvouched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unvouched::Live => {
                "live: the session is still running and its recording has no digest yet"
            }
            Unvouched::NotDigested => {
                "not digested: no audit event vouches for a digest of it (its writer failed, or \
                 stopped before finishing it and no node has digested the file yet); nothing proves \
                 it intact"
            }
        })
    }
}

/// Why the audit log's word on a recording does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// An event about the recording does not hold where it sits in the chain (altered, or a neighbour
    /// deleted).
    #[error("{0}")]
    Chain(ChainBreak),
    /// Two events vouch for different digests of the recording.
    #[error(
        "audit events {first} and {second} vouch for different digests of this recording (altered)"
    )]
    Conflict { first: i64, second: i64 },
    /// A node's `recording.recovered` digested another file than the one the session started writing
    /// (its row's path was changed before the sweep found it): their file names differ.
    #[error(
        "audit event {seq} vouches for a digest of {recovered}, but the session started writing {started} (altered)"
    )]
    OtherFile {
        seq: i64,
        started: String,
        recovered: String,
    },
    /// The audit log names a recording of the session that the `recordings` table lacks: its row was
    /// deleted or renumbered, which would otherwise make the recording vanish from every page and
    /// check while each event still held.
    #[error(
        "audit event {seq} names a recording of this session ({named}) that the recordings table lacks (its row was deleted or renumbered: altered)"
    )]
    RowMissing { seq: i64, named: String },
    /// The session's row says another vendor, asset, kind, command, service, grant or client address
    /// than its start event recorded: the row was rewritten (a bundle's summary and every page read it).
    #[error(
        "audit event {seq} records {field} {chain:?}, but the session's row says {row:?} (altered)"
    )]
    RowDisagrees {
        seq: i64,
        field: &'static str,
        chain: String,
        row: String,
    },
}

impl Evidence {
    /// The vouching event, if there is one that holds.
    pub fn voucher(&self) -> Option<&Voucher> {
        match self {
            Evidence::Vouched(v) => Some(v),
            _ => None,
        }
    }
}

/// What the audit log says about each of `session`'s recordings, in the order of `session.recordings`.
///
/// Which recordings a session has is the audit log's word too, not the table's: a recording its events
/// name (`session.start`'s path, or an id) that `session.recordings` lacks is added to it here, as a
/// row made from those events, and every recording of the session is then [`Broken::RowMissing`]
/// (every reader calls them ALTERED and reads no file). Call this before using `session.recordings`.
pub async fn evidence(
    store: &Store,
    session: &mut SessionRow,
) -> Result<Vec<Evidence>, StoreError> {
    // The head before the events: an event appended meanwhile is then found as a successor, never
    // mistaken for a deletion.
    let head = chain_head(store).await?;
    let events = store
        .audit_events_about(
            &format!("session:{}", session.id),
            &[START, END, RECOVERED, DELETED, TUNNEL_OPEN, JUMP_OPEN],
            MAX_EVENTS,
        )
        .await?;
    // An event appended after the head was read is not judged against it (it would read as beyond
    // the head): it counts at the next look.
    let events: Vec<AuditRow> = match &head {
        Ok(head) => events.into_iter().filter(|e| e.seq <= head.0).collect(),
        Err(_) => events,
    };
    // A row gone makes every other row of the session as doubtful (one renumbered reads as another
    // recording the chain says nothing of): all are broken, as when an event does not hold.
    if let Some((row, broken)) = row_missing(session, &events) {
        if !session.recordings.iter().any(|r| made(r) && r.id == row.id) {
            session.recordings.push(row);
        }
        return Ok(vec![Evidence::Broken(broken); session.recordings.len()]);
    }
    if let Some(broken) = row_disagrees(session, &events) {
        // A tunnel's or jump's row is its whole record: with no recording to carry the verdict, a row
        // made for it does, so every page and `session verify` say ALTERED instead of nothing.
        if session.recordings.is_empty() {
            let row = made_row(session, 0, String::new());
            session.recordings.push(row);
        }
        return Ok(vec![Evidence::Broken(broken); session.recordings.len()]);
    }
    // Tunnels have no recording: nothing to vouch for.
    if session.recordings.is_empty() {
        return Ok(Vec::new());
    }
    let head = match head {
        Ok(head) => head,
        Err(b) => {
            let broken = Evidence::Broken(Broken::Chain(b));
            return Ok(vec![broken; session.recordings.len()]);
        }
    };
    for event in &events {
        if let Err(b) = holds_in_chain(store, store.chain_checkpoints(), event, &head).await? {
            let broken = Evidence::Broken(Broken::Chain(b));
            return Ok(vec![broken; session.recordings.len()]);
        }
    }
    let first_id = session.recordings.iter().map(|r| r.id).min();
    Ok(session
        .recordings
        .iter()
        .map(|r| judge(session, r, Some(r.id) == first_id, &events))
        .collect())
}

/// The first field of `session`'s row that disagrees with what its start event (`session.start`,
/// `tunnel.open` or `jump.open`, the first among `events`) recorded: who (the event's actor), the asset,
/// kind, command or destination, service, grant and client address, each compared only where the event
/// carries it. These never change once written (only the end, byte counts and hold do, and an abandoned
/// session's end is written twice), so any difference is a rewritten row.
pub(crate) fn row_disagrees(session: &SessionRow, events: &[AuditRow]) -> Option<Broken> {
    const STARTS: [&str; 3] = [START, TUNNEL_OPEN, JUMP_OPEN];
    let start = events
        .iter()
        .find(|e| STARTS.contains(&e.action.as_str()))?;
    let detail: Value = serde_json::from_str(&start.detail).ok()?;
    let differs = |field: &'static str, chain: String, row: String| {
        (chain != row).then_some(Broken::RowDisagrees {
            seq: start.seq,
            field,
            chain,
            row,
        })
    };
    let text = |key: &str| match detail.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(vendor) = start.actor.strip_prefix("vendor:")
        && let Some(b) = differs("vendor", vendor.to_owned(), session.vendor.clone())
    {
        return Some(b);
    }
    // (the start event's key, how a message names it, the row's value)
    [
        ("asset", "asset", session.asset.clone()),
        ("kind", "kind", session.kind.clone()),
        ("detail", "command or destination", session.detail.clone()),
        ("service", "service", session.service.clone()),
        ("peer", "client address", session.client_addr.clone()),
        ("grant", "grant", session.grant_id.to_string()),
    ]
    .into_iter()
    .find_map(|(key, field, row)| differs(field, text(key)?, row))
}

/// A recording `events` (about `session`) name that `session.recordings` lacks, as a row made from the
/// events (id 0 when only `session.start`'s path names it), with why it is broken. A session records
/// at most one recording of its own, so the first one missing is enough to call the session's
/// evidence altered.
fn row_missing(session: &SessionRow, events: &[AuditRow]) -> Option<(RecordingRow, Broken)> {
    let mut started: Option<(i64, String)> = None;
    let mut named: Option<(i64, i64, Option<String>)> = None;
    for event in events {
        let Ok(detail) = serde_json::from_str::<Value>(&event.detail) else {
            continue;
        };
        match (event.action.as_str(), detail.get("recording")) {
            (START, Some(Value::String(path))) if started.is_none() => {
                started = Some((event.seq, path.clone()));
            }
            (END | RECOVERED | DELETED, Some(Value::Number(id))) => {
                let Some(id) = id.as_i64() else { continue };
                if named.is_none() && !session.recordings.iter().any(|r| r.id == id && !made(r)) {
                    let path = detail
                        .get("path")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    named = Some((event.seq, id, path));
                }
            }
            _ => {}
        }
    }
    let (seq, id, path) = match (named, &started) {
        (Some((seq, id, path)), _) => (seq, id, path.or(started.map(|(_, p)| p))),
        (None, Some((seq, path))) if session.recordings.iter().all(made) => {
            (*seq, 0, Some(path.clone()))
        }
        _ => return None,
    };
    let path = path.unwrap_or_default();
    let shown = if id == 0 {
        path.clone()
    } else {
        format!("recording {id}, {path}")
    };
    Some((
        made_row(session, id, path),
        Broken::RowMissing { seq, named: shown },
    ))
}

/// A row [`evidence`] makes for a recording the table lacks (or for a tunnel's record): no format, so
/// nothing plays or reads it, and a second look does not take it for a real one.
fn made_row(session: &SessionRow, id: i64, path: String) -> RecordingRow {
    RecordingRow {
        id,
        session_id: session.id.clone(),
        format: String::new(),
        path,
        sha256: None,
        size: None,
        created_at: session.started_at,
        closed_at: None,
        deleted_at: None,
    }
}

/// Whether `r` is a row [`evidence`] made, not one the store read.
fn made(r: &RecordingRow) -> bool {
    r.format.is_empty()
}

/// The evidence for recording `r` among the (chain-checked) `events` about its session. `first` says
/// whether `r` is the session's first recording, the one a `session.end` or `session.start` that names
/// no recording id speaks of.
fn judge(session: &SessionRow, r: &RecordingRow, first: bool, events: &[AuditRow]) -> Evidence {
    let mut started_at_path = None;
    let mut deleted = None;
    let mut vouchers: Vec<Voucher> = Vec::new();
    // The session's own end said its recording could not be finished (`recording_sha256: null`): no
    // later digest of the file speaks for it (a sweep's `recording.recovered` is for a writer that
    // crashed, not one that failed: what is on disk then is not what was recorded).
    let mut failed_at_end = false;
    for event in events {
        let Ok(detail) = serde_json::from_str::<Value>(&event.detail) else {
            continue;
        };
        let names_r = match detail.get("recording") {
            Some(Value::Number(id)) => id.as_i64() == Some(r.id),
            _ => first,
        };
        let text = |key: &str| detail.get(key).and_then(Value::as_str).map(str::to_owned);
        match event.action.as_str() {
            START if first => started_at_path = text("recording"),
            END if names_r => {
                // Written by the session itself (it names its recording by id): `null` is its writer's
                // failure. A sweep's end of an abandoned session names no digest at all.
                failed_at_end |= matches!(detail.get("recording"), Some(Value::Number(_)))
                    && matches!(detail.get("recording_sha256"), Some(Value::Null));
                if let Some(sha256) = text("recording_sha256") {
                    vouchers.push(Voucher {
                        seq: event.seq,
                        action: END.into(),
                        sha256,
                        path: None,
                        deleted: None,
                    });
                }
            }
            RECOVERED if matches!(detail.get("recording"), Some(Value::Number(_))) && names_r => {
                if let Some(sha256) = text("sha256") {
                    vouchers.push(Voucher {
                        seq: event.seq,
                        action: RECOVERED.into(),
                        sha256,
                        path: text("path"),
                        deleted: None,
                    });
                }
            }
            // Only an event that names the recording by id: retention always does.
            DELETED
                if deleted.is_none()
                    && matches!(detail.get("recording"), Some(Value::Number(_)))
                    && names_r =>
            {
                deleted = Some(Deletion {
                    seq: event.seq,
                    at: event.at,
                });
            }
            _ => {}
        }
    }
    if failed_at_end {
        vouchers.retain(|v| v.action != RECOVERED);
    }
    let mut vouchers = vouchers.into_iter();
    let Some(mut first_voucher) = vouchers.next() else {
        return Evidence::Unvouched(if session.ended_at.is_none() {
            Unvouched::Live
        } else {
            Unvouched::NotDigested
        });
    };
    if let Some(other) = vouchers.find(|v| v.sha256 != first_voucher.sha256) {
        return Evidence::Broken(Broken::Conflict {
            first: first_voucher.seq,
            second: other.seq,
        });
    }
    // A recovery speaks for the file the session started writing, or for nothing. Compared by file
    // name: a restore moves the recordings directory (`relocate_recordings`), never a file's name,
    // which is the session's own.
    let file_name = |p: &str| Path::new(p).file_name().map(std::ffi::OsStr::to_owned);
    if let (Some(started), Some(recovered)) = (&started_at_path, &first_voucher.path)
        && file_name(started) != file_name(recovered)
    {
        return Evidence::Broken(Broken::OtherFile {
            seq: first_voucher.seq,
            started: started.clone(),
            recovered: recovered.clone(),
        });
    }
    if first_voucher.path.is_none() {
        first_voucher.path = started_at_path;
    }
    first_voucher.deleted = deleted;
    Evidence::Vouched(first_voucher)
}

/// Checks `event` where it sits: it is still the event stored there (its hash as read), the event
/// before it links to it, its hash recomputes (the one definition, `audit::Verifier`), and every event
/// after it links on, up to `head` or to the first event verified before into `checkpoints`, whose
/// hash must come out as it did then. The events verified on the way are noted there. The outer
/// `Result` is the database's; the inner one the chain's.
///
/// Which `checkpoints`: the process's ([`Store::chain_checkpoints`]) to prove an event that was read
/// is genuine: the walk to a hash verified before proves it, even if that was long ago. But a decision
/// that rests on an event *not* being there (no hold on a session: retention deletes its recording; a
/// bundle that says it holds every event about its session) needs every event since the first one
/// read checked now, not when the process last walked there: an event deleted or rewritten since (a
/// hold, hidden by whoever writes the database) may sit past the checkpoint the walk stops at, and
/// nothing read would cross its place. Those pass a set of their own, empty when the decision starts
/// ([`ChainCheckpoints::default`]): the first walk goes to the head, and later ones stop at what it
/// verified.
pub(crate) async fn holds_in_chain(
    store: &Store,
    checkpoints: &ChainCheckpoints,
    event: &AuditRow,
    head: &(i64, String),
) -> Result<Result<(), ChainBreak>, StoreError> {
    /// Events read at once on the walk.
    const PAGE: i64 = 1000;
    let seq = event.seq;
    if seq > head.0 {
        return Ok(Err(ChainBreak::BeyondHead {
            seq,
            head_seq: head.0,
        }));
    }
    let stop = checkpoints.at_or_after(seq).filter(|(c, _)| *c <= head.0);
    let end = stop.as_ref().map_or(head.0, |(c, _)| *c);
    let mut verifier = if seq == 1 {
        Verifier::default()
    } else {
        match store.audit_page(seq - 2, 1).await?.pop() {
            Some(before) if before.seq == seq - 1 => Verifier::after(&before),
            _ => {
                return Ok(Err(ChainBreak::Gap {
                    missing: seq - 1,
                    found: seq,
                }));
            }
        }
    };
    let mut verified = Vec::new();
    let mut after = seq - 1;
    while after < end {
        let page = store.audit_page(after, PAGE.min(end - after)).await?;
        if page.is_empty() {
            return Ok(Err(ChainBreak::Truncated {
                missing: after + 1,
                head_seq: head.0,
            }));
        }
        for row in &page {
            if let Err(b) = verifier.push(row) {
                return Ok(Err(b));
            }
            // What the caller read is what was checked: an event changed since it was read (and the
            // chain recomputed from it) is not the one it holds.
            if row.seq == seq && row.hash != event.hash {
                return Ok(Err(ChainBreak::Altered { seq }));
            }
            if row.seq % ChainCheckpoints::EVERY == 0 {
                verified.push((row.seq, row.hash.clone()));
            }
            after = row.seq;
        }
    }
    match stop {
        Some((c, hash)) => {
            if verifier.last_hash() != hash {
                return Ok(Err(ChainBreak::Rewritten { seq: c }));
            }
        }
        None => {
            if let Err(b) = verifier.finish(head.0, &head.1) {
                return Ok(Err(b));
            }
            checkpoints.note_head(head.0, &head.1);
        }
    }
    checkpoints.note(verified);
    Ok(Ok(()))
}

/// The events after `after`, up to `head` and at most `limit` of them, oldest first, as they hold in
/// the chain: the first links to event `after` as stored, each to the one before, and the last holds
/// where it sits up to `head` ([`holds_in_chain`]: to the sealed head, or to an event this process
/// verified on the way to one). What leaves for a copy outside (`audit_tail`, `audit export`) is read
/// through here, so a row changed, inserted or deleted below a sealed head is never sent.
pub(crate) async fn vouched_rows(
    store: &Store,
    after: i64,
    head: &(i64, String),
    limit: i64,
) -> Result<Result<Vec<AuditRow>, ChainBreak>, StoreError> {
    if after > head.0 {
        // Past the sealed head: the head was put back behind what was sent (an older log restored).
        return Ok(Err(ChainBreak::BeyondHead {
            seq: after,
            head_seq: head.0,
        }));
    }
    let until = head.0.min(after.saturating_add(limit));
    if until <= after {
        return Ok(Ok(Vec::new()));
    }
    let mut verifier = if after == 0 {
        Verifier::default()
    } else {
        match store.audit_page(after - 1, 1).await?.pop() {
            Some(row) if row.seq == after => Verifier::after(&row),
            _ => {
                return Ok(Err(ChainBreak::Gap {
                    missing: after,
                    found: after + 1,
                }));
            }
        }
    };
    let rows = store.audit_page(after, until - after).await?;
    for row in &rows {
        if let Err(b) = verifier.push(row) {
            return Ok(Err(b));
        }
    }
    let Some(last) = rows.last().filter(|r| r.seq == until) else {
        return Ok(Err(ChainBreak::Truncated {
            missing: rows.last().map_or(after, |r| r.seq) + 1,
            head_seq: head.0,
        }));
    };
    if let Err(b) = holds_in_chain(store, store.chain_checkpoints(), last, head).await? {
        return Ok(Err(b));
    }
    Ok(Ok(rows))
}

/// The key [`ChainCheckpoints::first_alarm`] raises an unsealed head under (no event's seq).
const UNSEALED_ALARM: i64 = -1;

/// The chain head, judged by its seal ([`Store::sealed_head`]: moved by someone without the secrets
/// key) and against what this process verified before ([`ChainCheckpoints::highest`], read first: a
/// check that finished before this read began saw only committed events, which this read sees too, so
/// concurrent checks never raise it). A head behind an event verified before, or at it with another
/// hash, is the end of the log cut or rewritten with the head moved to match, which the seal alone
/// cannot show (an older head, seal and all, put back); the first such finding for a lost event (or,
/// once per process, an unsealed head) is appended as `audit.tamper`.
pub(crate) async fn chain_head(
    store: &Store,
) -> Result<Result<(i64, String), ChainBreak>, StoreError> {
    let verified = store.chain_checkpoints().highest();
    let sealed = store.sealed_head().await?;
    let head_seq = match &sealed {
        Ok((seq, _)) | Err(ChainBreak::Unsealed { seq }) => *seq,
        Err(other) => return Ok(Err(other.clone())),
    };
    let broken = match (&verified, sealed) {
        (Some((seq, _)), _) if head_seq < *seq => ChainBreak::Shortened {
            head_seq,
            verified: *seq,
        },
        (Some((seq, hash)), Ok(head)) if head.0 == *seq && head.1 != *hash => {
            ChainBreak::Rewritten { seq: *seq }
        }
        (_, Err(unsealed)) => unsealed,
        (_, Ok(head)) => return Ok(Ok(head)),
    };
    // A security alert for the SIEM and the ATNA repository, as `audit verify` raises one: appended
    // after the head, it hides nothing. Once per lost event (or per process for a head without its
    // seal, which stays so until an operator seals it again), not at every page that finds it.
    let lost = match broken {
        ChainBreak::Unsealed { .. } => UNSEALED_ALARM,
        _ => verified.map_or(0, |(seq, _)| seq),
    };
    if store.chain_checkpoints().first_alarm(lost) {
        tracing::error!(%broken, "the audit log was changed behind this node's back");
        let raised = async {
            let mut tx = store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    "system",
                    crate::audit::Action::AuditTamper,
                    "audit",
                    json!({"why": broken.to_string(), "head_seq": head_seq, "verified": lost}),
                ),
                crate::clock::Clock::system().now(),
            )
            .await?;
            tx.commit("audit.tamper").await
        }
        .await;
        if let Err(e) = raised {
            store.chain_checkpoints().alarm_failed(lost);
            tracing::error!(error = %e, "cannot record the audit log's lost events as audit.tamper yet");
        }
    }
    Ok(Err(broken))
}

/// Why a recording's file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path (as stored, or once `..` and symlinks are resolved) is not inside the recordings
    /// directory.
    #[error(
        "recording path {path:?} is outside the recordings directory {}: refused (the database names a \
         file chaperone never writes)",
        dir.display()
    )]
    Outside { path: String, dir: PathBuf },
    /// Not a regular file (a directory, a FIFO, a device), or it was replaced while being opened.
    #[error("recording path {path:?} is not a regular file: refused")]
    NotAFile { path: String },
    /// The file (or the recordings directory) cannot be read.
    #[error("recording {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl PathError {
    /// Whether the file is simply not there (on this node).
    pub fn is_not_found(&self) -> bool {
        matches!(self, PathError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A recording's file, opened inside the recordings directory.
#[derive(Debug)]
pub struct RecordingFile {
    pub file: File,
    /// Where it is, every symlink resolved.
    pub path: PathBuf,
}

/// Opens the recording at `path` (from the database) only if it is a regular file inside `dir` (the
/// configured recordings directory), judged on the canonical path (`..` and symlinks resolved) before
/// anything is opened; refuses anything else with a [`PathError`]. The one rule for every reader of a
/// recording path: the CLI's verify, play and export, and the node sweep.
pub fn open_recording(dir: &Path, path: &str) -> Result<RecordingFile, PathError> {
    let io_err = |what: &Path| {
        let what = what.display().to_string();
        move |source| PathError::Io { path: what, source }
    };
    let outside = || PathError::Outside {
        path: path.to_owned(),
        dir: dir.to_owned(),
    };
    let dir_real = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    // Stored paths are absolute (`Config::parse` resolves the recordings directory to one); a relative
    // one, written into the database by hand, resolves against the current directory: what counts is
    // where it lands.
    let given = Path::new(path);
    let real = match std::fs::canonicalize(given) {
        Ok(real) => real,
        // Not there: say "outside" when it would be, so the answer does not depend on the file.
        Err(_) if !given.starts_with(dir) && !given.starts_with(&dir_real) => {
            return Err(outside());
        }
        Err(e) => return Err(io_err(given)(e)),
    };
    if !real.starts_with(&dir_real) || real == dir_real {
        return Err(outside());
    }
    let not_a_file = || PathError::NotAFile {
        path: path.to_owned(),
    };
    let before = std::fs::symlink_metadata(&real).map_err(io_err(&real))?;
    if !before.file_type().is_file() {
        return Err(not_a_file());
    }
    let file = File::open(&real).map_err(io_err(&real))?;
    let opened = file.metadata().map_err(io_err(&real))?;
    // Replaced (by a symlink, say) between the check and the open: what was opened is not what was
    // checked.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
            return Err(not_a_file());
        }
    }
    if !opened.is_file() {
        return Err(not_a_file());
    }
    Ok(RecordingFile { file, path: real })
}

/// Why a recording was not proved intact (and so is not played, exported or put in a bundle). Paths
/// come from the database and are shown as Rust string literals (controls escaped).
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// No audit event vouches for a digest of it.
    #[error("recording {path:?} is {why}")]
    Unvouched { path: String, why: Unvouched },
    /// The audit events about it do not hold in the chain, or contradict each other.
    #[error(
        "recording {path:?}: the audit log's word on it was ALTERED ({broken}); run `chaperone audit verify`"
    )]
    Broken { path: String, broken: Broken },
    /// Its row claims another digest than the one the audit log vouches for.
    #[error(
        "recording {path:?} was ALTERED: its row says sha256 {}, audit event {seq} vouches for {vouched}",
        row.as_deref().unwrap_or("-")
    )]
    RowAltered {
        path: String,
        row: Option<String>,
        seq: i64,
        vouched: String,
    },
    /// Retention deleted its file (its digest and audit events stay), as a `recording.deleted` event
    /// in the chain says.
    #[error(
        "recording {path:?} was deleted by retention on {} (audit event {seq}): its digest stays in the \
         audit log, its content is gone",
        crate::clock::format_time(*at)
    )]
    Deleted {
        path: String,
        at: UnixTime,
        seq: i64,
    },
    /// Its row says retention deleted it, but no `recording.deleted` event in the chain says so:
    /// retention marks the row and audits the deletion in one transaction, so the row was rewritten.
    #[error(
        "recording {path:?} was ALTERED: its row says retention deleted it on {}, but no audit event \
         records a deletion",
        crate::clock::format_time(*at)
    )]
    DeletionUnvouched { path: String, at: UnixTime },
    /// Its path is refused, or the file cannot be opened.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Reading the file failed.
    #[error("reading recording {path:?}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file's SHA-256 is not the vouched one.
    #[error(
        "recording {path:?} was ALTERED{while_}: sha256 {actual}, audit event {seq} vouches for {vouched}"
    )]
    FileAltered {
        path: String,
        /// `""`, or ` while it was played` and the like (the file changed after it was proved).
        while_: String,
        actual: String,
        seq: i64,
        vouched: String,
    },
}

/// A recording whose file matched, when it was opened, the digest the audit log vouches for.
#[derive(Debug)]
pub struct Proof {
    /// The vouched-for SHA-256 (hex), to check again over the bytes used.
    pub sha256: String,
    /// The audit event that vouches for it.
    pub seq: i64,
    /// That event is a node sweep's `recording.recovered` (the writer stopped: the digest is of the
    /// file as found then), not the session's own end.
    pub recovered: bool,
    /// The file, confined to the recordings directory, read from its start.
    pub file: File,
    /// Its size when it was proved.
    pub size: u64,
}

impl Proof {
    /// Compares the SHA-256 of the bytes just used (`done`: "played", "exported") with the vouched one,
    /// so a file altered after [`prove`] is caught too.
    pub fn confirm(&self, r: &RecordingRow, actual: &str, done: &str) -> Result<(), ProveError> {
        if self.sha256 != actual {
            return Err(ProveError::FileAltered {
                path: r.path.clone(),
                while_: format!(" while it was {done}"),
                actual: actual.to_owned(),
                seq: self.seq,
                vouched: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

/// Proves a recording before anything of it is used: an audit event vouches for its digest, its row
/// agrees, its file is inside the recordings directory `dir` and hashes to that digest. Blocking (file
/// I/O): call it off the async runtime. The one check behind `session verify|play|export` and the
/// evidence bundle.
pub fn prove(dir: &Path, r: &RecordingRow, ev: &Evidence) -> Result<Proof, ProveError> {
    use std::io::{Seek as _, SeekFrom};
    let path = || r.path.clone();
    let v = match ev {
        Evidence::Vouched(v) => v,
        Evidence::Unvouched(why) => {
            return Err(ProveError::Unvouched {
                path: path(),
                why: *why,
            });
        }
        Evidence::Broken(b) => {
            return Err(ProveError::Broken {
                path: path(),
                broken: b.clone(),
            });
        }
    };
    // Deleted by retention is the audit log's word; a row that says so alone was rewritten. Either way
    // the file is not read (a file put back after its deletion is not evidence).
    match (v.deleted, r.deleted_at) {
        (Some(d), _) => {
            return Err(ProveError::Deleted {
                path: path(),
                at: d.at,
                seq: d.seq,
            });
        }
        (None, Some(at)) => {
            return Err(ProveError::DeletionUnvouched { path: path(), at });
        }
        (None, None) => {}
    }
    if r.sha256.as_deref() != Some(v.sha256.as_str()) {
        return Err(ProveError::RowAltered {
            path: path(),
            row: r.sha256.clone(),
            seq: v.seq,
            vouched: v.sha256.clone(),
        });
    }
    let mut opened = open_recording(dir, &r.path)?;
    let read = |source| ProveError::Read {
        path: path(),
        source,
    };
    let mut counted = Counted {
        inner: &mut opened.file,
        bytes: 0,
    };
    let actual = chaperone_recorder::Sha256Reader::new(&mut counted)
        .finish_hex()
        .map_err(read)?;
    let size = counted.bytes;
    if actual != v.sha256 {
        return Err(ProveError::FileAltered {
            path: path(),
            while_: String::new(),
            actual,
            seq: v.seq,
            vouched: v.sha256.clone(),
        });
    }
    opened.file.seek(SeekFrom::Start(0)).map_err(read)?;
    Ok(Proof {
        sha256: v.sha256.clone(),
        seq: v.seq,
        recovered: v.recovered(),
        file: opened.file,
        size,
    })
}

/// A recording's integrity in the words every page shows ([`Integrity::word`]): `intact`, `ALTERED`
/// or `missing`, or why there is nothing to check yet (`live`, `not-digested`) or any more (`deleted`
/// by retention, as the audit log says). Always from [`prove`], so always against the digest the chain
/// vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// The file hashes to the digest audit event `seq` vouches for.
    Intact { seq: i64, sha256: String },
    /// The file, its row or the audit events about it were changed (the reason says which), or its row
    /// names a file outside the recordings directory.
    Altered(String),
    /// The file is not in this node's recordings directory, or cannot be read, and no audit event
    /// records its deletion.
    Missing(String),
    /// Retention deleted the file, as audit event `seq` records; its digest and events remain.
    Deleted { seq: i64, at: UnixTime },
    /// The session is live: its recording has no digest yet.
    Live,
    /// The session ended, but no audit event vouches for a digest of its recording.
    NotDigested,
}

impl Integrity {
    /// The one word for a status column: `intact`, `ALTERED`, `missing`, `deleted`, `live`,
    /// `not-digested`.
    pub fn word(&self) -> &'static str {
        match self {
            Integrity::Intact { .. } => "intact",
            Integrity::Altered(_) => "ALTERED",
            Integrity::Missing(_) => "missing",
            Integrity::Deleted { .. } => "deleted",
            Integrity::Live => "live",
            Integrity::NotDigested => "not-digested",
        }
    }

    /// From what [`prove`] said.
    pub fn of(proved: &Result<Proof, ProveError>) -> Integrity {
        let e = match proved {
            Ok(p) => {
                return Integrity::Intact {
                    seq: p.seq,
                    sha256: p.sha256.clone(),
                };
            }
            Err(e) => e,
        };
        match e {
            ProveError::Unvouched {
                why: Unvouched::Live,
                ..
            } => Integrity::Live,
            ProveError::Unvouched {
                why: Unvouched::NotDigested,
                ..
            } => Integrity::NotDigested,
            ProveError::Deleted { at, seq, .. } => Integrity::Deleted { seq: *seq, at: *at },
            ProveError::Path(PathError::Io { .. }) | ProveError::Read { .. } => {
                Integrity::Missing(e.to_string())
            }
            ProveError::Broken { .. }
            | ProveError::RowAltered { .. }
            | ProveError::DeletionUnvouched { .. }
            | ProveError::FileAltered { .. }
            | ProveError::Path(PathError::Outside { .. } | PathError::NotAFile { .. }) => {
                Integrity::Altered(e.to_string())
            }
        }
    }
}

/// The integrity of recording `r` (a row of the session `ev` was read for): [`prove`] and its answer
/// in words. Blocking (it hashes the whole file): call it off the async runtime.
pub fn integrity(dir: &Path, r: &RecordingRow, ev: &Evidence) -> Integrity {
    Integrity::of(&prove(dir, r, ev))
}

/// A reader that counts what passed.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: io::Read> io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Records that `actor` looked at session `session_id`'s recordings (`recording.view`): `how` is
/// `play`, `export` or the like, `via` the door (`cli`, `web`). Committed before a byte is shown, so
/// that no one sees a recording without the audit log saying so.
pub async fn audit_view(
    store: &Store,
    actor: &str,
    session_id: &str,
    recording: Option<i64>,
    how: &str,
    via: &str,
    now: UnixTime,
) -> Result<i64, StoreError> {
    let mut tx = store.begin().await?;
    let seq = tx
        .audit(
            AuditEvent::new(
                actor,
                VIEW,
                format!("session:{session_id}"),
                json!({"recording": recording, "how": how, "via": via}),
            ),
            now,
        )
        .await?;
    tx.commit("recording.view").await?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, action: &str, detail: Value) -> AuditRow {
        AuditRow {
            seq,
            at: 1000 + seq,
            actor: "system".into(),
            action: action.into(),
            subject: "session:s1".into(),
            detail: detail.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn session() -> (SessionRow, RecordingRow) {
        let r = RecordingRow {
            id: 7,
            session_id: "s1".into(),
            format: "asciicast-v2".into(),
            path: "/r/s1.cast".into(),
            sha256: None,
            size: None,
            created_at: 1000,
            closed_at: Some(1010),
            deleted_at: None,
        };
        let s = SessionRow {
            id: "s1".into(),
            vendor: "alice".into(),
            asset: "mri-01".into(),
            grant_id: 1,
            kind: "shell".into(),
            service: "ssh".into(),
            client_addr: "127.0.0.1:1".into(),
            detail: String::new(),
            started_at: 1000,
            ended_at: Some(1010),
            end_reason: None,
            end_cause: Some("recording".into()),
            bytes_up: 0,
            bytes_down: 0,
            zone: "radiology".into(),
            hold: None,
            recordings: vec![r.clone()],
        };
        (s, r)
    }

    /// A recording whose writer failed at the session's end has no digest to speak for it: a sweep's
    /// digest of the file found later (what was on disk then, not what was recorded) does not make it
    /// intact. One whose writer crashed (no end of its own) is vouched for by the sweep, as recovered.
    #[test]
    fn a_failed_recording_is_never_vouched_for_by_a_later_recovery() {
        let (s, r) = session();
        let start = event(1, START, json!({"recording": "/r/s1.cast"}));
        let recovered = event(
            3,
            RECOVERED,
            json!({"recording": 7, "sha256": "ab", "path": "/r/s1.cast"}),
        );
        let failed_end = event(2, END, json!({"recording": 7, "recording_sha256": null}));
        assert_eq!(
            judge(
                &s,
                &r,
                true,
                &[start.clone(), failed_end, recovered.clone()]
            ),
            Evidence::Unvouched(Unvouched::NotDigested)
        );
        let crashed_end = event(2, END, json!({"abandoned": true}));
        assert!(matches!(
            judge(&s, &r, true, &[start.clone(), crashed_end.clone(), recovered]),
            Evidence::Vouched(v) if v.recovered() && v.sha256 == "ab"
        ));
        // A recovery of another file than the session started writing (its row's path was changed
        // before the sweep) vouches for nothing: it is a sign of tampering.
        let elsewhere = event(
            3,
            RECOVERED,
            json!({"recording": 7, "sha256": "cd", "path": "/r/other.cast"}),
        );
        assert!(matches!(
            judge(&s, &r, true, &[start, crashed_end, elsewhere]),
            Evidence::Broken(Broken::OtherFile { seq: 3, .. })
        ));
    }

    #[test]
    fn only_regular_files_inside_the_directory_are_opened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("recordings");
        std::fs::create_dir(&dir).unwrap();
        let inside = dir.join("a.cast");
        std::fs::write(&inside, b"x").unwrap();
        let outside = root.path().join("secret");
        std::fs::write(&outside, b"s").unwrap();
        let text = |p: &Path| p.to_str().unwrap().to_owned();

        let opened = open_recording(&dir, &text(&inside)).unwrap();
        assert_eq!(opened.path, std::fs::canonicalize(&inside).unwrap());

        for refused in [
            text(&outside),
            "/etc/passwd".into(),
            format!("{}/../secret", text(&dir)),
            "recordings/a.cast".into(),
            text(&dir),
            text(&root.path().join("missing")),
        ] {
            let err = open_recording(&dir, &refused).unwrap_err();
            assert!(matches!(err, PathError::Outside { .. }), "{refused}: {err}");
            assert!(err.to_string().contains("outside the recordings directory"));
        }
        #[cfg(unix)]
        {
            let link = dir.join("link.cast");
            std::os::unix::fs::symlink(&outside, &link).unwrap();
            let err = open_recording(&dir, &text(&link)).unwrap_err();
            assert!(matches!(err, PathError::Outside { .. }), "{err}");
            // A symlink that stays inside is followed: the rule is about where the file is.
            let inner = dir.join("inner.cast");
            std::os::unix::fs::symlink(&inside, &inner).unwrap();
            open_recording(&dir, &text(&inner)).unwrap();
        }
        std::fs::create_dir(dir.join("sub")).unwrap();
        let err = open_recording(&dir, &text(&dir.join("sub"))).unwrap_err();
        assert!(matches!(err, PathError::NotAFile { .. }), "{err}");
        let err = open_recording(&dir, &text(&dir.join("gone.cast"))).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}
