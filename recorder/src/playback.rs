//! Playing a recording in a browser without loading it whole: one pass over a terminal recording
//! (asciicast or exec stream) cuts it into segments of about [`SEGMENT_BYTES`] and takes, at each cut, a
//! snapshot of the screen (the `avt` virtual terminal's dump: what to feed a fresh terminal to show the
//! same screen). The player (asciinema-player's segmented recordings) then loads the index and only the
//! segments around the playing position; a segment is read back from its byte range of the file.
//!
//! Entry points: [`index_recording`] (the pass: the index, the whole file's SHA-256, and each line of text
//! a person saw, for the search index), [`segment_events`] (a segment's events from its bytes), and
//! [`IdleMap`] (the idle-time limit, applied to times on the server because segmented recordings are
//! played with their times as given).
//!
//! Exec recordings (no terminal) are shown as a terminal would have shown them: stdout and stderr in
//! order, a bare line feed shown as a new line (CR LF). Input is never shown.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::asciicast::{CastReader, EventKind};
use crate::emulator::{Carried, Emulator};
use crate::exec::{ExecReader, FrameData};
use crate::screen_text;
use crate::transcript::LineTracker;
use crate::{Error, Result, Sha256Reader};

/// Output bytes per segment, about (a segment is cut at the first event after this many).
pub const SEGMENT_BYTES: usize = 512 * 1024;
/// A segment is also cut at the first event after this many times [`SEGMENT_BYTES`] of the file (what
/// little output a flood of resizes, keystrokes or markers shows bounds nothing).
const FILE_BYTES_PER_SEGMENT: u64 = 4;
/// A segment is also cut at the first event after the emulator charged this much work in it
/// (estimated nanoseconds, [`Emulator::spent`]): a player seeking into a segment does all of its
/// work up to there at once (0.25 s), where playing spreads it over the time that earned it. An hour
/// of a wide screen narrowed and widened every five seconds made one 62 KB segment whose seek held
/// the page 38-49 s.
pub const SEGMENT_WORK: u64 = 250_000_000;
/// Pauses shorter than this are never shortened by an idle-time limit (so are not kept).
pub const MIN_GAP: f64 = 0.5;
/// Pauses kept at most (the longest ones of a recording with more are dropped, which only means the
/// idle-time limit does not shorten them).
pub const MAX_GAPS: usize = 200_000;
/// Markers kept at most.
pub const MAX_MARKERS: usize = 100_000;
/// Bytes of one segment's starting screen ([`Segment::init`]) kept at most: a whole 1000 x 500 screen of
/// text is ~0.5 MB, but one whose every cell has colours of its own is ~17 MB.
pub const MAX_INIT_BYTES: usize = 8 << 20;
/// Bytes of all segments' starting screens kept at most, per recording, as the index's JSON holds them (a
/// control character is 6): the index is stored in one database row and read whole for every request of
/// the player (a screen of ~17 MB drawn once, then output that changes nothing, made a segment of 512 KB
/// each carry it: a 59 MB recording gave an 862 MB index).
pub const MAX_INITS_BYTES: usize = 32 << 20;
/// Bytes of markers' labels kept at most, per recording (markers past it are not kept, as past
/// [`MAX_MARKERS`]).
pub const MAX_MARKER_BYTES: usize = 8 << 20;
/// What this build's indexes are: raised whenever what [`index_recording`] builds changes, so that an
/// index stored by an older build (its segments cut by an older rule, its markers unattributed) is
/// built again before it is played rather than trusted because its MAC holds. History: 0, indexes
/// that do not say (older builds); 1, the first to say: a segment starts only after the time of the
/// event before it, markers attributed, terminal sizes bounded, REP counts cut; 2, what full-screen
/// programs showed on the alternate screen is text too ([`crate::screen_text`]); 3, resizes priced for
/// the browser player's emulator too, and those made late counted ([`Index::resizes_delayed`]); 4, REP
/// counts cut counted in [`Index::refused`], segments also cut by the work in them ([`SEGMENT_WORK`]),
/// resizes paced for the page's redraws; 5, leaving the alternate screen priced, segments carrying the
/// emulator's budgets ([`Segment::carried`]); 6, a line the cursor leaves by index, reverse index, a
/// restored position or a deleted line ends there in the text ([`crate::transcript`]); 7, an exec
/// recording's input (a shell without a terminal reads its commands there) is text too.
pub const INDEX_VERSION: u32 = 7;

/// The two terminal recording formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Asciicast,
    Exec,
}

/// Where a line of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The terminal's output (stdout of an exec).
    Output,
    /// An exec's stderr.
    Stderr,
    /// What the vendor typed (only when input is recorded).
    Input,
    /// The command of an exec.
    Command,
}

/// One segment: its byte range in the file and the screen it starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Time of its first event (seconds).
    pub start: f64,
    /// Byte range of its events in the file.
    pub offset: u64,
    pub len: u64,
    /// SHA-256 (hex) of those bytes, filled by the caller's second pass ([`hash_segments`]).
    pub sha256: String,
    /// The terminal's size and screen when the segment starts.
    pub cols: u16,
    pub rows: u16,
    pub init: String,
    /// The index's emulator's budgets and waiting resize when the segment starts (`None` in indexes
    /// made before: a view of it starts with full budgets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried: Option<Carried>,
}

/// What the player needs before it loads a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// [`INDEX_VERSION`] of the build that made it (0: made before indexes said).
    #[serde(default)]
    pub version: u32,
    pub cols: u16,
    pub rows: u16,
    /// Time of the last event (seconds).
    pub duration: f64,
    /// Every marker in order: `(time, label)`.
    pub markers: Vec<(f64, String)>,
    /// The labels say who wrote them ([`crate::MarkerKind::of_recording`]): a terminal recording whose
    /// header says so, or an exec recording. `false` in indexes made before.
    #[serde(default)]
    pub markers_attributed: bool,
    /// Pauses of [`MIN_GAP`] or more: `(time of the event after it, length)`.
    pub gaps: Vec<(f64, f64)>,
    /// Bytes before the first event (the header), prepended when a segment is read back alone.
    pub header_len: u64,
    /// SHA-256 (hex) of those bytes, filled by [`hash_segments`].
    #[serde(default)]
    pub header_sha256: String,
    pub segments: Vec<Segment>,
    /// Terminal operations the recording's output did not pay for, so not emulated, and REP counts cut
    /// to the screen's width ([`crate::emulator`]): 0 for anything a person runs; more, and the screens
    /// at the seek points may keep cells the recording cleared.
    #[serde(default)]
    pub refused: u64,
    /// Segments that start from a blank screen because their starting screen was past
    /// [`MAX_INIT_BYTES`] or all of them past [`MAX_INITS_BYTES`]: played from there, such a segment
    /// shows what it draws itself.
    #[serde(default)]
    pub blank_inits: u64,
    /// Window changes the emulator made later than the recording did, or never
    /// ([`Emulator::delayed`]): the budget could not pay for them then (narrowing a wide screen a great
    /// deal costs the browser player's emulator seconds).
    #[serde(default)]
    pub resizes_delayed: u64,
}

