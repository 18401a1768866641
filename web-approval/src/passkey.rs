//! Passkeys (WebAuthn, through webauthn-rs) as the second factor: registered at enrollment instead of a
//! TOTP app, then used at sign-in after the password.
//!
//! Each ceremony is two JSON requests. The first answers WebAuthn options and a ceremony id; the
//! browser (`static/app.js`) calls `navigator.credentials.create/get` and sends the result with the id.
//! Ceremony state is stored by the core for [`CEREMONY_TTL`], under the SHA-256 of the id, so the finish
//! may reach any node; it is taken out when used, so it is used once.
//!
//! The relying party is `web.public_url`: its host must be a DNS name (WebAuthn refuses IP addresses),
//! and browsers accept passkeys only on a page whose certificate they trust.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use webauthn_rs::fake::{FakePasskeyDistribution, WebauthnFakeCredentialGenerator};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::auth::{self, set_cookie};
use crate::core::{Method, PasskeyChange, SecondFactor, Source, StateKind};
use crate::signin::{MIN_PASSWORD, SignInError, authenticate, start_session};
use crate::{Core, CoreError, Peer, WebState};

type St<C> = State<Arc<WebState<C>>>;

/// How long a started ceremony may wait for the browser's answer.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);

/// The relying party, built from `web.public_url`.
pub struct Passkeys {
    pub(crate) webauthn: Webauthn,
    /// The relying party id (the host of `web.public_url`), as webauthn-rs puts it in its options.
    rp_id: String,
    /// Made-up credential ids for names without passkeys, the same for a name every time.
    decoys: WebauthnFakeCredentialGenerator<FakePasskeyDistribution>,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys").finish_non_exhaustive()
    }
}

/// A started ceremony, as stored between its two requests (webauthn-rs state serialises with its
/// `danger-allow-state-serialisation` feature; the danger it names is handing it to the browser, which
/// this never does: it stays in the database).
#[derive(Serialize, Deserialize)]
pub(crate) enum Ceremony {
    /// Enrollment through the link whose token's SHA-256 is kept here (the token would be a usable link
    /// to whoever reads the database).
    Register {
        token_sha256: String,
        state: PasskeyRegistration,
    },
    SignIn {
        name: String,
        state: PasskeyAuthentication,
    },
    /// A sign-in for a name with no passkey (or no account): a challenge nothing can answer.
    Decoy { name: String },
    /// A signed-in user adding another passkey.
    Add {
        name: String,
        state: PasskeyRegistration,
    },
    /// A vendor's sign-in through the link ssh printed (`vendor_link`), whose token's SHA-256 is kept.
    VendorSignIn {
        token_sha256: String,
        state: PasskeyAuthentication,
    },
    /// A vendor registering a passkey through the link `passkey add` printed.
    VendorRegister {
        token_sha256: String,
        state: PasskeyRegistration,
    },
}

impl Ceremony {
    /// The pool it is kept in (see [`StateKind`]), and its subject there.
    fn pool(&self) -> (StateKind, Option<&str>) {
        match self {
            Ceremony::SignIn { name, .. } => (StateKind::Ceremony, Some(name)),
            Ceremony::Decoy { name } => (StateKind::DecoyCeremony, Some(name)),
            Ceremony::Register { token_sha256, .. }
            | Ceremony::VendorSignIn { token_sha256, .. }
            | Ceremony::VendorRegister { token_sha256, .. } => {
                (StateKind::LinkCeremony, Some(token_sha256))
            }
            Ceremony::Add { name, .. } => (StateKind::AccountCeremony, Some(name)),
        }
    }
}

/// The relying party id of `public_url` (its host), or why it cannot be one: the one rule for whether
/// this installation offers passkeys at all, staff's and vendors' alike.
pub fn relying_party(public_url: &str) -> Result<(Url, String), String> {
    let url = Url::parse(public_url).map_err(|e| format!("web.public_url: {e}"))?;
    let Some(domain) = url.domain().map(str::to_owned) else {
        return Err(format!(
            "web.public_url {public_url} has no DNS name; passkeys need one (WebAuthn does not accept IP addresses)"
        ));
    };
    Ok((url, domain))
}

