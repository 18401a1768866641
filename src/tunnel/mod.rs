//! Port-scoped TCP tunnels (`ssh -L`, `ssh -W`) to a device port: the dial and the relay of a started
//! tunnel session. Knows nothing of SSH: the vendor's side is any byte stream.
//!
//! Entry points: [`dial`] (a `&Grant` names the device port: nothing is dialled without one) and [`run`]
//! (relays a [`LiveSession`] of kind `tunnel` until one end, every chunk passing the session's byte
//! budget before it is written; `ssh::forward` registers and starts the session around it).

pub mod relay;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::live::budget::Direction;
use crate::live::{Control, End, LiveSession, Meter};
use crate::policy::Grant;
use relay::{Gate, RelayEnd};

/// How long dialling a device port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials the device port `grant` names. The error says why, for the audit log.
pub async fn dial(grant: &Grant) -> Result<TcpStream, String> {
    let target = (grant.asset().address.clone(), grant.service().port);
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", DIAL_TIMEOUT.as_secs())),
    }
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
