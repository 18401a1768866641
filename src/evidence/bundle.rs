//! The evidence bundle: one tar that an inspector verifies alone, with stock tools.
//!
//! Entry points: [`export`] (the whole of `chaperone evidence export`, and what a download button
//! calls: the audit event, the proofs, the tar) and [`verify`] (`chaperone evidence verify`).
//!
//! A bundle is a directory `session-ID/` holding:
//! - `recordings/…`: each recording exactly as written (`.cast`, `.exec`, `.sftp.jsonl`), and for an
//!   exec recording a `.cast` derived from it for players;
//! - `audit.jsonl`: every audit event about the session and its grant, as stored (hash and previous
//!   hash included), and `chain.json`: the chain head when it was exported and, for each event, the
//!   event after it (its `prev_hash` is this event's hash): the links that tie them to the whole log;
//! - `session.json`: the session, and which audit event vouches for which recording;
//! - `README.txt`, `allowed_signers`, `SHA256SUMS` (every file above) and `SHA256SUMS.sig` (SSHSIG,
//!   namespace `chaperone-evidence`, by [`super::signer`]'s key).
//!
//! Nothing goes in that is not proved first: every recording passes [`super::prove`] (the digest the
//! chain vouches for, the file inside the recordings directory) and its bytes are hashed again as they
//! are written into the tar; every event included is checked where it sits in the chain. A recording
//! that cannot be proved refuses the whole bundle.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use chaperone_recorder::{EntryKind, Sha256Reader, Sha256Writer, TarReader, TarWriter};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::signer::{self, BadSignature, Signer, SignerError};
use super::{Evidence, ProveError, prove};
use crate::audit::{AuditEvent, AuditRow, ChainBreak, chain_hash};
use crate::config::RecordingConfig;
use crate::model::{SessionRow, UnixTime};
use crate::recording::RecordingFormat;
use crate::store::{ChainCheckpoints, Store, StoreError};

/// The audit action of an export (by the CLI or a download).
pub const EXPORT: crate::audit::Action = crate::audit::Action::EvidenceExport;
/// The action that records a bundle as soon as it is signed, with the digest of its `SHA256SUMS`.
pub const SIGNED: crate::audit::Action = crate::audit::Action::EvidenceSigned;

/// The most audit events about one subject a bundle carries.
const MAX_EVENTS: i64 = 100_000;
/// The newest views and exports of the session a bundle carries.
const LOOKS_IN_BUNDLE: i64 = 1000;
/// The largest file of a bundle [`verify`] keeps in memory (one of [`READ`]).
const MAX_TEXT: u64 = 64 * 1024 * 1024;
/// The files of a bundle [`verify`] reads; every other one (the recordings, README.txt, anything a
/// forger added) is only hashed as it streams by, so what a hostile bundle makes the verifier hold is
/// bounded by five of [`MAX_TEXT`], not by the archive's size.
const READ: [&str; 5] = [
    "SHA256SUMS",
    "SHA256SUMS.sig",
    "audit.jsonl",
    "chain.json",
    "session.json",
];

/// The two commands that verify a bundle, run inside its directory.
pub const VERIFY_SIGNATURE: &str = "ssh-keygen -Y verify -f allowed_signers -I chaperone -n chaperone-evidence -s SHA256SUMS.sig < SHA256SUMS";
pub const VERIFY_SUMS: &str = "sha256sum -c SHA256SUMS";

