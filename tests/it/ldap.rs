//! Issue 13, against a real `slapd` over StartTLS with a test CA (`support/slapd.rs`): `ldap check`;
//! a directory approver who enrols chaperone's second factor at first sign-in, approves a real
//! `ssh … request`, and loses the web session when removed from the group; one answer for a wrong
//! password and an unknown name; the directory down while a local break-glass admin signs in; a
//! directory vendor who self-enrols TOTP over real OpenSSH and is cut off when the directory drops
//! their key and then their entry.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::bastion::{Bastion, Vendor, text, wait_until};
use crate::support::slapd::{self, Slapd, group, person};
use crate::support::web::{Approver, base, curl};
use crate::support::{DataDir, missing, ssh_keygen};

/// `[ldap]` roles and zones used by every test here.
const ROLES: &str = "recheck_interval = \"1s\"\n\
    [ldap.roles]\napprover = \"cn=approvers,ou=groups,dc=example,dc=com\"\n\
    auditor = \"cn=auditors,ou=groups,dc=example,dc=com\"\n\
    [ldap.zones.icu]\napprover = \"cn=icu-approvers,ou=groups,dc=example,dc=com\"\n";

fn slapd_or_skip(dir: &Path, vendors: &[(&str, &str, &str)]) -> Option<Slapd> {
    if !slapd::available() {
        missing("slapd and ldap-utils");
        return None;
    }
    Some(Slapd::start(dir, vendors))
}

fn append_config(d: &DataDir, text: &str) {
    let mut config = std::fs::read_to_string(d.config()).unwrap();
    config.push_str(text);
    std::fs::write(d.config(), config).unwrap();
}

#[test]
fn ldap_check_names_the_dn_and_roles_or_says_why_not() {
    let d = DataDir::init();
    let Some(mut dir) = slapd_or_skip(d.path(), &[]) else {
        return;
    };
    append_config(&d, &dir.config(ROLES));

    // The service account's password in a file others may read: refused, saying why; doctor too.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let pw = &dir.bind_password_file;
        std::fs::set_permissions(pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = d.run(&["ldap", "check", "erin"]);
        assert_ne!(refused.code(), 0);
        assert!(
            refused.stderr().contains("others may read it"),
            "{}",
            refused.stderr()
        );
        let doctor = d.run(&["doctor"]);
        assert!(
            doctor.stdout().contains("ldap.bind_password_file")
                && doctor.stdout().contains("others may read it"),
            "{}",
            doctor.stdout()
        );
        std::fs::set_permissions(pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    let erin = d.run(&["ldap", "check", "erin"]);
    erin.ok();
    assert!(erin.stdout().contains(&person("erin")), "{}", erin.stdout());
    // slapd gives entryUUID: what tells a renamed entry from a new one.
    assert!(
        erin.stdout()
            .lines()
            .any(|l| l.starts_with("entry id: ") && l.len() == "entry id: ".len() + 36),
        "{}",
        erin.stdout()
    );
    assert!(
        erin.stdout().contains("roles: approver"),
        "{}",
        erin.stdout()
    );
    let ivan = d.run(&["ldap", "check", "ivan", "--json"]);
    let ivan = ivan.ok().json();
    assert_eq!(ivan["zones"], serde_json::json!(["icu"]));
    assert_eq!(ivan["role"], "approver");
    assert_eq!(ivan["zones_only"], true, "{ivan}");

    let nobody = d.run(&["ldap", "check", "nobody"]);
    nobody.fails(1);
    assert!(
        nobody.stderr().contains("no such user"),
        "{}",
        nobody.stderr()
    );
    // Injection: the name is escaped (RFC 4515), so it matches nobody rather than everybody.
    let wild = d.run(&["ldap", "check", "*)(uid=*"]);
    wild.fails(1);
    assert!(wild.stderr().contains("no such user"), "{}", wild.stderr());
    let star = d.run(&["ldap", "check", "*"]);
    star.fails(1);
    assert!(star.stderr().contains("no such user"), "{}", star.stderr());

    let mallory = d.run(&["ldap", "check", "mallory"]);
    mallory.fails(1);
    assert!(
        mallory.stderr().contains("in no mapped group"),
        "{}",
        mallory.stderr()
    );

    // `memberUid` groups are matched on the entry's own uid, never on the name typed: with a
    // user_filter on cn too, mallory (who may edit her own cn) named after a uid the group still lists
    // (a stale memberUid) is in no group, while erin, listed by her uid, is.
    dir.modify(&format!(
        "dn: {}\nobjectClass: posixGroup\ncn: unix-approvers\ngidNumber: 5000\n\
         memberUid: erin\nmemberUid: former-admin\n\n\
         dn: {}\nchangetype: modify\nreplace: cn\ncn: former-admin\n",
        group("unix-approvers"),
        person("mallory")
    ));
    let config = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        config
            .replace(
                "recheck_interval = \"1s\"",
                "recheck_interval = \"1s\"\ngroup_membership = \"memberUid\"\n\
                 user_filter = \"(|(uid={name})(cn={name}))\"",
            )
            .replace(&group("approvers"), &group("unix-approvers")),
    )
    .unwrap();
    let erin = d.run(&["ldap", "check", "erin"]);
    assert!(
        erin.ok().stdout().contains("roles: approver"),
        "{}",
        erin.stdout()
    );
    // Every configured base and group is there: doctor says so and fails none of them.
    let doctor = d.run(&["doctor"]);
    assert!(
        doctor.stdout().contains(
            "ok   ldap: the service account binds; 4 configured base(s) and group(s) found"
        ) && !doctor.stdout().contains("FAIL ldap"),
        "{}",
        doctor.stdout()
    );
    let posing = d.run(&["ldap", "check", "former-admin"]);
    posing.fails(1);
    assert!(
        posing.stderr().contains(&person("mallory"))
            && posing.stderr().contains("in no mapped group"),
        "{}",
        posing.stderr()
    );
    // A mapped group missing from the directory (renamed, or hidden by an ACL) is an error, not "no
    // members": the re-check would otherwise disable every one of them.
    let config = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        config.replace(&group("unix-approvers"), &group("renamed-approvers")),
    )
    .unwrap();
    let missing = d.run(&["ldap", "check", "erin"]);
    assert_ne!(missing.code(), 0);
    assert!(
        missing
            .stderr()
            .contains("a mapped group is not in the directory"),
        "{}",
        missing.stderr()
    );
    // doctor finds it before anyone signs in.
    let doctor = d.run(&["doctor"]);
    assert!(
        doctor.stdout().contains(&format!(
            "FAIL ldap.roles.approver: {}: not in the directory",
            group("renamed-approvers")
        )) && doctor
            .stdout()
            .contains("ok   ldap: the service account binds"),
        "{}",
        doctor.stdout()
    );

    dir.stop();
    let down = d.run(&["ldap", "check", "erin"]);
    down.fails(1);
    assert!(
        down.stderr().contains("directory unreachable"),
        "{}",
        down.stderr()
    );
}

