//! Port-scoped TCP tunnels (`ssh -L`, `ssh -W`): a direct-tcpip channel reaches a device port only under
//! an active grant naming that vendor, asset and service; each channel leaves a connection record.
//!
//! Entry point: [`open`], spawned per direct-tcpip channel by the SSH handler (never dialled inside the
//! connection's callback). A request for an asset's `ssh` service is handed to `ssh::jump` (ProxyJump:
//! the inner SSH session is terminated and recorded like `VENDOR+ASSET`). Raw tunnels go through
//! [`relay::relay`] with the exfiltration guard ([`budget`]) checking every chunk.

pub mod budget;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use serde_json::json;
use tokio::net::TcpStream;

use crate::audit::AuditEvent;
use crate::config::BudgetAction;
use crate::model::ServiceKind;
use crate::policy::expiry::Control;
use crate::policy::{self, Grant, PolicyError};
use crate::ssh::jump;
use crate::ssh::session::Context;
use crate::store::NewSession;
use budget::{Crossing, Direction, Key};
use relay::{Counters, Gate, RelayEnd};

/// How long dialling a device port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED and SSH_OPEN_CONNECT_FAILED with our own text: OpenSSH prints
/// `channel N: open failed: administratively prohibited: <text>`.
fn prohibited(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other { code: 1, reason }
}

fn connect_failed(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other { code: 2, reason }
}

/// Serves one direct-tcpip channel to `host:port` (as the vendor's client named it).
pub async fn open(
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
        reply
            .reject(prohibited(format!("invalid port {port}")))
            .await;
        return;
    };
    let grant = match policy::authorize_tunnel(&app.store, now, &ctx.vendor, &host, port).await {
        Ok(g) => g,
        Err(PolicyError::Denied(denial)) => {
            ctx.audit(
                "tunnel.refused",
                format!("vendor:{}", ctx.vendor.name),
                json!({"destination": format!("{}:{port}", crate::model::truncate_for_display(&host, 64)), "originator": originator, "peer": ctx.peer.to_string(), "reason": denial.audit_reason()}),
            )
            .await;
            reply
                .reject(prohibited(
                    denial.vendor_message(&ctx.shared.request_hint(&ctx.vendor.name)),
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
        jump::run(ctx, grant, channel, reply).await;
        return;
    }
    let asset = grant.asset();
    let target = (asset.address.clone(), grant.service().port);
    let device = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target.clone())).await
    {
        Ok(Ok(s)) => s,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {} s", DIAL_TIMEOUT.as_secs()),
            };
            tracing::warn!(asset = %asset.name, port = grant.service().port, error = %why, "tunnel dial failed");
            ctx.audit(
                "tunnel.refused",
                format!("asset:{}", asset.name),
                json!({"service": grant.service().name, "grant": grant.id(), "peer": ctx.peer.to_string(), "reason": format!("device unreachable: {why}")}),
            )
            .await;
            reply
                .reject(connect_failed(format!(
                    "{}:{} is unreachable from the bastion right now",
                    asset.name,
                    grant.service().port
                )))
                .await;
            return;
        }
    };
    let _ = device.set_nodelay(true);
    let id = crate::secrets::random_hex(8);
    let detail = format!(
        "{host}:{port} → {}:{} ({}) from {originator}",
        asset.address,
        grant.service().port,
        grant.service().name
    );
    if let Err(e) = record_open(&ctx, &grant, &id, &detail).await {
        tracing::error!(error = %e, "cannot record the tunnel; refusing it");
        reply
            .reject(prohibited(
                "the bastion cannot record this tunnel right now, so it was refused".into(),
            ))
            .await;
        return;
    }
    reply.accept().await;
    let (registration, mut controls) =
        ctx.shared
            .live
            .register(&id, grant.id(), &asset.name, grant.ends_at());
    let cancel = ctx.stop.child_token();
    let closed_by: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let watcher = {
        let cancel = cancel.clone();
        let closed_by = closed_by.clone();
        tokio::spawn(async move {
            while let Some(control) = controls.recv().await {
                if let Control::Close(reason) = control {
                    if let Ok(mut c) = closed_by.lock() {
                        c.get_or_insert(reason);
                    }
                    cancel.cancel();
                    return;
                }
            }
        })
    };
    let guard = Guard {
        ctx: Arc::new(ctx),
        grant: grant.clone(),
        session: id.clone(),
        key: Key {
            vendor_id: grant.vendor().id,
            asset_id: asset.id,
            service: grant.service().name.clone(),
        },
        cut: std::sync::Mutex::new(None),
    };
    let counters = Counters::default();
    let end = relay::relay(channel.into_stream(), device, &counters, &guard, &cancel).await;
    watcher.abort();
    drop(registration);
    let reason = match end {
        RelayEnd::Finished => "closed by both sides".to_owned(),
        RelayEnd::Failed(e) => format!("connection lost: {e}"),
        RelayEnd::Refused => guard
            .cut
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_else(|| "cut by the exfiltration guard".into()),
        RelayEnd::Cancelled => closed_by
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_else(|| "the vendor's connection ended".into()),
    };
    let (up, down) = (
        counters.up.load(Ordering::Relaxed),
        counters.down.load(Ordering::Relaxed),
    );
    record_close(&guard.ctx, &grant, &id, &reason, up, down).await;
}

