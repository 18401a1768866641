//! The approvers' side in tests: staff users enrolled through the real web page (HTTPS, curl) and
//! signed in to the JSON API with password + TOTP; and raw TCP/TLS clients for the listener's limits,
//! from any loopback source address (Linux answers all of 127.0.0.0/8).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::DataDir;
use super::bastion::Bastion;

/// The password every test approver enrolls with.
pub const PASSWORD: &str = "correct horse battery staple";

/// A staff member signed in to the JSON API: curl with a cookie jar and the CSRF token.
pub struct Approver {
    pub name: String,
    /// The password they sign in with ([`PASSWORD`], or a directory account's own).
    password: String,
    secret: String,
    last_step: Mutex<i64>,
    jar: PathBuf,
    pub csrf: String,
    base: String,
    /// The loopback address curl connects from (`--interface`); `None`: 127.0.0.1.
    source: Option<String>,
}

/// A process the test started and stops when this is dropped.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP answer: status and body, and where a redirect points (empty if none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub location: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// `chaperone user add NAME --role ROLE`: the token of the one-time enrollment link it prints.
pub fn enrollment_token(b: &Bastion, name: &str, role: &str) -> String {
    let run = b.data.run(&["user", "add", name, "--role", role, "--json"]);
    let url = run.ok().json()["enroll_url"].as_str().unwrap().to_owned();
    url.rsplit('/').next().unwrap().to_owned()
}

/// A JSON POST to `url` with a cookie jar (the passkey ceremonies' requests).
pub fn post_json(jar: &PathBuf, url: &str, body: &serde_json::Value) -> Answer {
    post_json_from(None, jar, url, body)
}

/// [`post_json`] from the loopback address `source`.
pub fn post_json_from(
    source: Option<&str>,
    jar: &PathBuf,
    url: &str,
    body: &serde_json::Value,
) -> Answer {
    let body = body.to_string();
    let mut args = from(source);
    args.extend([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        url,
    ]);
    curl(Some(jar), &args)
}

/// curl's arguments to connect from the loopback address `source` (IPv4, since it binds a v4 address).
pub fn from(source: Option<&str>) -> Vec<&str> {
    match source {
        Some(s) => vec!["-4", "--interface", s],
        None => Vec::new(),
    }
}

/// Sets `[web]` keys in the config (`key = value`, value as TOML), before the server starts.
pub fn configure_web(data: &DataDir, settings: &[(&str, &str)]) {
    let config = std::fs::read_to_string(data.config()).unwrap();
    let at = config.find("[web]").expect("a [web] section");
    let end = config[at + 5..]
        .find("\n[")
        .map_or(config.len(), |i| at + 5 + i);
    let mut section = config[at..end].to_owned();
    for (key, value) in settings {
        let line = format!("{key} = {value}");
        match section
            .lines()
            .find(|l| l.split('=').next().is_some_and(|k| k.trim() == *key))
        {
            Some(old) => section = section.replacen(old, &line, 1),
            None => section.push_str(&format!("\n{line}\n")),
        }
    }
    std::fs::write(
        data.config(),
        format!("{}{section}{}", &config[..at], &config[end..]),
    )
    .unwrap();
}

/// A TCP connection to the web port from the loopback address `source`.
pub fn tcp_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().unwrap())?;
        let stream = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await?;
        stream.into_std()
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A TLS connection (handshake done) to the web port from `source`; the certificate is not checked.
pub fn tls_from(
    source: &str,
    port: u16,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = tcp_from(source, port)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Accepts any server certificate (the tests' peer is the bastion they started), checking only that
/// the handshake is signed by it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn base(b: &Bastion) -> String {
    format!("https://127.0.0.1:{}", b.web_port)
}

/// `curl -k` (the bastion's certificate is self-signed) with a cookie jar; returns status and body.
pub fn curl(jar: Option<&PathBuf>, args: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{redirect_url}\n%{http_code}"]);
    if let Some(jar) = jar {
        cmd.arg("-b").arg(jar).arg("-c").arg(jar);
    }
    let out = cmd.args(args).output().expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (body, location) = rest.rsplit_once('\n').unwrap_or(("", rest));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        location: location.trim().to_owned(),
    }
}

