//! The core side of the web page: [`WebCore`] implements `chaperone_web_approval::Core` over the store,
//! the policy and the secrets key, so the web crate never sees SQL or SSH. Every change goes through
//! `policy` (decisions, revocations) or a store `Tx` with its audit event (sign-in, enrollment).
//!
//! Entry point: [`WebCore::new`], handed to `chaperone_web_approval::router` by `server::run`.

use std::time::Duration;

use chaperone_web_approval::{
    Accounts, Approvals, CoreError, Decision, Enrollment, GrantView, Method, RequestView,
    Role as WebRole, SecondFactor, SessionView, SignInAttempt, SignInState, Staff, StaffAccount,
    StateKind, Verdict,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::config::{format_duration, parse_duration};
use crate::identity::ldap::{Authn, Directory, LdapError};
use crate::identity::signin::{self, Account, Attempt, Second};
use crate::identity::totp;
use crate::model::{AccessRequest, Criticality, RequestStatus, Role, check_name};
use crate::policy::grants::{self, GrantError};
use crate::policy::requests::{self, Approver, AuthMethod, DecideError, Outcome};
use crate::store::{StaffAuth, StoreError};

/// Sign-in state kept at most, per kind (sessions are made only by full sign-ins; ceremony starts need
/// no account, so a flood of them drops the oldest instead of growing the table).
fn max_state(kind: StateKind) -> u32 {
    match kind {
        StateKind::Session => 10_000,
        StateKind::Ceremony => 1_000,
    }
}

#[derive(Debug, Clone)]
pub struct WebCore {
    app: App,
}

impl WebCore {
    pub fn new(app: App) -> WebCore {
        WebCore { app }
    }
}

/// Oversized sign-in state is the request's fault (400), anything else the store's.
fn state_error(e: StoreError) -> CoreError {
    match e {
        StoreError::TooLarge(why) => CoreError::Invalid(why),
        other => internal(other),
    }
}

/// The password hash an enrollment stores: a local account must choose one; a directory account's is
/// the directory's, so none is stored whatever was sent.
fn enrollment_password<'a>(
    user: &StaffAuth,
    password_hash: Option<&'a str>,
) -> Result<Option<&'a str>, CoreError> {
    match (user.directory, password_hash) {
        (true, _) => Ok(None),
        (false, Some(h)) => Ok(Some(h)),
        (false, None) => Err(CoreError::Invalid("Choose a password.".into())),
    }
}

fn internal(e: StoreError) -> CoreError {
    tracing::error!(error = %e, "web: store error");
    CoreError::Internal
}

fn role(r: Role) -> WebRole {
    match r {
        Role::Approver => WebRole::Approver,
        Role::Auditor => WebRole::Auditor,
        Role::Admin => WebRole::Admin,
    }
}

/// The staff member behind a session as the store says now: the role is re-read on every decision,
/// never trusted from the session's stored data (a directory re-check or `user disable` may have
/// changed it since the sign-in). A disabled or vanished account may do nothing.
async fn current(app: &App, s: &Staff) -> Result<(Approver, StaffAuth), CoreError> {
    let Some(user) = app
        .store
        .staff_auth(&s.name)
        .await
        .map_err(internal)?
        .filter(|u| u.enabled)
    else {
        return Err(CoreError::Forbidden(format!(
            "{} may no longer do this: the account is disabled",
            s.name
        )));
    };
    let approver = Approver {
        name: user.name.clone(),
        role: user.role,
        method: match s.method {
            Method::Passkey => AuthMethod::Passkey,
            Method::Totp => AuthMethod::Totp,
        },
    };
    Ok((approver, user))
}

fn dur(secs: i64) -> String {
    format_duration(Duration::from_secs(secs.unsigned_abs()))
}

