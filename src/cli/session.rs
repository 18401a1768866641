//! `chaperone session …`: what vendors did, and the recordings that prove it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use clap::Subcommand;

use super::output::{json, or_dash, table};
use crate::app::App;
use crate::clock::format_time;
use crate::model::RecordingRow;

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
    Export {
        id: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check that a session's recordings still match the digests the audit log vouches for.
    Verify { id: String },
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
        SessionCommand::Export { id, output } => {
            let s = app.store.session(&id).await?;
            let Some(r) = s.recordings.iter().find(|r| r.format == "asciicast-v2") else {
                bail!(
                    "session {id} has no terminal recording (kind {}); see `session show {id}`",
                    s.kind
                );
            };
            check_digest(r)?;
            let bytes = std::fs::read(&r.path).with_context(|| format!("reading {}", r.path))?;
            super::init::write_new(&output, &bytes, 0o600)?;
            println!(
                "Session {id} exported to {} (sha256 {}).",
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
