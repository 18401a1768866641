//! Assets (devices), their services, pinned host keys and injected credentials.
//!
//! What services an asset may list is checked here, on every write ([`check_services`]), so no writer
//! (the command line, the demo, anything later) can store an asset that breaks it: names are unique, at
//! most one service is of kind `ssh`, and no two services share a port (a `tcp` service on the `ssh`
//! service's port would be an unrecorded tunnel to the device's sshd). Nor may an asset list a `tcp`
//! service where another asset with the same address lists an `ssh` one, or the other way round
//! ([`Tx::endpoint_taken`]): one device entered twice, its sshd as one asset's `ssh` and another's
//! `tcp`, would be the same unrecorded tunnel. Databases written before these rules may still hold
//! such services; `policy::authorize_tunnel` refuses them ([`Store::ssh_service_at`]). These compare
//! addresses as written; `tunnel::dial` compares where a connection landed, resolved
//! ([`Store::ssh_service_addresses`]).

// Dynamic SQL below only ever interpolates the constant column lists of this module.
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::{Context, Result, Store, StoreError, Tx, get, get_parsed};
use crate::model::{Asset, CredentialKind, Criticality, Service, ServiceKind, UnixTime};

const ASSET_COLUMNS: &str = "id, name, address, zone, purpose, criticality, vendor_org, os, \
     patch_status, host_key, cred_user, cred_kind, created_at";

fn asset(row: &AnyRow, services: Vec<Service>) -> Result<Asset> {
    let cred_kind: Option<String> = get(row, "cred_kind")?;
    Ok(Asset {
        id: get(row, "id")?,
        name: get(row, "name")?,
        address: get(row, "address")?,
        zone: get(row, "zone")?,
        purpose: get(row, "purpose")?,
        criticality: get_parsed::<Criticality>(row, "criticality")?,
        vendor_org: get(row, "vendor_org")?,
        os: get(row, "os")?,
        patch_status: get(row, "patch_status")?,
        host_key: get(row, "host_key")?,
        credential_user: get(row, "cred_user")?,
        credential_kind: cred_kind
            .map(|k| k.parse::<CredentialKind>().map_err(StoreError::Corrupt))
            .transpose()?,
        services,
        created_at: get(row, "created_at")?,
    })
}

fn service(row: &AnyRow) -> Result<Service> {
    let port: i64 = get(row, "port")?;
    Ok(Service {
        name: get(row, "name")?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt(format!("port {port}")))?,
        kind: get_parsed::<ServiceKind>(row, "kind")?,
    })
}

const SERVICES_OF: &str =
    "SELECT name, port, kind FROM asset_services WHERE asset_id = $1 ORDER BY port, name";

async fn services_on(conn: &mut AnyConnection, asset_id: i64) -> Result<Vec<Service>> {
    let rows = sqlx::query(SERVICES_OF)
        .bind(asset_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing asset services")?;
    rows.iter().map(service).collect()
}

/// The rules for an asset's set of services (see the module doc); the error says which services clash.
fn check_services(services: &[Service]) -> Result<(), String> {
    for (i, s) in services.iter().enumerate() {
        if services[..i].iter().any(|o| o.name == s.name) {
            return Err(format!("service {} is given twice", s.name));
        }
        if let Some(o) = services[..i].iter().find(|o| o.port == s.port) {
            return Err(format!(
                "services {} and {} would share port {}: one port, one service (a second service on a \
                 port reaches whatever listens there unrecorded); remove one or give it its own port",
                o.name, s.name, s.port
            ));
        }
    }
    if services
        .iter()
        .filter(|s| s.kind == ServiceKind::Ssh)
        .count()
        > 1
    {
        return Err("at most one service of kind ssh per asset".into());
    }
    Ok(())
}

/// What `asset add` records.
#[derive(Debug, Clone)]
pub struct NewAsset<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub zone: &'a str,
    pub purpose: &'a str,
    pub criticality: Criticality,
    pub vendor_org: Option<&'a str>,
    pub os: Option<&'a str>,
    pub patch_status: Option<&'a str>,
    pub services: &'a [Service],
}