fn view(r: AccessRequest) -> RequestView {
    RequestView {
        id: r.id,
        approvals_needed: if r.criticality == Criticality::Critical {
            2
        } else {
            1
        },
        approvals: r
            .approvals
            .iter()
            .map(|a| format!("{} ({})", a.approver, a.method))
            .collect(),
        vendor: r.vendor,
        org: r.org,
        asset: r.asset,
        zone: r.zone,
        purpose: r.purpose,
        criticality: r.criticality.to_string(),
        services: r.services,
        duration_secs: r.duration_secs,
        duration: dur(r.duration_secs),
        reason: r.reason,
        status: r.status.to_string(),
        created_at: r.created_at,
        created: format_time(r.created_at),
        expires_at: r.expires_at,
        decided_by: r.decided_by,
        decision_reason: r.decision_reason,
        grant_id: r.grant_id,
    }
}

fn decide_error(e: DecideError) -> CoreError {
    match e {
        DecideError::NotFound(_) => CoreError::NotFound,
        DecideError::SelfApproval
        | DecideError::AlreadyApproved
        | DecideError::NotAnApprover(_) => CoreError::Forbidden(e.to_string()),
        DecideError::NotPending { .. } | DecideError::VendorDisabled(_) => {
            CoreError::Conflict(e.to_string())
        }
        DecideError::Invalid(m) => CoreError::Invalid(m),
        DecideError::Grant(g) => grant_error(g),
        DecideError::Store(s) => internal(s),
    }
}

fn grant_error(e: GrantError) -> CoreError {
    match e {
        GrantError::NotFound(_) => CoreError::NotFound,
        GrantError::NotAllowed(_) => CoreError::Forbidden(e.to_string()),
        GrantError::AlreadyRevoked(_) | GrantError::VendorDisabled(_) => {
            CoreError::Conflict(e.to_string())
        }
        GrantError::Store(s) => internal(s),
        other => CoreError::Invalid(other.to_string()),
    }
}

fn account(a: StaffAuth) -> StaffAccount {
    StaffAccount {
        name: a.name,
        role: role(a.role),
        enabled: a.enabled,
        password_hash: a.password_hash,
        has_totp: a.totp_secret.is_some(),
        directory: a.directory,
    }
}

/// The purpose a staff member's TOTP seed is sealed for (the one `identity::signin` opens it with).
fn staff_seed_purpose(user: &StaffAuth) -> String {
    Account::Staff {
        id: user.id,
        name: user.name.clone(),
    }
    .seed_purpose()
}

/// How long a directory user's enrollment link (opened by their first sign-in) stays valid.
const DIRECTORY_ENROLL_SECS: i64 = 15 * 60;

impl WebCore {
    /// Judges a staff sign-in through the one owner of the rules (`identity::signin`): lockout per
    /// account and source, the second factor, counting and audit.
    async fn judge_staff(
        &self,
        user: StaffAuth,
        attempt: &SignInAttempt<'_>,
        first_factor: bool,
    ) -> Result<Verdict, CoreError> {
        let second = match &attempt.second {
            SecondFactor::Totp(code) => Second::Totp {
                sealed: user.totp_secret.as_deref(),
                code,
            },
            SecondFactor::Passkey(r) => Second::Passkey(*r),
            SecondFactor::Reauthentication => Second::Reauthentication,
        };
        let judged = signin::judge(
            &self.app,
            Attempt {
                account: Account::Staff {
                    id: user.id,
                    name: user.name.clone(),
                },
                source: attempt.source.to_string(),
                first_factor,
                second,
                detail: if user.directory {
                    json!({"directory": true})
                } else {
                    json!({})
                },
            },
            self.app.clock.now(),
        )
        .await;
        match judged {
            Ok(signin::Verdict::Accepted) => Ok(Verdict::Accepted(account(user))),
            Ok(signin::Verdict::Refused) => Ok(Verdict::Refused),
            Err(e) => {
                tracing::error!(error = %e, user = %user.name, "cannot judge a staff sign-in");
                Err(CoreError::Internal)
            }
        }
    }

