//! A small SMTP submission client (RFC 6409) that always upgrades with STARTTLS (RFC 3207) before it
//! says anything but EHLO: one message per connection, AUTH PLAIN when configured, dot-stuffed DATA.
//!
//! Entry points: [`Smtp::new`] (fails with a [`SetupError`] when the TLS trust cannot be read, which
//! stops `serve`) and [`Smtp::send`] (one message; a [`SendError`] is retried by the caller).
//!
//! Why not a mail crate: what chaperone sends is one plain-text notice, and tokio-rustls (already in the
//! graph for the webhook and ATNA) carries it; the dialogue is twenty lines. What a mail library would
//! guard against is guarded here: every reply line is length-bounded, a server that pipelines bytes
//! behind its STARTTLS answer is refused (the STARTTLS command-injection class of bugs), a server
//! without STARTTLS gets nothing, addresses are checked at config load, and the body is
//! quoted-printable so no vendor-typed byte reaches the wire as is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::BufReader;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use chaperone_model::smtp_reply::{Reply, ReplyReader};

use crate::config::MailConfig;

/// One whole transaction (connect, STARTTLS, AUTH, DATA) within this.
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest reply line read from the server (RFC 5321 says 512; some servers say more).
const MAX_LINE: u64 = 4096;

/// Why mail cannot be set up. Every variant names the `[mail]` setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading mail.ca_file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("mail.ca_file {path} holds no certificate")]
    CaFileEmpty { path: PathBuf },
    #[error("mail.ca_file {path}: a certificate rustls cannot use")]
    CaFileCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system CA certificates found for the mail server; set mail.ca_file")]
    NoSystemRoots,
    #[error("TLS set-up for the mail server")]
    Tls(#[source] rustls::Error),
    #[error("mail.url: {host:?} is not a name TLS can check")]
    ServerName { host: String },
}

/// Why one message did not go out (retried with backoff by the caller, unless [`SendError::permanent`]).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} does not offer STARTTLS; nothing is sent in clear")]
    NoStartTls { addr: String },
    #[error(
        "{addr} sent data behind its STARTTLS answer (refused: it would be read as if encrypted)"
    )]
    Pipelined { addr: String },
    #[error("{addr} does not offer AUTH PLAIN, and mail.username is set")]
    NoAuthPlain { addr: String },
    #[error("{addr} answered {stage} with {reply:?}")]
    Refused {
        addr: String,
        stage: &'static str,
        reply: String,
        /// A 5xx reply to this message's recipients or content: sending the same again gets the same
        /// answer (RFC 5321 4.2.1).
        permanent: bool,
    },
    #[error("{addr} sent a reply that is not SMTP")]
    Garbled { addr: String },
    #[error("{addr} did not finish within {}s", DEADLINE.as_secs())]
    Timeout { addr: String },
}

impl SendError {
    /// The server refused it for good (a 5xx reply): sending it again gets the same answer.
    pub fn permanent(&self) -> bool {
        matches!(
            self,
            SendError::Refused {
                permanent: true,
                ..
            }
        )
    }
}

