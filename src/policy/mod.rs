//! Access decisions: the only place a [`Grant`] is made.
//!
//! Requests and their approval (four eyes) are in [`requests`]; issuing and revoking grant rows in
//! [`grants`]; change notices in [`events`].
//!
//! Entry points: [`authorize_ssh`] / [`authorize_service`] (a session on an asset's service, e.g.
//! `alice+mri-01` → `ssh`) and [`authorize_tunnel`] (a tunnel to an asset's port), each called at the
//! moment something starts; [`standing`] (is this signed-in vendor still allowed anything at all). Every
//! decision starts from a [`Principal`] (the vendor and the key they signed in with) and re-reads the
//! vendor, so a disable, a lock or a removed key counts from that moment. Code that dials a device takes
//! `&Grant`, so nothing reaches a device without passing here. A refusal is a [`Denial`] with one mapping
//! to the vendor-facing line ([`Denial::vendor_message`]); the full reason goes to the audit log
//! ([`Denial::audit_reason`]).

pub mod events;
pub mod grants;
pub mod requests;

use crate::clock::format_time;
use crate::model::{Asset, GrantRow, Service, UnixTime, Vendor};
use crate::store::{Store, StoreError};

/// A vendor as signed in on one connection: who, and the fingerprint of the key they proved. Holding one
/// proves nothing about now: every decision re-reads the vendor through it ([`standing`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    pub vendor_id: i64,
    /// The vendor's name (audit subjects, messages).
    pub vendor: String,
    pub key_fingerprint: String,
}

/// Proof that an active grant covers this vendor, asset and service right now. Only this module makes one.
#[derive(Debug, Clone)]
pub struct Grant {
    id: i64,
    vendor: Vendor,
    asset: Asset,
    service: Service,
    ends_at: UnixTime,
}

impl Grant {
    pub fn id(&self) -> i64 {
        self.id
    }
    pub fn vendor(&self) -> &Vendor {
        &self.vendor
    }
    pub fn asset(&self) -> &Asset {
        &self.asset
    }
    pub fn service(&self) -> &Service {
        &self.service
    }
    pub fn ends_at(&self) -> UnixTime {
        self.ends_at
    }
}

/// Why access was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No active grant names this vendor, asset and service (or the asset does not exist: same answer).
    NoGrant {
        asset: String,
        service: String,
        /// For the audit log only: whether the asset exists at all.
        asset_exists: bool,
    },
    /// A grant names the asset, but the asset is serviced by another organisation than the vendor's
    /// (the grant predates the rule, or the vendor's directory entry moved): read like no grant.
    OtherOrganisation { asset: String, service: String },
    /// The asset has no service with that name or port (only said to vendors with a grant for the asset).
    NoSuchService { asset: String, service: String },
    /// The asset's ssh service cannot be used yet: no pinned host key or no injected credential.
    NotReady {
        asset: String,
        missing: &'static str,
    },
    /// The asset lists two services on this port, or a `tcp` one where an asset with the same address
    /// lists `ssh` (stored before that was refused): which one is meant is ambiguous, and a `tcp` one
    /// where an `ssh` one listens would be an unrecorded tunnel to the device's sshd.
    SharedPort { asset: String, port: u16 },
    /// The vendor account is disabled.
    VendorDisabled,
    /// The vendor account is locked after repeated failed sign-ins.
    VendorLocked { until: UnixTime },
    /// The key the vendor signed in with is no longer theirs.
    KeyRemoved,
}

impl Denial {
    /// The one line an authenticated vendor sees. `request_hint` is how to ask, e.g.
    /// `ssh -p 2222 alice@bastion request`.
    pub fn vendor_message(&self, request_hint: &str) -> String {
        match self {
            // Said only to a vendor whose grant names the asset: nothing they did not know.
            Denial::OtherOrganisation { asset, service } => format!(
                "your grant for {asset}:{service} does not hold: {asset} is serviced by another organisation than yours; contact the hospital's staff"
            ),
            Denial::NoGrant { asset, service, .. } | Denial::NoSuchService { asset, service } => {
                format!(
                    "no active grant for {asset}:{service} - request it with: {request_hint} {asset} {service} --for 2h --reason \"...\""
                )
            }
            Denial::NotReady { asset, .. } => format!(
                "{asset} is not ready for SSH sessions yet (device setup incomplete); the bastion's staff can see why"
            ),
            Denial::SharedPort { asset, port } => format!(
                "{asset}:{port} cannot be reached: two services are listed on that port of the device; the hospital's staff must correct it"
            ),
            Denial::VendorDisabled => {
                "your account is disabled; contact the hospital's staff".into()
            }
            Denial::VendorLocked { until } => format!(
                "your account is locked after repeated failed sign-ins until {}; contact the hospital's staff",
                format_time(*until)
            ),
            Denial::KeyRemoved => {
                "the key you signed in with was removed from your account; contact the hospital's staff"
                    .into()
            }
        }
    }

