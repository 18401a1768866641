//! A direct-tcpip channel (`ssh -L`, `ssh -W`, `ssh -J`): the moment a tunnel starts.
//!
//! Entry point: [`run`], spawned per direct-tcpip channel by the handler. Policy decides at once (the
//! vendor's standing, and a grant naming that asset and port); a request for an asset's ssh service is a
//! ProxyJump (`jump::run`); anything else is a raw tunnel: registered in the session pipeline, the device
//! port dialled, the connection record written, and only then is the vendor's channel accepted and
//! relayed (`tunnel::run`).

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use serde_json::json;

use super::context::Context;
use super::jump;
use crate::audit::Action;
use crate::live::{PendingSession, SessionKind};
use crate::model::ServiceKind;
use crate::policy::{self, Denial, PolicyError};
use crate::tunnel::DialError;

/// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED and SSH_OPEN_CONNECT_FAILED with our own text: OpenSSH prints
/// `channel N: open failed: administratively prohibited: <text>`. The text may name the host the client
/// asked for, so it is said as every bastion line is (`bastion_text`: no control characters).
fn prohibited(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 1,
        reason: super::bastion_text(&reason),
    }
}

fn connect_failed(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 2,
        reason: super::bastion_text(&reason),
    }
}

/// Serves one direct-tcpip channel to `host:port` (as the vendor's client named it).
pub async fn run(
    ctx: Context,
    channel: Channel<Msg>,
    host: String,
    port: u32,
    originator: String,
    reply: ChannelOpenHandle,
) {
    let app = ctx.shared.app.clone();
    let now = app.clock.now();
    let Ok(port) = u16::try_from(port) else {
        ctx.audit_refusal(
            Action::TunnelRefused,
            format!("vendor:{}", ctx.vendor()),
            json!({"destination": format!("{}:{port}", crate::model::truncate_for_display(&host, 64)), "originator": originator, "peer": ctx.peer.to_string(), "reason": format!("invalid port {port}")}),
        )
        .await;
        reply
            .reject(prohibited(format!("invalid port {port}")))
            .await;
        return;
    };
    let grant = match policy::authorize_tunnel(&app.store, now, &ctx.principal, &host, port).await {
        Ok(g) => g,
        Err(PolicyError::Denied(denial)) => {
            ctx.audit_refusal(
                Action::TunnelRefused,
                format!("vendor:{}", ctx.vendor()),
                json!({"destination": format!("{}:{port}", crate::model::truncate_for_display(&host, 64)), "originator": originator, "peer": ctx.peer.to_string(), "reason": denial.audit_reason()}),
            )
            .await;
            reply
                .reject(prohibited(
                    denial.vendor_message(&ctx.shared.request_hint(ctx.vendor())),
                ))
                .await;
            return;
        }
        Err(PolicyError::Store(e)) => {
            tracing::error!(error = %e, "policy check failed");
            reply
                .reject(prohibited(
                    "the bastion cannot check your access right now; try again in a minute".into(),
                ))
                .await;
            return;
        }
    };
    if grant.service().kind == ServiceKind::Ssh {
        jump::run(ctx, grant, channel, originator, reply).await;
        return;
    }
    let mut pending = PendingSession::register(
        &app,
        &ctx.shared.live,
        &ctx.shared.budgets,
        grant,
        SessionKind::Tunnel,
        ctx.origin(),
    );
    let grant = pending.grant().clone();
    let (asset, service) = (grant.asset(), grant.service());
    let device = tokio::select! {
        d = crate::tunnel::dial(&app.store, &grant) => d,
        close = pending.closed() => {
            pending.refuse(Action::TunnelRefused, &format!("closed before it opened: {}", close.text)).await;
            reply.reject(prohibited(close.text)).await;
            return;
        }
        () = ctx.stop.cancelled() => return,
    };
    let device = match device {
        Ok(s) => s,
        Err(DialError::SshListens(landed)) => {
            let denial = Denial::SharedPort {
                asset: asset.name.clone(),
                port: service.port,
            };
            tracing::warn!(asset = %asset.name, port = service.port, %landed,
                "a tcp tunnel landed where an asset lists an ssh service; refused");
            pending
                .refuse(
                    Action::TunnelRefused,
                    &format!("{} (it reached {landed})", denial.audit_reason()),
                )
                .await;
            reply
                .reject(prohibited(
                    denial.vendor_message(&ctx.shared.request_hint(ctx.vendor())),
                ))
                .await;
            return;
        }
        Err(DialError::Store(e)) => {
            tracing::error!(error = %e, "cannot check where a tunnel landed; refusing it");
            pending
                .refuse(
                    Action::TunnelRefused,
                    "the bastion could not check the device's address",
                )
                .await;
            reply
                .reject(prohibited(
                    "the bastion cannot check your access right now; try again in a minute".into(),
                ))
                .await;
            return;
        }
        Err(DialError::Unreachable(why)) => {
            tracing::warn!(asset = %asset.name, port = service.port, error = %why, "tunnel dial failed");
            pending
                .refuse(Action::TunnelRefused, &format!("device unreachable: {why}"))
                .await;
            reply
                .reject(connect_failed(format!(
                    "{}:{} is unreachable from the bastion right now",
                    asset.name, service.port
                )))
                .await;
            return;
        }
    };
    let detail = format!(
        "{host}:{port} → {}:{} ({}) from {originator}",
        asset.address, service.port, service.name
    );
    let mut live = match pending.start(&detail, None, &[]).await {
        Ok(live) => live,
        Err(e) => {
            // A fault of the bastion's was logged where it happened (`PendingSession::start`).
            tracing::info!(error = %e, "tunnel not started");
            reply
                .reject(prohibited(e.vendor_message().to_owned()))
                .await;
            return;
        }
    };
    reply.accept().await;
    // The vendor's side is taken as it comes, whatever the device port takes (`drained`).
    let (stream, tx, drain) = super::drained::stream(channel, &ctx.stop).await;
    let end = {
        let run = crate::tunnel::run(
            &mut live,
            stream,
            device,
            ctx.channel.client_closed(),
            &ctx.stop,
        );
        tokio::pin!(run, drain);
        let mut draining = true;
        loop {
            tokio::select! {
                end = &mut run => break end,
                () = &mut drain, if draining => draining = false,
            }
        }
    };
    let _ = tx.close().await;
    live.end(end).await;
}
