//! The partitioners' promises, tried with generated keys: minimal movement for jump and
//! rendezvous, balance for uniform keys, range boundaries, and maps that refuse what does not
//! fit.

use onephase_partition::{MapSpec, PartitionError, PartitionMap, Scheme, key_order};
use proptest::prelude::*;

fn keys(n: usize, salt: &str) -> Vec<String> {
    (0..n).map(|i| format!("{salt}-{i}")).collect()
}

fn loads(scheme: &Scheme, keys: &[String]) -> Vec<u64> {
    let p = scheme.build().expect("valid scheme");
    let mut loads = vec![0; p.partitions() as usize];
    for k in keys {
        loads[p.partition(k) as usize] += 1;
    }
    loads
}

fn skew(loads: &[u64]) -> f64 {
    let total: u64 = loads.iter().sum();
    *loads.iter().max().expect("partitions") as f64 / (total as f64 / loads.len() as f64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Growing N to N+1 moves a key only to the new partition, never between old ones.
    #[test]
    fn jump_moves_keys_only_to_the_new_partition(n in 1u32..200, key in ".{0,24}") {
        let before = Scheme::Jump { partitions: n }.build().unwrap().partition(&key);
        let after = Scheme::Jump { partitions: n + 1 }.build().unwrap().partition(&key);
        prop_assert!(after == before || after == n);
    }

    /// Adding a partition moves keys only to it; removing the last moves only its keys.
    #[test]
    fn rendezvous_moves_keys_only_to_or_from_the_changed_partition(
        weights in proptest::collection::vec(0.1f64..10.0, 1..24),
        extra in 0.1f64..10.0,
        key in ".{0,24}",
    ) {
        let before = Scheme::Rendezvous { weights: weights.clone() }.build().unwrap().partition(&key);
        let mut grown = weights.clone();
        grown.push(extra);
        let after = Scheme::Rendezvous { weights: grown }.build().unwrap().partition(&key);
        prop_assert!(after == before || after as usize == weights.len());
    }

    /// A ring moves a key only to the new partition too.
    #[test]
    fn ring_moves_keys_only_to_the_new_partition(n in 1u32..40, key in ".{0,24}") {
        let before = Scheme::Ring { partitions: n, vnodes: 16 }.build().unwrap().partition(&key);
        let after = Scheme::Ring { partitions: n + 1, vnodes: 16 }.build().unwrap().partition(&key);
        prop_assert!(after == before || after == n);
    }

    /// Every key of a range partition lies between its split points.
    #[test]
    fn range_partitions_hold_their_interval(
        mut splits in proptest::collection::vec("-?[0-9]{1,3}|[a-z]{1,3}", 1..12),
        key in "-?[0-9]{1,3}|[a-z]{1,3}",
    ) {
        splits.sort_by(|a, b| key_order(a, b));
        splits.dedup_by(|a, b| key_order(a, b).is_eq());
        let splits: Vec<String> = splits.into_iter().filter(|s| onephase_partition::as_integer(s).is_some() || !s.starts_with('-')).collect();
        prop_assume!(!splits.is_empty());
        let p = Scheme::Range { splits: splits.clone() }.build().unwrap();
        let i = p.partition(&key) as usize;
        if i > 0 {
            prop_assert!(key_order(&splits[i - 1], &key).is_le());
        }
        if i < splits.len() {
            prop_assert!(key_order(&key, &splits[i]).is_lt());
        }
    }
}

#[test]
fn uniform_keys_are_balanced() {
    let keys = keys(200_000, "user");
    for (scheme, bound) in [
        (Scheme::Modulo { partitions: 16 }, 1.05),
        (Scheme::Jump { partitions: 16 }, 1.05),
        (
            Scheme::Rendezvous {
                weights: vec![1.0; 16],
            },
            1.05,
        ),
        (
            Scheme::Ring {
                partitions: 16,
                vnodes: 256,
            },
            1.25,
        ),
    ] {
        let s = skew(&loads(&scheme, &keys));
        assert!(s < bound, "{} skew {s:.3} over {bound}", scheme.kind());
    }
    // Weights are honoured: partition 0 with weight 3 of 6 takes about half.
    let weighted = loads(
        &Scheme::Rendezvous {
            weights: vec![3.0, 1.0, 1.0, 1.0],
        },
        &keys,
    );
    let share = weighted[0] as f64 / keys.len() as f64;
    assert!(
        (0.48..0.52).contains(&share),
        "weight 3 of 6 took {share:.3}"
    );
}

#[test]
fn growth_moves_what_each_scheme_promises() {
    let keys = keys(100_000, "order");
    let moved = |a: Scheme, b: Scheme| {
        let (a, b) = (a.build().unwrap(), b.build().unwrap());
        keys.iter()
            .filter(|k| a.partition(k) != b.partition(k))
            .count() as f64
            / keys.len() as f64
    };
    let modulo = moved(
        Scheme::Modulo { partitions: 8 },
        Scheme::Modulo { partitions: 9 },
    );
    let jump = moved(
        Scheme::Jump { partitions: 8 },
        Scheme::Jump { partitions: 9 },
    );
    assert!(modulo > 0.85, "mod N moved only {modulo:.3}");
    assert!(
        (jump - 1.0 / 9.0).abs() < 0.01,
        "jump moved {jump:.3}, not about 1/9"
    );
}

#[test]
fn range_boundaries_are_inclusive_below() {
    let p = Scheme::Range {
        splits: vec!["100".into(), "200".into(), "m".into()],
    }
    .build()
    .unwrap();
    assert_eq!(p.partition("99"), 0);
    assert_eq!(p.partition("100"), 1);
    assert_eq!(p.partition("199"), 1);
    assert_eq!(p.partition("200"), 2);
    assert_eq!(
        p.partition("1000000"),
        2,
        "integers sort numerically, before text"
    );
    assert_eq!(p.partition("apple"), 2);
    assert_eq!(p.partition("m"), 3);
    assert_eq!(p.partition("zebra"), 3);
}

#[test]
fn bad_schemes_and_maps_are_refused_with_the_reason() {
    let refused = |s: Scheme| s.build().expect_err("refused").to_string();
    assert!(refused(Scheme::Jump { partitions: 0 }).contains("1 to 65536"));
    assert!(
        refused(Scheme::Rendezvous {
            weights: vec![1.0, f64::NAN]
        })
        .contains("weight 1")
    );
    assert!(
        refused(Scheme::Rendezvous {
            weights: vec![-1.0]
        })
        .contains("positive")
    );
    assert!(
        refused(Scheme::Ring {
            partitions: 2,
            vnodes: 0
        })
        .contains("virtual nodes")
    );
    assert!(
        refused(Scheme::Range {
            splits: vec!["b".into(), "a".into()]
        })
        .contains("increase strictly")
    );
    assert!(
        refused(Scheme::Range {
            splits: vec!["10".into(), "9".into()]
        })
        .contains("\"10\"")
    );

    let spec = |name: &str, owners: usize| MapSpec {
        name: name.into(),
        version: 1,
        scheme: Scheme::Jump { partitions: 2 },
        owners: (0..owners).map(|i| format!("shard-{i}")).collect(),
    };
    let err = PartitionMap::new(spec("orders", 3)).expect_err("3 owners for 2 partitions");
    assert!(
        matches!(err, PartitionError::InvalidMap(_))
            && err.to_string().contains("one owner per partition")
    );
    assert!(PartitionMap::new(spec("bad name", 2)).is_err());
    let map = PartitionMap::new(spec("orders", 2)).unwrap();
    let moved = map.reassigned(1, "shard-9").unwrap();
    assert_eq!(moved.spec().version, 2);
    assert!(map.reassigned(2, "x").is_err());

    // Unknown fields and kinds in stored or sent maps are errors, not defaults.
    assert!(
        serde_json::from_str::<Scheme>(r#"{"kind":"jump","partitions":4,"vnodes":3}"#).is_err()
    );
    assert!(serde_json::from_str::<Scheme>(r#"{"kind":"crc32","partitions":4}"#).is_err());
}
