//! The russh server handler for one vendor connection: authentication, then channel opens handed to
//! spawned tasks.
//!
//! Entry point: [`Connection`]. Callbacks run inside the connection's one task: they answer at once and
//! never wait on a device; channels are served by `device::run`, `home::run` and `forward::run` in their
//! own tasks (in the connection's tracing span), each holding a place among the connection's
//! `ssh.max_channels`. Channel requests (pty, env, shell, exec, subsystem) are answered here, in the
//! callback, because russh keeps one want-reply flag per channel and clients pipeline their requests: the
//! first shell, exec or sftp request of a channel is answered with success (the channel's task then
//! re-authorises before anything starts, and refuses on the channel if policy says no), every later one
//! with failure, so one channel never starts two things. Once both factors passed, the connection is
//! registered in `LiveSessions` with its kill switch: the watcher cuts it if the vendor is disabled,
//! locked or loses the key.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::server::{
    self, Auth as RusshAuth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session,
    VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::Ticket;
use super::auth::{Auth, TotpOutcome};
use super::context::{ConnectionLimits, Context, OpenChannels, audit_by};
use super::login::Login;
use super::{Shared, device, forward, home};
use crate::audit::Action;
use crate::live::registry::{ConnectionRegistration, Farewell};
use crate::policy::Principal;

/// Every refused key takes at least this long, whoever asked: unknown users and wrong keys look alike.
const KEY_REFUSAL: Duration = Duration::from_millis(150);
/// A wrong TOTP code takes this long to refuse (slows guessing; the lockout stops it).
const TOTP_REFUSAL: Duration = Duration::from_secs(1);
/// SSH_OPEN_RESOURCE_SHORTAGE.
const RESOURCE_SHORTAGE: u32 = 4;

/// Sleeps until `since + at_least`.
async fn pad(since: Instant, at_least: Duration) {
    tokio::time::sleep_until((since + at_least).into()).await;
}

/// A vendor's own connection to the listener.
#[derive(Debug)]
pub struct Outer {
    /// The listener's connection number (the registry key).
    pub id: u64,
    /// Its place in the admission counts; told when both factors passed.
    pub ticket: Arc<Ticket>,
    /// Cuts the connection (see `killswitch`).
    pub kill: CancellationToken,
}

/// Whether this connection is the vendor's own or a ProxyJump session inside a tunnel.
#[derive(Debug)]
enum Mode {
    Outer(Outer),
    /// Only the outer login's key, as that vendor, toward this asset.
    Inner {
        principal: Principal,
        asset: String,
    },
}

/// One vendor connection.
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
    mode: Mode,
    /// Where the vendor connects from (audit, logs).
    peer: SocketAddr,
    auth: Auth,
    /// Set when both factors passed.
    login: Option<(Login, Principal)>,
    /// Keeps the signed-in connection in the registry (so the watcher can cut it) while it lives.
    _registration: Option<ConnectionRegistration>,
    /// Cancelled when the connection ends: ends the tasks of channels that have started nothing.
    stop: CancellationToken,
    /// The connection's tracing span, for its channels' tasks.
    span: tracing::Span,
    /// Channels open now, until the client closes them.
    open_channels: Arc<OpenChannels>,
    /// Budgets the connection's channels share (early input, refusal audits).
    limits: Arc<ConnectionLimits>,
    /// Channels on which a shell, exec or subsystem request was accepted: nothing else may start there.
    started: HashSet<ChannelId>,
    /// Whether a refusal for too many channels was audited already (once per connection is enough).
    cap_audited: bool,
}

/// A connection that ends with its vendor's key step passed and no verdict on the second factor
/// leaves a trace: audited as it ends (`auth::audit_unfinished`), whichever way it ends.
impl Drop for Connection {
    fn drop(&mut self) {
        let Some(unfinished) = self.auth.unfinished() else {
            return;
        };
        let closed = self.how_closed();
        let (shared, peer) = (self.shared.clone(), self.peer);
        let audit = async move {
            super::auth::audit_unfinished(
                &shared.app,
                peer,
                &shared.key_holder_audits,
                unfinished,
                closed,
            )
            .await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(audit.instrument(self.span.clone()));
            }
            Err(_) => {
                tracing::warn!(%self.peer, "a sign-in left unfinished could not be audited: no runtime")
            }
        }
    }
}

impl Connection {
    pub fn new(
        shared: Arc<Shared>,
        outer: Outer,
        peer: SocketAddr,
        stop: CancellationToken,
        span: tracing::Span,
    ) -> Connection {
        Connection::with_mode(shared, Mode::Outer(outer), peer, stop, span)
    }

