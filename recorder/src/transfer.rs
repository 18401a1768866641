//! SFTP transfer observation for the relay, and the transfer log that records what it saw.
//!
//! Entry points: [`SftpObserver`] is fed the raw bytes of an `sftp` subsystem channel, chunk by chunk in each
//! direction, and returns [`TransferEvent`]s: files uploaded or downloaded with their byte counts, and
//! removes, renames, directory changes, attribute changes and links. [`TransferLog`] writes those events as
//! JSON lines with a running SHA-256. OpenSSH 9's `scp` speaks SFTP, so this covers `scp` as well.
//!
//! The observer understands SFTP version 3 (draft-ietf-secsh-filexfer-02, as spoken by OpenSSH). It only
//! watches; the relay forwards every byte whatever the observer makes of them. Bulk data (the payload of
//! WRITE requests and DATA replies) is counted from its length field and skipped as it streams past, never
//! copied; only control packets are buffered, each at most [`MAX_PACKET`] bytes. Input that breaks the
//! protocol (a declared length over the limit, a string running past its packet, more than
//! [`MAX_TRACKED`] open files or unanswered requests, a request id reused while its first request awaits a
//! reply, a reply of the wrong kind for its request, a request on a handle the server has not given or
//! the client already closed) stops parsing for the rest of the channel with one
//! [`TransferEvent::Unparseable`], so the log says where its knowledge ends (the relay refuses that
//! chunk: nothing it could not follow reaches the device). Every request's id is held until its reply,
//! whatever the request (a STAT's too), so no reply is ever taken for another request's; and every handle
//! a request names must be one the server gave on this channel: OpenSSH's handles are small numbers,
//! reused, and a client that guessed one before its HANDLE reply passed (or used one it had closed)
//! would move bytes the log never counts, or counts for another file.
//!
//! File events are emitted when the server answers the CLOSE, so that DATA replies still in flight when the
//! client closed are counted; an [`TransferEvent::Opened`] is logged when the server's HANDLE opens the
//! file, before any of its bytes pass, so a crash mid-transfer still leaves the file on the record; operations are emitted with the server's answer, so refused attempts are
//! logged as such.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::sink::{Finished, HashedFile, seconds};

/// Largest SFTP packet length the observer accepts: OpenSSH's limit is 256 KiB; this leaves a wide margin.
pub const MAX_PACKET: u32 = 1024 * 1024;
/// Most open files, and separately most requests awaiting a reply, that the observer tracks at once.
pub const MAX_TRACKED: usize = 4096;
/// The most of a path the log keeps (see `lossy`).
pub const MAX_PATH_TEXT: usize = 1024;
/// Longest handle SFTP allows ("MUST NOT be longer than 256 bytes").
const MAX_HANDLE: usize = 256;
/// A packet buffer grown past this by an unusually large control packet is released afterwards.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// SFTP v3 packet types that the observer reads.
mod fxp {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const RENAME: u8 = 18;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// OPEN pflags that let the client change the file: WRITE, APPEND, CREAT, TRUNC.
const PFLAGS_MODIFY: u32 = 0x02 | 0x04 | 0x08 | 0x10;

/// What the observer saw happen on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TransferEvent {
    /// A file was opened and, unless `outcome` says otherwise, closed.
    File {
        /// The path as the client sent it (invalid UTF-8 shown as U+FFFD).
        path: String,
        /// Upload if it was opened for writing, creating, appending or truncating; download otherwise.
        direction: Direction,
        /// Bytes that went in `direction`: written to it (WRITE requests) for an upload, read from it
        /// (DATA replies) for a download. A file opened for writing that was also read is logged
        /// twice, once each way, with the same path and outcome.
        bytes: u64,
        /// `ok`: opened and closed; `failed`: the open (bytes 0) or the close was refused; `unfinished`: the
        /// channel ended, or parsing stopped, while it was open.
        outcome: Outcome,
        /// The `open` of the [`TransferEvent::Opened`] line this one ends. None when no such line was
        /// logged (the open was refused or never answered; the second line of a file read and written),
        /// and in logs written before lines were numbered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        open: Option<u64>,
        /// A legacy SCP upload without `-d`: the command's path (`scp -t PATH`). Where the file went
        /// depends on what PATH was on the device, which only the device knows: written as PATH, or
        /// under it if PATH was a directory (a tree: PATH became its top directory, or the tree went
        /// under PATH). `path` is then the name the client gave the file, in its tree.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// A file the server opened, logged as it opens, before any of its bytes pass, so that a transfer
    /// cut short by a crash is on the record (its [`TransferEvent::File`] comes with the CLOSE's answer).
    /// Not among the observer's own events: the relay takes them with
    /// [`SftpObserver::take_opened`].
    Opened {
        /// The path as the client sent it.
        path: String,
        /// As for [`TransferEvent::File`].
        direction: Direction,
        /// This open's number on the channel, unique in its log: the [`TransferEvent::File`] that ends
        /// it carries the same. None only in logs written before lines were numbered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        open: Option<u64>,
        /// As for [`TransferEvent::File`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// A change to the file system other than file contents.
    Op {
        /// Which operation.
        op: OpKind,
        /// The path acted on: the old name of a rename, the new link for a symlink or hardlink.
        path: String,
        /// The new name of a rename, or the existing path a link points to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// The server's answer.
        outcome: Outcome,
    },
    /// The channel broke the protocol or a limit; nothing after this point was parsed.
    Unparseable {
        /// What was wrong, and in which direction.
        reason: String,
    },
    /// What the device's sftp server wrote to stderr (extended data), as text (invalid UTF-8 shown as
    /// U+FFFD). Not produced by the observer: the relay records it beside the transfers.
    Stderr {
        /// The bytes as they came, in one chunk.
        text: String,
    },
    /// A line of the bastion's about the channel (the device program's exit status or signal), recorded
    /// before the vendor is sent what it tells of. Not produced by the observer.
    Notice { text: String },
}

/// The direction of a file transfer, from the vendor's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Vendor to device.
    Upload,
    /// Device to vendor.
    Download,
}

/// File system operations reported as [`TransferEvent::Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// REMOVE: a file deleted.
    Remove,
    /// RENAME or `posix-rename@openssh.com`.
    Rename,
    /// MKDIR.
    Mkdir,
    /// RMDIR.
    Rmdir,
    /// SETSTAT, FSETSTAT or `lsetstat@openssh.com`: permissions, owner, times or size changed.
    SetStat,
    /// SYMLINK.
    Symlink,
    /// `hardlink@openssh.com`.
    Hardlink,
    /// `copy-data`: bytes copied on the server from one open file (`target`) into another (`path`),
    /// none of them through the bastion.
    Copy,
}

/// How the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Success.
    Ok,
    /// Refused, with the SSH_FX status code (2 no such file, 3 permission denied, 4 failure, …).
    Failed {
        /// The status code.
        status: u32,
    },
    /// No answer seen: the channel ended, or parsing stopped, first.
    Unfinished,
}

impl Outcome {
    fn from_status(status: u32) -> Self {
        if status == 0 {
            Self::Ok
        } else {
            Self::Failed { status }
        }
    }
}

/// Watches one SFTP channel and reports transfers; see the [module docs](self).
///
/// Feed every chunk the relay forwards, in order, to [`client_to_server`](Self::client_to_server) or
/// [`server_to_client`](Self::server_to_client); chunks may split packets anywhere. Call
/// [`finish`](Self::finish) when the channel closes.
#[derive(Debug, Default)]
pub struct SftpObserver {
    /// Packet reassembly, one per direction.
    client: Framer,
    server: Framer,
    /// Open files and requests awaiting replies.
    tracker: Tracker,
    /// Set after an [`TransferEvent::Unparseable`]: the rest of the channel is ignored.
    stopped: bool,
}

