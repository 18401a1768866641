//! What waits on a started session's channel for the other side, in order: what a vendor sent that the
//! device has not taken yet ([`Inbox`]), and what the device sent that the vendor has not taken yet
//! ([`Outbox`]).
//!
//! The bridge takes every message from both channels as it comes ([`super::bridge`]): russh's
//! connection loop hands each channel's messages over through a queue of 100, and when that queue is
//! full it stops reading the connection. So a device that stops taking input used to stop the vendor's
//! whole connection: its other channels, and its close or hang-up, were never read, and the session
//! (and the device's program) outlived a vendor who had gone; and a vendor's client that stops reading
//! stopped the device connection, which carries the grant's other sessions. What waits for a side waits
//! here instead, bounded: each channel's window is refilled only as its data reaches the other side
//! (russh patch 10, on the vendor's channel and the device's), so the data held is at most one window,
//! consecutive small pieces are kept as one chunk (a flood of one-byte packets is not a flood of entries;
//! pieces of 4 KiB or more are kept as they came, not copied), and
//! the rest is bounded by count ([`MAX_CONTROLS`]). The device's output and stderr each keep their
//! order, but while they wait a piece of one joins that stream's last waiting chunk even past one of the
//! other's (as sshd does for a client that is behind), so output and stderr sent in turns a byte at a
//! time are a few chunks too; nothing moves past an EOF, exit or close. Empty data is no entry.
//!
//! The rules of what is passed on at all live here too. Toward the device, so they hold for what came
//! before the start (`early`) and after it alike: nothing after the vendor's EOF (a client that sends
//! data past its EOF would otherwise have it recorded although no device reads it), and only what the
//! device is given (data, EOF, window changes, signals). Toward the vendor: output and stderr (no other
//! extended data: OpenSSH's client drops it), the device's EOF, its first exit status or signal (a
//! device that sent more would have a channel to the vendor that is neither recorded nor metered), a
//! refused start, and its close, which comes after everything before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use russh::{ChannelMsg, ChannelWriteHalf};
use tokio::sync::Notify;

/// The largest chunk consecutive data is joined into: the maximum packet size of both legs.
pub const MAX_CHUNK: usize = 32 * 1024;

/// Only pieces under this size are joined (copied) into a chunk, and only into one that holds small
/// pieces: a relay's data comes in packets of up to 32 KiB, and copying them would add a copy of most of
/// what is relayed whenever a side is a moment behind, while a window holds few pieces of this size or
/// more (at most 512 of 2 MiB, each followed by at most one chunk of small ones).
const JOIN_BELOW: usize = 4 * 1024;

/// The most window changes and signals held at once. A window change past it changes the last one
/// held (the device ends at the size the vendor last asked for); a signal past it is dropped.
pub const MAX_CONTROLS: usize = 64;

/// How much of one side's data reached the other before its window is told (russh patch 10): a
/// keystroke's byte is not worth a message to the connection's task, and what is kept back is far under
/// the half window at which russh tops it up.
pub const CREDIT_STEP: u32 = 32 * 1024;

/// Bytes of one side's that were consumed (given to the other side, or dropped) and not yet given back
/// to its window: the one account `bridge` (both ways) and `drained` keep, and the one way it is given
/// back ([`Owed::give_back`]).
#[derive(Debug, Default)]
pub struct Owed {
    bytes: AtomicU32,
    due: Notify,
}

impl Owed {
    /// Adds `bytes`; once a [`CREDIT_STEP`] or more is owed, [`Owed::give_back`] gives it.
    pub fn add(&self, bytes: u32) {
        let owed = self
            .bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if owed >= CREDIT_STEP {
            self.due.notify_one();
        }
    }

    /// Waits until a [`CREDIT_STEP`] or more is owed; all that is owed, to be given back now.
    async fn due(&self) -> u32 {
        loop {
            self.due.notified().await;
            let bytes = self.bytes.swap(0, Ordering::Relaxed);
            if bytes > 0 {
                return bytes;
            }
        }
    }

