//! Webhook delivery end to end: `chaperone serve` POSTs signed JSON to a receiver on loopback for a
//! request filed with the real `ssh … request` and its approval, retries a failing receiver in order,
//! and gives an event up (audited) when the receiver never answers.

use std::process::Stdio;
use std::time::Duration;

use crate::support::DataDir;
use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::free_port;
use crate::support::sshd::Sshd;
use crate::support::web::Approver;
use crate::support::webhook::{self, Receiver};

const SECRET: &str = "0123456789abcdef-webhook";

fn bastion_with(section: &str) -> Bastion {
    let data = DataDir::init();
    let mut text = std::fs::read_to_string(data.config()).unwrap();
    text.push_str(section);
    std::fs::write(data.config(), text).unwrap();
    Bastion::start(data)
}

/// An infusion pump whose grants the tests revoke (no device is reached).
fn add_pump(b: &Bastion) {
    b.data.add_icu_pump("pump-7", "127.0.0.1");
}

/// Grants alice the pump for an hour and revokes it at once (through the data directory, so it works
/// with the bastion stopped too); the grant's id.
fn revoke_a_pump_grant(data: &DataDir) -> i64 {
    let grant = data.grant("alice", "pump-7", "ssh", "1h");
    data.run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
        .ok();
    grant
}

/// The `webhook.undelivered` event's line, once it is audited (within 20 s).
fn undelivered(b: &Bastion) -> String {
    assert!(
        wait_until(Duration::from_secs(20), || audit(b)
            .contains("\"webhook.undelivered\"")),
        "{}",
        b.log()
    );
    audit(b)
        .lines()
        .find(|l| l.contains("\"webhook.undelivered\""))
        .unwrap()
        .to_owned()
}

fn audit(b: &Bastion) -> String {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
}

#[test]
fn requests_and_decisions_are_posted_signed_in_order_and_retried() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    // The receiver fails the first two POSTs: the first event must be retried, then the rest follow.
    let receiver = Receiver::start(&[500, 503]);
    let b = bastion_with(&webhook::config(&receiver.url(), SECRET, ""));
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    let bob = Approver::enroll(&b, "bob", "approver");

    let child = b
        .ssh(&alice, "alice")
        .arg("request mri-01 ssh --for 30m --reason INC-9 <b>firmware</b>")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let filed = receiver.wait_for("request.file", 20).unwrap_or_else(|| {
        panic!(
            "no request.file delivered: {:?}\n{}",
            receiver.all(),
            b.log()
        )
    });
    assert!(filed.signed_with(SECRET), "bad signature: {filed:?}");
    assert!(!filed.signed_with("another secret of some length"));
    assert_eq!(filed.header("x-chaperone-event"), Some("request.file"));
    assert_eq!(filed.header("content-type"), Some("application/json"));
    let body = filed.json();
    assert_eq!(body["actor"], "vendor:alice");
    assert_eq!(body["detail"]["asset"], "mri-01");
    assert_eq!(body["detail"]["reason"], "INC-9 <b>firmware</b>");
    assert_eq!(
        filed.header("x-chaperone-delivery"),
        Some(body["id"].to_string().as_str())
    );
    let id: i64 = body["subject"]
        .as_str()
        .and_then(|s| s.strip_prefix("request:"))
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(body["link"].as_str().unwrap().ends_with("/requests"));
    let attempts = receiver.all();
    assert_eq!(
        attempts.iter().map(|d| d.status).collect::<Vec<_>>()[..3],
        [500, 503, 200],
        "the same event is retried until it is taken"
    );
    assert!(attempts[..3].iter().all(|d| d.body == filed.body));
    assert!(b.log().contains("webhook delivery failed"), "{}", b.log());

    let answer = bob.approve(id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, stderr, code) = text(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{stderr}");
    let approved = receiver
        .wait_for("request.approve", 10)
        .expect("request.approve delivered");
    assert!(approved.signed_with(SECRET));
    assert_eq!(approved.json()["actor"], "staff:bob");
    assert!(approved.json()["id"].as_i64() > body["id"].as_i64());
    // Sign-ins and grants are in the audit log but not among the default events.
    assert!(receiver.delivered("staff.signin").is_empty());
}

