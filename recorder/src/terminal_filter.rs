//! What may reach a real terminal when a recording is played back: a streaming filter over a device's
//! output that keeps text, colours and cursor motion, and removes every control that could act outside
//! the screen.
//!
//! Entry point: [`TerminalFilter`]. [`TerminalFilter::push`] takes output as it comes (a sequence may be
//! split anywhere, across events or frames), [`TerminalFilter::finish`] ends it and turns off the modes
//! the played output turned on. It is a pure function of its input (no I/O, no clock), never panics,
//! and holds at most [`MAX_SEQUENCE`] bytes of a sequence between calls, so it can be fuzzed as it is.
//!
//! A device (or a vendor on it) controls every byte of a recording. Played raw, that output reaches an
//! administrator's terminal, which obeys sequences that write the clipboard (OSC 52), set window titles
//! (OSC 0/1/2, which older terminals could be asked to type back), set hyperlinks (OSC 8), make the
//! terminal answer (DSR `CSI 6n`, DA `CSI c`, DECRQSS `DCS $ q`, XTGETTCAP `DCS + q`, colour queries
//! `OSC 10;?`, window reports `CSI 18 t`, ENQ's answerback, DECID `ESC Z`…) — an answer arrives as typed
//! input, in the administrator's shell once the player exits — or change how the keyboard and mouse
//! report (mouse tracking, focus events, bracketed paste, modifyOtherKeys, the kitty keyboard protocol).
//!
//! The filter is an allowlist, not a list of known-bad sequences: what it does not know is removed.
//! - Kept: printable text (UTF-8), BEL BS HT LF VT FF CR SO SI; `ESC 7 8 = > D E H M c N O n o | } ~
//!   6 9`; charset designations (`ESC ( 0`…) and `ESC # 3 4 5 6 8`; CSI cursor motion, erasing,
//!   inserting, scrolling, SGR (colours), scroll margins, tab stops, cursor save/restore, insert mode
//!   (`CSI 4 h`), cursor style (`CSI Ps SP q`), soft reset (`CSI ! p`), selective erase (`CSI ? J/K`),
//!   and the DEC private modes that only change how the screen is drawn (cursor keys 1, reverse video 5,
//!   origin 6, autowrap 7, cursor blink 12, cursor visible 25, alternate screen 47/1047/1048/1049,
//!   synchronised output 2026).
//! - Removed: every OSC, DCS, SOS, PM and APC string whole; every other CSI and escape sequence
//!   (queries, window operations, printer, keyboard and mouse modes, 7/8-bit and UTF-8 mode switches);
//!   other C0 controls (ENQ, NUL…); every C1 control, whether a raw byte or UTF-8 encoded (U+0080 to
//!   U+009F), with the sequence it introduces.
//!
//! The output is meant for a UTF-8 terminal (asciicast is UTF-8 by definition): bytes that are not
//! UTF-8 become U+FFFD, so no stray byte can be taken for a C1 control. Every piece of output is whole
//! (a complete sequence, a complete character), so the terminal's parser is back in its ground state
//! after each one and nothing removed can be completed by what follows.

/// The longest escape or CSI sequence kept whole; a longer one is removed (SGR with true colour for
/// foreground and background is about 40 bytes).
pub const MAX_SEQUENCE: usize = 256;

