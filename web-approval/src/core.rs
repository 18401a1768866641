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

    /// Auditors and admins place and release legal holds (evidence is compliance's, not the
    /// approvers' who granted the access).
    pub fn can_hold(self) -> bool {
        matches!(self, Role::Auditor | Role::Admin)
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
    /// `otpauth://totp/…` for an authenticator app (the page draws it as a QR code too).
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
    /// `2026-11-01 08:00 UTC`, when it lapses if nobody decides.
    pub expires: Option<String>,
    /// The names of who decided, as stored (`bob,carol`; `system` when it lapsed).
    pub decided_by: Option<String>,
    /// The same for people: `bob and carol`, `nobody (it lapsed)`.
    pub decided_by_name: Option<String>,
    pub decided_at: Option<i64>,
    pub decided: Option<String>,
    pub decision_reason: Option<String>,
    pub grant_id: Option<i64>,
    /// Who approved so far, and how they signed in (`alice (passkey)`).
    pub approvals: Vec<String>,
    /// Approvals needed in all (2 for critical assets).
    pub approvals_needed: usize,
    /// `pending`, `approved` (as asked), `narrowed` (approved with less time or fewer services),
    /// `denied`, `expired`.
    pub outcome: String,
    /// What the grant allowed, when one was issued.
    pub granted_services: Option<Vec<String>>,
    /// `1h`, when a grant was issued.
    pub granted_duration: Option<String>,
    /// The grant was revoked later: by whom and why.
    pub grant_revoked: Option<String>,
}

/// The decided requests' filters as typed (the Decisions page's form and links, the API's query
/// string); the core checks them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DecisionsQuery {
    pub vendor: Option<String>,
    pub asset: Option<String>,
    /// `decided` (all, the default), `approved` (as asked or narrowed), `narrowed`, `denied`,
    /// `expired`.
    pub state: Option<String>,
    /// 1-based (text, as a query string carries it).
    pub page: Option<String>,
}

impl DecisionsQuery {
    /// The filters that are set, in a fixed order (the page's links keep them in the URL).
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("vendor", &self.vendor),
            ("asset", &self.asset),
            ("state", &self.state),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }
}

/// A page of decided requests, the latest decision first.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionsPage {
    pub requests: Vec<RequestView>,
    pub page: u32,
    /// Another page follows.
    pub more: bool,
}

/// The requests waiting for a decision: the ones waiting longest first (at most a page's worth), and
/// how many wait in all.
#[derive(Debug, Clone, Default)]
pub struct PendingList {
    pub requests: Vec<RequestView>,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub id: i64,
    pub vendor: String,
    pub asset: String,
    pub services: Vec<String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub starts: String,
    pub ends: String,
    /// As stored: `staff:bob+carol`, `os:root`.
    pub issued_by: String,
    /// The same for people: `bob and carol`, `root (command line)`.
    pub issued_by_name: String,
    /// Why it exists: the request's reason (ticket) or the one given at the command line.
    pub reason: String,
    pub request_id: Option<i64>,
    /// What the request asked, when the approval narrowed it (`ssh, dicom for 2h`).
    pub narrowed_from: Option<String>,
}

/// A session open now (or recently, in a vendor's history).
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    pub vendor: String,
    pub asset: String,
    pub kind: String,
    pub service: String,
    /// The command of an exec, a tunnel's destination.
    pub detail: String,
    pub grant_id: i64,
    pub client_addr: String,
    pub started_at: i64,
    pub started: String,
    pub ended_at: Option<i64>,
    /// How it ended, as a word; `None` while live.
    pub end_cause: Option<String>,
    /// Vendor → device and back, so far (live on this node: counted now; elsewhere: as last stored).
    pub bytes_up: i64,
    pub bytes_down: i64,
}

/// A vendor's SSH login and what runs in it now: its sessions (a shell, commands, each TCP
/// connection through a `-L` forward). A login that holds forwards but carries no connection yet
/// (`ssh -N -L`) is listed too, with no sessions.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub vendor: String,
    /// Where the vendor connects from (`203.0.113.7:50122`).
    pub client_addr: String,
    /// When the login signed in, when this node knows it (it runs here).
    pub since_at: Option<i64>,
    pub sessions: Vec<SessionView>,
}

