//! Change notices inside one process: a request filed or decided, a grant revoked, a session ended.
//!
//! Entry point: [`Events`] (in `App`, shared by the SSH listener and the web app). A notice is only a hint
//! to re-read the store: the waiting `ssh … request` and the web page's live updates also re-read on a
//! short timer, so a decision made by another process or node (PostgreSQL) is seen within half a second.

use tokio::sync::broadcast;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A request was filed, approved (once or finally), denied or expired.
    Request(i64),
    /// A grant was issued or revoked.
    Grant(i64),
    /// A session started or ended, or was told to end.
    Session(String),
}

/// A broadcast of [`Change`]s; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Change>,
}

impl Default for Events {
    fn default() -> Self {
        // Listeners that fall behind by more than this re-read everything (`RecvError::Lagged`).
        let (tx, _) = broadcast::channel(256);
        Events { tx }
    }
}

impl Events {
    pub fn send(&self, change: Change) {
        // No receiver is fine: nobody is waiting.
        let _ = self.tx.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}