const ESC: u8 = 0x1b;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const DEL: u8 = 0x7f;
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Streaming filter state: feed output with [`push`](Self::push), end with [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct TerminalFilter {
    state: State,
    /// The escape or CSI sequence being collected (starting with ESC), at most [`MAX_SEQUENCE`] bytes.
    seq: Vec<u8>,
    /// A UTF-8 character being collected in the ground state: its bytes so far.
    utf8: [u8; 4],
    utf8_len: usize,
    /// How many bytes the character being collected has in all (0: none is being collected).
    utf8_want: usize,
    /// Modes the kept output changed, turned back at [`finish`](Self::finish).
    touched: Touched,
    removed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    /// After ESC (and maybe intermediates), in `seq`.
    Escape,
    /// An escape sequence that is being removed: skip to its final byte.
    EscapeIgnore,
    /// After `ESC [`, collecting parameters and intermediates in `seq`.
    Csi,
    /// A CSI sequence that is being removed: skip to its final byte.
    CsiIgnore,
    /// Inside an OSC, DCS, SOS, PM or APC string (removed whole); `esc` after an ESC in it.
    Str {
        esc: bool,
    },
}

/// Modes to turn back at the end, so the administrator's terminal is left as it was found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Touched {
    sgr: bool,
    charset: bool,
    keypad: bool,
    cursor_keys: bool,
    reverse_video: bool,
    origin: bool,
    autowrap: bool,
    cursor_hidden: bool,
    alternate_screen: bool,
    synchronized: bool,
    cursor_style: bool,
    margins: bool,
    insert: bool,
}

impl Default for TerminalFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalFilter {
    pub fn new() -> Self {
        Self {
            state: State::Ground,
            seq: Vec::with_capacity(32),
            utf8: [0; 4],
            utf8_len: 0,
            utf8_want: 0,
            touched: Touched::default(),
            removed: 0,
        }
    }

