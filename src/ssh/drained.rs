//! A vendor's channel as a byte stream whose messages are always taken as they come (tunnels): russh
//! stops reading the whole connection when one channel's queue of 100 messages is full, so a stream
//! read only as fast as the device's socket takes the bytes (`Channel::into_stream`) let a device port
//! that stopped reading freeze the vendor's connection, and with it the vendor's close or hang-up.
//!
//! Entry point: [`stream`]: the byte stream for `tunnel::run`, and the future that must run beside it
//! (it takes the channel's messages into an [`Inbox`] and gives the vendor's window back as the stream
//! is read: russh patch 10). What is held is bounded by the window, as in `bridge::run`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::inbox::{Inbox, Owed, Taken};

#[derive(Default)]
struct Held {
    inbox: Inbox,
    /// The vendor closed the channel (or the connection went): what is held is all there is.
    closed: bool,
    reader: Option<Waker>,
}

struct Shared {
    held: Mutex<Held>,
    owed: Owed,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing half of [`stream`]: russh's writer (it waits for the vendor's window).
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// The reading half of [`stream`].
pub struct Reader {
    shared: Arc<Shared>,
    /// The chunk being read.
    chunk: Bytes,
    eof: bool,
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk.split_to(n));
                this.shared.owed.add(u32::try_from(n).unwrap_or(u32::MAX));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut held = this.shared.held();
            match held.inbox.next() {
                Some(ChannelMsg::Data { data }) => this.chunk = data,
                Some(ChannelMsg::Eof) => this.eof = true,
                // A window change or signal means nothing on a tunnel.
                Some(_) => {}
                None if held.closed => this.eof = true,
                None => {
                    held.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

/// `channel` as a byte stream (reads from [`Reader`], writes through russh's writer), its write half
/// (for the caller to close the channel when done), and the future that takes its messages and gives
/// the window back, which must be polled while the stream is used; it ends when `stop` fires (the
/// connection ended).
pub async fn stream(
    channel: Channel<Msg>,
    stop: &CancellationToken,
) -> (
    tokio::io::Join<Reader, Writer>,
    Arc<ChannelWriteHalf<Msg>>,
    impl Future<Output = ()> + Send + '_,
) {
    // Refused only once the connection is gone, which ends the stream anyway.
    let _ = channel.window_by_consumption().await;
    let (rx, tx) = channel.split();
    let shared = Arc::new(Shared {
        held: Mutex::new(Held::default()),
        owed: Owed::default(),
    });
    let reader = Reader {
        shared: shared.clone(),
        chunk: Bytes::new(),
        eof: false,
    };
    let writer: Writer = Box::pin(tx.make_writer());
    let tx = Arc::new(tx);
    let drain = run(rx, tx.clone(), shared, stop);
    (tokio::io::join(reader, writer), tx, drain)
}

/// Takes the channel's messages as they come, and gives the window back as they are read.
async fn run(
    mut rx: ChannelReadHalf,
    tx: Arc<ChannelWriteHalf<Msg>>,
    shared: Arc<Shared>,
    stop: &CancellationToken,
) {
    let take = async {
        loop {
            let msg = rx.wait().await;
            let mut held = shared.held();
            match msg {
                Some(ChannelMsg::Close) | None => held.closed = true,
                Some(msg) => {
                    if let Taken::Dropped(bytes) = held.inbox.take(msg) {
                        shared.owed.add(bytes);
                    }
                }
            }
            let closed = held.closed;
            if let Some(reader) = held.reader.take() {
                reader.wake();
            }
            drop(held);
            if closed {
                return;
            }
        }
    };
    // Apart from the taking, which never waits on the connection's task (it may be waiting for this
    // channel's queue to be read).
    let give = async {
        shared.owed.give_back(&tx).await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = stop.cancelled() => {}
        ((), ()) = async { tokio::join!(take, give) } => {}
    }
}
