//! Vendors, their SSH keys, TOTP state (enrolled or waiting for the vendor to enrol at their next login;
//! migration 0012) and login failures, and vendors that a directory sync owns (`source = 'ldap'`).

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::{Context, Result, Store, StoreError, Tx, get};
use crate::model::{UnixTime, Vendor, VendorKey};

pub(super) const VENDOR_COLUMNS: &str = "id, name, org, enabled, locked_until, created_at";

pub(super) fn vendor(row: &AnyRow) -> Result<Vendor> {
    Ok(Vendor {
        id: get(row, "id")?,
        name: get(row, "name")?,
        org: get(row, "org")?,
        enabled: get::<i64>(row, "enabled")? != 0,
        locked_until: get(row, "locked_until")?,
        created_at: get(row, "created_at")?,
    })
}

fn vendor_key(row: &AnyRow) -> Result<VendorKey> {
    Ok(VendorKey {
        id: get(row, "id")?,
        vendor_id: get(row, "vendor_id")?,
        public_key: get(row, "public_key")?,
        fingerprint: get(row, "fingerprint")?,
        comment: get(row, "comment")?,
        added_at: get(row, "added_at")?,
    })
}

/// The outcome of recording a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    /// Failures within the window, this one included.
    pub recent: i64,
    /// Set when this failure locked the vendor.
    pub locked_until: Option<UnixTime>,
}

/// A vendor's second factor as stored.
#[derive(Clone)]
pub struct VendorTotp {
    /// Sealed seed (`vendor-totp:NAME`); a placeholder nobody has seen while not `enrolled`.
    pub sealed: Vec<u8>,
    pub last_step: Option<i64>,
    /// False: the vendor enrols a TOTP app at their next key login.
    pub enrolled: bool,
}

impl std::fmt::Debug for VendorTotp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorTotp")
            .field("enrolled", &self.enrolled)
            .finish_non_exhaustive()
    }
}

/// A vendor the directory sync owns, as stored.
#[derive(Debug, Clone)]
pub struct DirectoryVendor {
    pub vendor: Vendor,
    pub dn: String,
    /// The entry's stable id (`entryUUID`, or `objectGUID` as hex), once the sync has read it.
    pub entry_id: Option<String>,
    /// `SHA256:` fingerprints of its keys.
    pub keys: Vec<String>,
}

