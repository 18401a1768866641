//! IHE ATNA export end to end: `chaperone serve` sends the audit log's security events as DICOM
//! PS3.15 A.5 `AuditMessage`s to a real rsyslog over TLS (RFC 5425, gnutls driver, octet-counted
//! frames); every message received validates against the A.5.1 schema with `jing`; rsyslog stopped
//! mid-run and started again loses none of them (the exporter tails the audit log from its cursor).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::{DataDir, free_port, guarded, missing, stop_guarded};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const GTLS: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so";

/// rsyslog in the foreground on `port`, TLS with `dir`'s certificate, writing `MSGID MSG` lines.
struct Rsyslog {
    child: std::process::Child,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Rsyslog {
        let d = dir.display();
        let config = format!(
            "global(workDirectory=\"{d}\" maxMessageSize=\"64k\"\n\
               DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\"\n\
               DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\")\n\
             module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"line\" type=\"string\" string=\"%msgid% %msg%\\n\")\n\
             action(type=\"omfile\" file=\"{d}/received.log\" template=\"line\")\n"
        );
        std::fs::write(dir.join("rsyslog.conf"), config).unwrap();
        let conf = dir.join("rsyslog.conf");
        let pid = dir.join("rsyslog.pid");
        let child = guarded(
            RSYSLOGD,
            &[
                "-n",
                "-C",
                "-f",
                &conf.to_string_lossy(),
                "-i",
                &pid.to_string_lossy(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rsyslogd");
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "rsyslogd did not listen on {port}"
        );
        Rsyslog { child }
    }

    fn stop(mut self) {
        stop_guarded(&mut self.child);
    }
}

/// A CA and a `localhost` certificate it signed (openssl), in `dir`.
pub fn certificates(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
        -out ca.pem -days 2 -subj /CN=atna-test-ca \
        && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
        -out req.csr -subj /CN=localhost \
        && printf 'subjectAltName=DNS:localhost\\n' > ext \
        && openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem \
        -days 2 -extfile ext",
    );
}

/// The audit `seq` a message carries (its `audit-seq` participant object detail, base64).
fn seq_of(xml: &str) -> i64 {
    let at = xml
        .find("type=\"audit-seq\" value=\"")
        .unwrap_or_else(|| panic!("no audit-seq in {xml}"))
        + "type=\"audit-seq\" value=\"".len();
    let b64: String = xml[at..].chars().take_while(|c| *c != '"').collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    String::from_utf8(raw).unwrap().parse().unwrap()
}

fn received(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("received.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, m)| (id.to_owned(), m.to_owned()))
        .collect()
}

#[test]
fn audit_messages_reach_rsyslog_over_tls_validate_and_survive_its_restart() {
    for (part, path) in [
        ("rsyslog (apt rsyslog)", RSYSLOGD),
        ("rsyslog's TLS driver (apt rsyslog-gnutls)", GTLS),
        ("jing (apt jing)", "/usr/bin/jing"),
        ("openssl", "/usr/bin/openssl"),
    ] {
        if !Path::new(path).exists() {
            missing(part);
            return;
        }
    }
    let syslog_dir = tempfile::tempdir().unwrap();
    let s = syslog_dir.path();
    certificates(s);
    let port = free_port();
    let rsyslog = Rsyslog::start(s, port);

    let data = DataDir::init();
    let mut config = std::fs::read_to_string(data.config()).unwrap();
    config.push_str(&format!(
        "\n[atna]\nurl = \"tls://localhost:{port}\"\nca_file = \"{}\"\naudit_source_id = \"bastion-test\"\n\
         enterprise_site_id = \"St Example <Hospital>\"\n",
        s.join("ca.pem").display()
    ));
    std::fs::write(data.config(), config).unwrap();
    let b = Bastion::start(data);
    // Events of several kinds: user attributes changed, configuration, an authorization decision.
    b.vendor("alice", "Acme Imaging");
    b.data
        .run(&[
            "asset",
            "add",
            "mri-01",
            "--address",
            "127.0.0.1",
            "--zone",
            "radiology",
            "--purpose",
            "MRI <scanner> & co",
            "--service",
            "ssh:22/ssh",
        ])
        .ok();
    b.grant("alice", "mri-01", "ssh", "1h");
    assert!(
        wait_until(Duration::from_secs(20), || received(s).len() >= 3),
        "rsyslog got {:?}\n{}",
        received(s),
        b.log()
    );

    // rsyslog goes away; events keep happening; it comes back on the same port.
    rsyslog.stop();
    b.vendor("bob", "Beta Devices");
    let grant = b.grant("bob", "mri-01", "ssh", "1h");
    b.data
        .run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
        .ok();
    std::thread::sleep(Duration::from_millis(1500));
    let rsyslog = Rsyslog::start(s, port);

    // Everything `audit export --format atna` maps (the same mapping) arrives, once restarted.
    let expected: BTreeSet<i64> = b
        .data
        .run(&["audit", "export", "--format", "atna"])
        .ok()
        .stdout()
        .lines()
        .map(seq_of)
        .collect();
    assert!(expected.len() >= 6, "{expected:?}");
    let got = || {
        received(s)
            .iter()
            .map(|(_, m)| seq_of(m))
            .collect::<BTreeSet<i64>>()
    };
    assert!(
        wait_until(Duration::from_secs(40), || expected.is_subset(&got())),
        "lost across the restart: {:?}\n{}",
        expected.difference(&got()).collect::<Vec<_>>(),
        b.log()
    );
    rsyslog.stop();

    let messages = received(s);
    for (msgid, _) in &messages {
        assert_eq!(msgid, "DICOM+RFC3881");
    }
    let all = messages
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("csd-code=\"110137\""),
        "user security attributes changed: {all}"
    );
    assert!(
        all.contains("csd-code=\"110144\""),
        "authorization decision: {all}"
    );
    assert!(all.contains("AuditSourceID=\"bastion-test\""), "{all}");
    assert!(all.contains("St Example &lt;Hospital&gt;"), "{all}");

    // Every message, as received, against the PS3.15 A.5.1 schema (one jing run for all of them).
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/atna/audit-message.rnc");
    let files: Vec<PathBuf> = messages
        .iter()
        .enumerate()
        .map(|(i, (_, m))| {
            let f = s.join(format!("m{i}.xml"));
            std::fs::write(&f, m).unwrap();
            f
        })
        .collect();
    let out = Command::new("jing")
        .arg("-c")
        .arg(&schema)
        .args(&files)
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "jing: {stdout}{stderr}");
}
