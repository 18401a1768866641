//! Sign-in (name, password and a TOTP code), sign-out, and enrollment from the one-time link that
//! `chaperone user add` prints (choose a password, scan the authenticator secret's QR code, confirm
//! with a first code).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::auth::{self, clear_cookie, csrf_ok, set_cookie};
use crate::core::{Method, SecondFactor, SignInAttempt, Source, Staff, StaffAccount, Verdict};
use crate::html::{esc, page};
use crate::pages::error_page;
use crate::{Core, CoreError, Peer, WebState, field, form_pairs};

type St<C> = State<Arc<WebState<C>>>;

/// The shortest password accepted at enrollment.
pub const MIN_PASSWORD: usize = 12;

/// Why a sign-in failed. Everything about the account (no such name, disabled, wrong password, wrong
/// or reused code, refused passkey, locked) is one [`SignInError::Refused`]: same status, same words,
/// and no sooner than [`REFUSAL_TIME`]; the reason goes to the audit log.
#[derive(Debug)]
pub(crate) enum SignInError {
    Refused,
    /// Too many attempts from this address (any names): says nothing about an account.
    RateLimited,
    /// The directory accepted the password of an account without a second factor: it enrols one
    /// through `/enroll/TOKEN` first.
    Enroll(String),
    /// The account is not a local one and the directory cannot be reached.
    DirectoryUnreachable,
    Internal,
}

impl SignInError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            SignInError::Refused => StatusCode::UNAUTHORIZED,
            SignInError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            SignInError::Enroll(_) => StatusCode::FORBIDDEN,
            SignInError::DirectoryUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            SignInError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    pub(crate) fn message(&self) -> &'static str {
        match self {
            SignInError::Refused => "Wrong name, password or code.",
            SignInError::RateLimited => {
                "Too many sign-in attempts from this address, or on this server; wait a few minutes."
            }
            SignInError::Enroll(_) => {
                "Set up your second factor first: sign in on the sign-in page, which takes you there."
            }
            SignInError::DirectoryUnreachable => {
                "The directory is unreachable, so directory accounts cannot sign in right now; try again in a minute (local accounts still can)."
            }
            SignInError::Internal => "Sign-in is not possible right now; try again in a minute.",
        }
    }
}

/// A refused sign-in is answered this long after it started, whatever was wrong: an unknown name (no
/// database write), a locked pair (no second factor checked) and a wrong code (a TOTP check and a
/// write) then take the same time, and guessing is slowed. A successful sign-in is not delayed.
pub(crate) const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Every staff sign-in, and every password asked again before a change, goes through here: the
/// per-address rate limit, the password (argon2id, against a dummy hash for an unknown name), then the
/// core's judgement ([`Core::judge_sign_in`]: lockout per account and source, the second factor,
/// counting and audit). Returns the account when the core accepts.
pub(crate) async fn authenticate<C: Core>(
    st: &WebState<C>,
    peer: SocketAddr,
    name: &str,
    password: &str,
    second: SecondFactor<'_>,
) -> Result<StaffAccount, SignInError> {
    let started = Instant::now();
    let source = Source::of(peer.ip());
    if !st.limiter.allow(source) {
        return Err(SignInError::RateLimited);
    }
    let result = judge(st, source, name, password, second).await;
    if let Err(SignInError::Refused) = result {
        tokio::time::sleep_until((started + REFUSAL_TIME).into()).await;
    }
    result
}

async fn judge<C: Core>(
    st: &WebState<C>,
    source: Source,
    name: &str,
    password: &str,
    second: SecondFactor<'_>,
) -> Result<StaffAccount, SignInError> {
    let account = st
        .core
        .staff_account(name)
        .await
        .map_err(|_| SignInError::Internal)?;
    // A local account's password is checked here; any other name's by the core, which may find it in
    // the directory. The argon2id check runs either way (against a dummy hash), so the time taken does
    // not tell local names from others.
    let local = account.as_ref().is_some_and(|a| !a.directory);
    let hash = account
        .filter(|a| a.enabled && !a.directory)
        .and_then(|a| a.password_hash);
    let password_ok = auth::verify_password(password.to_owned(), hash).await;
    let attempt = SignInAttempt {
        name,
        source,
        password_ok,
        directory_password: if local { "" } else { password },
        second,
    };
    match st.core.judge_sign_in(&attempt).await {
        Ok(Verdict::Accepted(account)) => Ok(account),
        Ok(Verdict::Refused) => Err(SignInError::Refused),
        Ok(Verdict::Enroll { token }) => Err(SignInError::Enroll(token)),
        Ok(Verdict::DirectoryUnreachable) => Err(SignInError::DirectoryUnreachable),
        Err(_) => Err(SignInError::Internal),
    }
}

