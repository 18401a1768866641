//! Sessions (what one connection did toward one asset) and their recordings.

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::{Context, Result, Store, StoreError, Tx, get};
use crate::model::{Hold, RecordingRow, SessionRow, UnixTime};

pub(super) const SESSION_SELECT: &str = "SELECT s.id, v.name AS vendor, a.name AS asset, s.grant_id, s.kind, \
     s.service, s.client_addr, s.detail, s.started_at, s.ended_at, s.end_reason, s.end_cause, s.bytes_up, s.bytes_down, \
     a.zone, s.held_at, s.held_by, s.hold_reason \
     FROM sessions s JOIN vendors v ON v.id = s.vendor_id JOIN assets a ON a.id = s.asset_id";

/// The columns [`recording`] reads, for a `recordings r` in the query.
pub(super) const RECORDING_COLUMNS: &str = "r.id, r.session_id, r.format, r.path, r.sha256, r.size, r.created_at, r.closed_at, r.deleted_at";

pub(super) fn session(row: &AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: get(row, "id")?,
        vendor: get(row, "vendor")?,
        asset: get(row, "asset")?,
        grant_id: get(row, "grant_id")?,
        kind: get(row, "kind")?,
        service: get(row, "service")?,
        client_addr: get(row, "client_addr")?,
        detail: get(row, "detail")?,
        started_at: get(row, "started_at")?,
        ended_at: get(row, "ended_at")?,
        end_reason: get(row, "end_reason")?,
        end_cause: get(row, "end_cause")?,
        bytes_up: get(row, "bytes_up")?,
        bytes_down: get(row, "bytes_down")?,
        zone: get(row, "zone")?,
        hold: match get::<Option<UnixTime>>(row, "held_at")? {
            None => None,
            Some(at) => Some(Hold {
                at,
                by: get::<Option<String>>(row, "held_by")?.unwrap_or_default(),
                reason: get::<Option<String>>(row, "hold_reason")?.unwrap_or_default(),
            }),
        },
        recordings: Vec::new(),
    })
}

pub(super) fn recording(row: &AnyRow) -> Result<RecordingRow> {
    Ok(RecordingRow {
        id: get(row, "id")?,
        session_id: get(row, "session_id")?,
        format: get(row, "format")?,
        path: get(row, "path")?,
        sha256: get(row, "sha256")?,
        size: get(row, "size")?,
        created_at: get(row, "created_at")?,
        closed_at: get(row, "closed_at")?,
        deleted_at: get(row, "deleted_at")?,
    })
}

/// A recording retention may delete: its session ended and is not on hold, and its file is not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCandidate {
    pub recording: RecordingRow,
    /// Its asset's zone (the retention may be the zone's).
    pub zone: String,
    /// When its session ended.
    pub ended_at: UnixTime,
}

/// A recording to register ([`Tx::insert_recordings`]).
#[derive(Debug, Clone)]
pub struct NewRecording<'a> {
    pub session_id: &'a str,
    /// The `recordings.format` column (`RecordingFormat::as_str`).
    pub format: &'a str,
    pub path: &'a str,
    pub created_at: UnixTime,
}

/// What opening a session records.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub vendor_id: i64,
    pub asset_id: i64,
    pub grant_id: i64,
    pub kind: &'a str,
    pub service: &'a str,
    pub client_addr: &'a str,
    pub detail: &'a str,
    /// The node (`App::node`) running the session.
    pub node: &'a str,
}

