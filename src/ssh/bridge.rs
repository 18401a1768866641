//! The relay between a vendor's session channel and the device's, for a started session: message by
//! message, one task per direction, recording first, the byte budget second, forwarding last.
//!
//! Entry point: [`run`], given a [`LiveSession`] (so the recording and the session row exist before the
//! first byte is relayed) and the two channels; it returns how the session ended, for `LiveSession::end`.
//! A recording error, a budget cut, a `Control::Close` from the watcher, or either side closing ends both
//! directions; the bastion's reason is told to the vendor on stderr, with exit status 255.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use russh::{Channel, ChannelMsg, client, server};
use tokio_util::sync::CancellationToken;

use crate::live::budget::Direction;
use crate::live::{Control, End, LiveSession, Meter, SessionKind};
use crate::recording::{Record, RecordSender};

/// What the relay moves between.
#[derive(Debug)]
pub struct BridgeIo {
    pub vendor: Channel<server::Msg>,
    pub device: Channel<client::Msg>,
    pub server: server::Handle,
    /// Data, eof and signals the vendor sent while the session was starting, in order.
    pub early: Vec<ChannelMsg>,
    pub record_input: bool,
    /// Cancelled when the vendor's connection ends.
    pub stop: CancellationToken,
}

/// How the first direction to stop ended the session (first reason wins).
struct Ending {
    done: CancellationToken,
    end: Mutex<Option<End>>,
}

impl Ending {
    fn finish(&self, end: End) {
        if let Ok(mut e) = self.end.lock()
            && e.is_none()
        {
            *e = Some(end);
        }
        self.done.cancel();
    }

    fn get(&self) -> Option<End> {
        self.end.lock().ok().and_then(|e| e.clone())
    }
}

fn u32_to_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// What passes vendor → device: records first, counts against the budget, then forwards.
struct Up {
    recorder: Option<RecordSender>,
    meter: Meter,
    kind: SessionKind,
    record_input: bool,
}

impl Up {
    /// Handles one vendor message; `Err` ends the session. `eof_sent` records an EOF passed on (a peer
    /// may treat a second one as a protocol error).
    async fn pass(
        &self,
        msg: ChannelMsg,
        to: &russh::ChannelWriteHalf<client::Msg>,
        eof_sent: &mut bool,
    ) -> Result<(), End> {
        let lost = |e: russh::Error| End::Lost(format!("device: {e}"));
        match msg {
            ChannelMsg::Data { data } => {
                let record = match self.kind {
                    SessionKind::Sftp => Some(Record::Sftp {
                        upload: true,
                        data: data.clone(),
                    }),
                    _ if self.record_input => Some(Record::Input(data.clone())),
                    _ => None,
                };
                if let (Some(rec), Some(record)) = (&self.recorder, record) {
                    rec.send(record)
                        .await
                        .map_err(|e| End::RecordingFailed(e.0))?;
                }
                if !self.meter.pass(Direction::Up, data.len()) {
                    return Err(self.meter.cut_end());
                }
                to.data_bytes(data).await.map_err(lost)
            }
            ChannelMsg::ExtendedData { data, ext } => {
                if !self.meter.pass(Direction::Up, data.len()) {
                    return Err(self.meter.cut_end());
                }
                to.extended_data_bytes(ext, data).await.map_err(lost)
            }
            ChannelMsg::Eof if !*eof_sent => {
                *eof_sent = true;
                to.eof().await.map_err(lost)
            }
            ChannelMsg::Close => Err(End::VendorClosed),
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some(rec) = &self.recorder {
                    rec.send(Record::Resize {
                        cols: u32_to_u16(col_width),
                        rows: u32_to_u16(row_height),
                    })
                    .await
                    .map_err(|e| End::RecordingFailed(e.0))?;
                }
                to.window_change(col_width, row_height, pix_width, pix_height)
                    .await
                    .map_err(lost)
            }
            ChannelMsg::Signal { signal } => to.signal(signal).await.map_err(lost),
            // A second start request, pty or env after the start: refused by the handler, nothing to
            // forward. x11 and agent requests were refused too.
            _ => Ok(()),
        }
    }
}

