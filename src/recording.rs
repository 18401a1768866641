//! A live recording: the recorder's synchronous writers driven from a thread of their own, fed through a
//! bounded queue so the relay never waits on the disk for long and never gets ahead of it by more than
//! the queue.
//!
//! Entry points: [`Recording::cast`] (shells, and exec with a pty: asciicast v2), [`Recording::exec`]
//! (exec without a pty: the raw byte streams, framed) and [`Recording::transfers`] (sftp/scp, a transfer
//! log parsed from the SFTP packets). The relay calls [`RecordSender::send`] *before* it forwards the
//! bytes; an error means the recording is gone and the session must end ("no recording, no session").
//! [`Recording::finish`] returns the file's SHA-256.
//!
//! The size cap (`recording.max_bytes`) is kept by the sender, before anything is forwarded: each record
//! is charged the most bytes it can take in the file (its data, escaped as the format may escape it, plus
//! framing), and a record that would take the file past the cap is refused, so a session ends at its cap
//! with no byte relayed unrecorded. A recording can still *fail* (an I/O error, found by the thread after the
//! record was queued: the file is not vouched for) or *stop* (the writer's own cap, a backstop): then later
//! records are refused with the reason, [`RecordSender::halted`] completes, and for a stop the file is
//! finished and digested whole up to that point ([`Done::stopped`]). SFTP is parsed by the relay itself
//! (`live::SftpWatch`), so it can refuse a packet it cannot follow before forwarding it; the recorder writes
//! the events it is given.
//!
//! Why a thread and not a task: encoding, SHA-256 and write(2) are synchronous and, for bulk output, take
//! a core. On a tokio worker they would delay every other connection's handshakes and keepalives. The
//! thread is a plain `std::thread`, not `spawn_blocking`: a recording lives as long as its session, and
//! long-lived sessions must not use up the blocking pool. The queue ([`queue`]) has its slots as
//! semaphore permits, so the relay waits asynchronously when the disk is behind and the thread waits with
//! a timeout, which is what flushes a quiet recording within a second. Waking the thread is the relay's
//! to time: [`RecordSender::send`] queues the record before the chunk is forwarded, and the returned
//! [`Wake`] wakes the thread once the chunk is on its way (a keystroke's echo does not wait for a thread
//! wake-up on the other core).

mod queue;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};

use chaperone_recorder::{
    CastHeader, CastWriter, ExecHeader, ExecWriter, Finished, LineTracker, TransferEvent,
    TransferLog,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use queue::RecvError;
pub use queue::Wake;

/// Records queued for the writer at most; past that the relay waits (backpressure from the disk).
const QUEUE: usize = 16;
/// Longest time written data may sit in a buffer: a crash loses at most this.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How a session is recorded; `as_str` is the `recordings.format` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingFormat {
    /// Shells and exec with a pty: asciicast v2.
    Asciicast,
    /// Exec without a pty: stdout and stderr byte for byte (`chaperone_recorder::exec`).
    ExecStream,
    /// sftp and scp: the transfer log.
    TransferLog,
}

impl RecordingFormat {
    pub const ASCIICAST: &str = "asciicast-v2";
    pub const EXEC_STREAM: &str = "exec-stream-v1";
    pub const TRANSFER_LOG: &str = "transfer-log";

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingFormat::Asciicast => Self::ASCIICAST,
            RecordingFormat::ExecStream => Self::EXEC_STREAM,
            RecordingFormat::TransferLog => Self::TRANSFER_LOG,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            RecordingFormat::Asciicast => "cast",
            RecordingFormat::ExecStream => "exec",
            RecordingFormat::TransferLog => "sftp.jsonl",
        }
    }
}

