//! `ssh VENDOR@bastion request ASSET SERVICES --for DURATION --reason TEXT`: files an access request and
//! waits, live, for the decision.
//!
//! Entry point: [`run`], called by `home::run` for an exec that starts with `request`. While waiting it
//! shows a status line with the elapsed time on stderr. It re-reads the request when [`Events`] says it
//! changed (same process: well under a second) and every 500 ms anyway (a decision made by another
//! process or node). Approved: the commands to connect, exit 0. Denied: the approver's reason, exit 1.
//! Ctrl-C (a `-t` session sends it as a byte, or the client sends a signal) stops waiting and leaves the
//! request pending; so does closing the connection.
//!
//! ssh joins a remote command's words with spaces and drops the client's quoting, so everything after
//! `--reason` is the reason; shell-style quotes around it are removed when present ([`parse`]).
//!
//! [`Events`]: crate::policy::events::Events

use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::sync::broadcast::error::RecvError;

use super::context::Context;
use crate::audit::Action;
use crate::config::format_duration;
use crate::model::{RequestStatus, ServiceKind, Vendor};
use crate::policy::events::Change;
use crate::policy::requests::{self, FileRefusal};
use chaperone_model::request::parse;

/// Files the request in `rest` for `vendor` (as policy just re-read it) and waits for its decision;
/// returns the exit status.
pub async fn run(ctx: &Context, vendor: &Vendor, channel: &mut Channel<Msg>, rest: &str) -> u32 {
    let started = tokio::time::Instant::now();
    let args = match parse(rest) {
        Ok(a) => a,
        Err(e) => {
            err(channel, &format!("chaperone: {e}\r\n")).await;
            return 2;
        }
    };
    let app = &ctx.shared.app;
    let filed = requests::file(
        &app.store,
        &app.events,
        &app.config.policy,
        app.clock.now(),
        vendor,
        &args.asset,
        &args.services,
        args.duration,
        &args.reason,
    )
    .await;
    let request = match filed {
        Ok(r) => r,
        Err(refusal) => {
            if let FileRefusal::Store(e) = &refusal {
                tracing::error!(error = %e, "cannot file a request");
            } else {
                // Counted with the connection's other refusals: a loop of refused requests is
                // audited up to the same bound, not once a time on the one audit writer.
                ctx.audit_refusal(
                    Action::RequestRefused,
                    format!("asset:{}", args.asset),
                    serde_json::json!({"reason": refusal.to_string(), "services": args.services}),
                )
                .await;
            }
            // Told no sooner than REFUSAL_FLOOR after asking: another organisation's asset is refused
            // in the words of a missing one, and the time taken must not tell them apart either (the
            // store reads both in one query; what is left of the difference, tens of microseconds,
            // drowns here). It also paces a loop of guesses.
            tokio::time::sleep_until(started + REFUSAL_FLOOR).await;
            err(
                channel,
                &format!("chaperone: {}\r\n", refusal.vendor_message()),
            )
            .await;
            return 1;
        }
    };
    let id = request.id;
    tracing::info!(request = id, asset = %request.asset, "access request filed");
    err(
        channel,
        &format!(
            "chaperone: request #{id} filed: {} {} for {}. Waiting for an approver (Ctrl-C stops waiting; the request stays pending).\r\n",
            request.asset,
            request.services.join(","),
            format_duration(args.duration)
        ),
    )
    .await;
    wait(ctx, channel, id).await
}

/// How long a refused request takes to be answered, at least.
const REFUSAL_FLOOR: Duration = Duration::from_millis(250);

/// What the wait ended with.
enum Ended {
    Decided(u32),
    Interrupted,
    Gone,
}