#[test]
fn an_event_the_receiver_never_takes_is_given_up_and_audited() {
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let b = bastion_with(&webhook::config(&dead, SECRET, "max_attempts = 2"));
    std::thread::sleep(Duration::from_millis(1500)); // let delivery claim its cursor first
    add_pump(&b);
    b.vendor("alice", "Acme Imaging");
    let grant = b.grant("alice", "pump-7", "ssh", "1h");
    b.data
        .run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
        .ok();
    let line = undelivered(&b);
    assert!(line.contains("grant.revoke"), "{line}");
    assert!(
        line.contains("\\\"attempts\\\":2") || line.contains("\"attempts\":2"),
        "{line}"
    );
    // The server keeps running and still audits and serves.
    b.data.run(&["audit", "verify"]).ok();
}

/// A receiver that refuses an event itself (400: a firewall in front of it rejecting what a vendor typed)
/// has it given up at once, not retried for minutes while every later alert waits; and what it answered
/// reaches the log on one line (a line break in it would have forged a log entry).
#[test]
fn an_event_the_receiver_refuses_for_good_is_given_up_at_once_and_its_answer_logged_on_one_line() {
    let receiver = Receiver::start_saying(
        &[400],
        "blocked\n2026-12-07T00:00:00Z  INFO chaperone: FORGED-ENTRY all is well",
    );
    let b = bastion_with(&webhook::config(&receiver.url(), SECRET, ""));
    std::thread::sleep(Duration::from_millis(1500)); // let delivery claim its cursor first
    add_pump(&b);
    b.vendor("alice", "Acme Imaging");
    let refused = revoke_a_pump_grant(&b.data);
    let line = undelivered(&b);
    assert!(
        line.contains("\\\"attempts\\\":1") || line.contains("\"attempts\":1"),
        "{line}"
    );
    // The events after it are delivered.
    let delivered = revoke_a_pump_grant(&b.data);
    assert!(
        wait_until(Duration::from_secs(20), || !receiver
            .delivered("grant.revoke")
            .is_empty()),
        "{}",
        b.log()
    );
    let sent = receiver.delivered("grant.revoke");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["subject"], format!("grant:{delivered}"));
    assert_ne!(refused, delivered);
    assert!(
        !b.log()
            .lines()
            .any(|l| l.trim_start().starts_with("2026-12-07T00:00:00Z")),
        "{}",
        b.log()
    );
    assert!(b.log().contains("blocked?2026-12-07"), "{}", b.log());
}

