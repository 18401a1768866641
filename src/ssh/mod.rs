//! The vendors' SSH listener.
//!
//! Entry point: [`Listener`]: [`Listener::new`] loads what serving needs (a failure there stops `serve`
//! before it says it is serving) and [`Listener::serve`] runs the accept loop: every connection is admitted
//! or closed at once ([`admission`]: max connections, early drop, per-address cap, login grace time), runs in
//! a task of its own with a kill switch on its stream ([`killswitch`]), and a connection's error never
//! takes the listener down. Per connection: `handler::Connection` (auth, channel opens, requests); per
//! channel a spawned task: `device::run` (`VENDOR+ASSET`: a session on the device through the session
//! pipeline, `crate::live`, relayed by `bridge::run`), `home::run` (the vendor's home, and `request::run`
//! for `ssh VENDOR@bastion request …`) or `forward::run` (direct-tcpip: a tunnel, or `jump::run`).

pub mod admission;
pub mod auth;
pub mod bridge;
pub mod context;
pub mod device;
mod device_links;
mod drained;
pub mod forward;
pub mod handler;
pub mod home;
mod inbox;
pub mod jump;
pub mod killswitch;
pub mod passkeys;
pub use chaperone_model::login;
pub mod request;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;
use crate::live::LiveSessions;
use crate::live::budget::Budgets;
use admission::{Admission, Refusal};
use killswitch::Killable;

/// Why the SSH listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("reading the SSH host key {path}")]
    HostKey {
        path: std::path::PathBuf,
        source: russh::keys::ssh_key::Error,
    },
    /// The host key file cannot be read, or others may read it (whoever reads it can pose as the
    /// bastion to every vendor who pinned its fingerprint).
    #[error("reading the SSH host key {path}")]
    HostKeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the SSH listener's address")]
    Address(#[source] std::io::Error),
}

/// What every connection of the listener shares.
#[derive(Debug)]
pub struct Shared {
    pub app: App,
    /// russh client settings toward devices.
    pub device_config: Arc<russh::client::Config>,
    /// Device connections shared by the sessions of one grant.
    pub device_links: Arc<device_links::DeviceLinks>,
    /// Sessions and signed-in connections on this node, watched for expiry, revocation and disable.
    pub live: LiveSessions,
    /// The port the listener is bound to (the configured one may be 0), for the commands shown to vendors.
    pub port: u16,
    /// Byte counts per vendor, asset, service and hour (the byte budgets).
    pub budgets: Arc<Budgets>,
    /// Server settings for ProxyJump sessions terminated inside a tunnel.
    pub inner_config: Arc<russh::server::Config>,
    /// When a barred vendor's refusal, or a vendor's abandoned second factor, was last audited.
    pub key_holder_audits: auth::KeyHolderAudits,
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
///
/// Keepalives: OpenSSH clients treat any global request during authentication as a protocol error
/// ("bad message during authentication: type 80"), and russh's timer runs from the first byte. Its
/// interval is therefore longer than the longest a sign-in may take (`longest_sign_in`: the login grace
/// time, extended once for a passkey in the browser, see [`longest_sign_in`]): the timer restarts at
/// every packet received, and a connection that has not signed in by then is closed, so the first
/// keepalive can only ever reach a signed-in client.
pub fn russh_config(host_key: PrivateKey, longest_sign_in: Duration) -> russh::server::Config {
    russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        // russh would also delay the partial-success answer after the key (+1 s per login); the handler
        // pads its own rejections instead (`handler::pad`), so every refusal still takes the same time.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(keepalive_interval(longest_sign_in)),
        keepalive_max: 3,
        nodelay: true,
        event_buffer_size: 128,
        // OpenSSH's own (sshd and ssh both give 2 MiB). A session's channel is refilled as the device
        // takes the vendor's data (`inbox`, russh patch 10), so this is also the most it holds for a
        // device that takes nothing.
        window_size: 2 * 1024 * 1024,
        // Until the client has said who it is, the most compatible offer; then per client.
        preferred: preferred_for(b""),
        preferred_for_client: Some(|client_id| Some(preferred_for(client_id))),
        ..Default::default()
    }
}

