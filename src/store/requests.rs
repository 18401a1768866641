//! Access requests and their approvals. What may be approved, by whom, and when a request becomes a
//! grant is decided by `policy::requests`; this module only stores and lists.

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Context, Result, Store, Tx, get, get_parsed, split_list};
use crate::model::{AccessRequest, Approval, Criticality, RequestStatus, UnixTime};

const REQUEST_SELECT: &str = "SELECT r.id, v.name AS vendor, v.org AS org, a.name AS asset, a.zone, \
     a.purpose, a.criticality, r.services, r.duration_secs, r.reason, r.status, r.created_at, r.expires_at, \
     r.decided_at, r.decided_by, r.decision_reason, r.grant_id \
     FROM access_requests r JOIN vendors v ON v.id = r.vendor_id JOIN assets a ON a.id = r.asset_id";

fn request(row: &AnyRow) -> Result<AccessRequest> {
    Ok(AccessRequest {
        id: get(row, "id")?,
        vendor: get(row, "vendor")?,
        org: get(row, "org")?,
        asset: get(row, "asset")?,
        zone: get(row, "zone")?,
        purpose: get(row, "purpose")?,
        criticality: get_parsed::<Criticality>(row, "criticality")?,
        services: split_list(&get::<String>(row, "services")?),
        duration_secs: get(row, "duration_secs")?,
        reason: get(row, "reason")?,
        status: get_parsed::<RequestStatus>(row, "status")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        decided_at: get(row, "decided_at")?,
        decided_by: get(row, "decided_by")?,
        decision_reason: get(row, "decision_reason")?,
        grant_id: get(row, "grant_id")?,
        approvals: Vec::new(),
    })
}

fn approval(row: &AnyRow) -> Result<Approval> {
    Ok(Approval {
        approver: get(row, "approver")?,
        method: get(row, "method")?,
        services: split_list(&get::<String>(row, "services")?),
        duration_secs: get(row, "duration_secs")?,
        at: get(row, "at")?,
    })
}

/// Reads one request and its approvals on `conn` (a pool connection or a transaction).
async fn load(conn: &mut AnyConnection, id: i64) -> Result<Option<AccessRequest>> {
    let row = sqlx::query(AssertSqlSafe(format!("{REQUEST_SELECT} WHERE r.id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading an access request")?;
    let Some(row) = row else { return Ok(None) };
    let mut r = request(&row)?;
    r.approvals = load_approvals(conn, id).await?;
    Ok(Some(r))
}

async fn load_approvals(conn: &mut AnyConnection, id: i64) -> Result<Vec<Approval>> {
    let rows = sqlx::query(
        "SELECT approver, method, services, duration_secs, at FROM request_approvals \
         WHERE request_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .context("reading approvals")?;
    rows.iter().map(approval).collect()
}

/// What a vendor asks for.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub vendor_id: i64,
    pub asset_id: i64,
    pub services: &'a [String],
    pub duration_secs: i64,
    pub reason: &'a str,
    pub expires_at: UnixTime,
}

/// Which decided requests to list ([`Store::decided_requests`]).
#[derive(Debug, Clone, Default)]
pub struct DecidedFilter {
    pub vendor: Option<String>,
    pub asset: Option<String>,
    pub outcome: DecidedOutcome,
}

/// A decided request's outcome, as the Decisions page filters by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecidedOutcome {
    /// Every decided request.
    #[default]
    Any,
    /// Approved, as asked or narrowed.
    Approved,
    /// Approved with less time or fewer services than asked: the grant differs from the request.
    Narrowed,
    Denied,
    Expired,
}

impl Store {
    /// Decided requests (not pending), the latest decision first, with their approvals; `limit` from
    /// `offset`. "Narrowed" compares the grant the approval issued with the request (services in the
    /// request's order, which an approval keeps; the grant's length).
    pub async fn decided_requests(
        &self,
        f: &DecidedFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<AccessRequest>> {
        let narrowed = "(g.services <> r.services OR (g.ends_at - g.starts_at) < r.duration_secs)";
        let outcome = match f.outcome {
            DecidedOutcome::Any => "r.status <> 'pending'".to_owned(),
            DecidedOutcome::Approved => "r.status = 'approved'".to_owned(),
            DecidedOutcome::Narrowed => format!("r.status = 'approved' AND {narrowed}"),
            DecidedOutcome::Denied => "r.status = 'denied'".to_owned(),
            DecidedOutcome::Expired => "r.status = 'expired'".to_owned(),
        };
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("connecting to list decided requests")?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{REQUEST_SELECT} LEFT JOIN grants g ON g.id = r.grant_id \
             WHERE {outcome} AND ($1 = '' OR v.name = $1) AND ($2 = '' OR a.name = $2) \
             ORDER BY COALESCE(r.decided_at, r.created_at) DESC, r.id DESC LIMIT $3 OFFSET $4"
        )))
        .bind(f.vendor.clone().unwrap_or_default())
        .bind(f.asset.clone().unwrap_or_default())
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *conn)
        .await
        .context("listing decided requests")?;
        with_approvals(&mut conn, &rows).await
    }

    /// The requests waiting for a decision at `now`, the one waiting longest first, at most `limit`;
    /// and how many wait in all. Lapsed ones (about to be expired) are neither listed nor counted.
    pub async fn pending_requests(
        &self,
        now: UnixTime,
        limit: i64,
    ) -> Result<(Vec<AccessRequest>, i64)> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("connecting to list pending requests")?;
        let waiting = "r.status = 'pending' AND (r.expires_at IS NULL OR r.expires_at > $1)";
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{REQUEST_SELECT} WHERE {waiting} ORDER BY r.id LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .context("listing pending requests")?;
        let total: i64 = get(
            &sqlx::query(AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n FROM access_requests r WHERE {waiting}"
            )))
            .bind(now)
            .fetch_one(&mut *conn)
            .await
            .context("counting pending requests")?,
            "n",
        )?;
        Ok((with_approvals(&mut conn, &rows).await?, total))
    }

    /// One request with its approvals.
    pub async fn request(&self, id: i64) -> Result<Option<AccessRequest>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("connecting to read a request")?;
        load(&mut conn, id).await
    }

    /// Requests, newest first: all of them, or those with `status`; at most `limit`. With `vendor`, only
    /// that vendor's.
    pub async fn requests(
        &self,
        status: Option<RequestStatus>,
        vendor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccessRequest>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("connecting to list requests")?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{REQUEST_SELECT} WHERE ($1 = '' OR r.status = $1) AND ($2 = '' OR v.name = $2) \
             ORDER BY r.id DESC LIMIT $3"
        )))
        .bind(status.map(|s| s.to_string()).unwrap_or_default())
        .bind(vendor.unwrap_or_default().to_owned())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .context("listing access requests")?;
        with_approvals(&mut conn, &rows).await
    }
}

