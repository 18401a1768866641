//! Port-scoped tunnels end to end: real `ssh -L`, `ssh -W`, `ssh -J` through `chaperone serve` to TCP
//! services and a real `sshd`; DICOM and HL7 peers when their Python tools are installed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::{DataDir, free_port, missing, webhook};

/// A TCP server on loopback answering every connection with `serve`; returns its port.
fn tcp_server(serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

/// Echoes until the client half-closes, then closes.
fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Streams data slowly for up to 60 s (a transfer that outlives a grant).
fn trickle(mut s: TcpStream) {
    let chunk = [b'x'; 8192];
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until && s.write_all(&chunk).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends 2 MB and closes.
fn blob(mut s: TcpStream) {
    let _ = s.write_all(&vec![7u8; 2_000_000]);
}

fn setup(extra: &[String], config_extra: &str) -> Option<(Sshd, Bastion)> {
    let sshd = Sshd::start()?;
    let data = DataDir::init();
    if !config_extra.is_empty() {
        let mut text = std::fs::read_to_string(data.config()).unwrap();
        text.push_str(config_extra);
        std::fs::write(data.config(), text).unwrap();
    }
    let bastion = Bastion::start(data);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    bastion.device("mri-01", &sshd, &extra);
    Some((sshd, bastion))
}

fn sessions(b: &Bastion) -> serde_json::Value {
    b.data.run(&["session", "list", "--json"]).ok().json()
}

fn audit(b: &Bastion) -> String {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
}

#[test]
fn w_reaches_a_granted_port_and_nothing_else() {
    let echo_port = tcp_server(echo);
    let other_port = tcp_server(echo);
    let Some((_sshd, b)) = setup(
        &[
            format!("echo:{echo_port}/tcp"),
            format!("other:{other_port}/tcp"),
        ],
        "",
    ) else {
        return;
    };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "echo", "1h");

    let mut ssh = b
        .ssh_with(&alice, &["-W", &format!("mri-01:{echo_port}")], "alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ssh.stdin
        .take()
        .unwrap()
        .write_all(b"MSH|^~\\&|ping\r")
        .unwrap();
    let out = ssh.wait_with_output().unwrap();
    let (stdout, stderr, _) = text(&out);
    assert_eq!(stdout, "MSH|^~\\&|ping\r", "{stderr}\n{}", b.log());

    // By address too.
    let out = b
        .ssh_with(&alice, &["-W", &format!("127.0.0.1:{echo_port}")], "alice")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    // A port of the same asset that the grant does not name.
    let out = b
        .ssh_with(&alice, &["-W", &format!("mri-01:{other_port}")], "alice")
        .output()
        .unwrap();
    let (_, stderr, code) = text(&out);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("open failed: administratively prohibited: no active grant for mri-01:{other_port} - request it with: ssh -p ")),
        "{stderr}"
    );
    let records = sessions(&b);
    let tunnel = records
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "tunnel")
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .as_array()
        .unwrap()
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    assert_eq!(tunnel["service"], "echo");
    let all = sessions(&b);
    let sent = "MSH|^~\\&|ping\r".len();
    let first = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "tunnel")
        .find(|s| s["bytes_up"] == sent)
        .unwrap();
    assert_eq!(first["bytes_down"], sent);
    let audit = audit(&b);
    assert!(
        audit.contains("\"tunnel.open\"")
            && audit.contains("\"tunnel.close\"")
            && audit.contains("\"tunnel.refused\"")
    );
    // A tunnel's row is its whole record: rewritten to name another destination, it reads ALTERED
    // (it has no recording to be judged by).
    let id = first["id"].as_str().unwrap();
    b.data.run(&["session", "verify", id]).fails(1);
    crate::cli::sqlite(
        &b.data.path().join("chaperone.db"),
        &format!("UPDATE sessions SET detail = 'mri-01:1' WHERE id = '{id}'"),
    );
    let verify = b.data.run(&["session", "verify", id]);
    let said = format!("{}{}", verify.fails(1).stdout(), verify.stderr());
    assert!(said.contains("but the session's row says"), "{said}");
    let show = b
        .data
        .run(&["session", "show", id])
        .ok()
        .stdout()
        .to_owned();
    assert!(show.contains("ALTERED"), "{show}");
}

/// An `ssh -N -L` of alice's to a device service `stream` that sends without end (no byte budget), under
/// a grant of `grant_for`, running.
struct Streaming {
    sshd: Sshd,
    b: Bastion,
    ssh: std::process::Child,
    /// The tunnel's local port.
    local: u16,
}