    /// Gives what is owed back to `tx`'s window as it comes due, until the connection is gone. Run beside
    /// the halves that take and give, never in them: it waits on the connection's task, which may itself
    /// be waiting for the channel's queue to be read (the taking half), or for the peer's window (the
    /// giving half's connection, the other one), so a half that waited on it could hold both.
    pub async fn give_back<S>(&self, tx: &ChannelWriteHalf<S>)
    where
        S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
    {
        loop {
            let bytes = self.due().await;
            if tx.consumed(bytes).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Debug)]
enum Item {
    Data(Stream, Chunk),
    Control(ChannelMsg),
}

/// Which data a chunk is: a channel's own, or stderr (extended data code 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

impl Item {
    fn into_msg(self) -> ChannelMsg {
        match self {
            Item::Data(Stream::Out, chunk) => ChannelMsg::Data {
                data: chunk.into_bytes(),
            },
            Item::Data(Stream::Err, chunk) => ChannelMsg::ExtendedData {
                data: chunk.into_bytes(),
                ext: 1,
            },
            Item::Control(msg) => msg,
        }
    }
}

/// Appends `data` of `stream` to `items`, joined with that stream's last chunk when both are small
/// ([`JOIN_BELOW`]), the two fit in [`MAX_CHUNK`] and nothing but (with `past_other`) one chunk of the
/// other stream came after it.
fn push_data(items: &mut VecDeque<Item>, stream: Stream, data: Bytes, past_other: bool) {
    let last = items.len();
    let reach = if past_other { 2 } else { 1 };
    for item in items.range_mut(last.saturating_sub(reach)..).rev() {
        match item {
            Item::Data(s, chunk) if *s == stream => {
                if data.len() < JOIN_BELOW
                    && chunk.joinable()
                    && chunk.len() + data.len() <= MAX_CHUNK
                {
                    chunk.join(&data);
                    return;
                }
                break;
            }
            Item::Data(..) => {}
            Item::Control(_) => break,
        }
    }
    items.push_back(Item::Data(stream, Chunk::One(data)));
}

fn data_len(data: &[u8]) -> u32 {
    u32::try_from(data.len()).unwrap_or(u32::MAX)
}

/// Data as it came (no copy), or joined with the data after it.
#[derive(Debug)]
enum Chunk {
    One(Bytes),
    Joined(BytesMut),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::One(b) => b.len(),
            Chunk::Joined(b) => b.len(),
        }
    }

    /// Whether small pieces may be joined to it (it is small, or already a join of them).
    fn joinable(&self) -> bool {
        match self {
            Chunk::One(b) => b.len() < JOIN_BELOW,
            Chunk::Joined(_) => true,
        }
    }

    fn join(&mut self, data: &[u8]) {
        match self {
            Chunk::One(first) => {
                // Sized to what is joined (it grows as more is): pieces joined in pairs must not each
                // hold a whole chunk's memory.
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(data);
                *self = Chunk::Joined(joined);
            }
            Chunk::Joined(joined) => joined.extend_from_slice(data),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Chunk::One(b) => b,
            Chunk::Joined(b) => b.freeze(),
        }
    }
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Inbox {
    items: VecDeque<Item>,
    /// Window changes and signals in `items`.
    controls: usize,
    /// The vendor's EOF was taken: nothing more is.
    eof: bool,
}

/// What [`Inbox::take`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Held for the device.
    Held,
    /// Not for the device: these bytes of data are consumed as they are (the vendor's window is
    /// refilled for them at once).
    Dropped(u32),
}

