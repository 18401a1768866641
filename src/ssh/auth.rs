//! Vendor login: the SSH key, then a TOTP code at the keyboard-interactive prompt (partial success).
//! Both factors, every time. A vendor who has no TOTP app yet (`vendor add` without `--totp`, a reset,
//! a vendor from the directory) enrols one at that prompt: a QR code and the base32 secret are shown,
//! two consecutive codes are asked, and only then is the seed stored and the login accepted.
//!
//! A vendor who registered a passkey (`ssh VENDOR@bastion passkey add`) may answer the code prompt with
//! nothing instead: the next prompt has no question, only a one-time link (`identity::vendor_passkeys`)
//! that the client prints and answers at once; the bastion holds its reply until the browser's
//! passkey ceremony behind the link ended, or the login grace time is nearly over. The outcome is judged
//! like a code (`Second::Passkey`): counted, audited, and a link not used in time is a failure too.
//!
//! Entry points: [`Auth::key_offered`], [`Auth::key_verified`], [`Auth::prompt`], [`Auth::answer`],
//! called from the russh handler. Unknown users and wrong keys get the same rejection after the same
//! delay; only second-factor failures count toward the lockout, since OpenSSH clients routinely offer
//! several keys. The rules themselves (TOTP, replay, lockout, audit) are `identity::signin`'s.

use std::net::SocketAddr;
use std::time::Duration;

use russh::keys::PublicKey;
use serde_json::{Value, json};

use super::login::Login;
use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::identity::signin::{self, Account, Attempt, Second, Verdict};
use crate::identity::vendor_passkeys::{self, Link};
use crate::identity::{keys::fingerprint, totp};
use crate::model::Vendor;
use crate::policy::Principal;
use crate::secrets::Secret;
use crate::ssh::admission::Ticket;
use chaperone_web_approval::vendor_link::{LinkOutcome, LinkPurpose};

/// Outcome of the second-factor step.
pub enum TotpOutcome {
    /// Both factors passed: who signed in, with which key.
    Accepted(Principal),
    Refused,
    /// A vendor who may not sign in now (disabled, locked) was told why: nothing more to try.
    Barred,
    /// The vendor asked for their passkey: ask again with this prompt (the link); the answer to that
    /// is judged once the link's ceremony ended.
    PasskeyLink {
        prompt: String,
    },
    /// The vendor became barred since the prompt was shown (they reached their most connections
    /// meanwhile): nothing was judged; ask again with this prompt, which tells them why.
    Tell {
        prompt: String,
    },
}

impl std::fmt::Debug for TotpOutcome {
    // A link's prompt holds its token (a usable link): never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TotpOutcome::Accepted(p) => f.debug_tuple("Accepted").field(p).finish(),
            TotpOutcome::Refused => f.write_str("Refused"),
            TotpOutcome::Barred => f.write_str("Barred"),
            TotpOutcome::PasskeyLink { .. } => f.write_str("PasskeyLink(..)"),
            TotpOutcome::Tell { .. } => f.write_str("Tell(..)"),
        }
    }
}

/// What the keyboard-interactive prompt asks.
#[derive(Debug)]
pub struct Prompt {
    /// One short ASCII line above the prompts, empty for a login. OpenSSH prints the instructions
    /// through its log (cut at about 1 KB, anything but ASCII shown as octal escapes), so the QR code
    /// goes into the first prompt, which it writes to the terminal as it is (in a UTF-8 locale).
    pub instructions: String,
    pub prompts: Vec<String>,
}

/// A seed drawn for this connection's enrollment, shown once and kept only in memory until two codes
/// confirm it.
struct Enrolling {
    seed: Secret,
}

impl std::fmt::Debug for Enrolling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrolling(..)")
    }
}

/// The authentication state of one connection.
#[derive(Debug, Default)]
pub struct Auth {
    /// Set once a key of the named vendor was verified, for exactly this user name.
    key_ok: Option<KeyStep>,
    /// This connection told a barred vendor why: a barred vendor's key is refused from then on, as
    /// before any vendor was told, so one connection tells (and audits) once.
    told_barred: bool,
}