/// Why a bundle was not made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The signing key cannot be used.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// A recording was not proved intact: no bundle vouches for it.
    #[error(transparent)]
    Prove(#[from] ProveError),
    /// An audit event about the session does not hold where it sits in the chain.
    #[error("the audit log's word on this session was ALTERED ({0}); run `chaperone audit verify`")]
    Chain(ChainBreak),
    /// The session's row disagrees with its audit events: the bundle's summary would repeat it.
    #[error("the session's row was ALTERED: {0}")]
    Row(super::Broken),
    /// Deriving a player's .cast from an exec recording failed.
    #[error("deriving a .cast from recording {path:?}")]
    Derive {
        path: String,
        #[source]
        source: chaperone_recorder::Error,
    },
    /// Writing the tar failed.
    #[error("writing the bundle")]
    Tar(#[from] chaperone_recorder::TarError),
    /// The audit log says retention deleted a recording whose file is still here.
    #[error(
        "audit event {seq} says retention deleted {path:?}, but its file is still in the recordings directory: no bundle (if retention could not remove it, its next pass does)"
    )]
    DeletedButHere { seq: i64, path: String },
    /// Encoding the bundle's JSON failed.
    #[error("encoding the bundle's JSON")]
    Json(#[from] serde_json::Error),
    /// The worker that writes the bundle stopped.
    #[error("the bundle writer stopped")]
    Join(#[from] tokio::task::JoinError),
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The directory inside the tar (`session-ID`).
    pub dir: String,
    /// The files listed in SHA256SUMS, with their digests.
    pub files: Vec<(String, String)>,
    /// The SHA-256 of SHA256SUMS itself.
    pub sums_sha256: String,
    /// The signing key's fingerprint.
    pub signer: String,
    /// The `evidence.export` audit event.
    pub audit_seq: i64,
}

/// Everything a bundle says, read from the store before any file is opened.
#[derive(Debug)]
struct Collected {
    session: SessionRow,
    evidence: Vec<Evidence>,
    events: Vec<AuditRow>,
    /// For each event, the row after it (or `None` when it is the last: the head names it).
    links: Vec<Option<AuditRow>>,
    head: (i64, String),
    /// Views and exports older than the newest [`LOOKS_IN_BUNDLE`] were left out (the README says).
    looks_left_out: bool,
    /// The bundle's own `evidence.export` event (the README names it).
    export_seq: i64,
}

/// Makes the evidence bundle of session `session_id` and writes it to `out`, as `actor` (an audit
/// actor: `os:NAME`, `staff:NAME`) through `via` (`cli`, `web`). The export is audited
/// (`evidence.export`) before anything is read, so the bundle carries its own export event. Refuses
/// when the signing key is missing or any recording cannot be proved intact; `out` then holds a
/// partial tar the caller discards.
pub async fn export<W: Write + Send + 'static>(
    store: &Store,
    config: &RecordingConfig,
    session_id: &str,
    actor: &str,
    via: &str,
    now: UnixTime,
    out: W,
) -> Result<(Exported, W), BundleError> {
    let key_path = config.signing_key.clone();
    let signer = tokio::task::spawn_blocking(move || {
        let signer = Signer::load(&key_path)?;
        let allowed = signer::allowed_signers(&signer, &key_path)?;
        Ok::<_, SignerError>((signer, allowed))
    })
    .await??;
    // The session must exist before its export is audited.
    store.session(session_id).await?;
    let audit_seq = {
        let mut tx = store.begin().await?;
        let seq = tx
            .audit(
                AuditEvent::new(
                    actor,
                    EXPORT,
                    format!("session:{session_id}"),
                    json!({"via": via, "signer": signer.0.fingerprint()}),
                ),
                now,
            )
            .await?;
        tx.commit("evidence.export").await?;
        seq
    };
    let mut collected = collect(store, session_id).await?;
    collected.export_seq = audit_seq;
    let dir = config.dir.clone();
    let writer = actor.to_owned();
    // What the bundle is (the digest of its signed SHA256SUMS) goes on record as soon as it is
    // signed, before SHA256SUMS and its signature go into the tar: a bundle that reaches anyone has its
    // event (one that broke off after it is harmless). It cannot be in the export event, which the
    // bundle itself carries. Written from the blocking thread through the runtime's handle.
    let record = {
        let (store, handle) = (store.clone(), tokio::runtime::Handle::current());
        let (actor, subject) = (actor.to_owned(), format!("session:{session_id}"));
        move |sums_sha256: &str, signer: &str| -> Result<(), BundleError> {
            let event = AuditEvent::new(
                actor,
                SIGNED,
                subject,
                json!({"export": audit_seq, "sums_sha256": sums_sha256, "signer": signer}),
            );
            handle.block_on(async {
                let mut tx = store.begin().await?;
                tx.audit(event, crate::clock::Clock::system().now()).await?;
                tx.commit("evidence.signed").await?;
                Ok(())
            })
        }
    };
    let (mut exported, out) = tokio::task::spawn_blocking(move || {
        write(
            &collected, &dir, &signer.0, &signer.1, &writer, now, record, out,
        )
    })
    .await??;
    exported.audit_seq = audit_seq;
    Ok((exported, out))
}

/// Chunks of a bundle as [`export_stream`] hands them out (about 64 KiB each).
const CHUNK: usize = 64 * 1024;
/// Chunks written ahead of the reader: a slow download holds the writer, not the memory.
const CHUNKS_AHEAD: usize = 4;

/// A bundle being written, chunk by chunk, for a download: the web page's "download evidence" calls
/// [`export_stream`] and sends the chunks as the response body. An `Err` item means the bundle broke
/// off (a recording changed while it was read, a write failed); the body must then be cut short, so
/// that no one mistakes a partial tar for a bundle.
pub type BundleChunks = tokio::sync::mpsc::Receiver<Result<bytes::Bytes, BundleError>>;

/// [`export`] for a download: audits `evidence.export` as `actor` through `via` (`web`), proves every
/// recording and starts writing, and returns once the first chunk is ready, so that a session that
/// does not exist, a missing key or a recording that is not intact is an error before any byte is
/// sent (the caller answers with an error page, not a broken tar). The rest is written on a blocking
/// thread, [`CHUNKS_AHEAD`] chunks ahead of the reader; dropping the receiver stops it.
///
/// `held` (the download's place under the web's bounds) is dropped when the writer stops, not when the
/// caller lets go: a client that leaves before the first chunk stops nothing (proving every recording
/// runs to its end), so its place must not come back before that work is done.
pub async fn export_stream<H: Send + 'static>(
    store: Store,
    config: RecordingConfig,
    session_id: String,
    actor: String,
    via: String,
    now: UnixTime,
    held: H,
) -> Result<(bytes::Bytes, BundleChunks), BundleError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    let errors = tx.clone();
    tokio::spawn(async move {
        let _held = held;
        let out = std::io::BufWriter::with_capacity(CHUNK, ChunkWriter(tx));
        let result = export(&store, &config, &session_id, &actor, &via, now, out).await;
        match result {
            // Flushed by `TarWriter::finish`: dropping it writes nothing (a write here, on the
            // runtime, would block it).
            Ok((_, out)) => drop(out),
            Err(e) => {
                let _ = errors.send(Err(e)).await;
            }
        }
    });
    match rx.recv().await {
        Some(Ok(first)) => Ok((first, rx)),
        Some(Err(e)) => Err(e),
        None => Err(BundleError::Tar(chaperone_recorder::TarError::Io(
            std::io::Error::other("the bundle writer stopped before writing"),
        ))),
    }
}

