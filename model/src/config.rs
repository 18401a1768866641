//! Typed configuration, parsed once at start from one TOML file.
//!
//! Entry point: [`Config::load`]. Every key is known in advance (`deny_unknown_fields`), so a misspelt key
//! is an error naming the file, the line and the key. Relative paths in the file are resolved against the
//! file's own directory, so a data directory can be moved as a whole.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::action::Action;

/// The default path of the configuration file (`-c/--config`, env `CHAPERONE_CONFIG`).
pub const DEFAULT_CONFIG_PATH: &str = "chaperone.toml";

/// Why a configuration could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read config {path} (create one with `chaperone init --dir DIR`)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parsed, but a value is not acceptable.
    #[error("{path}: invalid value for `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The whole configuration, with paths already made absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (shown in errors and `serve`'s start line).
    pub path: PathBuf,
    pub ssh: SshConfig,
    pub web: WebConfig,
    pub database: DatabaseConfig,
    pub secrets: SecretsConfig,
    pub recording: RecordingConfig,
    pub budgets: BudgetConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub webhook: Option<WebhookConfig>,
    /// `[ldap]`: staff (and optionally vendors) from a directory; `None`: local accounts only.
    pub ldap: Option<LdapConfig>,
    /// The operators' listener (`/metrics`, `/healthz`, `/readyz`); `None`: not served.
    pub ops: Option<OpsConfig>,
    /// IHE ATNA audit export to a syslog collector; `None`: not sent.
    pub atna: Option<AtnaConfig>,
    /// E-mail to approvers when a request waits; `None`: not sent.
    pub mail: Option<MailConfig>,
}

/// `[ldap]`: staff from LDAP / Active Directory (search with a service account, then bind as the user),
/// their roles from group membership, and optionally vendors from a directory subtree.
#[derive(Clone)]
pub struct LdapConfig {
    /// `ldaps://HOST[:PORT]` or `ldap://HOST[:PORT]` (with `starttls`, or to a loopback address).
    pub url: String,
    /// The service account that searches for users and groups.
    pub bind_dn: String,
    /// A file holding the service account's password (read at start; never in the config itself).
    pub bind_password_file: PathBuf,
    /// Where users are searched for (subtree).
    pub user_base: String,
    /// The search filter; `{name}` is replaced by the typed name, escaped per RFC 4515.
    pub user_filter: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    pub starttls: bool,
    /// PEM file of CA certificates trusted for the directory; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long connecting (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// How long one operation (bind, search) may take.
    pub timeout: Duration,
    /// How a group names its members.
    pub group_membership: GroupMembership,
    /// Active Directory: membership through nested groups (LDAP_MATCHING_RULE_IN_CHAIN).
    pub nested_groups: bool,
    /// Group DN per role (`[ldap.roles] approver = "cn=…"`).
    pub roles: LdapRoles,
    /// Zone-scoped approvers: zone → group DN (`[ldap.zones.icu] approver = "cn=…"`). A request for an
    /// asset in such a zone is decided only by that group's members (or an admin).
    pub zone_approvers: std::collections::BTreeMap<String, String>,
    /// How often signed-in directory staff are checked against the directory again (removed from the
    /// directory or their groups: their web sessions end).
    pub recheck_interval: Duration,
    /// Wrong passwords of one name, from all addresses together within `[web] failure_window`, after
    /// which the directory is not asked for that name until the oldest slides out; `None` (0): no such
    /// cap, only the per-address one. Set it below the directory's own lockout threshold, so that
    /// nobody can lock a hospital account in the directory through chaperone's sign-in form.
    pub max_failed_binds: Option<u32>,
    /// Vendors from a directory subtree (`[ldap.vendors]`).
    pub vendors: Option<LdapVendors>,
}

impl fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .field("user_base", &self.user_base)
            .field("starttls", &self.starttls)
            .finish_non_exhaustive()
    }
}

/// How a group lists its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMembership {
    /// `member: DN` (groupOfNames, Active Directory).
    Member,
    /// `uniqueMember: DN` (groupOfUniqueNames).
    UniqueMember,
    /// `memberUid: NAME` (posixGroup).
    MemberUid,
}

impl GroupMembership {
    pub fn attribute(self) -> &'static str {
        match self {
            GroupMembership::Member => "member",
            GroupMembership::UniqueMember => "uniqueMember",
            GroupMembership::MemberUid => "memberUid",
        }
    }
}

/// `[ldap.roles]`: the group whose members get each role.
#[derive(Debug, Clone, Default)]
pub struct LdapRoles {
    pub approver: Option<String>,
    pub auditor: Option<String>,
    pub admin: Option<String>,
}

/// `[ldap.vendors]`: one OU per vendor organisation under `base`, each technician an entry with
/// `sshPublicKey` (openssh-lpk).
#[derive(Debug, Clone)]
pub struct LdapVendors {
    pub base: String,
    pub filter: String,
    /// The attribute holding the vendor's login name.
    pub name_attribute: String,
    /// How often the subtree is read again (adds, key changes, disables).
    pub sync_interval: Duration,
}

/// `[ops]`: Prometheus metrics and health checks on a listener of their own, apart from the vendors' and
/// the approvers' (bind it to loopback or a management network: it needs no sign-in).
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// e.g. `127.0.0.1:9478`.
    pub listen: SocketAddr,
}

/// How ATNA audit messages travel to the audit record repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtnaTransport {
    /// RFC 5425: syslog over TLS (octet-counted frames), port 6514 unless given.
    Tls,
    /// RFC 5426: syslog over UDP, one message per datagram, port 514 unless given. In clear, and a lost
    /// datagram is lost: for a collector on the same host or network segment.
    Udp,
}

/// `[atna]`: IHE ATNA (DICOM PS3.15 A.5) audit messages for the audit log's events, sent as syslog.
#[derive(Debug, Clone)]
pub struct AtnaConfig {
    /// As written: `tls://HOST[:PORT]` or `udp://HOST[:PORT]`.
    pub url: String,
    pub transport: AtnaTransport,
    pub host: String,
    pub port: u16,
    /// PEM CA certificates trusted for the collector; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key (ATNA's mutual node authentication), both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `AuditSourceIdentification@AuditSourceID` and the syslog HOSTNAME; default `ssh.public_host`.
    pub audit_source_id: String,
    /// `AuditEnterpriseSiteID` (the hospital), when set.
    pub enterprise_site_id: Option<String>,
}

/// `[mail]`: a notice to the approvers of an asset's zone when a vendor's request waits for a decision,
/// sent by SMTP submission with STARTTLS (always: a notice names a device, a vendor and a reason).
#[derive(Clone)]
pub struct MailConfig {
    /// As written: `smtp://HOST[:PORT]` (port 587 unless given).
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The envelope and `From:` address (`chaperone@hospital.example`).
    pub from: String,
    /// SMTP AUTH PLAIN after STARTTLS, when both are set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates trusted for the mail server; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Who is told about a request for an asset in a zone without a list of its own.
    pub to: Vec<String>,
    /// Per-zone lists (`[mail.zones] radiology = ["rad-approvers@hospital.example"]`): they replace `to`.
    pub zones: std::collections::BTreeMap<String, Vec<String>>,
}

impl MailConfig {
    /// The addresses told about a request for an asset in `zone` (empty: nobody, nothing is sent).
    pub fn recipients(&self, zone: &str) -> &[String] {
        self.zones.get(zone).unwrap_or(&self.to)
    }
}

impl fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailConfig")
            .field("url", &self.url)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("to", &self.to)
            .field("zones", &self.zones)
            .finish()
    }
}

/// Limits on what vendors may ask for.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The longest a vendor may ask for, unless the asset's zone says otherwise.
    pub max_request: Duration,
    /// Per-zone maximum durations (`[policy.zones.radiology] max_request = "4h"`).
    pub zone_max_request: std::collections::BTreeMap<String, Duration>,
    /// How long a request waits for a decision before it lapses.
    pub request_ttl: Duration,
    /// Requests one vendor may have waiting for a decision at once (`max_pending_per_vendor`); the next
    /// is refused, so one vendor cannot flood the approvers' list.
    pub max_pending_per_vendor: u32,
}

impl PolicyConfig {
    /// The longest duration a request for an asset in `zone` may ask for.
    pub fn max_request_in(&self, zone: &str) -> Duration {
        self.zone_max_request
            .get(zone)
            .copied()
            .unwrap_or(self.max_request)
    }
}

/// Where new requests, decisions and alerts are announced (JSON POST signed with HMAC-SHA256; see
/// `src/webhook.rs` and the README).
#[derive(Clone)]
pub struct WebhookConfig {
    /// `https://…`, or `http://` to a loopback address only.
    pub url: String,
    /// The HMAC key; the receiver checks `X-Chaperone-Signature: sha256=HEX` with it.
    pub secret: String,
    /// Audit actions that are sent (named in the config as stored, e.g. `request.file`).
    pub events: Vec<Action>,
    /// PEM file of CA certificates trusted for the receiver; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Deliveries tried per event before it is given up (and `webhook.undelivered` audited).
    pub max_attempts: u32,
}

/// The audit actions a webhook sends unless `webhook.events` says otherwise.
pub const DEFAULT_WEBHOOK_EVENTS: &[Action] = &[
    Action::RequestFile,
    Action::RequestApprove,
    Action::RequestDeny,
    Action::RequestExpire,
    Action::GrantRevoke,
    Action::SessionTerminate,
    Action::BudgetExceeded,
    Action::AuthLock,
    Action::TargetHostkeyMismatch,
];

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_webhook_url(&self.url))
            .field("secret", &"***")
            .field("events", &self.events)
            .field("ca_file", &self.ca_file)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// Byte budgets (the exfiltration guard), per vendor, asset and service and hour, each direction: they count
/// every session kind, shells, exec, sftp/scp and tunnels alike (`[budgets]`; `[tunnels]` is its old name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Applies to every service without its own entry.
    pub default: BudgetPolicy,
    /// Overrides by service name (`[budgets.services.dicom]`).
    pub services: std::collections::BTreeMap<String, BudgetPolicy>,
}

impl BudgetConfig {
    pub fn policy_for(&self, service: &str) -> &BudgetPolicy {
        self.services.get(service).unwrap_or(&self.default)
    }
}

/// How many bytes may cross a service's tunnels per hour, and what happens past that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetPolicy {
    /// Device → vendor bytes per hour; `None`: unlimited.
    pub max_down_per_hour: Option<u64>,
    /// Vendor → device bytes per hour; `None`: unlimited.
    pub max_up_per_hour: Option<u64>,
    pub action: BudgetAction,
}

/// What crossing a budget does. Both are audited (and sent to the webhook when one is configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetAction {
    /// Audit and alert, keep the tunnel open.
    Alert,
    /// Audit, alert and close the tunnel.
    Cut,
}

