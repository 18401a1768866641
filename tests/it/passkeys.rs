//! Passkey enrollment and sign-in over HTTPS against `chaperone serve`, answered by webauthn-rs's
//! software passkey (webauthn-authenticator-rs): the happy path, and the abuses — a ceremony replayed,
//! another authenticator, a foreign origin, a wrong password, TOTP for an account that has none.

use std::path::PathBuf;

use base64::Engine as _;

use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::support::bastion::{Bastion, text};
use crate::support::web::{Answer, Approver, curl, enrollment_token, post_json, post_json_from};
use crate::support::{DataDir, missing, python};

const PASSWORD: &str = "correct horse battery staple";

/// A bastion whose web page is on a known port, and a cookie jar for it.
pub struct Page {
    pub base: String,
    jar: PathBuf,
    pub _b: Bastion,
}

impl Page {
    fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        post_json(&self.jar, &format!("{}{path}", self.base), body)
    }

    /// [`Page::post`] from the loopback address `source`.
    fn post_from(&self, source: Option<&str>, path: &str, body: &serde_json::Value) -> Answer {
        post_json_from(source, &self.jar, &format!("{}{path}", self.base), body)
    }
}

/// The audit log as JSON lines.
fn audit_lines(page: &Page) -> String {
    page._b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
}

/// A bastion on a fixed port and the enrollment token of a new approver `bob`.
fn setup() -> (Page, String) {
    let data = DataDir::init();
    let port = data.fix_web_port();
    let b = Bastion::start(data);
    let token = enrollment_token(&b, "bob", "approver");
    let jar = b.data.path().join("passkey-jar");
    (
        Page {
            base: format!("https://localhost:{port}"),
            jar,
            _b: b,
        },
        token,
    )
}

/// Enrolls through the link with `key`; returns the answer and the new credential.
fn enroll(page: &Page, token: &str, key: &mut SoftPasskey) -> (Answer, serde_json::Value) {
    let start = page.post(
        &format!("/enroll/{token}/passkey/start"),
        &serde_json::json!({}),
    );
    assert_eq!(start.status, 200, "{}", start.body);
    let start = start.json();
    let options: CreationChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let origin = Url::parse(&page.base).unwrap();
    let credential = key.do_registration(origin, options).unwrap();
    let answer = page.post(
        &format!("/enroll/{token}/passkey/finish"),
        &serde_json::json!({"ceremony": start["ceremony"], "password": PASSWORD,
                            "password2": PASSWORD, "credential": credential}),
    );
    (answer, serde_json::to_value(&credential).unwrap())
}

/// Starts a sign-in for bob; returns the ceremony id and the options.
fn sign_in_start(page: &Page) -> (String, RequestChallengeResponse) {
    let j = sign_in_start_json(page, "bob");
    (
        j["ceremony"].as_str().unwrap().to_owned(),
        serde_json::from_value(j["options"].clone()).unwrap(),
    )
}

/// The start of a sign-in as `name` (only the name is sent: the password goes with the answer).
fn sign_in_start_json(page: &Page, name: &str) -> serde_json::Value {
    let start = page.post("/login/passkey/start", &serde_json::json!({"name": name}));
    assert_eq!(start.status, 200, "{}", start.body);
    start.json()
}

fn sign_in_finish(
    page: &Page,
    ceremony: &str,
    password: &str,
    credential: &impl serde::Serialize,
) -> Answer {
    page.post(
        "/login/passkey/finish",
        &serde_json::json!({"ceremony": ceremony, "password": password, "credential": credential}),
    )
}

/// A JSON value with every string, number and array length blanked: what an observer could compare.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
        Value::String(_) => Value::String(String::new()),
        Value::Number(_) => Value::from(0),
        other => other.clone(),
    }
}

