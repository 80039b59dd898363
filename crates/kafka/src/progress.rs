//! The consumer's bookkeeping for one assigned partition, without I/O: which offsets are out,
//! which are done, which keys are busy, and the offset that is safe to commit.
//!
//! Messages of a partition arrive in offset order and may finish in any order (different keys
//! run concurrently). The safe offset to commit is one past the longest run of finished
//! offsets from the start: committing further would skip an unfinished message on restart.
//! Messages of one key run one at a time in offset order; a message whose key is busy waits in
//! its key's queue.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// What [`PartitionProgress::arrive`] decided for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Start it now.
    Start(T),
    /// Its key is busy: it was queued behind the key's running message.
    Queued,
    /// An offset this assignment has already seen (a redelivery after a seek): ignored.
    Seen,
}

/// Bookkeeping of one partition for one assignment.
#[derive(Debug)]
pub struct PartitionProgress<T> {
    /// One past the last offset of the finished run from the start; `None` before the first
    /// message.
    safe: Option<i64>,
    /// The highest offset received.
    highest: Option<i64>,
    /// Offsets received and not finished, and whether each finished.
    outstanding: BTreeMap<i64, bool>,
    /// Keys with a message running, and the messages waiting behind it.
    busy: HashMap<Vec<u8>, VecDeque<(i64, T)>>,
    /// Received and not finished (queued or running).
    in_flight: usize,
}

impl<T> Default for PartitionProgress<T> {
    fn default() -> Self {
        Self {
            safe: None,
            highest: None,
            outstanding: BTreeMap::new(),
            busy: HashMap::new(),
            in_flight: 0,
        }
    }
}

impl<T> PartitionProgress<T> {
    /// A message arrived; `key` orders it behind earlier messages of the same key (`None`: no
    /// order with anything).
    pub fn arrive(&mut self, offset: i64, key: Option<&[u8]>, item: T) -> Arrival<T> {
        if self.highest.is_some_and(|h| offset <= h) {
            return Arrival::Seen;
        }
        self.highest = Some(offset);
        if self.safe.is_none() {
            self.safe = Some(offset);
        }
        self.outstanding.insert(offset, false);
        self.in_flight += 1;
        let Some(key) = key else {
            return Arrival::Start(item);
        };
        match self.busy.get_mut(key) {
            Some(queue) => {
                queue.push_back((offset, item));
                Arrival::Queued
            }
            None => {
                self.busy.insert(key.to_vec(), VecDeque::new());
                Arrival::Start(item)
            }
        }
    }

    /// The message at `offset` (of `key`) finished; returns the next message of its key to
    /// start, if one waits.
    pub fn finish(&mut self, offset: i64, key: Option<&[u8]>) -> Option<(i64, T)> {
        if let Some(done) = self.outstanding.get_mut(&offset)
            && !*done
        {
            *done = true;
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        while let Some(entry) = self.outstanding.first_entry() {
            if !*entry.get() {
                break;
            }
            self.safe = Some(*entry.key() + 1);
            entry.remove();
        }
        let key = key?;
        let queue = self.busy.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => Some(next),
            None => {
                self.busy.remove(key);
                None
            }
        }
    }

    /// The offset that is safe to commit (the next one to read on restart).
    pub fn safe(&self) -> Option<i64> {
        self.safe
    }

    /// Messages received and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The lowest unfinished offset: what holds the commit back.
    pub fn oldest_unfinished(&self) -> Option<i64> {
        self.outstanding
            .iter()
            .find(|(_, done)| !**done)
            .map(|(o, _)| *o)
    }