/// Audits of sign-ins that end without a verdict of their own on this node (a barred vendor's
/// refusal, an abandoned second factor): at most one per vendor and reason a minute, so whoever holds
/// a vendor's key cannot fill the audit log by reconnecting (each one is still logged).
#[derive(Debug, Default)]
pub struct KeyHolderAudits(
    std::sync::Mutex<std::collections::HashMap<(i64, &'static str), tokio::time::Instant>>,
);

impl KeyHolderAudits {
    const EVERY: Duration = Duration::from_secs(60);
    /// Vendors remembered at once: more than any installation holds barred within a minute.
    const MAX: usize = 10_000;

    /// Whether an event of `vendor_id` for `why` is to be audited now (and, if so, noted as
    /// audited).
    fn due(&self, vendor_id: i64, why: &'static str) -> bool {
        let now = tokio::time::Instant::now();
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= Self::MAX {
            seen.retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        match seen.get(&(vendor_id, why)) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ => {
                if seen.len() < Self::MAX {
                    seen.insert((vendor_id, why), now);
                }
                true
            }
        }
    }
}

/// A key step that passed, and what its second-factor step asked so far. A new key step replaces all
/// of it: what was asked belongs to the identity it was asked for, never to the next one (a client
/// may switch user names, and keys, between rounds).
#[derive(Debug)]
struct KeyStep {
    user: String,
    vendor: Vendor,
    key_fp: String,
    /// Why this vendor may not sign in now, found at the key step: the second-factor round says so
    /// and asks for nothing.
    barred: Option<Barred>,
    asked: Asked,
    round: Round,
}

/// Where a key step's sign-in stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// No prompt shown yet.
    KeyOnly,
    /// A prompt was shown (`asked` says which) and no answer to it judged yet.
    Open,
    /// The last answer was judged (accepted, or refused and audited as such).
    Judged,
}

/// A sign-in the connection leaves without a verdict: the key step passed, and the connection ended
/// before an answer was judged. Audited when the connection ends ([`audit_unfinished`]).
#[derive(Debug)]
pub enum Unfinished {
    /// A barred vendor left without answering the prompt that told them why.
    Barred { vendor: Vendor, why: &'static str },
    /// A passkey link was shown and the connection ended without its answer.
    LinkLeft(Unanswered),
    /// The vendor left at the second factor.
    Abandoned {
        vendor: Vendor,
        key_fp: String,
        /// What was asked last: `nothing` (no prompt yet), `code` or `enrollment`.
        asked: &'static str,
    },
}

/// Why a vendor whose key is right may not sign in now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barred {
    Disabled,
    /// Locked after repeated failures, until then.
    Locked(i64),
    /// Holds `open` signed-in connections already, the `most` allowed (`ssh.max_connections_per_vendor`).
    Busy {
        open: usize,
        most: usize,
    },
}

impl Barred {
    /// `vendor`'s bar at `now`, if any.
    fn of(vendor: &Vendor, now: i64) -> Option<Barred> {
        if !vendor.enabled {
            return Some(Barred::Disabled);
        }
        vendor
            .locked_until
            .filter(|&until| until > now)
            .map(Barred::Locked)
    }

    /// What the audit log says.
    fn why(self) -> &'static str {
        match self {
            Barred::Disabled => "disabled",
            Barred::Locked(_) => "locked",
            Barred::Busy { .. } => "too many connections",
        }
    }

    /// The prompt that tells the vendor, in lines of at most 78 columns (PuTTY breaks longer ones).
    fn prompt(self) -> String {
        let told = match self {
            Barred::Disabled => {
                "chaperone: your vendor account is disabled. Ask the hospital's bastion\r\n\
                 administrator (or your contact there) to enable it again."
                    .to_owned()
            }
            Barred::Locked(until) => format!(
                "chaperone: your account is locked until {}\r\n\
                 after repeated failed logins. Try again then, or ask the hospital's\r\n\
                 bastion administrator to unlock it now (chaperone vendor unlock).",
                crate::clock::format_time(until)
            ),
            Barred::Busy { open, most } => format!(
                "chaperone: you already hold {open} connections to the bastion, the most\r\n\
                 allowed ({most}). Close one (or reuse one: ssh -o ControlMaster=auto\r\n\
                 -o ControlPath=~/.ssh/cm-%C -o ControlPersist=10m) and try again."
            ),
        };
        format!("\r\n{told}\r\n\r\nPress Enter to close: ")
    }
}

