//! Terminal recordings in asciicast v2, the format asciinema and asciinema-player play.
//!
//! Entry points: [`CastWriter::create`] records a session as it happens; [`parse_cast`], or the streaming
//! [`CastReader`], reads one back for export, verification and tests.
//!
//! A file is one JSON header line, then one `[time, code, data]` line per event: `o` output, `i` input,
//! `r` resize (data `"COLSxROWS"`), `m` marker. Times are seconds since the session started, with at most
//! 6 decimals. Terminal bytes are not always UTF-8 and a read may end inside a character: the writer holds
//! back an incomplete trailing sequence (at most 3 bytes) until the next chunk of the same stream and turns
//! invalid bytes into U+FFFD, so every line is valid JSON.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sink::{Finished, HashedFile, seconds};

/// The header line of an asciicast v2 file; `"version": 2` is added when it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CastHeader {
    /// Terminal width in columns when the recording starts.
    pub width: u16,
    /// Terminal height in rows when the recording starts.
    pub height: u16,
    /// Start of the recording, Unix seconds.
    pub timestamp: i64,
    /// Shown by players; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The command that was run, for an exec session; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Environment worth replaying with, such as `TERM` and `SHELL`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Every marker label says who wrote it (module [`crate::marker`]). Recordings made before the
    /// rule lack it (read as `false`): a label of theirs that starts like a notice may be a device's
    /// screen line, so their markers are unattributed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub markers_attributed: bool,
}

/// The header as written: the version first, then the fields of [`CastHeader`].
#[derive(Serialize)]
struct HeaderLine<'a> {
    version: u8,
    #[serde(flatten)]
    header: &'a CastHeader,
}

/// Writes one session's recording; see the [module docs](self) for the format.
///
/// `at` arguments are the time since the session started. Each method returns an error the caller must act
/// on: I/O errors end the recording (the writer is then unusable), [`Error::CapExceeded`] means that event
/// was not written. Written events reach the operating system with the first write more than a second after
/// the previous flush, or on [`flush`](Self::flush); call it on a timer when output may pause.
#[derive(Debug)]
pub struct CastWriter {
    /// The lines, into the file with its running digest and its size cap.
    encoder: Encoder<HashedFile>,
}

impl CastWriter {
    /// Creates the recording file (never overwriting one; mode 0600 on unix) and writes and flushes the
    /// header line at once.
    pub fn create(path: impl AsRef<Path>, header: CastHeader) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::create(path.as_ref(), &header)?,
        })
    }

    /// Refuses, with [`Error::CapExceeded`], any event that would make the file larger than `max_bytes`
    /// (the header counts).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.encoder.sink.set_max_bytes(max_bytes);
        self
    }

    /// Records bytes the session sent to the terminal (`o`).
    pub fn output(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.encoder.output(at, data)
    }

    /// Records bytes typed by the user (`i`).
    pub fn input(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.encoder.input(at, data)
    }

    /// Records a terminal resize (`r`, data `"COLSxROWS"`).
    pub fn resize(&mut self, at: Duration, cols: u16, rows: u16) -> Result<()> {
        self.encoder.resize(at, cols, rows)
    }

    /// Records a marker (`m`), a labelled point players can jump to.
    pub fn marker(&mut self, at: Duration, label: &str) -> Result<()> {
        self.encoder.marker(at, label)
    }

    /// Hands every written event to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.encoder.sink.flush()
    }

    /// Size of the file so far, header included.
    pub fn bytes_written(&self) -> u64 {
        self.encoder.sink.bytes()
    }

    /// Writes any held-back incomplete UTF-8 as U+FFFD, then flushes, fsyncs and closes the file, returning
    /// its digest.
    pub fn finish(mut self) -> Result<Finished> {
        self.encoder.end()?;
        self.encoder.sink.finish()
    }
}

/// Where an [`Encoder`]'s lines go: the recording file ([`HashedFile`]) or any writer ([`Streamed`]).
pub(crate) trait CastSink {
    /// Appends one whole line, or nothing ([`Error::CapExceeded`] when it would pass a size cap).
    fn write_record(&mut self, record: &[u8]) -> Result<()>;
}