impl Store {
    async fn services_of(&self, asset_id: i64) -> Result<Vec<Service>> {
        let rows = sqlx::query(SERVICES_OF)
            .bind(asset_id)
            .fetch_all(&self.pool)
            .await
            .context("listing asset services")?;
        rows.iter().map(service).collect()
    }

    pub async fn assets(&self) -> Result<Vec<Asset>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM assets ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .context("listing assets")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let services = self.services_of(get(row, "id")?).await?;
            out.push(asset(row, services)?);
        }
        Ok(out)
    }

    /// Asset `name` with its services, in one query whether it exists or not: a vendor's request or
    /// login for another organisation's asset is refused as one that does not exist, and the time the
    /// lookup takes must not tell the two apart either (a second query for the services of an asset
    /// that exists did: ~0.2 ms on SQLite, a round trip on PostgreSQL).
    pub async fn asset(&self, name: &str) -> Result<Option<Asset>> {
        let columns = ASSET_COLUMNS
            .split(',')
            .map(|c| format!("a.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {columns}, s.name AS service_name, s.port AS service_port, s.kind AS service_kind \
             FROM assets a LEFT JOIN asset_services s ON s.asset_id = a.id \
             WHERE a.name = $1 ORDER BY s.port, s.name"
        )))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .context("reading an asset")?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut services = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(name) = get::<Option<String>>(row, "service_name")? else {
                continue;
            };
            let port: i64 = get(row, "service_port")?;
            services.push(Service {
                name,
                port: u16::try_from(port)
                    .map_err(|_| StoreError::Corrupt(format!("port {port}")))?,
                kind: get_parsed::<ServiceKind>(row, "service_kind")?,
            });
        }
        Ok(Some(asset(first, services)?))
    }

    /// Of the `(asset, service)` pairs `pairs`, those the inventory still lists as they are (name, port,
    /// kind): the authority watcher closes the sessions on the others (a service removed from its asset).
    pub async fn services_present(
        &self,
        pairs: &[(String, Service)],
    ) -> Result<std::collections::HashSet<(String, Service)>> {
        let mut assets: Vec<&str> = pairs.iter().map(|(a, _)| a.as_str()).collect();
        assets.sort_unstable();
        assets.dedup();
        let mut present = std::collections::HashSet::new();
        for chunk in assets.chunks(500) {
            let placeholders = super::placeholders(chunk.len());
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "SELECT a.name AS asset, s.name AS service, s.port AS port, s.kind AS kind \
                 FROM asset_services s JOIN assets a ON a.id = s.asset_id \
                 WHERE a.name IN ({placeholders})"
            )));
            for name in chunk {
                query = query.bind(*name);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .context("re-reading the services of live sessions' assets")?;
            for row in &rows {
                let port: i64 = get(row, "port")?;
                let service = Service {
                    name: get(row, "service")?,
                    port: u16::try_from(port)
                        .map_err(|_| StoreError::Corrupt(format!("port {port}")))?,
                    kind: get_parsed::<ServiceKind>(row, "kind")?,
                };
                present.insert((get(row, "asset")?, service));
            }
        }
        Ok(present)
    }

    pub async fn require_asset(&self, name: &str) -> Result<Asset> {
        self.asset(name).await?.ok_or_else(|| StoreError::NotFound {
            kind: "asset",
            name: name.to_owned(),
        })
    }

    /// Assets whose name or address is `name_or_address` (tunnels may name the device either way).
    pub async fn assets_by_name_or_address(&self, name_or_address: &str) -> Result<Vec<Asset>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM assets WHERE name = $1 OR address = $1 ORDER BY name"
        )))
        .bind(name_or_address)
        .fetch_all(&self.pool)
        .await
        .context("looking up an asset")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let services = self.services_of(get(row, "id")?).await?;
            out.push(asset(row, services)?);
        }
        Ok(out)
    }

    /// Whether any asset whose address is `address` (in any case) lists an `ssh` service on `port`: a
    /// `tcp` tunnel there would reach that sshd unrecorded (see the module doc).
    pub async fn ssh_service_at(&self, address: &str, port: u16) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM asset_services s JOIN assets a ON a.id = s.asset_id \
             WHERE LOWER(a.address) = LOWER($1) AND s.port = $2 AND s.kind = 'ssh'",
        )
        .bind(address)
        .bind(i64::from(port))
        .fetch_one(&self.pool)
        .await
        .context("looking for an ssh service at an endpoint")?;
        Ok(get::<i64>(&row, "n")? > 0)
    }

    /// The addresses, as written, of every asset that lists an `ssh` service on `port` (what a `tcp`
    /// tunnel to that port must not land on, compared once resolved: `tunnel::dial`).
    pub async fn ssh_service_addresses(&self, port: u16) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT a.address AS address FROM asset_services s \
             JOIN assets a ON a.id = s.asset_id WHERE s.port = $1 AND s.kind = 'ssh'",
        )
        .bind(i64::from(port))
        .fetch_all(&self.pool)
        .await
        .context("listing the ssh services on a port")?;
        rows.iter().map(|r| get(r, "address")).collect()
    }

    /// The sealed injected credential of an asset.
    pub async fn asset_credential_secret(&self, asset_id: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT cred_secret FROM assets WHERE id = $1")
            .bind(asset_id)
            .fetch_one(&self.pool)
            .await
            .context("reading an asset credential")?;
        get(&row, "cred_secret")
    }
}

