//! A read-only tap on a live terminal session, for the web page's live view: the relay hands it every
//! chunk of the device's output (after the recorder took it) and every resize; watchers subscribe.
//!
//! Entry point: [`Tap`], made by `PendingSession::start` for shells and exec sessions, fed by
//! `ssh::bridge`, found by session id through `LiveSessions::tap`. It never slows the relay: a chunk
//! costs a lock held for a few instructions (the last [`RECENT`] bytes are kept as shared buffers, not
//! copied) and a send on a bounded broadcast channel that never waits; a watcher that falls more than
//! [`CAPACITY`] chunks behind loses them and starts again from the recent output.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast;

/// Output kept for a watcher who arrives (to draw the screen so far), about.
pub const RECENT: usize = 64 * 1024;
/// Chunks a watcher may fall behind before it skips ahead.
pub const CAPACITY: usize = 1024;
/// Output in smaller chunks than this is kept copied together, not chunk by chunk: a device that sends
/// its output a byte at a time (a loop printing dots) had each byte kept as a buffer of its own, some
/// hundred bytes of bookkeeping each or the whole packet it came in, ~128 times [`RECENT`] per session
/// whether anyone watched or not. Larger chunks are kept as the shared buffers they came in.
const SMALL: usize = 4096;

/// What a watcher is sent.
#[derive(Debug, Clone)]
pub enum TapEvent {
    /// Output at a time (seconds since the session started).
    Output(f64, Bytes),
    Resize(f64, u16, u16),
}

/// Where a watcher starts: the terminal's size and the recent output.
#[derive(Debug, Clone)]
pub struct Start {
    pub cols: u16,
    pub rows: u16,
    /// Seconds since the session started.
    pub time: f64,
    pub recent: Vec<u8>,
    /// Output before `recent` was let go: it starts wherever the oldest chunk kept starts, maybe within
    /// an escape sequence or a character.
    pub cut: bool,
}

#[derive(Debug)]
struct State {
    recent: VecDeque<Bytes>,
    /// Small chunks copied together after `recent`, until [`SMALL`] bytes make a chunk of their own.
    filling: BytesMut,
    /// Bytes in `recent` and `filling`.
    recent_len: usize,
    /// Some output was let go from the front of `recent`.
    cut: bool,
    cols: u16,
    rows: u16,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    state: Mutex<State>,
    tx: broadcast::Sender<TapEvent>,
}

/// A watcher's handle on a tap that does not keep it alive: once the session ended, its tap is gone and
/// the watcher's stream ends.
#[derive(Debug, Clone)]
pub struct WeakTap(std::sync::Weak<Inner>);

impl WeakTap {
    pub fn upgrade(&self) -> Option<Tap> {
        self.0.upgrade().map(|inner| Tap { inner })
    }
}

/// The tap of one session; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tap {
    inner: Arc<Inner>,
}

impl Tap {
    pub fn new(cols: u16, rows: u16) -> Tap {
        let (tx, _) = broadcast::channel(CAPACITY);
        Tap {
            inner: Arc::new(Inner {
                started: Instant::now(),
                state: Mutex::new(State {
                    recent: VecDeque::new(),
                    filling: BytesMut::new(),
                    recent_len: 0,
                    cut: false,
                    cols: cols.max(1),
                    rows: rows.max(1),
                }),
                tx,
            }),
        }
    }

    pub fn downgrade(&self) -> WeakTap {
        WeakTap(Arc::downgrade(&self.inner))
    }

