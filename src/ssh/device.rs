//! A vendor's session on a device (`VENDOR+ASSET`, and ProxyJump's inner sessions): one channel, from
//! its open to the session's end.
//!
//! Entry point: [`run`], spawned per session channel. The order is the safety argument:
//! 1. the channel is accepted with nothing behind it: no grant check yet, no device connection (an idle
//!    channel holds no logged-in device connection and can be kept open for nothing);
//! 2. pty, env and window sizes are kept until the first shell, exec or sftp request, which is the
//!    session's start (later ones were refused by the handler);
//! 3. at that moment policy re-checks the vendor (enabled, not locked, key still theirs) and the grant,
//!    and the session is registered for expiry, revocation and disable (`live::PendingSession`);
//! 4. a channel is opened on a device connection of this grant (`device_links`: shared by the grant's
//!    sessions, dialled with the host key pinned and the credential injected when none has room) while a
//!    close from the watcher, or the vendor's channel closing, still stops it;
//! 5. the recording and the session row are created (`PendingSession::start`), and only then does the
//!    device see the terminal, the environment and the start request;
//! 6. `bridge::run` relays, recording first, until one end; `LiveSession::end` writes it.

use std::time::Duration;

use bytes::Bytes;
use chaperone_recorder::{ScpCommand, scp_command};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, Pty};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::bridge::{self, BridgeIo};
use super::context::{ConnectionLimits, Context};
use super::inbox::{Inbox, Taken};
use crate::audit::Action;
use crate::live::{PendingSession, PtyInfo, SessionKind};
use crate::policy::{self, PolicyError};
use crate::target::TargetError;

