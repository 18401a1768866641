//! Places for work one staff member can start many of (live views, evidence bundles, the page's change
//! streams): at most so many at once on the node, and so many of one person's, each place given back
//! when its holder drops it. The one count behind every such limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The places on this node, in all and by staff member. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Places {
    open: Arc<Mutex<Open>>,
    max: usize,
    each: usize,
}

#[derive(Debug, Default)]
struct Open {
    all: usize,
    by: HashMap<String, usize>,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The person holds `each` already.
    Yours(usize),
    /// The node holds `max` already.
    All(usize),
}

/// One place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    open: Arc<Mutex<Open>>,
    who: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.all = open.all.saturating_sub(1);
        if let Some(n) = open.by.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.by.remove(&self.who);
            }
        }
    }
}

impl Places {
    /// At most `max` at once, `each` of them one person's.
    pub fn new(max: usize, each: usize) -> Places {
        Places {
            open: Arc::default(),
            max,
            each,
        }
    }

    fn room(&self, open: &Open, who: &str) -> Result<(), Full> {
        if open.by.get(who).copied().unwrap_or(0) >= self.each {
            return Err(Full::Yours(self.each));
        }
        if open.all >= self.max {
            return Err(Full::All(self.max));
        }
        Ok(())
    }

    /// Whether `who` would be given a place now (nothing is taken).
    pub fn room_for(&self, who: &str) -> Result<(), Full> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        self.room(&open, who)
    }

    /// A place for `who`, held until the returned [`Place`] is dropped.
    pub fn take(&self, who: &str) -> Result<Place, Full> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        self.room(&open, who)?;
        open.all += 1;
        *open.by.entry(who.to_owned()).or_default() += 1;
        Ok(Place {
            open: self.open.clone(),
            who: who.to_owned(),
        })
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_by_person_and_given_back() {
        let places = Places::new(3, 2);
        let a1 = places.take("a").unwrap();
        let _a2 = places.take("a").unwrap();
        assert_eq!(places.take("a").unwrap_err(), Full::Yours(2));
        let _b = places.take("b").unwrap();
        assert_eq!(places.take("c").unwrap_err(), Full::All(3));
        assert_eq!(places.room_for("c"), Err(Full::All(3)));
        drop(a1);
        assert_eq!(places.taken(), 2);
        assert!(places.take("c").is_ok());
    }
}
