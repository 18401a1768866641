//! Issue 5, end to end: a vendor files a request with the real `ssh … request` and waits; approvers
//! enrolled through the real web page (HTTPS) decide through the JSON API and the page's forms.

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::DataDir;
use crate::support::bastion::{Bastion, Vendor, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::web::Approver;

fn setup() -> Option<(Sshd, Bastion, Vendor)> {
    let sshd = Sshd::start()?;
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &["dicom:104/tcp"]);
    let alice = b.vendor("alice", "Acme Imaging");
    Some((sshd, b, alice))
}

/// A critical asset, `ct-02` in zone icu, on `sshd`: its requests need two approvers.
fn critical_asset(b: &Bastion, sshd: &Sshd) {
    b.data
        .run(&[
            "asset",
            "add",
            "ct-02",
            "--address",
            "127.0.0.1",
            "--zone",
            "icu",
            "--purpose",
            "CT scanner",
            "--criticality",
            "critical",
            "--service",
            &format!("ssh:{}/ssh", sshd.port),
        ])
        .ok();
}

/// Starts `ssh alice@bastion request …` (piped output); `tty` adds `-tt` so Ctrl-C travels as a byte.
fn request(b: &Bastion, v: &Vendor, words: &str, tty: bool) -> Child {
    let options: &[&str] = if tty { &["-tt"] } else { &[] };
    let mut cmd = b.ssh_with(v, options, &v.name);
    cmd.arg(format!("request {words}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if tty {
        cmd.stdin(Stdio::piped());
    }
    cmd.spawn().unwrap()
}

/// The id of the newest pending request, once it is there.
fn pending_id(a: &Approver, b: &Bastion) -> i64 {
    let mut id = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let list = a.get("/api/requests").json();
            id = list
                .as_array()
                .and_then(|l| l.last())
                .and_then(|r| r["id"].as_i64());
            id.is_some()
        }),
        "no pending request\n{}",
        b.log()
    );
    id.unwrap()
}

fn finish(child: Child) -> (String, String, i32) {
    text(&child.wait_with_output().unwrap())
}

/// Like [`finish`] for a request that must be refused at once: one still waiting after 30 s was filed.
fn refused(mut child: Child) -> (String, String, i32) {
    let ended = wait_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let out = finish(child);
    assert!(ended, "the request was filed and waits: {out:?}");
    out
}

#[test]
fn approved_request_releases_the_waiting_ssh_within_a_second_with_the_commands_to_connect() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let child = request(
        &b,
        &alice,
        "mri-01 ssh,dicom --for 1h --reason INC-4711 coil calibration",
        false,
    );
    let id = pending_id(&bob, &b);
    let r = bob.get(&format!("/api/requests/{id}")).json();
    assert_eq!(r["reason"], "INC-4711 coil calibration");
    assert_eq!(r["services"], serde_json::json!(["ssh", "dicom"]));
    assert_eq!(r["zone"], "radiology");

    let decided = Instant::now();
    let answer = bob.approve(id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, code) = finish(child);
    let waited = decided.elapsed();
    assert_eq!(
        code,
        0,
        "stdout: {stdout}\nstderr: {stderr}\nlog: {}",
        b.log()
    );
    assert!(waited < Duration::from_millis(1500), "took {waited:?}");
    assert!(stderr.contains(&format!("request #{id} filed")), "{stderr}");
    assert!(
        stderr.contains("waiting for approval") || waited < Duration::from_secs(1),
        "{stderr}"
    );
    let port = b.ssh_port;
    assert!(
        stdout.contains(&format!("ssh -p {port} -t alice+mri-01@127.0.0.1")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "ssh -p {port} -N -L 10104:mri-01:104 alice@127.0.0.1"
        )),
        "{stdout}"
    );

    // The grant works, and its clock started at the approval.
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("echo granted-$((2*21))")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("granted-42"));
    let grants = bob.get("/api/grants").json();
    let g = &grants[0];
    assert_eq!(g["request_id"], id);
    let length = g["ends_at"].as_i64().unwrap() - g["starts_at"].as_i64().unwrap();
    assert_eq!(length, 3600);

    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"request.approve\"") && l.contains(r#"\"method\":\"totp\""#)),
        "{audit}"
    );
}

#[test]
fn denial_reason_reaches_the_vendor_and_ctrl_c_leaves_a_request_pending() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");

    let child = request(
        &b,
        &alice,
        "mri-01 ssh --for 2h --reason 'INC-1 \"quoted\" reason'",
        false,
    );
    let id = pending_id(&bob, &b);
    assert_eq!(
        bob.get(&format!("/api/requests/{id}")).json()["reason"],
        "INC-1 \"quoted\" reason"
    );
    let answer = bob.post(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "deny", "reason": "no maintenance window today"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, stderr, code) = finish(child);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("denied by bob: no maintenance window today"),
        "{stderr}"
    );

    // Ctrl-C in a -t session stops waiting; the request stays pending for approvers.
    let mut child = request(&b, &alice, "mri-01 ssh --for 1h --reason INC-2", true);
    let id2 = {
        let mut id2 = None;
        assert!(wait_until(Duration::from_secs(20), || {
            id2 = bob
                .get("/api/requests")
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap())
                .find(|i| *i != id);
            id2.is_some()
        }));
        id2.unwrap()
    };
    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let (stdout, stderr, _) = finish(child);
    let both = format!("{stdout}{stderr}");
    assert!(
        both.contains(&format!("Request #{id2} stays pending")),
        "{both}"
    );
    assert_eq!(
        bob.get(&format!("/api/requests/{id2}")).json()["status"],
        "pending"
    );

    // Longer than allowed (default max 8h) and unknown assets are refused up front, the latter worded
    // the same whether or not the asset exists.
    let out = b
        .ssh(&alice, "alice")
        .arg("request mri-01 ssh --for 9h --reason x")
        .output()
        .unwrap();
    let (_, stderr, code) = text(&out);
    assert_eq!(code, 1);
    assert!(stderr.contains("at most 8h"), "{stderr}");
    let out = b
        .ssh(&alice, "alice")
        .arg("request ct-99 ssh --for 1h --reason x")
        .output()
        .unwrap();
    let (_, unknown_asset, _) = text(&out);
    let out = b
        .ssh(&alice, "alice")
        .arg("request mri-01 hl7 --for 1h --reason x")
        .output()
        .unwrap();
    let (_, unknown_service, _) = text(&out);
    assert_eq!(
        unknown_asset.replace("ct-99 with service ssh", "X"),
        unknown_service.replace("mri-01 with service hl7", "X"),
    );
}

