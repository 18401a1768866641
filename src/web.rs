//! The core side of the web page: [`WebCore`] implements `chaperone_web_approval::Core` over the store,
//! the policy and the secrets key, so the web crate never sees SQL or SSH. Every change goes through
//! `policy` (decisions, revocations) or a store `Tx` with its audit event (sign-in, enrollment).
//!
//! Entry point: [`WebCore::new`], handed to `chaperone_web_approval::router` by `server::run`.

use std::time::Duration;

use chaperone_web_approval::{
    Core, CoreError, Decision, Enrollment, GrantView, Method, RequestView, Role as WebRole,
    SecondFactor, SessionView, SignInAttempt, Staff, StaffAccount, StateKind, Verdict,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::config::{format_duration, parse_duration};
use crate::identity::totp;
use crate::model::{AccessRequest, Criticality, RequestStatus, Role};
use crate::policy::grants::{self, GrantError};
use crate::policy::requests::{self, Approver, AuthMethod, DecideError, Outcome};
use crate::store::{StaffAuth, StoreError, Tx};

/// The staff sign-in lockout: the one place it is decided, for the sign-in form, `/api/login`, passkey
/// sign-ins and the password asked again before a change (`Core::judge_sign_in`).
///
/// Failures are counted per (account, source address) in a sliding window of `window`: once `max`
/// failures of an account from one source fall within it, that account is refused from that source
/// (without its second factor being looked at) until the oldest of them slides out. Failures from one
/// address never refuse the account from another, so nobody can lock an approver out from everywhere
/// by knowing their name. Attempts refused while locked are audited but not counted, so a locked pair
/// holds at most `max` rows. Judgements of one account queue (`Tx::hold_staff_user`), so concurrent
/// attempts from several nodes cannot get more than `max` failures in before the lock holds.
#[derive(Debug, Clone, Copy)]
pub struct SignInRule {
    pub max_failures: u32,
    pub window: Duration,
}

impl SignInRule {
    /// The first second of the window that ends at `now`.
    fn since(self, now: i64) -> i64 {
        let window = i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX / 2);
        now.saturating_sub(window) + 1
    }

    fn locked(self, failures: i64) -> bool {
        failures >= i64::from(self.max_failures)
    }
}

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
    /// From `[web] max_failures` and `failure_window`.
    rule: SignInRule,
}

impl WebCore {
    pub fn new(app: App) -> WebCore {
        let rule = SignInRule {
            max_failures: app.config.web.max_failures,
            window: app.config.web.failure_window,
        };
        WebCore { app, rule }
    }
}

