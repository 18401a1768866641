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
use crate::store::NewAsset;

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

    // The device: a throwaway OpenSSH sshd when the machine has one, so the printed commands reach it.
    let device = SimulatedDevice::start(&dir).await;
    let device_port = device.as_ref().map_or(22, |d| d.port);
    let services: Vec<Service> = vec![
        format!("ssh:{device_port}/ssh")
            .parse()
            .map_err(anyhow::Error::msg)?,
    ];
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
    let grant_id = crate::policy::grants::issue_in(
        &mut tx,
        now,
        &crate::policy::grants::Actor::os(actor),
        &crate::policy::grants::Issue {
            vendor: "alice",
            asset: "mri-01",
            services: &granted,
            duration: std::time::Duration::from_secs(2 * 3600),
            reason: "demo",
            source: crate::policy::grants::Source::StaffIssued,
            approvers: &[],
        },
    )
    .await?
    .id;
    if let Some(d) = &device {
        let sealed = app
            .secrets
            .seal("asset-credential:mri-01", d.client_key.as_bytes());
        tx.set_asset_host_key(asset_id, &d.host_key).await?;
        tx.set_asset_credential(
            asset_id,
            &d.user,
            crate::model::CredentialKind::Key,
            &sealed,
        )
        .await?;
    }
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
    match &device {
        Some(d) => {
            println!(
                "  ssh -p {} -i {} -t alice+mri-01@{}   # a recorded shell on the simulated device (sshd on port {}); answer the TOTP prompt with: oathtool --totp -b {seed_b32}",
                ssh.port(),
                key_path.display(),
                ssh.ip(),
                d.port
            );
            println!(
                "  ssh -p {} -i {} alice@{}            # alice's home: grants and how to connect",
                ssh.port(),
                key_path.display(),
                ssh.ip()
            );
            println!(
                "  chaperone -c {c} session list       # after a session: its recording and digest"
            );
        }
        None => println!(
            "  (no /usr/sbin/sshd here, so mri-01 has no device behind it: apt-get install openssh-server and rerun to try SSH sessions)"
        ),
    }
    println!();
    println!("Serving SSH on {ssh} and web on {web}; Ctrl-C stops.");
    let _device = device;
    Ok(server::run(app, listeners, server::shutdown_signal()).await?)
}

/// A throwaway OpenSSH server standing in for the demo's MRI scanner; stopped when dropped.
struct SimulatedDevice {
    port: u16,
    user: String,
    /// The pinned host key line.
    host_key: String,
    /// The private key chaperone injects (OpenSSH format).
    client_key: String,
    _child: tokio::process::Child,
}

impl SimulatedDevice {
    async fn start(dir: &std::path::Path) -> Option<SimulatedDevice> {
        let sshd = std::path::Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return None;
        }
        let made = async {
            let d = dir.join("device");
            std::fs::create_dir_all(&d)?;
            let _ = std::fs::create_dir_all("/run/sshd");
            let host = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
            let client = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
            write_new(&d.join("host_key"), host.to_openssh(LineEnding::LF)?.as_bytes(), 0o600)?;
            write_new(&d.join("authorized_keys"), format!("{}\n", client.public_key().to_openssh()?).as_bytes(), 0o600)?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n",
                d.join("host_key").display(),
                d.join("authorized_keys").display(),
                d.join("sshd.pid").display(),
            );
            write_new(&d.join("sshd_config"), config.as_bytes(), 0o600)?;
            let child = tokio::process::Command::new(sshd)
                .arg("-D")
                .arg("-f")
                .arg(d.join("sshd_config"))
                .arg("-E")
                .arg(d.join("sshd.log"))
                .kill_on_drop(true)
                .spawn()?;
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // The account sshd lets in: whoever runs the demo (sshd without root serves only its own user).
            let out = tokio::process::Command::new("id").arg("-un").output().await?;
            let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            anyhow::ensure!(!user.is_empty(), "cannot tell the current user name");
            Ok::<_, anyhow::Error>(SimulatedDevice {
                port,
                user,
                host_key: host.public_key().to_openssh()?,
                client_key: client.to_openssh(LineEnding::LF)?.to_string(),
                _child: child,
            })
        }
        .await;
        match made {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!(
                    "chaperone demo: cannot start a simulated device ({e:#}); SSH sessions will not reach mri-01"
                );
                None
            }
        }
    }
}
