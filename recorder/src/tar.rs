//! A small POSIX ustar writer and a strict reader, for evidence bundles: regular files and directories
//! with plain relative names, nothing else.
//!
//! Entry points: [`TarWriter`] (what `chaperone evidence export` writes) and [`TarReader`] (what
//! `chaperone evidence verify` reads, from anyone: hostile input ends in a [`TarError`], never a panic
//! or an allocation beyond one 512-byte block).
//!
//! Why not the `tar` crate: a bundle needs regular files and directories only, written once and read
//! back by stock `tar` and by our verifier; the format for that is a 512-byte header per entry
//! (ustar, POSIX.1-1988), about a hundred lines each way, and it keeps the parser where the fuzz
//! targets can reach it. Sizes of 8 GiB and more use the base-256 size field GNU tar and bsdtar read.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// The most entries a reader accepts (a bundle has a handful).
const MAX_ENTRIES: usize = 10_000;
/// The longest name (prefix + `/` + name) a reader accepts.
const MAX_NAME: usize = 255;

/// Why a tar could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading or writing failed.
    #[error("tar I/O failed")]
    Io(#[from] io::Error),
    /// The archive is not a ustar archive this reader accepts.
    #[error("invalid tar at byte {offset}: {reason}")]
    Invalid {
        /// Where the bad header starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A name the writer cannot store (too long, not plain ASCII, absolute or with `..`).
    #[error("cannot store {name:?} in a tar: {reason}")]
    Name {
        /// The name asked for.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// A file's content ended before the size its header announced (it changed while being written).
    #[error("{name}: {got} bytes where {expected} were announced")]
    Short {
        /// The entry.
        name: String,
        /// Bytes announced in the header.
        expected: u64,
        /// Bytes actually read.
        got: u64,
    },
    /// An earlier entry failed part-way: nothing more is written to an archive that is already wrong.
    #[error("the archive broke off at an earlier entry")]
    BrokenOff,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// An entry's header, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The path inside the archive (`dir/file`), checked: relative, no `..`, no empty component.
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Bytes of content (0 for a directory).
    pub size: u64,
}

/// Writes a ustar archive to `out`: every entry owned by uid 0, with one modification time.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
    /// An entry was started and did not end: every later call is [`TarError::BrokenOff`], so an archive
    /// with a wrong entry is never finished as if it were whole.
    broken: bool,
}

impl<W: Write> TarWriter<W> {
    /// A writer whose entries carry modification time `mtime` (unix seconds).
    pub fn new(out: W, mtime: u64) -> Self {
        TarWriter {
            out,
            mtime,
            broken: false,
        }
    }

    /// The header of a new entry, once the archive is known whole: from here until the entry's end
    /// the archive counts as broken off.
    fn start(&mut self, name: &str, kind: EntryKind, size: u64) -> Result<[u8; BLOCK], TarError> {
        if self.broken {
            return Err(TarError::BrokenOff);
        }
        let header = header(name, kind, size, self.mtime)?;
        self.broken = true;
        Ok(header)
    }

    /// Adds a directory entry.
    pub fn dir(&mut self, name: &str) -> Result<(), TarError> {
        let header = self.start(name, EntryKind::Dir, 0)?;
        self.out.write_all(&header)?;
        self.broken = false;
        Ok(())
    }

    /// Adds a file whose content is `bytes`.
    pub fn file_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), TarError> {
        self.file(name, bytes.len() as u64, bytes)
    }

    /// Adds a file of `size` bytes read from `content`, which must give exactly that many (more are not
    /// read; fewer are an error, [`TarError::Short`], and the archive is then unusable).
    pub fn file(&mut self, name: &str, size: u64, content: impl Read) -> Result<(), TarError> {
        let header = self.start(name, EntryKind::File, size)?;
        self.out.write_all(&header)?;
        let copied = io::copy(&mut content.take(size), &mut self.out)?;
        if copied != size {
            return Err(TarError::Short {
                name: name.to_owned(),
                expected: size,
                got: copied,
            });
        }
        let pad = padding(size);
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        self.broken = false;
        Ok(())
    }

    /// Adds a file of `size` bytes that `write` writes into the [`EntryWriter`] it is given, for content
    /// made as it is written (nothing stored first): a byte past `size` is refused with an error, fewer
    /// are [`TarError::Short`]; either way the archive is then unusable. What `write` returned.
    pub fn file_from<T, E: From<TarError>>(
        &mut self,
        name: &str,
        size: u64,
        write: impl FnOnce(&mut EntryWriter<'_, W>) -> Result<T, E>,
    ) -> Result<T, E> {
        let header = self.start(name, EntryKind::File, size)?;
        self.out.write_all(&header).map_err(TarError::Io)?;
        let mut entry = EntryWriter {
            out: &mut self.out,
            left: size,
        };
        let value = write(&mut entry)?;
        if entry.left > 0 {
            return Err(TarError::Short {
                name: name.to_owned(),
                expected: size,
                got: size - entry.left,
            }
            .into());
        }
        let pad = padding(size);
        self.out
            .write_all(&[0u8; BLOCK][..pad])
            .map_err(TarError::Io)?;
        self.broken = false;
        Ok(value)
    }

    /// Ends the archive (two zero blocks) and hands back the output, flushed.
    pub fn finish(mut self) -> Result<W, TarError> {
        if self.broken {
            return Err(TarError::BrokenOff);
        }
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The content of one entry as [`TarWriter::file_from`] writes it: at most the size its header
/// announced.
#[derive(Debug)]
pub struct EntryWriter<'a, W> {
    out: &'a mut W,
    /// Bytes the header announced that are not written yet.
    left: u64,
}

impl<W: Write> Write for EntryWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "{} bytes more than the tar entry's announced size",
                buf.len() as u64 - self.left
            )));
        }
        let n = self.out.write(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::other("the output took more bytes than it was given"))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Bytes of zero padding after `size` bytes of content.