impl Store {
    /// The directory entry (DN) of vendor `id` when the directory sync owns it (`source = 'ldap'`).
    pub async fn vendor_directory_dn(&self, id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT dn FROM vendors WHERE id = $1 AND source = 'ldap'")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a vendor's source")?;
        Ok(match row {
            Some(r) => Some(get::<Option<String>>(&r, "dn")?.unwrap_or_default()),
            None => None,
        })
    }

    /// Every vendor the directory sync owns, with its keys.
    pub async fn directory_vendors(&self) -> Result<Vec<DirectoryVendor>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VENDOR_COLUMNS}, dn, entry_id FROM vendors WHERE source = 'ldap' ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .context("listing directory vendors")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let v = vendor(row)?;
            let keys = self
                .vendor_keys(v.id)
                .await?
                .into_iter()
                .map(|k| k.fingerprint)
                .collect();
            out.push(DirectoryVendor {
                dn: get::<Option<String>>(row, "dn")?.unwrap_or_default(),
                entry_id: get(row, "entry_id")?,
                vendor: v,
                keys,
            });
        }
        Ok(out)
    }

    /// The vendor's second factor: seed, last accepted step, and whether it is enrolled.
    pub async fn vendor_second_factor(&self, vendor_id: i64) -> Result<VendorTotp> {
        let row = sqlx::query(
            "SELECT totp_secret, totp_last_step, totp_enrolled FROM vendors WHERE id = $1",
        )
        .bind(vendor_id)
        .fetch_one(&self.pool)
        .await
        .context("reading a vendor's TOTP state")?;
        Ok(VendorTotp {
            sealed: get(&row, "totp_secret")?,
            last_step: get(&row, "totp_last_step")?,
            enrolled: get::<i64>(&row, "totp_enrolled")? != 0,
        })
    }

    /// Vendor `vendor_id`'s passkeys as stored (webauthn-rs records, a JSON array), if any.
    pub async fn vendor_passkeys(&self, vendor_id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT passkeys FROM vendors WHERE id = $1")
            .bind(vendor_id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a vendor's passkeys")?;
        match row {
            Some(r) => get(&r, "passkeys"),
            None => Ok(None),
        }
    }

    pub async fn vendors(&self) -> Result<Vec<Vendor>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VENDOR_COLUMNS} FROM vendors ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .context("listing vendors")?;
        rows.iter().map(vendor).collect()
    }

    pub async fn vendor(&self, name: &str) -> Result<Option<Vendor>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VENDOR_COLUMNS} FROM vendors WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .context("reading a vendor")?;
        row.as_ref().map(vendor).transpose()
    }

    pub async fn require_vendor(&self, name: &str) -> Result<Vendor> {
        self.vendor(name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "vendor",
                name: name.to_owned(),
            })
    }

    pub async fn vendor_keys(&self, vendor_id: i64) -> Result<Vec<VendorKey>> {
        let rows = sqlx::query(
            "SELECT id, vendor_id, public_key, fingerprint, comment, added_at FROM vendor_keys \
             WHERE vendor_id = $1 ORDER BY id",
        )
        .bind(vendor_id)
        .fetch_all(&self.pool)
        .await
        .context("listing vendor keys")?;
        rows.iter().map(vendor_key).collect()
    }

    /// The vendor a key (by `SHA256:` fingerprint) belongs to, if any.
    pub async fn vendor_by_key(&self, fingerprint: &str) -> Result<Option<Vendor>> {
        let row = sqlx::query(
            "SELECT v.id, v.name, v.org, v.enabled, v.locked_until, v.created_at \
             FROM vendors v JOIN vendor_keys k ON k.vendor_id = v.id WHERE k.fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await
        .context("looking up a vendor key")?;
        row.as_ref().map(vendor).transpose()
    }

    /// The vendors the keys among `fingerprints` belong to, as `(fingerprint, vendor)`; keys no vendor
    /// has are missing. One query per 500 keys, for the watcher's re-check of every signed-in login.
    pub async fn vendors_by_keys(&self, fingerprints: &[String]) -> Result<Vec<(String, Vendor)>> {
        let mut out = Vec::with_capacity(fingerprints.len());
        for chunk in fingerprints.chunks(500) {
            let placeholders = super::placeholders(chunk.len());
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "SELECT k.fingerprint, v.id, v.name, v.org, v.enabled, v.locked_until, v.created_at \
                 FROM vendors v JOIN vendor_keys k ON k.vendor_id = v.id WHERE k.fingerprint IN ({placeholders})"
            )));
            for fp in chunk {
                query = query.bind(fp.as_str());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .context("re-reading vendor keys")?;
            for row in &rows {
                out.push((get(row, "fingerprint")?, vendor(row)?));
            }
        }
        Ok(out)
    }

    /// The sealed TOTP seed and the last accepted time step.
    pub async fn vendor_totp(&self, vendor_id: i64) -> Result<(Vec<u8>, Option<i64>)> {
        let row = sqlx::query("SELECT totp_secret, totp_last_step FROM vendors WHERE id = $1")
            .bind(vendor_id)
            .fetch_one(&self.pool)
            .await
            .context("reading a vendor's TOTP state")?;
        Ok((get(&row, "totp_secret")?, get(&row, "totp_last_step")?))
    }
}