/// Something to record.
#[derive(Debug)]
pub enum Record {
    /// Device → vendor: stdout (a cast shows it like stderr, as a terminal would).
    Output(Bytes),
    /// Device → vendor: stderr (extended data).
    Stderr(Bytes),
    /// Vendor → device: a terminal's keystrokes (recorded only when `recording.record_input` is on), a
    /// command's stdin (always recorded; see [`Recording::exec`]).
    Input(Bytes),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// A notice the bastion gave (an expiry warning, why the session closed). It is recorded as a
    /// marker labelled through `chaperone_recorder::notice_label`, so no device output can pass for one.
    Notice(String),
    /// The vendor pressed Enter: a terminal recording marks the next line the screen completes (the
    /// echoed command line), labelled with that line as shown; no keystroke is kept.
    Enter,
    /// What the relay's SFTP observer saw (transfers, operations, where it stopped following).
    Transfers(Vec<TransferEvent>),
}

/// Characters of a command line kept in its marker's label.
const ENTER_LABEL: usize = 200;

impl Record {
    /// The most bytes this record can take in a recording of `format`: its data as the format may escape
    /// it, plus the framing. The size cap is kept against this, before the record is forwarded.
    fn worst_case_bytes(&self, format: RecordingFormat) -> u64 {
        /// An event line's or frame's own bytes beyond its data (time, kind, brackets, quotes).
        const FRAMING: u64 = 48;
        let data = |n: usize| -> u64 {
            let n = n as u64;
            match format {
                // JSON escapes a control byte as \u00XX: six bytes for one.
                RecordingFormat::Asciicast | RecordingFormat::TransferLog => 6 * n + FRAMING,
                // A 13-byte frame head per MiB.
                RecordingFormat::ExecStream => {
                    n + 13 * (n / chaperone_recorder::exec::MAX_FRAME as u64 + 1)
                }
            }
        };
        match self {
            Record::Output(b) | Record::Stderr(b) | Record::Input(b) => data(b.len()),
            Record::Resize { .. } => FRAMING,
            Record::Notice(text) => {
                data(chaperone_recorder::marker::NOTICE_PREFIX.len() + text.len())
            }
            // The marker it may become: a label of up to ENTER_LABEL characters (4 bytes each).
            Record::Enter => {
                data(chaperone_recorder::marker::COMMAND_PREFIX.len() + 4 * ENTER_LABEL)
            }
            Record::Transfers(events) => events
                .iter()
                .map(|e| serde_json::to_vec(e).map_or(4096, |v| v.len() as u64) + FRAMING)
                .sum(),
        }
    }
}

/// Why recording stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("recording failed: {0}")]
pub struct RecordingFailed(pub String);

/// Whether this process can create recordings in `dir`: a file made there and removed. `serve` asks at
/// start (a directory it cannot write, e.g. outside the unit's `ReadWritePaths`, would refuse every
/// session) and `doctor` too.
pub fn probe_dir(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(
        ".chaperone-probe-{}",
        crate::secrets::random_hex(6)
    ));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"probe"));
    let removed = std::fs::remove_file(&probe);
    made.and(removed)
}

/// A finished recording: its digest, and why it stopped early if it did.
#[derive(Debug)]
pub struct Done {
    pub finished: Finished,
    /// Set when the recording stopped before the session's end (size cap, an SFTP stream it cannot
    /// parse): the file is whole and digested up to that point, and the session must end.
    pub stopped: Option<String>,
}

/// What one write asks of the driver.
enum Step {
    Continue,
    /// Finish the file now and refuse every later record with this reason.
    Stop(String),
}

impl From<chaperone_recorder::Error> for RecordingFailed {
    /// The error with its causes ("recording file I/O failed: No space left on device"): this text is the
    /// session's end reason and what the audit log keeps.
    fn from(e: chaperone_recorder::Error) -> Self {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        RecordingFailed(text)
    }
}

enum Writer {
    Cast {
        writer: CastWriter,
        input: bool,
        /// The line under the cursor, for the marker at each command line.
        line: Box<LineTracker>,
        /// Enter was pressed: the next line the output completes is a command line.
        enter: bool,
    },
    Exec {
        writer: ExecWriter,
        input: bool,
    },
    Transfers {
        log: TransferLog,
    },
    /// Fails its `fail_at`-th write: the driver's fail-closed path, tested without a broken disk.
    #[cfg(test)]
    Failing {
        writes: usize,
        fail_at: usize,
    },
}

