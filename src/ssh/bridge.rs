//! The relay between a vendor's session channel and the device's, for a started session: message by
//! message, one task per direction, recording first, the byte budget second, forwarding last.
//!
//! Entry point: [`run`], given a [`LiveSession`] (so the recording and the session row exist before the
//! first byte is relayed) and the two channels; it returns how the session ended, for `LiveSession::end`.
//! Three futures run together: vendor → device, device → vendor, and the controls (the watcher's notices
//! and closes, and the recording halting on its own). The first to end the session wins, and every wait
//! on a peer (its window, the recorder's queue) is raced against that end: a client that stops reading,
//! or a device that stops taking input, cannot keep a revoked session alive. The bastion's reason is told
//! to the vendor on stderr, with exit status 255, within a short bound.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client, server};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::inbox::{Inbox, Outbox, Owed, Taken};
use crate::live::budget::Direction;
use crate::live::tap::Tap;
use crate::live::{Control, End, LiveSession, Meter, SftpWatch};
use crate::recording::{Record, RecordSender, RecordingFormat, Wake};

/// How long the goodbye to each side (the reason, exit status, EOF, close) may take once a session ended.
const FAREWELL: Duration = Duration::from_secs(2);

/// How long the device's EOF is held back for its exit status. sshd sends EOF when a program's output
/// ends and the exit status when it has reaped it, a moment later; a client that has its EOF and has
/// sent its own closes the channel, and after that the status has nowhere to go. Directly the two
/// arrive together; one hop further they need not, and an OpenSSH multiplexing client (scp, sftp over
/// ControlMaster) then exits 1 for want of a status. Sending the status first, then the EOF, keeps the
/// order a client can rely on; a device that sends no status gets its EOF through after this wait.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);

/// How long a vendor's close waits for the device to take more of what they sent before it (see `run`'s
/// vendor -> device half): a device that takes nothing for that long does not hold a closed channel open.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// How long a notice (the grant's end coming, idle time) may wait for the vendor's window: the
/// controls after it (a close for a revocation) are read only once it went or gave up.
const NOTICE_WAIT: Duration = Duration::from_secs(1);

/// What the relay moves between.
#[derive(Debug)]
pub struct BridgeIo {
    pub vendor: Channel<server::Msg>,
    pub device: Channel<client::Msg>,
    pub server: server::Handle,
    /// Data, eof and signals the vendor sent while the session was starting, in order, and the bytes of
    /// their data already consumed without being held (owed back to their window).
    pub early: (Inbox, u32),
    /// Cancelled when the vendor's connection ends.
    pub stop: CancellationToken,
}

/// How the session ended (first reason wins), and the token every wait is raced against.
struct Ending {
    done: CancellationToken,
    end: Mutex<Option<End>>,
}

impl Ending {
    /// Ends the session for `end`, unless it already has a reason. A `Lost` found once the session
    /// was already ending (a wait cut short by the vendor's hang-up) is a consequence, not the reason:
    /// the reason is then worked out when everything stopped (a close the vendor sent first counts).
    fn finish(&self, end: End) {
        if matches!(end, End::Lost(_)) && self.done.is_cancelled() {
            return;
        }
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

    /// `f`, unless the session ends first (`None`).
    async fn unless_done<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            () = self.done.cancelled() => None,
            out = f => Some(out),
        }
    }
}

/// Whether the messages already queued on `rx` include the channel's close (read without waiting; what
/// comes before it is dropped, the session having ended).
fn close_queued(rx: &mut ChannelReadHalf) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        match std::pin::pin!(rx.wait()).poll(&mut cx) {
            Poll::Ready(Some(ChannelMsg::Close)) => return true,
            Poll::Ready(Some(_)) => {}
            Poll::Ready(None) | Poll::Pending => return false,
        }
    }
}

fn u32_to_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// What passes on a chunk before it is forwarded: the recording (for sftp the observer's events), then
/// the budget.
struct Gate {
    recorder: Option<RecordSender>,
    meter: Meter,
    sftp: Option<SftpWatch>,
    /// The live view's tap: fed what was recorded, never waited on.
    tap: Option<Tap>,
}

