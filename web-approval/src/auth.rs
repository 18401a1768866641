//! Staff sign-in state: sessions (stored by the core, so every node sees them; idle sign-out), CSRF
//! tokens, a per-address sign-in rate limit, and password hashing (argon2id, off the async threads).
//!
//! Entry points: the session methods on [`WebState`], [`Limiter`] (in the router state),
//! [`hash_password`] and [`verify_password`]. Accounts, second factors and lockout live in the core
//! (database, audited).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::WebState;
use crate::core::{Core, CoreError, Source, Staff, StateKind};

/// The session cookie: `__Host-` pins it to this origin, path `/`, Secure.
pub const COOKIE: &str = "__Host-chaperone";

/// Marks a request the page makes by itself (the live refresh in `static/app.js`), not one a person
/// made: it is answered like any other but does not count as activity, so it never postpones the idle
/// sign-out. `/events` (the change stream) never counts either.
pub const BACKGROUND: &str = "x-chaperone-background";

/// A request another site's page had the browser make on its own (an image, a script, a frame, a
/// fetch), not a page a person opened: `Sec-Fetch-Site` other than `same-origin` or `none`, unless it is
/// a top-level navigation (a link followed). The cookie is `SameSite=Strict`, which browsers still send
/// to requests from a sibling host (`wiki.hospital.example` beside the bastion): such a request is
/// answered as signed out, so a sibling's page cannot search or export in a signed-in person's name
/// (each audited as theirs) nor keep their session from idling. Every session is loaded through
/// [`WebState::load_session`], so no page, API call or stream is left out. A browser that sends no
/// `Sec-Fetch-Site` (Safari before 16.4) is not judged.
fn sent_for_another_site(headers: &HeaderMap) -> bool {
    let Some(site) = headers.get("sec-fetch-site") else {
        return false;
    };
    if site.as_bytes() == b"same-origin" || site.as_bytes() == b"none" {
        return false;
    }
    let navigation = headers
        .get("sec-fetch-mode")
        .is_some_and(|m| m.as_bytes() == b"navigate");
    let top_level = headers
        .get("sec-fetch-dest")
        .is_none_or(|d| d.as_bytes() == b"document");
    !(navigation && top_level)
}

/// Whether `headers` mark a background request ([`BACKGROUND`]).
pub fn is_background(headers: &HeaderMap) -> bool {
    headers.contains_key(BACKGROUND)
}

/// `stream` for as long as the web session named in `headers` lasts: it ends at the first check that
/// finds the session gone (signed out, idle past the limit, the user disabled or removed from the
/// directory, which ends their sessions), made every 15 s, or every half idle time-out if that is
/// shorter. The one rule for every server-sent-event stream (the change stream, a live
/// view): the check at its start is not enough. A store error is not a sign-out: the stream goes on.
pub fn while_signed_in<C, S>(
    st: std::sync::Arc<WebState<C>>,
    headers: HeaderMap,
    stream: S,
) -> impl futures::Stream<Item = S::Item> + Send + 'static
where
    C: Core,
    S: futures::Stream + Send + 'static,
    S::Item: Send,
{
    use futures::StreamExt as _;
    let every = (st.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(15));
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(
        (st, headers, Box::pin(stream), check),
        |(st, headers, mut stream, mut check)| async move {
            loop {
                tokio::select! {
                    item = stream.next() => {
                        return item.map(|item| (item, (st, headers, stream, check)));
                    }
                    _ = check.tick() => {
                        if let Ok(None) = st.peek_session(&headers).await {
                            return None;
                        }
                    }
                }
            }
        },
    )
}

/// A signed-in browser or script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub staff: Staff,
    /// Must come back with every state change (form field `csrf` or header `X-CSRF-Token`).
    pub csrf: String,
    /// The results of the last actions ("Request #7: approved …"), newest last, at most [`NOTICES`];
    /// each is shown by the page its redirect names (see [`Notice`]). A session stored before notices
    /// were kept by address had a one-time `flash` instead; serde skips that field.
    #[serde(default)]
    pub notices: Vec<Notice>,
    /// When it was signed in (Unix seconds): it ends `max_session_age` later, whatever its activity.
    /// A session stored before this was kept reads 0, so it ends at once.
    #[serde(default)]
    pub signed_in_at: i64,
}

