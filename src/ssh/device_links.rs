//! Device connections shared by the sessions of one grant, as OpenSSH's ControlMaster shares one
//! connection among a user's sessions: a burst of sessions under one grant costs the device one login
//! per [`SESSIONS_PER_LINK`] sessions instead of one each (a device login is what a session start
//! spends most of its time on: fork, key exchange and authentication on the device).
//!
//! A link carries only sessions of the grant it was dialled for, so of one vendor, one asset and one
//! service; nothing crosses between vendors or grants. Each session still has its own channel, its own
//! start checks and its own end; the link is disconnected when its last session ends, so a revoked or
//! expired grant (which ends all of its sessions) leaves no connection behind.
//!
//! Architecture Invariant: a device connection is used by the sessions of exactly one grant, and is
//! closed when the last of them ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use russh::client::Msg;
use russh::{Channel, Disconnect};
use tokio::sync::OnceCell;

use crate::policy::Grant;
use crate::secrets::SecretsKey;
use crate::store::Store;
use crate::target::{self, Device, TargetError};

/// Sessions on one device connection at most: OpenSSH sshd's `MaxSessions` default. A device that allows
/// fewer refuses the channel, and the session gets a connection of its own.
pub const SESSIONS_PER_LINK: usize = 10;

/// The shared device connections of one bastion, by grant.
#[derive(Debug, Default)]
pub struct DeviceLinks {
    by_grant: Mutex<HashMap<i64, Vec<Arc<Link>>>>,
}

struct Link {
    /// Dialled once, by the first session that needs it; the others wait for it.
    device: OnceCell<Device>,
    /// Sessions holding a lease on it (reserved or started); changed only under the map's lock.
    leases: std::sync::atomic::AtomicUsize,
    /// No more sessions: the device refused a channel on it, or it failed.
    full: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("dialled", &self.device.initialized())
            .field("leases", &self.leases)
            .field("full", &self.full)
            .finish()
    }
}

/// A session's hold on a device connection; dropping it closes the connection if it was the last.
#[derive(Debug)]
pub struct Lease {
    links: Arc<DeviceLinks>,
    grant: i64,
    link: Arc<Link>,
}

impl DeviceLinks {
    fn map(&self) -> MutexGuard<'_, HashMap<i64, Vec<Arc<Link>>>> {
        // A panic while holding this lock cannot leave the map inconsistent (each change is one step).
        self.by_grant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session channel on a device connection of `grant`: an open one with room, else a new one.
    pub async fn open_session(
        self: &Arc<Self>,
        grant: &Grant,
        store: &Store,
        secrets: &SecretsKey,
        config: Arc<russh::client::Config>,
    ) -> Result<(Lease, Channel<Msg>), TargetError> {
        // Two tries: a link that turns out full or dead is left for a fresh one.
        for _ in 0..2 {
            let lease = self.reserve(grant.id());
            let device = lease
                .link
                .device
                .get_or_try_init(|| target::connect(grant, store, secrets, config.clone()))
                .await;
            let device = match device {
                Ok(d) => d,
                Err(e) => {
                    lease.mark_full();
                    return Err(e);
                }
            };
            match device.channel_open_session().await {
                Ok(channel) => return Ok((lease, channel)),
                Err(e) => {
                    tracing::debug!(error = %e, grant = grant.id(), "the device refused a channel on a shared connection");
                    lease.mark_full();
                    if lease.alone() {
                        return Err(TargetError::Ssh(format!(
                            "the device refused a session channel: {e}"
                        )));
                    }
                }
            }
        }
        // The second try was on a fresh link (the first was marked full), so this is the device's answer.
        Err(TargetError::Ssh(
            "the device refused a session channel".into(),
        ))
    }

    /// A place on a link of `grant` with room, or on a new link.
    fn reserve(self: &Arc<Self>, grant: i64) -> Lease {
        use std::sync::atomic::Ordering;
        let mut map = self.map();
        let links = map.entry(grant).or_default();
        let link = match links.iter().find(|l| {
            !l.full.load(Ordering::Relaxed)
                && l.leases.load(Ordering::Relaxed) < SESSIONS_PER_LINK
                && !l.device.get().is_some_and(|d| d.is_closed())
        }) {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(Link {
                    device: OnceCell::new(),
                    leases: 0.into(),
                    full: false.into(),
                });
                links.push(l.clone());
                l
            }
        };
        link.leases.fetch_add(1, Ordering::Relaxed);
        Lease {
            links: self.clone(),
            grant,
            link,
        }
    }
}

impl Lease {
    fn mark_full(&self) {
        self.link
            .full
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this lease is the link's only one (then a refused channel is the device's answer to a
    /// connection with nothing else on it, not a sign that the link is full).
    fn alone(&self) -> bool {
        let _map = self.links.map();
        self.link.leases.load(std::sync::atomic::Ordering::Relaxed) == 1
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let mut map = self.links.map();
        if self.link.leases.fetch_sub(1, Ordering::Relaxed) != 1 {
            return;
        }
        // The last session on this link: forget it and hang up.
        if let Some(links) = map.get_mut(&self.grant) {
            links.retain(|l| !Arc::ptr_eq(l, &self.link));
            if links.is_empty() {
                map.remove(&self.grant);
            }
        }
        drop(map);
        if self.link.device.get().is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let link = self.link.clone();
            runtime.spawn(async move {
                if let Some(device) = link.device.get() {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        device.disconnect(Disconnect::ByApplication, "", "en"),
                    )
                    .await;
                }
            });
        }
    }
}
