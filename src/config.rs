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
    pub tunnels: TunnelConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub webhook: Option<WebhookConfig>,
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
    /// Audit actions that are sent (exact names, e.g. `request.file`).
    pub events: Vec<String>,
    /// PEM file of CA certificates trusted for the receiver; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Deliveries tried per event before it is given up (and `webhook.undelivered` audited).
    pub max_attempts: u32,
}

/// The audit actions a webhook sends unless `webhook.events` says otherwise.
pub const DEFAULT_WEBHOOK_EVENTS: &[&str] = &[
    "request.file",
    "request.approve",
    "request.deny",
    "request.expire",
    "grant.revoke",
    "session.terminate",
    "tunnel.budget.exceeded",
    "auth.lock",
    "target.hostkey.mismatch",
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

/// Byte budgets for tunnels (the exfiltration guard), per service and hour, each direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Applies to every service without its own entry.
    pub default: BudgetPolicy,
    /// Overrides by service name (`[tunnels.services.dicom]`).
    pub services: std::collections::BTreeMap<String, BudgetPolicy>,
}

impl TunnelConfig {
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
    /// Upper bound on concurrent vendor connections.
    pub max_connections: usize,
    /// How vendors address the bastion (`HOST` in the commands chaperone prints), e.g. `bastion.hospital.org`.
    pub public_host: String,
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
    /// Signed-in staff are signed out after this long without a request.
    pub idle_timeout: Duration,
}

/// Where state lives: SQLite (embedded default) or PostgreSQL (several nodes).
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (PATH relative to the config file) or `postgres://…`.
    pub url: String,
}