/// The mail server and how to reach it.
pub struct Smtp {
    config: MailConfig,
    tls: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Smtp {
    pub fn new(config: &MailConfig) -> Result<Smtp, SetupError> {
        Ok(Smtp {
            config: config.clone(),
            tls: TlsConnector::from(Arc::new(client_config(config)?)),
            name: ServerName::try_from(config.host.clone()).map_err(|_| {
                SetupError::ServerName {
                    host: config.host.clone(),
                }
            })?,
        })
    }

    fn addr(&self) -> String {
        if self.config.host.contains(':') {
            format!("[{}]:{}", self.config.host, self.config.port)
        } else {
            format!("{}:{}", self.config.host, self.config.port)
        }
    }

    /// Submits `message` (RFC 5322 text, CRLF line ends) to `to`.
    pub async fn send(&self, to: &[String], message: &str) -> Result<(), SendError> {
        let addr = self.addr();
        tokio::time::timeout(DEADLINE, self.transaction(&addr, to, message))
            .await
            .unwrap_or_else(|_| Err(SendError::Timeout { addr: addr.clone() }))
    }

    async fn transaction(&self, addr: &str, to: &[String], message: &str) -> Result<(), SendError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| SendError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut plain = Dialogue {
            stream: BufReader::new(tcp),
            addr,
        };
        plain.expect("the greeting", 220).await?;
        let ehlo = plain.ehlo(&self.ehlo_name()).await?;
        if !has_extension(&ehlo, "STARTTLS") {
            return Err(SendError::NoStartTls {
                addr: addr.to_owned(),
            });
        }
        plain.command("STARTTLS", "STARTTLS", 220).await?;
        // Anything already buffered came before the handshake, in clear: a man in the middle's.
        if !plain.stream.buffer().is_empty() {
            return Err(SendError::Pipelined {
                addr: addr.to_owned(),
            });
        }
        let tcp = plain.stream.into_inner();
        let tls = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|source| SendError::Handshake {
                addr: addr.to_owned(),
                source,
            })?;
        let mut d = Dialogue {
            stream: BufReader::new(tls),
            addr,
        };
        // RFC 3207: forget what was learnt before TLS and ask again.
        let ehlo = d.ehlo(&self.ehlo_name()).await?;
        if let (Some(user), Some(password)) = (&self.config.username, &self.config.password) {
            if !auth_mechanisms(&ehlo).iter().any(|m| m == "PLAIN") {
                return Err(SendError::NoAuthPlain {
                    addr: addr.to_owned(),
                });
            }
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            // The token is never logged: an error names the stage and the server's reply only.
            d.command(&format!("AUTH PLAIN {token}"), "AUTH", 235)
                .await?;
        }
        d.command(
            &format!("MAIL FROM:<{}>", self.config.from),
            "MAIL FROM",
            250,
        )
        .await?;
        // A recipient the server refuses for good (5xx: a stale address) does not hold the notice
        // back from the others; one refused for now (4xx) sends the whole message again later.
        let mut accepted = 0;
        let mut refused = None;
        for rcpt in to {
            let reply = d.send_line(&format!("RCPT TO:<{rcpt}>")).await?;
            match reply.code {
                250 | 251 => accepted += 1,
                500..=599 => {
                    tracing::warn!(recipient = %rcpt, reply = %reply.text(),
                        "e-mail: the mail server refuses this recipient; sending to the others");
                    refused = Some(d.refused("RCPT TO", &reply));
                }
                _ => return Err(d.refused("RCPT TO", &reply)),
            }
        }
        if accepted == 0 {
            return Err(refused.unwrap_or_else(|| SendError::Garbled {
                addr: d.addr.to_owned(),
            }));
        }
        d.command("DATA", "DATA", 354).await?;
        d.write(&dot_stuffed(message)).await?;
        let reply = d.read_reply().await?;
        if reply.code != 250 {
            return Err(d.refused("the message", &reply));
        }
        // The message is accepted; a QUIT that fails changes nothing.
        let _ = d.send_line("QUIT").await;
        let _ = d.stream.get_mut().shutdown().await;
        Ok(())
    }

    /// What we call ourselves in EHLO: the sender's domain (no host name is revealed).
    fn ehlo_name(&self) -> String {
        self.config
            .from
            .rsplit_once('@')
            .map_or_else(|| "localhost".to_owned(), |(_, d)| d.to_owned())
    }
}

