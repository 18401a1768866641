//! The `chaperone` command line: one module per command group.
//!
//! Entry point: [`Cli`] (parsed by `main`) and [`run`]. Exit codes: 0 ok, 1 refused or failed,
//! 2 usage (clap's own). Tables are for people; `--json` is for scripts.

mod asset;
mod audit;
mod backup;
mod demo;
mod demo_device;
mod display;
mod doctor;
mod evidence;
mod grant;
pub(crate) mod init;
mod ldap;
mod offline;
mod output;
mod secrets;
mod serve;
mod session;
mod user;
mod vendor;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "chaperone",
    version,
    about = "Privileged-access jump host for the vendors who maintain medical devices"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, env = "CHAPERONE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: config, host key, secrets key, database.
    Init(init::InitArgs),
    /// Serve the SSH and web listeners until SIGTERM or Ctrl-C.
    Serve,
    /// Try chaperone: a throwaway directory with a sample vendor, device and grant, served at once.
    Demo(demo::DemoArgs),
    /// Vendors: their organisation, SSH keys and TOTP.
    #[command(subcommand)]
    Vendor(vendor::VendorCommand),
    /// Staff users: approvers, auditors, admins.
    #[command(subcommand)]
    User(user::UserCommand),
    /// LDAP / Active Directory: check what the directory says of a name, sync once.
    #[command(subcommand)]
    Ldap(ldap::LdapCommand),
    /// Assets (devices) and their services, credentials, host keys.
    #[command(subcommand)]
    Asset(asset::AssetCommand),
    /// Grants: staff-issued access (planned maintenance) and revocation.
    #[command(subcommand)]
    Grant(grant::GrantCommand),
    /// Sessions and their recordings.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Evidence bundles an inspector verifies with ssh-keygen and sha256sum, and the key that signs them.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// The key that seals device credentials and TOTP seeds at rest.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Check this node: config, file modes, web certificate, free space, database and migrations.
    /// One line per finding; exit 1 when any check fails.
    Doctor,
    /// Back up this node: config, keys, the SQLite database (a consistent copy, online) and recordings.
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory (then `audit verify` passes on it).
    Restore(backup::RestoreArgs),
    /// known_hosts lines for ProxyJump (`ssh -J`): the host key chaperone presents for each asset.
    KnownHosts,
}

/// A command's error as `main` prints it: each line escaped as tables are (`display::esc`), so text
/// from elsewhere in it (a directory server's diagnostic, a name given on the command line) cannot
/// drive the operator's terminal.
pub fn error_text(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .split('\n')
        .map(|line| display::esc(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a parsed command. Errors carry their own explanation; `main` prints them and exits 1.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(args) => init::run(&cli.config, args).await,
        Command::Serve => serve::run(&cli.config).await,
        Command::Demo(args) => demo::run(&cli.config, args).await,
        Command::Vendor(cmd) => vendor::run(&cli.config, cmd).await,
        Command::User(cmd) => user::run(&cli.config, cmd).await,
        Command::Ldap(cmd) => ldap::run(&cli.config, cmd).await,
        Command::Asset(cmd) => asset::run(&cli.config, cmd).await,
        Command::Grant(cmd) => grant::run(&cli.config, cmd).await,
        Command::Session(cmd) => session::run(&cli.config, cmd).await,
        Command::Audit(cmd) => audit::run(&cli.config, cmd).await,
        Command::Evidence(cmd) => evidence::run(&cli.config, cmd).await,
        Command::Secrets(cmd) => secrets::run(&cli.config, cmd).await,
        Command::Doctor => doctor::run(&cli.config).await,
        Command::Backup(args) => backup::backup(&cli.config, args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::KnownHosts => known_hosts(&cli.config).await,
    }
}

/// Turns a validation message into an error for `?`.
fn refuse<T>(result: Result<T, String>) -> anyhow::Result<T> {
    result.map_err(anyhow::Error::msg)
}

/// Inner ProxyJump sessions are terminated by chaperone and present the bastion's host key under the
/// asset's name: one known_hosts line naming every asset with an ssh service.
async fn known_hosts(config: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let app = crate::app::App::open(config).await?;
    let key = crate::ssh::load_host_key(&app)?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding the host key")?;
    let mut names = Vec::new();
    for asset in app.store.assets().await? {
        if let Some(s) = asset
            .services
            .iter()
            .find(|s| s.kind == crate::model::ServiceKind::Ssh)
        {
            names.push(asset.name.clone());
            if s.port != 22 {
                names.push(format!("[{}]:{}", asset.name, s.port));
            }
        }
    }
    if names.is_empty() {
        anyhow::bail!("no asset has an ssh service yet");
    }
    println!("{} {public}", names.join(","));
    Ok(())
}

#[cfg(test)]
mod tests {
    /// What an error carries from elsewhere (a directory server's diagnostic) cannot drive the
    /// terminal; its own lines stay lines.
    #[test]
    fn an_errors_control_characters_are_escaped_line_by_line() {
        let e = anyhow::anyhow!("server said \u{1b}]52;c;eA==\u{7}\u{1b}[2J")
            .context("reading the directory\nsecond line");
        assert_eq!(
            super::error_text(&e),
            "reading the directory\nsecond line: server said \\x1b]52;c;eA==\\x07\\x1b[2J"
        );
    }
}