impl CastSink for HashedFile {
    fn write_record(&mut self, record: &[u8]) -> Result<()> {
        HashedFile::write_record(self, record)
    }
}

/// A [`CastSink`] writing to `out`, counting the bytes: a cast made for an export and never stored
/// ([`crate::exec_cast_into`]).
#[derive(Debug)]
pub(crate) struct Streamed<W> {
    pub(crate) out: W,
    pub(crate) bytes: u64,
}

impl<W: Write> CastSink for Streamed<W> {
    fn write_record(&mut self, record: &[u8]) -> Result<()> {
        self.out.write_all(record)?;
        self.bytes += record.len() as u64;
        Ok(())
    }
}

/// Encodes a cast's lines into a [`CastSink`]: the one encoder of both the recording file and a cast
/// streamed for an export, so the two cannot differ by a byte.
#[derive(Debug)]
pub(crate) struct Encoder<S> {
    pub(crate) sink: S,
    /// Incomplete UTF-8 held back from the output stream.
    output: Utf8Carry,
    /// Incomplete UTF-8 held back from the input stream (a paste can split a character too).
    input: Utf8Carry,
    /// Reused buffer for one encoded event line, so recording does not allocate per event.
    line: Vec<u8>,
}

impl Encoder<HashedFile> {
    /// A new recording file (never overwriting one) with its header line written and flushed.
    pub(crate) fn create(path: &Path, header: &CastHeader) -> Result<Self> {
        let mut encoder = Encoder::new(HashedFile::create(path)?, header)?;
        encoder.sink.flush()?;
        Ok(encoder)
    }
}

impl<S: CastSink> Encoder<S> {
    /// An encoder that has written the header line into `sink`.
    pub(crate) fn new(mut sink: S, header: &CastHeader) -> Result<Self> {
        let mut line =
            serde_json::to_vec(&HeaderLine { version: 2, header }).map_err(io::Error::from)?;
        line.push(b'\n');
        sink.write_record(&line)?;
        line.clear();
        Ok(Self {
            sink,
            output: Utf8Carry::default(),
            input: Utf8Carry::default(),
            line,
        })
    }

    pub(crate) fn output(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.text_event(at, Stream::Output, data)
    }

    pub(crate) fn input(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.text_event(at, Stream::Input, data)
    }

    pub(crate) fn resize(&mut self, at: Duration, cols: u16, rows: u16) -> Result<()> {
        let size = format!("{cols}x{rows}");
        write_event(&mut self.sink, &mut self.line, at, "r", &size)
    }

    pub(crate) fn marker(&mut self, at: Duration, label: &str) -> Result<()> {
        write_event(&mut self.sink, &mut self.line, at, "m", label)
    }