#[test]
fn four_eyes_no_self_approval_and_critical_assets_need_two_approvers() {
    let Some((sshd, b, alice)) = setup() else {
        return;
    };
    critical_asset(&b, &sshd);
    // A staff account named like the vendor is the same person until proven otherwise.
    let same = Approver::enroll(&b, "alice", "approver");
    let bob = Approver::enroll(&b, "bob", "approver");
    let carol = Approver::enroll(&b, "carol", "approver");
    let dave = Approver::enroll(&b, "dave", "auditor");

    let child = request(
        &b,
        &alice,
        "ct-02 ssh --for 2h --reason INC-9 tube warmup",
        false,
    );
    let id = pending_id(&bob, &b);
    let answer = same.approve(id);
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("your own request"), "{}", answer.body);
    assert_eq!(dave.approve(id).status, 403, "auditors cannot approve");

    // Bob narrows the time; the first approval is not enough on a critical asset.
    let answer = bob.post(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "approve", "duration": "1h"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("second approver")
    );
    assert_eq!(bob.approve(id).status, 403, "the same approver twice");
    // Widening is never allowed.
    let wider = carol.post(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "approve", "duration": "3h"}),
    );
    assert_eq!(wider.status, 400, "{}", wider.body);
    assert_eq!(
        bob.get(&format!("/api/requests/{id}")).json()["status"],
        "pending"
    );

    let answer = carol.approve(id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, code) = finish(child);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("alice+ct-02@127.0.0.1"), "{stdout}");
    let grant = &bob.get("/api/grants").json()[0];
    assert_eq!(
        grant["ends_at"].as_i64().unwrap() - grant["starts_at"].as_i64().unwrap(),
        3600,
        "the shorter approval wins"
    );
    assert_eq!(grant["issued_by"], "staff:bob+carol");
}

/// Four eyes are two people who may decide when the grant is issued: an approval whose approver was
/// disabled since does not make one of the two, so the next approver is the second and not the last.
#[test]
fn an_approval_does_not_count_once_its_approver_is_disabled() {
    let Some((sshd, b, alice)) = setup() else {
        return;
    };
    critical_asset(&b, &sshd);
    let bob = Approver::enroll(&b, "bob", "approver");
    let carol = Approver::enroll(&b, "carol", "approver");
    let erin = Approver::enroll(&b, "erin", "approver");
    let child = request(
        &b,
        &alice,
        "ct-02 ssh --for 1h --reason INC-10 detector",
        false,
    );
    let id = pending_id(&carol, &b);
    assert_eq!(bob.approve(id).status, 200);
    b.data.run(&["user", "disable", "bob"]).ok();

    let answer = carol.approve(id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("second approver"),
        "{}",
        answer.body
    );
    assert_eq!(
        carol.get(&format!("/api/requests/{id}")).json()["status"],
        "pending"
    );
    let (_, _, detail) = audit_events(&b, "request.approve").pop().unwrap();
    assert_eq!(
        detail["not_counted"],
        serde_json::json!(["bob"]),
        "{detail}"
    );

    assert_eq!(erin.approve(id).status, 200);
    let (stdout, stderr, code) = finish(child);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        carol.get("/api/grants").json()[0]["issued_by"],
        "staff:carol+erin"
    );
}

#[test]
fn state_changes_need_the_csrf_token_and_hostile_reasons_render_inert() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let child = request(
        &b,
        &alice,
        "mri-01 ssh --for 1h --reason <script>alert(1)</script> & <b>bold</b>",
        false,
    );
    let id = pending_id(&bob, &b);

    let page = bob.get("/requests");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert(1)"), "{}", page.body);
    let csp = crate::support::web::curl(
        None,
        &["-I", &format!("{}/login", crate::support::web::base(&b))],
    )
    .body;
    assert!(
        csp.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{csp}"
    );

    // Without (or with a wrong) CSRF token nothing changes: JSON API and the page's form alike.
    let api = bob.post_with(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "approve"}),
        None,
    );
    assert_eq!(api.status, 403, "{}", api.body);
    let api = bob.post_with(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "approve"}),
        Some("0000"),
    );
    assert_eq!(api.status, 403, "{}", api.body);
    let form = bob.form(&format!("/requests/{id}/deny"), &[("reason", "forged")]);
    assert_eq!(form.status, 403, "{}", form.body);
    assert_eq!(
        bob.get(&format!("/api/requests/{id}")).json()["status"],
        "pending"
    );
    // Not signed in at all: 401, and the page redirects to sign-in.
    let anon = crate::support::web::curl(
        None,
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"decision\":\"approve\"}",
            &format!(
                "{}/api/requests/{id}/decision",
                crate::support::web::base(&b)
            ),
        ],
    );
    assert_eq!(anon.status, 401);

    // The page's own form, with its token, works (deny with a reason).
    let token = page_csrf(&page.body);
    let form = bob.form(
        &format!("/requests/{id}/deny"),
        &[("csrf", &token), ("reason", "use the <ticket> system")],
    );
    assert_eq!(form.status, 303, "{}", form.body);
    let (_, stderr, code) = finish(child);
    assert_eq!(code, 1);
    assert!(stderr.contains("use the <ticket> system"), "{stderr}");
}

/// Starts `echo started; sleep 60` on mri-01 and returns it with its session id once it is live and
/// `started` has reached the client (the session row exists before the device's first output: ending
/// the session earlier would race that output).
fn live_session(b: &Bastion, alice: &Vendor, bob: &Approver, known: &[String]) -> (Child, String) {
    use std::io::Read;
    let mut child = b
        .ssh(alice, "alice+mri-01")
        .arg("echo started; sleep 60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // A byte at a time, so nothing after the line is read ahead and lost.
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"started\n") && matches!(out.read(&mut byte), Ok(1)) {
            seen.push(byte[0]);
        }
        let _ = tx.send((out, seen));
    });
    let (out, seen) = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("no output from the session\n{}", b.log()));
    assert!(
        seen.ends_with(b"started\n"),
        "{}\n{}",
        String::from_utf8_lossy(&seen),
        b.log()
    );
    child.stdout = Some(out);
    let mut id = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let live = bob.get("/api/sessions?state=live").json();
            id = live.as_array().into_iter().flatten().find_map(|s| {
                let id = s["id"].as_str()?;
                (!known.iter().any(|k| k == id)).then(|| id.to_owned())
            });
            id.is_some()
        }),
        "no live session\n{}",
        b.log()
    );
    (child, id.unwrap())
}

