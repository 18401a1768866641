//! What each fuzz target checks, one function per target (the targets in `fuzz_targets/` are one-liners
//! that call these). Every function feeds the fuzzer's bytes to the real parser and panics only when a
//! property the parser promises is broken; an error from the parser is a correct answer to bad input.
//!
//! Properties checked, beyond "no panic, no unbounded allocation":
//! - [`sftp_observer`]: the events do not depend on where the relay's chunks split the packets, and
//!   nothing is reported after the one `Unparseable` event that stops the observer.
//! - [`scp_observer`]: the same for legacy SCP, in either mode.
//! - [`exec_recording`]: strict and cut-off-tolerant reading agree; `exec_raw` writes exactly the frames'
//!   bytes; `ExecWriter` writes back the same frames byte for byte; `exec_to_cast` writes a cast that
//!   `parse_cast` reads back with the same header, text, markers and resizes.
//! - [`asciicast`]: what `parse_cast` accepts, `CastWriter` writes back and `parse_cast` reads back equal.
//! - [`login_name`]: an accepted login is `VENDOR[+ASSET]` of safe characters, nothing more.
//! - [`request_command`]: an accepted `request` line has valid names and a positive duration that prints
//!   and parses back the same.
//! - [`config`]: a database URL's password never shows in `Debug`.
//! - [`terminal_filter`]: what `session play` writes to an administrator's terminal does not depend on
//!   where the recording's events split the device's output, carries no string sequence (OSC, DCS, SOS,
//!   PM, APC: clipboard, titles, links, queries), and passes through the filter again unchanged.
//! - [`evidence_tar`]: what `TarReader` accepts (`evidence verify` reads bundles handed in from anywhere)
//!   has plain relative names, and `TarWriter` writes it back so that it reads back the same.
//! - [`playback`]: the browser's reading of a recording file: digests of every byte, segments that tile
//!   the events, each segment read back alone as the asciinema player requires it, the same markers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chaperone_model::config::{Config, format_duration, parse_duration, redact_url};
use chaperone_model::login::Login;
use chaperone_model::model::{check_name, parse_name_list};
use chaperone_model::request;
use chaperone_recorder::exec::MAGIC;
use chaperone_recorder::{
    CastHeader, CastWriter, Error, Event, EventKind, ExecHeader, ExecReader, ExecWriter, FrameData,
    OutputStream, ScpMode, ScpObserver, SftpObserver, TerminalFilter, TransferEvent,
    exec_cast_into, exec_raw, exec_to_cast, parse_cast, scp_command,
};

/// SFTP observer: the input is a script of chunks, each a control byte and then its bytes. The control
/// byte's high bit says the direction (set: server to client), its low 7 bits the chunk's length (0: the
/// rest of the input). The script is fed as it is, then again with every chunk cut into pieces of 1, 2,
/// …, 13 bytes (13: the longest packet head the observer reads before it decides what to keep); the
/// events must be the same, and nothing may be reported after the observer stopped.
pub fn sftp_observer(data: &[u8]) {
    same_events_however_cut(SftpObserver::new, data);
}

/// Legacy SCP observer: the first byte picks the command, its low bit the mode (0: the vendor uploads,
/// `scp -t`; 1: downloads, `scp -f`) and the next bits how the command places files (no command, a
/// path, a `-d` directory or a home directory); the rest is a script of chunks as for
/// [`sftp_observer`], with the same properties.
pub fn scp_observer(data: &[u8]) {
    const UPLOADS: [&str; 3] = ["scp -t /tmp/x", "scp -r -d -t /tmp/in/", "scp -r -t new"];
    const DOWNLOADS: [&str; 3] = ["scp -f /var/log/syslog", "scp -r -f ~", "scp -r -f fw/"];
    let Some((&pick, script)) = data.split_first() else {
        return;
    };
    let commands = if pick & 1 == 0 { UPLOADS } else { DOWNLOADS };
    match usize::from(pick >> 1) % (commands.len() + 1) {
        0 => {
            let mode = if pick & 1 == 0 {
                ScpMode::Upload
            } else {
                ScpMode::Download
            };
            same_events_however_cut(|| ScpObserver::new(mode), script);
        }
        n => {
            let Some(command) = scp_command(commands[n - 1].as_bytes()) else {
                unreachable!("{} is an scp command", commands[n - 1]);
            };
            same_events_however_cut(|| ScpObserver::for_command(&command), script);
        }
    }
}

