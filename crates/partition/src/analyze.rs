//! The analyzer: what each candidate scheme would do with *your* keys, before you choose.
//!
//! It reads a sample of keys in the order they were written and reports, for each scheme and
//! partition count:
//!
//! - **skew**: the largest partition's load over the mean (1.0 is perfect), the largest
//!   partition's share, and the share held by the top tenth of partitions;
//! - **new writes**: the share of the newest part of the sample (by default the last 20 %)
//!   that lands on one partition. A range scheme's split points are chosen from the older
//!   part, as they would be on the day you choose; with a growing key (a timestamp, a
//!   sequence) every new write then lands on the last range;
//! - **growth**: the share of the sample that changes partition when the scheme grows by one
//!   partition (mod N moves most keys; jump about 1/(N+1));
//!
//! and, for the whole sample, the hot keys (a [`SpaceSaving`] sketch) and how monotonic the
//! keys are. A hot key holding a share `s` puts at least `s` on one partition under every
//! scheme: only salting it ([`Salted`](crate::Salted)) helps.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde::Serialize;

use crate::key::key_order;
use crate::{HeavyHitter, PartitionError, Partitioner, Scheme, SpaceSaving};

/// The largest sample analyzed by default.
pub const DEFAULT_SAMPLE_LIMIT: usize = 1_000_000;

/// What to analyze.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Partition counts to try.
    pub partitions: Vec<u32>,
    /// Schemes to try, by kind (`modulo`, `jump`, `rendezvous`, `ring`, `range`).
    pub schemes: Vec<String>,
    /// Virtual nodes per partition for `ring`.
    pub vnodes: u32,
    /// How many hot keys to report.
    pub hot_keys: usize,
    /// Counters of the heavy-hitters sketch.
    pub sketch_capacity: usize,
    /// The newest share of the sample treated as writes made after the choice (0 to 0.9).
    pub new_share: f64,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        Self {
            partitions: vec![4, 8, 16, 32],
            schemes: SCHEMES.iter().map(|s| (*s).to_owned()).collect(),
            vnodes: 128,
            hot_keys: 10,
            sketch_capacity: 1_000,
            new_share: 0.2,
        }
    }
}

/// Every scheme kind the analyzer knows.
pub const SCHEMES: [&str; 5] = ["modulo", "jump", "rendezvous", "ring", "range"];

/// The analysis of one sample.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Analysis {
    /// Keys read.
    pub keys: u64,
    /// Distinct keys among them.
    pub distinct: u64,
    /// Share of consecutive keys (in the order read) that increase: near 1.0 for a timestamp
    /// or a sequence.
    pub increasing_share: f64,
    /// Whether the keys grow (`increasing_share` at least 0.9).
    pub monotonic: bool,
    /// The hottest keys, largest first, with their share of the sample; only keys seen at
    /// least twice for certain (the sketch's count less its possible overcount).
    pub hot_keys: Vec<HotKey>,
    /// One entry per scheme and partition count.
    pub candidates: Vec<Candidate>,
}

/// A hot key and its share of the sample.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HotKey {
    /// The key and its counts from the sketch.
    #[serde(flatten)]
    pub hit: HeavyHitter,
    /// `count / keys`: no scheme puts less than this on the partition that holds it.
    pub share: f64,
}

/// What one scheme with one partition count does to the sample.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Candidate {
    /// The scheme as it would be stored (a range's split points are the ones chosen from the
    /// older part of the sample).
    pub scheme: Scheme,
    /// Keys of the sample per partition.
    pub loads: Vec<u64>,
    /// Largest load over the mean load.
    pub skew: f64,
    /// The largest partition's share of the sample.
    pub max_share: f64,
    /// The share held by the top tenth of partitions (at least one).
    pub top_tenth_share: f64,
    /// The largest share of the newest part of the sample on one partition.
    pub new_writes_max_share: f64,
    /// The share of the sample whose partition changes when the scheme grows by one.
    pub moved_on_growth: f64,
}

/// Analyzes `keys`, given in the order they were written.
pub fn analyze(keys: &[String], options: &AnalyzeOptions) -> Result<Analysis, PartitionError> {
    if keys.is_empty() {
        return Err(PartitionError::InvalidSample(
            "the sample has no keys; point the analyzer at a non-empty column or file".into(),
        ));
    }
    if !(0.0..=0.9).contains(&options.new_share) {
        return Err(PartitionError::InvalidSample(format!(
            "the newest share is {}; use 0 to 0.9",
            options.new_share
        )));
    }
    if let Some(unknown) = options
        .schemes
        .iter()
        .find(|s| !SCHEMES.contains(&s.as_str()))
    {
        return Err(PartitionError::InvalidSample(format!(
            "unknown scheme {unknown:?}; the schemes are {}",
            SCHEMES.join(", ")
        )));
    }
    let n = keys.len();
    let mut sketch = SpaceSaving::new(options.sketch_capacity.max(options.hot_keys));
    let mut distinct = HashSet::new();
    for key in keys {
        sketch.insert(key);
        distinct.insert(key.as_str());
    }
    let increasing = keys
        .windows(2)
        .filter(|w| key_order(&w[0], &w[1]) == Ordering::Less)
        .count();
    let increasing_share = if n > 1 {
        increasing as f64 / (n - 1) as f64
    } else {
        0.0
    };
    let sample: Vec<&str> = keys.iter().map(String::as_str).collect();
    let split_at = n - ((n as f64 * options.new_share) as usize).min(n - 1);
    let (older, newer) = sample.split_at(split_at);
    let mut candidates = Vec::new();
    for kind in &options.schemes {
        for &partitions in &options.partitions {
            let scheme = candidate_scheme(kind, partitions, options.vnodes, older)?;
            candidates.push(candidate(scheme.build()?, &sample, newer)?);
        }
    }
    Ok(Analysis {
        keys: n as u64,
        distinct: distinct.len() as u64,
        increasing_share,
        monotonic: increasing_share >= 0.9,
        // A key is listed only when it certainly repeats: a sample of distinct keys has no
        // hot key, whatever counts the sketch's evictions left behind.
        hot_keys: sketch
            .top(options.hot_keys)
            .into_iter()
            .filter(|hit| hit.count - hit.error >= 2)
            .map(|hit| HotKey {
                share: hit.count as f64 / n as f64,
                hit,
            })
            .collect(),
        candidates,
    })
}

