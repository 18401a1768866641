//! Identities from LDAP / Active Directory (`[ldap]`): staff whose password the directory checks and
//! whose role comes from their groups, and (optionally) vendors with their `sshPublicKey`s.
//!
//! Entry point: [`Directory`] (`App::directory`, built once from the config): [`Directory::authenticate`]
//! (search with the service account, then bind as the user: the directory checks the password),
//! [`Directory::lookup`] (the same without the password: `chaperone ldap check` and the re-check of
//! signed-in staff), [`Directory::vendors`] (the vendor subtree, for the sync in `identity::directory`).
//!
//! Every connection is TLS (`ldaps://` or StartTLS, rustls with ring) except to a loopback address
//! (the config refuses anything else), has a connect time-out and an operation time-out, and is closed
//! after use. A typed name enters a filter only escaped (RFC 4515), so `*)(uid=*` finds nobody. An
//! empty password is refused before any bind (an LDAP bind with one is an anonymous bind and
//! "succeeds").

use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

use crate::config::{Config, GroupMembership, LdapConfig};
use crate::model::Role;
use crate::store::DirectoryStanding;

/// Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups.
pub const MATCHING_RULE_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

/// Why the directory could not answer (as opposed to answering "no").
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// Connecting, TLS or StartTLS failed, or an operation timed out: nothing was learnt.
    #[error("directory unreachable ({url})")]
    Unreachable {
        url: String,
        /// Boxed: ldap3's error is large, and this enum is returned on every path.
        #[source]
        source: Box<ldap3::LdapError>,
    },
    /// The whole exchange took longer than the configured time-outs allow.
    #[error("directory unreachable ({url}): no answer in time")]
    TimedOut { url: String },
    /// `ldap.bind_password_file` cannot be read.
    #[error("reading ldap.bind_password_file {path}")]
    PasswordFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `ldap.ca_file` cannot be read, is not PEM or holds no usable certificate.
    #[error("reading ldap.ca_file {path}: {why}")]
    CaFile {
        path: std::path::PathBuf,
        why: String,
    },
    /// No `ldap.ca_file` and no system CA certificate.
    #[error(
        "no system CA certificates found for the directory (install ca-certificates, or set ldap.ca_file)"
    )]
    NoSystemRoots,
    #[error("TLS settings for the directory")]
    Tls(#[source] rustls::Error),
    /// The service account's bind was refused (wrong `bind_dn` or password file).
    #[error("the directory refused the service account {bind_dn}: {text}")]
    ServiceBind { bind_dn: String, text: String },
    /// A search failed for another reason than a missing entry.
    #[error("directory search under {base} failed: {text}")]
    Search { base: String, text: String },
}

impl LdapError {
    /// The directory could not be reached at all (the sign-in page says "directory unreachable").
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            LdapError::Unreachable { .. } | LdapError::TimedOut { .. }
        )
    }
}

/// A person the directory knows, with what their groups give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub name: String,
    pub dn: String,
    /// The entry's stable id (`entryUUID`, or `objectGUID` as hex): what ties an account to the
    /// entry, since a DN changes when the entry is moved or renamed. `None` for a directory with neither.
    pub entry_id: Option<String>,
    /// Every role a mapped group gives (`[ldap.roles]`).
    pub roles: Vec<Role>,
    /// Zones whose approver group they are in (`[ldap.zones.X] approver`).
    pub zones: Vec<String>,
}

impl DirectoryUser {
    /// The one role the account gets: the strongest of its groups' (admin, approver, auditor); a zone
    /// approver group alone makes an approver for those zones only (`zones_only`).
    pub fn standing(&self) -> Option<DirectoryStanding> {
        let of_roles = [Role::Admin, Role::Approver, Role::Auditor]
            .into_iter()
            .find(|r| self.roles.contains(r));
        let (role, zones_only) = match of_roles {
            Some(role) => (role, false),
            None if !self.zones.is_empty() => (Role::Approver, true),
            None => return None,
        };
        Some(DirectoryStanding {
            role,
            zones: self.zones.clone(),
            zones_only,
        })
    }
}

/// What the directory says of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(DirectoryUser),
    /// No entry matches the filter (or more than one does: a name must be unambiguous).
    NoSuchUser,
    /// The one entry is disabled or locked in the directory ([`disabled`] says how): as good as gone.
    Disabled {
        dn: String,
        why: &'static str,
    },
}

/// What the directory says of a name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    Accepted(DirectoryUser),
    /// No such user, or the wrong password: one answer, so neither is an oracle for the other.
    Refused,
}

/// A vendor technician's entry under `[ldap.vendors] base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryVendorEntry {
    pub name: String,
    pub dn: String,
    /// The OU directly under the base the entry lives in (one per vendor organisation).
    pub org: String,
    /// `sshPublicKey` values as found (OpenSSH one-line format).
    pub keys: Vec<String>,
    /// The entry's stable id: `entryUUID`, or Active Directory's `objectGUID` as hex.
    pub entry_id: Option<String>,
    /// How the directory disabled the entry, if it did ([`disabled`]).
    pub disabled: Option<&'static str>,
}

