//! The approvers' and auditors' web page. It knows HTTP (and, with the approvals work, WebAuthn) but not
//! SSH or SQL: it reaches the core only through a trait the root crate implements.
//!
//! Entry point: [`router`]. Today it answers the health check that load balancers and `chaperone demo`
//! use; the approval pages arrive with the approvals issue.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// Builds the web application.
pub fn router() -> Router {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "ok\n",
    )
}
