//! Who people are: vendors' SSH keys and TOTP seeds, staff enrollment tokens, directory identities,
//! and who runs the CLI.
//!
//! Entry points: [`signin`] for the sign-in rules of everyone (TOTP, replay, lockout), [`totp`] for
//! second factors, [`keys`] for parsing and fingerprinting public keys, [`ldap`] for LDAP / Active
//! Directory (staff and their roles, vendors and their keys), [`os_actor`] for the audit actor of an
//! admin command.

pub mod directory;
pub mod keys;
pub mod ldap;
pub mod signin;
pub mod totp;
pub mod vendor_passkeys;

/// The audit actor for a CLI command: the OS user who ran it (`os:root`).
pub fn os_actor() -> String {
    let name = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
        .or_else(uid_from_proc)
        .unwrap_or_else(|| "unknown".to_owned());
    // The name comes from the environment: keep it to a safe alphabet before it enters the audit log.
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    format!("os:{clean}")
}

fn uid_from_proc() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let uid = line.split_whitespace().nth(1)?;
    Some(format!("uid{uid}"))
}