impl fmt::Debug for DatabaseConfig {
    /// A PostgreSQL URL may carry a password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
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
    /// Record what the vendor types (`i` events). Off by default: typed passwords must not land in recordings.
    pub record_input: bool,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `chaperone=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl DatabaseConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
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
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
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
    #[serde(default)]
    tunnels: RawTunnels,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    policy: RawPolicy,
    webhook: Option<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    max_request: String,
    request_ttl: String,
    zones: std::collections::BTreeMap<String, RawZone>,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            max_request: "8h".into(),
            request_ttl: "1h".into(),
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
struct RawTunnels {
    max_down_per_hour: String,
    max_up_per_hour: String,
    action: String,
    services: std::collections::BTreeMap<String, RawBudget>,
}

impl Default for RawTunnels {
    fn default() -> Self {
        // Seed 002: alert when a device sends more than 5 MB in an hour.
        RawTunnels {
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
}

impl Default for RawWeb {
    fn default() -> Self {
        RawWeb {
            listen: "0.0.0.0:8443".into(),
            public_url: None,
            tls_cert: "web_cert.pem".into(),
            tls_key: "web_key.pem".into(),
            idle_timeout: "15m".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: "sqlite://chaperone.db".into(),
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
}

impl Default for RawRecording {
    fn default() -> Self {
        RawRecording {
            dir: "recordings".into(),
            record_input: false,
        }
    }
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
        };
        let web_listen = addr("web.listen", &raw.web.listen)?;
        let public_url = match raw.web.public_url {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                url.trim_end_matches('/').to_owned()
            }
            Some(url) => {
                return Err(invalid(
                    "web.public_url",
                    format!("{url:?} must start with https://"),
                ));
            }
            // Browsers offer passkeys only for a DNS name, so a loopback listener is `localhost`.
            None if web_listen.ip().is_loopback() => {
                format!("https://localhost:{}", web_listen.port())
            }
            None => format!("https://{web_listen}"),
        };
        let database = if let Some(file) = raw.database.url.strip_prefix("sqlite://") {
            if file.is_empty() {
                return Err(invalid(
                    "database.url",
                    "sqlite:// needs a file name".into(),
                ));
            }
            DatabaseConfig {
                url: format!("sqlite://{}", resolve(file).display()),
            }
        } else if raw.database.url.starts_with("postgres://")
            || raw.database.url.starts_with("postgresql://")
        {
            DatabaseConfig {
                url: raw.database.url,
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
        let size = |key: &'static str, value: &str| parse_size(value).map_err(|m| invalid(key, m));
        let action = |key: &'static str, value: &str| match value {
            "alert" => Ok(BudgetAction::Alert),
            "cut" => Ok(BudgetAction::Cut),
            other => Err(invalid(key, format!("{other:?}: use alert or cut"))),
        };
        let default = BudgetPolicy {
            max_down_per_hour: size("tunnels.max_down_per_hour", &raw.tunnels.max_down_per_hour)?,
            max_up_per_hour: size("tunnels.max_up_per_hour", &raw.tunnels.max_up_per_hour)?,
            action: action("tunnels.action", &raw.tunnels.action)?,
        };
        let mut services = std::collections::BTreeMap::new();
        for (name, b) in raw.tunnels.services {
            crate::model::check_name("service", &name)
                .map_err(|m| invalid("tunnels.services", m))?;
            services.insert(
                name,
                BudgetPolicy {
                    max_down_per_hour: match &b.max_down_per_hour {
                        Some(v) => size("tunnels.services.*.max_down_per_hour", v)?,
                        None => default.max_down_per_hour,
                    },
                    max_up_per_hour: match &b.max_up_per_hour {
                        Some(v) => size("tunnels.services.*.max_up_per_hour", v)?,
                        None => default.max_up_per_hour,
                    },
                    action: match &b.action {
                        Some(v) => action("tunnels.services.*.action", v)?,
                        None => default.action,
                    },
                },
            );
        }
        let tunnels = TunnelConfig { default, services };
        let mut zone_max_request = std::collections::BTreeMap::new();
        for (zone, z) in &raw.policy.zones {
            zone_max_request.insert(
                zone.clone(),
                duration("policy.zones.*.max_request", &z.max_request)?,
            );
        }
        let policy = PolicyConfig {
            max_request: duration("policy.max_request", &raw.policy.max_request)?,
            zone_max_request,
            request_ttl: duration("policy.request_ttl", &raw.policy.request_ttl)?,
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
                    None => DEFAULT_WEBHOOK_EVENTS
                        .iter()
                        .map(|e| (*e).to_owned())
                        .collect(),
                    Some(events) => {
                        if let Some(bad) = events.iter().find(|e| {
                            e.is_empty()
                                || !e
                                    .chars()
                                    .all(|c| c.is_ascii_lowercase() || matches!(c, '.' | '_'))
                        }) {
                            return Err(invalid(
                                "webhook.events",
                                format!(
                                    "{bad:?} is not an audit action name (like \"request.file\")"
                                ),
                            ));
                        }
                        if events.iter().any(|e| e == "webhook.undelivered") {
                            // Giving one up would make another to give up, forever, while the receiver is down.
                            return Err(invalid(
                                "webhook.events",
                                "\"webhook.undelivered\" cannot be sent by the webhook it is about"
                                    .into(),
                            ));
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
        if raw.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty".into()));
        }
        Ok(Config {
            path: path.to_owned(),
            ssh,
            web: WebConfig {
                listen: web_listen,
                public_url,
                tls_cert: resolve(&raw.web.tls_cert),
                tls_key: resolve(&raw.web.tls_key),
                idle_timeout: duration("web.idle_timeout", &raw.web.idle_timeout)?,
            },
            database,
            secrets: SecretsConfig {
                key_file: resolve(&raw.secrets.key_file),
            },
            recording: RecordingConfig {
                dir: resolve(&raw.recording.dir),
                record_input: raw.recording.record_input,
            },
            tunnels,
            log: LogConfig {
                level: raw.log.level,
            },
            policy,
            webhook,
        })
    }
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
# Concurrent vendor connections at most.
max_connections = 1024
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
# Signed-in staff are signed out after this long without activity.
idle_timeout = "15m"

[policy]
# The longest a vendor may request access for, and how long a request waits for a decision.
max_request = "8h"
request_ttl = "1h"
# Per-zone maximum, e.g.:
# [policy.zones.icu]
# max_request = "2h"

# Announce new requests, decisions and alerts (JSON POST, header X-Chaperone-Signature: sha256=HMAC-SHA256
# of the body with `secret`; retried with backoff, in order). See README, "Webhook".
# [webhook]
# url = "https://chat.hospital.example/hooks/chaperone"   # http:// only to a loopback address
# secret = "at least 16 random characters"
# events = ["request.file", "request.approve", "request.deny", "request.expire", "grant.revoke",
#           "session.terminate", "tunnel.budget.exceeded", "auth.lock", "target.hostkey.mismatch"]
# ca_file = "webhook_ca.pem"   # trust this CA for the receiver instead of the system's roots
# max_attempts = 10            # then the event is given up and `webhook.undelivered` is audited

[database]
# SQLite file (embedded default) or postgres://user:password@host/db for several nodes.
url = "sqlite://chaperone.db"

[secrets]
# 32-byte key that encrypts device credentials and TOTP seeds (mode 0600). See SECURITY.md to rotate it.
key_file = "secrets.key"

[recording]
# Session recordings (asciicast v2, transfer logs). Must be writable: no recording, no session.
dir = "recordings"
# Record what vendors type. Off by default: typed passwords must not land in recordings.
record_input = false

[tunnels]
# The exfiltration guard: bytes per service per hour through vendors' tunnels (ssh -L/-W), each
# direction. Crossing a budget is audited; with action = "cut" the tunnel is also closed.
# Sizes: 500KB, 5MB, 2GB, or "none". Default: alert when a device sends more than 5 MB in an hour.
max_down_per_hour = "5MB"
max_up_per_hour = "none"
action = "alert"
# Per service name, e.g. DICOM studies are large but should never leave in bulk unnoticed:
# [tunnels.services.dicom]
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
        assert!(w.events.iter().any(|e| e == "request.file"));
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
    fn tunnel_budgets() {
        let c = parse("[tunnels]\nmax_down_per_hour = \"5MB\"\n[tunnels.services.dicom]\nmax_down_per_hour = \"2GB\"\naction = \"cut\"\n").unwrap();
        assert_eq!(c.tunnels.default.max_down_per_hour, Some(5_000_000));
        assert_eq!(c.tunnels.default.max_up_per_hour, None);
        let dicom = c.tunnels.policy_for("dicom");
        assert_eq!(
            (dicom.max_down_per_hour, dicom.action),
            (Some(2_000_000_000), BudgetAction::Cut)
        );
        assert_eq!(c.tunnels.policy_for("hl7"), &c.tunnels.default);
        let msg = parse("[tunnels]\naction = \"block\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("tunnels.action"), "{msg}");
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
