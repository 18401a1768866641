//! IHE ATNA audit export: the audit log's security events as DICOM PS3.15 A.5 `AuditMessage`s, sent to
//! the hospital's audit record repository over syslog (TLS, RFC 5425; or UDP, RFC 5426).
//!
//! Entry points: [`spawn`] (from `server::run` when `[atna]` is configured), [`audit_message`] (one
//! audit row as an `AuditMessage`, also used by `chaperone audit export --format atna`) and [`mapping`]:
//! which audit actions become which DICOM event, in one exhaustive `match`
//! over [`Action`], so a new action does not compile until it is given a mapping (or `None`).
//!
//! Like the webhook, the exporter is a consumer of the audit log, never a hook at the call sites: it
//! tails the log from its own cursor (`audit_cursors` row `atna`), so a message exists only for an event
//! that was committed, goes out in the order of the chain, and survives restarts and outages. With several
//! nodes, one holds the cursor's lease and sends. Delivery is at least once and never given up: a
//! failure is retried with backoff (1 s doubling to 5 min) holding later events back; the backlog shows
//! in the metrics (`chaperone_audit_backlog_events{consumer="atna"}`).

mod message;
mod syslog;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::app::App;
use crate::audit::{Action, AuditRow};
use crate::audit_tail::{self, Consumer, CursorRow, Delivery, Lease, Moved};
use crate::config::AtnaConfig;
use crate::error_text::report;
use crate::store::StoreError;
pub use message::{ActionCode, AuditMessage, Code, Outcome, dcm};
pub use syslog::{Sender, SetupError};

/// The cursor row's name in `audit_cursors`.
const CURSOR: &str = "atna";

// DICOM PS3.16 codes (CID 400 Audit Event ID, CID 401 Audit Event Type Code).
const USER_AUTHENTICATION: Code = dcm("110114", "User Authentication");
const SECURITY_ALERT: Code = dcm("110113", "Security Alert");
const EXPORT: Code = dcm("110106", "Export");
const APPLICATION_ACTIVITY: Code = dcm("110100", "Application Activity");
const LOGIN: Code = dcm("110122", "Login");
const LOGOUT: Code = dcm("110123", "Logout");
const NODE_AUTHENTICATION: Code = dcm("110126", "Node Authentication");
const SECURITY_CONFIGURATION: Code = dcm("110129", "Security Configuration");
const USE_OF_RESTRICTED_FUNCTION: Code = dcm("110132", "Use of Restricted Function");
const AUDIT_RECORDING_STOPPED: Code = dcm("110133", "Audit Recording Stopped");
const AUDIT_RECORDING_STARTED: Code = dcm("110134", "Audit Recording Started");
const USER_SECURITY_ATTRIBUTES_CHANGED: Code = dcm("110137", "User Security Attributes Changed");
const REMOTE_SERVICE_STARTED: Code = dcm("110139", "Remote Service Operation Started");
const REMOTE_SERVICE_STOPPED: Code = dcm("110140", "Remote Service Operation Stopped");
const AUTHORIZATION_DECISION: Code = dcm("110144", "Authorization Decision");
const SESSION_START: Code = dcm("110145", "Session start");
const SESSION_STOP: Code = dcm("110146", "Session stop");
const ACCESS_CONTROL_DECISION: Code = dcm("110147", "Access Control Decision");

/// What one audit action becomes: the DICOM event, its type codes, the action code and the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub event_id: Code,
    pub event_types: &'static [Code],
    pub action: ActionCode,
    pub outcome: Outcome,
}

const fn map(
    event_id: Code,
    event_types: &'static [Code],
    action: ActionCode,
    outcome: Outcome,
) -> Option<Mapping> {
    Some(Mapping {
        event_id,
        event_types,
        action,
        outcome,
    })
}

