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

/// The database's clock as an SQL expression (unix seconds), for each backend: one spelling, used by
/// every statement that reads it. With PostgreSQL it is the server's own clock (`clock_timestamp`, not
/// the transaction's start); with SQLite, the calling process's, which is the machine's that holds the
/// file and so every node's on it.
macro_rules! sqlite_now {
    () => {
        "CAST(strftime('%s', 'now') AS INTEGER)"
    };
}
macro_rules! postgres_now {
    () => {
        "CAST(floor(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT)"
    };
}

/// The query that reads the database's clock (as `t`).
pub(super) fn clock_query(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => concat!("SELECT ", sqlite_now!(), " AS t"),
        Backend::Postgres => concat!("SELECT ", postgres_now!(), " AS t"),
    }
}

/// [`Store::node_alive`]'s statement: the clock read where the row is written, so the time written is
/// the time of the write, however long the pool made it wait.
fn alive_statement(backend: Backend) -> &'static str {
    macro_rules! alive {
        ($now:expr) => {
            concat!(
                "INSERT INTO nodes (id, started_at, seen_at) VALUES ($1, ",
                $now,
                ", ",
                $now,
                ") ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at RETURNING seen_at"
            )
        };
    }
    match backend {
        Backend::Sqlite => alive!(sqlite_now!()),
        Backend::Postgres => alive!(postgres_now!()),
    }
}

impl Store {
    /// The database's clock, in unix seconds: the one clock nodes' liveness is told by. Every node
    /// writes its heartbeat in it and judges others' in it, so a node whose own clock is off is neither
    /// taken for gone (its sessions ended under it) nor kept for alive; `node::run` compares it with
    /// the node's own clock, which TOTP and grant ends go by, and warns.
    /// Whether the database has table `name` (a constant of the caller's), found the way queries find
    /// it (on PostgreSQL, through the search path).
    pub(crate) async fn has_table(&self, name: &'static str) -> Result<bool> {
        let exists = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM (SELECT to_regclass($1) AS t) x WHERE t IS NOT NULL"
            }
        };
        let tables: i64 = get(
            &sqlx::query(exists)
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .context("looking for a table")?,
            "n",
        )?;
        Ok(tables > 0)
    }

    pub async fn database_now(&self) -> Result<UnixTime> {
        let row = sqlx::query(clock_query(self.backend))
            .fetch_one(&self.pool)
            .await
            .context("reading the database's clock")?;
        get(&row, "t")
    }

    /// Registers node `id` as alive (or says so again) now, on the database's clock, read in the same
    /// statement; returns that time.
    pub async fn node_alive(&self, id: &str) -> Result<UnixTime> {
        let row = sqlx::query(alive_statement(self.backend))
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .context("registering this node")?;
        get(&row, "seen_at")
    }

    /// Registers node `id` as alive (or says so again) at `now` (on the database's clock: tests, and
    /// callers that read it; `node::heartbeat` uses [`Store::node_alive`]).
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
        if !self.has_table("nodes").await? {
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

    /// Open sessions whose node has not been seen since `alive_after` (on the database's clock), or is
    /// unknown. Sessions without a
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
        rows.iter().map(abandoned).collect()
    }

    /// Open sessions of node `node` (the caller's own: those whose end it could not write, and those live
    /// in it, which the caller leaves alone).
    pub async fn open_sessions_of_node(&self, node: &str) -> Result<Vec<AbandonedSession>> {
        let rows = sqlx::query(
            "SELECT s.id, v.name AS vendor, s.grant_id, s.kind, s.node FROM sessions s \
             JOIN vendors v ON v.id = s.vendor_id WHERE s.ended_at IS NULL AND s.node = $1 \
             ORDER BY s.started_at",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await
        .context("looking for this node's open sessions")?;
        rows.iter().map(abandoned).collect()
    }

    /// Recordings without a digest whose session has ended: their writer stopped before finishing them,
    /// or is still writing (a session live on its node that another node took for gone: the caller
    /// leaves its own live sessions' recordings alone).
    pub async fn unfinished_recordings(&self) -> Result<Vec<RecordingRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM recordings r JOIN sessions s ON s.id = r.session_id \
             WHERE r.closed_at IS NULL AND s.ended_at IS NOT NULL ORDER BY r.id",
            super::sessions::RECORDING_COLUMNS
        )))
        .fetch_all(&self.pool)
        .await
        .context("looking for unfinished recordings")?;
        rows.iter().map(super::sessions::recording).collect()
    }
}

fn abandoned(r: &sqlx::any::AnyRow) -> Result<AbandonedSession> {
    Ok(AbandonedSession {
        id: get(r, "id")?,
        vendor: get(r, "vendor")?,
        grant_id: get(r, "grant_id")?,
        kind: get(r, "kind")?,
        node: get(r, "node")?,
    })
}
