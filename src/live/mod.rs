//! The session pipeline: every session, whatever it carries (a shell, a command, sftp/scp, a tunnel, a
//! ProxyJump), goes through the same typed steps, and the invariants are properties of those types.
//!
//! 1. [`PendingSession::register`] takes a [`Grant`] that policy has just made (so the vendor's standing
//!    and the grant were checked at the moment the session starts, not when its channel opened) and puts
//!    the session in this node's [`LiveSessions`] at once: expiry, revocation, termination and the vendor's
//!    disable reach it from then on, also while its device is being dialled ([`PendingSession::closed`]).
//! 2. [`PendingSession::start`] creates the recording (if the kind has one), the session row and its
//!    audit event, in that order: a session that cannot be recorded is refused, and nothing is forwarded
//!    to a device before `start` returned. It yields a [`LiveSession`].
//! 3. The transport (`ssh::bridge`, `tunnel::relay`, `ssh::jump`) moves bytes through
//!    [`LiveSession::recorder`] (record first, forward second) and [`LiveSession::meter`] (the byte budgets),
//!    and listens to [`LiveSession::take_controls`].
//! 4. [`LiveSession::end`] is the one end for every kind: it closes the recording, stores its digest, the
//!    session's end, cause and bytes, and audits it, in one transaction.
//!
//! Submodules: [`registry`] (what is live), [`watch`] (the authority watcher), [`budget`] (byte budgets).

pub mod budget;
pub mod idle;
pub mod registry;
pub mod tap;
pub mod view;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chaperone_recorder::{
    CastHeader, ExecHeader, ScpCommand, ScpObserver, SftpObserver, TransferEvent,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::app::App;
use crate::audit::Action;
use crate::audit::AuditEvent;
use crate::config::BudgetAction;
use crate::policy::{Grant, Principal};
use crate::recording::{Record, RecordSender, Recording, RecordingFormat};
use crate::store::{SessionStart, StoreError};
use budget::{Budgets, Crossing, Direction, Key};
pub use registry::{Close, Control, LiveSessions, Registration};

/// What a session carries; `as_str` is the `sessions.kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Shell,
    Exec,
    Sftp,
    /// A raw TCP tunnel to a device port (`ssh -L`, `ssh -W`): a connection record, bytes each way.
    Tunnel,
    /// `ssh -J`: the tunnel that carries an inner SSH connection, whose own sessions are recorded.
    Jump,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Shell => "shell",
            SessionKind::Exec => "exec",
            SessionKind::Sftp => "sftp",
            SessionKind::Tunnel => "tunnel",
            SessionKind::Jump => "jump",
        }
    }

    /// The format a session of this kind is recorded in; `None` for kinds whose record is the session row
    /// (tunnels, jumps). Shells and exec with a pty are what a terminal showed: asciicast, for players.
    /// Without a pty, an exec or a shell is a program's byte streams, often not text (`tar c`,
    /// `cat image.dcm`, a binary fed to `ssh -T`'s shell on its stdin): recorded 1:1, with the cast
    /// derived on export (`session export`). Asciicast would keep U+FFFD where such bytes were.
    pub fn recording_format(self, pty: bool) -> Option<RecordingFormat> {
        match (self, pty) {
            (SessionKind::Sftp, _) => Some(RecordingFormat::TransferLog),
            (SessionKind::Shell | SessionKind::Exec, false) => Some(RecordingFormat::ExecStream),
            (SessionKind::Shell | SessionKind::Exec, true) => Some(RecordingFormat::Asciicast),
            (SessionKind::Tunnel | SessionKind::Jump, _) => None,
        }
    }

    /// The audit actions of its start and end (tunnels and jumps keep the names webhooks already know).
    fn actions(self) -> (Action, Action) {
        match self {
            SessionKind::Shell | SessionKind::Exec | SessionKind::Sftp => {
                (Action::SessionStart, Action::SessionEnd)
            }
            SessionKind::Tunnel => (Action::TunnelOpen, Action::TunnelClose),
            SessionKind::Jump => (Action::JumpOpen, Action::JumpClose),
        }
    }
}

/// The terminal a vendor asked for (pty-req), as far as a recording needs it.
#[derive(Debug, Clone)]
pub struct PtyInfo {
    /// The terminal's name, a valid one (`ssh::device` refuses others), recorded whole.
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// The longest command a session records. It is recorded whole, in the recording's header, the session
/// row and the `session.start` event. A longer one is refused, never cut: the device would run what no
/// record shows.
pub const MAX_DETAIL: usize = 16 * 1024;

impl PtyInfo {
    /// The size a recording's header gives this terminal, and the device is told. `ssh -tt` from a script (no terminal to
    /// measure) asks for 0x0, and some clients for 1x1, which players show as a single cell: a
    /// dimension smaller than any real terminal's (under 20 columns or 5 rows) is recorded as 80 or 24
    /// instead ([`recorded_size`], as for a later window change).
    pub fn recorded_size(&self) -> (u16, u16) {
        recorded_size(self.cols, self.rows)
    }
}

/// The size a recording gives a terminal of `cols` x `rows` (at the start or at a window change): a
/// dimension smaller than any real terminal's (under 20 columns or 5 rows: `ssh -tt` from a script
/// asks for 0x0) is recorded as 80 or 24, one larger than any screen as the recorder's bound
/// ([`chaperone_recorder::bounded_size`]: a client claiming 65535 x 65535 would otherwise make every
/// player and the indexer allocate ~68 GB). The device is told this size too (and no pixel size): a
/// terminal's size is a number the vendor chooses, so the device sees no other than the recording's.
pub(crate) fn recorded_size(cols: u16, rows: u16) -> (u16, u16) {
    let cols = if cols < 20 { 80 } else { cols };
    let rows = if rows < 5 { 24 } else { rows };
    chaperone_recorder::bounded_size(cols, rows)
}

/// The waits before the second, third and fourth try at writing a session's end.
const END_RETRIES: [std::time::Duration; 3] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
];

