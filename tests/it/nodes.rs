//! Several `chaperone serve` nodes on one PostgreSQL database, with no sticky load balancing in front:
//! a staff member's web session and a passkey ceremony started on one node are honoured on the other,
//! and signing out or answering a ceremony on one node counts on both.

use std::path::{Path, PathBuf};

use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::support::bastion::Bastion;
use crate::support::web::{Answer, Approver, curl, enrollment_token, post_json};
use crate::support::{DataDir, free_port, postgres};

const PASSWORD: &str = "correct horse battery staple";

/// Two nodes sharing a fresh PostgreSQL database, the secrets key and the public address (the second node
/// is a copy of the first one's data dir with its own web port and its own recordings), or `None` when
/// PostgreSQL is missing and not required.
pub(crate) fn two_nodes() -> Option<(Bastion, Bastion, u16, String)> {
    two_nodes_with(&[])
}

/// [`two_nodes`], the second node started with more environment variables.
fn two_nodes_with(env_b: &[(&str, &str)]) -> Option<(Bastion, Bastion, u16, String)> {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(postgres::fresh_database())?;
    let a = on_postgres(&url);
    let port_a = a.fix_web_port();
    let b = DataDir {
        dir: tempfile::tempdir().unwrap(),
    };
    copy_dir(a.path(), b.path());
    let port_b = free_port();
    edit(
        &b.config(),
        &format!("listen = \"127.0.0.1:{port_a}\""),
        &format!("listen = \"127.0.0.1:{port_b}\"\npublic_url = \"https://localhost:{port_a}\""),
    );
    Some((
        Bastion::start(a),
        Bastion::start_with_env(b, env_b),
        port_a,
        url,
    ))
}

/// A data dir whose database is the PostgreSQL database at `url`.
fn on_postgres(url: &str) -> DataDir {
    let data = DataDir::init();
    edit(
        &data.config(),
        "url = \"sqlite://chaperone.db\"",
        &format!("url = \"{url}\""),
    );
    data
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A JSON POST with a cookie jar to `https://localhost:PORT` (the name the passkeys' relying party uses).
fn post(jar: &PathBuf, port: u16, path: &str, body: &serde_json::Value) -> Answer {
    post_json(jar, &format!("https://localhost:{port}{path}"), body)
}

#[test]
fn a_web_session_made_on_one_node_works_on_the_other_and_signing_out_ends_it_on_both() {
    let Some((a, b, _, url)) = two_nodes() else {
        return;
    };
    let mut carol = Approver::enroll(&a, "carol", "approver");
    assert_eq!(carol.get("/api/requests").status, 200);
    // The next request lands on the other node: still signed in, and the CSRF token is the same one.
    carol.via(&b);
    let listed = carol.get("/api/requests");
    assert_eq!(listed.status, 200, "{}", listed.body);
    let revoke = carol.post(
        "/api/grants/999999/revoke",
        serde_json::json!({"reason": "INC-1"}),
    );
    assert_eq!(
        revoke.status, 404,
        "signed in with a valid token: {}",
        revoke.body
    );
    let forged = carol.post_with(
        "/api/grants/999999/revoke",
        serde_json::json!({"reason": "INC-1"}),
        Some("0000"),
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    // Signing out on this node ends the session everywhere.
    let csrf = carol.csrf.clone();
    let out = carol.form("/logout", &[("csrf", &csrf)]);
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(carol.get("/api/requests").status, 401);
    carol.via(&a);
    assert_eq!(carol.get("/api/requests").status, 401);
    // What the database holds is the SHA-256 of the cookie, never the cookie.
    carol.login();
    let jar = std::fs::read_to_string(a.data.path().join("jar-carol")).unwrap();
    let cookie = jar
        .lines()
        .find(|l| l.contains("__Host-chaperone"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap()
        .to_owned();
    assert_eq!(cookie.len(), 64, "{jar}");
    let rows = state_rows(&url, "session");
    let hashed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(cookie.as_bytes()));
    assert!(rows.iter().any(|(key, _)| *key == hashed), "{rows:?}");
    assert!(
        rows.iter()
            .all(|(key, data)| !key.contains(&cookie) && !data.contains(&cookie))
    );
    // Disabling carol (from node B's command line) signs her out on every node at once.
    assert_eq!(carol.get("/api/requests").status, 200);
    b.data.run(&["user", "disable", "carol"]).ok();
    assert_eq!(carol.get("/api/requests").status, 401);
    carol.via(&b);
    assert_eq!(carol.get("/api/requests").status, 401);
    assert!(state_rows(&url, "session").is_empty());
}

/// The stored web sign-in state of `kind`: (token_sha256, data).
fn state_rows(url: &str, kind: &str) -> Vec<(String, String)> {
    use sqlx::{Connection, Row};
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
        sqlx::query("SELECT token_sha256, data FROM web_state WHERE kind = $1")
            .bind(kind)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("token_sha256"), r.get("data")))
            .collect()
    })
}

