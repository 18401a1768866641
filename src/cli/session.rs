//! `chaperone session …`: what vendors did, and the recordings that prove it.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chaperone_recorder::{OutputStream, Sha256Reader};
use clap::{Subcommand, ValueEnum};

use super::output::{json, or_dash, table};
use crate::app::App;
use crate::clock::format_time;
use crate::model::RecordingRow;
use crate::recording::RecordingFormat;

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one session with its recordings.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a session's terminal recording (.cast, asciicast v2) to FILE, after checking its digest.
    /// An exec without a pty is recorded byte for byte; its .cast is derived (bytes that are not UTF-8
    /// shown as U+FFFD), and --raw writes the exact bytes instead.
    Export {
        id: String,
        #[arg(short, long)]
        output: PathBuf,
        /// Write the exact bytes of one output stream of an exec recording, not a .cast.
        #[arg(long)]
        raw: bool,
        /// With --raw: which stream.
        #[arg(long, value_enum, default_value_t = Stream::Stdout, requires = "raw")]
        stream: Stream,
    },
    /// Check that a session's recordings still match the digests the audit log vouches for.
    Verify { id: String },
    /// Play a session's terminal recording here, at the pace it was recorded. The digest is checked
    /// before and over the very bytes played. The device's output is written as it was, escape
    /// sequences included: play recordings of untrusted devices in a terminal you can close.
    Play {
        id: String,
        /// Faster (2) or slower (0.5).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between two events in seconds (longer idle time is shortened); 0 plays at once.
        #[arg(long, default_value_t = 2.0)]
        max_wait: f64,
    },
}

/// An exec program's output stream, for `export --raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub async fn run(config: &Path, cmd: SessionCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    match cmd {
        SessionCommand::List {
            json: as_json,
            limit,
        } => {
            let sessions = app.store.sessions(limit.clamp(1, 100_000)).await?;
            if as_json {
                return json(&sessions);
            }
            let rows = sessions
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.vendor.clone(),
                        s.asset.clone(),
                        s.kind.clone(),
                        format_time(s.started_at),
                        s.ended_at.map_or_else(|| "live".to_owned(), format_time),
                        format!("{}/{}", s.bytes_up, s.bytes_down),
                        s.recordings
                            .first()
                            .and_then(|r| r.sha256.as_deref())
                            .map_or_else(|| "-".to_owned(), |d| d[..16.min(d.len())].to_owned()),
                    ]
                })
                .collect::<Vec<_>>();
            table(
                &[
                    "ID",
                    "VENDOR",
                    "ASSET",
                    "KIND",
                    "START",
                    "END",
                    "BYTES UP/DOWN",
                    "DIGEST",
                ],
                &rows,
            );
        }
        SessionCommand::Show { id, json: as_json } => {
            let s = app.store.session(&id).await?;
            if as_json {
                return json(&s);
            }
            println!("session:   {}", s.id);
            println!("vendor:    {}", s.vendor);
            println!("asset:     {} ({})", s.asset, s.service);
            println!("kind:      {} {}", s.kind, s.detail);
            println!("grant:     #{}", s.grant_id);
            println!("from:      {}", s.client_addr);
            println!("started:   {}", format_time(s.started_at));
            println!(
                "ended:     {}",
                s.ended_at.map_or_else(|| "live".to_owned(), format_time)
            );
            println!("end:       {}", or_dash(s.end_reason.as_deref()));
            println!("bytes:     {} up, {} down", s.bytes_up, s.bytes_down);
            for r in &s.recordings {
                println!(
                    "recording: {} {} sha256 {}",
                    r.format,
                    r.path,
                    or_dash(r.sha256.as_deref())
                );
            }
        }
        SessionCommand::Play {
            id,
            speed,
            max_wait,
        } => {
            if !(speed.is_finite() && speed > 0.0) {
                bail!("--speed must be a number above 0, e.g. 2 or 0.5");
            }
            if !(max_wait.is_finite() && max_wait >= 0.0) {
                bail!("--max-wait must be 0 or more seconds");
            }
            let s = app.store.session(&id).await?;
            let r = terminal_recording(&id, &s.kind, &s.recordings)?.clone();
            check_digest(&r)?;
            let pace = Pace { speed, max_wait };
            tokio::task::spawn_blocking(move || play(&r, pace))
                .await
                .context("the player stopped")??;
        }
        SessionCommand::Export {
            id,
            output,
            raw,
            stream,
        } => {
            let s = app.store.session(&id).await?;
            let r = terminal_recording(&id, &s.kind, &s.recordings)?;
            check_digest(r)?;
            match (r.format.as_str(), raw) {
                (RecordingFormat::ASCIICAST, false) => export_cast(r, &output)?,
                (RecordingFormat::ASCIICAST, true) => bail!(
                    "session {id} ran with a terminal and is recorded as asciicast, which keeps text, not \
                     raw bytes; export it without --raw"
                ),
                _ => export_exec(r, &output, raw.then_some(stream))?,
            }
            println!(
                "Session {id} exported to {} (recording sha256 {}).",
                output.display(),
                r.sha256.as_deref().unwrap_or("-")
            );
        }
        SessionCommand::Verify { id } => {
            let s = app.store.session(&id).await?;
            if s.recordings.is_empty() {
                bail!("session {id} has no recordings");
            }
            for r in &s.recordings {
                check_digest(r)?;
                println!(
                    "{} {}: intact (sha256 {})",
                    r.format,
                    r.path,
                    r.sha256.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

/// A session's terminal recording (asciicast or exec stream), or an error naming what it has instead.
fn terminal_recording<'a>(
    id: &str,
    kind: &str,
    recordings: &'a [RecordingRow],
) -> anyhow::Result<&'a RecordingRow> {
    recordings
        .iter()
        .find(|r| {
            r.format == RecordingFormat::ASCIICAST || r.format == RecordingFormat::EXEC_STREAM
        })
        .with_context(|| {
            format!("session {id} has no terminal recording (kind {kind}); see `session show {id}`")
        })
}

/// How `session play` paces events.
#[derive(Debug, Clone, Copy)]
struct Pace {
    speed: f64,
    max_wait: f64,
}

impl Pace {
    /// Sleeps until an event recorded at `at` seconds is due, given the last one was at `*last`.
    fn wait(&self, last: &mut f64, at: f64) {
        let gap = ((at - *last) / self.speed).clamp(0.0, self.max_wait);
        *last = at.max(*last);
        if gap > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(gap));
        }
    }
}

