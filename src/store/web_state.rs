//! Web sign-in state that every node must see: staff web sessions and passkey ceremonies (migration 0006).
//!
//! Rows are keyed by a kind and the SHA-256 of the token the browser holds, carry JSON the web crate
//! writes, and lapse at `expires_at`. Like node heartbeats this is bookkeeping, not a decision, so it does
//! not go through an audited `Tx`: the sign-ins and changes it serves are audited where they happen.

use super::{Context, Result, Store, get};
use crate::model::UnixTime;

impl Store {
    /// Stores `data` under (`kind`, `token_sha256`) until `expires_at`, replacing what was there.
    ///
    /// First deletes every row that has lapsed by `now`; then, if `kind` still holds `max` rows or more,
    /// the ones closest to lapsing, so a flood of sign-in starts cannot grow the table without bound.
    pub async fn web_state_put(
        &self,
        kind: &str,
        token_sha256: &str,
        data: &str,
        expires_at: UnixTime,
        now: UnixTime,
        max: u32,
    ) -> Result<()> {
        sqlx::query("DELETE FROM web_state WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .context("deleting lapsed web state")?;
        let held: i64 = sqlx::query("SELECT COUNT(*) AS n FROM web_state WHERE kind = $1")
            .bind(kind)
            .fetch_one(&self.pool)
            .await
            .context("counting web state")
            .and_then(|row| get(&row, "n"))?;
        let excess = held - i64::from(max) + 1;
        if excess > 0 {
            // A positive LIMIT only: SQLite reads a negative one as "no limit".
            sqlx::query(
                "DELETE FROM web_state WHERE kind = $1 AND token_sha256 IN \
                 (SELECT token_sha256 FROM web_state WHERE kind = $1 ORDER BY expires_at LIMIT $2)",
            )
            .bind(kind)
            .bind(excess)
            .execute(&self.pool)
            .await
            .context("making room in web state")?;
        }
        sqlx::query(
            "INSERT INTO web_state (kind, token_sha256, data, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, token_sha256) DO UPDATE SET data = $3, expires_at = $4",
        )
        .bind(kind)
        .bind(token_sha256)
        .bind(data)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .context("storing web state")?;
        Ok(())
    }

    /// The data under (`kind`, `token_sha256`) unless it has lapsed by `now`. With `extend_to`, its
    /// expiry moves there in the same statement (a sliding idle time-out).
    pub async fn web_state_get(
        &self,
        kind: &str,
        token_sha256: &str,
        now: UnixTime,
        extend_to: Option<UnixTime>,
    ) -> Result<Option<String>> {
        let row = match extend_to {
            Some(until) => sqlx::query(
                "UPDATE web_state SET expires_at = $4 \
                 WHERE kind = $1 AND token_sha256 = $2 AND expires_at > $3 RETURNING data",
            )
            .bind(kind)
            .bind(token_sha256)
            .bind(now)
            .bind(until)
            .fetch_optional(&self.pool)
            .await
            .context("reading and extending web state")?,
            None => sqlx::query(
                "SELECT data FROM web_state WHERE kind = $1 AND token_sha256 = $2 AND expires_at > $3",
            )
            .bind(kind)
            .bind(token_sha256)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .context("reading web state")?,
        };
        row.map(|r| get(&r, "data")).transpose()
    }

    /// Removes the row under (`kind`, `token_sha256`) and returns its data unless it had lapsed by `now`:
    /// whoever takes it first is the only one to get it (a ceremony is answered once, on any node).
    pub async fn web_state_take(
        &self,
        kind: &str,
        token_sha256: &str,
        now: UnixTime,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "DELETE FROM web_state WHERE kind = $1 AND token_sha256 = $2 RETURNING data, expires_at",
        )
        .bind(kind)
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .context("taking web state")?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: UnixTime = get(&row, "expires_at")?;
        if expires_at <= now {
            return Ok(None);
        }
        get(&row, "data").map(Some)
    }

    /// Removes the row under (`kind`, `token_sha256`), if any (a sign-out).
    pub async fn web_state_delete(&self, kind: &str, token_sha256: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_state WHERE kind = $1 AND token_sha256 = $2")
            .bind(kind)
            .bind(token_sha256)
            .execute(&self.pool)
            .await
            .context("deleting web state")?;
        Ok(())
    }
}
