//! What every command shares once the config is loaded: the config, the store, the secrets key and the
//! clock.
//!
//! Entry point: [`App::open`].

use std::path::Path;

use crate::clock::Clock;
use crate::config::{Config, ConfigError, redact_url};
use crate::secrets::{SecretsError, SecretsKey};
use crate::store::{Store, StoreError};

/// Why the shared state of a command could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config file is missing, unreadable or invalid (its own text names the file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The secrets key is missing, malformed or readable by others (its own text names the file).
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// `[ldap]` cannot be set up (its password or CA file).
    #[error(transparent)]
    Directory(#[from] crate::identity::ldap::LdapError),
    /// The database cannot be opened or migrated. `url` is redacted (no password).
    #[error("opening database {url}")]
    Database {
        url: String,
        #[source]
        source: StoreError,
    },
}

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
    /// The directory of `[ldap]`, if configured (staff and vendors from LDAP / Active Directory).
    pub directory: Option<std::sync::Arc<crate::identity::ldap::Directory>>,
    /// Recordings this process saw hashed to their vouched digest (at session end, or by a page's check).
    pub proven: crate::evidence::proven::Proven,
    /// Told when this process closed a recording (`LiveSession::end`): the indexer
    /// (`search_index::run`) starts on it at once instead of at its next poll. A notice given while the
    /// indexer is busy is kept for its next wait.
    pub recording_closed: std::sync::Arc<tokio::sync::Notify>,
}

impl App {
    /// Loads the config at `path`, the secrets key, and opens (and migrates) the database.
    pub async fn open(path: &Path) -> Result<App, AppError> {
        let config = Config::load(path)?;
        App::from_config(config).await
    }

    /// [`App::open`] with a config already loaded.
    pub async fn from_config(config: Config) -> Result<App, AppError> {
        let secrets = SecretsKey::load(&config.secrets.key_file)?;
        let directory =
            crate::identity::ldap::Directory::from_config(&config)?.map(std::sync::Arc::new);
        let store = Store::open(&config.database.url, crate::audit::HeadSeal::new(&secrets))
            .await
            .map_err(|source| AppError::Database {
                url: redact_url(&config.database.url),
                source,
            })?;
        Ok(App {
            config,
            store,
            secrets: std::sync::Arc::new(secrets),
            clock: Clock::system(),
            events: Default::default(),
            node: format!("node-{}", crate::secrets::random_hex(8)).into(),
            directory,
            proven: Default::default(),
            recording_closed: Default::default(),
        })
    }
}