/// Notices a session keeps: one per tab an approver acts in, with room to spare.
pub const NOTICES: usize = 8;

/// The result of an action, for the page the action redirected to. The redirect carries the notice's
/// id in the address (`/requests?notice=ID`), and a page shows a notice exactly when its address names
/// it: reading it takes nothing away, so the page's live refresh (which reads the same address again)
/// and a reload show it as well, and any other page does not. Each action adds one (the oldest beyond
/// [`NOTICES`] go), so two tabs acting in one session each keep theirs. This is the one rule for
/// notices; nothing else shows or hides them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    pub id: String,
    pub text: String,
}

impl Session {
    /// The notice the page at an address with this query string shows, if any.
    pub fn notice_for(&self, query: Option<&str>) -> Option<&str> {
        let wanted = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "notice")
            .map(|(_, v)| v.into_owned())?;
        self.notices
            .iter()
            .find(|n| n.id == wanted)
            .map(|n| n.text.as_str())
    }

    /// Adds a notice, dropping the oldest beyond [`NOTICES`].
    fn add_notice(&mut self, notice: Notice) {
        self.notices.push(notice);
        let extra = self.notices.len().saturating_sub(NOTICES);
        self.notices.drain(..extra);
    }
}

/// `to` with the notice's id added to its query string.
fn with_notice(to: &str, id: &str) -> String {
    let sep = if to.contains('?') { '&' } else { '?' };
    format!("{to}{sep}notice={id}")
}

/// 256 random bits as 64 hex digits: cookies, CSRF tokens, enrollment links.
pub(crate) fn random_token() -> String {
    hex::encode(random_bytes::<32>())
}

/// `N` bytes from the OS random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS random source failing leaves no safe way to sign anyone in.
    if getrandom::fill(&mut bytes).is_err() {
        tracing::error!("the OS random source failed");
        std::process::abort();
    }
    bytes
}

/// What the core stores for a token: its SHA-256, so the database never holds a usable cookie or
/// ceremony id.
pub(crate) fn key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Sessions live in the core (every node sees them, so no sticky load balancing is needed), keyed by the
/// SHA-256 of the cookie value, and lapse after `idle_timeout` without a request a person made (not
/// the page's own background requests), and `max_session_age` after the sign-in whatever happens.
impl<C: Core> WebState<C> {
    fn session_expiry(&self) -> i64 {
        let idle = i64::try_from(self.idle_timeout.as_secs()).unwrap_or(i64::MAX / 2);
        self.core.now().saturating_add(idle.max(1))
    }

    /// Starts a session; returns the cookie value and the CSRF token.
    pub async fn start_web_session(&self, staff: Staff) -> Result<(String, String), CoreError> {
        let token = random_token();
        let session = Session {
            staff,
            csrf: random_token(),
            notices: Vec::new(),
            signed_in_at: self.core.now(),
        };
        self.core
            .put_state(
                StateKind::Session,
                &key(&token),
                Some(&session.staff.name),
                &to_json(&session)?,
                self.session_expiry(),
            )
            .await?;
        Ok((token, session.csrf))
    }

    /// The session named by the request's cookie, unless it has been idle past the limit; touches it
    /// unless the request is a [`BACKGROUND`] one. `Err` when the store cannot say (the caller answers
    /// 503: a database hiccup is not a sign-out).
    pub async fn session(&self, headers: &HeaderMap) -> Result<Option<Session>, CoreError> {
        self.load_session(headers, !is_background(headers)).await
    }

    /// The session named by the request's cookie, not touched: for the change stream, which no person
    /// asks for.
    pub async fn peek_session(&self, headers: &HeaderMap) -> Result<Option<Session>, CoreError> {
        self.load_session(headers, false).await
    }