impl SftpObserver {
    /// The [`TransferEvent::Opened`] of files opened since the last call, for the relay to log before it
    /// forwards the answer that opened them.
    pub fn take_opened(&mut self) -> Vec<TransferEvent> {
        std::mem::take(&mut self.tracker.opened)
    }
}

impl SftpObserver {
    /// An observer for a new channel.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the client (vendor) sent.
    pub fn client_to_server(&mut self, data: &[u8]) -> Vec<TransferEvent> {
        self.feed(Side::Client, data)
    }

    /// Bytes the server (device) sent.
    pub fn server_to_client(&mut self, data: &[u8]) -> Vec<TransferEvent> {
        self.feed(Side::Server, data)
    }

    /// Whether parsing has stopped for this channel.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The channel ended: reports files still open and requests never answered, as
    /// [`Outcome::Unfinished`], in the order they were opened or sent.
    pub fn finish(self) -> Vec<TransferEvent> {
        let Tracker { files, pending, .. } = self.tracker;
        let mut left: Vec<(u64, TransferEvent)> = pending
            .into_values()
            .filter_map(Pending::abandon)
            .chain(files.into_values().flat_map(|file| {
                let serial = file.serial;
                file.into_events(Outcome::Unfinished)
                    .map(move |event| (serial, event))
            }))
            .collect();
        left.sort_by_key(|(serial, _)| *serial);
        left.into_iter().map(|(_, event)| event).collect()
    }

    fn feed(&mut self, side: Side, data: &[u8]) -> Vec<TransferEvent> {
        let mut events = Vec::new();
        if self.stopped {
            return events;
        }
        let framer = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        let tracker = &mut self.tracker;
        let fed = framer.feed(side, data, |packet| {
            let kind = packet.kind;
            tracker
                .on_packet(side, packet, &mut events)
                .map_err(|e| format!("{} packet: {e}", packet_name(kind)))
        });
        if let Err(reason) = fed {
            self.stopped = true;
            self.client = Framer::default();
            self.server = Framer::default();
            events.push(TransferEvent::Unparseable {
                reason: format!("{side}: {reason}"),
            });
        }
        events
    }
}

/// Which peer sent a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client to server",
            Side::Server => "server to client",
        })
    }
}

fn packet_name(kind: u8) -> &'static str {
    match kind {
        fxp::VERSION => "VERSION",
        fxp::OPEN => "OPEN",
        fxp::CLOSE => "CLOSE",
        fxp::READ => "READ",
        fxp::WRITE => "WRITE",
        fxp::SETSTAT => "SETSTAT",
        fxp::FSETSTAT => "FSETSTAT",
        fxp::REMOVE => "REMOVE",
        fxp::MKDIR => "MKDIR",
        fxp::RMDIR => "RMDIR",
        fxp::RENAME => "RENAME",
        fxp::SYMLINK => "SYMLINK",
        fxp::STATUS => "STATUS",
        fxp::HANDLE => "HANDLE",
        fxp::DATA => "DATA",
        fxp::EXTENDED => "EXTENDED",
        _ => "SFTP",
    }
}

/// A file between its HANDLE reply and the answer to its CLOSE.
#[derive(Debug)]
struct OpenFile {
    /// Order of the OPEN request, to report leftovers in order; also the number of its `opened` line.
    serial: u64,
    path: String,
    /// As opened: upload if for writing, creating, appending or truncating.
    direction: Direction,
    /// WRITE requests' bytes.
    written: u64,
    /// DATA replies' bytes.
    read: u64,
    /// Its CLOSE was sent: no request may name it any more.
    closing: bool,
}

impl OpenFile {
    /// Its events at the end: one in the direction it was opened for, with that direction's bytes,
    /// and, when bytes also went the other way (a file opened to read and write, then read), one for
    /// those: a download is never counted as an upload.
    fn into_events(self, outcome: Outcome) -> impl Iterator<Item = TransferEvent> {
        let bytes = |d: Direction| match d {
            Direction::Upload => self.written,
            Direction::Download => self.read,
        };
        let other = match self.direction {
            Direction::Upload => Direction::Download,
            Direction::Download => Direction::Upload,
        };
        let also = (bytes(other) > 0).then(|| TransferEvent::File {
            path: self.path.clone(),
            direction: other,
            bytes: bytes(other),
            outcome,
            open: None,
            target: None,
        });
        std::iter::once(TransferEvent::File {
            bytes: bytes(self.direction),
            path: self.path,
            direction: self.direction,
            outcome,
            open: Some(self.serial),
            target: None,
        })
        .chain(also)
    }
}

/// A request whose reply the observer needs, keyed by request id.
#[derive(Debug)]
enum Pending {
    Open {
        serial: u64,
        path: String,
        direction: Direction,
    },
    Read {
        handle: Box<[u8]>,
    },
    /// A WRITE: its bytes counted when sent; tracked so its STATUS answers it and nothing else.
    Write,
    /// An OPENDIR: its HANDLE reply names a directory.
    OpenDir {
        path: String,
    },
    /// Any other request (STAT, REALPATH, READDIR, an extension…): its id is held until its reply,
    /// so that reply cannot be taken for another request's.
    Other,
    Close {
        handle: Box<[u8]>,
    },
    Op {
        serial: u64,
        op: OpKind,
        path: String,
        target: Option<String>,
    },
}

impl Pending {
    /// What to report when the reply will never be seen (the channel ended, or another request reused the
    /// id); reads and closes report nothing, their file is still tracked.
    fn abandon(self) -> Option<(u64, TransferEvent)> {
        match self {
            Pending::Open {
                serial,
                path,
                direction,
            } => Some((
                serial,
                TransferEvent::File {
                    path,
                    direction,
                    bytes: 0,
                    outcome: Outcome::Unfinished,
                    open: None,
                    target: None,
                },
            )),
            Pending::Op {
                serial,
                op,
                path,
                target,
            } => Some((
                serial,
                TransferEvent::Op {
                    op,
                    path,
                    target,
                    outcome: Outcome::Unfinished,
                },
            )),
            Pending::Read { .. }
            | Pending::Write
            | Pending::Close { .. }
            | Pending::OpenDir { .. }
            | Pending::Other => None,
        }
    }
}

/// What a handle a request names was given for.
enum Given {
    File,
    /// A directory, with its path.
    Dir(String),
}

/// The protocol state both directions share.
#[derive(Debug, Default)]
struct Tracker {
    /// Open files by handle; at most [`MAX_TRACKED`].
    files: HashMap<Box<[u8]>, OpenFile>,
    /// Open directories by handle: their path, and whether their CLOSE was sent; at most
    /// [`MAX_TRACKED`].
    dirs: HashMap<Box<[u8]>, (String, bool)>,
    /// Requests awaiting a reply, by request id; at most [`MAX_TRACKED`].
    pending: HashMap<u32, Pending>,
    next_serial: u64,
    /// Files opened since the relay last took them ([`SftpObserver::take_opened`]).
    opened: Vec<TransferEvent>,
}