/// The one table: which audit actions are sent, as what. `None`: bookkeeping that is not a security
/// event for the repository (the chain itself still has it).
pub fn mapping(action: Action) -> Option<Mapping> {
    use Action as A;
    use ActionCode::{Create, Delete, Execute, Read, Update};
    use Outcome::{MajorFailure, MinorFailure, SeriousFailure, Success};
    let configuration = &[SECURITY_CONFIGURATION];
    let user_attributes = &[USER_SECURITY_ATTRIBUTES_CHANGED];
    let authorization = &[AUTHORIZATION_DECISION];
    let access_control = &[ACCESS_CONTROL_DECISION];
    match action {
        // Logins and logouts: User Authentication with Login / Logout; failures by outcome.
        // A vendor's fresh code confirming a change is an authentication too.
        A::AuthLogin | A::AuthConfirm | A::StaffSignin => {
            map(USER_AUTHENTICATION, &[LOGIN], Execute, Success)
        }
        A::AuthTotpFailure
        | A::AuthRefused
        | A::AuthAbandoned
        | A::StaffSigninFailed
        | A::StaffSigninUnavailable => map(USER_AUTHENTICATION, &[LOGIN], Execute, MinorFailure),
        A::AuthLock => map(USER_AUTHENTICATION, &[LOGIN], Execute, SeriousFailure),
        // A signed-in connection ended; the watcher cut a disabled, locked or de-keyed vendor's ones.
        A::AuthLogout | A::StaffSignout | A::VendorConnectionsEnded => {
            map(USER_AUTHENTICATION, &[LOGOUT], Execute, Success)
        }
        // Sessions: a vendor's remote service operation on a device.
        A::SessionStart | A::TunnelOpen | A::JumpOpen => map(
            SECURITY_ALERT,
            &[REMOTE_SERVICE_STARTED, SESSION_START],
            Execute,
            Success,
        ),
        A::SessionEnd | A::TunnelClose | A::JumpClose => map(
            SECURITY_ALERT,
            &[REMOTE_SERVICE_STOPPED, SESSION_STOP],
            Execute,
            Success,
        ),
        // Access decisions: refusals at the SSH listener, and the approvers' decisions on access.
        A::SessionRefused
        | A::SessionRequestRefused
        | A::SessionSubsystemRefused
        | A::TunnelRefused
        | A::ForwardAgentRefused
        | A::ForwardRemoteRefused
        | A::ForwardStreamlocalRefused
        | A::ForwardX11Refused
        | A::ChannelRefused
        | A::SshChannelsRefused
        | A::SshRefusalsSuppressed => map(SECURITY_ALERT, access_control, Execute, MinorFailure),
        A::RequestApprove | A::GrantIssue => map(SECURITY_ALERT, authorization, Create, Success),
        A::RequestDeny
        | A::RequestExpire
        | A::RequestRefused
        | A::RequestDecisionRefused
        | A::GrantRefused => map(SECURITY_ALERT, authorization, Execute, MinorFailure),
        A::GrantRevoke | A::SessionTerminate => map(SECURITY_ALERT, authorization, Delete, Success),
        // Security alerts.
        A::TargetHostkeyMismatch => map(
            SECURITY_ALERT,
            &[NODE_AUTHENTICATION],
            Execute,
            SeriousFailure,
        ),
        A::BudgetExceeded => map(
            SECURITY_ALERT,
            &[USE_OF_RESTRICTED_FUNCTION],
            Execute,
            MinorFailure,
        ),
        A::RecordingFailed => map(
            SECURITY_ALERT,
            &[AUDIT_RECORDING_STOPPED],
            Execute,
            SeriousFailure,
        ),
        // A recording whose writer died, digested by a node's sweep: the repository holds the digest
        // it vouches for, as it holds a session.end's.
        A::RecordingRecovered => map(
            SECURITY_ALERT,
            &[AUDIT_RECORDING_STOPPED],
            Execute,
            MinorFailure,
        ),
        A::AuditTamper => map(SECURITY_ALERT, &[], Execute, MajorFailure),
        // Exports of recordings and of the audit log.
        A::SessionExport
        | A::AuditExport
        | A::EvidenceExport
        | A::EvidenceSigned
        | A::BackupCreate => map(EXPORT, &[], Read, Success),
        // Evidence kept or let go: who looked, what retention deleted, legal holds, the signing key.
        A::RecordingView | A::RecordingSearch | A::SessionWatch => {
            map(SECURITY_ALERT, &[USE_OF_RESTRICTED_FUNCTION], Read, Success)
        }
        A::RecordingDeleted => map(
            SECURITY_ALERT,
            &[USE_OF_RESTRICTED_FUNCTION],
            Delete,
            Success,
        ),
        A::SessionHold | A::SessionRelease | A::EvidenceSignerCreate | A::EvidenceSignerRotate => {
            map(SECURITY_ALERT, configuration, Update, Success)
        }
        // Who may do what: vendors, staff and their credentials; devices and their secrets.
        A::VendorAdd
        | A::VendorEnable
        | A::VendorUnlock
        | A::VendorDisable
        | A::VendorKeyAdd
        | A::VendorKeyRemove
        | A::VendorDirectoryMove
        | A::UserAdd
        | A::UserDisable
        | A::UserEnroll
        | A::UserEnrollOpen
        | A::UserDirectoryAdd
        | A::UserDirectoryUpdate
        | A::UserDirectoryRemove
        | A::VendorTotpEnroll
        | A::VendorTotpReset
        | A::VendorPasskeyAdd
        | A::VendorPasskeyRemove
        | A::VendorPasskeyUpdate
        | A::StaffPasskeyAdd
        | A::StaffPasskeyRemove
        | A::StaffPasskeyUpdate => map(SECURITY_ALERT, user_attributes, Update, Success),
        A::AssetAdd
        | A::AssetRemove
        | A::AssetServiceAdd
        | A::AssetServiceRemove
        | A::AssetCredentialSet
        | A::AssetHostkeyPin
        | A::AssetVendorOrg
        | A::SecretsRotate
        | A::AuditSealed => map(SECURITY_ALERT, configuration, Update, Success),
        A::BackupRestore => map(APPLICATION_ACTIVITY, configuration, Execute, Success),
        // Bookkeeping: a request filed is not yet a decision; a TOTP step or seed is part of a sign-in
        // or an enrolment already sent; the consumers' own trouble is not a security event for the
        // repository.
        A::RequestFile
        | A::StaffTotpAccept
        | A::UserEnrollSeed
        | A::DemoSetup
        | A::WebhookUndelivered
        | A::WebhookEndpointChanged
        | A::AtnaUndelivered
        | A::MailUndelivered => None,
        // The export began at the end of the log for this repository (its `atna.url` changed): the
        // repository is told where its trail starts, and its detail where the old one stopped
        // (`from_seq`), so a gap shows where it is kept, not only in the bastion's own log.
        A::AtnaEndpointChanged => map(
            SECURITY_ALERT,
            &[AUDIT_RECORDING_STARTED],
            Execute,
            MinorFailure,
        ),
    }
}

