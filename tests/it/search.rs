//! The session history and the full-text index of recordings (migration 0010), on SQLite and on
//! PostgreSQL: the same filters and the same text search find the same sessions on both; the indexer
//! only indexes what the audit chain vouches for.

use std::collections::BTreeMap;
use std::time::Duration;

use chaperone::audit::{Action, AuditEvent};
use chaperone::search_index::{Indexer, Outcome};
use chaperone::secrets::SecretsKey;
use chaperone::store::{HistoryFilter, NewSession, Store};
use chaperone_recorder::{CastHeader, CastWriter};
use serde_json::json;

use crate::store::{asset, grant, on_both, vendor};

/// A closed shell session `id` whose recording printed `output`, started at `at`, vouched for by its
/// `session.end` event as the pipeline writes it.
async fn recorded(
    store: &Store,
    dir: &std::path::Path,
    who: (i64, i64, i64),
    id: &str,
    at: i64,
    output: &[&str],
) -> i64 {
    let events: Vec<Ev> = output.iter().map(|o| Ev::Out(o)).collect();
    recorded_events(store, dir, who, id, at, (80, 24), &events).await
}

/// One event of a test recording: output, or a window change to (cols, rows).
enum Ev<'a> {
    Out(&'a str),
    Resize(u16, u16),
}