    async fn load_session(
        &self,
        headers: &HeaderMap,
        activity: bool,
    ) -> Result<Option<Session>, CoreError> {
        if sent_for_another_site(headers) {
            return Ok(None);
        }
        let Some(token) = cookie(headers, COOKIE) else {
            return Ok(None);
        };
        let k = key(&token);
        let extend_to = activity.then(|| self.session_expiry());
        let Some(data) = self.core.state(StateKind::Session, &k, extend_to).await? else {
            return Ok(None);
        };
        match serde_json::from_str::<Session>(&data) {
            Ok(s) => {
                let age = i64::try_from(self.max_session_age.as_secs()).unwrap_or(i64::MAX / 2);
                if s.signed_in_at.saturating_add(age) <= self.core.now() {
                    // Signed in too long ago, however active: signed out, everywhere at once.
                    let _ = self.core.drop_state(StateKind::Session, &k).await;
                    return Ok(None);
                }
                Ok(Some(s))
            }
            Err(e) => {
                tracing::warn!(error = %e, "web: a stored session does not parse; signing it out");
                let _ = self.core.drop_state(StateKind::Session, &k).await;
                Ok(None)
            }
        }
    }

    /// Adds `message` to the session's notices and answers with a redirect (303) to `to`, with the
    /// notice's id in the address (see [`Notice`]). If the notice cannot be stored, the redirect goes
    /// to `to` alone: the action happened either way.
    pub async fn redirect_with_notice(
        &self,
        headers: &HeaderMap,
        message: String,
        to: &str,
    ) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let id = random_token()[..16].to_owned();
        let stored = async {
            let k = key(&cookie(headers, COOKIE)?);
            let data = self.core.state(StateKind::Session, &k, None).await.ok()??;
            let mut session = serde_json::from_str::<Session>(&data).ok()?;
            session.add_notice(Notice {
                id: id.clone(),
                text: message,
            });
            let json = to_json(&session).ok()?;
            // Only if the session is still there: a sign-out meanwhile must not be undone.
            self.core
                .replace_state(StateKind::Session, &k, &json)
                .await
                .ok()
                .filter(|replaced| *replaced)
        }
        .await;
        let location = match stored {
            Some(_) => with_notice(to, &id),
            None => to.to_owned(),
        };
        axum::response::Redirect::to(&location).into_response()
    }

    /// Signs the request's session out, on every node. `Err` when the store did not confirm it.
    pub async fn sign_out(&self, headers: &HeaderMap) -> Result<(), CoreError> {
        match cookie(headers, COOKIE) {
            Some(token) => {
                let taken = self
                    .core
                    .take_state(StateKind::Session, &key(&token))
                    .await?;
                match taken.and_then(|data| serde_json::from_str::<Session>(&data).ok()) {
                    Some(session) => self.core.signed_out(&session.staff.name).await,
                    // Lapsed already, or never there: nothing was signed out.
                    None => Ok(()),
                }
            }
            None => Ok(()),
        }
    }
}

fn to_json(session: &Session) -> Result<String, CoreError> {
    serde_json::to_string(session).map_err(|_| CoreError::Internal)
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// Compares a presented CSRF token with the session's without an early exit.
pub fn csrf_ok(session: &Session, presented: Option<&str>) -> bool {
    let Some(p) = presented else { return false };
    let (a, b) = (p.as_bytes(), session.csrf.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// At most `max` sign-in attempts per source address in `window` (on this node), and at most
/// [`NODE_SOURCES`] times that from all sources together: a flood from many addresses (an IPv6 /48 holds
/// 65,536 /64s) is held to a bounded rate of database writes and audit events on the node (the store
/// and its one writer are shared with the vendors' sessions), and the map this keeps stays small.
#[derive(Debug)]
pub struct Limiter {
    map: Mutex<HashMap<Source, Vec<Instant>>>,
    max: usize,
    window: Duration,
}

/// How many sources' worth of sign-in attempts a node takes in a window (50 x 20 = 1,000 in 5 minutes
/// by default: a shift change of several hundred staff signs in well within it).
pub const NODE_SOURCES: usize = 50;

impl Limiter {
    pub fn new(max: usize, window: Duration) -> Limiter {
        Limiter {
            map: Mutex::new(HashMap::new()),
            max,
            window,
        }
    }

    /// Counts an attempt from `source`; false when it is over either limit.
    pub fn allow(&self, source: Source) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        let window = self.window;
        map.retain(|_, v| {
            v.retain(|t| t.elapsed() < window);
            !v.is_empty()
        });
        let total: usize = map.values().map(Vec::len).sum();
        if total >= self.max.saturating_mul(NODE_SOURCES) {
            return false;
        }
        let attempts = map.entry(source).or_default();
        if attempts.len() >= self.max {
            return false;
        }
        attempts.push(Instant::now());
        true
    }
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password")]
pub struct HashError;

/// argon2id PHC string of `password`, computed on a blocking thread.
pub async fn hash_password(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| HashError)?;
        let salt = SaltString::encode_b64(&salt).map_err(|_| HashError)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| HashError)
    })
    .await
    .map_err(|_| HashError)?
}

