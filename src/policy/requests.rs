//! Access requests: filing ([`file`]), deciding ([`decide`]: approve as asked, for less, or deny) and
//! lapsing ([`expire_due`]). The final approval issues the grant through [`super::grants`] (which owns
//! what a grant may be: an enabled vendor, at most 30 days), in the decision's transaction. Approval is
//! where a request becomes a grant, so the four-eyes rules live here and nowhere else:
//! - nobody approves a request they filed (an approver whose name is the vendor's is refused too);
//! - an approver approves a request once; a `critical` asset needs two approvals by two approvers;
//! - an approval may narrow the request (less time, fewer services), never widen it; with two approvals
//!   the grant gets what both allowed (the shorter time, the common services);
//! - the grant's clock starts at the final approval, not at the request;
//! - a request nobody decided within `policy.request_ttl` expires;
//! - a vendor has at most `policy.max_pending_per_vendor` requests waiting; the next is refused;
//! - a vendor asks only for assets their organisation services (`Asset::serviced_by`; another
//!   organisation's asset is refused as if it did not exist); the grant's issue checks it again;
//! - a disabled vendor's request cannot be approved (refused and audited as `grant.refused`; it can be
//!   denied).
//!
//! Every change is audited with the approver and how they signed in, and announced on [`Events`].

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::events::{Change, Events};
use super::grants::{self, Actor, GrantError, Issue, MAX_REASON, Source};
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::config::{PolicyConfig, format_duration};
use crate::model::{
    AccessRequest, Approval, Criticality, RequestStatus, Role, UnixTime, Vendor, check_text,
};
use crate::store::{EntryRef, NewRequest, Store, StoreError};

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
    /// The vendor already has `max` requests waiting for a decision.
    #[error("{pending} requests already pending, at most {max} per vendor")]
    TooManyPending { pending: i64, max: u32 },
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
            FileRefusal::TooManyPending { pending, .. } => format!(
                "you already have {pending} requests waiting for a decision, the most allowed: wait until one is decided or lapses, or ask the hospital's staff to deny one you no longer need"
            ),
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
    // Another organisation's device reads as one that does not exist: a vendor learns nothing of
    // the inventory beyond their own organisation's assets. (Asked again below of the vendor's row
    // as it is now, in case the directory moved them since they signed in.)
    let other_organisation = |org: &str| {
        unknown(format!(
            "asset {asset_name} is serviced by {}, the vendor is with {org}",
            asset.vendor_org.as_deref().unwrap_or_default(),
        ))
    };
    if !asset.serviced_by(&vendor.org) {
        return Err(other_organisation(&vendor.org));
    }
    // A port number names the service on that port (tunnel refusals print the port the vendor used);
    // a service named twice that way (`22,ssh`) is asked for once.
    let mut by_port: Vec<String> = Vec::with_capacity(services.len());
    for s in services {
        let name = match s.parse::<u16>() {
            Ok(port) => asset
                .services
                .iter()
                .find(|x| x.port == port)
                .map_or_else(|| s.clone(), |x| x.name.clone()),
            Err(_) => s.clone(),
        };
        if !by_port.contains(&name) {
            by_port.push(name);
        }
    }
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
    // Read again under the vendor's row lock: a vendor disabled since login files nothing, and two
    // requests filed at once (PostgreSQL) cannot both slip under the cap.
    let Some(locked) = tx
        .lock_vendor(&vendor.name)
        .await?
        .filter(|v| v.enabled && v.id == vendor.id)
    else {
        return Err(FileRefusal::VendorDisabled);
    };
    if !asset.serviced_by(&locked.org) {
        return Err(other_organisation(&locked.org));
    }
    let pending = tx.pending_requests_of(vendor.id, now).await?;
    if pending >= i64::from(limits.max_pending_per_vendor) {
        return Err(FileRefusal::TooManyPending {
            pending,
            max: limits.max_pending_per_vendor,
        });
    }
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
            Action::RequestFile,
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
    /// The directory entry behind the account (directory staff): four eyes are two people, so two
    /// accounts on one entry, or an account on the requesting vendor's entry, count as one.
    pub dn: Option<String>,
    /// That entry's stable id (`entryUUID`/`objectGUID`), when known: compared before the DN, which
    /// changes when the entry is moved or renamed.
    pub entry_id: Option<String>,
    /// Which zones' requests they may decide.
    pub zones: ZoneScope,
}

