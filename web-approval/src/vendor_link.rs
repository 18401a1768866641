//! A vendor's passkey in the browser, through a one-time link that `ssh` prints while it waits: the
//! second factor of a login (the vendor pressed Enter at the code prompt), or a new passkey
//! (`ssh VENDOR@bastion passkey add`, from a session that passed both factors).
//!
//! The SSH side opens a link: it stores a [`VendorLink`] under the SHA-256 of a random token
//! ([`StateKind::VendorLink`], in the database every node shares, so any node may serve the page) and
//! prints [`link_url`]. The page here runs one WebAuthn ceremony for that link, against the vendor's
//! registered passkeys (or registering a new one), and writes its [`LinkOutcome`] into the link. The SSH
//! side, polling, takes the link and judges the outcome (`identity::signin`: lockout and audit), so a
//! passkey login is counted and recorded exactly like a TOTP code. A link ends with its first outcome:
//! a refused passkey is one counted failure, and the vendor starts again from ssh.
//!
//! The token is the only authority here: it reaches only the SSH session that passed the key (and, for
//! `passkey add`, the second factor too). The page shows where the waiting login comes from, so a
//! vendor sent someone else's link (a stolen key's login asking them to confirm) can tell.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use crate::auth;
use crate::core::StateKind;
use crate::html::{esc, page, span};
use crate::passkey::{
    Ceremony, MAX_PASSKEYS, error, finish_registration, keep, parse_passkeys, take, unavailable,
    vendor_handle,
};
use crate::{Core, CoreError, Peer, Source, WebState};

type St<C> = State<Arc<WebState<C>>>;

/// The path a link's token follows (`/v/TOKEN`).
pub const LINK_PATH: &str = "/v/";

/// The address ssh prints for `token`.
pub fn link_url(public_url: &str, token: &str) -> String {
    format!("{}{LINK_PATH}{token}", public_url.trim_end_matches('/'))
}

/// The widest a link may be and still fit whole on one line of an 80-column terminal behind PuTTY's
/// 2-column mark on a server's prompt lines (PuTTY breaks longer lines, and a broken link cannot be
/// copied whole).
pub const LINK_COLUMNS: usize = 78;

/// How wide a link under `public_url` is.
pub fn link_width(public_url: &str) -> usize {
    link_url(public_url, &encode_token(&[0; TOKEN_BYTES]))
        .chars()
        .count()
}

/// A link's random bytes.
const TOKEN_BYTES: usize = 16;

fn encode_token(bytes: &[u8]) -> String {
    base32::encode(base32::Alphabet::Rfc4648Lower { padding: false }, bytes)
}

/// A new link's token (for the address) and the key it is stored under (its SHA-256, so the database
/// never holds a usable link). 128 random bits as 26 lower-case base32 letters and digits: unguessable
/// for the minutes a link lives and is used once, one word to a terminal's double-click, and short
/// enough for the link to fit on one line of an 80-column terminal, where PuTTY breaks a prompt's
/// longer lines (and the link with them).
pub fn new_token() -> (String, String) {
    let token = encode_token(&auth::random_bytes::<TOKEN_BYTES>());
    let key = auth::key(&token);
    (token, key)
}

/// What a link is for and, once its ceremony ended, how it went. Stored as JSON by the SSH side (which
/// opens and takes it) and by this page (which writes the outcome): one type, one format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorLink {
    pub vendor: String,
    pub purpose: LinkPurpose,
    /// The SHA-256 of the last ceremony started for it: only that one may end it (a new start, after
    /// a cancelled browser prompt, replaces it).
    #[serde(default)]
    pub ceremony: Option<String>,
    /// Set once, by the ceremony's finish.
    #[serde(default)]
    pub outcome: Option<LinkOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum LinkPurpose {
    /// The second factor of a login from `peer` with the key `key`, waiting since `since` (unix time).
    SignIn {
        peer: String,
        key: String,
        since: i64,
    },
    /// Registering another passkey for the signed-in vendor.
    Register,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LinkOutcome {
    /// The vendor's passkey answered (a sign-in).
    Passed,
    /// A new passkey verified (a registration): the record (a webauthn-rs `Passkey`) for the SSH side
    /// to store when it takes the link. Stored by whoever takes the link, it is stored once, and only
    /// while the vendor still waits for it.
    Registered { passkey: serde_json::Value },
    /// The browser's answer was refused; `why` is for the audit log.
    Refused { why: Refusal },
}

/// Why a link's ceremony was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// webauthn-rs refused the assertion (another authenticator, a tampered answer).
    Passkey,
    /// The passkey that answered was removed meanwhile (after the ceremony started).
    Removed,
    /// The vendor was disabled meanwhile.
    Disabled,
    /// The registration did not verify.
    NotRegistered,
}

