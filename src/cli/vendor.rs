//! `chaperone vendor …`: enrol vendors, their keys and TOTP.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::display::esc;
use super::output::{json, table};
use super::refuse;
use crate::app::App;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::identity::keys::parse_public_key;
use crate::identity::{os_actor, totp};
use crate::model::{check_name, check_text};

#[derive(Debug, Subcommand)]
pub enum VendorCommand {
    /// Enrol a vendor technician: prints their TOTP provisioning URI (otpauth://…).
    Add {
        name: String,
        /// Their organisation (matches assets' --vendor-org).
        #[arg(long)]
        org: String,
        /// Their OpenSSH public key file (.pub).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List vendors.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one vendor with keys.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Disable a vendor: no new logins.
    Disable { name: String },
    /// Re-enable a disabled vendor.
    Enable { name: String },
    /// Add or remove a vendor's SSH keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a public key to a vendor.
    Add { name: String, pubkey_file: PathBuf },
    /// Remove a public key from a vendor.
    Remove { name: String, pubkey_file: PathBuf },
}

fn read_key(path: &Path) -> anyhow::Result<crate::identity::keys::ParsedKey> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > 16 * 1024 {
        anyhow::bail!("{} is too large to be a public key", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    refuse(parse_public_key(&text).map_err(|e| format!("{}: {e}", path.display())))
}

pub async fn run(config: &Path, cmd: VendorCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let actor = os_actor();
    let now = app.clock.now();
    match cmd {
        VendorCommand::Add {
            name,
            org,
            key,
            json: as_json,
        } => {
            refuse(check_name("vendor", &name))?;
            refuse(check_text("organisation", &org, 120))?;
            let key = read_key(&key)?;
            let seed = totp::new_seed();
            let uri = refuse(totp::provisioning_uri(&seed, &name))?;
            let sealed = app.secrets.seal(&format!("vendor-totp:{name}"), &seed);
            let mut tx = app.store.begin().await?;
            let id = tx.insert_vendor(&name, &org, &sealed, now).await?;
            tx.insert_vendor_key(id, &key.openssh, &key.fingerprint, &key.comment, now)
                .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    "vendor.add",
                    format!("vendor:{name}"),
                    json!({"org": org, "key": key.fingerprint}),
                ),
                now,
            )
            .await?;
            tx.commit("vendor.add").await?;
            if as_json {
                json(&json!({"name": name, "org": org, "key": key.fingerprint, "totp_uri": uri}))?;
            } else {
                println!("Vendor {name} ({org}) added with key {}.", key.fingerprint);
                println!(
                    "TOTP provisioning URI (give it to {name} over a trusted channel; it is not shown again):"
                );
                println!("{uri}");
            }
        }
        VendorCommand::List { json: as_json } => {
            let vendors = app.store.vendors().await?;
            if as_json {
                return json(&vendors);
            }
            let rows = vendors
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.org.clone(),
                        status(v, now),
                        format_time(v.created_at),
                    ]
                })
                .collect::<Vec<_>>();
            table(&["NAME", "ORGANISATION", "STATUS", "CREATED"], &rows);
        }
        VendorCommand::Show {
            name,
            json: as_json,
        } => {
            let v = app.store.require_vendor(&name).await?;
            let keys = app.store.vendor_keys(v.id).await?;
            let grants = app.store.open_grants_of(v.id, now).await?;
            if as_json {
                return json(&json!({"vendor": v, "keys": keys, "grants": grants}));
            }
            println!("vendor:        {}", v.name);
            println!("organisation:  {}", esc(&v.org));
            println!("status:        {}", status(&v, now));
            println!("created:       {}", format_time(v.created_at));
            println!("keys:");
            for k in &keys {
                println!("  {}  {}", k.fingerprint, esc(&k.comment));
            }
            println!("open grants:   {}", grants.len());
            for g in &grants {
                println!(
                    "  #{} {} [{}] until {}",
                    g.id,
                    g.asset,
                    g.services.join(","),
                    format_time(g.ends_at)
                );
            }
        }
        VendorCommand::Disable { name } => set_enabled(&app, &actor, now, &name, false).await?,
        VendorCommand::Enable { name } => set_enabled(&app, &actor, now, &name, true).await?,
        VendorCommand::Key(KeyCommand::Add { name, pubkey_file }) => {
            let v = app.store.require_vendor(&name).await?;
            let key = read_key(&pubkey_file)?;
            let mut tx = app.store.begin().await?;
            tx.insert_vendor_key(v.id, &key.openssh, &key.fingerprint, &key.comment, now)
                .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    "vendor.key.add",
                    format!("vendor:{name}"),
                    json!({"key": key.fingerprint}),
                ),
                now,
            )
            .await?;
            tx.commit("vendor.key.add").await?;
            println!("Key {} added to vendor {name}.", key.fingerprint);
        }
        VendorCommand::Key(KeyCommand::Remove { name, pubkey_file }) => {
            let v = app.store.require_vendor(&name).await?;
            let key = read_key(&pubkey_file)?;
            let mut tx = app.store.begin().await?;
            if !tx.delete_vendor_key(v.id, &key.fingerprint).await? {
                anyhow::bail!("vendor {name} has no key {}", key.fingerprint);
            }
            tx.audit(
                AuditEvent::new(
                    &actor,
                    "vendor.key.remove",
                    format!("vendor:{name}"),
                    json!({"key": key.fingerprint}),
                ),
                now,
            )
            .await?;
            tx.commit("vendor.key.remove").await?;
            println!("Key {} removed from vendor {name}.", key.fingerprint);
        }
    }
    Ok(())
}

fn status(v: &crate::model::Vendor, now: i64) -> String {
    match (v.enabled, v.locked_until) {
        (false, _) => "disabled".into(),
        (true, Some(until)) if until > now => format!("locked until {}", format_time(until)),
        (true, _) => "enabled".into(),
    }
}

async fn set_enabled(
    app: &App,
    actor: &str,
    now: i64,
    name: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    let v = app.store.require_vendor(name).await?;
    let action = if enabled {
        "vendor.enable"
    } else {
        "vendor.disable"
    };
    let mut tx = app.store.begin().await?;
    tx.set_vendor_enabled(v.id, enabled).await?;
    tx.audit(
        AuditEvent::new(actor, action, format!("vendor:{name}"), json!({})),
        now,
    )
    .await?;
    tx.commit(action).await?;
    println!(
        "Vendor {name} {}.",
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(())
}
