//! Tailing the audit log toward one destination: the webhook, the IHE ATNA export and the e-mail to
//! approvers each send some events somewhere, and this module is the one owner of how they follow the
//! log. A consumer keeps a cursor in the database (the last audit `seq` it handled) under a lease, so
//! with several nodes exactly one delivers and a restart loses nothing; it sends events in the order they
//! happened, only once their change is committed.
//!
//! Entry point: [`spawn`], with a [`Consumer`] (what to send for a row, and how). The protocol it keeps for
//! every consumer:
//! - a round claims the lease (or waits: another node holds it), then reads the log a page at a time;
//! - before an event that may take long (retries with backoff), everything before it is recorded as
//!   handled, so a node taking over does not resend it;
//! - the lease is renewed every [`RENEW_EVERY`] while a backlog drains, and a consumer keeps it between
//!   retries ([`Lease::keep`]); losing it ends the round at once;
//! - a claim that finds the cursor belonged to another endpoint (the URL changed, or differs between
//!   nodes) starts at the end of the log for the new one, and says so as the consumer asks
//!   ([`Moved`]);
//! - at shutdown the lease is given up, so another node takes over at once;
//! - only events that hold in the chain, from the last one sent up to a head that carries its seal,
//!   are sent (`evidence::vouched_rows`): while the head does not (someone without the secrets key
//!   wrote the log), or a row not yet sent was changed, every consumer holds where it is, so the copies
//!   outside end where the break began, for the operator who seals it again.
//!
//! Errors: the bookkeeping fails only with a [`StoreError`], logged with its causes and tried again at
//! the next poll.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::app::App;
use crate::audit::{Action, AuditEvent, AuditRow, ChainBreak};
use crate::error_text::report;
use crate::model::UnixTime;
use crate::store::{CursorClaim, StoreError};

/// How often the audit log is looked at for new events.
const POLL: Duration = Duration::from_millis(500);
/// How long a node's claim lasts without renewal: longer than the longest backoff plus one send
/// deadline, so a node retrying an event keeps it (and counts its attempts) instead of another node
/// starting over.
const LEASE_SECS: i64 = 400;
/// A round that keeps delivering renews its lease this often (a backlog can take longer than a lease).
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Audit rows read at a time.
const PAGE: i64 = 200;

/// Where a consumer's cursor is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorRow {
    /// The webhook's own table, `webhook_cursor` (it came first).
    Webhook,
    /// A row of `audit_cursors`, by name.
    Named(&'static str),
}

/// How a consumer says that its cursor was moved to a new endpoint: events between the old endpoint's
/// last delivery and now are not sent to the new one.
#[derive(Debug, Clone)]
pub struct Moved {
    /// The log line (a warning when `audit` is set, information otherwise).
    pub log: &'static str,
    /// The destination as the log may show it (no secrets).
    pub shown_url: String,
    /// The event to audit, with the detail to record (`from_seq`, where the old endpoint got to, and
    /// `to_seq`, where the new one starts after, are added: the events between reach neither); `None` when the move needs no record (e-mail: notices simply start with the next request).
    pub audit: Option<(Action, &'static str, Value)>,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handled: sent, given up (and audited by the consumer), or no longer needed.
    Handled,
    /// `serve` is stopping: the event stays unhandled, for the next start or another node.
    Stopped,
    /// Another node took the lease meanwhile: it carries on from the cursor.
    LostLease,
}

/// One destination of audit events.
pub trait Consumer: Send {
    /// What it sends for one row, worked out before the row is claimed.
    type Item: Send;

    /// What the log calls it ("webhook delivery").
    const NAME: &'static str;

    /// The item for `row`, or `None` for rows this consumer does not send.
    fn select(&self, row: &AuditRow) -> Option<Self::Item>;

