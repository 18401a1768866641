//! `chaperone init --dir DIR`: a new data directory with config, keys and database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use russh::keys::{Algorithm, PrivateKey, ssh_key::LineEnding};

use crate::config::{Config, annotated_template};
use crate::secrets::SecretsKey;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to create or fill (config, keys, database, recordings).
    #[arg(long, required_unless_present = "from_config")]
    pub dir: Option<PathBuf>,
    /// Keep the config given with `-c` (e.g. the packaged /etc/chaperone/chaperone.toml) and create what
    /// it names: host key, secrets key, web certificate, recordings directory, database. Refused when
    /// any key or the database already exists (a half-made node is not finished by guessing).
    #[arg(long, conflicts_with = "dir")]
    pub from_config: bool,
    /// The vendors' SSH listener.
    #[arg(long, default_value = "0.0.0.0:2222")]
    pub ssh_listen: SocketAddr,
    /// The approvers' web listener.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub web_listen: SocketAddr,
}

pub async fn run(config: &Path, args: InitArgs) -> anyhow::Result<()> {
    let Some(dir) = args.dir else {
        let config = Config::load(config)?;
        init_from_config(&config).await?;
        println!("Initialised the files {} names", config.path.display());
        return Ok(());
    };
    let config_path = init_dir(&dir, args.ssh_listen, args.web_listen).await?;
    println!("Initialised {}", dir.display());
    println!("  config:    {}", config_path.display());
    println!("Next:");
    println!(
        "  chaperone -c {} asset add mri-01 --address 10.0.0.5 --zone radiology --purpose \"MRI scanner\" --service ssh:22/ssh",
        config_path.display()
    );
    println!(
        "  chaperone -c {} vendor add alice --org \"Acme Imaging\" --key alice.pub",
        config_path.display()
    );
    println!("  chaperone -c {} serve", config_path.display());
    Ok(())
}

/// Creates the directory's contents; refuses to overwrite a config or a key. Returns the config path.
pub async fn init_dir(
    dir: &Path,
    ssh_listen: SocketAddr,
    web_listen: SocketAddr,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let config_path = dir.join("chaperone.toml");
    let text = annotated_template(ssh_listen, web_listen);
    let config = Config::parse(&config_path, &text)?;
    for existing in std::iter::once(config_path.clone()).chain(state_files(&config)) {
        if existing.exists() {
            bail!(
                "refusing to overwrite {} (init never replaces keys or config; use a new directory)",
                existing.display()
            );
        }
    }
    write_new(&config_path, text.as_bytes(), 0o600)?;
    make_state(&config).await?;
    Ok(config_path)
}

/// `init --from-config`: the keys, certificate, recordings directory and database an existing config
/// names, none of which may exist yet.
async fn init_from_config(config: &Config) -> anyhow::Result<()> {
    if let Some(found) = state_files(config).find(|p| p.exists()) {
        bail!(
            "refusing to initialise: {} already exists (init never replaces keys or data)",
            found.display()
        );
    }
    make_state(config).await
}

/// Every file [`make_state`] creates (the two keys with a public half beside them: that too): checked
/// absent before anything is written, so a refused init leaves nothing half made.
fn state_files(config: &Config) -> impl Iterator<Item = PathBuf> + '_ {
    let public = |key: &Path| {
        let mut name = key.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    };
    [
        config.ssh.host_key.clone(),
        public(&config.ssh.host_key),
        config.secrets.key_file.clone(),
        config.recording.signing_key.clone(),
        public(&config.recording.signing_key),
        config.web.tls_cert.clone(),
        config.web.tls_key.clone(),
    ]
    .into_iter()
    .chain(config.database.sqlite_file().map(Path::to_path_buf))
}

/// Creates the keys, the certificate, the recordings directory and the database `config` names.
async fn make_state(config: &Config) -> anyhow::Result<()> {
    write_host_key(&config.ssh.host_key)?;
    let secrets = SecretsKey::generate_file(&config.secrets.key_file)?;
    // The key that signs evidence bundles, made now so that its line can be handed to inspectors
    // before the first bundle (`chaperone evidence signer` prints it).
    crate::evidence::signer::Signer::create(&config.recording.signing_key)?;
    write_web_certificate(config)?;
    create_private_dir(&config.recording.dir)?;
    if let Some(db) = config.database.url.strip_prefix("sqlite://") {
        // SQLite would create the file with the umask's mode; it holds sealed secrets and the audit log.
        write_new(Path::new(db), b"", 0o600)?;
    }
    let store = Store::open(&config.database.url, crate::audit::HeadSeal::new(&secrets)).await?;
    store.close().await;
    Ok(())
}

fn write_host_key(path: &Path) -> anyhow::Result<()> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("generating the SSH host key")?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .context("encoding the SSH host key")?;
    write_new(path, pem.as_bytes(), 0o600)?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding the public host key")?;
    write_new(
        &path.with_extension("pub"),
        format!("{public}\n").as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// A self-signed certificate for the web page (named for `localhost`, the loopback address and the host
/// of `web.public_url`), so `serve` speaks HTTPS from the first start. Replace it with the hospital's.
fn write_web_certificate(config: &Config) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let host = web_host(&config.web.public_url);
    if !host.is_empty() && !names.iter().any(|n| n == host) {
        names.push(host.to_owned());
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating the self-signed web certificate")?;
    write_new(
        &config.web.tls_key,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&config.web.tls_cert, certified.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// The host of `web.public_url` (no scheme, port or brackets): what the web certificate must name, and
/// the passkeys' relying party (`doctor` checks both).
pub fn web_host(public_url: &str) -> &str {
    let host = public_url
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
    .trim_start_matches('[')
    .trim_end_matches(']')
}

/// Writes a new file with `mode`; never replaces an existing one.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}
