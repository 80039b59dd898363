//! The schemes that send a key to a partition, as data ([`Scheme`]) and compiled
//! ([`Partitioner`]).
//!
//! | scheme | lookup | keys moved when a partition is added | balance |
//! |---|---|---|---|
//! | [`Scheme::Modulo`] | hash mod N | about N/(N+1): almost all | even |
//! | [`Scheme::Jump`] | Lamping and Veach's jump consistent hash, O(ln N) | 1/(N+1), the minimum | even |
//! | [`Scheme::Rendezvous`] | highest weighted score of every partition, O(N) | the new partition's weight share, the minimum | by weight |
//! | [`Scheme::Ring`] | binary search on a ring of N × vnodes points | about 1/(N+1), varying with the points | within a few % for 100+ vnodes |
//! | [`Scheme::Range`] | binary search on the split points | half of the split partition | what the split points make it: monotonic keys all land on the last one |
//!
//! Only [`Scheme::Range`] keeps neighbouring keys together (a range scan hits one partition);
//! only the hash schemes spread a growing key (a timestamp, a sequence) over every partition.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::PartitionError;
use crate::key::{as_integer, key_hash, key_order, seeded_hash};

/// The most partitions a scheme may have.
pub const MAX_PARTITIONS: u32 = 65_536;
/// The most virtual nodes per partition of a ring.
pub const MAX_VNODES: u32 = 4_096;

/// How keys are sent to partitions, as stored and sent over the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scheme {
    /// `hash(key) mod partitions`: the naive scheme, kept to compare against. Changing
    /// `partitions` moves almost every key.
    Modulo {
        /// How many partitions.
        partitions: u32,
    },
    /// Jump consistent hash (Lamping and Veach, 2014): no state, even balance, and growing
    /// from N to N+1 moves only the keys that go to the new partition. Partitions can only be
    /// added or removed at the end.
    Jump {
        /// How many partitions.
        partitions: u32,
    },
    /// Rendezvous (highest random weight) hashing: every partition scores the key, the highest
    /// weighted score wins. Any partition can be added or removed, moving only its own keys.
    Rendezvous {
        /// One weight per partition (positive, finite): a partition's share of keys is its
        /// weight over the sum.
        weights: Vec<f64>,
    },
    /// A consistent-hash ring with virtual nodes: each partition owns the arcs before its
    /// points; more points per partition, better balance.
    Ring {
        /// How many partitions.
        partitions: u32,
        /// Points per partition (1 to 4,096).
        vnodes: u32,
    },
    /// Ranges of the key order ([`key_order`]): partition `i` holds the keys
    /// from split point `i - 1` (included) to split point `i` (excluded).
    Range {
        /// Strictly increasing split points; N - 1 of them make N partitions.
        splits: Vec<String>,
    },
}

impl Scheme {
    /// How many partitions the scheme has.
    pub fn partitions(&self) -> u32 {
        match self {
            Self::Modulo { partitions } | Self::Jump { partitions } => *partitions,
            Self::Ring { partitions, .. } => *partitions,
            Self::Rendezvous { weights } => u32::try_from(weights.len()).unwrap_or(u32::MAX),
            Self::Range { splits } => u32::try_from(splits.len() + 1).unwrap_or(u32::MAX),
        }
    }

    /// The scheme's name: `modulo`, `jump`, `rendezvous`, `ring` or `range`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Modulo { .. } => "modulo",
            Self::Jump { .. } => "jump",
            Self::Rendezvous { .. } => "rendezvous",
            Self::Ring { .. } => "ring",
            Self::Range { .. } => "range",
        }
    }

    /// Checks the parameters and builds the partitioner.
    pub fn build(&self) -> Result<Partitioner, PartitionError> {
        let n = self.partitions();
        if n == 0 || n > MAX_PARTITIONS {
            return Err(PartitionError::InvalidScheme(format!(
                "{} has {n} partitions; a scheme has 1 to {MAX_PARTITIONS}",
                self.kind()
            )));
        }
        let compiled = match self {
            Self::Modulo { partitions } => Compiled::Modulo(u64::from(*partitions)),
            Self::Jump { partitions } => Compiled::Jump(*partitions),
            Self::Rendezvous { weights } => Compiled::Rendezvous(rendezvous(weights)?),
            Self::Ring { partitions, vnodes } => Compiled::Ring(ring(*partitions, *vnodes)?),
            Self::Range { splits } => {
                if let Some(pair) = splits
                    .windows(2)
                    .find(|w| key_order(&w[0], &w[1]) != Ordering::Less)
                {
                    return Err(PartitionError::InvalidScheme(format!(
                        "range split points must increase strictly (integers numerically, \
                         before other keys by bytes): {:?} is not before {:?}",
                        pair[0], pair[1]
                    )));
                }
                Compiled::Range(splits.iter().map(|s| (as_integer(s), s.clone())).collect())
            }
        };
        Ok(Partitioner {
            scheme: self.clone(),
            compiled,
        })
    }

    /// The same kind of scheme with one more partition, as its users would grow it: `modulo`,
    /// `jump` and `ring` count one more; `rendezvous` adds a partition of the mean weight;
    /// `range` splits its largest partition of `sample` at the median, which is the only
    /// change a range scheme makes without moving keys between untouched ranges.
    pub fn grown(&self, sample: &[&str]) -> Result<Scheme, PartitionError> {
        Ok(match self {
            Self::Modulo { partitions } => Self::Modulo {
                partitions: partitions + 1,
            },
            Self::Jump { partitions } => Self::Jump {
                partitions: partitions + 1,
            },
            Self::Ring { partitions, vnodes } => Self::Ring {
                partitions: partitions + 1,
                vnodes: *vnodes,
            },
            Self::Rendezvous { weights } => {
                let mean = weights.iter().sum::<f64>() / weights.len().max(1) as f64;
                let mut weights = weights.clone();
                weights.push(if mean > 0.0 { mean } else { 1.0 });
                Self::Rendezvous { weights }
            }
            Self::Range { splits } => Self::Range {
                splits: crate::analyze::split_largest(self.build()?, splits, sample),
            },
        })
    }
}

