//! Append-only recording files that hash what they write: the storage under
//! [`CastWriter`](crate::CastWriter) and [`TransferLog`](crate::TransferLog).
//!
//! Entry points: [`Finished`], returned when a recording is closed, and [`sha256_file`], which recomputes the
//! digest of a file on disk to verify it. A file is created with `create_new` and mode 0600 (a recording is
//! never overwritten and only chaperone's user reads it), buffered, flushed by the first write that comes
//! more than `FLUSH_INTERVAL` after the previous flush, so a crash loses about a second, and fsynced when
//! finished.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest time written records may sit in the buffer while writes keep coming.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Write buffer size: large enough that bulk terminal output costs few syscalls.
const BUFFER_SIZE: usize = 64 * 1024;

/// A closed recording: where it is, its SHA-256 and its size, to be stored alongside the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The recording file.
    pub path: PathBuf,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256_hex: String,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// SHA-256 of a file, lowercase hex, read in a streaming fashion (to verify a recording against its
/// [`Finished::sha256_hex`]).
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let mut file = BufReader::with_capacity(BUFFER_SIZE, File::open(path)?);
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// A new file written record by record, with a running digest of exactly the bytes handed to it.
#[derive(Debug)]
pub(crate) struct HashedFile {
    /// Reported back in [`Finished`].
    path: PathBuf,
    out: BufWriter<File>,
    /// Digest of every byte given to `out`, so finishing needs no second read of the file.
    hasher: Sha256,
    /// Bytes written so far, checked against `max_bytes`.
    bytes: u64,
    max_bytes: Option<u64>,
    /// When `out` was last flushed to the operating system.
    last_flush: Instant,
    /// Set while a write is under way and left set if it fails: after a failed write the file may hold part
    /// of a record the digest never saw, so every later call is refused.
    poisoned: bool,
}

impl HashedFile {
    /// Creates `path`, failing if it exists; mode 0600 on unix.
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(|source| Error::Create {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(BUFFER_SIZE, file),
            hasher: Sha256::new(),
            bytes: 0,
            max_bytes: None,
            last_flush: Instant::now(),
            poisoned: false,
        })
    }

    pub(crate) fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = Some(max_bytes);
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends one whole record, or nothing if it would pass the size cap.
    pub(crate) fn write_record(&mut self, record: &[u8]) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let len = record.len() as u64;
        if let Some(max_bytes) = self.max_bytes
            && self.bytes.saturating_add(len) > max_bytes
        {
            return Err(Error::CapExceeded { max_bytes });
        }
        self.poisoned = true;
        self.out.write_all(record)?;
        self.hasher.update(record);
        self.bytes += len;
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.out.flush()?;
            self.last_flush = Instant::now();
        }
        self.poisoned = false;
        Ok(())
    }

    /// Hands everything buffered to the operating system.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.poisoned = true;
        self.out.flush()?;
        self.last_flush = Instant::now();
        self.poisoned = false;
        Ok(())
    }

    /// Flushes, fsyncs and closes the file, returning its digest.
    pub(crate) fn finish(mut self) -> Result<Finished> {
        self.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(Finished {
            path: self.path,
            sha256_hex: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        })
    }
}

/// Seconds as written in recordings: microsecond precision, so at most 6 decimals once printed (an integer
/// number of microseconds divided by 10^6 prints as its shortest decimal form, e.g. `1.5` or `0.000123`).
pub(crate) fn seconds(at: Duration) -> f64 {
    at.as_micros() as f64 / 1e6
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_file_and_an_independent_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut file = HashedFile::create(&path).unwrap();
        file.write_record(b"hello\n").unwrap();
        file.write_record(b"world\n").unwrap();
        let done = file.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, b"hello\nworld\n");
        assert_eq!(done.bytes, 12);
        assert_eq!(done.sha256_hex, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(sha256_file(&path).unwrap(), done.sha256_hex);
    }

    #[test]
    fn a_write_after_the_flush_interval_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut file = HashedFile::create(&path).unwrap();
        file.write_record(b"buffered\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // Pretend the last flush was long ago instead of sleeping.
        file.last_flush = Instant::now().checked_sub(FLUSH_INTERVAL * 2).unwrap();
        file.write_record(b"now\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 13);
    }

    #[test]
    fn cap_refuses_the_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut file = HashedFile::create(&path).unwrap();
        file.set_max_bytes(10);
        file.write_record(b"12345\n").unwrap();
        assert!(matches!(
            file.write_record(b"67890\n"),
            Err(Error::CapExceeded { max_bytes: 10 })
        ));
        file.write_record(b"abc\n").unwrap();
        let done = file.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"12345\nabc\n");
        assert_eq!(done.bytes, 10);
    }

    #[test]
    fn seconds_have_at_most_six_decimals() {
        let text = |d| serde_json::to_string(&seconds(d)).unwrap();
        assert_eq!(text(Duration::from_millis(1500)), "1.5");
        assert_eq!(text(Duration::from_nanos(1_234_567_890)), "1.234567");
        assert_eq!(text(Duration::from_micros(123)), "0.000123");
        assert_eq!(text(Duration::ZERO), "0.0");
        assert_eq!(
            text(Duration::from_secs(86_400 * 30) + Duration::from_micros(999_999)),
            "2592000.999999"
        );
    }
}
