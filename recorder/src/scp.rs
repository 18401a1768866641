//! Legacy SCP transfers (the rcp protocol spoken by `scp -O`, WinSCP and PuTTY's pscp in SCP mode, and
//! paramiko's scp module), observed like SFTP: files with their sizes and outcome, as
//! [`TransferEvent`]s for the same transfer log.
//!
//! Entry points: [`scp_mode`] tells whether an exec command is a plain `scp -t PATH` (the vendor uploads)
//! or `scp -f PATH` (the vendor downloads); [`ScpObserver`] is fed every chunk of that channel in each
//! direction, in the order the relay passes them.
//!
//! The protocol: the *source* sends control lines, `C<mode> <size> <name>` (then the file's bytes and one
//! status byte), `D<mode> 0 <name>` (enter a directory), `E` (leave it), `T<times>`, or an error line
//! (`\x01` or `\x02`, a message, a newline); the *sink* answers the start and every line, and every file's
//! bytes, with `\0` (ok) or an error line. A source waits for each answer before it goes on, so the
//! observer always knows what the next bytes are. (One answer may come early: PuTTY's pscp answers a
//! file's bytes before it reads the status byte the source sends after them.) Anything else (a line no
//! source sends, bytes sent before the sink answered, an answer nobody asked for) stops the observer
//! with one [`TransferEvent::Unparseable`]: the relay then ends the session, since what passes could no
//! longer be told apart from data that is not a transfer.

use std::collections::VecDeque;

use crate::transfer::{Direction, Outcome, TransferEvent};

/// The longest control or error line read (a name Linux accepts is at most 255 bytes in 4096).
const MAX_LINE: usize = 8 * 1024;
/// The longest control line OpenSSH's sink reads as one, its newline left out (`char buf[2048]`, the
/// last for the NUL): the rest of a longer one would be read as what comes next, a file's first bytes.
const SINK_LINE: usize = 2046;
/// The status an SCP error is logged with: SSH_FX_FAILURE, as SFTP would say it.
const FAILED: u32 = 4;

/// Bytes of nested directory names a recursive transfer may be inside (their joined path): more than any
/// file system's path (Linux's `PATH_MAX` is 4096).
pub const MAX_DIRS_BYTES: usize = 8192;

/// Which way an `scp` exec moves files, from the vendor's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScpMode {
    /// `scp -t`: the device's scp is the sink; the vendor sends.
    Upload,
    /// `scp -f`: the device's scp is the source; the vendor receives.
    Download,
}

/// An scp client's own remote command, parsed: [`scp_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    pub mode: ScpMode,
    /// The path the command names on the device: the files sent (`-f`), or where files go (`-t`).
    pub path: String,
    /// `-d`: the path must be a directory (the client sends several files, or a tree).
    pub into_dir: bool,
}

/// The mode of `command` if it is an scp client's own remote command ([`scp_command`]).
pub fn scp_mode(command: &[u8]) -> Option<ScpMode> {
    scp_command(command).map(|c| c.mode)
}

/// `command` if it is an scp client's own remote command: `scp`, flags (`-t` or `-f`, and any of
/// `-d -p -r -v -q`), `--` optionally, then one path of plain characters. Anything else, a path with
/// quotes or shell syntax included (`scp -t x; sh`), is not a transfer: it stays an exec session, whose
/// bytes are all recorded.
pub fn scp_command(command: &[u8]) -> Option<ScpCommand> {
    let command = std::str::from_utf8(command).ok()?;
    let mut words = command.split(' ').filter(|w| !w.is_empty());
    if words.next()? != "scp" {
        return None;
    }
    let (mut to, mut from, mut path, mut into_dir) = (false, false, None, false);
    for word in words {
        if path.is_some() {
            return None; // one path only
        }
        match word.strip_prefix('-') {
            Some("-") => {}
            Some(flags) if !flags.is_empty() => {
                for flag in flags.chars() {
                    match flag {
                        't' => to = true,
                        'f' => from = true,
                        'd' => into_dir = true,
                        'p' | 'r' | 'v' | 'q' => {}
                        _ => return None,
                    }
                }
            }
            _ => {
                // A shell expands `~` at a word's start, and after `=` or `:` in some words: only a
                // leading one is taken (it names a home directory).
                let plain = word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%=~".contains(&b))
                    && !word[1..].contains('~');
                if !plain {
                    return None;
                }
                path = Some(word);
            }
        }
    }
    let mode = match (to, from) {
        (true, false) => ScpMode::Upload,
        (false, true) => ScpMode::Download,
        _ => return None,
    };
    Some(ScpCommand {
        mode,
        path: path?.to_owned(),
        into_dir,
    })
}