impl Inbox {
    /// Holds `msg` for the device, or says why not. The vendor's close is not taken here (it ends the
    /// session, [`super::bridge`]).
    pub fn take(&mut self, msg: ChannelMsg) -> Taken {
        match msg {
            ChannelMsg::Data { data } if data.is_empty() => Taken::Dropped(0),
            ChannelMsg::Data { data } if !self.eof => {
                push_data(&mut self.items, Stream::Out, data, false);
                Taken::Held
            }
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                Taken::Dropped(data_len(&data))
            }
            ChannelMsg::Eof if !self.eof => {
                self.eof = true;
                self.items.push_back(Item::Control(ChannelMsg::Eof));
                Taken::Held
            }
            msg @ ChannelMsg::WindowChange { .. } => {
                if self.controls >= MAX_CONTROLS
                    && let Some(last) = self.items.iter_mut().rev().find_map(|i| match i {
                        Item::Control(m @ ChannelMsg::WindowChange { .. }) => Some(m),
                        _ => None,
                    })
                {
                    *last = msg;
                    return Taken::Held;
                }
                self.hold_control(msg)
            }
            msg @ ChannelMsg::Signal { .. } => self.hold_control(msg),
            _ => Taken::Dropped(0),
        }
    }

    fn hold_control(&mut self, msg: ChannelMsg) -> Taken {
        if self.controls >= MAX_CONTROLS {
            return Taken::Dropped(0);
        }
        self.controls += 1;
        self.items.push_back(Item::Control(msg));
        Taken::Held
    }

    /// The next message for the device, in the order taken.
    pub fn next(&mut self) -> Option<ChannelMsg> {
        let item = self.items.pop_front()?;
        if let Item::Control(msg) = &item
            && !matches!(msg, ChannelMsg::Eof)
        {
            self.controls -= 1;
        }
        Some(item.into_msg())
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What the device sent on a started session's channel that the vendor has not taken yet: see the
/// module doc.
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<Item>,
    eof: bool,
    exited: bool,
    failed: bool,
    /// The device closed the channel (or its connection went): nothing more comes.
    closed: bool,
}