impl Passkeys {
    /// An error with the reason when `public_url` cannot be a WebAuthn relying party (an IP address).
    pub fn new(public_url: &str, decoy_key: Option<[u8; 32]>) -> Result<Passkeys, String> {
        let (url, domain) = relying_party(public_url)?;
        let webauthn = WebauthnBuilder::new(&domain, &url)
            .and_then(|b| b.rp_name("chaperone").build())
            .map_err(|e| format!("passkeys for {public_url}: {e}"))?;
        let decoy_key = match decoy_key {
            Some(k) => k,
            None => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|e| format!("no randomness for passkeys: {e}"))?;
                k
            }
        };
        let decoys = WebauthnFakeCredentialGenerator::new(&decoy_key)
            .map_err(|e| format!("passkey decoys: {e}"))?;
        Ok(Passkeys {
            webauthn,
            rp_id: domain,
            decoys,
        })
    }

    /// Sign-in options for a name without passkeys, shaped like webauthn-rs's own (tests/it/passkeys.rs
    /// compares them): a fresh challenge and made-up credential ids that no authenticator holds, the
    /// same ids for a name every time (webauthn-rs's fake credential generator).
    fn decoy_options(&self, name: &str) -> Result<serde_json::Value, String> {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut challenge = [0u8; 32];
        getrandom::fill(&mut challenge).map_err(|e| format!("no randomness: {e}"))?;
        // The generator gives some names no credential at all (it models sites where not every account
        // has a passkey); here a name that gets a challenge always has one, so draw again until it does,
        // deterministically (1 in 7 names needs a second draw).
        let mut ids = Vec::new();
        for draw in 0u8..32 {
            let mut input = name.as_bytes().to_vec();
            if draw > 0 {
                input.extend_from_slice(&[0, draw]);
            }
            ids = self
                .decoys
                .generate(&input)
                .map_err(|e| format!("decoy credentials: {e}"))?;
            if !ids.is_empty() {
                break;
            }
        }
        if ids.is_empty() {
            return Err("no decoy credential after 32 draws".into());
        }
        let allow: Vec<_> = ids
            .iter()
            .map(|id| json!({"type": "public-key", "id": b64(id)}))
            .collect();
        Ok(json!({
            "publicKey": {
                "challenge": b64(&challenge),
                "timeout": u64::try_from(webauthn_rs::DEFAULT_AUTHENTICATOR_TIMEOUT.as_millis()).unwrap_or(300_000),
                "rpId": self.rp_id,
                "allowCredentials": allow,
                "userVerification": "required",
            }
        }))
    }
}

/// Stores a started ceremony; returns its id for the browser.
pub(crate) async fn keep<C: Core>(core: &C, ceremony: &Ceremony) -> Result<String, CoreError> {
    let id = auth::random_token();
    let data = serde_json::to_string(ceremony).map_err(|e| {
        tracing::error!(error = %e, "cannot serialise a passkey ceremony");
        CoreError::Internal
    })?;
    let ttl = i64::try_from(CEREMONY_TTL.as_secs()).unwrap_or(300);
    let (kind, subject) = ceremony.pool();
    core.put_state(kind, &auth::key(&id), subject, &data, core.now() + ttl)
        .await?;
    Ok(id)
}

/// Takes a ceremony out of the first of `pools` that holds it (each is used once, on whichever node
/// gets the answer), if it has not lapsed and is of a kind that pool keeps.
pub(crate) async fn take<C: Core>(core: &C, id: &str, pools: &[StateKind]) -> Option<Ceremony> {
    for &kind in pools {
        // A store error fails closed, like a lapsed ceremony (the core has logged it).
        let Some(data) = core.take_state(kind, &auth::key(id)).await.ok()? else {
            continue;
        };
        return serde_json::from_str::<Ceremony>(&data)
            .map_err(|e| tracing::warn!(error = %e, "a stored passkey ceremony does not parse"))
            .ok()
            .filter(|c| c.pool().0 == kind);
    }
    None
}

