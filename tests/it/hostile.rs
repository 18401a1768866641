//! The invariants against clients that are not polite: asyncssh driven by `tests/hostile/client.py`
//! (channels opened long before their request, pipelined and malformed SFTP), raw sockets that never
//! speak, and slow typists, against `chaperone serve` and a real `sshd` device.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::bastion::{Bastion, Vendor, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::{DataDir, missing, python};

fn has_asyncssh() -> bool {
    Command::new(python())
        .args(["-c", "import asyncssh"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// sshd + chaperone (with `config_extra` appended to its config) and a device `mri-01`.
fn setup(config_extra: &str) -> Option<(Sshd, Bastion)> {
    if !has_asyncssh() {
        missing("asyncssh (pip install asyncssh)");
        return None;
    }
    let sshd = Sshd::start()?;
    let data = DataDir::init();
    if !config_extra.is_empty() {
        let mut config = std::fs::read_to_string(data.config()).unwrap();
        config.push_str(config_extra);
        std::fs::write(data.config(), config).unwrap();
    }
    let bastion = Bastion::start(data);
    bastion.device("mri-01", &sshd, &[]);
    Some((sshd, bastion))
}

fn audit(b: &Bastion) -> Vec<Value> {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
        .lines()
        .map(|l| {
            let mut event: Value = serde_json::from_str(l).unwrap();
            // The export keeps `detail` as the exact JSON text the chain hashed.
            if let Some(text) = event["detail"].as_str() {
                event["detail"] = serde_json::from_str(text).unwrap();
            }
            event
        })
        .collect()
}

fn audited(b: &Bastion, action: &str) -> Vec<Value> {
    audit(b)
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

fn sessions(b: &Bastion) -> Vec<Value> {
    b.data
        .run(&["session", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// A signed-in asyncssh client taking ops on stdin (see tests/hostile/client.py).
struct Hostile {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Hostile {
    fn connect(b: &Bastion, vendor: &Vendor, user: &str) -> Hostile {
        Self::connect_with(b, vendor, user, &[])
    }

    /// Like [`Hostile::connect`], with environment variables for the client (`CHAPERONE_CLIENT_REKEY`).
    fn connect_with(b: &Bastion, vendor: &Vendor, user: &str, env: &[(&str, &str)]) -> Hostile {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/client.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["127.0.0.1", &b.ssh_port.to_string(), user])
            .arg(&vendor.key)
            .arg(vendor.next_code())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the asyncssh client");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Hostile {
            child,
            stdin,
            stdout,
        };
        let hello = h.read();
        assert_eq!(hello["event"], "connected", "{hello}\n{}", b.log());
        h
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON line: {line:?}"))
    }

    fn op(&mut self, op: Value) -> Value {
        writeln!(self.stdin, "{op}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_channel_opened_early_starts_nothing_after_its_grant_is_revoked_or_expired() {
    let Some((sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    let grant = b.grant("alice", "mri-01", "ssh", "1h");
    let marker = sshd.dir.path().join("ran-after-revoke");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");

    // Opened while the grant is active; exec sent after the revocation.
    assert_eq!(
        client.op(json!({"op": "open", "id": "a"}))["event"],
        "opened"
    );
    b.data
        .run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
        .ok();
    let command = format!("touch {}; echo ran", marker.display());
    let out = client.op(json!({"op": "exec", "id": "a", "command": command}));
    assert_eq!(out["event"], "exec", "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains("no active grant for mri-01:ssh"),
        "{out}"
    );
    assert_eq!(out["exit"], 1, "{out}");
    assert!(!out["stdout"].as_str().unwrap().contains("ran"), "{out}");
    assert!(!marker.exists(), "the command reached the device");

    // Opened while a short grant is active; exec sent after it expired.
    let granted = Instant::now();
    b.grant("alice", "mri-01", "ssh", "8s");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    assert_eq!(
        client.op(json!({"op": "open", "id": "b"}))["event"],
        "opened"
    );
    assert!(
        granted.elapsed() < Duration::from_secs(7),
        "too slow to open the channel while the grant was active"
    );
    std::thread::sleep(Duration::from_secs(9).saturating_sub(granted.elapsed()));
    let out = client.op(json!({"op": "exec", "id": "b", "command": command}));
    assert!(
        out["stderr"].as_str().unwrap().contains("no active grant"),
        "{out}"
    );
    assert!(!marker.exists(), "the command reached the device");

    // Both refusals are audited, and no session row was opened for either.
    let refused = audited(&b, "session.refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(sessions(&b).is_empty(), "{:?}", sessions(&b));

    // A channel that is never used holds no device connection: sshd saw no login for the early channels.
    let log = std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default();
    assert!(!log.contains("Accepted publickey"), "{log}");
}

#[test]
fn a_second_start_request_on_one_channel_is_refused() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let out = client
        .op(json!({"op": "double-exec", "first": "sleep 1; echo first", "second": "echo second"}));
    assert_eq!(out["event"], "double", "{out}");
    assert_eq!(out["second_accepted"], false, "{out}");
    assert_eq!(out["stdout"], "first\n", "{out}");
    assert_eq!(out["exit"], 0, "{out}");
    let sessions = sessions(&b);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["detail"], "sleep 1; echo first");
    assert_eq!(audited(&b, "session.request.refused").len(), 1);
}

/// Checks that the server closed `client`'s connection within `limit` of `changed` (when the change that
/// should end it was made).
fn assert_cut_within(client: &mut Hostile, changed: Instant, limit: Duration) {
    let out = client.op(json!({"op": "wait-closed", "timeout": limit.as_secs_f64() + 5.0}));
    assert_eq!(out["event"], "closed", "{out}");
    let after = changed.elapsed();
    assert!(after <= limit, "closed {after:?} after the change");
}

/// Waits (up to 5 s) until `action` was audited `n` times.
fn wait_audited(b: &Bastion, action: &str, n: usize) -> Vec<Value> {
    wait_until(Duration::from_secs(5), || audited(b, action).len() >= n);
    audited(b, action)
}

#[test]
fn disabling_locking_or_removing_the_key_ends_a_vendors_live_connections() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");

    // Disable: the connection goes within 2 s, and nothing new starts on it meanwhile.
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    assert_eq!(
        client.op(json!({"op": "run", "command": "echo hi"}))["stdout"],
        "hi\n"
    );
    b.data.run(&["vendor", "disable", "alice"]).ok();
    let changed = Instant::now();
    let out = client.op(json!({"op": "run", "command": "echo after-disable"}));
    assert!(
        !out["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("after-disable"),
        "a session started after the disable: {out}"
    );
    // 2 s, and a little for a loaded machine.
    assert_cut_within(&mut client, changed, Duration::from_millis(2500));
    let ended = wait_audited(&b, "vendor.connections.ended", 1);
    assert_eq!(ended.len(), 1, "{ended:?}\n{}", b.log());
    assert!(
        ended[0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );

    // Key removal: the connection made with that key goes.
    b.data.run(&["vendor", "enable", "alice"]).ok();
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let public = alice.key.with_extension("pub");
    // A second key first, so the vendor keeps an account to sign in to.
    let other = crate::support::ssh_keygen(b.data.path(), "alice_second");
    b.data
        .run(&[
            "vendor",
            "key",
            "add",
            "alice",
            &other.with_extension("pub").to_string_lossy(),
        ])
        .ok();
    b.data
        .run(&[
            "vendor",
            "key",
            "remove",
            "alice",
            &public.to_string_lossy(),
        ])
        .ok();
    let removed = Instant::now();
    assert_cut_within(&mut client, removed, Duration::from_millis(2500));
    b.data
        .run(&["vendor", "key", "add", "alice", &public.to_string_lossy()])
        .ok();

    // Lock: wrong codes from another connection lock the vendor; the live one goes.
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let wrong = alice.askpass_printing(b.data.path(), "000000");
    for _ in 0..5 {
        let _ = b
            .ssh_answering(&alice, &[], "alice", &wrong)
            .output()
            .unwrap();
        if audited(&b, "auth.lock").len() == 1 {
            break;
        }
    }
    assert_eq!(audited(&b, "auth.lock").len(), 1, "not locked");
    assert_cut_within(&mut client, Instant::now(), Duration::from_millis(2500));
    assert_eq!(wait_audited(&b, "vendor.connections.ended", 3).len(), 3);
}

/// A client that keeps trying with a disabled vendor's key on one connection (paramiko, key then
/// keyboard-interactive, three times): told why once, then refused at the key as before; one audit event.
#[test]
fn a_barred_vendors_client_is_told_once_per_connection() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.data.run(&["vendor", "disable", "alice"]).ok();
    let script = r#"
import json, sys, paramiko
host, port, user, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t = paramiko.Transport((host, port))
t.start_client(timeout=20)
steps = []
for _ in range(3):
    try:
        left = t.auth_publickey(user, paramiko.PKey.from_path(key))
        steps.append(["key", sorted(left)])
    except paramiko.AuthenticationException as e:
        steps.append(["key refused", type(e).__name__])
        continue
    shown = []
    def answer(title, instructions, prompts):
        shown.extend(p for p, _ in prompts)
        return ["123456" for _ in prompts]
    try:
        t.auth_interactive(user, answer)
        steps.append(["signed in"])
    except paramiko.AuthenticationException:
        steps.append(["told", shown])
t.close()
print(json.dumps(steps))
"#;
    let out = Command::new(python())
        .args(["-c", script, "127.0.0.1", &b.ssh_port.to_string(), "alice"])
        .arg(&alice.key)
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let steps: Value = serde_json::from_str(stdout.trim()).unwrap();
    let steps = steps.as_array().unwrap();
    assert_eq!(steps[0][0], "key", "{steps:?}");
    assert_eq!(steps[1][0], "told", "{steps:?}");
    assert!(
        steps[1][1][0]
            .as_str()
            .unwrap()
            .contains("your vendor account is disabled"),
        "{steps:?}"
    );
    assert!(
        steps[2..].iter().all(|s| s[0] == "key refused"),
        "a barred key was taken again on the same connection: {steps:?}"
    );
    let refused: Vec<Value> = audited(&b, "auth.refused")
        .into_iter()
        .filter(|e| e["detail"]["why"] == "disabled")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(audited(&b, "auth.login").is_empty());
}

#[test]
fn an_idle_flood_from_one_address_leaves_a_vendor_from_another_able_to_sign_in() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    // 2,000 connections from 127.0.0.2 that never send a byte.
    let flood = format!(
        "import resource, socket, sys\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))\n\
         socks = []\n\
         for _ in range(2000):\n\
         \x20   s = socket.socket()\n\
         \x20   s.bind(('127.0.0.2', 0))\n\
         \x20   s.setblocking(False)\n\
         \x20   try:\n\
         \x20       s.connect(('127.0.0.1', {}))\n\
         \x20   except BlockingIOError:\n\
         \x20       pass\n\
         \x20   socks.append(s)\n\
         print('flooded', flush=True)\n\
         sys.stdin.read()\n",
        b.ssh_port
    );
    let mut flooder = Command::new(python())
        .args(["-c", &flood])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(flooder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "flooded");
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let out = b
        .ssh_with(&alice, &["-o", "ConnectTimeout=5"], "alice")
        .arg("whoami")
        .output()
        .unwrap();
    let took = started.elapsed();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", b.log());
    assert!(stdout.contains("alice"), "{stdout}");
    assert!(took < Duration::from_secs(5), "signed in after {took:?}");
    assert!(
        b.log().contains("connection refused before sign-in"),
        "{}",
        b.log()
    );
    drop(flooder.stdin.take());
    let _ = flooder.kill();
    let _ = flooder.wait();
}

/// Channels refused for breaking a limit before any policy decision are audited like the decisions:
/// a session channel that asks for nothing within the grace time, and a tunnel to a port past 65535.
#[test]
fn channels_refused_for_a_limit_are_audited() {
    let Some((sshd, b)) = setup("") else { return };
    let config = std::fs::read_to_string(b.data.config()).unwrap();
    let data = b.stop();
    std::fs::write(
        data.config(),
        config.replace("login_grace_time = \"60s\"", "login_grace_time = \"3s\""),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-02", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-02", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-02");
    assert_eq!(
        client.op(json!({"op": "open", "id": "idle"}))["event"],
        "opened"
    );
    let out = client.op(json!({"op": "tunnel", "host": "mri-02", "port": 70000}));
    assert_eq!(out["event"], "error", "{out}");
    let refused = |why: &str| {
        audit(&b).into_iter().any(|e| {
            e["actor"] == "vendor:alice"
                && e["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(why))
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || refused(
            "no shell, command or sftp was requested within 3 s"
        )),
        "{:#?}",
        audit(&b)
    );
    let tunnel = audited(&b, "tunnel.refused");
    assert!(
        tunnel
            .iter()
            .any(|e| e["detail"]["reason"] == "invalid port 70000"),
        "{tunnel:#?}"
    );
    let idle = audited(&b, "session.refused");
    assert_eq!(idle.len(), 1, "{idle:#?}");
    assert_eq!(idle[0]["subject"], "asset:mri-02");
}

/// Channels a client may not open toward a server (`x11` and `forwarded-tcpip` only ever come from a
/// server; an agent's, a Unix socket's, a type nobody defined) are refused, each audited as
/// `channel.refused` with its type, and the connection goes on: a session opened after them runs.
/// (Before russh patch 7, the last three were refused twice, and asyncssh closed the connection.)
#[test]
fn channel_types_the_bastion_does_not_serve_are_refused_and_audited() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    for (kind, args) in [
        ("x11", json!(["127.0.0.1", 6010])),
        ("forwarded-tcpip", json!(["mri-01", 22, "127.0.0.1", 5000])),
        ("auth-agent@openssh.com", json!([])),
        ("made-up@example.com", json!(["anything"])),
        (
            "forwarded-streamlocal@openssh.com",
            json!(["/run/x.sock", ""]),
        ),
    ] {
        let out = client.op(json!({"op": "open-type", "type": kind, "args": args}));
        assert_eq!(out["event"], "refused", "{kind}: {out}\n{}", b.log());
    }
    // A tunnel to a host no grant names is refused, and the reason (which names the host the client
    // asked for) carries no escape sequence back to the client's terminal.
    let host = "mri-99\x1b]0;owned\x07\r\nchaperone: granted";
    let out = client.op(
        json!({"op": "open-type", "type": "direct-tcpip", "args": [host, 104, "127.0.0.1", 5000]}),
    );
    assert_eq!(out["event"], "refused", "{out}");
    let reason = out["reason"].as_str().unwrap();
    assert!(
        reason.contains("mri-99?]0;owned???chaperone: granted"),
        "{reason:?}"
    );
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    let ok = client.op(json!({"op": "run", "command": "echo still-here"}));
    assert_eq!(ok["stdout"], "still-here\n", "{ok}");
    let types = || -> Vec<String> {
        audited(&b, "channel.refused")
            .iter()
            .filter(|e| e["actor"] == "vendor:alice")
            .filter_map(|e| e["detail"]["request"]["type"].as_str().map(str::to_owned))
            .collect()
    };
    // Each refusal is audited by a task of its own: in any order.
    let want = [
        "auth-agent@openssh.com",
        "forwarded-streamlocal@openssh.com",
        "forwarded-tcpip",
        "made-up@example.com",
        "x11",
    ];
    assert!(
        wait_until(Duration::from_secs(10), || types().len() == want.len()),
        "{:?}",
        types()
    );
    let mut seen = types();
    seen.sort();
    assert_eq!(seen, want);
}

/// Starts `tests/hostile/device.py` in `dir` (with `args`); the process and the port it listens on.
fn hostile_device(dir: &Path, args: &[&str]) -> (DeviceProcess, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/device.py");
    let device = Command::new(python())
        .arg(script)
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the asyncssh device");
    let port_file = dir.join("port");
    assert!(
        wait_until(Duration::from_secs(15), || port_file.exists()),
        "the device did not start"
    );
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (DeviceProcess(device), port)
}

/// `device.py`, stopped when dropped (a failed assertion too: it holds the test's output open).
struct DeviceProcess(Child);

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Vendor alice, granted ssh on `asset`: `device.py` (with `args`) started and pinned as that asset,
/// `command` run on it over OpenSSH, then the device stopped; what ssh printed.
fn on_hostile_device(b: &Bastion, asset: &str, args: &[&str], command: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (device, port) = hostile_device(dir.path(), args);
    let host_key = std::fs::read_to_string(dir.path().join("host_key.pub")).unwrap();
    b.device_at(
        asset,
        port,
        host_key.trim(),
        "service",
        &dir.path().join("client_key"),
        &[],
    );
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", asset, "ssh", "1h");
    let out = b
        .ssh(&alice, &format!("alice+{asset}"))
        .arg(command)
        .output()
        .unwrap();
    drop(device);
    out
}

/// `device.py stall` (its version line, then nothing) pinned as asset `stuck-01`, with any key and
/// credential: the handshake never gets that far.
fn stalling_device(b: &Bastion, sshd: &Sshd, dir: &Path) -> DeviceProcess {
    let (device, port) = hostile_device(dir, &["stall"]);
    b.device_at(
        "stuck-01",
        port,
        &sshd.host_key_line(),
        "service",
        &sshd.client_key,
        &[],
    );
    device
}

/// A file transfer asked for with a terminal (`ssh -tt … 'scp -t'`, or a pty-req before the sftp
/// subsystem) reaches the device without one: its transfer log has no place for a terminal, and a
/// terminal's line discipline would have the device's scp or sftp-server act on other bytes than the
/// log shows. A command with a terminal still gets one.
#[test]
fn a_file_transfer_reaches_the_device_without_a_terminal() {
    let Some((_sshd, b)) = setup("") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (device, port) = hostile_device(dir.path(), &["terms"]);
    let host_key = std::fs::read_to_string(dir.path().join("host_key.pub")).unwrap();
    let key = dir.path().join("client_key");
    b.device_at("pump-9", port, host_key.trim(), "service", &key, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "pump-9", "ssh", "1h");
    for (options, command) in [
        (&["-tt"][..], "scp -t /tmp"),
        (&["-tt", "-s"][..], "sftp"),
        (&["-tt"][..], "uptime"),
    ] {
        let out = b
            .ssh_with(&alice, options, "alice+pump-9")
            .arg(command)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        // The SFTP server ends when its client does, on the client's end of input: no exit status.
        if command != "sftp" {
            assert_eq!(out.status.code(), Some(0), "{command}: {:?}", text(&out));
        }
    }
    drop(device);
    let seen: Vec<Value> = std::fs::read_to_string(dir.path().join("terms"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        seen,
        [
            json!({"command": "scp -t /tmp", "subsystem": null, "term": null}),
            json!({"command": null, "subsystem": "sftp", "term": null}),
            json!({"command": "uptime", "subsystem": null, "term": "xterm-256color"}),
        ]
    );
}

/// A device that answers its version line and then nothing: the vendor is told it did not answer
/// within the connect time-out, and the bastion closes the socket then. Before, russh's connection
/// task waited on it forever, one socket and its buffers per attempt.
#[test]
fn a_device_that_stalls_in_its_handshake_is_hung_up_on() {
    let Some((sshd, b)) = setup("") else { return };
    let dir = tempfile::tempdir().unwrap();
    let device = stalling_device(&b, &sshd, dir.path());
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "stuck-01", "ssh", "1h");
    let out = b
        .ssh(&alice, "alice+stuck-01")
        .arg("true")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    let closed = dir.path().join("closed");
    let hung_up = wait_until(Duration::from_secs(10), || closed.exists());
    drop(device);
    assert!(
        hung_up,
        "the bastion still holds the stalled device's connection\n{}",
        b.log()
    );
}

/// A device that re-keys in a loop (every 0.2 s: each key exchange costs the bastion CPU on the thread
/// that runs the connection) is disconnected at its second re-key within 10 s: the vendor's command is
/// cut short.
#[test]
fn a_device_that_rekeys_in_a_loop_is_disconnected() {
    let Some((_sshd, b)) = setup("") else { return };
    let out = on_hostile_device(&b, "pump-08", &["rekey"], "ticks");
    let (stdout, stderr, _) = text(&out);
    assert!(stdout.contains("tick 0"), "{stdout}\n{stderr}\n{}", b.log());
    assert!(
        !stdout.contains("survived"),
        "{stdout}\n{stderr}\n{}",
        b.log()
    );
}

/// A vendor's client that re-keys in a loop (each key exchange costs the bastion CPU on a worker thread)
/// is disconnected at its second re-key within 2 s, and the vendor's command does not run to its end.
#[test]
fn a_client_that_rekeys_in_a_loop_is_disconnected() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect_with(
        &b,
        &alice,
        "alice+mri-01",
        &[("CHAPERONE_CLIENT_REKEY", "0.2")],
    );
    let out = client.op(json!({"op": "run", "command": "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.3; done; echo survived"}));
    assert!(
        !out["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("survived"),
        "{out}\n{}",
        b.log()
    );
}

/// A client that sends more data in one packet than the bastion's maximum packet size (32 KiB; russh
/// took up to a whole 256 KiB packet, so each channel's queue of 100 messages could hold 25 MiB instead
/// of 3) is disconnected; one at the maximum is not.
#[test]
fn a_client_that_sends_packets_past_the_maximum_size_is_disconnected() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut polite = Hostile::connect(&b, &alice, "alice+mri-01");
    assert_eq!(
        polite.op(json!({"op": "oversized-data", "bytes": 32768}))["event"],
        "sent"
    );
    let still = polite.op(json!({"op": "wait-closed", "timeout": 2}));
    assert_eq!(still["event"], "still-open", "{still}\n{}", b.log());
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    assert_eq!(
        client.op(json!({"op": "oversized-data", "bytes": 200_000}))["event"],
        "sent"
    );
    let closed = client.op(json!({"op": "wait-closed", "timeout": 10}));
    assert_eq!(closed["event"], "closed", "{closed}\n{}", b.log());
}

/// A device is not trusted either: one that opens channels toward the bastion (a session, tunnels both
/// ways, X11, an agent's, a socket's, a type nobody defined; russh's client accepted all but the last
/// by default, and refused that one twice) has each refused, and the vendor's session on it goes on.
/// What it sends that a client would not show, or sends again, reaches neither the vendor nor the
/// recording: extended data other than stderr, exit messages after the first; the exit signal's text
/// is bounded and recorded.
#[test]
fn channels_a_device_opens_toward_the_bastion_are_refused() {
    let Some((_sshd, b)) = setup("") else { return };
    let out = on_hostile_device(&b, "pump-07", &[], "status");
    let (stdout, stderr, code) = text(&out);
    // The device's first exit message, a signal, is what the vendor gets (OpenSSH's client exits 255
    // on a signal); its exit statuses after it are not passed on.
    assert_eq!(code, 255, "{stdout}\n{stderr}\n{}", b.log());
    assert!(!stderr.contains("HIDDEN-EXT"), "{stderr}");
    let results: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"));
    let expected = json!({
        "auth-agent@openssh.com": "refused 1",
        "direct-tcpip": "refused 1",
        "forwarded-streamlocal@openssh.com": "refused 1",
        "forwarded-tcpip": "refused 1",
        "made-up@example.com": "refused 3",
        "session": "refused 1",
        "x11": "refused 1",
    });
    assert_eq!(results, expected, "{}", b.log());
    // The recording has the signal as a notice, its message bounded and without the escape sequence,
    // and not the extended data no client shows.
    let sessions = b.data.run(&["session", "list", "--json"]).ok().json();
    let path = sessions[0]["recordings"][0]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let bytes = std::fs::read(&path).unwrap_or_default();
            String::from_utf8_lossy(&bytes).contains("by signal TERM")
        }),
        "{}",
        b.log()
    );
    // An exec recording is framed binary (a frame's time may hold any byte), so read it frame by frame;
    // the hidden data must be in no frame of any kind.
    let bytes = std::fs::read(&path).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("HIDDEN-EXT"));
    let mut reader = chaperone_recorder::ExecReader::new(&bytes[..]).unwrap();
    let (mut recorded, mut notices) = (Vec::new(), Vec::new());
    while let Some(frame) = reader.next_frame().unwrap() {
        match frame.data {
            chaperone_recorder::FrameData::Stdout(b) | chaperone_recorder::FrameData::Stderr(b) => {
                recorded.extend_from_slice(b)
            }
            chaperone_recorder::FrameData::Marker(label) => notices.push(label.to_owned()),
            _ => {}
        }
    }
    assert!(!String::from_utf8_lossy(&recorded).contains("HIDDEN-EXT"));
    let signal = notices
        .iter()
        .find(|n| n.contains("by signal TERM"))
        .unwrap_or_else(|| panic!("{notices:?}"));
    assert!(signal.ends_with(" [en]"), "the language tag too: {signal}");
    // Only the first exit message reaches the vendor, and only what reaches them is recorded.
    assert!(
        !notices.iter().any(|n| n.contains("exited with status")),
        "{notices:?}"
    );
    assert!(signal.contains(&"x".repeat(256)), "{signal}");
    assert!(!signal.contains(&"x".repeat(257)), "{signal}");
    assert!(!signal.contains(char::is_control), "{signal:?}");
    assert!(
        b.log()
            .contains("the device opened a channel toward the bastion: refused"),
        "{}",
        b.log()
    );
}

/// A client that speaks legacy SCP (`scp -t`) and breaks the protocol: a file's bytes run past the
/// size its header declared. The bastion cannot log what it cannot follow, so nothing of that chunk
/// reaches the device (a client sending before the sink is ready is refused the same way) and the
/// session ends, with the transfer log saying why; a well-formed upload on
/// the same connection is logged by name.
#[test]
fn an_scp_upload_that_breaks_the_protocol_reaches_nothing() {
    let Some((sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let dir = sshd.dir.path().join("scp-in");
    std::fs::create_dir(&dir).unwrap();
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let ok = client.op(
        json!({"op": "exec-raw", "command": format!("scp -t {}", dir.display()),
        "steps": ["C0644 5 good.txt\n", "hello\0"]}),
    );
    assert_eq!(ok["event"], "exec", "{ok}");
    assert!(
        wait_until(Duration::from_secs(10), || dir.join("good.txt").exists()),
        "{ok}\n{}",
        b.log()
    );
    assert_eq!(std::fs::read(dir.join("good.txt")).unwrap(), b"hello");
    let bad = client.op(
        json!({"op": "exec-raw", "command": format!("scp -t {}", dir.display()),
        "steps": ["C0644 5 bad.txt\n", "helloSMUGGLED\0"]}),
    );
    assert_eq!(bad["event"], "exec", "{bad}");
    assert!(
        wait_until(Duration::from_secs(10), || sessions(&b).len() == 2
            && sessions(&b).iter().all(|s| !s["ended_at"].is_null())),
        "{:?}",
        sessions(&b)
    );
    std::thread::sleep(Duration::from_millis(500));
    // The header was well-formed and went on (the device's scp creates the file on it); nothing of the
    // chunk that broke the protocol did.
    let landed = std::fs::read(dir.join("bad.txt")).unwrap_or_default();
    assert!(
        landed.is_empty(),
        "the broken chunk reached the device: {landed:?}"
    );
    let all = sessions(&b);
    let logs: Vec<String> = all
        .iter()
        .map(|s| std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("good.txt") && l.contains("\"ok\"")),
        "{logs:?}"
    );
    let broken = all
        .iter()
        .zip(&logs)
        .find(|(_, l)| l.contains("\"unparseable\""))
        .unwrap_or_else(|| panic!("no log says where it stopped: {logs:?}\n{all:?}"));
    assert!(!broken.1.contains("SMUGGLED"), "{}", broken.1);
    assert_eq!(broken.0["end_cause"], "recording", "{}", broken.0);
}

/// A bastion whose device `mri-01` takes `LANG` and `LC_*` (Debian's sshd default), and alice with a
/// grant for its ssh; `None` (the part is reported missing) without asyncssh or sshd.
fn locale_device() -> Option<(Sshd, Bastion, Vendor)> {
    if !has_asyncssh() {
        missing("asyncssh (pip install asyncssh)");
        return None;
    }
    let sshd = Sshd::start_with("AcceptEnv LANG LC_*\n")?;
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    Some((sshd, b, alice))
}

/// A client that floods env requests before its exec (thousands of variables, long values, names no
/// locale has) against a device that accepts `LANG`/`LC_*`: the session runs, and only locale-sized
/// `LC_*` variables, at most 64, reach the device; nothing else does.
#[test]
fn an_env_flood_passes_only_a_bounded_locale_to_the_device() {
    let Some((_sshd, b, alice)) = locale_device() else {
        return;
    };
    let mut env = serde_json::Map::new();
    for i in 0..2000 {
        env.insert(format!("LC_FLOOD_{i}"), json!("C.UTF-8"));
        env.insert(format!("EVIL_{i}"), json!("x".repeat(1000)));
    }
    env.insert("LC_BIG".into(), json!("y".repeat(300)));
    env.insert("LD_PRELOAD".into(), json!("/tmp/evil.so"));
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let out = client.op(json!({"op": "run", "env": env,
        "command": "env | grep -c '^LC_FLOOD_'; env | grep -c -e '^EVIL_' -e '^LC_BIG=' -e '^LD_PRELOAD='; true"}));
    assert_eq!(out["event"], "exec", "{out}");
    let counts: Vec<&str> = out["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(counts, ["64", "0"], "{out}\n{}", b.log());
}

/// Nothing reaches the device before a session's data that its recording does not show: a command
/// too long to record is refused, never cut; an environment value that is no locale, a terminal
/// type that is no name, a pty asking for no echo carry nothing to the device.
#[test]
fn what_the_device_is_sent_before_a_session_is_what_its_recording_shows() {
    let Some((_sshd, b, alice)) = locale_device() else {
        return;
    };
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let marker = b.data.path().join("hidden-ran");
    let hidden = format!("touch {}", marker.display());

    // 16 KiB of padding hides the end of the command from nobody: the session is refused.
    let long = format!("echo ok{}; {hidden}", " ".repeat(17_000));
    let out = client.op(json!({"op": "run", "command": long}));
    assert_eq!(out["exit"], 1, "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains("longer than a session records"),
        "{out}"
    );
    let refused = audited(&b, "session.refused");
    assert!(
        refused.iter().any(|e| e["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("more than the 16384 a session records")),
        "{refused:?}"
    );
    // Under the limit it runs, and the session row has it whole.
    let padded = format!("echo ok{}; echo end", " ".repeat(10_000));
    let out = client.op(json!({"op": "run", "command": padded}));
    assert_eq!(out["stdout"], "ok\nend\n", "{out}");
    assert!(
        sessions(&b).iter().any(|s| s["detail"] == padded.as_str()),
        "the session row cut the command"
    );

    // An environment value that is no locale's name is not passed; one that is, is recorded.
    let out = client.op(json!({"op": "run", "term": "xterm-256color",
        "env": {"LC_X": hidden, "LANG": "en_US.UTF-8"},
        "command": "eval \"$LC_X\"; echo \"[$LANG]\""}));
    assert!(
        out["stdout"].as_str().unwrap().contains("[en_US.UTF-8]"),
        "{out}"
    );
    let cast = sessions(&b)
        .iter()
        .filter_map(|s| s["recordings"][0]["path"].as_str())
        .find(|p| p.ends_with(".cast"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .expect("the pty session's recording");
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        header["env"],
        json!({"LANG": "en_US.UTF-8", "TERM": "xterm-256color"}),
        "{header}"
    );

    // A terminal type with a command in it: refused before the device sees anything.
    let out = client.op(json!({"op": "run", "term": format!("xterm;{hidden}"), "command": "true"}));
    assert_eq!(out["exit"], 1, "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains("is not a terminal's name"),
        "{out}"
    );

    // A pty asking for no echo gets the device's echo all the same: what is typed shows on the
    // terminal the recording shows.
    let out = client.op(json!({"op": "run", "term": "xterm", "modes": {"53": 0},
        "command": "stty -a | tr ' ' '\\n' | grep -x -e echo -e -echo"}));
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "echo", "{out}");

    // A signal changes what runs: it is on the record before the device gets it. (Whether the device
    // acts on it is its own business: sshd does not signal a root session's processes.)
    let out = client.op(json!({"op": "signal", "signal": "TERM",
        "command": "echo signalled-session; sleep 2"}));
    assert_eq!(out["stdout"], "signalled-session\n", "{out}");
    let exec = sessions(&b)
        .iter()
        .filter_map(|s| s["recordings"][0]["path"].as_str())
        .filter(|p| p.ends_with(".exec"))
        .map(|p| std::fs::read(p).unwrap())
        .find(|r| r.windows(17).any(|w| w == b"signalled-session"))
        .expect("the signalled session's recording");
    assert!(
        exec.windows(39)
            .any(|w| w == b"the vendor sent the command signal TERM"),
        "no notice of the signal"
    );

    assert!(!marker.exists(), "the device ran what no record shows");
}

#[test]
fn a_connection_that_does_not_sign_in_is_closed_after_the_login_grace_time() {
    let Some((_sshd, b)) = setup("") else { return };
    let config = std::fs::read_to_string(b.data.config()).unwrap();
    assert!(config.contains("login_grace_time = \"60s\""));
    let data = b.stop();
    std::fs::write(
        data.config(),
        config.replace("login_grace_time = \"60s\"", "login_grace_time = \"2s\""),
    )
    .unwrap();
    let b = Bastion::start(data);
    // Bounds are loose for a loaded machine: the point is 2 s rather than the default 60 s.
    let started = Instant::now();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", b.ssh_port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut seen = Vec::new();
    let _ = socket.read_to_end(&mut seen);
    let took = started.elapsed();
    assert!(seen.starts_with(b"SSH-2.0-"), "{seen:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    // One that says who it is and then stalls gets the same time, not a second grace period.
    let started = Instant::now();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", b.ssh_port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
    let _ = socket.read_to_end(&mut seen);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
}

/// An askpass script that waits `secs` before printing the current code (computed then, by oathtool).
fn slow_askpass(dir: &Path, secret: &str, secs: u64) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if Command::new("oathtool").arg("--version").output().is_err() {
        missing("oathtool");
        return None;
    }
    let path = dir.join("slow-askpass.sh");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nsleep {secs}\nexec oathtool --totp -b {secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    Some(path)
}

#[test]
fn a_totp_code_typed_after_45_seconds_is_accepted() {
    let Some((_sshd, b)) = setup("") else { return };
    let slow = b.vendor("slow", "Acme Imaging");
    let Some(askpass) = slow_askpass(b.data.path(), &slow.secret, 45) else {
        return;
    };
    let out = b
        .ssh_answering(&slow, &[], "slow", &askpass)
        .arg("whoami")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("slow"), "{stdout}");
}

/// A raw SFTP upload, then 20,000 logged requests without waiting and a REMOVE of a real file: the
/// observer cannot follow past 4,096 in flight, so the chunk that goes past it is not forwarded and the
/// session ends, rather than going on unlogged. The log keeps the upload, and the victim file survives.
#[test]
fn pipelined_or_malformed_sftp_ends_the_session_and_keeps_what_was_logged() {
    let Some((sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let upload = sshd.dir.path().join("before-the-flood.bin");
    let victim = sshd.dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let out = client.op(json!({"op": "sftp-flood", "n": 20000, "upload": upload.to_string_lossy(), "last": victim.to_string_lossy()}));
    assert_eq!(out["closed_by_server"], true, "{out}\n{}", b.log());
    assert!(
        out["stderr"].as_str().unwrap().contains("recording"),
        "{out}"
    );
    assert!(
        upload.exists(),
        "the upload before the flood did not happen"
    );
    assert!(
        victim.exists(),
        "a request past the observer's limit reached the device"
    );
    let out = client.op(json!({"op": "sftp-malformed"}));
    assert_eq!(out["closed_by_server"], true, "{out}");

    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    let failed = wait_audited(&b, "recording.failed", 2);
    assert_eq!(failed.len(), 2, "{failed:?}");
    let all = sessions(&b);
    assert_eq!(all.len(), 2, "{all:?}");
    for s in &all {
        assert_eq!(s["kind"], "sftp");
        assert_eq!(s["end_cause"], "recording", "{s}");
        b.data
            .run(&["session", "verify", s["id"].as_str().unwrap()])
            .ok();
    }
    // The flood's log kept the upload and says where it stopped.
    let flood = all
        .iter()
        .find(|s| {
            s["end_reason"]
                .as_str()
                .unwrap()
                .contains("awaiting a reply")
        })
        .unwrap_or_else(|| panic!("no session ended by the flood: {all:?}"));
    let path = flood["recordings"][0]["path"].as_str().unwrap();
    let log = std::fs::read_to_string(path).unwrap();
    assert!(log.contains("before-the-flood.bin"), "{log}");
    assert!(log.contains("\"unparseable\""), "{log}");
}

/// A client that stops reading (no window for the server's output) cannot keep a revoked session: it
/// ends within seconds, also when a notice for it came first (it waited for the window, and the
/// revocation behind it was never read), and what the client types after the revocation never reaches
/// the device.
#[test]
fn a_client_that_stops_reading_cannot_keep_a_revoked_session() {
    let Some((sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    // The grant's ten-minute notice comes 6 s in, once the client's window is full: it may not hold
    // the revocation behind it.
    let granted = Instant::now();
    let grant = b.grant("alice", "mri-01", "ssh", "10m6s");
    let marker = sshd.dir.path().join("typed-after-revoke");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let out = client.op(json!({"op": "stall", "id": "s", "command": "head -c 6000000 /dev/zero; while read l; do eval \"$l\"; done"}));
    assert_eq!(out["event"], "stalled", "{out}");
    // The device's output fills the client's window; the session is now waiting on the client.
    assert!(wait_until(Duration::from_secs(10), || sessions(&b)
        .first()
        .is_some_and(|s| s["ended_at"].is_null())));
    std::thread::sleep(
        Duration::from_secs(9)
            .saturating_sub(granted.elapsed())
            .max(Duration::from_secs(2)),
    );
    b.data
        .run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
        .ok();
    let revoked = Instant::now();
    assert!(
        wait_until(Duration::from_secs(8), || sessions(&b)
            .first()
            .is_some_and(|s| !s["ended_at"].is_null())),
        "the stalled session did not end: {:?}\n{}",
        sessions(&b),
        b.log()
    );
    assert!(revoked.elapsed() < Duration::from_secs(8));
    let _ = client
        .op(json!({"op": "write", "id": "s", "data": format!("touch {}\n", marker.display())}));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists(), "typed after the revocation, and it ran");
    assert_eq!(sessions(&b)[0]["end_cause"], "revoked");
}

#[test]
fn a_connection_holds_at_most_max_channels() {
    let Some((_sshd, b)) = setup("") else { return };
    let config = std::fs::read_to_string(b.data.config()).unwrap();
    let data = b.stop();
    std::fs::write(
        data.config(),
        config.replace("max_channels = 256", "max_channels = 3"),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-02", &_sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    for id in ["a", "b", "c"] {
        assert_eq!(
            client.op(json!({"op": "open", "id": id}))["event"],
            "opened"
        );
    }
    let out = client.op(json!({"op": "open", "id": "d"}));
    assert_eq!(out["event"], "error", "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("too many open channels"),
        "{out}"
    );
    // Ending one frees its place (once its task has written the session's end).
    let out = client.op(json!({"op": "exec", "id": "a", "command": "echo a"}));
    assert_eq!(out["stdout"], "a\n", "{out}");
    let mut reopened = Value::Null;
    for i in 0..30 {
        reopened = client.op(json!({"op": "open", "id": format!("e{i}")}));
        if reopened["event"] == "opened" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(reopened["event"], "opened", "{reopened}");
    assert_eq!(audited(&b, "ssh.channels.refused").len(), 1);

    // A ProxyJump is one of the connection's channels, and the sessions inside it count as its
    // channels do: with the jump, two fit inside it, not three.
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let jumped =
        client.op(json!({"op": "jump", "host": "mri-01", "user": _sshd.user, "sessions": 3}));
    assert_eq!(jumped["event"], "jumped", "{jumped}");
    assert_eq!(jumped["opened"], 2, "{jumped}");
    assert!(
        jumped["errors"][0]
            .as_str()
            .unwrap()
            .contains("too many open channels"),
        "{jumped}"
    );
}

/// A tunnel whose channel the client closed ends, and closes the device's socket, even when the device
/// never closes its side: its place among `max_channels` is held until then, so opening and closing
/// channels cannot pile up tunnels (each a task, a socket to the device and two 128 KiB buffers).
#[test]
fn a_tunnel_closed_by_the_client_ends_even_if_the_device_holds_its_side_open() {
    let Some((sshd, b)) = setup("") else { return };
    // Answers each connection's first line and then holds it open, as a device may.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines_seen = lines.clone();
    let (held_by_server, open) = (
        held.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let open_in_server = open.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            lines_seen.lock().unwrap().push(line);
            let mut stream = stream;
            let _ = stream.write_all(b"pong\n");
            open_in_server.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let open = open_in_server.clone();
            // Counts the connection as closed once the bastion closes it.
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while matches!(reader.get_mut().read(&mut buf), Ok(n) if n > 0) {}
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
            held_by_server.lock().unwrap().push(stream);
        }
    });
    b.device("hold-01", &sshd, &[&format!("hold:{port}/tcp")]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "hold-01", "hold", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+hold-01");
    for _ in 0..5 {
        let out = client.op(json!({"op": "tunnel", "host": "hold-01", "port": port}));
        assert_eq!(out["answer"], "pong\n", "{out}\n{}", b.log());
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            sessions(&b)
                .iter()
                .filter(|s| s["kind"] == "tunnel")
                .all(|s| !s["ended_at"].is_null())
        }),
        "tunnels closed by the client are still live: {:?}\n{}",
        sessions(&b),
        b.log()
    );
    let tunnels: Vec<Value> = sessions(&b)
        .into_iter()
        .filter(|s| s["kind"] == "tunnel")
        .collect();
    assert_eq!(tunnels.len(), 5, "{tunnels:?}");
    // Sent and closed at once (DATA, EOF, CLOSE): what was sent still reaches the device.
    let out = client.op(json!({"op": "tunnel-send-close", "host": "hold-01", "port": port, "data": "fire-and-forget\n"}));
    assert_eq!(out["event"], "sent", "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "fire-and-forget\n")),
        "the device never got what was sent before the close: {:?}",
        lines.lock().unwrap()
    );
    assert!(
        wait_until(Duration::from_secs(5), || open
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0),
        "the bastion still holds {} device sockets",
        open.load(std::sync::atomic::Ordering::SeqCst)
    );
    drop(held);
}

#[test]
fn exec_output_past_its_byte_budget_or_recording_cap_ends_the_session() {
    let extra = "\n[budgets.services.ssh]\nmax_down_per_hour = \"300KB\"\naction = \"cut\"\n";
    let Some((_sshd, b)) = setup(extra) else {
        return;
    };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("head -c 5000000 /dev/zero")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0);
    assert!(stderr.contains("cut by the byte budget"), "{stderr}");
    assert!(stdout.len() < 1_000_000, "{} bytes passed", stdout.len());
    // The crossing is audited off the data path (`Meter::report`): it may land just after the cut
    // reached the vendor (a loaded CI machine saw the client exit first).
    wait_until(Duration::from_secs(5), || {
        !audited(&b, "budget.exceeded").is_empty()
    });
    let crossed = audited(&b, "budget.exceeded");
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert_eq!(crossed[0]["detail"]["kind"], "exec");
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    assert_eq!(sessions(&b).len(), 1);
    assert_eq!(sessions(&b)[0]["end_cause"], "budget");

    // The recording cap: a session whose recording reaches it ends, the file whole and vouched for.
    let config = std::fs::read_to_string(b.data.config()).unwrap();
    let data = b.stop();
    std::fs::write(
        data.config(),
        config
            .replace("max_bytes = \"4GB\"", "max_bytes = \"200KB\"")
            .replace(
                "max_down_per_hour = \"300KB\"",
                "max_down_per_hour = \"none\"",
            ),
    )
    .unwrap();
    let b = Bastion::start(data);
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("head -c 5000000 /dev/zero")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0);
    assert!(stderr.contains("recording could not go on"), "{stderr}");
    assert!(stdout.len() < 2_000_000, "{} bytes passed", stdout.len());
    assert!(wait_until(Duration::from_secs(5), || sessions(&b)
        .iter()
        .all(|s| !s["ended_at"].is_null())));
    // Newest first, but both sessions may have started in the same second: pick the capped one by cause.
    let all = sessions(&b);
    let last = all
        .iter()
        .find(|s| s["end_cause"] == "recording")
        .unwrap_or_else(|| panic!("no session ended by its recording: {all:?}"))
        .clone();
    assert!(
        last["end_reason"].as_str().unwrap().contains("size cap"),
        "{last}"
    );
    let size = std::fs::metadata(last["recordings"][0]["path"].as_str().unwrap())
        .unwrap()
        .len();
    assert!(size <= 200_000, "{size}");
    b.data
        .run(&["session", "verify", last["id"].as_str().unwrap()])
        .ok();
    assert_eq!(audited(&b, "recording.failed").len(), 1);
}

#[test]
fn serve_refuses_to_start_half_a_bastion() {
    let data = DataDir::init();
    std::fs::write(data.path().join("ssh_host_ed25519_key"), "not a key\n").unwrap();
    let out = Command::new(crate::support::chaperone_bin())
        .arg("-c")
        .arg(data.config())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SSH host key"), "{stderr}");
    assert!(!stderr.contains("serving"), "{stderr}");
}

#[test]
fn channels_closed_just_before_a_reset_end_closed_not_lost() {
    // A client that closes its channels and then drops the connection while output is still coming
    // (its kernel resets a connection closed with unread data): the bastion's next write fails with
    // the closes unread in its socket. They were sent first, so the sessions were closed by the vendor,
    // not lost: the bastion reads what was sent before the write failed (russh patch 6), and a close
    // queued on a channel is its end even when the hang-up is seen first (`bridge::close_queued`).
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let n = 24;
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let out = client.op(json!({"op": "close-all-and-reset", "id": "x", "n": n,
        "command": "while :; do head -c 4000 /dev/zero | tr '\\0' x; echo; done"}));
    assert_eq!(out["event"], "reset", "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let all = sessions(&b);
            all.len() == n && all.iter().all(|s| !s["ended_at"].is_null())
        }),
        "{:?}\n{}",
        sessions(&b),
        b.log()
    );
    let lost: Vec<Value> = sessions(&b)
        .into_iter()
        .filter(|s| s["end_cause"] != "closed")
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {n} not closed: {lost:?}\n{}",
        lost.len(),
        b.log()
    );
}

/// An impolite client cannot hold a connection open past `[ssh] idle_timeout` by opening a channel and
/// asking nothing on it (nor by the keepalives asyncssh answers): opening counts once, then the
/// connection is idle and cut. A polite one running a silent command keeps its own.
#[test]
fn a_channel_that_asks_nothing_does_not_keep_a_connection_from_idling() {
    if !has_asyncssh() {
        missing("asyncssh (pip install asyncssh)");
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    std::fs::write(
        data.config(),
        config.replacen("idle_timeout = \"30m\"", "idle_timeout = \"4s\"", 1),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut quiet = Hostile::connect(&b, &alice, "alice+mri-01");
    assert_eq!(
        quiet.op(json!({"op": "open", "id": "a"}))["event"],
        "opened"
    );
    let closed = quiet.op(json!({"op": "wait-closed", "timeout": 15}));
    assert_eq!(closed["event"], "closed", "{closed}\n{}", b.log());
    let mut working = Hostile::connect(&b, &alice, "alice+mri-01");
    let out = working.op(json!({"op": "run", "command": "sleep 7; echo done"}));
    assert_eq!(out["event"], "exec", "{out}");
    assert_eq!(out["stdout"], "done\n", "{out}");
    let cuts = audit(&b)
        .into_iter()
        .filter(|e| e["action"] == "vendor.connections.ended")
        .count();
    assert_eq!(cuts, 1, "{:?}", audit(&b));
}

/// A client whose ssh stops reading its socket (hung, suspended, a script that stopped) while its
/// commands still print: russh's connection task waits on its write, so no keepalive goes out and the
/// running commands keep the connection from idling; before, it was held (with the vendor's place in
/// their count) for as long as the client liked. Past `[ssh] send_timeout` the connection is closed,
/// its sessions end, and the vendor can sign in again at once (one connection allowed here).
#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    if !has_asyncssh() {
        missing("asyncssh (pip install asyncssh)");
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    assert!(config.contains("send_timeout = \"5m\""), "{config}");
    std::fs::write(
        data.config(),
        config
            .replacen("send_timeout = \"5m\"", "send_timeout = \"2s\"", 1)
            .replacen(
                "max_connections_per_vendor = 64",
                "max_connections_per_vendor = 1",
                1,
            ),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut stuck = Hostile::connect(&b, &alice, "alice+mri-01");
    // 32 windows of up to 2 MiB waiting (some of each may have passed before the client stopped):
    // far more than the two kernels' socket buffers hold (about 10 MiB on loopback). With 8, a run
    // on a loaded machine once had so little window left that everything fitted and no write waited.
    let out = stuck.op(json!({"op": "stop-reading", "n": 32, "command": "cat /dev/zero"}));
    assert_eq!(out["event"], "stopped-reading", "{out}");
    let open = |b: &Bastion| {
        sessions(b)
            .into_iter()
            .filter(|s| s["ended_at"].is_null())
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || open(&b) == 0
            && audited(&b, "auth.logout").len() == 1),
        "{:?}\n{}",
        sessions(&b),
        b.log()
    );
    let logout = &audited(&b, "auth.logout")[0];
    assert!(
        logout["detail"]["ended"]
            .as_str()
            .is_some_and(|why| why.contains("took nothing") && why.contains("ssh.send_timeout")),
        "{logout}"
    );
    assert_eq!(sessions(&b).len(), 32);
    let mut next = Hostile::connect(&b, &alice, "alice+mri-01");
    let out = next.op(json!({"op": "run", "command": "echo back"}));
    assert_eq!(out["stdout"], "back\n", "{out}\n{}", b.log());
    drop(stuck);
}

/// A device that takes no input (`sleep`, a hung updater) while the vendor sends more than a window of
/// it: the bastion still reads the vendor's connection. Its other channels work, a close of the
/// channel ends the session, and so does a hang-up; before, russh's queue for the channel filled, the
/// connection was no longer read, and the session (with the device's program) outlived the vendor until
/// the idle timeout. Data a client sends past its own EOF reaches neither the device nor the recording.
#[test]
fn a_device_that_takes_no_input_does_not_keep_a_gone_vendors_session() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    let open = |b: &Bastion, command: &str| {
        sessions(b)
            .into_iter()
            .filter(|s| s["detail"] == command && s["ended_at"].is_null())
            .count()
    };

    // 16 MiB toward a program that reads nothing: 8 windows.
    flood(
        &b,
        &mut client,
        json!({"op": "flood-stdin", "id": "f", "command": "sleep 3601", "bytes": 16 << 20}),
        || open(&b, "sleep 3601") == 1,
    );
    still_read(&b, &mut client);

    // The vendor closes the channel: the session ends, not held open by what the device never took.
    let out = client.op(json!({"op": "close", "id": "f"}));
    assert_eq!(out["event"], "closed-channel", "{out}");
    assert!(
        wait_until(Duration::from_secs(8), || open(&b, "sleep 3601") == 0),
        "{:?}\n{}",
        sessions(&b),
        b.log()
    );
    // The record says the device did not take all of it.
    let recording = |command: &str| {
        sessions(&b)
            .iter()
            .filter(|s| s["detail"] == command)
            .filter_map(|s| s["recordings"][0]["path"].as_str())
            .map(|p| std::fs::read(p).unwrap())
            .next()
            .expect("the session's recording")
    };
    let said = b"before the device took all of their input";
    assert!(
        recording("sleep 3601")
            .windows(said.len())
            .any(|w| w == said)
    );

    // Past its EOF, a client's data is neither forwarded nor recorded.
    let out = client.op(json!({"op": "data-after-eof", "command": "cat; echo END",
        "before": "BEFORE-EOF\n", "after": "AFTER-EOF\n"}));
    assert_eq!(out["stdout"], "BEFORE-EOF\nEND\n", "{out}");
    let exec = recording("cat; echo END");
    assert!(exec.windows(10).any(|w| w == b"BEFORE-EOF"));
    assert!(!exec.windows(said.len()).any(|w| w == said));
    assert!(
        !exec.windows(9).any(|w| w == b"AFTER-EOF"),
        "recorded, never sent"
    );

    // The vendor hangs up while the device takes nothing: the session ends with the connection.
    flood(
        &b,
        &mut client,
        json!({"op": "flood-stdin", "id": "g", "command": "sleep 3602", "bytes": 16 << 20}),
        || open(&b, "sleep 3602") == 1,
    );
    hang_up_ends(&b, client, || open(&b, "sleep 3602") == 0);
}

/// `op`, a flood toward a device side that takes nothing, sent; what it opened seen live (`live`), and
/// given 2 s to fill the windows.
fn flood(b: &Bastion, client: &mut Hostile, op: Value, live: impl Fn() -> bool) {
    let out = client.op(op);
    assert_eq!(out["event"], "flooding", "{out}");
    assert!(wait_until(Duration::from_secs(10), live), "{}", b.log());
    std::thread::sleep(Duration::from_secs(2));
}

/// The connection is still read: another command on it runs.
fn still_read(b: &Bastion, client: &mut Hostile) {
    let out = client.op(json!({"op": "run-within", "command": "echo alive", "timeout": 10}));
    assert_eq!(
        out["stdout"],
        "alive\n",
        "the connection stopped: {out}\n{}",
        b.log()
    );
}

/// The client hangs up; `ended` holds within 8 s.
fn hang_up_ends(b: &Bastion, mut client: Hostile, ended: impl Fn() -> bool) {
    let out = client.op(json!({"op": "hang-up"}));
    assert_eq!(out["event"], "hung-up", "{out}");
    assert!(
        wait_until(Duration::from_secs(8), ended),
        "what the device held outlived its vendor: {:?}\n{}",
        sessions(b),
        b.log()
    );
}

/// A vendor's client that stops reading sessions' output (programs that print more than the windows
/// hold) does not stop the grant's device connection: the vendor's other session, which shares that
/// connection, still runs, and a hang-up ends the stalled ones. Before, the bastion stopped reading the
/// device channel while the vendor's window was full, russh's queue for it filled, and russh then stopped
/// reading the whole device connection.
#[test]
fn a_vendor_who_stops_reading_does_not_stop_the_grants_device_connection() {
    let Some((_sshd, b)) = setup("") else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+mri-01");
    // Output in large writes, and output and stderr in turns a line at a time (each its own packet
    // while the bastion takes them: a few chunks held, not a million pieces).
    let commands = [
        "head -c 64000000 /dev/zero; sleep 120",
        "awk 'BEGIN { for (i = 0; i < 3000000; i++) { print \"o\"; fflush(); \
         print \"e\" > \"/dev/stderr\"; fflush(\"/dev/stderr\") } }'; sleep 120",
    ];
    let open = |b: &Bastion| {
        sessions(b)
            .iter()
            .filter(|s| commands.contains(&s["detail"].as_str().unwrap_or("")))
            .filter(|s| s["ended_at"].is_null())
            .count()
    };
    for (id, command) in ["s", "t"].iter().zip(commands) {
        let out = client.op(json!({"op": "stall", "id": id, "command": command}));
        assert_eq!(out["event"], "stalled", "{out}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || open(&b) == 2),
        "{}",
        b.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    // `echo alive` is a session of the same grant: it shares the stalled one's device connection.
    still_read(&b, &mut client);
    hang_up_ends(&b, client, || open(&b) == 0);
}

/// Input sent while the device is still being dialled (a device slow to answer: here one that never
/// finishes its handshake, so the dial lasts the connect time-out) is held without stopping the vendor's
/// connection: another channel opens on it at once. Before, past 64 KiB the channel was not read until
/// the dial ended, and once russh's queue for it held 100 packets (1 KiB each here) russh stopped
/// reading the connection.
#[test]
fn input_sent_while_the_device_is_dialled_does_not_stop_the_vendors_connection() {
    let Some((sshd, b)) = setup("") else { return };
    let dir = tempfile::tempdir().unwrap();
    let device = stalling_device(&b, &sshd, dir.path());
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "stuck-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+stuck-01");
    let out = client.op(
        json!({"op": "flood-stdin", "id": "f", "command": "cat", "bytes": 1 << 20, "chunk": 1024}),
    );
    assert_eq!(out["event"], "flooding", "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let out = client.op(json!({"op": "open", "id": "o"}));
    assert_eq!(out["event"], "opened", "{out}\n{}", b.log());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the connection was not read while the device was dialled: {:?}",
        asked.elapsed()
    );
    drop(device);
}

/// A device port that accepts a tunnel and then takes nothing (a hung service) while the vendor sends
/// more than a window: the vendor's connection is still read, so their other channels work and their
/// hang-up ends the tunnel. Before, the tunnel read the channel only as fast as the port took bytes,
/// russh's queue for the channel filled, and the whole connection stopped being read.
#[test]
fn a_device_port_that_takes_nothing_does_not_stop_the_vendors_connection() {
    let Some((sshd, b)) = setup("") else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held_by_server = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            held_by_server.lock().unwrap().push(stream);
        }
    });
    b.device("sink-01", &sshd, &[&format!("sink:{port}/tcp")]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "sink-01", "sink", "1h");
    b.grant("alice", "sink-01", "ssh", "1h");
    let mut client = Hostile::connect(&b, &alice, "alice+sink-01");
    let open = |b: &Bastion| {
        sessions(b)
            .iter()
            .filter(|s| s["kind"] == "tunnel" && s["ended_at"].is_null())
            .count()
    };
    flood(
        &b,
        &mut client,
        json!({"op": "tunnel-flood", "host": "sink-01", "port": port, "bytes": 32 << 20}),
        || open(&b) == 1,
    );
    still_read(&b, &mut client);
    hang_up_ends(&b, client, || open(&b) == 0);
    drop(held);
}