impl Outbox {
    /// Holds `msg` for the vendor, or says why not. A `None` from the device's channel is taken as its
    /// close ([`Outbox::close`]).
    pub fn take(&mut self, msg: ChannelMsg) -> Taken {
        if self.closed {
            return match msg {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                    Taken::Dropped(data_len(&data))
                }
                _ => Taken::Dropped(0),
            };
        }
        match msg {
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }
                if data.is_empty() =>
            {
                Taken::Dropped(0)
            }
            ChannelMsg::Data { data } => {
                push_data(&mut self.items, Stream::Out, data, true);
                Taken::Held
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                push_data(&mut self.items, Stream::Err, data, true);
                Taken::Held
            }
            ChannelMsg::ExtendedData { data, .. } => Taken::Dropped(data_len(&data)),
            ChannelMsg::Eof if !self.eof => {
                self.eof = true;
                self.items.push_back(Item::Control(ChannelMsg::Eof));
                Taken::Held
            }
            msg @ (ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. })
                if !self.exited =>
            {
                self.exited = true;
                self.items.push_back(Item::Control(msg));
                Taken::Held
            }
            // The device refused the start request (pty and env are sent without a reply).
            ChannelMsg::Failure if !self.failed => {
                self.failed = true;
                self.items.push_back(Item::Control(ChannelMsg::Failure));
                Taken::Held
            }
            ChannelMsg::Close => {
                self.close();
                Taken::Held
            }
            _ => Taken::Dropped(0),
        }
    }

    /// The device's channel closed: after what is held, the vendor's session ends.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.items.push_back(Item::Control(ChannelMsg::Close));
        }
    }

    /// The next message for the vendor, in the order taken.
    pub fn next(&mut self) -> Option<ChannelMsg> {
        self.items.pop_front().map(Item::into_msg)
    }

    /// Whether nothing more will come from the device.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> ChannelMsg {
        ChannelMsg::Data {
            data: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    fn size(cols: u32) -> ChannelMsg {
        ChannelMsg::WindowChange {
            col_width: cols,
            row_height: 24,
            pix_width: 0,
            pix_height: 0,
        }
    }

    fn drain(inbox: &mut Inbox) -> Vec<String> {
        std::iter::from_fn(|| inbox.next())
            .map(|m| match m {
                ChannelMsg::Data { data } => format!("data {}", String::from_utf8_lossy(&data)),
                ChannelMsg::WindowChange { col_width, .. } => format!("size {col_width}"),
                ChannelMsg::Eof => "eof".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn credit_is_due_in_steps_and_taken_whole() {
        let owed = Owed::default();
        let soon = std::time::Duration::from_millis(50);
        owed.add(CREDIT_STEP - 1);
        assert!(tokio::time::timeout(soon, owed.due()).await.is_err());
        owed.add(1);
        assert_eq!(
            tokio::time::timeout(soon, owed.due()).await,
            Ok(CREDIT_STEP)
        );
        assert!(tokio::time::timeout(soon, owed.due()).await.is_err());
    }

    #[test]
    fn consecutive_data_is_one_chunk_and_order_is_kept() {
        let mut inbox = Inbox::default();
        for m in [data("a"), data("b"), size(100), data("c"), ChannelMsg::Eof] {
            assert_eq!(inbox.take(m), Taken::Held);
        }
        assert_eq!(drain(&mut inbox), ["data ab", "size 100", "data c", "eof"]);
        assert!(inbox.is_empty());
    }

    #[test]
    fn a_chunk_never_grows_past_the_packet_size() {
        let mut inbox = Inbox::default();
        let piece = "x".repeat(JOIN_BELOW - 1);
        let per_chunk = MAX_CHUNK / piece.len();
        for _ in 0..per_chunk + 1 {
            inbox.take(data(&piece));
        }
        // A piece of a packet's size is kept as it came, and nothing small is joined to it.
        let packet = "y".repeat(MAX_CHUNK / 2);
        inbox.take(data(&packet));
        inbox.take(data("z"));
        let lens: Vec<usize> = std::iter::from_fn(|| inbox.next())
            .map(|m| match m {
                ChannelMsg::Data { data } => data.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(
            lens,
            [per_chunk * piece.len(), piece.len(), packet.len(), 1]
        );
    }

    #[test]
    fn nothing_after_the_vendors_eof_is_held() {
        let mut inbox = Inbox::default();
        inbox.take(data("before"));
        inbox.take(ChannelMsg::Eof);
        assert_eq!(inbox.take(data("after")), Taken::Dropped(5));
        assert_eq!(inbox.take(ChannelMsg::Eof), Taken::Dropped(0));
        assert_eq!(drain(&mut inbox), ["data before", "eof"]);
    }

    #[test]
    fn what_no_device_is_given_is_dropped_and_its_bytes_given_back() {
        let mut inbox = Inbox::default();
        let stderr = ChannelMsg::ExtendedData {
            data: Bytes::from_static(b"1234"),
            ext: 1,
        };
        assert_eq!(inbox.take(stderr), Taken::Dropped(4));
        assert_eq!(
            inbox.take(ChannelMsg::WindowAdjusted { new_size: 9 }),
            Taken::Dropped(0)
        );
        assert!(inbox.is_empty());
    }

    #[test]
    fn window_changes_and_signals_are_held_to_a_bound() {
        let mut inbox = Inbox::default();
        for n in 0..10_000 {
            inbox.take(data("k"));
            inbox.take(size(n));
        }
        let signal = ChannelMsg::Signal {
            signal: russh::Sig::INT,
        };
        assert_eq!(inbox.take(signal), Taken::Dropped(0));
        let shown = drain(&mut inbox);
        // At most MAX_CONTROLS window changes, each with the data before it; the last size asked
        // for is the last given, and no keystroke is lost.
        assert!(shown.len() <= 2 * MAX_CONTROLS + 1, "{}", shown.len());
        assert_eq!(
            shown.iter().filter(|s| s.starts_with("size")).count(),
            MAX_CONTROLS
        );
        let last_size = shown.iter().rev().find(|s| s.starts_with("size"));
        assert_eq!(last_size.map(String::as_str), Some("size 9999"));
        let keys: usize = shown
            .iter()
            .filter_map(|s| s.strip_prefix("data "))
            .map(str::len)
            .sum();
        assert_eq!(keys, 10_000);
        // Taken out, they free their places.
        assert_eq!(inbox.take(size(1)), Taken::Held);
    }
    fn stderr(s: &str) -> ChannelMsg {
        ChannelMsg::ExtendedData {
            data: Bytes::copy_from_slice(s.as_bytes()),
            ext: 1,
        }
    }

    fn drain_out(outbox: &mut Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.next())
            .map(|m| match m {
                ChannelMsg::Data { data } => format!("out {}", String::from_utf8_lossy(&data)),
                ChannelMsg::ExtendedData { data, ext } => {
                    format!("err{ext} {}", String::from_utf8_lossy(&data))
                }
                ChannelMsg::Eof => "eof".into(),
                ChannelMsg::ExitStatus { exit_status } => format!("exit {exit_status}"),
                ChannelMsg::Close => "close".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_devices_output_and_stderr_each_keep_their_order_and_join_only_their_own() {
        let mut outbox = Outbox::default();
        for m in [
            data("a"),
            data("b"),
            stderr("x"),
            stderr("y"),
            data("c"),
            ChannelMsg::Eof,
            ChannelMsg::ExitStatus { exit_status: 3 },
            ChannelMsg::Close,
        ] {
            assert_eq!(outbox.take(m), Taken::Held);
        }
        assert!(outbox.is_closed());
        // While they wait, "c" joins the output before the stderr chunk; each stream keeps its order.
        assert_eq!(
            drain_out(&mut outbox),
            ["out abc", "err1 xy", "eof", "exit 3", "close"]
        );
    }

    #[test]
    fn only_the_devices_first_exit_and_no_other_extended_data_go_to_the_vendor() {
        let mut outbox = Outbox::default();
        let other = ChannelMsg::ExtendedData {
            data: Bytes::from_static(b"12345"),
            ext: 2,
        };
        assert_eq!(outbox.take(other), Taken::Dropped(5));
        assert_eq!(
            outbox.take(ChannelMsg::ExitStatus { exit_status: 0 }),
            Taken::Held
        );
        assert_eq!(
            outbox.take(ChannelMsg::ExitStatus { exit_status: 1 }),
            Taken::Dropped(0)
        );
        let signal = ChannelMsg::ExitSignal {
            signal_name: russh::Sig::KILL,
            core_dumped: false,
            error_message: String::new(),
            lang_tag: String::new(),
        };
        assert_eq!(outbox.take(signal), Taken::Dropped(0));
        assert_eq!(outbox.take(ChannelMsg::Eof), Taken::Held);
        assert_eq!(outbox.take(ChannelMsg::Eof), Taken::Dropped(0));
        assert_eq!(
            outbox.take(ChannelMsg::WindowAdjusted { new_size: 9 }),
            Taken::Dropped(0)
        );
        // The connection went: a close after what is held, and nothing after it.
        outbox.close();
        assert_eq!(outbox.take(data("late")), Taken::Dropped(4));
        assert_eq!(drain_out(&mut outbox), ["exit 0", "eof", "close"]);
    }

    #[test]
    fn output_and_stderr_in_turns_are_a_few_chunks_while_they_wait() {
        let mut outbox = Outbox::default();
        // A window's worth (2 MiB) of one-byte pieces in turns, and empty ones between.
        for n in 0..(2 << 20) {
            outbox.take(if n % 2 == 0 { data("o") } else { stderr("e") });
            outbox.take(data(""));
        }
        let chunks = drain_out(&mut outbox);
        assert!(
            chunks.len() <= 2 * (2 << 20) / MAX_CHUNK + 2,
            "{}",
            chunks.len()
        );
        // Each stream's pieces, all of them, in order; output first.
        let len = |prefix: &str, piece: char| -> usize {
            chunks
                .iter()
                .filter_map(|c| c.strip_prefix(prefix))
                .inspect(|c| assert!(c.chars().all(|ch| ch == piece)))
                .map(str::len)
                .sum()
        };
        assert_eq!((len("out ", 'o'), len("err1 ", 'e')), (1 << 20, 1 << 20));
        assert!(chunks[0].starts_with("out"));

        // Nothing joins past an exit: what came after it stays after it.
        let mut outbox = Outbox::default();
        for m in [
            data("a"),
            stderr("x"),
            ChannelMsg::ExitStatus { exit_status: 0 },
            data("b"),
            stderr("y"),
            data("c"),
        ] {
            outbox.take(m);
        }
        assert_eq!(
            drain_out(&mut outbox),
            ["out a", "err1 x", "exit 0", "out bc", "err1 y"]
        );
    }
}