/// The requests of `rows`, each with its approvals.
async fn with_approvals(conn: &mut AnyConnection, rows: &[AnyRow]) -> Result<Vec<AccessRequest>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut r = request(row)?;
        r.approvals = load_approvals(conn, r.id).await?;
        out.push(r);
    }
    Ok(out)
}

impl Tx {
    pub async fn insert_request(&mut self, r: &NewRequest<'_>, now: UnixTime) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO access_requests (vendor_id, asset_id, services, duration_secs, reason, status, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) RETURNING id",
        )
        .bind(r.vendor_id)
        .bind(r.asset_id)
        .bind(r.services.join(","))
        .bind(r.duration_secs)
        .bind(r.reason)
        .bind(now)
        .bind(r.expires_at)
        .fetch_one(&mut *self.tx)
        .await
        .context("filing an access request")?;
        get(&row, "id")
    }

    /// How many of `vendor_id`'s requests wait for a decision at `now` (lapsed ones are not counted:
    /// they are about to be expired).
    pub async fn pending_requests_of(&mut self, vendor_id: i64, now: UnixTime) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM access_requests WHERE vendor_id = $1 AND status = 'pending' \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(vendor_id)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await
        .context("counting pending requests")?;
        get(&row, "n")
    }

    /// Reads a request for a decision, holding its row: on PostgreSQL the no-op UPDATE takes the row lock,
    /// so two approvers deciding at once queue (SQLite's `BEGIN IMMEDIATE` already serialises writers).
    pub async fn lock_request(&mut self, id: i64) -> Result<Option<AccessRequest>> {
        sqlx::query("UPDATE access_requests SET status = status WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .context("locking an access request")?;
        load(&mut self.tx, id).await
    }

    pub async fn insert_approval(&mut self, request_id: i64, a: &Approval) -> Result<()> {
        sqlx::query(
            "INSERT INTO request_approvals (request_id, approver, method, services, duration_secs, at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(request_id)
        .bind(&a.approver)
        .bind(&a.method)
        .bind(a.services.join(","))
        .bind(a.duration_secs)
        .bind(a.at)
        .execute(&mut *self.tx)
        .await
        .context("recording an approval")?;
        Ok(())
    }

    /// Closes a pending request as `status`; false when it was no longer pending.
    pub async fn decide_request(
        &mut self,
        id: i64,
        status: RequestStatus,
        by: &str,
        reason: Option<&str>,
        grant_id: Option<i64>,
        now: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE access_requests SET status = $1, decided_at = $2, decided_by = $3, \
             decision_reason = $4, grant_id = $5 WHERE id = $6 AND status = 'pending'",
        )
        .bind(status.to_string())
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(grant_id)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("deciding an access request")?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks pending requests whose time ran out as expired; returns the ids this transaction expired.
    /// Each is a conditional update of a request still pending: on PostgreSQL another node, or an
    /// approval committed meanwhile, may have decided one since the read, and it is not returned (so
    /// not audited as expired).
    pub async fn expire_requests(&mut self, now: UnixTime) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM access_requests WHERE status = 'pending' AND expires_at IS NOT NULL \
             AND expires_at <= $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await
        .context("finding lapsed requests")?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("id"))
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("reading lapsed request ids")?;
        let mut expired = Vec::with_capacity(ids.len());
        for id in ids {
            if self
                .decide_request(
                    id,
                    RequestStatus::Expired,
                    "system",
                    Some("nobody decided in time"),
                    None,
                    now,
                )
                .await?
            {
                expired.push(id);
            }
        }
        Ok(expired)
    }
}
