//! Access requests: filing ([`file`]), deciding ([`decide`]: approve as asked, for less, or deny) and
//! lapsing ([`expire_due`]). Approval is where a request becomes a grant row, so the four-eyes rules live
//! here and nowhere else:
//! - nobody approves a request they filed (an approver whose name is the vendor's is refused too);
//! - an approver approves a request once; a `critical` asset needs two approvals by two approvers;
//! - an approval may narrow the request (less time, fewer services), never widen it; with two approvals
//!   the grant gets what both allowed (the shorter time, the common services);
//! - the grant's clock starts at the final approval, not at the request;
//! - a request nobody decided within `policy.request_ttl` expires.
//!
//! Every change is audited with the approver and how they signed in, and announced on [`Events`].

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::events::{Change, Events};
use crate::audit::AuditEvent;
use crate::config::{PolicyConfig, format_duration};
use crate::model::{
    AccessRequest, Approval, Criticality, RequestStatus, Role, UnixTime, Vendor, check_text,
};
use crate::store::{NewGrant, NewRequest, Store, StoreError};

/// The longest reason accepted, in bytes.
pub const MAX_REASON: usize = 500;

/// Why a vendor's request was not filed. [`FileRefusal::vendor_message`] is the one line they see.
#[derive(Debug, thiserror::Error)]
pub enum FileRefusal {
    /// The asset does not exist or has no such service. Read the same either way.
    #[error("{}", .audit)]
    Unknown {
        asset: String,
        services: Vec<String>,
        /// For the audit log only.
        audit: String,
    },
    /// Longer than the asset's zone allows.
    #[error("asks for {} but at most {} is allowed", format_duration(*.asked), format_duration(*.max))]
    TooLong { asked: Duration, max: Duration },
    /// The reason is empty, too long or holds control characters.
    #[error("{0}")]
    BadReason(String),
    #[error("vendor disabled")]
    VendorDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FileRefusal {
    pub fn vendor_message(&self) -> String {
        match self {
            FileRefusal::Unknown {
                asset, services, ..
            } => format!(
                "no asset {asset} with service {} can be requested — check the names with the hospital's staff",
                services.join(",")
            ),
            FileRefusal::TooLong { max, .. } => format!(
                "that is longer than allowed: ask for at most {} (e.g. --for {})",
                format_duration(*max),
                format_duration(*max)
            ),
            FileRefusal::BadReason(m) => m.clone(),
            FileRefusal::VendorDisabled => {
                "your account is disabled; contact the hospital's staff".into()
            }
            FileRefusal::Store(_) => {
                "the bastion cannot file requests right now; try again in a minute".into()
            }
        }
    }
}

/// Files `vendor`'s request; returns it as stored (pending).
#[allow(clippy::too_many_arguments)] // each is a distinct part of the request; a struct would only rename them
pub async fn file(
    store: &Store,
    events: &Events,
    limits: &PolicyConfig,
    now: UnixTime,
    vendor: &Vendor,
    asset_name: &str,
    services: &[String],
    duration: Duration,
    reason: &str,
) -> Result<AccessRequest, FileRefusal> {
    if !vendor.enabled {
        return Err(FileRefusal::VendorDisabled);
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(FileRefusal::BadReason(
            "a reason is required (--reason \"ticket and what you will do\")".into(),
        ));
    }
    check_text("reason", reason, MAX_REASON).map_err(FileRefusal::BadReason)?;
    let asset = store.asset(asset_name).await?;
    let unknown = |audit: String| FileRefusal::Unknown {
        asset: asset_name.to_owned(),
        services: services.to_vec(),
        audit,
    };
    let Some(asset) = asset else {
        return Err(unknown(format!("no such asset {asset_name}")));
    };
    // A port number names the service on that port (tunnel refusals print the port the vendor used).
    let by_port: Vec<String> = services
        .iter()
        .map(|s| match s.parse::<u16>() {
            Ok(port) => asset
                .services
                .iter()
                .find(|x| x.port == port)
                .map_or_else(|| s.clone(), |x| x.name.clone()),
            Err(_) => s.clone(),
        })
        .collect();
    let services = by_port.as_slice();
    if services.is_empty() {
        return Err(unknown("no service named".into()));
    }
    if let Some(missing) = services.iter().find(|s| asset.service(s).is_none()) {
        return Err(unknown(format!(
            "asset {asset_name} has no service {missing}"
        )));
    }
    let max = limits.max_request_in(&asset.zone);
    if duration > max {
        return Err(FileRefusal::TooLong {
            asked: duration,
            max,
        });
    }
    let duration_secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
    let ttl = i64::try_from(limits.request_ttl.as_secs()).unwrap_or(i64::MAX);
    let mut tx = store.begin().await?;
    let id = tx
        .insert_request(
            &NewRequest {
                vendor_id: vendor.id,
                asset_id: asset.id,
                services,
                duration_secs,
                reason,
                expires_at: now.saturating_add(ttl),
            },
            now,
        )
        .await?;
    tx.audit(
        AuditEvent::new(
            format!("vendor:{}", vendor.name),
            "request.file",
            format!("request:{id}"),
            json!({"asset": asset.name, "services": services, "duration_secs": duration_secs, "reason": reason}),
        ),
        now,
    )
    .await?;
    tx.commit("request.file").await?;
    events.send(Change::Request(id));
    store
        .request(id)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "request",
            name: id.to_string(),
        })
        .map_err(FileRefusal::from)
}

