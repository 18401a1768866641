//! The process's Prometheus metrics: counters fed where things happen, gauges read at scrape time.
//!
//! Entry points: the one-line recorders ([`login`], [`lockout`], [`session_started`], [`session_ended`],
//! [`relayed`], [`recording_closed`], [`recording_failed`], [`delivery_failed`], [`atna_sent`],
//! [`db_acquired`]) called from the SSH path, the session pipeline, the store and the audit consumers,
//! and [`render`] (the text format, with the database-backed gauges filled in first). The registry is a
//! process-wide static: a counter costs one atomic add and needs no handle passed around.
//!
//! Names follow Prometheus' conventions (`_total` counters, `_bytes`, `_seconds`), checked by `promtool
//! check metrics` in the tests.

use std::sync::LazyLock;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::app::App;

struct Metrics {
    registry: Registry,
    logins: IntCounterVec,
    lockouts: IntCounter,
    live_sessions: IntGaugeVec,
    sessions: IntCounterVec,
    relayed: IntCounterVec,
    recording_bytes: IntCounter,
    recording_failures: IntCounter,
    deliveries_failed: IntCounterVec,
    atna_sent: IntCounter,
    db_acquire: Histogram,
    // Read from the database at scrape time.
    pending_requests: IntGauge,
    active_grants: IntGauge,
    backlog: IntGaugeVec,
    head_sealed: IntGauge,
    db_connections: IntGaugeVec,
    db_up: IntGauge,
    clock_skew: IntGauge,
    directory_synced: IntGaugeVec,
}

/// The names and help texts are fixed, so registering cannot fail: the `expect`s below run once, at
/// first use, on constant input (and a test renders every metric).
#[allow(clippy::expect_used)]
fn build() -> Metrics {
    let registry = Registry::new();
    fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
        r.register(Box::new(c.clone()))
            .expect("metric names are constant and unique");
        c
    }
    let counter_vec = |name: &str, help: &str, labels: &[&str]| {
        reg(
            &registry,
            IntCounterVec::new(Opts::new(name, help), labels).expect("constant metric"),
        )
    };
    let counter = |name: &str, help: &str| {
        reg(
            &registry,
            IntCounter::new(name, help).expect("constant metric"),
        )
    };
    let gauge = |name: &str, help: &str| {
        reg(
            &registry,
            IntGauge::new(name, help).expect("constant metric"),
        )
    };
    let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
        reg(
            &registry,
            IntGaugeVec::new(Opts::new(name, help), labels).expect("constant metric"),
        )
    };
    let build_info = gauge_vec(
        "chaperone_build_info",
        "Always 1; the labels say which chaperone this is.",
        &["version"],
    );
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    let m = Metrics {
        logins: counter_vec(
            "chaperone_ssh_logins_total",
            "Vendor sign-ins on the SSH listener by outcome (success, failure, refused).",
            &["outcome"],
        ),
        lockouts: counter(
            "chaperone_ssh_lockouts_total",
            "Vendors locked out after too many failures.",
        ),
        live_sessions: gauge_vec(
            "chaperone_live_sessions",
            "Sessions running on this node, by kind (shell, exec, sftp, tunnel, jump).",
            &["kind"],
        ),
        sessions: counter_vec(
            "chaperone_sessions_total",
            "Sessions started on this node, by kind.",
            &["kind"],
        ),
        relayed: counter_vec(
            "chaperone_relayed_bytes_total",
            "Bytes relayed between vendors and devices: up (vendor to device) and down.",
            &["direction"],
        ),
        recording_bytes: counter(
            "chaperone_recording_bytes_total",
            "Bytes of recordings closed and digested.",
        ),
        recording_failures: counter(
            "chaperone_recording_failures_total",
            "Recordings that failed (their sessions ended: no recording, no session).",
        ),
        deliveries_failed: counter_vec(
            "chaperone_delivery_failures_total",
            "Failed deliveries of audit events, by consumer (webhook, atna, mail); each is retried.",
            &["consumer"],
        ),
        atna_sent: counter(
            "chaperone_atna_messages_total",
            "ATNA audit messages delivered.",
        ),
        db_acquire: reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "chaperone_db_pool_wait_seconds",
                    "Time spent waiting for a database connection to begin a write transaction.",
                )
                .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0]),
            )
            .expect("constant metric"),
        ),
        pending_requests: gauge(
            "chaperone_pending_requests",
            "Access requests waiting for a decision.",
        ),
        active_grants: gauge("chaperone_active_grants", "Grants in force now."),
        backlog: gauge_vec(
            "chaperone_audit_backlog_events",
            "Audit events a consumer (webhook, atna) has not handled yet.",
            &["consumer"],
        ),
        head_sealed: gauge(
            "chaperone_audit_head_sealed",
            "1 when the audit chain's head carries its seal under this node's secrets key; 0: written by \
             someone without the key (or this node holds another key), and nothing more is sent to \
             the webhook, ATNA or mail until it is sealed again.",
        ),
        db_connections: gauge_vec(
            "chaperone_db_connections",
            "Database pool connections on this node (state: open, idle).",
            &["state"],
        ),
        db_up: gauge(
            "chaperone_db_up",
            "1 when the database answered the last scrape.",
        ),
        clock_skew: gauge(
            "chaperone_clock_skew_seconds",
            "This node's clock minus the database's, at the last heartbeat.",
        ),
        directory_synced: gauge_vec(
            "chaperone_directory_sync_timestamp_seconds",
            "When this node last finished a directory pass without an error (what: staff re-check, \
             vendors sync), as Unix time. While the directory cannot be read, nobody it removed or \
             disabled is removed here: alert when it falls behind its interval.",
            &["what"],
        ),
        registry,
    };
    // Every label value known in advance shows from the first scrape, at 0.
    for outcome in ["success", "failure", "refused"] {
        m.logins.with_label_values(&[outcome]);
    }
    for kind in ["shell", "exec", "sftp", "tunnel", "jump"] {
        m.live_sessions.with_label_values(&[kind]);
        m.sessions.with_label_values(&[kind]);
    }
    for d in ["up", "down"] {
        m.relayed.with_label_values(&[d]);
    }
    for c in ["webhook", "atna", "mail"] {
        m.deliveries_failed.with_label_values(&[c]);
    }
    m
}

