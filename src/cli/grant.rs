//! `chaperone grant …`: staff-issued grants (planned maintenance) and revocation. Requests approved in the
//! web page become grants too; both land in the same table and the same audit chain.

use std::path::Path;

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

use super::output::{json, table};
use super::refuse;
use crate::app::App;
use crate::audit::AuditEvent;
use crate::clock::format_time;
use crate::config::{format_duration, parse_duration};
use crate::identity::os_actor;
use crate::model::{check_text, parse_name_list};
use crate::store::NewGrant;

/// The longest grant staff can issue from the command line.
pub const MAX_GRANT_SECS: u64 = 30 * 86400;

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
    let actor = os_actor();
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
            if duration.as_secs() > MAX_GRANT_SECS {
                bail!(
                    "--for {} is longer than the maximum {}",
                    format_duration(duration),
                    format_duration(std::time::Duration::from_secs(MAX_GRANT_SECS))
                );
            }
            refuse(check_text("reason", &reason, 500))?;
            let v = app.store.require_vendor(&vendor).await?;
            if !v.enabled {
                bail!("vendor {vendor} is disabled");
            }
            let a = app.store.require_asset(&asset).await?;
            for s in &services {
                if a.service(s).is_none() {
                    let known: Vec<_> = a.services.iter().map(|s| s.name.as_str()).collect();
                    bail!(
                        "asset {asset} has no service {s} (it has: {})",
                        known.join(", ")
                    );
                }
            }
            let ends_at = now + i64::try_from(duration.as_secs())?;
            let mut tx = app.store.begin().await?;
            let id = tx
                .insert_grant(
                    &NewGrant {
                        vendor_id: v.id,
                        asset_id: a.id,
                        services: &services,
                        starts_at: now,
                        ends_at,
                        reason: &reason,
                        issued_by: &actor,
                        request_id: None,
                    },
                    now,
                )
                .await?;
            tx.audit(
                AuditEvent::new(
                    &actor,
                    "grant.issue",
                    format!("grant:{id}"),
                    json!({"vendor": vendor, "asset": asset, "services": services, "starts_at": now, "ends_at": ends_at, "reason": reason}),
                ),
                now,
            )
            .await?;
            tx.commit("grant.issue").await?;
            println!(
                "Grant #{id}: {vendor} may reach {asset} [{}] until {}.",
                services.join(","),
                format_time(ends_at)
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
            refuse(check_text("reason", &reason, 500))?;
            let g = app.store.require_grant(id).await?;
            let mut tx = app.store.begin().await?;
            if !tx.revoke_grant(id, &actor, &reason, now).await? {
                bail!("grant #{id} was already revoked");
            }
            tx.audit(
                AuditEvent::new(
                    &actor,
                    "grant.revoke",
                    format!("grant:{id}"),
                    json!({"vendor": g.vendor, "asset": g.asset, "reason": reason}),
                ),
                now,
            )
            .await?;
            tx.commit("grant.revoke").await?;
            println!("Grant #{id} revoked; live sessions under it close within seconds.");
        }
    }
    Ok(())
}
