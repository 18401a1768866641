//! Port-scoped TCP tunnels (`ssh -L`, `ssh -W`) to a device port: the dial and the relay of a started
//! tunnel session. Knows nothing of SSH: the vendor's side is any byte stream.
//!
//! Entry points: [`dial`] (a `&Grant` names the device port: nothing is dialled without one, and no
//! connection that landed on an asset's sshd is handed back) and [`run`]
//! (relays a [`LiveSession`] of kind `tunnel` until one end, every chunk passing the session's byte
//! budget before it is written; `ssh::forward` registers and starts the session around it).

pub mod relay;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::live::budget::Direction;
use crate::live::{Control, End, LiveSession, Meter};
use crate::policy::Grant;
use crate::store::{Store, StoreError};
use relay::{Gate, RelayEnd};

/// How long dialling a device port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`dial`] opened nothing.
#[derive(Debug)]
pub enum DialError {
    /// The device port did not answer (the text says why, for the audit log).
    Unreachable(String),
    /// The connection landed on an address and port where an asset lists an `ssh` service: a `tcp`
    /// tunnel there would reach that sshd unrecorded, past its own asset's grants.
    SshListens(SocketAddr),
    Store(StoreError),
}

/// Dials the device port `grant` names, and checks where the connection landed. Asset and service
/// add refuse a `tcp` service on another asset's `ssh` endpoint, and `policy::authorize_tunnel` too,
/// but both compare addresses as written: `127.1`, `::ffff:10.0.0.5` or a second DNS name reach the
/// same sshd. Here the peer's address, as connected, is compared with every `ssh` service on that
/// port, resolved now; a match closes the connection before a byte passes.
pub async fn dial(store: &Store, grant: &Grant) -> Result<TcpStream, DialError> {
    let target = (grant.asset().address.clone(), grant.service().port);
    let stream = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(DialError::Unreachable(e.to_string())),
        Err(_) => {
            return Err(DialError::Unreachable(format!(
                "no answer within {} s",
                DIAL_TIMEOUT.as_secs()
            )));
        }
    };
    let peer = stream
        .peer_addr()
        .map_err(|e| DialError::Unreachable(e.to_string()))?;
    match ssh_listens_at(store, peer)
        .await
        .map_err(DialError::Store)?
    {
        Landed::Clear => {}
        Landed::OnSsh => return Err(DialError::SshListens(peer)),
        Landed::Unknown => {
            return Err(DialError::Unreachable(format!(
                "where {peer} is could not be checked: the names of the ssh services on that port did \
                 not resolve within {} s",
                CHECK_TIMEOUT.as_secs()
            )));
        }
    }
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// How long resolving every `ssh` service's name on the dialled port may take, all of them together.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an asset's `ssh` service is, as far as [`ssh_listens_at`] could tell.
enum Landed {
    Clear,
    OnSsh,
    /// A name did not resolve in time: it cannot be ruled out, so the tunnel is refused.
    Unknown,
}

/// Whether an asset's `ssh` service is at `peer` (its address and port), the names resolved now, all
/// at once and within [`CHECK_TIMEOUT`]. A name the resolver says does not exist is not there; one it
/// did not answer for in time might be, and the answer is [`Landed::Unknown`].
async fn ssh_listens_at(store: &Store, peer: SocketAddr) -> Result<Landed, StoreError> {
    let ip = peer.ip().to_canonical();
    let mut names = Vec::new();
    for address in store.ssh_service_addresses(peer.port()).await? {
        match address.parse::<IpAddr>() {
            Ok(literal) if literal.to_canonical() == ip => return Ok(Landed::OnSsh),
            Ok(_) => {}
            Err(_) => names.push(address),
        }
    }
    if names.is_empty() {
        return Ok(Landed::Clear);
    }
    let lookups = futures::future::join_all(
        names
            .iter()
            .map(|name| tokio::net::lookup_host((name.as_str(), peer.port()))),
    );
    let Ok(answers) = tokio::time::timeout(CHECK_TIMEOUT, lookups).await else {
        return Ok(Landed::Unknown);
    };
    let on_ssh = answers
        .into_iter()
        .filter_map(Result::ok)
        .flatten()
        .any(|a| a.ip().to_canonical() == ip);
    Ok(if on_ssh { Landed::OnSsh } else { Landed::Clear })
}

impl Gate for Meter {
    fn allow(&self, dir: Direction, n: usize) -> bool {
        self.pass(dir, n)
    }
}

/// How long a tunnel whose channel the vendor closed keeps relaying what was already sent, before the
/// device's socket is closed.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Relays `vendor` ↔ `device` for a started tunnel session until both sides closed, the watcher closes
/// it, its budget cuts it, the vendor closes the channel (`vendor_closed`: nothing more can pass on it,
/// so the device's socket is closed too), `stop` fires (the vendor's connection ended) or a side fails.
pub async fn run<V>(
    live: &mut LiveSession,
    vendor: V,
    device: TcpStream,
    vendor_closed: &CancellationToken,
    stop: &CancellationToken,
) -> End
where
    V: AsyncRead + AsyncWrite + Send,
{
    let mut controls = live.take_controls();
    let meter = live.meter();
    let cancel = stop.child_token();
    let closed_by: Arc<Mutex<Option<End>>> = Arc::default();
    let watcher = {
        let cancel = cancel.clone();
        let closed_by = closed_by.clone();
        tokio::spawn(async move {
            while let Some(control) = controls.recv().await {
                if let Control::Close(close) = control {
                    if let Ok(mut c) = closed_by.lock() {
                        c.get_or_insert(End::Closed(close));
                    }
                    cancel.cancel();
                    return;
                }
            }
        })
    };
    let closing = {
        let (cancel, closed_by) = (cancel.clone(), closed_by.clone());
        let vendor_closed = vendor_closed.clone();
        async move {
            vendor_closed.cancelled().await;
            // The vendor's close ends its side like an EOF: what it sent before reaches the device
            // (the relay drains it and half-closes), then the device's socket is closed.
            tokio::time::sleep(CLOSE_DRAIN).await;
            if let Ok(mut c) = closed_by.lock() {
                c.get_or_insert(End::VendorClosed);
            }
            cancel.cancel();
        }
    };
    let end = tokio::select! {
        end = relay::relay(vendor, device, &meter, &cancel) => end,
        // Ends the relay through `cancel`, with the reason recorded first.
        () = closing => relay::RelayEnd::Cancelled,
    };
    watcher.abort();
    match end {
        RelayEnd::Finished => End::Completed,
        RelayEnd::Failed(e) => End::Lost(e),
        RelayEnd::Refused => meter.cut_end(),
        RelayEnd::Cancelled => closed_by
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_else(|| End::Lost("the vendor's connection ended".into())),
    }
}
