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

/// A shell session with a pty, typed like a person types: each line after the device's prompt showed
/// (a loaded machine starts the shell late, and input typed before it would come back all at once at
/// the end), a pause, Enter.
fn typed_shell(
    b: &Bastion,
    alice: &crate::support::bastion::Vendor,
    lines: &[&str],
) -> (std::process::Child, Shown) {
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};
    let mut shell = b
        .ssh_with(alice, &["-tt"], "alice+mri-01")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Shown::default();
    let mut stdout = shell.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    // A prompt ends in `~# ` or `~$ ` (the device's shell in its home directory).
    let prompts = || {
        let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        text.matches("~# ").count() + text.matches("~$ ").count()
    };
    let mut stdin = shell.stdin.take().unwrap();
    for (n, line) in lines.iter().enumerate() {
        let t = Instant::now();
        while prompts() <= n {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no prompt from the device before typing {line:?}: {}\n{}",
                String::from_utf8_lossy(&seen.lock().unwrap()),
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        stdin.write_all(b"\r").unwrap();
        stdin.flush().unwrap();
    }
    shell.stdin = Some(stdin);
    (shell, seen)
}

/// What an ssh client printed so far.
type Shown = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Issue 11: an auditor signs in, finds a session by a word its device printed, plays it (time
/// advances), jumps to a command's marker and to the word found by the transcript search, and watches a
/// running session live; downloads the session's evidence bundle, which the stock `ssh-keygen -Y verify`
/// and `sha256sum -c` accept, and reject once a byte of the recording changed (and SHA256SUMS was made to
/// match). Then an approver ends the running session from its live view (reason and confirmation
/// required) and the vendor's ssh ends, told why. Every view, search, export and termination is audited.
#[test]
fn an_auditor_finds_plays_searches_and_watches_sessions_in_the_browser() {
    if browser_parts().is_none() {
        return;
    }
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let data = DataDir::init();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");

    // A recorded session that printed the word, ended.
    let (mut done, _) = typed_shell(&b, &alice, &["echo calibration-$((6*7))", "exit"]);
    let status = done.wait().unwrap();
    assert!(
        status.success() || status.code() == Some(0),
        "{status:?}\n{}",
        b.log()
    );
    let list = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["session", "list", "--json"];
        all.extend_from_slice(args);
        b.data.run(&all).ok().json()
    };
    let mut recorded = String::new();
    assert!(
        crate::support::bastion::wait_until(std::time::Duration::from_secs(20), || {
            let found = list(&["--text", "calibration-42"]);
            match found.as_array().and_then(|a| a.first()) {
                Some(s) => {
                    recorded = s["id"].as_str().unwrap().to_owned();
                    true
                }
                None => false,
            }
        }),
        "the indexer never made the word searchable\n{}",
        b.log()
    );
    // The same search in the CLI as the issue words it finds nothing else.
    assert_eq!(
        list(&[
            "--vendor",
            "alice",
            "--asset",
            "mri-01",
            "--kind",
            "shell",
            "--text",
            "calibration-42"
        ])
        .as_array()
        .unwrap()
        .len(),
        1
    );

    // A running session that keeps printing.
    let (mut running, running_shown) = typed_shell(
        &b,
        &alice,
        &["for i in $(seq 1 600); do echo tick-$i; sleep 0.2; done"],
    );
    let mut live = String::new();
    assert!(crate::support::bastion::wait_until(
        std::time::Duration::from_secs(10),
        || {
            let found = list(&["--ended", "live"]);
            match found.as_array().and_then(|a| a.first()) {
                Some(s) => {
                    live = s["id"].as_str().unwrap().to_owned();
                    true
                }
                None => false,
            }
        }
    ));

    let audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    let code = audrey.next_code();
    // An approver ends the running session from its live view.
    let bob = crate::support::web::Approver::enroll(&b, "bob", "approver");
    let bob_code = bob.next_code();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots");
    let bundle = b.data.path().join("downloaded.tar");
    let out = Command::new("timeout")
        .args(["180", "node"])
        .arg(e2e_dir().join("audit.mjs"))
        .env("BASE_URL", crate::support::web::base(&b))
        .env("CERT", b.data.path().join("web_cert.pem"))
        .env("SHOTS", &shots)
        .env("NAME", "audrey")
        .env("PASSWORD", "correct horse battery staple")
        .env("CODE", &code)
        .env("WORD", "calibration-42")
        .env("COMMAND", "echo calibration")
        .env("SESSION", &recorded)
        .env("LIVE", &live)
        .env("APPROVER", "bob")
        .env("APPROVER_CODE", &bob_code)
        .env("TERMINATE_REASON", "INC-9 wrong scanner")
        .env("BUNDLE", &bundle)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    // The terminated session's ssh ends on its own, told why.
    let ended = crate::support::bastion::wait_until(std::time::Duration::from_secs(30), || {
        running.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = running.kill();
    }
    let _ = running.wait();
    let shown = {
        let mut all = String::from_utf8_lossy(&running_shown.lock().unwrap()).into_owned();
        if let Some(mut err) = running.stderr.take() {
            use std::io::Read as _;
            let _ = err.read_to_string(&mut all);
        }
        all
    };
    assert_eq!(
        code,
        0,
        "browser run failed\n{stdout}\n{stderr}\n{}",
        b.log()
    );
    assert!(ended, "the terminated session's ssh kept running\n{shown}");
    assert!(
        shown.contains("session terminated by bob: INC-9 wrong scanner"),
        "the vendor was not told why: {shown}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["integrity"], "intact", "{seen}");
    // The bundle the browser downloaded verifies with the stock tools, and stops verifying when one
    // byte of the recording changes (sha256sum -c), or when SHA256SUMS is rewritten to match that
    // change too (ssh-keygen -Y verify).
    assert_eq!(seen["bundle"], format!("session-{recorded}.tar"), "{seen}");
    let unpacked = crate::evidence::untar(&bundle, &b.data.path().join("good"), &recorded);
    let signer = b.data.run(&["evidence", "signer"]).ok().stdout();
    std::fs::write(unpacked.join("allowed_signers"), &signer).unwrap();
    let verify_sig = chaperone::evidence::bundle::VERIFY_SIGNATURE;
    let verify_sums = chaperone::evidence::bundle::VERIFY_SUMS;
    let (ok, out) = crate::evidence::sh(&unpacked, verify_sig);
    assert!(
        ok && out.contains("Good \"chaperone-evidence\" signature"),
        "ssh-keygen -Y verify: {out}"
    );
    let (ok, out) = crate::evidence::sh(&unpacked, verify_sums);
    assert!(ok, "sha256sum -c: {out}");
    let cast = std::fs::read_dir(unpacked.join("recordings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cast"))
        .expect("a .cast in the bundle");
    let mut bytes = std::fs::read(&cast).unwrap();
    let at = bytes
        .windows(14)
        .position(|w| w == b"calibration-42")
        .unwrap();
    bytes[at + 13] = b'7';
    std::fs::write(&cast, &bytes).unwrap();
    let (ok, out) = crate::evidence::sh(&unpacked, verify_sums);
    assert!(
        !ok && out.contains("FAILED"),
        "sha256sum -c accepted an altered recording: {out}"
    );
    let forged = chaperone_recorder::sha256_file(&cast).unwrap();
    let sums = std::fs::read_to_string(unpacked.join("SHA256SUMS")).unwrap();
    let name = format!("recordings/{}", cast.file_name().unwrap().to_str().unwrap());
    let rewritten: String = sums
        .lines()
        .map(|l| {
            if l.ends_with(&name) {
                format!("{forged}  {name}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(rewritten, sums);
    std::fs::write(unpacked.join("SHA256SUMS"), rewritten).unwrap();
    let (ok, out) = crate::evidence::sh(&unpacked, verify_sums);
    assert!(ok, "{out}");
    let (ok, out) = crate::evidence::sh(&unpacked, verify_sig);
    assert!(
        !ok,
        "ssh-keygen -Y verify accepted a rewritten SHA256SUMS: {out}"
    );

    for shot in [
        "history",
        "session-playing",
        "session-search",
        "live",
        "live-terminated",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).is_file(),
            "no screenshot {shot}"
        );
    }
    // Who looked at what is on record.
    let audit = b
        .data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    assert!(
        audit.lines().any(|l| l.contains("\"session.terminate\"")
            && l.contains("staff:bob")
            && l.contains("INC-9 wrong scanner")
            && l.contains(&live)),
        "no session.terminate by bob with his reason in\n{audit}"
    );
    for action in [
        "recording.search",
        "recording.view",
        "session.watch",
        "evidence.export",
    ] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(&format!("\"{action}\"")) && l.contains("staff:audrey")),
            "no {action} by audrey in\n{audit}"
        );
    }
}

/// A TCP peer on loopback that holds every connection open, echoing what it gets (the device's DICOM
/// port); returns its port.
fn holding_peer() -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Issue 15, in Chromium with JavaScript on (`tests/e2e/approver.mjs`): an auditor enrolls by scanning
/// the QR code (zbarimg decodes a screenshot of it to the page's otpauth URI); an approver sees how long
/// requests have waited, when they lapse and the vendor's sessions; approves one as asked (its notice
/// survives the live refresh another tab's decision causes), narrows one and denies one, and finds all
/// three on the Decisions page with who and why; revoking and terminating ask first on a page of their
/// own, and a revoke without a reason is refused; the live list shows the vendor's logins (one holding
/// an exec and a tunnel, one idle `ssh -N -L`); an auditor's pages have no Action column. Screenshots of
/// every page at 1280 and 390 px land in `target/e2e-screenshots/`.
#[test]
fn issue_15_an_approver_decides_in_context_and_is_asked_before_revoking_or_terminating() {
    if browser_parts().is_none() {
        return;
    }
    if !Command::new("zbarimg")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        missing("zbarimg (Debian zbar-tools)");
        return;
    }
    let Some(sshd) = Sshd::start() else {
        return;
    };
    use crate::support::bastion::wait_until;
    use std::time::Duration;
    let dicom = holding_peer();
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &[&format!("dicom:{dicom}/tcp")]);
    let alice = b.vendor("alice", "Acme Imaging");
    let dan = b.vendor("dan", "Contoso Medical");
    b.grant("alice", "mri-01", "ssh,dicom", "1h");

    // alice's logins: one running a command and holding a forward with a connection open through it,
    // one holding a forward and nothing else (`ssh -N -L`).
    let (l1, l2) = (crate::support::free_port(), crate::support::free_port());
    let mut working = b
        .ssh_with(
            &alice,
            &["-L", &format!("{l1}:mri-01:{dicom}")],
            "alice+mri-01",
        )
        .arg("echo started; sleep 150")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A vendor's logins one at a time: each takes a newer TOTP step, and one that arrives after a newer
    // one was accepted is refused as a replay.
    let signed_in = |vendor: &str, n: usize| {
        assert!(
            wait_until(Duration::from_secs(20), || b
                .log()
                .matches(&format!("vendor signed in vendor={vendor} "))
                .count()
                >= n),
            "{vendor} did not sign in\n{}",
            b.log()
        );
    };
    signed_in("alice", 1);
    let mut idle = b
        .ssh_with(
            &alice,
            &["-N", "-L", &format!("{l2}:mri-01:{dicom}")],
            "alice",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    signed_in("alice", 2);
    let mut tunnel_conn = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            tunnel_conn = std::net::TcpStream::connect(("127.0.0.1", l1)).ok();
            tunnel_conn.is_some()
        }),
        "the forward never listened\n{}",
        b.log()
    );
    {
        use std::io::{Read as _, Write as _};
        let conn = tunnel_conn.as_mut().unwrap();
        conn.write_all(b"C-ECHO\n").unwrap();
        let mut back = [0u8; 7];
        conn.read_exact(&mut back).unwrap();
    }
    let live = |kind: &str| -> Option<String> {
        let list = b
            .data
            .run(&[
                "session", "list", "--json", "--ended", "live", "--kind", kind,
            ])
            .ok()
            .json();
        list.as_array()
            .and_then(|a| a.first())
            .map(|s| s["id"].as_str().unwrap().to_owned())
    };
    let (mut exec_id, mut tunnel_id) = (None, None);
    assert!(
        wait_until(Duration::from_secs(20), || {
            exec_id = live("exec");
            tunnel_id = live("tunnel");
            exec_id.is_some() && tunnel_id.is_some()
        }),
        "no live exec and tunnel\n{}",
        b.log()
    );

    // Requests waiting on real `ssh … request`s: alice's (approved as asked), dan's (narrowed, denied).
    let ask = |v: &crate::support::bastion::Vendor, words: &str| {
        b.ssh(v, &v.name)
            .arg(format!("request {words}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let bob = crate::support::web::Approver::enroll(&b, "bob", "approver");
    let pending = || -> Vec<(String, i64)> {
        bob.get("/api/requests")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["reason"].as_str().unwrap().to_owned(),
                    r["id"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let asked = ask(
        &alice,
        "mri-01 ssh,dicom --for 2h --reason INC-1 detector check",
    );
    let narrow = ask(
        &dan,
        "mri-01 ssh,dicom --for 2h --reason INC-2 firmware update",
    );
    signed_in("dan", 1);
    let deny = ask(&dan, "mri-01 ssh --for 1h --reason INC-3 log collection");
    assert!(
        wait_until(Duration::from_secs(30), || pending().len() == 3),
        "{:?}\n{}",
        pending(),
        b.log()
    );
    let id_of = |prefix: &str| {
        pending()
            .into_iter()
            .find(|(reason, _)| reason.starts_with(prefix))
            .unwrap()
            .1
            .to_string()
    };
    let (asked_id, narrow_id, deny_id) = (id_of("INC-1"), id_of("INC-2"), id_of("INC-3"));

    let erin = crate::support::web::enrollment_token(&b, "erin", "auditor");
    let base = crate::support::web::base(&b);
    let bob_code = bob.next_code();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots/issue15");
    let out = Command::new("timeout")
        .args(["240", "node"])
        .arg(e2e_dir().join("approver.mjs"))
        .env("BASE_URL", &base)
        .env("CERT", b.data.path().join("web_cert.pem"))
        .env("SHOTS", &shots)
        .env("PASSWORD", crate::support::web::PASSWORD)
        .env("APPROVER", "bob")
        .env("APPROVER_CODE", &bob_code)
        .env("AUDITOR", "erin")
        .env("AUDITOR_ENROLL_URL", format!("{base}/enroll/{erin}"))
        .env("ASKED", &asked_id)
        .env("NARROW", &narrow_id)
        .env("DENY", &deny_id)
        .env("LIVE", exec_id.as_deref().unwrap())
        .env("TUNNEL", tunnel_id.as_deref().unwrap())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    let _ = idle.kill();
    let _ = idle.wait();
    drop(tunnel_conn);
    let terminated = wait_until(Duration::from_secs(20), || {
        working.try_wait().unwrap().is_some()
    });
    if !terminated {
        let _ = working.kill();
    }
    let working_err = {
        use std::io::Read as _;
        let mut all = String::new();
        if let Some(mut out) = working.stdout.take() {
            let _ = out.read_to_string(&mut all);
        }
        if let Some(mut err) = working.stderr.take() {
            let _ = err.read_to_string(&mut all);
        }
        let _ = working.wait();
        all
    };
    assert_eq!(
        code,
        0,
        "browser run failed\n{stdout}\n{stderr}\n{}",
        b.log()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        seen["notice_after_refresh"]
            .as_str()
            .unwrap()
            .contains(&format!("Request #{asked_id}: approved")),
        "{seen}"
    );
    assert!(
        seen["revoke_refused"]
            .as_str()
            .unwrap()
            .contains("needs a reason"),
        "{seen}"
    );
    assert!(seen["logins"].as_i64().unwrap() >= 2, "{seen}");
    assert!(terminated, "the terminated session's ssh kept running");
    assert!(
        working_err.contains("session terminated by bob: wrong device"),
        "{working_err}"
    );
    // The waiting ssh requests were released as decided.
    assert_eq!(text(&asked.wait_with_output().unwrap()).2, 0);
    assert_eq!(text(&narrow.wait_with_output().unwrap()).2, 0);
    let (_, denied_err, denied_code) = text(&deny.wait_with_output().unwrap());
    assert_eq!(denied_code, 1);
    assert!(
        denied_err.contains("use the Sunday <maintenance> window"),
        "{denied_err}"
    );
    for page in [
        "enroll",
        "login",
        "requests",
        "approved",
        "decisions",
        "grants",
        "revoke-confirm",
        "revoke-refused",
        "sessions",
        "terminate-confirm",
        "account",
        "history",
        "grants-auditor",
        "sessions-auditor",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
    for page in [
        "enroll",
        "login",
        "requests-pending",
        "requests",
        "decisions",
        "grants",
        "revoke-confirm",
        "sessions",
        "terminate-confirm",
        "account",
        "history",
        "grants-auditor",
        "sessions-auditor",
    ] {
        assert!(
            shots.join(format!("{page}-phone.png")).is_file(),
            "no phone screenshot of {page}"
        );
    }
}

/// A vendor adds a passkey from ssh and signs in with it, each time through the link their real `ssh`
/// prints, opened in Chromium with a virtual authenticator (`tests/e2e/vendor-passkey.mjs`): the page's
/// own script runs both ceremonies, and ssh carries on when they end.
#[test]
fn a_vendor_adds_a_passkey_and_signs_in_with_it_in_the_browser_while_ssh_waits() {
    use std::io::{BufRead as _, Write as _};

    use crate::passkeys::Waiting;

    if browser_parts().is_none() {
        return;
    }
    let data = DataDir::init();
    data.fix_web_port();
    let b = Bastion::start(data);
    let alice = b.vendor("alice", "Acme Imaging");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-screenshots");
    let mut node = Command::new("timeout")
        .args(["180", "node"])
        .arg(e2e_dir().join("vendor-passkey.mjs"))
        .env("CERT", b.data.path().join("web_cert.pem"))
        .env("SHOTS", &shots)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut links = node.stdin.take().unwrap();
    let mut verdicts = std::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let mut open_in_browser = move |url: &str| -> serde_json::Value {
        writeln!(links, "{url}").unwrap();
        let line = verdicts
            .next()
            .unwrap_or_else(|| panic!("the browser ended before answering {url}"))
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };

    let mut adding = Waiting::passkey_add(&b, &alice);
    let verdict = open_in_browser(&adding.link());
    assert_eq!(verdict["ok"], true, "{verdict}");
    let (_, err, code) = adding.finish();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("passkey added"), "{err}");

    let mut login = Waiting::login(&b, &alice, "whoami");
    let verdict = open_in_browser(&login.link());
    assert_eq!(verdict["ok"], true, "{verdict}");
    let (out, err, code) = login.finish();
    assert_eq!(code, 0, "{out}\n{err}\n{}", b.log());
    assert!(out.contains("signed in as alice"), "{out}\n{err}");

    drop(open_in_browser);
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shots.join("vendor-link-2-done.png").is_file());
}
