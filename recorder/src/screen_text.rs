//! What a full-screen program (an editor, a pager, `top`, a device's menu) showed on the alternate screen,
//! as lines of text for the search index. The line tracker ([`crate::transcript`]) emits what passes line
//! by line and leaves the alternate screen out, because a full-screen program draws by moving the cursor
//! about, not in lines; this reads the screen itself, from the virtual terminal the playback index runs
//! anyway (`avt`, the player's own), so a file a vendor edited in `vi` is found by what it showed.
//!
//! Entry point: [`ScreenText`], an `avt` observer the playback index feeds every output through.
//!
//! When the screen is read (only while the alternate screen is shown):
//! - when it was shown long enough to be read: before output that comes [`SETTLE`] or more after the
//!   output before it (the caller's [`ScreenText::settled`]);
//! - just before it goes: the program leaves the alternate screen, clears it whole, or the terminal is
//!   reset or resized, whatever the pause before (an edit saved and quit at typing speed is read);
//! - at the end of the recording.
//!
//! Only rows written since the last reading are read, and a row's text is given once per visit to the
//! alternate screen: a redraw of the same text is not a new line. What was on the screen for less than
//! [`SETTLE`] and then drawn over or scrolled away without a clear is not read (a page skimmed past in a
//! pager). Bounded: reading costs at most [`CELLS_PER_BYTE`] cells per byte of output, plus
//! `SCREENS_OF_BUDGET` screens held at the start and the last screen at the end (a program that clears the screen after every character gets fewer readings, not a slower indexer);
//! the rows remembered per visit are at most [`MAX_SEEN`] (then forgotten, so some text is given again).

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;

use avt::parser::{DecMode, EdScope, Function};
use avt::{Observation, Observer, Operation, ScreenKind, Terminal};

/// A screen unchanged for this long (seconds) was shown long enough to be read.
pub const SETTLE: f64 = 0.5;
/// Cells a reading may cost per byte of output (see the module documentation). It also bounds the text
/// read: at most twice as many characters as the output had bytes, plus a few screens (a row of 1,000 made by a REP of
/// 8 bytes, re-entered and re-read, must not grow the search index a hundredfold).
pub const CELLS_PER_BYTE: usize = 2;
/// Screens' worth of cells a reading may use at once (the budget's cap).
const SCREENS_OF_BUDGET: usize = 4;
/// Rows' texts remembered per visit to the alternate screen.
pub const MAX_SEEN: usize = 65_536;

/// Reads the alternate screen as lines of text; see the module documentation. Feed the terminal through it
/// (`feed_with(text, &mut screen_text)`, `resize_with`), call [`ScreenText::earn`] before each output and
/// [`ScreenText::settled`] when output comes after a pause, and take the lines with
/// [`ScreenText::take`].
#[derive(Debug)]
pub struct ScreenText {
    /// The alternate screen is shown (as of the last operation).
    alt: bool,
    /// Rows written on the alternate screen since the last reading.
    dirty: Vec<bool>,
    /// Hashes of the rows' texts given during this visit.
    seen: HashSet<u64>,
    hasher: RandomState,
    /// Cells a reading may still cost.
    budget: usize,
    /// Lines read, not yet taken.
    lines: Vec<String>,
    /// Cells read so far (what the budget bounds).
    #[cfg(test)]
    cells: usize,
}

impl ScreenText {
    pub fn new(terminal: &Terminal) -> ScreenText {
        let rows = terminal.size().1;
        let mut s = ScreenText {
            alt: terminal.active_screen_kind() == ScreenKind::Alternate,
            dirty: vec![false; rows],
            seen: HashSet::new(),
            hasher: RandomState::new(),
            budget: 0,
            lines: Vec::new(),
            #[cfg(test)]
            cells: 0,
        };
        s.budget = s.cap(terminal);
        s
    }

    fn cap(&self, terminal: &Terminal) -> usize {
        let (cols, rows) = terminal.size();
        cols.saturating_mul(rows).saturating_mul(SCREENS_OF_BUDGET)
    }

    /// `bytes` of output are about to be fed: they pay for readings.
    pub fn earn(&mut self, terminal: &Terminal, bytes: usize) {
        self.budget = self
            .budget
            .saturating_add(bytes.saturating_mul(CELLS_PER_BYTE))
            .min(self.cap(terminal));
    }

    /// Output comes after a pause of [`SETTLE`] or more: the screen as it stands was shown long enough
    /// to be read.
    pub fn settled(&mut self, terminal: &Terminal) {
        self.read(terminal, false);
    }

