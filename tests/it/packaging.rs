//! The Debian package's parts, checked cheaply (building the .deb itself is `packaging/make-deb`, a
//! release build): the unit passes `systemd-analyze verify` and rates "OK" or better in
//! `systemd-analyze security`; every asset `[package.metadata.deb]` names exists; the packaged config,
//! moved into a scratch directory, is initialised by postinst's `init --from-config` (once: a second
//! run, as on an upgrade, refuses to touch the data), and `chaperone doctor` passes on it and fails, one
//! line per finding, when a key becomes readable by others.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::bastion::text;
use crate::support::{chaperone_bin, missing};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_unit_verifies_and_rates_ok_and_the_package_assets_exist() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let deb = &manifest[manifest
        .find("[package.metadata.deb]")
        .expect("[package.metadata.deb] in Cargo.toml")..];
    for line in deb.lines().filter(|l| l.trim_start().starts_with("[\"")) {
        let source = line.trim_start().trim_start_matches("[\"");
        let source = &source[..source.find('"').unwrap()];
        if source.starts_with("target/") {
            continue;
        }
        assert!(
            repo().join(source).is_file(),
            "deb asset {source} is missing"
        );
    }
    for script in [
        "packaging/debian/postinst",
        "packaging/debian/postrm",
        "packaging/make-deb",
    ] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(repo().join(script))
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", text(&out).1);
    }

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        missing("systemd-analyze (apt systemd)");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("packaging/chaperone.service")).unwrap();
    for needed in [
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "StateDirectory=chaperone",
        "LimitNOFILE=65536",
        "ExecStart=/usr/bin/chaperone -c /etc/chaperone/chaperone.toml serve",
    ] {
        assert!(unit.lines().any(|l| l == needed), "the unit lacks {needed}");
    }
    // As installed, but pointing at this build (verify checks that ExecStart exists).
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("chaperone.service");
    std::fs::write(
        &installed,
        unit.replace("/usr/bin/chaperone", chaperone_bin()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&installed)
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert!(
        code == 0 && !stderr.contains("Unknown"),
        "systemd-analyze verify: {stdout}{stderr}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&installed)
        .output()
        .unwrap();
    let (stdout, stderr, _) = text(&out);
    let verdict = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level: {stdout}{stderr}"));
    assert!(
        [" OK", " SAFE", " PERFECT"]
            .iter()
            .any(|v| verdict.contains(v)),
        "{verdict}"
    );
}

fn chaperone(config: &Path, args: &[&str]) -> (String, String, i32) {
    let out = Command::new(chaperone_bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    text(&out)
}

#[test]
fn the_packaged_config_is_initialised_once_and_doctor_reports_one_line_per_finding() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let packaged = std::fs::read_to_string(repo().join("packaging/chaperone.toml")).unwrap();
    assert!(packaged.contains("/var/lib/chaperone/"), "{packaged}");
    let config = state.path().join("chaperone.toml");
    std::fs::write(
        &config,
        packaged
            .replace("/var/lib/chaperone", &state_dir.display().to_string())
            .replace("0.0.0.0:2222", "127.0.0.1:0")
            .replace("0.0.0.0:8443", "127.0.0.1:0"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    // postinst on a fresh install, then on an upgrade (the data exists: nothing is replaced).
    let (stdout, stderr, code) = chaperone(&config, &["init", "--from-config"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let key = std::fs::read(state_dir.join("secrets.key")).unwrap();
    let (_, stderr, code) = chaperone(&config, &["init", "--from-config"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(state_dir.join("secrets.key")).unwrap(), key);

    let (stdout, stderr, code) = chaperone(&config, &["doctor"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for finding in [
        "ok   config:",
        "ok   secrets.key_file:",
        "ok   web certificate name:",
        "ok   passkey links:",
        "ok   recording space:",
        "ok   database:",
        "ok   migrations: all",
    ] {
        assert!(stdout.contains(finding), "no {finding:?} in\n{stdout}");
    }
    assert!(stdout.lines().all(|l| !l.starts_with("FAIL")), "{stdout}");

    // A key readable by others, and a database that is not there: each is one FAIL line, exit 1.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            state_dir.join("secrets.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    std::fs::rename(state_dir.join("chaperone.db"), state_dir.join("moved.db")).unwrap();
    let (stdout, stderr, code) = chaperone(&config, &["doctor"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails
            .iter()
            .any(|l| l.starts_with("FAIL secrets.key_file:") && l.contains("644")),
        "{stdout}"
    );
    assert!(
        fails.iter().any(|l| l.starts_with("FAIL database")),
        "{stdout}"
    );
    assert!(stderr.contains("checks failed"), "{stderr}");
}