/// Starts a session for an accepted sign-in (cookie value, CSRF token).
pub(crate) async fn start_session<C: Core>(
    st: &WebState<C>,
    account: StaffAccount,
    method: Method,
) -> Result<(Staff, String, String), SignInError> {
    let staff = Staff {
        name: account.name,
        role: account.role,
        method,
    };
    let (token, csrf) = st
        .start_web_session(staff.clone())
        .await
        .map_err(|_| SignInError::Internal)?;
    Ok((staff, token, csrf))
}

/// Checks name, password and TOTP code; on success starts a session (cookie value, CSRF token).
pub(crate) async fn sign_in<C: Core>(
    st: &WebState<C>,
    peer: SocketAddr,
    name: &str,
    password: &str,
    code: &str,
) -> Result<(Staff, String, String), SignInError> {
    let account = authenticate(st, peer, name, password, SecondFactor::Totp(code.trim())).await?;
    start_session(st, account, Method::Totp).await
}

/// The passkey alternative under a form: a button the script wires up, and where it reports.
fn passkey_button(action: &str, label: &str) -> String {
    format!(
        "<div class=\"passkey\"><p>Or, with a passkey (a security key, phone or this computer):</p>\
         <button type=\"button\" class=\"secondary\" data-passkey=\"{action}\">{label}</button>\
         <p class=\"status\" role=\"status\" aria-live=\"polite\" id=\"passkey-status\"></p></div>"
    )
}

fn login_form(message: Option<&str>, passkeys: bool) -> String {
    format!(
        "<h1>Sign in</h1>{}<form method=\"post\" action=\"/login\" class=\"signin\" id=\"signin\">\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <label for=\"code\">Code from your authenticator app</label><input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\">\
         <p class=\"note\">Signing in with a directory account for the first time? Leave the code empty: you set up your authenticator next.</p>\
         <button type=\"submit\">Sign in</button>{}</form>",
        message
            .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)))
            .unwrap_or_default(),
        if passkeys {
            passkey_button("signin", "Sign in with a passkey")
        } else {
            String::new()
        }
    )
}

pub async fn login_page<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) = st.session(&headers).await {
        return Redirect::to("/requests").into_response();
    }
    Html(page(
        "Sign in",
        "",
        None,
        &login_form(None, st.passkeys.is_some()),
    ))
    .into_response()
}

pub async fn login<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Login CSRF: another site's form must not sign a staff member's browser into the attacker's account
    // (there is no session yet to hold a token). Browsers say where a form post comes from.
    if cross_site(&headers) {
        return (
            StatusCode::FORBIDDEN,
            Html(page(
                "Sign in",
                "",
                None,
                &login_form(
                    Some("Sign in from this site's own page."),
                    st.passkeys.is_some(),
                ),
            )),
        )
            .into_response();
    }
    let pairs = form_pairs(&body);
    let get = |k| field(&pairs, k).unwrap_or_default();
    match sign_in(&st, peer, get("name"), get("password"), get("code")).await {
        Ok((_, token, _)) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, set_cookie(&token)),
                (header::LOCATION, "/requests".to_owned()),
            ],
        )
            .into_response(),
        // A directory account with the right password and no second factor yet: to its enrollment.
        Err(SignInError::Enroll(token)) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/enroll/{token}"))],
        )
            .into_response(),
        Err(e) => (
            e.status(),
            Html(page(
                "Sign in",
                "",
                None,
                &login_form(Some(e.message()), st.passkeys.is_some()),
            )),
        )
            .into_response(),
    }
}

/// A request a browser made for another site's page. `Sec-Fetch-Site: cross-site` or `same-site` (a
/// sibling host is not this one) says so; `same-origin`/`none` says not. A browser that does not send
/// it (Safari before 16.4) still sends `Origin` with a form post: one that is not this host (the
/// `Host` the browser addressed; the server speaks HTTP/1.1 only), or `null` (a sandboxed or
/// privacy-hidden origin), is another site's. Neither header: not a browser's cross-site post.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"cross-site" || site.as_bytes() == b"same-site";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
    });
    match (authority, host) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host),
        _ => true,
    }
}

