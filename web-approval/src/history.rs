//! The compliance workspace: the session history with its filters (page and JSON), a session's page
//! (its record, the integrity of each recording, the player, transfers, tunnels and jumps, its audit
//! history), the player's data (segmented recordings, so a large recording is never loaded whole), the
//! transcript search, and the live view of a running terminal session (server-sent events).
//!
//! Every route reads through [`Core`]; the core checks integrity against the audit chain and audits
//! views and searches.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::json;

use crate::html::{esc, page, page_with};
use crate::pages::{change, core_error, notice, signed_in, viewer};
use crate::{
    Core, CoreError, HistoryItem, HistoryQuery, RecordingStatus, WebState, field, form_pairs,
    status_of,
};

type St<C> = State<Arc<WebState<C>>>;

/// The player pages' policy: the page's own CSP plus `'wasm-unsafe-eval'` (asciinema-player runs its
/// terminal emulator as WebAssembly compiled from the script, which is no JavaScript eval) and `blob:`
/// for the index the page hands the player.
pub(crate) const PLAYER_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' blob:; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

fn json_error(e: &CoreError) -> Response {
    let message = match e {
        CoreError::Internal => "internal error".to_owned(),
        other => other.to_string(),
    };
    (status_of(e), Json(json!({"error": message}))).into_response()
}

