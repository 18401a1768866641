//! The tamper-evident audit log: every decision and every change is an event, hash-chained to the one
//! before it.
//!
//! Entry points: [`AuditEvent`] (what callers record, appended by `store::Tx::audit` in the same
//! transaction as the change it describes), [`chain_hash`] (the one definition of an event's hash) and
//! [`verify`] (walks the chain). The table is append-only: no code path updates or deletes an audit row.
//!
//! Hash of event n: `SHA-256("chaperone-audit-v1" ‖ seq ‖ at ‖ actor ‖ action ‖ subject ‖ detail ‖ prev_hash)`
//! where integers are 8-byte big-endian, strings are 4-byte big-endian length-prefixed UTF-8, and `prev_hash`
//! is event n-1's hash (64 zeros for the first). The head row (last seq + hash) catches deletions from the end.
//!
//! The head is sealed ([`HeadSeal`]): an HMAC of its seq and hash under a subkey of the secrets key, written
//! by the append path (`store::audit::append_many`) in the same statement that moves the head, and otherwise
//! only by an operator's `audit seal` and by `secrets rotate` (`store::audit::seal_head`). The plain chain can
//! be recomputed by anyone who can write the database; the seal cannot, without the key.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::UnixTime;
pub use chaperone_model::action::Action;

/// The hash before the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to record. `detail` is a JSON object with the specifics (never a secret).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Who did it: `os:root` (CLI), `vendor:alice`, `staff:bob`, `system`.
    pub actor: String,
    /// What happened: one of the typed [`Action`]s (stored by its dotted name, `vendor.add`), so that an
    /// event no consumer recognises cannot be written.
    pub action: Action,
    /// What it happened to: `vendor:alice`, `asset:mri-01`, `grant:7`, `session:…`.
    pub subject: String,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(
        actor: impl Into<String>,
        action: Action,
        subject: impl Into<String>,
        detail: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            actor: actor.into(),
            action,
            subject: subject.into(),
            detail,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: UnixTime,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// The JSON text exactly as hashed.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The one definition of an event's hash.
pub fn chain_hash(
    seq: i64,
    at: UnixTime,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"chaperone-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for s in [actor, action, subject, detail, prev_hash] {
        // Fields are bounded far below 4 GiB by the callers; saturate rather than wrap if not.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        h.update(len.to_be_bytes());
        h.update(s.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The row's content does not match its hash: altered.
    #[error("audit event {seq}: content does not match its hash (altered)")]
    Altered { seq: i64 },
    /// The row does not point at the previous row's hash: altered or inserted.
    #[error("audit event {seq}: does not follow event {prev} (altered, inserted or reordered)")]
    Unlinked { seq: i64, prev: i64 },
    /// A sequence number is missing: deleted.
    #[error("audit event {missing}: missing (deleted); found event {found} next")]
    Gap { missing: i64, found: i64 },
    /// Rows at the end are missing, or the head was altered.
    #[error(
        "audit event {missing}: missing at the end of the log (deleted); the head records {head_seq} events"
    )]
    Truncated { missing: i64, head_seq: i64 },
    /// Rows beyond the recorded head: inserted, or the head was altered.
    #[error("audit event {seq}: beyond the recorded head {head_seq} (inserted)")]
    BeyondHead { seq: i64, head_seq: i64 },
    /// The head's hash does not match the last event.
    #[error("audit event {seq}: differs from the hash recorded in the chain head (altered)")]
    HeadMismatch { seq: i64 },
    /// The event's hash is no longer the one this node verified in an unbroken chain before: events up
    /// to it were rewritten and linked again.
    #[error(
        "audit event {seq}: its hash is not the one verified before (the events up to it were rewritten)"
    )]
    Rewritten { seq: i64 },
    /// The head is behind an event this node verified before: events were deleted from the end of the
    /// log and the head moved back with them (or an older copy of the log was restored under a running
    /// node).
    #[error(
        "the chain head records {head_seq} events, but this node verified event {verified} before: events were deleted from the end of the log (or an older copy restored)"
    )]
    Shortened { head_seq: i64, verified: i64 },
    /// The head does not carry this installation's seal ([`HeadSeal`]): it was moved by someone who can
    /// write the database but does not hold the secrets key (events appended, or the chain recomputed
    /// to the head), or by a node that found it so and would not seal what it could not vouch for.
    #[error(
        "the chain head (event {seq}) does not carry the seal of this installation's secrets key: the log \
         was written by someone without the key (a log from a release before the seal reads so too); \
         see `chaperone audit verify` and `chaperone audit seal`"
    )]
    Unsealed { seq: i64 },
    /// The head carries a seal under another secrets key than this node's: a node not given the
    /// installation's current key, or a seal made up by someone without any.
    #[error(
        "the chain head (event {seq}) is sealed under secrets key {theirs}, not under this node's key \
         {ours}: if {theirs} is the installation's current key, give it to this node; if it never was, \
         the seal was made up without a key (see `chaperone audit seal --replacing-key {theirs}`)"
    )]
    OtherKey {
        seq: i64,
        theirs: String,
        ours: String,
    },
}

