//! The virtual terminal the playback index runs (`avt`, the player's own), with its work bounded by what
//! the recording paid for. Output comes from a device a vendor controls, and some of it costs the
//! emulator far more than its size: at 1000 x 500 (the largest screen a recording holds) `ESC # 8` fills
//! every cell (3 bytes, ~0.75 ms), `x ESC [ 2 J` clears them (5 bytes, ~0.2 ms), `ESC c` rebuilds the
//! terminal, a full-screen `ESC [ 500 M` reallocates every row. Repeated, a 1 GB recording would hold the
//! indexer (one recording at a time, per node) for days. So every such operation is charged its
//! estimated cost against a budget earned by the recording itself, [`EARN_PER_BYTE`] per byte of output
//! and [`EARN_PER_SECOND`] per second of its time, held up to [`BUDGET_CAP`]; an operation the budget
//! cannot pay is not carried out (its final character is replaced by CAN, which cancels a sequence, so
//! the terminal's parser stays where it would have been) and a resize waits for the budget (only the
//! latest size is kept). A resize is priced for the browser player's avt too, which narrows a screen in
//! time quadratic in its width (third_party/avt's patch 1 is this emulator's only): what a player is
//! given of a costly recording is what this emulator made of it ([`crate::playback::bounded_events`]),
//! so its work is bounded by the same budget. The page also redraws its whole terminal at every resize
//! (up to ~0.75 s at 1000 x 500), paid from a budget of its own earned at a tenth of the recording's
//! time ([`REDRAW_PER_SECOND`], held up to [`REDRAW_CAP`]); and a pause earns no more than
//! [`EARNING_PAUSE`], since a page may play every pause that short. A switch to the alternate screen is always made, paid as far as the budget
//! goes: refusing it would leave a full-screen program's text on the primary screen, which the line
//! tracker leaves to the screen reader, so out of the search; leaving it is priced instead (the next
//! switch allocates a new screen), and a leave the budget cannot pay is refused. Left unpriced (each
//! within a few times the rate earned, ~0.5-1 us a byte at the largest screen, measured): scrolling at
//! a margin (line feed, reverse index) and REP after its bound. Programs a person runs (an editor, a pager, `top`, tmux, a `clear` loop) never
//! come near the bound: they print far more than they clear, and a screen cleared ten times a second
//! costs a few milliseconds of the 20 that each second earns. Under abuse the emulated screen (the
//! player's seek points, the text read from full-screen programs) may keep cells the recording cleared;
//! the recording itself, its digest and what the player plays are untouched.
//!
//! Entry point: [`Emulator`]; [`Emulator::output`] and [`Emulator::resize`] are what the index pass
//! feeds it, and the alternate screen's text ([`crate::screen_text`]) is read on the way
//! ([`Emulator::settled`], [`Emulator::finish`], [`Emulator::take_lines`]).

use avt::parser::{DecMode, DecModes, EdScope, Function, Parser};
use avt::{ScreenKind, Terminal};

use crate::rep_bound::RepBound;
use crate::screen_text::ScreenText;

/// Budget (estimated nanoseconds of the emulator's work) earned per byte of output.
pub const EARN_PER_BYTE: u64 = 300;
/// Budget earned per second of the recording's time (its timestamps are the bastion's clock).
pub const EARN_PER_SECOND: u64 = 20_000_000;
/// Most budget held: what a burst of costly operations may spend at once.
pub const BUDGET_CAP: u64 = 100_000_000;
/// The longest pause that earns (seconds): the session page may shorten every pause to a second (its
/// shortest idle time limit), so a pause earns no more than it lasts when played so. (An idle session
/// still holds what it had earned, up to the caps.)
pub const EARNING_PAUSE: f64 = 1.0;

/// A browser player's redraw of its terminal after a resize, estimated per cell of the new size, in
/// thousandths of a nanosecond ([`cells_cost`]): 1.5 us (its canvas is rebuilt: 0.05-0.7 s at
/// 1000 x 500 in Chromium, by the page's size: 0.05-1.3 s measured, so a large page's redraws may
/// take up to about twice what is priced).
const REDRAW_PER_CELL: u64 = 1_500_000;
/// Redraw budget earned per second of the recording's time: a tenth of the page's time at most.
pub const REDRAW_PER_SECOND: u64 = 100_000_000;
/// Most redraw budget held: one redraw of the largest screen (750 ms), or a person dragging a 200 x 50
/// window's edge for two seconds.
pub const REDRAW_CAP: u64 = 1_000_000_000;

