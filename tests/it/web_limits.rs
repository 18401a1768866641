//! Issue 12, the web page against impolite clients: staff lockout per account and source address (no
//! locking an approver out from elsewhere, and no telling locked, unknown and wrong apart), background
//! refresh that does not keep a session alive, and the listener's time-outs and connection caps, driven
//! with curl and raw TCP/TLS clients from several loopback addresses.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::DataDir;
use crate::support::bastion::{Bastion, wait_until};
use crate::support::web::{
    Answer, Approver, PASSWORD, base, configure_web, curl, from, tcp_from, tls_from,
};

/// The audit log as `{"action", "detail"}` objects (the detail parsed from the text that was hashed).
fn audit(b: &Bastion) -> Vec<serde_json::Value> {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            let detail: serde_json::Value =
                serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
            serde_json::json!({"action": row["action"], "detail": detail})
        })
        .collect()
}

/// The form sign-in (`POST /login`) from `source`, timed.
fn form_login(
    b: &Bastion,
    source: &str,
    name: &str,
    password: &str,
    code: &str,
) -> (Answer, Duration) {
    let started = Instant::now();
    let mut args = from(Some(source));
    let (n, p, c) = (
        format!("name={name}"),
        format!("password={password}"),
        format!("code={code}"),
    );
    args.extend([
        "--data-urlencode",
        &n,
        "--data-urlencode",
        &p,
        "--data-urlencode",
        &c,
    ]);
    let url = format!("{}/login", base(b));
    args.push(&url);
    let answer = curl(None, &args);
    (answer, started.elapsed())
}

/// Five wrong passwords for bob from 127.0.0.2 refuse bob from there, even with the right password and
/// code, but not from 127.0.0.1; and every refusal (unknown name, wrong password, wrong code, locked)
/// looks the same to the client, on the form and on the API, in comparable time.
#[test]
fn wrong_passwords_from_one_address_do_not_lock_the_account_from_another() {
    let b = Bastion::start(DataDir::init());
    let mut bob = Approver::enroll(&b, "bob", "approver");
    let attacker = Some("127.0.0.2");

    // One refusal for every reason, each from a fresh address so nothing is locked yet.
    let (unknown, t_unknown) = form_login(&b, "127.0.0.3", "nobody", PASSWORD, "123456");
    let (wrong, t_wrong) = form_login(&b, "127.0.0.4", "bob", "not the password", "123456");
    let (wrong_code, t_code) = form_login(&b, "127.0.0.5", "bob", PASSWORD, "000000");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    for (what, answer) in [("unknown name", &unknown), ("wrong code", &wrong_code)] {
        assert_eq!(answer.status, wrong.status, "{what}: {}", answer.body);
        assert_eq!(answer.body, wrong.body, "{what}");
    }

    // Four more wrong passwords from the attacker's address (two on the form, three on the API: one rule).
    for _ in 0..2 {
        let (a, _) = form_login(&b, "127.0.0.2", "bob", "guess", "123456");
        assert_eq!(a.status, 401, "{}", a.body);
    }
    bob.source(attacker);
    let mut api_wrong = None;
    for _ in 0..3 {
        let a = bob.try_login("guess", "123456");
        assert_eq!(a.status, 401, "{}", a.body);
        api_wrong = Some(a);
    }
    let api_wrong = api_wrong.unwrap();

    // Now bob is locked from 127.0.0.2: the right password and code get the same answer as a wrong one.
    // (The code is taken before the clock starts: the next unused code can mean waiting for a step.)
    let code = bob.next_code();
    let started = Instant::now();
    let locked = bob.try_login(PASSWORD, &code);
    let t_locked_api = started.elapsed();
    assert_eq!(locked.status, api_wrong.status, "{}", locked.body);
    assert_eq!(locked.body, api_wrong.body);
    let (locked_form, t_locked) = form_login(&b, "127.0.0.2", "bob", PASSWORD, &bob.next_code());
    assert_eq!(locked_form.status, wrong.status, "{}", locked_form.body);
    assert_eq!(locked_form.body, wrong.body);

    // Every refusal is held to the same floor, whatever was wrong. (Only the floor is asserted: it is
    // the server's rule; how far past it a loaded machine answers is not.)
    for (what, t) in [
        ("unknown", t_unknown),
        ("wrong password", t_wrong),
        ("wrong code", t_code),
        ("locked (form)", t_locked),
        ("locked (api)", t_locked_api),
    ] {
        assert!(t >= Duration::from_millis(900), "{what} took {t:?}");
    }

    // From bob's own address the right password and code still sign him in.
    bob.source(None);
    bob.login();
    assert_eq!(bob.get("/api/requests").status, 200);

    // The audit log has the failures with their source, the lock, and the refused right password.
    let events = audit(&b);
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "staff.signin.failed" && e["detail"]["source"] == "127.0.0.2")
        .collect();
    assert!(
        failed
            .iter()
            .any(|e| e["detail"]["locked"] == true && e["detail"]["why"] == "wrong password"),
        "{failed:#?}"
    );
    assert!(
        failed
            .iter()
            .any(|e| e["detail"]["why"] == "locked" && e["detail"]["password_ok"] == true),
        "the right password refused while locked is audited: {failed:#?}"
    );
    assert!(
        events.iter().any(|e| e["action"] == "staff.signin.failed"
            && e["detail"]["source"] == "127.0.0.5"
            && e["detail"]["why"] == "wrong or reused TOTP code"),
        "wrong code audited"
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "staff.signin" && e["detail"]["source"] == "127.0.0.1"),
        "sign-in audited with its source"
    );
}