    /// The full reason, for the audit log.
    pub fn audit_reason(&self) -> String {
        match self {
            Denial::NoGrant {
                asset,
                service,
                asset_exists,
            } => format!(
                "no active grant for {asset}:{service}{}",
                if *asset_exists {
                    ""
                } else {
                    " (no such asset)"
                }
            ),
            Denial::OtherOrganisation { asset, service } => format!(
                "a grant names {asset}:{service}, but another organisation than the vendor's services {asset}"
            ),
            Denial::NoSuchService { asset, service } => {
                format!("asset {asset} has no service {service}")
            }
            Denial::NotReady { asset, missing } => format!("asset {asset} is missing {missing}"),
            Denial::SharedPort { asset, port } => format!(
                "two services are listed on asset {asset}'s address and port {port} (on it, or on another asset with that address); remove one (chaperone asset service remove)"
            ),
            Denial::VendorDisabled => "vendor disabled".into(),
            Denial::VendorLocked { until } => format!("vendor locked until {until}"),
            Denial::KeyRemoved => "the key of this login was removed".into(),
        }
    }
}

/// Either a refusal or a store failure (which refuses too, but is not the vendor's fault).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("access denied: {}", .0.audit_reason())]
    Denied(Denial),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Denial> for PolicyError {
    fn from(d: Denial) -> Self {
        PolicyError::Denied(d)
    }
}

/// The best active grant among `grants` covering `service` at `now`: the one that lasts longest.
fn pick<'a>(
    grants: &'a [GrantRow],
    asset: &str,
    service: &str,
    now: UnixTime,
) -> Option<&'a GrantRow> {
    grants
        .iter()
        .filter(|g| g.asset == asset && g.is_active(now) && g.services.iter().any(|s| s == service))
        .max_by_key(|g| g.ends_at)
}

/// Is `who` still allowed anything now: the vendor enabled, not locked, and the key of this login still
/// theirs? Returns the vendor as the store has it now.
pub async fn standing(
    store: &Store,
    now: UnixTime,
    who: &Principal,
) -> Result<Vendor, PolicyError> {
    let found = store.vendor_by_key(&who.key_fingerprint).await?;
    Ok(judge_standing(who, found, now)?)
}

/// [`standing`] for many logins in one query per 500 (the watcher's re-check): each login with the vendor
/// as it is now, or why it may no longer do anything.
pub async fn standing_all(
    store: &Store,
    now: UnixTime,
    logins: Vec<Principal>,
) -> Result<Vec<(Principal, Result<Vendor, Denial>)>, StoreError> {
    let keys: Vec<String> = logins.iter().map(|p| p.key_fingerprint.clone()).collect();
    let found: std::collections::HashMap<String, Vendor> =
        store.vendors_by_keys(&keys).await?.into_iter().collect();
    Ok(logins
        .into_iter()
        .map(|who| {
            let judged = judge_standing(&who, found.get(&who.key_fingerprint).cloned(), now);
            (who, judged)
        })
        .collect())
}

/// The one rule of standing: the key still belongs to the vendor who signed in with it, who is enabled
/// and not locked at `now`. `found` is the vendor the key belongs to now, if any.
fn judge_standing(who: &Principal, found: Option<Vendor>, now: UnixTime) -> Result<Vendor, Denial> {
    match found {
        Some(v) if v.id == who.vendor_id => {
            if !v.enabled {
                Err(Denial::VendorDisabled)
            } else if let Some(until) = v.locked_until.filter(|t| *t > now) {
                Err(Denial::VendorLocked { until })
            } else {
                Ok(v)
            }
        }
        _ => Err(Denial::KeyRemoved),
    }
}

/// May `who` use `asset_name`'s service `service_name` now?
pub async fn authorize_service(
    store: &Store,
    now: UnixTime,
    who: &Principal,
    asset_name: &str,
    service_name: &str,
) -> Result<Grant, PolicyError> {
    authorize_on_asset(store, now, who, asset_name, |_| service_name.to_owned()).await
}

