//! What the operators' endpoints read: whether the database answers, the pool's state, and the counts
//! behind the gauges of `/metrics` (pending requests, grants in force, the audit consumers' backlogs).

use super::{Context, Result, Store, get};
use crate::model::UnixTime;

/// The database-backed gauges, read in one go at scrape time.
#[derive(Debug, Clone, Default)]
pub struct OpsCounts {
    pub pending_requests: i64,
    pub active_grants: i64,
    /// (consumer, events not handled yet): `webhook` and each `audit_cursors` row.
    pub backlogs: Vec<(String, i64)>,
    /// Whether the audit chain's head carries its seal under this node's key (`Store::sealed_head`).
    pub head_sealed: bool,
}

impl Store {
    /// Whether the database answers (`/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .context("checking the database")?;
        Ok(())
    }

    /// Connections open and idle in this node's pool.
    pub fn pool_status(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub async fn ops_counts(&self, now: UnixTime) -> Result<OpsCounts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM access_requests \
               WHERE status = 'pending' AND (expires_at IS NULL OR expires_at > $1)) AS pending, \
             (SELECT COUNT(*) FROM grants WHERE revoked_at IS NULL AND starts_at <= $1 AND ends_at > $1) \
             AS active",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .context("counting requests and grants")?;
        let backlogs = sqlx::query(
            "SELECT 'webhook' AS name, h.seq - c.delivered_seq AS behind \
             FROM webhook_cursor c, audit_head h WHERE c.id = 1 AND h.id = 1 \
             UNION ALL SELECT c.name AS name, h.seq - c.seq AS behind \
             FROM audit_cursors c, audit_head h WHERE h.id = 1",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading the audit consumers' backlogs")?;
        let head_sealed = self.sealed_head().await?.is_ok();
        Ok(OpsCounts {
            head_sealed,
            pending_requests: get(&row, "pending")?,
            active_grants: get(&row, "active")?,
            backlogs: backlogs
                .iter()
                .map(|r| Ok((get(r, "name")?, get(r, "behind")?)))
                .collect::<Result<_>>()?,
        })
    }
}

/// Where a database stands against the migrations this build carries (`chaperone doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: usize,
    /// Migrations this build has that the database has not applied yet (`serve` applies them).
    pub pending: Vec<i64>,
    /// Migrations the database has that this build does not know (a newer chaperone wrote it).
    pub unknown: Vec<i64>,
    /// The database server's clock (unix seconds), for a skew hint; `None` on SQLite (same machine).
    pub clock: Option<i64>,
}

impl Store {
    /// Connects to `url` without changing anything and compares its applied migrations with this
    /// build's. A database never migrated counts every migration as pending.
    pub async fn migration_status(url: &str) -> Result<MigrationStatus> {
        sqlx::any::install_default_drivers();
        let (connect_url, migrator, postgres) = match url.strip_prefix("sqlite://") {
            Some(path) => (
                format!("sqlite://{path}?mode=ro"),
                &super::SQLITE_MIGRATIONS,
                false,
            ),
            None => (url.to_owned(), &super::POSTGRES_MIGRATIONS, true),
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&connect_url)
            .await
            .context("connecting to the database")?;
        let applied: Vec<i64> =
            match sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&pool)
                .await
            {
                Ok(rows) => rows
                    .iter()
                    .map(|r| get(r, "version"))
                    .collect::<Result<_>>()?,
                Err(_) => Vec::new(),
            };
        let clock = if postgres {
            let row = sqlx::query(super::nodes::clock_query(super::Backend::Postgres))
                .fetch_one(&pool)
                .await
                .context("reading the database's clock")?;
            Some(get(&row, "t")?)
        } else {
            None
        };
        pool.close().await;
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        Ok(MigrationStatus {
            applied: applied.len(),
            pending: known
                .iter()
                .filter(|v| !applied.contains(v))
                .copied()
                .collect(),
            unknown: applied
                .iter()
                .filter(|v| !known.contains(v))
                .copied()
                .collect(),
            clock,
        })
    }
}
