//! `chaperone asset …`: the device inventory, its services, injected credentials and pinned host keys.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use super::display::esc;
use super::output::{json, or_dash, table};
use super::refuse;
use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::hostkey;
use crate::identity::keys::{fingerprint, parse_public_key};
use crate::identity::os_actor;
use crate::model::{
    Asset, CredentialKind, Criticality, Service, ServiceKind, check_name, check_text,
};
use crate::store::NewAsset;

#[derive(Debug, Subcommand)]
pub enum AssetCommand {
    /// Add a device with its named services (e.g. --service ssh:22/ssh --service dicom:104/tcp).
    Add {
        name: String,
        /// Host name or IP address chaperone dials.
        #[arg(long)]
        address: String,
        #[arg(long)]
        zone: String,
        /// Clinical purpose, shown to approvers.
        #[arg(long)]
        purpose: String,
        #[arg(long, default_value = "normal", value_parser = parse_criticality)]
        criticality: Criticality,
        /// The vendor organisation that maintains it: only that organisation's vendors may ask for it
        /// or be granted it (to others it reads as unknown). Without it, any vendor may ask.
        #[arg(long)]
        vendor_org: Option<String>,
        /// Operating system and version.
        #[arg(long)]
        os: Option<String>,
        /// Patch status, free text (e.g. "2026-10 cumulative").
        #[arg(long)]
        patch_status: Option<String>,
        /// NAME:PORT/KIND, KIND = ssh (terminated, recorded) or tcp (tunnelled). Repeatable.
        #[arg(long = "service", value_parser = parse_service)]
        services: Vec<Service>,
    },
    /// List assets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one asset.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an asset that has no history.
    Remove { name: String },
    /// Set the vendor organisation that maintains an asset (only its vendors may ask for it), or clear
    /// it with --none (any vendor may ask). Open grants of other organisations' vendors on it are
    /// revoked (their sessions close).
    VendorOrg {
        name: String,
        #[arg(required_unless_present = "none", conflicts_with = "none")]
        org: Option<String>,
        #[arg(long)]
        none: bool,
    },
    /// Add or remove a service.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// The credential chaperone injects when it logs in to the device.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// The device's pinned SSH host key.
    #[command(subcommand)]
    Hostkey(HostkeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// asset service add ASSET NAME:PORT/KIND
    Add {
        asset: String,
        #[arg(value_parser = parse_service)]
        service: Service,
    },
    /// asset service remove ASSET NAME
    Remove { asset: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Set the injected credential: a private key file, or a password read from standard input.
    Set {
        name: String,
        /// The account on the device.
        #[arg(long)]
        user: String,
        /// An OpenSSH private key file (unencrypted).
        #[arg(
            long,
            conflicts_with = "password_stdin",
            required_unless_present = "password_stdin"
        )]
        key: Option<PathBuf>,
        /// Read the password from standard input (never from the command line).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostkeyCommand {
    /// Pin a host key given as "ssh-ed25519 AAAA…".
    Set { name: String, key: String },
    /// Fetch the device's host key, show its fingerprint and pin it on confirmation.
    Scan {
        name: String,
        /// Pin without asking.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_service(s: &str) -> Result<Service, String> {
    s.parse()
}

fn parse_criticality(s: &str) -> Result<Criticality, String> {
    s.parse()
}

fn check_address(address: &str) -> Result<(), String> {
    let ok = !address.is_empty()
        && address.len() <= 253
        && address
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid address {address:?}: a host name or an IP address"
        ))
    }
}

