//! A throwaway PostgreSQL server for the store suite, started once per test process (recipe in
//! TEST-HARNESS.md), each test getting its own fresh database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, guarded_removing, missing};

struct Server {
    port: u16,
    /// The watchdog shell; it ends postgres when this process exits, then removes its data directory
    /// (held in a static, the server is never dropped).
    _child: std::process::Child,
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();

fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (initdb refuses root); `guard`:
/// under a watchdog that ends it with this process and then removes that directory.
fn pg_command(bin: &Path, args: &[&str], guard: Option<&Path>) -> Command {
    let program = bin.to_string_lossy().into_owned();
    let mut full: Vec<&str> = Vec::new();
    if is_root() {
        full.extend(["runuser", "-u", "postgres", "--"]);
    }
    full.push(&program);
    full.extend_from_slice(args);
    if let Some(dir) = guard {
        guarded_removing(full[0], &full[1..], dir)
    } else {
        let mut c = Command::new(full[0]);
        c.args(&full[1..]);
        c
    }
}

fn start() -> Option<Server> {
    let Some(bin) = bin_dir() else {
        missing("PostgreSQL server (postgresql-15)");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("chaperone-pg")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("pg data dir");
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown of the PostgreSQL data dir failed");
    }
    let data_s = data.to_string_lossy().into_owned();
    let out = pg_command(
        &bin.join("initdb"),
        &[
            "-D",
            &data_s,
            "-U",
            "bastion",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ],
        None,
    )
    .output()
    .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From here its watchdog removes it (held in a static, the server is never dropped); before, a
    // failed step drops the TempDir, which removes it.
    let dir = dir.keep();
    let port = free_port();
    let port_s = port.to_string();
    let child = pg_command(
        &bin.join("postgres"),
        &[
            "-D",
            &data_s,
            "-p",
            &port_s,
            "-k",
            &data_s,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        Some(&dir),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Server {
        port,
        _child: child,
    })
}

/// A URL to a brand-new database, or `None` when PostgreSQL is missing (and not required).
pub async fn fresh_database() -> Option<String> {
    let server = SERVER.get_or_init(start).as_ref()?;
    let name = format!("t{}", chaperone::secrets::random_hex(6));
    let admin = format!("postgres://bastion@127.0.0.1:{}/postgres", server.port);
    // The server may still be finishing start-up: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match create_database(&admin, &name).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for PostgreSQL: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot create a PostgreSQL database: {e}"),
        }
    }
    Some(format!(
        "postgres://bastion@127.0.0.1:{}/{name}",
        server.port
    ))
}

async fn create_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await
}