/// The longest staff user name (the core allows 1-64 characters).
const MAX_NAME: usize = 64;

/// Passkeys one account may hold.
pub const MAX_PASSKEYS: usize = 10;

/// A stable WebAuthn user handle for a staff account's name (no personal data in it).
fn user_handle(name: &str) -> Uuid {
    handle("chaperone-staff", name)
}

/// The same for a vendor's name: another handle than a staff account of that name.
pub(crate) fn vendor_handle(name: &str) -> Uuid {
    handle("chaperone-vendor", name)
}

fn handle(kind: &str, name: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{kind}:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

pub(crate) fn parse_passkeys(json: Option<&str>) -> Result<Vec<Passkey>, CoreError> {
    match json {
        None | Some("") => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            tracing::error!(error = %e, "stored passkeys do not parse");
            CoreError::Internal
        }),
    }
}

/// The credential id (base64url) of one stored passkey record (a webauthn-rs `Passkey` as JSON): how
/// records are told apart; `None` when it is not one.
pub fn passkey_id(record: &serde_json::Value) -> Option<String> {
    use base64::Engine as _;
    let passkey: Passkey = serde_json::from_value(record.clone()).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(passkey.cred_id()))
}

pub(crate) fn to_json(passkeys: &[Passkey]) -> Result<String, CoreError> {
    serde_json::to_string(passkeys).map_err(|_| CoreError::Internal)
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

pub(crate) fn unavailable() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "passkeys are not available on this server (web.public_url needs a DNS name)",
    )
}

fn core_error(e: &CoreError) -> Response {
    match e {
        CoreError::NotFound => error(
            StatusCode::NOT_FOUND,
            "This enrollment link is unknown, used or expired. Ask an administrator for a new one.",
        ),
        CoreError::Internal => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        other => error(crate::status_of(other), &other.to_string()),
    }
}

/// The relying party for a request that starts a ceremony (each stores one), if passkeys are offered
/// and the address is within its rate: the one gate of every ceremony start.
pub(crate) fn starting<C: Core>(
    st: &WebState<C>,
    peer: std::net::SocketAddr,
) -> Result<&Passkeys, Response> {
    let Some(pk) = &st.passkeys else {
        return Err(unavailable());
    };
    if !st.limiter.allow(Source::of(peer.ip())) {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            SignInError::RateLimited.message(),
        ));
    }
    Ok(pk)
}

// ---- enrollment -------------------------------------------------------------------------------

pub(crate) async fn enroll_start<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Path(token): Path<String>,
) -> Response {
    let pk = match starting(&st, peer) {
        Ok(pk) => pk,
        Err(r) => return r,
    };
    let name = match st.core.enrollment_name(&token).await {
        Ok(n) => n,
        Err(e) => return core_error(&e),
    };
    start_registration(&st, pk, &name, None, |state| Ceremony::Register {
        token_sha256: auth::key(&token),
        state,
    })
    .await
}