impl Tracker {
    fn on_packet(
        &mut self,
        side: Side,
        packet: Packet<'_>,
        events: &mut Vec<TransferEvent>,
    ) -> Result<(), &'static str> {
        match side {
            Side::Client => self.on_request(packet),
            Side::Server => self.on_reply(packet, events),
        }
    }

    /// A request: remembered until its reply (requests complete nothing by themselves).
    fn on_request(&mut self, packet: Packet<'_>) -> Result<(), &'static str> {
        let mut f = packet.fields;
        match packet.kind {
            fxp::OPEN => {
                let id = f.u32()?;
                let path = lossy(f.string()?);
                let pflags = f.u32()?;
                let direction = if pflags & PFLAGS_MODIFY != 0 {
                    Direction::Upload
                } else {
                    Direction::Download
                };
                let serial = self.serial();
                self.expect(
                    id,
                    Pending::Open {
                        serial,
                        path,
                        direction,
                    },
                )?;
            }
            fxp::OPENDIR => {
                let id = f.u32()?;
                let path = lossy(f.string()?);
                self.expect(id, Pending::OpenDir { path })?;
            }
            fxp::READ => {
                let id = f.u32()?;
                let handle = f.string()?;
                self.open_file(handle)?;
                self.expect(
                    id,
                    Pending::Read {
                        handle: handle.into(),
                    },
                )?;
            }
            fxp::CLOSE => {
                let id = f.u32()?;
                let handle = f.string()?;
                match self.given(handle)? {
                    Given::File => {
                        if let Some(file) = self.files.get_mut(handle) {
                            file.closing = true;
                        }
                    }
                    Given::Dir(_) => {
                        if let Some(dir) = self.dirs.get_mut(handle) {
                            dir.1 = true;
                        }
                    }
                }
                self.expect(
                    id,
                    Pending::Close {
                        handle: handle.into(),
                    },
                )?;
            }
            fxp::WRITE => {
                // Counted when sent; its id is tracked so that its STATUS cannot answer another request.
                let id = f.u32()?;
                let handle = f.string()?;
                f.u64()?; // offset
                let len = f.u32()?;
                let header = 1 + 4 + 4 + handle.len() as u64 + 8 + 4;
                if header + u64::from(len) != u64::from(packet.len) {
                    return Err("data length disagrees with the packet length");
                }
                let file = self.open_file(handle)?;
                file.written = file.written.saturating_add(len.into());
                self.expect(id, Pending::Write)?;
            }
            fxp::FSETSTAT => {
                let id = f.u32()?;
                let handle = f.string()?;
                let path = match self.given(handle)? {
                    Given::File => self.open_file(handle)?.path.clone(),
                    Given::Dir(path) => path,
                };
                self.op(id, OpKind::SetStat, path, None)?;
            }
            fxp::FSTAT | fxp::READDIR => {
                let id = f.u32()?;
                self.given(f.string()?)?;
                self.expect(id, Pending::Other)?;
            }
            fxp::SETSTAT | fxp::REMOVE | fxp::MKDIR | fxp::RMDIR => {
                let id = f.u32()?;
                let path = lossy(f.string()?);
                let op = match packet.kind {
                    fxp::SETSTAT => OpKind::SetStat,
                    fxp::REMOVE => OpKind::Remove,
                    fxp::MKDIR => OpKind::Mkdir,
                    _ => OpKind::Rmdir,
                };
                self.op(id, op, path, None)?;
            }
            fxp::RENAME => {
                let id = f.u32()?;
                let (old, new) = (lossy(f.string()?), lossy(f.string()?));
                self.op(id, OpKind::Rename, old, Some(new))?;
            }
            fxp::SYMLINK => {
                // OpenSSH sends the link's target first and the new link second, the reverse of the draft;
                // it is the peer we relay for, so read it its way.
                let id = f.u32()?;
                let (target, link) = (lossy(f.string()?), lossy(f.string()?));
                self.op(id, OpKind::Symlink, link, Some(target))?;
            }
            fxp::EXTENDED => {
                let id = f.u32()?;
                match f.string()? {
                    b"posix-rename@openssh.com" => {
                        let (old, new) = (lossy(f.string()?), lossy(f.string()?));
                        self.op(id, OpKind::Rename, old, Some(new))?;
                    }
                    b"hardlink@openssh.com" => {
                        let (target, link) = (lossy(f.string()?), lossy(f.string()?));
                        self.op(id, OpKind::Hardlink, link, Some(target))?;
                    }
                    b"lsetstat@openssh.com" => {
                        let path = lossy(f.string()?);
                        self.op(id, OpKind::SetStat, path, None)?;
                    }
                    b"fsync@openssh.com" | b"fstatvfs@openssh.com" => {
                        self.given(f.string()?)?;
                        self.expect(id, Pending::Other)?;
                    }
                    b"copy-data" => {
                        let from = f.string()?;
                        f.u64()?; // read from offset
                        f.u64()?; // read length
                        let into = f.string()?;
                        let source = self.open_file(from)?.path.clone();
                        let path = self.open_file(into)?.path.clone();
                        self.op(id, OpKind::Copy, path, Some(source))?;
                    }
                    _ => self.expect(id, Pending::Other)?,
                }
            }
            // INIT carries the client's version, not an id.
            fxp::INIT => {}
            // STAT, LSTAT, REALPATH, READLINK and whatever else: held until answered.
            _ => {
                let id = f.u32()?;
                self.expect(id, Pending::Other)?;
            }
        }
        Ok(())
    }

    /// What `handle` names: a file or a directory the server gave on this channel (by a HANDLE reply
    /// the observer saw pass) and whose CLOSE the client has not sent. Anything else cannot be followed
    /// (see the module's notes).
    fn given(&self, handle: &[u8]) -> Result<Given, &'static str> {
        if let Some(file) = self.files.get(handle) {
            return if file.closing {
                Err("a request on a handle the client already closed")
            } else {
                Ok(Given::File)
            };
        }
        match self.dirs.get(handle) {
            Some((_, true)) => Err("a request on a handle the client already closed"),
            Some((path, false)) => Ok(Given::Dir(path.clone())),
            None => Err("a request on a handle the server has not given"),
        }
    }

    /// The open file `handle` names ([`Tracker::given`]), which must be a file.
    fn open_file(&mut self, handle: &[u8]) -> Result<&mut OpenFile, &'static str> {
        if let Given::Dir(_) = self.given(handle)? {
            return Err("a file request on a directory's handle");
        }
        self.files
            .get_mut(handle)
            .ok_or("a request on a handle the server has not given")
    }

    fn on_reply(
        &mut self,
        packet: Packet<'_>,
        events: &mut Vec<TransferEvent>,
    ) -> Result<(), &'static str> {
        let mut f = packet.fields;
        match packet.kind {
            fxp::VERSION => {
                let version = f.u32()?;
                if version != 3 {
                    return Err("the server speaks an SFTP version other than 3");
                }
            }
            fxp::STATUS => {
                let id = f.u32()?;
                let outcome = Outcome::from_status(f.u32()?);
                match self.pending.remove(&id) {
                    Some(Pending::Open {
                        path, direction, ..
                    }) => events.push(TransferEvent::File {
                        path,
                        direction,
                        bytes: 0,
                        outcome,
                        open: None,
                        target: None,
                    }),
                    Some(Pending::Close { handle }) => {
                        if let Some(file) = self.files.remove(&handle) {
                            events.extend(file.into_events(outcome));
                        }
                        self.dirs.remove(&handle);
                    }
                    Some(Pending::Op {
                        op, path, target, ..
                    }) => events.push(TransferEvent::Op {
                        op,
                        path,
                        target,
                        outcome,
                    }),
                    Some(
                        Pending::Read { .. }
                        | Pending::Write
                        | Pending::OpenDir { .. }
                        | Pending::Other,
                    )
                    | None => {}
                }
            }
            fxp::HANDLE => {
                let id = f.u32()?;
                let handle = f.string()?;
                if handle.len() > MAX_HANDLE {
                    return Err("handle longer than 256 bytes");
                }
                match self.pending.remove(&id) {
                    Some(Pending::Open {
                        serial,
                        path,
                        direction,
                    }) => {
                        if self.files.len() >= MAX_TRACKED && !self.files.contains_key(handle) {
                            return Err("more open files than the observer tracks");
                        }
                        self.opened.push(TransferEvent::Opened {
                            path: path.clone(),
                            direction,
                            open: Some(serial),
                            target: None,
                        });
                        let file = OpenFile {
                            serial,
                            path,
                            direction,
                            written: 0,
                            read: 0,
                            closing: false,
                        };
                        if let Some(old) = self.files.insert(handle.into(), file) {
                            events.extend(old.into_events(Outcome::Unfinished));
                        }
                    }
                    Some(Pending::OpenDir { path }) => {
                        if self.dirs.len() >= MAX_TRACKED && !self.dirs.contains_key(handle) {
                            return Err("more open directories than the observer tracks");
                        }
                        self.dirs.insert(handle.into(), (path, false));
                    }
                    Some(_) => return Err("a HANDLE reply to a request that opens nothing"),
                    None => {}
                }
            }
            fxp::DATA => {
                let id = f.u32()?;
                let len = f.u32()?;
                if 1 + 4 + 4 + u64::from(len) != u64::from(packet.len) {
                    return Err("data length disagrees with the packet length");
                }
                match self.pending.remove(&id) {
                    Some(Pending::Read { handle }) => {
                        if let Some(file) = self.files.get_mut(&handle) {
                            file.read = file.read.saturating_add(len.into());
                        }
                    }
                    Some(_) => return Err("a DATA reply to a request that reads nothing"),
                    None => {}
                }
            }
            // Answers to requests the observer only holds the ids of.
            fxp::NAME | fxp::ATTRS | fxp::EXTENDED_REPLY => {
                let id = f.u32()?;
                match self.pending.remove(&id) {
                    Some(Pending::Other) | None => {}
                    Some(_) => return Err("a reply of the wrong kind for its request"),
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    fn op(
        &mut self,
        id: u32,
        op: OpKind,
        path: String,
        target: Option<String>,
    ) -> Result<(), &'static str> {
        let serial = self.serial();
        let pending = Pending::Op {
            serial,
            op,
            path,
            target,
        };
        self.expect(id, pending)
    }

    /// Remembers a request until its reply. A request that reuses the id of one still awaiting its reply
    /// cannot be followed: which of the two a reply answers is the client's to confuse (64 READs of one id
    /// counted as one, a failed MKDIR's status logged for an earlier REMOVE), and no real client does it.
    fn expect(&mut self, id: u32, pending: Pending) -> Result<(), &'static str> {
        if self.pending.contains_key(&id) {
            return Err("a request id reused while its first request awaits a reply");
        }
        if self.pending.len() >= MAX_TRACKED {
            return Err("more requests awaiting a reply than the observer tracks");
        }
        self.pending.insert(id, pending);
        Ok(())
    }
}

