//! What a person saw on a terminal, as lines of text: the search index's input and the label of the
//! marker at each command line a vendor entered.
//!
//! Entry points: [`LineTracker`] (terminal output in, completed lines out, the line under the cursor on
//! demand) and [`words`] (the one normalisation of text for the full-text index, used for what is stored
//! and for what is asked, so SQLite and PostgreSQL see the same words).
//!
//! The tracker is a small line discipline, not a terminal emulator: it keeps the one line the cursor is
//! on, applies what edits a line (carriage return, backspace, tab, cursor left/right/column, erase and
//! delete in the line), and drops every other sequence (colours, modes, titles and every other string
//! sequence, queries). A line ends at a line feed, or when the cursor leaves it (cursor positioning,
//! clearing the screen); what a full-screen program draws on the alternate screen is not a line anyone
//! typed or read line by line, so it is tracked but never emitted. Bytes that are not UTF-8 become U+FFFD.
//!
//! Pure (no I/O), bounded (a line holds at most [`MAX_LINE`] characters; a longer one is cut into pieces;
//! string sequences are skipped without being held), and independent of how the output is cut into
//! chunks: feeding it byte by byte or all at once gives the same lines. No line it emits holds a control
//! character.

/// Characters kept per line; a longer line is emitted in pieces of this size.
pub const MAX_LINE: usize = 1024;

/// Parameters kept per control sequence (more are ignored).
const MAX_PARAMS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// ESC and intermediate bytes (`ESC ( B`), until the final byte.
    EscIntermediate,
    /// A control sequence (`ESC [` … final).
    Csi,
    /// A string sequence (OSC, DCS, SOS, PM, APC), until BEL or ST.
    Str,
    /// ESC inside a string sequence: `\` ends it.
    StrEsc,
}

/// Turns terminal output into the lines a person saw. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct LineTracker {
    state: State,
    /// A UTF-8 sequence begun in an earlier chunk.
    utf8: [u8; 4],
    utf8_len: usize,
    utf8_need: usize,
    line: Vec<char>,
    col: usize,
    alt: bool,
    params: Vec<u32>,
    /// A parameter digit was seen for the current parameter.
    param_open: bool,
    private: bool,
    intermediate: bool,
    /// The column saved with the cursor (`ESC 7`, `CSI s`), where `ESC 8`/`CSI u` puts it back.
    saved_col: usize,
}