impl Writer {
    /// Writes one record. The size cap and an SFTP stream the observer gave up on stop the recording
    /// (finished and digested); an I/O error fails it.
    fn write(&mut self, at: Duration, record: Record) -> Result<Step, RecordingFailed> {
        match self.write_inner(at, record) {
            Ok(step) => Ok(step),
            Err(e @ chaperone_recorder::Error::CapExceeded { .. }) => Ok(Step::Stop(e.to_string())),
            Err(e) => Err(RecordingFailed::from(e)),
        }
    }

    fn write_inner(&mut self, at: Duration, record: Record) -> chaperone_recorder::Result<Step> {
        match (self, record) {
            (
                Writer::Cast {
                    writer,
                    line,
                    enter,
                    ..
                },
                Record::Output(data) | Record::Stderr(data),
            ) => {
                let mut done = Vec::new();
                line.push(&data, &mut done);
                if *enter && let Some(command) = done.first() {
                    *enter = false;
                    let label: String = command.chars().take(ENTER_LABEL).collect();
                    if !label.trim().is_empty() {
                        // Before the output, so seeking to it shows the command line as typed.
                        writer.marker(at, &chaperone_recorder::command_label(&label))?;
                    }
                }
                writer.output(at, &data)?;
            }
            (Writer::Cast { line, enter, .. }, Record::Enter) => {
                *enter = !line.in_alternate_screen();
            }
            (
                Writer::Cast {
                    writer,
                    input: true,
                    ..
                },
                Record::Input(data),
            ) => writer.input(at, &data)?,
            (Writer::Cast { writer, .. }, Record::Resize { cols, rows }) => {
                writer.resize(at, cols, rows)?;
            }
            (Writer::Cast { writer, .. }, Record::Notice(text)) => {
                writer.marker(at, &chaperone_recorder::notice_label(&text))?
            }
            (Writer::Exec { writer, .. }, Record::Output(data)) => {
                writer.stdout_shared(at, data)?
            }
            (Writer::Exec { writer, .. }, Record::Stderr(data)) => {
                writer.stderr_shared(at, data)?
            }
            (
                Writer::Exec {
                    writer,
                    input: true,
                },
                Record::Input(data),
            ) => writer.input_shared(at, data)?,
            (Writer::Exec { writer, .. }, Record::Resize { cols, rows }) => {
                writer.resize(at, cols, rows)?;
            }
            (Writer::Exec { writer, .. }, Record::Notice(text)) => {
                writer.marker(at, &chaperone_recorder::notice_label(&text))?
            }
            (Writer::Transfers { log }, Record::Transfers(events)) => {
                for e in &events {
                    log.record(at, e)?;
                }
            }
            (Writer::Transfers { log }, Record::Notice(text)) => {
                log.record(at, &TransferEvent::Notice { text })?;
            }
            (Writer::Transfers { log }, Record::Stderr(data)) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                log.record(at, &TransferEvent::Stderr { text })?;
            }
            #[cfg(test)]
            (Writer::Failing { writes, fail_at }, _) => {
                *writes += 1;
                if *writes >= *fail_at {
                    return Err(std::io::Error::other("disk full (test)").into());
                }
            }
            // Input when not recording input; terminal events on a transfer log; SFTP bytes on a cast.
            _ => {}
        }
        Ok(Step::Continue)
    }

    fn flush(&mut self) -> chaperone_recorder::Result<()> {
        match self {
            Writer::Cast { writer, .. } => writer.flush(),
            Writer::Exec { writer, .. } => writer.flush(),
            Writer::Transfers { log, .. } => log.flush(),
            #[cfg(test)]
            Writer::Failing { .. } => Ok(()),
        }
    }

    fn finish(self) -> chaperone_recorder::Result<Finished> {
        match self {
            Writer::Cast { writer, .. } => writer.finish(),
            Writer::Exec { writer, .. } => writer.finish(),
            Writer::Transfers { log } => log.finish(),
            #[cfg(test)]
            Writer::Failing { .. } => Err(std::io::Error::other("never written (test)").into()),
        }
    }
}

