//! Vendors' passkeys, the SSH side: the one-time links ssh prints while it waits, and the passkeys a
//! vendor holds. The page behind a link is `chaperone_web_approval::vendor_link`, which owns the link's
//! format; this module opens links, waits for their outcome, and stores and removes passkeys (audited).
//!
//! A link is state every node sees (the database's `web_state`, kind `vendor-link`), so the browser
//! may reach any node while the waiting ssh connection is held by another. The waiter polls it.

use std::time::Duration;

use chaperone_web_approval::vendor_link::{self, LinkOutcome, LinkPurpose, VendorLink};
use chaperone_web_approval::{StateKind, passkey::relying_party};
use serde_json::json;

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

/// How many passkeys `vendor_id` holds (0 for none or for a record that does not parse, which the
/// page refuses to use anyway).
pub async fn count(app: &App, vendor_id: i64) -> Result<usize, StoreError> {
    let json = app.store.vendor_passkeys(vendor_id).await?;
    Ok(json
        .as_deref()
        .and_then(|j| serde_json::from_str::<Vec<serde_json::Value>>(j).ok())
        .map_or(0, |p| p.len()))
}

/// Replaces `vendor`'s passkeys (`None`: removes them all) and audits `action`, in one transaction.
/// The actor is the vendor themselves unless `actor` names another (an administrator).
pub async fn store(
    app: &App,
    vendor: &Vendor,
    passkeys: Option<&str>,
    action: Action,
) -> Result<(), StoreError> {
    store_by(
        app,
        vendor,
        passkeys,
        action,
        &format!("vendor:{}", vendor.name),
    )
    .await
}

/// [`store`] by `actor`.
pub async fn store_by(
    app: &App,
    vendor: &Vendor,
    passkeys: Option<&str>,
    action: Action,
    actor: &str,
) -> Result<(), StoreError> {
    let held = passkeys
        .and_then(|j| serde_json::from_str::<Vec<serde_json::Value>>(j).ok())
        .map_or(0, |p| p.len());
    let mut tx = app.store.begin().await?;
    tx.set_vendor_passkeys(vendor.id, passkeys).await?;
    tx.audit(
        AuditEvent::new(
            actor,
            action,
            format!("vendor:{}", vendor.name),
            json!({"passkeys": held}),
        ),
        app.clock.now(),
    )
    .await?;
    tx.commit(action.as_str()).await
}

/// Removes `vendor`'s passkey number `n` (1-based, as `passkey list` shows them); false when there is
/// no such passkey.
pub async fn remove(app: &App, vendor: &Vendor, n: usize) -> Result<bool, StoreError> {
    let json = app.store.vendor_passkeys(vendor.id).await?;
    let mut all: Vec<serde_json::Value> = json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    if n == 0 || n > all.len() {
        return Ok(false);
    }
    all.remove(n - 1);
    let text = if all.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&all).map_err(|e| StoreError::Corrupt(e.to_string()))?)
    };
    store(app, vendor, text.as_deref(), Action::VendorPasskeyRemove).await?;
    Ok(true)
}

/// The first characters of each passkey's credential id, in order: how `passkey list` names them.
pub async fn list(app: &App, vendor_id: i64) -> Result<Vec<String>, StoreError> {
    let json = app.store.vendor_passkeys(vendor_id).await?;
    let all: Vec<serde_json::Value> = json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    Ok(all
        .iter()
        .map(|p| {
            p.pointer("/cred/cred_id")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
                .chars()
                .take(12)
                .collect()
        })
        .collect())
}

/// An open link: the address to print, and the key it is stored under.
#[derive(Debug)]
pub struct Link {
    pub url: String,
    key: String,
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
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(300).max(1);
    let kind = StateKind::VendorLink;
    app.store
        .web_state_put(
            kind.as_str(),
            &key,
            Some(vendor),
            &data,
            now + ttl,
            now,
            kind.max_held(),
        )
        .await?;
    Ok(Link {
        url: vendor_link::link_url(&app.config.web.public_url, &token),
        key,
    })
}

/// Waits until the link's ceremony ended, or `until`; the link is taken out either way (used once).
/// `None`: no outcome in time (or the link lapsed or was pushed out).
pub async fn wait(app: &App, link: &Link, until: tokio::time::Instant) -> Option<LinkOutcome> {
    let kind = StateKind::VendorLink.as_str();
    loop {
        let now = app.clock.now();
        match app.store.web_state_get(kind, &link.key, now, None).await {
            Ok(Some(data)) => match serde_json::from_str::<VendorLink>(&data) {
                Ok(VendorLink {
                    outcome: Some(_), ..
                }) => {
                    // Taken, not just read: only one waiter (and no later page) sees this outcome.
                    let taken = app.store.web_state_take(kind, &link.key, now).await;
                    return match taken {
                        Ok(Some(data)) => serde_json::from_str::<VendorLink>(&data)
                            .ok()
                            .and_then(|l| l.outcome),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot take a vendor passkey link");
                            None
                        }
                    };
                }
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
    close(app, link).await;
    None
}

/// Voids a link nobody waits for any more (the vendor stopped waiting).
pub async fn close(app: &App, link: &Link) {
    let kind = StateKind::VendorLink.as_str();
    if let Err(e) = app
        .store
        .web_state_take(kind, &link.key, app.clock.now())
        .await
    {
        tracing::warn!(error = %e, "cannot void a vendor passkey link; it lapses by itself");
    }
}