#[test]
fn terminate_ends_one_session_and_revoke_ends_the_grants_sessions() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let child = request(&b, &alice, "mri-01 ssh --for 1h --reason INC-5", false);
    let id = pending_id(&bob, &b);
    assert_eq!(bob.approve(id).status, 200);
    assert_eq!(finish(child).2, 0);

    // Terminate: that session ends, the grant stays.
    let (first, first_id) = live_session(&b, &alice, &bob, &[]);
    let page = bob.get("/sessions");
    assert!(page.body.contains(&first_id), "{}", page.body);
    let t = Instant::now();
    // A reason is required: the vendor is told it.
    let answer = bob.post(
        &format!("/api/sessions/{first_id}/terminate"),
        serde_json::json!({}),
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    // ... and one line of text: it is written on the vendor's terminal and recorded, where escape
    // sequences could plant a link or a fake line.
    let answer = bob.post(
        &format!("/api/sessions/{first_id}/terminate"),
        serde_json::json!({"reason": "done\u{1b}]8;;http://evil\u{7}click\r\nchaperone: fake"}),
    );
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("control characters"),
        "{}",
        answer.body
    );
    let answer = bob.post(
        &format!("/api/sessions/{first_id}/terminate"),
        serde_json::json!({"reason": "wrong device"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, _) = finish(first);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // `live_session` saw `started` arrive before the terminate.
    assert!(
        format!("{stdout}{stderr}").contains("session terminated by bob: wrong device"),
        "{stdout}{stderr}"
    );
    assert_eq!(bob.get("/api/grants").json().as_array().unwrap().len(), 1);
    let again = bob.post(
        &format!("/api/sessions/{first_id}/terminate"),
        serde_json::json!({"reason": "again"}),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert!(audit.contains("\"session.terminate\""), "{audit}");

    // Revoke: every session under the grant ends.
    let (second, _) = live_session(&b, &alice, &bob, &[first_id]);
    let grant = bob.get("/api/grants").json()[0]["id"].as_i64().unwrap();
    let t = Instant::now();
    let answer = bob.post(
        &format!("/api/grants/{grant}/revoke"),
        serde_json::json!({"reason": "work finished"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (stdout, stderr, _) = finish(second);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        format!("{stdout}{stderr}").contains("revoked"),
        "{stdout}{stderr}"
    );
    assert_eq!(bob.get("/api/grants").json().as_array().unwrap().len(), 0);
}

/// Tunnel refusals hint `request ASSET PORT`: a port number names the asset's service on that port.
#[test]
fn a_request_may_name_a_service_by_its_port() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let mut child = request(&b, &alice, "mri-01 104 --for 1h --reason by-port", false);
    let id = pending_id(&bob, &b);
    assert_eq!(
        bob.get(&format!("/api/requests/{id}")).json()["services"],
        serde_json::json!(["dicom"])
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_auditor_cannot_terminate_a_session() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    b.grant("alice", "mri-01", "ssh", "1h");
    let (child, id) = live_session(&b, &alice, &bob, &[]);
    let answer = audrey.post(
        &format!("/api/sessions/{id}/terminate"),
        serde_json::json!({"reason": "curious"}),
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(bob.get("/api/sessions").body.contains(&id));
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
}

/// Auditors place and release legal holds from the session page (and the API), with a reason, audited;
/// approvers, who granted the access, do not; the CLI sees the same hold.
#[test]
fn an_auditor_places_and_releases_a_legal_hold_in_the_page() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    b.grant("alice", "mri-01", "ssh", "1h");
    let out = b.ssh(&alice, "alice+mri-01").arg("true").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let id = b
        .data
        .run(&["session", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = audrey.get(&format!("/sessions/{id}"));
    assert!(
        page.body.contains("Not on legal hold") && page.body.contains("Place a legal hold"),
        "{}",
        page.body
    );
    assert!(
        !bob.get(&format!("/sessions/{id}"))
            .body
            .contains("Place a legal hold")
    );
    let refused = bob.post(
        &format!("/api/sessions/{id}/hold"),
        serde_json::json!({"hold": true, "reason": "curious"}),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    for bad in ["", "case\u{1b}[2J 7"] {
        let answer = audrey.post(
            &format!("/api/sessions/{id}/hold"),
            serde_json::json!({"hold": true, "reason": bad}),
        );
        assert_eq!(answer.status, 400, "{bad:?}: {}", answer.body);
    }
    // The page's form, with the page's own token.
    let token = page_csrf(&page.body);
    let placed = audrey.form(
        &format!("/sessions/{id}/hold"),
        &[
            ("csrf", &token),
            ("hold", "yes"),
            ("reason", "case 7 (counsel)"),
        ],
    );
    assert_eq!(placed.status, 303, "{}", placed.body);
    let page = audrey.get(&format!("/sessions/{id}"));
    assert!(
        page.body.contains("On legal hold since")
            && page.body.contains("staff:audrey")
            && page.body.contains("case 7 (counsel)")
            && page.body.contains("Release the hold"),
        "{}",
        page.body
    );
    let shown = b.data.run(&["session", "show", &id, "--json"]).ok().json();
    assert_eq!(shown["hold"]["reason"], "case 7 (counsel)", "{shown}");
    let again = audrey.post(
        &format!("/api/sessions/{id}/hold"),
        serde_json::json!({"hold": true, "reason": "again"}),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    let released = audrey.post(
        &format!("/api/sessions/{id}/hold"),
        serde_json::json!({"hold": false, "reason": "case closed"}),
    );
    assert_eq!(released.status, 200, "{}", released.body);
    let shown = b.data.run(&["session", "show", &id, "--json"]).ok().json();
    assert!(shown["hold"].is_null(), "{shown}");
    let holds = audit_events(&b, "session.hold");
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0].0, "staff:audrey");
    assert_eq!(holds[0].1, format!("session:{id}"));
    assert_eq!(holds[0].2["reason"], "case 7 (counsel)");
    assert_eq!(audit_events(&b, "session.release").len(), 1);
}

/// An evidence bundle reads and hashes every recording of its session while the browser takes it: one
/// staff member holds at most two downloads at once (429 past them, the page saying why), and a
/// finished or abandoned download gives its turn back.
#[test]
fn evidence_downloads_are_bounded_per_staff_member() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    b.grant("alice", "mri-01", "ssh", "1h");
    // 24 MB recorded (an exec's recording is its bytes): more than the sockets between the bastion and
    // a slow curl hold, so the download stays in progress.
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("head -c 24000000 /dev/zero")
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 24_000_000, "{:?}", text(&out).1);
    let id = b
        .data
        .run(&["session", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = format!("/sessions/{id}/evidence.tar");
    let (first, status) = audrey.get_slowly(&bundle);
    assert_eq!(status, 200);
    let (_second, status) = audrey.get_slowly(&bundle);
    assert_eq!(status, 200);
    let third = audrey.get(&bundle);
    assert_eq!(third.status, 429, "a third download at once");
    assert!(
        third
            .body
            .contains("you are downloading 2 evidence bundles already"),
        "{}",
        third.body
    );
    // The first download abandoned: its turn comes back once the server sees it gone.
    drop(first);
    let mut again = third;
    let back = wait_until(Duration::from_secs(10), || {
        again = audrey.get(&bundle);
        again.status == 200
    });
    assert!(back, "the abandoned download's turn: {}", again.status);
    assert!(again.body.len() > 24_000_000, "{}", again.body.len());
}

/// Who looked is audited for every session page, a connection record's too, and for every history
/// list, with or without a text search (a list is audited once per query every ten minutes, not at
/// each of the page's live refreshes).
#[test]
fn every_session_page_and_history_list_is_audited() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    b.grant("alice", "mri-01", "ssh", "1h");
    // A jump with nothing inside: a session whose record is its row and audit events, no recording.
    let _ = b
        .ssh_with(&alice, &["-W", "mri-01:22"], "alice")
        .output()
        .unwrap();
    let sessions = || b.data.run(&["session", "list", "--json"]).ok().json();
    assert!(
        wait_until(Duration::from_secs(10), || sessions()
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "jump" && !s["ended_at"].is_null())),
        "{}",
        sessions()
    );
    let id = sessions().as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(audrey.get(&format!("/sessions/{id}")).status, 200);
    let views = audit_events(&b, "recording.view");
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!(
        (views[0].0.as_str(), views[0].1.as_str()),
        ("staff:audrey", format!("session:{id}").as_str())
    );
    let lists = || {
        audit_events(&b, "recording.search")
            .into_iter()
            .filter(|(actor, _, d)| {
                actor == "staff:audrey" && d["text"].is_null() && d["list"].is_null()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(audrey.get("/history?vendor=alice").status, 200);
    assert_eq!(lists().len(), 1, "{:?}", lists());
    assert_eq!(lists()[0].2["filters"]["vendor"], "alice");
    assert_eq!(lists()[0].2["found"], 1);
    // The same list again (a live refresh): not audited again; another query is.
    assert_eq!(audrey.get("/history?vendor=alice").status, 200);
    assert_eq!(lists().len(), 1, "{:?}", lists());
    assert_eq!(audrey.get("/api/sessions?asset=mri-01").status, 200);
    assert_eq!(lists().len(), 2, "{:?}", lists());
    // The command line's list and show are audited as the page's are, at each run.
    let by_cli = |action: &str| {
        audit_events(&b, action)
            .into_iter()
            .filter(|(actor, _, d)| actor.starts_with("os:") && d["via"] == "cli")
            .count()
    };
    let (listed, shown) = (by_cli("recording.search"), by_cli("recording.view"));
    b.data.run(&["session", "list", "--vendor", "alice"]).ok();
    assert_eq!(by_cli("recording.search"), listed + 1);
    b.data.run(&["session", "show", &id]).ok();
    assert_eq!(by_cli("recording.view"), shown + 1);

    // The live list, and a vendor's sessions shown beside their request, are lists of sessions too:
    // audited once per staff member and list every ten minutes, not at each refresh.
    let seen = |who: &str, which: &str| {
        audit_events(&b, "recording.search")
            .into_iter()
            .filter(|(actor, _, d)| actor == who && d["list"] == which)
            .collect::<Vec<_>>()
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    assert_eq!(bob.get("/api/sessions?state=live").status, 200);
    assert_eq!(seen("staff:bob", "live").len(), 1, "the API's live list");
    assert_eq!(audrey.get("/sessions").status, 200);
    assert_eq!(audrey.get("/sessions").status, 200);
    let live = seen("staff:audrey", "live");
    assert_eq!(live.len(), 1, "the page's, once: {live:?}");
    assert_eq!(live[0].1, "sessions");
    let mut child = request(&b, &alice, "mri-01 ssh --for 1h --reason INC-9", false);
    pending_id(&bob, &b);
    assert_eq!(bob.get("/requests").status, 200);
    assert_eq!(bob.get("/requests").status, 200);
    let beside = seen("staff:bob", "vendor");
    assert_eq!(beside.len(), 1, "{beside:?}");
    assert_eq!(beside[0].2["filters"]["vendor"], "alice");
    let _ = child.kill();
    let _ = child.wait();
}

/// The CSRF token a page's forms carry.
fn page_csrf(body: &str) -> String {
    body.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

/// The audit events with `action`, each as (actor, subject, detail parsed from its JSON text).
fn audit_events(b: &Bastion, action: &str) -> Vec<(String, String, serde_json::Value)> {
    let out = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == action)
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
                serde_json::from_str(e["detail"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn keys(detail: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = detail.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// The page's CSRF token, from any signed-in page.
fn csrf(a: &Approver) -> String {
    let page = a.get("/requests");
    page.body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no csrf token in {}", page.body))
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_disabled_vendors_request_cannot_be_approved_in_the_page_or_the_api_and_the_refusal_is_audited()
{
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let mut child = request(&b, &alice, "mri-01 ssh --for 1h --reason INC-77", false);
    let id = pending_id(&bob, &b);
    b.data.run(&["vendor", "disable", "alice"]).ok();

    let api = bob.approve(id);
    assert_eq!(api.status, 409, "{}", api.body);
    assert!(
        api.json()["error"]
            .as_str()
            .unwrap()
            .contains("vendor alice is disabled, so this request cannot be approved"),
        "{}",
        api.body
    );
    let page = bob.form(
        &format!("/requests/{id}/approve"),
        &[
            ("csrf", &csrf(&bob)),
            ("service", "ssh"),
            ("duration", "1h"),
        ],
    );
    assert_eq!(page.status, 409, "{}", page.body);
    assert!(
        page.body.contains("vendor alice is disabled"),
        "{}",
        page.body
    );
    assert_eq!(
        bob.get(&format!("/api/requests/{id}")).json()["status"],
        "pending",
        "a refused approval changes nothing"
    );
    assert_eq!(bob.get("/api/grants").json().as_array().unwrap().len(), 0);
    let refused = audit_events(&b, "grant.refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (actor, subject, detail) in &refused {
        assert_eq!(actor, "staff:bob");
        assert_eq!(subject, "vendor:alice");
        assert_eq!(detail["source"], format!("request:{id}"));
        assert_eq!(detail["method"], "totp");
        assert!(
            detail["refusal"].as_str().unwrap().contains("disabled"),
            "{detail}"
        );
    }
    // What approvers can still do: deny it.
    let deny = bob.post(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "deny", "reason": "vendor account disabled"}),
    );
    assert_eq!(deny.status, 200, "{}", deny.body);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_vendor_with_the_most_pending_requests_is_told_to_wait_and_the_refusal_is_audited() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    assert!(config.contains("max_pending_per_vendor = 5"), "{config}");
    std::fs::write(
        data.config(),
        config.replacen(
            "max_pending_per_vendor = 5",
            "max_pending_per_vendor = 2",
            1,
        ),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &["dicom:104/tcp"]);
    let alice = b.vendor("alice", "Acme Imaging");
    let bob = Approver::enroll(&b, "bob", "approver");

    let mut waiting = Vec::new();
    for n in 1..=2 {
        waiting.push(request(
            &b,
            &alice,
            &format!("mri-01 ssh --for 1h --reason INC-{n}"),
            false,
        ));
        assert!(
            wait_until(Duration::from_secs(20), || {
                bob.get("/api/requests").json().as_array().map(Vec::len) == Some(n)
            }),
            "request {n} not pending\n{}",
            b.log()
        );
    }
    // Refused at once; without a cap it would be filed and wait for a decision, so wait a bounded time.
    let mut third = request(&b, &alice, "mri-01 dicom --for 1h --reason INC-3", false);
    let exited = wait_until(Duration::from_secs(20), || {
        third.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = third.kill();
    }
    let (_, stderr, code) = finish(third);
    assert!(exited, "the third request was not refused: {stderr}");
    assert_eq!(code, 1, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("chaperone: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(
        line,
        "chaperone: you already have 2 requests waiting for a decision, the most allowed: wait until \
         one is decided or lapses, or ask the hospital's staff to deny one you no longer need"
    );
    assert_eq!(bob.get("/api/requests").json().as_array().unwrap().len(), 2);
    let refused = audit_events(&b, "request.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "vendor:alice");
    assert_eq!(
        refused[0].2["reason"],
        "2 requests already pending, at most 2 per vendor"
    );

    // Once one is decided there is room again.
    let first = bob.get("/api/requests").json()[0]["id"].as_i64().unwrap();
    let deny = bob.post(
        &format!("/api/requests/{first}/decision"),
        serde_json::json!({"decision": "deny", "reason": "one at a time"}),
    );
    assert_eq!(deny.status, 200, "{}", deny.body);
    waiting.push(request(
        &b,
        &alice,
        "mri-01 dicom --for 1h --reason INC-3",
        false,
    ));
    assert!(
        wait_until(Duration::from_secs(20), || {
            bob.get("/api/requests").json().as_array().map(Vec::len) == Some(2)
                && bob.get("/api/requests").body.contains("INC-3")
        }),
        "{}",
        b.log()
    );
    for mut child in waiting {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn grants_issued_and_revoked_at_the_command_line_and_in_the_web_page_are_audited_alike() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    let staff_issued = b.grant("alice", "mri-01", "dicom", "2h");
    let child = request(&b, &alice, "mri-01 ssh --for 1h --reason INC-8", false);
    let id = pending_id(&bob, &b);
    assert_eq!(bob.approve(id).status, 200);
    assert_eq!(finish(child).2, 0);
    let approved = bob
        .get("/api/grants")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["request_id"] == id)
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    b.data
        .run(&[
            "grant",
            "revoke",
            &approved.to_string(),
            "--reason",
            "done at the console",
        ])
        .ok();
    let web = bob.post(
        &format!("/api/grants/{staff_issued}/revoke"),
        serde_json::json!({"reason": "done in the page"}),
    );
    assert_eq!(web.status, 200, "{}", web.body);

    let issued = audit_events(&b, "grant.issue");
    assert_eq!(issued.len(), 2, "{issued:?}");
    let by_cli = &issued[0];
    let by_request = &issued[1];
    assert_eq!(keys(&by_cli.2), keys(&by_request.2));
    assert_eq!(by_cli.1, format!("grant:{staff_issued}"));
    assert_eq!(by_cli.2["source"], "staff-issued");
    assert!(by_cli.0.starts_with("os:"), "{by_cli:?}");
    assert_eq!(by_cli.2["actor"], by_cli.0.as_str());
    assert_eq!(by_cli.2["method"], serde_json::Value::Null);
    assert_eq!(by_request.1, format!("grant:{approved}"));
    assert_eq!(by_request.2["source"], format!("request:{id}"));
    assert_eq!(by_request.0, "staff:bob");
    assert_eq!(by_request.2["actor"], "staff:bob");
    assert_eq!(by_request.2["method"], "totp");
    assert_eq!(by_request.2["issued_by"], "staff:bob");
    assert_eq!(by_request.2["services"], serde_json::json!(["ssh"]));
    assert_eq!(
        by_request.2["ends_at"].as_i64().unwrap() - by_request.2["starts_at"].as_i64().unwrap(),
        3600
    );

    let revoked = audit_events(&b, "grant.revoke");
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    assert_eq!(keys(&revoked[0].2), keys(&revoked[1].2));
    assert_eq!(revoked[0].2["source"], format!("request:{id}"));
    assert_eq!(revoked[0].2["revoke_reason"], "done at the console");
    assert_eq!(revoked[1].2["source"], "staff-issued");
    assert_eq!(revoked[1].2["revoke_reason"], "done in the page");
    assert_eq!(revoked[1].0, "staff:bob");
    // Issue and revoke describe the grant with the same fields.
    let mut issue_keys = keys(&by_cli.2);
    issue_keys.push("revoke_reason".into());
    issue_keys.sort();
    assert_eq!(keys(&revoked[0].2), issue_keys);
}

/// Issue 15: revoking needs a reason in the API and in the page (the page asks first, on a page of its
/// own); `GET /api/requests?state=decided` lists approved, narrowed and denied requests with who
/// decided and why, filtered by vendor, asset and outcome; an auditor's pages have no Action column.
#[test]
fn issue_15_revoke_needs_a_reason_and_decided_requests_are_listed_and_filtered() {
    let Some((_sshd, b, alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");

    // Three requests, decided three ways: as asked, narrowed, denied.
    let child = request(
        &b,
        &alice,
        "mri-01 ssh,dicom --for 2h --reason INC-1 as asked",
        false,
    );
    let asked = pending_id(&bob, &b);
    assert_eq!(bob.approve(asked).status, 200);
    assert_eq!(finish(child).2, 0);
    let child = request(
        &b,
        &alice,
        "mri-01 ssh,dicom --for 2h --reason INC-2 narrow me",
        false,
    );
    let narrowed = pending_id(&bob, &b);
    let answer = bob.post(
        &format!("/api/requests/{narrowed}/decision"),
        serde_json::json!({"decision": "approve", "services": ["dicom"], "duration": "30m"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(finish(child).2, 0);
    let child = request(
        &b,
        &alice,
        "mri-01 ssh --for 1h --reason INC-3 deny me",
        false,
    );
    let denied = pending_id(&bob, &b);
    let answer = bob.post(
        &format!("/api/requests/{denied}/decision"),
        serde_json::json!({"decision": "deny", "reason": "use the <maintenance> window"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(finish(child).2, 1);

    let decided = |query: &str| -> serde_json::Value {
        let answer = bob.get(&format!("/api/requests?{query}"));
        assert_eq!(answer.status, 200, "{query}: {}", answer.body);
        answer.json()
    };
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let all = decided("state=decided");
    assert_eq!(
        ids(&all),
        vec![denied, narrowed, asked],
        "latest first: {all}"
    );
    assert_eq!(all["page"], 1);
    assert_eq!(all["more"], false);
    let by_id = |id: i64| {
        all["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    let a = by_id(asked);
    assert_eq!(a["outcome"], "approved", "{a}");
    assert_eq!(a["decided_by_name"], "bob");
    assert_eq!(a["granted_services"], serde_json::json!(["ssh", "dicom"]));
    assert_eq!(a["granted_duration"], "2h");
    assert!(
        a["decided_at"].as_i64().unwrap() >= a["created_at"].as_i64().unwrap(),
        "{a}"
    );
    assert!(a["decided"].as_str().unwrap().ends_with('Z'), "{a}");
    let n = by_id(narrowed);
    assert_eq!(n["outcome"], "narrowed", "{n}");
    assert_eq!(n["services"], serde_json::json!(["ssh", "dicom"]));
    assert_eq!(n["granted_services"], serde_json::json!(["dicom"]));
    assert_eq!(n["granted_duration"], "30m");
    let d = by_id(denied);
    assert_eq!(d["outcome"], "denied", "{d}");
    assert_eq!(d["decided_by_name"], "bob");
    assert_eq!(d["decision_reason"], "use the <maintenance> window");
    assert_eq!(d["reason"], "INC-3 deny me");

    assert_eq!(ids(&decided("state=approved")), vec![narrowed, asked]);
    assert_eq!(ids(&decided("state=narrowed")), vec![narrowed]);
    assert_eq!(ids(&decided("state=denied")), vec![denied]);
    assert_eq!(ids(&decided("state=expired")), Vec::<i64>::new());
    assert_eq!(
        ids(&decided("state=decided&vendor=alice&asset=mri-01")).len(),
        3
    );
    assert_eq!(ids(&decided("state=decided&vendor=zed")), Vec::<i64>::new());
    assert_eq!(ids(&decided("state=denied&asset=ct-02")), Vec::<i64>::new());
    assert_eq!(ids(&decided("state=decided&page=2")), Vec::<i64>::new());
    // Without a state the list is the pending one, as before.
    assert_eq!(bob.get("/api/requests").json(), serde_json::json!([]));
    for bad in [
        "state=maybe",
        "state=decided&page=0",
        "state=decided&vendor=A%20B",
    ] {
        let answer = bob.get(&format!("/api/requests?{bad}"));
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert!(answer.json()["error"].is_string(), "{}", answer.body);
    }
    // The page: the same decisions, escaped, with who and why, and filters kept in the address.
    let page = bob.get("/decisions?state=denied");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("use the &lt;maintenance&gt; window"),
        "{}",
        page.body
    );
    assert!(
        !page
            .body
            .contains(&format!("<td data-label=\"Request\">#{asked}<"))
    );
    let page = bob.get("/decisions");
    for id in [asked, narrowed, denied] {
        assert!(
            page.body
                .contains(&format!("<td data-label=\"Request\">#{id}<")),
            "{}",
            page.body
        );
    }
    assert!(
        page.body
            .contains("asked ssh, dicom for 2h; granted dicom for 30m"),
        "{}",
        page.body
    );

    // Grants: what the narrowed one was asked, and who issued them by name.
    let grants = bob.get("/api/grants").json();
    let g = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["request_id"] == narrowed)
        .unwrap()
        .clone();
    assert_eq!(g["narrowed_from"], "ssh, dicom for 2h", "{g}");
    assert_eq!(g["issued_by"], "staff:bob");
    assert_eq!(g["issued_by_name"], "bob");
    let grant = g["id"].as_i64().unwrap();

    // Revoke without a reason: refused by the API (400, clear words), nothing revoked.
    for body in [
        serde_json::json!({}),
        serde_json::json!({"reason": "  \t "}),
    ] {
        let answer = bob.post(&format!("/api/grants/{grant}/revoke"), body);
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("needs a reason"),
            "{}",
            answer.body
        );
    }
    // The page asks first: its form's POST shows the confirmation and revokes nothing.
    let token = csrf(&bob);
    let ask = bob.form(
        &format!("/grants/{grant}/revoke"),
        &[("csrf", &token), ("reason", "")],
    );
    assert_eq!(ask.status, 200, "{}", ask.body);
    assert!(
        ask.body.contains(&format!("Revoke grant #{grant}?")),
        "{}",
        ask.body
    );
    assert!(
        ask.body.contains("name=\"confirm\" value=\"yes\""),
        "{}",
        ask.body
    );
    assert!(
        !ask.body.contains("data-live"),
        "a confirmation does not refresh itself"
    );
    // Confirmed with a blank reason: refused, asked again with why.
    let blank = bob.form(
        &format!("/grants/{grant}/revoke"),
        &[("csrf", &token), ("reason", " "), ("confirm", "yes")],
    );
    assert_eq!(blank.status, 400, "{}", blank.body);
    assert!(blank.body.contains("needs a reason"), "{}", blank.body);
    assert!(
        bob.get("/api/grants")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == grant),
        "nothing was revoked"
    );
    assert!(audit_events(&b, "grant.revoke").is_empty());
    let done = bob.form(
        &format!("/grants/{grant}/revoke"),
        &[
            ("csrf", &token),
            ("reason", "INC-2 finished"),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done.location.contains("/grants?notice="), "{done:?}");
    let shown = &done.location[done.location.find("/grants").unwrap()..];
    // The notice shows on the page it names, on every read (the live refresh reads it again).
    for _ in 0..2 {
        assert!(
            bob.get_background(shown)
                .body
                .contains(&format!("Grant #{grant} revoked")),
            "{shown}"
        );
    }
    assert!(
        !bob.get("/grants")
            .body
            .contains(&format!("Grant #{grant} revoked"))
    );
    let revoked = audit_events(&b, "grant.revoke");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].2["revoke_reason"], "INC-2 finished");
    let all = decided("state=narrowed");
    assert!(
        all["requests"][0]["grant_revoked"]
            .as_str()
            .unwrap()
            .starts_with("revoked by bob"),
        "{all}"
    );
    // The next request's approver sees the revocation in the vendor's history beside it.
    let mut child = request(
        &b,
        &alice,
        "mri-01 dicom --for 1h --reason INC-4 again",
        false,
    );
    pending_id(&bob, &b);
    let page = bob.get("/requests");
    assert!(
        page.body
            .contains(&format!("#{narrowed} mri-01 ssh,dicom for 2h: narrowed"))
            && page.body.contains("<strong>grant revoked by bob")
            && page.body.contains("INC-2 finished</strong>"),
        "{}",
        page.body
    );
    let _ = child.kill();
    let _ = child.wait();

    // An auditor sees no Action column (nothing to do there) and no decision forms.
    let erin = Approver::enroll(&b, "erin", "auditor");
    for path in ["/grants", "/sessions", "/requests"] {
        let page = erin.get(path);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!page.body.contains(">Action<"), "{path}: {}", page.body);
        assert!(
            !page.body.contains("method=\"post\" action=\"/grants"),
            "{path}"
        );
    }
    assert!(erin.get("/grants").body.contains("INC-1 as asked"));
}

/// An asset that names its vendor organisation is requested by, and granted to, that organisation's
/// vendors only. Another organisation's device reads to a vendor as one that does not exist; staff
/// cannot grant it either; a request filed before the asset changed hands cannot be approved. Every
/// refusal is audited with the real reason.
#[test]
fn a_vendor_asks_for_and_is_granted_only_their_own_organisations_assets() {
    let Some((sshd, b, alice)) = setup() else {
        return;
    };
    for (name, org, service) in [
        ("pump-07", "Bolt Pumps", "console"),
        ("mri-02", "ACME imaging ", "ssh"),
    ] {
        b.data
            .run(&[
                "asset",
                "add",
                name,
                "--address",
                "127.0.0.1",
                "--zone",
                "radiology",
                "--purpose",
                "device",
                "--vendor-org",
                org,
                "--service",
                &format!("{service}:{}/ssh", sshd.port),
            ])
            .ok();
    }
    // A blank organisation would open the device to every vendor: refused.
    let blank = b.data.run(&[
        "asset",
        "add",
        "x-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "x",
        "--vendor-org",
        " ",
        "--service",
        "ssh:2022/ssh",
    ]);
    blank.fails(1);
    assert!(
        blank
            .stderr()
            .contains("vendor organisation must not be empty"),
        "{}",
        blank.stderr()
    );
    let bob = Approver::enroll(&b, "bob", "approver");

    // Another organisation's asset, and one that does not exist: the same words, for a session (the
    // asset's ssh service, `console` here, is not named) and for a request.
    let (_, stderr, code) = text(&b.ssh(&alice, "alice+pump-07").arg("true").output().unwrap());
    let (_, missing, _) = text(&b.ssh(&alice, "alice+pump-99").arg("true").output().unwrap());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no active grant for pump-07:ssh"),
        "{stderr}"
    );
    assert_eq!(
        stderr.replace("pump-07", "ASSET"),
        missing.replace("pump-99", "ASSET")
    );
    let (_, other, code) = refused(request(
        &b,
        &alice,
        "pump-07 ssh --for 1h --reason x",
        false,
    ));
    let (_, missing, _) = refused(request(
        &b,
        &alice,
        "pump-99 ssh --for 1h --reason x",
        false,
    ));
    assert_ne!(code, 0);
    assert!(
        other.contains("no asset pump-07 with service ssh can be requested"),
        "{other}"
    );
    assert_eq!(
        other.replace("pump-07", "ASSET"),
        missing.replace("pump-99", "ASSET")
    );
    let refused = audit_events(&b, "request.refused");
    assert!(
        refused
            .iter()
            .any(|(_, subject, d)| subject == "asset:pump-07"
                && d["reason"]
                    .as_str()
                    .unwrap()
                    .contains("serviced by Bolt Pumps, the vendor is with Acme Imaging")),
        "{refused:?}"
    );

    // Staff cannot hand it to her either; the refusal is audited.
    let cli = b.data.run(&[
        "grant",
        "add",
        "--vendor",
        "alice",
        "--asset",
        "pump-07",
        "--services",
        "ssh",
        "--for",
        "1h",
        "--reason",
        "INC-9",
    ]);
    assert_ne!(cli.code(), 0);
    assert!(
        cli.stderr()
            .contains("asset pump-07 is serviced by Bolt Pumps, vendor alice is with Acme Imaging"),
        "{}",
        cli.stderr()
    );
    let grant_refused = audit_events(&b, "grant.refused");
    assert_eq!(grant_refused.len(), 1, "{grant_refused:?}");
    assert!(grant_refused[0].0.starts_with("os:"), "{grant_refused:?}");
    assert_eq!(grant_refused[0].1, "vendor:alice");

    // Her own organisation's asset (spelt with other case and blanks) is hers to ask for; once it
    // changes hands, the pending request cannot be approved, and can still be denied.
    let mut child = request(&b, &alice, "mri-02 ssh --for 1h --reason INC-10", false);
    let id = pending_id(&bob, &b);
    crate::cli::sqlite(
        &b.data.path().join("chaperone.db"),
        "UPDATE assets SET vendor_org = 'Bolt Pumps' WHERE name = 'mri-02';",
    );
    let api = bob.approve(id);
    assert_eq!(api.status, 409, "{}", api.body);
    assert!(
        api.body
            .contains("asset mri-02 is serviced by Bolt Pumps, vendor alice is with Acme Imaging"),
        "{}",
        api.body
    );
    assert_eq!(
        bob.get(&format!("/api/requests/{id}")).json()["status"],
        "pending"
    );
    assert_eq!(bob.get("/api/grants").json().as_array().unwrap().len(), 0);
    assert_eq!(audit_events(&b, "grant.refused").len(), 2);
    let deny = bob.post(
        &format!("/api/requests/{id}/decision"),
        serde_json::json!({"decision": "deny", "reason": "not your device"}),
    );
    assert_eq!(deny.status, 200, "{}", deny.body);
    let _ = child.kill();
    let _ = child.wait();

    // A grant issued before the asset changed hands (or before this rule) starts nothing: neither a
    // session nor a tunnel, and the audit log says why.
    b.grant("alice", "mri-01", "ssh,dicom", "1h");
    crate::cli::sqlite(
        &b.data.path().join("chaperone.db"),
        "UPDATE assets SET vendor_org = 'Bolt Pumps' WHERE name = 'mri-01';",
    );
    let (_, stderr, code) = text(&b.ssh(&alice, "alice+mri-01").arg("true").output().unwrap());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("your grant for mri-01:ssh does not hold: mri-01 is serviced by another organisation than yours"),
        "{stderr}"
    );
    let (_, stderr, code) = text(
        &b.ssh_with(&alice, &["-W", "mri-01:104"], "alice")
            .output()
            .unwrap(),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("your grant for mri-01:dicom does not hold"),
        "{stderr}"
    );
    let log = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert_eq!(
        log.matches("another organisation than the vendor's services mri-01")
            .count(),
        2,
        "{log}"
    );

    // Staff change who maintains an asset with a command, audited: cleared, the grant works again;
    // set to another organisation, the grants of vendors outside it are revoked.
    b.data.run(&["asset", "vendor-org", "mri-01"]).fails(2);
    b.data
        .run(&["asset", "vendor-org", "mri-01", "--none"])
        .ok();
    let (_, stderr, code) = text(&b.ssh(&alice, "alice+mri-01").arg("true").output().unwrap());
    assert_eq!(code, 0, "{stderr}");
    let set = b.data.run(&["asset", "vendor-org", "mri-01", "Bolt Pumps"]);
    assert!(
        set.ok()
            .stdout()
            .contains("1 open grant(s) of other organisations' vendors on mri-01 revoked"),
        "{}",
        set.stdout()
    );
    let grants = b
        .data
        .run(&["grant", "list", "--all", "--json"])
        .ok()
        .json();
    let grant = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["asset"] == "mri-01")
        .unwrap();
    assert_eq!(grant["state"], "revoked", "{grants}");
    assert!(
        grant["revoke_reason"]
            .as_str()
            .unwrap()
            .contains("mri-01 is serviced by another organisation than the vendor's"),
        "{grants}"
    );
    let log = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert_eq!(log.matches("\"asset.vendor_org\"").count(), 2, "{log}");

    // A grant left outside the organisations by a change made around chaperone's commands (or issued
    // before the rule, on an upgrade) is revoked when the bastion starts, not left listed as active.
    let db = b.data.path().join("chaperone.db");
    crate::cli::sqlite(
        &db,
        "UPDATE assets SET vendor_org = 'Acme Imaging' WHERE name = 'mri-02';",
    );
    let left = b.grant("alice", "mri-02", "ssh", "1h");
    crate::cli::sqlite(
        &db,
        "UPDATE assets SET vendor_org = 'Someone Else' WHERE name = 'mri-02';",
    );
    let b = Bastion::start(b.stop());
    let revoked = || {
        b.data
            .run(&["grant", "list", "--all", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == left)
            .cloned()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || revoked()["state"] == "revoked"),
        "{}",
        revoked()
    );
    assert_eq!(
        revoked()["revoked_by"],
        "system:organisations",
        "{}",
        revoked()
    );
}

/// More requests waiting than a page lists: the ones waiting longest are listed (lapsed ones are not),
/// and the page and the API say how many wait in all, so no request drops out of sight unsaid.
#[test]
fn a_backlog_lists_the_requests_waiting_longest_and_says_how_many_wait() {
    let Some((_sshd, b, _alice)) = setup() else {
        return;
    };
    let bob = Approver::enroll(&b, "bob", "approver");
    // 253 requests filed a second apart; the first 3 lapsed already.
    crate::cli::sqlite(
        &b.data.path().join("chaperone.db"),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 253) \
         INSERT INTO access_requests (vendor_id, asset_id, services, duration_secs, reason, status, \
           created_at, expires_at) \
         SELECT (SELECT id FROM vendors WHERE name = 'alice'), (SELECT id FROM assets WHERE name = 'mri-01'), \
           'ssh', 3600, 'bulk ' || i, 'pending', CAST(strftime('%s', 'now') AS INTEGER) - 1000 + i, \
           CASE WHEN i <= 3 THEN 1 ELSE CAST(strftime('%s', 'now') AS INTEGER) + 3600 END FROM n;",
    );
    let (api, headers) = bob.get_with_headers("/api/requests");
    assert_eq!(api.status, 200, "{}", api.body);
    let ids: Vec<i64> = api
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (4..204).collect::<Vec<i64>>());
    assert!(headers.contains("x-total-count: 250\r\n"), "{headers}");
    let page = bob.get("/requests");
    assert!(
        page.body
            .contains("250 requests are waiting; these are the 200 waiting longest."),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("#4 alice"),
        "the longest waiting is listed"
    );
    assert!(!page.body.contains("#3 alice"), "a lapsed one is not");
}
