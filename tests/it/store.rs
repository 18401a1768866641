//! The store suite: the same tests against SQLite and against a real PostgreSQL server.

use std::future::Future;

use chaperone::audit::{Action, AuditEvent, Verifier};
use chaperone::model::{Criticality, Service};
use chaperone::store::{
    CursorClaim, NewAsset, NewGrant, NewSession, SessionStart, Store, StoreError, Tx,
};
use serde_json::json;

use crate::support::{postgres, throwaway_seal};

/// Runs `test` on a fresh SQLite database and on a fresh PostgreSQL database.
pub(crate) async fn on_both<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(
        &format!("sqlite://{}", dir.path().join("t.db").display()),
        throwaway_seal(),
    )
    .await
    .expect("open sqlite");
    test(sqlite).await;
    if let Some(url) = postgres::fresh_database().await {
        let pg = Store::open(&url, throwaway_seal())
            .await
            .expect("open postgres");
        test(pg).await;
    }
}

fn ev(action: Action) -> AuditEvent {
    AuditEvent::new("os:test", action, "test", json!({"k": "v"}))
}

pub(crate) async fn vendor(store: &Store, name: &str, fp: &str) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let id = tx
        .insert_vendor(name, "Acme", b"sealed", 100)
        .await
        .unwrap();
    tx.insert_vendor_key(id, "ssh-ed25519 AAAA", fp, "c", 100)
        .await
        .unwrap();
    tx.audit(ev(Action::VendorAdd), 100).await.unwrap();
    tx.commit("t").await.unwrap();
    id
}

/// A grant issued at 100 for `services` of asset `a` to vendor `v`, ending at `ends_at`.
pub(crate) async fn grant(tx: &mut Tx, v: i64, a: i64, services: &[String], ends_at: i64) -> i64 {
    tx.insert_grant(
        &NewGrant {
            vendor_id: v,
            asset_id: a,
            services,
            starts_at: 100,
            ends_at,
            reason: "INC-1",
            issued_by: "os:t",
            request_id: None,
        },
        100,
    )
    .await
    .unwrap()
}

pub(crate) async fn asset(store: &Store, name: &str) -> i64 {
    let services: Vec<Service> = vec![
        "ssh:22/ssh".parse().unwrap(),
        "dicom:104/tcp".parse().unwrap(),
    ];
    let mut tx = store.begin().await.unwrap();
    let id = tx
        .insert_asset(
            &NewAsset {
                name,
                address: "127.0.0.1",
                zone: "radiology",
                purpose: "MRI",
                criticality: Criticality::Critical,
                vendor_org: Some("Acme"),
                os: None,
                patch_status: None,
                services: &services,
            },
            100,
        )
        .await
        .unwrap();
    tx.audit(ev(Action::AssetAdd), 100).await.unwrap();
    tx.commit("t").await.unwrap();
    id
}

/// A local staff account `name` with `role`: a decision reads the acting approver's row.
pub(crate) async fn staff(store: &Store, name: &str, role: chaperone::model::Role) {
    let mut tx = store.begin().await.unwrap();
    tx.insert_staff_user(name, role, &format!("token-{name}"), 9999, 100)
        .await
        .unwrap();
    tx.audit(ev(Action::UserAdd), 100).await.unwrap();
    tx.commit("t").await.unwrap();
}

/// A directory staff account `name` on entry `dn` (`id`: its stable id), approving `zones`.
async fn directory_staff(
    store: &Store,
    name: &str,
    (zones, zones_only): (&[&str], bool),
    dn: &str,
    id: Option<&str>,
) {
    let standing = chaperone::store::DirectoryStanding {
        role: chaperone::model::Role::Approver,
        zones: zones.iter().map(|z| z.to_string()).collect(),
        zones_only,
    };
    let mut tx = store.begin().await.unwrap();
    tx.upsert_directory_staff(name, &standing, chaperone::store::EntryRef { dn, id }, 100)
        .await
        .unwrap();
    tx.audit(ev(Action::UserDirectoryAdd), 100).await.unwrap();
    tx.commit("t").await.unwrap();
}

async fn verify(store: &Store) -> Result<i64, chaperone::audit::ChainBreak> {
    let mut v = Verifier::default();
    for row in store.audit_page(0, 100_000).await.unwrap() {
        v.push(&row)?;
    }
    let (seq, hash) = store.audit_head().await.unwrap();
    v.finish(seq, &hash)
}

