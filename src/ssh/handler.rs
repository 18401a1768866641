//! The russh server handler for one vendor connection: authentication, then channel opens handed to
//! spawned tasks.
//!
//! Entry point: [`Connection`]. Callbacks run inside the connection's one task: they answer at once and
//! never wait on a device; session channels are served by `session::run` / `home::run` in their own tasks.
//! Channel requests (pty, env, shell, exec, subsystem) are answered here, in the callback, because russh
//! keeps one want-reply flag per channel and OpenSSH pipelines its requests; the bridge forwards them
//! to the device and ends the channel if the device refuses.

use std::borrow::Cow;
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

use super::auth::{Auth, TotpOutcome};
use super::login::Login;
use super::{Shared, home, session};
use crate::audit::AuditEvent;
use crate::model::Vendor;

/// Every refused key takes at least this long, whoever asked: unknown users and wrong keys look alike.
const KEY_REFUSAL: Duration = Duration::from_millis(150);
/// A wrong TOTP code takes this long to refuse (slows guessing; the lockout stops it).
const TOTP_REFUSAL: Duration = Duration::from_secs(1);

/// Sleeps until `since + at_least`.
async fn pad(since: Instant, at_least: Duration) {
    tokio::time::sleep_until((since + at_least).into()).await;
}

/// Whether this connection is the vendor's own or a ProxyJump session inside a tunnel.
#[derive(Debug, Clone)]
enum Mode {
    Outer,
    /// Only the outer login's key, as that vendor, toward this asset.
    Inner {
        vendor: Vendor,
        key: String,
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
    login: Option<Login>,
    /// Cancelled when the connection ends or the server shuts down: ends this connection's sessions.
    stop: CancellationToken,
}

impl Connection {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, stop: CancellationToken) -> Connection {
        Connection {
            shared,
            mode: Mode::Outer,
            peer,
            auth: Auth::default(),
            login: None,
            stop,
        }
    }

    /// The handler for a ProxyJump session inside `vendor`'s tunnel to `asset`.
    pub fn inner(
        shared: Arc<Shared>,
        peer: SocketAddr,
        stop: CancellationToken,
        vendor: Vendor,
        key: String,
        asset: String,
    ) -> Connection {
        Connection {
            shared,
            mode: Mode::Inner { vendor, key, asset },
            peer,
            auth: Auth::default(),
            login: None,
            stop,
        }
    }

    fn context(&self, session: &mut Session) -> Option<session::Context> {
        let vendor = self.auth.vendor()?.clone();
        Some(session::Context {
            shared: self.shared.clone(),
            vendor,
            peer: self.peer,
            server: session.handle(),
            stop: self.stop.child_token(),
            key_fingerprint: self.auth.key_fingerprint().map(str::to_owned),
        })
    }

    fn only(methods: &[MethodKind]) -> Option<MethodSet> {
        Some(MethodSet::from(methods))
    }

    /// Audits a refused forwarding request (the vendor saw the refusal from their client).
    fn audit_refusal(&self, action: &'static str, detail: serde_json::Value) {
        let Some(vendor) = self.auth.vendor().cloned() else {
            return;
        };
        let app = self.shared.app.clone();
        let peer = self.peer.to_string();
        tokio::spawn(async move {
            let now = app.clock.now();
            let result = async {
                let mut tx = app.store.begin().await?;
                tx.audit(
                    AuditEvent::new(
                        format!("vendor:{}", vendor.name),
                        action,
                        format!("vendor:{}", vendor.name),
                        json!({"peer": peer, "request": detail}),
                    ),
                    now,
                )
                .await?;
                tx.commit(action).await
            }
            .await;
            if let Err(e) = result {
                tracing::error!(error = %e, action, "cannot audit a refusal");
            }
        });
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
        if let Mode::Inner { key, .. } = &self.mode {
            let ok = crate::identity::keys::fingerprint(offer.public_key) == *key;
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
        if let Mode::Inner {
            vendor,
            key: outer,
            asset,
        } = self.mode.clone()
        {
            if self.auth.inner_key(user, key.public_key, &vendor, &outer) {
                self.login = Some(Login {
                    vendor: vendor.name.clone(),
                    asset: Some(asset),
                });
                return Ok(RusshAuth::Accept);
            }
            pad(since, KEY_REFUSAL).await;
            return Ok(RusshAuth::reject());
        }
        if !self
            .auth
            .key_verified(&self.shared.app, user, key.public_key)
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
        let Some(mut response) = response else {
            return Ok(RusshAuth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(vec![(Cow::Borrowed("TOTP code: "), false)]),
            });
        };
        // At most 16 bytes are looked at: a huge paste is just a wrong code.
        let answer = response
            .next()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(16)]).into_owned())
            .unwrap_or_default();
        let since = Instant::now();
        match self.auth.totp(&self.shared.app, self.peer, &answer).await {
            TotpOutcome::Accepted => {
                self.login = Login::parse(user);
                Ok(RusshAuth::Accept)
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

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(login), Some(ctx)) = (self.login.clone(), self.context(session)) else {
            return Ok(()); // dropping `reply` refuses the channel
        };
        match login.asset {
            Some(asset) => {
                tokio::spawn(session::run(ctx, asset, channel, reply));
            }
            None => {
                tokio::spawn(home::run(ctx, channel, reply));
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
        let Some(ctx) = self.context(session) else {
            return Ok(());
        };
        if let Mode::Inner { .. } = self.mode {
            self.audit_refusal(
                "tunnel.refused",
                json!({"reason": "tunnel inside a ProxyJump session"}),
            );
            tokio::spawn(reply.reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "tunnels inside a ProxyJump session are not allowed; open them on the bastion connection".into(),
            }));
            return Ok(());
        }
        let originator = format!(
            "{}:{originator_port}",
            crate::model::truncate_for_display(originator_address, 64)
        );
        tokio::spawn(crate::tunnel::open(
            ctx,
            channel,
            crate::model::truncate_for_display(host_to_connect, 255),
            port_to_connect,
            originator,
            reply,
        ));
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
            "forward.streamlocal.refused",
            json!({"path": crate::model::truncate_for_display(socket_path, 80)}),
        );
        tokio::spawn(reply.reject(ChannelOpenFailure::Other {
            code: 1,
            reason: "Unix socket forwarding is not allowed by chaperone".into(),
        }));
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
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if super::bridge::env_allowed(variable_name) {
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
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" && self.login.as_ref().is_some_and(|l| l.asset.is_some()) {
            session.channel_success(channel)
        } else {
            self.audit_refusal("session.subsystem.refused", json!({"subsystem": name}));
            session.channel_failure(channel)
        }
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
        self.audit_refusal("forward.x11.refused", json!({}));
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal("forward.agent.refused", json!({}));
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
            "forward.remote.refused",
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
            "forward.streamlocal.refused",
            json!({"path": crate::model::truncate_for_display(socket_path, 80)}),
        );
        Ok(false)
    }
}