fn json_text(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /history`: the session history, filters in the URL.
pub async fn history_page<C: Core>(
    State(st): St<C>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut main = String::from("<h1>Session history</h1>");
    main.push_str(&filter_form(&q));
    match st.core.history(&s.staff, &q).await {
        Ok(page_) => {
            if page_.sessions.is_empty() {
                main.push_str("<p>No session matches.</p>");
            } else {
                main.push_str(&history_table(&page_.sessions));
            }
            let pairs = q.pairs();
            let link = |p: u32| {
                let mut url = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &pairs {
                    url.append_pair(k, v);
                }
                url.append_pair("page", &p.to_string());
                format!("/history?{}", url.finish())
            };
            main.push_str("<nav aria-label=\"Pages\" class=\"pages\">");
            if page_.page > 1 {
                let _ = write!(
                    main,
                    "<a rel=\"prev\" href=\"{}\">Newer</a> ",
                    esc(&link(page_.page - 1))
                );
            }
            let _ = write!(main, "<span>Page {}</span>", page_.page);
            if page_.more {
                let _ = write!(
                    main,
                    " <a rel=\"next\" href=\"{}\">Older</a>",
                    esc(&link(page_.page + 1))
                );
            }
            main.push_str("</nav>");
        }
        Err(CoreError::Invalid(why)) => {
            let _ = write!(
                main,
                "<p class=\"flash error\" role=\"alert\">{}</p>",
                esc(&why)
            );
        }
        Err(e) => return core_error(&e),
    }
    Html(page(
        "Session history",
        "Session history",
        Some(&viewer(&s)),
        &main,
    ))
    .into_response()
}

fn filter_form(q: &HistoryQuery) -> String {
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let mut f = String::from(
        "<form method=\"get\" action=\"/history\" class=\"filters\" role=\"search\" aria-label=\"Filter sessions\">",
    );
    for (name, label, value, hint) in [
        ("text", "Text typed or shown", v(&q.text), "rm -rf"),
        ("vendor", "Vendor", v(&q.vendor), ""),
        ("org", "Organisation", v(&q.org), ""),
        ("asset", "Asset", v(&q.asset), ""),
        ("zone", "Zone", v(&q.zone), ""),
        ("since", "From (UTC)", v(&q.since), "2026-11-01"),
        ("until", "Until (UTC)", v(&q.until), "2026-11-30"),
    ] {
        let _ = write!(
            f,
            "<div class=\"field\"><label for=\"f-{name}\">{label}</label><input id=\"f-{name}\" name=\"{name}\" value=\"{value}\" placeholder=\"{hint}\"></div>"
        );
    }
    let select = |name: &str, label: &str, current: &Option<String>, options: &[&str]| {
        let mut s = format!(
            "<div class=\"field\"><label for=\"f-{name}\">{label}</label><select id=\"f-{name}\" name=\"{name}\"><option value=\"\">any</option>"
        );
        for o in options {
            let sel = if current.as_deref() == Some(*o) {
                " selected"
            } else {
                ""
            };
            let _ = write!(s, "<option{sel}>{o}</option>");
        }
        s.push_str("</select></div>");
        s
    };
    f.push_str(&select(
        "kind",
        "Kind",
        &q.kind,
        &["shell", "exec", "sftp", "tunnel", "jump"],
    ));
    let ends: Vec<&str> = std::iter::once("live")
        .chain(chaperone_model::model::SESSION_ENDS)
        .collect();
    f.push_str(&select("ended", "How it ended", &q.ended, &ends));
    f.push_str("<button type=\"submit\">Search</button> <a href=\"/history\">Clear</a></form>");
    f
}

fn integrity(recordings: &[RecordingStatus]) -> String {
    if recordings.is_empty() {
        return "<span class=\"muted\">no recording (connection record)</span>".into();
    }
    recordings
        .iter()
        .map(|r| {
            format!(
                "<span class=\"integrity {cls}\" title=\"{detail}\">{label}</span>",
                cls = match r.integrity.as_str() {
                    "intact" => "ok",
                    "ALTERED" | "missing" => "bad",
                    _ => "muted",
                },
                detail = esc(&r.detail),
                label = esc(&r.integrity),
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else {
        format!("{:.1} GiB", n / 1024.0 / 1024.0 / 1024.0)
    }
}

fn history_table(items: &[HistoryItem]) -> String {
    let mut t = String::from(
        "<table class=\"history\"><caption>Sessions, newest first</caption><thead><tr>\
         <th scope=\"col\">Session</th><th scope=\"col\">Vendor</th><th scope=\"col\">Asset</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\">Start</th><th scope=\"col\">Duration</th>\
         <th scope=\"col\">Bytes up / down</th><th scope=\"col\">Grant and reason</th>\
         <th scope=\"col\">Ended</th><th scope=\"col\">Recording</th></tr></thead><tbody>",
    );
    for i in items {
        let reason = i.request_reason.as_deref().unwrap_or(&i.grant_reason);
        let _ = write!(
            t,
            "<tr><td data-label=\"Session\"><a href=\"/sessions/{id}\">{id}</a></td>\
             <td data-label=\"Vendor\">{vendor} <span class=\"muted\">({org})</span></td>\
             <td data-label=\"Asset\">{asset} <span class=\"muted\">({zone})</span></td>\
             <td data-label=\"Kind\">{kind} {service}</td><td data-label=\"Start\">{started}</td>\
             <td data-label=\"Duration\">{duration}</td><td data-label=\"Bytes up / down\">{up} / {down}</td>\
             <td data-label=\"Grant and reason\">#{grant} <span class=\"reason\">{reason}</span></td>\
             <td data-label=\"Ended\">{ended}</td><td data-label=\"Recording\">{integrity}</td></tr>",
            id = esc(&i.id),
            vendor = esc(&i.vendor),
            org = esc(&i.org),
            asset = esc(&i.asset),
            zone = esc(&i.zone),
            kind = esc(&i.kind),
            service = esc(&i.service),
            started = esc(&i.started),
            duration = esc(&i.duration),
            up = bytes(i.bytes_up),
            down = bytes(i.bytes_down),
            grant = i.grant_id,
            reason = esc(reason),
            ended = esc(i.end_cause.as_deref().unwrap_or("live")),
            integrity = integrity(&i.recordings),
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// `GET /sessions/{id}`: one session, with the view that fits its kind.
pub async fn session_page<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = match st.core.session_detail(&s.staff, &id).await {
        Ok(d) => d,
        Err(e) => return core_error(&e),
    };
    let i = &d.session;
    let mut main = format!(
        "<h1>Session {id}</h1>{flash}<p class=\"integrity-line\">Recording: {integrity}</p>",
        id = esc(&i.id),
        flash = notice(&s, query.as_deref()),
        integrity = integrity(&i.recordings)
    );
    let _ = write!(
        main,
        "<dl class=\"session\"><dt>Vendor</dt><dd>{vendor} ({org})</dd><dt>Asset</dt><dd>{asset}, zone {zone}</dd>\
         <dt>Kind</dt><dd>{kind} ({service}) {detail}</dd><dt>From</dt><dd>{client}</dd>\
         <dt>Started</dt><dd>{started}</dd><dt>Duration</dt><dd>{duration}</dd>\
         <dt>Bytes</dt><dd>{up} up, {down} down</dd>\
         <dt>Grant</dt><dd>#{grant}: <span class=\"reason\">{grant_reason}</span></dd>\
         <dt>Request</dt><dd>{request}</dd>\
         <dt>Ended</dt><dd>{ended}</dd><dt>Node</dt><dd>{node}</dd></dl>",
        vendor = esc(&i.vendor),
        org = esc(&i.org),
        asset = esc(&i.asset),
        zone = esc(&i.zone),
        kind = esc(&i.kind),
        service = esc(&i.service),
        detail = esc(&i.detail),
        client = esc(&i.client_addr),
        started = esc(&i.started),
        duration = esc(&i.duration),
        up = bytes(i.bytes_up),
        down = bytes(i.bytes_down),
        grant = i.grant_id,
        grant_reason = esc(&i.grant_reason),
        request = match (i.request_id, &i.request_reason) {
            (Some(r), Some(reason)) =>
                format!("#{r}: <span class=\"reason\">{}</span>", esc(reason)),
            _ => "issued by staff, no request".into(),
        },
        ended = match (&i.end_cause, &i.end_reason) {
            (Some(c), Some(r)) => format!("{} — {}", esc(c), esc(r)),
            (Some(c), None) => esc(c),
            _ => "live".into(),
        },
        node = esc(i.node.as_deref().unwrap_or("-")),
    );
    if i.ended_at.is_some() {
        let _ = write!(
            main,
            "<p class=\"evidence\"><a id=\"evidence\" class=\"button\" href=\"/sessions/{id}/evidence.tar\" download>\
             Download the evidence bundle</a> <span class=\"note\">(a tar: the recordings, the session's audit events \
             with their chain links, <code>SHA256SUMS</code> and its SSH signature; its README says how to verify it \
             with <code>ssh-keygen -Y verify</code> and <code>sha256sum -c</code>; the download is audited)</span></p>",
            id = esc(&i.id)
        );
    }
    main.push_str(&hold_section(&s, &i.id, d.hold.as_ref()));
    let mut csp = None;
    if d.live_here && i.ended_at.is_none() {
        csp = Some(PLAYER_CSP);
        let _ = write!(
            main,
            "<section aria-labelledby=\"live-h\"><h2 id=\"live-h\">Live view</h2>\
             <p class=\"note\">Read-only: what the device shows the vendor, as it happens.</p>\
             <div id=\"live\" class=\"player\" data-url=\"/sessions/{id}/live\"></div>",
            id = esc(&i.id)
        );
        if s.staff.role.can_decide() {
            let _ = write!(
                main,
                "<form method=\"post\" action=\"/sessions/{id}/terminate\" class=\"decide terminate\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"back\" value=\"/sessions/{id}\">\
                 <label for=\"term-reason\">Reason for ending it (the vendor sees it)</label>\
                 <input id=\"term-reason\" name=\"reason\" required maxlength=\"500\">\
                 <label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> Yes, end this session now (its grant stays)</label>\
                 <button type=\"submit\" class=\"deny\">Terminate</button></form>",
                id = esc(&i.id),
                csrf = esc(&s.csrf)
            );
        }
        main.push_str("</section>");
    } else if i.ended_at.is_none() {
        let _ = write!(
            main,
            "<p class=\"note\">This session is running on node {}. The live view is served by the node that \
             runs the session: open this page on that node's address.</p>",
            esc(i.node.as_deref().unwrap_or("-"))
        );
    }
    if let Some(rid) = d.playable {
        csp = Some(PLAYER_CSP);
        let _ = write!(
            main,
            "<section aria-labelledby=\"play-h\"><h2 id=\"play-h\">Recording</h2>\
             <div class=\"player-controls\">\
             <label for=\"speed\">Speed</label><select id=\"speed\"><option>0.5</option><option selected>1</option><option>2</option><option>4</option><option>8</option></select>\
             <label for=\"idle\">Idle time limit</label><select id=\"idle\"><option value=\"\">none</option><option value=\"1\">1 s</option><option value=\"2\" selected>2 s</option><option value=\"5\">5 s</option></select>\
             </div>\
             <div id=\"player\" class=\"player\" data-index=\"/sessions/{id}/recordings/{rid}/play.json\" data-search=\"/sessions/{id}/search\"></div>\
             <p id=\"player-status\" role=\"status\" aria-live=\"polite\"></p>\
             <h3>Markers</h3><ol id=\"markers\" class=\"markers\"></ol>\
             <form id=\"transcript-search\" class=\"filters\" role=\"search\" aria-label=\"Search this recording\">\
             <label for=\"ts-text\">Find in the recording</label><input id=\"ts-text\" name=\"text\" required>\
             <button type=\"submit\">Find</button></form><ol id=\"hits\" class=\"hits\" aria-live=\"polite\"></ol></section>",
            id = esc(&i.id),
        );
    } else if let Some(note) = &d.play_note {
        let _ = write!(main, "<p class=\"note\">{}</p>", esc(note));
    }
    if let Some(transfers) = &d.transfers {
        main.push_str(
            "<section aria-labelledby=\"tr-h\"><h2 id=\"tr-h\">Transfers</h2><table class=\"transfers\"><thead><tr>\
             <th scope=\"col\">Time</th><th scope=\"col\">What</th><th scope=\"col\">Path</th><th scope=\"col\">Size</th>\
             <th scope=\"col\">Outcome</th></tr></thead><tbody>",
        );
        for t in transfers {
            let _ = write!(
                main,
                "<tr><td data-label=\"Time\">{:.1} s</td><td data-label=\"What\">{}</td><td data-label=\"Path\">{}{}</td>\
                 <td data-label=\"Size\">{}</td><td data-label=\"Outcome\">{}</td></tr>",
                t.t,
                esc(&t.what),
                esc(&t.path),
                t.target
                    .as_deref()
                    .map(|x| format!(" → {}", esc(x)))
                    .unwrap_or_default(),
                t.bytes.map(|b| bytes(b as i64)).unwrap_or_default(),
                esc(&t.outcome)
            );
        }
        main.push_str("</tbody></table>");
        if d.transfers_more > 0 {
            let _ = write!(
                main,
                "<p class=\"note\">{} more not shown.</p>",
                d.transfers_more
            );
        }
        main.push_str("</section>");
    }
    if i.kind == "tunnel" || i.kind == "jump" {
        let _ = write!(
            main,
            "<section aria-labelledby=\"conn-h\"><h2 id=\"conn-h\">Connection record</h2><table><tbody>\
             <tr><th scope=\"row\">Originator</th><td>{client} ({detail})</td></tr>\
             <tr><th scope=\"row\">Bytes vendor → device</th><td>{up}</td></tr>\
             <tr><th scope=\"row\">Bytes device → vendor</th><td>{down}</td></tr>\
             <tr><th scope=\"row\">Start</th><td>{started}</td></tr><tr><th scope=\"row\">Duration</th><td>{duration}</td></tr>\
             </tbody></table></section>",
            client = esc(&i.client_addr),
            detail = esc(&i.detail),
            up = bytes(i.bytes_up),
            down = bytes(i.bytes_down),
            started = esc(&i.started),
            duration = esc(&i.duration),
        );
    }
    if i.kind == "jump" {
        main.push_str("<section aria-labelledby=\"inner-h\"><h2 id=\"inner-h\">Sessions through this jump</h2>");
        if d.inner.is_empty() {
            main.push_str("<p>None recorded.</p>");
        } else {
            main.push_str(&history_table(&d.inner));
        }
        main.push_str("</section>");
    }
    main.push_str(
        "<section aria-labelledby=\"audit-h\"><h2 id=\"audit-h\">Audit history</h2><table class=\"audit\"><thead><tr>\
         <th scope=\"col\">#</th><th scope=\"col\">When</th><th scope=\"col\">Who</th><th scope=\"col\">What</th>\
         <th scope=\"col\">Detail</th></tr></thead><tbody>",
    );
    for a in &d.audit {
        let _ = write!(
            main,
            "<tr><td data-label=\"#\">{}</td><td data-label=\"When\">{}</td><td data-label=\"Who\">{}</td>\
             <td data-label=\"What\">{}</td><td data-label=\"Detail\"><code>{}</code></td></tr>",
            a.seq,
            esc(&a.at),
            esc(&a.actor),
            esc(&a.action),
            esc(&a.detail)
        );
    }
    main.push_str("</tbody></table>");
    if let Some(note) = &d.audit_note {
        let _ = write!(main, "<p class=\"note\">{}</p>", esc(note));
    }
    main.push_str("</section>");
    let mut html = page(
        &format!("Session {}", i.id),
        "Session history",
        Some(&viewer(&s)),
        &main,
    );
    if csp.is_some() {
        html = html.replace(
            "<script src=\"/static/app.js\" defer></script>",
            "<link rel=\"stylesheet\" href=\"/static/asciinema-player.css\">\
             <script src=\"/static/app.js\" defer></script>\
             <script src=\"/static/asciinema-player.min.js\" defer></script>\
             <script src=\"/static/session.js\" defer></script>",
        );
        // The player replaces itself on live refreshes: this page does not refresh <main>.
        html = html.replacen(" data-live=\"1\"", "", 1);
    }
    let mut response = Html(html).into_response();
    if let Some(csp) = csp {
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct PlayParams {
    #[serde(default)]
    idle: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

fn idle(p: &PlayParams) -> Option<f64> {
    p.idle
        .as_deref()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// `GET /sessions/{id}/recordings/{rid}/play.json?idle=2`: the player's index.
pub async fn play_index<C: Core>(
    State(st): St<C>,
    Path((id, rid)): Path<(String, i64)>,
    headers: HeaderMap,
    Query(p): Query<PlayParams>,
) -> Response {
    let s = match crate::api::reader(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.core.playback_index(&s.staff, &id, rid, idle(&p)).await {
        Ok(body) => json_text(body),
        Err(e) => json_error(&e),
    }
}

/// `GET /sessions/{id}/recordings/{rid}/segments/{n}?idle=2`: one segment.
pub async fn play_segment<C: Core>(
    State(st): St<C>,
    Path((id, rid, n)): Path<(String, i64, usize)>,
    headers: HeaderMap,
    Query(p): Query<PlayParams>,
) -> Response {
    let s = match crate::api::reader(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st
        .core
        .playback_segment(&s.staff, &id, rid, n, idle(&p))
        .await
    {
        Ok(body) => json_text(body),
        Err(e) => json_error(&e),
    }
}

/// `GET /sessions/{id}/search?text=…&idle=2`: matching lines with their times.
pub async fn transcript_search<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(p): Query<PlayParams>,
) -> Response {
    let s = match crate::api::reader(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = p.text.clone().unwrap_or_default();
    match st
        .core
        .transcript_search(&s.staff, &id, &text, idle(&p))
        .await
    {
        Ok(hits) => Json(hits).into_response(),
        Err(e) => json_error(&e),
    }
}

/// The signed-in session of a live view's request, read without counting as activity (a view is not a
/// person at the page); else the answer an `EventSource` acts on (it gives up on a 401 and retries on
/// a 503).
async fn watcher<C: Core>(
    st: &WebState<C>,
    headers: &HeaderMap,
) -> Result<crate::auth::Session, Response> {
    match st.peek_session(headers).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(StatusCode::UNAUTHORIZED.into_response()),
        Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE.into_response()),
    }
}

/// `GET /sessions/{id}/live`: the live view's server-sent events (asciinema-player's `eventsource`
/// driver: `message` events, then `done`). A watcher that falls behind skips ahead; the session never
/// waits for a watcher. The view ends, without `done`, once the watcher's web session is gone
/// ([`crate::auth::while_signed_in`]).
pub async fn live<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = match watcher(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let stream = match st.core.watch(&s.staff, &id).await {
        Ok(stream) => stream,
        // EventSource retries on errors other than 4xx-ish closes; a 404 ends it.
        Err(e) => return json_error(&e),
    };
    let events = stream
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)))
        .chain(futures::stream::once(async {
            Ok(Event::default().event("done").data("{}"))
        }));
    let events = crate::auth::while_signed_in(st, headers, events);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response()
}

/// `GET /sessions/{id}/live/check`: whether the live view would be shown now (`{"ok": true}`), or the
/// error it would be refused with (409 ended or elsewhere, 429 too many views open): the page asks
/// before it opens the stream, whose refusal an `EventSource` cannot read.
pub async fn live_check<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = match watcher(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.core.watchable(&s.staff, &id).await {
        Ok(()) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"ok": true})),
        )
            .into_response(),
        Err(e) => json_error(&e),
    }
}

/// `GET /sessions/{id}/evidence.tar`: the session's evidence bundle, streamed as it is written
/// (audited `evidence.export`). An error found before the first byte is an error page; one after it
/// cuts the download short.
pub async fn evidence<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.core.evidence_bundle(&s.staff, &id).await {
        Ok(d) => {
            // The name goes into a header: only characters that need no quoting there.
            let name: String = d
                .file_name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .collect();
            let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .unwrap_or(HeaderValue::from_static(
                    "attachment; filename=\"evidence.tar\"",
                ));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-tar"),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                axum::body::Body::from_stream(d.chunks),
            )
                .into_response()
        }
        Err(e) => core_error(&e),
    }
}

/// The page that asks before a session is ended: what it is, and the reason (required, shown to the
/// vendor).
fn terminate_confirmation(
    s: &crate::auth::Session,
    v: &crate::SessionView,
    back: &str,
    reason: &str,
    problem: Option<&str>,
) -> String {
    format!(
        "<h1>Terminate this session?</h1>{problem}\
         <p>{vendor}'s {kind} session on {asset} (grant #{grant}, from {addr}, started {started}) is closed within \
         seconds and the vendor is shown your reason. The grant stays: they can connect again while it lasts \
         (revoke the grant to end all access).</p>\
         <form method=\"post\" action=\"/sessions/{id}/terminate\" class=\"confirm\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <input type=\"hidden\" name=\"back\" value=\"{back}\">\
         <label for=\"reason\">Why it is ended (the vendor sees it)</label>\
         <input id=\"reason\" name=\"reason\" value=\"{reason}\" required maxlength=\"500\" autofocus>\
         <div class=\"actions\"><button type=\"submit\" class=\"deny\">Terminate the session now</button>\
         <a class=\"button secondary\" href=\"{back}\">Cancel, let it run</a></div></form>",
        problem = problem
            .map(|p| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(p)))
            .unwrap_or_default(),
        id = esc(&v.id),
        vendor = esc(&v.vendor),
        kind = esc(&v.kind),
        asset = esc(&v.asset),
        grant = v.grant_id,
        addr = esc(&v.client_addr),
        started = esc(&v.started),
        csrf = esc(&s.csrf),
        back = esc(back),
        reason = esc(reason),
    )
}

/// The confirmation page for ending live session `id` (an error page once it has ended).
async fn ask_terminate<C: Core>(
    st: &WebState<C>,
    s: &crate::auth::Session,
    id: &str,
    back: &str,
    reason: &str,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let v = match st.core.live_session(&s.staff, id).await {
        Ok(v) => v,
        Err(e) => return core_error(&e),
    };
    (
        status,
        Html(page_with(
            "Terminate a session",
            "Live sessions",
            Some(&viewer(s)),
            &terminate_confirmation(s, &v, back, reason, problem),
            false,
        )),
    )
        .into_response()
}

/// The session page's legal hold: what holds it, and (for auditors and admins) the form that places or
/// releases it.
fn hold_section(s: &crate::auth::Session, id: &str, hold: Option<&crate::HoldView>) -> String {
    let mut out =
        String::from("<section aria-labelledby=\"hold-h\"><h2 id=\"hold-h\">Legal hold</h2>");
    match hold {
        Some(h) => {
            let _ = write!(
                out,
                "<p class=\"hold\">On legal hold since {at}, placed by {by}: <span class=\"reason\">{reason}</span>. \
                 Its recordings are kept, whatever their retention, until the hold is released.</p>",
                at = esc(&h.at),
                by = esc(&h.by),
                reason = esc(&h.reason)
            );
        }
        None => out.push_str(
            "<p class=\"note\">Not on legal hold: its recordings are kept for the configured retention.</p>",
        ),
    }
    if s.staff.role.can_hold() {
        let (verb, on) = if hold.is_some() {
            ("Release the hold", "no")
        } else {
            ("Place a legal hold", "yes")
        };
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/sessions/{id}/hold\" class=\"decide hold\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"hold\" value=\"{on}\">\
             <label for=\"hold-reason\">Reason (a case, a request from counsel; audited)</label>\
             <input id=\"hold-reason\" name=\"reason\" required maxlength=\"1000\">\
             <button type=\"submit\">{verb}</button></form>",
            id = esc(id),
            csrf = esc(&s.csrf),
        );
    }
    out.push_str("</section>");
    out
}

/// `POST /sessions/{id}/hold` from the session page: places (`hold=yes`) or releases the legal hold;
/// auditors and admins, with a reason (the core says no otherwise, and why).
pub async fn hold<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    let s = match change(&st, &headers, &pairs).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Said outright either way: a form missing the field changes nothing.
    let on = match field(&pairs, "hold") {
        Some("yes") => true,
        Some("no") => false,
        _ => {
            return core_error(&CoreError::Invalid(
                "say whether to place (hold=yes) or release (hold=no) the legal hold".into(),
            ));
        }
    };
    let reason = field(&pairs, "reason").unwrap_or_default();
    match st.core.legal_hold(&s.staff, &id, reason, on).await {
        Ok(()) => {
            let said = if on {
                format!(
                    "Session {id} is on legal hold: its recordings are kept until it is released."
                )
            } else {
                format!(
                    "Session {id}'s legal hold is released: its recordings' retention applies again."
                )
            };
            st.redirect_with_notice(&headers, said, &format!("/sessions/{id}"))
                .await
        }
        Err(e) => core_error(&e),
    }
}

/// `POST /sessions/{id}/terminate` from the live list or the session page. Ending a vendor's work is
/// not undone, so it is asked twice: without `confirm=yes` (the list's form) the answer is the
/// confirmation page; the session page's form carries its own tick box. The reason is required by
/// the core; a refusal shows the confirmation again with why.
pub async fn terminate<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    let s = match change(&st, &headers, &pairs).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let back = match field(&pairs, "back") {
        Some(b) if b == format!("/sessions/{id}") => b.to_owned(),
        _ => "/sessions".to_owned(),
    };
    let reason = field(&pairs, "reason").unwrap_or_default();
    if field(&pairs, "confirm") != Some("yes") {
        return ask_terminate(&st, &s, &id, &back, reason, StatusCode::OK, None).await;
    }
    match st.core.terminate_session(&s.staff, &id, reason).await {
        Ok(()) => {
            st.redirect_with_notice(
                &headers,
                format!("Session {id} is being closed; its grant stays (revoke the grant to end all access)."),
                &back,
            )
            .await
        }
        Err(CoreError::Invalid(why)) => {
            ask_terminate(&st, &s, &id, &back, reason, StatusCode::BAD_REQUEST, Some(&why)).await
        }
        Err(e) => core_error(&e),
    }
}

/// `GET /api/sessions`: the history (`?state=live`: the live sessions, as before).
pub async fn api_sessions<C: Core>(
    State(st): St<C>,
    headers: HeaderMap,
    Query(q): Query<ApiSessionsQuery>,
) -> Response {
    let s = match crate::api::reader(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if q.state.as_deref() == Some("live") {
        return match st.core.live_sessions(&s.staff).await {
            Ok(list) => Json(list).into_response(),
            Err(e) => json_error(&e),
        };
    }
    match st.core.history(&s.staff, &q.history).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => json_error(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct ApiSessionsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(flatten)]
    history: HistoryQuery,
}

/// `GET /api/sessions/{id}`: one session as its page shows it.
pub async fn api_session<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = match crate::api::reader(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.core.session_detail(&s.staff, &id).await {
        Ok(d) => Json(d).into_response(),
        Err(e) => json_error(&e),
    }
}
