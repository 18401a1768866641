//! The vendors' SSH listener.
//!
//! Entry point: [`serve`]: the accept loop (a connection semaphore, a task per connection, accept errors
//! back off, a connection's error never takes the listener down) and the grant watcher that warns and
//! closes sessions. Per connection: `handler::Connection` (auth, channel opens); per session channel:
//! `session::run` (device sessions, bridged by `bridge::run`) or `home::run` (the vendor's home screen,
//! and `request::run` for `ssh VENDOR@bastion request …`).

pub mod auth;
pub mod bridge;
pub mod handler;
pub mod home;
pub mod jump;
pub mod login;
pub mod request;
pub mod session;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::PrivateKey;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;
use crate::policy::expiry::{self, LiveSessions};

/// What every connection of the listener shares.
#[derive(Debug)]
pub struct Shared {
    pub app: App,
    /// russh client settings toward devices.
    pub device_config: Arc<russh::client::Config>,
    /// Live sessions on this node, watched for grant expiry and revocation.
    pub live: LiveSessions,
    /// The port the listener is bound to (the configured one may be 0), for the commands shown to vendors.
    pub port: u16,
    /// Tunnel byte counts per service and hour (the exfiltration guard).
    pub budgets: crate::tunnel::budget::Budgets,
    /// Server settings for ProxyJump sessions terminated inside a tunnel.
    pub inner_config: Arc<russh::server::Config>,
}

impl Shared {
    /// `ssh -p 2222 [-t] VENDOR[+ASSET]@HOST`, as a vendor types it.
    pub fn connect_command(&self, vendor: &str, asset: Option<&str>, tty: bool) -> String {
        let ssh = &self.app.config.ssh;
        let user = match asset {
            Some(a) => format!("{vendor}+{a}"),
            None => vendor.to_owned(),
        };
        format!(
            "{}{} {user}@{}",
            self.ssh_command(),
            if tty { " -t" } else { "" },
            ssh.public_host
        )
    }

    /// `ssh -p PORT`, or `ssh` on port 22.
    pub fn ssh_command(&self) -> String {
        match self.port {
            22 => "ssh".to_owned(),
            port => format!("ssh -p {port}"),
        }
    }

    /// `ssh -p PORT -N -L LOCAL:ASSET:PORT VENDOR@HOST`: a tunnel to `port` on `asset` (the local port is
    /// a suggestion derived from the device port, so it stays the same between grants).
    pub fn tunnel_command(&self, vendor: &str, asset: &str, port: u16) -> String {
        format!(
            "{} -N -L {}:{asset}:{port} {vendor}@{}",
            self.ssh_command(),
            10000 + u32::from(port) % 50000,
            self.app.config.ssh.public_host
        )
    }

    /// The start of the request command, completed by the denial (`… request mri-01 ssh --for 2h …`).
    pub fn request_hint(&self, vendor: &str) -> String {
        format!("{} request", self.connect_command(vendor, None, false))
    }
}

/// russh server settings for the bastion: our host key, key + TOTP only, no compression, AES-GCM first.
pub fn russh_config(host_key: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        // russh would also delay the partial-success answer after the key (+1 s per login); the handler
        // pads its own rejections instead (`handler::pad`), so every refusal still takes the same time.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(20)),
        keepalive_max: 3,
        nodelay: true,
        event_buffer_size: 128,
        window_size: 8 * 1024 * 1024,
        preferred: russh::Preferred {
            cipher: Cow::Borrowed(vendor_ciphers()),
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The client's order picks the cipher (OpenSSH prefers chacha20-poly1305), so on CPUs with AES-NI the
/// bastion offers only AES-GCM, which is faster there; elsewhere chacha20-poly1305 too.
fn vendor_ciphers() -> &'static [russh::cipher::Name] {
    const GCM: &[russh::cipher::Name] = &[russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];
    const ALL: &[russh::cipher::Name] = &[
        russh::cipher::AES_256_GCM,
        russh::cipher::AES_128_GCM,
        russh::cipher::CHACHA20_POLY1305,
    ];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        return GCM;
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("aes") {
        return GCM;
    }
    ALL
}

pub fn load_host_key(app: &App) -> anyhow::Result<PrivateKey> {
    let path = &app.config.ssh.host_key;
    PrivateKey::read_openssh_file(path)
        .with_context(|| format!("reading the SSH host key {}", path.display()))
}

/// Completes when the stop flag turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts vendor connections until `stop` turns true.
pub async fn serve(
    app: App,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let host_key = load_host_key(&app)?;
    let config = Arc::new(russh_config(host_key.clone()));
    let shared = Arc::new(Shared {
        budgets: crate::tunnel::budget::Budgets::default(),
        inner_config: jump::inner_config(host_key),
        device_config: Arc::new(crate::target::client_config()),
        live: LiveSessions::default(),
        port: listener.local_addr()?.port(),
        app: app.clone(),
    });
    tokio::spawn(expiry::watch(
        app.store.clone(),
        app.clock.clone(),
        shared.live.clone(),
        Duration::from_secs(1),
        stop.clone(),
    ));
    let permits = Arc::new(Semaphore::new(app.config.ssh.max_connections));
    let shutdown = CancellationToken::new();
    let mut backoff = Duration::from_millis(10);
    let mut next_id: u64 = 0;
    loop {
        let permit = tokio::select! {
            () = stopped(&mut stop) => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => { backoff = Duration::from_millis(10); pair }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let span = tracing::info_span!("ssh", conn = next_id, %peer);
        let config = config.clone();
        let conn_stop = shutdown.child_token();
        let handler = handler::Connection::new(shared.clone(), peer, conn_stop.clone());
        tokio::spawn(
            async move {
                let _permit = permit;
                let session = match russh::server::run_stream(config, crate::target::buffered(stream), handler).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "handshake failed");
                        return;
                    }
                };
                let handle = session.handle();
                tokio::select! {
                    result = session => match result {
                        Ok(()) => tracing::debug!("connection closed"),
                        Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => tracing::debug!("connection closed"),
                        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
                    },
                    () = conn_stop.cancelled() => {
                        // Give the sessions a moment to tell their vendors and flush their recordings.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "chaperone is shutting down".into(), "en".into())
                            .await;
                    }
                }
                conn_stop.cancel();
            }
            .instrument(span),
        );
    }
    shutdown.cancel();
    // Let live sessions write their end and digest before the process exits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !shared.live.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