/// Where the files an scp command moves are on the device, as far as the command tells.
#[derive(Debug, Default)]
struct Place {
    /// Put before each top-level name: the directory the command's path is in (a download: a source
    /// names what it sends by its last component), or the directory it names (an upload with `-d`).
    prefix: String,
    /// A download of a home directory (`~`, `~user`): the source names it by the path the shell
    /// expanded, which only the device knows, so the first top-level entry is logged as the command
    /// wrote it (taken when used).
    home: Option<String>,
    /// An upload without `-d`: the command's path, each file's `target` ([`TransferEvent::File`]).
    target: Option<String>,
}

impl Place {
    fn of(command: &ScpCommand) -> Place {
        let trimmed = command.path.trim_end_matches('/');
        match (command.mode, command.into_dir) {
            (ScpMode::Download, _) => match trimmed.rfind('/') {
                Some(i) => Place {
                    prefix: trimmed[..=i].to_owned(),
                    ..Place::default()
                },
                None if trimmed.starts_with('~') => Place {
                    home: Some(trimmed.to_owned()),
                    ..Place::default()
                },
                // A relative path names its entry itself; `/` names nothing a source could send.
                None => Place::default(),
            },
            (ScpMode::Upload, true) => Place {
                prefix: format!("{trimmed}/"),
                ..Place::default()
            },
            (ScpMode::Upload, false) => Place {
                target: Some(crate::transfer::lossy(command.path.as_bytes())),
                ..Place::default()
            },
        }
    }
}

/// What the sink's next answer is for.
#[derive(Debug)]
enum Awaiting {
    /// The sink's first `\0`: it is ready.
    Ready,
    /// A `T` line.
    Times,
    /// A `C` line: the file may be sent.
    File(File),
    /// A file's bytes: it was written.
    Written(File),
    /// A `D` line.
    Dir(String),
    /// An `E` line.
    EndDir,
}

#[derive(Debug)]
struct File {
    path: String,
    size: u64,
    /// Bytes of it that passed so far.
    sent: u64,
    /// The source said after its bytes that it could not read them all.
    source_failed: bool,
    /// The number of its `opened` line, once the sink accepted it.
    open: Option<u64>,
}

/// What the observer expects from the source next.
#[derive(Debug)]
enum Source {
    /// A control line, or an error line.
    Line(Vec<u8>),
    /// The answer to the line just sent: nothing may come from the source before it.
    Answer,
    /// A file's bytes, then its status byte.
    Data(File),
    /// The status byte after a file's bytes (or an error line).
    Status(File),
    /// The message of an error status after a file's bytes.
    StatusMessage(File, Vec<u8>),
}

/// Watches one legacy SCP channel; see the [module docs](self).
#[derive(Debug)]
pub struct ScpObserver {
    mode: ScpMode,
    source: Source,
    /// The sink's answer being read: an error line's bytes so far.
    answer: Option<Vec<u8>>,
    awaiting: VecDeque<Awaiting>,
    dirs: Vec<String>,
    /// The sink's answer to a file's bytes, read before the source's status byte after them: PuTTY's
    /// pscp answers as soon as it has all the bytes and reads the status after, so the two cross.
    /// Taken from either side's sink (a device's scp may do the same): when all of a file's bytes have
    /// passed and nothing else is owed an answer, an answer cannot be mistaken for another.
    early: Option<bool>,
    stopped: bool,
    /// Files the sink accepted since the relay last took them ([`ScpObserver::take_opened`]).
    opened: Vec<TransferEvent>,
    /// Files accepted so far on the channel: the next one's `open` number.
    opens: u64,
    place: Place,
}

impl ScpObserver {
    /// An observer for a new channel running `command`: files are logged with their paths on the
    /// device as far as the command tells them.
    pub fn for_command(command: &ScpCommand) -> Self {
        ScpObserver {
            place: Place::of(command),
            ..ScpObserver::new(command.mode)
        }
    }

    /// An observer for a new channel running `scp` in `mode`, logging files by the names the protocol
    /// gives them.
    pub fn new(mode: ScpMode) -> Self {
        ScpObserver {
            place: Place::default(),
            mode,
            source: Source::Line(Vec::new()),
            answer: None,
            awaiting: VecDeque::from([Awaiting::Ready]),
            dirs: Vec::new(),
            early: None,
            stopped: false,
            opened: Vec::new(),
            opens: 0,
        }
    }