impl LineTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds output; every line it completes is appended to `out` (possibly empty, never holding a
    /// control character).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            self.byte(b, out);
        }
    }

    /// The line under the cursor as the screen shows it (trailing blanks dropped), unless a full-screen
    /// program has the alternate screen or the line is blank.
    pub fn current(&self) -> Option<String> {
        if self.alt {
            return None;
        }
        let text = self.text();
        (!text.is_empty()).then_some(text)
    }

    /// Whether a full-screen program has the alternate screen.
    pub fn in_alternate_screen(&self) -> bool {
        self.alt
    }

    /// The output ended: the line under the cursor, if any, is complete too.
    pub fn finish(mut self, out: &mut Vec<String>) {
        if self.utf8_len > 0 {
            self.utf8_len = 0;
            self.print('\u{FFFD}', out);
        }
        if !self.alt && !self.text().is_empty() {
            out.push(self.text());
        }
    }

    fn text(&self) -> String {
        let s: String = self.line.iter().collect();
        s.trim_end().to_owned()
    }

    /// Ends the line under the cursor (emitted unless on the alternate screen).
    fn complete(&mut self, out: &mut Vec<String>) {
        if !self.alt {
            out.push(self.text());
        }
        self.line.clear();
        self.col = 0;
    }

    /// The cursor left the line for another one at column `col` (cursor positioning, clearing): the
    /// line is complete if anything is on it.
    fn leave(&mut self, col: usize, out: &mut Vec<String>) {
        if !self.text().is_empty() {
            self.complete(out);
        } else {
            self.line.clear();
        }
        self.col = col.min(MAX_LINE - 1);
    }

    fn byte(&mut self, b: u8, out: &mut Vec<String>) {
        // A UTF-8 sequence in progress takes continuation bytes; anything else ends it as U+FFFD.
        if self.utf8_need > 0 {
            if b & 0xC0 == 0x80 {
                self.utf8[self.utf8_len] = b;
                self.utf8_len += 1;
                if self.utf8_len == self.utf8_need {
                    let c = std::str::from_utf8(&self.utf8[..self.utf8_len])
                        .ok()
                        .and_then(|s| s.chars().next())
                        .unwrap_or('\u{FFFD}');
                    self.utf8_len = 0;
                    self.utf8_need = 0;
                    self.char(c, out);
                }
                return;
            }
            self.utf8_len = 0;
            self.utf8_need = 0;
            self.char('\u{FFFD}', out);
        }
        if b >= 0x80 {
            let need = match b {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => 0,
            };
            if need == 0 {
                self.char('\u{FFFD}', out);
            } else {
                self.utf8[0] = b;
                self.utf8_len = 1;
                self.utf8_need = need;
            }
            return;
        }
        self.char(char::from(b), out);
    }

    fn char(&mut self, c: char, out: &mut Vec<String>) {
        match self.state {
            State::Str => match c {
                '\u{7}' | '\u{18}' | '\u{1a}' => self.state = State::Ground,
                '\u{1b}' => self.state = State::StrEsc,
                _ => {}
            },
            State::StrEsc => {
                if c == '\\' {
                    self.state = State::Ground;
                } else {
                    self.state = State::Esc;
                    self.char(c, out);
                }
            }
            _ if c == '\u{1b}' => self.state = State::Esc,
            _ if c == '\u{18}' || c == '\u{1a}' => self.state = State::Ground,
            // C0 controls act inside a control sequence too.
            _ if (c as u32) < 0x20 => self.control(c, out),
            State::Ground => {
                let code = c as u32;
                // DEL and C1 controls are not shown.
                if code != 0x7f && !(0x80..0xa0).contains(&code) {
                    self.print(c, out);
                }
            }
            State::Esc => self.escape(c, out),
            State::EscIntermediate => {
                if !('\u{20}'..='\u{2f}').contains(&c) {
                    self.state = State::Ground;
                }
            }
            State::Csi => self.csi(c, out),
        }
    }

    fn control(&mut self, c: char, out: &mut Vec<String>) {
        match c {
            '\n' | '\u{b}' | '\u{c}' => self.complete(out),
            '\r' => self.col = 0,
            '\u{8}' => self.col = self.col.saturating_sub(1),
            '\t' => self.col = ((self.col / 8 + 1) * 8).min(MAX_LINE - 1),
            _ => {}
        }
    }

    fn escape(&mut self, c: char, out: &mut Vec<String>) {
        self.state = State::Ground;
        match c {
            '[' => {
                self.state = State::Csi;
                self.params.clear();
                self.param_open = false;
                self.private = false;
                self.intermediate = false;
            }
            ']' | 'P' | 'X' | '^' | '_' => self.state = State::Str,
            '\u{20}'..='\u{2f}' => self.state = State::EscIntermediate,
            // RIS: the terminal is reset.
            'c' => {
                self.leave(0, out);
                self.alt = false;
            }
            // NEL
            'E' => self.complete(out),
            // IND and RI: the cursor goes down or up a line, in its column. A line left that way ends as
            // any other (else a line the screen showed was never indexed, and the text before and after
            // such a move, shown on two rows, was indexed as one line nobody saw).
            'D' | 'M' => self.leave(self.col, out),
            // DECSC and DECRC: the cursor saved, and put back (most likely on another line).
            '7' => self.saved_col = self.col,
            '8' => self.leave(self.saved_col, out),
            _ => {}
        }
    }

    fn param(&self, i: usize, default: u32) -> u32 {
        match self.params.get(i) {
            Some(&0) | None => default,
            Some(&v) => v,
        }
    }

    fn csi(&mut self, c: char, out: &mut Vec<String>) {
        match c {
            '0'..='9' => {
                if !self.param_open {
                    self.param_open = true;
                    if self.params.len() < MAX_PARAMS {
                        self.params.push(0);
                    }
                }
                if let Some(last) = self.params.last_mut() {
                    *last = (*last * 10 + (c as u32 - '0' as u32)).min(9999);
                }
            }
            ';' | ':' => {
                if !self.param_open && self.params.len() < MAX_PARAMS {
                    self.params.push(0);
                }
                self.param_open = false;
            }
            '<' | '=' | '>' | '?' => self.private = true,
            '\u{20}'..='\u{2f}' => self.intermediate = true,
            '\u{40}'..='\u{7e}' => {
                self.state = State::Ground;
                if !self.intermediate {
                    self.execute(c, out);
                }
            }
            // Not a control sequence after all.
            _ => self.state = State::Ground,
        }
    }

    fn execute(&mut self, c: char, out: &mut Vec<String>) {
        if self.private {
            if c == 'h' || c == 'l' {
                let alt = self.params.iter().any(|p| matches!(p, 47 | 1047 | 1049));
                if alt && c == 'h' && !self.alt {
                    self.leave(0, out);
                    self.alt = true;
                } else if alt && c == 'l' && self.alt {
                    self.alt = false;
                    self.line.clear();
                    self.col = 0;
                }
            }
            return;
        }
        let n = self.param(0, 1) as usize;
        match c {
            'K' => match self.params.first().copied().unwrap_or(0) {
                0 => self.line.truncate(self.col),
                1 => {
                    let end = (self.col + 1).min(self.line.len());
                    for ch in &mut self.line[..end] {
                        *ch = ' ';
                    }
                }
                _ => self.line.clear(),
            },
            'C' | 'a' => self.col = (self.col + n).min(MAX_LINE - 1),
            'D' => self.col = self.col.saturating_sub(n),
            'G' | '`' => self.col = (n - 1).min(MAX_LINE - 1),
            'P' => {
                let end = (self.col + n).min(self.line.len());
                if self.col < end {
                    self.line.drain(self.col..end);
                }
            }
            '@' => {
                let room = n.min(MAX_LINE - self.line.len());
                if self.col < self.line.len() {
                    self.line
                        .splice(self.col..self.col, std::iter::repeat_n(' ', room));
                    self.line.truncate(MAX_LINE);
                }
            }
            'X' => {
                let end = (self.col + n).min(self.line.len());
                if self.col < end {
                    for ch in &mut self.line[self.col..end] {
                        *ch = ' ';
                    }
                }
            }
            // The cursor goes to another line.
            'H' | 'f' => {
                let col = self.param(1, 1) as usize - 1;
                self.leave(col, out);
            }
            's' => self.saved_col = self.col,
            'u' => self.leave(self.saved_col, out),
            // Lines inserted or deleted at the cursor's: what was on its line moves away.
            'L' | 'M' => self.leave(self.col, out),
            'A' | 'B' | 'e' | 'd' | 'E' | 'F' | 'J' | 'S' | 'T' | 'r' => {
                let col = if matches!(c, 'E' | 'F' | 'r') {
                    0
                } else {
                    self.col
                };
                self.leave(col, out);
            }
            _ => {}
        }
    }

    fn print(&mut self, c: char, out: &mut Vec<String>) {
        if self.col >= MAX_LINE {
            self.complete(out);
        }
        if self.col < self.line.len() {
            self.line[self.col] = c;
        } else {
            self.line.resize(self.col, ' ');
            self.line.push(c);
        }
        self.col += 1;
        if self.col >= MAX_LINE {
            // A line as long as the cap is emitted at once, so no line ever holds more.
            self.complete(out);
        }
    }
}

