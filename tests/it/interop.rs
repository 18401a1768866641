//! Every common SSH client a vendor technician uses, against `chaperone serve` and a real `sshd` device:
//! OpenSSH (ssh, scp, sftp over one ControlMaster connection), PuTTY's plink (connection sharing),
//! psftp and pscp (legacy SCP, as WinSCP's SCP mode), paramiko, asyncssh and Dropbear's dbclient, each signing in with its key and a second factor
//! (once with a TOTP code, once with a passkey through the link the bastion shows in a prompt) and
//! running two commands on one connection seconds apart where the client can; the file-transfer clients
//! upload and download, and the bastion's transfer log must show both; plink, paramiko and asyncssh run a
//! command through ProxyJump, against the host key `chaperone known-hosts` pins; and every client with a
//! terminal types a line into an interactive shell (a pty with its own terminal modes), whose output
//! the recording must show; paramiko also opens a channel between its key and its second factor, which
//! must be refused at once (russh patch 11), not left unanswered. Driven by
//! `tests/interop/matrix.py`, which prints the matrix as a table. And the key exchange: an OpenSSH 9.2
//! client and device get the post-quantum `sntrup761x25519-sha512` through chaperone, as they would
//! directly.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::ldap::read_terminal_qr;
use crate::passkeys::{answer_link, token_of, vendor_add_passkey, web_bastion};
use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::{DataDir, missing, python};

