//! The domain's plain data: vendors, staff, assets and their services, requests, grants, sessions,
//! recordings. Parsing of names and service specs from hostile input lives here, next to the types.
//!
//! Nothing here touches the database or the network; `store` maps these to rows.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Unix time in seconds.
pub type UnixTime = i64;

/// The longest a grant lasts, however it is issued (`policy::grants` enforces it; the config refuses a
/// request limit above it, since such a request could never be approved as asked).
pub const MAX_GRANT: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

/// How a session may have ended, as the `sessions.end_cause` column has it (what an auditor filters on):
/// `closed` by a side, or ended by the bastion for the reason named. The history's filters offer these
/// and `live` (not ended yet).
pub const SESSION_ENDS: [&str; 10] = [
    "closed",
    "expired",
    "revoked",
    "terminated",
    "budget",
    "recording",
    "disabled",
    "idle",
    "lost",
    "shutdown",
];

/// A name for a vendor, a staff user, an asset, a zone or a service: 1-64 characters of
/// `[a-z0-9._-]`, starting with a letter or digit. Hostile or confusing names (spaces, `+`, `@`, control
/// characters, upper case look-alikes) never reach the database, a log line or a terminal.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok_len = (1..=64).contains(&name.len());
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {:?}: use 1-64 characters a-z 0-9 . _ - starting with a letter or digit",
            truncate_for_display(name, 80)
        ))
    }
}

/// Free text (purpose, reason, organisation): printable, single line, bounded, and shown as written (no
/// character that reorders or breaks the text around it, [`reorders_text`]: a reason that reads
/// "firmware check" to the approver must not be stored as something else).
pub fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if text.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be one line without control characters"
        ));
    }
    if text.chars().any(reorders_text) {
        return Err(format!(
            "{what} must not contain bidirectional or line-separator characters (U+061C, U+200E, \
             U+200F, U+2028-U+202E, U+2066-U+2069)"
        ));
    }
    if let Some(c) = text.chars().find(|&c| invisible(c)) {
        return Err(format!(
            "{what} must not contain invisible characters (U+{:04X}): what the approver reads must be \
             all there is",
            u32::from(c)
        ));
    }
    let mut marks = 0;
    for c in text.chars() {
        marks = if combining(c) { marks + 1 } else { 0 };
        if marks > MAX_MARKS {
            return Err(format!(
                "{what} stacks more than {MAX_MARKS} combining marks on one character"
            ));
        }
    }
    Ok(())
}

/// Combining marks one character may carry in free text: every script needs a few (Vietnamese two,
/// some Indic clusters three); a column of them drawn over the lines around it needs many.
const MAX_MARKS: usize = 4;

/// A combining mark of the blocks that stack (diacritics for Latin, Greek, Cyrillic and symbols).
fn combining(c: char) -> bool {
    matches!(c, '\u{300}'..='\u{36f}' | '\u{1ab0}'..='\u{1aff}' | '\u{1dc0}'..='\u{1dff}'
        | '\u{20d0}'..='\u{20ff}' | '\u{fe20}'..='\u{fe2f}')
}

/// A character that takes no room and shows nothing: zero-width spaces and joiners, word joiners and
/// invisible operators, the soft hyphen, the byte-order mark, tag characters. Text holding one reads
/// like text without it and is not the same.
fn invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{34f}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}'
        | '\u{206a}'..='\u{206f}' | '\u{3164}' | '\u{feff}' | '\u{ffa0}'
        | '\u{e0000}'..='\u{e007f}')
}

/// Whether `c` reorders or breaks the text it is shown in, without being a control character: the
/// Arabic letter mark, the left-to-right and right-to-left marks, the line and paragraph separators,
/// the bidirectional embeddings, overrides and isolates. Free text refuses them ([`check_text`]), and
/// the command line shows them escaped.
pub fn reorders_text(c: char) -> bool {
    matches!(
        c,
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// `text` on one line, as a log line, a mail or a file made for people shows what someone else wrote (a
/// vendor, a device, a remote server): a control character (a line end, an escape) or one that
/// [`reorders_text`] becomes `?`, so it can neither start a line of its own nor move the text around it.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || reorders_text(c) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `text` as a page shows it: every character that [`reorders_text`] replaced by U+FFFD, so what a
/// device printed or a vendor typed reads on the page in the order it was written, and the
/// replacement shows that something was there. For text the page's own script puts on screen (a
/// recording's markers, transcript hits, the player's terminal output); server-built HTML does the same
/// in its escaping.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(reorders_text) {
        text.chars()
            .map(|c| if reorders_text(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// Shortens hostile input before it is echoed back in an error message.
pub fn truncate_for_display(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Criticality {
    Normal,
    High,
    Critical,
}

impl FromStr for Criticality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(Criticality::Normal),
            "high" => Ok(Criticality::High),
            "critical" => Ok(Criticality::Critical),
            other => Err(format!(
                "invalid criticality {:?}: use normal, high or critical",
                truncate_for_display(other, 40)
            )),
        }
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Criticality::Normal => "normal",
            Criticality::High => "high",
            Criticality::Critical => "critical",
        })
    }
}