/// A directory staff member's first sign-in (password `dirpw-NAME`): the form sends them to enrol a
/// second factor (no password chosen: the directory has it); they enrol the authenticator app.
fn enrol_directory_staff(b: &Bastion, name: &str) -> Approver {
    let password = format!("dirpw-{name}");
    let (status, location, body) = form_sign_in(b, name, &password);
    assert_eq!(status, 303, "{body}\n{}", b.log());
    let token = location
        .strip_prefix("/enroll/")
        .unwrap_or_else(|| panic!("no enrollment link in {location:?}"))
        .to_owned();
    let page = curl(None, &[&format!("{}/enroll/{token}", base(b))]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("id=\"password\""), "{}", page.body);
    let secret = page
        .body
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    let user = Approver::with_secret(b, name, &password, &secret);
    let done = curl(
        None,
        &[
            "--data-urlencode",
            &format!("code={}", user.next_code()),
            &format!("{}/enroll/{token}", base(b)),
        ],
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("You are enrolled"), "{}", done.body);
    user
}

/// The sign-in form's answer to `name`/`password` with no code (curl, no cookie jar).
fn form_sign_in(b: &Bastion, name: &str, password: &str) -> (u16, String, String) {
    form_sign_in_from(b, None, name, password)
}

/// [`form_sign_in`] from the loopback address `source`.
fn form_sign_in_from(
    b: &Bastion,
    source: Option<&str>,
    name: &str,
    password: &str,
) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "-", "-D", "-", "-w", "\n%{http_code}"])
        .args(crate::support::web::from(source))
        .args(["--data-urlencode", &format!("name={name}")])
        .args(["--data-urlencode", &format!("password={password}")])
        .args(["--data-urlencode", "code="])
        .arg(format!("{}/login", base(b)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, status) = text.rsplit_once('\n').unwrap();
    let location = rest
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_default()
        .trim()
        .to_owned();
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status.trim().parse().unwrap(), location, body)
}

