//! Server-rendered pages for approvers: pending requests (approve as asked, for less, or deny), active
//! grants (revoke), live sessions (terminate), and the server-sent event stream that refreshes them.
//! Forms post back with the session's CSRF token and redirect (post/redirect/get) with a one-time flash.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::auth::{Session, csrf_ok};
use crate::html::{Viewer, esc, page};
use crate::{Core, CoreError, Decision, WebState, field, form_pairs, status_of};

type St<C> = State<Arc<WebState<C>>>;

/// The signed-in session, or a redirect to the sign-in page (a bare 401 for the page's own background
/// refresh, which then sends the browser to the sign-in page itself).
pub(crate) async fn signed_in<C: Core>(
    st: &WebState<C>,
    headers: &HeaderMap,
) -> Result<Session, Response> {
    match st.session(headers).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) if crate::auth::is_background(headers) => {
            Err(StatusCode::UNAUTHORIZED.into_response())
        }
        Ok(None) => Err(Redirect::to("/login").into_response()),
        Err(_) => Err(unavailable()),
    }
}

/// A state change: signed in, and the form's CSRF token matches the session's.
pub(crate) async fn change<C: Core>(
    st: &WebState<C>,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Session, Response> {
    let session = match st.session(headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(error_page(StatusCode::UNAUTHORIZED, "Sign in first.")),
        Err(_) => return Err(unavailable()),
    };
    if !csrf_ok(&session, field(pairs, "csrf")) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from this site (CSRF token missing or wrong). Reload the page and try again.",
        ));
    }
    Ok(session)
}

/// The store could not say whether the session is signed in (a database hiccup is not a sign-out).
pub(crate) fn unavailable() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database is not answering. Try again in a moment; you are still signed in.",
    )
}

/// A sign-out the store did not confirm.
pub(crate) fn unavailable_sign_out() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The database is not answering, so you are not signed out yet. Try again in a moment.",
    )
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(page(
            "Error",
            "",
            None,
            &format!(
                "<h1>{}</h1><p role=\"alert\">{}</p><p><a href=\"/requests\">Back</a></p>",
                status.as_u16(),
                esc(message)
            ),
        )),
    )
        .into_response()
}

pub(crate) fn core_error(e: &CoreError) -> Response {
    let message = match e {
        CoreError::Internal => {
            "Something failed on the server; it is logged. Try again.".to_owned()
        }
        other => other.to_string(),
    };
    error_page(status_of(e), &message)
}

pub(crate) fn viewer(s: &Session) -> Viewer<'_> {
    Viewer {
        name: &s.staff.name,
        role: match s.staff.role {
            crate::Role::Approver => "approver",
            crate::Role::Auditor => "auditor",
            crate::Role::Admin => "admin",
        },
        csrf: &s.csrf,
    }
}

pub(crate) fn flash(s: &Session) -> String {
    s.flash
        .as_deref()
        .map(|m| format!("<p class=\"flash\" role=\"status\">{}</p>", esc(m)))
        .unwrap_or_default()
}

pub async fn home<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    match signed_in(&st, &headers).await {
        Ok(_) => Redirect::to("/requests").into_response(),
        Err(r) => r,
    }
}