static METRICS: LazyLock<Metrics> = LazyLock::new(build);

/// Login outcomes on the SSH listener.
#[derive(Debug, Clone, Copy)]
pub enum Login {
    Success,
    /// A wrong second factor.
    Failure,
    /// A locked or disabled vendor.
    Refused,
}

pub fn login(outcome: Login) {
    let label = match outcome {
        Login::Success => "success",
        Login::Failure => "failure",
        Login::Refused => "refused",
    };
    METRICS.logins.with_label_values(&[label]).inc();
}

pub fn lockout() {
    METRICS.lockouts.inc();
}

pub fn session_started(kind: &str) {
    METRICS.sessions.with_label_values(&[kind]).inc();
    METRICS.live_sessions.with_label_values(&[kind]).inc();
}

pub fn session_ended(kind: &str) {
    METRICS.live_sessions.with_label_values(&[kind]).dec();
}

/// `up`: vendor to device.
pub fn relayed(up: bool, n: usize) {
    METRICS
        .relayed
        .with_label_values(&[if up { "up" } else { "down" }])
        .inc_by(n as u64);
}

pub fn recording_closed(bytes: u64) {
    METRICS.recording_bytes.inc_by(bytes);
}

pub fn recording_failed() {
    METRICS.recording_failures.inc();
}

pub fn delivery_failed(consumer: &str) {
    METRICS
        .deliveries_failed
        .with_label_values(&[consumer])
        .inc();
}

pub fn atna_sent() {
    METRICS.atna_sent.inc();
}

/// A directory pass (`what`: `staff` or `vendors`) finished without an error at `at` (`identity::directory`).
pub fn directory_synced(what: &str, at: i64) {
    METRICS.directory_synced.with_label_values(&[what]).set(at);
}

/// This node's clock minus the database's (`node::heartbeat`).
pub fn clock_skew(seconds: i64) {
    METRICS.clock_skew.set(seconds);
}

pub fn db_acquired(waited: std::time::Duration) {
    METRICS.db_acquire.observe(waited.as_secs_f64());
}

/// The text format (Prometheus 0.0.4), after reading the gauges the database knows. A database that
/// does not answer leaves those gauges as they were and `chaperone_db_up` at 0.
/// How long the gauges read from the database stand: a scrape within this of the last read does not read
/// again (the listener needs no sign-in, and scrapes in a loop must not keep busy the pool the vendors'
/// grant checks use).
const DB_GAUGES_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// When the database's gauges were last read; one read at a time.
static DB_GAUGES_READ: LazyLock<tokio::sync::Mutex<Option<std::time::Instant>>> =
    LazyLock::new(|| tokio::sync::Mutex::new(None));

pub async fn render(app: &App) -> String {
    let m = &*METRICS;
    let mut read = DB_GAUGES_READ.lock().await;
    if read.is_none_or(|at| at.elapsed() >= DB_GAUGES_FRESH) {
        database_gauges(app).await;
        *read = Some(std::time::Instant::now());
    }
    drop(read);
    let (open, idle) = app.store.pool_status();
    m.db_connections
        .with_label_values(&["open"])
        .set(i64::from(open));
    m.db_connections
        .with_label_values(&["idle"])
        .set(i64::try_from(idle).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    // Encoding into a Vec fails only on an I/O error, which a Vec has none of.
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics: encoding failed");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the gauges that come from the database (requests, grants, consumers' backlogs, the head's
/// seal) into the registry.
async fn database_gauges(app: &App) {
    let m = &*METRICS;
    match app.store.ops_counts(app.clock.now()).await {
        Ok(counts) => {
            m.db_up.set(1);
            m.pending_requests.set(counts.pending_requests);
            m.active_grants.set(counts.active_grants);
            for (consumer, behind) in counts.backlogs {
                m.backlog.with_label_values(&[&consumer]).set(behind);
            }
            m.head_sealed.set(i64::from(counts.head_sealed));
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the database did not answer");
            m.db_up.set(0);
        }
    }
}
