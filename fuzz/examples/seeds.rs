//! Writes the seed corpus: recordings made by the recorder's own writers, and SFTP conversations between
//! OpenSSH's `sftp` and `sftp-server` (which must be installed), recorded in the `sftp_observer` target's
//! input format. See fuzz/README.md:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/seeds
//! ```
//!
//! For the SFTP conversations `sftp -D` runs this program again as its "server" (it execs the path with no
//! arguments, so the mode and the output file come in environment variables): it starts the real
//! `sftp-server` and relays both directions, noting each chunk as it passes.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaperone_recorder::{CastHeader, CastWriter, ExecHeader, ExecWriter, exec_to_cast};

type Result<T> = std::result::Result<T, Box<dyn Error>>;
/// The chunks seen so far, in order: (from the server, bytes).
type Conversation = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

const RELAY_OUT: &str = "CHAPERONE_SEEDS_SFTP_OUT";
const SFTP_SERVER: &str = "CHAPERONE_SEEDS_SFTP_SERVER";

fn main() -> Result<()> {
    if let Some(out) = std::env::var_os(RELAY_OUT) {
        return relay(Path::new(&out));
    }
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: seeds DIR (writes DIR/TARGET/seed-*)")?,
    );
    let exec_dir = dir.join("exec_recording");
    let cast_dir = dir.join("asciicast");
    let sftp_dir = dir.join("sftp_observer");
    for d in [&exec_dir, &cast_dir, &sftp_dir] {
        fs::create_dir_all(d)?;
    }
    exec_seeds(&exec_dir, &cast_dir)?;
    cast_seeds(&cast_dir)?;
    sftp_seeds(&sftp_dir)?;
    text_seeds(&dir)?;
    tar_seeds(&dir.join("evidence_tar"))?;
    Ok(())
}

/// Evidence bundles in small: the shape `evidence export` writes (a directory, recordings, text files,
/// SHA256SUMS), and one whose path needs ustar's name prefix.
fn tar_seeds(dir: &Path) -> Result<()> {
    use chaperone_recorder::TarWriter;
    fs::create_dir_all(dir)?;
    let mut w = TarWriter::new(Vec::new(), 1_790_000_000);
    w.dir("session-s1")?;
    w.file_bytes("session-s1/README.txt", b"Evidence bundle\n")?;
    w.dir("session-s1/recordings")?;
    w.file_bytes(
        "session-s1/recordings/s1.cast",
        b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.5, \"o\", \"uptime\\r\\n\"]\n",
    )?;
    w.file_bytes(
        "session-s1/SHA256SUMS",
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  README.txt\n",
    )?;
    fs::write(dir.join("seed-bundle.tar"), w.finish()?)?;
    let mut w = TarWriter::new(Vec::new(), 0);
    let long = format!(
        "session-{}/recordings/{}.exec",
        "a".repeat(120),
        "b".repeat(60)
    );
    w.file_bytes(&long, b"x")?;
    fs::write(dir.join("seed-long-name.tar"), w.finish()?)?;
    Ok(())
}

/// Login names, request command lines (as the vendor's `ssh alice@bastion request …` delivers them) and
/// configuration files: the template `chaperone init` writes, and one with every optional section.
fn text_seeds(dir: &Path) -> Result<()> {
    let seeds: [(&str, &[(&str, String)]); 4] = [
        (
            "smtp_reply",
            &[
                ("greeting", "220 mail.hospital.example ESMTP ready\r\n".into()),
                (
                    "ehlo",
                    "250-mail.hospital.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n".into(),
                ),
                ("refusal", "554 5.7.1 relay denied\r\n".into()),
                ("mixed-codes", "250-first\r\n550 second\r\n".into()),
            ],
        ),
        (
            "login_name",
            &[
                ("vendor", "alice".into()),
                ("vendor-asset", "alice+mri-01".into()),
                ("service-list", "ssh, dicom,ssh".into()),
            ],
        ),
        (
            "request_command",
            &[
                (
                    "plain",
                    "mri-01 ssh,dicom --for 2h --reason INC-4711 coil calibration".into(),
                ),
                (
                    "quoted",
                    "ct-02 dicom --for=1h30m --reason \"INC-9 it's \\\"hot\\\"\"".into(),
                ),
                (
                    "single-quoted",
                    "mri-01 ssh --reason 'INC-1 a  b' --for 30m".into(),
                ),
            ],
        ),
        (
            "config",
            &[
                (
                    "init-template.toml",
                    chaperone_model::config::annotated_template(
                        "127.0.0.1:2222".parse()?,
                        "0.0.0.0:8443".parse()?,
                    ),
                ),
                ("every-section.toml", EVERY_SECTION.into()),
            ],
        ),
    ];
    for (target, files) in seeds {
        let d = dir.join(target);
        fs::create_dir_all(&d)?;
        for (name, text) in files {
            fs::write(d.join(format!("seed-{name}")), text)?;
        }
    }
    Ok(())
}

