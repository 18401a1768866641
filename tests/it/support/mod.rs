//! The harness: temp dirs, the chaperone binary, child processes that die with the test process, and
//! real servers (PostgreSQL here; sshd with the SSH tests).

pub mod bastion;
pub mod postgres;
pub mod slapd;
pub mod sshd;
pub mod tmux;
pub mod web;
pub mod webhook;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The audit chain's head seal of a throwaway installation (a fresh secrets key), for tests that open a
/// store of their own.
pub fn throwaway_seal() -> chaperone::audit::HeadSeal {
    let dir = tempfile::tempdir().unwrap();
    let key = chaperone::secrets::SecretsKey::generate_file(&dir.path().join("k")).unwrap();
    chaperone::audit::HeadSeal::new(&key)
}

/// The audit chain's head seal of the installation `config` describes (its secrets key).
pub fn seal_of(config: &chaperone::config::Config) -> chaperone::audit::HeadSeal {
    let key = chaperone::secrets::SecretsKey::load(&config.secrets.key_file).unwrap();
    chaperone::audit::HeadSeal::new(&key)
}

/// The chaperone binary cargo built for this test run.
pub fn chaperone_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chaperone")
}

/// Whether every real part is required (CI): a missing one is a failure, not a skip.
pub fn require_all() -> bool {
    std::env::var("CHAPERONE_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips (locally) or fails (CI) when `part` is missing.
#[track_caller]
/// The Python the tests run their impolite clients with (`CHAPERONE_TEST_PYTHON`, as `.ci/run` sets it
/// to its virtualenv's; else `python3`).
pub fn python() -> String {
    std::env::var("CHAPERONE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn missing(part: &str) {
    assert!(
        !require_all(),
        "{part} is required (CHAPERONE_REQUIRE_ALL=1) but missing; .ci/run installs it"
    );
    eprintln!("SKIP: {part} is missing (set CHAPERONE_REQUIRE_ALL=1 to make this a failure)");
}

/// A free loopback port (bound then released; good enough for tests that start a server right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Wraps `program args…` in a shell watchdog that kills it when this test process exits, so no server
/// outlives a test run (statics are never dropped).
pub fn guarded(program: &str, args: &[&str]) -> Command {
    watched(program, args, "")
}

/// [`guarded`], and `dir` removed once the program has ended: for a server whose data outlives the
/// test process's own clean-up (one held in a `static`, never dropped).
pub fn guarded_removing(program: &str, args: &[&str], dir: &std::path::Path) -> Command {
    let rm = format!("; rm -rf {}", shell_quote(&dir.to_string_lossy()));
    watched(program, args, &rm)
}

fn watched(program: &str, args: &[&str], after: &str) -> Command {
    let quoted: Vec<String> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect();
    let script = format!(
        "{} & child=$!; trap 'kill $child 2>/dev/null; wait $child{after}; exit 0' TERM; \
         while kill -0 {} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.2; done; kill $child 2>/dev/null; wait $child{after}",
        quoted.join(" "),
        std::process::id()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

/// Stops a process started with [`guarded`] (its watchdog passes SIGTERM on) and reaps it.
pub fn stop_guarded(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A chaperone data directory made by `chaperone init`.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

impl DataDir {
    /// `asset add` of an infusion pump in zone `icu` with an ssh service on port 22.
    pub fn add_icu_pump(&self, name: &str, address: &str) {
        self.run(&[
            "asset",
            "add",
            name,
            "--address",
            address,
            "--zone",
            "icu",
            "--purpose",
            "Infusion pump",
            "--service",
            "ssh:22/ssh",
        ])
        .ok();
    }

    /// `vendor add NAME --org ORG` with a new key made in the data directory.
    pub fn add_vendor(&self, name: &str, org: &str) {
        let key = ssh_keygen(self.path(), name).with_extension("pub");
        self.run(&[
            "vendor",
            "add",
            name,
            "--org",
            org,
            "--key",
            key.to_str().unwrap(),
        ])
        .ok();
    }

    /// `grant add` for a vendor's services on an asset, with or without a server running; the grant's id.
    pub fn grant(&self, vendor: &str, asset: &str, services: &str, duration: &str) -> i64 {
        let out = self
            .run(&[
                "grant",
                "add",
                "--vendor",
                vendor,
                "--asset",
                asset,
                "--services",
                services,
                "--for",
                duration,
                "--reason",
                "test",
            ])
            .ok()
            .stdout();
        out.split('#')
            .nth(1)
            .and_then(|s| s.split(':').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("grant id in {out}"))
    }

    pub fn init() -> DataDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(chaperone_bin())
            .args(["init", "--dir"])
            .arg(dir.path())
            .args(["--ssh-listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0"])
            .output()
            .expect("run chaperone init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DataDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Moves the web listener to a free fixed port and returns it: a passkey's relying party is
    /// `https://localhost:PORT`, so the port must be known before the server starts.
    pub fn fix_web_port(&self) -> u16 {
        let port = free_port();
        let config = std::fs::read_to_string(self.config()).unwrap();
        let at = config.find("[web]").expect("a [web] section");
        let (head, tail) = config.split_at(at);
        let tail = tail.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
        std::fs::write(self.config(), format!("{head}{tail}")).unwrap();
        port
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("chaperone.toml")
    }

    /// Runs `chaperone -c CONFIG args…`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        use std::io::Write;
        let mut cmd = Command::new(chaperone_bin());
        cmd.arg("-c").arg(self.config()).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn chaperone");
        if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        Run(child.wait_with_output().expect("wait for chaperone"))
    }
}

/// A finished command with helpers for assertions.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code(),
            0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    #[track_caller]
    pub fn fails(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}

/// Writes a fresh ed25519 key pair with ssh-keygen; returns the private key path.
pub fn ssh_keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@test"))
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(out.status.success(), "ssh-keygen failed");
    path
}

/// Whether the tests run as root (CI does, under sudo): what only root may do (give a file to another
/// user) is checked then.
/// Asserts that each of `files` belongs to user and group `id` (a rotation or creation under sudo
/// leaves files to the service's user).
pub fn assert_owned_by(files: &[PathBuf], id: u32) {
    use std::os::unix::fs::MetadataExt as _;
    for file in files {
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (id, id), "{}", file.display());
    }
}

pub fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