pub async fn logout<C: Core>(State(st): St<C>, headers: HeaderMap, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    match st.session(&headers).await {
        Ok(Some(s)) => {
            if !csrf_ok(&s, field(&pairs, "csrf")) {
                return error_page(StatusCode::FORBIDDEN, "CSRF token missing or wrong.");
            }
            // Say so when the server did not end it: the cookie would still work for whoever has it.
            if st.sign_out(&headers).await.is_err() {
                return crate::pages::unavailable_sign_out();
            }
        }
        Ok(None) => {}
        Err(_) => return crate::pages::unavailable_sign_out(),
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, clear_cookie()),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

fn enroll_form(
    token: &str,
    e: &crate::Enrollment,
    message: Option<&str>,
    passkeys: bool,
) -> String {
    let passwords = if e.directory {
        String::new()
    } else {
        format!(
            "<label for=\"password\">Password (at least {min} characters)</label>\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"{min}\" required>\
             <label for=\"password2\">Password again</label>\
             <input id=\"password2\" name=\"password2\" type=\"password\" autocomplete=\"new-password\" minlength=\"{min}\" required>",
            min = MIN_PASSWORD
        )
    };
    format!(
        "<h1>Welcome, {name}</h1>{msg}<p>You are enrolling as <strong>{role}</strong>. {what}</p>\
         <form method=\"post\" action=\"/enroll/{token}\" class=\"signin\" id=\"enroll\" data-token=\"{token}\">\
         {passwords}\
         <figure class=\"qr\">{qr}<figcaption>Scan this with your authenticator app, or type the secret \
         <code id=\"totp-secret\">{secret}</code> (<a href=\"{uri}\" id=\"totp-uri\">open in an app on this device</a>).</figcaption></figure>\
         <label for=\"code\">Code from your authenticator app</label>\
         <input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" required>\
         <button type=\"submit\">Finish enrollment</button>{passkey}</form>\
         <p class=\"note\">Reloading this page draws a new secret.</p>",
        name = esc(&e.name),
        role = esc(match e.role {
            crate::Role::Approver => "approver",
            crate::Role::Auditor => "auditor",
            crate::Role::Admin => "admin",
        }),
        msg = message
            .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)))
            .unwrap_or_default(),
        token = esc(token),
        what = if e.directory {
            "Your password stays the directory's; add chaperone to your authenticator app (any TOTP app), then type the code it shows."
        } else {
            "Choose a password and add chaperone to your authenticator app (any TOTP app), then type the code it shows."
        },
        secret = esc(&e.totp_secret),
        uri = esc(&e.totp_uri),
        qr = qr_svg(&e.totp_uri, "QR code of the authenticator secret"),
        passkey = if passkeys {
            passkey_button("enroll", "Finish with a passkey instead")
        } else {
            String::new()
        },
    )
}

/// `text` as a QR code, an inline `<svg>` (the page's CSP allows it: no script, no style attribute;
/// `fill` is a presentation attribute). Only numbers and fixed words go into it besides the escaped
/// label, so nothing from `text` reaches the markup unencoded. Empty when `text` is too long for a
/// QR code (an otpauth URI never is).
pub(crate) fn qr_svg(text: &str, label: &str) -> String {
    use qrcode::render::svg;
    let Ok(code) = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
    else {
        return String::new();
    };
    let drawn = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .dark_color(svg::Color("#000"))
        .light_color(svg::Color("#fff"))
        .build();
    // The renderer starts with an XML declaration, which does not belong inside HTML.
    let Some(at) = drawn.find("<svg") else {
        return String::new();
    };
    drawn[at..].replacen(
        "<svg ",
        &format!(
            "<svg role=\"img\" aria-label=\"{}\" id=\"totp-qr\" ",
            esc(label)
        ),
        1,
    )
}

fn enroll_error(e: &CoreError) -> Response {
    match e {
        CoreError::NotFound => error_page(
            StatusCode::NOT_FOUND,
            "This enrollment link is unknown, used or expired. Ask an administrator for a new one.",
        ),
        CoreError::Internal => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Enrollment failed on the server; try again.",
        ),
        other => error_page(crate::status_of(other), &other.to_string()),
    }
}

pub async fn enroll_page<C: Core>(State(st): St<C>, Path(token): Path<String>) -> Response {
    match st.core.enrollment(&token).await {
        Ok(e) => Html(page(
            "Enroll",
            "",
            None,
            &enroll_form(&token, &e, None, st.passkeys.is_some()),
        ))
        .into_response(),
        Err(e) => enroll_error(&e),
    }
}

