//! Raw byte relay for tunnels: two copy loops with large buffers, half-close passed on both ways,
//! every chunk passed to the [`Gate`] (which counts it and may refuse it) before it is written.
//!
//! Entry point: [`relay`]. It ends when both directions reached end-of-file, when `cancel` fires
//! (expiry, revocation, budget cut, shutdown), or on an I/O error; bytes already counted stay counted.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::live::budget::Direction;

/// Buffer per direction: large enough for the SSH window's bursts, small enough for thousands of tunnels.
const BUFFER: usize = 128 * 1024;

/// Counts each chunk and decides about it before it is forwarded: `false` stops the relay (budget cut).
pub trait Gate: Send + Sync {
    fn allow(&self, dir: Direction, n: usize) -> bool;
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending half.
    Finished,
    /// `cancel` fired.
    Cancelled,
    /// The gate refused a chunk.
    Refused,
    /// A read or write failed (a side reset the connection).
    Failed(String),
}

async fn pump<R, W>(mut from: R, mut to: W, dir: Direction, gate: &dyn Gate) -> Result<(), RelayEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| RelayEnd::Failed(format!("{}: {e}", dir.as_str())))?;
        if n == 0 {
            // Half-close: the other side may still send.
            let _ = to.shutdown().await;
            return Ok(());
        }
        if !gate.allow(dir, n) {
            return Err(RelayEnd::Refused);
        }
        to.write_all(&buf[..n])
            .await
            .map_err(|e| RelayEnd::Failed(format!("{}: {e}", dir.as_str())))?;
    }
}

/// Relays `vendor` ↔ `device` until both finish, `cancel` fires, the gate refuses, or an error.
pub async fn relay<V, D>(
    vendor: V,
    device: D,
    gate: &dyn Gate,
    cancel: &CancellationToken,
) -> RelayEnd
where
    V: AsyncRead + AsyncWrite + Send,
    D: AsyncRead + AsyncWrite + Send,
{
    let (v_read, v_write) = tokio::io::split(vendor);
    let (d_read, d_write) = tokio::io::split(device);
    let up = pump(v_read, d_write, Direction::Up, gate);
    let down = pump(d_read, v_write, Direction::Down, gate);
    // The first direction to fail ends both (a cut or a reset must not wait for the other side).
    let both = async { tokio::try_join!(up, down).map(|_| ()) };
    tokio::select! {
        result = both => match result {
            Ok(()) => RelayEnd::Finished,
            Err(end) => end,
        },
        () = cancel.cancelled() => RelayEnd::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts each way and refuses chunks larger than its limit.
    #[derive(Default)]
    struct Limit {
        max: usize,
        up: AtomicU64,
        down: AtomicU64,
    }
    impl Gate for Limit {
        fn allow(&self, dir: Direction, n: usize) -> bool {
            match dir {
                Direction::Up => self.up.fetch_add(n as u64, Ordering::Relaxed),
                Direction::Down => self.down.fetch_add(n as u64, Ordering::Relaxed),
            };
            n <= self.max
        }
    }
    fn limit(max: usize) -> Limit {
        Limit {
            max,
            ..Limit::default()
        }
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_counts() {
        let (vendor_side, mut vendor_peer) = tokio::io::duplex(1 << 16);
        let (device_side, mut device_peer) = tokio::io::duplex(1 << 16);
        let gate = limit(usize::MAX);
        let cancel = CancellationToken::new();
        let relay = relay(vendor_side, device_side, &gate, &cancel);
        let peers = async {
            vendor_peer.write_all(b"C-ECHO-RQ").await.unwrap();
            vendor_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            device_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"C-ECHO-RQ");
            // The device still answers after the vendor's half-close.
            device_peer.write_all(b"C-ECHO-RSP!").await.unwrap();
            device_peer.shutdown().await.unwrap();
            let mut back = Vec::new();
            vendor_peer.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"C-ECHO-RSP!");
        };
        let (end, ()) = tokio::join!(relay, peers);
        assert_eq!(end, RelayEnd::Finished);
        assert_eq!(
            (
                gate.up.load(Ordering::Relaxed),
                gate.down.load(Ordering::Relaxed)
            ),
            (9, 11)
        );
    }

    #[tokio::test]
    async fn a_refused_chunk_stops_the_relay_and_is_counted() {
        let (vendor_side, mut vendor_peer) = tokio::io::duplex(1 << 16);
        let (device_side, _device_peer) = tokio::io::duplex(1 << 16);
        let gate = limit(10);
        let cancel = CancellationToken::new();
        vendor_peer.write_all(&[0u8; 100]).await.unwrap();
        let end = relay(vendor_side, device_side, &gate, &cancel).await;
        assert_eq!(end, RelayEnd::Refused);
        assert_eq!(gate.up.load(Ordering::Relaxed), 100);
    }
}