#[test]
fn a_software_passkey_enrolls_and_signs_in_and_nothing_else_does() {
    let (page, token) = setup();
    let mut key = SoftPasskey::new(true);
    let (enrolled, _) = enroll(&page, &token, &mut key);
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    assert_eq!(enrolled.json()["enrolled"], "bob");
    // The link is spent.
    let again = page.post(
        &format!("/enroll/{token}/passkey/start"),
        &serde_json::json!({}),
    );
    assert_eq!(again.status, 404, "{}", again.body);

    let origin = Url::parse(&page.base).unwrap();
    // Password + passkey: a session that reaches the API.
    let (ceremony, options) = sign_in_start(&page);
    let credential = key.do_authentication(origin.clone(), options).unwrap();
    let ok = sign_in_finish(&page, &ceremony, PASSWORD, &credential);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let list = curl(Some(&page.jar), &[&format!("{}/api/requests", page.base)]);
    assert_eq!(list.status, 200, "{}", list.body);

    // The same answer again: the ceremony was used once.
    let replay = sign_in_finish(&page, &ceremony, PASSWORD, &credential);
    assert_eq!(replay.status, 400, "{}", replay.body);

    // carol's passkey (registered, same site) cannot answer bob's challenge, even when a tampered
    // page asks for carol's credential instead of bob's.
    let carol_token = enrollment_token(&page._b, "carol", "approver");
    let mut carol = SoftPasskey::new(true);
    let (carol_enrolled, carol_credential) = enroll(&page, &carol_token, &mut carol);
    assert_eq!(carol_enrolled.status, 200, "{}", carol_enrolled.body);
    let (ceremony, options) = sign_in_start(&page);
    let mut options = serde_json::to_value(&options).unwrap();
    options["publicKey"]["allowCredentials"] =
        serde_json::json!([{"type": "public-key", "id": carol_credential["id"]}]);
    let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let carols = carol.do_authentication(origin.clone(), options).unwrap();
    let refused = sign_in_finish(&page, &ceremony, PASSWORD, &carols);
    assert_eq!(refused.status, 401, "{}", refused.body);

    // A genuine answer whose client data is rewritten to another origin (a relay that edits what it
    // forwards): refused.
    let (ceremony, options) = sign_in_start(&page);
    let genuine = key.do_authentication(origin.clone(), options).unwrap();
    let mut phished = serde_json::to_value(&genuine).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let field = &mut phished["response"]["clientDataJSON"];
    let client_data = String::from_utf8(b64.decode(field.as_str().unwrap()).unwrap()).unwrap();
    assert!(client_data.contains(&page.base), "{client_data}");
    *field = b64
        .encode(client_data.replace(&page.base, "https://bastion.evil.example"))
        .into();
    let refused = sign_in_finish(&page, &ceremony, PASSWORD, &phished);
    assert_eq!(refused.status, 401, "{}", refused.body);

    // The right passkey with a wrong password: refused with the same answer, and counted.
    let (ceremony, options) = sign_in_start(&page);
    let genuine = key.do_authentication(origin.clone(), options).unwrap();
    let wrong = sign_in_finish(&page, &ceremony, "not the password at all", &genuine);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.body, refused.body);

    // bob enrolled with a passkey and has no TOTP: his only passkey cannot be removed.
    let jar = curl(Some(&page.jar), &[&format!("{}/account", page.base)]);
    let csrf = jar
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the account page: {}", jar.body))
        .to_owned();
    let last = curl(
        Some(&page.jar),
        &[
            "--data-urlencode",
            &format!("csrf={csrf}"),
            "--data-urlencode",
            &format!("password={PASSWORD}"),
            &format!("{}/account/passkeys/1/remove", page.base),
        ],
    );
    assert_eq!(last.status, 409, "{}", last.body);

    // Enrolled with a passkey, bob has no TOTP seed: no code signs him in.
    let totp = curl(
        None,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &serde_json::json!({"name": "bob", "password": PASSWORD, "code": "123456"}).to_string(),
            &format!("{}/api/login", page.base),
        ],
    );
    assert_eq!(totp.status, 401, "{}", totp.body);
}