fn padding(size: u64) -> usize {
    // Always below 512, so the cast cannot truncate.
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Checks a name the writer stores and the reader accepts: printable ASCII (no space), relative, no
/// `.`/`..` or empty component.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("empty or longer than 255 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("not printable ASCII");
    }
    let name = name.strip_suffix('/').unwrap_or(name);
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("absolute, or with an empty, `.` or `..` component");
    }
    Ok(())
}

fn header(name: &str, kind: EntryKind, size: u64, mtime: u64) -> Result<[u8; BLOCK], TarError> {
    let bad = |reason| TarError::Name {
        name: name.to_owned(),
        reason,
    };
    check_name(name).map_err(bad)?;
    // A directory's trailing `/` (what stock tar writes) only where it fits in the name field: the
    // typeflag says directory, and a name that needs the prefix field may have no byte to spare.
    let stored = match kind {
        EntryKind::Dir if !name.ends_with('/') && name.len() < 100 => format!("{name}/"),
        _ => name.to_owned(),
    };
    // ustar: up to 100 bytes of name, and a prefix of up to 155 before a `/`.
    let (prefix, rest) = if stored.len() <= 100 {
        ("", stored.as_str())
    } else {
        let split = stored
            .char_indices()
            .filter(|&(i, c)| c == '/' && i <= 155 && stored.len() - i - 1 <= 100 && i > 0)
            .map(|(i, _)| i)
            .next()
            .ok_or_else(|| bad("too long for a ustar name"))?;
        (&stored[..split], &stored[split + 1..])
    };
    let mut h = [0u8; BLOCK];
    h[..rest.len()].copy_from_slice(rest.as_bytes());
    let mode: u64 = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 0o77_777_777_777 {
        octal(&mut h[124..136], size);
    } else {
        // Base-256: the first byte's high bit set, the number big-endian in the rest.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(0o77_777_777_777));
    h[156] = if kind == EntryKind::Dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    Ok(h)
}

/// Writes `value` as zero-padded octal digits filling `field` but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

/// Reads a ustar archive entry by entry: [`TarReader::next_entry`], then the entry's content through
/// [`Read`] on the reader (what is not read is skipped by the next call).
#[derive(Debug)]
pub struct TarReader<R: Read> {
    input: R,
    /// Bytes consumed so far (for error offsets).
    offset: u64,
    /// Content bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's content.
    pad: u64,
    entries: usize,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(input: R) -> Self {
        TarReader {
            input,
            offset: 0,
            remaining: 0,
            pad: 0,
            entries: 0,
            done: false,
        }
    }

    /// The next entry's header, or `None` at the end of the archive (a zero block, or the end of the
    /// input right after an entry).
    pub fn next_entry(&mut self) -> Result<Option<EntryHeader>, TarError> {
        if self.done {
            return Ok(None);
        }
        let skip = self.remaining + self.pad;
        let skipped = io::copy(&mut (&mut self.input).take(skip), &mut io::sink())?;
        self.offset += skipped;
        if skipped != skip {
            return Err(self.invalid(self.offset, "the archive ends inside an entry".into()));
        }
        self.remaining = 0;
        self.pad = 0;
        let at = self.offset;
        let mut h = [0u8; BLOCK];
        let got = read_full(&mut self.input, &mut h)?;
        self.offset += got as u64;
        if got == 0 {
            self.done = true;
            return Ok(None);
        }
        if got < BLOCK {
            return Err(self.invalid(at, "the archive ends inside a header".into()));
        }
        if h.iter().all(|&b| b == 0) {
            self.done = true;
            return Ok(None);
        }
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(self.invalid(at, format!("more than {MAX_ENTRIES} entries")));
        }
        let header = parse_header(&h).map_err(|reason| self.invalid(at, reason))?;
        // A base-256 size near u64::MAX: its padding would overflow the skip to the next header.
        if header.size.checked_add(BLOCK as u64).is_none() {
            return Err(self.invalid(at, format!("an entry size of {} bytes", header.size)));
        }
        self.remaining = header.size;
        self.pad = padding(header.size) as u64;
        Ok(Some(header))
    }

    fn invalid(&self, offset: u64, reason: String) -> TarError {
        TarError::Invalid { offset, reason }
    }
}

