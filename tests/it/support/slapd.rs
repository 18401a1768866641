//! A throwaway OpenLDAP server per test: Debian's `slapd` (apt: `slapd ldap-utils`; `.ci/run` installs
//! them), its own config and database in a temp dir, nothing system-wide.
//!
//! How it is started (the TEST-HARNESS way, self-contained here):
//! - a test CA and a server certificate for `127.0.0.1`/`localhost` are made with rcgen; slapd serves
//!   StartTLS on `ldap://127.0.0.1:PORT` with them, and `security simple_bind=71` refuses a password bind
//!   without TLS on TCP (so a client that skipped StartTLS fails) while the `ldapi://` socket (SSF 71)
//!   stays usable for the test's own changes;
//! - a `slapd.conf` (core, cosine, inetorgperson and nis schemas, an mdb database for `dc=example,dc=com`,
//!   a `cn=config` database with a root password) gets the suffix entry by `slapadd` (slaptest opens the
//!   database read-only, so it must exist) and is converted by `slaptest -F` into a `slapd.d`
//!   directory, which slapd runs from (`-F`), so its configuration can change over the wire;
//! - once slapd answers, the openssh-lpk schema (`sshPublicKey`, objectClass `ldapPublicKey`) is loaded
//!   over `ldapi://` into `cn=schema,cn=config`, as on a production directory (and AD's
//!   `userAccountControl`, so a test can disable an entry as AD does), then the entries are
//!   added over `ldapi://` as the root DN: people erin (approvers), audrey (auditors), mallory (no
//!   group), ivan (ICU approvers only), each with password `dirpw-NAME`; each group also lists
//!   `cn=nobody` (groupOfNames needs a member, so a test can remove its last real one); `ou=vendors`
//!   with one OU per vendor organisation and the vendors' `sshPublicKey`s;
//! - `slapd -d 0` runs in the foreground under [`guarded`], so it dies with the test process; it is
//!   ready when `ldapwhoami` over StartTLS answers (well under a second); stopped and resumed, it keeps
//!   its `slapd.d` and database;
//! - changes during a test (`ldapmodify`) go over `ldapi://` as the root DN.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, guarded, stop_guarded};

pub const SUFFIX: &str = "dc=example,dc=com";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
const ROOT_PW: &str = "adminpw";
/// The configuration database's root (`database config` in `slapd.conf`; same password).
const CONFIG_DN: &str = "cn=config";

/// The openssh-lpk schema (`sshPublicKey`, as OpenSSH's `AuthorizedKeysCommand` helpers and
/// directory-backed bastions read it), as a `cn=schema,cn=config` entry.
const OPENSSH_LPK_SCHEMA: &str = "dn: cn=openssh-lpk,cn=schema,cn=config\n\
    objectClass: olcSchemaConfig\n\
    cn: openssh-lpk\n\
    olcAttributeTypes: ( 1.3.6.1.4.1.24552.500.1.1.1.13 NAME 'sshPublicKey'\n  \
     DESC 'MANDATORY: OpenSSH Public key' EQUALITY octetStringMatch\n  \
     SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )\n\
    olcObjectClasses: ( 1.3.6.1.4.1.24552.500.1.1.2.0 NAME 'ldapPublicKey' SUP top AUXILIARY\n  \
     DESC 'MANDATORY: OpenSSH LPK objectclass' MAY ( sshPublicKey $ uid ) )\n";

/// Active Directory's account flags (`userAccountControl`, AD's own OID) on an auxiliary class, so an
/// entry here can be disabled the way AD offboards someone (the entry stays, ACCOUNTDISABLE is set).
const AD_ACCOUNT_SCHEMA: &str = "dn: cn=ad-account,cn=schema,cn=config\n\
    objectClass: olcSchemaConfig\n\
    cn: ad-account\n\
    olcAttributeTypes: ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'\n  \
     DESC 'Active Directory account flags, for tests' EQUALITY integerMatch\n  \
     SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )\n\
    olcObjectClasses: ( 1.3.6.1.4.1.99999.2.1 NAME 'testAdAccount' SUP top AUXILIARY\n  \
     DESC 'an entry that carries AD account flags' MAY userAccountControl )\n";

