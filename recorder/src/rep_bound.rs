//! REP bounded for the screen emulator (module [`crate::playback`]).
//!
//! Entry point: [`RepBound`].

/// Bounds REP (`CSI n b`: repeat the last character n times) before a terminal's output reaches the
/// emulator: 9 bytes can ask for 65,535 characters, which the emulator prints one by one (wrapping and
/// scrolling), so a few MiB of such output kept the indexer busy for hours (~60 s a MiB, measured). A
/// count is cut to the screen's width: programs repeat within a line (ncurses), so what they draw is
/// emulated exactly, and 9 bytes cost at most a line of prints. A longer count only changes the
/// emulator's snapshots (a player's seek points), never the recording. Every other byte passes
/// unchanged. Streaming: a sequence may be split anywhere across calls.
#[derive(Debug, Default)]
pub(crate) struct RepBound {
    state: State,
    /// Sequences passed on changed (a count cut, a CSI's excess dropped), since the start.
    changed: u64,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// Inside a CSI: its bytes after the introducer, as they came (at most [`MAX_KEPT`]), and its first
    /// parameter's value so far (saturating), until the final byte.
    Csi {
        kept: String,
        first: u64,
        in_first: bool,
    },
}

/// The bytes of a CSI kept to be passed on (a longer one loses the rest: only the emulator's model of
/// the screen sees this text, never a player).
const MAX_KEPT: usize = 64;

impl RepBound {
    /// Sequences passed on otherwise than they came (a REP count cut, a CSI longer than [`MAX_KEPT`]
    /// cut short), since the start: a player given the output as it came would do more than the
    /// emulator did.
    pub(crate) fn changed(&self) -> u64 {
        self.changed
    }

    /// `text` with every REP count bounded for a `cols` x `rows` screen.
    pub(crate) fn bound(&mut self, text: &str, cols: u16, rows: u16) -> String {
        let mut out = String::with_capacity(text.len());
        for ch in text.chars() {
            let csi = || State::Csi {
                kept: String::new(),
                first: 0,
                in_first: true,
            };
            // C0 controls (but CAN, SUB and ESC) and DEL act inside an escape or a CSI without ending
            // it, as in the emulator's parser: passed on at once, the sequence goes on around them.
            if matches!(ch, '\x00'..='\x17' | '\x19' | '\x1c'..='\x1f' | '\x7f')
                && !matches!(self.state, State::Ground)
            {
                out.push(ch);
                continue;
            }
            self.state = match std::mem::take(&mut self.state) {
                State::Ground => match ch {
                    '\x1b' => State::Esc,
                    '\u{9b}' => csi(),
                    _ => {
                        out.push(ch);
                        State::Ground
                    }
                },
                State::Esc => match ch {
                    '[' => csi(),
                    '\x1b' => {
                        out.push('\x1b');
                        State::Esc
                    }
                    '\u{9b}' => {
                        out.push('\x1b');
                        csi()
                    }
                    _ => {
                        out.push('\x1b');
                        out.push(ch);
                        State::Ground
                    }
                },
                State::Csi {
                    mut kept,
                    mut first,
                    mut in_first,
                } => match ch {
                    // The final byte of a REP, whatever came before it: one bounded count.
                    'b' => {
                        let n = if first == 0 { 1 } else { first };
                        let b = bounded(n, cols, rows);
                        if b != n || kept.len() >= MAX_KEPT {
                            self.changed += 1;
                        }
                        out.push_str(&format!("\x1b[{b}b"));
                        State::Ground
                    }
                    '\x40'..='\x7e' => {
                        if kept.len() >= MAX_KEPT {
                            self.changed += 1;
                        }
                        out.push_str("\x1b[");
                        out.push_str(&kept);
                        out.push(ch);
                        State::Ground
                    }
                    // Cancelled (CAN, SUB), or a new sequence begins: what was kept goes as it came.
                    '\x18' | '\x1a' | '\x1b' | '\u{9b}' => {
                        out.push_str("\x1b[");
                        out.push_str(&kept);
                        match ch {
                            '\x1b' => State::Esc,
                            '\u{9b}' => csi(),
                            _ => {
                                out.push(ch);
                                State::Ground
                            }
                        }
                    }
                    _ => {
                        if in_first && ch.is_ascii_digit() {
                            first = first
                                .saturating_mul(10)
                                .saturating_add(u64::from(ch as u8 - b'0'));
                        } else {
                            in_first = false;
                        }
                        if kept.len() < MAX_KEPT {
                            kept.push(ch);
                        }
                        State::Csi {
                            kept,
                            first,
                            in_first,
                        }
                    }
                },
            };
        }
        out
    }
}

fn bounded(n: u64, cols: u16, _rows: u16) -> u64 {
    n.min(u64::from(cols.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_is_bounded_and_everything_else_passes() {
        let mut b = RepBound::default();
        assert_eq!(b.bound("a\x1b[65535b", 80, 24), "a\x1b[80b");
        assert_eq!(b.bound("a\x1b[2001b", 80, 24), "a\x1b[80b");
        assert_eq!(b.bound("x\x1b[5b", 80, 24), "x\x1b[5b");
        assert_eq!(b.bound("x\x1b[b", 80, 24), "x\x1b[1b");
        assert_eq!(
            b.bound("\x1b[1;31mred\x1b[0m\x1b]0;t\x07", 80, 24),
            "\x1b[1;31mred\x1b[0m\x1b]0;t\x07"
        );
        assert_eq!(b.bound("x\x1b[65535:1b", 80, 24), "x\x1b[80b");
        assert_eq!(b.bound("x\x1b[;\x1b[65535b", 80, 24), "x\x1b[;\x1b[80b");
        assert_eq!(b.bound("x\u{9b}99999b", 80, 24), "x\x1b[80b");
        // Within a line, what the emulator shows is the same as with the count as it came.
        for text in [
            "ab\x1b[18b",
            "ab\x1b[17bcd",
            "\x1b[3;4Hz\x1b[20b!",
            "w\x1b[b",
        ] {
            let mut whole = avt::Terminal::new(20, 5).unwrap();
            whole.feed(text);
            let mut cut = avt::Terminal::new(20, 5).unwrap();
            cut.feed(RepBound::default().bound(text, 20, 5));
            assert_eq!(whole.dump(), cut.dump(), "{text:?}");
            assert_eq!(whole.cursor(), cut.cursor(), "{text:?}");
        }
        // Controls inside the sequence do not end it (the emulator's parser executes them and goes on).
        assert_eq!(b.bound("x\x1b\r[65535b", 80, 24), "x\r\x1b[80b");
        assert_eq!(b.bound("x\x1b[65\r535b", 80, 24), "x\r\x1b[80b");
        assert_eq!(b.bound("x\x1b[6\x7f5535b", 80, 24), "x\x7f\x1b[80b");
        // Split anywhere.
        let whole = "x\x1b[65535b\x1b[2Jy";
        for cut in 0..whole.len() {
            if !whole.is_char_boundary(cut) {
                continue;
            }
            let mut b = RepBound::default();
            let mut got = b.bound(&whole[..cut], 80, 24);
            got.push_str(&b.bound(&whole[cut..], 80, 24));
            assert_eq!(got, "x\x1b[80b\x1b[2Jy", "cut at {cut}");
        }
    }
}
