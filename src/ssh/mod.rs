//! The vendors' SSH listener.
//!
//! Entry point: [`serve`]: the accept loop (a connection semaphore, a task per connection, accept errors
//! back off, a connection's error never takes the listener down).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::app::App;

/// russh server settings for the bastion: our host key, no compression, AES-GCM first.
pub fn russh_config(host_key: PrivateKey) -> russh::server::Config {
    let preferred = russh::Preferred {
        compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
        ..Default::default()
    };
    russh::server::Config {
        keys: vec![host_key],
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(20)),
        keepalive_max: 3,
        nodelay: true,
        event_buffer_size: 128,
        window_size: 8 * 1024 * 1024,
        preferred,
        ..Default::default()
    }
}

pub fn load_host_key(app: &App) -> anyhow::Result<PrivateKey> {
    let path = &app.config.ssh.host_key;
    PrivateKey::read_openssh_file(path)
        .with_context(|| format!("reading the SSH host key {}", path.display()))
}

/// Accepts vendor connections until `stop` turns true.
pub async fn serve(
    app: App,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = Arc::new(russh_config(load_host_key(&app)?));
    let permits = Arc::new(Semaphore::new(app.config.ssh.max_connections));
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            () = stopped(&mut stop) => return Ok(()),
            permit = permits.clone().acquire_owned() => permit?,
        };
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => return Ok(()),
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
        let config = config.clone();
        tracing::debug!(%peer, "connection");
        let handler = Connection { peer };
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let session = match russh::server::run_stream(config, stream, handler).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "handshake failed");
                    return;
                }
            };
            let handle = session.handle();
            tokio::select! {
                result = session => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = stopped(&mut conn_stop) => {
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "chaperone is shutting down".into(), "en".into())
                        .await;
                }
            }
        });
    }
}

/// Completes when the stop flag turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One vendor connection.
#[derive(Debug)]
struct Connection {
    /// Where the vendor connects from (audit, logs).
    peer: std::net::SocketAddr,
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<russh::server::Auth, Self::Error> {
        tracing::debug!(peer = %self.peer, user_len = user.len(), "auth none refused");
        Ok(russh::server::Auth::reject())
    }
}