pub async fn run(config: &Path, cmd: AssetCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let actor = os_actor();
    let now = app.clock.now();
    match cmd {
        AssetCommand::Add {
            name,
            address,
            zone,
            purpose,
            criticality,
            vendor_org,
            os,
            patch_status,
            services,
        } => {
            refuse(check_name("asset", &name))?;
            refuse(check_address(&address))?;
            refuse(check_name("zone", &zone))?;
            refuse(check_text("purpose", &purpose, 200))?;
            for (what, v) in [
                ("vendor organisation", &vendor_org),
                ("os", &os),
                ("patch status", &patch_status),
            ] {
                if let Some(v) = v {
                    refuse(check_text(what, v, 120))?;
                }
            }
            // What services an asset may list (unique names and ports, one ssh) is the store's rule:
            // `insert_asset` refuses them with the reason.
            let mut tx = app.store.begin().await?;
            tx.insert_asset(
                &NewAsset {
                    name: &name,
                    address: &address,
                    zone: &zone,
                    purpose: &purpose,
                    criticality,
                    vendor_org: vendor_org.as_deref(),
                    os: os.as_deref(),
                    patch_status: patch_status.as_deref(),
                    services: &services,
                },
                now,
            )
            .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AssetAdd,
                    format!("asset:{name}"),
                    json!({
                        "address": address, "zone": zone, "purpose": purpose,
                        "criticality": criticality.to_string(), "vendor_org": vendor_org,
                        "services": services.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                ),
                now,
            )
            .await?;
            tx.commit("asset.add").await?;
            println!("Asset {name} added with {} service(s).", services.len());
            if services.iter().any(|s| s.kind == ServiceKind::Ssh) {
                println!(
                    "Next: pin its host key (asset hostkey scan {name}) and set the credential chaperone injects (asset credential set {name} --user USER --key FILE)."
                );
            }
        }
        AssetCommand::List { json: as_json } => {
            let assets = app.store.assets().await?;
            if as_json {
                return json(&assets);
            }
            let rows = assets
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.address.clone(),
                        a.zone.clone(),
                        a.criticality.to_string(),
                        a.services
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" "),
                        a.purpose.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            table(
                &[
                    "NAME",
                    "ADDRESS",
                    "ZONE",
                    "CRITICALITY",
                    "SERVICES",
                    "PURPOSE",
                ],
                &rows,
            );
        }
        AssetCommand::Show {
            name,
            json: as_json,
        } => {
            let a = app.store.require_asset(&name).await?;
            if as_json {
                return json(&a);
            }
            show(&a);
        }
        AssetCommand::Remove { name } => {
            let a = app.store.require_asset(&name).await?;
            let mut tx = app.store.begin().await?;
            tx.delete_asset(a.id, &name).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AssetRemove,
                    format!("asset:{name}"),
                    json!({}),
                ),
                now,
            )
            .await?;
            tx.commit("asset.remove").await?;
            println!("Asset {name} removed.");
        }
        AssetCommand::VendorOrg { name, org, none: _ } => {
            if let Some(org) = &org {
                refuse(check_text("vendor organisation", org, 120))?;
            }
            let a = app.store.require_asset(&name).await?;
            let mut tx = app.store.begin().await?;
            tx.set_asset_vendor_org(a.id, org.as_deref()).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AssetVendorOrg,
                    format!("asset:{name}"),
                    json!({"from": a.vendor_org, "vendor_org": org}),
                ),
                now,
            )
            .await?;
            tx.commit("asset.vendor_org").await?;
            match &org {
                Some(org) => println!(
                    "Asset {name} is maintained by {org}: only its vendors may ask for it."
                ),
                None => println!(
                    "Asset {name} names no vendor organisation: any vendor may ask for it."
                ),
            }
            let revoked = crate::policy::grants::revoke_outside_organisations(
                &app.store,
                &app.events,
                now,
                &crate::policy::grants::Actor::os(actor.as_str()),
                |g| g.asset == name,
            )
            .await?;
            if revoked > 0 {
                println!(
                    "{revoked} open grant(s) of other organisations' vendors on {name} revoked."
                );
            }
        }
        AssetCommand::Service(ServiceCommand::Add { asset, service }) => {
            let a = app.store.require_asset(&asset).await?;
            let mut tx = app.store.begin().await?;
            // Refused with the reason when it clashes with the asset's services (a name or port in use).
            tx.insert_service(a.id, &service).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AssetServiceAdd,
                    format!("asset:{asset}"),
                    json!({"service": service.to_string()}),
                ),
                now,
            )
            .await?;
            tx.commit("asset.service.add").await?;
            println!("Service {service} added to {asset}.");
        }
        AssetCommand::Service(ServiceCommand::Remove { asset, name }) => {
            let a = app.store.require_asset(&asset).await?;
            let mut tx = app.store.begin().await?;
            if !tx.delete_service(a.id, &name).await? {
                bail!("asset {asset} has no service named {name}");
            }
            // No grant reaches a service the asset no longer has: what is open on it (or starting) closes
            // too, on every node, through the authority watcher, which sees the removal's audit event.
            let ended = tx.open_sessions_on_service(a.id, &name).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AssetServiceRemove,
                    format!("asset:{asset}"),
                    json!({"service": name, "sessions_ended": ended}),
                ),
                now,
            )
            .await?;
            tx.commit("asset.service.remove").await?;
            println!("Service {name} removed from {asset}.");
            if ended > 0 {
                println!("{ended} live session(s) on it are being closed.");
            }
        }
        AssetCommand::Credential(CredentialCommand::Set {
            name,
            user,
            key,
            password_stdin,
        }) => {
            let a = app.store.require_asset(&name).await?;
            refuse(check_device_user(&user))?;
            let (kind, secret) = match (key, password_stdin) {
                (Some(path), false) => (CredentialKind::Key, read_private_key(&path)?),
                (None, true) => (CredentialKind::Password, read_password_stdin()?),
                _ => bail!("give exactly one of --key FILE or --password-stdin"),
            };
            let sealed = app
                .secrets
                .seal(&format!("asset-credential:{name}"), secret.as_bytes());
            drop(zeroize::Zeroizing::new(secret));
            let mut tx = app.store.begin().await?;
            tx.set_asset_credential(a.id, &user, kind, &sealed).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::AssetCredentialSet,
                    format!("asset:{name}"),
                    json!({"user": user, "kind": kind.to_string()}),
                ),
                now,
            )
            .await?;
            tx.commit("asset.credential.set").await?;
            println!(
                "Credential for {name} set: chaperone logs in as {user} with a {kind} (encrypted at rest)."
            );
        }
        AssetCommand::Hostkey(HostkeyCommand::Set { name, key }) => {
            let a = app.store.require_asset(&name).await?;
            let key = refuse(parse_public_key(&key))?;
            pin(&app, &actor, now, &a, &key.openssh, &key.fingerprint, "set").await?;
        }
        AssetCommand::Hostkey(HostkeyCommand::Scan { name, yes }) => {
            let a = app.store.require_asset(&name).await?;
            let Some(ssh) = a.services.iter().find(|s| s.kind == ServiceKind::Ssh) else {
                bail!("asset {name} has no ssh service to scan");
            };
            let key = hostkey::fetch(&a.address, ssh.port).await?;
            let fp = fingerprint(&key);
            let openssh = key.to_openssh().context("encoding the host key")?;
            println!(
                "{}:{} presents {} {}",
                esc(&a.address),
                ssh.port,
                key.algorithm(),
                fp
            );
            if !yes && !confirm(&format!("Pin this key for {name}?"))? {
                bail!("not pinned");
            }
            pin(&app, &actor, now, &a, &openssh, &fp, "scan").await?;
        }
    }
    Ok(())
}