/// Longer than the longest sign-in (see [`russh_config`]), and at least 30 s.
pub fn keepalive_interval(longest_sign_in: Duration) -> Duration {
    (longest_sign_in + Duration::from_secs(5)).max(Duration::from_secs(30))
}

/// The longest a connection may take to sign in: the login grace time, or, where vendors may use
/// passkeys, up to `passkey_wait` (and a margin) from when one asked for theirs (`Ticket::extend_once`),
/// which is within the grace time.
pub fn longest_sign_in(app: &App) -> Duration {
    let ssh = &app.config.ssh;
    if crate::identity::vendor_passkeys::offered(app) {
        ssh.login_grace_time + ssh.passkey_wait + auth::PASSKEY_MARGIN
    } else {
        ssh.login_grace_time
    }
}

/// The ciphers offered to a vendor's client. The client's order picks (RFC 4253 7.1), and OpenSSH lists
/// chacha20-poly1305 first, so on CPUs with AES-NI OpenSSH clients (every one since 6.2 has AES-GCM) are
/// offered only AES-GCM, which costs the bastion less there; every other client (Dropbear has no
/// AES-GCM, PuTTY before 0.76 neither) is offered chacha20-poly1305 too. The client's identification
/// string, read before the bastion's KEXINIT goes out, tells which (russh patch 4, third_party/README.md).
fn vendor_ciphers(client_id: &[u8]) -> &'static [russh::cipher::Name] {
    const GCM: &[russh::cipher::Name] = &[russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];
    const ALL: &[russh::cipher::Name] = &[
        russh::cipher::AES_256_GCM,
        russh::cipher::AES_128_GCM,
        russh::cipher::CHACHA20_POLY1305,
    ];
    if client_id.starts_with(b"SSH-2.0-OpenSSH_") && aes_in_hardware() {
        GCM
    } else {
        ALL
    }
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        return true;
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("aes") {
        return true;
    }
    false
}

/// Key exchanges offered to vendors: the post-quantum hybrids, curve25519, and for old clients
/// group14 (2048-bit Diffie-Hellman). Not russh's 3072- to 8192-bit groups: russh computes them with a
/// full-size exponent, and an 8192-bit exchange costs the bastion about 0.6 s of a worker thread
/// (bench: two `modpow`s of 294 ms each in release), which any client could ask for before signing in.
/// Every client that has the larger groups (OpenSSH 7.3+, PuTTY, paramiko, asyncssh, Dropbear) has
/// curve25519 too.
const VENDOR_KEX: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::SNTRUP761X25519_SHA512,
    russh::kex::SNTRUP761X25519_SHA512_OPENSSH,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::DH_G14_SHA256,
    russh::kex::EXTENSION_SUPPORT_AS_SERVER,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// What the bastion offers a client, by its identification string (see [`vendor_ciphers`]).
fn preferred_for(client_id: &[u8]) -> russh::Preferred {
    russh::Preferred {
        kex: Cow::Borrowed(VENDOR_KEX),
        cipher: Cow::Borrowed(vendor_ciphers(client_id)),
        compression: Cow::Borrowed(&[russh::compression::NONE]),
        ..Default::default()
    }
}

/// The bastion's SSH host key, from `ssh.host_key`.
pub fn load_host_key(app: &App) -> Result<PrivateKey, ListenerError> {
    let path = &app.config.ssh.host_key;
    let text = crate::key_files::read_private(path, crate::key_files::Readers::Owner).map_err(
        |source| ListenerError::HostKeyFile {
            path: path.clone(),
            source,
        },
    )?;
    PrivateKey::from_openssh(&text).map_err(|source| ListenerError::HostKey {
        path: path.clone(),
        source,
    })
}

/// Completes when the stop flag turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The SSH listener, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
}

impl Listener {
    /// This node's live sessions (the web page's live view finds their taps there).
    pub fn live(&self) -> LiveSessions {
        self.shared.live.clone()
    }