    /// Sends one item, retrying as the destination wants; between tries it keeps the lease with
    /// [`Lease::keep`] and returns [`Delivery::LostLease`] when that fails.
    fn deliver(
        &mut self,
        lease: &Lease<'_>,
        row: &AuditRow,
        item: Self::Item,
        stop: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = Result<Delivery, StoreError>> + Send;

    /// At shutdown, after the last round (closing a connection, say).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A consumer's claim on its cursor, for one node.
#[derive(Debug)]
pub struct Lease<'a> {
    app: &'a App,
    cursor: CursorRow,
    holder: String,
    endpoint: String,
    moved: Moved,
    /// Whether this consumer is holding where the audit log does not hold (said once, not at every
    /// poll; cleared only by a page that holds).
    held: std::sync::atomic::AtomicBool,
}

impl Lease<'_> {
    /// Takes or renews the lease: how far the consumer got, or `None` while another node holds it.
    /// A cursor that belonged to another endpoint is moved to the end of the log and that is said as
    /// [`Moved`] asks.
    async fn claim(&self) -> Result<Option<i64>, StoreError> {
        // Leases are told on the database's clock, as node liveness is: a node whose own clock runs
        // ahead would take a live holder's lease, one behind would wait too long for a dead one's.
        let db_now = self.app.store.database_now().await?;
        let Some(claim) = self.claim_row(db_now).await? else {
            return Ok(None);
        };
        if let Some(from_seq) = claim.moved_from {
            self.say_moved(from_seq, claim.seq, self.app.clock.now())
                .await?;
        }
        Ok(Some(claim.seq))
    }

    /// Keeps the lease between two tries of one event; `false` when another node has it now.
    pub async fn keep(&self) -> Result<bool, StoreError> {
        Ok(self.claim().await?.is_some())
    }

    async fn claim_row(&self, now: UnixTime) -> Result<Option<CursorClaim>, StoreError> {
        let store = &self.app.store;
        let until = now + LEASE_SECS;
        match self.cursor {
            CursorRow::Webhook => {
                store
                    .claim_webhook_cursor(&self.holder, &self.endpoint, now, until)
                    .await
            }
            CursorRow::Named(name) => {
                store
                    .claim_cursor(name, &self.holder, &self.endpoint, now, until)
                    .await
            }
        }
    }

    /// Says the cursor moved: the old endpoint got to `from_seq`, the new one starts after `to_seq`.
    async fn say_moved(&self, from_seq: i64, to_seq: i64, now: UnixTime) -> Result<(), StoreError> {
        let Some((action, subject, detail)) = &self.moved.audit else {
            tracing::info!(url = %self.moved.shown_url, "{}", self.moved.log);
            return Ok(());
        };
        tracing::warn!(url = %self.moved.shown_url, "{}", self.moved.log);
        let mut detail = detail.clone();
        if let Value::Object(fields) = &mut detail {
            fields.insert("endpoint".into(), Value::String(self.endpoint.clone()));
            fields.insert("from_seq".into(), Value::from(from_seq));
            fields.insert("to_seq".into(), Value::from(to_seq));
        }
        let mut tx = self.app.store.begin().await?;
        tx.audit(
            AuditEvent::new(format!("node:{}", self.holder), *action, *subject, detail),
            now,
        )
        .await?;
        tx.commit(action.as_str()).await?;
        Ok(())
    }

    /// Records that everything up to `seq` was handled; `false` when the lease was lost meanwhile.
    async fn advance(&self, seq: i64) -> Result<bool, StoreError> {
        match self.cursor {
            CursorRow::Webhook => {
                self.app
                    .store
                    .advance_webhook_cursor(&self.holder, seq)
                    .await
            }
            CursorRow::Named(name) => self.app.store.advance_cursor(name, &self.holder, seq).await,
        }
    }

    async fn release(&self) -> Result<(), StoreError> {
        match self.cursor {
            CursorRow::Webhook => self.app.store.release_webhook_cursor(&self.holder).await,
            CursorRow::Named(name) => self.app.store.release_cursor(name, &self.holder).await,
        }
    }
}

/// Follows the audit log for `consumer` on a task of its own until `stop`: its cursor is `cursor`, bound
/// to the destination `url` (only a hash of it is stored: a URL may hold a token).
pub fn spawn<C: Consumer + 'static>(
    app: App,
    cursor: CursorRow,
    url: String,
    moved: Moved,
    consumer: C,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(app, cursor, url, moved, consumer, stop))
}

