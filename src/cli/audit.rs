//! `chaperone audit verify|export|seal`: check the hash chain and its head's seal; export it for a SIEM,
//! as JSON lines or as RFC 5424 syslog lines, whole or from a sequence number on (for a collector that
//! runs it repeatedly); seal a head found without its seal, once the log has been compared with its copy
//! kept outside.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use clap::{Subcommand, ValueEnum};

use crate::app::App;
use crate::audit::{AuditRow, ChainBreak, SealVerdict, Verifier};
use crate::clock::format_rfc3339;
use crate::store::{SealJudge, Store};

const PAGE: i64 = 1000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain and its head's seal; exits non-zero naming the first broken event, or
    /// saying the head does not carry its seal (then, with no node running, naming the head
    /// `audit seal` would take). A finding is appended as `audit.tamper`.
    Verify,
    /// Export the audit log.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Write to a file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Only events after this one: the `seq` of the last event a collector has, or `SEQ:HASH`
        /// with its `hash`, which refuses to go on if the log's event SEQ is not that one (a log
        /// restored from an older backup reuses sequence numbers for other events).
        #[arg(long, default_value = "0", value_parser = parse_after)]
        after: After,
        /// Export the rows as they are, although the chain head does not carry its seal or a row does
        /// not hold in the chain (to review them before `audit seal`). Without it only what holds up to
        /// the sealed head is exported, so a collector never takes in events written by someone without
        /// the secrets key. Printed to standard output it appends nothing to the log.
        #[arg(long)]
        unchecked: bool,
    },
    /// Seal the chain head again after `audit verify` found it without its seal (written by someone
    /// without the secrets key, or under another key). Only once the log, up to that head, agrees with
    /// the copy kept outside (SIEM, ATNA repository): sealing vouches for every event up to it. Every
    /// node must be stopped. Audited as `audit.sealed`.
    Seal {
        /// The head `audit verify` named, as `SEQ:HASH`: sealing refuses any other.
        #[arg(long, value_parser = parse_head)]
        head: After,
        /// The head carries a seal under this secrets key id, which was never the installation's
        /// (made up by someone without a key): replace it. Never for a key the other nodes hold.
        #[arg(long, value_parser = parse_key_id)]
        replacing_key: Option<String>,
    },
}

fn parse_key_id(text: &str) -> Result<String, String> {
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("{text:?} is not a secrets key id (16 hex digits)"))
    }
}

fn parse_head(text: &str) -> Result<After, String> {
    let head = parse_after(text)?;
    if head.hash.is_none() {
        return Err("give the head as SEQ:HASH, as `chaperone audit verify` prints it".into());
    }
    Ok(head)
}

/// Where an export starts ([`AuditCommand::Export`]'s `--after`).
#[derive(Debug, Clone)]
pub struct After {
    seq: i64,
    hash: Option<String>,
}

fn parse_after(text: &str) -> Result<After, String> {
    let (seq, hash) = match text.split_once(':') {
        Some((seq, hash)) => (seq, Some(hash)),
        None => (text, None),
    };
    let seq = seq
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| format!("{seq:?} is not a sequence number"))?;
    if let Some(h) = hash {
        if !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(format!("{h:?} is not an event's hash (64 hex digits)"));
        }
        if seq == 0 {
            return Err("there is no event 0 to check a hash against: give --after 0 alone".into());
        }
    }
    Ok(After {
        seq,
        hash: hash.map(str::to_ascii_lowercase),
    })
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// RFC 5424 syslog lines (facility authpriv; MSGID the action; the JSON object as the message),
    /// for a SIEM's syslog or file collector.
    Syslog,
    /// IHE ATNA: one DICOM PS3.15 A.5 `AuditMessage` (XML) per line, for the security events that
    /// `[atna]` sends (the same mapping); other events are left out.
    Atna,
}

/// Facility authpriv (10), as RFC 5424 counts it: security and authorisation messages.
const AUTHPRIV: u8 = 10;
const WARNING: u8 = 4;
const NOTICE: u8 = 5;

