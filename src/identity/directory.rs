//! Keeping the store in step with the directory (`[ldap]`), in the background of `serve`.
//!
//! Entry point: [`run`]. Two loops:
//! - every `ldap.recheck_interval`, each enabled directory staff account is looked up again: one the
//!   directory no longer knows, or whose groups give no role any more, is disabled and its web sessions
//!   end (on every node: they are rows in `web_state`), audited `user.directory.remove`; a changed role
//!   or zone list is stored (`user.directory.update`), and since the web core re-reads the role on every
//!   decision, it applies at once;
//! - every `ldap.vendors.sync_interval` (with `[ldap.vendors]`), the vendor subtree is read: a new entry
//!   becomes a vendor (who enrols TOTP at their first login), keys follow `sshPublicKey`, an entry that
//!   is gone or disabled disables its vendor (re-enabling is `vendor enable`'s: the sync only takes
//!   access away). A vendor is tied to the entry it was added from by the entry's id (`entryUUID`,
//!   `objectGUID`), which moves keep: another entry that holds the same name never changes it, and a
//!   name several entries hold is not added; `vendor enable` unties it, to be tied again to the entry
//!   at its DN;
//!   each change audited in its own transaction. A removed key or a disable
//!   then ends live connections through the one path there is for that: the store change is audited,
//!   the authority watcher (`live::watch`) sees the head move and re-checks every login's standing.
//!   Vendors added locally (`vendor add`) are never touched.
//!
//! A directory that does not answer changes nothing (it is tried again at the next interval).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tokio::sync::watch;

use super::keys::parse_public_key;
use super::ldap::{Directory, Lookup};
use super::totp;
use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::error_text::report;
use crate::model::{check_name, check_text, same_organisation};
use crate::store::{DirectoryStanding, StaffAuth, StoreError};

/// The audit actor of the directory's changes.
const ACTOR: &str = "system:directory";