fn streaming_tunnel(grant_for: &str) -> Option<Streaming> {
    let port = tcp_server(trickle);
    let (sshd, b) = setup(
        &[format!("stream:{port}/tcp")],
        "[budgets.services.stream]\nmax_down_per_hour = \"none\"\n",
    )?;
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "stream", grant_for);
    let local = free_port();
    let ssh = b
        .ssh_with(
            &alice,
            &["-N", "-L", &format!("{local}:mri-01:{port}")],
            "alice",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(Streaming {
        sshd,
        b,
        ssh,
        local,
    })
}

#[test]
fn l_tunnel_is_cut_at_expiry_with_its_bytes_recorded() {
    let Some(Streaming {
        sshd: _sshd,
        b,
        mut ssh,
        local,
    }) = streaming_tunnel("6s")
    else {
        return;
    };
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        ("127.0.0.1", local)
    )
    .is_ok_and(|s| {
        drop(s);
        true
    })));
    // That probe opened (and closed) one tunnel; now a long transfer.
    let mut conn = TcpStream::connect(("127.0.0.1", local)).unwrap();
    let started = Instant::now();
    let mut total = 0usize;
    let mut buf = [0u8; 65536];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tunnel outlived its grant"
        );
    }
    assert!(total > 0);
    let _ = ssh.kill();
    let _ = ssh.wait();
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .as_array()
        .unwrap()
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    let all = sessions(&b);
    let long = all
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|s| s["bytes_down"].as_i64().unwrap())
        .unwrap();
    let recorded = long["bytes_down"].as_u64().unwrap();
    assert!(
        recorded >= total as u64,
        "recorded {recorded} < received {total}"
    );
    assert!(
        long["end_reason"].as_str().unwrap().contains("ended"),
        "{long}"
    );
    // Closed within 2 s of the end (the grant ran 6 s from issue; the transfer started after login).
    let ended = long["ended_at"].as_i64().unwrap();
    let grants = b
        .data
        .run(&["grant", "list", "--all", "--json"])
        .ok()
        .json();
    let ends_at = grants[0]["ends_at"].as_i64().unwrap();
    assert!(
        ended - ends_at <= 2,
        "closed {}s after the grant ended",
        ended - ends_at
    );
}

#[test]
fn the_byte_budget_alerts_and_cuts_a_tunnel() {
    let port = tcp_server(blob);
    let receiver = webhook::Receiver::start(&[]);
    let config = format!(
        "[budgets.services.bulk]\nmax_down_per_hour = \"100KB\"\naction = \"cut\"\n{}",
        webhook::config(&receiver.url(), "guard-secret-0123456789", "")
    );
    let Some((_sshd, b)) = setup(&[format!("bulk:{port}/tcp")], &config) else {
        return;
    };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "bulk", "1h");
    let out = b
        .ssh_with(&alice, &["-W", &format!("mri-01:{port}")], "alice")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.len() < 2_000_000, "the whole 2 MB got through");
    assert!(wait_until(Duration::from_secs(5), || audit(&b)
        .contains("\"budget.exceeded\"")));
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .as_array()
        .unwrap()
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    let all = sessions(&b);
    assert!(
        all[0]["end_reason"]
            .as_str()
            .unwrap()
            .contains("cut by the byte budget"),
        "{all}"
    );
    // The alert also reaches the webhook, signed.
    let alert = receiver
        .wait_for("budget.exceeded", 10)
        .unwrap_or_else(|| panic!("no webhook alert: {:?}\n{}", receiver.all(), b.log()));
    assert!(alert.signed_with("guard-secret-0123456789"));
    assert_eq!(
        alert.json()["detail"]["service"],
        "bulk",
        "{}",
        alert.json()
    );
}

#[test]
fn remote_agent_and_socket_forwarding_are_refused_and_audited() {
    let Some((_sshd, b)) = setup(&[], "") else {
        return;
    };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let out = b
        .ssh_with(
            &alice,
            &["-R", "0:127.0.0.1:22", "-o", "ExitOnForwardFailure=yes"],
            "alice",
        )
        .arg("true")
        .output()
        .unwrap();
    let (_, stderr, code) = text(&out);
    assert_ne!(code, 0);
    assert!(stderr.contains("remote port forwarding failed"), "{stderr}");
    // A running agent, or the client would not even ask to forward it.
    let sock = b.data.path().join("agent.sock");
    let mut agent = crate::support::guarded("ssh-agent", &["-D", "-a", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || sock.exists()));
    let out = b
        .ssh_with(&alice, &["-A"], "alice+mri-01")
        .env("SSH_AUTH_SOCK", &sock)
        .arg("echo ${SSH_AUTH_SOCK:-no-agent}")
        .output()
        .unwrap();
    crate::support::stop_guarded(&mut agent);
    assert_eq!(text(&out).0.trim(), "no-agent", "{:?}", text(&out));
    assert!(
        wait_until(Duration::from_secs(5), || audit(&b)
            .contains("\"forward.remote.refused\"")),
        "{}",
        audit(&b)
    );
    assert!(
        wait_until(Duration::from_secs(5), || audit(&b)
            .contains("\"forward.agent.refused\"")),
        "{}",
        audit(&b)
    );
}

