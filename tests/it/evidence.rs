//! Issue 12: recordings are proved from the audit chain, not from the database row that names them, and
//! nothing a vendor or a device controls reaches an administrator's terminal raw.
//!
//! Each test records a real session (OpenSSH → chaperone → sshd), stops the bastion, and then tampers
//! with the data directory as someone with write access to the database and the recordings would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::cli::{sqlite, sqlite_query};
use crate::support::DataDir;
use crate::support::bastion::{Bastion, text, wait_until};
use crate::support::sshd::Sshd;

/// sshd + chaperone with one device `mri-01` and a vendor `vera` granted its ssh service.
fn setup() -> Option<(Sshd, Bastion, crate::support::bastion::Vendor)> {
    let sshd = Sshd::start()?;
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &[]);
    let vera = b.vendor("vera", "Acme Imaging");
    b.grant("vera", "mri-01", "ssh", "1h");
    Some((sshd, b, vera))
}

/// Waits until every session has ended, then stops the bastion; the data directory and the only
/// session's id and recording path.
fn stop_after_the_session(b: Bastion) -> (DataDir, String, PathBuf) {
    let sessions = || b.data.run(&["session", "list", "--json"]).ok().json();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = sessions();
            let s = s.as_array().unwrap();
            !s.is_empty() && s.iter().all(|s| !s["ended_at"].is_null())
        }),
        "the session did not end: {}\n{}",
        sessions(),
        b.log()
    );
    let s = sessions()[0].clone();
    let id = s["id"].as_str().unwrap().to_owned();
    let path = PathBuf::from(s["recordings"][0]["path"].as_str().unwrap());
    (b.stop(), id, path)
}

fn db(d: &DataDir) -> PathBuf {
    d.path().join("chaperone.db")
}