/// What the last keyboard-interactive round asked.
#[derive(Debug, Default)]
enum Asked {
    /// A TOTP code (or, for a vendor with a passkey, Enter for the passkey).
    #[default]
    Code,
    /// Enrollment codes for this seed.
    Enrolling(Enrolling),
    /// To use this passkey link: the answer waits for it. Left unanswered, it is judged all the same.
    Passkey(Box<Link>, Unanswered),
}

/// The judgement a passkey link shown at the sign-in is owed when it is left without an answer: the
/// connection closed, a new keyboard-interactive round or a new key step begun instead, the key step
/// refused. It is judged as the passkey not used (counted toward the lockout, audited
/// `auth.totp.failure`), exactly as if the client had pressed Enter and the vendor had not used it;
/// otherwise whoever holds only the key could send the vendor links for ever (each checked from afar,
/// then left), never reaching the lockout that bounds how many links a vendor can be sent. The one
/// owner of that rule: [`Auth::answer`] takes the link with [`Unanswered::answered`]; the steps that
/// leave it judge it with [`Unanswered::judge`] before they go on; dropped anywhere else, it judges
/// itself in a task of its own.
#[derive(Debug)]
pub struct Unanswered(Option<Box<LeftLink>>);

/// Whose link it was, and where it was shown.
struct LeftLink {
    app: App,
    peer: SocketAddr,
    vendor: Vendor,
    user: String,
    key_fp: String,
}

impl std::fmt::Debug for LeftLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeftLink")
            .field("vendor", &self.vendor.name)
            .finish_non_exhaustive()
    }
}

impl Unanswered {
    /// The link's answer is being judged: nothing more is owed.
    fn answered(mut self) {
        self.0 = None;
    }

    /// Judges the link as left unanswered (`how`: what was done instead).
    async fn judge(mut self, how: &'static str) {
        if let Some(left) = self.0.take() {
            left.judge(how).await;
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(left) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(left.judge("the sign-in went on without it"));
            }
            Err(_) => {
                tracing::error!(vendor = %left.vendor.name, "a passkey link left unanswered could not be counted: no runtime");
            }
        }
    }
}

impl LeftLink {
    async fn judge(self, how: &'static str) {
        let LeftLink {
            app,
            peer,
            vendor,
            user,
            key_fp,
        } = self;
        tracing::info!(vendor = %vendor.name, %peer, how, "passkey link left unanswered: counted as a failure");
        let attempt = Attempt {
            account: Account::Vendor {
                id: vendor.id,
                name: vendor.name.clone(),
            },
            source: peer.to_string(),
            first_factor: true,
            second: Second::Passkey(Err("passkey link left unanswered")),
            key: None,
            detail: json!({"user": user, "key": key_fp, "left": how}),
        };
        if let Err(e) = signin::judge(&app, attempt, app.clock.now()).await {
            tracing::error!(vendor = %vendor.name, error = %e, "cannot count an unanswered passkey link");
        }
    }
}

impl KeyStep {
    /// The passkey link this step's round shows and nobody answered, if any, taken out (the link is
    /// voided).
    fn take_unanswered(&mut self) -> Option<Unanswered> {
        match std::mem::take(&mut self.asked) {
            Asked::Passkey(_, unanswered) => Some(unanswered),
            other => {
                self.asked = other;
                None
            }
        }
    }
}

/// Why no passkey link was shown.
enum NoLink {
    /// Too little login grace time left (the vendor's wait).
    TooLate,
    /// The link could not be stored (the bastion's trouble).
    Store,
}

