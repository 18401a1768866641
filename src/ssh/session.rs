//! A vendor's session on a device (`VENDOR+ASSET`): policy check, device login, recording, bridge.
//!
//! Entry point: [`run`], spawned per session channel. The order is the safety argument: the grant is
//! checked, the device is dialled and its host key checked, and only then is the vendor's channel
//! accepted; the recording is created (`Starter::start`) before the first shell/exec/sftp request reaches
//! the device; the session row, the recording's digest and every refusal land in the audit chain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chaperone_recorder::{CastHeader, ExecHeader};
use russh::server::{self, ChannelOpenHandle, Msg};
use russh::{Channel, Disconnect};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::bridge::{self, BridgeCtx, End, PtyInfo};
use crate::audit::AuditEvent;
use crate::model::Vendor;
use crate::policy::expiry::{Control, Registration};
use crate::policy::{self, Grant, PolicyError};
use crate::recording::{RecordSender, Recording};
use crate::store::NewSession;
use crate::target::{self, TargetError};

/// What a session task needs from its connection.
#[derive(Debug)]
pub struct Context {
    pub shared: Arc<Shared>,
    pub vendor: Vendor,
    pub peer: SocketAddr,
    pub server: server::Handle,
    /// Cancelled when the connection ends or the server shuts down.
    pub stop: CancellationToken,
    /// The key the vendor logged in with (ProxyJump's inner login must use the same).
    pub key_fingerprint: Option<String>,
}

impl Context {
    /// Audits an event by this vendor; a failure to audit is logged (the caller is already refusing).
    pub async fn audit(&self, action: &'static str, subject: String, detail: serde_json::Value) {
        let app = &self.shared.app;
        let now = app.clock.now();
        let result = async {
            let mut tx = app.store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    format!("vendor:{}", self.vendor.name),
                    action,
                    subject,
                    detail,
                ),
                now,
            )
            .await?;
            tx.commit(action).await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, action, "cannot write an audit event");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Shell,
    Exec,
    Sftp,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Shell => "shell",
            SessionKind::Exec => "exec",
            SessionKind::Sftp => "sftp",
        }
    }
}

pub async fn run(ctx: Context, asset: String, channel: Channel<Msg>, reply: ChannelOpenHandle) {
    let app = ctx.shared.app.clone();
    let now = app.clock.now();
    let grant = match policy::authorize_ssh(&app.store, now, &ctx.vendor, &asset).await {
        Ok(g) => g,
        Err(PolicyError::Denied(denial)) => {
            ctx.audit(
                "session.refused",
                format!("asset:{asset}"),
                json!({"peer": ctx.peer.to_string(), "reason": denial.audit_reason()}),
            )
            .await;
            refuse(
                channel,
                reply,
                &denial.vendor_message(&ctx.shared.request_hint(&ctx.vendor.name)),
            )
            .await;
            return;
        }
        Err(PolicyError::Store(e)) => {
            tracing::error!(error = %e, "policy check failed");
            refuse(
                channel,
                reply,
                "the bastion cannot check your access right now; try again in a minute",
            )
            .await;
            return;
        }
    };
    let device = match target::connect(
        &grant,
        &app.store,
        &app.secrets,
        ctx.shared.device_config.clone(),
    )
    .await
    {
        Ok(d) => d,
        Err(e) => {
            let action = match e {
                TargetError::HostKeyMismatch { .. } => "target.hostkey.mismatch",
                _ => "session.refused",
            };
            tracing::warn!(asset = %asset, error = %e, "device connection refused");
            ctx.audit(
                action,
                format!("asset:{asset}"),
                json!({"peer": ctx.peer.to_string(), "grant": grant.id(), "reason": e.to_string()}),
            )
            .await;
            refuse(channel, reply, &e.vendor_message(&asset)).await;
            return;
        }
    };
    let device_channel = match device.channel_open_session().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(asset = %asset, error = %e, "device refused a session channel");
            refuse(channel, reply, &format!("{asset} refused the session")).await;
            let _ = device.disconnect(Disconnect::ByApplication, "", "en").await;
            return;
        }
    };
    reply.accept().await;
    let record_input = app.config.recording.record_input;
    let starter = Starter {
        ctx: Arc::new(ctx),
        grant,
    };
    let server = starter.ctx.server.clone();
    let stop = starter.ctx.stop.clone();
    bridge::run(
        channel,
        device_channel,
        BridgeCtx {
            server,
            stop,
            starter,
            record_input,
        },
    )
    .await;
    let _ = device.disconnect(Disconnect::ByApplication, "", "en").await;
}

