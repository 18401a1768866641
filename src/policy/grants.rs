//! Grants: the one place a grant row is issued ([`issue`], [`issue_in`]) or revoked ([`revoke`]).
//!
//! A grant comes to be in two ways: staff issue it at the command line (`chaperone grant add`, planned
//! maintenance), or the final approval of a vendor's request issues it (`requests::decide`). It is
//! revoked at the command line (`chaperone grant revoke`) or in the web page. All of them call this
//! module, so the rules are written once:
//! - the vendor exists and is enabled, read under a row lock in the issuing transaction, so a grant is
//!   never committed to a vendor disabled at that moment; a refusal for a disabled vendor is audited
//!   (`grant.refused`) even though nothing else is written;
//! - the asset exists and has every service named (at least one);
//! - the asset is serviced by the vendor's organisation, or names none (`Asset::serviced_by`); a
//!   refusal is audited (`grant.refused`): staff tried to hand a device to another vendor;
//! - a grant lasts at least a second and at most [`MAX_GRANT`], starting when it is issued;
//! - the reason is one line of text ([`check_text`]); a revocation needs one too ([`revoke_reason`]:
//!   the web page, its API and the command line all come here, so none of them can revoke without
//!   saying why);
//! - auditors neither issue nor revoke.
//!
//! Every issue, revocation and audited refusal carries one detail shape ([`Record`]): who (`actor` and,
//! for the web page, the sign-in `method`), where the grant comes from (`source`: `request:ID` or
//! `staff-issued`), and the grant itself. The proof that a grant covers a connection is something else:
//! [`super::Grant`], made by `authorize_*` from the rows written here.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::events::{Change, Events};
use super::requests::ZoneScope;
use crate::audit::{Action, AuditEvent};
use crate::config::format_duration;
use crate::model::{Asset, GrantRow, Role, UnixTime, Vendor, check_text};
use crate::store::{NewGrant, Store, StoreError, Tx};

pub use crate::model::MAX_GRANT;

/// The longest reason accepted, in characters.
pub const MAX_REASON: usize = 500;

/// Who issues or revokes a grant, as the audit log names them. The web page's approvers become one
/// through `requests::Approver::as_actor`, the command line's OS user through [`Actor::os`].
#[derive(Debug, Clone)]
pub struct Actor {
    /// `staff:bob`, `os:root`.
    pub id: String,
    /// How a staff member signed in (`passkey`, `totp`); `None` at the command line.
    pub method: Option<String>,
    /// A staff member's role; `None` at the command line (whoever can run it there administers).
    pub role: Option<Role>,
    /// Which zones a staff member acts on (the rule requests are decided by, [`ZoneScope::allows`]);
    /// `None` at the command line.
    pub zones: Option<ZoneScope>,
}

impl Actor {
    /// The administrator at the command line, `os:NAME` (see `identity::os_actor`).
    pub fn os(id: impl Into<String>) -> Actor {
        Actor {
            id: id.into(),
            method: None,
            role: None,
            zones: None,
        }
    }

    /// chaperone itself (`system:directory`: the sync revokes what a vendor's move made wrong).
    pub fn system(id: impl Into<String>) -> Actor {
        Actor::os(id)
    }

    fn check_role(&self) -> Result<(), GrantError> {
        match self.role {
            Some(role @ Role::Auditor) => Err(GrantError::NotAllowed(role)),
            _ => Ok(()),
        }
    }

    /// Whether this actor may issue or revoke a grant on an asset in `zone`: an approver limited to
    /// some zones acts on those zones' grants only, as they decide those zones' requests only.
    fn check_zone(&self, zone: &str) -> Result<(), GrantError> {
        match (&self.zones, self.role) {
            (Some(zones), Some(role)) if !zones.allows(role, zone) => {
                Err(GrantError::OtherZone(zone.to_owned()))
            }
            _ => Ok(()),
        }
    }
}

/// Where a grant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Issued by staff directly (`chaperone grant add`).
    StaffIssued,
    /// The final approval of request `ID`.
    Request(i64),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::StaffIssued => f.write_str("staff-issued"),
            Source::Request(id) => write!(f, "request:{id}"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A grant to issue: it starts when it is issued.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    pub vendor: &'a str,
    pub asset: &'a str,
    pub services: &'a [String],
    pub duration: Duration,
    pub reason: &'a str,
    pub source: Source,
    /// The approvers of a request, recorded as `issued_by` (`staff:bob+carol`); empty for a staff-issued
    /// grant, whose `issued_by` is the actor.
    pub approvers: &'a [String],
}