/// The session history's filters as typed (the page's form, the API's query string); the core parses
/// and checks them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HistoryQuery {
    pub vendor: Option<String>,
    pub org: Option<String>,
    pub asset: Option<String>,
    pub zone: Option<String>,
    /// `shell`, `exec`, `sftp` (or `scp`), `tunnel`, `jump`.
    pub kind: Option<String>,
    /// A day (`2026-11-01`, from its start) or a time (`2026-11-01T08:00`, `2026-11-01 08:00:00`),
    /// UTC, or unix seconds.
    pub since: Option<String>,
    /// As `since`; a day counts whole (`--until 2026-11-30` includes that day).
    pub until: Option<String>,
    /// How it ended (`closed`, `expired`, `revoked`, `terminated`, `budget`, `recording`, `disabled`,
    /// `lost`, `shutdown`), or `live`.
    pub ended: Option<String>,
    /// Words typed or shown, in this order (`rm -rf`).
    pub text: Option<String>,
    /// 1-based (text, as a query string carries it).
    pub page: Option<String>,
}

impl HistoryQuery {
    /// The filters that are set, as `(name, value)` pairs in a fixed order: the page's links keep them
    /// in the URL.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("vendor", &self.vendor),
            ("org", &self.org),
            ("asset", &self.asset),
            ("zone", &self.zone),
            ("kind", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
            ("ended", &self.ended),
            ("text", &self.text),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }
}

/// What the audit chain and the file say about one recording (the core decides; pages show `label`).
#[derive(Debug, Clone, Serialize)]
pub struct RecordingStatus {
    pub id: i64,
    /// `asciicast-v2`, `exec-stream-v1`, `transfer-log`.
    pub format: String,
    pub size: Option<i64>,
    /// `intact`, `ALTERED`, `missing`, `live`, `not-digested`, `unchecked`.
    pub integrity: String,
    /// Why, in a sentence.
    pub detail: String,
}

/// One session of the history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryItem {
    pub id: String,
    pub vendor: String,
    pub org: String,
    pub asset: String,
    pub zone: String,
    pub kind: String,
    pub service: String,
    /// The command of an exec, a tunnel's destination.
    pub detail: String,
    pub client_addr: String,
    pub started_at: i64,
    pub started: String,
    pub ended_at: Option<i64>,
    /// `1h 2m 3s`, or `live`.
    pub duration: String,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub grant_id: i64,
    pub grant_reason: String,
    pub request_id: Option<i64>,
    /// The reason (ticket) of the request the grant came from.
    pub request_reason: Option<String>,
    /// How it ended, as a word; `None` while live.
    pub end_cause: Option<String>,
    pub end_reason: Option<String>,
    pub node: Option<String>,
    pub recordings: Vec<RecordingStatus>,
}

/// A page of the history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPage {
    pub sessions: Vec<HistoryItem>,
    pub page: u32,
    /// Another page follows.
    pub more: bool,
}

/// One file transfer or file operation of an sftp/scp session.
#[derive(Debug, Clone, Serialize)]
pub struct TransferView {
    /// Seconds since the session started.
    pub t: f64,
    /// `upload`, `download`, or the operation (`remove`, `rename`, …), or `stderr`, `notice` (the device program's exit), `unparseable`.
    pub what: String,
    pub path: String,
    pub target: Option<String>,
    pub bytes: Option<u64>,
    /// `ok`, `failed (…)`, `unfinished`.
    pub outcome: String,
}

/// One audit event about a session, for its history.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// Everything the session page shows.
#[derive(Debug, Clone, Serialize)]
pub struct SessionDetail {
    pub session: HistoryItem,
    /// The terminal recording the player plays (asciicast or exec), if any.
    pub playable: Option<i64>,
    /// Why it cannot be played (yet), when it has a terminal recording.
    pub play_note: Option<String>,
    /// An sftp/scp session's transfers.
    pub transfers: Option<Vec<TransferView>>,
    /// Transfers left out of `transfers` (the page shows at most so many).
    pub transfers_more: usize,
    /// A jump's inner sessions (the vendor's sessions on that asset while the jump was open).
    pub inner: Vec<HistoryItem>,
    /// The audit events about the session, including who viewed and searched it.
    pub audit: Vec<AuditView>,
    /// What `audit` leaves out, when it does ("older views not shown"), for a line under it.
    pub audit_note: Option<String>,
    /// The session is live and runs on this node: the live view can be shown here.
    pub live_here: bool,
    /// The legal hold on it, if any: its recordings are kept whatever their retention.
    pub hold: Option<HoldView>,
}