/// What the matrix needs that may not be installed; each missing part is reported.
fn parts_missing() -> bool {
    let mut gone = false;
    for (program, package) in [
        ("plink", "putty-tools"),
        ("psftp", "putty-tools"),
        ("pscp", "putty-tools"),
        ("puttygen", "putty-tools"),
        ("dbclient", "dropbear-bin"),
        ("dropbearconvert", "dropbear-bin"),
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            missing(&format!("{program} ({package})"));
            gone = true;
        }
    }
    let modules = Command::new(python())
        .args(["-c", "import asyncssh, paramiko, pexpect"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !modules {
        missing(
            "python modules asyncssh, paramiko, pexpect (pip install asyncssh paramiko pexpect)",
        );
        gone = true;
    }
    gone
}

fn audit(b: &Bastion) -> Vec<Value> {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
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

/// The bastion's host key as `SHA256:…`, for PuTTY's `-hostkey`.
fn fingerprint(known_hosts: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(known_hosts)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    out.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {out}"))
        .to_owned()
}

#[test]
fn every_common_client_signs_in_runs_two_commands_and_transfers_files() {
    if parts_missing() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let page = web_bastion(DataDir::init());
    let b = &page._b;
    b.device("mri-01", &sshd, &[]);
    let dir = tempfile::tempdir().unwrap();
    let clients = [
        "openssh", "plink", "psftp", "pscp", "paramiko", "asyncssh", "dbclient",
    ];
    // Every client three times: a new vendor's first login, which enrols a TOTP app from the QR code
    // and the secret in the prompt; a TOTP code; and a passkey through the link the bastion shows in
    // a prompt. One vendor per run: a TOTP code is good once, and three steps are valid at a time.
    let mut runs = Vec::new();
    let mut passkeys = HashMap::new();
    for second in ["enroll", "totp", "passkey"] {
        for client in clients {
            let name = format!("{}-{client}", &second[..1]);
            let v = if second == "enroll" {
                b.vendor_to_enrol(&name, "Interop Imaging")
            } else {
                b.vendor(&name, "Interop Imaging")
            };
            b.grant(&v.name, "mri-01", "ssh", "1h");
            if second == "passkey" {
                let mut key = SoftPasskey::new(true);
                let (err, code, _) = vendor_add_passkey(b, &page, &v, &mut key);
                assert_eq!(code, 0, "{err}");
                passkeys.insert(runs.len() as u64, key);
            }
            runs.push(json!({
                "client": client, "second": second,
                "vendor": v.name, "key": v.key, "secret": v.secret,
            }));
        }
    }
    // What the inner session of a ProxyJump presents, pinned as a vendor would pin it.
    let inner_known_hosts = dir.path().join("inner_known_hosts");
    std::fs::write(
        &inner_known_hosts,
        b.data.run(&["known-hosts"]).ok().stdout(),
    )
    .unwrap();
    let spec = json!({
        "host": "127.0.0.1",
        "device_user": sshd.user,
        "inner_known_hosts": inner_known_hosts,
        "port": b.ssh_port,
        "known_hosts": b.known_hosts,
        "fingerprint": fingerprint(&b.known_hosts),
        "asset": "mri-01",
        "dir": dir.path(),
        "runs": runs,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/matrix.py");
    let mut matrix = Command::new(python())
        .arg(script)
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = matrix.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // The matrix prints each link a client showed; the vendor's passkey answers it, as in a browser,
    // and the client is told to press Enter. A link the page refuses fails that client's sign-in.
    let mut rows: Vec<Value> = Vec::new();
    let mut refused = Vec::new();
    for line in BufReader::new(matrix.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let Some(link) = v["link"].as_str() else {
            rows.push(v);
            continue;
        };
        let run = v["run"].as_u64().unwrap();
        let key = passkeys
            .get_mut(&run)
            .unwrap_or_else(|| panic!("a link for run {run}, which signs in with a code"));
        let done = answer_link(&page, &token_of(link), key);
        if done.status != 200 {
            refused.push(format!("run {run}: {} {}", done.status, done.body));
        }
        std::fs::write(dir.path().join(format!("answered-{run}")), "").unwrap();
    }
    matrix.wait().unwrap();
    let stderr = stderr.join().unwrap();
    // The matrix, for whoever reads the test's output.
    eprintln!("{stderr}");
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(rows.len(), runs.len(), "{rows:?}\n{stderr}");
    let failed: Vec<&Value> = rows.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "{failed:?}\n{stderr}\n{}", b.log());

    // The bastion's own records agree with what the clients saw.
    assert!(wait_until(Duration::from_secs(10), || {
        sessions(b).iter().all(|s| !s["ended_at"].is_null())
    }));
    let all_sessions = sessions(b);
    let events = audit(b);
    for row in &rows {
        let client = row["client"].as_str().unwrap();
        let second = row["second"].as_str().unwrap();
        let vendor = runs[row["run"].as_u64().unwrap() as usize]["vendor"]
            .as_str()
            .unwrap();
        // A passkey vendor's one TOTP login is the one that added the passkey; an enrolling vendor's
        // logins are all by code, the first one enrolling.
        let by = if second == "passkey" {
            "passkey"
        } else {
            "totp"
        };
        let mine_only = |e: &&Value| e["subject"] == format!("vendor:{vendor}");
        let logins = events
            .iter()
            .filter(mine_only)
            .filter(|e| e["action"] == "auth.login")
            .filter(|e| {
                let detail: Value = serde_json::from_str(e["detail"].as_str().unwrap()).unwrap();
                detail["second_factor"] == by
            })
            .count();
        // What an authenticator app would scan in this client: the vendor's own secret.
        if row["qr"] == true {
            let drawn = &row["qr_drawn"];
            let rows: Vec<&str> = drawn["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let uri = read_terminal_qr(&rows.join("\n"));
            assert!(
                uri.starts_with(&format!("otpauth://totp/chaperone:{vendor}?"))
                    && uri.contains(&format!("secret={}", drawn["secret"].as_str().unwrap())),
                "{client} ({second}): the QR code holds {uri}"
            );
        }
        let enrolled = events
            .iter()
            .filter(mine_only)
            .filter(|e| e["action"] == "vendor.totp.enroll")
            .count();
        assert_eq!(
            enrolled,
            usize::from(second == "enroll"),
            "{client} ({second}): enrollments in the audit log"
        );
        assert_eq!(
            logins as u64,
            row["connections"].as_u64().unwrap(),
            "{client} ({second}): sign-ins in the audit log"
        );
        let mine: Vec<&Value> = all_sessions
            .iter()
            .filter(|s| s["vendor"] == vendor)
            .collect();
        for command in row["commands"].as_array().unwrap().iter().enumerate() {
            let word = if command.0 == 0 { "one" } else { "two" };
            let wanted = format!("echo {client}-{word}");
            assert!(
                mine.iter()
                    .any(|s| s["kind"] == "exec" && s["detail"] == wanted.as_str()),
                "{client} ({second}): no exec session for {wanted:?} in {mine:?}"
            );
        }
        if row["shell"].is_string() {
            let shells: Vec<&&Value> = mine.iter().filter(|s| s["kind"] == "shell").collect();
            assert!(
                shells.iter().any(|s| {
                    std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap())
                        .unwrap()
                        .contains("shell-42")
                }),
                "{client} ({second}): no recorded shell shows the typed line's output: {shells:?}"
            );
        }
        if row["jump"].is_string() {
            let wanted = format!("echo {client}-jump");
            assert!(
                mine.iter()
                    .any(|s| s["kind"] == "exec" && s["detail"] == wanted.as_str()),
                "{client} ({second}): no exec session for {wanted:?} in {mine:?}"
            );
            assert!(
                mine.iter().any(|s| s["kind"] == "jump"),
                "{client} ({second}): no jump session in {mine:?}"
            );
        }
        if let Some(remote) = row["uploaded"].as_str() {
            let logs: String = mine
                .iter()
                .filter(|s| s["kind"] == "sftp")
                .map(|s| {
                    std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap()
                })
                .collect();
            // The device's path: SFTP names it in each request, legacy SCP in its command (a download's
            // files sit in its path's directory, an upload names it as its target).
            assert!(
                logs.contains(remote)
                    && logs.contains("\"upload\"")
                    && logs.contains("\"download\"")
                    && logs.contains("100000"),
                "{client} ({second}): the transfer log lacks the upload or download of {remote}: {logs}\nsessions: {mine:?}"
            );
        }
    }
}

/// OpenSSH 9.0–9.8 (Debian 12's 9.2 here) prefers `sntrup761x25519-sha512@openssh.com`: through
/// chaperone the vendor leg and the device leg both use it, as a direct connection would.
#[test]
fn openssh_9_2_negotiates_the_post_quantum_key_exchange_on_both_legs() {
    let Some(sshd) = Sshd::start() else { return };
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &[]);
    let v = b.vendor("pq", "Interop Imaging");
    b.grant("pq", "mri-01", "ssh", "1h");
    let out = b
        .ssh_with(&v, &["-v"], "pq+mri-01")
        .arg("echo pq-ok")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!((stdout.trim(), code), ("pq-ok", 0), "{stderr}");
    let offered_pq = Command::new("ssh")
        .args(["-Q", "kex"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("sntrup761x25519-sha512"))
        .unwrap_or(false);
    assert!(offered_pq, "this OpenSSH client has no sntrup761x25519");
    assert!(
        stderr.contains("kex: algorithm: sntrup761x25519-sha512"),
        "vendor leg: {}",
        stderr
            .lines()
            .filter(|l| l.contains("kex"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        wait_until(Duration::from_secs(5), || b.log().lines().any(|l| l
            .contains("device key exchange done")
            && l.contains("sntrup761x25519-sha512"))),
        "device leg: {}",
        b.log()
            .lines()
            .filter(|l| l.contains("key exchange"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
