//! Where each consumer of the audit log got to (the IHE ATNA export; the webhook keeps its own row in
//! `webhook.rs`): one row per consumer, claimed by one node at a time with a lease.
//!
//! These writes are bookkeeping, not decisions, so they do not go through an audited [`Tx`](super::Tx);
//! what a consumer gives up or moves is audited by the caller.

use super::{Context, Result, Store, get};
use crate::model::UnixTime;

/// A lease taken or renewed on a consumer's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorClaim {
    /// The last audit `seq` the consumer handled.
    pub seq: i64,
    /// The cursor belonged to another endpoint and was moved to the end of the audit log for this one:
    /// where that endpoint got to (events after it, up to `seq`, are not sent to this one).
    pub moved_from: Option<i64>,
}

impl Store {
    /// Takes or renews `name`'s lease for `holder` until `lease_until`; `None` while another node holds a
    /// live one. The first claim, and the first after `endpoint` changed, start at the current end of the
    /// audit log (history is exported with `chaperone audit export`, not replayed to a new receiver).
    pub async fn claim_cursor(
        &self,
        name: &str,
        holder: &str,
        endpoint: &str,
        now: UnixTime,
        lease_until: UnixTime,
    ) -> Result<Option<CursorClaim>> {
        sqlx::query(
            "INSERT INTO audit_cursors (name, endpoint, seq, holder, lease_until) \
             SELECT $1, $2, seq, NULL, 0 FROM audit_head WHERE id = 1 ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(endpoint)
        .execute(&self.pool)
        .await
        .context("creating an audit cursor")?;
        let claimed = sqlx::query(
            "UPDATE audit_cursors SET holder = $2, lease_until = $3 \
             WHERE name = $1 AND (holder = $2 OR holder IS NULL OR lease_until < $4)",
        )
        .bind(name)
        .bind(holder)
        .bind(lease_until)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("claiming an audit cursor's lease")?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT endpoint, seq FROM audit_cursors WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .context("reading an audit cursor")?;
        let (was, seq): (String, i64) = (get(&row, "endpoint")?, get(&row, "seq")?);
        if was == endpoint {
            return Ok(Some(CursorClaim {
                seq,
                moved_from: None,
            }));
        }
        sqlx::query(
            "UPDATE audit_cursors SET endpoint = $3, seq = (SELECT seq FROM audit_head WHERE id = 1) \
             WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .bind(endpoint)
        .execute(&self.pool)
        .await
        .context("moving an audit cursor to a new endpoint")?;
        let row = sqlx::query("SELECT seq FROM audit_cursors WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .context("reading an audit cursor")?;
        Ok(Some(CursorClaim {
            seq: get(&row, "seq")?,
            moved_from: Some(seq),
        }))
    }

    /// Records that `name` handled everything up to `seq`. `false` when `holder` lost the lease meanwhile.
    pub async fn advance_cursor(&self, name: &str, holder: &str, seq: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE audit_cursors SET seq = $3 WHERE name = $1 AND holder = $2 AND seq < $3",
        )
        .bind(name)
        .bind(holder)
        .bind(seq)
        .execute(&self.pool)
        .await
        .context("advancing an audit cursor")?
        .rows_affected();
        Ok(done == 1)
    }

    /// Gives `name`'s lease up (at shutdown), so another node takes over at once.
    pub async fn release_cursor(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE audit_cursors SET holder = NULL, lease_until = 0 WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .execute(&self.pool)
        .await
        .context("releasing an audit cursor's lease")?;
        Ok(())
    }
}