pub async fn requests<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pending = match st.core.pending_requests().await {
        Ok(p) => p,
        Err(e) => return core_error(&e),
    };
    let mut main = format!("<h1>Pending requests</h1>{}", flash(&s));
    if pending.is_empty() {
        main.push_str("<p>No request is waiting for a decision.</p>");
    }
    let can_decide = s.staff.role.can_decide();
    for r in &pending {
        let history = st.core.vendor_history(&r.vendor).await.unwrap_or_default();
        let _ = write!(
            main,
            "<article class=\"request\" aria-labelledby=\"req-{id}\"><h2 id=\"req-{id}\">#{id} {vendor} → {asset}</h2>\
             <dl><dt>Vendor</dt><dd>{vendor} ({org})</dd>\
             <dt>Asset</dt><dd>{asset}, zone {zone}</dd>\
             <dt>Clinical purpose</dt><dd>{purpose}</dd>\
             <dt>Criticality</dt><dd class=\"crit-{crit}\">{crit}</dd>\
             <dt>Services</dt><dd>{services}</dd>\
             <dt>Duration</dt><dd>{duration}</dd>\
             <dt>Reason</dt><dd class=\"reason\">{reason}</dd>\
             <dt>Filed</dt><dd>{created}</dd>\
             <dt>Approvals</dt><dd>{approvals} of {needed}</dd></dl>",
            id = r.id,
            vendor = esc(&r.vendor),
            org = esc(&r.org),
            asset = esc(&r.asset),
            zone = esc(&r.zone),
            purpose = esc(&r.purpose),
            crit = esc(&r.criticality),
            services = esc(&r.services.join(", ")),
            duration = esc(&r.duration),
            reason = esc(&r.reason),
            created = esc(&r.created),
            approvals = if r.approvals.is_empty() {
                "none yet".to_owned()
            } else {
                esc(&r.approvals.join(", "))
            },
            needed = r.approvals_needed,
        );
        let past: Vec<_> = history.iter().filter(|h| h.id != r.id).take(5).collect();
        let _ = write!(
            main,
            "<details><summary>{}'s recent requests ({})</summary><ul>",
            esc(&r.vendor),
            past.len()
        );
        for h in past {
            let _ = write!(
                main,
                "<li>#{} {} {} for {}: {}{} — {}</li>",
                h.id,
                esc(&h.asset),
                esc(&h.services.join(",")),
                esc(&h.duration),
                esc(&h.status),
                h.decision_reason
                    .as_deref()
                    .map(|d| format!(" ({})", esc(d)))
                    .unwrap_or_default(),
                esc(&h.reason)
            );
        }
        main.push_str("</ul></details>");
        if can_decide {
            let _ = write!(
                main,
                "<form method=\"post\" action=\"/requests/{id}/approve\" class=\"decide\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <fieldset><legend>Services to allow</legend>",
                id = r.id,
                csrf = esc(&s.csrf)
            );
            for svc in &r.services {
                let _ = write!(
                    main,
                    "<label><input type=\"checkbox\" name=\"service\" value=\"{v}\" checked> {v}</label>",
                    v = esc(svc)
                );
            }
            let _ = write!(
                main,
                "</fieldset><label for=\"dur-{id}\">Allow for (at most {d})</label>\
                 <input id=\"dur-{id}\" name=\"duration\" value=\"{d}\" inputmode=\"text\" size=\"6\" required>\
                 <button type=\"submit\" class=\"approve\">Approve</button></form>\
                 <form method=\"post\" action=\"/requests/{id}/deny\" class=\"decide\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label for=\"why-{id}\">Reason for denying</label>\
                 <input id=\"why-{id}\" name=\"reason\" required maxlength=\"500\">\
                 <button type=\"submit\" class=\"deny\">Deny</button></form>",
                id = r.id,
                d = esc(&r.duration),
                csrf = esc(&s.csrf)
            );
        }
        main.push_str("</article>");
    }
    Html(page("Requests", "Requests", Some(&viewer(&s)), &main)).into_response()
}

async fn decide<C: Core>(
    st: Arc<WebState<C>>,
    headers: HeaderMap,
    id: i64,
    body: Bytes,
    approve: bool,
) -> Response {
    let pairs = form_pairs(&body);
    let s = match change(&st, &headers, &pairs).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let decision = if approve {
        let services: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "service")
            .map(|(_, v)| v.clone())
            .collect();
        Decision::Approve {
            services: Some(services),
            duration: field(&pairs, "duration").map(str::to_owned),
        }
    } else {
        Decision::Deny {
            reason: field(&pairs, "reason").unwrap_or_default().to_owned(),
        }
    };
    match st.core.decide(&s.staff, id, decision).await {
        Ok(message) => {
            st.flash(&headers, format!("Request #{id}: {message}"))
                .await;
            Redirect::to("/requests").into_response()
        }
        Err(e) => core_error(&e),
    }
}

pub async fn approve<C: Core>(
    State(st): St<C>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(st, headers, id, body, true).await
}

pub async fn deny<C: Core>(
    State(st): St<C>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(st, headers, id, body, false).await
}

