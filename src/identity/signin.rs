//! The sign-in rules, one owner for every identity: TOTP verification with replay refusal, and the
//! lockout, for vendors (SSH) and staff (web; local or directory accounts) alike, with limits from the
//! config for both (`[ssh]` and `[web]` `max_failures`, `failure_window`; `[ssh] lockout`).
//!
//! Entry point: [`judge`]. A caller hands it an [`Attempt`] (who, from where, whether the first factor
//! passed, the second factor presented) and gets a [`Verdict`]; the lockout is checked, the second
//! factor verified and its time step taken, the failure counted or the failures cleared, and every
//! outcome audited, all in one transaction that first holds the account's row (so judgements of one
//! account queue, on every node). No caller counts a failure itself, so none can forget to.
//! [`first_codes`] checks the two consecutive codes of a TOTP enrollment.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::config::{SshConfig, WebConfig};
use crate::identity::totp;
use crate::ops::metrics;
use crate::secrets::SecretsError;
use crate::store::{StoreError, Tx};

/// Why an attempt could not be judged (the caller refuses the sign-in; nothing was decided).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed TOTP seed could not be opened (wrong key, corrupt row).
    #[error("cannot open a TOTP seed")]
    Secrets(#[from] SecretsError),
}

/// How failures lock an account. Both kinds read their limits from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lockout {
    /// Vendors (`[ssh]`): `max` failures within `window` lock the account, from everywhere, for
    /// `lockout`; the count starts afresh after a lock. Key offers are not failures (clients offer
    /// several keys), so only second-factor failures count.
    Account {
        max: u32,
        window: Duration,
        lockout: Duration,
    },
    /// Staff (`[web]`): failures are counted per (account, source address); once `max` of one pair fall
    /// within the sliding `window`, that account is refused from that source (its second factor not
    /// looked at) until the oldest slides out. Failures from one address never refuse the account from
    /// another, so nobody locks an approver out from everywhere by knowing their name. Failures that
    /// had the right password are also counted for the whole account: `max` of them within `window`,
    /// from any addresses, refuse it from everywhere. Only someone who holds the password can cause
    /// that, and many addresses then buy no more guesses at the second factor. Attempts refused while
    /// locked are audited but not counted.
    PerSource { max: u32, window: Duration },
}

impl Lockout {
    pub fn vendors(ssh: &SshConfig) -> Lockout {
        Lockout::Account {
            max: ssh.max_failures,
            window: ssh.failure_window,
            lockout: ssh.lockout,
        }
    }

    pub fn staff(web: &WebConfig) -> Lockout {
        Lockout::PerSource {
            max: web.max_failures,
            window: web.failure_window,
        }
    }

    /// The first second of a `window` that ends at `now`.
    pub fn since(window: Duration, now: i64) -> i64 {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2);
        now.saturating_sub(window) + 1
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Whose sign-in is judged.
#[derive(Debug, Clone)]
pub enum Account {
    Vendor { id: i64, name: String },
    Staff { id: i64, name: String },
}

impl Account {
    /// The purpose a TOTP seed of this account is sealed for.
    pub fn seed_purpose(&self) -> String {
        match self {
            Account::Vendor { name, .. } => format!("vendor-totp:{name}"),
            Account::Staff { name, .. } => format!("staff-totp:{name}"),
        }
    }

    fn actor(&self) -> String {
        match self {
            Account::Vendor { name, .. } => format!("vendor:{name}"),
            Account::Staff { name, .. } => format!("staff:{name}"),
        }
    }

    fn subject(&self) -> String {
        match self {
            Account::Vendor { name, .. } => format!("vendor:{name}"),
            Account::Staff { name, .. } => format!("user:{name}"),
        }
    }

