//! `chaperone session …`: what vendors did, and the recordings that prove it.

use std::path::Path;

use clap::Subcommand;

use super::output::{json, or_dash, table};
use crate::app::App;
use crate::clock::format_time;

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
    }
    Ok(())
}