const EVERY_SECTION: &str = r#"[ssh]
listen = "[::]:22"
public_host = "bastion.hospital.example"
host_key = "/var/lib/chaperone/ssh_host_ed25519_key"
max_failures = 3
failure_window = "1h30m"
lockout = "1d"
max_connections = 64
login_grace_time = "30s"
max_startups = "10:30:60"
per_source_max_startups = 5
max_channels = 32

[web]
listen = "10.0.0.5:443"
public_url = "https://bastion.hospital.example/"
tls_cert = "cert.pem"
tls_key = "key.pem"
idle_timeout = "10m"
max_failures = 3
failure_window = "30m"
header_read_timeout = "5s"
keepalive_timeout = "5s"
max_connections = 128
max_connections_per_address = 16

[policy]
max_request = "8h"
request_ttl = "30m"
[policy.zones.icu]
max_request = "2h"

[webhook]
url = "https://chat.hospital.example/hooks/chaperone?token=x"
secret = "0123456789abcdef0123"
events = ["request.file", "request.approve", "auth.lock"]
ca_file = "webhook_ca.pem"
max_attempts = 20

[database]
url = "postgres://chaperone:s3cret@db.hospital.example:5432/chaperone"

[secrets]
key_file = "secrets.key"

[recording]
dir = "/var/lib/chaperone/recordings"
record_input = true
max_bytes = "2GB"

[budgets]
max_down_per_hour = "5MB"
max_up_per_hour = "none"
action = "alert"
[budgets.services.dicom]
max_down_per_hour = "500MB"
action = "cut"

[log]
level = "chaperone=debug,info"
"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A new file at `path`, replacing an old seed.
fn fresh(path: &Path) -> Result<&Path> {
    if path.exists() {
        fs::remove_file(path)?;
    }
    Ok(path)
}

fn exec_seeds(exec_dir: &Path, cast_dir: &Path) -> Result<()> {
    let header = ExecHeader {
        timestamp: 1_763_900_000,
        title: Some("chaperone session 0123: alice@mri-01".into()),
        command: Some("tar c /var/log/scanner | head -c 600".into()),
        env: BTreeMap::from([("TERM".into(), "xterm".into())]),
    };
    let full = exec_dir.join("seed-session.exec");
    let mut w = ExecWriter::create(fresh(&full)?, &header)?;
    let text = "Gerät: Magnetresonanz ✓ 😀\n".as_bytes();
    w.stdout(ms(1), &text[..6])?; // inside "ä"
    w.stdout(ms(2), &text[6..])?;
    w.stderr(ms(3), b"warning: \xff not UTF-8\n")?;
    w.input(ms(4), b"y\n")?;
    let binary: Vec<u8> = (0..600u32).map(|i| (i * 7 % 256) as u8).collect();
    w.stdout(ms(5), &binary)?;
    w.resize(ms(6), 132, 43)?;
    w.marker(ms(7), "grant g-42 expires in 5 min")?;
    w.stdout(Duration::from_micros(8_000_123), b"")?;
    w.finish()?;

    // What a bastion that stopped mid-write leaves: the file ends inside its last frame.
    let bytes = fs::read(&full)?;
    fs::write(
        exec_dir.join("seed-cut-off.exec"),
        &bytes[..bytes.len() - 300],
    )?;

    let empty = exec_dir.join("seed-empty.exec");
    ExecWriter::create(
        fresh(&empty)?,
        &ExecHeader {
            timestamp: 0,
            title: None,
            command: None,
            env: BTreeMap::new(),
        },
    )?
    .finish()?;

    // The exec recording converted for players is an asciicast seed.
    let converted = cast_dir.join("seed-from-exec.cast");
    exec_to_cast(&bytes[..], fresh(&converted)?)?;
    Ok(())
}

