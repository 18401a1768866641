//! The listeners: vendors' SSH and the approvers' web page, sharing one shutdown signal.
//!
//! Entry points: [`bind`] (so tests can bind `127.0.0.1:0` and read the ports back), [`run`] (serves until
//! the `shutdown` future completes) and [`shutdown_signal`] (SIGTERM or Ctrl-C).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;
use crate::ssh;
use crate::store::StoreError;

/// Why serving could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener's address could not be bound (in use, not ours, no permission for the port).
    #[error("binding the {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A bound listener could not say its address.
    #[error("reading the {what} listener's address")]
    Address {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("registering this node")]
    Node(#[source] StoreError),
    #[error("setting up the webhook")]
    Webhook(#[source] crate::webhook::SetupError),
    #[error("setting up the IHE ATNA export ([atna])")]
    Atna(#[source] crate::atna::SetupError),
    #[error("setting up e-mail to approvers ([mail])")]
    Mail(#[source] crate::mail::SetupError),
    #[error("starting the SSH listener")]
    Ssh(#[source] ssh::ListenerError),
    /// The web certificate or key file cannot be read.
    #[error(
        "reading {path} (web.tls_cert / web.tls_key; `chaperone init` makes a self-signed pair)"
    )]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The web certificate and key do not make a TLS configuration.
    #[error("loading the web certificate {cert} and key {key}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: chaperone_web_approval::tls::TlsError,
    },
    /// A listener stopped by itself (a panic, an I/O error it cannot serve past): the process stops too.
    #[error("{0}")]
    Stopped(String),
}

/// Bound sockets, before serving.
#[derive(Debug)]
pub struct Listeners {
    pub ssh: TcpListener,
    pub web: TcpListener,
    /// `[ops] listen`, when set.
    pub ops: Option<TcpListener>,
}

impl Listeners {
    pub fn ssh_addr(&self) -> Result<SocketAddr, ServerError> {
        self.ssh
            .local_addr()
            .map_err(|source| ServerError::Address {
                what: "SSH",
                source,
            })
    }
    pub fn ops_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        self.ops
            .as_ref()
            .map(|l| {
                l.local_addr().map_err(|source| ServerError::Address {
                    what: "ops",
                    source,
                })
            })
            .transpose()
    }
    pub fn web_addr(&self) -> Result<SocketAddr, ServerError> {
        self.web
            .local_addr()
            .map_err(|source| ServerError::Address {
                what: "web",
                source,
            })
    }
}

pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
    let bind = async |what: &'static str, addr: SocketAddr| {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { what, addr, source })
    };
    Ok(Listeners {
        ssh: bind("SSH", config.ssh.listen).await?,
        web: bind("web", config.web.listen).await?,
        ops: match &config.ops {
            Some(ops) => Some(bind("ops", ops.listen).await?),
            None => None,
        },
    })
}

