//! `chaperone doctor`: is this node fit to serve? One line per finding (`ok`, `warn`, `FAIL`), exit 1
//! when any check fails. It changes nothing: the database is not migrated (that is `serve`'s job) and
//! its tables are only read, so it is safe on a running node and as the service's own user (opening a
//! SQLite database may still set its journal mode to WAL, as every chaperone command does).
//!
//! Checks: the config parses; file modes (the config has no world access, keys and the database are the
//! owner's only); the web certificate (in its validity period, naming `web.public_url`'s host; passkeys
//! need that host to be a DNS name, and a vendor's passkey link under it to fit a terminal line); free space where recordings go; the database answers, and how its
//! migrations stand against this build's; the database server's clock against ours (PostgreSQL).

use std::path::Path;

use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use chaperone_web_approval::vendor_link;

use crate::config::Config;
use crate::store::Store;

/// Free space under which recordings (and so sessions: no recording, no session) are about to fail.
const SPACE_FAIL: u64 = 256 * 1024 * 1024;
const SPACE_WARN: u64 = 2 * 1024 * 1024 * 1024;
/// A certificate this close to its end gets a warning.
const CERT_WARN_SECS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Default)]
struct Report {
    worst: Option<Level>,
    fails: usize,
}

impl Report {
    fn line(&mut self, level: Level, what: &str, text: impl std::fmt::Display) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        // Escaped: a line may carry a directory server's diagnostic or a name from the database.
        let text = text.to_string();
        println!("{tag} {what}: {}", super::display::esc(&text));
        if level == Level::Fail {
            self.fails += 1;
        }
        self.worst = self.worst.max(Some(level));
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let mut r = Report::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            r.line(Level::Ok, "config", format!("{} parses", c.path.display()));
            c
        }
        Err(e) => {
            r.line(Level::Fail, "config", format!("{e:#}"));
            anyhow::bail!("1 check failed");
        }
    };
    for warning in config.warnings() {
        r.line(Level::Warn, "exposed", warning);
    }
    file_modes(&mut r, &config);
    certificate(&mut r, &config, crate::clock::Clock::system().now());
    passkey_links(&mut r, &config);
    free_space(&mut r, &config.recording.dir);
    database(&mut r, &config).await;
    directory(&mut r, &config).await;
    match r.fails {
        0 => Ok(()),
        1 => anyhow::bail!("1 check failed"),
        n => anyhow::bail!("{n} checks failed"),
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn mode(path: &Path) -> std::io::Result<u32> {
    std::fs::metadata(path).map(|_| 0o600)
}

fn file_modes(r: &mut Report, config: &Config) {
    match mode(&config.path) {
        // It may hold a database password or a webhook secret: group-readable (root:chaperone 0640,
        // as the package installs it) is fine, world access is not.
        Ok(m) if m & 0o007 != 0 => r.line(
            Level::Fail,
            "config mode",
            format!(
                "{} is {m:03o}: others may read it (chmod o-rwx)",
                config.path.display()
            ),
        ),
        // Writable by its group (the service's): a process running as chaperone could aim the
        // directory, webhook or ATNA targets elsewhere for good.
        Ok(m) if m & 0o020 != 0 => r.line(
            Level::Fail,
            "config mode",
            format!(
                "{} is {m:03o}: its group may rewrite it (chmod g-w)",
                config.path.display()
            ),
        ),
        Ok(m) => r.line(Level::Ok, "config mode", format!("{m:03o}")),
        Err(e) => r.line(
            Level::Fail,
            "config mode",
            format!("{}: {e}", config.path.display()),
        ),
    }
    use crate::key_files::Readers;
    let mut secrets = vec![
        ("ssh.host_key", config.ssh.host_key.clone(), Readers::Owner),
        (
            "secrets.key_file",
            config.secrets.key_file.clone(),
            Readers::Owner,
        ),
        ("web.tls_key", config.web.tls_key.clone(), Readers::Group),
    ];
    // Made by `init` or `evidence signer`; a data directory older than it has none yet.
    if config.recording.signing_key.exists() {
        secrets.push((
            "recording.signing_key",
            config.recording.signing_key.clone(),
            Readers::Owner,
        ));
    }
    if let Some(key) = config.atna.as_ref().and_then(|a| a.client_key.clone()) {
        secrets.push(("atna.client_key", key, Readers::Group));
    }
    if let Some(db) = config.database.sqlite_file() {
        secrets.push(("database", db.to_path_buf(), Readers::Owner));
    }
    // The directory's service account password: its group may be chaperone's (root:chaperone 0640,
    // like the config).
    if let Some(ldap) = &config.ldap {
        secrets.push((
            "ldap.bind_password_file",
            ldap.bind_password_file.clone(),
            Readers::Group,
        ));
    }
    // The rule each is held to is the one the code reading it applies (`key_files`), judged on the file
    // opened as the code opens it: one this user cannot read fails here as it would at `serve`.
    for (what, path, rule) in secrets {
        let opened = std::fs::File::open(&path)
            .and_then(|f| Ok((crate::key_files::exposed(&f, rule)?, mode(&path)?)));
        match opened {
            Ok((Some(m), _)) => r.line(
                Level::Fail,
                what,
                format!(
                    "{} is {m:03o}: {} ({})",
                    path.display(),
                    rule.who(),
                    rule.fix()
                ),
            ),
            Ok((None, m)) => r.line(Level::Ok, what, format!("{} ({m:03o})", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => r.line(
                Level::Fail,
                what,
                format!(
                    "{}: this user cannot read it ({e}); run doctor as the service's user, and give the file to it",
                    path.display()
                ),
            ),
            Err(e) => r.line(Level::Fail, what, format!("{}: {e}", path.display())),
        }
    }
    match mode(&config.recording.dir) {
        Ok(m) if m & 0o077 != 0 => r.line(
            Level::Warn,
            "recording.dir",
            format!(
                "{} is {m:03o}: recordings should be the service's only (chmod 700)",
                config.recording.dir.display()
            ),
        ),
        Ok(_) => {}
        Err(e) => r.line(
            Level::Fail,
            "recording.dir",
            format!("{}: {e}", config.recording.dir.display()),
        ),
    }
    if let Err(e) = crate::recording::probe_dir(&config.recording.dir) {
        r.line(
            Level::Fail,
            "recording.dir",
            format!(
                "{}: this user cannot create recordings there ({e}): every session would be refused",
                config.recording.dir.display()
            ),
        );
    }
}

/// `web.public_url`'s host: what the certificate must name, and the passkeys' relying party.
fn certificate(r: &mut Report, config: &Config, now: i64) {
    let host = super::init::web_host(&config.web.public_url);
    let what = "web certificate";
    let pem = match std::fs::read(&config.web.tls_cert) {
        Ok(p) => p,
        Err(e) => {
            return r.line(
                Level::Fail,
                what,
                format!("{}: {e}", config.web.tls_cert.display()),
            );
        }
    };
    use rustls::pki_types::pem::PemObject as _;
    let der = match rustls::pki_types::CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(der)) => der,
        _ => {
            return r.line(
                Level::Fail,
                what,
                format!("{} holds no PEM certificate", config.web.tls_cert.display()),
            );
        }
    };
    let cert = match X509Certificate::from_der(&der) {
        Ok((_, cert)) => cert,
        Err(e) => return r.line(Level::Fail, what, format!("cannot be read: {e}")),
    };
    let (from, until) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    if now < from {
        r.line(
            Level::Fail,
            what,
            format!(
                "not valid before {} (is this machine's clock right?)",
                crate::clock::format_time(from)
            ),
        );
    } else if now >= until {
        r.line(
            Level::Fail,
            what,
            format!("expired on {}", crate::clock::format_time(until)),
        );
    } else if until - now < CERT_WARN_SECS {
        r.line(
            Level::Warn,
            what,
            format!("expires on {}: renew it", crate::clock::format_time(until)),
        );
    } else {
        r.line(
            Level::Ok,
            what,
            format!("valid until {}", crate::clock::format_time(until)),
        );
    }
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let wanted = host.to_ascii_lowercase();
    let covered = names.iter().any(|n| {
        n == &wanted
            || (ip.is_none()
                && n.strip_prefix("*.").is_some_and(|base| {
                    wanted.split_once('.').is_some_and(|(_, rest)| rest == base)
                }))
    });
    if covered {
        r.line(Level::Ok, "web certificate name", format!("names {host}"));
    } else {
        r.line(
            Level::Fail,
            "web certificate name",
            format!(
                "does not name {host:?} (web.public_url); it names {}: browsers will refuse it",
                if names.is_empty() {
                    "nothing".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        );
    }
    // `init` on a listener of every address (the package's) writes that address: nobody can open it.
    if ip.is_some_and(|a| a.is_unspecified()) {
        r.line(
            Level::Warn,
            "web.public_url",
            format!(
                "{} names no address a browser can reach: enrollment, passkey and mail links will not \
                 work; set web.public_url to the name staff and vendors use",
                config.web.public_url
            ),
        );
    }
    if ip.is_some() {
        r.line(
            Level::Warn,
            "passkeys",
            format!(
                "web.public_url's host {host} is an IP address: passkeys need a DNS name (TOTP still works)"
            ),
        );
    }
    if cert.subject() == cert.issuer() {
        r.line(
            Level::Warn,
            "web certificate issuer",
            "self-signed (from `init`): browsers warn until it is replaced by one the hospital's CA signed",
        );
    }
}

/// Whether a vendor's passkey link, which ssh prints in a prompt, fits a terminal line.
fn passkey_links(r: &mut Report, config: &Config) {
    // No passkeys, no links (an IP address as the host has its own warning).
    if chaperone_web_approval::passkey::relying_party(&config.web.public_url).is_err() {
        return;
    }
    let width = vendor_link::link_width(&config.web.public_url);
    if width > vendor_link::LINK_COLUMNS {
        r.line(
            Level::Warn,
            "passkey links",
            format!(
                "a vendor's passkey link is {width} columns (web.public_url is long): PuTTY breaks \
                 prompt lines wider than {}, and a broken link cannot be copied whole; a shorter \
                 web.public_url avoids it",
                vendor_link::LINK_COLUMNS
            ),
        );
    } else {
        r.line(
            Level::Ok,
            "passkey links",
            format!("{width} columns, one terminal line"),
        );
    }
}

fn free_space(r: &mut Report, dir: &Path) {
    let what = "recording space";
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            #[allow(
                clippy::useless_conversion,
                reason = "fsblkcnt_t is u64 here but u32 on some targets"
            )]
            let free = u64::from(s.blocks_available()).saturating_mul(s.fragment_size());
            let text = format!("{} MB free in {}", free / 1_000_000, dir.display());
            if free < SPACE_FAIL {
                r.line(
                    Level::Fail,
                    what,
                    format!("{text}: sessions will fail when a recording cannot be written"),
                );
            } else if free < SPACE_WARN {
                r.line(Level::Warn, what, text);
            } else {
                r.line(Level::Ok, what, text);
            }
        }
        Err(e) => r.line(Level::Fail, what, format!("{}: {e}", dir.display())),
    }
}