/// Plays a terminal recording to stdout (an exec's stderr to stderr; markers to stderr), then checks
/// the digest over the bytes it read, so a file altered after the first check is still caught.
fn play(r: &RecordingRow, pace: Pace) -> anyhow::Result<()> {
    use std::io::Write as _;

    use chaperone_recorder::{CastReader, EventKind, ExecReader, FrameData};

    let file = File::open(&r.path).with_context(|| format!("opening {}", r.path))?;
    let mut input = BufReader::with_capacity(256 * 1024, Sha256Reader::new(file));
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut last = 0.0;
    let marker =
        |err: &mut std::io::StderrLock<'_>, label: &str| writeln!(err, "\r\n[marker: {label}]\r");
    let cut = if r.format == RecordingFormat::ASCIICAST {
        let mut reader =
            CastReader::new(&mut input).with_context(|| format!("reading {}", r.path))?;
        for event in reader.by_ref() {
            let event = event.with_context(|| format!("reading {}", r.path))?;
            pace.wait(&mut last, event.time);
            match &event.kind {
                EventKind::Output(text) => out.write_all(text.as_bytes())?,
                EventKind::Marker(label) => marker(&mut err, label)?,
                EventKind::Input(_) | EventKind::Resize { .. } => {}
            }
            out.flush()?;
        }
        reader.truncated()
    } else {
        let mut reader = ExecReader::new(&mut input)
            .with_context(|| format!("reading {}", r.path))?
            .tolerate_cut_off();
        while let Some(frame) = reader
            .next_frame()
            .with_context(|| format!("reading {}", r.path))?
        {
            pace.wait(&mut last, frame.at.as_secs_f64());
            match frame.data {
                FrameData::Stdout(bytes) => {
                    out.write_all(bytes)?;
                    out.flush()?;
                }
                FrameData::Stderr(bytes) => err.write_all(bytes)?,
                FrameData::Marker(label) => marker(&mut err, label)?,
                FrameData::Input(_) | FrameData::Resize { .. } => {}
            }
        }
        reader.cut_off().is_some()
    };
    let actual = input
        .into_inner()
        .finish_hex()
        .with_context(|| format!("reading {}", r.path))?;
    vouched(r, &actual, "played")?;
    if cut {
        eprintln!(
            "note: recording {} ends inside an event (the bastion stopped while writing it): played up to \
             the last whole one",
            r.path
        );
    }
    Ok(())
}

