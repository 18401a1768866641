//! Nodes (running `chaperone serve` processes) and what they leave behind: open sessions of a node that
//! is gone, and recordings nobody finished.
//!
//! Registration and heartbeats are bookkeeping, not decisions, so they do not go through an audited
//! `Tx`; ending an abandoned session (`Tx::end_session`) and finishing its recording are audited by the caller.

use super::{Backend, Context, Result, Store, get};
use crate::model::{RecordingRow, UnixTime};

/// An open session whose node is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedSession {
    pub id: String,
    pub vendor: String,
    pub grant_id: i64,
    pub kind: String,
    /// `before-0005` for sessions open when nodes started to be recorded (migration 0005).
    pub node: String,
}

impl Store {
    /// Registers node `id` as alive (or says so again).
    pub async fn node_seen(&self, id: &str, now: UnixTime) -> Result<()> {
        sqlx::query(
            "INSERT INTO nodes (id, started_at, seen_at) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET seen_at = $2",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("registering this node")?;
        Ok(())
    }

    /// The nodes seen at or after `since`, with when: running, or stopped without saying so too recently
    /// to tell. Commands that change what every node relies on (`restore` into a shared database,
    /// `secrets rotate`) refuse while there is one.
    /// A database without the nodes table (empty, or older than migration 0005) has none.
    pub async fn nodes_seen_since(&self, since: UnixTime) -> Result<Vec<(String, UnixTime)>> {
        let exists = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'nodes'"
            }
            // Found the way the query below finds it: through the search path.
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM (SELECT to_regclass('nodes') AS t) x WHERE t IS NOT NULL"
            }
        };
        let tables: i64 = get(
            &sqlx::query(exists)
                .fetch_one(&self.pool)
                .await
                .context("looking for the nodes table")?,
            "n",
        )?;
        if tables == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT id, seen_at FROM nodes WHERE seen_at >= $1 ORDER BY id")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .context("looking for running nodes")?;
        rows.iter()
            .map(|r| Ok((get(r, "id")?, get(r, "seen_at")?)))
            .collect()
    }

    /// Forgets node `id` (a clean stop, after its sessions ended) and nodes not seen since `stale_before`.
    pub async fn node_gone(&self, id: &str, stale_before: UnixTime) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE id = $1 OR seen_at < $2")
            .bind(id)
            .bind(stale_before)
            .execute(&self.pool)
            .await
            .context("removing a node")?;
        Ok(())
    }

    /// Open sessions whose node has not been seen since `alive_after`, or is unknown. Sessions without a
    /// node (written by a version before migration 0005 still running) are not included.
    pub async fn abandoned_sessions(&self, alive_after: UnixTime) -> Result<Vec<AbandonedSession>> {
        let rows = sqlx::query(
            "SELECT s.id, v.name AS vendor, s.grant_id, s.kind, s.node FROM sessions s \
             JOIN vendors v ON v.id = s.vendor_id LEFT JOIN nodes n ON n.id = s.node \
             WHERE s.ended_at IS NULL AND s.node IS NOT NULL AND (n.id IS NULL OR n.seen_at < $1) \
             ORDER BY s.started_at",
        )
        .bind(alive_after)
        .fetch_all(&self.pool)
        .await
        .context("looking for abandoned sessions")?;
        rows.iter()
            .map(|r| {
                Ok(AbandonedSession {
                    id: get(r, "id")?,
                    vendor: get(r, "vendor")?,
                    grant_id: get(r, "grant_id")?,
                    kind: get(r, "kind")?,
                    node: get(r, "node")?,
                })
            })
            .collect()
    }

    /// Recordings without a digest whose session has ended: their writer stopped before finishing them.
    /// Never those of node `except` (the caller's own): its recordings are written by this very process,
    /// which closes each at its session's end, even when another node took it for gone and ended the
    /// session's row meanwhile; a digest of its file taken here would be of a recording still growing.
    pub async fn unfinished_recordings(&self, except: &str) -> Result<Vec<RecordingRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM recordings r JOIN sessions s ON s.id = r.session_id \
             WHERE r.closed_at IS NULL AND s.ended_at IS NOT NULL \
             AND (s.node IS NULL OR s.node <> $1) ORDER BY r.id",
            super::sessions::RECORDING_COLUMNS
        )))
        .bind(except)
        .fetch_all(&self.pool)
        .await
        .context("looking for unfinished recordings")?;
        rows.iter().map(super::sessions::recording).collect()
    }
}
