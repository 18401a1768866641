//! ProxyJump (`ssh -J VENDOR@bastion:2222 service@mri-01`): the vendor's client runs a second SSH session
//! inside a direct-tcpip channel to the asset's ssh service. chaperone terminates that inner session
//! itself (a russh server over the channel's stream), so it is authenticated, bridged with the injected
//! credential and recorded exactly like `VENDOR+ASSET`.
//!
//! Entry point: [`run`]. The inner login accepts only the key the vendor used for the outer login (the
//! outer login already required the second factor). The inner session presents the bastion's own host
//! key: vendors pin it for asset names with the lines `chaperone known-hosts` prints.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};
use serde_json::json;

use super::handler::Connection;
use super::session::Context;
use crate::policy::Grant;

pub async fn run(
    ctx: Context,
    grant: Grant,
    channel: russh::Channel<Msg>,
    reply: ChannelOpenHandle,
) {
    let Some(key) = ctx.key_fingerprint.clone() else {
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "ProxyJump needs a key login on the bastion".into(),
            })
            .await;
        return;
    };
    let asset = grant.asset().name.clone();
    ctx.audit(
        "jump.open",
        format!("asset:{asset}"),
        json!({"grant": grant.id(), "peer": ctx.peer.to_string(), "service": grant.service().name}),
    )
    .await;
    reply.accept().await;
    let stop = ctx.stop.clone();
    let shared = ctx.shared.clone();
    let handler = Connection::inner(
        shared.clone(),
        ctx.peer,
        stop.child_token(),
        ctx.vendor.clone(),
        key,
        asset.clone(),
    );
    let config = shared.inner_config.clone();
    let session = match russh::server::run_stream(config, channel.into_stream(), handler).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "inner handshake failed");
            return;
        }
    };
    let handle = session.handle();
    tokio::select! {
        result = session => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "inner session ended with an error");
            }
        }
        () = stop.cancelled() => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = handle.disconnect(russh::Disconnect::ByApplication, "session ended by the bastion".into(), "en".into()).await;
        }
    }
    ctx.audit(
        "jump.close",
        format!("asset:{asset}"),
        json!({"grant": grant.id(), "peer": ctx.peer.to_string()}),
    )
    .await;
}

/// Server settings for inner sessions: publickey only (the outer login carried the second factor).
pub fn inner_config(host_key: russh::keys::PrivateKey) -> Arc<russh::server::Config> {
    let mut config = super::russh_config(host_key);
    config.methods = russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]);
    Arc::new(config)
}
