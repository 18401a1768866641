//! Who may hold a connection to the SSH listener, and for how long before signing in: OpenSSH's
//! `MaxStartups`, `PerSourceMaxStartups` and `LoginGraceTime`, plus a cap on all connections.
//!
//! Entry point: [`Admission::admit`], called by the accept loop for every new connection *before* anything
//! is sent or awaited on it: a refused connection is closed at once, so the accept loop never waits for a
//! slot (a flood of idle sockets cannot stop it from accepting, and so from refusing, the next one). An
//! admitted connection holds a [`Ticket`] until it ends; [`Ticket::signed_in`] moves it out of the
//! not-yet-signed-in counts, and [`Ticket::grace_expired`] completes when it failed to sign in in time.
//!
//! With an address's not-yet-signed-in connections capped, a flood from one address fills only its own
//! share; the early drop ([`MaxStartups`]) and the grace time bound what a flood from many addresses holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chaperone_web_approval::core::Source;
use tokio_util::sync::CancellationToken;

use crate::config::{MaxStartups, SshConfig};

/// Why a connection was not admitted (logged, never told to the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `ssh.max_connections` connections are open.
    Full,
    /// Dropped early: too many connections have not signed in yet (`ssh.max_startups`).
    Startups,
    /// This address holds `ssh.per_source_max_startups` connections that have not signed in yet.
    PerSource,
}

#[derive(Debug, Default)]
struct Counts {
    /// Every admitted connection still open.
    total: usize,
    /// Those not signed in yet.
    unauthenticated: usize,
    /// Those not signed in yet, by address.
    /// By [`Source`]: the one rule for who counts as one address (an IPv6 /64 is one), shared with the
    /// web's limits.
    by_source: HashMap<Source, usize>,
    /// Those signed in, by vendor.
    by_vendor: HashMap<String, usize>,
}

/// The listener's connection counts and limits.
#[derive(Debug)]
pub struct Admission {
    counts: Mutex<Counts>,
    max_connections: usize,
    max_startups: MaxStartups,
    per_source: usize,
    per_vendor: usize,
    grace: Duration,
}

impl Admission {
    pub fn new(config: &SshConfig) -> Arc<Admission> {
        Arc::new(Admission {
            counts: Mutex::default(),
            max_connections: config.max_connections,
            max_startups: config.max_startups,
            per_source: config.per_source_max_startups,
            per_vendor: config.max_connections_per_vendor,
            grace: config.login_grace_time,
        })
    }

    /// Admits a new connection from `peer`, or says why not. `roll` is a number in 0..100 for the early
    /// drop (random in production).
    pub fn admit_with(self: &Arc<Self>, peer: IpAddr, roll: u32) -> Result<Arc<Ticket>, Refusal> {
        let source = Source::of(peer);
        let mut counts = self.counts.lock().map_err(|_| Refusal::Full)?;
        if counts.total >= self.max_connections {
            return Err(Refusal::Full);
        }
        if counts.by_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(Refusal::PerSource);
        }
        if roll < self.max_startups.drop_percent(counts.unauthenticated) {
            return Err(Refusal::Startups);
        }
        counts.total += 1;
        counts.unauthenticated += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Ok(Arc::new(Ticket {
            admission: self.clone(),
            source,
            signed_in: CancellationToken::new(),
            who: std::sync::OnceLock::new(),
            held: Mutex::new(None),
            deadline: std::sync::Mutex::new(tokio::time::Instant::now() + self.grace),
            extended: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// [`Admission::admit_with`] with a random roll.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Arc<Ticket>, Refusal> {
        self.admit_with(peer, rand::random_range(0..100))
    }

    /// (open connections, not signed in yet).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        self.counts
            .lock()
            .map(|c| (c.total, c.unauthenticated))
            .unwrap_or((0, 0))
    }

    fn release_vendor(counts: &mut Counts, vendor: &str) {
        if let Some(n) = counts.by_vendor.get_mut(vendor) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_vendor.remove(vendor);
            }
        }
    }

    fn release_startup(counts: &mut Counts, source: Source) {
        counts.unauthenticated = counts.unauthenticated.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&source);
            }
        }
    }
}

