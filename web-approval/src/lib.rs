//! The approvers' and auditors' web page and its JSON API. It knows HTTP, TLS and staff sign-in, but not
//! SSH or SQL: it reaches the core only through the [`Core`] trait, which the root crate implements.
//!
//! Entry points: [`router`] (the app factory), [`tls::server_config`] and [`serve::serve`] (the HTTPS
//! listener with its time-outs and connection caps).
//! Route modules: `pages` (server-rendered HTML, forms; a revoke or terminate asks again on a page of
//! its own), `api` (JSON under `/api`), `signin` (sign-in,
//! enrollment, sign-out). Every response carries a strict Content-Security-Policy; every state change
//! needs a signed-in session and its CSRF token; live updates arrive as server-sent events (`/events`).

// Handlers return a ready `Response` as their error: it is built once per request and moved once, so
// boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

mod api;
pub mod auth;
pub mod core;
mod history;
mod html;
mod pages;
pub mod passkey;
pub mod places;
pub mod serve;
mod signin;
pub mod tls;
pub mod vendor_link;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use crate::core::{
    Accounts, Approvals, AuditView, ConnectionView, Core, CoreError, Decision, DecisionsPage,
    DecisionsQuery, Enrollment, EvidenceDownload, GrantView, HistoryItem, HistoryPage,
    HistoryQuery, HoldView, LiveStream, Method, PasskeyChange, PendingList, RecordingStatus,
    Records, RequestView, Role, SecondFactor, SessionDetail, SessionView, SignInAttempt,
    SignInState, Source, Staff, StaffAccount, StateKind, TranscriptHit, TransferView,
    VIEW_LEASE_SECS, Verdict,
};
use auth::Limiter;

/// What every handler shares.
#[derive(Debug)]
pub struct WebState<C> {
    /// The core: requests, grants, sessions, accounts.
    pub core: Arc<C>,
    /// Signs a session out after this long without a request (sessions are stored by the core).
    pub idle_timeout: Duration,
    /// Signs a session out this long after its sign-in, whatever its activity.
    pub max_session_age: Duration,
    /// Sign-in attempts per address.
    pub limiter: Limiter,
    /// Vendor links opened with a token that names none (`vendor_link::start`), per address: a budget of
    /// their own, so that a flood of made-up tokens uses up neither staff sign-ins nor real links.
    pub link_misses: Limiter,
    /// The WebAuthn relying party; `None` when `public_url` cannot be one (passkeys are then not offered).
    pub passkeys: Option<passkey::Passkeys>,
    /// The change streams (`/events`) open on this node, in all and by staff member: each holds a
    /// connection for as long as its session lasts and reads the store every second.
    pub change_streams: places::Places,
}

/// Change streams open at once on a node, and of one staff member's (a few tabs each).
const CHANGE_STREAMS: usize = 256;
const CHANGE_STREAMS_EACH: usize = 8;

/// Settings of the web app.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Sign a session out after this long without a request.
    pub idle_timeout: Duration,
    /// Sign a session out this long after its sign-in, whatever its activity.
    pub max_session_age: Duration,
    /// Sign-in attempts allowed per client address per 5 minutes.
    pub signin_attempts: usize,
    /// The page's address as browsers see it (`web.public_url`): the passkeys' relying party.
    pub public_url: Option<String>,
    /// Keys the made-up passkey ids that a sign-in for a name without passkeys is answered with. Give
    /// every node the same key (chaperone derives it from the secrets key): a name then always gets the
    /// same ids, as a real account would. `None`: a random key for this process.
    pub decoy_key: Option<[u8; 32]>,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions {
            idle_timeout: Duration::from_secs(15 * 60),
            max_session_age: Duration::from_secs(12 * 3600),
            signin_attempts: 20,
            public_url: None,
            decoy_key: None,
        }
    }
}

