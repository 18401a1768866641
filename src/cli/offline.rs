//! The guard of commands that change what every running node relies on: `restore` into a shared
//! (PostgreSQL) database rewrites every recording's path and appends to the chain, and `secrets rotate`
//! re-seals every secret under a key the running nodes do not hold. Either, run beside a live node,
//! breaks it (every login, every playback) without a word; so each refuses while one runs.

use anyhow::bail;

use crate::node::GONE_AFTER_SECS;
use crate::store::Store;

/// Refuses (`what` says which command) while a node has been seen within [`GONE_AFTER_SECS`] at
/// `now`: running, or killed too recently to tell (its row goes once it is that old).
pub async fn require_no_running_node(store: &Store, now: i64, what: &str) -> anyhow::Result<()> {
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