/// How a staff member proved who they are for this sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Passkey,
    Totp,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::Passkey => "passkey",
            AuthMethod::Totp => "totp",
        })
    }
}

/// A signed-in staff member acting on a request.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    pub role: Role,
    pub method: AuthMethod,
}

impl Approver {
    pub fn actor(&self) -> String {
        format!("staff:{}", self.name)
    }
}

/// What an approver decided.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Approve; `None` keeps what was asked.
    Approve {
        services: Option<Vec<String>>,
        duration_secs: Option<i64>,
    },
    Deny {
        reason: String,
    },
}

/// What a decision led to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A grant was issued, starting now.
    Granted {
        grant_id: i64,
        ends_at: UnixTime,
    },
    /// Recorded; the asset is critical and a second approver must approve too.
    AwaitingSecondApproval,
    Denied,
}

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no request #{0}")]
    NotFound(i64),
    #[error("request #{id} is already {status}")]
    NotPending { id: i64, status: RequestStatus },
    #[error("you cannot approve your own request")]
    SelfApproval,
    #[error("you have already approved this request; a second approver must approve it")]
    AlreadyApproved,
    #[error("your role ({0}) cannot decide requests")]
    NotAnApprover(Role),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Approves or denies request `id` as `approver` at `now`.
pub async fn decide(
    store: &Store,
    events: &Events,
    now: UnixTime,
    approver: &Approver,
    id: i64,
    decision: Decision,
) -> Result<Outcome, DecideError> {
    if approver.role == Role::Auditor {
        return Err(DecideError::NotAnApprover(approver.role));
    }
    let mut tx = store.begin().await?;
    let request = tx
        .lock_request(id)
        .await?
        .ok_or(DecideError::NotFound(id))?;
    if request.status != RequestStatus::Pending {
        return Err(DecideError::NotPending {
            id,
            status: request.status,
        });
    }
    if request.expires_at.is_some_and(|t| t <= now) {
        return Err(DecideError::NotPending {
            id,
            status: RequestStatus::Expired,
        });
    }
    // Four eyes: staff and vendor accounts are separate, but a shared name is the same person until
    // proven otherwise.
    if approver.name == request.vendor {
        return Err(DecideError::SelfApproval);
    }
    let outcome = match decision {
        Decision::Deny { reason } => {
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(DecideError::Invalid("a denial needs a reason".into()));
            }
            check_text("reason", reason, MAX_REASON).map_err(DecideError::Invalid)?;
            tx.decide_request(
                id,
                RequestStatus::Denied,
                &approver.name,
                Some(reason),
                None,
                now,
            )
            .await?;
            tx.audit(
                AuditEvent::new(
                    approver.actor(),
                    "request.deny",
                    format!("request:{id}"),
                    json!({"reason": reason, "method": approver.method, "vendor": request.vendor, "asset": request.asset}),
                ),
                now,
            )
            .await?;
            Outcome::Denied
        }
        Decision::Approve {
            services,
            duration_secs,
        } => {
            if request
                .approvals
                .iter()
                .any(|a| a.approver == approver.name)
            {
                return Err(DecideError::AlreadyApproved);
            }
            let services = narrow_services(&request.services, services)?;
            let duration_secs = narrow_duration(request.duration_secs, duration_secs)?;
            let approval = Approval {
                approver: approver.name.clone(),
                method: approver.method.to_string(),
                services: services.clone(),
                duration_secs,
                at: now,
            };
            tx.insert_approval(id, &approval).await?;
            let needed = if request.criticality == Criticality::Critical {
                2
            } else {
                1
            };
            let mut all = request.approvals.clone();
            all.push(approval);
            let detail = json!({
                "method": approver.method, "services": services, "duration_secs": duration_secs,
                "vendor": request.vendor, "asset": request.asset,
                "approval": all.len(), "needed": needed,
            });
            if all.len() < needed {
                tx.audit(
                    AuditEvent::new(
                        approver.actor(),
                        "request.approve",
                        format!("request:{id}"),
                        detail,
                    ),
                    now,
                )
                .await?;
                Outcome::AwaitingSecondApproval
            } else {
                // What every approver allowed: the shortest time, the services all of them kept.
                let duration = all
                    .iter()
                    .map(|a| a.duration_secs)
                    .min()
                    .unwrap_or(duration_secs);
                let granted: Vec<String> = request
                    .services
                    .iter()
                    .filter(|s| all.iter().all(|a| a.services.contains(s)))
                    .cloned()
                    .collect();
                if granted.is_empty() {
                    return Err(DecideError::Invalid(
                        "the approvals have no service in common; deny or approve the same services".into(),
                    ));
                }
                let vendor = store.require_vendor(&request.vendor).await?;
                let asset = store.require_asset(&request.asset).await?;
                let ends_at = now.saturating_add(duration);
                let approvers: Vec<&str> = all.iter().map(|a| a.approver.as_str()).collect();
                let grant_id = tx
                    .insert_grant(
                        &NewGrant {
                            vendor_id: vendor.id,
                            asset_id: asset.id,
                            services: &granted,
                            starts_at: now,
                            ends_at,
                            reason: &request.reason,
                            issued_by: &format!("staff:{}", approvers.join("+")),
                            request_id: Some(id),
                        },
                        now,
                    )
                    .await?;
                tx.decide_request(
                    id,
                    RequestStatus::Approved,
                    &approvers.join(","),
                    None,
                    Some(grant_id),
                    now,
                )
                .await?;
                tx.audit(
                    AuditEvent::new(
                        approver.actor(),
                        "request.approve",
                        format!("request:{id}"),
                        detail,
                    ),
                    now,
                )
                .await?;
                tx.audit(
                    AuditEvent::new(
                        approver.actor(),
                        "grant.add",
                        format!("grant:{grant_id}"),
                        json!({"request": id, "vendor": request.vendor, "asset": request.asset,
                               "services": granted, "starts_at": now, "ends_at": ends_at, "approvers": approvers}),
                    ),
                    now,
                )
                .await?;
                Outcome::Granted { grant_id, ends_at }
            }
        }
    };
    tx.commit("request.decide").await?;
    events.send(Change::Request(id));
    if let Outcome::Granted { grant_id, .. } = &outcome {
        events.send(Change::Grant(*grant_id));
    }
    Ok(outcome)
}