#[test]
fn a_passkey_ceremony_started_on_one_node_finishes_on_the_other_once() {
    let Some((a, b, port_a, db)) = two_nodes() else {
        return;
    };
    let port_b = b.web_port;
    let token = enrollment_token(&a, "dave", "approver");
    let jar = a.data.path().join("dave-jar");
    // The browser only ever sees the public address (node A's); the load balancer picks the node.
    let origin = Url::parse(&format!("https://localhost:{port_a}")).unwrap();
    let mut key = SoftPasskey::new(true);

    // Enrollment: started on A, answered on B.
    let start = post(
        &jar,
        port_a,
        &format!("/enroll/{token}/passkey/start"),
        &serde_json::json!({}),
    );
    assert_eq!(start.status, 200, "{}", start.body);
    let start = start.json();
    let options: CreationChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    // What the database keeps of the ceremony holds neither its id nor the enrollment link's token.
    let ceremony = start["ceremony"].as_str().unwrap();
    // (An enrollment's ceremony is reached through the link's token: its own pool.)
    let rows = state_rows(&db, "ceremony-link");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(k, d)| !k.contains(ceremony) && !d.contains(ceremony) && !d.contains(&token)),
        "{rows:?}"
    );
    let credential = key.do_registration(origin.clone(), options).unwrap();
    let body = serde_json::json!({"ceremony": start["ceremony"], "password": PASSWORD,
                                  "password2": PASSWORD, "credential": credential});
    let done = post(
        &jar,
        port_b,
        &format!("/enroll/{token}/passkey/finish"),
        &body,
    );
    assert_eq!(done.status, 200, "{}", done.body);

    // A name no account can have is refused before anything is stored.
    let long = post(
        &jar,
        port_a,
        "/login/passkey/start",
        &serde_json::json!({"name": "x".repeat(65)}),
    );
    assert_eq!(long.status, 400, "{}", long.body);
    for kind in ["ceremony", "ceremony-decoy", "ceremony-link"] {
        assert!(state_rows(&db, kind).is_empty(), "{kind}");
    }

    // Sign-in: started on B, answered on A; the session then works on B.
    let start = post(
        &jar,
        port_b,
        "/login/passkey/start",
        &serde_json::json!({"name": "dave"}),
    );
    assert_eq!(start.status, 200, "{}", start.body);
    let start = start.json();
    let options: RequestChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    let assertion = key.do_authentication(origin, options).unwrap();
    let body = serde_json::json!({"ceremony": start["ceremony"], "password": PASSWORD,
                                  "credential": assertion});
    let signed_in = post(&jar, port_a, "/login/passkey/finish", &body);
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let page = curl(
        Some(&jar),
        &[&format!("https://localhost:{port_b}/requests")],
    );
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("dave"), "{}", page.body);

    // The same answer again, on the other node: the ceremony was used up on A.
    let replay = post(&jar, port_b, "/login/passkey/finish", &body);
    assert_eq!(replay.status, 400, "{}", replay.body);
}