/// `session verify`, `play` and both kinds of `export` all refuse, saying `why`; nothing is exported
/// and nothing of `secret` is played.
fn every_reader_refuses(d: &DataDir, id: &str, why: &str, secret: &str) {
    let verify = d.run(&["session", "verify", id]);
    assert!(
        verify.fails(1).stderr().contains(why),
        "verify: {}{}",
        verify.stdout(),
        verify.stderr()
    );
    assert!(!verify.stdout().contains("intact"), "{}", verify.stdout());
    let play = d.run(&["session", "play", id, "--max-wait", "0"]);
    assert!(
        play.fails(1).stderr().contains(why),
        "play: {}",
        play.stderr()
    );
    assert!(!play.stdout().contains(secret), "{}", play.stdout());
    for (name, extra) in [("out.cast", &[][..]), ("out.raw", &["--raw"][..])] {
        let out = d.path().join(name);
        let mut args = vec!["session", "export", id, "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let export = d.run(&args);
        assert!(
            export.fails(1).stderr().contains(why),
            "export {extra:?}: {}",
            export.stderr()
        );
        assert!(!out.exists(), "{name} was written");
    }
}

/// An exec recording altered on disk, with its `recordings.sha256` column rewritten to match, reads
/// ALTERED: the digest that counts is the one the `session.end` event carries. Rewriting that event's
/// JSON is caught too, and so is re-hashing the event (its successor no longer links to it).
#[test]
fn issue_12_an_altered_recording_with_its_digest_column_rewritten_reads_altered() {
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    let out = b
        .ssh(&vera, "vera+mri-01")
        .arg("echo reading-is-0042")
        .output()
        .unwrap();
    assert!(text(&out).0.contains("reading-is-0042"), "{:?}", text(&out));
    let (d, id, path) = stop_after_the_session(b);
    let verify = d.run(&["session", "verify", &id]);
    assert!(
        verify.ok().stdout().contains("intact"),
        "{}",
        verify.stdout()
    );
    let vouched = chaperone_recorder::sha256_file(&path).unwrap();

    // The file says something else now, and its row agrees with the file.
    let bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(15)
        .position(|w| w == b"reading-is-0042")
        .unwrap();
    let mut altered = bytes.clone();
    altered[at + 14] = b'7';
    std::fs::write(&path, &altered).unwrap();
    let forged = chaperone_recorder::sha256_file(&path).unwrap();
    sqlite(
        &db(&d),
        &format!(
            "UPDATE recordings SET sha256 = '{forged}', size = {}",
            altered.len()
        ),
    );
    every_reader_refuses(&d, &id, "ALTERED", "reading-is-0047");
    let verify = d.run(&["session", "verify", &id]);
    assert!(verify.stderr().contains(&vouched), "{}", verify.stderr());
    // `list` and `show` say so too, from the audit log, without reading the file.
    let list = d.run(&["session", "list"]);
    assert!(list.ok().stdout().contains("ALTERED"), "{}", list.stdout());
    let show = d.run(&["session", "show", &id]);
    assert!(
        show.ok().stdout().contains("ALTERED") && show.stdout().contains(&vouched),
        "{}",
        show.stdout()
    );
    let json = d.run(&["session", "show", &id, "--json"]).ok().json();
    assert_eq!(json["recordings"][0]["evidence"]["status"], "altered");
    assert_eq!(
        json["recordings"][0]["evidence"]["sha256"],
        vouched.as_str()
    );

    // Rewriting the digest inside the session.end event as well: its hash no longer recomputes.
    let (seq, detail) = session_end(&d, &id);
    let forged_detail = detail.replace(&vouched, &forged);
    assert_ne!(forged_detail, detail);
    sqlite(
        &db(&d),
        &format!(
            "UPDATE audit_events SET detail = '{}' WHERE seq = {seq}",
            forged_detail.replace('\'', "''")
        ),
    );
    every_reader_refuses(&d, &id, &format!("audit event {seq}"), "reading-is-0047");
    every_reader_refuses(&d, &id, "ALTERED", "reading-is-0047");

    // …and storing the hash that content would have: the event after it (or the head) does not link.
    let row = sqlite_query(
        &db(&d),
        &format!(
            "SELECT at, actor, action, subject, prev_hash FROM audit_events WHERE seq = {seq}"
        ),
    );
    let f: Vec<&str> = row.trim_end().split('|').collect();
    let rehashed = chaperone::audit::chain_hash(
        seq,
        f[0].parse().unwrap(),
        f[1],
        f[2],
        f[3],
        &forged_detail,
        f[4],
    );
    sqlite(
        &db(&d),
        &format!("UPDATE audit_events SET hash = '{rehashed}' WHERE seq = {seq}"),
    );
    every_reader_refuses(&d, &id, "ALTERED", "reading-is-0047");
    let verify = d.run(&["session", "verify", &id]);
    assert!(
        verify
            .stderr()
            .contains(&format!("audit event {}", seq + 1))
            || verify.stderr().contains("chain head"),
        "{}",
        verify.stderr()
    );
    d.run(&["audit", "verify"]).fails(1);
}

/// The session.end event about session `id`: its sequence number and JSON detail.
fn session_end(d: &DataDir, id: &str) -> (i64, String) {
    let row = sqlite_query(
        &db(d),
        &format!(
            "SELECT seq || '|' || detail FROM audit_events \
             WHERE action = 'session.end' AND subject = 'session:{id}'"
        ),
    );
    let (seq, detail) = row.trim_end().split_once('|').unwrap();
    (seq.parse().unwrap(), detail.to_owned())
}

/// A recording whose row names a file outside the recordings directory is refused before it is
/// opened, even when that file is a faithful copy (so its digest matches): directly, through `..`, and
/// through a symlink inside the directory. A row that names a file that does not exist says so.
#[test]
fn issue_12_a_recording_path_outside_the_recordings_directory_is_refused() {
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    let out = b
        .ssh(&vera, "vera+mri-01")
        .arg("echo kept-inside")
        .output()
        .unwrap();
    assert!(text(&out).0.contains("kept-inside"), "{:?}", text(&out));
    let (d, id, path) = stop_after_the_session(b);
    let recordings = path.parent().unwrap().to_owned();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let copy = elsewhere.join(path.file_name().unwrap());
    std::fs::copy(&path, &copy).unwrap();
    let link = recordings.join("link.exec");
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    let point_at = |p: &Path| {
        sqlite(
            &db(&d),
            &format!("UPDATE recordings SET path = '{}'", p.display()),
        )
    };
    for outside in [
        copy.clone(),
        recordings
            .join("..")
            .join("elsewhere")
            .join(copy.file_name().unwrap()),
        link.clone(),
        PathBuf::from("/etc/passwd"),
    ] {
        point_at(&outside);
        every_reader_refuses(&d, &id, "outside the recordings directory", "kept-inside");
    }
    // Back where it belongs, it verifies again.
    point_at(&path);
    d.run(&["session", "verify", &id]).ok();
}

/// An exec command carrying a real OSC 52 (clipboard write) prints escaped in `session show` and never
/// raw in `session list`; `session play` of a pty recording whose output holds OSC 52, a title, a
/// hyperlink and a cursor position query plays the text without them, and `--raw` plays them.
#[test]
fn issue_12_vendor_text_is_escaped_and_play_filters_what_acts_outside_the_screen() {
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    // The command itself holds ESC ] 52 … BEL (a no-op argument to `:`); its output, printed by the
    // device, holds the same and more.
    let command = "printf '\\033]52;c;ZXZpbA==\\a\\033]0;pwned-title\\a\\033]8;;http://evil.example/\\033\\\\\
                   link\\033]8;;\\033\\\\\\033[6n\\033[1;31mvisible-text\\033[0m\\n'; \
                   : '\u{1b}]52;c;ZXZpbA==\u{7}'";
    let out = b
        .ssh_with(&vera, &["-tt"], "vera+mri-01")
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("\x1b]52;c;ZXZpbA=="), "{stdout:?}");
    let (d, id, _) = stop_after_the_session(b);

    let show = d.run(&["session", "show", &id]);
    let shown = show.ok().stdout();
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07'),
        "{shown:?}"
    );
    assert!(shown.contains(": '\\x1b]52;c;ZXZpbA==\\x07'"), "{shown}");
    let list = d.run(&["session", "list"]);
    assert!(!list.ok().stdout().contains('\x1b'), "{:?}", list.stdout());
    // JSON stays exact.
    let json = d.run(&["session", "show", &id, "--json"]).ok().json();
    assert_eq!(json["detail"], command);

    let play = d.run(&["session", "play", &id, "--max-wait", "0"]);
    let played = play.ok().stdout();
    assert!(played.contains("visible-text"), "{played:?}");
    assert!(
        played.contains("\x1b[1;31m"),
        "colours are kept: {played:?}"
    );
    for gone in [
        "\x1b]52",
        "ZXZpbA==",
        "\x1b]0;",
        "pwned-title",
        "\x1b]8;",
        "\x1b[6n",
    ] {
        assert!(!played.contains(gone), "{gone:?} played: {played:?}");
    }
    assert!(play.stderr().contains("--raw"), "{}", play.stderr());
    let raw = d.run(&["session", "play", &id, "--max-wait", "0", "--raw"]);
    let played = raw.ok().stdout();
    for kept in ["\x1b]52;c;ZXZpbA==", "\x1b]0;pwned-title", "\x1b[6n"] {
        assert!(played.contains(kept), "{kept:?} not played raw: {played:?}");
    }
}