/// Writes an exec recording's .cast (`raw` None) or one stream's exact bytes to a new file (mode 0600,
/// never replacing one). The digest is checked again over the very bytes converted, so a file altered
/// after `check_digest` is caught too; on any error after creating it, the output is removed.
fn export_exec(r: &RecordingRow, output: &Path, raw: Option<Stream>) -> anyhow::Result<()> {
    use chaperone_recorder::Error as RecError;
    let file = File::open(&r.path).with_context(|| format!("opening {}", r.path))?;
    let mut input = BufReader::with_capacity(256 * 1024, Sha256Reader::new(file));
    let converted = match raw {
        None => match chaperone_recorder::exec_to_cast(&mut input, output) {
            // Nothing was created, so nothing to remove (the file may be someone else's).
            Err(e @ RecError::Create { .. }) => return Err(e.into()),
            other => other.map(|(_, cut_off)| cut_off),
        },
        Some(stream) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let out = options
                .open(output)
                .with_context(|| format!("creating {}", output.display()))?;
            let mut out = BufWriter::with_capacity(256 * 1024, out);
            let stream = match stream {
                Stream::Stdout => OutputStream::Stdout,
                Stream::Stderr => OutputStream::Stderr,
            };
            chaperone_recorder::exec_raw(&mut input, stream, &mut out).and_then(|exported| {
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(exported.cut_off)
            })
        }
    };
    let mut cut_off = None;
    let result = converted
        .with_context(|| format!("converting {}", r.path))
        .and_then(|cut| {
            cut_off = cut;
            input
                .into_inner()
                .finish_hex()
                .with_context(|| format!("reading {}", r.path))
        })
        .and_then(|actual| vouched(r, &actual, "exported"));
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    } else if let Some(cut) = cut_off {
        eprintln!(
            "note: recording {} ends inside a frame at byte {} (the bastion stopped while writing it): \
             exported up to the last whole frame",
            r.path, cut.offset
        );
    }
    result
}

/// Writes an asciicast recording to a new file (mode 0600), checking the digest over the very bytes
/// written. A recording cut off inside its last line (the bastion stopped while writing it) is exported
/// up to the last whole event, with a marker saying so, so that players accept it.
fn export_cast(r: &RecordingRow, output: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(&r.path).with_context(|| format!("reading {}", r.path))?;
    vouched(r, &Sha256Reader::new(&bytes[..]).finish_hex()?, "exported")?;
    match whole_events(&bytes) {
        None => super::init::write_new(output, &bytes, 0o600)?,
        Some((keep, last_at)) => {
            let mut out = bytes[..keep].to_vec();
            let marker = serde_json::json!([
                last_at,
                "m",
                format!(
                    "the recording ends here, cut off inside an event at byte {keep}: the bastion stopped while writing it"
                )
            ]);
            out.extend_from_slice(marker.to_string().as_bytes());
            out.push(b'\n');
            super::init::write_new(output, &out, 0o600)?;
            eprintln!(
                "note: recording {} ends inside an event at byte {keep} (the bastion stopped while writing it): \
                 exported up to the last whole event",
                r.path
            );
        }
    }
    Ok(())
}

/// For an asciicast file that does not end with a whole line: how many bytes are whole lines, and the
/// time of the last whole event (0 when only the header is whole). `None` when the file is whole.
fn whole_events(bytes: &[u8]) -> Option<(usize, f64)> {
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return None;
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last_line = bytes[..keep.saturating_sub(1)]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let last_at = serde_json::from_slice::<serde_json::Value>(last_line)
        .ok()
        .and_then(|v| v.get(0).and_then(serde_json::Value::as_f64))
        .unwrap_or(0.0);
    Some((keep, last_at))
}

/// Compares the SHA-256 of the bytes just `done` (played, exported) with the one the audit log vouches
/// for, so a file altered after [`check_digest`] is caught too.
fn vouched(r: &RecordingRow, actual: &str, done: &str) -> anyhow::Result<()> {
    if r.sha256.as_deref() != Some(actual) {
        bail!(
            "recording {} was ALTERED while it was {done}: sha256 {actual}, the audit log vouches for {}",
            r.path,
            r.sha256.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Recomputes a recording's SHA-256 and compares it with the stored one.
fn check_digest(r: &RecordingRow) -> anyhow::Result<()> {
    let Some(expected) = r.sha256.as_deref() else {
        bail!(
            "recording {} was never closed (session live, or the bastion stopped mid-session): no digest to check",
            r.path
        );
    };
    let actual =
        chaperone_recorder::sha256_file(&r.path).with_context(|| format!("reading {}", r.path))?;
    if actual != expected {
        bail!(
            "recording {} was ALTERED: sha256 {actual}, the audit log vouches for {expected}",
            r.path
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::whole_events;

    #[test]
    fn a_cast_cut_inside_its_last_line_keeps_the_whole_events() {
        let header = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n";
        let whole = [&header[..], b"[0.5, \"o\", \"a\"]\n[1.25, \"o\", \"b\"]\n"].concat();
        assert_eq!(whole_events(&whole), None);
        let cut = [&whole[..], b"[2.0, \"o\", \"par"].concat();
        assert_eq!(whole_events(&cut), Some((whole.len(), 1.25)));
        let only_header = [&header[..], b"[0.1, \"o"].concat();
        assert_eq!(whole_events(&only_header), Some((header.len(), 0.0)));
        assert_eq!(whole_events(b"{\"version\""), Some((0, 0.0)));
    }
}
