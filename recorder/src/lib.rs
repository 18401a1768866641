//! Session recordings for chaperone: terminal sessions as asciicast v2, file transfers as a JSON-lines log,
//! each with a SHA-256 digest computed while it is written.
//!
//! Entry points: [`CastWriter`] and [`parse_cast`] (module [`asciicast`]); [`SftpObserver`] and
//! [`TransferLog`] (module [`transfer`]); [`sha256_file`] to check a finished file against its stored digest.
//!
//! Every writer is synchronous `std::io`, meant to run off the async runtime, and every write returns an
//! error the caller acts on: chaperone ends a session it cannot record.
//!
//! Architecture Invariant: this crate knows nothing of SSH or SQL; it sees bytes, times and paths.

pub mod asciicast;
mod error;
mod sink;
pub mod transfer;

pub use asciicast::{Cast, CastHeader, CastReader, CastWriter, Event, EventKind, parse_cast};
pub use error::{Error, Result};
pub use sink::{Finished, sha256_file};
pub use transfer::{Direction, OpKind, Outcome, SftpObserver, TransferEvent, TransferLog};
