//! What a channel's task gets from its connection: who signed in (a [`Principal`], re-checked by policy
//! whenever something starts), where from, the connection's handle and stop token, its place among the
//! connection's open channels, and the connection's shared budgets (input before a start, refusal audits).
//!
//! Entry point: [`Context`], made by `handler::Connection` for each channel it hands to a task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use russh::ChannelId;

use russh::server;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::audit::{Action, AuditEvent};
use crate::live::Origin;
use crate::live::idle::Activity;
use crate::policy::Principal;

/// What a channel task needs from its connection.
#[derive(Debug)]
pub struct Context {
    pub shared: Arc<Shared>,
    /// The vendor and key of this connection's sign-in (a ProxyJump's inner connection: the outer one's).
    pub principal: Principal,
    pub peer: SocketAddr,
    pub server: server::Handle,
    /// Cancelled when the connection ends or is cut.
    pub stop: CancellationToken,
    /// This channel's place among the connection's open ones (`ssh.max_channels`), given back when the
    /// task ends; it says when the client closed the channel.
    pub channel: ChannelSlot,
    /// What the connection shares between its channels.
    pub limits: Arc<ConnectionLimits>,
}

/// Budgets one connection's channels share, so a client cannot multiply them by opening channels. The
/// ProxyJump connections inside a vendor connection's tunnels share its budgets too (`jump::run`): a
/// jump is a channel of the vendor's connection, and what runs inside it counts as its channels do.
#[derive(Debug, Default)]
pub struct ConnectionLimits {
    /// The listener's number of the vendor connection (its jumps' inner connections share it).
    pub connection: u64,
    /// What passes through the connection and its jumps, for `[ssh] idle_timeout` (`live::idle`).
    pub activity: Arc<Activity>,
    /// Bytes (and messages) held for channels whose session has not started yet.
    pub early_input: AtomicUsize,
    /// Channels open (their tasks running), on the connection and inside its jumps: at most
    /// `ssh.max_channels` ([`OpenChannels::take`]).
    channels: AtomicUsize,
    /// Refusals so far, saturating (past [`AUDITED_REFUSALS`] they are only logged, at debug level).
    refusals: AtomicU32,
}

/// Refusals of one connection that are audited one by one; past this, one `ssh.refusals.suppressed`
/// event says so and the rest are logged at debug level only (a client could otherwise flood the audit
/// log, or the log).
pub const AUDITED_REFUSALS: u32 = 32;

impl ConnectionLimits {
    /// The budgets of the vendor connection the listener numbered `connection`.
    pub fn new(connection: u64) -> ConnectionLimits {
        ConnectionLimits {
            connection,
            ..ConnectionLimits::default()
        }
    }

    /// Whether the next refusal is audited: `Some(true)` as usual, `Some(false)` for the one that says
    /// the rest are suppressed, `None` past it.
    pub fn audit_refusal(&self) -> Option<bool> {
        // Saturating: a counter that wrapped would start auditing again after 2^32 refusals.
        let n = self
            .refusals
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u32::MAX);
        match n {
            n if n < AUDITED_REFUSALS => Some(true),
            n if n == AUDITED_REFUSALS => Some(false),
            _ => None,
        }
    }
}

impl Context {
    /// Where this channel's sessions come from.
    pub fn origin(&self) -> Origin {
        Origin {
            principal: self.principal.clone(),
            peer: self.peer.to_string(),
            connection: self.limits.connection,
            activity: self.limits.activity.clone(),
        }
    }

    /// The vendor's name.
    pub fn vendor(&self) -> &str {
        &self.principal.vendor
    }

    /// Audits an event by this vendor; a failure to audit is logged (the caller is already refusing).
    pub async fn audit(&self, action: Action, subject: String, detail: serde_json::Value) {
        audit_by(&self.shared, &self.principal, action, subject, detail).await;
    }

