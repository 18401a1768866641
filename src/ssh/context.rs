//! What a channel's task gets from its connection: who signed in (a [`Principal`], re-checked by policy
//! whenever something starts), where from, the connection's handle and stop token, and its place among
//! the connection's open channels.
//!
//! Entry point: [`Context`], made by `handler::Connection` for each channel it hands to a task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use russh::server;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::audit::AuditEvent;
use crate::live::Origin;
use crate::policy::Principal;

/// What a channel task needs from its connection.
#[derive(Debug)]
pub struct Context {
    pub shared: Arc<Shared>,
    /// The vendor and key of this connection's sign-in (a ProxyJump's inner connection: the outer one's).
    pub principal: Principal,
    pub peer: SocketAddr,
    pub server: server::Handle,
    /// Cancelled when the connection ends.
    pub stop: CancellationToken,
    /// Counts toward `ssh.max_channels` until the task ends.
    pub(super) _slot: ChannelSlot,
}

impl Context {
    /// Where this channel's sessions come from.
    pub fn origin(&self) -> Origin {
        Origin {
            principal: self.principal.clone(),
            peer: self.peer.to_string(),
        }
    }

    /// The vendor's name.
    pub fn vendor(&self) -> &str {
        &self.principal.vendor
    }

    /// Audits an event by this vendor; a failure to audit is logged (the caller is already refusing).
    pub async fn audit(&self, action: &'static str, subject: String, detail: serde_json::Value) {
        audit_by(&self.shared, &self.principal, action, subject, detail).await;
    }
}

/// Audits an event by `who`, with the time from the app's clock; a failure is logged.
pub async fn audit_by(
    shared: &Shared,
    who: &Principal,
    action: &'static str,
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
        tx.commit(action).await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action, "cannot write an audit event");
    }
}

/// One open channel of a connection; gives its place back when dropped.
#[derive(Debug)]
pub struct ChannelSlot(Arc<AtomicUsize>);

impl ChannelSlot {
    /// Takes a place among `open` if fewer than `max` are taken.
    pub fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<ChannelSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| ChannelSlot(open.clone()))
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
