//! Router lookups: a key to its owner through a [`PartitionMap`] of each scheme, against a
//! plain `HashMap` from every key to its owner (the lookup a precomputed directory would do),
//! in the same run, over the same 100,000 keys visited in a shuffled order.
//!
//! ```text
//! cargo bench -p onephase-partition --bench router
//! ```
//!
//! Results go to `bench/results/partition.json` and a Markdown table on stdout. Each figure is
//! the median of five rounds of 2,000,000 lookups.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use onephase_partition::{MapSpec, PartitionMap, Scheme};
use serde_json::{Value, json};

const KEYS: usize = 100_000;
const LOOKUPS: usize = 2_000_000;
const ROUNDS: usize = 5;
const PARTITIONS: u32 = 64;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Median nanoseconds per call of `lookup` over the keys.
fn ns_per_lookup(keys: &[String], order: &[usize], mut lookup: impl FnMut(&str) -> usize) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let mut sum = 0_usize;
            for i in 0..LOOKUPS {
                sum = sum.wrapping_add(lookup(&keys[order[i % order.len()]]));
            }
            black_box(sum);
            started.elapsed().as_nanos() as f64 / LOOKUPS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() -> AnyResult<()> {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("customer-{i:08}")).collect();
    // A fixed shuffle, so that neither side walks memory in order.
    let mut order: Vec<usize> = (0..KEYS).collect();
    let mut x = 0x2545_F491_4F6C_DD1D_u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let owners: Vec<String> = (0..PARTITIONS).map(|p| format!("shard-{p}")).collect();
    let splits: Vec<String> = (1..PARTITIONS as usize)
        .map(|p| keys[p * KEYS / PARTITIONS as usize].clone())
        .collect();
    let schemes = [
        Scheme::Modulo {
            partitions: PARTITIONS,
        },
        Scheme::Jump {
            partitions: PARTITIONS,
        },
        Scheme::Ring {
            partitions: PARTITIONS,
            vnodes: 128,
        },
        Scheme::Range { splits },
        Scheme::Rendezvous {
            weights: vec![1.0; PARTITIONS as usize],
        },
    ];
    let first = PartitionMap::new(MapSpec {
        name: "bench".into(),
        version: 1,
        scheme: schemes[1].clone(),
        owners: owners.clone(),
    })?;
    let directory: HashMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), first.route(k).owner.to_owned()))
        .collect();
    let baseline = ns_per_lookup(&keys, &order, |k| directory.get(k).map_or(0, String::len));
    let mut results = Vec::new();
    println!(
        "| scheme ({PARTITIONS} partitions) | ns per lookup | HashMap ns | ratio (HashMap ns / ours) |"
    );
    println!("|---|---|---|---|");
    for scheme in schemes {
        let kind = scheme.kind();
        let map = PartitionMap::new(MapSpec {
            name: "bench".into(),
            version: 1,
            scheme,
            owners: owners.clone(),
        })?;
        let ours = ns_per_lookup(&keys, &order, |k| map.route(k).owner.len());
        let ratio = baseline / ours;
        println!("| {kind} | {ours:.1} | {baseline:.1} | {ratio:.2} |");
        results.push(json!({
            "case": format!("route, {kind}, {PARTITIONS} partitions, 100,000 keys"),
            "baseline": "HashMap<String, String> from every key to its owner",
            "onephase_ns": ours,
            "baseline_ns": baseline,
            "ratio": ratio,
        }));
    }
    let out: Value = json!({
        "bench": "partition router lookups",
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        "results": results,
    });
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/results/partition.json"
    );
    std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")?;
    Ok(())
}