pub async fn grants<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let grants = match st.core.active_grants().await {
        Ok(g) => g,
        Err(e) => return core_error(&e),
    };
    let mut main = format!("<h1>Active grants</h1>{}", flash(&s));
    if grants.is_empty() {
        main.push_str("<p>No grant is active.</p>");
    } else {
        main.push_str(
            "<table><caption>Grants in force now</caption><thead><tr><th scope=\"col\">Grant</th>\
             <th scope=\"col\">Vendor</th><th scope=\"col\">Asset</th><th scope=\"col\">Services</th>\
             <th scope=\"col\">Ends</th><th scope=\"col\">Issued by</th><th scope=\"col\">Action</th></tr></thead><tbody>",
        );
        for g in &grants {
            let action = if s.staff.role.can_decide() {
                format!(
                    "<form method=\"post\" action=\"/grants/{id}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <label class=\"sr-only\" for=\"rv-{id}\">Reason for revoking grant {id}</label>\
                     <input id=\"rv-{id}\" name=\"reason\" placeholder=\"reason\" maxlength=\"500\">\
                     <button type=\"submit\" class=\"deny\">Revoke</button></form>",
                    id = g.id,
                    csrf = esc(&s.csrf)
                )
            } else {
                String::new()
            };
            let _ = write!(
                main,
                "<tr><td data-label=\"Grant\">#{}</td><td data-label=\"Vendor\">{}</td><td data-label=\"Asset\">{}</td>\
                 <td data-label=\"Services\">{}</td><td data-label=\"Ends\">{}</td><td data-label=\"Issued by\">{}</td>\
                 <td data-label=\"Action\">{action}</td></tr>",
                g.id,
                esc(&g.vendor),
                esc(&g.asset),
                esc(&g.services.join(", ")),
                esc(&g.ends),
                esc(&g.issued_by)
            );
        }
        main.push_str("</tbody></table>");
    }
    Html(page(
        "Active grants",
        "Active grants",
        Some(&viewer(&s)),
        &main,
    ))
    .into_response()
}

pub async fn revoke<C: Core>(
    State(st): St<C>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    let s = match change(&st, &headers, &pairs).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st
        .core
        .revoke_grant(&s.staff, id, field(&pairs, "reason").unwrap_or_default())
        .await
    {
        Ok(()) => {
            st.flash(
                &headers,
                format!("Grant #{id} revoked; its sessions are being closed."),
            )
            .await;
            Redirect::to("/grants").into_response()
        }
        Err(e) => core_error(&e),
    }
}

pub async fn sessions<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let live = match st.core.live_sessions().await {
        Ok(l) => l,
        Err(e) => return core_error(&e),
    };
    let mut main = format!("<h1>Live sessions</h1>{}", flash(&s));
    if live.is_empty() {
        main.push_str("<p>No session is open.</p>");
    } else {
        main.push_str(
            "<table><caption>Sessions open now</caption><thead><tr><th scope=\"col\">Session</th>\
             <th scope=\"col\">Vendor</th><th scope=\"col\">Asset</th><th scope=\"col\">Kind</th>\
             <th scope=\"col\">Since</th><th scope=\"col\">From</th><th scope=\"col\">Action</th></tr></thead><tbody>",
        );
        for l in &live {
            let action = if s.staff.role.can_decide() {
                format!(
                    "<form method=\"post\" action=\"/sessions/{id}/terminate\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <label class=\"sr-only\" for=\"tr-{id}\">Reason for terminating session {id}</label>\
                     <input id=\"tr-{id}\" name=\"reason\" placeholder=\"reason\" required maxlength=\"500\">\
                     <label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> end it now</label>\
                     <button type=\"submit\" class=\"deny\" aria-label=\"Terminate session {id} (grant {g} stays)\">Terminate</button></form>",
                    id = esc(&l.id),
                    g = l.grant_id,
                    csrf = esc(&s.csrf)
                )
            } else {
                String::new()
            };
            let _ = write!(
                main,
                "<tr><td data-label=\"Session\"><a href=\"/sessions/{id}\">{id}</a></td><td data-label=\"Vendor\">{}</td><td data-label=\"Asset\">{}</td>\
                 <td data-label=\"Kind\">{} {}</td><td data-label=\"Since\">{}</td><td data-label=\"From\">{}</td>\
                 <td data-label=\"Action\">{action}</td></tr>",
                esc(&l.vendor),
                esc(&l.asset),
                esc(&l.kind),
                esc(&l.service),
                esc(&l.started),
                esc(&l.client_addr),
                id = esc(&l.id),
            );
        }
        main.push_str("</tbody></table><p class=\"note\">Terminate ends that one session (on whichever node runs it) and leaves its grant; to end every session under a grant, revoke the grant on the Active grants page.</p>");
    }
    Html(page(
        "Live sessions",
        "Live sessions",
        Some(&viewer(&s)),
        &main,
    ))
    .into_response()
}

