//! Staff users (approvers, auditors, admins), their one-time enrollment tokens, and their sign-in
//! failures per (account, source address) (migration 0007; the rule that reads them is `web::SignInRule`).

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::AssertSqlSafe;
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

/// What sign-in needs about a staff user (never printed: `Debug` leaves the secrets out).
#[derive(Clone)]
pub struct StaffAuth {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub enabled: bool,
    pub password_hash: Option<String>,
    /// Sealed TOTP seed (`staff-totp:NAME`).
    pub totp_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for StaffAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAuth")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

const AUTH_COLUMNS: &str = "id, name, role, enabled, password_hash, totp_secret";

fn staff_auth(row: &AnyRow) -> Result<StaffAuth> {
    Ok(StaffAuth {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: get_parsed::<Role>(row, "role")?,
        enabled: get::<i64>(row, "enabled")? != 0,
        password_hash: get(row, "password_hash")?,
        totp_secret: get(row, "totp_secret")?,
    })
}

impl Store {
    /// Sign-in data of the user `name`.
    pub async fn staff_auth(&self, name: &str) -> Result<Option<StaffAuth>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUTH_COLUMNS} FROM staff_users WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .context("reading a staff user's sign-in data")?;
        row.as_ref().map(staff_auth).transpose()
    }

    /// The enabled user whose unexpired enrollment token hashes to `token_hash`.
    /// A user's passkeys as stored (a JSON array), if any.
    pub async fn staff_passkeys(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT passkeys FROM staff_users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .context("reading passkeys")?;
        match row {
            Some(r) => get(&r, "passkeys"),
            None => Ok(None),
        }
    }

    pub async fn staff_by_enroll_token(
        &self,
        token_hash: &str,
        now: UnixTime,
    ) -> Result<Option<StaffAuth>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUTH_COLUMNS} FROM staff_users WHERE enroll_token_hash = $1 \
             AND enroll_expires_at > $2 AND enabled = 1"
        )))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .context("reading an enrollment")?;
        row.as_ref().map(staff_auth).transpose()
    }

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

    /// Stores the TOTP seed drawn for an enrollment still in progress (the token stays valid).
    pub async fn set_staff_enroll_seed(&mut self, id: i64, sealed: &[u8]) -> Result<()> {
        sqlx::query(
            "UPDATE staff_users SET totp_secret = $1 WHERE id = $2 AND enroll_token_hash IS NOT NULL",
        )
        .bind(sealed)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("storing an enrollment seed")?;
        Ok(())
    }

    /// Finishes enrollment: the password hash and first TOTP step are set and the token is voided, if
    /// the token is still the one given (false when it was used meanwhile).
    pub async fn finish_staff_enrollment(
        &mut self,
        id: i64,
        token_hash: &str,
        password_hash: &str,
        totp_step: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE staff_users SET password_hash = $1, totp_last_step = $2, enroll_token_hash = NULL, \
             enroll_expires_at = NULL WHERE id = $3 AND enroll_token_hash = $4",
        )
        .bind(password_hash)
        .bind(totp_step)
        .bind(id)
        .bind(token_hash)
        .execute(&mut *self.tx)
        .await
        .context("finishing an enrollment")?;
        Ok(done.rows_affected() == 1)
    }

    /// Finishes enrollment with passkeys instead of a TOTP app: the password hash and passkeys are set,
    /// any TOTP seed drawn while the form was open is dropped, and the token is voided (false when it was
    /// used meanwhile).
    pub async fn finish_staff_enrollment_passkey(
        &mut self,
        id: i64,
        token_hash: &str,
        password_hash: &str,
        passkeys: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE staff_users SET password_hash = $1, passkeys = $2, totp_secret = NULL, \
             totp_last_step = NULL, enroll_token_hash = NULL, enroll_expires_at = NULL \
             WHERE id = $3 AND enroll_token_hash = $4",
        )
        .bind(password_hash)
        .bind(passkeys)
        .bind(id)
        .bind(token_hash)
        .execute(&mut *self.tx)
        .await
        .context("finishing an enrollment with a passkey")?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a user's passkeys (webauthn-rs records as a JSON array).
    pub async fn set_staff_passkeys(&mut self, id: i64, passkeys: &str) -> Result<()> {
        sqlx::query("UPDATE staff_users SET passkeys = $1 WHERE id = $2")
            .bind(passkeys)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .context("storing passkeys")?;
        Ok(())
    }

    /// Records an accepted TOTP step; false when it is not newer than the last one (a replay).
    pub async fn accept_staff_totp_step(&mut self, id: i64, step: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE staff_users SET totp_last_step = $1 \
             WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("recording a staff TOTP step")?;
        Ok(done.rows_affected() == 1)
    }

    /// Makes concurrent sign-in judgements of one staff member queue behind this transaction: an
    /// `UPDATE` of their row takes its row lock on PostgreSQL (SQLite's `BEGIN IMMEDIATE` already
    /// serialises writers). Counting and recording failures after this is then exact across nodes.
    pub async fn hold_staff_user(&mut self, id: i64) -> Result<()> {
        sqlx::query("UPDATE staff_users SET enabled = enabled WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .context("holding a staff user for a sign-in")?;
        Ok(())
    }

    /// Failed sign-ins of user `id` from `source` at or after `since`.
    pub async fn staff_signin_failures(
        &mut self,
        id: i64,
        source: &str,
        since: UnixTime,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM staff_signin_failures \
             WHERE user_id = $1 AND source = $2 AND at >= $3",
        )
        .bind(id)
        .bind(source)
        .bind(since)
        .fetch_one(&mut *self.tx)
        .await
        .context("counting failed sign-ins")?;
        get(&row, "n")
    }

    /// Records a failed sign-in of user `id` from `source` at `at`, and forgets every failure (of anyone)
    /// from before `forget_before`: rows outside the window count for nothing.
    pub async fn add_staff_signin_failure(
        &mut self,
        id: i64,
        source: &str,
        at: UnixTime,
        forget_before: UnixTime,
    ) -> Result<()> {
        sqlx::query("DELETE FROM staff_signin_failures WHERE at < $1")
            .bind(forget_before)
            .execute(&mut *self.tx)
            .await
            .context("forgetting old failed sign-ins")?;
        sqlx::query("INSERT INTO staff_signin_failures (user_id, source, at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(source)
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .context("recording a failed sign-in")?;
        Ok(())
    }

    /// Forgets the failed sign-ins of user `id` from `source` (they signed in from there).
    pub async fn clear_staff_signin_failures(&mut self, id: i64, source: &str) -> Result<()> {
        sqlx::query("DELETE FROM staff_signin_failures WHERE user_id = $1 AND source = $2")
            .bind(id)
            .bind(source)
            .execute(&mut *self.tx)
            .await
            .context("clearing failed sign-ins")?;
        Ok(())
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
