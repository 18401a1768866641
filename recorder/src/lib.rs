//! Session recordings for chaperone: terminal sessions as asciicast v2, exec sessions without a terminal as
//! a framed byte stream, file transfers as a JSON-lines log, each with a SHA-256 digest computed while it
//! is written.
//!
//! Entry points: [`CastWriter`] and [`parse_cast`] (module [`asciicast`]); [`ExecWriter`], [`ExecReader`],
//! [`exec_to_cast`] and [`exec_raw`] (module [`exec`]); [`SftpObserver`] and [`TransferLog`] (module
//! [`transfer`]); [`sha256_file`] and [`Sha256Reader`] to check a file against its stored digest;
//! [`TerminalFilter`] (module [`terminal_filter`]) to play a recording's output in a real terminal
//! without what acts outside the screen (clipboard, titles, links, queries the terminal answers);
//! [`LineTracker`] (module [`transcript`]) for the lines of text a person saw, [`screen_text`] for what a
//! full-screen program showed, and module [`playback`] to play a recording in a browser segment by segment;
//! [`TarWriter`] and [`TarReader`] (module [`tar`]) for evidence bundles; module [`marker`] for who a
//! marker's label speaks for (a bastion notice or a device-shown command line).
//!
//! Every writer is synchronous `std::io`, meant to run off the async runtime, and every write returns an
//! error the caller acts on: chaperone ends a session it cannot record.
//!
//! Architecture Invariant: this crate knows nothing of SSH or SQL; it sees bytes, times and paths.

pub mod asciicast;
pub mod emulator;
mod error;
pub mod exec;
pub mod marker;
pub mod playback;
mod rep_bound;
pub mod scp;
pub mod screen_text;
mod sink;
pub mod tar;
pub mod terminal_filter;
pub mod transcript;
pub mod transfer;

pub use asciicast::{
    Cast, CastHeader, CastReader, CastWriter, Event, EventKind, MAX_COLS, MAX_ROWS, Utf8Stream,
    bounded_size, parse_cast,
};
pub use error::{Error, Result};
pub use exec::{
    CutOff, ExecHeader, ExecReader, ExecWriter, Exported, Frame, FrameData, OutputStream,
    exec_cast_into, exec_raw, exec_to_cast,
};
pub use marker::{MarkerKind, command_label, notice_label};
pub use scp::{ScpCommand, ScpMode, ScpObserver, scp_command, scp_mode};
pub use sink::{FileStamp, Finished, Sha256Reader, Sha256Writer, sha256_file};
pub use tar::{EntryHeader, EntryKind, EntryWriter, TarError, TarReader, TarWriter};
pub use terminal_filter::TerminalFilter;
pub use transcript::LineTracker;
pub use transfer::{Direction, OpKind, Outcome, SftpObserver, TransferEvent, TransferLog};
