//! One signed HTTP POST to the webhook receiver: HTTPS through rustls (ring), or plain HTTP to a
//! loopback address (the config refuses anything else). No redirects are followed, and the whole
//! exchange has one deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::pki_types::{
    CertificateDer, InvalidDnsNameError, ServerName, pem, pem::PemObject as _,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::WebhookConfig;

/// Connect, send and read the status: all within this.
const DEADLINE: Duration = Duration::from_secs(10);
/// Response bodies are read (so the connection ends cleanly) up to this much, then dropped.
const MAX_RESPONSE: usize = 64 * 1024;

/// The header carrying `sha256=` and the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "x-chaperone-signature";

/// Why the webhook cannot be set up (`serve` refuses to start rather than drop every event). Every
/// variant names the webhook setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `webhook.url` does not parse as a URI (the config checks it first, so this is a backstop).
    #[error("webhook.url is not a URL")]
    Url(#[source] http::uri::InvalidUri),
    /// `webhook.url` names no host to connect to.
    #[error("webhook.url has no host")]
    NoHost,
    /// rustls refused the protocol versions asked of it.
    #[error("TLS settings for the webhook")]
    Tls(#[source] rustls::Error),
    /// The host of an `https://` URL cannot be checked against a certificate.
    #[error("webhook host {host:?} is not a DNS name or address")]
    ServerName {
        host: String,
        #[source]
        source: InvalidDnsNameError,
    },
    /// `webhook.ca_file` cannot be opened.
    #[error("reading webhook.ca_file {path}")]
    CaFileRead {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// `webhook.ca_file` is not PEM.
    #[error("parsing webhook.ca_file {path}")]
    CaFileParse {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// `webhook.ca_file` is PEM but holds no certificate.
    #[error("webhook.ca_file {path} holds no certificate")]
    CaFileEmpty { path: PathBuf },
    /// A certificate of `webhook.ca_file` cannot serve as a trust anchor.
    #[error("webhook.ca_file {path}")]
    CaFileCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// No `webhook.ca_file`, and the system has no CA certificate rustls accepts.
    #[error(
        "no system CA certificates found for the webhook (install ca-certificates, or set webhook.ca_file)"
    )]
    NoSystemRoots,
}

/// Why one POST did not deliver. Its text, with its causes, goes to the log and
/// to the `webhook.undelivered` audit event, so each variant says how far the exchange got.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The whole exchange took longer than its deadline.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The TCP connection failed (refused, unreachable, name not resolved).
    #[error("connecting to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// The receiver's certificate was not trusted, or TLS failed otherwise.
    #[error("TLS handshake with the webhook receiver")]
    TlsHandshake(#[source] std::io::Error),
    /// The HTTP/1.1 connection could not be set up over the stream.
    #[error("HTTP handshake")]
    HttpHandshake(#[source] hyper::Error),
    /// The request could not be built (a header value it refused).
    #[error("building the request")]
    Request(#[source] http::Error),
    /// Sending the request or reading the answer's head failed.
    #[error("sending")]
    Send(#[source] hyper::Error),
    /// The receiver answered, but not with 2xx: the status and the start of its body.
    #[error("answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
}

impl DeliveryError {
    /// Whether trying again cannot help: the receiver refused this event's content itself (400 Bad
    /// Request, 413 Content Too Large, 415 Unsupported Media Type, 422 Unprocessable Content).
    /// Retried, it would hold every later event back for the whole retry time, and what a vendor typed
    /// (a request's reason a firewall in front of the receiver rejects) could delay the alerts that
    /// follow it. Answers about the receiver rather than the event (401, 403, 404: a wrong secret, a
    /// receiver being deployed; 408, 429; 5xx) are retried: given up at once, every event would be.
    pub fn refused_for_good(&self) -> bool {
        use http::StatusCode as S;
        matches!(self, DeliveryError::Status { status, .. }
            if matches!(*status, S::BAD_REQUEST | S::PAYLOAD_TOO_LARGE
                | S::UNSUPPORTED_MEDIA_TYPE | S::UNPROCESSABLE_ENTITY))
    }
}

/// The receiver's address and the means to sign and encrypt for it.
pub struct Poster {
    uri: http::Uri,
    host: String,
    port: u16,
    /// `None` for `http://` (loopback only).
    tls: Option<(TlsConnector, ServerName<'static>)>,
    key: hmac::Key,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poster")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Poster {
    pub fn new(config: &WebhookConfig) -> Result<Poster, SetupError> {
        let uri: http::Uri = config.url.parse().map_err(SetupError::Url)?;
        let host = uri
            .host()
            .ok_or(SetupError::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let roots = roots(config)?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(SetupError::Tls)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                ServerName::try_from(host.clone()).map_err(|source| SetupError::ServerName {
                    host: host.clone(),
                    source,
                })?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        Ok(Poster {
            uri,
            host,
            port,
            tls,
            key: hmac::Key::new(hmac::HMAC_SHA256, config.secret.as_bytes()),
        })
    }

    /// `sha256=` and the hex HMAC-SHA256 of `body` under the shared secret.
    pub fn signature(&self, body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex::encode(hmac::sign(&self.key, body).as_ref())
        )
    }

    /// POSTs `body`; `Ok` only for a 2xx answer.
    pub async fn post(
        &self,
        event: &str,
        delivery: &str,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        tokio::time::timeout(DEADLINE, self.exchange(event, delivery, body))
            .await
            .map_err(|_| DeliveryError::Timeout(DEADLINE))?
    }

    async fn exchange(
        &self,
        event: &str,
        delivery: &str,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| DeliveryError::Connect {
                host: self.host.clone(),
                port: self.port,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(DeliveryError::TlsHandshake)?;
                self.send(stream, event, delivery, body).await
            }
            None => self.send(tcp, event, delivery, body).await,
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        event: &str,
        delivery: &str,
        body: Bytes,
    ) -> Result<(), DeliveryError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(DeliveryError::HttpHandshake)?;
        let driver = tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.as_str().to_owned());
        let request = Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("chaperone/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close")
            .header("x-chaperone-event", event)
            .header("x-chaperone-delivery", delivery)
            .header(SIGNATURE_HEADER, self.signature(&body))
            .body(Full::new(body))
            .map_err(DeliveryError::Request)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(DeliveryError::Send)?;
        let status = response.status();
        // Read a little of the answer for the log, never all of an endless one.
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while seen.len() < MAX_RESPONSE {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        driver.abort();
        if !status.is_success() {
            // The receiver's words go to the log: on one line (a line break in them would forge an entry).
            let text = String::from_utf8_lossy(&seen[..seen.len().min(200)]);
            return Err(DeliveryError::Status {
                status,
                body: crate::model::one_line(text.trim()),
            });
        }
        Ok(())
    }
}

/// The CAs trusted for the receiver: `webhook.ca_file`, or the system's.
fn roots(config: &WebhookConfig) -> Result<rustls::RootCertStore, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|source| SetupError::CaFileRead {
                    path: path.clone(),
                    source,
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| SetupError::CaFileParse {
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
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system bundle can hold certificates rustls rejects; the rest still count.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(SetupError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_text::report;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn config(url: &str, ca_file: Option<PathBuf>) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            secret: "0123456789abcdef-webhook".to_owned(),
            events: vec![crate::audit::Action::RequestFile],
            ca_file,
            max_attempts: 1,
        }
    }

    /// Asserts `text` holds `part` exactly once: a cause is reported, and never twice.
    fn once(text: &str, part: &str) {
        assert_eq!(text.matches(part).count(), 1, "{part:?} in {text:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address_and_the_cause_once() {
        // A port just freed: nothing listens there.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let poster = Poster::new(&config(&format!("http://127.0.0.1:{port}/hook"), None)).unwrap();
        let error = poster
            .post("request.file", "1", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(error, DeliveryError::Connect { .. }), "{error:?}");
        let text = report(&error);
        assert!(
            text.starts_with(&format!("connecting to 127.0.0.1:{port}: ")),
            "{text}"
        );
        once(&text.to_lowercase(), "refused");
    }

    #[tokio::test]
    async fn a_refusing_receiver_is_reported_with_its_status_and_words() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // The headers, then the two-byte body.
            while !seen.windows(6).any(|w| w == b"\r\n\r\n{}") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                seen.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n  no hook  \n")
                .await
                .unwrap();
        });
        let poster = Poster::new(&config(&format!("http://127.0.0.1:{port}/hook"), None)).unwrap();
        let error = poster
            .post("request.file", "1", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        receiver.await.unwrap();
        assert_eq!(report(&error), "answered 404 Not Found: no hook");
    }

    #[test]
    fn a_missing_or_empty_ca_file_stops_the_setup_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error =
            Poster::new(&config("https://hooks.example/x", Some(missing.clone()))).unwrap_err();
        assert!(matches!(error, SetupError::CaFileRead { .. }), "{error:?}");
        let text = report(&error);
        assert!(
            text.starts_with(&format!("reading webhook.ca_file {}: ", missing.display())),
            "{text}"
        );
        once(&text, "No such file or directory");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error =
            Poster::new(&config("https://hooks.example/x", Some(empty.clone()))).unwrap_err();
        assert_eq!(
            report(&error),
            format!("webhook.ca_file {} holds no certificate", empty.display())
        );
    }
}
