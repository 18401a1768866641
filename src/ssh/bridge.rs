//! The relay between a vendor's session channel and the device's: message by message, one task per
//! direction, recording first and forwarding second.
//!
//! Entry point: [`run`]. Nothing flows before the session is started: the first shell, exec or sftp
//! request creates the session row and its recording (`session::Starter`), and only then is the request
//! forwarded to the device, so no device output can precede its recording. A recording error, a
//! `Control::Close` from the expiry watcher, or either side closing ends both directions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use russh::{Channel, ChannelMsg, client, server};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::session::{SessionKind, Started, Starter};
use crate::policy::expiry::Control;
use crate::recording::{Record, RecordSender};

/// Environment variables passed to the device (TERM travels inside pty-req).
pub fn env_allowed(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// The terminal a vendor asked for.
#[derive(Debug, Clone)]
pub struct PtyInfo {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// What ended a bridged session (recorded as the session's end reason).
#[derive(Debug, Clone)]
pub enum End {
    VendorClosed,
    DeviceClosed,
    /// Ended by the bastion: grant ended or revoked, shutdown.
    Closed(String),
    /// The recording failed: the session was ended.
    RecordingFailed(String),
    /// The session never started (refused before any request reached the device).
    NotStarted(String),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::VendorClosed => "vendor closed the session".into(),
            End::DeviceClosed => "device closed the session".into(),
            End::Closed(r) => r.clone(),
            End::RecordingFailed(e) => format!("recording failed: {e}"),
            End::NotStarted(r) => format!("not started: {r}"),
        }
    }
}

#[derive(Debug)]
pub struct BridgeCtx {
    pub server: server::Handle,
    /// Cancelled when the vendor's connection ends or the server shuts down.
    pub stop: CancellationToken,
    pub starter: Starter,
    pub record_input: bool,
}

