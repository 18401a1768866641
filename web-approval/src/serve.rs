//! The web listener: TLS, HTTP/1.1, and the limits that keep slow or flooding clients from taking it
//! down (slowloris, slow readers, connection floods).
//!
//! Entry point: [`serve`]. One task accepts and never waits for anything but the next connection; each
//! connection runs in a task of its own that holds a [`Slot`] (a place under [`Limits::max_connections`]
//! and under [`Limits::max_connections_per_source`]); a connection over either cap is closed at once.
//! Every connection has a watchdog ([`Activity`]) that closes it when:
//! - no request has arrived `header_read_timeout` after the accept (TLS handshake and the first
//!   request's head, trickled or not);
//! - no request is in flight and the client has sent nothing for `keepalive_timeout` (an idle keep-alive,
//!   or a connection that never spoke);
//! - a request is in flight and no byte has moved either way for [`STALL_TIMEOUT`] (a client that stopped
//!   reading its response; the live stream sends a comment every 15 s);
//! - a response has been held back by the client for [`STALL_TIMEOUT`] with less than [`MIN_PROGRESS`]
//!   taken meanwhile (a slow reader: the socket's buffer stays full, a few bytes drained now and then
//!   so that nothing ever quite stalls). A write the socket takes whole means the client keeps up.
//!
//! Each later request's head must arrive within `header_read_timeout` of the connection starting to wait
//! for it (hyper's `header_read_timeout`, on tokio's timer), and a request's body within
//! `header_read_timeout` of its head (read here, before the router sees it, at most [`MAX_BODY`] bytes).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service as _;

use crate::core::Source;
use crate::tls::PeerAddr;

/// A request in flight with no byte moving either way for this long is cut (a client that stopped
/// reading). Longer than the live stream's 15 s keep-alive comments.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client held back by its own reading must take within [`STALL_TIMEOUT`] (about 1 KiB/s): far
/// below any real link, far above a connection kept open by reading a segment a minute.
pub const MIN_PROGRESS: u64 = 64 * 1024;

/// The largest request body read (forms and passkey answers are a few KiB).
pub const MAX_BODY: usize = 256 * 1024;

/// How long in-flight requests may finish after the stop signal before their connections are dropped
/// (a live stream never finishes by itself).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The listener's limits (`[web]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TLS handshake and first request head after the accept; each later head; each body.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long without a byte from the client.
    pub keepalive_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections from one [`Source`] at most, so one address cannot fill the listener.
    pub max_connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            max_connections: 512,
            max_connections_per_source: 64,
        }
    }
}

/// How a listener's connections speak.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS (the web page).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain HTTP (the ops endpoints, meant for a loopback or management address): the same caps and
    /// time-outs, no TLS.
    Plain,
}

/// Serves `app` over `transport` on `listener` until `shutdown` completes; then stops accepting, lets
/// requests in flight finish for a few seconds and closes every connection.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = match transport {
        Transport::Tls(tls) => Some(TlsAcceptor::from(tls)),
        Transport::Plain => None,
    };
    let slots = Arc::new(Slots::new(limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    let mut last_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(10);
                    pair
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to close.
                    tracing::warn!(error = %e, "web accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(Source::of(peer.ip())) else {
            // Closed at once: the accept loop goes straight back to accepting.
            drop(tcp);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_warning = Some(Instant::now());
                tracing::warn!(%peer, "web connection limit reached; refusing connections");
            }
            continue;
        };
        connections.spawn(connection(
            tcp,
            peer,
            slot,
            acceptor.clone(),
            app.clone(),
            limits,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "closing web connections still open"
        );
        connections.shutdown().await;
    }
}

/// One connection: TLS (when the listener has it), then HTTP/1.1 with keep-alive, under its watchdog.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Watched {
        inner: tcp,
        activity: activity.clone(),
    };
    let service = Requests {
        app,
        peer,
        activity: activity.clone(),
        body_timeout: limits.header_read_timeout,
    };
    let work = async {
        match acceptor {
            Some(acceptor) => match acceptor.accept(io).await {
                Ok(tls) => http(tls, service, peer, limits, stop).await,
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            },
            None => http(io, service, peer, limits, stop).await,
        }
    };
    tokio::select! {
        () = work => {}
        why = activity.watch(limits) => tracing::debug!(%peer, why, "web connection closed"),
    }
}

/// HTTP/1.1 with keep-alive on `io` until the client or the stop signal ends it.
async fn http<IO>(
    io: IO,
    service: Requests,
    peer: SocketAddr,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "web connection ended with an error");
    }
}