/// How a session ended: the `sessions.end_reason` text and `end_cause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    VendorClosed,
    DeviceClosed,
    /// Both sides closed (a tunnel's usual end).
    Completed,
    /// Closed by the bastion (expiry, revocation, termination, disable, shutdown).
    Closed(Close),
    /// A byte budget with `action = "cut"` was crossed.
    BudgetCut(String),
    /// The recording could not go on (disk, size cap, a stream it cannot parse): no recording, no session.
    RecordingFailed(String),
    /// A side's connection failed.
    Lost(String),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::VendorClosed => "vendor closed the session".into(),
            End::DeviceClosed => "device closed the session".into(),
            End::Completed => "closed by both sides".into(),
            End::Closed(c) => c.text.clone(),
            End::BudgetCut(r) => r.clone(),
            End::RecordingFailed(e) => format!("recording failed: {e}"),
            End::Lost(e) => format!("connection lost: {e}"),
        }
    }

    /// The `end_cause` column: what an auditor filters on.
    pub fn cause(&self) -> &'static str {
        match self {
            End::VendorClosed | End::DeviceClosed | End::Completed => "closed",
            End::Closed(c) => c.cause.as_str(),
            End::BudgetCut(_) => "budget",
            End::RecordingFailed(_) => "recording",
            End::Lost(_) => "lost",
        }
    }

    /// The line the vendor is shown when the bastion ended the session (`None`: a side closed it).
    pub fn vendor_notice(&self) -> Option<String> {
        match self {
            End::Closed(c) => Some(c.text.clone()),
            End::BudgetCut(r) => Some(r.clone()),
            End::RecordingFailed(_) => Some(
                "the session recording could not go on, so the session was ended (no recording, no session)"
                    .into(),
            ),
            End::VendorClosed | End::DeviceClosed | End::Completed | End::Lost(_) => None,
        }
    }
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The recording could not be created: no recording, no session.
    #[error("cannot create the recording: {0}")]
    Recording(String),
    /// The session row or its audit event could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The grant was revoked or ended, or the vendor disabled, between the decision and the start.
    #[error("access ended before the session started: {0}")]
    NoLonger(String),
    /// The command is longer than a session records ([`MAX_DETAIL`]).
    #[error("the command is longer than a session records")]
    TooLong,
    /// The bastion closed the session while it was being started (revoked, expired, terminated…): it
    /// was started and ended, both recorded; the text is the close's, for the vendor.
    #[error("closed as it started: {0}")]
    Closed(String),
}

impl StartError {
    /// The line the vendor sees.
    pub fn vendor_message(&self) -> &str {
        match self {
            StartError::Closed(text) => text,
            StartError::Recording(_) => {
                "the session cannot be recorded, so it was refused (no recording, no session); the bastion's staff can see why"
            }
            StartError::Store(_) => {
                "the bastion cannot record this session right now, so it was refused"
            }
            StartError::NoLonger(_) => {
                "your access to this device ended (revoked, expired, the service removed or your account changed) before the session started"
            }
            StartError::TooLong => {
                "the command is longer than a session records (16 KiB), so it was refused; put it in a script on the device, or send it as the session's input"
            }
        }
    }
}

/// Where a session comes from, for its row and audit events.
#[derive(Debug, Clone)]
pub struct Origin {
    pub principal: Principal,
    /// The vendor's address (`client_addr`).
    pub peer: String,
    /// The listener's number of the vendor connection (a ProxyJump's: the outer one's), and what
    /// passes through it (`idle`): the session's bytes count as that connection's activity.
    pub connection: u64,
    pub activity: Arc<idle::Activity>,
}

/// A session registered under a grant, not started yet: its device may be being dialled.
#[derive(Debug)]
pub struct PendingSession {
    app: App,
    live: LiveSessions,
    budgets: Arc<Budgets>,
    grant: Grant,
    kind: SessionKind,
    origin: Origin,
    id: String,
    registration: Registration,
    controls: mpsc::UnboundedReceiver<Control>,
}

