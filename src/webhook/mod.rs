//! Webhook delivery: new requests, decisions and alerts, announced to a receiver (a chat bridge, a
//! SIEM, an on-call tool) as signed JSON.
//!
//! Entry points: [`spawn`] (from `server::run` when `[webhook]` is configured) and [`payload`] (the
//! body, documented in the README). The source is the audit log itself: the deliverer tails it from a
//! cursor in the database, so an event is announced only once its change is committed, nothing is
//! lost across restarts, and events go out in the order they happened. With several nodes, one holds a
//! lease on the cursor and delivers; the others wait. Delivery is at least once: a receiver dedupes on
//! `id` (also sent as `X-Chaperone-Delivery`).
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
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::app::App;
use crate::audit::{Action, AuditEvent, AuditRow};
use crate::config::WebhookConfig;
use crate::store::StoreError;
pub use client::{Poster, SetupError};

/// How often the audit log is looked at for new events.
const POLL: Duration = Duration::from_millis(500);
/// How long a node's claim on delivery lasts without renewal: longer than the longest backoff plus one
/// delivery deadline, so a node retrying an event keeps it (and counts its attempts) instead of another
/// node starting over at attempt 1.
const LEASE_SECS: i64 = 400;
/// A round that keeps delivering renews its lease this often (a backlog can take longer than a lease).
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Audit rows read at a time.
const PAGE: i64 = 200;

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
    Ok(tokio::spawn(run(app, config, poster, stop)))
}

/// An error and its causes on one line (`connecting to 127.0.0.1:9: Connection refused (os error
/// 111)`): what the log and the `webhook.undelivered` event keep. The variants' own text never repeats
/// their cause, so nothing is said twice.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn run(app: App, config: WebhookConfig, poster: Poster, mut stop: watch::Receiver<bool>) {
    let holder = app.node.to_string();
    // The cursor belongs to one receiver; the URL itself may hold a token, so only its hash is stored.
    let endpoint = hex::encode(&Sha256::digest(config.url.as_bytes())[..16]);
    let deliverer = Deliverer {
        app: &app,
        config: &config,
        poster: &poster,
        holder: &holder,
        endpoint: &endpoint,
    };
    tracing::info!(events = ?config.events, "webhook delivery started");
    loop {
        match deliverer.round(&mut stop).await {
            Ok(Round::Stopped) => break,
            Ok(Round::Idle) => {}
            Err(e) => tracing::warn!(error = %report(&e), "webhook delivery"),
        }
        tokio::select! {
            () = crate::ssh::stopped(&mut stop) => break,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    if let Err(e) = app.store.release_webhook_cursor(&holder).await {
        tracing::warn!(error = %e, "cannot release the webhook lease");
    }
}

enum Round {
    Idle,
    Stopped,
}

struct Deliverer<'a> {
    app: &'a App,
    config: &'a WebhookConfig,
    poster: &'a Poster,
    holder: &'a str,
    endpoint: &'a str,
}