/// The vendors' SSH listener.
#[derive(Debug, Clone)]
pub struct SshConfig {
    pub listen: SocketAddr,
    /// The ed25519 host key vendors pin (OpenSSH private key format).
    pub host_key: PathBuf,
    /// Failed logins within `failure_window` that lock a vendor.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// How long a locked vendor stays locked.
    pub lockout: Duration,
    /// Upper bound on concurrent vendor connections, signed in or not; past it a new one is closed at once.
    pub max_connections: usize,
    /// A connection that has not signed in by then is closed (OpenSSH's `LoginGraceTime`).
    pub login_grace_time: Duration,
    /// How long a vendor has to use their passkey in the browser once ssh shows its link: the login
    /// grace time is extended to it (once per connection).
    pub passkey_wait: Duration,
    /// Early drop of connections that have not signed in yet (OpenSSH's `MaxStartups`).
    pub max_startups: MaxStartups,
    /// Connections not signed in yet from one address at most (OpenSSH's `PerSourceMaxStartups`).
    pub per_source_max_startups: usize,
    /// Signed-in connections one vendor may hold at once: past it their next sign-in is refused with
    /// the reason, so that no vendor can fill `max_connections` and lock every other vendor out.
    pub max_connections_per_vendor: usize,
    /// A signed-in connection with no activity for this long is closed, its sessions told why; `None`
    /// (`"off"`): never. What counts is `live::idle::counts` (typing in a terminal, bytes of a transfer
    /// or tunnel, a command without a terminal while it runs), a channel opened, a bastion command
    /// running; SSH keepalives and other protocol messages are not activity.
    pub idle_timeout: Option<Duration>,
    /// A connection whose client takes nothing the bastion sends for this long, while something waits
    /// to be sent, is closed (its ssh hung, suspended, or a script that stopped reading its socket);
    /// `None` (`"off"`): never. Applies before and after sign-in, and to a jump's inner connection.
    pub send_timeout: Option<Duration>,
    /// Channels (sessions, tunnels) one connection may hold open at once.
    pub max_channels: usize,
    /// Sessions of one grant carried on one device connection at most: the devices' sshd `MaxSessions`
    /// (OpenSSH's default is 10). A device that allows fewer refuses a channel; the bastion then holds
    /// that grant's device connections to what the device took and gives the refused sessions new ones.
    pub device_sessions_per_connection: usize,
    /// How vendors address the bastion (`HOST` in the commands chaperone prints), e.g. `bastion.hospital.org`.
    pub public_host: String,
}

/// `start:rate:full` as OpenSSH reads `MaxStartups`: with `start` connections not yet signed in, a new one
/// is dropped with probability `rate`%, rising linearly to 100% at `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    pub start: usize,
    pub rate: u8,
    pub full: usize,
}

impl MaxStartups {
    /// Parses `start:rate:full` (or a single number: `start = full`, drop everything past it).
    pub fn parse(text: &str) -> Result<MaxStartups, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("{text:?}: expected start:rate:full, e.g. 30:30:100"))
        };
        let parts: Vec<&str> = text.split(':').collect();
        let m = match parts.as_slice() {
            [n] => {
                let n = number(n)?;
                MaxStartups {
                    start: n,
                    rate: 100,
                    full: n,
                }
            }
            [start, rate, full] => MaxStartups {
                start: number(start)?,
                rate: u8::try_from(number(rate)?)
                    .ok()
                    .filter(|r| *r <= 100)
                    .ok_or_else(|| format!("{text:?}: the rate is a percentage, 0 to 100"))?,
                full: number(full)?,
            },
            _ => {
                return Err(format!(
                    "{text:?}: expected start:rate:full, e.g. 30:30:100"
                ));
            }
        };
        if m.start == 0 || m.full < m.start {
            return Err(format!("{text:?}: need 1 <= start <= full"));
        }
        Ok(m)
    }

    /// The chance, in percent, that a new connection is dropped while `unauthenticated` others are open.
    pub fn drop_percent(&self, unauthenticated: usize) -> u32 {
        if unauthenticated < self.start {
            return 0;
        }
        if unauthenticated >= self.full {
            return 100;
        }
        let span = (self.full - self.start) as u64;
        let into = (unauthenticated - self.start) as u64;
        let rate = u64::from(self.rate);
        // Linear from `rate` at `start` to 100 at `full`; `span` > 0 here since start <= u < full.
        u32::try_from(rate + (100 - rate) * into / span).unwrap_or(100)
    }
}

/// The approvers' and auditors' web listener.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// The address people type into a browser; used in enrollment links.
    pub public_url: String,
    /// PEM certificate chain and private key the web page is served with (`chaperone init` makes a
    /// self-signed pair).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Signed-in staff are signed out after this long without a request they made (the page's live
    /// refresh does not count).
    pub idle_timeout: Duration,
    /// Signed-in staff are signed out this long after they signed in, active or not: a stolen cookie or
    /// a session left open on a ward PC does not last for ever.
    pub max_session_age: Duration,
    /// Failed sign-ins of one account from one source address within `failure_window` that refuse
    /// that account from that address (other addresses are not affected) until the window slides.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// The TLS handshake and a request's head (and then its body) must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long without a byte from the client.
    pub keepalive_timeout: Duration,
    /// Open web connections at most, in all and from one address (an IPv6 /64).
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

/// Where state lives: SQLite (embedded default) or PostgreSQL (several nodes).
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (PATH relative to the config file) or `postgres://…`.
    pub url: String,
    /// How long this node keeps its sessions without a complete re-read of the database (grants,
    /// terminations, vendors): past it they end, cause `lost`, since a revocation made on another node
    /// would go unseen. At most [`DATABASE_LEASE_MAX`].
    pub lease: Duration,
}

/// The longest `[database] lease`: other nodes take a node whose heartbeat is 30 s old for gone and end
/// its sessions' rows; it must have closed them itself before that.
pub const DATABASE_LEASE_MAX: Duration = Duration::from_secs(25);

impl fmt::Debug for DatabaseConfig {
    /// A PostgreSQL URL may carry a password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("lease", &self.lease)
            .finish()
    }
}

/// Where the key that encrypts secrets at rest lives.
#[derive(Debug, Clone)]
pub struct SecretsConfig {
    pub key_file: PathBuf,
}

/// Session recordings.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    pub dir: PathBuf,
    /// Record what the vendor types at a terminal (`i` events). Off by default: typed passwords must not
    /// land in recordings. A command without a terminal has its stdin recorded always (it is a program's
    /// input, a script for `sh`, not keystrokes).
    pub record_input: bool,
    /// A recording reaching this many bytes ends its session (no recording, no session); `None`: no cap.
    pub max_bytes: Option<u64>,
    /// The ed25519 key (OpenSSH format, mode 0600) that signs evidence bundles (`SHA256SUMS.sig`).
    pub signing_key: PathBuf,
    /// How long a recording is kept after its session ended, unless the asset's zone says otherwise.
    pub retain: Retain,
    /// Per-zone retention (`[recording.zones.icu] retain = "10y"`).
    pub zone_retain: std::collections::BTreeMap<String, Retain>,
}

impl RecordingConfig {
    /// How long the recordings of a session on an asset in `zone` are kept.
    pub fn retain_in(&self, zone: &str) -> Retain {
        self.zone_retain.get(zone).copied().unwrap_or(self.retain)
    }

    /// The shortest retention of any zone (`None`: every recording is kept forever): no recording of a
    /// session that ended later than this before now can be due.
    pub fn shortest_retention(&self) -> Option<Duration> {
        std::iter::once(self.retain)
            .chain(self.zone_retain.values().copied())
            .filter_map(|r| match r {
                Retain::Forever => None,
                Retain::For(d) => Some(d),
            })
            .min()
    }
}

/// How long recordings are kept after their session ended (`[recording] retain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// Never deleted (the default).
    Forever,
    /// Deleted once this long has passed since the session ended (and no legal hold is on it).
    For(Duration),
}

impl Retain {
    /// Until when a recording of a session that ended at `ended_at` is kept; `None`: forever.
    pub fn kept_until(self, ended_at: i64) -> Option<i64> {
        match self {
            Retain::Forever => None,
            Retain::For(d) => {
                Some(ended_at.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
            }
        }
    }
}

impl fmt::Display for Retain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retain::Forever => f.write_str("forever"),
            Retain::For(d) => {
                let days = d.as_secs() / 86_400;
                if days % YEAR_DAYS == 0 {
                    write!(f, "{}y", days / YEAR_DAYS)
                } else {
                    write!(f, "{days}d")
                }
            }
        }
    }
}

/// The days a year counts in a retention period: 366, so that "6y" never falls short of six calendar
/// years, whichever leap days they hold (it keeps at most six days longer).
pub const YEAR_DAYS: u64 = 366;

/// Parses a retention period: `forever`, or a number of days, weeks or years (`90d`, `12w`, `6y`,
/// `1y180d`). Hours and minutes are refused, so `6m` cannot mean six minutes when six months were meant,
/// and so is anything shorter than a day.
pub fn parse_retain(text: &str) -> Result<Retain, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("forever") {
        return Ok(Retain::Forever);
    }
    let hint = "use days, weeks or years (90d, 12w, 6y) or \"forever\"";
    if text.is_empty() {
        return Err(format!("empty retention: {hint}"));
    }
    let mut days: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 1,
            'w' => 7,
            'y' => YEAR_DAYS,
            _ => return Err(format!("{text:?}: unknown unit {c:?}: {hint}")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: expected a number before {c:?}"))?;
        number.clear();
        days = n
            .checked_mul(unit)
            .and_then(|v| days.checked_add(v))
            .filter(|&d| d <= 1000 * YEAR_DAYS)
            .ok_or_else(|| format!("{text:?}: too long (use \"forever\")"))?;
    }
    if !number.is_empty() {
        return Err(format!("{text:?}: a unit is required: {hint}"));
    }
    if days == 0 {
        return Err(format!("{text:?}: must be at least a day"));
    }
    Ok(Retain::For(Duration::from_secs(days * 86_400)))
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `chaperone=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

/// `web.public_url` (already `https://`): printed to staff's terminals, put in vendors' passkey prompts
/// and in mail, and the base of every link: an address with a host, in printable ASCII, without user
/// information, query or fragment.
fn check_public_url(url: &str) -> Result<(), String> {
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be printable ASCII without spaces (an internationalised name in its xn-- form)"
                .into(),
        );
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let authority = uri.authority().map(http::uri::Authority::as_str);
    match authority {
        None | Some("") => Err(format!("{url:?} names no host")),
        Some(a) if a.contains('@') => Err(format!("{url:?} must not carry user information")),
        Some(_) if uri.host().is_none_or(str::is_empty) => Err(format!("{url:?} names no host")),
        Some(_) if url.contains(['?', '#']) => {
            Err(format!("{url:?} must not have a query or fragment"))
        }
        Some(_) => Ok(()),
    }
}

/// `log.level`: comma-separated directives, each a level or `TARGET=LEVEL`. A bare word that is not a
/// level (`verbose`) reads to the log filter as a target's name and would silence every line, the
/// start-up warnings too: refused.
fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    for directive in text.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            return Err(format!(
                "{directive:?} is not a level ({}) or TARGET=LEVEL, e.g. \"info\" or \"info,chaperone=debug\"",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

impl DatabaseConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }

    /// The SQLite database file, for an embedded database.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.url.strip_prefix("sqlite://").map(std::path::Path::new)
    }
}