/// The reads of a decision, at once (a session start waits for the slowest, not for all in a row): the
/// vendor's standing, `target` (the asset or assets asked for) and the vendor's open grants. The grants
/// are read for the vendor the login is for and count only because the standing, checked first, holds.
async fn standing_with<T>(
    store: &Store,
    now: UnixTime,
    who: &Principal,
    target: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<(Vendor, T, Vec<GrantRow>), PolicyError> {
    let (vendor, target, grants) = tokio::join!(
        standing(store, now, who),
        target,
        store.open_grants_of(who.vendor_id, now)
    );
    Ok((vendor?, target?, grants?))
}

/// The decision of [`authorize_service`] for the service `service_of` names on the asset as it is now
/// (`None`: no such asset).
async fn authorize_on_asset(
    store: &Store,
    now: UnixTime,
    who: &Principal,
    asset_name: &str,
    service_of: impl FnOnce(Option<&Asset>) -> String,
) -> Result<Grant, PolicyError> {
    let (vendor, asset, grants) = standing_with(store, now, who, store.asset(asset_name)).await?;
    // The service is named from the asset only for a vendor who may know it: its organisation's, or
    // one a grant of theirs names. To others, another organisation's asset reads as a missing one.
    let known = asset
        .as_ref()
        .filter(|a| a.serviced_by(&vendor.org) || grants.iter().any(|g| g.asset == a.name));
    let service_name = &service_of(known);
    let Some(asset) = asset else {
        return Err(Denial::NoGrant {
            asset: asset_name.to_owned(),
            service: service_name.to_owned(),
            asset_exists: false,
        }
        .into());
    };
    let Some(row) = pick(&grants, &asset.name, service_name, now) else {
        return Err(Denial::NoGrant {
            asset: asset.name.clone(),
            service: service_name.to_owned(),
            asset_exists: true,
        }
        .into());
    };
    if !asset.serviced_by(&vendor.org) {
        return Err(Denial::OtherOrganisation {
            asset: asset.name.clone(),
            service: service_name.to_owned(),
        }
        .into());
    }
    let Some(service) = asset.service(service_name).cloned() else {
        // Granted once, but the service was removed since.
        return Err(Denial::NoSuchService {
            asset: asset.name.clone(),
            service: service_name.to_owned(),
        }
        .into());
    };
    Ok(Grant {
        id: row.id,
        ends_at: row.ends_at,
        vendor,
        asset,
        service,
    })
}

/// Does `grant`, decided a moment ago, still hold: its row not revoked, not ended, still naming the
/// service, and the asset still listing that service as it was? A session asks once it is registered
/// with the watcher (`live::PendingSession::start`): a revocation or a service's removal committed
/// between the decision and the registration is seen here, and one committed after it reaches the
/// session through the watcher (`live::watch`), so none can slip between the two. The vendor's standing
/// needs no second read: the connection was registered at sign-in, long before the decision, so the
/// watcher's re-check of logins cuts it whenever the standing changed.
pub async fn still_holds(store: &Store, now: UnixTime, grant: &Grant) -> Result<(), PolicyError> {
    let (row, asset) = tokio::join!(store.grant(grant.id), store.asset(&grant.asset.name));
    match row? {
        Some(g) if g.is_active(now) && g.services.contains(&grant.service.name) => {}
        _ => {
            return Err(Denial::NoGrant {
                asset: grant.asset.name.clone(),
                service: grant.service.name.clone(),
                asset_exists: true,
            }
            .into());
        }
    }
    match asset? {
        Some(a) if a.service(&grant.service.name) == Some(&grant.service) => Ok(()),
        _ => Err(Denial::NoSuchService {
            asset: grant.asset.name.clone(),
            service: grant.service.name.clone(),
        }
        .into()),
    }
}

/// May `who` open an SSH session on `asset_name`? Checks the grant for the asset's service of kind
/// `ssh` (whatever it is named). An asset without one reads like a missing grant.
pub async fn authorize_ssh(
    store: &Store,
    now: UnixTime,
    who: &Principal,
    asset_name: &str,
) -> Result<Grant, PolicyError> {
    authorize_on_asset(store, now, who, asset_name, |asset| {
        asset
            .and_then(|a| {
                a.services
                    .iter()
                    .find(|s| s.kind == crate::model::ServiceKind::Ssh)
                    .map(|s| s.name.clone())
            })
            .unwrap_or_else(|| "ssh".to_owned())
    })
    .await
}

/// May `who` open a tunnel to `host:port`? `host` is an asset's name or address. Port 22 on an asset's
/// name also means its ssh service wherever it listens (so `ssh -J bastion service@mri-01` works). A
/// refusal names the destination as the vendor gave it, the same whether or not it exists.
pub async fn authorize_tunnel(
    store: &Store,
    now: UnixTime,
    who: &Principal,
    host: &str,
    port: u16,
) -> Result<Grant, PolicyError> {
    let (vendor, assets, grants) =
        standing_with(store, now, who, store.assets_by_name_or_address(host)).await?;
    let mut other_organisation = None;
    for asset in &assets {
        // The services on that port; port 22 on the asset's name also means its ssh service.
        let mut on_port: Vec<&crate::model::Service> =
            asset.services.iter().filter(|s| s.port == port).collect();
        if on_port.is_empty() && port == 22 && asset.name == host {
            on_port.extend(
                asset
                    .services
                    .iter()
                    .find(|s| s.kind == crate::model::ServiceKind::Ssh),
            );
        }
        for service in on_port {
            let Some(row) = pick(&grants, &asset.name, &service.name, now) else {
                continue;
            };
            if !asset.serviced_by(&vendor.org) {
                other_organisation.get_or_insert_with(|| Denial::OtherOrganisation {
                    asset: asset.name.clone(),
                    service: service.name.clone(),
                });
                continue;
            }
            // Two services on one port of the asset, or a tcp service where any asset with this
            // address lists an ssh one: the tunnel would reach what another service names (an sshd,
            // unrecorded). Refused to a vendor with a grant for it; to others it reads like no grant.
            let shared = asset
                .services
                .iter()
                .filter(|s| s.port == service.port)
                .count()
                > 1
                || (service.kind == crate::model::ServiceKind::Tcp
                    && store
                        .ssh_service_at(&asset.address, service.port)
                        .await
                        .map_err(PolicyError::Store)?);
            if shared {
                return Err(Denial::SharedPort {
                    asset: asset.name.clone(),
                    port: service.port,
                }
                .into());
            }
            return Ok(Grant {
                id: row.id,
                ends_at: row.ends_at,
                vendor: vendor.clone(),
                asset: asset.clone(),
                service: service.clone(),
            });
        }
    }
    Err(other_organisation
        .unwrap_or_else(|| Denial::NoGrant {
            asset: crate::model::truncate_for_display(host, 64),
            service: port.to_string(),
            asset_exists: !assets.is_empty(),
        })
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, services: &[&str], ends_at: i64, revoked: bool) -> GrantRow {
        GrantRow {
            id,
            vendor: "alice".into(),
            asset: "mri-01".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            starts_at: 100,
            ends_at,
            reason: "r".into(),
            issued_by: "os:t".into(),
            request_id: None,
            revoked_at: revoked.then_some(150),
            revoked_by: None,
            revoke_reason: None,
            created_at: 100,
        }
    }

    #[test]
    fn picks_the_longest_active_grant_for_the_service() {
        let grants = [
            row(1, &["ssh"], 300, false),
            row(2, &["ssh", "dicom"], 500, false),
            row(3, &["ssh"], 900, true),
        ];
        assert_eq!(pick(&grants, "mri-01", "ssh", 200).map(|g| g.id), Some(2));
        assert_eq!(pick(&grants, "mri-01", "dicom", 200).map(|g| g.id), Some(2));
        assert_eq!(pick(&grants, "mri-01", "hl7", 200).map(|g| g.id), None);
        assert_eq!(pick(&grants, "ct-02", "ssh", 200).map(|g| g.id), None);
        assert_eq!(
            pick(&grants, "mri-01", "ssh", 500).map(|g| g.id),
            None,
            "expired"
        );
        assert_eq!(
            pick(&grants, "mri-01", "ssh", 99).map(|g| g.id),
            None,
            "not started"
        );
    }

    #[test]
    fn unknown_asset_and_missing_grant_read_the_same_to_the_vendor() {
        let hint = "ssh -p 2222 alice@bastion request";
        let a = Denial::NoGrant {
            asset: "mri-01".into(),
            service: "ssh".into(),
            asset_exists: true,
        };
        let b = Denial::NoGrant {
            asset: "mri-01".into(),
            service: "ssh".into(),
            asset_exists: false,
        };
        assert_eq!(a.vendor_message(hint), b.vendor_message(hint));
        assert_ne!(a.audit_reason(), b.audit_reason());
        assert!(a.vendor_message(hint).starts_with("no active grant for mri-01:ssh - request it with: ssh -p 2222 alice@bastion request mri-01 ssh"));
    }
}