impl Tx {
    pub async fn insert_vendor(
        &mut self,
        name: &str,
        org: &str,
        sealed_totp: &[u8],
        now: UnixTime,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO vendors (name, org, totp_secret, enabled, created_at) \
             VALUES ($1, $2, $3, 1, $4) RETURNING id",
        )
        .bind(name)
        .bind(org)
        .bind(sealed_totp)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("vendor {name} already exists"))
            }
            source => StoreError::Database {
                context: "adding a vendor",
                source,
            },
        })?;
        get(&row, "id")
    }

    pub async fn insert_vendor_key(
        &mut self,
        vendor_id: i64,
        public_key: &str,
        fingerprint: &str,
        comment: &str,
        now: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO vendor_keys (vendor_id, public_key, fingerprint, comment, added_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(vendor_id)
        .bind(public_key)
        .bind(fingerprint)
        .bind(comment)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(format!(
                "key {fingerprint} is already registered (a key belongs to one vendor)"
            )),
            source => StoreError::Database {
                context: "adding a vendor key",
                source,
            },
        })?;
        Ok(())
    }

    /// Vendor `vendor_id`'s passkeys as this transaction sees them (after [`Tx::hold_vendor`]: as no
    /// one else will change them before it ends).
    pub async fn vendor_passkeys(&mut self, vendor_id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT passkeys FROM vendors WHERE id = $1")
            .bind(vendor_id)
            .fetch_optional(&mut *self.tx)
            .await
            .context("reading a vendor's passkeys")?;
        match row {
            Some(r) => get(&r, "passkeys"),
            None => Ok(None),
        }
    }

    /// Replaces vendor `vendor_id`'s passkeys (`None`: none).
    pub async fn set_vendor_passkeys(
        &mut self,
        vendor_id: i64,
        passkeys: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE vendors SET passkeys = $1 WHERE id = $2")
            .bind(passkeys)
            .bind(vendor_id)
            .execute(&mut *self.tx)
            .await
            .context("storing a vendor's passkeys")?;
        Ok(())
    }

    /// Makes the vendor enrol a TOTP app at their next key login: `placeholder` (a sealed seed nobody
    /// saw) replaces the old seed, whose codes stop working at once.
    pub async fn reset_vendor_totp(&mut self, vendor_id: i64, placeholder: &[u8]) -> Result<()> {
        sqlx::query(
            "UPDATE vendors SET totp_enrolled = 0, totp_secret = $1, totp_last_step = NULL WHERE id = $2",
        )
        .bind(placeholder)
        .bind(vendor_id)
        .execute(&mut *self.tx)
        .await
        .context("resetting a vendor's TOTP")?;
        Ok(())
    }

    /// Finishes a vendor's own enrollment: the seed they confirmed and the step of their last code.
    /// False when the vendor was enrolled meanwhile (another connection finished first).
    pub async fn enroll_vendor_totp(
        &mut self,
        vendor_id: i64,
        sealed: &[u8],
        last_step: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE vendors SET totp_enrolled = 1, totp_secret = $1, totp_last_step = $2 \
             WHERE id = $3 AND totp_enrolled = 0",
        )
        .bind(sealed)
        .bind(last_step)
        .bind(vendor_id)
        .execute(&mut *self.tx)
        .await
        .context("enrolling a vendor's TOTP")?;
        Ok(done.rows_affected() == 1)
    }

    /// The directory entry of vendor `name` (None: a vendor added with `vendor add`, or no such vendor).
    pub async fn vendor_entry(&mut self, name: &str) -> Result<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT dn, entry_id FROM vendors WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await
            .context("reading a vendor's directory entry")?;
        Ok(match row {
            Some(row) => get::<Option<String>>(&row, "dn")?
                .map(|dn| Ok::<_, StoreError>((dn, get(&row, "entry_id")?)))
                .transpose()?,
            None => None,
        })
    }

    /// Marks a vendor as owned by the directory sync (entry `dn`).
    pub async fn set_vendor_directory(
        &mut self,
        vendor_id: i64,
        dn: &str,
        entry_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE vendors SET source = 'ldap', dn = $1, entry_id = $2 WHERE id = $3")
            .bind(dn)
            .bind(entry_id)
            .bind(vendor_id)
            .execute(&mut *self.tx)
            .await
            .context("marking a directory vendor")?;
        Ok(())
    }

    /// Sets a vendor's organisation (a directory vendor's entry moved to another OU).
    pub async fn set_vendor_org(&mut self, vendor_id: i64, org: &str) -> Result<()> {
        sqlx::query("UPDATE vendors SET org = $1 WHERE id = $2")
            .bind(org)
            .bind(vendor_id)
            .execute(&mut *self.tx)
            .await
            .context("changing a vendor's organisation")?;
        Ok(())
    }

    /// Makes concurrent judgements of one vendor's login queue behind this transaction (see
    /// `hold_staff_user`); whether the vendor, as held, exists and is enabled.
    pub async fn hold_vendor(&mut self, vendor_id: i64) -> Result<bool> {
        let row =
            sqlx::query("UPDATE vendors SET enabled = enabled WHERE id = $1 RETURNING enabled")
                .bind(vendor_id)
                .fetch_optional(&mut *self.tx)
                .await
                .context("holding a vendor for a login")?;
        row.map(|r| get::<i64>(&r, "enabled").map(|e| e != 0))
            .transpose()
            .map(|e| e.unwrap_or(false))
    }

    /// The vendor who holds the key `fingerprint`, read inside this transaction.
    pub async fn vendor_of_key(&mut self, fingerprint: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT vendor_id FROM vendor_keys WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(&mut *self.tx)
            .await
            .context("reading a key's vendor")?;
        row.map(|r| get(&r, "vendor_id")).transpose()
    }

    /// Ends the vendor's lock and forgets their failed logins; the lock it ended, if one held at `now`.
    pub async fn unlock_vendor(
        &mut self,
        vendor_id: i64,
        now: UnixTime,
    ) -> Result<Option<UnixTime>> {
        // A login judged meanwhile waits for this transaction, so the lock read is the one ended.
        self.hold_vendor(vendor_id).await?;
        let was = self
            .vendor_locked_until(vendor_id)
            .await?
            .filter(|&until| until > now);
        sqlx::query("UPDATE vendors SET locked_until = NULL WHERE id = $1")
            .bind(vendor_id)
            .execute(&mut *self.tx)
            .await
            .context("unlocking a vendor")?;
        self.clear_login_failures(vendor_id).await?;
        Ok(was)
    }

    /// The vendor's lock, read inside this transaction.
    pub async fn vendor_locked_until(&mut self, vendor_id: i64) -> Result<Option<UnixTime>> {
        let row = sqlx::query("SELECT locked_until FROM vendors WHERE id = $1")
            .bind(vendor_id)
            .fetch_one(&mut *self.tx)
            .await
            .context("reading a vendor's lock")?;
        get(&row, "locked_until")
    }

    /// Removes a key; false when the vendor had no such key.
    pub async fn delete_vendor_key(&mut self, vendor_id: i64, fingerprint: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM vendor_keys WHERE vendor_id = $1 AND fingerprint = $2")
            .bind(vendor_id)
            .bind(fingerprint)
            .execute(&mut *self.tx)
            .await
            .context("removing a vendor key")?;
        Ok(done.rows_affected() > 0)
    }

    /// Forgets which directory entry a directory vendor is tied to: its `entry_id` becomes `''`, and the
    /// sync ties it again to the entry at its DN, and only that one. Returns that DN; `None` for a
    /// local vendor.
    pub async fn untie_vendor_entry(&mut self, vendor_id: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE vendors SET entry_id = '' WHERE id = $1 AND source = 'ldap' RETURNING dn",
        )
        .bind(vendor_id)
        .fetch_optional(&mut *self.tx)
        .await
        .context("untying a directory vendor from its entry")?;
        row.map(|r| get::<Option<String>>(&r, "dn").map(Option::unwrap_or_default))
            .transpose()
    }

    pub async fn set_vendor_enabled(&mut self, vendor_id: i64, enabled: bool) -> Result<()> {
        sqlx::query("UPDATE vendors SET enabled = $1 WHERE id = $2")
            .bind(i64::from(enabled))
            .bind(vendor_id)
            .execute(&mut *self.tx)
            .await
            .context("changing a vendor")?;
        Ok(())
    }

    /// Records TOTP time step `step` as used. False when a step at or after it was already accepted:
    /// that code is a replay. The check and the write are one statement, so two nodes cannot both accept it.
    pub async fn accept_totp_step(&mut self, vendor_id: i64, step: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE vendors SET totp_last_step = $1 \
             WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(vendor_id)
        .execute(&mut *self.tx)
        .await
        .context("recording a TOTP step")?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed login; locks the vendor until `now + lockout` when `max` failures fell within
    /// `window` seconds.
    pub async fn record_login_failure(
        &mut self,
        vendor_id: i64,
        now: UnixTime,
        window: i64,
        max: i64,
        lockout: i64,
    ) -> Result<LoginFailure> {
        sqlx::query("INSERT INTO auth_failures (vendor_id, at) VALUES ($1, $2)")
            .bind(vendor_id)
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .context("recording a login failure")?;
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM auth_failures WHERE vendor_id = $1 AND at > $2")
                .bind(vendor_id)
                .bind(now - window)
                .fetch_one(&mut *self.tx)
                .await
                .context("counting login failures")?;
        let recent: i64 = get(&row, "n")?;
        let mut locked_until = None;
        if recent >= max {
            let until = now + lockout;
            sqlx::query("UPDATE vendors SET locked_until = $1 WHERE id = $2")
                .bind(until)
                .bind(vendor_id)
                .execute(&mut *self.tx)
                .await
                .context("locking a vendor")?;
            // Start a fresh count once the lock ends.
            sqlx::query("DELETE FROM auth_failures WHERE vendor_id = $1")
                .bind(vendor_id)
                .execute(&mut *self.tx)
                .await
                .context("resetting login failures")?;
            locked_until = Some(until);
        }
        Ok(LoginFailure {
            recent,
            locked_until,
        })
    }

    /// Forgets failures after a successful login.
    pub async fn clear_login_failures(&mut self, vendor_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM auth_failures WHERE vendor_id = $1")
            .bind(vendor_id)
            .execute(&mut *self.tx)
            .await
            .context("clearing login failures")?;
        Ok(())
    }
}
