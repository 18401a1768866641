//! Webhook delivery: new requests, decisions and alerts, announced to a receiver (a chat bridge, a
//! SIEM, an on-call tool) as signed JSON.
//!
//! Entry points: [`spawn`] (from `server::run` when `[webhook]` is configured) and [`payload`] (the
//! body, documented in the README). The source is the audit log itself: the deliverer tails it from a
//! cursor in the database, so an event is announced only once its change is committed, nothing is
//! lost across restarts, and events go out in the order they happened. With several nodes, one holds a
//! lease on the cursor and delivers; the others wait. Delivery is at least once: a receiver dedupes on
//! the signed body's `id` and `audit_hash` together (a restore from backup reuses sequence numbers;
//! the `X-Chaperone-Delivery` header repeats `id` but is not signed).
//!
//! A failed delivery is retried with exponential backoff (1 s doubling to 5 min) up to
//! `webhook.max_attempts`, holding back later events so the order stays; then it is given up, and
//! `webhook.undelivered` is audited (the event itself is, as always, in the audit log).
//!
//! Errors: [`SetupError`] stops `serve` at start; a [`DeliveryError`] is retried, then audited and
//! logged with its causes (`report`); the deliverer's own bookkeeping fails only with a
//! [`StoreError`], logged and tried again at the next poll.

mod client;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::audit::{Action, AuditEvent, AuditRow};
use crate::audit_tail::{self, Consumer, CursorRow, Delivery, Lease, Moved};
use crate::config::WebhookConfig;
use crate::error_text::report;
use crate::store::StoreError;
pub use client::{Poster, SetupError};

/// The wait before retry `attempt` (1-based: the wait after the first failure is `backoff(1)`).
pub fn backoff(attempt: u32) -> Duration {
    const FIRST: u64 = 1;
    const MAX: u64 = 300;
    let secs = FIRST.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    Duration::from_secs(secs.min(MAX))
}

/// Starts the deliverer. Fails at once when the receiver's TLS trust cannot be set up, so a broken
/// `[webhook]` stops `serve` instead of dropping every event.
pub fn spawn(
    app: App,
    config: WebhookConfig,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, SetupError> {
    let poster = Poster::new(&config)?;
    let shown_url = crate::config::redact_webhook_url(&config.url);
    // Nodes configured with different URLs would keep moving the cursor, and each receiver would miss
    // events: the move is audited.
    let moved = Moved {
        log: "webhook: the delivery cursor belonged to another webhook.url; starting at the end of the \
              audit log for this one (every node must have the same [webhook] url)",
        audit: Some((
            Action::WebhookEndpointChanged,
            "webhook",
            json!({ "url": shown_url }),
        )),
        shown_url,
    };
    tracing::info!(events = ?config.events, "webhook delivery started");
    let url = config.url.clone();
    let deliverer = Deliverer {
        app: app.clone(),
        config,
        poster,
    };
    Ok(audit_tail::spawn(
        app,
        CursorRow::Webhook,
        url,
        moved,
        deliverer,
        stop,
    ))
}

struct Deliverer {
    app: App,
    config: WebhookConfig,
    poster: Poster,
}

impl Consumer for Deliverer {
    type Item = ();
    const NAME: &'static str = "webhook delivery";

    fn select(&self, row: &AuditRow) -> Option<()> {
        Action::parse(&row.action)
            .is_some_and(|a| self.config.events.contains(&a))
            .then_some(())
    }

    /// Sends one event, retrying with backoff; gives it up after `max_attempts` (audited).
    async fn deliver(
        &mut self,
        lease: &Lease<'_>,
        row: &AuditRow,
        (): (),
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Delivery, StoreError> {
        let body = Bytes::from(payload(row, &self.app.config.web.public_url).to_string());
        let delivery = row.seq.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, for_good) =
                match self.poster.post(&row.action, &delivery, body.clone()).await {
                    Ok(()) => {
                        tracing::debug!(seq = row.seq, action = %row.action, "webhook delivered");
                        return Ok(Delivery::Handled);
                    }
                    Err(e) => (report(&e), e.refused_for_good()),
                };
            crate::ops::metrics::delivery_failed("webhook");
            if for_good || attempt >= self.config.max_attempts {
                tracing::error!(seq = row.seq, action = %row.action, attempts = attempt, error = %error,
                    "webhook: giving the event up");
                self.give_up(row, attempt, &error).await?;
                return Ok(Delivery::Handled);
            }
            let wait = backoff(attempt);
            tracing::warn!(seq = row.seq, action = %row.action, attempt, error = %error,
                retry_in_secs = wait.as_secs(), "webhook delivery failed");
            tokio::select! {
                () = crate::ssh::stopped(stop) => return Ok(Delivery::Stopped),
                () = tokio::time::sleep(wait) => {}
            }
            if !lease.keep().await? {
                return Ok(Delivery::LostLease);
            }
        }
    }
}

impl Deliverer {
    async fn give_up(&self, row: &AuditRow, attempts: u32, error: &str) -> Result<(), StoreError> {
        let now = self.app.clock.now();
        let mut tx = self.app.store.begin().await?;
        tx.audit(
            AuditEvent::new(
                "system",
                Action::WebhookUndelivered,
                format!("audit:{}", row.seq),
                json!({"action": row.action, "subject": row.subject, "attempts": attempts, "error": error}),
            ),
            now,
        )
        .await?;
        tx.commit("webhook.undelivered").await?;
        Ok(())
    }
}

/// The JSON body for one audit event (documented in the README, "Webhook").
pub fn payload(row: &AuditRow, public_url: &str) -> serde_json::Value {
    // The detail was written by chaperone as JSON; should it not parse, it is sent as text.
    let detail = serde_json::from_str::<serde_json::Value>(&row.detail)
        .unwrap_or_else(|_| serde_json::Value::String(row.detail.clone()));
    let page = match row.subject.split_once(':').map(|(kind, _)| kind) {
        Some("request") => "/requests",
        Some("grant") => "/grants",
        Some("session") => "/sessions",
        _ => "/",
    };
    json!({
        "id": row.seq,
        "event": row.action,
        "at": row.at,
        "time": crate::clock::format_time(row.at),
        "actor": row.actor,
        "subject": row.subject,
        "detail": detail,
        "link": format!("{}{page}", public_url.trim_end_matches('/')),
        "audit_hash": row.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn payload_carries_the_event_and_a_link() {
        let row = AuditRow {
            seq: 42,
            at: 1_795_000_000,
            actor: "vendor:alice".into(),
            action: "request.file".into(),
            subject: "request:7".into(),
            detail: r#"{"asset":"mri-01","reason":"<b>x</b>"}"#.into(),
            prev_hash: "0".repeat(64),
            hash: "a".repeat(64),
        };
        let body = payload(&row, "https://bastion.example:8443/");
        assert_eq!(body["id"], 42);
        assert_eq!(body["event"], "request.file");
        assert_eq!(body["detail"]["asset"], "mri-01");
        assert_eq!(body["detail"]["reason"], "<b>x</b>");
        assert_eq!(body["link"], "https://bastion.example:8443/requests");
        let odd = AuditRow {
            detail: "not json".into(),
            subject: "vendor:alice".into(),
            ..row
        };
        let body = payload(&odd, "https://b");
        assert_eq!(body["detail"], "not json");
        assert_eq!(body["link"], "https://b/");
    }
}
