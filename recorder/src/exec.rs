//! Exec sessions without a terminal, recorded byte for byte: what the device sent on stdout and stderr,
//! exactly, in a compact framed file. asciicast v2 cannot hold arbitrary bytes (invalid UTF-8 becomes
//! U+FFFD) and makes them expensive (a NUL is 6 bytes of JSON), and a program's output without a pty is
//! often not text at all (`tar c`, `cat image.dcm`, `dd`).
//!
//! Entry points: [`ExecWriter::create`] records a session as it happens; [`ExecReader`] reads one back
//! frame by frame; [`exec_to_cast`] derives an asciicast v2 file for players (lossy only there: invalid
//! UTF-8 becomes U+FFFD); [`exec_raw`] writes one stream's bytes exactly as the device sent them.
//!
//! Layout, integers little-endian:
//!
//! ```text
//! chaperone-exec v1\n                                 magic line
//! {"timestamp":…,"title":…,"command":…,"env":{…}}\n  header: one JSON line, at most 64 KiB
//! frame*                                              kind u8 | time u64 | len u32 | len bytes
//! ```
//!
//! `time` is microseconds since the session started. Kinds: 1 stdout, 2 stderr, 3 input, 4 marker (a
//! UTF-8 label), 5 resize (cols u16, rows u16). A frame holds at most [`MAX_FRAME`] bytes; longer writes are
//! split. The writer appends only whole frames, and the reader turns anything else (a file cut short,
//! an unknown kind, an oversized length) into [`Error::InvalidExec`] naming the byte offset, never a panic
//! or an allocation larger than one frame.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::asciicast::{CastHeader, CastSink, Encoder, Streamed};
use crate::error::{Error, Result};
use crate::sink::{Finished, HashedFile};

/// The first line of every exec recording.
pub const MAGIC: &[u8] = b"chaperone-exec v1\n";
/// Longest header line, newline included.
pub const MAX_HEADER: usize = 64 * 1024;
/// Most data bytes in one frame.
pub const MAX_FRAME: usize = 1024 * 1024;
/// kind (1) + time (8) + length (4).
const FRAME_HEAD: usize = 13;

/// The header line of an exec recording: what asciicast's header says, minus the terminal size (there is
/// no terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecHeader {
    /// Start of the recording, Unix seconds.
    pub timestamp: i64,
    /// Shown by players after export; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The command that was run; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Environment worth knowing, such as `TERM`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What a frame carries, by its kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Stdout = 1,
    Stderr = 2,
    Input = 3,
    Marker = 4,
    Resize = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Input,
            4 => Kind::Marker,
            5 => Kind::Resize,
            _ => return None,
        })
    }
}

/// Writes one exec session's recording; see the [module docs](self) for the format.
///
/// `at` arguments are the time since the session started. Every method returns an error the caller must
/// act on: after an I/O error the writer refuses every later call. Written frames reach the operating
/// system with the first write more than a second after the previous flush, or on [`flush`](Self::flush);
/// call it on a timer when output may pause.
#[derive(Debug)]
pub struct ExecWriter {
    /// The file and its running digest.
    sink: HashedFile,
}

