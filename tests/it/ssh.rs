//! The vendor's SSH front door, end to end: the real OpenSSH client (`ssh`, `scp`, `sftp`) against
//! `chaperone serve` against a real `sshd` standing in for the device.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::bastion::{Bastion, Vendor, text, wait_until};
use crate::support::sshd::Sshd;
use crate::support::{DataDir, missing};
use serde_json::Value;

/// sshd + chaperone with one device `mri-01`; `None` when sshd is missing (and not required).
fn setup() -> Option<(Sshd, Bastion)> {
    let sshd = Sshd::start()?;
    let bastion = Bastion::start(DataDir::init());
    bastion.device("mri-01", &sshd, &["dicom:104/tcp"]);
    Some((sshd, bastion))
}

/// Starts an OpenSSH multiplexing master for `vendor` to `target` (signed in with key and code), in the
/// background; returns the `-o` value that sends later sessions through it.
fn control_master(b: &Bastion, vendor: &Vendor, dir: &std::path::Path, target: &str) -> String {
    let control = format!("ControlPath={}", dir.join("cm").display());
    let out = b
        .ssh_with(
            vendor,
            &[
                "-o",
                "ControlMaster=yes",
                "-o",
                &control,
                "-o",
                "ControlPersist=60",
                "-fN",
            ],
            target,
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    control
}

fn session_json(b: &Bastion) -> serde_json::Value {
    b.data.run(&["session", "list", "--json"]).ok().json()
}

/// Runs `cmd` with `input` on its stdin (closed after it); its output.
fn fed(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// How many sessions `session list --text WORDS` finds.
fn sessions_with_text(b: &Bastion, words: &str) -> usize {
    b.data
        .run(&["session", "list", "--json", "--text", words])
        .ok()
        .json()
        .as_array()
        .map_or(0, Vec::len)
}

/// Waits (up to 5 s) until every session has ended.
fn wait_until_all_ended(b: &Bastion) {
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(5), || {
            session_json(b)
                .as_array()
                .unwrap()
                .iter()
                .all(|s| !s["ended_at"].is_null())
        }),
        "sessions still open: {}",
        session_json(b)
    );
}

/// Waits (up to 15 s) until a session is open.
fn wait_for_a_live_session(b: &Bastion) {
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(15), || {
            session_json(b)
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["ended_at"].is_null())
        }),
        "no session opened: {}",
        session_json(b)
    );
}

fn audit_lines(b: &Bastion) -> String {
    b.data
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout()
}

/// What a full-screen program showed on a real terminal session, through the real client, recorder and
/// indexer, is found by text: a value the device computed and drew on the alternate screen (the command
/// line typed shows only the formula), then left.
#[test]
fn what_a_full_screen_program_showed_is_searchable() {
    let Some((_sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let out = fed(
        &mut b.ssh_with(&alice, &["-tt"], "alice+mri-01"),
        b"printf '\\033[?1049h\\033[H\\033[2Jcoil_gain = %d\\r\\n~' $((6*7)); sleep 1; printf '\\033[?1049l'\nexit\n",
    );
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    wait_until_all_ended(&b);
    let found = |words: &str| sessions_with_text(&b, words);
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(20), || found("coil_gain = 42")
            == 1),
        "the alternate screen's text never became searchable\n{}",
        b.log()
    );
    assert_eq!(found("coil_gain = 41"), 0);
}

