//! E-mail to approvers: when a vendor files an access request, the approvers of the asset's zone
//! (`[mail] to`, or `[mail.zones]`) get a plain-text notice with a link to the request's page.
//!
//! Entry points: [`spawn`] (from `server::run` when `[mail]` is configured) and [`notice`] (the message
//! for one request).
//!
//! Like the webhook and the ATNA export, the notifier is a consumer of the audit log, never a hook at
//! the call site: it tails the log from its own cursor (`audit_cursors` row `mail`) for
//! `request.file` events, so a notice exists only for a request that was committed, and a mail server
//! that is down or refuses is retried (1 s doubling to 5 min) across restarts. A notice is pointless
//! once its request is decided or has lapsed: then it is skipped, which also bounds the retries. With
//! several nodes, one holds the cursor's lease and sends.

mod smtp;

use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::audit::{Action, AuditEvent, AuditRow};
use crate::audit_tail::{self, Consumer, CursorRow, Delivery, Lease, Moved};
use crate::config::MailConfig;
use crate::error_text::report;
use crate::model::{AccessRequest, RequestStatus, one_line};
use crate::store::StoreError;
pub use smtp::{SetupError, Smtp};

/// The cursor row's name in `audit_cursors`.
const CURSOR: &str = "mail";

/// Starts the notifier. Fails at once when the mail server's TLS trust cannot be read, so a broken
/// `[mail]` stops `serve` instead of leaving approvers uninformed.
pub fn spawn(
    app: App,
    config: MailConfig,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, SetupError> {
    let smtp = Smtp::new(&config)?;
    // A new mail server: requests already waiting were announced through the old one; nothing to audit.
    let moved = Moved {
        log: "e-mail: mail.url changed; notices start with the next request",
        shown_url: config.url.clone(),
        audit: None,
    };
    tracing::info!(url = %config.url, "e-mail to approvers started");
    let url = config.url.clone();
    let notifier = Notifier {
        app: app.clone(),
        config,
        smtp,
    };
    let cursor = CursorRow::Named(CURSOR);
    Ok(audit_tail::spawn(app, cursor, url, moved, notifier, stop))
}

/// The request id a `request.file` row is about (`request:42`).
fn request_id(row: &AuditRow) -> Option<i64> {
    row.subject.strip_prefix("request:")?.parse().ok()
}

/// Text for a header: printable ASCII only (names and zones are, but a header must never break).
fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

/// Quoted-printable (RFC 2045 6.7) of UTF-8 text with CRLF line ends: every byte that is not plain
/// printable ASCII is escaped, so what a vendor typed reaches the mail as text, never as control bytes.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        let mut width = 0;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let plain = (b.is_ascii_graphic() && b != b'=') || (b == b' ' && !last);
            let piece = if plain {
                char::from(b).to_string()
            } else {
                format!("={b:02X}")
            };
            if width + piece.len() > 75 {
                out.push_str("=\r\n");
                width = 0;
            }
            width += piece.len();
            out.push_str(&piece);
        }
        out.push_str("\r\n");
    }
    out
}

/// The notice for `request`, to `to`, from `from`; `link` is the request's page.
pub fn notice(
    request: &AccessRequest,
    from: &str,
    to: &[String],
    link: &str,
    now: crate::model::UnixTime,
    message_id: &str,
) -> String {
    let hours = request.duration_secs / 3600;
    let minutes = request.duration_secs % 3600 / 60;
    let expires = request
        .expires_at
        .map_or_else(|| "-".to_owned(), crate::clock::format_time);
    let body = format!(
        "{vendor} ({org}) asks for access to {asset} (zone {zone}, {purpose}).\n\
         \n\
         Services: {services}\n\
         For:      {hours}h{minutes:02}m\n\
         Reason:   {reason}\n\
         Waits until {expires} for a decision.\n\
         \n\
         Decide here (sign in first): {link}\n\
         \n\
         -- \n\
         chaperone, request #{id}. You get this because you approve access for zone {zone}.\n",
        vendor = request.vendor,
        org = one_line(&request.org),
        asset = request.asset,
        zone = request.zone,
        purpose = one_line(&request.purpose),
        services = request.services.join(", "),
        reason = one_line(&request.reason),
        id = request.id,
    );
    format!(
        "From: chaperone <{from}>\r\n\
         To: {to}\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{message_id}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\
         \r\n\
         {body}",
        to = to.join(", "),
        subject = header_text(&format!(
            "Access request #{} waits: {} for {} ({})",
            request.id, request.vendor, request.asset, request.zone
        )),
        date = crate::clock::format_rfc5322(now),
        body = quoted_printable(&body),
    )
}

struct Notifier {
    app: App,
    config: MailConfig,
    smtp: Smtp,
}

impl Notifier {
    /// Audits a notice the mail server refused for good (`mail.undelivered`): approvers were not told
    /// of request `id` by mail (the page still lists it).
    async fn give_up(
        &self,
        row: &AuditRow,
        id: i64,
        attempts: u32,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.app.store.begin().await?;
        tx.audit(
            AuditEvent::new(
                "system",
                Action::MailUndelivered,
                format!("request:{id}"),
                json!({"audit_seq": row.seq, "attempts": attempts, "error": error}),
            ),
            self.app.clock.now(),
        )
        .await?;
        tx.commit("mail.undelivered").await
    }
}