/// Warning for refusals, failures, lockouts, mismatches, budgets exceeded, lost deliveries and recovered
/// recordings; notice for every other event (each one is security-relevant).
fn severity(action: &str) -> u8 {
    const WARN_SUFFIXES: [&str; 7] = [
        ".refused",
        ".failure",
        ".failed",
        ".lock",
        ".mismatch",
        ".exceeded",
        ".undelivered",
    ];
    if WARN_SUFFIXES.iter().any(|s| action.ends_with(s)) || action == "recording.recovered" {
        WARNING
    } else {
        NOTICE
    }
}

/// RFC 5424 allows only printable US-ASCII without spaces in its header fields, up to `max` of them;
/// anything else becomes `_` (names are already plain ASCII; this is for what is not).
fn header_field(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

/// One audit event as an RFC 5424 line: `<PRI>1 TIMESTAMP HOSTNAME chaperone - ACTION - JSON`.
fn syslog_line(row: &AuditRow, hostname: &str) -> anyhow::Result<String> {
    let pri = AUTHPRIV * 8 + severity(&row.action);
    Ok(format!(
        "<{pri}>1 {} {} chaperone - {} - {}",
        format_rfc3339(row.at),
        header_field(hostname, 255),
        header_field(&row.action, 32),
        serde_json::to_string(row)?
    ))
}

/// This machine's name for syslog's HOSTNAME, or `-` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Walks the whole chain up to its head and judges the seal of the head it ended at (a chain recomputed
/// whole by someone without the secrets key walks clean, its head carries no seal). Returns the number
/// of events, or the first break.
pub async fn verify_chain(store: &Store) -> anyhow::Result<i64> {
    let walked = walk_chain(store).await?;
    match walked.seal.broken(walked.head.0, store.head_seal()) {
        None => Ok(walked.events),
        Some(broken) => Err(anyhow::Error::new(broken).context(format!(
            "the events link up to event {} (hash {})",
            walked.head.0, walked.head.1
        ))),
    }
}

/// Where a walk of the whole chain ended.
struct Walked {
    events: i64,
    head: (i64, String),
    /// What that head's seal, read in the same statement, says.
    seal: SealVerdict,
}

/// Walks the whole chain up to its head (read first; the walk stops there: an event appended while it
/// walks, as the node keeps auditing, is then no false "missing at the end"; past the head it reads it
/// again, walks on if it moved, and calls a row past the head as it is now inserted,
/// [`ChainBreak::BeyondHead`]).
async fn walk_chain(store: &Store) -> anyhow::Result<Walked> {
    let mut verifier = Verifier::default();
    let mut after = 0;
    let (mut head, mut seal) = store.audit_head_judged().await?;
    loop {
        while after < head.0 {
            let page = store.audit_page(after, PAGE.min(head.0 - after)).await?;
            if page.is_empty() {
                // Missing at the end: `finish` says so.
                break;
            }
            for row in &page {
                verifier.push(row)?;
                after = row.seq;
            }
        }
        match store.audit_page(after, 1).await?.pop() {
            Some(row) if after == head.0 => {
                let (now, now_seal) = store.audit_head_judged().await?;
                if now.0 < row.seq {
                    return Err(ChainBreak::BeyondHead {
                        seq: row.seq,
                        head_seq: now.0,
                    }
                    .into());
                }
                (head, seal) = (now, now_seal);
            }
            _ => break,
        }
    }
    let events = verifier.finish(head.0, &head.1)?;
    Ok(Walked { events, head, seal })
}

/// `audit seal --head SEQ:HASH`: with every node stopped, walks the chain; if it holds and ends at the
/// head the operator named (the one they reviewed), appends `audit.sealed` and seals the head after it,
/// in one transaction that seals nothing if anything was written after the walk. A head that carries
/// its seal already is left alone; one sealed under another key id is replaced only when the operator
/// names that id (`--replacing-key`).
async fn seal(config: &Path, head: After, replacing: Option<String>) -> anyhow::Result<()> {
    let app = super::offline::open(config, "audit seal").await?;
    let walked = walk_chain(&app.store)
        .await
        .context("the chain does not hold: nothing was sealed")?;
    let (seq, hash) = &walked.head;
    ensure!(
        *seq == head.seq && Some(hash) == head.hash.as_ref(),
        "the audit log ends at another head than the one you named: nothing was sealed (with every \
         node stopped, run `chaperone audit verify` and review the events up to the head it names)"
    );
    match (&walked.seal, &replacing) {
        (SealVerdict::Sealed, _) => {
            println!("the audit log's head (event {seq}) carries its seal already: nothing to do");
            return Ok(());
        }
        (SealVerdict::Unsealed, None) => {}
        (SealVerdict::OtherKey(theirs), Some(named)) if theirs == named => {}
        (SealVerdict::OtherKey(theirs), _) => anyhow::bail!(
            "the audit log's head is sealed under secrets key {theirs}, not this node's {}: if that \
             is the installation's current key, give it to this node instead; only if it never was, \
             run again with --replacing-key {theirs}",
            app.secrets.id()
        ),
        (SealVerdict::Unsealed, Some(_)) => anyhow::bail!(
            "the audit log's head carries no seal under another key: run without --replacing-key"
        ),
    }
    let seal = crate::audit::HeadSeal::new(&app.secrets);
    let mut tx = app.store.begin().await?;
    if let Some(theirs) = &replacing {
        // A key that sealed the installation's secrets is the installation's (a node left on the old
        // key after a rotation would otherwise replace the current key's seal, and every node holding
        // the current key would refuse to append).
        let values = tx.sealed_values().await?;
        ensure!(
            !values
                .iter()
                .any(|v| crate::secrets::sealed_key_id(&v.blob).as_deref() == Some(theirs)),
            "key {theirs} sealed this installation's secrets: it is the installation's key, not a \
             made-up one; give it to this node instead. Nothing was sealed"
        );
        ensure!(
            values.is_empty() || values.iter().any(|v| app.secrets.sealed_by_me(&v.blob)),
            "this node's secrets key ({}) sealed none of the installation's secrets: it is not the \
             installation's key; run `audit seal` where the current key is. Nothing was sealed",
            app.secrets.id()
        );
        tx.drop_foreign_head_seal(theirs).await?;
    }
    tx.audit(
        crate::audit::AuditEvent::new(
            crate::identity::os_actor(),
            crate::audit::Action::AuditSealed,
            "audit",
            serde_json::json!({"head_seq": seq, "head_hash": hash, "events": walked.events,
                               "replaced_key": replacing}),
        ),
        app.clock.now(),
    )
    .await?;
    let ((sealed_seq, _), sealed) = tx
        .seal_head(SealJudge::Follows { seq: *seq, hash }, &seal)
        .await?;
    ensure!(
        sealed,
        "the audit log moved while it was being sealed (something wrote to the database although \
         every node is stopped): nothing was sealed"
    );
    tx.commit("audit.sealed").await?;
    println!(
        "sealed the audit log's head: {} events up to event {seq} vouched for, and the audit.sealed \
         event after them (event {sealed_seq})",
        walked.events
    );
    Ok(())
}

pub async fn run(config: &Path, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        // Sealing opens the installation itself: only with every node stopped.
        AuditCommand::Seal {
            head,
            replacing_key,
        } => seal(config, head, replacing_key).await,
        AuditCommand::Verify => verify(&App::open(config).await?).await,
        AuditCommand::Export {
            format,
            output,
            after,
            unchecked,
        } => export(&App::open(config).await?, format, output, after, unchecked).await,
    }
}