    /// The handler for a ProxyJump session inside `principal`'s tunnel to `asset`; its channels count
    /// against the vendor connection's `limits`, with that connection's own.
    pub fn inner(
        shared: Arc<Shared>,
        peer: SocketAddr,
        stop: CancellationToken,
        (principal, asset): (Principal, String),
        limits: Arc<ConnectionLimits>,
    ) -> Connection {
        let span = tracing::Span::current();
        let mut inner =
            Connection::with_mode(shared, Mode::Inner { principal, asset }, peer, stop, span);
        inner.limits = limits;
        inner
    }

    fn with_mode(
        shared: Arc<Shared>,
        mode: Mode,
        peer: SocketAddr,
        stop: CancellationToken,
        span: tracing::Span,
    ) -> Connection {
        let limits = match &mode {
            Mode::Outer(outer) => Arc::new(ConnectionLimits::new(outer.id)),
            // Replaced by the vendor connection's own (`inner`).
            Mode::Inner { .. } => Arc::default(),
        };
        Connection {
            shared,
            mode,
            peer,
            auth: Auth::default(),
            login: None,
            _registration: None,
            stop,
            span,
            open_channels: Arc::default(),
            limits,
            started: HashSet::new(),
            cap_audited: false,
        }
    }

    /// How the connection ended, as far as its handler can tell: for the audit of a sign-in it left
    /// unfinished.
    fn how_closed(&self) -> &'static str {
        match &self.mode {
            Mode::Outer(outer) if tokio::time::Instant::now() >= outer.ticket.deadline() => {
                "login grace time ended"
            }
            _ => "connection closed",
        }
    }

    /// A channel task's context, if the vendor signed in and the connection has room for another channel.
    fn context(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<Context, ChannelOpenFailure> {
        let Some((_, principal)) = &self.login else {
            return Err(ChannelOpenFailure::AdministrativelyProhibited);
        };
        let principal = principal.clone();
        let max = self.shared.app.config.ssh.max_channels;
        let Some(slot) = self.open_channels.take(channel, max, &self.limits) else {
            if !self.cap_audited {
                self.cap_audited = true;
                self.audit_refusal(Action::SshChannelsRefused, json!({"max_channels": max}));
            }
            return Err(ChannelOpenFailure::Other {
                code: RESOURCE_SHORTAGE,
                reason: format!(
                    "too many open channels on this connection (at most {max}); close some or open another connection"
                ),
            });
        };
        // Opening a channel is activity (`live::idle`), whether or not it starts anything.
        self.limits.activity.touch();
        Ok(Context {
            shared: self.shared.clone(),
            principal,
            peer: self.peer,
            server: session.handle(),
            stop: self.stop.child_token(),
            channel: slot,
            limits: self.limits.clone(),
        })
    }

    /// A child span of the connection's for a channel's task.
    fn channel_span(&self, channel: ChannelId, kind: &'static str) -> tracing::Span {
        tracing::info_span!(parent: &self.span, "channel", id = %channel, kind)
    }

    fn only(methods: &[MethodKind]) -> Option<MethodSet> {
        Some(MethodSet::from(methods))
    }

    /// Audits a refused request (the vendor saw the refusal from their client), within the connection's
    /// refusal budget.
    fn audit_refusal(&self, action: Action, detail: serde_json::Value) {
        let Some((_, principal)) = self.login.clone() else {
            return;
        };
        let action = match self.limits.audit_refusal() {
            Some(true) => action,
            Some(false) => Action::SshRefusalsSuppressed,
            None => {
                // Debug only: the `ssh.refusals.suppressed` event said so once, and a client must
                // not be able to flood the log instead of the audit log.
                tracing::debug!(
                    %action,
                    "refusal not audited (this connection's budget is spent)"
                );
                return;
            }
        };
        let shared = self.shared.clone();
        let subject = format!("vendor:{}", principal.vendor);
        let mut detail = detail;
        if let Some(map) = detail.as_object_mut() {
            map.insert("peer".into(), json!(self.peer.to_string()));
        }
        tokio::spawn(async move {
            audit_by(
                &shared,
                &principal,
                action,
                subject,
                json!({"request": detail}),
            )
            .await;
        });
    }

    /// Refuses a channel of a type the client may not open toward a server (`x11`, `forwarded-tcpip`:
    /// both only ever come from a server), and audits it.
    fn refuse_channel_type(
        &self,
        channel_type: &'static str,
        detail: serde_json::Value,
        reply: ChannelOpenHandle,
    ) {
        let mut detail = detail;
        if let Some(map) = detail.as_object_mut() {
            map.insert("type".into(), json!(channel_type));
        }
        self.audit_refusal(Action::ChannelRefused, detail);
        tokio::spawn(reply.reject(ChannelOpenFailure::AdministrativelyProhibited));
    }

    /// Answers a shell, exec or subsystem request: success for the first one on a channel, failure after.
    fn answer_start(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if self.started.insert(channel) {
            session.channel_success(channel)
        } else {
            self.audit_refusal(
                Action::SessionRequestRefused,
                json!({"reason": "a second shell, exec or subsystem request on one channel"}),
            );
            session.channel_failure(channel)
        }
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<RusshAuth, Self::Error> {
        Ok(RusshAuth::Reject {
            proceed_with_methods: Self::only(&[MethodKind::PublicKey]),
            partial_success: false,
        })
    }

    async fn auth_password(
        &mut self,
        _user: &str,
        _password: &str,
    ) -> Result<RusshAuth, Self::Error> {
        Ok(RusshAuth::Reject {
            proceed_with_methods: Self::only(&[MethodKind::PublicKey]),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<RusshAuth, Self::Error> {
        let since = Instant::now();
        if let Mode::Inner { principal, .. } = &self.mode {
            let ok =
                crate::identity::keys::fingerprint(offer.public_key) == principal.key_fingerprint;
            if !ok {
                pad(since, KEY_REFUSAL).await;
            }
            return Ok(if ok {
                RusshAuth::Accept
            } else {
                RusshAuth::reject()
            });
        }
        if self
            .auth
            .key_offered(&self.shared.app, user, offer.public_key)
            .await
        {
            Ok(RusshAuth::Accept)
        } else {
            pad(since, KEY_REFUSAL).await;
            Ok(RusshAuth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<RusshAuth, Self::Error> {
        let since = Instant::now();
        if let Mode::Inner { principal, asset } = &self.mode {
            if self.auth.inner_key(user, key.public_key, principal) {
                let login = Login {
                    vendor: principal.vendor.clone(),
                    asset: Some(asset.clone()),
                };
                self.login = Some((login, principal.clone()));
                return Ok(RusshAuth::Accept);
            }
            pad(since, KEY_REFUSAL).await;
            return Ok(RusshAuth::reject());
        }
        let ticket = match &self.mode {
            Mode::Outer(outer) => Some(outer.ticket.clone()),
            Mode::Inner { .. } => None,
        };
        if !self
            .auth
            .key_verified(&self.shared.app, user, key.public_key, ticket.as_deref())
            .await
        {
            pad(since, KEY_REFUSAL).await;
            return Ok(RusshAuth::reject());
        }
        // First factor done: partial success, the TOTP code must follow.
        Ok(RusshAuth::Reject {
            proceed_with_methods: Self::only(&[MethodKind::KeyboardInteractive]),
            partial_success: true,
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<RusshAuth, Self::Error> {
        if !self.auth.key_done_for(user) || matches!(self.mode, Mode::Inner { .. }) {
            return Ok(RusshAuth::Reject {
                proceed_with_methods: Self::only(&[MethodKind::PublicKey]),
                partial_success: false,
            });
        }
        let Some(response) = response else {
            let prompt = self.auth.prompt(&self.shared.app).await;
            return Ok(RusshAuth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Owned(prompt.instructions),
                prompts: Cow::Owned(
                    prompt
                        .prompts
                        .into_iter()
                        .map(|p| (Cow::Owned(p), false))
                        .collect(),
                ),
            });
        };
        // At most 16 bytes of each of at most two answers are looked at: a huge paste is just a wrong
        // code.
        let answers: Vec<String> = response
            .take(2)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(16)]).into_owned())
            .collect();
        let since = Instant::now();
        let ticket = match &self.mode {
            Mode::Outer(outer) => Some(outer.ticket.clone()),
            Mode::Inner { .. } => None,
        };
        match self
            .auth
            .answer(
                &self.shared.app,
                self.peer,
                &answers,
                ticket.as_deref(),
                &self.shared.key_holder_audits,
            )
            .await
        {
            TotpOutcome::PasskeyLink { prompt } | TotpOutcome::Tell { prompt } => {
                Ok(RusshAuth::Partial {
                    name: Cow::Borrowed(""),
                    instructions: Cow::Borrowed(""),
                    prompts: Cow::Owned(vec![(Cow::Owned(prompt), false)]),
                })
            }
            TotpOutcome::Accepted(principal) => {
                let Some(login) = Login::parse(user) else {
                    return Ok(RusshAuth::reject());
                };
                if let Mode::Outer(outer) = &self.mode {
                    outer.ticket.signed_in(&principal.vendor);
                    self._registration = Some(self.shared.live.connect(
                        outer.id,
                        &principal,
                        (self.peer.to_string(), self.shared.app.clock.now()),
                        outer.kill.clone(),
                        self.limits.activity.clone(),
                    ));
                }
                self.login = Some((login, principal));
                Ok(RusshAuth::Accept)
            }
            // Told why: no method is left to try.
            TotpOutcome::Barred => {
                pad(since, TOTP_REFUSAL).await;
                Ok(RusshAuth::Reject {
                    proceed_with_methods: Self::only(&[]),
                    partial_success: false,
                })
            }
            TotpOutcome::Refused => {
                pad(since, TOTP_REFUSAL).await;
                Ok(RusshAuth::Reject {
                    proceed_with_methods: Self::only(&[MethodKind::KeyboardInteractive]),
                    partial_success: false,
                })
            }
        }
    }

    /// Once signed in, the watcher is given a way to tell this client why, should it cut the connection
    /// (disabled, idle): an SSH disconnect message, which OpenSSH prints, so a vendor with only tunnels
    /// open (`ssh -N -L`) learns it too.
    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Mode::Outer(outer) = &self.mode {
            let handle = session.handle();
            self.shared.live.set_farewell(
                outer.id,
                Farewell::new(move |why: String| {
                    Box::pin(async move {
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, why, String::new())
                            .await;
                    })
                }),
            );
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ctx = match self.context(channel.id(), session) {
            Ok(ctx) => ctx,
            Err(why) => {
                tokio::spawn(reply.reject(why));
                return Ok(());
            }
        };
        let asset = self.login.as_ref().and_then(|(l, _)| l.asset.clone());
        match asset {
            Some(asset) => {
                let span = self.channel_span(channel.id(), "session");
                tokio::spawn(device::run(ctx, asset, channel, reply).instrument(span));
            }
            None => {
                let span = self.channel_span(channel.id(), "home");
                tokio::spawn(home::run(ctx, channel, reply).instrument(span));
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Mode::Inner { .. } = self.mode {
            self.audit_refusal(
                Action::TunnelRefused,
                json!({"reason": "tunnel inside a ProxyJump session"}),
            );
            tokio::spawn(reply.reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "tunnels inside a ProxyJump session are not allowed; open them on the bastion connection".into(),
            }));
            return Ok(());
        }
        let ctx = match self.context(channel.id(), session) {
            Ok(ctx) => ctx,
            Err(why) => {
                tokio::spawn(reply.reject(why));
                return Ok(());
            }
        };
        let originator = format!(
            "{}:{originator_port}",
            crate::model::truncate_for_display(originator_address, 64)
        );
        let span = self.channel_span(channel.id(), "direct-tcpip");
        tokio::spawn(
            forward::run(
                ctx,
                channel,
                crate::model::truncate_for_display(host_to_connect, 255),
                port_to_connect,
                originator,
                reply,
            )
            .instrument(span),
        );
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.audit_refusal(
            Action::ForwardStreamlocalRefused,
            json!({"path": crate::model::truncate_for_display(socket_path, 80)}),
        );
        tokio::spawn(reply.reject(ChannelOpenFailure::Other {
            code: 1,
            reason: "Unix socket forwarding is not allowed by chaperone".into(),
        }));
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel_type(
            "x11",
            json!({"originator": format!("{}:{originator_port}", crate::model::truncate_for_display(originator_address, 64))}),
            reply,
        );
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel_type(
            "forwarded-tcpip",
            json!({"to": format!("{}:{port_to_connect}", crate::model::truncate_for_display(host_to_connect, 255))}),
            reply,
        );
        Ok(())
    }

    /// A channel type russh refuses by itself (third_party/README.md, russh patch 7): audited here.
    async fn channel_open_refused(
        &mut self,
        channel_type: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.audit_refusal(
            Action::ChannelRefused,
            json!({"type": crate::model::truncate_for_display(channel_type, 64)}),
        );
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A terminal is set up before the session starts (the channel's task keeps it for the device).
        if self.started.contains(&channel) {
            session.channel_failure(channel)
        } else {
            session.channel_success(channel)
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if device::env_allowed(variable_name, variable_value) && !self.started.contains(&channel) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_start(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer_start(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let on_asset = self.login.as_ref().is_some_and(|(l, _)| l.asset.is_some());
        if name == "sftp" && on_asset {
            self.answer_start(channel, session)
        } else {
            self.audit_refusal(
                Action::SessionSubsystemRefused,
                json!({"subsystem": crate::model::truncate_for_display(name, 64)}),
            );
            session.channel_failure(channel)
        }
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.started.remove(&channel);
        self.open_channels.closed(channel);
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.audit_refusal(Action::ForwardX11Refused, json!({}));
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(Action::ForwardAgentRefused, json!({}));
        Ok(false)
    }

    async fn signal(
        &mut self,
        _channel: ChannelId,
        _signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Forwarded by the bridge from the channel's own message stream.
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(
            Action::ForwardRemoteRefused,
            json!({"address": crate::model::truncate_for_display(address, 80), "port": *port}),
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(
            Action::ForwardStreamlocalRefused,
            json!({"path": crate::model::truncate_for_display(socket_path, 80)}),
        );
        Ok(false)
    }
}
