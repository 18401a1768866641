//! SMTP replies as a mail server sends them (RFC 5321 §4.2): lines of a three-digit code, then `-` when
//! more lines follow or a space (or nothing) on the last, then text. The bytes come from the network:
//! every line is checked here and a reply is bounded in lines, so a hostile or broken server gets a
//! clear "not SMTP" instead of a panic or an unbounded buffer. The mail client (`src/mail/smtp.rs`)
//! reads bounded lines off the socket and hands them to [`ReplyReader::line`]; this crate is what the
//! fuzz target `smtp_reply` drives.

/// Most lines in one multi-line reply (an EHLO lists a dozen extensions).
pub const MAX_LINES: usize = 100;

/// A whole reply: its code and its text lines (code and separator removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply for a log line: printable characters only, at most 300.
    pub fn text(&self) -> String {
        let text = format!("{} {}", self.code, self.lines.join(" / "));
        text.chars().filter(|c| !c.is_control()).take(300).collect()
    }
}

/// The bytes are not an SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbled;

/// Collects the lines of one reply.
#[derive(Debug, Default)]
pub struct ReplyReader {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyReader {
    /// One line as read (its CR LF or LF may still be on it): `Ok(Some(reply))` when it was the last
    /// line, `Ok(None)` when more follow. A code outside 200-599, a separator other than `-` or space,
    /// a line whose code differs from the first's, or more than [`MAX_LINES`] lines is [`Garbled`].
    pub fn line(&mut self, raw: &[u8]) -> Result<Option<Reply>, Garbled> {
        let line = String::from_utf8_lossy(raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let code = line
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or(Garbled)?;
        if self.code.is_some_and(|first| first != code) {
            return Err(Garbled);
        }
        self.code = Some(code);
        let more = match line.as_bytes().get(3) {
            None | Some(b' ') => false,
            Some(b'-') => true,
            Some(_) => return Err(Garbled),
        };
        if self.lines.len() == MAX_LINES {
            return Err(Garbled);
        }
        self.lines.push(line.get(4..).unwrap_or("").to_owned());
        if more {
            return Ok(None);
        }
        Ok(Some(Reply {
            code,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&[u8]]) -> Result<Option<Reply>, Garbled> {
        let mut r = ReplyReader::default();
        let mut last = Ok(None);
        for l in lines {
            last = r.line(l);
            if !matches!(last, Ok(None)) {
                break;
            }
        }
        last
    }

    #[test]
    fn replies_are_read_line_by_line_and_checked() {
        let r = read(&[b"250-first\r\n", b"250-STARTTLS\r\n", b"250 last\r\n"])
            .unwrap()
            .unwrap();
        assert_eq!((r.code, r.lines.len()), (250, 3));
        assert_eq!(r.lines[1], "STARTTLS");
        assert_eq!(read(&[b"220\r\n"]).unwrap().unwrap().lines, [""]);
        assert_eq!(read(&[b"250-more\r\n"]), Ok(None));
        for bad in [
            &b"hello\r\n"[..],
            b"199 too low\r\n",
            b"600 too high\r\n",
            b"+25 sign\r\n",
            b"250x what\r\n",
            b"2\xc3\xa9 not digits\r\n",
        ] {
            assert_eq!(read(&[bad]), Err(Garbled), "{bad:?}");
        }
        assert_eq!(read(&[b"250-one\r\n", b"550 other\r\n"]), Err(Garbled));
        let many: Vec<&[u8]> = std::iter::repeat_n(&b"250-x\r\n"[..], MAX_LINES + 1).collect();
        assert_eq!(read(&many), Err(Garbled));
    }

    #[test]
    fn a_reply_for_the_log_is_printable_and_short() {
        let r = Reply {
            code: 554,
            lines: vec!["a\x1b[2Jb".into(), "x".repeat(1000)],
        };
        let t = r.text();
        assert!(t.starts_with("554 a[2Jb / x"));
        assert_eq!(t.chars().count(), 300);
    }
}