/// The audit events that vouch for recordings, read through the store on SQLite and PostgreSQL: a live
/// session has none; `session.end` vouches for the session's recording; a `recording.recovered`
/// vouches for the one it names; a later event vouching for another digest is a conflict, never a
/// replacement; the row's `sha256` plays no part.
#[tokio::test]
async fn issue_12_the_digest_that_counts_is_the_first_one_the_chain_vouches_for() {
    use chaperone::audit::AuditEvent;
    use chaperone::evidence::{Broken, Evidence, Unvouched, evidence};
    use chaperone::store::NewSession;
    use serde_json::json;

    use crate::store::{asset, grant, on_both, vendor};

    on_both(|store| async move {
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        let mut recordings = Vec::new();
        for id in ["s-ended", "s-recovered", "s-live"] {
            tx.insert_session(
                &NewSession {
                    id,
                    vendor_id: v,
                    asset_id: a,
                    grant_id: g,
                    kind: "exec",
                    service: "ssh",
                    client_addr: "127.0.0.1:5",
                    detail: "uptime",
                    node: "node-a",
                },
                150,
            )
            .await
            .unwrap();
            let path = format!("/r/{id}.exec");
            recordings.push(
                tx.insert_recording(id, "exec-stream-v1", &path, 150)
                    .await
                    .unwrap(),
            );
            tx.audit(
                AuditEvent::new(
                    "vendor:alice",
                    "session.start",
                    format!("session:{id}"),
                    json!({"recording": path}),
                ),
                150,
            )
            .await
            .unwrap();
        }
        tx.commit("t").await.unwrap();
        let end = |id: &str, digest: Option<&str>| {
            AuditEvent::new(
                "vendor:alice",
                "session.end",
                format!("session:{id}"),
                json!({"reason": "exit", "recording_sha256": digest}),
            )
        };
        let recovered = |id: &str, recording: i64, digest: &str| {
            AuditEvent::new(
                "node:b",
                "recording.recovered",
                format!("session:{id}"),
                json!({"recording": recording, "path": "/r/moved.exec", "sha256": digest}),
            )
        };
        let mut tx = store.begin().await.unwrap();
        tx.end_session("s-ended", "exit", "closed", 1, 2, 160)
            .await
            .unwrap();
        // The row claims another digest than the event: the event counts.
        tx.close_recording(recordings[0], "row-digest", 10, 160)
            .await
            .unwrap();
        tx.audit(end("s-ended", Some("aaaa")), 160).await.unwrap();
        tx.end_session("s-recovered", "abandoned", "lost", 0, 0, 160)
            .await
            .unwrap();
        tx.audit(end("s-recovered", None), 160).await.unwrap();
        tx.audit(recovered("s-recovered", recordings[1], "bbbb"), 170)
            .await
            .unwrap();
        // Events about other subjects around them change nothing.
        tx.audit(end("s-other", Some("ffff")), 170).await.unwrap();
        tx.commit("t").await.unwrap();

        let judge = |id: &'static str| {
            let store = store.clone();
            async move {
                let s = store.session(id).await.unwrap();
                evidence(&store, &s).await.unwrap()
            }
        };
        let ended = judge("s-ended").await;
        let Evidence::Vouched(v) = &ended[0] else {
            panic!("{ended:?}")
        };
        assert_eq!(
            (v.sha256.as_str(), v.action.as_str(), v.path.as_deref()),
            ("aaaa", "session.end", Some("/r/s-ended.exec"))
        );
        let rec = judge("s-recovered").await;
        let Evidence::Vouched(v) = &rec[0] else {
            panic!("{rec:?}")
        };
        assert_eq!(
            (v.sha256.as_str(), v.action.as_str(), v.path.as_deref()),
            ("bbbb", "recording.recovered", Some("/r/moved.exec"))
        );
        assert_eq!(
            judge("s-live").await,
            vec![Evidence::Unvouched(Unvouched::Live)]
        );

        // A later event cannot re-vouch: a second digest is a conflict.
        let mut tx = store.begin().await.unwrap();
        tx.audit(recovered("s-ended", recordings[0], "cccc"), 180)
            .await
            .unwrap();
        tx.audit(recovered("s-recovered", recordings[1], "bbbb"), 180)
            .await
            .unwrap();
        tx.end_session("s-live", "exit", "closed", 0, 0, 180)
            .await
            .unwrap();
        tx.audit(end("s-live", None), 180).await.unwrap();
        tx.commit("t").await.unwrap();
        assert!(
            matches!(
                judge("s-ended").await[0],
                Evidence::Broken(Broken::Conflict { .. })
            ),
            "{:?}",
            judge("s-ended").await
        );
        // The same digest again is no conflict.
        assert!(matches!(
            judge("s-recovered").await[0],
            Evidence::Vouched(_)
        ));
        assert_eq!(
            judge("s-live").await,
            vec![Evidence::Unvouched(Unvouched::NotDigested)]
        );
    })
    .await;
}