/// How chaperone carries a service: `ssh` is terminated and recorded as a terminal; `tcp` is tunnelled
/// and recorded as a connection record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Ssh,
    Tcp,
}

impl FromStr for ServiceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ssh" => Ok(ServiceKind::Ssh),
            "tcp" => Ok(ServiceKind::Tcp),
            other => Err(format!(
                "invalid service kind {:?}: use ssh or tcp",
                truncate_for_display(other, 40)
            )),
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Ssh => "ssh",
            ServiceKind::Tcp => "tcp",
        })
    }
}

/// A named port of an asset, e.g. `dicom:104/tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Service {
    pub name: String,
    pub port: u16,
    pub kind: ServiceKind,
}

impl FromStr for Service {
    type Err = String;
    /// Parses `NAME:PORT/KIND`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid service {:?}: expected NAME:PORT/KIND, e.g. ssh:22/ssh or dicom:104/tcp",
                truncate_for_display(spec, 60)
            )
        };
        let (name, rest) = spec.split_once(':').ok_or_else(bad)?;
        let (port, kind) = rest.split_once('/').ok_or_else(bad)?;
        check_name("service", name)?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {port:?} in service {name}: use 1-65535"))?;
        Ok(Service {
            name: name.to_owned(),
            port,
            kind: kind.parse()?,
        })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.name, self.port, self.kind)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Vendor {
    pub id: i64,
    pub name: String,
    pub org: String,
    pub enabled: bool,
    pub locked_until: Option<UnixTime>,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct VendorKey {
    pub id: i64,
    pub vendor_id: i64,
    /// The OpenSSH public key line without comment, e.g. `ssh-ed25519 AAAA…`.
    pub public_key: String,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub comment: String,
    pub added_at: UnixTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Approver,
    Auditor,
    Admin,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "approver" => Ok(Role::Approver),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "invalid role {:?}: use approver, auditor or admin",
                truncate_for_display(other, 40)
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StaffUser {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub enabled: bool,
    /// Whether the user finished enrollment (password and second factor set).
    pub enrolled: bool,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct Asset {
    pub id: i64,
    pub name: String,
    pub address: String,
    pub zone: String,
    pub purpose: String,
    pub criticality: Criticality,
    pub vendor_org: Option<String>,
    pub os: Option<String>,
    pub patch_status: Option<String>,
    /// The pinned SSH host key of the device's `ssh` service (`ssh-ed25519 AAAA…`).
    pub host_key: Option<String>,
    /// The account chaperone logs in as; the secret itself is never loaded into this type.
    pub credential_user: Option<String>,
    pub credential_kind: Option<CredentialKind>,
    pub services: Vec<Service>,
    pub created_at: UnixTime,
}

impl Asset {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Whether a vendor of organisation `org` may be granted this asset: the asset names no vendor
    /// organisation (any may be), or names `org` (compared without case and surrounding blanks, as
    /// staff type both). The one rule: filing a request and issuing a grant both ask it.
    pub fn serviced_by(&self, org: &str) -> bool {
        match self.vendor_org.as_deref().map(str::trim) {
            None | Some("") => true,
            Some(owner) => same_organisation(owner, org),
        }
    }
}

/// Whether two organisation names name the same organisation: equal without case and surrounding
/// blanks (staff and directories type them).
/// The organisation of a directory vendor whose entry is in no OU under the search base. Kept for them:
/// a local vendor may not be put in it (`check_local_org`), or they would share those vendors' assets.
pub const DIRECTORY_ORG: &str = "directory";

/// Whether `org` may be a local vendor's organisation: one line of text, and not [`DIRECTORY_ORG`].
pub fn check_local_org(org: &str) -> Result<(), String> {
    check_text("organisation", org, 120)?;
    if same_organisation(org, DIRECTORY_ORG) {
        return Err(format!(
            "the organisation {DIRECTORY_ORG:?} is kept for directory vendors in no OU; name the vendor's company"
        ));
    }
    Ok(())
}

pub fn same_organisation(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// What kind of secret is injected when chaperone logs in to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Key,
    Password,
}

impl FromStr for CredentialKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "key" => Ok(CredentialKind::Key),
            "password" => Ok(CredentialKind::Password),
            other => Err(format!("unknown credential kind {other:?}")),
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialKind::Key => "key",
            CredentialKind::Password => "password",
        })
    }
}