impl Gate {
    /// Records and meters one chunk of `dir`'s data (`stderr`: extended data); `Err` ends the session and
    /// the chunk must not be forwarded. The recorder's wake-up is returned, to be given once the chunk is
    /// on its way (`Wake::after`).
    async fn pass(
        &self,
        ending: &Ending,
        dir: Direction,
        data: &Bytes,
        stderr: bool,
    ) -> Result<Wake, End> {
        let record = match (&self.sftp, dir, stderr) {
            (Some(sftp), _, false) => match sftp.feed(dir == Direction::Up, data) {
                Ok(events) if events.is_empty() => None,
                Ok(events) => Some(Record::Transfers(events)),
                Err(broken) => {
                    // What it saw is logged; the chunk is not forwarded.
                    if let Some(rec) = &self.recorder {
                        let _ = ending
                            .unless_done(rec.send(Record::Transfers(broken.events)))
                            .await;
                    }
                    return Err(End::RecordingFailed(broken.reason));
                }
            },
            (_, Direction::Down, true) => Some(Record::Stderr(data.clone())),
            (_, Direction::Down, false) => Some(Record::Output(data.clone())),
            // What the vendor sends is recorded when the recording says so (`records_input`: a
            // command's stdin always, a terminal's keystrokes if `recording.record_input`).
            (_, Direction::Up, _)
                if self
                    .recorder
                    .as_ref()
                    .is_some_and(RecordSender::records_input) =>
            {
                Some(Record::Input(data.clone()))
            }
            (_, Direction::Up, _) => None,
        };
        let mut wake = Wake::default();
        if let (Some(rec), Some(record)) = (&self.recorder, record) {
            match ending.unless_done(rec.send(record)).await {
                None => return Err(End::Lost("ended".into())),
                Some(Err(e)) => return Err(End::RecordingFailed(e.0)),
                Some(Ok(w)) => wake = w,
            }
        }
        // The vendor pressed Enter: the recorder marks the line the screen showed (no keystroke is
        // recorded unless `record_input`; the label is the echoed line, taken from the output).
        if dir == Direction::Up
            && let Some(rec) = &self.recorder
            && rec.format() == RecordingFormat::Asciicast
            && data.contains(&b'\r')
        {
            match ending.unless_done(rec.send(Record::Enter)).await {
                None => return Err(End::Lost("ended".into())),
                Some(Err(e)) => return Err(End::RecordingFailed(e.0)),
                Some(Ok(w)) => wake = wake.and(w),
            }
        }
        if let (Some(tap), Direction::Down) = (&self.tap, dir) {
            tap.output(data);
        }
        if !self.meter.pass(dir, data.len()) {
            return Err(self.meter.cut_end());
        }
        Ok(wake)
    }
}