/// Whether `host` (a name, an address, or a bracketed IPv6 address) is this machine: `localhost` or a
/// loopback address. Clear text to anything else crosses a network.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A webhook URL must be `https://`, or `http://` to a loopback address (a receiver on the same host):
/// the body names vendors, assets and reasons, and must not cross the network in clear.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let shown = redact_webhook_url(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL ({e})"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{shown:?} has no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{shown:?}: put no credentials in the URL (the body is signed with `secret`)"
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            if is_loopback_host(host) {
                Ok(())
            } else {
                Err(format!(
                    "{shown:?}: http:// is allowed only to a loopback address; use https://"
                ))
            }
        }
        _ => Err(format!("{shown:?} must start with https://")),
    }
}

/// A webhook URL as shown in errors and logs: scheme and host only. Receivers often carry their token
/// in the path or query (`/services/T0/B0/SECRET`, `?token=`), and the URL sits in logs people share.
pub fn redact_webhook_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Credentials in the authority are refused anyway; never show them either.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = &rest[end..];
    if tail.is_empty() || tail == "/" {
        format!("{scheme}://{host}{tail}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

/// A database URL as shown in errors, logs and `Debug`: `scheme://user:***@host/db?sslmode=require`.
/// The URL is read the way sqlx reads it (the `url` crate, WHATWG): the userinfo ends at the authority's
/// last `@`, so a password may itself hold `@`; a query parameter's value is shown only for the keys
/// that are never secret, since `?password=` is a password too.
pub fn redact_url(url: &str) -> String {
    const SHOWN_PARAMETERS: [&str; 7] = [
        "sslmode",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "application_name",
    ];
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        None => tail.to_owned(),
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').unwrap_or((query, ""));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if !SHOWN_PARAMETERS.contains(&key) => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = if fragment.is_empty() { "" } else { "#…" };
            format!("{path}?{}{fragment}", query.join("&"))
        }
    };
    format!("{scheme}://{authority}{tail}")
}

// ---- the file's shape -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    recording: RawRecording,
    budgets: Option<RawBudgets>,
    /// The old name of `[budgets]`, still read.
    tunnels: Option<RawBudgets>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    policy: RawPolicy,
    webhook: Option<RawWebhook>,
    ldap: Option<RawLdap>,
    ops: Option<RawOps>,
    atna: Option<RawAtna>,
    mail: Option<RawMail>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    url: String,
    bind_dn: String,
    bind_password_file: String,
    user_base: String,
    #[serde(default = "default_user_filter")]
    user_filter: String,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<String>,
    #[serde(default = "default_ldap_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "default_ldap_timeout")]
    timeout: String,
    #[serde(default = "default_group_membership")]
    group_membership: String,
    #[serde(default)]
    nested_groups: bool,
    #[serde(default = "default_recheck_interval")]
    recheck_interval: String,
    #[serde(default)]
    max_failed_binds: u32,
    #[serde(default)]
    roles: RawLdapRoles,
    #[serde(default)]
    zones: std::collections::BTreeMap<String, RawLdapZone>,
    vendors: Option<RawLdapVendors>,
}

