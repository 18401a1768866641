//! The demo's simulated device, for a machine without OpenSSH's sshd: a small SSH server on loopback
//! standing in for "mri-01" (a login shell and one-off commands over a fake, read-only filesystem; no
//! file transfer), and a DICOM C-ECHO responder on a second port. It says it is simulated wherever a
//! person looks: the banner, the README in its home directory, `uname`.
//!
//! Entry point: [`Device::start`]. It accepts exactly one key (the credential chaperone injects for the
//! demo), and runs inside the demo process: nothing to install, nothing left behind.

use std::sync::Arc;

use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The account chaperone signs in as on the simulated device.
pub const USER: &str = "service";

/// A running simulated device; its tasks stop when the demo process does.
#[derive(Debug)]
pub struct Device {
    pub ssh_port: u16,
    pub dicom_port: u16,
    /// The device's host key, to pin (OpenSSH public key line).
    pub host_key: String,
    /// The private key chaperone injects (OpenSSH format).
    pub client_key: String,
}

impl Device {
    pub async fn start() -> anyhow::Result<Device> {
        let host = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        let client = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        let host_key = host.public_key().to_openssh()?;
        let client_key = client
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)?
            .to_string();
        let config = Arc::new(russh::server::Config {
            keys: vec![host],
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: std::time::Duration::from_millis(200),
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            inactivity_timeout: Some(std::time::Duration::from_secs(3600)),
            nodelay: true,
            ..Default::default()
        });
        let ssh = TcpListener::bind("127.0.0.1:0").await?;
        let dicom = TcpListener::bind("127.0.0.1:0").await?;
        let device = Device {
            ssh_port: ssh.local_addr()?.port(),
            dicom_port: dicom.local_addr()?.port(),
            host_key,
            client_key,
        };
        let allowed = client.public_key().clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = ssh.accept().await else {
                    continue;
                };
                let handler = Handler {
                    allowed: allowed.clone(),
                };
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, stream, handler).await {
                        let _ = session.await;
                    }
                });
            }
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = dicom.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(60),
                        dicom_echo(stream),
                    )
                    .await;
                });
            }
        });
        Ok(device)
    }
}