/// The directory, as the config describes it.
pub struct Directory {
    config: LdapConfig,
    /// The service account's password.
    password: crate::secrets::Secret,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// The directory of `config`, if it has an `[ldap]` section: reads the password file and the CA
    /// file now, so a mistake there stops the command that needs it before anything is served.
    pub fn from_config(config: &Config) -> Result<Option<Directory>, LdapError> {
        let Some(ldap) = &config.ldap else {
            return Ok(None);
        };
        let failed = |source| LdapError::PasswordFile {
            path: ldap.bind_password_file.clone(),
            source,
        };
        // Checked and read through one handle: the file whose mode was judged is the one read.
        let mut file = std::fs::File::open(&ldap.bind_password_file).map_err(failed)?;
        // The service account reads every staff member and vendor: a password file anyone on the
        // host may read is refused, as the other secrets are (its group may be chaperone's).
        let rule = crate::key_files::Readers::Group;
        if let Some(mode) = crate::key_files::exposed(&file, rule).map_err(failed)? {
            return Err(LdapError::PasswordFile {
                path: ldap.bind_password_file.clone(),
                source: std::io::Error::other(format!(
                    "it is {mode:03o}: {} ({})",
                    rule.who(),
                    rule.fix()
                )),
            });
        }
        let mut password = String::new();
        std::io::Read::read_to_string(&mut file, &mut password).map_err(failed)?;
        // A trailing newline is the editor's, not the password's.
        let password = password.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(LdapError::Tls)?
            .with_root_certificates(roots(ldap)?)
            .with_no_client_auth();
        Ok(Some(Directory {
            config: ldap.clone(),
            password: crate::secrets::Secret::new(password),
            tls: Arc::new(tls),
        }))
    }

    pub fn config(&self) -> &LdapConfig {
        &self.config
    }