impl Index {
    /// Whether a player must be given this recording's segments as the index emulated them
    /// ([`bounded_events`]), not as recorded: its output or its window changes cost an emulator more
    /// than the recording paid for, and a player given them as they are would do that work.
    pub fn bounded(&self) -> bool {
        self.refused > 0 || self.resizes_delayed > 0
    }
}

/// Counts the bytes consumed through it, so each event's position in the file is known while a reader
/// holds it.
struct Counting<R> {
    inner: R,
    pos: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos.set(self.pos.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.pos.set(self.pos.get() + amount as u64);
        self.inner.consume(amount);
    }
}

/// An exec frame's bytes as a terminal would show them: UTF-8 (else U+FFFD), bare LF as CR LF. Per frame,
/// so the index pass and a segment read back alone give the same text.
fn exec_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() + 16);
    let mut prev = '\0';
    for c in text.chars() {
        if c == '\n' && prev != '\r' {
            out.push('\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// One event for the player.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayEvent {
    pub time: f64,
    /// `o`, `i`, `r` or `m`.
    pub code: char,
    pub data: String,
}

/// Builds the index as events come, in file order.
struct Builder {
    /// The screen as the player would show it (within the work the recording pays for).
    emulator: Emulator,
    /// The emulated screen's size.
    cols: u16,
    rows: u16,
    index: Index,
    /// Output bytes in the current segment.
    seg_bytes: usize,
    /// [`Emulator::spent`] when the current segment started.
    seg_spent: u64,
    /// Output bytes after which the next event starts a new segment ([`SEGMENT_BYTES`]).
    segment_bytes: usize,
    last_time: f64,
    trackers: [LineTracker; 3],
    lines: Vec<String>,
    /// Time of the last output: when the screen took the state it shows.
    shown_at: f64,
    /// Bytes of the segments' starting screens so far (as JSON).
    inits_bytes: usize,
    /// Bytes of the markers' labels so far.
    marker_bytes: usize,
}

impl Builder {
    fn new(cols: u16, rows: u16, header_len: u64, segment_bytes: usize) -> Builder {
        // A recording made before sizes were bounded may claim any: emulate a bounded screen.
        let (cols, rows) = crate::bounded_size(cols, rows);
        Builder {
            emulator: Emulator::new(usize::from(cols), usize::from(rows)),
            shown_at: 0.0,
            inits_bytes: 0,
            marker_bytes: 0,
            cols,
            rows,
            index: Index {
                version: INDEX_VERSION,
                cols,
                rows,
                duration: 0.0,
                markers: Vec::new(),
                markers_attributed: false,
                gaps: Vec::new(),
                header_len,
                header_sha256: String::new(),
                segments: Vec::new(),
                refused: 0,
                blank_inits: 0,
                resizes_delayed: 0,
            },
            seg_bytes: 0,
            seg_spent: 0,
            segment_bytes,
            last_time: 0.0,
            trackers: Default::default(),
            lines: Vec::new(),
        }
    }

    /// An event that starts at byte `offset`; `on_line` gets each line of text it completes.
    fn event(
        &mut self,
        offset: u64,
        event: PlayEvent,
        stream: Stream,
        raw: Option<&[u8]>,
        on_line: &mut impl FnMut(f64, Stream, String),
    ) {
        let time = event.time.max(self.last_time);
        let cut = match self.index.segments.last() {
            None => true,
            // Strictly after every event so far: the player wants each segment's events before the
            // next one's start (an event at the same time as the cut belongs to the segment before).
            // Also by the file's bytes: resizes, keystrokes and markers show little output but are
            // events a page reads whole (a page reads one segment's bytes and builds its events).
            Some(s) => {
                (self.seg_bytes >= self.segment_bytes
                    || offset.saturating_sub(s.offset)
                        >= (self.segment_bytes as u64).saturating_mul(FILE_BYTES_PER_SEGMENT)
                    || self.emulator.spent() - self.seg_spent >= SEGMENT_WORK)
                    && time > self.last_time
            }
        };
        if cut {
            let init = if self.index.segments.is_empty() {
                String::new()
            } else {
                self.starting_screen()
            };
            self.index.segments.push(Segment {
                start: if self.index.segments.is_empty() {
                    0.0
                } else {
                    time
                },
                offset,
                len: 0,
                sha256: String::new(),
                cols: self.cols,
                rows: self.rows,
                init,
                carried: Some(self.emulator.carried()),
            });
            self.seg_bytes = 0;
            self.seg_spent = self.emulator.spent();
        }
        let gap = time - self.last_time;
        if gap >= MIN_GAP && self.index.gaps.len() < MAX_GAPS {
            self.index.gaps.push((time, gap));
        }
        self.last_time = time;
        self.index.duration = time;
        match event.code {
            'o' => {
                self.seg_bytes += event.data.len();
                if time - self.shown_at >= screen_text::SETTLE {
                    self.emulator.settled();
                }
                self.emulator.output(time, &event.data);
                // What the screen showed before this output, read as it was shown.
                for line in self.emulator.take_lines() {
                    on_line(self.shown_at, Stream::Output, line);
                }
                self.shown_at = time;
                // A resize that waited for the budget may have been made.
                self.sync_size();
                let which = if stream == Stream::Stderr { 1 } else { 0 };
                let bytes = raw.unwrap_or(event.data.as_bytes());
                self.trackers[which].push(bytes, &mut self.lines);
                for line in self.lines.drain(..) {
                    if !line.trim().is_empty() {
                        on_line(time, stream, line);
                    }
                }
            }
            'i' => self.input(time, event.data.as_bytes(), on_line),
            'r' => {
                if let Some((c, r)) = parse_size(&event.data) {
                    let (c, r) = crate::bounded_size(c, r);
                    self.emulator.resize(time, usize::from(c), usize::from(r));
                    for line in self.emulator.take_lines() {
                        on_line(self.shown_at, Stream::Output, line);
                    }
                    self.sync_size();
                }
            }
            'm' if self.index.markers.len() < MAX_MARKERS
                && self.marker_bytes + event.data.len() <= MAX_MARKER_BYTES =>
            {
                self.marker_bytes += event.data.len();
                self.index.markers.push((time, event.data));
            }
            _ => {}
        }
    }

    /// What the vendor sent at `time`: its lines, as text of [`Stream::Input`].
    fn input(&mut self, time: f64, bytes: &[u8], on_line: &mut impl FnMut(f64, Stream, String)) {
        self.trackers[2].push(bytes, &mut self.lines);
        for line in self.lines.drain(..) {
            if !line.trim().is_empty() {
                on_line(time, Stream::Input, line);
            }
        }
    }

    /// The screen a segment starts from, within [`MAX_INIT_BYTES`] and [`MAX_INITS_BYTES`] (else blank).
    fn starting_screen(&mut self) -> String {
        if self.inits_bytes >= MAX_INITS_BYTES {
            self.index.blank_inits += 1;
            return String::new();
        }
        let dump = self.emulator.dump();
        let size = json_len(&dump);
        if size > MAX_INIT_BYTES || self.inits_bytes + size > MAX_INITS_BYTES {
            self.index.blank_inits += 1;
            return String::new();
        }
        self.inits_bytes += size;
        dump
    }

    /// The emulated screen's size, within the bounds (it is never larger than asked for).
    fn sync_size(&mut self) {
        let (c, r) = self.emulator.size();
        (self.cols, self.rows) = (
            u16::try_from(c).unwrap_or(crate::MAX_COLS),
            u16::try_from(r).unwrap_or(crate::MAX_ROWS),
        );
    }

    fn finish(mut self, end: u64, on_line: &mut impl FnMut(f64, Stream, String)) -> Index {
        let time = self.last_time;
        self.index.refused = self.emulator.refused();
        self.index.resizes_delayed = self.emulator.delayed();
        self.emulator.finish();
        for line in self.emulator.take_lines() {
            on_line(self.shown_at, Stream::Output, line);
        }
        let [out, err, input] = std::mem::take(&mut self.trackers);
        for (tracker, stream) in [
            (out, Stream::Output),
            (err, Stream::Stderr),
            (input, Stream::Input),
        ] {
            let mut lines = Vec::new();
            tracker.finish(&mut lines);
            for line in lines.into_iter().filter(|l| !l.trim().is_empty()) {
                on_line(time, stream, line);
            }
        }
        if self.index.segments.is_empty() {
            self.index.segments.push(Segment {
                start: 0.0,
                offset: self.index.header_len,
                len: 0,
                sha256: String::new(),
                cols: self.cols,
                rows: self.rows,
                init: String::new(),
                carried: Some(self.emulator.carried()),
            });
        }
        // A last segment that starts at the very end (only its final event) is no segment to a player,
        // which wants every segment to start before the end: it joins the one before.
        if self.index.segments.len() > 1
            && self.index.segments.last().is_some_and(|s| s.start >= time)
        {
            self.index.segments.pop();
        }
        // Each segment runs to the next one's start; the last one to the end of the whole events.
        let mut next = end;
        for s in self.index.segments.iter_mut().rev() {
            s.len = next.saturating_sub(s.offset);
            next = s.offset;
        }
        self.index
    }
}

/// The length of `text` as a JSON string's contents (what the index's row holds): a quote, a backslash
/// and the short escapes are 2 bytes, every other control character 6 (`\u001b`).
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum()
}

fn parse_size(data: &str) -> Option<(u16, u16)> {
    let (c, r) = data.split_once('x')?;
    let (c, r): (u16, u16) = (c.parse().ok()?, r.parse().ok()?);
    (c > 0 && r > 0).then_some((c, r))
}

/// One pass over a terminal recording: its playback [`Index`] (segments without their digests: see
/// [`hash_segments`]) and the SHA-256 (hex) of every byte of the file; `on_line` gets each line of text
/// with the time it was completed. A file cut off inside its last event (a writer that stopped) is read
/// up to the last whole one; anything else invalid is an error.
pub fn index_recording(
    format: Format,
    file: impl Read,
    on_line: impl FnMut(f64, Stream, String),
) -> Result<(Index, String)> {
    index_recording_in(format, file, SEGMENT_BYTES, on_line)
}

/// [`index_recording`] with segments of about `segment_bytes` of output: what the fuzz target uses to
/// cut its small inputs into many segments.
pub fn index_recording_in(
    format: Format,
    file: impl Read,
    segment_bytes: usize,
    mut on_line: impl FnMut(f64, Stream, String),
) -> Result<(Index, String)> {
    let pos = Rc::new(Cell::new(0u64));
    let mut counting = Counting {
        inner: io::BufReader::with_capacity(256 * 1024, Sha256Reader::new(file)),
        pos: pos.clone(),
    };
    let index = match format {
        Format::Asciicast => {
            let mut reader = CastReader::new(&mut counting)?;
            let header = reader.header().clone();
            let mut offset = pos.get();
            let mut builder = Builder::new(header.width, header.height, offset, segment_bytes);
            builder.index.markers_attributed = header.markers_attributed;
            if let Some(command) = &header.command {
                on_line(0.0, Stream::Command, command.clone());
            }
            for event in reader.by_ref() {
                let event = event?;
                let (code, data) = match event.kind {
                    EventKind::Output(d) => ('o', d),
                    EventKind::Input(d) => ('i', d),
                    EventKind::Marker(d) => ('m', d),
                    EventKind::Resize { cols, rows } => ('r', format!("{cols}x{rows}")),
                };
                let event = PlayEvent {
                    time: event.time,
                    code,
                    data,
                };
                builder.event(offset, event, Stream::Output, None, &mut on_line);
                // Where this event ended is where the next one starts.
                offset = pos.get();
            }
            drop(reader);
            builder.finish(offset, &mut on_line)
        }
        Format::Exec => {
            let mut reader = ExecReader::new(&mut counting)?.tolerate_cut_off();
            let header = reader.header().clone();
            let mut offset = pos.get();
            let mut builder = Builder::new(80, 24, offset, segment_bytes);
            // Only the bastion writes an exec recording's markers.
            builder.index.markers_attributed = true;
            if let Some(command) = &header.command {
                on_line(0.0, Stream::Command, command.clone());
            }
            while let Some(frame) = reader.next_frame()? {
                let time = frame.at.as_secs_f64();
                let (code, data, stream, raw) = match frame.data {
                    FrameData::Stdout(b) => ('o', exec_text(b), Stream::Output, Some(b)),
                    FrameData::Stderr(b) => ('o', exec_text(b), Stream::Stderr, Some(b)),
                    FrameData::Marker(l) => ('m', l.to_owned(), Stream::Output, None),
                    FrameData::Resize { cols, rows } => {
                        ('r', format!("{cols}x{rows}"), Stream::Output, None)
                    }
                    // What the program was sent: searchable text (a shell's commands without a
                    // terminal are only here), not drawn.
                    FrameData::Input(b) => {
                        builder.input(time, b, &mut on_line);
                        ('-', String::new(), Stream::Input, None)
                    }
                };
                if code != '-' {
                    let event = PlayEvent { time, code, data };
                    builder.event(offset, event, stream, raw, &mut on_line);
                }
                offset = pos.get();
            }
            drop(reader);
            builder.finish(offset, &mut on_line)
        }
    };
    // The rest of the file (a cut-off last event) counts toward the digest too.
    let sha = counting.inner.into_inner().finish_hex()?;
    Ok((index, sha))
}

/// Fills each segment's SHA-256 from the file (a second sequential read).
pub fn hash_segments(index: &mut Index, mut file: impl Read) -> Result<()> {
    let mut header = Sha256Reader::new((&mut file).take(index.header_len));
    io::copy(&mut header, &mut io::sink())?;
    index.header_sha256 = header.finish_hex()?;
    let mut pos = index.header_len;
    let skip = |file: &mut dyn Read, n: u64| -> io::Result<()> {
        io::copy(&mut file.take(n), &mut io::sink()).map(|_| ())
    };
    for s in &mut index.segments {
        if s.offset > pos {
            skip(&mut file, s.offset - pos)?;
            pos = s.offset;
        }
        let mut hashed = Sha256Reader::new((&mut file).take(s.len));
        let mut sink = io::sink();
        let n = io::copy(&mut hashed, &mut sink)?;
        if n != s.len {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the recording is shorter than its index",
            )));
        }
        s.sha256 = hashed.finish_hex()?;
        pos += s.len;
    }
    Ok(())
}