/// Estimated cost of touching `cells` cells at `milli_ns` thousandths of a nanosecond each (measured
/// with avt 0.19 on the 2-vCPU machine bench/README.md describes, rounded up).
fn cells_cost(cells: usize, milli_ns: u64) -> u64 {
    (cells as u64).saturating_mul(milli_ns) / 1000
}

/// An operation whose cost grows with the screen, as [`price`] sees it before the terminal runs it; the
/// one list of what is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priced {
    /// Erase below the cursor, above it, or all of the screen.
    EraseBelow,
    EraseAbove,
    EraseAll,
    /// Insert lines or scroll down `n` lines.
    InsertLines(u16),
    /// Delete lines or scroll up `n` lines: new rows allocated and old ones freed.
    DeleteLines(u16),
    /// Fill every cell (`ESC # 8`).
    Fill,
    /// Reset the terminal (`ESC c`).
    Reset,
    /// Switch to the alternate screen (`ESC [ ? 1049 h`, `47`, `1047`): always made from the primary
    /// screen (see [`Emulator::output`]); with the alternate one shown, priced like the rest.
    AlternateScreen,
    /// Leave it (`ESC [ ? 1049 l`, ...): cheap itself, but the next switch allocates a new alternate
    /// screen, so a loop of the two is paid here, where refusing costs the search nothing (the screen
    /// shown stays the alternate one, which the screen reader reads).
    LeaveAlternate,
}

/// Whether `f` is priced, and how; `None` for what costs at most a row of cells.
fn price(f: &Function) -> Option<Priced> {
    Some(match f {
        Function::Ed(EdScope::Below) => Priced::EraseBelow,
        Function::Ed(EdScope::Above) => Priced::EraseAbove,
        Function::Ed(EdScope::All) => Priced::EraseAll,
        Function::Il(n) | Function::Sd(n) => Priced::InsertLines(*n),
        Function::Dl(n) | Function::Su(n) => Priced::DeleteLines(*n),
        Function::Decaln => Priced::Fill,
        Function::Ris => Priced::Reset,
        Function::Decset(modes) if switches_screen(modes) => Priced::AlternateScreen,
        Function::Decrst(modes) if switches_screen(modes) => Priced::LeaveAlternate,
        _ => return None,
    })
}

/// Whether setting or resetting `modes` switches between the primary and the alternate screen.
fn switches_screen(modes: &DecModes) -> bool {
    modes.as_slice().iter().any(|m| {
        matches!(
            m,
            DecMode::AltScreenBuffer | DecMode::SaveCursorAltScreenBuffer
        )
    })
}

impl Priced {
    /// The estimated cost on `terminal` as it stands.
    fn cost(self, terminal: &Terminal) -> u64 {
        let (cols, rows) = terminal.size();
        let row = terminal.cursor().row.min(rows.saturating_sub(1));
        let primary = terminal.active_screen_kind() == ScreenKind::Primary;
        let lines = |n: u16| usize::from(n.max(1)).min(rows);
        match self {
            Priced::EraseBelow => cells_cost((rows - row) * cols, 700),
            Priced::EraseAbove => cells_cost((row + 1) * cols, 700),
            // The primary screen also looks for the rows it keeps (avt's scrollback rule).
            Priced::EraseAll => cells_cost(rows * cols, if primary { 1400 } else { 700 }),
            Priced::InsertLines(n) => cells_cost(lines(n) * cols, 1200),
            Priced::DeleteLines(n) => cells_cost(lines(n) * cols, 1500),
            Priced::Fill => cells_cost(rows * cols, 4500),
            Priced::Reset => cells_cost(rows * cols, 1400),
            // A new alternate screen is allocated; shown already, nothing is here, but priced the
            // same, so that a loop of entries is bounded whatever the player's avt does with them.
            Priced::AlternateScreen => cells_cost(rows * cols, 700),
            Priced::LeaveAlternate if primary => 0,
            Priced::LeaveAlternate => cells_cost(rows * cols, 700),
        }
    }
}