async fn database(r: &mut Report, config: &Config) {
    let url = crate::config::redact_url(&config.database.url);
    let status = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Store::migration_status(&config.database.url),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return r.line(Level::Fail, "database", format!("{url}: {e}")),
        Err(_) => {
            return r.line(
                Level::Fail,
                "database",
                format!("{url} did not answer within 10 s"),
            );
        }
    };
    r.line(Level::Ok, "database", format!("{url} answers"));
    if !status.unknown.is_empty() {
        r.line(
            Level::Fail,
            "migrations",
            format!(
                "the database has migrations this chaperone does not know ({:?}): a newer version wrote it",
                status.unknown
            ),
        );
    } else if !status.pending.is_empty() {
        r.line(
            Level::Warn,
            "migrations",
            format!(
                "{} applied, {} to apply ({:?}): `serve` applies them at start",
                status.applied,
                status.pending.len(),
                status.pending
            ),
        );
    } else {
        r.line(
            Level::Ok,
            "migrations",
            format!("all {} applied", status.applied),
        );
        audit_head_seal(r, config).await;
    }
    if let Some(theirs) = status.clock {
        let skew = theirs - crate::clock::Clock::system().now();
        if skew.abs() > crate::node::CLOCK_SKEW_WARN_SECS {
            r.line(
                Level::Warn,
                "clock",
                format!(
                    "the database server's clock is {skew:+} s from this machine's: run NTP on both (TOTP codes and grant ends depend on it)"
                ),
            );
        } else {
            r.line(
                Level::Ok,
                "clock",
                format!(
                    "within {} s of the database server's",
                    crate::node::CLOCK_SKEW_WARN_SECS
                ),
            );
        }
    }
}