fn candidate_scheme(
    kind: &str,
    partitions: u32,
    vnodes: u32,
    older: &[&str],
) -> Result<Scheme, PartitionError> {
    Ok(match kind {
        "modulo" => Scheme::Modulo { partitions },
        "jump" => Scheme::Jump { partitions },
        "rendezvous" => Scheme::Rendezvous {
            weights: vec![1.0; partitions as usize],
        },
        "ring" => Scheme::Ring { partitions, vnodes },
        _ => Scheme::Range {
            splits: quantile_splits(older, partitions),
        },
    })
}

fn candidate(
    partitioner: Partitioner,
    sample: &[&str],
    newer: &[&str],
) -> Result<Candidate, PartitionError> {
    let parts = partitioner.partitions() as usize;
    let mut loads = vec![0_u64; parts];
    let assigned: Vec<u32> = sample.iter().map(|k| partitioner.partition(k)).collect();
    for p in &assigned {
        loads[*p as usize] += 1;
    }
    let mut newer_loads = vec![0_u64; parts];
    for k in newer {
        newer_loads[partitioner.partition(k) as usize] += 1;
    }
    let grown = partitioner.scheme().grown(sample)?;
    // A range scheme grows by a new split point, which renumbers the partitions after it
    // without moving their keys: compare each key's range, not its number.
    let inserted_at = match (partitioner.scheme(), &grown) {
        (Scheme::Range { splits: old }, Scheme::Range { splits: new }) => {
            old.iter()
                .zip(new)
                .position(|(a, b)| a != b)
                .unwrap_or(old.len()) as u32
        }
        _ => u32::MAX,
    };
    let grown = grown.build()?;
    let moved = sample
        .iter()
        .zip(&assigned)
        .filter(|(k, p)| {
            let unmoved = if **p > inserted_at { **p + 1 } else { **p };
            grown.partition(k) != unmoved
        })
        .count();
    let total = sample.len() as f64;
    let max = loads.iter().copied().max().unwrap_or(0) as f64;
    let mut sorted = loads.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let tenth = parts.div_ceil(10);
    Ok(Candidate {
        scheme: partitioner.scheme().clone(),
        skew: max / (total / parts as f64),
        max_share: max / total,
        top_tenth_share: sorted.iter().take(tenth).sum::<u64>() as f64 / total,
        new_writes_max_share: if newer.is_empty() {
            0.0
        } else {
            newer_loads.iter().copied().max().unwrap_or(0) as f64 / newer.len() as f64
        },
        moved_on_growth: moved as f64 / total,
        loads,
    })
}

/// Split points that cut `keys` into `partitions` ranges of equal counts (fewer when the keys
/// have fewer distinct values).
pub fn quantile_splits(keys: &[&str], partitions: u32) -> Vec<String> {
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable_by(|a, b| key_order(a, b));
    let mut splits: Vec<String> = Vec::new();
    for i in 1..partitions as usize {
        let Some(at) = sorted.get(i * sorted.len() / partitions as usize) else {
            break;
        };
        let after_previous = splits
            .last()
            .is_none_or(|last| key_order(last, at) == Ordering::Less);
        // A split at the very first key would leave the first range empty.
        if after_previous && Some(at) != sorted.first() {
            splits.push((*at).to_owned());
        }
    }
    splits
}

/// `splits` with the largest partition of `sample` split at its median key; unchanged when
/// that partition holds a single distinct key.
pub(crate) fn split_largest(
    partitioner: Partitioner,
    splits: &[String],
    sample: &[&str],
) -> Vec<String> {
    let mut loads = vec![0_usize; partitioner.partitions() as usize];
    for k in sample {
        loads[partitioner.partition(k) as usize] += 1;
    }
    let Some((largest, _)) = loads.iter().enumerate().max_by_key(|(_, l)| **l) else {
        return splits.to_vec();
    };
    let mut inside: Vec<&str> = sample
        .iter()
        .copied()
        .filter(|k| partitioner.partition(k) as usize == largest)
        .collect();
    inside.sort_unstable_by(|a, b| key_order(a, b));
    let Some(first) = inside.first().copied() else {
        return splits.to_vec();
    };
    // The median, or the next key after the first when the lower half is all one key.
    let above_first = |k: &&&str| key_order(first, k) == Ordering::Less;
    let Some(median) = inside[inside.len() / 2..]
        .iter()
        .find(above_first)
        .or_else(|| inside.iter().find(above_first))
    else {
        return splits.to_vec();
    };
    let mut grown = splits.to_vec();
    grown.insert(largest, (*median).to_owned());
    grown
}