/// The services an approval keeps: all that were asked (`None`), or a non-empty subset of them.
fn narrow_services(
    asked: &[String],
    chosen: Option<Vec<String>>,
) -> Result<Vec<String>, DecideError> {
    let Some(chosen) = chosen else {
        return Ok(asked.to_vec());
    };
    if chosen.is_empty() {
        return Err(DecideError::Invalid(
            "approve at least one service (or deny the request)".into(),
        ));
    }
    if let Some(extra) = chosen.iter().find(|s| !asked.contains(s)) {
        return Err(DecideError::Invalid(format!(
            "{} was not requested; an approval can only keep requested services",
            crate::model::truncate_for_display(extra, 40)
        )));
    }
    // Keep the request's order, without duplicates.
    Ok(asked
        .iter()
        .filter(|s| chosen.contains(s))
        .cloned()
        .collect())
}

/// The duration an approval allows: as asked (`None`), or shorter.
fn narrow_duration(asked: i64, chosen: Option<i64>) -> Result<i64, DecideError> {
    match chosen {
        None => Ok(asked),
        Some(d) if d <= 0 => Err(DecideError::Invalid("the duration must be positive".into())),
        Some(d) if d > asked => Err(DecideError::Invalid(format!(
            "{} is longer than the {} requested; an approval can only shorten it",
            format_duration(Duration::from_secs(d.unsigned_abs())),
            format_duration(Duration::from_secs(asked.unsigned_abs()))
        ))),
        Some(d) => Ok(d),
    }
}

