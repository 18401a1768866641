//! Vendor login: the SSH key, then a TOTP code at the keyboard-interactive prompt (partial success).
//! Both factors, every time.
//!
//! Entry points: [`Auth::key_offered`], [`Auth::key_verified`], [`Auth::totp`], called from the russh
//! handler. Unknown users and wrong keys get the same rejection after the same delay (russh's constant
//! `auth_rejection_time`); only TOTP failures count toward the lockout, since OpenSSH clients routinely
//! offer several keys. Every success, failure and lock is audited.

use std::net::SocketAddr;

use russh::keys::PublicKey;
use serde_json::json;

use super::login::Login;
use crate::app::App;
use crate::audit::AuditEvent;
use crate::identity::{keys::fingerprint, totp};
use crate::model::Vendor;
use crate::policy::Principal;
use crate::secrets::SecretsError;
use crate::store::StoreError;

/// Outcome of the TOTP step.
#[derive(Debug)]
pub enum TotpOutcome {
    /// Both factors passed: who signed in, with which key.
    Accepted(Principal),
    Refused,
}

/// Why the TOTP step could not be judged (the login is refused).
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("the clock reads before 1970")]
    Clock,
}

/// The authentication state of one connection.
#[derive(Debug, Default)]
pub struct Auth {
    /// Set once a key of the named vendor was verified, for exactly this user name.
    key_ok: Option<(String, Vendor, String)>,
}

impl Auth {
    /// Would this key be accepted for `user`? (The client asks before signing.)
    pub async fn key_offered(&self, app: &App, user: &str, key: &PublicKey) -> bool {
        self.vendor_for(app, user, key).await.is_some()
    }

    /// The key's signature was verified for `user`: first factor done if it belongs to that vendor.
    pub async fn key_verified(&mut self, app: &App, user: &str, key: &PublicKey) -> bool {
        match self.vendor_for(app, user, key).await {
            Some(vendor) => {
                self.key_ok = Some((user.to_owned(), vendor, fingerprint(key)));
                true
            }
            None => false,
        }
    }

    /// Whether `user` already passed the key step (keyboard-interactive is refused before it).
    pub fn key_done_for(&self, user: &str) -> bool {
        self.key_ok.as_ref().is_some_and(|(u, ..)| u == user)
    }

    /// An inner (ProxyJump) login: only the outer login's key is accepted, as the same vendor.
    pub fn inner_key(&mut self, user: &str, key: &PublicKey, outer: &Principal) -> bool {
        fingerprint(key) == outer.key_fingerprint && Login::parse(user).is_some()
    }

    async fn vendor_for(&self, app: &App, user: &str, key: &PublicKey) -> Option<Vendor> {
        let login = Login::parse(user)?;
        let vendor = match app.store.vendor_by_key(&fingerprint(key)).await {
            Ok(v) => v?,
            Err(e) => {
                tracing::error!(error = %e, "vendor lookup failed; refusing");
                return None;
            }
        };
        let now = app.clock.now();
        let usable = vendor.name == login.vendor
            && vendor.enabled
            && vendor.locked_until.is_none_or(|t| t <= now);
        usable.then_some(vendor)
    }

    /// Checks a TOTP answer for the vendor whose key passed. Records the step (replay protection),
    /// failures and locks, each in the audit chain.
    pub async fn totp(&mut self, app: &App, peer: SocketAddr, answer: &str) -> TotpOutcome {
        let Some((user, vendor, key_fp)) = self.key_ok.clone() else {
            return TotpOutcome::Refused;
        };
        match check_totp(app, peer, &user, &vendor, &key_fp, answer).await {
            Ok(true) => TotpOutcome::Accepted(Principal {
                vendor_id: vendor.id,
                vendor: vendor.name.clone(),
                key_fingerprint: key_fp,
            }),
            Ok(false) => TotpOutcome::Refused,
            Err(e) => {
                tracing::error!(vendor = %vendor.name, error = %e, "TOTP check failed; refusing");
                TotpOutcome::Refused
            }
        }
    }
}

async fn check_totp(
    app: &App,
    peer: SocketAddr,
    user: &str,
    vendor: &Vendor,
    key_fp: &str,
    answer: &str,
) -> Result<bool, CheckError> {
    let now = app.clock.now();
    let subject = format!("vendor:{}", vendor.name);
    let actor = format!("vendor:{}", vendor.name);
    // Re-read: a lock set by another connection (or node) since the key step counts.
    let current = app.store.require_vendor(&vendor.name).await?;
    if !current.enabled || current.locked_until.is_some_and(|t| t > now) {
        let mut tx = app.store.begin().await?;
        tx.audit(
            AuditEvent::new(&actor, "auth.refused", &subject, json!({"peer": peer.to_string(), "why": if current.enabled { "locked" } else { "disabled" }})),
            now,
        )
        .await?;
        tx.commit("auth.refused").await?;
        crate::ops::metrics::login(crate::ops::metrics::Login::Refused);
        return Ok(false);
    }
    let (sealed, _) = app.store.vendor_totp(vendor.id).await?;
    let seed = app
        .secrets
        .open(&format!("vendor-totp:{}", vendor.name), &sealed)?;
    let step = totp::check(
        seed.expose(),
        answer,
        u64::try_from(now).map_err(|_| CheckError::Clock)?,
    );
    drop(seed);
    let mut tx = app.store.begin().await?;
    let accepted = match step {
        Some(step) => tx.accept_totp_step(vendor.id, step).await?,
        None => false,
    };
    if accepted {
        tx.clear_login_failures(vendor.id).await?;
        tx.audit(
            AuditEvent::new(&actor, "auth.login", &subject, json!({"peer": peer.to_string(), "user": user, "key": key_fp, "second_factor": "totp"})),
            now,
        )
        .await?;
        tx.commit("auth.login").await?;
        crate::ops::metrics::login(crate::ops::metrics::Login::Success);
        tracing::info!(vendor = %vendor.name, %peer, "vendor signed in");
        return Ok(true);
    }
    let why = if step.is_some() {
        "replayed code"
    } else {
        "wrong code"
    };
    let cfg = &app.config.ssh;
    let failure = tx
        .record_login_failure(
            vendor.id,
            now,
            i64::try_from(cfg.failure_window.as_secs()).unwrap_or(i64::MAX),
            i64::from(cfg.max_failures),
            i64::try_from(cfg.lockout.as_secs()).unwrap_or(i64::MAX),
        )
        .await?;
    tx.audit(
        AuditEvent::new(
            &actor,
            "auth.totp.failure",
            &subject,
            json!({"peer": peer.to_string(), "why": why, "recent_failures": failure.recent}),
        ),
        now,
    )
    .await?;
    if let Some(until) = failure.locked_until {
        tx.audit(
            AuditEvent::new(
                "system",
                "auth.lock",
                &subject,
                json!({"until": until, "failures": failure.recent}),
            ),
            now,
        )
        .await?;
        crate::ops::metrics::lockout();
        tracing::warn!(vendor = %vendor.name, until, "vendor locked after repeated TOTP failures");
    }
    tx.commit("auth.totp.failure").await?;
    crate::ops::metrics::login(crate::ops::metrics::Login::Failure);
    tracing::info!(vendor = %vendor.name, %peer, why, "TOTP refused");
    Ok(false)
}
