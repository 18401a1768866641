//! The core side of the web page: [`WebCore`] implements `chaperone_web_approval::Core` over the store,
//! the policy and the secrets key, so the web crate never sees SQL or SSH. Every change goes through
//! `policy` (decisions, revocations) or a store `Tx` with its audit event (sign-in, enrollment).
//!
//! Entry point: [`WebCore::new`], handed to `chaperone_web_approval::router` by `server::run`.

use std::time::Duration;

use chaperone_web_approval::{
    Accounts, Approvals, AuditView, ConnectionView, CoreError, Decision, DecisionsPage,
    DecisionsQuery, Enrollment, EvidenceDownload, GrantView, HistoryItem, HistoryPage,
    HistoryQuery, LiveStream, Method, PasskeyChange, PendingList, RecordingStatus, Records,
    RequestView, Role as WebRole, SecondFactor, SessionDetail, SessionView, SignInAttempt,
    SignInState, Staff, StaffAccount, StateKind, TranscriptHit, TransferView, Verdict,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::config::{format_duration, parse_duration};
use crate::identity::ldap::{Authn, Directory, LdapError};
use crate::identity::signin::{self, Account, Attempt, Second};
use crate::identity::totp;
use crate::model::{AccessRequest, Criticality, RequestStatus, Role, check_name, shown};
use crate::policy::grants::{self, GrantError};
use crate::policy::requests::{self, Approver, AuthMethod, DecideError, Outcome, ZoneScope};
use crate::store::{
    DecidedFilter, DecidedOutcome, DirectoryStanding, HistoryFilter, HistoryRow, StaffAuth,
    StoreError,
};
use std::collections::{HashMap, HashSet};

use crate::evidence::{Evidence, open_recording};
use crate::live::LiveSessions;
use crate::model::{GrantRow, RecordingRow, SessionRow};
use crate::recording::RecordingFormat;
use crate::search_index::Indexer;
use chaperone_recorder::FileStamp;
use chaperone_recorder::playback::{self, Format, IdleMap, Index};

/// Sign-in state kept at most, per kind (sessions are made only by full sign-ins; ceremony starts need
/// no account, so a flood of them drops the oldest instead of growing the table).
#[derive(Debug, Clone)]
pub struct WebCore {
    app: App,
    /// This node's live sessions: the live view's taps.
    live: LiveSessions,
    /// Indexes a recording at once when its page is opened before the background job got to it.
    indexer: Indexer,
    /// One directory sign-in of a name at a time, when `[ldap] max_failed_binds` counts them.
    bind_turns: std::sync::Arc<BindTurns>,
    /// When each (staff member, history query) was last audited on this node: a query is audited
    /// again once [`QUERY_AUDIT_EVERY`] passed, not at each of the page's live refreshes.
    queries_audited:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), i64>>>,
    /// Evidence bundles being made for downloads on this node, by staff member.
    bundles: std::sync::Arc<BundleTurns>,
    /// Turns of the page's heavy reads of recordings on this node: whole-file digests
    /// ([`FILE_CHECKS`]), playback indexes held in memory ([`INDEX_LOADS`]), indexing passes a view
    /// started ([`VIEW_INDEXING`]). A turn is held until the work ends, not until the request does: a
    /// viewer who closes the connection frees nothing early, and starts nothing more.
    turns: std::sync::Arc<ReadTurns>,
}

/// See [`WebCore::turns`].
#[derive(Debug)]
struct ReadTurns {
    file_checks: std::sync::Arc<tokio::sync::Semaphore>,
    index_loads: std::sync::Arc<tokio::sync::Semaphore>,
    view_indexing: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Default for ReadTurns {
    fn default() -> ReadTurns {
        let turns = |n| std::sync::Arc::new(tokio::sync::Semaphore::new(n));
        ReadTurns {
            file_checks: turns(FILE_CHECKS),
            index_loads: turns(INDEX_LOADS),
            view_indexing: turns(VIEW_INDEXING),
        }
    }
}

/// Recordings hashed whole at once for pages, per node (each a blocking thread reading up to
/// `[recording] max_bytes`); more wait their turn.
const FILE_CHECKS: usize = 2;
/// Playback indexes read, checked and held for a request at once, per node (a hostile recording's index
/// is tens of MB); more wait their turn.
const INDEX_LOADS: usize = 4;
/// Indexing passes started by a page view at once, per node; past that a view leaves the recording to the
/// background indexer and says it is being prepared.
const VIEW_INDEXING: usize = 1;
/// How long a view waits for the pass it started before saying the recording is being prepared.
const VIEW_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a history query (its filters and page) by one staff member is audited once for.
const QUERY_AUDIT_EVERY: i64 = 600;

impl WebCore {
    pub fn new(app: App, live: LiveSessions) -> WebCore {
        let indexer = Indexer::new(&app.store, &app.config.recording.dir, &app.secrets)
            .remembering(app.proven.clone());
        WebCore {
            app,
            live,
            indexer,
            bind_turns: std::sync::Arc::default(),
            queries_audited: std::sync::Arc::default(),
            bundles: std::sync::Arc::default(),
            turns: std::sync::Arc::default(),
        }
    }
}

/// Evidence bundles a node makes for downloads at once. Each reads and hashes every recording of its
/// session on a blocking thread for as long as the browser takes it, so a few at a time is what a node
/// gives: a script (or a curious person with a hundred tabs) must not take the disk and the cores the
/// relay needs. The CLI's `evidence export` is the operator's and is not counted.
const BUNDLES_PER_NODE: usize = 4;
/// Of those, what one staff member may hold, so that one of them does not keep the others waiting.
const BUNDLES_PER_STAFF: usize = 2;

/// The bundles being made on this node, by staff member ([`BUNDLES_PER_NODE`], [`BUNDLES_PER_STAFF`]).
#[derive(Debug)]
struct BundleTurns(chaperone_web_approval::places::Places);

impl Default for BundleTurns {
    fn default() -> BundleTurns {
        BundleTurns(chaperone_web_approval::places::Places::new(
            BUNDLES_PER_NODE,
            BUNDLES_PER_STAFF,
        ))
    }
}

impl BundleTurns {
    /// A turn for `who`, held until the download ends (its stream is dropped), or `Busy`.
    fn take(&self, who: &str) -> Result<BundleTurn, CoreError> {
        use chaperone_web_approval::places::Full;
        self.0.take(who).map_err(|full| {
            CoreError::Busy(match full {
                Full::Yours(n) => format!(
                    "you are downloading {n} evidence bundles already; try again when one has finished"
                ),
                Full::All(n) => format!(
                    "{n} evidence bundles are being made on this server; try again in a moment"
                ),
            })
        })
    }
}

/// One bundle's place under [`BundleTurns`]; given back when dropped.
type BundleTurn = chaperone_web_approval::places::Place;

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
        dn: user.dn.clone(),
        entry_id: user.entry_id.clone(),
        zones: ZoneScope {
            grouped: app
                .config
                .ldap
                .as_ref()
                .map(|l| l.zone_approvers.keys().cloned().collect())
                .unwrap_or_default(),
            member_of: user.zones.clone(),
            only_member_of: user.zones_only,
        },
    };
    Ok((approver, user))
}

fn dur(secs: i64) -> String {
    format_duration(Duration::from_secs(secs.unsigned_abs()))
}

/// People's names for a list: `bob`, `bob and carol`, `ann, bob and carol`.
fn names<'a>(list: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<&str> = list.into_iter().filter(|n| !n.is_empty()).collect();
    match list.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Who an actor as stored is, for people: `staff:bob+carol` → `bob and carol`, `os:root` →
/// `root (command line)`, `system` → `chaperone`.
fn person(actor: &str) -> String {
    match actor.split_once(':') {
        Some(("staff", who)) => names(who.split('+')),
        Some(("os", who)) => format!("{who} (command line)"),
        Some(("vendor", who)) => format!("{who} (vendor)"),
        _ if actor == "system" => "chaperone".to_owned(),
        _ => actor.to_owned(),
    }
}

/// What a request asked, as the grants page shows what a narrowed grant came from: `ssh, dicom for 2h`.
fn asked(r: &AccessRequest) -> String {
    format!("{} for {}", r.services.join(", "), dur(r.duration_secs))
}

/// Whether the grant `g` issued for `r` allows less than it asked (fewer services or less time).
fn narrowed(r: &AccessRequest, g: &GrantRow) -> bool {
    g.services != r.services || g.ends_at - g.starts_at < r.duration_secs
}

/// A request for the page, with the grant it led to (if any, for what was granted).
fn view(r: AccessRequest, grant: Option<&GrantRow>) -> RequestView {
    let grant = grant.filter(|g| Some(g.id) == r.grant_id);
    let outcome = match (r.status, grant) {
        (RequestStatus::Approved, Some(g)) if narrowed(&r, g) => "narrowed".to_owned(),
        (status, _) => status.to_string(),
    };
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
        decided_by_name: r.decided_by.as_deref().map(|by| match r.status {
            RequestStatus::Expired => "nobody (it lapsed)".to_owned(),
            _ => names(by.split(',')),
        }),
        decided: r.decided_at.map(format_time),
        decided_at: r.decided_at,
        expires: r.expires_at.map(format_time),
        outcome,
        granted_services: grant.map(|g| g.services.clone()),
        granted_duration: grant.map(|g| dur(g.ends_at - g.starts_at)),
        grant_revoked: grant.and_then(|g| {
            g.revoked_at.map(|at| {
                format!(
                    "revoked by {} at {}: {}",
                    person(g.revoked_by.as_deref().unwrap_or("?")),
                    format_time(at),
                    g.revoke_reason.as_deref().unwrap_or("")
                )
            })
        }),
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

/// A grant for the page; `from` is the request it was issued for, if any (what was asked).
fn grant_view(g: GrantRow, from: Option<&AccessRequest>) -> GrantView {
    GrantView {
        narrowed_from: from.filter(|r| narrowed(r, &g)).map(asked),
        id: g.id,
        starts: format_time(g.starts_at),
        ends: format_time(g.ends_at),
        issued_by_name: person(&g.issued_by),
        vendor: g.vendor,
        asset: g.asset,
        services: g.services,
        starts_at: g.starts_at,
        ends_at: g.ends_at,
        issued_by: g.issued_by,
        reason: g.reason,
        request_id: g.request_id,
    }
}

/// The Decisions page's filters, checked: names as names, a known outcome, a page number.
fn decided_filter(q: &DecisionsQuery) -> Result<(DecidedFilter, u32), String> {
    let name = |what: &str, v: &Option<String>| -> Result<Option<String>, String> {
        match v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => check_name(what, v).map(|()| Some(v.to_owned())),
        }
    };
    let outcome = match q.state.as_deref().map(str::trim).unwrap_or_default() {
        "" | "decided" => DecidedOutcome::Any,
        "approved" => DecidedOutcome::Approved,
        "narrowed" => DecidedOutcome::Narrowed,
        "denied" => DecidedOutcome::Denied,
        "expired" => DecidedOutcome::Expired,
        other => {
            return Err(format!(
                "state {:?} is not one of decided, approved, narrowed, denied, expired",
                crate::model::truncate_for_display(other, 40)
            ));
        }
    };
    let page = match q.page.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        None => 1,
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=100_000).contains(p))
            .ok_or_else(|| {
                format!(
                    "page {:?} is not a page number",
                    crate::model::truncate_for_display(p, 20)
                )
            })?,
    };
    Ok((
        DecidedFilter {
            vendor: name("vendor", &q.vendor)?,
            asset: name("asset", &q.asset)?,
            outcome,
        },
        page,
    ))
}