/// Places for connections: a total and one count per source, taken at accept and given back when the
/// connection's task ends (dropping its [`Slot`]).
#[derive(Debug)]
struct Slots {
    max: usize,
    per_source: usize,
    open: Mutex<(usize, HashMap<Source, usize>)>,
}

impl Slots {
    fn new(limits: Limits) -> Slots {
        Slots {
            max: limits.max_connections,
            per_source: limits.max_connections_per_source,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place for a connection from `source`, or `None` when either cap is reached.
    fn take(self: &Arc<Self>, source: Source) -> Option<Slot> {
        let mut open = self.open.lock().ok()?;
        let (total, by_source) = &mut *open;
        let mine = by_source.get(&source).copied().unwrap_or(0);
        if *total >= self.max || mine >= self.per_source {
            return None;
        }
        *total += 1;
        by_source.insert(source, mine + 1);
        Some(Slot {
            slots: self.clone(),
            source,
        })
    }
}

/// A connection's place; given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A poisoned lock means a panic elsewhere already; the count is then lost with it.
        if let Ok(mut open) = self.slots.open.lock() {
            let (total, by_source) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = by_source.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_source.remove(&self.source);
                }
            }
        }
    }
}

/// What a connection's watchdog looks at: when bytes last moved, and whether a request is in flight.
/// Times are milliseconds since the accept.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_read: AtomicU64,
    last_write: AtomicU64,
    /// Requests whose head arrived.
    requests: AtomicU64,
    /// Requests whose response has not been written out (or dropped) yet.
    in_flight: AtomicUsize,
    /// When the last request in flight finished.
    idle_since: AtomicU64,
    /// Bytes the socket took so far.
    written: AtomicU64,
    /// Since when the client has held writes back (the socket's buffer full), and how many bytes were
    /// written then; 0 / unset once a write is taken whole.
    held_since: AtomicU64,
    written_when_held: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_read: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            written: AtomicU64::new(0),
            held_since: AtomicU64::new(0),
            written_when_held: AtomicU64::new(0),
        }
    }

    /// A write of `wanted` bytes came back with `took` (`None`: none, the socket's buffer is full).
    fn wrote(&self, wanted: usize, took: Option<usize>) {
        let now = self.now().max(1);
        let n = took.unwrap_or(0) as u64;
        let written = self.written.fetch_add(n, Ordering::Relaxed) + n;
        if n > 0 {
            self.last_write.store(now, Ordering::Relaxed);
        }
        if took.is_some_and(|t| t >= wanted) {
            // Taken whole: the client keeps up.
            self.held_since.store(0, Ordering::Relaxed);
            return;
        }
        let held = self.held_since.load(Ordering::Relaxed);
        if held == 0 {
            self.held_since.store(now, Ordering::Relaxed);
            self.written_when_held.store(written, Ordering::Relaxed);
        } else if written - self.written_when_held.load(Ordering::Relaxed) >= MIN_PROGRESS {
            // Held back, but taking enough: count again from here.
            self.held_since.store(now, Ordering::Relaxed);
            self.written_when_held.store(written, Ordering::Relaxed);
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// When the connection must be closed as things stand, and why.
    fn deadline(&self, limits: Limits) -> (Instant, &'static str) {
        let read = self.last_read.load(Ordering::Relaxed);
        let write = self.last_write.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let stall = (
                self.at(read.max(write)) + STALL_TIMEOUT,
                "nothing moved during a request",
            );
            return match self.held_since.load(Ordering::Relaxed) {
                0 => stall,
                held => {
                    let slow = self.at(held) + STALL_TIMEOUT;
                    if slow < stall.0 {
                        (slow, "the client reads its response too slowly")
                    } else {
                        stall
                    }
                }
            };
        }
        let idle =
            self.at(read.max(self.idle_since.load(Ordering::Relaxed))) + limits.keepalive_timeout;
        if self.requests.load(Ordering::Relaxed) == 0 {
            let head = self.start + limits.header_read_timeout;
            if head <= idle {
                return (head, "no request within the header read time-out");
            }
        }
        (idle, "idle")
    }

    /// Completes when the connection must be closed, with the reason.
    async fn watch(&self, limits: Limits) -> &'static str {
        loop {
            let (deadline, why) = self.deadline(limits);
            if deadline <= Instant::now() {
                return why;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight; dropped with its response body (written out, or abandoned).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's socket, noting when bytes move.
#[derive(Debug)]
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.activity.now();
            self.activity.last_read.store(now, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &result {
            Poll::Ready(Ok(n)) => self.activity.wrote(buf.len(), Some(*n)),
            Poll::Pending => self.activity.wrote(buf.len(), None),
            Poll::Ready(Err(_)) => {}
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let wanted = bufs.iter().map(|b| b.len()).sum();
        match &result {
            Poll::Ready(Ok(n)) => self.activity.wrote(wanted, Some(*n)),
            Poll::Pending => self.activity.wrote(wanted, None),
            Poll::Ready(Err(_)) => {}
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hands each request of one connection to the router: with the client's address (`ConnectInfo`), its
/// body read within the time-out, and its response body tracked as in flight.
#[derive(Debug, Clone)]
struct Requests {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Requests {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        let mut app = self.app.clone();
        let peer = self.peer;
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let body = match read_body(body, body_timeout).await {
                Ok(bytes) => bytes,
                Err(status) => {
                    let mut response =
                        Response::new(Body::from(status.canonical_reason().unwrap_or("refused")));
                    *response.status_mut() = status;
                    // The rest of the body is not read: the connection cannot be reused.
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                    return Ok(response.map(|b| {
                        Body::new(Tracked {
                            inner: b,
                            _in_flight: in_flight,
                        })
                    }));
                }
            };
            parts.extensions.insert(ConnectInfo(PeerAddr(peer)));
            let request = Request::from_parts(parts, Body::from(body));
            // The router never fails (errors are responses).
            let response = match app.call(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(response.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// The whole request body, if it arrives within `timeout` and is at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming, timeout: Duration) -> Result<Bytes, StatusCode> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(Body::new(body), MAX_BODY)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// A response body that keeps its request counted as in flight until it is written out or dropped.
#[derive(Debug)]
struct Tracked {
    inner: Body,
    /// Held for its `Drop`.
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_the_total_and_each_source() {
        let slots = Arc::new(Slots::new(Limits {
            max_connections: 3,
            max_connections_per_source: 2,
            ..Limits::default()
        }));
        let a = Source::of("192.0.2.1".parse().unwrap());
        let b = Source::of("192.0.2.2".parse().unwrap());
        let c = Source::of("192.0.2.3".parse().unwrap());
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "a third from one source");
        let _b1 = slots.take(b).unwrap();
        assert!(slots.take(c).is_none(), "a fourth in all");
        drop(a1);
        assert!(slots.take(c).is_some(), "a place came free");
    }

    #[test]
    fn the_watchdog_times_heads_idles_and_stalls() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let a = Arc::new(Activity::new());
        // Silent from the start: idle after 5 s.
        assert_eq!(a.deadline(limits), (a.at(5000), "idle"));
        // Bytes trickling in, but no request yet: cut 10 s after the accept however they come.
        a.last_read.store(6000, Ordering::Relaxed);
        let (at, why) = a.deadline(limits);
        assert_eq!(at, a.at(10_000));
        assert!(why.contains("header"), "{why}");
        // A request in flight: only a stall ends it, counted from the last byte either way.
        let request = a.request_started();
        assert_eq!(a.deadline(limits).0, a.at(6000) + STALL_TIMEOUT);
        a.last_write.store(30_000, Ordering::Relaxed);
        assert_eq!(a.deadline(limits).0, a.at(30_000) + STALL_TIMEOUT);
        // A slow reader: its socket takes a little now and then, never a write whole, never enough.
        a.wrote(16_384, None);
        let held = a.held_since.load(Ordering::Relaxed);
        a.wrote(16_384, Some(100));
        a.last_write.store(held + 50_000, Ordering::Relaxed);
        let (at, why) = a.deadline(limits);
        assert_eq!(at, a.at(held) + STALL_TIMEOUT);
        assert!(why.contains("too slowly"), "{why}");
        // Taking enough meanwhile counts again from then; a write taken whole clears it.
        a.wrote(1 << 20, Some(MIN_PROGRESS as usize));
        assert!(a.held_since.load(Ordering::Relaxed) >= held);
        a.wrote(10, Some(10));
        assert_eq!(a.held_since.load(Ordering::Relaxed), 0);
        assert_eq!(a.deadline(limits).1, "nothing moved during a request");
        // Done: idle again, and the head rule no longer applies (hyper times later heads).
        drop(request);
        a.idle_since.store(31_000, Ordering::Relaxed);
        assert_eq!(a.deadline(limits), (a.at(36_000), "idle"));
    }
}
