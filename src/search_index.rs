//! The indexer: after a recording closed, what a person saw in it becomes searchable (the full-text
//! indexes of migrations 0010 and 0014: chunks of lines for the transcript, long parts of words for
//! the session search) and playable in the browser segment by segment (the playback index).
//!
//! Entry points: [`run`] (the background task of `serve`: at once when this process closed a recording
//! (`App::recording_closed`), and every few seconds for what other nodes or a crash left, it indexes the
//! closed recordings nobody indexed yet) and [`Indexer::index_pending`] (the same, once, for tests and the
//! benchmark). [`Indexer::seal_playback`]/[`Indexer::open_playback`] bind a playback index to the digest it was
//! built from, under a key derived from the secrets key.
//!
//! Why a job and not `LiveSession::end`: reading a recording back takes as long as the recording is
//! large (seconds for hundreds of megabytes), and an end must stay quick and hold nothing; a job also
//! picks up what an end never reached (a crash, a recording a node sweep recovered, recordings made
//! before this index existed), and runs on every node but only indexes files in its own recordings
//! directory (the node that wrote a recording has it). It never touches the relay: it reads closed
//! files on a thread of its own at the lowest CPU priority (nice 19), one recording at a time, and writes
//! the index in short transactions; on a busy bastion the sessions come first and the index catches up.
//!
//! Only what the audit chain vouches for is indexed: the file is hashed while it is read, and a digest
//! other than the vouched one marks the recording `failed` (altered) instead of indexing it.

use std::collections::HashSet;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chaperone_recorder::FileStamp;
use chaperone_recorder::playback::{self, Format, Index, Stream};
use chaperone_recorder::transcript::words;
use ring::hmac;
use tokio::sync::{mpsc, oneshot, watch};

use crate::app::App;
use crate::evidence::{Evidence, open_recording};
use crate::model::{RecordingRow, UnixTime};
use crate::recording::RecordingFormat;
use crate::secrets::SecretsKey;
use crate::store::{
    IndexClaim, IndexRow, NewTextChunk, NewWordsPart, PART_CHARS, PART_WORDS, Store, StoreError,
};

/// Lines per chunk of text, at most.
const CHUNK_LINES: usize = 200;
/// Characters per chunk of text, about.
const CHUNK_CHARS: usize = 32 * 1024;
/// Chunks (and parts) per write transaction.
const CHUNKS_PER_TX: usize = 8;
/// Lines of text indexed per recording at least; more as the file is larger ([`FILE_BYTES_PER_LINE`]).
const MIN_TEXT_LINES: i64 = 100_000;
/// A recording's lines indexed at most: one per this many bytes of its file. Each line is stored with its
/// time and words in two indexes: an exec printing one-character lines made a database ~18 times its
/// recording; ordinary lines hold far more than this many bytes each.
const FILE_BYTES_PER_LINE: u64 = 8;
/// How often the indexer looks for closed recordings when nothing nudges it.
const POLL: Duration = Duration::from_secs(5);

/// Why a recording was not indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking pass stopped abnormally.
    #[error("the indexing thread failed")]
    Thread,
}

/// What happened to one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Indexed {
        lines: i64,
    },
    /// Marked failed, with why.
    Failed(String),
    /// Left for later or for another node (not vouched for yet, not in this node's directory, claimed).
    Skipped,
}

