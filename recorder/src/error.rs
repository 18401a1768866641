//! The crate's error type: what can go wrong creating, writing or reading a recording.
//!
//! Entry point: [`Error`]. Callers treat any error from a writer as the end of the recording, and so of the
//! session; [`Error::CapExceeded`] is the one they may want to tell apart.

use std::io;
use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the recording writers and readers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The recording file could not be created; recordings are created with `create_new`, so this is also
    /// the error when the file already exists (`source.kind()` is `AlreadyExists`).
    #[error("cannot create recording file {}", path.display())]
    Create {
        /// The file that was to be created.
        path: PathBuf,
        /// Why the operating system refused.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a recording file failed.
    #[error("recording file I/O failed")]
    Io(#[from] io::Error),
    /// Writing the next record would take the file past the cap set with `with_max_bytes`; nothing of that
    /// record was written and the file is still valid.
    #[error("recording reached its size cap of {max_bytes} bytes")]
    CapExceeded {
        /// The cap, in bytes.
        max_bytes: u64,
    },
    /// An earlier write or flush failed, so the file and its running digest may disagree; the writer
    /// refuses further use.
    #[error("recording is unusable after an earlier I/O error")]
    Poisoned,
    /// The file is not a valid asciicast v2 recording.
    #[error("invalid asciicast v2 at line {line}: {reason}")]
    InvalidCast {
        /// 1-based line number (the header is line 1).
        line: u64,
        /// What is wrong with that line.
        reason: String,
    },
    /// The file is not a valid exec recording (`chaperone-exec v1`).
    #[error("invalid exec recording at byte {offset}: {reason}")]
    InvalidExec {
        /// Where the bad part starts: the header line, or the frame.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
}