    fn now(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    /// The device's output, as recorded.
    pub fn output(&self, data: &Bytes) {
        // Nothing to show; kept, an empty chunk counted nothing toward `RECENT`, so a device sending
        // empty data without end grew the queue without bound.
        if data.is_empty() {
            return;
        }
        let Ok(mut s) = self.inner.state.lock() else {
            return;
        };
        if data.len() < SMALL {
            s.filling.extend_from_slice(data);
            if s.filling.len() >= SMALL {
                let full = s.filling.split().freeze();
                s.recent.push_back(full);
            }
        } else {
            if !s.filling.is_empty() {
                let part = s.filling.split().freeze();
                s.recent.push_back(part);
            }
            s.recent.push_back(data.clone());
        }
        s.recent_len += data.len();
        // The newest output is always kept, however large.
        while s.recent_len > RECENT && s.recent.len() + usize::from(!s.filling.is_empty()) > 1 {
            let Some(old) = s.recent.pop_front() else {
                break;
            };
            s.recent_len -= old.len();
            s.cut = true;
        }
        // Sent under the lock, so a watcher's start and its events neither overlap nor leave a gap.
        if self.inner.tx.receiver_count() > 0 {
            let _ = self
                .inner
                .tx
                .send(TapEvent::Output(self.now(), data.clone()));
        }
    }

    /// The vendor's terminal changed size.
    pub fn resize(&self, cols: u16, rows: u16) {
        let Ok(mut s) = self.inner.state.lock() else {
            return;
        };
        s.cols = cols.max(1);
        s.rows = rows.max(1);
        if self.inner.tx.receiver_count() > 0 {
            let _ = self
                .inner
                .tx
                .send(TapEvent::Resize(self.now(), s.cols, s.rows));
        }
    }

    /// Starts watching: the screen so far, then every event from that moment on.
    pub fn watch(&self) -> (Start, broadcast::Receiver<TapEvent>) {
        let time = self.now();
        let Ok(s) = self.inner.state.lock() else {
            return (
                Start {
                    cols: 80,
                    rows: 24,
                    time,
                    recent: Vec::new(),
                    cut: false,
                },
                self.inner.tx.subscribe(),
            );
        };
        let mut recent = Vec::with_capacity(s.recent_len);
        for b in &s.recent {
            recent.extend_from_slice(b);
        }
        recent.extend_from_slice(&s.filling);
        let rx = self.inner.tx.subscribe();
        (
            Start {
                cols: s.cols,
                rows: s.rows,
                time,
                recent,
                cut: s.cut,
            },
            rx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_gets_the_recent_output_then_what_follows() {
        let tap = Tap::new(80, 24);
        tap.output(&Bytes::from_static(b"before"));
        let (start, mut rx) = tap.watch();
        assert_eq!(start.recent, b"before");
        assert!(!start.cut);
        tap.output(&Bytes::from_static(b"after"));
        tap.resize(100, 30);
        assert!(matches!(rx.try_recv(), Ok(TapEvent::Output(_, b)) if &b[..] == b"after"));
        assert!(matches!(rx.try_recv(), Ok(TapEvent::Resize(_, 100, 30))));
    }

    /// Empty chunks (a device's SSH server may send empty data; OpenSSH's never does) add nothing to
    /// what the tap keeps.
    #[test]
    fn empty_output_is_not_kept() {
        let tap = Tap::new(80, 24);
        tap.output(&Bytes::from_static(b"x"));
        for _ in 0..100_000 {
            tap.output(&Bytes::new());
        }
        let s = tap.inner.state.lock().unwrap();
        assert_eq!(
            (s.recent.len(), s.recent_len, &s.filling[..]),
            (0, 1, &b"x"[..])
        );
    }

    /// Output a byte at a time is kept as a few buffers, not one per byte; what a watcher is shown is
    /// still the recent output, in order.
    #[test]
    fn output_a_byte_at_a_time_is_kept_in_few_buffers() {
        let tap = Tap::new(80, 24);
        let mut sent = Vec::new();
        for i in 0..200_000u32 {
            let b = b"0123456789"[(i % 10) as usize];
            sent.push(b);
            tap.output(&Bytes::copy_from_slice(&[b]));
        }
        // A large chunk between small ones keeps its place.
        let big = Bytes::from(vec![b'B'; SMALL * 2]);
        tap.output(&big);
        sent.extend_from_slice(&big);
        for b in b"tail" {
            tap.output(&Bytes::copy_from_slice(&[*b]));
            sent.push(*b);
        }
        assert!(
            tap.inner.state.lock().unwrap().recent.len() <= RECENT / SMALL + 2,
            "{}",
            tap.inner.state.lock().unwrap().recent.len()
        );
        let (start, _) = tap.watch();
        assert!(start.cut);
        assert!(
            start.recent.len() <= RECENT + SMALL,
            "{}",
            start.recent.len()
        );
        assert!(sent.ends_with(&start.recent));
        assert!(start.recent.len() >= RECENT - SMALL);
    }

    #[test]
    fn a_slow_watcher_never_holds_the_relay() {
        let tap = Tap::new(80, 24);
        let (_, mut rx) = tap.watch();
        let chunk = Bytes::from(vec![b'x'; 1024]);
        for _ in 0..CAPACITY * 3 {
            tap.output(&chunk);
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        let (start, _) = tap.watch();
        assert!(start.recent.len() <= RECENT + chunk.len());
        assert!(start.cut);
    }
}
