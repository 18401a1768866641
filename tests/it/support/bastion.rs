//! `chaperone serve` as a child process on loopback ports it picks itself, plus vendors that log in
//! with the real OpenSSH client (key + TOTP through SSH_ASKPASS).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sshd::Sshd;
use super::{DataDir, Run, chaperone_bin, guarded, ssh_keygen};

pub struct Bastion {
    pub data: DataDir,
    pub ssh_port: u16,
    pub web_port: u16,
    pub known_hosts: PathBuf,
    child: std::process::Child,
    /// Everything the server logged, for assertions and failure messages.
    pub log: Arc<Mutex<String>>,
}

impl Bastion {
    /// Starts `chaperone serve` on an initialised data dir.
    pub fn start(data: DataDir) -> Bastion {
        Bastion::start_with_env(data, &[])
    }

    /// Starts `chaperone serve` with more environment variables (`LD_PRELOAD` of libfaketime, say).
    pub fn start_with_env(data: DataDir, env: &[(&str, &str)]) -> Bastion {
        let config = data.config();
        let mut child = guarded(chaperone_bin(), &["-c", &config.to_string_lossy(), "serve"])
            .env("RUST_LOG", "info,chaperone=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chaperone serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("chaperone serving")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("chaperone serve did not start:\n{}", log.lock().unwrap()));
        let port_of = |key: &str| -> u16 {
            let at = line
                .find(key)
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                + key.len();
            let addr: String = line[at..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect();
            addr.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("bad address {addr}"))
        };
        let ssh_port = port_of("ssh=");
        let web_port = port_of("web=");
        let host_key =
            std::fs::read_to_string(data.path().join("ssh_host_ed25519_key.pub")).unwrap();
        let known_hosts = data.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{ssh_port} {}", host_key.trim()),
        )
        .unwrap();
        Bastion {
            data,
            ssh_port,
            web_port,
            known_hosts,
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Adds a vendor with a fresh key; returns a handle that can log in.
    pub fn vendor(&self, name: &str, org: &str) -> Vendor {
        let (key, run) = self.add_vendor(name, org, &["--totp", "--json"]);
        let uri = run.ok().json()["totp_uri"].as_str().unwrap().to_owned();
        let secret = uri
            .split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned();
        Vendor {
            name: name.to_owned(),
            key,
            secret,
            last_step: Mutex::new(0),
        }
    }

    /// Adds a vendor with a fresh key and no TOTP app yet: their first login enrols one. The handle
    /// has no secret (the login shows it).
    pub fn vendor_to_enrol(&self, name: &str, org: &str) -> Vendor {
        let (key, run) = self.add_vendor(name, org, &[]);
        run.ok();
        Vendor {
            name: name.to_owned(),
            key,
            secret: String::new(),
            last_step: Mutex::new(0),
        }
    }

    /// `vendor add NAME --org ORG --key (a fresh key) EXTRA…`: the key and the run.
    fn add_vendor(&self, name: &str, org: &str, extra: &[&str]) -> (PathBuf, Run) {
        let key = ssh_keygen(self.data.path(), &format!("vendor_{name}"));
        let public = key.with_extension("pub").to_string_lossy().into_owned();
        let mut args = vec!["vendor", "add", name, "--org", org, "--key", &public];
        args.extend_from_slice(extra);
        let run = self.data.run(&args);
        (key, run)
    }

    /// Adds an asset backed by `sshd`, with its host key pinned and credential set.
    pub fn device(&self, name: &str, sshd: &Sshd, extra_services: &[&str]) {
        self.device_at(
            name,
            sshd.port,
            &sshd.host_key_line(),
            &sshd.user,
            &sshd.client_key,
            extra_services,
        );
    }

    /// An asset at 127.0.0.1:`port` whose pinned host key is `host_key_line`, signed in to as `user`
    /// with the private key at `key`.
    pub fn device_at(
        &self,
        name: &str,
        port: u16,
        host_key_line: &str,
        user: &str,
        key: &std::path::Path,
        extra_services: &[&str],
    ) {
        let mut args = vec![
            "asset".to_owned(),
            "add".into(),
            name.into(),
            "--address".into(),
            "127.0.0.1".into(),
            "--zone".into(),
            "radiology".into(),
            "--purpose".into(),
            "Test device".into(),
            "--service".into(),
            format!("ssh:{port}/ssh"),
        ];
        for s in extra_services {
            args.push("--service".into());
            args.push((*s).to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.data.run(&args).ok();
        self.data
            .run(&["asset", "hostkey", "set", name, host_key_line])
            .ok();
        self.data
            .run(&[
                "asset",
                "credential",
                "set",
                name,
                "--user",
                user,
                "--key",
                &key.to_string_lossy(),
            ])
            .ok();
    }

    /// The id of the first session not ended yet, once `session list` shows one (within 15 s).
    pub fn live_session_id(&self) -> String {
        let mut live = String::new();
        assert!(
            wait_until(Duration::from_secs(15), || {
                let found = self
                    .data
                    .run(&["session", "list", "--json", "--ended", "live"])
                    .ok()
                    .json();
                match found.as_array().and_then(|a| a.first()) {
                    Some(s) => {
                        live = s["id"].as_str().unwrap().to_owned();
                        true
                    }
                    None => false,
                }
            }),
            "no live session\n{}",
            self.log()
        );
        live
    }

    pub fn grant(&self, vendor: &str, asset: &str, services: &str, duration: &str) -> i64 {
        self.data.grant(vendor, asset, services, duration)
    }

    /// An `ssh` command for `user` with the vendor's key and TOTP answered through SSH_ASKPASS.
    pub fn ssh(&self, vendor: &Vendor, user: &str) -> Command {
        self.ssh_with(vendor, &[], user)
    }

    /// Like [`Bastion::ssh`] with extra client options (before the destination), e.g. `-tt`.
    pub fn ssh_with(&self, vendor: &Vendor, options: &[&str], user: &str) -> Command {
        self.ssh_answering(vendor, options, user, &vendor.askpass(self.data.path()))
    }

    /// An `ssh` whose TOTP prompt is answered by the given askpass script (wrong codes, replays).
    pub fn ssh_answering(
        &self,
        vendor: &Vendor,
        options: &[&str],
        user: &str,
        askpass: &Path,
    ) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.client_options(vendor))
            .args(options)
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .env("SSH_ASKPASS", askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    /// Options shared by ssh, scp and sftp: no user config, pinned bastion host key, key then TOTP.
    pub fn client_options(&self, vendor: &Vendor) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            vendor.key.to_string_lossy().into_owned(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "PreferredAuthentications=publickey,keyboard-interactive".into(),
            "-o".into(),
            "NumberOfPasswordPrompts=1".into(),
            "-o".into(),
            "LogLevel=INFO".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
        ]
    }

    /// The askpass environment for scp/sftp commands built by the test.
    pub fn askpass_env(&self, vendor: &Vendor) -> Vec<(String, String)> {
        vec![
            (
                "SSH_ASKPASS".into(),
                vendor
                    .askpass(self.data.path())
                    .to_string_lossy()
                    .into_owned(),
            ),
            ("SSH_ASKPASS_REQUIRE".into(), "force".into()),
        ]
    }
}

impl Bastion {
    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        super::stop_guarded(&mut self.child);
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }
}

impl Bastion {
    /// Stops the server and keeps its data directory (to run offline commands, then start again).
    pub fn stop(mut self) -> DataDir {
        super::stop_guarded(&mut self.child);
        std::mem::replace(
            &mut self.data,
            DataDir {
                dir: tempfile::tempdir().expect("temp dir"),
            },
        )
    }
}

impl Bastion {
    /// Kills the server with SIGKILL (no chance to end its sessions) and keeps its data directory.
    pub fn crash(mut self) -> DataDir {
        // The child is the watchdog shell; chaperone is its child.
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::mem::replace(
            &mut self.data,
            DataDir {
                dir: tempfile::tempdir().expect("temp dir"),
            },
        )
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.child);
    }
}

/// A vendor technician: key and TOTP seed.
pub struct Vendor {
    pub name: String,
    pub key: PathBuf,
    pub secret: String,
    /// The last TOTP step handed out: each login needs a newer one (replay protection).
    pub last_step: Mutex<i64>,
}

impl Vendor {
    /// The next unused TOTP code: steps now-1, now, now+1 are valid; past those, wait for time to move.
    pub fn next_code(&self) -> String {
        next_totp_code(&self.secret, &self.last_step)
    }

