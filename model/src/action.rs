//! The audit log's actions: every kind of event chaperone records, as one typed enum.
//!
//! Entry points: [`Action`] ([`Action::as_str`] is the name stored in `audit_events.action`,
//! [`Action::parse`] reads one back) and [`Action::ALL`]. Consumers of the audit log (the webhook's
//! `events` filter, the IHE ATNA export) match on this enum rather than on bare strings, so a misspelt
//! name in a config file is an error at start and a new action is a compile error in every `match` that
//! must decide what to do with it.
//!
//! Rows written by an older or newer chaperone may carry a name this build does not know; readers get
//! `None` from [`Action::parse`] and must treat it as "some other event", never fail on it.

use std::fmt;

macro_rules! actions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// One kind of audit event. The stored name is in the `#[doc]` of each variant's group.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Action {
            $($(#[$doc])* $variant,)*
        }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            /// The name stored in the audit log (`vendor.add`, `auth.login`, …).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }

            /// The action a stored name stands for; `None` for a name this build does not know.
            pub fn parse(name: &str) -> Option<Action> {
                match name {
                    $($name => Some(Action::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

actions! {
    // Vendors' sign-in on the SSH listener.
    /// A vendor signed in (key, then TOTP).
    AuthLogin = "auth.login",
    /// A wrong TOTP code.
    AuthTotpFailure = "auth.totp.failure",
    /// Too many failures: the vendor is locked out.
    AuthLock = "auth.lock",
    /// A signed-in vendor's connection ended (by either side).
    AuthLogout = "auth.logout",
    /// A locked or disabled vendor tried to sign in.
    AuthRefused = "auth.refused",
    /// A vendor's key passed and the connection ended before a second factor was judged.
    AuthAbandoned = "auth.abandoned",
    /// A signed-in vendor confirmed a change with a fresh TOTP code (`passkey add`).
    AuthConfirm = "auth.confirm",
    /// Refusals of one connection past a limit were no longer audited one by one.
    SshRefusalsSuppressed = "ssh.refusals.suppressed",
    /// A connection asked for more channels than `ssh.max_channels`.
    SshChannelsRefused = "ssh.channels.refused",
    // Sessions, tunnels and jumps (the session pipeline).
    SessionStart = "session.start",
    SessionEnd = "session.end",
    /// A session could not start (no grant, device unreachable, …).
    SessionRefused = "session.refused",
    /// A second shell/exec/subsystem request on a started channel.
    SessionRequestRefused = "session.request.refused",
    SessionSubsystemRefused = "session.subsystem.refused",
    /// Staff asked for a live session to be ended.
    SessionTerminate = "session.terminate",
    /// An evidence bundle or a recording was exported.
    SessionExport = "session.export",
    /// An evidence bundle (recordings, their chain proof, signed) was exported.
    EvidenceExport = "evidence.export",
    /// An evidence bundle was signed (before it left): the SHA-256 of its `SHA256SUMS`, which an inspector
    /// asks the hospital to confirm (a bundle signed with a stolen or retired key has no such event).
    EvidenceSigned = "evidence.signed",
    /// Someone looked at a recording (played it, or through the web page).
    RecordingView = "recording.view",
    /// Someone searched what recordings showed (the history's text filter, a transcript search).
    RecordingSearch = "recording.search",
    /// Someone watched a live session on the web page.
    SessionWatch = "session.watch",
    /// Retention deleted a recording's file (its digest stays in the chain).
    RecordingDeleted = "recording.deleted",
    /// A legal hold was placed on a session, or released.
    SessionHold = "session.hold",
    SessionRelease = "session.release",
    /// The key that signs evidence bundles was made, or replaced.
    EvidenceSignerCreate = "evidence.signer.create",
    EvidenceSignerRotate = "evidence.signer.rotate",
    TunnelOpen = "tunnel.open",
    TunnelClose = "tunnel.close",
    TunnelRefused = "tunnel.refused",
    JumpOpen = "jump.open",
    JumpClose = "jump.close",
    ForwardAgentRefused = "forward.agent.refused",
    /// X11 forwarding was asked for (`ssh -X`).
    ForwardX11Refused = "forward.x11.refused",
    /// The client opened a channel of a type chaperone does not serve (`x11`, `forwarded-tcpip`, an
    /// agent's, a socket's, or one unknown).
    ChannelRefused = "channel.refused",
    ForwardRemoteRefused = "forward.remote.refused",
    ForwardStreamlocalRefused = "forward.streamlocal.refused",
    /// A device's host key is not the pinned one.
    TargetHostkeyMismatch = "target.hostkey.mismatch",
    /// A byte budget was crossed.
    BudgetExceeded = "budget.exceeded",
    RecordingFailed = "recording.failed",
    /// A node digested the recording of a session whose writer died.
    RecordingRecovered = "recording.recovered",
    /// The watcher cut a vendor's connections (disabled, locked, key removed).
    VendorConnectionsEnded = "vendor.connections.ended",
    // Access requests and grants.
    RequestFile = "request.file",
    RequestRefused = "request.refused",
    /// A staff member was refused a decision on a request for who they are: their own request, one
    /// they approved already, another zone's, a role that does not decide, an account disabled.
    RequestDecisionRefused = "request.decision.refused",
    RequestApprove = "request.approve",
    RequestDeny = "request.deny",
    RequestExpire = "request.expire",
    GrantIssue = "grant.issue",
    GrantRefused = "grant.refused",
    GrantRevoke = "grant.revoke",
    // Staff on the web page.
    StaffSignin = "staff.signin",
    StaffSigninFailed = "staff.signin.failed",
    /// A staff member signed out of the web page.
    StaffSignout = "staff.signout",
    StaffTotpAccept = "staff.totp.accept",
    StaffPasskeyAdd = "staff.passkey.add",
    StaffPasskeyRemove = "staff.passkey.remove",
    StaffPasskeyUpdate = "staff.passkey.update",
    UserEnroll = "user.enroll",
    UserEnrollSeed = "user.enroll.seed",
    /// A directory user's first sign-in opened their enrolment of a second factor.
    UserEnrollOpen = "user.enroll.open",
    /// The directory could not be asked (down, or refusing the service account).
    StaffSigninUnavailable = "staff.signin.unavailable",
    // Staff from the directory (LDAP / Active Directory).
    /// A directory user signed in for the first time: their account was made from the directory.
    UserDirectoryAdd = "user.directory.add",
    /// A directory user's roles or zones changed at sign-in or re-check.
    UserDirectoryUpdate = "user.directory.update",
    /// A directory user left the directory or its groups: their access and web sessions ended.
    UserDirectoryRemove = "user.directory.remove",
    // Vendors' own second factor.
    /// A vendor enrolled their TOTP at first login.
    VendorTotpEnroll = "vendor.totp.enroll",
    /// An administrator reset a vendor's TOTP: the vendor enrols again at the next login.
    VendorTotpReset = "vendor.totp.reset",
    /// A vendor registered a passkey through the link `ssh VENDOR@bastion passkey add` printed.
    VendorPasskeyAdd = "vendor.passkey.add",
    /// A vendor's passkey was removed (by the vendor, or all of them by an administrator).
    VendorPasskeyRemove = "vendor.passkey.remove",
    /// A vendor's passkey sign-in moved its signature counter.
    VendorPasskeyUpdate = "vendor.passkey.update",
    // Administration (the command line).
    UserAdd = "user.add",
    UserDisable = "user.disable",
    VendorAdd = "vendor.add",
    VendorEnable = "vendor.enable",
    VendorDisable = "vendor.disable",
    /// An administrator ended a vendor's lockout (and forgot their failed logins).
    VendorUnlock = "vendor.unlock",
    VendorKeyAdd = "vendor.key.add",
    VendorKeyRemove = "vendor.key.remove",
    /// A directory vendor's entry moved or was renamed (same entry id, new DN), or its id was first read.
    VendorDirectoryMove = "vendor.directory.move",
    AssetAdd = "asset.add",
    AssetRemove = "asset.remove",
    AssetServiceAdd = "asset.service.add",
    AssetServiceRemove = "asset.service.remove",
    AssetCredentialSet = "asset.credential.set",
    AssetHostkeyPin = "asset.hostkey.pin",
    /// The vendor organisation that maintains an asset (who may ask for it) was set or cleared.
    AssetVendorOrg = "asset.vendor_org",
    SecretsRotate = "secrets.rotate",
    DemoSetup = "demo.setup",
    // The audit log itself and its consumers.
    /// `audit export` wrote the log out (to a SIEM, a file).
    AuditExport = "audit.export",
    /// `audit verify` found the chain broken (tampering).
    AuditTamper = "audit.tamper",
    /// `audit seal`: an operator sealed a chain head that did not carry its seal, after comparing the
    /// log with its copy kept outside.
    AuditSealed = "audit.sealed",
    /// A backup was restored into this data directory.
    BackupRestore = "backup.restore",
    /// `chaperone backup` started: the whole installation (recordings, keys, database) copied out.
    /// Audited before the copy, so the archive holds its own event.
    BackupCreate = "backup.create",
    WebhookUndelivered = "webhook.undelivered",
    WebhookEndpointChanged = "webhook.endpoint.changed",
    /// An ATNA audit message was given up after its retries.
    AtnaUndelivered = "atna.undelivered",
    /// The mail server refused an approvers' notice for good (a 5xx reply); not retried.
    MailUndelivered = "mail.undelivered",
    /// The ATNA cursor moved to a new `[atna] url`.
    AtnaEndpointChanged = "atna.endpoint.changed",
}

impl Action {
    /// A staff member's look at the evidence (a recording's page or player, a search, a live view):
    /// audited, and listed on the session's page, but it changes nothing else any page shows, so open
    /// pages are not refreshed for it (another auditor's view shows at the next real change).
    pub const fn is_view(self) -> bool {
        matches!(
            self,
            Action::RecordingView | Action::RecordingSearch | Action::SessionWatch
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(name: &str) -> Result<Action, String> {
        Action::parse(name).ok_or_else(|| format!("{name:?} is not an audit action"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_dotted_and_read_back() {
        let mut seen = std::collections::BTreeSet::new();
        for a in Action::ALL {
            let name = a.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                name.contains('.')
                    && name.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || c == '.'
                        || c == '_'),
                "{name}"
            );
            assert_eq!(Action::parse(name), Some(*a));
        }
        assert_eq!(Action::parse("auth.Login"), None);
        assert!("vendor.ad".parse::<Action>().is_err());
    }
}