/// Oversized sign-in state is the request's fault (400), anything else the store's.
fn state_error(e: StoreError) -> CoreError {
    match e {
        StoreError::TooLarge(why) => CoreError::Invalid(why),
        other => internal(other),
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

fn approver(s: &Staff) -> Approver {
    Approver {
        name: s.name.clone(),
        role: match s.role {
            WebRole::Approver => Role::Approver,
            WebRole::Auditor => Role::Auditor,
            WebRole::Admin => Role::Admin,
        },
        method: match s.method {
            Method::Passkey => AuthMethod::Passkey,
            Method::Totp => AuthMethod::Totp,
        },
    }
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
    }
}

impl WebCore {
    /// Why the second factor of a sign-in with the right password fails, if it does. A TOTP code is
    /// checked here and its time step taken in `tx` (so a code is never accepted twice, on any node).
    async fn second_factor_fails(
        &self,
        tx: &mut Tx,
        user: &StaffAuth,
        second: &SecondFactor<'_>,
        now: i64,
    ) -> Result<Option<&'static str>, CoreError> {
        let code = match second {
            SecondFactor::Totp(code) => *code,
            SecondFactor::Passkey(Ok(())) | SecondFactor::Reauthentication => return Ok(None),
            SecondFactor::Passkey(Err(why)) => return Ok(Some(*why)),
        };
        const WRONG: &str = "wrong or reused TOTP code";
        let Some(sealed) = user.totp_secret.as_deref() else {
            return Ok(Some(WRONG));
        };
        let seed = self
            .app
            .secrets
            .open(&format!("staff-totp:{}", user.name), sealed)
            .map_err(|e| {
                tracing::error!(error = %e, user = %user.name, "cannot open a staff TOTP seed");
                CoreError::Internal
            })?;
        let Some(step) = totp::check(seed.expose(), code, now.max(0).unsigned_abs()) else {
            return Ok(Some(WRONG));
        };
        if !tx
            .accept_staff_totp_step(user.id, step)
            .await
            .map_err(internal)?
        {
            return Ok(Some(WRONG)); // a replayed code
        }
        tx.audit(
            AuditEvent::new(
                format!("staff:{}", user.name),
                "staff.totp.accept",
                format!("user:{}", user.name),
                json!({"step": step}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        Ok(None)
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

    async fn revoke(&self, by: &Staff, id: i64, reason: &str) -> Result<(), CoreError> {
        let app = &self.app;
        grants::revoke(
            &app.store,
            &app.events,
            app.clock.now(),
            &approver(by).as_actor(),
            id,
            reason,
        )
        .await
        .map_err(grant_error)?;
        Ok(())
    }
}

impl Core for WebCore {
    fn now(&self) -> i64 {
        self.app.clock.now()
    }

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
        let outcome = requests::decide(
            &app.store,
            &app.events,
            app.clock.now(),
            &approver(by),
            id,
            decision,
        )
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
        // The page hides the button; the rule lives here. Auditors only read.
        if !by.role.can_decide() {
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
        let by = approver(by);
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
        let app = &self.app;
        // No such name, disabled, or not enrolled yet: nothing to count or protect.
        let Some(user) = app
            .store
            .staff_auth(attempt.name)
            .await
            .map_err(internal)?
            .filter(|u| u.enabled && u.password_hash.is_some())
        else {
            return Ok(Verdict::Refused);
        };
        let now = app.clock.now();
        let source = attempt.source.to_string();
        let rule = self.rule;
        let actor = format!("staff:{}", user.name);
        let subject = format!("user:{}", user.name);
        let mut tx = app.store.begin().await.map_err(internal)?;
        tx.hold_staff_user(user.id).await.map_err(internal)?;
        let failures = tx
            .staff_signin_failures(user.id, &source, rule.since(now))
            .await
            .map_err(internal)?;
        if rule.locked(failures) {
            // The second factor is not looked at (a TOTP step is not used up), whatever the password.
            tx.audit(
                AuditEvent::new(
                    actor,
                    "staff.signin.failed",
                    subject,
                    json!({"why": "locked", "locked": true, "source": source,
                           "password_ok": attempt.password_ok, "failures": failures}),
                ),
                now,
            )
            .await
            .map_err(internal)?;
            tx.commit("staff.signin.failed").await.map_err(internal)?;
            return Ok(Verdict::Refused);
        }
        let failed = if attempt.password_ok {
            self.second_factor_fails(&mut tx, &user, &attempt.second, now)
                .await?
        } else {
            Some("wrong password")
        };
        if let Some(why) = failed {
            tx.add_staff_signin_failure(user.id, &source, now, rule.since(now))
                .await
                .map_err(internal)?;
            let locked = rule.locked(failures + 1);
            tx.audit(
                AuditEvent::new(
                    actor,
                    "staff.signin.failed",
                    subject,
                    json!({"why": why, "locked": locked, "source": source}),
                ),
                now,
            )
            .await
            .map_err(internal)?;
            tx.commit("staff.signin.failed").await.map_err(internal)?;
            if locked {
                tracing::warn!(user = %user.name, %source, "staff sign-ins locked from this address");
            }
            return Ok(Verdict::Refused);
        }
        let method = match attempt.second {
            // Nothing changed: the transaction is dropped, which rolls it back.
            SecondFactor::Reauthentication => return Ok(Verdict::Accepted(account(user))),
            SecondFactor::Totp(_) => Method::Totp,
            SecondFactor::Passkey(_) => Method::Passkey,
        };
        tx.clear_staff_signin_failures(user.id, &source)
            .await
            .map_err(internal)?;
        tx.audit(
            AuditEvent::new(
                actor,
                "staff.signin",
                subject,
                json!({"method": method, "source": source}),
            ),
            now,
        )
        .await
        .map_err(internal)?;
        tx.commit("staff.signin").await.map_err(internal)?;
        Ok(Verdict::Accepted(account(user)))
    }

    async fn enrollment(&self, token: &str) -> Result<Enrollment, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let (_, user) = self.enrolling_user(token, now).await?;
        let seed = totp::new_seed();
        let sealed = app
            .secrets
            .seal(&format!("staff-totp:{}", user.name), &seed);
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
            name: user.name,
            role: role(user.role),
            totp_uri: uri,
            totp_secret: totp::seed_base32(&seed),
        })
    }

    async fn finish_enrollment(
        &self,
        token: &str,
        password_hash: &str,
        code: &str,
    ) -> Result<String, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let (hash, user) = self.enrolling_user(token, now).await?;
        let Some(sealed) = user.totp_secret.as_deref() else {
            return Err(CoreError::Invalid(
                "open the enrollment link again to get an authenticator secret".into(),
            ));
        };
        let seed = app
            .secrets
            .open(&format!("staff-totp:{}", user.name), sealed)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot open an enrollment seed");
                CoreError::Internal
            })?;
        let Some(step) = totp::check(seed.expose(), code, now.max(0).unsigned_abs()) else {
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
        password_hash: &str,
        passkeys_json: &str,
    ) -> Result<String, CoreError> {
        let app = &self.app;
        let now = app.clock.now();
        let (hash, user) = self.enrolling_user(token, now).await?;
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
