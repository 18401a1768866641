//! A vendor connection's stream with a kill switch: once its token is cancelled, every read and write
//! fails, so russh's connection task ends at once whatever the client does or does not send. And a
//! send time-out: a write the client takes nothing of for `[ssh] send_timeout` fails the same way.
//!
//! Entry point: [`Killable`]. russh offers only a polite `disconnect`, which waits in the connection's
//! queue behind channel data and is never sent to a client that stopped reading (its window full); and
//! before the handshake there is no session to disconnect at all. The login grace time, the eviction of a
//! disabled vendor and shutdown cut the stream here instead.
//!
//! russh's connection task waits on each write until it is done, with nothing else running meanwhile
//! (no keepalive goes out, none is missed), so a client whose ssh stopped reading its socket (hung,
//! suspended, or an impolite script) would hold its connection, and its place in its vendor's count, for
//! as long as it likes: its commands still run, so it is never idle. The send time-out is the one bound
//! on that wait, for the vendor's connection and for the inner connection of a jump alike.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// `inner`, until `kill` is cancelled or a write waits `send_timeout` with nothing taken.
#[derive(Debug)]
pub struct Killable<S> {
    inner: S,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    send_timeout: Option<Duration>,
    /// Runs while writes wait: from the first write that found the socket full, until one gets through.
    stalled: Pin<Box<Sleep>>,
    stalling: bool,
}

impl<S> Killable<S> {
    /// `send_timeout`: `None` waits for ever (`[ssh] send_timeout = "off"`).
    pub fn new(inner: S, kill: CancellationToken, send_timeout: Option<Duration>) -> Killable<S> {
        Killable {
            inner,
            killed: Box::pin(kill.cancelled_owned()),
            send_timeout,
            stalled: Box::pin(tokio::time::sleep(Duration::ZERO)),
            stalling: false,
        }
    }

    /// What a write (or flush) of `inner` gave, with the send time-out applied: a write that is
    /// pending starts the clock (if it is not already running), one that is done stops it, and a write
    /// still pending when it runs out fails with `TimedOut`.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.send_timeout else {
            return poll;
        };
        match poll {
            Poll::Ready(result) => {
                self.stalling = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !self.stalling {
                    self.stalling = true;
                    self.stalled.as_mut().reset(Instant::now() + limit);
                }
                match self.stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.stalling = false;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the client took nothing the bastion sent for {} (ssh.send_timeout)",
                                crate::config::format_duration(limit)
                            ),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Ready with an error once killed; registers the task to be woken when it is.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by the bastion",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bounded(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bounded(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.bounded(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting down a killed stream is what the caller wants anyway.
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_pending_read_fails_when_killed() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let kill = CancellationToken::new();
        let mut stream = Killable::new(ours, kill.clone(), None);
        theirs.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            stream.read(&mut buf).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        kill.cancel();
        let err = tokio::time::timeout(std::time::Duration::from_secs(2), reader)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(theirs);
    }

    const LIMIT: Duration = Duration::from_millis(300);

    /// Writes `total` bytes in 1 KiB pieces; how it ended and after how long.
    async fn write(
        stream: &mut Killable<tokio::io::DuplexStream>,
        total: usize,
    ) -> (io::Result<()>, Duration) {
        let started = Instant::now();
        let mut result = Ok(());
        for _ in 0..total / 1024 {
            if let Err(e) = stream.write_all(&[0u8; 1024]).await {
                result = Err(e);
                break;
            }
        }
        (result, started.elapsed())
    }

    #[tokio::test]
    async fn a_write_the_peer_takes_nothing_of_fails_after_the_send_timeout() {
        let (ours, theirs) = tokio::io::duplex(4096);
        let mut stream = Killable::new(ours, CancellationToken::new(), Some(LIMIT));
        let (result, took) = write(&mut stream, 64 * 1024).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("ssh.send_timeout"), "{err}");
        assert!(took >= LIMIT, "{took:?}");
        assert!(took < LIMIT * 10, "{took:?}");
        drop(theirs);
    }

    /// A slow reader is not a stalled one: each write that waits less than the time-out starts it anew.
    #[tokio::test]
    async fn a_peer_that_takes_a_little_at_a_time_is_not_cut() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut stream = Killable::new(ours, CancellationToken::new(), Some(LIMIT));
        let total = 16 * 1024;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut taken = 0;
            while taken < total {
                tokio::time::sleep(LIMIT / 3).await;
                taken += theirs.read(&mut buf).await.unwrap();
            }
            taken
        });
        let (result, took) = write(&mut stream, total).await;
        result.unwrap();
        assert!(
            took > LIMIT * 2,
            "slower than one time-out in all: {took:?}"
        );
        assert_eq!(reader.await.unwrap(), total);
    }

    #[tokio::test]
    async fn without_a_send_timeout_a_write_waits() {
        let (ours, theirs) = tokio::io::duplex(4096);
        let mut stream = Killable::new(ours, CancellationToken::new(), None);
        let waited = tokio::time::timeout(LIMIT * 3, write(&mut stream, 64 * 1024)).await;
        assert!(waited.is_err(), "still waiting");
        drop(theirs);
    }
}