impl Store {
    /// Every session not ended yet (on any node), newest first, without their recordings: what the
    /// live sessions list shows. Not a window of the newest sessions: a vendor who starts many short
    /// sessions must not push a running one out of sight.
    pub async fn open_sessions(&self) -> Result<Vec<SessionRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{SESSION_SELECT} WHERE s.ended_at IS NULL ORDER BY s.started_at DESC, s.id"
        )))
        .fetch_all(&self.pool)
        .await
        .context("listing open sessions")?;
        rows.iter().map(session).collect()
    }

    /// Open sessions an approver asked to end: `(id, reason)`.
    pub async fn sessions_to_terminate(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, terminate_reason FROM sessions \
             WHERE terminate_requested_at IS NOT NULL AND ended_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading sessions to terminate")?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "id")?,
                    get::<Option<String>>(r, "terminate_reason")?.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// Of the sessions `ids` (live on the caller's node), those whose row says they ended: another node
    /// took the caller for gone (a heartbeat not seen for 30 s) and ended them as abandoned.
    pub async fn ended_among(&self, ids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let placeholders = super::placeholders(chunk.len());
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND id IN ({placeholders})"
            )));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .context("re-reading live sessions' ends")?;
            for row in &rows {
                out.push(get(row, "id")?);
            }
        }
        Ok(out)
    }

    pub async fn session(&self, id: &str) -> Result<SessionRow> {
        let row = sqlx::query(AssertSqlSafe(format!("{SESSION_SELECT} WHERE s.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a session")?
            .ok_or_else(|| StoreError::NotFound {
                kind: "session",
                name: id.to_owned(),
            })?;
        let mut s = session(&row)?;
        s.recordings = self.recordings_of(&s.id).await?;
        Ok(s)
    }

    pub(super) async fn recordings_of(&self, session_id: &str) -> Result<Vec<RecordingRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings r WHERE r.session_id = $1 ORDER BY r.id"
        )))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .context("listing recordings")?;
        rows.iter().map(recording).collect()
    }

    /// Recordings whose file is not deleted, of sessions that ended at or before `ended_before` and are
    /// not on legal hold, oldest end first: what retention may have to delete (it decides which are due).
    pub async fn retention_candidates(
        &self,
        ended_before: UnixTime,
    ) -> Result<Vec<RetentionCandidate>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS}, a.zone, s.ended_at AS session_ended_at \
             FROM recordings r JOIN sessions s ON s.id = r.session_id JOIN assets a ON a.id = s.asset_id \
             WHERE r.deleted_at IS NULL AND s.held_at IS NULL AND s.ended_at IS NOT NULL \
             AND s.ended_at <= $1 ORDER BY s.ended_at, r.id"
        )))
        .bind(ended_before)
        .fetch_all(&self.pool)
        .await
        .context("looking for recordings past their retention")?;
        rows.iter()
            .map(|row| {
                Ok(RetentionCandidate {
                    recording: recording(row)?,
                    zone: get(row, "zone")?,
                    ended_at: get(row, "session_ended_at")?,
                })
            })
            .collect()
    }

    /// Recordings marked deleted at or after `since`: a node that stopped between marking one and
    /// deleting its file deletes it on its next pass.
    pub async fn recordings_deleted_since(&self, since: UnixTime) -> Result<Vec<RecordingRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings r WHERE r.deleted_at >= $1 ORDER BY r.id"
        )))
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .context("listing deleted recordings")?;
        rows.iter().map(recording).collect()
    }
}

impl Tx {
    pub async fn insert_session(&mut self, s: &NewSession<'_>, now: UnixTime) -> Result<()> {
        self.insert_sessions(&[(s.clone(), now)]).await
    }

