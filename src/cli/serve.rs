//! `chaperone serve`: run the listeners until SIGTERM or Ctrl-C.

use std::path::Path;

use crate::app::App;
use crate::server;

pub async fn run(config: &Path) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let listeners = server::bind(&app.config).await?;
    Ok(server::run(app, listeners, server::shutdown_signal()).await?)
}
