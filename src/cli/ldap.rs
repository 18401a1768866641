//! `chaperone ldap …`: what the directory (`[ldap]`) says, and one sync on demand.

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use super::display::esc;
use super::output::json;
use crate::config::Config;
use crate::error_text::report;
use crate::identity::ldap::{Directory, Lookup};

#[derive(Debug, Subcommand)]
pub enum LdapCommand {
    /// The DN and role(s) the directory gives NAME (exit 0), or why not (exit 1): no such user, in no
    /// mapped group, directory unreachable.
    Check {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-checks directory staff and syncs directory vendors once (what `serve` does every interval).
    Sync,
}

pub async fn run(config: &Path, cmd: LdapCommand) -> anyhow::Result<()> {
    match cmd {
        LdapCommand::Check {
            name,
            json: as_json,
        } => {
            // The config and the directory only: an administrator's first check works before anything
            // else is set up.
            let config = Config::load(config)?;
            let directory =
                Directory::from_config(&config)?.context("no [ldap] section in the config")?;
            let found = match directory.lookup(&name).await {
                Ok(found) => found,
                Err(e) => anyhow::bail!("{}", report(&e)),
            };
            let user = match found {
                Lookup::NoSuchUser => {
                    anyhow::bail!("{}: no such user in the directory", esc(&name))
                }
                Lookup::Disabled { dn, why } => {
                    anyhow::bail!("{} ({}): {why} in the directory", esc(&name), esc(&dn))
                }
                Lookup::Found(user) => user,
            };
            let Some(standing) = user.standing() else {
                anyhow::bail!("{} ({}): in no mapped group", esc(&name), esc(&user.dn));
            };
            let roles: Vec<String> = user.roles.iter().map(ToString::to_string).collect();
            if as_json {
                return json(&json!({"name": user.name, "dn": user.dn, "roles": roles,
                                    "zones": user.zones, "role": standing.role,
                                    "zones_only": standing.zones_only, "entry_id": user.entry_id}));
            }
            println!("{}: {}", esc(&user.name), esc(&user.dn));
            match &user.entry_id {
                Some(id) => println!("entry id: {}", esc(id)),
                // Compared by DN alone, a renamed or moved entry is a new account (with no second
                // factor yet), and a new entry given an old DN is the old account.
                None => println!(
                    "entry id: none (the directory gives no entryUUID or objectGUID to the service \
                     account: entries are told apart by DN only; enable entryUUID, e.g. 389-DS's \
                     entryuuid plugin)"
                ),
            }
            let mut given = roles;
            given.extend(user.zones.iter().map(|z| format!("approver for zone {z}")));
            println!("roles: {}", given.join(", "));
            if standing.zones_only {
                println!(
                    "decides requests for zone(s) {} only",
                    esc(&user.zones.join(", "))
                );
            }
            Ok(())
        }
        LdapCommand::Sync => {
            let app = crate::app::App::open(config).await?;
            let directory = app
                .directory
                .clone()
                .context("no [ldap] section in the config")?;
            crate::identity::directory::recheck_staff(&app, &directory).await?;
            crate::identity::directory::sync_vendors(&app, &directory).await?;
            println!("Directory staff re-checked, directory vendors synced.");
            Ok(())
        }
    }
}