/// The events of one segment, from the file's header bytes and the segment's own bytes (already checked
/// against their digests by the caller); `start` is the segment's start, which no event precedes (the
/// index pass keeps times from going back across the whole file).
pub fn segment_events(
    format: Format,
    header: &[u8],
    body: &[u8],
    start: f64,
) -> Result<Vec<PlayEvent>> {
    segment_events_from(format, header.chain(body), start)
}

/// [`segment_events`] from a reader of the header's bytes then the segment's: only the events are held,
/// not the bytes (an exec's input frames, which may be most of a segment, are read past). The caller
/// checks the bytes' digests as they are read, and uses the events only if they hold.
pub fn segment_events_from(format: Format, input: impl Read, start: f64) -> Result<Vec<PlayEvent>> {
    let input = io::BufReader::new(input);
    let mut events = Vec::new();
    match format {
        Format::Asciicast => {
            for event in CastReader::new(input)? {
                let event = event?;
                let (code, data) = match event.kind {
                    EventKind::Output(d) => ('o', d),
                    EventKind::Input(d) => ('i', d),
                    EventKind::Marker(d) => ('m', d),
                    EventKind::Resize { cols, rows } => ('r', format!("{cols}x{rows}")),
                };
                events.push(PlayEvent {
                    time: event.time,
                    code,
                    data,
                });
            }
        }
        Format::Exec => {
            let mut reader = ExecReader::new(input)?.tolerate_cut_off();
            while let Some(frame) = reader.next_frame()? {
                let time = frame.at.as_secs_f64();
                let (code, data) = match frame.data {
                    FrameData::Stdout(b) | FrameData::Stderr(b) => ('o', exec_text(b)),
                    FrameData::Marker(l) => ('m', l.to_owned()),
                    FrameData::Resize { cols, rows } => ('r', format!("{cols}x{rows}")),
                    FrameData::Input(_) => continue,
                };
                events.push(PlayEvent { time, code, data });
            }
        }
    }
    // Times as the index saw them: never going back.
    let mut last = start;
    for e in &mut events {
        e.time = e.time.max(last);
        last = e.time;
    }
    Ok(events)
}