impl ExecWriter {
    /// Creates the recording file (never overwriting one; mode 0600 on unix) and writes and flushes the
    /// magic line and the header at once.
    pub fn create(path: impl AsRef<Path>, header: &ExecHeader) -> Result<Self> {
        let mut line = serde_json::to_vec(header).map_err(io::Error::from)?;
        line.push(b'\n');
        if line.len() > MAX_HEADER {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "exec recording header is {} bytes, more than {MAX_HEADER}",
                    line.len()
                ),
            )));
        }
        let mut sink = HashedFile::create(path.as_ref())?;
        sink.write_parts(&[MAGIC, &line])?;
        sink.flush()?;
        Ok(Self { sink })
    }

    /// Records bytes the device wrote to stdout.
    pub fn stdout(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.data(Kind::Stdout, at, data)
    }

    /// Records bytes the device wrote to stderr.
    pub fn stderr(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.data(Kind::Stderr, at, data)
    }

    /// Records bytes the vendor sent to the program's stdin.
    pub fn input(&mut self, at: Duration, data: &[u8]) -> Result<()> {
        self.data(Kind::Input, at, data)
    }

    /// [`stdout`](Self::stdout) for data in a shared buffer: bulk output reaches the file without
    /// being copied first.
    pub fn stdout_shared(&mut self, at: Duration, data: Bytes) -> Result<()> {
        self.shared(Kind::Stdout, at, data)
    }

    /// [`stderr`](Self::stderr) for data in a shared buffer.
    pub fn stderr_shared(&mut self, at: Duration, data: Bytes) -> Result<()> {
        self.shared(Kind::Stderr, at, data)
    }

    /// [`input`](Self::input) for data in a shared buffer.
    pub fn input_shared(&mut self, at: Duration, data: Bytes) -> Result<()> {
        self.shared(Kind::Input, at, data)
    }

    /// Records a marker, such as an expiry notice. A label longer than a frame is cut at a character
    /// boundary.
    pub fn marker(&mut self, at: Duration, label: &str) -> Result<()> {
        let mut end = label.len().min(MAX_FRAME);
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        self.frame(Kind::Marker, at, &label.as_bytes()[..end])
    }

    /// Records a window size change (a client may send one even without a pty).
    pub fn resize(&mut self, at: Duration, cols: u16, rows: u16) -> Result<()> {
        let mut size = [0; 4];
        size[..2].copy_from_slice(&cols.to_le_bytes());
        size[2..].copy_from_slice(&rows.to_le_bytes());
        self.frame(Kind::Resize, at, &size)
    }

    /// Refuses, with [`Error::CapExceeded`](crate::Error::CapExceeded), any frame that would make the file
    /// larger than `max_bytes`; the file stays whole up to the frame before.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.sink.set_max_bytes(max_bytes);
        self
    }

    /// Hands every written frame to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.sink.flush()
    }

    /// Size of the file so far, header included.
    pub fn bytes_written(&self) -> u64 {
        self.sink.bytes()
    }

    /// Flushes, fsyncs and closes the file, returning its digest.
    pub fn finish(self) -> Result<Finished> {
        self.sink.finish()
    }

    fn data(&mut self, kind: Kind, at: Duration, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_FRAME) {
            self.frame(kind, at, chunk)?;
        }
        Ok(())
    }

    fn shared(&mut self, kind: Kind, at: Duration, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_FRAME));
            let head = frame_head(kind, at, chunk.len());
            self.sink.write_shared(&head, chunk)?;
        }
        Ok(())
    }

    /// One frame; `data` is at most [`MAX_FRAME`] bytes (the callers split or cut).
    fn frame(&mut self, kind: Kind, at: Duration, data: &[u8]) -> Result<()> {
        let head = frame_head(kind, at, data.len());
        self.sink.write_parts(&[&head, data])
    }
}

/// A frame's head: kind, time in microseconds, length of the data (at most [`MAX_FRAME`]).
fn frame_head(kind: Kind, at: Duration, len: usize) -> [u8; FRAME_HEAD] {
    let micros = u64::try_from(at.as_micros()).unwrap_or(u64::MAX);
    // At most MAX_FRAME (1 MiB), so it fits a u32.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut head = [0u8; FRAME_HEAD];
    head[0] = kind as u8;
    head[1..9].copy_from_slice(&micros.to_le_bytes());
    head[9..].copy_from_slice(&len.to_le_bytes());
    head
}