/// [`recorded`], on a terminal of `size` and with window changes: the events 100 ms apart.
async fn recorded_events(
    store: &Store,
    dir: &std::path::Path,
    (v, a, g): (i64, i64, i64),
    id: &str,
    at: i64,
    size: (u16, u16),
    events: &[Ev<'_>],
) -> i64 {
    let path = dir.join(format!("{id}.cast"));
    let mut w = CastWriter::create(
        &path,
        CastHeader {
            width: size.0,
            height: size.1,
            timestamp: at,
            title: None,
            command: None,
            env: BTreeMap::new(),
            markers_attributed: false,
        },
    )
    .unwrap();
    for (i, e) in events.iter().enumerate() {
        let t = Duration::from_millis(100 * i as u64 + 100);
        match e {
            Ev::Out(o) => w.output(t, o.as_bytes()).unwrap(),
            Ev::Resize(c, r) => w.resize(t, *c, *r).unwrap(),
        }
    }
    let done = w.finish().unwrap();
    let path = path.display().to_string();
    // The start event's actor is the session's vendor, as a real start writes it.
    let vendors = store.vendors().await.unwrap();
    let actor = format!(
        "vendor:{}",
        vendors.iter().find(|x| x.id == v).unwrap().name
    );
    let mut tx = store.begin().await.unwrap();
    tx.insert_session(
        &NewSession {
            id,
            vendor_id: v,
            asset_id: a,
            grant_id: g,
            kind: "shell",
            service: "ssh",
            client_addr: "127.0.0.1:5",
            detail: "",
            node: "node-a",
        },
        at,
    )
    .await
    .unwrap();
    let r = tx
        .insert_recording(id, "asciicast-v2", &path, at)
        .await
        .unwrap();
    tx.audit(
        AuditEvent::new(
            actor.as_str(),
            Action::SessionStart,
            format!("session:{id}"),
            json!({"recording": path}),
        ),
        at,
    )
    .await
    .unwrap();
    tx.commit("t").await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.end_session(id, "vendor closed the session", "closed", 1, 2, at + 10)
        .await
        .unwrap();
    tx.close_recording(r, &done.sha256_hex, done.bytes as i64, at + 10)
        .await
        .unwrap();
    tx.audit(
        AuditEvent::new(
            "vendor:x",
            Action::SessionEnd,
            format!("session:{id}"),
            json!({"recording": r, "recording_sha256": done.sha256_hex}),
        ),
        at + 10,
    )
    .await
    .unwrap();
    tx.commit("t").await.unwrap();
    r
}

/// Vendor alice, asset mri-01 and alice's ssh grant on it (ids), committed with the event a commit needs.
async fn alice_on_mri(store: &Store) -> (i64, i64, i64) {
    let v = vendor(store, "alice", "SHA256:a").await;
    let a = asset(store, "mri-01").await;
    let mut tx = store.begin().await.unwrap();
    let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
    tx.audit(
        AuditEvent::new("os:t", Action::VendorAdd, "t", json!({})),
        100,
    )
    .await
    .unwrap();
    tx.commit("t").await.unwrap();
    (v, a, g)
}

fn ids(rows: &[chaperone::store::HistoryRow]) -> Vec<&str> {
    rows.iter().map(|r| r.session.id.as_str()).collect()
}

#[tokio::test]
async fn history_filters_and_text_search_agree_on_both_databases() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = SecretsKey::generate_file(&secrets_dir.path().join("k")).unwrap();
    on_both(|store| {
        let secrets = &secrets;
        async move {
            let dir = tempfile::tempdir().unwrap();
            let v = vendor(&store, "alice", "SHA256:a").await;
            let bob = vendor(&store, "bob", "SHA256:b").await;
            let a = asset(&store, "mri-01").await;
            let mut tx = store.begin().await.unwrap();
            let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
            let gb = grant(&mut tx, bob, a, &["ssh".to_owned()], 10_000).await;
            tx.audit(
                AuditEvent::new("os:t", Action::VendorAdd, "t", json!({})),
                100,
            )
            .await
            .unwrap();
            tx.commit("t").await.unwrap();
            let dirp = dir.path();
            recorded(
                &store,
                dirp,
                (v, a, g),
                "s-rm",
                1000,
                &[
                    "\x1b[1;32mvendor@mri-01\x1b[0m:~$ sudo rm -rf /var/log/scanner\r\n",
                    "done\r\n",
                ],
            )
            .await;
            recorded(&store, dirp, (v, a, g), "s-ls", 2000, &["$ ls -rf rm\r\n"]).await;
            recorded(
                &store,
                dirp,
                (bob, a, gb),
                "s-bob",
                3000,
                &["$ journalctl -u Überprüfung\r\n"],
            )
            .await;

            let indexer = Indexer::new(&store, dirp, secrets);
            assert_eq!(indexer.index_pending(5000).await.unwrap(), 3);
            assert_eq!(
                indexer.index_pending(5000).await.unwrap(),
                0,
                "indexed once"
            );

            let find = |f: HistoryFilter| {
                let store = store.clone();
                async move { store.session_history(&f, 50, 0).await.unwrap() }
            };
            let all = find(HistoryFilter::default()).await;
            assert_eq!(ids(&all), ["s-bob", "s-ls", "s-rm"], "newest first");
            assert_eq!(all[0].org, "Acme");
            assert_eq!(all[0].grant_reason, "INC-1");
            let text = |w: &str| HistoryFilter {
                words: Some(chaperone_recorder::transcript::words(w)),
                ..Default::default()
            };
            // The phrase, not the words anywhere: `ls -rf rm` has both words, not in that order.
            assert_eq!(ids(&find(text("rm -rf")).await), ["s-rm"]);
            assert_eq!(ids(&find(text("SCANNER")).await), ["s-rm"]);
            assert_eq!(ids(&find(text("überprüfung")).await), ["s-bob"]);
            assert!(find(text("nothing-like-it")).await.is_empty());
            // Escape sequences are not text: `1;32m` is not a word anybody saw.
            assert!(find(text("32m")).await.is_empty());
            let f = HistoryFilter {
                vendor: Some("alice".into()),
                since: Some(1500),
                until: Some(2500),
                ended: Some("closed".into()),
                kind: Some("shell".into()),
                ..Default::default()
            };
            assert_eq!(ids(&find(f).await), ["s-ls"]);
            let f = HistoryFilter {
                vendor: Some("bob".into()),
                words: text("rm").words,
                ..Default::default()
            };
            assert!(find(f).await.is_empty(), "filters combine");
            assert_eq!(
                ids(&store
                    .session_history(&HistoryFilter::default(), 1, 1)
                    .await
                    .unwrap()),
                ["s-ls"],
                "pages"
            );
            let hits = store
                .session_text_matches("s-rm", "rm rf", 10)
                .await
                .unwrap();
            assert_eq!(hits.len(), 1);
            let line = hits[0]
                .lines
                .iter()
                .position(|l| l.contains("rm -rf"))
                .unwrap();
            assert_eq!(
                hits[0].lines[line],
                "vendor@mri-01:~$ sudo rm -rf /var/log/scanner"
            );
            assert_eq!(hits[0].times[line], 100);
        }
    })
    .await;
}