/// One queued record; its permit is a queue slot, given back once the record is written.
struct Queued {
    at: Duration,
    record: Record,
    _slot: OwnedSemaphorePermit,
}

/// A recording being written.
#[derive(Debug)]
pub struct Recording {
    tx: queue::Sender<Queued>,
    /// The queue's free slots; closed when the thread stops, so a waiting relay learns of it.
    slots: Arc<Semaphore>,
    /// Why the thread stopped early, for the senders' error (set before `slots` is closed).
    stopped: Arc<OnceLock<String>>,
    /// Cancelled when the thread stops before the end (failed or stopped): the relay listens for it.
    halted: CancellationToken,
    /// The thread's result: the digest, or why recording failed.
    done: oneshot::Receiver<Result<Done, RecordingFailed>>,
    started: Instant,
    format: RecordingFormat,
    /// Whether what the vendor sends is recorded ([`RecordSender::records_input`]).
    input: bool,
    /// The cap and the bytes the senders have been charged against it.
    budget: Arc<Budget>,
}

/// The size cap as the senders keep it.
#[derive(Debug)]
struct Budget {
    max: Option<u64>,
    charged: AtomicU64,
}

impl Recording {
    /// Creates `path` (never overwriting) with the asciicast header, or fails: then the session is refused.
    pub fn cast(
        path: &Path,
        header: CastHeader,
        record_input: bool,
        max_bytes: Option<u64>,
    ) -> Result<Recording, RecordingFailed> {
        // This writer labels every marker through `command_label` / `notice_label`: it says so.
        let header = CastHeader {
            markers_attributed: true,
            ..header
        };
        let mut writer = CastWriter::create(path, header).map_err(RecordingFailed::from)?;
        let written = writer.bytes_written();
        if let Some(max) = max_bytes {
            writer = writer.with_max_bytes(max);
        }
        Recording::spawn(
            Writer::Cast {
                writer,
                input: record_input,
                line: Box::new(LineTracker::new()),
                enter: false,
            },
            RecordingFormat::Asciicast,
            max_bytes,
            written,
        )
    }

    /// Creates `path` (never overwriting) as an exec recording: stdout, stderr and stdin byte for byte.
    /// Its input is recorded whatever `recording.record_input` says: a command without a terminal reads
    /// a program's input (a script for `sh`, a file for `cat >`), not keystrokes at a password prompt,
    /// and what it runs must show in the record.
    pub fn exec(
        path: &Path,
        header: &ExecHeader,
        max_bytes: Option<u64>,
    ) -> Result<Recording, RecordingFailed> {
        let mut writer = ExecWriter::create(path, header).map_err(RecordingFailed::from)?;
        let written = writer.bytes_written();
        if let Some(max) = max_bytes {
            writer = writer.with_max_bytes(max);
        }
        Recording::spawn(
            Writer::Exec {
                writer,
                input: true,
            },
            RecordingFormat::ExecStream,
            max_bytes,
            written,
        )
    }

    /// Creates a transfer log at `path` for an sftp session.
    pub fn transfers(path: &Path, max_bytes: Option<u64>) -> Result<Recording, RecordingFailed> {
        let mut log = TransferLog::create(path).map_err(RecordingFailed::from)?;
        if let Some(max) = max_bytes {
            log = log.with_max_bytes(max);
        }
        Recording::spawn(
            Writer::Transfers { log },
            RecordingFormat::TransferLog,
            max_bytes,
            0,
        )
    }

