//! The operators' listener (`[ops] listen`): Prometheus metrics and health checks, apart from the
//! vendors' SSH and the approvers' web page, in plain HTTP with no sign-in (bind it to loopback or a
//! management network).
//!
//! Entry points: [`serve`] (from `server::run`), [`Readiness`] (what `/readyz` answers from: the
//! listeners say when they serve and when they stop) and [`metrics`] (the counters themselves).
//!
//! - `GET /metrics`: the text format (`metrics::render`).
//! - `GET /healthz`: 200 while the process answers at all (liveness; but whoever can reach the listener
//!   can fill its connections and fail the probe: a restart ends every vendor session, so it is not a
//!   reason to restart on its own).
//! - `GET /readyz`: 200 when the SSH and web listeners serve and the database answers; 503 naming what
//!   is not ready otherwise (readiness: send no traffic here meanwhile).

pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::app::App;

/// Whether the listeners serve, as `server::run` tells it.
#[derive(Debug, Default)]
pub struct Readiness {
    pub ssh: AtomicBool,
    pub web: AtomicBool,
}

#[derive(Clone)]
struct Ops {
    app: App,
    ready: Arc<Readiness>,
}

pub fn router(app: App, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { app, ready })
}

async fn metrics_page(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&ops.app).await,
    )
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let mut missing = Vec::new();
    if !ops.ready.ssh.load(Ordering::Relaxed) {
        missing.push("the SSH listener is not serving".to_owned());
    }
    if !ops.ready.web.load(Ordering::Relaxed) {
        missing.push("the web listener is not serving".to_owned());
    }
    let ping = tokio::time::timeout(std::time::Duration::from_secs(5), ops.app.store.ping()).await;
    match ping {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: the database did not answer");
            missing.push("the database does not answer".to_owned());
        }
        Err(_) => missing.push("the database did not answer within 5s".to_owned()),
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join("; ")),
        )
    }
}

/// The ops listener's caps: scrapers and probes are a few at a time. Without them an address that can
/// reach the listener (it needs no sign-in) could hold connections open until the process ran out of
/// file descriptors, and with them every vendor session (no recording, no session).
pub const LIMITS: chaperone_web_approval::serve::Limits = chaperone_web_approval::serve::Limits {
    header_read_timeout: std::time::Duration::from_secs(10),
    keepalive_timeout: std::time::Duration::from_secs(15),
    max_connections: 32,
    max_connections_per_source: 8,
};

/// Serves the ops endpoints on `listener` until `shutdown` completes, through the web listener's
/// bounded server ([`LIMITS`]: connection caps, header and idle time-outs), in plain HTTP.
pub async fn serve(
    listener: TcpListener,
    app: App,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    chaperone_web_approval::serve::serve(
        listener,
        chaperone_web_approval::serve::Transport::Plain,
        router(app, ready),
        LIMITS,
        shutdown,
    )
    .await;
}