impl PendingSession {
    /// Registers a new session of `kind` under `grant` (which policy has just made for `origin`): from now
    /// on expiry, revocation, termination and disable reach it.
    pub fn register(
        app: &App,
        live: &LiveSessions,
        budgets: &Arc<Budgets>,
        grant: Grant,
        kind: SessionKind,
        origin: Origin,
    ) -> PendingSession {
        let id = crate::secrets::random_hex(8);
        let (registration, controls) = live.register(
            &id,
            (grant.id(), origin.connection),
            &origin.principal,
            (&grant.asset().name, grant.service()),
            grant.ends_at(),
        );
        PendingSession {
            app: app.clone(),
            live: live.clone(),
            budgets: budgets.clone(),
            grant,
            kind,
            origin,
            id,
            registration,
            controls,
        }
    }

    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Completes when the bastion closes this session before it started (the grant was revoked or
    /// ended, the vendor disabled, the process stopping). Notices are not sent to pending sessions.
    pub async fn closed(&mut self) -> Close {
        loop {
            match self.controls.recv().await {
                Some(Control::Close(c)) => return c,
                Some(Control::Notice(_)) => {}
                // The registry never drops a live entry's sender while we hold the registration.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Audits that this session was refused before it started (`action`: `session.refused`,
    /// `tunnel.refused`, `target.hostkey.mismatch`…); nothing else is written.
    pub async fn refuse(self, action: Action, reason: &str) {
        let detail = json!({"peer": self.origin.peer, "grant": self.grant.id(), "kind": self.kind.as_str(), "service": self.grant.service().name, "reason": reason});
        audit(
            &self.app,
            &self.origin.principal.vendor,
            action,
            format!("asset:{}", self.grant.asset().name),
            detail,
        )
        .await;
    }

    /// Starts the session: the recording first (kinds that have one), then the session row and its audit
    /// event. `detail` is what the vendor asked for (a command, `sftp`, a tunnel's destination); `pty` the
    /// terminal, if any; `env` the environment variables the device will be sent. All three are recorded
    /// whole: the device is sent nothing before the session's data that its recording does not show.
    /// On error nothing was started and the caller refuses the session.
    pub async fn start(
        self,
        detail: &str,
        pty: Option<&PtyInfo>,
        env: &[(String, String)],
    ) -> Result<LiveSession, StartError> {
        let app = &self.app;
        let grant = &self.grant;
        let asset = grant.asset();
        let now = app.clock.now();
        let id = &self.id;
        if detail.len() > MAX_DETAIL {
            let reason = format!(
                "the command is {} bytes long, more than the {MAX_DETAIL} a session records",
                detail.len()
            );
            self.refuse(Action::SessionRefused, &reason).await;
            return Err(StartError::TooLong);
        }
        let detail = detail.to_owned();
        // The decision again, now that the watcher knows this session (`policy::still_holds`).
        match crate::policy::still_holds(&app.store, now, grant).await {
            Ok(()) => {}
            Err(crate::policy::PolicyError::Denied(denial)) => {
                let reason = format!("ended before it started: {}", denial.audit_reason());
                let action = match self.kind {
                    SessionKind::Tunnel | SessionKind::Jump => Action::TunnelRefused,
                    _ => Action::SessionRefused,
                };
                self.refuse(action, &reason).await;
                return Err(StartError::NoLonger(reason));
            }
            Err(crate::policy::PolicyError::Store(e)) => {
                tracing::error!(error = %e, "cannot check the grant again before the start; refusing");
                return Err(StartError::Store(e));
            }
        }
        let recording = match self.kind.recording_format(pty.is_some()) {
            None => None,
            Some(format) => {
                let path = app
                    .config
                    .recording
                    .dir
                    .join(format!("{id}.{}", format.extension()));
                // Off the async workers: creating a file (and the recorder's thread) can wait on the file
                // system for tens of milliseconds in a burst of starts, and a worker waiting there
                // delays every other connection's relay.
                let created = {
                    let (app, path, grant, id) =
                        (app.clone(), path.clone(), grant.clone(), id.clone());
                    let (kind, detail, pty) = (self.kind, detail.clone(), pty.cloned());
                    let env = env.to_vec();
                    tokio::task::spawn_blocking(move || {
                        create_recording(
                            &app,
                            format,
                            &path,
                            &grant,
                            &id,
                            kind,
                            &detail,
                            pty.as_ref(),
                            &env,
                        )
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the recording's creation failed: {e}")))
                };
                match created {
                    Ok(r) => Some((r, format, path)),
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "cannot create the recording; refusing the session");
                        let reason = format!("cannot create recording: {e}");
                        self.refuse(Action::SessionRefused, &reason).await;
                        return Err(StartError::Recording(e));
                    }
                }
            }
        };
        let (start_action, _) = self.kind.actions();
        let peer = self.origin.peer.clone();
        let mut event = json!({"asset": asset.name, "zone": asset.zone, "service": grant.service().name, "port": grant.service().port, "grant": grant.id(), "kind": self.kind.as_str(), "detail": detail, "peer": peer, "key": self.origin.principal.key_fingerprint});
        let recorded = recording.as_ref().map(|(_, format, path)| {
            let path_text = path.display().to_string();
            event["recording"] = json!(path_text);
            (format.as_str(), path_text)
        });
        // Written together with the other sessions starting at the same moment (`store::session_starts`).
        let db = app
            .store
            .start_session(SessionStart {
                id: id.clone(),
                vendor_id: grant.vendor().id,
                asset_id: asset.id,
                grant_id: grant.id(),
                kind: self.kind.as_str(),
                service: grant.service().name.clone(),
                client_addr: peer.clone(),
                detail: detail.clone(),
                node: app.node.to_string(),
                started_at: now,
                recording: recorded,
                audit: AuditEvent::new(
                    format!("vendor:{}", grant.vendor().name),
                    start_action,
                    format!("session:{id}"),
                    event,
                ),
            })
            .await;
        let recording_id = match db {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the session start; refusing");
                if let Some((r, ..)) = recording {
                    let _ = r.finish().await;
                }
                return Err(e.into());
            }
        };
        self.live.mark_started(&self.registration);
        crate::ops::metrics::session_started(self.kind.as_str());
        // The live view watches terminal sessions (a shell, a command's output).
        let tap = matches!(self.kind, SessionKind::Shell | SessionKind::Exec).then(|| {
            // The size the recording's header has: the live view draws what the recording will.
            let (cols, rows) = pty.map_or((80, 24), PtyInfo::recorded_size);
            let tap = tap::Tap::new(cols, rows);
            self.live.set_tap(&self.registration, tap.clone());
            tap
        });
        tracing::info!(session = %id, vendor = %grant.vendor().name, asset = %asset.name, service = %grant.service().name, kind = self.kind.as_str(), "session started");
        let policy = app.config.budgets.policy_for(&grant.service().name).clone();
        // What of this session keeps its connection active (`idle::counts`, the one rule).
        let counts = idle::counts(self.kind, pty.is_some());
        let busy = (counts == idle::Counts::Running).then(|| self.origin.activity.busy());
        let meter = Meter {
            inner: Arc::new(MeterInner {
                up: AtomicU64::new(0),
                down: AtomicU64::new(0),
                budgets: self.budgets.clone(),
                key: Key {
                    vendor_id: grant.vendor().id,
                    asset_id: asset.id,
                    service: grant.service().name.clone(),
                },
                policy,
                cut: Mutex::new(None),
                app: app.clone(),
                session: id.clone(),
                kind: self.kind,
                grant: grant.clone(),
                activity: self.origin.activity.clone(),
                counts,
            }),
        };
        self.live.set_meter(&self.registration, meter.clone());
        let (recorder, recording) = match recording {
            Some((r, ..)) => (Some(r.sender()), recording_id.map(|rid| (r, rid))),
            None => (None, None),
        };
        let sftp = (self.kind == SessionKind::Sftp).then(SftpWatch::default);
        let mut live = LiveSession {
            app: self.app,
            grant: self.grant,
            kind: self.kind,
            id: self.id,
            _registration: self.registration,
            controls: Some(self.controls),
            backlog: Vec::new(),
            recording,
            recorder,
            meter,
            sftp,
            tap,
            _busy: busy,
        };
        // The last look before the device or the vendor sees anything: a close the watcher sent while
        // the session was being written ends it here, whatever kind it is. Left to the relay, a close
        // already queued would race the first bytes each way (`select!` picks among ready branches).
        if let Some(close) = live.closed_now() {
            let text = close.text.clone();
            live.end(End::Closed(close)).await;
            return Err(StartError::Closed(text));
        }
        Ok(live)
    }
}

/// Creates the recording file for a session of `kind` in `format` (never overwriting one).
#[allow(clippy::too_many_arguments)]
fn create_recording(
    app: &App,
    format: RecordingFormat,
    path: &std::path::Path,
    grant: &Grant,
    id: &str,
    kind: SessionKind,
    detail: &str,
    pty: Option<&PtyInfo>,
    env: &[(String, String)],
) -> Result<Recording, String> {
    let now = app.clock.now();
    let title = format!(
        "chaperone session {id}: {}@{}",
        grant.vendor().name,
        grant.asset().name
    );
    let mut env: BTreeMap<String, String> = env.iter().cloned().collect();
    if let Some(p) = pty {
        env.insert("TERM".to_owned(), p.term.clone());
    }
    let command = (kind == SessionKind::Exec).then(|| detail.to_owned());
    let cfg = &app.config.recording;
    let recording = match format {
        RecordingFormat::TransferLog => Recording::transfers(path, cfg.max_bytes),
        RecordingFormat::ExecStream => Recording::exec(
            path,
            &ExecHeader {
                timestamp: now,
                title: Some(title),
                command,
                env,
            },
            cfg.max_bytes,
        ),
        RecordingFormat::Asciicast => Recording::cast(
            path,
            CastHeader {
                width: pty.map_or(80, |p| p.recorded_size().0),
                height: pty.map_or(24, |p| p.recorded_size().1),
                timestamp: now,
                title: Some(title),
                command,
                env,
                markers_attributed: false,
            },
            // Only sessions with a terminal are cast (`recording_format`): what the vendor sends is
            // keystrokes, kept as `record_input` says.
            cfg.record_input,
            cfg.max_bytes,
        ),
    };
    recording.map_err(|e| e.0)
}

/// A started session. Ends only through [`LiveSession::end`] (dropping it unended leaves the row open
/// for the node sweep, which is for crashes, not for code paths).
#[derive(Debug)]
pub struct LiveSession {
    app: App,
    grant: Grant,
    kind: SessionKind,
    id: String,
    _registration: Registration,
    controls: Option<mpsc::UnboundedReceiver<Control>>,
    /// Notices read while looking for a close ([`LiveSession::closed_now`]), handed on with the controls.
    backlog: Vec<Control>,
    recording: Option<(Recording, i64)>,
    recorder: Option<RecordSender>,
    meter: Meter,
    /// The SFTP observer of an sftp session (the relay feeds it; the end reports what was left open).
    sftp: Option<SftpWatch>,
    /// The live view's tap of a terminal session (the relay feeds it after the recorder).
    tap: Option<tap::Tap>,
    /// Holds the connection active while the session runs, where its kind says so (`idle::counts`).
    _busy: Option<idle::Busy>,
}

impl LiveSession {
    /// Where every byte of a recorded kind goes before it is forwarded (`None` for tunnels and jumps,
    /// whose record is the session row itself).
    pub fn recorder(&self) -> Option<RecordSender> {
        self.recorder.clone()
    }

    /// Counts bytes against the byte budgets; every chunk passes it before it is forwarded.
    pub fn meter(&self) -> Meter {
        self.meter.clone()
    }

    /// The watcher's controls (taken once; a second call gets controls that never yield).
    pub fn take_controls(&mut self) -> Controls {
        Controls {
            backlog: std::mem::take(&mut self.backlog).into(),
            rx: self
                .controls
                .take()
                .unwrap_or_else(|| mpsc::unbounded_channel().1),
        }
    }

    /// A close the watcher already sent, if any (notices read meanwhile are kept for the controls): for
    /// the last look [`PendingSession::start`] takes before it hands the session over.
    fn closed_now(&mut self) -> Option<Close> {
        let rx = self.controls.as_mut()?;
        while let Ok(control) = rx.try_recv() {
            match control {
                Control::Close(c) => return Some(c),
                notice => self.backlog.push(notice),
            }
        }
        None
    }

    /// The SFTP observer, for an sftp session.
    pub fn sftp(&self) -> Option<SftpWatch> {
        self.sftp.clone()
    }

    /// This transfer session speaks legacy SCP (`scp -t`/`-f` run as an exec), not SFTP: its observer is
    /// an SCP one. Set before the relay starts.
    pub fn observe_scp(&mut self, command: &ScpCommand) {
        if self.kind == SessionKind::Sftp {
            self.sftp = Some(SftpWatch::scp(command));
        }
    }

    /// The live view's tap, for a terminal session.
    pub fn tap(&self) -> Option<tap::Tap> {
        self.tap.clone()
    }

    /// Ends the session: closes the recording, stores its digest, the session's end (reason, cause, bytes
    /// each way) and audits both, in one transaction. A recording that failed or stopped makes the end a
    /// recording failure whatever the transport saw, and is audited as `recording.failed` too.
    pub async fn end(mut self, end: End) {
        let app = self.app.clone();
        // From here the row's end is this session's own doing (see `live::watch`).
        self._registration.mark_ending();
        crate::ops::metrics::session_ended(self.kind.as_str());
        // Files still open and requests never answered are logged as unfinished.
        // Files still open and requests unanswered are logged as unfinished; if even that cannot be
        // written, the log is not whole and the session says so.
        let mut left_unlogged = None;
        if let (Some(sftp), Some(rec)) = (self.sftp.take(), &self.recorder) {
            let left = sftp.finish();
            if !left.is_empty()
                && let Err(e) = rec.send(Record::Transfers(left)).await
            {
                left_unlogged = Some(e.0);
            }
        }
        drop(self.recorder.take());
        drop(self.controls.take());
        let mut end = end;
        if let Some(why) = left_unlogged
            && !matches!(end, End::RecordingFailed(_))
        {
            end = End::RecordingFailed(format!(
                "the transfers unfinished at the end could not be logged: {why}"
            ));
        }
        let finished = match self.recording.take() {
            Some((recording, rid)) => {
                let done = recording.finish().await;
                match &done {
                    Ok(f) => {
                        crate::ops::metrics::recording_closed(f.finished.bytes);
                        if let Some(why) = &f.stopped {
                            end = End::RecordingFailed(why.clone());
                        }
                    }
                    Err(e) => end = End::RecordingFailed(e.0.clone()),
                }
                Some((done, rid))
            }
            None => None,
        };
        if let Some(cut) = self.meter.cut_reason()
            && !matches!(end, End::RecordingFailed(_))
        {
            end = End::BudgetCut(cut);
        }
        if matches!(end, End::RecordingFailed(_)) {
            crate::ops::metrics::recording_failed();
        }
        let now = app.clock.now();
        let reason = end.describe();
        let (up, down) = self.meter.totals();
        let (_, end_action) = self.kind.actions();
        // Tried again a few times: an end not written leaves the session listed as live until a node's
        // sweep ends it as abandoned, and its recording's digest (held here) unvouched.
        let mut retry = END_RETRIES.iter();
        let mut tried = false;
        let result = loop {
            let result = async {
                let mut tx = app.store.begin().await?;
                let ended = tx.end_session(
                    &self.id,
                    &reason,
                    end.cause(),
                    i64::try_from(up).unwrap_or(i64::MAX),
                    i64::try_from(down).unwrap_or(i64::MAX),
                    now,
                )
                .await?;
                // A try that failed may have committed all the same (its answer lost): then it is
                // written, and the row says so with this end's own words. Ended otherwise (a node's
                // sweep, during a partition), the recording's close and the end are still ours to write.
                if tried && !ended {
                    let row = app.store.session(&self.id).await?;
                    if row.end_reason.as_deref() == Some(reason.as_str())
                        && row.end_cause.as_deref() == Some(end.cause())
                    {
                        return Ok(());
                    }
                }
                let mut detail = json!({"grant": self.grant.id(), "reason": reason, "cause": end.cause(), "bytes_up": up, "bytes_down": down});
                if let Some((done, rid)) = &finished {
                    let digest = match done {
                        Ok(f) => {
                            tx.close_recording(
                                *rid,
                                &f.finished.sha256_hex,
                                i64::try_from(f.finished.bytes).unwrap_or(i64::MAX),
                                now,
                            )
                            .await?;
                            Some(f.finished.sha256_hex.clone())
                        }
                        Err(_) => {
                            tx.close_recording_failed(*rid, now).await?;
                            None
                        }
                    };
                    detail["recording_sha256"] = json!(digest);
                    detail["recording"] = json!(rid);
                }
                tx.audit(
                    AuditEvent::new(
                        format!("vendor:{}", self.grant.vendor().name),
                        end_action,
                        format!("session:{}", self.id),
                        detail,
                    ),
                    now,
                )
                .await?;
                if let End::RecordingFailed(why) = &end {
                    tx.audit(
                        AuditEvent::new(
                            "system",
                            Action::RecordingFailed,
                            format!("session:{}", self.id),
                            json!({"asset": self.grant.asset().name, "vendor": self.grant.vendor().name, "reason": why}),
                        ),
                        now,
                    )
                    .await?;
                }
                tx.commit(end_action.as_str()).await
            }
            .await;
            match (result, retry.next()) {
                (Err(e), Some(wait)) => {
                    tried = true;
                    tracing::warn!(session = %self.id, error = %e, "cannot record the session end yet; trying again");
                    tokio::time::sleep(*wait).await;
                }
                (result, _) => break result,
            }
        };
        match result {
            Ok(()) => {
                // Not remembered as proven here: the digest came from memory, and the file may have
                // been written to by someone else meanwhile. The indexer reads it back and remembers
                // it if it hashes to that digest (`search_index::Indexer::remembering`).
                if finished.is_some() {
                    app.recording_closed.notify_one();
                }
                tracing::info!(session = %self.id, reason = %reason, cause = end.cause(), bytes_up = up, bytes_down = down, "session ended");
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "cannot record the session end");
            }
        }
    }
}

/// The watcher's controls for a started session.
#[derive(Debug)]
pub struct Controls {
    backlog: std::collections::VecDeque<Control>,
    rx: mpsc::UnboundedReceiver<Control>,
}

impl Controls {
    /// The next control; `None` once the registry dropped the session (it never does while it is live).
    pub async fn recv(&mut self) -> Option<Control> {
        match self.backlog.pop_front() {
            Some(c) => Some(c),
            None => self.rx.recv().await,
        }
    }
}

/// An sftp session's observer, run by the relay on every chunk *before* it is forwarded: a chunk it cannot
/// follow (a malformed packet, more requests in flight than it tracks) is not forwarded, and the session
/// ends with the log saying where it stopped. Cheap to clone (both directions share it).
#[derive(Debug, Clone, Default)]
pub struct SftpWatch {
    observer: Arc<Mutex<Observer>>,
}

/// What a transfer session's bytes are read as.
#[derive(Debug)]
enum Observer {
    Sftp(SftpObserver),
    /// Legacy SCP (`chaperone_recorder::scp`).
    Scp(ScpObserver),
}

impl Default for Observer {
    fn default() -> Self {
        Observer::Sftp(SftpObserver::new())
    }
}

impl Observer {
    /// The events of one chunk, the files it opened first (logged before the chunk that opened them is
    /// forwarded, so before any of their bytes pass).
    fn feed(&mut self, upload: bool, data: &[u8]) -> Vec<TransferEvent> {
        let (events, mut opened) = match (self, upload) {
            (Observer::Sftp(o), true) => (o.client_to_server(data), o.take_opened()),
            (Observer::Sftp(o), false) => (o.server_to_client(data), o.take_opened()),
            (Observer::Scp(o), true) => (o.client_to_server(data), o.take_opened()),
            (Observer::Scp(o), false) => (o.server_to_client(data), o.take_opened()),
        };
        opened.extend(events);
        opened
    }

    fn finish(self) -> Vec<TransferEvent> {
        match self {
            Observer::Sftp(o) => o.finish(),
            Observer::Scp(o) => o.finish(),
        }
    }
}

/// The observer could not follow the stream: what it saw up to there, and why.
#[derive(Debug)]
pub struct Unfollowable {
    pub events: Vec<TransferEvent>,
    pub reason: String,
}

impl SftpWatch {
    /// The watch of a legacy SCP transfer.
    fn scp(command: &ScpCommand) -> Self {
        SftpWatch {
            observer: Arc::new(Mutex::new(Observer::Scp(ScpObserver::for_command(command)))),
        }
    }

    /// Feeds one chunk (vendor → device when `upload`); the events it completed, or why the stream can no
    /// longer be followed (then the chunk must not be forwarded).
    pub fn feed(&self, upload: bool, data: &[u8]) -> Result<Vec<TransferEvent>, Unfollowable> {
        let Ok(mut observer) = self.observer.lock() else {
            return Err(Unfollowable {
                events: Vec::new(),
                reason: "the sftp observer failed".into(),
            });
        };
        let events = observer.feed(upload, data);
        let broken = events.iter().find_map(|e| match e {
            TransferEvent::Unparseable { reason } => Some(reason.clone()),
            _ => None,
        });
        match broken {
            Some(reason) => Err(Unfollowable {
                events,
                reason: format!("the file transfer cannot be followed: {reason}"),
            }),
            None => Ok(events),
        }
    }

    /// The channel ended: what was still open or unanswered, as unfinished.
    fn finish(self) -> Vec<TransferEvent> {
        match Arc::try_unwrap(self.observer) {
            Ok(m) => m.into_inner().map(Observer::finish).unwrap_or_default(),
            Err(shared) => shared
                .lock()
                .map(|mut o| std::mem::take(&mut *o).finish())
                .unwrap_or_default(),
        }
    }
}

/// Bytes each way of one session, held against the byte budgets (`[budgets]`). Cheap to clone; every
/// transport calls [`Meter::pass`] for every chunk before forwarding it.
#[derive(Debug, Clone)]
pub struct Meter {
    inner: Arc<MeterInner>,
}

#[derive(Debug)]
struct MeterInner {
    up: AtomicU64,
    down: AtomicU64,
    budgets: Arc<Budgets>,
    key: Key,
    policy: crate::config::BudgetPolicy,
    /// Why the budget cut this session, once it did.
    cut: Mutex<Option<String>>,
    app: App,
    session: String,
    kind: SessionKind,
    grant: Grant,
    /// The connection's, touched by the chunks `counts` says are activity.
    activity: Arc<idle::Activity>,
    counts: idle::Counts,
}

impl Meter {
    /// Counts `n` bytes flowing `dir`; `false` when a budget with `action = "cut"` is crossed (the session
    /// must end, the chunk is not forwarded). A crossing is audited once per direction and hour.
    pub fn pass(&self, dir: Direction, n: usize) -> bool {
        let m = &self.inner;
        let counter = match dir {
            Direction::Up => &m.up,
            Direction::Down => &m.down,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        let active = match m.counts {
            idle::Counts::Input => dir == Direction::Up,
            idle::Counts::Both => true,
            idle::Counts::Running | idle::Counts::Nothing => false,
        };
        if active && n > 0 {
            m.activity.touch();
        }
        crate::ops::metrics::relayed(dir == Direction::Up, n);
        let Some(crossing) = m
            .budgets
            .add(&m.key, m.app.clock.now(), dir, n as u64, &m.policy)
        else {
            return true;
        };
        if crossing.first {
            self.report(&crossing);
        }
        if crossing.action == BudgetAction::Cut {
            if let Ok(mut c) = m.cut.lock() {
                c.get_or_insert_with(|| {
                    format!(
                        "cut by the byte budget: {} bytes {} in the last hour, budget {}",
                        crossing.used,
                        crossing.direction.as_str(),
                        crossing.limit
                    )
                });
            }
            return false;
        }
        true
    }

    /// Counts `n` bytes flowing `dir` without holding them against a budget, nor as activity: for a
    /// jump, whose inner sessions are metered themselves (its stream also carries the inner
    /// connection's keepalives, which are no sign of a person).
    pub fn count(&self, dir: Direction, n: usize) {
        let m = &self.inner;
        match dir {
            Direction::Up => m.up.fetch_add(n as u64, Ordering::Relaxed),
            Direction::Down => m.down.fetch_add(n as u64, Ordering::Relaxed),
        };
    }

    /// Bytes so far: (vendor → device, device → vendor).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.inner.up.load(Ordering::Relaxed),
            self.inner.down.load(Ordering::Relaxed),
        )
    }

    fn cut_reason(&self) -> Option<String> {
        self.inner.cut.lock().ok().and_then(|c| c.clone())
    }

    /// The end of a session the budget cut (after [`Meter::pass`] said `false`).
    pub fn cut_end(&self) -> End {
        End::BudgetCut(
            self.cut_reason()
                .unwrap_or_else(|| "cut by the byte budget".into()),
        )
    }

    /// Audits a crossing without holding up the data path.
    fn report(&self, crossing: &Crossing) {
        let m = &self.inner;
        let detail = json!({
            "session": m.session,
            "kind": m.kind.as_str(),
            "asset": m.grant.asset().name,
            "service": m.grant.service().name,
            "direction": crossing.direction.as_str(),
            "bytes_last_hour": crossing.used,
            "budget": crossing.limit,
            "action": if crossing.action == BudgetAction::Cut { "cut" } else { "alert" },
        });
        tracing::warn!(session = %m.session, asset = %m.grant.asset().name, service = %m.grant.service().name, used = crossing.used, limit = crossing.limit, "byte budget crossed");
        let app = m.app.clone();
        let vendor = m.grant.vendor().name.clone();
        let subject = format!("asset:{}", m.grant.asset().name);
        tokio::spawn(async move {
            audit(&app, &vendor, Action::BudgetExceeded, subject, detail).await;
        });
    }
}

/// Audits one event by vendor `vendor`; a failure is logged (the callers are refusing or reporting).
async fn audit(
    app: &App,
    vendor: &str,
    action: Action,
    subject: String,
    detail: serde_json::Value,
) {
    let now = app.clock.now();
    let result = async {
        let mut tx = app.store.begin().await?;
        tx.audit(
            AuditEvent::new(format!("vendor:{vendor}"), action, subject, detail),
            now,
        )
        .await?;
        tx.commit(action.as_str()).await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action = action.as_str(), "cannot write an audit event");
    }
}