fn show(a: &Asset) {
    println!("asset:        {}", a.name);
    println!("address:      {}", esc(&a.address));
    println!("zone:         {}", esc(&a.zone));
    println!("purpose:      {}", esc(&a.purpose));
    println!("criticality:  {}", a.criticality);
    println!("vendor org:   {}", esc(&or_dash(a.vendor_org.as_deref())));
    println!("os:           {}", esc(&or_dash(a.os.as_deref())));
    println!("patch status: {}", esc(&or_dash(a.patch_status.as_deref())));
    println!(
        "host key:     {}",
        a.host_key
            .as_deref()
            .and_then(|k| parse_public_key(k).ok())
            .map_or_else(|| "not pinned".to_owned(), |k| k.fingerprint)
    );
    println!(
        "credential:   {}",
        match (&a.credential_user, a.credential_kind) {
            (Some(u), Some(k)) => format!("{} ({k})", esc(u)),
            _ => "not set".into(),
        }
    );
    println!("services:");
    for s in &a.services {
        println!("  {:<12} {:>5}/{}", s.name, s.port, s.kind);
    }
}

async fn pin(
    app: &App,
    actor: &str,
    now: i64,
    a: &Asset,
    openssh: &str,
    fp: &str,
    how: &str,
) -> anyhow::Result<()> {
    let previous = a
        .host_key
        .as_deref()
        .and_then(|k| parse_public_key(k).ok())
        .map(|k| k.fingerprint);
    let mut tx = app.store.begin().await?;
    tx.set_asset_host_key(a.id, openssh).await?;
    tx.audit(
        AuditEvent::new(
            actor,
            Action::AssetHostkeyPin,
            format!("asset:{}", a.name),
            json!({"fingerprint": fp, "previous": previous, "how": how}),
        ),
        now,
    )
    .await?;
    tx.commit("asset.hostkey.pin").await?;
    println!("Host key {fp} pinned for {}.", a.name);
    Ok(())
}

fn check_device_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid device user {user:?}"))
    }
}

fn read_private_key(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = russh::keys::PrivateKey::from_openssh(text.trim())
        .map_err(|e| anyhow::anyhow!("{}: not an OpenSSH private key: {e}", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "{}: the key is passphrase-protected; chaperone needs it unencrypted (it is encrypted at rest by chaperone)",
            path.display()
        );
    }
    Ok(text)
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    line.clear();
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(password)
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not a terminal: pass --yes to pin without asking");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
