//! Passkey enrollment and sign-in over HTTPS against `chaperone serve`, answered by webauthn-rs's
//! software passkey (webauthn-authenticator-rs): the happy path, and the abuses — a ceremony replayed,
//! another authenticator, a foreign origin, a wrong password, TOTP for an account that has none.

use std::path::PathBuf;

use base64::Engine as _;

use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::support::DataDir;
use crate::support::bastion::Bastion;
use crate::support::web::{Answer, Approver, curl};

const PASSWORD: &str = "correct horse battery staple";

struct Page {
    base: String,
    jar: PathBuf,
    _b: Bastion,
}

impl Page {
    fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        curl(
            Some(&self.jar),
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body.to_string(),
                &format!("{}{path}", self.base),
            ],
        )
    }
}

/// A bastion on a fixed port and the enrollment token of a new approver `bob`.
fn setup() -> (Page, String) {
    let data = DataDir::init();
    let port = data.fix_web_port();
    let b = Bastion::start(data);
    let run = b
        .data
        .run(&["user", "add", "bob", "--role", "approver", "--json"]);
    let url = run.ok().json()["enroll_url"].as_str().unwrap().to_owned();
    let token = url.rsplit('/').next().unwrap().to_owned();
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

/// Starts a sign-in; returns the ceremony id and the options.
fn sign_in_start(
    page: &Page,
    password: &str,
) -> Result<(String, RequestChallengeResponse), Answer> {
    sign_in_start_as(page, "bob", password)
}

fn sign_in_start_as(
    page: &Page,
    name: &str,
    password: &str,
) -> Result<(String, RequestChallengeResponse), Answer> {
    let start = page.post(
        "/login/passkey/start",
        &serde_json::json!({"name": name, "password": password}),
    );
    if start.status != 200 {
        return Err(start);
    }
    let j = start.json();
    Ok((
        j["ceremony"].as_str().unwrap().to_owned(),
        serde_json::from_value(j["options"].clone()).unwrap(),
    ))
}

fn sign_in_finish(page: &Page, ceremony: &str, credential: &impl serde::Serialize) -> Answer {
    page.post(
        "/login/passkey/finish",
        &serde_json::json!({"ceremony": ceremony, "credential": credential}),
    )
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
    let (ceremony, options) = sign_in_start(&page, PASSWORD).unwrap();
    let credential = key.do_authentication(origin.clone(), options).unwrap();
    let ok = sign_in_finish(&page, &ceremony, &credential);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let list = curl(Some(&page.jar), &[&format!("{}/api/requests", page.base)]);
    assert_eq!(list.status, 200, "{}", list.body);

    // The same answer again: the ceremony was used once.
    let replay = sign_in_finish(&page, &ceremony, &credential);
    assert_eq!(replay.status, 400, "{}", replay.body);

    // carol's passkey (registered, same site) cannot answer bob's challenge, even when a tampered
    // page asks for carol's credential instead of bob's.
    let carol_link = page
        ._b
        .data
        .run(&["user", "add", "carol", "--role", "approver", "--json"]);
    let carol_token = carol_link.ok().json()["enroll_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let mut carol = SoftPasskey::new(true);
    let (carol_enrolled, carol_credential) = enroll(&page, &carol_token, &mut carol);
    assert_eq!(carol_enrolled.status, 200, "{}", carol_enrolled.body);
    let (ceremony, options) = sign_in_start(&page, PASSWORD).unwrap();
    let mut options = serde_json::to_value(&options).unwrap();
    options["publicKey"]["allowCredentials"] =
        serde_json::json!([{"type": "public-key", "id": carol_credential["id"]}]);
    let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let carols = carol.do_authentication(origin.clone(), options).unwrap();
    let refused = sign_in_finish(&page, &ceremony, &carols);
    assert_eq!(refused.status, 401, "{}", refused.body);

    // A genuine answer whose client data is rewritten to another origin (a relay that edits what it
    // forwards): refused.
    let (ceremony, options) = sign_in_start(&page, PASSWORD).unwrap();
    let genuine = key.do_authentication(origin.clone(), options).unwrap();
    let mut phished = serde_json::to_value(&genuine).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let field = &mut phished["response"]["clientDataJSON"];
    let client_data = String::from_utf8(b64.decode(field.as_str().unwrap()).unwrap()).unwrap();
    assert!(client_data.contains(&page.base), "{client_data}");
    *field = b64
        .encode(client_data.replace(&page.base, "https://bastion.evil.example"))
        .into();
    let refused = sign_in_finish(&page, &ceremony, &phished);
    assert_eq!(refused.status, 401, "{}", refused.body);

    // A wrong password never gets a challenge.
    let wrong = sign_in_start(&page, "not the password at all").unwrap_err();
    assert_eq!(wrong.status, 401, "{}", wrong.body);

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
    let added = dave.post(
        "/account/passkeys/finish",
        serde_json::json!({"ceremony": start["ceremony"], "credential": credential}),
    );
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.json()["passkeys"], 1);
    assert!(dave.get("/account").body.contains("You have 1 passkey."));

    // Another signed-out browser: password + that passkey.
    let (ceremony, options) = sign_in_start_as(&page, "dave", PASSWORD).unwrap();
    let assertion = key.do_authentication(origin, options).unwrap();
    let ok = sign_in_finish(&page, &ceremony, &assertion);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let audit = page
        ._b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert!(audit.contains("\"staff.passkey.add\""), "{audit}");
}
