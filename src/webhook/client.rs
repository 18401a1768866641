//! One signed HTTP POST to the webhook receiver: HTTPS through rustls (ring), or plain HTTP to a
//! loopback address (the config refuses anything else). No redirects are followed, and the whole
//! exchange has one deadline.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
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
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Poster> {
        let uri: http::Uri = config.url.parse().context("webhook.url")?;
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("webhook.url has no host"))?
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
                .context("TLS settings for the webhook")?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = ServerName::try_from(host.clone())
                .with_context(|| format!("webhook host {host:?} is not a DNS name or address"))?;
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
    pub async fn post(&self, event: &str, delivery: &str, body: Bytes) -> anyhow::Result<()> {
        tokio::time::timeout(DEADLINE, self.exchange(event, delivery, body))
            .await
            .map_err(|_| anyhow!("no answer within {} s", DEADLINE.as_secs()))?
    }

    async fn exchange(&self, event: &str, delivery: &str, body: Bytes) -> anyhow::Result<()> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake with the webhook receiver")?;
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
    ) -> anyhow::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
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
            .context("building the request")?;
        let response = sender.send_request(request).await.context("sending")?;
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
            let text = String::from_utf8_lossy(&seen[..seen.len().min(200)]).into_owned();
            bail!("answered {status}: {}", text.trim());
        }
        Ok(())
    }
}

/// The CAs trusted for the receiver: `webhook.ca_file`, or the system's.
fn roots(config: &WebhookConfig) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading webhook.ca_file {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing webhook.ca_file {}", path.display()))?;
            if certs.is_empty() {
                bail!("webhook.ca_file {} holds no certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("webhook.ca_file {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system bundle can hold certificates rustls rejects; the rest still count.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!(
                    "no system CA certificates found for the webhook (install ca-certificates, or set webhook.ca_file)"
                );
            }
        }
    }
    Ok(roots)
}
