//! A real OpenSSH `sshd` standing in for a medical device: its own host key and config on a free
//! loopback port, killed with the test process (TEST-HARNESS.md recipe).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, guarded, missing, ssh_keygen};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The account chaperone logs in as (the user running the tests).
    pub user: String,
    /// The device's authorized key: what `asset credential set --key` is given.
    pub client_key: PathBuf,
    _child: std::process::Child,
}

impl Sshd {
    /// Starts sshd, or returns `None` (after `missing`) when it is not installed.
    pub fn start() -> Option<Sshd> {
        Sshd::start_with("")
    }

    /// [`Sshd::start`] with more `sshd_config` lines.
    pub fn start_with(extra: &str) -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            missing("sshd (openssh-server)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("chaperone-sshd")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = ssh_keygen(d, "host_key");
        let client_key = ssh_keygen(d, "client_key");
        std::fs::copy(client_key.with_extension("pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let home = quiet_home(d);
        let port = free_port();
        let config = format!(
            "SetEnv HOME={}\nPort {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin yes\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n{extra}",
            home.display(),
            host_key.display(),
            d.join("sshd.pid").display(),
            d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let cfg = d.join("sshd_config");
        let log = d.join("sshd.log");
        let child = guarded(
            SSHD,
            &[
                "-D",
                "-f",
                &cfg.to_string_lossy(),
                "-E",
                &log.to_string_lossy(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Sshd {
            port,
            user: current_user(),
            client_key,
            dir,
            _child: child,
        })
    }

    /// The host key line to pin: `ssh-ed25519 AAAA…`.
    pub fn host_key_line(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_key.pub"))
            .expect("host key")
            .trim()
            .to_owned()
    }
}

/// A home of the device's own for its shells (`SetEnv HOME`), so they do not run the startup files of
/// the account running the tests. On a machine whose root runs `pyenv init` from `~/.bashrc`, every device
/// shell otherwise took pyenv's rehash lock, and one stale lock made every session wait (the flaky CI run
/// of 2026-12-06). A login shell starts in it with a prompt that ends in `~$ ` or `~# `, as before.
fn quiet_home(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir(&home).expect("device home");
    std::fs::write(
        home.join(".profile"),
        "cd \"$HOME\"\nPS1='\\u@\\h:\\w\\$ '\n",
    )
    .expect(".profile");
    std::fs::write(home.join(".bashrc"), "").expect(".bashrc");
    home
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