/// Server-sent events: one `change` event whenever something approvers see may have changed. The
/// stream is no activity: it never postpones the idle sign-out, and it ends once the session is gone
/// (signed out, idle, or the user disabled), checked on every change and every 15 s (or half the idle
/// time-out, if that is shorter).
pub async fn events<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    match st.peek_session(&headers).await {
        Ok(Some(_)) => {}
        Ok(None) => return StatusCode::UNAUTHORIZED.into_response(),
        // EventSource gives up on a 401 but retries on a 503.
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
    let check = (st.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(15));
    let stream = futures::stream::unfold((st, headers), move |(st, headers)| async move {
        let core = st.core.clone();
        let changed = async move { core.changed().await };
        tokio::pin!(changed);
        loop {
            let change = tokio::select! {
                () = &mut changed => true,
                () = tokio::time::sleep(check) => false,
            };
            // A store error is not a sign-out: keep the stream.
            if let Ok(None) = st.peek_session(&headers).await {
                return None;
            }
            if change {
                let event = Event::default().event("change").data("1");
                return Some((Ok::<_, Infallible>(event), (st, headers)));
            }
        }
    });
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response()
}

/// The signed-in user's account: how they signed in, their passkeys, and adding one.
pub async fn account<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let method = match s.staff.method {
        crate::Method::Passkey => "password and a passkey",
        crate::Method::Totp => "password and an authenticator app code",
    };
    let mut main = format!(
        "<h1>Your account</h1>{}<p>Signed in as <strong>{}</strong> with {method}.</p>",
        flash(&s),
        esc(&s.staff.name)
    );
    match &st.passkeys {
        None => main.push_str(
            "<p class=\"note\">Passkeys are not available on this server: its address (web.public_url) is not a DNS name.</p>",
        ),
        Some(_) => {
            let ids = match crate::passkey::list(&st, &s.staff.name).await {
                Ok(ids) => ids,
                Err(e) => return core_error(&e),
            };
            let n = ids.len();
            let mut listed = String::new();
            if n > 0 {
                listed.push_str("<ol class=\"passkeys\">");
                for (i, id) in ids.iter().enumerate() {
                    let k = i + 1;
                    let _ = write!(
                        listed,
                        "<li><code>{id}…</code> <form method=\"post\" action=\"/account/passkeys/{k}/remove\" class=\"inline\">\
                         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                         <label for=\"remove-password-{k}\">Password</label>\
                         <input id=\"remove-password-{k}\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
                         <button type=\"submit\" class=\"secondary\">Remove passkey {k}</button></form></li>",
                        id = esc(id),
                        csrf = esc(&s.csrf),
                    );
                }
                listed.push_str("</ol>");
            }
            let _ = write!(
                main,
                "<h2>Passkeys</h2><p>{}</p>{listed}<div class=\"passkey\">\
                 <label for=\"password\">Your password, to confirm it is you</label>\
                 <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
                 <button type=\"button\" data-passkey=\"add\" data-csrf=\"{}\">Add a passkey</button>\
                 <p class=\"status\" role=\"status\" aria-live=\"polite\" id=\"passkey-status\"></p></div>",
                match n {
                    0 => "You have no passkey yet. With one, you sign in with your password and the passkey instead of a code.".to_owned(),
                    1 => "You have 1 passkey.".to_owned(),
                    n => format!("You have {n} passkeys."),
                },
                esc(&s.csrf)
            );
        }
    }
    Html(page("Account", "Account", Some(&viewer(&s)), &main)).into_response()
}