/// Starts `ssh alice@bastion request …`, waiting for a decision.
fn request(b: &Bastion, v: &Vendor, words: &str) -> Child {
    let mut cmd = b.ssh(v, &v.name);
    cmd.arg(format!("request {words}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

fn audit(b: &Bastion) -> String {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
}

/// `[ldap] max_failed_binds` counts a name's wrong passwords from every address together: past it the
/// directory is not asked for that name, whether an account holds it or not, so the sign-in form
/// cannot drive the directory's own lockout of a hospital account.
#[test]
fn wrong_passwords_from_many_addresses_stop_reaching_the_directory() {
    let d = DataDir::init();
    let Some(dir) = slapd_or_skip(d.path(), &[]) else {
        return;
    };
    append_config(&d, &dir.config(&format!("max_failed_binds = 3\n{ROLES}")));
    let b = Bastion::start(d);
    let mut erin = enrol_directory_staff(&b, "erin");
    erin.login();
    for (i, name) in ["audrey", "erin"].into_iter().enumerate() {
        for n in 0..3 {
            let from = format!("127.0.{}.{}", 20 + i, 10 + n);
            let (status, _, _) = form_sign_in_from(&b, Some(&from), name, "guess");
            assert_eq!(status, 401);
        }
    }
    // The right password from an address that never failed: refused, the directory not asked.
    let (status, location, _) = form_sign_in_from(&b, Some("127.0.30.1"), "audrey", "dirpw-audrey");
    assert_eq!(status, 401, "{location}\n{}", b.log());
    let refused = erin.try_login("dirpw-erin", &erin.next_code());
    assert_eq!(refused.status, 401, "{}", refused.body);
    let capped: Vec<serde_json::Value> = audit(&b)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "staff.signin.failed")
        .map(|e| serde_json::from_str::<serde_json::Value>(e["detail"].as_str().unwrap()).unwrap())
        .filter(|d| d["why"] == "directory binds capped")
        .collect();
    assert_eq!(capped.len(), 2, "{capped:?}");
    assert_eq!(capped[0]["account"], false, "{capped:?}");
    assert_eq!(capped[1]["account"], true, "{capped:?}");

    // Sent at once from six addresses, wrong passwords of one name still reach the directory only
    // up to the cap: the count and the bind are one name's turn.
    std::thread::scope(|s| {
        for n in 0..6 {
            let b = &b;
            s.spawn(move || {
                let from = format!("127.0.40.{}", 10 + n);
                let (status, _, _) = form_sign_in_from(b, Some(&from), "ivan", "guess");
                assert_eq!(status, 401);
            });
        }
    });
    let ivan: Vec<serde_json::Value> = audit(&b)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "staff.signin.failed" && e["subject"] == "user:ivan")
        .map(|e| serde_json::from_str::<serde_json::Value>(e["detail"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(ivan.len(), 6, "{ivan:?}");
    let bound = ivan
        .iter()
        .filter(|d| d["why"] != "directory binds capped")
        .count();
    assert_eq!(bound, 3, "{ivan:?}");
}

#[test]
fn directory_approver_enrols_at_first_sign_in_approves_and_is_signed_out_when_removed() {
    let d = DataDir::init();
    let Some(mut dir) = slapd_or_skip(d.path(), &[]) else {
        return;
    };
    append_config(&d, &dir.config(ROLES));
    let b = Bastion::start(d);
    b.data
        .run(&[
            "asset",
            "add",
            "mri-01",
            "--address",
            "127.0.0.1",
            "--zone",
            "radiology",
            "--purpose",
            "MRI",
            "--service",
            "ssh:22/ssh",
        ])
        .ok();
    let alice = b.vendor("alice", "Acme Imaging");
    // The local break-glass admin, enrolled the usual way.
    let admin = Approver::enroll(&b, "root-admin", "admin");

    // First sign-in: the directory checks the password; with no second factor yet, the form sends
    // erin to enrol one (no password chosen: the directory has it).
    let mut erin = enrol_directory_staff(&b, "erin");
    erin.login();
    // Any code does for the refusals below: only erin's counts anywhere.
    let secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".to_owned();

    // One directory entry, one account: erin's entry answering to a second name (a second `uid`)
    // does not make a second approver for four eyes; the sign-in under it is refused.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: uid\nuid: erin.old\n",
        person("erin")
    ));
    let (status, _, body) = form_sign_in(&b, "erin.old", "dirpw-erin");
    assert_eq!(status, 401, "{body}\n{}", b.log());
    assert!(
        b.log().contains("the entry signs in as another account"),
        "{}",
        b.log()
    );
    // Nor once the entry moved (an OU reorganisation: a new DN, the same entry, its group updated):
    // accounts are tied to the entry's stable id, not its DN, so erin.old still finds erin's account.
    let moved = format!("uid=erin,ou=radiology,ou=people,{}", slapd::SUFFIX);
    let move_erin = |from: &str, to_ou: &str, to: &str| {
        dir.modify(&format!(
            "dn: {from}\nchangetype: modrdn\nnewrdn: uid=erin\ndeleteoldrdn: 0\nnewsuperior: {to_ou}\n\n\
             dn: {}\nchangetype: modify\ndelete: member\nmember: {from}\n-\nadd: member\nmember: {to}\n",
            group("approvers")
        ));
    };
    dir.modify(&format!(
        "dn: ou=radiology,ou=people,{}\nobjectClass: organizationalUnit\nou: radiology\n",
        slapd::SUFFIX
    ));
    move_erin(
        &person("erin"),
        &format!("ou=radiology,ou=people,{}", slapd::SUFFIX),
        &moved,
    );
    // (from an address of its own: the test's sign-ins from 127.0.0.1 are counted per address)
    let (status, _, body) = form_sign_in_from(&b, Some("127.0.0.10"), "erin.old", "dirpw-erin");
    assert_eq!(status, 401, "{body}\n{}", b.log());
    move_erin(
        &moved,
        &format!("ou=people,{}", slapd::SUFFIX),
        &person("erin"),
    );
    // ivan is in ICU's approver group only: an approver for ICU's requests, no one else's.
    let mut ivan = enrol_directory_staff(&b, "ivan");
    ivan.login();

    // A wrong password and an unknown name answer alike (status and words).
    let wrong = erin.try_login("not-her-password", &erin.next_code());
    let unknown = Approver::with_secret(&b, "nobody-here", "dirpw-erin", &secret)
        .try_login("dirpw-erin", "123456");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body));
    // In the directory with the right password but in no mapped group: refused alike.
    let (status, _, _) = form_sign_in(&b, "mallory", "dirpw-mallory");
    assert_eq!(status, 401);
    // A name no account holds yet is counted too, per address: five refused guesses lock it from
    // there before the directory is asked, so even the right password is refused (audited as
    // locked); from another address it still opens the enrollment.
    for _ in 0..5 {
        let (status, _, _) = form_sign_in_from(&b, Some("127.0.0.7"), "audrey", "guess");
        assert_eq!(status, 401);
    }
    let (status, location, _) = form_sign_in_from(&b, Some("127.0.0.7"), "audrey", "dirpw-audrey");
    assert_eq!(status, 401, "{location}\n{}", b.log());
    let failed: Vec<serde_json::Value> = audit(&b)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "staff.signin.failed" && e["subject"] == "user:audrey")
        .map(|e| serde_json::from_str(e["detail"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|d| d["source"] == "127.0.0.7" && d["account"] == false),
        "{failed:?}"
    );
    assert_eq!(failed[4]["locked"], true, "{failed:?}");
    assert_eq!(failed[5]["why"], "locked", "{failed:?}");
    let (status, location, _) = form_sign_in_from(&b, Some("127.0.0.8"), "audrey", "dirpw-audrey");
    assert_eq!(status, 303, "{}", b.log());
    assert!(location.starts_with("/enroll/"), "{location}");

    // erin approves a request filed by a real `ssh … request`.
    let child = request(
        &b,
        &alice,
        "mri-01 ssh --for 1h --reason INC-13 directory approver",
    );
    let mut id = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            id = erin.get("/api/requests").json()[0]["id"].as_i64();
            id.is_some()
        }),
        "no pending request\n{}",
        b.log()
    );
    let refused = ivan.approve(id.unwrap());
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("decided by other approvers"),
        "{}",
        refused.body
    );
    let answer = erin.approve(id.unwrap());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, code) = text(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // An ICU device's requests are decided by ICU's approvers (or an admin), not by erin.
    b.data.add_icu_pump("pump-01", "127.0.0.1");
    let child = request(
        &b,
        &alice,
        "pump-01 ssh --for 1h --reason INC-14 pump firmware",
    );
    let mut id = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            id = erin.get("/api/requests").json()[0]["id"].as_i64();
            id.is_some()
        }),
        "no pending request\n{}",
        b.log()
    );
    let refused = erin.approve(id.unwrap());
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("decided by other approvers"),
        "{}",
        refused.body
    );
    let mut admin = admin;
    admin.login();
    let answer = admin.approve(id.unwrap());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, code) = text(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Revoking a grant and ending a session follow the same zone rule: ivan revokes ICU's grant,
    // not radiology's, and ends no radiology session.
    let grants = admin.get("/api/grants").json();
    let grant_on = |asset: &str| {
        grants
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["asset"] == asset)
            .unwrap_or_else(|| panic!("{grants}"))["id"]
            .as_i64()
            .unwrap()
    };
    let refused = ivan.post(
        &format!("/api/grants/{}/revoke", grant_on("mri-01")),
        serde_json::json!({"reason": "not mine"}),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("by other approvers"),
        "{}",
        refused.body
    );
    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    b.device("ct-02", &sshd, &[]);
    b.grant("alice", "ct-02", "ssh", "1h");
    let mut shell = b
        .ssh_with(&alice, &["-tt"], "alice+ct-02")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let live = b.live_session_id();
    let refused = ivan.post(
        &format!("/api/sessions/{live}/terminate"),
        serde_json::json!({"reason": "not mine"}),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("by other approvers"),
        "{}",
        refused.body
    );
    assert!(shell.try_wait().unwrap().is_none());
    let _ = shell.kill();
    let _ = shell.wait();
    let revoked = ivan.post(
        &format!("/api/grants/{}/revoke", grant_on("pump-01")),
        serde_json::json!({"reason": "ICU's own"}),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);

    // Renamed in the directory (uid erin becomes erin.old, her second name): once the re-check found
    // "erin" gone, the new name is the same person, whose second factor is on record under the old
    // one. The password alone does not set up a new factor for it (a phished password would take her
    // role); an administrator opens the setup, handing the link over themselves.
    let renamed = person("erin").replacen("uid=erin,", "uid=erin.old,", 1);
    dir.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: uid=erin.old\ndeleteoldrdn: 1\n\n\
         dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n-\nadd: member\nmember: {renamed}\n",
        person("erin"),
        group("approvers"),
        person("erin")
    ));
    assert!(
        wait_until(Duration::from_secs(15), || erin.get("/api/requests").status
            == 401),
        "erin is still signed in though her name went\n{}",
        b.log()
    );
    let (status, location, body) =
        form_sign_in_from(&b, Some("127.0.0.11"), "erin.old", "dirpw-erin");
    assert_eq!(status, 401, "{location}\n{body}\n{}", b.log());
    assert!(
        audit(&b)
            .lines()
            .any(|l| l.contains("\"staff.signin.failed\"")
                && l.contains("user:erin.old")
                && l.contains("second factor set up under another name")),
        "{}",
        audit(&b)
    );
    let opened = b
        .data
        .run(&["user", "enroll", "erin.old", "--json"])
        .ok()
        .json();
    let link = opened["enroll_url"].as_str().unwrap().to_owned();
    let token = link.rsplit('/').next().unwrap().to_owned();
    let page = curl(None, &[&format!("{}/enroll/{token}", base(&b))]);
    assert_eq!(page.status, 200, "{}", page.body);
    let secret_old = page
        .body
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    let mut erin_old = Approver::with_secret(&b, "erin.old", "dirpw-erin", &secret_old);
    let done = curl(
        None,
        &[
            "--data-urlencode",
            &format!("code={}", erin_old.next_code()),
            &format!("{}/enroll/{token}", base(&b)),
        ],
    );
    assert!(done.body.contains("You are enrolled"), "{}", done.body);
    erin_old.source(Some("127.0.0.11"));
    erin_old.login();
    assert_eq!(erin_old.get("/api/requests").status, 200);
    // A second `user enroll` of an account with a factor is refused.
    let again = b.data.run(&["user", "enroll", "erin.old"]);
    assert!(
        again
            .fails(1)
            .stderr()
            .contains("has a second factor already"),
        "{}",
        again.stderr()
    );
    // Named erin again (for what follows): her first account signs in as before.
    dir.modify(&format!(
        "dn: {renamed}\nchangetype: modrdn\nnewrdn: uid=erin\ndeleteoldrdn: 0\n\n\
         dn: {}\nchangetype: modify\ndelete: member\nmember: {renamed}\n-\nadd: member\nmember: {}\n",
        group("approvers"),
        person("erin")
    ));
    // (from here on from an address of her own: the test's sign-ins from 127.0.0.1 are counted)
    erin.source(Some("127.0.0.13"));
    erin.login();

    // Disabled in the directory, as Active Directory offboards (the entry and its groups stay,
    // ACCOUNTDISABLE is set): the re-check ends her web session as a removal would. Enabled again,
    // she signs in.
    assert_eq!(erin.get("/api/requests").status, 200);
    dir.modify(&slapd::account_control(&person("erin"), 514, true));
    assert!(
        wait_until(Duration::from_secs(15), || erin.get("/api/requests").status
            == 401),
        "erin is still signed in though disabled in the directory\n{}",
        b.log()
    );
    assert!(
        audit(&b)
            .lines()
            .any(|l| l.contains("\"user.directory.remove\"")
                && l.contains("user:erin")
                && l.contains("ACCOUNTDISABLE")),
        "{}",
        audit(&b)
    );
    assert_eq!(erin.try_login("dirpw-erin", &erin.next_code()).status, 401);
    dir.modify(&slapd::account_control(&person("erin"), 512, false));
    erin.login();

    // Removed from the approvers group: the re-check (1 s here) ends her web session.
    assert_eq!(erin.get("/api/requests").status, 200);
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        group("approvers"),
        person("erin")
    ));
    let removed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || erin.get("/api/requests").status
            == 401),
        "erin is still signed in\n{}",
        b.log()
    );
    assert!(removed.elapsed() < Duration::from_secs(15));
    let log = audit(&b);
    assert!(
        log.lines().any(|l| l.contains("\"user.directory.remove\"")
            && l.contains("user:erin")
            && l.contains("in no mapped group")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"user.directory.add\"") && l.contains("user:erin"))
    );
    // And she cannot sign in again (refused before any code is looked at).
    assert_eq!(erin.try_login("dirpw-erin", "000000").status, 401);
    // Back in the group, the directory gives her access back at her next sign-in; an administrator's
    // `user disable`, though, holds whatever the directory says.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        group("approvers"),
        person("erin")
    ));
    erin.login();
    b.data.run(&["user", "disable", "erin"]).ok();
    assert!(
        wait_until(Duration::from_secs(15), || erin.get("/api/requests").status
            == 401),
        "erin is still signed in after user disable\n{}",
        b.log()
    );
    // (a good code: only the disable stands in her way)
    assert_eq!(erin.try_login("dirpw-erin", &erin.next_code()).status, 401);

    // Disabled by the directory first (ACCOUNTDISABLE, the usual order when someone leaves), then by an
    // administrator: enabled again in the directory, he stays out. The administrator's disable is not
    // the directory's to undo.
    dir.modify(&slapd::account_control(&person("ivan"), 514, true));
    assert!(
        wait_until(Duration::from_secs(15), || audit(&b).lines().any(|l| l
            .contains("\"user.directory.remove\"")
            && l.contains("user:ivan"))),
        "{}",
        audit(&b)
    );
    b.data.run(&["user", "disable", "ivan"]).ok();
    dir.modify(&slapd::account_control(&person("ivan"), 512, false));
    // (from an address of its own: this test's others have used 127.0.0.1's sign-in attempts)
    ivan.source(Some("127.0.0.9"));
    assert_eq!(ivan.try_login("dirpw-ivan", &ivan.next_code()).status, 401);
    assert!(
        !audit(&b)
            .lines()
            .any(|l| l.contains("\"user.directory.update\"") && l.contains("user:ivan")),
        "{}",
        audit(&b)
    );

    // The directory down: directory accounts are told so; the local admin still signs in.
    dir.stop();
    let mut down = Approver::with_secret(&b, "audrey", "dirpw-audrey", &secret);
    down.source(Some("127.0.0.12"));
    let down = down.try_login("dirpw-audrey", "123456");
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(
        down.body.contains("directory is unreachable"),
        "{}",
        down.body
    );
    admin.login();
    assert_eq!(admin.get("/api/requests").status, 200);
}