/// Hands what the tar writer writes to [`export_stream`]'s receiver. Blocking: used only on the
/// blocking thread that writes the tar.
struct ChunkWriter(tokio::sync::mpsc::Sender<Result<bytes::Bytes, BundleError>>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download stopped")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn collect(store: &Store, session_id: &str) -> Result<Collected, BundleError> {
    let mut session = store.session(session_id).await?;
    let evidence = super::evidence(store, &mut session).await?;
    // The head before the events: one appended meanwhile is found as a successor.
    let head = super::chain_head(store)
        .await?
        .map_err(BundleError::Chain)?;
    // Views and exports apart, the newest of them: a flood of page loads must not push a later hold
    // or deletion out of the bundle.
    let subject = format!("session:{session_id}");
    let mut events = store
        .audit_events_about_but(&subject, &super::LOOKS, MAX_EVENTS)
        .await?;
    let mut looks = store
        .latest_audit_events_about(&subject, &super::LOOKS, LOOKS_IN_BUNDLE + 1)
        .await?;
    let looks_left_out = looks.len() > LOOKS_IN_BUNDLE as usize;
    if looks_left_out {
        looks.remove(0);
    }
    events.extend(looks);
    events.extend(
        store
            .audit_events_of(&format!("grant:{}", session.grant_id), MAX_EVENTS)
            .await?,
    );
    events.sort_by_key(|e| e.seq);
    events.retain(|e| e.seq <= head.0);
    // The README's and session.json's summary come from the row: only while it agrees with the start
    // event (a tunnel has no recording whose proof would say so).
    if let Some(b) = super::row_disagrees(&session, &events) {
        return Err(BundleError::Row(b));
    }
    // "Every event about it is here" rests on the absence of others: the chain from its first event to
    // the head is walked now, not trusted to what this process verified before.
    let fresh = ChainCheckpoints::default();
    let mut links = Vec::with_capacity(events.len());
    for event in &events {
        if let Err(b) = super::holds_in_chain(store, &fresh, event, &head).await? {
            return Err(BundleError::Chain(b));
        }
        links.push(if event.seq == head.0 {
            None
        } else {
            store.audit_page(event.seq, 1).await?.pop()
        });
    }
    Ok(Collected {
        session,
        evidence,
        events,
        links,
        head,
        looks_left_out,
        export_seq: 0,
    })
}

/// The tar, entry by entry, with the digest of each file for SHA256SUMS.
struct Bundle<W: Write> {
    tar: TarWriter<W>,
    dir: String,
    sums: Vec<(String, String)>,
}

impl<W: Write> Bundle<W> {
    fn text(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        self.tar
            .file_bytes(&format!("{}/{name}", self.dir), bytes)?;
        self.sums
            .push((name.to_owned(), hex::encode(Sha256::digest(bytes))));
        Ok(())
    }

    /// Adds `size` bytes from `content`, hashing what went in; the digest.
    fn file(&mut self, name: &str, size: u64, content: impl Read) -> Result<String, BundleError> {
        let mut hashed = Sha256Reader::new(content);
        self.tar
            .file(&format!("{}/{name}", self.dir), size, &mut hashed)?;
        let digest = hashed
            .finish_hex()
            .map_err(chaperone_recorder::TarError::Io)?;
        self.sums.push((name.to_owned(), digest.clone()));
        Ok(digest)
    }

    /// Adds `size` bytes that `write` writes, hashing what went in; the digest.
    fn file_from(
        &mut self,
        name: &str,
        size: u64,
        write: impl FnOnce(&mut dyn Write) -> Result<(), BundleError>,
    ) -> Result<String, BundleError> {
        let digest = self
            .tar
            .file_from(&format!("{}/{name}", self.dir), size, |entry| {
                let mut hashed = Sha256Writer::new(entry);
                write(&mut hashed)?;
                Ok::<_, BundleError>(hashed.finish_hex().0)
            })?;
        self.sums.push((name.to_owned(), digest.clone()));
        Ok(digest)
    }
}

/// A recording a bundle names without its content: retention deleted it (`seq`, the
/// `recording.deleted` event), and the digest the audit log vouched for.
struct Absent {
    why: String,
    seq: i64,
    sha256: Option<String>,
}

