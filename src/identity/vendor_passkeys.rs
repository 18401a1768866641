//! Vendors' passkeys, the SSH side: the one-time links ssh prints while it waits, and the passkeys a
//! vendor holds. The page behind a link is `chaperone_web_approval::vendor_link`, which owns the link's
//! format; this module opens links, waits for their outcome, and changes stored passkeys (each change
//! in one transaction that holds the vendor's row, audited).
//!
//! A link is state every node sees (the database's `web_state`, kind `vendor-link`), so the browser
//! may reach any node while the waiter polls it. One vendor holds at most
//! `StateKind::VendorLink.per_subject()` (3) open links, so nobody can fill the shared cap and push
//! other vendors' links out; a link whose waiter went away is voided ([`Link`]'s drop).

use std::time::Duration;

use chaperone_web_approval::StateKind;
use chaperone_web_approval::passkey::{passkey_id, relying_party};
use chaperone_web_approval::vendor_link::{self, LinkPurpose, VendorLink};
use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{Action, AuditEvent};
use crate::model::Vendor;
use crate::store::StoreError;

/// How often a waiting ssh connection looks at its link.
const POLL: Duration = Duration::from_millis(250);

/// Whether this installation offers vendors passkeys: the web page's address must be able to be a
/// WebAuthn relying party (a DNS name), the same rule as staff passkeys.
pub fn offered(app: &App) -> bool {
    relying_party(&app.config.web.public_url).is_ok()
}

fn records(json: Option<&str>) -> Vec<Value> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// How many passkeys `vendor_id` holds.
pub async fn count(app: &App, vendor_id: i64) -> Result<usize, StoreError> {
    Ok(records(app.store.vendor_passkeys(vendor_id).await?.as_deref()).len())
}

/// The first characters of each passkey's credential id, in order: how `passkey list` names them.
pub async fn list(app: &App, vendor_id: i64) -> Result<Vec<String>, StoreError> {
    Ok(
        records(app.store.vendor_passkeys(vendor_id).await?.as_deref())
            .iter()
            .map(|p| {
                passkey_id(p)
                    .unwrap_or_else(|| "?".into())
                    .chars()
                    .take(12)
                    .collect()
            })
            .collect(),
    )
}

/// Changes `vendor`'s passkeys with `change`, in one transaction holding the vendor's row (no two
/// changes interleave, on any node), and audits `action` by `actor` when `change` says it changed
/// something. `change` is told whether the vendor, as held, is enabled.
async fn change(
    app: &App,
    vendor: &Vendor,
    action: Action,
    actor: &str,
    change: impl FnOnce(&mut Vec<Value>, bool) -> bool,
) -> Result<bool, StoreError> {
    let mut tx = app.store.begin().await?;
    let enabled = tx.hold_vendor(vendor.id).await?;
    let mut all = records(tx.vendor_passkeys(vendor.id).await?.as_deref());
    if !change(&mut all, enabled) {
        // Nothing changed: the transaction is dropped, which rolls it back.
        return Ok(false);
    }
    let text = if all.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&all).map_err(|e| StoreError::Corrupt(e.to_string()))?)
    };
    tx.set_vendor_passkeys(vendor.id, text.as_deref()).await?;
    tx.audit(
        AuditEvent::new(
            actor,
            action,
            format!("vendor:{}", vendor.name),
            json!({"passkeys": all.len()}),
        ),
        app.clock.now(),
    )
    .await?;
    tx.commit(action.as_str()).await?;
    Ok(true)
}

fn by_vendor(vendor: &Vendor) -> String {
    format!("vendor:{}", vendor.name)
}

/// What [`add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    /// The vendor holds the most passkeys already.
    Full,
    /// That passkey (its credential id) is stored already, or the record is not a passkey.
    Duplicate,
    /// The vendor is disabled.
    Disabled,
}

/// Adds a registered passkey (a webauthn-rs `Passkey` record) unless `vendor` holds `max` already or
/// holds this one.
pub async fn add(
    app: &App,
    vendor: &Vendor,
    record: Value,
    max: usize,
) -> Result<Added, StoreError> {
    let Some(id) = passkey_id(&record) else {
        return Ok(Added::Duplicate);
    };
    let mut result = Added::Added;
    change(
        app,
        vendor,
        Action::VendorPasskeyAdd,
        &by_vendor(vendor),
        |all, enabled| {
            // Disabled while the browser registered it: nothing is added.
            if !enabled {
                result = Added::Disabled;
                return false;
            }
            if all
                .iter()
                .any(|p| passkey_id(p).as_deref() == Some(id.as_str()))
            {
                result = Added::Duplicate;
                return false;
            }
            if all.len() >= max {
                result = Added::Full;
                return false;
            }
            all.push(record);
            true
        },
    )
    .await?;
    Ok(result)
}

/// Replaces the stored passkey with `record`'s credential id (its signature counter moved); false
/// when it is no longer stored (removed meanwhile: it does not come back).
pub async fn update(app: &App, vendor: &Vendor, record: Value) -> Result<bool, StoreError> {
    let Some(id) = passkey_id(&record) else {
        return Ok(false);
    };
    change(
        app,
        vendor,
        Action::VendorPasskeyUpdate,
        &by_vendor(vendor),
        |all, _| match all
            .iter_mut()
            .find(|p| passkey_id(p).as_deref() == Some(id.as_str()))
        {
            Some(stored) => {
                *stored = record;
                true
            }
            None => false,
        },
    )
    .await
}

