//! The boundary to the core: [`Core`] is what the web app needs from chaperone (requests, grants,
//! sessions, staff accounts, change notices), in plain types. The root crate implements it over its
//! store and policy; this crate never sees SQL or SSH.

use std::future::Future;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A staff role, as the core reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Approver,
    Auditor,
    Admin,
}

impl Role {
    /// Approvers and admins decide requests and revoke; auditors only look.
    pub fn can_decide(self) -> bool {
        matches!(self, Role::Approver | Role::Admin)
    }
}

/// How a staff member proved who they are (the second factor of this sign-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Passkey,
    Totp,
}

/// A signed-in staff member, as handed to the core with every action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staff {
    pub name: String,
    pub role: Role,
    pub method: Method,
}

/// What the sign-in page needs to know about an account.
#[derive(Clone)]
pub struct StaffAccount {
    pub name: String,
    pub role: Role,
    pub enabled: bool,
    /// PHC string (argon2id); `None` until enrolled.
    pub password_hash: Option<String>,
    /// A TOTP seed is enrolled: the account can sign in without a passkey.
    pub has_totp: bool,
    /// The directory (`[ldap]`) checks this account's password, not `password_hash`.
    pub directory: bool,
}

impl std::fmt::Debug for StaffAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAccount")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Where a request comes from, as sign-in lockout and the listener's limits count it: the client's IPv4
/// address, or the /64 prefix of an IPv6 one (a single subscriber usually holds a whole /64, so counting
/// its addresses one by one would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// One staff sign-in attempt, with what the web crate has already checked: the core judges it
/// ([`Core::judge_sign_in`]), so the lockout rule has one owner.
pub struct SignInAttempt<'a> {
    /// The name as typed (it may name nobody).
    pub name: &'a str,
    pub source: Source,
    /// The password matched the account's hash (argon2id, checked by the web crate; always false for an
    /// unknown name or a directory account).
    pub password_ok: bool,
    /// The password as typed, for a directory account (or a name the core may find in the directory);
    /// empty otherwise. The core asks the directory with it and keeps it nowhere.
    pub directory_password: &'a str,
    pub second: SecondFactor<'a>,
}

impl std::fmt::Debug for SignInAttempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInAttempt")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("password_ok", &self.password_ok)
            .field("second", &self.second)
            .finish_non_exhaustive()
    }
}

/// The second factor presented with a password.
pub enum SecondFactor<'a> {
    /// A TOTP code: the core checks it, and uses its time step up only for a sign-in it accepts.
    Totp(&'a str),
    /// A passkey assertion the web crate checked (webauthn-rs); `Err` says why it failed.
    Passkey(Result<(), &'static str>),
    /// None: a signed-in user confirms a change with the password again (no sign-in is recorded).
    Reauthentication,
}

impl std::fmt::Debug for SecondFactor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecondFactor::Totp(_) => f.write_str("Totp(..)"),
            SecondFactor::Passkey(r) => f.debug_tuple("Passkey").field(r).finish(),
            SecondFactor::Reauthentication => f.write_str("Reauthentication"),
        }
    }
}

/// What the core made of a [`SignInAttempt`]. One refusal for every reason (unknown name, disabled,
/// wrong password, wrong code, locked): the reason goes to the audit log, never to the client.
#[derive(Debug)]
pub enum Verdict {
    Accepted(StaffAccount),
    Refused,
    /// The directory accepted the password of an account that has no second factor yet: it enrols
    /// one first, through the enrollment link with this token (`/enroll/TOKEN`).
    Enroll {
        token: String,
    },
    /// The account is not a local one and the directory cannot be reached: said as such (a local
    /// break-glass account still signs in).
    DirectoryUnreachable,
}