fn same_events_however_cut<O: Observer>(new: impl Fn() -> O, script: &[u8]) {
    let chunks = sftp_chunks(script);
    let whole = observe(new(), chunks.iter().copied());
    let recut = observe(
        new(),
        chunks
            .iter()
            .flat_map(|&(server, bytes)| small_pieces(bytes).map(move |piece| (server, piece))),
    );
    assert_eq!(whole, recut, "the events depend on the chunk boundaries");
}

/// A transfer observer as the relay drives it.
trait Observer {
    fn feed(&mut self, server: bool, bytes: &[u8]) -> Vec<TransferEvent>;
    fn is_stopped(&self) -> bool;
    fn finish(self) -> Vec<TransferEvent>;
}

impl Observer for SftpObserver {
    fn feed(&mut self, server: bool, bytes: &[u8]) -> Vec<TransferEvent> {
        if server {
            self.server_to_client(bytes)
        } else {
            self.client_to_server(bytes)
        }
    }
    fn is_stopped(&self) -> bool {
        SftpObserver::is_stopped(self)
    }
    fn finish(self) -> Vec<TransferEvent> {
        SftpObserver::finish(self)
    }
}

impl Observer for ScpObserver {
    fn feed(&mut self, server: bool, bytes: &[u8]) -> Vec<TransferEvent> {
        if server {
            self.server_to_client(bytes)
        } else {
            self.client_to_server(bytes)
        }
    }
    fn is_stopped(&self) -> bool {
        ScpObserver::is_stopped(self)
    }
    fn finish(self) -> Vec<TransferEvent> {
        ScpObserver::finish(self)
    }
}

/// `bytes` cut into pieces of 1, 2, …, 13, 1, 2, … bytes.
fn small_pieces(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut size = 0;
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        size = size % 13 + 1;
        let (piece, rest) = bytes.split_at(size.min(bytes.len()));
        bytes = rest;
        Some(piece)
    })
}

/// Splits an [`sftp_observer`] input into `(server_to_client, bytes)` chunks.
pub fn sftp_chunks(mut data: &[u8]) -> Vec<(bool, &[u8])> {
    let mut chunks = Vec::new();
    while let Some((&control, rest)) = data.split_first() {
        let len = match usize::from(control & 0x7f) {
            0 => rest.len(),
            n => n.min(rest.len()),
        };
        let (chunk, rest) = rest.split_at(len);
        chunks.push((control & 0x80 != 0, chunk));
        data = rest;
    }
    chunks
}

/// Encodes a recorded SFTP conversation as an [`sftp_observer`] input (for seeding the corpus).
pub fn sftp_script<'a>(chunks: impl IntoIterator<Item = (bool, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (server, bytes) in chunks {
        for piece in bytes.chunks(0x7f) {
            // 1..=127: fits the low 7 bits.
            out.push(u8::try_from(piece.len()).unwrap_or(0x7f) | if server { 0x80 } else { 0 });
            out.extend_from_slice(piece);
        }
    }
    out
}

/// Every event one observer reports for `chunks`, the ones from `finish` last, checking that nothing is
/// reported once it stopped.
fn observe<'a, O: Observer>(
    mut observer: O,
    chunks: impl Iterator<Item = (bool, &'a [u8])>,
) -> Vec<TransferEvent> {
    let mut events = Vec::new();
    for (server, bytes) in chunks {
        let was_stopped = observer.is_stopped();
        let new = observer.feed(server, bytes);
        if was_stopped {
            assert!(new.is_empty(), "events after the observer stopped: {new:?}");
        }
        let unparseable = new
            .iter()
            .filter(|e| matches!(e, TransferEvent::Unparseable { .. }))
            .count();
        assert_eq!(
            unparseable > 0,
            !was_stopped && observer.is_stopped(),
            "an Unparseable event is exactly what stops the observer: {new:?}"
        );
        if unparseable > 0 {
            assert!(
                unparseable == 1 && matches!(new.last(), Some(TransferEvent::Unparseable { .. })),
                "Unparseable must be the last event: {new:?}"
            );
        }
        events.extend(new);
    }
    events.extend(observer.finish());
    events
}