    /// Audits a refusal, within the connection's refusal budget (see [`AUDITED_REFUSALS`]).
    pub async fn audit_refusal(&self, action: Action, subject: String, detail: serde_json::Value) {
        match self.limits.audit_refusal() {
            Some(true) => self.audit(action, subject, detail).await,
            Some(false) => {
                self.audit(
                    Action::SshRefusalsSuppressed,
                    format!("vendor:{}", self.principal.vendor),
                    json!({"peer": self.peer.to_string(), "after": AUDITED_REFUSALS}),
                )
                .await;
            }
            // Debug only: the `ssh.refusals.suppressed` event said so once, and a client must not be
            // able to flood the log instead of the audit log.
            None => tracing::debug!(
                %action,
                "refusal not audited (this connection's budget is spent)"
            ),
        }
    }
}

/// Audits an event by `who`, with the time from the app's clock; a failure is logged.
pub async fn audit_by(
    shared: &Shared,
    who: &Principal,
    action: Action,
    subject: String,
    mut detail: serde_json::Value,
) {
    let app = &shared.app;
    let now = app.clock.now();
    if let Some(map) = detail.as_object_mut() {
        map.entry("key")
            .or_insert_with(|| json!(who.key_fingerprint));
    }
    let result = async {
        let mut tx = app.store.begin().await?;
        tx.audit(
            AuditEvent::new(format!("vendor:{}", who.vendor), action, subject, detail),
            now,
        )
        .await?;
        tx.commit(action.as_str()).await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action = action.as_str(), "cannot write an audit event");
    }
}

/// The channels a connection has open: counted from the open the handler hands to a task until that task
/// ends (every task closes its channel when it ends, which is when russh forgets it too). A client that
/// closes a channel does not free its place: it tells the channel's task (`ChannelSlot::client_closed`),
/// which ends, and the place is free when it has; so closing channels cannot run more tasks (tunnels, their
/// sockets and buffers) than `ssh.max_channels`. russh may give a closed channel's id to a new channel
/// while the old task is still ending, so places are counted, not keyed by id; they are counted in the
/// connection's [`ConnectionLimits`], which its jumps' inner connections share (each has its own
/// `OpenChannels`: channel ids are per connection).
#[derive(Debug, Default)]
pub struct OpenChannels {
    state: Mutex<Places>,
}

#[derive(Debug, Default)]
struct Places {
    /// The channels the client has not closed yet: their close token, and which place holds it.
    open: HashMap<ChannelId, (u64, CancellationToken)>,
    next: u64,
}

impl OpenChannels {
    /// Takes a place for channel `id` if fewer than `max` are taken in `limits`.
    pub fn take(
        self: &Arc<Self>,
        id: ChannelId,
        max: usize,
        limits: &Arc<ConnectionLimits>,
    ) -> Option<ChannelSlot> {
        let mut places = self.state.lock().ok()?;
        limits
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        places.next += 1;
        let (place, closed) = (places.next, CancellationToken::new());
        places.open.insert(id, (place, closed.clone()));
        Some(ChannelSlot {
            id,
            place,
            closed,
            open: self.clone(),
            limits: limits.clone(),
        })
    }

    /// The client closed channel `id`: its task is told, and frees the place when it ends.
    pub fn closed(&self, id: ChannelId) {
        if let Some((_, closed)) = self.state.lock().ok().and_then(|mut p| p.open.remove(&id)) {
            closed.cancel();
        }
    }
}

/// One channel's place among its connection's open channels, given back when dropped (its task ended).
#[derive(Debug)]
pub struct ChannelSlot {
    id: ChannelId,
    place: u64,
    closed: CancellationToken,
    open: Arc<OpenChannels>,
    limits: Arc<ConnectionLimits>,
}

impl ChannelSlot {
    /// Cancelled when the client closes the channel: nothing more can pass on it, so the task ends.
    pub fn client_closed(&self) -> &CancellationToken {
        &self.closed
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.limits.channels.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut places) = self.open.state.lock() {
            // The id is this place's unless the client closed it and russh gave it to a newer channel.
            if places
                .open
                .get(&self.id)
                .is_some_and(|(p, _)| *p == self.place)
            {
                places.open.remove(&self.id);
            }
        }
    }
}
