//! The JSON API under `/api`, with the pages' authentication: `POST /api/login` with name, password and
//! TOTP code returns the session cookie and a CSRF token; every state change sends the token back in
//! `X-CSRF-Token`. Errors are `{"error": "…"}` with the same status codes as the pages.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Session, csrf_ok, set_cookie};
use crate::signin::sign_in;
use crate::{Core, CoreError, Decision, DecisionsQuery, Peer, WebState, status_of};

type St<C> = State<Arc<WebState<C>>>;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The store could not say whether the session is signed in: retry, rather than "sign in again".
fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is not answering; try again shortly",
    )
}

fn core_error(e: &CoreError) -> Response {
    match e {
        CoreError::Internal => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        other => error(status_of(other), &other.to_string()),
    }
}

pub(crate) async fn reader<C: Core>(
    st: &WebState<C>,
    headers: &HeaderMap,
) -> Result<Session, Response> {
    match st.session(headers).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(error(
            StatusCode::UNAUTHORIZED,
            "sign in first: POST /api/login",
        )),
        Err(_) => Err(unavailable()),
    }
}

async fn writer<C: Core>(st: &WebState<C>, headers: &HeaderMap) -> Result<Session, Response> {
    let s = reader(st, headers).await?;
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !csrf_ok(&s, token) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token (use the csrf value from POST /api/login)",
        ));
    }
    Ok(s)
}

#[derive(Deserialize)]
pub struct LoginBody {
    name: String,
    password: String,
    code: String,
}

pub async fn login<C: Core>(
    State(st): St<C>,
    ConnectInfo(crate::tls::PeerAddr(peer)): Peer,
    Json(body): Json<LoginBody>,
) -> Response {
    match sign_in(&st, peer, &body.name, &body.password, &body.code).await {
        Ok((staff, token, csrf)) => (
            [(header::SET_COOKIE, set_cookie(&token))],
            Json(json!({"name": staff.name, "role": staff.role, "method": staff.method, "csrf": csrf})),
        )
            .into_response(),
        Err(e) => error(e.status(), e.message()),
    }
}

/// `GET /api/requests`: the pending requests, the one waiting longest first (a list, as before; at most
/// a page's worth, and `X-Total-Count` says how many wait in all); with `?state=decided` (or
/// `approved`, `narrowed`, `denied`, `expired`) and optional `vendor`, `asset`, `page`: a page of
/// decided requests, `{"requests": [...], "page": N, "more": bool}`.
pub async fn requests<C: Core>(
    State(st): St<C>,
    headers: HeaderMap,
    Query(q): Query<DecisionsQuery>,
) -> Response {
    if let Err(r) = reader(&st, &headers).await {
        return r;
    }
    match q.state.as_deref() {
        None | Some("" | "pending") => match st.core.pending_requests().await {
            Ok(list) => (
                [("x-total-count", list.total.to_string())],
                Json(list.requests),
            )
                .into_response(),
            Err(e) => core_error(&e),
        },
        Some(_) => match st.core.decided_requests(&q).await {
            Ok(page) => Json(page).into_response(),
            Err(e) => core_error(&e),
        },
    }
}

pub async fn request<C: Core>(
    State(st): St<C>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = reader(&st, &headers).await {
        return r;
    }
    match st.core.request(id).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => core_error(&e),
    }
}

pub async fn decide<C: Core>(
    State(st): St<C>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Json(decision): Json<Decision>,
) -> Response {
    let s = match writer(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.core.decide(&s.staff, id, decision).await {
        Ok(message) => match st.core.request(id).await {
            Ok(r) => Json(json!({"message": message, "request": r})).into_response(),
            Err(e) => core_error(&e),
        },
        Err(e) => core_error(&e),
    }
}

pub async fn grants<C: Core>(State(st): St<C>, headers: HeaderMap) -> Response {
    if let Err(r) = reader(&st, &headers).await {
        return r;
    }
    match st.core.active_grants().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => core_error(&e),
    }
}

#[derive(Deserialize, Default)]
pub struct RevokeBody {
    #[serde(default)]
    reason: String,
}

/// `POST /api/grants/{id}/revoke` with `{"reason": "…"}`: a blank or missing reason is refused (400) by
/// the policy, like every other way to revoke.
pub async fn revoke<C: Core>(
    State(st): St<C>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Option<Json<RevokeBody>>,
) -> Response {
    let s = match writer(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    match st.core.revoke_grant(&s.staff, id, &reason).await {
        Ok(()) => Json(json!({"revoked": id})).into_response(),
        Err(e) => core_error(&e),
    }
}

#[derive(Deserialize)]
pub struct HoldBody {
    #[serde(default)]
    reason: String,
    /// `true` places the hold, `false` releases it.
    hold: bool,
}

/// `POST /api/sessions/{id}/hold` with `{"hold": true|false, "reason": "…"}`: auditors and admins.
pub async fn hold<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<HoldBody>,
) -> Response {
    let s = match writer(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st
        .core
        .legal_hold(&s.staff, &id, &body.reason, body.hold)
        .await
    {
        Ok(()) => Json(json!({"session": id, "hold": body.hold})).into_response(),
        Err(e) => core_error(&e),
    }
}

pub async fn terminate<C: Core>(
    State(st): St<C>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<RevokeBody>>,
) -> Response {
    let s = match writer(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    match st.core.terminate_session(&s.staff, &id, &reason).await {
        Ok(()) => Json(json!({"terminated": id})).into_response(),
        Err(e) => core_error(&e),
    }
}