impl Tx {
    /// One asset with its services, read inside this transaction.
    pub async fn asset(&mut self, name: &str) -> Result<Option<Asset>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM assets WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await
        .context("reading an asset")?;
        match row {
            Some(row) => {
                let services = services_on(&mut self.tx, get(&row, "id")?).await?;
                Ok(Some(asset(&row, services)?))
            }
            None => Ok(None),
        }
    }

    /// Adds an asset with its services; refused ([`StoreError::Conflict`]) when the services break
    /// [`check_services`].
    pub async fn insert_asset(&mut self, a: &NewAsset<'_>, now: UnixTime) -> Result<i64> {
        check_services(a.services)
            .map_err(|why| StoreError::Conflict(format!("asset {}: {why}", a.name)))?;
        let row = sqlx::query(
            "INSERT INTO assets (name, address, zone, purpose, criticality, vendor_org, os, patch_status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(a.name)
        .bind(a.address)
        .bind(a.zone)
        .bind(a.purpose)
        .bind(a.criticality.to_string())
        .bind(a.vendor_org)
        .bind(a.os)
        .bind(a.patch_status)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("asset {} already exists", a.name))
            }
            source => StoreError::Database {
                context: "adding an asset",
                source,
            },
        })?;
        let id: i64 = get(&row, "id")?;
        for s in a.services {
            self.endpoint_taken(id, a.address, s).await?;
            self.insert_service_row(id, s).await?;
        }
        Ok(id)
    }

    /// Refuses ([`StoreError::Conflict`]) service `s` of asset `asset_id` at `address` when another
    /// asset with that address lists a service of the other kind on its port (an `ssh` one where `s`
    /// is `tcp`, or a `tcp` one where it is `ssh`).
    async fn endpoint_taken(&mut self, asset_id: i64, address: &str, s: &Service) -> Result<()> {
        let row = sqlx::query(
            "SELECT a.name AS asset, s.name AS service FROM asset_services s \
             JOIN assets a ON a.id = s.asset_id \
             WHERE LOWER(a.address) = LOWER($1) AND s.port = $2 AND a.id <> $3 AND s.kind <> $4 \
             LIMIT 1",
        )
        .bind(address)
        .bind(i64::from(s.port))
        .bind(asset_id)
        .bind(s.kind.to_string())
        .fetch_optional(&mut *self.tx)
        .await
        .context("checking an endpoint")?;
        match row {
            None => Ok(()),
            Some(row) => {
                let (asset, service): (String, String) =
                    (get(&row, "asset")?, get(&row, "service")?);
                Err(StoreError::Conflict(format!(
                    "{address}:{port} is already asset {asset}'s service {service}, of the other kind: \
                     a tcp service where an ssh one listens would reach that sshd unrecorded; give \
                     {name} another port, or remove the other",
                    port = s.port,
                    name = s.name
                )))
            }
        }
    }

    /// Adds a service to an asset; refused ([`StoreError::Conflict`]) when the asset's services with it
    /// would break [`check_services`]. The asset's row is held while they are read, so two additions at
    /// once (PostgreSQL) cannot both pass.
    pub async fn insert_service(&mut self, asset_id: i64, s: &Service) -> Result<()> {
        sqlx::query("UPDATE assets SET name = name WHERE id = $1")
            .bind(asset_id)
            .execute(&mut *self.tx)
            .await
            .context("locking an asset")?;
        let mut all = services_on(&mut self.tx, asset_id).await?;
        all.push(s.clone());
        check_services(&all).map_err(StoreError::Conflict)?;
        let address: String = get(
            &sqlx::query("SELECT address FROM assets WHERE id = $1")
                .bind(asset_id)
                .fetch_one(&mut *self.tx)
                .await
                .context("reading an asset's address")?,
            "address",
        )?;
        self.endpoint_taken(asset_id, &address, s).await?;
        self.insert_service_row(asset_id, s).await
    }

    async fn insert_service_row(&mut self, asset_id: i64, s: &Service) -> Result<()> {
        sqlx::query(
            "INSERT INTO asset_services (asset_id, name, port, kind) VALUES ($1, $2, $3, $4)",
        )
        .bind(asset_id)
        .bind(&s.name)
        .bind(i64::from(s.port))
        .bind(s.kind.to_string())
        .execute(&mut *self.tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("the asset already has a service named {}", s.name))
            }
            source => StoreError::Database {
                context: "adding a service",
                source,
            },
        })?;
        Ok(())
    }

    pub async fn delete_service(&mut self, asset_id: i64, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM asset_services WHERE asset_id = $1 AND name = $2")
            .bind(asset_id)
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .context("removing a service")?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets (or, with `None`, clears) the vendor organisation that maintains asset `asset_id`.
    pub async fn set_asset_vendor_org(&mut self, asset_id: i64, org: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE assets SET vendor_org = $1 WHERE id = $2")
            .bind(org)
            .bind(asset_id)
            .execute(&mut *self.tx)
            .await
            .context("setting an asset's vendor organisation")?;
        Ok(())
    }

    /// Removes an asset. Refused while grants, requests or sessions refer to it (history must survive).
    pub async fn delete_asset(&mut self, asset_id: i64, name: &str) -> Result<()> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM grants WHERE asset_id = $1) \
                  + (SELECT COUNT(*) FROM access_requests WHERE asset_id = $1) \
                  + (SELECT COUNT(*) FROM sessions WHERE asset_id = $1) AS n",
        )
        .bind(asset_id)
        .fetch_one(&mut *self.tx)
        .await
        .context("checking an asset's history")?;
        let n: i64 = get(&row, "n")?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "asset {name} has grants, requests or sessions on record; its history is kept, so it cannot be removed"
            )));
        }
        sqlx::query("DELETE FROM asset_services WHERE asset_id = $1")
            .bind(asset_id)
            .execute(&mut *self.tx)
            .await
            .context("removing an asset's services")?;
        sqlx::query("DELETE FROM assets WHERE id = $1")
            .bind(asset_id)
            .execute(&mut *self.tx)
            .await
            .context("removing an asset")?;
        Ok(())
    }

    pub async fn set_asset_host_key(&mut self, asset_id: i64, host_key: &str) -> Result<()> {
        sqlx::query("UPDATE assets SET host_key = $1 WHERE id = $2")
            .bind(host_key)
            .bind(asset_id)
            .execute(&mut *self.tx)
            .await
            .context("pinning a host key")?;
        Ok(())
    }

    pub async fn set_asset_credential(
        &mut self,
        asset_id: i64,
        user: &str,
        kind: CredentialKind,
        sealed: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE assets SET cred_user = $1, cred_kind = $2, cred_secret = $3 WHERE id = $4",
        )
        .bind(user)
        .bind(kind.to_string())
        .bind(sealed)
        .bind(asset_id)
        .execute(&mut *self.tx)
        .await
        .context("setting an asset credential")?;
        Ok(())
    }
}