/// A legal hold, for the session page.
#[derive(Debug, Clone, Serialize)]
pub struct HoldView {
    pub at: String,
    /// Who placed it (an audit actor: `staff:NAME`, `os:NAME`).
    pub by: String,
    pub reason: String,
}

/// A line of a recording's text that matched a search.
#[derive(Debug, Clone, Serialize)]
pub struct TranscriptHit {
    pub recording: i64,
    /// Seconds on the player's clock (with the same idle-time limit as asked).
    pub time: f64,
    pub line: String,
}

/// A live view: the data of each server-sent event for asciinema-player's `eventsource` driver (a
/// reset with the screen so far, then `[time, "o", text]` and `[time, "r", "COLSxROWS"]` events); the
/// stream ends when the session does.
pub type LiveStream = std::pin::Pin<Box<dyn futures::Stream<Item = String> + Send>>;

/// An evidence bundle (a tar) being written for a download. Whatever makes the bundle fail before its
/// first byte (no such session, a recording that is not intact, no signing key) is an error from
/// [`Core::evidence_bundle`] instead; an `Err` item means it broke off later, and the response is then
/// cut short so that nobody takes a partial tar for a bundle.
pub struct EvidenceDownload {
    /// The name the browser saves it under (`session-ID.tar`).
    pub file_name: String,
    pub chunks: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send>,
    >,
}

impl std::fmt::Debug for EvidenceDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceDownload")
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
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
    /// Too much of one costly thing at once (evidence bundles being made); try again when one finished.
    #[error("{0}")]
    Busy(String),
    /// Something failed inside; details are logged by the core, not shown.
    #[error("internal error")]
    Internal,
}

pub type CoreResult<T> = Result<T, CoreError>;

/// Short-lived sign-in state that every node must see, since a load balancer may send each request of a
/// browser to another node. The core stores it (the web crate holds none in memory).
///
/// Passkey ceremonies, between their start and their finish, are kept in pools by who can start them, so
/// that a flood of starts anyone can make pushes out only its own kind: a staff sign-in for a name that
/// holds passkeys ([`StateKind::Ceremony`]), one for any other name ([`StateKind::DecoyCeremony`]: a
/// flood of made-up names pushes out only decoys; both kept alike, [`StateKind::per_subject`] per name
/// and as many in all, so a name's starts behave the same whether it holds passkeys or not), one
/// reached through a link's secret token ([`StateKind::LinkCeremony`], one per link) and one of a
/// signed-in person ([`StateKind::AccountCeremony`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// A signed-in staff session.
    Session,
    /// A staff passkey sign-in for an account that holds passkeys (subject: the name).
    Ceremony,
    /// A staff passkey sign-in for a name without passkeys or account: a challenge nothing answers
    /// (subject: the name).
    DecoyCeremony,
    /// A ceremony started through a link's token (an enrollment link, a vendor's link; subject: the
    /// token's SHA-256).
    LinkCeremony,
    /// A signed-in staff member adding a passkey (subject: the name).
    AccountCeremony,
    /// A vendor's one-time passkey link (`vendor_link::VendorLink`), opened by the SSH side (subject:
    /// the vendor).
    VendorLink,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Session => "session",
            StateKind::Ceremony => "ceremony",
            StateKind::DecoyCeremony => "ceremony-decoy",
            StateKind::LinkCeremony => "ceremony-link",
            StateKind::AccountCeremony => "ceremony-account",
            StateKind::VendorLink => "vendor-link",
        }
    }

    /// How many of this kind the core keeps at most (making room drops the ones closest to lapsing).
    pub fn max_held(self) -> u32 {
        match self {
            StateKind::Session => 10_000,
            StateKind::Ceremony | StateKind::DecoyCeremony => 5_000,
            StateKind::LinkCeremony | StateKind::AccountCeremony | StateKind::VendorLink => 1_000,
        }
    }

    /// How many rows of this kind one subject keeps at most (its newest), when the core is given one:
    /// one subject cannot fill the kind's shared cap. A staff name's sign-ins, real or decoy alike: 50,
    /// more than two addresses may start (the per-address limit is 20 in 5 minutes), so pushing a real
    /// sign-in out takes a flood aimed at that very name from several addresses; a link's ceremony: its
    /// latest; a vendor's open links: 3; a staff member's web sessions: 20 (their own oldest goes at
    /// the 21st sign-in), so one account, signing in again and again (a software passkey is not slowed
    /// as a TOTP code is), cannot fill the shared cap and sign everyone else out.
    pub fn per_subject(self) -> Option<u32> {
        match self {
            StateKind::Session => Some(20),
            StateKind::Ceremony | StateKind::DecoyCeremony => Some(50),
            StateKind::LinkCeremony => Some(1),
            StateKind::AccountCeremony => Some(2),
            StateKind::VendorLink => Some(3),
        }
    }
}