/// The background task: indexes closed recordings until `stop` turns true. A change notice (a session
/// ended on this node) wakes it; otherwise it looks every few seconds.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let indexer = Indexer::new(&app.store, &app.config.recording.dir, &app.secrets)
        .remembering(app.proven.clone());
    let mut elsewhere = HashSet::new();
    loop {
        match indexer.index_some(app.clock.now(), &mut elsewhere).await {
            Ok(0) => {}
            // More may be waiting: go on at once.
            Ok(_) => continue,
            Err(e) => tracing::warn!(error = ?e, "indexing recordings failed; retrying"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = app.recording_closed.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Indexes recordings: the store, this node's recordings directory, and the key that seals playback
/// indexes. Cheap to clone.
#[derive(Clone)]
pub struct Indexer {
    store: Store,
    dir: PathBuf,
    seal: PlaybackSeal,
    /// Where a recording read back whole to its vouched digest is remembered, so pages need not hash
    /// it again while its file stays as it was ([`Indexer::remembering`]).
    proven: Option<crate::evidence::proven::Proven>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Indexer {
    pub fn new(store: &Store, dir: &Path, secrets: &SecretsKey) -> Indexer {
        Indexer {
            store: store.clone(),
            dir: dir.to_owned(),
            seal: PlaybackSeal::new(secrets),
            proven: None,
        }
    }

    /// Remembers in `proven` each recording this indexer read whole to its vouched digest, with the
    /// file's stamp, when the file did not change while it was read. This is the one place a closed
    /// recording is first remembered: the recorder's own digest is taken from memory, so it cannot say
    /// whether someone else wrote to the file during the session.
    pub fn remembering(mut self, proven: crate::evidence::proven::Proven) -> Indexer {
        self.proven = Some(proven);
        self
    }

    /// Indexes every closed recording of this node's directory that is not indexed yet; how many it did.
    pub async fn index_pending(&self, now: UnixTime) -> Result<usize, IndexError> {
        let mut elsewhere = HashSet::new();
        let mut total = 0;
        loop {
            let n = self.index_some(now, &mut elsewhere).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// One batch; how many recordings were indexed or marked failed (skipped ones are remembered in
    /// `elsewhere` so they are not looked at again by this process).
    async fn index_some(
        &self,
        now: UnixTime,
        elsewhere: &mut HashSet<i64>,
    ) -> Result<usize, IndexError> {
        let todo = self
            .store
            .recordings_to_index(now, 64 + elsewhere.len() as i64)
            .await?;
        let mut done = 0;
        let todo: Vec<RecordingRow> = todo
            .into_iter()
            .filter(|r| !elsewhere.contains(&r.id))
            .collect();
        // Each recording is claimed at the time it is reached, not the batch's start: a claim dated
        // minutes back would look dead to every other indexer.
        let started = std::time::Instant::now();
        for r in todo {
            let now = now.saturating_add(i64::try_from(started.elapsed().as_secs()).unwrap_or(0));
            match self.index_recording(&r, now).await? {
                Outcome::Skipped => {
                    elsewhere.insert(r.id);
                }
                Outcome::Indexed { lines } => {
                    tracing::debug!(recording = r.id, lines, "recording indexed");
                    done += 1;
                }
                Outcome::Failed(why) => {
                    tracing::warn!(recording = r.id, %why, "recording not indexed");
                    done += 1;
                }
            }
        }
        Ok(done)
    }

    /// Indexes one closed recording (see the module documentation).
    pub async fn index_recording(
        &self,
        r: &RecordingRow,
        now: UnixTime,
    ) -> Result<Outcome, IndexError> {
        let mut session = self.store.session(&r.session_id).await?;
        let evidence = crate::evidence::evidence(&self.store, &mut session).await?;
        let Some(ev) = session
            .recordings
            .iter()
            .zip(&evidence)
            .find(|(x, _)| x.id == r.id)
            .map(|(_, e)| e.clone())
        else {
            return Ok(Outcome::Skipped);
        };
        let vouched = match &ev {
            Evidence::Vouched(v) if r.sha256.as_deref() == Some(v.sha256.as_str()) => {
                v.sha256.clone()
            }
            Evidence::Unvouched(_) => return Ok(Outcome::Skipped),
            Evidence::Vouched(_) => {
                return self
                    .fail(
                        r,
                        now,
                        "ALTERED: its row disagrees with the digest the audit log vouches for"
                            .into(),
                    )
                    .await;
            }
            Evidence::Broken(b) => {
                return self.fail(r, now, format!("ALTERED audit log: {b}")).await;
            }
        };
        let dir = self.dir.clone();
        let opened = match open_recording(&dir, &r.path) {
            Ok(f) => f,
            // Another node's recording (or deleted): not this node's to judge.
            Err(e) if e.is_not_found() => return Ok(Outcome::Skipped),
            Err(e) => return self.fail(r, now, e.to_string()).await,
        };
        let Some(claim) = self.store.claim_recording_index(r, now).await? else {
            return Ok(Outcome::Skipped);
        };
        let outcome = self
            .index_claimed(r, &claim, now, opened.file, vouched)
            .await;
        if outcome.is_err() {
            // Let the next round try again at once rather than after the claim lapsed.
            if let Err(e) = self.store.release_recording_index(&claim).await {
                tracing::warn!(recording = r.id, error = ?e, "cannot release a recording's index claim");
            }
        }
        outcome
    }

    /// The rest of [`Indexer::index_recording`], once the recording is claimed: read it, write its
    /// text and playback index.
    async fn index_claimed(
        &self,
        r: &RecordingRow,
        claim: &IndexClaim,
        now: UnixTime,
        mut file: std::fs::File,
        vouched: String,
    ) -> Result<Outcome, IndexError> {
        let started = std::time::Instant::now();
        let at = || now.saturating_add(i64::try_from(started.elapsed().as_secs()).unwrap_or(0));
        let format = match r.format.as_str() {
            RecordingFormat::ASCIICAST => Some(Format::Asciicast),
            RecordingFormat::EXEC_STREAM => Some(Format::Exec),
            _ => None,
        };
        // The pass runs on a thread of its own at the lowest priority (see [`background_priority`]); its
        // chunks and parts of text come back through a small queue and are written here, a few per
        // transaction.
        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        let stamp = |f: &std::fs::File| f.metadata().ok().as_ref().and_then(FileStamp::of);
        let before = stamp(&file);
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let max_lines =
            MIN_TEXT_LINES.max(i64::try_from(file_len / FILE_BYTES_PER_LINE).unwrap_or(i64::MAX));
        let pass = on_background_thread(move || -> Result<Pass, String> {
            let mut chunker = Chunker::new(tx, max_lines);
            let (index, sha) = match format {
                Some(format) => {
                    let (mut index, sha) =
                        playback::index_recording(format, &mut file, |t, stream, line| {
                            chunker.line(t, stream, &line)
                        })
                        .map_err(|e| e.to_string())?;
                    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
                    playback::hash_segments(&mut index, &mut file).map_err(|e| e.to_string())?;
                    (Some(index), sha)
                }
                None => {
                    let (lines, _, sha) =
                        playback::read_transfers(&mut file).map_err(|e| e.to_string())?;
                    for l in &lines {
                        for text in transfer_texts(&l.event) {
                            chunker.line(l.t, Stream::Output, &text);
                        }
                    }
                    (None, sha)
                }
            };
            let (lines, dropped) = chunker.finish();
            let after = stamp(&file);
            Ok(Pass {
                index,
                sha,
                lines,
                dropped,
                after,
            })
        })?;
        let (mut chunks, mut parts) = (Vec::new(), Vec::new());
        // The claim is renewed while the pass runs, however long and however little text it gives: a
        // live indexer is never taken for dead. Taken over all the same (this node stalled past
        // CLAIM_SECS), it stops here and writes nothing more; the pass's thread finds its queue closed.
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + CLAIM_RENEW, CLAIM_RENEW);
        loop {
            let piece = tokio::select! {
                piece = rx.recv() => piece,
                _ = renew.tick() => {
                    if !self.store.renew_recording_claim(claim, at()).await? {
                        return Ok(taken_over(r));
                    }
                    continue;
                }
            };
            let Some(piece) = piece else { break };
            match piece {
                Piece::Chunk(c) => chunks.push(c),
                Piece::Part(p) => parts.push(p),
            }
            if chunks.len() + parts.len() >= CHUNKS_PER_TX {
                if !self
                    .store
                    .add_recording_text(claim, &r.session_id, &chunks, &parts)
                    .await?
                {
                    return Ok(taken_over(r));
                }
                chunks.clear();
                parts.clear();
            }
        }
        let pass = match pass.await {
            Ok(Ok(p)) => p,
            Ok(Err(why)) => {
                return self
                    .fail_claimed(r, claim, now, format!("cannot read the recording: {why}"))
                    .await;
            }
            Err(_) => return Err(IndexError::Thread),
        };
        if pass.sha != vouched {
            // What was read is not what the chain vouches for: nothing of it is searchable.
            return self
                .fail_claimed(
                    r,
                    claim,
                    now,
                    format!(
                        "ALTERED: sha256 {}, the audit log vouches for {vouched}",
                        pass.sha
                    ),
                )
                .await;
        }
        if let (Some(proven), Some(before), Some(after)) = (&self.proven, before, pass.after)
            && before == after
        {
            proven.remember(r.id, after, &vouched);
        }
        if (!chunks.is_empty() || !parts.is_empty())
            && !self
                .store
                .add_recording_text(claim, &r.session_id, &chunks, &parts)
                .await?
        {
            return Ok(taken_over(r));
        }
        if pass.dropped > 0 {
            tracing::warn!(recording = r.id, session = %r.session_id, indexed = pass.lines,
                dropped = pass.dropped,
                "a recording has more lines than its size allows the search index (one per 8 bytes of \
                 the file): the rest are not searchable; the recording itself is whole");
        }
        if let Some(index) = pass.index.as_ref().filter(|i| i.blank_inits > 0) {
            tracing::warn!(recording = r.id, session = %r.session_id, blank = index.blank_inits,
                "a recording's screens are too large to keep at every seek point (a huge screen whose \
                 cells all differ): the later seek points start from a blank screen; the recording itself \
                 is whole");
        }
        if let Some(index) = pass.index.as_ref().filter(|i| i.refused > 0) {
            tracing::warn!(recording = r.id, session = %r.session_id, refused = index.refused,
                "a recording's output costs the screen emulation far more than it pays for (it clears or \
                 fills the screen over and over): those operations were not emulated, so its seek points \
                 and screen text may keep cells it cleared; the recording itself is whole");
        }
        if let Some(index) = pass.index.as_ref().filter(|i| i.resizes_delayed > 0) {
            tracing::warn!(recording = r.id, session = %r.session_id, delayed = index.resizes_delayed,
                "a recording's window changes cost the screen emulation more than the recording pays for \
                 (a wide screen narrowed a great deal, over and over): they were made later than recorded, \
                 and the player is given them so; the recording itself is whole");
        }
        let (playback, mac) = match &pass.index {
            Some(index) => {
                let json = serde_json::to_string(index).unwrap_or_default();
                let mac = self.seal_playback(r.id, &vouched, &json);
                (Some(json), Some(mac))
            }
            None => (None, None),
        };
        let finished = self
            .store
            .finish_recording_index(
                &IndexRow {
                    recording_id: r.id,
                    session_id: r.session_id.clone(),
                    status: "indexed".into(),
                    sha256: Some(vouched),
                    playback,
                    mac,
                    note: None,
                    lines: pass.lines,
                    indexed_at: now,
                },
                Some(claim),
            )
            .await?;
        if !finished {
            return Ok(taken_over(r));
        }
        Ok(Outcome::Indexed { lines: pass.lines })
    }
}

/// How often a running pass renews its claim: well within [`CLAIM_SECS`].
const CLAIM_RENEW: std::time::Duration = std::time::Duration::from_secs(60);

/// A pass whose recording another indexer took over: it leaves it to that one.
fn taken_over(r: &RecordingRow) -> Outcome {
    tracing::warn!(
        recording = r.id,
        "another indexer took this recording over; leaving it to that one"
    );
    Outcome::Skipped
}

struct Pass {
    index: Option<Index>,
    sha: String,
    lines: i64,
    /// Lines past the recording's bound, not indexed.
    dropped: i64,
    /// The file's stamp once read.
    after: Option<FileStamp>,
}

/// Runs `f` on a new thread at background priority and hands its result back.
///
/// A dedicated thread, not `spawn_blocking`: the priority is the thread's, and a pooled thread would keep
/// it for whatever blocking work it runs next.
fn on_background_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<oneshot::Receiver<T>, IndexError> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("indexer".into())
        .spawn(move || {
            background_priority();
            let _ = done.send(f());
        })
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot start the indexing thread");
            IndexError::Thread
        })?;
    Ok(result)
}

/// Lowers the calling thread to the lowest CPU priority (nice 19), so reading back a closed recording
/// (a terminal emulator over every byte, then SHA-256) takes only the CPU live sessions leave: on a busy
/// bastion the relay and the recorders come first and the index catches up when they are quiet. On
/// Linux the nice value belongs to the thread, so `setpriority` on this thread's id lowers it alone.
/// If it cannot be lowered the index is still built, at normal priority, and that is logged. Live views'
/// emulators (`live::view`) run so too.
pub(crate) fn background_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        tracing::warn!(error = %e, %thread, "a background thread runs at normal priority: cannot lower it");
    }
}

