//! The queue from the relay's tasks to a recorder thread, with the thread's wake-up in the sender's hands.
//!
//! Waking a sleeping thread is a system call and, when the thread sleeps on the other core, an interrupt
//! to it (on a VM, a trip through the hypervisor): tens of microseconds on the relay's path. The relay
//! must queue a chunk before it forwards it (nothing leaves unrecorded), but the thread need not be woken
//! before the chunk is on its way: [`Sender::send`] queues and returns a [`Wake`] that wakes the thread when
//! dropped, and [`Wake::after`] drops it once the forwarding is done, or at once if the forwarding has to
//! wait (a peer's full window), so a queued record never waits on a slow peer. A dropped `Wake` always
//! wakes; a wake-up can only come later on the same task, never be lost.
//!
//! One receiver, any number of senders. The receiver learns when every sender is gone; a sender learns
//! when the receiver is gone (its `send` fails). Unbounded: the caller bounds it (the recording's slots).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    /// The receiver dropped.
    closed: bool,
    /// The receiver waits on `ready` and no sender has taken it upon itself to wake it yet.
    asleep: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Arc<Condvar>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every change under this lock is a single step: a panic elsewhere cannot leave it half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new queue.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            closed: false,
            asleep: false,
        }),
        ready: Arc::new(Condvar::new()),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// Queues for the receiver; cheap to clone.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.shared.ready.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item`, or gives it back if the receiver is gone. The receiver, if it sleeps, wakes when
    /// the returned [`Wake`] is dropped.
    pub fn send(&self, item: T) -> Result<Wake, T> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        // The first sender to find it asleep wakes it; later ones need not (it drains the whole queue).
        let owed = std::mem::replace(&mut state.asleep, false);
        Ok(Wake(owed.then(|| self.shared.ready.clone())))
    }
}

/// A wake-up the receiver is owed, given when dropped; empty when the receiver was already awake.
#[derive(Debug, Default)]
pub struct Wake(Option<Arc<Condvar>>);

impl Wake {
    /// Whether dropping this wakes the receiver.
    pub fn is_owed(&self) -> bool {
        self.0.is_some()
    }

    /// One wake-up for both: whichever is owed (at most one is, for one queue).
    pub fn and(self, other: Wake) -> Wake {
        if self.is_owed() { self } else { other }
    }

    /// Runs `forward`, then wakes the receiver: the chunk just queued goes on its way first. If `forward`
    /// cannot finish at once, the receiver is woken before it waits. When a wake-up is owed, the task
    /// yields once before giving it, so the connection's task that was just handed the chunk writes it
    /// to its socket before the recorder thread is woken.
    pub async fn after<F: Future>(self, forward: F) -> F::Output {
        if !self.is_owed() {
            return forward.await;
        }
        let mut forward = std::pin::pin!(forward);
        let first = std::future::poll_fn(|cx| match forward.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        match first {
            Some(out) => {
                tokio::task::yield_now().await;
                drop(self);
                out
            }
            None => {
                drop(self);
                forward.await
            }
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        if let Some(ready) = self.0.take() {
            ready.notify_one();
        }
    }
}

/// Why [`Receiver::recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The timeout passed with nothing queued.
    Timeout,
    /// Nothing queued and every sender is gone.
    Disconnected,
}

/// Takes what the senders queued, in order.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        // What was queued is dropped with the receiver (a record's slot is given back with it).
        let items = std::mem::take(&mut state.items);
        drop(state);
        drop(items);
    }
}

impl<T> Receiver<T> {
    /// The next item, sleeping until one is queued, every sender is gone, or `timeout` (if any) passed.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<T, RecvError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.shared.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                state.asleep = false;
                return Ok(item);
            }
            if state.senders == 0 {
                return Err(RecvError::Disconnected);
            }
            state.asleep = true;
            state = match deadline {
                None => self
                    .shared
                    .ready
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        state.asleep = false;
                        return Err(RecvError::Timeout);
                    }
                    self.shared
                        .ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        self.shared.lock().items.pop_front()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_receiver_is_owed_one_wake_and_gets_it_when_the_wake_drops() {
        let (tx, rx) = channel::<u32>();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(x) = rx.recv(None) {
                got.push(x);
            }
            got
        });
        // Until the receiver is asleep, a send owes nothing.
        let first = loop {
            std::thread::sleep(Duration::from_millis(5));
            if tx.shared.lock().asleep {
                break tx.send(1).unwrap();
            }
        };
        assert!(first.is_owed());
        // The first sender to find it asleep owes the wake; the second does not.
        let second = tx.send(2).unwrap();
        assert!(!second.is_owed());
        drop(second);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            tx.shared.lock().items.len(),
            2,
            "woken before the wake was given"
        );
        drop(first);
        drop(tx);
        assert_eq!(reader.join().unwrap(), vec![1, 2]);
    }

    #[test]
    fn recv_times_out_and_reports_the_senders_gone() {
        let (tx, rx) = channel::<u32>();
        let tx2 = tx.clone();
        assert_eq!(
            rx.recv(Some(Duration::from_millis(10))),
            Err(RecvError::Timeout)
        );
        tx2.send(7).unwrap();
        drop((tx, tx2));
        assert_eq!(rx.recv(None), Ok(7));
        assert_eq!(rx.recv(None), Err(RecvError::Disconnected));
    }

    #[test]
    fn a_send_after_the_receiver_is_gone_gives_the_item_back() {
        let (tx, rx) = channel::<u32>();
        tx.send(1).unwrap();
        drop(rx);
        assert_eq!(tx.send(2).err(), Some(2));
    }

    #[tokio::test]
    async fn after_wakes_once_forwarding_is_done_or_before_it_waits() {
        // Done at once: the wake is given after the forward (and a yield).
        let (tx, rx) = channel::<u32>();
        let reader = std::thread::spawn(move || rx.recv(None));
        while !tx.shared.lock().asleep {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wake = tx.send(1).unwrap();
        let forwarded = wake
            .after(async {
                // The receiver still sleeps while the chunk is forwarded: given time to take the
                // record, it has not.
                std::thread::sleep(Duration::from_millis(50));
                tx.shared.lock().items.len()
            })
            .await;
        assert_eq!(forwarded, 1);
        assert_eq!(reader.join().unwrap(), Ok(1));

        // A forward that has to wait: the receiver is woken before it does.
        let (tx, rx) = channel::<u32>();
        let reader = std::thread::spawn(move || rx.recv(None));
        while !tx.shared.lock().asleep {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (open, window) = tokio::sync::oneshot::channel::<()>();
        let wake = tx.send(2).unwrap();
        let forward = tokio::spawn(wake.after(async move { window.await.is_ok() }));
        // The window stays shut, yet the record reaches the thread.
        let waited = Instant::now();
        while !reader.is_finished() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the receiver was not woken while the forward waited"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(reader.join().unwrap(), Ok(2));
        open.send(()).unwrap();
        assert!(forward.await.unwrap());
    }
}