/// Relays a started session until it ends; returns how (see the module doc).
pub async fn run(live: &mut LiveSession, io: BridgeIo) -> End {
    let BridgeIo {
        vendor,
        device,
        server,
        early,
        stop,
    } = io;
    let vendor_id = vendor.id();
    // The vendor's window is refilled as the device takes their data, not as it arrives, since the
    // channel reached `device::run` (see the vendor -> device half).
    let (mut v_rx, v_tx) = vendor.split();
    let (mut d_rx, d_tx) = device.split();
    let ending = Ending {
        done: stop.child_token(),
        end: Mutex::new(None),
    };
    let recorder = live.recorder();
    let mut controls = live.take_controls();
    let gate = Gate {
        recorder: recorder.clone(),
        meter: live.meter(),
        sftp: live.sftp(),
        tap: live.tap(),
    };
    let tap = live.tap();
    // Whether an EOF went to each side (one per channel: a second is a protocol error to some clients).
    let vendor_eof = AtomicBool::new(false);
    // The vendor closed the channel before the device took all they had sent (`CLOSE_DRAIN`).
    let stranded = AtomicBool::new(false);
    let device_eof = AtomicBool::new(false);

    // The watcher's controls, and the recording halting by itself.
    let control = async {
        loop {
            let control = tokio::select! {
                biased;
                () = ending.done.cancelled() => break,
                why = halted(recorder.as_ref()) => {
                    ending.finish(End::RecordingFailed(why));
                    break;
                }
                c = controls.recv() => c,
            };
            match control {
                Some(Control::Notice(text)) => {
                    if let Some(rec) = &recorder
                        && let Some(Err(e)) = ending
                            .unless_done(rec.send(Record::Notice(text.clone())))
                            .await
                    {
                        ending.finish(End::RecordingFailed(e.0));
                        break;
                    }
                    // Bounded: a client that stops reading (no window left) does not get it, and
                    // does not hold the watcher's next control (a revocation) behind it.
                    if !vendor_eof.load(Ordering::Acquire) {
                        ending
                            .unless_done(tokio::time::timeout(NOTICE_WAIT, tell(&v_tx, &text)))
                            .await;
                    }
                }
                Some(Control::Close(close)) => {
                    if let Some(rec) = &recorder {
                        let _ = tokio::time::timeout(
                            FAREWELL,
                            rec.send(Record::Notice(close.text.clone())),
                        )
                        .await;
                    }
                    ending.finish(End::Closed(close));
                    break;
                }
                // The registry keeps the sender while the session is registered: nothing more to hear.
                None => {
                    ending.done.cancelled().await;
                    break;
                }
            }
        }
    };

    // vendor -> device
    let up = async {
        let forward = async |msg: ChannelMsg| -> Result<(), End> {
            let lost = |e: russh::Error| End::Lost(format!("device: {e}"));
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    let wake = gate.pass(&ending, Direction::Up, &data, false).await?;
                    ending.unless_done(wake.after(d_tx.data_bytes(data))).await
                }
                ChannelMsg::Eof => {
                    if device_eof.swap(true, Ordering::AcqRel) {
                        return Ok(());
                    }
                    ending.unless_done(d_tx.eof()).await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => {
                    // The live view, the recording and the device see the same size (and no pixel
                    // size: numbers the vendor chooses reach the device only as the recording shows).
                    let (cols, rows) =
                        crate::live::recorded_size(u32_to_u16(col_width), u32_to_u16(row_height));
                    if let Some(tap) = &tap {
                        tap.resize(cols, rows);
                    }
                    if let Some(rec) = &recorder {
                        let resize = Record::Resize { cols, rows };
                        if let Some(Err(e)) = ending.unless_done(rec.send(resize)).await {
                            return Err(End::RecordingFailed(e.0));
                        }
                    }
                    ending
                        .unless_done(d_tx.window_change(cols.into(), rows.into(), 0, 0))
                        .await
                }
                // A signal by a name of the client's own is no signal: not passed on.
                ChannelMsg::Signal {
                    signal: russh::Sig::Custom(_),
                } => return Ok(()),
                // A file transfer's log has no place for a notice: no signal reaches its program.
                ChannelMsg::Signal { .. }
                    if recorder
                        .as_ref()
                        .is_some_and(|r| r.format() == RecordingFormat::TransferLog) =>
                {
                    return Ok(());
                }
                // A signal changes what runs on the device: recorded (as a notice) before it goes.
                ChannelMsg::Signal { signal } => {
                    if let Some(rec) = &recorder {
                        let text = format!("the vendor sent the command signal {signal:?}");
                        if let Some(Err(e)) =
                            ending.unless_done(rec.send(Record::Notice(text))).await
                        {
                            return Err(End::RecordingFailed(e.0));
                        }
                    }
                    ending.unless_done(d_tx.signal(signal)).await
                }
                // The inbox holds nothing else (extended data from a client has no meaning on a session
                // channel: neither recorded nor forwarded). A second start request, pty or env after
                // the start were refused by the handler; x11 and agent requests too.
                _ => return Ok(()),
            };
            match sent {
                None | Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(lost(e)),
            }
        };
        // Every message is taken as it comes (russh's queue for the channel never fills, so the
        // connection keeps being read and a close or hang-up is seen while the device takes nothing),
        // held in the inbox, and given to the device as it takes it; the vendor's window is refilled
        // only as data is given (russh patch 10), so what waits is bounded by one window.
        // (A mutex and an atomic only because the bridge's future moves between threads: the two
        // halves run in this one task, never at once.)
        let (early, early_dropped) = early;
        let inbox = Mutex::new(early);
        let inbox = || {
            inbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let held = Notify::new();
        // A close waiting for what came before it (only then is each forward's progress told).
        let closing = AtomicBool::new(false);
        let given = Notify::new();
        let giving = AtomicBool::new(false);
        // Given back to the vendor's window by a future of its own (`Owed::give_back`), in steps of
        // `inbox::CREDIT_STEP`: neither half waits on the connection's task.
        let owed = Owed::default();
        owed.add(early_dropped);
        let take = async {
            held.notify_one();
            loop {
                let msg = tokio::select! {
                    biased;
                    () = ending.done.cancelled() => return,
                    m = v_rx.wait() => m,
                };
                match msg {
                    Some(ChannelMsg::Close) => {
                        // What the vendor sent before closing still goes first, as long as the device
                        // keeps taking it: one that takes nothing for `CLOSE_DRAIN` is no reason to
                        // keep a closed channel open. What it did not take is said on the record, and
                        // the device is sent a hang-up, not only the end of its input.
                        closing.store(true, Ordering::Release);
                        let drained = async {
                            while giving.load(Ordering::Acquire) || !inbox().is_empty() {
                                if tokio::time::timeout(CLOSE_DRAIN, given.notified())
                                    .await
                                    .is_err()
                                {
                                    return false;
                                }
                            }
                            true
                        };
                        if ending.unless_done(drained).await == Some(false) {
                            stranded.store(true, Ordering::Release);
                            if let Some(rec) = &recorder {
                                let text = "the vendor closed the session before the device took all \
                                            of their input; the rest was not given";
                                let _ = ending
                                    .unless_done(tokio::time::timeout(
                                        FAREWELL,
                                        rec.send(Record::Notice(text.into())),
                                    ))
                                    .await;
                            }
                        }
                        ending.finish(End::VendorClosed);
                        return;
                    }
                    Some(msg) => match inbox().take(msg) {
                        Taken::Held => held.notify_one(),
                        Taken::Dropped(bytes) => owed.add(bytes),
                    },
                    None => {
                        ending.finish(End::VendorClosed);
                        return;
                    }
                }
            }
        };
        let give = async {
            loop {
                if ending.done.is_cancelled() {
                    return;
                }
                let next = inbox().next();
                let Some(msg) = next else {
                    given.notify_waiters();
                    tokio::select! {
                        biased;
                        () = ending.done.cancelled() => return,
                        () = held.notified() => continue,
                    }
                };
                let bytes = match &msg {
                    ChannelMsg::Data { data } => u32::try_from(data.len()).unwrap_or(u32::MAX),
                    _ => 0,
                };
                giving.store(true, Ordering::Release);
                let forwarded = forward(msg).await;
                giving.store(false, Ordering::Release);
                // Progress, for a close waiting on what came before it.
                if closing.load(Ordering::Acquire) {
                    given.notify_waiters();
                }
                if let Err(end) = forwarded {
                    ending.finish(end);
                    return;
                }
                owed.add(bytes);
            }
        };
        // Refused only once the connection is gone, which ends the session anyway; raced against the
        // end like every other wait (the connection's task may be stuck).
        let credit = ending.unless_done(owed.give_back(&v_tx));
        tokio::join!(take, give, credit);
    };

    // device -> vendor
    let down = async {
        // As the other way: every message from the device is taken as it comes into the outbox (so a
        // vendor's client that stops reading does not stop russh reading the device connection, which
        // the grant's other sessions share), and given to the vendor as their window lets it; the
        // device's window is refilled only as its data is given (russh patch 10, set where the device
        // channel is opened, `DeviceLinks::open_session`), by a future of its own, so what waits is
        // bounded by one window (and a few chunks: `Outbox`). What is given passes the gate
        // (recording, budget) first, as before.
        let outbox = Mutex::new(Outbox::default());
        let outbox = || {
            outbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let held = Notify::new();
        let owed = Owed::default();
        let take = async {
            loop {
                let msg = tokio::select! {
                    biased;
                    () = ending.done.cancelled() => return,
                    m = d_rx.wait() => m,
                };
                let closed = {
                    let mut outbox = outbox();
                    match msg {
                        Some(msg) => {
                            if let Taken::Dropped(bytes) = outbox.take(msg) {
                                owed.add(bytes);
                            }
                        }
                        None => outbox.close(),
                    }
                    outbox.is_closed()
                };
                held.notify_one();
                if closed {
                    return;
                }
            }
        };
        let give = async {
            // The device's EOF, held back until its exit status (see `EXIT_STATUS_WAIT`).
            let mut held_eof: Option<tokio::time::Instant> = None;
            loop {
                if ending.done.is_cancelled() {
                    return;
                }
                if held_eof.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    held_eof = None;
                    if let Some(Err(_)) = ending.unless_done(eof_once(&v_tx, &vendor_eof)).await {
                        ending.finish(End::VendorClosed);
                        return;
                    }
                }
                let next = outbox().next();
                let Some(msg) = next else {
                    tokio::select! {
                        biased;
                        () = ending.done.cancelled() => return,
                        () = until(held_eof) => continue,
                        () = held.notified() => continue,
                    }
                };
                // Output and stderr take one path (only stderr, code 1, is held: `Outbox`; OpenSSH's
                // client drops any other code).
                let (msg, stderr) = match msg {
                    ChannelMsg::ExtendedData { data, ext } => {
                        (ChannelMsg::Data { data }, Some(ext))
                    }
                    msg => (msg, None),
                };
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        let bytes = u32::try_from(data.len()).unwrap_or(u32::MAX);
                        let passed = gate
                            .pass(&ending, Direction::Down, &data, stderr.is_some())
                            .await;
                        let wake = match passed {
                            Ok(wake) => wake,
                            Err(end) => {
                                ending.finish(end);
                                return;
                            }
                        };
                        let send = async {
                            match stderr {
                                Some(ext) => v_tx.extended_data_bytes(ext, data).await,
                                None => v_tx.data_bytes(data).await,
                            }
                        };
                        let sent = ending.unless_done(wake.after(send)).await;
                        owed.add(bytes);
                        sent
                    }
                    ChannelMsg::Eof => {
                        held_eof
                            .get_or_insert_with(|| tokio::time::Instant::now() + EXIT_STATUS_WAIT);
                        continue;
                    }
                    // Only the first exit status or signal is held (`Outbox`). Recorded (as a notice)
                    // before the vendor gets it: nothing of the device's reaches them unrecorded.
                    ChannelMsg::ExitStatus { exit_status } => {
                        if let Some(rec) = &recorder {
                            let text =
                                format!("the device's command exited with status {exit_status}");
                            if let Some(Err(e)) =
                                ending.unless_done(rec.send(Record::Notice(text))).await
                            {
                                ending.finish(End::RecordingFailed(e.0));
                                return;
                            }
                        }
                        ending
                            .unless_done(async {
                                v_tx.exit_status(exit_status).await?;
                                if held_eof.take().is_some() {
                                    eof_once(&v_tx, &vendor_eof).await?;
                                }
                                Ok(())
                            })
                            .await
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    } => {
                        let (signal_name, error_message, lang_tag) =
                            bounded_exit_signal(signal_name, &error_message, &lang_tag);
                        if let Some(rec) = &recorder {
                            let text = format!(
                                "the device ended the command by signal {signal_name:?}{}{}{}",
                                if core_dumped { " (core dumped)" } else { "" },
                                if error_message.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {error_message}")
                                },
                                if lang_tag.is_empty() {
                                    String::new()
                                } else {
                                    format!(" [{lang_tag}]")
                                }
                            );
                            if let Some(Err(e)) =
                                ending.unless_done(rec.send(Record::Notice(text))).await
                            {
                                ending.finish(End::RecordingFailed(e.0));
                                return;
                            }
                        }
                        ending
                            .unless_done(async {
                                server
                                    .exit_signal_request(
                                        vendor_id,
                                        signal_name,
                                        core_dumped,
                                        error_message,
                                        lang_tag,
                                    )
                                    .await
                                    .map_err(|()| russh::Error::SendError)?;
                                if held_eof.take().is_some() {
                                    eof_once(&v_tx, &vendor_eof).await?;
                                }
                                Ok(())
                            })
                            .await
                    }
                    ChannelMsg::Failure => {
                        // The device refused shell/exec/subsystem.
                        let _ = ending
                            .unless_done(async {
                                tell(&v_tx, "the device refused the request").await;
                                let _ = v_tx.exit_status(1).await;
                            })
                            .await;
                        ending.finish(End::DeviceClosed);
                        return;
                    }
                    // The device closed its channel (or its connection went), after what came before.
                    ChannelMsg::Close => {
                        ending.finish(End::DeviceClosed);
                        return;
                    }
                    _ => Some(Ok(())),
                };
                if let Some(Err(_)) = sent {
                    ending.finish(End::VendorClosed);
                    return;
                }
            }
        };
        let credit = ending.unless_done(owed.give_back(&d_tx));
        tokio::join!(take, give, credit);
    };

    tokio::join!(control, up, down);
    // The vendor's connection ended and nothing else ended the session first: a client that closed
    // the channel and then hung up (asyncssh's `close()` of each channel, then of the connection) has
    // its close still queued here, unread because the hang-up won the race; that is how it ended.
    let end = match ending.get() {
        Some(end) => end,
        None if close_queued(&mut v_rx) => End::VendorClosed,
        None => End::Lost("the vendor's connection ended".into()),
    };
    // Both readers are gone now, so a connection blocked on this channel's queue moves again. The
    // goodbyes are bounded: a peer that stopped reading does not hold them.
    drop((v_rx, d_rx));
    let bastion_ended = matches!(
        end,
        End::Closed(_) | End::RecordingFailed(_) | End::BudgetCut(_)
    );
    let to_vendor = async {
        if let Some(notice) = end.vendor_notice()
            && !vendor_eof.load(Ordering::Acquire)
        {
            tell(&v_tx, &notice).await;
            let _ = v_tx.exit_status(255).await;
        }
        // One EOF per channel: asyncssh (rightly) disconnects on a second one.
        if !vendor_eof.swap(true, Ordering::AcqRel) {
            let _ = v_tx.eof().await;
        }
        let _ = v_tx.close().await;
    };
    let to_device = async {
        // Whatever runs on the device is hung up when the bastion ends the session, or when the vendor
        // closed it before the device took all of their input.
        if bastion_ended || stranded.load(Ordering::Acquire) {
            let _ = d_tx.signal(russh::Sig::HUP).await;
        }
        if !device_eof.swap(true, Ordering::AcqRel) {
            let _ = d_tx.eof().await;
        }
        let _ = d_tx.close().await;
    };
    let _ = tokio::time::timeout(FAREWELL, async { tokio::join!(to_vendor, to_device) }).await;
    end
}