    /// A sign-in of a name that is not a local account: the directory checks the password and says
    /// what the groups give; the account row follows it (added, refreshed, or disabled with its web
    /// sessions ended when the groups give nothing any more); a user without a second factor is sent
    /// to enrol one; then the same rules as for everyone.
    async fn judge_directory(
        &self,
        directory: &Directory,
        user: Option<StaffAuth>,
        attempt: &SignInAttempt<'_>,
    ) -> Result<Verdict, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let source = attempt.source.to_string();
        if let Some(u) = &user {
            // A locked pair is refused before the directory is asked: no bind on its behalf (the
            // directory's own lockout must not be driven from here). The judge audits it.
            let account = Account::Staff {
                id: u.id,
                name: u.name.clone(),
            };
            let locked = signin::locked(app, &account, &source, now)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, user = %u.name, "cannot read a staff lockout");
                    CoreError::Internal
                })?;
            if locked {
                return self.judge_staff(u.clone(), attempt, false).await;
            }
        }
        // Names the store could not hold are nobody, in the directory too.
        if check_name("user", attempt.name).is_err() {
            return Ok(Verdict::Refused);
        }
        let found = match directory
            .authenticate(attempt.name, attempt.directory_password)
            .await
        {
            Ok(found) => found,
            Err(e) => return Ok(self.directory_failed(&e, attempt.name, &source, now).await),
        };
        let found = match found {
            Authn::Accepted(found) => found,
            // Unknown to the directory, or the wrong password: one answer; a known account counts it.
            Authn::Refused => {
                return match user {
                    Some(u) if u.enabled => self.judge_staff(u, attempt, false).await,
                    _ => Ok(Verdict::Refused),
                };
            }
        };
        let Some(new_role) = found.role() else {
            // The right password, but no mapped group: no access, and a stored account loses it.
            self.directory_removed(user.as_ref(), "in no mapped group", &source, now)
                .await?;
            return Ok(Verdict::Refused);
        };
        let changed = user.as_ref().is_none_or(|u| {
            u.role != new_role
                || (!u.enabled && u.directory_disabled)
                || u.zones != found.zones
                || u.dn.as_deref() != Some(&found.dn)
        });
        let id = match user.as_ref() {
            Some(u) if !changed => u.id,
            // Added, or what the directory says changed: stored, audited, committed before the
            // judgement below opens its own transaction.
            _ => {
                let mut tx = app.store.begin().await.map_err(internal)?;
                let (id, created) = match tx
                    .upsert_directory_staff(attempt.name, new_role, &found.dn, &found.zones, now)
                    .await
                {
                    Ok(r) => r,
                    // A local account of that name exists (added meanwhile): the directory does not
                    // sign it in.
                    Err(StoreError::Conflict(_)) => return Ok(Verdict::Refused),
                    Err(e) => return Err(internal(e)),
                };
                tx.audit(
                    AuditEvent::new(
                        "system",
                        if created {
                            "user.directory.add"
                        } else {
                            "user.directory.update"
                        },
                        format!("user:{}", attempt.name),
                        json!({"role": new_role.to_string(), "dn": found.dn, "zones": found.zones}),
                    ),
                    now,
                )
                .await
                .map_err(internal)?;
                tx.commit("user.directory").await.map_err(internal)?;
                id
            }
        };
        let Some(user) = app.store.staff_auth(attempt.name).await.map_err(internal)? else {
            return Ok(Verdict::Refused);
        };
        if !user.enabled {
            // Disabled by an administrator: whatever the directory says, refused like a local
            // account that is disabled (counted, one answer).
            return self.judge_staff(user, attempt, false).await;
        }
        if user.has_second_factor() {
            return self.judge_staff(user, attempt, true).await;
        }
        if matches!(attempt.second, SecondFactor::Reauthentication) {
            return Ok(Verdict::Refused);
        }
        // The right password and no second factor yet: enrol one through a link of its own.
        let token = crate::secrets::random_hex(32);
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let mut tx = app.store.begin().await.map_err(internal)?;
        if !tx
            .open_directory_enrollment(id, &hash, now + DIRECTORY_ENROLL_SECS)
            .await
            .map_err(internal)?
        {
            return Ok(Verdict::Refused);
        }
        tx.audit(
            AuditEvent::new(
                format!("staff:{}", user.name),
                "user.enroll.open",
                format!("user:{}", user.name),
                json!({"source": source, "directory": true}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("user.enroll.open").await.map_err(internal)?;
        Ok(Verdict::Enroll { token })
    }

    /// The directory did not answer: audited once per attempt, said as such.
    async fn directory_failed(&self, e: &LdapError, name: &str, source: &str, now: i64) -> Verdict {
        tracing::warn!(error = %crate::identity::ldap::report(e), "directory sign-in failed");
        let audited = async {
            let mut tx = self.app.store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    "system",
                    "staff.signin.unavailable",
                    format!(
                        "user:{}",
                        name.chars()
                            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                            .take(64)
                            .collect::<String>()
                    ),
                    json!({"source": source, "why": e.to_string()}),
                ),
                now,
            )
            .await?;
            tx.commit("staff.signin.unavailable").await
        }
        .await;
        if let Err(err) = audited {
            tracing::error!(error = %err, "cannot audit a directory failure");
        }
        // Unreachable, or a configuration problem (service account refused, search failed): either way
        // the directory gave no answer, and the log says which.
        Verdict::DirectoryUnreachable
    }

    /// A directory account the directory no longer gives a role: disabled, its web sessions ended,
    /// audited (`user.directory.remove`). Nothing happens to an account that is already disabled.
    async fn directory_removed(
        &self,
        user: Option<&StaffAuth>,
        why: &str,
        source: &str,
        now: i64,
    ) -> Result<(), CoreError> {
        let Some(u) = user.filter(|u| u.enabled && u.directory) else {
            return Ok(());
        };
        crate::identity::directory::remove_staff(&self.app, u, why, now)
            .await
            .map_err(internal)?;
        tracing::info!(user = %u.name, why, %source, "directory account disabled");
        Ok(())
    }

    /// The user an unexpired enrollment link belongs to, and the hash of its token (what the database
    /// keeps); `NotFound` for an unknown, used or expired link.
    async fn enrolling_user(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(String, StaffAuth), CoreError> {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        match self
            .app
            .store
            .staff_by_enroll_token(&hash, now)
            .await
            .map_err(internal)?
        {
            Some(user) => Ok((hash, user)),
            None => Err(CoreError::NotFound),
        }
    }

    /// Zone-scoped approvers (`[ldap.zones.X] approver`): a request for an asset in such a zone is
    /// decided only by a member of that zone's group (as the directory said at their last sign-in or
    /// re-check) or an admin.
    async fn zone_allows(&self, user: &StaffAuth, request: i64) -> Result<(), CoreError> {
        let Some(ldap) = &self.app.config.ldap else {
            return Ok(());
        };
        let Some(r) = self.app.store.request(request).await.map_err(internal)? else {
            return Ok(()); // decide says "not found"
        };
        if !ldap.zone_approvers.contains_key(&r.zone)
            || user.role == Role::Admin
            || user.zones.contains(&r.zone)
        {
            return Ok(());
        }
        Err(CoreError::Forbidden(format!(
            "requests for zone {} are decided by its own approvers",
            r.zone
        )))
    }

    async fn revoke(&self, by: &Staff, id: i64, reason: &str) -> Result<(), CoreError> {
        let app = &self.app;
        let (by, _) = current(app, by).await?;
        grants::revoke(
            &app.store,
            &app.events,
            app.clock.now(),
            &by.as_actor(),
            id,
            reason,
        )
        .await
        .map_err(grant_error)?;
        Ok(())
    }
}

