//! Fetching a device's SSH host key for pinning (`chaperone asset hostkey scan`).
//!
//! Entry point: [`fetch`]. It completes the key exchange only far enough to see the key, then refuses
//! it, so no credential is ever offered to an unpinned device.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{PublicKey, PublicKeyOrCertificate};

/// Why a host key could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot reach {target}: {message}")]
    Unreachable { target: String, message: String },
    #[error("{target} did not present a host key within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("{target} presented a certificate; pin its plain host key instead")]
    Certificate { target: String },
}

#[derive(Debug)]
struct Capture(Arc<Mutex<Option<PublicKeyOrCertificate>>>);

impl russh::client::Handler for Capture {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(match server_public_key {
                PublicKeyOrCertificate::PublicKey { key, hash_alg } => {
                    PublicKeyOrCertificate::PublicKey {
                        key: key.clone(),
                        hash_alg: *hash_alg,
                    }
                }
                PublicKeyOrCertificate::Certificate(c) => {
                    PublicKeyOrCertificate::Certificate(c.clone())
                }
            });
        }
        // Refuse: we only wanted to see it.
        Ok(false)
    }
}

/// Connects to `address:port` and returns the host key the SSH server presents.
pub async fn fetch(address: &str, port: u16) -> Result<PublicKey, ScanError> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let target = format!("{address}:{port}");
    let slot = Arc::new(Mutex::new(None));
    let config = Arc::new(russh::client::Config::default());
    let attempt = russh::client::connect(config, (address, port), Capture(slot.clone()));
    let result = tokio::time::timeout(TIMEOUT, attempt).await;
    let captured = slot.lock().ok().and_then(|mut s| s.take());
    match (captured, result) {
        (Some(PublicKeyOrCertificate::PublicKey { key, .. }), _) => Ok(key),
        (Some(PublicKeyOrCertificate::Certificate(_)), _) => Err(ScanError::Certificate { target }),
        (None, Err(_)) => Err(ScanError::Timeout {
            target,
            secs: TIMEOUT.as_secs(),
        }),
        (None, Ok(Err(e))) => Err(ScanError::Unreachable {
            target,
            message: e.to_string(),
        }),
        (None, Ok(Ok(_))) => Err(ScanError::Unreachable {
            target,
            message: "the server completed a handshake without a host key".into(),
        }),
    }
}