/// Starts registering a passkey for `name` (not one of `exclude`): the options and the ceremony id, as
/// JSON.
async fn start_registration<C: Core>(
    st: &WebState<C>,
    pk: &Passkeys,
    name: &str,
    exclude: Option<Vec<webauthn_rs::prelude::CredentialID>>,
    ceremony: impl FnOnce(PasskeyRegistration) -> Ceremony,
) -> Response {
    match pk
        .webauthn
        .start_passkey_registration(user_handle(name), name, name, exclude)
    {
        Ok((options, state)) => match keep(&*st.core, &ceremony(state)).await {
            Ok(id) => Json(json!({"ceremony": id, "options": options})).into_response(),
            Err(e) => core_error(&e),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot start a passkey registration");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// The new passkey from the browser's answer to a registration, or the answer that refuses it.
pub(crate) fn finish_registration(
    pk: &Passkeys,
    credential: &RegisterPublicKeyCredential,
    state: &PasskeyRegistration,
) -> Result<Passkey, Response> {
    pk.webauthn
        .finish_passkey_registration(credential, state)
        .map_err(|e| {
            tracing::warn!(error = %e, "passkey registration refused");
            error(
                StatusCode::BAD_REQUEST,
                "The passkey could not be registered; try again.",
            )
        })
}

#[derive(Deserialize)]
pub(crate) struct EnrollFinish {
    ceremony: String,
    /// Empty for a directory account (the directory has its password; the core refuses an empty one
    /// for a local account).
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
    credential: RegisterPublicKeyCredential,
}

pub(crate) async fn enroll_finish<C: Core>(
    State(st): St<C>,
    Path(token): Path<String>,
    Json(body): Json<EnrollFinish>,
) -> Response {
    let Some(pk) = &st.passkeys else {
        return unavailable();
    };
    let directory = body.password.is_empty() && body.password2.is_empty();
    if !directory && body.password.chars().count() < MIN_PASSWORD {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("The password needs at least {MIN_PASSWORD} characters."),
        );
    }
    if body.password != body.password2 {
        return error(StatusCode::BAD_REQUEST, "The two passwords differ.");
    }
    let Some(Ceremony::Register {
        token_sha256: started_for,
        state,
    }) = take(&*st.core, &body.ceremony, &[StateKind::LinkCeremony]).await
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "The passkey step expired; try again.",
        );
    };
    if started_for != auth::key(&token) {
        return error(
            StatusCode::BAD_REQUEST,
            "The passkey step expired; try again.",
        );
    }
    let passkey = match finish_registration(pk, &body.credential, &state) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let hash = if directory {
        None
    } else {
        let Ok(hash) = auth::hash_password(body.password).await else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        Some(hash)
    };
    let json = match to_json(&[passkey]) {
        Ok(j) => j,
        Err(e) => return core_error(&e),
    };
    match st
        .core
        .finish_enrollment_passkey(&token, hash.as_deref(), &json)
        .await
    {
        Ok(name) => Json(json!({"enrolled": name, "next": "/login"})).into_response(),
        Err(e) => core_error(&e),
    }
}

// ---- sign-in ----------------------------------------------------------------------------------
//
// The start tells nothing: every name gets a challenge (a decoy one when it has no passkey or does
// not exist), and the password travels with the assertion to the finish, where both are checked
// together and every failure gets the same answer. So the passkey sign-in is no oracle for a password
// (a wrong one is counted against the account like at the TOTP form) nor for who has a passkey.

#[derive(Deserialize)]
pub(crate) struct SignInStart {
    name: String,
}

fn sign_in_error(e: &SignInError) -> Response {
    error(e.status(), e.message())
}

/// The enabled account `name`'s passkeys; none for an unknown or disabled name.
async fn passkeys_of<C: Core>(st: &WebState<C>, name: &str) -> Result<Vec<Passkey>, CoreError> {
    match st.core.staff_account(name).await? {
        Some(account) if account.enabled => {
            parse_passkeys(st.core.passkeys(name).await?.as_deref())
        }
        _ => Ok(Vec::new()),
    }
}

