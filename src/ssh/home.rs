//! A vendor's home (`ssh VENDOR@bastion`, no asset): who they are, their grants with time left, their
//! pending requests, and the exact commands to connect or ask for access. No device is involved.
//! `ssh VENDOR@bastion request …` is handed to `request::run`, `passkey …` to `passkeys::run`.
//!
//! Entry point: [`run`], spawned per session channel.

use std::fmt::Write as _;

use bytes::Bytes;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg};

use super::context::Context;
use crate::clock::format_time;
use crate::config::format_duration;
use crate::model::Vendor;

pub async fn run(ctx: Context, mut channel: Channel<Msg>, reply: ChannelOpenHandle) {
    reply.accept().await;
    // Wait for what the client wants: a shell (the home screen) or a command.
    let command = loop {
        let msg = tokio::select! {
            () = ctx.stop.cancelled() => return,
            m = channel.wait() => m,
        };
        match msg {
            Some(ChannelMsg::RequestShell { .. }) => break None,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Some(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::Close) | None => return,
            // Input ended before anything was asked: nothing to do, and the channel is closed.
            Some(ChannelMsg::Eof) => {
                finish(&channel, Bytes::new(), 0).await;
                return;
            }
            Some(_) => {}
        }
    };
    // A command of the bastion's own keeps the connection active while it runs (a `request` waiting
    // for its decision, `passkey add` for the browser): `live::idle`. A channel that asked for nothing
    // does not.
    let _busy = ctx.limits.activity.busy();
    // The vendor as the store has them now: a disable, a lock or a removed key counts from this moment.
    let app = &ctx.shared.app;
    let vendor = match crate::policy::standing(&app.store, app.clock.now(), &ctx.principal).await {
        Ok(v) => v,
        Err(e) => {
            let text = match e {
                crate::policy::PolicyError::Denied(d) => d.vendor_message(""),
                crate::policy::PolicyError::Store(e) => {
                    tracing::error!(error = %e, "cannot re-read the vendor");
                    "the bastion cannot list your access right now; try again in a minute".into()
                }
            };
            let data = Bytes::from(format!("chaperone: {text}\r\n"));
            finish(&channel, data, 1).await;
            return;
        }
    };
    if let Some(rest) = command
        .as_deref()
        .map(str::trim_start)
        .and_then(|c| c.strip_prefix("passkey"))
        .filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    {
        let status = super::passkeys::run(&ctx, &vendor, &mut channel, rest).await;
        finish(&channel, Bytes::new(), status).await;
        return;
    }
    if let Some(rest) = command
        .as_deref()
        .map(str::trim_start)
        .and_then(|c| c.strip_prefix("request"))
        .filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    {
        let status = super::request::run(&ctx, &vendor, &mut channel, rest).await;
        finish(&channel, Bytes::new(), status).await;
        return;
    }
    let (text, status) = match command.as_deref().map(str::trim) {
        None | Some("" | "help" | "whoami" | "status") => match screen(&ctx, &vendor).await {
            Ok(text) => (text, 0),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the home screen");
                ("chaperone: the bastion cannot list your access right now; try again in a minute\r\n".to_owned(), 1)
            }
        },
        Some(other) => (
            format!(
                "chaperone: unknown command {:?}; run `{}` to see what you can do\r\n",
                crate::model::truncate_for_display(other, 60),
                ctx.shared.connect_command(ctx.vendor(), None, false)
            ),
            2,
        ),
    };
    finish(&channel, Bytes::from(text), status).await;
}

/// How long the last words to a vendor (and each status line) may wait for a client that is not reading.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes `data` (stdout if the status is 0, else stderr), the exit status, EOF and close, within
/// [`WRITE_TIMEOUT`]: a client that stops reading does not keep the task.
async fn finish(channel: &Channel<Msg>, data: Bytes, status: u32) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        if !data.is_empty() {
            let _ = if status == 0 {
                channel.data_bytes(data).await
            } else {
                channel.extended_data_bytes(1, data).await
            };
        }
        let _ = channel.exit_status(status).await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
    })
    .await;
}

async fn screen(ctx: &Context, vendor: &Vendor) -> Result<String, crate::store::StoreError> {
    let app = &ctx.shared.app;
    let now = app.clock.now();
    let grants = app.store.open_grants_of(vendor.id, now).await?;
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(
        out,
        "chaperone: signed in as {} ({})\r",
        vendor.name, vendor.org
    );
    let _ = writeln!(out, "\r");
    if grants.is_empty() {
        let _ = writeln!(out, "You have no active grants.\r");
    } else {
        let _ = writeln!(out, "Your grants:\r");
        for g in &grants {
            let state = if g.starts_at > now {
                format!("starts {}", format_time(g.starts_at))
            } else {
                let left =
                    std::time::Duration::from_secs(u64::try_from(g.ends_at - now).unwrap_or(0));
                format!(
                    "until {} ({} left)",
                    format_time(g.ends_at),
                    format_duration(left)
                )
            };
            let _ = writeln!(
                out,
                "  #{:<4} {:<16} {:<20} {}\r",
                g.id,
                g.asset,
                g.services.join(","),
                state
            );
        }
        let _ = writeln!(out, "\r");
        let _ = writeln!(out, "Connect:\r");
        for g in grants.iter().filter(|g| g.starts_at <= now) {
            let asset = app.store.asset(&g.asset).await?;
            for s in asset
                .iter()
                .flat_map(|a| a.services.iter())
                .filter(|s| g.services.contains(&s.name))
            {
                match s.kind {
                    crate::model::ServiceKind::Ssh => {
                        let _ = writeln!(
                            out,
                            "  {}        # a shell on {}\r",
                            ctx.shared
                                .connect_command(&vendor.name, Some(&g.asset), true),
                            g.asset
                        );
                    }
                    crate::model::ServiceKind::Tcp => {
                        let _ = writeln!(
                            out,
                            "  {}   # {} tunnel\r",
                            ctx.shared.tunnel_command(&vendor.name, &g.asset, s.port),
                            s.name
                        );
                    }
                }
            }
        }
    }
    let pending = app
        .store
        .requests(
            Some(crate::model::RequestStatus::Pending),
            Some(&vendor.name),
            20,
        )
        .await?;
    if !pending.is_empty() {
        let _ = writeln!(out, "\r");
        let _ = writeln!(out, "Your pending requests:\r");
        for r in &pending {
            let _ = writeln!(
                out,
                "  #{:<4} {:<16} {:<20} {} asked, filed {}\r",
                r.id,
                r.asset,
                r.services.join(","),
                format_duration(std::time::Duration::from_secs(
                    r.duration_secs.unsigned_abs()
                )),
                format_time(r.created_at)
            );
        }
    }
    let _ = writeln!(out, "\r");
    let _ = writeln!(
        out,
        "Need access? Request it (and wait for an approver) with:\r"
    );
    let _ = writeln!(
        out,
        "  {} ASSET SERVICE[,SERVICE] --for 2h --reason \"ticket and what you will do\"\r",
        ctx.shared.request_hint(&vendor.name)
    );
    if crate::identity::vendor_passkeys::offered(app) {
        let _ = writeln!(out, "\r");
        let _ = writeln!(
            out,
            "Sign in with a passkey instead of a code (press Enter at the code prompt) once you add one:\r"
        );
        let _ = writeln!(
            out,
            "  {} passkey add\r",
            ctx.shared.connect_command(&vendor.name, None, false)
        );
    }
    Ok(out)
}