/// An askpass script that enrols. OpenSSH hands it each keyboard-interactive prompt as `$1` (what a
/// terminal would show): it keeps the first one (the QR code, the secret, "first code") in
/// `prompt_file`, reads the base32 secret from it into `secret_file`, and answers the code of this
/// moment, then the next step's code.
fn enrolling_askpass(dir: &Path, prompt_file: &Path, secret_file: &Path) -> PathBuf {
    let path = dir.join("askpass-enrol.sh");
    let at = dir.join("askpass-enrol.time");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in\n\
               *first*) printf %s \"$1\" > {prompt}\n\
                 grep -ao 'Secret (base32): [A-Z2-7]*' {prompt} | sed 's/.*: //' | tr -d '\\n' > {out}\n\
                 t=$(date +%s); echo $t > {at} ;;\n\
               *) t=$(( $(cat {at}) + 30 )) ;;\n\
             esac\n\
             exec oathtool --totp -b -N @$t \"$(cat {out})\"\n",
            prompt = prompt_file.display(),
            out = secret_file.display(),
            at = at.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

/// Runs `ssh` for `vendor` answering with `askpass` in a UTF-8 locale (as a vendor's terminal is:
/// OpenSSH escapes what the locale cannot show); the exit code and stderr.
fn ssh_enrolling(b: &Bastion, vendor: &Vendor, askpass: &Path) -> (Option<i32>, String) {
    let out = b
        .ssh_answering(vendor, &[], &vendor.name, askpass)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn directory_vendor_self_enrols_over_openssh_and_is_cut_off_by_the_sync() {
    let d = DataDir::init();
    let key = ssh_keygen(d.path(), "vendor_vic");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let Some(dir) = slapd_or_skip(d.path(), &[("vic", "Acme Imaging", public.trim())]) else {
        return;
    };
    // The ops listener says when each directory pass last succeeded.
    let ops = crate::support::free_port();
    append_config(
        &d,
        &dir.config(&format!(
            "{ROLES}[ldap.vendors]\nbase = \"ou=vendors,dc=example,dc=com\"\nsync_interval = \"1s\"\n\
             [ops]\nlisten = \"127.0.0.1:{ops}\"\n"
        )),
    );
    let b = Bastion::start(d);
    let synced = |what: &str| {
        let (_, metrics) = crate::ops::get(ops, "/metrics");
        crate::ops::sample(
            &metrics,
            &format!("chaperone_directory_sync_timestamp_seconds{{what=\"{what}\"}}"),
        )
    };
    assert!(
        wait_until(Duration::from_secs(15), || synced("vendors") > 1e9
            && synced("staff") > 1e9),
        "{}",
        crate::ops::get(ops, "/metrics").1
    );
    // A vendor added with `vendor add`: the sync never touches it.
    let alice = b.vendor("alice", "Acme Imaging");
    // The sync adds vic, with the organisation of the OU and the key of sshPublicKey.
    assert!(
        wait_until(Duration::from_secs(15), || b
            .data
            .run(&["vendor", "show", "vic", "--json"])
            .code()
            == 0),
        "vic was not synced\n{}",
        b.log()
    );
    let shown = b.data.run(&["vendor", "show", "vic", "--json"]).ok().json();
    assert_eq!(shown["vendor"]["org"], "Acme Imaging");
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1);
    // Her keys are the directory's: removed here, the next sync gave the key back. Refused, saying
    // what to do instead.
    let pubkey = key.with_extension("pub");
    for what in ["remove", "add"] {
        let refused = b
            .data
            .run(&["vendor", "key", what, "vic", &pubkey.to_string_lossy()]);
        refused.fails(1);
        assert!(
            refused.stderr().contains("comes from the directory")
                && refused.stderr().contains("vendor disable vic"),
            "{}",
            refused.stderr()
        );
    }
    let shown = b.data.run(&["vendor", "show", "vic", "--json"]).ok().json();
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1);

    // First login: the QR code and the secret in the terminal, two consecutive codes, then in.
    let vic = Vendor {
        name: "vic".into(),
        key: key.clone(),
        secret: String::new(),
        last_step: Mutex::new(0),
    };
    let prompt_file = b.data.path().join("vic-enrol.prompt");
    let secret_file = b.data.path().join("vic-secret");
    let askpass = enrolling_askpass(b.data.path(), &prompt_file, &secret_file);
    let (code, stderr) = ssh_enrolling(&b, &vic, &askpass);
    let prompt = std::fs::read_to_string(&prompt_file).unwrap_or_default();
    assert_eq!(code, Some(0), "{stderr}\n{prompt}\n{}", b.log());
    assert!(stderr.contains("set up your second factor"), "{stderr}");
    assert!(prompt.contains("Set up your second factor"), "{prompt}");
    // The QR code in Unicode half blocks, as the terminal gets it (not escaped).
    assert!(
        prompt.contains('\u{2580}') && prompt.contains('\u{2584}'),
        "no QR code drawn: {prompt}"
    );
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.len(), 32, "{secret:?}");
    let log = audit(&b);
    assert!(
        log.lines()
            .any(|l| l.contains("\"vendor.totp.enroll\"") && l.contains("vendor:vic"))
    );

    // From now on: key, then a code of the enrolled app, like any vendor.
    let vic = Vendor {
        secret,
        last_step: Mutex::new(crate::support::bastion::now() / 30 + 1),
        ..vic
    };
    let out = b.ssh(&vic, "vic").output().unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // A live connection; the directory drops the key: cut after one sync, and the next login refused.
    let mut live = b.ssh_with(&vic, &["-N"], "vic").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        live.try_wait().unwrap().is_none(),
        "the connection did not stay up"
    );
    // The vendors' base renamed (or hidden by an ACL change): an error, not "every vendor left". Nobody
    // is disabled or cut while the sync cannot read it; named back, the sync goes on.
    dir.modify(&format!(
        "dn: ou=vendors,{s}\nchangetype: modrdn\nnewrdn: ou=vendors-moved\ndeleteoldrdn: 1\n",
        s = slapd::SUFFIX
    ));
    assert!(
        wait_until(Duration::from_secs(15), || b.log().contains("noSuchObject")),
        "{}",
        b.log()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        live.try_wait().unwrap().is_none(),
        "the sync took a missing base for every vendor gone\n{}",
        b.log()
    );
    assert!(!audit(&b).contains("removed from the directory"));
    dir.modify(&format!(
        "dn: ou=vendors-moved,{s}\nchangetype: modrdn\nnewrdn: ou=vendors\ndeleteoldrdn: 1\n",
        s = slapd::SUFFIX
    ));
    // Someone who may add entries in their own organisation's OU adds another `vic` with their key:
    // vic is tied to the entry it was added from, so the impostor's key is never vic's and vic's
    // own key, access and connection stay.
    let fingerprint = |shown: &serde_json::Value| shown["keys"].to_string();
    let before = fingerprint(&b.data.run(&["vendor", "show", "vic", "--json"]).ok().json());
    let other = ssh_keygen(b.data.path(), "impostor");
    let other = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    dir.modify(&format!(
        "dn: ou=Evil Corp,ou=vendors,{s}\nobjectClass: organizationalUnit\nou: Evil Corp\n\n\
         dn: uid=vic,ou=Evil Corp,ou=vendors,{s}\nobjectClass: inetOrgPerson\n\
         objectClass: ldapPublicKey\nuid: vic\ncn: vic\nsn: vic\nsshPublicKey: {k}\n",
        s = slapd::SUFFIX,
        k = other.trim()
    ));
    // And a new name two entries hold at once is nobody's: not added.
    dir.modify(&format!(
        "dn: uid=zed,ou=Evil Corp,ou=vendors,{s}\nobjectClass: inetOrgPerson\n\
         objectClass: ldapPublicKey\nuid: zed\ncn: zed\nsn: zed\nsshPublicKey: {k}\n\n\
         dn: uid=zed,ou=Acme Imaging,ou=vendors,{s}\nobjectClass: inetOrgPerson\n\
         objectClass: ldapPublicKey\nuid: zed\ncn: zed\nsn: zed\n",
        s = slapd::SUFFIX,
        k = other.trim()
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(
        b.data.run(&["vendor", "show", "zed", "--json"]).code(),
        0,
        "a name two entries hold was added"
    );
    let shown = b.data.run(&["vendor", "show", "vic", "--json"]).ok().json();
    assert_eq!(fingerprint(&shown), before, "{}", b.log());
    assert_eq!(shown["vendor"]["enabled"], true, "{shown}");
    assert!(live.try_wait().unwrap().is_none(), "{}", b.log());
    dir.modify(&format!(
        "dn: uid=vic,ou=Evil Corp,ou=vendors,{}\nchangetype: delete\n",
        slapd::SUFFIX
    ));
    dir.modify(&format!(
        "dn: uid=vic,ou=Acme Imaging,ou=vendors,{}\nchangetype: modify\ndelete: sshPublicKey\n",
        slapd::SUFFIX
    ));
    let dropped = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || live
            .try_wait()
            .unwrap()
            .is_some()),
        "the live connection survived the key's removal\n{}",
        b.log()
    );
    assert!(dropped.elapsed() < Duration::from_secs(10));
    let out = b.ssh(&vic, "vic").output().unwrap();
    assert_ne!(out.status.code(), Some(0));

    // The key back, then the entry disabled as Active Directory offboards (it stays, with its key):
    // the vendor is disabled and the live connection ends, as when an entry is deleted.
    dir.modify(&format!(
        "dn: uid=vic,ou=Acme Imaging,ou=vendors,{}\nchangetype: modify\nadd: sshPublicKey\nsshPublicKey: {}\n",
        slapd::SUFFIX,
        public.trim()
    ));
    assert!(wait_until(Duration::from_secs(10), || {
        b.data.run(&["vendor", "show", "vic", "--json"]).json()["keys"]
            .as_array()
            .is_some_and(|k| k.len() == 1)
    }));
    let mut live = b.ssh_with(&vic, &["-N"], "vic").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        live.try_wait().unwrap().is_none(),
        "the connection did not stay up\n{}",
        b.log()
    );
    // Grants on an asset of vic's organisation and on one that names none.
    for (asset, address, org) in [
        ("mri-07", "127.0.0.7", Some("Acme Imaging")),
        ("ct-07", "127.0.0.8", None),
    ] {
        let mut args = vec![
            "asset",
            "add",
            asset,
            "--address",
            address,
            "--zone",
            "radiology",
            "--purpose",
            "x",
            "--service",
            "ssh:22/ssh",
        ];
        if let Some(org) = org {
            args.extend(["--vendor-org", org]);
        }
        b.data.run(&args).ok();
    }
    let lost = b.grant("vic", "mri-07", "ssh", "1h");
    let kept = b.grant("vic", "ct-07", "ssh", "1h");
    // The organisation renamed: vic's entry moves to another OU. Same entry (its entryUUID), so vic
    // follows it: still enabled, connection up, the move audited; vic is now with the new
    // organisation, so the grant on the old one's asset is revoked, the other kept.
    dir.modify(&format!(
        "dn: ou=Acme Healthcare,ou=vendors,{s}\nobjectClass: organizationalUnit\nou: Acme Healthcare\n\n\
         dn: uid=vic,ou=Acme Imaging,ou=vendors,{s}\nchangetype: modrdn\nnewrdn: uid=vic\n\
         deleteoldrdn: 1\nnewsuperior: ou=Acme Healthcare,ou=vendors,{s}\n",
        s = slapd::SUFFIX
    ));
    let moved_to = format!("uid=vic,ou=Acme Healthcare,ou=vendors,{}", slapd::SUFFIX);
    assert!(
        wait_until(Duration::from_secs(10), || audit(&b).lines().any(|l| l
            .contains("\"vendor.directory.move\"")
            && l.contains("Acme Healthcare"))),
        "{}",
        b.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(live.try_wait().unwrap().is_none(), "{}", b.log());
    let shown = b.data.run(&["vendor", "show", "vic", "--json"]).ok().json();
    assert_eq!(shown["vendor"]["enabled"], true, "{shown}");
    assert_eq!(shown["vendor"]["org"], "Acme Healthcare", "{shown}");
    let grants = b
        .data
        .run(&["grant", "list", "--all", "--json"])
        .ok()
        .json();
    let grant = |id: i64| {
        grants
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(grant(lost)["revoked_by"], "system:directory", "{grants}");
    assert!(
        grant(lost)["revoke_reason"]
            .as_str()
            .unwrap()
            .contains("mri-07 is serviced by another organisation than the vendor's"),
        "{grants}"
    );
    assert!(grant(kept)["revoked_at"].is_null(), "{grants}");
    dir.modify(&slapd::account_control(&moved_to, 514, true));
    assert!(
        wait_until(Duration::from_secs(10), || live
            .try_wait()
            .unwrap()
            .is_some()),
        "the live connection survived the vendor's entry being disabled\n{}",
        b.log()
    );
    let shown = b.data.run(&["vendor", "list", "--json"]).ok().json();
    let vic_row = shown
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vic")
        .unwrap();
    assert_eq!(vic_row["enabled"], false);
    // ... with the directory's reason.
    assert!(
        audit(&b).lines().any(|l| l.contains("\"vendor.disable\"")
            && l.contains("vendor:vic")
            && l.contains("ACCOUNTDISABLE")),
        "{}",
        audit(&b)
    );
    // The local vendor, through all these syncs: untouched, and still signs in.
    let alice_row = shown
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "alice")
        .unwrap();
    assert_eq!(alice_row["enabled"], true);
    let out = b.ssh(&alice, "alice").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let log = audit(&b);
    assert!(
        log.lines()
            .any(|l| l.contains("\"vendor.key.remove\"") && l.contains("vendor:vic"))
    );

    // vic's entry deleted and made again: another entry (a new entryUUID), so vic stays disabled,
    // until an administrator's `vendor enable` ties vic to the entry that holds the name now.
    dir.modify(&format!(
        "dn: {moved_to}\nchangetype: delete\n\n\
         dn: {moved_to}\nchangetype: add\nobjectClass: inetOrgPerson\nobjectClass: ldapPublicKey\n\
         uid: vic\ncn: vic\nsn: vic\nsshPublicKey: {}\n",
        public.trim()
    ));
    std::thread::sleep(Duration::from_secs(3));
    let enabled = || {
        b.data.run(&["vendor", "show", "vic", "--json"]).ok().json()["vendor"]["enabled"] == true
    };
    assert!(
        !enabled(),
        "a new entry of the same name took vic over\n{}",
        b.log()
    );
    let out = b.data.run(&["vendor", "enable", "vic"]).ok().stdout();
    assert!(out.contains("ties it to the entry"), "{out}");
    let moves = || {
        audit(&b)
            .lines()
            .filter(|l| l.contains("\"vendor.directory.move\""))
            .count()
    };
    let before = moves();
    assert!(
        wait_until(Duration::from_secs(10), || moves() > before),
        "{}",
        b.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(enabled(), "the sync disabled vic again\n{}", b.log());
}

/// The QR code drawn in a terminal (`identity::totp::terminal_qr`: Unicode half blocks, light modules
/// drawn, two module rows per line) as the screen shows it, decoded by an independent QR reader (rqrr).
pub fn read_terminal_qr(screen: &str) -> String {
    let rows: Vec<&str> = screen
        .lines()
        .filter(|l| {
            l.chars().count() >= 21
                && l.chars().any(|c| c != ' ')
                && l.chars()
                    .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}'))
        })
        .collect();
    assert!(rows.len() >= 11, "no QR code on the screen:\n{screen}");
    // One module row per half line; a drawn half is a light module.
    let mut modules: Vec<Vec<bool>> = Vec::new(); // true: dark
    for row in &rows {
        let cells: Vec<char> = row.chars().collect();
        modules.push(
            cells
                .iter()
                .map(|c| !matches!(c, '\u{2580}' | '\u{2588}'))
                .collect(),
        );
        modules.push(
            cells
                .iter()
                .map(|c| !matches!(c, '\u{2584}' | '\u{2588}'))
                .collect(),
        );
    }
    let width = modules.iter().map(Vec::len).max().unwrap();
    const SCALE: usize = 4;
    // A light border of its own, in case the screen cut the quiet zone.
    let border = 4 * SCALE;
    let (w, h) = (
        width * SCALE + 2 * border,
        modules.len() * SCALE + 2 * border,
    );
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        let (Some(x), Some(y)) = (x.checked_sub(border), y.checked_sub(border)) else {
            return 255;
        };
        let dark = modules
            .get(y / SCALE)
            .and_then(|r| r.get(x / SCALE))
            .copied()
            .unwrap_or(false);
        if dark { 0 } else { 255 }
    });
    let grids = image.detect_grids();
    assert_eq!(
        grids.len(),
        1,
        "no readable QR code on the screen:\n{screen}"
    );
    let (_, text) = grids[0].decode().expect("decoding the QR code");
    text
}