/// Runs the re-check and the sync until `stop`.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let Some(directory) = app.directory.clone() else {
        return;
    };
    let config = directory.config().clone();
    let mut recheck = tokio::time::interval(config.recheck_interval);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sync_every = config
        .vendors
        .as_ref()
        .map_or(std::time::Duration::from_secs(3600), |v| v.sync_interval);
    let mut sync = tokio::time::interval(sync_every);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                match recheck_staff(&app, &directory).await {
                    Ok(()) => crate::ops::metrics::directory_synced("staff", app.clock.now()),
                    Err(e) => tracing::warn!(error = %e,
                        "directory re-check of staff failed; trying again later"),
                }
            }
            _ = sync.tick(), if config.vendors.is_some() => {
                match sync_vendors(&app, &directory).await {
                    Ok(()) => crate::ops::metrics::directory_synced("vendors", app.clock.now()),
                    Err(e) => tracing::warn!(error = %e,
                        "directory sync of vendors failed; trying again later"),
                }
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Why a re-check or a sync stopped (nothing after the failure was changed).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{}", report(.0))]
    Directory(#[from] super::ldap::LdapError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Disables a directory staff account that lost its access and ends its web sessions, audited;
/// `false`, with nothing written or audited, when the account was disabled already (an administrator
/// disabled it after the caller read it: that disable and its audit stand).
pub async fn remove_staff(
    app: &App,
    user: &StaffAuth,
    why: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let mut tx = app.store.begin().await?;
    if !tx.set_directory_standing(user.id, None).await? {
        return Ok(false);
    }
    let ended = tx.end_web_sessions_of(&user.name).await?;
    tx.audit(
        AuditEvent::new(
            ACTOR,
            Action::UserDirectoryRemove,
            format!("user:{}", user.name),
            json!({"why": why, "web_sessions_ended": ended}),
        ),
        now,
    )
    .await?;
    tx.commit("user.directory.remove").await?;
    Ok(true)
}

/// One re-check of every enabled directory staff account. A search that fails for one account (an
/// entry the directory cannot return, a referral) does not stop the others from being re-checked: they
/// are all tried, and the first such error is returned at the end. Any other error ends the round at
/// once (the directory unreachable, the service account refused: asking again for every account would
/// only add time-outs, or refused binds that could lock the service account; the store failing).
pub async fn recheck_staff(app: &App, directory: &Directory) -> Result<(), SyncError> {
    let mut first_error = None;
    for user in app.store.directory_staff().await? {
        match recheck_one(app, directory, user).await {
            Ok(()) => {}
            Err(e @ SyncError::Directory(super::ldap::LdapError::Search { .. })) => {
                tracing::warn!(error = %e, "cannot re-check a directory staff account; going on with the others");
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Re-checks one directory staff account against its entry.
async fn recheck_one(
    app: &App,
    directory: &Directory,
    user: crate::store::StaffAuth,
) -> Result<(), SyncError> {
    let found = directory.lookup(&user.name).await?;
    let now = app.clock.now();
    // The name now finds another entry than the account's (its person left and the name was
    // given to someone else): the account is not theirs.
    let other_entry = match (&found, &user.entry_id) {
        (Lookup::Found(f), Some(mine)) => f
            .entry_id
            .as_deref()
            .is_some_and(|theirs| !theirs.eq_ignore_ascii_case(mine)),
        _ => false,
    };
    // The entry, found under this account's name, already belongs to another account (one entry,
    // one account): this one does not take it over.
    let taken = match &found {
        Lookup::Found(f) => app
            .store
            .directory_account_of(
                crate::store::EntryRef {
                    dn: &f.dn,
                    id: f.entry_id.as_deref(),
                },
                Some(user.id),
            )
            .await?
            .is_some(),
        _ => false,
    };
    let standing = match &found {
        Lookup::NoSuchUser | Lookup::Disabled { .. } => None,
        Lookup::Found(_) if other_entry || taken => None,
        Lookup::Found(f) => f.standing(),
    };
    // The same entry moved or renamed in place (its DN changed), or an account from before its id
    // was kept: the account follows its entry, so a second name for the moved entry finds it
    // (one entry, one account) rather than the old DN.
    if let (Lookup::Found(f), Some(_)) = (&found, &standing)
        && (user.dn.as_deref() != Some(f.dn.as_str())
            || (user.entry_id.is_none() && f.entry_id.is_some()))
    {
        let mut tx = app.store.begin().await?;
        tx.set_staff_entry(user.id, &f.dn, f.entry_id.as_deref())
            .await?;
        tx.audit(
            AuditEvent::new(
                ACTOR,
                Action::UserDirectoryUpdate,
                format!("user:{}", user.name),
                json!({"dn": f.dn, "entry_id": f.entry_id}),
            ),
            now,
        )
        .await?;
        tx.commit("user.directory.update").await?;
    }
    match standing {
        None => {
            let why = match &found {
                Lookup::NoSuchUser => "no longer in the directory",
                Lookup::Disabled { why, .. } => why,
                Lookup::Found(_) if other_entry => {
                    "the name now belongs to another directory entry"
                }
                Lookup::Found(_) if taken => "its entry signs in as another account",
                Lookup::Found(_) => "in no mapped group",
            };
            if remove_staff(app, &user, why, now).await? {
                tracing::info!(user = %user.name, why, "directory account disabled; its web sessions ended");
            }
        }
        Some(standing) if standing != DirectoryStanding::of(&user) => {
            let mut tx = app.store.begin().await?;
            tx.set_directory_standing(user.id, Some(&standing)).await?;
            tx.audit(
                AuditEvent::new(
                    ACTOR,
                    Action::UserDirectoryUpdate,
                    format!("user:{}", user.name),
                    json!({"role": standing.role.to_string(), "zones": standing.zones,
                           "zones_only": standing.zones_only}),
                ),
                now,
            )
            .await?;
            tx.commit("user.directory.update").await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// One sync of the vendor subtree; see the module doc.
pub async fn sync_vendors(app: &App, directory: &Directory) -> Result<(), SyncError> {
    let synced = sync_entries(app, directory).await;
    // Whatever became of the entries' sync: what a move (this time or an earlier one) left outside a
    // vendor's organisation is revoked.
    let swept = revoke_outside_organisations(app, app.clock.now()).await;
    synced.and(swept)
}

/// The sync of the entries: added, followed, keys updated, disabled.
async fn sync_entries(app: &App, directory: &Directory) -> Result<(), SyncError> {
    let entries = directory.vendors().await?;
    // Every entry that holds a name: a name is not an identity (two OUs may each have a `jsmith`).
    let mut wanted: BTreeMap<String, Vec<Wanted>> = BTreeMap::new();
    for e in entries {
        if let Err(why) = check_name("vendor", &e.name) {
            tracing::warn!(dn = %e.dn, %why, "a directory vendor's name is not usable; skipped");
            continue;
        }
        let mut keys = BTreeMap::new();
        for text in &e.keys {
            match parse_public_key(text) {
                Ok(k) => {
                    keys.insert(k.fingerprint.clone(), k);
                }
                Err(why) => {
                    tracing::warn!(vendor = %e.name, %why, "a directory sshPublicKey is refused")
                }
            }
        }
        // An entry in no OU under the base is with "directory"; one whose OU is not one line of
        // text is with an unknown organisation: a new vendor gets "directory", a known one keeps
        // theirs.
        let org = if e.org.is_empty() {
            Some(crate::model::DIRECTORY_ORG.to_owned())
        } else {
            match check_text("organisation", &e.org, 120) {
                Ok(()) => Some(e.org),
                Err(why) => {
                    tracing::warn!(dn = %e.dn, %why, "a directory vendor's organisation is not usable");
                    None
                }
            }
        };
        wanted.entry(e.name).or_default().push(Wanted {
            dn: e.dn,
            org,
            keys,
            entry_id: e.entry_id,
            disabled: e.disabled,
        });
    }
    let stored: BTreeMap<String, crate::store::DirectoryVendor> = app
        .store
        .directory_vendors()
        .await?
        .into_iter()
        .map(|v| (v.vendor.name.clone(), v))
        .collect();
    // A stored vendor is tied to the entry it was added from, by the entry's id, which a move or a
    // rename keeps and a new entry does not have: only that entry changes it, and another entry that
    // takes its name is someone else. A vendor synced before ids were kept (or from a directory
    // without them) is tied by its DN, or, failing that, by its name's only entry, as it was until
    // then; the sync then keeps that entry's id.
    let own_entry = |v: &crate::store::DirectoryVendor| -> Option<&Wanted> {
        let entries = wanted.get(&v.vendor.name)?;
        match v.entry_id.as_deref() {
            // Untied by `vendor enable`: the entry at its DN, and no other.
            Some("") => entries.iter().find(|e| e.dn.eq_ignore_ascii_case(&v.dn)),
            Some(id) => entries.iter().find(|e| e.entry_id.as_deref() == Some(id)),
            None => entries
                .iter()
                .find(|e| e.dn.eq_ignore_ascii_case(&v.dn))
                .or(match entries.as_slice() {
                    [one] => Some(one),
                    _ => None,
                }),
        }
    };
    for (name, entries) in &wanted {
        let now = app.clock.now();
        match (stored.get(name), entries.as_slice()) {
            (Some(v), _) => {
                if let Some(e) = own_entry(v)
                    && e.disabled.is_none()
                {
                    relink_vendor(app, v, e, now).await?;
                    update_vendor(app, v, &e.keys, now).await?;
                }
            }
            (None, [e]) if e.disabled.is_none() => add_vendor(app, name, e, now).await?,
            // Disabled in the directory: never added.
            (None, [_]) => {}
            (None, several) => {
                tracing::warn!(vendor = %name, entries = several.len(),
                    "several directory entries hold this vendor name; none is added");
            }
        }
    }
    for (name, v) in &stored {
        let why = match own_entry(v) {
            Some(e) => match e.disabled {
                Some(why) => why,
                None => continue,
            },
            None if wanted.contains_key(name) => {
                "its directory entry is gone (another entry holds the name now)"
            }
            None => "removed from the directory",
        };
        if v.vendor.enabled {
            let mut tx = app.store.begin().await?;
            tx.set_vendor_enabled(v.vendor.id, false).await?;
            tx.audit(
                AuditEvent::new(
                    ACTOR,
                    Action::VendorDisable,
                    format!("vendor:{name}"),
                    json!({"why": why, "dn": v.dn}),
                ),
                app.clock.now(),
            )
            .await?;
            tx.commit("vendor.disable").await?;
            tracing::info!(vendor = %name, why, "directory vendor disabled");
        }
    }
    Ok(())
}

/// A vendor entry as the sync reads it.
struct Wanted {
    dn: String,
    /// `None`: not known (see `sync_vendors`).
    org: Option<String>,
    keys: BTreeMap<String, super::keys::ParsedKey>,
    entry_id: Option<String>,
    disabled: Option<&'static str>,
}

/// Follows a vendor's own entry to its DN, id and organisation as they are now (moved, renamed, or
/// its id read for the first time), audited. What a move to another organisation leaves outside it is
/// revoked by [`revoke_outside_organisations`] at the end of the sync.
async fn relink_vendor(
    app: &App,
    v: &crate::store::DirectoryVendor,
    e: &Wanted,
    now: i64,
) -> Result<(), SyncError> {
    let moved_to = e
        .org
        .as_deref()
        .filter(|org| !same_organisation(org, &v.vendor.org));
    if e.dn.eq_ignore_ascii_case(&v.dn) && e.entry_id == v.entry_id && moved_to.is_none() {
        return Ok(());
    }
    let mut tx = app.store.begin().await?;
    tx.set_vendor_directory(v.vendor.id, &e.dn, e.entry_id.as_deref())
        .await?;
    let mut detail = json!({"from": v.dn, "dn": e.dn, "entry_id": e.entry_id});
    if let Some(org) = moved_to {
        tx.set_vendor_org(v.vendor.id, org).await?;
        detail["org_from"] = json!(v.vendor.org);
        detail["org"] = json!(org);
    }
    tx.audit(
        AuditEvent::new(
            ACTOR,
            Action::VendorDirectoryMove,
            format!("vendor:{}", v.vendor.name),
            detail,
        ),
        now,
    )
    .await?;
    tx.commit("vendor.directory.move").await?;
    Ok(())
}

/// Revokes every open grant of a directory vendor on an asset their organisation (as stored now) does
/// not service: what a move to another OU left behind. Run after every sync, whether or not the
/// entries' part succeeded, so a revocation that failed is tried again at the next. A grant that cannot
/// be revoked is logged and the others are still tried; a store error is reported at the end. (No
/// session starts under such a grant meanwhile: each start asks the organisation again.)
async fn revoke_outside_organisations(app: &App, now: i64) -> Result<(), SyncError> {
    let directory: BTreeSet<String> = app
        .store
        .directory_vendors()
        .await?
        .into_iter()
        .map(|v| v.vendor.name)
        .collect();
    let actor = crate::policy::grants::Actor::system(ACTOR);
    match crate::policy::grants::revoke_outside_organisations(
        &app.store,
        &app.events,
        now,
        &actor,
        |g| directory.contains(&g.vendor),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(crate::policy::grants::GrantError::Store(e)) => Err(e.into()),
        // Logged where it happened; not the store's, so the next sync has the same chance.
        Err(_) => Ok(()),
    }
}

async fn add_vendor(app: &App, name: &str, e: &Wanted, now: i64) -> Result<(), SyncError> {
    let (dn, keys) = (&e.dn, &e.keys);
    let org = e.org.as_deref().unwrap_or(crate::model::DIRECTORY_ORG);
    if app.store.vendor(name).await?.is_some() {
        // A local vendor of that name: local vendors are the administrator's, never the sync's.
        tracing::warn!(vendor = %name, %dn, "a local vendor has this directory vendor's name; skipped");
        return Ok(());
    }
    let purpose = format!("vendor-totp:{name}");
    // A seed nobody has seen: the vendor enrols their own at the first login.
    let placeholder = app.secrets.seal(&purpose, &totp::new_seed());
    let mut tx = app.store.begin().await?;
    let id = tx.insert_vendor(name, org, &placeholder, now).await?;
    tx.reset_vendor_totp(id, &placeholder).await?;
    tx.set_vendor_directory(id, dn, e.entry_id.as_deref())
        .await?;
    let mut added = Vec::new();
    for (fp, k) in keys {
        if app.store.vendor_by_key(fp).await?.is_some() {
            tracing::warn!(vendor = %name, key = %fp, "a directory key belongs to another vendor; skipped");
            continue;
        }
        tx.insert_vendor_key(id, &k.openssh, fp, &k.comment, now)
            .await?;
        added.push(fp.clone());
    }
    tx.audit(
        AuditEvent::new(
            ACTOR,
            Action::VendorAdd,
            format!("vendor:{name}"),
            json!({"org": org, "keys": added, "dn": dn, "directory": true}),
        ),
        now,
    )
    .await?;
    tx.commit("vendor.add").await?;
    tracing::info!(vendor = %name, "directory vendor added");
    Ok(())
}

async fn update_vendor(
    app: &App,
    v: &crate::store::DirectoryVendor,
    keys: &BTreeMap<String, super::keys::ParsedKey>,
    now: i64,
) -> Result<(), SyncError> {
    let name = &v.vendor.name;
    let subject = format!("vendor:{name}");
    let have: BTreeSet<&String> = v.keys.iter().collect();
    // A disabled directory vendor stays disabled (by the sync or by an administrator) until `vendor
    // enable`: the sync takes access away on its own, never gives it back.
    for (fp, k) in keys {
        if have.contains(fp) {
            continue;
        }
        if app.store.vendor_by_key(fp).await?.is_some() {
            tracing::warn!(vendor = %name, key = %fp, "a directory key belongs to another vendor; skipped");
            continue;
        }
        let mut tx = app.store.begin().await?;
        tx.insert_vendor_key(v.vendor.id, &k.openssh, fp, &k.comment, now)
            .await?;
        tx.audit(
            AuditEvent::new(ACTOR, Action::VendorKeyAdd, &subject, json!({"key": fp})),
            now,
        )
        .await?;
        tx.commit("vendor.key.add").await?;
    }
    for fp in &v.keys {
        if keys.contains_key(fp) {
            continue;
        }
        let mut tx = app.store.begin().await?;
        tx.delete_vendor_key(v.vendor.id, fp).await?;
        tx.audit(
            AuditEvent::new(
                ACTOR,
                Action::VendorKeyRemove,
                &subject,
                json!({"key": fp, "why": "removed from the directory"}),
            ),
            now,
        )
        .await?;
        tx.commit("vendor.key.remove").await?;
        tracing::info!(vendor = %name, key = %fp, "directory key removed");
    }
    Ok(())
}
