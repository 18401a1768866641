//! A vendor's session on a device (`VENDOR+ASSET`, and ProxyJump's inner sessions): one channel, from
//! its open to the session's end.
//!
//! Entry point: [`run`], spawned per session channel. The order is the safety argument:
//! 1. the channel is accepted with nothing behind it: no grant check yet, no device connection (an idle
//!    channel holds no logged-in device connection and can be kept open for nothing);
//! 2. pty, env and window sizes are kept until the first shell, exec or sftp request, which is the
//!    session's start (later ones were refused by the handler);
//! 3. at that moment policy re-checks the vendor (enabled, not locked, key still theirs) and the grant,
//!    and the session is registered for expiry, revocation and disable (`live::PendingSession`);
//! 4. the device is dialled (host key pinned, credential injected) while a close from the watcher, or the
//!    vendor's channel closing, still stops it;
//! 5. the recording and the session row are created (`PendingSession::start`), and only then does the
//!    device see the terminal, the environment and the start request;
//! 6. `bridge::run` relays, recording first, until one end; `LiveSession::end` writes it.

use std::time::Duration;

use bytes::Bytes;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, Disconnect, Pty};

use super::bridge::{self, BridgeIo};
use super::context::Context;
use crate::live::{PendingSession, PtyInfo, SessionKind};
use crate::policy::{self, PolicyError};
use crate::target::{self, TargetError};

/// Bytes a vendor may send before the session has started (while the device is dialled); past this the
/// channel's task stops reading until the device is ready.
const EARLY_INPUT: usize = 1024 * 1024;

/// Environment variables passed to the device (TERM travels inside pty-req).
pub fn env_allowed(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// What a vendor asked for on a channel before its session started.
#[derive(Debug, Default)]
pub struct Setup {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// Data, eof and signals the vendor sent while the session was starting, in order.
    early: Vec<ChannelMsg>,
    early_bytes: usize,
}

#[derive(Debug, Clone)]
struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(Pty, u32)>,
}

/// The request that starts a session.
#[derive(Debug, Clone)]
enum Start {
    Shell,
    Exec(Bytes),
    Sftp,
}

impl Start {
    fn kind(&self) -> SessionKind {
        match self {
            Start::Shell => SessionKind::Shell,
            Start::Exec(_) => SessionKind::Exec,
            Start::Sftp => SessionKind::Sftp,
        }
    }

    /// What the session row and audit event say the vendor asked for.
    fn detail(&self) -> String {
        match self {
            Start::Shell => String::new(),
            Start::Exec(command) => String::from_utf8_lossy(command).into_owned(),
            Start::Sftp => "sftp".into(),
        }
    }
}

impl Setup {
    /// Takes one message sent before the start; returns the start request if it is one.
    fn take(&mut self, msg: ChannelMsg) -> Option<Start> {
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                self.pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                });
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(&variable_name) && self.env.len() < 64 => {
                self.env.push((variable_name, variable_value));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some(p) = &mut self.pty {
                    (p.cols, p.rows, p.pix_width, p.pix_height) =
                        (col_width, row_height, pix_width, pix_height);
                }
            }
            ChannelMsg::RequestShell { .. } => return Some(Start::Shell),
            ChannelMsg::Exec { command, .. } => return Some(Start::Exec(Bytes::from(command))),
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                return Some(Start::Sftp);
            }
            ChannelMsg::Data { ref data } => {
                self.early_bytes += data.len();
                self.early.push(msg);
            }
            ChannelMsg::ExtendedData { ref data, .. } => {
                self.early_bytes += data.len();
                self.early.push(msg);
            }
            ChannelMsg::Eof | ChannelMsg::Signal { .. } => self.early.push(msg),
            // x11, agent, other subsystems: refused by the handler.
            _ => {}
        }
        None
    }

    /// Takes a message sent after the start request, while the device is being dialled: input and
    /// resizes are kept; a second start, pty or env was refused by the handler and is dropped.
    fn take_after_start(&mut self, msg: ChannelMsg) {
        match msg {
            ChannelMsg::Data { .. }
            | ChannelMsg::ExtendedData { .. }
            | ChannelMsg::Eof
            | ChannelMsg::Signal { .. }
            | ChannelMsg::WindowChange { .. } => {
                let _ = self.take(msg);
            }
            _ => {}
        }
    }

    fn pty_info(&self) -> Option<PtyInfo> {
        self.pty.as_ref().map(|p| PtyInfo {
            term: p.term.clone(),
            cols: u16::try_from(p.cols).unwrap_or(u16::MAX),
            rows: u16::try_from(p.rows).unwrap_or(u16::MAX),
        })
    }
}