#[test]
fn a_totp_user_adds_a_passkey_on_the_account_page_and_signs_in_with_it() {
    let (page, _) = setup();
    let dave = Approver::enroll(&page._b, "dave", "approver");
    let account = dave.get("/account");
    assert_eq!(account.status, 200, "{}", account.body);
    assert!(account.body.contains("no passkey yet"), "{}", account.body);

    // A state change: without the CSRF token, refused.
    let forged = dave.post_with("/account/passkeys/start", serde_json::json!({}), None);
    assert_eq!(forged.status, 403, "{}", forged.body);
    let start = dave.post("/account/passkeys/start", serde_json::json!({}));
    assert_eq!(start.status, 200, "{}", start.body);
    let start = start.json();
    let options: CreationChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let origin = Url::parse(&page.base).unwrap();
    let mut key = SoftPasskey::new(true);
    let credential = key.do_registration(origin.clone(), options).unwrap();
    // A session alone is not enough: the password again, or nothing is added (and the failure counts).
    let borrowed = dave.post(
        "/account/passkeys/finish",
        serde_json::json!({"ceremony": start["ceremony"], "password": "a guess",
                           "credential": credential}),
    );
    assert_eq!(borrowed.status, 401, "{}", borrowed.body);
    assert!(dave.get("/account").body.contains("no passkey yet"));
    let start = dave
        .post("/account/passkeys/start", serde_json::json!({}))
        .json();
    let options: CreationChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let credential = key.do_registration(origin.clone(), options).unwrap();
    let added = dave.post(
        "/account/passkeys/finish",
        serde_json::json!({"ceremony": start["ceremony"], "password": PASSWORD,
                           "credential": credential}),
    );
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.json()["passkeys"], 1);
    assert!(dave.get("/account").body.contains("You have 1 passkey."));

    // Another signed-out browser: password + that passkey.
    let start = sign_in_start_json(&page, "dave");
    let options: RequestChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let assertion = key.do_authentication(origin.clone(), options).unwrap();
    let ok = sign_in_finish(
        &page,
        start["ceremony"].as_str().unwrap(),
        PASSWORD,
        &assertion,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let audit = audit_lines(&page);
    assert!(audit.contains("\"staff.passkey.add\""), "{audit}");
    // A sign-in started now, to be finished after the passkey is removed (below).
    let pending = sign_in_start_json(&page, "dave");

    // The account page lists it with a form to remove it: CSRF token and password needed.
    let listed = dave.get("/account");
    assert!(
        listed
            .body
            .contains("action=\"/account/passkeys/1/remove\""),
        "{}",
        listed.body
    );
    let forged = dave.form("/account/passkeys/1/remove", &[("password", PASSWORD)]);
    assert_eq!(forged.status, 403, "{}", forged.body);
    let csrf = dave.csrf.clone();
    let guessed = dave.form(
        "/account/passkeys/1/remove",
        &[("csrf", &csrf), ("password", "a guess")],
    );
    assert_eq!(guessed.status, 401, "{}", guessed.body);
    assert!(dave.get("/account").body.contains("You have 1 passkey."));
    let missing = dave.form(
        "/account/passkeys/2/remove",
        &[("csrf", &csrf), ("password", PASSWORD)],
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
    // dave still has TOTP, so his only passkey may go.
    let removed = dave.form(
        "/account/passkeys/1/remove",
        &[("csrf", &csrf), ("password", PASSWORD)],
    );
    assert_eq!(removed.status, 303, "{}", removed.body);
    // The notice shows on the page the redirect names (and not on /account reached otherwise).
    let shown = removed
        .location
        .split_once("/account")
        .map(|(_, rest)| format!("/account{rest}"))
        .unwrap_or_else(|| panic!("no redirect to /account: {removed:?}"));
    assert!(shown.contains("?notice="), "{shown}");
    assert!(!dave.get("/account").body.contains("Passkey 1 removed."));
    let account = dave.get(&shown);
    assert!(
        account.body.contains("Passkey 1 removed."),
        "{}",
        account.body
    );
    assert!(account.body.contains("no passkey yet"), "{}", account.body);
    let audit = audit_lines(&page);
    assert!(audit.contains("\"staff.passkey.remove\""), "{audit}");
    // The ceremony started before the removal offered that passkey: it no longer signs anyone in.
    let options: RequestChallengeResponse =
        serde_json::from_value(pending["options"].clone()).unwrap();
    let assertion = key.do_authentication(origin, options).unwrap();
    let late = sign_in_finish(
        &page,
        pending["ceremony"].as_str().unwrap(),
        PASSWORD,
        &assertion,
    );
    assert_eq!(late.status, 401, "{}", late.body);
}

/// The passkey sign-in is no oracle: its start answers every name alike (a decoy challenge for a name
/// without passkeys or without an account), and the password is only judged together with the passkey,
/// so the right password for a TOTP account gets the same refusal as a wrong one.
#[test]
fn the_passkey_sign_in_tells_nothing_about_names_or_passwords() {
    let (page, token) = setup();
    let mut key = SoftPasskey::new(true);
    let (enrolled, _) = enroll(&page, &token, &mut key);
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    let _erin = Approver::enroll(&page._b, "erin", "approver"); // TOTP only

    let real = sign_in_start_json(&page, "bob");
    let totp_only = sign_in_start_json(&page, "erin");
    let nobody = sign_in_start_json(&page, "nobody-by-this-name");
    for (who, answer) in [("erin", &totp_only), ("nobody", &nobody)] {
        assert_eq!(
            shape(answer),
            shape(&real),
            "{who}: {answer} vs bob: {real}"
        );
        assert!(
            !answer["options"]["publicKey"]["allowCredentials"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{who}: {answer}"
        );
        assert_eq!(
            answer["options"]["publicKey"]["rpId"],
            real["options"]["publicKey"]["rpId"]
        );
    }
    // A name keeps its made-up credentials, as a real account keeps its passkeys; challenges are new.
    let again = sign_in_start_json(&page, "nobody-by-this-name");
    assert_eq!(
        again["options"]["publicKey"]["allowCredentials"],
        nobody["options"]["publicKey"]["allowCredentials"]
    );
    assert_ne!(
        again["options"]["publicKey"]["challenge"],
        nobody["options"]["publicKey"]["challenge"]
    );

    // Answering a decoy: whatever the password, the same refusal as a wrong password with bob's key.
    let origin = Url::parse(&page.base).unwrap();
    let (ceremony, options) = sign_in_start(&page);
    let genuine = key.do_authentication(origin, options).unwrap();
    let wrong = sign_in_finish(&page, &ceremony, "wrong password, right key", &genuine);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    for (who, start) in [("erin", &totp_only), ("nobody", &nobody)] {
        let answer = sign_in_finish(
            &page,
            start["ceremony"].as_str().unwrap(),
            PASSWORD,
            &genuine,
        );
        assert_eq!(answer.status, 401, "{who}: {}", answer.body);
        assert_eq!(answer.body, wrong.body, "{who}");
    }
    // The right password on a decoy counts as a failed sign-in, like a wrong one.
    let audit = audit_lines(&page);
    assert!(audit.contains("no passkey registered"), "{audit}");
    assert!(audit.contains("wrong password"), "{audit}");
}

/// Issue 12: passkey sign-ins go through the same lockout as the TOTP form and `/api/login`: failures
/// from one address on either count together, and once bob is locked from 127.0.0.2 his right password
/// with his own passkey is refused there exactly like a wrong password, while the same sign-in from
/// 127.0.0.1 works.
#[test]
fn a_passkey_sign_in_is_locked_per_address_like_the_others() {
    let (page, token) = setup();
    let mut key = SoftPasskey::new(true);
    let (enrolled, _) = enroll(&page, &token, &mut key);
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    let origin = Url::parse(&page.base).unwrap();
    let mut attempt = |source: Option<&str>, password: &str| -> Answer {
        let start = page.post_from(
            source,
            "/login/passkey/start",
            &serde_json::json!({"name": "bob"}),
        );
        assert_eq!(start.status, 200, "{}", start.body);
        let start = start.json();
        let options: RequestChallengeResponse =
            serde_json::from_value(start["options"].clone()).unwrap();
        let credential = key.do_authentication(origin.clone(), options).unwrap();
        page.post_from(
            source,
            "/login/passkey/finish",
            &serde_json::json!({"ceremony": start["ceremony"], "password": password,
                                "credential": credential}),
        )
    };
    let attacker = Some("127.0.0.2");
    let mut wrong = None;
    for _ in 0..3 {
        let a = attempt(attacker, "not the password");
        assert_eq!(a.status, 401, "{}", a.body);
        wrong = Some(a);
    }
    let wrong = wrong.unwrap();
    for _ in 0..2 {
        let a = page.post_from(
            attacker,
            "/api/login",
            &serde_json::json!({"name": "bob", "password": "guess", "code": "123456"}),
        );
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let locked = attempt(attacker, PASSWORD);
    assert_eq!(locked.status, wrong.status, "{}", locked.body);
    assert_eq!(locked.body, wrong.body);

    let ok = attempt(None, PASSWORD);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let audit = audit_lines(&page);
    let refused_right = audit.lines().any(|l| {
        let row: serde_json::Value = serde_json::from_str(l).unwrap();
        let detail: serde_json::Value =
            serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
        row["action"] == "staff.signin.failed"
            && detail["why"] == "locked"
            && detail["password_ok"] == true
            && detail["source"] == "127.0.0.2"
    });
    assert!(refused_right, "{audit}");
}

// ---- vendors: the passkey link ssh prints while it waits ---------------------------------------

/// An ssh client still running, whose stderr is read as it comes: the link it prints while it waits
/// (`passkey add` prints it on stderr; a login shows it in a prompt, which the test's askpass records in
/// `prompts`).
pub struct Waiting {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    prompts: Option<PathBuf>,
}

/// The first passkey link in `text`.
fn link_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("https://") && w.contains("/v/"))
        .map(str::to_owned)
}

impl Waiting {
    pub fn spawn(cmd: std::process::Command) -> Waiting {
        Waiting::spawn_typing(cmd, None)
    }

    /// `ssh VENDOR@bastion passkey add` for `vendor`, who types the code that confirms it.
    pub fn passkey_add(b: &Bastion, vendor: &crate::support::bastion::Vendor) -> Waiting {
        let mut ssh = b.ssh(vendor, &vendor.name);
        ssh.arg("passkey add");
        Waiting::spawn_typing(ssh, Some(&format!("{}\n", vendor.next_code())))
    }

    /// [`Waiting::spawn`], its standard input `typed` (then closed) when given.
    pub fn spawn_typing(mut cmd: std::process::Command, typed: Option<&str>) -> Waiting {
        use std::io::{BufRead as _, Write as _};
        if typed.is_some() {
            cmd.stdin(std::process::Stdio::piped());
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let (Some(typed), Some(mut stdin)) = (typed, child.stdin.take()) {
            stdin.write_all(typed.as_bytes()).unwrap();
        }
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Waiting {
            child,
            lines,
            seen: Vec::new(),
            prompts: None,
        }
    }

    /// A vendor's login with `vendor`'s key that answers every prompt with Enter, recording the
    /// prompts it was shown.
    pub fn login(b: &Bastion, vendor: &crate::support::bastion::Vendor, command: &str) -> Waiting {
        Waiting::login_slowly(b, vendor, command, 0)
    }

    /// [`Waiting::login`], pressing Enter at the link's prompt only after `secs` seconds (a vendor
    /// who reads the link, walks to a browser and comes back).
    pub fn login_slowly(
        b: &Bastion,
        vendor: &crate::support::bastion::Vendor,
        command: &str,
        secs: u32,
    ) -> Waiting {
        let (askpass, prompts) = crate::support::bastion::recording_askpass(
            b.data.path(),
            &format!("case \"$1\" in *Then*) sleep {secs} ;; esac\necho"),
        );
        let mut ssh = b.ssh_answering(vendor, &[], &vendor.name, &askpass);
        ssh.arg(command);
        let mut waiting = Waiting::spawn(ssh);
        waiting.prompts = Some(prompts);
        waiting
    }

    /// The passkey link ssh showed (waits up to 30 s for it).
    pub fn link(&mut self) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < until {
            while let Ok(line) = self.lines.try_recv() {
                let url = link_in(&line);
                self.seen.push(line);
                if let Some(url) = url {
                    return url;
                }
            }
            if let Some(url) = self
                .prompts
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|text| link_in(&text))
            {
                return url;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("ssh showed no passkey link:\n{}", self.seen.join("\n"));
    }

    /// Waits for ssh to end: (stdout, all of stderr, exit code).
    pub fn finish(mut self) -> (String, String, i32) {
        use std::io::Read as _;
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        self.seen.extend(self.lines.iter());
        (out, self.seen.join("\n"), status.code().unwrap_or(-1))
    }
}

/// The token at the end of a link.
pub fn token_of(url: &str) -> String {
    url.rsplit_once("/v/").unwrap().1.to_owned()
}

/// `ssh VENDOR@bastion passkey add`, the link answered by `key`: ssh's stderr, its exit code, and
/// the new credential's id.
pub fn vendor_add_passkey(
    b: &Bastion,
    page: &Page,
    alice: &crate::support::bastion::Vendor,
    key: &mut SoftPasskey,
) -> (String, i32, serde_json::Value) {
    let mut waiting = Waiting::passkey_add(b, alice);
    let token = token_of(&waiting.link());
    let shown = curl(None, &[&format!("{}/v/{token}", page.base)]);
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(shown.body.contains("Add a passkey"), "{}", shown.body);
    let start = page.post(&format!("/v/{token}/start"), &serde_json::json!({}));
    assert_eq!(start.status, 200, "{}", start.body);
    let start = start.json();
    assert_eq!(start["mode"], "register");
    let options: CreationChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let credential = key
        .do_registration(Url::parse(&page.base).unwrap(), options)
        .unwrap();
    let done = page.post(
        &format!("/v/{token}/finish"),
        &serde_json::json!({"ceremony": start["ceremony"], "credential": credential}),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    let (_, err, code) = waiting.finish();
    (
        err,
        code,
        serde_json::to_value(&credential).unwrap()["id"].clone(),
    )
}

/// A vendor's login that answers the code prompt with Enter: the client, and the link it showed.
fn vendor_passkey_login(b: &Bastion, alice: &crate::support::bastion::Vendor) -> (Waiting, String) {
    let mut waiting = Waiting::login(b, alice, "whoami");
    let token = token_of(&waiting.link());
    (waiting, token)
}

/// Starts a sign-in link's ceremony and has `key` answer it: the ceremony id and the answer, not sent;
/// or the page's answer when it refused to start.
fn sign_link(
    page: &Page,
    token: &str,
    key: &mut SoftPasskey,
) -> Result<(serde_json::Value, serde_json::Value), Answer> {
    let start = page.post(&format!("/v/{token}/start"), &serde_json::json!({}));
    if start.status != 200 {
        return Err(start);
    }
    let start = start.json();
    assert_eq!(start["mode"], "signin");
    let options: RequestChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let credential = key
        .do_authentication(Url::parse(&page.base).unwrap(), options)
        .unwrap();
    Ok((
        start["ceremony"].clone(),
        serde_json::to_value(credential).unwrap(),
    ))
}

/// Sends a link's ceremony answer; the page's answer.
fn finish_link(
    page: &Page,
    token: &str,
    (ceremony, credential): (serde_json::Value, serde_json::Value),
) -> Answer {
    page.post(
        &format!("/v/{token}/finish"),
        &serde_json::json!({"ceremony": ceremony, "credential": credential}),
    )
}

/// Answers a sign-in link with `key`; the finish's answer, or the start's when the page refused to
/// start.
pub fn answer_link(page: &Page, token: &str, key: &mut SoftPasskey) -> Answer {
    match sign_link(page, token, key) {
        Ok(signed) => finish_link(page, token, signed),
        Err(refused) => refused,
    }
}

/// A bastion started from `data` with its web page on a fixed port.
pub fn web_bastion(data: DataDir) -> Page {
    let port = data.fix_web_port();
    let b = Bastion::start(data);
    Page {
        base: format!("https://localhost:{port}"),
        jar: b.data.path().join("vendor-jar"),
        _b: b,
    }
}

/// A bastion on a fixed web port with a 15 s login grace time and `passkey_wait` as given.
fn vendor_bastion(passkey_wait: &str) -> Page {
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    assert!(
        config.contains("login_grace_time = \"60s\"") && config.contains("passkey_wait = \"2m\"")
    );
    std::fs::write(
        data.config(),
        config
            .replace("login_grace_time = \"60s\"", "login_grace_time = \"15s\"")
            .replace(
                "passkey_wait = \"2m\"",
                &format!("passkey_wait = \"{passkey_wait}\""),
            ),
    )
    .unwrap();
    web_bastion(data)
}

#[test]
fn a_vendor_adds_a_passkey_over_ssh_and_signs_in_with_it_through_the_link() {
    // A short login grace time: the link not used in time is refused within it.
    let page = vendor_bastion("20s");
    let b = &page._b;
    let alice = b.vendor("alice", "Acme Imaging");
    let mallory = b.vendor("mallory", "Other Corp");

    let mut key = SoftPasskey::new(true);
    let (err, code, _) = vendor_add_passkey(b, &page, &alice, &mut key);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("passkey added"), "{err}");
    let mut ssh = b.ssh(&alice, "alice");
    let listed = text(&ssh.arg("passkey list").output().unwrap());
    assert_eq!(listed.2, 0, "{listed:?}");
    assert!(listed.0.contains("  1  "), "{listed:?}");

    // Enter at the prompt, the passkey in the browser: signed in, audited as a passkey login.
    let (waiting, token) = vendor_passkey_login(b, &alice);
    let shown = curl(None, &[&format!("{}/v/{token}", page.base)]);
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(
        shown.body.contains("Confirm your login") && shown.body.contains("127.0.0.1"),
        "{}",
        shown.body
    );
    let done = answer_link(&page, &token, &mut key);
    assert_eq!(done.status, 200, "{}", done.body);
    let (out, err, code) = waiting.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("signed in as alice"), "{out}\n{err}");
    // The link was used once: its page and its ceremony are gone.
    let again = curl(None, &[&format!("{}/v/{token}", page.base)]);
    assert_eq!(again.status, 404, "{}", again.body);
    let again = page.post(&format!("/v/{token}/start"), &serde_json::json!({}));
    assert_eq!(again.status, 404, "{}", again.body);

    // Made-up tokens from this address use up its attempts at links (404, then 429), but a link that
    // exists is its own credential: its start (the next one here) is not refused for them, nor counted
    // against its vendor. Nor are staff sign-ins from the same address: their budget is their own.
    let mut statuses = Vec::new();
    for n in 0..21 {
        let guess = page.post(&format!("/v/{n:032x}/start"), &serde_json::json!({}));
        statuses.push(guess.status);
    }
    assert!(
        statuses.contains(&404) && statuses.last() == Some(&429),
        "{statuses:?}"
    );
    let staff = page.post(
        "/login/passkey/start",
        &serde_json::json!({"name": "nobody-here"}),
    );
    assert_ne!(staff.status, 429, "{}", staff.body);
    // Disabled while the link waits: the right passkey no longer signs her in.
    let (waiting, token) = vendor_passkey_login(b, &alice);
    let signed = sign_link(&page, &token, &mut key).unwrap();
    b.data.run(&["vendor", "disable", "alice"]).ok();
    let late = finish_link(&page, &token, signed);
    assert_eq!(late.status, 400, "{}", late.body);
    let (out, err, code) = waiting.finish();
    assert_ne!(code, 0, "{out}\n{err}");
    b.data.run(&["vendor", "enable", "alice"]).ok();
    // Her key removed while the link waits: the passkey no longer signs in with that key. The
    // judge reads both in its own transaction; the audit says which.
    let (waiting, token) = vendor_passkey_login(b, &alice);
    let signed = sign_link(&page, &token, &mut key).unwrap();
    let public = alice.key.with_extension("pub");
    let public = public.to_string_lossy();
    b.data
        .run(&["vendor", "key", "remove", "alice", &public])
        .ok();
    // The page only checks the passkey; the terminal is told how the sign-in went.
    let late = finish_link(&page, &token, signed);
    assert_eq!(late.status, 200, "{}", late.body);
    let (out, err, code) = waiting.finish();
    assert_ne!(code, 0, "{out}\n{err}");
    b.data.run(&["vendor", "key", "add", "alice", &public]).ok();
    let refused = audit_lines(&page);
    for why in ["disabled", "key removed"] {
        assert!(
            refused.lines().any(|l| l.contains("\"auth.refused\"")
                && l.contains("vendor:alice")
                && l.contains(&format!(r#"\"why\":\"{why}\""#))),
            "{why}: {refused}"
        );
    }

    // Another authenticator (mallory's own passkey, registered to mallory) cannot answer alice's
    // link: refused, counted, and ssh is told no.
    let mut other = SoftPasskey::new(true);
    let (err, code, mallorys) = vendor_add_passkey(b, &page, &mallory, &mut other);
    assert_eq!(code, 0, "{err}");
    let (waiting, token) = vendor_passkey_login(b, &alice);
    let start = page.post(&format!("/v/{token}/start"), &serde_json::json!({}));
    assert_eq!(start.status, 200, "{}", start.body);
    let start = start.json();
    let mut options = start["options"].clone();
    // A tampered page asking for mallory's credential instead.
    options["publicKey"]["allowCredentials"] =
        serde_json::json!([{"type": "public-key", "id": mallorys}]);
    let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let foreign = other
        .do_authentication(Url::parse(&page.base).unwrap(), options)
        .unwrap();
    let refused = finish_link(
        &page,
        &token,
        (
            start["ceremony"].clone(),
            serde_json::to_value(foreign).unwrap(),
        ),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    let (out, err, code) = waiting.finish();
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(!out.contains("signed in as"), "{out}");
    // mallory removes hers by its id, as listed (not by its place in a list that may change).
    let listed = text(&b.ssh(&mallory, "mallory").arg("passkey").output().unwrap());
    let id = listed
        .0
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("1  "))
        .unwrap_or_else(|| panic!("{listed:?}"))
        .trim()
        .to_owned();
    let wrong = text(
        &b.ssh(&mallory, "mallory")
            .arg("passkey remove zzzz")
            .output()
            .unwrap(),
    );
    assert_eq!(wrong.2, 1, "{wrong:?}");
    // Removing takes a fresh code too: without one (`ssh -n`), nothing is removed.
    let mut ssh = b.ssh_with(&mallory, &["-n"], "mallory");
    ssh.arg(format!("passkey remove {id}"));
    let (out, err, status) = Waiting::spawn(ssh).finish();
    assert_eq!(status, 1, "{out}\n{err}");
    assert!(err.contains("input ended before a code was typed"), "{err}");
    let listed = text(&b.ssh(&mallory, "mallory").arg("passkey").output().unwrap());
    assert!(listed.0.contains(&id), "{listed:?}");
    let mut ssh = b.ssh(&mallory, "mallory");
    ssh.arg(format!("passkey remove {id}"));
    let code = mallory.next_code();
    let (out, err, status) = Waiting::spawn_typing(ssh, Some(&format!("{code}\n"))).finish();
    assert_eq!(status, 0, "{out}\n{err}");
    assert!(err.contains("removed"), "{err}");
    let listed = text(&b.ssh(&mallory, "mallory").arg("passkey").output().unwrap());
    assert!(listed.0.contains("no passkeys"), "{listed:?}");

    // A link nobody uses: refused before the grace time closes the connection, and counted.
    let (waiting, _token) = vendor_passkey_login(b, &alice);
    let (out, err, code) = waiting.finish();
    assert_ne!(code, 0, "{out}\n{err}");

    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    let logins: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"auth.login\"") && l.contains("vendor:alice"))
        .collect();
    assert!(
        logins.iter().any(|l| l.contains("passkey")),
        "no passkey login in {audit}"
    );
    for why in ["passkey refused", "passkey not used in time"] {
        assert!(audit.contains(why), "no {why:?} in {audit}");
    }
    assert!(audit.contains("\"vendor.passkey.add\""), "{audit}");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"auth.confirm\"") && l.contains(r#"\"for\":\"passkey remove\""#)),
        "{audit}"
    );

    // A link shown and the client gone without answering (whoever holds only the key, sending the
    // vendor links and watching whether one gets used): judged and counted as a link not used, every
    // time, not only audited as an abandoned sign-in once a minute.
    let mut left = Waiting::login_slowly(b, &alice, "whoami", 30);
    let _ = left.link();
    let _ = left.child.kill();
    // (not `finish`: the askpass sleeping in the background holds ssh's output open)
    let _ = left.child.wait();
    let unanswered = || {
        b.data
            .run(&["audit", "export", "--format", "jsonl"])
            .ok()
            .stdout()
            .lines()
            .filter(|l| {
                l.contains("\"auth.totp.failure\"") && l.contains("passkey link left unanswered")
            })
            .count()
    };
    assert!(
        crate::support::bastion::wait_until(std::time::Duration::from_secs(10), || unanswered()
            == 1),
        "{}",
        b.log()
    );

    // Cleared by an administrator between the ceremony's start and its finish (a lost device): the
    // assertion that webauthn-rs accepts no longer counts.
    let (waiting, token) = vendor_passkey_login(b, &alice);
    let signed = sign_link(&page, &token, &mut key).unwrap();
    let cleared = b.data.run(&["vendor", "passkey", "clear", "alice"]);
    assert!(cleared.ok().stdout().contains("1 in all"));
    let refused = finish_link(&page, &token, signed);
    assert_eq!(refused.status, 400, "{}", refused.body);
    let (out, err, code) = waiting.finish();
    assert_ne!(code, 0, "{out}\n{err}");
    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert!(audit.contains("passkey removed meanwhile"), "{audit}");

    // With none left, the prompt no longer offers a passkey.
    let login = Waiting::login(b, &alice, "whoami");
    let prompts = login.prompts.clone().unwrap();
    let (out, err, code) = login.finish();
    assert_ne!(code, 0, "{out}\n{err}");
    let shown = std::fs::read_to_string(prompts).unwrap_or_default();
    assert!(
        shown.contains("TOTP code: ") && !shown.contains("/v/"),
        "{shown}"
    );
}

/// A vendor who takes longer than the login grace time (and the keepalive interval it used to set) to
/// come back from the browser: the extended grace time holds, and no keepalive breaks the sign-in.
#[test]
fn a_slow_passkey_login_is_not_cut_by_the_grace_time_or_a_keepalive() {
    let page = vendor_bastion("60s");
    let b = &page._b;
    let alice = b.vendor("alice", "Acme Imaging");
    let mut key = SoftPasskey::new(true);
    let (err, code, _) = vendor_add_passkey(b, &page, &alice, &mut key);
    assert_eq!(code, 0, "{err}");
    // Enter 35 s after the link shows: past the 15 s grace time and past 30 s, the keepalive interval
    // a 15 s grace time used to give.
    let mut login = Waiting::login_slowly(b, &alice, "whoami", 35);
    let token = token_of(&login.link());
    let done = answer_link(&page, &token, &mut key);
    assert_eq!(done.status, 200, "{}", done.body);
    let (out, err, code) = login.finish();
    assert_eq!(code, 0, "{out}\n{err}\n{}", b.log());
    assert!(out.contains("signed in as alice"), "{out}\n{err}");
}

/// Whoever holds only alice's key cannot send her passkey links without end by never answering one
/// (a client that writes its own messages, here paramiko's transport driven by hand): a link left for
/// a new keyboard-interactive round, for a new key step, or by closing the connection is judged each
/// time as a passkey not used, and counts toward her lockout. Before, only closing did; the other two
/// voided the link silently. And once locked, no round shows her key's holder another link, on that
/// connection either.
#[test]
fn a_passkey_link_left_for_a_new_round_or_key_step_counts_like_one_left_by_closing() {
    let has_paramiko = std::process::Command::new(python())
        .args(["-c", "import paramiko"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_paramiko {
        missing("paramiko (pip install paramiko)");
        return;
    }
    let page = vendor_bastion("20s");
    let b = &page._b;
    let alice = b.vendor("alice", "Acme Imaging");
    let mut key = SoftPasskey::new(true);
    let (err, code, _) = vendor_add_passkey(b, &page, &alice, &mut key);
    assert_eq!(code, 0, "{err}");
    let churn = |steps: &[&str]| {
        let out = std::process::Command::new(python())
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/hostile/link_churn.py"),
            )
            .args(["127.0.0.1", &b.ssh_port.to_string(), "alice"])
            .arg(&alice.key)
            .args(steps)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        report
    };
    let left = || {
        b.data
            .run(&["audit", "export", "--format", "jsonl"])
            .ok()
            .stdout()
            .lines()
            .filter(|l| {
                l.contains("\"auth.totp.failure\"") && l.contains("passkey link left unanswered")
            })
            .map(|l| {
                let row: serde_json::Value = serde_json::from_str(l).unwrap();
                let detail: serde_json::Value =
                    serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
                detail["left"].as_str().unwrap_or_default().to_owned()
            })
            .collect::<Vec<_>>()
    };

    let report = churn(&["round", "key", "close"]);
    assert!(report["error"].is_null(), "{report}\n{}", b.log());
    let links: Vec<&str> = report["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert_eq!(links.len(), 3, "{report}");
    assert!(links[0] != links[1] && links[1] != links[2], "{report}");
    assert!(
        crate::support::bastion::wait_until(std::time::Duration::from_secs(10), || left().len()
            == 3),
        "{:?}\n{}",
        left(),
        b.log()
    );
    assert_eq!(
        left(),
        [
            "a new round began",
            "a new key step began",
            "connection closed"
        ]
    );

    // Two more links left (five failures: locked), then the next round shows no link but why.
    let report = churn(&["round", "round", "round"]);
    assert_eq!(report["links"].as_array().unwrap().len(), 2, "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no link"),
        "{report}"
    );
    assert!(
        crate::support::bastion::wait_until(std::time::Duration::from_secs(10), || left().len()
            == 5),
        "{:?}",
        left()
    );
    // Locked: her own right code no longer signs her in.
    let out = b.ssh(&alice, "alice").arg("true").output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adding a passkey takes the second factor again: a code newer than the one the session signed in
/// with, judged as at sign-in. Someone at a vendor's open session cannot make it a lasting login of
/// their own, and the codes typed there count toward the lockout like any other.
#[test]
fn adding_a_passkey_over_ssh_takes_a_fresh_code() {
    let page = web_bastion(DataDir::init());
    let b = &page._b;
    // One vendor a part: each login takes a TOTP step, and three are valid at a time.
    let alice = b.vendor("alice", "Acme Imaging");
    let bob = b.vendor("bob", "Acme Imaging");
    let carol = b.vendor("carol", "Acme Imaging");
    let failures = |audit: &str| {
        audit
            .lines()
            .filter(|l| l.contains("\"auth.totp.failure\"") && l.contains(r#"\"confirming\":true"#))
            .count()
    };

    // The code the session signed in with, typed again: a replay.
    let code = alice.next_code();
    let askpass = alice.askpass_printing(b.data.path(), &code);
    let mut ssh = b.ssh_answering(&alice, &[], "alice", &askpass);
    ssh.arg("passkey add");
    let (out, err, status) = Waiting::spawn_typing(ssh, Some(&format!("{code}\n"))).finish();
    assert_eq!(status, 1, "{out}\n{err}");
    assert!(err.contains("code was not accepted"), "{err}");
    assert!(!err.contains("/v/"), "a link was shown: {err}");
    let audit = audit_lines(&page);
    assert!(audit.contains("replayed code"), "{audit}");
    assert_eq!(failures(&audit), 1, "{audit}");

    // A wrong one: refused and counted the same way.
    let mut ssh = b.ssh(&alice, "alice");
    ssh.arg("passkey add");
    let (out, err, status) = Waiting::spawn_typing(ssh, Some("12345x\n")).finish();
    assert_eq!(status, 1, "{out}\n{err}");
    assert!(!err.contains("/v/"), "a link was shown: {err}");
    assert_eq!(failures(&audit_lines(&page)), 2);

    // No input at all (`ssh -n`): nothing was typed, so nothing is judged or counted.
    let mut ssh = b.ssh_with(&bob, &["-n"], "bob");
    ssh.arg("passkey add");
    let (out, err, status) = Waiting::spawn(ssh).finish();
    assert_eq!(status, 1, "{out}\n{err}");
    assert!(err.contains("input ended before a code was typed"), "{err}");
    let audit = audit_lines(&page);
    assert_eq!(failures(&audit), 2, "{audit}");
    assert!(!audit.contains("\"auth.confirm\""), "{audit}");

    // A fresh code: confirmed, audited as a confirmation (not a login), then the link.
    let mut key = SoftPasskey::new(true);
    let (err, status, _) = vendor_add_passkey(b, &page, &carol, &mut key);
    assert_eq!(status, 0, "{err}");
    let audit = audit_lines(&page);
    let confirm = audit
        .lines()
        .position(|l| l.contains("\"auth.confirm\"") && l.contains(r#"\"for\":\"passkey add\""#))
        .unwrap_or_else(|| panic!("no auth.confirm in {audit}"));
    let added = audit
        .lines()
        .position(|l| l.contains("\"vendor.passkey.add\""))
        .unwrap_or_else(|| panic!("no vendor.passkey.add in {audit}"));
    assert!(confirm < added, "{audit}");
}