/// A segment's events as a player may be given them when the recording's output costs an emulator more
/// than it pays for ([`Index::bounded`]): each output as [`Emulator::output_given`] gives
/// it, from the segment's starting screen, so the player's own emulator (the browser's) does no more
/// work than the index's; a resize where it is made (the latest of those waiting), none where it waits.
/// Markers and keystrokes pass as they are.
pub fn bounded_events(events: Vec<PlayEvent>, segment: &Segment) -> Vec<PlayEvent> {
    let mut e = Emulator::showing(
        usize::from(segment.cols),
        usize::from(segment.rows),
        &segment.init,
        segment.carried.as_ref(),
    );
    let first = events.first().map(|e| e.time);
    let mut out = Vec::with_capacity(events.len());
    let size = |e: &Emulator| {
        let (c, r) = e.size();
        format!("{c}x{r}")
    };
    for event in events {
        let before = e.size();
        match event.code {
            'o' => {
                let data = e.output_given(event.time, &event.data);
                if e.size() != before {
                    out.push(PlayEvent {
                        time: event.time,
                        code: 'r',
                        data: size(&e),
                    });
                }
                out.push(PlayEvent { data, ..event });
            }
            'r' => {
                if let Some((c, r)) = parse_size(&event.data) {
                    let (c, r) = crate::bounded_size(c, r);
                    e.resize(event.time, usize::from(c), usize::from(r));
                }
                if e.size() != before {
                    out.push(PlayEvent {
                        data: size(&e),
                        ..event
                    });
                }
            }
            _ => out.push(event),
        }
    }
    // The player waits for ever at a segment whose first event comes after its start (checked in
    // Chromium): a resize left out there is replaced by an empty output.
    if let Some(time) = first
        && out.first().is_none_or(|e| e.time > time)
    {
        out.insert(
            0,
            PlayEvent {
                time,
                code: 'o',
                data: String::new(),
            },
        );
    }
    out
}