    /// A connection, bound as nobody yet.
    async fn connect(&self) -> Result<Ldap, LdapError> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.connect_timeout)
            .set_starttls(self.config.starttls)
            .set_config(self.tls.clone());
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|source| self.unreachable(source))?;
        let url = self.config.url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(%url, error = %e, "directory connection ended");
            }
        });
        Ok(ldap)
    }

    fn unreachable(&self, source: ldap3::LdapError) -> LdapError {
        LdapError::Unreachable {
            url: self.config.url.clone(),
            source: Box::new(source),
        }
    }

    /// Everything one exchange of `operations` operations may take: connecting, then each of them.
    fn deadline(&self, operations: u32) -> Duration {
        self.config
            .timeout
            .saturating_mul(operations)
            .saturating_add(self.config.connect_timeout)
    }

    /// Runs `f` within the overall deadline of a few operations.
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, LdapError>>,
    ) -> Result<T, LdapError> {
        self.bounded_by(4, f).await
    }

    /// Runs `f` within the deadline of `operations` operations.
    async fn bounded_by<T>(
        &self,
        operations: u32,
        f: impl std::future::Future<Output = Result<T, LdapError>>,
    ) -> Result<T, LdapError> {
        tokio::time::timeout(self.deadline(operations), f)
            .await
            .unwrap_or_else(|_| {
                Err(LdapError::TimedOut {
                    url: self.config.url.clone(),
                })
            })
    }

    /// A connection bound as the service account.
    async fn service(&self) -> Result<Ldap, LdapError> {
        let mut ldap = self.connect().await?;
        let password = String::from_utf8_lossy(self.password.expose()).into_owned();
        let result = ldap
            .with_timeout(self.config.timeout)
            .simple_bind(&self.config.bind_dn, &password)
            .await
            .map_err(|source| self.unreachable(source))?;
        if result.rc != 0 {
            let _ = ldap.unbind().await;
            return Err(LdapError::ServiceBind {
                bind_dn: self.config.bind_dn.clone(),
                text: format!("result code {} {}", result.rc, result.text),
            });
        }
        Ok(ldap)
    }

    /// The entries the configuration names (`user_base`, `[ldap.vendors] base`, every mapped group),
    /// each with why the service account cannot find it (`None`: found). A missing base or group
    /// refuses every sign-in that asks for it, so `doctor` looks before anyone signs in. An error is
    /// the service account's bind or the directory not answering.
    pub async fn configured_entries(
        &self,
    ) -> Result<Vec<(String, String, Option<String>)>, LdapError> {
        let mut named = vec![("ldap.user_base".to_owned(), self.config.user_base.clone())];
        if let Some(v) = &self.config.vendors {
            named.push(("ldap.vendors.base".to_owned(), v.base.clone()));
        }
        let roles = &self.config.roles;
        for (what, group) in [
            ("ldap.roles.admin", &roles.admin),
            ("ldap.roles.approver", &roles.approver),
            ("ldap.roles.auditor", &roles.auditor),
        ] {
            if let Some(group) = group {
                named.push((what.to_owned(), group.clone()));
            }
        }
        for (zone, group) in &self.config.zone_approvers {
            named.push((format!("ldap.zones.{zone}.approver"), group.clone()));
        }
        // One operation per entry, each bounded by `timeout`.
        let mut ldap = self.bounded(self.service()).await?;
        let mut out = Vec::new();
        for (what, dn) in named {
            let found = self
                .search(&mut ldap, &dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
                .await;
            let why = match found {
                // An answer without the entry: an access rule lets the service account search but
                // not see it, and `is_member` would read the group as empty.
                Ok(entries) if entries.is_empty() => {
                    Some("the service account cannot read it".to_owned())
                }
                Ok(_) => None,
                Err(LdapError::Search { text, .. }) if text.starts_with("rc=32") => {
                    Some("not in the directory (or hidden from the service account)".to_owned())
                }
                Err(LdapError::Search { text, .. }) => Some(text),
                Err(e) => {
                    let _ = ldap.unbind().await;
                    return Err(e);
                }
            };
            out.push((what, dn, why));
        }
        let _ = ldap.unbind().await;
        Ok(out)
    }

    /// The entry `name` finds with the user filter and what its groups give, read with the service
    /// account.
    pub async fn lookup(&self, name: &str) -> Result<Lookup, LdapError> {
        let operations = lookup_operations(&self.config.roles, self.config.zone_approvers.len());
        self.bounded_by(operations, async {
            let mut ldap = self.service().await?;
            let found = self.find_user(&mut ldap, name).await;
            let result = match found {
                Ok(Some(FoundEntry::Disabled { dn, why })) => Ok(Lookup::Disabled { dn, why }),
                Ok(Some(FoundEntry::Enabled { dn, entry_id, uids })) => self
                    .groups_of(&mut ldap, &uids, &dn)
                    .await
                    .map(|(roles, zones)| {
                        Lookup::Found(DirectoryUser {
                            name: name.to_owned(),
                            dn,
                            entry_id,
                            roles,
                            zones,
                        })
                    }),
                Ok(None) => Ok(Lookup::NoSuchUser),
                Err(e) => Err(e),
            };
            let _ = ldap.unbind().await;
            result
        })
        .await
    }

    /// Checks `name`'s `password` with the directory: the service account finds the entry, a bind as
    /// that entry checks the password (on a connection of its own), the service account reads the
    /// groups.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Authn, LdapError> {
        if password.is_empty() {
            // An empty password makes an unauthenticated bind, which directories accept.
            return Ok(Authn::Refused);
        }
        let found = match self.lookup(name).await? {
            Lookup::Found(user) => user,
            // A disabled entry is not bound as at all: its password is not tried.
            Lookup::NoSuchUser | Lookup::Disabled { .. } => return Ok(Authn::Refused),
        };
        self.bounded(async {
            let mut ldap = self.connect().await?;
            let bound = ldap
                .with_timeout(self.config.timeout)
                .simple_bind(&found.dn, password)
                .await
                .map_err(|source| self.unreachable(source))?;
            let _ = ldap.unbind().await;
            // 49 invalidCredentials, 53 unwillingToPerform (a disabled AD account), anything else:
            // not signed in.
            Ok(if bound.rc == 0 {
                Authn::Accepted(found)
            } else {
                Authn::Refused
            })
        })
        .await
    }

    /// The one entry the user filter finds for `name`, if exactly one does, and whether the directory
    /// disabled it.
    async fn find_user(
        &self,
        ldap: &mut Ldap,
        name: &str,
    ) -> Result<Option<FoundEntry>, LdapError> {
        let filter = user_filter(&self.config.user_filter, name);
        let entries = self
            .search(
                ldap,
                &self.config.user_base,
                Scope::Subtree,
                &filter,
                ACCOUNT_STATE
                    .into_iter()
                    .chain(["entryUUID", "objectGUID", "uid"])
                    .collect(),
            )
            .await?;
        match entries.as_slice() {
            [one] => Ok(Some(match disabled(one, unix_now()) {
                Some(why) => FoundEntry::Disabled {
                    dn: one.dn.clone(),
                    why,
                },
                None => {
                    let uids = attribute(one, "uid");
                    // Not "in no group": that would disable the account at the next re-check, when
                    // the cause may be an ACL that hides `uid` from the service account.
                    if uids.is_empty() && self.config.group_membership == GroupMembership::MemberUid
                    {
                        return Err(LdapError::Search {
                            base: one.dn.clone(),
                            text: "the entry has no uid the service account may read, and \
                                   `memberUid` groups list uids"
                                .to_owned(),
                        });
                    }
                    FoundEntry::Enabled {
                        dn: one.dn.clone(),
                        entry_id: entry_id(one),
                        uids,
                    }
                }
            })),
            [] => Ok(None),
            more => {
                tracing::warn!(
                    count = more.len(),
                    "ldap.user_filter matches several entries for one name; refusing it"
                );
                Ok(None)
            }
        }
    }

    /// The roles and zones the mapped groups give the entry `dn` (its `uids` for `memberUid` groups).
    async fn groups_of(
        &self,
        ldap: &mut Ldap,
        uids: &[String],
        dn: &str,
    ) -> Result<(Vec<Role>, Vec<String>), LdapError> {
        let filter = membership_filter(
            self.config.group_membership,
            self.config.nested_groups,
            dn,
            uids,
        );
        let roles = &self.config.roles;
        let mut out_roles = Vec::new();
        for (role, group) in [
            (Role::Admin, &roles.admin),
            (Role::Approver, &roles.approver),
            (Role::Auditor, &roles.auditor),
        ] {
            if let Some(group) = group
                && self.is_member(ldap, group, &filter).await?
            {
                out_roles.push(role);
            }
        }
        let mut zones = Vec::new();
        for (zone, group) in &self.config.zone_approvers {
            if self.is_member(ldap, group, &filter).await? {
                zones.push(zone.clone());
            }
        }
        Ok((out_roles, zones))
    }

    /// Whether the group entry `group` matches `filter` (a base search: the group itself).
    async fn is_member(
        &self,
        ldap: &mut Ldap,
        group: &str,
        filter: &str,
    ) -> Result<bool, LdapError> {
        // A mapped group that does not exist (rc=32, renamed, or hidden by an ACL) is an error, as a
        // missing base is: taken for "no members", the next re-check would disable all of them.
        match self
            .search(ldap, group, Scope::Base, filter, vec!["1.1"])
            .await
        {
            Ok(entries) => Ok(!entries.is_empty()),
            Err(LdapError::Search { base, text }) if text.starts_with("rc=32") => {
                Err(LdapError::Search {
                    base,
                    text: format!("{text} (a mapped group is not in the directory)"),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn search(
        &self,
        ldap: &mut Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<&str>,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        let result = ldap
            .with_timeout(self.config.timeout)
            .search(base, scope, filter, attrs)
            .await
            .map_err(|source| self.unreachable(source))?;
        let (entries, res) = (result.0, result.1);
        searched(base, &res)?;
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    /// [`Directory::search`] a page at a time (RFC 2696 paged results, [`PAGE_SIZE`] entries a page):
    /// a subtree larger than the server's size limit for one search (OpenLDAP's default 500, Active
    /// Directory's `MaxPageSize` 1,000) is read whole instead of failing with sizeLimitExceeded, which
    /// stopped every sync, so removed vendors stayed enabled. Referrals are dropped, never chased.
    async fn search_paged(
        &self,
        ldap: &mut Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<&str>,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
        let adapters: Vec<Box<dyn Adapter<'_, &str, Vec<&str>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(PAGE_SIZE)),
        ];
        let mut stream = ldap
            .with_timeout(self.config.timeout)
            .streaming_search_with(adapters, base, scope, filter, attrs)
            .await
            .map_err(|source| self.unreachable(source))?;
        let mut entries = Vec::new();
        while let Some(entry) = stream
            .next()
            .await
            .map_err(|source| self.unreachable(source))?
        {
            entries.push(SearchEntry::construct(entry));
        }
        let res = stream.finish().await;
        searched(base, &res)?;
        Ok(entries)
    }

    /// Every vendor entry under `[ldap.vendors] base` (none when the section is absent).
    pub async fn vendors(&self) -> Result<Vec<DirectoryVendorEntry>, LdapError> {
        let Some(v) = &self.config.vendors else {
            return Ok(Vec::new());
        };
        // Each page is a request of its own: time for SYNC_PAGES of them (the sync runs in the
        // background; nobody's sign-in waits on it).
        self.bounded_by(SYNC_PAGES + 2, async {
            let mut ldap = self.service().await?;
            let found = self
                .search_paged(
                    &mut ldap,
                    &v.base,
                    Scope::Subtree,
                    &v.filter,
                    [
                        v.name_attribute.as_str(),
                        "sshPublicKey",
                        "entryUUID",
                        "objectGUID",
                    ]
                    .into_iter()
                    .chain(ACCOUNT_STATE)
                    .collect(),
                )
                .await;
            let _ = ldap.unbind().await;
            let mut out = Vec::new();
            for entry in found? {
                let Some(name) = attribute(&entry, &v.name_attribute).into_iter().next() else {
                    continue;
                };
                out.push(DirectoryVendorEntry {
                    org: organisation(&entry.dn, &v.base).unwrap_or_default(),
                    keys: attribute(&entry, "sshPublicKey"),
                    entry_id: entry_id(&entry),
                    disabled: disabled(&entry, unix_now()),
                    dn: entry.dn,
                    name,
                });
            }
            Ok(out)
        })
        .await
    }
}

/// Reads a search's result code: success, or an error. A base that does not exist (rc=32) is an error
/// too, not an empty answer: the bases searched are configured (`user_base`, `[ldap.vendors] base`),
/// and one renamed, moved or hidden from the service account by an ACL change would otherwise read as
/// "everyone left", disabling every directory account and vendor at the next re-check and sync.
fn searched(base: &str, res: &ldap3::LdapResult) -> Result<(), LdapError> {
    match res.rc {
        0 => Ok(()),
        rc => Err(LdapError::Search {
            base: base.to_owned(),
            text: format!("rc={rc} {} {}", result_name(rc), res.text)
                .trim_end()
                .to_owned(),
        }),
    }
}

/// The RFC 4511 name of the result codes a search runs into, for the administrator reading the error.
fn result_name(rc: u32) -> &'static str {
    match rc {
        1 => "(operationsError)",
        3 => "(timeLimitExceeded: the server's time limit for one search)",
        4 => "(sizeLimitExceeded: the server's size limit for one search)",
        11 => "(adminLimitExceeded)",
        32 => "(noSuchObject)",
        34 => "(invalidDNSyntax)",
        48 => "(inappropriateAuthentication)",
        49 => "(invalidCredentials)",
        50 => "(insufficientAccessRights: the bind DN may not read there)",
        51 => "(busy)",
        52 => "(unavailable)",
        53 => "(unwillingToPerform)",
        _ => "",
    }
}

/// Entries a page of the vendor subtree's search holds ([`Directory::search_paged`]): below every
/// common server's limit for one search.
const PAGE_SIZE: i32 = 200;

/// Pages of the vendor subtree a sync has time for (20,000 vendors at [`PAGE_SIZE`]).
const SYNC_PAGES: u32 = 100;

/// What [`Directory::find_user`] found.
enum FoundEntry {
    Enabled {
        dn: String,
        entry_id: Option<String>,
        /// The entry's own `uid` values: what a `memberUid` group lists (never the name typed).
        uids: Vec<String>,
    },
    Disabled {
        dn: String,
        why: &'static str,
    },
}

/// The attributes that say a directory disabled, locked or expired an account, read with every user
/// and vendor entry (a server ignores the names it does not know): Active Directory's
/// `userAccountControl` (ACCOUNTDISABLE) and `accountExpires` (how AD time-limits a contractor's
/// account), OpenLDAP ppolicy's `pwdAccountLockedTime` (its administrative lock), 389 Directory
/// Server's and FreeIPA's `nsAccountLock`, FreeIPA's `krbPrincipalExpiration`, and `shadowExpire`.
const ACCOUNT_STATE: [&str; 6] = [
    "userAccountControl",
    "pwdAccountLockedTime",
    "nsAccountLock",
    "accountExpires",
    "krbPrincipalExpiration",
    "shadowExpire",
];

/// Seconds since the Unix epoch now (the directory's rules are judged against the system clock).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// How the directory expired `entry` by `now`, if it did. A value that does not parse counts as
/// expired, as in [`disabled`].
fn expired(entry: &SearchEntry, now: i64) -> Option<&'static str> {
    // AD: 100-ns intervals since 1601-01-01 UTC; 0 and i64::MAX mean never.
    for v in attribute(entry, "accountExpires") {
        match v.trim().parse::<i64>() {
            Ok(0 | i64::MAX) => {}
            Ok(t) if t / 10_000_000 - 11_644_473_600 > now => {}
            Ok(_) => return Some("expired (accountExpires)"),
            Err(_) => return Some("accountExpires does not parse"),
        }
    }
    // GeneralizedTime, `YYYYMMDDHHMMSSZ`.
    for v in attribute(entry, "krbPrincipalExpiration") {
        match generalized_time(v.trim()) {
            Some(t) if t > now => {}
            Some(_) => return Some("expired (krbPrincipalExpiration)"),
            None => return Some("krbPrincipalExpiration does not parse"),
        }
    }
    // Days since 1970-01-01; -1 means never.
    for v in attribute(entry, "shadowExpire") {
        match v.trim().parse::<i64>() {
            Ok(-1) => {}
            Ok(days) if days.saturating_mul(86_400) > now => {}
            Ok(_) => return Some("expired (shadowExpire)"),
            Err(_) => return Some("shadowExpire does not parse"),
        }
    }
    None
}

/// Seconds since the Unix epoch of a GeneralizedTime in UTC with whole seconds (`20261206120000Z`).
fn generalized_time(text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits[r].parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, s) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(crate::history::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// How the directory disabled or expired `entry` by `now`, if it did ([`ACCOUNT_STATE`]). A value that
/// does not parse counts as disabled: an account state the bastion cannot read does not let anyone in.
pub fn disabled(entry: &SearchEntry, now: i64) -> Option<&'static str> {
    if let Some(why) = expired(entry, now) {
        return Some(why);
    }
    /// `userAccountControl`'s ACCOUNTDISABLE bit.
    const ACCOUNTDISABLE: u32 = 0x2;
    for v in attribute(entry, "userAccountControl") {
        match v.trim().parse::<i64>() {
            // A signed 32-bit integer in AD's schema: keep the low 32 bits as they are.
            Ok(flags) if (flags as u32) & ACCOUNTDISABLE == 0 => {}
            Ok(_) => return Some("disabled (userAccountControl ACCOUNTDISABLE)"),
            Err(_) => return Some("userAccountControl does not parse"),
        }
    }
    // ppolicy's administrative lock. Any other time is a lock after failed binds, which lapses after
    // `pwdLockoutDuration` but stays written until the next good bind: the bind itself judges it.
    if attribute(entry, "pwdAccountLockedTime")
        .iter()
        .any(|v| v.trim() == "000001010000Z")
    {
        return Some("locked by an administrator (pwdAccountLockedTime)");
    }
    for v in attribute(entry, "nsAccountLock") {
        if !v.trim().eq_ignore_ascii_case("false") {
            return Some("locked (nsAccountLock)");
        }
    }
    None
}

/// The operations of a lookup: the service account's bind, the user search, and one search per
/// mapped group (`roles`, and `zones` zone approver groups), so a directory with many zone groups is
/// not cut short by a deadline made for a few.
fn lookup_operations(roles: &crate::config::LdapRoles, zones: usize) -> u32 {
    let groups = [&roles.admin, &roles.approver, &roles.auditor]
        .into_iter()
        .flatten()
        .count()
        .saturating_add(zones);
    // Never less than the few operations every exchange had before: one search can take more than one
    // time-out's worth when the directory answers with several messages (AD's referrals).
    u32::try_from(groups)
        .unwrap_or(u32::MAX)
        .saturating_add(2)
        .max(4)
}

/// The entry's stable id: `entryUUID` as given (lowercase), else `objectGUID`'s 16 bytes as hex.
fn entry_id(entry: &SearchEntry) -> Option<String> {
    if let Some(uuid) = attribute(entry, "entryUUID").into_iter().next() {
        return Some(uuid.trim().to_ascii_lowercase());
    }
    let raw = |k: &String| k.eq_ignore_ascii_case("objectGUID");
    entry
        .bin_attrs
        .iter()
        .filter(|(k, _)| raw(k))
        .flat_map(|(_, v)| v.iter().map(hex::encode))
        .chain(
            entry
                .attrs
                .iter()
                .filter(|(k, _)| raw(k))
                .flat_map(|(_, v)| v.iter().map(|s| hex::encode(s.as_bytes()))),
        )
        .next()
}

/// An attribute's values, text or binary (octet-string syntax arrives as either), case-insensitively.
fn attribute(entry: &SearchEntry, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, values) in &entry.attrs {
        if k.eq_ignore_ascii_case(name) {
            out.extend(values.iter().cloned());
        }
    }
    for (k, values) in &entry.bin_attrs {
        if k.eq_ignore_ascii_case(name) {
            out.extend(
                values
                    .iter()
                    .filter_map(|v| String::from_utf8(v.clone()).ok()),
            );
        }
    }
    out
}

/// The user filter for `name`: `{name}` replaced by the name escaped per RFC 4515 (`*`, `(`, `)`,
/// `\` and NUL as `\2a`…), so typed text can only ever be a value.
pub fn user_filter(template: &str, name: &str) -> String {
    template.replace("{name}", &ldap_escape(name))
}

/// The filter that matches a group entry (base search) when the user is a member.
pub fn membership_filter(
    style: GroupMembership,
    nested: bool,
    user_dn: &str,
    uids: &[String],
) -> String {
    match (style, nested) {
        (GroupMembership::Member, true) => {
            format!(
                "(member:{MATCHING_RULE_IN_CHAIN}:={})",
                ldap_escape(user_dn)
            )
        }
        // The entry's own uid values, not the name typed at sign-in: with a `user_filter` on another
        // attribute too (`(|(uid={name})(cn={name}))`), someone who may set their own `cn` to a name a
        // group still lists (a stale `memberUid`, which nothing keeps in step) would get its role.
        // An entry without a uid is in no such group.
        (GroupMembership::MemberUid, _) => match uids {
            [] => "(!(objectClass=*))".to_owned(),
            [one] => format!("(memberUid={})", ldap_escape(one)),
            many => format!(
                "(|{})",
                many.iter()
                    .map(|u| format!("(memberUid={})", ldap_escape(u)))
                    .collect::<String>()
            ),
        },
        (style, _) => format!("({}={})", style.attribute(), ldap_escape(user_dn)),
    }
}

/// The DN's components, split at commas that are not escaped.
fn dn_components(dn: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in dn.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(current.trim().to_owned());
            current.clear();
        } else {
            current.push(c);
        }
    }
    out.push(current.trim().to_owned());
    out
}