/// The cursor is bound to its receiver (`audit_tail`): pointed at another URL, the bastion starts at the
/// end of the log for it (what happened before the change is not replayed to the new receiver), audits
/// the move with where the old receiver got to, and sends what follows to the new one.
#[test]
fn a_new_webhook_url_starts_at_the_end_of_the_log_and_the_move_is_audited() {
    let first = Receiver::start(&[]);
    let b = bastion_with(&webhook::config(&first.url(), SECRET, ""));
    std::thread::sleep(Duration::from_millis(1500)); // let delivery claim its cursor first
    add_pump(&b);
    b.vendor("alice", "Acme Imaging");
    // Grants and revocations go through the data directory, so they work with the bastion stopped too.
    let revoke = revoke_a_pump_grant;
    let one = revoke(&b.data);
    let got = first
        .wait_for("grant.revoke", 20)
        .expect("the first receiver gets the revocation");
    assert_eq!(got.json()["subject"], format!("grant:{one}"));

    // A revocation while the bastion is down, then the receiver changes: the new receiver starts after
    // it (the gap is the old receiver's; `audit export` has it).
    let data = b.stop();
    let two = revoke(&data);
    let second = Receiver::start(&[]);
    let config = std::fs::read_to_string(data.config()).unwrap();
    std::fs::write(data.config(), config.replace(&first.url(), &second.url())).unwrap();
    let b = Bastion::start(data);
    assert!(
        wait_until(Duration::from_secs(20), || audit(&b)
            .contains("\"webhook.endpoint.changed\"")),
        "{}",
        b.log()
    );
    let moved = audit(&b)
        .lines()
        .find(|l| l.contains("\"webhook.endpoint.changed\""))
        .unwrap()
        .to_owned();
    assert!(!moved.contains(SECRET), "{moved}");
    // The gap, named: the old receiver got to `from_seq` (past the first revocation), the new one
    // starts after `to_seq`; the revocation made while the bastion was down lies between.
    let event: serde_json::Value = serde_json::from_str(&moved).unwrap();
    let detail = match &event["detail"] {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    let (from, to) = (
        detail["from_seq"].as_i64().unwrap(),
        detail["to_seq"].as_i64().unwrap(),
    );
    assert!(0 < from && from < to, "{moved}");
    let seq_of = |subject: &str| {
        audit(&b)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["action"] == "grant.revoke" && e["subject"] == subject)
            .and_then(|e| e["seq"].as_i64())
            .unwrap()
    };
    assert!(seq_of(&format!("grant:{one}")) <= from, "{moved}");
    let gap = seq_of(&format!("grant:{two}"));
    assert!(from < gap && gap <= to, "{gap}: {moved}");
    let three = revoke(&b.data);
    assert!(
        wait_until(Duration::from_secs(20), || second
            .delivered("grant.revoke")
            .iter()
            .any(|d| d.json()["subject"] == format!("grant:{three}"))),
        "{:?}\n{}",
        second.all(),
        b.log()
    );
    let subjects: Vec<String> = second
        .delivered("grant.revoke")
        .iter()
        .map(|d| d.json()["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    for old in [one, two] {
        assert!(
            !subjects.contains(&format!("grant:{old}")),
            "replayed: {subjects:?}"
        );
    }
    // The first receiver got nothing after the change.
    assert!(
        first
            .delivered("grant.revoke")
            .iter()
            .all(|d| d.json()["subject"] == format!("grant:{one}")),
        "{:?}",
        first.all()
    );
}

#[test]
fn a_webhook_in_clear_over_the_network_is_refused_at_start() {
    let data = DataDir::init();
    let mut text = std::fs::read_to_string(data.config()).unwrap();
    text.push_str(&webhook::config(
        "http://chat.hospital.example/hook",
        SECRET,
        "",
    ));
    std::fs::write(data.config(), text).unwrap();
    let run = data.run(&["serve"]);
    run.fails(1);
    assert!(
        run.stderr()
            .contains("http:// is allowed only to a loopback address"),
        "{}",
        run.stderr()
    );
}

/// HTTPS: the receiver's certificate must chain to `ca_file` (or the system's roots). chaperone's own
/// web listener stands in for a receiver: it answers 404 to the POST, which proves TLS and HTTP worked.
#[test]
fn https_receivers_are_verified_against_ca_file_or_the_system_roots() {
    let undelivered_error = |ca_file: Option<&str>| -> String {
        let data = DataDir::init();
        let port = data.fix_web_port();
        let ca = ca_file
            .map(|f| format!("ca_file = \"{f}\"\n"))
            .unwrap_or_default();
        let url = format!("https://localhost:{port}/hook");
        let mut text = std::fs::read_to_string(data.config()).unwrap();
        text.push_str(&webhook::config(
            &url,
            SECRET,
            &format!("{ca}max_attempts = 1"),
        ));
        std::fs::write(data.config(), text).unwrap();
        let b = Bastion::start(data);
        // The cursor starts at the end of the log when delivery first claims it: let it claim first.
        assert!(wait_until(Duration::from_secs(10), || b
            .log()
            .contains("webhook delivery started")));
        std::thread::sleep(Duration::from_millis(1500));
        b.vendor("alice", "Acme Imaging");
        // A revocation is one of the default events.
        add_pump(&b);
        let grant = b.grant("alice", "pump-7", "ssh", "1h");
        b.data
            .run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
            .ok();
        let mut line = String::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                line = audit(&b)
                    .lines()
                    .find(|l| l.contains("\"webhook.undelivered\""))
                    .unwrap_or_default()
                    .to_owned();
                !line.is_empty()
            }),
            "{}",
            b.log()
        );
        // The error the delivery gave (not the whole line: its time or hashes may hold "404" too).
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let detail: serde_json::Value =
            serde_json::from_str(event["detail"].as_str().unwrap()).unwrap();
        detail["error"].as_str().unwrap().to_owned()
    };
    let trusted = undelivered_error(Some("web_cert.pem"));
    assert!(trusted.contains("404"), "TLS should have worked: {trusted}");
    let untrusted = undelivered_error(None);
    assert!(
        untrusted.contains("TLS handshake") && !untrusted.contains("404"),
        "an unknown issuer must fail the handshake: {untrusted}"
    );
}