    /// How many controls and sequences were removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// Filters `input`, appending what may reach the terminal to `out`. A sequence or character cut off
    /// at the end of `input` is held until the next call.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        for &b in input {
            self.byte(b, out);
        }
    }

    /// Ends the output: drops a sequence or character left unfinished and appends what turns back the
    /// modes the kept output changed (main screen, cursor shown, default colours and charset…). The
    /// filter is then as new, except for [`removed`](Self::removed).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        // Strings and ignored sequences were counted when they began; a sequence still being collected,
        // or a character cut short, is counted now.
        if matches!(self.state, State::Escape | State::Csi) || self.utf8_want != 0 {
            self.removed += 1;
        }
        self.state = State::Ground;
        self.seq.clear();
        self.utf8_len = 0;
        self.utf8_want = 0;
        let t = std::mem::take(&mut self.touched);
        let restores: [(bool, &[u8]); 13] = [
            (t.synchronized, b"\x1b[?2026l"),
            (t.alternate_screen, b"\x1b[?1049l"),
            (t.margins, b"\x1b[r"),
            (t.origin, b"\x1b[?6l"),
            (t.insert, b"\x1b[4l"),
            (t.sgr, b"\x1b[0m"),
            (t.charset, b"\x0f\x1b(B"),
            (t.keypad, b"\x1b>"),
            (t.cursor_keys, b"\x1b[?1l"),
            (t.reverse_video, b"\x1b[?5l"),
            (t.autowrap, b"\x1b[?7h"),
            (t.cursor_style, b"\x1b[0 q"),
            (t.cursor_hidden, b"\x1b[?25h"),
        ];
        for (touched, bytes) in restores {
            if touched {
                out.extend_from_slice(bytes);
            }
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => self.ground(b, out),
            State::Escape => self.escape(b, out),
            State::EscapeIgnore => {
                if !self.in_sequence_control(b, out) && (0x30..=0x7e).contains(&b) {
                    self.state = State::Ground;
                }
            }
            State::Csi => self.csi(b, out),
            State::CsiIgnore => {
                if !self.in_sequence_control(b, out) && (0x40..=0x7e).contains(&b) {
                    self.state = State::Ground;
                }
            }
            State::Str { esc } => self.string(b, esc, out),
        }
    }

    fn ground(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.utf8_want != 0 {
            if self.continues_utf8(b) {
                self.utf8[self.utf8_len] = b;
                self.utf8_len += 1;
                if self.utf8_len == self.utf8_want {
                    self.utf8_want = 0;
                    let (lead, second) = (self.utf8[0], self.utf8[1]);
                    if lead == 0xc2 && second <= 0x9f {
                        // U+0080..U+009F: a C1 control, UTF-8 encoded.
                        self.c1(second);
                    } else {
                        out.extend_from_slice(&self.utf8[..self.utf8_len]);
                    }
                }
                return;
            }
            // Not UTF-8: shown as U+FFFD, and `b` starts afresh.
            self.utf8_want = 0;
            out.extend_from_slice(REPLACEMENT);
        }
        match b {
            ESC => self.start_escape(),
            0x00..=0x1f => self.c0(b, out),
            0x20..=0x7e => out.push(b),
            DEL => {}
            // Not UTF-8 (a raw C1 byte among them: a UTF-8 terminal shows it as U+FFFD too, and never
            // acts on it; so is it here, and a raw byte 0x80-0x9F never reaches the terminal).
            0x80..=0xbf | 0xc0 | 0xc1 | 0xf5..=0xff => out.extend_from_slice(REPLACEMENT),
            0xc2..=0xdf => self.start_utf8(b, 2),
            0xe0..=0xef => self.start_utf8(b, 3),
            0xf0..=0xf4 => self.start_utf8(b, 4),
        }
    }

    fn start_utf8(&mut self, lead: u8, len: usize) {
        self.utf8[0] = lead;
        self.utf8_len = 1;
        self.utf8_want = len;
    }

    /// Whether `b` may be the next byte of the character being collected (Unicode's table 3-7: no
    /// overlong forms, no surrogates, nothing above U+10FFFF).
    fn continues_utf8(&self, b: u8) -> bool {
        let range = match (self.utf8_len, self.utf8[0]) {
            (1, 0xe0) => 0xa0..=0xbf,
            (1, 0xed) => 0x80..=0x9f,
            (1, 0xf0) => 0x90..=0xbf,
            (1, 0xf4) => 0x80..=0x8f,
            _ => 0x80..=0xbf,
        };
        range.contains(&b)
    }

    /// A C0 control outside a string: kept if it only moves the cursor or shifts the charset.
    fn c0(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            // BEL BS HT LF VT FF CR
            0x07..=0x0d => out.push(b),
            // SO SI: charset shifts, turned back at the end.
            0x0e | 0x0f => {
                self.touched.charset = true;
                out.push(b);
            }
            // ENQ (answerback), NUL, DC1-4, …: removed.
            _ => self.removed += 1,
        }
    }

    /// A C1 control (UTF-8 encoded, U+0080..U+009F): removed with what it introduces.
    fn c1(&mut self, b: u8) {
        self.removed += 1;
        self.state = match b {
            // CSI: its parameters and final byte go too.
            0x9b => State::CsiIgnore,
            // DCS, SOS, OSC, PM, APC: the whole string goes.
            0x90 | 0x98 | 0x9d | 0x9e | 0x9f => State::Str { esc: false },
            _ => State::Ground,
        };
    }

    fn start_escape(&mut self) {
        self.seq.clear();
        self.seq.push(ESC);
        self.state = State::Escape;
    }

    /// A byte that is not part of the sequence being collected: CAN and SUB cancel it, ESC starts a new
    /// one, other C0 controls act at once (as a terminal does), a byte above 0x7F ends it and is read
    /// afresh. Returns whether `b` was such a byte.
    fn in_sequence_control(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match b {
            CAN | SUB => {
                self.removed += 1;
                self.state = State::Ground;
            }
            ESC => {
                self.removed += 1;
                self.start_escape();
            }
            0x00..=0x1f => self.c0(b, out),
            DEL => {}
            0x80..=0xff => {
                self.removed += 1;
                self.state = State::Ground;
                self.ground(b, out);
            }
            _ => return false,
        }
        true
    }

    fn escape(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.in_sequence_control(b, out) {
            return;
        }
        match b {
            0x20..=0x2f => {
                if self.seq.len() >= 4 {
                    self.removed += 1;
                    self.state = State::EscapeIgnore;
                } else {
                    self.seq.push(b);
                }
            }
            _ => {
                self.state = State::Ground;
                let intermediates = self.seq.get(1..).unwrap_or_default();
                match (intermediates, b) {
                    ([], b'[') => {
                        self.seq.push(b);
                        self.state = State::Csi;
                    }
                    // OSC, DCS, SOS, PM, APC
                    ([], b']' | b'P' | b'X' | b'^' | b'_') => {
                        self.removed += 1;
                        self.state = State::Str { esc: false };
                    }
                    ([], b'7' | b'8' | b'D' | b'E' | b'H' | b'M' | b'N' | b'O' | b'6' | b'9') => {
                        self.keep_escape(b, out)
                    }
                    ([], b'=' | b'>') => {
                        self.touched.keypad = true;
                        self.keep_escape(b, out);
                    }
                    ([], b'n' | b'o' | b'|' | b'}' | b'~') => {
                        self.touched.charset = true;
                        self.keep_escape(b, out);
                    }
                    // RIS: a full reset leaves nothing to turn back.
                    ([], b'c') => {
                        self.touched = Touched::default();
                        self.keep_escape(b, out);
                    }
                    // Charset designations (G0-G3, 94 and 96 sets, with one more intermediate at most).
                    ([b'(' | b')' | b'*' | b'+' | b'-' | b'.' | b'/'], _)
                    | ([b'(' | b')' | b'*' | b'+' | b'-' | b'.' | b'/', _], _) => {
                        self.touched.charset = true;
                        self.keep_escape(b, out);
                    }
                    // Double-height/width lines, screen alignment test.
                    ([b'#'], b'3' | b'4' | b'5' | b'6' | b'8') => self.keep_escape(b, out),
                    // DECID (answers), ST, 7/8-bit controls, UTF-8 mode, anything unknown.
                    _ => self.removed += 1,
                }
            }
        }
    }

    fn keep_escape(&mut self, last: u8, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq);
        out.push(last);
    }

    fn csi(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.in_sequence_control(b, out) {
            return;
        }
        if self.seq.len() >= MAX_SEQUENCE {
            self.removed += 1;
            self.state = if (0x40..=0x7e).contains(&b) {
                State::Ground
            } else {
                State::CsiIgnore
            };
            return;
        }
        self.seq.push(b);
        if (0x40..=0x7e).contains(&b) {
            self.state = State::Ground;
            self.end_csi(out);
        }
    }

    /// A whole CSI sequence is in `seq`: keep it, keep part of it (mode lists) or remove it.
    fn end_csi(&mut self, out: &mut Vec<u8>) {
        // Taken out while it is looked at (and put back, to keep its allocation).
        let seq = std::mem::take(&mut self.seq);
        self.judge_csi(&seq, out);
        self.seq = seq;
    }

    fn judge_csi(&mut self, seq: &[u8], out: &mut Vec<u8>) {
        let Some(csi) = Csi::parse(seq) else {
            self.removed += 1;
            return;
        };
        let keep = match (csi.prefix, csi.intermediates, csi.final_byte) {
            // Cursor motion, erasing, inserting/deleting, scrolling, repeat, tab stops.
            (
                None,
                [],
                b'@'
                | b'A'..=b'H'
                | b'I'
                | b'J'
                | b'K'
                | b'L'
                | b'M'
                | b'P'
                | b'S'
                | b'X'
                | b'Z'
                | b'`'
                | b'a'
                | b'b'
                | b'd'
                | b'e'
                | b'f'
                | b'g'
                | b'j'
                | b'k',
            ) => true,
            // SD; with more parameters it is xterm's mouse highlight tracking.
            (None, [], b'T') => !csi.params.contains(&b';'),
            (None, [], b'm') => {
                self.touched.sgr = true;
                true
            }
            (None, [], b'r') => {
                self.touched.margins = true;
                true
            }
            // Save/restore cursor (SCOSC/SCORC), left/right margins.
            (None, [], b's' | b'u') => true,
            (None, [], b'h' | b'l') => return self.modes(&csi, out, false),
            (Some(b'?'), [], b'h' | b'l') => return self.modes(&csi, out, true),
            // Selective erase.
            (Some(b'?'), [], b'J' | b'K') => true,
            (None, [b' '], b'q') => {
                self.touched.cursor_style = true;
                true
            }
            // DECSTR soft reset.
            (None, [b'!'], b'p') => true,
            // DSR, DA, DECRQM, window operations, printer, XTVERSION, keyboard protocols, …
            _ => false,
        };
        if keep {
            out.extend_from_slice(seq);
        } else {
            self.removed += 1;
        }
    }

    /// SM/RM (`dec` false) or DECSET/DECRST (`dec` true): keeps the modes that only change how the
    /// screen is drawn, removes the rest (a sequence may set several).
    fn modes(&mut self, csi: &Csi<'_>, out: &mut Vec<u8>, dec: bool) {
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut dropped = false;
        for param in csi.params.split(|&c| c == b';') {
            let mode = std::str::from_utf8(param)
                .ok()
                .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|p| p.parse::<u32>().ok());
            let allowed = match (dec, mode) {
                (false, Some(4)) => {
                    self.touched.insert = true;
                    true
                }
                (true, Some(1)) => {
                    self.touched.cursor_keys = true;
                    true
                }
                (true, Some(5)) => {
                    self.touched.reverse_video = true;
                    true
                }
                (true, Some(6)) => {
                    self.touched.origin = true;
                    true
                }
                (true, Some(7)) => {
                    self.touched.autowrap = true;
                    true
                }
                (true, Some(12)) => true,
                (true, Some(25)) => {
                    self.touched.cursor_hidden = true;
                    true
                }
                (true, Some(47 | 1047 | 1048 | 1049)) => {
                    self.touched.alternate_screen = true;
                    true
                }
                (true, Some(2026)) => {
                    self.touched.synchronized = true;
                    true
                }
                // Mouse and focus reports, bracketed paste, keyboard modes, column mode, …
                _ => false,
            };
            if allowed {
                kept.push(param);
            } else {
                dropped = true;
            }
        }
        if dropped {
            self.removed += 1;
        }
        if kept.is_empty() {
            return;
        }
        out.extend_from_slice(b"\x1b[");
        if dec {
            out.push(b'?');
        }
        out.extend_from_slice(&kept.join(&b';'));
        out.push(csi.final_byte);
    }

    fn string(&mut self, b: u8, esc: bool, out: &mut Vec<u8>) {
        match b {
            // ST as `ESC \`, BEL (OSC's terminator) or raw ST; CAN and SUB cancel.
            b'\\' if esc => self.state = State::Ground,
            0x07 | 0x9c | CAN | SUB => self.state = State::Ground,
            ESC => self.state = State::Str { esc: true },
            // ESC followed by anything else ends the string and starts a new sequence. The string is
            // removed either way, so its end only decides what is read as text after it.
            _ if esc => {
                self.start_escape();
                self.escape(b, out);
            }
            _ => self.state = State::Str { esc: false },
        }
    }
}