/// The nice value of the indexing thread: the lowest priority.
const BACKGROUND_NICE: i32 = 19;

impl Indexer {
    /// Marks recording `r` as not indexable, with why (the claim is taken if nobody holds it).
    async fn fail(
        &self,
        r: &RecordingRow,
        now: UnixTime,
        why: String,
    ) -> Result<Outcome, IndexError> {
        let _ = self.store.claim_recording_index(r, now).await?;
        self.store
            .finish_recording_index(&failed_row(r, &why, now), None)
            .await?;
        Ok(Outcome::Failed(why))
    }

    /// [`Indexer::fail`] for a recording this indexer claimed: its text cleared and the row marked, only
    /// while the claim holds (taken over, the recording is the new indexer's to judge).
    async fn fail_claimed(
        &self,
        r: &RecordingRow,
        claim: &IndexClaim,
        now: UnixTime,
        why: String,
    ) -> Result<Outcome, IndexError> {
        if !self.store.clear_recording_text(claim).await? {
            return Ok(taken_over(r));
        }
        let marked = self
            .store
            .finish_recording_index(&failed_row(r, &why, now), Some(claim))
            .await?;
        if !marked {
            return Ok(taken_over(r));
        }
        Ok(Outcome::Failed(why))
    }
}

/// The row of recording `r` judged not indexable at `now`, with why.
fn failed_row(r: &RecordingRow, why: &str, now: UnixTime) -> IndexRow {
    IndexRow {
        recording_id: r.id,
        session_id: r.session_id.clone(),
        status: "failed".into(),
        sha256: None,
        playback: None,
        mac: None,
        note: Some(why.to_owned()),
        lines: 0,
        indexed_at: now,
    }
}