    /// The [`TransferEvent::Opened`] of files the sink accepted since the last call, for the relay to log
    /// before it forwards the answer that lets their bytes come.
    pub fn take_opened(&mut self) -> Vec<TransferEvent> {
        std::mem::take(&mut self.opened)
    }

    /// Whether parsing has stopped for this channel.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Bytes the client (vendor) sent.
    pub fn client_to_server(&mut self, data: &[u8]) -> Vec<TransferEvent> {
        match self.mode {
            ScpMode::Upload => self.feed_source(data),
            ScpMode::Download => self.feed_sink(data),
        }
    }

    /// Bytes the server (device) sent.
    pub fn server_to_client(&mut self, data: &[u8]) -> Vec<TransferEvent> {
        match self.mode {
            ScpMode::Upload => self.feed_sink(data),
            ScpMode::Download => self.feed_source(data),
        }
    }

    /// The channel ended: a file whose bytes or answer did not all pass is reported unfinished.
    pub fn finish(self) -> Vec<TransferEvent> {
        let mut events = Vec::new();
        let direction = self.direction();
        let logged = |f: File, outcome| TransferEvent::File {
            path: f.path,
            direction,
            bytes: f.sent,
            outcome,
            open: f.open,
            target: self.place.target.clone(),
        };
        for a in self.awaiting {
            if let Awaiting::File(f) | Awaiting::Written(f) = a {
                events.push(logged(f, Outcome::Unfinished));
            }
        }
        match (self.source, self.early) {
            // The sink refused what it got; the source never said it sent all of it.
            (Source::Status(f) | Source::StatusMessage(f, _), Some(false)) => {
                events.push(logged(f, Outcome::Failed { status: FAILED }));
            }
            (Source::Data(f) | Source::Status(f) | Source::StatusMessage(f, _), _) => {
                events.push(logged(f, Outcome::Unfinished));
            }
            _ => {}
        }
        events
    }

    fn direction(&self) -> Direction {
        match self.mode {
            ScpMode::Upload => Direction::Upload,
            ScpMode::Download => Direction::Download,
        }
    }

    fn stop(&mut self, reason: &str, events: &mut Vec<TransferEvent>) {
        self.dirs = Vec::new();
        self.stopped = true;
        events.push(TransferEvent::Unparseable {
            reason: format!("scp: {reason}"),
        });
    }

    fn feed_source(&mut self, mut data: &[u8]) -> Vec<TransferEvent> {
        let mut events = Vec::new();
        if !self.stopped
            && !data.is_empty()
            && matches!(self.awaiting.front(), Some(Awaiting::Ready))
        {
            // A source waits for the sink's first answer (OpenSSH, pscp, WinSCP).
            self.stop("the source sent before the sink was ready", &mut events);
        }
        while !data.is_empty() && !self.stopped {
            match std::mem::replace(&mut self.source, Source::Answer) {
                Source::Answer => {
                    self.stop("the source sent before the sink answered", &mut events);
                }
                Source::Line(mut line) => match take_line(&mut data, &mut line) {
                    Err(()) => self.stop("a line longer than the protocol's", &mut events),
                    Ok(false) => self.source = Source::Line(line),
                    Ok(true) => self.on_line(&line, &mut events),
                },
                Source::Data(mut f) => {
                    let n = usize::try_from(f.size - f.sent)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    f.sent += n as u64;
                    data = &data[n..];
                    self.source = if f.sent == f.size {
                        Source::Status(f)
                    } else {
                        Source::Data(f)
                    };
                }
                Source::Status(f) => {
                    let status = data[0];
                    data = &data[1..];
                    match status {
                        0 => self.sent_all(f, &mut events),
                        1 | 2 => self.source = Source::StatusMessage(f, Vec::new()),
                        _ => self.stop("no status byte after a file's bytes", &mut events),
                    }
                }
                Source::StatusMessage(mut f, mut line) => match take_line(&mut data, &mut line) {
                    Err(()) => self.stop("a line longer than the protocol's", &mut events),
                    Ok(false) => self.source = Source::StatusMessage(f, line),
                    Ok(true) => {
                        // The source could not read all of it; the sink still answers it.
                        events.push(TransferEvent::Stderr {
                            text: format!("scp: {}", String::from_utf8_lossy(&line)),
                        });
                        f.source_failed = true;
                        self.sent_all(f, &mut events);
                    }
                },
            }
        }
        events
    }

