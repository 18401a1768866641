//! `chaperone user …`: staff who approve, audit and administer in the web page.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::output::{json, table};
use super::refuse;
use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::identity::os_actor;
use crate::model::{Role, check_name};
use crate::secrets::random_hex;

/// How long an enrollment link stays valid.
pub const ENROLL_VALID_SECS: i64 = 72 * 3600;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a staff user; prints a one-time enrollment link (password + passkey or TOTP).
    Add {
        name: String,
        #[arg(long, value_parser = role_parser())]
        role: Role,
        #[arg(long)]
        json: bool,
    },
    /// List staff users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a staff user (also voids an unused enrollment link).
    Disable { name: String },
    /// Open the second-factor setup of a directory account that has none, as a one-time link to hand
    /// over: needed when its directory entry set up a factor under another name before (a rename),
    /// since then the password alone does not open it.
    Enroll {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// `--role`: the role names, listed in `--help` (`Role` lives in `chaperone-model`, which knows no clap).
fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["approver", "auditor", "admin"])
        .try_map(|name| name.parse::<Role>())
}

pub async fn run(config: &Path, cmd: UserCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let actor = os_actor();
    let now = app.clock.now();
    match cmd {
        UserCommand::Add {
            name,
            role,
            json: as_json,
        } => {
            refuse(check_name("user", &name))?;
            let token = random_hex(32);
            let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
            let expires = now + ENROLL_VALID_SECS;
            let mut tx = app.store.begin().await?;
            tx.insert_staff_user(&name, role, &token_hash, expires, now)
                .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::UserAdd,
                    format!("user:{name}"),
                    json!({"role": role.to_string(), "enroll_expires_at": expires}),
                ),
                now,
            )
            .await?;
            tx.commit("user.add").await?;
            let link = format!("{}/enroll/{token}", app.config.web.public_url);
            if as_json {
                return json(
                    &json!({"name": name, "role": role, "enroll_url": link, "expires_at": expires}),
                );
            }
            println!("User {name} added as {role}.");
            println!(
                "One-time enrollment link (valid until {}; send it to {name} over a trusted channel):",
                format_time(expires)
            );
            println!("{link}");
        }
        UserCommand::List { json: as_json } => {
            let users = app.store.staff_users().await?;
            if as_json {
                return json(&users);
            }
            let rows = users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.role.to_string(),
                        if !u.enabled {
                            "disabled".into()
                        } else if u.enrolled {
                            "enrolled".into()
                        } else {
                            "awaiting enrollment".into()
                        },
                        format_time(u.created_at),
                    ]
                })
                .collect::<Vec<_>>();
            table(&["NAME", "ROLE", "STATUS", "CREATED"], &rows);
        }
        UserCommand::Enroll {
            name,
            json: as_json,
        } => {
            refuse(check_name("user", &name))?;
            let Some(user) = app.store.staff_auth(&name).await? else {
                anyhow::bail!("no staff user named {name}");
            };
            if !user.directory {
                anyhow::bail!(
                    "{name} is a local account: its enrollment link came with `user add` (add it again under another name if it was lost)"
                );
            }
            if !user.enabled {
                anyhow::bail!(
                    "{name} is disabled; the directory enables it again at its next sign-in"
                );
            }
            if user.has_second_factor() {
                anyhow::bail!("{name} has a second factor already");
            }
            let token = random_hex(32);
            let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
            let expires = now + ENROLL_VALID_SECS;
            let mut tx = app.store.begin().await?;
            if !tx
                .open_directory_enrollment(user.id, &token_hash, expires)
                .await?
            {
                anyhow::bail!("{name} has a second factor already");
            }
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::UserEnrollOpen,
                    format!("user:{name}"),
                    json!({"directory": true, "by": "cli", "enroll_expires_at": expires}),
                ),
                now,
            )
            .await?;
            tx.commit("user.enroll.open").await?;
            let link = format!("{}/enroll/{token}", app.config.web.public_url);
            if as_json {
                return json(&json!({"name": name, "enroll_url": link, "expires_at": expires}));
            }
            println!(
                "One-time second-factor setup for {name} (valid until {}; send it to {name} over a trusted channel):",
                format_time(expires)
            );
            println!("{link}");
        }
        UserCommand::Disable { name } => {
            let u = app.store.require_staff_user(&name).await?;
            let mut tx = app.store.begin().await?;
            tx.disable_staff_user(u.id).await?;
            // Signed in on the web page right now: signed out on every node, in the same transaction.
            let ended = tx.end_web_sessions_of(&name).await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    Action::UserDisable,
                    format!("user:{name}"),
                    json!({"web_sessions_ended": ended}),
                ),
                now,
            )
            .await?;
            tx.commit("user.disable").await?;
            println!("User {name} disabled.");
        }
    }
    Ok(())
}
