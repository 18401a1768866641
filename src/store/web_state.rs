//! Web sign-in state that every node must see: staff web sessions, passkey ceremonies (migration 0006)
//! and vendors' passkey links.
//!
//! Rows are keyed by a kind and the SHA-256 of the token the browser holds, carry JSON the web crate
//! writes, and lapse at `expires_at`. Like node heartbeats this is bookkeeping, not a decision, so it does
//! not go through an audited `Tx`: the sign-ins and changes it serves are audited where they happen.

use super::{Context, Result, Store, StoreError, Tx, get};
use crate::model::UnixTime;
use chaperone_web_approval::StateKind;

/// Largest `data` accepted: a session is a few hundred bytes, a passkey ceremony a few KiB. Anything
/// bigger came from somewhere it should not.
pub const MAX_WEB_STATE: usize = 64 * 1024;

impl Store {
    /// Stores `data` as a new row of `kind` (see [`Store::web_state_put`]) with the kind's rules: at
    /// most [`StateKind::max_held`] rows, and of `subject`'s at most [`StateKind::per_subject`] (the
    /// newest; trimmed after the insert, never the row just stored, so two stored at once still leave
    /// that many). The one place the pools' limits are applied.
    pub async fn web_state_put_kind(
        &self,
        kind: StateKind,
        token_sha256: &str,
        subject: Option<&str>,
        data: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<()> {
        self.web_state_put(
            kind.as_str(),
            token_sha256,
            subject,
            data,
            expires_at,
            now,
            kind.max_held(),
        )
        .await?;
        if let (Some(subject), Some(keep)) = (subject, kind.per_subject()) {
            self.web_state_trim_subject(kind.as_str(), subject, token_sha256, keep)
                .await?;
        }
        Ok(())
    }

    /// Stores `data` under a new (`kind`, `token_sha256`) until `expires_at`; `subject` names the staff
    /// member a session belongs to. Refuses `data` over [`MAX_WEB_STATE`].
    ///
    /// First deletes every row that has lapsed by `now`; then, if `kind` still holds `max` rows or more,
    /// the ones closest to lapsing, so a flood of sign-in starts cannot grow the table without bound.
    #[allow(
        clippy::too_many_arguments,
        reason = "one row's columns plus the clock and the cap"
    )]
    pub async fn web_state_put(
        &self,
        kind: &str,
        token_sha256: &str,
        subject: Option<&str>,
        data: &str,
        expires_at: UnixTime,
        now: UnixTime,
        max: u32,
    ) -> Result<()> {
        too_big(data)?;
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
            "INSERT INTO web_state (kind, token_sha256, subject, data, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(kind)
        .bind(token_sha256)
        .bind(subject)
        .bind(data)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .context("storing web state")?;
        Ok(())
    }

    /// Replaces the data of an existing row that has not lapsed by `now`, keeping its expiry; never
    /// creates one, so a row deleted meanwhile (a sign-out) stays deleted. Returns whether it did.
    pub async fn web_state_replace(
        &self,
        kind: &str,
        token_sha256: &str,
        data: &str,
        now: UnixTime,
    ) -> Result<bool> {
        too_big(data)?;
        let done = sqlx::query(
            "UPDATE web_state SET data = $3 WHERE kind = $1 AND token_sha256 = $2 AND expires_at > $4",
        )
        .bind(kind)
        .bind(token_sha256)
        .bind(data)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("replacing web state")?;
        Ok(done.rows_affected() > 0)
    }

    /// [`Store::web_state_replace`] only while the row still holds `expected` (compare and swap): of
    /// two writers that read the same row, one wins and the other learns it lost.
    pub async fn web_state_replace_if(
        &self,
        kind: &str,
        token_sha256: &str,
        expected: &str,
        data: &str,
        now: UnixTime,
    ) -> Result<bool> {
        too_big(data)?;
        let done = sqlx::query(
            "UPDATE web_state SET data = $3 \
             WHERE kind = $1 AND token_sha256 = $2 AND data = $4 AND expires_at > $5",
        )
        .bind(kind)
        .bind(token_sha256)
        .bind(data)
        .bind(expected)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("replacing web state")?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes `subject`'s rows of `kind` but `keep`: the row `newest` (just stored) and those of the
    /// others that lapse last. One subject cannot fill the kind's shared cap and push everyone else's
    /// rows out. One statement, with no count read before it: two rows stored for one subject at once
    /// each keep the other (both lapse last), where a count taken before the other's trim would have
    /// made each delete one row too many.
    pub async fn web_state_trim_subject(
        &self,
        kind: &str,
        subject: &str,
        newest: &str,
        keep: u32,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM web_state WHERE kind = $1 AND subject = $2 AND token_sha256 <> $3 \
             AND token_sha256 NOT IN \
             (SELECT token_sha256 FROM web_state WHERE kind = $1 AND subject = $2 \
             AND token_sha256 <> $3 ORDER BY expires_at DESC, token_sha256 LIMIT $4)",
        )
        .bind(kind)
        .bind(subject)
        .bind(newest)
        .bind(i64::from(keep.saturating_sub(1)))
        .execute(&self.pool)
        .await
        .context("trimming web state")?;
        Ok(())
    }

    /// The data under (`kind`, `token_sha256`) unless it has lapsed by `now`. With `extend`
    /// (`(to, if_before)`), its expiry moves to `to` when it is before `if_before` (a sliding idle
    /// time-out that writes at most about once a minute per session, not on every request).
    pub async fn web_state_get(
        &self,
        kind: &str,
        token_sha256: &str,
        now: UnixTime,
        extend: Option<(UnixTime, UnixTime)>,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT data, expires_at FROM web_state \
             WHERE kind = $1 AND token_sha256 = $2 AND expires_at > $3",
        )
        .bind(kind)
        .bind(token_sha256)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .context("reading web state")?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: UnixTime = get(&row, "expires_at")?;
        if let Some((to, if_before)) = extend
            && expires_at < if_before
        {
            // Still only a row that exists and has not lapsed: a sign-out in between wins.
            sqlx::query(
                "UPDATE web_state SET expires_at = $4 \
                 WHERE kind = $1 AND token_sha256 = $2 AND expires_at > $3",
            )
            .bind(kind)
            .bind(token_sha256)
            .bind(now)
            .bind(to)
            .execute(&self.pool)
            .await
            .context("extending web state")?;
        }
        get(&row, "data").map(Some)
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

impl Tx {
    /// Ends every web session of staff member `subject` (they were disabled), on every node.
    pub async fn end_web_sessions_of(&mut self, subject: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM web_state WHERE kind = 'session' AND subject = $1")
            .bind(subject)
            .execute(&mut *self.tx)
            .await
            .context("ending a staff member's web sessions")?;
        Ok(done.rows_affected())
    }
}

fn too_big(data: &str) -> Result<()> {
    if data.len() > MAX_WEB_STATE {
        return Err(StoreError::TooLarge(format!(
            "web sign-in state of {} bytes refused (at most {MAX_WEB_STATE})",
            data.len()
        )));
    }
    Ok(())
}