/// Input a channel may hold before its session started (kept for the device, replayed after the start);
/// each message counts at least [`MESSAGE_COST`] bytes, so empty ones are not free.
const EARLY_INPUT_PER_CHANNEL: usize = 64 * 1024;
/// The same for all of a connection's channels together.
const EARLY_INPUT_PER_CONNECTION: usize = 1024 * 1024;
const MESSAGE_COST: usize = 64;
/// Signals kept before the start, at most.
const EARLY_SIGNALS: usize = 16;
/// Dialling, logging in and opening the device's channel, all within this.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables passed to the device (TERM travels inside pty-req): `LANG` and `LC_*`, whose
/// value is a locale's name (`en_US.UTF-8`, `C`, `de_DE@euro`). Anything else is dropped, as sshd drops
/// what `AcceptEnv` does not name. What is passed is recorded in the recording's header; a locale's
/// name carries no script (`eval "$LC_X"` on the device finds nothing to run).
pub fn env_allowed(name: &str, value: &str) -> bool {
    let locale_char = |b: u8| b.is_ascii_alphanumeric() || b"_.@-".contains(&b);
    (name == "LANG"
        || name.strip_prefix("LC_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }))
        && name.len() <= MAX_ENV_NAME
        && value.len() <= MAX_ENV_VALUE
        && value.bytes().all(locale_char)
}

/// Whether `term` is a terminal's name as terminfo spells them (`xterm-256color`, `screen.xterm`,
/// `vt100`; empty when the client has none): the device is sent it and the recording shows it, so it
/// holds no shell syntax and no more than a name's length.
pub fn valid_term(term: &str) -> bool {
    term.len() <= MAX_TERM
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// The longest environment variable name and value passed on (`LC_MEASUREMENT=en_US.UTF-8` is 14 and 11).
const MAX_ENV_NAME: usize = 32;
const MAX_ENV_VALUE: usize = 64;
/// The longest terminal name (terminfo's longest names are under 40).
const MAX_TERM: usize = 64;

/// The terminal modes a vendor's pty request carries, as the device is sent them: each value within its
/// mode's range (a control character is a byte, a flag is 0 or 1, a speed one of the usual ones), so the
/// modes carry no other data; and never echo off. Whether the terminal echoes is the device's to decide
/// (a password prompt turns it off there): a client asking for no echo from the start would type
/// commands that the recording, which shows the terminal, never shows.
fn device_modes(modes: &[(Pty, u32)]) -> Vec<(Pty, u32)> {
    const SPEEDS: &[u32] = &[
        0, 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
        115_200, 230_400, 460_800, 500_000, 576_000, 921_600, 1_000_000, 1_152_000, 1_500_000,
        2_000_000, 2_500_000, 3_000_000, 3_500_000, 4_000_000,
    ];
    modes
        .iter()
        // Echo is left as the device's pty starts it (on).
        .filter(|&&(mode, _)| mode != Pty::ECHO)
        .map(|&(mode, value)| {
            let value = match mode as u8 {
                1..=29 => value.min(255),
                128 | 129 if SPEEDS.contains(&value) => value,
                128 | 129 => 38_400,
                _ => value.min(1),
            };
            (mode, value)
        })
        .collect()
}
/// At most this many are passed on.
const MAX_ENV: usize = 64;

/// What a vendor asked for on a channel before its session started.
#[derive(Debug)]
pub struct Setup {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// Data, eof and signals the vendor sent while the session was starting, in order.
    early: Inbox,
    /// Bytes of the vendor's data `early` did not keep (sent past their EOF): owed back to their window.
    early_dropped: u32,
    /// What `early` is charged, here and in the connection's shared budget (given back on drop).
    early_bytes: usize,
    eof: bool,
    signals: usize,
    limits: Arc<ConnectionLimits>,
    /// Why the session may not start, found in what was asked before it (a terminal name that is none).
    invalid: Option<String>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.limits
            .early_input
            .fetch_sub(self.early_bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    modes: Vec<(Pty, u32)>,
}

/// The request that starts a session.
#[derive(Debug, Clone)]
enum Start {
    Shell,
    Exec(Bytes),
    Sftp,
    /// The remote command of an scp client in its legacy mode (`scp -O`, WinSCP, pscp): run as an exec,
    /// observed and logged as a transfer (`chaperone_recorder::scp`).
    Scp(Bytes, ScpCommand),
}

impl Start {
    fn kind(&self) -> SessionKind {
        match self {
            Start::Shell => SessionKind::Shell,
            Start::Exec(_) => SessionKind::Exec,
            // A file transfer like sftp: a transfer log, not the files' bytes.
            Start::Sftp | Start::Scp(..) => SessionKind::Sftp,
        }
    }

    /// What the session row and audit event say the vendor asked for.
    fn detail(&self) -> String {
        match self {
            Start::Shell => String::new(),
            Start::Exec(command) | Start::Scp(command, _) => {
                String::from_utf8_lossy(command).into_owned()
            }
            Start::Sftp => "sftp".into(),
        }
    }
}

impl Setup {
    fn new(limits: Arc<ConnectionLimits>) -> Setup {
        Setup {
            pty: None,
            env: Vec::new(),
            early: Inbox::default(),
            early_dropped: 0,
            early_bytes: 0,
            eof: false,
            signals: 0,
            limits,
            invalid: None,
        }
    }

    /// Keeps `msg` for the device, charged `len` bytes (at least [`MESSAGE_COST`]).
    fn keep(&mut self, msg: ChannelMsg, len: usize) {
        self.charge(len);
        self.hold(msg);
    }

    fn hold(&mut self, msg: ChannelMsg) {
        if let Taken::Dropped(bytes) = self.early.take(msg) {
            self.early_dropped = self.early_dropped.saturating_add(bytes);
        }
    }

    /// What the vendor sent before the start, for the bridge to give first, and the bytes of theirs
    /// already consumed (dropped); from now on it is no longer held here, so neither this channel nor
    /// its connection is charged for it (a connection's running sessions do not keep its later channels
    /// from buffering).
    fn hand_over(&mut self) -> (Inbox, u32) {
        self.limits
            .early_input
            .fetch_sub(self.early_bytes, Ordering::Relaxed);
        self.early_bytes = 0;
        (
            std::mem::take(&mut self.early),
            std::mem::take(&mut self.early_dropped),
        )
    }

    /// Charges `len` bytes (at least [`MESSAGE_COST`]) of what is held until the start to this channel
    /// and its connection: input, a pty request, environment variables. [`Setup::full`] refuses more.
    fn charge(&mut self, len: usize) {
        let cost = len.max(MESSAGE_COST);
        self.early_bytes += cost;
        self.limits.early_input.fetch_add(cost, Ordering::Relaxed);
    }

    /// Whether this channel, or its connection, holds as much early input as it may.
    fn full(&self) -> bool {
        self.early_bytes > EARLY_INPUT_PER_CHANNEL
            || self.limits.early_input.load(Ordering::Relaxed) > EARLY_INPUT_PER_CONNECTION
    }

    /// Takes one message sent before the start; returns the start request if it is one.
    fn take(&mut self, msg: ChannelMsg) -> Option<Start> {
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                terminal_modes,
                ..
            } => {
                // Held until the start like input, so charged like it (a terminal name and modes are a
                // client's to size, up to a packet each).
                self.charge(term.len() + terminal_modes.len() * std::mem::size_of::<(Pty, u32)>());
                if !valid_term(&term) {
                    self.invalid = Some(format!(
                        "the terminal type {:?} is not a terminal's name",
                        crate::model::truncate_for_display(&term, 40)
                    ));
                }
                self.pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    modes: device_modes(&terminal_modes),
                });
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(&variable_name, &variable_value) && self.env.len() < MAX_ENV => {
                self.charge(variable_name.len() + variable_value.len());
                self.env.push((variable_name, variable_value));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = &mut self.pty {
                    (p.cols, p.rows) = (col_width, row_height);
                }
            }
            ChannelMsg::RequestShell { .. } => return Some(Start::Shell),
            ChannelMsg::Exec { command, .. } => {
                let command = Bytes::from(command);
                return Some(match scp_command(&command) {
                    Some(scp) => Start::Scp(command, scp),
                    None => Start::Exec(command),
                });
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                return Some(Start::Sftp);
            }
            ChannelMsg::Data { ref data } => {
                let len = data.len();
                self.keep(msg, len);
            }
            ChannelMsg::Eof if !self.eof => {
                self.eof = true;
                self.keep(msg, 0);
            }
            // A signal by a name of the client's own is no signal: not passed on.
            ChannelMsg::Signal {
                signal: russh::Sig::Custom(_),
            } => {}
            ChannelMsg::Signal { .. } if self.signals < EARLY_SIGNALS => {
                self.signals += 1;
                self.keep(msg, 0);
            }
            // Extended data from a client means nothing on a session channel: dropped, its bytes owed
            // back to the window.
            ChannelMsg::ExtendedData { data, .. } => {
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                self.early_dropped = self.early_dropped.saturating_add(len);
            }
            // A second EOF or a flood of signals is dropped.
            // x11, agent, other subsystems: refused by the handler.
            _ => {}
        }
        None
    }

    /// Takes a message sent after the start request, while the device is being dialled: input and
    /// resizes are kept; a second start, pty or env was refused by the handler and is dropped. Input is
    /// not charged to the early-input budgets: it is bounded by the channel's window (refilled only as
    /// the device takes it, since the channel arrived) and joined into chunks by the inbox, so the
    /// channel is read all through the dial, as a running session's is.
    fn take_after_start(&mut self, msg: ChannelMsg) {
        match msg {
            ChannelMsg::Data { .. } => self.hold(msg),
            ChannelMsg::ExtendedData { .. }
            | ChannelMsg::Eof
            | ChannelMsg::Signal { .. }
            | ChannelMsg::WindowChange { .. } => {
                let _ = self.take(msg);
            }
            _ => {}
        }
    }

    fn pty_info(&self) -> Option<PtyInfo> {
        self.pty.as_ref().map(|p| PtyInfo {
            term: p.term.clone(),
            cols: u16::try_from(p.cols).unwrap_or(u16::MAX),
            rows: u16::try_from(p.rows).unwrap_or(u16::MAX),
        })
    }
}

/// Serves one session channel toward `asset`; see the module doc.
pub async fn run(ctx: Context, asset: String, mut channel: Channel<Msg>, reply: ChannelOpenHandle) {
    reply.accept().await;
    // From its first byte, the channel's window is refilled as the device takes the vendor's data
    // (`bridge::run`), not as it arrives: what a session holds for its device is bounded by the window.
    // Refused only once the connection is gone.
    let _ = channel.window_by_consumption().await;
    let mut setup = Setup::new(ctx.limits.clone());
    // A channel that never starts holds a task and its input: it gets as long as a sign-in does.
    let grace = ctx.shared.app.config.ssh.login_grace_time;
    let deadline = tokio::time::Instant::now() + grace;
    let start = loop {
        let msg = tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {
                let why = format!("no shell, command or sftp was requested within {} s", grace.as_secs());
                refuse_audited(&ctx, &asset, &channel, &why).await;
                return;
            }
            m = channel.wait() => m,
        };
        match msg {
            None | Some(ChannelMsg::Close) => return,
            Some(msg) => {
                if let Some(start) = setup.take(msg) {
                    break start;
                }
                if setup.full() {
                    refuse_audited(
                        &ctx,
                        &asset,
                        &channel,
                        "too much input before a shell, command or sftp was requested",
                    )
                    .await;
                    return;
                }
            }
        }
    };
    if let Some(why) = setup.invalid.take() {
        refuse_audited(&ctx, &asset, &channel, &why).await;
        return;
    }
    // A command is recorded as text: one that is not UTF-8 would be recorded as something else than
    // the device would run (its bytes replaced), so it is refused, not rewritten.
    if let Start::Exec(command) | Start::Scp(command, _) = &start
        && std::str::from_utf8(command).is_err()
    {
        refuse_audited(
            &ctx,
            &asset,
            &channel,
            "the command is not UTF-8 text, which a session records; run it from a script on the device",
        )
        .await;
        return;
    }
    let app = &ctx.shared.app;
    let now = app.clock.now();
    let grant = match policy::authorize_ssh(&app.store, now, &ctx.principal, &asset).await {
        Ok(g) => g,
        Err(PolicyError::Denied(denial)) => {
            ctx.audit_refusal(
                Action::SessionRefused,
                format!("asset:{asset}"),
                serde_json::json!({"peer": ctx.peer.to_string(), "kind": start.kind().as_str(), "reason": denial.audit_reason()}),
            )
            .await;
            refuse(
                &channel,
                &denial.vendor_message(&ctx.shared.request_hint(ctx.vendor())),
            )
            .await;
            return;
        }
        Err(PolicyError::Store(e)) => {
            tracing::error!(error = %e, "policy check failed");
            refuse(
                &channel,
                "the bastion cannot check your access right now; try again in a minute",
            )
            .await;
            return;
        }
    };
    let mut pending = PendingSession::register(
        app,
        &ctx.shared.live,
        &ctx.shared.budgets,
        grant,
        start.kind(),
        ctx.origin(),
    );
    // Dial while listening: the watcher may close the session, the vendor may go, and the vendor's
    // messages must keep flowing (a full channel queue would stall the whole connection).
    let grant = pending.grant().clone();
    let dial = tokio::time::timeout(
        DEVICE_TIMEOUT,
        ctx.shared.device_links.open_session(
            &grant,
            &app.store,
            &app.secrets,
            ctx.shared.device_config.clone(),
        ),
    );
    tokio::pin!(dial);
    let dialled = loop {
        tokio::select! {
            // A close that is already there wins over a dial that is done too.
            biased;
            close = pending.closed() => {
                pending.refuse(Action::SessionRefused, &format!("closed before it started: {}", close.text)).await;
                refuse(&channel, &close.text).await;
                return;
            }
            () = ctx.stop.cancelled() => break None,
            d = &mut dial => break Some(d.unwrap_or_else(|_| Err(TargetError::Unreachable(format!(
                "no session within {} s", DEVICE_TIMEOUT.as_secs()
            ))))),
            // Read all through (`Setup::take_after_start`): a connection is never left unread.
            m = channel.wait() => match m {
                None | Some(ChannelMsg::Close) => break None,
                Some(msg) => setup.take_after_start(msg),
            },
        }
    };
    let Some(dialled) = dialled else {
        // The vendor went away while the device was being dialled: nothing started.
        return;
    };
    // The lease on the device connection (shared with the grant's other sessions) is held until the end.
    let (lease, device_channel) = match dialled {
        Ok(pair) => pair,
        Err(e) => {
            let action = match e {
                TargetError::HostKeyMismatch { .. } => Action::TargetHostkeyMismatch,
                _ => Action::SessionRefused,
            };
            tracing::warn!(asset = %asset, error = %e, "device connection refused");
            pending.refuse(action, &e.to_string()).await;
            refuse(&channel, &e.vendor_message(&asset)).await;
            return;
        }
    };
    // What the recording shows is what the device is sent: the command as recorded (UTF-8, above), the
    // terminal's recorded name and size, the environment variables passed. A file transfer's log has
    // no place for a terminal or environment variables: it gets neither (a terminal would also put the
    // device's scp or sftp-server behind a line discipline, acting on other bytes than the log shows).
    let detail = start.detail();
    if start.kind() == SessionKind::Sftp {
        setup.env.clear();
        setup.pty = None;
    }
    let pty = setup.pty_info();
    let mut live = match pending.start(&detail, pty.as_ref(), &setup.env).await {
        Ok(live) => live,
        Err(e) => {
            refuse(&channel, e.vendor_message()).await;
            let _ = device_channel.close().await;
            return;
        }
    };
    if let Start::Scp(_, scp) = &start {
        live.observe_scp(scp);
    }
    // The recording exists: now the device sees what the vendor asked for.
    let sent = async {
        if let (Some(p), Some(info)) = (&setup.pty, &pty) {
            let (cols, rows) = info.recorded_size();
            device_channel
                .request_pty(false, &info.term, cols.into(), rows.into(), 0, 0, &p.modes)
                .await?;
        }
        for (name, value) in &setup.env {
            device_channel
                .set_env(false, name.clone(), value.clone())
                .await?;
        }
        match &start {
            Start::Shell => device_channel.request_shell(true).await,
            Start::Exec(_) | Start::Scp(..) => device_channel.exec(true, detail.as_bytes()).await,
            Start::Sftp => device_channel.request_subsystem(true, "sftp").await,
        }
    }
    .await;
    let end = match sent {
        Err(e) => {
            tracing::debug!(error = %e, "the device connection failed at the start");
            // Closed here: the bridge, which closes a channel otherwise, never ran.
            refuse(&channel, "the connection to the device failed").await;
            crate::live::End::Lost(format!("device: {e}"))
        }
        Ok(()) => {
            bridge::run(
                &mut live,
                BridgeIo {
                    vendor: channel,
                    device: device_channel,
                    server: ctx.server.clone(),
                    early: setup.hand_over(),
                    stop: ctx.stop.clone(),
                },
            )
            .await
        }
    };
    live.end(end).await;
    // The channel was closed by the bridge; the device connection goes with its last session.
    drop(lease);
}

