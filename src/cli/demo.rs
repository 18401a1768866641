//! `chaperone demo`: a throwaway data directory with a sample vendor, asset and grant, served at once,
//! printing exactly what to type.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use russh::keys::{Algorithm, PrivateKey, ssh_key::LineEnding};
use serde_json::json;

use super::init::{init_dir, write_new};
use crate::app::App;
use crate::audit::AuditEvent;
use crate::identity::keys::parse_public_key;
use crate::identity::totp;
use crate::model::Service;
use crate::server;
use crate::store::{NewAsset, NewGrant};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to put the demo's data (default: a new directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub ssh_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub web_listen: SocketAddr,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = match args.dir {
        Some(d) => d,
        None => {
            std::env::temp_dir().join(format!("chaperone-demo-{}", crate::secrets::random_hex(4)))
        }
    };
    let config_path = init_dir(&dir, args.ssh_listen, args.web_listen).await?;
    let dir = config_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("demo directory")?;
    let app = App::open(&config_path).await?;
    let now = app.clock.now();
    let actor = "system:demo";

    // The vendor: a fresh key pair (kept in the demo dir) and a TOTP seed.
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
    let key_path = dir.join("alice_ed25519");
    write_new(&key_path, key.to_openssh(LineEnding::LF)?.as_bytes(), 0o600)?;
    let public = key.public_key().to_openssh()?;
    write_new(
        &dir.join("alice_ed25519.pub"),
        format!("{public} alice@demo\n").as_bytes(),
        0o644,
    )?;
    let parsed = parse_public_key(&public).map_err(anyhow::Error::msg)?;
    let seed = totp::new_seed();
    let sealed = app.secrets.seal("vendor-totp:alice", &seed);
    let seed_b32 = totp::seed_base32(&seed);
    write_new(
        &dir.join("alice_totp_seed.txt"),
        format!("{seed_b32}\n").as_bytes(),
        0o600,
    )?;

    let services: Vec<Service> = vec!["ssh:22/ssh".parse().map_err(anyhow::Error::msg)?];
    let granted = vec!["ssh".to_owned()];
    let mut tx = app.store.begin().await?;
    let vendor_id = tx
        .insert_vendor("alice", "Acme Imaging", &sealed, now)
        .await?;
    tx.insert_vendor_key(
        vendor_id,
        &parsed.openssh,
        &parsed.fingerprint,
        "alice@demo",
        now,
    )
    .await?;
    let asset_id = tx
        .insert_asset(
            &NewAsset {
                name: "mri-01",
                address: "127.0.0.1",
                zone: "radiology",
                purpose: "MRI scanner (demo)",
                criticality: crate::model::Criticality::High,
                vendor_org: Some("Acme Imaging"),
                os: Some("Linux"),
                patch_status: None,
                services: &services,
            },
            now,
        )
        .await?;
    let grant_id = tx
        .insert_grant(
            &NewGrant {
                vendor_id,
                asset_id,
                services: &granted,
                starts_at: now,
                ends_at: now + 2 * 3600,
                reason: "demo",
                issued_by: actor,
                request_id: None,
            },
            now,
        )
        .await?;
    tx.audit(
        AuditEvent::new(
            actor,
            "demo.setup",
            "demo",
            json!({"vendor": "alice", "asset": "mri-01", "grant": grant_id}),
        ),
        now,
    )
    .await?;
    tx.commit("demo.setup").await?;

    let listeners = server::bind(&app.config).await?;
    let ssh = listeners.ssh_addr()?;
    let web = listeners.web_addr()?;
    let c = config_path.display();
    println!("chaperone demo: data in {}", dir.display());
    println!();
    println!("  vendor alice (Acme Imaging), key {}", key_path.display());
    println!("  asset mri-01 (radiology), grant #{grant_id} for ssh, 2 hours");
    println!(
        "  TOTP seed (base32): {seed_b32}   current code: {}",
        totp::code_at(&seed, u64::try_from(now)?).map_err(anyhow::Error::msg)?
    );
    println!();
    println!("Try, in another terminal:");
    println!("  chaperone -c {c} vendor list");
    println!("  chaperone -c {c} asset show mri-01");
    println!("  chaperone -c {c} grant list");
    println!("  chaperone -c {c} audit verify");
    println!("  curl -k https://{web}/healthz     # self-signed certificate from init");
    println!(
        "  ssh-keyscan -p {} {}        # the bastion's host key",
        ssh.port(),
        ssh.ip()
    );
    println!();
    println!("Serving SSH on {ssh} and web on {web}; Ctrl-C stops.");
    server::run(app, listeners, server::shutdown_signal()).await
}