    /// Opens several sessions at once (each with its start time): one statement per
    /// [`super::ROWS_PER_INSERT`] rows.
    pub async fn insert_sessions(&mut self, sessions: &[(NewSession<'_>, UnixTime)]) -> Result<()> {
        for chunk in sessions.chunks(super::ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO sessions (id, vendor_id, asset_id, grant_id, kind, service, client_addr, detail, started_at, node) VALUES {}",
                super::value_rows(chunk.len(), 10)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (s, now) in chunk {
                query = query
                    .bind(s.id)
                    .bind(s.vendor_id)
                    .bind(s.asset_id)
                    .bind(s.grant_id)
                    .bind(s.kind)
                    .bind(s.service)
                    .bind(s.client_addr)
                    .bind(s.detail)
                    .bind(*now)
                    .bind(s.node);
            }
            query
                .execute(&mut *self.tx)
                .await
                .context("opening a session")?;
        }
        Ok(())
    }

    /// Asks the node running session `id` to close it (the grant stays). `false` if it already ended.
    pub async fn request_session_termination(
        &mut self,
        id: &str,
        reason: &str,
        now: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET terminate_requested_at = $1, terminate_reason = $2 \
             WHERE id = $3 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("asking a session to end")?
        .rows_affected();
        Ok(done == 1)
    }

    /// How many sessions are open on `asset_id`'s service `service` (for the audit of its removal; the
    /// authority watcher of each node closes them, `live::watch`).
    pub async fn open_sessions_on_service(&mut self, asset_id: i64, service: &str) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM sessions \
             WHERE asset_id = $1 AND service = $2 AND ended_at IS NULL",
        )
        .bind(asset_id)
        .bind(service)
        .fetch_one(&mut *self.tx)
        .await
        .context("counting a removed service's sessions")?;
        let n: i64 = get(&row, "n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Ends an open session with its byte counts; `false` if it had already ended (another node ended it
    /// as abandoned, say).
    pub async fn end_session(
        &mut self,
        id: &str,
        reason: &str,
        cause: &str,
        bytes_up: i64,
        bytes_down: i64,
        now: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET ended_at = $1, end_reason = $2, end_cause = $3, bytes_up = $4, bytes_down = $5 \
             WHERE id = $6 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(cause)
        .bind(bytes_up)
        .bind(bytes_down)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("closing a session")?
        .rows_affected();
        Ok(done == 1)
    }

    /// Places a legal hold on session `id`; `false` when it is already on hold.
    pub async fn hold_session(
        &mut self,
        id: &str,
        by: &str,
        reason: &str,
        now: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET held_at = $1, held_by = $2, hold_reason = $3 \
             WHERE id = $4 AND held_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("placing a legal hold")?
        .rows_affected();
        Ok(done == 1)
    }

    /// Releases the legal hold on session `id`; `false` when it was not on hold.
    pub async fn release_session(&mut self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET held_at = NULL, held_by = NULL, hold_reason = NULL \
             WHERE id = $1 AND held_at IS NOT NULL",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("releasing a legal hold")?
        .rows_affected();
        Ok(done == 1)
    }

    /// Marks recording `id` of session `session_id` deleted, if its session is not on hold and no one
    /// marked it before; `false` otherwise. The session's row is written first (an update that changes
    /// nothing), which holds its row lock to the commit: a hold placed meanwhile waits for this
    /// transaction and then sees the recording deleted, or commits first and this finds it held.
    pub async fn mark_recording_deleted(
        &mut self,
        id: i64,
        session_id: &str,
        now: UnixTime,
    ) -> Result<bool> {
        let not_held =
            sqlx::query("UPDATE sessions SET held_at = held_at WHERE id = $1 AND held_at IS NULL")
                .bind(session_id)
                .execute(&mut *self.tx)
                .await
                .context("checking a session's legal hold")?
                .rows_affected();
        if not_held != 1 {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE recordings SET deleted_at = $1 \
             WHERE id = $2 AND session_id = $3 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(session_id)
        .execute(&mut *self.tx)
        .await
        .context("marking a recording deleted")?
        .rows_affected();
        if done == 1 {
            // What the search index and the player's index hold of it is its content too: it goes
            // with the file (the digest and the audit events stay).
            super::search::delete_recording_text(&mut self.tx, id).await?;
            sqlx::query("DELETE FROM recording_index WHERE recording_id = $1")
                .bind(id)
                .execute(&mut *self.tx)
                .await
                .context("deleting a recording's playback index")?;
        }
        Ok(done == 1)
    }

    pub async fn insert_recording(
        &mut self,
        session_id: &str,
        format: &str,
        path: &str,
        now: UnixTime,
    ) -> Result<i64> {
        let ids = self
            .insert_recordings(&[NewRecording {
                session_id,
                format,
                path,
                created_at: now,
            }])
            .await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("registering a recording returned no id".into()))
    }

    /// Registers several recordings at once; their ids, in the order given.
    pub async fn insert_recordings(&mut self, recordings: &[NewRecording<'_>]) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(recordings.len());
        for chunk in recordings.chunks(super::ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO recordings (session_id, format, path, created_at) VALUES {} RETURNING id, session_id, path",
                super::value_rows(chunk.len(), 4)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                query = query
                    .bind(r.session_id)
                    .bind(r.format)
                    .bind(r.path)
                    .bind(r.created_at);
            }
            let rows = query
                .fetch_all(&mut *self.tx)
                .await
                .context("registering a recording")?;
            // RETURNING's order is not promised (SQLite says so): matched by session and file.
            let mut by_file = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let key = (
                    get::<String>(row, "session_id")?,
                    get::<String>(row, "path")?,
                );
                by_file.insert(key, get::<i64>(row, "id")?);
            }
            for r in chunk {
                let key = (r.session_id.to_owned(), r.path.to_owned());
                ids.push(by_file.remove(&key).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "registering the recording of session {} returned no id",
                        r.session_id
                    ))
                })?);
            }
        }
        Ok(ids)
    }

    /// Closes recording `id` without a digest: its writer failed, so no digest speaks for it, and the
    /// node sweep (which digests recordings left open by a crash) must not digest it later either.
    pub async fn close_recording_failed(&mut self, id: i64, now: UnixTime) -> Result<bool> {
        let done =
            sqlx::query("UPDATE recordings SET closed_at = $1 WHERE id = $2 AND closed_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *self.tx)
                .await
                .context("closing a failed recording")?
                .rows_affected();
        Ok(done == 1)
    }

    /// Stores a recording's digest and size; `false` if it was already closed.
    pub async fn close_recording(
        &mut self,
        id: i64,
        sha256: &str,
        size: i64,
        now: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE recordings SET sha256 = $1, size = $2, closed_at = $3 WHERE id = $4 AND closed_at IS NULL",
        )
        .bind(sha256)
        .bind(size)
        .bind(now)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("closing a recording")?
        .rows_affected();
        Ok(done == 1)
    }
}