/// Sends the vendor EOF unless it already went (one EOF per channel: asyncssh rightly disconnects on a
/// second one).
async fn eof_once<S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static>(
    tx: &ChannelWriteHalf<S>,
    sent: &AtomicBool,
) -> Result<(), russh::Error> {
    if sent.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    tx.eof().await
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Completes when the recording halted by itself; never without a recording.
async fn halted(recorder: Option<&RecordSender>) -> String {
    match recorder {
        Some(r) => r.halted().await.0,
        None => std::future::pending().await,
    }
}

/// One line to the vendor on stderr, so it never mixes into a program's stdout (scp, pipes).
async fn tell<S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static>(
    tx: &ChannelWriteHalf<S>,
    text: &str,
) {
    let _ = tx
        .extended_data_bytes(1, super::bastion_line(text, true))
        .await;
}

/// A device's exit signal as it is passed on and recorded: its text bounded (a device could otherwise
/// send the vendor up to a packet of it, unrecorded) and without control characters.
fn bounded_exit_signal(
    signal: russh::Sig,
    error_message: &str,
    lang_tag: &str,
) -> (russh::Sig, String, String) {
    let clean = |s: &str, max: usize| -> String {
        s.chars().filter(|c| !c.is_control()).take(max).collect()
    };
    let signal = match signal {
        russh::Sig::Custom(name) => russh::Sig::Custom(
            name.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
                .take(32)
                .collect(),
        ),
        known => known,
    };
    (signal, clean(error_message, 256), clean(lang_tag, 16))
}
