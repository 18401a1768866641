//! `chaperone session …`: what vendors did, and the recordings that prove it.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chaperone_recorder::{OutputStream, Sha256Reader, TerminalFilter};
use clap::{Subcommand, ValueEnum};

use super::display::esc;
use super::output::{json, or_dash, table};
use crate::app::App;
use crate::audit::Action;
use crate::clock::format_time;
use crate::evidence::retention::{HoldError, Keeping, keeping};
use crate::evidence::{Broken, Evidence, Integrity, Proof, ProveError, Unvouched, prove};
use crate::identity::os_actor;
use crate::model::{RecordingRow, SessionRow};
use crate::recording::RecordingFormat;

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions, newest first; the filters combine (as the web page's session history).
    List {
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Sessions of this vendor.
        #[arg(long)]
        vendor: Option<String>,
        /// Sessions of vendors of this organisation.
        #[arg(long)]
        org: Option<String>,
        /// Sessions on this asset.
        #[arg(long)]
        asset: Option<String>,
        /// Sessions on assets of this zone.
        #[arg(long)]
        zone: Option<String>,
        /// shell, exec, sftp (scp), tunnel or jump.
        #[arg(long)]
        kind: Option<String>,
        /// Started on or after: a day (2026-11-01), a UTC time (2026-11-01T08:30) or unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Started before; a day counts whole (--until 2026-11-30 includes the 30th).
        #[arg(long)]
        until: Option<String>,
        /// How it ended: closed, expired, revoked, terminated, budget, recording, disabled, idle, lost,
        /// shutdown, or live.
        #[arg(long)]
        ended: Option<String>,
        /// Words typed or shown in its recordings, in this order ("rm -rf": the words rm, rf).
        #[arg(long)]
        text: Option<String>,
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
        /// Write the exact bytes of one stream of an exec recording, not a .cast.
        #[arg(long)]
        raw: bool,
        /// With --raw: which stream.
        #[arg(long, value_enum, default_value_t = Stream::Stdout, requires = "raw")]
        stream: Stream,
    },
    /// Check that a session's recordings still match the digests the audit log vouches for (the
    /// `session.end` or `recording.recovered` event, checked where it sits in the chain), not the
    /// digests their database rows claim.
    Verify { id: String },
    /// Place a legal hold on a session: its recordings are kept, whatever their retention, until
    /// released. Audited (session.hold).
    Hold {
        id: String,
        /// Why (a case, a request from counsel); required, audited.
        #[arg(long)]
        reason: String,
    },
    /// Release a session's legal hold: its recordings' retention applies again. Audited
    /// (session.release).
    Release {
        id: String,
        /// Why; required, audited.
        #[arg(long)]
        reason: String,
    },
    /// Play a session's terminal recording here, at the pace it was recorded. The digest the audit log
    /// vouches for is checked before and over the very bytes played. Sequences that act outside the
    /// screen (clipboard writes, window titles, hyperlinks, queries the terminal would answer, mouse and
    /// keyboard modes) are removed unless --raw; colours and cursor motion are kept.
    Play {
        id: String,
        /// Faster (2) or slower (0.5).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between two events in seconds (longer idle time is shortened); 0 plays at once.
        #[arg(long, default_value_t = 2.0)]
        max_wait: f64,
        /// Write the device's output exactly as recorded, every escape sequence included: only in a
        /// terminal you can close, for a device you trust.
        #[arg(long)]
        raw: bool,
    },
}

/// An exec program's stream, for `export --raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stream {
    Stdout,
    Stderr,
    /// What the vendor sent the program.
    Stdin,
}