    /// The source's status after a file's bytes was read: the file waits for the sink's answer, or is
    /// logged with the one that came first.
    fn sent_all(&mut self, f: File, events: &mut Vec<TransferEvent>) {
        match self.early.take() {
            Some(ok) => {
                events.push(self.written(f, ok));
                self.source = Source::Line(Vec::new());
            }
            None => {
                self.awaiting.push_back(Awaiting::Written(f));
                self.source = Source::Answer;
            }
        }
    }

    fn on_line(&mut self, line: &[u8], events: &mut Vec<TransferEvent>) {
        let Some((&kind, rest)) = line.split_first() else {
            return self.stop("an empty line", events);
        };
        // Read as the sink reads it, or not at all: the sink takes a name as a C string (`updater\0.txt`
        // writes `updater`), and a line longer than its buffer as two.
        if line.contains(&0) {
            return self.stop("a NUL in a control line", events);
        }
        if line.len() > SINK_LINE {
            return self.stop("a control line longer than scp's sink reads", events);
        }
        let text = String::from_utf8_lossy(rest);
        let awaiting = match kind {
            b'T' => {
                let times = text.split(' ').collect::<Vec<_>>();
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                if times.len() != 4 || !times.iter().all(|t| digits(t)) {
                    return self.stop("a times line that is not four numbers", events);
                }
                Awaiting::Times
            }
            b'E' if rest.is_empty() => Awaiting::EndDir,
            b'C' | b'D' => {
                let mut fields = text.splitn(3, ' ');
                let (mode, size, name) = (fields.next(), fields.next(), fields.next());
                let (Some(mode), Some(size), Some(name)) = (mode, size, name) else {
                    return self.stop("a file or directory line without its fields", events);
                };
                let Ok(size) = size.parse::<u64>() else {
                    return self.stop("a size that is not a number", events);
                };
                if mode.len() != 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                    return self.stop("a mode that is not four octal digits", events);
                }
                if name.is_empty() || name.contains('/') || name == ".." {
                    return self.stop("a name with a path in it", events);
                }
                let name = if self.dirs.is_empty()
                    && let Some(home) = self.place.home.take()
                {
                    home
                } else {
                    name.to_owned()
                };
                if kind == b'C' {
                    let path = self.path(&name);
                    Awaiting::File(File {
                        path,
                        size,
                        sent: 0,
                        source_failed: false,
                        open: None,
                    })
                } else if self.depth_bytes() + name.len() + 1 > MAX_DIRS_BYTES {
                    // No file system holds such a path; each level was kept, and each file line
                    // rebuilt the whole path: a source nesting `D` lines without end held memory and
                    // CPU on the relay's thread.
                    return self.stop("directories nested deeper than any path", events);
                } else {
                    Awaiting::Dir(name)
                }
            }
            // An error the source reports (no such file, …): no answer comes for it. Its text is logged:
            // nothing the source sends passes unrecorded.
            1 | 2 => {
                events.push(TransferEvent::Stderr {
                    text: format!("scp: {text}"),
                });
                self.source = Source::Line(Vec::new());
                return;
            }
            _ => return self.stop("a line no scp source sends", events),
        };
        self.awaiting.push_back(awaiting);
        self.source = Source::Answer;
    }

    /// Bytes of the directories a transfer is inside, joined (`dirs` and their separators).
    fn depth_bytes(&self) -> usize {
        self.dirs.iter().map(|d| d.len() + 1).sum()
    }

    fn path(&self, name: &str) -> String {
        let mut path = self.place.prefix.clone();
        for dir in &self.dirs {
            path.push_str(dir);
            path.push('/');
        }
        path.push_str(name);
        crate::transfer::lossy(path.as_bytes())
    }

    fn feed_sink(&mut self, mut data: &[u8]) -> Vec<TransferEvent> {
        let mut events = Vec::new();
        while !data.is_empty() && !self.stopped {
            let ok = match self.answer.take() {
                None => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        0 => true,
                        1 | 2 => {
                            self.answer = Some(Vec::new());
                            continue;
                        }
                        _ => {
                            self.stop("an answer that is not one", &mut events);
                            break;
                        }
                    }
                }
                Some(mut line) => match take_line(&mut data, &mut line) {
                    Err(()) => {
                        self.stop("a line longer than the protocol's", &mut events);
                        break;
                    }
                    Ok(false) => {
                        self.answer = Some(line);
                        continue;
                    }
                    Ok(true) => false,
                },
            };
            self.on_answer(ok, &mut events);
        }
        events
    }

    fn on_answer(&mut self, ok: bool, events: &mut Vec<TransferEvent>) {
        if self.awaiting.is_empty()
            && self.early.is_none()
            && matches!(self.source, Source::Status(_) | Source::StatusMessage(..))
        {
            // All of a file's bytes passed; its status byte has not yet (see `early`).
            self.early = Some(ok);
            return;
        }
        let Some(awaiting) = self.awaiting.pop_front() else {
            return self.stop("an answer nobody asked for", events);
        };
        // Every answer but the sink's first is one the source waits for.
        let answered_line = !matches!(awaiting, Awaiting::Ready);
        if answered_line && !matches!(self.source, Source::Answer) {
            return self.stop("an answer before the line it answers", events);
        }
        let mut next = Source::Line(Vec::new());
        match awaiting {
            Awaiting::Ready | Awaiting::Times | Awaiting::EndDir if !ok => {}
            Awaiting::Ready | Awaiting::Times => {}
            Awaiting::EndDir => {
                self.dirs.pop();
            }
            Awaiting::Dir(name) => {
                if ok {
                    self.dirs.push(name);
                }
            }
            Awaiting::File(mut f) if ok => {
                f.open = Some(self.opens);
                self.opened.push(TransferEvent::Opened {
                    path: f.path.clone(),
                    direction: self.direction(),
                    open: f.open,
                    target: self.place.target.clone(),
                });
                self.opens += 1;
                next = if f.size == 0 {
                    Source::Status(f)
                } else {
                    Source::Data(f)
                };
            }
            Awaiting::File(f) => {
                events.push(self.file_event(f, Outcome::Failed { status: FAILED }))
            }
            Awaiting::Written(f) => events.push(self.written(f, ok)),
        }
        if answered_line {
            self.source = next;
        }
    }

    /// The log line of a file whose bytes all passed, as the sink answered them (`ok`).
    fn written(&self, f: File, ok: bool) -> TransferEvent {
        let outcome = if ok && !f.source_failed {
            Outcome::Ok
        } else {
            Outcome::Failed { status: FAILED }
        };
        self.file_event(f, outcome)
    }

    fn file_event(&self, f: File, outcome: Outcome) -> TransferEvent {
        TransferEvent::File {
            path: f.path,
            direction: self.direction(),
            bytes: f.sent,
            outcome,
            open: f.open,
            target: self.place.target.clone(),
        }
    }
}

