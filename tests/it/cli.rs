//! The admin command line, driven as an administrator would: the real binary, a real data directory.

use std::process::Command;

use crate::support::{DataDir, chaperone_bin, missing, ssh_keygen};

#[test]
fn init_then_asset_add_and_list_json() {
    let d = DataDir::init();
    for f in [
        "chaperone.toml",
        "ssh_host_ed25519_key",
        "secrets.key",
        "chaperone.db",
    ] {
        assert!(d.path().join(f).exists(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["ssh_host_ed25519_key", "secrets.key", "chaperone.db"] {
            let mode = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
    }
    d.run(&[
        "asset",
        "add",
        "mri-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "MRI scanner",
        "--service",
        "ssh:22/ssh",
        "--service",
        "dicom:104/tcp",
    ])
    .ok();
    let list = d.run(&["asset", "list", "--json"]);
    let json = list.ok().json();
    let asset = &json[0];
    assert_eq!(asset["name"], "mri-01");
    let services: Vec<(String, u64, String)> = asset["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["port"].as_u64().unwrap(),
                s["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        services.contains(&("ssh".into(), 22, "ssh".into())),
        "{services:?}"
    );
    assert!(
        services.contains(&("dicom".into(), 104, "tcp".into())),
        "{services:?}"
    );
}

#[test]
fn init_refuses_to_overwrite_keys() {
    let d = DataDir::init();
    let out = Command::new(chaperone_bin())
        .args(["init", "--dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));

    // A directory holding only a database (or any file init would make) is refused before anything is
    // written: a refused init leaves nothing half made.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chaperone.db"), b"").unwrap();
    let out = Command::new(chaperone_bin())
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("chaperone.db"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["chaperone.db"], "{left:?}");
}

#[test]
fn misspelt_config_key_names_file_line_and_key() {
    let d = DataDir::init();
    let config = d.config();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("max_failures = 5", "max_failures = 5\nmax_falures = 6", 1);
    std::fs::write(&config, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("max_falures"))
        .unwrap()
        + 1;
    let run = d.run(&["serve"]);
    run.fails(1);
    let err = run.stderr();
    assert!(
        err.contains(&format!("{}:{line}:", config.display())),
        "{err}"
    );
    assert!(err.contains("max_falures"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let d = DataDir::init();
    d.run(&["asset", "frobnicate"]).fails(2);
    d.run(&["asset", "add", "x", "--zone", "z"]).fails(2);
}

/// The audit actor of a command is who the kernel says ran it: `USER` and `LOGNAME`, which anyone sets,
/// do not put a colleague's name on a grant.
#[test]
fn the_cli_actor_is_not_taken_from_user_or_logname() {
    let d = DataDir::init();
    let out = Command::new(chaperone_bin())
        .arg("-c")
        .arg(d.config())
        .args([
            "asset",
            "add",
            "ct-01",
            "--address",
            "127.0.0.1",
            "--zone",
            "radiology",
            "--purpose",
            "CT",
            "--service",
            "ssh:22/ssh",
        ])
        .env_remove("SUDO_USER")
        .env("USER", "alice")
        .env("LOGNAME", "alice")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = d
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    let added = audit
        .lines()
        .find(|l| l.contains("\"asset.add\""))
        .unwrap_or_else(|| panic!("{audit}"));
    let event: serde_json::Value = serde_json::from_str(added).unwrap();
    let actor = event["actor"].as_str().unwrap();
    assert!(actor.starts_with("os:") && actor != "os:alice", "{added}");
}

#[test]
fn vendor_add_prints_totp_uri_and_refuses_bad_input() {
    let d = DataDir::init();
    let key = ssh_keygen(d.path(), "alice");
    let pubkey = key.with_extension("pub");
    let run = d.run(&[
        "vendor",
        "add",
        "alice",
        "--org",
        "Acme Imaging",
        "--key",
        pubkey.to_str().unwrap(),
        "--totp",
        "--json",
    ]);
    let json = run.ok().json();
    assert_eq!(json["name"], "alice");
    let uri = json["totp_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/chaperone:alice?secret="),
        "{uri}"
    );
    // the same key cannot belong to two vendors; a private key is refused; hostile names are refused
    d.run(&[
        "vendor",
        "add",
        "bob",
        "--org",
        "Acme",
        "--key",
        pubkey.to_str().unwrap(),
    ])
    .fails(1);
    d.run(&[
        "vendor",
        "add",
        "carol",
        "--org",
        "Acme",
        "--key",
        key.to_str().unwrap(),
    ])
    .fails(1);
    let bob = ssh_keygen(d.path(), "bob").with_extension("pub");
    // "directory" is the organisation of directory vendors in no OU: no local vendor joins it.
    let kept = d.run(&[
        "vendor",
        "add",
        "bob",
        "--org",
        " Directory ",
        "--key",
        bob.to_str().unwrap(),
    ]);
    kept.fails(1);
    assert!(
        kept.stderr().contains("is kept for directory vendors"),
        "{}",
        kept.stderr()
    );
    d.run(&[
        "vendor",
        "add",
        "Bob+x",
        "--org",
        "Acme",
        "--key",
        bob.to_str().unwrap(),
    ])
    .fails(1);
    let shown = d.run(&["vendor", "show", "alice", "--json"]);
    let json = shown.ok().json();
    assert_eq!(json["keys"].as_array().unwrap().len(), 1);
    // the TOTP seed is not stored in plain text
    let db = std::fs::read(d.path().join("chaperone.db")).unwrap();
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[test]
fn credentials_never_come_from_argv_and_are_sealed() {
    let d = DataDir::init();
    d.add_icu_pump("pump-7", "10.1.2.3");
    d.run_with_stdin(
        &[
            "asset",
            "credential",
            "set",
            "pump-7",
            "--user",
            "service",
            "--password-stdin",
        ],
        Some("s3cr3t-Pa55\n"),
    )
    .ok();
    let shown = d.run(&["asset", "show", "pump-7"]);
    assert!(shown.ok().stdout().contains("service (password)"));
    for f in ["chaperone.db", "chaperone.db-wal"] {
        if let Ok(bytes) = std::fs::read(d.path().join(f)) {
            assert!(
                !bytes.windows(11).any(|w| w == b"s3cr3t-Pa55"),
                "password in {f} in clear"
            );
        }
    }
    // there is no flag that takes a password on the command line
    d.run(&[
        "asset",
        "credential",
        "set",
        "pump-7",
        "--user",
        "service",
        "--password",
        "x",
    ])
    .fails(2);
}

/// `evidence signer` on a data directory without a signing key (made before there was one) creates one
/// the service can read: run as root (under sudo), the key and its public half take the secrets key's
/// owner, the service's user. (As another user, the files are theirs already.)
#[test]
fn a_signing_key_made_later_belongs_to_the_services_user() {
    let d = DataDir::init();
    let key = d.path().join("evidence_ed25519_key");
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(key.with_extension("pub")).unwrap();
    let root = crate::support::running_as_root();
    if root {
        std::os::unix::fs::chown(d.path().join("secrets.key"), Some(65534), Some(65534)).unwrap();
    }
    let made = d.run(&["evidence", "signer"]);
    assert!(
        made.ok()
            .stderr()
            .contains("Created the evidence signing key"),
        "{}",
        made.stderr()
    );
    if root {
        crate::support::assert_owned_by(&[key.clone(), key.with_extension("pub")], 65534);
    }
}

/// A rotation run as root follows no link the service's user planted in the data directory, which is
/// theirs to write: one where the retired keys go would have root append to, and hand over, whatever it
/// names (`/etc/passwd`). Refused, the key left as it was, the file it names untouched.
#[test]
fn a_key_rotation_follows_no_link_planted_in_the_data_directory() {
    use std::os::unix::fs::MetadataExt as _;
    let d = DataDir::init();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("passwd");
    std::fs::write(&victim, b"root:x:0:0\n").unwrap();
    let owner = std::fs::metadata(&victim).unwrap().uid();
    let key = d.path().join("evidence_ed25519_key");
    let before = std::fs::read(&key).unwrap();
    std::os::unix::fs::symlink(&victim, key.with_extension("retired")).unwrap();
    if crate::support::running_as_root() {
        std::os::unix::fs::chown(d.path().join("secrets.key"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    }
    let out = d.run(&["evidence", "signer", "--rotate"]);
    assert!(
        out.fails(1)
            .stderr()
            .contains("evidence_ed25519_key.retired"),
        "{}",
        out.stderr()
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:x:0:0\n");
    assert_eq!(std::fs::metadata(&victim).unwrap().uid(), owner);
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert!(!d.path().join("evidence_ed25519_key.new").exists());
}

/// doctor judges each key file opened as `serve` opens it, as the user it runs as: one the service's user
/// cannot read fails (its mode alone, 600, passed before), and so does a recordings directory it
/// cannot write (every session would be refused); `serve` refuses to start on the latter.
#[test]
fn doctor_and_serve_fail_on_files_the_service_cannot_use() {
    if !crate::support::running_as_root() {
        missing("root (to run doctor as another user)");
        return;
    }
    let d = DataDir::init();
    let chown = |path: &std::path::Path, id: u32| {
        std::os::unix::fs::chown(path, Some(id), Some(id)).unwrap();
    };
    chown(d.path(), 65534);
    for entry in std::fs::read_dir(d.path()).unwrap() {
        chown(&entry.unwrap().path(), 65534);
    }
    chown(&d.path().join("secrets.key"), 0);
    chown(&d.path().join("recordings"), 0);
    // The binary, where nobody may run it (the repository may be in a home directory of 0700).
    let bin = d.path().join("chaperone");
    std::fs::copy(chaperone_bin(), &bin).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&bin)
            .arg("-c")
            .arg(d.config())
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL secrets.key_file")
                && l.contains("this user cannot read it")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL recording.dir") && l.contains("cannot create recordings")),
        "{stdout}"
    );
    // With the key the service's again, serve still refuses a recordings directory it cannot write.
    chown(&d.path().join("secrets.key"), 65534);
    let out = as_nobody(&["serve"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot create recordings in"), "{stderr}");
}

/// `init` on a web listener of every address (as the package's config has it) writes that address as
/// `web.public_url`: doctor says the links built on it reach nobody.
#[test]
fn doctor_warns_of_a_public_url_nobody_can_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(chaperone_bin())
        .args(["init", "--dir"])
        .arg(dir.path())
        .args(["--ssh-listen", "127.0.0.1:0", "--web-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(chaperone_bin())
        .arg("-c")
        .arg(dir.path().join("chaperone.toml"))
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warn web.public_url: https://0.0.0.0")
                && l.contains("names no address a browser can reach")),
        "{stdout}"
    );
}

/// `session play`'s pacing is bounded: numbers a `Duration` cannot hold are refused, not a panic.
#[test]
fn session_play_refuses_pacing_out_of_bounds() {
    let d = DataDir::init();
    for (speed, max_wait) in [
        ("1e-300", "1e300"),
        ("1", "86401"),
        ("0", "1"),
        ("1", "NaN"),
    ] {
        let out = d.run(&[
            "session",
            "play",
            "s1",
            "--speed",
            speed,
            "--max-wait",
            max_wait,
        ]);
        let stderr = out.fails(1).stderr();
        assert!(
            stderr.contains("--max-wait must be") || stderr.contains("--speed must be"),
            "{speed} {max_wait}: {stderr}"
        );
    }
}

/// `demo --totp-code` prints the demo vendor's code from a demo's database only: pointed at another
/// bastion's config, it would print a real vendor's second factor.
#[test]
fn demo_totp_code_refuses_a_database_that_is_not_a_demos() {
    let d = DataDir::init();
    d.add_vendor("alice", "Acme");
    let out = d.run(&["demo", "--totp-code"]);
    assert!(
        out.fails(1).stderr().contains("not a demo's"),
        "{}",
        out.stderr()
    );
    assert!(out.stdout().trim().is_empty(), "{}", out.stdout());
}

#[test]
fn grants_are_checked_listed_and_revoked() {
    let d = DataDir::init();
    d.add_vendor("alice", "Acme");
    d.run(&[
        "asset",
        "add",
        "mri-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "MRI",
        "--service",
        "ssh:22/ssh",
        "--service",
        "dicom:104/tcp",
    ])
    .ok();
    let refused = d.run(&[
        "grant",
        "add",
        "--vendor",
        "alice",
        "--asset",
        "mri-01",
        "--services",
        "ssh,hl7",
        "--for",
        "2h",
        "--reason",
        "x",
    ]);
    assert!(refused.fails(1).stderr().contains("no service hl7"));
    d.run(&[
        "grant",
        "add",
        "--vendor",
        "alice",
        "--asset",
        "mri-01",
        "--services",
        "ssh,dicom",
        "--for",
        "2h",
        "--reason",
        "INC-4711",
    ])
    .ok();
    let list = d.run(&["grant", "list", "--json"]);
    let json = list.ok().json();
    assert_eq!(json[0]["state"], "active");
    assert_eq!(json[0]["services"], serde_json::json!(["ssh", "dicom"]));
    let id = json[0]["id"].as_i64().unwrap().to_string();
    d.run(&["grant", "revoke", &id, "--reason", "done"]).ok();
    d.run(&["grant", "revoke", &id, "--reason", "again"])
        .fails(1);
    let list = d.run(&["grant", "list", "--json"]);
    assert_eq!(list.ok().json().as_array().unwrap().len(), 0);
    let all = d.run(&["grant", "list", "--all", "--json"]);
    assert_eq!(all.ok().json()[0]["state"], "revoked");
}

/// Changing any byte of an audit row in the SQLite file makes `audit verify` fail naming that event.
#[test]
fn audit_verify_detects_a_changed_byte_in_the_sqlite_file() {
    let d = DataDir::init();
    d.run(&[
        "asset",
        "add",
        "mri-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "MRI scanner",
        "--service",
        "ssh:22/ssh",
    ])
    .ok();
    d.run(&[
        "asset",
        "add",
        "ct-02",
        "--address",
        "127.0.0.2",
        "--zone",
        "radiology",
        "--purpose",
        "CT scanner",
        "--service",
        "ssh:22/ssh",
    ])
    .ok();
    d.run(&["user", "add", "erin", "--role", "approver"]).ok();
    let ok = d.run(&["audit", "verify"]);
    assert!(ok.ok().stdout().contains("3 events"), "{}", ok.stdout());

    // Fold the WAL into the main file so the bytes are where an attacker would edit them.
    let db = d.path().join("chaperone.db");
    checkpoint(&db);
    let mut bytes = std::fs::read(&db).unwrap();
    // The audit row's JSON detail (the assets table holds the same text without the key). Every copy:
    // SQLite may keep stale copies of a page in free space.
    let needle = br#""purpose":"CT scanner""#;
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter_map(|(i, w)| (w == needle).then_some(i))
        .collect();
    assert!(!hits.is_empty(), "audit row text not found in the file");
    for at in hits {
        bytes[at + 11] = b'D';
    }
    std::fs::write(&db, &bytes).unwrap();
    let run = d.run(&["audit", "verify"]);
    run.fails(1);
    assert!(run.stderr().contains("audit event 2"), "{}", run.stderr());

    // No collector takes in the altered event; the log still exports for review, with the finding
    // appended after the (broken) chain's head.
    let refused = d.run(&["audit", "export", "--format", "jsonl"]);
    assert!(
        refused
            .fails(1)
            .stderr()
            .contains("audit event 2: content does not match")
            && refused.stdout().is_empty(),
        "{}{}",
        refused.stdout(),
        refused.stderr()
    );
    let export = d.run(&["audit", "export", "--format", "jsonl", "--unchecked"]);
    let lines: Vec<String> = export.ok().stdout().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[3].contains("\"action\":\"audit.tamper\""),
        "{lines:?}"
    );
}

/// Deleting the last audit row is noticed through the chain head.
#[test]
fn audit_verify_detects_a_deleted_last_event() {
    let d = DataDir::init();
    d.run(&[
        "asset",
        "add",
        "mri-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "MRI",
        "--service",
        "ssh:22/ssh",
    ])
    .ok();
    d.run(&["asset", "remove", "mri-01"]).ok();
    sqlite(
        &d.path().join("chaperone.db"),
        "DELETE FROM audit_events WHERE seq = 2",
    );
    let run = d.run(&["audit", "verify"]);
    run.fails(1);
    assert!(run.stderr().contains("audit event 2"), "{}", run.stderr());
}

/// A row past the chain head (inserted without moving the head) is noticed: the walk stops at the head
/// it read first, then looks past it.
#[test]
fn audit_verify_detects_an_event_past_the_head() {
    let d = DataDir::init();
    d.run(&["user", "add", "erin", "--role", "approver"]).ok();
    d.run(&["audit", "verify"]).ok();
    sqlite(
        &d.path().join("chaperone.db"),
        "INSERT INTO audit_events (seq, at, actor, action, subject, detail, prev_hash, hash) \
         SELECT seq + 1, at, actor, action, subject, detail, hash, hash FROM audit_events \
         WHERE seq = (SELECT MAX(seq) FROM audit_events)",
    );
    let run = d.run(&["audit", "verify"]);
    run.fails(1);
    assert!(
        run.stderr().contains("beyond the recorded head"),
        "{}",
        run.stderr()
    );
}

/// A head left without its seal (as someone without the secrets key leaves it) fails `audit verify`,
/// which names the head to seal; `audit seal` seals only that head, audited, and only with no node
/// running.
#[test]
fn audit_seal_seals_only_the_head_the_operator_named() {
    let d = DataDir::init();
    d.run(&["user", "add", "erin", "--role", "approver"]).ok();
    d.run(&["audit", "verify"]).ok();
    sqlite(
        &d.path().join("chaperone.db"),
        "UPDATE audit_head SET mac = NULL",
    );
    let run = d.run(&["audit", "verify"]);
    assert!(
        run.fails(1).stderr().contains("does not carry the seal"),
        "{}",
        run.stderr()
    );
    let named = run
        .stderr()
        .split("audit seal --head ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no head named: {}", run.stderr()))
        .to_owned();
    // The finding is the named head: audit.tamper, after the user's event.
    assert!(named.starts_with("2:"), "{named}");
    let doctor = d.run(&["doctor"]);
    assert!(
        doctor
            .stdout()
            .contains("FAIL audit log: the chain head (event 2) does not carry the seal"),
        "{}",
        doctor.stdout()
    );
    // A collector takes in nothing past the break; an operator reviews with --unchecked.
    let export = d.run(&["audit", "export", "--after", "1"]);
    assert!(
        export.fails(1).stderr().contains("nothing exported") && export.stdout().is_empty(),
        "{}",
        export.stderr()
    );
    let review = d.run(&["audit", "export", "--unchecked"]);
    assert_eq!(
        review.ok().stdout().lines().count(),
        2,
        "{}",
        review.stdout()
    );
    assert!(
        review.stderr().contains("for review"),
        "{}",
        review.stderr()
    );

    let wrong = format!("1:{}", "0".repeat(64));
    let refused = d.run(&["audit", "seal", "--head", &wrong]);
    assert!(
        refused
            .fails(1)
            .stderr()
            .contains("another head than the one you named"),
        "{}",
        refused.stderr()
    );
    d.run(&["audit", "seal", "--head", "2"]).fails(2);

    let sealed = d.run(&["audit", "seal", "--head", &named]);
    assert!(
        sealed.ok().stdout().contains("sealed the audit log's head"),
        "{}",
        sealed.stdout()
    );
    let ok = d.run(&["audit", "verify"]);
    assert!(ok.ok().stdout().contains("3 events"), "{}", ok.stdout());
    let doctor = d.run(&["doctor"]);
    assert!(
        doctor
            .stdout()
            .contains("ok   audit log: the chain head (event 3) carries its seal"),
        "{}",
        doctor.stdout()
    );
    let export = d.run(&["audit", "export"]);
    let last = export
        .ok()
        .stdout()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains("\"action\":\"audit.sealed\"") && last.contains(&named[2..]),
        "{last}"
    );
    let head: serde_json::Value = serde_json::from_str(&last).unwrap();
    let again = d.run(&[
        "audit",
        "seal",
        "--head",
        &format!("3:{}", head["hash"].as_str().unwrap()),
    ]);
    assert!(
        again.ok().stdout().contains("carries its seal already"),
        "{}",
        again.stdout()
    );

    // A seal made up under a key id nobody holds: no node appends to it (a node without the current
    // key would strip the seal for all), and it is replaced only when the operator names that id.
    sqlite(
        &d.path().join("chaperone.db"),
        "UPDATE audit_head SET mac = 'deadbeefdeadbeef:00'",
    );
    let run = d.run(&["audit", "verify"]);
    assert!(
        run.fails(1)
            .stderr()
            .contains("is sealed under secrets key deadbeefdeadbeef"),
        "{}",
        run.stderr()
    );
    let current = format!("3:{}", head["hash"].as_str().unwrap());
    let seal_again = |extra: &[&str]| {
        let mut args = vec!["audit", "seal", "--head", &current[..]];
        args.extend_from_slice(extra);
        d.run(&args)
    };
    let refused = seal_again(&[]);
    assert!(
        refused
            .fails(1)
            .stderr()
            .contains("--replacing-key deadbeefdeadbeef"),
        "{}",
        refused.stderr()
    );
    seal_again(&["--replacing-key", "deadbeefdeadbeef"]).ok();
    d.run(&["audit", "verify"]).ok();
}

/// A node left on the retired key after `secrets rotate` reads the head as sealed under another key
/// (and appends nothing to it), and cannot replace the current key's seal with its own.
#[test]
fn a_node_on_the_retired_key_cannot_replace_the_current_keys_seal() {
    let d = DataDir::init();
    let key = ssh_keygen(d.path(), "alice");
    d.run(&[
        "vendor",
        "add",
        "alice",
        "--org",
        "Acme Imaging",
        "--key",
        key.with_extension("pub").to_str().unwrap(),
        "--totp",
    ])
    .ok();
    let current = std::fs::read_to_string(d.path().join("secrets.key")).unwrap();
    d.run(&["secrets", "rotate"]).ok();
    let retired = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("secrets.key.retired-")
        })
        .unwrap()
        .path();
    assert_eq!(std::fs::read_to_string(&retired).unwrap(), current);
    let new_key = std::fs::read(d.path().join("secrets.key")).unwrap();
    std::fs::copy(&retired, d.path().join("secrets.key")).unwrap();

    let run = d.run(&["audit", "verify"]);
    let stderr = run.fails(1).stderr().to_owned();
    let theirs = stderr
        .split("is sealed under secrets key ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("{stderr}"))
        .to_owned();
    assert!(stderr.contains("could not record the finding"), "{stderr}");
    let export = d.run(&["audit", "export", "--unchecked"]);
    let last: serde_json::Value =
        serde_json::from_str(export.ok().stdout().lines().last().unwrap()).unwrap();
    let head = format!("{}:{}", last["seq"], last["hash"].as_str().unwrap());
    let refused = d.run(&["audit", "seal", "--head", &head, "--replacing-key", &theirs]);
    assert!(
        refused
            .fails(1)
            .stderr()
            .contains("sealed this installation's secrets"),
        "{}",
        refused.stderr()
    );
    // Given the current key again, the log holds as it was.
    std::fs::write(d.path().join("secrets.key"), new_key).unwrap();
    d.run(&["audit", "verify"]).ok();
}

/// Runs `sql` on a SQLite database file with the sqlite3 shell, as someone with write access to it would.
pub fn sqlite(db: &std::path::Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (apt: sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sql`'s first column, one row per line, from the sqlite3 shell.
pub fn sqlite_query(db: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (apt: sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn checkpoint(db: &std::path::Path) {
    sqlite(db, "PRAGMA wal_checkpoint(TRUNCATE);");
}

/// `serve` answers on both listeners and stops cleanly on SIGTERM.
#[test]
fn serve_answers_health_checks_and_stops_on_sigterm() {
    use std::io::Read;
    let b = crate::support::bastion::Bastion::start(DataDir::init());
    // The web page speaks HTTPS only (self-signed certificate from `init`, hence -k).
    let reply = crate::support::web::curl(
        None,
        &[&format!("https://127.0.0.1:{}/healthz", b.web_port)],
    );
    assert!(
        reply.status == 200 && reply.body == "ok\n",
        "{} {}",
        reply.status,
        reply.body
    );
    let mut ssh = std::net::TcpStream::connect(("127.0.0.1", b.ssh_port)).unwrap();
    let mut banner = [0u8; 8];
    ssh.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    let log = b.log.clone();
    let started = std::time::Instant::now();
    b.terminate();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let log = log.lock().unwrap().clone();
    assert!(log.contains("stopped"), "{log}");
}

/// The README's run command: `chaperone demo` sets up, serves, and prints what to try (with a simulated
/// device when sshd is installed).
#[test]
fn demo_serves_and_prints_what_to_try() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut child = crate::support::guarded(
        chaperone_bin(),
        &[
            "demo",
            "--dir",
            data.to_str().unwrap(),
            "--ssh-listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut printed = String::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Serving SSH on") {
            break;
        }
    }
    crate::support::stop_guarded(&mut child);
    assert!(
        printed.contains("vendor alice") && printed.contains("audit verify"),
        "{printed}"
    );
    assert!(printed.contains("alice+mri-01@127.0.0.1"), "{printed}");
    // OpenSSH's sshd stands in for mri-01 when the demo finds one on its PATH, as it does here (the
    // simulated device is tests/it/demo.rs's).
    let sshd_on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("sshd").is_file());
    if sshd_on_path {
        assert!(printed.contains("OpenSSH sshd on 127.0.0.1:"), "{printed}");
    } else if std::path::Path::new(crate::support::sshd::SSHD).exists() {
        assert!(printed.contains("SIMULATED device"), "{printed}");
    } else {
        crate::support::missing("sshd (openssh-server)");
    }
}

/// `audit export --format syslog` writes one RFC 5424 line per event, the same events as JSON lines, and
/// `--after SEQ` gives a collector only what it has not seen.
#[test]
fn audit_export_as_syslog_and_from_a_sequence_number() {
    let d = DataDir::init();
    for name in ["mri-01", "ct-02", "xr-03"] {
        d.run(&[
            "asset",
            "add",
            name,
            "--address",
            "127.0.0.1",
            "--zone",
            "radiology",
            "--purpose",
            "Scanner",
            "--service",
            "ssh:22/ssh",
        ])
        .ok();
    }
    let jsonl = d
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    let syslog = d
        .run(&["audit", "export", "--format", "syslog"])
        .ok()
        .stdout();
    assert_eq!(jsonl.lines().count(), syslog.lines().count());
    assert!(jsonl.lines().count() >= 3, "{jsonl}");
    for (line, json) in syslog.lines().zip(jsonl.lines()) {
        // <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
        let fields: Vec<&str> = line.splitn(8, ' ').collect();
        assert_eq!(fields.len(), 8, "{line}");
        assert!(matches!(fields[0], "<84>1" | "<85>1"), "{line}");
        assert!(
            fields[1].len() == 20 && fields[1].ends_with('Z') && fields[1].contains('T'),
            "{line}"
        );
        assert!(fields[2].chars().all(|c| c.is_ascii_graphic()), "{line}");
        assert_eq!(
            (fields[3], fields[4], fields[6]),
            ("chaperone", "-", "-"),
            "{line}"
        );
        let event: serde_json::Value = serde_json::from_str(fields[7]).unwrap();
        let same: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(event, same);
        assert_eq!(fields[5], event["action"].as_str().unwrap());
    }
    let last_seen = serde_json::from_str::<serde_json::Value>(jsonl.lines().next().unwrap())
        .unwrap()["seq"]
        .as_i64()
        .unwrap();
    let newer = d
        .run(&[
            "audit",
            "export",
            "--format",
            "syslog",
            "--after",
            &last_seen.to_string(),
        ])
        .ok()
        .stdout();
    assert_eq!(newer.lines().count(), jsonl.lines().count() - 1);
    assert!(
        newer.contains("asset:ct-02") && newer.contains("asset:xr-03"),
        "{newer}"
    );
    assert!(!newer.contains("asset:mri-01"), "{newer}");
    // With the collector's last event's hash too: the same, while that event is this log's; a hash
    // this log's event does not have, or a number past its head (a log restored from an older backup
    // reuses the numbers), is refused rather than skipping events without a word.
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    let pinned = format!("{last_seen}:{}", first["hash"].as_str().unwrap());
    let same = d
        .run(&["audit", "export", "--format", "syslog", "--after", &pinned])
        .ok()
        .stdout();
    assert_eq!(same, newer);
    let forked = format!("{last_seen}:{}", "0".repeat(64));
    let refused = d.run(&["audit", "export", "--after", &forked]);
    assert_ne!(refused.code(), 0);
    assert!(
        refused.stderr().contains("its hash differs"),
        "{}",
        refused.stderr()
    );
    let refused = d.run(&[
        "audit",
        "export",
        "--after",
        &format!("0:{}", "0".repeat(64)),
    ]);
    assert_ne!(refused.code(), 0);
    assert!(
        refused.stderr().contains("no event 0"),
        "{}",
        refused.stderr()
    );
    let past = (last_seen + 1000).to_string();
    let refused = d.run(&["audit", "export", "--after", &past]);
    assert_ne!(refused.code(), 0);
    assert!(
        refused.stderr().contains("restored from an older backup"),
        "{}",
        refused.stderr()
    );
    // Written to a file: the same lines, in a file only its owner reads (names, addresses, reasons).
    let file = d.path().join("audit.jsonl");
    d.run(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--output",
        file.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        jsonl.lines().count()
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // A file an older build left world-readable is made private when written again, and an
        // export refused (a collector past the head) leaves the file as it was.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = std::fs::read_to_string(&file).unwrap();
        let refused = d.run(&[
            "audit",
            "export",
            "--after",
            &past,
            "--output",
            file.to_str().unwrap(),
        ]);
        assert_ne!(refused.code(), 0);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
        d.run(&["audit", "export", "--output", file.to_str().unwrap()])
            .ok();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // A symbolic link (another user's, in a shared directory) is not followed.
        let aimed = d.path().join("someone-elses.txt");
        std::fs::write(&aimed, "theirs").unwrap();
        let link = d.path().join("export-link.jsonl");
        std::os::unix::fs::symlink(&aimed, &link).unwrap();
        let refused = d.run(&["audit", "export", "--output", link.to_str().unwrap()]);
        assert_ne!(refused.code(), 0);
        assert!(
            refused.stderr().contains("a symbolic link is not followed"),
            "{}",
            refused.stderr()
        );
        assert_eq!(std::fs::read_to_string(&aimed).unwrap(), "theirs");
        // Nor a hard link's other name (it could be anywhere; `sudo` would empty it), nor a FIFO
        // (neither waited on nor written to).
        let hard = d.path().join("export-hard.jsonl");
        std::fs::hard_link(&aimed, &hard).unwrap();
        let refused = d.run(&["audit", "export", "--output", hard.to_str().unwrap()]);
        assert!(
            refused.stderr().contains("has other names (hard links)"),
            "{}",
            refused.stderr()
        );
        assert_eq!(std::fs::read_to_string(&aimed).unwrap(), "theirs");
        std::fs::remove_file(&hard).unwrap();
        let fifo = d.path().join("export.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Were the FIFO opened to be written with blocking, the export would wait for a reader: after
        // 10 s this thread becomes one, so that regression fails here instead of hanging.
        let (exported, waited) = std::sync::mpsc::channel::<()>();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let stuck = waited
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_err();
                if stuck {
                    let _ = std::fs::read(&fifo);
                }
                stuck
            })
        };
        let refused = d.run(&["audit", "export", "--output", fifo.to_str().unwrap()]);
        exported.send(()).unwrap();
        assert!(
            !reader.join().unwrap(),
            "the export waited for the FIFO's reader"
        );
        assert_ne!(refused.code(), 0, "{}", refused.stderr());
        assert!(
            refused.stderr().contains("export.fifo"),
            "{}",
            refused.stderr()
        );
        // Another user's file is not overwritten either (they could read it, whatever its mode): shown as
        // root, the one user here who can give a file away.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&aimed, Some(65534), None).unwrap();
            let refused = d.run(&["audit", "export", "--output", aimed.to_str().unwrap()]);
            assert!(
                refused.stderr().contains("belongs to another user"),
                "{}",
                refused.stderr()
            );
            assert_eq!(std::fs::read_to_string(&aimed).unwrap(), "theirs");
        }
    }
}

/// Issue 12: free text read back from the database (grant reasons, organisations, key comments, asset
/// fields) prints escaped in every table and `show`: a control character in it is shown, never sent to
/// the administrator's terminal. `--json` stays exact.
#[test]
fn issue_12_text_from_the_database_prints_escaped() {
    let d = DataDir::init();
    d.add_vendor("alice", "Acme");
    d.run(&[
        "asset",
        "add",
        "mri-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "MRI",
        "--service",
        "ssh:22/ssh",
    ])
    .ok();
    d.run(&[
        "grant",
        "add",
        "--vendor",
        "alice",
        "--asset",
        "mri-01",
        "--services",
        "ssh",
        "--for",
        "2h",
        "--reason",
        "INC-1",
    ])
    .ok();
    sqlite(
        &d.path().join("chaperone.db"),
        "UPDATE grants SET reason = 'INC' || char(27) || ']52;c;ZXZpbA==' || char(7); \
         UPDATE vendors SET org = 'Acme' || char(27) || '[2J' || char(10) || 'forged line'; \
         UPDATE vendor_keys SET comment = 'laptop' || char(27) || ']0;title' || char(7); \
         UPDATE assets SET purpose = 'MRI' || char(155) || '6n', vendor_org = 'Org' || char(8238) || 'txt';",
    );
    for (args, escaped) in [
        (&["grant", "list"][..], "INC\\x1b]52;c;ZXZpbA==\\x07"),
        (&["vendor", "list"][..], "Acme\\x1b[2J\\nforged line"),
        (
            &["vendor", "show", "alice"][..],
            "Acme\\x1b[2J\\nforged line",
        ),
        (&["vendor", "show", "alice"][..], "laptop\\x1b]0;title\\x07"),
        (&["asset", "list"][..], "MRI\\u{9b}6n"),
        (&["asset", "show", "mri-01"][..], "MRI\\u{9b}6n"),
        (&["asset", "show", "mri-01"][..], "Org\\u{202e}txt"),
    ] {
        let run = d.run(args);
        let out = run.ok().stdout();
        assert!(out.contains(escaped), "{args:?}: {out}");
        assert!(
            !out.contains(['\x1b', '\x07', '\u{9b}', '\u{202e}']),
            "{args:?}: {out:?}"
        );
    }
    let json = d.run(&["grant", "list", "--json"]).ok().json();
    assert_eq!(json[0]["reason"], "INC\x1b]52;c;ZXZpbA==\x07");
}

/// `vendor add alice` and `asset add mri-01` (ssh 22, dicom 104) in a fresh data directory.
fn alice_and_mri(d: &DataDir) {
    let key = ssh_keygen(d.path(), "alice").with_extension("pub");
    d.run(&[
        "vendor",
        "add",
        "alice",
        "--org",
        "Acme",
        "--key",
        key.to_str().unwrap(),
    ])
    .ok();
    d.run(&[
        "asset",
        "add",
        "mri-01",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "MRI",
        "--service",
        "ssh:22/ssh",
        "--service",
        "dicom:104/tcp",
    ])
    .ok();
}

#[test]
fn grant_add_for_a_disabled_vendor_is_refused_and_audited_and_grants_last_at_most_30_days() {
    let d = DataDir::init();
    alice_and_mri(&d);
    let add = |duration: &str| {
        d.run(&[
            "grant",
            "add",
            "--vendor",
            "alice",
            "--asset",
            "mri-01",
            "--services",
            "ssh",
            "--for",
            duration,
            "--reason",
            "CHG-1 planned maintenance",
        ])
    };
    let long = add("31d");
    assert!(
        long.fails(1)
            .stderr()
            .contains("longer than the longest grant, 30d"),
        "{}",
        long.stderr()
    );
    d.run(&["vendor", "disable", "alice"]).ok();
    let refused = add("2h");
    assert!(
        refused
            .fails(1)
            .stderr()
            .contains("vendor alice is disabled"),
        "{}",
        refused.stderr()
    );
    assert_eq!(
        d.run(&["grant", "list", "--all", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let audit = d
        .run(&["audit", "export", "--format", "jsonl"])
        .ok()
        .stdout();
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["action"] == "grant.refused")
        .collect();
    assert_eq!(events.len(), 1, "{audit}");
    let detail: serde_json::Value =
        serde_json::from_str(events[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["source"], "staff-issued");
    assert_eq!(detail["vendor"], "alice");
    assert!(
        detail["refusal"].as_str().unwrap().contains("disabled"),
        "{detail}"
    );
    d.run(&["audit", "verify"]).ok();
    // Enabled again, the same grant is issued (30 days is the most, and allowed).
    d.run(&["vendor", "enable", "alice"]).ok();
    add("30d").ok();
}

#[test]
fn two_services_on_one_port_are_refused_when_an_asset_is_added_or_changed() {
    let d = DataDir::init();
    let clash = d.run(&[
        "asset",
        "add",
        "ct-02",
        "--address",
        "127.0.0.1",
        "--zone",
        "radiology",
        "--purpose",
        "CT",
        "--service",
        "ssh:22/ssh",
        "--service",
        "raw:22/tcp",
    ]);
    assert!(
        clash
            .fails(1)
            .stderr()
            .contains("services ssh and raw would share port 22"),
        "{}",
        clash.stderr()
    );
    assert_eq!(
        d.run(&["asset", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was added"
    );
    alice_and_mri(&d);
    let added = d.run(&["asset", "service", "add", "mri-01", "raw:22/tcp"]);
    assert!(
        added
            .fails(1)
            .stderr()
            .contains("services ssh and raw would share port 22"),
        "{}",
        added.stderr()
    );
    let again = d.run(&["asset", "service", "add", "mri-01", "pacs:104/tcp"]);
    assert!(
        again.fails(1).stderr().contains("share port 104"),
        "{}",
        again.stderr()
    );
    d.run(&["asset", "service", "add", "mri-01", "hl7:2575/tcp"])
        .ok();
    let shown = d.run(&["asset", "show", "mri-01", "--json"]).ok().json();
    let ports: Vec<u64> = shown["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![22, 104, 2575]);
}

/// Every file that holds a secret is held to one rule by `serve` and `doctor` alike (`key_files`): the
/// keys chaperone makes and keeps (the SSH host key, the evidence signing key) its owner's only, the web
/// TLS key (which the hospital's PKI may manage) its owner's and group's. `serve` refuses to start on an
/// SSH host key or web TLS key others may read (whoever reads the host key poses as the bastion to every
/// vendor who pinned its fingerprint), and `doctor` names the signing key too.
#[test]
fn serve_and_doctor_refuse_key_files_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = DataDir::init();
    let chmod = |name: &str, mode: u32| {
        std::fs::set_permissions(d.path().join(name), std::fs::Permissions::from_mode(mode))
            .unwrap()
    };
    for (name, mode, said) in [
        ("ssh_host_ed25519_key", 0o640, "reading the SSH host key"),
        ("web_key.pem", 0o644, "web.tls_key"),
    ] {
        chmod(name, mode);
        let run = d.run(&["serve"]);
        run.fails(1);
        assert!(
            run.stderr().contains(said) && run.stderr().contains("chmod"),
            "{name}: {}",
            run.stderr()
        );
        let doctor = d.run(&["doctor"]);
        doctor.fails(1);
        assert!(
            doctor
                .stdout()
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains(name)),
            "{name}: {}",
            doctor.stdout()
        );
        chmod(name, 0o600);
    }
    // A TLS key its group may read is served (the PKI's share), and so passes doctor's check too.
    chmod("web_key.pem", 0o640);
    let doctor = d.run(&["doctor"]);
    assert!(
        doctor
            .stdout()
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("web.tls_key")),
        "{}",
        doctor.stdout()
    );
    chmod("evidence_ed25519_key", 0o644);
    let doctor = d.run(&["doctor"]);
    assert!(
        doctor
            .stdout()
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("recording.signing_key")),
        "{}",
        doctor.stdout()
    );
}