/// What an answer is judged as, from what the round asked.
enum Judging {
    Passkey(Result<(), &'static str>),
    Enrollment(Enrolling),
    Code,
}

/// How long before the login grace time ends a passkey wait gives up, to refuse and audit in time.
pub const PASSKEY_MARGIN: Duration = Duration::from_secs(5);
/// A link is not worth opening with less time left than this.
const MIN_PASSKEY_WAIT: Duration = Duration::from_secs(15);

pub const TOTP_PROMPT: &str = "TOTP code: ";
/// The prompt of a vendor who registered a passkey.
pub const TOTP_OR_PASSKEY_PROMPT: &str = "TOTP code (or Enter to use your passkey): ";
pub const FIRST_CODE_PROMPT: &str = "Enrollment: first code: ";
pub const NEXT_CODE_PROMPT: &str = "Enrollment: next code (after it changes): ";

impl Auth {
    /// Would this key be accepted for `user`? (The client asks before signing.) A disabled or locked
    /// vendor's key is, so that the next step can tell them why they cannot sign in.
    pub async fn key_offered(&self, app: &App, user: &str, key: &PublicKey) -> bool {
        self.vendor_for(app, user, key)
            .await
            .is_some_and(|v| !self.told_barred || Barred::of(&v, app.clock.now()).is_none())
    }

    /// The key's signature was verified for `user`: first factor done if it belongs to that vendor.
    /// `ticket`: the connection's place in the counts (none inside a ProxyJump), asked whether the
    /// vendor holds their most connections already.
    pub async fn key_verified(
        &mut self,
        app: &App,
        user: &str,
        key: &PublicKey,
        ticket: Option<&Ticket>,
    ) -> bool {
        match self.vendor_for(app, user, key).await {
            Some(vendor) => {
                if let Some(unanswered) = self.key_ok.as_mut().and_then(KeyStep::take_unanswered) {
                    unanswered.judge("a new key step began").await;
                }
                let barred = Barred::of(&vendor, app.clock.now()).or_else(|| {
                    ticket
                        .and_then(|t| t.vendor_full(&vendor.name))
                        .map(|(open, most)| Barred::Busy { open, most })
                });
                if barred.is_some() && self.told_barred {
                    return false;
                }
                self.key_ok = Some(KeyStep {
                    user: user.to_owned(),
                    barred,
                    vendor,
                    key_fp: fingerprint(key),
                    asked: Asked::Code,
                    round: Round::KeyOnly,
                });
                true
            }
            None => false,
        }
    }

    /// Whether `user` already passed the key step (keyboard-interactive is refused before it).
    pub fn key_done_for(&self, user: &str) -> bool {
        self.key_ok.as_ref().is_some_and(|step| step.user == user)
    }

    /// An inner (ProxyJump) login: only the outer login's key is accepted, as the same vendor.
    pub fn inner_key(&mut self, user: &str, key: &PublicKey, outer: &Principal) -> bool {
        fingerprint(key) == outer.key_fingerprint && Login::parse(user).is_some()
    }

    async fn vendor_for(&self, app: &App, user: &str, key: &PublicKey) -> Option<Vendor> {
        // Once a key passed for one user name, the connection stays with it (as sshd refuses a
        // change of user name): no second factor is ever asked for one name and judged for another.
        if self.key_ok.as_ref().is_some_and(|step| step.user != user) {
            return None;
        }
        let login = Login::parse(user)?;
        let vendor = match app.store.vendor_by_key(&fingerprint(key)).await {
            Ok(v) => v?,
            Err(e) => {
                tracing::error!(error = %e, "vendor lookup failed; refusing");
                return None;
            }
        };
        (vendor.name == login.vendor).then_some(vendor)
    }

