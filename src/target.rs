//! The device side: a russh client that checks the pinned host key and logs in with the injected
//! credential. Takes a [`Grant`]: nothing dials a device without one.
//!
//! Entry point: [`connect`]. Never called inside a russh server callback (it can take seconds); session
//! tasks call it after accepting nothing yet.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Disconnect, client};

use crate::identity::keys::parse_public_key;
use crate::model::CredentialKind;
use crate::policy::Grant;
use crate::secrets::SecretsKey;
use crate::store::Store;

/// How long dialling plus the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a device could not be reached. The vendor sees [`TargetError::vendor_message`]; the audit log and
/// the logs get the `Display` text.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No TCP connection or no SSH handshake in time.
    #[error("device unreachable: {0}")]
    Unreachable(String),
    /// The device presented a host key other than the pinned one.
    #[error("host key mismatch: device presented {presented}, pinned {pinned}")]
    HostKeyMismatch { presented: String, pinned: String },
    /// The device refused the injected credential.
    #[error("device refused the injected credential for {user}")]
    AuthRefused { user: String },
    /// The asset is not set up for sessions (no pinned host key, no credential).
    #[error("asset is missing {0}")]
    NotReady(&'static str),
    /// The sealed credential did not open (wrong secrets key, altered row).
    #[error("cannot open the injected credential: {0}")]
    Credential(String),
    /// Anything else on the SSH connection.
    #[error("device connection failed: {0}")]
    Ssh(String),
}

impl TargetError {
    /// What the vendor is told: enough to act on, nothing about internals.
    pub fn vendor_message(&self, asset: &str) -> String {
        match self {
            TargetError::Unreachable(_) => format!(
                "{asset} is unreachable from the bastion right now; try again or tell the hospital's staff"
            ),
            TargetError::HostKeyMismatch { .. } => format!(
                "{asset} presented an unexpected host key; the connection was refused and staff were alerted"
            ),
            TargetError::AuthRefused { .. } => format!(
                "{asset} refused the bastion's login; the hospital's staff have to fix the device credential"
            ),
            TargetError::NotReady(_) => format!(
                "{asset} is not ready for SSH sessions yet (device setup incomplete); the bastion's staff can see why"
            ),
            TargetError::Credential(_) | TargetError::Ssh(_) => {
                format!("the connection to {asset} failed; the hospital's staff can see why")
            }
        }
    }
}

/// An SSH error toward a device, as it is logged and audited: bounded, since its text can be the
/// device's (a failed negotiation lists every algorithm name the device sent, up to 16 KiB).
fn ssh_error(e: impl std::fmt::Display) -> TargetError {
    TargetError::Ssh(crate::model::truncate_for_display(&e.to_string(), 512))
}

/// Checks the device's host key against the pin, and refuses every channel the device opens.
#[derive(Debug)]
pub struct PinnedHostKey {
    pinned: PublicKey,
    /// What the device presented, for the mismatch report.
    presented: Arc<std::sync::Mutex<Option<String>>>,
    /// Whether a channel the device opened was logged (once a connection: a device that opens them in
    /// a loop must not flood the log).
    refused_logged: bool,
}

impl PinnedHostKey {
    /// A device never has a reason to open a channel toward the bastion (chaperone asks for no
    /// forwarding, no agent and no X11 on the device leg). russh's client accepts them by default, so a
    /// compromised device could open confirmed channels without limit: each is refused here.
    async fn refuse(&mut self, channel_type: &str, reply: client::ChannelOpenHandle) {
        self.log_refusal(channel_type);
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }

    fn log_refusal(&mut self, channel_type: &str) {
        if !std::mem::replace(&mut self.refused_logged, true) {
            tracing::warn!(
                channel_type = crate::model::truncate_for_display(channel_type, 64),
                "the device opened a channel toward the bastion: refused (later ones on this connection are refused without a log line)"
            );
        }
    }
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                if let Ok(mut p) = self.presented.lock() {
                    *p = Some(crate::identity::keys::fingerprint(key));
                }
                key.key_data() == self.pinned.key_data()
            }
            // Host certificates are not part of the pinning model.
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        Ok(ok)
    }

    /// Says which key exchange and cipher the device leg uses (post-quantum or not is an auditor's
    /// question; `ssh -v` answers it for the vendor leg).
    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(
            kex = names.kex.as_ref(),
            cipher = names.cipher.as_ref(),
            "device key exchange done"
        );
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse("session", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse("direct-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse("forwarded-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11", reply).await;
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse("forwarded-streamlocal@openssh.com", reply)
            .await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse("auth-agent@openssh.com", reply).await;
        Ok(())
    }

    async fn should_accept_unknown_server_channel(
        &mut self,
        _id: russh::ChannelId,
        channel_type: &str,
    ) -> bool {
        // Refused by russh (patch 7: once, with UNKNOWN_CHANNEL_TYPE); logged here.
        self.log_refusal(channel_type);
        false
    }
}

