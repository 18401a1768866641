//! The exfiltration guard: bytes per (vendor, asset, service) per rolling hour, each direction, checked
//! against the service's budget from the config (`[budgets]`), for every session kind.
//!
//! Entry point: [`Budgets::add`]. Pure bookkeeping in memory on this node (no I/O): a session's `Meter`
//! calls it per chunk and acts on the [`Crossing`]s it returns.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::config::{BudgetAction, BudgetPolicy};

const WINDOW_SECS: i64 = 3600;
const BUCKET_SECS: i64 = 60;

/// Which way bytes flow through a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Vendor → device.
    Up,
    /// Device → vendor.
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "vendor→device",
            Direction::Down => "device→vendor",
        }
    }
}

/// A budget crossed: reported once per direction per hour; `Cut` is also returned for every later
/// chunk while the hour's total stays above the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub direction: Direction,
    /// Bytes in the last hour, this chunk included.
    pub used: u64,
    pub limit: u64,
    pub action: BudgetAction,
    /// First report in this hour (audit and webhook once, not per chunk).
    pub first: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub vendor_id: i64,
    pub asset_id: i64,
    pub service: String,
}

#[derive(Debug, Default)]
struct Window {
    /// (bucket start, up, down), oldest first.
    buckets: VecDeque<(i64, u64, u64)>,
    /// Until when a crossing in each direction has been reported.
    reported_until: HashMap<Direction, i64>,
}

impl Window {
    fn add(&mut self, now: i64, dir: Direction, n: u64) -> u64 {
        let start = now - now.rem_euclid(BUCKET_SECS);
        while self
            .buckets
            .front()
            .is_some_and(|(t, ..)| *t <= now - WINDOW_SECS)
        {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some(b) if b.0 == start => add_dir(b, dir, n),
            _ => {
                let mut b = (start, 0, 0);
                add_dir(&mut b, dir, n);
                self.buckets.push_back(b);
            }
        }
        self.buckets
            .iter()
            .map(|(_, up, down)| if dir == Direction::Up { *up } else { *down })
            .fold(0u64, u64::saturating_add)
    }
}

fn add_dir(b: &mut (i64, u64, u64), dir: Direction, n: u64) {
    match dir {
        Direction::Up => b.1 = b.1.saturating_add(n),
        Direction::Down => b.2 = b.2.saturating_add(n),
    }
}

/// Rolling byte counts of every tunnelled service on this node.
#[derive(Debug, Default)]
pub struct Budgets {
    windows: Mutex<HashMap<Key, Window>>,
}

impl Budgets {
    /// Counts `n` bytes flowing `dir` at `now`; returns a crossing when the hour's total exceeds the
    /// service's budget in that direction.
    pub fn add(
        &self,
        key: &Key,
        now: i64,
        dir: Direction,
        n: u64,
        policy: &BudgetPolicy,
    ) -> Option<Crossing> {
        // A direction without a budget is not counted: a session's policy is the configuration's, fixed
        // for the life of the process, so nothing could ever be held against those bytes. Most sessions
        // have none, and pass here without the node-wide lock.
        let limit = match dir {
            Direction::Up => policy.max_up_per_hour,
            Direction::Down => policy.max_down_per_hour,
        }?;
        let mut windows = self.windows.lock().ok()?;
        // Not `entry(key.clone())`: the key is cloned only for a session's first window, not per chunk.
        if !windows.contains_key(key) {
            windows.insert(key.clone(), Window::default());
        }
        let window = windows.get_mut(key)?;
        let used = window.add(now, dir, n);
        if used <= limit {
            return None;
        }
        let until = window.reported_until.entry(dir).or_insert(i64::MIN);
        let first = *until <= now;
        if first {
            *until = now + WINDOW_SECS;
        }
        (first || policy.action == BudgetAction::Cut).then_some(Crossing {
            direction: dir,
            used,
            limit,
            action: policy.action,
            first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            vendor_id: 1,
            asset_id: 2,
            service: "dicom".into(),
        }
    }

    #[test]
    fn a_direction_without_a_budget_is_not_counted() {
        let b = Budgets::default();
        let none = BudgetPolicy {
            max_down_per_hour: None,
            max_up_per_hour: None,
            action: BudgetAction::Cut,
        };
        assert_eq!(b.add(&key(), 1000, Direction::Down, 1 << 40, &none), None);
        assert_eq!(b.add(&key(), 1000, Direction::Up, 1 << 40, &none), None);
        assert!(b.windows.lock().unwrap().is_empty(), "no window kept");
        let down_only = BudgetPolicy {
            max_down_per_hour: Some(10),
            ..none
        };
        assert_eq!(
            b.add(&key(), 1000, Direction::Up, 1 << 40, &down_only),
            None
        );
        assert!(b.windows.lock().unwrap().is_empty(), "up is not counted");
        let c = b
            .add(&key(), 1000, Direction::Down, 11, &down_only)
            .unwrap();
        assert_eq!((c.used, c.limit, c.action), (11, 10, BudgetAction::Cut));
    }

    #[test]
    fn alerts_once_an_hour_and_cuts_every_chunk_past_the_limit() {
        let b = Budgets::default();
        let alert = BudgetPolicy {
            max_down_per_hour: Some(5_000_000),
            max_up_per_hour: None,
            action: BudgetAction::Alert,
        };
        assert_eq!(
            b.add(&key(), 1000, Direction::Down, 4_000_000, &alert),
            None
        );
        assert_eq!(
            b.add(&key(), 1000, Direction::Up, 50_000_000, &alert),
            None,
            "up is unlimited"
        );
        let c = b
            .add(&key(), 1010, Direction::Down, 2_000_000, &alert)
            .unwrap();
        assert_eq!((c.used, c.limit, c.first), (6_000_000, 5_000_000, true));
        assert_eq!(
            b.add(&key(), 1020, Direction::Down, 1, &alert),
            None,
            "alert only once an hour"
        );
        // An hour later the early bytes have left the window.
        assert_eq!(b.add(&key(), 1000 + 3700, Direction::Down, 1, &alert), None);

        let cut = BudgetPolicy {
            action: BudgetAction::Cut,
            ..alert
        };
        let other = Key {
            service: "hl7".into(),
            ..key()
        };
        assert_eq!(b.add(&other, 5000, Direction::Down, 5_000_000, &cut), None);
        assert!(b.add(&other, 5001, Direction::Down, 1, &cut).unwrap().first);
        let again = b.add(&other, 5002, Direction::Down, 1, &cut).unwrap();
        assert!(!again.first && again.action == BudgetAction::Cut);
    }
}