#[test]
fn proxyjump_sessions_are_terminated_injected_and_recorded() {
    let Some((sshd, b)) = setup(&[], "") else {
        return;
    };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    // Pin what the inner session presents, as a vendor would from `chaperone known-hosts`.
    let line = b.data.run(&["known-hosts"]).ok().stdout();
    assert!(line.contains("mri-01"), "{line}");
    let known = b.data.path().join("inner_known_hosts");
    std::fs::write(&known, &line).unwrap();
    let proxy = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} \
         -o PreferredAuthentications=publickey,keyboard-interactive -o LogLevel=ERROR -p {} -W %h:%p alice@127.0.0.1",
        alice.key.display(),
        b.data.path().join("known_hosts").display(),
        b.ssh_port
    );
    let askpass = alice.askpass(b.data.path());
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-i",
            alice.key.to_str().unwrap(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args([
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PreferredAuthentications=publickey",
        ])
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(format!("{}@mri-01", sshd.user))
        .arg("echo inner-$((40+2)); exit 7")
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 7, "{stdout}\n{stderr}\n{}", b.log());
    assert!(stdout.contains("inner-42"));
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["kind"] == "exec" && !s["ended_at"].is_null())));
    let all = sessions(&b);
    let exec = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "exec")
        .unwrap();
    // An exec without a pty: recorded byte for byte.
    let mut stdout = Vec::new();
    chaperone_recorder::exec_raw(
        std::io::BufReader::new(
            std::fs::File::open(exec["recordings"][0]["path"].as_str().unwrap()).unwrap(),
        ),
        chaperone_recorder::OutputStream::Stdout,
        &mut stdout,
    )
    .unwrap();
    assert_eq!(stdout, b"inner-42\n");
    assert!(audit(&b).contains("\"jump.open\""));
}

#[test]
fn dicom_echo_through_l_and_hl7_through_w() {
    let python = std::env::var("CHAPERONE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = |module: &str| {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("pynetdicom") || !has("hl7") {
        missing("pynetdicom and hl7 (pip install pynetdicom hl7)");
        return;
    }
    let dicom_port = free_port();
    let hl7_port = free_port();
    let Some((_sshd, b)) = setup(
        &[
            format!("dicom:{dicom_port}/tcp"),
            format!("hl7:{hl7_port}/tcp"),
        ],
        "",
    ) else {
        return;
    };
    let server = format!(
        "import asyncio, hl7\nfrom hl7.mllp import start_hl7_server\nasync def h(r, w):\n    try:\n        while not w.is_closing():\n            m = await r.readmessage()\n            w.writemessage(m.create_ack())\n            await w.drain()\n    except Exception:\n        pass\nasync def main():\n    async with await start_hl7_server(h, host='127.0.0.1', port={hl7_port}) as s:\n        await s.serve_forever()\nasyncio.run(main())\n"
    );
    let mut scp = crate::support::guarded(
        &python,
        &[
            "-m",
            "pynetdicom",
            "echoscp",
            &dicom_port.to_string(),
            "--bind-address",
            "127.0.0.1",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut mllp = crate::support::guarded(&python, &["-c", &server])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || TcpStream::connect(
        ("127.0.0.1", dicom_port)
    )
    .is_ok()
        && TcpStream::connect(("127.0.0.1", hl7_port)).is_ok()));

    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "dicom,hl7", "1h");

    let local = free_port();
    let mut tunnel = b
        .ssh_with(
            &alice,
            &["-N", "-L", &format!("{local}:mri-01:{dicom_port}")],
            "alice",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        ("127.0.0.1", local)
    )
    .is_ok()));
    let out = Command::new(&python)
        .args([
            "-m",
            "pynetdicom",
            "echoscu",
            "127.0.0.1",
            &local.to_string(),
            "-v",
        ])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("Received Echo Response (Status: 0x0000 - Success)"),
        "{all}"
    );
    let _ = tunnel.kill();
    let _ = tunnel.wait();

    // HL7 v2 over MLLP through ssh -W: the client speaks MLLP on the ssh process's stdin/stdout.
    let message = "MSH|^~\\&|VENDOR|ACME|PACS|HOSP|20261123090000||ADT^A01|MSG00001|P|2.5\rPID|1||42||Doe^Jane\r";
    let framed = format!("\x0b{message}\x1c\r");
    let mut ssh = b
        .ssh_with(&alice, &["-W", &format!("mri-01:{hl7_port}")], "alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ssh.stdin.take().unwrap();
    stdin.write_all(framed.as_bytes()).unwrap();
    let mut stdout = ssh.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ack = Vec::new();
        let mut buf = [0u8; 4096];
        while !ack.contains(&0x1c) {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => ack.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(ack);
    });
    let ack = rx.recv_timeout(Duration::from_secs(20));
    drop(stdin);
    let _ = ssh.kill();
    let out = ssh.wait_with_output().unwrap();
    let ack = ack.unwrap_or_else(|_| {
        panic!(
            "no HL7 ACK within 20 s: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            b.log()
        )
    });
    let ack = String::from_utf8_lossy(&ack);
    assert!(ack.contains("MSA|AA|MSG00001"), "{ack}");
    crate::support::stop_guarded(&mut scp);
    crate::support::stop_guarded(&mut mllp);
}

