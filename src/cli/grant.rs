//! `chaperone grant …`: staff-issued grants (planned maintenance) and revocation. Requests approved in the
//! web page become grants too; both are issued and revoked by `policy::grants`, with the same rules and the
//! same audit records.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;

use super::output::{json, table};
use super::refuse;
use crate::app::App;
use crate::clock::format_time;
use crate::config::parse_duration;
use crate::identity::os_actor;
use crate::model::parse_name_list;
use crate::policy::grants::{self, Actor, Issue, Source};

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Issue a grant: vendor + asset + services for a time window, starting now.
    Add {
        #[arg(long)]
        vendor: String,
        #[arg(long)]
        asset: String,
        /// Comma-separated service names of the asset, e.g. ssh,dicom.
        #[arg(long)]
        services: String,
        /// How long, e.g. 2h, 30m, 1d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (a ticket reference).
        #[arg(long)]
        reason: String,
    },
    /// List open grants (active or scheduled); --all for history too.
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant: its live sessions close.
    Revoke {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}

pub async fn run(config: &Path, cmd: GrantCommand) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let actor = Actor::os(os_actor());
    let now = app.clock.now();
    match cmd {
        GrantCommand::Add {
            vendor,
            asset,
            services,
            duration,
            reason,
        } => {
            let services = refuse(parse_name_list("service", &services))?;
            let duration = refuse(parse_duration(&duration))?;
            let issued = grants::issue(
                &app.store,
                &app.events,
                now,
                &actor,
                &Issue {
                    vendor: &vendor,
                    asset: &asset,
                    services: &services,
                    duration,
                    reason: &reason,
                    source: Source::StaffIssued,
                    approvers: &[],
                },
            )
            .await?;
            println!(
                "Grant #{}: {vendor} may reach {asset} [{}] until {}.",
                issued.id,
                services.join(","),
                format_time(issued.ends_at)
            );
        }
        GrantCommand::List { all, json: as_json } => {
            let grants = app.store.grants(if all { None } else { Some(now) }).await?;
            if as_json {
                let out: Vec<_> = grants
                    .iter()
                    .map(|g| {
                        let mut v = serde_json::to_value(g).unwrap_or_default();
                        v["state"] = json!(g.state(now));
                        v
                    })
                    .collect();
                return json(&out);
            }
            let rows = grants
                .iter()
                .map(|g| {
                    vec![
                        g.id.to_string(),
                        g.vendor.clone(),
                        g.asset.clone(),
                        g.services.join(","),
                        g.state(now).to_owned(),
                        format_time(g.ends_at),
                        g.issued_by.clone(),
                        g.reason.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            table(
                &[
                    "ID",
                    "VENDOR",
                    "ASSET",
                    "SERVICES",
                    "STATE",
                    "ENDS",
                    "ISSUED BY",
                    "REASON",
                ],
                &rows,
            );
        }
        GrantCommand::Revoke { id, reason } => {
            grants::revoke(&app.store, &app.events, now, &actor, id, &reason).await?;
            println!("Grant #{id} revoked; live sessions under it close within seconds.");
        }
    }
    Ok(())
}