/// A path as the log keeps it: invalid UTF-8 as U+FFFD, and at most [`MAX_PATH_TEXT`] bytes of it,
/// with what was left out said at the end. Real paths are far shorter (Linux refuses one over 4096
/// bytes); a client sending megabyte paths and not reading the replies would otherwise keep up to
/// [`MAX_TRACKED`] of them in memory (3 GiB a channel, measured) and write them to the log.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_PATH_TEXT {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut text = String::from_utf8_lossy(&bytes[..MAX_PATH_TEXT]).into_owned();
    // Invalid bytes grew into U+FFFD (3 bytes each): cut again, on a character boundary.
    let mut cut = text.len().min(MAX_PATH_TEXT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("… [{} bytes in all]", bytes.len()));
    text
}

/// The start of one packet, as much as the tracker reads of it.
#[derive(Debug, Clone, Copy)]
struct Packet<'a> {
    kind: u8,
    /// The declared length (type byte and payload).
    len: u32,
    /// The kept part of the payload: all of it for control packets, the fields before the data for WRITE
    /// and DATA, the leading fields for STATUS and VERSION, nothing for packets the tracker ignores.
    fields: Fields<'a>,
}

/// Reassembles one direction's packets across chunks, keeping only the part of each that the tracker reads
/// and skipping the rest as it streams past.
#[derive(Debug, Default)]
struct Framer {
    /// The kept part of the current packet so far, length field and type included.
    buf: Vec<u8>,
    /// Bytes of the current packet still to pass unread.
    skip: usize,
}

/// What [`Framer`] needs next.
enum Plan {
    /// `buf` must grow to this length before the packet can be read.
    Need(usize),
    /// `buf` holds everything to be kept of this packet.
    Ready { len: u32, kind: u8 },
}

impl Framer {
    fn feed(
        &mut self,
        side: Side,
        mut data: &[u8],
        mut on_packet: impl FnMut(Packet<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            if self.skip > 0 {
                if data.is_empty() {
                    return Ok(());
                }
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            match plan(&self.buf, side)? {
                Plan::Need(want) => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let n = (want - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                }
                Plan::Ready { len, kind } => {
                    let kept = self.buf.len();
                    on_packet(Packet {
                        kind,
                        len,
                        fields: Fields(self.buf.get(5..).unwrap_or_default()),
                    })?;
                    // `plan` never keeps more than the packet: 4 + len >= kept.
                    self.skip = (4 + len as usize).saturating_sub(kept);
                    self.buf.clear();
                    if self.buf.capacity() > RETAINED_CAPACITY {
                        self.buf = Vec::new();
                    }
                }
            }
        }
    }
}

/// How much of the packet starting `buf` to keep, given what `buf` holds so far.
fn plan(buf: &[u8], side: Side) -> Result<Plan, String> {
    let Some(len) = be_u32(buf, 0) else {
        return Ok(Plan::Need(5));
    };
    if len == 0 {
        return Err("empty packet".into());
    }
    if len > MAX_PACKET {
        return Err(format!(
            "declared packet length {len} exceeds the limit of {MAX_PACKET}"
        ));
    }
    let Some(&kind) = buf.get(4) else {
        return Ok(Plan::Need(5));
    };
    let total = 4 + len as usize;
    let keep = match (side, kind) {
        // length, type, id, handle length; then the handle, offset and data length.
        (Side::Client, fxp::WRITE) => match be_u32(buf, 9) {
            None => 13,
            Some(handle) if handle as usize > MAX_HANDLE => {
                return Err("WRITE packet: handle longer than 256 bytes".into());
            }
            Some(handle) => 13 + handle as usize + 12,
        },
        (
            Side::Client,
            fxp::OPEN
            | fxp::CLOSE
            | fxp::READ
            | fxp::SETSTAT
            | fxp::FSETSTAT
            | fxp::REMOVE
            | fxp::MKDIR
            | fxp::RMDIR
            | fxp::RENAME
            | fxp::SYMLINK
            | fxp::EXTENDED
            | fxp::OPENDIR
            | fxp::FSTAT
            | fxp::READDIR,
        ) => total,
        // Any other request: length, type, id (INIT: its version), held until answered.
        (Side::Client, _) => 9,
        // length, type, version
        (Side::Server, fxp::VERSION) => 9,
        // length, type, id, status code / data length
        (Side::Server, fxp::STATUS | fxp::DATA) => 13,
        (Side::Server, fxp::HANDLE) => total,
        // length, type, id: the rest (a directory's names, attributes) is skipped as it streams past.
        (Side::Server, fxp::NAME | fxp::ATTRS | fxp::EXTENDED_REPLY) => 9,
        _ => 5,
    };
    if keep > total {
        return Err(format!(
            "{} packet: {len} bytes is too short",
            packet_name(kind)
        ));
    }
    Ok(if buf.len() < keep {
        Plan::Need(keep)
    } else {
        Plan::Ready { len, kind }
    })
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Reads SFTP fields (big-endian integers, length-prefixed strings) off the front of a packet.
#[derive(Debug, Clone, Copy)]
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err("a field runs past the end of its packet");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.u32()?;
        self.take(len as usize)
    }
}

