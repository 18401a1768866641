//! Issue 12: recordings are proved from the audit chain, not from the database row that names them, and
//! nothing a vendor or a device controls reaches an administrator's terminal raw.
//!
//! Each test records a real session (OpenSSH → chaperone → sshd), stops the bastion, and then tampers
//! with the data directory as someone with write access to the database and the recordings would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chaperone::audit::Action;

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

/// Waits until every session has ended; the only one, as `session list --json` shows it.
fn the_ended_session(b: &Bastion) -> serde_json::Value {
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
    sessions()[0].clone()
}

/// Waits until every session has ended, then stops the bastion; the data directory and the only
/// session's id and recording path.
fn stop_after_the_session(b: Bastion) -> (DataDir, String, PathBuf) {
    let s = the_ended_session(&b);
    let id = s["id"].as_str().unwrap().to_owned();
    let path = PathBuf::from(s["recordings"][0]["path"].as_str().unwrap());
    (b.stop(), id, path)
}

/// One recorded exec of `echo WORD` (its output checked), then the bastion stopped once the session
/// ended: the data directory, the session's id and its recording's path.
fn one_recorded_echo(word: &str) -> Option<(DataDir, String, PathBuf)> {
    let (_sshd, b, vera) = setup()?;
    let out = b
        .ssh(&vera, "vera+mri-01")
        .arg(format!("echo {word}"))
        .output()
        .unwrap();
    assert!(text(&out).0.contains(word), "{:?}", text(&out));
    Some(stop_after_the_session(b))
}

fn db(d: &DataDir) -> PathBuf {
    d.path().join("chaperone.db")
}

/// `session verify`, `play`, both kinds of `export` and `evidence export` all refuse, saying `why`;
/// nothing is exported and nothing of `secret` is played.
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
    // Issue 11: no bundle vouches for it either.
    let out = d.path().join("refused-bundle.tar");
    let bundle = d.run(&["evidence", "export", id, "-o", out.to_str().unwrap()]);
    assert!(
        bundle.fails(1).stderr().contains(why),
        "evidence export: {}",
        bundle.stderr()
    );
    assert!(!out.exists(), "a bundle was written");
}

/// An exec recording altered on disk, with its `recordings.sha256` column rewritten to match, reads
/// ALTERED: the digest that counts is the one the `session.end` event carries. Rewriting that event's
/// JSON is caught too, and so is re-hashing the event (its successor no longer links to it).
#[test]
fn issue_12_an_altered_recording_with_its_digest_column_rewritten_reads_altered() {
    let Some((d, id, path)) = one_recorded_echo("reading-is-0042") else {
        return;
    };
    let verify = d.run(&["session", "verify", &id]);
    assert!(
        verify.ok().stdout().contains("intact"),
        "{}",
        verify.stdout()
    );
    let vouched = chaperone_recorder::sha256_file(&path).unwrap();
    // Two events more after the session's (exports are audited): the chain goes on past the one
    // after its session.end.
    for n in 0..2 {
        let to = d.path().join(format!("export-{n}.jsonl"));
        d.run(&["audit", "export", "-o", to.to_str().unwrap()]).ok();
    }

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

    // …and linking the event after it again, its hash recomputed too: the walk on toward the head
    // finds the one after that unlinked (a check of the event's neighbours alone would pass).
    let next = seq + 1;
    let row = sqlite_query(
        &db(&d),
        &format!("SELECT at, actor, action, subject, detail FROM audit_events WHERE seq = {next}"),
    );
    let f: Vec<&str> = row.trim_end().splitn(5, '|').collect();
    let relinked = chaperone::audit::chain_hash(
        next,
        f[0].parse().unwrap(),
        f[1],
        f[2],
        f[3],
        f[4],
        &rehashed,
    );
    sqlite(
        &db(&d),
        &format!(
            "UPDATE audit_events SET prev_hash = '{rehashed}', hash = '{relinked}' WHERE seq = {next}"
        ),
    );
    every_reader_refuses(&d, &id, "ALTERED", "reading-is-0047");
    let verify = d.run(&["session", "verify", &id]);
    assert!(
        verify
            .stderr()
            .contains(&format!("audit event {}", next + 1)),
        "{}",
        verify.stderr()
    );

    // …and recomputing every event after it up to the end, the head moved to match: the chain links
    // whole again, as anyone who can write the database can make it. Its head's seal, which needs
    // the secrets key, does not follow.
    let last: i64 = sqlite_query(&db(&d), "SELECT MAX(seq) FROM audit_events")
        .trim()
        .parse()
        .unwrap();
    let mut prev = relinked;
    for seq in next + 1..=last {
        let row = sqlite_query(
            &db(&d),
            &format!(
                "SELECT at, actor, action, subject, detail FROM audit_events WHERE seq = {seq}"
            ),
        );
        let f: Vec<&str> = row.trim_end().splitn(5, '|').collect();
        let hash =
            chaperone::audit::chain_hash(seq, f[0].parse().unwrap(), f[1], f[2], f[3], f[4], &prev);
        sqlite(
            &db(&d),
            &format!(
                "UPDATE audit_events SET prev_hash = '{prev}', hash = '{hash}' WHERE seq = {seq}"
            ),
        );
        prev = hash;
    }
    sqlite(
        &db(&d),
        &format!("UPDATE audit_head SET seq = {last}, hash = '{prev}'"),
    );
    every_reader_refuses(&d, &id, "ALTERED", "reading-is-0047");
    let verify = d.run(&["session", "verify", &id]);
    assert!(
        verify.stderr().contains("does not carry the seal"),
        "{}",
        verify.stderr()
    );
    let audit = d.run(&["audit", "verify"]);
    assert!(
        audit.fails(1).stderr().contains("does not carry the seal")
            && audit.stderr().contains("chaperone audit seal --head"),
        "{}",
        audit.stderr()
    );
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
    let Some((d, id, path)) = one_recorded_echo("kept-inside") else {
        return;
    };
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

/// A recording whose `recordings` row is renumbered or deleted (a database write, no file or chain
/// touched) does not vanish: the chain names it, so every reader calls the session's recording altered
/// instead of showing a session without one. A session row that says another command or vendor than
/// its start event recorded reads altered too.
#[test]
fn issue_12_a_recording_whose_row_is_renumbered_or_deleted_reads_altered() {
    let Some((d, id, _path)) = one_recorded_echo("row-kept-0815") else {
        return;
    };
    d.run(&["session", "verify", &id]).ok();
    // The row's command (or vendor) rewritten: every reader and the bundle's summary would repeat
    // it, so the session's recording reads altered until the row says again what the chain recorded.
    for (change, back) in [
        (
            "UPDATE sessions SET detail = 'echo nothing-0000'",
            "UPDATE sessions SET detail = 'echo row-kept-0815'",
        ),
        (
            "INSERT INTO vendors (name, org, totp_secret, created_at) \
             SELECT 'mallory', org, totp_secret, created_at FROM vendors; \
             UPDATE sessions SET vendor_id = (SELECT id FROM vendors WHERE name = 'mallory')",
            "UPDATE sessions SET vendor_id = (SELECT id FROM vendors WHERE name = 'vera')",
        ),
    ] {
        sqlite(&db(&d), change);
        every_reader_refuses(&d, &id, "but the session's row says", "row-kept-0815");
        sqlite(&db(&d), back);
        d.run(&["session", "verify", &id]).ok();
    }
    let listed = |d: &DataDir| {
        let list = d.run(&["session", "list", "--json"]).ok().json();
        list[0]["recordings"].clone()
    };
    for change in [
        "UPDATE recordings SET id = id + 1000",
        "DELETE FROM recording_index; DELETE FROM recording_text; DELETE FROM recordings",
    ] {
        sqlite(&db(&d), change);
        every_reader_refuses(&d, &id, "the recordings table lacks", "row-kept-0815");
        let recordings = listed(&d);
        let statuses: Vec<&str> = recordings
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["evidence"]["status"].as_str().unwrap_or("?"))
            .collect();
        assert!(statuses.contains(&"altered"), "{change}: {recordings:#}");
        let show = d.run(&["session", "show", &id]);
        assert!(
            show.stdout().contains("ALTERED") && show.stdout().contains("recordings table lacks"),
            "{change}: {}{}",
            show.stdout(),
            show.stderr()
        );
    }
}