/// A scheme ready to route keys: [`Partitioner::partition`] is a pure function of the key.
#[derive(Debug, Clone)]
pub struct Partitioner {
    scheme: Scheme,
    compiled: Compiled,
}

#[derive(Debug, Clone)]
enum Compiled {
    Modulo(u64),
    Jump(u32),
    /// Per partition: its seed and its weight.
    Rendezvous(Vec<(u64, f64)>),
    /// Ring points, sorted, each with its partition.
    Ring(Vec<(u64, u32)>),
    /// Split points, each with its integer value when it is one.
    Range(Vec<(Option<i64>, String)>),
}

impl Partitioner {
    /// The partition of `key`, in `0..partitions()`.
    ///
    /// ```
    /// let p = onephase_partition::Scheme::Jump { partitions: 8 }.build()?;
    /// assert!(p.partition("customer-42") < 8);
    /// assert_eq!(p.partition("customer-42"), p.partition("customer-42"));
    /// # Ok::<(), onephase_partition::PartitionError>(())
    /// ```
    pub fn partition(&self, key: &str) -> u32 {
        match &self.compiled {
            // The remainder is below the partition count, itself a u32.
            Compiled::Modulo(n) => (key_hash(key) % n) as u32,
            Compiled::Jump(n) => jump(key_hash(key), *n),
            Compiled::Rendezvous(candidates) => {
                let mut best = (f64::NEG_INFINITY, 0);
                for (i, (seed, weight)) in candidates.iter().enumerate() {
                    let score = weighted_score(seeded_hash(key, *seed), *weight);
                    if score > best.0 {
                        best = (score, i as u32);
                    }
                }
                best.1
            }
            Compiled::Ring(points) => {
                let h = key_hash(key);
                let at = points.partition_point(|(p, _)| *p < h);
                points
                    .get(at)
                    .or(points.first())
                    .map_or(0, |(_, part)| *part)
            }
            Compiled::Range(splits) => {
                // The key is parsed once, not at every comparison.
                let number = as_integer(key);
                splits.partition_point(|(split_number, split)| match (split_number, number) {
                    (Some(s), Some(k)) => *s <= k,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => split.as_bytes() <= key.as_bytes(),
                }) as u32
            }
        }
    }

    /// How many partitions.
    pub fn partitions(&self) -> u32 {
        self.scheme.partitions()
    }

    /// The scheme it was built from.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }
}

/// Jump consistent hash, as published by Lamping and Veach: the bucket of `key` among
/// `buckets`, moving a key only to the new bucket when `buckets` grows.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // b is in 0..buckets.
    b as u32
}

/// The weighted rendezvous score `-weight / ln(u)` with `u` the hash mapped into (0, 1):
/// the highest score wins with probability proportional to the weight (Schindelhauer and
/// Schomaker's logarithmic method).
fn weighted_score(hash: u64, weight: f64) -> f64 {
    // 53 bits of the hash, offset by half a step so u is never 0 or 1.
    let u = ((hash >> 11) as f64 + 0.5) / (1_u64 << 53) as f64;
    -weight / u.ln()
}

fn rendezvous(weights: &[f64]) -> Result<Vec<(u64, f64)>, PartitionError> {
    if let Some((i, w)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w > 0.0))
    {
        return Err(PartitionError::InvalidScheme(format!(
            "rendezvous weight {i} is {w}; weights must be positive and finite"
        )));
    }
    // A partition's seed depends on its number only, so adding one leaves the others' scores.
    Ok(weights
        .iter()
        .enumerate()
        .map(|(i, w)| (key_hash(&format!("partition-{i}")), *w))
        .collect())
}

fn ring(partitions: u32, vnodes: u32) -> Result<Vec<(u64, u32)>, PartitionError> {
    if vnodes == 0 || vnodes > MAX_VNODES {
        return Err(PartitionError::InvalidScheme(format!(
            "a ring has 1 to {MAX_VNODES} virtual nodes per partition, not {vnodes}"
        )));
    }
    let mut points: Vec<(u64, u32)> = (0..partitions)
        .flat_map(|p| (0..vnodes).map(move |v| (key_hash(&format!("partition-{p}#{v}")), p)))
        .collect();
    points.sort_unstable();
    Ok(points)
}