/// Writes the bundle to `out`; `record` is told the SHA-256 of SHA256SUMS and the key's fingerprint once
/// it is signed, before SHA256SUMS goes into the tar (an error from it stops the bundle there).
#[allow(clippy::too_many_arguments)]
fn write<W: Write>(
    c: &Collected,
    recordings_dir: &Path,
    signer: &Signer,
    allowed_signers: &str,
    actor: &str,
    now: UnixTime,
    record: impl FnOnce(&str, &str) -> Result<(), BundleError>,
    out: W,
) -> Result<(Exported, W), BundleError> {
    let s = &c.session;
    // Every recording is proved before a byte of the bundle is written. One that retention deleted
    // has no content to prove: the bundle names it with the deletion, and its audit events are its
    // record; but only once its file is gone from here (a deletion appended to the log while the file
    // is still on disk is not taken for one). Anything else that is not intact (altered, missing
    // here, live, never digested) refuses the bundle.
    let mut proofs = Vec::with_capacity(s.recordings.len());
    for (r, ev) in s.recordings.iter().zip(&c.evidence) {
        proofs.push(match prove(recordings_dir, r, ev) {
            Ok(p) => Ok(p),
            Err(ProveError::Deleted { seq, at, .. }) => {
                if super::open_recording(recordings_dir, &r.path).is_ok() {
                    return Err(BundleError::DeletedButHere {
                        seq,
                        path: r.path.clone(),
                    });
                }
                Err(Absent {
                    why: format!(
                        "deleted by retention on {} (audit event {seq}); its digest and audit events remain",
                        crate::clock::format_time(at)
                    ),
                    seq,
                    sha256: ev.voucher().map(|v| v.sha256.clone()),
                })
            }
            Err(e) => return Err(e.into()),
        });
    }
    let dir = format!("session-{}", s.id);
    let mut b = Bundle {
        tar: TarWriter::new(out, u64::try_from(now).unwrap_or(0)),
        dir: dir.clone(),
        sums: Vec::new(),
    };
    b.tar.dir(&dir)?;
    b.text(
        "README.txt",
        readme(c, &proofs, signer, actor, now).as_bytes(),
    )?;
    b.text("allowed_signers", allowed_signers.as_bytes())?;
    if proofs.iter().any(Result::is_ok) {
        b.tar.dir(&format!("{dir}/recordings"))?;
    }
    let mut listed = Vec::new();
    for (r, proof) in s.recordings.iter().zip(&proofs) {
        let proof = match proof {
            Ok(p) => p,
            Err(absent) => {
                listed.push(
                    json!({"recording": r.id, "format": r.format, "absent": absent.why,
                                   "audit_seq": absent.seq, "sha256": absent.sha256}),
                );
                continue;
            }
        };
        let file_name = Path::new(&r.path)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| format!("{}.{}", r.id, r.format), str::to_owned);
        let name = format!("recordings/{file_name}");
        let digest = b.file(&name, proof.size, &proof.file)?;
        proof.confirm(r, &digest, "put in the bundle")?;
        let mut entry = json!({"file": name, "format": r.format, "sha256": digest,
                               "audit_seq": proof.seq, "exact": true, "recovered": proof.recovered});
        if r.format == RecordingFormat::EXEC_STREAM {
            let derived = format!("recordings/{}.cast", file_name.trim_end_matches(".exec"));
            let cast_digest = derive_cast(&mut b, &derived, r, proof)?;
            entry["derived"] = json!({"file": derived, "sha256": cast_digest});
        }
        listed.push(entry);
    }
    let mut audit = Vec::new();
    for e in &c.events {
        serde_json::to_writer(&mut audit, e)?;
        audit.push(b'\n');
    }
    b.text("audit.jsonl", &audit)?;
    let chain = json!({
        "encoding": "chaperone-audit-v1",
        "hash": "SHA-256(\"chaperone-audit-v1\" || seq || at || actor || action || subject || detail || prev_hash): \
                 integers 8-byte big-endian, strings 4-byte big-endian length then UTF-8; prev_hash is the \
                 previous event's hash (64 zeros before the first)",
        "head": {"seq": c.head.0, "hash": c.head.1},
        "links": c.events.iter().zip(&c.links).map(|(e, next)| match next {
            Some(n) => json!({"seq": e.seq, "next": {"seq": n.seq, "prev_hash": n.prev_hash, "hash": n.hash}}),
            None => json!({"seq": e.seq, "next": null, "head": c.head.0}),
        }).collect::<Vec<_>>(),
    });
    b.text("chain.json", &pretty(&chain)?)?;
    let mut session = serde_json::to_value(s)?;
    session["recordings"] = Value::Array(listed);
    session["exported_at"] = json!(now);
    session["exported_by"] = json!(actor);
    b.text("session.json", &pretty(&session)?)?;

    let mut sums = String::new();
    for (name, digest) in &b.sums {
        sums.push_str(&format!("{digest}  {name}\n"));
    }
    let signature = signer.sign(sums.as_bytes())?;
    let sums_sha256 = hex::encode(Sha256::digest(sums.as_bytes()));
    record(&sums_sha256, &signer.fingerprint())?;
    let files = std::mem::take(&mut b.sums);
    b.text("SHA256SUMS", sums.as_bytes())?;
    b.text("SHA256SUMS.sig", signature.as_bytes())?;
    let out = b.tar.finish()?;
    Ok((
        Exported {
            dir,
            files,
            sums_sha256,
            signer: signer.fingerprint(),
            audit_seq: 0,
        },
        out,
    ))
}