/// One frame read back, borrowing the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameData<'a> {
    /// Bytes the device wrote to stdout.
    Stdout(&'a [u8]),
    /// Bytes the device wrote to stderr.
    Stderr(&'a [u8]),
    /// Bytes the vendor sent to the program.
    Input(&'a [u8]),
    /// A marker's label.
    Marker(&'a str),
    /// A window size change.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// A frame and when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Time since the session started.
    pub at: Duration,
    /// What was recorded.
    pub data: FrameData<'a>,
}

/// Reads an exec recording frame by frame, validating as it goes; see the [module docs](self).
///
/// The first error ends the reading: [`next_frame`](Self::next_frame) returns it once and `None` after.
#[derive(Debug)]
pub struct ExecReader<R> {
    reader: R,
    header: ExecHeader,
    /// The current frame's data, reused; never longer than [`MAX_FRAME`].
    buf: Vec<u8>,
    /// Offset of the next frame in the file.
    offset: u64,
    done: bool,
    /// Whether a file that ends inside its last frame ends the reading instead of being an error.
    tolerate_cut_off: bool,
    /// Where the file ended inside a frame (offset of that frame), when tolerated.
    cut_off: Option<CutOff>,
    /// Time of the last whole frame read.
    last_at: Duration,
}

/// Where a recording ends inside a frame: what a bastion that stopped while writing leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutOff {
    /// Offset of the incomplete frame in the file.
    pub offset: u64,
    /// Time of the last whole frame (zero when there is none).
    pub last_at: Duration,
}

fn invalid(offset: u64, reason: impl Into<String>) -> Error {
    Error::InvalidExec {
        offset,
        reason: reason.into(),
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: BufRead> ExecReader<R> {
    /// Reads and validates the magic line and the header.
    pub fn new(mut reader: R) -> Result<Self> {
        let mut magic = [0u8; MAGIC.len()];
        let got = read_full(&mut reader, &mut magic)?;
        if magic[..got] != *MAGIC {
            return Err(invalid(
                0,
                "not a chaperone exec recording (the file does not start with \"chaperone-exec v1\")",
            ));
        }
        let mut line = Vec::new();
        // MAX_HEADER fits in a u64 on every platform.
        (&mut reader)
            .take(MAX_HEADER as u64)
            .read_until(b'\n', &mut line)?;
        let header_at = MAGIC.len() as u64;
        if line.last() != Some(&b'\n') {
            return Err(invalid(
                header_at,
                if line.len() >= MAX_HEADER {
                    "the header line is longer than 64 KiB"
                } else {
                    "the file ends inside the header line"
                },
            ));
        }
        let header: ExecHeader = serde_json::from_slice(&line)
            .map_err(|e| invalid(header_at, format!("header: {e}")))?;
        Ok(Self {
            reader,
            header,
            buf: Vec::new(),
            offset: header_at + line.len() as u64,
            done: false,
            tolerate_cut_off: false,
            cut_off: None,
            last_at: Duration::ZERO,
        })
    }

    /// Reads a file that ends inside its last frame up to the last whole frame, then reports the end
    /// ([`cut_off`](Self::cut_off)) instead of an error. For exports of recordings whose digest was
    /// checked first: then a cut-off end is what the writer left when its process stopped, not damage.
    pub fn tolerate_cut_off(mut self) -> Self {
        self.tolerate_cut_off = true;
        self
    }

    /// Where the file ended inside a frame, once reading has reached it (only with
    /// [`tolerate_cut_off`](Self::tolerate_cut_off)).
    pub fn cut_off(&self) -> Option<CutOff> {
        self.cut_off
    }

    /// The header line.
    pub fn header(&self) -> &ExecHeader {
        &self.header
    }

    /// The next frame, `Ok(None)` at the end of the file, or the first error (after which `Ok(None)`).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.done {
            return Ok(None);
        }
        match self.read_frame() {
            Ok(Some((at, kind))) => Ok(Some(Frame {
                at,
                data: self.data(kind),
            })),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    /// The end of a file inside the frame at `at`: an error, or (when tolerated) the end of the reading.
    fn ends_inside(&mut self, at: u64, reason: String) -> Result<Option<(Duration, Kind)>> {
        if !self.tolerate_cut_off {
            return Err(invalid(at, reason));
        }
        self.cut_off = Some(CutOff {
            offset: at,
            last_at: self.last_at,
        });
        Ok(None)
    }

    /// Reads one frame into `buf`, checking everything [`data`](Self::data) relies on.
    fn read_frame(&mut self) -> Result<Option<(Duration, Kind)>> {
        let at = self.offset;
        let mut head = [0u8; FRAME_HEAD];
        match read_full(&mut self.reader, &mut head)? {
            0 => return Ok(None),
            FRAME_HEAD => {}
            n => {
                return self.ends_inside(
                    at,
                    format!("the file ends inside a frame header ({n} of {FRAME_HEAD} bytes)"),
                );
            }
        }
        let kind = Kind::from_byte(head[0])
            .ok_or_else(|| invalid(at, format!("unknown frame kind {}", head[0])))?;
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&head[1..9]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[9..]);
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(invalid(
                at,
                format!("frame length {len} is more than the maximum {MAX_FRAME}"),
            ));
        }
        self.buf.resize(len, 0);
        let got = read_full(&mut self.reader, &mut self.buf)?;
        if got < len {
            return self.ends_inside(
                at,
                format!("the file ends inside a frame ({got} of {len} data bytes)"),
            );
        }
        match kind {
            Kind::Marker if std::str::from_utf8(&self.buf).is_err() => {
                return Err(invalid(at, "marker label is not UTF-8"));
            }
            Kind::Resize if len != 4 => {
                return Err(invalid(
                    at,
                    format!("resize frame has {len} data bytes, not 4"),
                ));
            }
            _ => {}
        }
        self.offset += (FRAME_HEAD + len) as u64;
        self.last_at = Duration::from_micros(u64::from_le_bytes(micros));
        Ok(Some((self.last_at, kind)))
    }

    /// The frame in `buf`, already validated by [`read_frame`](Self::read_frame).
    fn data(&self, kind: Kind) -> FrameData<'_> {
        let buf = &self.buf[..];
        match kind {
            Kind::Stdout => FrameData::Stdout(buf),
            Kind::Stderr => FrameData::Stderr(buf),
            Kind::Input => FrameData::Input(buf),
            // Checked to be UTF-8 in read_frame; the fallback cannot happen.
            Kind::Marker => FrameData::Marker(std::str::from_utf8(buf).unwrap_or_default()),
            Kind::Resize => FrameData::Resize {
                cols: u16::from_le_bytes([buf[0], buf[1]]),
                rows: u16::from_le_bytes([buf[2], buf[3]]),
            },
        }
    }
}

/// Which stream [`exec_raw`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// The program's stdout.
    Stdout,
    /// The program's stderr.
    Stderr,
    /// What the program was sent on its stdin.
    Stdin,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Bytes of the stream written ([`exec_raw`]).
    pub bytes: u64,
    /// The recording ends inside a frame (its writer stopped mid-write): the export ends with the last
    /// whole frame.
    pub cut_off: Option<CutOff>,
}