/// The organisation of a vendor entry: the value of the component directly under `base`
/// (`uid=vic,ou=Acme Imaging,ou=vendors,dc=…` under `ou=vendors,dc=…` → `Acme Imaging`).
pub fn organisation(dn: &str, base: &str) -> Option<String> {
    let dn = dn_components(dn);
    let base = dn_components(base);
    if dn.len() < base.len() + 2 {
        return None;
    }
    let (under, tail) = dn.split_at(dn.len() - base.len());
    let same = tail
        .iter()
        .zip(&base)
        .all(|(a, b)| a.replace(' ', "").eq_ignore_ascii_case(&b.replace(' ', "")));
    if !same {
        return None;
    }
    let org = under.last()?;
    let (_, value) = org.split_once('=')?;
    Some(dn_unescape(value))
}

/// An attribute value of a DN, unescaped (RFC 4514): `\,` and the like stand for the character, `\XX`
/// for a byte in hex; bytes that do not make UTF-8 are replaced.
fn dn_unescape(value: &str) -> String {
    let mut out = Vec::with_capacity(value.len());
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, bytes.get(i + 1)) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, Some(&next)) => {
                out.push(next);
                i += 2;
            }
            (None, None) => i += 1,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The CAs trusted for the directory: `ldap.ca_file`, or the system's.
