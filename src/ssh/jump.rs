//! ProxyJump (`ssh -J VENDOR@bastion:2222 service@mri-01`): the vendor's client runs a second SSH session
//! inside a direct-tcpip channel to the asset's ssh service. chaperone terminates that inner session
//! itself (a russh server over the channel's stream), so each of its sessions is authenticated, bridged
//! with the injected credential and recorded exactly like `VENDOR+ASSET` (`device::run`).
//!
//! Entry point: [`run`]. The jump itself is a session of kind `jump` in the pipeline (a connection record
//! with the bytes that crossed it), so expiry, revocation and disable close it like any other. The inner
//! login accepts only the key the vendor used for the outer login (the outer login already required the
//! second factor). The inner session presents the bastion's own host key: vendors pin it for asset names
//! with the lines `chaperone known-hosts` prints.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::handler::Connection;
use super::killswitch::Killable;
use crate::live::budget::Direction;
use crate::live::{Control, End, Meter, PendingSession, SessionKind};
use crate::policy::Grant;

/// How long the inner sessions have to tell the vendor and write their ends before the jump is cut.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

pub async fn run(
    ctx: Context,
    grant: Grant,
    channel: russh::Channel<Msg>,
    originator: String,
    reply: ChannelOpenHandle,
) {
    let app = ctx.shared.app.clone();
    let pending = PendingSession::register(
        &app,
        &ctx.shared.live,
        &ctx.shared.budgets,
        grant,
        SessionKind::Jump,
        ctx.origin(),
    );
    let detail = format!(
        "ssh -J to {}:{} ({}) from {originator}",
        pending.grant().asset().name,
        pending.grant().service().port,
        pending.grant().service().name
    );
    let asset = pending.grant().asset().name.clone();
    let mut live = match pending.start(&detail, None, &[]).await {
        Ok(live) => live,
        Err(e) => {
            // A fault of the bastion's was logged where it happened (`PendingSession::start`).
            tracing::info!(error = %e, "jump not started");
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: super::bastion_text(e.vendor_message()),
                })
                .await;
            return;
        }
    };
    reply.accept().await;
    let mut controls = live.take_controls();
    let kill = CancellationToken::new();
    let inner_stop = ctx.stop.child_token();
    let stream = Killable::new(
        Counted {
            inner: channel.into_stream(),
            meter: live.meter(),
        },
        kill.clone(),
        app.config.ssh.send_timeout,
    );
    let handler = Connection::inner(
        ctx.shared.clone(),
        ctx.peer,
        inner_stop.clone(),
        (ctx.principal.clone(), asset),
        ctx.limits.clone(),
    );
    let config = ctx.shared.inner_config.clone();
    let grace = tokio::time::sleep(app.config.ssh.login_grace_time);
    let session = tokio::select! {
        s = russh::server::run_stream(config, stream, handler) => s,
        () = grace => Err(russh::Error::IO(io::Error::new(io::ErrorKind::TimedOut, "no inner handshake within the login grace time"))),
    };
    let end = match session {
        Err(e) => End::Lost(format!("inner handshake: {e}")),
        Ok(mut session) => loop {
            tokio::select! {
                result = &mut session => break match result {
                    Ok(()) => End::VendorClosed,
                    Err(e) => End::Lost(e.to_string()),
                },
                control = controls.recv() => match control {
                    Some(Control::Close(close)) => {
                        // The inner sessions got the same close (same grant or vendor): let them
                        // tell the vendor, then cut the tunnel.
                        tokio::time::sleep(CLOSE_GRACE).await;
                        kill.cancel();
                        let _ = session.await;
                        break End::Closed(close);
                    }
                    Some(Control::Notice(_)) => {}
                    None => std::future::pending::<()>().await,
                },
                () = ctx.stop.cancelled() => {
                    kill.cancel();
                    let _ = session.await;
                    break End::Lost("the vendor's connection ended".into());
                }
            }
        },
    };
    inner_stop.cancel();
    live.end(end).await;
}

/// Server settings for inner sessions: publickey only (the outer login carried the second factor).
pub fn inner_config(
    host_key: russh::keys::PrivateKey,
    longest_sign_in: Duration,
) -> Arc<russh::server::Config> {
    let mut config = super::russh_config(host_key, longest_sign_in);
    config.methods = russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]);
    Arc::new(config)
}

/// The jump's stream, counting the bytes each way on its session's meter (not against a budget: the
/// inner sessions are metered themselves).
struct Counted<S> {
    inner: S,
    meter: Meter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.meter.count(Direction::Up, buf.filled().len() - before);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.meter.count(Direction::Down, n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