    /// The lockout that applies, from the config.
    fn lockout(&self, app: &App) -> Lockout {
        match self {
            Account::Vendor { .. } => Lockout::vendors(&app.config.ssh),
            Account::Staff { .. } => Lockout::staff(&app.config.web),
        }
    }
}

/// The second factor presented.
pub enum Second<'a> {
    /// A TOTP code, checked against the account's sealed seed (`None`: no seed, never matches).
    Totp {
        sealed: Option<&'a [u8]>,
        code: &'a str,
    },
    /// A passkey assertion checked by webauthn-rs; `Err` says why it failed.
    Passkey(Result<(), &'static str>),
    /// A TOTP app enrolled in this very attempt (a vendor's first login): the caller checked two
    /// consecutive codes of a new seed; `Ok((sealed seed, step of the second code))` is stored with the
    /// sign-in, `Err` says why the codes were refused (a failure like a wrong code).
    Enrollment(Result<(&'a [u8], i64), &'static str>),
    /// None: a signed-in user confirms a change with the password again (nothing is recorded on
    /// success).
    Reauthentication,
    /// A TOTP code a signed-in account typed to confirm a change (a vendor's `passkey add`): checked, its step
    /// taken and a failure counted exactly as at sign-in, so the code the session signed in with, or
    /// any code before it, is refused as a replay; success is audited as `auth.confirm`, not a login.
    Confirm {
        sealed: Option<&'a [u8]>,
        code: &'a str,
    },
}

impl std::fmt::Debug for Second<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Second::Totp { .. } => f.write_str("Totp(..)"),
            Second::Passkey(r) => f.debug_tuple("Passkey").field(r).finish(),
            Second::Enrollment(r) => f
                .debug_tuple("Enrollment")
                .field(&r.as_ref().map(|_| "..").map_err(|e| *e))
                .finish(),
            Second::Reauthentication => f.write_str("Reauthentication"),
            Second::Confirm { .. } => f.write_str("Confirm(..)"),
        }
    }
}

/// One sign-in attempt.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub account: Account,
    /// Where it comes from: a vendor's peer address, a staff member's source (IPv4 or IPv6 /64).
    pub source: String,
    /// The first factor passed: the vendor's key (always, by the time TOTP is asked), the staff
    /// member's password (argon2id here, or a bind to the directory).
    pub first_factor: bool,
    pub second: Second<'a>,
    /// The vendor key this attempt signs in with, if any: judged still the vendor's inside the
    /// transaction (a key removed while its holder typed the code, or waited on a passkey, signs
    /// nobody in).
    pub key: Option<&'a str>,
    /// Fields added to the success event (`user` and `key` of a vendor login).
    pub detail: Value,
}

/// What [`judge`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Refused; the reason is in the audit log only.
    Refused,
}

/// What a TOTP code is worth for an account, its step taken in the transaction when it is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Accepted(i64),
    Wrong,
    Replayed,
}

/// Checks `code` against `seed` at `now` and, when it matches, takes its time step for `account` in
/// `tx` (a single conditional UPDATE: two nodes cannot both accept one code; a code at or before the
/// last accepted step is a replay). The one TOTP verification of every sign-in.
async fn take_code(
    tx: &mut Tx,
    account: &Account,
    seed: &[u8],
    code: &str,
    now: i64,
) -> Result<Code, StoreError> {
    let Some(step) = totp::check(seed, code, now.max(0).unsigned_abs()) else {
        return Ok(Code::Wrong);
    };
    let fresh = match account {
        Account::Vendor { id, .. } => tx.accept_totp_step(*id, step).await?,
        Account::Staff { id, .. } => tx.accept_staff_totp_step(*id, step).await?,
    };
    Ok(if fresh {
        Code::Accepted(step)
    } else {
        Code::Replayed
    })
}

/// The time step of the second of two consecutive codes an enrolling user typed from a new seed, if
/// they are consecutive and current (±1 step at `now`). Nothing is stored: the caller stores the seed
/// with this step as the last accepted one, so neither code can be used again.
pub fn first_codes(seed: &[u8], first: &str, second: &str, now: i64) -> Option<i64> {
    let now = now.max(0).unsigned_abs();
    // The first code may be from the step before the second one's: look for a pair (s, s + 1) with
    // both within the skew of now.
    let second_step = totp::check(seed, second, now)?;
    let step_secs = totp::STEP_SECS;
    let first_at = u64::try_from(second_step - 1)
        .ok()?
        .checked_mul(step_secs)?;
    // `check` at the first step's own time with ±1 skew: require the exact step.
    let first_step = totp::check(seed, first, first_at)?;
    (first_step == second_step - 1).then_some(second_step)
}