impl Approvals for WebCore {
    async fn pending_requests(&self) -> Result<Vec<RequestView>, CoreError> {
        let list = self
            .app
            .store
            .requests(Some(RequestStatus::Pending), None, 200)
            .await
            .map_err(internal)?;
        let now = self.now();
        // Oldest first: the one waiting longest is at the top. Lapsed ones are about to be expired.
        Ok(list
            .into_iter()
            .rev()
            .filter(|r| r.expires_at.is_none_or(|t| t > now))
            .map(view)
            .collect())
    }

    async fn request(&self, id: i64) -> Result<RequestView, CoreError> {
        self.app
            .store
            .request(id)
            .await
            .map_err(internal)?
            .map(view)
            .ok_or(CoreError::NotFound)
    }

    async fn vendor_history(&self, vendor: &str) -> Result<Vec<RequestView>, CoreError> {
        Ok(self
            .app
            .store
            .requests(None, Some(vendor), 10)
            .await
            .map_err(internal)?
            .into_iter()
            .map(view)
            .collect())
    }

    async fn decide(&self, by: &Staff, id: i64, decision: Decision) -> Result<String, CoreError> {
        let decision = match decision {
            Decision::Approve { services, duration } => requests::Decision::Approve {
                services,
                duration_secs: duration
                    .map(|d| {
                        parse_duration(&d)
                            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                            .map_err(CoreError::Invalid)
                    })
                    .transpose()?,
            },
            Decision::Deny { reason } => requests::Decision::Deny { reason },
        };
        let app = &self.app;
        let (by, user) = current(app, by).await?;
        self.zone_allows(&user, id).await?;
        let outcome = requests::decide(&app.store, &app.events, app.clock.now(), &by, id, decision)
            .await
            .map_err(decide_error)?;
        Ok(match outcome {
            Outcome::Granted { grant_id, ends_at } => {
                format!("approved: grant #{grant_id} until {}", format_time(ends_at))
            }
            Outcome::AwaitingSecondApproval => {
                "approval recorded; this asset is critical, so a second approver must approve too"
                    .into()
            }
            Outcome::Denied => "denied".into(),
        })
    }