/// A recording someone else overwrote in place while its session ran (same size) is ALTERED on the
/// session's page, as in `session verify`: the recorder's digest comes from memory, so it is not what
/// a page may trust without reading the file.
#[test]
fn a_recording_overwritten_during_its_session_reads_altered_on_the_page() {
    use std::os::unix::fs::FileExt as _;
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    let mut audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    audrey.login();
    let child = b
        .ssh(&vera, "vera+mri-01")
        .arg("echo early-0001; sleep 3; echo late-0002")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let recording = || {
        let list = b.data.run(&["session", "list", "--json"]).ok().json();
        list[0]["recordings"][0]["path"].as_str().map(PathBuf::from)
    };
    let mut at = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            at = recording().and_then(|p| {
                let bytes = std::fs::read(&p).ok()?;
                let i = bytes.windows(10).position(|w| w == b"early-0001")?;
                Some((p, i))
            });
            at.is_some()
        }),
        "the recording never held the first line\n{}",
        b.log()
    );
    let (path, i) = at.unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_at(b"early-0009", i as u64).unwrap();
    drop(file);
    let out = child.wait_with_output().unwrap();
    assert!(text(&out).0.contains("late-0002"), "{:?}", text(&out));
    let id = the_ended_session(&b)["id"].as_str().unwrap().to_owned();
    let page = audrey.get(&format!("/sessions/{id}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("ALTERED"), "{}", page.body);
    // The indexer has read it by now (or will): still ALTERED, never remembered as intact.
    std::thread::sleep(Duration::from_secs(1));
    let page = audrey.get(&format!("/sessions/{id}"));
    assert!(page.body.contains("ALTERED"), "{}", page.body);
    let verify = b.data.run(&["session", "verify", &id]);
    let said = format!("{}{}", verify.fails(1).stdout(), verify.stderr());
    assert!(said.contains("ALTERED"), "{said}");
}

/// Anyone who may open a session's page adds a view to its audit history: a flood of them does not push
/// a later legal hold off the page; the page says what it left out.
#[test]
fn a_flood_of_views_does_not_hide_a_later_hold_on_the_session_page() {
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    let out = b
        .ssh(&vera, "vera+mri-01")
        .arg("echo looked-at")
        .output()
        .unwrap();
    assert!(text(&out).0.contains("looked-at"), "{:?}", text(&out));
    let id = the_ended_session(&b)["id"].as_str().unwrap().to_owned();
    let mut audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    audrey.login();
    assert_eq!(audrey.get_times(&format!("/sessions/{id}"), 520), 200);
    b.data
        .run(&["session", "hold", &id, "--reason", "case-0815"])
        .ok();
    let page = audrey.get(&format!("/sessions/{id}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("session.hold"), "{}", page.body);
    assert!(page.body.contains("case-0815"), "{}", page.body);
    assert!(page.body.contains("session.start"), "{}", page.body);
    assert!(
        page.body
            .contains("only the newest 200 views, searches and exports are shown"),
        "{}",
        page.body
    );

    // The bundle carries the newest 1,000 of them and every other event: 600 views more (written
    // straight to the log, as many page loads would), then a release, the last word on the hold.
    let config = chaperone::config::Config::load(&b.data.config()).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store =
            chaperone::store::Store::open(&config.database.url, crate::support::seal_of(&config))
                .await
                .unwrap();
        let view = || {
            chaperone::audit::AuditEvent::new(
                "staff:audrey",
                chaperone::audit::Action::RecordingView,
                format!("session:{id}"),
                serde_json::json!({"flood": true}),
            )
        };
        let mut tx = store.begin().await.unwrap();
        tx.audit_many((0..600).map(|_| (view(), 2_000_000_000)).collect())
            .await
            .unwrap();
        tx.commit("recording.view").await.unwrap();
        store.close().await;
    });
    b.data
        .run(&["session", "release", &id, "--reason", "case-0815 closed"])
        .ok();
    let data = b.stop();
    let tar = data.path().join("flooded.tar");
    data.run(&["evidence", "export", &id, "-o", tar.to_str().unwrap()])
        .ok();
    let unpacked = untar(&tar, &data.path().join("flooded"), &id);
    let audit = std::fs::read_to_string(unpacked.join("audit.jsonl")).unwrap();
    let count = |action: &str| {
        audit
            .lines()
            .filter(|l| l.contains(&format!("\"action\":\"{action}\"")))
            .count()
    };
    // The newest 1,000 looks: this export's own event and 999 views.
    assert_eq!(count("evidence.export"), 1);
    assert_eq!(count("recording.view"), 999);
    for action in [
        "session.start",
        "session.end",
        "session.hold",
        "session.release",
    ] {
        assert_eq!(count(action), 1, "{action}");
    }
    let readme = std::fs::read_to_string(unpacked.join("README.txt")).unwrap();
    assert!(readme.contains("holds only the newest"), "{readme}");
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

/// A recording's segments are served only to a viewer whose opening of its player was audited: a
/// segment URL (predictable: session, recording, number) fetched without it is refused and shows
/// nothing, so no recorded byte reaches a browser without `recording.view` on the record. What the
/// page's script shows of it (the player's output, transcript hits) has no character that would
/// reorder it in the browser: a right-to-left override the device printed reaches the page as U+FFFD.
#[test]
fn a_recording_segment_is_served_only_after_the_viewers_audited_play() {
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    let out = b
        .ssh_with(&vera, &["-tt"], "vera+mri-01")
        .arg("echo SEGMENT-SECRET-42; printf 'BIDIMARK-\\342\\200\\256fr- mr\\n'")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let sessions = || b.data.run(&["session", "list", "--json"]).ok().json();
    assert!(
        wait_until(Duration::from_secs(10), || sessions()[0]["ended_at"]
            .as_i64()
            .is_some()),
        "{}",
        sessions()
    );
    let id = sessions()[0]["id"].as_str().unwrap().to_owned();
    let rid = sessions()[0]["recordings"][0]["id"].as_i64().unwrap();
    let audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    let carl = crate::support::web::Approver::enroll(&b, "carl", "auditor");
    let segment = format!("/sessions/{id}/recordings/{rid}/segments/0?idle=2");
    let views = || {
        b.data
            .run(&["audit", "export", "--format", "jsonl"])
            .ok()
            .stdout()
            .lines()
            .filter(|l| l.contains("\"recording.view\""))
            .count()
    };

    let before = audrey.get(&segment);
    assert_eq!(before.status, 403, "{}", before.body);
    assert!(
        !before.body.contains("SEGMENT-SECRET-42"),
        "{}",
        before.body
    );
    assert_eq!(views(), 0);

    let index = audrey.get(&format!("/sessions/{id}/recordings/{rid}/play.json?idle=2"));
    assert_eq!(index.status, 200, "{}", index.body);
    assert_eq!(views(), 1);
    let after = audrey.get(&segment);
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(after.body.contains("SEGMENT-SECRET-42"), "{}", after.body);
    assert!(
        after.body.contains("BIDIMARK-\u{fffd}fr- mr") && !after.body.contains('\u{202e}'),
        "{}",
        after.body
    );
    let hits = audrey.get(&format!("/sessions/{id}/search?text=BIDIMARK&idle=2"));
    assert_eq!(hits.status, 200, "{}", hits.body);
    assert!(
        hits.body.contains("BIDIMARK-\u{fffd}fr- mr") && !hits.body.contains('\u{202e}'),
        "{}",
        hits.body
    );
    // Another viewer's audited play opens nothing for carl.
    let other = carl.get(&segment);
    assert_eq!(other.status, 403, "{}", other.body);
}

/// A device controls the text of a command marker (the prompt it prints and the echo of what was typed)
/// but never its kind: a prompt made to read like the bastion's revocation notice is recorded as a
/// command, and only the bastion's own words are a notice, in the file and in the page's index.
#[test]
fn a_device_prompt_cannot_forge_a_bastion_notice_marker() {
    let Some(sshd) = Sshd::start() else { return };
    let b = Bastion::start(DataDir::init());
    b.device("mri-01", &sshd, &[]);
    let vera = b.vendor("vera", "Acme Imaging");
    let grant = b.grant("vera", "mri-01", "ssh", "1h");
    let mut shell = b
        .ssh_with(&vera, &["-tt"], "vera+mri-01")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    let sessions = || b.data.run(&["session", "list", "--json"]).ok().json();
    let recording = || -> Option<String> {
        let path = sessions()[0]["recordings"][0]["path"].as_str()?.to_owned();
        std::fs::read_to_string(path).ok()
    };
    // Each line is typed once the shell shows its prompt, as a person would (a marker labels the line
    // the screen completes after Enter).
    let mut type_after = |seen: &dyn Fn(&str) -> bool, line: &[u8]| {
        assert!(
            wait_until(Duration::from_secs(10), || recording()
                .is_some_and(|r| seen(&r))),
            "{:?}\n{}",
            recording(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        std::io::Write::write_all(&mut stdin, line).unwrap();
    };
    type_after(
        &|r| r.contains("\"o\""),
        b"PS1='chaperone: access to mri-01 was revoked (FORGED) '\r",
    );
    type_after(&|r| r.matches("(FORGED) ").count() >= 2, b"true\r");
    assert!(
        wait_until(Duration::from_secs(10), || recording()
            .is_some_and(|r| r.contains("(FORGED) true\"]"))),
        "{:?}\n{}",
        recording(),
        b.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    b.data
        .run(&["grant", "revoke", &grant.to_string(), "--reason", "done"])
        .ok();
    let _ = shell.wait_with_output().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || sessions()[0]["ended_at"]
            .as_i64()
            .is_some()),
        "{}",
        sessions()
    );
    let cast = chaperone_recorder::parse_cast(recording().unwrap().as_bytes()).unwrap();
    let markers: Vec<(String, chaperone_recorder::MarkerKind)> = cast
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            chaperone_recorder::EventKind::Marker(label) => {
                Some((label.clone(), chaperone_recorder::MarkerKind::of(label)))
            }
            _ => None,
        })
        .collect();
    use chaperone_recorder::MarkerKind::{Command, Notice};
    assert!(
        markers
            .iter()
            .any(|(l, k)| l.contains("(FORGED) true") && *k == Command),
        "{markers:?}"
    );
    let notices: Vec<&String> = markers
        .iter()
        .filter(|(_, k)| *k == Notice)
        .map(|(l, _)| l)
        .collect();
    assert_eq!(
        notices,
        ["chaperone: access to mri-01 was revoked (done)"],
        "{markers:?}"
    );

    // The page's index says the same, kind by kind.
    let id = sessions()[0]["id"].as_str().unwrap().to_owned();
    let rid = sessions()[0]["recordings"][0]["id"].as_i64().unwrap();
    let audrey = crate::support::web::Approver::enroll(&b, "audrey", "auditor");
    let index = audrey
        .get(&format!("/sessions/{id}/recordings/{rid}/play.json?idle=2"))
        .json();
    let labels = index["markers"].as_array().unwrap();
    let kinds = index["marker_kinds"].as_array().unwrap();
    assert_eq!(labels.len(), kinds.len(), "{index}");
    for (m, kind) in labels.iter().zip(kinds) {
        let label = m[1].as_str().unwrap();
        let want = if label.contains("FORGED") {
            "command"
        } else {
            kind.as_str().unwrap()
        };
        assert_eq!(kind, want, "{index}");
        if kind == "notice" {
            assert_eq!(
                label, "chaperone: access to mri-01 was revoked (done)",
                "{index}"
            );
        }
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
                    Action::SessionStart,
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
                Action::SessionEnd,
                format!("session:{id}"),
                json!({"reason": "exit", "recording_sha256": digest}),
            )
        };
        let recovered = |id: &str, recording: i64, digest: &str| {
            AuditEvent::new(
                "node:b",
                Action::RecordingRecovered,
                format!("session:{id}"),
                json!({"recording": recording, "path": "/restored/s-recovered.exec", "sha256": digest}),
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
                let mut s = store.session(id).await.unwrap();
                evidence(&store, &mut s).await.unwrap()
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
            ("bbbb", "recording.recovered", Some("/restored/s-recovered.exec"))
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
        // No bundle vouches for a recording nothing digested, nor for one with two digests.
        for (id, why) in [("s-live", "not digested"), ("s-ended", "ALTERED")] {
            let refused = bundle_refused(&store, id).await;
            assert!(refused.contains(why), "{id}: {refused}");
        }
        let signed = store
            .audit_events_about("session:s-live", &["evidence.signed"], 10)
            .await
            .unwrap();
        assert!(signed.is_empty(), "{signed:?}");
    })
    .await;
}