/// Refuses with one line the OpenSSH client prints: accept, stderr line, exit status 1, close.
pub async fn refuse(channel: Channel<Msg>, reply: ChannelOpenHandle, message: &str) {
    reply.accept().await;
    let _ = channel
        .extended_data_bytes(1, Bytes::from(format!("chaperone: {message}\r\n")))
        .await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// How a session is recorded; `as_str` is the `recordings.format` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingFormat {
    /// Shells and exec with a pty: asciicast v2.
    Asciicast,
    /// Exec without a pty: stdout and stderr byte for byte (`chaperone_recorder::exec`).
    ExecStream,
    /// sftp and scp: the transfer log.
    TransferLog,
}

impl RecordingFormat {
    pub const ASCIICAST: &str = "asciicast-v2";
    pub const EXEC_STREAM: &str = "exec-stream-v1";
    pub const TRANSFER_LOG: &str = "transfer-log";

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingFormat::Asciicast => Self::ASCIICAST,
            RecordingFormat::ExecStream => Self::EXEC_STREAM,
            RecordingFormat::TransferLog => Self::TRANSFER_LOG,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            RecordingFormat::Asciicast => "cast",
            RecordingFormat::ExecStream => "exec",
            RecordingFormat::TransferLog => "sftp.jsonl",
        }
    }
}

/// Starts the session record and its recording when the first request arrives.
#[derive(Debug)]
pub struct Starter {
    ctx: Arc<Context>,
    grant: Grant,
}

/// A started session: its recording and registration with the expiry watcher.
#[derive(Debug)]
pub struct Started {
    ctx: Arc<Context>,
    pub id: String,
    grant_id: i64,
    recording: Recording,
    recording_id: i64,
    pub recorder: RecordSender,
    controls: Option<mpsc::UnboundedReceiver<Control>>,
    _registration: Registration,
}