/// Transfer log lines read at most by [`read_transfers`].
pub const MAX_TRANSFER_LINES: usize = 100_000;
/// Bytes of transfer log lines read at most by [`read_transfers`]: an scp error line may be 32 KiB, and
/// 100,000 of them read whole for one page view were 3 GB.
pub const MAX_TRANSFER_BYTES: usize = 16 << 20;
/// The longest line of a transfer log that is read (its writer keeps paths to 1 KiB of text).
const MAX_TRANSFER_LINE: usize = 1 << 20;

/// One line of a transfer log: when, and what.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TransferLine {
    /// Seconds since the session started.
    pub t: f64,
    #[serde(flatten)]
    pub event: crate::TransferEvent,
}

/// Reads a transfer log (at most [`MAX_TRANSFER_LINES`] lines and [`MAX_TRANSFER_BYTES`] of them, the
/// rest counted) and the SHA-256 (hex)
/// of the whole file. A last line cut short (a writer that stopped) is left out; any other line that is
/// not an event is an error.
pub fn read_transfers(file: impl Read) -> Result<(Vec<TransferLine>, usize, String)> {
    let mut reader = io::BufReader::new(Sha256Reader::new(file));
    let mut lines = Vec::new();
    let mut more = 0;
    let mut buf = Vec::new();
    let mut n = 0u64;
    let mut kept = 0usize;
    loop {
        buf.clear();
        if (&mut reader)
            .take(MAX_TRANSFER_LINE as u64)
            .read_until(b'\n', &mut buf)?
            == 0
        {
            break;
        }
        n += 1;
        if buf.trim_ascii().is_empty() {
            continue;
        }
        if !buf.ends_with(b"\n") && buf.len() >= MAX_TRANSFER_LINE {
            // Not the writer cut off at the end: a line too long to read. Said, not skipped: a long line
            // must not hide the transfers after it.
            return Err(Error::InvalidCast {
                line: n,
                reason: format!("transfer log: a line longer than {MAX_TRANSFER_LINE} bytes"),
            });
        }
        match serde_json::from_slice::<TransferLine>(&buf) {
            Ok(line)
                if lines.len() < MAX_TRANSFER_LINES && kept + buf.len() <= MAX_TRANSFER_BYTES =>
            {
                kept += buf.len();
                lines.push(line);
            }
            Ok(_) => more += 1,
            // No newline and not too long: the end of the file, where a writer that stopped cut it.
            Err(_) if !buf.ends_with(b"\n") => break,
            Err(e) => {
                return Err(Error::InvalidCast {
                    line: n,
                    reason: format!("transfer log: {e}"),
                });
            }
        }
    }
    let sha = reader.into_inner().finish_hex()?;
    Ok((lines, more, sha))
}

/// The idle-time limit: every pause longer than `limit` seconds is shortened to `limit`, on every time
/// the player is given (segment starts, events, markers, the duration, search hits).
#[derive(Debug, Clone)]
pub struct IdleMap {
    /// `(time of the event after the pause, seconds removed up to and including it)`.
    cuts: Vec<(f64, f64)>,
}

impl IdleMap {
    /// `limit` of `None` (or not above [`MIN_GAP`]'s half) keeps every pause.
    pub fn new(gaps: &[(f64, f64)], limit: Option<f64>) -> IdleMap {
        let mut cuts = Vec::new();
        if let Some(limit) = limit.filter(|l| l.is_finite() && *l >= MIN_GAP) {
            let mut removed = 0.0;
            for &(at, gap) in gaps {
                if gap > limit {
                    removed += gap - limit;
                    cuts.push((at, removed));
                }
            }
        }
        IdleMap { cuts }
    }

