//! The webhook's place in the audit log: one row, claimed by one node at a time (a lease).
//!
//! These writes are bookkeeping, not decisions, so they do not go through an audited [`Tx`]; giving an
//! event up is audited by the caller (`webhook.undelivered`).

use super::{Context, CursorClaim, Result, Store, get};
use crate::model::UnixTime;

impl Store {
    /// Takes or renews the delivery lease for `holder` until `lease_until`, or `None` while another node
    /// holds a live lease. The first claim, and the first after `endpoint` changed, start at the current
    /// end of the audit log: history is not replayed to a new receiver.
    pub async fn claim_webhook_cursor(
        &self,
        holder: &str,
        endpoint: &str,
        now: UnixTime,
        lease_until: UnixTime,
    ) -> Result<Option<CursorClaim>> {
        sqlx::query(
            "INSERT INTO webhook_cursor (id, endpoint, delivered_seq, holder, lease_until) \
             SELECT 1, $1, seq, NULL, 0 FROM audit_head WHERE id = 1 ON CONFLICT (id) DO NOTHING",
        )
        .bind(endpoint)
        .execute(&self.pool)
        .await
        .context("creating the webhook cursor")?;
        let claimed = sqlx::query(
            "UPDATE webhook_cursor SET holder = $1, lease_until = $2 \
             WHERE id = 1 AND (holder = $1 OR holder IS NULL OR lease_until < $3)",
        )
        .bind(holder)
        .bind(lease_until)
        .bind(now)
        .execute(&self.pool)
        .await
        .context("claiming the webhook lease")?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT endpoint, delivered_seq FROM webhook_cursor WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the webhook cursor")?;
        let (was, seq): (String, i64) = (get(&row, "endpoint")?, get(&row, "delivered_seq")?);
        if was == endpoint {
            return Ok(Some(CursorClaim {
                seq,
                moved_from: None,
            }));
        }
        sqlx::query(
            "UPDATE webhook_cursor SET endpoint = $1, \
             delivered_seq = (SELECT seq FROM audit_head WHERE id = 1) WHERE id = 1 AND holder = $2",
        )
        .bind(endpoint)
        .bind(holder)
        .execute(&self.pool)
        .await
        .context("moving the webhook cursor to a new endpoint")?;
        let row = sqlx::query("SELECT delivered_seq FROM webhook_cursor WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .context("reading the webhook cursor")?;
        Ok(Some(CursorClaim {
            seq: get(&row, "delivered_seq")?,
            moved_from: Some(seq),
        }))
    }

    /// Records that everything up to `seq` was handled. `false` when `holder` lost the lease meanwhile.
    pub async fn advance_webhook_cursor(&self, holder: &str, seq: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhook_cursor SET delivered_seq = $2 \
             WHERE id = 1 AND holder = $1 AND delivered_seq < $2",
        )
        .bind(holder)
        .bind(seq)
        .execute(&self.pool)
        .await
        .context("advancing the webhook cursor")?
        .rows_affected();
        Ok(done == 1)
    }

    /// Gives the lease up (at shutdown), so another node takes over at once.
    pub async fn release_webhook_cursor(&self, holder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_cursor SET holder = NULL, lease_until = 0 WHERE id = 1 AND holder = $1",
        )
        .bind(holder)
        .execute(&self.pool)
        .await
        .context("releasing the webhook lease")?;
        Ok(())
    }
}