#[cfg(test)]
mod tests {
    use super::End;
    use super::PtyInfo;
    use super::registry::{Cause, Close};
    use crate::model::SESSION_ENDS;

    /// An app in `dir` with vendor alice (org Acme) granted `ssh` on asset mri-01 for an hour, and that
    /// grant as policy decides it now, pending as an exec session in `live`.
    async fn pending_exec(
        dir: &std::path::Path,
        live: &super::LiveSessions,
    ) -> (crate::app::App, super::PendingSession) {
        use std::sync::Arc;

        use super::{Budgets, Origin, PendingSession, SessionKind};
        use crate::audit::{Action, AuditEvent};
        use crate::model::{Criticality, Service};
        use crate::policy::Principal;
        use crate::store::{NewAsset, NewGrant};

        let local = "127.0.0.1:0".parse().unwrap();
        let config = crate::cli::init::init_dir(dir, local, local).await.unwrap();
        let app = crate::app::App::open(&config).await.unwrap();
        let now = app.clock.now();
        let services: Vec<Service> = vec!["ssh:22/ssh".parse().unwrap()];
        let mut tx = app.store.begin().await.unwrap();
        let vendor_id = tx.insert_vendor("alice", "Acme", b"-", now).await.unwrap();
        tx.insert_vendor_key(vendor_id, "ssh-ed25519 AAAA", "SHA256:a", "c", now)
            .await
            .unwrap();
        let asset_id = tx
            .insert_asset(
                &NewAsset {
                    name: "mri-01",
                    address: "127.0.0.1",
                    zone: "radiology",
                    purpose: "MRI",
                    criticality: Criticality::Normal,
                    vendor_org: Some("Acme"),
                    os: None,
                    patch_status: None,
                    services: &services,
                },
                now,
            )
            .await
            .unwrap();
        tx.insert_grant(
            &NewGrant {
                vendor_id,
                asset_id,
                services: &["ssh".to_owned()],
                starts_at: now - 1,
                ends_at: now + 3600,
                reason: "INC-1",
                issued_by: "os:t",
                request_id: None,
            },
            now,
        )
        .await
        .unwrap();
        let event = AuditEvent::new("os:t", Action::GrantIssue, "t", serde_json::json!({}));
        tx.audit(event, now).await.unwrap();
        tx.commit("t").await.unwrap();
        let who = Principal {
            vendor_id,
            vendor: "alice".into(),
            key_fingerprint: "SHA256:a".into(),
        };
        let grant = crate::policy::authorize_service(&app.store, now, &who, "mri-01", "ssh")
            .await
            .unwrap();
        let origin = Origin {
            principal: who,
            peer: "127.0.0.1:5".into(),
            connection: 1,
            activity: Arc::default(),
        };
        let budgets = Arc::new(Budgets::default());
        let pending =
            PendingSession::register(&app, live, &budgets, grant, SessionKind::Exec, origin);
        (app, pending)
    }

