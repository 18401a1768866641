//! What `chaperone backup` and `restore` need from the database: a consistent copy of a SQLite file
//! while the server runs, and moving the recordings' paths to a restored node's directory.

use std::path::Path;

use super::{Backend, Context, Result, Store, StoreError, Tx};

impl Store {
    /// Writes a consistent copy of the SQLite database to `to` (`VACUUM INTO`: one read transaction, so
    /// writers carry on and the copy is a snapshot). `to` must not exist. Not for PostgreSQL (`pg_dump`).
    pub async fn snapshot_sqlite(&self, to: &Path) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Conflict(
                "a PostgreSQL database is backed up with pg_dump, not by chaperone".into(),
            ));
        }
        let to = to
            .to_str()
            .ok_or_else(|| StoreError::Conflict("the snapshot path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1")
            .bind(to)
            .execute(&self.pool)
            .await
            .context("copying the database (VACUUM INTO)")?;
        Ok(())
    }
}

impl Tx {
    /// Rewrites recording paths under `from` (the backed-up node's recordings directory) to lie under
    /// `to` (the restored one). Returns how many rows moved. Audited by the caller (`backup.restore`).
    pub async fn relocate_recordings(&mut self, from: &str, to: &str) -> Result<u64> {
        let from = format!("{}/", from.trim_end_matches('/'));
        let to = format!("{}/", to.trim_end_matches('/'));
        let n = sqlx::query(
            "UPDATE recordings SET path = $2 || substr(path, $3) WHERE substr(path, 1, $4) = $1",
        )
        .bind(&from)
        .bind(&to)
        // 32-bit: PostgreSQL's substr takes integer positions, not bigint.
        .bind(i32::try_from(from.chars().count() + 1).unwrap_or(i32::MAX))
        .bind(i32::try_from(from.chars().count()).unwrap_or(i32::MAX))
        .execute(&mut *self.tx)
        .await
        .context("moving recording paths to the restored directory")?
        .rows_affected();
        Ok(n)
    }
}