#[test]
fn exec_and_shell_reach_the_device_with_exit_codes_and_are_recorded() {
    let Some((_sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");

    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("echo hello-from-device; echo to-stderr >&2; exit 3")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(
        code,
        3,
        "stdout: {stdout}\nstderr: {stderr}\nlog: {}",
        b.log()
    );
    assert!(stdout.contains("hello-from-device"), "{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");

    let out = fed(
        &mut b.ssh_with(&alice, &["-tt"], "alice+mri-01"),
        b"echo shell-$((6*7))\nexit 5\n",
    );
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 5, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("shell-42"), "{stdout}");

    // Both sessions are on record with a digest, and the recordings play in the stock player.
    wait_until_all_ended(&b);
    let sessions = session_json(&b);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    for s in sessions {
        let rec = &s["recordings"][0];
        // An exec without a pty is recorded byte for byte; a shell as asciicast.
        let format = if s["kind"] == "exec" {
            "exec-stream-v1"
        } else {
            "asciicast-v2"
        };
        assert_eq!(rec["format"], format, "{s}");
        let path = rec["path"].as_str().unwrap();
        let digest = chaperone_recorder::sha256_file(path).unwrap();
        assert_eq!(rec["sha256"].as_str(), Some(digest.as_str()));
        let id = s["id"].as_str().unwrap();
        b.data.run(&["session", "verify", id]).ok();
    }
    let exec = sessions.iter().find(|s| s["kind"] == "exec").unwrap();
    assert_eq!(
        exec["detail"],
        "echo hello-from-device; echo to-stderr >&2; exit 3"
    );
    let exported = b.data.path().join("exec.cast");
    b.data
        .run(&[
            "session",
            "export",
            exec["id"].as_str().unwrap(),
            "-o",
            exported.to_str().unwrap(),
        ])
        .ok();
    let cast = chaperone_recorder::parse_cast(std::fs::File::open(&exported).unwrap()).unwrap();
    assert_eq!(
        cast.header.command.as_deref(),
        Some("echo hello-from-device; echo to-stderr >&2; exit 3")
    );
    assert!(cast.text().contains("hello-from-device") && cast.text().contains("to-stderr"));
    let played = asciinema_cat(&exported);
    if let Some(played) = played {
        assert!(
            played.contains("hello-from-device") && played.contains("to-stderr"),
            "{played}"
        );
    }
    // `session play` shows the same in this terminal: stdout to stdout, stderr to stderr.
    let played = b.data.run(&[
        "session",
        "play",
        exec["id"].as_str().unwrap(),
        "--max-wait",
        "0",
    ]);
    assert!(played.ok().stdout().contains("hello-from-device"));
    assert!(played.stderr().contains("to-stderr"), "{}", played.stderr());
    assert!(!played.stdout().contains("to-stderr"));
    // A shell is recorded as text only: there are no raw bytes to export.
    let shell_id = sessions.iter().find(|s| s["kind"] == "shell").unwrap()["id"]
        .as_str()
        .unwrap();
    let raw = b.data.path().join("shell.raw");
    let run = b.data.run(&[
        "session",
        "export",
        shell_id,
        "-o",
        raw.to_str().unwrap(),
        "--raw",
    ]);
    assert!(
        run.fails(1).stderr().contains("without --raw"),
        "{}",
        run.stderr()
    );
    assert!(!raw.exists());
    let shell_rec =
        sessions.iter().find(|s| s["kind"] == "shell").unwrap()["recordings"][0]["path"]
            .as_str()
            .unwrap()
            .to_owned();
    let cast = chaperone_recorder::parse_cast(std::fs::File::open(&shell_rec).unwrap()).unwrap();
    assert!(cast.text().contains("shell-42"), "{}", cast.text());
    let played = b.data.run(&[
        "session",
        "play",
        shell_id,
        "--max-wait",
        "0",
        "--speed",
        "4",
    ]);
    assert!(
        played.ok().stdout().contains("shell-42"),
        "{}",
        played.stdout()
    );
    for (bad, named) in [
        ("--speed=0", "--speed"),
        ("--speed=nan", "--speed"),
        ("--max-wait=-1", "--max-wait"),
    ] {
        let run = b.data.run(&["session", "play", shell_id, bad]);
        assert!(run.fails(1).stderr().contains(named), "{}", run.stderr());
    }
    // Typed input is not recorded by default.
    assert!(
        !std::fs::read_to_string(&shell_rec)
            .unwrap()
            .contains("\"i\"")
    );

    // An altered recording is caught.
    let mut bytes = std::fs::read(&shell_rec).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 1;
    std::fs::write(&shell_rec, bytes).unwrap();
    let id = sessions.iter().find(|s| s["kind"] == "shell").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = b.data.run(&["session", "verify", &id]);
    assert!(
        run.fails(1).stderr().contains("ALTERED"),
        "{}",
        run.stderr()
    );
    let run = b.data.run(&["session", "play", &id, "--max-wait", "0"]);
    assert!(
        run.fails(1).stderr().contains("ALTERED"),
        "{}",
        run.stderr()
    );
    assert!(
        !run.stdout().contains("shell-42"),
        "nothing of it is played"
    );

    let audit = audit_lines(&b);
    assert!(
        audit.contains("\"session.start\"")
            && audit.contains("\"session.end\"")
            && audit.contains("recording_sha256")
    );
    b.data.run(&["audit", "verify"]).ok();
}

/// Issue 3: an exec without a pty is recorded 1:1 (not as asciicast, which mangles bytes that are not UTF-8
/// and makes a NUL 6 bytes), exports exactly, still exports as a playable .cast, and tampering is caught.
/// A command's stdin is a program's input (a script for `sh`), not keystrokes: recorded whatever
/// `recording.record_input` says (off here), and exported byte for byte.
#[test]
fn a_commands_stdin_is_recorded_even_without_record_input() {
    let Some((_sshd, b)) = setup() else { return };
    let kate = b.vendor("kate", "Acme Imaging");
    b.grant("kate", "mri-01", "ssh", "1h");
    let script = b"echo from-script-$((6*7))\nprintf '\\377\\0'\n";
    let out = fed(b.ssh(&kate, "kate+mri-01").arg("sh"), script);
    assert_eq!(out.stdout, b"from-script-42\n\xff\0", "{:?}", text(&out));
    wait_until_all_ended(&b);
    let id = session_json(&b)[0]["id"].as_str().unwrap().to_owned();
    let stdin = b.data.path().join("kate.stdin");
    b.data
        .run(&[
            "session",
            "export",
            &id,
            "-o",
            stdin.to_str().unwrap(),
            "--raw",
            "--stream",
            "stdin",
        ])
        .ok();
    assert_eq!(std::fs::read(&stdin).unwrap(), script);

    // A shell without a terminal (`ssh -T`) reads a script the same way: recorded too, byte for byte
    // (a binary fed to it is what the device ran; a cast would keep U+FFFD where its bytes were).
    let script = b"echo via-shell-$((6*7))\nhead -c 3 >/dev/null; exit\n\xff\x00\x80";
    let out = fed(&mut b.ssh_with(&kate, &["-T"], "kate+mri-01"), script);
    assert!(text(&out).0.contains("via-shell-42"), "{:?}", text(&out));
    wait_until_all_ended(&b);
    let shell = session_json(&b)
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "shell")
        .expect("the shell's session")
        .clone();
    assert_eq!(
        shell["recordings"][0]["format"], "exec-stream-v1",
        "{shell}"
    );
    let id = shell["id"].as_str().unwrap();
    b.data
        .run(&[
            "session",
            "export",
            id,
            "-o",
            stdin.with_extension("shell").to_str().unwrap(),
            "--raw",
            "--stream",
            "stdin",
        ])
        .ok();
    assert_eq!(
        std::fs::read(stdin.with_extension("shell")).unwrap(),
        script
    );
    // What it was sent is searchable: a shell without a terminal has its commands nowhere else.
    let found = |words: &str| sessions_with_text(&b, words);
    assert!(
        wait_until(Duration::from_secs(20), || found(">/dev/null; exit") == 1),
        "the shell's input never became searchable\n{}",
        b.log()
    );

    // A command that is not UTF-8 would be recorded as other text than the device runs: refused.
    use std::os::unix::ffi::OsStrExt;
    let out = b
        .ssh(&kate, "kate+mri-01")
        .arg(std::ffi::OsStr::from_bytes(b"echo caf\xe9"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("not UTF-8"), "{stderr}");
}

#[test]
fn exec_without_a_pty_is_recorded_byte_for_byte() {
    let Some((_sshd, b)) = setup() else { return };
    let kate = b.vendor("kate", "Acme Imaging");
    b.grant("kate", "mri-01", "ssh", "1h");
    let out = b
        .ssh(&kate, "kate+mri-01")
        .arg("head -c 100000 /dev/urandom; head -c 3000 /dev/zero; printf 'warn\\0\\377' >&2")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}\n{}", text(&out), b.log());
    assert_eq!(out.stdout.len(), 103_000);
    assert_eq!(out.stderr, b"warn\0\xff");

    wait_until_all_ended(&b);
    let sessions = session_json(&b);
    let s = &sessions.as_array().unwrap()[0];
    let id = s["id"].as_str().unwrap();
    let rec = &s["recordings"][0];
    assert_eq!(rec["format"], "exec-stream-v1");
    let path = std::path::PathBuf::from(rec["path"].as_str().unwrap());
    assert!(path.to_str().unwrap().ends_with(".exec"));
    // 1:1 plus a header and 13 bytes per frame: nowhere near asciicast's 6 bytes per NUL.
    let size = std::fs::metadata(&path).unwrap().len();
    assert!((103_005..110_000).contains(&size), "{size}");
    assert_eq!(rec["size"].as_i64(), Some(size as i64));
    assert_eq!(
        rec["sha256"].as_str(),
        Some(chaperone_recorder::sha256_file(&path).unwrap().as_str())
    );
    b.data.run(&["session", "verify", id]).ok();

    let dir = b.data.path();
    let export = |file: &str, extra: &[&str]| {
        let out = dir.join(file);
        let mut args = vec!["session", "export", id, "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        (b.data.run(&args), out)
    };
    let (run, stdout) = export("kate.stdout", &["--raw"]);
    run.ok();
    assert!(
        std::fs::read(&stdout).unwrap() == out.stdout,
        "stdout differs"
    );
    let (run, stderr) = export("kate.stderr", &["--raw", "--stream", "stderr"]);
    run.ok();
    assert_eq!(std::fs::read(&stderr).unwrap(), out.stderr);
    // Never over an existing file.
    let (run, _) = export("kate.stdout", &["--raw"]);
    run.fails(1);
    assert!(std::fs::read(&stdout).unwrap() == out.stdout);

    let (run, cast_path) = export("kate.cast", &[]);
    run.ok();
    let cast = chaperone_recorder::parse_cast(std::fs::File::open(&cast_path).unwrap()).unwrap();
    assert_eq!(
        cast.header.command.as_deref(),
        Some("head -c 100000 /dev/urandom; head -c 3000 /dev/zero; printf 'warn\\0\\377' >&2")
    );
    assert!(
        cast.header.title.as_deref().unwrap().contains(id),
        "{:?}",
        cast.header
    );
    // sshd reads the program's stdout and stderr from two pipes, so their order relative to each other
    // is the device's, not the program's: check each stream's bytes, not their interleaving.
    let played = cast.text();
    assert!(played.contains("warn\0\u{FFFD}"), "stderr missing");
    assert!(
        played
            .replacen("warn\0\u{FFFD}", "", 1)
            .ends_with(&"\0".repeat(3000)),
        "stdout's end missing"
    );
    if let Some(played) = asciinema_cat(&cast_path) {
        assert!(played.contains("warn"), "{played}");
    }

    // The command's exit status is in the recording, recorded before the vendor got it.
    let bytes = std::fs::read(&path).unwrap();
    let mut reader = chaperone_recorder::ExecReader::new(&bytes[..]).unwrap();
    let mut notices = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        if let chaperone_recorder::FrameData::Marker(label) = frame.data {
            notices.push(label.to_owned());
        }
    }
    assert!(
        notices
            .iter()
            .any(|n| n.contains("the device's command exited with status 0")),
        "{notices:?}"
    );

    // One flipped bit in the recorded bytes is caught by verify, and export refuses.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let run = b.data.run(&["session", "verify", id]);
    assert!(
        run.fails(1).stderr().contains("ALTERED"),
        "{}",
        run.stderr()
    );
    let (run, tampered) = export("tampered.raw", &["--raw"]);
    assert!(
        run.fails(1).stderr().contains("ALTERED"),
        "{}",
        run.stderr()
    );
    assert!(!tampered.exists());
}