    /// What to ask at the keyboard-interactive prompt: a TOTP code, or, for a vendor without a TOTP app
    /// yet, the enrollment (a new seed drawn for this connection, shown as a QR code and in base32).
    pub async fn prompt(&mut self, app: &App) -> Prompt {
        let login = Prompt {
            instructions: String::new(),
            prompts: vec![TOTP_PROMPT.to_owned()],
        };
        let Some(step) = &mut self.key_ok else {
            return login;
        };
        // A new round: whatever the last one asked is void (a link it showed is voided with it, and
        // judged as left unanswered).
        if let Some(unanswered) = step.take_unanswered() {
            unanswered.judge("a new round began").await;
        }
        step.asked = Asked::Code;
        step.round = Round::Open;
        // Read again at each round: a vendor locked or disabled since the key step (a link left just
        // now may have locked them) is told why and shown no link, as at the key step.
        if step.barred.is_none() {
            match app.store.require_vendor(&step.vendor.name).await {
                Ok(current) => step.barred = Barred::of(&current, app.clock.now()),
                Err(e) => {
                    tracing::error!(vendor = %step.vendor.name, error = %e, "cannot read the vendor again; the answer is judged as it comes");
                }
            }
        }
        if let Some(barred) = step.barred {
            return Prompt {
                instructions: String::new(),
                prompts: vec![barred.prompt()],
            };
        }
        let vendor = &step.vendor;
        match app.store.vendor_second_factor(vendor.id).await {
            Ok(t) if !t.enrolled => {}
            Ok(_) if passkey_offered(app, vendor.id).await => {
                return Prompt {
                    instructions: String::new(),
                    prompts: vec![TOTP_OR_PASSKEY_PROMPT.to_owned()],
                };
            }
            // Enrolled, or unreadable (the code is then refused like any other).
            _ => return login,
        }
        let seed = Secret::new(totp::new_seed());
        let drawn = totp::provisioning_uri(seed.expose(), &vendor.name)
            .and_then(|uri| totp::terminal_qr(&uri));
        let qr = match drawn {
            Ok(qr) => qr,
            Err(e) => {
                tracing::error!(error = %e, "cannot draw the enrollment QR code");
                return login;
            }
        };
        // Lines of at most 78 columns (PuTTY breaks longer prompt lines behind its 2-column mark).
        // Dropbear's client drops every character outside printable ASCII from a prompt, the QR
        // code's half blocks with them: the line below it tells that vendor what to do instead.
        let first = format!(
            "\r\nWelcome, {name}.\r\n\
             Set up your second factor: scan this QR code with an authenticator app\r\n\
             (any TOTP app), or type the secret in by hand.\r\n\r\n{qr}\r\n\r\n\
             (No QR code above? Your SSH client cannot draw it: type the secret in.)\r\n\
             Secret (base32): {secret}\r\n\r\n\
             Type the code the app shows now; then, once it shows the next one, type\r\n\
             that too.\r\n\r\n\
             {FIRST_CODE_PROMPT}",
            name = vendor.name,
            secret = totp::seed_base32(seed.expose()),
        );
        let instructions = format!(
            "Welcome, {}: set up your second factor (a QR code follows).",
            vendor.name
        );
        step.asked = Asked::Enrolling(Enrolling { seed });
        Prompt {
            instructions,
            prompts: vec![first, NEXT_CODE_PROMPT.to_owned()],
        }
    }

