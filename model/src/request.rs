//! The vendor's access request command line: what follows `request` in `ssh VENDOR@bastion request ASSET
//! SERVICE[,SERVICE…] --for DURATION --reason TEXT` (`ssh::request` files it and waits for the decision).
//!
//! Entry point: [`parse`]. ssh joins a remote command's words with spaces and drops the client's quoting,
//! so everything after `--reason` is the reason; shell-style quotes around it are removed when present.

use std::time::Duration;

use crate::config::parse_duration;
use crate::model::parse_name_list;

/// A parsed `request` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestArgs {
    pub asset: String,
    pub services: Vec<String>,
    pub duration: Duration,
    pub reason: String,
}

pub const USAGE: &str = "request ASSET SERVICE[,SERVICE…] --for DURATION --reason TEXT";

/// Parses what follows `request` (see the module doc for how the reason is read).
pub fn parse(rest: &str) -> Result<RequestArgs, String> {
    let mut positional = Vec::new();
    let mut duration = None;
    let mut reason = None;
    let mut at = 0;
    while let Some((word, end)) = next_word(rest, at)? {
        at = end;
        if word == "--reason" {
            let text = rest[end..].trim();
            // A vendor who quoted the reason for the remote side: one quoted word is unquoted.
            let text = match next_word(text, 0) {
                Ok(Some((w, e))) if text[e..].trim().is_empty() => w,
                _ => text.to_owned(),
            };
            reason = Some(text);
            break;
        } else if let Some(value) = word.strip_prefix("--for=") {
            duration = Some(value.to_owned());
        } else if word == "--for" {
            let (value, end) =
                next_word(rest, at)?.ok_or("--for needs a duration, e.g. --for 2h")?;
            at = end;
            duration = Some(value);
        } else if word.starts_with('-') {
            return Err(format!(
                "unknown option {}; usage: {USAGE}",
                crate::model::truncate_for_display(&word, 30)
            ));
        } else {
            positional.push(word);
        }
    }
    let [asset, services] = <[String; 2]>::try_from(positional)
        .map_err(|_| format!("name one asset and its services; usage: {USAGE}"))?;
    crate::model::check_name("asset", &asset)?;
    let services = parse_name_list("service", &services)?;
    let duration = parse_duration(&duration.ok_or("--for DURATION is required, e.g. --for 2h")?)?;
    let reason = reason.ok_or("--reason TEXT is required (a ticket and what you will do)")?;
    Ok(RequestArgs {
        asset,
        services,
        duration,
        reason,
    })
}

/// The next shell-style word of `s` from byte `at`: `'…'` literal, `"…"` with `\` escapes, `\x` outside
/// quotes. Returns the word and the byte offset after it; `None` at the end.
fn next_word(s: &str, at: usize) -> Result<Option<(String, usize)>, String> {
    let mut chars = s[at..].char_indices().map(|(i, c)| (i + at, c)).peekable();
    while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    if chars.peek().is_none() {
        return Ok(None);
    }
    let mut word = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => return Ok(Some((word, i))),
            '\'' => loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, c)) => word.push(c),
                    None => return Err("unterminated ' quote".into()),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c @ ('"' | '\\' | '$' | '`'))) => word.push(c),
                        Some((_, c)) => {
                            word.push('\\');
                            word.push(c);
                        }
                        None => return Err("unterminated \" quote".into()),
                    },
                    Some((_, c)) => word.push(c),
                    None => return Err("unterminated \" quote".into()),
                }
            },
            '\\' => {
                if let Some((_, c)) = chars.next() {
                    word.push(c);
                }
            }
            c => word.push(c),
        }
    }
    Ok(Some((word, s.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_is_everything_after_the_flag_and_quotes_are_optional() {
        let a = parse("mri-01 ssh,dicom --for 2h --reason INC-4711 coil calibration").unwrap();
        assert_eq!(a.asset, "mri-01");
        assert_eq!(a.services, vec!["ssh".to_owned(), "dicom".to_owned()]);
        assert_eq!(a.duration, Duration::from_secs(7200));
        assert_eq!(a.reason, "INC-4711 coil calibration");
        let b = parse("mri-01 ssh --reason \"INC-4711 it's \\\"hot\\\"\"").err();
        assert!(b.unwrap().contains("--for"));
        let c = parse("mri-01 ssh --for=30m --reason 'INC-1 a  b'").unwrap();
        assert_eq!(c.reason, "INC-1 a  b");
        let d = parse("mri-01 ssh --for 30m --reason \"one\" and \"two\"").unwrap();
        assert_eq!(d.reason, "\"one\" and \"two\"");
    }

    #[test]
    fn bad_commands_say_what_is_missing() {
        assert!(
            parse("mri-01 --for 2h --reason x")
                .unwrap_err()
                .contains("usage")
        );
        assert!(
            parse("mri-01 ssh --reason x")
                .unwrap_err()
                .contains("--for")
        );
        assert!(
            parse("mri-01 ssh --for 2h")
                .unwrap_err()
                .contains("--reason")
        );
        assert!(
            parse("mri-01 ssh --for 2 --reason x")
                .unwrap_err()
                .contains("unit")
        );
        assert!(
            parse("mri-01 ssh --bogus --for 2h --reason x")
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(
            parse("'mri-01 ssh --for 2h --reason x")
                .unwrap_err()
                .contains("quote")
        );
        assert!(parse("MRI;rm ssh --for 2h --reason x").is_err());
    }
}