    /// The recording ended: what the alternate screen shows last is read whatever the budget.
    pub fn finish(&mut self, terminal: &Terminal) {
        self.read(terminal, true);
    }

    /// The lines read since the last call, in the order read.
    pub fn take(&mut self) -> std::vec::Drain<'_, String> {
        self.lines.drain(..)
    }

    /// Reads the rows written since the last reading, top to bottom, as far as the budget goes (all of
    /// them if `whatever_it_costs`); rows left unread stay to be read next time.
    fn read(&mut self, terminal: &Terminal, whatever_it_costs: bool) {
        if !self.alt || terminal.active_screen_kind() != ScreenKind::Alternate {
            return;
        }
        let screen = terminal.screen();
        let cols = terminal.size().0.max(1);
        for (row, line) in screen.visible_lines().enumerate() {
            if !self.dirty.get(row).copied().unwrap_or(false) {
                continue;
            }
            if !whatever_it_costs {
                if self.budget < cols {
                    return;
                }
                self.budget -= cols;
            }
            self.dirty[row] = false;
            #[cfg(test)]
            {
                self.cells += cols;
            }
            // What a cell holds is printable, but the line tracker's rule holds here too, whatever
            // the emulator lets through: no line holds a control character.
            let text: String = line
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if self.seen.len() >= MAX_SEEN {
                self.seen.clear();
            }
            if self.seen.insert(self.hasher.hash_one(text)) {
                self.lines.push(text.to_owned());
            }
        }
    }

    /// A new visit to the alternate screen: everything on it is new.
    fn entered(&mut self) {
        self.seen.clear();
        self.dirty.fill(true);
    }
}

/// Whether `operation` is about to take the alternate screen's contents away from `terminal`.
fn takes_the_screen_away(operation: &Operation, terminal: &Terminal) -> bool {
    match operation {
        Operation::Resize { .. } => true,
        Operation::Function(Function::Ris | Function::Ed(EdScope::All)) => true,
        // `ESC [ H ESC [ J`: how `clear` clears for TERM=screen or vt100; and its mirror image.
        Operation::Function(Function::Ed(EdScope::Below)) => {
            let c = terminal.cursor();
            (c.col, c.row) == (0, 0)
        }
        Operation::Function(Function::Ed(EdScope::Above)) => {
            let (cols, rows) = terminal.size();
            let c = terminal.cursor();
            c.row + 1 >= rows && c.col + 1 >= cols
        }
        Operation::Function(Function::Decrst(modes)) => modes.as_slice().iter().any(|m| {
            matches!(
                m,
                DecMode::AltScreenBuffer | DecMode::SaveCursorAltScreenBuffer
            )
        }),
        _ => false,
    }
}

impl Observer for ScreenText {
    type Output = ();

    fn before(&mut self, context: &mut Observation<'_>, operation: &Operation) {
        if self.alt && takes_the_screen_away(operation, context.terminal()) {
            self.read(context.terminal(), false);
        }
    }

    fn resized(&mut self, _cols: usize, rows: usize) {
        self.dirty.resize(rows, true);
    }

    fn dirty(&mut self, rows: Range<usize>) {
        if self.alt {
            let end = rows.end.min(self.dirty.len());
            if let Some(rows) = self.dirty.get_mut(rows.start.min(end)..end) {
                rows.fill(true);
            }
        }
    }

    fn after(&mut self, context: &mut Observation<'_>, operation: &Operation) {
        // Only these switch screens (avt's engine); asking after every printed character costs.
        if !matches!(
            operation,
            Operation::Function(Function::Decset(_) | Function::Decrst(_) | Function::Ris)
        ) {
            return;
        }
        let alt = context.terminal().active_screen_kind() == ScreenKind::Alternate;
        if alt != self.alt {
            self.alt = alt;
            if alt {
                self.entered();
            } else {
                self.seen.clear();
                self.dirty.fill(false);
            }
        }
    }

