//! Device connections shared by the sessions of one grant, as OpenSSH's ControlMaster shares one
//! connection among a user's sessions: a burst of sessions under one grant costs the device one login
//! per `[ssh] device_sessions_per_connection` sessions (default 10, sshd's `MaxSessions` default)
//! instead of one each (a device login is what a session start spends most of its time on: fork, key
//! exchange and authentication on the device, and the post-quantum key pair on the bastion).
//!
//! A device that allows fewer sessions per connection than configured refuses a channel: the link is
//! closed to newcomers, and the grant's limit drops to the channels the link had open, so the refused
//! sessions (and later ones) go to new links that the device accepts.
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

/// Tries of a session to find a link the device takes a channel on: the first, one after the grant's
/// limit was learned from a refusal, and one more in case another burst's refusal lowered it again.
const TRIES: usize = 3;

/// The shared device connections of one bastion, by grant.
#[derive(Debug)]
pub struct DeviceLinks {
    by_grant: Mutex<HashMap<i64, GrantLinks>>,
    /// Sessions per link unless a device showed it takes fewer (`[ssh] device_sessions_per_connection`).
    per_link: usize,
}

/// The links of one grant.
#[derive(Debug)]
struct GrantLinks {
    links: Vec<Arc<Link>>,
    /// Sessions per link: the configured number, or fewer once the device refused a channel.
    per_link: usize,
}

struct Link {
    /// Dialled once, by the first session that needs it; the others wait for it.
    device: OnceCell<Device>,
    /// Sessions holding a lease on it (reserved or started); changed only under the map's lock.
    leases: std::sync::atomic::AtomicUsize,
    /// No more sessions: the device refused a channel on it, or it failed.
    full: std::sync::atomic::AtomicBool,
    /// Sessions whose channel the device opened on it, still held.
    opened: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("dialled", &self.device.initialized())
            .field("leases", &self.leases)
            .field("full", &self.full)
            .field("opened", &self.opened)
            .finish()
    }
}

/// A session's hold on a device connection; dropping it closes the connection if it was the last.
#[derive(Debug)]
pub struct Lease {
    links: Arc<DeviceLinks>,
    grant: i64,
    link: Arc<Link>,
    /// The device opened this session's channel on the link.
    opened: bool,
}

impl DeviceLinks {
    /// No links yet; at most `per_link` sessions (at least 1) on each.
    pub fn new(per_link: usize) -> DeviceLinks {
        DeviceLinks {
            by_grant: Mutex::default(),
            per_link: per_link.max(1),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<i64, GrantLinks>> {
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
        // A link that turns out full or dead is left for another.
        for _ in 0..TRIES {
            let mut lease = self.reserve(grant.id());
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
                Ok(channel) => {
                    lease.opened();
                    // The device's window on it is refilled as its output reaches the vendor
                    // (`bridge::run`), not as it arrives: a vendor who stops reading then holds only
                    // their own channel, never the connection the grant's other sessions share. Set
                    // before any request, so before the device can send data. Refused only once the
                    // connection is gone, which the first request finds.
                    let _ = channel.window_by_consumption().await;
                    return Ok((lease, channel));
                }
                Err(e) => {
                    tracing::debug!(error = %e, grant = grant.id(), "the device refused a channel on a shared connection");
                    if lease.refused() {
                        return Err(TargetError::Ssh(format!(
                            "the device refused a session channel: {e}"
                        )));
                    }
                }
            }
        }
        Err(TargetError::Ssh(
            "the device refused a session channel on every connection tried".into(),
        ))
    }

    /// A place on a link of `grant` with room, or on a new link.
    fn reserve(self: &Arc<Self>, grant: i64) -> Lease {
        use std::sync::atomic::Ordering;
        let mut map = self.map();
        let g = map.entry(grant).or_insert_with(|| GrantLinks {
            links: Vec::new(),
            per_link: self.per_link,
        });
        let per_link = g.per_link;
        let link = match g.links.iter().find(|l| {
            !l.full.load(Ordering::Relaxed)
                && l.leases.load(Ordering::Relaxed) < per_link
                && !l.device.get().is_some_and(|d| d.is_closed())
        }) {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(Link {
                    device: OnceCell::new(),
                    leases: 0.into(),
                    full: false.into(),
                    opened: 0.into(),
                });
                g.links.push(l.clone());
                l
            }
        };
        link.leases.fetch_add(1, Ordering::Relaxed);
        Lease {
            links: self.clone(),
            grant,
            link,
            opened: false,
        }
    }
}

impl Lease {
    fn mark_full(&self) {
        self.link
            .full
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn opened(&mut self) {
        let _map = self.links.map();
        self.opened = true;
        self.link
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The device refused this session's channel: the link takes nobody else, and the grant's links
    /// from now on take at most what this one had open (counted as their sessions saw the answers, so
    /// perhaps fewer than the device took: then more logins than needed, never a refused session).
    /// Whether the refusal is the device's answer to the session itself (nothing else held the link,
    /// so another link would not do better).
    fn refused(&self) -> bool {
        use std::sync::atomic::Ordering;
        let mut map = self.links.map();
        self.mark_full();
        let open = self.link.opened.load(Ordering::Relaxed);
        if let Some(g) = map.get_mut(&self.grant)
            && open > 0
            && open < g.per_link
        {
            tracing::info!(
                grant = self.grant,
                sessions = open,
                "the device takes fewer sessions per connection than configured; holding this grant's connections to that"
            );
            g.per_link = open;
        }
        self.link.leases.load(Ordering::Relaxed) == 1
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let mut map = self.links.map();
        if self.opened {
            self.link.opened.fetch_sub(1, Ordering::Relaxed);
        }
        if self.link.leases.fetch_sub(1, Ordering::Relaxed) != 1 {
            return;
        }
        // The last session on this link: forget it and hang up.
        if let Some(g) = map.get_mut(&self.grant) {
            g.links.retain(|l| !Arc::ptr_eq(l, &self.link));
            if g.links.is_empty() {
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
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                        let _ = device.disconnect(Disconnect::ByApplication, "", "en").await;
                        // Until russh's task has sent it and ended (the device closed its side):
                        // then the socket is shut down (`target::Device`'s drop), at the latest
                        // after the time-out, whatever the device does.
                        while !device.is_closed() {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    })
                    .await;
                }
            });
        }
    }
}