/// [`refuse`] a channel that broke a limit before it asked for anything, and audit it as a
/// `session.refused` (within the connection's refusal budget): no channel ends unrecorded.
async fn refuse_audited(ctx: &Context, asset: &str, channel: &Channel<Msg>, why: &str) {
    ctx.audit_refusal(
        Action::SessionRefused,
        format!("asset:{asset}"),
        serde_json::json!({"peer": ctx.peer.to_string(), "reason": why}),
    )
    .await;
    refuse(channel, why).await;
}

/// Tells the vendor why on stderr, with exit status 1, and closes the channel (already accepted), within
/// a few seconds: a client that is not reading does not keep the task.
async fn refuse(channel: &Channel<Msg>, message: &str) {
    let _ = tokio::time::timeout(super::home::WRITE_TIMEOUT, async {
        tell(channel, message).await;
        let _ = channel.exit_status(1).await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
    })
    .await;
}

/// One line to the vendor on stderr, so it never mixes into a program's stdout (scp, pipes).
async fn tell(channel: &Channel<Msg>, text: &str) {
    let _ = channel
        .extended_data_bytes(1, super::bastion_line(text, false))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str, value: &str) -> ChannelMsg {
        ChannelMsg::SetEnv {
            want_reply: false,
            variable_name: name.into(),
            variable_value: value.into(),
        }
    }

    /// The device is sent a locale's name, a terminal's name and its modes, nothing that carries a
    /// script or a hidden echo: what the recording's header shows is all it got.
    #[test]
    fn what_the_device_is_sent_before_the_start_is_only_names_and_modes() {
        for (name, value) in [
            ("LANG", "en_US.UTF-8"),
            ("LC_ALL", "C"),
            ("LC_MESSAGES", "de_DE@euro"),
            ("LC_ALL", ""),
        ] {
            assert!(env_allowed(name, value), "{name}={value}");
        }
        for (name, value) in [
            ("LC_X", "id; touch /tmp/x"),
            ("LC_X", "$(id)"),
            ("LC_X", "a b"),
            ("LC_x", "C"),
            ("LC_", "C"),
            ("LANGUAGE", "en"),
            ("LC_ALL", &"C".repeat(MAX_ENV_VALUE + 1)),
        ] {
            assert!(!env_allowed(name, value), "{name}={value}");
        }
        for term in [
            "xterm-256color",
            "screen.xterm",
            "vt100",
            "rxvt-unicode+x",
            "",
        ] {
            assert!(valid_term(term), "{term}");
        }
        for term in [
            "xterm;id",
            "xterm 256",
            "x\u{1b}]",
            &"x".repeat(MAX_TERM + 1),
        ] {
            assert!(!valid_term(term), "{term}");
        }
        let modes = device_modes(&[
            (Pty::ECHO, 0),
            (Pty::VINTR, 3),
            (Pty::VQUIT, 0x0041_4141),
            (Pty::ICANON, 1),
            (Pty::ISIG, 0x4141_4141),
            (Pty::TTY_OP_ISPEED, 38_400),
            (Pty::TTY_OP_OSPEED, 0x4141_4141),
        ]);
        assert_eq!(
            modes,
            vec![
                (Pty::VINTR, 3),
                (Pty::VQUIT, 255),
                (Pty::ICANON, 1),
                (Pty::ISIG, 1),
                (Pty::TTY_OP_ISPEED, 38_400),
                (Pty::TTY_OP_OSPEED, 38_400),
            ]
        );
        assert!(
            device_modes(&[(Pty::ECHO, 1)]).is_empty(),
            "echo is the device's"
        );
        // A pty request with a terminal name that is none stops the session before it starts.
        let mut setup = Setup::new(Arc::new(ConnectionLimits::default()));
        setup.take(ChannelMsg::RequestPty {
            want_reply: false,
            term: "xterm;eval".into(),
            col_width: 80,
            row_height: 24,
            pix_width: 0,
            pix_height: 0,
            terminal_modes: Vec::new(),
        });
        assert!(setup.invalid.is_some());
    }

    /// What a channel holds before its start is charged, environment and pty included: a client
    /// sending large `LC_*` values on many channels without a start request cannot grow the bastion's
    /// memory past the early-input budgets, and a value no locale has never reaches the device
    /// (environment variables are not recorded).
    #[test]
    fn environment_and_pty_held_before_the_start_are_bounded_and_charged() {
        let limits = Arc::new(ConnectionLimits::default());
        let mut setup = Setup::new(limits.clone());
        setup.take(env("LANG", "en_US.UTF-8"));
        setup.take(env("LC_BIG", &"x".repeat(MAX_ENV_VALUE + 1)));
        setup.take(env("LC_LONG_NAME_LONGER_THAN_ANY_LOCALE_VAR", "C"));
        setup.take(env("PATH", "/tmp"));
        assert_eq!(setup.env, vec![("LANG".into(), "en_US.UTF-8".into())]);
        assert_eq!(setup.early_bytes, MESSAGE_COST);
        for i in 0..2 * MAX_ENV {
            setup.take(env(&format!("LC_{i}"), &"v".repeat(MAX_ENV_VALUE)));
        }
        assert_eq!(setup.env.len(), MAX_ENV);
        assert!(setup.early_bytes <= MAX_ENV * (MAX_ENV_NAME + MAX_ENV_VALUE));
        assert_eq!(
            limits.early_input.load(Ordering::Relaxed),
            setup.early_bytes
        );

        // A terminal name of a packet's size counts toward the channel's budget.
        setup.take(ChannelMsg::RequestPty {
            want_reply: false,
            term: "t".repeat(EARLY_INPUT_PER_CHANNEL),
            col_width: 80,
            row_height: 24,
            pix_width: 0,
            pix_height: 0,
            terminal_modes: Vec::new(),
        });
        assert!(
            setup.full(),
            "a 64 KiB terminal name is as much as a channel may hold"
        );

        // Handed to the bridge at the start, nothing stays charged to the connection.
        setup.take(ChannelMsg::Data {
            data: bytes::Bytes::from_static(b"ls\r"),
        });
        let (inbox, dropped) = setup.hand_over();
        assert!(!inbox.is_empty());
        assert_eq!(dropped, 0);
        assert_eq!(limits.early_input.load(Ordering::Relaxed), 0);
        drop(setup);
        assert_eq!(limits.early_input.load(Ordering::Relaxed), 0);
    }
}