/// Which zones' requests an approver decides. A zone with an approver group of its own
/// (`[ldap.zones.X] approver`) has its requests decided by that group's members and admins only; a
/// member of zone groups and of no `[ldap.roles]` group decides those zones' requests only. Without
/// `[ldap]` (the default) every approver decides every zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneScope {
    /// Zones with an approver group of their own (the config's; the same for every approver).
    pub grouped: BTreeSet<String>,
    /// Zones whose group the approver is in.
    pub member_of: Vec<String>,
    /// In zone groups only: the approver decides `member_of` and nothing else.
    pub only_member_of: bool,
}

impl ZoneScope {
    /// May someone with `role` decide a request for an asset in `zone`?
    pub fn allows(&self, role: Role, zone: &str) -> bool {
        role == Role::Admin
            || self.member_of.iter().any(|z| z == zone)
            || (!self.only_member_of && !self.grouped.contains(zone))
    }
}

impl Approver {
    pub fn actor(&self) -> String {
        format!("staff:{}", self.name)
    }

    /// As [`grants`] records who issued or revoked a grant.
    pub fn as_actor(&self) -> Actor {
        Actor {
            id: self.actor(),
            method: Some(self.method.to_string()),
            role: Some(self.role),
            zones: Some(self.zones.clone()),
        }
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
        /// The services granted (all asked, or fewer when an approver narrowed them).
        services: Vec<String>,
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
    #[error("requests for zone {0} are decided by other approvers")]
    OtherZone(String),
    #[error("{0} may no longer decide requests: the account is disabled")]
    AccountDisabled(String),
    #[error("{0}")]
    Invalid(String),
    /// Refused and audited (`grant.refused`): a disabled vendor gets no grant.
    #[error(
        "vendor {0} is disabled, so this request cannot be approved: deny it, or ask an administrator to enable the vendor first"
    )]
    VendorDisabled(String),
    /// The grant could not be issued (see [`GrantError`]).
    #[error(transparent)]
    Grant(GrantError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GrantError> for DecideError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::VendorDisabled(vendor) => DecideError::VendorDisabled(vendor),
            GrantError::NotAllowed(role) => DecideError::NotAnApprover(role),
            GrantError::Store(s) => DecideError::Store(s),
            other => DecideError::Grant(other),
        }
    }
}

/// Approves or denies request `id` as `approver` at `now`. A refusal for who the approver is (their
/// own request, one they approved already, another zone's, a role or an account that does not decide)
/// is audited (`request.decision.refused`): an attempt to approve one's own request is what an auditor
/// most wants to find.
pub async fn decide(
    store: &Store,
    events: &Events,
    now: UnixTime,
    approver: &Approver,
    id: i64,
    decision: Decision,
) -> Result<Outcome, DecideError> {
    let what = match &decision {
        Decision::Approve { .. } => "approve",
        Decision::Deny { .. } => "deny",
    };
    let decided = decide_in(store, events, now, approver, id, decision).await;
    if let Err(e) = &decided
        && matches!(
            e,
            DecideError::SelfApproval
                | DecideError::AlreadyApproved
                | DecideError::NotAnApprover(_)
                | DecideError::OtherZone(_)
                | DecideError::AccountDisabled(_)
        )
    {
        let audited = async {
            let mut tx = store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    approver.actor(),
                    Action::RequestDecisionRefused,
                    format!("request:{id}"),
                    json!({"decision": what, "reason": e.to_string(), "method": approver.method}),
                ),
                now,
            )
            .await?;
            tx.commit("request.decision.refused").await
        };
        if let Err(err) = audited.await {
            tracing::error!(request = id, error = %err, "cannot audit a refused decision");
        }
    }
    decided
}

/// The acting approver as their account stands now, read in `tx` with its row held (a disable, a role
/// or zone change committed on another node meanwhile is seen here, or waits for this decision): the
/// session that signed them in says who they are, not what they may do. `Err` names why they may not
/// decide at all.
async fn standing_now(
    tx: &mut crate::store::Tx,
    approver: &Approver,
) -> Result<Approver, DecideError> {
    let disabled = || DecideError::AccountDisabled(approver.name.clone());
    let id = tx
        .staff_auth(&approver.name)
        .await?
        .ok_or_else(disabled)?
        .id;
    if !tx.hold_staff_user(id).await? {
        return Err(disabled());
    }
    let user = tx
        .staff_auth(&approver.name)
        .await?
        .filter(|u| u.enabled && u.id == id)
        .ok_or_else(disabled)?;
    if user.role == Role::Auditor {
        return Err(DecideError::NotAnApprover(user.role));
    }
    Ok(Approver {
        name: user.name,
        role: user.role,
        method: approver.method,
        dn: user.dn,
        entry_id: user.entry_id,
        zones: ZoneScope {
            grouped: approver.zones.grouped.clone(),
            member_of: user.zones,
            only_member_of: user.zones_only,
        },
    })
}