/// What changed in a staff member's passkeys, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyChange {
    /// One was registered.
    Added,
    /// A sign-in moved one's signature counter.
    Updated,
    /// One was removed.
    Removed,
}

/// What the web app needs from chaperone, by concern: [`Approvals`] (requests, grants, sessions),
/// [`Records`] (the session history, playback, the live view, evidence bundles), [`Accounts`] (staff
/// accounts, sign-in judgement, enrollment, passkeys) and [`SignInState`] (sessions and ceremonies every
/// node must see). The root crate implements the four; `Core` is all of them.
pub trait Core: Approvals + Records + Accounts + SignInState {}

impl<T: Approvals + Records + Accounts + SignInState> Core for T {}

/// Requests, grants and live sessions. Every method that changes state takes the acting [`Staff`] as
/// the session knows them; the core reads that person again (enabled, role) before it acts, checks the
/// rules again (the page only hides buttons) and audits: a role kept in a session is never trusted.
pub trait Approvals: Send + Sync + 'static {
    fn pending_requests(&self) -> impl Future<Output = CoreResult<PendingList>> + Send;
    fn request(&self, id: i64) -> impl Future<Output = CoreResult<RequestView>> + Send;
    /// A vendor's recent requests, newest first.
    fn vendor_history(
        &self,
        vendor: &str,
    ) -> impl Future<Output = CoreResult<Vec<RequestView>>> + Send;
    /// A vendor's recent sessions, newest first, as `by` sees them beside a request (who looked at which
    /// sessions is audited).
    fn vendor_sessions(
        &self,
        by: &Staff,
        vendor: &str,
    ) -> impl Future<Output = CoreResult<Vec<SessionView>>> + Send;
    /// Every decided request (approved, narrowed, denied, expired), the latest decision first, a page
    /// at a time; `Invalid` for a filter that does not parse.
    fn decided_requests(
        &self,
        query: &DecisionsQuery,
    ) -> impl Future<Output = CoreResult<DecisionsPage>> + Send;
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
    /// The sessions running now, as `by` sees them (who looked is audited).
    fn live_sessions(
        &self,
        by: &Staff,
    ) -> impl Future<Output = CoreResult<Vec<SessionView>>> + Send;
    /// One session running now, as `by` sees it to confirm its termination (audited as a view of that
    /// session); `Conflict` once it has ended.
    fn live_session(
        &self,
        by: &Staff,
        id: &str,
    ) -> impl Future<Output = CoreResult<SessionView>> + Send;
    /// The same, by the vendor's login they run in, with the logins that run nothing now.
    fn live_connections(
        &self,
        by: &Staff,
    ) -> impl Future<Output = CoreResult<Vec<ConnectionView>>> + Send;
    /// One active grant, for the revoke confirmation.
    fn grant(&self, id: i64) -> impl Future<Output = CoreResult<GrantView>> + Send;
    /// Ends one live session (the node running it closes it within seconds); its grant stays. A reason
    /// is required; it is audited and shown to the vendor.
    fn terminate_session(
        &self,
        by: &Staff,
        id: &str,
        reason: &str,
    ) -> impl Future<Output = CoreResult<()>> + Send;
    /// Places (`on`) or releases the legal hold on session `id`: auditors and admins, with a reason;
    /// audited.
    fn legal_hold(
        &self,
        by: &Staff,
        id: &str,
        reason: &str,
        on: bool,
    ) -> impl Future<Output = CoreResult<()>> + Send;
    /// Completes (with `true`) when something approvers see may have changed; used for live updates.
    fn changed(&self) -> impl Future<Output = ()> + Send;
}