impl<R: Read> Read for TarReader<R> {
    /// Reads the current entry's content; 0 at its end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            ));
        }
        self.remaining -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn parse_header(h: &[u8; BLOCK]) -> Result<EntryHeader, String> {
    let stored = parse_octal(&h[148..156]).ok_or("its checksum field is not a number")?;
    let mut blank = *h;
    blank[148..156].fill(b' ');
    let unsigned: u64 = blank.iter().map(|&b| u64::from(b)).sum();
    // Some old writers summed signed bytes.
    let signed: i64 = blank.iter().map(|&b| i64::from(b as i8)).sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(format!(
            "header checksum {stored} does not match its content ({unsigned}): altered or not a tar"
        ));
    }
    if &h[257..262] != b"ustar" {
        return Err("not a ustar header".into());
    }
    let kind = match h[156] {
        b'0' | 0 => EntryKind::File,
        b'5' => EntryKind::Dir,
        other => {
            return Err(format!(
                "entry type {:?} (links, devices, extended headers) is not part of an evidence bundle",
                char::from(other)
            ));
        }
    };
    let field = |range: std::ops::Range<usize>| -> Result<&str, String> {
        let raw = &h[range];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        std::str::from_utf8(&raw[..end]).map_err(|_| "a name that is not UTF-8".to_owned())
    };
    let (prefix, rest) = (field(345..500)?, field(0..100)?);
    if rest.is_empty() {
        return Err("an entry without a name".into());
    }
    let name = if prefix.is_empty() {
        rest.to_owned()
    } else {
        format!("{prefix}/{rest}")
    };
    check_name(&name).map_err(|reason| format!("name {name:?}: {reason}"))?;
    let size = if h[124] & 0x80 != 0 {
        // Base-256: the value must fit in the last 8 bytes.
        if h[124] != 0x80 || h[125..128].iter().any(|&b| b != 0) {
            return Err("a size beyond 2^64 bytes".into());
        }
        let mut be = [0u8; 8];
        be.copy_from_slice(&h[128..136]);
        u64::from_be_bytes(be)
    } else {
        parse_octal(&h[124..136]).ok_or("its size field is not a number")?
    };
    let size = if kind == EntryKind::Dir { 0 } else { size };
    let name = name.strip_suffix('/').unwrap_or(&name).to_owned();
    Ok(EntryHeader { name, kind, size })
}

