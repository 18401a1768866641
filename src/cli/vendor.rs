//! `chaperone vendor …`: enrol vendors, their keys and TOTP.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::display::esc;
use super::output::{json, table};
use super::refuse;
use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::identity::keys::parse_public_key;
use crate::identity::{os_actor, totp, vendor_passkeys};
use crate::model::check_name;

#[derive(Debug, Subcommand)]
pub enum VendorCommand {
    /// Enrol a vendor technician. They set up their TOTP app themselves at their first key login (a QR
    /// code in their terminal); nobody else sees the seed.
    Add {
        name: String,
        /// Their organisation: they may ask for and be granted the assets whose --vendor-org it is
        /// (compared without case), and assets that name no vendor organisation.
        #[arg(long)]
        org: String,
        /// Their OpenSSH public key file (.pub).
        #[arg(long)]
        key: PathBuf,
        /// For scripted setups: draw the TOTP seed now and print its provisioning URI (otpauth://…,
        /// `totp_uri` with --json), instead of the vendor enrolling at their first login.
        #[arg(long)]
        totp: bool,
        #[arg(long)]
        json: bool,
    },
    /// A vendor's TOTP: `reset` makes them enrol a new app at their next login.
    #[command(subcommand)]
    Totp(TotpCommand),
    /// A vendor's passkeys (they add their own with `ssh VENDOR@bastion passkey add`).
    #[command(subcommand)]
    Passkey(PasskeyCommand),
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
    /// End a vendor's lockout after repeated failed logins now, and forget their failures.
    Unlock { name: String },
    /// Add or remove a vendor's SSH keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum TotpCommand {
    /// Voids the vendor's TOTP seed at once; at their next key login they enrol a new one (QR code).
    Reset { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PasskeyCommand {
    /// Removes all of the vendor's passkeys at once (a lost or stolen device); their TOTP app stays.
    Clear { name: String },
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
            totp: with_totp,
            json: as_json,
        } => {
            refuse(check_name("vendor", &name))?;
            refuse(crate::model::check_local_org(&org))?;
            let key = read_key(&key)?;
            // Without --totp the seed stored now is a placeholder nobody sees: the vendor's first login
            // draws and shows the real one.
            let seed = totp::new_seed();
            let uri = if with_totp {
                Some(refuse(totp::provisioning_uri(&seed, &name))?)
            } else {
                None
            };
            let sealed = app.secrets.seal(&format!("vendor-totp:{name}"), &seed);
            drop(seed);
            let mut tx = app.store.begin().await?;
            let id = tx.insert_vendor(&name, &org, &sealed, now).await?;
            if uri.is_none() {
                tx.reset_vendor_totp(id, &sealed).await?;
            }
            tx.insert_vendor_key(id, &key.openssh, &key.fingerprint, &key.comment, now)
                .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::VendorAdd,
                    format!("vendor:{name}"),
                    json!({"org": org, "key": key.fingerprint,
                           "totp": if uri.is_some() { "issued" } else { "self-enrollment" }}),
                ),
                now,
            )
            .await?;
            tx.commit("vendor.add").await?;
            match (as_json, uri) {
                (true, Some(uri)) => json(
                    &json!({"name": name, "org": org, "key": key.fingerprint, "totp_uri": uri}),
                )?,
                (true, None) => json(
                    &json!({"name": name, "org": org, "key": key.fingerprint, "totp": "self-enrollment"}),
                )?,
                (false, Some(uri)) => {
                    println!("Vendor {name} ({org}) added with key {}.", key.fingerprint);
                    println!(
                        "TOTP provisioning URI (give it to {name} over a trusted channel; it is not shown again):"
                    );
                    println!("{uri}");
                }
                (false, None) => {
                    println!("Vendor {name} ({org}) added with key {}.", key.fingerprint);
                    println!(
                        "At their first login (ssh -p PORT {name}@bastion) they scan a QR code with an authenticator app."
                    );
                }
            }
        }
        VendorCommand::Totp(TotpCommand::Reset { name }) => {
            let v = app.store.require_vendor(&name).await?;
            let placeholder = app
                .secrets
                .seal(&format!("vendor-totp:{name}"), &totp::new_seed());
            let mut tx = app.store.begin().await?;
            tx.reset_vendor_totp(v.id, &placeholder).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::VendorTotpReset,
                    format!("vendor:{name}"),
                    json!({}),
                ),
                now,
            )
            .await?;
            tx.commit("vendor.totp.reset").await?;
            println!(
                "Vendor {name}'s TOTP is reset: their old codes no longer work; at their next login they enrol a new app."
            );
        }
        VendorCommand::Passkey(PasskeyCommand::Clear { name }) => {
            let v = app.store.require_vendor(&name).await?;
            let held = vendor_passkeys::clear(&app, &v, &actor).await?;
            println!(
                "Vendor {name}'s passkeys are removed ({held} in all); their TOTP app still works."
            );
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
            let passkeys = vendor_passkeys::count(&app, v.id).await?;
            if as_json {
                return json(
                    &json!({"vendor": v, "keys": keys, "grants": grants, "passkeys": passkeys}),
                );
            }
            println!("vendor:        {}", v.name);
            println!("organisation:  {}", esc(&v.org));
            println!("status:        {}", status(&v, now));
            println!("created:       {}", format_time(v.created_at));
            println!("keys:");
            for k in &keys {
                println!("  {}  {}", k.fingerprint, esc(&k.comment));
            }
            println!("passkeys:      {passkeys}");
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
        VendorCommand::Unlock { name } => {
            let v = app.store.require_vendor(&name).await?;
            let mut tx = app.store.begin().await?;
            let was = tx.unlock_vendor(v.id, now).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::VendorUnlock,
                    format!("vendor:{name}"),
                    json!({"was_locked_until": was}),
                ),
                now,
            )
            .await?;
            tx.commit(Action::VendorUnlock.as_str()).await?;
            match was {
                Some(until) => println!(
                    "Vendor {name} unlocked (was locked until {}).",
                    format_time(until)
                ),
                None => {
                    println!("Vendor {name} was not locked; their failed logins are forgotten.")
                }
            }
        }
        VendorCommand::Key(KeyCommand::Add { name, pubkey_file }) => {
            let v = app.store.require_vendor(&name).await?;
            directory_keys_refused(&app, &v, "add").await?;
            let key = read_key(&pubkey_file)?;
            let mut tx = app.store.begin().await?;
            tx.insert_vendor_key(v.id, &key.openssh, &key.fingerprint, &key.comment, now)
                .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::VendorKeyAdd,
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
            directory_keys_refused(&app, &v, "remove").await?;
            let key = read_key(&pubkey_file)?;
            let mut tx = app.store.begin().await?;
            if !tx.delete_vendor_key(v.id, &key.fingerprint).await? {
                anyhow::bail!("vendor {name} has no key {}", key.fingerprint);
            }
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::VendorKeyRemove,
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

/// A directory vendor's keys are the directory's (`sshPublicKey`), synced every `sync_interval`: a key
/// removed here came back at the next sync, and one added here went at it. Refused, with what to do
/// instead: `vendor disable` (which the sync never undoes) stops the vendor at once.
async fn directory_keys_refused(
    app: &App,
    v: &crate::model::Vendor,
    what: &str,
) -> anyhow::Result<()> {
    if let Some(dn) = app.store.vendor_directory_dn(v.id).await? {
        anyhow::bail!(
            "vendor {} comes from the directory ({dn}): {what} the key there (sshPublicKey), and the \
             next sync applies it (`chaperone ldap sync` now). To stop a stolen key at once, \
             `chaperone vendor disable {}` (the sync never enables a vendor again)",
            v.name,
            v.name
        );
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
        Action::VendorEnable
    } else {
        Action::VendorDisable
    };
    let mut tx = app.store.begin().await?;
    tx.set_vendor_enabled(v.id, enabled).await?;
    // An administrator who enables a directory vendor vouches for it: the sync ties it again to the
    // entry that holds its name now (one whose entry was deleted and made again would otherwise stay
    // tied to the gone one, and be disabled again at the next sync).
    let retied = if enabled {
        tx.untie_vendor_entry(v.id).await?
    } else {
        None
    };
    tx.audit(
        AuditEvent::new(
            actor,
            action,
            format!("vendor:{name}"),
            match &retied {
                Some(dn) => json!({"retie": dn}),
                None => json!({}),
            },
        ),
        now,
    )
    .await?;
    tx.commit(action.as_str()).await?;
    println!(
        "Vendor {name} {}.",
        if enabled { "enabled" } else { "disabled" }
    );
    if let Some(dn) = retied {
        println!(
            "The directory sync ties it to the entry at {dn:?} from its next run (another entry of the name is not it)."
        );
    }
    Ok(())
}
