//! `chaperone secrets rotate`: a new secrets key, every sealed value re-sealed under it in one
//! transaction, then the key files swapped.
//!
//! Order, so that a crash at any point leaves a state the next run finishes or undoes:
//! 1. the new key is written to `KEY.new` (0600, never overwritten);
//! 2. one transaction opens every sealed value with the old key, seals it with the new one and audits
//!    `secrets.rotate` — all or nothing;
//! 3. the old key moves to `KEY.retired-OLDID` and `KEY.new` to `KEY`.
//!
//! A run that finds `KEY.new` looks at the database: everything sealed under it means step 3 is left to
//! do; everything still under the current key means step 2 never committed, so the stale file goes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use crate::app::App;
use crate::audit::{Action, AuditEvent, HeadSeal};
use crate::identity::os_actor;
use crate::search_index::PlaybackSeal;
use crate::secrets::SecretsKey;
use crate::store::{SealJudge, SealedKind};

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Make a new secrets key and re-seal every stored secret under it. Stop chaperone first (every
    /// node), and back up the data directory; restart afterwards with the new key file on every node.
    Rotate,
}

pub async fn run(config: &Path, cmd: SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Rotate => rotate(config).await,
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn rotate(config: &Path) -> anyhow::Result<()> {
    // A running node keeps the old key in memory: every login it judges after the commit would fail,
    // and what it seals would be under a retired key.
    let app = super::offline::open(config, "secrets rotate").await?;
    let key_path = app.config.secrets.key_file.clone();
    let new_path = sibling(&key_path, ".new");
    let old = &app.secrets;

    if new_path.exists() {
        let pending = SecretsKey::load(&new_path).with_context(|| {
            format!(
                "a rotation was interrupted: {} is there",
                new_path.display()
            )
        })?;
        let mut tx = app.store.begin().await?;
        let values = tx.sealed_values().await?;
        drop(tx);
        // The rotation's transaction also sealed the audit chain's head under the new key: with no
        // sealed values (nothing to tell by), the head says whether it committed.
        let head_under_new = app
            .store
            .head_sealed_under(&HeadSeal::new(&pending))
            .await?
            .is_ok_and(|(seq, _)| seq > 0);
        let committed = if values.is_empty() {
            head_under_new
        } else {
            values.iter().all(|v| pending.sealed_by_me(&v.blob))
        };
        if committed {
            swap(&key_path, &new_path, &old.id())?;
            println!(
                "completed an interrupted rotation: {} is now the secrets key (id {}); the old key is at {}",
                key_path.display(),
                pending.id(),
                sibling(&key_path, &format!(".retired-{}", old.id())).display()
            );
            return Ok(());
        }
        if values.iter().all(|v| old.sealed_by_me(&v.blob)) {
            // The re-sealing never committed: that key sealed nothing.
            std::fs::remove_file(&new_path)
                .with_context(|| format!("removing the unused {}", new_path.display()))?;
        } else {
            bail!(
                "{} exists and the database holds values sealed under neither key; restore the backup taken before the rotation",
                new_path.display()
            );
        }
    }

    let new = SecretsKey::generate_file(&new_path)?;
    // Run as root under sudo, the new key would be root's: the service could not read it.
    crate::key_files::owned_like(&new_path, &key_path).with_context(|| {
        format!(
            "giving {} the owner of {}",
            new_path.display(),
            key_path.display()
        )
    })?;
    let resealed = match reseal(&app, &new).await {
        Ok(counts) => counts,
        Err(e) => {
            // The new key stays: if the commit went through after all (a dropped connection), it is the
            // only key that opens the database. The next run removes it only if it sealed nothing.
            return Err(e.context(format!(
                "rotation aborted: nothing was changed unless the commit itself failed; run `chaperone secrets rotate` again to finish or undo ({} is kept until then)",
                new_path.display()
            )));
        }
    };
    app.store.close().await;
    swap(&key_path, &new_path, &old.id())?;
    let retired = sibling(&key_path, &format!(".retired-{}", old.id()));
    println!(
        "re-sealed {} vendor TOTP seeds, {} staff TOTP seeds and {} device credentials under key {} (was {}).",
        resealed[0],
        resealed[1],
        resealed[2],
        new.id(),
        old.id()
    );
    println!(
        "{} is the new key. The old key is at {}: keep it only as long as you keep backups sealed under it, then delete it.",
        key_path.display(),
        retired.display()
    );
    println!("Copy the new key to every chaperone node (mode 0600), then start chaperone again.");
    Ok(())
}

/// Opens every sealed value with the current key and seals it under `new`, in one audited transaction.
/// Returns the counts of vendor seeds, staff seeds and device credentials.
async fn reseal(app: &App, new: &SecretsKey) -> anyhow::Result<[usize; 3]> {
    let mut tx = app.store.begin().await?;
    let values = tx.sealed_values().await?;
    let mut counts = [0usize; 3];
    for v in &values {
        let purpose = v.purpose();
        let secret = app
            .secrets
            .open(&purpose, &v.blob)
            .with_context(|| format!("opening {purpose} with the current key"))?;
        tx.reseal(v, &new.seal(&purpose, secret.expose())).await?;
        counts[match v.kind {
            SealedKind::VendorTotp => 0,
            SealedKind::StaffTotp => 1,
            SealedKind::AssetCredential => 2,
        }] += 1;
    }
    // A value another command added meanwhile, sealed under the old key, would be lost with it: the
    // rotation is refused instead (nothing changed; run it again).
    if let Some(late) = tx
        .sealed_values()
        .await?
        .iter()
        .find(|v| new.open(&v.purpose(), &v.blob).is_err())
    {
        bail!(
            "{} was written under the old key while the rotation ran: stop other chaperone commands \
             and run `chaperone secrets rotate` again",
            late.purpose()
        );
    }
    // Playback indexes carry a MAC keyed by the secrets key: each that holds under the old key is signed
    // again under the new one (one that does not stays flagged as altered, as it was).
    let (old_seal, new_seal) = (PlaybackSeal::new(&app.secrets), PlaybackSeal::new(new));
    let mut playback = 0usize;
    for id in tx.sealed_playback_ids().await? {
        let Some((sha256, json, mac)) = tx.sealed_playback(id).await? else {
            continue;
        };
        if old_seal.holds(id, &sha256, &json, &mac)
            && tx
                .reseal_playback(id, &mac, &new_seal.sign(id, &sha256, &json))
                .await?
        {
            playback += 1;
        }
    }
    tx.audit(
        AuditEvent::new(
            os_actor(),
            Action::SecretsRotate,
            "secrets:key",
            json!({"from": app.secrets.id(), "to": new.id(), "vendor_totp": counts[0],
                   "staff_totp": counts[1], "asset_credentials": counts[2],
                   "playback_indexes": playback}),
        ),
        app.clock.now(),
    )
    .await?;
    // The chain head's seal is keyed by the secrets key too: sealed again under the new key, in the
    // same transaction, unless it did not hold under the old one (that break stays one).
    let (_, resealed) = tx
        .seal_head(
            SealJudge::HeldUnder(&HeadSeal::new(&app.secrets)),
            &HeadSeal::new(new),
        )
        .await?;
    tx.commit("secrets.rotate").await?;
    if !resealed {
        eprintln!(
            "warning: the audit log's head did not carry its seal under the old key and was not sealed \
             under the new one; see `chaperone audit verify`"
        );
    }
    Ok(counts)
}

/// `KEY` → `KEY.retired-OLDID`, then `KEY.new` → `KEY`, then the directory synced.
fn swap(key_path: &Path, new_path: &Path, old_id: &str) -> anyhow::Result<()> {
    let retired = sibling(key_path, &format!(".retired-{old_id}"));
    if retired.exists() {
        bail!(
            "{} already exists; move it away and run `chaperone secrets rotate` again",
            retired.display()
        );
    }
    std::fs::rename(key_path, &retired)
        .with_context(|| format!("moving {} to {}", key_path.display(), retired.display()))?;
    std::fs::rename(new_path, key_path)
        .with_context(|| format!("moving {} to {}", new_path.display(), key_path.display()))?;
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}