/// The estimated cost of resizing from `from` to `to` (cols, rows), for whichever of the two emulators
/// pays more: this one ([`index_resize_cost`]) or the browser player's ([`player_resize_cost`]).
fn resize_cost(from: (usize, usize), to: (usize, usize)) -> u64 {
    index_resize_cost(from, to).max(player_resize_cost(from, to))
}

/// The index's avt resizing from `from` to `to`: the old screen's cells read, the new width's rows
/// built for the larger of the two heights (avt pads to the old height before it cuts), and a row
/// allocated for each new-width piece of the old screen's lines (the primary one reflowed: linear since
/// third_party/avt's patch 1; a full screen narrowed to one column is 500,000 rows).
fn index_resize_cost(from: (usize, usize), to: (usize, usize)) -> u64 {
    let cells = from.0 * from.1 + to.0 * from.1.max(to.1);
    let rows = from.0 * from.1 / to.0.max(1);
    cells_cost(cells, 1500).saturating_add(rows as u64 * 90)
}

/// Lines of scrollback the browser player's terminal keeps (asciinema-player creates its avt with 100),
/// which its primary screen reflows with the rows it shows.
const PLAYER_SCROLLBACK: usize = 100;

/// The browser player's avt (upstream's, without third_party/avt's patch 1) narrowing its primary
/// screen from `from` to `to`, at worst: each of its lines (the rows shown and the scrollback kept, each
/// at most the old width plus what the line before carried over) is cut into new-width rows one at a
/// time, and each cut moves the rest of the line: about length² / (2 x new width) cells a line. One
/// screen-long wrapped line at 1000 x 500 narrowed to one column took that player 0.7 s (Chromium, the
/// machine bench/README.md describes: ~2.8 ns a cell), so a vendor's device that redraws it and a client
/// that narrows and widens the window in a loop, which the index pays for in milliseconds, froze the
/// auditor's tab for as long as the recording is played. Widening and height changes are linear there
/// as here. The worst case, not the screen's content, so that the price is the sizes'.
fn player_resize_cost(from: (usize, usize), to: (usize, usize)) -> u64 {
    if to.0 >= from.0 {
        return 0;
    }
    let width = to.0.max(1) as u64;
    let line = (from.0 + to.0 - 1) as u64;
    let per_line = line.saturating_mul(line) / (2 * width);
    let lines = (from.1 + PLAYER_SCROLLBACK) as u64;
    (per_line.saturating_mul(lines)).saturating_mul(3)
}

/// What an emulator carries from one stretch of a recording to the next besides its screen: its
/// budgets and the resize that waits. Kept with each segment, so a player's view of the segment
/// ([`Emulator::showing`]) is held as the index was there, not given a full budget again.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    pub budget: u64,
    pub redraw: u64,
    pub paid_until: f64,
    pub pending: Option<(u16, u16)>,
}

/// How long a recording must run to pay for a player's redraw of a `cols` x `rows` terminal (a tenth
/// of its time goes to redraws): what a live view waits between two fresh starts, each a redraw.
pub fn redraw_pause(cols: usize, rows: usize) -> std::time::Duration {
    let ns = cells_cost(cols.saturating_mul(rows), REDRAW_PER_CELL);
    std::time::Duration::from_secs_f64(ns as f64 / REDRAW_PER_SECOND as f64)
}

/// An `avt` terminal fed through a work budget; see the module documentation.
pub struct Emulator {
    terminal: Terminal,
    /// Reads the same characters as the terminal's own parser, one step ahead, to see each operation
    /// before the terminal carries it out.
    shadow: Parser,
    screen: ScreenText,
    budget: u64,
    /// Time (seconds) up to which time has been paid in.
    paid_until: f64,
    /// A resize the budget could not pay yet.
    pending: Option<(usize, usize)>,
    /// What the player's redraws after resizes may still cost (estimated nanoseconds): apart from
    /// `budget`, which a person's drag at 200 x 50 would drain, and earned by time only.
    redraw: u64,
    /// All that was charged, since the start (estimated nanoseconds of work, emulation and redraws).
    spent: u64,
    /// Operations not carried out, since the start.
    refused: u64,
    /// Resizes not made when the recording made them (made later, or never), since the start.
    delayed: u64,
    /// REP counts bounded before the emulator: 9 bytes must not cost 65,535 prints.
    rep: RepBound,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("size", &self.terminal.size())
            .field("budget", &self.budget)
            .field("pending", &self.pending)
            .field("redraw", &self.redraw)
            .field("refused", &self.refused)
            .field("delayed", &self.delayed)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// A terminal of `cols` x `rows` (both at least 1).
    pub fn new(cols: usize, rows: usize) -> Emulator {
        let terminal = Terminal::new(cols.max(1), rows.max(1))
            .or_else(|_| Terminal::new(80, 24))
            .unwrap_or_else(|_| unreachable!("80x24 is a valid terminal size"));
        Emulator {
            screen: ScreenText::new(&terminal),
            terminal,
            shadow: Parser::new(),
            budget: BUDGET_CAP,
            paid_until: 0.0,
            pending: None,
            redraw: REDRAW_CAP,
            spent: 0,
            refused: 0,
            delayed: 0,
            rep: RepBound::default(),
        }
    }

