//! `chaperone demo` on a machine without OpenSSH's sshd (no sshd on its PATH, so `--device auto` picks the
//! simulated device):
//! the ssh command it prints, run as printed, reaches the simulated "mri-01" and is recorded; the
//! session plays back with the command it printed; the simulated device answers a DICOM C-ECHO
//! (pynetdicom); the approver's enrolment link it prints opens.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::bastion::text;
use crate::support::{chaperone_bin, guarded, missing, stop_guarded};

#[test]
fn the_printed_commands_reach_the_simulated_device_and_the_session_plays_back() {
    if Command::new("ssh").arg("-V").output().is_err() {
        missing("ssh (openssh-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut demo = guarded(
        chaperone_bin(),
        &[
            "demo",
            "--dir",
            &demo_dir.to_string_lossy(),
            "--ssh-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ],
    )
    .env("NO_COLOR", "1")
    // As on a machine without openssh-server: no sshd to be found (the default, `--device auto`).
    .env("PATH", "/usr/bin:/bin")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("Serving SSH on") {
                let _ = tx.send(printed.clone());
            }
        }
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo did not start");
    let line = |marker: &str| -> String {
        printed
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no line with {marker:?} in\n{printed}"))
            .trim()
            .to_owned()
    };
    assert!(printed.contains("SIMULATED device"), "{printed}");

    // The TOTP prompt is answered with the command the demo prints for it.
    let totp = line("demo --totp-code");
    let totp = totp[totp.find("the code at any moment: ").unwrap() + 24..].to_owned();
    let askpass = dir.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\nexec {totp}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // "a recorded shell on mri-01", exactly as printed (the shell reads its commands from stdin here).
    let shell = line("# a recorded shell on mri-01");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&shell)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env_remove("DISPLAY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cat /opt/scanner/VERSION\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{shell}\n{stdout}{stderr}");
    assert!(stdout.contains("AcmeScan MR 7.4.2"), "{stdout}{stderr}");

    // The session is on record and plays back with the printed command.
    let list = line("session list");
    let list = &list[..list.find('#').unwrap()];
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{list} --json"))
        .output()
        .unwrap();
    let sessions: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out).0));
    let id = sessions[0]["id"].as_str().unwrap().to_owned();
    let play = line("session play ID");
    let play = play[..play.find('#').unwrap()].replace(" ID", &format!(" {id}"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{play} --speed 100"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{play}\n{stdout}{stderr}");
    assert!(stdout.contains("AcmeScan MR 7.4.2"), "{stdout}");

    // The device's DICOM port answers a C-ECHO (pynetdicom's echoscu, when the venv has it).
    let marker = "DICOM C-ECHO on 127.0.0.1:";
    let asset = line(marker);
    let port: String = asset[asset.find(marker).unwrap() + marker.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let python = std::env::var("CHAPERONE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pynetdicom = Command::new(&python)
        .args(["-c", "import pynetdicom"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_pynetdicom {
        let out = Command::new(&python)
            .args(["-m", "pynetdicom", "echoscu", "127.0.0.1", &port, "-v"])
            .output()
            .unwrap();
        let (stdout, stderr, _) = text(&out);
        assert!(
            format!("{stdout}{stderr}").contains("Status: 0x0000 - Success"),
            "{stdout}{stderr}"
        );
    } else {
        missing("pynetdicom (python venv)");
    }

    // The approver's enrolment link opens (self-signed certificate, hence -k).
    let web: String = printed[printed.find("and web on ").unwrap() + 11..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';')
        .collect();
    let enroll = line("/enroll/");
    let token: String = enroll[enroll.find("/enroll/").unwrap() + 8..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{web}/enroll/{token}"))
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "200", "enrol link {enroll}");

    stop_guarded(&mut demo);
}