fn cast_seeds(cast_dir: &Path) -> Result<()> {
    let header = CastHeader {
        width: 80,
        height: 24,
        timestamp: 1_763_900_000,
        title: Some("mri-01 — démo".into()),
        command: None,
        env: BTreeMap::from([
            ("SHELL".into(), "/bin/bash".into()),
            ("TERM".into(), "xterm-256color".into()),
        ]),
        markers_attributed: false,
    };
    let path = cast_dir.join("seed-shell.cast");
    let mut cast = CastWriter::create(fresh(&path)?, header)?;
    cast.output(ms(0), b"\x1b[1;32mvendor@mri-01\x1b[0m:~$ ")?;
    cast.input(ms(800), b"cat status\r")?;
    cast.output(ms(820), b"cat status\r\n")?;
    let status = "Gerät: Magnetresonanz ✓ — température 21 °C 😀\r\n".as_bytes();
    cast.output(ms(900), &status[..6])?;
    cast.output(ms(901), &status[6..])?;
    cast.resize(ms(1200), 120, 40)?;
    cast.marker(ms(1300), "grant g-42 expires in 5 min")?;
    cast.output(ms(1400), b"\0\0\0\0\x07\x08\t\"\\ broken: \xff\r\n$ ")?;
    cast.finish()?;

    // What a crash mid-line leaves: the last line is cut short.
    let bytes = fs::read(&path)?;
    fs::write(
        cast_dir.join("seed-truncated.cast"),
        &bytes[..bytes.len() - 10],
    )?;
    Ok(())
}

/// SFTP conversations: OpenSSH's `sftp` in batch mode against `sftp-server`, through [`relay`].
fn sftp_seeds(sftp_dir: &Path) -> Result<()> {
    let server = ["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no sftp-server (install openssh-server)")?;
    let work = std::env::temp_dir().join("chaperone-seeds");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("remote"))?;
    let firmware: Vec<u8> = (0..5_000u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(work.join("fw.bin"), &firmware)?;
    fs::write(work.join("remote/scanner.log"), b"scan 1 ok\nscan 2 ok\n")?;
    let w = work.display();
    let sessions = [
        (
            "seed-upload-download",
            format!(
                "cd {w}/remote\nput {w}/fw.bin fw.bin\nget fw.bin {w}/back.bin\nget scanner.log {w}/scanner.log\nls -l\n"
            ),
        ),
        (
            "seed-operations",
            format!(
                "cd {w}/remote\nput {w}/fw.bin a.bin\nmkdir newdir\nrename a.bin newdir/b.bin\n\
                 chmod 600 newdir/b.bin\nsymlink newdir/b.bin link\nln newdir/b.bin hard\n\
                 -get missing.bin {w}/missing.bin\n-rm missing.bin\nrm hard\nrm link\n\
                 rm newdir/b.bin\nrmdir newdir\n"
            ),
        ),
    ];
    for (name, batch) in sessions {
        let batch_file = work.join("batch");
        fs::write(&batch_file, batch)?;
        let out = sftp_dir.join(name);
        let status = Command::new("sftp")
            .arg("-b")
            .arg(&batch_file)
            .arg("-D")
            .arg(std::env::current_exe()?)
            .env(RELAY_OUT, &out)
            .env(SFTP_SERVER, server)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("sftp for {name} failed: {status}").into());
        }
    }
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// The relay between `sftp` (our stdin and stdout) and `sftp-server`; writes the conversation to `out`.
fn relay(out: &Path) -> Result<()> {
    let server = std::env::var_os(SFTP_SERVER).ok_or("no sftp-server given")?;
    let mut child = Command::new(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let seen: Conversation = Arc::default();
    let copy =
        |from_server: bool, mut from: Box<dyn Read + Send>, mut to: Box<dyn Write + Send>| {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    let n = from.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    // Noted before it is passed on, so the order is the order the peers saw.
                    seen.lock()
                        .map_err(|_| std::io::Error::other("poisoned"))?
                        .push((from_server, buf[..n].to_vec()));
                    to.write_all(&buf[..n])?;
                    to.flush()?;
                }
            })
        };
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let up = copy(false, Box::new(std::io::stdin()), Box::new(stdin));
    let down = copy(true, Box::new(stdout), Box::new(std::io::stdout()));
    up.join().map_err(|_| "relay panicked")??;
    down.join().map_err(|_| "relay panicked")??;
    child.wait()?;
    let seen = seen.lock().map_err(|_| "poisoned")?;
    let script = chaperone_fuzz::sftp_script(seen.iter().map(|(s, b)| (*s, &b[..])));
    fs::write(out, script)?;
    Ok(())
}
