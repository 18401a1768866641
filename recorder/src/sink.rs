//! Append-only recording files that hash what they write: the storage under
//! [`CastWriter`](crate::CastWriter) and [`TransferLog`](crate::TransferLog).
//!
//! Entry points: [`Finished`], returned when a recording is closed, [`sha256_file`], which recomputes the
//! digest of a file on disk to verify it, and [`Sha256Reader`], which hashes a file while it is read for
//! export. SHA-256 is `ring`'s (SHA-NI/AVX2 where the CPU has them). A file is created with `create_new` and mode 0600 (a recording is
//! never overwritten and only chaperone's user reads it), buffered, flushed by the first write that comes
//! more than `FLUSH_INTERVAL` after the previous flush, so a crash loses about a second, and fsynced when
//! finished.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ring::digest::{Context, SHA256};

use crate::error::{Error, Result};

/// Longest time written records may sit in the buffer while writes keep coming.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Write buffer size: large enough that bulk terminal output costs few syscalls. A full buffer goes to the
/// file's writer thread, so encoding and hashing the next one overlaps with the copy into the page cache.
const BUFFER_SIZE: usize = 256 * 1024;

/// Full buffers that may wait for the writer thread; past that, writing records waits (backpressure from
/// the disk). At most `QUEUED + 2` buffers exist per file.
const QUEUED: usize = 2;

/// Longest time written bytes may sit in the page cache before the writer thread asks the disk to keep
/// them (`fdatasync`), so a power loss takes at most about this much of a live recording (plus
/// [`FLUSH_INTERVAL`] in the buffer) rather than the kernel's whole writeback window.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Shared data at least this long is queued as it is; shorter pieces are copied into the buffer.
const SHARE_MIN: usize = 4096;

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

/// A file's device, inode, size and modification and change times, to the nanosecond. A write to the
/// file, a rename of another file over it, or a `touch` changes at least one of them, and the change
/// time cannot be set back by a user program; a recording whose stamp is unchanged since it was hashed
/// need not be hashed again to show it intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    /// The file's size in bytes then.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The stamp of a file's metadata; `None` where the platform does not give inode and change time
    /// (then nothing is remembered and every check hashes).
    pub fn of(meta: &std::fs::Metadata) -> Option<FileStamp> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
            Some(FileStamp {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            None
        }
    }
}

/// SHA-256 of a file, lowercase hex, read in a streaming fashion (to verify a recording against its
/// [`Finished::sha256_hex`]).
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    Ok(Sha256Reader::new(File::open(path)?).finish_hex()?)
}

/// A running SHA-256 (ring's `Context` has no `Debug`; this prints only its name).
#[derive(Clone)]
pub(crate) struct Hasher(Context);