/// One admitted connection's place in the counts; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    /// Cancelled once the connection signed in.
    signed_in: CancellationToken,
    /// Who signed in on it (the vendor's name), for the `auth.logout` written when it ends.
    who: std::sync::OnceLock<String>,
    /// When the login grace time ends: one deadline from the accept, however often it is waited on
    /// (moved once at most, by [`Ticket::extend_once`]).
    deadline: std::sync::Mutex<tokio::time::Instant>,
    extended: std::sync::atomic::AtomicBool,
    /// The vendor whose count this connection holds a place in while their code is judged
    /// ([`Ticket::hold_vendor`]); locked after `Admission::counts`, never before.
    held: Mutex<Option<String>>,
}

/// A place in a vendor's count of signed-in connections, taken before their code is judged; given back
/// when dropped, unless [`VendorHold::keep`] leaves it for [`Ticket::signed_in`].
#[derive(Debug)]
pub struct VendorHold<'a> {
    ticket: &'a Ticket,
    kept: bool,
}

impl VendorHold<'_> {
    /// The code was accepted: the place stays the connection's.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for VendorHold<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.ticket.unhold();
        }
    }
}

impl Ticket {
    /// Both factors passed: this connection no longer counts as a startup, and its grace time is over.
    /// It counts as one of `vendor`'s from now on.
    pub fn signed_in(&self, vendor: &str) {
        if self.signed_in.is_cancelled() {
            return;
        }
        let _ = self.who.set(vendor.to_owned());
        if let Ok(mut counts) = self.admission.counts.lock() {
            Admission::release_startup(&mut counts, self.source);
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            // Counted already when the place was held for this vendor's code.
            if held.take().as_deref() != Some(vendor) {
                *counts.by_vendor.entry(vendor.to_owned()).or_insert(0) += 1;
            }
        }
        self.signed_in.cancel();
    }

