//! What every command shares once the config is loaded: the config, the store, the secrets key and the
//! clock.
//!
//! Entry point: [`App::open`].

use std::path::Path;

use anyhow::Context as _;

use crate::clock::Clock;
use crate::config::{Config, redact_url};
use crate::secrets::SecretsKey;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    pub store: Store,
    /// Seals and opens device credentials and TOTP seeds.
    pub secrets: std::sync::Arc<SecretsKey>,
    pub clock: Clock,
    /// Change notices shared by the SSH listener and the web app (requests filed and decided, grants).
    pub events: crate::policy::events::Events,
    /// This process's name among the nodes sharing the database (`node-` and 16 hex digits, new at each
    /// start): sessions record it, and the webhook lease names it.
    pub node: std::sync::Arc<str>,
}

impl App {
    /// Loads the config at `path`, the secrets key, and opens (and migrates) the database.
    pub async fn open(path: &Path) -> anyhow::Result<App> {
        let config = Config::load(path)?;
        App::from_config(config).await
    }

    pub async fn from_config(config: Config) -> anyhow::Result<App> {
        let secrets = SecretsKey::load(&config.secrets.key_file)?;
        let store = Store::open(&config.database.url)
            .await
            .with_context(|| format!("opening database {}", redact_url(&config.database.url)))?;
        Ok(App {
            config,
            store,
            secrets: std::sync::Arc::new(secrets),
            clock: Clock::system(),
            events: Default::default(),
            node: format!("node-{}", crate::secrets::random_hex(8)).into(),
        })
    }
}