/// `audit verify`: a break found is itself appended as `audit.tamper`.
async fn verify(app: &App) -> anyhow::Result<()> {
    let n = match verify_chain(&app.store).await {
        Ok(n) => n,
        Err(e) => {
            // The finding is itself an event (a security alert for the SIEM and the ATNA
            // repository): appended after the head, it does not hide the break.
            let now = app.clock.now();
            let noted = async {
                let mut tx = app.store.begin().await?;
                tx.audit(
                    crate::audit::AuditEvent::new(
                        crate::identity::os_actor(),
                        crate::audit::Action::AuditTamper,
                        "audit",
                        serde_json::json!({"why": format!("{e:#}")}),
                    ),
                    now,
                )
                .await?;
                tx.commit("audit.tamper").await
            }
            .await;
            if let Err(n) = noted {
                eprintln!("(could not record the finding in the audit log: {n})");
            }
            let unsealed = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<ChainBreak>(),
                    Some(ChainBreak::Unsealed { .. })
                )
            });
            if unsealed && let Ok((seq, hash)) = app.store.audit_head().await {
                // A database that does not say counts as one with a node running.
                let running = match app.store.database_now().await {
                    Ok(now) => app
                        .store
                        .nodes_seen_since(now - crate::node::GONE_AFTER_SECS)
                        .await
                        .map_or(true, |nodes| !nodes.is_empty()),
                    Err(_) => true,
                };
                if running {
                    eprintln!(
                        "The head is sealed again only by an operator, with every node stopped: stop \
                         them and run `chaperone audit verify` again, to be told the head to seal."
                    );
                } else {
                    // Named after the finding's own event; with no node running it stays the head.
                    eprintln!(
                        "The copy kept outside (SIEM, ATNA repository, webhook) received events only \
                         while the head carried its seal, so it ends where the break began. Review \
                         every event after its last one (`chaperone audit export --unchecked`); if \
                         they are what happened, run: chaperone audit seal --head {seq}:{hash}"
                    );
                }
            }
            return Err(e.context("audit log verification FAILED"));
        }
    };
    println!("audit log intact: {n} events, chain verified");
    Ok(())
}