/// Events written while the audit chain's head does not carry its seal (as someone without the secrets
/// key leaves it) are not posted: the receiver's copy ends where the break began. What was held back
/// follows once an operator seals the head again.
#[test]
fn nothing_is_posted_past_a_head_without_its_seal() {
    let receiver = Receiver::start(&[]);
    let ops = free_port();
    let b = bastion_with(&format!(
        "{}\n[ops]\nlisten = \"127.0.0.1:{ops}\"\n",
        webhook::config(&receiver.url(), SECRET, "")
    ));
    let sealed_gauge = || crate::ops::get(ops, "/metrics").1;
    std::thread::sleep(Duration::from_millis(1500)); // let delivery claim its cursor first
    add_pump(&b);
    b.vendor("alice", "Acme Imaging");
    let revoke = |data: &DataDir| format!("grant:{}", revoke_a_pump_grant(data));
    let posted = |subject: &str| {
        receiver
            .delivered("grant.revoke")
            .iter()
            .any(|d| d.json()["subject"] == subject)
    };
    let one = revoke(&b.data);
    assert!(
        wait_until(Duration::from_secs(20), || posted(&one)),
        "{:?}\n{}",
        receiver.all(),
        b.log()
    );

    crate::cli::sqlite(
        &b.data.path().join("chaperone.db"),
        "UPDATE audit_head SET mac = NULL",
    );
    let two = revoke(&b.data);
    std::thread::sleep(Duration::from_secs(3));
    let subjects: Vec<String> = receiver
        .delivered("grant.revoke")
        .iter()
        .map(|d| d.json()["subject"].to_string())
        .collect();
    assert!(!posted(&two), "posted past the break: {subjects:?}");
    let metrics = sealed_gauge();
    assert!(
        metrics.contains("\nchaperone_audit_head_sealed 0\n"),
        "{metrics}"
    );
    assert!(
        b.log().contains("nothing more is sent until it does"),
        "{}",
        b.log()
    );

    let data = b.stop();
    let verify = data.run(&["audit", "verify"]);
    let head = verify
        .fails(1)
        .stderr()
        .split("audit seal --head ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no head named: {}", verify.stderr()))
        .to_owned();
    data.run(&["audit", "seal", "--head", &head]).ok();
    let b = Bastion::start(data);
    assert!(
        wait_until(Duration::from_secs(20), || sealed_gauge()
            .contains("\nchaperone_audit_head_sealed 1\n")),
        "{}",
        b.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || posted(&two)),
        "{:?}\n{}",
        receiver.all(),
        b.log()
    );
}