/// What a passkey id (or its start) given by the vendor names among their passkeys; from [`remove`],
/// `One` means it was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    One,
    /// No passkey's id starts with what was given.
    NoSuch,
    /// Several do: more characters are needed.
    Ambiguous,
}

/// The one rule for what `prefix` names in `all` (as `passkey list` shows ids: by id, not by position,
/// so a list changed meanwhile never names another one): the index of the one passkey, or why not.
fn named(all: &[Value], prefix: &str) -> Result<usize, Named> {
    let matching: Vec<usize> = (0..all.len())
        .filter(|&i| {
            passkey_id(&all[i]).is_some_and(|id| !prefix.is_empty() && id.starts_with(prefix))
        })
        .collect();
    match matching.as_slice() {
        [i] => Ok(*i),
        [] => Err(Named::NoSuch),
        _ => Err(Named::Ambiguous),
    }
}

/// What `prefix` names among `vendor_id`'s passkeys now, changing nothing: said before a removal asks
/// for its confirming code, so a mistyped id costs no code.
pub async fn find(app: &App, vendor_id: i64, prefix: &str) -> Result<Named, StoreError> {
    let all = records(app.store.vendor_passkeys(vendor_id).await?.as_deref());
    Ok(named(&all, prefix).map_or_else(|why| why, |_| Named::One))
}

/// Removes `vendor`'s passkey that `prefix` names ([`named`], judged again in the transaction).
pub async fn remove(app: &App, vendor: &Vendor, prefix: &str) -> Result<Named, StoreError> {
    let mut result = Named::NoSuch;
    change(
        app,
        vendor,
        Action::VendorPasskeyRemove,
        &by_vendor(vendor),
        |all, _| match named(all, prefix) {
            Ok(i) => {
                all.remove(i);
                result = Named::One;
                true
            }
            Err(why) => {
                result = why;
                false
            }
        },
    )
    .await?;
    Ok(result)
}

/// Removes all of `vendor`'s passkeys (an administrator, `actor`); how many there were (none: nothing
/// is written or audited).
pub async fn clear(app: &App, vendor: &Vendor, actor: &str) -> Result<usize, StoreError> {
    let mut held = 0;
    change(app, vendor, Action::VendorPasskeyRemove, actor, |all, _| {
        held = all.len();
        all.clear();
        held > 0
    })
    .await?;
    Ok(held)
}

/// An open link: the address to print. Dropped before its outcome was taken (the vendor's connection
/// went away), it is voided.
pub struct Link {
    pub url: String,
    /// Who it is for (checked again when its outcome is judged).
    pub vendor: String,
    key: String,
    app: Option<App>,
}

impl std::fmt::Debug for Link {
    // The address holds the token (a usable link): never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("vendor", &self.vendor)
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let Some(app) = self.app.take() else { return };
        let key = std::mem::take(&mut self.key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { void(&app, &key).await });
        }
    }
}

/// Opens a link for `vendor`, valid for `ttl`.
pub async fn open(
    app: &App,
    vendor: &str,
    purpose: LinkPurpose,
    ttl: Duration,
) -> Result<Link, StoreError> {
    let (token, key) = vendor_link::new_token();
    let data = serde_json::to_string(&VendorLink::new(vendor, purpose))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let now = app.clock.now();
    // Rounded up, and a second more (the clock reads whole seconds): the link lapses no sooner than
    // its waiter gives up.
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(300) + 2;
    // At most `StateKind::per_subject` (3) open links per vendor.
    app.store
        .web_state_put_kind(
            StateKind::VendorLink,
            &key,
            Some(vendor),
            &data,
            now + ttl,
            now,
        )
        .await?;
    Ok(Link {
        url: vendor_link::link_url(&app.config.web.public_url, &token),
        vendor: vendor.to_owned(),
        key,
        app: Some(app.clone()),
    })
}

/// Waits until the link's ceremony ended, or `until`, and takes the link out (it is used once).
/// The link as it ended; its `outcome` is `None` when nobody used it in time (or it lapsed, or the
/// vendor's newer links pushed it out).
pub async fn wait(app: &App, mut link: Link, until: tokio::time::Instant) -> Option<VendorLink> {
    let kind = StateKind::VendorLink.as_str();
    loop {
        match app
            .store
            .web_state_get(kind, &link.key, app.clock.now(), None)
            .await
        {
            Ok(Some(data)) => match serde_json::from_str::<VendorLink>(&data) {
                // An outcome is final (the page changes a link only while it has none), so taking
                // the row now returns this same outcome.
                Ok(VendorLink {
                    outcome: Some(_), ..
                }) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "a vendor passkey link does not parse");
                    break;
                }
            },
            Ok(None) => break,
            // A database hiccup: look again at the next poll.
            Err(e) => tracing::warn!(error = %e, "cannot read a vendor passkey link"),
        }
        if tokio::time::Instant::now() + POLL > until {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Taken, not just read: an outcome written just now still counts, and no page sees it again. (If
    // this future is dropped meanwhile, the link's drop voids it.)
    let taken = void(app, &link.key).await;
    link.app = None;
    taken.and_then(|data| serde_json::from_str(&data).ok())
}

/// Takes the link under `key` out; its data, if it was still there.
async fn void(app: &App, key: &str) -> Option<String> {
    let kind = StateKind::VendorLink.as_str();
    match app.store.web_state_take(kind, key, app.clock.now()).await {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(error = %e, "cannot void a vendor passkey link; it lapses by itself");
            None
        }
    }
}