/// One sshd entered again as another asset under another spelling of its address (`localhost` for
/// `127.0.0.1`), with a `tcp` service on the sshd's port: add and the grant check compare addresses as
/// written and let it through, so the dial checks where the connection landed and refuses it before a
/// byte passes. Otherwise a grant for that tcp service would reach mri-01's sshd as a raw tunnel,
/// unrecorded and without mri-01's approvals.
#[test]
fn a_tcp_tunnel_that_lands_on_another_assets_sshd_is_refused() {
    let Some((sshd, b)) = setup(&[], "") else {
        return;
    };
    b.data
        .run(&[
            "asset",
            "add",
            "gw-01",
            "--address",
            "localhost",
            "--zone",
            "radiology",
            "--purpose",
            "Gateway",
            "--service",
            &format!("raw:{}/tcp", sshd.port),
        ])
        .ok();
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "gw-01", "raw", "1h");
    let out = b
        .ssh_with(&alice, &["-W", &format!("gw-01:{}", sshd.port)], "alice")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(!stdout.contains("SSH-2.0"), "the sshd answered: {stdout}");
    assert!(
        stderr.contains("administratively prohibited") && stderr.contains("gw-01"),
        "{stderr}"
    );
    let audit = audit(&b);
    let refused = audit
        .lines()
        .find(|l| l.contains("\"tunnel.refused\"") && l.contains("it reached 127.0.0.1"))
        .unwrap_or_else(|| panic!("no refusal naming where it landed: {audit}"));
    assert!(refused.contains("gw-01"), "{refused}");
    assert!(!audit.contains("\"tunnel.open\""), "{audit}");
}

/// A service removed from an asset takes its live tunnels with it: no grant reaches a service the asset
/// no longer has, and what was opened before is closed within seconds (on every node, through the
/// watcher), its end saying why; before, a tunnel opened before the removal ran on until its grant ended.
#[test]
fn removing_a_service_closes_the_tunnels_open_on_it() {
    let Some(Streaming {
        sshd: _sshd,
        b,
        mut ssh,
        local,
    }) = streaming_tunnel("1h")
    else {
        return;
    };
    let mut conn = None;
    assert!(wait_until(Duration::from_secs(10), || {
        conn = TcpStream::connect(("127.0.0.1", local)).ok();
        conn.is_some()
    }));
    let mut conn = conn.unwrap();
    let mut buf = [0u8; 65536];
    assert!(conn.read(&mut buf).unwrap() > 0, "the tunnel carries data");
    let removed = b
        .data
        .run(&["asset", "service", "remove", "mri-01", "stream"]);
    assert!(removed.ok().stdout().contains("1 live session(s)"));
    let started = Instant::now();
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the tunnel outlived its service"
        );
    }
    let _ = ssh.kill();
    let _ = ssh.wait();
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .as_array()
        .unwrap()
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    let all = sessions(&b);
    assert!(
        all.as_array().unwrap().iter().any(|s| s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("the service stream was removed from mri-01"))),
        "{all}"
    );
    assert!(
        audit(&b).contains("\\\"sessions_ended\\\":1"),
        "{}",
        audit(&b)
    );
}