/// `asciinema cat FILE` (asciinema 2.4, from PyPI): what the stock player prints, or None when missing.
pub(crate) fn asciinema_cat(path: &std::path::Path) -> Option<String> {
    match Command::new("asciinema")
        .arg("cat")
        .arg(path)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "asciinema cat failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(_) => {
            missing("asciinema (pip install asciinema==2.4.0)");
            None
        }
    }
}

#[test]
fn scp_and_sftp_pass_through_the_grant_and_leave_a_transfer_log() {
    let Some((_sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("coil-log.tgz");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    let remote = format!("/tmp/chaperone-scp-{}", chaperone::secrets::random_hex(4));

    let scp = |args: &[&str]| {
        let mut c = Command::new("scp");
        c.args(b.client_options(&alice))
            .arg("-P")
            .arg(b.ssh_port.to_string())
            .args(args);
        for (k, v) in b.askpass_env(&alice) {
            c.env(k, v);
        }
        c.env_remove("DISPLAY").stdin(Stdio::null());
        c.output().unwrap()
    };
    let out = scp(&[
        local.to_str().unwrap(),
        &format!("alice+mri-01@127.0.0.1:{remote}"),
    ]);
    assert!(
        out.status.success(),
        "scp up: {:?}\n{}",
        text(&out),
        b.log()
    );
    let back = dir.path().join("back.tgz");
    let out = scp(&[
        "-o",
        "User=alice+mri-01",
        &format!("127.0.0.1:{remote}"),
        back.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "scp down: {:?}", text(&out));
    assert_eq!(std::fs::read(&back).unwrap(), payload);
    // Legacy SCP (`scp -O`; WinSCP and pscp in SCP mode speak it too) runs as an exec on the device and
    // is logged as a transfer all the same: the file's name and size, up and down.
    let legacy = format!("{remote}-legacy");
    let out = scp(&[
        "-O",
        local.to_str().unwrap(),
        &format!("alice+mri-01@127.0.0.1:{legacy}"),
    ]);
    assert!(
        out.status.success(),
        "scp -O up: {:?}\n{}",
        text(&out),
        b.log()
    );
    let back_legacy = dir.path().join("back-legacy.tgz");
    let out = scp(&[
        "-O",
        "-o",
        "User=alice+mri-01",
        &format!("127.0.0.1:{legacy}"),
        back_legacy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "scp -O down: {:?}", text(&out));
    assert_eq!(std::fs::read(&back_legacy).unwrap(), payload);

    let batch = dir.path().join("batch");
    std::fs::write(&batch, format!("ls {remote}\nrm {remote}\nrm {legacy}\n")).unwrap();
    let mut sftp = Command::new("sftp");
    sftp.args(b.client_options(&alice)).args([
        "-o",
        "BatchMode=no",
        "-P",
        &b.ssh_port.to_string(),
        "-b",
        batch.to_str().unwrap(),
        "alice+mri-01@127.0.0.1",
    ]);
    for (k, v) in b.askpass_env(&alice) {
        sftp.env(k, v);
    }
    let out = sftp
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "sftp: {:?}", text(&out));

    wait_until_all_ended(&b);
    let sessions = session_json(&b);
    let logs: Vec<String> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "sftp")
        .map(|s| std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(logs.len(), 5, "{sessions}");
    let legacy_logs: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("coil-log.tgz") || l.contains("-legacy"))
        .collect();
    let scp_sessions: Vec<&serde_json::Value> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "sftp" && s["detail"].as_str().unwrap_or("").starts_with("scp -"))
        .collect();
    assert_eq!(scp_sessions.len(), 2, "{sessions}");
    for s in &scp_sessions {
        let log = std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap();
        assert!(
            log.contains("\"bytes\":300000") && log.contains("\"outcome\":\"ok\""),
            "{s}\n{log}"
        );
        assert!(!log.contains("unparseable"), "{log}");
        // Where the file is on the device: the download's own path, the upload's target.
        assert!(
            log.contains(&format!("\"{legacy}\"")),
            "the device path {legacy} is not in {s}\n{log}"
        );
        // scp's exit status, which says whether the copy worked, is in the log before the vendor has it.
        assert!(
            log.contains("\"event\":\"notice\"")
                && log.contains("the device's command exited with status 0"),
            "{log}"
        );
        // Logged as it opened, before its bytes passed: a crash mid-transfer leaves it on the record.
        let opened = log.find("\"event\":\"opened\"");
        let closed = log.find("\"event\":\"file\"");
        assert!(opened.is_some() && opened < closed, "{log}");
    }
    assert!(!legacy_logs.is_empty(), "{logs:?}");
    let all = logs.join("\n");
    assert!(all.contains(&remote), "{all}");
    assert!(
        all.contains("\"upload\"") && all.contains("\"download\""),
        "{all}"
    );
    assert!(all.contains("300000"), "{all}");
    assert!(all.contains("remove"), "{all}");

    // An auditor's page shows a transfer log as the table, read with the digest the chain vouches
    // for; one whose file no longer has that digest is not shown.
    let mut audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    audrey.login();
    let scp = scp_sessions[0]["id"].as_str().unwrap().to_owned();
    let page = audrey.get(&format!("/sessions/{scp}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("293.0 KiB"), "{}", page.body);
    let path = scp_sessions[0]["recordings"][0]["path"].as_str().unwrap();
    let log = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, log.replace("300000", "900000")).unwrap();
    let page = audrey.get(&format!("/sessions/{scp}"));
    assert!(!page.body.contains("878.9 KiB"), "{}", page.body);
    assert!(page.body.contains("ALTERED"), "{}", page.body);
}

#[test]
fn refusals_name_what_is_missing_the_same_whether_or_not_the_asset_exists() {
    let Some((_sshd, b)) = setup() else { return };
    let bob = b.vendor("bob", "Acme Imaging");
    let out = b.ssh(&bob, "bob+mri-01").arg("true").output().unwrap();
    let (_, known, code) = text(&out);
    assert_eq!(code, 1, "{known}");
    assert!(
        known.contains("chaperone: no active grant for mri-01:ssh - request it with: ssh -p ")
            && known.contains("bob@127.0.0.1 request mri-01 ssh --for 2h --reason"),
        "{known}"
    );
    let out = b.ssh(&bob, "bob+ct-99").arg("true").output().unwrap();
    let (_, unknown, code) = text(&out);
    assert_eq!(code, 1);
    assert_eq!(known.replace("mri-01", "X"), unknown.replace("ct-99", "X"));
    let audit = audit_lines(&b);
    assert!(
        audit.contains("no active grant for mri-01:ssh")
            && audit.contains("no active grant for ct-99:ssh (no such asset)"),
        "{audit}"
    );
}

#[test]
fn expiry_and_revocation_close_live_sessions_within_two_seconds() {
    let Some((_sshd, b)) = setup() else { return };
    let carol = b.vendor("carol", "Acme Imaging");
    b.grant("carol", "mri-01", "ssh", "5s");
    let started = Instant::now();
    let out = b
        .ssh(&carol, "carol+mri-01")
        .arg("echo up; sleep 30")
        .output()
        .unwrap();
    let took = started.elapsed();
    let (stdout, stderr, code) = text(&out);
    assert!(stdout.contains("up"), "{stdout} {stderr}");
    assert_ne!(code, 0);
    assert!(stderr.contains("access to mri-01 ended"), "{stderr}");
    assert!(took < Duration::from_secs(5 + 3), "closed after {took:?}");

    // After expiry a new session is refused.
    let out = b.ssh(&carol, "carol+mri-01").arg("true").output().unwrap();
    assert!(
        text(&out).1.contains("no active grant for mri-01:ssh"),
        "{:?}",
        text(&out)
    );

    // Revoked mid-session: closed within 2 s of the revocation.
    let grant = b.grant("carol", "mri-01", "ssh", "1h");
    let child = b
        .ssh(&carol, "carol+mri-01")
        .arg("echo up; sleep 30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_live_session(&b);
    std::thread::sleep(Duration::from_millis(500));
    b.data
        .run(&[
            "grant",
            "revoke",
            &grant.to_string(),
            "--reason",
            "work finished",
        ])
        .ok();
    let revoked_at = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = revoked_at.elapsed();
    let (_, stderr, _) = text(&out);
    assert!(
        stderr.contains("access to mri-01 was revoked (work finished)"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(500),
        "closed {took:?} after revocation"
    );
    wait_until_all_ended(&b);
    let sessions = session_json(&b);
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["end_reason"].as_str().unwrap_or("").contains("revoked")),
        "{sessions}"
    );
}

#[test]
fn wrong_and_replayed_totp_codes_are_refused_and_audited() {
    let Some((_sshd, b)) = setup() else { return };
    let dave = b.vendor("dave", "Acme Imaging");
    b.grant("dave", "mri-01", "ssh", "1h");
    // The newest step's code stays valid for a minute: long enough to try it twice.
    let good = dave.newest_code();
    let wrong = format!("{:06}", (good.parse::<u32>().unwrap() + 1) % 1_000_000);
    let run = |answer: &str| {
        let mut c = b.ssh_answering(
            &dave,
            &[],
            "dave+mri-01",
            &dave.askpass_printing(b.data.path(), answer),
        );
        c.arg("echo in");
        text(&c.output().unwrap())
    };
    let (stdout, stderr, code) = run(&wrong);
    assert_eq!(code, 255, "{stdout} {stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let (stdout, _, code) = run(&good);
    assert_eq!((stdout.trim(), code), ("in", 0));
    let (_, stderr, code) = run(&good);
    assert_eq!(code, 255, "replayed code accepted");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let audit = audit_lines(&b);
    assert!(
        audit.contains("wrong code")
            && audit.contains("replayed code")
            && audit.contains("\"auth.login\""),
        "{audit}"
    );
}

#[test]
fn repeated_failures_lock_the_vendor() {
    let Some((_sshd, b)) = setup() else { return };
    let erin = b.vendor("erin", "Acme Imaging");
    b.grant("erin", "mri-01", "ssh", "1h");
    for _ in 0..5 {
        let mut c = b.ssh_answering(
            &erin,
            &[],
            "erin+mri-01",
            &erin.askpass_printing(b.data.path(), "000000"),
        );
        c.arg("true");
        assert_eq!(c.output().unwrap().status.code(), Some(255));
    }
    let out = b.ssh(&erin, "erin+mri-01").arg("true").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "a locked vendor got in: {:?}",
        text(&out)
    );
    let show = b.data.run(&["vendor", "show", "erin"]);
    assert!(
        show.ok().stdout().contains("locked until"),
        "{}",
        show.stdout()
    );
    assert!(audit_lines(&b).contains("\"auth.lock\""));

    // She is told why, once, in the prompt every client shows, and nothing she answers is looked at.
    let (code, prompts) = barred_login(&b, &erin);
    assert_eq!(code, Some(255));
    assert!(
        prompts.contains("your account is locked until")
            && prompts.contains("chaperone vendor unlock")
            && prompts.matches("Press Enter to close").count() == 1,
        "{prompts}"
    );
    assert!(
        audit_lines(&b)
            .lines()
            .any(|l| l.contains("\"auth.refused\"") && l.contains(r#"\"why\":\"locked\""#)),
        "{}",
        audit_lines(&b)
    );

    // The administrator ends the lock at once; it is audited, and her code works again.
    let unlocked = b.data.run(&["vendor", "unlock", "erin"]);
    assert!(
        unlocked
            .ok()
            .stdout()
            .contains("unlocked (was locked until"),
        "{}",
        unlocked.stdout()
    );
    assert!(audit_lines(&b).contains("\"vendor.unlock\""));
    let out = b.ssh(&erin, "erin+mri-01").arg("true").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    // Disabled, she is told that instead. Whoever tries again with her key is told again, but the
    // audit log gets one refusal a minute, not one per try.
    b.data.run(&["vendor", "disable", "erin"]).ok();
    for _ in 0..2 {
        let (code, prompts) = barred_login(&b, &erin);
        assert_eq!(code, Some(255));
        assert!(
            prompts.contains("your vendor account is disabled"),
            "{prompts}"
        );
    }
    let refused = audit_lines(&b)
        .lines()
        .filter(|l| l.contains("\"auth.refused\"") && l.contains(r#"\"why\":\"disabled\""#))
        .count();
    assert_eq!(refused, 1, "{}", audit_lines(&b));
}

#[test]
fn a_sign_in_left_at_the_second_factor_is_audited_once_a_minute() {
    let Some((_sshd, b)) = setup() else { return };
    let abandoned = |vendor: &str| -> Vec<Value> {
        audit_lines(&b)
            .lines()
            .filter(|l| l.contains("\"auth.abandoned\""))
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["actor"] == format!("vendor:{vendor}"))
            .map(|e| serde_json::from_str(e["detail"].as_str().unwrap()).unwrap())
            .collect()
    };
    // Wrong codes until the client gives up: judged and audited as failures, nothing left unfinished.
    let ivan = b.vendor("ivan", "Acme Imaging");
    let out = b
        .ssh_answering(
            &ivan,
            &[],
            "ivan+mri-01",
            &ivan.askpass_printing(b.data.path(), "000000"),
        )
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    // Whoever holds gina's key signs the key step and leaves before any prompt (a client with no
    // keyboard-interactive, as `BatchMode` makes OpenSSH): audited, what was asked with it.
    let gina = b.vendor("gina", "Acme Imaging");
    let batch = || {
        b.ssh(&gina, "gina+mri-01")
            .args(["-o", "BatchMode=yes", "true"])
            .output()
            .unwrap()
    };
    assert_eq!(batch().status.code(), Some(255));
    assert!(
        wait_until(Duration::from_secs(10), || abandoned("gina").len() == 1),
        "{}",
        audit_lines(&b)
    );
    let detail = &abandoned("gina")[0];
    assert_eq!(detail["asked"], "nothing", "{detail}");
    assert_eq!(detail["closed"], "connection closed", "{detail}");
    assert!(
        detail["key"].as_str().unwrap().starts_with("SHA256:"),
        "{detail}"
    );
    // A client killed at the code prompt: hank left at `code`.
    let hank = b.vendor("hank", "Acme Imaging");
    let (killer, prompts) =
        crate::support::bastion::recording_askpass(b.data.path(), "kill -9 $PPID; sleep 5");
    let out = b
        .ssh_answering(&hank, &[], "hank+mri-01", &killer)
        .arg("true")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        std::fs::read_to_string(&prompts)
            .unwrap()
            .contains("TOTP code")
    );
    assert!(
        wait_until(Duration::from_secs(10), || abandoned("hank").len() == 1),
        "{}",
        audit_lines(&b)
    );
    let detail = &abandoned("hank")[0];
    assert_eq!(detail["asked"], "code", "{detail}");
    // Again within the minute: logged, not audited again, so reconnecting cannot fill the log.
    assert_eq!(batch().status.code(), Some(255));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(abandoned("gina").len(), 1, "{}", audit_lines(&b));
    assert!(abandoned("ivan").is_empty(), "{}", audit_lines(&b));
    assert!(audit_lines(&b).contains("\"auth.totp.failure\""));
}

/// A login by `vendor` whose askpass records each prompt and answers a code: the exit code and the
/// prompts shown.
fn barred_login(b: &Bastion, vendor: &Vendor) -> (Option<i32>, String) {
    let (askpass, prompts) = crate::support::bastion::recording_askpass(
        b.data.path(),
        &format!("echo {}", vendor.next_code()),
    );
    let out = b
        .ssh_answering(vendor, &[], &format!("{}+mri-01", vendor.name), &askpass)
        .arg("true")
        .output()
        .unwrap();
    (
        out.status.code(),
        std::fs::read_to_string(&prompts).unwrap_or_default(),
    )
}

#[test]
fn a_device_presenting_another_host_key_is_refused_and_audited() {
    let Some((_sshd, b)) = setup() else { return };
    let frank = b.vendor("frank", "Acme Imaging");
    b.grant("frank", "mri-01", "ssh", "1h");
    let other = crate::support::ssh_keygen(b.data.path(), "impostor");
    let line = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    b.data
        .run(&["asset", "hostkey", "set", "mri-01", line.trim()])
        .ok();
    let out = b
        .ssh(&frank, "frank+mri-01")
        .arg("echo reached")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 1);
    assert!(!stdout.contains("reached"));
    assert!(stderr.contains("unexpected host key"), "{stderr}");
    assert!(audit_lines(&b).contains("\"target.hostkey.mismatch\""));
}

#[test]
fn an_unwritable_recording_directory_refuses_the_session() {
    let Some((_sshd, b)) = setup() else { return };
    let gina = b.vendor("gina", "Acme Imaging");
    b.grant("gina", "mri-01", "ssh", "1h");
    let recordings = b.data.path().join("recordings");
    std::fs::remove_dir_all(&recordings).unwrap();
    // A file where the directory should be: unwritable even for root.
    std::fs::write(&recordings, b"not a directory").unwrap();
    let out = b
        .ssh(&gina, "gina+mri-01")
        .arg("echo reached")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(!stdout.contains("reached"));
    assert!(stderr.contains("cannot be recorded"), "{stderr}");
    assert!(audit_lines(&b).contains("cannot create recording"));
}

#[test]
fn the_home_screen_shows_grants_and_how_to_connect() {
    let Some((_sshd, b)) = setup() else { return };
    let hank = b.vendor("hank", "Acme Imaging");
    b.grant("hank", "mri-01", "ssh,dicom", "2h");
    let out = b.ssh(&hank, "hank").output().unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("signed in as hank (Acme Imaging)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mri-01") && stdout.contains("ssh,dicom") && stdout.contains("left"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("ssh -p {} -t hank+mri-01@127.0.0.1", b.ssh_port)),
        "{stdout}"
    );
    assert!(stdout.contains(":mri-01:104"), "{stdout}");
}

#[test]
fn unknown_users_and_wrong_keys_get_the_same_refusal() {
    let Some((_sshd, b)) = setup() else { return };
    let ivan = b.vendor("ivan", "Acme Imaging");
    let stranger = Vendor {
        name: "ivan".into(),
        key: crate::support::ssh_keygen(b.data.path(), "stranger"),
        secret: ivan.secret.clone(),
        last_step: std::sync::Mutex::new(0),
    };
    let wrong_key = text(
        &b.ssh(&stranger, "ivan+mri-01")
            .arg("true")
            .output()
            .unwrap(),
    );
    let unknown_user = text(&b.ssh(&ivan, "nobody+mri-01").arg("true").output().unwrap());
    assert_eq!(wrong_key.2, 255);
    // The client names the user it tried; beyond that the answers are identical.
    assert_eq!(
        wrong_key.1.replace("ivan", "X"),
        unknown_user.1.replace("nobody", "X")
    );
    assert_eq!(wrong_key.2, unknown_user.2);
}

/// `secrets rotate` re-seals the vendor's TOTP seed and the device credential under a new key: after a
/// restart the same vendor logs in and reaches the device; the old key is kept aside, 0600.
#[test]
fn rotating_the_secrets_key_keeps_logins_and_device_credentials_working() {
    let Some((_sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    // A recording the player has indexed: its index is sealed with a key the secrets key gives.
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("echo before-rotation")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let sessions = |d: &DataDir| d.run(&["session", "list", "--json"]).ok().json();
    assert!(
        wait_until(Duration::from_secs(10), || sessions(&b.data)[0]["ended_at"]
            .as_i64()
            .is_some()),
        "{}",
        sessions(&b.data)
    );
    let id = sessions(&b.data)[0]["id"].as_str().unwrap().to_owned();
    let rid = sessions(&b.data)[0]["recordings"][0]["id"]
        .as_i64()
        .unwrap();
    let play = format!("/sessions/{id}/recordings/{rid}/play.json?idle=2");
    let mut audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    let played = audrey.get(&play);
    assert_eq!(played.status, 200, "{}", played.body);
    let data = b.stop();
    let old_key = std::fs::read_to_string(data.path().join("secrets.key")).unwrap();
    // Run as root (an administrator under sudo), the rotation leaves the new key to the old key's owner,
    // the service's user: otherwise the service could no longer read it. (As another user, the key is
    // theirs already.)
    let root = crate::support::running_as_root();
    if root {
        std::os::unix::fs::chown(data.path().join("secrets.key"), Some(65534), Some(65534))
            .unwrap();
    }

    let run = data.run(&["secrets", "rotate"]);
    run.ok();
    assert!(
        run.stdout()
            .contains("re-sealed 1 vendor TOTP seeds, 1 staff TOTP seeds and 1 device credentials"),
        "{}",
        run.stdout()
    );
    let new_key = std::fs::read_to_string(data.path().join("secrets.key")).unwrap();
    assert_ne!(old_key, new_key);
    let retired: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("secrets.key.retired-")
        })
        .collect();
    assert_eq!(retired.len(), 1);
    assert_eq!(std::fs::read_to_string(retired[0].path()).unwrap(), old_key);
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [data.path().join("secrets.key"), retired[0].path()] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    assert!(!data.path().join("secrets.key.new").exists());
    if root {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(data.path().join("secrets.key")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
    data.run(&["audit", "verify"]).ok();

    let b = Bastion::start(data);
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("echo after-rotation")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", b.log());
    assert!(stdout.contains("after-rotation"), "{stdout}");
    assert!(audit_lines(&b).contains("\"secrets.rotate\""));
    // The recording plays as before: its index was signed again, not taken for altered.
    audrey.via(&b);
    audrey.login();
    let played = audrey.get(&play);
    assert_eq!(played.status, 200, "{}", played.body);
    assert!(
        audit_lines(&b).contains(r#"\"playback_indexes\":1"#),
        "{}",
        audit_lines(&b)
    );

    // A key that cannot open the stored values aborts the rotation and changes nothing.
    let data = b.stop();
    std::fs::remove_file(data.path().join("secrets.key")).unwrap();
    let run = std::process::Command::new(crate::support::chaperone_bin())
        .args(["init", "--dir"])
        .arg(data.path().join("other"))
        .output()
        .unwrap();
    assert!(run.status.success());
    std::fs::copy(
        data.path().join("other/secrets.key"),
        data.path().join("secrets.key"),
    )
    .unwrap();
    let refused = data.run(&["secrets", "rotate"]);
    refused.fails(1);
    assert!(
        refused.stderr().contains("rotation aborted")
            && refused.stderr().contains("sealed under another key"),
        "{}",
        refused.stderr()
    );
    // The new key is kept for the next run to finish or undo (it may be all a failed commit left).
    assert!(data.path().join("secrets.key.new").exists());
}

/// A bastion killed mid-session (SIGKILL: no chance to end anything) leaves the session open and its
/// recording without a digest. The next start ends the session, naming the node that died, and records
/// the SHA-256 of what reached the disk, both audited; the recording then verifies.
#[test]
fn a_session_left_open_by_a_killed_bastion_is_ended_and_its_recording_digested() {
    let Some((sshd, b)) = setup() else { return };
    let dora = b.vendor("dora", "Acme Imaging");
    b.grant("dora", "mri-01", "ssh", "1h");
    let child = b
        .ssh(&dora, "dora+mri-01")
        .arg("echo up-before-the-crash; sleep 60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_live_session(&b);
    // The recorder flushes a quiet recording within about a second.
    std::thread::sleep(Duration::from_millis(2500));
    let data = b.crash();
    let out = child.wait_with_output().unwrap();
    assert!(
        text(&out).0.contains("up-before-the-crash"),
        "{:?}",
        text(&out)
    );
    let open: serde_json::Value = data.run(&["session", "list", "--json"]).ok().json();
    let session = open.as_array().unwrap()[0].clone();
    assert!(session["ended_at"].is_null(), "{session}");
    assert!(session["recordings"][0]["sha256"].is_null(), "{session}");
    let id = session["id"].as_str().unwrap().to_owned();
    let path = session["recordings"][0]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        std::fs::read(&path)
            .unwrap()
            .windows(19)
            .any(|w| w == b"up-before-the-crash"),
        "the output did not reach the recording before the crash"
    );

    // A crash can also cut the last frame short: five bytes of a frame header that was being written.
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[1, 0, 0, 0, 0]).unwrap();
    }

    // The dead node is gone after 30 s without a heartbeat; the restarted bastion then ends its session.
    let b = Bastion::start(data);
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(60), || {
            session_json(&b).as_array().unwrap()[0]["recordings"][0]["sha256"].is_string()
        }),
        "not ended: {}\n{}",
        session_json(&b),
        b.log()
    );
    let session = session_json(&b).as_array().unwrap()[0].clone();
    assert_eq!(session["id"], id.as_str());
    assert!(
        session["end_reason"]
            .as_str()
            .unwrap()
            .contains("stopped without ending it"),
        "{session}"
    );
    let verify = b.data.run(&["session", "verify", &id]);
    verify.ok();
    assert!(verify.stdout().contains("intact"), "{}", verify.stdout());
    // Intact as a node's sweep found it, not as recorded: every reader says which.
    assert!(
        verify.stdout().contains("recovered: its writer stopped"),
        "{}",
        verify.stdout()
    );
    let shown = b.data.run(&["session", "show", &id, "--json"]).ok().json();
    assert_eq!(
        shown["recordings"][0]["evidence"]["recovered"], true,
        "{shown}"
    );
    // The export keeps every whole frame, says where the file was cut, and plays.
    let cast = b.data.path().join("recovered.cast");
    let export = b
        .data
        .run(&["session", "export", &id, "-o", &cast.to_string_lossy()]);
    export.ok();
    assert!(
        export.stderr().contains("ends inside a frame"),
        "{}",
        export.stderr()
    );
    if let Some(shown) = asciinema_cat(&cast) {
        assert!(shown.contains("up-before-the-crash"), "{shown}");
    }
    let audit = audit_lines(&b);
    assert!(audit.contains("\"recording.recovered\""), "{audit}");
    // The detail is JSON inside the exported JSON line.
    assert!(audit.contains(r#"\"abandoned\":true"#), "{audit}");
    b.data.run(&["audit", "verify"]).ok();
    // The device is still usable through the new process.
    let out = b
        .ssh(&dora, "dora+mri-01")
        .arg("echo again")
        .output()
        .unwrap();
    assert!(text(&out).0.contains("again"), "{:?}", text(&out));
    drop(sshd);
}

/// The sessions of one grant share a device connection (a burst costs the device one login, not one per
/// session, as OpenSSH's ControlMaster does for a user), another vendor's sessions never ride on it, and
/// the device connection is hung up when its last session ends.
#[test]
fn sessions_of_one_grant_share_one_device_login_which_ends_with_the_last_session() {
    let Some((sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    let bob = b.vendor("bob", "Other Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    b.grant("bob", "mri-01", "ssh", "1h");
    let dir = tempfile::tempdir().unwrap();
    let control = control_master(&b, &alice, dir.path(), "alice+mri-01");
    // Over the master no code is asked; the askpass is never run.
    let unused = alice.askpass_printing(dir.path(), "000000");
    let mut running: Vec<_> = (0..3)
        .map(|i| {
            b.ssh_answering(&alice, &["-o", &control], "alice+mri-01", &unused)
                .arg(format!("sleep 2; echo alice-{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    running.push(
        b.ssh(&bob, "bob+mri-01")
            .arg("sleep 2; echo bob-0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for (i, child) in running.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr, code) = text(&out);
        let want = if i < 3 {
            format!("alice-{i}")
        } else {
            "bob-0".into()
        };
        assert_eq!((stdout.trim(), code), (want.as_str(), 0), "{stderr}");
    }
    let _ = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", &control, "-O", "exit", "x"])
        .output();

    let log = || std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap();
    // Four sessions, each its own recorded session, on two device logins: alice's three share one.
    let sessions = session_json(&b);
    assert_eq!(sessions.as_array().unwrap().len(), 4, "{sessions}");
    assert_eq!(
        log().matches("Accepted publickey").count(),
        2,
        "device logins:\n{}",
        log()
    );
    // Both device connections are hung up once their sessions are over.
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(10), || log()
            .matches("Disconnected from user")
            .count()
            == 2),
        "device connections left open:\n{}",
        log()
    );
}

/// A device that takes fewer sessions per connection (`MaxSessions 2`) than the bastion is told
/// (`device_sessions_per_connection = 5`): five sessions at once over one vendor connection all run; the
/// refused channels taught the bastion the device's limit, so the device saw no more than five logins.
#[test]
fn a_device_that_takes_fewer_sessions_per_connection_still_gets_every_session() {
    let Some(sshd) = Sshd::start_with("MaxSessions 2\n") else {
        return;
    };
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    assert!(config.contains("device_sessions_per_connection = 10"));
    std::fs::write(
        data.config(),
        config.replace(
            "device_sessions_per_connection = 10",
            "device_sessions_per_connection = 5",
        ),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let dir = tempfile::tempdir().unwrap();
    let control = control_master(&b, &alice, dir.path(), "alice+mri-01");
    let unused = alice.askpass_printing(dir.path(), "000000");
    let running: Vec<_> = (0..5)
        .map(|i| {
            b.ssh_answering(&alice, &["-o", &control], "alice+mri-01", &unused)
                .arg(format!("sleep 2; echo session-{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in running.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr, code) = text(&out);
        assert_eq!(
            (stdout.trim(), code),
            (format!("session-{i}").as_str(), 0),
            "{stderr}"
        );
    }
    let _ = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", &control, "-O", "exit", "x"])
        .output();
    let log = std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap();
    let logins = log.matches("Accepted publickey").count();
    assert!((3..=5).contains(&logins), "{logins} device logins:\n{log}");
}

/// sshd sends EOF when a program's output ends and the exit status once it has reaped it. OpenSSH's
/// multiplexing master closes a channel as soon as it has both EOFs, after which the status has nowhere
/// to go, and its client (scp, sftp, ssh over ControlMaster) exits 255 (scp 1) with no message. The
/// bastion hands the status on before the EOF.
#[test]
fn an_exit_status_that_follows_the_devices_eof_reaches_a_multiplexed_client() {
    let Some((_sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let dir = tempfile::tempdir().unwrap();
    let control = format!("ControlPath={}", dir.path().join("cm").display());
    let master = [
        "-o",
        "ControlMaster=yes",
        "-o",
        &control,
        "-o",
        "ControlPersist=60",
        "-fN",
    ];
    let out = b
        .ssh_with(&alice, &master, "alice+mri-01")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let unused = alice.askpass_printing(dir.path(), "000000");
    for _ in 0..3 {
        let out = b
            .ssh_answering(&alice, &["-o", &control], "alice+mri-01", &unused)
            .arg("echo before-eof; exec >&- 2>&-; sleep 0.3; exit 7")
            .output()
            .unwrap();
        let (stdout, stderr, code) = text(&out);
        assert_eq!(
            code,
            7,
            "stdout: {stdout}\nstderr: {stderr}\nlog: {}",
            b.log()
        );
        assert!(stdout.contains("before-eof"), "{stdout}");
    }
    let _ = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", &control, "-O", "exit", "x"])
        .output();
}

/// A vendor holds at most `ssh.max_connections_per_vendor` signed-in connections: the next sign-in is
/// told why in the prompt (no code judged, audited), other vendors sign in as before, and once one
/// of hers ends she signs in again. Without it one vendor could fill `max_connections` for everyone.
#[test]
fn a_vendor_at_their_most_connections_is_told_and_others_are_not_held_up() {
    let Some(sshd) = Sshd::start() else { return };
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    assert!(
        config.contains("max_connections_per_vendor = 64"),
        "{config}"
    );
    std::fs::write(
        data.config(),
        config.replacen(
            "max_connections_per_vendor = 64",
            "max_connections_per_vendor = 2",
            1,
        ),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    let bob = b.vendor("bob", "Bolt Pumps");
    let logins = |who: &str| {
        audit_lines(&b)
            .lines()
            .filter(|l| l.contains("\"auth.login\"") && l.contains(&format!("vendor:{who}")))
            .count()
    };
    // One after the other: two sign-ins at once could be given the same code (refused as replayed).
    let mut held = Vec::new();
    for n in 1..=2 {
        held.push(b.ssh_with(&alice, &["-N"], "alice").spawn().unwrap());
        assert!(
            wait_until(Duration::from_secs(20), || logins("alice") == n),
            "{}",
            b.log()
        );
    }

    let (askpass, prompts) =
        crate::support::bastion::recording_askpass(b.data.path(), "echo 000000");
    let out = b
        .ssh_answering(&alice, &[], "alice", &askpass)
        .arg("true")
        .output()
        .unwrap();
    let prompts = std::fs::read_to_string(&prompts).unwrap_or_default();
    assert_eq!(out.status.code(), Some(255), "{prompts}");
    assert!(
        prompts.contains("you already hold 2 connections to the bastion, the most")
            && prompts.contains("Press Enter to close"),
        "{prompts}"
    );
    assert!(
        audit_lines(&b)
            .lines()
            .any(|l| l.contains("\"auth.refused\"")
                && l.contains(r#"\"why\":\"too many connections\""#)),
        "{}",
        audit_lines(&b)
    );
    let out = b.ssh(&bob, "bob").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    let mut first = held.remove(0);
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        wait_until(Duration::from_secs(10), || {
            b.ssh(&alice, "alice").output().unwrap().status.code() == Some(0)
        }),
        "{}",
        b.log()
    );

    // The cap is asked again right before a code is judged: carol reaches the code prompt under it
    // (one connection held), signs in elsewhere meanwhile (two held), then answers: told, not judged.
    let carol = b.vendor("carol", "Acme Imaging");
    held.push(b.ssh_with(&carol, &["-N"], "carol").spawn().unwrap());
    assert!(
        wait_until(Duration::from_secs(20), || logins("carol") == 1),
        "{}",
        b.log()
    );
    let go = b.data.path().join("carol-go");
    let answered = b.data.path().join("carol-answered");
    let code = carol.next_code();
    let (askpass, prompts) = crate::support::bastion::recording_askpass(
        b.data.path(),
        &format!(
            "if [ -f '{a}' ]; then echo; exit 0; fi\n\
             while [ ! -f '{g}' ]; do sleep 0.05; done\ntouch '{a}'\necho {code}",
            a = answered.display(),
            g = go.display()
        ),
    );
    let waiting = b
        .ssh_answering(&carol, &[], "carol", &askpass)
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut waiting = crate::support::web::Running(waiting);
    assert!(
        wait_until(Duration::from_secs(20), || prompts.exists()),
        "{}",
        b.log()
    );
    let first_prompt = std::fs::read_to_string(&prompts).unwrap();
    assert!(
        !first_prompt.contains("already hold"),
        "the key step let it through: {first_prompt}"
    );
    held.push(b.ssh_with(&carol, &["-N"], "carol").spawn().unwrap());
    assert!(
        wait_until(Duration::from_secs(20), || logins("carol") == 2),
        "{}",
        b.log()
    );
    std::fs::write(&go, "").unwrap();
    let status = waiting.0.wait().unwrap();
    assert_eq!(status.code(), Some(255));
    let prompts = std::fs::read_to_string(&prompts).unwrap();
    assert!(
        prompts.contains("you already hold 2 connections to the bastion, the most"),
        "{prompts}"
    );
    assert_eq!(logins("carol"), 2, "a third sign-in got past the cap");
    for mut c in held {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Runs `cmd` (built already: its askpass may have waited for an unused code) and times it.
fn timed(cmd: &mut Command) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = cmd.output().unwrap();
    (out, started.elapsed())
}

#[test]
fn an_idle_connection_is_warned_then_closed_and_keepalives_are_not_activity() {
    let Some(sshd) = Sshd::start() else { return };
    let data = DataDir::init();
    let config = std::fs::read_to_string(data.config()).unwrap();
    assert!(config.contains("idle_timeout = \"30m\""), "{config}");
    std::fs::write(
        data.config(),
        config.replacen("idle_timeout = \"30m\"", "idle_timeout = \"6s\"", 1),
    )
    .unwrap();
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");

    // A terminal whose output alone goes on (`tail -f`, `top`), on a client sending keepalives every
    // second (protocol, not activity): nobody typed, so it is told half-way, then closed.
    let (out, took) = timed(
        b.ssh_with(
            &alice,
            &["-tt", "-o", "ServerAliveInterval=1"],
            "alice+mri-01",
        )
        .arg("while :; do echo tick; sleep 1; done"),
    );
    let (stdout, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stderr}");
    assert!(stdout.contains("tick"), "{stdout}");
    assert!(
        stderr.contains("nothing has passed on this connection for ")
            && stderr.contains("seconds: it closes in ")
            && stderr.contains("unless something is typed or sent"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the connection was closed after 6 seconds without activity"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "closed after {took:?}");

    // A command without a terminal is work while it runs, silent or not (a device's upgrade).
    let out = b
        .ssh(&alice, "alice+mri-01")
        .arg("sleep 9; echo done")
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("done"), "{stdout}");
    assert!(!stderr.contains("nothing has passed"), "{stderr}");

    // A signed-in connection with no channel at all is cut as well; its client is told why in the
    // SSH disconnect message (it has no session to be told in).
    let (out, took) =
        timed(&mut b.ssh_with(&alice, &["-N", "-o", "ServerAliveInterval=1"], "alice"));
    let (_, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("Received disconnect from")
            && stderr.contains("the connection was closed after 6 seconds without activity"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");

    // Through a ProxyJump, whose stream carries the inner connection's keepalives: a terminal nobody
    // types in is closed all the same.
    let dir = tempfile::tempdir().unwrap();
    let inner_known_hosts = dir.path().join("inner_known_hosts");
    std::fs::write(
        &inner_known_hosts,
        b.data.run(&["known-hosts"]).ok().stdout(),
    )
    .unwrap();
    let ssh_config = dir.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host bastion\n  HostName 127.0.0.1\n  Port {port}\n  User alice\n  UserKnownHostsFile {known}\n\
             \nHost mri-01\n  ProxyJump bastion\n  User {user}\n  UserKnownHostsFile {inner}\n\
             \nHost *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  \
             PreferredAuthentications publickey,keyboard-interactive\n  NumberOfPasswordPrompts 1\n  \
             ServerAliveInterval 1\n  ConnectTimeout 10\n",
            port = b.ssh_port,
            known = b.known_hosts.display(),
            user = sshd.user,
            inner = inner_known_hosts.display(),
            key = alice.key.display(),
        ),
    )
    .unwrap();
    let mut jump = Command::new("ssh");
    jump.args([
        "-F",
        &ssh_config.to_string_lossy(),
        "-tt",
        "mri-01",
        "sleep 60",
    ])
    .env("SSH_ASKPASS", alice.askpass(b.data.path()))
    .env("SSH_ASKPASS_REQUIRE", "force")
    .env_remove("DISPLAY")
    .stdin(Stdio::null());
    let (out, took) = timed(&mut jump);
    let (_, stderr, code) = text(&out);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the connection was closed after 6 seconds without activity"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(25), "{took:?} {stderr}");

    wait_until_all_ended(&b);
    let sessions = session_json(&b);
    let mut causes: Vec<(&str, &str)> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap_or(""),
                s["end_cause"].as_str().unwrap_or(""),
            )
        })
        .collect();
    causes.sort_unstable();
    // The terminal, the command, the jump and the terminal inside it.
    assert_eq!(
        causes,
        [
            ("exec", "closed"),
            ("exec", "idle"),
            ("exec", "idle"),
            ("jump", "idle")
        ],
        "{sessions}"
    );
    let idle_cuts: Vec<String> = audit_lines(&b)
        .lines()
        .filter(|l| l.contains("\"vendor.connections.ended\"") && l.contains("without activity"))
        .map(str::to_owned)
        .collect();
    assert_eq!(idle_cuts.len(), 3, "{}", audit_lines(&b));
    assert!(
        idle_cuts.iter().all(|l| l.contains("peer")),
        "{idle_cuts:?}"
    );
    // The history finds the idle sessions by how they ended.
    let found = b
        .data
        .run(&["session", "list", "--ended", "idle", "--json"])
        .ok()
        .json();
    assert_eq!(found.as_array().unwrap().len(), 3, "{found}");
}

/// A recording file removed while its session runs (its writes would go to a file nobody can read,
/// and a file put in its place would be checked instead) fails the recording, and so ends the session:
/// no recording, no session. No digest speaks for it afterwards.
#[test]
fn a_recording_removed_while_written_ends_its_session() {
    let Some((_sshd, b)) = setup() else { return };
    let alice = b.vendor("alice", "Acme Imaging");
    b.grant("alice", "mri-01", "ssh", "1h");
    let mut child = b
        .ssh(&alice, "alice+mri-01")
        .arg("while :; do echo tick; sleep 1; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_live_session(&b);
    let session = session_json(&b)[0].clone();
    let path = std::path::PathBuf::from(session["recordings"][0]["path"].as_str().unwrap());
    assert!(wait_until(Duration::from_secs(10), || path.exists()));
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_file(&path).unwrap();
    let ended = wait_until(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(ended, "the session went on without its recording");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("recording"), "{stderr}");
    wait_until_all_ended(&b);
    let s = &session_json(&b)[0];
    assert_eq!(s["end_cause"], "recording", "{s}");
    assert!(
        audit_lines(&b).contains("removed or replaced while it was written"),
        "{}",
        audit_lines(&b)
    );
    // Nothing vouches for it: the sweep does not digest a recording whose writer failed.
    std::thread::sleep(Duration::from_secs(6));
    let id = s["id"].as_str().unwrap();
    let verify = b.data.run(&["session", "verify", id]);
    assert_ne!(verify.code(), 0, "{}", verify.stdout());
    assert!(
        !audit_lines(&b).contains("\"recording.recovered\""),
        "{}",
        audit_lines(&b)
    );
}