pub async fn enroll<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    if !st.limiter.allow(Source::of(peer.ip())) {
        return error_page(
            StatusCode::TOO_MANY_REQUESTS,
            SignInError::RateLimited.message(),
        );
    }
    let pairs = form_pairs(&body);
    let password = field(&pairs, "password").unwrap_or_default().to_owned();
    let again = field(&pairs, "password2").unwrap_or_default();
    let code = field(&pairs, "code").unwrap_or_default().trim().to_owned();
    // A directory account chooses no password here (the directory has it): the form has no fields
    // for one, and the core ignores one sent anyway.
    let directory = match st.core.enrollment_name(&token).await {
        Ok(_) => password.is_empty() && again.is_empty(),
        Err(e) => return enroll_error(&e),
    };
    let problem = if directory {
        None
    } else if password.chars().count() < MIN_PASSWORD {
        Some(format!(
            "The password needs at least {MIN_PASSWORD} characters."
        ))
    } else if password != again {
        Some("The two passwords differ.".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        // A new secret is drawn: the form shows it again.
        return match st.core.enrollment(&token).await {
            Ok(e) => (
                StatusCode::BAD_REQUEST,
                Html(page(
                    "Enroll",
                    "",
                    None,
                    &enroll_form(&token, &e, Some(&problem), st.passkeys.is_some()),
                )),
            )
                .into_response(),
            Err(e) => enroll_error(&e),
        };
    }
    let hash = if directory {
        None
    } else {
        let Ok(hash) = auth::hash_password(password).await else {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Enrollment failed on the server; try again.",
            );
        };
        Some(hash)
    };
    match st.core.finish_enrollment(&token, hash.as_deref(), &code).await {
        Ok(name) => Html(page(
            "Enrolled",
            "",
            None,
            &format!(
                "<h1>You are enrolled, {}</h1><p>Sign in with your password and a code from your authenticator app.</p>\
                 <p><a href=\"/login\">Sign in</a></p>",
                esc(&name)
            ),
        ))
        .into_response(),
        Err(CoreError::Invalid(m)) => match st.core.enrollment(&token).await {
            Ok(e) => (StatusCode::BAD_REQUEST, Html(page("Enroll", "", None, &enroll_form(&token, &e, Some(&m), st.passkeys.is_some())))).into_response(),
            Err(e) => enroll_error(&e),
        },
        Err(e) => enroll_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_from_another_site_is_told_by_sec_fetch_site_or_else_by_origin() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let host = ("host", "bastion.example:8443");
        for (pairs, cross) in [
            (vec![host], false),
            (vec![host, ("sec-fetch-site", "same-origin")], false),
            (vec![host, ("sec-fetch-site", "none")], false),
            (vec![host, ("sec-fetch-site", "cross-site")], true),
            (vec![host, ("sec-fetch-site", "same-site")], true),
            // Safari before 16.4: Origin only.
            (
                vec![host, ("origin", "https://bastion.example:8443")],
                false,
            ),
            (
                vec![host, ("origin", "https://BASTION.example:8443")],
                false,
            ),
            (vec![host, ("origin", "https://evil.example")], true),
            (vec![host, ("origin", "https://bastion.example")], true),
            (
                vec![
                    host,
                    ("origin", "https://bastion.example:8443.evil.example"),
                ],
                true,
            ),
            (vec![host, ("origin", "null")], true),
            (vec![("origin", "https://bastion.example:8443")], true),
            // Sec-Fetch-Site, where sent, is the browser's own judgement.
            (
                vec![
                    host,
                    ("origin", "https://evil.example"),
                    ("sec-fetch-site", "same-origin"),
                ],
                false,
            ),
        ] {
            assert_eq!(cross_site(&headers(&pairs)), cross, "{pairs:?}");
        }
    }

    #[test]
    fn the_qr_code_is_inline_svg_without_script_or_style() {
        let svg = qr_svg(
            "otpauth://totp/chaperone:bob?secret=JBSWY3DPEHPK3PXP&issuer=chaperone",
            "QR \"code\"",
        );
        assert!(
            svg.starts_with("<svg role=\"img\" aria-label=\"QR &quot;code&quot;\""),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>"));
        for banned in ["<?xml", "<script", "style", "javascript:"] {
            assert!(!svg.contains(banned), "{banned} in {svg}");
        }
    }
}