fn default_user_filter() -> String {
    "(uid={name})".into()
}
fn default_ldap_connect_timeout() -> String {
    "5s".into()
}
fn default_ldap_timeout() -> String {
    "10s".into()
}
fn default_group_membership() -> String {
    "member".into()
}
fn default_recheck_interval() -> String {
    "5m".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLdapRoles {
    approver: Option<String>,
    auditor: Option<String>,
    admin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    url: String,
    from: String,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    zones: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdapZone {
    approver: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdapVendors {
    base: String,
    #[serde(default = "default_vendor_filter")]
    filter: String,
    #[serde(default = "default_vendor_name_attribute")]
    name_attribute: String,
    #[serde(default = "default_recheck_interval")]
    sync_interval: String,
}

fn default_vendor_filter() -> String {
    "(objectClass=ldapPublicKey)".into()
}
fn default_vendor_name_attribute() -> String {
    "uid".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAtna {
    url: String,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    audit_source_id: Option<String>,
    enterprise_site_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    max_request: String,
    request_ttl: String,
    max_pending_per_vendor: u32,
    zones: std::collections::BTreeMap<String, RawZone>,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            max_request: "8h".into(),
            request_ttl: "1h".into(),
            max_pending_per_vendor: 5,
            zones: Default::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    max_request: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret: String,
    events: Option<Vec<String>>,
    ca_file: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    max_down_per_hour: Option<String>,
    max_up_per_hour: Option<String>,
    action: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBudgets {
    max_down_per_hour: String,
    max_up_per_hour: String,
    action: String,
    services: std::collections::BTreeMap<String, RawBudget>,
}

impl Default for RawBudgets {
    fn default() -> Self {
        // Seed 002: alert when a device sends more than 5 MB in an hour.
        RawBudgets {
            max_down_per_hour: "5MB".into(),
            max_up_per_hour: "none".into(),
            action: "alert".into(),
            services: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSsh {
    listen: String,
    host_key: String,
    max_failures: u32,
    failure_window: String,
    lockout: String,
    max_connections: usize,
    login_grace_time: String,
    passkey_wait: String,
    max_startups: String,
    per_source_max_startups: usize,
    max_connections_per_vendor: usize,
    idle_timeout: String,
    send_timeout: String,
    max_channels: usize,
    device_sessions_per_connection: usize,
    public_host: Option<String>,
}

impl Default for RawSsh {
    fn default() -> Self {
        RawSsh {
            listen: "0.0.0.0:2222".into(),
            host_key: "ssh_host_ed25519_key".into(),
            max_failures: 5,
            failure_window: "10m".into(),
            lockout: "15m".into(),
            max_connections: 1024,
            login_grace_time: "60s".into(),
            passkey_wait: "2m".into(),
            max_startups: "30:30:100".into(),
            per_source_max_startups: 10,
            max_connections_per_vendor: 64,
            idle_timeout: "30m".into(),
            send_timeout: "5m".into(),
            max_channels: 256,
            device_sessions_per_connection: 10,
            public_host: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWeb {
    listen: String,
    public_url: Option<String>,
    tls_cert: String,
    tls_key: String,
    idle_timeout: String,
    max_session_age: String,
    max_failures: u32,
    failure_window: String,
    header_read_timeout: String,
    keepalive_timeout: String,
    max_connections: usize,
    max_connections_per_address: usize,
}

impl Default for RawWeb {
    fn default() -> Self {
        RawWeb {
            listen: "0.0.0.0:8443".into(),
            public_url: None,
            tls_cert: "web_cert.pem".into(),
            tls_key: "web_key.pem".into(),
            idle_timeout: "15m".into(),
            max_session_age: "12h".into(),
            max_failures: 5,
            failure_window: "15m".into(),
            header_read_timeout: "10s".into(),
            keepalive_timeout: "5s".into(),
            max_connections: 512,
            max_connections_per_address: 64,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
    lease: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: "sqlite://chaperone.db".into(),
            lease: "20s".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecrets {
    key_file: String,
}

impl Default for RawSecrets {
    fn default() -> Self {
        RawSecrets {
            key_file: "secrets.key".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRecording {
    dir: String,
    record_input: bool,
    max_bytes: String,
    signing_key: String,
    retain: String,
    zones: std::collections::BTreeMap<String, RawRecordingZone>,
}

impl Default for RawRecording {
    fn default() -> Self {
        RawRecording {
            dir: "recordings".into(),
            record_input: false,
            max_bytes: "4GB".into(),
            signing_key: "evidence_ed25519_key".into(),
            retain: "forever".into(),
            zones: Default::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecordingZone {
    retain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Settings that are valid but expose something: `serve` logs each at start (warn) and `doctor`
    /// prints them. Every other outbound channel refuses clear text to a non-loopback host; these two
    /// are allowed because some sites need them, not because they are safe.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = &self.atna
            && a.transport == AtnaTransport::Udp
            && !is_loopback_host(&a.host)
        {
            out.push(format!(
                "atna.url {} sends audit messages (names, addresses, reasons) in clear over UDP: \
                 unauthenticated, unacknowledged, lost without a word; use tls://",
                a.url
            ));
        }
        if let Some(o) = &self.ops
            && !o.listen.ip().is_loopback()
        {
            out.push(format!(
                "[ops] listen {} answers anyone who reaches it without a sign-in (metrics: when grants \
                 are active and sessions live); keep it on loopback or a management network",
                o.listen
            ));
        }
        out
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Absolute, so no path depends on where a later command runs: the recordings' paths are stored
        // as resolved (`serve -c chaperone.toml` stored `./recordings/…`, which a command run from
        // another directory, or a service started from `/`, then read as outside the recordings
        // directory: ALTERED, never deleted by retention).
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let duration = |key: &'static str, value: &str| {
            parse_duration(value).map_err(|message| invalid(key, message))
        };
        let addr = |key: &'static str, value: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|e| invalid(key, format!("{value:?} is not HOST:PORT ({e})")))
        };

        let ssh_listen = addr("ssh.listen", &raw.ssh.listen)?;
        let public_host = match raw.ssh.public_host {
            Some(h)
                if !h.is_empty()
                    && h.len() <= 253
                    && h.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    }) =>
            {
                h
            }
            Some(h) => {
                return Err(invalid(
                    "ssh.public_host",
                    format!("{h:?} is not a host name"),
                ));
            }
            None if ssh_listen.ip().is_unspecified() => "bastion".to_owned(),
            None => ssh_listen.ip().to_string(),
        };
        let ssh = SshConfig {
            listen: ssh_listen,
            public_host,
            host_key: resolve(&raw.ssh.host_key),
            max_failures: match raw.ssh.max_failures {
                0 => return Err(invalid("ssh.max_failures", "must be at least 1".into())),
                n => n,
            },
            failure_window: duration("ssh.failure_window", &raw.ssh.failure_window)?,
            lockout: duration("ssh.lockout", &raw.ssh.lockout)?,
            max_connections: match raw.ssh.max_connections {
                0 => return Err(invalid("ssh.max_connections", "must be at least 1".into())),
                n => n,
            },
            login_grace_time: match duration("ssh.login_grace_time", &raw.ssh.login_grace_time)? {
                d if d > Duration::from_secs(600) => {
                    return Err(invalid(
                        "ssh.login_grace_time",
                        "must be at most 10m".into(),
                    ));
                }
                d => d,
            },
            passkey_wait: match duration("ssh.passkey_wait", &raw.ssh.passkey_wait)? {
                d if d < Duration::from_secs(20) || d > Duration::from_secs(600) => {
                    return Err(invalid(
                        "ssh.passkey_wait",
                        "must be between 20s and 10m".into(),
                    ));
                }
                d => d,
            },
            max_startups: MaxStartups::parse(&raw.ssh.max_startups)
                .map_err(|m| invalid("ssh.max_startups", m))?,
            per_source_max_startups: match raw.ssh.per_source_max_startups {
                0 => {
                    return Err(invalid(
                        "ssh.per_source_max_startups",
                        "must be at least 1".into(),
                    ));
                }
                n => n,
            },
            max_connections_per_vendor: match raw.ssh.max_connections_per_vendor {
                0 => {
                    return Err(invalid(
                        "ssh.max_connections_per_vendor",
                        "must be at least 1".into(),
                    ));
                }
                n => n,
            },
            idle_timeout: match raw.ssh.idle_timeout.trim() {
                "off" => None,
                text => Some(duration("ssh.idle_timeout", text)?),
            },
            send_timeout: match raw.ssh.send_timeout.trim() {
                "off" => None,
                text => Some(duration("ssh.send_timeout", text)?),
            },
            max_channels: match raw.ssh.max_channels {
                0 => return Err(invalid("ssh.max_channels", "must be at least 1".into())),
                n => n,
            },
            device_sessions_per_connection: match raw.ssh.device_sessions_per_connection {
                n @ 1..=1024 => n,
                _ => {
                    return Err(invalid(
                        "ssh.device_sessions_per_connection",
                        "must be between 1 and 1024".into(),
                    ));
                }
            },
        };
        let web_listen = addr("web.listen", &raw.web.listen)?;
        let public_url = match raw.web.public_url {
            // The web listener speaks TLS only, and this address is what enrollment, passkey and mail
            // links are built on: an `http://` one would send their one-time tokens in clear on a
            // first visit (before any HSTS), for anyone on the path to replay over https.
            Some(url) if url.starts_with("https://") => {
                check_public_url(&url).map_err(|m| invalid("web.public_url", m))?;
                url.trim_end_matches('/').to_owned()
            }
            Some(url) => {
                return Err(invalid(
                    "web.public_url",
                    format!(
                        "{url:?} must start with https:// (the web page is served over TLS only, and \
                         its links carry one-time tokens)"
                    ),
                ));
            }
            // Browsers offer passkeys only for a DNS name, so a loopback listener is `localhost`.
            None if web_listen.ip().is_loopback() => {
                format!("https://localhost:{}", web_listen.port())
            }
            None => format!("https://{web_listen}"),
        };
        let header_read_timeout =
            duration("web.header_read_timeout", &raw.web.header_read_timeout)?;
        let keepalive_timeout = duration("web.keepalive_timeout", &raw.web.keepalive_timeout)?;
        if keepalive_timeout > header_read_timeout {
            // hyper's head clock starts when a kept-alive connection waits for its next request.
            return Err(invalid(
                "web.keepalive_timeout",
                "must not be longer than web.header_read_timeout, which also bounds a kept-alive \
                 connection's wait for its next request"
                    .into(),
            ));
        }
        let at_least_one = |key: &'static str, n: usize| match n {
            0 => Err(invalid(key, "must be at least 1".into())),
            n => Ok(n),
        };
        let web = WebConfig {
            listen: web_listen,
            public_url,
            tls_cert: resolve(&raw.web.tls_cert),
            tls_key: resolve(&raw.web.tls_key),
            idle_timeout: duration("web.idle_timeout", &raw.web.idle_timeout)?,
            max_session_age: match duration("web.max_session_age", &raw.web.max_session_age)? {
                d if d < Duration::from_secs(1) => {
                    return Err(invalid("web.max_session_age", "must be at least 1s".into()));
                }
                d => d,
            },
            max_failures: match raw.web.max_failures {
                0 => return Err(invalid("web.max_failures", "must be at least 1".into())),
                n => n,
            },
            failure_window: duration("web.failure_window", &raw.web.failure_window)?,
            header_read_timeout,
            keepalive_timeout,
            max_connections: at_least_one("web.max_connections", raw.web.max_connections)?,
            max_connections_per_address: at_least_one(
                "web.max_connections_per_address",
                raw.web.max_connections_per_address,
            )?,
        };
        let lease = duration("database.lease", &raw.database.lease)?;
        if lease > DATABASE_LEASE_MAX || lease < Duration::from_secs(2) {
            return Err(invalid(
                "database.lease",
                format!(
                    "{:?} must be 2s to {}s (other nodes take a node silent for 30 s for gone)",
                    raw.database.lease,
                    DATABASE_LEASE_MAX.as_secs()
                ),
            ));
        }
        let database = if let Some(file) = raw.database.url.strip_prefix("sqlite://") {
            if file.is_empty() {
                return Err(invalid(
                    "database.url",
                    "sqlite:// needs a file name".into(),
                ));
            }
            DatabaseConfig {
                url: format!("sqlite://{}", resolve(file).display()),
                lease,
            }
        } else if raw.database.url.starts_with("postgres://")
            || raw.database.url.starts_with("postgresql://")
        {
            DatabaseConfig {
                url: raw.database.url,
                lease,
            }
        } else {
            return Err(invalid(
                "database.url",
                format!(
                    "{:?} must start with sqlite:// or postgres://",
                    redact_url(&raw.database.url)
                ),
            ));
        };
        let (budgets_key, raw_budgets) = match (raw.budgets, raw.tunnels) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "tunnels",
                    "[tunnels] is the old name of [budgets]: keep only [budgets]".into(),
                ));
            }
            (Some(b), None) => ("budgets", b),
            (None, Some(t)) => ("tunnels", t),
            (None, None) => ("budgets", RawBudgets::default()),
        };
        let budgets = budget_config(raw_budgets).map_err(|(key, m)| {
            // Named as in the file: `tunnels.services.*.action` when it still says [tunnels].
            let key = key.replacen("budgets", budgets_key, 1);
            invalid(budgets_key, format!("{key}: {m}"))
        })?;
        // A request longer than any grant could never be approved as asked.
        let max_request = |key: &'static str, value: &str| {
            let d = duration(key, value)?;
            if d > crate::model::MAX_GRANT {
                return Err(invalid(
                    key,
                    format!(
                        "{value:?} is longer than the longest grant ({})",
                        format_duration(crate::model::MAX_GRANT)
                    ),
                ));
            }
            Ok(d)
        };
        let mut zone_max_request = std::collections::BTreeMap::new();
        for (zone, z) in &raw.policy.zones {
            // A key no zone can have (`ICU`, a space) would never apply, and the default would,
            // silently: refused, as for `[ldap.zones]`.
            crate::model::check_name("zone", zone).map_err(|m| invalid("policy.zones", m))?;
            zone_max_request.insert(
                zone.clone(),
                max_request("policy.zones.*.max_request", &z.max_request)?,
            );
        }
        let policy = PolicyConfig {
            max_request: max_request("policy.max_request", &raw.policy.max_request)?,
            zone_max_request,
            request_ttl: duration("policy.request_ttl", &raw.policy.request_ttl)?,
            max_pending_per_vendor: match raw.policy.max_pending_per_vendor {
                0 => {
                    return Err(invalid(
                        "policy.max_pending_per_vendor",
                        "must be at least 1".into(),
                    ));
                }
                n => n,
            },
        };
        let webhook = match raw.webhook {
            None => None,
            Some(w) => {
                if let Err(message) = check_webhook_url(&w.url) {
                    return Err(invalid("webhook.url", message));
                }
                if w.secret.len() < 16 {
                    return Err(invalid(
                        "webhook.secret",
                        "must be at least 16 characters".into(),
                    ));
                }
                let events = match w.events {
                    None => DEFAULT_WEBHOOK_EVENTS.to_vec(),
                    Some(names) => {
                        let mut events = Vec::with_capacity(names.len());
                        for name in names {
                            // Budget crossings of every session kind share one action since
                            // [tunnels] became [budgets]; a list naming the old one still gets them.
                            let name = if name == "tunnel.budget.exceeded" {
                                "budget.exceeded"
                            } else {
                                name.as_str()
                            };
                            // A misspelt name would silently never be sent: every name must be an action.
                            let Some(action) = Action::parse(name) else {
                                return Err(invalid(
                                    "webhook.events",
                                    format!(
                                        "{name:?} is not an audit action name (like \"request.file\")"
                                    ),
                                ));
                            };
                            if action == Action::WebhookUndelivered {
                                // Giving one up would make another to give up, forever, while the
                                // receiver is down.
                                return Err(invalid(
                                    "webhook.events",
                                    "\"webhook.undelivered\" cannot be sent by the webhook it is about"
                                        .into(),
                                ));
                            }
                            events.push(action);
                        }
                        events
                    }
                };
                let max_attempts = w.max_attempts.unwrap_or(10);
                if !(1..=100).contains(&max_attempts) {
                    return Err(invalid(
                        "webhook.max_attempts",
                        "must be between 1 and 100".into(),
                    ));
                }
                Some(WebhookConfig {
                    url: w.url,
                    secret: w.secret,
                    events,
                    ca_file: w.ca_file.as_deref().map(resolve),
                    max_attempts,
                })
            }
        };
        let ldap = match raw.ldap {
            None => None,
            Some(l) => Some(ldap_config(l, &resolve).map_err(|(key, m)| invalid(key, m))?),
        };
        let ops = match raw.ops {
            None => None,
            Some(o) => Some(OpsConfig {
                listen: addr("ops.listen", &o.listen)?,
            }),
        };
        let atna = match raw.atna {
            None => None,
            Some(a) => Some(
                atna_config(a, &ssh.public_host, &resolve).map_err(|(key, m)| invalid(key, m))?,
            ),
        };
        let mail = match raw.mail {
            None => None,
            Some(m) => Some(mail_config(m, &resolve).map_err(|(key, m)| invalid(key, m))?),
        };
        check_log_level(&raw.log.level).map_err(|m| invalid("log.level", m))?;
        Ok(Config {
            path: path.to_owned(),
            ssh,
            web,
            database,
            secrets: SecretsConfig {
                key_file: resolve(&raw.secrets.key_file),
            },
            recording: RecordingConfig {
                dir: resolve(&raw.recording.dir),
                record_input: raw.recording.record_input,
                max_bytes: parse_size(&raw.recording.max_bytes)
                    .map_err(|m| invalid("recording.max_bytes", m))?,
                signing_key: resolve(&raw.recording.signing_key),
                retain: parse_retain(&raw.recording.retain)
                    .map_err(|m| invalid("recording.retain", m))?,
                zone_retain: raw
                    .recording
                    .zones
                    .iter()
                    .map(|(zone, z)| {
                        crate::model::check_name("zone", zone)
                            .map_err(|m| invalid("recording.zones", m))?;
                        parse_retain(&z.retain)
                            .map(|r| (zone.clone(), r))
                            .map_err(|m| invalid("recording.zones.*.retain", m))
                    })
                    .collect::<Result<_, _>>()?,
            },
            budgets,
            log: LogConfig {
                level: raw.log.level,
            },
            policy,
            webhook,
            ldap,
            ops,
            atna,
            mail,
        })
    }
}

/// `[ldap]`, checked: a URL that keeps passwords off the network in clear, a filter with `{name}`, at
/// least one role mapped. An error names the key.
fn ldap_config(
    raw: RawLdap,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<LdapConfig, (&'static str, String)> {
    // Shown without the password a URL may carry (errors reach the journal).
    let shown = redact_url(&raw.url);
    let duration = |key: &'static str, value: &str| parse_duration(value).map_err(|m| (key, m));
    let uri: http::Uri = raw
        .url
        .parse()
        .map_err(|e| ("ldap.url", format!("{shown:?} is not a URL ({e})")))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(("ldap.url", format!("{shown:?} has no host")))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err((
            "ldap.url",
            format!(
                "{:?}: put the search base in ldap.user_base, not the URL",
                shown
            ),
        ));
    }
    let loopback = is_loopback_host(host);
    match uri.scheme_str() {
        Some("ldaps") => {
            if raw.starttls {
                return Err((
                    "ldap.starttls",
                    "ldaps:// is TLS from the start: StartTLS is for ldap:// URLs".into(),
                ));
            }
        }
        Some("ldap") if raw.starttls || loopback => {}
        Some("ldap") => {
            return Err((
                "ldap.url",
                format!(
                    "{:?}: passwords would cross the network in clear; use ldaps:// or set starttls = true (plain ldap:// only to a loopback address)",
                    shown
                ),
            ));
        }
        _ => {
            return Err((
                "ldap.url",
                format!("{shown:?} must start with ldaps:// or ldap://"),
            ));
        }
    }
    if !raw.user_filter.contains("{name}") {
        return Err((
            "ldap.user_filter",
            format!("{:?} must contain {{name}}", raw.user_filter),
        ));
    }
    let group_membership = match raw.group_membership.as_str() {
        "member" => GroupMembership::Member,
        "uniqueMember" => GroupMembership::UniqueMember,
        "memberUid" => GroupMembership::MemberUid,
        other => {
            return Err((
                "ldap.group_membership",
                format!("{other:?}: use member, uniqueMember or memberUid"),
            ));
        }
    };
    if raw.nested_groups && group_membership != GroupMembership::Member {
        return Err((
            "ldap.nested_groups",
            "nested groups (Active Directory's matching rule in chain) work with member only"
                .into(),
        ));
    }
    let nonempty = |key: &'static str, v: Option<String>| match v {
        Some(v) if v.trim().is_empty() => Err((key, "must not be empty".to_owned())),
        v => Ok(v),
    };
    let roles = LdapRoles {
        approver: nonempty("ldap.roles.approver", raw.roles.approver)?,
        auditor: nonempty("ldap.roles.auditor", raw.roles.auditor)?,
        admin: nonempty("ldap.roles.admin", raw.roles.admin)?,
    };
    let mut zone_approvers = std::collections::BTreeMap::new();
    for (zone, z) in raw.zones {
        crate::model::check_name("zone", &zone).map_err(|m| ("ldap.zones", m))?;
        if z.approver.trim().is_empty() {
            return Err(("ldap.zones.*.approver", "must not be empty".into()));
        }
        zone_approvers.insert(zone, z.approver);
    }
    if roles.approver.is_none()
        && roles.auditor.is_none()
        && roles.admin.is_none()
        && zone_approvers.is_empty()
    {
        return Err((
            "ldap.roles",
            "map at least one group to a role ([ldap.roles] approver = \"cn=…\")".into(),
        ));
    }
    for (key, v) in [
        ("ldap.bind_dn", &raw.bind_dn),
        ("ldap.user_base", &raw.user_base),
    ] {
        if v.trim().is_empty() {
            return Err((key, "must not be empty".into()));
        }
    }
    let vendors = match raw.vendors {
        None => None,
        Some(v) => {
            if v.base.trim().is_empty() {
                return Err(("ldap.vendors.base", "must not be empty".into()));
            }
            Some(LdapVendors {
                base: v.base,
                filter: v.filter,
                name_attribute: v.name_attribute,
                sync_interval: duration("ldap.vendors.sync_interval", &v.sync_interval)?,
            })
        }
    };
    let positive = |key: &'static str, value: &str| {
        let d = duration(key, value)?;
        if d.is_zero() {
            return Err((key, "must be longer than 0s".to_owned()));
        }
        Ok(d)
    };
    Ok(LdapConfig {
        url: raw.url,
        bind_dn: raw.bind_dn,
        bind_password_file: resolve(&raw.bind_password_file),
        user_base: raw.user_base,
        user_filter: raw.user_filter,
        starttls: raw.starttls,
        ca_file: raw.ca_file.as_deref().map(resolve),
        connect_timeout: positive("ldap.connect_timeout", &raw.connect_timeout)?,
        timeout: positive("ldap.timeout", &raw.timeout)?,
        group_membership,
        nested_groups: raw.nested_groups,
        roles,
        zone_approvers,
        recheck_interval: positive("ldap.recheck_interval", &raw.recheck_interval)?,
        max_failed_binds: (raw.max_failed_binds > 0).then_some(raw.max_failed_binds),
        vendors,
    })
}

/// A bare address (`local@domain`), checked strictly: it goes into SMTP commands and a header, so no
/// space, no control character, no `<>`, `,`, `;` or quote may pass.
fn mail_address(key: &'static str, value: &str) -> Result<String, (&'static str, String)> {
    let ok = value.len() <= 254
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && local
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err((
            key,
            format!("{value:?} is not a plain e-mail address (local@domain, no name or brackets)"),
        ))
    }
}

/// `[mail]`: the submission server (STARTTLS only), the sender, and who is told for which zone.
fn mail_config(
    raw: RawMail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MailConfig, (&'static str, String)> {
    // Shown without the password a URL may carry (errors reach the journal).
    let shown = redact_url(&raw.url);
    let Some(rest) = raw.url.strip_prefix("smtp://") else {
        return Err((
            "mail.url",
            format!(
                "{:?} must be smtp://HOST[:PORT] (submission with STARTTLS, port 587 by default)",
                shown
            ),
        ));
    };
    if rest.contains('@') {
        return Err((
            "mail.url",
            format!(
                "{shown:?} carries credentials: put them in mail.username and mail.password, not the URL"
            ),
        ));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ("mail.url", format!("{shown:?} has no valid port")))?,
        ),
        _ => (rest, 587),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(("mail.url", format!("{shown:?} has no valid host")));
    }
    if raw.username.is_some() != raw.password.is_some() {
        return Err(("mail.username", "username and password go together".into()));
    }
    if let Some(name) = &raw.username
        && (name.is_empty() || name.chars().any(char::is_control))
    {
        return Err(("mail.username", "must be printable and not empty".into()));
    }
    if raw
        .password
        .as_deref()
        .is_some_and(|p| p.chars().any(|c| c == '\0'))
    {
        return Err(("mail.password", "must not contain NUL".into()));
    }
    let to = raw
        .to
        .iter()
        .map(|a| mail_address("mail.to", a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut zones = std::collections::BTreeMap::new();
    for (zone, list) in raw.zones {
        crate::model::check_name("zone", &zone).map_err(|m| ("mail.zones", m))?;
        let list = list
            .iter()
            .map(|a| mail_address("mail.zones", a))
            .collect::<Result<Vec<_>, _>>()?;
        zones.insert(zone, list);
    }
    if to.is_empty() && zones.values().all(Vec::is_empty) {
        return Err((
            "mail.to",
            "no recipient: set mail.to and/or [mail.zones] lists".into(),
        ));
    }
    Ok(MailConfig {
        url: raw.url.clone(),
        host: host.to_owned(),
        port,
        from: mail_address("mail.from", &raw.from)?,
        username: raw.username,
        password: raw.password,
        ca_file: raw.ca_file.as_deref().map(resolve),
        to,
        zones,
    })
}

/// `[atna]`: the collector's URL, its TLS trust and our client certificate, and how we name ourselves.
fn atna_config(
    raw: RawAtna,
    public_host: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<AtnaConfig, (&'static str, String)> {
    // Shown without the password a URL may carry (errors reach the journal).
    let shown = redact_url(&raw.url);
    let (transport, rest, default_port) = if let Some(rest) = raw.url.strip_prefix("tls://") {
        (AtnaTransport::Tls, rest, 6514)
    } else if let Some(rest) = raw.url.strip_prefix("udp://") {
        (AtnaTransport::Udp, rest, 514)
    } else {
        return Err((
            "atna.url",
            format!(
                "{:?} must be tls://HOST[:PORT] (RFC 5425) or udp://HOST[:PORT] (RFC 5426)",
                shown
            ),
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        // `[::1]:6514`, `host:6514`; a bare IPv6 address needs brackets.
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ("atna.url", format!("{shown:?} has no valid port")))?,
        ),
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(("atna.url", format!("{shown:?} has no valid host")));
    }
    if transport == AtnaTransport::Udp
        && (raw.ca_file.is_some() || raw.client_cert.is_some() || raw.client_key.is_some())
    {
        return Err((
            "atna.url",
            "ca_file, client_cert and client_key need tls:// (udp:// is in clear)".into(),
        ));
    }
    if raw.client_cert.is_some() != raw.client_key.is_some() {
        return Err((
            "atna.client_cert",
            "client_cert and client_key go together".into(),
        ));
    }
    // The source id is also the syslog HOSTNAME (printable ASCII, no spaces).
    let printable = |key: &'static str, v: String, space: bool| {
        if v.is_empty()
            || v.len() > 255
            || !v
                .chars()
                .all(|c| c.is_ascii_graphic() || (space && c == ' '))
        {
            Err((key, format!("{v:?}: 1 to 255 printable ASCII characters")))
        } else {
            Ok(v)
        }
    };
    Ok(AtnaConfig {
        url: raw.url.clone(),
        transport,
        host: host.to_owned(),
        port,
        ca_file: raw.ca_file.as_deref().map(resolve),
        client_cert: raw.client_cert.as_deref().map(resolve),
        client_key: raw.client_key.as_deref().map(resolve),
        audit_source_id: printable(
            "atna.audit_source_id",
            raw.audit_source_id
                .unwrap_or_else(|| public_host.to_owned()),
            false,
        )?,
        enterprise_site_id: raw
            .enterprise_site_id
            .map(|v| printable("atna.enterprise_site_id", v, true))
            .transpose()?,
    })
}

/// `[budgets]` (or its old name `[tunnels]`): the default policy and the per-service ones. An error names
/// the key (`budgets.services.*.action`) and what is wrong with it.
fn budget_config(raw: RawBudgets) -> Result<BudgetConfig, (&'static str, String)> {
    let size = |key: &'static str, value: &str| parse_size(value).map_err(|m| (key, m));
    let action = |key: &'static str, value: &str| match value {
        "alert" => Ok(BudgetAction::Alert),
        "cut" => Ok(BudgetAction::Cut),
        other => Err((key, format!("{other:?}: use alert or cut"))),
    };
    let default = BudgetPolicy {
        max_down_per_hour: size("budgets.max_down_per_hour", &raw.max_down_per_hour)?,
        max_up_per_hour: size("budgets.max_up_per_hour", &raw.max_up_per_hour)?,
        action: action("budgets.action", &raw.action)?,
    };
    let mut services = std::collections::BTreeMap::new();
    for (name, b) in raw.services {
        crate::model::check_name("service", &name).map_err(|m| ("budgets.services", m))?;
        let policy = BudgetPolicy {
            max_down_per_hour: match &b.max_down_per_hour {
                Some(v) => size("budgets.services.*.max_down_per_hour", v)?,
                None => default.max_down_per_hour,
            },
            max_up_per_hour: match &b.max_up_per_hour {
                Some(v) => size("budgets.services.*.max_up_per_hour", v)?,
                None => default.max_up_per_hour,
            },
            action: match &b.action {
                Some(v) => action("budgets.services.*.action", v)?,
                None => default.action,
            },
        };
        services.insert(name, policy);
    }
    Ok(BudgetConfig { default, services })
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses durations such as `90s`, `10m`, `2h`, `1d`, `1h30m`. A bare number is refused: units are required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (use e.g. 30m, 2h, 1d)".into());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: expected a number before {c:?}"))?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?}: too long"))?;
    }
    if !number.is_empty() {
        return Err(format!("{text:?}: a unit is required (e.g. {number}m)"));
    }
    if total == 0 {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// Parses byte sizes such as `5MB`, `500KB`, `2GB`, `1024B`, or `none` (unlimited). Units are decimal
/// (1 MB = 1,000,000 bytes), as people read them on a transfer.
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 5MB, 500KB, 2GB or none"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit (use B, KB, MB, GB, TB or none)"
            ));
        }
    };
    n.checked_mul(mult)
        .map(Some)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// Formats a duration the way `parse_duration` reads it, e.g. `1h30m`.
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

