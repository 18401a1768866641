//! Session starts written together: the row, the recording and the audit event of every session that
//! starts while another start is being written go into the next transaction, one statement per table.
//!
//! A burst of session starts (a vendor's fleet-wide update, 200 channels opened at once on one
//! connection) otherwise queues 200 transactions on SQLite's one writer, each seven statements, each a
//! round trip to the database's thread on a machine whose cores are busy with the burst. Here the writer
//! turn is taken by whichever waiting start gets it first; it writes every start queued by then (up to
//! [`MOST`]) in one transaction of a fixed number of statements, and answers each (bench/README.md,
//! "session starts written together"). A start whose caller has given up before its turn is not written.
//!
//! Each start is still all or nothing: if a group's transaction fails, its starts are written again one
//! per transaction, so one bad start (or a failure it causes) refuses only its own session. A group that
//! committed but could not be synced to disk is not written again: each of its starts gets that error.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{NewRecording, NewSession, Result, Store, StoreError};
use crate::audit::AuditEvent;
use crate::model::UnixTime;

/// Starts written in one transaction, at most.
const MOST: usize = 64;

/// What starting a session writes: its row, its recording's row (kinds that have one) and its audit
/// event, all at `started_at`.
#[derive(Debug, Clone)]
pub struct SessionStart {
    pub id: String,
    pub vendor_id: i64,
    pub asset_id: i64,
    pub grant_id: i64,
    pub kind: &'static str,
    pub service: String,
    pub client_addr: String,
    pub detail: String,
    /// The node (`App::node`) running the session.
    pub node: String,
    pub started_at: UnixTime,
    /// The recording's format (`RecordingFormat::as_str`) and file.
    pub recording: Option<(&'static str, String)>,
    pub audit: AuditEvent,
}

impl SessionStart {
    fn row(&self) -> (NewSession<'_>, UnixTime) {
        let row = NewSession {
            id: &self.id,
            vendor_id: self.vendor_id,
            asset_id: self.asset_id,
            grant_id: self.grant_id,
            kind: self.kind,
            service: &self.service,
            client_addr: &self.client_addr,
            detail: &self.detail,
            node: &self.node,
        };
        (row, self.started_at)
    }
}

/// Starts waiting for a writer, oldest first.
#[derive(Default)]
pub(super) struct Queue(Mutex<Vec<Waiting>>);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

struct Waiting {
    start: SessionStart,
    /// The recording's id (kinds that have one), or why the start was not written.
    reply: oneshot::Sender<Result<Option<i64>>>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // Each change is one push or drain: a panic elsewhere cannot leave the queue half-changed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest starts whose callers still wait, at most [`MOST`].
    fn take(&self) -> Vec<Waiting> {
        let mut waiting = self.lock();
        waiting.retain(|w| !w.reply.is_closed());
        let n = waiting.len().min(MOST);
        waiting.drain(..n).collect()
    }
}

fn unanswered() -> StoreError {
    StoreError::Interrupted("the session start was not written: the bastion is stopping")
}

impl Store {
    /// Writes a session's start (row, recording row, audit event) together with the other starts queued
    /// meanwhile; returns the recording's id. Returns once the start is on disk. A caller that stops
    /// waiting before its start was taken up leaves nothing written; once taken up, it is written.
    pub async fn start_session(&self, start: SessionStart) -> Result<Option<i64>> {
        let (reply, mut answer) = oneshot::channel();
        self.starts.lock().push(Waiting { start, reply });
        loop {
            let asked = Instant::now();
            let writer = tokio::select! {
                biased;
                a = &mut answer => return a.unwrap_or_else(|_| Err(unanswered())),
                w = self.writer_turn() => w,
            };
            let group = self.starts.take();
            if group.is_empty() {
                // Taken up by the writer before, which is syncing it to disk now.
                drop(writer);
                return answer.await.unwrap_or_else(|_| Err(unanswered()));
            }
            self.write_group(writer, asked, group).await;
        }
    }

    /// Writes `group` in one transaction and answers each; if that fails, one transaction each.
    async fn write_group(
        &self,
        writer: Option<tokio::sync::OwnedMutexGuard<()>>,
        asked: Instant,
        group: Vec<Waiting>,
    ) {
        let starts: Vec<&SessionStart> = group.iter().map(|w| &w.start).collect();
        match self.write_starts(writer, asked, &starts).await {
            Ok(ids) => {
                for (w, id) in group.into_iter().zip(ids) {
                    let _ = w.reply.send(Ok(id));
                }
            }
            // Committed, but the disk did not take the sync: writing them again would only duplicate.
            Err(StoreError::Durability(e)) => {
                for w in group {
                    let copy = std::io::Error::new(e.kind(), e.to_string());
                    let _ = w.reply.send(Err(StoreError::Durability(copy)));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some(w) = group.into_iter().next() {
                    let _ = w.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, starts = group.len(), "writing session starts together failed; writing them one by one");
                for w in group {
                    let asked = Instant::now();
                    let writer = self.writer_turn().await;
                    let result = self
                        .write_starts(writer, asked, &[&w.start])
                        .await
                        .map(|ids| ids.into_iter().next().flatten());
                    let _ = w.reply.send(result);
                }
            }
        }
    }

    /// One transaction for `starts`: their recordings' ids, in order.
    async fn write_starts(
        &self,
        writer: Option<tokio::sync::OwnedMutexGuard<()>>,
        asked: Instant,
        starts: &[&SessionStart],
    ) -> Result<Vec<Option<i64>>> {
        let mut tx = self.begin_in_turn(writer, asked).await?;
        let rows: Vec<_> = starts.iter().map(|s| s.row()).collect();
        tx.insert_sessions(&rows).await?;
        let recordings: Vec<NewRecording<'_>> = starts
            .iter()
            .filter_map(|s| {
                s.recording.as_ref().map(|(format, path)| NewRecording {
                    session_id: &s.id,
                    format,
                    path,
                    created_at: s.started_at,
                })
            })
            .collect();
        let mut recording_ids = tx.insert_recordings(&recordings).await?.into_iter();
        let ids = starts
            .iter()
            .map(|s| s.recording.as_ref().and_then(|_| recording_ids.next()))
            .collect();
        tx.audit_many(
            starts
                .iter()
                .map(|s| (s.audit.clone(), s.started_at))
                .collect(),
        )
        .await?;
        tx.commit("session.start").await?;
        Ok(ids)
    }
}