struct Shared {
    done: CancellationToken,
    end: Mutex<Option<End>>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Shared {
    /// Records why the session ends (first reason wins) and stops both directions.
    fn finish(&self, end: End) {
        if let Ok(mut e) = self.end.lock()
            && e.is_none()
        {
            *e = Some(end);
        }
        self.done.cancel();
    }
}

/// What the vendor→device task hands the device→vendor task once the session started.
struct Handover {
    recorder: RecordSender,
    controls: mpsc::UnboundedReceiver<Control>,
    kind: SessionKind,
}

fn u32_to_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Bridges until either side closes, the session is closed from outside, or recording fails.
pub async fn run(vendor: Channel<server::Msg>, device: Channel<client::Msg>, ctx: BridgeCtx) {
    let vendor_id = vendor.id();
    let (mut v_rx, v_tx) = vendor.split();
    let (mut d_rx, d_tx) = device.split();
    let shared = Arc::new(Shared {
        done: ctx.stop.child_token(),
        end: Mutex::new(None),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
    });
    let (handover_tx, handover_rx) = oneshot::channel::<Result<Handover, String>>();
    let starter = ctx.starter;
    let started: Arc<Mutex<Option<Started>>> = Arc::default();

    // vendor -> device
    let up = {
        let shared = shared.clone();
        let started = started.clone();
        let record_input = ctx.record_input;
        async move {
            let mut pty: Option<PtyInfo> = None;
            let mut handover_tx = Some(handover_tx);
            let mut recorder: Option<RecordSender> = None;
            let mut kind = SessionKind::Shell;
            loop {
                let msg = tokio::select! {
                    () = shared.done.cancelled() => break,
                    m = v_rx.wait() => m,
                };
                let Some(msg) = msg else {
                    shared.finish(End::VendorClosed);
                    break;
                };
                let request = match &msg {
                    ChannelMsg::RequestShell { .. } => Some((SessionKind::Shell, String::new())),
                    ChannelMsg::Exec { command, .. } => Some((
                        SessionKind::Exec,
                        String::from_utf8_lossy(command).into_owned(),
                    )),
                    ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                        Some((SessionKind::Sftp, "sftp".to_owned()))
                    }
                    _ => None,
                };
                if let Some((k, detail)) = request
                    && let Some(tx) = handover_tx.take()
                {
                    match starter.start(k, &detail, pty.as_ref()).await {
                        Ok(mut s) => {
                            recorder = Some(s.recorder.clone());
                            kind = k;
                            let controls = s.take_controls();
                            let _ = tx.send(Ok(Handover {
                                recorder: s.recorder.clone(),
                                controls,
                                kind: k,
                            }));
                            if let Ok(mut slot) = started.lock() {
                                *slot = Some(s);
                            }
                        }
                        Err(message) => {
                            let _ = tx.send(Err(message.clone()));
                            shared.finish(End::NotStarted(message));
                            break;
                        }
                    }
                }
                let result = match msg {
                    ChannelMsg::Data { data } => {
                        shared
                            .bytes_up
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        let record = match (&recorder, kind) {
                            (Some(_), SessionKind::Sftp) => Some(Record::Sftp {
                                upload: true,
                                data: data.clone(),
                            }),
                            (Some(_), _) if record_input => Some(Record::Input(data.clone())),
                            _ => None,
                        };
                        if let (Some(rec), Some(record)) = (&recorder, record)
                            && let Err(e) = rec.send(record).await
                        {
                            shared.finish(End::RecordingFailed(e.0));
                            break;
                        }
                        d_tx.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        shared
                            .bytes_up
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        d_tx.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof => d_tx.eof().await,
                    ChannelMsg::Close => {
                        shared.finish(End::VendorClosed);
                        break;
                    }
                    ChannelMsg::RequestPty {
                        term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        terminal_modes,
                        ..
                    } => {
                        pty = Some(PtyInfo {
                            term: term.clone(),
                            cols: u32_to_u16(col_width),
                            rows: u32_to_u16(row_height),
                        });
                        d_tx.request_pty(
                            false,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                    }
                    ChannelMsg::RequestShell { .. } => d_tx.request_shell(true).await,
                    ChannelMsg::Exec { command, .. } => d_tx.exec(true, command).await,
                    ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                        d_tx.request_subsystem(true, name).await
                    }
                    ChannelMsg::SetEnv {
                        variable_name,
                        variable_value,
                        ..
                    } if env_allowed(&variable_name) => {
                        d_tx.set_env(false, variable_name, variable_value).await
                    }
                    ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                    } => {
                        if let Some(rec) = &recorder
                            && let Err(e) = rec
                                .send(Record::Resize {
                                    cols: u32_to_u16(col_width),
                                    rows: u32_to_u16(row_height),
                                })
                                .await
                        {
                            shared.finish(End::RecordingFailed(e.0));
                            break;
                        }
                        d_tx.window_change(col_width, row_height, pix_width, pix_height)
                            .await
                    }
                    ChannelMsg::Signal { signal } => d_tx.signal(signal).await,
                    // x11, agent, other subsystems and env were refused by the handler: nothing to forward.
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "forwarding to the device failed");
                    shared.finish(End::DeviceClosed);
                    break;
                }
            }
            // Whatever runs on the device is hung up when the bastion ends the session.
            if matches!(
                shared.end.lock().ok().and_then(|e| e.clone()),
                Some(End::Closed(_) | End::RecordingFailed(_))
            ) {
                let _ = d_tx.signal(russh::Sig::HUP).await;
            }
            let _ = d_tx.eof().await;
            let _ = d_tx.close().await;
        }
    };

    // device -> vendor
    let down = {
        let shared = shared.clone();
        let server = ctx.server.clone();
        async move {
            // Biased: a refusal sent just before the up direction stopped must still reach the vendor.
            let handover = tokio::select! {
                biased;
                h = handover_rx => h.ok(),
                () = shared.done.cancelled() => None,
            };
            let Some(Ok(Handover {
                recorder,
                mut controls,
                kind,
            })) = handover
            else {
                if let Some(Err(message)) = handover {
                    tell(&v_tx, &message).await;
                    let _ = v_tx.exit_status(1).await;
                }
                let _ = v_tx.eof().await;
                let _ = v_tx.close().await;
                return;
            };
            let mut controls_open = true;
            loop {
                let msg = tokio::select! {
                    () = shared.done.cancelled() => break,
                    control = controls.recv(), if controls_open => {
                        match control {
                            Some(Control::Notice(text)) => {
                                if let Err(e) = recorder.send(Record::Marker(text.clone())).await {
                                    shared.finish(End::RecordingFailed(e.0));
                                    break;
                                }
                                tell(&v_tx, &text).await;
                            }
                            Some(Control::Close(reason)) => {
                                let _ = recorder.send(Record::Marker(reason.clone())).await;
                                shared.finish(End::Closed(reason));
                                break;
                            }
                            None => controls_open = false,
                        }
                        continue;
                    }
                    m = d_rx.wait() => m,
                };
                let Some(msg) = msg else {
                    shared.finish(End::DeviceClosed);
                    break;
                };
                let result = match msg {
                    ChannelMsg::Data { data } => {
                        shared
                            .bytes_down
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        if let Err(e) = recorder.send(output_record(kind, &data)).await {
                            shared.finish(End::RecordingFailed(e.0));
                            break;
                        }
                        v_tx.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        shared
                            .bytes_down
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        if kind != SessionKind::Sftp
                            && let Err(e) = recorder.send(Record::Stderr(data.clone())).await
                        {
                            shared.finish(End::RecordingFailed(e.0));
                            break;
                        }
                        v_tx.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof => v_tx.eof().await,
                    ChannelMsg::ExitStatus { exit_status } => v_tx.exit_status(exit_status).await,
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    } => server
                        .exit_signal_request(
                            vendor_id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await
                        .map_err(|()| russh::Error::SendError),
                    ChannelMsg::Failure => {
                        // The device refused shell/exec/subsystem (pty and env are sent without reply).
                        tell(&v_tx, "the device refused the request").await;
                        let _ = v_tx.exit_status(1).await;
                        shared.finish(End::DeviceClosed);
                        break;
                    }
                    ChannelMsg::Close => {
                        shared.finish(End::DeviceClosed);
                        break;
                    }
                    _ => Ok(()),
                };
                if result.is_err() {
                    shared.finish(End::VendorClosed);
                    break;
                }
            }
            let end = shared.end.lock().ok().and_then(|e| e.clone());
            match &end {
                Some(End::Closed(reason)) => {
                    tell(&v_tx, reason).await;
                    let _ = v_tx.exit_status(255).await;
                }
                Some(End::RecordingFailed(_)) => {
                    tell(&v_tx, "the session recording failed, so the session was ended (no recording, no session)").await;
                    let _ = v_tx.exit_status(255).await;
                }
                _ => {}
            }
            let _ = v_tx.eof().await;
            let _ = v_tx.close().await;
        }
    };

    tokio::join!(up, down);
    let end = shared
        .end
        .lock()
        .ok()
        .and_then(|e| e.clone())
        .unwrap_or(End::VendorClosed);
    let started = started.lock().ok().and_then(|mut s| s.take());
    if let Some(s) = started {
        s.end(
            &end,
            shared.bytes_up.load(Ordering::Relaxed),
            shared.bytes_down.load(Ordering::Relaxed),
        )
        .await;
    }
}

fn output_record(kind: SessionKind, data: &Bytes) -> Record {
    match kind {
        SessionKind::Sftp => Record::Sftp {
            upload: false,
            data: data.clone(),
        },
        _ => Record::Output(data.clone()),
    }
}

/// One line to the vendor on stderr, so it never mixes into a program's stdout (scp, pipes).
async fn tell<S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static>(
    tx: &russh::ChannelWriteHalf<S>,
    text: &str,
) {
    let _ = tx
        .extended_data_bytes(1, Bytes::from(format!("\r\nchaperone: {text}\r\n")))
        .await;
}
