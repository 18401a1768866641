//! A live recording: the recorder's synchronous writers driven from their own task, fed through a
//! bounded queue so the relay never waits on the disk for long and never gets ahead of it by more than
//! the queue.
//!
//! Entry points: [`Recording::cast`] (terminal and exec sessions, asciicast v2) and
//! [`Recording::transfers`] (sftp/scp, a transfer log parsed from the SFTP packets). The relay calls
//! [`Recording::send`] *before* it forwards the bytes; an error means the recording is gone and the
//! session must end ("no recording, no session"). [`Recording::finish`] returns the file's SHA-256.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaperone_recorder::{CastHeader, CastWriter, Finished, SftpObserver, TransferLog};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events queued for the writer at most; past that the relay waits (backpressure from the disk).
const QUEUE: usize = 16;
/// Longest time written data may sit in a buffer: a crash loses at most this.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Something to record.
#[derive(Debug)]
pub enum Record {
    /// Device → vendor terminal output (stdout and stderr alike, as a terminal shows them).
    Output(Bytes),
    /// Vendor → device keystrokes; recorded only when `recording.record_input` is on.
    Input(Bytes),
    Resize {
        cols: u16,
        rows: u16,
    },
    Marker(String),
    /// Raw SFTP bytes, vendor → device (`true`) or device → vendor.
    Sftp {
        upload: bool,
        data: Bytes,
    },
}

/// Why recording stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("recording failed: {0}")]
pub struct RecordingFailed(pub String);

enum Writer {
    Cast {
        writer: CastWriter,
        input: bool,
    },
    Transfers {
        log: TransferLog,
        observer: Option<SftpObserver>,
    },
}

impl Writer {
    fn write(&mut self, at: Duration, record: Record) -> chaperone_recorder::Result<()> {
        match (self, record) {
            (Writer::Cast { writer, .. }, Record::Output(data)) => writer.output(at, &data),
            (
                Writer::Cast {
                    writer,
                    input: true,
                },
                Record::Input(data),
            ) => writer.input(at, &data),
            (Writer::Cast { writer, .. }, Record::Resize { cols, rows }) => {
                writer.resize(at, cols, rows)
            }
            (Writer::Cast { writer, .. }, Record::Marker(label)) => writer.marker(at, &label),
            (Writer::Transfers { log, observer }, Record::Sftp { upload, data }) => {
                let Some(obs) = observer.as_mut() else {
                    return Ok(());
                };
                let events = if upload {
                    obs.client_to_server(&data)
                } else {
                    obs.server_to_client(&data)
                };
                for e in &events {
                    log.record(at, e)?;
                }
                Ok(())
            }
            // Input when not recording input; terminal events on a transfer log; SFTP bytes on a cast.
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> chaperone_recorder::Result<()> {
        match self {
            Writer::Cast { writer, .. } => writer.flush(),
            Writer::Transfers { log, .. } => log.flush(),
        }
    }

    fn finish(self, at: Duration) -> chaperone_recorder::Result<Finished> {
        match self {
            Writer::Cast { writer, .. } => writer.finish(),
            Writer::Transfers { mut log, observer } => {
                if let Some(obs) = observer {
                    for e in obs.finish() {
                        log.record(at, &e)?;
                    }
                }
                log.finish()
            }
        }
    }
}

/// A recording being written.
#[derive(Debug)]
pub struct Recording {
    tx: mpsc::Sender<(Duration, Record)>,
    task: JoinHandle<Result<Finished, RecordingFailed>>,
    started: Instant,
    path: PathBuf,
}

impl Recording {
    /// Creates `path` (never overwriting) with the asciicast header, or fails: then the session is refused.
    pub fn cast(
        path: &Path,
        header: CastHeader,
        record_input: bool,
    ) -> Result<Recording, RecordingFailed> {
        let writer =
            CastWriter::create(path, header).map_err(|e| RecordingFailed(e.to_string()))?;
        Ok(Recording::spawn(
            path,
            Writer::Cast {
                writer,
                input: record_input,
            },
        ))
    }

    /// Creates a transfer log at `path` for an sftp session.
    pub fn transfers(path: &Path) -> Result<Recording, RecordingFailed> {
        let log = TransferLog::create(path).map_err(|e| RecordingFailed(e.to_string()))?;
        Ok(Recording::spawn(
            path,
            Writer::Transfers {
                log,
                observer: Some(SftpObserver::new()),
            },
        ))
    }

    fn spawn(path: &Path, mut writer: Writer) -> Recording {
        let (tx, mut rx) = mpsc::channel::<(Duration, Record)>(QUEUE);
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some((at, record)) => writer.write(at, record).map_err(|e| RecordingFailed(e.to_string()))?,
                        None => break,
                    },
                    _ = flush.tick() => writer.flush().map_err(|e| RecordingFailed(e.to_string()))?,
                }
            }
            writer
                .finish(started.elapsed())
                .map_err(|e| RecordingFailed(e.to_string()))
        });
        Recording {
            tx,
            task,
            started,
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A sender for the relay's tasks (one per direction).
    pub fn sender(&self) -> RecordSender {
        RecordSender {
            tx: self.tx.clone(),
            started: self.started,
        }
    }

    /// Closes the recording and returns its digest; fails if any write failed.
    pub async fn finish(self) -> Result<Finished, RecordingFailed> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(RecordingFailed(format!(
                "recorder task ended abnormally: {e}"
            ))),
        }
    }
}

/// Feeds a [`Recording`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordSender {
    tx: mpsc::Sender<(Duration, Record)>,
    started: Instant,
}

impl RecordSender {
    /// Queues `record`; an error means the recording failed and the session must end.
    pub async fn send(&self, record: Record) -> Result<(), RecordingFailed> {
        self.tx
            .send((self.started.elapsed(), record))
            .await
            .map_err(|_| RecordingFailed("the recorder stopped".into()))
    }
}