/// How chaperone names itself in the messages.
#[derive(Debug, Clone)]
pub struct Source {
    /// `AuditSourceID`, the syslog HOSTNAME, and the bastion's `NetworkAccessPointID`.
    pub id: String,
    pub enterprise_site_id: Option<String>,
}

impl Source {
    pub fn from_config(config: &AtnaConfig) -> Source {
        Source {
            id: config.audit_source_id.clone(),
            enterprise_site_id: config.enterprise_site_id.clone(),
        }
    }
}

/// Text from an audit detail, shortened for the repository.
fn clip(text: &str) -> String {
    const MAX: usize = 512;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The host part of `1.2.3.4:5678` / `[::1]:22`, or the text as it is.
fn host_of(peer: &str) -> String {
    if let Ok(addr) = peer.parse::<std::net::SocketAddr>() {
        return addr.ip().to_string();
    }
    peer.to_owned()
}

fn access_point(text: &str) -> (String, message::AccessPoint) {
    let host = host_of(text);
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        message::AccessPoint::IpAddress
    } else {
        message::AccessPoint::MachineName
    };
    (host, kind)
}

/// An `actor`/`subject` (`vendor:alice`, `asset:mri-01`, `session:42`) as a participant object.
fn object(reference: &str, details: Vec<(&'static str, String)>) -> message::ParticipantObject {
    let (kind, name) = reference.split_once(':').unwrap_or(("other", reference));
    let person = matches!(kind, "vendor" | "user" | "staff");
    // chaperone's own identifier types (RFC 3881 allows any coded identifier type).
    let id_type = match kind {
        "vendor" => Code {
            code: "vendor",
            system: "chaperone",
            meaning: "Vendor account",
        },
        "user" | "staff" => Code {
            code: "user",
            system: "chaperone",
            meaning: "Staff account",
        },
        "asset" => Code {
            code: "asset",
            system: "chaperone",
            meaning: "Medical device",
        },
        "session" => Code {
            code: "session",
            system: "chaperone",
            meaning: "Recorded session",
        },
        "grant" => Code {
            code: "grant",
            system: "chaperone",
            meaning: "Access grant",
        },
        "request" => Code {
            code: "request",
            system: "chaperone",
            meaning: "Access request",
        },
        _ => Code {
            code: "object",
            system: "chaperone",
            meaning: "chaperone object",
        },
    };
    message::ParticipantObject {
        id: reference.to_owned(),
        // 1 person / 2 system object; role 11 Security User Entity / 13 Security Resource.
        type_code: if person { 1 } else { 2 },
        role: if person { 11 } else { 13 },
        id_type,
        name: if name.is_empty() {
            reference.to_owned()
        } else {
            name.to_owned()
        },
        details,
    }
}

/// One audit row as an ATNA `AuditMessage`, or `None` when its action is not sent (see [`mapping`]) or
/// unknown to this build.
pub fn audit_message(row: &AuditRow, source: &Source) -> Option<AuditMessage> {
    let action = Action::parse(&row.action)?;
    let m = mapping(action)?;
    // The detail was written by chaperone as a JSON object; should it not parse, it has no fields.
    let detail: Value = serde_json::from_str(&row.detail).unwrap_or(Value::Null);
    let text = |key: &str| detail.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut outcome = m.outcome;
    if action == Action::StaffSigninFailed && detail.get("locked") == Some(&Value::Bool(true)) {
        outcome = Outcome::SeriousFailure;
    }
    let description = ["why", "reason", "error", "end_reason"]
        .iter()
        .find_map(|k| text(k))
        .map(|d| clip(&d));
    let mut requestor = message::ActiveParticipant {
        user_id: row.actor.clone(),
        alternative_user_id: None,
        user_name: row.actor.split_once(':').map(|(_, name)| name.to_owned()),
        is_requestor: true,
        access_point: text("peer")
            .or_else(|| text("source"))
            .map(|p| access_point(&p)),
        roles: Vec::new(),
    };
    if requestor.user_name.as_deref() == Some("") {
        requestor.user_name = None;
    }
    let bastion = message::ActiveParticipant {
        user_id: "chaperone".into(),
        alternative_user_id: Some(std::process::id().to_string()),
        user_name: None,
        is_requestor: false,
        access_point: Some(access_point(&source.id)),
        roles: Vec::new(),
    };
    let mut details = vec![
        ("chaperone-action", row.action.clone()),
        ("audit-seq", row.seq.to_string()),
        ("audit-hash", row.hash.clone()),
    ];
    // `sums_sha256` and `signer`: what a bundle the bastion signed was (`evidence.signed`), kept by the
    // repository so an inspector's confirmation does not rest on the bastion's own log.
    for key in [
        "service",
        "kind",
        "key",
        "recording_sha256",
        "sums_sha256",
        "signer",
    ] {
        if let Some(v) = text(key) {
            details.push(("chaperone-detail", format!("{key}={}", clip(&v))));
        }
    }
    // A moved export's gap: where the previous repository's trail stopped and this one's starts after;
    // a signed bundle's export event.
    for key in ["from_seq", "to_seq", "export"] {
        if let Some(n) = detail.get(key).and_then(Value::as_i64) {
            details.push(("chaperone-detail", format!("{key}={n}")));
        }
    }
    let mut objects = vec![object(&row.subject, details)];
    if let Some(asset) = text("asset")
        && row.subject != format!("asset:{asset}")
    {
        objects.push(object(&format!("asset:{asset}"), Vec::new()));
    }
    Some(AuditMessage {
        event_id: m.event_id,
        event_types: m.event_types.to_vec(),
        action: m.action,
        date_time: crate::clock::format_rfc3339(row.at),
        outcome,
        outcome_description: description,
        participants: vec![requestor, bastion],
        source_id: source.id.clone(),
        enterprise_site_id: source.enterprise_site_id.clone(),
        source_type: "6",
        objects,
    })
}

/// The syslog message for `row`: notice for a success, warning for any failure.
pub fn syslog_message(row: &AuditRow, source: &Source) -> Option<String> {
    let message = audit_message(row, source)?;
    let severity = if message.outcome == Outcome::Success {
        5
    } else {
        4
    };
    Some(syslog::message(
        &message.date_time,
        &source.id,
        severity,
        &message.to_xml(),
    ))
}

/// Starts the exporter. Fails at once when the collector's TLS trust or our client certificate cannot
/// be read, so a broken `[atna]` stops `serve` instead of losing the trail.
pub fn spawn(
    app: App,
    config: AtnaConfig,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, SetupError> {
    let sender = Sender::new(&config)?;
    // Nodes configured with different collectors would keep moving the cursor: the move is audited,
    // and the gap can be exported by hand.
    let moved = Moved {
        log: "ATNA: the export cursor belonged to another atna.url; starting at the end of the audit log \
              for this one (every node must have the same [atna] url; export the gap with \
              `chaperone audit export --format atna --after SEQ`)",
        shown_url: config.url.clone(),
        audit: Some((
            Action::AtnaEndpointChanged,
            "atna",
            json!({ "url": config.url }),
        )),
    };
    tracing::info!(url = %config.url, "ATNA audit export started");
    let exporter = Exporter {
        source: Source::from_config(&config),
        sender,
    };
    let cursor = CursorRow::Named(CURSOR);
    Ok(audit_tail::spawn(
        app, cursor, config.url, moved, exporter, stop,
    ))
}

struct Exporter {
    source: Source,
    sender: Sender,
}

impl Consumer for Exporter {
    /// The syslog message.
    type Item = String;
    const NAME: &'static str = "ATNA audit export";

    fn select(&self, row: &AuditRow) -> Option<String> {
        syslog_message(row, &self.source)
    }

    /// Sends one message until it goes out (never given up: the repository must get the whole trail).
    async fn deliver(
        &mut self,
        lease: &Lease<'_>,
        row: &AuditRow,
        message: String,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Delivery, StoreError> {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let error = match self.sender.send(&message).await {
                Ok(()) => {
                    crate::ops::metrics::atna_sent();
                    tracing::debug!(seq = row.seq, action = %row.action, "ATNA message sent");
                    return Ok(Delivery::Handled);
                }
                Err(e) => report(&e),
            };
            crate::ops::metrics::delivery_failed("atna");
            let wait = crate::webhook::backoff(attempt);
            tracing::warn!(seq = row.seq, action = %row.action, attempt, error = %error,
                retry_in_secs = wait.as_secs(), "ATNA message not delivered");
            tokio::select! {
                () = crate::ssh::stopped(stop) => return Ok(Delivery::Stopped),
                () = tokio::time::sleep(wait) => {}
            }
            if !lease.keep().await? {
                return Ok(Delivery::LostLease);
            }
        }
    }

    async fn close(&mut self) {
        self.sender.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, actor: &str, subject: &str, detail: &str) -> AuditRow {
        AuditRow {
            seq: 9,
            at: 1_795_996_404,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            detail: detail.into(),
            prev_hash: "0".repeat(64),
            hash: "ab".repeat(32),
        }
    }

    fn source() -> Source {
        Source {
            id: "bastion-1".into(),
            enterprise_site_id: Some("St Example".into()),
        }
    }

    #[test]
    fn a_login_is_user_authentication_with_login() {
        let r = row(
            "auth.login",
            "vendor:alice",
            "vendor:alice",
            r#"{"peer":"10.1.2.3:5555","second_factor":"totp"}"#,
        );
        let m = audit_message(&r, &source()).unwrap();
        assert_eq!(m.event_id.code, "110114");
        assert_eq!(m.event_types, vec![LOGIN]);
        assert_eq!(m.outcome, Outcome::Success);
        let xml = m.to_xml();
        assert!(xml.starts_with("<AuditMessage><EventIdentification EventActionCode=\"E\" EventDateTime=\"2026-11-29T23:53:24Z\" EventOutcomeIndicator=\"0\"><EventID csd-code=\"110114\" codeSystemName=\"DCM\" originalText=\"User Authentication\"/><EventTypeCode csd-code=\"110122\""), "{xml}");
        assert!(xml.contains("UserID=\"vendor:alice\" UserIsRequestor=\"true\" UserName=\"alice\" NetworkAccessPointID=\"10.1.2.3\" NetworkAccessPointTypeCode=\"2\""), "{xml}");
        assert!(xml.contains("<AuditSourceIdentification AuditSourceID=\"bastion-1\" AuditEnterpriseSiteID=\"St Example\"><AuditSourceTypeCode csd-code=\"6\"/>"), "{xml}");
        for logout in ["auth.logout", "staff.signout"] {
            let m = audit_message(
                &row(logout, "vendor:alice", "vendor:alice", "{}"),
                &source(),
            )
            .unwrap();
            assert_eq!(
                (m.event_id, m.event_types),
                (USER_AUTHENTICATION, vec![LOGOUT])
            );
        }
    }

    #[test]
    fn failures_carry_their_outcome_and_why() {
        let lock = audit_message(
            &row(
                "auth.lock",
                "vendor:bob",
                "vendor:bob",
                r#"{"why":"5 failures"}"#,
            ),
            &source(),
        )
        .unwrap();
        assert_eq!(lock.outcome, Outcome::SeriousFailure);
        assert!(
            lock.to_xml()
                .contains("<EventOutcomeDescription>5 failures</EventOutcomeDescription>")
        );
        let refused = audit_message(
            &row(
                "session.refused",
                "vendor:bob",
                "asset:mri-01",
                r#"{"reason":"no grant <b>"}"#,
            ),
            &source(),
        )
        .unwrap();
        assert_eq!(refused.event_types, vec![ACCESS_CONTROL_DECISION]);
        assert!(refused.to_xml().contains("no grant &lt;b&gt;"));
        let locked_staff = audit_message(
            &row(
                "staff.signin.failed",
                "staff:x",
                "user:x",
                r#"{"locked":true}"#,
            ),
            &source(),
        )
        .unwrap();
        assert_eq!(locked_staff.outcome, Outcome::SeriousFailure);
    }

    #[test]
    fn a_new_repository_is_told_where_its_trail_starts() {
        let m = audit_message(
            &row(
                "atna.endpoint.changed",
                "system",
                "atna",
                r#"{"url":"tls://arr:6514","from_seq":41,"to_seq":57}"#,
            ),
            &source(),
        )
        .unwrap();
        assert_eq!(m.outcome, Outcome::MinorFailure);
        let xml = m.to_xml();
        assert!(
            xml.contains("110134") && xml.contains("Audit Recording Started"),
            "{xml}"
        );
        // The gap, as the repository reads it (ParticipantObjectDetail values are base64).
        use base64::Engine as _;
        for (key, n) in [("from_seq", 41), ("to_seq", 57)] {
            let value = base64::engine::general_purpose::STANDARD.encode(format!("{key}={n}"));
            assert!(xml.contains(&value), "{key}: {xml}");
        }
    }

    #[test]
    fn a_signed_bundle_reaches_the_repository_with_its_digest() {
        let m = audit_message(
            &row(
                "evidence.signed",
                "staff:audrey",
                "session:s1",
                r#"{"export":12,"sums_sha256":"ab12","signer":"SHA256:k"}"#,
            ),
            &source(),
        )
        .unwrap();
        let xml = m.to_xml();
        use base64::Engine as _;
        for detail in ["sums_sha256=ab12", "signer=SHA256:k", "export=12"] {
            let value = base64::engine::general_purpose::STANDARD.encode(detail);
            assert!(xml.contains(&value), "{detail}: {xml}");
        }
    }

    #[test]
    fn bookkeeping_and_unknown_actions_are_not_sent() {
        assert!(
            audit_message(
                &row("request.file", "vendor:a", "request:1", "{}"),
                &source()
            )
            .is_none()
        );
        assert!(audit_message(&row("from.the.future", "x", "y", "{}"), &source()).is_none());
        // Every action has a decision, and every sent one a DCM event id from CID 400.
        for a in Action::ALL {
            if let Some(m) = mapping(*a) {
                assert!(
                    ["110100", "110106", "110113", "110114"].contains(&m.event_id.code),
                    "{a}"
                );
            }
        }
    }
}