/// The seal on the chain head: HMAC-SHA256 of its seq and hash under a subkey of the secrets key (the
/// same on every node), stored as `KEYID:HEX` (the secrets key's short id). Whoever can write the
/// database but not read the key can recompute the plain chain up to a head of their making, but not
/// seal that head; only the head is sealed, since every event before it is bound to it by the chain. An
/// empty log (seq 0, the genesis hash) needs no seal: there is nothing in it to forge (a log wiped whole
/// reads so too: every session's vouching events gone with it, its recordings read "not digested").
#[derive(Clone)]
pub struct HeadSeal {
    key: ring::hmac::Key,
    id: String,
}

impl std::fmt::Debug for HeadSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadSeal(key id {})", self.id)
    }
}

/// What a head's stored seal says ([`HeadSeal::judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealVerdict {
    /// Sealed under this key, for this head.
    Sealed,
    /// No seal, or one that does not hold for this head: moved by someone without the key.
    Unsealed,
    /// Sealed under another secrets key (its id): a node that was not given the installation's current
    /// key, or one left from before a rotation.
    OtherKey(String),
}

impl SealVerdict {
    /// The break a head at `seq` judged so is, under `seal`'s key; `None` when it is sealed.
    pub fn broken(&self, seq: i64, seal: &HeadSeal) -> Option<ChainBreak> {
        match self {
            SealVerdict::Sealed => None,
            SealVerdict::Unsealed => Some(ChainBreak::Unsealed { seq }),
            SealVerdict::OtherKey(theirs) => Some(ChainBreak::OtherKey {
                seq,
                theirs: theirs.clone(),
                ours: seal.key_id().to_owned(),
            }),
        }
    }
}

impl HeadSeal {
    /// The seal of the installation whose secrets key is `secrets`.
    pub fn new(secrets: &crate::secrets::SecretsKey) -> HeadSeal {
        HeadSeal {
            key: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &*secrets.subkey("audit-chain-head"),
            ),
            id: secrets.id(),
        }
    }

    /// The short id of the secrets key this seal is keyed by.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    fn message(seq: i64, hash: &str) -> Vec<u8> {
        [
            b"chaperone-audit-head-v1".as_slice(),
            &seq.to_be_bytes(),
            hash.as_bytes(),
        ]
        .concat()
    }

    /// The seal (`KEYID:HEX`) of the head at event `seq` with hash `hash`.
    pub fn sign(&self, seq: i64, hash: &str) -> String {
        let mac = ring::hmac::sign(&self.key, &HeadSeal::message(seq, hash));
        format!("{}:{}", self.id, hex::encode(mac))
    }

    /// What `mac` (as stored; `None` for no seal) says of the head at `seq` with `hash`.
    pub fn judge(&self, seq: i64, hash: &str, mac: Option<&str>) -> SealVerdict {
        if seq == 0 && hash == GENESIS_HASH {
            return SealVerdict::Sealed;
        }
        let Some((id, mac)) = mac.and_then(|m| m.split_once(':')) else {
            return SealVerdict::Unsealed;
        };
        // No secrets key has an id other than 16 lowercase hex digits: anything else was made up.
        if !(id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) {
            return SealVerdict::Unsealed;
        }
        if id != self.id {
            return SealVerdict::OtherKey(id.to_owned());
        }
        match hex::decode(mac) {
            Ok(mac)
                if ring::hmac::verify(&self.key, &HeadSeal::message(seq, hash), &mac).is_ok() =>
            {
                SealVerdict::Sealed
            }
            _ => SealVerdict::Unsealed,
        }
    }
}