    /// The code of the newest valid step (now + 1): it stays valid longest, for replay tests.
    pub fn newest_code(&self) -> String {
        let seed = decode_base32(&self.secret);
        let step = now() / 30 + 1;
        *self.last_step.lock().unwrap() = step;
        chaperone::identity::totp::code_at(&seed, u64::try_from(step * 30).unwrap()).unwrap()
    }

    /// A fresh askpass script that prints the next code.
    pub fn askpass(&self, dir: &Path) -> PathBuf {
        self.askpass_printing(dir, &self.next_code())
    }

    /// An askpass script printing `answer` (wrong codes, replays).
    pub fn askpass_printing(&self, dir: &Path, answer: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!(
            "askpass-{}-{}.sh",
            self.name,
            chaperone::secrets::random_hex(4)
        ));
        std::fs::write(&path, format!("#!/bin/sh\necho {answer}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        path
    }
}

/// An askpass script in `dir` that appends each prompt it is shown to a file, then runs `then` (shell
/// lines that end by printing the answer; `$1` is the prompt): the script and the prompts file.
pub fn recording_askpass(dir: &Path, then: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let n = chaperone::secrets::random_hex(4);
    let prompts = dir.join(format!("prompts-{n}.txt"));
    let askpass = dir.join(format!("askpass-record-{n}.sh"));
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n{then}\n",
            prompts.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    (askpass, prompts)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn decode_base32(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u64, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        buf = (buf << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// stdout, stderr and exit code of a finished client.
pub fn text(out: &Output) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Waits until `f` is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The next TOTP code for `secret` after the step in `last` (the server accepts a step once, and steps
/// now-1..=now+1); waits for time to move when all are spent. Shared by vendors and staff in tests.
/// Step now-1 is handed out only in the first half of the current step: later it can expire before a
/// login slowed down by a loaded machine reaches the check (CI saw that).
pub fn next_totp_code(secret: &str, last: &Mutex<i64>) -> String {
    let seed = decode_base32(secret);
    let mut last = last.lock().unwrap();
    loop {
        let now = now();
        let oldest = if now % 30 < 15 {
            now / 30 - 1
        } else {
            now / 30
        };
        let step = (*last + 1).max(oldest);
        if step <= now / 30 + 1 {
            *last = step;
            return chaperone::identity::totp::code_at(&seed, u64::try_from(step * 30).unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