/// A CSI sequence taken apart: `ESC [ prefix? params intermediates final`.
#[derive(Debug)]
struct Csi<'a> {
    /// A private marker `<`, `=`, `>` or `?` before the parameters.
    prefix: Option<u8>,
    /// Digits, `;` and `:`.
    params: &'a [u8],
    intermediates: &'a [u8],
    final_byte: u8,
}

impl<'a> Csi<'a> {
    /// `None` when it is not well formed (a private marker after the first parameter byte, parameters
    /// after intermediates).
    fn parse(seq: &'a [u8]) -> Option<Self> {
        let (&final_byte, body) = seq.get(2..)?.split_last()?;
        let (prefix, rest) = match body.first() {
            Some(&p @ (b'<' | b'=' | b'>' | b'?')) => (Some(p), body.get(1..).unwrap_or_default()),
            _ => (None, body),
        };
        let split = rest
            .iter()
            .position(|c| (0x20..=0x2f).contains(c))
            .unwrap_or(rest.len());
        let (params, intermediates) = rest.split_at(split);
        let params_ok = params
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b';' | b':'));
        let intermediates_ok = intermediates.iter().all(|c| (0x20..=0x2f).contains(c));
        (params_ok && intermediates_ok).then_some(Csi {
            prefix,
            params,
            intermediates,
            final_byte,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(input: &[u8]) -> Vec<u8> {
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        f.push(input, &mut out);
        out
    }

    fn filter_all(input: &[u8]) -> (Vec<u8>, u64) {
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        f.push(input, &mut out);
        f.finish(&mut out);
        (out, f.removed())
    }

    /// The same input fed in pieces split at every position gives the same output.
    fn split_everywhere(input: &[u8]) {
        let whole = filter_all(input);
        for at in 0..=input.len() {
            let mut f = TerminalFilter::new();
            let mut out = Vec::new();
            f.push(&input[..at], &mut out);
            f.push(&input[at..], &mut out);
            f.finish(&mut out);
            assert_eq!((out, f.removed()), whole, "split at {at} of {input:?}");
        }
        // And byte by byte.
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        for b in input {
            f.push(std::slice::from_ref(b), &mut out);
        }
        f.finish(&mut out);
        assert_eq!((out, f.removed()), whole, "byte by byte: {input:?}");
    }

    #[test]
    fn text_colours_and_cursor_motion_pass_unchanged() {
        let screen = "plain text, déjà vu, 漢字, 🙂\r\n\t\x1b[1;31mred\x1b[0m \x1b[38;2;10;20;30mrgb\x1b[38:5:208m\
                      \x1b[H\x1b[2J\x1b[10;20H\x1b[K\x1b[3A\x1b[?25l\x1b[?1049h\x1b[?1049l\x1b[?25h\x1b(0qq\x1b(B\
                      \x1b7\x1b8\x1b[5;20r\x1b[2 q\x1bM\x08\x07";
        assert_eq!(filter(screen.as_bytes()), screen.as_bytes());
        split_everywhere(screen.as_bytes());
    }

    #[test]
    fn clipboard_titles_links_and_other_strings_are_removed() {
        let cases: &[&[u8]] = &[
            b"a\x1b]52;c;ZXZpbA==\x07b",
            b"a\x1b]52;c;ZXZpbA==\x1b\\b",
            b"a\x1b]0;pwned title\x07b",
            b"a\x1b]2;title\x1b\\b",
            b"a\x1b]1;icon\x07b",
            b"a\x1b]8;;https://evil.example/\x1b\\b\x1b]8;;\x1b\\",
            b"a\x1b]10;?\x07b",
            b"a\x1b]4;1;rgb:ff/00/00\x07b",
            b"a\x1b]1337;File=name=x:AAAA\x07b",
            b"a\x1bP$qm\x1b\\b",
            b"a\x1bP+q544e\x1b\\b",
            b"a\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\b",
            b"a\x1b_Gf=100;AAAA\x1b\\b",
            b"a\x1b^privacy\x1b\\b",
            b"a\x1bXsos\x1b\\b",
        ];
        for case in cases {
            let out = filter(case);
            assert!(out.starts_with(b"a"), "{case:?} -> {out:?}");
            assert!(!out.contains(&ESC), "{case:?} -> {out:?}");
            split_everywhere(case);
        }
        assert_eq!(filter(b"a\x1b]52;c;ZXZpbA==\x07b"), b"ab");
        assert_eq!(filter(b"a\x1b]0;t\x1b\\b"), b"ab");
    }

    #[test]
    fn queries_that_make_the_terminal_answer_are_removed() {
        for q in [
            &b"\x1b[6n"[..],
            b"\x1b[5n",
            b"\x1b[?6n",
            b"\x1b[c",
            b"\x1b[0c",
            b"\x1b[>c",
            b"\x1b[=c",
            b"\x1b[14t",
            b"\x1b[18t",
            b"\x1b[21t",
            b"\x1b[8;100;100t",
            b"\x1b[?2004$p",
            b"\x1b[2004$p",
            b"\x1b[>q",
            b"\x1b[x",
            b"\x1b[?u",
            b"\x1b[>1u",
            b"\x1b[>4;2m",
            b"\x1b[5i",
            b"\x1bZ",
            b"\x05",
            b"\x1b[?1;2;3S",
            b"\x1b[1;2;3;4;5T",
        ] {
            let input = [b"a", q, b"b"].concat();
            assert_eq!(filter(&input), b"ab", "{q:?}");
            let (_, removed) = filter_all(&input);
            assert_eq!(removed, 1, "{q:?}");
            split_everywhere(&input);
        }
    }

    #[test]
    fn input_reporting_modes_are_removed_and_screen_modes_kept() {
        assert_eq!(filter(b"\x1b[?1000h\x1b[?1006h\x1b[?1004h\x1b[?2004h"), b"");
        assert_eq!(filter(b"\x1b[?1049;1000;25h"), b"\x1b[?1049;25h");
        assert_eq!(filter(b"\x1b[?1h\x1b="), b"\x1b[?1h\x1b=");
        assert_eq!(filter(b"\x1b[4h\x1b[20h\x1b[2h"), b"\x1b[4h");
        assert_eq!(filter(b"\x1b[?3h\x1b[?;h\x1b[?99999999h"), b"");
        split_everywhere(b"\x1b[?1049;1000;25hx\x1b[4;20l");
    }

    #[test]
    fn c1_controls_are_removed_raw_or_utf8_encoded_with_their_sequences() {
        // UTF-8 encoded CSI 6n, OSC 52 … ST, DCS … ST.
        assert_eq!(filter("a\u{9b}6nb".as_bytes()), b"ab");
        assert_eq!(filter("a\u{9d}52;c;eA==\u{9c}b".as_bytes()), b"ab");
        assert_eq!(filter("a\u{90}$qm\u{9c}b".as_bytes()), b"ab");
        assert_eq!(filter("a\u{85}b".as_bytes()), b"ab");
        // Raw C1 bytes are not UTF-8: shown as U+FFFD, as a UTF-8 terminal shows them, never acted on.
        assert_eq!(filter(b"a\x9b6nb"), "a\u{FFFD}6nb".as_bytes());
        assert_eq!(filter(b"a\x9d0;t\x07b"), "a\u{FFFD}0;t\x07b".as_bytes());
        split_everywhere("x\u{9b}6n\u{9d}52;c;eA==\u{9c}y".as_bytes());
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let r = "\u{FFFD}".as_bytes();
        assert_eq!(filter(b"a\xffb"), [&b"a"[..], r, b"b"].concat());
        // An overlong ESC (C0 9B, E0 80 9B) is never an ESC or a CSI.
        let out = filter(b"\xc0\x9b6n\xe0\x80\x9b6n");
        assert!(!out.contains(&ESC) && !out.windows(2).any(|w| w == [0xc2, 0x9b]));
        // A lead byte followed by ESC: the ESC still starts a sequence.
        assert_eq!(filter(b"\xe2\x1b[1mx"), [r, b"\x1b[1mx"].concat());
        // Surrogates and code points above U+10FFFF are not UTF-8.
        assert!(
            filter(b"\xed\xa0\x80\xf4\x90\x80\x80")
                .chunks(3)
                .all(|c| c == r)
        );
        split_everywhere(&["é\u{20ac}\u{1F642}".as_bytes(), b"\xff"].concat());
    }

    #[test]
    fn sequences_split_across_pushes_are_whole_or_gone() {
        for input in [
            &b"ab\x1b]52;c;ZXZpbA==\x07cd\x1b[31mred\x1b[0m"[..],
            b"\x1b[6n\x1b[1;1H\x1bP+q544e\x1b\\\x1b]0;x\x1b\\ok",
            b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\",
        ] {
            split_everywhere(input);
        }
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        f.push(b"before\x1b]5", &mut out);
        f.push(b"2;c;ZXZp", &mut out);
        f.push(b"bA==\x1b", &mut out);
        f.push(b"\\after\x1b[", &mut out);
        f.push(b"6", &mut out);
        f.push(b"nend", &mut out);
        assert_eq!(out, b"beforeafterend");
    }

    #[test]
    fn an_escape_inside_a_string_ends_it_and_what_follows_is_filtered() {
        // ESC [ 6 n inside an OSC: the OSC ends, the query is removed too.
        assert_eq!(filter(b"\x1b]0;t\x1b[6nx"), b"x");
        // CAN cancels a sequence; the text after it stays.
        assert_eq!(filter(b"\x1b[6\x18n"), b"n");
        // C0 controls inside a CSI act at once, as in a terminal.
        assert_eq!(filter(b"\x1b[1\n2A"), b"\n\x1b[12A");
    }

    #[test]
    fn overlong_sequences_are_removed_not_buffered() {
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 100_000));
        long.extend_from_slice(b"mtext");
        assert_eq!(filter(&long), b"text");
        let mut f = TerminalFilter::new();
        let mut out = Vec::new();
        f.push(&long[..50_000], &mut out);
        assert!(f.seq.len() <= MAX_SEQUENCE);
    }

    #[test]
    fn finish_turns_back_what_the_output_changed() {
        let (out, removed) = filter_all(b"\x1b[?1049h\x1b[?25l\x1b[31mx\x1b(0");
        assert_eq!(removed, 0);
        let tail = &out[b"\x1b[?1049h\x1b[?25l\x1b[31mx\x1b(0".len()..];
        assert_eq!(tail, b"\x1b[?1049l\x1b[0m\x0f\x1b(B\x1b[?25h");
        // Nothing changed, nothing appended; an unfinished sequence is dropped and counted.
        assert_eq!(filter_all(b"plain"), (b"plain".to_vec(), 0));
        assert_eq!(filter_all(b"x\x1b]52;c;AA"), (b"x".to_vec(), 1));
        assert_eq!(filter_all(b"x\xe2\x82"), (b"x".to_vec(), 1));
    }

    /// What the filter writes passes it again unchanged: it never emits anything it would remove. Run
    /// over pseudo-random bytes biased toward control characters (a fuzz target runs the same checks
    /// at length).
    #[test]
    fn output_is_a_fixed_point_and_hostile_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet =
            b"\x1b\x1b\x1b[]P\\?;:0123456789hlmnqctu$ >\x07\x18\x9b\x9c\x9d\xc2\xe2\x80\xff\x0ea";
        for _ in 0..2000 {
            let len = usize::try_from(next() % 64).unwrap();
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[usize::try_from((r >> 8) % alphabet.len() as u64).unwrap()]
                    }
                })
                .collect();
            let once = filter(&input);
            assert_eq!(filter(&once), once, "{input:?}");
            assert!(std::str::from_utf8(&once).is_ok(), "{input:?} -> {once:?}");
            let at = usize::try_from(next()).unwrap() % (input.len() + 1);
            let mut f = TerminalFilter::new();
            let mut out = Vec::new();
            f.push(&input[..at], &mut out);
            f.push(&input[at..], &mut out);
            assert_eq!(out, once, "split at {at}: {input:?}");
        }
    }
}
