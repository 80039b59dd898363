/// Turns acknowledgements that may arrive in any order into a position that is safe to
/// commit: the highest one below which everything delivered has been acknowledged. Committing
/// further would lose an unacknowledged message on restart.
#[derive(Debug)]
pub(crate) struct AckTracker {
    committed: i64,
    /// Delivered positions, and whether each has been acknowledged.
    outstanding: std::collections::BTreeMap<i64, bool>,
}

impl AckTracker {
    /// Starts at an already committed position.
    pub(crate) fn new(committed: i64) -> Self {
        Self {
            committed,
            outstanding: Default::default(),
        }
    }

    /// Records that `position` was handed out.
    pub(crate) fn delivered(&mut self, position: i64) {
        self.outstanding.insert(position, false);
    }

    /// Marks `position` acknowledged; returns the new position to commit, if it moved.
    pub(crate) fn ack(&mut self, position: i64) -> Option<i64> {
        if let Some(acked) = self.outstanding.get_mut(&position) {
            *acked = true;
        }
        let before = self.committed;
        while let Some(entry) = self.outstanding.first_entry() {
            if !*entry.get() {
                break;
            }
            self.committed = *entry.key();
            entry.remove();
        }
        (self.committed > before).then_some(self.committed)
    }
}

#[cfg(test)]
mod tests {
    use super::AckTracker;

    #[test]
    fn commits_only_past_a_contiguous_run_of_acks() {
        let mut t = AckTracker::new(0);
        for p in [1, 2, 4] {
            t.delivered(p);
        }
        assert_eq!(t.ack(2), None, "1 is not acknowledged yet");
        assert_eq!(t.ack(1), Some(2));
        assert_eq!(
            t.ack(4),
            Some(4),
            "gaps from absorbed duplicates are not waited for"
        );
        assert_eq!(t.ack(4), None);
    }
}