    /// Judges the answers to [`Auth::prompt`] for the vendor whose key passed (`identity::signin`:
    /// lockout, the code's step taken, failures counted, everything audited). An empty answer from a
    /// vendor with a passkey shows a link instead ([`TotpOutcome::PasskeyLink`]); the answer to that
    /// waits for the link's outcome, until shortly before the connection's login grace time ends
    /// (`ticket`: extended once for the wait; without one, no passkey is offered).
    pub async fn answer(
        &mut self,
        app: &App,
        peer: SocketAddr,
        answers: &[String],
        ticket: Option<&Ticket>,
        audits: &KeyHolderAudits,
    ) -> TotpOutcome {
        let Some(step) = self.key_ok.as_mut() else {
            return TotpOutcome::Refused;
        };
        if let Some(barred) = step.barred {
            // Nothing was asked: the answer is not looked at, nor counted. The key step ends with it,
            // and this connection refuses a barred vendor's key from now on.
            let vendor = step.vendor.clone();
            if let Some(unanswered) = step.take_unanswered() {
                unanswered.judge("the vendor may not sign in now").await;
            }
            self.key_ok = None;
            self.told_barred = true;
            if audits.due(vendor.id, barred.why()) {
                refuse(app, peer, &vendor, app.clock.now(), barred.why()).await;
            } else {
                crate::ops::metrics::login(crate::ops::metrics::Login::Refused);
                tracing::info!(vendor = %vendor.name, %peer, why = barred.why(), "barred vendor refused (audited within the last minute)");
            }
            return TotpOutcome::Barred;
        }
        // A place in the vendor's count is taken before a code is judged (checked and taken at once:
        // codes judged together on many connections cannot all slip under the cap), kept if the code
        // is accepted and given back otherwise.
        let hold = match ticket.map(|t| t.hold_vendor(&step.vendor.name)).transpose() {
            Ok(hold) => hold,
            Err((open, most)) => {
                let barred = Barred::Busy { open, most };
                step.barred = Some(barred);
                return TotpOutcome::Tell {
                    prompt: barred.prompt(),
                };
            }
        };
        let asked = std::mem::take(&mut step.asked);
        // Judged below, whichever way (a new link reopens the round).
        step.round = Round::Judged;
        let (user, vendor, key_fp) = (step.user.clone(), step.vendor.clone(), step.key_fp.clone());
        let first = answers.first().map(String::as_str).unwrap_or_default();
        let judging = match asked {
            Asked::Passkey(link, unanswered) => {
                unanswered.answered();
                let until = ticket
                    .map(Ticket::deadline)
                    .and_then(|d| d.checked_sub(PASSKEY_MARGIN))
                    .unwrap_or_else(tokio::time::Instant::now);
                Judging::Passkey(match vendor_passkeys::wait(app, *link, until).await {
                    // A link is opened for the key step it belongs to; checked all the same.
                    Some(link) if link.vendor != vendor.name => {
                        Err("passkey link of another vendor")
                    }
                    Some(link) => match link.outcome {
                        Some(LinkOutcome::Passed) => Ok(()),
                        Some(LinkOutcome::Refused { why }) => Err(why.as_str()),
                        // A registration's outcome on a sign-in link: never written (the
                        // ceremony's kind is checked), refused all the same.
                        Some(LinkOutcome::Registered { .. }) => Err("passkey link of another kind"),
                        None => Err("passkey not used in time"),
                    },
                    None => Err("passkey not used in time"),
                })
            }
            Asked::Enrolling(enrolling) => Judging::Enrollment(enrolling),
            Asked::Code => {
                // An empty answer asks for the passkey, from a vendor who has one.
                if first.trim().is_empty()
                    && let Some(ticket) = ticket
                    && passkey_offered(app, vendor.id).await
                {
                    match self.open_link(app, peer, ticket).await {
                        Ok(prompt) => return TotpOutcome::PasskeyLink { prompt },
                        // The bastion's fault, not the vendor's: refused and audited, not counted.
                        Err(NoLink::Store) => {
                            refuse(app, peer, &vendor, app.clock.now(), "no passkey link").await;
                            return TotpOutcome::Refused;
                        }
                        // Judged, counted and audited like the wrong code an empty answer was.
                        Err(NoLink::TooLate) => {
                            Judging::Passkey(Err("too little login time left for a passkey"))
                        }
                    }
                } else {
                    Judging::Code
                }
            }
        };
        // Dated now, after any wait. Whether the vendor is still enabled, the key still theirs, the
        // account unlocked: the judge reads those in its transaction (a disable or key removal since
        // the key step counts).
        let now = app.clock.now();
        let account = Account::Vendor {
            id: vendor.id,
            name: vendor.name.clone(),
        };
        let state = match &judging {
            Judging::Code => match app.store.vendor_second_factor(vendor.id).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(vendor = %vendor.name, error = %e, "TOTP check failed; refusing");
                    return TotpOutcome::Refused;
                }
            },
            _ => None,
        };
        let sealed_new;
        let second = match judging {
            Judging::Passkey(outcome) => Second::Passkey(outcome),
            Judging::Enrollment(Enrolling { seed }) => {
                let again = answers.get(1).map(String::as_str).unwrap_or_default();
                sealed_new = app.secrets.seal(&account.seed_purpose(), seed.expose());
                Second::Enrollment(
                    signin::first_codes(seed.expose(), first, again, now)
                        .map(|step| (sealed_new.as_slice(), step))
                        .ok_or("wrong enrollment codes"),
                )
            }
            // A vendor still to enrol has no seed anyone knows: no code matches.
            Judging::Code => Second::Totp {
                sealed: state
                    .as_ref()
                    .filter(|s| s.enrolled)
                    .map(|s| s.sealed.as_slice()),
                code: first,
            },
        };
        let attempt = Attempt {
            account,
            source: peer.to_string(),
            first_factor: true,
            second,
            key: Some(&key_fp),
            detail: json!({"user": user, "key": key_fp}),
        };
        let judged = signin::judge(app, attempt, now).await;
        let outcome = self.verdict(judged, &vendor, key_fp);
        if let (TotpOutcome::Accepted(_), Some(hold)) = (&outcome, hold) {
            hold.keep();
        }
        outcome
    }

    fn verdict(
        &self,
        judged: Result<Verdict, signin::SignInError>,
        vendor: &Vendor,
        key_fp: String,
    ) -> TotpOutcome {
        match judged {
            Ok(Verdict::Accepted) => TotpOutcome::Accepted(Principal {
                vendor_id: vendor.id,
                vendor: vendor.name.clone(),
                key_fingerprint: key_fp,
            }),
            Ok(Verdict::Refused) => TotpOutcome::Refused,
            Err(e) => {
                tracing::error!(vendor = %vendor.name, error = %e, "TOTP check failed; refusing");
                TotpOutcome::Refused
            }
        }
    }

    /// The sign-in this connection leaves without a verdict, if it ends now (see [`Unfinished`]); a
    /// passkey link it showed is taken out, to be judged with how the connection ended.
    pub fn unfinished(&mut self) -> Option<Unfinished> {
        let step = self.key_ok.as_mut()?;
        if let Some(unanswered) = step.take_unanswered() {
            return Some(Unfinished::LinkLeft(unanswered));
        }
        if let Some(barred) = step.barred {
            return Some(Unfinished::Barred {
                vendor: step.vendor.clone(),
                why: barred.why(),
            });
        }
        let asked = match (step.round, &step.asked) {
            (Round::Judged, _) => return None,
            (Round::KeyOnly, _) => "nothing",
            (Round::Open, Asked::Code) => "code",
            (Round::Open, Asked::Enrolling(_)) => "enrollment",
            // Taken out above.
            (Round::Open, Asked::Passkey(..)) => "passkey",
        };
        Some(Unfinished::Abandoned {
            vendor: step.vendor.clone(),
            key_fp: step.key_fp.clone(),
            asked,
        })
    }

    /// Opens the passkey link for this key step, extending the login grace time once for it; the
    /// prompt that shows it, or why there is none (too little time left, no link).
    async fn open_link(
        &mut self,
        app: &App,
        peer: SocketAddr,
        ticket: &Ticket,
    ) -> Result<String, NoLink> {
        let Some(step) = self.key_ok.as_mut() else {
            return Err(NoLink::Store);
        };
        let deadline = ticket.extend_once(app.config.ssh.passkey_wait + PASSKEY_MARGIN);
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(PASSKEY_MARGIN);
        if left < MIN_PASSKEY_WAIT {
            return Err(NoLink::TooLate);
        }
        let purpose = LinkPurpose::SignIn {
            peer: peer.to_string(),
            key: step.key_fp.clone(),
            since: app.clock.now(),
        };
        match vendor_passkeys::open(app, &step.vendor.name, purpose, left).await {
            Ok(link) => {
                // A prompt, not the instructions: every client shows a prompt (OpenSSH prints
                // instructions through its log, which `-q` silences). Lines of at most 78
                // columns, the link alone on its own: PuTTY breaks a prompt's lines at the
                // terminal's width, after its own 2-column mark, which would break the link.
                let prompt = format!(
                    "\r\nUse your passkey: open this link in a browser within {} seconds.\r\n\
                     It works once.\r\n\r\n{}\r\n\r\n\
                     Then press Enter (ssh waits until you have used it): ",
                    left.as_secs(),
                    link.url
                );
                let left = LeftLink {
                    app: app.clone(),
                    peer,
                    vendor: step.vendor.clone(),
                    user: step.user.clone(),
                    key_fp: step.key_fp.clone(),
                };
                step.asked = Asked::Passkey(Box::new(link), Unanswered(Some(Box::new(left))));
                step.round = Round::Open;
                Ok(prompt)
            }
            Err(e) => {
                tracing::error!(vendor = %step.vendor.name, error = %e, "cannot open a passkey link");
                Err(NoLink::Store)
            }
        }
    }
}