    /// Starts the recorder thread for `writer` (whose file already holds `written` bytes).
    fn spawn(
        writer: Writer,
        format: RecordingFormat,
        max_bytes: Option<u64>,
        written: u64,
    ) -> Result<Recording, RecordingFailed> {
        let input = match &writer {
            Writer::Cast { input, .. } | Writer::Exec { input, .. } => *input,
            Writer::Transfers { .. } => false,
            #[cfg(test)]
            Writer::Failing { .. } => true,
        };
        let (tx, rx) = queue::channel::<Queued>();
        let slots = Arc::new(Semaphore::new(QUEUE));
        let stopped = Arc::new(OnceLock::new());
        let halted = CancellationToken::new();
        let halt = halted.clone();
        let (done_tx, done) = oneshot::channel();
        let started = Instant::now();
        let close = CloseOnDrop(slots.clone());
        let reason = stopped.clone();
        let queue = slots.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .stack_size(512 * 1024)
            .spawn(move || {
                // Dropped last, panic or not: senders waiting for a slot then fail instead of hanging.
                let _close = close;
                // A stop refuses later records at once, before the file is finished and synced.
                let stop = |why: &str| {
                    let _ = reason.set(why.to_owned());
                    queue.close();
                    halt.cancel();
                };
                let result = drive(writer, rx, stop);
                if let Err(e) = &result {
                    let _ = reason.set(e.0.clone());
                    halt.cancel();
                }
                let _ = done_tx.send(result);
            })
            .map_err(|e| RecordingFailed(format!("cannot start the recorder thread: {e}")))?;
        Ok(Recording {
            tx,
            slots,
            stopped,
            halted,
            done,
            started,
            format,
            input,
            budget: Arc::new(Budget {
                max: max_bytes,
                charged: AtomicU64::new(written),
            }),
        })
    }

    /// A sender for the relay's tasks (one per direction).
    pub fn sender(&self) -> RecordSender {
        RecordSender {
            tx: self.tx.clone(),
            slots: self.slots.clone(),
            stopped: self.stopped.clone(),
            halted: self.halted.clone(),
            started: self.started,
            format: self.format,
            input: self.input,
            budget: self.budget.clone(),
        }
    }

    /// Closes the recording and returns its digest; fails if any write failed. Every [`RecordSender`]
    /// must be dropped first: the thread finishes the file when the queue has no sender left.
    pub async fn finish(self) -> Result<Done, RecordingFailed> {
        drop(self.tx);
        self.done.await.unwrap_or_else(|_| {
            Err(RecordingFailed(
                "the recorder thread ended abnormally".into(),
            ))
        })
    }
}

/// Closes the queue's semaphore when the recorder thread ends.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The recorder thread: writes records as they come, several per wakeup when they queue up, and flushes
/// what it wrote within [`FLUSH_EVERY`] of the first unflushed record (the writers flush a busy one
/// themselves); with nothing to flush it sleeps until the next record.
/// Returns when every sender is gone (then the file is finished), when a write stops the recording (the
/// file is finished too, with the reason), or at the first error.
fn drive(
    mut writer: Writer,
    rx: queue::Receiver<Queued>,
    on_stop: impl FnOnce(&str),
) -> Result<Done, RecordingFailed> {
    // When the oldest record not yet flushed was written; none: nothing to flush, so the thread sleeps
    // until the next record (an idle session's recorder costs no wakeups; a bastion holds hundreds).
    let mut unflushed_since: Option<Instant> = None;
    let mut stopped = None;
    'records: loop {
        let next =
            rx.recv(unflushed_since.map(|since| FLUSH_EVERY.saturating_sub(since.elapsed())));
        match next {
            Ok(first) => {
                // What queued up meanwhile too, without sleeping in between; bounded, so a relay that
                // keeps the queue full cannot keep this loop from its flush check.
                let more = std::iter::from_fn(|| rx.try_recv()).take(QUEUE);
                for next in std::iter::once(first).chain(more) {
                    if let Step::Stop(why) = writer.write(next.at, next.record)? {
                        on_stop(&why);
                        stopped = Some(why);
                        break 'records;
                    }
                }
                unflushed_since.get_or_insert_with(Instant::now);
            }
            Err(RecvError::Timeout) => {}
            Err(RecvError::Disconnected) => break,
        }
        if unflushed_since.is_some_and(|since| since.elapsed() >= FLUSH_EVERY) {
            writer.flush().map_err(RecordingFailed::from)?;
            unflushed_since = None;
        }
    }
    let finished = writer.finish().map_err(RecordingFailed::from)?;
    Ok(Done { finished, stopped })
}