    fn end(&mut self, _context: &mut Observation<'_>) {}
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn run(cols: usize, rows: usize, steps: &[(&str, bool)]) -> Vec<String> {
        let mut terminal = Terminal::new(cols, rows).unwrap();
        let mut screen = ScreenText::new(&terminal);
        let mut out = Vec::new();
        for (text, after_a_pause) in steps {
            if *after_a_pause {
                screen.settled(&terminal);
            }
            screen.earn(&terminal, text.len());
            terminal.feed_with(*text, &mut screen);
            out.extend(screen.take());
        }
        screen.finish(&terminal);
        out.extend(screen.take());
        out
    }

    #[test]
    fn an_edit_saved_at_typing_speed_is_read_as_the_editor_leaves() {
        let lines = run(
            40,
            6,
            &[
                ("$ vi sshd_config\r\n\x1b[?1049h\x1b[H\x1b[2J", false),
                ("Port 22\r\n~\r\n~\r\n\x1b[6;1H\"sshd_config\" 1L", true),
                // Typed at the keyboard, a keystroke at a time, no pause: no half-typed word is read.
                ("\x1b[2;1HP", true),
                ("e", false),
                ("rmitRootLogin yes", false),
                ("\x1b[6;1H\x1b[K:wq", false),
                ("\x1b[?1049l$ ", false),
            ],
        );
        assert_eq!(
            lines,
            [
                "Port 22",
                "~",
                "\"sshd_config\" 1L",
                "PermitRootLogin yes",
                ":wq"
            ]
        );
    }

    #[test]
    fn a_redraw_of_the_same_text_is_not_a_new_line_but_a_new_visit_is() {
        let page = "\x1b[H\x1b[2Jload average: 0.10\r\nPID USER\r\n";
        let lines = run(
            40,
            4,
            &[
                ("\x1b[?1049h", false),
                (page, false),
                (page, true),
                ("\x1b[Hload average: 0.25", true),
                ("\x1b[?1049l", true),
                ("\x1b[?1049h", false),
                (page, false),
                ("\x1b[?1049l", false),
            ],
        );
        assert_eq!(
            lines,
            [
                "load average: 0.10",
                "PID USER",
                "load average: 0.25",
                "load average: 0.10",
                "PID USER",
            ]
        );
    }

    /// A pager's pages cleared the way `clear` does for TERM=screen (home, then erase below), shown less
    /// than the settling time each, are read before each clear.
    #[test]
    fn a_page_cleared_from_home_is_read_before_it_goes() {
        let lines = run(
            40,
            4,
            &[
                ("\x1b[?1049h\x1b[H\x1b[Jalarm_threshold = 5", false),
                ("\x1b[H\x1b[Jalarm_threshold = 6", false),
                ("\x1b[?1049l", false),
            ],
        );
        assert_eq!(lines, ["alarm_threshold = 5", "alarm_threshold = 6"]);
    }

    #[test]
    fn the_primary_screen_is_left_to_the_line_tracker() {
        let lines = run(
            40,
            4,
            &[
                ("$ ls\r\nfile\r\n", false),
                ("$ ", true),
                ("\x1b[2J", false),
            ],
        );
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn a_screen_still_shown_when_the_recording_ends_is_read() {
        let lines = run(20, 3, &[("\x1b[?1049h\x1b[Hmenu: 1) service", false)]);
        assert_eq!(lines, ["menu: 1) service"]);
    }

    #[test]
    fn a_resize_reads_the_screen_before_it_is_cut() {
        let mut terminal = Terminal::new(20, 4).unwrap();
        let mut screen = ScreenText::new(&terminal);
        terminal.feed_with("\x1b[?1049h\x1b[4;1Hbottom row", &mut screen);
        terminal.resize_with(20, 2, &mut screen);
        assert_eq!(screen.take().collect::<Vec<_>>(), ["bottom row"]);
    }

    /// A program that clears the screen after every character cannot make the reading cost more than
    /// the output pays for: most clears are not read, and the text is still read at the end.
    #[test]
    fn clearing_after_every_character_is_read_within_the_budget() {
        let (cols, rows) = (300, 100);
        let mut terminal = Terminal::new(cols, rows).unwrap();
        let mut screen = ScreenText::new(&terminal);
        terminal.feed_with("\x1b[?1049h", &mut screen);
        let mut lines = Vec::new();
        let mut bytes = 0;
        for i in 0..20_000u32 {
            let text = format!("{}\x1b[2J", char::from(b'a' + (i % 26) as u8));
            bytes += text.len();
            screen.earn(&terminal, text.len());
            terminal.feed_with(text.as_str(), &mut screen);
            lines.extend(screen.take());
        }
        // Every clear read whole would be 20,000 screens of 30,000 cells.
        assert!(
            screen.cells <= SCREENS_OF_BUDGET * cols * rows + bytes * CELLS_PER_BYTE,
            "{} cells read",
            screen.cells
        );
        assert!(lines.contains(&"a".to_owned()), "{lines:?}");
    }
}