/// The lockout lives in the database: failures from 127.0.0.2 spread over two nodes (PostgreSQL) lock
/// bob from 127.0.0.2 on both, and neither node refuses him from 127.0.0.1.
#[test]
fn the_lockout_holds_on_every_node() {
    let Some((a, b, _, _)) = crate::nodes::two_nodes() else {
        return;
    };
    let mut bob = Approver::enroll(&a, "bob", "approver");
    bob.source(Some("127.0.0.2"));
    for i in 0..5 {
        bob.via(if i % 2 == 0 { &a } else { &b });
        assert_eq!(bob.try_login("guess", "123456").status, 401);
    }
    for node in [&a, &b] {
        bob.via(node);
        let answer = bob.try_login(PASSWORD, &bob.next_code());
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    bob.source(None);
    bob.via(&b);
    bob.login();
    assert_eq!(bob.get("/api/requests").status, 200);
}

/// With a 5 s idle time-out, a session that only the page's live refresh uses (marked background
/// requests, the change stream) is signed out, and its open change stream ends; a session a person
/// uses stays signed in.
#[test]
fn background_refresh_does_not_postpone_the_idle_sign_out() {
    let data = DataDir::init();
    configure_web(&data, &[("idle_timeout", "\"5s\"")]);
    let b = Bastion::start(data);
    let idle = Approver::enroll(&b, "bob", "approver");
    let busy = Approver::enroll(&b, "carol", "approver");
    assert_eq!(idle.get_background("/requests").status, 200);

    // Change streams held open by both "tabs", as EventSource does.
    let stream_of = |name: &str| {
        Command::new("curl")
            .args(["-sk", "-N", "--max-time", "40", "-b"])
            .arg(b.data.path().join(format!("jar-{name}")))
            .arg(format!("{}/events", base(&b)))
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut stream = stream_of("bob");
    let mut busy_stream = stream_of("carol");
    let stream_started = Instant::now();

    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(11) {
        // Carol clicking around, and bob's tab refreshing itself.
        let answer = busy.get("/api/requests");
        assert_eq!(answer.status, 200, "carol was signed out");
        idle.get_background("/requests");
        idle.get_background("/api/requests");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Carol's stream outlives the header read and keep-alive time-outs (a response in flight).
    assert!(
        busy_stream.try_wait().unwrap().is_none(),
        "carol's change stream was cut"
    );
    let _ = busy_stream.kill();
    let _ = busy_stream.wait();
    let gone = idle.get("/api/requests");
    assert_eq!(
        gone.status, 401,
        "bob's idle session survived: {}",
        gone.body
    );
    // The refresh is told plainly (the script then goes to the sign-in page), not redirected.
    assert_eq!(idle.get_background("/requests").status, 401);
    assert_eq!(busy.get("/api/requests").status, 200);

    // The open change stream ends once the session is gone (checked every 2.5 s here).
    assert!(
        wait_until(Duration::from_secs(15), || stream
            .try_wait()
            .unwrap()
            .is_some()),
        "the change stream outlived the session"
    );
    assert!(stream_started.elapsed() < Duration::from_secs(38));
}

/// Whether the server has closed `s`: a read gives EOF or an error (not a time-out) within `within`.
fn closed_within(s: &mut impl Read, tcp: &TcpStream, within: Duration) -> bool {
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A response (a 408, say) before the close counts as the end too.
            Ok(_) => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= until {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

/// Trickles `lines` (one per 500 ms) until the server closes the connection; how long that took.
fn trickle<S: Read + Write>(
    s: &mut S,
    tcp: &TcpStream,
    line: &[u8],
    give_up: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if s.write_all(line).and_then(|()| s.flush()).is_err() {
            return started.elapsed();
        }
        if closed_within(s, tcp, Duration::from_millis(500)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < give_up,
            "still served after trickling for {:?}",
            started.elapsed()
        );
    }
}

/// A client that trickles its request head (or body) is cut once the header read time-out has passed,
/// on a fresh connection and on a kept-alive one; an idle kept-alive connection is closed after the
/// keep-alive time-out.
#[test]
fn slow_clients_are_cut_at_the_time_outs() {
    let data = DataDir::init();
    configure_web(
        &data,
        &[
            ("header_read_timeout", "\"6s\""),
            ("keepalive_timeout", "\"2s\""),
        ],
    );
    let b = Bastion::start(data);
    let port = b.web_port;

    // A head trickled from the start of a connection.
    let mut s = tls_from("127.0.0.1", port).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let tcp = s.sock.try_clone().unwrap();
    let took = trickle(&mut s, &tcp, b"X-Slow: 1\r\n", Duration::from_secs(25));
    assert!(took < Duration::from_secs(12), "cut after {took:?}");

    // A kept-alive connection: one whole request, then the next head trickled.
    let mut s = tls_from("127.0.0.1", port).unwrap();
    let tcp = s.sock.try_clone().unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = [0u8; 1024];
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = s.read(&mut response).unwrap();
    assert!(
        response[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response[..n])
    );
    std::thread::sleep(Duration::from_secs(1));
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let took = trickle(&mut s, &tcp, b"X-Slow: 1\r\n", Duration::from_secs(25));
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "the second head was cut after {took:?}"
    );

    // An idle kept-alive connection goes after the keep-alive time-out, well before the head one.
    let mut s = tls_from("127.0.0.1", port).unwrap();
    let tcp = s.sock.try_clone().unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let n = s.read(&mut response).unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    assert!(closed_within(&mut s, &tcp, Duration::from_secs(10)));
    let took = idle.elapsed();
    assert!(
        took < Duration::from_millis(5500),
        "idle connection kept for {took:?}"
    );

    // A body trickled after its head: refused with 408 once the time-out has passed.
    let mut s = tls_from("127.0.0.1", port).unwrap();
    let tcp = s.sock.try_clone().unwrap();
    s.write_all(
        b"POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{",
    )
    .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while started.elapsed() < Duration::from_secs(25) {
        let _ = s.write_all(b" ");
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let took = started.elapsed();
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "after {took:?}: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(took < Duration::from_secs(12), "body cut after {took:?}");

    // The listener still serves.
    assert_eq!(curl(None, &[&format!("{}/healthz", base(&b))]).status, 200);
}

/// Connections past the per-address cap are closed at once while other addresses are served; a flood
/// that fills the listener from several addresses shuts out a newcomer only until the flood's idle
/// connections time out, and then the newcomer signs in.
#[test]
fn connections_past_the_caps_are_closed_and_sign_in_works_after_a_flood() {
    let data = DataDir::init();
    configure_web(
        &data,
        &[
            ("max_connections", "6"),
            ("max_connections_per_address", "3"),
            // Long enough for the flood to be in place before its first connections time out.
            // (CI saw 12 s run out on a loaded machine before the newcomer knocked.)
            ("header_read_timeout", "\"30s\""),
            ("keepalive_timeout", "\"30s\""),
        ],
    );
    let b = Bastion::start(data);
    let port = b.web_port;
    let mut bob = Approver::enroll(&b, "bob", "approver");

    let open = |source: &str| -> TcpStream { tcp_from(source, port).unwrap() };
    // A connection past a cap is closed at once, but "at once" on a loaded 2-core machine can take a few
    // hundred milliseconds: give it a second before calling it open.
    let is_open = |s: &mut TcpStream| {
        let tcp = s.try_clone().unwrap();
        !closed_within(s, &tcp, Duration::from_millis(1000))
    };

    // Three idle connections from 127.0.0.5 fill its share; a fourth is closed at once. An address no
    // earlier request used: bob's enrollment came from 127.0.0.1, and on a loaded machine the server may
    // not have seen its last connection end yet, so one of three from there was refused and the fourth
    // then kept (CI saw "a connection past the per-address cap was kept").
    let first_opened = Instant::now();
    let mut mine: Vec<_> = (0..3).map(|_| open("127.0.0.5")).collect();
    let mut fourth = open("127.0.0.5");
    let tcp = fourth.try_clone().unwrap();
    assert!(
        closed_within(&mut fourth, &tcp, Duration::from_millis(3000)),
        "a connection past the per-address cap was kept"
    );
    assert!(is_open(&mut mine[0]), "the first ones are still served");
    // Another address is not affected (bob is still signed in from his enrollment; no new TOTP code,
    // which could mean waiting for the next time step while the idle connections time out).
    bob.source(Some("127.0.0.2"));
    assert_eq!(bob.get("/api/requests").status, 200);

    // Fill the listener: three more from 127.0.0.3. A connection the client sees as open may still sit
    // in the kernel's accept queue, and bob's connection from 127.0.0.2 keeps its place until the server
    // has seen it end, so on a loaded machine a flood connection can be refused late (and bob's place
    // then goes to the newcomer: CI saw that). The server accepts in order, so a sentinel connection
    // from 127.0.0.3 that the server has closed proves every flood connection before it was accepted
    // or refused; a refused one is replaced, until all three hold places: then the listener is full
    // (3 + 3), since with bob's place still held one of them would have been refused.
    let still_open = |s: &mut TcpStream| {
        let tcp = s.try_clone().unwrap();
        !closed_within(s, &tcp, Duration::from_millis(100))
    };
    let mut flood: Vec<TcpStream> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            flood.retain_mut(still_open);
            while flood.len() < 3 {
                flood.push(open("127.0.0.3"));
            }
            let mut sentinel = open("127.0.0.3");
            let tcp = sentinel.try_clone().unwrap();
            if !closed_within(&mut sentinel, &tcp, Duration::from_secs(3)) {
                // It got a place, so one before it was refused (found closed next round).
                flood.push(sentinel);
                return false;
            }
            flood.iter_mut().all(still_open)
        }),
        "the flood did not settle into the listener's places"
    );
    assert_eq!(flood.len(), 3, "more flood connections than places");
    mine.extend(flood);
    // A newcomer is turned away while the flood holds every place…
    bob.source(Some("127.0.0.4"));
    let status = bob.get("/api/requests").status;
    let setup = first_opened.elapsed();
    assert!(
        setup < Duration::from_secs(28),
        "the flood took {setup:?} to set up: its first connections may have timed out already"
    );
    assert_eq!(status, 0, "served past the cap");
    // …and gets in once the flood's idle connections have timed out.
    let flood_started = Instant::now();
    for s in &mut mine {
        let tcp = s.try_clone().unwrap();
        assert!(
            closed_within(s, &tcp, Duration::from_secs(30)),
            "an idle flood connection was kept"
        );
    }
    assert!(flood_started.elapsed() < Duration::from_secs(30));
    bob.login();
    assert_eq!(bob.get("/api/requests").status, 200);
}

/// Login CSRF: a form posted to `/login` from another site (the browser says `Sec-Fetch-Site:
/// cross-site`) signs nobody in, even with the right password and code; the same post from the page
/// itself does.
#[test]
fn a_sign_in_posted_from_another_site_is_refused() {
    let b = Bastion::start(DataDir::init());
    let erin = Approver::enroll(&b, "erin", "approver");
    // A refused post never reaches the code's check: only the one that signs in spends a fresh code.
    let post = |header: &str, code: String| {
        curl(
            None,
            &[
                "-H",
                header,
                "--data-urlencode",
                "name=erin",
                "--data-urlencode",
                &format!("password={PASSWORD}"),
                "--data-urlencode",
                &format!("code={code}"),
                &format!("{}/login", base(&b)),
            ],
        )
    };
    let refused = post("Sec-Fetch-Site: cross-site", "000000".into());
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("own page"), "{}", refused.body);
    // A browser without Sec-Fetch-Site (Safari before 16.4) is judged by its Origin.
    let refused = post("Origin: https://evil.example", "000000".into());
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("own page"), "{}", refused.body);
    let signed_in = post(&format!("Origin: {}", base(&b)), erin.next_code());
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location, format!("{}/requests", base(&b)));
}