    /// A close the watcher sent while a session was being started ends it inside `start`, for every
    /// kind: the caller gets no session to hand to the device or the relay (a tunnel's first bytes once
    /// raced a close already queued), and the session is written as started and closed, its recording
    /// finished.
    #[tokio::test]
    async fn a_close_sent_while_starting_ends_the_session_in_start() {
        use super::registry::GrantState;
        use super::{LiveSessions, StartError};

        let dir = tempfile::tempdir().unwrap();
        let live = LiveSessions::default();
        let (app, pending) = pending_exec(dir.path(), &live).await;
        let id = pending.id.clone();
        // Revoked on another node, seen by this node's watcher before the start wrote its row.
        let revoked = GrantState::Revoked {
            reason: "misuse".into(),
        };
        live.apply(pending.grant().id(), &revoked, app.clock.now());
        match pending.start("uptime", None, &[]).await {
            Err(StartError::Closed(text)) => assert!(text.contains("revoked (misuse)"), "{text}"),
            other => panic!("started despite the close: {other:?}"),
        }
        let row = app.store.session(&id).await.unwrap();
        assert_eq!(row.end_cause.as_deref(), Some("revoked"));
        assert!(row.ended_at.is_some());
        assert_eq!(row.recordings.len(), 1);
        assert!(row.recordings[0].sha256.is_some(), "{:?}", row.recordings);
        assert!(live.is_empty());
    }