/// Moves bytes of `data` into `line` up to a newline (not kept); true once it was found, `Err` past
/// [`MAX_LINE`].
fn take_line(data: &mut &[u8], line: &mut Vec<u8>) -> Result<bool, ()> {
    let (part, found) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], i + 1),
        None => (*data, data.len()),
    };
    if line.len() + part.len() > MAX_LINE {
        return Err(());
    }
    line.extend_from_slice(part);
    let complete = found > part.len();
    *data = &data[found..];
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_scp_clients_own_command_is_a_transfer() {
        assert_eq!(scp_mode(b"scp -t /tmp/x"), Some(ScpMode::Upload));
        assert_eq!(scp_mode(b"scp -v -r -p -t -- /tmp/"), Some(ScpMode::Upload));
        assert_eq!(scp_mode(b"scp -f /var/log/syslog"), Some(ScpMode::Download));
        assert_eq!(scp_mode(b"scp -pf ~/a.log"), Some(ScpMode::Download));
        for not in [
            "scp -t /tmp/x; sh",
            "scp -t /tmp/x && sh",
            "scp -t '/tmp/a b'",
            "scp -t /tmp/$(id)",
            "scp -t a b",
            "scp -t",
            "scp -t -f /x",
            "scp -tx /x",
            "/usr/bin/scp -t /x",
            "sh -c 'scp -t /x'",
            "scp\t-t /x",
        ] {
            assert_eq!(scp_mode(not.as_bytes()), None, "{not}");
        }
    }

    fn file(
        path: &str,
        bytes: u64,
        outcome: Outcome,
        direction: Direction,
        open: Option<u64>,
    ) -> TransferEvent {
        TransferEvent::File {
            path: path.into(),
            direction,
            bytes,
            outcome,
            open,
            target: None,
        }
    }

    /// One file through an observer of `command`: its log line.
    fn one_file(command: &str) -> TransferEvent {
        let command = scp_command(command.as_bytes()).unwrap();
        let mut o = ScpObserver::for_command(&command);
        let (source, sink): (&[&[u8]], &[&[u8]]) = (
            &[b"D0755 0 fw\n", b"C0644 3 f.bin\n", b"abc\0", b"E\n"],
            &[b"\0", b"\0", b"\0", b"\0", b"\0"],
        );
        let mut events = Vec::new();
        let mut feed = |from_source: bool, data: &[u8]| {
            let upload = command.mode == ScpMode::Upload;
            events.extend(if from_source == upload {
                o.client_to_server(data)
            } else {
                o.server_to_client(data)
            });
        };
        feed(false, sink[0]);
        for (line, answer) in source.iter().zip(&sink[1..]) {
            feed(true, line);
            feed(false, answer);
        }
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    /// Files are logged where the command puts them on the device, as far as it tells: a download's in
    /// its path's directory; an upload's under a `-d` directory; an upload without `-d` names the
    /// command's path as its target (the file itself, or the directory it went into).
    #[test]
    fn files_are_logged_with_their_place_on_the_device() {
        let place = |command: &str| match one_file(command) {
            TransferEvent::File { path, target, .. } => (path, target),
            other => panic!("{other:?}"),
        };
        assert_eq!(place("scp -r -f /srv/fw"), ("/srv/fw/f.bin".into(), None));
        assert_eq!(place("scp -r -f /srv/fw/"), ("/srv/fw/f.bin".into(), None));
        assert_eq!(place("scp -r -f fw"), ("fw/f.bin".into(), None));
        assert_eq!(
            place("scp -r -d -t /tmp/in/"),
            ("/tmp/in/fw/f.bin".into(), None)
        );
        assert_eq!(place("scp -r -d -t /"), ("/fw/f.bin".into(), None));
        // Where this went, only the device knows: `/tmp/new/f.bin` if `/tmp/new` was new (the tree
        // became it), `/tmp/new/fw/f.bin` if it was a directory. The log names both parts.
        assert_eq!(
            place("scp -r -t /tmp/new"),
            ("fw/f.bin".into(), Some("/tmp/new".into()))
        );
        // A home directory is sent under the name the shell expanded it to (here `fw`).
        assert_eq!(place("scp -r -f ~"), ("~/f.bin".into(), None));
        assert_eq!(place("scp -r -f ~/"), ("~/f.bin".into(), None));
        assert_eq!(place("scp -r -f ~/fw"), ("~/fw/f.bin".into(), None));
        assert_eq!(place("scp -r -d -t ~"), ("~/fw/f.bin".into(), None));
        for expanded in ["scp -f a=~/x", "scp -t x:~/y", "scp -f /tmp/~"] {
            assert_eq!(scp_command(expanded.as_bytes()), None, "{expanded}");
        }
        assert_eq!(
            scp_command(b"scp -v -d -t -- /tmp/"),
            Some(ScpCommand {
                mode: ScpMode::Upload,
                path: "/tmp/".into(),
                into_dir: true
            })
        );
    }

    /// `scp -r dir host:/tmp/`: the sink's first answer, a directory, two files (one refused), the end of
    /// the directory; fed in awkward chunks.
    #[test]
    fn an_upload_logs_each_file_with_its_size_and_outcome() {
        let mut o = ScpObserver::new(ScpMode::Upload);
        let mut events = Vec::new();
        events.extend(o.server_to_client(b"\0"));
        events.extend(o.client_to_server(b"D0755 0 fw\n"));
        events.extend(o.server_to_client(b"\0"));
        events.extend(o.client_to_server(b"T1 0 1 0\n"));
        events.extend(o.server_to_client(b"\0"));
        events.extend(o.client_to_server(b"C06"));
        events.extend(o.client_to_server(b"44 5 update.bin\n"));
        events.extend(o.server_to_client(b"\0"));
        events.extend(o.client_to_server(b"hel"));
        events.extend(o.client_to_server(b"lo\0"));
        events.extend(o.server_to_client(b"\0"));
        events.extend(o.client_to_server(b"C0600 3 locked\n"));
        events.extend(o.server_to_client(b"\x01scp: locked: Permission denied\n"));
        events.extend(o.client_to_server(b"E\n"));
        events.extend(o.server_to_client(b"\0"));
        assert_eq!(
            events,
            [
                file("fw/update.bin", 5, Outcome::Ok, Direction::Upload, Some(0)),
                // Refused by the sink: never opened.
                file(
                    "fw/locked",
                    0,
                    Outcome::Failed { status: FAILED },
                    Direction::Upload,
                    None
                ),
            ]
        );
        assert!(o.finish().is_empty());
    }

    /// A file the source could not read to the end (truncated while sent): its error status, then the
    /// sink's answer to it, then the next file; the error's text is logged.
    #[test]
    fn a_source_error_after_a_files_bytes_is_answered_and_logged() {
        let mut o = ScpObserver::new(ScpMode::Download);
        let mut events = o.client_to_server(b"\0");
        events.extend(o.server_to_client(b"C0644 3 log\n"));
        events.extend(o.client_to_server(b"\0"));
        events.extend(o.server_to_client(b"abc\x01scp: log: file changed size\n"));
        events.extend(o.client_to_server(b"\0"));
        events.extend(o.server_to_client(b"C0644 1 next\n"));
        events.extend(o.client_to_server(b"\0"));
        events.extend(o.server_to_client(b"z\0"));
        events.extend(o.client_to_server(b"\0"));
        assert_eq!(
            events,
            [
                TransferEvent::Stderr {
                    text: "scp: scp: log: file changed size".into()
                },
                file(
                    "log",
                    3,
                    Outcome::Failed { status: FAILED },
                    Direction::Download,
                    Some(0)
                ),
                file("next", 1, Outcome::Ok, Direction::Download, Some(1)),
            ]
        );
        let opened = |path: &str, open| TransferEvent::Opened {
            path: path.into(),
            direction: Direction::Download,
            open: Some(open),
            target: None,
        };
        assert_eq!(o.take_opened(), [opened("log", 0), opened("next", 1)]);
        assert!(o.finish().is_empty());
    }

    /// PuTTY's pscp, the sink of a download, answers a file's bytes before it reads the source's status
    /// byte after them: the two cross on the wire, in either order, and the file is logged all the same
    /// (ok, refused by the sink, or failed by the source).
    #[test]
    fn a_sinks_answer_may_come_before_the_sources_status() {
        let run = |answer: &[u8], status: &[u8]| {
            let mut o = ScpObserver::new(ScpMode::Download);
            let mut events = o.client_to_server(b"\0");
            events.extend(o.server_to_client(b"C0644 3 a\n"));
            events.extend(o.client_to_server(b"\0"));
            events.extend(o.server_to_client(b"abc"));
            events.extend(o.client_to_server(answer));
            events.extend(o.server_to_client(status));
            events.extend(o.server_to_client(b"C0644 0 b\n"));
            events.extend(o.client_to_server(b"\0"));
            events.extend(o.client_to_server(b"\0"));
            events.extend(o.server_to_client(b"\0"));
            assert!(o.finish().is_empty());
            events
        };
        let failed = Outcome::Failed { status: FAILED };
        let b = file("b", 0, Outcome::Ok, Direction::Download, Some(1));
        assert_eq!(
            run(b"\0", b"\0"),
            [
                file("a", 3, Outcome::Ok, Direction::Download, Some(0)),
                b.clone()
            ]
        );
        assert_eq!(
            run(b"\x01pscp: a: Write error\n", b"\0"),
            [
                file("a", 3, failed, Direction::Download, Some(0)),
                b.clone()
            ]
        );
        assert_eq!(
            run(b"\0", b"\x01scp: a: read error\n"),
            [
                TransferEvent::Stderr {
                    text: "scp: scp: a: read error".into()
                },
                file("a", 3, failed, Direction::Download, Some(0)),
                b
            ]
        );
        // The channel closed after an early answer: unfinished if it was ok, failed if the sink refused.
        for (answer, outcome) in [(&b"\0"[..], Outcome::Unfinished), (b"\x02no\n", failed)] {
            let mut o = ScpObserver::new(ScpMode::Download);
            o.client_to_server(b"\0");
            o.server_to_client(b"C0644 3 a\n");
            o.client_to_server(b"\0");
            o.server_to_client(b"abc");
            assert!(o.client_to_server(answer).is_empty());
            assert_eq!(
                o.finish(),
                [file("a", 3, outcome, Direction::Download, Some(0))]
            );
        }
        // One early answer, not two: a second before the status is still one nobody asked for.
        let mut o = ScpObserver::new(ScpMode::Download);
        o.client_to_server(b"\0");
        o.server_to_client(b"C0644 3 a\n");
        o.client_to_server(b"\0");
        o.server_to_client(b"abc");
        let events = o.client_to_server(b"\0\0");
        assert!(
            matches!(events[..], [TransferEvent::Unparseable { .. }]),
            "{events:?}"
        );
    }

    #[test]
    fn a_download_cut_off_is_unfinished_with_what_passed() {
        let mut o = ScpObserver::new(ScpMode::Download);
        assert!(o.client_to_server(b"\0").is_empty());
        assert!(o.server_to_client(b"C0644 10 syslog\n").is_empty());
        assert!(o.client_to_server(b"\0").is_empty());
        assert!(o.server_to_client(b"1234").is_empty());
        assert_eq!(
            o.finish(),
            [file(
                "syslog",
                4,
                Outcome::Unfinished,
                Direction::Download,
                Some(0)
            )]
        );
    }

    /// A source that nests directories without end (`D` lines, each answered) stops the observer (so the
    /// session, which must not pass what it cannot follow) once the path is longer than any file
    /// system's, instead of keeping every level and rebuilding the whole path for each file line.
    #[test]
    fn directories_nested_past_any_path_stop_the_observer() {
        let command = scp_command(b"scp -r -f /srv").unwrap();
        let mut o = ScpObserver::for_command(&command);
        let mut events = o.client_to_server(b"\0");
        let mut lines = 0;
        while events.is_empty() && lines < 100_000 {
            events.extend(o.server_to_client(b"D0755 0 dir\n"));
            events.extend(o.client_to_server(b"\0"));
            lines += 1;
        }
        assert!(
            matches!(&events[..], [TransferEvent::Unparseable { reason }] if reason.contains("deeper")),
            "{events:?}"
        );
        assert_eq!(
            lines,
            MAX_DIRS_BYTES / "dir/".len() + 1,
            "stopped at the bound"
        );
        // An ordinary deep tree is followed.
        let mut o = ScpObserver::for_command(&command);
        let mut events = o.client_to_server(b"\0");
        for _ in 0..100 {
            events.extend(o.server_to_client(b"D0755 0 level\n"));
            events.extend(o.client_to_server(b"\0"));
        }
        events.extend(o.server_to_client(b"C0644 1 f\n"));
        events.extend(o.client_to_server(b"\0"));
        events.extend(o.server_to_client(b"x\0"));
        events.extend(o.client_to_server(b"\0"));
        assert!(
            matches!(&events[..], [TransferEvent::File { path, .. }] if path.ends_with("level/f")),
            "{events:?}"
        );
    }

    #[test]
    fn what_no_scp_sends_stops_the_observer() {
        for (mode, sink_first, source) in [
            (ScpMode::Upload, true, &b"ls -la\n"[..]),
            (ScpMode::Upload, true, b"C0644 5 ../x\n"),
            (ScpMode::Upload, true, b"C0644 5 x\nhello"), // did not wait for the answer
            (ScpMode::Upload, false, b"C0644 5 x\n"),     // before the sink was ready
            (ScpMode::Upload, false, b"\x01anything at all\n"),
            (ScpMode::Upload, true, b"T1 0 1 0 rm -rf /\n"),
        ] {
            let mut o = ScpObserver::new(mode);
            if sink_first {
                o.server_to_client(b"\0");
            }
            let mut events = o.client_to_server(source);
            events.extend(o.server_to_client(b"\0\0\0"));
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, TransferEvent::Unparseable { .. })),
                "{source:?}: {events:?}"
            );
        }
        // Lines the sink would read otherwise than the observer: a name it ends at its NUL (the log
        // would say `updater.txt`, the device writes `updater`), and a line past its 2047-byte buffer
        // (a size padded with zeros puts the cut in the name; the rest would be the file's data).
        let padded = format!("C0644 {}10 authorized_keys.bak\n", "0".repeat(2100));
        for source in [&b"C0755 5 updater\0.txt\n"[..], padded.as_bytes()] {
            let mut o = ScpObserver::new(ScpMode::Upload);
            o.server_to_client(b"\0");
            let events = o.client_to_server(source);
            assert!(
                matches!(&events[..], [TransferEvent::Unparseable { .. }]),
                "{events:?}"
            );
        }
        // A shell's output where the sink's answers should be.
        let mut o = ScpObserver::new(ScpMode::Upload);
        let events = o.server_to_client(b"root:x:0:0\n");
        assert!(
            matches!(events[..], [TransferEvent::Unparseable { .. }]),
            "{events:?}"
        );
    }
}