/// A pending enrollment, with the TOTP seed the user must confirm.
#[derive(Clone)]
pub struct Enrollment {
    pub name: String,
    pub role: Role,
    /// A directory account: the directory has its password, so none is chosen here.
    pub directory: bool,
    /// `otpauth://totp/…` for an authenticator app.
    pub totp_uri: String,
    /// The same secret in base32, for typing in.
    pub totp_secret: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An access request as approvers see it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub id: i64,
    pub vendor: String,
    pub org: String,
    pub asset: String,
    pub zone: String,
    pub purpose: String,
    pub criticality: String,
    pub services: Vec<String>,
    pub duration_secs: i64,
    /// `2h`, `1h30m`.
    pub duration: String,
    pub reason: String,
    pub status: String,
    pub created_at: i64,
    pub created: String,
    pub expires_at: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub grant_id: Option<i64>,
    /// Who approved so far, and how they signed in (`alice (passkey)`).
    pub approvals: Vec<String>,
    /// Approvals needed in all (2 for critical assets).
    pub approvals_needed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub id: i64,
    pub vendor: String,
    pub asset: String,
    pub services: Vec<String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub ends: String,
    pub issued_by: String,
    pub reason: String,
    pub request_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    pub vendor: String,
    pub asset: String,
    pub kind: String,
    pub service: String,
    pub grant_id: i64,
    pub client_addr: String,
    pub started: String,
}

/// An approver's decision on a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Decision {
    /// Approve; leave out `services`/`duration` to approve as asked, or narrow them.
    Approve {
        #[serde(default)]
        services: Option<Vec<String>>,
        /// e.g. `1h`; at most what was asked.
        #[serde(default)]
        duration: Option<String>,
    },
    Deny {
        reason: String,
    },
}

/// Why the core refused or failed. Mapped to HTTP in one place (`error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("not found")]
    NotFound,
    /// Not allowed for this person (self-approval, auditor role).
    #[error("{0}")]
    Forbidden(String),
    /// The input is not acceptable (longer than asked, unknown service).
    #[error("{0}")]
    Invalid(String),
    /// The state changed (already decided, already revoked).
    #[error("{0}")]
    Conflict(String),
    /// Something failed inside; details are logged by the core, not shown.
    #[error("internal error")]
    Internal,
}

pub type CoreResult<T> = Result<T, CoreError>;

/// Short-lived sign-in state that every node must see, since a load balancer may send each request of a
/// browser to another node. The core stores it (the web crate holds none in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// A signed-in staff session.
    Session,
    /// A passkey ceremony, between its start and its finish.
    Ceremony,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Session => "session",
            StateKind::Ceremony => "ceremony",
        }
    }
}

/// What the web app needs from chaperone, by concern: [`Approvals`] (requests, grants, sessions),
/// [`Accounts`] (staff accounts, sign-in judgement, enrollment, passkeys) and [`SignInState`] (sessions
/// and ceremonies every node must see). The root crate implements the three; `Core` is all of them.
pub trait Core: Approvals + Accounts + SignInState {}

impl<T: Approvals + Accounts + SignInState> Core for T {}

/// Requests, grants and live sessions. Every method that changes state takes the acting [`Staff`] as
/// the session knows them; the core reads that person again (enabled, role) before it acts, checks the
/// rules again (the page only hides buttons) and audits: a role kept in a session is never trusted.
pub trait Approvals: Send + Sync + 'static {
    fn pending_requests(&self) -> impl Future<Output = CoreResult<Vec<RequestView>>> + Send;
    fn request(&self, id: i64) -> impl Future<Output = CoreResult<RequestView>> + Send;
    /// A vendor's recent requests, newest first.
    fn vendor_history(
        &self,
        vendor: &str,
    ) -> impl Future<Output = CoreResult<Vec<RequestView>>> + Send;
    /// Approves or denies; returns a sentence for the page ("granted until …", "awaiting a second approver").
    fn decide(
        &self,
        by: &Staff,
        id: i64,
        decision: Decision,
    ) -> impl Future<Output = CoreResult<String>> + Send;
    fn active_grants(&self) -> impl Future<Output = CoreResult<Vec<GrantView>>> + Send;
    fn revoke_grant(
        &self,
        by: &Staff,
        id: i64,
        reason: &str,
    ) -> impl Future<Output = CoreResult<()>> + Send;
    fn live_sessions(&self) -> impl Future<Output = CoreResult<Vec<SessionView>>> + Send;
    /// Ends one live session (the node running it closes it within seconds); its grant stays.
    fn terminate_session(
        &self,
        by: &Staff,
        id: &str,
    ) -> impl Future<Output = CoreResult<()>> + Send;

    /// Completes (with `true`) when something approvers see may have changed; used for live updates.
    fn changed(&self) -> impl Future<Output = ()> + Send;
}