    /// Writes any held-back incomplete UTF-8 as U+FFFD: the last lines of the cast.
    pub(crate) fn end(&mut self) -> Result<()> {
        for (carry, code) in [(&self.output, "o"), (&self.input, "i")] {
            if carry.held().is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(carry.held());
            match write_event(&mut self.sink, &mut self.line, carry.at, code, &text) {
                // At the cap the file is complete without these few replacement characters.
                Ok(()) | Err(Error::CapExceeded { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn text_event(&mut self, at: Duration, stream: Stream, data: &[u8]) -> Result<()> {
        let (carry, code) = match stream {
            Stream::Output => (&mut self.output, "o"),
            Stream::Input => (&mut self.input, "i"),
        };
        let joined = carry.join(data);
        let keep = incomplete_tail_len(joined);
        let (now, later) = joined.split_at(joined.len() - keep);
        let mut tail = [0; 3];
        tail[..keep].copy_from_slice(later);
        if !now.is_empty() {
            // `from_utf8` checks ASCII a word at a time; the lossy scan is only for invalid bytes.
            let text = match std::str::from_utf8(now) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(now),
            };
            write_event(&mut self.sink, &mut self.line, at, code, &text)?;
        }
        // Only now, so that a refused event leaves the stream as it was.
        carry.hold(&tail[..keep], at);
        Ok(())
    }
}

/// The two byte streams of a terminal session.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Output,
    Input,
}

fn write_event(
    sink: &mut impl CastSink,
    line: &mut Vec<u8>,
    at: Duration,
    code: &str,
    data: &str,
) -> Result<()> {
    line.clear();
    line.push(b'[');
    serde_json::to_writer(&mut *line, &seconds(at)).map_err(io::Error::from)?;
    line.push(b',');
    push_json_str(line, code);
    line.push(b',');
    push_json_str(line, data);
    line.extend_from_slice(b"]\n");
    sink.write_record(line)
}

/// Appends `text` as a JSON string. The same escapes as `serde_json` (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`, other control characters as `\u00XX`), but bulk-friendly: text that needs no escape is checked
/// 8 bytes at a time and copied in runs, and a run of one repeated control character (`head -c N
/// /dev/zero`, padding) is written by repeating its escape instead of one byte at a time.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(word) = bytes[i..].first_chunk::<8>() {
            if word_needs_escape(u64::from_le_bytes(*word)) {
                break;
            }
            i += 8;
        }
        let Some(&byte) = bytes.get(i) else { break };
        if !needs_escape(byte) {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        let mut run = 1;
        while i + run < bytes.len() && bytes[i + run] == byte {
            run += 1;
        }
        let mut escape = [0u8; 6];
        let escape = escaped(byte, &mut escape);
        push_repeated(out, escape, run);
        i += run;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether JSON needs `byte` escaped inside a string: control characters, `"` and `\`. Every other byte of
/// a `str`, multi-byte UTF-8 included, is copied as it is.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether any of the 8 bytes in `word` [`needs_escape`]: the exact "has a byte less than n" and "has a
/// zero byte" tests from Bit Twiddling Hacks (exact as yes/no answers; bytes >= 0x80 never match).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0;
    below_space
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

/// The JSON escape of a byte for which [`needs_escape`] holds, written into `buf`.
fn escaped(byte: u8, buf: &mut [u8; 6]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match byte {
        b'"' => Some(b'"'),
        b'\\' => Some(b'\\'),
        b'\n' => Some(b'n'),
        b'\r' => Some(b'r'),
        b'\t' => Some(b't'),
        0x08 => Some(b'b'),
        0x0c => Some(b'f'),
        _ => None,
    };
    if let Some(c) = short {
        buf[0] = b'\\';
        buf[1] = c;
        return &buf[..2];
    }
    *buf = [
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 0xf)],
    ];
    &buf[..]
}

/// Appends `piece` `count` times, in blocks rather than one piece at a time.
fn push_repeated(out: &mut Vec<u8>, piece: &[u8], count: usize) {
    const BLOCK: usize = 64;
    out.reserve(piece.len() * count);
    if count < BLOCK {
        for _ in 0..count {
            out.extend_from_slice(piece);
        }
        return;
    }
    let mut block = [0u8; 6 * BLOCK];
    let block = &mut block[..piece.len() * BLOCK];
    for chunk in block.chunks_exact_mut(piece.len()) {
        chunk.copy_from_slice(piece);
    }
    for _ in 0..count / BLOCK {
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&block[..piece.len() * (count % BLOCK)]);
}

/// The incomplete UTF-8 sequence at the end of a stream's last chunk, waiting for the rest of its character.
#[derive(Debug, Default)]
struct Utf8Carry {
    tail: [u8; 3],
    len: usize,
    /// When the held bytes arrived, to time them if the session ends first.
    at: Duration,
    /// Reused buffer for the held bytes followed by the next chunk.
    scratch: Vec<u8>,
}

impl Utf8Carry {
    fn held(&self) -> &[u8] {
        &self.tail[..self.len]
    }

    /// The held bytes followed by `data`, copied only when something is held.
    fn join<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        if self.len == 0 {
            return data;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.tail[..self.len]);
        self.scratch.extend_from_slice(data);
        &self.scratch
    }

    /// Replaces the held bytes with `tail` (at most 3 bytes, from [`incomplete_tail_len`]).
    fn hold(&mut self, tail: &[u8], at: Duration) {
        self.len = tail.len().min(self.tail.len());
        self.tail[..self.len].copy_from_slice(&tail[..self.len]);
        self.at = at;
    }
}

/// Text from a byte stream that arrives in chunks, for a reader that shows it as it comes (the web page's
/// live view): a character split between two chunks is held back until its other bytes arrive, instead of
/// becoming two U+FFFD; invalid bytes become U+FFFD at once, as in a recording.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Utf8Carry,
}

impl Utf8Stream {
    /// The text of `data` after whatever the previous chunk held back, less an incomplete last character.
    pub fn decode(&mut self, data: &[u8]) -> String {
        let joined = self.carry.join(data);
        let keep = incomplete_tail_len(joined);
        let (now, later) = joined.split_at(joined.len() - keep);
        let mut tail = [0; 3];
        tail[..keep].copy_from_slice(later);
        let text = String::from_utf8_lossy(now).into_owned();
        self.carry.hold(&tail[..keep], Duration::ZERO);
        text
    }
}

/// Length (0 to 3) of the incomplete UTF-8 sequence ending `bytes`: a valid start of a character whose other
/// bytes may come with the next chunk. Invalid bytes are not held back; they become U+FFFD at once.
fn incomplete_tail_len(bytes: &[u8]) -> usize {
    for n in 1..=bytes.len().min(3) {
        match std::str::from_utf8(&bytes[bytes.len() - n..]) {
            Ok(_) => return 0,
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => return n,
            Err(_) => {}
        }
    }
    0
}

/// One event of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the recording started.
    pub time: f64,
    /// What happened.
    pub kind: EventKind,
}

/// The four asciicast v2 event types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `o`: text sent to the terminal.
    Output(String),
    /// `i`: text typed by the user.
    Input(String),
    /// `r`: the terminal's new size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// `m`: a marker and its label.
    Marker(String),
}

/// A whole recording, as read by [`parse_cast`].
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    /// The header line.
    pub header: CastHeader,
    /// Every complete event, in file order.
    pub events: Vec<Event>,
    /// The last line was cut short (the writer stopped mid-line, e.g. in a crash) and was left out.
    pub truncated: bool,
}

impl Cast {
    /// All output concatenated: what the terminal was sent, for search and tests.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|event| match &event.kind {
                EventKind::Output(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// The largest terminal a recording keeps: 1000 columns by 500 rows, beyond any real screen. The SSH
/// protocol lets a client claim 4 billion (and the recording's `u16` 65535 x 65535), and a player or the
/// indexer that emulates the screen allocates a cell for each: 65535 x 65535 is ~68 GB.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 500;

/// `cols` x `rows` within [`MAX_COLS`] x [`MAX_ROWS`] (and at least 1 x 1): what a writer records and
/// what a player emulates, whatever a client asked for or an older recording holds.
pub fn bounded_size(cols: u16, rows: u16) -> (u16, u16) {
    (cols.clamp(1, MAX_COLS), rows.clamp(1, MAX_ROWS))
}

/// Reads and validates a whole asciicast v2 recording; see [`CastReader`] for what is accepted.
pub fn parse_cast(reader: impl Read) -> Result<Cast> {
    let mut reader = CastReader::new(BufReader::new(reader))?;
    let events = reader.by_ref().collect::<Result<Vec<_>>>()?;
    Ok(Cast {
        truncated: reader.truncated(),
        header: reader.header,
        events,
    })
}

/// Reads an asciicast v2 recording event by event, validating as it goes.
///
/// The first line must be a header with `"version": 2`; every other line an event `[time, code, data]` with
/// a non-negative time and code `o`, `i`, `r` or `m` (`r` data `"COLSxROWS"`). Blank lines are skipped. A last
/// line that has no newline and does not parse is what a crash mid-write leaves: iteration ends and
/// [`truncated`](Self::truncated) reports it. Any other invalid line is an [`Error::InvalidCast`], after which
/// iteration ends.
#[derive(Debug)]
pub struct CastReader<R> {
    reader: R,
    header: CastHeader,
    /// Reused buffer for the current line.
    line: Vec<u8>,
    /// Number of the line last read (1-based; the header is line 1).
    line_no: u64,
    truncated: bool,
    done: bool,
}

impl<R: BufRead> CastReader<R> {
    /// Reads and validates the header line.
    pub fn new(mut reader: R) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidCast { line: 1, reason };
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(invalid("the file is empty".into()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&line).map_err(|e| invalid(format!("header: {e}")))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(2) => {}
            Some(version) => return Err(invalid(format!("version {version}, not 2"))),
            None => return Err(invalid("the header has no version".into())),
        }
        let header = serde_json::from_value(value).map_err(|e| invalid(format!("header: {e}")))?;
        Ok(Self {
            reader,
            header,
            line,
            line_no: 1,
            truncated: false,
            done: false,
        })
    }

    /// The header line.
    pub fn header(&self) -> &CastHeader {
        &self.header
    }

    /// Whether the last line was cut short and skipped; meaningful once iteration has ended.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<R: BufRead> Iterator for CastReader<R> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.line_no += 1;
                    if self.line.trim_ascii().is_empty() {
                        continue;
                    }
                    let complete = self.line.ends_with(b"\n");
                    match parse_event(&self.line) {
                        Ok(event) => return Some(Ok(event)),
                        Err(_) if !complete => {
                            self.truncated = true;
                            self.done = true;
                        }
                        Err(reason) => {
                            self.done = true;
                            return Some(Err(Error::InvalidCast {
                                line: self.line_no,
                                reason,
                            }));
                        }
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
        None
    }
}

fn parse_event(line: &[u8]) -> Result<Event, String> {
    let (time, code, data): (f64, Cow<'_, str>, String) =
        serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if time < 0.0 {
        return Err(format!("negative time {time}"));
    }
    let kind = match &*code {
        "o" => EventKind::Output(data),
        "i" => EventKind::Input(data),
        "m" => EventKind::Marker(data),
        "r" => {
            let (cols, rows) = data
                .split_once('x')
                .and_then(|(cols, rows)| Some((cols.parse().ok()?, rows.parse().ok()?)))
                .ok_or("resize data is not COLSxROWS")?;
            EventKind::Resize { cols, rows }
        }
        _ => return Err("unknown event code (expected o, i, r or m)".into()),
    };
    Ok(Event { time, kind })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn header() -> CastHeader {
        CastHeader {
            width: 80,
            height: 24,
            timestamp: 1_763_900_000,
            title: Some("mri-01 — vendor1".into()),
            command: None,
            env: BTreeMap::from([
                ("SHELL".into(), "/bin/bash".into()),
                ("TERM".into(), "xterm-256color".into()),
            ]),
            markers_attributed: false,
        }
    }

    fn new_cast() -> (tempfile::TempDir, PathBuf, CastWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let writer = CastWriter::create(&path, header()).unwrap();
        (dir, path, writer)
    }

    fn read(path: &Path) -> Cast {
        parse_cast(fs::File::open(path).unwrap()).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_character_split_between_chunks_reaches_a_live_reader_whole() {
        let mut s = Utf8Stream::default();
        let text = "tick-1 Überprüfung ✓\r\n".as_bytes();
        let mut shown = String::new();
        for chunk in text.chunks(1) {
            shown.push_str(&s.decode(chunk));
        }
        assert_eq!(shown, "tick-1 Überprüfung ✓\r\n");
        // Invalid bytes are not held: they show at once, as U+FFFD.
        assert_eq!(s.decode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.decode(&[0xe2, 0x9c]), "");
        assert_eq!(s.decode(&[0x93, b'!']), "✓!");
    }

    #[test]
    fn header_is_asciicast_v2_and_written_at_once() {
        let (_dir, path, writer) = new_cast();
        let first = fs::read_to_string(&path).unwrap();
        assert_eq!(
            first,
            "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1763900000,\
             \"title\":\"mri-01 — vendor1\",\"env\":{\"SHELL\":\"/bin/bash\",\"TERM\":\"xterm-256color\"}}\n"
        );
        drop(writer);
    }

    #[test]
    fn round_trip() {
        let (_dir, path, mut w) = new_cast();
        w.output(ms(10), b"$ ").unwrap();
        w.input(ms(1500), b"ls -l\r").unwrap();
        w.output(
            Duration::from_nanos(1_600_123_999),
            b"\x1b[31m\"quoted\" \\ tab\t\r\n",
        )
        .unwrap();
        w.resize(ms(2000), 132, 43).unwrap();
        w.marker(ms(2500), "grant g-42 expires in 5 min").unwrap();
        w.output(ms(3000), "Grüße\r\n".as_bytes()).unwrap();
        let done = w.finish().unwrap();
        assert_eq!(done.path, path);

        let cast = read(&path);
        assert_eq!(cast.header, header());
        assert!(!cast.truncated);
        let expected = vec![
            Event {
                time: 0.01,
                kind: EventKind::Output("$ ".into()),
            },
            Event {
                time: 1.5,
                kind: EventKind::Input("ls -l\r".into()),
            },
            Event {
                time: 1.600123,
                kind: EventKind::Output("\x1b[31m\"quoted\" \\ tab\t\r\n".into()),
            },
            Event {
                time: 2.0,
                kind: EventKind::Resize {
                    cols: 132,
                    rows: 43,
                },
            },
            Event {
                time: 2.5,
                kind: EventKind::Marker("grant g-42 expires in 5 min".into()),
            },
            Event {
                time: 3.0,
                kind: EventKind::Output("Grüße\r\n".into()),
            },
        ];
        assert_eq!(cast.events, expected);
        assert_eq!(cast.text(), "$ \x1b[31m\"quoted\" \\ tab\t\r\nGrüße\r\n");
        let lines: Vec<_> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines[4], r#"[2.0,"r","132x43"]"#);
        assert_eq!(lines[5], r#"[2.5,"m","grant g-42 expires in 5 min"]"#);
    }

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let text = "héllo € 😀 ok";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let (_dir, path, mut w) = new_cast();
            w.output(ms(1), &bytes[..split]).unwrap();
            w.output(ms(2), &bytes[split..]).unwrap();
            w.finish().unwrap();
            let cast = read(&path);
            assert_eq!(cast.text(), text, "split at {split}");
            assert!(
                cast.events
                    .iter()
                    .all(|e| !matches!(&e.kind, EventKind::Output(s) if s.is_empty()))
            );
        }
        let (_dir, path, mut w) = new_cast();
        for (i, b) in bytes.iter().enumerate() {
            w.output(ms(i as u64), std::slice::from_ref(b)).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(read(&path).text(), text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (_dir, path, mut w) = new_cast();
        w.output(ms(1), b"ok\xff\xfe!").unwrap();
        w.output(ms(2), b"\xc3(").unwrap(); // a lead byte followed by a non-continuation
        w.output(ms(3), b"\xed\xa0\x80").unwrap(); // an encoded surrogate
        w.input(ms(4), b"\x00\x7f").unwrap();
        w.output(ms(5), b"end\xe2\x82").unwrap(); // held back, then the session ends
        w.finish().unwrap();
        let cast = read(&path);
        assert_eq!(
            cast.text(),
            "ok\u{FFFD}\u{FFFD}!\u{FFFD}(\u{FFFD}\u{FFFD}\u{FFFD}end\u{FFFD}"
        );
        assert_eq!(cast.events[3].kind, EventKind::Input("\u{0}\u{7f}".into()));
        assert_eq!(cast.events.last().unwrap().time, 0.005);
    }

    #[test]
    fn strings_are_escaped_exactly_like_serde_json() {
        let mut all_ascii: String = (0u8..0x80).map(char::from).collect();
        all_ascii.push_str("é€😀\u{FFFD}");
        let mut cases = vec![
            String::new(),
            all_ascii,
            "plain text, no escapes".into(),
            "\0".repeat(1000),
            "\0".repeat(63),
            "\0".repeat(64),
            "\0".repeat(65),
            "\"".repeat(130),
            "\\".repeat(129),
            "a\r\n\r\nb\x1b[31mred\x1b[0m\t\x08\x0c\x7f".into(),
        ];
        // Every escaped character at every position of an 8-byte word, amid text and multi-byte UTF-8.
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for pos in 0..20 {
                let mut text = "é".repeat(pos % 3) + &"a".repeat(pos);
                text.push(char::from(special));
                text.push_str("bcdefghijklmnop€ü ~\x7f");
                cases.push(text);
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..300)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Mostly control characters, quotes and backslashes, in runs.
                    [0, 0, 0, b'"', b'\\', b'\n', 0x1f, b'a', 0xc3, 0xa9][(state % 10) as usize]
                })
                .collect();
            cases.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        for text in cases {
            let mut ours = Vec::new();
            push_json_str(&mut ours, &text);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&text).unwrap()
            );
        }
    }

    #[test]
    fn event_lines_are_what_serde_json_writes() {
        let (_dir, path, mut w) = new_cast();
        w.output(Duration::from_micros(1_500_123), b"\0\0\"x\"\r\n")
            .unwrap();
        w.finish().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(
            last,
            serde_json::to_string(&(1.500123, "o", "\0\0\"x\"\r\n")).unwrap()
        );
    }

    #[test]
    fn incomplete_tail_lengths() {
        assert_eq!(incomplete_tail_len(b""), 0);
        assert_eq!(incomplete_tail_len(b"abc"), 0);
        assert_eq!(incomplete_tail_len("a€".as_bytes()), 0);
        assert_eq!(incomplete_tail_len(b"a\xe2"), 1);
        assert_eq!(incomplete_tail_len(b"a\xe2\x82"), 2);
        assert_eq!(incomplete_tail_len(b"\xf0\x9f\x98"), 3);
        assert_eq!(incomplete_tail_len(b"\x82\x82\x82"), 0);
        assert_eq!(incomplete_tail_len(b"\xed\xa0"), 0); // a surrogate can never complete
        assert_eq!(incomplete_tail_len(b"\xff"), 0);
    }

    #[test]
    fn truncated_last_line_is_reported_not_fatal() {
        let (_dir, path, mut w) = new_cast();
        w.output(ms(100), b"one").unwrap();
        w.output(ms(200), b"two").unwrap();
        w.finish().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(br#"[0.3, "o", "thr"#);
        let cast = parse_cast(&bytes[..]).unwrap();
        assert!(cast.truncated);
        assert_eq!(cast.text(), "onetwo");

        // A complete last line without its newline is an event, not a truncation.
        bytes.truncate(bytes.len() - br#"[0.3, "o", "thr"#.len());
        bytes.extend_from_slice(br#"[0.3, "o", "three"]"#);
        let cast = parse_cast(&bytes[..]).unwrap();
        assert!(!cast.truncated);
        assert_eq!(cast.text(), "onetwothree");
    }

    #[test]
    fn invalid_files_are_rejected_with_their_line() {
        let head = r#"{"version":2,"width":80,"height":24,"timestamp":0}"#;
        let err = |text: &str| match parse_cast(text.as_bytes()) {
            Err(Error::InvalidCast { line, reason }) => (line, reason),
            other => panic!("expected InvalidCast, got {other:?}"),
        };
        assert_eq!(err("").0, 1);
        assert_eq!(err("[0.1,\"o\",\"x\"]\n").0, 1);
        assert_eq!(
            err(r#"{"version":1,"width":80,"height":24,"timestamp":0}"#).0,
            1
        );
        assert_eq!(
            err(&format!(
                "{head}\n[0.1,\"o\",\"x\"]\nnot json\n[0.2,\"o\",\"y\"]\n"
            ))
            .0,
            3
        );
        assert_eq!(err(&format!("{head}\n[0.1,\"x\",\"x\"]\n")).0, 2);
        assert_eq!(err(&format!("{head}\n[0.1,\"r\",\"80-24\"]\n")).0, 2);
        assert_eq!(err(&format!("{head}\n[-1,\"o\",\"x\"]\n")).0, 2);
        assert_eq!(err(&format!("{head}\n[0.1,\"o\",\"x\",4]\n")).0, 2);
        let cast = parse_cast(format!("{head}\n\n[0.1,\"o\",\"x\"]\n").as_bytes()).unwrap();
        assert_eq!(cast.text(), "x");
        assert_eq!(cast.header.env, BTreeMap::new());
    }

    #[test]
    fn corrupted_files_never_panic_the_reader() {
        let (_dir, path, mut w) = new_cast();
        w.output(ms(1), "héllo 😀\r\n".as_bytes()).unwrap();
        w.resize(ms(2), 100, 30).unwrap();
        w.marker(ms(3), "m").unwrap();
        w.input(ms(4), b"q").unwrap();
        w.finish().unwrap();
        let good = fs::read(&path).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.clone();
            bytes[(state % good.len() as u64) as usize] = (state >> 32) as u8;
            bytes.truncate(good.len() - (state >> 48) as usize % 8);
            let _ = parse_cast(&bytes[..]);
        }
    }

    /// The writer holds an advisory lock on its file until it is closed: a node's sweep that takes the
    /// session for abandoned (`try_lock_shared`) leaves a file that is still being written alone.
    #[test]
    fn the_file_is_locked_while_it_is_written() {
        let (_dir, path, mut w) = new_cast();
        w.output(ms(1), b"x").unwrap();
        let other = fs::File::open(&path).unwrap();
        assert!(matches!(
            other.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        w.finish().unwrap();
        other.try_lock_shared().unwrap();
    }

    #[test]
    fn digest_is_the_sha256_of_the_file() {
        let (_dir, path, mut w) = new_cast();
        w.output(ms(1), "données\r\n".as_bytes()).unwrap();
        w.flush().unwrap();
        w.resize(ms(2), 100, 30).unwrap();
        let written = w.bytes_written();
        let done = w.finish().unwrap();
        let bytes = fs::read(&path).unwrap();
        use sha2::Digest;
        assert_eq!(done.sha256_hex, hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(crate::sha256_file(&path).unwrap(), done.sha256_hex);
        assert_eq!(done.bytes, bytes.len() as u64);
        assert_eq!(written, done.bytes);
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        fs::write(&path, "evidence").unwrap();
        match CastWriter::create(&path, header()) {
            Err(Error::Create { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists)
            }
            other => panic!("expected Create error, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "evidence");
    }

    #[cfg(unix)]
    #[test]
    fn recordings_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, _w) = new_cast();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn cap_refuses_an_event_and_keeps_the_file_valid() {
        let (_dir, path, w) = new_cast();
        let header_len = fs::metadata(&path).unwrap().len();
        let mut w = w.with_max_bytes(header_len + 40);
        w.output(ms(1), b"fits").unwrap();
        let err = w.output(ms(2), &[b'x'; 100]).unwrap_err();
        assert!(matches!(err, Error::CapExceeded { max_bytes } if max_bytes == header_len + 40));
        // A refused chunk leaves the held-back UTF-8 untouched.
        w.output(ms(3), b"\xc3").unwrap();
        assert!(w.output(ms(4), &[b'y'; 100]).is_err());
        w.output(ms(5), b"\xa9").unwrap();
        let done = w.finish().unwrap();
        assert!(done.bytes <= header_len + 40);
        assert_eq!(read(&path).text(), "fitsé");
    }
}