/// The words of `text` as the full-text index stores and looks them up: lower case, runs of letters and
/// digits, separated by single spaces. Punctuation, symbols and controls separate words (`rm -rf
/// /tmp/x` is `rm rf tmp x`), so a search for `rm -rf` finds the phrase `rm rf` on SQLite (FTS5) and
/// PostgreSQL (tsvector) alike.
pub fn words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if !in_word && !out.is_empty() {
                out.push(' ');
            }
            in_word = true;
            // A lower case form may bring a combining mark (`İ` is `i` + U+0307): marks separate
            // words in FTS5 too, so they are left out.
            out.extend(c.to_lowercase().filter(|l| l.is_alphanumeric()));
        } else {
            in_word = false;
        }
    }
    out
}

/// Whether `line` holds the words of `query` in a row (the phrase the index matched), as [`words`]
/// splits both.
pub fn line_matches(line: &str, query: &[&str]) -> bool {
    if query.is_empty() {
        return false;
    }
    let line = words(line);
    let line: Vec<&str> = line.split(' ').collect();
    line.windows(query.len()).any(|w| w == query)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn lines(output: &[u8]) -> (Vec<String>, Option<String>) {
        let mut t = LineTracker::new();
        let mut out = Vec::new();
        t.push(output, &mut out);
        let current = t.current();
        t.finish(&mut out);
        (out, current)
    }

    #[test]
    fn output_becomes_the_lines_a_person_saw() {
        let (out, _) = lines(
            b"\x1b]0;title\x07\x1b[1;32mvendor@mri-01\x1b[0m:~$ ls -l\r\ntotal 0\r\n\x1b[31merr\x1b[m\r\n",
        );
        assert_eq!(out, ["vendor@mri-01:~$ ls -l", "total 0", "err"]);
    }

    #[test]
    fn line_editing_is_applied() {
        // readline: typo, backspace + erase, retype; a carriage return overwrites.
        let (out, current) = lines(b"$ sl\x08\x08\x1b[Kls\r\nabcdef\rXY\r\n$ rm -rf /tmp/x");
        assert_eq!(out[..2], ["$ ls", "XYcdef"]);
        assert_eq!(current.as_deref(), Some("$ rm -rf /tmp/x"));
        let (out, _) = lines(b"abc\x1b[2D\x1b[P\r\nab\x1b[1G\x1b[@X\r\n");
        assert_eq!(out, ["ac", "Xab"]);
    }

    /// A line the cursor leaves by index, reverse index, a restored position or a line deleted is a
    /// line of its own: what the screen showed is found, and text shown on two rows is not indexed as
    /// one line nobody saw.
    #[test]
    fn a_line_left_by_any_cursor_move_ends_there() {
        let (out, _) = lines(b"SECRET-DUMP\x1bD\r\x1b[K\n");
        assert_eq!(out, ["SECRET-DUMP", ""]);
        let (out, current) = lines(b"         /data\x1bD\rrm -rf");
        assert_eq!(out, ["         /data", "rm -rf"]);
        assert_eq!(current.as_deref(), Some("rm -rf"));
        let (out, _) = lines(b"top\x1b7\x1bMabove\x1b8X\r\n");
        assert_eq!(out, ["top", "   above", "   X"]);
        let (out, _) = lines(b"gone\x1b[M\r\nnext\r\n");
        assert_eq!(out, ["gone", "", "next"]);
    }

    #[test]
    fn full_screen_programs_are_not_lines() {
        let (out, current) = lines(b"$ vi x\r\n\x1b[?1049h\x1b[H~\r\n~ secret-ish\x1b[?1049l$ ");
        assert_eq!(out, ["$ vi x", "$"]);
        assert_eq!(current.as_deref(), Some("$"));
        let mut t = LineTracker::new();
        t.push(b"\x1b[?1049hx", &mut Vec::new());
        assert_eq!(t.current(), None);
        assert!(t.in_alternate_screen());
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let output =
            "é\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b[38;5;196mz\x1b[0m\r\nnext\u{1F600}\r\n"
                .as_bytes();
        let (whole, _) = lines(output);
        for cut in 0..output.len() {
            let mut t = LineTracker::new();
            let mut out = Vec::new();
            t.push(&output[..cut], &mut out);
            t.push(&output[cut..], &mut out);
            t.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
        assert_eq!(whole, ["élink z", "next\u{1F600}"]);
    }

    #[test]
    fn hostile_bytes_give_bounded_clean_lines() {
        let mut noise = vec![0xffu8, 0xc3, b'\n', 0x9b, b'2', b'J'];
        noise.extend(std::iter::repeat_n(b'a', 3 * MAX_LINE));
        noise.extend(b"\x1b[99999999999C\x1b[;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;Hb");
        let (out, _) = lines(&noise);
        assert!(out.iter().all(|l| l.chars().count() <= MAX_LINE));
        assert!(out.iter().all(|l| !l.chars().any(char::is_control)));
        assert_eq!(out[0], "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn words_are_one_normalisation_for_both_databases() {
        assert_eq!(words("rm -rf /tmp/X_y"), "rm rf tmp x y");
        assert_eq!(words("  Überprüfung: OK! 3.14 "), "überprüfung ok 3 14");
        assert_eq!(words("--"), "");
        assert!(line_matches("$ sudo rm -rf /var/log", &["rm", "rf"]));
        assert!(!line_matches("$ rm x; ls -rf", &["rm", "rf"]));
    }
}