    /// Takes a place in `vendor`'s count for the code about to be judged on this connection, or
    /// `Err((open, most))` when they hold the most signed-in connections allowed
    /// (`ssh.max_connections_per_vendor`). Checked and taken under one lock: codes judged at once on
    /// many connections cannot all pass a check made before any of them counted.
    pub fn hold_vendor(&self, vendor: &str) -> Result<VendorHold<'_>, (usize, usize)> {
        let most = self.admission.per_vendor;
        let Ok(mut counts) = self.admission.counts.lock() else {
            return Err((most, most));
        };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.as_deref() != Some(vendor) {
            let open = counts.by_vendor.get(vendor).copied().unwrap_or(0);
            if open >= most {
                return Err((open, most));
            }
            if let Some(other) = held.take() {
                Admission::release_vendor(&mut counts, &other);
            }
            *counts.by_vendor.entry(vendor.to_owned()).or_insert(0) += 1;
            *held = Some(vendor.to_owned());
        }
        Ok(VendorHold {
            ticket: self,
            kept: false,
        })
    }

    /// Gives back the place [`Ticket::hold_vendor`] took, if this connection still holds one.
    fn unhold(&self) {
        if let Ok(mut counts) = self.admission.counts.lock() {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(vendor) = held.take() {
                Admission::release_vendor(&mut counts, &vendor);
            }
        }
    }

    /// `Some((open, most))` when `vendor` already holds the most signed-in connections allowed
    /// (`ssh.max_connections_per_vendor`): told at the key step already (the code's judgement holds a
    /// place with [`Ticket::hold_vendor`]).
    pub fn vendor_full(&self, vendor: &str) -> Option<(usize, usize)> {
        let most = self.admission.per_vendor;
        let open = self
            .admission
            .counts
            .lock()
            .map(|c| c.by_vendor.get(vendor).copied().unwrap_or(0))
            .unwrap_or(most);
        (open >= most).then_some((open, most))
    }

    /// The vendor who signed in on this connection, if one did.
    pub fn vendor(&self) -> Option<&str> {
        self.who.get().map(String::as_str)
    }

    /// When the login grace time ends (what a second factor may wait for is bounded by it).
    pub fn deadline(&self) -> tokio::time::Instant {
        // A poisoned lock still holds a deadline: use it.
        *self
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives the sign-in until at least `by` from now, once per connection (a vendor's passkey in the
    /// browser takes longer than typing a code); later calls change nothing. Returns the deadline.
    pub fn extend_once(&self, by: Duration) -> tokio::time::Instant {
        use std::sync::atomic::Ordering;
        let mut deadline = self
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.extended.swap(true, Ordering::SeqCst) {
            *deadline = (*deadline).max(tokio::time::Instant::now() + by);
        }
        *deadline
    }

    /// Completes when the login grace time passed without a sign-in; never, once signed in.
    pub async fn grace_expired(&self) {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.signed_in.is_cancelled() {
                        std::future::pending::<()>().await;
                    }
                    // Moved meanwhile (a passkey wait): sleep on to the new deadline.
                    if self.deadline() <= tokio::time::Instant::now() {
                        return;
                    }
                }
                () = self.signed_in.cancelled() => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.admission.counts.lock() {
            counts.total = counts.total.saturating_sub(1);
            if !self.signed_in.is_cancelled() {
                Admission::release_startup(&mut counts, self.source);
                // A place held for a code accepted just before the connection went.
                let held = self
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if let Some(vendor) = held {
                    Admission::release_vendor(&mut counts, &vendor);
                }
            } else if let Some(vendor) = self.who.get() {
                Admission::release_vendor(&mut counts, vendor);
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn admission(max: usize, startups: &str, per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            counts: Mutex::default(),
            max_connections: max,
            max_startups: MaxStartups::parse(startups).unwrap(),
            per_source,
            per_vendor: 2,
            grace: Duration::from_secs(60),
        })
    }

    /// A vendor's signed-in connections are counted while they are open; at the cap, the next is
    /// told so; another vendor is not affected.
    #[test]
    fn a_vendor_holds_at_most_its_share_of_signed_in_connections() {
        let a = admission(10, "10:30:100", 10);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let first = a.admit_with(peer, 99).unwrap();
        let second = a.admit_with(peer, 99).unwrap();
        let third = a.admit_with(peer, 99).unwrap();
        assert_eq!(third.vendor_full("alice"), None);
        first.signed_in("alice");
        second.signed_in("alice");
        assert_eq!(third.vendor_full("alice"), Some((2, 2)));
        assert_eq!(third.vendor_full("bob"), None);
        drop(first);
        assert_eq!(third.vendor_full("alice"), None);
        // A connection that never signed in does not count against anyone.
        drop(third);
        assert_eq!(second.vendor_full("alice"), None);
    }

    /// Codes judged at once on several connections: each holds its place while judged, so no more than
    /// the cap can pass; a refused code gives its place back, an accepted one keeps it (counted once).
    #[test]
    fn codes_judged_at_once_hold_their_places() {
        let a = admission(10, "10:30:100", 10);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let t: Vec<_> = (0..4).map(|_| a.admit_with(peer, 99).unwrap()).collect();
        let first = t[0].hold_vendor("alice").unwrap();
        let second = t[1].hold_vendor("alice").unwrap();
        assert_eq!(t[2].hold_vendor("alice").unwrap_err(), (2, 2));
        assert_eq!(t[2].vendor_full("alice"), Some((2, 2)));
        drop(second); // a wrong code
        let third = t[2].hold_vendor("alice").unwrap();
        first.keep();
        t[0].signed_in("alice");
        third.keep();
        t[2].signed_in("alice");
        assert_eq!(t[3].vendor_full("alice"), Some((2, 2)), "counted once each");
        // A place kept for an accepted code whose connection went before it signed in comes back.
        drop(t);
        let u = a.admit_with(peer, 99).unwrap();
        let held = u.hold_vendor("alice").unwrap();
        held.keep();
        drop(u);
        let v = a.admit_with(peer, 99).unwrap();
        assert_eq!(v.vendor_full("alice"), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_fills_only_its_own_share() {
        let a = admission(100, "30:30:100", 3);
        let flood: Vec<_> = (0..3)
            .map(|_| a.admit_with(ip("10.0.0.2"), 99).unwrap())
            .collect();
        assert_eq!(
            a.admit_with(ip("10.0.0.2"), 99).unwrap_err(),
            Refusal::PerSource
        );
        assert_eq!(
            a.admit_with(ip("::ffff:10.0.0.2"), 99).unwrap_err(),
            Refusal::PerSource,
            "a mapped address is the same source"
        );
        let v6: Vec<_> = (1..=3)
            .map(|i| a.admit_with(ip(&format!("2001:db8:1:2::{i}")), 99).unwrap())
            .collect();
        assert_eq!(
            a.admit_with(ip("2001:db8:1:2:ffff::9"), 99).unwrap_err(),
            Refusal::PerSource,
            "one /64 is one source"
        );
        drop(v6);
        let other = a.admit_with(ip("10.0.0.1"), 0).unwrap();
        assert_eq!(a.counts(), (4, 4));
        // Signing in frees the address's startup slot, not its place among all connections.
        flood[0].signed_in("alice");
        flood[0].signed_in("alice");
        assert_eq!(a.counts(), (4, 3));
        let again = a.admit_with(ip("10.0.0.2"), 99).unwrap();
        drop(flood);
        drop((other, again));
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn early_drop_rises_with_unauthenticated_connections_and_the_cap_holds() {
        let a = admission(5, "2:50:4", 100);
        let t1 = a.admit_with(ip("10.0.0.1"), 0).unwrap();
        let _t2 = a.admit_with(ip("10.0.0.2"), 0).unwrap();
        // Two startups: 50% drop; a roll of 49 is dropped, 50 is admitted.
        assert_eq!(
            a.admit_with(ip("10.0.0.3"), 49).unwrap_err(),
            Refusal::Startups
        );
        let _t3 = a.admit_with(ip("10.0.0.3"), 50).unwrap();
        let _t4 = a.admit_with(ip("10.0.0.4"), 99).unwrap();
        // Four startups: full.
        assert_eq!(
            a.admit_with(ip("10.0.0.5"), 99).unwrap_err(),
            Refusal::Startups
        );
        t1.signed_in("alice");
        let _t5 = a.admit_with(ip("10.0.0.5"), 99).unwrap();
        assert_eq!(a.admit_with(ip("10.0.0.6"), 99).unwrap_err(), Refusal::Full);
    }

    #[tokio::test]
    async fn grace_expires_only_without_a_sign_in() {
        let a = Arc::new(Admission {
            grace: Duration::from_millis(50),
            ..Arc::into_inner(admission(10, "10:30:100", 10)).unwrap()
        });
        let slow = a.admit_with(ip("10.0.0.1"), 0).unwrap();
        let quick = a.admit_with(ip("10.0.0.2"), 0).unwrap();
        quick.signed_in("alice");
        tokio::time::timeout(Duration::from_secs(5), slow.grace_expired())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), quick.grace_expired())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_grace_time_is_extended_once_and_the_wait_follows_it() {
        let a = Arc::new(Admission {
            grace: Duration::from_millis(50),
            ..Arc::into_inner(admission(10, "10:30:100", 10)).unwrap()
        });
        let t = a.admit_with(ip("10.0.0.1"), 0).unwrap();
        let waiting = {
            let t = t.clone();
            tokio::spawn(async move { t.grace_expired().await })
        };
        let first = t.extend_once(Duration::from_millis(400));
        // A second extension changes nothing.
        assert_eq!(t.extend_once(Duration::from_secs(3600)), first);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiting.is_finished(), "expired at the old deadline");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::time::Instant::now() >= first);
    }
}