fn pretty(v: &Value) -> Result<Vec<u8>, BundleError> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Adds the .cast a player shows for a proved exec recording, derived twice and stored nowhere: once to
/// learn its size (the tar header comes first), once into the archive. Each pass checks the digest again
/// over the bytes it converted, so a recording changed between the two breaks the bundle off.
fn derive_cast<W: Write>(
    b: &mut Bundle<W>,
    name: &str,
    r: &crate::model::RecordingRow,
    proof: &super::Proof,
) -> Result<String, BundleError> {
    let size = cast_of(r, proof, std::io::sink())?;
    b.file_from(name, size, |entry| cast_of(r, proof, entry).map(drop))
}

/// Writes the .cast of proved exec recording `r` to `out`, checking the digest of what was converted;
/// the bytes written.
fn cast_of(
    r: &crate::model::RecordingRow,
    proof: &super::Proof,
    out: impl Write,
) -> Result<u64, BundleError> {
    use std::io::{Seek as _, SeekFrom};
    let derive = |source| BundleError::Derive {
        path: r.path.clone(),
        source,
    };
    let mut file = &proof.file;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| derive(chaperone_recorder::Error::Io(e)))?;
    let mut input = std::io::BufReader::with_capacity(256 * 1024, Sha256Reader::new(file));
    let (_, bytes, _) = chaperone_recorder::exec_cast_into(&mut input, out).map_err(derive)?;
    let actual = input
        .into_inner()
        .finish_hex()
        .map_err(|e| derive(chaperone_recorder::Error::Io(e)))?;
    proof.confirm(r, &actual, "converted")?;
    Ok(bytes)
}