/// Serves both listeners until `shutdown` completes, then stops accepting and closes live connections.
pub async fn run(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let webhook_task = match app.config.webhook.clone() {
        Some(config) => Some(
            crate::webhook::spawn(app.clone(), config, stop_rx.clone())
                .map_err(ServerError::Webhook)?,
        ),
        None => None,
    };
    let atna_task = match app.config.atna.clone() {
        Some(config) => Some(
            crate::atna::spawn(app.clone(), config, stop_rx.clone()).map_err(ServerError::Atna)?,
        ),
        None => None,
    };
    let mail_task = match app.config.mail.clone() {
        Some(config) => Some(
            crate::mail::spawn(app.clone(), config, stop_rx.clone()).map_err(ServerError::Mail)?,
        ),
        None => None,
    };
    let mut skew = crate::node::Skew::default();
    crate::node::heartbeat(&app, &mut skew)
        .await
        .map_err(ServerError::Node)?;
    for warning in app.config.warnings() {
        tracing::warn!("{warning}");
    }
    // Everything that can fail at start fails here, before "serving" is logged.
    let (ssh_addr, web_addr) = (listeners.ssh_addr()?, listeners.web_addr()?);
    let ops_addr = listeners.ops_addr()?;
    let ssh_listener = ssh::Listener::new(&app, listeners.ssh).map_err(ServerError::Ssh)?;
    let tls = web_tls(&app.config)?;
    let live = ssh_listener.live();
    let node_task = tokio::spawn(crate::node::run(
        app.clone(),
        live.clone(),
        skew,
        stop_rx.clone(),
    ));
    tokio::spawn(crate::search_index::run(app.clone(), stop_rx.clone()));
    let ready = std::sync::Arc::new(crate::ops::Readiness::default());
    let ops_task = listeners.ops.map(|listener| {
        let mut ops_stop = stop_rx.clone();
        tokio::spawn(crate::ops::serve(
            listener,
            app.clone(),
            ready.clone(),
            async move {
                let _ = ops_stop.wait_for(|stop| *stop).await;
            },
        ))
    });
    tokio::spawn(crate::evidence::retention::run(
        app.clone(),
        stop_rx.clone(),
    ));
    let mut ssh_task = tokio::spawn(ssh_listener.serve(stop_rx.clone()));
    tokio::spawn(expire_requests(app.clone(), stop_rx.clone()));
    tokio::spawn(revoke_outside_organisations(app.clone()));
    // Directory staff re-checked and directory vendors synced ([ldap]; nothing without it).
    tokio::spawn(crate::identity::directory::run(
        app.clone(),
        stop_rx.clone(),
    ));
    let mut web_stop = stop_rx.clone();
    let router = chaperone_web_approval::router(
        std::sync::Arc::new(crate::web::WebCore::new(app.clone(), live)),
        chaperone_web_approval::WebOptions {
            idle_timeout: app.config.web.idle_timeout,
            max_session_age: app.config.web.max_session_age,
            public_url: Some(app.config.web.public_url.clone()),
            decoy_key: Some(*app.secrets.subkey("passkey-decoy-credentials")),
            ..Default::default()
        },
    );
    tracing::info!(
        config = %app.config.path.display(),
        ssh = %ssh_addr,
        web = %web_addr,
        ops = %ops_addr.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        "chaperone serving"
    );
    let web = &app.config.web;
    let limits = chaperone_web_approval::serve::Limits {
        header_read_timeout: web.header_read_timeout,
        keepalive_timeout: web.keepalive_timeout,
        max_connections: web.max_connections,
        max_connections_per_source: web.max_connections_per_address,
    };
    let mut web_task = tokio::spawn(chaperone_web_approval::serve::serve(
        listeners.web,
        chaperone_web_approval::serve::Transport::Tls(tls),
        router,
        limits,
        async move {
            let _ = web_stop.wait_for(|stop| *stop).await;
        },
    ));
    ready.ssh.store(true, std::sync::atomic::Ordering::Relaxed);
    ready.web.store(true, std::sync::atomic::Ordering::Relaxed);
    // A listener that stops by itself (a panic, an I/O error it cannot serve past) stops the process:
    // half a bastion that logs "serving" is worse than none.
    let mut ssh_done = false;
    let mut web_done: Option<Result<(), tokio::task::JoinError>> = None;
    let failed = tokio::select! {
        () = shutdown => None,
        r = &mut ssh_task => {
            ssh_done = true;
            Some(format!("the SSH listener stopped: {}", match r {
                Ok(()) => "it returned".to_owned(),
                Err(e) => e.to_string(),
            }))
        }
        r = &mut web_task => {
            let why = match &r {
                Ok(()) => "it returned".to_owned(),
                Err(e) => e.to_string(),
            };
            web_done = Some(r);
            Some(format!("the web listener stopped: {why}"))
        }
    };
    match &failed {
        None => tracing::info!("shutting down"),
        Some(why) => tracing::error!("{why}; shutting down"),
    }
    ready.ssh.store(false, std::sync::atomic::Ordering::Relaxed);
    ready.web.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if !ssh_done {
        let _ = ssh_task.await;
    }
    let web_result = match web_done {
        Some(r) => r,
        None => web_task.await,
    };
    if let Some(task) = atna_task {
        let _ = task.await;
    }
    if let Some(task) = mail_task {
        let _ = task.await;
    }
    if let Some(task) = ops_task
        && let Err(e) = task.await
    {
        tracing::warn!(error = %e, "the ops listener task failed");
    }
    if let Some(task) = webhook_task {
        // It stops between deliveries (or mid-backoff) and gives its lease up.
        let _ = task.await;
    }
    let _ = node_task.await;
    // Every session of this node has ended (the SSH task waited for them): it can go.
    crate::node::leave(&app).await;
    app.store.close().await;
    if let Some(why) = failed {
        return Err(ServerError::Stopped(why));
    }
    if let Err(e) = web_result {
        return Err(ServerError::Stopped(format!(
            "the web listener task failed: {e}"
        )));
    }
    tracing::info!("stopped");
    Ok(())
}

/// The web page's TLS settings from the configured certificate and key (PEM).
fn web_tls(
    config: &Config,
) -> Result<std::sync::Arc<chaperone_web_approval::tls::ServerConfig>, ServerError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let cert = read(&config.web.tls_cert)?;
    // The key may come from the hospital's PKI, shared with chaperone's group; never with others.
    let key = crate::key_files::read_private(&config.web.tls_key, crate::key_files::Readers::Group)
        .map_err(|source| ServerError::TlsFile {
            path: config.web.tls_key.clone(),
            source,
        })?;
    chaperone_web_approval::tls::server_config(&cert, &key).map_err(|source| ServerError::Tls {
        cert: config.web.tls_cert.clone(),
        key: config.web.tls_key.clone(),
        source,
    })
}

/// Lapses undecided requests every few seconds (a waiting vendor's `ssh` also checks its own).
async fn expire_requests(app: App, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ssh::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) =
            crate::policy::requests::expire_due(&app.store, &app.events, app.clock.now()).await
        {
            tracing::warn!(error = %e, "cannot expire access requests");
        }
    }
}

/// Once at start: open grants whose asset the vendor's organisation does not service are revoked. Such a
/// grant starts nothing (each start asks the organisation again), but it would stay listed as active: a
/// grant issued before the organisation rule existed (an upgrade), or left by a change made outside
/// chaperone's commands. Every node does it; a grant revoked already is skipped.
async fn revoke_outside_organisations(app: App) {
    let actor = crate::policy::grants::Actor::system("system:organisations");
    match crate::policy::grants::revoke_outside_organisations(
        &app.store,
        &app.events,
        app.clock.now(),
        &actor,
        |_| true,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            grants = n,
            "revoked open grants on assets their vendor's organisation does not service"
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot revoke the grants outside the vendors' organisations")
        }
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