impl Refusal {
    /// For the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Passkey => "passkey refused",
            Refusal::Removed => "passkey removed meanwhile",
            Refusal::Disabled => "vendor disabled meanwhile",
            Refusal::NotRegistered => "passkey not registered",
        }
    }
}

impl VendorLink {
    pub fn new(vendor: &str, purpose: LinkPurpose) -> VendorLink {
        VendorLink {
            vendor: vendor.to_owned(),
            purpose,
            ceremony: None,
            outcome: None,
        }
    }
}

/// The link under `token` if it is still open (not lapsed, no outcome yet), with its stored text (what
/// a change must find still there, see [`swap_link`]).
async fn open_link<C: Core>(core: &C, token: &str) -> Result<(VendorLink, String), Response> {
    let gone = || {
        error(
            StatusCode::NOT_FOUND,
            "This link is unknown, used or expired: start again from ssh.",
        )
    };
    let data = match core
        .state(StateKind::VendorLink, &auth::key(token), None)
        .await
    {
        Ok(Some(d)) => d,
        Ok(None) => return Err(gone()),
        Err(_) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "internal error")),
    };
    match serde_json::from_str::<VendorLink>(&data) {
        Ok(link) if link.outcome.is_none() => Ok((link, data)),
        Ok(_) => Err(gone()),
        Err(e) => {
            tracing::warn!(error = %e, "a stored vendor link does not parse");
            Err(gone())
        }
    }
}

/// Stores `link` in place of `read`, only if nobody changed it since: a start racing a finish cannot
/// reopen an ended link, and a link gets one outcome.
async fn swap_link<C: Core>(
    core: &C,
    token: &str,
    read: &str,
    link: &VendorLink,
) -> Result<(), Response> {
    let data = serde_json::to_string(link)
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    match core
        .swap_state(StateKind::VendorLink, &auth::key(token), read, &data)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(error(
            StatusCode::CONFLICT,
            "This link changed meanwhile (used in another window, or ssh stopped waiting): start again from ssh.",
        )),
        Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "internal error")),
    }
}

/// The page the link opens: what it is for, and the button.
pub(crate) async fn link_page<C: Core>(State(st): St<C>, Path(token): Path<String>) -> Response {
    let main = match open_link(&*st.core, &token).await {
        Err(_) => {
            return (
                StatusCode::NOT_FOUND,
                Html(page(
                    "Link expired",
                    "",
                    None,
                    "<h1>This link is unknown, used or expired</h1>\
                     <p>Each link works once and only while ssh waits. Start again from ssh.</p>",
                )),
            )
                .into_response();
        }
        Ok(_) if st.passkeys.is_none() => {
            return (
                StatusCode::NOT_FOUND,
                Html(page(
                    "Passkeys unavailable",
                    "",
                    None,
                    "<h1>Passkeys are not available on this server</h1>\
                     <p>Use the code from your authenticator app in ssh instead.</p>",
                )),
            )
                .into_response();
        }
        Ok((link, _)) => match &link.purpose {
            LinkPurpose::SignIn { peer, key, since } => format!(
                "<h1>Confirm your login</h1>\
                 <p>A login as vendor <strong>{vendor}</strong> is waiting for your passkey: from \
                 <strong>{peer}</strong>, with the SSH key <code class=\"wrap\">{key}</code>, started {ago} ago.</p>\
                 <p class=\"note\">If this is not your own ssh login, close this page and tell the \
                 hospital's IT security: someone has your SSH key.</p>\
                 {button}",
                vendor = esc(&link.vendor),
                peer = esc(peer),
                key = esc(key),
                ago = span((st.core.now() - since).max(0)),
                button = button(&token, "Use my passkey"),
            ),
            LinkPurpose::Register => format!(
                "<h1>Add a passkey</h1>\
                 <p>For vendor <strong>{vendor}</strong>, asked from your ssh session. From then on, \
                 press Enter at ssh's code prompt to sign in with it.</p>{button}",
                vendor = esc(&link.vendor),
                button = button(&token, "Add a passkey"),
            ),
        },
    };
    Html(page("Passkey", "", None, &main)).into_response()
}

fn button(token: &str, label: &str) -> String {
    format!(
        "<div class=\"passkey\"><button type=\"button\" data-passkey=\"vendor\" data-token=\"{}\">{label}</button>\
         <p class=\"status\" role=\"status\" aria-live=\"polite\" id=\"passkey-status\"></p></div>",
        esc(token)
    )
}