fn readme(
    c: &Collected,
    proofs: &[Result<super::Proof, Absent>],
    signer: &Signer,
    actor: &str,
    now: UnixTime,
) -> String {
    use crate::clock::format_time;
    let s = &c.session;
    let clean = |t: &str| -> String { crate::model::one_line(t).chars().take(200).collect() };
    let mut recordings = String::new();
    for (r, proof) in s.recordings.iter().zip(proofs) {
        let name = Path::new(&r.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(absent) = proof {
            recordings.push_str(&format!(
                "  ({}: not in this bundle)\n      {}\n",
                clean(&name),
                absent.why
            ));
            continue;
        }
        let what = match r.format.as_str() {
            RecordingFormat::ASCIICAST => {
                "the terminal, asciicast v2 (plays in asciinema and asciinema-player)"
            }
            RecordingFormat::EXEC_STREAM => {
                "a command's byte streams, exactly as sent (chaperone-exec v1); the .cast of the same \
                 name is derived from it for players (bare line feeds shown as CR LF)"
            }
            _ => "the file transfers, JSON lines",
        };
        recordings.push_str(&format!("  recordings/{}\n      {what}\n", clean(&name)));
    }
    if recordings.is_empty() {
        recordings.push_str(
            "  (none: this kind of session has no recording; the audit events are the record)\n",
        );
    }
    format!(
        "Evidence bundle: chaperone session {id}
=======================================

Vendor {vendor} on asset {asset} (zone {zone}), {kind}, service {service}, grant #{grant}.
Started {started}, ended {ended}.
Exported {exported} by {actor}, signed with key {fingerprint}.

Files
  README.txt        this file
  allowed_signers   the key that signed this bundle, as the bundle itself names it
{recordings}  audit.jsonl       every audit event about this session and its grant, as stored:
                    seq, at, actor, action, subject, detail, prev_hash, hash
  chain.json        how an event's hash is computed, the chain head at export, and for each event
                    the event after it, whose prev_hash is that event's hash
  session.json      the session, and which audit event vouches for each recording's SHA-256
  SHA256SUMS        the SHA-256 of every file above
  SHA256SUMS.sig    an SSH signature of SHA256SUMS (namespace chaperone-evidence)

Verify, in this directory (OpenSSH 8.1 or later, GNU coreutils):

  {VERIFY_SIGNATURE}
  {VERIFY_SUMS}

The first proves SHA256SUMS was signed by the key in allowed_signers; the second that every file is
as it was signed. Both must pass. allowed_signers came with the bundle, so it proves nothing by itself:
compare its key with the line the hospital gave you (`chaperone evidence signer` prints it), or use
your own copy of that line with -f. `chaperone evidence verify FILE.tar` runs the same checks, and
also recomputes every audit event's hash.

Only the files SHA256SUMS lists are evidence: a file in this directory that it does not list was not
signed (`chaperone evidence verify` refuses such a bundle).

Ask the hospital to confirm this bundle from its copy of the audit log kept outside the bastion (SIEM,
ATNA repository): it holds an evidence.signed event for it, soon after
audit event {export_seq} (this export), naming that event and the SHA-256 of this SHA256SUMS
(`sha256sum SHA256SUMS`). A bundle signed with a stolen or retired key has no such event.
{looks}
What vouches for a recording: the session.end event in audit.jsonl carries the SHA-256 the recorder
computed as it closed the file; for a recording whose writer stopped before closing it (the bastion
crashed), a recording.recovered event carries the SHA-256 of the file as a node found it afterwards
(session.json says recovered: true; what reached the disk, not necessarily all that was shown).
session.json names the event. Each event's
hash covers its content and the previous event's hash, so it can be compared, event by event, with
the hospital's copy of its audit log (exported to its SIEM), which no one at the bastion can rewrite.
",
        id = s.id,
        vendor = clean(&s.vendor),
        asset = clean(&s.asset),
        zone = clean(&s.zone),
        kind = clean(&s.kind),
        service = clean(&s.service),
        grant = s.grant_id,
        started = format_time(s.started_at),
        ended = s.ended_at.map_or_else(|| "not yet (live)".to_owned(), format_time),
        exported = format_time(now),
        actor = clean(actor),
        fingerprint = signer.fingerprint(),
        export_seq = c.export_seq,
        looks = if c.looks_left_out {
            format!(
                "\nOf the views, searches and exports of this session, audit.jsonl holds only the newest (at most\n\
                 {LOOKS_IN_BUNDLE}); the older ones are in the hospital's audit log. Every other event about it is here.\n"
            )
        } else {
            String::new()
        },
    )
}

/// Why a bundle does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The tar itself is unreadable or not a bundle's shape.
    #[error(transparent)]
    Tar(#[from] chaperone_recorder::TarError),
    /// Something a bundle must hold is missing or malformed.
    #[error("not an evidence bundle: {0}")]
    Shape(String),
    /// The signature does not hold.
    #[error(transparent)]
    Signature(#[from] BadSignature),
    /// The bundle's content does not match what was signed, or contradicts itself.
    #[error("{0}")]
    Altered(String),
}

/// What a bundle that verifies holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub dir: String,
    /// The signing key's fingerprint.
    pub signer: String,
    /// Files checked against SHA256SUMS.
    pub files: usize,
    /// Audit events whose hash recomputed.
    pub events: usize,
    /// Recordings whose SHA-256 matched the audit event that vouches for it.
    pub recordings: usize,
    /// Recordings named without their content (deleted by retention).
    pub absent: usize,
    /// The SHA-256 of SHA256SUMS: the hospital's `evidence.signed` event for the bundle names it.
    pub sums_sha256: String,
}

/// Verifies a bundle read from `input` against the `trusted` allowed_signers text: the signature of
/// SHA256SUMS, every file's digest (and no file that SHA256SUMS does not list), every audit event's
/// hash and the links between them, and each recording's digest against its vouching event.
pub fn verify(input: impl Read, trusted: &str) -> Result<Verified, VerifyError> {
    let shape = |m: &str| VerifyError::Shape(m.to_owned());
    let mut tar = TarReader::new(input);
    let mut dir: Option<String> = None;
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut texts: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some(entry) = tar.next_entry()? {
        let (top, rest) = match entry.name.split_once('/') {
            Some((top, rest)) => (top.to_owned(), rest.to_owned()),
            None => (entry.name.clone(), String::new()),
        };
        match &dir {
            None => dir = Some(top.clone()),
            Some(d) if *d != top => {
                return Err(shape("entries outside the bundle's one directory"));
            }
            Some(_) => {}
        }
        if entry.kind == EntryKind::Dir {
            continue;
        }
        if rest.is_empty() {
            return Err(shape("a file beside the bundle's directory"));
        }
        let keep = READ.contains(&rest.as_str());
        if keep && entry.size > MAX_TEXT {
            return Err(VerifyError::Shape(format!("{rest} is too large")));
        }
        let mut hashed = Sha256Reader::new(&mut tar);
        if keep {
            let mut bytes = Vec::new();
            hashed
                .read_to_end(&mut bytes)
                .map_err(chaperone_recorder::TarError::Io)?;
            texts.insert(rest.clone(), bytes);
        }
        let digest = hashed
            .finish_hex()
            .map_err(chaperone_recorder::TarError::Io)?;
        if digests.insert(rest.clone(), digest).is_some() {
            return Err(VerifyError::Shape(format!("{rest} appears twice")));
        }
    }
    let dir = dir.ok_or_else(|| shape("an empty archive"))?;
    let sums = texts
        .get("SHA256SUMS")
        .ok_or_else(|| shape("no SHA256SUMS"))?;
    let sig = texts
        .get("SHA256SUMS.sig")
        .ok_or_else(|| shape("no SHA256SUMS.sig"))?;
    let sig = std::str::from_utf8(sig).map_err(|_| shape("SHA256SUMS.sig is not text"))?;
    let keys = signer::trusted_keys(trusted);
    let signer = signer::verify(&keys, sums, sig)?;

    let sums_sha256 = hex::encode(Sha256::digest(sums));
    let sums = std::str::from_utf8(sums).map_err(|_| shape("SHA256SUMS is not text"))?;
    let mut listed = BTreeMap::new();
    for line in sums.lines() {
        let (digest, name) = line
            .split_once("  ")
            .ok_or_else(|| shape("a SHA256SUMS line that is not `DIGEST  FILE`"))?;
        listed.insert(name.to_owned(), digest.to_owned());
    }
    for (name, digest) in &listed {
        match digests.get(name) {
            None => {
                return Err(VerifyError::Altered(format!(
                    "{name}: listed in SHA256SUMS but missing from the bundle"
                )));
            }
            Some(actual) if actual != digest => {
                return Err(VerifyError::Altered(format!(
                    "{name}: ALTERED (sha256 {actual}, SHA256SUMS says {digest})"
                )));
            }
            Some(_) => {}
        }
    }
    for name in digests.keys() {
        if !listed.contains_key(name) && name != "SHA256SUMS" && name != "SHA256SUMS.sig" {
            return Err(VerifyError::Altered(format!(
                "{name}: in the bundle but not in SHA256SUMS (added after signing)"
            )));
        }
    }

    // The audit events: each hash recomputes, and consecutive events link.
    let audit = texts
        .get("audit.jsonl")
        .ok_or_else(|| shape("no audit.jsonl"))?;
    let mut events: BTreeMap<i64, Value> = BTreeMap::new();
    let mut prev: Option<(i64, String)> = None;
    for line in audit.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let e: Value =
            serde_json::from_slice(line).map_err(|_| shape("an audit.jsonl line is not JSON"))?;
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
        let number = |k: &str| e.get(k).and_then(Value::as_i64).unwrap_or_default();
        let seq = number("seq");
        let hash = chain_hash(
            seq,
            number("at"),
            text("actor"),
            text("action"),
            text("subject"),
            text("detail"),
            text("prev_hash"),
        );
        if hash != text("hash") {
            return Err(VerifyError::Altered(format!(
                "audit event {seq}: its content does not match its hash (ALTERED)"
            )));
        }
        if let Some((p_seq, p_hash)) = &prev
            && *p_seq + 1 == seq
            && *p_hash != text("prev_hash")
        {
            return Err(VerifyError::Altered(format!(
                "audit event {seq} does not follow event {p_seq} (ALTERED)"
            )));
        }
        prev = Some((seq, hash));
        events.insert(seq, e);
    }

    // The links that tie each event to the rest of the log (chain.json): the event after it names its
    // hash as its prev_hash, or the head at export names it. Checked here so that a bundle whose
    // chain.json contradicts its events never verifies, even though its signature holds.
    let chain: Value = serde_json::from_slice(
        texts
            .get("chain.json")
            .ok_or_else(|| shape("no chain.json"))?,
    )
    .map_err(|_| shape("chain.json is not JSON"))?;
    let head = (
        chain["head"]["seq"].as_i64().unwrap_or_default(),
        chain["head"]["hash"].as_str().unwrap_or_default(),
    );
    let mut linked: BTreeMap<i64, ()> = BTreeMap::new();
    for link in chain["links"].as_array().into_iter().flatten() {
        let seq = link["seq"].as_i64().unwrap_or_default();
        let Some(event) = events.get(&seq) else {
            return Err(VerifyError::Altered(format!(
                "chain.json links audit event {seq}, which audit.jsonl does not hold"
            )));
        };
        let hash = event["hash"].as_str().unwrap_or_default();
        let next = &link["next"];
        let holds = if next.is_null() {
            head == (seq, hash)
        } else {
            next["seq"].as_i64() == Some(seq + 1) && next["prev_hash"].as_str() == Some(hash)
        };
        if !holds {
            return Err(VerifyError::Altered(format!(
                "audit event {seq}: the event after it (or the chain head) does not link to it (ALTERED)"
            )));
        }
        linked.insert(seq, ());
    }
    if let Some(seq) = events.keys().find(|seq| !linked.contains_key(seq)) {
        return Err(VerifyError::Altered(format!(
            "audit event {seq}: chain.json gives no link for it"
        )));
    }

    // Each exact recording is the one its event vouches for.
    let session: Value = serde_json::from_slice(
        texts
            .get("session.json")
            .ok_or_else(|| shape("no session.json"))?,
    )
    .map_err(|_| shape("session.json is not JSON"))?;
    let mut recordings = 0;
    let mut absent = 0;
    for r in session["recordings"].as_array().into_iter().flatten() {
        // Named without its content: retention's deletion of that very recording must be in
        // audit.jsonl.
        if r["absent"].is_string() && r.get("file").is_none() {
            let seq = r["audit_seq"].as_i64().unwrap_or_default();
            let recording = r["recording"].as_i64();
            let deleted = events.get(&seq).is_some_and(|e| {
                let detail: Value = serde_json::from_str(e["detail"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                e["action"].as_str() == Some("recording.deleted")
                    && recording.is_some()
                    && detail["recording"].as_i64() == recording
            });
            if !deleted {
                return Err(VerifyError::Altered(format!(
                    "session.json names a recording absent, but audit event {seq} in audit.jsonl is not its deletion"
                )));
            }
            absent += 1;
            continue;
        }
        let file = r["file"].as_str().unwrap_or_default();
        let seq = r["audit_seq"].as_i64().unwrap_or_default();
        let actual = digests.get(file).ok_or_else(|| {
            VerifyError::Altered(format!("{file}: named in session.json but missing"))
        })?;
        let event = events.get(&seq).ok_or_else(|| {
            VerifyError::Altered(format!(
                "{file}: the audit event {seq} that vouches for it is not in audit.jsonl"
            ))
        })?;
        let detail: Value =
            serde_json::from_str(event["detail"].as_str().unwrap_or_default()).unwrap_or_default();
        let vouched = detail
            .get("recording_sha256")
            .or_else(|| detail.get("sha256"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if vouched != actual {
            return Err(VerifyError::Altered(format!(
                "{file}: ALTERED (sha256 {actual}, audit event {seq} vouches for {vouched})"
            )));
        }
        recordings += 1;
    }
    Ok(Verified {
        dir,
        signer,
        files: listed.len(),
        events: events.len(),
        recordings,
        absent,
        sums_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three chained events (seq 1..=3), the last one the head.
    fn chained() -> Vec<AuditRow> {
        let mut prev = "0".repeat(64);
        (1..=3)
            .map(|seq| {
                let detail = format!("{{\"n\":{seq}}}");
                let hash = chain_hash(
                    seq,
                    1_000 + seq,
                    "os:root",
                    "t",
                    "session:s1",
                    &detail,
                    &prev,
                );
                let row = AuditRow {
                    seq,
                    at: 1_000 + seq,
                    actor: "os:root".into(),
                    action: "t".into(),
                    subject: "session:s1".into(),
                    detail,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn collected(events: Vec<AuditRow>) -> Collected {
        let head = events.last().map(|e| (e.seq, e.hash.clone())).unwrap();
        let links = (0..events.len())
            .map(|i| events.get(i + 1).cloned())
            .collect();
        Collected {
            session: SessionRow {
                id: "s1".into(),
                vendor: "vera".into(),
                asset: "mri-01".into(),
                grant_id: 1,
                kind: "tunnel".into(),
                service: "dicom".into(),
                client_addr: "127.0.0.1:5".into(),
                detail: "mri-01:104".into(),
                started_at: 1_000,
                ended_at: Some(1_010),
                end_reason: None,
                end_cause: None,
                bytes_up: 0,
                bytes_down: 0,
                zone: "radiology".into(),
                hold: None,
                recordings: Vec::new(),
            },
            evidence: Vec::new(),
            events,
            links,
            head,
            looks_left_out: false,
            export_seq: 0,
        }
    }

    /// A bundle whose chain.json contradicts its events does not verify, even though it is signed (a
    /// bastion that wrote one would be wrong, and the inspector must not be told it holds).
    #[test]
    fn chain_links_that_do_not_hold_fail_verification_even_when_signed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let signer = Signer::create(&key).unwrap();
        let trusted = signer::allowed_signers(&signer, &key).unwrap();
        let bundle = |c: &Collected| {
            write(
                c,
                dir.path(),
                &signer,
                &trusted,
                "os:root",
                2_000,
                |_: &str, _: &str| Ok(()),
                Vec::new(),
            )
            .unwrap()
            .1
        };

        let good = collected(chained());
        let verified = verify(&bundle(&good)[..], &trusted).unwrap();
        assert_eq!((verified.events, verified.recordings), (3, 0));

        // Event 1's successor named with another prev_hash.
        let mut bad = collected(chained());
        bad.links[0].as_mut().unwrap().prev_hash = "f".repeat(64);
        let err = verify(&bundle(&bad)[..], &trusted).unwrap_err();
        assert!(err.to_string().contains("audit event 1"), "{err}");
        // The head at export names another event.
        let mut bad = collected(chained());
        bad.head.1 = "e".repeat(64);
        let err = verify(&bundle(&bad)[..], &trusted).unwrap_err();
        assert!(err.to_string().contains("audit event 3"), "{err}");
        // An event without a link.
        let mut bad = collected(chained());
        bad.events.push(bad.events[2].clone());
        bad.events[3].seq = 9;
        bad.events[3].hash = chain_hash(
            9,
            1_003,
            "os:root",
            "t",
            "session:s1",
            "{\"n\":3}",
            &bad.events[1].hash,
        );
        let err = verify(&bundle(&bad)[..], &trusted).unwrap_err();
        assert!(err.to_string().contains("audit event 9"), "{err}");
        // A file verify does not read is hashed as it streams by, never held, whatever its size: one
        // past the limit of what is held is reported as added after signing, not as too large.
        let mut padded = bundle(&good);
        padded.truncate(padded.len() - 1024);
        let mut tar = TarWriter::new(padded, 0);
        tar.file(
            "session-s1/notes.txt",
            MAX_TEXT + 1,
            std::io::repeat(b'x').take(MAX_TEXT + 1),
        )
        .unwrap();
        let padded = tar.finish().unwrap();
        let err = verify(&padded[..], &trusted).unwrap_err();
        assert!(
            err.to_string()
                .contains("notes.txt: in the bundle but not in SHA256SUMS"),
            "{err}"
        );
        // Signed by a key the inspector was not given.
        let other = dir.path().join("other");
        let other = signer::allowed_signers(&Signer::create(&other).unwrap(), &other).unwrap();
        assert!(verify(&bundle(&good)[..], &other).is_err());
    }
}