/// Relays a started session until it ends; returns how (see the module doc).
pub async fn run(live: &mut LiveSession, io: BridgeIo) -> End {
    let BridgeIo {
        vendor,
        device,
        server,
        early,
        record_input,
        stop,
    } = io;
    let vendor_id = vendor.id();
    let (mut v_rx, v_tx) = vendor.split();
    let (mut d_rx, d_tx) = device.split();
    let ending = Arc::new(Ending {
        done: stop.child_token(),
        end: Mutex::new(None),
    });
    let kind = live.kind();
    let meter = live.meter();
    let recorder = live.recorder();
    let mut controls = live.take_controls();
    let up_side = Up {
        recorder: recorder.clone(),
        meter: meter.clone(),
        kind,
        record_input,
    };

    // vendor -> device
    let up = {
        let ending = ending.clone();
        async move {
            let mut eof_sent = false;
            for msg in early {
                if let Err(end) = up_side.pass(msg, &d_tx, &mut eof_sent).await {
                    ending.finish(end);
                    break;
                }
            }
            while !ending.done.is_cancelled() {
                let msg = tokio::select! {
                    () = ending.done.cancelled() => break,
                    m = v_rx.wait() => m,
                };
                let Some(msg) = msg else {
                    ending.finish(End::VendorClosed);
                    break;
                };
                if let Err(end) = up_side.pass(msg, &d_tx, &mut eof_sent).await {
                    ending.finish(end);
                    break;
                }
            }
            // Whatever runs on the device is hung up when the bastion ends the session.
            if matches!(
                ending.get(),
                Some(End::Closed(_) | End::RecordingFailed(_) | End::BudgetCut(_))
            ) {
                let _ = d_tx.signal(russh::Sig::HUP).await;
            }
            if !eof_sent {
                let _ = d_tx.eof().await;
            }
            let _ = d_tx.close().await;
        }
    };

    // device -> vendor
    let down = {
        let ending = ending.clone();
        let meter = meter.clone();
        async move {
            let mut controls_open = true;
            let mut eof_sent = false;
            loop {
                let msg = tokio::select! {
                    () = ending.done.cancelled() => break,
                    control = controls.recv(), if controls_open => {
                        match control {
                            Some(Control::Notice(text)) => {
                                if let Some(rec) = &recorder
                                    && let Err(e) = rec.send(Record::Marker(text.clone())).await
                                {
                                    ending.finish(End::RecordingFailed(e.0));
                                    break;
                                }
                                tell(&v_tx, &text).await;
                            }
                            Some(Control::Close(close)) => {
                                if let Some(rec) = &recorder {
                                    let _ = rec.send(Record::Marker(close.text.clone())).await;
                                }
                                ending.finish(End::Closed(close));
                                break;
                            }
                            None => controls_open = false,
                        }
                        continue;
                    }
                    m = d_rx.wait() => m,
                };
                let Some(msg) = msg else {
                    ending.finish(End::DeviceClosed);
                    break;
                };
                let result = match msg {
                    ChannelMsg::Data { data } => {
                        if let Some(rec) = &recorder
                            && let Err(e) = rec.send(output_record(kind, &data)).await
                        {
                            ending.finish(End::RecordingFailed(e.0));
                            break;
                        }
                        if !meter.pass(Direction::Down, data.len()) {
                            ending.finish(meter.cut_end());
                            break;
                        }
                        v_tx.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        if let Some(rec) = &recorder
                            && let Err(e) = rec.send(Record::Stderr(data.clone())).await
                        {
                            ending.finish(End::RecordingFailed(e.0));
                            break;
                        }
                        if !meter.pass(Direction::Down, data.len()) {
                            ending.finish(meter.cut_end());
                            break;
                        }
                        v_tx.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof if !eof_sent => {
                        eof_sent = true;
                        v_tx.eof().await
                    }
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
                        ending.finish(End::DeviceClosed);
                        break;
                    }
                    ChannelMsg::Close => {
                        ending.finish(End::DeviceClosed);
                        break;
                    }
                    _ => Ok(()),
                };
                if result.is_err() {
                    ending.finish(End::VendorClosed);
                    break;
                }
            }
            if let Some(notice) = ending.get().and_then(|e| e.vendor_notice())
                && !eof_sent
            {
                tell(&v_tx, &notice).await;
                let _ = v_tx.exit_status(255).await;
            }
            // One EOF per channel: asyncssh (rightly) disconnects on a second one.
            if !eof_sent {
                let _ = v_tx.eof().await;
            }
            let _ = v_tx.close().await;
        }
    };

    tokio::join!(up, down);
    match ending.get() {
        Some(end) => end,
        // The connection went (its stop token) without either side closing the channel.
        None => End::Lost("the vendor's connection ended".into()),
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
