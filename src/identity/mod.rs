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

/// The audit actor for a CLI command: the person who ran it, as the kernel knows them (`os:erin`).
///
/// Never from `USER` or `LOGNAME`, which anyone sets (`USER=alice chaperone grant add …` would chain a
/// grant under a colleague's name and send it to the audit repository as hers). In order:
/// - the login uid (`/proc/self/loginuid`, set by pam_loginuid at login and kept through `su` and
///   `sudo`; an unprivileged process cannot change it): the person who logged in;
/// - with none (a container, a service, a console without PAM): `SUDO_USER` when running as root under
///   sudo (sudo sets it from the invoking user, and its `env_reset` keeps callers from setting it),
/// - else the real uid.
///
/// Names come from the system's user database through NSS (`getpwuid_r`: `/etc/passwd`, and the
/// directory for administrators who log in through SSSD or winbind; a uid without one is `uid1234`),
/// kept to a safe alphabet.
pub fn os_actor() -> String {
    let loginuid = std::fs::read_to_string("/proc/self/loginuid").ok();
    let sudo_user = std::env::var("SUDO_USER").ok();
    let name = actor_name(
        loginuid.as_deref(),
        Some(nix::unistd::getuid().as_raw()),
        sudo_user.as_deref(),
        |uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        },
    );
    format!("os:{name}")
}

/// [`os_actor`]'s choice, from what it read; `name_of` looks a uid's name up.
fn actor_name(
    loginuid: Option<&str>,
    uid: Option<u32>,
    sudo_user: Option<&str>,
    name_of: impl Fn(u32) -> Option<String>,
) -> String {
    let user_name = |uid: u32| name_of(uid).unwrap_or_else(|| format!("uid{uid}"));
    // 4294967295 ((uid_t)-1): no login uid was set.
    let login = loginuid
        .and_then(|l| l.trim().parse::<u32>().ok())
        .filter(|&l| l != u32::MAX);
    let name = match (login, uid) {
        (Some(login), _) => user_name(login),
        (None, Some(0)) => match sudo_user.filter(|u| !u.is_empty()) {
            Some(u) => u.to_owned(),
            None => user_name(0),
        },
        (None, Some(uid)) => user_name(uid),
        (None, None) => "unknown".to_owned(),
    };
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::actor_name;

    /// The names the system's user database knows.
    #[allow(clippy::unnecessary_wraps)]
    fn passwd(uid: u32) -> Option<String> {
        match uid {
            0 => Some("root".to_owned()),
            1000 => Some("erin".to_owned()),
            998 => Some("chaperone".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn the_actor_is_who_the_kernel_says_not_what_the_environment_claims() {
        // Logged in as erin: erin, through sudo and whatever SUDO_USER says.
        assert_eq!(
            actor_name(Some("1000\n"), Some(0), Some("alice"), passwd),
            "erin"
        );
        assert_eq!(actor_name(Some("1000"), Some(998), None, passwd), "erin");
        // No login uid: root under sudo is the invoking user; otherwise the uid's name.
        assert_eq!(
            actor_name(Some("4294967295"), Some(0), Some("erin"), passwd),
            "erin"
        );
        assert_eq!(
            actor_name(Some("4294967295"), Some(0), None, passwd),
            "root"
        );
        // SUDO_USER is not believed from anyone but root.
        assert_eq!(
            actor_name(None, Some(998), Some("alice"), passwd),
            "chaperone"
        );
        assert_eq!(actor_name(None, Some(4242), None, passwd), "uid4242");
        assert_eq!(actor_name(None, None, None, passwd), "unknown");
        assert_eq!(
            actor_name(None, Some(0), Some("a\u{1b}[2J b;rm"), passwd),
            "a2Jbrm"
        );
        assert_eq!(actor_name(None, Some(0), Some("\u{1b}"), passwd), "unknown");
    }
}