/// Why a bundle of session `id` is refused (empty if one was made), signed with a throwaway key.
async fn bundle_refused(store: &chaperone::store::Store, id: &str) -> String {
    let keys = tempfile::tempdir().unwrap();
    let config = chaperone::config::RecordingConfig {
        dir: keys.path().to_owned(),
        record_input: false,
        max_bytes: None,
        signing_key: keys.path().join("signing_key"),
        retain: chaperone::config::Retain::Forever,
        zone_retain: Default::default(),
    };
    chaperone::evidence::signer::Signer::create(&config.signing_key).unwrap();
    let bundle =
        chaperone::evidence::bundle::export(store, &config, id, "os:test", "cli", 200, Vec::new())
            .await;
    bundle.err().map(|e| e.to_string()).unwrap_or_default()
}

/// A process that verified the chain up to its head notices the end of the log cut with the head moved
/// back to match (a database write, no hashing needed), which the head alone cannot show: the
/// recording it vouched for reads broken, and an evidence bundle is refused. Events appended after the
/// verification are no such thing.
#[tokio::test]
async fn a_head_moved_back_behind_what_this_process_verified_is_a_shortened_chain() {
    use chaperone::audit::{AuditEvent, ChainBreak};
    use chaperone::evidence::{Broken, Evidence, evidence};
    use chaperone::store::NewSession;
    use serde_json::json;

    use crate::store::{asset, grant, on_both_with_url, raw, raw_text, vendor};

    on_both_with_url(|store, url| async move {
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        let session = NewSession {
            id: "s1",
            vendor_id: v,
            asset_id: a,
            grant_id: g,
            kind: "exec",
            service: "ssh",
            client_addr: "127.0.0.1:5",
            detail: "uptime",
            node: "node-a",
        };
        tx.insert_session(&session, 150).await.unwrap();
        let rid = tx
            .insert_recording("s1", "exec-stream-v1", "/r/s1.exec", 150)
            .await
            .unwrap();
        let event = |action, detail| AuditEvent::new("vendor:alice", action, "session:s1", detail);
        tx.audit(
            event(Action::SessionStart, json!({"recording": "/r/s1.exec"})),
            150,
        )
        .await
        .unwrap();
        tx.end_session("s1", "exit", "closed", 1, 2, 160)
            .await
            .unwrap();
        tx.close_recording(rid, "aaaa", 10, 160).await.unwrap();
        tx.audit(
            event(
                Action::SessionEnd,
                json!({"recording": rid, "recording_sha256": "aaaa"}),
            ),
            160,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();
        // Two events about something else: what an attacker would cut. The attacker keeps the head
        // (and its seal) as it stood after the first, to put it back.
        let mut kept_seal = None;
        for n in 0..2 {
            if n == 1 {
                kept_seal = raw_text(&url, "SELECT mac FROM audit_head").await;
            }
            let mut tx = store.begin().await.unwrap();
            tx.audit(
                AuditEvent::new(
                    "os:root",
                    Action::VendorAdd,
                    format!("vendor:v{n}"),
                    json!({}),
                ),
                170,
            )
            .await
            .unwrap();
            tx.commit("t").await.unwrap();
        }
        let judge = || {
            let store = store.clone();
            async move {
                let mut s = store.session("s1").await.unwrap();
                evidence(&store, &mut s).await.unwrap()
            }
        };
        assert!(matches!(judge().await[0], Evidence::Vouched(_)));
        // Appended since: still vouched.
        let mut tx = store.begin().await.unwrap();
        tx.audit(
            AuditEvent::new("os:root", Action::VendorAdd, "vendor:v2", json!({})),
            171,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();
        assert!(matches!(judge().await[0], Evidence::Vouched(_)));
        // The last two events deleted, the head moved back onto the one before them.
        let (head, _) = store.audit_head().await.unwrap();
        let kept = store.audit_page(head - 3, 1).await.unwrap().pop().unwrap();
        raw(
            &url,
            &format!("DELETE FROM audit_events WHERE seq > {}", kept.seq),
        )
        .await;
        raw(
            &url,
            &format!(
                "UPDATE audit_head SET seq = {}, hash = '{}', mac = '{}'",
                kept.seq,
                kept.hash,
                kept_seal.as_deref().unwrap()
            ),
        )
        .await;
        let judged = judge().await;
        assert!(
            matches!(
                &judged[0],
                Evidence::Broken(Broken::Chain(ChainBreak::Shortened { head_seq, verified }))
                    if *head_seq == kept.seq && *verified > kept.seq
            ),
            "{judged:?}"
        );
        // Raised once as a security alert (the SIEM and the ATNA repository get it), not at every look.
        judge().await;
        let alarms = store
            .audit_events_about("audit", &["audit.tamper"], 10)
            .await
            .unwrap();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert!(
            alarms[0].detail.contains("deleted from the end"),
            "{alarms:?}"
        );
        let refused = bundle_refused(&store, "s1").await;
        // (The export's own event took seq 6 again: a head at a verified seq with another hash.)
        assert!(
            refused.contains("deleted from the end") || refused.contains("verified before"),
            "{refused}"
        );
    })
    .await;
}

/// Runs `cmd` (a shell line) in `dir`; its exit status and what it printed.
pub(crate) fn sh(dir: &Path, cmd: &str) -> (bool, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Unpacks `tar` into a new directory under `into` with the stock `tar`; the bundle's directory.
pub(crate) fn untar(tar: &Path, into: &Path, session: &str) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    let (ok, out) = sh(into, &format!("tar -xf {}", tar.display()));
    assert!(ok, "tar: {out}");
    into.join(format!("session-{session}"))
}

/// The audit events of `action`, as `actor|subject|detail` lines.
fn events(d: &DataDir, action: &str) -> String {
    sqlite_query(
        &db(d),
        &format!(
            "SELECT actor || '|' || subject || '|' || detail FROM audit_events WHERE action = '{action}' ORDER BY seq"
        ),
    )
}

/// Issue 11: a real recorded exec → `evidence export` → the stock `ssh-keygen -Y verify` and
/// `sha256sum -c` pass in the unpacked bundle, and so does `evidence verify`. One byte of the recording
/// changed in the tar: `sha256sum -c` and `evidence verify` fail; SHA256SUMS rewritten to match the
/// change as well: `ssh-keygen -Y verify` and `evidence verify` fail. On the same bastion: the exec's
/// `.cast` export plays line by line in asciinema 2.4, a `-tt` session from a non-terminal records a
/// readable size, and play/export/evidence export are audited with the OS user as actor; a legal hold
/// needs a reason and shows in `session show`.
#[test]
fn issue_11_an_evidence_bundle_verifies_with_stock_tools_and_fails_when_altered() {
    let Some((_sshd, b, vera)) = setup() else {
        return;
    };
    // `-tt` with no terminal on this side: the client asks for a 0x0 pty.
    let out = b
        .ssh_with(&vera, &["-tt"], "vera+mri-01")
        .arg("echo sized-session")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(text(&out).0.contains("sized-session"), "{:?}", text(&out));
    let out = b
        .ssh(&vera, "vera+mri-01")
        .arg("echo bundle-proof-0042; echo second-line; echo third-line")
        .output()
        .unwrap();
    assert!(text(&out).0.contains("second-line"), "{:?}", text(&out));
    let (d, _, _) = stop_after_the_session(b);
    // Both sessions may have started in the same second: tell them apart by their recording.
    let sessions = d.run(&["session", "list", "--json"]).ok().json();
    let recording = |s: &serde_json::Value| s["recordings"][0]["path"].as_str().unwrap().to_owned();
    let (exec, tty): (Vec<_>, Vec<_>) = sessions
        .as_array()
        .unwrap()
        .iter()
        .partition(|s| recording(s).ends_with(".exec"));
    assert_eq!((exec.len(), tty.len()), (1, 1), "{sessions}");
    let (id, path, tty) = (
        exec[0]["id"].as_str().unwrap().to_owned(),
        PathBuf::from(recording(exec[0])),
        tty[0],
    );
    let cast = chaperone_recorder::parse_cast(
        std::fs::File::open(tty["recordings"][0]["path"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert!(
        cast.header.width >= 20 && cast.header.height >= 5,
        "-tt from a non-terminal recorded {}x{}",
        cast.header.width,
        cast.header.height
    );
    assert!(cast.text().contains("sized-session"), "{}", cast.text());

    // The exec's .cast plays line by line: every line starts at the left margin.
    let exported = d.path().join("exec.cast");
    d.run(&["session", "export", &id, "-o", exported.to_str().unwrap()])
        .ok();
    if let Some(played) = crate::ssh::asciinema_cat(&exported) {
        assert!(
            played.contains("bundle-proof-0042\r\nsecond-line\r\nthird-line\r\n"),
            "{played:?}"
        );
    }

    // A legal hold needs a reason, and shows.
    d.run(&["session", "hold", &id]).fails(2);
    d.run(&["session", "hold", &id, "--reason", " "]).fails(1);
    d.run(&["session", "hold", &id, "--reason", "case 7 (counsel)"])
        .ok();
    d.run(&["session", "hold", &id, "--reason", "again"])
        .fails(1);
    let show = d.run(&["session", "show", &id]);
    assert!(
        show.ok().stdout().contains("on legal hold") && show.stdout().contains("case 7"),
        "{}",
        show.stdout()
    );
    let json = d.run(&["session", "show", &id, "--json"]).ok().json();
    assert_eq!(json["hold"]["reason"], "case 7 (counsel)");
    assert_eq!(json["retention"]["held"], true);
    d.run(&["session", "release", &id, "--reason", "case closed"])
        .ok();
    assert!(
        d.run(&["session", "list"])
            .ok()
            .stdout()
            .contains("forever")
    );

    let bundle = d.path().join("bundle.tar");
    let export = d.run(&["evidence", "export", &id, "-o", bundle.to_str().unwrap()]);
    assert!(
        export.ok().stdout().contains("ssh-keygen -Y verify"),
        "{}",
        export.stdout()
    );
    // Never overwritten.
    d.run(&["evidence", "export", &id, "-o", bundle.to_str().unwrap()])
        .fails(1);
    let signer = d.run(&["evidence", "signer"]).ok().stdout();
    assert!(
        signer.starts_with("chaperone namespaces=\"chaperone-evidence\" ssh-ed25519 "),
        "{signer}"
    );

    let unpacked = untar(&bundle, &d.path().join("good"), &id);
    assert_eq!(
        std::fs::read_to_string(unpacked.join("allowed_signers")).unwrap(),
        signer
    );
    let readme = std::fs::read_to_string(unpacked.join("README.txt")).unwrap();
    assert!(readme.contains(chaperone::evidence::bundle::VERIFY_SIGNATURE));
    assert!(readme.contains(chaperone::evidence::bundle::VERIFY_SUMS));
    assert!(
        readme.contains("Only the files SHA256SUMS lists are evidence"),
        "{readme}"
    );
    // The hospital's log says what it signed: the digest of this SHA256SUMS, after the export event the
    // README names, so an inspector can have a bundle confirmed (one signed with a stolen key has none).
    let sums = chaperone_recorder::sha256_file(unpacked.join("SHA256SUMS")).unwrap();
    let signed = events(&d, "evidence.signed");
    assert_eq!(signed.lines().count(), 1, "{signed}");
    assert!(
        signed.contains(&format!("\"sums_sha256\":\"{sums}\"")),
        "{signed}"
    );
    let export_seq = sqlite_query(
        &db(&d),
        "SELECT seq FROM audit_events WHERE action = 'evidence.export'",
    );
    let export_seq = export_seq.trim();
    assert!(
        signed.contains(&format!("\"export\":{export_seq}")),
        "{signed}"
    );
    assert!(
        readme.contains(&format!("audit event {export_seq} (this export)")),
        "{readme}"
    );
    // Vouched for by the session's own end, not by a sweep that found the file afterwards.
    let described: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(unpacked.join("session.json")).unwrap())
            .unwrap();
    assert_eq!(
        described["recordings"][0]["recovered"], false,
        "{described}"
    );
    let recorded = std::fs::read(&path).unwrap();
    let file_name = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        std::fs::read(unpacked.join("recordings").join(file_name)).unwrap(),
        recorded,
        "the recording is in the bundle byte for byte"
    );
    let derived = format!("{}.cast", file_name.trim_end_matches(".exec"));
    assert_eq!(
        std::fs::read(unpacked.join("recordings").join(derived)).unwrap(),
        std::fs::read(&exported).unwrap(),
        "the bundle's derived .cast is the one `session export` writes"
    );
    let audit = std::fs::read_to_string(unpacked.join("audit.jsonl")).unwrap();
    for action in [
        "session.start",
        "session.end",
        "session.hold",
        "evidence.export",
    ] {
        assert!(
            audit.contains(&format!("\"{action}\"")),
            "{action}: {audit}"
        );
    }
    // The start records the asset's zone: retention reads it from the chain, not the asset's row.
    let start = audit
        .lines()
        .find(|l| l.contains("\"session.start\""))
        .unwrap();
    let start: serde_json::Value = serde_json::from_str(start).unwrap();
    let detail: serde_json::Value = match &start["detail"] {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    assert!(
        detail["zone"].as_str().is_some_and(|z| !z.is_empty()),
        "{start}"
    );
    let (ok, out) = sh(&unpacked, chaperone::evidence::bundle::VERIFY_SIGNATURE);
    assert!(ok, "ssh-keygen -Y verify: {out}");
    assert!(
        out.contains("Good \"chaperone-evidence\" signature"),
        "{out}"
    );
    let (ok, out) = sh(&unpacked, chaperone::evidence::bundle::VERIFY_SUMS);
    assert!(ok, "sha256sum -c: {out}");
    assert!(
        out.contains(&format!("recordings/{file_name}: OK")),
        "{out}"
    );
    let verify = d.run(&["evidence", "verify", bundle.to_str().unwrap()]);
    assert!(
        verify.ok().stdout().contains("intact")
            && verify
                .stdout()
                .contains(&format!("evidence.signed event with sums_sha256 {sums}")),
        "{}",
        verify.stdout()
    );

    // One byte of the recording changed inside the tar.
    let tar = std::fs::read(&bundle).unwrap();
    let at = tar
        .windows(17)
        .position(|w| w == b"bundle-proof-0042")
        .unwrap();
    let mut altered = tar.clone();
    altered[at + 16] = b'7';
    let altered_tar = d.path().join("altered.tar");
    std::fs::write(&altered_tar, &altered).unwrap();
    let unpacked = untar(&altered_tar, &d.path().join("altered"), &id);
    let (ok, out) = sh(&unpacked, chaperone::evidence::bundle::VERIFY_SUMS);
    assert!(
        !ok && out.contains(&format!("recordings/{file_name}: FAILED")),
        "{out}"
    );
    let verify = d.run(&["evidence", "verify", altered_tar.to_str().unwrap()]);
    assert!(
        verify.fails(1).stderr().contains("ALTERED"),
        "{}",
        verify.stderr()
    );
    // …and SHA256SUMS rewritten to match it: now the signature does not hold.
    let forged =
        chaperone_recorder::sha256_file(unpacked.join("recordings").join(file_name)).unwrap();
    let vouched = chaperone_recorder::sha256_file(&path).unwrap();
    let sums = std::fs::read_to_string(unpacked.join("SHA256SUMS")).unwrap();
    assert!(sums.contains(&vouched));
    std::fs::write(unpacked.join("SHA256SUMS"), sums.replace(&vouched, &forged)).unwrap();
    let (ok, out) = sh(&unpacked, chaperone::evidence::bundle::VERIFY_SUMS);
    assert!(ok, "{out}");
    let (ok, out) = sh(&unpacked, chaperone::evidence::bundle::VERIFY_SIGNATURE);
    assert!(
        !ok,
        "ssh-keygen -Y verify accepted a rewritten SHA256SUMS: {out}"
    );
    let (ok, out) = sh(
        &d.path().join("altered"),
        &format!("tar -cf ../forged.tar session-{id}"),
    );
    assert!(ok, "{out}");
    let verify = d.run(&[
        "evidence",
        "verify",
        d.path().join("forged.tar").to_str().unwrap(),
    ]);
    assert!(
        verify
            .fails(1)
            .stderr()
            .contains("does not match SHA256SUMS"),
        "{}",
        verify.stderr()
    );

    // Who looked: play, export, the bundle and each `session show`, as the OS user.
    d.run(&["session", "play", &id, "--max-wait", "0"]).ok();
    let views = events(&d, "recording.view");
    assert_eq!(views.lines().count(), 4, "{views}");
    assert_eq!(views.matches("\"how\":\"show\"").count(), 2, "{views}");
    assert!(
        views
            .lines()
            .all(|l| l.starts_with("os:") && l.contains(&format!("session:{id}"))),
        "{views}"
    );
    assert!(
        views.contains("\"how\":\"export\"") && views.contains("\"how\":\"play\""),
        "{views}"
    );
    // The refused second export (its file exists) exported nothing and is not an export.
    let exports = events(&d, "evidence.export");
    assert_eq!(exports.lines().count(), 1, "{exports}");
    assert!(exports.starts_with("os:"), "{exports}");
    // …and the session's history says who looked.
    let show = d.run(&["session", "show", &id]).ok().stdout();
    let looked: Vec<&str> = show.lines().filter(|l| l.starts_with("looked:")).collect();
    assert_eq!(looked.len(), 6, "{show}");
    let shows = looked
        .iter()
        .filter(|l| l.contains("(show via cli"))
        .count();
    assert_eq!(shows, 3, "two before, and this one: {show}");
    let looked: Vec<&str> = looked
        .into_iter()
        .filter(|l| !l.contains("(show via cli"))
        .collect();
    assert!(
        looked[0].contains("recording.view (export via cli")
            && looked[1].contains("evidence.export (bundle via cli")
            && looked[2].contains("recording.view (play via cli"),
        "{show}"
    );
    let json = d.run(&["session", "show", &id, "--json"]).ok().json();
    assert_eq!(json["looked"].as_array().unwrap().len(), 7, "{json}");
    assert_eq!(json["recordings"][0]["evidence"]["status"], "vouched");
    d.run(&["audit", "verify"]).ok();
}

/// Session `id` (vendor `alice` = `v`, asset `a`, grant `g`) recorded to `path`, whose digest is
/// `sha`: started a minute before `end` and ended then, with the two events a real session audits (its
/// start naming the file and the asset's zone, radiology; its end vouching for the digest).
async fn recorded_session(
    tx: &mut chaperone::store::Tx,
    (v, a, g): (i64, i64, i64),
    id: &str,
    path: &Path,
    sha: &str,
    end: i64,
) {
    use chaperone::audit::AuditEvent;
    use chaperone::store::NewSession;
    use serde_json::json;

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
        end - 60,
    )
    .await
    .unwrap();
    let rid = tx
        .insert_recording(id, "exec-stream-v1", path.to_str().unwrap(), end - 60)
        .await
        .unwrap();
    tx.audit(
        AuditEvent::new(
            "vendor:alice",
            Action::SessionStart,
            format!("session:{id}"),
            json!({"grant": g, "zone": "radiology", "recording": path.to_str().unwrap()}),
        ),
        end - 60,
    )
    .await
    .unwrap();
    tx.close_recording(rid, sha, 5, end).await.unwrap();
    tx.end_session(id, "exit", "closed", 1, 2, end)
        .await
        .unwrap();
    tx.audit(
        AuditEvent::new(
            "vendor:alice",
            Action::SessionEnd,
            format!("session:{id}"),
            json!({"grant": g, "recording": rid, "recording_sha256": sha}),
        ),
        end,
    )
    .await
    .unwrap();
}

/// Issue 11: retention with an explicit `now` deletes the file of an expired recording (its row keeps
/// the digest, marked deleted; `recording.deleted` audited), keeps a held session's recording until the
/// hold is released, keeps what its zone keeps longer, and never deletes twice; on SQLite and
/// PostgreSQL.
#[tokio::test]
async fn issue_11_retention_deletes_expired_recordings_and_keeps_held_ones() {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chaperone::audit::AuditEvent;
    use chaperone::config::{RecordingConfig, Retain};
    use chaperone::evidence::retention::{Swept, sweep};
    use chaperone::evidence::{Integrity, integrity};
    use serde_json::json;

    use crate::store::{asset, grant, on_both_with_url, raw, vendor};

    const DAY: i64 = 86_400;
    on_both_with_url(|store, url| async move {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir(&recordings).unwrap();
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await; // zone radiology
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        let ended = 1_000_000;
        let mut files = BTreeMap::new();
        for (id, end) in [
            ("s-old", ended),
            ("s-held", ended),
            ("s-new", ended + 20 * DAY),
        ] {
            let path = recordings.join(format!("{id}.exec"));
            std::fs::write(&path, id).unwrap();
            let sha = chaperone_recorder::sha256_file(&path).unwrap();
            recorded_session(&mut tx, (v, a, g), id, &path, &sha, end).await;
            files.insert(id, (path, sha));
        }
        tx.commit("t").await.unwrap();
        let files: BTreeMap<&str, PathBuf> =
            files.into_iter().map(|(id, (p, _))| (id, p)).collect();
        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.hold_session("s-held", "os:auditor", "case 7", ended)
                .await
                .unwrap()
        );
        assert!(
            !tx.hold_session("s-held", "os:auditor", "again", ended)
                .await
                .unwrap()
        );
        tx.audit(
            AuditEvent::new(
                "os:auditor",
                Action::SessionHold,
                "session:s-held",
                json!({"reason": "case 7"}),
            ),
            ended,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();

        let days = |n: u64| Retain::For(Duration::from_secs(n * 86_400));
        let mut config = RecordingConfig {
            dir: recordings.clone(),
            record_input: false,
            max_bytes: None,
            signing_key: dir.path().join("key"),
            retain: days(30),
            zone_retain: BTreeMap::from([("radiology".to_owned(), days(90))]),
        };
        // The zone keeps 90 days: nothing is due at day 31.
        let pass = |config: RecordingConfig, now: i64| {
            let store = store.clone();
            async move { sweep(&store, &config, "node:test", now).await.unwrap() }
        };
        assert_eq!(
            pass(config.clone(), ended + 31 * DAY).await,
            Swept::default()
        );
        assert!(files.values().all(|f| f.exists()));
        // The asset's row moved to a zone that keeps 30 days (as whoever writes the database could):
        // the chain recorded radiology at the start, so nothing goes sooner.
        raw(&url, "UPDATE assets SET zone = 'other'").await;
        assert_eq!(
            pass(config.clone(), ended + 31 * DAY).await,
            Swept::default()
        );
        assert!(files.values().all(|f| f.exists()));
        raw(&url, "UPDATE assets SET zone = 'radiology'").await;
        // Without the zone's rule, 30 days: the old one goes, the held one and the newer one stay.
        config.zone_retain.clear();
        let now = ended + 31 * DAY;
        // But not while its file says something else than what the chain vouches for: kept, as the
        // evidence of that change, never turned into a policy's "deleted".
        std::fs::write(&files["s-old"], "s-olD").unwrap();
        let swept = pass(config.clone(), now).await;
        assert_eq!((swept.deleted, swept.altered), (0, 1), "{swept:?}");
        assert!(files["s-old"].exists());
        std::fs::write(&files["s-old"], "s-old").unwrap();
        let swept = pass(config.clone(), now).await;
        assert_eq!((swept.deleted, swept.not_here), (1, 0), "{swept:?}");
        assert!(!files["s-old"].exists());
        assert!(files["s-held"].exists() && files["s-new"].exists());
        let mut old = store.session("s-old").await.unwrap();
        assert_eq!(old.recordings[0].deleted_at, Some(now));
        let old_sha = old.recordings[0].sha256.clone().unwrap();
        let held = store.session("s-held").await.unwrap();
        assert_eq!(held.hold.as_ref().unwrap().reason, "case 7");
        assert_eq!(held.recordings[0].deleted_at, None);
        // A second pass at the same time deletes nothing again.
        assert_eq!(pass(config.clone(), now).await.deleted, 0);

        // Both decisions are in the audit log.
        let deleted = store
            .audit_events_about("session:s-old", &["recording.deleted"], 10)
            .await
            .unwrap();
        assert_eq!(deleted.len(), 1, "{deleted:?}");
        assert_eq!(deleted[0].actor, "node:test");
        let detail: serde_json::Value = serde_json::from_str(&deleted[0].detail).unwrap();
        assert_eq!(detail["sha256"], old_sha.as_str());
        assert_eq!(detail["kept_until"], ended + 30 * DAY);
        assert_eq!(
            store
                .audit_events_about("session:s-held", &["session.hold"], 10)
                .await
                .unwrap()
                .len(),
            1
        );
        // The deleted recording is never played or exported as if it were there; its status says
        // deleted, from the chained recording.deleted event (not the row alone).
        let ev = chaperone::evidence::evidence(&store, &mut old)
            .await
            .unwrap();
        let err = chaperone::evidence::prove(&recordings, &old.recordings[0], &ev[0]).unwrap_err();
        assert!(err.to_string().contains("deleted by retention"), "{err}");
        assert_eq!(
            integrity(&recordings, &old.recordings[0], &ev[0]),
            Integrity::Deleted {
                seq: deleted[0].seq,
                at: now
            }
        );
        // Its audit trail can still be handed over signed: the bundle names the recording, says it
        // was deleted by retention, and carries the deletion; it verifies.
        {
            use chaperone::evidence::{bundle, signer};
            let key = signer::Signer::create(&config.signing_key).unwrap();
            let trusted = signer::allowed_signers(&key, &config.signing_key).unwrap();
            let (_, tar) =
                bundle::export(&store, &config, "s-old", "os:test", "cli", now, Vec::new())
                    .await
                    .unwrap();
            let verified = bundle::verify(&tar[..], &trusted).unwrap();
            assert_eq!((verified.recordings, verified.absent), (0, 1));
            // Named by the deletion that says so, with the digest the chain vouched for.
            let text = String::from_utf8_lossy(&tar);
            assert!(
                text.contains(&format!("\"audit_seq\": {}", deleted[0].seq))
                    && text.contains(&format!("\"sha256\": \"{old_sha}\"")),
                "{text}"
            );
            // A deletion the log records while the file is still here is not taken for one.
            std::fs::write(&files["s-old"], "s-old").unwrap();
            let refused =
                bundle::export(&store, &config, "s-old", "os:test", "cli", now, Vec::new())
                    .await
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
            assert!(
                refused.contains("still in the recordings directory"),
                "{refused}"
            );
            std::fs::remove_file(&files["s-old"]).unwrap();
        }
        // The newer one is intact; its file gone without a recorded deletion is missing; a row that
        // claims a deletion no audit event records is ALTERED.
        let mut new = store.session("s-new").await.unwrap();
        let new_ev = chaperone::evidence::evidence(&store, &mut new)
            .await
            .unwrap();
        assert_eq!(
            integrity(&recordings, &new.recordings[0], &new_ev[0]).word(),
            "intact"
        );
        let moved_away = recordings.join("s-new.moved");
        std::fs::rename(&files["s-new"], &moved_away).unwrap();
        let missing = integrity(&recordings, &new.recordings[0], &new_ev[0]);
        assert_eq!(missing.word(), "missing", "{missing:?}");
        std::fs::rename(&moved_away, &files["s-new"]).unwrap();
        let mut forged = new.recordings[0].clone();
        forged.deleted_at = Some(now);
        let altered = integrity(&recordings, &forged, &new_ev[0]);
        assert_eq!(altered.word(), "ALTERED", "{altered:?}");

        // Its row released without the audit log saying so (as whoever writes the database could):
        // the chain still holds it, so the pass deletes nothing.
        let mut tx = store.begin().await.unwrap();
        assert!(tx.release_session("s-held").await.unwrap());
        tx.audit(
            AuditEvent::new("os:dba", Action::AssetAdd, "asset:other", json!({})),
            now,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(pass(config.clone(), now + 1).await.deleted, 0);
        assert!(files["s-held"].exists());

        // Released as the audit log records it, the held one goes at the next pass; the newer one
        // when its time comes.
        let mut tx = store.begin().await.unwrap();
        tx.audit(
            AuditEvent::new(
                "os:auditor",
                Action::SessionRelease,
                "session:s-held",
                json!({}),
            ),
            now,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(pass(config.clone(), now + 1).await.deleted, 1);
        assert!(!files["s-held"].exists() && files["s-new"].exists());
        assert_eq!(pass(config.clone(), ended + 50 * DAY).await.deleted, 1);
        assert!(!files["s-new"].exists());
    })
    .await;
}

/// Issue 11: the bundle a web download sends (`evidence::bundle::export_stream`), on SQLite and
/// PostgreSQL: the chunks form a bundle that `evidence verify` accepts, the export is audited with
/// the staff actor and `via: web`, and a recording altered on disk is an error before the first byte,
/// so a download never starts with a bundle that is not intact.
#[tokio::test]
async fn issue_11_a_download_streams_the_bundle_and_refuses_an_altered_recording_first() {
    use chaperone::audit::AuditEvent;
    use chaperone::config::{RecordingConfig, Retain};
    use chaperone::evidence::bundle::{export_stream, verify};
    use chaperone::evidence::signer::{Signer, allowed_signers};
    use chaperone::store::NewSession;
    use serde_json::json;

    use crate::store::{asset, grant, on_both, vendor};

    on_both(|store| async move {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir(&recordings).unwrap();
        let key = dir.path().join("evidence_ed25519_key");
        let trusted = allowed_signers(&Signer::create(&key).unwrap(), &key).unwrap();
        let config = RecordingConfig {
            dir: recordings.clone(),
            record_input: false,
            max_bytes: None,
            signing_key: key,
            retain: Retain::Forever,
            zone_retain: Default::default(),
        };
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let cast =
            b"{\"version\":2,\"width\":80,\"height\":24}\n[0.5,\"o\",\"download-proof\\r\\n\"]\n";
        let path = recordings.join("s-web.cast");
        std::fs::write(&path, cast).unwrap();
        let sha = chaperone_recorder::sha256_file(&path).unwrap();
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        tx.insert_session(
            &NewSession {
                id: "s-web",
                vendor_id: v,
                asset_id: a,
                grant_id: g,
                kind: "shell",
                service: "ssh",
                client_addr: "127.0.0.1:5",
                detail: "",
                node: "node-a",
            },
            1_000,
        )
        .await
        .unwrap();
        let rid = tx
            .insert_recording("s-web", "asciicast-v2", path.to_str().unwrap(), 1_000)
            .await
            .unwrap();
        tx.close_recording(rid, &sha, cast.len() as i64, 1_060)
            .await
            .unwrap();
        tx.end_session("s-web", "exit", "closed", 1, 2, 1_060)
            .await
            .unwrap();
        tx.audit(
            AuditEvent::new(
                "vendor:alice",
                Action::SessionEnd,
                "session:s-web",
                json!({"grant": g, "recording": rid, "recording_sha256": sha}),
            ),
            1_060,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();

        let export_holding = |place: std::sync::Arc<()>| {
            export_stream(
                store.clone(),
                config.clone(),
                "s-web".to_owned(),
                "staff:ines".to_owned(),
                "web".to_owned(),
                2_000,
                place,
            )
        };
        let export = || export_holding(std::sync::Arc::new(()));
        // What the download holds (its place under the web's bounds) goes with the writer, not with
        // the caller: a browser gone before the first chunk (the future dropped) stops nothing, and its
        // place comes back only once the writer has stopped.
        let place = std::sync::Arc::new(());
        let gone =
            tokio::time::timeout(std::time::Duration::ZERO, export_holding(place.clone())).await;
        assert!(gone.is_err(), "polled once, then dropped");
        assert_eq!(
            std::sync::Arc::strong_count(&place),
            2,
            "released with the caller"
        );
        let mut waited = 0;
        while std::sync::Arc::strong_count(&place) > 1 {
            assert!(waited < 500, "the writer never gave its place back");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        let (first, mut rest) = export().await.unwrap();
        let mut tar = first.to_vec();
        while let Some(chunk) = rest.recv().await {
            tar.extend_from_slice(&chunk.unwrap());
        }
        let verified = verify(&tar[..], &trusted).unwrap();
        assert_eq!(
            (verified.recordings, verified.dir.as_str()),
            (1, "session-s-web")
        );
        assert!(tar.windows(14).any(|w| w == b"download-proof"));
        let exports = store
            .audit_events_about("session:s-web", &["evidence.export"], 10)
            .await
            .unwrap();
        // The one whose download left before its first byte too: the bundle was made all the same.
        assert_eq!(exports.len(), 2, "{exports:?}");
        // Each signed bundle is on record with the digest of its SHA256SUMS, this download's too.
        let signed = store
            .audit_events_about("session:s-web", &["evidence.signed"], 10)
            .await
            .unwrap();
        assert_eq!(signed.len(), 2, "{signed:?}");
        assert!(
            signed[1].detail.contains(&verified.sums_sha256)
                && signed[1]
                    .detail
                    .contains(&format!("\"export\":{}", exports[1].seq)),
            "{signed:?}"
        );
        assert_eq!(exports[0].actor, "staff:ines");
        assert!(
            exports[0].detail.contains("\"via\":\"web\""),
            "{}",
            exports[0].detail
        );

        // One byte changed on disk: refused before a byte is sent.
        let mut altered = cast.to_vec();
        altered[60] ^= 1;
        std::fs::write(&path, altered).unwrap();
        let err = export().await.unwrap_err();
        assert!(err.to_string().contains("ALTERED"), "{err}");
    })
    .await;
}

/// Whoever can write the database but holds no key cannot have retention delete a held recording by
/// rewriting or deleting its `session.hold` event and clearing the row's hold. Finding no hold is a
/// proof of absence: a pass walks the chain from the session's events to the head afresh, so the
/// rewritten or missing event breaks it and nothing is deleted. Before, each walk stopped at the first
/// hash this process had verified earlier (one every 1024 events), and a hold that far past the
/// session's end was never crossed again: the pass deleted the file. The same for evidence bundles,
/// which say every event about their session is in them.
#[tokio::test]
async fn retention_and_bundles_see_a_hold_event_removed_behind_what_this_process_verified() {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chaperone::audit::AuditEvent;
    use chaperone::config::{RecordingConfig, Retain};
    use chaperone::evidence::retention::sweep;
    use serde_json::json;

    use crate::store::{asset, grant, on_both_with_url, raw, vendor};

    const DAY: i64 = 86_400;
    on_both_with_url(|store, url| async move {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir(&recordings).unwrap();
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let ended = 1_000_000;
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        let id = "s-held";
        let path = recordings.join(format!("{id}.exec"));
        let header = chaperone_recorder::ExecHeader {
            timestamp: ended - 60,
            title: None,
            command: Some("uptime".into()),
            env: BTreeMap::new(),
        };
        let sha = chaperone_recorder::ExecWriter::create(&path, &header)
            .unwrap()
            .finish()
            .unwrap()
            .sha256_hex;
        recorded_session(&mut tx, (v, a, g), id, &path, &sha, ended).await;
        // Two checkpoints' worth of other events between the end and the hold...
        for n in 0..2100 {
            tx.audit(
                AuditEvent::new(
                    "os:auditor",
                    Action::RecordingView,
                    format!("session:other-{n}"),
                    json!({}),
                ),
                ended + 1,
            )
            .await
            .unwrap();
        }
        assert!(
            tx.hold_session(id, "os:auditor", "case 7", ended + 2)
                .await
                .unwrap()
        );
        tx.audit(
            AuditEvent::new(
                "os:auditor",
                Action::SessionHold,
                format!("session:{id}"),
                json!({"reason": "case 7"}),
            ),
            ended + 2,
        )
        .await
        .unwrap();
        // ...and as many after it: the hold sits between two checkpoints, far from any event about the
        // session read later (a bundle's own `evidence.export`).
        for n in 0..2100 {
            tx.audit(
                AuditEvent::new(
                    "os:auditor",
                    Action::RecordingView,
                    format!("session:later-{n}"),
                    json!({}),
                ),
                ended + 3,
            )
            .await
            .unwrap();
        }
        tx.commit("t").await.unwrap();
        let hold = store
            .audit_events_about(&format!("session:{id}"), &["session.hold"], 10)
            .await
            .unwrap()[0]
            .seq;

        let config = RecordingConfig {
            dir: recordings.clone(),
            record_input: false,
            max_bytes: None,
            signing_key: dir.path().join("key"),
            retain: Retain::For(Duration::from_secs(30 * 86_400)),
            zone_retain: BTreeMap::new(),
        };
        let now = ended + 31 * DAY;
        // This process verifies the whole chain once (the pass walks it, noting checkpoints).
        assert_eq!(
            sweep(&store, &config, "node:test", now)
                .await
                .unwrap()
                .deleted,
            0
        );
        let bundle = || {
            let (store, config) = (store.clone(), config.clone());
            async move {
                chaperone::evidence::bundle::export(
                    &store,
                    &config,
                    id,
                    "os:test",
                    "cli",
                    now,
                    Vec::new(),
                )
                .await
                .map(|_| ())
            }
        };
        chaperone::evidence::signer::Signer::create(&config.signing_key).unwrap();
        bundle().await.unwrap();
        let clear = "UPDATE sessions SET held_at = NULL, held_by = NULL, hold_reason = NULL \
                     WHERE id = 's-held'";
        for (tamper, undo) in [
            (
                format!("UPDATE audit_events SET subject = 'session:other' WHERE seq = {hold}"),
                Some(format!(
                    "UPDATE audit_events SET subject = 'session:s-held' WHERE seq = {hold}"
                )),
            ),
            (format!("DELETE FROM audit_events WHERE seq = {hold}"), None),
        ] {
            raw(&url, &tamper).await;
            raw(&url, clear).await;
            let swept = sweep(&store, &config, "node:test", now).await.unwrap();
            assert_eq!(swept.deleted, 0, "{tamper}: {swept:?}");
            assert!(path.exists(), "{tamper}");
            assert!(
                bundle().await.is_err(),
                "{tamper}: a bundle without the hold"
            );
            if let Some(undo) = undo {
                raw(&url, &undo).await;
            }
        }
    })
    .await;
}