/// One frame of an exec recording, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Input(Vec<u8>),
    Marker(String),
    Resize { cols: u16, rows: u16 },
}

/// What reading a whole exec recording gave.
#[derive(Debug)]
struct Reading {
    header: Option<ExecHeader>,
    frames: Vec<(Duration, Owned)>,
    /// The error that ended the reading, if any.
    error: Option<Error>,
    /// Where a tolerated cut-off was found: (offset, last_at).
    cut_off: Option<(u64, Duration)>,
}

fn read_exec(data: &[u8], tolerate_cut_off: bool) -> Reading {
    let mut read = Reading {
        header: None,
        frames: Vec::new(),
        error: None,
        cut_off: None,
    };
    let mut reader = match ExecReader::new(data) {
        Ok(r) if tolerate_cut_off => r.tolerate_cut_off(),
        Ok(r) => r,
        Err(e) => {
            read.error = Some(e);
            return read;
        }
    };
    read.header = Some(reader.header().clone());
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                let owned = match frame.data {
                    FrameData::Stdout(b) => Owned::Stdout(b.to_vec()),
                    FrameData::Stderr(b) => Owned::Stderr(b.to_vec()),
                    FrameData::Input(b) => Owned::Input(b.to_vec()),
                    FrameData::Marker(s) => Owned::Marker(s.to_owned()),
                    FrameData::Resize { cols, rows } => Owned::Resize { cols, rows },
                };
                read.frames.push((frame.at, owned));
            }
            Ok(None) => break,
            Err(e) => {
                read.error = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(reader.next_frame(), Ok(None)),
        "the reader goes on after its end"
    );
    read.cut_off = reader.cut_off().map(|c| (c.offset, c.last_at));
    read
}

/// Exec recordings: see the [crate docs](self) for what is checked.
pub fn exec_recording(data: &[u8]) {
    let strict = read_exec(data, false);
    let tolerant = read_exec(data, true);
    assert!(strict.cut_off.is_none());
    assert_eq!(strict.header, tolerant.header);
    match (&strict.error, &tolerant.error, tolerant.cut_off) {
        (None, None, None) => assert_eq!(strict.frames, tolerant.frames),
        (Some(Error::InvalidExec { offset, .. }), None, Some((cut, last_at))) => {
            assert_eq!(
                *offset, cut,
                "the cut-off is where the strict reader failed"
            );
            assert_eq!(strict.frames, tolerant.frames);
            let last = tolerant.frames.last().map_or(Duration::ZERO, |(at, _)| *at);
            assert_eq!(last_at, last);
        }
        (Some(a), Some(b), None) => {
            assert_eq!(a.to_string(), b.to_string());
            assert_eq!(strict.frames, tolerant.frames);
        }
        other => panic!("strict and tolerant reading disagree: {other:?}"),
    }

    for stream in [OutputStream::Stdout, OutputStream::Stderr] {
        let mut out = Vec::new();
        let exported = exec_raw(data, stream, &mut out);
        match (&tolerant.error, exported) {
            (None, Ok(exported)) => {
                let expected: Vec<u8> = tolerant
                    .frames
                    .iter()
                    .filter_map(|(_, f)| match (f, stream) {
                        (Owned::Stdout(b), OutputStream::Stdout)
                        | (Owned::Stderr(b), OutputStream::Stderr) => Some(&b[..]),
                        _ => None,
                    })
                    .flatten()
                    .copied()
                    .collect();
                assert!(
                    out == expected,
                    "exec_raw wrote other bytes than the frames hold"
                );
                assert_eq!(exported.bytes, expected.len() as u64);
                assert_eq!(
                    exported.cut_off.map(|c| (c.offset, c.last_at)),
                    tolerant.cut_off
                );
            }
            (Some(_), Err(_)) => {}
            (error, exported) => {
                panic!("exec_raw disagrees with the reader: {error:?} / {exported:?}")
            }
        }
    }

    let Some(header) = tolerant
        .header
        .as_ref()
        .filter(|_| tolerant.error.is_none())
    else {
        return;
    };
    rewrite_exec(data, header, &tolerant);
    convert_to_cast(data, header, &tolerant);
}