/// The vendor's stored passkeys; a vendor unknown or disabled meanwhile ends here.
async fn passkeys_of<C: Core>(
    core: &C,
    vendor: &str,
) -> Result<Vec<webauthn_rs::prelude::Passkey>, Response> {
    match core.vendor_passkeys(vendor).await {
        Ok(json) => parse_passkeys(json.as_deref())
            .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")),
        Err(CoreError::NotFound) => Err(error(
            StatusCode::FORBIDDEN,
            "This vendor account is disabled or gone.",
        )),
        Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "internal error")),
    }
}

/// Starts the link's ceremony: `{"ceremony", "options", "mode": "signin" | "register"}`.
pub(crate) async fn start<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Path(token): Path<String>,
) -> Response {
    let Some(pk) = &st.passkeys else {
        return unavailable();
    };
    // The link's token is the credential (128 random bits, one ceremony per link, three links per
    // vendor): a start through a link that exists is not held to the sign-in rate limit, or a flood
    // of made-up tokens from many addresses would use up the node's budget and refuse vendors with a
    // real link, each refusal counted toward their lockout (nor to a per-address one: a vendor behind
    // a NAT shares their address). A token that opens nothing counts against its address in a budget
    // of its own (`link_misses`: staff sign-ins keep theirs).
    let (mut link, read) = match open_link(&*st.core, &token).await {
        Ok(l) => l,
        Err(r) => {
            if !st.link_misses.allow(Source::of(peer.ip())) {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    crate::signin::SignInError::RateLimited.message(),
                );
            }
            return r;
        }
    };
    let passkeys = match passkeys_of(&*st.core, &link.vendor).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let token_sha256 = auth::key(&token);
    let (options, ceremony, mode) = match link.purpose {
        LinkPurpose::SignIn { .. } => {
            if passkeys.is_empty() {
                return error(
                    StatusCode::CONFLICT,
                    "No passkey is registered for this vendor: use the code from your authenticator app.",
                );
            }
            match pk.webauthn.start_passkey_authentication(&passkeys) {
                Ok((options, state)) => (
                    serde_json::to_value(options).unwrap_or_default(),
                    Ceremony::VendorSignIn {
                        token_sha256,
                        state,
                    },
                    "signin",
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a vendor passkey sign-in");
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            }
        }
        LinkPurpose::Register => {
            if passkeys.len() >= MAX_PASSKEYS {
                return error(
                    StatusCode::CONFLICT,
                    &format!(
                        "This vendor already has {MAX_PASSKEYS} passkeys: remove one first (ssh … passkey remove ID)."
                    ),
                );
            }
            let exclude = passkeys.iter().map(|p| p.cred_id().clone()).collect();
            let name = &link.vendor;
            match pk.webauthn.start_passkey_registration(
                vendor_handle(name),
                name,
                &format!("{name} (vendor)"),
                Some(exclude),
            ) {
                Ok((options, state)) => (
                    serde_json::to_value(options).unwrap_or_default(),
                    Ceremony::VendorRegister {
                        token_sha256,
                        state,
                    },
                    "register",
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a vendor passkey registration");
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            }
        }
    };
    let id = match keep(&*st.core, &ceremony).await {
        Ok(id) => id,
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "internal error"),
    };
    link.ceremony = Some(auth::key(&id));
    if let Err(r) = swap_link(&*st.core, &token, &read, &link).await {
        return r;
    }
    Json(json!({"ceremony": id, "options": options, "mode": mode})).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Finish {
    ceremony: String,
    /// A registration's or an assertion's answer, as the ceremony's kind says.
    credential: serde_json::Value,
}

/// Ends the link with the browser's answer: the outcome goes into the link, where ssh reads it.
pub(crate) async fn finish<C: Core>(
    State(st): St<C>,
    Path(token): Path<String>,
    Json(body): Json<Finish>,
) -> Response {
    let Some(pk) = &st.passkeys else {
        return unavailable();
    };
    let expired = || {
        error(
            StatusCode::BAD_REQUEST,
            "The passkey step expired: start again from ssh.",
        )
    };
    let Some(ceremony) = take(&*st.core, &body.ceremony, &[StateKind::LinkCeremony]).await else {
        return expired();
    };
    let (mut link, read) = match open_link(&*st.core, &token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if link.ceremony.as_deref() != Some(auth::key(&body.ceremony).as_str()) {
        return expired();
    }
    let token_sha256 = auth::key(&token);
    let outcome = match ceremony {
        Ceremony::VendorSignIn {
            token_sha256: started_for,
            state,
        } if started_for == token_sha256 => {
            let verdict = serde_json::from_value::<PublicKeyCredential>(body.credential)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    pk.webauthn
                        .finish_passkey_authentication(&c, &state)
                        .map_err(|e| e.to_string())
                });
            match verdict {
                // The vendor again, as they are now: disabled meanwhile, or this passkey removed
                // meanwhile (`vendor passkey clear` after a lost device), and it no longer counts.
                Ok(result) => match st.core.vendor_passkeys(&link.vendor).await {
                    Ok(json) => match parse_passkeys(json.as_deref()) {
                        Ok(now) if now.iter().any(|p| p.cred_id() == result.cred_id()) => {
                            keep_counters(&*st.core, &link.vendor, &now, &result).await;
                            LinkOutcome::Passed
                        }
                        Ok(_) => LinkOutcome::Refused {
                            why: Refusal::Removed,
                        },
                        Err(_) => {
                            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                        }
                    },
                    Err(CoreError::NotFound) => LinkOutcome::Refused {
                        why: Refusal::Disabled,
                    },
                    // No verdict on a database error: the link stays open, and nothing is counted.
                    Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "internal error"),
                },
                Err(e) => {
                    tracing::warn!(vendor = %link.vendor, error = %e, "vendor passkey refused");
                    LinkOutcome::Refused {
                        why: Refusal::Passkey,
                    }
                }
            }
        }
        Ceremony::VendorRegister {
            token_sha256: started_for,
            state,
        } if started_for == token_sha256 => {
            let credential =
                match serde_json::from_value::<RegisterPublicKeyCredential>(body.credential) {
                    Ok(c) => c,
                    Err(_) => return error(StatusCode::BAD_REQUEST, "That is not a passkey."),
                };
            match finish_registration(pk, &credential, &state)
                .ok()
                .and_then(|p| serde_json::to_value(p).ok())
            {
                Some(passkey) => LinkOutcome::Registered { passkey },
                None => LinkOutcome::Refused {
                    why: Refusal::NotRegistered,
                },
            }
        }
        _ => return expired(),
    };
    let passed = !matches!(outcome, LinkOutcome::Refused { .. });
    link.outcome = Some(outcome);
    if let Err(r) = swap_link(&*st.core, &token, &read, &link).await {
        return r;
    }
    if passed {
        Json(json!({"message": "Done: go back to your terminal, which says how it went."}))
            .into_response()
    } else {
        error(
            StatusCode::BAD_REQUEST,
            "The passkey was not accepted: start again from ssh.",
        )
    }
}