/// Serves one session channel toward `asset`; see the module doc.
pub async fn run(ctx: Context, asset: String, mut channel: Channel<Msg>, reply: ChannelOpenHandle) {
    reply.accept().await;
    let mut setup = Setup::default();
    let start = loop {
        let msg = tokio::select! {
            () = ctx.stop.cancelled() => return,
            m = channel.wait() => m,
        };
        match msg {
            None | Some(ChannelMsg::Close) => return,
            Some(msg) => {
                if let Some(start) = setup.take(msg) {
                    break start;
                }
                if setup.early_bytes > EARLY_INPUT {
                    refuse(
                        &channel,
                        "too much input before a shell, command or sftp was requested",
                    )
                    .await;
                    return;
                }
            }
        }
    };
    let app = &ctx.shared.app;
    let now = app.clock.now();
    let grant = match policy::authorize_ssh(&app.store, now, &ctx.principal, &asset).await {
        Ok(g) => g,
        Err(PolicyError::Denied(denial)) => {
            ctx.audit(
                "session.refused",
                format!("asset:{asset}"),
                serde_json::json!({"peer": ctx.peer.to_string(), "kind": start.kind().as_str(), "reason": denial.audit_reason()}),
            )
            .await;
            refuse(
                &channel,
                &denial.vendor_message(&ctx.shared.request_hint(ctx.vendor())),
            )
            .await;
            return;
        }
        Err(PolicyError::Store(e)) => {
            tracing::error!(error = %e, "policy check failed");
            refuse(
                &channel,
                "the bastion cannot check your access right now; try again in a minute",
            )
            .await;
            return;
        }
    };
    let mut pending = PendingSession::register(
        app,
        &ctx.shared.live,
        &ctx.shared.budgets,
        grant,
        start.kind(),
        ctx.origin(),
    );
    // Dial while listening: the watcher may close the session, the vendor may go, and the vendor's
    // messages must keep flowing (a full channel queue would stall the whole connection).
    let grant = pending.grant().clone();
    let dial = async {
        let device = target::connect(
            &grant,
            &app.store,
            &app.secrets,
            ctx.shared.device_config.clone(),
        )
        .await?;
        match device.channel_open_session().await {
            Ok(c) => Ok((device, c)),
            Err(e) => {
                let _ = device.disconnect(Disconnect::ByApplication, "", "en").await;
                Err(TargetError::Ssh(format!(
                    "the device refused a session channel: {e}"
                )))
            }
        }
    };
    tokio::pin!(dial);
    let dialled = loop {
        tokio::select! {
            d = &mut dial => break Some(d),
            close = pending.closed() => {
                pending.refuse("session.refused", &format!("closed before it started: {}", close.text)).await;
                refuse(&channel, &close.text).await;
                return;
            }
            m = channel.wait(), if setup.early_bytes <= EARLY_INPUT => match m {
                None | Some(ChannelMsg::Close) => break None,
                Some(msg) => setup.take_after_start(msg),
            },
            () = ctx.stop.cancelled() => break None,
        }
    };
    let Some(dialled) = dialled else {
        // The vendor went away while the device was being dialled: nothing started.
        return;
    };
    let (device, device_channel) = match dialled {
        Ok(pair) => pair,
        Err(e) => {
            let action = match e {
                TargetError::HostKeyMismatch { .. } => "target.hostkey.mismatch",
                _ => "session.refused",
            };
            tracing::warn!(asset = %asset, error = %e, "device connection refused");
            pending.refuse(action, &e.to_string()).await;
            refuse(&channel, &e.vendor_message(&asset)).await;
            return;
        }
    };
    let pty = setup.pty_info();
    let mut live = match pending.start(&start.detail(), pty.as_ref()).await {
        Ok(live) => live,
        Err(e) => {
            refuse(&channel, e.vendor_message()).await;
            let _ = device.disconnect(Disconnect::ByApplication, "", "en").await;
            return;
        }
    };
    // The recording exists: now the device sees what the vendor asked for.
    let sent = async {
        if let Some(p) = &setup.pty {
            device_channel
                .request_pty(
                    false,
                    &p.term,
                    p.cols,
                    p.rows,
                    p.pix_width,
                    p.pix_height,
                    &p.modes,
                )
                .await?;
        }
        for (name, value) in &setup.env {
            device_channel
                .set_env(false, name.clone(), value.clone())
                .await?;
        }
        match &start {
            Start::Shell => device_channel.request_shell(true).await,
            Start::Exec(command) => device_channel.exec(true, command.to_vec()).await,
            Start::Sftp => device_channel.request_subsystem(true, "sftp").await,
        }
    }
    .await;
    let end = match sent {
        Err(e) => {
            tracing::debug!(error = %e, "the device connection failed at the start");
            tell(&channel, "the connection to the device failed").await;
            crate::live::End::Lost(format!("device: {e}"))
        }
        Ok(()) => {
            let record_input = app.config.recording.record_input;
            bridge::run(
                &mut live,
                BridgeIo {
                    vendor: channel,
                    device: device_channel,
                    server: ctx.server.clone(),
                    early: std::mem::take(&mut setup.early),
                    record_input,
                    stop: ctx.stop.clone(),
                },
            )
            .await
        }
    };
    live.end(end).await;
    // Whatever runs on the device is left to its sshd: the channel is closed, the connection goes.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        device.disconnect(Disconnect::ByApplication, "", "en"),
    )
    .await;
}

/// Tells the vendor why on stderr, with exit status 1, and closes the channel (already accepted).
async fn refuse(channel: &Channel<Msg>, message: &str) {
    tell(channel, message).await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// One line to the vendor on stderr, so it never mixes into a program's stdout (scp, pipes).
async fn tell(channel: &Channel<Msg>, text: &str) {
    let _ = channel
        .extended_data_bytes(1, Bytes::from(format!("chaperone: {text}\r\n")))
        .await;
}
