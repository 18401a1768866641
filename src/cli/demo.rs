//! `chaperone demo`: a throwaway data directory with a sample vendor, device, grant and approver,
//! served at once, printing exactly what to type (with the full path of this binary, so the commands
//! work after `cargo run`). The device is OpenSSH's sshd when the PATH has one, else a simulated one
//! inside this process (`demo_device.rs`), so the demo needs nothing installed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use russh::keys::{Algorithm, PrivateKey, ssh_key::LineEnding};
use serde_json::json;
use sha2::Digest as _;

use super::init::{init_dir, write_new};
use crate::app::App;
use crate::audit::Action;
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
    /// What stands behind the demo's "mri-01": OpenSSH's sshd when one is on the PATH (a real shell of
    /// the user running the demo), else a simulated device inside this process that needs nothing
    /// installed; or either one explicitly.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Print the demo vendor's current TOTP code (for the demo at `-c DIR/chaperone.toml`) and exit.
    #[arg(long)]
    pub totp_code: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Sshd,
    Simulated,
}

/// What the demo's asset reaches.
enum Device {
    Sshd(Box<SshdDevice>),
    Simulated(super::demo_device::Device),
}

impl Device {
    fn ssh_port(&self) -> u16 {
        match self {
            Device::Sshd(d) => d.port,
            Device::Simulated(d) => d.ssh_port,
        }
    }
    fn user(&self) -> &str {
        match self {
            Device::Sshd(d) => &d.user,
            Device::Simulated(_) => super::demo_device::USER,
        }
    }
    fn host_key(&self) -> &str {
        match self {
            Device::Sshd(d) => &d.host_key,
            Device::Simulated(d) => &d.host_key,
        }
    }
    fn client_key(&self) -> &str {
        match self {
            Device::Sshd(d) => &d.client_key,
            Device::Simulated(d) => &d.client_key,
        }
    }
}

/// `sshd` on the PATH, the way a shell would find it.
fn sshd_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("sshd"))
        .find(|p| p.is_file())
}

/// The command that runs this chaperone again, as the person who started the demo can type it: the
/// full path of this very binary (after `cargo run` it is not on the PATH).
fn self_command() -> String {
    std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains(char::is_whitespace))
        .unwrap_or_else(|| "chaperone".to_owned())
}

/// `--totp-code`: the demo vendor's code now, read from the demo's own database. Only a demo's: pointed
/// at a real bastion's config, it would print a real vendor's second factor (a vendor may be named alice).
async fn print_totp_code(config: &std::path::Path) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let demo = app
        .store
        .audit_events_about("demo", &[Action::DemoSetup.as_str()], 1)
        .await?;
    if demo.is_empty() {
        anyhow::bail!(
            "{} is not a demo's (no demo.setup in its audit log): --totp-code prints only the demo vendor's code",
            config.display()
        );
    }
    let vendor = app.store.require_vendor("alice").await?;
    let (sealed, _) = app.store.vendor_totp(vendor.id).await?;
    let seed = app.secrets.open("vendor-totp:alice", &sealed)?;
    let now = u64::try_from(app.clock.now())?;
    println!(
        "{}",
        totp::code_at(seed.expose(), now).map_err(anyhow::Error::msg)?
    );
    Ok(())
}