/// What a vendor saw in a full-screen editor is found like any other text: the line they typed into a
/// config file in `vi` and saved without a pause, timed where the player shows it.
#[tokio::test]
async fn text_edited_in_a_full_screen_editor_is_found() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = SecretsKey::generate_file(&secrets_dir.path().join("k")).unwrap();
    on_both(|store| {
        let secrets = &secrets;
        async move {
            let dir = tempfile::tempdir().unwrap();
            let (v, a, g) = alice_on_mri(&store).await;
            recorded(
                &store,
                dir.path(),
                (v, a, g),
                "s-vi",
                1000,
                &[
                    "$ sudo vi /etc/ssh/sshd_config\r\n",
                    "\x1b[?1049h\x1b[H\x1b[2J\x1b[1mPort\x1b[m 22\r\n~\r\n~",
                    "\x1b[2;1HPermitRootLogin yes",
                    "\x1b[24;1H:wq\x1b[?1049l$ ",
                ],
            )
            .await;
            let indexer = Indexer::new(&store, dir.path(), secrets);
            assert_eq!(indexer.index_pending(5000).await.unwrap(), 1);
            let found = store
                .session_history(
                    &HistoryFilter {
                        words: Some(chaperone_recorder::transcript::words("permitrootlogin YES")),
                        ..Default::default()
                    },
                    10,
                    0,
                )
                .await
                .unwrap();
            assert_eq!(ids(&found), ["s-vi"]);
            let hits = store
                .session_text_matches("s-vi", "PermitRootLogin yes", 10)
                .await
                .unwrap();
            assert_eq!(hits.len(), 1);
            let line = hits[0]
                .lines
                .iter()
                .position(|l| l == "PermitRootLogin yes")
                .unwrap();
            // Shown from the output at 300 ms until the editor left at 400 ms.
            assert_eq!(hits[0].times[line], 300);
        }
    })
    .await;
}

/// A recording of very short lines does not make the search index many times its size: one line per 8
/// bytes of the file is indexed (here, past the first 100,000 lines), the rest is not.
#[tokio::test]
async fn a_recording_of_tiny_lines_indexes_as_many_as_its_size_allows() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = SecretsKey::generate_file(&secrets_dir.path().join("k")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::open(&url, crate::support::throwaway_seal())
        .await
        .unwrap();
    let (v, a, g) = alice_on_mri(&store).await;
    let tiny = "a\r\n".repeat(150_000);
    let r = recorded(
        &store,
        dir.path(),
        (v, a, g),
        "s-tiny",
        1000,
        &["first-word\r\n", &tiny, "last-word\r\n"],
    )
    .await;
    let file_len = std::fs::metadata(dir.path().join("s-tiny.cast"))
        .unwrap()
        .len();
    let indexer = Indexer::new(&store, dir.path(), &secrets);
    assert_eq!(indexer.index_pending(5000).await.unwrap(), 1);
    let lines = store.recording_index(r).await.unwrap().unwrap().lines;
    assert_eq!(lines, 100_000, "a file of {file_len} bytes");
    let found = |w: &str| {
        let store = store.clone();
        let f = HistoryFilter {
            words: Some(w.into()),
            ..Default::default()
        };
        async move { store.session_history(&f, 10, 0).await.unwrap().len() }
    };
    assert_eq!(found("first-word").await, 1);
    assert_eq!(found("last-word").await, 0);
}

/// A recording rewritten after the chain vouched for it is not indexed: its words are never found.
#[tokio::test]
async fn an_altered_recording_is_not_indexed() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = SecretsKey::generate_file(&secrets_dir.path().join("k")).unwrap();
    on_both(|store| {
        let secrets = &secrets;
        async move {
            let dir = tempfile::tempdir().unwrap();
            let (v, a, g) = alice_on_mri(&store).await;
            let r = recorded(&store, dir.path(), (v, a, g), "s1", 1000, &["innocent\r\n"]).await;
            let path = dir.path().join("s1.cast");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("innocent", "tampered")).unwrap();
            let indexer = Indexer::new(&store, dir.path(), secrets);
            let row = store.session("s1").await.unwrap().recordings[0].clone();
            assert!(matches!(
                indexer.index_recording(&row, 5000).await.unwrap(),
                Outcome::Failed(why) if why.contains("ALTERED")
            ));
            for w in ["tampered", "innocent"] {
                let f = HistoryFilter {
                    words: Some(w.into()),
                    ..Default::default()
                };
                assert!(
                    store.session_history(&f, 10, 0).await.unwrap().is_empty(),
                    "{w}"
                );
            }
            assert_eq!(
                store.recording_index(r).await.unwrap().unwrap().status,
                "failed"
            );
        }
    })
    .await;
}

