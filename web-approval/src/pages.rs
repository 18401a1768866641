//! Server-rendered pages for approvers: pending requests (approve as asked, for less, or deny), the
//! decisions taken, active grants (revoke), live sessions by login (terminate), and the server-sent
//! event stream that refreshes them. Forms post back with the session's CSRF token and redirect
//! (post/redirect/get) to an address that names the action's notice (`auth::Notice`). Revoking a grant
//! and terminating a session ask first: their form's POST answers with a confirmation page (reason
//! required), whose own POST acts; no JavaScript is needed for any of it.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::auth::{Session, csrf_ok};
use crate::html::{Viewer, bytes, countdown, esc, page, page_with, span};
use crate::{
    Core, CoreError, Decision, DecisionsQuery, GrantView, PendingList, RequestView, SessionView,
    WebState, field, form_pairs, status_of,
};

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

/// The session's notice, on the page whose address names it (`auth::Notice`: the one rule).
pub(crate) fn notice(s: &Session, query: Option<&str>) -> String {
    s.notice_for(query)
        .map(|m| format!("<p class=\"flash\" role=\"status\">{}</p>", esc(m)))
        .unwrap_or_default()
}

pub async fn home<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    match signed_in(&st, &headers).await {
        Ok(_) => Redirect::to("/requests").into_response(),
        Err(r) => r,
    }
}

