//! The only place that knows SQL. One interface over SQLite (embedded default) and PostgreSQL (several
//! nodes), through sqlx's `Any` driver with portable SQL (`$1` placeholders work on both).
//!
//! Entry points: [`Store::open`] (connects and applies migrations), reads on [`Store`], and every change
//! through a [`Tx`] from [`Store::begin`]. A `Tx` only commits after it has appended an audit event, so no
//! change reaches the database without its audit row in the same transaction.

mod assets;
mod audit;
mod backup;
mod cursors;
mod durable;
mod grants;
mod health;
mod nodes;
mod requests;
mod sealed;
mod search;
mod session_starts;
mod sessions;
mod staff;
mod vendors;
mod web_state;
mod webhook;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::audit::{AuditEvent, HeadSeal};
use crate::config::redact_url;

pub use assets::NewAsset;
pub use audit::{ChainCheckpoints, SealJudge};
pub use cursors::CursorClaim;
pub use grants::NewGrant;
pub use health::{MigrationStatus, OpsCounts};
pub use nodes::AbandonedSession;
pub use requests::{DecidedFilter, DecidedOutcome, NewRequest};
pub use sealed::{Sealed, SealedKind};
pub use search::{
    CLAIM_SECS, HistoryFilter, HistoryRow, IndexClaim, IndexRow, NewTextChunk, NewWordsPart,
    PART_CHARS, PART_WORDS, TextChunk,
};
pub use session_starts::SessionStart;
pub use sessions::{NewRecording, NewSession, RetentionCandidate};
pub use staff::{DirectoryStanding, EntryRef, SOURCE_DIRECTORY, SOURCE_LOCAL, StaffAuth};
pub use vendors::{DirectoryVendor, LoginFailure, VendorTotp};
pub use web_state::MAX_WEB_STATE;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed; `context` says what we were doing.
    #[error("database error while {context}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("cannot apply database migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The named thing does not exist.
    #[error("no {kind} named {name:?}")]
    NotFound { kind: &'static str, name: String },
    /// A thing with that name or key already exists.
    #[error("{0}")]
    Conflict(String),
    /// A transaction committed but could not be synced to disk (SQLite's write-ahead log).
    #[error("cannot sync the committed transaction to disk ({0}); the disk may be failing")]
    Durability(#[source] std::io::Error),
    /// A value larger than the store accepts for it.
    #[error("{0}")]
    TooLarge(String),
    /// A row holds a value the code cannot accept (edited by hand or corrupted).
    #[error("database row is invalid: {0}")]
    Corrupt(String),
    /// The write was abandoned before it was done (the process is stopping).
    #[error("{0}")]
    Interrupted(&'static str),
    /// A transaction tried to commit a change without an audit event.
    #[error("refusing to commit a change without an audit event ({0})")]
    Unaudited(&'static str),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches what we were doing to a sqlx error.
trait Context<T> {
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T> {
        self.map_err(|source| {
            if let sqlx::Error::Database(db) = &source
                && db.is_unique_violation()
            {
                return StoreError::Conflict(format!("{context}: already exists"));
            }
            StoreError::Database { context, source }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time: a write transaction waits here, in this process, before it
    /// takes a pooled connection, so writers queued behind the lock never hold the connections that
    /// readers (grant checks at session start) need. `None` on PostgreSQL.
    writer: Option<Arc<tokio::sync::Mutex<()>>>,
    /// SQLite: the group sync of the write-ahead log that makes a committed [`Tx`] durable (the
    /// connections run with `synchronous = NORMAL`; see `durable.rs`). `None` on PostgreSQL.
    durable: Option<Arc<durable::WalSync>>,
    /// Session starts waiting to be written together (`session_starts.rs`).
    starts: Arc<session_starts::Queue>,
    /// Audit events this process verified in an unbroken chain (`audit::ChainCheckpoints`).
    checkpoints: Arc<audit::ChainCheckpoints>,
    /// Seals the chain head at every append and judges it at every check.
    seal: Arc<HeadSeal>,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`), creating a SQLite file if needed, and applies
    /// the migrations of that backend.
    /// `seal` is the installation's ([`HeadSeal::new`] of its secrets key): the store seals the audit
    /// chain's head with it at every append and judges the head with it at every check.
    pub async fn open(url: &str, seal: HeadSeal) -> Result<Store> {
        let store = Store::connect(url, "rwc", seal).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` without migrating it (nor creating a SQLite file): only for a look at the
    /// nodes ([`Store::nodes_seen_since`]) before a command that must not run beside one changes
    /// anything.
    pub async fn connect_unmigrated(url: &str, seal: HeadSeal) -> Result<Store> {
        Store::connect(url, "rw", seal).await
    }

    /// `sqlite_mode`: `rwc` creates a missing SQLite file, `rw` does not.
    async fn connect(url: &str, sqlite_mode: &str, seal: HeadSeal) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url, max, durable) = if let Some(path) = url.strip_prefix("sqlite://")
        {
            // WAL lets readers run beside the one writer; the busy timeout queues writers instead of failing.
            let file = Path::new(path.split('?').next().unwrap_or(path));
            let durable = Arc::new(durable::WalSync::new(file));
            (
                Backend::Sqlite,
                format!("sqlite://{path}?mode={sqlite_mode}"),
                8,
                Some(durable),
            )
        } else {
            (Backend::Postgres, url.to_owned(), 16, None)
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(|source| {
                tracing::debug!(url = %redact_url(url), "connect failed");
                StoreError::Database {
                    context: "connecting to the database",
                    source,
                }
            })?;
        let writer = (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(Store {
            pool,
            backend,
            writer,
            durable,
            starts: Arc::default(),
            checkpoints: Arc::default(),
            seal: Arc::new(seal),
        })
    }

    /// Applies the migrations this build has and the database lacks: never under a node that runs on the
    /// database (seen within `node::GONE_AFTER_SECS`), which would go on with the old schema and rules
    /// (a node from before the sealed head appends events that read as tampering; one restarted fails
    /// on migrations it does not know). A rolling upgrade therefore stops at its first node, saying so:
    /// stop every node, then upgrade.
    async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // A new database has no migrations table: nothing applied, and no node can run on it. Any
        // other error is the database's, and stops here (the guard is not skipped on a hiccup).
        let applied: Vec<i64> = if self.has_table("_sqlx_migrations").await? {
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .context("reading the applied migrations")?
                .iter()
                .map(|r| get(r, "version"))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let pending = migrator.iter().any(|m| !applied.contains(&m.version));
        if pending && !applied.is_empty() {
            let now = self.database_now().await?;
            let running = self
                .nodes_seen_since(now - crate::node::GONE_AFTER_SECS)
                .await?;
            if !running.is_empty() {
                let names: Vec<String> = running
                    .iter()
                    .map(|(id, seen)| format!("{id} (seen {} s ago)", (now - seen).max(0)))
                    .collect();
                return Err(StoreError::Conflict(format!(
                    "this build's database migrations were not applied: chaperone is running on this \
                     database ({}), and would go on with the old schema. Stop every node, then start \
                     the upgraded one (a node killed rather than stopped counts as running for {} s)",
                    names.join(", "),
                    crate::node::GONE_AFTER_SECS
                )));
            }
        }
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The audit events this process verified in an unbroken chain.
    pub fn chain_checkpoints(&self) -> &audit::ChainCheckpoints {
        &self.checkpoints
    }

    /// Starts a write transaction. On SQLite it waits for this process's writer turn first, then takes
    /// the write lock at once (`BEGIN IMMEDIATE`), so writers from other processes (the CLI) queue on the
    /// busy timeout instead of failing half-way.
    pub async fn begin(&self) -> Result<Tx> {
        let asked = std::time::Instant::now();
        let writer = self.writer_turn().await;
        self.begin_in_turn(writer, asked).await
    }

    /// [`Store::begin`] for a caller that already holds the writer turn (asked for at `asked`).
    async fn begin_in_turn(
        &self,
        writer: Option<tokio::sync::OwnedMutexGuard<()>>,
        asked: std::time::Instant,
    ) -> Result<Tx> {
        let w = self
            .write_tx_in_turn(writer, asked, "starting a transaction")
            .await?;
        Ok(Tx {
            tx: w.tx,
            audited: false,
            writer: w.writer,
            durable: self.durable.clone(),
            seal: self.seal.clone(),
        })
    }

    /// A write transaction in this process's writer turn, without the audit rule: for bookkeeping tables
    /// derived from what the chain vouches for (the search index), and for [`Store::begin`]. `BEGIN
    /// IMMEDIATE` on SQLite (a deferred transaction that another process wrote under fails with
    /// "database is locked" instead of waiting).
    pub(crate) async fn write_tx(&self, context: &'static str) -> Result<WriteTx> {
        let asked = std::time::Instant::now();
        let writer = self.writer_turn().await;
        self.write_tx_in_turn(writer, asked, context).await
    }

    /// This process's writer turn (SQLite; `None` on PostgreSQL, which has no such turn).
    async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.writer {
            Some(w) => Some(w.clone().lock_owned().await),
            None => None,
        }
    }

    /// [`Store::write_tx`] for a caller that already holds the writer turn (asked for at `asked`).
    async fn write_tx_in_turn(
        &self,
        writer: Option<tokio::sync::OwnedMutexGuard<()>>,
        asked: std::time::Instant,
        context: &'static str,
    ) -> Result<WriteTx> {
        // The metric's wait includes the writer turn: both are time a writer spends queued.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .context(context)?;
        crate::ops::metrics::db_acquired(asked.elapsed());
        Ok(WriteTx { tx, writer })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write transaction without the audit rule ([`Store::write_tx`]); the writer turn is released after
/// it (fields drop in order).
pub(crate) struct WriteTx {
    pub(crate) tx: Transaction<'static, Any>,
    writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// A write transaction. Commit requires at least one audit event appended through [`Tx::audit`].
#[derive(Debug)]
pub struct Tx {
    tx: Transaction<'static, Any>,
    audited: bool,
    /// The writer turn (SQLite), released after the transaction (fields drop in order).
    writer: Option<tokio::sync::OwnedMutexGuard<()>>,
    durable: Option<Arc<durable::WalSync>>,
    seal: Arc<HeadSeal>,
}

impl Tx {
    /// Appends `event` to the audit chain inside this transaction.
    pub async fn audit(&mut self, event: AuditEvent, now: i64) -> Result<i64> {
        let seq = audit::append(&mut self.tx, &self.seal, event, now).await?;
        self.audited = true;
        Ok(seq)
    }

    /// Appends `events` (each with its time) to the audit chain in order, in a fixed number of statements.
    pub async fn audit_many(&mut self, events: Vec<(AuditEvent, i64)>) -> Result<Vec<i64>> {
        let audited = !events.is_empty();
        let seqs = audit::append_many(&mut self.tx, &self.seal, events).await?;
        self.audited |= audited;
        Ok(seqs)
    }

    /// Removes a seal made under secrets key `theirs` from the chain head, in this transaction; whether
    /// there was one. Only for `audit seal --replacing-key`, which seals the head again after it.
    pub async fn drop_foreign_head_seal(&mut self, theirs: &str) -> Result<bool> {
        audit::drop_foreign_seal(&mut self.tx, theirs).await
    }

    /// Seals the chain head as it stands in this transaction under `with`, if `judge` holds of it.
    /// Returns the head and whether it was sealed.
    pub async fn seal_head(
        &mut self,
        judge: SealJudge<'_>,
        with: &HeadSeal,
    ) -> Result<((i64, String), bool)> {
        audit::seal_head(&mut self.tx, judge, with).await
    }

    /// Commits; refuses when nothing was audited (`what` names the change for the error). Returns once the
    /// transaction is on disk: on SQLite, the writer turn is released first and the write-ahead log is
    /// synced once for every transaction that committed meanwhile (`durable.rs`).
    pub async fn commit(self, what: &'static str) -> Result<()> {
        let Tx {
            tx,
            audited,
            writer,
            durable,
            seal: _,
        } = self;
        if !audited {
            return Err(StoreError::Unaudited(what));
        }
        tx.commit().await.context("committing")?;
        drop(writer);
        if let Some(durable) = durable {
            durable.after_commit().await.map_err(|e| {
                tracing::error!(error = %e, what, "a committed transaction could not be synced to disk");
                StoreError::Durability(e)
            })?;
        }
        Ok(())
    }
}

// ---- row helpers shared by the submodules ---------------------------------------------------------

fn get<T>(row: &AnyRow, column: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

fn get_parsed<T: FromStr<Err = String>>(row: &AnyRow, column: &str) -> Result<T> {
    let text: String = get(row, column)?;
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Rows per multi-row `INSERT`: far below SQLite's 32,766 bound parameters and PostgreSQL's 65,535 for
/// the widest table written this way (10 columns).
const ROWS_PER_INSERT: usize = 100;

/// `($1, …, $c), ($c+1, …), …`: the placeholders of `rows` rows of `columns` values for a multi-row
/// `INSERT` (the values are bound, never interpolated).
fn value_rows(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$1, $2, …, $n`: the placeholders of an `IN (…)` list of `n` values (the values are bound, never
/// interpolated).
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