impl Starter {
    /// Creates the recording (refusing the session if it cannot), the session row and the audit event.
    pub async fn start(
        &self,
        kind: SessionKind,
        detail: &str,
        pty: Option<&PtyInfo>,
    ) -> Result<Started, String> {
        let ctx = &self.ctx;
        let app = &ctx.shared.app;
        let grant = &self.grant;
        let asset = grant.asset();
        let now = app.clock.now();
        let id = crate::secrets::random_hex(8);
        let detail: String = detail.chars().take(4096).collect();
        // Shells and exec with a pty are what a terminal showed: asciicast, for players. An exec without
        // a pty is a program's byte streams, often not text (`tar c`, `cat image.dcm`): recorded 1:1, with
        // the cast derived on export (`session export`).
        let format = match (kind, pty) {
            (SessionKind::Sftp, _) => RecordingFormat::TransferLog,
            (SessionKind::Exec, None) => RecordingFormat::ExecStream,
            _ => RecordingFormat::Asciicast,
        };
        let path = app
            .config
            .recording
            .dir
            .join(format!("{id}.{}", format.extension()));
        let title = format!(
            "chaperone session {id}: {}@{}",
            grant.vendor().name,
            asset.name
        );
        let mut env = BTreeMap::new();
        if let Some(p) = pty {
            env.insert("TERM".to_owned(), p.term.chars().take(64).collect());
        }
        let command = (kind == SessionKind::Exec).then(|| detail.clone());
        let record_input = app.config.recording.record_input;
        let recording = match format {
            RecordingFormat::TransferLog => Recording::transfers(&path),
            RecordingFormat::ExecStream => Recording::exec(
                &path,
                &ExecHeader {
                    timestamp: now,
                    title: Some(title),
                    command,
                    env,
                },
                record_input,
            ),
            RecordingFormat::Asciicast => Recording::cast(
                &path,
                CastHeader {
                    width: pty.map_or(80, |p| p.cols.max(1)),
                    height: pty.map_or(24, |p| p.rows.max(1)),
                    timestamp: now,
                    title: Some(title),
                    command,
                    env,
                },
                record_input,
            ),
        };
        let format = format.as_str();
        let recording = match recording {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot create the recording; refusing the session");
                ctx.audit(
                    "session.refused",
                    format!("asset:{}", asset.name),
                    json!({"peer": ctx.peer.to_string(), "grant": grant.id(), "reason": format!("cannot create recording: {e}")}),
                )
                .await;
                return Err("the session cannot be recorded, so it was refused (no recording, no session); the bastion's staff can see why".into());
            }
        };
        let path_text = path.display().to_string();
        let db = async {
            let mut tx = app.store.begin().await?;
            tx.insert_session(
                &NewSession {
                    id: &id,
                    vendor_id: grant.vendor().id,
                    asset_id: asset.id,
                    grant_id: grant.id(),
                    kind: kind.as_str(),
                    service: &grant.service().name,
                    client_addr: &ctx.peer.to_string(),
                    detail: &detail,
                    node: &app.node,
                },
                now,
            )
            .await?;
            let recording_id = tx.insert_recording(&id, format, &path_text, now).await?;
            tx.audit(
                AuditEvent::new(
                    format!("vendor:{}", grant.vendor().name),
                    "session.start",
                    format!("session:{id}"),
                    json!({"asset": asset.name, "service": grant.service().name, "grant": grant.id(), "kind": kind.as_str(), "detail": detail, "peer": ctx.peer.to_string(), "recording": path_text}),
                ),
                now,
            )
            .await?;
            tx.commit("session.start").await?;
            Ok::<_, crate::store::StoreError>(recording_id)
        }
        .await;
        let recording_id = match db {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the session start; refusing");
                let _ = recording.finish().await;
                return Err(
                    "the bastion cannot record this session right now, so it was refused".into(),
                );
            }
        };
        let (registration, controls) =
            ctx.shared
                .live
                .register(&id, grant.id(), &asset.name, grant.ends_at());
        tracing::info!(session = %id, vendor = %grant.vendor().name, asset = %asset.name, kind = kind.as_str(), "session started");
        Ok(Started {
            ctx: ctx.clone(),
            recorder: recording.sender(),
            id,
            grant_id: grant.id(),
            recording,
            recording_id,
            controls: Some(controls),
            _registration: registration,
        })
    }
}

impl Started {
    /// The watcher's controls for this session (taken once, by the device→vendor direction; a second
    /// call gets a receiver that never yields).
    pub fn take_controls(&mut self) -> mpsc::UnboundedReceiver<Control> {
        self.controls
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    /// Closes the recording, stores its digest and the session's end, and audits both.
    pub async fn end(self, end: &End, bytes_up: u64, bytes_down: u64) {
        let app = &self.ctx.shared.app;
        // Every sender must be gone for the recorder to see the end of its queue.
        drop(self.recorder);
        let finished = self.recording.finish().await;
        let now = app.clock.now();
        let reason = match (&finished, end) {
            (Err(e), _) => format!("recording failed: {}", e.0),
            (Ok(_), end) => end.describe(),
        };
        let result = async {
            let mut tx = app.store.begin().await?;
            tx.end_session(&self.id, &reason, i64::try_from(bytes_up).unwrap_or(i64::MAX), i64::try_from(bytes_down).unwrap_or(i64::MAX), now)
                .await?;
            let digest = match &finished {
                Ok(f) => {
                    tx.close_recording(self.recording_id, &f.sha256_hex, i64::try_from(f.bytes).unwrap_or(i64::MAX), now)
                        .await?;
                    Some(f.sha256_hex.clone())
                }
                Err(_) => None,
            };
            tx.audit(
                AuditEvent::new(
                    format!("vendor:{}", self.ctx.vendor.name),
                    "session.end",
                    format!("session:{}", self.id),
                    json!({"grant": self.grant_id, "reason": reason, "bytes_up": bytes_up, "bytes_down": bytes_down, "recording_sha256": digest}),
                ),
                now,
            )
            .await?;
            tx.commit("session.end").await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(session = %self.id, reason = %reason, bytes_up, bytes_down, "session ended")
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "cannot record the session end")
            }
        }
    }
}