/// A vendor added without `--totp`: the administrator never sees a seed; the first login, in a real
/// terminal (OpenSSH under tmux), shows a QR code and the secret and asks for two codes, typed as a
/// person would.
#[test]
fn local_vendor_without_totp_enrols_at_first_login_and_reset_starts_over() {
    if !crate::support::tmux::available() {
        missing("tmux");
        return;
    }
    let d = DataDir::init();
    let key = ssh_keygen(d.path(), "vendor_val");
    let added = d.run(&[
        "vendor",
        "add",
        "val",
        "--org",
        "Acme",
        "--key",
        &key.with_extension("pub").to_string_lossy(),
        "--json",
    ]);
    let json = added.ok().json();
    assert!(json.get("totp_uri").is_none(), "{json}");
    assert!(!added.stdout().contains("otpauth"), "{}", added.stdout());
    let b = Bastion::start(d);
    let val = Vendor {
        name: "val".into(),
        key,
        secret: String::new(),
        last_step: Mutex::new(0),
    };

    // The first login, in a terminal: `ssh val@bastion`, nothing else.
    let command: Vec<String> = std::iter::once("ssh".to_owned())
        .chain(b.client_options(&val))
        .chain(["-p".into(), b.ssh_port.to_string(), "val@127.0.0.1".into()])
        .map(|a| crate::support::shell_quote(&a))
        .collect();
    let term = crate::support::tmux::Tmux::start(
        b.data.path(),
        &format!(
            "env -u SSH_ASKPASS -u SSH_ASKPASS_REQUIRE -u DISPLAY LC_ALL=C.UTF-8 {}; \
             echo \"ssh exited: $?\"; sleep 600",
            command.join(" ")
        ),
        160,
        100,
    );
    assert!(
        wait_until(Duration::from_secs(30), || term
            .screen()
            .contains("Enrollment: first code:")),
        "no enrollment prompt:\n{}\n{}",
        term.screen(),
        b.log()
    );
    let screen = term.screen();
    assert!(screen.contains("Set up your second factor"), "{screen}");
    let secret = screen
        .split("Secret (base32): ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no secret on the screen:\n{screen}"))
        .to_owned();
    assert_eq!(secret.len(), 32, "{secret:?}");
    // What an authenticator app scans: the QR code holds the same secret, for this vendor.
    let uri = read_terminal_qr(&screen);
    assert!(uri.starts_with("otpauth://totp/chaperone:val?"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");

    // The app's code now, then (once it changes) the next one; oathtool is the reference TOTP.
    let oathtool = |at: i64| {
        let out = std::process::Command::new("oathtool")
            .args(["--totp", "-b", "-N", &format!("@{at}"), &secret])
            .output()
            .expect("oathtool");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let step = crate::support::bastion::now() / 30;
    term.type_line(&oathtool(step * 30));
    assert!(
        wait_until(Duration::from_secs(15), || term
            .screen()
            .contains("Enrollment: next code")),
        "no second prompt:\n{}",
        term.screen()
    );
    term.type_line(&oathtool((step + 1) * 30));
    assert!(
        wait_until(Duration::from_secs(30), || term
            .screen()
            .contains("ssh exited:")),
        "ssh did not finish:\n{}\n{}",
        term.screen(),
        b.log()
    );
    let screen = term.screen();
    assert!(screen.contains("ssh exited: 0"), "{screen}\n{}", b.log());
    // Signed in: the vendor's home screen.
    assert!(
        screen.contains("chaperone: signed in as val (Acme)"),
        "{screen}"
    );
    drop(term);

    // Nobody but the vendor saw the seed: not the administrator's commands, the audit log or the
    // server's log.
    for shown in [
        b.data
            .run(&["vendor", "show", "val", "--json"])
            .ok()
            .stdout(),
        b.data.run(&["vendor", "list", "--json"]).ok().stdout(),
        audit(&b),
        b.log(),
    ] {
        assert!(!shown.contains(&secret), "the seed leaked: {shown}");
    }
    assert!(
        audit(&b)
            .lines()
            .any(|l| l.contains("\"vendor.totp.enroll\"") && l.contains("vendor:val"))
    );

    // From now on: key, then a code of the enrolled app, like any vendor.
    let val = Vendor {
        secret,
        last_step: Mutex::new(step + 1),
        ..val
    };
    let out = b.ssh(&val, "val").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);

    // Reset: the old app's codes stop working at once; the next login enrols again.
    b.data.run(&["vendor", "totp", "reset", "val"]).ok();
    let out = b.ssh(&val, "val").output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let prompt_file = b.data.path().join("val-enrol.prompt");
    let secret_file = b.data.path().join("val-secret");
    let askpass = enrolling_askpass(b.data.path(), &prompt_file, &secret_file);
    let (code, stderr) = ssh_enrolling(&b, &val, &askpass);
    assert_eq!(code, Some(0), "{stderr}\n{}", b.log());
    let again = std::fs::read_to_string(&secret_file).unwrap();
    assert_ne!(again, val.secret, "a reset draws a new seed");
    let log = audit(&b);
    assert!(log.lines().any(|l| l.contains("\"vendor.totp.reset\"")));
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"vendor.totp.enroll\"") && l.contains("vendor:val"))
            .count(),
        2
    );
}