fn roots(config: &LdapConfig) -> Result<rustls::RootCertStore, LdapError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let bad = |why: String| LdapError::CaFile {
                path: path.clone(),
                why,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system bundle can hold certificates rustls rejects; the rest still count.
                let _ = roots.add(cert);
            }
            if roots.is_empty() && (config.starttls || config.url.starts_with("ldaps://")) {
                return Err(LdapError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_name_is_only_ever_a_value() {
        assert_eq!(user_filter("(uid={name})", "erin"), "(uid=erin)");
        assert_eq!(
            user_filter("(uid={name})", "*)(uid=*"),
            "(uid=\\2a\\29\\28uid=\\2a)"
        );
        assert_eq!(
            user_filter("(&(objectClass=person)(sAMAccountName={name}))", "a\\b\0"),
            "(&(objectClass=person)(sAMAccountName=a\\5cb\\00))"
        );
        // the escaped filter still parses as one equality match
        assert!(ldap3::parse_filter(user_filter("(uid={name})", "*)(|(uid=*")).is_ok());
    }

    #[test]
    fn account_states_the_directory_disabled() {
        let entry = |k: &str, v: &str| SearchEntry {
            dn: "uid=x,dc=example,dc=com".into(),
            attrs: [(k.to_owned(), vec![v.to_owned()])].into_iter().collect(),
            bin_attrs: Default::default(),
        };
        // AD: 512 is a normal account, 514 the same disabled; a negative value is the same 32 bits.
        assert_eq!(disabled(&entry("userAccountControl", "512"), 0), None);
        assert!(disabled(&entry("userAccountControl", "514"), 0).is_some());
        assert!(disabled(&entry("useraccountcontrol", "-2147483646"), 0).is_some());
        assert!(disabled(&entry("userAccountControl", "lots"), 0).is_some());
        // ppolicy: the administrative lock only; a lock after failed binds is the bind's to judge.
        assert!(disabled(&entry("pwdAccountLockedTime", "000001010000Z"), 0).is_some());
        assert_eq!(
            disabled(&entry("pwdAccountLockedTime", "20261204120000Z"), 0),
            None
        );
        assert!(disabled(&entry("nsAccountLock", "TRUE"), 0).is_some());
        assert_eq!(disabled(&entry("nsAccountLock", "false"), 0), None);
        assert_eq!(disabled(&entry("cn", "x"), 0), None);
    }

    /// A contractor's account the directory time-limited is refused once its time is up.
    #[test]
    fn account_expiry_the_directory_set() {
        let entry = |k: &str, v: &str| SearchEntry {
            dn: "uid=x,dc=example,dc=com".into(),
            attrs: [(k.to_owned(), vec![v.to_owned()])].into_iter().collect(),
            bin_attrs: Default::default(),
        };
        // 2026-12-06 00:00:00 UTC.
        let now = 1_796_515_200;
        assert_eq!(generalized_time("20261206000000Z"), Some(now));
        // AD FILETIME of that moment: (now + 11644473600) * 10^7.
        let filetime = (now + 11_644_473_600) * 10_000_000;
        let ad = |t: i64| disabled(&entry("accountExpires", &t.to_string()), now);
        assert!(ad(filetime).is_some(), "expires at this very second");
        assert!(ad(filetime - 10_000_000).is_some());
        assert_eq!(ad(filetime + 864_000_000_000), None, "a day left");
        assert_eq!(ad(0), None, "never");
        assert_eq!(ad(i64::MAX), None, "never");
        assert!(disabled(&entry("accountExpires", "soon"), now).is_some());
        let krb = |v: &str| disabled(&entry("krbPrincipalExpiration", v), now);
        assert!(krb("20261205235959Z").is_some());
        assert_eq!(krb("20261206000001Z"), None);
        assert!(krb("2026-12-06").is_some(), "unreadable counts as expired");
        let shadow = |v: &str| disabled(&entry("shadowExpire", v), now);
        assert!(shadow("20793").is_some(), "the day of now has begun");
        assert_eq!(shadow("20794"), None);
        assert_eq!(shadow("-1"), None);
    }

    #[test]
    fn a_lookup_has_time_for_each_mapped_group() {
        let roles = crate::config::LdapRoles {
            approver: Some("cn=a".into()),
            auditor: None,
            admin: Some("cn=b".into()),
        };
        assert_eq!(lookup_operations(&roles, 0), 4);
        assert_eq!(lookup_operations(&roles, 6), 10);
        let none = crate::config::LdapRoles {
            approver: None,
            auditor: None,
            admin: None,
        };
        assert_eq!(lookup_operations(&none, 1), 4, "never less than before");
    }

    fn uids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn membership_filters() {
        let dn = "uid=erin,ou=people,dc=example,dc=com";
        assert_eq!(
            membership_filter(GroupMembership::Member, false, dn, &uids(&["erin"])),
            "(member=uid=erin,ou=people,dc=example,dc=com)"
        );
        // Active Directory's nested groups: LDAP_MATCHING_RULE_IN_CHAIN
        assert_eq!(
            membership_filter(GroupMembership::Member, true, dn, &uids(&["erin"])),
            "(member:1.2.840.113556.1.4.1941:=uid=erin,ou=people,dc=example,dc=com)"
        );
        assert_eq!(
            membership_filter(GroupMembership::UniqueMember, false, dn, &uids(&["erin"])),
            "(uniqueMember=uid=erin,ou=people,dc=example,dc=com)"
        );
        assert_eq!(
            membership_filter(GroupMembership::MemberUid, false, dn, &uids(&["erin"])),
            "(memberUid=erin)"
        );
        assert_eq!(
            membership_filter(
                GroupMembership::MemberUid,
                false,
                dn,
                &uids(&["erin", "e.old"])
            ),
            "(|(memberUid=erin)(memberUid=e.old))"
        );
        assert_eq!(
            membership_filter(GroupMembership::MemberUid, false, dn, &[]),
            "(!(objectClass=*))"
        );
        assert_eq!(
            membership_filter(
                GroupMembership::Member,
                false,
                "cn=a (b)*,dc=x",
                &uids(&["x"])
            ),
            "(member=cn=a \\28b\\29\\2a,dc=x)"
        );
        for f in [
            membership_filter(GroupMembership::Member, true, dn, &uids(&["erin"])),
            membership_filter(GroupMembership::MemberUid, false, dn, &uids(&["*)(x=*"])),
        ] {
            assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn organisation_is_the_ou_under_the_base() {
        let base = "ou=vendors,dc=example,dc=com";
        assert_eq!(
            organisation("uid=vic,ou=Acme Imaging,ou=vendors,dc=example,dc=com", base),
            Some("Acme Imaging".into())
        );
        assert_eq!(
            organisation(
                "uid=vic,ou=Team,ou=Acme\\, Inc,OU=vendors, dc=example,dc=com",
                base
            ),
            Some("Acme, Inc".into())
        );
        assert_eq!(
            organisation("uid=vic,ou=vendors,dc=example,dc=com", base),
            None
        );
        assert_eq!(organisation("uid=vic,ou=x,dc=other,dc=com", base), None);
    }

    #[test]
    fn strongest_role_wins() {
        let user = |roles: Vec<Role>, zones: Vec<&str>| DirectoryUser {
            name: "erin".into(),
            dn: "uid=erin".into(),
            entry_id: None,
            roles,
            zones: zones.into_iter().map(str::to_owned).collect(),
        };
        let role = |u: DirectoryUser| u.standing().map(|s| (s.role, s.zones_only));
        assert_eq!(
            role(user(vec![Role::Auditor, Role::Admin], vec![])),
            Some((Role::Admin, false))
        );
        assert_eq!(
            role(user(vec![Role::Auditor], vec![])),
            Some((Role::Auditor, false))
        );
        // A zone's approver group alone: an approver for that zone only.
        assert_eq!(
            role(user(vec![], vec!["icu"])),
            Some((Role::Approver, true))
        );
        assert_eq!(
            role(user(vec![Role::Approver], vec!["icu"])),
            Some((Role::Approver, false))
        );
        assert_eq!(role(user(vec![], vec![])), None);
    }
}