/// An octal field: optional leading spaces, digits, then NUL or spaces.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Reads `bytes` as a tar to its end and returns every entry with its content: the fuzz target's
/// property is that what [`TarWriter`] writes reads back the same, and that any input ends in entries
/// or an error.
pub fn read_all(bytes: &[u8]) -> Result<Vec<(EntryHeader, Vec<u8>)>, TarError> {
    let mut reader = TarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(header) = reader.next_entry()? {
        let mut content = Vec::new();
        reader.read_to_end(&mut content)?;
        out.push((header, content));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn bundle() -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), 1_763_900_000);
        w.dir("abc").unwrap();
        w.file_bytes("abc/README.txt", b"hello\n").unwrap();
        w.file_bytes("abc/empty", b"").unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        w.file_bytes(&long, &[7u8; 1024]).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn what_is_written_reads_back() {
        let bytes = bundle();
        assert_eq!(bytes.len() % BLOCK, 0);
        let entries = read_all(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|(h, _)| h.name.as_str()).collect();
        assert_eq!(names[..3], ["abc", "abc/README.txt", "abc/empty"]);
        assert_eq!(names[3].len(), 211);
        assert_eq!(entries[0].0.kind, EntryKind::Dir);
        assert_eq!(entries[1].1, b"hello\n");
        assert_eq!(entries[2].1, b"");
        assert_eq!(entries[3].1, vec![7u8; 1024]);
    }

    /// Content written into the entry is the same archive as content read; a writer that writes more or
    /// less than it announced is an error, not a shifted archive.
    #[test]
    fn an_entry_written_in_place_is_held_to_its_size() {
        let mut by_read = TarWriter::new(Vec::new(), 1);
        by_read.file_bytes("a/x", b"hello world").unwrap();
        let mut by_write = TarWriter::new(Vec::new(), 1);
        let value = by_write
            .file_from("a/x", 11, |w| {
                w.write_all(b"hello ")?;
                w.write_all(b"world")?;
                Ok::<_, TarError>(7)
            })
            .unwrap();
        assert_eq!(value, 7);
        assert_eq!(by_read.finish().unwrap(), by_write.finish().unwrap());

        let mut w = TarWriter::new(Vec::new(), 1);
        let more = w.file_from("x", 3, |w| Ok::<_, TarError>(w.write_all(b"four")?));
        assert!(matches!(more, Err(TarError::Io(_))), "{more:?}");
        // Nothing more goes into an archive with a wrong entry, and it is never ended as if whole.
        assert!(matches!(w.file_bytes("y", b"y"), Err(TarError::BrokenOff)));
        assert!(matches!(w.dir("z"), Err(TarError::BrokenOff)));
        assert!(matches!(w.finish(), Err(TarError::BrokenOff)));
        let mut w = TarWriter::new(Vec::new(), 1);
        let fewer = w.file_from("x", 3, |w| Ok::<_, TarError>(w.write_all(b"tw")?));
        assert!(
            matches!(
                fewer,
                Err(TarError::Short {
                    expected: 3,
                    got: 2,
                    ..
                })
            ),
            "{fewer:?}"
        );
    }

    /// GNU tar lists and extracts what the writer wrote (when it is installed).
    #[test]
    fn stock_tar_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar");
        std::fs::write(&path, bundle()).unwrap();
        let Ok(out) = std::process::Command::new("tar")
            .arg("-xvf")
            .arg(&path)
            .current_dir(dir.path())
            .output()
        else {
            return;
        };
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read(dir.path().join("abc/README.txt")).unwrap(),
            b"hello\n"
        );
    }

    #[test]
    fn hostile_archives_are_errors() {
        let good = bundle();
        // A changed byte in a header breaks its checksum.
        let mut bad = good.clone();
        bad[3] ^= 1;
        let e = read_all(&bad).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // Cut inside a header, and inside content.
        assert!(read_all(&good[..BLOCK + 100]).is_err());
        assert!(read_all(&good[..2 * BLOCK + 3]).is_err());
        // Names that would escape, and entry types a bundle does not have.
        for (name, kind) in [
            ("../x", b'0'),
            ("/etc/passwd", b'0'),
            ("a/./b", b'0'),
            ("a", b'2'),
        ] {
            let mut h = header("placeholder", EntryKind::File, 0, 0).unwrap();
            h[..100].fill(0);
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[156] = kind;
            h[148..156].fill(b' ');
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            octal(&mut h[148..155], u64::from(sum));
            assert!(read_all(&h).is_err(), "{name}");
        }
        assert!(
            TarWriter::new(Vec::new(), 0)
                .file_bytes("../x", b"")
                .is_err()
        );
        // Anything at all: an error or entries, never a panic.
        for cut in (0..good.len()).step_by(97) {
            let _ = read_all(&good[..cut]);
        }
    }

    /// A directory whose name fills both ustar fields (155-byte prefix, 100-byte name) without a
    /// trailing `/` is accepted by the reader, so the writer must be able to write it back (found by
    /// reasoning about the `evidence_tar` fuzz target's round trip): the `/` is optional, typeflag `5`
    /// says directory.
    #[test]
    fn a_directory_name_that_fills_both_fields_is_written_back() {
        let name = format!("{}/{}", "p".repeat(154), "n".repeat(100));
        let h = header(&name, EntryKind::Dir, 0, 0).unwrap();
        let read = parse_header(&h).unwrap();
        assert_eq!(
            (read.name.as_str(), read.kind),
            (name.as_str(), EntryKind::Dir)
        );
        // A short one keeps the trailing `/` stock tar writes.
        let h = header("abc", EntryKind::Dir, 0, 0).unwrap();
        assert_eq!(&h[..5], b"abc/\0");
    }

    #[test]
    fn large_sizes_use_base_256() {
        let h = header("big", EntryKind::File, 9_000_000_000, 0).unwrap();
        assert_eq!(parse_header(&h).unwrap().size, 9_000_000_000);
        let h = header("small", EntryKind::File, 0o77_777_777_776, 0).unwrap();
        assert_eq!(parse_header(&h).unwrap().size, 0o77_777_777_776);
    }
}
