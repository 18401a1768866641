//! Text from outside (what a vendor typed, what a device sent, what is in the database) made safe to
//! print on an administrator's terminal.
//!
//! Entry point: [`esc`], the one function every people-facing print of such text goes through (tables
//! through `output::table`, which applies it to every cell). `--json` output is JSON, escaped by
//! serde_json, and stays exact.
//!
//! A terminal obeys control characters wherever they come from: an exec command carrying
//! `ESC ] 52 ; c ; … BEL` writes the administrator's clipboard when `session show` prints it, `ESC [ 2 J`
//! clears the screen, a newline forges an extra line of output. Escaped, they are seen, not obeyed.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character shown as an escape instead of sent to the terminal: C0 controls
/// and DEL as `\xNN` (ESC is `\x1b`), with `\t` `\n` `\r` for tab, newline and carriage return; C1
/// controls (U+0080 to U+009F, which some terminals obey as ESC sequences) and the invisible characters
/// that reorder or break what is shown (bidirectional overrides and isolates, line and paragraph
/// separators) as `\u{NNNN}`. Everything else, backslashes included, is printed as it is (`--json`
/// shows the exact text when a backslash is in doubt). Borrows when there is nothing to escape.
pub fn esc(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}') || crate::model::reorders_text(c)
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn controls_are_shown_not_sent() {
        assert_eq!(
            esc("printf '\x1b]52;c;ZXZpbA==\x07'"),
            "printf '\\x1b]52;c;ZXZpbA==\\x07'"
        );
        assert_eq!(esc("a\nb\rc\td\0e\x7f"), "a\\nb\\rc\\td\\x00e\\x7f");
        assert_eq!(esc("\u{9b}6n \u{85}"), "\\u{9b}6n \\u{85}");
        assert_eq!(
            esc("evil\u{202e}txt.exe\u{2066}"),
            "evil\\u{202e}txt.exe\\u{2066}"
        );
        assert_eq!(esc("x\u{2028}y"), "x\\u{2028}y");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in [
            "ls -l /var/log",
            "Acme Imaging GmbH",
            "déjà vu 漢字 🙂",
            "a\\x1b",
            "",
        ] {
            assert!(matches!(esc(text), std::borrow::Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn nothing_escaped_contains_a_control() {
        let all: String = (0..0x3000u32).filter_map(char::from_u32).collect();
        let shown = esc(&all);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() || ('\u{2028}'..='\u{202e}').contains(&c)),
            "{shown}"
        );
    }
}