/// A sibling host's page (`wiki.hospital.example` beside the bastion: browsers send the `SameSite=Strict`
/// cookie to requests it makes) cannot have a signed-in auditor's browser search in their name: an
/// embedded request (an image, a fetch, a frame) is answered as signed out and audits nothing; the page
/// itself, a bookmark, and a link followed from the sibling still work.
#[test]
fn a_request_another_site_makes_the_browser_send_is_answered_as_signed_out() {
    let b = Bastion::start(DataDir::init());
    let erin = Approver::enroll(&b, "erin", "auditor");
    let searches = || {
        audit(&b)
            .into_iter()
            .filter(|e| e["action"] == "recording.search" && e["detail"]["text"] == "needle")
            .count()
    };
    let fetch = |site: &str, mode: &str, dest: &str| {
        erin.get_with(
            "/api/sessions?text=needle",
            &[
                &format!("Sec-Fetch-Site: {site}"),
                &format!("Sec-Fetch-Mode: {mode}"),
                &format!("Sec-Fetch-Dest: {dest}"),
            ],
        )
    };
    for (site, mode, dest) in [
        ("same-site", "no-cors", "image"),
        ("same-site", "cors", "empty"),
        ("same-site", "navigate", "iframe"),
        ("cross-site", "no-cors", "script"),
    ] {
        let out = fetch(site, mode, dest);
        assert_eq!(out.status, 401, "{site} {mode} {dest}: {}", out.body);
    }
    let page = erin.get_with(
        "/history?text=needle",
        &[
            "Sec-Fetch-Site: same-site",
            "Sec-Fetch-Mode: no-cors",
            "Sec-Fetch-Dest: image",
        ],
    );
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(searches(), 0, "{:?}", audit(&b));
    for (site, mode, dest) in [
        ("same-origin", "cors", "empty"),
        ("none", "navigate", "document"),
        ("same-site", "navigate", "document"),
    ] {
        let out = fetch(site, mode, dest);
        assert_eq!(out.status, 200, "{site} {mode} {dest}: {}", out.body);
    }
    assert_eq!(searches(), 3, "{:?}", audit(&b));
    // curl sends none of these headers: judged as before.
    assert_eq!(erin.get("/api/sessions?text=needle").status, 200);
}