/// A grant as stored. Whether it is active *now* is the policy's question, not this type's.
#[derive(Debug, Clone, Serialize)]
pub struct GrantRow {
    pub id: i64,
    pub vendor: String,
    pub asset: String,
    pub services: Vec<String>,
    pub starts_at: UnixTime,
    pub ends_at: UnixTime,
    pub reason: String,
    pub issued_by: String,
    pub request_id: Option<i64>,
    pub revoked_at: Option<UnixTime>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
    pub created_at: UnixTime,
}

impl GrantRow {
    /// Active at `now`: started, not ended, not revoked.
    pub fn is_active(&self, now: UnixTime) -> bool {
        self.revoked_at.is_none() && self.starts_at <= now && now < self.ends_at
    }

    pub fn state(&self, now: UnixTime) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.ends_at {
            "expired"
        } else if now < self.starts_at {
            "scheduled"
        } else {
            "active"
        }
    }
}

/// An access request as stored, with what an approver needs to judge it (the asset's zone, purpose and
/// criticality, the vendor's organisation) and the approvals it has had.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRequest {
    pub id: i64,
    pub vendor: String,
    pub org: String,
    pub asset: String,
    pub zone: String,
    pub purpose: String,
    pub criticality: Criticality,
    pub services: Vec<String>,
    pub duration_secs: i64,
    pub reason: String,
    /// `pending`, `approved`, `denied`, `expired` (see [`RequestStatus`]).
    pub status: RequestStatus,
    pub created_at: UnixTime,
    /// When an undecided request lapses.
    pub expires_at: Option<UnixTime>,
    pub decided_at: Option<UnixTime>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    /// The grant an approval made.
    pub grant_id: Option<i64>,
    pub approvals: Vec<Approval>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl FromStr for RequestStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(RequestStatus::Pending),
            "approved" => Ok(RequestStatus::Approved),
            "denied" => Ok(RequestStatus::Denied),
            "expired" => Ok(RequestStatus::Expired),
            other => Err(format!(
                "invalid request status {:?}",
                truncate_for_display(other, 40)
            )),
        }
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        })
    }
}

/// One approver's approval of a request (what they approved, and how they had signed in).
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub approver: String,
    /// `passkey` or `totp`.
    pub method: String,
    pub services: Vec<String>,
    pub duration_secs: i64,
    pub at: UnixTime,
}

/// What one SSH connection did toward one asset.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub vendor: String,
    pub asset: String,
    pub grant_id: i64,
    /// `shell`, `exec`, `sftp`, `tunnel`, `jump`.
    pub kind: String,
    pub service: String,
    pub client_addr: String,
    /// The command for `exec`, the destination for a tunnel.
    pub detail: String,
    pub started_at: UnixTime,
    pub ended_at: Option<UnixTime>,
    pub end_reason: Option<String>,
    /// How it ended, as a word (one of [`SESSION_ENDS`]); `None` while live and for sessions ended before this was kept.
    pub end_cause: Option<String>,
    /// Vendor → device.
    pub bytes_up: i64,
    /// Device → vendor.
    pub bytes_down: i64,
    /// The asset's zone (its recordings' retention may depend on it).
    pub zone: String,
    /// The legal hold on the session, if any: its recordings are kept whatever their retention.
    pub hold: Option<Hold>,
    pub recordings: Vec<RecordingRow>,
}