/// The time step of `code` from a seed being enrolled on the web page (a staff member's first TOTP
/// app: one current code, ±1 step at `now`). Nothing is stored: the caller stores the seed with this
/// step as the last accepted one, so the code cannot be used again to sign in.
pub fn enrollment_code(seed: &[u8], code: &str, now: i64) -> Option<i64> {
    totp::check(seed, code, now.max(0).unsigned_abs())
}

/// Whether `account` is locked against attempts from `source` at `now`, by the same rule [`judge`]
/// applies: a first look, outside any transaction, for a caller that must not do something on a locked
/// account's behalf (a bind to the directory). [`judge`] still decides, and audits, under the row lock.
pub async fn locked(
    app: &App,
    account: &Account,
    source: &str,
    now: i64,
) -> Result<bool, SignInError> {
    Ok(match (account.lockout(app), account) {
        (Lockout::PerSource { max, window }, Account::Staff { id, .. }) => {
            let since = Lockout::since(window, now);
            app.store
                .staff_signin_failures_now(*id, source, since)
                .await?
                >= i64::from(max)
                || app
                    .store
                    .staff_second_factor_failures_now(*id, since)
                    .await?
                    >= i64::from(max)
        }
        (Lockout::Account { .. }, Account::Vendor { name, .. }) => app
            .store
            .vendor(name)
            .await?
            .is_some_and(|v| v.locked_until.is_some_and(|t| t > now)),
        // Each kind has its rule (`Account::lockout`); no other pairing is made.
        _ => false,
    })
}

/// Whether directory sign-ins of `name`, a name no staff account holds, are locked from `source` at
/// `now`: the staff rule ([`Lockout::staff`]) over the refusals [`directory_name_refused`] counted. A
/// locked attempt is audited here and must be refused before the directory is asked, so guessing a
/// directory password through the sign-in form costs the directory at most `max_failures` binds a
/// window from one address, as for an account. Like [`locked`], a first look outside any
/// transaction: attempts from one address in parallel are bounded by the web's per-address rate limit.
pub async fn directory_name_locked(
    app: &App,
    name: &str,
    source: &str,
    now: i64,
) -> Result<bool, SignInError> {
    let web = &app.config.web;
    let failures = app
        .store
        .directory_signin_failures(name, source, Lockout::since(web.failure_window, now))
        .await?;
    if failures < i64::from(web.max_failures) {
        return Ok(false);
    }
    let mut tx = app.store.begin().await?;
    tx.audit(
        AuditEvent::new(
            "system",
            Action::StaffSigninFailed,
            format!("user:{name}"),
            json!({"why": "locked", "locked": true, "source": source, "failures": failures,
                   "account": false}),
        ),
        now,
    )
    .await?;
    tx.commit("staff.signin.failed").await?;
    Ok(true)
}

/// Counts and audits a refused directory sign-in of `name`, a name no staff account holds (the
/// directory's answer does not say whether the entry exists or the password was wrong).
pub async fn directory_name_refused(
    app: &App,
    name: &str,
    source: &str,
    now: i64,
) -> Result<(), SignInError> {
    let web = &app.config.web;
    let since = Lockout::since(web.failure_window, now);
    let failures = app
        .store
        .directory_signin_failures(name, source, since)
        .await?;
    let locked = failures + 1 >= i64::from(web.max_failures);
    let mut tx = app.store.begin().await?;
    tx.add_directory_signin_failure(name, source, now, since)
        .await?;
    tx.audit(
        AuditEvent::new(
            "system",
            Action::StaffSigninFailed,
            format!("user:{name}"),
            json!({"why": "refused by the directory", "locked": locked, "source": source,
                   "account": false}),
        ),
        now,
    )
    .await?;
    tx.commit("staff.signin.failed").await?;
    if locked {
        tracing::warn!(user = %name, %source,
            "directory sign-ins of a name with no account locked from this address");
    }
    Ok(())
}