impl Hasher {
    pub(crate) fn new() -> Self {
        Self(Context::new(&SHA256))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest so far, lowercase hex; the hasher starts again from nothing.
    pub(crate) fn take_hex(&mut self) -> String {
        hex::encode(std::mem::replace(self, Self::new()).0.finish())
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher(SHA-256)")
    }
}

/// A reader that computes the SHA-256 of every byte read through it: an export checks that what it
/// converted is the file the digest vouches for, with no window between checking and reading.
#[derive(Debug)]
pub struct Sha256Reader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Sha256Reader<R> {
    /// Wraps `inner`; nothing is read yet.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Reads the rest of the input, so the digest covers all of it, and returns the digest as lowercase hex.
    pub fn finish_hex(mut self) -> io::Result<String> {
        let mut buf = vec![0; 256 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.hasher.take_hex())
    }
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that computes the SHA-256 of every byte written through it (what an export put into its
/// archive).
#[derive(Debug)]
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Sha256Writer<W> {
    /// Wraps `inner`; nothing is written yet.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// The digest of what was written, lowercase hex, and `inner`.
    pub fn finish_hex(mut self) -> (String, W) {
        (self.hasher.take_hex(), self.inner)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A new file written record by record, with a running digest of exactly the bytes handed to it.
///
/// Records are hashed and appended to a buffer on the caller's thread; full buffers are written by a
/// thread of the file's own ([`WriterThread`]), in order. A write error there poisons the file: the next
/// call (at the latest [`flush`](Self::flush) or [`finish`](Self::finish)) returns it.
#[derive(Debug)]
pub(crate) struct HashedFile {
    /// Reported back in [`Finished`].
    path: PathBuf,
    /// Records not yet handed to the writer thread, in order: frozen pieces of `small` and shared data.
    pieces: Vec<Bytes>,
    /// Small parts (frame heads, encoded lines, short data) copied together, not yet in `pieces`.
    small: BytesMut,
    /// Bytes in `pieces` and `small`.
    pending: usize,
    /// `None` once finished or after the thread failed.
    writer: Option<WriterThread>,
    /// Digest of every byte queued for the file, so finishing needs no second read of it.
    hasher: Hasher,
    /// Bytes written so far, checked against `max_bytes`.
    bytes: u64,
    max_bytes: Option<u64>,
    /// When the file was last flushed to the operating system.
    last_flush: Instant,
    /// Set while a write is under way and left set if it fails: after a failed write the file may hold part
    /// of a record the digest never saw, so every later call is refused.
    poisoned: bool,
}

/// What the writer thread is asked to do.
enum Job {
    /// Append these pieces in order, then hand the emptied list back for reuse.
    Write(Vec<Bytes>),
    /// Everything sent before is in the file: say so.
    Sync(SyncSender<()>),
}

/// The thread that appends full buffers to the file, so that the copy into the page cache runs beside
/// the encoding and hashing of the next records.
#[derive(Debug)]
struct WriterThread {
    jobs: SyncSender<Job>,
    /// Written lists, emptied, to be filled again.
    spare: Receiver<Vec<Bytes>>,
    /// The file when the thread ends normally; the write error otherwise.
    /// Shared with the syncer thread while a sync of it runs.
    handle: JoinHandle<io::Result<Arc<File>>>,
}

impl WriterThread {
    /// Starts the thread for `file`, created just now at `path`.
    fn spawn(file: File, path: PathBuf) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUED);
        let (give_back, spare) = mpsc::channel::<Vec<Bytes>>();
        let file = Arc::new(file);
        let handle = std::thread::Builder::new()
            .name("recording-writer".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut durable = Durable::new(file.clone(), path);
                loop {
                    match queue.recv_timeout(durable.wait()) {
                        Ok(Job::Write(mut pieces)) => {
                            write_all_vectored(&file, &pieces)?;
                            durable.written()?;
                            pieces.clear();
                            let _ = give_back.send(pieces);
                        }
                        Ok(Job::Sync(done)) => {
                            let _ = done.send(());
                        }
                        Err(RecvTimeoutError::Timeout) => durable.tick()?,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                durable.finish()?;
                Ok(file)
            })?;
        Ok(Self {
            jobs,
            spare,
            handle,
        })
    }

    /// Stops the thread after it has written everything queued; returns the file or the first error.
    fn join(self) -> io::Result<Arc<File>> {
        drop(self.jobs);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the recording writer thread panicked")))
    }
}

/// Makes a file durable as it grows: bytes written are handed to the process's one syncer thread
/// ([`syncer`]) for `fdatasync` once they are [`SYNC_INTERVAL`] old, whether more writes follow or not,
/// with the new file's directory entry on the first sync, so the file itself survives a power loss too.
/// The writer thread never waits for the disk: a sync runs beside its writes (a disk slower than the
/// stream delays the syncs, never the relay), and a file gets a new sync only when its last one is done.
/// A sync that fails fails the file at the writer thread's next step.
struct Durable {
    file: Arc<File>,
    /// Where it was created: at each sync and at the end it must still be the file there
    /// ([`still_in_place`]).
    path: Arc<PathBuf>,
    /// The directory to sync once, with the first sync; `None` after.
    dir: Option<PathBuf>,
    /// Since when written bytes have been waiting for a sync; `None` when all are handed over.
    unsynced_since: Option<Instant>,
    state: Arc<SyncState>,
}

/// A file's sync as the syncer thread and its writer thread share it.
#[derive(Default)]
struct SyncState {
    in_flight: AtomicBool,
    failed: Mutex<Option<io::Error>>,
}

/// A sync asked of the syncer thread.
struct SyncJob {
    file: Arc<File>,
    path: Arc<PathBuf>,
    dir: Option<PathBuf>,
    state: Arc<SyncState>,
}

/// Syncs asked and not yet taken by the syncer thread; past that a file asks again at its next step.
const SYNCS_QUEUED: usize = 4096;

/// The process's syncer thread, started with the first recording; `None` if it could not start (each
/// file then syncs on its own writer thread).
fn syncer() -> Option<&'static SyncSender<SyncJob>> {
    static SYNCER: OnceLock<Option<SyncSender<SyncJob>>> = OnceLock::new();
    SYNCER
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<SyncJob>(SYNCS_QUEUED);
            std::thread::Builder::new()
                .name("recording-sync".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    for job in rx {
                        job.run();
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

impl SyncJob {
    fn run(self) {
        let result = self
            .file
            .sync_data()
            .and_then(|()| self.dir.as_deref().map_or(Ok(()), sync_dir))
            .and_then(|()| still_in_place(&self.file, &self.path));
        if let Err(e) = result {
            *self.state.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        self.state.in_flight.store(false, Ordering::Release);
    }
}

/// Fails unless `file` is still the file at `path`: a recording removed (its writes would go to a file
/// nobody can read) or replaced (another file is where its digest will be checked) while it is written
/// is a recording that failed, and fails its session (no recording, no session).
fn still_in_place(file: &File, path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let open = file.metadata()?;
        let same = match std::fs::symlink_metadata(path) {
            Ok(t) => t.dev() == open.dev() && t.ino() == open.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            // Cannot tell (permissions, a stale network mount): not taken for a removal.
            Err(_) => true,
        };
        if open.nlink() == 0 || !same {
            return Err(io::Error::other(format!(
                "the recording file {} was removed or replaced while it was written",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}

impl Durable {
    /// For `file`, created just now at `path`.
    fn new(file: Arc<File>, path: PathBuf) -> Self {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        Self {
            file,
            path: Arc::new(path),
            dir: Some(dir),
            unsynced_since: None,
            state: Arc::default(),
        }
    }

    /// How long the writer thread may wait for its next job before a sync is due.
    fn wait(&self) -> Duration {
        match self.unsynced_since {
            Some(since) => SYNC_INTERVAL
                .saturating_sub(since.elapsed())
                // Due but the last sync is still running: look again shortly.
                .max(Duration::from_millis(100)),
            // Nothing to sync: only the next job wakes the thread.
            None => Duration::from_secs(3600),
        }
    }

    /// Bytes were written: hand over a sync if the oldest unsynced ones are due.
    fn written(&mut self) -> io::Result<()> {
        self.unsynced_since.get_or_insert_with(Instant::now);
        self.tick()
    }

    /// A failed sync's error; else hands over a sync if the oldest unsynced bytes are due and the
    /// file's last sync is done.
    fn tick(&mut self) -> io::Result<()> {
        if let Some(e) = self
            .state
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(e);
        }
        match self.unsynced_since {
            Some(since)
                if since.elapsed() >= SYNC_INTERVAL
                    && !self.state.in_flight.load(Ordering::Acquire) =>
            {
                self.hand_over();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn hand_over(&mut self) {
        let job = SyncJob {
            file: self.file.clone(),
            path: self.path.clone(),
            dir: self.dir.take(),
            state: self.state.clone(),
        };
        self.state.in_flight.store(true, Ordering::Release);
        match syncer() {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => self.unsynced_since = None,
                // The syncer is behind: keep the bytes marked and ask again at the next step.
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    self.dir = job.dir;
                    self.state.in_flight.store(false, Ordering::Release);
                }
            },
            None => {
                job.run();
                self.unsynced_since = None;
            }
        }
    }

    /// The file is complete: waits for a sync still running (its error would be reported to it alone:
    /// the kernel tells a write-back error once per open file), reports a failed one, and makes the
    /// directory entry durable if no sync did yet. The caller then syncs the data with `sync_all`.
    fn finish(&mut self) -> io::Result<()> {
        while self.state.in_flight.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(e) = self
            .state
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(e);
        }
        if let Some(dir) = self.dir.take() {
            sync_dir(&dir)?;
        }
        still_in_place(&self.file, &self.path)
    }
}

/// Asks the disk to keep `dir`'s entries (a file created in it). Unix only: elsewhere a directory
/// cannot be opened for this, and the file's own sync is what there is.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes every piece in order with as few `writev` calls as the kernel allows.
fn write_all_vectored(mut file: &File, pieces: &[Bytes]) -> io::Result<()> {
    /// At most this many pieces per call (Linux's IOV_MAX is 1024).
    const MAX_IOV: usize = 1024;
    for group in pieces.chunks(MAX_IOV) {
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Why the writer thread stopped taking jobs: its write error, or a panic.
fn thread_error(writer: WriterThread) -> Error {
    match writer.join() {
        Err(e) => Error::Io(e),
        Ok(_) => Error::Io(io::Error::other("the recording writer thread stopped")),
    }
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
        // Held (an advisory lock) until the file is closed, so a node's sweep that finds the session
        // abandoned does not digest a file its writer is still writing (recordings on shared storage,
        // a node stalled past the liveness window). Best effort: a filesystem without locks records
        // all the same, and the process's death releases it.
        let _ = file.try_lock();
        Ok(Self {
            path: path.to_owned(),
            pieces: Vec::new(),
            small: BytesMut::with_capacity(BUFFER_SIZE),
            pending: 0,
            writer: Some(WriterThread::spawn(file, path.to_owned())?),
            hasher: Hasher::new(),
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
        self.write_parts(&[record])
    }

    /// Appends one whole record given in pieces (a frame header and its data, without copying them
    /// together first), or nothing if it would pass the size cap.
    pub(crate) fn write_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.write_record_of(parts, None)
    }

    /// Appends one whole record: `head`, then `data`, which is queued for the file as it is (no copy)
    /// when it is long enough to be worth it; or nothing if it would pass the size cap.
    pub(crate) fn write_shared(&mut self, head: &[u8], data: Bytes) -> Result<()> {
        self.write_record_of(&[head], Some(data))
    }

    fn write_record_of(&mut self, parts: &[&[u8]], shared: Option<Bytes>) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let len = parts.iter().map(|p| p.len() as u64).sum::<u64>()
            + shared.as_ref().map_or(0, |d| d.len() as u64);
        if let Some(max_bytes) = self.max_bytes
            && self.bytes.saturating_add(len) > max_bytes
        {
            return Err(Error::CapExceeded { max_bytes });
        }
        self.poisoned = true;
        for part in parts {
            self.small.extend_from_slice(part);
            self.hasher.update(part);
        }
        if let Some(data) = shared {
            self.hasher.update(&data);
            if data.len() >= SHARE_MIN {
                self.seal_small();
                self.pieces.push(data);
            } else {
                self.small.extend_from_slice(&data);
            }
        }
        self.bytes += len;
        self.pending += usize::try_from(len).unwrap_or(usize::MAX);
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.poisoned = false;
            return self.flush();
        }
        if self.pending >= BUFFER_SIZE {
            self.hand_over()?;
        }
        self.poisoned = false;
        Ok(())
    }

    /// Moves what `small` holds to the end of `pieces`.
    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.pieces.push(self.small.split().freeze());
        }
    }

    /// Sends the pending pieces to the writer thread (blocks while `QUEUED` lists are waiting).
    fn hand_over(&mut self) -> Result<()> {
        self.seal_small();
        let Some(writer) = self.writer.as_ref() else {
            return Err(Error::Poisoned);
        };
        let next = writer.spare.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.pieces, next);
        self.pending = 0;
        if self.small.capacity() < SHARE_MIN {
            // Frozen pieces still use the old allocation until written: start a new one.
            self.small = BytesMut::with_capacity(BUFFER_SIZE);
        }
        if writer.jobs.send(Job::Write(full)).is_err() {
            return Err(self.writer.take().map_or(Error::Poisoned, thread_error));
        }
        Ok(())
    }

    /// Hands everything buffered to the operating system, and waits until it has it.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.poisoned = true;
        if self.pending > 0 {
            self.hand_over()?;
        }
        let Some(writer) = self.writer.as_ref() else {
            return Err(Error::Poisoned);
        };
        let (done, synced) = mpsc::sync_channel(1);
        if writer.jobs.send(Job::Sync(done)).is_err() || synced.recv().is_err() {
            return Err(self.writer.take().map_or(Error::Poisoned, thread_error));
        }
        self.last_flush = Instant::now();
        self.poisoned = false;
        Ok(())
    }

    /// Flushes, fsyncs and closes the file, returning its digest.
    pub(crate) fn finish(mut self) -> Result<Finished> {
        self.flush()?;
        let writer = self.writer.take().ok_or(Error::Poisoned)?;
        let file = writer.join()?;
        file.sync_all()?;
        Ok(Finished {
            path: std::mem::take(&mut self.path),
            sha256_hex: self.hasher.take_hex(),
            bytes: self.bytes,
        })
    }
}

impl Drop for HashedFile {
    /// Like a `BufWriter` dropped without `finish`: what was recorded reaches the file (best effort, errors
    /// ignored), and the writer thread is gone when this returns.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            if !self.poisoned && self.pending > 0 {
                self.seal_small();
                let _ = writer
                    .jobs
                    .send(Job::Write(std::mem::take(&mut self.pieces)));
            }
            let _ = writer.join();
        }
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
    use sha2::{Digest, Sha256};

    /// A recording's file removed, or replaced by another, while it is written fails it at the next
    /// sync and at its end.
    #[cfg(unix)]
    #[test]
    fn a_file_removed_or_replaced_while_written_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let file = Arc::new(File::create(&path).unwrap());
        still_in_place(&file, &path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(still_in_place(&file, &path).is_err(), "removed");
        std::fs::write(&path, b"forged").unwrap();
        assert!(still_in_place(&file, &path).is_err(), "replaced");
        let mut durable = Durable::new(file.clone(), path.clone());
        assert!(durable.finish().is_err());
        // The syncer's job says so to the writer thread's next step.
        let state = Arc::new(SyncState::default());
        SyncJob {
            file,
            path: Arc::new(path),
            dir: None,
            state: state.clone(),
        }
        .run();
        assert!(state.failed.lock().unwrap().is_some());
    }

    /// Written bytes are handed to the syncer once they are SYNC_INTERVAL old and not before, the
    /// directory with the first sync, never a second sync of a file while its first runs; the writer
    /// thread's wait ends when the next sync is due.
    #[test]
    fn written_bytes_are_synced_once_due_with_the_directory_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("x")).unwrap());
        let mut durable = Durable::new(file, dir.path().join("x"));
        assert!(
            durable.wait() > SYNC_INTERVAL,
            "nothing to sync: no wake-up"
        );
        durable.written().unwrap();
        assert!(
            durable.unsynced_since.is_some() && durable.dir.is_some(),
            "not yet due"
        );
        assert!(durable.wait() <= SYNC_INTERVAL);
        durable.unsynced_since = Some(Instant::now() - SYNC_INTERVAL);
        assert_eq!(durable.wait(), Duration::from_millis(100));
        durable.tick().unwrap();
        assert!(
            durable.unsynced_since.is_none() && durable.dir.is_none(),
            "handed over"
        );
        // New bytes wait their turn, and for the sync before them to end.
        durable.written().unwrap();
        assert!(durable.unsynced_since.is_some());
        let state = durable.state.clone();
        assert!(
            wait_for(|| !state.in_flight.load(Ordering::Acquire)),
            "the sync ran"
        );
        state.in_flight.store(true, Ordering::Release);
        durable.unsynced_since = Some(Instant::now() - SYNC_INTERVAL);
        durable.tick().unwrap();
        assert!(
            durable.unsynced_since.is_some(),
            "not handed over while one runs"
        );
        state.in_flight.store(false, Ordering::Release);
        durable.tick().unwrap();
        assert!(durable.unsynced_since.is_none());
        // A failed sync fails the file at its next step.
        assert!(wait_for(|| !state.in_flight.load(Ordering::Acquire)));
        *state.failed.lock().unwrap() = Some(io::Error::other("EIO"));
        assert_eq!(durable.tick().unwrap_err().to_string(), "EIO");
    }

