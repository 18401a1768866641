//! Group commit for SQLite: every audited transaction is on disk before `Tx::commit` returns, with one
//! `fsync` shared by all the transactions that committed meanwhile.
//!
//! SQLite's `synchronous = FULL` syncs the write-ahead log inside each commit, while the commit holds the
//! one write lock: a burst of 200 session starts then costs 200 syncs in a row (about 9 ms each on the
//! reference VM, so the last session waits almost 2 s). The connections run with `synchronous = NORMAL`
//! instead (a commit only writes its frames to the WAL; SQLite still syncs the WAL before a checkpoint and
//! the database after it), and [`WalSync::after_commit`] syncs the WAL file after the write lock is
//! released: a sync that starts after a commit covers it, so waiters that queue up behind a running sync
//! are all covered by the next one. The durability is FULL's (nothing `commit` reported is lost at a power
//! cut), and the lock is held for microseconds instead of a disk flush.
//!
//! Writes outside a [`super::Tx`] (sign-in state, cursors, the search index) are not synced by themselves;
//! the next audited commit or checkpoint syncs them. None of them is evidence.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Syncs one SQLite database's write-ahead log for the transactions committed before the call.
#[derive(Debug)]
pub(crate) struct WalSync {
    wal: PathBuf,
    /// Commits that asked for a sync so far (each takes the next number after its commit returned).
    asked: AtomicU64,
    /// The highest number a completed sync covers; held while a sync runs.
    synced: tokio::sync::Mutex<u64>,
}

impl WalSync {
    /// For the database file at `db` (its log is `DB-wal`, beside it).
    pub(crate) fn new(db: &Path) -> WalSync {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: wal.into(),
            asked: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once every transaction committed before this call is on disk.
    pub(crate) async fn after_commit(&self) -> io::Result<()> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= ticket {
            // A sync that started after this commit has completed.
            return Ok(());
        }
        // Every number handed out so far belongs to a commit that has returned: this sync covers them.
        let upto = self.asked.load(Ordering::SeqCst);
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || sync_file(&wal))
            .await
            .map_err(io::Error::other)??;
        *synced = upto;
        Ok(())
    }
}

/// `fdatasync` of the file (any descriptor of a file flushes all of its written pages). A log that is not
/// there was checkpointed into the database, which SQLite syncs before it removes the log.
fn sync_file(path: &Path) -> io::Result<()> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_commits_share_syncs_and_a_missing_log_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chaperone.db");
        let sync = std::sync::Arc::new(WalSync::new(&db));
        // No log yet: nothing to sync.
        sync.after_commit().await.unwrap();
        std::fs::write(dir.path().join("chaperone.db-wal"), b"frames").unwrap();
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let s = sync.clone();
                tokio::spawn(async move { s.after_commit().await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(sync.asked.load(Ordering::SeqCst), 51);
        assert_eq!(
            *sync.synced.lock().await,
            51,
            "the last sync covers every commit"
        );
    }

    #[tokio::test]
    async fn a_log_that_cannot_be_opened_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chaperone.db");
        // The log's path goes through a file, so it cannot be opened (ENOTDIR, not "missing").
        std::fs::write(&db, b"").unwrap();
        let sync = WalSync::new(&db.join("inner.db"));
        assert!(sync.after_commit().await.is_err());
    }
}
