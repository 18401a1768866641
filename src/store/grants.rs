//! Grants (the access requests they come from live in `requests.rs`). Whether a grant is active is decided by
//! `policy`; this module only stores and lists them.

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::{Context, Result, Store, StoreError, Tx, get, split_list};
use crate::model::{GrantRow, UnixTime};

const GRANT_SELECT: &str = "SELECT g.id, v.name AS vendor, a.name AS asset, g.services, g.starts_at, \
     g.ends_at, g.reason, g.issued_by, g.request_id, g.revoked_at, g.revoked_by, g.revoke_reason, g.created_at \
     FROM grants g JOIN vendors v ON v.id = g.vendor_id JOIN assets a ON a.id = g.asset_id";

fn grant(row: &AnyRow) -> Result<GrantRow> {
    Ok(GrantRow {
        id: get(row, "id")?,
        vendor: get(row, "vendor")?,
        asset: get(row, "asset")?,
        services: split_list(&get::<String>(row, "services")?),
        starts_at: get(row, "starts_at")?,
        ends_at: get(row, "ends_at")?,
        reason: get(row, "reason")?,
        issued_by: get(row, "issued_by")?,
        request_id: get(row, "request_id")?,
        revoked_at: get(row, "revoked_at")?,
        revoked_by: get(row, "revoked_by")?,
        revoke_reason: get(row, "revoke_reason")?,
        created_at: get(row, "created_at")?,
    })
}

/// What a staff-issued grant records.
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    pub vendor_id: i64,
    pub asset_id: i64,
    pub services: &'a [String],
    pub starts_at: UnixTime,
    pub ends_at: UnixTime,
    pub reason: &'a str,
    pub issued_by: &'a str,
    pub request_id: Option<i64>,
}

impl Store {
    /// All grants, newest first; with `only_open`, those not revoked and not yet ended at `now`.
    pub async fn grants(&self, only_open_at: Option<UnixTime>) -> Result<Vec<GrantRow>> {
        let rows = match only_open_at {
            Some(now) => sqlx::query(AssertSqlSafe(format!(
                "{GRANT_SELECT} WHERE g.revoked_at IS NULL AND g.ends_at > $1 ORDER BY g.id DESC"
            )))
            .bind(now)
            .fetch_all(&self.pool)
            .await,
            None => {
                sqlx::query(AssertSqlSafe(format!("{GRANT_SELECT} ORDER BY g.id DESC")))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .context("listing grants")?;
        rows.iter().map(grant).collect()
    }

    /// The grants among `ids` that exist (in no particular order): one query per 500 ids, for the
    /// watcher's re-check of every live session's grant.
    pub async fn grants_by_id(&self, ids: &[i64]) -> Result<Vec<GrantRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let placeholders = super::placeholders(chunk.len());
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "{GRANT_SELECT} WHERE g.id IN ({placeholders})"
            )));
            for id in chunk {
                query = query.bind(*id);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .context("re-reading grants")?;
            for row in &rows {
                out.push(grant(row)?);
            }
        }
        Ok(out)
    }

    /// A vendor's grants that are not revoked and not ended at `now` (possibly not yet started).
    pub async fn open_grants_of(&self, vendor_id: i64, now: UnixTime) -> Result<Vec<GrantRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{GRANT_SELECT} WHERE g.vendor_id = $1 AND g.revoked_at IS NULL AND g.ends_at > $2 \
             ORDER BY g.ends_at"
        )))
        .bind(vendor_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .context("listing a vendor's grants")?;
        rows.iter().map(grant).collect()
    }

    pub async fn grant(&self, id: i64) -> Result<Option<GrantRow>> {
        let row = sqlx::query(AssertSqlSafe(format!("{GRANT_SELECT} WHERE g.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a grant")?;
        row.as_ref().map(grant).transpose()
    }

    pub async fn require_grant(&self, id: i64) -> Result<GrantRow> {
        self.grant(id).await?.ok_or_else(|| StoreError::NotFound {
            kind: "grant",
            name: id.to_string(),
        })
    }
}

impl Tx {
    pub async fn insert_grant(&mut self, g: &NewGrant<'_>, now: UnixTime) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO grants (vendor_id, asset_id, services, starts_at, ends_at, reason, issued_by, request_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(g.vendor_id)
        .bind(g.asset_id)
        .bind(g.services.join(","))
        .bind(g.starts_at)
        .bind(g.ends_at)
        .bind(g.reason)
        .bind(g.issued_by)
        .bind(g.request_id)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await
        .context("adding a grant")?;
        get(&row, "id")
    }

    /// Revokes a grant; false when it was already revoked.
    pub async fn revoke_grant(
        &mut self,
        id: i64,
        by: &str,
        reason: &str,
        now: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE grants SET revoked_at = $1, revoked_by = $2, revoke_reason = $3 \
             WHERE id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("revoking a grant")?;
        Ok(done.rows_affected() > 0)
    }
}