impl Approver {
    /// `chaperone user add NAME --role ROLE`, enrollment through the page, then sign-in to the API.
    pub fn enroll(b: &Bastion, name: &str, role: &str) -> Approver {
        let token = enrollment_token(b, name, role);
        let base = base(b);
        let page = curl(None, &[&format!("{base}/enroll/{token}")]);
        assert_eq!(page.status, 200, "{}", page.body);
        let secret = page
            .body
            .split("id=\"totp-secret\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap_or_else(|| panic!("no secret in {}", page.body))
            .to_owned();
        let mut a = Approver {
            name: name.to_owned(),
            password: PASSWORD.to_owned(),
            secret,
            last_step: Mutex::new(0),
            jar: b.data.path().join(format!("jar-{name}")),
            csrf: String::new(),
            base,
            source: None,
        };
        let code = a.next_code();
        let done = curl(
            None,
            &[
                "--data-urlencode",
                "password=correct horse battery staple",
                "--data-urlencode",
                "password2=correct horse battery staple",
                "--data-urlencode",
                &format!("code={code}"),
                &format!("{}/enroll/{token}", a.base),
            ],
        );
        assert_eq!(done.status, 200, "{}", done.body);
        assert!(done.body.contains("You are enrolled"), "{}", done.body);
        a.login();
        a
    }

    /// A staff member who signs in with `password` and the TOTP app of `secret` (a directory account that
    /// enrolled its second factor through the page); not signed in yet.
    pub fn with_secret(b: &Bastion, name: &str, password: &str, secret: &str) -> Approver {
        Approver {
            name: name.to_owned(),
            password: password.to_owned(),
            secret: secret.to_owned(),
            last_step: Mutex::new(0),
            jar: b.data.path().join(format!("jar-{name}")),
            csrf: String::new(),
            base: base(b),
            source: None,
        }
    }

    /// Signs in to the JSON API; keeps the cookie and CSRF token.
    pub fn login(&mut self) {
        let answer = self.try_login(&self.password.clone(), &self.next_code());
        assert_eq!(answer.status, 200, "{}", answer.body);
        self.csrf = answer.json()["csrf"].as_str().unwrap().to_owned();
    }

    /// `POST /api/login` with this password and code; the answer as it came (the cookie is kept).
    pub fn try_login(&self, password: &str, code: &str) -> Answer {
        let body = serde_json::json!({"name": self.name, "password": password, "code": code});
        self.post_with("/api/login", body, None)
    }

    /// Sends the next requests from the loopback address `source` (`None`: 127.0.0.1).
    pub fn source(&mut self, source: Option<&str>) {
        self.source = source.map(str::to_owned);
    }

    /// curl with this approver's cookie jar and source address.
    fn curl(&self, args: &[&str]) -> Answer {
        let mut all = from(self.source.as_deref());
        all.extend_from_slice(args);
        curl(Some(&self.jar), &all)
    }

    /// Sends the next requests to node `b`, with the same cookie jar: what a load balancer without
    /// sticky sessions does.
    pub fn via(&mut self, b: &Bastion) {
        self.base = base(b);
    }

    /// A TOTP code for a step after the last one used (the server refuses replays).
    pub fn next_code(&self) -> String {
        super::bastion::next_totp_code(&self.secret, &self.last_step)
    }

    pub fn get(&self, path: &str) -> Answer {
        self.curl(&[&format!("{}{path}", self.base)])
    }

    /// A GET with these request header lines (`"Sec-Fetch-Site: same-site"`).
    pub fn get_with(&self, path: &str, headers: &[&str]) -> Answer {
        let mut args = Vec::new();
        for h in headers {
            args.extend(["-H", h]);
        }
        let url = format!("{}{path}", self.base);
        args.push(&url);
        self.curl(&args)
    }

    /// `n` GETs of `path` on one connection (one curl); the last answer's status.
    pub fn get_times(&self, path: &str, n: usize) -> u16 {
        let url = format!("{}{path}", self.base);
        let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), n).collect();
        self.curl(&urls).status
    }

    /// A GET, with the response's header lines (lower-cased) beside the answer.
    pub fn get_with_headers(&self, path: &str) -> (Answer, String) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let answer = self.curl(&[
            "-D",
            file.path().to_str().unwrap(),
            &format!("{}{path}", self.base),
        ]);
        let headers = std::fs::read_to_string(file.path()).unwrap().to_lowercase();
        (answer, headers)
    }

    /// A GET whose answer is taken slowly (`curl --limit-rate`), left running: a download in progress
    /// until the returned guard is dropped. Returns once the answer's status line came, with it.
    pub fn get_slowly(&self, path: &str) -> (Running, u16) {
        let headers = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "--limit-rate", "16k", "-D"])
            .arg(headers.path())
            .arg("-b")
            .arg(&self.jar)
            .args(from(self.source.as_deref()))
            .arg(format!("{}{path}", self.base))
            .spawn()
            .expect("curl must be installed");
        let running = Running(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(headers.path()).unwrap_or_default();
            if let Some(status) = text
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
            {
                return (running, status);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer to GET {path} in 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A GET the way the page's live refresh makes it (marked as background: no activity).
    pub fn get_background(&self, path: &str) -> Answer {
        self.curl(&[
            "-H",
            "X-Chaperone-Background: 1",
            &format!("{}{path}", self.base),
        ])
    }

    /// A JSON POST with the CSRF header.
    pub fn post(&self, path: &str, body: serde_json::Value) -> Answer {
        self.post_with(path, body, Some(&self.csrf))
    }

    pub fn post_with(&self, path: &str, body: serde_json::Value, csrf: Option<&str>) -> Answer {
        let mut args = vec![
            "-H".to_owned(),
            "Content-Type: application/json".to_owned(),
            "--data".to_owned(),
            body.to_string(),
        ];
        if let Some(token) = csrf {
            args.push("-H".into());
            args.push(format!("X-CSRF-Token: {token}"));
        }
        args.push(format!("{}{path}", self.base));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(&args)
    }

    /// A form POST (the page's forms), fields as given.
    pub fn form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut args = Vec::new();
        for (k, v) in fields {
            args.push("--data-urlencode".to_owned());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}{path}", self.base));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(&args)
    }

    pub fn approve(&self, id: i64) -> Answer {
        self.post(
            &format!("/api/requests/{id}/decision"),
            serde_json::json!({"decision": "approve"}),
        )
    }
}
