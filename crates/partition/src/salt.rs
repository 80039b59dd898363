//! Key salting: one hot key written as `k` sub-keys on (usually) different partitions, and
//! read back by merging them.
//!
//! No partitioning scheme can split a single key: if one customer makes 30 % of the writes,
//! the partition that holds it takes at least 30 %, however many partitions there are. The
//! analyzer names such keys. Salting turns the key into `key#0 .. key#(k-1)`; a writer picks
//! one (round robin, or by a hash of something that varies per write), a reader reads all `k`
//! and merges. It suits counters, append-only logs and fan-in; it does not suit a value that
//! must be read and written as one (a balance with a check), where the cost is a cross-partition
//! read on every write.

/// A hot key spread over `fanout` sub-keys.
///
/// ```
/// use onephase_partition::Salted;
/// let salted = Salted::new("customer-7", 4);
/// assert_eq!(salted.for_write(9), "customer-7#1");
/// assert_eq!(salted.all().len(), 4);
/// assert_eq!(Salted::unsalt("customer-7#3"), ("customer-7", Some(3)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salted {
    key: String,
    fanout: u32,
}

impl Salted {
    /// `key` spread over `fanout` sub-keys (at least 1).
    pub fn new(key: impl Into<String>, fanout: u32) -> Self {
        Self {
            key: key.into(),
            fanout: fanout.max(1),
        }
    }

    /// The sub-key a write numbered `seq` goes to (round robin over the sub-keys).
    pub fn for_write(&self, seq: u64) -> String {
        format!("{}#{}", self.key, seq % u64::from(self.fanout))
    }

    /// Every sub-key, for a read that merges them.
    pub fn all(&self) -> Vec<String> {
        (0..self.fanout)
            .map(|i| format!("{}#{i}", self.key))
            .collect()
    }

    /// The original key and the salt of a sub-key; a key without a numeric `#` suffix is its
    /// own original.
    pub fn unsalt(key: &str) -> (&str, Option<u32>) {
        match key.rsplit_once('#') {
            Some((base, salt)) => match salt.parse() {
                Ok(n) if !salt.starts_with('+') => (base, Some(n)),
                _ => (key, None),
            },
            None => (key, None),
        }
    }
}