pub(crate) async fn login_start<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Json(body): Json<SignInStart>,
) -> Response {
    let pk = match starting(&st, peer) {
        Ok(pk) => pk,
        Err(r) => return r,
    };
    // No account name is longer (names are 1-64 characters), so refusing longer ones tells nothing; it
    // keeps a caller from storing megabytes in the shared database with each start.
    if body.name.is_empty() || body.name.len() > MAX_NAME {
        return error(StatusCode::BAD_REQUEST, "Enter your user name.");
    }
    let passkeys = match passkeys_of(&st, &body.name).await {
        Ok(p) => p,
        Err(e) => return core_error(&e),
    };
    let (options, ceremony) = if passkeys.is_empty() {
        match pk.decoy_options(&body.name) {
            Ok(options) => (options, Ceremony::Decoy { name: body.name }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a passkey sign-in");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        }
    } else {
        match pk.webauthn.start_passkey_authentication(&passkeys) {
            Ok((options, state)) => (
                serde_json::to_value(options).unwrap_or_default(),
                Ceremony::SignIn {
                    name: body.name,
                    state,
                },
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a passkey sign-in");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        }
    };
    match keep(&*st.core, &ceremony).await {
        Ok(id) => Json(json!({"ceremony": id, "options": options})).into_response(),
        Err(e) => core_error(&e),
    }
}

#[derive(Deserialize)]
pub(crate) struct SignInFinish {
    ceremony: String,
    password: String,
    credential: PublicKeyCredential,
}

pub(crate) async fn login_finish<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Json(body): Json<SignInFinish>,
) -> Response {
    let Some(pk) = &st.passkeys else {
        return unavailable();
    };
    // A real sign-in or a decoy: the finish looks in both pools, and answers alike.
    let pools = [StateKind::Ceremony, StateKind::DecoyCeremony];
    let (name, state) = match take(&*st.core, &body.ceremony, &pools).await {
        Some(Ceremony::SignIn { name, state }) => (name, Some(state)),
        Some(Ceremony::Decoy { name }) => (name, None),
        _ => return error(StatusCode::BAD_REQUEST, "The sign-in expired; start again."),
    };
    // The assertion is checked here (webauthn-rs), then judged by the core together with the password,
    // like a TOTP code: one refusal whatever failed, counted against the account from this address.
    let (passkey, result) = match &state {
        None => (Err("no passkey registered"), None),
        Some(state) => match pk
            .webauthn
            .finish_passkey_authentication(&body.credential, state)
        {
            Ok(r) => (Ok(()), Some(r)),
            Err(e) => {
                tracing::warn!(user = %name, error = %e, "passkey sign-in refused");
                (Err("passkey refused"), None)
            }
        },
    };
    // The ceremony offered the passkeys the account held when it started, minutes ago: one removed
    // since (a lost key, removed on the account page) signs nobody in.
    let (passkey, result) = match result {
        Some(r) => match passkeys_of(&st, &name).await {
            Ok(now) if now.iter().any(|p| p.cred_id() == r.cred_id()) => (passkey, Some(r)),
            Ok(_) => {
                tracing::warn!(user = %name, "passkey sign-in with a passkey removed since it started");
                (Err("passkey removed since the sign-in started"), None)
            }
            Err(e) => return core_error(&e),
        },
        None => (passkey, None),
    };
    let account = match authenticate(
        &st,
        peer,
        &name,
        &body.password,
        SecondFactor::Passkey(passkey),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return sign_in_error(&e),
    };
    let Some(result) = result else {
        // The core accepts a passkey sign-in only with a passkey that passed.
        return sign_in_error(&SignInError::Internal);
    };
    // Keep the signature counter and backup state current (a cloned authenticator shows up as a
    // counter that goes backwards, which webauthn-rs refuses); only over the passkeys as read here,
    // so a removal made meanwhile stands (the update is then skipped: the next sign-in makes it).
    if let Ok(before) = st.core.passkeys(&name).await
        && let Ok(mut passkeys) = parse_passkeys(before.as_deref())
    {
        let changed = passkeys
            .iter_mut()
            .any(|p| p.update_credential(&result) == Some(true));
        if changed
            && let Ok(json) = to_json(&passkeys)
            && let Err(e) = st
                .core
                .set_passkeys(&name, before.as_deref(), &json, PasskeyChange::Updated)
                .await
        {
            tracing::info!(user = %name, error = %e, "passkey counter not updated");
        }
    }
    match start_session(&st, account, Method::Passkey).await {
        Ok((_, token, _)) => (
            [(header::SET_COOKIE, set_cookie(&token))],
            Json(json!({"next": "/requests"})),
        )
            .into_response(),
        Err(e) => sign_in_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relying_party_needs_a_dns_name() {
        assert!(Passkeys::new("https://bastion.hospital.example:8443", None).is_ok());
        assert!(Passkeys::new("https://localhost:8443", None).is_ok());
        let e = Passkeys::new("https://127.0.0.1:8443", None).unwrap_err();
        assert!(e.contains("DNS name"), "{e}");
    }

    #[test]
    fn every_name_gets_decoy_credentials_the_same_each_time() {
        let pk = Passkeys::new("https://localhost:8443", Some([7; 32])).unwrap();
        for i in 0..200 {
            let name = format!("user{i}");
            let a = pk.decoy_options(&name).unwrap();
            let b = pk.decoy_options(&name).unwrap();
            let creds = &a["publicKey"]["allowCredentials"];
            assert!(!creds.as_array().unwrap().is_empty(), "{name}: {a}");
            assert_eq!(creds, &b["publicKey"]["allowCredentials"]);
            assert_ne!(a["publicKey"]["challenge"], b["publicKey"]["challenge"]);
        }
        // Another key (another installation): other ids for the same name.
        let other = Passkeys::new("https://localhost:8443", Some([8; 32])).unwrap();
        assert_ne!(
            pk.decoy_options("bob").unwrap()["publicKey"]["allowCredentials"],
            other.decoy_options("bob").unwrap()["publicKey"]["allowCredentials"]
        );
    }

    #[test]
    fn user_handles_are_stable_and_distinct() {
        assert_eq!(user_handle("bob"), user_handle("bob"));
        assert_ne!(user_handle("bob"), user_handle("alice"));
        assert_ne!(user_handle("bob"), vendor_handle("bob"));
    }
}

// ---- adding a passkey to a signed-in account --------------------------------------------------

/// The signed-in session for a JSON state change: the cookie and the `X-CSRF-Token` header.
async fn json_change<C: Core>(
    st: &WebState<C>,
    headers: &HeaderMap,
) -> Result<crate::auth::Session, Response> {
    let session = match st.session(headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(error(StatusCode::UNAUTHORIZED, "Sign in first.")),
        Err(_) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is not answering; try again shortly.",
            ));
        }
    };
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !crate::auth::csrf_ok(&session, token) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "CSRF token missing or wrong; reload the page.",
        ));
    }
    Ok(session)
}