/// The annotated file `chaperone init` writes. Paths are relative to the file.
pub fn annotated_template(ssh_listen: SocketAddr, web_listen: SocketAddr) -> String {
    format!(
        r#"# chaperone configuration. Paths are relative to this file.
# Every key is checked at start: a misspelt key is an error naming this file and the line.

[ssh]
# Where vendors connect with their OpenSSH client.
listen = "{ssh_listen}"
# The bastion's ed25519 host key (vendors pin its fingerprint).
host_key = "ssh_host_ed25519_key"
# Failed logins within failure_window lock the vendor for lockout.
max_failures = 5
failure_window = "10m"
lockout = "15m"
# Concurrent vendor connections at most, signed in or not (past it a new one is closed at once).
max_connections = 1024
# Before sign-in (as OpenSSH's LoginGraceTime, MaxStartups and PerSourceMaxStartups): a connection that
# has not signed in within login_grace_time is closed; with start:rate:full connections not yet signed in,
# a new one is dropped with rate% chance, rising to 100% at full; and one address may hold at most
# per_source_max_startups of them, so a flood from one address cannot lock the others out.
login_grace_time = "60s"
# A vendor who answers the code prompt with Enter gets a link to use their passkey in a browser; the
# login grace time is extended (once per connection) so they have this long for it.
passkey_wait = "2m"
max_startups = "30:30:100"
per_source_max_startups = 10
# Signed-in connections one vendor may hold at once; past it their next sign-in is refused, saying why
# (no vendor can fill max_connections and lock the others out).
max_connections_per_vendor = 64
# A signed-in connection with no activity for this long is closed ("off": never), its terminal and
# command sessions told a minute before and at the end. Activity: typing in a terminal (not its output),
# bytes either way of a transfer or tunnel, a command without a terminal while it runs, a channel opened,
# `request` waiting. SSH keepalives are not activity.
idle_timeout = "30m"
# A connection whose client takes nothing the bastion sends for this long, while output waits for it
# (its ssh hung or suspended, a script that stopped reading), is closed ("off": never).
send_timeout = "5m"
# Sessions and tunnels one connection may hold open at once.
max_channels = 256
# The sessions of one grant share device connections, this many each at most: your devices' sshd
# MaxSessions (OpenSSH's default, 10). A device that allows fewer refuses the extra channels, and the
# bastion learns its limit for that grant (the refused sessions get new connections).
device_sessions_per_connection = 10
# How vendors address the bastion, used in the commands chaperone prints to them.
# public_host = "bastion.hospital.example"

[web]
# The approvers' and auditors' web page.
listen = "{web_listen}"
# The address people open in a browser (enrollment links; the passkeys' relying party, which must be a
# DNS name the certificate names: passkeys are not offered on an IP address). Default: https://localhost:PORT
# for a loopback listener, else https://LISTEN.
# public_url = "https://bastion.hospital.example:8443"
# TLS certificate chain and key (PEM). `chaperone init` made a self-signed pair; replace them with the
# hospital's certificate for production.
tls_cert = "web_cert.pem"
tls_key = "web_key.pem"
# Signed-in staff are signed out after this long without activity (the page's live refresh is not
# activity).
idle_timeout = "15m"
# ... and this long after they signed in, active or not.
max_session_age = "12h"
# Failed sign-ins of one account from one address (an IPv6 /64) within failure_window refuse that account
# from that address only, until the window slides; sign-ins from elsewhere are not affected.
max_failures = 5
failure_window = "15m"
# Slow clients: the TLS handshake and a request's head (then its body) must arrive within
# header_read_timeout; a connection with no request in flight is closed after keepalive_timeout of
# silence (at most header_read_timeout).
header_read_timeout = "10s"
keepalive_timeout = "5s"
# Open connections at most, in all and from one address; more are closed at once.
max_connections = 512
max_connections_per_address = 64

[policy]
# The longest a vendor may request access for, and how long a request waits for a decision.
max_request = "8h"
request_ttl = "1h"
# Requests one vendor may have waiting for a decision at once; the next one is refused.
max_pending_per_vendor = 5
# Per-zone maximum, e.g.:
# [policy.zones.icu]
# max_request = "2h"

# Announce new requests, decisions and alerts (JSON POST, header X-Chaperone-Signature: sha256=HMAC-SHA256
# of the body with `secret`; retried with backoff, in order). See README, "Webhook".
# [webhook]
# url = "https://chat.hospital.example/hooks/chaperone"   # http:// only to a loopback address
# secret = "at least 16 random characters"
# events = ["request.file", "request.approve", "request.deny", "request.expire", "grant.revoke",
#           "session.terminate", "budget.exceeded", "auth.lock", "target.hostkey.mismatch"]
# ca_file = "webhook_ca.pem"   # trust this CA for the receiver instead of the system's roots
# max_attempts = 10            # then the event is given up and `webhook.undelivered` is audited

# Staff (and optionally vendors) from LDAP / Active Directory (README: "LDAP / Active Directory").
# [ldap]
# url = "ldaps://dc1.hospital.example"          # or ldap://… with starttls = true (plain only to loopback)
# starttls = false
# ca_file = "directory_ca.pem"                  # else the system's roots
# bind_dn = "cn=chaperone-svc,ou=service,dc=hospital,dc=example"
# bind_password_file = "ldap_bind_password"     # mode 0600; never the password itself here
# user_base = "ou=staff,dc=hospital,dc=example"
# user_filter = "(uid={{name}})"                # AD: "(sAMAccountName={{name}})"; the name is escaped
# group_membership = "member"                   # or uniqueMember, memberUid
# nested_groups = false                         # AD: true (LDAP_MATCHING_RULE_IN_CHAIN)
# connect_timeout = "5s"
# timeout = "10s"
# recheck_interval = "5m"                       # removed from the groups: web sessions end within this
# max_failed_binds = 0                          # wrong passwords of one name from all addresses within
#                                               # [web] failure_window before the directory is no longer
#                                               # asked; set below the directory's lockout threshold
# [ldap.roles]
# approver = "cn=pacs-approvers,ou=groups,dc=hospital,dc=example"
# auditor = "cn=audit,ou=groups,dc=hospital,dc=example"
# admin = "cn=chaperone-admins,ou=groups,dc=hospital,dc=example"
# [ldap.zones.icu]
# approver = "cn=icu-clinical-engineering,ou=groups,dc=hospital,dc=example"
# [ldap.vendors]                                # one OU per vendor organisation, keys in sshPublicKey
# base = "ou=vendors,dc=hospital,dc=example"
# sync_interval = "5m"
# Prometheus metrics (/metrics) and health checks (/healthz, /readyz) for the operators, on a listener of
# their own with no sign-in: keep it on loopback or a management network. Off unless set.
# [ops]
# listen = "127.0.0.1:9478"

# IHE ATNA audit messages (DICOM PS3.15 A.5) to the hospital's audit record repository, as syslog over TLS
# (RFC 5425, tls://HOST[:6514]) or UDP (RFC 5426, udp://HOST[:514], in clear). Sent from the audit log
# in order from a cursor kept across restarts, retried while the collector refuses or closes the
# connection (over UDP nothing is acknowledged: prefer TLS). See README, "IHE ATNA".
# [atna]
# url = "tls://arr.hospital.example:6514"
# ca_file = "atna_ca.pem"           # trust this CA for the collector instead of the system's roots
# client_cert = "atna_cert.pem"     # ATNA's mutual node authentication (both or neither)
# client_key = "atna_key.pem"
# audit_source_id = "bastion-1"     # default: ssh.public_host
# enterprise_site_id = "St Example Hospital"

# E-mail to approvers when a vendor's request waits for a decision, with a link to it (web.public_url).
# SMTP submission with STARTTLS (always); retried from the audit log until the request is decided or lapses.
# [mail]
# url = "smtp://mail.hospital.example:587"
# from = "chaperone@hospital.example"
# username = "chaperone"            # AUTH PLAIN after STARTTLS (both or neither)
# password = "..."
# ca_file = "mail_ca.pem"           # trust this CA for the mail server instead of the system's roots
# to = ["it-security@hospital.example"]           # any zone without a list of its own
# [mail.zones]
# radiology = ["radiology-approvers@hospital.example"]

[database]
# SQLite file (embedded default) or postgres://user:password@host/db for several nodes.
url = "sqlite://chaperone.db"
# How long this node keeps its sessions open without hearing from the database (a complete re-read of
# grants, terminations and vendors): past it they end (cause "lost"), since a revocation made on another
# node would go unseen. 2s to 25s.
lease = "20s"

[secrets]
# 32-byte key that encrypts device credentials and TOTP seeds (mode 0600). See SECURITY.md to rotate it.
key_file = "secrets.key"

[recording]
# Session recordings (asciicast v2, transfer logs). Must be writable: no recording, no session.
dir = "recordings"
# Record what vendors type at a terminal. Off by default: typed passwords must not land in recordings.
# (A command without a terminal, `ssh host sh < script`, has its stdin recorded always.)
record_input = false
# A recording that reaches this size ends its session (no recording, no session). "none": no cap.
max_bytes = "4GB"
# The ed25519 key that signs evidence bundles (`chaperone evidence export`; mode 0600, never replaced
# except by `chaperone evidence signer --rotate`). Hand `chaperone evidence signer`'s line to inspectors.
signing_key = "evidence_ed25519_key"
# How long recordings are kept after their session ended: "forever", or days, weeks, years (90d, 6y;
# a year counts 366 days). Past it a daily job deletes the file; its digest and audit events stay.
# A legal hold (`chaperone session hold ID --reason …`) keeps a session's recordings until released.
retain = "forever"
# Per zone of the asset, e.g.:
# [recording.zones.icu]
# retain = "10y"

[budgets]
# The exfiltration guard: bytes per vendor, asset and service per hour, each direction, through every
# kind of session: shells, commands and file transfers on the ssh service, and tunnels (ssh -L/-W).
# Crossing a budget is audited (budget.exceeded); with action = "cut" the session is also closed.
# Sizes: 500KB, 5MB, 2GB, or "none". Default: alert when a device sends more than 5 MB in an hour.
# (This section was called [tunnels] before; that name is still read.)
max_down_per_hour = "5MB"
max_up_per_hour = "none"
action = "alert"
# Per service name, e.g. DICOM studies are large but should never leave in bulk unnoticed:
# [budgets.services.dicom]
# max_down_per_hour = "500MB"
# action = "cut"

[log]
# A tracing filter; RUST_LOG overrides it.
level = "info"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/chaperone/chaperone.toml"), text)
    }

    #[test]
    fn relative_paths_resolve_to_absolute_ones_whatever_the_config_path() {
        let here = std::env::current_dir().unwrap();
        for (config, dir) in [
            ("chaperone.toml", here.clone()),
            ("data/chaperone.toml", here.join("data")),
            (
                "/srv/chaperone/chaperone.toml",
                PathBuf::from("/srv/chaperone"),
            ),
        ] {
            let c = Config::parse(Path::new(config), "").unwrap();
            assert_eq!(c.recording.dir, dir.join("recordings"), "{config}");
            assert!(c.recording.dir.is_absolute() && c.secrets.key_file.is_absolute());
            let url = &c.database.url;
            assert!(
                url.starts_with(&format!("sqlite://{}", dir.display())),
                "{url}"
            );
        }
    }

    /// A password written into a URL never reaches the error that refuses the URL (it goes to the
    /// journal); mail and ATNA take no credentials there, and say where they go.
    #[test]
    fn a_password_in_a_url_is_not_shown_in_its_error() {
        for (section, url) in [
            ("mail", "smtp://u:hunter2@mail.hospital.example:587"),
            ("mail", "smtp://u:hunter2@mail.hospital.example:5x7"),
            ("atna", "tls://u:hunter2@arr.hospital.example:6514"),
            ("ldap", "ldap://u:hunter2@dc.hospital.example"),
        ] {
            let extra = match section {
                "mail" => "from = \"c@hospital.example\"\nto = [\"a@hospital.example\"]\n",
                "ldap" => {
                    "bind_dn = \"cn=svc,dc=x\"\nbind_password_file = \"pw\"\nuser_base = \"dc=x\"\n"
                }
                _ => "",
            };
            let err = parse(&format!("[{section}]\nurl = \"{url}\"\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("hunter2"), "{section}: {err}");
            assert!(err.contains(&format!("{section}.")), "{section}: {err}");
        }
        let err = parse(
            "[mail]\nurl = \"smtp://u:hunter2@mail.hospital.example\"\nfrom = \"c@hospital.example\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mail.username"), "{err}");
    }

    #[test]
    fn ldap_section_keeps_passwords_off_the_network_in_clear() {
        let ldap = |url: &str, extra: &str| {
            parse(&format!(
                "[ldap]\nurl = \"{url}\"\nbind_dn = \"cn=svc,dc=x\"\nbind_password_file = \"pw\"\n\
                 user_base = \"ou=people,dc=x\"\n{extra}\n[ldap.roles]\napprover = \"cn=a,dc=x\"\n"
            ))
        };
        let ok = ldap("ldaps://dc.hospital.example", "").unwrap();
        let l = ok.ldap.unwrap();
        assert_eq!(l.user_filter, "(uid={name})");
        assert_eq!(l.group_membership, GroupMembership::Member);
        assert_eq!(l.connect_timeout, Duration::from_secs(5));
        assert!(l.bind_password_file.is_absolute());
        assert!(ldap("ldap://dc.hospital.example:389", "starttls = true").is_ok());
        assert!(ldap("ldap://127.0.0.1:3389", "").is_ok());
        for (url, extra, key) in [
            ("ldap://dc.hospital.example", "", "ldap.url"),
            (
                "ldaps://dc.hospital.example",
                "starttls = true",
                "ldap.starttls",
            ),
            ("http://dc.hospital.example", "", "ldap.url"),
            ("ldaps://dc/dc=x", "", "ldap.url"),
            (
                "ldaps://dc",
                "user_filter = \"(uid=x)\"",
                "ldap.user_filter",
            ),
            (
                "ldaps://dc",
                "group_membership = \"members\"",
                "ldap.group_membership",
            ),
            (
                "ldaps://dc",
                "group_membership = \"memberUid\"\nnested_groups = true",
                "ldap.nested_groups",
            ),
            ("ldaps://dc", "timeout = \"0s\"", "ldap.timeout"),
        ] {
            match ldap(url, extra) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{url} {extra}"),
                other => panic!("{url} {extra}: {other:?}"),
            }
        }
        // no role mapped at all, and an unknown key
        let none = parse(
            "[ldap]\nurl = \"ldaps://dc\"\nbind_dn = \"x\"\nbind_password_file = \"pw\"\nuser_base = \"x\"\n",
        );
        assert!(matches!(
            none,
            Err(ConfigError::Invalid {
                key: "ldap.roles",
                ..
            })
        ));
        assert!(matches!(
            ldap("ldaps://dc", "bind_password = \"x\""),
            Err(ConfigError::Parse { .. })
        ));
        let zoned = parse(
            "[ldap]\nurl = \"ldaps://dc\"\nbind_dn = \"x\"\nbind_password_file = \"pw\"\nuser_base = \"x\"\n\
             [ldap.zones.icu]\napprover = \"cn=icu,dc=x\"\n[ldap.vendors]\nbase = \"ou=vendors,dc=x\"\n",
        )
        .unwrap()
        .ldap
        .unwrap();
        assert_eq!(zoned.zone_approvers["icu"], "cn=icu,dc=x");
        assert_eq!(zoned.vendors.unwrap().filter, "(objectClass=ldapPublicKey)");
    }

    #[test]
    fn webhook_urls_are_shown_without_path_query_or_credentials() {
        for (url, shown) in [
            (
                "https://hooks.example/services/T0/B0/SECRET",
                "https://hooks.example/…",
            ),
            (
                "https://hooks.example:8443/h?token=SECRET",
                "https://hooks.example:8443/…",
            ),
            ("https://u:pw@hooks.example/x", "https://hooks.example/…"),
            ("https://hooks.example", "https://hooks.example"),
            ("http://127.0.0.1:9/", "http://127.0.0.1:9/"),
            ("hooks.example/SECRET", "(not a URL)"),
        ] {
            assert_eq!(redact_webhook_url(url), shown, "{url}");
        }
        let err = check_webhook_url("http://hooks.example/services/SECRET").unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn webhook_urls_secrets_and_events_are_checked() {
        let hook = |body: &str| parse(&format!("[webhook]\n{body}\n"));
        let secret = "secret = \"0123456789abcdef\"";
        let ok = hook(&format!(
            "url = \"https://hooks.example/x?token=1\"\n{secret}"
        ))
        .unwrap();
        let w = ok.webhook.unwrap();
        assert_eq!(w.max_attempts, 10);
        assert!(w.events.contains(&Action::RequestFile));
        assert!(w.ca_file.is_none());
        assert!(format!("{w:?}").contains("***"));
        for local in [
            "http://127.0.0.1:9/h",
            "http://[::1]:9/h",
            "http://localhost/h",
        ] {
            assert!(
                hook(&format!("url = \"{local}\"\n{secret}")).is_ok(),
                "{local}"
            );
        }
        for (url, says) in [
            ("http://10.1.2.3/h", "loopback"),
            ("ftp://x/h", "https://"),
            ("https://user:pw@x/h", "no credentials"),
            ("not a url", "not a URL"),
        ] {
            let msg = hook(&format!("url = \"{url}\"\n{secret}"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(says), "{url}: {msg}");
            assert!(!msg.contains(":pw@"), "{msg}");
        }
        let short = hook("url = \"https://x/h\"\nsecret = \"short\"").unwrap_err();
        assert!(short.to_string().contains("at least 16"));
        let bad = hook(&format!(
            "url = \"https://x/h\"\n{secret}\nevents = [\"Request File\"]"
        ));
        assert!(bad.unwrap_err().to_string().contains("audit action"));
        // Well-formed but no action: it used to pass, and nothing was ever delivered.
        let typo = hook(&format!(
            "url = \"https://x/h\"\n{secret}\nevents = [\"request.aprove\"]"
        ));
        assert!(typo.unwrap_err().to_string().contains("\"request.aprove\""));
        let looping = hook(&format!(
            "url = \"https://x/h\"\n{secret}\nevents = [\"webhook.undelivered\"]"
        ));
        assert!(looping.is_err());
        let zero = hook(&format!(
            "url = \"https://x/h\"\n{secret}\nmax_attempts = 0"
        ));
        assert!(zero.unwrap_err().to_string().contains("between 1 and 100"));
        let ca = hook(&format!(
            "url = \"https://x/h\"\n{secret}\nca_file = \"ca.pem\""
        ));
        assert_eq!(
            ca.unwrap().webhook.unwrap().ca_file.unwrap(),
            Path::new("/etc/chaperone/ca.pem")
        );
    }

    #[test]
    fn template_parses_and_resolves_paths() {
        let text = annotated_template(
            "127.0.0.1:2222".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.ssh.listen.port(), 2222);
        assert_eq!(
            c.ssh.host_key,
            Path::new("/etc/chaperone/ssh_host_ed25519_key")
        );
        assert_eq!(c.database.url, "sqlite:///etc/chaperone/chaperone.db");
        assert_eq!(c.ssh.failure_window, Duration::from_secs(600));
        assert!(!c.recording.record_input);
        assert_eq!(
            c.recording.signing_key,
            Path::new("/etc/chaperone/evidence_ed25519_key")
        );
        assert_eq!(c.recording.retain, Retain::Forever);
        assert_eq!(c.recording.shortest_retention(), None);
    }

    #[test]
    fn exposed_settings_are_warned_about() {
        let template = annotated_template(
            "127.0.0.1:2222".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        );
        assert!(parse(&template).unwrap().warnings().is_empty());
        let with = |extra: &str| parse(&format!("{template}\n{extra}\n")).unwrap().warnings();
        assert!(with("[ops]\nlisten = \"127.0.0.1:9478\"").is_empty());
        let ops = with("[ops]\nlisten = \"0.0.0.0:9478\"");
        assert!(
            ops.len() == 1 && ops[0].contains("without a sign-in"),
            "{ops:?}"
        );
        assert!(with("[atna]\nurl = \"udp://[::1]:514\"").is_empty());
        assert!(with("[atna]\nurl = \"tls://arr.hospital.example\"").is_empty());
        let udp = with("[atna]\nurl = \"udp://arr.hospital.example\"");
        assert!(
            udp.len() == 1 && udp[0].contains("in clear over UDP"),
            "{udp:?}"
        );
    }

    /// Issue 11: `[recording] retain`, per zone; units a retention is counted in (no minutes).
    #[test]
    fn issue_11_retention_parses_per_zone_and_refuses_minutes() {
        let day = |n: u64| Retain::For(Duration::from_secs(n * 86_400));
        assert_eq!(parse_retain("forever").unwrap(), Retain::Forever);
        assert_eq!(parse_retain("6y").unwrap(), day(6 * 366));
        assert_eq!(parse_retain("90d").unwrap(), day(90));
        assert_eq!(parse_retain("1y2w3d").unwrap(), day(366 + 17));
        for bad in [
            "6m",
            "12h",
            "0d",
            "",
            "6",
            "y",
            "99999999999999999999y",
            "2000y",
        ] {
            assert!(parse_retain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(day(6 * 366).to_string(), "6y");
        assert_eq!(day(90).to_string(), "90d");
        let c = parse(
            "[recording]\nretain = \"6y\"\n[recording.zones.icu]\nretain = \"10y\"\n\
             [recording.zones.lab]\nretain = \"30d\"\n",
        )
        .unwrap();
        assert_eq!(c.recording.retain_in("radiology"), day(6 * 366));
        assert_eq!(c.recording.retain_in("icu"), day(10 * 366));
        assert_eq!(
            c.recording.shortest_retention(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(day(30).kept_until(1000), Some(1000 + 30 * 86_400));
        assert_eq!(Retain::Forever.kept_until(1000), None);
        let e = parse("[recording]\nretain = \"6m\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recording.retain") && e.contains("unknown unit"),
            "{e}"
        );
        let e = parse("[recording.zones.icu]\nretain = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("recording.zones.*.retain"), "{e}");
    }

    #[test]
    fn web_limits_default_match_the_template_and_are_checked() {
        let template = parse(&annotated_template(
            "127.0.0.1:2222".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        ))
        .unwrap()
        .web;
        let default = parse("").unwrap().web;
        for w in [&template, &default] {
            assert_eq!(w.max_failures, 5);
            assert_eq!(w.failure_window, Duration::from_secs(900));
            assert_eq!(w.header_read_timeout, Duration::from_secs(10));
            assert_eq!(w.keepalive_timeout, Duration::from_secs(5));
            assert_eq!(
                (w.max_connections, w.max_connections_per_address),
                (512, 64)
            );
        }
        for (body, key) in [
            ("keepalive_timeout = \"20s\"", "web.keepalive_timeout"),
            ("max_connections = 0", "web.max_connections"),
            (
                "max_connections_per_address = 0",
                "web.max_connections_per_address",
            ),
            ("max_failures = 0", "web.max_failures"),
            ("header_read_timeout = \"0s\"", "web.header_read_timeout"),
        ] {
            let msg = parse(&format!("[web]\n{body}\n")).unwrap_err().to_string();
            assert!(msg.contains(key), "{body}: {msg}");
        }
    }

    #[test]
    fn policy_limits_have_safe_defaults_and_are_bounded() {
        let c = parse("").unwrap();
        assert_eq!(c.policy.max_pending_per_vendor, 5);
        let c = parse("[policy]\nmax_pending_per_vendor = 2\n").unwrap();
        assert_eq!(c.policy.max_pending_per_vendor, 2);
        let msg = parse("[policy]\nmax_pending_per_vendor = 0\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("policy.max_pending_per_vendor"), "{msg}");
        // No request may ask for longer than a grant can last.
        assert!(parse("[policy]\nmax_request = \"30d\"\n").is_ok());
        let msg = parse("[policy]\nmax_request = \"31d\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("policy.max_request") && msg.contains("30d"),
            "{msg}"
        );
        let zone = parse("[policy.zones.icu]\nmax_request = \"60d\"\n");
        assert!(zone.is_err());
    }

    /// A zone key no asset's zone can match (zone names are lowercase) would never apply, and the
    /// default would instead, silently: refused wherever zones key a table.
    #[test]
    fn zone_keys_are_zone_names() {
        assert!(parse("[policy.zones.icu]\nmax_request = \"4h\"\n").is_ok());
        for (text, key) in [
            ("[policy.zones.ICU]\nmax_request = \"4h\"\n", "policy.zones"),
            (
                "[recording.zones.\"ic u\"]\nretain = \"10y\"\n",
                "recording.zones",
            ),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    /// The page speaks TLS only, and its links carry one-time tokens: no `http://` address.
    #[test]
    fn public_url_is_https() {
        let url = |u: &str| parse(&format!("[web]\npublic_url = \"{u}\"\n"));
        assert_eq!(
            url("https://bastion.hospital.example:8443/")
                .unwrap()
                .web
                .public_url,
            "https://bastion.hospital.example:8443"
        );
        for bad in [
            "http://bastion.hospital.example:8443",
            "http://localhost:8443",
            "bastion",
            "https://",
            "https://:8443",
            "https://bastion.hospital.example/\\u001b]52;c;eA==\\u0007",
            "https://bastion .hospital.example",
            "https://u:p@bastion.hospital.example",
            "https://bastion.hospital.example/?next=x",
            "https://bastion.hospital.example/#x",
        ] {
            match url(bad) {
                Err(ConfigError::Invalid {
                    key: "web.public_url",
                    ..
                }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// A bare word that is not a level would read to the log filter as a target's name and silence
    /// every line: refused; levels and TARGET=LEVEL directives are taken.
    #[test]
    fn log_level_is_levels_or_target_directives() {
        let level = |l: &str| parse(&format!("[log]\nlevel = \"{l}\"\n"));
        for good in ["info", "WARN", "info,chaperone=debug", "russh=off, debug"] {
            assert!(level(good).is_ok(), "{good}");
        }
        for bad in ["", "verbose", "info,loud", "chaperone=verbose"] {
            match level(bad) {
                Err(ConfigError::Invalid {
                    key: "log.level", ..
                }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn misspelt_key_names_line_and_key() {
        let err = parse("[ssh]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/chaperone/chaperone.toml:3:"), "{msg}");
        assert!(msg.contains("listn"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let msg = parse("[ssh]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("ssh.listen"), "{msg}");
        let msg = parse("[ssh]\nlockout = \"5\"\n").unwrap_err().to_string();
        assert!(msg.contains("ssh.lockout"), "{msg}");
        let msg = parse("[database]\nurl = \"mysql://u:pw@h/db\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("database.url") && !msg.contains("pw"), "{msg}");
        let msg = parse("[ssh]\nmax_failures = \"five\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":2:"), "{msg}");
    }

    #[test]
    fn database_password_is_redacted_in_debug() {
        let c = parse("[database]\nurl = \"postgres://bastion:hunter2@db/chaperone\"\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(c.database.is_postgres());
    }

    /// Found by fuzzing (fuzz/corpus/config/regression-password-with-at): the userinfo ends at the last
    /// `@`, as sqlx reads it, so `p@ss@db` was shown as `***@ss@db`; and `?password=` was shown as it is.
    #[test]
    fn database_passwords_with_at_or_in_the_query_are_redacted() {
        for (url, shown) in [
            (
                "postgres://bastion:p@ss@db/chaperone",
                "postgres://bastion:***@db/chaperone",
            ),
            (
                "postgres://bastion@corp:hunter2@db:5432",
                "postgres://bastion@corp:***@db:5432",
            ),
            (
                "postgres://db/chaperone?sslmode=require&password=hunter2&user=bastion#x",
                "postgres://db/chaperone?sslmode=require&password=***&user=bastion#…",
            ),
            (
                "postgresql://db?passw%6Frd=hunter2",
                "postgresql://db?passw%6Frd=***",
            ),
            ("postgres://db/chaperone", "postgres://db/chaperone"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let c = parse("[database]\nurl = \"postgres://u:p@ss@db/chaperone\"\n").unwrap();
        assert!(!format!("{c:?}").contains("ss@db"), "{c:?}");
    }

    #[test]
    fn budgets_and_their_old_name() {
        let old = parse("[tunnels]\nmax_down_per_hour = \"5MB\"\n[tunnels.services.dicom]\nmax_down_per_hour = \"2GB\"\naction = \"cut\"\n").unwrap();
        let new = parse("[budgets]\nmax_down_per_hour = \"5MB\"\n[budgets.services.dicom]\nmax_down_per_hour = \"2GB\"\naction = \"cut\"\n").unwrap();
        assert_eq!(old.budgets, new.budgets);
        let both = parse("[budgets]\n[tunnels]\n").unwrap_err().to_string();
        assert!(both.contains("old name"), "{both}");
        let msg = parse("[budgets.services.x]\naction = \"block\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("budgets.services.*.action"), "{msg}");
        let c = new;
        assert_eq!(c.budgets.default.max_down_per_hour, Some(5_000_000));
        assert_eq!(c.budgets.default.max_up_per_hour, None);
        let dicom = c.budgets.policy_for("dicom");
        assert_eq!(
            (dicom.max_down_per_hour, dicom.action),
            (Some(2_000_000_000), BudgetAction::Cut)
        );
        assert_eq!(c.budgets.policy_for("hl7"), &c.budgets.default);
        let msg = parse("[tunnels]\naction = \"block\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tunnels.action"), "{msg}");
    }

    #[test]
    fn max_startups_reads_like_openssh() {
        let m = MaxStartups::parse("10:30:100").unwrap();
        assert_eq!(m.drop_percent(9), 0);
        assert_eq!(m.drop_percent(10), 30);
        assert_eq!(m.drop_percent(55), 65);
        assert_eq!(m.drop_percent(100), 100);
        assert_eq!(m.drop_percent(5000), 100);
        let one = MaxStartups::parse("20").unwrap();
        assert_eq!((one.drop_percent(19), one.drop_percent(20)), (0, 100));
        for bad in [
            "",
            "0",
            "10:30",
            "10:101:100",
            "50:30:10",
            "a:b:c",
            "10:30:100:1",
        ] {
            assert!(MaxStartups::parse(bad).is_err(), "{bad:?}");
        }
        let c = parse("").unwrap();
        assert_eq!(c.ssh.login_grace_time, Duration::from_secs(60));
        assert_eq!(c.ssh.per_source_max_startups, 10);
        assert_eq!(c.ssh.max_connections_per_vendor, 64);
        assert_eq!(c.ssh.idle_timeout, Some(Duration::from_secs(1800)));
        let off = parse("[ssh]\nidle_timeout = \"off\"\n").unwrap();
        assert_eq!(off.ssh.idle_timeout, None);
        for bad in ["0s", "", "30", "never"] {
            assert!(
                parse(&format!("[ssh]\nidle_timeout = \"{bad}\"\n")).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(c.ssh.send_timeout, Some(Duration::from_secs(300)));
        let off = parse("[ssh]\nsend_timeout = \"off\"\n").unwrap();
        assert_eq!(off.ssh.send_timeout, None);
        for bad in ["0s", "", "30", "never"] {
            assert!(
                parse(&format!("[ssh]\nsend_timeout = \"{bad}\"\n")).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(c.recording.max_bytes, Some(4_000_000_000));
        assert!(parse("[ssh]\nlogin_grace_time = \"1h\"\n").is_err());
        assert_eq!(c.ssh.passkey_wait, Duration::from_secs(120));
        assert!(parse("[ssh]\npasskey_wait = \"5s\"\n").is_err());
        assert!(parse("[ssh]\nmax_channels = 0\n").is_err());
        for bad in ["0", "1025", "-1"] {
            assert!(
                parse(&format!("[ssh]\ndevice_sessions_per_connection = {bad}\n")).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            parse("[ssh]\ndevice_sessions_per_connection = 200\n")
                .unwrap()
                .ssh
                .device_sessions_per_connection,
            200
        );
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_size("none"), Ok(None));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