    fn wait_for(done: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

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
    fn many_buffers_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut file = HashedFile::create(&path).unwrap();
        let mut expected = Vec::new();
        for i in 0..60_000u32 {
            let record = format!("{i}:{}\n", "z".repeat((i % 97) as usize));
            file.write_record(record.as_bytes()).unwrap();
            expected.extend_from_slice(record.as_bytes());
            if i == 7_000 {
                file.flush().unwrap();
                assert_eq!(
                    std::fs::metadata(&path).unwrap().len(),
                    expected.len() as u64
                );
            }
        }
        assert!(expected.len() > BUFFER_SIZE * (QUEUED + 3));
        let done = file.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(done.sha256_hex, hex::encode(Sha256::digest(&expected)));
    }

    #[test]
    fn vectored_writes_keep_order_past_the_iovec_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let pieces: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(format!("{i};").repeat((i % 7) as usize)))
            .collect();
        let file = File::create(&path).unwrap();
        write_all_vectored(&file, &pieces).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), pieces.concat());
    }

    #[test]
    fn shared_and_copied_parts_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut file = HashedFile::create(&path).unwrap();
        let mut expected = Vec::new();
        for i in 0..400u32 {
            let head = i.to_le_bytes();
            let data = Bytes::from(vec![(i % 251) as u8; (i as usize * 997) % 20_000]);
            expected.extend_from_slice(&head);
            expected.extend_from_slice(&data);
            file.write_shared(&head, data).unwrap();
            if i % 50 == 0 {
                file.write_record(b"-").unwrap();
                expected.push(b'-');
            }
        }
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn dropping_without_finish_keeps_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut file = HashedFile::create(&path).unwrap();
        file.write_record(b"kept\n").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept\n");
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
