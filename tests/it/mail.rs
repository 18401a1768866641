//! E-mail to approvers end to end: a vendor files a request with the real `ssh … request`; a local
//! SMTP sink (Python aiosmtpd, STARTTLS and AUTH required, refusing the first try with 451) receives
//! the notice for the asset's zone, once retried; the link it carries opens the request for a
//! signed-in approver, who approves it from there.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::web::Approver;
use crate::support::{DataDir, free_port, guarded, missing, stop_guarded};

const PYTHON: &str = "/usr/bin/python3";

fn sent(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_waiting_request_is_mailed_over_starttls_to_its_zone_with_a_working_link() {
    let has_aiosmtpd = std::process::Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_aiosmtpd {
        missing("aiosmtpd (apt python3-aiosmtpd)");
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::atna::certificates(d);
    let out = d.join("sent.jsonl");
    let port = free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mail/sink.py");
    let mut sink = guarded(
        PYTHON,
        &[
            &script.to_string_lossy(),
            &port.to_string(),
            &d.join("cert.pem").to_string_lossy(),
            &d.join("key.pem").to_string_lossy(),
            &out.to_string_lossy(),
            "chaperone",
            "mail password",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut ready = String::new();
    BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the SMTP sink did not start");

    let data = DataDir::init();
    let web = data.fix_web_port();
    let mut config = std::fs::read_to_string(data.config()).unwrap();
    config.push_str(&format!(
        "\n[mail]\nurl = \"smtp://localhost:{port}\"\nfrom = \"chaperone@hospital.example\"\n\
         username = \"chaperone\"\npassword = \"mail password\"\nca_file = \"{}\"\n\
         to = [\"it-security@hospital.example\"]\n\
         [mail.zones]\nradiology = [\"rad-1@hospital.example\", \"stale@hospital.example\", \
         \"rad-2@hospital.example\"]\n",
        d.join("ca.pem").display()
    ));
    std::fs::write(data.config(), config).unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    let bob = Approver::enroll(&b, "bob", "approver");

    let child = b
        .ssh(&alice, "alice")
        .arg("request mri-01 ssh --for 30m --reason INC-9 firmware")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(40), || sent(&out)
            .iter()
            .any(|m| m["accepted"] == true)),
        "no notice accepted: {:?}\n{}",
        sent(&out),
        b.log()
    );
    let attempts = sent(&out);
    assert_eq!(attempts.len(), 2, "refused once, then taken: {attempts:?}");
    assert_eq!(attempts[0]["body"], attempts[1]["body"]);
    assert!(b.log().contains("e-mail to approvers not delivered"));
    let m = &attempts[1];
    assert_eq!(m["tls"], true, "{m}");
    assert_eq!(m["authenticated"], true, "{m}");
    assert_eq!(m["mail_from"], "chaperone@hospital.example");
    // The radiology list, not the default one; the address the server refuses for good (550) does
    // not hold the notice back from the others.
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["rad-1@hospital.example", "rad-2@hospital.example"]),
        "the radiology list, not the default one"
    );
    let subject = m["subject"].as_str().unwrap();
    assert!(
        subject.contains("alice for mri-01 (radiology)"),
        "{subject}"
    );
    let body = m["body"].as_str().unwrap();
    assert!(body.contains("Reason:   INC-9 firmware"), "{body}");

    // The link: this bastion's public URL, the request's own place on the approvers' page.
    let prefix = format!("https://localhost:{web}/requests#req-");
    let at = body
        .find(&prefix)
        .unwrap_or_else(|| panic!("no link to {prefix}… in {body}"));
    let id: i64 = body[at + prefix.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    assert!(subject.contains(&format!("#{id} ")), "{subject}");
    // The Message-ID names the request and the audit event by number and hash: after a restore from
    // backup a number can come again with another event, and mail systems drop an id they have seen.
    let message_id = m["message_id"].as_str().unwrap();
    let filed = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["action"] == "request.file")
        .unwrap();
    let expected = format!(
        "<request-{id}.audit-{}.{}@",
        filed["seq"],
        &filed["hash"].as_str().unwrap()[..16]
    );
    assert!(
        message_id.starts_with(&expected),
        "{message_id} vs {expected}"
    );
    let page = bob.get("/requests");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("id=\"req-{id}\"")),
        "{}",
        page.body
    );
    let answer = bob.approve(id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, code) = text(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{stdout}{stderr}");

    // A notice the server refuses for good (554: a content filter) is given up at once and audited,
    // not retried until its request lapses: the next request's notice is not held behind it.
    let file = |reason: &str| {
        b.ssh(&alice, "alice")
            .arg(format!("request mri-01 ssh --for 30m --reason {reason}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let has = |text: &str| {
        sent(&out)
            .iter()
            .filter(|m| m["body"].as_str().unwrap_or_default().contains(text))
            .count()
    };
    // Filed one after the other, so the refused notice comes first in the audit log's order.
    let mut rejected = file("INC-10 REJECT-ME");
    assert!(
        wait_until(Duration::from_secs(20), || has("REJECT-ME") > 0),
        "the notice was not tried: {:?}\n{}",
        sent(&out),
        b.log()
    );
    let mut next = file("INC-11 after the rejected one");
    assert!(
        wait_until(Duration::from_secs(20), || sent(&out)
            .iter()
            .any(|m| m["accepted"] == true
                && m["body"].as_str().unwrap_or_default().contains("INC-11"))),
        "the next notice was held back: {:?}\n{}",
        sent(&out),
        b.log()
    );
    assert_eq!(has("REJECT-ME"), 1, "retried: {:?}", sent(&out));
    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"mail.undelivered\"") && l.contains("content filter")),
        "{audit}"
    );
    let _ = rejected.kill();
    let _ = next.kill();
    let _ = rejected.wait();
    let _ = next.wait();
    stop_guarded(&mut sink);
}