/// Commands that change what every running node relies on refuse while one runs on the database:
/// `restore` of a PostgreSQL backup would rewrite every recording's path and append to the live chain
/// (and it writes only into the database it is given, never the backed-up config's), and
/// `secrets rotate` would re-seal every secret under a key the running node does not hold.
#[test]
fn restore_and_secrets_rotate_refuse_while_a_node_runs_on_the_database() {
    use std::process::Command;

    use crate::support::chaperone_bin;

    let Some(url) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(postgres::fresh_database())
    else {
        return;
    };
    let data = on_postgres(&url);
    let b = Bastion::start(data);
    let archive = b.data.path().join("node.backup");
    b.data
        .run(&["backup", "-o", &archive.to_string_lossy()])
        .ok();
    let out = tempfile::tempdir().unwrap();
    let restore = |dir: &str, url: Option<&str>| {
        let mut cmd = Command::new(chaperone_bin());
        cmd.arg("restore")
            .arg(&archive)
            .arg("--dir")
            .arg(out.path().join(dir));
        if let Some(url) = url {
            cmd.args(["--database-url", url]);
        }
        let o = cmd.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let events = |b: &Bastion| {
        b.data
            .run(&["audit", "export", "--format", "jsonl"])
            .ok()
            .stdout()
    };

    // Without a database to restore into: refused, the backed-up config's database untouched.
    let (code, _, stderr) = restore("a", None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
    // Into the database a node runs on: refused, nothing appended.
    let (code, _, stderr) = restore("b", Some(&url));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("chaperone is running on this database"),
        "{stderr}"
    );
    // A newer binary than the node's (here: the database one migration behind this one) refuses
    // before it migrates anything under the running node.
    let sql = |statements: &'static str| {
        let url = url.clone();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                use sqlx::Connection as _;
                sqlx::any::install_default_drivers();
                let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
                let mut applied = 0;
                for statement in statements.split(';').filter(|s| !s.trim().is_empty()) {
                    applied = sqlx::query(statement)
                        .execute(&mut conn)
                        .await
                        .unwrap()
                        .rows_affected();
                }
                applied
            })
    };
    sql(
        "CREATE TABLE newest_migration AS SELECT * FROM _sqlx_migrations \
           WHERE version = (SELECT MAX(version) FROM _sqlx_migrations); \
         DELETE FROM _sqlx_migrations WHERE version IN (SELECT version FROM newest_migration)",
    );
    let rotate = b.data.run(&["secrets", "rotate"]);
    rotate.fails(1);
    assert!(
        rotate.stderr().contains("secrets rotate refused"),
        "{}",
        rotate.stderr()
    );
    assert_eq!(
        sql("SELECT version FROM _sqlx_migrations \
             WHERE version IN (SELECT version FROM newest_migration)"),
        0,
        "the refused command migrated the database"
    );
    // Any command of the newer build, a node's start too (a rolling upgrade's first node), migrates
    // nothing under the running node: refused, saying to stop every node first.
    let listed = b.data.run(&["asset", "list"]);
    listed.fails(1);
    assert!(
        listed.stderr().contains("migrations were not applied")
            && listed.stderr().contains("Stop every node"),
        "{}",
        listed.stderr()
    );
    assert_eq!(
        sql("SELECT version FROM _sqlx_migrations \
             WHERE version IN (SELECT version FROM newest_migration)"),
        0,
        "a refused start migrated the database"
    );
    sql("INSERT INTO _sqlx_migrations SELECT * FROM newest_migration; DROP TABLE newest_migration");
    let audit = events(&b);
    assert!(!audit.contains("\"backup.restore\""), "{audit}");
    assert!(!audit.contains("\"secrets.rotate\""), "{audit}");

    // Stopped (a clean stop says so at once): the database holds the backup's chain, so it restores.
    let data = b.stop();
    let (code, stdout, stderr) = restore("c", Some(&url));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("restored into"), "{stdout}");
    let config = std::fs::read_to_string(out.path().join("c/chaperone.toml")).unwrap();
    assert!(config.contains(&url), "{config}");
    drop(data);
}