struct Handler {
    allowed: PublicKey,
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if user == USER && offer.public_key == &self.allowed {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if user == USER && key.public_key == &self.allowed {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tokio::spawn(async move {
            reply.accept().await;
            run_channel(channel).await;
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No sftp on the simulated device.
        session.channel_failure(channel)
    }
}

const BANNER: &str = "AcmeScan MR 7.4 service console -- SIMULATED DEVICE (chaperone demo)\n\
    Type `help` for the commands this simulation knows.\n";

async fn run_channel(mut channel: Channel<Msg>) {
    let mut pty = false;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestPty { .. }) => pty = true,
            Some(ChannelMsg::RequestShell { .. }) => {
                shell(channel).await;
                return;
            }
            Some(ChannelMsg::Exec { command, .. }) => {
                let command = String::from_utf8_lossy(&command).into_owned();
                let mut cwd = HOME.to_owned();
                let (out, status) = run(&command, &mut cwd);
                let out = if pty { out.replace('\n', "\r\n") } else { out };
                let _ = channel.data_bytes(out.into_bytes()).await;
                let _ = channel.exit_status(status).await;
                let _ = channel.eof().await;
                let _ = channel.close().await;
                return;
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
}

const HOME: &str = "/home/service";

fn prompt(cwd: &str) -> String {
    let shown = cwd
        .strip_prefix(HOME)
        .map_or_else(|| cwd.to_owned(), |rest| format!("~{rest}"));
    format!("{USER}@mri-01:{shown}$ ")
}

/// A login shell: line editing enough for a person (echo, backspace, Ctrl-C, Ctrl-D), escape sequences
/// (arrow keys) ignored.
async fn shell(mut channel: Channel<Msg>) {
    let mut cwd = HOME.to_owned();
    let mut line = String::new();
    let mut escape = 0u8;
    let greeting = format!("{}\r\n{}", BANNER.replace('\n', "\r\n"), prompt(&cwd));
    if channel.data_bytes(greeting.into_bytes()).await.is_err() {
        return;
    }
    let status = 'session: loop {
        let data = match channel.wait().await {
            Some(ChannelMsg::Data { data }) => data,
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break 0,
            Some(_) => continue,
        };
        let mut echo = Vec::new();
        for &b in data.iter() {
            if escape > 0 {
                // ESC [ params final: skip up to the final byte.
                escape = if escape == 1 && b == b'[' || (0x20..0x40).contains(&b) {
                    2
                } else {
                    0
                };
                continue;
            }
            match b {
                0x1b => escape = 1,
                b'\r' | b'\n' => {
                    echo.extend_from_slice(b"\r\n");
                    let command = std::mem::take(&mut line);
                    if matches!(command.trim(), "exit" | "logout") {
                        let _ = channel.data_bytes(echo).await;
                        break 'session 0;
                    }
                    let (out, _) = run(&command, &mut cwd);
                    echo.extend_from_slice(out.replace('\n', "\r\n").as_bytes());
                    echo.extend_from_slice(prompt(&cwd).as_bytes());
                }
                0x7f | 0x08 if line.pop().is_some() => echo.extend_from_slice(b"\x08 \x08"),
                0x03 => {
                    line.clear();
                    echo.extend_from_slice(b"^C\r\n");
                    echo.extend_from_slice(prompt(&cwd).as_bytes());
                }
                0x04 if line.is_empty() => {
                    echo.extend_from_slice(b"logout\r\n");
                    let _ = channel.data_bytes(echo).await;
                    break 'session 0;
                }
                b if (0x20..0x7f).contains(&b) && line.len() < 1024 => {
                    line.push(char::from(b));
                    echo.push(b);
                }
                _ => {}
            }
        }
        if !echo.is_empty() && channel.data_bytes(echo).await.is_err() {
            return;
        }
    };
    let _ = channel.exit_status(status).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// The simulated filesystem: (path, contents). Directories are the paths' parents.
const FILES: &[(&str, &str)] = &[
    (
        "/home/service/README.txt",
        "This is a SIMULATED device, served by `chaperone demo` inside its own process.\n\
         It stands in for an MRI scanner so that the demo's SSH commands reach something.\n\
         What you type and what it answers is recorded by chaperone: see `chaperone session list`.\n",
    ),
    ("/etc/hostname", "mri-01\n"),
    (
        "/etc/os-release",
        "PRETTY_NAME=\"AcmeScan Embedded Linux 7.4 (simulated)\"\nID=acmescan\nVERSION_ID=7.4\n",
    ),
    ("/opt/scanner/VERSION", "AcmeScan MR 7.4.2 (build 2291)\n"),
    (
        "/opt/scanner/config/coil.conf",
        "[head-coil]\nchannels = 32\ncalibrated = 2026-10-14\n\n[body-coil]\nchannels = 18\ncalibrated = 2026-09-02\n",
    ),
    (
        "/opt/scanner/config/dicom.conf",
        "ae_title = MRI01\nport = 104\nstorage_scp = PACS01@pacs.hospital.example:104\n",
    ),
    (
        "/var/log/scanner/scanner.log",
        "2026-12-01 07:58:12 INFO  helium level 93.1%\n\
         2026-12-01 08:02:40 INFO  exam 4711 started (protocol knee-t2)\n\
         2026-12-01 08:19:03 INFO  exam 4711 finished, 212 images sent to PACS01\n\
         2026-12-01 09:30:55 WARN  gradient coil temperature 41.2 C (limit 45 C)\n\
         2026-12-01 09:31:10 INFO  cooling pump speed raised to 80%\n",
    ),
];

fn resolve(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else if path == "~" || path.is_empty() {
        HOME.to_owned()
    } else {
        format!("{cwd}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_dir(path: &str) -> bool {
    path == "/"
        || FILES
            .iter()
            .any(|(f, _)| f.starts_with(path) && f.as_bytes().get(path.len()) == Some(&b'/'))
}

fn list(path: &str) -> Vec<String> {
    let prefix = if path == "/" {
        "/".to_owned()
    } else {
        format!("{path}/")
    };
    let mut names: Vec<String> = FILES
        .iter()
        .filter_map(|(f, _)| f.strip_prefix(prefix.as_str()))
        .map(|rest| match rest.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => rest.to_owned(),
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Runs one command line; returns what it printed and its exit status.
fn run(line: &str, cwd: &mut String) -> (String, u32) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&command, args)) = words.split_first() else {
        return (String::new(), 0);
    };
    let ok = |s: String| (s, 0);
    match command {
        "help" => ok("commands: ls [DIR], cat FILE, cd DIR, pwd, whoami, hostname, uname [-a], uptime, date, \
            df [-h], systemctl status scanner, journalctl -u scanner, echo TEXT, exit\n"
            .to_owned()),
        "pwd" => ok(format!("{cwd}\n")),
        "whoami" => ok(format!("{USER}\n")),
        "hostname" => ok("mri-01\n".to_owned()),
        "uname" => ok(if args.contains(&"-a") {
            "Linux mri-01 6.1.0-acmescan #1 SMP PREEMPT_RT x86_64 GNU/Linux (simulated)\n".to_owned()
        } else {
            "Linux\n".to_owned()
        }),
        "uptime" => ok(" 09:42:17 up 41 days,  3:12,  1 user,  load average: 0.42, 0.38, 0.35\n".to_owned()),
        "date" => ok(format!(
            "{}\n",
            crate::clock::format_time(crate::clock::Clock::system().now())
        )),
        "df" => ok("Filesystem      Size  Used Avail Use% Mounted on\n\
            /dev/sda2        64G   21G   40G  35% /\n\
            /dev/sdb1       2.0T  1.3T  700G  65% /data/images\n"
            .to_owned()),
        "echo" => ok(format!("{}\n", args.join(" "))),
        "systemctl" if args.first() == Some(&"status") => ok(
            "● scanner.service - AcmeScan MR acquisition service\n     \
             Loaded: loaded (/etc/systemd/system/scanner.service; enabled)\n     \
             Active: active (running) since Mon 2026-10-21 06:30:02 UTC; 41 days ago\n   \
             Main PID: 812 (acqd)\n"
                .to_owned(),
        ),
        "journalctl" => ok(FILES
            .iter()
            .find(|(f, _)| *f == "/var/log/scanner/scanner.log")
            .map_or_else(String::new, |(_, c)| (*c).to_owned())),
        "cd" => {
            let target = resolve(cwd, args.first().copied().unwrap_or("~"));
            if is_dir(&target) {
                *cwd = target;
                (String::new(), 0)
            } else {
                (format!("cd: {}: No such file or directory\n", args.join(" ")), 1)
            }
        }
        "ls" => {
            let arg = args.iter().find(|a| !a.starts_with('-')).copied().unwrap_or(".");
            let target = resolve(cwd, arg);
            if is_dir(&target) {
                ok(format!("{}\n", list(&target).join("  ")))
            } else if FILES.iter().any(|(f, _)| *f == target) {
                ok(format!("{arg}\n"))
            } else {
                (format!("ls: cannot access '{arg}': No such file or directory\n"), 2)
            }
        }
        "cat" => {
            let mut out = String::new();
            let mut status = 0;
            for arg in args {
                let target = resolve(cwd, arg);
                match FILES.iter().find(|(f, _)| *f == target) {
                    Some((_, contents)) => out.push_str(contents),
                    None if is_dir(&target) => {
                        out.push_str(&format!("cat: {arg}: Is a directory\n"));
                        status = 1;
                    }
                    None => {
                        out.push_str(&format!("cat: {arg}: No such file or directory\n"));
                        status = 1;
                    }
                }
            }
            (out, status)
        }
        "true" => (String::new(), 0),
        "false" => (String::new(), 1),
        other => (
            format!(
                "{}: command not found (this simulated device knows only a few commands: try `help`)\n",
                other.chars().take(64).collect::<String>()
            ),
            127,
        ),
    }
}

// ---- DICOM: C-ECHO (Verification) only ---------------------------------------------------------

const VERIFICATION: &str = "1.2.840.10008.1.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// An implementation class UID under the "2.25" (UUID-derived) arc.
const IMPLEMENTATION_UID: &str = "2.25.167390455427431186394436040913525126751";
const MAX_PDU: usize = 64 * 1024;

async fn read_pdu(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    if len > MAX_PDU {
        return None;
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 0];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn item(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 0];
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The items of an association PDU's variable part: (type, body).
fn items(mut rest: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        out.push((rest[0], body));
        rest = &rest[4 + len..];
    }
    out
}

fn uid(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// A-ASSOCIATE-AC for an A-ASSOCIATE-RQ: Verification accepted (implicit VR little endian), every
/// other abstract syntax refused.
fn associate_ac(rq: &[u8]) -> Option<Vec<u8>> {
    let fixed = rq.get(..68)?;
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(&[0, 1, 0, 0]); // protocol version 1, reserved
    body.extend_from_slice(&fixed[4..36]); // called and calling AE titles, echoed
    body.extend_from_slice(&[0u8; 32]);
    body.extend(item(0x10, APPLICATION_CONTEXT.as_bytes()));
    for (kind, pc) in items(&rq[68..]) {
        if kind != 0x20 || pc.len() < 4 {
            continue;
        }
        let id = pc[0];
        let sub = items(&pc[4..]);
        let abstract_syntax = sub.iter().find(|(k, _)| *k == 0x30).map(|(_, b)| uid(b));
        let offers_implicit = sub.iter().any(|(k, b)| *k == 0x40 && uid(b) == IMPLICIT_LE);
        let result = if abstract_syntax.as_deref() != Some(VERIFICATION) {
            3 // abstract syntax not supported
        } else if !offers_implicit {
            4 // transfer syntaxes not supported
        } else {
            0
        };
        let mut pc_body = vec![id, 0, result, 0];
        pc_body.extend(item(0x40, IMPLICIT_LE.as_bytes()));
        body.extend(item(0x21, &pc_body));
    }
    let mut user = item(
        0x51,
        &u32::try_from(MAX_PDU).unwrap_or(u32::MAX).to_be_bytes(),
    );
    user.extend(item(0x52, IMPLEMENTATION_UID.as_bytes()));
    user.extend(item(0x55, b"CHAPERONE_DEMO"));
    body.extend(item(0x50, &user));
    Some(pdu(0x02, &body))
}

/// The (group 0000) command elements of an implicit-VR-little-endian command set: (tag, value).
fn command_elements(mut data: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let group = u16::from_le_bytes([data[0], data[1]]);
        let element = u16::from_le_bytes([data[2], data[3]]);
        let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let Some(value) = data.get(8..8 + len) else {
            break;
        };
        out.push(((u32::from(group) << 16) | u32::from(element), value));
        data = &data[8 + len..];
    }
    out
}

fn element(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&u16::try_from(tag >> 16).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&u16::try_from(tag & 0xffff).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// The C-ECHO-RSP command set answering message `id` (status Success).
fn echo_response(id: u16) -> Vec<u8> {
    let mut sop = VERIFICATION.as_bytes().to_vec();
    if sop.len() % 2 == 1 {
        sop.push(0);
    }
    let mut rest = Vec::new();
    rest.extend(element(0x0000_0002, &sop));
    rest.extend(element(0x0000_0100, &0x8030u16.to_le_bytes()));
    rest.extend(element(0x0000_0120, &id.to_le_bytes()));
    rest.extend(element(0x0000_0800, &0x0101u16.to_le_bytes()));
    rest.extend(element(0x0000_0900, &0u16.to_le_bytes()));
    let mut out = element(
        0x0000_0000,
        &u32::try_from(rest.len()).unwrap_or(0).to_le_bytes(),
    );
    out.extend(rest);
    out
}

async fn dicom_echo(mut stream: TcpStream) {
    let mut command = Vec::new();
    while let Some((kind, body)) = read_pdu(&mut stream).await {
        let reply = match kind {
            0x01 => match associate_ac(&body) {
                Some(ac) => ac,
                None => return,
            },
            0x04 => {
                // P-DATA-TF: PDVs of (length, context id, control header, fragment).
                let mut rest = &body[..];
                let mut reply = Vec::new();
                while rest.len() >= 6 {
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    let Some(pdv) = rest.get(4..4 + len).filter(|p| p.len() >= 2) else {
                        return;
                    };
                    let (context, control) = (pdv[0], pdv[1]);
                    if control & 1 == 1 {
                        command.extend_from_slice(&pdv[2..]);
                        if command.len() > MAX_PDU {
                            return;
                        }
                    }
                    if control & 3 == 3 {
                        let elements = command_elements(&command);
                        let field = elements.iter().find(|(t, _)| *t == 0x0000_0100);
                        let id = elements.iter().find(|(t, _)| *t == 0x0000_0110);
                        if let (Some((_, field)), Some((_, id))) = (field, id)
                            && field.len() == 2
                            && id.len() == 2
                            && u16::from_le_bytes([field[0], field[1]]) == 0x0030
                        {
                            let rsp = echo_response(u16::from_le_bytes([id[0], id[1]]));
                            let mut pdv = vec![context, 0x03];
                            pdv.extend(rsp);
                            let mut p =
                                u32::try_from(pdv.len()).unwrap_or(0).to_be_bytes().to_vec();
                            p.extend(pdv);
                            reply = pdu(0x04, &p);
                        }
                        command.clear();
                    }
                    rest = &rest[4 + len..];
                }
                if reply.is_empty() {
                    continue;
                }
                reply
            }
            0x05 => {
                let _ = stream.write_all(&pdu(0x06, &[0, 0, 0, 0])).await;
                return;
            }
            _ => return,
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_knows_its_filesystem() {
        let mut cwd = HOME.to_owned();
        assert_eq!(run("ls", &mut cwd).0, "README.txt\n");
        assert_eq!(run("cd /opt/scanner", &mut cwd).1, 0);
        assert_eq!(cwd, "/opt/scanner");
        assert_eq!(
            run("cat VERSION", &mut cwd).0,
            "AcmeScan MR 7.4.2 (build 2291)\n"
        );
        assert_eq!(run("ls ..", &mut cwd).0, "scanner/\n");
        assert_eq!(run("nope", &mut cwd).1, 127);
        assert_eq!(run("cat /etc", &mut cwd).1, 1);
        assert!(run("uname -a", &mut cwd).0.contains("simulated"));
    }
}
