//! The analyzer against keys whose truth is known: Zipf-distributed customers (the hot keys it
//! names are the true ones) and a growing sequence (a range scheme's last partition takes every
//! new write).

use std::collections::HashMap;

use onephase_partition::{AnalyzeOptions, analyze, report};

/// splitmix64: a seeded uniform source for generating samples.
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// `n` keys over `ranks` customers with Zipf exponent `s`.
fn zipf(n: usize, ranks: usize, s: f64, seed: u64) -> Vec<String> {
    let weights: Vec<f64> = (1..=ranks).map(|r| 1.0 / (r as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(ranks);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut u = Uniform(seed);
    (0..n)
        .map(|_| {
            let x = u.next();
            let rank = cdf.partition_point(|c| *c < x).min(ranks - 1);
            format!("customer-{rank}")
        })
        .collect()
}

#[test]
fn the_hot_keys_reported_are_the_true_ones() {
    let keys = zipf(200_000, 50_000, 1.1, 7);
    let mut truth: HashMap<&str, u64> = HashMap::new();
    for k in &keys {
        *truth.entry(k).or_default() += 1;
    }
    let mut true_top: Vec<(&str, u64)> = truth.into_iter().collect();
    true_top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let options = AnalyzeOptions {
        partitions: vec![16],
        ..AnalyzeOptions::default()
    };
    let analysis = analyze(&keys, &options).unwrap();
    let reported: Vec<&str> = analysis
        .hot_keys
        .iter()
        .map(|h| h.hit.key.as_str())
        .collect();
    let expected: Vec<&str> = true_top.iter().take(10).map(|(k, _)| *k).collect();
    assert_eq!(reported, expected, "hot keys");
    for (hot, (_, real)) in analysis.hot_keys.iter().zip(&true_top) {
        assert!(hot.hit.count >= *real && hot.hit.count - hot.hit.error <= *real);
    }
    // The hottest key holds over 1/16 of the writes: no scheme can balance 16 partitions.
    assert!(analysis.hot_keys[0].share > 1.0 / 16.0);
    for c in &analysis.candidates {
        assert!(
            c.max_share >= analysis.hot_keys[0].share,
            "{}",
            c.scheme.kind()
        );
    }
    assert!(!analysis.monotonic);
}

#[test]
fn a_sequence_piles_new_writes_on_the_last_range() {
    let keys: Vec<String> = (1..=50_000).map(|i| i.to_string()).collect();
    let analysis = analyze(&keys, &AnalyzeOptions::default()).unwrap();
    assert!(analysis.monotonic && analysis.increasing_share > 0.999);
    assert_eq!(analysis.candidates.len(), 20);
    for c in &analysis.candidates {
        let n = c.loads.len() as f64;
        match c.scheme.kind() {
            "range" => assert_eq!(c.new_writes_max_share, 1.0),
            kind => assert!(
                c.new_writes_max_share < 2.0 / n,
                "{kind}/{n}: {}",
                c.new_writes_max_share
            ),
        }
        match c.scheme.kind() {
            "modulo" => assert!(c.moved_on_growth > 0.7),
            "jump" | "rendezvous" => assert!((c.moved_on_growth - 1.0 / (n + 1.0)).abs() < 0.02),
            // Splitting the largest range moves half of it, and nothing of the others
            // (though their numbers shift).
            "range" => assert!(
                (c.moved_on_growth - c.max_share / 2.0).abs() < 0.01,
                "range/{n}: {} moved, largest {}",
                c.moved_on_growth,
                c.max_share
            ),
            _ => {}
        }
    }
    let text = report::text(&analysis, true);
    assert!(text.contains("monotonic") && text.contains("range with 32 partitions"));
}

#[test]
fn bad_input_is_refused() {
    assert!(
        analyze(&[], &AnalyzeOptions::default())
            .unwrap_err()
            .to_string()
            .contains("no keys")
    );
    let options = AnalyzeOptions {
        schemes: vec!["crc".into()],
        ..AnalyzeOptions::default()
    };
    assert!(
        analyze(&["a".into()], &options)
            .unwrap_err()
            .to_string()
            .contains("unknown scheme")
    );
    let options = AnalyzeOptions {
        partitions: vec![0],
        ..AnalyzeOptions::default()
    };
    assert!(analyze(&["a".into()], &options).is_err());
    // One key: every scheme still answers.
    let one = analyze(&["only".into()], &AnalyzeOptions::default()).unwrap();
    assert_eq!(one.keys, 1);
}