pub async fn run(config: &Path, cmd: SessionCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    match cmd {
        SessionCommand::List {
            json: as_json,
            limit,
            vendor,
            org,
            asset,
            zone,
            kind,
            since,
            until,
            ended,
            text,
        } => {
            let query = chaperone_web_approval::HistoryQuery {
                vendor,
                org,
                asset,
                zone,
                kind,
                since,
                until,
                ended,
                text,
                page: None,
            };
            let filter = crate::history::filter(&query).map_err(|why| anyhow::anyhow!(why))?;
            let mut sessions: Vec<SessionRow> = app
                .store
                .session_history(&filter, limit.clamp(1, 100_000), 0)
                .await?
                .into_iter()
                .map(|h| h.session)
                .collect();
            // Who listed or searched which sessions is audited before they are shown, as on the web
            // page (the list shows commands and addresses; each run, there being no refresh here).
            let mut tx = app.store.begin().await?;
            tx.audit(
                crate::audit::AuditEvent::new(
                    crate::identity::os_actor(),
                    Action::RecordingSearch,
                    "sessions",
                    serde_json::json!({"text": query.text, "filters": query.pairs().into_iter().collect::<std::collections::BTreeMap<_, _>>(), "found": sessions.len(), "via": "cli"}),
                ),
                app.clock.now(),
            )
            .await?;
            tx.commit("recording.search").await?;
            let mut evidence = Vec::with_capacity(sessions.len());
            for s in &mut sessions {
                evidence.push(crate::evidence::evidence(&app.store, s).await?);
            }
            if as_json {
                return json(&with_evidence(&app, &sessions, &evidence)?);
            }
            let rows = sessions
                .iter()
                .zip(&evidence)
                .map(|(s, ev)| {
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
                            .zip(ev.first())
                            .map_or_else(|| "-".to_owned(), |(r, e)| Status::of(r, e).short()),
                        kept_short(&app, s),
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
                    "KEPT UNTIL",
                ],
                &rows,
            );
        }
        SessionCommand::Show { id, json: as_json } => {
            let mut s = app.store.session(&id).await?;
            let evidence = crate::evidence::evidence(&app.store, &mut s).await?;
            // Every look at a session is on record before it is shown, as the page's is.
            crate::evidence::audit_view(
                &app.store,
                &os_actor(),
                &s.id,
                None,
                "show",
                "cli",
                app.clock.now(),
            )
            .await?;
            if as_json {
                let mut shown = with_evidence(
                    &app,
                    std::slice::from_ref(&s),
                    std::slice::from_ref(&evidence),
                )?;
                let mut shown = shown.pop().unwrap_or_default();
                shown["looked"] = serde_json::Value::Array(
                    looks(&app, &s.id)
                        .await?
                        .iter()
                        .map(|e| {
                            serde_json::json!({"seq": e.seq, "at": e.at, "actor": e.actor,
                                "action": e.action, "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or_default()})
                        })
                        .collect(),
                );
                return json(&shown);
            }
            println!("session:   {}", esc(&s.id));
            println!("vendor:    {}", esc(&s.vendor));
            println!("asset:     {} ({})", esc(&s.asset), esc(&s.service));
            println!("kind:      {} {}", esc(&s.kind), esc(&s.detail));
            println!("grant:     #{}", s.grant_id);
            println!("from:      {}", esc(&s.client_addr));
            println!("started:   {}", format_time(s.started_at));
            println!(
                "ended:     {}",
                s.ended_at.map_or_else(|| "live".to_owned(), format_time)
            );
            println!("end:       {}", esc(&or_dash(s.end_reason.as_deref())));
            println!("bytes:     {} up, {} down", s.bytes_up, s.bytes_down);
            println!("kept:      {}", kept_long(&app, &s));
            for (r, ev) in s.recordings.iter().zip(&evidence) {
                println!(
                    "recording: {} {} {}",
                    esc(&r.format),
                    esc(&r.path),
                    Status::of(r, ev).long(),
                );
            }
            // Who looked: every play, export and bundle of it, from the audit log.
            let mut looked = looks(&app, &s.id).await?;
            if looked.len() > LOOKS_SHOWN as usize {
                looked.remove(0);
                println!(
                    "looked:    (only the newest {LOOKS_SHOWN} are listed; `chaperone audit export` has them all)"
                );
            }
            for e in looked {
                let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
                let word = |k: &str| {
                    detail[k]
                        .as_str()
                        .map_or_else(|| "-".to_owned(), |t| esc(t).to_string())
                };
                println!(
                    "looked:    {} {} {} ({} via {}, audit event {})",
                    format_time(e.at),
                    esc(&e.actor),
                    esc(&e.action),
                    if e.action == crate::evidence::bundle::EXPORT.as_str() {
                        "bundle".to_owned()
                    } else {
                        word("how")
                    },
                    word("via"),
                    e.seq
                );
            }
        }
        SessionCommand::Play {
            id,
            speed,
            max_wait,
            raw,
        } => {
            if !(speed.is_finite() && speed > 0.0) {
                bail!("--speed must be a number above 0, e.g. 2 or 0.5");
            }
            if !(max_wait.is_finite() && (0.0..=MAX_WAIT_LIMIT).contains(&max_wait)) {
                bail!("--max-wait must be from 0 to {MAX_WAIT_LIMIT} seconds");
            }
            let mut s = app.store.session(&id).await?;
            let evidence = crate::evidence::evidence(&app.store, &mut s).await?;
            let (r, ev) = terminal_recording(&id, &s.kind, &s.recordings, &evidence)?;
            let (r, ev) = (r.clone(), ev.clone());
            // Who looked is on record before a byte is shown.
            crate::evidence::audit_view(
                &app.store,
                &os_actor(),
                &s.id,
                Some(r.id),
                if raw { "play --raw" } else { "play" },
                "cli",
                app.clock.now(),
            )
            .await?;
            let dir = app.config.recording.dir.clone();
            let pace = Pace { speed, max_wait };
            tokio::task::spawn_blocking(move || {
                let proof = prove(&dir, &r, &ev)?;
                play(&r, &proof, pace, raw)
            })
            .await
            .context("the player stopped")??;
        }
        SessionCommand::Export {
            id,
            output,
            raw,
            stream,
        } => {
            let mut s = app.store.session(&id).await?;
            let evidence = crate::evidence::evidence(&app.store, &mut s).await?;
            let (r, ev) = terminal_recording(&id, &s.kind, &s.recordings, &evidence)?;
            if r.format == RecordingFormat::ASCIICAST && raw {
                bail!(
                    "session {id} ran with a terminal and is recorded as asciicast, which keeps text, not \
                     raw bytes; export it without --raw"
                );
            }
            crate::evidence::audit_view(
                &app.store,
                &os_actor(),
                &s.id,
                Some(r.id),
                if raw { "export --raw" } else { "export" },
                "cli",
                app.clock.now(),
            )
            .await?;
            let proof = prove(&app.config.recording.dir, r, ev)?;
            let digest = proof.sha256.clone();
            if r.format == RecordingFormat::ASCIICAST {
                export_cast(r, proof, &output)?;
            } else {
                export_exec(r, proof, &output, raw.then_some(stream))?;
            }
            // A recording leaving the bastion is an export (ATNA 110106): on record before it is said.
            let mut tx = app.store.begin().await?;
            tx.audit(
                crate::audit::AuditEvent::new(
                    crate::identity::os_actor(),
                    crate::audit::Action::SessionExport,
                    format!("session:{id}"),
                    serde_json::json!({"output": output.display().to_string(), "recording_sha256": digest, "raw": raw}),
                ),
                app.clock.now(),
            )
            .await?;
            tx.commit("session.export").await?;
            println!(
                "Session {id} exported to {} (recording sha256 {digest}, as the audit log vouches).",
                output.display(),
            );
        }
        SessionCommand::Hold { id, reason } => hold(&app, &id, &reason, true).await?,
        SessionCommand::Release { id, reason } => hold(&app, &id, &reason, false).await?,
        SessionCommand::Verify { id } => {
            let mut s = app.store.session(&id).await?;
            let evidence = crate::evidence::evidence(&app.store, &mut s).await?;
            if s.recordings.is_empty() {
                bail!("session {id} has no recordings");
            }
            let mut failed = 0;
            for (r, ev) in s.recordings.iter().zip(&evidence) {
                let proved = prove(&app.config.recording.dir, r, ev);
                let word = Integrity::of(&proved).word();
                match proved {
                    Ok(proof) => {
                        println!(
                            "{} {}: intact (sha256 {}, vouched for by audit event {})",
                            esc(&r.format),
                            esc(&r.path),
                            proof.sha256,
                            proof.seq
                        );
                        if let Some(moved) = moved(r, ev) {
                            println!("  note: {moved}");
                        }
                        if ev
                            .voucher()
                            .is_some_and(crate::evidence::Voucher::recovered)
                        {
                            println!("  note:{RECOVERED_NOTE}");
                        }
                    }
                    // Gone by policy, as the audit log records: nothing to check, nothing wrong.
                    Err(e @ ProveError::Deleted { .. }) => {
                        println!("{} {}: deleted: {e}", esc(&r.format), esc(&r.path));
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("{} {}: {word}: {e:#}", esc(&r.format), esc(&r.path));
                    }
                }
            }
            if failed > 0 {
                bail!(
                    "session {id}: {failed} of {} recording(s) not proved intact; `chaperone audit verify` \
                     checks the whole audit chain",
                    s.recordings.len()
                );
            }
        }
    }
    Ok(())
}

/// A recording's integrity as the audit log tells it, for `session list` and `show` (which read no
/// file: `session verify` does).
#[derive(Debug)]
enum Status<'a> {
    /// An event vouches for the digest and the row agrees.
    Vouched {
        seq: i64,
        sha256: &'a str,
        /// Vouched for by a node's sweep after the writer died (`recording.recovered`).
        recovered: bool,
    },
    /// An event vouches for one digest and the row says another (or none).
    RowAltered {
        seq: i64,
        vouched: &'a str,
        row: Option<&'a str>,
    },
    Unvouched(Unvouched, Option<&'a str>),
    Broken(&'a Broken),
    /// Retention deleted the file, as audit event `seq` records.
    Deleted {
        seq: i64,
        at: i64,
    },
    /// The row says retention deleted the file, but no audit event records a deletion.
    DeletionUnvouched {
        at: i64,
    },
}

/// What a digest vouched for by `recording.recovered` proves, said wherever it shows.
const RECOVERED_NOTE: &str = ", recovered: its writer stopped (a crash) and a node's sweep digested the \
     file as it found it then, not as the recorder wrote it";

impl<'a> Status<'a> {
    fn of(r: &'a RecordingRow, ev: &'a Evidence) -> Self {
        if let Evidence::Vouched(v) = ev {
            match (v.deleted, r.deleted_at) {
                (Some(d), _) => {
                    return Status::Deleted {
                        seq: d.seq,
                        at: d.at,
                    };
                }
                (None, Some(at)) => return Status::DeletionUnvouched { at },
                (None, None) => {}
            }
        }
        match ev {
            Evidence::Vouched(v) if r.sha256.as_deref() == Some(v.sha256.as_str()) => {
                Status::Vouched {
                    seq: v.seq,
                    sha256: &v.sha256,
                    recovered: v.recovered(),
                }
            }
            Evidence::Vouched(v) => Status::RowAltered {
                seq: v.seq,
                vouched: &v.sha256,
                row: r.sha256.as_deref(),
            },
            Evidence::Unvouched(u) => Status::Unvouched(*u, r.sha256.as_deref()),
            Evidence::Broken(b) => Status::Broken(b),
        }
    }

    /// For a table cell.
    fn short(&self) -> String {
        match self {
            Status::Vouched { sha256, .. } => sha256.chars().take(16).collect(),
            Status::RowAltered { .. } => "ALTERED(row)".into(),
            Status::Unvouched(Unvouched::Live, _) => "live".into(),
            Status::Unvouched(Unvouched::NotDigested, _) => "not-digested".into(),
            Status::Broken(_) => "ALTERED(audit)".into(),
            Status::Deleted { .. } => "deleted".into(),
            Status::DeletionUnvouched { .. } => "ALTERED(row)".into(),
        }
    }

    /// For `session show`.
    fn long(&self) -> String {
        match self {
            Status::Vouched {
                seq,
                sha256,
                recovered,
            } => {
                format!(
                    "sha256 {sha256} (vouched for by audit event {seq}{}; `session verify` checks the file)",
                    if *recovered { RECOVERED_NOTE } else { "" }
                )
            }
            Status::RowAltered { seq, vouched, row } => format!(
                "ALTERED: its row says sha256 {}, audit event {seq} vouches for {vouched}",
                esc(row.unwrap_or("-"))
            ),
            Status::Unvouched(why, row) => format!(
                "{}{}",
                why,
                row.map(|d| format!(
                    " (its row claims sha256 {}, which nothing vouches for)",
                    esc(d)
                ))
                .unwrap_or_default()
            ),
            Status::Broken(b) => format!("ALTERED audit log: {b}"),
            Status::Deleted { seq, at } => format!(
                "DELETED by retention on {} (audit event {seq}); its digest and audit events remain",
                format_time(*at)
            ),
            Status::DeletionUnvouched { at } => format!(
                "ALTERED: its row says retention deleted it on {}, but no audit event records a deletion",
                format_time(*at)
            ),
        }
    }
}

/// Places (`on`) or releases a legal hold, audited with the reason.
async fn hold(app: &App, id: &str, reason: &str, on: bool) -> anyhow::Result<()> {
    let actor = os_actor();
    match crate::evidence::retention::set_hold(
        &app.store,
        app.clock.now(),
        (&actor, id),
        reason,
        on,
    )
    .await
    {
        Ok(()) => {}
        Err(HoldError::Reason(why)) => {
            bail!("--reason: {why} (why the session is held or released)")
        }
        Err(HoldError::Store(e)) => return Err(e.into()),
        Err(e) => bail!("{}", esc(&e.to_string())),
    }
    let s = app.store.session(id).await?;
    if on {
        println!("Session {id} is on legal hold: its recordings are kept until it is released.");
        let deleted: Vec<_> = s
            .recordings
            .iter()
            .filter_map(|r| r.deleted_at.map(|at| (r, at)))
            .collect();
        for (r, at) in deleted {
            println!(
                "note: recording {} was already deleted by retention on {} (its digest and audit events remain)",
                esc(&r.path),
                format_time(at)
            );
        }
    } else {
        println!("Session {id} is released: {}.", kept_long(app, &s));
    }
    Ok(())
}

/// The audit events that say who looked at session `id`'s recordings (played, exported, downloaded a
/// bundle of them), oldest first: the newest [`LOOKS_SHOWN`] and one more (which says some were left
/// out), since anyone who may look adds one.
async fn looks(app: &App, id: &str) -> anyhow::Result<Vec<crate::audit::AuditRow>> {
    Ok(app
        .store
        .latest_audit_events_about(
            &format!("session:{id}"),
            &[
                crate::evidence::VIEW.as_str(),
                crate::evidence::bundle::EXPORT.as_str(),
            ],
            LOOKS_SHOWN + 1,
        )
        .await?)
}

/// How many of a session's views and exports `session show` lists.
const LOOKS_SHOWN: i64 = 1000;

/// How long a session's recordings are kept, for a table cell.
fn kept_short(app: &App, s: &SessionRow) -> String {
    if !s.recordings.is_empty() && s.recordings.iter().all(|r| r.deleted_at.is_some()) {
        return "deleted".into();
    }
    match keeping(&app.config.recording, s) {
        Keeping::Live => "-".into(),
        Keeping::Forever => "forever".into(),
        Keeping::Until(t) => format_time(t),
        Keeping::Held { .. } => "held".into(),
    }
}

/// How long a session's recordings are kept, for `session show`.
fn kept_long(app: &App, s: &SessionRow) -> String {
    let retain = app.config.recording.retain_in(&s.zone);
    let rule = format!("retain {retain} (zone {})", esc(&s.zone));
    match keeping(&app.config.recording, s) {
        Keeping::Live => format!("from its end, {rule}"),
        Keeping::Forever => format!("forever ({rule})"),
        Keeping::Until(t) if t <= app.clock.now() => {
            format!(
                "until {} ({rule}): past, deleted by the next retention pass",
                format_time(t)
            )
        }
        Keeping::Until(t) => format!("until {} ({rule})", format_time(t)),
        Keeping::Held { hold, until } => format!(
            "on legal hold since {} by {}: {}; until released ({}{rule})",
            format_time(hold.at),
            esc(&hold.by),
            esc(&hold.reason),
            until.map_or_else(String::new, |t| format!("else until {}, ", format_time(t))),
        ),
    }
}

/// When the audit log recorded the file at another path than its row names.
fn moved(r: &RecordingRow, ev: &Evidence) -> Option<String> {
    let recorded = ev.voucher()?.path.as_deref()?;
    (recorded != r.path).then(|| {
        format!(
            "its row names {}, the audit log recorded it at {} (the content is what was vouched for)",
            esc(&r.path),
            esc(recorded)
        )
    })
}

/// Sessions as JSON, each recording with what the audit log says about it under `evidence`:
/// `{"status": "vouched"|"altered"|"live"|"not-digested"|"deleted", "audit_seq", "sha256", "reason"}`, and how
/// long its recordings are kept under `retention`: `{"kept_until": UNIX|null, "held": bool}`.
fn with_evidence(
    app: &App,
    sessions: &[SessionRow],
    evidence: &[Vec<Evidence>],
) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde_json::json;
    sessions
        .iter()
        .zip(evidence)
        .map(|(s, ev)| {
            let mut v = serde_json::to_value(s)?;
            v["retention"] = match keeping(&app.config.recording, s) {
                Keeping::Live => json!({"kept_until": null, "held": false, "live": true}),
                Keeping::Forever => json!({"kept_until": null, "held": false}),
                Keeping::Until(t) => json!({"kept_until": t, "held": false}),
                Keeping::Held { until, .. } => json!({"kept_until": until, "held": true}),
            };
            if let Some(recs) = v.get_mut("recordings").and_then(|r| r.as_array_mut()) {
                for ((rec, r), e) in recs.iter_mut().zip(&s.recordings).zip(ev) {
                    rec["evidence"] = match Status::of(r, e) {
                        Status::Vouched {
                            seq,
                            sha256,
                            recovered,
                        } => {
                            json!({"status": "vouched", "audit_seq": seq, "sha256": sha256,
                                   "recovered": recovered})
                        }
                        Status::RowAltered { seq, vouched, .. } => json!({
                            "status": "altered", "audit_seq": seq, "sha256": vouched,
                            "reason": "the recordings row disagrees with the digest the audit log vouches for"
                        }),
                        Status::Unvouched(Unvouched::Live, _) => json!({"status": "live"}),
                        Status::Unvouched(Unvouched::NotDigested, _) => {
                            json!({"status": "not-digested", "reason": Unvouched::NotDigested.to_string()})
                        }
                        Status::Broken(b) => json!({"status": "altered", "reason": b.to_string()}),
                        Status::Deleted { seq, at } => {
                            json!({"status": "deleted", "audit_seq": seq, "deleted_at": at})
                        }
                        Status::DeletionUnvouched { .. } => json!({
                            "status": "altered",
                            "reason": "the recordings row says it was deleted, but no audit event records a deletion"
                        }),
                    };
                }
            }
            Ok(v)
        })
        .collect()
}

/// A session's terminal recording (asciicast or exec stream) with its evidence, or an error naming what
/// it has instead.
fn terminal_recording<'a>(
    id: &str,
    kind: &str,
    recordings: &'a [RecordingRow],
    evidence: &'a [Evidence],
) -> anyhow::Result<(&'a RecordingRow, &'a Evidence)> {
    // A session the audit log cannot be believed about is refused as such (its recording's row may be
    // gone, and with it the format), never as a session without a terminal recording.
    let broken = |(_, e): &(&RecordingRow, &Evidence)| matches!(e, Evidence::Broken(_));
    let terminal = |(r, _): &(&RecordingRow, &Evidence)| {
        r.format == RecordingFormat::ASCIICAST || r.format == RecordingFormat::EXEC_STREAM
    };
    let mut pairs = recordings.iter().zip(evidence);
    pairs
        .clone()
        .find(broken)
        .or_else(|| pairs.find(terminal))
        .with_context(|| {
            format!(
                "session {id} has no terminal recording (kind {}); see `session show {id}`",
                esc(kind)
            )
        })
}

/// The longest `--max-wait` taken (a day): a pause is a `Duration`, which has a bound.
const MAX_WAIT_LIMIT: f64 = 86_400.0;

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

/// Where `session play` writes one stream of a recording: through a [`TerminalFilter`] unless `--raw`.
struct Screen<W: std::io::Write> {
    out: W,
    filter: Option<TerminalFilter>,
    buf: Vec<u8>,
}

impl<W: std::io::Write> Screen<W> {
    fn new(out: W, raw: bool) -> Self {
        Screen {
            out,
            filter: (!raw).then(TerminalFilter::new),
            buf: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.filter {
            None => self.out.write_all(bytes)?,
            Some(f) => {
                self.buf.clear();
                f.push(bytes, &mut self.buf);
                self.out.write_all(&self.buf)?;
            }
        }
        self.out.flush()
    }

    /// Text of our own (a marker line), already escaped: it must not disturb a sequence the filter holds
    /// across events, so it goes straight out.
    fn note(&mut self, line: &str) -> std::io::Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }

    /// Ends the stream (turning back the modes the played output changed); how many controls were
    /// removed.
    fn finish(&mut self) -> std::io::Result<u64> {
        let Some(f) = &mut self.filter else {
            return Ok(0);
        };
        self.buf.clear();
        f.finish(&mut self.buf);
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(f.removed())
    }
}

/// Plays a proved terminal recording to stdout (an exec's stderr to stderr; markers to stderr), filtered
/// unless `raw`, then checks the digest over the bytes it read, so a file altered after [`prove`] is
/// still caught.
fn play(r: &RecordingRow, proof: &Proof, pace: Pace, raw: bool) -> anyhow::Result<()> {
    let mut out = Screen::new(std::io::stdout().lock(), raw);
    let mut err = Screen::new(std::io::stderr().lock(), raw);
    let played = play_events(r, &proof.file, pace, &mut out, &mut err);
    // The terminal is given back as it was found even when playing stopped half-way.
    let removed = out.finish()? + err.finish()?;
    let (actual, cut) = played?;
    proof.confirm(r, &actual, "played")?;
    if cut {
        eprintln!(
            "note: recording {} ends inside an event (the bastion stopped while writing it): played up to \
             the last whole one",
            esc(&r.path)
        );
    }
    if removed > 0 {
        eprintln!(
            "note: {removed} terminal control sequence(s) that act outside the screen (clipboard, titles, \
             links, queries the terminal would answer, keyboard and mouse modes) were not played; --raw \
             plays everything"
        );
    }
    Ok(())
}

/// The events of a recording, paced; returns the SHA-256 of the bytes read and whether the file was cut
/// off inside its last event.
fn play_events<O: std::io::Write, E: std::io::Write>(
    r: &RecordingRow,
    file: &File,
    pace: Pace,
    out: &mut Screen<O>,
    err: &mut Screen<E>,
) -> anyhow::Result<(String, bool)> {
    use chaperone_recorder::{CastReader, EventKind, ExecReader, FrameData};

    let path = esc(&r.path);
    let mut input = BufReader::with_capacity(256 * 1024, Sha256Reader::new(file));
    let mut last = 0.0;
    let marker =
        |err: &mut Screen<E>, label: &str| err.note(&format!("\r\n[marker: {}]\r\n", esc(label)));
    let cut = if r.format == RecordingFormat::ASCIICAST {
        let mut reader = CastReader::new(&mut input).with_context(|| format!("reading {path}"))?;
        for event in reader.by_ref() {
            let event = event.with_context(|| format!("reading {path}"))?;
            pace.wait(&mut last, event.time);
            match &event.kind {
                EventKind::Output(text) => out.write(text.as_bytes())?,
                EventKind::Marker(label) => marker(err, label)?,
                EventKind::Input(_) | EventKind::Resize { .. } => {}
            }
        }
        reader.truncated()
    } else {
        let mut reader = ExecReader::new(&mut input)
            .with_context(|| format!("reading {path}"))?
            .tolerate_cut_off();
        while let Some(frame) = reader
            .next_frame()
            .with_context(|| format!("reading {path}"))?
        {
            pace.wait(&mut last, frame.at.as_secs_f64());
            match frame.data {
                FrameData::Stdout(bytes) => out.write(bytes)?,
                FrameData::Stderr(bytes) => err.write(bytes)?,
                FrameData::Marker(label) => marker(err, label)?,
                FrameData::Input(_) | FrameData::Resize { .. } => {}
            }
        }
        reader.cut_off().is_some()
    };
    let actual = input
        .into_inner()
        .finish_hex()
        .with_context(|| format!("reading {path}"))?;
    Ok((actual, cut))
}

/// Writes an exec recording's .cast (`raw` None) or one stream's exact bytes to a new file (mode 0600,
/// never replacing one). The digest is checked again over the very bytes converted, so a file altered
/// after [`prove`] is caught too; on any error after creating it, the output is removed.
fn export_exec(
    r: &RecordingRow,
    proof: Proof,
    output: &Path,
    raw: Option<Stream>,
) -> anyhow::Result<()> {
    use chaperone_recorder::Error as RecError;
    let path = esc(&r.path);
    let mut input = BufReader::with_capacity(256 * 1024, Sha256Reader::new(&proof.file));
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
                Stream::Stdin => OutputStream::Stdin,
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
        .with_context(|| format!("converting {path}"))
        .and_then(|cut| {
            cut_off = cut;
            input
                .into_inner()
                .finish_hex()
                .with_context(|| format!("reading {path}"))
        })
        .and_then(|actual| Ok(proof.confirm(r, &actual, "exported")?));
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    } else if let Some(cut) = cut_off {
        eprintln!(
            "note: recording {path} ends inside a frame at byte {} (the bastion stopped while writing it): \
             exported up to the last whole frame",
            cut.offset
        );
    }
    result
}

/// Writes an asciicast recording to a new file (mode 0600), checking the digest over the very bytes
/// written. A recording cut off inside its last line (the bastion stopped while writing it) is exported
/// up to the last whole event, with a marker saying so, so that players accept it.
fn export_cast(r: &RecordingRow, proof: Proof, output: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let path = esc(&r.path);
    let mut bytes = Vec::new();
    (&proof.file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {path}"))?;
    proof.confirm(r, &Sha256Reader::new(&bytes[..]).finish_hex()?, "exported")?;
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
                "note: recording {path} ends inside an event at byte {keep} (the bastion stopped while writing it): \
                 exported up to the last whole event"
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
