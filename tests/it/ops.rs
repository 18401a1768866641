//! Running it in a hospital (issue 14): the operators' listener (`/metrics` checked by Prometheus' own
//! `promtool`, `/healthz`, `/readyz`) moves when a real session runs, and `chaperone backup` taken while
//! a session is live restores into a new directory where `audit verify` and `session verify` pass.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::{DataDir, chaperone_bin, free_port, missing};

/// `GET http://127.0.0.1:PORT/PATH`: (status, body).
pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The value of the sample `name{labels}` (exactly as exposed), 0 when absent.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `promtool check metrics` (Debian's prometheus package) on the page; panics with its complaints.
fn promtool_accepts(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(
        code, 0,
        "promtool refuses /metrics:\n{stdout}{stderr}\n{metrics}"
    );
}

fn sessions(dir_config: &Path) -> serde_json::Value {
    let out = Command::new(chaperone_bin())
        .arg("-c")
        .arg(dir_config)
        .args(["session", "list", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_move_with_a_session_and_a_backup_taken_meanwhile_restores_and_verifies() {
    if Command::new("promtool").arg("--version").output().is_err() {
        missing("promtool (apt prometheus)");
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let data = DataDir::init();
    let ops = free_port();
    let mut config = std::fs::read_to_string(data.config()).unwrap();
    config.push_str(&format!("\n[ops]\nlisten = \"127.0.0.1:{ops}\"\n"));
    std::fs::write(data.config(), config).unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");

    assert_eq!(get(ops, "/healthz").0, 200);
    // The listener needs no sign-in, so it is capped like the web's: one address holding idle
    // connections gets a few places (the rest are closed at once), and the endpoints still answer.
    let idle: Vec<std::net::TcpStream> = (0..20)
        .filter_map(|_| crate::support::web::tcp_from("127.0.0.7", ops).ok())
        .collect();
    let closed = idle
        .iter()
        .filter(|c| {
            use std::io::Read as _;
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            matches!((&**c).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert_eq!(closed, 20 - 8, "idle connections past the per-address cap");
    assert_eq!(get(ops, "/healthz").0, 200);
    drop(idle);
    let (code, ready) = get(ops, "/readyz");
    assert_eq!(code, 200, "{ready}");
    let (code, before) = get(ops, "/metrics");
    assert_eq!(code, 200);
    promtool_accepts(&before);
    assert!(
        before.contains("chaperone_build_info{version=\""),
        "{before}"
    );
    assert_eq!(
        sample(&before, "chaperone_sessions_total{kind=\"exec\"}"),
        0.0
    );

    // A session that ends, and one that stays live while the backup is taken.
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("echo metered-$((6*7))")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}{stderr}\n{}", b.log());
    assert!(stdout.contains("metered-42"));
    let mut shell = b
        .ssh_with(&alice, &["-tt"], "alice+mri-01")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = shell.stdin.take().unwrap();
    input.write_all(b"echo live-shell\n").unwrap();
    let config = b.data.config();
    assert!(
        wait_until(Duration::from_secs(15), || sessions(&config)
            .as_array()
            .unwrap()
            .iter()
            // The exec session's end may still be on its way: wait for the shell itself.
            .any(|s| s["kind"] == "shell" && s["ended_at"].is_null())),
        "no live session: {}",
        b.log()
    );

    // The session's row is written before its live gauge moves (the bridge registers it once the
    // device answers): wait for the gauge, not just the row.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let (_, m) = get(ops, "/metrics");
            sample(&m, "chaperone_live_sessions{kind=\"shell\"}") == 1.0
        }),
        "the live shell never showed in the metrics\n{}",
        b.log()
    );
    let (_, during) = get(ops, "/metrics");
    promtool_accepts(&during);
    assert_eq!(
        sample(&during, "chaperone_sessions_total{kind=\"exec\"}"),
        1.0,
        "{during}"
    );
    assert_eq!(
        sample(&during, "chaperone_live_sessions{kind=\"shell\"}"),
        1.0,
        "{during}"
    );
    assert!(sample(&during, "chaperone_ssh_logins_total{outcome=\"success\"}") >= 2.0);
    assert!(sample(&during, "chaperone_relayed_bytes_total{direction=\"down\"}") >= 9.0);
    assert!(sample(&during, "chaperone_recording_bytes_total") > 0.0);
    assert_eq!(sample(&during, "chaperone_active_grants"), 1.0);
    assert_eq!(sample(&during, "chaperone_db_up"), 1.0);
    assert!(
        during.contains("\nchaperone_audit_head_sealed 1\n"),
        "{during}"
    );

    // The backup, online, with the shell still open. A newline in its name (restore writes the path
    // in the restored config's first comment line) must not start a config line there.
    let archive = b.data.path().join("node\n[not a table\n.backup");
    // An output that exists already: refused, and no copy of the database is left anywhere (the
    // unsealed snapshot is made only once the output is the backup's own, and removed after).
    let shared = tempfile::tempdir().unwrap();
    // An evidence signer rotated before it: the retired key goes with the backup.
    b.data.run(&["evidence", "signer"]).ok();
    // Rotated by root (under sudo), the new key stays the old key's owner's (the service's user).
    let signing = b.data.path().join("evidence_ed25519_key");
    let root = crate::support::running_as_root();
    if root {
        std::os::unix::fs::chown(&signing, Some(65534), Some(65534)).unwrap();
    }
    b.data.run(&["evidence", "signer", "--rotate"]).ok();
    if root {
        crate::support::assert_owned_by(
            &[
                signing.clone(),
                signing.with_extension("retired"),
                b.data.path().join("evidence_ed25519_key.pub"),
            ],
            65534,
        );
    }
    let signers = b.data.run(&["evidence", "signer"]).ok().stdout();
    assert_eq!(signers.matches("ssh-ed25519").count(), 2, "{signers}");
    let taken = shared.path().join("taken.backup");
    std::fs::write(&taken, b"someone else's").unwrap();
    b.data
        .run(&["backup", "-o", &taken.to_string_lossy()])
        .fails(1);
    let scratch = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".chaperone-backup")
            })
            .count()
    };
    assert_eq!(scratch(shared.path()) + scratch(b.data.path()), 0);
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
    let run = b.data.run(&["backup", "-o", &archive.to_string_lossy()]);
    assert!(
        run.ok()
            .stderr()
            .contains("warning: this backup is not sealed"),
        "no warning"
    );
    assert_eq!(scratch(b.data.path()), 0);
    input.write_all(b"exit\n").unwrap();
    drop(input);
    let _ = shell.wait_with_output();
    let (_, after) = get(ops, "/metrics");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, m) = get(ops, "/metrics");
            sample(&m, "chaperone_live_sessions{kind=\"shell\"}") == 0.0
        }),
        "{after}"
    );

    // Restored elsewhere: the chain verifies, and so does the finished session's recording.
    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("node");
    // With a passphrase, an archive that is not sealed is refused: it is not one sealed with it (a
    // backup swapped where it was kept would bring its own keys and accounts).
    let passphrase = restored.path().join("passphrase");
    std::fs::write(&passphrase, "a long enough passphrase\n").unwrap();
    let out = Command::new(chaperone_bin())
        .arg("restore")
        .arg(&archive)
        .arg("--dir")
        .arg(&target)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("is not sealed, but a passphrase was given"),
        "{stderr}"
    );
    assert!(!target.exists());
    // An archive whose manifest names another audit head than its database holds (a forged log
    // borrowing a genuine head for the operator to compare): refused, not printed as the head.
    let mut bytes = std::fs::read(&archive).unwrap();
    let field = b"\"audit_head_hash\": \"";
    let at = bytes
        .windows(field.len())
        .position(|w| w == field)
        .expect("manifest head")
        + field.len();
    for b in &mut bytes[at..at + 64] {
        *b = if *b == b'0' { b'1' } else { b'0' };
    }
    let forged = restored.path().join("forged.backup");
    std::fs::write(&forged, &bytes).unwrap();
    let out = Command::new(chaperone_bin())
        .arg("restore")
        .arg(&forged)
        .arg("--dir")
        .arg(restored.path().join("forged"))
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("does not hold this backup's head"),
        "{stderr}"
    );
    let out = Command::new(chaperone_bin())
        .arg("restore")
        .arg(&archive)
        .arg("--dir")
        .arg(&target)
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "restore: {stdout}{stderr}");
    assert!(stdout.contains("held by the restored log"), "{stdout}");
    assert!(
        stdout.contains("it was not sealed, so nothing proves who made it"),
        "{stdout}"
    );
    let restored_config = target.join("chaperone.toml");
    let run = |args: &[&str]| {
        let out = Command::new(chaperone_bin())
            .arg("-c")
            .arg(&restored_config)
            .args(args)
            .output()
            .unwrap();
        text(&out)
    };
    let (stdout, stderr, code) = run(&["audit", "verify"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Bundles signed before the rotation still verify against the restored node's signers.
    let (stdout, stderr, code) = run(&["evidence", "signer"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, signers);
    let first = std::fs::read_to_string(&restored_config).unwrap();
    assert!(
        first
            .lines()
            .next()
            .unwrap()
            .contains("node?[not a table?.backup"),
        "{first}"
    );
    let list = sessions(&restored_config);
    let exec = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "exec")
        .unwrap_or_else(|| panic!("no exec session restored: {list}"));
    let (stdout, stderr, code) = run(&["session", "verify", exec["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The recordings now live in the restored directory, not the original one.
    let path = exec["recordings"][0]["path"].as_str().unwrap();
    assert!(
        path.starts_with(&target.canonicalize().unwrap().display().to_string()),
        "{path}"
    );
    let (stdout, _, code) = run(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"action\":\"backup.restore\""), "{stdout}");
    // The archive holds the event of its own making: who, where to, not sealed.
    let made = stdout
        .lines()
        .find(|l| l.contains("\"action\":\"backup.create\"") && l.contains("not a table"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        made.contains("os:")
            && made.contains(r"node\\n[not a table\\n.backup")
            && made.contains(r#"\"sealed\":false"#),
        "{made}"
    );
}