pub async fn requests<C: Core>(
    State(st): St<C>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pending = match st.core.pending_requests().await {
        Ok(p) => p,
        Err(e) => return core_error(&e),
    };
    let now = st.core.now();
    let mut main = format!("<h1>Pending requests</h1>{}", notice(&s, query.as_deref()));
    let PendingList {
        requests: pending,
        total,
    } = pending;
    if pending.is_empty() {
        main.push_str("<p>No request is waiting for a decision. <a href=\"/decisions\">Decisions taken</a></p>");
    } else if total > pending.len() as i64 {
        let _ = write!(
            main,
            "<p class=\"backlog\" role=\"status\">{total} requests are waiting; these are the {} waiting longest. \
             The others appear here as these are decided.</p>",
            pending.len()
        );
    }
    let can_decide = s.staff.role.can_decide();
    for r in &pending {
        let history = st.core.vendor_history(&r.vendor).await.unwrap_or_default();
        // Not an empty list when it cannot be read (or its view cannot be audited): "none yet" beside
        // a request would tell the approver something untrue about the vendor.
        let sessions = st.core.vendor_sessions(&s.staff, &r.vendor).await.ok();
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
             <dt>Waiting</dt><dd class=\"waiting\">{waiting} (filed {created})</dd>\
             <dt>Expires</dt><dd class=\"expires\">{expires}</dd>\
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
            waiting = span(now - r.created_at),
            created = esc(&r.created),
            expires = match (r.expires_at, &r.expires) {
                (Some(at), Some(text)) => format!(
                    "in {} (at {}) unless decided",
                    countdown(at - now),
                    esc(text)
                ),
                _ => "never".to_owned(),
            },
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
            "<details class=\"history\"><summary>{vendor}'s history: {n}, {m}</summary>\
             <h3>Requests</h3><ul>",
            vendor = esc(&r.vendor),
            n = count(past.len(), "recent request"),
            m = match &sessions {
                Some(list) => count(list.len(), "recent session"),
                None => "recent sessions not shown".to_owned(),
            },
        );
        if past.is_empty() {
            main.push_str("<li>none before this one</li>");
        }
        for h in past {
            let _ = write!(
                main,
                "<li>#{} {} {} for {}: {}{}{} — {}</li>",
                h.id,
                esc(&h.asset),
                esc(&h.services.join(",")),
                esc(&h.duration),
                esc(&h.outcome),
                h.decision_reason
                    .as_deref()
                    .map(|d| format!(" ({})", esc(d)))
                    .unwrap_or_default(),
                // A grant revoked for cause is what the next approver most needs to see.
                h.grant_revoked
                    .as_deref()
                    .map(|g| format!(", <strong>grant {}</strong>", esc(g)))
                    .unwrap_or_default(),
                esc(&h.reason)
            );
        }
        main.push_str("</ul><h3>Sessions</h3><ul>");
        match &sessions {
            Some(list) if list.is_empty() => main.push_str("<li>none yet</li>"),
            Some(_) => {}
            None => main.push_str(
                "<li>the vendor's sessions cannot be shown right now; see the history</li>",
            ),
        }
        for v in sessions.iter().flatten() {
            let _ = write!(
                main,
                "<li><a href=\"/sessions/{id}\">{asset} {kind}</a> {started}, {how} ({up} up, {down} down)</li>",
                id = esc(&v.id),
                asset = esc(&v.asset),
                kind = esc(&kind_label(v)),
                started = esc(&v.started),
                how = match (&v.ended_at, &v.end_cause) {
                    (Some(end), cause) => format!(
                        "{}, {}",
                        span(end - v.started_at),
                        esc(cause.as_deref().unwrap_or("ended"))
                    ),
                    (None, _) => format!("live for {}", span(now - v.started_at)),
                },
                up = bytes(v.bytes_up),
                down = bytes(v.bytes_down),
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
                    "<label class=\"check\"><input type=\"checkbox\" name=\"service\" value=\"{v}\" checked><span>{v}</span></label>",
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

/// `1 recent request`, `3 recent requests`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `shell`, `exec uptime`, `tunnel dicom`, `sftp` (a tunnel's or jump's route is [`route`]).
fn kind_label(v: &SessionView) -> String {
    match (v.kind.as_str(), v.detail.is_empty()) {
        ("tunnel" | "jump", _) => format!("{} {}", v.kind, v.service),
        (_, true) => v.kind.clone(),
        (_, false) => format!("{} {}", v.kind, v.detail),
    }
}

/// A tunnel's or jump's route under its kind, as a note (escaped HTML); nothing for other kinds.
fn route(v: &SessionView) -> String {
    match v.kind.as_str() {
        "tunnel" | "jump" if !v.detail.is_empty() => {
            format!("<br><span class=\"note\">{}</span>", esc(&v.detail))
        }
        _ => String::new(),
    }
}

/// What was asked and what the decision allowed: `ssh, dicom for 2h` or `asked ssh, dicom for 2h;
/// granted ssh for 1h`.
fn asked_and_granted(r: &RequestView) -> String {
    let asked = format!("{} for {}", r.services.join(", "), r.duration);
    match (&r.granted_services, &r.granted_duration) {
        (Some(services), Some(duration)) if r.outcome == "narrowed" => format!(
            "asked {}; granted {} for {}",
            esc(&asked),
            esc(&services.join(", ")),
            esc(duration)
        ),
        _ => esc(&asked),
    }
}

/// `GET /decisions`: every decided request, the latest first, filtered by vendor, asset and outcome
/// (in the address, so a filtered list can be linked and refreshes as itself).
pub async fn decisions<C: Core>(
    State(st): St<C>,
    RawQuery(raw): RawQuery,
    Query(q): Query<DecisionsQuery>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut main = format!("<h1>Decisions</h1>{}", notice(&s, raw.as_deref()));
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or_default());
    let state = q.state.as_deref().unwrap_or("decided");
    let _ = write!(
        main,
        "<form method=\"get\" action=\"/decisions\" class=\"filters\" role=\"search\">\
         <div class=\"field\"><label for=\"f-vendor\">Vendor</label><input id=\"f-vendor\" name=\"vendor\" value=\"{vendor}\"></div>\
         <div class=\"field\"><label for=\"f-asset\">Asset</label><input id=\"f-asset\" name=\"asset\" value=\"{asset}\"></div>\
         <div class=\"field\"><label for=\"f-state\">Outcome</label><select id=\"f-state\" name=\"state\">",
        vendor = value(&q.vendor),
        asset = value(&q.asset),
    );
    for (v, label) in [
        ("decided", "any"),
        ("approved", "approved (as asked or narrowed)"),
        ("narrowed", "narrowed"),
        ("denied", "denied"),
        ("expired", "expired"),
    ] {
        let selected = if v == state { " selected" } else { "" };
        let _ = write!(main, "<option value=\"{v}\"{selected}>{label}</option>");
    }
    main.push_str(
        "</select></div><button type=\"submit\">Filter</button> <a href=\"/decisions\">Clear</a></form>",
    );
    let page_of = match st.core.decided_requests(&q).await {
        Ok(p) => p,
        Err(CoreError::Invalid(why)) => {
            let _ = write!(main, "<p class=\"error\" role=\"alert\">{}</p>", esc(&why));
            return (
                StatusCode::BAD_REQUEST,
                Html(page("Decisions", "Decisions", Some(&viewer(&s)), &main)),
            )
                .into_response();
        }
        Err(e) => return core_error(&e),
    };
    if page_of.requests.is_empty() {
        main.push_str("<p>No decided request matches.</p>");
    } else {
        main.push_str(
            "<table class=\"decisions\"><caption>Decided requests, the latest first</caption><thead><tr>\
             <th scope=\"col\">Request</th><th scope=\"col\">Outcome</th><th scope=\"col\">Vendor → asset</th>\
             <th scope=\"col\">Asked / granted</th><th scope=\"col\">Vendor's reason</th>\
             <th scope=\"col\">Decided by</th><th scope=\"col\">When</th><th scope=\"col\">Why</th></tr></thead><tbody>",
        );
        for r in &page_of.requests {
            let _ = write!(
                main,
                "<tr><td data-label=\"Request\">#{id}</td>\
                 <td data-label=\"Outcome\"><span class=\"outcome {outcome}\">{outcome}</span>{revoked}</td>\
                 <td data-label=\"Vendor → asset\">{vendor} ({org}) → {asset}</td>\
                 <td data-label=\"Asked / granted\">{asked}</td>\
                 <td data-label=\"Vendor's reason\" class=\"reason\">{reason}</td>\
                 <td data-label=\"Decided by\">{by}</td>\
                 <td data-label=\"When\">{when}</td>\
                 <td data-label=\"Why\">{why}</td></tr>",
                id = r.id,
                outcome = esc(&r.outcome),
                revoked = r
                    .grant_revoked
                    .as_deref()
                    .map(|g| format!("<br><span class=\"note\">grant {}</span>", esc(g)))
                    .unwrap_or_default(),
                vendor = esc(&r.vendor),
                org = esc(&r.org),
                asset = esc(&r.asset),
                asked = asked_and_granted(r),
                reason = esc(&r.reason),
                by = esc(r.decided_by_name.as_deref().unwrap_or("-")),
                when = esc(r.decided.as_deref().unwrap_or("-")),
                why = match (&r.decision_reason, r.grant_id) {
                    (Some(d), _) => esc(d),
                    (None, Some(g)) => format!("granted as grant #{g}"),
                    (None, None) => "-".into(),
                },
            );
        }
        main.push_str("</tbody></table>");
    }
    let mut links = String::new();
    let link = |page: u32| {
        let mut pairs = q.pairs();
        let p = page.to_string();
        pairs.push(("page", &p));
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("/decisions?{}", esc(&qs))
    };
    if page_of.page > 1 {
        let _ = write!(
            links,
            "<a href=\"{}\" rel=\"prev\">Newer</a> ",
            link(page_of.page - 1)
        );
    }
    if page_of.more {
        let _ = write!(
            links,
            "<a href=\"{}\" rel=\"next\">Older</a>",
            link(page_of.page + 1)
        );
    }
    if !links.is_empty() {
        let _ = write!(
            main,
            "<nav class=\"pages\" aria-label=\"Pages\">Page {} {links}</nav>",
            page_of.page
        );
    }
    Html(page("Decisions", "Decisions", Some(&viewer(&s)), &main)).into_response()
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
            st.redirect_with_notice(&headers, format!("Request #{id}: {message}"), "/requests")
                .await
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

pub async fn grants<C: Core>(
    State(st): St<C>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let grants = match st.core.active_grants().await {
        Ok(g) => g,
        Err(e) => return core_error(&e),
    };
    let now = st.core.now();
    let can_act = s.staff.role.can_decide();
    let mut main = format!("<h1>Active grants</h1>{}", notice(&s, query.as_deref()));
    if grants.is_empty() {
        main.push_str("<p>No grant is active.</p>");
    } else {
        let _ = write!(
            main,
            "<table class=\"grants\"><caption>Grants in force now</caption><thead><tr><th scope=\"col\">Grant</th>\
             <th scope=\"col\">Vendor → asset</th><th scope=\"col\">Services</th>\
             <th scope=\"col\">Reason / ticket</th><th scope=\"col\">Start</th><th scope=\"col\">End</th>\
             <th scope=\"col\">Time left</th><th scope=\"col\">Issued by</th>{}</tr></thead><tbody>",
            if can_act {
                "<th scope=\"col\">Action</th>"
            } else {
                ""
            }
        );
        for g in &grants {
            let action = if can_act {
                format!(
                    "<td data-label=\"Action\"><form method=\"post\" action=\"/grants/{id}/revoke\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <label class=\"sr-only\" for=\"rv-{id}\">Reason for revoking grant {id}</label>\
                     <input id=\"rv-{id}\" name=\"reason\" placeholder=\"reason\" maxlength=\"500\" size=\"12\">\
                     <button type=\"submit\" class=\"deny\" aria-label=\"Revoke grant {id}…\">Revoke…</button></form></td>",
                    id = g.id,
                    csrf = esc(&s.csrf)
                )
            } else {
                String::new()
            };
            let _ = write!(
                main,
                "<tr><td data-label=\"Grant\">#{id}{from}</td><td data-label=\"Vendor → asset\">{vendor} → {asset}</td>\
                 <td data-label=\"Services\">{services}{narrowed}</td><td data-label=\"Reason / ticket\" class=\"reason\">{reason}</td>\
                 <td data-label=\"Start\">{starts}</td><td data-label=\"End\">{ends}</td>\
                 <td data-label=\"Time left\">{left}</td><td data-label=\"Issued by\">{by}</td>{action}</tr>",
                id = g.id,
                from = g
                    .request_id
                    .map(|r| format!(" <span class=\"note\">(request #{r})</span>"))
                    .unwrap_or_default(),
                vendor = esc(&g.vendor),
                asset = esc(&g.asset),
                services = esc(&g.services.join(", ")),
                narrowed = g
                    .narrowed_from
                    .as_deref()
                    .map(|n| format!(
                        "<br><span class=\"narrowed\">narrowed from {}</span>",
                        esc(n)
                    ))
                    .unwrap_or_default(),
                reason = esc(&g.reason),
                starts = esc(&g.starts),
                ends = esc(&g.ends),
                left = countdown(g.ends_at - now),
                by = esc(&g.issued_by_name),
            );
        }
        main.push_str("</tbody></table>");
        if can_act {
            main.push_str("<p class=\"note\">Revoke asks again before it acts, with the reason the vendor and the audit log are given.</p>");
        }
    }
    Html(page(
        "Active grants",
        "Active grants",
        Some(&viewer(&s)),
        &main,
    ))
    .into_response()
}

/// The page that asks before a grant is revoked: what the grant is, and the reason (required).
fn revoke_confirmation(s: &Session, g: &GrantView, reason: &str, problem: Option<&str>) -> String {
    format!(
        "<h1>Revoke grant #{id}?</h1>{problem}\
         <p>{vendor} loses access to {asset} ({services}) at once: every session under this grant is closed \
         within seconds, on every node. It cannot be undone; a new grant needs a new request.</p>\
         <dl><dt>Reason / ticket</dt><dd class=\"reason\">{why}</dd><dt>Ends</dt><dd>{ends}</dd>\
         <dt>Issued by</dt><dd>{by}</dd></dl>\
         <form method=\"post\" action=\"/grants/{id}/revoke\" class=\"confirm\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <label for=\"reason\">Why it is revoked (the vendor is told, and the audit log keeps it)</label>\
         <input id=\"reason\" name=\"reason\" value=\"{reason}\" required maxlength=\"500\" autofocus>\
         <div class=\"actions\"><button type=\"submit\" class=\"deny\">Revoke grant #{id} now</button>\
         <a class=\"button secondary\" href=\"/grants\">Cancel, keep it</a></div></form>",
        id = g.id,
        problem = problem
            .map(|p| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(p)))
            .unwrap_or_default(),
        vendor = esc(&g.vendor),
        asset = esc(&g.asset),
        services = esc(&g.services.join(", ")),
        why = esc(&g.reason),
        ends = esc(&g.ends),
        by = esc(&g.issued_by_name),
        csrf = esc(&s.csrf),
        reason = esc(reason),
    )
}

/// `POST /grants/{id}/revoke`: without `confirm=yes`, the confirmation page; with it, the revocation
/// (the core refuses a blank reason: that rule is the policy's). A refusal shows the confirmation
/// again with why.
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
    let reason = field(&pairs, "reason").unwrap_or_default();
    let ask = |status: StatusCode, g: &GrantView, problem: Option<&str>| {
        (
            status,
            Html(page_with(
                "Revoke a grant",
                "Active grants",
                Some(&viewer(&s)),
                &revoke_confirmation(&s, g, reason, problem),
                false,
            )),
        )
            .into_response()
    };
    if field(&pairs, "confirm") != Some("yes") {
        return match st.core.grant(id).await {
            Ok(g) => ask(StatusCode::OK, &g, None),
            Err(e) => core_error(&e),
        };
    }
    match st.core.revoke_grant(&s.staff, id, reason).await {
        Ok(()) => {
            st.redirect_with_notice(
                &headers,
                format!("Grant #{id} revoked; its sessions are being closed."),
                "/grants",
            )
            .await
        }
        Err(CoreError::Invalid(why)) => match st.core.grant(id).await {
            Ok(g) => ask(StatusCode::BAD_REQUEST, &g, Some(&why)),
            Err(_) => core_error(&CoreError::Invalid(why)),
        },
        Err(e) => core_error(&e),
    }
}

pub async fn sessions<C: Core>(
    State(st): St<C>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let logins = match st.core.live_connections(&s.staff).await {
        Ok(l) => l,
        Err(e) => return core_error(&e),
    };
    let now = st.core.now();
    let can_act = s.staff.role.can_decide();
    let mut main = format!("<h1>Live sessions</h1>{}", notice(&s, query.as_deref()));
    if logins.is_empty() {
        main.push_str("<p>No vendor is signed in and no session is open.</p>");
    } else {
        let _ = write!(
            main,
            "<table class=\"live\"><caption>Vendors' logins and what runs in them now</caption><thead><tr>\
             <th scope=\"col\">Vendor → asset</th><th scope=\"col\">Kind</th><th scope=\"col\">Grant</th>\
             <th scope=\"col\">Started</th><th scope=\"col\">Duration</th><th scope=\"col\">Bytes up / down</th>{}</tr></thead>",
            if can_act {
                "<th scope=\"col\">Action</th>"
            } else {
                ""
            }
        );
        for c in &logins {
            let cols = if can_act { 7 } else { 6 };
            let _ = write!(
                main,
                "<tbody class=\"login\"><tr class=\"login\"><th scope=\"rowgroup\" colspan=\"{cols}\">\
                 {vendor}'s login from {addr}{since} — {what}</th></tr>",
                vendor = esc(&c.vendor),
                addr = esc(&c.client_addr),
                since = c
                    .since_at
                    .map(|t| format!(", signed in {} ago", span(now - t)))
                    .unwrap_or_default(),
                what = match c.sessions.len() {
                    0 => "nothing open (an idle login, or forwards waiting for a connection)"
                        .to_owned(),
                    1 => "1 open".to_owned(),
                    n => format!("{n} open"),
                },
            );
            for l in &c.sessions {
                let action = if can_act {
                    format!(
                        "<td data-label=\"Action\"><form method=\"post\" action=\"/sessions/{id}/terminate\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                         <label class=\"sr-only\" for=\"tr-{id}\">Reason for terminating {vendor}'s {kind} on {asset}</label>\
                         <input id=\"tr-{id}\" name=\"reason\" placeholder=\"reason\" maxlength=\"500\" size=\"12\">\
                         <button type=\"submit\" class=\"deny\" aria-label=\"Terminate this {kind} session (grant {g} stays)…\">Terminate…</button></form></td>",
                        id = esc(&l.id),
                        kind = esc(&l.kind),
                        vendor = esc(&l.vendor),
                        asset = esc(&l.asset),
                        g = l.grant_id,
                        csrf = esc(&s.csrf)
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    main,
                    "<tr><td data-label=\"Vendor → asset\"><a href=\"/sessions/{id}\">{vendor} → {asset}</a></td>\
                     <td data-label=\"Kind\">{kind}{route}</td><td data-label=\"Grant\">#{grant}</td>\
                     <td data-label=\"Started\">{started}</td><td data-label=\"Duration\">{duration}</td>\
                     <td data-label=\"Bytes up / down\">{up} / {down}</td>{action}</tr>",
                    id = esc(&l.id),
                    vendor = esc(&l.vendor),
                    asset = esc(&l.asset),
                    kind = esc(&kind_label(l)),
                    route = route(l),
                    grant = l.grant_id,
                    started = esc(&l.started),
                    duration = span(now - l.started_at),
                    up = bytes(l.bytes_up),
                    down = bytes(l.bytes_down),
                );
            }
            main.push_str("</tbody>");
        }
        main.push_str("</table>");
        if can_act {
            main.push_str("<p class=\"note\">Terminate ends that one session (on whichever node runs it) and leaves its grant; it asks again first. To end every session under a grant, revoke the grant on the Active grants page.</p>");
        }
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
/// (signed out, idle, or the user disabled; [`crate::auth::while_signed_in`]).
pub async fn events<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    let session = match st.peek_session(&headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return StatusCode::UNAUTHORIZED.into_response(),
        // EventSource gives up on a 401 but retries on a 503.
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    // Each stream holds a connection for the session's life: a person's many, or a script's, must not
    // take the node's connections from the others (held by the stream, given back when it ends).
    let place = match st.change_streams.take(&session.staff.name) {
        Ok(place) => place,
        Err(full) => {
            let why = match full {
                crate::places::Full::Yours(n) => {
                    format!("you have {n} pages following changes open on this server\n")
                }
                crate::places::Full::All(n) => {
                    format!("{n} pages follow changes on this server already\n")
                }
            };
            return (StatusCode::TOO_MANY_REQUESTS, why).into_response();
        }
    };
    let changes = futures::stream::unfold((st.core.clone(), place), |(core, place)| async move {
        core.changed().await;
        let event = Event::default().event("change").data("1");
        Some((Ok::<_, Infallible>(event), (core, place)))
    });
    let stream = crate::auth::while_signed_in(st, headers, changes);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response()
}

/// The signed-in user's account: how they signed in, their passkeys, and adding one.
pub async fn account<C: Core>(
    State(st): St<C>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
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
        notice(&s, query.as_deref()),
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