/// A logged-in connection to a device; dropped, its socket is shut down.
///
/// russh runs the connection in a task of its own that ends only when the device disconnects, a read
/// fails, or the handle is dropped while no key exchange is under way. A device that answers its version
/// and then stalls (or stops reading, or keeps a key exchange going) would keep that task, its socket and
/// buffers forever after chaperone gave up on it. So chaperone keeps a second handle on the socket
/// (`Hangup`) and shuts the socket down when it lets go: the task's read or write fails, and it ends.
pub struct Device {
    handle: client::Handle<PinnedHostKey>,
    _hangup: Hangup,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Device {
    type Target = client::Handle<PinnedHostKey>;

    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

/// The device socket's second handle: shuts the connection down (both ways) when dropped.
#[derive(Debug)]
struct Hangup(std::net::TcpStream);

impl Hangup {
    fn of(stream: &tokio::net::TcpStream) -> std::io::Result<Hangup> {
        use std::os::fd::AsFd as _;
        Ok(Hangup(std::net::TcpStream::from(
            stream.as_fd().try_clone_to_owned()?,
        )))
    }
}

impl Drop for Hangup {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Client settings toward devices: OpenSSH's own channel window, AES-GCM first, no compression,
/// keepalives, and only key exchanges whose cost the device cannot inflate.
///
/// The device picks the key exchange from this list, and russh computes it with a full-size exponent on
/// the thread running the connection: a hostile device offered only 8192-bit Diffie-Hellman (a fixed
/// group, or a group-exchange prime it chooses) would make each exchange cost about 0.6 s of CPU (two
/// `modpow`s of 294 ms, release), and re-key in a loop. So the list is the post-quantum hybrids and
/// curve25519 first, then for old devices group exchange with primes of at most 3072 bits (about 33 ms
/// an exchange) and group14 (2048 bits, about 10 ms); and russh (patch 8) disconnects a device that
/// re-keys again within 2 s. The vendor leg follows the same rule (`ssh::VENDOR_KEX`): the two lists
/// differ only in group exchange, which russh's server side does not offer, and in their extension names.
///
/// The window is what a direct OpenSSH client gives the device (2 MiB, `CHAN_SES_WINDOW_DEFAULT`), not
/// more: a device's sshd queues up to a window of encrypted output when the reader is a moment behind, and
/// compacts that queue with `memmove` as it drains; with 8 MiB, `perf` of a recorded 500 MB exec showed a
/// third of sshd's CPU in memmove/memset on the 2 shared cores (none at 2 MiB), and the relay was a few
/// per cent slower (bench/README.md, "Device window").
pub fn client_config() -> client::Config {
    client::Config {
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 32768,
        channel_buffer_size: 100,
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        gex: client::GexParams::new(2048, 3072, 3072).expect("valid group sizes"),
        preferred: russh::Preferred {
            kex: Cow::Borrowed(&[
                russh::kex::MLKEM768X25519_SHA256,
                russh::kex::SNTRUP761X25519_SHA512,
                russh::kex::SNTRUP761X25519_SHA512_OPENSSH,
                russh::kex::CURVE25519,
                russh::kex::CURVE25519_PRE_RFC_8731,
                russh::kex::DH_GEX_SHA256,
                russh::kex::DH_G14_SHA256,
                russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
                russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            ]),
            cipher: Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
            ]),
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A read buffer in front of a socket for russh, which reads each packet's length and then its body with
/// two reads: with the buffer, one `recvfrom` brings in several packets.
pub fn buffered(stream: tokio::net::TcpStream) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(READ_BUFFER, stream)
}

const READ_BUFFER: usize = 128 * 1024;

async fn handshake(
    config: Arc<client::Config>,
    stream: tokio::net::TcpStream,
    handler: PinnedHostKey,
) -> Result<client::Handle<PinnedHostKey>, russh::Error> {
    let _ = stream.set_nodelay(config.nodelay);
    client::connect_stream(config, buffered(stream), handler).await
}

/// Dials the device of `grant`'s asset on its ssh service, checks the pinned host key, and logs in with
/// the injected credential.
pub async fn connect(
    grant: &Grant,
    store: &Store,
    secrets: &SecretsKey,
    config: Arc<client::Config>,
) -> Result<Device, TargetError> {
    let asset = grant.asset();
    let pinned = asset
        .host_key
        .as_deref()
        .ok_or(TargetError::NotReady("a pinned host key"))?;
    let pinned = parse_public_key(pinned)
        .map_err(|e| TargetError::Credential(format!("pinned host key unreadable: {e}")))?;
    let (Some(user), Some(kind)) = (asset.credential_user.clone(), asset.credential_kind) else {
        return Err(TargetError::NotReady("an injected credential"));
    };
    let sealed = store
        .asset_credential_secret(asset.id)
        .await
        .map_err(|e| TargetError::Credential(e.to_string()))?
        .ok_or(TargetError::NotReady("an injected credential"))?;
    let secret = secrets
        .open(&format!("asset-credential:{}", asset.name), &sealed)
        .map_err(|e| TargetError::Credential(e.to_string()))?;

    let presented = Arc::new(std::sync::Mutex::new(None));
    let handler = PinnedHostKey {
        pinned: pinned.key.clone(),
        presented: presented.clone(),
        refused_logged: false,
    };
    let addr = (asset.address.clone(), grant.service().port);
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let stream = match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await
    {
        Err(_) => {
            return Err(TargetError::Unreachable(format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(TargetError::Unreachable(e.to_string())),
        Ok(Ok(stream)) => stream,
    };
    // From here, every way out of this function but success hangs up (`Hangup`'s drop).
    let hangup = Hangup::of(&stream).map_err(|e| TargetError::Unreachable(e.to_string()))?;
    let mut handle =
        match tokio::time::timeout_at(deadline, handshake(config, stream, handler)).await {
            Err(_) => {
                return Err(TargetError::Unreachable(format!(
                    "no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(russh::Error::UnknownKey)) => {
                return Err(TargetError::HostKeyMismatch {
                    presented: presented
                        .lock()
                        .ok()
                        .and_then(|p| p.clone())
                        .unwrap_or_else(|| "a certificate".into()),
                    pinned: pinned.fingerprint,
                });
            }
            Ok(Err(russh::Error::IO(e))) => return Err(TargetError::Unreachable(e.to_string())),
            Ok(Err(e)) => return Err(ssh_error(e)),
            Ok(Ok(h)) => h,
        };
    let result = match kind {
        CredentialKind::Key => {
            let text = std::str::from_utf8(secret.expose())
                .map_err(|_| TargetError::Credential("key is not text".into()))?;
            let key = PrivateKey::from_openssh(text.trim())
                .map_err(|e| TargetError::Credential(e.to_string()))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(ssh_error)?
                .flatten();
            handle
                .authenticate_publickey(
                    user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
        }
        CredentialKind::Password => {
            let password = std::str::from_utf8(secret.expose())
                .map_err(|_| TargetError::Credential("password is not text".into()))?;
            handle.authenticate_password(user.clone(), password).await
        }
    }
    .map_err(ssh_error)?;
    drop(secret);
    if !result.success() {
        let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
        return Err(TargetError::AuthRefused { user });
    }
    Ok(Device {
        handle,
        _hangup: hangup,
    })
}