/// An indexer's claim is its own: one that keeps renewing it is never taken over, and one taken over (its
/// node stalled past the claim's time) writes nothing more: not its text, not its finished index, not a
/// release of the new claim. The new indexer's index is the one kept, whole.
#[tokio::test]
async fn an_index_claim_taken_over_writes_nothing_more() {
    use chaperone::store::{CLAIM_SECS, IndexRow, NewTextChunk, NewWordsPart};
    on_both(|store| async move {
        let dir = tempfile::tempdir().unwrap();
        let (v, a, g) = alice_on_mri(&store).await;
        recorded(&store, dir.path(), (v, a, g), "s1", 1000, &["hello\r\n"]).await;
        let row = store.session("s1").await.unwrap().recordings[0].clone();
        let chunk = |body: &str| NewTextChunk {
            seq: 0,
            times: "0".into(),
            body: body.into(),
            words: body.into(),
        };
        let part = |words: &str| NewWordsPart {
            seq: 0,
            words: words.into(),
        };
        let t0 = 5000;
        let first = store
            .claim_recording_index(&row, t0)
            .await
            .unwrap()
            .unwrap();
        // Renewed, it is alive: nobody takes it, even long after it was first made.
        assert!(
            store
                .renew_recording_claim(&first, t0 + CLAIM_SECS - 10)
                .await
                .unwrap()
        );
        assert!(
            store
                .claim_recording_index(&row, t0 + CLAIM_SECS + 10)
                .await
                .unwrap()
                .is_none()
        );
        // Silent past the claim's time: taken over.
        let late = t0 + 3 * CLAIM_SECS;
        let second = store
            .claim_recording_index(&row, late)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !store
                .add_recording_text(&first, "s1", &[chunk("stale")], &[part("stale")])
                .await
                .unwrap()
        );
        assert!(!store.renew_recording_claim(&first, late + 1).await.unwrap());
        let finished = |lines| IndexRow {
            recording_id: row.id,
            session_id: "s1".into(),
            status: "indexed".into(),
            sha256: Some("x".into()),
            playback: None,
            mac: None,
            note: None,
            lines,
            indexed_at: late,
        };
        assert!(
            !store
                .finish_recording_index(&finished(7), Some(&first))
                .await
                .unwrap()
        );
        store.release_recording_index(&first).await.unwrap();
        assert_eq!(
            store.recording_index(row.id).await.unwrap().unwrap().status,
            "indexing"
        );
        assert!(
            store
                .add_recording_text(&second, "s1", &[chunk("fresh")], &[part("fresh")])
                .await
                .unwrap()
        );
        assert!(
            store
                .finish_recording_index(&finished(1), Some(&second))
                .await
                .unwrap()
        );
        let done = store.recording_index(row.id).await.unwrap().unwrap();
        assert_eq!((done.status.as_str(), done.lines), ("indexed", 1));
        let found = |w: &str| {
            let f = HistoryFilter {
                words: Some(w.into()),
                ..Default::default()
            };
            let store = store.clone();
            async move { store.session_history(&f, 10, 0).await.unwrap().len() }
        };
        assert_eq!((found("fresh").await, found("stale").await), (1, 0));
    })
    .await;
}