impl Deliverer<'_> {
    /// Claims the lease, then sends every new matching event in order, renewing the lease as it goes.
    async fn round(&self, stop: &mut watch::Receiver<bool>) -> Result<Round, StoreError> {
        let Some(mut cursor) = self.claim().await? else {
            return Ok(Round::Idle);
        };
        let mut renewed = tokio::time::Instant::now();
        loop {
            let rows = self.app.store.audit_page(cursor, PAGE).await?;
            let Some(last) = rows.last().map(|r| r.seq) else {
                return Ok(Round::Idle);
            };
            for row in &rows {
                if !Action::parse(&row.action).is_some_and(|a| self.config.events.contains(&a)) {
                    continue;
                }
                // Everything before this row is handled; record that before a possibly long retry.
                if row.seq - 1 > cursor && !self.advance(row.seq - 1).await? {
                    return Ok(Round::Idle);
                }
                if renewed.elapsed() >= RENEW_EVERY {
                    if self.claim().await?.is_none() {
                        return Ok(Round::Idle);
                    }
                    renewed = tokio::time::Instant::now();
                }
                match self.deliver(row, stop).await? {
                    Outcome::Sent => {}
                    Outcome::Stopped => return Ok(Round::Stopped),
                    Outcome::LostLease => return Ok(Round::Idle),
                }
                if !self.advance(row.seq).await? {
                    return Ok(Round::Idle);
                }
                cursor = row.seq;
            }
            if last > cursor && !self.advance(last).await? {
                return Ok(Round::Idle);
            }
            cursor = last;
        }
    }

    /// Takes or renews the lease; how far delivery got, or `None` while another node delivers. When the
    /// cursor belonged to another `webhook.url` (changed, or different on another node), the move is
    /// audited (`webhook.endpoint.changed`): nodes configured with different URLs would keep moving it,
    /// and each receiver would miss events.
    async fn claim(&self) -> Result<Option<i64>, StoreError> {
        let now = self.app.clock.now();
        let Some(claim) = self
            .app
            .store
            .claim_webhook_cursor(self.holder, self.endpoint, now, now + LEASE_SECS)
            .await?
        else {
            return Ok(None);
        };
        if claim.moved {
            tracing::warn!(
                url = %crate::config::redact_webhook_url(&self.config.url),
                "webhook: the delivery cursor belonged to another webhook.url; starting at the end of the \
                 audit log for this one (every node must have the same [webhook] url)"
            );
            let mut tx = self.app.store.begin().await?;
            tx.audit(
                AuditEvent::new(
                    format!("node:{}", self.holder),
                    "webhook.endpoint.changed",
                    "webhook",
                    json!({"url": crate::config::redact_webhook_url(&self.config.url), "endpoint": self.endpoint,
                           "from_seq": claim.seq}),
                ),
                now,
            )
            .await?;
            tx.commit("webhook.endpoint.changed").await?;
        }
        Ok(Some(claim.seq))
    }

    async fn advance(&self, seq: i64) -> Result<bool, StoreError> {
        self.app
            .store
            .advance_webhook_cursor(self.holder, seq)
            .await
    }

    /// Sends one event, retrying with backoff; gives it up after `max_attempts`.
    async fn deliver(
        &self,
        row: &AuditRow,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Outcome, StoreError> {
        let body = Bytes::from(payload(row, &self.app.config.web.public_url).to_string());
        let delivery = row.seq.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.poster.post(&row.action, &delivery, body.clone()).await {
                Ok(()) => {
                    tracing::debug!(seq = row.seq, action = %row.action, "webhook delivered");
                    return Ok(Outcome::Sent);
                }
                Err(e) => report(&e),
            };
            crate::ops::metrics::delivery_failed("webhook");
            if attempt >= self.config.max_attempts {
                tracing::error!(seq = row.seq, action = %row.action, attempts = attempt, error = %error,
                    "webhook: giving the event up");
                self.give_up(row, attempt, &error).await?;
                return Ok(Outcome::Sent);
            }
            let wait = backoff(attempt);
            tracing::warn!(seq = row.seq, action = %row.action, attempt, error = %error,
                retry_in_secs = wait.as_secs(), "webhook delivery failed");
            tokio::select! {
                () = crate::ssh::stopped(stop) => return Ok(Outcome::Stopped),
                () = tokio::time::sleep(wait) => {}
            }
            // Keep (or find we lost) the lease before trying again.
            if self.claim().await?.is_none() {
                return Ok(Outcome::LostLease);
            }
        }
    }

    async fn give_up(&self, row: &AuditRow, attempts: u32, error: &str) -> Result<(), StoreError> {
        let now = self.app.clock.now();
        let mut tx = self.app.store.begin().await?;
        tx.audit(
            AuditEvent::new(
                "system",
                "webhook.undelivered",
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

enum Outcome {
    Sent,
    Stopped,
    LostLease,
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