/// A hash of a password nobody has, so unknown accounts take as long to refuse as known ones.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$O2Yd3C6vWb9jRNTaZb3lU2iYuWDTbswn8U3xX3Y5V7M";

/// Whether `password` matches `hash` (`None`: compared against a dummy, always false).
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
        && known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong".into(), Some(h)).await);
        assert!(!verify_password("anything".into(), None).await);
    }

    #[test]
    fn a_notice_shows_on_the_page_its_address_names_however_often_it_is_read() {
        let mut s = Session {
            staff: Staff {
                name: "bob".into(),
                role: crate::Role::Approver,
                method: crate::Method::Totp,
            },
            csrf: "x".into(),
            notices: Vec::new(),
            signed_in_at: 0,
        };
        let notice = |id: &str, text: &str| Notice {
            id: id.into(),
            text: text.into(),
        };
        s.add_notice(notice("abc", "Request #7: approved"));
        // Another tab's action does not take the first tab's notice away.
        s.add_notice(notice("def", "Request #8: denied"));
        for _ in 0..3 {
            assert_eq!(
                s.notice_for(Some("notice=abc")),
                Some("Request #7: approved")
            );
        }
        assert_eq!(s.notice_for(Some("notice=def")), Some("Request #8: denied"));
        assert_eq!(
            s.notice_for(Some("vendor=x&notice=abc")),
            Some("Request #7: approved")
        );
        assert_eq!(s.notice_for(Some("notice=abd")), None);
        assert_eq!(s.notice_for(None), None);
        for i in 0..NOTICES {
            s.add_notice(notice(&i.to_string(), "later"));
        }
        assert_eq!(s.notices.len(), NOTICES);
        assert_eq!(s.notice_for(Some("notice=abc")), None, "the oldest go");
        assert_eq!(with_notice("/requests", "abc"), "/requests?notice=abc");
        assert_eq!(
            with_notice("/decisions?vendor=x", "abc"),
            "/decisions?vendor=x&notice=abc"
        );
        // A session stored with the old one-time flash still reads.
        let old =
            r#"{"staff":{"name":"bob","role":"approver","method":"totp"},"csrf":"x","flash":"hi"}"#;
        assert!(
            serde_json::from_str::<Session>(old)
                .unwrap()
                .notices
                .is_empty()
        );
    }

    #[test]
    fn limiter_counts_per_address() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let a = Source::of("127.0.0.1".parse().unwrap());
        let b = Source::of("127.0.0.2".parse().unwrap());
        assert!(l.allow(a) && l.allow(a));
        assert!(!l.allow(a));
        assert!(l.allow(b));
        // One IPv6 /64 is one source.
        // From many addresses, no more than NODE_SOURCES addresses' worth in all.
        let l = Limiter::new(1, Duration::from_secs(60));
        for i in 0..NODE_SOURCES {
            assert!(l.allow(Source::of(
                format!("10.0.{}.{}", i / 200, i % 200).parse().unwrap()
            )));
        }
        assert!(!l.allow(Source::of("10.9.9.9".parse().unwrap())));
        let l = Limiter::new(1, Duration::from_secs(60));
        assert!(l.allow(Source::of("2001:db8:1:2::1".parse().unwrap())));
        assert!(!l.allow(Source::of("2001:db8:1:2:ffff::9".parse().unwrap())));
        assert!(l.allow(Source::of("2001:db8:1:3::1".parse().unwrap())));
    }

    #[test]
    fn sources_are_addresses_and_ipv6_prefixes() {
        let s = |ip: &str| Source::of(ip.parse().unwrap()).to_string();
        assert_eq!(s("192.0.2.7"), "192.0.2.7");
        assert_eq!(s("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(s("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    }
}