/// Staff accounts: what the sign-in page needs, the judgement of a sign-in (the core owns the lockout
/// and second-factor rules), enrollment and passkeys.
pub trait Accounts: Send + Sync + 'static {
    fn staff_account(
        &self,
        name: &str,
    ) -> impl Future<Output = CoreResult<Option<StaffAccount>>> + Send;
    /// Judges a sign-in attempt: the lockout (failures per account and source, in a sliding window),
    /// then the password and second factor as checked. Records and audits the outcome: a failure is
    /// counted (a locked pair's attempts too are audited, right password or not), a sign-in clears
    /// that source's failures and is audited as `staff.signin`.
    fn judge_sign_in(
        &self,
        attempt: &SignInAttempt<'_>,
    ) -> impl Future<Output = CoreResult<Verdict>> + Send;
    /// Looks up an enrollment link and (re)draws the TOTP seed the user will confirm.
    fn enrollment(&self, token: &str) -> impl Future<Output = CoreResult<Enrollment>> + Send;
    /// Finishes enrollment: checks `code` against the drawn seed, stores the password hash (`None` for
    /// a directory account), voids the link.
    fn finish_enrollment(
        &self,
        token: &str,
        password_hash: Option<&str>,
        code: &str,
    ) -> impl Future<Output = CoreResult<String>> + Send;
    /// The account an enrollment link is for (no TOTP seed is drawn).
    fn enrollment_name(&self, token: &str) -> impl Future<Output = CoreResult<String>> + Send;
    /// Finishes enrollment with a passkey instead of a TOTP app: stores the password hash and the
    /// passkeys (webauthn-rs `Passkey` records, a JSON array), voids the link and any drawn TOTP seed.
    fn finish_enrollment_passkey(
        &self,
        token: &str,
        password_hash: Option<&str>,
        passkeys_json: &str,
    ) -> impl Future<Output = CoreResult<String>> + Send;
    /// `name`'s passkeys as stored (a JSON array), if any.
    fn passkeys(&self, name: &str) -> impl Future<Output = CoreResult<Option<String>>> + Send;
    /// Replaces `name`'s passkeys (one was added, or a sign-in moved a signature counter); audited
    /// as `action` (`staff.passkey.add`, `staff.passkey.update`).
    fn set_passkeys(
        &self,
        name: &str,
        passkeys_json: &str,
        action: &'static str,
    ) -> impl Future<Output = CoreResult<()>> + Send;
}

/// Short-lived sign-in state kept by the core, so any node answers any request.
pub trait SignInState: Send + Sync + 'static {
    /// The core's clock (unix seconds), for expiries.
    fn now(&self) -> i64;
    /// Stores new sign-in state (`data`, JSON) under `key`, the SHA-256 (hex) of a token only the
    /// browser holds, until the unix time `expires_at`; `subject` is the staff member a session belongs
    /// to (disabling them ends it). The core bounds how many of a kind it keeps (dropping the ones
    /// closest to lapsing), deletes lapsed ones and refuses oversized data.
    fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        subject: Option<&str>,
        data: &str,
        expires_at: i64,
    ) -> impl Future<Output = CoreResult<()>> + Send;
    /// Replaces the data under `key`, keeping its expiry, only if it is still there (never brings back
    /// state that was dropped meanwhile, such as a session signed out); returns whether it was.
    fn replace_state(
        &self,
        kind: StateKind,
        key: &str,
        data: &str,
    ) -> impl Future<Output = CoreResult<bool>> + Send;
    /// The state under `key` unless it has lapsed; `extend_to` moves its expiry there (a sliding
    /// time-out; the core may skip moving it by less than a minute).
    fn state(
        &self,
        kind: StateKind,
        key: &str,
        extend_to: Option<i64>,
    ) -> impl Future<Output = CoreResult<Option<String>>> + Send;
    /// Removes the state under `key` and returns it unless it had lapsed: only one caller, on any
    /// node, gets it.
    fn take_state(
        &self,
        kind: StateKind,
        key: &str,
    ) -> impl Future<Output = CoreResult<Option<String>>> + Send;
    /// `name` signed out (their session is already gone): recorded as the other half of the sign-in.
    fn signed_out(&self, name: &str) -> impl Future<Output = CoreResult<()>> + Send;
    /// Removes the state under `key`, if any.
    fn drop_state(&self, kind: StateKind, key: &str)
    -> impl Future<Output = CoreResult<()>> + Send;
}