/// Whether `vendor_id` may use a passkey: this installation offers them and the vendor holds one.
async fn passkey_offered(app: &App, vendor_id: i64) -> bool {
    vendor_passkeys::offered(app) && vendor_passkeys::count(app, vendor_id).await.unwrap_or(0) > 0
}

/// Audits a sign-in left without a verdict when its connection ended (`closed`: how it ended), at
/// most once a minute per vendor and kind on this node (each one is logged): a barred vendor's as the
/// refusal it is (`auth.refused`), an abandoned second factor as `auth.abandoned`; but a passkey link
/// left unanswered is judged (counted toward the lockout, audited `auth.totp.failure`) every time.
/// Whoever left holds the vendor's private key: a vendor who changed their mind, or a thief without the
/// code.
pub async fn audit_unfinished(
    app: &App,
    peer: SocketAddr,
    audits: &KeyHolderAudits,
    unfinished: Unfinished,
    closed: &'static str,
) {
    let now = app.clock.now();
    match unfinished {
        Unfinished::Barred { vendor, why } => {
            if audits.due(vendor.id, why) {
                refuse(app, peer, &vendor, now, why).await;
            } else {
                crate::ops::metrics::login(crate::ops::metrics::Login::Refused);
                tracing::info!(vendor = %vendor.name, %peer, why, closed, "barred vendor left (audited within the last minute)");
            }
        }
        // Judged, counted and audited as the passkey not used ([`Unanswered`]).
        Unfinished::LinkLeft(unanswered) => unanswered.judge(closed).await,
        Unfinished::Abandoned {
            vendor,
            key_fp,
            asked,
            ..
        } => {
            tracing::info!(vendor = %vendor.name, %peer, asked, closed, "sign-in abandoned at the second factor");
            if audits.due(vendor.id, "abandoned") {
                let detail = json!({"peer": peer.to_string(), "key": key_fp, "asked": asked, "closed": closed});
                audit_vendor(app, &vendor, Action::AuthAbandoned, detail, now).await;
            }
        }
    }
}