    pub fn terminal(&self) -> &Terminal {
        &self.terminal
    }

    /// Output comes after a pause: see [`ScreenText::settled`].
    pub fn settled(&mut self) {
        self.screen.settled(&self.terminal);
    }

    /// The recording ended: see [`ScreenText::finish`].
    pub fn finish(&mut self) {
        self.screen.finish(&self.terminal);
    }

    /// The alternate screen's lines read since the last call ([`ScreenText::take`]).
    pub fn take_lines(&mut self) -> std::vec::Drain<'_, String> {
        self.screen.take()
    }

    /// Operations the budget did not pay for (not carried out), and REP counts cut to the screen's
    /// width (carried out in part), so far. A resize is delayed, not refused: it is made, at its latest
    /// size, once the budget pays for it.
    pub fn refused(&self) -> u64 {
        self.refused + self.rep.changed()
    }

    /// Resizes the budget could not pay for when the recording made them: made later (at the latest
    /// size asked for by then), or never. A player given the recording as it is would make them on
    /// time, at the cost [`resize_cost`] prices (see [`crate::playback::bounded_events`]).
    pub fn delayed(&self) -> u64 {
        self.delayed
    }

    /// All that was charged so far (estimated nanoseconds: emulation and a player's redraws): what
    /// a player seeking within a stretch of the recording does at once, so the playback index cuts a
    /// segment once enough was spent in it ([`crate::playback::SEGMENT_WORK`]).
    pub fn spent(&self) -> u64 {
        self.spent
    }

    fn earn(&mut self, time: f64, bytes: usize) {
        let seconds = (time - self.paid_until).clamp(0.0, EARNING_PAUSE);
        self.paid_until = self.paid_until.max(time);
        let by_time = (seconds * EARN_PER_SECOND as f64) as u64;
        let by_bytes = (bytes as u64).saturating_mul(EARN_PER_BYTE);
        self.budget = self
            .budget
            .saturating_add(by_time)
            .saturating_add(by_bytes)
            .min(BUDGET_CAP);
        self.redraw = self
            .redraw
            .saturating_add((seconds * REDRAW_PER_SECOND as f64) as u64)
            .min(REDRAW_CAP);
    }

    /// Takes `amount` from the budget if it holds that much.
    fn spend(&mut self, amount: u64) -> bool {
        let paid = amount <= self.budget;
        if paid {
            self.budget -= amount;
            self.spent = self.spent.saturating_add(amount);
        }
        paid
    }

    /// Makes the resize that waits for the budget, if the budget now pays for it.
    fn settle_resize(&mut self) {
        if self.pending == Some(self.terminal.size()) {
            self.pending = None;
        }
        let Some(size) = self.pending else { return };
        let redraw = cells_cost(size.0 * size.1, REDRAW_PER_CELL);
        if redraw <= self.redraw && self.spend(resize_cost(self.terminal.size(), size)) {
            self.redraw -= redraw;
            self.spent = self.spent.saturating_add(redraw);
            self.pending = None;
            self.terminal.resize_with(size.0, size.1, &mut self.screen);
        }
    }

    /// A terminal of `cols` x `rows` showing `init` (a segment's starting screen, [`Emulator::dump`]),
    /// not charged, with what the index carried there (full budgets if not known): the player's view
    /// of one segment.
    pub fn showing(cols: usize, rows: usize, init: &str, carried: Option<&Carried>) -> Emulator {
        let mut e = Emulator::new(cols, rows);
        for ch in init.chars() {
            e.shadow.feed(ch);
        }
        e.terminal.feed_with(init, &mut e.screen);
        if let Some(c) = carried {
            e.budget = c.budget.min(BUDGET_CAP);
            e.redraw = c.redraw.min(REDRAW_CAP);
            e.paid_until = c.paid_until;
            e.pending = c
                .pending
                .map(|(c, r)| (usize::from(c.max(1)), usize::from(r.max(1))));
        }
        e
    }

    /// Charges a player's redraw of its whole terminal at `cols` x `rows` (a live view starting again
    /// from the screen as it is) to the redraw budget, as far as it holds: a fresh start is paced by
    /// its caller ([`redraw_pause`]), not refused.
    pub fn pay_redraw(&mut self, cols: usize, rows: usize) {
        let cost = cells_cost(cols.saturating_mul(rows), REDRAW_PER_CELL);
        self.redraw = self.redraw.saturating_sub(cost);
        self.spent = self.spent.saturating_add(cost);
    }

    /// What this emulator carries into the next stretch of the recording (see [`Carried`]).
    pub fn carried(&self) -> Carried {
        let size = |(c, r): (usize, usize)| {
            (
                u16::try_from(c).unwrap_or(u16::MAX),
                u16::try_from(r).unwrap_or(u16::MAX),
            )
        };
        Carried {
            budget: self.budget,
            redraw: self.redraw,
            paid_until: self.paid_until,
            pending: self.pending.map(size),
        }
    }

    /// Output `text` at `time` (seconds into the recording).
    pub fn output(&mut self, time: f64, text: &str) {
        self.feed_guarded(time, text, None);
    }

    /// [`Emulator::output`], returning what the terminal was given: REP counts bounded, and a CAN for
    /// the final character of each operation the budget did not pay for. What a player is given to
    /// play, so that its own emulator does no more than this one.
    pub fn output_given(&mut self, time: f64, text: &str) -> String {
        let mut given = String::with_capacity(text.len());
        self.feed_guarded(time, text, Some(&mut given));
        given
    }

    fn feed_guarded(&mut self, time: f64, text: &str, mut given: Option<&mut String>) {
        let mut give = |terminal: &mut Terminal, screen: &mut ScreenText, text: &str| {
            terminal.feed_with(text, screen);
            if let Some(given) = given.as_deref_mut() {
                given.push_str(text);
            }
        };
        self.earn(time, text.len());
        self.settle_resize();
        let (cols, rows) = self.terminal.size();
        let text = self.rep.bound(
            text,
            u16::try_from(cols).unwrap_or(u16::MAX),
            u16::try_from(rows).unwrap_or(u16::MAX),
        );
        let text = text.as_str();
        self.screen.earn(&self.terminal, text.len());
        let mut start = 0;
        for (i, ch) in text.char_indices() {
            let Some(priced) = self.shadow.feed(ch).as_ref().and_then(price) else {
                continue;
            };
            // What comes before is carried out first: the cost depends on the screen and cursor then.
            give(&mut self.terminal, &mut self.screen, &text[start..i]);
            start = i;
            let cost = priced.cost(&self.terminal);
            if priced == Priced::AlternateScreen
                && self.terminal.active_screen_kind() == ScreenKind::Primary
            {
                // Always made (else a program's screen would be read as the primary one, which the
                // line tracker leaves to this reader: out of the search): paid as far as it can be.
                self.spent = self.spent.saturating_add(cost);
                self.budget = self.budget.saturating_sub(cost);
                continue;
            }
            if !self.spend(cost) {
                self.refused += 1;
                // CAN cancels the sequence this character would have ended.
                give(&mut self.terminal, &mut self.screen, "\u{18}");
                start = i + ch.len_utf8();
            }
        }
        give(&mut self.terminal, &mut self.screen, &text[start..]);
    }

    /// The terminal was resized to `cols` x `rows` (both at least 1) at `time`: now if the budget pays
    /// for it, else before the first output the budget pays it for (only the latest size waits).
    pub fn resize(&mut self, time: f64, cols: usize, rows: usize) {
        self.earn(time, 0);
        self.pending = Some((cols.max(1), rows.max(1)));
        self.settle_resize();
        if self.pending.is_some() {
            self.delayed += 1;
        }
    }

    /// The terminal's size as emulated: (cols, rows).
    pub fn size(&self) -> (usize, usize) {
        self.terminal.size()
    }

    /// What to feed a fresh terminal of [`Emulator::size`] to show the same screen.
    pub fn dump(&self) -> String {
        self.terminal.dump()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    /// Feeds `text` in events of `event` bytes, `gap` seconds apart; returns the emulator.
    fn run(cols: usize, rows: usize, text: &str, event: usize, gap: f64) -> Emulator {
        let mut e = Emulator::new(cols, rows);
        let mut time = 0.0;
        let mut rest = text;
        while !rest.is_empty() {
            let mut n = event.min(rest.len());
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            e.output(time, &rest[..n]);
            rest = &rest[n..];
            time += gap;
        }
        e
    }

    fn unguarded(cols: usize, rows: usize, text: &str) -> String {
        let mut t = Terminal::new(cols, rows).unwrap();
        t.feed(text);
        t.dump()
    }

    /// What full-screen programs and clear loops print, at the largest screen, is emulated exactly.
    #[test]
    fn what_people_run_is_emulated_exactly() {
        let (cols, rows) = (1000, 500);
        let mut e = Emulator::new(cols, rows);
        let mut all = String::new();
        let mut time = 0.0;
        let mut out = |e: &mut Emulator, text: String| {
            e.output(time, &text);
            all.push_str(&text);
            time += 0.1;
        };
        // A `clear; date` loop ten times a second.
        for i in 0..300 {
            out(
                &mut e,
                format!(
                    "\x1b[H\x1b[2JThu Dec  3 10:{:02}:{:02} UTC 2026\r\n",
                    i / 60,
                    i % 60
                ),
            );
        }
        // An editor: its screen, and its redraws, scrolls and line inserts as a person types.
        out(&mut e, "\x1b[?1049h".to_owned());
        for i in 0..300 {
            out(
                &mut e,
                format!(
                    "\x1b[H\x1b[2J{}\x1b[{rows};1H-- INSERT --\x1b[1;{}H\x1b[1L\x1b[2M\x1b[K\x1b[3S",
                    format!("line {i} of the file\r\n").repeat(20),
                    i % cols + 1,
                ),
            );
        }
        out(&mut e, "\x1b[?1049l".to_owned());
        assert_eq!(e.refused(), 0);
        assert_eq!(e.dump(), unguarded(cols, rows, &all));
    }

    /// A device that fills and clears the whole screen in a loop gets as much emulation as its output
    /// and time pay for: most of its operations are not carried out, and the text around them is.
    #[test]
    fn a_clear_loop_costs_no_more_than_it_pays_for() {
        let (cols, rows) = (1000, 500);
        let pattern = "x\x1b[2J\x1b#8\x1bc\x1b[500M\x1b[?1049h\x1b[?1049l";
        let n = 2000;
        let text = pattern.repeat(n);
        let e = run(cols, rows, &text, 4096, 0.001);
        // Six operations a repetition the budget may refuse (entering the alternate screen from the
        // primary one is always made, but only after a leave the budget paid for); the budget: the
        // cap, 300 ns a byte, 20 ms a second.
        let earned =
            BUDGET_CAP + text.len() as u64 * EARN_PER_BYTE + (text.len() / 4096) as u64 * 20_000;
        let cheapest = cells_cost(rows * cols, 700);
        let carried_out = 6 * n as u64 - e.refused();
        assert!(
            carried_out <= 2 * (earned / cheapest) + 1,
            "{carried_out} carried out"
        );
        assert!(e.refused() > 0);
        // The terminal still reads what follows.
        let mut e = e;
        e.output(100.0, "\x1b[Hstill here");
        assert!(e.terminal().screen().text()[0].starts_with("still here"));
    }

    /// A program's switch to the alternate screen is made even with the budget spent (else its screen
    /// would be out of the search: the line tracker leaves it to the screen reader).
    #[test]
    fn the_alternate_screen_is_entered_whatever_the_budget() {
        let mut e = Emulator::new(1000, 500);
        // Spent down to less than a new alternate screen's price (350 us): by fills (2.25 ms each),
        // clears (700 us) and inserts of 250 lines (300 us).
        let drain = ["\x1b#8", "\x1b[2J", "\x1b[250L"]
            .map(|op| op.repeat(200))
            .concat();
        e.output(0.0, &drain);
        assert!(e.budget < Priced::Reset.cost(e.terminal()) / 4, "{e:?}");
        assert!(e.refused() > 0);
        e.output(0.0, "\x1b[?1049h\x1b[Hcoil_gain = 99");
        assert_eq!(e.terminal().active_screen_kind(), ScreenKind::Alternate);
        // Leaving is paid for (it makes the next entry allocate): once the budget holds it.
        e.output(1.0, "\x1b[?1049l");
        assert_eq!(e.terminal().active_screen_kind(), ScreenKind::Primary);
    }

    /// A device that switches to the alternate screen and back in a loop (each entry allocates a whole
    /// screen; 12 us a byte of the indexer's time, and all of the page's, unpriced): the leaves the
    /// budget cannot pay are refused (the alternate screen stays shown, so the next entry costs
    /// nothing), all of it counted as work for the segments.
    #[test]
    fn a_loop_of_alternate_screens_costs_no_more_than_it_pays_for() {
        let (cols, rows) = (1000, 500);
        let pair = "\x1b[?1049h\x1b[?1049l";
        let n = 100_000;
        let text = pair.repeat(n);
        let e = run(cols, rows, &text, 4096, 0.01);
        let earned =
            BUDGET_CAP + text.len() as u64 * EARN_PER_BYTE + (text.len() / 4096) as u64 * 200_000;
        // Each entry the page is given builds a screen there; here only those from the primary one,
        // each after a paid leave.
        let given = 2 * n as u64 - e.refused();
        let screen = cells_cost(rows * cols, 700);
        assert!(given <= 2 * (earned / screen) + 1, "{given} carried out");
        assert!(e.refused() > n as u64);
        assert!(e.spent() >= given / 2 * screen);
    }

    /// A device that redraws one wrapped line across the largest screen and a client that narrows the
    /// window to a column and back, over and over: the index pays for it in milliseconds, the browser
    /// player's avt (quadratic) took 0.7 s a cycle. The resizes the player would be given cost it no
    /// more than the recording earned, and the narrowest is never made.
    #[test]
    fn narrowing_a_wide_screen_costs_the_player_no_more_than_it_pays_for() {
        let (cols, rows) = (1000, 500);
        let line = "x".repeat(cols * (rows - 1));
        let mut e = Emulator::new(cols, rows);
        let mut time = 0.0;
        let mut output = 0;
        let mut player = 0;
        let mut made = Vec::new();
        for _ in 0..20 {
            for size in [(1000, 500), (999, 500), (1, 500)] {
                let before = e.size();
                e.resize(time, size.0, size.1);
                if e.size() != before {
                    player += player_resize_cost(before, e.size());
                    made.push(e.size());
                }
                time += 0.01;
            }
            let text = format!("\x1b[H{line}");
            e.output(time, &text);
            output += text.len();
            time += 0.01;
        }
        let earned = BUDGET_CAP + output as u64 * EARN_PER_BYTE + (time * 20e6) as u64;
        assert!(
            player <= earned,
            "{player} ns of the player's work, {earned} earned"
        );
        assert!(!made.contains(&(1, 500)), "{made:?}");
        assert!(e.delayed() >= 20, "{}", e.delayed());
        assert_eq!(e.refused(), 0);
        // Unpriced, the player would have spent about 0.75 s (2.5e8 cells) a cycle.
        assert!(player_resize_cost((999, 500), (1, 500)) > 20 * 600_000_000 / 20);
    }

    /// Drags a window of `wide` x `high` from its width to 80 columns and back (`changes` changes,
    /// 30 a second, a program redrawing after each), every ten seconds of a session that prints a line
    /// a second between; returns the emulator and the changes made late.
    fn dragged(wide: usize, high: usize, changes: usize) -> (Emulator, usize) {
        let mut e = Emulator::new(wide, high);
        let mut time = 0.0;
        let mut late = 0;
        for _drag in 0..5 {
            for i in 0..changes {
                let step = (i % (changes / 2)) * (wide - 80) / (changes / 2);
                let cols = if i < changes / 2 {
                    wide - step
                } else {
                    80 + step
                };
                e.resize(time, cols, high);
                late += usize::from(e.size() != (cols, high));
                e.output(time, &"text to the end of the line ".repeat(cols / 28 + 1));
                time += 1.0 / 30.0;
            }
            e.resize(time, wide, high);
            for _ in 0..10 {
                time += 1.0;
                e.output(time, "$ tail -f /var/log/messages\r\n");
            }
        }
        (e, late)
    }

    /// A person dragging a window's edge (two seconds, 30 changes a second) at 200 x 50 has every
    /// change made when it was made; on the wide screen of a large monitor (400 x 120, each redraw
    /// priced 72 ms for the page) some changes of a drag are made late, and the window's final size
    /// within seconds of the drag's end.
    #[test]
    fn a_window_dragged_by_a_person_is_resized() {
        let (e, late) = dragged(200, 50, 60);
        assert_eq!((late, e.delayed()), (0, 0));
        let (e, late) = dragged(400, 120, 60);
        assert!(late > 0);
        assert_eq!(e.size(), (400, 120));
    }

    /// A page is not made to redraw its terminal more than a tenth of the recording's time (after what
    /// the cap holds): the height of a 1000 x 500 screen changed ten times a second (0.05-0.7 s of the
    /// browser's time each) is made about once every 7.5 s.
    #[test]
    fn redraws_are_a_tenth_of_the_time_at_most() {
        let mut e = Emulator::new(1000, 500);
        let mut made = 0;
        let mut time = 0.0;
        for i in 0..600 {
            let before = e.size();
            e.resize(time, 1000, 500 - i % 2);
            made += usize::from(e.size() != before);
            e.output(time, "x");
            time += 0.1;
        }
        // 60 s: the cap pays one, 100 ms a second about eight more.
        assert!((2..=10).contains(&made), "{made} made");
    }

    /// A pause earns no more than a second of time, however long: played with its pauses cut to a
    /// second, a recording of long pauses each followed by costly work gives the page no more work a
    /// second than one with none.
    #[test]
    fn a_long_pause_earns_a_second() {
        let mut e = Emulator::new(1000, 500);
        // Drained.
        e.output(0.0, &"\x1b#8".repeat(200));
        let mut filled = 0;
        let mut time = 0.0;
        for _ in 0..100 {
            time += 3600.0;
            let before = e.refused();
            e.output(
                time,
                "\x1b#8\x1b#8\x1b#8\x1b#8\x1b#8\x1b#8\x1b#8\x1b#8\x1b#8\x1b#8",
            );
            filled += 10 - (e.refused() - before);
        }
        // A fill costs 2.25 ms; a second earns 20 ms: 8 or 9 a pause, not the cap's 44.
        assert!(filled <= 100 * 9, "{filled} fills made");
        assert!(filled >= 100 * 8, "{filled} fills made");
    }

    /// Resizes wait for the budget, and only the latest size waits; output then finds it applied.
    #[test]
    fn resizes_wait_for_the_budget() {
        // Window changes with no time passing between them: what the resizes made cost in all, by the
        // price (which counts what avt builds: a full screen narrowed to one column is 500,000 rows; tall
        // and narrow to wide and short builds the wide rows for the old height first).
        for (start, a, b) in [
            ((1000, 500), (1, 500), (1000, 500)),
            ((1, 500), (1000, 1), (1, 500)),
        ] {
            let mut e = Emulator::new(start.0, start.1);
            e.output(0.0, "\x1b#8");
            let mut spent = 0;
            let mut made = 0;
            for i in 0..1000 {
                let before = e.size();
                let to = if i % 2 == 0 { a } else { b };
                e.resize(0.0, to.0, to.1);
                if e.size() != before {
                    spent += resize_cost(before, e.size());
                    made += 1;
                }
            }
            assert!(spent <= BUDGET_CAP, "{made} resizes made, {spent} ns");
            assert!(made < 1000, "{made} resizes made");
            assert_eq!(e.refused(), 0, "a resize waits, it is not refused");
        }
        let mut e = Emulator::new(1000, 500);
        e.output(0.0, &"\x1b#8".repeat(200));
        e.resize(0.0, 80, 24);
        // A pause earns a second at most: 20 ms each.
        for t in 1..=5 {
            e.output(f64::from(t), "x");
        }
        assert_eq!(e.size(), (80, 24));
    }
}
