//! `chaperone backup -o FILE` and `chaperone restore FILE --dir DIR`: a node's state in one file.
//!
//! A backup is a tar archive (ustar; `tar tf` lists it) holding `chaperone-backup.json` (what is inside,
//! with each file's SHA-256 and the audit chain's head at the time), the config as it was, the secrets
//! key, the SSH host key, the evidence signing key, the web certificate and key, any CA or client certificate files the config
//! names, a consistent copy of the SQLite database (`VACUUM INTO`, taken while the server runs), and
//! every recording. With PostgreSQL the database is not in the archive: back it up with `pg_dump` (the
//! archive says so); everything else still is. With a passphrase (`--passphrase-file`, or the
//! environment variable `CHAPERONE_BACKUP_PASSPHRASE`) the whole archive is sealed: Argon2id derives a
//! key, XChaCha20-Poly1305 seals it in 64 KiB chunks, the last one marked, so a cut-off file is refused.
//!
//! `restore` writes a new data directory: the files checked against their digests, the config's paths
//! pointed into the directory, the recordings' paths in the database moved there (audited as
//! `backup.restore`), and the audit chain verified before it says "restored".

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::init::write_new;
use crate::app::App;
use crate::audit::{Action, AuditEvent};

const MANIFEST: &str = "chaperone-backup.json";
const SEALED_MAGIC: &[u8] = b"chaperone-backup-sealed v1\n";
const CHUNK: usize = 64 * 1024;
const PASSPHRASE_ENV: &str = "CHAPERONE_BACKUP_PASSPHRASE";

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The archive to write (refused if it exists).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seal the archive with the passphrase in this file (first line). Or set CHAPERONE_BACKUP_PASSPHRASE.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive made by `chaperone backup`.
    pub file: PathBuf,
    /// The new data directory (must not exist, or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    /// The passphrase of a sealed archive, in this file. Or set CHAPERONE_BACKUP_PASSPHRASE.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// A PostgreSQL backup only: the database its pg_dump was restored into (pg_restore first). Every
    /// node that uses it must be stopped.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// What the archive holds, written first.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    chaperone: String,
    created_at: i64,
    /// `sqlite` (the database is `chaperone.db` in the archive) or `postgres` (it is not: pg_dump).
    database: String,
    audit_head_seq: i64,
    audit_head_hash: String,
    /// The recordings directory of the node backed up (absolute), as the database's paths name it.
    recording_dir: String,
    /// Archive name → SHA-256 (hex), for every file but the manifest.
    files: BTreeMap<String, String>,
    /// Config keys that named a file, and the archive name it was stored under.
    config_files: BTreeMap<String, String>,
}

fn passphrase(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the passphrase from {}", path.display()))?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        ensure!(
            line.len() >= 12,
            "the passphrase must be at least 12 characters"
        );
        return Ok(Some(line));
    }
    match std::env::var(PASSPHRASE_ENV) {
        Ok(p) if !p.is_empty() => {
            ensure!(
                p.len() >= 12,
                "the passphrase must be at least 12 characters"
            );
            Ok(Some(p))
        }
        _ => Ok(None),
    }
}

fn derive_key(passphrase: &str, salt: &[u8]) -> anyhow::Result<XChaCha20Poly1305> {
    let params = argon2::Params::new(64 * 1024, 3, 1, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| anyhow::anyhow!("deriving the backup key: {e}"))?;
    Ok(XChaCha20Poly1305::new(key.as_ref().into()))
}

fn nonce(prefix: &[u8; 16], counter: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(prefix);
    n[16..].copy_from_slice(&counter.to_be_bytes());
    XNonce::from(n)
}

/// Seals what is written to it in chunks; [`SealWriter::finish`] writes the last one.
struct SealWriter<W: Write> {
    out: W,
    cipher: XChaCha20Poly1305,
    prefix: [u8; 16],
    counter: u64,
    buf: Vec<u8>,
}