/// A vendor refused after the key step (barred at it, disabled or their key removed since, no passkey
/// link): refused and audited with `why`.
async fn refuse(app: &App, peer: SocketAddr, vendor: &Vendor, now: i64, why: &str) {
    let detail = json!({"peer": peer.to_string(), "why": why});
    audit_vendor(app, vendor, Action::AuthRefused, detail, now).await;
    crate::ops::metrics::login(crate::ops::metrics::Login::Refused);
}

/// Audits `action` by and about `vendor` (a failure is logged: the sign-in's outcome stands).
async fn audit_vendor(app: &App, vendor: &Vendor, action: Action, detail: Value, now: i64) {
    let subject = format!("vendor:{}", vendor.name);
    let result = async {
        let mut tx = app.store.begin().await?;
        tx.audit(AuditEvent::new(&subject, action, &subject, detail), now)
            .await?;
        tx.commit(action.as_str()).await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(vendor = %vendor.name, %action, error = %e, "cannot audit a sign-in");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barred_vendor_is_told_why_in_lines_that_fit_a_terminal() {
        let vendor = Vendor {
            id: 1,
            name: "erin".into(),
            org: "Acme".into(),
            enabled: true,
            locked_until: Some(2_000),
            created_at: 0,
        };
        assert_eq!(Barred::of(&vendor, 1_999), Some(Barred::Locked(2_000)));
        assert_eq!(Barred::of(&vendor, 2_000), None, "a lock ends at its time");
        let disabled = Vendor {
            enabled: false,
            ..vendor.clone()
        };
        assert_eq!(Barred::of(&disabled, 1_999), Some(Barred::Disabled));
        for barred in [
            Barred::Disabled,
            Barred::Locked(1_796_433_520),
            Barred::Busy {
                open: 10_000,
                most: 10_000,
            },
        ] {
            let prompt = barred.prompt();
            assert!(prompt.ends_with("Press Enter to close: "), "{prompt}");
            assert!(
                prompt.split("\r\n").all(|l| l.chars().count() <= 78),
                "{prompt}"
            );
        }
        assert!(
            Barred::Locked(1_796_433_520)
                .prompt()
                .contains("locked until 2026-12-05 ")
        );
    }
}