/// The LDIF change that sets AD's account flags on the entry `dn` (512 enabled, 514 disabled); the
/// first time with `first`, which adds the auxiliary class too.
pub fn account_control(dn: &str, flags: u32, first: bool) -> String {
    if first {
        format!(
            "dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: testAdAccount\n-\n\
             add: userAccountControl\nuserAccountControl: {flags}\n"
        )
    } else {
        format!(
            "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {flags}\n"
        )
    }
}

pub struct Slapd {
    pub port: u16,
    pub dir: PathBuf,
    /// The test CA's certificate (PEM): chaperone's `ldap.ca_file`.
    pub ca_file: PathBuf,
    /// The root DN's password, in a file: chaperone's `ldap.bind_password_file`.
    pub bind_password_file: PathBuf,
    child: Option<std::process::Child>,
}

/// Whether slapd and the ldap-utils are installed.
pub fn available() -> bool {
    Path::new("/usr/sbin/slapd").exists()
        && Command::new("ldapmodify")
            .arg("-VV")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

/// The DN of person `uid`.
pub fn person(uid: &str) -> String {
    format!("uid={uid},ou=people,{SUFFIX}")
}

/// The DN of group `cn`.
pub fn group(cn: &str) -> String {
    format!("cn={cn},ou=groups,{SUFFIX}")
}

impl Slapd {
    /// Starts a seeded slapd in `dir` (which it owns from now on); `vendors` are `(uid, org, public
    /// key line)` entries under `ou=ORG,ou=vendors`.
    pub fn start(dir: &Path, vendors: &[(&str, &str, &str)]) -> Slapd {
        let dir = dir.join("slapd");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::create_dir_all(dir.join("slapd.d")).unwrap();
        let (ca_file, cert, key) = certificates(&dir);
        let d = dir.display();
        std::fs::write(
            dir.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 pidfile {d}/slapd.pid\n\
                 TLSCertificateFile {cert}\n\
                 TLSCertificateKeyFile {key}\n\
                 security simple_bind=71\n\
                 database config\n\
                 rootpw {ROOT_PW}\n\
                 database mdb\n\
                 suffix \"{SUFFIX}\"\n\
                 rootdn \"{ROOT_DN}\"\n\
                 rootpw {ROOT_PW}\n\
                 directory {d}/db\n",
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        // The suffix entry goes in offline (slaptest opens the database read-only, so it must exist);
        // everything else over ldapi once the schema is there.
        std::fs::write(dir.join("base.ldif"), base_entry()).unwrap();
        let out = Command::new("slapadd")
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-l")
            .arg(dir.join("base.ldif"))
            .output()
            .expect("slapadd");
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("slaptest")
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-F")
            .arg(dir.join("slapd.d"))
            .output()
            .expect("slaptest");
        assert!(
            out.status.success(),
            "slaptest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bind_password_file = dir.join("bindpw");
        std::fs::write(&bind_password_file, format!("{ROOT_PW}\n")).unwrap();
        // As README says to keep it: chaperone refuses a password file others may read.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&bind_password_file, std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        let mut s = Slapd {
            port: free_port(),
            dir,
            ca_file,
            bind_password_file,
            child: None,
        };
        s.resume();
        // The openssh-lpk schema goes into the running server's cn=config, over ldapi.
        s.change(CONFIG_DN, OPENSSH_LPK_SCHEMA);
        s.change(CONFIG_DN, AD_ACCOUNT_SCHEMA);
        s.change(ROOT_DN, &seed(vendors));
        s
    }

    fn ldapi(&self) -> String {
        let path = self.dir.join("ldapi").display().to_string();
        format!("ldapi://{}", path.replace('/', "%2F"))
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&mut self) {
        let listen = format!("{}/ {}/", self.url(), self.ldapi());
        let conf = self.dir.join("slapd.d").display().to_string();
        let child = guarded("/usr/sbin/slapd", &["-d", "0", "-F", &conf, "-h", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start slapd");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let ok = Command::new("ldapwhoami")
                .env("LDAPTLS_CACERT", &self.ca_file)
                .args(["-ZZ", "-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PW])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "slapd did not start in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (the directory is down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_guarded(&mut child);
        }
        // slapd removes its pid file when it has stopped listening.
        let started = Instant::now();
        while self.dir.join("slapd.pid").exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Applies an LDIF change as the root DN over ldapi.
    pub fn modify(&self, ldif: &str) {
        self.change(ROOT_DN, ldif);
    }

    /// Applies an LDIF change to the server's configuration (`cn=config`) over ldapi; the data
    /// database is `olcDatabase={1}mdb,cn=config`.
    pub fn configure(&self, ldif: &str) {
        self.change(CONFIG_DN, ldif);
    }

    /// Applies LDIF changes (records with `changetype`; plain records are adds) bound as `bind_dn` (the
    /// database's root DN, or `cn=config` for the configuration) over ldapi.
    fn change(&self, bind_dn: &str, ldif: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ldapmodify")
            .args([
                "-a",
                "-x",
                "-H",
                &self.ldapi(),
                "-D",
                bind_dn,
                "-w",
                ROOT_PW,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldapmodify");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify as {bind_dn}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `[ldap]` for chaperone against this server, StartTLS with the test CA; `extra` is appended
    /// (more keys and sub-tables).
    pub fn config(&self, extra: &str) -> String {
        format!(
            "\n[ldap]\nurl = \"{url}\"\nstarttls = true\nca_file = \"{ca}\"\nbind_dn = \"{ROOT_DN}\"\n\
             bind_password_file = \"{pw}\"\nuser_base = \"ou=people,{SUFFIX}\"\nconnect_timeout = \"2s\"\n\
             timeout = \"2s\"\n{extra}\n",
            url = self.url(),
            ca = self.ca_file.display(),
            pw = self.bind_password_file.display(),
        )
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost: (CA PEM, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chaperone test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "slapd test");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// The suffix's own entry.
fn base_entry() -> String {
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example Hospital\n"
    )
}

/// Everything under the suffix.
fn seed(vendors: &[(&str, &str, &str)]) -> String {
    let mut ldif = format!(
        "dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=vendors,{SUFFIX}\nobjectClass: organizationalUnit\nou: vendors\n\n"
    );
    for uid in ["erin", "audrey", "mallory", "ivan"] {
        ldif.push_str(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: dirpw-{uid}\n\n",
            dn = person(uid)
        ));
    }
    for (cn, members) in [
        ("approvers", vec!["erin"]),
        ("auditors", vec!["audrey"]),
        ("icu-approvers", vec!["ivan"]),
    ] {
        ldif.push_str(&format!(
            "dn: {}\nobjectClass: groupOfNames\ncn: {cn}\n\
             member: cn=nobody,{SUFFIX}\n",
            group(cn)
        ));
        for m in members {
            ldif.push_str(&format!("member: {}\n", person(m)));
        }
        ldif.push('\n');
    }
    let mut orgs: Vec<&str> = vendors.iter().map(|v| v.1).collect();
    orgs.dedup();
    for org in orgs {
        ldif.push_str(&format!(
            "dn: ou={org},ou=vendors,{SUFFIX}\nobjectClass: organizationalUnit\nou: {org}\n\n"
        ));
    }
    for (uid, org, key) in vendors {
        ldif.push_str(&format!(
            "dn: uid={uid},ou={org},ou=vendors,{SUFFIX}\nobjectClass: inetOrgPerson\n\
             objectClass: ldapPublicKey\nuid: {uid}\ncn: {uid}\nsn: {uid}\nsshPublicKey: {key}\n\n"
        ));
    }
    ldif
}