/// `ExecWriter` writes the frames back byte for byte (the header line may be written differently: it
/// is JSON).
fn rewrite_exec(data: &[u8], header: &ExecHeader, read: &Reading) {
    let file = Scratch::new("exec");
    let mut writer = ExecWriter::create(&file.0, header).expect("ExecWriter::create");
    // The writer writes no frame for empty data (there is nothing to keep); the reader takes one.
    let mut dropped_empty = false;
    for (at, frame) in &read.frames {
        if matches!(frame, Owned::Stdout(b) | Owned::Stderr(b) | Owned::Input(b) if b.is_empty()) {
            dropped_empty = true;
            continue;
        }
        match frame {
            Owned::Stdout(b) => writer.stdout(*at, b),
            Owned::Stderr(b) => writer.stderr(*at, b),
            Owned::Input(b) => writer.input(*at, b),
            Owned::Marker(s) => writer.marker(*at, s),
            Owned::Resize { cols, rows } => writer.resize(*at, *cols, *rows),
        }
        .expect("ExecWriter write");
    }
    writer.finish().expect("ExecWriter::finish");
    let written = std::fs::read(&file.0).expect("read the rewritten recording");
    let again = read_exec(&written, false);
    assert!(again.error.is_none(), "{:?}", again.error);
    assert_eq!(again.header.as_ref(), Some(header));
    let kept: Vec<_> = read
        .frames
        .iter()
        .filter(|(_, f)| !matches!(f, Owned::Stdout(b) | Owned::Stderr(b) | Owned::Input(b) if b.is_empty()))
        .cloned()
        .collect();
    assert_eq!(again.frames, kept, "ExecWriter wrote other frames");
    if dropped_empty {
        return;
    }
    let frames_at = |bytes: &[u8]| {
        let header_end = bytes[MAGIC.len()..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("a header line");
        MAGIC.len() + header_end + 1
    };
    let end = read.cut_off.map_or(data.len(), |(offset, _)| {
        usize::try_from(offset).unwrap_or(usize::MAX)
    });
    assert!(
        data[frames_at(data)..end] == written[frames_at(&written)..],
        "ExecWriter wrote the frames differently"
    );
}

/// `exec_to_cast` writes a cast that reads back as the recording's header and frames, and
/// `exec_cast_into` (an evidence bundle's) the same bytes.
fn convert_to_cast(data: &[u8], header: &ExecHeader, read: &Reading) {
    let file = Scratch::new("cast");
    let (done, cut_off) =
        exec_to_cast(data, &file.0).expect("exec_to_cast of a readable recording");
    assert_eq!(cut_off.map(|c| (c.offset, c.last_at)), read.cut_off);
    let (streamed, bytes, streamed_cut_off) =
        exec_cast_into(data, Vec::new()).expect("exec_cast_into of a readable recording");
    assert_eq!(streamed_cut_off, cut_off);
    assert_eq!(bytes, done.bytes);
    assert_eq!(
        streamed,
        std::fs::read(&file.0).expect("read the cast"),
        "exec_cast_into wrote another cast than exec_to_cast"
    );
    let cast =
        parse_cast(std::fs::File::open(&file.0).expect("open the cast")).expect("parse_cast");
    assert!(!cast.truncated);
    assert_eq!(
        cast.header,
        CastHeader {
            width: 80,
            height: 24,
            timestamp: header.timestamp,
            title: header.title.clone(),
            command: header.command.clone(),
            env: header.env.clone(),
            markers_attributed: true,
        }
    );
    let mut output = Vec::new();
    let mut input = Vec::new();
    let mut others = Vec::new();
    // For display, a line feed not after a carriage return of the same stream is shown as CR LF
    // (issue 11: an exec without a pty sends bare line feeds).
    let mut after_cr = [false; 2];
    let mut shown = |stream: usize, bytes: &[u8], out: &mut Vec<u8>| {
        for &b in bytes {
            if b == b'\n' && !after_cr[stream] {
                out.push(b'\r');
            }
            after_cr[stream] = b == b'\r';
            out.push(b);
        }
    };
    for (at, frame) in &read.frames {
        match frame {
            Owned::Stdout(b) => shown(0, b, &mut output),
            Owned::Stderr(b) => shown(1, b, &mut output),
            Owned::Input(b) => input.extend_from_slice(b),
            Owned::Marker(label) => others.push(Event {
                time: seconds(*at),
                kind: EventKind::Marker(label.clone()),
            }),
            Owned::Resize { cols, rows } => others.push(Event {
                time: seconds(*at),
                kind: EventKind::Resize {
                    cols: *cols,
                    rows: *rows,
                },
            }),
        }
    }
    let mut cast_input = String::new();
    let mut cast_others = Vec::new();
    for event in &cast.events {
        match &event.kind {
            EventKind::Output(_) => {}
            EventKind::Input(text) => cast_input.push_str(text),
            EventKind::Marker(_) | EventKind::Resize { .. } => cast_others.push(event.clone()),
        }
    }
    if read.cut_off.is_some() {
        let marker = cast_others.pop().expect("a cut-off marker");
        assert!(matches!(marker.kind, EventKind::Marker(label) if label.contains("cut off")));
    }
    assert_eq!(cast.text(), String::from_utf8_lossy(&output), "output text");
    assert_eq!(cast_input, String::from_utf8_lossy(&input), "input text");
    assert_same_events(&cast_others, &others, "markers and resizes");
}

/// A recording's time as the writers print it: microseconds, as seconds.
fn seconds(at: Duration) -> f64 {
    at.as_micros() as f64 / 1e6
}

/// The same events at the same times, give or take the last bit: `serde_json` (without its
/// `float_roundtrip` feature) may read a time back one unit in the last place off once it has more than
/// 15 significant digits, i.e. past 2^53 microseconds (285 years into a session).
fn assert_same_events(got: &[Event], expected: &[Event], what: &str) {
    let kinds = |events: &[Event]| events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>();
    assert_eq!(kinds(got), kinds(expected), "{what}");
    for (g, e) in got.iter().zip(expected) {
        let exact = e.time < 2f64.powi(53) / 1e6;
        let close = (g.time - e.time).abs() <= e.time * 4.0 * f64::EPSILON;
        assert!(
            g.time == e.time || (!exact && close),
            "{what}: time {} read back as {}",
            e.time,
            g.time
        );
    }
}

/// asciicast v2: see the [crate docs](self) for what is checked.
pub fn asciicast(data: &[u8]) {
    let Ok(cast) = parse_cast(data) else {
        return;
    };
    for event in &cast.events {
        assert!(event.time.is_finite() && event.time >= 0.0, "{event:?}");
    }
    // Write it back: every event at its time, cut to microseconds as the writer keeps it.
    let Some(times) = cast
        .events
        .iter()
        .map(|e| Duration::try_from_secs_f64(e.time).ok())
        .collect::<Option<Vec<_>>>()
    else {
        return; // a time past u64::MAX seconds: no writer can be asked to write it
    };
    let file = Scratch::new("cast");
    let mut writer = CastWriter::create(&file.0, cast.header.clone()).expect("CastWriter::create");
    for (event, at) in cast.events.iter().zip(&times) {
        match &event.kind {
            EventKind::Output(text) => writer.output(*at, text.as_bytes()),
            EventKind::Input(text) => writer.input(*at, text.as_bytes()),
            EventKind::Marker(label) => writer.marker(*at, label),
            EventKind::Resize { cols, rows } => writer.resize(*at, *cols, *rows),
        }
        .expect("CastWriter write");
    }
    writer.finish().expect("CastWriter::finish");
    let again =
        parse_cast(std::fs::File::open(&file.0).expect("open the cast")).expect("parse_cast");
    // The writer writes no event for empty text: there is nothing to show.
    let expected: Vec<Event> = cast
        .events
        .iter()
        .zip(&times)
        .filter(
            |(e, _)| !matches!(&e.kind, EventKind::Output(t) | EventKind::Input(t) if t.is_empty()),
        )
        .map(|(e, at)| Event {
            time: seconds(*at),
            kind: e.kind.clone(),
        })
        .collect();
    assert_eq!(again.header, cast.header);
    assert!(!again.truncated);
    assert_same_events(
        &again.events,
        &expected,
        "what CastWriter wrote reads back differently",
    );
}

/// A file name for one check's recording, unique in this process, removed on drop. On tmpfs where there
/// is one, so that the writers' fsync costs nothing.
struct Scratch(PathBuf);

impl Scratch {
    fn new(extension: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(dir.join(format!(
            "chaperone-fuzz-{}-{n}.{extension}",
            std::process::id()
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// SSH user names (`VENDOR` or `VENDOR+ASSET`) and comma lists of names: what is accepted is exactly the
/// safe alphabet, and reads back as it was written.
pub fn login_name(data: &[u8]) {
    let user = String::from_utf8_lossy(data);
    if let Some(login) = Login::parse(&user) {
        let again = match &login.asset {
            Some(asset) => format!("{}+{asset}", login.vendor),
            None => login.vendor.clone(),
        };
        assert_eq!(again, user, "a login is its vendor and asset, nothing else");
        assert!(check_name("vendor", &login.vendor).is_ok());
        assert!(login.asset.iter().all(|a| check_name("asset", a).is_ok()));
    }
    if let Ok(names) = parse_name_list("service", &user) {
        assert!(!names.is_empty());
        for (i, name) in names.iter().enumerate() {
            assert!(check_name("service", name).is_ok(), "{name:?}");
            assert!(!names[..i].contains(name), "{name:?} twice");
        }
    }
    if check_name("asset", &user).is_ok() {
        assert!(
            (1..=64).contains(&user.len())
                && user
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
            "check_name let {user:?} through"
        );
    }
}

/// What a mail server answers (`chaperone_model::smtp_reply`), cut into lines as the mail client reads
/// them: a reply is accepted only with one code in 200-599 on every line and at most `MAX_LINES` lines,
/// and its text for the log is printable and short.
pub fn smtp_reply(data: &[u8]) {
    use chaperone_model::smtp_reply::{MAX_LINES, ReplyReader};
    let mut reader = ReplyReader::default();
    for line in data.split_inclusive(|b| *b == b'\n') {
        match reader.line(line) {
            Ok(None) => {}
            Ok(Some(reply)) => {
                assert!((200..600).contains(&reply.code), "{}", reply.code);
                assert!((1..=MAX_LINES).contains(&reply.lines.len()));
                let text = reply.text();
                assert!(text.chars().count() <= 300);
                assert!(!text.chars().any(char::is_control), "{text:?}");
                reader = ReplyReader::default();
            }
            Err(_) => reader = ReplyReader::default(),
        }
    }
}

/// The vendor's `request ASSET SERVICES --for DURATION --reason TEXT` command line: what parses names a
/// valid asset and services and a positive duration that prints and parses back the same.
pub fn request_command(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let Ok(args) = request::parse(&line) else {
        return;
    };
    assert!(check_name("asset", &args.asset).is_ok());
    assert!(!args.services.is_empty());
    assert!(
        args.services
            .iter()
            .all(|s| check_name("service", s).is_ok())
    );
    assert!(args.duration > Duration::ZERO);
    assert_eq!(
        parse_duration(&format_duration(args.duration)),
        Ok(args.duration),
        "format_duration and parse_duration disagree"
    );
}

/// The configuration file: any text ends in a `Config` or a `ConfigError` that can be shown; a
/// database URL's password never shows in `Debug`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(std::path::Path::new("/etc/chaperone/chaperone.toml"), text) {
        Ok(config) => {
            let shown = format!("{:?}", config.database);
            if let Some(password) = url_password(&config.database.url).filter(|p| !p.is_empty()) {
                assert_eq!(
                    url_password(&redact_url(&config.database.url)),
                    Some("***"),
                    "the password {password:?} shows in {shown}"
                );
            }
            for (key, value) in query_pairs(&redact_url(&config.database.url)) {
                assert!(
                    key != "password" || value == "***",
                    "a password query parameter shows in {shown}"
                );
            }
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The password of `scheme://user:password@host/…` as a URL parser reads it (WHATWG: the userinfo ends
/// at the authority's last `@`).
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(userinfo.split_once(':')?.1)
}

/// The `key=value` pairs of a URL's query, as written.
fn query_pairs(url: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').filter_map(|pair| pair.split_once('='))
}

/// The terminal filter: the first byte is a chunk size (1 to 256) the rest is cut into; the output must
/// equal the output for the whole input at once, hold no string sequence's introducer (ESC ] P X ^ _, or
/// their C1 forms as UTF-8), and come out of a second filter unchanged.
pub fn terminal_filter(data: &[u8]) {
    let Some((&size, input)) = data.split_first() else {
        return;
    };
    let whole = {
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        f.push(input, &mut out);
        f.finish(&mut out);
        out
    };
    let chunked = {
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        for piece in input.chunks(usize::from(size) + 1) {
            f.push(piece, &mut out);
        }
        f.finish(&mut out);
        out
    };
    assert_eq!(
        whole, chunked,
        "the output depends on where the input was split"
    );
    for intro in [&b"\x1b]"[..], b"\x1bP", b"\x1bX", b"\x1b^", b"\x1b_"] {
        assert!(
            !whole.windows(2).any(|w| w == intro),
            "a string sequence passed: {intro:?}"
        );
    }
    for c1 in ['\u{90}', '\u{98}', '\u{9d}', '\u{9e}', '\u{9f}'] {
        let mut buf = [0u8; 4];
        let encoded = c1.encode_utf8(&mut buf).as_bytes();
        assert!(
            !whole.windows(2).any(|w| w == encoded),
            "a C1 string introducer passed: {c1:?}"
        );
    }
    // Filtered output is already what may reach a terminal: it passes again unchanged (a second
    // `finish` may append its resets once more).
    let mut again = Vec::new();
    let mut f = TerminalFilter::new();
    f.push(&whole, &mut again);
    f.finish(&mut again);
    assert!(
        again.starts_with(&whole),
        "filtering the output again changed it"
    );
}

/// The transcript extractor (what the search index holds and what labels a command line's marker):
/// the first byte picks a chunk size. Checks that the lines do not depend on where the output was split,
/// that no line holds a control character or more than `MAX_LINE` characters, that the line under the
/// cursor is clean too, and that the words the index stores are letters and digits between single
/// spaces.
pub fn transcript(data: &[u8]) {
    use chaperone_recorder::transcript::{LineTracker, MAX_LINE, words};
    let Some((&size, input)) = data.split_first() else {
        return;
    };
    let run = |chunk: usize| {
        let mut t = LineTracker::new();
        let mut out = Vec::new();
        let mut current = Vec::new();
        for piece in input.chunks(chunk) {
            t.push(piece, &mut out);
            current.push(t.current());
        }
        let last = t.current();
        t.finish(&mut out);
        (out, last, current)
    };
    let (whole, whole_last, _) = run(input.len().max(1));
    let (chunked, chunked_last, currents) = run(usize::from(size) + 1);
    assert_eq!(
        whole, chunked,
        "the lines depend on where the output was split"
    );
    assert_eq!(
        whole_last, chunked_last,
        "the current line depends on the split"
    );
    for line in whole.iter().chain(currents.iter().flatten()) {
        assert!(
            line.chars().count() <= MAX_LINE,
            "a line longer than MAX_LINE"
        );
        assert!(
            !line.chars().any(|c| c.is_control()),
            "a control character in a line: {line:?}"
        );
        let w = words(line);
        assert!(
            !w.starts_with(' ') && !w.ends_with(' ') && !w.contains("  "),
            "words not single-spaced: {w:?}"
        );
        assert!(w.chars().all(|c| c == ' ' || c.is_alphanumeric()), "{w:?}");
    }
}

/// The evidence bundle's tar reader: any input ends in entries or an error; accepted entries have plain
/// relative names (no `..`, no leading `/`), and writing them again reads back the same entries.
pub fn evidence_tar(data: &[u8]) {
    use chaperone_recorder::tar::{EntryKind, TarWriter, read_all};
    let Ok(entries) = read_all(data) else {
        return;
    };
    let mut w = TarWriter::new(Vec::new(), 0);
    for (h, content) in &entries {
        assert!(
            !h.name.starts_with('/') && !h.name.split('/').any(|c| c == ".." || c.is_empty()),
            "an unsafe name was accepted: {:?}",
            h.name
        );
        assert_eq!(content.len() as u64, h.size);
        match h.kind {
            EntryKind::Dir => w.dir(&h.name).expect("an accepted name is written back"),
            EntryKind::File => w
                .file_bytes(&h.name, content)
                .expect("an accepted name is written back"),
        }
    }
    let again =
        read_all(&w.finish().expect("writing to memory")).expect("what was written reads back");
    assert_eq!(again, entries, "the entries changed when written again");
}

/// Playback in the browser (`chaperone_recorder::playback`), what the page reads from a recording file
/// that someone with disk access may have altered. The first byte picks the reader (its low two bits: 0
/// a terminal recording, 1 an exec stream, 2 a transfer log) and, for recordings, the segment size (the
/// high six bits, 1 to 64 bytes of output, so that small inputs are cut into many segments). Properties:
/// - the digest is the SHA-256 of every byte given, for all three readers;
/// - no line of text the terminal showed (the line tracker's or the alternate screen's) holds a control
///   character;
/// - the segments tile the events: each starts where the one before ended (the first after the header
///   and any input frames before the first shown event), within the file;
/// - each segment read back alone (header + its bytes, as the web serves it) gives events the asciinema
///   player accepts: a later segment's first event is at its start, none before its start or at or
///   after the next one's, the last one at the index's duration; and the markers across the segments
///   are the index's markers.
pub fn playback(data: &[u8]) {
    use chaperone_recorder::Sha256Reader;
    use chaperone_recorder::playback::{
        Format, Stream, index_recording_in, read_transfers, segment_events,
    };
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let sha256 = |bytes: &[u8]| {
        let mut r = Sha256Reader::new(bytes);
        std::io::copy(&mut r, &mut std::io::sink()).expect("reading memory");
        r.finish_hex().expect("reading memory")
    };
    let format = match pick & 3 {
        0 => Format::Asciicast,
        1 => Format::Exec,
        2 => {
            if let Ok((lines, more, digest)) = read_transfers(file) {
                assert_eq!(digest, sha256(file), "the transfer log's digest");
                assert!(lines.len() <= chaperone_recorder::playback::MAX_TRANSFER_LINES);
                let _ = more;
            }
            return;
        }
        _ => return,
    };
    let segment_bytes = usize::from(pick >> 2) + 1;
    // The command line comes from the recording's header as the client sent it.
    let Ok((index, digest)) = index_recording_in(format, file, segment_bytes, |_, stream, line| {
        assert!(
            stream == Stream::Command || !line.chars().any(char::is_control),
            "a line of text holds a control character: {line:?}"
        );
    }) else {
        return;
    };
    assert_eq!(digest, sha256(file), "the recording's digest");
    let header = &file[..usize::try_from(index.header_len).expect("a small input")];
    let mut at = index.header_len;
    let mut markers = Vec::new();
    let n = index.segments.len();
    assert!(n >= 1, "an index has a segment");
    for (i, s) in index.segments.iter().enumerate() {
        // An exec stream's input frames make no event (no keystroke is played): ones before the first
        // shown event lie before segment 0.
        if i == 0 {
            assert!(s.offset >= at, "segment 0 starts inside the header");
        } else {
            assert_eq!(
                s.offset, at,
                "segment {i} does not start where the one before ended"
            );
        }
        at = s.offset + s.len;
        assert!(at <= file.len() as u64, "segment {i} runs past the file");
        let body = &file[s.offset as usize..at as usize];
        let events = segment_events(format, header, body, s.start).unwrap_or_else(|e| {
            panic!("segment {i} of an accepted recording does not read back: {e}")
        });
        let next = index.segments.get(i + 1).map(|n| n.start);
        if i > 0 {
            assert!(!events.is_empty(), "segment {i} has no events");
            assert_eq!(
                events[0].time, s.start,
                "segment {i}'s first event is not at its start"
            );
        }
        for e in &events {
            assert!(e.time >= s.start, "an event before segment {i}'s start");
            match next {
                Some(next) => assert!(
                    e.time < next,
                    "an event of segment {i} at or after the next one's start"
                ),
                None => assert!(e.time <= index.duration, "an event after the duration"),
            }
            if e.code == 'm' {
                markers.push((e.time, e.data.clone()));
            }
        }
        if next.is_none()
            && let Some(last) = events.last()
        {
            assert_eq!(
                last.time, index.duration,
                "the last event is not at the duration"
            );
        }
    }
    assert_eq!(
        markers, index.markers,
        "the segments' markers are not the index's"
    );
}