/// A database that hangs rather than fails (a lock held by another node's migration, a partition
/// without a reset) does not keep a session open past its grant: time is checked from memory, in a
/// loop of its own, whatever the store's re-reads are waiting for.
#[test]
fn a_grant_ends_on_time_while_the_database_hangs() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use sqlx::Connection as _;

    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(postgres::fresh_database()) else {
        return;
    };
    let data = on_postgres(&url);
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let carol = b.vendor("carol", "Acme Imaging");
    b.grant("carol", "mri-01", "ssh", "10s");
    let granted = Instant::now();
    let child = b
        .ssh(&carol, "carol+mri-01")
        .arg("echo up; sleep 60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    b.live_session_id();
    // Every read of the audit head (the watcher's first step) now waits for this lock.
    let mut lock = rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    });
    let out = child.wait_with_output().unwrap();
    let took = granted.elapsed();
    rt.block_on(async {
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        lock.close().await.unwrap();
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("up"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("access to mri-01 ended"),
        "{stderr}\n{}",
        b.log()
    );
    assert!(took < Duration::from_secs(10 + 4), "closed after {took:?}");
}

/// A node must not run sessions it can no longer hold to the database. Taken for gone by another node
/// (its heartbeat stalled), its session's row is ended there: the node closes
/// the session at its next re-read, and the recording, written here to the end, still proves intact
/// (no other node's sweep of this one's own file). Cut off from the database for `[database] lease`,
/// it closes every session (a revocation made elsewhere would go unseen), and serves again once the
/// database answers.
#[test]
fn a_node_taken_for_gone_or_cut_off_from_its_database_closes_its_sessions() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use sqlx::Connection as _;

    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(postgres::fresh_database()) else {
        return;
    };
    let data = on_postgres(&url);
    edit(&data.config(), "lease = \"20s\"", "lease = \"3s\"");
    let b = Bastion::start(data);
    b.device("mri-01", &sshd, &[]);
    let carol = b.vendor("carol", "Acme Imaging");
    b.grant("carol", "mri-01", "ssh", "1h");
    sqlx::any::install_default_drivers();
    let sql = |statement: String| {
        rt.block_on(async {
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
        });
    };
    let session = |cmd: &str| {
        b.ssh(&carol, "carol+mri-01")
            .arg(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Taken for gone: another node ended the row (as its sweep does), and the audit head moved.
    let child = session("echo up; sleep 60");
    let id = b.live_session_id();
    let started = Instant::now();
    sql(format!(
        "UPDATE sessions SET ended_at = {}, end_reason = 'ended by node-other', end_cause = 'lost' \
         WHERE id = '{id}'",
        crate::support::bastion::now()
    ));
    b.vendor("dave", "Acme Imaging");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up"));
    assert!(
        stderr.contains("this session was ended by another bastion node"),
        "{stderr}\n{}",
        b.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let mut verified = String::new();
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(15), || {
            verified = b.data.run(&["session", "verify", &id]).ok().stdout();
            verified.contains("intact")
        }),
        "{verified}\n{}",
        b.log()
    );

    // Cut off: every read of the audit head waits on this lock.
    let child = session("echo up; sleep 60");
    b.live_session_id();
    let mut lock = rt.block_on(async {
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    });
    let cut_off = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = cut_off.elapsed();
    rt.block_on(async {
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        lock.close().await.unwrap();
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this bastion node has lost its database"),
        "{stderr}\n{}",
        b.log()
    );
    assert!(took < Duration::from_secs(30), "closed after {took:?}");
    // The database answers again: sessions start and run as before.
    let mut out = None;
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(20), || {
            let o = b
                .ssh(&carol, "carol+mri-01")
                .arg("sleep 2; echo again")
                .output()
                .unwrap();
            let ok = String::from_utf8_lossy(&o.stdout).contains("again");
            out = Some(o);
            ok
        }),
        "{:?}\n{}",
        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()),
        b.log()
    );

    // Cut off with errors (the audit head renamed away, so every write fails at once): the session is
    // closed after the lease, and its end, tried four times, is not written. Once the database answers,
    // the node's own sweep ends the row (not live here any more) and vouches for the recording from its
    // file; before, both stayed open until the process restarted.
    let child = session("echo up; sleep 60");
    let id = b.live_session_id();
    sql("ALTER TABLE audit_head RENAME TO audit_head_away".to_owned());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this bastion node has lost its database"),
        "{stderr}\n{}",
        b.log()
    );
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(20), || b
            .log()
            .contains(&format!("cannot record the session end session={id}"))),
        "{}",
        b.log()
    );
    sql("ALTER TABLE audit_head_away RENAME TO audit_head".to_owned());
    let mut verified = String::new();
    assert!(
        crate::support::bastion::wait_until(Duration::from_secs(30), || {
            verified = b.data.run(&["session", "verify", &id]).stdout();
            verified.contains("intact")
        }),
        "{verified}\n{}",
        b.log()
    );
    let row = b.data.run(&["session", "show", &id, "--json"]).ok().json();
    assert!(
        row["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("its end could not be written")),
        "{row}"
    );
}

/// Debian's libfaketime (its thread-safe build), which shifts a process's clock (`FAKETIME`), or `None`.
fn libfaketime() -> Option<String> {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1"))
        .find(|p| Path::new(p).exists())
}

/// Node liveness is told on the database's clock. A node whose own clock runs two minutes ahead took
/// every other node for gone (their heartbeats looked two minutes old) and its sweep ended their
/// sessions under them, again at every heartbeat. Now the other node's session runs to its end, and
/// the node with the clock off says so.
#[test]
fn a_node_whose_clock_is_off_does_not_end_another_nodes_sessions() {
    let Some(faketime) = libfaketime() else {
        crate::support::missing("faketime (libfaketime)");
        return;
    };
    let Some(sshd) = crate::support::sshd::Sshd::start() else {
        return;
    };
    let Some((a, b, _, _)) = two_nodes_with(&[
        ("LD_PRELOAD", &faketime),
        ("FAKETIME", "+120s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]) else {
        return;
    };
    a.device("mri-01", &sshd, &[]);
    let carol = a.vendor("carol", "Acme Imaging");
    a.grant("carol", "mri-01", "ssh", "1h");
    // Longer than two of the other node's sweeps (every 5 s).
    let out = a
        .ssh(&carol, "carol+mri-01")
        .arg("echo up; sleep 14; echo done")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("up") && stdout.contains("done"),
        "{stdout}\n{stderr}\n--- a\n{}\n--- b\n{}",
        a.log(),
        b.log()
    );
    assert!(
        !b.log().contains("ended a session its node left open"),
        "{}",
        b.log()
    );
    let warned = b.log();
    assert!(
        warned.contains("this node's clock is +12") && warned.contains("from the database's"),
        "{warned}"
    );
    assert!(!a.log().contains("this node's clock is"), "{}", a.log());
}
