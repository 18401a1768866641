//! Staff users (approvers, auditors, admins), their one-time enrollment tokens, and their sign-in
//! failures per (account, source address) (migration 0007; the rule that reads them is
//! `identity::signin`), and staff from a directory (migration 0012: `source`, `dn`, `zones`).

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::{Context, Result, Store, StoreError, Tx, get, get_parsed};
use crate::model::{Role, StaffUser, UnixTime};

/// Enrolled: a local user has set a password; a directory user has a second factor and no open link.
const ENROLLED: &str = "CASE WHEN password_hash IS NOT NULL OR (source = 'ldap' AND enroll_token_hash IS NULL \
     AND (totp_secret IS NOT NULL OR passkeys IS NOT NULL)) THEN 1 ELSE 0 END";

fn staff(row: &AnyRow) -> Result<StaffUser> {
    Ok(StaffUser {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: get_parsed::<Role>(row, "role")?,
        enabled: get::<i64>(row, "enabled")? != 0,
        enrolled: get::<i64>(row, "enrolled")? != 0,
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
    /// The account's password is checked by the directory (`[ldap]`), not here.
    pub directory: bool,
    /// The directory entry it was last found as.
    pub dn: Option<String>,
    /// The entry's stable id (`entryUUID`/`objectGUID`), when known (migration 0020).
    pub entry_id: Option<String>,
    /// Zones the directory lets them approve (`[ldap.zones.X] approver`).
    pub zones: Vec<String>,
    /// Their approver role comes from zone groups alone: they decide those zones' requests only.
    pub zones_only: bool,
    /// Passkeys are stored for the account.
    pub has_passkeys: bool,
    /// An enrollment link is open (the second factor is not set up yet).
    pub enrolling: bool,
    /// Disabled by the directory (removed, or in no mapped group), not by an administrator: the
    /// directory may enable it again.
    pub directory_disabled: bool,
}

impl StaffAuth {
    /// A second factor is set up: a directory user signs in with it; one without is enrolled first.
    pub fn has_second_factor(&self) -> bool {
        !self.enrolling && (self.totp_secret.is_some() || self.has_passkeys)
    }
}

impl std::fmt::Debug for StaffAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAuth")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

const AUTH_COLUMNS: &str = "id, name, role, enabled, password_hash, totp_secret, source, dn, entry_id, zones, zones_only, \
     CASE WHEN passkeys IS NULL THEN 0 ELSE 1 END AS has_passkeys, \
     CASE WHEN enroll_token_hash IS NULL THEN 0 ELSE 1 END AS enrolling, directory_disabled";

/// Where a staff account's password is checked.
pub const SOURCE_LOCAL: &str = "local";
pub const SOURCE_DIRECTORY: &str = "ldap";

/// What the directory's groups give a staff account (`[ldap.roles]`, `[ldap.zones.X] approver`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStanding {
    pub role: Role,
    /// Zones whose approver group they are in.
    pub zones: Vec<String>,
    /// No `[ldap.roles]` group: the role is an approver's for `zones` only.
    pub zones_only: bool,
}

impl DirectoryStanding {
    /// As stored for `user` now.
    pub fn of(user: &StaffAuth) -> Self {
        DirectoryStanding {
            role: user.role,
            zones: user.zones.clone(),
            zones_only: user.zones_only,
        }
    }
}

fn staff_auth(row: &AnyRow) -> Result<StaffAuth> {
    Ok(StaffAuth {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: get_parsed::<Role>(row, "role")?,
        enabled: get::<i64>(row, "enabled")? != 0,
        password_hash: get(row, "password_hash")?,
        totp_secret: get(row, "totp_secret")?,
        directory: get::<String>(row, "source")? == SOURCE_DIRECTORY,
        dn: get(row, "dn")?,
        entry_id: get(row, "entry_id")?,
        zones: get::<String>(row, "zones")?
            .split(',')
            .filter(|z| !z.is_empty())
            .map(str::to_owned)
            .collect(),
        zones_only: get::<i64>(row, "zones_only")? != 0,
        has_passkeys: get::<i64>(row, "has_passkeys")? != 0,
        enrolling: get::<i64>(row, "enrolling")? != 0,
        directory_disabled: get::<i64>(row, "directory_disabled")? != 0,
    })
}

async fn account_of_entry<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    entry: EntryRef<'_>,
    except: Option<i64>,
) -> Result<Option<String>> {
    // Compared here ([`EntryRef::is`]: by stable id where both have one, else the DN in ASCII case, as
    // `requests::decide` compares entries). An account the directory disabled (its name went, as in a
    // rename) does not hold the entry; one an administrator disabled does (`user disable` holds).
    let rows = sqlx::query(
        "SELECT id, name, dn, entry_id FROM staff_users WHERE dn IS NOT NULL AND directory_disabled = 0 \
         ORDER BY id",
    )
    .fetch_all(db)
    .await
    .context("reading the account of a directory entry")?;
    let mut owner = None;
    for row in &rows {
        let dn: Option<String> = get(row, "dn")?;
        let id: Option<String> = get(row, "entry_id")?;
        if entry.is(dn.as_deref(), id.as_deref()) {
            owner = Some((get::<i64>(row, "id")?, get::<String>(row, "name")?));
            break;
        }
    }
    let Some((id, name)) = owner else {
        return Ok(None);
    };
    Ok(match except {
        Some(except) if id >= except => None,
        _ => Some(name),
    })
}