/// Incremental verifier: feed rows in `seq` order, then call [`Verifier::finish`] with the head.
#[derive(Debug)]
pub struct Verifier {
    prev_seq: i64,
    prev_hash: String,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            prev_seq: 0,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl Verifier {
    /// A verifier that goes on after `row`, taken as it is stored: to check a stretch of the chain (the
    /// events that vouch for a recording and their neighbours), not all of it.
    pub fn after(row: &AuditRow) -> Verifier {
        Verifier {
            prev_seq: row.seq,
            prev_hash: row.hash.clone(),
        }
    }

    /// The hash of the last event pushed (recomputed: it matched), or of the row it started after.
    pub fn last_hash(&self) -> &str {
        &self.prev_hash
    }

    pub fn push(&mut self, row: &AuditRow) -> Result<(), ChainBreak> {
        if row.seq != self.prev_seq + 1 {
            return Err(ChainBreak::Gap {
                missing: self.prev_seq + 1,
                found: row.seq,
            });
        }
        if row.prev_hash != self.prev_hash {
            return Err(ChainBreak::Unlinked {
                seq: row.seq,
                prev: self.prev_seq,
            });
        }
        let expected = chain_hash(
            row.seq,
            row.at,
            &row.actor,
            &row.action,
            &row.subject,
            &row.detail,
            &row.prev_hash,
        );
        if expected != row.hash {
            return Err(ChainBreak::Altered { seq: row.seq });
        }
        self.prev_seq = row.seq;
        self.prev_hash.clone_from(&row.hash);
        Ok(())
    }

    /// Checks the end of the chain against the head (last seq and hash). Returns the number of events.
    pub fn finish(self, head_seq: i64, head_hash: &str) -> Result<i64, ChainBreak> {
        if self.prev_seq < head_seq {
            return Err(ChainBreak::Truncated {
                missing: self.prev_seq + 1,
                head_seq,
            });
        }
        if self.prev_seq > head_seq {
            return Err(ChainBreak::BeyondHead {
                seq: head_seq + 1,
                head_seq,
            });
        }
        if self.prev_hash != head_hash {
            return Err(ChainBreak::HeadMismatch { seq: self.prev_seq });
        }
        Ok(self.prev_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a head's seal says: its own key's seal of this head holds; another head's, another key's
    /// (named by its id), a made-up id, bad hex or none do not; the empty log needs none.
    #[test]
    fn a_head_seal_holds_only_for_its_head_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::secrets::SecretsKey::generate_file(&dir.path().join("k")).unwrap();
        let other = crate::secrets::SecretsKey::generate_file(&dir.path().join("o")).unwrap();
        let (seal, theirs) = (HeadSeal::new(&key), HeadSeal::new(&other));
        let hash = "ab".repeat(32);
        let signed = seal.sign(7, &hash);
        assert_eq!(seal.judge(7, &hash, Some(&signed)), SealVerdict::Sealed);
        assert_eq!(seal.judge(8, &hash, Some(&signed)), SealVerdict::Unsealed);
        assert_eq!(
            seal.judge(7, &"cd".repeat(32), Some(&signed)),
            SealVerdict::Unsealed
        );
        assert_eq!(
            seal.judge(7, &hash, Some(&theirs.sign(7, &hash))),
            SealVerdict::OtherKey(other.id())
        );
        let (_, mac) = signed.split_once(':').unwrap();
        for made_up in [
            format!("{}:{mac}", key.id().to_uppercase()),
            format!("x:{mac}"),
            format!(":{mac}"),
            format!("{}:zz", key.id()),
            mac.to_owned(),
        ] {
            assert_eq!(
                seal.judge(7, &hash, Some(&made_up)),
                SealVerdict::Unsealed,
                "{made_up}"
            );
        }
        assert_eq!(seal.judge(7, &hash, None), SealVerdict::Unsealed);
        assert_eq!(seal.judge(0, GENESIS_HASH, None), SealVerdict::Sealed);
    }

    /// Events are typed ([`AuditEvent::new`] takes an [`Action`]), so the compiler checks what is
    /// written. What it cannot check are the labels a transaction's commit is logged under
    /// (`tx.commit("vendor.add")`), which name the action they write: a misspelt one would send whoever
    /// reads the log after the wrong event, so every such label in the source must parse.
    #[test]
    fn every_commit_label_is_a_typed_action() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let dotted = |s: &str| {
            s.contains('.')
                && s.split('.').all(|w| {
                    !w.is_empty()
                        && w.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
        };
        let mut all = Vec::new();
        files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut all,
        );
        let mut seen = 0;
        for path in all {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let call = line.contains(".commit(\"");
                if !call || line.trim_start().starts_with("//") {
                    continue;
                }
                for literal in line.split('"').skip(1).step_by(2).filter(|l| dotted(l)) {
                    seen += 1;
                    assert!(
                        Action::parse(literal).is_some()
                            // Three transactions are labelled for the log by what they do, not by the
                            // (several, typed) actions they write.
                            || ["request.decide", "staff.passkey", "user.directory"].contains(&literal),
                        "{}:{}: {literal:?} is not an audit action (model/src/action.rs)",
                        path.display(),
                        i + 1
                    );
                }
            }
        }
        assert!(seen > 50, "the scan found only {seen} names");
    }

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let detail = format!("{{\"n\":{seq}}}");
                let hash = chain_hash(seq, 1000 + seq, "os:root", "test", "x", &detail, &prev);
                let row = AuditRow {
                    seq,
                    at: 1000 + seq,
                    actor: "os:root".into(),
                    action: "test".into(),
                    subject: "x".into(),
                    detail,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[AuditRow], head: (i64, &str)) -> Result<i64, ChainBreak> {
        let mut v = Verifier::default();
        for r in rows {
            v.push(r)?;
        }
        v.finish(head.0, head.1)
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(5);
        assert_eq!(verify(&rows, (5, &rows[4].hash)), Ok(5));
        assert_eq!(verify(&[], (0, GENESIS_HASH)), Ok(0));
    }

    #[test]
    fn each_kind_of_tampering_names_the_event() {
        let rows = chain(5);
        let head = (5, rows[4].hash.as_str());
        let mut altered = rows.clone();
        altered[2].detail = "{\"n\":4}".into();
        assert_eq!(verify(&altered, head), Err(ChainBreak::Altered { seq: 3 }));
        let mut altered = rows.clone();
        altered[1].at += 1;
        assert_eq!(verify(&altered, head), Err(ChainBreak::Altered { seq: 2 }));
        let mut deleted = rows.clone();
        deleted.remove(1);
        assert_eq!(
            verify(&deleted, head),
            Err(ChainBreak::Gap {
                missing: 2,
                found: 3
            })
        );
        assert_eq!(
            verify(&rows[..4], head),
            Err(ChainBreak::Truncated {
                missing: 5,
                head_seq: 5
            })
        );
        let mut relinked = rows.clone();
        relinked[3].prev_hash = GENESIS_HASH.into();
        assert_eq!(
            verify(&relinked, head),
            Err(ChainBreak::Unlinked { seq: 4, prev: 3 })
        );
    }

    #[test]
    fn length_prefix_makes_fields_unambiguous() {
        let a = chain_hash(1, 1, "ab", "c", "", "", GENESIS_HASH);
        let b = chain_hash(1, 1, "a", "bc", "", "", GENESIS_HASH);
        assert_ne!(a, b);
    }
}
