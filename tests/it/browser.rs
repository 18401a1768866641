//! The approvers' page in a real browser: headless Chromium (Debian's) driven by playwright-core
//! (`tests/e2e/approve.mjs`) with a CDP virtual authenticator. An approver enrolls a passkey, signs in
//! with password + passkey, and approves a request that a real `ssh … request` is waiting on; that ssh
//! must proceed and print how to connect. Screenshots of every page land in
//! `target/e2e-screenshots/` for people to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::bastion::{Bastion, text};
use crate::support::sshd::Sshd;
use crate::support::{DataDir, missing};

const CHROMIUM: &str = "/usr/bin/chromium";

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// Node, playwright-core (`npm ci --prefix tests/e2e`) and Chromium, or `None` (a failure under
/// `CHAPERONE_REQUIRE_ALL`).
fn browser_parts() -> Option<()> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing("node (Debian nodejs)");
        return None;
    }
    if !e2e_dir().join("node_modules/playwright-core").is_dir() {
        missing("playwright-core (npm ci --prefix tests/e2e)");
        return None;
    }
    if !Path::new(CHROMIUM).exists() {
        missing("chromium (Debian chromium)");
        return None;
    }
    Some(())
}

#[test]
fn an_approver_enrolls_a_passkey_signs_in_and_releases_a_waiting_ssh_request() {
    if browser_parts().is_none() {
        return;
    }
    let Some(sshd) = Sshd::start() else {
        return;
    };
    // A fixed web port: the passkey's relying party is https://localhost:PORT.
    let data = DataDir::init();
    let web_port = data.fix_web_port();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &["dicom:104/tcp"]);
    let alice = b.vendor("alice", "Acme Imaging");
    let added = b
        .data
        .run(&["user", "add", "bob", "--role", "approver", "--json"]);
    let enroll_url = added.ok().json()["enroll_url"].as_str().unwrap().to_owned();
    let base = format!("https://localhost:{web_port}");
    assert!(enroll_url.starts_with(&base), "{enroll_url}");

    let waiting = b
        .ssh(&alice, "alice")
        .arg("request mri-01 ssh --for 1h --reason INC-7 <script>alert(1)</script> detector check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots");
    // A hung browser must fail the test, not stall CI.
    let out = Command::new("timeout")
        .args(["180", "node"])
        .arg(e2e_dir().join("approve.mjs"))
        .env("BASE_URL", &base)
        .env("ENROLL_URL", &enroll_url)
        .env("CERT", b.data.path().join("web_cert.pem"))
        .env("SHOTS", &shots)
        .env("NAME", "bob")
        .env("PASSWORD", "correct horse battery staple")
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(
        code,
        0,
        "browser run failed\n{stdout}\n{stderr}\n{}",
        b.log()
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(result["approved"].as_i64().is_some(), "{result}");

    let (ssh_out, ssh_err, ssh_code) = text(&waiting.wait_with_output().unwrap());
    assert_eq!(ssh_code, 0, "{ssh_out}\n{ssh_err}");
    assert!(
        ssh_out.contains("alice+mri-01@"),
        "no connect command in: {ssh_out}"
    );

    // The decision is audited with how bob signed in; he never had a TOTP seed left over.
    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    let approve = audit
        .lines()
        .find(|l| l.contains("\"request.approve\""))
        .unwrap_or_else(|| panic!("no approval in {audit}"));
    assert!(approve.contains("passkey"), "{approve}");
    assert!(
        audit.contains("second_factor") && audit.contains("\\\"passkey\\\"")
            || audit.contains("\"second_factor\":\"passkey\""),
        "{audit}"
    );
    for page in [
        "enroll",
        "login",
        "requests",
        "grants",
        "sessions",
        "requests-phone",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
    // The reason with markup was shown as text and never ran.
    assert_eq!(result["reasonShown"], true, "{result}");
    assert_eq!(result["dialogs"], serde_json::json!([]), "{result}");
}