#[tokio::test]
async fn vendors_keys_and_conflicts() {
    on_both(|store| async move {
        let id = vendor(&store, "alice", "SHA256:a").await;
        let found = store.vendor_by_key("SHA256:a").await.unwrap().unwrap();
        assert_eq!(
            (found.id, found.name.as_str(), found.enabled),
            (id, "alice", true)
        );
        assert!(store.vendor_by_key("SHA256:zzz").await.unwrap().is_none());
        let mut tx = store.begin().await.unwrap();
        let dup = tx.insert_vendor("alice", "Other", b"x", 1).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        let bob = tx.insert_vendor("bob", "Other", b"x", 1).await.unwrap();
        let dup_key = tx.insert_vendor_key(bob, "k", "SHA256:a", "", 1).await;
        assert!(
            matches!(dup_key, Err(StoreError::Conflict(_))),
            "{dup_key:?}"
        );
        drop(tx); // rolled back: bob never existed
        assert!(store.vendor("bob").await.unwrap().is_none());
        assert_eq!(store.vendors().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn totp_steps_are_accepted_once_and_in_order() {
    on_both(|store| async move {
        let id = vendor(&store, "alice", "SHA256:a").await;
        let mut tx = store.begin().await.unwrap();
        assert!(tx.accept_totp_step(id, 1000).await.unwrap());
        assert!(
            !tx.accept_totp_step(id, 1000).await.unwrap(),
            "replay accepted"
        );
        assert!(
            !tx.accept_totp_step(id, 999).await.unwrap(),
            "older step accepted"
        );
        assert!(tx.accept_totp_step(id, 1001).await.unwrap());
        tx.audit(ev(Action::AuthLogin), 1).await.unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(
            store.vendor_totp(id).await.unwrap(),
            (b"sealed".to_vec(), Some(1001))
        );
    })
    .await;
}

#[tokio::test]
async fn login_failures_lock_after_the_limit_within_the_window() {
    on_both(|store| async move {
        let id = vendor(&store, "alice", "SHA256:a").await;
        let mut tx = store.begin().await.unwrap();
        // an old failure outside the 600 s window does not count
        let old = tx
            .record_login_failure(id, 1000, 600, 5, 900)
            .await
            .unwrap();
        assert_eq!(old.recent, 1);
        for i in 0..4 {
            let f = tx
                .record_login_failure(id, 2000 + i, 600, 5, 900)
                .await
                .unwrap();
            assert_eq!(f.locked_until, None, "locked too early at {i}");
        }
        let f = tx
            .record_login_failure(id, 2010, 600, 5, 900)
            .await
            .unwrap();
        assert_eq!(f.locked_until, Some(2910));
        tx.audit(ev(Action::AuthLock), 2010).await.unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(
            store.vendor("alice").await.unwrap().unwrap().locked_until,
            Some(2910)
        );
    })
    .await;
}

#[tokio::test]
async fn assets_services_and_removal_keeps_history() {
    on_both(|store| async move {
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let got = store.require_asset("mri-01").await.unwrap();
        assert_eq!(got.criticality, Criticality::Critical);
        assert_eq!(got.service("dicom").unwrap().port, 104);
        assert_eq!(
            store
                .assets_by_name_or_address("127.0.0.1")
                .await
                .unwrap()
                .len(),
            1
        );
        let services = vec!["ssh".to_owned()];
        let mut tx = store.begin().await.unwrap();
        tx.insert_grant(
            &NewGrant {
                vendor_id: v,
                asset_id: a,
                services: &services,
                starts_at: 100,
                ends_at: 200,
                reason: "r",
                issued_by: "os:t",
                request_id: None,
            },
            100,
        )
        .await
        .unwrap();
        let refused = tx.delete_asset(a, "mri-01").await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn grants_sessions_and_recordings() {
    on_both(|store| async move {
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let services = vec!["ssh".to_owned(), "dicom".to_owned()];
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &services, 200).await;
        tx.insert_session(
            &NewSession {
                id: "s1",
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
        let r = tx
            .insert_recording("s1", "asciicast-v2", "/r/s1.cast", 150)
            .await
            .unwrap();
        tx.audit(ev(Action::SessionStart), 150).await.unwrap();
        tx.commit("t").await.unwrap();

        let open = store.open_grants_of(v, 150).await.unwrap();
        assert_eq!(open.len(), 1);
        assert!(open[0].is_active(150) && !open[0].is_active(200));
        assert_eq!(open[0].services, services);
        assert!(store.open_grants_of(v, 200).await.unwrap().is_empty());
        assert_eq!(store.open_sessions().await.unwrap()[0].id, "s1");

        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.end_session("s1", "exit", "closed", 10, 20, 160)
                .await
                .unwrap()
        );
        tx.close_recording(r, "abcd", 42, 160).await.unwrap();
        assert!(tx.revoke_grant(g, "os:t", "done", 160).await.unwrap());
        assert!(!tx.revoke_grant(g, "os:t", "again", 161).await.unwrap());
        tx.audit(ev(Action::SessionEnd), 160).await.unwrap();
        tx.commit("t").await.unwrap();
        let s = store.session("s1").await.unwrap();
        assert_eq!((s.ended_at, s.bytes_up, s.bytes_down), (Some(160), 10, 20));
        assert_eq!(s.recordings[0].sha256.as_deref(), Some("abcd"));
        assert!(store.open_sessions().await.unwrap().is_empty());
        assert_eq!(store.require_grant(g).await.unwrap().state(150), "revoked");
    })
    .await;
}

/// Sessions of a node that stopped heartbeating are found, ended once (two nodes racing: one wins), and
/// their unfinished recordings listed; live nodes' sessions are left alone.
#[tokio::test]
async fn sessions_of_a_gone_node_are_found_and_ended_once() {
    on_both(|store| async move {
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        for (id, node) in [("s-dead", "node-dead"), ("s-live", "node-live")] {
            tx.insert_session(
                &NewSession {
                    id,
                    vendor_id: v,
                    asset_id: a,
                    grant_id: g,
                    kind: "exec",
                    service: "ssh",
                    client_addr: "127.0.0.1:5",
                    detail: "sleep",
                    node,
                },
                150,
            )
            .await
            .unwrap();
            tx.insert_recording(id, "exec-stream-v1", &format!("/r/{id}.exec"), 150)
                .await
                .unwrap();
        }
        tx.audit(ev(Action::SessionStart), 150).await.unwrap();
        tx.commit("t").await.unwrap();
        store.node_seen("node-dead", 100).await.unwrap();
        store.node_seen("node-live", 100).await.unwrap();
        store.node_seen("node-live", 500).await.unwrap();

        // Alive means seen after 400: node-dead is gone, node-live is not.
        let gone = store.abandoned_sessions(400).await.unwrap();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(
            (gone[0].id.as_str(), gone[0].node.as_str()),
            ("s-dead", "node-dead")
        );
        assert_eq!(gone[0].vendor, "alice");
        assert!(store.unfinished_recordings().await.unwrap().is_empty());
        // A node's own open sessions, whatever its heartbeat says (the sweep leaves those live in it).
        let own = store.open_sessions_of_node("node-live").await.unwrap();
        assert_eq!(
            own.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["s-live"]
        );

        let mut first = store.begin().await.unwrap();
        assert!(
            first
                .end_session("s-dead", "node gone", "lost", 0, 0, 510)
                .await
                .unwrap()
        );
        first.audit(ev(Action::SessionEnd), 510).await.unwrap();
        first.commit("t").await.unwrap();
        let mut second = store.begin().await.unwrap();
        assert!(
            !second
                .end_session("s-dead", "node gone", "lost", 0, 0, 511)
                .await
                .unwrap()
        );
        drop(second);
        assert!(store.abandoned_sessions(400).await.unwrap().is_empty());
        let s = store.session("s-dead").await.unwrap();
        assert_eq!(
            (s.ended_at, s.end_reason.as_deref()),
            (Some(510), Some("node gone"))
        );

        // Its recording has no digest yet: listed (a node leaves out those of its sessions still live
        // in it), then closed once.
        let unfinished = store.unfinished_recordings().await.unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].path, "/r/s-dead.exec");
        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.close_recording(unfinished[0].id, "ab", 3, 520)
                .await
                .unwrap()
        );
        assert!(
            !tx.close_recording(unfinished[0].id, "cd", 4, 521)
                .await
                .unwrap()
        );
        tx.audit(ev(Action::RecordingRecovered), 520).await.unwrap();
        tx.commit("t").await.unwrap();
        assert!(store.unfinished_recordings().await.unwrap().is_empty());

        // A node that never registered counts as gone; a clean stop removes the node.
        store.node_gone("node-live", 0).await.unwrap();
        let gone = store.abandoned_sessions(400).await.unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, "s-live");
    })
    .await;
}

#[tokio::test]
async fn a_change_without_an_audit_event_is_not_committed() {
    on_both(|store| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_vendor("mallory", "X", b"s", 1).await.unwrap();
        assert!(matches!(
            tx.commit("sneaky").await,
            Err(StoreError::Unaudited("sneaky"))
        ));
        assert!(store.vendor("mallory").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn concurrent_appends_keep_one_unbroken_chain() {
    on_both(|store| async move {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..5 {
                    let mut tx = store.begin().await.unwrap();
                    tx.audit(
                        AuditEvent::new(
                            "os:t",
                            Action::VendorAdd,
                            format!("w{i}"),
                            json!({"j": j}),
                        ),
                        1,
                    )
                    .await
                    .unwrap();
                    tx.commit("t").await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(verify(&store).await, Ok(40));
    })
    .await;
}

#[tokio::test]
async fn one_node_at_a_time_holds_the_webhook_cursor() {
    on_both(|store| async move {
        // History before the first claim is not replayed to a new receiver.
        let mut tx = store.begin().await.unwrap();
        tx.audit(ev(Action::VendorAdd), 1).await.unwrap();
        tx.commit("t").await.unwrap();
        let (head, _) = store.audit_head().await.unwrap();
        assert_eq!(
            store
                .claim_webhook_cursor("a", "e1", 100, 160)
                .await
                .unwrap(),
            Some(CursorClaim {
                seq: head,
                moved_from: None
            })
        );
        // Another node waits while the lease is live, and takes over once it lapses.
        assert_eq!(
            store
                .claim_webhook_cursor("b", "e1", 150, 210)
                .await
                .unwrap(),
            None
        );
        assert!(!store.advance_webhook_cursor("b", head + 5).await.unwrap());
        assert!(store.advance_webhook_cursor("a", head + 5).await.unwrap());
        assert!(
            !store.advance_webhook_cursor("a", head + 4).await.unwrap(),
            "never backwards"
        );
        assert_eq!(
            store
                .claim_webhook_cursor("b", "e1", 161, 221)
                .await
                .unwrap(),
            Some(CursorClaim {
                seq: head + 5,
                moved_from: None
            })
        );
        assert!(!store.advance_webhook_cursor("a", head + 6).await.unwrap());
        // Released at shutdown: the other node claims at once. A new endpoint starts at the head.
        store.release_webhook_cursor("b").await.unwrap();
        assert_eq!(
            store
                .claim_webhook_cursor("a", "e2", 162, 222)
                .await
                .unwrap(),
            Some(CursorClaim {
                seq: head,
                moved_from: Some(head + 5)
            })
        );
    })
    .await;
}

/// Who may decide is judged in `requests::decide` on the locked request: a zone with an approver group
/// of its own is decided by its members (and admins) only, a member of zone groups alone decides those
/// zones only, and four eyes are two directory entries, not two names.
#[tokio::test]
async fn zone_approvers_and_four_eyes_by_directory_entry_on_both_backends() {
    use chaperone::config::PolicyConfig;
    use chaperone::model::Role;
    use chaperone::policy::events::Events;
    use chaperone::policy::requests::{
        self, Approver, AuthMethod, DecideError, Decision, Outcome, ZoneScope,
    };
    use chaperone::store::{DirectoryStanding, EntryRef};
    use std::time::Duration;

    on_both_with_url(|store, url| async move {
        let v = vendor(&store, "alice", "SHA256:zone").await;
        asset(&store, "mri-01").await; // zone radiology, critical: two approvers
        let events = Events::default();
        let limits = PolicyConfig {
            max_request: Duration::from_secs(8 * 3600),
            zone_max_request: Default::default(),
            request_ttl: Duration::from_secs(3600),
            max_pending_per_vendor: 5,
        };
        let alice = store.vendor("alice").await.unwrap().unwrap();
        let request = requests::file(
            &store,
            &events,
            &limits,
            1000,
            &alice,
            "mri-01",
            &["ssh".to_owned()],
            Duration::from_secs(3600),
            "INC-7",
        )
        .await
        .unwrap();
        let approve = || Decision::Approve {
            services: None,
            duration_secs: None,
        };
        let who = |name: &str, role, dn: Option<&str>, zones: ZoneScope| Approver {
            name: name.into(),
            role,
            method: AuthMethod::Totp,
            dn: dn.map(str::to_owned),
            entry_id: None,
            zones,
        };
        let scope = |grouped: &[&str], member_of: &[&str], only: bool| ZoneScope {
            grouped: grouped.iter().map(|z| z.to_string()).collect(),
            member_of: member_of.iter().map(|z| z.to_string()).collect(),
            only_member_of: only,
        };
        let decide = |a: Approver, d: Decision| {
            let (store, events) = (&store, &events);
            async move { requests::decide(store, events, 1010, &a, request.id, d).await }
        };

        // The accounts: a decision judges the acting approver by their row as it is then.
        directory_staff(
            &store,
            "ivan",
            (&["icu"], true),
            "uid=ivan,ou=staff,dc=example",
            Some("5e1f-ivan"),
        )
        .await;
        directory_staff(
            &store,
            "olga",
            (&[], false),
            "uid=olga,ou=staff,dc=example",
            None,
        )
        .await;
        staff(&store, "root", Role::Admin).await;
        // An ICU-only approver decides neither radiology's approvals nor its denials.
        for d in [
            approve(),
            Decision::Deny {
                reason: "no".into(),
            },
        ] {
            let icu_only = who(
                "ivan",
                Role::Approver,
                None,
                scope(&["icu"], &["icu"], true),
            );
            let got = decide(icu_only, d).await;
            assert!(
                matches!(got, Err(DecideError::OtherZone(ref z)) if z == "radiology"),
                "{got:?}"
            );
        }
        // Radiology with a group of its own: a general approver outside it cannot decide either.
        let outsider = who(
            "olga",
            Role::Approver,
            None,
            scope(&["radiology"], &[], false),
        );
        assert!(matches!(
            decide(outsider, approve()).await,
            Err(DecideError::OtherZone(_))
        ));

        // The vendor's own directory entry under another name is the vendor.
        let mut tx = store.begin().await.unwrap();
        tx.set_vendor_directory(v, "uid=alice,ou=vendors,dc=example", Some("4f1e"))
            .await
            .unwrap();
        tx.audit(ev(Action::VendorAdd), 900).await.unwrap();
        tx.commit("t").await.unwrap();
        directory_staff(
            &store,
            "a.smith",
            (&[], false),
            "UID=alice,ou=vendors,dc=example",
            None,
        )
        .await;
        let alias = who(
            "a.smith",
            Role::Approver,
            Some("UID=alice,ou=vendors,dc=example"),
            scope(&[], &[], false),
        );
        assert!(matches!(
            decide(alias, approve()).await,
            Err(DecideError::SelfApproval)
        ));

        // One directory entry is one account: a second name for erin's entry is refused ...
        let standing = DirectoryStanding {
            role: Role::Approver,
            zones: vec!["radiology".into()],
            zones_only: false,
        };
        let mut tx = store.begin().await.unwrap();
        tx.upsert_directory_staff(
            "erin",
            &standing,
            EntryRef {
                dn: "uid=erin,ou=staff,dc=example",
                id: None,
            },
            900,
        )
        .await
        .unwrap();
        let second = tx
            .upsert_directory_staff(
                "erin.old",
                &standing,
                EntryRef {
                    dn: "UID=Erin,ou=staff,dc=example",
                    id: None,
                },
                900,
            )
            .await;
        assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
        tx.audit(ev(Action::UserDirectoryAdd), 900).await.unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(
            store
                .directory_account_of(
                    EntryRef {
                        dn: "uid=ERIN,ou=staff,dc=example",
                        id: None
                    },
                    None
                )
                .await
                .unwrap(),
            Some("erin".to_owned())
        );
        // With the entry's stable id, the entry is found wherever it moved, and a new entry made at an
        // old DN (another person) is not the old account's.
        let mut tx = store.begin().await.unwrap();
        let standing_ivan = standing.clone();
        tx.upsert_directory_staff(
            "ivan",
            &standing_ivan,
            EntryRef {
                dn: "uid=ivan,ou=staff,dc=example",
                id: Some("5e1f-ivan"),
            },
            900,
        )
        .await
        .unwrap();
        tx.audit(ev(Action::UserDirectoryAdd), 900).await.unwrap();
        tx.commit("t").await.unwrap();
        let owner = |dn: &'static str, id: &'static str| {
            let store = store.clone();
            async move {
                store
                    .directory_account_of(EntryRef { dn, id: Some(id) }, None)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            owner("uid=ivan,ou=moved,dc=example", "5E1F-IVAN").await,
            Some("ivan".to_owned()),
            "moved: the same entry"
        );
        assert_eq!(
            owner("uid=ivan,ou=staff,dc=example", "new-entry").await,
            None,
            "the old DN, another entry"
        );
        // An empty id (a vendor untied by `vendor enable`) is no id: the DN decides.
        assert_eq!(
            owner("uid=ivan,ou=staff,dc=example", "").await,
            Some("ivan".to_owned())
        );
        // The name given to another entry: the account is not the newcomer's.
        let mut tx = store.begin().await.unwrap();
        let newcomer = tx
            .upsert_directory_staff(
                "ivan",
                &standing_ivan,
                EntryRef {
                    dn: "uid=ivan,ou=staff,dc=example",
                    id: Some("another-person"),
                },
                950,
            )
            .await;
        assert!(
            matches!(newcomer, Err(StoreError::Conflict(_))),
            "{newcomer:?}"
        );
        drop(tx);
        // An administrator's disable made while the re-check was deciding to remove ivan stays the
        // administrator's: the directory's mark (which its next sign-in may lift) is not set over it.
        let ivan = store.staff_auth("ivan").await.unwrap().unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.disable_staff_user(ivan.id).await.unwrap();
        assert!(
            !tx.set_directory_standing(ivan.id, None).await.unwrap(),
            "nothing changed (so `user.directory.remove` is not audited)"
        );
        tx.audit(ev(Action::UserDisable), 950).await.unwrap();
        tx.commit("t").await.unwrap();
        let ivan = store.staff_auth("ivan").await.unwrap().unwrap();
        assert!(!ivan.enabled && !ivan.directory_disabled, "{ivan:?}");
        let erin = store.staff_auth("erin").await.unwrap().unwrap();
        // Passkeys change only over the copy they were read as: a stale copy writes nothing (it would
        // bring back a passkey removed meanwhile).
        let mut tx = store.begin().await.unwrap();
        assert!(tx.set_staff_passkeys(erin.id, None, "[1]").await.unwrap());
        assert!(!tx.set_staff_passkeys(erin.id, None, "[2]").await.unwrap());
        assert!(
            !tx.set_staff_passkeys(erin.id, Some("[3]"), "[2]")
                .await
                .unwrap()
        );
        assert!(
            tx.set_staff_passkeys(erin.id, Some("[1]"), "[]")
                .await
                .unwrap()
        );
        tx.audit(ev(Action::StaffPasskeyUpdate), 900).await.unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(
            store.staff_passkeys("erin").await.unwrap().as_deref(),
            Some("[]")
        );
        assert_eq!(
            store
                .directory_account_of(
                    EntryRef {
                        dn: "uid=erin,ou=staff,dc=example",
                        id: None
                    },
                    Some(erin.id)
                )
                .await
                .unwrap(),
            None,
            "the entry's own account signs in"
        );
        // ... and an approval under any name on it counts once: the radiology member approves, the
        // same entry under another name is refused, a second person completes the four eyes.
        let first = decide(
            who(
                "erin",
                Role::Approver,
                erin.dn.as_deref(),
                scope(&["radiology"], &["radiology"], false),
            ),
            approve(),
        )
        .await
        .unwrap();
        assert!(matches!(first, Outcome::AwaitingSecondApproval));
        // A second account on erin's entry cannot be made any more (refused above); one stored before
        // that rule is still erin.
        staff(&store, "erin.old", Role::Approver).await;
        raw(
            &url,
            "UPDATE staff_users SET dn = 'uid=erin,OU=staff,dc=example', zones = 'radiology' \
             WHERE name = 'erin.old'",
        )
        .await;
        let again = decide(
            who(
                "erin.old",
                Role::Approver,
                Some("uid=erin,OU=staff,dc=example"),
                scope(&["radiology"], &["radiology"], false),
            ),
            approve(),
        )
        .await;
        assert!(
            matches!(again, Err(DecideError::AlreadyApproved)),
            "{again:?}"
        );
        // An admin decides every zone.
        let admin = who("root", Role::Admin, None, scope(&["radiology"], &[], false));
        assert!(matches!(
            decide(admin, approve()).await.unwrap(),
            Outcome::Granted { .. }
        ));
        assert!(verify(&store).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn requests_are_filed_decided_by_four_eyes_and_lapse_on_both_backends() {
    use chaperone::config::PolicyConfig;
    use chaperone::model::{RequestStatus, Role};
    use chaperone::policy::events::Events;
    use chaperone::policy::requests::{self, Approver, AuthMethod, DecideError, Decision, Outcome};
    use std::time::Duration;

    on_both(|store| async move {
        vendor(&store, "alice", "SHA256:rq").await;
        asset(&store, "mri-01").await; // critical: two approvers
        let alice = store.vendor("alice").await.unwrap().unwrap();
        // The approvers' accounts: an earlier approval counts only while its approver may decide.
        let mut tx = store.begin().await.unwrap();
        for (n, name) in ["bob", "carol"].iter().enumerate() {
            tx.insert_staff_user(name, Role::Approver, &format!("t{n}"), 9999, 100)
                .await
                .unwrap();
        }
        tx.audit(ev(Action::UserAdd), 100).await.unwrap();
        tx.commit("t").await.unwrap();
        let events = Events::default();
        let limits = PolicyConfig {
            max_request: Duration::from_secs(8 * 3600),
            zone_max_request: Default::default(),
            request_ttl: Duration::from_secs(3600),
            max_pending_per_vendor: 5,
        };
        let services = vec!["ssh".to_owned(), "dicom".to_owned()];
        let file = |now| {
            let (store, events, limits, alice, services) =
                (&store, &events, &limits, &alice, &services);
            async move {
                requests::file(
                    store,
                    events,
                    limits,
                    now,
                    alice,
                    "mri-01",
                    services,
                    Duration::from_secs(7200),
                    "INC-1",
                )
                .await
                .unwrap()
            }
        };
        let who = |name: &str, method| Approver {
            name: name.into(),
            role: Role::Approver,
            method,
            dn: None,
            entry_id: None,
            zones: Default::default(),
        };
        let r = file(1000).await;
        assert_eq!(r.status, RequestStatus::Pending);
        assert_eq!(r.expires_at, Some(4600));
        let pending = store
            .requests(Some(RequestStatus::Pending), Some("alice"), 10)
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);

        // alice cannot approve her own request, even as staff of the same name.
        staff(&store, "alice", Role::Approver).await;
        let own = requests::decide(
            &store,
            &events,
            1010,
            &who("alice", AuthMethod::Totp),
            r.id,
            Decision::Approve {
                services: None,
                duration_secs: None,
            },
        )
        .await;
        assert!(matches!(own, Err(DecideError::SelfApproval)), "{own:?}");
        // The attempt is on record: who, which request, why refused.
        let refusals = |store: Store| async move {
            store
                .audit_page(0, 100_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "request.decision.refused")
                .collect::<Vec<_>>()
        };
        let refused = refusals(store.clone()).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].actor, "staff:alice");
        assert_eq!(refused[0].subject, format!("request:{}", r.id));
        assert!(
            refused[0].detail.contains("your own request"),
            "{refused:?}"
        );
        // Signed in before an administrator disabled them: the decision reads the account as it is.
        staff(&store, "dave", Role::Approver).await;
        let dave = store.staff_auth("dave").await.unwrap().unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.disable_staff_user(dave.id).await.unwrap();
        tx.audit(ev(Action::UserDisable), 1005).await.unwrap();
        tx.commit("t").await.unwrap();
        let disabled = requests::decide(
            &store,
            &events,
            1010,
            &who("dave", AuthMethod::Passkey),
            r.id,
            Decision::Deny {
                reason: "no".into(),
            },
        )
        .await;
        assert!(
            matches!(disabled, Err(DecideError::AccountDisabled(ref n)) if n == "dave"),
            "{disabled:?}"
        );
        assert_eq!(refusals(store.clone()).await.len(), 2);
        // Critical: bob narrows to ssh for 1 h, then carol approves; the grant is the narrowest.
        let first = requests::decide(
            &store,
            &events,
            1020,
            &who("bob", AuthMethod::Passkey),
            r.id,
            Decision::Approve {
                services: Some(vec!["ssh".into()]),
                duration_secs: Some(3600),
            },
        )
        .await
        .unwrap();
        assert!(matches!(first, Outcome::AwaitingSecondApproval));
        let twice = requests::decide(
            &store,
            &events,
            1025,
            &who("bob", AuthMethod::Passkey),
            r.id,
            Decision::Approve {
                services: None,
                duration_secs: None,
            },
        )
        .await;
        assert!(
            matches!(twice, Err(DecideError::AlreadyApproved)),
            "{twice:?}"
        );
        let Outcome::Granted {
            grant_id, ends_at, ..
        } = requests::decide(
            &store,
            &events,
            1030,
            &who("carol", AuthMethod::Totp),
            r.id,
            Decision::Approve {
                services: None,
                duration_secs: None,
            },
        )
        .await
        .unwrap()
        else {
            panic!("not granted");
        };
        assert_eq!(
            ends_at,
            1030 + 3600,
            "the clock starts at the final approval"
        );
        let grant = store.grant(grant_id).await.unwrap().unwrap();
        assert_eq!(grant.services, vec!["ssh".to_owned()]);
        let done = store.request(r.id).await.unwrap().unwrap();
        assert_eq!(done.status, RequestStatus::Approved);
        assert_eq!(done.approvals.len(), 2);
        assert_eq!(done.approvals[0].method, "passkey");

        // An undecided request lapses after the TTL, audited.
        let lapsing = file(2000).await;
        assert_eq!(
            requests::expire_due(&store, &events, 5599).await.unwrap(),
            0
        );
        assert_eq!(
            requests::expire_due(&store, &events, 5600).await.unwrap(),
            1
        );
        let lapsed = store.request(lapsing.id).await.unwrap().unwrap();
        assert_eq!(lapsed.status, RequestStatus::Expired);
        assert!(verify(&store).await.is_ok());

        // Issue 15: decided requests, the latest decision first, by outcome ("narrowed": the grant
        // allows less than was asked), vendor and asset, a page at a time.
        use chaperone::store::{DecidedFilter, DecidedOutcome};
        let decided = |outcome, vendor: Option<&str>, asset: Option<&str>, limit, offset| {
            let store = &store;
            let f = DecidedFilter {
                vendor: vendor.map(str::to_owned),
                asset: asset.map(str::to_owned),
                outcome,
            };
            async move {
                store
                    .decided_requests(&f, limit, offset)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.id)
                    .collect::<Vec<i64>>()
            }
        };
        let _still_pending = file(6000).await;
        assert_eq!(
            decided(DecidedOutcome::Any, None, None, 10, 0).await,
            vec![lapsing.id, r.id]
        );
        assert_eq!(
            decided(DecidedOutcome::Narrowed, None, None, 10, 0).await,
            vec![r.id]
        );
        assert_eq!(
            decided(
                DecidedOutcome::Approved,
                Some("alice"),
                Some("mri-01"),
                10,
                0
            )
            .await,
            vec![r.id]
        );
        assert_eq!(
            decided(DecidedOutcome::Expired, None, None, 10, 0).await,
            vec![lapsing.id]
        );
        assert!(
            decided(DecidedOutcome::Denied, None, None, 10, 0)
                .await
                .is_empty()
        );
        assert!(
            decided(DecidedOutcome::Any, Some("bob"), None, 10, 0)
                .await
                .is_empty()
        );
        assert!(
            decided(DecidedOutcome::Any, None, Some("ct-02"), 10, 0)
                .await
                .is_empty()
        );
        assert_eq!(
            decided(DecidedOutcome::Any, None, None, 1, 1).await,
            vec![r.id]
        );
        // Two nodes expiring at the same moment: one expiry, audited once (on PostgreSQL both read
        // the request as pending; only the update that found it so counts).
        let racing = file(3000).await;
        let (a, b) = tokio::join!(
            requests::expire_due(&store, &events, 6600),
            requests::expire_due(&store, &events, 6600)
        );
        assert_eq!(a.unwrap() + b.unwrap(), 1);
        let expiries = store
            .audit_events_about(&format!("request:{}", racing.id), &["request.expire"], 10)
            .await
            .unwrap();
        assert_eq!(expiries.len(), 1, "{expiries:?}");
    })
    .await;
}

#[tokio::test]
async fn web_sign_in_state_lapses_extends_is_taken_once_and_is_bounded() {
    on_both(|store| async move {
        let s = &store;
        s.web_state_put("session", "k1", Some("carol"), r#"{"a":1}"#, 200, 100, 10)
            .await
            .unwrap();
        // Read (and not extended) before it lapses; gone at and after `expires_at`.
        assert_eq!(
            s.web_state_get("session", "k1", 150, None).await.unwrap(),
            Some(r#"{"a":1}"#.to_owned())
        );
        assert_eq!(
            s.web_state_get("session", "k1", 200, None).await.unwrap(),
            None
        );
        // A sliding time-out: the expiry moves when it is before the threshold, not otherwise (no write
        // on every request).
        assert!(
            s.web_state_get("session", "k1", 199, Some((260, 150)))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.web_state_get("session", "k1", 200, None).await.unwrap(),
            None
        );
        assert!(
            s.web_state_get("session", "k1", 199, Some((400, 340)))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            s.web_state_get("session", "k1", 399, None)
                .await
                .unwrap()
                .is_some()
        );
        // Kinds do not see each other's rows.
        assert_eq!(
            s.web_state_get("ceremony", "k1", 150, None).await.unwrap(),
            None
        );
        // Replacing keeps the expiry and only touches a row that is there.
        assert!(
            s.web_state_replace("session", "k1", r#"{"a":2}"#, 150)
                .await
                .unwrap()
        );
        assert_eq!(
            s.web_state_get("session", "k1", 399, None).await.unwrap(),
            Some(r#"{"a":2}"#.to_owned())
        );
        assert_eq!(
            s.web_state_get("session", "k1", 400, None).await.unwrap(),
            None
        );
        // A token is never stored twice.
        assert!(
            s.web_state_put("session", "k1", Some("eve"), "{}", 900, 100, 10)
                .await
                .is_err()
        );
        // Taken once: the second take (another node answering the same ceremony) gets nothing.
        s.web_state_put("ceremony", "c1", None, "{}", 300, 100, 10)
            .await
            .unwrap();
        assert_eq!(
            s.web_state_take("ceremony", "c1", 150).await.unwrap(),
            Some("{}".to_owned())
        );
        assert_eq!(s.web_state_take("ceremony", "c1", 150).await.unwrap(), None);
        // A lapsed ceremony is not handed out, and is gone.
        s.web_state_put("ceremony", "c2", None, "{}", 300, 100, 10)
            .await
            .unwrap();
        assert_eq!(s.web_state_take("ceremony", "c2", 300).await.unwrap(), None);
        // Signing out deletes, and a late write (a flash message being saved) does not bring it back.
        s.web_state_delete("session", "k1").await.unwrap();
        assert!(
            !s.web_state_replace("session", "k1", "{}", 150)
                .await
                .unwrap()
        );
        assert_eq!(
            s.web_state_get("session", "k1", 150, None).await.unwrap(),
            None
        );
        // Disabling a staff member ends their sessions and nobody else's.
        for (key, who) in [("d1", "dave"), ("d2", "dave"), ("e1", "erin")] {
            s.web_state_put("session", key, Some(who), "{}", 10_000, 100, 10)
                .await
                .unwrap();
        }
        let mut tx = s.begin().await.unwrap();
        assert_eq!(tx.end_web_sessions_of("dave").await.unwrap(), 2);
        tx.audit(ev(Action::UserDisable), 100).await.unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(
            s.web_state_get("session", "d1", 150, None).await.unwrap(),
            None
        );
        assert!(
            s.web_state_get("session", "e1", 150, None)
                .await
                .unwrap()
                .is_some()
        );
        // Oversized data is refused.
        let big = "x".repeat(chaperone::store::MAX_WEB_STATE + 1);
        assert!(matches!(
            s.web_state_put("ceremony", "big", None, &big, 300, 100, 10)
                .await,
            Err(StoreError::TooLarge(_))
        ));
        assert!(matches!(
            s.web_state_replace("session", "e1", &big, 150).await,
            Err(StoreError::TooLarge(_))
        ));
        // A flood of starts keeps at most `max` of a kind, dropping the ones closest to lapsing; other
        // kinds are untouched.
        for i in 0..10 {
            s.web_state_put("ceremony", &format!("f{i}"), None, "{}", 1000 + i, 100, 3)
                .await
                .unwrap();
        }
        let mut left = Vec::new();
        for i in 0..10 {
            if s.web_state_get("ceremony", &format!("f{i}"), 150, None)
                .await
                .unwrap()
                .is_some()
            {
                left.push(i);
            }
        }
        assert_eq!(left, vec![7, 8, 9]);
        assert!(
            s.web_state_get("session", "e1", 150, None)
                .await
                .unwrap()
                .is_some()
        );
        // A put sweeps every lapsed row.
        s.web_state_put("ceremony", "late", None, "{}", 20_000, 5000, 3)
            .await
            .unwrap();
        assert_eq!(
            s.web_state_get("ceremony", "f9", 100, None).await.unwrap(),
            None
        );
        // A compare and swap: only the writer that read the current data changes it.
        s.web_state_put("vendor-link", "l1", Some("alice"), "a", 9000, 5000, 10)
            .await
            .unwrap();
        assert!(
            s.web_state_replace_if("vendor-link", "l1", "a", "b", 5000)
                .await
                .unwrap()
        );
        assert!(
            !s.web_state_replace_if("vendor-link", "l1", "a", "c", 5000)
                .await
                .unwrap()
        );
        assert_eq!(
            s.web_state_get("vendor-link", "l1", 5000, None)
                .await
                .unwrap(),
            Some("b".to_owned())
        );
        // One subject keeps its newest rows only; another subject's are untouched.
        for (key, who, expires) in [
            ("l2", "alice", 9001),
            ("l3", "alice", 9002),
            ("m1", "mallory", 8000),
        ] {
            s.web_state_put("vendor-link", key, Some(who), "x", expires, 5000, 10)
                .await
                .unwrap();
        }
        // l1 lapses first, yet it is the one just stored: kept; l2, the next to lapse, goes.
        s.web_state_trim_subject("vendor-link", "alice", "l1", 2)
            .await
            .unwrap();
        assert_eq!(
            held_links(s, &["l1", "l2", "l3", "m1"]).await,
            ["l1", "l3", "m1"]
        );
        // Two rows stored at once for one subject, then each trimmed: both stay (they lapse last).
        for key in ["n1", "n2"] {
            s.web_state_put("vendor-link", key, Some("alice"), "x", 9010, 5000, 10)
                .await
                .unwrap();
        }
        for key in ["n1", "n2"] {
            s.web_state_trim_subject("vendor-link", "alice", key, 2)
                .await
                .unwrap();
        }
        assert_eq!(
            held_links(s, &["l1", "l3", "n1", "n2", "m1"]).await,
            ["n1", "n2", "m1"]
        );
    })
    .await;
}

/// Passkey ceremonies are kept in pools by who can start them: a flood of sign-in starts for made-up
/// names pushes out only decoys, and one for one staff name only that name's oldest, never another
/// person's ceremony in flight, nor a link's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_passkey_sign_in_starts_pushes_out_only_its_own_kind() {
    use chaperone_web_approval::StateKind;
    on_both(|s| async move {
        let s = &s;
        // Each started a second after the one before: it lapses a second later.
        let at = std::sync::atomic::AtomicI64::new(9000);
        let at = &at;
        let put = |kind: StateKind, key: String, subject: Option<&'static str>| async move {
            let expires = at.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.web_state_put_kind(kind, &key, subject, "{}", expires, 5000)
                .await
                .unwrap();
        };
        let held = |kind: StateKind, key: &'static str| async move {
            s.web_state_get(kind.as_str(), key, 5000, None)
                .await
                .unwrap()
                .is_some()
        };
        put(StateKind::Ceremony, "alice-1".into(), Some("alice")).await;
        put(
            StateKind::LinkCeremony,
            "link-1".into(),
            Some("sha-of-link"),
        )
        .await;
        // Made-up names: more decoys than the pool holds.
        for i in 0..=StateKind::DecoyCeremony.max_held() {
            put(StateKind::DecoyCeremony, format!("decoy-{i}"), None).await;
        }
        // bob's name, more starts than one name keeps.
        for i in 0..=StateKind::Ceremony.per_subject().unwrap() {
            put(StateKind::Ceremony, format!("bob-{i}"), Some("bob")).await;
        }
        assert!(
            held(StateKind::Ceremony, "alice-1").await,
            "alice's sign-in was pushed out"
        );
        assert!(
            held(StateKind::LinkCeremony, "link-1").await,
            "a link's ceremony was pushed out"
        );
        assert!(
            !held(StateKind::Ceremony, "bob-0").await,
            "bob's oldest was kept"
        );
        assert!(held(StateKind::Ceremony, "bob-1").await);
        assert!(!held(StateKind::DecoyCeremony, "decoy-0").await);
        // A decoy (a name without passkeys) is kept as a real name's is: its oldest goes past the same
        // number, so a name's starts tell nothing about it.
        for i in 0..=StateKind::DecoyCeremony.per_subject().unwrap() {
            put(StateKind::DecoyCeremony, format!("eve-{i}"), Some("eve")).await;
        }
        assert!(!held(StateKind::DecoyCeremony, "eve-0").await);
        assert!(held(StateKind::DecoyCeremony, "eve-1").await);
        // One staff member signing in again and again pushes out their own oldest web session only.
        put(StateKind::Session, "alice-web".into(), Some("alice")).await;
        for i in 0..=StateKind::Session.per_subject().unwrap() {
            put(StateKind::Session, format!("mallory-{i}"), Some("mallory")).await;
        }
        assert!(held(StateKind::Session, "alice-web").await);
        assert!(!held(StateKind::Session, "mallory-0").await);
        assert!(held(StateKind::Session, "mallory-1").await);
        // A link keeps its latest ceremony only.
        put(
            StateKind::LinkCeremony,
            "link-2".into(),
            Some("sha-of-link"),
        )
        .await;
        assert!(!held(StateKind::LinkCeremony, "link-1").await);
        assert!(held(StateKind::LinkCeremony, "link-2").await);
    })
    .await;
}

/// Which of `keys` are still held as vendor links (at time 5000).
async fn held_links(s: &Store, keys: &[&'static str]) -> Vec<&'static str> {
    let mut held = Vec::new();
    for &key in keys {
        if s.web_state_get("vendor-link", key, 5000, None)
            .await
            .unwrap()
            .is_some()
        {
            held.push(key);
        }
    }
    held
}

/// Issue 12: staff sign-in failures are counted per (account, source) within a window: another
/// source's failures and old ones do not count, a sign-in clears only its own source, and recording a
/// failure forgets every failure from before the window.
#[tokio::test]
async fn staff_signin_failures_count_per_account_and_source_in_a_window() {
    on_both(|s| async move {
        let mut tx = s.begin().await.unwrap();
        let bob = tx
            .insert_staff_user("bob", chaperone::model::Role::Approver, "t1", 9999, 100)
            .await
            .unwrap();
        let eve = tx
            .insert_staff_user("eve", chaperone::model::Role::Approver, "t2", 9999, 100)
            .await
            .unwrap();
        tx.audit(ev(Action::UserAdd), 100).await.unwrap();
        tx.commit("t").await.unwrap();

        let mut tx = s.begin().await.unwrap();
        tx.hold_staff_user(bob).await.unwrap();
        for at in [1000, 1001, 1002] {
            tx.add_staff_signin_failure(bob, "192.0.2.1", at, 0, at == 1002)
                .await
                .unwrap();
        }
        tx.add_staff_signin_failure(bob, "192.0.2.2", 1003, 0, true)
            .await
            .unwrap();
        tx.add_staff_signin_failure(eve, "192.0.2.1", 1003, 0, true)
            .await
            .unwrap();
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.1", 0).await.unwrap(),
            3
        );
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.2", 0).await.unwrap(),
            1
        );
        // Those past the password count per account, from every source.
        assert_eq!(tx.staff_second_factor_failures(bob, 0).await.unwrap(), 2);
        assert_eq!(tx.staff_second_factor_failures(bob, 1003).await.unwrap(), 1);
        // The window: only failures at or after `since` count.
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.1", 1001)
                .await
                .unwrap(),
            2
        );
        tx.audit(ev(Action::StaffSigninFailed), 1003).await.unwrap();
        tx.commit("t").await.unwrap();

        // A sign-in from 192.0.2.2 clears that source only.
        let mut tx = s.begin().await.unwrap();
        tx.clear_staff_signin_failures(bob, "192.0.2.2")
            .await
            .unwrap();
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.2", 0).await.unwrap(),
            0
        );
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.1", 0).await.unwrap(),
            3
        );
        tx.audit(ev(Action::StaffSignin), 1004).await.unwrap();
        tx.commit("t").await.unwrap();

        // A failure recorded later forgets the rows from before its window, everyone's.
        let mut tx = s.begin().await.unwrap();
        tx.add_staff_signin_failure(bob, "192.0.2.1", 2000, 1002, false)
            .await
            .unwrap();
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.1", 0).await.unwrap(),
            2,
            "1002 and 2000 are left"
        );
        assert_eq!(
            tx.staff_signin_failures(eve, "192.0.2.1", 0).await.unwrap(),
            1
        );
        // Nothing audited: the transaction rolls back when dropped.
        drop(tx);
        let mut tx = s.begin().await.unwrap();
        assert_eq!(
            tx.staff_signin_failures(bob, "192.0.2.1", 0).await.unwrap(),
            3
        );
        drop(tx);
    })
    .await;
}

/// Like [`on_both`], with the database's URL too, for tests that must write what the store refuses (a
/// database from before a rule).
pub(crate) async fn on_both_with_url<F, Fut>(test: F)
where
    F: Fn(Store, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let sqlite = Store::open(&url, throwaway_seal())
        .await
        .expect("open sqlite");
    test(sqlite, url).await;
    if let Some(url) = postgres::fresh_database().await {
        let pg = Store::open(&url, throwaway_seal())
            .await
            .expect("open postgres");
        test(pg, url).await;
    }
}

/// Writes `sql` behind the store's back (what an older version of chaperone may have stored).
pub(crate) async fn raw(url: &str, sql: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Reads one text value with `sql` behind the store's back (NULL reads as `None`).
pub(crate) async fn raw_text(url: &str, sql: &str) -> Option<String> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let value = row.try_get::<Option<String>, _>(0).unwrap();
    conn.close().await.unwrap();
    value
}

#[tokio::test]
async fn two_services_on_one_port_are_refused_and_an_old_asset_with_them_opens_no_tunnel() {
    use chaperone::policy::{Denial, PolicyError, Principal, authorize_tunnel};
    let login = |id: i64, name: &str, fp: &str| Principal {
        vendor_id: id,
        vendor: name.to_owned(),
        key_fingerprint: fp.to_owned(),
    };

    on_both_with_url(|store, url| async move {
        let v = vendor(&store, "alice", "SHA256:port").await;
        let a = asset(&store, "mri-01").await; // ssh 22, dicom 104
        let clash: Vec<Service> = vec![
            "ssh:22/ssh".parse().unwrap(),
            "raw:22/tcp".parse().unwrap(),
        ];
        let mut tx = store.begin().await.unwrap();
        let added = tx
            .insert_asset(
                &NewAsset {
                    name: "ct-02",
                    address: "127.0.0.1",
                    zone: "radiology",
                    purpose: "CT",
                    criticality: Criticality::Normal,
                    vendor_org: None,
                    os: None,
                    patch_status: None,
                    services: &clash,
                },
                100,
            )
            .await;
        assert!(
            matches!(&added, Err(StoreError::Conflict(m)) if m.contains("share port 22")),
            "{added:?}"
        );
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        let raw_22: Service = "raw:22/tcp".parse().unwrap();
        let changed = tx.insert_service(a, &raw_22).await;
        assert!(
            matches!(&changed, Err(StoreError::Conflict(m)) if m.contains("share port 22")),
            "{changed:?}"
        );
        tx.insert_service(a, &"hl7:2575/tcp".parse().unwrap())
            .await
            .unwrap();
        tx.audit(ev(Action::AssetServiceAdd), 100).await.unwrap();
        tx.commit("t").await.unwrap();
        assert!(store.asset("ct-02").await.unwrap().is_none());
        // One query reads the asset and its services (a missing asset costs the same): in port order.
        let mri = store.require_asset("mri-01").await.unwrap();
        assert_eq!(
            mri.services
                .iter()
                .map(|s| (s.name.as_str(), s.port))
                .collect::<Vec<_>>(),
            [("ssh", 22), ("dicom", 104), ("hl7", 2575)]
        );

        // A database from before the rule: mri-01 also lists a tcp service on sshd's port.
        raw(
            &url,
            &format!(
                "INSERT INTO asset_services (asset_id, name, port, kind) VALUES ({a}, 'raw', 22, 'tcp')"
            ),
        )
        .await;
        let mut tx = store.begin().await.unwrap();
        let raw_only = grant(&mut tx, v, a, &["raw".to_owned()], 10_000).await;
        grant(&mut tx, v, a, &["dicom".to_owned()], 10_000).await;
        tx.audit(ev(Action::GrantIssue), 100).await.unwrap();
        tx.commit("t").await.unwrap();
        let alice = login(v, "alice", "SHA256:port");
        let tunnel = authorize_tunnel(&store, 200, &alice, "mri-01", 22).await;
        assert!(
            matches!(
                &tunnel,
                Err(PolicyError::Denied(Denial::SharedPort { port: 22, .. }))
            ),
            "grant {raw_only}: {tunnel:?}"
        );
        // By address too, and other ports are unaffected.
        let tunnel = authorize_tunnel(&store, 200, &alice, "127.0.0.1", 22).await;
        assert!(
            matches!(&tunnel, Err(PolicyError::Denied(Denial::SharedPort { .. }))),
            "{tunnel:?}"
        );
        let dicom = authorize_tunnel(&store, 200, &alice, "mri-01", 104)
            .await
            .unwrap();
        assert_eq!(dicom.service().name, "dicom");
        // A vendor without a grant on that port learns nothing about it.
        let eve = login(vendor(&store, "eve", "SHA256:eve").await, "eve", "SHA256:eve");
        let tunnel = authorize_tunnel(&store, 200, &eve, "mri-01", 22).await;
        assert!(
            matches!(&tunnel, Err(PolicyError::Denied(Denial::NoGrant { .. }))),
            "{tunnel:?}"
        );

        // One device entered twice: a tcp service of another asset on mri-01's sshd is refused ...
        let gateway = |services: &'static [&'static str]| NewAsset {
            name: "mri-01-gw",
            address: "127.0.0.1",
            zone: "radiology",
            purpose: "gateway",
            criticality: Criticality::Normal,
            vendor_org: None,
            os: None,
            patch_status: None,
            services: Box::leak(
                services
                    .iter()
                    .map(|s| s.parse::<Service>().unwrap())
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
        };
        let mut tx = store.begin().await.unwrap();
        let added = tx.insert_asset(&gateway(&["console:22/tcp"]), 100).await;
        assert!(
            matches!(&added, Err(StoreError::Conflict(m)) if m.contains("asset mri-01's service ssh")),
            "{added:?}"
        );
        drop(tx);
        // ... and, stored before the rule, it opens no tunnel.
        let mut tx = store.begin().await.unwrap();
        let gw = tx
            .insert_asset(&gateway(&["console:2222/tcp"]), 100)
            .await
            .unwrap();
        tx.audit(ev(Action::AssetAdd), 100).await.unwrap();
        tx.commit("t").await.unwrap();
        raw(&url, &format!("UPDATE asset_services SET port = 22 WHERE asset_id = {gw}")).await;
        let mut tx = store.begin().await.unwrap();
        grant(&mut tx, v, gw, &["console".to_owned()], 10_000).await;
        tx.audit(ev(Action::GrantIssue), 100).await.unwrap();
        tx.commit("t").await.unwrap();
        for host in ["mri-01-gw", "127.0.0.1"] {
            let tunnel = authorize_tunnel(&store, 200, &alice, host, 22).await;
            assert!(
                matches!(&tunnel, Err(PolicyError::Denied(Denial::SharedPort { .. }))),
                "{host}: {tunnel:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn grants_go_only_to_enabled_vendors_and_pending_requests_are_capped_on_both_backends() {
    use chaperone::config::PolicyConfig;
    use chaperone::model::{RequestStatus, Role};
    use chaperone::policy::events::Events;
    use chaperone::policy::grants::{self, Actor, GrantError, Issue, Source};
    use chaperone::policy::requests::{
        self, Approver, AuthMethod, DecideError, Decision, FileRefusal,
    };
    use std::time::Duration;

    on_both(|store| async move {
        let v = vendor(&store, "alice", "SHA256:cap").await;
        asset(&store, "mri-01").await;
        let events = Events::default();
        let limits = PolicyConfig {
            max_request: Duration::from_secs(8 * 3600),
            zone_max_request: Default::default(),
            request_ttl: Duration::from_secs(3600),
            max_pending_per_vendor: 2,
        };
        let ssh = vec!["ssh".to_owned()];
        let alice = store.vendor("alice").await.unwrap().unwrap();
        let file = |now| {
            let (store, events, limits, alice, ssh) = (&store, &events, &limits, &alice, &ssh);
            async move {
                requests::file(
                    store,
                    events,
                    limits,
                    now,
                    alice,
                    "mri-01",
                    ssh,
                    Duration::from_secs(3600),
                    "INC-1",
                )
                .await
            }
        };
        let first = file(1000).await.unwrap();
        file(1001).await.unwrap();
        let third = file(1002).await;
        assert!(
            matches!(
                third,
                Err(FileRefusal::TooManyPending { pending: 2, max: 2 })
            ),
            "{third:?}"
        );
        // Lapsed requests do not count, even before the sweep marks them expired.
        file(1000 + 3600).await.unwrap();

        // Disabled after filing: the request cannot be approved, a staff grant cannot be issued,
        // and both refusals are audited; nothing else changes.
        let mut tx = store.begin().await.unwrap();
        tx.set_vendor_enabled(v, false).await.unwrap();
        tx.audit(ev(Action::VendorDisable), 1100).await.unwrap();
        tx.commit("t").await.unwrap();
        staff(&store, "bob", Role::Approver).await;
        let bob = Approver {
            name: "bob".into(),
            role: Role::Approver,
            method: AuthMethod::Passkey,
            dn: None,
            entry_id: None,
            zones: Default::default(),
        };
        let approve = Decision::Approve {
            services: None,
            duration_secs: None,
        };
        let refused = requests::decide(&store, &events, 1200, &bob, first.id, approve).await;
        assert!(
            matches!(&refused, Err(DecideError::VendorDisabled(v)) if v == "alice"),
            "{refused:?}"
        );
        let still = store.request(first.id).await.unwrap().unwrap();
        assert_eq!(still.status, RequestStatus::Pending);
        assert!(
            still.approvals.is_empty(),
            "the refused approval is not kept"
        );
        let staff = grants::issue(
            &store,
            &events,
            1200,
            &Actor::os("os:root"),
            &Issue {
                vendor: "alice",
                asset: "mri-01",
                services: &ssh,
                duration: Duration::from_secs(3600),
                reason: "CHG-1",
                source: Source::StaffIssued,
                approvers: &[],
            },
        )
        .await;
        assert!(
            matches!(&staff, Err(GrantError::VendorDisabled(_))),
            "{staff:?}"
        );
        assert!(store.grants(None).await.unwrap().is_empty());
        let audit = store.audit_page(0, 1000).await.unwrap();
        let refusals: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "grant.refused")
            .collect();
        assert_eq!(refusals.len(), 2, "{refusals:?}");
        assert!(
            refusals[0]
                .detail
                .contains(&format!("\"source\":\"request:{}\"", first.id))
        );
        assert!(refusals[1].detail.contains("\"source\":\"staff-issued\""));
        // A disabled vendor files nothing either, even with a login from before.
        let late = file(1300).await;
        assert!(matches!(late, Err(FileRefusal::VendorDisabled)), "{late:?}");
        assert!(verify(&store).await.is_ok());
    })
    .await;
}

fn start(id: &str, v: i64, a: i64, g: i64, recorded: bool) -> SessionStart {
    SessionStart {
        id: id.to_owned(),
        vendor_id: v,
        asset_id: a,
        grant_id: g,
        kind: "exec",
        service: "ssh".into(),
        client_addr: "127.0.0.1:5".into(),
        detail: "uptime".into(),
        node: "node-a".into(),
        started_at: 150,
        recording: recorded.then(|| ("exec-stream-v1", format!("/r/{id}.exec"))),
        audit: AuditEvent::new(
            "vendor:alice",
            Action::SessionStart,
            format!("session:{id}"),
            json!({}),
        ),
    }
}

/// Session starts that come at once are written together (a burst shares transactions), each with its
/// own recording id and audit event in an intact chain; a start that fails (here a duplicate id) refuses
/// only itself, not the others written with it.
#[tokio::test]
async fn session_starts_at_once_are_written_together_and_fail_alone() {
    on_both(|store| async move {
        let v = vendor(&store, "alice", "SHA256:a").await;
        let a = asset(&store, "mri-01").await;
        let mut tx = store.begin().await.unwrap();
        let g = grant(&mut tx, v, a, &["ssh".to_owned()], 10_000).await;
        tx.audit(ev(Action::GrantIssue), 100).await.unwrap();
        tx.commit("t").await.unwrap();

        // The first start to run takes the writer turn alone; the rest queue behind it and go together,
        // s2 twice among them (both recorded).
        let mut ids: Vec<String> = (0..150).map(|i| format!("s{i}")).collect();
        ids.insert(3, "s2".into());
        let recorded = |i: usize| !i.is_multiple_of(3) || i == 3;
        let results = futures::future::join_all(
            ids.iter()
                .enumerate()
                .map(|(i, id)| store.start_session(start(id, v, a, g, recorded(i)))),
        )
        .await;
        let failed: Vec<usize> = (0..ids.len()).filter(|&i| results[i].is_err()).collect();
        assert!(
            failed == [2] || failed == [3],
            "only a duplicate fails: {failed:?}"
        );
        let failed = failed[0];
        assert!(
            matches!(results[failed], Err(StoreError::Conflict(_))),
            "{:?}",
            results[failed]
        );
        let mut recordings = std::collections::HashSet::new();
        for (i, (id, result)) in ids.iter().zip(&results).enumerate() {
            if i == failed {
                continue;
            }
            let recording = result.as_ref().unwrap();
            let session = store.session(id).await.unwrap();
            assert_eq!(session.started_at, 150);
            match recording {
                Some(r) => {
                    assert!(recorded(i), "{id}");
                    assert!(recordings.insert(*r), "recording id {r} given twice");
                    assert_eq!(session.recordings.len(), 1, "{id}");
                    assert_eq!(session.recordings[0].id, *r, "{id}");
                    assert_eq!(session.recordings[0].path, format!("/r/{id}.exec"));
                }
                None => {
                    assert!(!recorded(i), "{id}");
                    assert!(session.recordings.is_empty(), "{id}");
                }
            }
        }
        assert_eq!(recordings.len(), 100);
        let starts = store
            .audit_page(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.action == "session.start")
            .count();
        assert_eq!(starts, 150, "one audit event per written start");
        verify(&store)
            .await
            .expect("the chain holds across grouped starts");
    })
    .await;
}

/// The look at running nodes that `restore` and `secrets rotate` take before migrating: an empty
/// database (a PostgreSQL one `pg_restore` has not filled yet) has no nodes, not an error.
#[tokio::test]
async fn an_unmigrated_database_has_no_running_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.db");
    let url = format!("sqlite://{}", file.display());
    // A look creates no SQLite file (a mistyped path is an error, not a new database).
    assert!(
        Store::connect_unmigrated(&url, throwaway_seal())
            .await
            .is_err()
    );
    assert!(!file.exists());
    std::fs::File::create(&file).unwrap();
    let mut urls = vec![url];
    urls.extend(postgres::fresh_database().await);
    for url in urls {
        let store = Store::connect_unmigrated(&url, throwaway_seal())
            .await
            .unwrap();
        assert_eq!(store.nodes_seen_since(0).await.unwrap(), vec![], "{url}");
        let migrated = Store::open(&url, throwaway_seal()).await.unwrap();
        migrated.node_seen("node-a", 5).await.unwrap();
        assert_eq!(
            store.nodes_seen_since(0).await.unwrap(),
            vec![("node-a".to_owned(), 5)],
            "{url}"
        );
    }
}

/// The chain head carries a seal keyed by the secrets key (`audit::HeadSeal`): an event appended by
/// someone who can write the database, linked and with the head moved as chaperone would, walks clean
/// but leaves the head without its seal; a node appending after it does not seal it again; only a seal
/// that names the head before it (`audit seal`) does. A node holding another key refuses to append.
#[tokio::test]
async fn the_audit_chain_head_is_sealed_by_the_secrets_key() {
    use chaperone::audit::{ChainBreak, chain_hash};
    use chaperone::store::SealJudge;
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!("sqlite://{}", dir.path().join("t.db").display())];
    urls.extend(postgres::fresh_database().await);
    for url in urls {
        let seal = throwaway_seal();
        let store = Store::open(&url, seal.clone()).await.unwrap();
        let unsealed_at = |head: Result<(i64, String), ChainBreak>| match head {
            Err(ChainBreak::Unsealed { seq }) => Some(seq),
            _ => None,
        };
        // An empty log has nothing to forge.
        assert!(store.sealed_head().await.unwrap().is_ok(), "{url}");
        for action in [Action::VendorAdd, Action::AssetAdd] {
            let mut tx = store.begin().await.unwrap();
            tx.audit(ev(action), 10).await.unwrap();
            tx.commit("t").await.unwrap();
        }
        let head = store
            .sealed_head()
            .await
            .unwrap()
            .expect("sealed by the appends");
        assert_eq!(head.0, 2, "{url}");
        // A node holding another key neither reads it as sealed nor appends to it (it would strip
        // the seal for every node).
        let other = Store::open(&url, throwaway_seal()).await.unwrap();
        assert!(
            matches!(
                other.sealed_head().await.unwrap(),
                Err(ChainBreak::OtherKey { seq: 2, ref theirs, .. }) if *theirs == seal.key_id()
            ),
            "{url}"
        );
        let mut tx = other.begin().await.unwrap();
        let refused = tx.audit(ev(Action::VendorAdd), 11).await.unwrap_err();
        assert!(
            refused.to_string().contains("sealed under secrets key"),
            "{refused}"
        );
        drop(tx);
        other.close().await;
        assert_eq!(store.sealed_head().await.unwrap(), Ok(head.clone()));

        // A well-formed event appended behind chaperone's back, the head moved onto it.
        let forged = chain_hash(
            3,
            20,
            "staff:mallory",
            "session.release",
            "session:s1",
            "{}",
            &head.1,
        );
        raw(
            &url,
            &format!(
                "INSERT INTO audit_events (seq, at, actor, action, subject, detail, prev_hash, hash) \
                 VALUES (3, 20, 'staff:mallory', 'session.release', 'session:s1', '{{}}', '{}', '{forged}')",
                head.1
            ),
        )
        .await;
        raw(
            &url,
            &format!("UPDATE audit_head SET seq = 3, hash = '{forged}'"),
        )
        .await;
        assert_eq!(verify(&store).await, Ok(3), "the plain chain links: {url}");
        assert_eq!(unsealed_at(store.sealed_head().await.unwrap()), Some(3));
        // A node's next event does not vouch for it.
        let mut tx = store.begin().await.unwrap();
        tx.audit(ev(Action::VendorDisable), 30).await.unwrap();
        tx.commit("t").await.unwrap();
        assert_eq!(unsealed_at(store.sealed_head().await.unwrap()), Some(4));
        let four = store.audit_page(3, 1).await.unwrap().pop().unwrap();
        // Sealed again only as the event right after the head an operator names (`audit seal`):
        // not under a judge it does not hold for, not after another head.
        let mut tx = store.begin().await.unwrap();
        tx.audit(ev(Action::AuditSealed), 40).await.unwrap();
        let (_, judged) = tx
            .seal_head(SealJudge::HeldUnder(&seal), &seal)
            .await
            .unwrap();
        assert!(!judged, "{url}");
        let (_, behind) = tx
            .seal_head(
                SealJudge::Follows {
                    seq: 3,
                    hash: &forged,
                },
                &seal,
            )
            .await
            .unwrap();
        assert!(!behind, "a head past the one named is not sealed: {url}");
        let (_, other_hash) = tx
            .seal_head(
                SealJudge::Follows {
                    seq: 4,
                    hash: &forged,
                },
                &seal,
            )
            .await
            .unwrap();
        assert!(
            !other_hash,
            "a head not linked to the one named is not sealed: {url}"
        );
        let ((seq, _), sealed) = tx
            .seal_head(
                SealJudge::Follows {
                    seq: 4,
                    hash: &four.hash,
                },
                &seal,
            )
            .await
            .unwrap();
        assert!(sealed && seq == 5, "{url}");
        tx.commit("t").await.unwrap();
        assert_eq!(store.sealed_head().await.unwrap().map(|h| h.0), Ok(5));
        assert_eq!(verify(&store).await, Ok(5), "{url}");
        store.close().await;

        // A database from before the seal, migrated by this release, is not sealed by any start: its
        // head waits for an operator (whoever can write the database could make it look so).
        raw(&url, "ALTER TABLE audit_head DROP COLUMN mac").await;
        raw(&url, "DELETE FROM _sqlx_migrations WHERE version = 21").await;
        let upgraded = Store::open(&url, seal.clone()).await.unwrap();
        assert_eq!(unsealed_at(upgraded.sealed_head().await.unwrap()), Some(5));
        upgraded.close().await;
    }
}