/// `audit export`.
async fn export(
    app: &App,
    format: ExportFormat,
    output: Option<PathBuf>,
    after: After,
    unchecked: bool,
) -> anyhow::Result<()> {
    let host = hostname();
    let source = crate::atna::Source {
        id: app.config.atna.as_ref().map_or_else(
            || app.config.ssh.public_host.clone(),
            |a| a.audit_source_id.clone(),
        ),
        enterprise_site_id: app
            .config
            .atna
            .as_ref()
            .and_then(|a| a.enterprise_site_id.clone()),
    };
    // The collector's last event must be this log's: not past its head, and, with a hash,
    // the same event. A log restored from an older backup reuses the numbers after its head
    // for other events, which a pull by number alone would skip without a word.
    let (head_row, seal) = app.store.audit_head_judged().await?;
    let head = head_row.0;
    let unsealed = seal.broken(head, app.store.head_seal());
    // What a collector takes in is what the chain head's seal vouches for, up to that head (events
    // appended meanwhile wait for the next pull).
    if let Some(broken) = unsealed.filter(|_| !unchecked) {
        anyhow::bail!(
            "{broken}: nothing exported, so that no collector takes in events written without the \
             key (`chaperone audit verify` says what to do; `--unchecked` exports the rows as they \
             are, for review)"
        );
    }
    if unchecked {
        eprintln!(
            "warning: the rows are exported as they are, unchecked: for review, not as the log"
        );
    }
    ensure!(
        after.seq <= head,
        "the audit log ends at event {head}, before {}: it was restored from an older backup \
         (or rewritten), so the collector's events after {head} are not this log's; \
         export from an event both still agree on",
        after.seq
    );
    if let Some(hash) = &after.hash {
        let row = app.store.audit_page(after.seq - 1, 1).await?;
        let ours = row
            .first()
            .filter(|r| r.seq == after.seq)
            .map(|r| r.hash.as_str());
        ensure!(
            ours == Some(hash.as_str()),
            "event {} of this audit log is not the collector's (its hash differs): the log \
             was restored from an older backup or rewritten; export from an event both still \
             agree on",
            after.seq
        );
    }
    let mut out: Box<dyn Write> = match &output {
        Some(path) => {
            // Vendors' names, addresses and reasons: a new file is private from its creation;
            // a symbolic link is not followed (another user's link in a shared directory
            // would aim the export at a file they can read), and an existing file is
            // overwritten only if it is ours (its owner could read it, whatever its mode),
            // a plain file, and its only name (a hard link's other name could be anywhere:
            // `sudo` would empty what it names). Opened without blocking, so a FIFO put there
            // is an error (or refused as not a plain file), not a wait.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600).custom_flags(
                    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits(),
                );
            }
            let file = options.open(path).with_context(|| {
                format!(
                    "creating {} (a symbolic link is not followed)",
                    path.display()
                )
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt as _;
                let meta = file.metadata()?;
                anyhow::ensure!(
                    meta.is_file(),
                    "{} is not a plain file: not written",
                    path.display()
                );
                let owner = meta.uid();
                anyhow::ensure!(
                    owner == rustix::process::geteuid().as_raw(),
                    "{} belongs to another user (uid {owner}): not overwritten",
                    path.display()
                );
                anyhow::ensure!(
                    meta.nlink() == 1,
                    "{} has other names (hard links): not overwritten",
                    path.display()
                );
                // An existing file keeps its mode through `open`: made private on the handle.
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .with_context(|| format!("making {} private", path.display()))?;
            }
            file.set_len(0)
                .with_context(|| format!("emptying {}", path.display()))?;
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let after_given = after.seq;
    let mut after = after_given;
    loop {
        // Each page holds in the chain up to the sealed head (a row changed, inserted or deleted
        // below it is not exported); a review reads the rows as they are.
        let page = if !unchecked {
            crate::evidence::vouched_rows(&app.store, after, &head_row, PAGE)
                .await?
                .map_err(|broken| {
                    anyhow::Error::new(broken).context(format!(
                        "the audit log does not hold after event {after}: nothing after it \
                         exported; run `chaperone audit verify`"
                    ))
                })?
        } else {
            match head - after {
                left if left > 0 => app.store.audit_page(after, PAGE.min(left)).await?,
                _ => Vec::new(),
            }
        };
        for row in &page {
            match format {
                ExportFormat::Jsonl => serde_json::to_writer(&mut out, row)?,
                ExportFormat::Syslog => out.write_all(syslog_line(row, &host)?.as_bytes())?,
                ExportFormat::Atna => match crate::atna::audit_message(row, &source) {
                    Some(m) => out.write_all(m.to_xml().as_bytes())?,
                    None => continue,
                },
            }
            out.write_all(b"\n")?;
        }
        match page.last() {
            Some(last) => after = last.seq,
            None => break,
        }
    }
    out.flush()?;
    // The log written to a file is an export (ATNA 110106), audited after the last event it
    // holds. Printing to a pipe (a SIEM pulling every minute) is not: each pull would add one.
    if let Some(path) = &output {
        let mut tx = app.store.begin().await?;
        tx.audit(
            crate::audit::AuditEvent::new(
                crate::identity::os_actor(),
                crate::audit::Action::AuditExport,
                "audit",
                serde_json::json!({"output": path.display().to_string(), "format": format!("{format:?}").to_lowercase(), "after": after_given}),
            ),
            app.clock.now(),
        )
        .await?;
        tx.commit("audit.export").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str) -> AuditRow {
        AuditRow {
            seq: 7,
            at: 1_795_996_404,
            actor: "os:root".into(),
            action: action.into(),
            subject: "vendor:alice".into(),
            detail: r#"{"why":"line\nbreak"}"#.into(),
            prev_hash: "aa".into(),
            hash: "bb".into(),
        }
    }

    #[test]
    fn events_become_rfc5424_lines_with_a_severity_by_outcome() {
        let line = syslog_line(&row("session.start"), "bastion-1").unwrap();
        assert!(
            line.starts_with("<85>1 2026-11-29T23:53:24Z bastion-1 chaperone - session.start - {"),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line per event: {line}");
        let json: serde_json::Value =
            serde_json::from_str(line.split(" - ").nth(2).unwrap()).unwrap();
        assert_eq!(json["seq"], 7);
        for refused in [
            "auth.refused",
            "auth.lock",
            "target.hostkey.mismatch",
            "webhook.undelivered",
        ] {
            assert!(
                syslog_line(&row(refused), "h")
                    .unwrap()
                    .starts_with("<84>1 ")
            );
        }
        // Header fields hold printable ASCII without spaces only.
        let odd = syslog_line(&row("a b\u{e9}"), "").unwrap();
        assert!(odd.contains(" - chaperone - a_b_ - "), "{odd}");
    }
}