    /// Drops every queued (not started) message, as when the partition is revoked: they are
    /// past the safe offset, so the next owner reads them again. Returns how many.
    pub fn drop_queued(&mut self) -> usize {
        let dropped: usize = self.busy.values().map(VecDeque::len).sum();
        for queue in self.busy.values_mut() {
            queue.clear();
        }
        self.in_flight = self.in_flight.saturating_sub(dropped);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::{Arrival, PartitionProgress};
    use proptest::prelude::*;

    #[test]
    fn one_key_runs_in_order_and_the_commit_waits_for_the_oldest() {
        let mut p = PartitionProgress::default();
        assert_eq!(p.arrive(10, Some(b"a"), 10), Arrival::Start(10));
        assert_eq!(p.arrive(11, Some(b"b"), 11), Arrival::Start(11));
        assert_eq!(p.arrive(12, Some(b"a"), 12), Arrival::Queued);
        assert_eq!(p.arrive(13, None, 13), Arrival::Start(13));
        assert_eq!(p.arrive(12, Some(b"a"), 12), Arrival::Seen);
        assert_eq!(p.in_flight(), 4);
        assert_eq!(p.finish(11, Some(b"b")), None);
        assert_eq!(p.safe(), Some(10), "10 is not done");
        assert_eq!(p.finish(10, Some(b"a")), Some((12, 12)));
        assert_eq!(p.safe(), Some(12));
        assert_eq!(p.finish(13, None), None);
        assert_eq!(p.safe(), Some(12), "12 still runs");
        assert_eq!(p.oldest_unfinished(), Some(12));
        assert_eq!(p.finish(12, Some(b"a")), None);
        assert_eq!(p.safe(), Some(14));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn dropping_the_queue_on_revoke_keeps_the_commit_below_them() {
        let mut p = PartitionProgress::default();
        let _ = p.arrive(0, Some(b"k"), ());
        let _ = p.arrive(1, Some(b"k"), ());
        let _ = p.arrive(2, Some(b"k"), ());
        assert_eq!(p.drop_queued(), 2);
        assert_eq!(p.in_flight(), 1);
        let _ = p.finish(0, Some(b"k"));
        assert_eq!(
            p.safe(),
            Some(1),
            "1 and 2 are read again by the next owner"
        );
    }

    proptest! {
        /// Whatever order messages finish in, the safe offset never passes an unfinished one,
        /// never goes back, and reaches the end once all are done; a key never has two
        /// messages running.
        #[test]
        fn safe_offset_and_key_order(
            keys in prop::collection::vec(prop::option::of(0u8..4), 1..60),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 60..200),
        ) {
            let mut p = PartitionProgress::default();
            let mut running: Vec<(i64, Option<u8>)> = Vec::new();
            let base = 100i64;
            for (i, key) in keys.iter().enumerate() {
                let offset = base + i64::try_from(i).unwrap_or(0);
                let k = key.map(|k| vec![k]);
                if let Arrival::Start(o) = p.arrive(offset, k.as_deref(), offset) {
                    running.push((o, *key));
                }
            }
            let mut finished = std::collections::BTreeSet::new();
            let mut last_safe = p.safe();
            for pick in picks {
                if running.is_empty() { break; }
                let (offset, key) = running.swap_remove(pick.index(running.len()));
                let k = key.map(|k| vec![k]);
                finished.insert(offset);
                if let Some((next, _)) = p.finish(offset, k.as_deref()) {
                    running.push((next, key));
                }
                let safe = p.safe().unwrap_or(base);
                prop_assert!(last_safe.unwrap_or(base) <= safe);
                prop_assert!((base..safe).all(|o| finished.contains(&o)));
                last_safe = Some(safe);
                for k in 0u8..4 {
                    prop_assert!(running.iter().filter(|(_, key)| *key == Some(k)).count() <= 1);
                }
            }
            while let Some((offset, key)) = running.pop() {
                let k = key.map(|k| vec![k]);
                if let Some((next, _)) = p.finish(offset, k.as_deref()) {
                    running.push((next, key));
                }
            }
            let end = base + i64::try_from(keys.len()).unwrap_or(0);
            prop_assert_eq!(p.safe(), Some(end));
            prop_assert_eq!(p.in_flight(), 0);
        }
    }
}