impl RecordSender {
    /// Completes when the recording failed or stopped before its end (a write error, the writer's cap):
    /// the session must end even if nothing more is sent.
    pub async fn halted(&self) -> RecordingFailed {
        self.halted.cancelled().await;
        RecordingFailed(
            self.stopped
                .get()
                .cloned()
                .unwrap_or_else(|| "the recorder stopped".into()),
        )
    }
}

/// Feeds a [`Recording`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordSender {
    tx: queue::Sender<Queued>,
    slots: Arc<Semaphore>,
    stopped: Arc<OnceLock<String>>,
    halted: CancellationToken,
    started: Instant,
    format: RecordingFormat,
    input: bool,
    budget: Arc<Budget>,
}

impl RecordSender {
    /// Whether the recording keeps what the vendor sends ([`Record::Input`]): a terminal's keystrokes
    /// when `recording.record_input` is on, a command's stdin always. The relay asks this, so the rule
    /// is the recording's own.
    pub fn records_input(&self) -> bool {
        self.input
    }

    /// The format of the recording it feeds.
    pub fn format(&self) -> RecordingFormat {
        self.format
    }

    /// Queues `record`, waiting for a free slot when the recorder is behind; an error means the
    /// recording failed and the session must end. The recorder thread, if it sleeps, is woken when the
    /// returned [`Wake`] is dropped: the relay forwards the chunk first ([`Wake::after`]).
    pub async fn send(&self, record: Record) -> Result<Wake, RecordingFailed> {
        if let Some(max) = self.budget.max {
            let cost = record.worst_case_bytes(self.format);
            let charged = self
                .budget
                .charged
                .fetch_add(cost, Ordering::Relaxed)
                .saturating_add(cost);
            if charged > max {
                return Err(RecordingFailed(format!(
                    "the recording reached its size cap of {max} bytes"
                )));
            }
        }
        let at = self.started.elapsed();
        let stopped = || {
            RecordingFailed(
                self.stopped
                    .get()
                    .cloned()
                    .unwrap_or_else(|| "the recorder stopped".into()),
            )
        };
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| stopped())?;
        self.tx
            .send(Queued {
                at,
                record,
                _slot: slot,
            })
            .map_err(|_| stopped())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn exec_header() -> ExecHeader {
        ExecHeader {
            timestamp: 0,
            title: None,
            command: Some("cat".into()),
            env: BTreeMap::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_reach_the_file_in_order_with_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.exec");
        let recording = Recording::exec(&path, &exec_header(), None).unwrap();
        let sender = recording.sender();
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let chunk = Bytes::from(i.to_le_bytes().repeat(100));
            expected.extend_from_slice(&chunk);
            sender.send(Record::Output(chunk)).await.unwrap();
        }
        sender
            .send(Record::Stderr(Bytes::from_static(b"e")))
            .await
            .unwrap();
        drop(sender);
        let done = recording.finish().await.unwrap();
        assert!(done.stopped.is_none());
        let done = done.finished;
        assert_eq!(
            done.sha256_hex,
            chaperone_recorder::sha256_file(&path).unwrap()
        );
        let mut raw = Vec::new();
        let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        chaperone_recorder::exec_raw(file, chaperone_recorder::OutputStream::Stdout, &mut raw)
            .unwrap();
        assert_eq!(raw, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_recording_is_flushed_within_about_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.exec");
        let recording = Recording::exec(&path, &exec_header(), None).unwrap();
        let header_len = std::fs::metadata(&path).unwrap().len();
        let sender = recording.sender();
        sender
            .send(Record::Output(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        let deadline = Instant::now() + FLUSH_EVERY * 3;
        while std::fs::metadata(&path).unwrap().len() == header_len {
            assert!(Instant::now() < deadline, "not flushed after 3 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), header_len + 13 + 5);
        drop(sender);
        recording.finish().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_error_fails_the_senders_and_the_finish() {
        let recording = Recording::spawn(
            Writer::Failing {
                writes: 0,
                fail_at: 3,
            },
            RecordingFormat::ExecStream,
            None,
            0,
        )
        .unwrap();
        let sender = recording.sender();
        let mut failed_at = None;
        // More sends than the queue holds: a relay waiting for a slot must be released, not hang.
        for i in 0..(QUEUE * 4) {
            if sender
                .send(Record::Output(Bytes::from_static(b"x")))
                .await
                .is_err()
            {
                failed_at = Some(i);
                break;
            }
        }
        assert!(failed_at.is_some(), "no send failed");
        // The relay is told even when it sends nothing more.
        let halted = tokio::time::timeout(Duration::from_secs(5), sender.halted())
            .await
            .unwrap();
        assert!(halted.0.contains("disk full (test)"), "{}", halted.0);
        drop(sender);
        let err = recording.finish().await.unwrap_err();
        assert!(err.0.contains("disk full (test)"), "{}", err.0);
    }

    /// Sends until a send fails; returns the error.
    async fn send_until_refused(sender: &RecordSender, record: impl Fn() -> Record) -> String {
        for _ in 0..10_000 {
            if let Err(e) = sender.send(record()).await {
                return e.0;
            }
        }
        panic!("no send was refused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_size_cap_refuses_a_record_before_it_is_forwarded_and_the_file_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.exec");
        let recording = Recording::exec(&path, &exec_header(), Some(10_000)).unwrap();
        let sender = recording.sender();
        let why = send_until_refused(&sender, || {
            Record::Output(Bytes::from_static(&[b'x'; 1000]))
        })
        .await;
        assert!(why.contains("size cap"), "{why}");
        drop(sender);
        // Refused by the sender: the recorder itself never stopped, and the file is within the cap.
        let done = recording.finish().await.unwrap();
        assert!(done.stopped.is_none());
        assert!(done.finished.bytes <= 10_000);
        assert_eq!(
            done.finished.sha256_hex,
            chaperone_recorder::sha256_file(&path).unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cast_is_charged_its_worst_case_so_it_never_passes_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let header = CastHeader {
            width: 80,
            height: 24,
            timestamp: 0,
            title: None,
            command: None,
            env: std::collections::BTreeMap::new(),
            markers_attributed: false,
        };
        let recording = Recording::cast(&path, header, false, Some(20_000)).unwrap();
        let sender = recording.sender();
        // Control bytes: each takes six in the file.
        send_until_refused(&sender, || Record::Output(Bytes::from_static(&[1u8; 500]))).await;
        drop(sender);
        let done = recording.finish().await.unwrap();
        assert!(
            done.stopped.is_none(),
            "the writer's own cap was reached first"
        );
        assert!(done.finished.bytes <= 20_000, "{}", done.finished.bytes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transfer_log_keeps_events_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sftp.jsonl");
        let recording = Recording::transfers(&path, None).unwrap();
        let sender = recording.sender();
        sender
            .send(Record::Stderr(Bytes::from_static(
                b"sftp-server: warning\n",
            )))
            .await
            .unwrap();
        sender
            .send(Record::Transfers(vec![TransferEvent::Unparseable {
                reason: "test".into(),
            }]))
            .await
            .unwrap();
        drop(sender);
        let done = recording.finish().await.unwrap();
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(log.contains("\"event\":\"stderr\""), "{log}");
        assert!(log.contains("\"event\":\"unparseable\""), "{log}");
        assert_eq!(
            done.finished.sha256_hex,
            chaperone_recorder::sha256_file(&path).unwrap()
        );
    }
}
