//! Recordings this process has seen hashed to the digest the audit log vouches for, with the file's stamp
//! at that moment: the indexer's read-back of a closed recording, or a page's check. Never the
//! recorder's own digest, which comes from memory: a file someone else wrote to during the session
//! would be remembered as intact. While the file's [`FileStamp`] is unchanged nobody has written to it,
//! so a history page can show it intact without reading it again.
//!
//! Memory only, on purpose: a stamp kept in the database could be rewritten together with the file and
//! its row. After a restart the first look at a recording hashes it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chaperone_recorder::FileStamp;

/// At most this many recordings are remembered (about 100 bytes each); past it, an arbitrary one is
/// forgotten for each new one, which only costs a re-hash.
const MAX_REMEMBERED: usize = 200_000;

#[derive(Debug, Clone, Default)]
pub struct Proven(Arc<Mutex<HashMap<i64, (FileStamp, String)>>>);

impl Proven {
    /// Recording `id`'s file had `stamp` when its SHA-256 was `sha256`.
    pub fn remember(&self, id: i64, stamp: FileStamp, sha256: &str) {
        let Ok(mut known) = self.0.lock() else { return };
        if known.len() >= MAX_REMEMBERED
            && !known.contains_key(&id)
            && let Some(&any) = known.keys().next()
        {
            known.remove(&any);
        }
        known.insert(id, (stamp, sha256.to_owned()));
    }

    /// Whether recording `id`'s file was hashed to `sha256` while it had `stamp`, the stamp it has now.
    pub fn vouches(&self, id: i64, stamp: FileStamp, sha256: &str) -> bool {
        self.0.lock().is_ok_and(|known| {
            known
                .get(&id)
                .is_some_and(|(s, sha)| *s == stamp && sha == sha256)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(path: &std::path::Path) -> FileStamp {
        FileStamp::of(&std::fs::metadata(path).unwrap()).unwrap()
    }

    #[test]
    fn a_file_written_after_it_was_hashed_is_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.cast");
        std::fs::write(&path, b"recorded").unwrap();
        let proven = Proven::default();
        proven.remember(7, stamp_of(&path), "abc");
        assert!(proven.vouches(7, stamp_of(&path), "abc"));
        assert!(!proven.vouches(7, stamp_of(&path), "abd"), "another digest");
        assert!(
            !proven.vouches(8, stamp_of(&path), "abc"),
            "another recording"
        );
        // Same size, same content length: the change time still moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"RECORDED").unwrap();
        assert!(!proven.vouches(7, stamp_of(&path), "abc"));
    }
}
