//! The guard of commands that change what every running node relies on: `restore` into a shared
//! (PostgreSQL) database rewrites every recording's path and appends to the chain, and `secrets rotate`
//! re-seals every secret under a key the running nodes do not hold. Either, run beside a live node,
//! breaks it (every login, every playback) without a word; so each refuses while one runs. The look
//! comes before the database is migrated ([`open`]): a newer binary that refuses has changed nothing
//! under the running nodes.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::app::App;
use crate::config::{Config, redact_url};
use crate::node::GONE_AFTER_SECS;
use crate::store::Store;

/// [`App::open`] for `what`, a command that must not run beside a live node: it refuses while one
/// runs on the config's database, looked at before the database is migrated.
pub async fn open(config: &Path, what: &str) -> anyhow::Result<App> {
    let config = Config::load(config)?;
    {
        let secrets = crate::secrets::SecretsKey::load(&config.secrets.key_file)?;
        let store =
            Store::connect_unmigrated(&config.database.url, crate::audit::HeadSeal::new(&secrets))
                .await
                .with_context(|| {
                    format!("opening database {}", redact_url(&config.database.url))
                })?;
        require_no_running_node(&store, what).await?;
    }
    Ok(App::from_config(config).await?)
}

/// Refuses (`what` says which command) while a node has been seen within [`GONE_AFTER_SECS`] (on the
/// database's clock, which heartbeats are written in): running, or killed too recently to tell (its row
/// goes once it is that old).
pub async fn require_no_running_node(store: &Store, what: &str) -> anyhow::Result<()> {
    let now = store.database_now().await?;
    let running = store.nodes_seen_since(now - GONE_AFTER_SECS).await?;
    if running.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = running
        .iter()
        .map(|(id, seen)| format!("{id} (seen {} s ago)", (now - seen).max(0)))
        .collect();
    bail!(
        "{what} refused: chaperone is running on this database ({}). Stop every node first; a node \
         that was killed rather than stopped counts as running for {GONE_AFTER_SECS} s after its last \
         heartbeat",
        names.join(", ")
    )
}