/// Retention deletes what the index holds of a recording with its file: its words are no longer found,
/// it has no playback index, and the indexer does not take it up again.
#[tokio::test]
async fn a_recording_deleted_by_retention_leaves_no_searchable_text() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = SecretsKey::generate_file(&secrets_dir.path().join("k")).unwrap();
    on_both(|store| {
        let secrets = &secrets;
        async move {
            let dir = tempfile::tempdir().unwrap();
            let (v, a, g) = alice_on_mri(&store).await;
            let r = recorded(
                &store,
                dir.path(),
                (v, a, g),
                "s1",
                1000,
                &["patient-list\r\n"],
            )
            .await;
            let indexer = Indexer::new(&store, dir.path(), secrets);
            assert_eq!(indexer.index_pending(5000).await.unwrap(), 1);
            let find = || async {
                let f = HistoryFilter {
                    words: Some("patient list".into()),
                    ..Default::default()
                };
                store.session_history(&f, 10, 0).await.unwrap()
            };
            assert_eq!(ids(&find().await), ["s1"]);

            let mut tx = store.begin().await.unwrap();
            assert!(tx.mark_recording_deleted(r, "s1", 9000).await.unwrap());
            tx.audit(
                AuditEvent::new(
                    "node:t",
                    Action::RecordingDeleted,
                    "session:s1",
                    json!({"recording": r}),
                ),
                9000,
            )
            .await
            .unwrap();
            tx.commit("t").await.unwrap();
            assert!(
                find().await.is_empty(),
                "the deleted recording's text is still found"
            );
            assert!(store.recording_index(r).await.unwrap().is_none());
            assert!(
                store
                    .session_text_matches("s1", "patient", 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                indexer.index_pending(9500).await.unwrap(),
                0,
                "indexed again"
            );
        }
    })
    .await;
}