impl Consumer for Notifier {
    /// The request the `request.file` row is about.
    type Item = i64;
    const NAME: &'static str = "e-mail to approvers";

    fn select(&self, row: &AuditRow) -> Option<i64> {
        if Action::parse(&row.action) != Some(Action::RequestFile) {
            return None;
        }
        request_id(row)
    }

    /// Sends the notice for request `id` until it goes out, or until the request no longer waits.
    async fn deliver(
        &mut self,
        lease: &Lease<'_>,
        row: &AuditRow,
        id: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Delivery, StoreError> {
        let mut attempt = 0u32;
        loop {
            let now = self.app.clock.now();
            let request = match self.app.store.request(id).await? {
                Some(r)
                    if r.status == RequestStatus::Pending
                        && r.expires_at.is_none_or(|at| at > now) =>
                {
                    r
                }
                _ => {
                    tracing::debug!(
                        request = id,
                        "e-mail: the request no longer waits; no notice"
                    );
                    return Ok(Delivery::Handled);
                }
            };
            let to = self.config.recipients(&request.zone);
            if to.is_empty() {
                tracing::debug!(request = id, zone = %request.zone, "e-mail: nobody to tell for this zone");
                return Ok(Delivery::Handled);
            }
            let link = format!(
                "{}/requests#req-{id}",
                self.app.config.web.public_url.trim_end_matches('/')
            );
            let domain = self
                .config
                .from
                .rsplit_once('@')
                .map_or("chaperone", |(_, d)| d);
            // The event's hash too: after a restore from backup, a sequence number already mailed can
            // come again with another event, and mail systems drop a Message-ID they have seen.
            let message_id = format!(
                "request-{id}.audit-{}.{}@{domain}",
                row.seq,
                row.hash.get(..16).unwrap_or(&row.hash)
            );
            let message = notice(&request, &self.config.from, to, &link, now, &message_id);
            attempt = attempt.saturating_add(1);
            let error = match self.smtp.send(to, &message).await {
                Ok(()) => {
                    tracing::info!(request = id, zone = %request.zone, recipients = to.len(),
                        "e-mail to approvers sent");
                    return Ok(Delivery::Handled);
                }
                Err(e) if e.permanent() => {
                    // Retrying until the request lapses would hold back every later notice
                    // (delivery is in order): given up at once, and audited.
                    crate::ops::metrics::delivery_failed("mail");
                    let error = report(&e);
                    tracing::error!(request = id, error = %error, "e-mail to approvers refused for good; not retried");
                    self.give_up(row, id, attempt, &error).await?;
                    return Ok(Delivery::Handled);
                }
                Err(e) => report(&e),
            };
            crate::ops::metrics::delivery_failed("mail");
            let wait = crate::webhook::backoff(attempt);
            tracing::warn!(request = id, attempt, error = %error,
                retry_in_secs = wait.as_secs(), "e-mail to approvers not delivered");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Criticality;

    fn request() -> AccessRequest {
        AccessRequest {
            id: 42,
            vendor: "alice".into(),
            org: "Acme Imaging".into(),
            asset: "mri-01".into(),
            zone: "radiology".into(),
            purpose: "MRI".into(),
            criticality: Criticality::High,
            services: vec!["ssh".into(), "dicom".into()],
            duration_secs: 5400,
            reason: "INC-9 \u{1b}[31mfirmware\r\n.\r\nRCPT TO:<x@evil>".into(),
            status: RequestStatus::Pending,
            created_at: 1_795_424_873,
            expires_at: Some(1_795_428_473),
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            grant_id: None,
            approvals: Vec::new(),
        }
    }

    #[test]
    fn the_notice_is_quoted_printable_and_links_to_the_request() {
        let m = notice(
            &request(),
            "chaperone@hospital.example",
            &["a@hospital.example".into(), "b@hospital.example".into()],
            "https://bastion.example/requests#req-42",
            1_795_424_873,
            "request-42.audit-7@hospital.example",
        );
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("To: a@hospital.example, b@hospital.example\r\n"));
        assert!(
            head.contains("Subject: Access request #42 waits: alice for mri-01 (radiology)\r\n")
        );
        assert!(head.contains("Date: Mon, 23 Nov 2026 09:07:53 +0000\r\n"));
        // What the vendor typed cannot end a line or the message, nor carry an escape.
        assert!(!body.contains('\u{1b}'));
        assert!(
            body.contains("INC-9 ?[31mfirmware??.??RCPT TO:<x@evil>"),
            "{body}"
        );
        assert!(!body.contains("\r\n.\r\n"));
        assert!(body.lines().all(|l| l.len() <= 76), "{body}");
        assert!(
            body.contains("https://bastion.example/requests#req-42"),
            "{body}"
        );
        assert!(body.contains("For:      1h30m"));
    }

    #[test]
    fn quoted_printable_escapes_and_wraps() {
        assert_eq!(quoted_printable("a=b é \n"), "a=3Db =C3=A9=20\r\n\r\n");
        let long = quoted_printable(&"x".repeat(200));
        assert!(long.lines().all(|l| l.len() <= 76));
        assert_eq!(long.replace("=\r\n", "").trim_end(), "x".repeat(200));
    }
}