/// Judges `attempt` at `now`: see the module doc. Returns `Refused` for every kind of failure (locked,
/// wrong first factor, wrong or replayed code, refused passkey); which one is audited.
pub async fn judge(app: &App, attempt: Attempt<'_>, now: i64) -> Result<Verdict, SignInError> {
    let account = &attempt.account;
    let rule = account.lockout(app);
    let actor = account.actor();
    let subject = account.subject();
    let source = attempt.source.as_str();
    let mut tx = app.store.begin().await?;
    // Judgements of one account queue behind this transaction (a row lock on PostgreSQL; SQLite's
    // BEGIN IMMEDIATE serialises writers anyway): counting and recording below are then exact. The
    // hold reads the account's standing too: a disable committed before it is seen here, one after it
    // waits for this judgement and then cuts what it signed in (the watcher). No caller's earlier read
    // decides.
    let enabled = match account {
        Account::Vendor { id, .. } => tx.hold_vendor(*id).await?,
        Account::Staff { id, .. } => tx.hold_staff_user(*id).await?,
    };

    // 1. What bars a vendor before any factor is looked at (its step is not used up): disabled,
    // the key no longer theirs, locked.
    if let Account::Vendor { id, .. } = account {
        let barred = if !enabled {
            Some("disabled")
        } else if let Some(key) = attempt.key
            && tx.vendor_of_key(key).await? != Some(*id)
        {
            Some("key removed")
        } else if tx.vendor_locked_until(*id).await?.is_some_and(|t| t > now) {
            Some("locked")
        } else {
            None
        };
        if let Some(why) = barred {
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AuthRefused,
                    &subject,
                    json!({"peer": source, "why": why}),
                ),
                now,
            )
            .await?;
            tx.commit("auth.refused").await?;
            metrics::login(metrics::Login::Refused);
            return Ok(Verdict::Refused);
        }
    }

    // The staff lockout. A locked account's second factor is not looked at.
    let failures = match (rule, account) {
        (Lockout::PerSource { max, window }, Account::Staff { id, .. }) => {
            let since = Lockout::since(window, now);
            let failures = tx.staff_signin_failures(*id, source, since).await?;
            let everywhere = tx.staff_second_factor_failures(*id, since).await? >= i64::from(max);
            if failures >= i64::from(max) || everywhere {
                tx.audit(
                    AuditEvent::new(
                        &actor,
                        Action::StaffSigninFailed,
                        &subject,
                        json!({"why": "locked", "locked": true, "source": source,
                               "password_ok": attempt.first_factor, "failures": failures,
                               "everywhere": everywhere}),
                    ),
                    now,
                )
                .await?;
                tx.commit("staff.signin.failed").await?;
                return Ok(Verdict::Refused);
            }
            failures
        }
        // Each kind has its rule (`Account::lockout`); no other pairing is made.
        _ => 0,
    };

    // 2. The factors. A staff account disabled is refused like a wrong password, and counted (as a
    // directory account an administrator disabled always was).
    let failed: Option<&'static str> = if !enabled {
        Some("account disabled")
    } else if !attempt.first_factor {
        Some("wrong password")
    } else {
        match &attempt.second {
            Second::Reauthentication => None,
            Second::Passkey(Ok(())) => None,
            Second::Passkey(Err(why)) | Second::Enrollment(Err(why)) => Some(*why),
            Second::Enrollment(Ok(_)) => None,
            Second::Totp { sealed, code } | Second::Confirm { sealed, code } => {
                let code = match sealed {
                    None => Code::Wrong,
                    Some(sealed) => {
                        let seed = app.secrets.open(&account.seed_purpose(), sealed)?;
                        take_code(&mut tx, account, seed.expose(), code, now).await?
                    }
                };
                match (code, account) {
                    (Code::Accepted(step), Account::Staff { .. }) => {
                        tx.audit(
                            AuditEvent::new(
                                &actor,
                                Action::StaffTotpAccept,
                                &subject,
                                json!({"step": step}),
                            ),
                            now,
                        )
                        .await?;
                        None
                    }
                    (Code::Accepted(_), Account::Vendor { .. }) => None,
                    // Staff are told nothing of which; the audit says it the same way it always did.
                    (_, Account::Staff { .. }) => Some("wrong or reused TOTP code"),
                    (Code::Replayed, Account::Vendor { .. }) => Some("replayed code"),
                    (Code::Wrong, Account::Vendor { .. }) => Some("wrong code"),
                }
            }
        }
    };

    // 3. Count the failure, or clear the failures.
    if let Some(why) = failed {
        match (rule, account) {
            (
                Lockout::Account {
                    max,
                    window,
                    lockout,
                },
                Account::Vendor { id, name },
            ) => {
                let failure = tx
                    .record_login_failure(*id, now, secs(window), i64::from(max), secs(lockout))
                    .await?;
                let mut detail =
                    json!({"peer": source, "why": why, "recent_failures": failure.recent});
                // Which key and user name failed (and how a passkey link was left), as a login says.
                if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), &attempt.detail) {
                    for (k, v) in extra {
                        d.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                if matches!(attempt.second, Second::Confirm { .. }) {
                    detail["confirming"] = json!(true);
                }
                tx.audit(
                    AuditEvent::new(&actor, Action::AuthTotpFailure, &subject, detail),
                    now,
                )
                .await?;
                if let Some(until) = failure.locked_until {
                    tx.audit(
                        AuditEvent::new(
                            "system",
                            Action::AuthLock,
                            &subject,
                            json!({"until": until, "failures": failure.recent}),
                        ),
                        now,
                    )
                    .await?;
                    tracing::warn!(vendor = %name, until, "vendor locked after repeated TOTP failures");
                }
                tx.commit("auth.totp.failure").await?;
                if failure.locked_until.is_some() {
                    metrics::lockout();
                }
                metrics::login(metrics::Login::Failure);
                tracing::info!(vendor = %name, peer = %source, why, "TOTP refused");
            }
            (Lockout::PerSource { max, window }, Account::Staff { id, name }) => {
                let since = Lockout::since(window, now);
                // A password checked right for an account disabled meanwhile is no second-factor
                // failure (those lock the account everywhere).
                let password_ok = attempt.first_factor && enabled;
                tx.add_staff_signin_failure(*id, source, now, since, password_ok)
                    .await?;
                let everywhere = password_ok
                    && tx.staff_second_factor_failures(*id, since).await? >= i64::from(max);
                let locked = failures + 1 >= i64::from(max) || everywhere;
                tx.audit(
                    AuditEvent::new(
                        &actor,
                        Action::StaffSigninFailed,
                        &subject,
                        json!({"why": why, "locked": locked, "source": source,
                               "everywhere": everywhere}),
                    ),
                    now,
                )
                .await?;
                tx.commit("staff.signin.failed").await?;
                if everywhere {
                    tracing::warn!(user = %name, %source,
                        "staff sign-ins locked from every address: repeated second-factor failures with the right password");
                } else if locked {
                    tracing::warn!(user = %name, %source, "staff sign-ins locked from this address");
                }
            }
            _ => {
                tx.audit(
                    AuditEvent::new(
                        &actor,
                        Action::AuthRefused,
                        &subject,
                        json!({"why": why, "source": source}),
                    ),
                    now,
                )
                .await?;
                tx.commit("auth.refused").await?;
            }
        }
        return Ok(Verdict::Refused);
    }
    let method = match attempt.second {
        // Nothing changed: the transaction is dropped, which rolls it back.
        Second::Reauthentication => return Ok(Verdict::Accepted),
        Second::Totp { .. } => "totp",
        Second::Confirm { .. } => "confirm",
        Second::Passkey(_) => "passkey",
        Second::Enrollment(Ok((sealed, step))) => {
            let done = match account {
                Account::Vendor { id, .. } => tx.enroll_vendor_totp(*id, sealed, step).await?,
                // Staff enrol on the web page (their own flow); nothing calls this for them.
                Account::Staff { .. } => false,
            };
            if !done {
                // Enrolled meanwhile by another connection: this seed is not the one stored.
                tx.audit(
                    AuditEvent::new(
                        &actor,
                        Action::AuthRefused,
                        &subject,
                        json!({"peer": source, "why": "enrolled meanwhile"}),
                    ),
                    now,
                )
                .await?;
                tx.commit("auth.refused").await?;
                return Ok(Verdict::Refused);
            }
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::VendorTotpEnroll,
                    &subject,
                    json!({"peer": source}),
                ),
                now,
            )
            .await?;
            "totp"
        }
        Second::Enrollment(Err(_)) => return Ok(Verdict::Refused),
    };
    match account {
        Account::Vendor { id, name } | Account::Staff { id, name } if method == "confirm" => {
            // The same proof as a sign-in's code: the failures before it are cleared the same way.
            match account {
                Account::Vendor { .. } => tx.clear_login_failures(*id).await?,
                Account::Staff { .. } => tx.clear_staff_signin_failures(*id, source).await?,
            }
            let mut detail = json!({"peer": source});
            if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), &attempt.detail) {
                d.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            tx.audit(
                AuditEvent::new(&actor, Action::AuthConfirm, &subject, detail),
                now,
            )
            .await?;
            tx.commit("auth.confirm").await?;
            tracing::info!(account = %name, peer = %source, "a change confirmed with a code");
        }
        Account::Vendor { id, name } => {
            tx.clear_login_failures(*id).await?;
            let mut detail = json!({"peer": source});
            if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), &attempt.detail) {
                d.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                d.insert("second_factor".into(), json!(method));
            }
            tx.audit(
                AuditEvent::new(&actor, Action::AuthLogin, &subject, detail),
                now,
            )
            .await?;
            tx.commit("auth.login").await?;
            metrics::login(metrics::Login::Success);
            tracing::info!(vendor = %name, peer = %source, "vendor signed in");
        }
        Account::Staff { id, .. } => {
            tx.clear_staff_signin_failures(*id, source).await?;
            let mut detail = json!({"method": method, "source": source});
            if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), &attempt.detail) {
                d.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            tx.audit(
                AuditEvent::new(&actor, Action::StaffSignin, &subject, detail),
                now,
            )
            .await?;
            tx.commit("staff.signin").await?;
        }
    }
    Ok(Verdict::Accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_needs_two_consecutive_current_codes() {
        let seed = b"12345678901234567890";
        let now = 1_000_000_020_i64; // inside step 33333334
        let at = |t: i64| totp::code_at(seed, t.unsigned_abs()).unwrap();
        // this step's code and the next one's (typed a little early, within the skew)
        assert_eq!(
            first_codes(seed, &at(now), &at(now + 30), now),
            Some(now / 30 + 1)
        );
        // the step before and this one
        assert_eq!(
            first_codes(seed, &at(now - 30), &at(now), now),
            Some(now / 30)
        );
        // the same code twice, reversed, or not adjacent
        assert_eq!(first_codes(seed, &at(now), &at(now), now), None);
        assert_eq!(first_codes(seed, &at(now + 30), &at(now), now), None);
        assert_eq!(first_codes(seed, &at(now - 30), &at(now + 30), now), None);
        // old codes
        assert_eq!(first_codes(seed, &at(now - 120), &at(now - 90), now), None);
        assert_eq!(first_codes(seed, "", "", now), None);
    }

    #[test]
    fn lockout_windows() {
        assert_eq!(Lockout::since(Duration::from_secs(60), 1000), 941);
    }
}