    /// A service removed from its asset after the decision is seen by the start: refused (the watcher's
    /// re-read does not see a session registered after it; `policy::still_holds` does). And the
    /// watcher's read of what the inventory lists has the session's service no more.
    #[tokio::test]
    async fn a_service_removed_before_the_start_refuses_it() {
        use super::{LiveSessions, StartError};
        use crate::audit::{Action, AuditEvent};

        let dir = tempfile::tempdir().unwrap();
        let live = LiveSessions::default();
        let (app, pending) = pending_exec(dir.path(), &live).await;
        let asset = app.store.require_asset("mri-01").await.unwrap();
        let mut tx = app.store.begin().await.unwrap();
        assert!(tx.delete_service(asset.id, "ssh").await.unwrap());
        let event = AuditEvent::new(
            "os:t",
            Action::AssetServiceRemove,
            "t",
            serde_json::json!({}),
        );
        tx.audit(event, app.clock.now()).await.unwrap();
        tx.commit("t").await.unwrap();
        let services = live.services();
        let ssh: crate::model::Service = "ssh:22/ssh".parse().unwrap();
        assert_eq!(services, [("mri-01".to_owned(), ssh)]);
        let present = app.store.services_present(&services).await.unwrap();
        assert!(present.is_empty(), "{present:?}");
        match pending.start("uptime", None, &[]).await {
            Err(StartError::NoLonger(why)) => assert!(why.contains("no service ssh"), "{why}"),
            other => panic!("started on a removed service: {other:?}"),
        }
    }