/// How long an audited opening of a recording's player lets its viewer fetch the recording's segments.
pub const VIEW_LEASE_SECS: i64 = 12 * 3600;

/// The compliance workspace: what was recorded, found, played, watched live and exported. Every method
/// that shows recorded content is audited by the core (who looked at what), and the role is read again.
pub trait Records: Send + Sync + 'static {
    /// The session history, newest first; a text search is audited (`recording.search`).
    fn history(
        &self,
        by: &Staff,
        query: &HistoryQuery,
    ) -> impl Future<Output = CoreResult<HistoryPage>> + Send;
    /// One session for its page; opening a session with recordings is audited (`recording.view`).
    fn session_detail(
        &self,
        by: &Staff,
        id: &str,
    ) -> impl Future<Output = CoreResult<SessionDetail>> + Send;
    /// The player's index of a terminal recording (asciinema-player's segmented format, JSON), its
    /// times under the idle-time limit `idle` (seconds). Audited (`recording.view`, `play`).
    fn playback_index(
        &self,
        by: &Staff,
        id: &str,
        recording: i64,
        idle: Option<f64>,
    ) -> impl Future<Output = CoreResult<String>> + Send;
    /// One segment of it (JSON), checked against its digest as it is read; only for a viewer whose
    /// opening of this recording's player was audited (`recording.view`, `play`) in the last
    /// [`VIEW_LEASE_SECS`]: no byte of a recording leaves without its view on the record.
    fn playback_segment(
        &self,
        by: &Staff,
        id: &str,
        recording: i64,
        segment: usize,
        idle: Option<f64>,
    ) -> impl Future<Output = CoreResult<String>> + Send;
    /// The lines of a session's recordings that hold `text`, with their times. Audited
    /// (`recording.search`).
    fn transcript_search(
        &self,
        by: &Staff,
        id: &str,
        text: &str,
        idle: Option<f64>,
    ) -> impl Future<Output = CoreResult<Vec<TranscriptHit>>> + Send;
    /// Watches a live terminal session of this node, read-only. Audited (`session.watch`).
    fn watch(&self, by: &Staff, id: &str) -> impl Future<Output = CoreResult<LiveStream>> + Send;
    /// Whether [`Records::watch`] would show `by` session `id` now, or why not; nothing is opened or
    /// audited. The page asks first: a refused stream of server-sent events can only show "loading".
    fn watchable(&self, by: &Staff, id: &str) -> impl Future<Output = CoreResult<()>> + Send;
    /// The evidence bundle of an ended session, streamed as it is written. Audited
    /// (`evidence.export`) before any byte is read.
    fn evidence_bundle(
        &self,
        by: &Staff,
        id: &str,
    ) -> impl Future<Output = CoreResult<EvidenceDownload>> + Send;
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
    /// Replaces `name`'s passkeys (one was added or removed, or a sign-in moved a signature counter)
    /// if they are still `before`, as the caller read them; audited as what `change` says.
    /// `Conflict` when they changed meanwhile (nothing written: a change made from a stale copy would
    /// undo the other, and bring a removed passkey back).
    fn set_passkeys(
        &self,
        name: &str,
        before: Option<&str>,
        passkeys_json: &str,
        change: PasskeyChange,
    ) -> impl Future<Output = CoreResult<()>> + Send;
    /// Vendor `vendor`'s passkeys as stored (a JSON array), if any; `NotFound` for a vendor who is
    /// unknown or disabled.
    fn vendor_passkeys(
        &self,
        vendor: &str,
    ) -> impl Future<Output = CoreResult<Option<String>>> + Send;
    /// Replaces vendor `vendor`'s stored passkey that has the same credential id (a sign-in moved its
    /// signature counter); audited. Nothing when it was removed meanwhile (it never comes back).
    fn update_vendor_passkey(
        &self,
        vendor: &str,
        passkey_json: &str,
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
    /// [`SignInState::replace_state`] only while the data is still `expected` (compare and swap):
    /// of two writers that read the same state, one wins and the other learns it lost.
    fn swap_state(
        &self,
        kind: StateKind,
        key: &str,
        expected: &str,
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