/// Writes the bytes of one stream of an exec recording to `out`, exactly as the device sent them (stdout,
/// stderr) or was sent them (stdin).
/// The whole recording is read and validated, so an invalid frame after the last byte of this stream is
/// still an error; a recording that ends inside its last frame is exported up to the last whole frame
/// (see [`Exported::cut_off`]; check the recording's digest first).
pub fn exec_raw(
    reader: impl BufRead,
    stream: OutputStream,
    out: &mut impl Write,
) -> Result<Exported> {
    let mut reader = ExecReader::new(reader)?.tolerate_cut_off();
    let mut written = 0u64;
    while let Some(frame) = reader.next_frame()? {
        let bytes = match (frame.data, stream) {
            (FrameData::Stdout(b), OutputStream::Stdout)
            | (FrameData::Stderr(b), OutputStream::Stderr)
            | (FrameData::Input(b), OutputStream::Stdin) => b,
            _ => continue,
        };
        out.write_all(bytes)?;
        written += bytes.len() as u64;
    }
    out.flush()?;
    Ok(Exported {
        bytes: written,
        cut_off: reader.cut_off(),
    })
}

/// Converts an exec recording into a new asciicast v2 file at `path` (never overwriting; mode 0600):
/// stdout and stderr become `o` events, as a terminal would have shown them, input `i`, markers `m`,
/// resizes `r`, each at its recorded time; the terminal is 80x24. A program without a pty writes bare
/// line feeds, which a terminal's line discipline (`onlcr`) would have shown as CR LF: every LF not
/// already preceded by a CR in its own stream is shown as CR LF, so each line starts at the left margin
/// in a player (the recording itself keeps the bytes as sent). Lossy: bytes that are not UTF-8 become
/// U+FFFD. A recording that ends inside its last frame (its writer stopped mid-write; check the digest
/// first) converts up to the last whole frame and ends with a marker saying so. Returns the new file's
/// digest and where the recording was cut off, if it was. On an error the file may be left incomplete.
pub fn exec_to_cast(
    reader: impl BufRead,
    path: impl AsRef<Path>,
) -> Result<(Finished, Option<CutOff>)> {
    let (encoder, cut_off) = convert(reader, |header| Encoder::create(path.as_ref(), &header))?;
    Ok((encoder.sink.finish()?, cut_off))
}

/// [`exec_to_cast`] into `out` instead of a file: no copy of the recording is stored (an export writes
/// it straight into its archive). The same bytes `exec_to_cast` would write; returns `out`, how many
/// bytes went to it and where the recording was cut off, if it was. On an error `out` may hold part
/// of the cast.
pub fn exec_cast_into<W: Write>(reader: impl BufRead, out: W) -> Result<(W, u64, Option<CutOff>)> {
    let (encoder, cut_off) = convert(reader, |header| {
        Encoder::new(Streamed { out, bytes: 0 }, &header)
    })?;
    let Streamed { out, bytes } = encoder.sink;
    Ok((out, bytes, cut_off))
}

/// The cast of an exec recording, into the encoder `start` makes for its header; the encoder after its
/// last line.
fn convert<S: CastSink>(
    reader: impl BufRead,
    start: impl FnOnce(CastHeader) -> Result<Encoder<S>>,
) -> Result<(Encoder<S>, Option<CutOff>)> {
    let mut reader = ExecReader::new(reader)?.tolerate_cut_off();
    let header = reader.header().clone();
    let mut cast = start(CastHeader {
        width: 80,
        height: 24,
        timestamp: header.timestamp,
        title: header.title,
        command: header.command,
        env: header.env,
        // An exec recording's markers are all the bastion's: no device output becomes one.
        markers_attributed: true,
    })?;
    let (mut stdout, mut stderr) = (LineFeeds::default(), LineFeeds::default());
    let mut shown = Vec::new();
    while let Some(frame) = reader.next_frame()? {
        match frame.data {
            FrameData::Stdout(b) => cast.output(frame.at, stdout.as_terminal(b, &mut shown))?,
            FrameData::Stderr(b) => cast.output(frame.at, stderr.as_terminal(b, &mut shown))?,
            FrameData::Input(b) => cast.input(frame.at, b)?,
            FrameData::Marker(label) => cast.marker(frame.at, label)?,
            FrameData::Resize { cols, rows } => cast.resize(frame.at, cols, rows)?,
        }
    }
    let cut_off = reader.cut_off();
    if let Some(cut) = cut_off {
        cast.marker(
            cut.last_at,
            &crate::notice_label(&format!(
                "the recording ends here, cut off inside a frame at byte {}: the bastion stopped while writing it",
                cut.offset
            )),
        )?;
    }
    cast.end()?;
    Ok((cast, cut_off))
}