async fn run<C: Consumer>(
    app: App,
    cursor: CursorRow,
    url: String,
    moved: Moved,
    mut consumer: C,
    mut stop: watch::Receiver<bool>,
) {
    let lease = Lease {
        app: &app,
        cursor,
        holder: app.node.to_string(),
        endpoint: hex::encode(&Sha256::digest(url.as_bytes())[..16]),
        moved,
        held: Default::default(),
    };
    loop {
        match round(&lease, &mut consumer, &mut stop).await {
            Ok(Round::Stopped) => break,
            Ok(Round::Idle) => {}
            Err(e) => tracing::warn!(error = %report(&e), "{}", C::NAME),
        }
        tokio::select! {
            () = crate::ssh::stopped(&mut stop) => break,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    consumer.close().await;
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, "{}: cannot release the lease", C::NAME);
    }
}

enum Round {
    Idle,
    Stopped,
}

/// The events after `cursor` that may leave, at most [`PAGE`]: up to the sealed chain head, each linked
/// on to it (`evidence::vouched_rows`). `None` while the head does not carry its seal or the rows do not
/// hold.
async fn sendable(
    lease: &Lease<'_>,
    cursor: i64,
    name: &str,
) -> Result<Option<Vec<AuditRow>>, StoreError> {
    let store = &lease.app.store;
    let rows = match crate::evidence::chain_head(store).await? {
        Ok(head) => crate::evidence::vouched_rows(store, cursor, &head, PAGE).await?,
        Err(broken) => Err(broken),
    };
    Ok(holding(lease, name, rows))
}

/// `Some` of what holds; `None` for a break, said once as an error (and the resumption once when it
/// holds again), not at every poll.
fn holding<T>(lease: &Lease<'_>, name: &str, judged: Result<T, ChainBreak>) -> Option<T> {
    use std::sync::atomic::Ordering;
    let was_held = lease.held.swap(judged.is_err(), Ordering::Relaxed);
    match judged {
        Ok(value) => {
            if was_held {
                tracing::warn!(
                    consumer = name,
                    "the audit log holds again: sending resumes"
                );
            }
            Some(value)
        }
        Err(broken) => {
            if !was_held {
                tracing::error!(
                    consumer = name,
                    %broken,
                    "the audit log does not hold: nothing more is sent until it does (chaperone \
                     audit verify)"
                );
            }
            None
        }
    }
}

/// Claims the lease, then hands every new row the consumer selects to it, in order, up to the sealed
/// chain head.
async fn round<C: Consumer>(
    lease: &Lease<'_>,
    consumer: &mut C,
    stop: &mut watch::Receiver<bool>,
) -> Result<Round, StoreError> {
    // Nothing is claimed while the head does not carry its seal either: a consumer new to an endpoint
    // starts at the end of the log, which must be one the seal vouches for.
    // (Only a break is noted here; whether sending resumes is told by the rows, `sendable`.)
    if let Err(broken) = crate::evidence::chain_head(&lease.app.store).await? {
        holding::<()>(lease, C::NAME, Err(broken));
        return Ok(Round::Idle);
    }
    let Some(mut cursor) = lease.claim().await? else {
        return Ok(Round::Idle);
    };
    let mut renewed = tokio::time::Instant::now();
    loop {
        let Some(rows) = sendable(lease, cursor, C::NAME).await? else {
            return Ok(Round::Idle);
        };
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(Round::Idle);
        };
        for row in &rows {
            let Some(item) = consumer.select(row) else {
                continue;
            };
            // Everything before this row is handled; record that before a possibly long retry.
            if row.seq - 1 > cursor && !lease.advance(row.seq - 1).await? {
                return Ok(Round::Idle);
            }
            if renewed.elapsed() >= RENEW_EVERY {
                if !lease.keep().await? {
                    return Ok(Round::Idle);
                }
                renewed = tokio::time::Instant::now();
            }
            match consumer.deliver(lease, row, item, stop).await? {
                Delivery::Handled => {}
                Delivery::Stopped => return Ok(Round::Stopped),
                Delivery::LostLease => return Ok(Round::Idle),
            }
            if !lease.advance(row.seq).await? {
                return Ok(Round::Idle);
            }
            cursor = row.seq;
        }
        if last > cursor && !lease.advance(last).await? {
            return Ok(Round::Idle);
        }
        cursor = last;
    }
}
