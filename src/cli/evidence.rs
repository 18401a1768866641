//! `chaperone evidence …`: a session's evidence bundle (recordings, audit events and their chain
//! links, SHA256SUMS and an SSH signature) that an inspector verifies alone with `ssh-keygen -Y
//! verify` and `sha256sum -c`, and the key that signs it. The bundle itself is the library's
//! (`evidence::bundle`), so the web page's download makes the same one.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use crate::app::App;
use crate::audit::{Action, AuditEvent};
use crate::config::Config;
use crate::evidence::bundle::{self, VERIFY_SIGNATURE, VERIFY_SUMS};
use crate::evidence::signer::{self, Signer, SignerError};
use crate::identity::os_actor;

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Write session ID's evidence bundle to FILE.tar: its recordings (exactly as written, and a
    /// .cast for players), its audit events with the chain links that tie them to the log,
    /// SHA256SUMS, SHA256SUMS.sig and a README with the two commands that verify it. Every recording
    /// is proved against the digest the audit log vouches for first; audited (evidence.export).
    Export {
        id: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Verify a bundle as an inspector would (the signature of SHA256SUMS, every file's digest), and
    /// also every audit event's hash and each recording against the event that vouches for it.
    /// Trusts the keys of --allowed-signers, or else this bastion's own signing key.
    Verify {
        file: PathBuf,
        /// An allowed_signers file (the lines `chaperone evidence signer` printed).
        #[arg(long)]
        allowed_signers: Option<PathBuf>,
    },
    /// Print the allowed_signers lines to hand to an inspector (this bastion's signing key, and keys
    /// it used before a rotation). Creates the key if this data directory has none yet (audited).
    Signer {
        /// Replace the signing key by a new one; bundles signed with the old key still verify with
        /// the lines printed afterwards (audited).
        #[arg(long)]
        rotate: bool,
    },
}

pub async fn run(config: &Path, cmd: EvidenceCommand) -> anyhow::Result<()> {
    match cmd {
        EvidenceCommand::Export { id, output } => export(config, &id, &output).await,
        EvidenceCommand::Verify {
            file,
            allowed_signers,
        } => verify(config, &file, allowed_signers.as_deref()),
        EvidenceCommand::Signer { rotate } => signer(config, rotate).await,
    }
}

async fn export(config: &Path, id: &str, output: &Path) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    // Nothing is written before the key and the session are known to be there.
    Signer::load(&app.config.recording.signing_key)?;
    app.store.session(id).await?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(output)
        .with_context(|| format!("creating {}", output.display()))?;
    let result = bundle::export(
        &app.store,
        &app.config.recording,
        id,
        &os_actor(),
        "cli",
        app.clock.now(),
        BufWriter::with_capacity(256 * 1024, file),
    )
    .await
    .map_err(anyhow::Error::from)
    .and_then(|(exported, out)| {
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(exported)
    });
    let exported = match result {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::remove_file(output);
            return Err(e);
        }
    };
    println!(
        "Session {id} exported to {}: {} files, SHA256SUMS signed by {} (audit event {}); SHA256SUMS \
         has SHA-256 {}, recorded as evidence.signed.",
        output.display(),
        exported.files.len(),
        exported.signer,
        exported.audit_seq,
        exported.sums_sha256
    );
    println!("Verify: tar xf {} && cd {}", output.display(), exported.dir);
    println!("  {VERIFY_SIGNATURE}");
    println!("  {VERIFY_SUMS}");
    Ok(())
}

fn verify(config: &Path, file: &Path, allowed_signers: Option<&Path>) -> anyhow::Result<()> {
    let trusted = match allowed_signers {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            let own = Config::load(config)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    let key = &c.recording.signing_key;
                    Ok(signer::allowed_signers(&Signer::load(key)?, key)?)
                });
            own.context(
                "no allowed signers to trust: pass --allowed-signers FILE (the lines `chaperone \
                 evidence signer` printed)",
            )?
        }
    };
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let verified = bundle::verify(
        std::io::BufReader::with_capacity(256 * 1024, input),
        &trusted,
    )
    .with_context(|| format!("{}: does NOT verify", file.display()))?;
    println!(
        "{}: intact. SHA256SUMS is signed by {}; {} files match it; {} audit events recompute; {} \
         recording(s) match the digest the audit log vouches for.",
        file.display(),
        verified.signer,
        verified.files,
        verified.events,
        verified.recordings
    );
    if verified.absent > 0 {
        println!(
            "{} recording(s) not in the bundle (deleted by retention): session.json names each deletion.",
            verified.absent
        );
    }
    println!(
        "To confirm the hospital's bastion made it: its audit log holds an evidence.signed event with \
         sums_sha256 {}.",
        verified.sums_sha256
    );
    Ok(())
}

async fn signer(config: &Path, rotate: bool) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let path = app.config.recording.signing_key.clone();
    let now = app.clock.now();
    let (current, event) = if rotate {
        let rotated = signer::rotate(&path, now)?;
        let event = json!({"old": rotated.old_fingerprint, "new": rotated.new.fingerprint(),
                           "path": path.display().to_string()});
        eprintln!(
            "Rotated the evidence signing key {}: {} replaces {} (retired keys: {}).",
            path.display(),
            rotated.new.fingerprint(),
            rotated.old_fingerprint,
            signer::retired_path(&path).display()
        );
        (rotated.new, Some((Action::EvidenceSignerRotate, event)))
    } else {
        match Signer::load(&path) {
            Ok(s) => (s, None),
            Err(SignerError::Missing { .. }) => {
                let s = Signer::create_owned_like(&path, &app.config.secrets.key_file)?;
                eprintln!(
                    "Created the evidence signing key {} ({}). Hand the line below to your inspectors.",
                    path.display(),
                    s.fingerprint()
                );
                let event =
                    json!({"fingerprint": s.fingerprint(), "path": path.display().to_string()});
                (s, Some((Action::EvidenceSignerCreate, event)))
            }
            Err(e) => bail!(e),
        }
    };
    if let Some((action, detail)) = event {
        let mut tx = app.store.begin().await?;
        tx.audit(AuditEvent::new(os_actor(), action, "evidence", detail), now)
            .await?;
        tx.commit(action.as_str()).await?;
    }
    print!("{}", signer::allowed_signers(&current, &path)?);
    Ok(())
}