/// The searchable text of a transfer log event: the paths a vendor touched, and the device's messages.
fn transfer_texts(e: &chaperone_recorder::TransferEvent) -> Vec<String> {
    use chaperone_recorder::TransferEvent as T;
    match e {
        T::File { path, target, .. } | T::Opened { path, target, .. } => {
            std::iter::once(path).chain(target).cloned().collect()
        }
        T::Op { path, target, .. } => std::iter::once(path.clone())
            .chain(target.clone())
            .collect(),
        T::Stderr { text } => text.lines().map(str::to_owned).collect(),
        T::Unparseable { .. } | T::Notice { .. } => Vec::new(),
    }
}

/// What the reading pass hands the writer.
enum Piece {
    /// Lines with their times and words, for the transcript.
    Chunk(NewTextChunk),
    /// A long run of words, for the session search.
    Part(NewWordsPart),
}

/// Groups lines into chunks of at most [`CHUNK_LINES`] lines, and their words into parts of at most
/// [`PART_WORDS`] words, and hands both to the writer.
struct Chunker {
    tx: mpsc::Sender<Piece>,
    /// Lines indexed at most; the rest are counted.
    max_lines: i64,
    dropped: i64,
    seq: i64,
    times: Vec<String>,
    body: String,
    /// The chunk's words (as `words(&body)`, built line by line).
    words: String,
    count: usize,
    lines: i64,
    part: Part,
}

