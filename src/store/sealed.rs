//! Every value sealed under the secrets key, for key rotation: vendors' and staff TOTP seeds and device
//! credentials, each with the purpose it was sealed for.

use super::{Context, Result, StoreError, Tx, get};

/// Which column a sealed value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    VendorTotp,
    StaffTotp,
    AssetCredential,
}

impl SealedKind {
    const ALL: [SealedKind; 3] = [
        SealedKind::VendorTotp,
        SealedKind::StaffTotp,
        SealedKind::AssetCredential,
    ];

    /// Table and column (constants: the only SQL interpolated below).
    fn column(self) -> (&'static str, &'static str) {
        match self {
            SealedKind::VendorTotp => ("vendors", "totp_secret"),
            SealedKind::StaffTotp => ("staff_users", "totp_secret"),
            SealedKind::AssetCredential => ("assets", "cred_secret"),
        }
    }

    /// The associated data the value was sealed with (see `secrets.rs`).
    fn purpose_prefix(self) -> &'static str {
        match self {
            SealedKind::VendorTotp => "vendor-totp",
            SealedKind::StaffTotp => "staff-totp",
            SealedKind::AssetCredential => "asset-credential",
        }
    }
}

/// One sealed value.
#[derive(Clone)]
pub struct Sealed {
    pub kind: SealedKind,
    pub row_id: i64,
    pub name: String,
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Sealed {
    /// `vendor-totp:alice`, `asset-credential:mri-01`, …
    pub fn purpose(&self) -> String {
        format!("{}:{}", self.kind.purpose_prefix(), self.name)
    }
}

impl Tx {
    /// Every sealed value, read inside this transaction (so a rotation sees one consistent state).
    pub async fn sealed_values(&mut self) -> Result<Vec<Sealed>> {
        let mut out = Vec::new();
        for kind in SealedKind::ALL {
            let (table, column) = kind.column();
            let sql = format!(
                "SELECT id, name, {column} AS blob FROM {table} WHERE {column} IS NOT NULL ORDER BY id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *self.tx)
                .await
                .context("reading sealed values")?;
            for row in &rows {
                out.push(Sealed {
                    kind,
                    row_id: get(row, "id")?,
                    name: get(row, "name")?,
                    blob: get(row, "blob")?,
                });
            }
        }
        Ok(out)
    }

    /// Replaces one sealed value, if it is still the one read (`value.blob`). A value another command
    /// changed meanwhile (PostgreSQL reads in this transaction see commits made after its start) is
    /// refused rather than overwritten with the old secret sealed again.
    pub async fn reseal(&mut self, value: &Sealed, blob: &[u8]) -> Result<()> {
        let (table, column) = value.kind.column();
        let sql = format!("UPDATE {table} SET {column} = $1 WHERE id = $2 AND {column} = $3");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(blob)
            .bind(value.row_id)
            .bind(value.blob.as_slice())
            .execute(&mut *self.tx)
            .await
            .context("re-sealing a value")?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "{} changed while the rotation ran",
                value.purpose()
            )));
        }
        Ok(())
    }
}