/// `name`'s passkeys: as stored (for [`Accounts::set_passkeys`]'s `before`) and parsed.
async fn stored<C: Core>(
    st: &WebState<C>,
    name: &str,
) -> Result<(Option<String>, Vec<Passkey>), Response> {
    match st.core.passkeys(name).await {
        Ok(json) => match parse_passkeys(json.as_deref()) {
            Ok(all) => Ok((json, all)),
            Err(e) => Err(core_error(&e)),
        },
        Err(e) => Err(core_error(&e)),
    }
}

pub(crate) async fn add_start<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    headers: HeaderMap,
) -> Response {
    let Some(pk) = &st.passkeys else {
        return unavailable();
    };
    let session = match json_change(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Each start stores a ceremony: counted like sign-in attempts, so a signed-in session cannot
    // crowd out other people's sign-ins.
    if !st.limiter.allow(Source::of(peer.ip())) {
        return sign_in_error(&SignInError::RateLimited);
    }
    let name = session.staff.name;
    let existing = match stored(&st, &name).await {
        Ok((_, p)) => p,
        Err(r) => return r,
    };
    if existing.len() >= MAX_PASSKEYS {
        return error(
            StatusCode::CONFLICT,
            &format!("This account already has {MAX_PASSKEYS} passkeys."),
        );
    }
    let exclude = existing.iter().map(|p| p.cred_id().clone()).collect();
    start_registration(&st, pk, &name.clone(), Some(exclude), |state| {
        Ceremony::Add { name, state }
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct AddFinish {
    ceremony: String,
    /// The account's password again: a borrowed session (an unlocked screen, a stolen cookie) must not
    /// be enough to plant a passkey that outlives it.
    password: String,
    credential: RegisterPublicKeyCredential,
}

pub(crate) async fn add_finish<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    headers: HeaderMap,
    Json(body): Json<AddFinish>,
) -> Response {
    let Some(pk) = &st.passkeys else {
        return unavailable();
    };
    let session = match json_change(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = authenticate(
        &st,
        peer,
        &session.staff.name,
        &body.password,
        SecondFactor::Reauthentication,
    )
    .await
    {
        return match e {
            SignInError::Refused => error(
                StatusCode::UNAUTHORIZED,
                "Wrong password: the passkey was not added.",
            ),
            other => sign_in_error(&other),
        };
    }
    let Some(Ceremony::Add { name, state }) =
        take(&*st.core, &body.ceremony, &[StateKind::AccountCeremony]).await
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "The passkey step expired; try again.",
        );
    };
    if name != session.staff.name {
        return error(
            StatusCode::BAD_REQUEST,
            "The passkey step expired; try again.",
        );
    }
    let passkey = match finish_registration(pk, &body.credential, &state) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (before, mut all) = match stored(&st, &name).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if all.len() >= MAX_PASSKEYS {
        return error(
            StatusCode::CONFLICT,
            &format!("This account already has {MAX_PASSKEYS} passkeys."),
        );
    }
    all.push(passkey);
    let json = match to_json(&all) {
        Ok(j) => j,
        Err(e) => return core_error(&e),
    };
    match st
        .core
        .set_passkeys(&name, before.as_deref(), &json, PasskeyChange::Added)
        .await
    {
        Ok(()) => Json(json!({"passkeys": all.len(), "next": "/account"})).into_response(),
        Err(e) => core_error(&e),
    }
}

/// `name`'s passkeys as the account page lists them: the start of each credential id, in order.
pub(crate) async fn list<C: Core>(st: &WebState<C>, name: &str) -> Result<Vec<String>, CoreError> {
    use base64::Engine as _;
    let json = st.core.passkeys(name).await?;
    Ok(parse_passkeys(json.as_deref())?
        .iter()
        .map(|p| {
            let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p.cred_id());
            id.chars().take(12).collect()
        })
        .collect())
}

/// Removes the signed-in user's passkey number `n` (1-based, as listed), after the password again; never
/// the last way to sign in (a last passkey stays unless the account also has TOTP).
pub(crate) async fn remove<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Path(n): Path<usize>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use crate::pages::error_page;
    let pairs = crate::form_pairs(&body);
    let session = match crate::pages::change(&st, &headers, &pairs).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = session.staff.name;
    let password = crate::field(&pairs, "password").unwrap_or_default();
    let account =
        match authenticate(&st, peer, &name, password, SecondFactor::Reauthentication).await {
            Ok(a) => a,
            Err(SignInError::Refused) => {
                return error_page(
                    StatusCode::UNAUTHORIZED,
                    "Wrong password: no passkey was removed.",
                );
            }
            Err(e) => return error_page(e.status(), e.message()),
        };
    let (before, mut all) = match stored(&st, &name).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if n == 0 || n > all.len() {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such passkey (the list may have changed): reload the page.",
        );
    }
    if all.len() == 1 && !account.has_totp {
        return error_page(
            StatusCode::CONFLICT,
            "This passkey is your only second factor: add another one first (or ask an administrator).",
        );
    }
    all.remove(n - 1);
    let json = match to_json(&all) {
        Ok(j) => j,
        Err(e) => return core_error(&e),
    };
    match st
        .core
        .set_passkeys(&name, before.as_deref(), &json, PasskeyChange::Removed)
        .await
    {
        Ok(()) => {
            st.redirect_with_notice(&headers, format!("Passkey {n} removed."), "/account")
                .await
        }
        Err(e) => core_error(&e),
    }
}