    /// The history's filters offer `SESSION_ENDS`: every way a session can end must be among them, or
    /// an auditor could not find those sessions by how they ended.
    #[test]
    fn every_end_is_one_the_history_can_filter_on() {
        use Cause::*;
        for cause in [Expired, Revoked, Terminated, Disabled, Shutdown, Idle, Lost] {
            // No wildcard: a new cause fails to compile here until it is listed above.
            match cause {
                Expired | Revoked | Terminated | Disabled | Shutdown | Idle | Lost => {}
            }
            let end = End::Closed(Close {
                cause,
                text: String::new(),
            });
            assert!(SESSION_ENDS.contains(&end.cause()), "{cause:?}");
        }
        for end in [
            End::VendorClosed,
            End::DeviceClosed,
            End::Completed,
            End::BudgetCut(String::new()),
            End::RecordingFailed(String::new()),
            End::Lost(String::new()),
        ] {
            assert!(SESSION_ENDS.contains(&end.cause()), "{end:?}");
        }
    }

    /// Issue 11: `ssh -tt` from a script asks for 0x0 (1x1 from some clients); the recording gets a
    /// terminal a player can show.
    #[test]
    fn issue_11_a_pty_without_a_real_size_is_recorded_at_80x24() {
        let size = |cols, rows| {
            PtyInfo {
                term: "xterm".into(),
                cols,
                rows,
            }
            .recorded_size()
        };
        assert_eq!(size(0, 0), (80, 24));
        assert_eq!(size(1, 1), (80, 24));
        assert_eq!(size(132, 0), (132, 24));
        assert_eq!(size(120, 40), (120, 40));
        assert_eq!(size(20, 5), (20, 5));
        // A client's claim beyond any screen is recorded at the recorder's bound (every player and
        // the indexer emulate that screen: 65535 x 65535 cells would be ~68 GB).
        assert_eq!(size(u16::MAX, u16::MAX), (1000, 500));
        assert_eq!(size(u16::MAX, 40), (1000, 40));
    }
}