pub async fn run(config: &std::path::Path, args: DemoArgs) -> anyhow::Result<()> {
    if args.totp_code {
        return print_totp_code(config).await;
    }
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

    // The device: OpenSSH's sshd when there is one (and it is wanted), else the simulated one.
    let sshd = match args.device {
        DeviceChoice::Simulated => None,
        DeviceChoice::Auto | DeviceChoice::Sshd => sshd_on_path(),
    };
    let device = match (args.device, sshd) {
        (DeviceChoice::Sshd, None) => anyhow::bail!("--device sshd: no sshd on the PATH"),
        (_, Some(sshd)) => match SshdDevice::start(&dir, &sshd).await {
            Some(d) => Device::Sshd(Box::new(d)),
            None if args.device == DeviceChoice::Sshd => {
                anyhow::bail!("cannot start {}", sshd.display())
            }
            None => Device::Simulated(super::demo_device::Device::start().await?),
        },
        (_, None) => Device::Simulated(super::demo_device::Device::start().await?),
    };
    let mut services: Vec<Service> = vec![
        format!("ssh:{}/ssh", device.ssh_port())
            .parse()
            .map_err(anyhow::Error::msg)?,
    ];
    let mut granted = vec!["ssh".to_owned()];
    if let Device::Simulated(d) = &device {
        services.push(
            format!("dicom:{}/tcp", d.dicom_port)
                .parse()
                .map_err(anyhow::Error::msg)?,
        );
        granted.push("dicom".to_owned());
    }
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
    let sealed_credential = app
        .secrets
        .seal("asset-credential:mri-01", device.client_key().as_bytes());
    tx.set_asset_host_key(asset_id, device.host_key()).await?;
    tx.set_asset_credential(
        asset_id,
        device.user(),
        crate::model::CredentialKind::Key,
        &sealed_credential,
    )
    .await?;
    // An approver, to try the web page: enrolment link below (password, then a passkey or TOTP).
    let enroll_token = crate::secrets::random_hex(32);
    let enroll_expires = now + super::user::ENROLL_VALID_SECS;
    tx.insert_staff_user(
        "bob",
        crate::model::Role::Approver,
        &hex::encode(sha2::Sha256::digest(enroll_token.as_bytes())),
        enroll_expires,
        now,
    )
    .await?;
    tx.audit(
        AuditEvent::new(
            actor,
            Action::UserAdd,
            "user:bob",
            json!({"role": "approver", "enroll_expires_at": enroll_expires}),
        ),
        now,
    )
    .await?;
    tx.audit(
        AuditEvent::new(
            actor,
            Action::DemoSetup,
            "demo",
            json!({"vendor": "alice", "asset": "mri-01", "grant": grant_id,
                   "device": match &device { Device::Sshd(_) => "sshd", Device::Simulated(_) => "simulated" }}),
        ),
        now,
    )
    .await?;
    tx.commit("demo.setup").await?;

    let listeners = server::bind(&app.config).await?;
    let ssh = listeners.ssh_addr()?;
    let web = listeners.web_addr()?;
    let me = self_command();
    let c = config_path.display();
    let ssh_opts = format!(
        "-p {} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new",
        ssh.port(),
        key_path.display(),
        dir.join("known_hosts").display()
    );
    println!("chaperone demo: data in {}", dir.display());
    println!();
    println!("  vendor alice (Acme Imaging), key {}", key_path.display());
    match &device {
        Device::Sshd(d) => println!(
            "  asset mri-01 (radiology): OpenSSH sshd on 127.0.0.1:{} (a shell of user {})",
            d.port, d.user
        ),
        Device::Simulated(d) => println!(
            "  asset mri-01 (radiology): a SIMULATED device in this process (ssh on 127.0.0.1:{}, DICOM C-ECHO on 127.0.0.1:{})",
            d.ssh_port, d.dicom_port
        ),
    }
    println!(
        "  grant #{grant_id} for alice on mri-01 ({}), 2 hours",
        granted.join(", ")
    );
    println!(
        "  TOTP seed (base32) {seed_b32}; the code at any moment: {me} -c {c} demo --totp-code"
    );
    println!();
    println!("Try, in another terminal (ssh asks for the TOTP code after the key):");
    println!(
        "  ssh {ssh_opts} alice@{}                 # alice's home: grants and how to connect",
        ssh.ip()
    );
    println!(
        "  ssh {ssh_opts} -t alice+mri-01@{}       # a recorded shell on mri-01",
        ssh.ip()
    );
    println!(
        "  ssh {ssh_opts} alice+mri-01@{} 'cat /opt/scanner/VERSION'   # one command",
        ssh.ip()
    );
    if let Device::Simulated(d) = &device {
        println!(
            "  ssh {ssh_opts} -N -L 11104:mri-01:{} alice@{}   # a DICOM tunnel: C-ECHO to localhost:11104",
            d.dicom_port,
            ssh.ip()
        );
    }
    println!(
        "  ssh {ssh_opts} alice@{} passkey add     # a fresh code, then a passkey instead of codes (Enter at the prompt)",
        ssh.ip()
    );
    println!("  {me} -c {c} session list            # every session, its recording and digest");
    println!("  {me} -c {c} session play ID         # replay a shell session in this terminal");
    println!("  {me} -c {c} audit verify            # the tamper-evident audit log");
    println!();
    println!("The approver's web page (self-signed certificate: accept it in the browser):");
    println!(
        "  {}/enroll/{enroll_token}   # approver bob: choose a password, then a passkey or TOTP",
        app.config.web.public_url
    );
    println!(
        "  then: ssh {ssh_opts} alice@{} request mri-01 ssh --for 1h --reason INC-4711 coil calibration",
        ssh.ip()
    );
    println!(
        "        and approve it as bob on {}/requests",
        app.config.web.public_url
    );
    println!();
    println!("Serving SSH on {ssh} and web on {web}; Ctrl-C stops.");
    let _device = device;
    Ok(server::run(app, listeners, server::shutdown_signal()).await?)
}

/// A throwaway OpenSSH sshd standing in for the demo's MRI scanner; stopped when dropped.
struct SshdDevice {
    port: u16,
    user: String,
    /// The pinned host key line.
    host_key: String,
    /// The private key chaperone injects (OpenSSH format).
    client_key: String,
    _child: tokio::process::Child,
}

impl SshdDevice {
    async fn start(dir: &std::path::Path, sshd: &std::path::Path) -> Option<SshdDevice> {
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
            Ok::<_, anyhow::Error>(SshdDevice {
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
                    "chaperone demo: cannot start {} ({e:#}); using the simulated device instead",
                    sshd.display()
                );
                None
            }
        }
    }
}
