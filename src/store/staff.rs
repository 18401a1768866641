//! Staff users (approvers, auditors, admins) and their one-time enrollment tokens.

use sqlx::any::AnyRow;

use super::{Context, Result, Store, StoreError, Tx, get, get_parsed};
use crate::model::{Role, StaffUser, UnixTime};

fn staff(row: &AnyRow) -> Result<StaffUser> {
    Ok(StaffUser {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: get_parsed::<Role>(row, "role")?,
        enabled: get::<i64>(row, "enabled")? != 0,
        enrolled: get::<Option<String>>(row, "password_hash")?.is_some(),
        created_at: get(row, "created_at")?,
    })
}

impl Store {
    pub async fn staff_users(&self) -> Result<Vec<StaffUser>> {
        let rows = sqlx::query(
            "SELECT id, name, role, enabled, password_hash, created_at FROM staff_users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .context("listing staff users")?;
        rows.iter().map(staff).collect()
    }

    pub async fn require_staff_user(&self, name: &str) -> Result<StaffUser> {
        let row = sqlx::query(
            "SELECT id, name, role, enabled, password_hash, created_at FROM staff_users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .context("reading a staff user")?;
        row.as_ref()
            .map(staff)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "user",
                name: name.to_owned(),
            })
    }
}

impl Tx {
    /// Adds a staff user who still has to enroll with the token whose SHA-256 is `token_hash`.
    pub async fn insert_staff_user(
        &mut self,
        name: &str,
        role: Role,
        token_hash: &str,
        token_expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO staff_users (name, role, enabled, enroll_token_hash, enroll_expires_at, created_at) \
             VALUES ($1, $2, 1, $3, $4, $5) RETURNING id",
        )
        .bind(name)
        .bind(role.to_string())
        .bind(token_hash)
        .bind(token_expires_at)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("user {name} already exists"))
            }
            source => StoreError::Database {
                context: "adding a staff user",
                source,
            },
        })?;
        get(&row, "id")
    }

    /// Disables a user and voids any pending enrollment token.
    pub async fn disable_staff_user(&mut self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE staff_users SET enabled = 0, enroll_token_hash = NULL, enroll_expires_at = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("disabling a staff user")?;
        Ok(())
    }
}