fn decide_error(e: DecideError) -> CoreError {
    match e {
        DecideError::NotFound(_) => CoreError::NotFound,
        DecideError::SelfApproval
        | DecideError::AlreadyApproved
        | DecideError::NotAnApprover(_)
        | DecideError::OtherZone(_)
        | DecideError::AccountDisabled(_) => CoreError::Forbidden(e.to_string()),
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
        GrantError::NotAllowed(_) | GrantError::OtherZone(_) => CoreError::Forbidden(e.to_string()),
        GrantError::AlreadyRevoked(_)
        | GrantError::VendorDisabled(_)
        | GrantError::OtherOrganisation { .. } => CoreError::Conflict(e.to_string()),
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
                key: None,
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
        // Wrong passwords of this name from every address together: past `[ldap] max_failed_binds`,
        // the directory is not asked (so this form cannot drive the directory's own lockout of a
        // hospital account). Refused like a lock, audited, not counted.
        let cap = app.config.ldap.as_ref().and_then(|l| l.max_failed_binds);
        // Held from the count to the record of this sign-in's outcome (the end of this function):
        // sign-ins of one name sent at once would otherwise all read a count below the cap and all
        // bind. Exact per node; several nodes may each let one more through.
        let _turn = match cap {
            Some(_) => Some(self.bind_turns.take(attempt.name).await),
            None => None,
        };
        if let Some(cap) = cap {
            let since = signin::Lockout::since(app.config.web.failure_window, now);
            let wrong = app
                .store
                .wrong_passwords_of(user.as_ref().map(|u| u.id), attempt.name, since)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot count a name's wrong passwords");
                    CoreError::Internal
                })?;
            if wrong >= i64::from(cap) {
                self.binds_capped(attempt.name, user.is_some(), &source, wrong, now)
                    .await?;
                return Ok(Verdict::Refused);
            }
        }
        // A name no account holds is counted by name: locked, the directory is not asked either.
        if user.is_none()
            && signin::directory_name_locked(app, attempt.name, &source, now)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot read a directory name's lockout");
                    CoreError::Internal
                })?
        {
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
                    // Disabled too: counted, so its binds are bounded like anyone's.
                    Some(u) => self.judge_staff(u, attempt, false).await,
                    None => {
                        signin::directory_name_refused(app, attempt.name, &source, now)
                            .await
                            .map_err(|e| {
                                tracing::error!(error = %e, "cannot count a refused directory sign-in");
                                CoreError::Internal
                            })?;
                        Ok(Verdict::Refused)
                    }
                };
            }
        };
        let Some(standing) = found.standing() else {
            // The right password, but no mapped group: no access, and a stored account loses it.
            self.directory_removed(user.as_ref(), "in no mapped group", &source, now)
                .await?;
            return Ok(Verdict::Refused);
        };
        // One directory entry, one account: a second name for an entry (two `uid` values, a filter
        // on two attributes, the entry moved or renamed) would be a second approver of four eyes. Its
        // first account keeps it; entries compare by their stable id where both have one.
        let entry = crate::store::EntryRef {
            dn: &found.dn,
            id: found.entry_id.as_deref(),
        };
        let owner = app
            .store
            .directory_account_of(entry, user.as_ref().map(|u| u.id))
            .await
            .map_err(internal)?;
        if let Some(owner) = owner {
            tracing::warn!(name = %attempt.name, dn = %found.dn, account = %owner,
                "directory sign-in refused: the entry signs in as another account");
            return Ok(Verdict::Refused);
        }
        let changed = user.as_ref().is_none_or(|u| {
            DirectoryStanding::of(u) != standing
                || (!u.enabled && u.directory_disabled)
                || u.dn.as_deref() != Some(&found.dn)
                || u.entry_id != found.entry_id
        });
        let id = match user.as_ref() {
            Some(u) if !changed => u.id,
            // Added, or what the directory says changed: stored, audited, committed before the
            // judgement below opens its own transaction.
            _ => {
                let mut tx = app.store.begin().await.map_err(internal)?;
                let (id, created) = match tx
                    .upsert_directory_staff(attempt.name, &standing, entry, now)
                    .await
                {
                    Ok(r) => r,
                    // A local account of that name exists (added meanwhile), or the name now finds
                    // another entry than its account's: the directory does not sign it in.
                    Err(StoreError::Conflict(why)) => {
                        tracing::warn!(name = %attempt.name, dn = %found.dn, %why, "directory sign-in refused");
                        return Ok(Verdict::Refused);
                    }
                    Err(e) => return Err(internal(e)),
                };
                tx.audit(
                    AuditEvent::new(
                        "system",
                        if created {
                            Action::UserDirectoryAdd
                        } else {
                            Action::UserDirectoryUpdate
                        },
                        format!("user:{}", attempt.name),
                        json!({"role": standing.role.to_string(), "dn": found.dn,
                               "zones": standing.zones, "zones_only": standing.zones_only}),
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
        // The entry had a second factor under another name (renamed, or a second name, once the
        // re-check found the first one gone): a new one is not set up with the password alone, or a
        // phished password would take the person's role. An administrator opens the setup
        // (`chaperone user enroll NAME`) once they know it is that person.
        if let Some(earlier) = app
            .store
            .factor_of_entry_elsewhere(entry, Some(id))
            .await
            .map_err(internal)?
        {
            tracing::warn!(name = %attempt.name, dn = %found.dn, earlier = %earlier,
                "directory sign-in refused: the entry set up its second factor under another name; \
                 an administrator opens this name's setup with `chaperone user enroll`");
            let mut tx = app.store.begin().await.map_err(internal)?;
            tx.audit(
                AuditEvent::new(
                    "system",
                    Action::StaffSigninFailed,
                    format!("user:{}", attempt.name),
                    json!({"why": "second factor set up under another name", "earlier": earlier,
                           "dn": found.dn, "source": source}),
                ),
                now,
            )
            .await
            .map_err(internal)?;
            tx.commit("staff.signin.failed").await.map_err(internal)?;
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
                Action::UserEnrollOpen,
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
    /// Audits a sign-in refused because `name` had `wrong` wrong passwords from every address within
    /// the window (`[ldap] max_failed_binds`): the directory was not asked.
    async fn binds_capped(
        &self,
        name: &str,
        account: bool,
        source: &str,
        wrong: i64,
        now: i64,
    ) -> Result<(), CoreError> {
        let audited = async {
            let mut tx = self.app.store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    "system",
                    Action::StaffSigninFailed,
                    format!("user:{name}"),
                    json!({"why": "directory binds capped", "locked": true, "source": source,
                           "failures": wrong, "account": account}),
                ),
                now,
            )
            .await?;
            tx.commit("staff.signin.failed").await
        };
        audited.await.map_err(|e| {
            tracing::error!(error = %e, "cannot audit a capped directory sign-in");
            CoreError::Internal
        })
    }

    async fn directory_failed(&self, e: &LdapError, name: &str, source: &str, now: i64) -> Verdict {
        tracing::warn!(error = %crate::error_text::report(e), "directory sign-in failed");
        let audited = async {
            let mut tx = self.app.store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    "system",
                    Action::StaffSigninUnavailable,
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
        if crate::identity::directory::remove_staff(&self.app, u, why, now)
            .await
            .map_err(internal)?
        {
            tracing::info!(user = %u.name, why, %source, "directory account disabled");
        }
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

impl WebCore {
    /// Requests for the page, each with the grant it led to.
    async fn views(&self, list: Vec<AccessRequest>) -> Result<Vec<RequestView>, CoreError> {
        let ids: Vec<i64> = list.iter().filter_map(|r| r.grant_id).collect();
        let grants = if ids.is_empty() {
            Vec::new()
        } else {
            self.app.store.grants_by_id(&ids).await.map_err(internal)?
        };
        Ok(list
            .into_iter()
            .map(|r| {
                let g = grants.iter().find(|g| Some(g.id) == r.grant_id);
                view(r, g)
            })
            .collect())
    }

    /// A session for the page; live on this node, with its bytes counted so far.
    fn session_view(&self, s: SessionRow) -> SessionView {
        let (up, down) = match self.live.bytes(&s.id) {
            Some((up, down)) if s.ended_at.is_none() => (
                i64::try_from(up).unwrap_or(i64::MAX),
                i64::try_from(down).unwrap_or(i64::MAX),
            ),
            _ => (s.bytes_up, s.bytes_down),
        };
        SessionView {
            started: format_time(s.started_at),
            started_at: s.started_at,
            ended_at: s.ended_at,
            end_cause: s.end_cause,
            bytes_up: up,
            bytes_down: down,
            id: s.id,
            vendor: s.vendor,
            asset: s.asset,
            kind: s.kind,
            service: s.service,
            detail: s.detail,
            grant_id: s.grant_id,
            client_addr: s.client_addr,
        }
    }
}

/// The most pending requests the page and the API list (the ones waiting longest); they say how many
/// more wait.
const PENDING_SHOWN: i64 = 200;

impl Approvals for WebCore {
    async fn pending_requests(&self) -> Result<PendingList, CoreError> {
        let (list, total) = self
            .app
            .store
            .pending_requests(self.now(), PENDING_SHOWN)
            .await
            .map_err(internal)?;
        Ok(PendingList {
            requests: list.into_iter().map(|r| view(r, None)).collect(),
            total,
        })
    }

    async fn request(&self, id: i64) -> Result<RequestView, CoreError> {
        let r = self
            .app
            .store
            .request(id)
            .await
            .map_err(internal)?
            .ok_or(CoreError::NotFound)?;
        Ok(self.views(vec![r]).await?.remove(0))
    }

    async fn vendor_history(&self, vendor: &str) -> Result<Vec<RequestView>, CoreError> {
        let list = self
            .app
            .store
            .requests(None, Some(vendor), 10)
            .await
            .map_err(internal)?;
        self.views(list).await
    }

    async fn vendor_sessions(
        &self,
        by: &Staff,
        vendor: &str,
    ) -> Result<Vec<SessionView>, CoreError> {
        let filter = HistoryFilter {
            vendor: Some(vendor.to_owned()),
            ..Default::default()
        };
        let sessions: Vec<SessionView> = self
            .app
            .store
            .session_history(&filter, 5, 0)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|h| self.session_view(h.session))
            .collect();
        self.list_viewed(
            by,
            json!({"list": "vendor", "vendor": vendor}),
            sessions.len(),
        )
        .await?;
        Ok(sessions)
    }

    async fn decided_requests(&self, q: &DecisionsQuery) -> Result<DecisionsPage, CoreError> {
        const DECISIONS_PAGE: i64 = 50;
        let (filter, page) = decided_filter(q).map_err(CoreError::Invalid)?;
        let mut list = self
            .app
            .store
            .decided_requests(
                &filter,
                DECISIONS_PAGE + 1,
                (i64::from(page) - 1) * DECISIONS_PAGE,
            )
            .await
            .map_err(internal)?;
        let more = list.len() as i64 > DECISIONS_PAGE;
        list.truncate(DECISIONS_PAGE as usize);
        Ok(DecisionsPage {
            requests: self.views(list).await?,
            page,
            more,
        })
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
        let (by, _) = current(app, by).await?;
        let outcome = requests::decide(&app.store, &app.events, app.clock.now(), &by, id, decision)
            .await
            .map_err(decide_error)?;
        Ok(match outcome {
            // What was granted, said whole: the approver checks it against what they meant to grant.
            Outcome::Granted {
                grant_id,
                ends_at,
                services,
            } => format!(
                "approved: grant #{grant_id} of {} until {}",
                services.join(", "),
                format_time(ends_at)
            ),
            Outcome::AwaitingSecondApproval => {
                "approval recorded; this asset is critical, so a second approver must approve too"
                    .into()
            }
            Outcome::Denied => "denied".into(),
        })
    }

    async fn active_grants(&self) -> Result<Vec<GrantView>, CoreError> {
        let now = self.now();
        let rows: Vec<GrantRow> = self
            .app
            .store
            .grants(Some(now))
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|g| g.is_active(now))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for g in rows {
            let from = match g.request_id {
                Some(r) => self.app.store.request(r).await.map_err(internal)?,
                None => None,
            };
            out.push(grant_view(g, from.as_ref()));
        }
        Ok(out)
    }

    async fn grant(&self, id: i64) -> Result<GrantView, CoreError> {
        let g = self
            .app
            .store
            .grant(id)
            .await
            .map_err(internal)?
            .ok_or(CoreError::NotFound)?;
        if g.revoked_at.is_some() {
            return Err(CoreError::Conflict(format!(
                "grant #{id} was already revoked"
            )));
        }
        let from = match g.request_id {
            Some(r) => self.app.store.request(r).await.map_err(internal)?,
            None => None,
        };
        Ok(grant_view(g, from.as_ref()))
    }

    async fn revoke_grant(&self, by: &Staff, id: i64, reason: &str) -> Result<(), CoreError> {
        self.revoke(by, id, reason).await
    }

    async fn live_sessions(&self, by: &Staff) -> Result<Vec<SessionView>, CoreError> {
        let sessions = self.open_session_views().await?;
        self.list_viewed(by, json!({"list": "live"}), sessions.len())
            .await?;
        Ok(sessions)
    }

    async fn live_session(&self, by: &Staff, id: &str) -> Result<SessionView, CoreError> {
        let Some(view) = self
            .open_session_views()
            .await?
            .into_iter()
            .find(|v| v.id == id)
        else {
            return Err(CoreError::Conflict(format!(
                "session {id} has already ended"
            )));
        };
        self.audit_view(
            by,
            crate::audit::Action::RecordingView,
            format!("session:{id}"),
            json!({"what": "terminate confirmation"}),
        )
        .await?;
        Ok(view)
    }

    async fn live_connections(&self, by: &Staff) -> Result<Vec<ConnectionView>, CoreError> {
        let mut sessions = self.open_session_views().await?;
        self.list_viewed(by, json!({"list": "live"}), sessions.len())
            .await?;
        // Oldest first within a login.
        sessions.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        // This node's logins, the sessions that run in them (a session names its login by the
        // vendor and the client's address), then the sessions of logins on other nodes, grouped the
        // same way.
        let mut out: Vec<ConnectionView> = self
            .live
            .connections()
            .into_iter()
            .map(|(vendor, client_addr, since)| ConnectionView {
                vendor,
                client_addr,
                since_at: Some(since),
                sessions: Vec::new(),
            })
            .collect();
        for s in sessions {
            match out
                .iter_mut()
                .find(|c| c.vendor == s.vendor && c.client_addr == s.client_addr)
            {
                Some(c) => c.sessions.push(s),
                None => out.push(ConnectionView {
                    vendor: s.vendor.clone(),
                    client_addr: s.client_addr.clone(),
                    since_at: None,
                    sessions: vec![s],
                }),
            }
        }
        Ok(out)
    }

    async fn legal_hold(
        &self,
        by: &Staff,
        id: &str,
        reason: &str,
        on: bool,
    ) -> Result<(), CoreError> {
        // The page shows the form to these roles only; the rule lives here (the role as stored now).
        let (by, _) = current(&self.app, by).await?;
        if !role(by.role).can_hold() {
            return Err(CoreError::Forbidden(
                "legal holds are placed and released by auditors and admins".into(),
            ));
        }
        use crate::evidence::retention::{HoldError, set_hold};
        match set_hold(&self.app.store, self.now(), (&by.actor(), id), reason, on).await {
            Ok(()) => {
                self.app
                    .events
                    .send(crate::policy::events::Change::Session(id.to_owned()));
                Ok(())
            }
            Err(HoldError::Reason(why)) => Err(CoreError::Invalid(why)),
            Err(HoldError::Store(StoreError::NotFound { .. })) => Err(CoreError::NotFound),
            Err(HoldError::Store(e)) => Err(internal(e)),
            Err(e @ (HoldError::AlreadyHeld(..) | HoldError::NotHeld(_))) => {
                Err(CoreError::Conflict(e.to_string()))
            }
        }
    }

    async fn terminate_session(&self, by: &Staff, id: &str, why: &str) -> Result<(), CoreError> {
        // The page hides the button; the rule lives here. Auditors only read (the role as stored now).
        let (by, _) = current(&self.app, by).await?;
        if !role(by.role).can_decide() {
            return Err(CoreError::Forbidden(
                "auditors cannot terminate sessions".into(),
            ));
        }
        let why = why.trim();
        if why.is_empty() {
            return Err(CoreError::Invalid(
                "say why the session is ended (the vendor is shown it)".into(),
            ));
        }
        // Shown on the vendor's terminal and recorded: one line of text, as every reason is.
        crate::model::check_text("reason", why, crate::policy::grants::MAX_REASON)
            .map_err(CoreError::Invalid)?;
        let session = match self.app.store.session(id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Err(CoreError::NotFound),
            Err(e) => return Err(internal(e)),
        };
        // The zone rule requests are decided by: an approver limited to some zones ends those
        // zones' sessions only.
        if !by.zones.allows(by.role, &session.zone) {
            return Err(CoreError::Forbidden(format!(
                "sessions in zone {} are ended by other approvers",
                session.zone
            )));
        }
        if session.ended_at.is_some() {
            return Err(CoreError::Conflict(format!(
                "session {id} has already ended"
            )));
        }
        let now = self.app.clock.now();
        let reason = format!("session terminated by {}: {why}", by.name);
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
                Action::SessionTerminate,
                format!("session:{id}"),
                json!({"vendor": session.vendor, "asset": session.asset, "grant": session.grant_id,
                       "method": by.method, "reason": why}),
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
        let mut start = self.app.store.audit_head().await.map(|h| h.0).ok();
        loop {
            tokio::select! {
                _ = rx.recv() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let head = self.app.store.audit_head().await.map(|h| h.0).ok();
            if head.is_some() && head != start {
                // Views alone change nothing a page shows; and a page's refresh audits its own view
                // again, so answering them would make an open page refresh itself once a second.
                if let (Some(from), Some(to)) = (start, head)
                    && self.only_views(from, to).await
                {
                    start = head;
                    continue;
                }
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
                Action::UserEnrollSeed,
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
                Action::UserEnroll,
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
                Action::UserEnroll,
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
        before: Option<&str>,
        passkeys_json: &str,
        change: PasskeyChange,
    ) -> Result<(), CoreError> {
        let app = &self.app;
        let Some(user) = app.store.staff_auth(name).await.map_err(internal)? else {
            return Err(CoreError::NotFound);
        };
        let now = app.clock.now();
        let mut tx = app.store.begin().await.map_err(internal)?;
        if !tx
            .set_staff_passkeys(user.id, before, passkeys_json)
            .await
            .map_err(internal)?
        {
            return Err(CoreError::Conflict(
                "The passkeys of this account changed meanwhile: reload the page and try again."
                    .into(),
            ));
        }
        let action = match change {
            PasskeyChange::Added => Action::StaffPasskeyAdd,
            PasskeyChange::Updated => Action::StaffPasskeyUpdate,
            PasskeyChange::Removed => Action::StaffPasskeyRemove,
        };
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

    async fn vendor_passkeys(&self, vendor: &str) -> Result<Option<String>, CoreError> {
        let v = self.enabled_vendor(vendor).await?;
        self.app.store.vendor_passkeys(v.id).await.map_err(internal)
    }

    async fn update_vendor_passkey(
        &self,
        vendor: &str,
        passkey_json: &str,
    ) -> Result<(), CoreError> {
        let v = self.enabled_vendor(vendor).await?;
        let record = serde_json::from_str(passkey_json).map_err(|_| CoreError::Internal)?;
        crate::identity::vendor_passkeys::update(&self.app, &v, record)
            .await
            .map(|_| ())
            .map_err(internal)
    }
}

impl WebCore {
    /// Vendor `name` if they exist and are enabled (a disabled vendor's passkeys are neither used nor
    /// changed).
    async fn enabled_vendor(&self, name: &str) -> Result<crate::model::Vendor, CoreError> {
        match self.app.store.vendor(name).await.map_err(internal)? {
            Some(v) if v.enabled => Ok(v),
            _ => Err(CoreError::NotFound),
        }
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
            .web_state_put_kind(kind, key, subject, data, expires_at, self.app.clock.now())
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

    async fn swap_state(
        &self,
        kind: StateKind,
        key: &str,
        expected: &str,
        data: &str,
    ) -> Result<bool, CoreError> {
        self.app
            .store
            .web_state_replace_if(kind.as_str(), key, expected, data, self.app.clock.now())
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
                crate::audit::Action::StaffSignout,
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

impl Records for WebCore {
    async fn history(&self, by: &Staff, query: &HistoryQuery) -> Result<HistoryPage, CoreError> {
        self.history_impl(by, query).await
    }

    async fn session_detail(&self, by: &Staff, id: &str) -> Result<SessionDetail, CoreError> {
        self.detail_impl(by, id).await
    }

    async fn playback_index(
        &self,
        by: &Staff,
        id: &str,
        recording: i64,
        idle: Option<f64>,
    ) -> Result<String, CoreError> {
        self.index_impl(by, id, recording, idle).await
    }

    async fn playback_segment(
        &self,
        by: &Staff,
        id: &str,
        recording: i64,
        segment: usize,
        idle: Option<f64>,
    ) -> Result<String, CoreError> {
        self.segment_impl(by, id, recording, segment, idle).await
    }

    async fn transcript_search(
        &self,
        by: &Staff,
        id: &str,
        text: &str,
        idle: Option<f64>,
    ) -> Result<Vec<TranscriptHit>, CoreError> {
        self.search_impl(by, id, text, idle).await
    }

    async fn watch(&self, by: &Staff, id: &str) -> Result<LiveStream, CoreError> {
        self.watch_impl(by, id).await
    }

    async fn watchable(&self, by: &Staff, id: &str) -> Result<(), CoreError> {
        self.watchable_impl(by, id).await
    }

    async fn evidence_bundle(&self, by: &Staff, id: &str) -> Result<EvidenceDownload, CoreError> {
        use crate::evidence::bundle::BundleError;
        use futures::StreamExt as _;
        let session = self.app.store.session(id).await.map_err(not_found_or)?;
        if session.ended_at.is_none() {
            return Err(CoreError::Conflict(format!(
                "session {id} is still running: its bundle can be made once it has ended"
            )));
        }
        // Taken before the bundle starts, given back once both its writer has stopped (a browser gone
        // before the first chunk stops nothing: proving runs on) and its download is done or dropped
        // (the chunks written ahead are still sent).
        let turn = std::sync::Arc::new(self.bundles.take(&by.name)?);
        let started = crate::evidence::bundle::export_stream(
            self.app.store.clone(),
            self.app.config.recording.clone(),
            id.to_owned(),
            current(&self.app, by).await?.0.actor(),
            "web".to_owned(),
            self.app.clock.now(),
            turn.clone(),
        )
        .await;
        let (first, mut rest) = match started {
            Ok(s) => s,
            Err(BundleError::Store(StoreError::NotFound { .. })) => {
                return Err(CoreError::NotFound);
            }
            // What an auditor must be told: a recording or the chain's word on it does not hold.
            Err(e @ (BundleError::Prove(_) | BundleError::Chain(_))) => {
                return Err(CoreError::Conflict(e.to_string()));
            }
            Err(e) => {
                tracing::error!(session = %id, error = ?e, "web: cannot make an evidence bundle");
                return Err(CoreError::Internal);
            }
        };
        let id = id.to_owned();
        let rest = futures::stream::poll_fn(move |cx| rest.poll_recv(cx)).map(move |chunk| {
            let _held = &turn;
            chunk.map_err(|e| {
                tracing::error!(session = %id, error = ?e, "web: an evidence bundle broke off; the download is cut short");
                std::io::Error::other("the evidence bundle broke off")
            })
        });
        Ok(EvidenceDownload {
            file_name: format!("session-{}.tar", session.id),
            chunks: Box::pin(futures::stream::once(async move { Ok(first) }).chain(rest)),
        })
    }
}

/// Files larger than this are not hashed for a history list (the session's page hashes them).
const LIST_HASH_LIMIT: u64 = 64 * 1024 * 1024;
/// Sessions per history page.
const PAGE: i64 = 50;
/// The audit actions about a session that its page lists, besides who looked ([`SESSION_VIEWS`]): its
/// life, what was held, exported or deleted. The first [`SESSION_LIFE_SHOWN`] are shown.
const SESSION_LIFE: [&str; 13] = {
    use crate::audit::Action as A;
    [
        A::SessionStart.as_str(),
        A::SessionEnd.as_str(),
        A::SessionTerminate.as_str(),
        A::TunnelOpen.as_str(),
        A::TunnelClose.as_str(),
        A::JumpOpen.as_str(),
        A::JumpClose.as_str(),
        A::RecordingRecovered.as_str(),
        A::RecordingFailed.as_str(),
        A::RecordingDeleted.as_str(),
        A::SessionHold.as_str(),
        A::SessionRelease.as_str(),
        A::BudgetExceeded.as_str(),
    ]
};
const SESSION_LIFE_SHOWN: i64 = 500;
/// Who looked at a session or took a copy: anyone who may open the page adds one, so only the newest
/// [`SESSION_VIEWS_SHOWN`] are listed, and never at the cost of the events of [`SESSION_LIFE`] (a flood
/// of views pushed a later hold or deletion off the page).
const SESSION_VIEWS: [&str; 5] = crate::evidence::LOOKS;
const SESSION_VIEWS_SHOWN: i64 = 200;

fn status(r: &RecordingRow, integrity: &str, detail: String) -> RecordingStatus {
    RecordingStatus {
        id: r.id,
        format: r.format.clone(),
        size: r.size,
        integrity: integrity.to_owned(),
        detail,
    }
}

fn format_of(r: &RecordingRow) -> Option<Format> {
    match r.format.as_str() {
        RecordingFormat::ASCIICAST => Some(Format::Asciicast),
        RecordingFormat::EXEC_STREAM => Some(Format::Exec),
        _ => None,
    }
}

fn idle_secs(idle: Option<f64>) -> String {
    idle.map(|i| format!("{i}")).unwrap_or_default()
}

impl WebCore {
    /// What the audit chain and the file say about recording `r` (the chain decides: `ev`), in the words
    /// of `evidence::Integrity` (the CLI's and the bundle's check, `evidence::prove`). The file is hashed
    /// unless it was proved intact before and has not changed since, or it is larger than `hash_limit`
    /// (then it is `unchecked`).
    async fn integrity(
        &self,
        r: &RecordingRow,
        ev: &Evidence,
        hash_limit: Option<u64>,
    ) -> RecordingStatus {
        use crate::evidence::Integrity;
        enum Checked {
            Proved(Integrity, Option<FileStamp>),
            /// Vouched for, the row agrees, the file is there, and too large to hash for a list.
            Unchecked {
                seq: i64,
                sha256: String,
            },
        }
        let dir = self.app.config.recording.dir.clone();
        let proven = self.app.proven.clone();
        let (row, evidence) = (r.clone(), ev.clone());
        // Held by the check itself: a request dropped while its file is read leaves the turn taken until
        // the read ends (the closure runs to the end regardless).
        let Ok(turn) = self.turns.file_checks.clone().acquire_owned().await else {
            return status(r, "unchecked", "the node is shutting down".into());
        };
        let checked = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let stamp_now = || {
                open_recording(&dir, &row.path)
                    .ok()
                    .and_then(|o| o.file.metadata().ok())
                    .as_ref()
                    .and_then(FileStamp::of)
            };
            let mut before = None;
            if let Evidence::Vouched(v) = &evidence
                && v.deleted.is_none()
                && row.deleted_at.is_none()
                && row.sha256.as_deref() == Some(v.sha256.as_str())
            {
                before = stamp_now();
                if let Some(stamp) = before {
                    if proven.vouches(row.id, stamp, &v.sha256) {
                        let intact = Integrity::Intact {
                            seq: v.seq,
                            sha256: v.sha256.clone(),
                        };
                        return Checked::Proved(intact, None);
                    }
                    if hash_limit.is_some_and(|limit| stamp.size() > limit) {
                        return Checked::Unchecked {
                            seq: v.seq,
                            sha256: v.sha256.clone(),
                        };
                    }
                }
            }
            let proved = crate::evidence::prove(&dir, &row, &evidence);
            // Remembered only when the file was the same before and after it was hashed.
            let after = proved
                .as_ref()
                .ok()
                .and_then(|p| p.file.metadata().ok())
                .as_ref()
                .and_then(FileStamp::of);
            let stamp = after.filter(|s| before.is_none_or(|b| b == *s));
            Checked::Proved(Integrity::of(&proved), stamp)
        })
        .await;
        let (integrity, key) = match checked {
            Ok(Checked::Proved(i, key)) => (i, key),
            Ok(Checked::Unchecked { seq, sha256 }) => {
                return status(
                    r,
                    "unchecked",
                    format!(
                        "audit event {seq} vouches for sha256 {sha256}; the file is large and was not re-read for this list (its page checks it)"
                    ),
                );
            }
            Err(_) => return status(r, "unchecked", "the check failed".into()),
        };
        let detail = match &integrity {
            Integrity::Intact { seq, sha256 } => {
                if let Some(stamp) = key {
                    self.app.proven.remember(r.id, stamp, sha256);
                }
                if ev.voucher().is_some_and(crate::evidence::Voucher::recovered) {
                    format!(
                        "sha256 {sha256}, as audit event {seq} vouches; recovered: its writer stopped (a crash) and a node's sweep digested the file as it found it then, not as the recorder wrote it"
                    )
                } else {
                    format!("sha256 {sha256}, as audit event {seq} vouches")
                }
            }
            Integrity::Altered(why) | Integrity::Missing(why) => why.clone(),
            Integrity::Deleted { seq, at } => format!(
                "deleted by retention on {} (audit event {seq}); its digest and audit events remain",
                crate::clock::format_time(*at)
            ),
            Integrity::Live => "the session is running; its recording has no digest yet".into(),
            Integrity::NotDigested => "no audit event vouches for a digest of it (its writer failed, or stopped before finishing it); nothing proves it intact".into(),
        };
        status(r, integrity.word(), detail)
    }

    async fn item(
        &self,
        mut h: HistoryRow,
        hash_limit: Option<u64>,
    ) -> Result<HistoryItem, CoreError> {
        let evidence = crate::evidence::evidence(&self.app.store, &mut h.session)
            .await
            .map_err(internal)?;
        self.item_with(h, &evidence, hash_limit).await
    }

    /// [`WebCore::item`] with what the chain says about its recordings already read (`evidence` of
    /// `h.session`).
    async fn item_with(
        &self,
        h: HistoryRow,
        evidence: &[crate::evidence::Evidence],
        hash_limit: Option<u64>,
    ) -> Result<HistoryItem, CoreError> {
        let mut recordings = Vec::with_capacity(h.session.recordings.len());
        for (r, ev) in h.session.recordings.iter().zip(evidence) {
            recordings.push(self.integrity(r, ev, hash_limit).await);
        }
        let s = h.session;
        let now = self.now();
        Ok(HistoryItem {
            duration: match s.ended_at {
                Some(end) => crate::history::duration(end - s.started_at),
                None => format!("live, {}", crate::history::duration(now - s.started_at)),
            },
            started: format_time(s.started_at),
            id: s.id,
            vendor: s.vendor,
            org: h.org,
            asset: s.asset,
            zone: h.zone,
            kind: s.kind,
            service: s.service,
            detail: s.detail,
            client_addr: s.client_addr,
            started_at: s.started_at,
            ended_at: s.ended_at,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            grant_id: s.grant_id,
            grant_reason: h.grant_reason,
            request_id: h.request_id,
            request_reason: h.request_reason,
            end_cause: s.end_cause,
            end_reason: s.end_reason,
            node: h.node,
            recordings,
        })
    }

    async fn audit_view(
        &self,
        by: &Staff,
        action: crate::audit::Action,
        subject: String,
        detail: serde_json::Value,
    ) -> Result<(), CoreError> {
        // Who looks is read again from the store: a disabled account sees nothing more.
        let (by, _) = current(&self.app, by).await?;
        let mut detail = detail;
        detail["method"] = json!(by.method);
        let now = self.now();
        let mut tx = self.app.store.begin().await.map_err(internal)?;
        tx.audit(AuditEvent::new(by.actor(), action, subject, detail), now)
            .await
            .map_err(internal)?;
        tx.commit(action.as_str()).await.map_err(internal)
    }

    /// Whether the audit events after `from` up to `to` are all views ([`Action::is_view`]); not
    /// when there are many of them or they cannot be read (then a page had better refresh).
    async fn only_views(&self, from: i64, to: i64) -> bool {
        const MOST: i64 = 64;
        if to - from > MOST {
            return false;
        }
        self.app
            .store
            .audit_actions_after(from, to - from)
            .await
            .is_ok_and(|actions| {
                i64::try_from(actions.len()) == Ok(to - from)
                    && actions
                        .iter()
                        .all(|a| crate::audit::Action::parse(a).is_some_and(|a| a.is_view()))
            })
    }

    /// A session and its recording `rid`, with what the chain says about it.
    async fn recording_of(
        &self,
        id: &str,
        rid: i64,
    ) -> Result<(SessionRow, RecordingRow, Evidence), CoreError> {
        let mut session = match self.app.store.session(id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Err(CoreError::NotFound),
            Err(e) => return Err(internal(e)),
        };
        let evidence = crate::evidence::evidence(&self.app.store, &mut session)
            .await
            .map_err(internal)?;
        let (r, ev) = session
            .recordings
            .iter()
            .zip(evidence)
            .find(|(r, _)| r.id == rid)
            .map(|(r, e)| (r.clone(), e))
            .ok_or(CoreError::NotFound)?;
        Ok((session, r, ev))
    }

    /// The playback index of a recording the chain vouches for, checked against its MAC; built now when
    /// the indexer has not got to it yet. With `rebuild_stale`, one an older build made
    /// ([`playback::INDEX_VERSION`]) is built again first: only the player's `play.json` asks, once it
    /// found the file here and intact (a node without the file must not drop another node's index and
    /// text, and a search must not re-index on its request path); segments and searches use the index
    /// as it is.
    async fn playback(
        &self,
        r: &RecordingRow,
        ev: &Evidence,
        rebuild_stale: bool,
    ) -> Result<(Index, String, tokio::sync::OwnedSemaphorePermit), CoreError> {
        let Some(v) = ev.voucher() else {
            return Err(CoreError::Conflict(
                "this recording has no digest the audit log vouches for, so it is not played"
                    .into(),
            ));
        };
        // Held by the caller as long as it holds the index.
        let turn = self
            .turns
            .index_loads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::Internal)?;
        let mut rebuilt = false;
        loop {
            let mut row = self
                .app
                .store
                .recording_index(r.id)
                .await
                .map_err(internal)?;
            if row.as_ref().is_none_or(|i| i.status == "indexing") {
                let ran = self.index_for_view(r).await?;
                row = self
                    .app
                    .store
                    .recording_index(r.id)
                    .await
                    .map_err(internal)?;
                if row.is_none() && !ran {
                    return Err(being_prepared());
                }
            }
            // A pass that ran and left no row found no file here.
            let Some(row) = row else {
                return Err(CoreError::Conflict(
                    "this recording is not on this node: open the page on the node that recorded it"
                        .into(),
                ));
            };
            return match (row.status.as_str(), &row.playback, &row.mac) {
                ("indexed", Some(json), Some(mac)) => {
                    // Checked and parsed off the async threads (tens of MB for a hostile recording).
                    let (indexer, rid, sha) = (self.indexer.clone(), r.id, v.sha256.clone());
                    let (stored, sealed) = (json.clone(), mac.clone());
                    let index = tokio::task::spawn_blocking(move || {
                        indexer.open_playback(rid, &sha, &stored, &sealed)
                    })
                    .await
                    .map_err(|_| CoreError::Internal)?
                    .ok_or_else(|| {
                            CoreError::Conflict(
                                "the player's index of this recording does not match the digest the audit log vouches for (ALTERED in the database): it is not played".into(),
                            )
                        })?;
                    if rebuild_stale && index.version < playback::INDEX_VERSION && !rebuilt {
                        // Sealed, so not altered, but cut by an older build's rules: built again, once.
                        tracing::info!(
                            recording = r.id,
                            version = index.version,
                            "building again a playback index an older build made"
                        );
                        self.app
                            .store
                            .reopen_recording_index(r.id, mac)
                            .await
                            .map_err(internal)?;
                        rebuilt = true;
                        continue;
                    }
                    Ok((index, v.sha256.clone(), turn))
                }
                ("failed", ..) => Err(CoreError::Conflict(format!(
                    "this recording cannot be played: {}",
                    row.note.as_deref().unwrap_or("indexing failed")
                ))),
                _ => Err(being_prepared()),
            };
        }
    }
}

impl WebCore {
    /// Indexes recording `r` for a viewer who opened it before the background indexer got to it. The
    /// pass runs in a task of its own, not in the request: a viewer who leaves, or a request cut by the
    /// stall rule, does not stop it half-way with its claim held, and it never takes over a claim a
    /// running indexer keeps renewing. One such pass at a time per node ([`VIEW_INDEXING`]); past that,
    /// or past [`VIEW_INDEX_WAIT`], the page says the recording is being prepared.
    /// Whether a pass ran to its end (`false`: one is running, or waits for the background indexer).
    async fn index_for_view(&self, r: &RecordingRow) -> Result<bool, CoreError> {
        let Ok(turn) = self.turns.view_indexing.clone().try_acquire_owned() else {
            self.app.recording_closed.notify_one();
            return Ok(false);
        };
        let (indexer, row, now) = (self.indexer.clone(), r.clone(), self.now());
        let pass = tokio::spawn(async move {
            let _turn = turn;
            indexer.index_recording(&row, now).await
        });
        match tokio::time::timeout(VIEW_INDEX_WAIT, pass).await {
            Ok(Ok(Ok(_))) => Ok(true),
            Err(_) => Ok(false),
            Ok(Ok(Err(e))) => {
                tracing::error!(recording = r.id, error = %e, "indexing a recording for the player");
                Err(CoreError::Internal)
            }
            Ok(Err(e)) => {
                tracing::error!(recording = r.id, error = %e, "the indexing task of a view failed");
                Err(CoreError::Internal)
            }
        }
    }
}

fn being_prepared() -> CoreError {
    CoreError::Conflict(
        "this recording is being prepared for playing; try again in a moment".into(),
    )
}

fn not_found_or(e: StoreError) -> CoreError {
    match e {
        StoreError::NotFound { .. } => CoreError::NotFound,
        e => internal(e),
    }
}

impl WebCore {
    /// The sessions running now, for the live lists (not audited here: the callers say who looked).
    async fn open_session_views(&self) -> Result<Vec<SessionView>, CoreError> {
        Ok(self
            .app
            .store
            .open_sessions()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|s| self.session_view(s))
            .collect())
    }

    /// Who looked at a list of sessions (`which`: the live list, a vendor's beside a request) is audited
    /// as a search (`recording.search`, subject `sessions`), once per list and staff member every
    /// `QUERY_AUDIT_EVERY`, as the history's lists are, not at each live refresh.
    async fn list_viewed(
        &self,
        by: &Staff,
        which: serde_json::Value,
        found: usize,
    ) -> Result<(), CoreError> {
        let key = which.to_string();
        if !self.query_due(by, &key) {
            return Ok(());
        }
        // The shape of the history's list audits (`text`, `filters`, `found`), with which list.
        let mut detail = json!({"text": null, "filters": {}, "found": found});
        if let Some(vendor) = which.get("vendor") {
            detail["filters"]["vendor"] = vendor.clone();
        }
        detail["list"] = which["list"].clone();
        self.audit_view(
            by,
            crate::audit::Action::RecordingSearch,
            "sessions".into(),
            detail,
        )
        .await?;
        self.query_audited(by, &key);
        Ok(())
    }

    /// Whether `by`'s history query `key` is due to be audited (not audited in the last
    /// [`QUERY_AUDIT_EVERY`] on this node).
    fn query_due(&self, by: &Staff, key: &str) -> bool {
        let now = self.now();
        self.queries_audited.lock().map_or(true, |seen| {
            seen.get(&(by.name.clone(), key.to_owned()))
                .is_none_or(|at| now.saturating_sub(*at) >= QUERY_AUDIT_EVERY)
        })
    }

    /// `by`'s history query `key` was audited now (only once its audit committed: a failed write leaves
    /// it due). The map is bounded: past 10,000 queries the old ones go, and past that all.
    fn query_audited(&self, by: &Staff, key: &str) {
        let now = self.now();
        if let Ok(mut seen) = self.queries_audited.lock() {
            if seen.len() >= 10_000 {
                seen.retain(|_, at| now - *at < QUERY_AUDIT_EVERY);
                if seen.len() >= 10_000 {
                    seen.clear();
                }
            }
            seen.insert((by.name.clone(), key.to_owned()), now);
        }
    }

    pub(crate) async fn history_impl(
        &self,
        by: &Staff,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, CoreError> {
        let filter = crate::history::filter(q).map_err(CoreError::Invalid)?;
        let page = crate::history::page(q).map_err(CoreError::Invalid)?;
        let rows = self
            .app
            .store
            .session_history(&filter, PAGE + 1, (i64::from(page) - 1) * PAGE)
            .await
            .map_err(internal)?;
        let more = rows.len() as i64 > PAGE;
        let mut sessions = Vec::with_capacity(rows.len());
        for h in rows.into_iter().take(PAGE as usize) {
            sessions.push(self.item(h, Some(LIST_HASH_LIMIT)).await?);
        }
        let filters: serde_json::Map<String, serde_json::Value> = q
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        if let Some(text) = q.text.as_deref().filter(|t| !t.trim().is_empty()) {
            self.audit_view(
                by,
                crate::audit::Action::RecordingSearch,
                "sessions".into(),
                json!({"text": text, "filters": filters, "page": page, "found": sessions.len()}),
            )
            .await?;
        } else {
            // Who listed which sessions is audited too (the list shows commands and addresses):
            // once per query and staff member every QUERY_AUDIT_EVERY, not at each live refresh.
            let key = json!([filters, page]).to_string();
            if self.query_due(by, &key) {
                self.audit_view(
                    by,
                    crate::audit::Action::RecordingSearch,
                    "sessions".into(),
                    json!({"text": null, "filters": filters, "page": page, "found": sessions.len()}),
                )
                .await?;
                self.query_audited(by, &key);
            }
        }
        Ok(HistoryPage {
            sessions,
            page,
            more,
        })
    }
}

impl WebCore {
    async fn detail_impl(&self, by: &Staff, id: &str) -> Result<SessionDetail, CoreError> {
        let filter = HistoryFilter {
            id: Some(id.to_owned()),
            ..Default::default()
        };
        let mut row = self
            .app
            .store
            .session_history(&filter, 1, 0)
            .await
            .map_err(internal)?
            .into_iter()
            .next()
            .ok_or(CoreError::NotFound)?;
        // The digests the chain vouches for, read once: the statuses, and a transfer log is shown
        // only as read with that digest.
        let evidence = crate::evidence::evidence(&self.app.store, &mut row.session)
            .await
            .map_err(internal)?;
        let session = row.session.clone();
        let item = self.item_with(row, &evidence, None).await?;
        let mut playable = None;
        let mut play_note = None;
        let mut transfers = None;
        let mut transfers_more = 0;
        for ((r, st), ev) in session
            .recordings
            .iter()
            .zip(&item.recordings)
            .zip(&evidence)
        {
            match (format_of(r), st.integrity.as_str()) {
                (Some(_), "intact") if playable.is_none() => playable = Some(r.id),
                (Some(_), other) if playable.is_none() => {
                    play_note = Some(match other {
                        "live" => "The session is running: its recording plays once it has ended; watch it live meanwhile.".to_owned(),
                        _ => format!("The recording is not played: {} ({}).", st.integrity, st.detail),
                    });
                }
                (None, "intact") => {
                    let dir = self.app.config.recording.dir.clone();
                    let path = r.path.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let opened = open_recording(&dir, &path).map_err(|e| e.to_string())?;
                        playback::read_transfers(&opened.file).map_err(|e| e.to_string())
                    })
                    .await;
                    let vouched = ev.voucher().map(|v| v.sha256.as_str());
                    match read {
                        // Checked intact above, but read again here: shown only if what was read is
                        // what the chain vouches for (the file cannot be swapped in between).
                        Ok(Ok((_, _, read_digest))) if vouched != Some(read_digest.as_str()) => {
                            play_note = Some(
                                "The transfer log is not shown: it changed while it was read (its digest is not the one the audit log vouches for); reload the page."
                                    .to_owned(),
                            );
                        }
                        Ok(Ok((lines, more, _))) => {
                            const SHOWN: usize = 2000;
                            transfers_more = more + lines.len().saturating_sub(SHOWN);
                            transfers = Some(
                                transfers_shown(lines)
                                    .into_iter()
                                    .take(SHOWN)
                                    .map(transfer_view)
                                    .collect(),
                            );
                        }
                        Ok(Err(why)) => {
                            play_note = Some(format!("The transfer log cannot be read: {why}"))
                        }
                        Err(_) => return Err(CoreError::Internal),
                    }
                }
                (None, _) => {
                    play_note = Some(format!(
                        "The transfer log is not shown: {} ({}).",
                        st.integrity, st.detail
                    ));
                }
                _ => {}
            }
        }
        let mut inner = Vec::new();
        if session.kind == "jump" {
            let to = session.ended_at.unwrap_or_else(|| self.now());
            for s in self
                .app
                .store
                .sessions_within(&session.vendor, &session.asset, session.started_at, to, 100)
                .await
                .map_err(internal)?
            {
                let f = HistoryFilter {
                    id: Some(s.id.clone()),
                    ..Default::default()
                };
                if let Some(h) = self
                    .app
                    .store
                    .session_history(&f, 1, 0)
                    .await
                    .map_err(internal)?
                    .into_iter()
                    .next()
                {
                    inner.push(self.item(h, Some(LIST_HASH_LIMIT)).await?);
                }
            }
        }
        // Every opening of a session's page is audited: a tunnel's or jump's connection record is its
        // record (no recordings), and who looked at it is asked as for any other.
        self.audit_view(
            by,
            crate::audit::Action::RecordingView,
            format!("session:{id}"),
            json!({"what": "page", "recordings": session.recordings.iter().map(|r| r.id).collect::<Vec<_>>()}),
        )
        .await?;
        let subject = format!("session:{id}");
        let store = &self.app.store;
        let mut events = store
            .audit_events_about(&subject, &SESSION_LIFE, SESSION_LIFE_SHOWN + 1)
            .await
            .map_err(internal)?;
        let mut views = store
            .latest_audit_events_about(&subject, &SESSION_VIEWS, SESSION_VIEWS_SHOWN + 1)
            .await
            .map_err(internal)?;
        let mut left_out = Vec::new();
        if events.len() > SESSION_LIFE_SHOWN as usize {
            events.truncate(SESSION_LIFE_SHOWN as usize);
            left_out.push(format!(
                "only its first {SESSION_LIFE_SHOWN} events besides views are shown"
            ));
        }
        if views.len() > SESSION_VIEWS_SHOWN as usize {
            views.remove(0);
            left_out.push(format!(
                "only the newest {SESSION_VIEWS_SHOWN} views, searches and exports are shown"
            ));
        }
        let audit_note = (!left_out.is_empty()).then(|| {
            format!(
                "Not all of this session's audit events fit here: {}. `chaperone audit export` has them all.",
                left_out.join("; ")
            )
        });
        events.extend(views);
        events.sort_by_key(|e| e.seq);
        let audit = events
            .into_iter()
            .map(|a| AuditView {
                seq: a.seq,
                at: format_time(a.at),
                actor: a.actor,
                action: a.action,
                detail: a.detail,
            })
            .collect();
        Ok(SessionDetail {
            hold: session
                .hold
                .as_ref()
                .map(|h| chaperone_web_approval::HoldView {
                    at: format_time(h.at),
                    by: h.by.clone(),
                    reason: h.reason.clone(),
                }),
            live_here: session.ended_at.is_none() && self.live.tap(id).is_some(),
            session: item,
            playable,
            play_note,
            transfers,
            transfers_more,
            inner,
            audit,
            audit_note,
        })
    }

    async fn index_impl(
        &self,
        by: &Staff,
        id: &str,
        rid: i64,
        idle: Option<f64>,
    ) -> Result<String, CoreError> {
        let (_, r, ev) = self.recording_of(id, rid).await?;
        let st = self.integrity(&r, &ev, None).await;
        if st.integrity != "intact" {
            return Err(CoreError::Conflict(format!(
                "the recording is not played: {} ({})",
                st.integrity, st.detail
            )));
        }
        let (index, _, _turn) = self.playback(&r, &ev, true).await?;
        let map = IdleMap::new(&index.gaps, idle);
        let idle_q = idle_secs(idle);
        let segments: Vec<serde_json::Value> = index
            .segments
            .iter()
            .enumerate()
            .map(|(n, s)| {
                json!({"start": map.map(s.start),
                       "url": format!("/sessions/{id}/recordings/{rid}/segments/{n}?idle={idle_q}")})
            })
            .collect();
        let markers: Vec<serde_json::Value> = index
            .markers
            .iter()
            .map(|(t, label)| json!([map.map(*t), shown(label)]))
            .collect();
        // Beside the player's `[time, label]` pairs: who each label speaks for, read from its prefix by
        // the one rule in `chaperone_recorder::marker` (a device-shown command line never reads as a
        // notice; labels of recordings, or indexes, made before the rule are unattributed).
        let marker_kinds: Vec<&str> = index
            .markers
            .iter()
            .map(|(_, label)| {
                chaperone_recorder::MarkerKind::of_recording(index.markers_attributed, label)
                    .as_str()
            })
            .collect();
        self.audit_view(
            by,
            crate::audit::Action::RecordingView,
            format!("session:{id}"),
            json!({"what": "play", "recording": rid}),
        )
        .await?;
        Ok(json!({
            "version": 1,
            "term": {"cols": index.cols, "rows": index.rows},
            "duration": map.map(index.duration),
            "markers": markers,
            "marker_kinds": marker_kinds,
            "segments": segments,
            // Costly terminal operations the index did not emulate (`chaperone_recorder::emulator`):
            // the page says so; the player is given such a recording's segments held to the same budget.
            "refused": index.refused,
            // Seek points that start from a blank screen (`playback::MAX_INITS_BYTES`).
            "blank_inits": index.blank_inits,
            // Window changes made later than recorded (`playback::Index::resizes_delayed`).
            "resizes_delayed": index.resizes_delayed,
        })
        .to_string())
    }

    async fn segment_impl(
        &self,
        by: &Staff,
        id: &str,
        rid: i64,
        n: usize,
        idle: Option<f64>,
    ) -> Result<String, CoreError> {
        // Who reads is read again (a disabled account sees nothing more), and reads only what their
        // audited view of this recording opened.
        let (viewer, _) = current(&self.app, by).await?;
        let since = self.now() - chaperone_web_approval::VIEW_LEASE_SECS;
        let viewed = self
            .app
            .store
            .audit_events_by(
                &format!("session:{id}"),
                crate::audit::Action::RecordingView.as_str(),
                &viewer.actor(),
                since,
            )
            .await
            .map_err(internal)?
            .iter()
            .any(|e| {
                serde_json::from_str::<serde_json::Value>(&e.detail)
                    .is_ok_and(|d| d["what"] == "play" && d["recording"].as_i64() == Some(rid))
            });
        if !viewed {
            return Err(CoreError::Forbidden(
                "open the recording in the player first: every viewing is audited".into(),
            ));
        }
        let (_, r, ev) = self.recording_of(id, rid).await?;
        if ev
            .voucher()
            .is_none_or(|v| r.sha256.as_deref() != Some(v.sha256.as_str()))
        {
            return Err(CoreError::Conflict(
                "the recording is not vouched for as it is".into(),
            ));
        }
        let format = format_of(&r).ok_or(CoreError::NotFound)?;
        let (index, _, _turn) = self.playback(&r, &ev, false).await?;
        let seg = index.segments.get(n).cloned().ok_or(CoreError::NotFound)?;
        let last = n + 1 == index.segments.len();
        let dir = self.app.config.recording.dir.clone();
        let path = r.path.clone();
        let header_len = index.header_len;
        let header_sha = index.header_sha256.clone();
        let seg_start = seg.start;
        let seg_offset = seg.offset;
        let seg_len = seg.len;
        // The segment's bytes are hashed as its events are read from them, not held: what is kept is the
        // events (an exec's input frames, maybe most of the bytes, are read past). They are used only if
        // both digests hold.
        type SegmentRead = Result<
            (
                String,
                String,
                chaperone_recorder::Result<Vec<playback::PlayEvent>>,
            ),
            String,
        >;
        let read = tokio::task::spawn_blocking(move || -> SegmentRead {
            use chaperone_recorder::Sha256Reader;
            use std::io::{Read as _, Seek as _};
            let mut f = open_recording(&dir, &path).map_err(|e| e.to_string())?.file;
            let mut header = vec![0; usize::try_from(header_len).map_err(|e| e.to_string())?];
            f.read_exact(&mut header).map_err(|e| e.to_string())?;
            let header_digest = Sha256Reader::new(&header[..])
                .finish_hex()
                .map_err(|e| e.to_string())?;
            f.seek(std::io::SeekFrom::Start(seg_offset))
                .map_err(|e| e.to_string())?;
            let mut body = Sha256Reader::new(f.take(seg_len));
            let events = playback::segment_events_from(format, header.chain(&mut body), seg_start);
            let body_digest = body.finish_hex().map_err(|e| e.to_string())?;
            Ok((header_digest, body_digest, events))
        })
        .await
        .map_err(|_| CoreError::Internal)?;
        let (header_digest, body_digest, events) = read
            .map_err(|why| CoreError::Conflict(format!("the recording cannot be read: {why}")))?;
        if header_digest != header_sha || body_digest != seg.sha256 {
            return Err(CoreError::Conflict(
                "the recording was ALTERED since it was checked: this part does not match its digest".into(),
            ));
        }
        let events = events
            .map_err(|e| CoreError::Conflict(format!("the recording cannot be read: {e}")))?;
        // Output or window changes that cost an emulator more than they pay for are given to the
        // browser's emulator held to the same budget (its work, off the async threads).
        let events = if index.bounded() {
            let seg = seg.clone();
            tokio::task::spawn_blocking(move || playback::bounded_events(events, &seg))
                .await
                .map_err(|_| CoreError::Internal)?
        } else {
            events
        };
        let map = IdleMap::new(&index.gaps, idle);
        let mut out: Vec<serde_json::Value> = events
            .into_iter()
            .map(|e| json!([map.map(e.time), e.code.to_string(), shown(&e.data)]))
            .collect();
        if last {
            out.push(json!([map.map(index.duration), "o", ""]));
        }
        Ok(json!({
            "snapshot": {"cols": seg.cols, "rows": seg.rows, "init": shown(&seg.init)},
            "events": out,
        })
        .to_string())
    }

    async fn search_impl(
        &self,
        by: &Staff,
        id: &str,
        text: &str,
        idle: Option<f64>,
    ) -> Result<Vec<TranscriptHit>, CoreError> {
        if text.chars().count() > crate::history::MAX_FILTER {
            return Err(CoreError::Invalid(format!(
                "the text to find is longer than {} characters",
                crate::history::MAX_FILTER
            )));
        }
        let words = chaperone_recorder::transcript::words(text);
        if words.is_empty() {
            return Err(CoreError::Invalid(
                "type a word to find (letters or digits)".into(),
            ));
        }
        let mut session = self.app.store.session(id).await.map_err(not_found_or)?;
        let chunks = self
            .app
            .store
            .session_text_matches(id, &words, 200)
            .await
            .map_err(internal)?;
        // What the chain says about the recordings, read once (the idle map of each needs it).
        let evidence = if chunks.is_empty() {
            Vec::new()
        } else {
            crate::evidence::evidence(&self.app.store, &mut session)
                .await
                .map_err(internal)?
        };
        let query: Vec<&str> = words.split(' ').collect();
        let mut maps: HashMap<i64, IdleMap> = HashMap::new();
        let mut hits = Vec::new();
        for c in chunks {
            // Text of a recording the audit log does not vouch for (now) is not shown.
            let vouched = session
                .recordings
                .iter()
                .zip(&evidence)
                .any(|(r, ev)| r.id == c.recording_id && ev.voucher().is_some());
            if !vouched {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = maps.entry(c.recording_id) {
                let found = session
                    .recordings
                    .iter()
                    .zip(&evidence)
                    .find(|(r, _)| r.id == c.recording_id);
                let map = match found {
                    Some((r, ev)) if format_of(r).is_some() => self
                        .playback(r, ev, false)
                        .await
                        .map(|(i, _, _)| IdleMap::new(&i.gaps, idle))
                        .unwrap_or_else(|_| IdleMap::new(&[], None)),
                    _ => IdleMap::new(&[], None),
                };
                slot.insert(map);
            }
            let map = &maps[&c.recording_id];
            let mut found = false;
            for (line, ms) in c.lines.iter().zip(&c.times) {
                if chaperone_recorder::transcript::line_matches(line, &query) {
                    found = true;
                    hits.push(TranscriptHit {
                        recording: c.recording_id,
                        time: map.map(*ms as f64 / 1000.0),
                        line: shown(line).into_owned(),
                    });
                }
            }
            // The phrase runs across two lines: the chunk's first line that has its first word.
            if !found
                && let Some((line, ms)) = c.lines.iter().zip(&c.times).find(|(l, _)| {
                    chaperone_recorder::transcript::words(l)
                        .split(' ')
                        .any(|w| w == query[0])
                })
            {
                hits.push(TranscriptHit {
                    recording: c.recording_id,
                    time: map.map(*ms as f64 / 1000.0),
                    line: shown(line).into_owned(),
                });
            }
            if hits.len() >= 200 {
                break;
            }
        }
        self.audit_view(
            by,
            crate::audit::Action::RecordingSearch,
            format!("session:{id}"),
            json!({"text": text, "found": hits.len()}),
        )
        .await?;
        Ok(hits)
    }

    /// The live tap of session `id` on this node, or why there is none to watch here.
    async fn live_tap(&self, id: &str) -> Result<crate::live::tap::Tap, CoreError> {
        if let Some(tap) = self.live.tap(id) {
            return Ok(tap);
        }
        let node = self.app.store.session_node(id).await.map_err(internal)?;
        let session = self.app.store.session(id).await.map_err(not_found_or)?;
        if session.ended_at.is_some() {
            return Err(CoreError::Conflict(format!("session {id} has ended")));
        }
        Err(CoreError::Conflict(format!(
            "session {id} runs on node {}: its live view is served by that node",
            node.as_deref().unwrap_or("-")
        )))
    }

    /// Whether `by` would be shown session `id` live now ([`Self::watch_impl`]'s refusals, nothing
    /// opened or audited): the page asks first, since a refused stream of server-sent events can only
    /// show "loading".
    async fn watchable_impl(&self, by: &Staff, id: &str) -> Result<(), CoreError> {
        // Who asks is read again, as for the view itself (`audit_view`).
        current(&self.app, by).await?;
        self.live_tap(id).await?;
        self.live
            .views()
            .room_for(&by.name)
            .map_err(|e| view_refused(id, e))
    }

    async fn watch_impl(&self, by: &Staff, id: &str) -> Result<LiveStream, CoreError> {
        let tap = self.live_tap(id).await?;
        // Given as the playback index's emulator gives it, on a thread of the view's own
        // (`live::view`): the page's emulator does no more work than the session pays for.
        let mut shown_events = self
            .live
            .views()
            .open(&tap, &by.name)
            .map_err(|e| view_refused(id, e))?;
        drop(tap);
        // Audited once the view is open (a refused one showed nothing); a failed audit shows nothing
        // either: the view's thread ends with its receiver.
        self.audit_view(
            by,
            crate::audit::Action::SessionWatch,
            format!("session:{id}"),
            json!({}),
        )
        .await?;
        use futures::StreamExt as _;
        let events = futures::stream::poll_fn(move |cx| shown_events.poll_recv(cx));
        Ok(Box::pin(events.map(|s| live_event(&s))))
    }
}

/// A live view refused: too many open (busy, 429), or its thread not started (logged, internal).
fn view_refused(id: &str, e: crate::live::view::ViewError) -> CoreError {
    use crate::live::view::ViewError;
    match e {
        ViewError::TooMany(_) | ViewError::TooManyOfYours(_) => CoreError::Busy(e.to_string()),
        ViewError::Thread(_) => {
            tracing::error!(session = %id, error = %e, "web: cannot open a live view");
            CoreError::Internal
        }
    }
}

/// One live view event as the player's `eventsource` driver reads it: an object with a size is a reset
/// (a new terminal given `init`); an array is an event, passed on unparsed, so a resize's data is the
/// `{cols, rows}` the player resizes to (the "CxR" text of a recording's resize event, which that
/// driver does not parse, resized the page's terminal to 1 x 1).
fn live_event(s: &crate::live::view::Shown) -> String {
    use crate::live::view::Shown;
    match s {
        Shown::Reset {
            cols,
            rows,
            time,
            init,
        } => json!({"cols": cols, "rows": rows, "time": time, "init": shown(init)}).to_string(),
        Shown::Output(t, data) => json!([t, "o", shown(data)]).to_string(),
        Shown::Resize(t, cols, rows) => json!([t, "r", {"cols": cols, "rows": rows}]).to_string(),
    }
}

/// The transfer log's lines as the page lists them: a file's `opened` line is left out once the `file`
/// line that ends it (with the outcome and bytes) was logged. The two carry the same `open` number; in
/// logs written before lines were numbered, an `opened` line is paired with the next unnumbered `file`
/// line of the same path and direction.
fn transfers_shown(lines: Vec<playback::TransferLine>) -> Vec<playback::TransferLine> {
    use chaperone_recorder::TransferEvent as T;
    let ended: HashSet<u64> = lines
        .iter()
        .filter_map(|l| match l.event {
            T::File { open, .. } => open,
            _ => None,
        })
        .collect();
    let mut unnumbered: HashMap<(String, bool), usize> = HashMap::new();
    let mut shown: Vec<playback::TransferLine> = lines
        .into_iter()
        .rev()
        .filter(|l| match &l.event {
            T::File {
                path,
                direction,
                open: None,
                ..
            } => {
                *unnumbered
                    .entry((
                        path.clone(),
                        *direction == chaperone_recorder::Direction::Upload,
                    ))
                    .or_default() += 1;
                true
            }
            T::Opened { open: Some(n), .. } => !ended.contains(n),
            T::Opened {
                path,
                direction,
                open: None,
                ..
            } => {
                let key = (
                    path.clone(),
                    *direction == chaperone_recorder::Direction::Upload,
                );
                match unnumbered.get_mut(&key) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        false
                    }
                    _ => true,
                }
            }
            _ => true,
        })
        .collect();
    shown.reverse();
    shown
}

/// A file's path as the page shows it: with the command's path of a legacy SCP upload that names no
/// directory, since the file went to that path or under it (`→` is a rename's).
fn scp_upload_path(path: String, target: Option<String>) -> String {
    match target {
        Some(target) => format!("{path} (scp -t {target})"),
        None => path,
    }
}

fn transfer_view(l: playback::TransferLine) -> TransferView {
    use chaperone_recorder::TransferEvent as T;
    let outcome = |o: &chaperone_recorder::Outcome| {
        serde_json::to_value(o)
            .ok()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let word = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    match l.event {
        T::File {
            path,
            direction,
            bytes,
            outcome: o,
            target,
            ..
        } => TransferView {
            t: l.t,
            what: word(serde_json::to_value(direction)),
            path: scp_upload_path(path, target),
            target: None,
            bytes: Some(bytes),
            outcome: outcome(&o),
        },
        T::Op {
            op,
            path,
            target,
            outcome: o,
        } => TransferView {
            t: l.t,
            what: word(serde_json::to_value(op)),
            path,
            target,
            bytes: None,
            outcome: outcome(&o),
        },
        // Only one whose file was never logged as closed is shown (`transfers_shown`).
        T::Opened {
            path,
            direction,
            target,
            ..
        } => TransferView {
            t: l.t,
            what: word(serde_json::to_value(direction)),
            path: scp_upload_path(path, target),
            target: None,
            bytes: None,
            outcome: "opened, no end logged".into(),
        },
        T::Stderr { text } => TransferView {
            t: l.t,
            what: "stderr".into(),
            path: text,
            target: None,
            bytes: None,
            outcome: String::new(),
        },
        T::Notice { text } => TransferView {
            t: l.t,
            what: "notice".into(),
            path: text,
            target: None,
            bytes: None,
            outcome: String::new(),
        },
        T::Unparseable { reason } => TransferView {
            t: l.t,
            what: "unparseable".into(),
            path: reason,
            target: None,
            bytes: None,
            outcome: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    /// A live view's resize reaches the player's `eventsource` driver as the size it resizes to: that
    /// driver passes an event's data on unparsed, and "100x30" made the page's terminal 1 x 1 (checked
    /// in Chromium with the vendored player: one column; with `{cols, rows}`, 100 x 30).
    #[test]
    fn a_live_resize_is_sent_as_the_size_the_player_reads() {
        use crate::live::view::Shown;
        let e: serde_json::Value =
            serde_json::from_str(&live_event(&Shown::Resize(1.5, 100, 30))).unwrap();
        assert_eq!(e, json!([1.5, "r", {"cols": 100, "rows": 30}]));
        let e: serde_json::Value = serde_json::from_str(&live_event(&Shown::Reset {
            cols: 80,
            rows: 24,
            time: 0.0,
            init: "x".into(),
        }))
        .unwrap();
        assert_eq!(e["cols"], 80);
    }

    use super::*;
    use chaperone_recorder::{Direction, Outcome, TransferEvent};

    #[test]
    fn evidence_bundles_are_bounded_per_staff_member_and_per_node() {
        let turns = std::sync::Arc::new(BundleTurns::default());
        let busy = |r: Result<BundleTurn, CoreError>| match r {
            Err(CoreError::Busy(m)) => m,
            Err(e) => panic!("not Busy: {e}"),
            Ok(_) => panic!("a turn past the limit"),
        };
        let a1 = turns.take("alice").unwrap();
        let _a2 = turns.take("alice").unwrap();
        assert!(busy(turns.take("alice")).contains("you are downloading 2"));
        let _b1 = turns.take("bob").unwrap();
        let b2 = turns.take("bob").unwrap();
        // The node's four are taken: a third person waits too.
        assert!(busy(turns.take("carol")).contains("4 evidence bundles"));
        // A finished download gives its turn back, to anyone.
        drop(a1);
        let c1 = turns.take("carol").unwrap();
        assert!(busy(turns.take("alice")).contains("4 evidence bundles"));
        drop(b2);
        drop(c1);
        let _a3 = turns.take("alice").unwrap();
        assert_eq!(turns.0.taken(), 3);
        // Carol's count went with her last turn: she may take two again.
        let _c2 = turns.take("carol").unwrap();
        assert!(busy(turns.take("carol")).contains("4 evidence bundles"));
    }

    fn line(t: f64, event: TransferEvent) -> playback::TransferLine {
        playback::TransferLine { t, event }
    }

    fn opened(path: &str, direction: Direction, open: Option<u64>) -> TransferEvent {
        TransferEvent::Opened {
            path: path.into(),
            direction,
            open,
            target: None,
        }
    }

    fn file(
        path: &str,
        direction: Direction,
        outcome: Outcome,
        open: Option<u64>,
    ) -> TransferEvent {
        TransferEvent::File {
            path: path.into(),
            direction,
            bytes: 0,
            outcome,
            open,
            target: None,
        }
    }

    fn shown_opens(lines: Vec<playback::TransferLine>) -> Vec<f64> {
        transfers_shown(lines)
            .into_iter()
            .filter(|l| matches!(l.event, TransferEvent::Opened { .. }))
            .map(|l| l.t)
            .collect()
    }

    /// An upload cut off by a crash (opened, never ended) stays on the page, whatever file lines of the
    /// same path come after it: a refused open, or the second line of a file read and written.
    #[test]
    fn an_open_with_no_end_is_shown_whatever_follows_it() {
        use Direction::{Download, Upload};
        let lines = vec![
            line(1.0, opened("/a", Upload, Some(1))),
            line(2.0, file("/a", Upload, Outcome::Ok, Some(1))),
            line(3.0, opened("/b", Upload, Some(2))),
            line(4.0, file("/b", Upload, Outcome::Failed { status: 3 }, None)),
            line(5.0, opened("/c", Upload, Some(4))),
            line(6.0, opened("/c", Download, Some(5))),
            line(7.0, file("/c", Download, Outcome::Ok, Some(5))),
            line(7.0, file("/c", Upload, Outcome::Ok, None)),
        ];
        assert_eq!(shown_opens(lines.clone()), [3.0, 5.0]);
        assert_eq!(transfers_shown(lines).len(), 6);
    }

    /// Logs written before lines were numbered: an `opened` line is paired with a later `file` line of
    /// its path and direction.
    #[test]
    fn unnumbered_logs_pair_by_path_and_direction() {
        use Direction::Upload;
        let lines = vec![
            line(1.0, opened("/a", Upload, None)),
            line(2.0, file("/a", Upload, Outcome::Ok, None)),
            line(3.0, opened("/a", Upload, None)),
        ];
        assert_eq!(shown_opens(lines), [3.0]);
    }
}

/// Directory sign-ins of one name on this node, one at a time ([`WebCore::judge_directory`] with
/// `[ldap] max_failed_binds`): a turn per name, forgotten once nobody waits for it.
#[derive(Debug, Default)]
struct BindTurns(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
);

impl BindTurns {
    async fn take(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            turns.retain(|_, t| std::sync::Arc::strong_count(t) > 1);
            turns.entry(name.to_lowercase()).or_default().clone()
        };
        turn.lock_owned().await
    }
}
