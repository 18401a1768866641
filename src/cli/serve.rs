//! `chaperone serve`: run the listeners until SIGTERM or Ctrl-C.

use std::path::Path;

use crate::app::App;
use crate::server;

pub async fn run(config: &Path) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    // Every session is refused without a recording: a directory this process cannot write is found
    // now, not at the first vendor's session. A missing one (a node's new data directory) is made, 0700.
    let dir = &app.config.recording.dir;
    if !dir.exists() {
        super::init::create_private_dir(dir)?;
    }
    crate::recording::probe_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create recordings in {} ({e}): every session would be refused. Check its owner, \
             and under systemd a ReadWritePaths= drop-in for a directory outside /var/lib/chaperone",
            dir.display()
        )
    })?;
    let listeners = server::bind(&app.config).await?;
    Ok(server::run(app, listeners, server::shutdown_signal()).await?)
}