/// Whether the audit chain's head carries its seal under this node's secrets key (a head moved by
/// someone without the key, or a node holding another key than the others). Skipped when the key does
/// not load: the key's own line says why.
async fn audit_head_seal(r: &mut Report, config: &Config) {
    let Ok(secrets) = crate::secrets::SecretsKey::load(&config.secrets.key_file) else {
        return;
    };
    let head = async {
        let store =
            Store::connect_unmigrated(&config.database.url, crate::audit::HeadSeal::new(&secrets))
                .await?;
        let head = store.sealed_head().await;
        store.close().await;
        head
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), head).await {
        Ok(Ok(Ok((seq, _)))) => r.line(
            Level::Ok,
            "audit log",
            format!("the chain head (event {seq}) carries its seal under this secrets key"),
        ),
        Ok(Ok(Err(unsealed))) => r.line(
            Level::Fail,
            "audit log",
            format!("{unsealed}; run `chaperone audit verify` (or check that this node has the same secrets key as the others)"),
        ),
        Ok(Err(e)) => r.line(Level::Fail, "audit log", format!("cannot read the chain head: {e}")),
        Err(_) => r.line(Level::Fail, "audit log", "the chain head did not answer within 10 s"),
    }
}

/// The directory (`[ldap]`): the service account binds, and every base and mapped group the
/// configuration names is there. A missing one refuses every directory sign-in that asks for it
/// (rather than disabling its members), so it is a failure here.
async fn directory(r: &mut Report, config: &Config) {
    let directory = match crate::identity::ldap::Directory::from_config(config) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            r.line(Level::Fail, "ldap", crate::error_text::report(&e));
            return;
        }
    };
    match directory.configured_entries().await {
        Ok(entries) => {
            let mut found = 0;
            for (what, dn, why) in entries {
                match why {
                    None => found += 1,
                    Some(why) => r.line(Level::Fail, &what, format!("{dn}: {why}")),
                }
            }
            r.line(
                Level::Ok,
                "ldap",
                format!("the service account binds; {found} configured base(s) and group(s) found"),
            );
        }
        Err(e) => r.line(Level::Fail, "ldap", crate::error_text::report(&e)),
    }
}