/// The part being filled.
#[derive(Default)]
struct Part {
    seq: i64,
    words: String,
    count: usize,
}

impl Chunker {
    fn new(tx: mpsc::Sender<Piece>, max_lines: i64) -> Chunker {
        Chunker {
            tx,
            max_lines,
            dropped: 0,
            seq: 0,
            times: Vec::new(),
            body: String::new(),
            words: String::new(),
            count: 0,
            lines: 0,
            part: Part::default(),
        }
    }

    fn line(&mut self, t: f64, stream: Stream, text: &str) {
        if self.lines >= self.max_lines {
            self.dropped += 1;
            return;
        }
        // Lines hold no newline (the tracker's and the log's lines never do; be sure).
        let text = text.replace(['\n', '\r'], " ");
        if !self.body.is_empty() {
            self.body.push('\n');
        }
        let start = self.body.len();
        if stream == Stream::Stderr {
            self.body.push_str("[stderr] ");
        }
        self.body.push_str(&text);
        // A newline separates words, so the chunk's words are its lines' words, joined.
        let line_words = words(&self.body[start..]);
        for w in line_words.split(' ').filter(|w| !w.is_empty()) {
            if !self.words.is_empty() {
                self.words.push(' ');
            }
            self.words.push_str(w);
            self.part_word(w);
        }
        self.times.push(((t * 1000.0) as i64).to_string());
        self.count += 1;
        self.lines += 1;
        if self.count >= CHUNK_LINES || self.body.len() >= CHUNK_CHARS {
            self.flush();
        }
    }