struct Dialogue<'a, S> {
    stream: BufReader<S>,
    addr: &'a str,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Dialogue<'_, S> {
    fn io(&self, source: std::io::Error) -> SendError {
        SendError::Io {
            addr: self.addr.to_owned(),
            source,
        }
    }

    fn refused(&self, stage: &'static str, reply: &Reply) -> SendError {
        SendError::Refused {
            addr: self.addr.to_owned(),
            stage,
            reply: reply.text(),
            // Only about this message: its recipients or its content. A 5xx to the greeting, STARTTLS,
            // AUTH or MAIL FROM says the relay or our settings are wrong, for every message alike:
            // retried until someone fixes it, not dropped.
            permanent: (500..600).contains(&reply.code)
                && matches!(stage, "RCPT TO" | "the message"),
        }
    }

    async fn write(&mut self, bytes: &str) -> Result<(), SendError> {
        let stream = self.stream.get_mut();
        let result = async {
            stream.write_all(bytes.as_bytes()).await?;
            stream.flush().await
        }
        .await;
        result.map_err(|e| self.io(e))
    }

    async fn read_reply(&mut self) -> Result<Reply, SendError> {
        let mut reader = ReplyReader::default();
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.stream)
                .take(MAX_LINE)
                .read_until(b'\n', &mut raw)
                .await
                .map_err(|e| self.io(e))?;
            let garbled = || SendError::Garbled {
                addr: self.addr.to_owned(),
            };
            if n == 0 || !raw.ends_with(b"\n") {
                // The end of the stream, or a line longer than any server sends.
                return Err(if n == 0 {
                    self.io(std::io::ErrorKind::UnexpectedEof.into())
                } else {
                    garbled()
                });
            }
            if let Some(reply) = reader.line(&raw).map_err(|_| garbled())? {
                return Ok(reply);
            }
        }
    }

    async fn send_line(&mut self, line: &str) -> Result<Reply, SendError> {
        self.write(&format!("{line}\r\n")).await?;
        self.read_reply().await
    }

    async fn expect(&mut self, stage: &'static str, code: u16) -> Result<Reply, SendError> {
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(self.refused(stage, &reply))
        }
    }

    async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
        code: u16,
    ) -> Result<Reply, SendError> {
        self.write(&format!("{line}\r\n")).await?;
        self.expect(stage, code).await
    }

    async fn ehlo(&mut self, name: &str) -> Result<Vec<String>, SendError> {
        Ok(self
            .command(&format!("EHLO {name}"), "EHLO", 250)
            .await?
            .lines)
    }
}

fn has_extension(ehlo: &[String], name: &str) -> bool {
    // The first line is the server's greeting, the rest one extension each.
    ehlo.iter().skip(1).any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(name))
    })
}

fn auth_mechanisms(ehlo: &[String]) -> Vec<String> {
    ehlo.iter()
        .skip(1)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?;
            key.eq_ignore_ascii_case("AUTH")
                .then(|| words.map(str::to_ascii_uppercase).collect::<Vec<_>>())
        })
        .flatten()
        .collect()
}

/// DATA's body: lines that start with a dot get another (RFC 5321 4.5.2), then the end marker.
fn dot_stuffed(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 8);
    for line in message.split("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    // `split` leaves an empty last piece after a final CRLF: drop its extra line end.
    if message.ends_with("\r\n") {
        out.truncate(out.len() - 2);
    }
    out.push_str(".\r\n");
    out
}