/// A legal hold on a session (`chaperone session hold`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hold {
    pub at: UnixTime,
    /// Who placed it (an audit actor: `os:NAME`, `staff:NAME`).
    pub by: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordingRow {
    pub id: i64,
    pub session_id: String,
    /// `asciicast-v2`, `exec-stream-v1`, `transfer-log` (`recording::RecordingFormat`).
    pub format: String,
    pub path: String,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub created_at: UnixTime,
    pub closed_at: Option<UnixTime>,
    /// When retention deleted the file (its digest, path and audit events stay).
    pub deleted_at: Option<UnixTime>,
}

/// Splits a comma list of names (services in a grant) and checks each.
pub fn parse_name_list(kind: &str, list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        check_name(kind, part)?;
        if !out.iter().any(|p| p == part) {
            out.push(part.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason that reads one way to the approver and is stored another is refused.
    #[test]
    fn free_text_is_shown_as_written() {
        assert!(check_text("reason", "INC-4711 firmware check", 100).is_ok());
        assert!(check_text("reason", "Prüfung des MRT (Ärztin: Dr. Ünal)", 100).is_ok());
        // Marks a script needs (Vietnamese: two on one letter, here decomposed) pass.
        assert!(check_text("reason", "Kie\u{302}\u{301}m tra ma\u{301}y", 100).is_ok());
        for bad in [
            "INC-4711 \u{202e}KCEHC TON OD\u{202c} ok",
            "a\u{2028}b",
            "x\u{2066}y\u{2069}",
            "\u{200f}abc",
        ] {
            assert!(check_text("reason", bad, 100).is_err(), "{bad:?}");
            assert!(!shown(bad).chars().any(reorders_text), "{bad:?}");
        }
        // Invisible characters, and a column of marks drawn over the lines around it.
        let zalgo = format!("INC-2 e{}", "\u{301}".repeat(50));
        for bad in [
            "INC\u{200b}-4711",
            "a\u{2060}b",
            "\u{feff}x",
            "x\u{e0041}",
            zalgo.as_str(),
        ] {
            assert!(check_text("reason", bad, 100).is_err(), "{bad:?}");
        }
        assert_eq!(shown("a\u{202e}b\u{2069}"), "a\u{fffd}b\u{fffd}");
        assert!(matches!(
            shown("Prüfung"),
            std::borrow::Cow::Borrowed("Prüfung")
        ));
    }

    #[test]
    fn an_asset_is_granted_to_its_own_vendor_organisation() {
        let asset = |org: Option<&str>| Asset {
            id: 1,
            name: "mri-01".into(),
            address: "10.0.0.1".into(),
            zone: "radiology".into(),
            purpose: "MRI".into(),
            criticality: Criticality::Normal,
            vendor_org: org.map(str::to_owned),
            os: None,
            patch_status: None,
            host_key: None,
            credential_user: None,
            credential_kind: None,
            services: Vec::new(),
            created_at: 0,
        };
        assert!(asset(None).serviced_by("Bolt Pumps"));
        assert!(asset(Some(" ")).serviced_by("Bolt Pumps"));
        assert!(asset(Some("Acme Imaging")).serviced_by("Acme Imaging"));
        assert!(asset(Some("Acme Imaging")).serviced_by(" acme imaging"));
        assert!(!asset(Some("Acme Imaging")).serviced_by("Bolt Pumps"));
        assert!(!asset(Some("Acme Imaging")).serviced_by("Acme"));
        assert!(!asset(Some("Acme Imaging")).serviced_by(""));
    }

    #[test]
    fn names() {
        assert!(check_name("asset", "mri-01").is_ok());
        for bad in [
            "",
            "MRI",
            "a b",
            "alice+mri",
            "-x",
            "x\u{1b}[2J",
            &"a".repeat(65),
        ] {
            assert!(check_name("asset", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn services() {
        let s: Service = "dicom:104/tcp".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.port, s.kind),
            ("dicom", 104, ServiceKind::Tcp)
        );
        assert_eq!(s.to_string(), "dicom:104/tcp");
        for bad in [
            "dicom",
            "dicom:104",
            "dicom:0/tcp",
            "dicom:70000/tcp",
            "dicom:104/udp",
            "Dicom:1/tcp",
        ] {
            assert!(bad.parse::<Service>().is_err(), "{bad}");
        }
    }

    #[test]
    fn name_lists() {
        assert_eq!(
            parse_name_list("service", "ssh, dicom,ssh").unwrap(),
            ["ssh", "dicom"]
        );
        assert!(parse_name_list("service", "ssh,,dicom").is_err());
    }
}