impl<W: Write> SealWriter<W> {
    fn new(mut out: W, passphrase: &str) -> anyhow::Result<SealWriter<W>> {
        let mut salt = [0u8; 16];
        let mut prefix = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        getrandom::fill(&mut prefix).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        out.write_all(SEALED_MAGIC)?;
        out.write_all(&salt)?;
        out.write_all(&prefix)?;
        Ok(SealWriter {
            out,
            cipher: derive_key(passphrase, &salt)?,
            prefix,
            counter: 0,
            buf: Vec::with_capacity(CHUNK),
        })
    }

    fn seal_chunk(&mut self, last: bool) -> std::io::Result<()> {
        let aad: &[u8] = if last { b"last" } else { b"more" };
        let sealed = self
            .cipher
            .encrypt(
                &nonce(&self.prefix, self.counter),
                Payload {
                    msg: &self.buf,
                    aad,
                },
            )
            .map_err(|_| std::io::Error::other("sealing a backup chunk"))?;
        self.counter += 1;
        let len = u32::try_from(sealed.len()).map_err(std::io::Error::other)?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&sealed)?;
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<W> {
        self.seal_chunk(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.seal_chunk(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a sealed archive chunk by chunk; a wrong passphrase, an altered chunk, a missing last chunk
/// or data after it is an error.
struct OpenReader<R: Read> {
    input: R,
    cipher: XChaCha20Poly1305,
    prefix: [u8; 16],
    counter: u64,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> OpenReader<R> {
    fn next_chunk(&mut self) -> std::io::Result<()> {
        let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .map_err(|_| invalid("the sealed backup is cut off (no last chunk)"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > CHUNK + 16 {
            return Err(invalid("the sealed backup is damaged (chunk too long)"));
        }
        let mut sealed = vec![0u8; len];
        self.input
            .read_exact(&mut sealed)
            .map_err(|_| invalid("the sealed backup is cut off"))?;
        let n = nonce(&self.prefix, self.counter);
        self.counter += 1;
        for (aad, last) in [(&b"more"[..], false), (&b"last"[..], true)] {
            if let Ok(plain) = self.cipher.decrypt(&n, Payload { msg: &sealed, aad }) {
                self.buf = plain;
                self.pos = 0;
                self.done = last;
                if last {
                    let mut extra = [0u8; 1];
                    if self.input.read(&mut extra)? != 0 {
                        return Err(invalid("data after the sealed backup's last chunk"));
                    }
                }
                return Ok(());
            }
        }
        Err(invalid(
            "cannot open the sealed backup: wrong passphrase, or the file was altered",
        ))
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---- ustar, the little of it we need -------------------------------------------------------------

fn tar_header(name: &str, size: u64, mode: u32) -> anyhow::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let (prefix, base) = if name.len() <= 100 {
        ("", name)
    } else {
        let cut = name[..name.len().min(156)]
            .rfind('/')
            .filter(|&i| name.len() - i - 1 <= 100 && i <= 155)
            .with_context(|| format!("{name}: name too long for the archive"))?;
        (&name[..cut], &name[cut + 1..])
    };
    h[..base.len()].copy_from_slice(base.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    ensure!(size < 8u64.pow(11), "{name}: too large for the archive");
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// Appends one file; returns its SHA-256. Copies exactly `size` bytes (a recording still being
/// written is taken as far as it was when the archive looked at it).
fn tar_append(
    out: &mut dyn Write,
    name: &str,
    mode: u32,
    size: u64,
    mut data: impl Read,
) -> anyhow::Result<String> {
    out.write_all(&tar_header(name, size, mode)?)?;
    let mut hash = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = data.read(&mut buf[..want])?;
        ensure!(n > 0, "{name}: shorter than its size when read");
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let pad = (512 - (size % 512) as usize) % 512;
    out.write_all(&vec![0u8; pad])?;
    Ok(hex::encode(hash.finalize()))
}

/// Reads the next entry's header: `None` at the end-of-archive blocks.
fn tar_next(input: &mut dyn Read) -> anyhow::Result<Option<(String, u64, u32)>> {
    let mut h = [0u8; 512];
    input.read_exact(&mut h).context("the archive is cut off")?;
    if h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stored: u32 = h[..148]
        .iter()
        .chain([b' '; 8].iter())
        .chain(h[156..].iter())
        .map(|&b| u32::from(b))
        .sum();
    let field = |r: std::ops::Range<usize>| {
        let raw = &h[r];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).trim().to_owned()
    };
    let octal = |r: std::ops::Range<usize>| u64::from_str_radix(&field(r), 8);
    ensure!(
        octal(148..156).ok() == Some(u64::from(stored)),
        "the archive is damaged (a header's checksum does not match)"
    );
    ensure!(
        h[156] == b'0' || h[156] == 0,
        "the archive holds something other than plain files"
    );
    let size = octal(124..136).context("the archive is damaged (size)")?;
    let mode = u32::try_from(octal(100..108).context("the archive is damaged (mode)")?)?;
    let base = field(0..100);
    let prefix = field(345..500);
    let name = if prefix.is_empty() {
        base
    } else {
        format!("{prefix}/{base}")
    };
    Ok(Some((name, size, mode)))
}

/// An archive name is a plain relative path: no `..`, no absolute path, nothing odd.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('/')
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

// ---- backup ------------------------------------------------------------------------------------

/// The config keys that name files to keep, and their values.
fn config_files(app: &App) -> Vec<(&'static str, PathBuf)> {
    let c = &app.config;
    let mut files = vec![
        ("ssh.host_key", c.ssh.host_key.clone()),
        ("web.tls_cert", c.web.tls_cert.clone()),
        ("web.tls_key", c.web.tls_key.clone()),
        ("secrets.key_file", c.secrets.key_file.clone()),
    ];
    // The key that signs evidence bundles (a data directory made before it existed has none yet).
    if c.recording.signing_key.exists() {
        files.push(("recording.signing_key", c.recording.signing_key.clone()));
    }
    // The directory's service account password (a restore without it could not reach the
    // directory) and the CA that checks it.
    if let Some(l) = &c.ldap {
        files.push(("ldap.bind_password_file", l.bind_password_file.clone()));
        if let Some(ca) = &l.ca_file {
            files.push(("ldap.ca_file", ca.clone()));
        }
    }
    if let Some(m) = &c.mail
        && let Some(ca) = &m.ca_file
    {
        files.push(("mail.ca_file", ca.clone()));
    }
    if let Some(w) = &c.webhook
        && let Some(ca) = &w.ca_file
    {
        files.push(("webhook.ca_file", ca.clone()));
    }
    if let Some(a) = &c.atna {
        for (key, path) in [
            ("atna.ca_file", &a.ca_file),
            ("atna.client_cert", &a.client_cert),
            ("atna.client_key", &a.client_key),
        ] {
            if let Some(p) = path {
                files.push((key, p.clone()));
            }
        }
    }
    files
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o600
    }
}

/// Every regular file under `dir`, as (path relative to `dir` with `/`, full path).
fn walk(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, path)) = todo.pop() {
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push((rel, entry.path()));
            } else if kind.is_file() {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub async fn backup(config: &Path, args: BackupArgs) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let passphrase = passphrase(args.passphrase_file.as_deref())?;
    let now = app.clock.now();
    let postgres = app.config.database.is_postgres();
    // Who copied everything out, and where to: audited before the copy (the archive holds its own
    // event; an attempt that fails later is on record as one).
    let mut tx = app.store.begin().await?;
    tx.audit(
        AuditEvent::new(
            crate::identity::os_actor(),
            Action::BackupCreate,
            "backup",
            serde_json::json!({"output": args.output.display().to_string(),
                               "sealed": passphrase.is_some(),
                               "database": if postgres { "postgres" } else { "sqlite" }}),
        ),
        now,
    )
    .await?;
    tx.commit("backup.create").await?;
    if passphrase.is_none() {
        eprintln!(
            "warning: this backup is not sealed. It holds the secrets key beside the database (every \
             TOTP seed and device credential), the evidence signing key and every recording; keep it \
             as you keep the server, or seal it (--passphrase-file)"
        );
    }
    let (head_seq, head_hash) = app.store.audit_head().await?;
    // Private from its creation (a mode set afterwards leaves a moment to open it), and made first:
    // an output that exists already stops the backup before anything is copied anywhere.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    set_private(&args.output);
    // The database first: recordings are append-only files, so what the snapshot vouches for is
    // already complete on disk when they are copied after it. The snapshot is an unsealed copy of
    // the database: it is made beside the database (the data directory), never beside the output (a
    // share the sealed archive is meant for), and removed however the backup ends.
    let scratch = app
        .config
        .database
        .sqlite_file()
        .map(tempfile_dir)
        .transpose();
    let db_copy = scratch
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .map(|dir| dir.join("chaperone.db"));
    let snapshot = match (&scratch, &db_copy) {
        (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
        (Ok(_), Some(copy)) => app.store.snapshot_sqlite(copy).await.map_err(Into::into),
        (Ok(_), None) => Ok(()),
    };
    let result = snapshot.and_then(|()| -> anyhow::Result<u64> {
        let buffered = std::io::BufWriter::new(file);
        let mut sink = match &passphrase {
            Some(p) => Sink::Sealed(SealWriter::new(buffered, p)?),
            None => Sink::Plain(buffered),
        };
        let mut entries: Vec<(String, PathBuf, u32)> = Vec::new();
        let original_config = app.config.path.clone();
        entries.push(("chaperone.toml".into(), original_config, 0o600));
        let mut config_map = BTreeMap::new();
        for (key, path) in config_files(&app) {
            let name = format!(
                "files/{}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| key.replace('.', "_"))
            );
            ensure!(
                !config_map.values().any(|n| n == &name),
                "two config files share the name {name}"
            );
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("reading {} ({key})", path.display()))?;
            config_map.insert(key.to_owned(), name.clone());
            entries.push((name, path, mode_of(&meta)));
        }
        // The public keys of earlier evidence signers, restored beside the signing key where the
        // signer looks for them: without them bundles signed before a rotation no longer verify.
        let retired = crate::evidence::signer::retired_path(&app.config.recording.signing_key);
        if let Some(signing) = config_map.get("recording.signing_key")
            && let Ok(meta) = std::fs::metadata(&retired)
        {
            entries.push((format!("{signing}.retired"), retired, mode_of(&meta)));
        }
        if let Some(copy) = &db_copy {
            entries.push(("chaperone.db".into(), copy.clone(), 0o600));
        }
        let recording_dir = std::fs::canonicalize(&app.config.recording.dir)
            .unwrap_or_else(|_| app.config.recording.dir.clone());
        for (rel, path) in walk(&recording_dir)? {
            entries.push((format!("recordings/{rel}"), path, 0o600));
        }
        // The manifest names every file with its digest, so it is written last in spirit but first in
        // the archive: digests are computed on a first pass over the (immutable or snapshot) files,
        // sizes fixed then, and the second pass copies exactly those bytes and checks them.
        let mut sized = Vec::new();
        let mut files = BTreeMap::new();
        for (name, path, mode) in &entries {
            ensure!(safe_name(name), "cannot archive the name {name:?}");
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let size = f.metadata()?.len();
            let mut hash = Sha256::new();
            std::io::copy(&mut f.take(size), &mut HashWriter(&mut hash))?;
            files.insert(name.clone(), hex::encode(hash.finalize()));
            sized.push((name.clone(), path.clone(), *mode, size));
        }
        let manifest = Manifest {
            format: "chaperone-backup v1".into(),
            chaperone: env!("CARGO_PKG_VERSION").into(),
            created_at: now,
            database: if postgres { "postgres" } else { "sqlite" }.into(),
            audit_head_seq: head_seq,
            audit_head_hash: head_hash.clone(),
            recording_dir: recording_dir.display().to_string(),
            files: files.clone(),
            config_files: config_map,
        };
        let manifest = serde_json::to_vec_pretty(&manifest)?;
        tar_append(
            &mut sink,
            MANIFEST,
            0o600,
            manifest.len() as u64,
            &manifest[..],
        )?;
        let mut total = 0u64;
        for (name, path, mode, size) in sized {
            let f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let digest = tar_append(&mut sink, &name, mode, size, f)?;
            ensure!(
                files.get(&name) == Some(&digest),
                "{} changed while it was being backed up",
                path.display()
            );
            total += size;
        }
        sink.write_all(&[0u8; 1024])?;
        let file = match sink {
            Sink::Plain(w) => w.into_inner().map_err(|e| e.into_error())?,
            Sink::Sealed(w) => w.finish()?.into_inner().map_err(|e| e.into_error())?,
        };
        file.sync_all()?;
        Ok(total)
    });
    if let Ok(Some(dir)) = &scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    let total = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&args.output);
            return Err(e);
        }
    };
    app.store.close().await;
    println!(
        "backup written to {} ({} MB{}): config, keys{}, recordings; audit head {head_seq}",
        args.output.display(),
        total / 1_000_000,
        if passphrase.is_some() { ", sealed" } else { "" },
        if postgres { "" } else { ", database" },
    );
    if postgres {
        println!(
            "the database is PostgreSQL: back it up with pg_dump at the same time, e.g.\n  \
             pg_dump --format=custom --file=chaperone.pgdump \"$DATABASE_URL\"\n\
             and restore it with pg_restore before `chaperone restore` (the archive holds the secrets \
             key that opens its sealed columns)"
        );
    }
    Ok(())
}

/// Where the archive goes: the file, or the sealing writer in front of it.
enum Sink<W: Write> {
    Plain(W),
    Sealed(SealWriter<W>),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(data),
            Sink::Sealed(w) => w.write(data),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.update(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A private scratch directory beside the output (same filesystem, not world-readable).
/// A new private directory beside `file`.
fn tempfile_dir(file: &Path) -> anyhow::Result<PathBuf> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(
        ".chaperone-backup-{}",
        crate::secrets::random_hex(6)
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn set_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

// ---- restore -----------------------------------------------------------------------------------

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let mut magic = vec![0u8; SEALED_MAGIC.len()];
    let sealed = file.read_exact(&mut magic).is_ok() && magic == SEALED_MAGIC;
    let given = passphrase(args.passphrase_file.as_deref())?;
    // Whoever gives a passphrase sealed their backups: an archive that is not sealed is not one of
    // them (swapped where backups are kept, with its own keys and accounts), and nothing in it could
    // say who made it.
    ensure!(
        sealed || given.is_none(),
        "{} is not sealed, but a passphrase was given: it is not a backup sealed with it; \
         refusing to restore it (restore an unsealed backup without a passphrase)",
        args.file.display()
    );
    let mut input: Box<dyn Read> = if sealed {
        let passphrase = given.context(
            "the backup is sealed: give its passphrase (--passphrase-file, or CHAPERONE_BACKUP_PASSPHRASE)",
        )?;
        let mut salt = [0u8; 16];
        let mut prefix = [0u8; 16];
        file.read_exact(&mut salt)
            .context("the sealed backup is cut off")?;
        file.read_exact(&mut prefix)
            .context("the sealed backup is cut off")?;
        Box::new(OpenReader {
            input: std::io::BufReader::new(file),
            cipher: derive_key(&passphrase, &salt)?,
            prefix,
            counter: 0,
            buf: Vec::new(),
            pos: 0,
            done: false,
        })
    } else {
        drop(file);
        Box::new(std::io::BufReader::new(std::fs::File::open(&args.file)?))
    };

    // The directory: new, or empty.
    if args.dir.exists() {
        ensure!(
            std::fs::read_dir(&args.dir)?.next().is_none(),
            "{} is not empty: restore into a new directory",
            args.dir.display()
        );
    }
    super::init::create_private_dir(&args.dir)?;
    let dir = args.dir.canonicalize()?;

    let (name, size, _) = tar_next(&mut *input)?.context("the archive is empty")?;
    ensure!(
        name == MANIFEST && size <= 16 * 1024 * 1024,
        "not a chaperone backup (no manifest first)"
    );
    let mut raw = vec![0u8; usize::try_from(size)?];
    input.read_exact(&mut raw)?;
    skip_padding(&mut *input, size)?;
    let manifest: Manifest =
        serde_json::from_slice(&raw).context("not a chaperone backup (manifest)")?;
    ensure!(
        manifest.format == "chaperone-backup v1",
        "unknown backup format {:?}",
        manifest.format
    );
    // A PostgreSQL backup's database is not in the archive: the command writes into the database it is
    // told, never the backed-up config's (which is the running installation's own).
    match (manifest.database.as_str(), &args.database_url) {
        ("postgres", None) => bail!(
            "the backup's database is PostgreSQL, and it is not in the archive: restore its pg_dump with \
             pg_restore into a database no running node uses, then give that database with --database-url"
        ),
        ("postgres", Some(url))
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") =>
        {
            bail!("--database-url must be a postgres:// URL")
        }
        ("sqlite", Some(_)) => {
            bail!("the backup holds its SQLite database; restore it without --database-url")
        }
        _ => {}
    }
    let mut seen = BTreeMap::new();
    while let Some((name, size, mode)) = tar_next(&mut *input)? {
        ensure!(
            safe_name(&name),
            "the archive holds an unsafe name {name:?}"
        );
        let want = manifest.files.get(&name).with_context(|| {
            format!("the archive holds {name}, which its manifest does not list")
        })?;
        let target = dir.join(&name);
        if let Some(parent) = target.parent() {
            super::init::create_private_dir(parent)?;
        }
        let mode = if name.starts_with("recordings/") || name == "chaperone.toml" {
            0o600
        } else {
            mode & 0o644
        };
        let mut out = std::fs::OpenOptions::new();
        out.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            out.mode(mode);
        }
        let mut out = out
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let mut hash = Sha256::new();
        let mut left = size;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64))?;
            input
                .read_exact(&mut buf[..n])
                .context("the archive is cut off")?;
            hash.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        skip_padding(&mut *input, size)?;
        ensure!(
            &hex::encode(hash.finalize()) == want,
            "{name} does not match its digest in the manifest: the archive was altered or damaged"
        );
        seen.insert(name, ());
    }
    if let Some(missing) = manifest.files.keys().find(|n| !seen.contains_key(*n)) {
        bail!("the archive lacks {missing}, which its manifest lists (cut off?)");
    }

    // The config, pointed into the new directory.
    let original = std::fs::read_to_string(dir.join("chaperone.toml"))?;
    let mut table: toml::Table = toml::from_str(&original).context("the backed-up config")?;
    let mut set = |key: &str, value: String| {
        let (section, field) = key.split_once('.').unwrap_or(("", key));
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(field.to_owned(), toml::Value::String(value));
        }
    };
    for (key, name) in &manifest.config_files {
        set(key, name.clone());
    }
    set("recording.dir", "recordings".into());
    match &args.database_url {
        Some(url) => set("database.url", url.clone()),
        None => set("database.url", "sqlite://chaperone.db".into()),
    }
    std::fs::remove_file(dir.join("chaperone.toml"))?;
    let text = format!(
        "# Restored by `chaperone restore` from {} (backup of {}); paths point into this directory.\n{}",
        // A comment line: a control character in the path (a newline) would start a config line.
        args.file
            .display()
            .to_string()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>(),
        crate::clock::format_time(manifest.created_at),
        toml::to_string(&table).context("writing the restored config")?
    );
    let config_path = dir.join("chaperone.toml");
    write_new(&config_path, text.as_bytes(), 0o600)?;
    super::init::create_private_dir(&dir.join("recordings"))?;

    // The database: the recordings' paths moved here, audited; then the whole chain checked.
    // A PostgreSQL database is shared with whatever else uses it: no node may be running on it, and it
    // must hold this backup's chain (a dump of the same installation, taken with the backup or later).
    let app = if manifest.database == "postgres" {
        super::offline::open(&config_path, "restore").await?
    } else {
        App::open(&config_path).await?
    };
    let new_recordings = dir.join("recordings");
    let now = app.clock.now();
    // The head the manifest names (and the operator compares with a copy kept elsewhere) must be the
    // restored log's, at its place: printed unchecked, a forged log would borrow a genuine head.
    let hash = app.store.audit_hash_at(manifest.audit_head_seq).await?;
    ensure!(
        manifest.audit_head_seq == 0 || hash.as_deref() == Some(manifest.audit_head_hash.as_str()),
        "the database's audit log does not hold this backup's head (event {}): {}",
        manifest.audit_head_seq,
        if manifest.database == "postgres" {
            "it is not a restore of a pg_dump of the same installation, taken with the backup"
        } else {
            "the archive's database is not the one its manifest describes"
        }
    );
    let (restored_seq, _) = app.store.audit_head().await?;
    let mut tx = app.store.begin().await?;
    let moved = tx
        .relocate_recordings(
            &manifest.recording_dir,
            &new_recordings.display().to_string(),
        )
        .await?;
    tx.audit(
        AuditEvent::new(
            crate::identity::os_actor(),
            Action::BackupRestore,
            "backup",
            serde_json::json!({"backup_created_at": manifest.created_at, "audit_head_seq": manifest.audit_head_seq,
                   "audit_head_hash": manifest.audit_head_hash, "recordings_moved": moved,
                   "from_recording_dir": manifest.recording_dir}),
        ),
        now,
    )
    .await?;
    tx.commit("backup.restore").await?;
    let events = super::audit::verify_chain(&app.store)
        .await
        .context("the restored audit log does not verify")?;
    app.store.close().await;
    println!(
        "restored into {} ({} files; audit log intact: {events} events)",
        dir.display(),
        seen.len()
    );
    println!(
        "the backup was made at {} with audit head {}:{} (held by the restored log, {} event(s) after it \
         before this restore){}",
        crate::clock::format_time(manifest.created_at),
        manifest.audit_head_seq,
        manifest.audit_head_hash,
        restored_seq.saturating_sub(manifest.audit_head_seq),
        if sealed {
            ""
        } else {
            "; it was not sealed, so nothing proves who made it: check that head against your \
             audit export or SIEM"
        }
    );
    println!(
        "serve it with: chaperone -c {} serve",
        config_path.display()
    );
    Ok(())
}

fn skip_padding(input: &mut dyn Read, size: u64) -> anyhow::Result<()> {
    let pad = (512 - (size % 512) as usize) % 512;
    let mut buf = [0u8; 512];
    input
        .read_exact(&mut buf[..pad])
        .context("the archive is cut off")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_directory() {
        for ok in ["chaperone.db", "recordings/a.cast", "files/web_key.pem"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a b",
        ] {
            assert!(!safe_name(bad), "{bad}");
        }
    }

    #[test]
    fn tar_round_trip_and_seal() {
        let mut plain = Vec::new();
        tar_append(&mut plain, "a/b.txt", 0o600, 5, &b"hello"[..]).unwrap();
        plain.extend_from_slice(&[0u8; 1024]);
        let mut r = &plain[..];
        assert_eq!(
            tar_next(&mut r).unwrap(),
            Some(("a/b.txt".to_owned(), 5, 0o600))
        );
        let mut sealed = SealWriter::new(Vec::new(), "correct horse battery").unwrap();
        sealed.write_all(&plain).unwrap();
        let bytes = sealed.finish().unwrap();
        let open = |pass: &str, bytes: &[u8]| {
            let salt: [u8; 16] = bytes[SEALED_MAGIC.len()..SEALED_MAGIC.len() + 16]
                .try_into()
                .unwrap();
            let prefix: [u8; 16] = bytes[SEALED_MAGIC.len() + 16..SEALED_MAGIC.len() + 32]
                .try_into()
                .unwrap();
            let mut r = OpenReader {
                input: &bytes[SEALED_MAGIC.len() + 32..],
                cipher: derive_key(pass, &salt).unwrap(),
                prefix,
                counter: 0,
                buf: Vec::new(),
                pos: 0,
                done: false,
            };
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        };
        assert_eq!(open("correct horse battery", &bytes).unwrap(), plain);
        assert!(open("wrong horse battery", &bytes).is_err());
        assert!(open("correct horse battery", &bytes[..bytes.len() - 1]).is_err());
    }
}