/// Writes [`TransferEvent`]s to a JSON-lines file with a running digest, one line per event:
/// `{"t":12.5,"event":"file","path":"/tmp/fw.bin","direction":"upload","bytes":1048576,"outcome":"ok"}`,
/// `t` being seconds since the session started. Files, flushing, the size cap and errors work as for
/// [`CastWriter`](crate::CastWriter).
#[derive(Debug)]
pub struct TransferLog {
    /// The file, its running digest and its size cap.
    sink: HashedFile,
    /// Reused buffer for one encoded line.
    line: Vec<u8>,
}

#[derive(Serialize)]
struct LogLine<'a> {
    t: f64,
    #[serde(flatten)]
    event: &'a TransferEvent,
}

impl TransferLog {
    /// Creates the log file (never overwriting one; mode 0600 on unix).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            sink: HashedFile::create(path.as_ref())?,
            line: Vec::new(),
        })
    }

    /// Refuses, with [`Error::CapExceeded`](crate::Error::CapExceeded), any line that would make the file
    /// larger than `max_bytes`.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.sink.set_max_bytes(max_bytes);
        self
    }

    /// Appends one event that happened `at` after the session started.
    pub fn record(&mut self, at: Duration, event: &TransferEvent) -> Result<()> {
        self.line.clear();
        let line = LogLine {
            t: seconds(at),
            event,
        };
        serde_json::to_writer(&mut self.line, &line).map_err(io::Error::from)?;
        self.line.push(b'\n');
        self.sink.write_record(&self.line)
    }

    /// Hands every written line to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.sink.flush()
    }

    /// Flushes, fsyncs and closes the file, returning its digest.
    pub fn finish(self) -> Result<Finished> {
        self.sink.finish()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    // Encoders for hand-built SFTP packets.
    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(body);
        out
    }
    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }
    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }
    fn id_and(kind: u8, id: u32, rest: &[&[u8]]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        for part in rest {
            body.extend_from_slice(part);
        }
        packet(kind, &body)
    }
    fn init() -> Vec<u8> {
        packet(1, &3u32.to_be_bytes())
    }
    fn version(v: u32) -> Vec<u8> {
        packet(
            fxp::VERSION,
            &cat(&[
                &v.to_be_bytes(),
                &string(b"limits@openssh.com"),
                &string(b"1"),
            ]),
        )
    }
    fn open(id: u32, path: &str, pflags: u32) -> Vec<u8> {
        let attrs = 0u32.to_be_bytes();
        id_and(
            fxp::OPEN,
            id,
            &[&string(path.as_bytes()), &pflags.to_be_bytes(), &attrs],
        )
    }
    fn handle_reply(id: u32, handle: &[u8]) -> Vec<u8> {
        id_and(fxp::HANDLE, id, &[&string(handle)])
    }
    fn write(id: u32, handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
        id_and(
            fxp::WRITE,
            id,
            &[&string(handle), &offset.to_be_bytes(), &string(data)],
        )
    }
    fn read(id: u32, handle: &[u8], offset: u64, len: u32) -> Vec<u8> {
        id_and(
            fxp::READ,
            id,
            &[&string(handle), &offset.to_be_bytes(), &len.to_be_bytes()],
        )
    }
    fn data(id: u32, data: &[u8]) -> Vec<u8> {
        id_and(fxp::DATA, id, &[&string(data)])
    }
    fn close(id: u32, handle: &[u8]) -> Vec<u8> {
        id_and(fxp::CLOSE, id, &[&string(handle)])
    }
    fn status(id: u32, code: u32) -> Vec<u8> {
        id_and(
            fxp::STATUS,
            id,
            &[&code.to_be_bytes(), &string(b"msg"), &string(b"")],
        )
    }
    fn path_op(kind: u8, id: u32, path: &str) -> Vec<u8> {
        id_and(kind, id, &[&string(path.as_bytes())])
    }
    fn two_paths(kind: u8, id: u32, a: &str, b: &str) -> Vec<u8> {
        id_and(kind, id, &[&string(a.as_bytes()), &string(b.as_bytes())])
    }
    fn extended(id: u32, name: &str, args: &[&str]) -> Vec<u8> {
        let mut parts = vec![string(name.as_bytes())];
        parts.extend(args.iter().map(|a| string(a.as_bytes())));
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        id_and(fxp::EXTENDED, id, &refs)
    }

    use Side::{Client as C, Server as S};

    /// A session as OpenSSH's sftp would run it: upload, download, and a few operations.
    fn session() -> Vec<(Side, Vec<u8>)> {
        let h1: &[u8] = b"\0\0\0\x01";
        let h2: &[u8] = b"\0\0\0\x02";
        vec![
            (C, init()),
            (S, version(3)),
            (C, path_op(16, 1, ".")), // REALPATH: ignored
            (
                S,
                id_and(
                    104,
                    1,
                    &[
                        &1u32.to_be_bytes(),
                        &string(b"/home/v"),
                        &string(b"/home/v"),
                        &0u32.to_be_bytes(),
                    ],
                ),
            ),
            (C, open(2, "/tmp/fw.bin", 0x02 | 0x08 | 0x10)),
            (S, handle_reply(2, h1)),
            (C, write(3, h1, 0, &[7; 1000])),
            (C, write(4, h1, 1000, &[8; 234])),
            (S, status(3, 0)),
            (S, status(4, 0)),
            (
                C,
                id_and(fxp::FSETSTAT, 5, &[&string(h1), &0u32.to_be_bytes()]),
            ),
            (S, status(5, 0)),
            (C, close(6, h1)),
            (S, status(6, 0)),
            (C, open(7, "/var/log/dev.log", 0x01)),
            (S, handle_reply(7, h2)),
            (C, read(8, h2, 0, 32768)),
            (C, read(9, h2, 32768, 32768)),
            (S, data(8, &[1; 32768])),
            (S, data(9, &[2; 100])),
            (C, read(10, h2, 32868, 32768)),
            (S, status(10, 1)), // EOF
            (C, close(11, h2)),
            (S, status(11, 0)),
            (C, open(12, "/etc/shadow", 0x01)),
            (S, status(12, 3)),
            (C, path_op(fxp::REMOVE, 13, "/tmp/old.bin")),
            (S, status(13, 0)),
            (C, two_paths(fxp::RENAME, 14, "/tmp/a", "/tmp/b")),
            (S, status(14, 4)),
            (
                C,
                extended(15, "posix-rename@openssh.com", &["/tmp/c", "/tmp/d"]),
            ),
            (S, status(15, 0)),
            (
                C,
                id_and(fxp::MKDIR, 16, &[&string(b"/tmp/dir"), &0u32.to_be_bytes()]),
            ),
            (S, status(16, 0)),
            (C, path_op(fxp::RMDIR, 17, "/tmp/dir")),
            (S, status(17, 0)),
            (
                C,
                id_and(
                    fxp::SETSTAT,
                    18,
                    &[
                        &string(b"/tmp/b"),
                        &4u32.to_be_bytes(),
                        &0o644u32.to_be_bytes(),
                    ],
                ),
            ),
            (S, status(18, 0)),
            (C, two_paths(fxp::SYMLINK, 19, "/tmp/b", "/tmp/link")),
            (S, status(19, 0)),
            (
                C,
                extended(20, "hardlink@openssh.com", &["/tmp/b", "/tmp/hard"]),
            ),
            (S, status(20, 0)),
            (C, extended(21, "statvfs@openssh.com", &["/"])),
            (S, id_and(201, 21, &[&[0; 88]])),
            (C, open(22, "/tmp/partial", 0x02 | 0x08)),
            (S, handle_reply(22, h1)),
            (C, write(23, h1, 0, &[9; 10])),
            (C, path_op(fxp::REMOVE, 24, "/tmp/never-answered")),
        ]
    }

    fn expected_events() -> Vec<TransferEvent> {
        use TransferEvent::{File, Op};
        let op = |op, path: &str, target: Option<&str>, outcome| Op {
            op,
            path: path.into(),
            target: target.map(Into::into),
            outcome,
        };
        vec![
            op(OpKind::SetStat, "/tmp/fw.bin", None, Outcome::Ok),
            File {
                path: "/tmp/fw.bin".into(),
                direction: Direction::Upload,
                bytes: 1234,
                outcome: Outcome::Ok,
                open: Some(1),
                target: None,
            },
            File {
                path: "/var/log/dev.log".into(),
                direction: Direction::Download,
                bytes: 32868,
                outcome: Outcome::Ok,
                open: Some(3),
                target: None,
            },
            File {
                path: "/etc/shadow".into(),
                direction: Direction::Download,
                bytes: 0,
                outcome: Outcome::Failed { status: 3 },
                open: None,
                target: None,
            },
            op(OpKind::Remove, "/tmp/old.bin", None, Outcome::Ok),
            op(
                OpKind::Rename,
                "/tmp/a",
                Some("/tmp/b"),
                Outcome::Failed { status: 4 },
            ),
            op(OpKind::Rename, "/tmp/c", Some("/tmp/d"), Outcome::Ok),
            op(OpKind::Mkdir, "/tmp/dir", None, Outcome::Ok),
            op(OpKind::Rmdir, "/tmp/dir", None, Outcome::Ok),
            op(OpKind::SetStat, "/tmp/b", None, Outcome::Ok),
            op(OpKind::Symlink, "/tmp/link", Some("/tmp/b"), Outcome::Ok),
            op(OpKind::Hardlink, "/tmp/hard", Some("/tmp/b"), Outcome::Ok),
            // finish(): in the order opened or sent
            File {
                path: "/tmp/partial".into(),
                direction: Direction::Upload,
                bytes: 10,
                outcome: Outcome::Unfinished,
                open: Some(13),
                target: None,
            },
            op(
                OpKind::Remove,
                "/tmp/never-answered",
                None,
                Outcome::Unfinished,
            ),
        ]
    }

    /// Feeds the script, each packet cut into `chunk`-byte pieces (None: consecutive packets of one side
    /// joined into a single chunk), and returns every event including `finish`.
    fn run(script: &[(Side, Vec<u8>)], chunk: Option<usize>) -> (Vec<TransferEvent>, SftpObserver) {
        let mut observer = SftpObserver::new();
        let mut events = Vec::new();
        let feed = |observer: &mut SftpObserver, side: Side, bytes: &[u8]| match side {
            C => observer.client_to_server(bytes),
            S => observer.server_to_client(bytes),
        };
        match chunk {
            Some(size) => {
                for (side, bytes) in script {
                    for piece in bytes.chunks(size) {
                        events.extend(feed(&mut observer, *side, piece));
                    }
                }
            }
            None => {
                for group in script.chunk_by(|a, b| a.0 == b.0) {
                    let joined: Vec<u8> =
                        group.iter().flat_map(|(_, bytes)| bytes.clone()).collect();
                    events.extend(feed(&mut observer, group[0].0, &joined));
                }
            }
        }
        (events, observer)
    }

    fn run_and_finish(script: &[(Side, Vec<u8>)], chunk: Option<usize>) -> Vec<TransferEvent> {
        let (mut events, observer) = run(script, chunk);
        events.extend(observer.finish());
        events
    }

    /// A file opened to read and write (`READ|WRITE`, as `sftp`'s `reget`-style tools and paramiko's
    /// `open(path, "r+")` do), written a little and read a lot: the bytes read are a download, never
    /// counted into the upload, finished or not.
    #[test]
    fn a_file_opened_to_read_and_write_logs_its_reads_as_a_download() {
        let h: &[u8] = b"\0\0\0\x09";
        let file = |direction, bytes, outcome, open| TransferEvent::File {
            path: "/data/patients.db".into(),
            direction,
            bytes,
            outcome,
            open,
            target: None,
        };
        let mut script = vec![
            (C, init()),
            (S, version(3)),
            (C, open(2, "/data/patients.db", 0x01 | 0x02)),
            (S, handle_reply(2, h)),
            (C, write(3, h, 0, &[1; 10])),
            (S, status(3, 0)),
            (C, read(4, h, 0, 4096)),
            (S, data(4, &[2; 4096])),
            (C, read(5, h, 4096, 4096)),
            (S, data(5, &[3; 1000])),
        ];
        assert_eq!(
            run_and_finish(&script, None),
            [
                file(Direction::Upload, 10, Outcome::Unfinished, Some(1)),
                file(Direction::Download, 5096, Outcome::Unfinished, None),
            ]
        );
        script.extend([(C, close(6, h)), (S, status(6, 0))]);
        for chunk in [None, Some(1), Some(7)] {
            assert_eq!(
                run_and_finish(&script, chunk),
                [
                    file(Direction::Upload, 10, Outcome::Ok, Some(1)),
                    file(Direction::Download, 5096, Outcome::Ok, None),
                ]
            );
        }
    }

    #[test]
    fn a_session_gives_the_same_events_whole_byte_by_byte_and_in_odd_chunks() {
        let script = session();
        let expected = expected_events();
        assert_eq!(run_and_finish(&script, None), expected);
        assert_eq!(run_and_finish(&script, Some(1)), expected);
        assert_eq!(run_and_finish(&script, Some(7)), expected);
        assert_eq!(run_and_finish(&script, Some(usize::MAX)), expected);
        // Each file's `opened` line carries the number its `file` line ends; refused opens have none.
        let (_, mut observer) = run(&script, None);
        let opened: Vec<_> = observer
            .take_opened()
            .into_iter()
            .map(|e| match e {
                TransferEvent::Opened { path, open, .. } => (path, open),
                other => panic!("{other:?}"),
            })
            .collect();
        let ended: Vec<_> = expected
            .into_iter()
            .filter_map(|e| match e {
                TransferEvent::File {
                    path,
                    open: Some(n),
                    ..
                } => Some((path, Some(n))),
                _ => None,
            })
            .collect();
        assert_eq!(opened, ended);
    }

    /// Deterministic xorshift, so a failure reproduces.
    fn rng(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn corrupted_sessions_never_panic_and_chunking_never_changes_the_events() {
        let script = session();
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        let mut stopped = 0;
        for _ in 0..200 {
            let mut corrupted = script.clone();
            for _ in 0..1 + next() % 4 {
                let step = (next() % corrupted.len() as u64) as usize;
                let bytes = &mut corrupted[step].1;
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let whole = run_and_finish(&corrupted, None);
            let chunk = 1 + (next() % 13) as usize;
            assert_eq!(run_and_finish(&corrupted, Some(chunk)), whole);
            stopped += usize::from(
                whole
                    .iter()
                    .any(|e| matches!(e, TransferEvent::Unparseable { .. })),
            );
        }
        assert!((1..200).contains(&stopped), "{stopped} of 200 stopped");
    }

    #[test]
    fn a_big_write_in_7_byte_chunks_is_counted_exactly_without_buffering_it() {
        let handle: &[u8] = b"handle-0123456789";
        let payload = vec![0x5a; 200_001];
        let mut observer = SftpObserver::new();
        assert!(
            observer
                .client_to_server(&open(1, "/fw/image.bin", 0x1a))
                .is_empty()
        );
        assert!(
            observer
                .server_to_client(&handle_reply(1, handle))
                .is_empty()
        );
        let big = write(2, handle, 0, &payload);
        for piece in big.chunks(7) {
            assert!(observer.client_to_server(piece).is_empty());
            assert!(observer.client.buf.len() <= 13 + handle.len() + 12);
        }
        assert!(observer.client.buf.capacity() < 1024);
        assert!(observer.server_to_client(&status(2, 0)).is_empty());
        observer.client_to_server(&close(3, handle));
        assert_eq!(
            observer.server_to_client(&status(3, 0)),
            vec![TransferEvent::File {
                path: "/fw/image.bin".into(),
                direction: Direction::Upload,
                bytes: 200_001,
                outcome: Outcome::Ok,
                open: Some(1),
                target: None,
            }]
        );
        assert!(observer.finish().is_empty());
    }

    #[test]
    fn a_big_data_reply_is_skipped_not_buffered() {
        let mut observer = SftpObserver::new();
        observer.client_to_server(&open(1, "/dump", 0x01));
        observer.server_to_client(&handle_reply(1, b"h"));
        observer.client_to_server(&read(2, b"h", 0, 300_000));
        for piece in data(2, &vec![1; 300_000]).chunks(4096) {
            assert!(observer.server_to_client(piece).is_empty());
            assert!(observer.server.buf.len() <= 13);
        }
        observer.client_to_server(&close(3, b"h"));
        let events = observer.server_to_client(&status(3, 0));
        assert!(matches!(
            events[..],
            [TransferEvent::File { bytes: 300_000, .. }]
        ));
    }

    fn unparseable(events: &[TransferEvent]) -> &str {
        match events {
            [TransferEvent::Unparseable { reason }] => reason,
            other => panic!("expected one Unparseable, got {other:?}"),
        }
    }

    #[test]
    fn an_oversized_length_stops_parsing_once() {
        let mut observer = SftpObserver::new();
        observer.client_to_server(&open(1, "/a", 0x02));
        observer.server_to_client(&handle_reply(1, b"h"));
        let mut hostile = (MAX_PACKET + 1).to_be_bytes().to_vec();
        hostile.push(fxp::WRITE);
        let events = observer.client_to_server(&hostile);
        let reason = unparseable(&events);
        assert!(
            reason.starts_with("client to server: declared packet length"),
            "{reason}"
        );
        assert!(observer.is_stopped());
        // Nothing more is parsed, in either direction, and nothing is buffered.
        assert!(observer.client_to_server(&close(2, b"h")).is_empty());
        assert!(observer.server_to_client(&status(2, 0)).is_empty());
        assert_eq!(observer.client.buf.capacity(), 0);
        assert_eq!(
            observer.finish(),
            vec![TransferEvent::File {
                path: "/a".into(),
                direction: Direction::Upload,
                bytes: 0,
                outcome: Outcome::Unfinished,
                open: Some(1),
                target: None,
            }]
        );
    }

    #[test]
    fn an_oversized_length_is_caught_after_four_bytes() {
        let mut observer = SftpObserver::new();
        assert!(observer.server_to_client(&[0xff, 0xff, 0xff]).is_empty());
        unparseable(&observer.server_to_client(&[0xff]));
    }

    #[test]
    fn malformed_packets_stop_parsing() {
        let string_past_end = packet(
            fxp::OPEN,
            &cat(&[&1u32.to_be_bytes(), &100u32.to_be_bytes(), b"/short"]),
        );
        let long_handle = write(1, &[0; 257], 0, b"x");
        let lying_write = {
            let mut p = write(1, b"h", 0, b"abc");
            let n = p.len();
            p[n - 7..n - 3].copy_from_slice(&5u32.to_be_bytes()); // data length 5, 3 bytes follow
            p
        };
        let too_short_status = packet(fxp::STATUS, &1u32.to_be_bytes());
        let empty = 0u32.to_be_bytes().to_vec();
        for (side, bytes) in [
            (C, string_past_end),
            (C, long_handle),
            (C, lying_write),
            (S, too_short_status),
            (S, empty),
            (S, version(4)),
        ] {
            let (events, observer) = run(&[(side, bytes)], Some(1));
            unparseable(&events);
            assert!(observer.is_stopped());
        }
    }

    #[test]
    fn tracked_state_is_bounded() {
        let mut observer = SftpObserver::new();
        for id in 0..MAX_TRACKED as u32 {
            assert!(
                observer
                    .client_to_server(&path_op(fxp::REMOVE, id, "/x"))
                    .is_empty()
            );
        }
        unparseable(&observer.client_to_server(&path_op(fxp::REMOVE, u32::MAX, "/x")));
        assert_eq!(observer.tracker.pending.len(), MAX_TRACKED);

        let mut observer = SftpObserver::new();
        for id in 0..MAX_TRACKED as u32 {
            observer.client_to_server(&open(id, "/f", 0x01));
            assert!(
                observer
                    .server_to_client(&handle_reply(id, &id.to_be_bytes()))
                    .is_empty()
            );
        }
        observer.client_to_server(&open(u32::MAX, "/f", 0x01));
        unparseable(&observer.server_to_client(&handle_reply(u32::MAX, b"one too many")));
        assert_eq!(observer.finish().len(), MAX_TRACKED);
    }

    /// A request id reused while the first request awaits its reply stops the observer (the relay ends
    /// the session), and the first request is still reported: a decoy cannot take an operation's answer,
    /// nor 64 READs of one id pass as one.
    #[test]
    fn a_reused_request_id_stops_the_observer_and_hides_nothing() {
        let mut observer = SftpObserver::new();
        observer.client_to_server(&path_op(fxp::REMOVE, 7, "/evidence"));
        unparseable(&observer.client_to_server(&path_op(fxp::MKDIR, 7, "/decoy")));
        assert!(matches!(
            &observer.finish()[..],
            [TransferEvent::Op {
                op: OpKind::Remove,
                outcome: Outcome::Unfinished,
                ..
            }]
        ));

        let mut observer = SftpObserver::new();
        observer.client_to_server(&open(1, "/big.dcm", 0x01));
        observer.server_to_client(&handle_reply(1, b"h"));
        observer.client_to_server(&read(2, b"h", 0, 32768));
        unparseable(&observer.client_to_server(&read(2, b"h", 32768, 32768)));

        // A reply of the wrong kind for its request cannot be followed either.
        let mut observer = SftpObserver::new();
        observer.client_to_server(&path_op(fxp::REMOVE, 3, "/x"));
        unparseable(&observer.server_to_client(&data(3, b"abc")));
        // A WRITE's status answers the WRITE, not a READ that shares nothing with it.
        let mut observer = SftpObserver::new();
        observer.client_to_server(&open(1, "/up.bin", 0x02 | 0x08));
        observer.server_to_client(&handle_reply(1, b"h"));
        observer.client_to_server(&write(2, b"h", 0, b"hello"));
        unparseable(&observer.client_to_server(&read(2, b"h", 0, 5)));
    }

    /// A request on a handle the server has not given (guessed ahead of its HANDLE reply: OpenSSH's
    /// are small numbers, reused) or the client already closed, a file request on a directory's handle,
    /// and an OPEN reusing the id of a STAT still unanswered: each stops the observer (the relay
    /// refuses the chunk), so no byte moves that the log does not count for its file, and no reply
    /// passes for another request's.
    #[test]
    fn a_handle_not_given_or_closed_and_an_id_any_request_holds_stop_the_observer() {
        // A WRITE on a guessed handle, sent with its OPEN.
        let mut o = SftpObserver::new();
        o.client_to_server(&open(1, "/opt/app/updater", 0x02 | 0x08 | 0x10));
        unparseable(&o.client_to_server(&write(2, b"\0\0\0\0", 0, b"payload")));
        // A READ of a handle after its CLOSE was sent: the server may give it to the next OPEN.
        let mut o = SftpObserver::new();
        o.client_to_server(&open(1, "/tmp/a", 0x01));
        o.server_to_client(&handle_reply(1, b"h"));
        o.client_to_server(&close(2, b"h"));
        unparseable(&o.client_to_server(&read(3, b"h", 0, 10)));
        // A STAT's id taken by an OPEN: the STAT's "no such file" would pass as the OPEN's answer,
        // and the file's real handle as an answer to nothing.
        let mut o = SftpObserver::new();
        assert!(
            o.client_to_server(&path_op(17, 7, "/nonexistent"))
                .is_empty()
        );
        unparseable(&o.client_to_server(&open(7, "/data/patients.db", 0x01)));
        // A directory is listed and closed; reading its handle as a file cannot be followed.
        let mut o = SftpObserver::new();
        assert!(
            o.client_to_server(&path_op(fxp::OPENDIR, 1, "/var/log"))
                .is_empty()
        );
        assert!(o.server_to_client(&handle_reply(1, b"d")).is_empty());
        let readdir = id_and(fxp::READDIR, 2, &[&string(b"d")]);
        assert!(o.client_to_server(&readdir).is_empty());
        let names = id_and(fxp::NAME, 2, &[&0u32.to_be_bytes()]);
        assert!(o.server_to_client(&names).is_empty());
        unparseable(&o.client_to_server(&read(3, b"d", 0, 10)));
        // An ATTRS reply to an OPEN is not its answer.
        let mut o = SftpObserver::new();
        o.client_to_server(&open(1, "/f", 0x01));
        unparseable(&o.server_to_client(&id_and(fxp::ATTRS, 1, &[&0u32.to_be_bytes()])));
    }

    /// `copy-data` moves bytes on the server from one open file into another: logged as a copy, with
    /// the server's answer; its handles are held to the same rule as any other.
    #[test]
    fn a_copy_on_the_server_is_logged_with_both_files() {
        let mut o = SftpObserver::new();
        let mut events = Vec::new();
        events.extend(o.client_to_server(&open(1, "/etc/app.conf", 0x01)));
        events.extend(o.server_to_client(&handle_reply(1, b"r")));
        events.extend(o.client_to_server(&open(2, "/tmp/copy", 0x02 | 0x08)));
        events.extend(o.server_to_client(&handle_reply(2, b"w")));
        let copy = |id: u32, from: &[u8], into: &[u8]| {
            id_and(
                fxp::EXTENDED,
                id,
                &[
                    &string(b"copy-data"),
                    &string(from),
                    &0u64.to_be_bytes(),
                    &0u64.to_be_bytes(),
                    &string(into),
                    &0u64.to_be_bytes(),
                ],
            )
        };
        events.extend(o.client_to_server(&copy(3, b"r", b"w")));
        events.extend(o.server_to_client(&status(3, 0)));
        assert!(
            events.iter().any(|e| *e
                == TransferEvent::Op {
                    op: OpKind::Copy,
                    path: "/tmp/copy".into(),
                    target: Some("/etc/app.conf".into()),
                    outcome: Outcome::Ok,
                }),
            "{events:?}"
        );
        unparseable(&o.client_to_server(&copy(4, b"r", b"guessed")));
    }

    #[test]
    fn transfer_log_lines_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transfers.jsonl");
        let mut log = TransferLog::create(&path).unwrap();
        for (i, event) in expected_events().iter().enumerate() {
            log.record(Duration::from_millis(250 * i as u64), event)
                .unwrap();
        }
        log.record(
            Duration::from_secs(9),
            &TransferEvent::Unparseable { reason: "x".into() },
        )
        .unwrap();
        let done = log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(done.sha256_hex, crate::sha256_file(&path).unwrap());
        assert_eq!(done.bytes, text.len() as u64);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            r#"{"t":0.25,"event":"file","path":"/tmp/fw.bin","direction":"upload","bytes":1234,"outcome":"ok","open":1}"#
        );
        // Lines written before opens were numbered still read, unnumbered.
        assert_eq!(
            serde_json::from_str::<TransferEvent>(
                r#"{"event":"opened","path":"/a","direction":"download"}"#
            )
            .unwrap(),
            TransferEvent::Opened {
                path: "/a".into(),
                direction: Direction::Download,
                open: None,
                target: None,
            }
        );
        assert_eq!(
            lines[5],
            r#"{"t":1.25,"event":"op","op":"rename","path":"/tmp/a","target":"/tmp/b","outcome":{"failed":{"status":4}}}"#
        );
        assert_eq!(
            lines.last().unwrap(),
            &r#"{"t":9.0,"event":"unparseable","reason":"x"}"#
        );
        for (line, event) in lines.iter().zip(expected_events()) {
            assert_eq!(serde_json::from_str::<TransferEvent>(line).unwrap(), event);
        }
        assert!(matches!(
            TransferLog::create(&path),
            Err(crate::Error::Create { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists
        ));
    }

    /// A path of 200 KiB of invalid UTF-8, pipelined without reading replies: what the observer keeps
    /// and the log writes is bounded, and says how long the path was.
    #[test]
    fn a_huge_path_is_kept_bounded_and_says_its_length() {
        let mut o = SftpObserver::new();
        o.client_to_server(&init());
        o.server_to_client(&version(3));
        let huge = vec![0xffu8; 200 * 1024];
        for id in 1..=64 {
            o.client_to_server(&id_and(fxp::REMOVE, id, &[&string(&huge)]));
        }
        let left = o.finish();
        assert_eq!(left.len(), 64);
        for event in left {
            let TransferEvent::Op { path, .. } = event else {
                panic!("{event:?}")
            };
            assert!(path.len() <= MAX_PATH_TEXT + 32, "{}", path.len());
            assert!(path.ends_with("… [204800 bytes in all]"), "{path}");
        }
        assert_eq!(lossy("/ok/ü".as_bytes()), "/ok/ü");
        let long = "ü".repeat(MAX_PATH_TEXT);
        let kept = lossy(long.as_bytes());
        assert!(
            kept.starts_with("üü") && kept.ends_with(&format!("… [{} bytes in all]", long.len()))
        );
    }
}