    /// Loads the host key and builds the settings; a failure here is reported before serving starts.
    pub fn new(app: &App, listener: TcpListener) -> Result<Listener, ListenerError> {
        let host_key = load_host_key(app)?;
        let grace = longest_sign_in(app);
        let config = Arc::new(russh_config(host_key.clone(), grace));
        let shared = Arc::new(Shared {
            budgets: Arc::default(),
            key_holder_audits: auth::KeyHolderAudits::default(),
            inner_config: jump::inner_config(host_key, grace),
            device_config: Arc::new(crate::target::client_config()),
            device_links: Arc::new(device_links::DeviceLinks::new(
                app.config.ssh.device_sessions_per_connection,
            )),
            live: LiveSessions::default(),
            port: listener
                .local_addr()
                .map_err(ListenerError::Address)?
                .port(),
            app: app.clone(),
        });
        Ok(Listener {
            admission: Admission::new(&app.config.ssh),
            listener,
            config,
            shared,
        })
    }

    /// Accepts vendor connections until `stop` turns true, then closes every session (each tells its
    /// vendor and writes its end) and cuts the connections.
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let Listener {
            listener,
            config,
            shared,
            admission,
        } = self;
        let app = shared.app.clone();
        // The watcher is what enforces expiry, revocation and disable on this node: if it ever stops
        // (a panic), so does the listener, and with it the process (`server::run`).
        let mut watcher = tokio::spawn(crate::live::watch::watch(
            app.clone(),
            shared.live.clone(),
            Duration::from_secs(1),
            stop.clone(),
        ));
        let shutdown = CancellationToken::new();
        let mut backoff = Duration::from_millis(10);
        let mut next_id: u64 = 0;
        let mut refused = RefusalLog::default();
        loop {
            let (stream, peer) = tokio::select! {
                // Stop first: the watcher also ends at shutdown, and that is not its failure.
                biased;
                () = stopped(&mut stop) => break,
                ended = &mut watcher => {
                    tracing::error!(outcome = ?ended, "the authority watcher stopped; stopping the SSH listener");
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok(pair) => { backoff = Duration::from_millis(10); pair }
                    Err(e) => {
                        // Out of file descriptors, most likely: back off, then go on refusing or serving.
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let ticket = match admission.admit(peer.ip()) {
                Ok(t) => t,
                Err(why) => {
                    refused.note(why, peer);
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            keep_alive(&stream);
            next_id += 1;
            let span = tracing::info_span!("ssh", conn = next_id, %peer);
            let kill = shutdown.child_token();
            // Cutting a connection also stops its channels' tasks, so none of them is left holding a
            // channel whose queue the connection is blocked on.
            let conn_stop = kill.child_token();
            let handler = handler::Connection::new(
                shared.clone(),
                handler::Outer {
                    id: next_id,
                    ticket: ticket.clone(),
                    kill: kill.clone(),
                },
                peer,
                conn_stop.clone(),
                span.clone(),
            );
            let stream = Killable::new(
                crate::target::buffered(stream),
                kill.clone(),
                app.config.ssh.send_timeout,
            );
            tokio::spawn(
                connection(
                    config.clone(),
                    stream,
                    handler,
                    ticket,
                    kill,
                    conn_stop,
                    (app.clone(), peer),
                )
                .instrument(span),
            );
        }
        // Every session tells its vendor, marks its recording and writes its end; then connections go.
        shared.live.close_all("the bastion is shutting down");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !shared.live.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
    }
}

/// TCP keepalives, so a vendor whose network vanished is noticed in about a minute (the SSH keepalive
/// interval has to be longer than the login grace time; see [`russh_config`]).
fn keep_alive(stream: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Runs one connection: the handshake and sign-in within the login grace time, then until either side
/// ends it or its kill switch is pulled.
async fn connection(
    config: Arc<russh::server::Config>,
    stream: Killable<tokio::io::BufReader<tokio::net::TcpStream>>,
    handler: handler::Connection,
    ticket: Arc<admission::Ticket>,
    kill: CancellationToken,
    conn_stop: CancellationToken,
    (app, peer): (App, std::net::SocketAddr),
) {
    let handshake = russh::server::run_stream(config, stream, handler);
    let mut session = tokio::select! {
        result = handshake => match result {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
        },
        () = ticket.grace_expired() => {
            tracing::info!("no sign-in within the login grace time; closed");
            return;
        }
    };
    let result = tokio::select! {
        result = &mut session => result,
        () = ticket.grace_expired() => {
            tracing::info!("no sign-in within the login grace time; closed");
            kill.cancel();
            session.await
        }
    };
    // Why the bastion ended it, when that is worth the audit trail: the client took nothing it sent
    // for `[ssh] send_timeout`, or its network vanished (TCP keepalives). A cut by the kill switch
    // (idle, eviction, shutdown) is audited where it is pulled.
    let mut ended = None;
    match result {
        Ok(()) => tracing::debug!("connection closed"),
        Err(russh::Error::IO(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            tracing::debug!("connection closed");
        }
        Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            tracing::info!(error = %e, "connection closed");
            ended = Some(e.to_string());
        }
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
    conn_stop.cancel();
    // The connection's place in the counts (its vendor's share among them) is given back before the
    // logout is written: a slow store does not keep a closed connection counted.
    let vendor = ticket.vendor().map(str::to_owned);
    drop(ticket);
    if let Some(vendor) = vendor {
        logged_out(&app, &vendor, peer, ended).await;
    }
}

/// `auth.logout`: a signed-in vendor's connection ended (the other half of `auth.login`, for the audit
/// trail and the ATNA export's Logout), with why the bastion ended it, if it did.
async fn logged_out(app: &App, vendor: &str, peer: std::net::SocketAddr, ended: Option<String>) {
    let who = format!("vendor:{vendor}");
    let mut detail = serde_json::json!({"peer": peer.to_string()});
    if let Some(why) = ended {
        detail["ended"] = why.into();
    }
    let write = async {
        let mut tx = app.store.begin().await?;
        tx.audit(
            crate::audit::AuditEvent::new(&who, crate::audit::Action::AuthLogout, &who, detail),
            app.clock.now(),
        )
        .await?;
        tx.commit("auth.logout").await
    };
    if let Err(e) = write.await {
        tracing::warn!(error = %e, %vendor, "cannot audit the end of a vendor's connection");
    }
}

/// Logs refused connections without letting a flood flood the log: the first of each kind, then a count
/// every ten seconds.
#[derive(Debug, Default)]
struct RefusalLog {
    since: Option<tokio::time::Instant>,
    counts: [u64; 3],
}

impl RefusalLog {
    fn note(&mut self, why: Refusal, peer: std::net::SocketAddr) {
        let i = why as usize;
        self.counts[i] += 1;
        if self.counts[i] == 1 {
            tracing::warn!(%peer, reason = ?why, "connection refused before sign-in");
        }
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= Duration::from_secs(10) {
            tracing::warn!(
                full = self.counts[Refusal::Full as usize],
                early_drop = self.counts[Refusal::Startups as usize],
                per_address = self.counts[Refusal::PerSource as usize],
                "connections refused before sign-in in the last 10 s"
            );
            *self = RefusalLog::default();
        }
    }
}

/// What the bastion says to a vendor's client in its own words (a line on stderr, a refused channel's
/// reason), with no control character: the text may quote what the client sent (an asset or host name),
/// and an escape sequence in it must not reach the vendor's terminal as one.
pub(crate) fn bastion_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A line of the bastion's to a vendor (sent on stderr), `chaperone: TEXT`, after a line break when it
/// may come in the middle of output. The one place such lines are made: control characters in `text`
/// (a reason someone typed, or read back from the database) are shown as `?`, so no line can move the
/// cursor, hide itself or pose as another.
pub(crate) fn bastion_line(text: &str, after_output: bool) -> bytes::Bytes {
    let text = bastion_text(text);
    let lead = if after_output { "\r\n" } else { "" };
    bytes::Bytes::from(format!("{lead}chaperone: {text}\r\n"))
}

#[cfg(test)]
mod line_tests {
    #[test]
    fn a_bastion_line_carries_no_control_characters() {
        assert_eq!(
            &super::bastion_line("ended\x1b]8;;http://x\x07here\r\nchaperone: fake", true)[..],
            b"\r\nchaperone: ended?]8;;http://x?here??chaperone: fake\r\n"
        );
        assert_eq!(&super::bastion_line("ok", false)[..], b"chaperone: ok\r\n");
    }
}