    /// `t` with the pauses before it shortened.
    pub fn map(&self, t: f64) -> f64 {
        let n = self.cuts.partition_point(|&(at, _)| at <= t);
        match n {
            0 => t,
            n => t - self.cuts[n - 1].1,
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::{CastHeader, CastWriter, ExecHeader, ExecWriter};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn cast(events: &[(f64, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut w = CastWriter::create(
            &path,
            CastHeader {
                width: 40,
                height: 10,
                timestamp: 1,
                title: None,
                command: None,
                env: BTreeMap::new(),
                markers_attributed: false,
            },
        )
        .unwrap();
        for (t, o) in events {
            let at = Duration::from_secs_f64(*t);
            if let Some(label) = o.strip_prefix("m:") {
                w.marker(at, label).unwrap();
            } else {
                w.output(at, o.as_bytes()).unwrap();
            }
        }
        w.finish().unwrap();
        (dir, path)
    }

    /// A recording that claims a screen of 65535 x 65535 (made before sizes were bounded, or forged) is
    /// played and indexed on a bounded one, not by allocating ~68 GB of cells.
    #[test]
    fn a_huge_claimed_terminal_is_emulated_at_the_bound() {
        let file = concat!(
            "{\"version\":2,\"width\":65535,\"height\":65535,\"timestamp\":1}\n",
            "[0.1,\"o\",\"hello\\r\\n\"]\n",
            "[0.2,\"r\",\"65535x65535\"]\n",
            "[0.3,\"o\",\"world\\r\\n\"]\n",
        );
        let mut lines = Vec::new();
        let (index, _) =
            index_recording(Format::Asciicast, file.as_bytes(), |_, _, l| lines.push(l)).unwrap();
        assert_eq!((index.cols, index.rows), (crate::MAX_COLS, crate::MAX_ROWS));
        assert!(
            index
                .segments
                .iter()
                .all(|s| s.cols <= crate::MAX_COLS && s.rows <= crate::MAX_ROWS)
        );
        assert_eq!(lines, ["hello", "world"]);
    }

    /// What an editor showed on the alternate screen is text too, timed when it was on the screen: the
    /// file as opened (read after the vendor paused over it), and the edit typed and saved without a
    /// pause (read as the editor left); the line tracker's lines around it are unchanged.
    #[test]
    fn a_full_screen_editor_s_screen_is_indexed_when_it_was_shown() {
        let (_d, path) = cast(&[
            (0.1, "$ vi /etc/scanner.conf\r\n"),
            (
                0.2,
                "\x1b[?1049h\x1b[H\x1b[2Jcoil_gain = 3\r\n~\x1b[10;1H\"scanner.conf\" 1L",
            ),
            (4.0, "\x1b[1;13H"),
            (4.1, "\x1b[K7"),
            (4.3, "\x1b[10;1H\x1b[K:wq"),
            (4.4, "\x1b[?1049l$ exit\r\n"),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let mut lines = Vec::new();
        index_recording(Format::Asciicast, &bytes[..], |t, s, l| {
            lines.push((t, s, l))
        })
        .unwrap();
        let lines: Vec<(f64, &str)> = lines.iter().map(|(t, _, l)| (*t, l.as_str())).collect();
        assert_eq!(
            lines,
            [
                (0.1, "$ vi /etc/scanner.conf"),
                (0.2, "coil_gain = 3"),
                (0.2, "~"),
                (0.2, "\"scanner.conf\" 1L"),
                (4.3, "coil_gain = 7"),
                (4.3, ":wq"),
                (4.4, "$ exit"),
            ]
        );
    }

    /// A transfer log of long lines (an scp source's error lines) is read up to its byte bound, the rest
    /// counted and hashed.
    #[test]
    fn a_transfer_log_is_read_up_to_its_byte_bound() {
        let text = "e".repeat(100_000);
        let line = format!("{{\"t\":1.0,\"event\":\"stderr\",\"text\":\"{text}\"}}\n");
        let log = line.repeat(300);
        let (lines, more, digest) = read_transfers(log.as_bytes()).unwrap();
        assert_eq!(lines.len(), MAX_TRANSFER_BYTES / line.len());
        assert_eq!(lines.len() + more, 300);
        assert_eq!(
            digest,
            crate::Sha256Reader::new(log.as_bytes())
                .finish_hex()
                .unwrap()
        );
    }

    /// A flood of window changes (no output between them) is cut into segments by the file's bytes, so a
    /// page never reads and builds more than a few segments' worth at once.
    #[test]
    fn window_changes_without_output_are_cut_into_segments_too() {
        let mut file = String::from("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1}\n");
        file.push_str("[0.1,\"o\",\"hello\"]\n");
        let mut t = 0.1;
        for i in 0..20_000 {
            t += 0.001;
            file.push_str(&format!("[{t:.3},\"r\",\"{}x24\"]\n", 80 + i % 2));
        }
        let (index, _) =
            index_recording_in(Format::Asciicast, file.as_bytes(), 1000, |_, _, _| {}).unwrap();
        let longest = index.segments.iter().map(|s| s.len).max().unwrap();
        assert!(index.segments.len() > 50, "{}", index.segments.len());
        assert!(longest <= 4 * 1000 + 100, "{longest}");
    }

    /// A cast on the largest screen whose output clears, fills and resets it 2,000 times over 20 s
    /// (far more than its size pays for).
    fn clears_and_fills() -> String {
        let mut file =
            String::from("{\"version\":2,\"width\":1000,\"height\":500,\"timestamp\":1}\n");
        for i in 0..2000 {
            file.push_str(&format!(
                "[{}.0,\"o\",\"x\\u001b[2J\\u001b#8\\u001bc\"]\n",
                i / 100
            ));
        }
        file
    }

    /// What a player is given of a segment whose output costs more than it pays for is held to the same
    /// budget as the index (the browser's emulator has no budget of its own); a segment of ordinary
    /// output is given as it is.
    #[test]
    fn a_player_is_given_no_more_work_than_the_index_did() {
        let file = clears_and_fills();
        let (index, _) = index_recording(Format::Asciicast, file.as_bytes(), |_, _, _| {}).unwrap();
        assert!(index.refused > 0);
        let header = &file.as_bytes()[..index.header_len as usize];
        let mut events = Vec::new();
        let mut given = Vec::new();
        for seg in &index.segments {
            let body = &file.as_bytes()[seg.offset as usize..(seg.offset + seg.len) as usize];
            let read = segment_events(Format::Asciicast, header, body, seg.start).unwrap();
            given.extend(bounded_events(read.clone(), seg));
            events.extend(read);
        }
        let priced = |events: &[PlayEvent]| {
            let mut parser = avt::Parser::new();
            events
                .iter()
                .flat_map(|e| e.data.chars().collect::<Vec<_>>())
                .filter_map(|c| parser.feed(c))
                .filter(|f| {
                    matches!(
                        f,
                        avt::parser::Function::Ed(_)
                            | avt::parser::Function::Decaln
                            | avt::parser::Function::Ris
                    )
                })
                .count()
        };
        assert_eq!(priced(&events), 6000);
        // The cap, 300 ns a byte and 20 ms a second pay for a few hundred at 0.35-2.25 ms each.
        assert!(priced(&given) < 600, "{}", priced(&given));
        assert_eq!(given.len(), events.len());
        // Ordinary output is given unchanged.
        let (_d, path) = cast(&[
            (0.1, "$ ls\r\n"),
            (0.2, "\x1b[2Jfile\r\n"),
            (0.3, "\x1b[?1049hx\x1b[?1049l"),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let (index, _) = index_recording(Format::Asciicast, &bytes[..], |_, _, _| {}).unwrap();
        assert!(!index.bounded());
        let seg = &index.segments[0];
        let header = &bytes[..index.header_len as usize];
        let body = &bytes[seg.offset as usize..(seg.offset + seg.len) as usize];
        let events = segment_events(Format::Asciicast, header, body, seg.start).unwrap();
        assert_eq!(bounded_events(events.clone(), seg), events);
    }

    /// An hour of a red 1000 x 500 screen narrowed to 10 columns and widened again every five seconds
    /// (62 KB; each narrowing ~70 ms of the browser player's work, paid by the time between): a seek to
    /// its end replayed the whole hour's work at once (49 s in Chromium). Segments are cut by the work
    /// in them, so a seek does at most about [`SEGMENT_WORK`] and one operation.
    #[test]
    fn a_seek_does_a_bounded_part_of_the_work() {
        let mut file =
            String::from("{\"version\":2,\"width\":1000,\"height\":500,\"timestamp\":1}\n");
        file.push_str("[0.0,\"o\",\"\\u001b[41m\\u001b[2J\"]\n");
        let mut t = 1.0;
        while t < 3600.0 {
            file.push_str(&format!(
                "[{t:.1},\"r\",\"10x500\"]\n[{:.1},\"r\",\"1000x500\"]\n",
                t + 2.5
            ));
            t += 5.0;
        }
        let (index, _) = index_recording(Format::Asciicast, file.as_bytes(), |_, _, _| {}).unwrap();
        // 720 cycles of ~92 ms priced for the player's narrowing, ~750 ms for the two redraws (paced).
        assert!(
            index.segments.len() >= 100,
            "{} segments",
            index.segments.len()
        );
        let header = &file.as_bytes()[..index.header_len as usize];
        for seg in &index.segments {
            let body = &file.as_bytes()[seg.offset as usize..(seg.offset + seg.len) as usize];
            let events = segment_events(Format::Asciicast, header, body, seg.start).unwrap();
            let mut e = Emulator::showing(
                usize::from(seg.cols),
                usize::from(seg.rows),
                &seg.init,
                seg.carried.as_ref(),
            );
            for ev in &events {
                if let Some((c, r)) = parse_size(&ev.data).filter(|_| ev.code == 'r') {
                    e.resize(ev.time, usize::from(c), usize::from(r));
                }
            }
            // What a seek to the segment's end replays: at most the bound, one redraw of the
            // largest screen and one narrowing more.
            assert!(e.spent() <= SEGMENT_WORK + 850_000_000, "{} ns", e.spent());
        }
    }

    /// REP counts past the screen's width (9 bytes asking for 65,535 prints; the browser player's avt
    /// crashed on 10,000 of them): the index counts the cuts, so the player is given the counts as cut.
    #[test]
    fn a_player_is_given_rep_counts_as_cut() {
        let mut file = String::from("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1}\n");
        file.push_str(&format!(
            "[0.1,\"o\",\"{}\"]\n",
            "x\\u001b[65535b".repeat(1000)
        ));
        let (index, _) = index_recording(Format::Asciicast, file.as_bytes(), |_, _, _| {}).unwrap();
        assert_eq!(index.refused, 1000);
        assert!(index.bounded());
        let header = &file.as_bytes()[..index.header_len as usize];
        let seg = &index.segments[0];
        let body = &file.as_bytes()[seg.offset as usize..(seg.offset + seg.len) as usize];
        let events = segment_events(Format::Asciicast, header, body, seg.start).unwrap();
        let given: String = bounded_events(events, seg)
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(given.matches("\x1b[80b").count(), 1000);
        assert!(!given.contains("65535"));
    }

    /// A recording whose window is narrowed from the largest screen to one column and back, with one
    /// wrapped line redrawn across the screen between (seconds a cycle for the browser player's avt): the
    /// index says so, and the player is given its segments with the narrowest change left out.
    #[test]
    fn a_player_is_not_given_a_window_change_it_cannot_afford() {
        let mut file =
            String::from("{\"version\":2,\"width\":1000,\"height\":500,\"timestamp\":1}\n");
        let line = "x".repeat(1000 * 499);
        let mut t = 0.0;
        for _ in 0..5 {
            for size in ["1000x500", "999x500", "1x500"] {
                file.push_str(&format!("[{t:.2},\"r\",\"{size}\"]\n"));
                t += 0.01;
            }
            file.push_str(&format!("[{t:.2},\"o\",\"\\u001b[H{line}\"]\n"));
            t += 0.01;
        }
        let (index, _) = index_recording(Format::Asciicast, file.as_bytes(), |_, _, _| {}).unwrap();
        assert!(index.resizes_delayed >= 5, "{}", index.resizes_delayed);
        assert!(index.bounded());
        let header = &file.as_bytes()[..index.header_len as usize];
        let mut recorded = 0;
        let mut given = Vec::new();
        for seg in &index.segments {
            let body = &file.as_bytes()[seg.offset as usize..(seg.offset + seg.len) as usize];
            let events = segment_events(Format::Asciicast, header, body, seg.start).unwrap();
            recorded += events.iter().filter(|e| e.data == "1x500").count();
            given.extend(bounded_events(events, seg));
        }
        assert_eq!(recorded, 5);
        assert!(
            given.iter().all(|e| e.data != "1x500"),
            "the costly change given"
        );
        for seg in &index.segments {
            let body = &file.as_bytes()[seg.offset as usize..(seg.offset + seg.len) as usize];
            let events = segment_events(Format::Asciicast, header, body, seg.start).unwrap();
            assert_eq!(bounded_events(events.clone(), seg)[0].time, events[0].time);
        }
        assert!(given.iter().any(|e| e.code == 'r' && e.data == "999x500"));
        // The output is all given.
        let lines = given
            .iter()
            .filter(|e| e.data.ends_with(line.as_str()))
            .count();
        assert_eq!(lines, 5);
    }

    /// A screen whose every cell has colours of its own (a dump of ~35 bytes a cell), drawn once and then
    /// kept by output that changes nothing, does not make every segment carry it: the segments' starting
    /// screens stay within their bound and the rest start blank (counted).
    #[test]
    fn a_costly_screen_is_not_copied_into_every_segment() {
        let mut file =
            String::from("{\"version\":2,\"width\":300,\"height\":100,\"timestamp\":1}\n");
        let mut n = 0u32;
        let mut t = 0.0;
        for _row in 0..100 {
            let mut s = String::new();
            for _col in 0..300 {
                n = n.wrapping_mul(1103515245).wrapping_add(12345);
                s.push_str(&format!(
                    "\x1b[38;2;{};{};{};48;2;{};{};{}mx",
                    n % 256,
                    (n >> 8) % 256,
                    (n >> 16) % 256,
                    (n >> 3) % 256,
                    (n >> 11) % 256,
                    (n >> 19) % 256
                ));
            }
            t += 0.01;
            file.push_str(&format!(
                "[{t:.2},\"o\",{}]\n",
                serde_json::to_string(&s).unwrap()
            ));
        }
        let home = serde_json::to_string(&"\x1b[H".repeat(1000)).unwrap();
        for _ in 0..300 {
            t += 0.01;
            file.push_str(&format!("[{t:.2},\"o\",{home}]\n"));
        }
        // Segments of 3 KB of output: ~300 of them, each to start from a ~1 MB screen.
        let (index, _) =
            index_recording_in(Format::Asciicast, file.as_bytes(), 3000, |_, _, _| {}).unwrap();
        let inits: usize = index.segments.iter().map(|s| s.init.len()).sum();
        assert!(
            inits <= MAX_INITS_BYTES,
            "{inits} bytes of starting screens"
        );
        assert!(index.segments.len() > 200, "{}", index.segments.len());
        assert!(index.blank_inits > 100, "{}", index.blank_inits);
        assert!(
            index.segments.iter().any(|s| s.init.len() > 500_000),
            "the first ones are kept"
        );
    }

    /// A recording whose output clears and fills the largest screen over and over is indexed within the
    /// work its size pays for (not hours per gigabyte), says how much it refused, and its text is read.
    #[test]
    fn output_that_costs_the_emulator_more_than_it_pays_is_refused() {
        let mut file = clears_and_fills();
        file.push_str("[30.0,\"o\",\"\\u001b[Hdone\\r\\n\"]\n");
        let mut lines = Vec::new();
        let (index, _) =
            index_recording(Format::Asciicast, file.as_bytes(), |_, _, l| lines.push(l)).unwrap();
        assert!(index.refused > 5000, "{}", index.refused);
        assert!(lines.iter().any(|l| l.contains("done")), "{lines:?}");
    }

    #[test]
    fn a_recording_is_cut_into_segments_that_read_back_alone() {
        let big = "x".repeat(SEGMENT_BYTES);
        let (_d, path) = cast(&[
            (0.1, "$ ls\r\n"),
            (0.2, "m:$ ls"),
            (0.3, &big),
            (5.0, "\x1b[31mred\r\n"),
            (5.0, "same time\r\n"),
            (9.5, "last"),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let mut lines = Vec::new();
        let (mut index, sha) = index_recording(Format::Asciicast, &bytes[..], |t, s, l| {
            lines.push((t, s, l))
        })
        .unwrap();
        assert_eq!(sha, crate::sha256_file(&path).unwrap());
        assert_eq!(index.segments.len(), 2, "{index:?}");
        assert_eq!(index.segments[1].start, 5.0);
        assert_eq!(index.markers, [(0.2, "$ ls".to_owned())]);
        // A cast whose header does not say its labels follow the marker rule: unattributed.
        assert!(!index.markers_attributed);
        assert_eq!(index.gaps, [(5.0, 4.7), (9.5, 4.5)]);
        assert!(index.segments[1].init.contains('x'), "the screen so far");
        assert_eq!(index.duration, 9.5);
        let texts: Vec<&str> = lines.iter().map(|(_, _, l)| l.as_str()).collect();
        assert_eq!(texts[0], "$ ls");
        assert!(texts.contains(&"red") && texts.contains(&"last"));
        hash_segments(&mut index, &bytes[..]).unwrap();
        let header = &bytes[..index.header_len as usize];
        let mut all = Vec::new();
        for s in &index.segments {
            let body = &bytes[s.offset as usize..(s.offset + s.len) as usize];
            assert_eq!(
                s.sha256,
                crate::Sha256Reader::new(body).finish_hex().unwrap()
            );
            let events = segment_events(Format::Asciicast, header, body, s.start).unwrap();
            assert_eq!(events[0].time, s.start.max(0.1));
            all.extend(events);
        }
        assert_eq!(all.len(), 6);
        assert_eq!(all.last().unwrap().data, "last");
    }

    /// Found by the `playback` fuzz target: an event at the same time as the last one must not start a
    /// segment, or the segment before holds an event at the next one's start, which the asciinema
    /// player refuses ("event time is out of range"), and the recording does not play.
    #[test]
    fn no_segment_starts_at_the_time_of_an_event_before_it() {
        let big = "x".repeat(SEGMENT_BYTES);
        let (_d, path) = cast(&[
            (0.1, "a"),
            (1.3, &big),
            (1.3, "same"),
            (2.0, "b"),
            (3.0, "c"),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let (index, _) = index_recording(Format::Asciicast, &bytes[..], |_, _, _| {}).unwrap();
        assert_eq!(index.segments.len(), 2, "{index:?}");
        assert_eq!(index.segments[1].start, 2.0);
        let header = &bytes[..index.header_len as usize];
        let s = &index.segments[0];
        let body = &bytes[s.offset as usize..(s.offset + s.len) as usize];
        let events = segment_events(Format::Asciicast, header, body, s.start).unwrap();
        assert!(events.iter().all(|e| e.time < index.segments[1].start));
    }

    #[test]
    fn exec_output_reads_as_a_terminal_showed_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.exec");
        let mut w = ExecWriter::create(
            &path,
            &ExecHeader {
                timestamp: 1,
                title: None,
                command: Some("cat /etc/motd".into()),
                env: BTreeMap::new(),
            },
        )
        .unwrap();
        w.stdout(Duration::from_millis(10), b"one\ntwo\n").unwrap();
        w.stderr(Duration::from_millis(20), b"oops\n").unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut lines = Vec::new();
        let (index, _) =
            index_recording(Format::Exec, &bytes[..], |_, s, l| lines.push((s, l))).unwrap();
        assert!(
            index.markers_attributed,
            "only the bastion writes an exec recording's markers"
        );
        assert_eq!(
            lines,
            [
                (Stream::Command, "cat /etc/motd".to_owned()),
                (Stream::Output, "one".into()),
                (Stream::Output, "two".into()),
                (Stream::Stderr, "oops".into())
            ]
        );
        let s = &index.segments[0];
        let events = segment_events(
            Format::Exec,
            &bytes[..index.header_len as usize],
            &bytes[s.offset as usize..(s.offset + s.len) as usize],
            s.start,
        )
        .unwrap();
        assert_eq!(events[0].data, "one\r\ntwo\r\n");
    }

    #[test]
    fn the_idle_limit_shortens_long_pauses_only() {
        let map = IdleMap::new(&[(5.0, 4.7), (9.5, 4.5), (10.0, 0.5)], Some(2.0));
        assert_eq!(map.map(1.0), 1.0);
        assert!((map.map(5.0) - 2.3).abs() < 1e-9);
        assert!((map.map(9.5) - 4.3).abs() < 1e-9);
        assert_eq!(IdleMap::new(&[(5.0, 4.7)], None).map(5.0), 5.0);
    }

    /// A transfer log line cut at the end of the file (a writer that stopped) is left out; a line too long
    /// to read is an error, never a silent end that would hide the transfers after it.
    #[test]
    fn a_transfer_log_line_too_long_is_an_error_not_the_end() {
        let line = |t: f64, path: &str| {
            format!(
                "{{\"t\":{t},\"event\":\"op\",\"op\":\"remove\",\"path\":\"{path}\",\"outcome\":\"ok\"}}\n"
            )
        };
        let cut = format!("{}{}", line(0.1, "/a"), &line(0.2, "/b")[..20]);
        let (lines, more, _) = read_transfers(cut.as_bytes()).unwrap();
        assert_eq!((lines.len(), more), (1, 0));
        let long = format!(
            "{}{}{}",
            line(0.1, "/a"),
            line(0.2, &"x".repeat(MAX_TRANSFER_LINE)),
            line(0.3, "/firmware.bin")
        );
        let err = read_transfers(long.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("a line longer than"), "{err}");
    }
}
