//! Syslog transport for ATNA messages: RFC 5424 messages, framed for TLS (RFC 5425: `LEN SP MSG`) or
//! sent one per UDP datagram (RFC 5426).
//!
//! Entry points: [`Sender::new`] (fails with a [`SetupError`] when the TLS trust or the client
//! certificate cannot be read, which stops `serve`), [`Sender::send`] (one message; a
//! [`SendError`] is retried by the caller) and [`frame`] (the bytes on the wire).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{AtnaConfig, AtnaTransport};

/// Connect (TCP and TLS handshake) and write one message: each within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// RFC 5424's MSGID for DICOM audit messages.
pub const MSGID: &str = "DICOM+RFC3881";

/// Why ATNA export cannot be set up. Every variant names the `[atna]` setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading atna.ca_file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("atna.ca_file {path} holds no certificate")]
    CaFileEmpty { path: PathBuf },
    #[error("atna.ca_file {path}: a certificate rustls cannot use")]
    CaFileCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system CA certificates found for the ATNA collector; set atna.ca_file")]
    NoSystemRoots,
    #[error("reading atna.client_cert / atna.client_key {path}")]
    ClientFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The client key cannot be read, or others may read it.
    #[error("reading atna.client_key {path}")]
    ClientKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("atna.client_cert and atna.client_key do not make a client certificate")]
    ClientCert(#[source] rustls::Error),
    #[error("atna.url: {host:?} is not a name TLS can check")]
    ServerName { host: String },
}

/// Why one message did not go out (retried with backoff by the caller).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {addr}")]
    Connect {
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
    #[error("sending to {addr}")]
    Write {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {}s", DEADLINE.as_secs())]
    Timeout { addr: String },
}

/// One syslog message (RFC 5424) carrying an ATNA `AuditMessage`: facility authpriv (10), `severity`
/// 5 (notice) or 4 (warning), APP-NAME `chaperone`, MSGID `DICOM+RFC3881`, no structured data.
pub fn message(timestamp: &str, hostname: &str, severity: u8, xml: &str) -> String {
    let pri = 10 * 8 + u32::from(severity.min(7));
    format!(
        "<{pri}>1 {timestamp} {hostname} chaperone {} {MSGID} - {xml}",
        std::process::id()
    )
}

/// The bytes on the wire: RFC 5425's octet counting for TLS, the message itself for UDP.
pub fn frame(transport: AtnaTransport, message: &str) -> Vec<u8> {
    match transport {
        AtnaTransport::Tls => format!("{} {message}", message.len()).into_bytes(),
        AtnaTransport::Udp => message.as_bytes().to_vec(),
    }
}

/// The collector, and the connection to it while it lasts.
pub struct Sender {
    config: AtnaConfig,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connection: Option<Connection>,
}

enum Connection {
    Tls(Box<TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("url", &self.config.url)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Sender {
    pub fn new(config: &AtnaConfig) -> Result<Sender, SetupError> {
        let tls = match config.transport {
            AtnaTransport::Udp => None,
            AtnaTransport::Tls => Some((
                TlsConnector::from(Arc::new(client_config(config)?)),
                ServerName::try_from(config.host.clone()).map_err(|_| SetupError::ServerName {
                    host: config.host.clone(),
                })?,
            )),
        };
        Ok(Sender {
            config: config.clone(),
            tls,
            connection: None,
        })
    }

    fn addr(&self) -> String {
        if self.config.host.contains(':') {
            format!("[{}]:{}", self.config.host, self.config.port)
        } else {
            format!("{}:{}", self.config.host, self.config.port)
        }
    }

    /// Sends one message, connecting first when there is no live connection. A TLS connection the
    /// collector closed (it restarted, or timed us out) is noticed before writing, not after, so a
    /// message is not written into a socket that is already gone.
    pub async fn send(&mut self, message: &str) -> Result<(), SendError> {
        let addr = self.addr();
        let bytes = frame(self.config.transport, message);
        if let Some(Connection::Tls(stream)) = &mut self.connection
            && closed_by_peer(stream)
        {
            self.connection = None;
        }
        let result = tokio::time::timeout(DEADLINE, async {
            if self.connection.is_none() {
                self.connection = Some(self.connect(&addr).await?);
            }
            let write = match &mut self.connection {
                Some(Connection::Tls(stream)) => {
                    async {
                        stream.write_all(&bytes).await?;
                        stream.flush().await
                    }
                    .await
                }
                Some(Connection::Udp(socket)) => socket.send(&bytes).await.map(|_| ()),
                None => Ok(()),
            };
            write.map_err(|source| SendError::Write {
                addr: addr.clone(),
                source,
            })
        })
        .await
        .unwrap_or_else(|_| Err(SendError::Timeout { addr: addr.clone() }));
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn connect(&self, addr: &str) -> Result<Connection, SendError> {
        let connect_error = |source| SendError::Connect {
            addr: addr.to_owned(),
            source,
        };
        match &self.tls {
            None => {
                let local = if self.config.host.contains(':') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let socket = UdpSocket::bind(local).await.map_err(connect_error)?;
                socket.connect(addr).await.map_err(connect_error)?;
                Ok(Connection::Udp(socket))
            }
            Some((connector, name)) => {
                let tcp = TcpStream::connect(addr).await.map_err(connect_error)?;
                let _ = tcp.set_nodelay(true);
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| SendError::Handshake {
                        addr: addr.to_owned(),
                        source,
                    })?;
                Ok(Connection::Tls(Box::new(stream)))
            }
        }
    }

    /// Closes the connection cleanly (TLS close_notify), at shutdown.
    pub async fn close(&mut self) {
        if let Some(Connection::Tls(mut stream)) = self.connection.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
        }
    }
}

/// A syslog collector never sends application data: if the stream is readable now, it is an end
/// (EOF, close_notify, an error), and the connection must be made again.
fn closed_by_peer(stream: &mut TlsStream<TcpStream>) -> bool {
    use futures::FutureExt as _;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).now_or_never() {
        None => false,
        Some(Ok(0) | Err(_)) => true,
        // Data from a collector that talks: not ours to read; the connection still stands.
        Some(Ok(_)) => false,
    }
}

fn client_config(config: &AtnaConfig) -> Result<rustls::ClientConfig, SetupError> {
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
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(SetupError::ClientCert)?
    .with_root_certificates(roots);
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|source| SetupError::ClientFile {
                    path: cert.clone(),
                    source,
                })?;
            // Held to the rule `doctor` checks it by (`key_files`): its group may read it, others not.
            let pem = crate::key_files::read_private(key, crate::key_files::Readers::Group)
                .map_err(|source| SetupError::ClientKeyFile {
                    path: key.clone(),
                    source,
                })?;
            let key =
                PrivateKeyDer::from_pem_slice(&pem).map_err(|source| SetupError::ClientFile {
                    path: key.clone(),
                    source,
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(SetupError::ClientCert)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_frames_count_octets_and_udp_sends_the_message() {
        let m = message("2026-11-29T23:53:24Z", "bastion-1", 5, "<AuditMessage/>");
        assert!(
            m.starts_with("<85>1 2026-11-29T23:53:24Z bastion-1 chaperone ")
                && m.ends_with(" DICOM+RFC3881 - <AuditMessage/>"),
            "{m}"
        );
        let framed = frame(AtnaTransport::Tls, "héllo");
        assert_eq!(framed, "6 héllo".as_bytes());
        assert_eq!(frame(AtnaTransport::Udp, "x"), b"x");
    }
}