/// Builds the web application. Serve it with [`serve::serve`] (which gives handlers the client's address).
pub fn router<C: Core>(core: Arc<C>, options: WebOptions) -> Router {
    let state = Arc::new(WebState {
        core,
        idle_timeout: options.idle_timeout,
        max_session_age: options.max_session_age,
        limiter: Limiter::new(options.signin_attempts, Duration::from_secs(300)),
        link_misses: Limiter::new(options.signin_attempts, Duration::from_secs(300)),
        passkeys: options.public_url.as_deref().and_then(|url| {
            match passkey::Passkeys::new(url, options.decoy_key) {
                Ok(p) => Some(p),
                Err(why) => {
                    tracing::warn!("passkeys are off: {why}");
                    None
                }
            }
        }),
        change_streams: places::Places::new(CHANGE_STREAMS, CHANGE_STREAMS_EACH),
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/static/session.js", get(session_js))
        .route("/static/asciinema-player.min.js", get(player_js))
        .route("/static/asciinema-player.css", get(player_css))
        .route("/", get(pages::home::<C>))
        .route("/requests", get(pages::requests::<C>))
        .route("/requests/{id}/approve", post(pages::approve::<C>))
        .route("/requests/{id}/deny", post(pages::deny::<C>))
        .route("/decisions", get(pages::decisions::<C>))
        .route("/grants", get(pages::grants::<C>))
        .route("/grants/{id}/revoke", post(pages::revoke::<C>))
        .route("/sessions", get(pages::sessions::<C>))
        .route("/sessions/{id}", get(history::session_page::<C>))
        .route("/sessions/{id}/terminate", post(history::terminate::<C>))
        .route("/sessions/{id}/hold", post(history::hold::<C>))
        .route("/sessions/{id}/live", get(history::live::<C>))
        .route("/sessions/{id}/live/check", get(history::live_check::<C>))
        .route("/sessions/{id}/evidence.tar", get(history::evidence::<C>))
        .route(
            "/sessions/{id}/search",
            get(history::transcript_search::<C>),
        )
        .route(
            "/sessions/{id}/recordings/{rid}/play.json",
            get(history::play_index::<C>),
        )
        .route(
            "/sessions/{id}/recordings/{rid}/segments/{n}",
            get(history::play_segment::<C>),
        )
        .route("/history", get(history::history_page::<C>))
        .route("/events", get(pages::events::<C>))
        .route("/account", get(pages::account::<C>))
        .route("/account/passkeys/start", post(passkey::add_start::<C>))
        .route("/account/passkeys/finish", post(passkey::add_finish::<C>))
        .route("/account/passkeys/{n}/remove", post(passkey::remove::<C>))
        .route(
            "/login",
            get(signin::login_page::<C>).post(signin::login::<C>),
        )
        .route("/logout", post(signin::logout::<C>))
        .route(
            "/enroll/{token}",
            get(signin::enroll_page::<C>).post(signin::enroll::<C>),
        )
        .route(
            "/enroll/{token}/passkey/start",
            post(passkey::enroll_start::<C>),
        )
        .route(
            "/enroll/{token}/passkey/finish",
            post(passkey::enroll_finish::<C>),
        )
        .route("/v/{token}", get(vendor_link::link_page::<C>))
        .route("/v/{token}/start", post(vendor_link::start::<C>))
        .route("/v/{token}/finish", post(vendor_link::finish::<C>))
        .route("/login/passkey/start", post(passkey::login_start::<C>))
        .route("/login/passkey/finish", post(passkey::login_finish::<C>))
        .route("/api/login", post(api::login::<C>))
        .route("/api/requests", get(api::requests::<C>))
        .route("/api/requests/{id}", get(api::request::<C>))
        .route("/api/requests/{id}/decision", post(api::decide::<C>))
        .route("/api/grants", get(api::grants::<C>))
        .route("/api/grants/{id}/revoke", post(api::revoke::<C>))
        .route("/api/sessions", get(history::api_sessions::<C>))
        .route("/api/sessions/{id}", get(history::api_session::<C>))
        .route("/api/sessions/{id}/terminate", post(api::terminate::<C>))
        .route("/api/sessions/{id}/hold", post(api::hold::<C>))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The peer address type handlers read (`ConnectInfo<SocketAddr>`).
pub type Peer = axum::extract::ConnectInfo<tls::PeerAddr>;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers on every response: no inline script runs, no framing, nothing cached, HTTPS only.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // A page that hosts the player sets its own (the same plus WebAssembly: `history::PLAYER_CSP`).
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: a browser without `Sec-Fetch-Site` (Safari before 16.4) then
    // sends the page's real `Origin` with its own sign-in form, which the login CSRF check reads
    // (`no-referrer` makes it `null`, refused); other sites still get no `Referer`.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
}

async fn session_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/session.js"),
    )
}

/// asciinema-player (npm `asciinema-player`, its standalone bundle), served by chaperone itself: no CDN.
async fn player_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_bytes!("../static/asciinema-player.min.js").as_slice(),
    )
}

async fn player_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_bytes!("../static/asciinema-player.css").as_slice(),
    )
}

/// One mapping from core errors to HTTP status: 404, 403, 400, 409, 429, and a generic 500.
pub(crate) fn status_of(e: &CoreError) -> StatusCode {
    match e {
        CoreError::NotFound => StatusCode::NOT_FOUND,
        CoreError::Forbidden(_) => StatusCode::FORBIDDEN,
        CoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        CoreError::Conflict(_) => StatusCode::CONFLICT,
        CoreError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        CoreError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Form fields as pairs (repeated keys kept: `service=ssh&service=dicom`).
pub(crate) fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

pub(crate) fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