/// A vendor subtree larger than the server gives one search (OpenLDAP's size limit here, Active
/// Directory's MaxPageSize in the field) is read a page at a time, whole: every vendor is synced (none
/// taken for removed because it sat on a later page), and one removed from the directory is disabled.
#[test]
fn a_vendor_subtree_past_the_servers_size_limit_is_synced_whole() {
    const VENDORS: usize = 250;
    let d = DataDir::init();
    let vendors: Vec<(String, String)> = (0..VENDORS)
        .map(|i| {
            let name = format!("bulk{i:03}");
            let key = ssh_keygen(d.path(), &name).with_extension("pub");
            (
                name,
                std::fs::read_to_string(key).unwrap().trim().to_owned(),
            )
        })
        .collect();
    let seed: Vec<(&str, &str, &str)> = vendors
        .iter()
        .map(|(name, key)| (name.as_str(), "Bulk Devices", key.as_str()))
        .collect();
    let Some(dir) = slapd_or_skip(d.path(), &seed) else {
        return;
    };
    // A service account that the size limit binds (the root DN is above every limit), and a limit
    // below the subtree: one search returns at most 100 entries; paged searches may return them all.
    dir.modify(
        "dn: cn=sync,dc=example,dc=com\nobjectClass: organizationalRole\n\
         objectClass: simpleSecurityObject\ncn: sync\nuserPassword: syncpw\n",
    );
    dir.configure(
        "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcLimits\n\
         olcLimits: users size.soft=100 size.hard=100 size.prtotal=unlimited\n",
    );
    let unpaged = std::process::Command::new("ldapsearch")
        .env("LDAPTLS_CACERT", &dir.ca_file)
        .args(["-ZZ", "-x", "-H", &dir.url()])
        .args(["-D", "cn=sync,dc=example,dc=com", "-w", "syncpw"])
        .args(["-b", "ou=vendors,dc=example,dc=com", "(uid=*)", "uid"])
        .output()
        .unwrap();
    assert_eq!(
        unpaged.status.code(),
        Some(4),
        "the limit must bind one search (4: sizeLimitExceeded): {}",
        String::from_utf8_lossy(&unpaged.stderr)
    );
    let password = d.path().join("syncpw");
    std::fs::write(&password, "syncpw\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    append_config(
        &d,
        &dir.config(&format!(
            "{ROLES}[ldap.vendors]\nbase = \"ou=vendors,dc=example,dc=com\"\n"
        ))
        .replace(
            &format!("bind_dn = \"{}\"", slapd::ROOT_DN),
            "bind_dn = \"cn=sync,dc=example,dc=com\"",
        )
        .replace(
            &dir.bind_password_file.display().to_string(),
            &password.display().to_string(),
        ),
    );
    let enabled = |d: &DataDir| -> Vec<String> {
        let list = d.run(&["vendor", "list", "--json"]).ok().json();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|v| v["enabled"] == true)
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    d.run(&["ldap", "sync"]).ok();
    let synced = enabled(&d);
    assert_eq!(synced.len(), VENDORS, "{synced:?}");

    let last = &vendors[VENDORS - 1].0;
    dir.modify(&format!(
        "dn: uid={last},ou=Bulk Devices,ou=vendors,dc=example,dc=com\nchangetype: delete\n"
    ));
    d.run(&["ldap", "sync"]).ok();
    let synced = enabled(&d);
    assert_eq!(synced.len(), VENDORS - 1, "{synced:?}");
    assert!(!synced.contains(last), "{synced:?}");
}
