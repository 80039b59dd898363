//! The order of keys for range partitioning, and the hash every other scheme starts from.
//!
//! Keys are text (a column's value, a line of a file). Range schemes need an order that a
//! person expects of their keys: `9 < 10` for numeric ids, byte order for names. [`key_order`]
//! is a total order that gives both: keys that are integers (an optional `-` and digits that fit
//! an `i64`) sort numerically and before every other key, and the other keys sort by their
//! bytes. Every key therefore has exactly one place, whatever mix a table holds.

use std::cmp::Ordering;

/// The 64-bit hash of a key (XXH3, seed 0): specified, so a key lands on the same partition in
/// every build, on every machine and in every language that implements XXH3.
pub fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// The hash of a key for one candidate (a partition of a rendezvous scheme, a virtual node of
/// a ring): the key hashed with the candidate's seed.
pub(crate) fn seeded_hash(key: &str, seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed)
}

/// The key as an integer when it is written as one (`-12`, `0`, `42`; not `+1`, `007` or
/// `1e3`), so that it can be written back unchanged.
pub fn as_integer(key: &str) -> Option<i64> {
    let digits = key.strip_prefix('-').unwrap_or(key);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && key != "-0";
    if canonical { key.parse().ok() } else { None }
}

/// The total order of keys for range partitioning: integers numerically, before every other
/// key; other keys by their bytes.
///
/// ```
/// use std::cmp::Ordering;
/// use onephase_partition::key_order;
/// assert_eq!(key_order("9", "10"), Ordering::Less);
/// assert_eq!(key_order("10", "apple"), Ordering::Less);
/// assert_eq!(key_order("apple", "banana"), Ordering::Less);
/// ```
pub fn key_order(a: &str, b: &str) -> Ordering {
    match (as_integer(a), as_integer(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.as_bytes().cmp(b.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_are_only_canonical_ones() {
        assert_eq!(as_integer("42"), Some(42));
        assert_eq!(as_integer("-7"), Some(-7));
        assert_eq!(as_integer("0"), Some(0));
        for not in [
            "007",
            "+1",
            "-0",
            "1e3",
            "",
            "-",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(as_integer(not), None, "{not:?}");
        }
    }

    proptest! {
        #[test]
        fn the_order_is_total_and_transitive(a in "-?[0-9a-c]{0,4}", b in "-?[0-9a-c]{0,4}", c in "-?[0-9a-c]{0,4}") {
            prop_assert_eq!(key_order(&a, &b), key_order(&b, &a).reverse());
            prop_assert_eq!(key_order(&a, &b) == Ordering::Equal, a == b);
            if key_order(&a, &b) != Ordering::Greater && key_order(&b, &c) != Ordering::Greater {
                prop_assert!(key_order(&a, &c) != Ordering::Greater);
            }
        }
    }
}