async fn decide_in(
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
    let approver = &standing_now(&mut tx, approver).await?;
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
    // Who may decide is judged here, on the request as locked, and nowhere else: the zone, then four
    // eyes.
    if !approver.zones.allows(approver.role, &request.zone) {
        return Err(DecideError::OtherZone(request.zone));
    }
    // Four eyes: staff and vendor accounts are separate, but a shared name is the same person until
    // proven otherwise, and so is a shared directory entry.
    let same_entry = |other: Option<(String, Option<String>)>| {
        approver
            .dn
            .as_deref()
            .zip(other)
            .is_some_and(|(dn, (their_dn, their_id))| {
                EntryRef {
                    dn,
                    id: approver.entry_id.as_deref(),
                }
                .is(Some(&their_dn), their_id.as_deref())
            })
    };
    if approver.name == request.vendor || same_entry(tx.vendor_entry(&request.vendor).await?) {
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
                    Action::RequestDeny,
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
            for earlier in &request.approvals {
                if earlier.approver == approver.name
                    || same_entry(tx.staff_entry(&earlier.approver).await?)
                {
                    return Err(DecideError::AlreadyApproved);
                }
            }
            let services = narrow_services(&request.services, services)?;
            let duration_secs = narrow_duration(request.duration_secs, duration_secs)?;
            let actor = approver.as_actor();
            let issue = |services, duration_secs: i64, approvers| Issue {
                vendor: &request.vendor,
                asset: &request.asset,
                services,
                duration: Duration::from_secs(duration_secs.unsigned_abs()),
                reason: &request.reason,
                source: Source::Request(id),
                approvers,
            };
            // A disabled vendor, or one of another organisation than the asset's, gets no grant:
            // every approval is refused, the first of two as well.
            if let Err(e) = grants::parties(&mut tx, &request.vendor, &request.asset).await {
                drop(tx); // roll back before the refusal is audited in a transaction of its own
                grants::refused(
                    store,
                    now,
                    &actor,
                    &issue(&services, duration_secs, &[]),
                    &e,
                )
                .await;
                return Err(e.into());
            }
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
            // An earlier approval counts only while its approver may still decide this request: an
            // approver disabled, no longer an approver, or moved out of the zone since does not make
            // one of the two (their row stays, and so does the audit of it; it is just not counted).
            let mut all = Vec::with_capacity(request.approvals.len() + 1);
            let mut not_counted = Vec::new();
            for earlier in &request.approvals {
                let standing = tx.staff_auth(&earlier.approver).await?;
                let still = standing.is_some_and(|u| {
                    let scope = ZoneScope {
                        grouped: approver.zones.grouped.clone(),
                        member_of: u.zones.clone(),
                        only_member_of: u.zones_only,
                    };
                    u.enabled
                        && matches!(u.role, Role::Approver | Role::Admin)
                        && scope.allows(u.role, &request.zone)
                });
                if still {
                    all.push(earlier.clone());
                } else {
                    not_counted.push(earlier.approver.clone());
                }
            }
            all.push(approval);
            let mut detail = json!({
                "method": approver.method, "services": services, "duration_secs": duration_secs,
                "vendor": request.vendor, "asset": request.asset,
                "approval": all.len(), "needed": needed,
            });
            if !not_counted.is_empty() {
                detail["not_counted"] = json!(not_counted);
            }
            tx.audit(
                AuditEvent::new(
                    approver.actor(),
                    Action::RequestApprove,
                    format!("request:{id}"),
                    detail,
                ),
                now,
            )
            .await?;
            if all.len() < needed {
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
                let approvers: Vec<String> = all.iter().map(|a| a.approver.clone()).collect();
                let issue = issue(&granted, duration, &approvers);
                let issued = match grants::issue_in(&mut tx, now, &actor, &issue).await {
                    Ok(issued) => issued,
                    Err(e) => {
                        drop(tx);
                        grants::refused(store, now, &actor, &issue, &e).await;
                        return Err(e.into());
                    }
                };
                tx.decide_request(
                    id,
                    RequestStatus::Approved,
                    &approvers.join(","),
                    None,
                    Some(issued.id),
                    now,
                )
                .await?;
                Outcome::Granted {
                    grant_id: issued.id,
                    ends_at: issued.ends_at,
                    services: granted,
                }
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
                Action::RequestExpire,
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