/// A grant as issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub id: i64,
    pub starts_at: UnixTime,
    pub ends_at: UnixTime,
}

/// Why a grant was not issued or revoked.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("no vendor named {0:?}")]
    NoVendor(String),
    /// Refused and audited (`grant.refused`).
    #[error("vendor {0} is disabled: no grant can be issued to a disabled vendor")]
    VendorDisabled(String),
    #[error("no asset named {0:?}")]
    NoAsset(String),
    #[error("asset {asset} has no service {service} (it has: {known})")]
    NoSuchService {
        asset: String,
        service: String,
        known: String,
    },
    /// Refused and audited (`grant.refused`).
    #[error(
        "asset {asset} is serviced by {owner}, vendor {vendor} is with {org}: a grant goes to the asset's own vendor organisation (an asset that names none may go to any)"
    )]
    OtherOrganisation {
        asset: String,
        owner: String,
        vendor: String,
        org: String,
    },
    #[error("a grant names at least one service")]
    NoService,
    #[error("{} is longer than the longest grant, {}", format_duration(*.0), format_duration(MAX_GRANT))]
    TooLong(Duration),
    #[error("a grant lasts at least a second")]
    TooShort,
    #[error("{0}")]
    BadReason(String),
    #[error("no grant #{0}")]
    NotFound(i64),
    #[error("grant #{0} was already revoked")]
    AlreadyRevoked(i64),
    #[error("your role ({0}) cannot issue or revoke grants")]
    NotAllowed(Role),
    #[error("grants in zone {0} are issued and revoked by other approvers")]
    OtherZone(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The detail of every `grant.issue`, `grant.revoke` and `grant.refused` audit event, whichever way the
/// grant came or went.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    /// Who acted (`staff:bob`, `os:root`); the same as the event's actor.
    pub actor: &'a str,
    /// How a staff member signed in (`passkey`, `totp`); null at the command line.
    pub method: Option<&'a str>,
    /// `request:ID` or `staff-issued`.
    pub source: Source,
    /// Who the grant row names as its issuer: the approvers of a request, or the staff member.
    pub issued_by: &'a str,
    pub vendor: &'a str,
    pub asset: &'a str,
    pub services: &'a [String],
    pub starts_at: UnixTime,
    pub ends_at: UnixTime,
    /// Why the grant exists (the request's reason or the ticket given at the command line).
    pub reason: &'a str,
    /// `grant.revoke` only: why it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<&'a str>,
    /// `grant.refused` only: why it was not issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

fn event(actor: &Actor, action: Action, grant: &str, record: &Record<'_>) -> AuditEvent {
    AuditEvent::new(
        actor.id.clone(),
        action,
        grant,
        serde_json::to_value(record).unwrap_or_else(|e| json!({"unserialisable": e.to_string()})),
    )
}

/// The vendor and asset a grant may name: the vendor exists and is enabled (read and held in `tx`),
/// the asset exists and is serviced by the vendor's organisation. A request's every approval asks
/// this first, so the first of two approvals is refused as well as the final one.
pub async fn parties(
    tx: &mut Tx,
    vendor: &str,
    asset: &str,
) -> Result<(Vendor, Asset), GrantError> {
    let vendor = tx
        .lock_vendor(vendor)
        .await?
        .ok_or_else(|| GrantError::NoVendor(vendor.to_owned()))?;
    if !vendor.enabled {
        return Err(GrantError::VendorDisabled(vendor.name));
    }
    let asset = tx
        .asset(asset)
        .await?
        .ok_or_else(|| GrantError::NoAsset(asset.to_owned()))?;
    if !asset.serviced_by(&vendor.org) {
        return Err(GrantError::OtherOrganisation {
            owner: asset.vendor_org.clone().unwrap_or_default(),
            asset: asset.name,
            vendor: vendor.name,
            org: vendor.org,
        });
    }
    Ok((vendor, asset))
}

/// Issues a grant in its own transaction and announces it. A refusal for a disabled vendor is audited.
pub async fn issue(
    store: &Store,
    events: &Events,
    now: UnixTime,
    actor: &Actor,
    g: &Issue<'_>,
) -> Result<Issued, GrantError> {
    let mut tx = store.begin().await?;
    match issue_in(&mut tx, now, actor, g).await {
        Ok(issued) => {
            tx.commit("grant.issue").await?;
            events.send(Change::Grant(issued.id));
            Ok(issued)
        }
        Err(e) => {
            drop(tx);
            refused(store, now, actor, g, &e).await;
            Err(e)
        }
    }
}

/// Issues a grant inside `tx`, audited (`grant.issue`); the caller commits and announces it
/// (`Change::Grant`). On an error the caller drops `tx` and reports the refusal with [`refused`].
pub async fn issue_in(
    tx: &mut Tx,
    now: UnixTime,
    actor: &Actor,
    g: &Issue<'_>,
) -> Result<Issued, GrantError> {
    actor.check_role()?;
    let reason = g.reason.trim();
    check_text("reason", reason, MAX_REASON).map_err(GrantError::BadReason)?;
    if g.duration > MAX_GRANT {
        return Err(GrantError::TooLong(g.duration));
    }
    let secs = i64::try_from(g.duration.as_secs()).map_err(|_| GrantError::TooLong(g.duration))?;
    if secs < 1 {
        return Err(GrantError::TooShort);
    }
    if g.services.is_empty() {
        return Err(GrantError::NoService);
    }
    let (vendor, asset) = parties(tx, g.vendor, g.asset).await?;
    actor.check_zone(&asset.zone)?;
    if let Some(missing) = g.services.iter().find(|s| asset.service(s).is_none()) {
        return Err(GrantError::NoSuchService {
            asset: asset.name.clone(),
            service: missing.clone(),
            known: asset
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let issued_by = issued_by(actor, g);
    let ends_at = now.saturating_add(secs);
    let id = tx
        .insert_grant(
            &NewGrant {
                vendor_id: vendor.id,
                asset_id: asset.id,
                services: g.services,
                starts_at: now,
                ends_at,
                reason,
                issued_by: &issued_by,
                request_id: match g.source {
                    Source::Request(id) => Some(id),
                    Source::StaffIssued => None,
                },
            },
            now,
        )
        .await?;
    let record = Record {
        actor: &actor.id,
        method: actor.method.as_deref(),
        source: g.source,
        issued_by: &issued_by,
        vendor: &vendor.name,
        asset: &asset.name,
        services: g.services,
        starts_at: now,
        ends_at,
        reason,
        revoke_reason: None,
        refusal: None,
    };
    tx.audit(
        event(actor, Action::GrantIssue, &format!("grant:{id}"), &record),
        now,
    )
    .await?;
    Ok(Issued {
        id,
        starts_at: now,
        ends_at,
    })
}

fn issued_by(actor: &Actor, g: &Issue<'_>) -> String {
    if g.approvers.is_empty() {
        actor.id.clone()
    } else {
        format!("staff:{}", g.approvers.join("+"))
    }
}

/// Audits a refusal to issue `g` when it is one the audit log must show (a disabled vendor, another
/// organisation's asset), in a transaction of its own (the refused one was rolled back). A failure to
/// audit is logged: the refusal stands either way.
pub async fn refused(store: &Store, now: UnixTime, actor: &Actor, g: &Issue<'_>, e: &GrantError) {
    if !matches!(
        e,
        GrantError::VendorDisabled(_) | GrantError::OtherOrganisation { .. }
    ) {
        return;
    }
    let issued_by = issued_by(actor, g);
    let secs = i64::try_from(g.duration.as_secs()).unwrap_or(i64::MAX);
    let record = Record {
        actor: &actor.id,
        method: actor.method.as_deref(),
        source: g.source,
        issued_by: &issued_by,
        vendor: g.vendor,
        asset: g.asset,
        services: g.services,
        starts_at: now,
        ends_at: now.saturating_add(secs),
        reason: g.reason.trim(),
        revoke_reason: None,
        refusal: Some(e.to_string()),
    };
    let audited = async {
        let mut tx = store.begin().await?;
        tx.audit(
            event(
                actor,
                Action::GrantRefused,
                &format!("vendor:{}", g.vendor),
                &record,
            ),
            now,
        )
        .await?;
        tx.commit("grant.refused").await
    };
    if let Err(err) = audited.await {
        tracing::error!(error = %err, vendor = g.vendor, "cannot audit a refused grant");
    }
}

/// Revokes every open grant that `scope` picks whose asset the vendor's organisation (as stored now)
/// does not service (`Asset::serviced_by`): what a vendor's move to another organisation, or an asset
/// changing hands, left behind. Every such grant is tried; the first error is returned once they
/// were (`AlreadyRevoked` is none). Returns how many were revoked. Callers: the directory sync (its
/// vendors) and `asset vendor-org` (one asset).
pub async fn revoke_outside_organisations(
    store: &Store,
    events: &Events,
    now: UnixTime,
    actor: &Actor,
    scope: impl Fn(&GrantRow) -> bool,
) -> Result<usize, GrantError> {
    let mut vendors: std::collections::BTreeMap<String, Option<Vendor>> = Default::default();
    let mut assets: std::collections::BTreeMap<String, Option<Asset>> = Default::default();
    let (mut revoked, mut failed) = (0, None);
    for g in store.grants(Some(now)).await? {
        if !scope(&g) {
            continue;
        }
        if !vendors.contains_key(&g.vendor) {
            vendors.insert(g.vendor.clone(), store.vendor(&g.vendor).await?);
        }
        if !assets.contains_key(&g.asset) {
            assets.insert(g.asset.clone(), store.asset(&g.asset).await?);
        }
        let (Some(vendor), Some(asset)) = (&vendors[&g.vendor], &assets[&g.asset]) else {
            continue;
        };
        if asset.serviced_by(&vendor.org) {
            continue;
        }
        let reason = format!(
            "{} is serviced by another organisation than the vendor's (the vendor moved, or the asset changed hands)",
            g.asset
        );
        match revoke(store, events, now, actor, g.id, &reason).await {
            Ok(_) => {
                revoked += 1;
                tracing::info!(grant = g.id, vendor = %g.vendor, asset = %g.asset,
                    "grant revoked: the vendor's organisation does not service the asset");
            }
            Err(GrantError::AlreadyRevoked(_)) => {}
            Err(e) => {
                tracing::error!(grant = g.id, error = %e, "cannot revoke a grant outside the vendor's organisation");
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(revoked), Err)
}

/// The reason a revocation gives, checked: required (blank is refused), one line, at most
/// [`MAX_REASON`]. The vendor is shown it and the audit log keeps it.
pub fn revoke_reason(reason: &str) -> Result<&str, GrantError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(GrantError::BadReason(
            "a revocation needs a reason: say why access ends (the vendor is told it, and the audit log keeps it)".into(),
        ));
    }
    check_text("reason", reason, MAX_REASON).map_err(GrantError::BadReason)?;
    Ok(reason)
}

/// Revokes grant `id` and announces it; live sessions under it close (the expiry watcher sees the
/// revocation). Returns the grant as it was before.
pub async fn revoke(
    store: &Store,
    events: &Events,
    now: UnixTime,
    actor: &Actor,
    id: i64,
    reason: &str,
) -> Result<GrantRow, GrantError> {
    actor.check_role()?;
    let reason = revoke_reason(reason)?;
    let mut tx = store.begin().await?;
    let row = tx.grant(id).await?.ok_or(GrantError::NotFound(id))?;
    if actor.zones.is_some() {
        let zone = tx
            .asset(&row.asset)
            .await?
            .map(|a| a.zone)
            .ok_or_else(|| GrantError::NoAsset(row.asset.clone()))?;
        actor.check_zone(&zone)?;
    }
    if !tx.revoke_grant(id, &actor.id, reason, now).await? {
        return Err(GrantError::AlreadyRevoked(id));
    }
    let record = Record {
        actor: &actor.id,
        method: actor.method.as_deref(),
        source: match row.request_id {
            Some(r) => Source::Request(r),
            None => Source::StaffIssued,
        },
        issued_by: &row.issued_by,
        vendor: &row.vendor,
        asset: &row.asset,
        services: &row.services,
        starts_at: row.starts_at,
        ends_at: row.ends_at,
        reason: &row.reason,
        revoke_reason: Some(reason),
        refusal: None,
    };
    tx.audit(
        event(actor, Action::GrantRevoke, &format!("grant:{id}"), &record),
        now,
    )
    .await?;
    tx.commit("grant.revoke").await?;
    events.send(Change::Grant(id));
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_needs_a_reason() {
        for blank in ["", "   ", "\t\n"] {
            assert!(
                matches!(revoke_reason(blank), Err(GrantError::BadReason(m)) if m.contains("needs a reason")),
                "{blank:?}"
            );
        }
        assert_eq!(revoke_reason("  INC-9 done ").unwrap(), "INC-9 done");
        assert!(revoke_reason("two\nlines").is_err());
        assert!(revoke_reason(&"x".repeat(MAX_REASON + 1)).is_err());
    }

    #[test]
    fn sources_read_the_same_in_every_record() {
        assert_eq!(Source::StaffIssued.to_string(), "staff-issued");
        assert_eq!(
            serde_json::to_value(Source::Request(7)).unwrap(),
            json!("request:7")
        );
    }
}
