//! Space-saving (Metwally, Agrawal and El Abbadi, 2005): the heavy hitters of a stream in one
//! pass and fixed memory.
//!
//! With `capacity` counters over `n` keys, every key seen more than `n / capacity` times is
//! kept, and each kept count overstates the truth by at most its recorded `error` (itself at
//! most `n / capacity`). `count - error` is therefore a lower bound: a key whose lower bound
//! beats another's count is certainly the more frequent.

use std::collections::{BTreeSet, HashMap};

/// One kept key: its estimated count and how much of it may be overcount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeavyHitter {
    /// The key.
    pub key: String,
    /// Its estimated count (never below the true count).
    pub count: u64,
    /// The most by which `count` may exceed the true count.
    pub error: u64,
}

/// The space-saving sketch.
///
/// ```
/// let mut sketch = onephase_partition::SpaceSaving::new(2);
/// for key in ["a", "b", "a", "c", "a"] {
///     sketch.insert(key);
/// }
/// assert_eq!(sketch.top(1)[0].key, "a");
/// ```
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    seen: u64,
    counters: HashMap<String, (u64, u64)>,
    /// (count, key) of every counter, to find the smallest in O(log capacity).
    by_count: BTreeSet<(u64, String)>,
}

impl SpaceSaving {
    /// A sketch of `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seen: 0,
            counters: HashMap::new(),
            by_count: BTreeSet::new(),
        }
    }

    /// Counts one occurrence of `key`.
    pub fn insert(&mut self, key: &str) {
        self.seen += 1;
        if let Some((count, _)) = self.counters.get_mut(key) {
            self.by_count.remove(&(*count, key.to_owned()));
            *count += 1;
            self.by_count.insert((*count, key.to_owned()));
            return;
        }
        if self.counters.len() < self.capacity {
            self.counters.insert(key.to_owned(), (1, 0));
            self.by_count.insert((1, key.to_owned()));
            return;
        }
        // Full: the smallest counter is handed to the new key, which inherits its count as
        // possible overcount.
        if let Some((min, evicted)) = self.by_count.pop_first() {
            self.counters.remove(&evicted);
            self.counters.insert(key.to_owned(), (min + 1, min));
            self.by_count.insert((min + 1, key.to_owned()));
        }
    }

    /// How many keys were counted.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The `n` largest counts, largest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<HeavyHitter> {
        self.by_count
            .iter()
            .rev()
            .take(n)
            .map(|(count, key)| HeavyHitter {
                key: key.clone(),
                count: *count,
                error: self.counters.get(key).map_or(0, |(_, e)| *e),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn counts_bound_the_truth(keys in proptest::collection::vec(0u8..40, 1..400), capacity in 1usize..20) {
            let mut sketch = SpaceSaving::new(capacity);
            let mut truth: HashMap<String, u64> = HashMap::new();
            for k in &keys {
                let k = k.to_string();
                sketch.insert(&k);
                *truth.entry(k).or_default() += 1;
            }
            let n = keys.len() as u64;
            for hit in sketch.top(capacity) {
                let real = truth[&hit.key];
                prop_assert!(hit.count >= real);
                prop_assert!(hit.count - hit.error <= real);
                prop_assert!(hit.error <= n / capacity as u64);
            }
            // Every key above n / capacity is kept.
            let kept: Vec<String> = sketch.top(capacity).into_iter().map(|h| h.key).collect();
            for (k, c) in &truth {
                if *c > n / capacity as u64 {
                    prop_assert!(kept.contains(k), "{k} seen {c} of {n} times was dropped");
                }
            }
        }
    }
}