async fn record_open(
    ctx: &Context,
    grant: &Grant,
    id: &str,
    detail: &str,
) -> Result<(), crate::store::StoreError> {
    let app = &ctx.shared.app;
    let now = app.clock.now();
    let mut tx = app.store.begin().await?;
    tx.insert_session(
        &NewSession {
            id,
            vendor_id: grant.vendor().id,
            asset_id: grant.asset().id,
            grant_id: grant.id(),
            kind: "tunnel",
            service: &grant.service().name,
            client_addr: &ctx.peer.to_string(),
            detail,
            node: &app.node,
        },
        now,
    )
    .await?;
    tx.audit(
        AuditEvent::new(
            format!("vendor:{}", grant.vendor().name),
            "tunnel.open",
            format!("session:{id}"),
            json!({"asset": grant.asset().name, "service": grant.service().name, "port": grant.service().port, "grant": grant.id(), "detail": detail, "peer": ctx.peer.to_string()}),
        ),
        now,
    )
    .await?;
    tx.commit("tunnel.open").await?;
    tracing::info!(session = %id, vendor = %grant.vendor().name, asset = %grant.asset().name, service = %grant.service().name, "tunnel opened");
    Ok(())
}

async fn record_close(ctx: &Context, grant: &Grant, id: &str, reason: &str, up: u64, down: u64) {
    let app = &ctx.shared.app;
    let now = app.clock.now();
    let result = async {
        let mut tx = app.store.begin().await?;
        tx.end_session(
            id,
            reason,
            i64::try_from(up).unwrap_or(i64::MAX),
            i64::try_from(down).unwrap_or(i64::MAX),
            now,
        )
        .await?;
        tx.audit(
            AuditEvent::new(
                format!("vendor:{}", grant.vendor().name),
                "tunnel.close",
                format!("session:{id}"),
                json!({"grant": grant.id(), "reason": reason, "bytes_up": up, "bytes_down": down}),
            ),
            now,
        )
        .await?;
        tx.commit("tunnel.close").await
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(session = %id, reason, bytes_up = up, bytes_down = down, "tunnel closed")
        }
        Err(e) => tracing::error!(session = %id, error = %e, "cannot record the tunnel's end"),
    }
}

/// The exfiltration guard for one tunnel.
struct Guard {
    ctx: Arc<Context>,
    grant: Grant,
    session: String,
    key: Key,
    /// Why the guard cut the tunnel, if it did.
    cut: std::sync::Mutex<Option<String>>,
}

impl Gate for Guard {
    fn allow(&self, dir: Direction, n: usize) -> bool {
        let app = &self.ctx.shared.app;
        let policy = app.config.tunnels.policy_for(&self.grant.service().name);
        let Some(crossing) =
            self.ctx
                .shared
                .budgets
                .add(&self.key, app.clock.now(), dir, n as u64, policy)
        else {
            return true;
        };
        if crossing.first {
            self.report(&crossing);
        }
        if crossing.action == BudgetAction::Cut {
            if let Ok(mut c) = self.cut.lock() {
                c.get_or_insert_with(|| {
                    format!(
                        "cut by the exfiltration guard: {} bytes {} in the last hour, budget {}",
                        crossing.used,
                        crossing.direction.as_str(),
                        crossing.limit
                    )
                });
            }
            return false;
        }
        true
    }
}

impl Guard {
    /// Audits a crossing (once per direction per hour) without holding up the data path.
    fn report(&self, crossing: &Crossing) {
        let ctx = self.ctx.clone();
        let detail = json!({
            "session": self.session,
            "asset": self.grant.asset().name,
            "service": self.grant.service().name,
            "direction": crossing.direction.as_str(),
            "bytes_last_hour": crossing.used,
            "budget": crossing.limit,
            "action": if crossing.action == BudgetAction::Cut { "cut" } else { "alert" },
        });
        tracing::warn!(session = %self.session, asset = %self.grant.asset().name, service = %self.grant.service().name, used = crossing.used, limit = crossing.limit, "tunnel byte budget crossed");
        let subject = format!("asset:{}", self.grant.asset().name);
        tokio::spawn(async move {
            ctx.audit("tunnel.budget.exceeded", subject, detail).await;
        });
    }
}