/// alice's terminal session on mri-01 (`ssh -tt`, its input piped), and the session's id once it is live.
fn live_shell(
    b: &Bastion,
    sshd: &crate::support::sshd::Sshd,
) -> (std::process::Child, std::process::ChildStdin, String) {
    b.device("mri-01", sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut shell = b
        .ssh_with(&alice, &["-tt"], "alice+mri-01")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = shell.stdin.take().unwrap();
    (shell, stdin, b.live_session_id())
}

/// audrey (an auditor) watching session `live` with curl: the server-sent events read as they come.
fn watched_by_audrey(
    b: &Bastion,
    live: &str,
) -> (Approver, std::process::Child, std::process::ChildStdout) {
    let audrey = Approver::enroll(b, "audrey", "auditor");
    let mut view = Command::new("curl")
        .args(["-sk", "-N", "--max-time", "60", "-b"])
        .arg(b.data.path().join("jar-audrey"))
        .arg(format!("{}/sessions/{live}/live", base(b)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = view.stdout.take().unwrap();
    (audrey, view, out)
}

/// A live view outlives its request, so the check at its start is not enough: with a 5 s idle
/// time-out, an auditor who opened a running terminal's live view and then left it is signed out, and
/// the view ends with the web session, while the vendor's session goes on.
#[test]
fn a_live_view_ends_with_its_viewers_web_session() {
    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let data = DataDir::init();
    configure_web(&data, &[("idle_timeout", "\"5s\"")]);
    let b = Bastion::start(data);
    let (mut shell, mut stdin, live) = live_shell(&b, &sshd);
    stdin
        .write_all(b"while true; do echo tick; sleep 0.2; done\n")
        .unwrap();
    let (audrey, mut view, mut out) = watched_by_audrey(&b, &live);
    let opened = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("tick") {
        match out.read(&mut buf) {
            Ok(n @ 1..) => seen.extend_from_slice(&buf[..n]),
            _ => panic!(
                "the live view showed nothing: {}\n{}",
                String::from_utf8_lossy(&seen),
                b.log()
            ),
        }
    }
    // The view ends on its own once audrey's session idles out (5 s, checked every 2.5 s).
    while let Ok(n @ 1..) = out.read(&mut buf) {
        seen.extend_from_slice(&buf[..n]);
    }
    let status = view.wait().unwrap();
    assert!(status.success(), "curl: {status:?}");
    assert!(
        opened.elapsed() < Duration::from_secs(20),
        "the live view outlived its viewer's web session by {:?}",
        opened.elapsed()
    );
    assert_eq!(audrey.get("/api/sessions").status, 401);
    assert!(shell.try_wait().unwrap().is_none(), "{}", b.log());
    let _ = shell.kill();
    let _ = shell.wait();
}

/// A live view is given the session's output held to the emulator's budget, as a recording's segments
/// are (`live::view`): a device that fills the whole screen over and over, far more than its output
/// pays for, reaches the watcher's page with most fills cancelled (a CAN for the final character), and
/// what it printed after them whole. Given as sent, the page's own emulator had no bound.
#[test]
fn a_live_view_is_held_to_what_the_session_pays_for() {
    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let b = Bastion::start(DataDir::init());
    let (mut shell, mut stdin, live) = live_shell(&b, &sshd);
    stdin.write_all(b"echo ready-to-fill\n").unwrap();
    let (_audrey, mut view, mut out) = watched_by_audrey(&b, &live);
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    let mut read_until = |seen: &mut Vec<u8>, what: &str| {
        while !String::from_utf8_lossy(seen).contains(what) {
            match out.read(&mut buf) {
                Ok(n @ 1..) => seen.extend_from_slice(&buf[..n]),
                _ => panic!(
                    "the live view ended before {what}: {}\n{}",
                    String::from_utf8_lossy(seen),
                    b.log()
                ),
            }
        }
    };
    read_until(&mut seen, "ready-to-fill");
    let fills = 100_000;
    stdin
        .write_all(
            format!(
                "python3 -c \"import sys; sys.stdout.write('\\x1b#8' * {fills} + 'done-' + 'filling')\"\n"
            )
            .as_bytes(),
        )
        .unwrap();
    seen.clear();
    read_until(&mut seen, "done-filling");
    // The output events' text, joined (a sequence may be split between two).
    let text: String = String::from_utf8_lossy(&seen)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str().map(str::to_owned))
        .collect();
    let given = text.matches("\x1b#8").count();
    let cancelled = text.matches("\x1b#\x18").count();
    assert_eq!(given + cancelled, fills, "{}", &text[..text.len().min(300)]);
    // 100,000 fills of at least 80 x 24 cost ~0.9 s of emulation; the budget pays ~0.2 s of it.
    assert!(
        cancelled > fills / 2,
        "{given} given, {cancelled} cancelled"
    );
    let _ = view.kill();
    let _ = view.wait();
    let _ = shell.kill();
    let _ = shell.wait();
}

/// A page's view of a recording is audited when the page is read, and the page refreshes itself when
/// the change stream says something changed: views alone must not count as a change, or an open
/// session page would refresh, and audit its view again, once a second for as long as it is open.
/// Anything else moving the audit log still reaches the stream.
#[test]
fn a_recordings_view_does_not_make_open_pages_refresh() {
    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("echo hi")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", b.log());
    let sessions = b.data.run(&["session", "list", "--json"]).ok().json();
    let id = sessions[0]["id"].as_str().unwrap().to_owned();

    let audrey = Approver::enroll(&b, "audrey", "auditor");
    let mut stream = Command::new("curl")
        .args(["-sk", "-N", "--max-time", "30", "-b"])
        .arg(b.data.path().join("jar-audrey"))
        .arg(format!("{}/events", base(&b)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = stream.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let views = || {
        audit(&b)
            .iter()
            .filter(|e| e["action"] == "recording.view")
            .count()
    };
    // The page's refresh, as the script makes it: audited, and no change follows.
    assert_eq!(
        audrey.get_background(&format!("/sessions/{id}")).status,
        200
    );
    assert_eq!(views(), 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !seen.lock().unwrap().contains("change"),
        "a view was sent as a change: {}",
        seen.lock().unwrap()
    );
    // A real change is.
    b.grant("alice", "mri-01", "ssh", "2h");
    assert!(
        wait_until(Duration::from_secs(10), || seen
            .lock()
            .unwrap()
            .contains("event: change")),
        "{}",
        seen.lock().unwrap()
    );
    let _ = stream.kill();
    let _ = stream.wait();
}

/// Failures that get past the password count for the whole account too: five wrong codes with bob's
/// right password, each from another address (as from an IPv6 /48's many /64s), lock bob from every
/// address, his own included, so many addresses buy no more guesses at the second factor. (Wrong
/// passwords from many addresses never do: see the test above, where bob signs in after them.)
#[test]
fn wrong_codes_with_the_right_password_lock_the_account_everywhere() {
    let b = Bastion::start(DataDir::init());
    let bob = Approver::enroll(&b, "bob", "approver");
    for n in 21..26 {
        let (a, _) = form_login(&b, &format!("127.0.0.{n}"), "bob", PASSWORD, "000000");
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let answer = bob.try_login(PASSWORD, &bob.next_code());
    assert_eq!(answer.status, 401, "{}", answer.body);
    let failed: Vec<_> = audit(&b)
        .into_iter()
        .filter(|e| e["action"] == "staff.signin.failed")
        .collect();
    assert_eq!(failed.len(), 6, "{failed:#?}");
    assert_eq!(failed[4]["detail"]["everywhere"], true, "{failed:#?}");
    assert_eq!(failed[4]["detail"]["locked"], true, "{failed:#?}");
    assert_eq!(failed[5]["detail"]["why"], "locked", "{failed:#?}");
    assert_eq!(failed[5]["detail"]["source"], "127.0.0.1", "{failed:#?}");
}

/// A web session ends `max_session_age` after its sign-in however busy it is (6 s here), so a cookie
/// taken from a browser, or a session left open on a shared PC and kept busy by someone, does not last.
#[test]
fn a_busy_web_session_ends_at_its_maximum_age() {
    let data = DataDir::init();
    configure_web(&data, &[("max_session_age", "\"6s\"")]);
    let b = Bastion::start(data);
    let bob = Approver::enroll(&b, "bob", "approver");
    let signed_in = Instant::now();
    while signed_in.elapsed() < Duration::from_secs(4) {
        assert_eq!(bob.get("/api/requests").status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        wait_until(Duration::from_secs(10), || bob.get("/api/requests").status
            == 401),
        "a busy session outlived its maximum age"
    );
    // (The sign-in's time is kept in whole seconds, and taken before the answer came back.)
    assert!(signed_in.elapsed() >= Duration::from_secs(4));
}

/// The page asks before it opens a live view, since an `EventSource` cannot read why its stream was
/// refused (the player showed "loading" for ever): `live/check` answers what the view would be
/// refused with, and opens and audits nothing.
#[test]
fn the_page_is_told_why_a_live_view_would_be_refused() {
    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let b = Bastion::start(DataDir::init());
    let (mut shell, mut stdin, live) = live_shell(&b, &sshd);
    stdin.write_all(b"echo watched\n").unwrap();
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    let check = || audrey.get(&format!("/sessions/{live}/live/check"));
    let ok = check();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("\"ok\":true"), "{}", ok.body);

    // audrey's four views, each seen open (its first event read).
    let mut views: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new("curl")
                .args(["-sk", "-N", "--max-time", "60", "-b"])
                .arg(b.data.path().join("jar-audrey"))
                .arg(format!("{}/sessions/{live}/live", base(&b)))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for view in &mut views {
        let mut out = view.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("data:") {
            match out.read(&mut buf) {
                Ok(n @ 1..) => seen.extend_from_slice(&buf[..n]),
                _ => panic!("a view did not open: {}", b.log()),
            }
        }
        view.stdout = Some(out);
    }
    let refused = check();
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        refused.body.contains("you have 4 live views open"),
        "{}",
        refused.body
    );
    let watches = || {
        b.data
            .run(&["audit", "export", "--format", "jsonl"])
            .ok()
            .stdout()
            .lines()
            .filter(|l| l.contains("\"session.watch\""))
            .count()
    };
    assert_eq!(watches(), 4, "a check opened or audited a view");

    // Views closed give their places back; a session ended has none to give.
    for mut view in views {
        let _ = view.kill();
        let _ = view.wait();
    }
    assert!(
        wait_until(Duration::from_secs(10), || check().status == 200),
        "{}",
        b.log()
    );
    let _ = shell.kill();
    let _ = shell.wait();
    assert!(
        wait_until(Duration::from_secs(10), || check().status == 409),
        "{}",
        b.log()
    );
    assert!(check().body.contains("has ended"));
    assert_eq!(watches(), 4);
}

/// The change stream holds a connection for as long as its session lasts: one person (or a script with
/// their cookie) may hold 8 at once on a node, not every connection the node has. A ninth is refused
/// (429) while the others stream; one closed gives its place back.
#[test]
fn one_person_holds_at_most_eight_change_streams() {
    let b = Bastion::start(DataDir::init());
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    let carl = Approver::enroll(&b, "carl", "auditor");
    let mut open: Vec<_> = (0..8)
        .map(|_| {
            let (running, status) = audrey.get_slowly("/events");
            assert_eq!(status, 200);
            running
        })
        .collect();
    let (_refused, status) = audrey.get_slowly("/events");
    assert_eq!(status, 429);
    // Another person is not held back by hers.
    let (_carls, status) = carl.get_slowly("/events");
    assert_eq!(status, 200);
    drop(open.pop());
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_again, status) = audrey.get_slowly("/events");
            status == 200
        }),
        "{}",
        b.log()
    );
}