fn client_config(config: &MailConfig) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|source| SetupError::CaFile {
                    path: path.clone(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(SetupError::CaFileEmpty { path: path.clone() });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| SetupError::CaFileCert {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system bundle can hold certificates rustls rejects; the rest still count.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(SetupError::NoSystemRoots);
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(SetupError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_at_line_starts_are_doubled_and_the_end_marked() {
        assert_eq!(dot_stuffed("a\r\n.b\r\n..\r\n"), "a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuffed("a"), "a\r\n.\r\n");
    }

    #[test]
    fn extensions_are_read_from_the_ehlo_lines_after_the_greeting() {
        let ehlo: Vec<String> = [
            "mail.example greets you",
            "8BITMIME",
            "STARTTLS",
            "AUTH LOGIN plain",
        ]
        .map(String::from)
        .to_vec();
        assert!(has_extension(&ehlo, "starttls"));
        assert!(!has_extension(&ehlo, "mail.example"));
        assert_eq!(auth_mechanisms(&ehlo), ["LOGIN", "PLAIN"]);
    }

    fn config(port: u16) -> MailConfig {
        MailConfig {
            url: format!("smtp://localhost:{port}"),
            host: "localhost".into(),
            port,
            from: "chaperone@hospital.example".into(),
            username: Some("chaperone".into()),
            password: Some("secret".into()),
            ca_file: None,
            to: vec!["a@hospital.example".into()],
            zones: Default::default(),
        }
    }

    /// A scripted server: answers each line it reads with the next reply (the first one is the greeting)
    /// and hands back everything the client sent.
    async fn server(replies: &'static [&'static str]) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut heard = String::new();
            let mut replies = replies.iter();
            if let Some(greeting) = replies.next() {
                stream
                    .get_mut()
                    .write_all(greeting.as_bytes())
                    .await
                    .unwrap();
            }
            loop {
                let mut line = String::new();
                match stream.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => heard.push_str(&line),
                }
                match replies.next() {
                    Some(r) => stream.get_mut().write_all(r.as_bytes()).await.unwrap(),
                    None => break,
                }
            }
            heard
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_server_without_starttls_is_told_nothing() {
        let (port, server) = server(&["220 mail\r\n", "250-mail\r\n250 8BITMIME\r\n"]).await;
        let smtp = Smtp::new(&config(port)).unwrap();
        let sent = smtp
            .send(&["a@hospital.example".into()], "Subject: x\r\n\r\nbody\r\n")
            .await;
        assert!(
            matches!(sent, Err(SendError::NoStartTls { .. })),
            "{sent:?}"
        );
        let heard = server.await.unwrap();
        assert_eq!(
            heard, "EHLO hospital.example\r\n",
            "only EHLO goes out in clear"
        );
    }

    #[tokio::test]
    async fn bytes_behind_the_starttls_answer_are_refused() {
        let (port, server) = server(&[
            "220 mail\r\n",
            "250-mail\r\n250 STARTTLS\r\n",
            // A man in the middle's injected answer, ahead of the TLS handshake.
            "220 go ahead\r\n250 injected\r\n",
        ])
        .await;
        let smtp = Smtp::new(&config(port)).unwrap();
        let sent = smtp.send(&["a@hospital.example".into()], "x\r\n").await;
        assert!(matches!(sent, Err(SendError::Pipelined { .. })), "{sent:?}");
        let heard = server.await.unwrap();
        assert_eq!(heard, "EHLO hospital.example\r\nSTARTTLS\r\n");
    }

    #[tokio::test]
    async fn replies_are_bounded_and_checked() {
        async fn reply(bytes: &'static [u8]) -> Result<Reply, SendError> {
            let (mut server, client) = tokio::io::duplex(1 << 16);
            server.write_all(bytes).await.unwrap();
            drop(server);
            let mut d = Dialogue {
                stream: BufReader::new(client),
                addr: "test",
            };
            d.read_reply().await
        }
        let r = reply(b"250-first\r\n250-STARTTLS\r\n250 last\r\n")
            .await
            .unwrap();
        assert_eq!((r.code, r.lines.len()), (250, 3));
        assert!(matches!(
            reply(b"hello\r\n").await,
            Err(SendError::Garbled { .. })
        ));
        assert!(matches!(
            reply(b"250-never ends").await,
            Err(SendError::Garbled { .. })
        ));
        assert!(matches!(
            reply(b"250-cut\r\n").await,
            Err(SendError::Io { .. })
        ));
        let long: &'static [u8] = Box::leak(
            format!("250 {}\r\n", "x".repeat(5000))
                .into_bytes()
                .into_boxed_slice(),
        );
        assert!(matches!(reply(long).await, Err(SendError::Garbled { .. })));
        let many: &'static [u8] =
            Box::leak("250-x\r\n".repeat(200).into_bytes().into_boxed_slice());
        assert!(matches!(reply(many).await, Err(SendError::Garbled { .. })));
    }
}