/// Expires the pending requests whose time ran out; returns how many.
pub async fn expire_due(
    store: &Store,
    events: &Events,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let mut tx = store.begin().await?;
    let ids = tx.expire_requests(now).await?;
    if ids.is_empty() {
        // Nothing changed: nothing to audit or commit (dropping the transaction rolls back a no-op).
        return Ok(0);
    }
    for id in &ids {
        tx.audit(
            AuditEvent::new(
                "system",
                "request.expire",
                format!("request:{id}"),
                json!({}),
            ),
            now,
        )
        .await?;
    }
    tx.commit("request.expire").await?;
    for id in &ids {
        events.send(Change::Request(*id));
    }
    Ok(ids.len())
}

/// Revokes a grant as `by` (a staff member); false if it was already revoked.
pub async fn revoke_grant(
    store: &Store,
    events: &Events,
    now: UnixTime,
    by: &Approver,
    grant_id: i64,
    reason: &str,
) -> Result<bool, DecideError> {
    if by.role == Role::Auditor {
        return Err(DecideError::NotAnApprover(by.role));
    }
    let reason = reason.trim();
    let reason = if reason.is_empty() {
        "revoked by staff"
    } else {
        reason
    };
    check_text("reason", reason, MAX_REASON).map_err(DecideError::Invalid)?;
    let mut tx = store.begin().await?;
    if !tx.revoke_grant(grant_id, &by.actor(), reason, now).await? {
        return Ok(false);
    }
    tx.audit(
        AuditEvent::new(
            by.actor(),
            "grant.revoke",
            format!("grant:{grant_id}"),
            json!({"reason": reason, "method": by.method}),
        ),
        now,
    )
    .await?;
    tx.commit("grant.revoke").await?;
    events.send(Change::Grant(grant_id));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn approvals_narrow_and_never_widen() {
        let asked = v(&["ssh", "dicom"]);
        assert_eq!(narrow_services(&asked, None).unwrap(), asked);
        assert_eq!(
            narrow_services(&asked, Some(v(&["dicom"]))).unwrap(),
            v(&["dicom"])
        );
        assert!(narrow_services(&asked, Some(v(&["ssh", "hl7"]))).is_err());
        assert!(narrow_services(&asked, Some(vec![])).is_err());
        assert_eq!(narrow_duration(7200, None).unwrap(), 7200);
        assert_eq!(narrow_duration(7200, Some(3600)).unwrap(), 3600);
        assert!(narrow_duration(7200, Some(7201)).is_err());
        assert!(narrow_duration(7200, Some(0)).is_err());
    }
}