/// One output stream's line feeds as a terminal with `onlcr` shows them: a bare LF becomes CR LF. Keeps
/// whether the stream's last byte was a CR, since a CR LF pair may be split across two frames.
#[derive(Debug, Default)]
struct LineFeeds {
    after_cr: bool,
}

impl LineFeeds {
    /// `bytes` with every LF that no CR precedes turned into CR LF, in `buf` (reused); `bytes` itself
    /// when there is none. LF never occurs inside a UTF-8 sequence, so text stays whole.
    fn as_terminal<'a>(&mut self, bytes: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
        let mut prev_cr = self.after_cr;
        let bare = bytes.iter().any(|&b| {
            let bare = b == b'\n' && !prev_cr;
            prev_cr = b == b'\r';
            bare
        });
        let after_cr = bytes.last().map_or(self.after_cr, |&b| b == b'\r');
        if !bare {
            self.after_cr = after_cr;
            return bytes;
        }
        buf.clear();
        buf.reserve(bytes.len() + bytes.len() / 16);
        let mut prev_cr = self.after_cr;
        for &b in bytes {
            if b == b'\n' && !prev_cr {
                buf.push(b'\r');
            }
            buf.push(b);
            prev_cr = b == b'\r';
        }
        self.after_cr = after_cr;
        buf
    }
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

    fn header() -> ExecHeader {
        ExecHeader {
            timestamp: 1_763_900_000,
            title: Some("chaperone session 0123: alice@mri-01".into()),
            command: Some("head -c 100 /dev/urandom".into()),
            env: BTreeMap::from([("TERM".into(), "xterm".into())]),
        }
    }

    fn new_exec() -> (tempfile::TempDir, PathBuf, ExecWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.exec");
        let writer = ExecWriter::create(&path, &header()).unwrap();
        (dir, path, writer)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every frame of a file, owned, or the first error.
    fn frames(bytes: &[u8]) -> Result<Vec<(Duration, String)>> {
        let mut reader = ExecReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(f) = reader.next_frame()? {
            out.push((f.at, format!("{:?}", f.data)));
        }
        Ok(out)
    }

    fn pseudo_random(n: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn shared_buffers_make_the_same_file_as_slices() {
        let dir = tempfile::tempdir().unwrap();
        let binary = pseudo_random(3 * MAX_FRAME + 777);
        // Small and large pieces, in and across the 256 KiB buffers, a flush in the middle.
        let sizes = [
            1,
            13,
            4095,
            4096,
            4097,
            32_768,
            100_000,
            MAX_FRAME + 5,
            0,
            70_000,
        ];
        let write = |path: &Path, shared: bool| {
            let mut w = ExecWriter::create(path, &header()).unwrap();
            let mut at = 0;
            for (i, size) in sizes.iter().cycle().take(40).enumerate() {
                let data = &binary[at % 1000..at % 1000 + size];
                at += size;
                let t = ms(i as u64);
                match (shared, i % 3) {
                    (false, 0) => w.stdout(t, data).unwrap(),
                    (false, 1) => w.stderr(t, data).unwrap(),
                    (false, _) => w.input(t, data).unwrap(),
                    (true, 0) => w.stdout_shared(t, Bytes::copy_from_slice(data)).unwrap(),
                    (true, 1) => w.stderr_shared(t, Bytes::copy_from_slice(data)).unwrap(),
                    (true, _) => w.input_shared(t, Bytes::copy_from_slice(data)).unwrap(),
                }
                if i == 17 {
                    w.marker(t, "half way").unwrap();
                    w.flush().unwrap();
                }
            }
            w.finish().unwrap()
        };
        let (a, b) = (dir.path().join("a.exec"), dir.path().join("b.exec"));
        let from_slices = write(&a, false);
        let from_shared = write(&b, true);
        let (bytes_a, bytes_b) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert!(bytes_a.len() > 10 * 256 * 1024, "{}", bytes_a.len());
        assert!(bytes_a == bytes_b, "the files differ");
        assert_eq!(from_slices.sha256_hex, from_shared.sha256_hex);
        assert_eq!(from_shared.bytes, bytes_b.len() as u64);
        assert_eq!(crate::sha256_file(&b).unwrap(), from_shared.sha256_hex);
    }

    #[test]
    fn round_trip_keeps_every_byte_and_time() {
        let (_dir, path, mut w) = new_exec();
        let binary = pseudo_random(100_000);
        let zeros = vec![0u8; MAX_FRAME + 10];
        w.stdout(ms(1), &binary[..50_000]).unwrap();
        w.stderr(ms(2), b"warn\xff\n").unwrap();
        w.stdout(ms(3), &binary[50_000..]).unwrap();
        w.stdout(ms(4), b"").unwrap();
        w.input(ms(5), b"y\n").unwrap();
        w.marker(ms(6), "grant g-42 expires in 5 min").unwrap();
        w.resize(ms(7), 132, 43).unwrap();
        w.stdout(Duration::from_micros(8_000_123), &zeros).unwrap();
        let done = w.finish().unwrap();
        assert_eq!(done.path, path);

        let bytes = fs::read(&path).unwrap();
        assert!(bytes.starts_with(MAGIC));
        let mut reader = ExecReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.header(), &header());
        let mut stdout = Vec::new();
        let mut seen = Vec::new();
        while let Some(frame) = reader.next_frame().unwrap() {
            match frame.data {
                FrameData::Stdout(b) => {
                    assert!(!b.is_empty() && b.len() <= MAX_FRAME);
                    stdout.extend_from_slice(b);
                    seen.push((frame.at, "stdout".to_owned()));
                }
                other => seen.push((frame.at, format!("{other:?}"))),
            }
        }
        let mut expected = binary.clone();
        expected.extend_from_slice(&zeros);
        assert_eq!(stdout, expected);
        let at = Duration::from_micros(8_000_123);
        assert_eq!(
            seen,
            vec![
                (ms(1), "stdout".to_owned()),
                (ms(2), format!("{:?}", FrameData::Stderr(b"warn\xff\n"))),
                (ms(3), "stdout".to_owned()),
                (ms(5), format!("{:?}", FrameData::Input(b"y\n"))),
                (
                    ms(6),
                    format!("{:?}", FrameData::Marker("grant g-42 expires in 5 min"))
                ),
                (
                    ms(7),
                    format!(
                        "{:?}",
                        FrameData::Resize {
                            cols: 132,
                            rows: 43
                        }
                    )
                ),
                // Longer than a frame: split in two.
                (at, "stdout".to_owned()),
                (at, "stdout".to_owned()),
            ]
        );

        let mut raw = Vec::new();
        let n = exec_raw(&bytes[..], OutputStream::Stdout, &mut raw).unwrap();
        assert_eq!(raw, expected);
        assert_eq!(n.bytes, expected.len() as u64);
        assert_eq!(n.cut_off, None);
        let mut err = Vec::new();
        exec_raw(&bytes[..], OutputStream::Stderr, &mut err).unwrap();
        assert_eq!(err, b"warn\xff\n");
    }

    #[test]
    fn overhead_is_thirteen_bytes_a_frame() {
        let (_dir, path, mut w) = new_exec();
        let start = w.bytes_written();
        for i in 0..10 {
            w.stdout(ms(i), &[0; 32 * 1024]).unwrap();
        }
        assert_eq!(w.bytes_written() - start, 10 * (32 * 1024 + 13));
        let done = w.finish().unwrap();
        assert_eq!(done.bytes, fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn digest_is_the_sha256_of_the_file() {
        let (_dir, path, mut w) = new_exec();
        w.stdout(ms(1), &pseudo_random(300_000)).unwrap();
        w.flush().unwrap();
        w.stderr(ms(2), b"done").unwrap();
        let done = w.finish().unwrap();
        let bytes = fs::read(&path).unwrap();
        use sha2::Digest;
        assert_eq!(done.sha256_hex, hex::encode(sha2::Sha256::digest(&bytes)));
        assert_eq!(crate::sha256_file(&path).unwrap(), done.sha256_hex);
        assert_eq!(done.bytes, bytes.len() as u64);
    }

    #[test]
    fn export_to_asciicast_plays_the_output_in_order() {
        let (dir, path, mut w) = new_exec();
        w.stdout(ms(10), "Grüße ".as_bytes()).unwrap();
        w.stderr(ms(20), b"err\n").unwrap();
        // A character split across frames stays whole; invalid bytes become U+FFFD.
        w.stdout(ms(30), b"\xe2\x82").unwrap();
        w.stdout(ms(40), b"\xac \x00\xff\r\n").unwrap();
        w.marker(ms(50), "closing").unwrap();
        w.finish().unwrap();
        let cast_path = dir.path().join("s.cast");
        let (done, cut_off) = exec_to_cast(&fs::read(&path).unwrap()[..], &cast_path).unwrap();
        assert_eq!(done.path, cast_path);
        assert_eq!(cut_off, None);
        let cast = crate::parse_cast(fs::File::open(&cast_path).unwrap()).unwrap();
        assert_eq!(cast.header.timestamp, 1_763_900_000);
        assert_eq!(
            cast.header.command.as_deref(),
            Some("head -c 100 /dev/urandom")
        );
        assert_eq!(cast.header.title, header().title);
        assert_eq!(cast.header.env, header().env);
        // stderr's bare LF is shown as CR LF; stdout's CR LF stays as it was.
        assert_eq!(cast.text(), "Grüße err\r\n€ \0\u{FFFD}\r\n");
        assert_eq!(cast.events.first().unwrap().time, 0.01);
        assert_eq!(
            cast.events.last().unwrap().kind,
            crate::EventKind::Marker("closing".into())
        );
        // The export never overwrites.
        assert!(exec_to_cast(&fs::read(&path).unwrap()[..], &cast_path).is_err());
        // Streamed into an archive instead: the same bytes, and nothing stored.
        let (streamed, bytes, cut_off) =
            exec_cast_into(&fs::read(&path).unwrap()[..], Vec::new()).unwrap();
        assert_eq!(streamed, fs::read(&cast_path).unwrap());
        assert_eq!((bytes, cut_off), (streamed.len() as u64, None));
    }

    /// Issue 11: a program without a pty writes bare LF; the .cast shows every line from the left
    /// margin, as a terminal would have, and an LF after a CR (in one frame or across two of one
    /// stream) is left as it is. The recording keeps the bytes as sent.
    #[test]
    fn issue_11_exec_export_shows_bare_line_feeds_as_crlf() {
        let (dir, path, mut w) = new_exec();
        w.stdout(ms(1), b"one\ntwo\n\nthree\r").unwrap();
        w.stdout(ms(2), b"\nfour\r\n").unwrap();
        // stdout ended with CR LF; a CR on stderr does not pair with stdout's LF, nor the reverse.
        w.stderr(ms(3), b"e1\r").unwrap();
        w.stdout(ms(4), b"\n").unwrap();
        w.stderr(ms(5), b"\ne2\n").unwrap();
        w.finish().unwrap();
        let recorded = fs::read(&path).unwrap();
        let mut raw = Vec::new();
        exec_raw(&recorded[..], OutputStream::Stdout, &mut raw).unwrap();
        assert_eq!(raw, b"one\ntwo\n\nthree\r\nfour\r\n\n");
        let cast_path = dir.path().join("s.cast");
        exec_to_cast(&recorded[..], &cast_path).unwrap();
        let cast = crate::parse_cast(fs::File::open(&cast_path).unwrap()).unwrap();
        let outputs: Vec<String> = cast
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                crate::EventKind::Output(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            outputs,
            [
                "one\r\ntwo\r\n\r\nthree\r",
                "\nfour\r\n",
                "e1\r",
                "\r\n",
                "\ne2\r\n"
            ]
        );
    }

    /// A writer killed mid-frame leaves a file that ends inside a frame. The strict reader calls that an
    /// error; the exports (after the digest check) keep every whole frame and say where it was cut.
    #[test]
    fn a_recording_cut_off_mid_frame_exports_up_to_the_last_whole_frame() {
        let (dir, path, mut w) = new_exec();
        w.stdout(ms(5), b"first line\n").unwrap();
        w.stderr(ms(6), b"warning\n").unwrap();
        w.stdout(ms(7), &[b'x'; 100]).unwrap();
        w.finish().unwrap();
        let whole = fs::read(&path).unwrap();
        let last_frame = whole.len() - 100 - FRAME_HEAD;
        for cut in [last_frame + 1, last_frame + FRAME_HEAD + 40] {
            let bytes = &whole[..cut];
            let mut strict = ExecReader::new(bytes).unwrap();
            let mut error = None;
            loop {
                match strict.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            assert!(error.unwrap().contains("ends inside a frame"));

            let mut raw = Vec::new();
            let exported = exec_raw(bytes, OutputStream::Stdout, &mut raw).unwrap();
            assert_eq!(raw, b"first line\n");
            let cut_off = exported.cut_off.unwrap();
            assert_eq!(cut_off.offset, last_frame as u64);
            assert_eq!(cut_off.last_at, ms(6));

            let cast_path = dir.path().join(format!("cut-{cut}.cast"));
            let (_, cut_off) = exec_to_cast(bytes, &cast_path).unwrap();
            assert!(cut_off.is_some());
            let (streamed, _, streamed_cut_off) = exec_cast_into(bytes, Vec::new()).unwrap();
            assert_eq!(streamed, fs::read(&cast_path).unwrap());
            assert_eq!(streamed_cut_off, cut_off);
            let cast = crate::parse_cast(fs::File::open(&cast_path).unwrap()).unwrap();
            assert_eq!(cast.text(), "first line\r\nwarning\r\n");
            match &cast.events.last().unwrap().kind {
                crate::EventKind::Marker(m) => assert!(m.contains("cut off"), "{m}"),
                other => panic!("last event {other:?}"),
            }
        }
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.exec");
        fs::write(&path, "evidence").unwrap();
        assert!(matches!(
            ExecWriter::create(&path, &header()),
            Err(Error::Create { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "evidence");
    }

    #[test]
    fn an_oversized_header_is_refused_before_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.exec");
        let mut big = header();
        big.command = Some("x".repeat(MAX_HEADER));
        assert!(ExecWriter::create(&path, &big).is_err());
        assert!(!path.exists());
    }

    /// A valid file with a few frames of each kind.
    fn good_file() -> Vec<u8> {
        let (_dir, path, mut w) = new_exec();
        w.stdout(ms(1), b"out").unwrap();
        w.stderr(ms(2), b"err").unwrap();
        w.marker(ms(3), "m").unwrap();
        w.resize(ms(4), 80, 24).unwrap();
        w.input(ms(5), b"in").unwrap();
        w.finish().unwrap();
        fs::read(&path).unwrap()
    }

    fn error_of(bytes: &[u8]) -> (u64, String) {
        match frames(bytes) {
            Err(Error::InvalidExec { offset, reason }) => (offset, reason),
            other => panic!("expected InvalidExec, got {other:?}"),
        }
    }

    #[test]
    fn hostile_and_truncated_files_are_clear_errors() {
        let good = good_file();
        let body = MAGIC.len()
            + good[MAGIC.len()..]
                .iter()
                .position(|&b| b == b'\n')
                .unwrap()
            + 1;
        assert_eq!(frames(&good).unwrap().len(), 5);

        assert!(error_of(b"").1.contains("not a chaperone exec recording"));
        assert!(error_of(b"chaperone-exec v2\n{}\n").1.contains("not a"));
        assert!(error_of(b"{\"version\":2}\n").1.contains("not a"));
        let (offset, reason) = error_of(b"chaperone-exec v1\n{\"timestamp\":1");
        assert_eq!(offset, MAGIC.len() as u64);
        assert!(reason.contains("ends inside the header"), "{reason}");
        assert!(
            error_of(b"chaperone-exec v1\nnot json\n")
                .1
                .contains("header:")
        );
        assert!(error_of(b"chaperone-exec v1\n{}\n").1.contains("timestamp"));
        let mut long = MAGIC.to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_HEADER + 10));
        assert!(error_of(&long).1.contains("longer than 64 KiB"));

        // Cut inside every part of the last frame: header, then data.
        for cut in 1..(13 + 2) {
            let (offset, reason) = error_of(&good[..good.len() - cut]);
            assert_eq!(offset, (good.len() - 13 - 2) as u64, "cut {cut}");
            assert!(reason.contains("ends inside a frame"), "{reason}");
        }
        // A header alone is a valid, empty recording.
        assert_eq!(frames(&good[..body]).unwrap(), vec![]);

        let frame = |kind: u8, len: u32, data: &[u8]| {
            let mut bytes = good[..body].to_vec();
            bytes.push(kind);
            bytes.extend_from_slice(&7u64.to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(data);
            bytes
        };
        let (offset, reason) = error_of(&frame(9, 1, b"x"));
        assert_eq!(
            (offset, reason.as_str()),
            (body as u64, "unknown frame kind 9")
        );
        assert!(
            error_of(&frame(0, 0, b""))
                .1
                .contains("unknown frame kind 0")
        );
        // A huge length is refused before anything is allocated for it.
        assert!(
            error_of(&frame(1, u32::MAX, b""))
                .1
                .contains("more than the maximum")
        );
        assert!(
            error_of(&frame(1, 100, b"short"))
                .1
                .contains("5 of 100 data bytes")
        );
        assert!(error_of(&frame(4, 2, b"\xff\xfe")).1.contains("not UTF-8"));
        assert!(error_of(&frame(5, 3, b"abc")).1.contains("not 4"));
        assert_eq!(frames(&frame(1, 0, b"")).unwrap().len(), 1);

        // After an error the reader stays done.
        let bad = frame(9, 0, b"");
        let mut reader = ExecReader::new(&bad[..]).unwrap();
        assert!(reader.next_frame().is_err());
        assert!(reader.next_frame().unwrap().is_none());
    }

    #[test]
    fn corrupted_files_never_panic_the_reader() {
        let good = good_file();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.clone();
            for k in 0..1 + (state >> 60) as usize % 3 {
                let at = ((state >> (8 * k)) % good.len() as u64) as usize;
                bytes[at] = (state >> (32 + k)) as u8;
            }
            bytes.truncate(good.len() - (state >> 48) as usize % 20);
            let _ = frames(&bytes);
            let _ = exec_raw(&bytes[..], OutputStream::Stdout, &mut io::sink());
        }
    }
}