async fn wait(ctx: &Context, channel: &mut Channel<Msg>, id: i64) -> u32 {
    let app = &ctx.shared.app;
    let mut changes = app.events.subscribe();
    let started = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = tokio::time::interval(Duration::from_secs(1));
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        let recheck = tokio::select! {
            () = ctx.stop.cancelled() => break Ended::Gone,
            msg = channel.wait() => match msg {
                None | Some(ChannelMsg::Close) => break Ended::Gone,
                Some(ChannelMsg::Signal { .. }) => break Ended::Interrupted,
                Some(ChannelMsg::Data { data }) if data.contains(&3) => break Ended::Interrupted,
                // The client's stdin closing (EOF) does not stop the wait: `ssh … </dev/null` is fine.
                Some(_) => false,
            },
            change = changes.recv() => match change {
                Ok(Change::Request(r)) => r == id,
                Ok(_) => false,
                Err(RecvError::Lagged(_)) => true,
                // The sender lives in `App`; the poll below still works if it were gone.
                Err(RecvError::Closed) => false,
            },
            _ = poll.tick() => true,
            _ = status.tick() => {
                let secs = started.elapsed().as_secs();
                err(channel, &format!(
                    "\r  waiting for approval of request #{id}: {}:{:02} elapsed ",
                    secs / 60, secs % 60
                )).await;
                false
            }
        };
        if recheck && let Some(code) = check(ctx, channel, id).await {
            break Ended::Decided(code);
        }
    };
    match ended {
        Ended::Decided(code) => code,
        Ended::Interrupted => {
            err(
                channel,
                &format!(
                    "\r\nchaperone: stopped waiting. Request #{id} stays pending; once approved, `{}` shows how to connect.\r\n",
                    ctx.shared.connect_command(&ctx.principal.vendor, None, false)
                ),
            )
            .await;
            130
        }
        Ended::Gone => {
            tracing::info!(
                request = id,
                "vendor stopped waiting; request stays pending"
            );
            130
        }
    }
}

/// Re-reads the request; `Some(exit status)` once decided (and tells the vendor).
async fn check(ctx: &Context, channel: &mut Channel<Msg>, id: i64) -> Option<u32> {
    let app = &ctx.shared.app;
    let now = app.clock.now();
    let request = match app.store.request(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(request = id, error = %e, "cannot re-read request");
            return None;
        }
    };
    match request.status {
        RequestStatus::Pending if request.expires_at.is_some_and(|t| t <= now) => {
            if let Err(e) = requests::expire_due(&app.store, &app.events, now).await {
                tracing::warn!(error = %e, "cannot expire requests");
            }
            None
        }
        RequestStatus::Pending => None,
        RequestStatus::Approved => {
            let text = match approved_text(ctx, request.grant_id).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(request = id, error = %e, "cannot describe the grant");
                    format!(
                        "request #{id} was approved; run `{}` to see how to connect\r\n",
                        ctx.shared
                            .connect_command(&ctx.principal.vendor, None, false)
                    )
                }
            };
            err(channel, "\r\n").await;
            let _ = channel.data_bytes(Bytes::from(text)).await;
            Some(0)
        }
        RequestStatus::Denied => {
            err(
                channel,
                &format!(
                    "\r\nchaperone: request #{id} was denied by {}: {}\r\n",
                    request.decided_by.as_deref().unwrap_or("an approver"),
                    request
                        .decision_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
            )
            .await;
            Some(1)
        }
        RequestStatus::Expired => {
            err(
                channel,
                &format!("\r\nchaperone: request #{id} expired: nobody decided in time. Ask again or call the hospital's staff.\r\n"),
            )
            .await;
            Some(1)
        }
    }
}

/// "approved until …" and the exact commands to connect.
async fn approved_text(
    ctx: &Context,
    grant_id: Option<i64>,
) -> Result<String, crate::store::StoreError> {
    use std::fmt::Write as _;
    let store = &ctx.shared.app.store;
    let grant_id = grant_id.ok_or_else(|| {
        crate::store::StoreError::Corrupt("approved request without grant".into())
    })?;
    let grant = store.require_grant(grant_id).await?;
    let asset = store.require_asset(&grant.asset).await?;
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(
        out,
        "Approved: {} {} until {} (grant #{}). Connect with:\r",
        grant.asset,
        grant.services.join(","),
        crate::clock::format_time(grant.ends_at),
        grant.id
    );
    for s in asset
        .services
        .iter()
        .filter(|s| grant.services.contains(&s.name))
    {
        match s.kind {
            ServiceKind::Ssh => {
                let _ = writeln!(
                    out,
                    "  {}\r",
                    ctx.shared
                        .connect_command(&ctx.principal.vendor, Some(&grant.asset), true)
                );
            }
            ServiceKind::Tcp => {
                let _ = writeln!(
                    out,
                    "  {}   # {}\r",
                    ctx.shared
                        .tunnel_command(&ctx.principal.vendor, &grant.asset, s.port),
                    s.name
                );
            }
        }
    }
    Ok(out)
}

/// One line on stderr; skipped after a few seconds if the client is not reading (a status line is not
/// worth a task stuck on a full window).
async fn err(channel: &mut Channel<Msg>, text: &str) {
    let _ = tokio::time::timeout(
        super::home::WRITE_TIMEOUT,
        channel.extended_data_bytes(1, Bytes::from(text.to_owned())),
    )
    .await;
}