/// A directory entry as the directory shows it now: its DN and its stable id (`entryUUID`, AD's
/// `objectGUID`), if the directory has one.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub dn: &'a str,
    pub id: Option<&'a str>,
}

impl EntryRef<'_> {
    /// Whether an account or vendor stored with `dn` and `id` is this entry: by the stable id when both
    /// have one (a DN changes when the entry is moved or renamed, and an entry deleted and made again
    /// at the same DN is another person's), else by the DN (ASCII case folded, as a directory does).
    pub fn is(&self, dn: Option<&str>, id: Option<&str>) -> bool {
        // An empty id (a vendor untied from its entry by `vendor enable`) is no id.
        match (
            self.id.filter(|i| !i.is_empty()),
            id.filter(|i| !i.is_empty()),
        ) {
            (Some(mine), Some(theirs)) => mine.eq_ignore_ascii_case(theirs),
            _ => dn.is_some_and(|d| d.eq_ignore_ascii_case(self.dn)),
        }
    }
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

    /// The account that directory entry `dn` signs in as, other than account `except`: the oldest with
    /// that entry (DNs compared without regard to ASCII case, as a directory does), if it is older than
    /// `except` or `except` is new. Accounts made twice for one entry before this rule keep the first.
    pub async fn directory_account_of(
        &self,
        entry: EntryRef<'_>,
        except: Option<i64>,
    ) -> Result<Option<String>> {
        account_of_entry(&self.pool, entry, except).await
    }

    /// An earlier account of directory entry `entry` (other than `except`) that the directory disabled
    /// (its name went: a rename, a second name) and that holds a second factor: its name, if any. The
    /// entry signing in under a new name must not set up a new factor with the password alone while the
    /// person's factor is on record: whoever phished the password would hold the account.
    pub async fn factor_of_entry_elsewhere(
        &self,
        entry: EntryRef<'_>,
        except: Option<i64>,
    ) -> Result<Option<String>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUTH_COLUMNS} FROM staff_users WHERE source = $1 AND dn IS NOT NULL \
             AND directory_disabled = 1 ORDER BY id"
        )))
        .bind(SOURCE_DIRECTORY)
        .fetch_all(&self.pool)
        .await
        .context("reading earlier accounts of a directory entry")?;
        for row in &rows {
            let user = staff_auth(row)?;
            if Some(user.id) != except
                && user.has_second_factor()
                && entry.is(user.dn.as_deref(), user.entry_id.as_deref())
            {
                return Ok(Some(user.name));
            }
        }
        Ok(None)
    }

    /// Every enabled staff member from the directory (the re-check's list).
    pub async fn directory_staff(&self) -> Result<Vec<StaffAuth>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUTH_COLUMNS} FROM staff_users WHERE source = $1 AND enabled = 1 ORDER BY id"
        )))
        .bind(SOURCE_DIRECTORY)
        .fetch_all(&self.pool)
        .await
        .context("listing directory staff")?;
        rows.iter().map(staff_auth).collect()
    }

    /// Failed sign-ins of user `id` from `source` at or after `since`, read outside any transaction (a
    /// first look before asking the directory; the judgement counts again under the row's lock).
    pub async fn staff_signin_failures_now(
        &self,
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
        .fetch_one(&self.pool)
        .await
        .context("counting failed sign-ins")?;
        get(&row, "n")
    }

    /// [`Tx::staff_second_factor_failures`] outside any transaction (the first look before a bind).
    pub async fn staff_second_factor_failures_now(&self, id: i64, since: UnixTime) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM staff_signin_failures \
             WHERE user_id = $1 AND password_ok = 1 AND at >= $2",
        )
        .bind(id)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .context("counting failed second factors")?;
        get(&row, "n")
    }

    /// Wrong passwords given for `name` at or after `since`, from every address: those of the account
    /// `account` (failures without the right password) and those of the name before any account held
    /// it. What `[ldap] max_failed_binds` caps.
    pub async fn wrong_passwords_of(
        &self,
        account: Option<i64>,
        name: &str,
        since: UnixTime,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM staff_signin_failures \
                     WHERE user_id = $1 AND password_ok = 0 AND at >= $3) \
                  + (SELECT COUNT(*) FROM directory_signin_failures WHERE name = $2 AND at >= $3) AS n",
        )
        .bind(account)
        .bind(name)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .context("counting wrong passwords")?;
        get(&row, "n")
    }

    /// Refused directory sign-ins of `name`, a name no account holds, from `source` at or after `since`.
    pub async fn directory_signin_failures(
        &self,
        name: &str,
        source: &str,
        since: UnixTime,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM directory_signin_failures \
             WHERE name = $1 AND source = $2 AND at >= $3",
        )
        .bind(name)
        .bind(source)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .context("counting refused directory sign-ins")?;
        get(&row, "n")
    }

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

    /// The enabled user whose unexpired enrollment token hashes to `token_hash`.
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
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, name, role, enabled, created_at, {ENROLLED} AS enrolled FROM staff_users ORDER BY name",
        )))
        .fetch_all(&self.pool)
        .await
        .context("listing staff users")?;
        rows.iter().map(staff).collect()
    }

    pub async fn require_staff_user(&self, name: &str) -> Result<StaffUser> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, name, role, enabled, created_at, {ENROLLED} AS enrolled FROM staff_users WHERE name = $1",
        )))
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

    /// Finishes enrollment: the password hash (none for a directory user, whose password the directory
    /// checks) and first TOTP step are set and the token is voided, if the token is still the one given
    /// (false when it was used meanwhile).
    pub async fn finish_staff_enrollment(
        &mut self,
        id: i64,
        token_hash: &str,
        password_hash: Option<&str>,
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
        password_hash: Option<&str>,
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

    /// Replaces a user's passkeys (webauthn-rs records as a JSON array) if they are still `before` (as
    /// read when the change was made); false when they changed meanwhile, and nothing was written: a
    /// change made from a stale copy would undo the other (a removed passkey would come back).
    pub async fn set_staff_passkeys(
        &mut self,
        id: i64,
        before: Option<&str>,
        passkeys: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE staff_users SET passkeys = $1 \
             WHERE id = $2 AND COALESCE(passkeys, '') = COALESCE($3, '')",
        )
        .bind(passkeys)
        .bind(id)
        .bind(before)
        .execute(&mut *self.tx)
        .await
        .context("storing passkeys")?;
        Ok(done.rows_affected() == 1)
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
    /// Whether the account, as held, exists and is enabled.
    pub async fn hold_staff_user(&mut self, id: i64) -> Result<bool> {
        let row =
            sqlx::query("UPDATE staff_users SET enabled = enabled WHERE id = $1 RETURNING enabled")
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await
                .context("holding a staff user for a sign-in")?;
        row.map(|r| get::<i64>(&r, "enabled").map(|e| e != 0))
            .transpose()
            .map(|e| e.unwrap_or(false))
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

    /// Failed sign-ins of user `id` that had the right password, from any source, at or after `since`.
    pub async fn staff_second_factor_failures(&mut self, id: i64, since: UnixTime) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM staff_signin_failures \
             WHERE user_id = $1 AND password_ok = 1 AND at >= $2",
        )
        .bind(id)
        .bind(since)
        .fetch_one(&mut *self.tx)
        .await
        .context("counting failed second factors")?;
        get(&row, "n")
    }

    /// Records a failed sign-in of user `id` from `source` at `at` (`password_ok`: it had the right
    /// password), and forgets every failure (of anyone) from before `forget_before`: rows outside the
    /// window count for nothing.
    pub async fn add_staff_signin_failure(
        &mut self,
        id: i64,
        source: &str,
        at: UnixTime,
        forget_before: UnixTime,
        password_ok: bool,
    ) -> Result<()> {
        sqlx::query("DELETE FROM staff_signin_failures WHERE at < $1")
            .bind(forget_before)
            .execute(&mut *self.tx)
            .await
            .context("forgetting old failed sign-ins")?;
        sqlx::query(
            "INSERT INTO staff_signin_failures (user_id, source, at, password_ok) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(source)
        .bind(at)
        .bind(i64::from(password_ok))
        .execute(&mut *self.tx)
        .await
        .context("recording a failed sign-in")?;
        Ok(())
    }

    /// Records a refused directory sign-in of `name` (no account) from `source` at `at`, and forgets
    /// every such refusal from before `forget_before`.
    pub async fn add_directory_signin_failure(
        &mut self,
        name: &str,
        source: &str,
        at: UnixTime,
        forget_before: UnixTime,
    ) -> Result<()> {
        sqlx::query("DELETE FROM directory_signin_failures WHERE at < $1")
            .bind(forget_before)
            .execute(&mut *self.tx)
            .await
            .context("forgetting old refused directory sign-ins")?;
        sqlx::query("INSERT INTO directory_signin_failures (name, source, at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(source)
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .context("recording a refused directory sign-in")?;
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

    /// Adds or refreshes a staff member the directory vouched for (right password, a mapped group): their
    /// standing and entry as the directory says now, enabled unless an administrator disabled it.
    /// Returns the id and whether the row is new. A local account of the same name is never taken over,
    /// and a directory entry is one account: a second name for an entry another account already has (an
    /// entry with two `uid` values, or a filter matching two attributes) is refused (`Conflict`), so one
    /// person cannot give both approvals of four eyes.
    pub async fn upsert_directory_staff(
        &mut self,
        name: &str,
        standing: &DirectoryStanding,
        entry: EntryRef<'_>,
        now: UnixTime,
    ) -> Result<(i64, bool)> {
        let dn = entry.dn;
        let zones = standing.zones.join(",");
        let row = sqlx::query("SELECT id, source, entry_id FROM staff_users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await
            .context("reading a directory user")?;
        let id = match &row {
            Some(row) => Some(get::<i64>(row, "id")?),
            None => None,
        };
        if let Some(owner) = self.directory_account_of(entry, id).await? {
            return Err(StoreError::Conflict(format!(
                "the directory entry {dn} signs in as {owner}, not as {name}"
            )));
        }
        if let (Some(row), Some(id)) = (row, id) {
            if get::<String>(&row, "source")? != SOURCE_DIRECTORY {
                return Err(StoreError::Conflict(format!(
                    "{name} is a local account; the directory does not sign it in"
                )));
            }
            // The name now finds another entry than the one the account was made for (its person
            // left, the name went to someone else): the account, its approvals and its factors are not
            // the newcomer's.
            let stored: Option<String> = get(&row, "entry_id")?;
            if let (Some(stored), Some(found)) = (
                stored.as_deref().filter(|i| !i.is_empty()),
                entry.id.filter(|i| !i.is_empty()),
            ) && !stored.eq_ignore_ascii_case(found)
            {
                return Err(StoreError::Conflict(format!(
                    "{name} now names another directory entry than its account's"
                )));
            }
            // Enabled again only when the directory was what disabled it: an administrator's
            // `user disable` holds whatever the directory says.
            sqlx::query(
                "UPDATE staff_users SET role = $1, dn = $2, zones = $3, zones_only = $4, \
                 enabled = CASE WHEN directory_disabled = 1 THEN 1 ELSE enabled END, \
                 directory_disabled = 0, entry_id = $6 WHERE id = $5",
            )
            .bind(standing.role.to_string())
            .bind(dn)
            .bind(&zones)
            .bind(i64::from(standing.zones_only))
            .bind(id)
            .bind(entry.id)
            .execute(&mut *self.tx)
            .await
            .context("refreshing a directory user")?;
            return Ok((id, false));
        }
        let row = sqlx::query(
            "INSERT INTO staff_users (name, role, enabled, source, dn, zones, zones_only, created_at, \
             entry_id) VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(name)
        .bind(standing.role.to_string())
        .bind(SOURCE_DIRECTORY)
        .bind(dn)
        .bind(&zones)
        .bind(i64::from(standing.zones_only))
        .bind(now)
        .bind(entry.id)
        .fetch_one(&mut *self.tx)
        .await
        .context("adding a directory user")?;
        Ok((get(&row, "id")?, true))
    }

    /// [`Store::directory_account_of`], inside this transaction.
    pub async fn directory_account_of(
        &mut self,
        entry: EntryRef<'_>,
        except: Option<i64>,
    ) -> Result<Option<String>> {
        account_of_entry(&mut *self.tx, entry, except).await
    }

    /// [`Store::staff_auth`], read inside this transaction (what a decision re-reads of the approvers
    /// before it).
    pub async fn staff_auth(&mut self, name: &str) -> Result<Option<StaffAuth>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUTH_COLUMNS} FROM staff_users WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await
        .context("reading a staff user's standing")?;
        row.as_ref().map(staff_auth).transpose()
    }

    /// The directory entry of staff account `name`: its DN and stable id (None: a local account, or no
    /// such account).
    pub async fn staff_entry(&mut self, name: &str) -> Result<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT dn, entry_id FROM staff_users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await
            .context("reading a staff account's directory entry")?;
        Ok(match row {
            Some(row) => get::<Option<String>>(&row, "dn")?
                .map(|dn| Ok::<_, StoreError>((dn, get(&row, "entry_id")?)))
                .transpose()?,
            None => None,
        })
    }

    /// Opens an enrollment (second factor only) for a directory user who has none: the link's token
    /// hash and expiry. False when the user has a second factor or an open enrollment meanwhile.
    pub async fn open_directory_enrollment(
        &mut self,
        id: i64,
        token_hash: &str,
        expires_at: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE staff_users SET enroll_token_hash = $1, enroll_expires_at = $2, totp_secret = NULL \
             WHERE id = $3 AND source = $4 AND passkeys IS NULL \
             AND (totp_secret IS NULL OR enroll_token_hash IS NOT NULL)",
        )
        .bind(token_hash)
        .bind(expires_at)
        .bind(id)
        .bind(SOURCE_DIRECTORY)
        .execute(&mut *self.tx)
        .await
        .context("opening a directory user's enrollment")?;
        Ok(done.rows_affected() == 1)
    }

    /// What the directory says of a directory user now (the re-check): role and zones, or disabled (and
    /// marked as disabled by the directory, which may enable it again at a sign-in).
    /// Records where a directory account's entry is now (`dn`) and its stable id: an entry moved or
    /// renamed keeps its account, and the account follows it.
    pub async fn set_staff_entry(
        &mut self,
        id: i64,
        dn: &str,
        entry_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE staff_users SET dn = $1, entry_id = COALESCE($2, entry_id) WHERE id = $3",
        )
        .bind(dn)
        .bind(entry_id)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("recording a directory account's entry")?;
        Ok(())
    }

    /// Sets what the directory says of directory account `id`: its role and zones, or (`None`) that it
    /// lost its access. `false` when nothing changed: with `None`, an account already disabled.
    pub async fn set_directory_standing(
        &mut self,
        id: i64,
        standing: Option<&DirectoryStanding>,
    ) -> Result<bool> {
        let changed = match standing {
            Some(standing) => sqlx::query(
                "UPDATE staff_users SET role = $1, zones = $2, zones_only = $3 WHERE id = $4",
            )
            .bind(standing.role.to_string())
            .bind(standing.zones.join(","))
            .bind(i64::from(standing.zones_only))
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .context("updating a directory user")?,
            // Only an account still enabled: one an administrator disabled meanwhile (after the
            // re-check read its list) stays the administrator's, or the directory's mark would let
            // its next directory sign-in enable it again.
            None => sqlx::query(
                "UPDATE staff_users SET enabled = 0, directory_disabled = 1, \
                 enroll_token_hash = NULL, enroll_expires_at = NULL WHERE id = $1 AND enabled = 1",
            )
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .context("marking a directory user disabled by the directory")?,
        };
        Ok(changed.rows_affected() > 0)
    }

    /// Disables a user and voids any pending enrollment token. This is an administrator's disable, and
    /// it clears `directory_disabled`: a directory sign-in re-enables only an account the directory
    /// itself disabled, so an account the directory had disabled first and an administrator disabled
    /// after stays disabled when the directory lets it back in. The directory's own disable marks the
    /// flag again after this.
    pub async fn disable_staff_user(&mut self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE staff_users SET enabled = 0, directory_disabled = 0, enroll_token_hash = NULL, \
             enroll_expires_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .context("disabling a staff user")?;
        Ok(())
    }
}