    async fn active_grants(&self) -> Result<Vec<GrantView>, CoreError> {
        let now = self.now();
        Ok(self
            .app
            .store
            .grants(Some(now))
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|g| g.is_active(now))
            .map(|g| GrantView {
                id: g.id,
                vendor: g.vendor,
                asset: g.asset,
                services: g.services,
                starts_at: g.starts_at,
                ends_at: g.ends_at,
                ends: format_time(g.ends_at),
                issued_by: g.issued_by,
                reason: g.reason,
                request_id: g.request_id,
            })
            .collect())
    }

    async fn revoke_grant(&self, by: &Staff, id: i64, reason: &str) -> Result<(), CoreError> {
        self.revoke(by, id, reason).await
    }

    async fn live_sessions(&self) -> Result<Vec<SessionView>, CoreError> {
        Ok(self
            .app
            .store
            .sessions(500)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|s| s.ended_at.is_none())
            .map(|s| SessionView {
                id: s.id,
                vendor: s.vendor,
                asset: s.asset,
                kind: s.kind,
                service: s.service,
                grant_id: s.grant_id,
                client_addr: s.client_addr,
                started: format_time(s.started_at),
            })
            .collect())
    }

    async fn terminate_session(&self, by: &Staff, id: &str) -> Result<(), CoreError> {
        // The page hides the button; the rule lives here. Auditors only read (the role as stored now).
        let (by, _) = current(&self.app, by).await?;
        if !role(by.role).can_decide() {
            return Err(CoreError::Forbidden(
                "auditors cannot terminate sessions".into(),
            ));
        }
        let session = match self.app.store.session(id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Err(CoreError::NotFound),
            Err(e) => return Err(internal(e)),
        };
        if session.ended_at.is_some() {
            return Err(CoreError::Conflict(format!(
                "session {id} has already ended"
            )));
        }
        let now = self.app.clock.now();
        let reason = format!("session terminated by {}", by.name);
        let mut tx = self.app.store.begin().await.map_err(internal)?;
        if !tx
            .request_session_termination(id, &reason, now)
            .await
            .map_err(internal)?
        {
            return Err(CoreError::Conflict(format!(
                "session {id} has already ended"
            )));
        }
        tx.audit(
            AuditEvent::new(
                by.actor(),
                "session.terminate",
                format!("session:{id}"),
                json!({"vendor": session.vendor, "asset": session.asset, "grant": session.grant_id,
                       "method": by.method}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("session.terminate").await.map_err(internal)?;
        self.app
            .events
            .send(crate::policy::events::Change::Session(id.to_owned()));
        Ok(())
    }

    async fn changed(&self) {
        // In-process notices arrive at once; changes made by another process or node move the audit
        // chain's head (every change is audited), which is re-read every second.
        let mut rx = self.app.events.subscribe();
        let start = self.app.store.audit_head().await.map(|h| h.0).ok();
        loop {
            tokio::select! {
                _ = rx.recv() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let head = self.app.store.audit_head().await.map(|h| h.0).ok();
            if head.is_some() && head != start {
                return;
            }
        }
    }
}

impl Accounts for WebCore {
    async fn staff_account(&self, name: &str) -> Result<Option<StaffAccount>, CoreError> {
        Ok(self
            .app
            .store
            .staff_auth(name)
            .await
            .map_err(internal)?
            .map(account))
    }

    async fn judge_sign_in(&self, attempt: &SignInAttempt<'_>) -> Result<Verdict, CoreError> {
        let user = self
            .app
            .store
            .staff_auth(attempt.name)
            .await
            .map_err(internal)?;
        match (user, self.app.directory.as_deref()) {
            // A local account: its password was checked by the web crate; not enrolled yet or disabled:
            // nothing to count or protect.
            (Some(u), _) if !u.directory => {
                if !u.enabled || u.password_hash.is_none() {
                    return Ok(Verdict::Refused);
                }
                let password_ok = attempt.password_ok;
                self.judge_staff(u, attempt, password_ok).await
            }
            (user, Some(directory)) => self.judge_directory(directory, user, attempt).await,
            // A directory account while no directory is configured any more, or an unknown name.
            _ => Ok(Verdict::Refused),
        }
    }

    async fn enrollment(&self, token: &str) -> Result<Enrollment, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let (_, user) = self.enrolling_user(token, now).await?;
        let seed = totp::new_seed();
        let sealed = app.secrets.seal(&staff_seed_purpose(&user), &seed);
        let uri = totp::provisioning_uri(&seed, &user.name).map_err(|e| {
            tracing::error!(error = %e, "cannot build a TOTP URI");
            CoreError::Internal
        })?;
        let mut tx = app.store.begin().await.map_err(internal)?;
        tx.set_staff_enroll_seed(user.id, &sealed)
            .await
            .map_err(internal)?;
        tx.audit(
            AuditEvent::new(
                format!("staff:{}", user.name),
                "user.enroll.seed",
                format!("user:{}", user.name),
                json!({}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("user.enroll.seed").await.map_err(internal)?;
        Ok(Enrollment {
            directory: user.directory,
            name: user.name,
            role: role(user.role),
            totp_uri: uri,
            totp_secret: totp::seed_base32(&seed),
        })
    }

    async fn finish_enrollment(
        &self,
        token: &str,
        password_hash: Option<&str>,
        code: &str,
    ) -> Result<String, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let (hash, user) = self.enrolling_user(token, now).await?;
        let password_hash = enrollment_password(&user, password_hash)?;
        let Some(sealed) = user.totp_secret.as_deref() else {
            return Err(CoreError::Invalid(
                "open the enrollment link again to get an authenticator secret".into(),
            ));
        };
        let seed = app
            .secrets
            .open(&staff_seed_purpose(&user), sealed)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot open an enrollment seed");
                CoreError::Internal
            })?;
        let Some(step) = signin::enrollment_code(seed.expose(), code, now) else {
            return Err(CoreError::Invalid(
                "that code does not match: add the new secret below to your app and type its current code".into(),
            ));
        };
        let mut tx = app.store.begin().await.map_err(internal)?;
        if !tx
            .finish_staff_enrollment(user.id, &hash, password_hash, step)
            .await
            .map_err(internal)?
        {
            return Err(CoreError::NotFound);
        }
        tx.audit(
            AuditEvent::new(
                format!("staff:{}", user.name),
                "user.enroll",
                format!("user:{}", user.name),
                json!({"second_factor": "totp"}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("user.enroll").await.map_err(internal)?;
        Ok(user.name)
    }

    async fn enrollment_name(&self, token: &str) -> Result<String, CoreError> {
        let (_, user) = self.enrolling_user(token, self.app.clock.now()).await?;
        Ok(user.name)
    }

    async fn finish_enrollment_passkey(
        &self,
        token: &str,
        password_hash: Option<&str>,
        passkeys_json: &str,
    ) -> Result<String, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let (hash, user) = self.enrolling_user(token, now).await?;
        let password_hash = enrollment_password(&user, password_hash)?;
        let mut tx = app.store.begin().await.map_err(internal)?;
        if !tx
            .finish_staff_enrollment_passkey(user.id, &hash, password_hash, passkeys_json)
            .await
            .map_err(internal)?
        {
            return Err(CoreError::NotFound);
        }
        tx.audit(
            AuditEvent::new(
                format!("staff:{}", user.name),
                "user.enroll",
                format!("user:{}", user.name),
                json!({"second_factor": "passkey"}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("user.enroll").await.map_err(internal)?;
        Ok(user.name)
    }

    async fn passkeys(&self, name: &str) -> Result<Option<String>, CoreError> {
        self.app.store.staff_passkeys(name).await.map_err(internal)
    }

    async fn set_passkeys(
        &self,
        name: &str,
        passkeys_json: &str,
        action: &'static str,
    ) -> Result<(), CoreError> {
        let app = &self.app;
        let Some(user) = app.store.staff_auth(name).await.map_err(internal)? else {
            return Err(CoreError::NotFound);
        };
        let now = app.clock.now();
        let mut tx = app.store.begin().await.map_err(internal)?;
        tx.set_staff_passkeys(user.id, passkeys_json)
            .await
            .map_err(internal)?;
        tx.audit(
            AuditEvent::new(
                format!("staff:{}", user.name),
                action,
                format!("user:{}", user.name),
                json!({"passkeys": serde_json::from_str::<Vec<serde_json::Value>>(passkeys_json).map_or(0, |p| p.len())}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("staff.passkey").await.map_err(internal)
    }
}

impl SignInState for WebCore {
    fn now(&self) -> i64 {
        self.app.clock.now()
    }

    async fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        subject: Option<&str>,
        data: &str,
        expires_at: i64,
    ) -> Result<(), CoreError> {
        self.app
            .store
            .web_state_put(
                kind.as_str(),
                key,
                subject,
                data,
                expires_at,
                self.app.clock.now(),
                max_state(kind),
            )
            .await
            .map_err(state_error)
    }

    async fn replace_state(
        &self,
        kind: StateKind,
        key: &str,
        data: &str,
    ) -> Result<bool, CoreError> {
        self.app
            .store
            .web_state_replace(kind.as_str(), key, data, self.app.clock.now())
            .await
            .map_err(state_error)
    }

    async fn state(
        &self,
        kind: StateKind,
        key: &str,
        extend_to: Option<i64>,
    ) -> Result<Option<String>, CoreError> {
        // Moved only when it has slid by a minute (or half the time-out, if that is shorter): not a
        // database write on every request.
        let now = self.app.clock.now();
        let extend = extend_to.map(|to| (to, to - ((to - now) / 2).clamp(0, 60)));
        self.app
            .store
            .web_state_get(kind.as_str(), key, now, extend)
            .await
            .map_err(internal)
    }

    async fn take_state(&self, kind: StateKind, key: &str) -> Result<Option<String>, CoreError> {
        self.app
            .store
            .web_state_take(kind.as_str(), key, self.app.clock.now())
            .await
            .map_err(internal)
    }

    async fn signed_out(&self, name: &str) -> Result<(), CoreError> {
        let mut tx = self.app.store.begin().await.map_err(internal)?;
        tx.audit(
            AuditEvent::new(
                format!("staff:{name}"),
                crate::audit::Action::StaffSignout.as_str(),
                format!("user:{name}"),
                json!({}),
            ),
            self.app.clock.now(),
        )
        .await
        .map_err(internal)?;
        tx.commit("staff.signout").await.map_err(internal)
    }

    async fn drop_state(&self, kind: StateKind, key: &str) -> Result<(), CoreError> {
        self.app
            .store
            .web_state_delete(kind.as_str(), key)
            .await
            .map_err(internal)
    }
}