    /// Adds a word to the part, handing the part over first if it is full.
    fn part_word(&mut self, w: &str) {
        if self.part.count >= PART_WORDS || self.part.words.len() + 1 + w.len() > PART_CHARS {
            self.flush_part();
        }
        if !self.part.words.is_empty() {
            self.part.words.push(' ');
        }
        self.part.words.push_str(w);
        self.part.count += 1;
    }

    fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        let chunk = NewTextChunk {
            seq: self.seq,
            times: self.times.join(","),
            words: std::mem::take(&mut self.words),
            body: std::mem::take(&mut self.body),
        };
        self.seq += 1;
        self.times.clear();
        self.count = 0;
        // The writer is gone only when the indexing is abandoned.
        let _ = self.tx.blocking_send(Piece::Chunk(chunk));
    }

    fn flush_part(&mut self) {
        if self.part.count == 0 {
            return;
        }
        let part = NewWordsPart {
            seq: self.part.seq,
            words: std::mem::take(&mut self.part.words),
        };
        self.part.seq += 1;
        self.part.count = 0;
        let _ = self.tx.blocking_send(Piece::Part(part));
    }

    /// Lines indexed, and lines past the bound.
    fn finish(mut self) -> (i64, i64) {
        self.flush();
        self.flush_part();
        (self.lines, self.dropped)
    }
}

fn playback_message(recording_id: i64, sha256: &str, json: &str) -> Vec<u8> {
    format!("chaperone-playback-v1\n{recording_id}\n{sha256}\n{json}").into_bytes()
}

/// The key that binds a playback index to its recording and the digest it was built from (keyed by the
/// secrets key: `secrets rotate` signs every index that held under the old key again under the new one).
#[derive(Clone)]
pub struct PlaybackSeal(hmac::Key);

impl std::fmt::Debug for PlaybackSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlaybackSeal(..)")
    }
}

impl PlaybackSeal {
    pub fn new(secrets: &SecretsKey) -> PlaybackSeal {
        PlaybackSeal(hmac::Key::new(
            hmac::HMAC_SHA256,
            &*secrets.subkey("recording-playback-index"),
        ))
    }

    /// The MAC (hex) of `json`, the playback index of recording `recording_id` built from `sha256`.
    pub fn sign(&self, recording_id: i64, sha256: &str, json: &str) -> String {
        hex::encode(hmac::sign(
            &self.0,
            &playback_message(recording_id, sha256, json),
        ))
    }

    /// Whether `mac` is this key's MAC of `json` for recording `recording_id` built from `sha256`.
    pub fn holds(&self, recording_id: i64, sha256: &str, json: &str, mac: &str) -> bool {
        hex::decode(mac).is_ok_and(|tag| {
            hmac::verify(&self.0, &playback_message(recording_id, sha256, json), &tag).is_ok()
        })
    }
}

impl Indexer {
    /// The MAC (hex) that binds a playback index to its recording and the digest it was built from.
    pub fn seal_playback(&self, recording_id: i64, sha256: &str, json: &str) -> String {
        self.seal.sign(recording_id, sha256, json)
    }

    /// The playback index stored for recording `recording_id`, if its MAC holds for `sha256` (the digest
    /// the audit chain vouches for now).
    pub fn open_playback(
        &self,
        recording_id: i64,
        sha256: &str,
        json: &str,
        mac: &str,
    ) -> Option<Index> {
        if !self.seal.holds(recording_id, sha256, json, mac) {
            return None;
        }
        serde_json::from_str(json).ok()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_indexing_pass_runs_at_background_priority_and_leaves_the_caller_alone() {
        let mine = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let before = mine();
        let theirs = on_background_thread(mine).unwrap().await.unwrap();
        assert_eq!(theirs, BACKGROUND_NICE);
        assert_eq!(mine(), before, "the caller's priority must not change");
    }
}