/// Keeps the signature counter and backup state current after a sign-in (a cloned authenticator
/// shows up as a counter that goes backwards, which webauthn-rs refuses).
async fn keep_counters<C: Core>(
    core: &C,
    vendor: &str,
    passkeys: &[webauthn_rs::prelude::Passkey],
    result: &webauthn_rs::prelude::AuthenticationResult,
) {
    for passkey in passkeys {
        let mut passkey = passkey.clone();
        if passkey.update_credential(result) == Some(true)
            && let Ok(json) = serde_json::to_string(&passkey)
        {
            let _ = core.update_vendor_passkey(vendor, &json).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_round_trips_and_older_fields_default() {
        let link = VendorLink::new(
            "alice",
            LinkPurpose::SignIn {
                peer: "192.0.2.7:50000".into(),
                key: "SHA256:abc".into(),
                since: 5,
            },
        );
        let text = serde_json::to_string(&link).unwrap();
        assert_eq!(serde_json::from_str::<VendorLink>(&text).unwrap(), link);
        let bare: VendorLink =
            serde_json::from_str(r#"{"vendor":"bob","purpose":{"for":"register"}}"#).unwrap();
        assert_eq!(bare.outcome, None);
        assert_eq!(
            link_url("https://bastion.example:8443/", "T"),
            "https://bastion.example:8443/v/T"
        );
    }

    #[test]
    fn a_link_under_a_usual_name_fits_an_80_column_terminal() {
        let (token, key) = new_token();
        assert_eq!(token.len(), 26);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
            "{token}"
        );
        assert_eq!(key, auth::key(&token));
        let url = "https://bastion.radiology.hospital.example:8443";
        assert_eq!(
            link_width(url),
            link_url(url, &token).len(),
            "the width is the real link's"
        );
        assert!(link_width(url) <= LINK_COLUMNS, "{}", link_width(url));
        assert!(link_width(&format!("{url}/chaperone/access")) > LINK_COLUMNS);
    }
}