/// A long recording: the session search finds a phrase that spans two chunks of the transcript (its
/// words are indexed in long parts) and one 35,000 words in (past PostgreSQL's last tsvector position,
/// 16,383: parts are shorter than that, so the phrase's order still counts).
#[tokio::test]
async fn a_long_recording_is_found_by_phrases_anywhere_in_it() {
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = SecretsKey::generate_file(&secrets_dir.path().join("k")).unwrap();
    on_both(|store| {
        let secrets = &secrets;
        async move {
            let dir = tempfile::tempdir().unwrap();
            let (v, a, g) = alice_on_mri(&store).await;
            // 4,000 lines of 10 words: `b{i}` begins line i and `e{i}` ends it; line 3,500 holds
            // `deep one` (words 35,001 and 35,002).
            let line = |i: usize| {
                let middle = if i == 3500 { "deep one" } else { "m m" };
                format!("b{i} m m m {middle} m m m e{i}\r\n")
            };
            let events: Vec<String> = (0..40)
                .map(|k| (k * 100..k * 100 + 100).map(line).collect())
                .collect();
            let refs: Vec<&str> = events.iter().map(String::as_str).collect();
            recorded(&store, dir.path(), (v, a, g), "s-long", 1000, &refs).await;
            recorded(
                &store,
                dir.path(),
                (v, a, g),
                "s-short",
                2000,
                &["e199\r\n"],
            )
            .await;
            let indexer = Indexer::new(&store, dir.path(), secrets);
            assert_eq!(indexer.index_pending(5000).await.unwrap(), 2);
            let find = |w: &str| {
                let store = store.clone();
                let f = HistoryFilter {
                    words: Some(w.to_owned()),
                    ..Default::default()
                };
                async move { store.session_history(&f, 10, 0).await.unwrap() }
            };
            // The transcript's first chunk ends with line 199: its index cannot see the phrase...
            assert!(
                store
                    .session_text_matches("s-long", "e199 b200", 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "the test's phrase does not span two chunks"
            );
            // ...the session search does.
            assert_eq!(ids(&find("e199 b200").await), ["s-long"]);
            assert_eq!(ids(&find("e199").await), ["s-short", "s-long"]);
            assert_eq!(ids(&find("deep one").await), ["s-long"]);
            assert!(find("one deep").await.is_empty(), "order counts");
            assert!(find("b3500 deep").await.is_empty(), "adjacency counts");
            assert_eq!(ids(&find("e3999").await), ["s-long"], "the last word");
            // The transcript finds the line 35,000 words in.
            let hits = store
                .session_text_matches("s-long", "deep one", 10)
                .await
                .unwrap();
            assert_eq!(hits.len(), 1);
            assert!(hits[0].lines.iter().any(|l| l.starts_with("b3500 ")));
        }
    })
    .await;
}

/// The id of session `id`'s first recording.
fn store_recording_id(
    rt: &tokio::runtime::Runtime,
    config: &chaperone::config::Config,
    id: &str,
) -> i64 {
    rt.block_on(async {
        let store = Store::open(&config.database.url, crate::support::seal_of(config))
            .await
            .unwrap();
        let rid = store.session(id).await.unwrap().recordings[0].id;
        store.close().await;
        rid
    })
}

/// A playback index an older build made (sealed, so not altered, but without this build's
/// `INDEX_VERSION`: its segments cut by older rules) is built again when the player opens it, not
/// served because its MAC holds; and the recording's text stays searchable.
#[test]
fn a_playback_index_an_older_build_made_is_built_again_before_it_is_played() {
    use crate::support::DataDir;
    use crate::support::bastion::Bastion;
    use crate::support::web::Approver;
    use chaperone_recorder::playback::INDEX_VERSION;

    let data = DataDir::init();
    let config = chaperone::config::Config::load(&data.config()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = config.recording.dir.clone();
    let rid = rt.block_on(async {
        let store = Store::open(&config.database.url, crate::support::seal_of(&config))
            .await
            .unwrap();
        let who = alice_on_mri(&store).await;
        let rid = recorded(
            &store,
            &dir,
            who,
            "s-old",
            1_000_000,
            &["$ uptime\r\n", "up 3 days\r\n"],
        )
        .await;
        // And a device that fills the screen over and over (more than its output pays for).
        let fills = "\x1b#8".repeat(20_000);
        recorded(
            &store,
            &dir,
            who,
            "s-fill",
            1_000_050,
            &[&fills, "done\r\n"],
        )
        .await;
        // And one wrapped line across the largest screen, the window narrowed to a column and widened
        // again, over and over (seconds a cycle for the browser's emulator).
        let line = "x".repeat(1000 * 499);
        let mut narrowed = Vec::new();
        for _ in 0..3 {
            narrowed.extend([
                Ev::Resize(1000, 500),
                Ev::Out(&line),
                Ev::Resize(999, 500),
                Ev::Resize(1, 500),
            ]);
        }
        narrowed.push(Ev::Out("\x1b[Hdone"));
        recorded_events(
            &store,
            &dir,
            who,
            "s-narrow",
            1_000_060,
            (1000, 500),
            &narrowed,
        )
        .await;
        let secrets = SecretsKey::load(&config.secrets.key_file).unwrap();
        let indexer = Indexer::new(&store, &dir, &secrets);
        assert_eq!(indexer.index_pending(1_000_100).await.unwrap(), 3);
        // What an older build stored: no version, and (to tell it apart) a marker of its own; sealed
        // with the node's key as that build would have.
        let mut row = store.recording_index(rid).await.unwrap().unwrap();
        let mut old: serde_json::Value =
            serde_json::from_str(row.playback.as_deref().unwrap()).unwrap();
        assert_eq!(old["version"], INDEX_VERSION);
        old.as_object_mut().unwrap().remove("version");
        old["markers"] = json!([[0.1, "OLD BUILD"]]);
        let old = old.to_string();
        row.mac = Some(indexer.seal_playback(rid, row.sha256.as_deref().unwrap(), &old));
        row.playback = Some(old);
        store.finish_recording_index(&row, None).await.unwrap();
        store.close().await;
        rid
    });
    let b = Bastion::start(data);
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    let answer = audrey.get(&format!(
        "/sessions/s-old/recordings/{rid}/play.json?idle=2"
    ));
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, b.log());
    let index = answer.json();
    assert_eq!(index["markers"], json!([]), "{index}");
    assert_eq!(index["refused"], 0, "{index}");
    assert_eq!(
        index["segments"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );
    let segment = audrey.get(&format!(
        "/sessions/s-old/recordings/{rid}/segments/0?idle=2"
    ));
    assert_eq!(segment.status, 200, "{}", segment.body);
    assert!(segment.body.contains("up 3 days"), "{}", segment.body);
    // A byte of the segment changed afterwards, the file's size and time kept: the segment, whose bytes
    // are hashed as its events are read, is refused, not played.
    let file = dir.join("s-old.cast");
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("up 3 days", "up 4 days")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let altered = audrey.get(&format!(
        "/sessions/s-old/recordings/{rid}/segments/0?idle=2"
    ));
    assert_ne!(altered.status, 200, "{}", altered.body);
    assert!(
        altered.body.contains("ALTERED") && !altered.body.contains("up 4 days"),
        "{}",
        altered.body
    );
    std::fs::write(&file, text).unwrap();
    // The fills the index did not emulate are not given to the browser's emulator either: their final
    // character is a CAN.
    let fill = store_recording_id(&rt, &config, "s-fill");
    let index = audrey
        .get(&format!(
            "/sessions/s-fill/recordings/{fill}/play.json?idle=2"
        ))
        .json();
    let refused = index["refused"].as_u64().unwrap();
    assert!(refused > 1000, "{index}");
    let segment = audrey.get(&format!(
        "/sessions/s-fill/recordings/{fill}/segments/0?idle=2"
    ));
    assert_eq!(segment.status, 200, "{}", segment.body);
    let given = segment.body.matches("\\u001b#8").count() as u64;
    let cancelled = segment.body.matches("\\u001b#\\u0018").count() as u64;
    assert_eq!(given + cancelled, 20_000, "{}", &segment.body[..200]);
    assert!(
        cancelled >= refused,
        "{cancelled} cancelled, {refused} refused by the index"
    );
    assert!(segment.body.contains("done"));
    // The window changes the index could not pay for are not given to the browser's emulator: the
    // page is told how many were made late, and no segment narrows the screen to one column.
    let narrow = store_recording_id(&rt, &config, "s-narrow");
    let index = audrey
        .get(&format!(
            "/sessions/s-narrow/recordings/{narrow}/play.json?idle=2"
        ))
        .json();
    assert!(index["resizes_delayed"].as_u64().unwrap() >= 3, "{index}");
    let mut given = String::new();
    for n in 0..index["segments"].as_array().unwrap().len() {
        let segment = audrey.get(&format!(
            "/sessions/s-narrow/recordings/{narrow}/segments/{n}?idle=2"
        ));
        assert_eq!(segment.status, 200, "{}", segment.body);
        given.push_str(&segment.body);
    }
    assert!(given.contains("\"999x500\""), "{}", &given[..200]);
    assert!(!given.contains("\"1x500\""));
    assert!(given.contains("done"));
    rt.block_on(async {
        let store = Store::open(&config.database.url, crate::support::seal_of(&config))
            .await
            .unwrap();
        let row = store.recording_index(rid).await.unwrap().unwrap();
        let stored: serde_json::Value =
            serde_json::from_str(row.playback.as_deref().unwrap()).unwrap();
        assert_eq!(stored["version"], INDEX_VERSION);
        assert_eq!(
            store
                .session_text_matches("s-old", "days", 10)
                .await
                .unwrap()
                .len(),
            1
        );
        store.close().await;
    });
    assert!(
        b.log()
            .contains("building again a playback index an older build made"),
        "{}",
        b.log()
    );
}

/// The benchmark of issue 11 (`bench/search.sh` runs it in release): a bastion's database with
/// `BENCH_SESSIONS` (10,000) shell sessions holding `BENCH_MB` (1,024) MB of recordings, indexed, then
/// text searches through the running server's JSON API, timed; and a `BENCH_BIG_MB` (200) MB recording
/// opened in the player (its index and first segment, what the browser needs to start playing), timed.
/// Prints the figures; asserts nothing about time.
#[test]
#[ignore = "a benchmark: bench/search.sh"]
fn bench_search_and_open() {
    use std::time::Instant;

    use crate::support::DataDir;
    use crate::support::bastion::Bastion;
    use crate::support::web::Approver;

    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let sessions = env("BENCH_SESSIONS", 10_000);
    let total_mb = env("BENCH_MB", 1024);
    let big_mb = env("BENCH_BIG_MB", 200);
    let data = DataDir::init();
    let config = chaperone::config::Config::load(&data.config()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = config.recording.dir.clone();
    let per_session = total_mb * 1024 * 1024 / sessions.max(1);
    let t = Instant::now();
    let big_id = rt.block_on(async {
        let store = Store::open(&config.database.url, crate::support::seal_of(&config))
            .await
            .unwrap();
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], i64::MAX / 4).await;
        tx.audit(
            AuditEvent::new("os:t", Action::VendorAdd, "t", json!({})),
            100,
        )
        .await
        .unwrap();
        tx.commit("t").await.unwrap();
        // Text like a device's: lines of words from a vocabulary of 5,000, and one rare word per session.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut word = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            format!("w{}", seed % 5000)
        };
        let mut event = |n: usize, extra: &str| {
            let mut out = String::with_capacity(n + 64);
            out.push_str(extra);
            while out.len() < n {
                for _ in 0..10 {
                    out.push_str(&word());
                    out.push(' ');
                }
                out.push_str("\r\n");
            }
            out
        };
        for i in 0..sessions {
            let events: Vec<String> = (0..per_session / 4096 + 1)
                .map(|k| {
                    if k == 0 {
                        event(4096, &format!("$ echo ticket-{i}\r\nticket-{i}\r\n"))
                    } else {
                        event(4096, "")
                    }
                })
                .collect();
            let refs: Vec<&str> = events.iter().map(String::as_str).collect();
            recorded(
                &store,
                &dir,
                (v, a, g),
                &format!("s{i:05}"),
                1_000_000 + i as i64,
                &refs,
            )
            .await;
        }
        let big: Vec<String> = (0..big_mb * 256).map(|_| event(4096, "")).collect();
        let refs: Vec<&str> = big.iter().map(String::as_str).collect();
        let big_id = "s-big".to_owned();
        recorded(&store, &dir, (v, a, g), &big_id, 2_000_000, &refs).await;
        eprintln!(
            "wrote {sessions} sessions and a {big_mb} MB one in {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let secrets = SecretsKey::load(&config.secrets.key_file).unwrap();
        let n = Indexer::new(&store, &dir, &secrets)
            .index_pending(3_000_000)
            .await
            .unwrap();
        eprintln!("indexed {n} recordings in {:?}", t.elapsed());
        store.close().await;
        big_id
    });
    let b = Bastion::start(data);
    let audrey = Approver::enroll(&b, "audrey", "auditor");
    let timed = |path: &str| {
        let t = Instant::now();
        let answer = audrey.get(path);
        assert_eq!(
            answer.status,
            200,
            "{path}: {}",
            &answer.body[..answer.body.len().min(300)]
        );
        (t.elapsed(), answer)
    };
    for (label, q) in [
        ("a rare word (one session)", "text=ticket-4242"),
        ("a common word (every session)", "text=w17"),
        ("a phrase", "text=w17+w4"),
        ("a missing word", "text=nothing-like-it"),
        ("no text, newest 50", "vendor=alice"),
    ] {
        // Twice: the first list of a session also hashes its recordings for their integrity column
        // (remembered while the file is unchanged), the second shows the search alone.
        let (took, answer) = timed(&format!("/api/sessions?{q}"));
        let (again, _) = timed(&format!("/api/sessions?{q}"));
        let found = answer.json()["sessions"].as_array().map_or(0, Vec::len);
        println!("search {label}: {took:?}, again {again:?} ({found} on the first page)");
    }
    let rid = {
        let store = rt
            .block_on(Store::open(
                &config.database.url,
                crate::support::seal_of(&config),
            ))
            .unwrap();
        let id = rt.block_on(store.session(&big_id)).unwrap().recordings[0].id;
        rt.block_on(store.close());
        id
    };
    let (index, answer) = timed(&format!(
        "/sessions/{big_id}/recordings/{rid}/play.json?idle=2"
    ));
    let segments = answer.json()["segments"].as_array().map_or(0, Vec::len);
    let (first, _) = timed(&format!(
        "/sessions/{big_id}/recordings/{rid}/segments/0?idle=2"
    ));
    println!(
        "open a {big_mb} MB recording: index {index:?} ({segments} segments) + first segment {first:?} = {:?}",
        index + first
    );
    // The same in a browser: from the click on the session's link until the player's time moves.
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    if !e2e.join("node_modules/playwright-core").is_dir() {
        println!("open in Chromium: skipped (no playwright-core in tests/e2e)");
        return;
    }
    let out = std::process::Command::new("timeout")
        .args(["600", "node"])
        .arg(e2e.join("open.mjs"))
        .env("BASE_URL", crate::support::web::base(&b))
        .env("CERT", b.data.path().join("web_cert.pem"))
        .env("NAME", "audrey")
        .env("PASSWORD", "correct horse battery staple")
        .env("CODE", audrey.next_code())
        .env("SESSION", &big_id)
        .env("RUNS", "3")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr, code) = crate::support::bastion::text(&out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    println!(
        "open a {big_mb} MB recording in Chromium until it plays: {}",
        stdout.trim()
    );
}
