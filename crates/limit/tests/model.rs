//! Every algorithm against a plain reference model, on a manual clock: the same decisions for
//! any sequence of checks. Then the boundary burst, shown on counts, and idle keys forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use onephase_core::ManualClock;
use onephase_limit::{Algorithm, LocalLimiter, Policy};
use proptest::prelude::*;

/// The obvious implementation of each algorithm's definition, kept as simple as possible.
struct Model {
    policy: Policy,
    /// Every admission: (time µs, cost).
    admitted: Vec<(i64, u64)>,
    /// Token bucket level for GCRA, in µs of credit (full = burst × emission).
    level: i64,
    last: i64,
}

impl Model {
    fn new(policy: Policy) -> Self {
        let full = emission(&policy) * i64::try_from(policy.burst()).unwrap_or(0);
        Self {
            policy,
            admitted: Vec::new(),
            level: full,
            last: 0,
        }
    }

    fn check(&mut self, now: i64, cost: u64) -> bool {
        let p = &self.policy;
        let period = i64::try_from(p.period().as_micros()).unwrap_or(0);
        let limit = p.limit();
        let allowed = match p.algorithm() {
            Algorithm::Gcra => {
                let e = emission(p);
                let full = e * i64::try_from(p.burst()).unwrap_or(0);
                self.level = (self.level + (now - self.last)).min(full);
                self.last = now;
                let need = e * i64::try_from(cost).unwrap_or(0);
                if self.level >= need {
                    self.level -= need;
                    true
                } else {
                    false
                }
            }
            Algorithm::FixedWindow => {
                let w = now.div_euclid(period);
                let used: u64 = self
                    .admitted
                    .iter()
                    .filter(|(t, _)| t.div_euclid(period) == w)
                    .map(|(_, c)| c)
                    .sum();
                used + cost <= limit
            }
            Algorithm::SlidingLog => {
                let used: u64 = self
                    .admitted
                    .iter()
                    .filter(|(t, _)| *t > now - period)
                    .map(|(_, c)| c)
                    .sum();
                used + cost <= limit
            }
            Algorithm::SlidingWindow => {
                let w = now.div_euclid(period);
                let count = |window: i64| -> u64 {
                    self.admitted
                        .iter()
                        .filter(|(t, _)| t.div_euclid(period) == window)
                        .map(|(_, c)| c)
                        .sum()
                };
                let elapsed = now - w * period;
                // previous × (1 − elapsed/period) + current + cost ≤ limit, in exact integers.
                i128::from(count(w - 1)) * i128::from(period - elapsed)
                    + i128::from(count(w) + cost) * i128::from(period)
                    <= i128::from(limit) * i128::from(period)
            }
        };
        if allowed {
            self.admitted.push((now, cost));
        }
        allowed
    }
}

fn emission(p: &Policy) -> i64 {
    let period = i64::try_from(p.period().as_micros()).unwrap_or(0);
    let limit = i64::try_from(p.limit()).unwrap_or(1);
    (period + limit - 1) / limit
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_algorithm_decides_like_its_model(
        algorithm in algorithm(),
        limit in 1_u64..20,
        period_ms in 1_u64..2_000,
        burst_extra in 0_u64..5,
        ops in prop::collection::vec((0_u64..3_000_000, 1_u64..6), 1..200),
    ) {
        let mut policy = Policy::new(algorithm, limit, Duration::from_millis(period_ms)).expect("valid");
        if algorithm == Algorithm::Gcra {
            policy = policy.with_burst(limit + burst_extra).expect("valid");
        }
        let clock = ManualClock::default();
        let limiter = LocalLimiter::with_clock(policy, Arc::new(clock.clone()));
        let mut model = Model::new(policy);
        let mut now = 0_i64;
        for (i, (advance_us, cost)) in ops.into_iter().enumerate() {
            // Mostly small steps, sometimes none, so that bursts and boundaries both happen.
            let step = if i % 3 == 0 { 0 } else { advance_us % (period_ms * 1000 / 2 + 1) };
            clock.advance(Duration::from_micros(step));
            now += i64::try_from(step).unwrap_or(0);
            let cost = cost.min(policy.burst());
            let decided = limiter.check("k", cost).expect("a valid check");
            let expected = model.check(now, cost);
            prop_assert_eq!(decided.allowed, expected, "op {} at {} µs cost {}", i, now, cost);
            if !decided.allowed {
                prop_assert!(decided.retry_after.is_some());
            }
            prop_assert!(decided.remaining <= policy.burst().max(limit));
        }
    }
}

/// Checks `count` units one by one at the clock's time and returns how many were admitted.
fn admit(limiter: &LocalLimiter, count: u64) -> u64 {
    (0..count)
        .filter(|_| limiter.check("k", 1).is_ok_and(|d| d.allowed))
        .count() as u64
}

#[test]
fn a_fixed_window_admits_twice_its_limit_across_a_boundary_and_the_others_do_not() {
    let mut admitted = HashMap::new();
    for algorithm in Algorithm::ALL {
        let policy = Policy::new(algorithm, 10, Duration::from_secs(1)).expect("valid");
        let clock = ManualClock::default();
        let limiter = LocalLimiter::with_clock(policy, Arc::new(clock.clone()));
        // 10 at the very end of one window, 10 at the very start of the next: 2 ms apart.
        clock.advance(Duration::from_millis(999));
        let before = admit(&limiter, 10);
        clock.advance(Duration::from_millis(2));
        let after = admit(&limiter, 10);
        admitted.insert(algorithm, (before, after));
    }
    assert_eq!(
        admitted[&Algorithm::FixedWindow],
        (10, 10),
        "2 × limit within 2 ms"
    );
    assert_eq!(admitted[&Algorithm::SlidingLog], (10, 0));
    assert_eq!(admitted[&Algorithm::SlidingWindow], (10, 0));
    // GCRA refills one unit per 100 ms: none in 2 ms.
    assert_eq!(admitted[&Algorithm::Gcra], (10, 0));
}

#[test]
fn the_sliding_window_estimate_stays_under_twice_the_limit_in_any_period() {
    // The estimate's worst case: the previous window's admissions all at its very end.
    let policy = Policy::new(Algorithm::SlidingWindow, 100, Duration::from_secs(1)).expect("valid");
    let clock = ManualClock::default();
    let limiter = LocalLimiter::with_clock(policy, Arc::new(clock.clone()));
    clock.advance(Duration::from_millis(999));
    let mut times = vec![999_u64; usize::try_from(admit(&limiter, 100)).unwrap_or(0)];
    for ms in 1000..2000 {
        clock.advance(Duration::from_millis(1));
        for _ in 0..admit(&limiter, 5) {
            times.push(ms);
        }
    }
    let most_in_a_period = (0..2000_u64)
        .map(|start| {
            times
                .iter()
                .filter(|t| (start..start + 1000).contains(t))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_in_a_period > 100,
        "the estimate does over-admit: {most_in_a_period}"
    );
    assert!(
        most_in_a_period < 200,
        "but stays under 2 × limit: {most_in_a_period}"
    );
    // Per calendar window it never exceeds the limit.
    let in_second = times.iter().filter(|t| (1000..2000).contains(*t)).count();
    assert!(in_second <= 100, "{in_second}");
}

#[test]
fn idle_keys_are_forgotten_without_a_maintenance_call() {
    let policy = Policy::new(Algorithm::Gcra, 5, Duration::from_secs(1)).expect("valid");
    let clock = ManualClock::default();
    let limiter = LocalLimiter::with_clock(policy, Arc::new(clock.clone()));
    for n in 0..100_000 {
        assert!(
            limiter
                .check(&format!("client-{n}"), 1)
                .is_ok_and(|d| d.allowed)
        );
    }
    assert!(limiter.len() >= 100_000);
    clock.advance(Duration::from_secs(2));
    // Ordinary traffic on other keys sweeps every shard it touches.
    for n in 0..600_000 {
        let _ = limiter.check(&format!("later-{}", n % 100), 1);
    }
    assert!(limiter.len() <= 200, "{} keys still held", limiter.len());
}

#[test]
fn bad_policies_and_costs_are_refused() {
    let second = Duration::from_secs(1);
    assert!(Policy::new(Algorithm::Gcra, 0, second).is_err());
    assert!(Policy::new(Algorithm::Gcra, 2_000_000, second).is_err());
    assert!(Policy::new(Algorithm::Gcra, 5, Duration::ZERO).is_err());
    assert!(Policy::new(Algorithm::Gcra, 5, Duration::from_secs(100_000)).is_err());
    assert!(
        Policy::new(Algorithm::Gcra, 5, second)
            .and_then(|p| p.with_burst(0))
            .is_err()
    );
    assert!("token_bucket".parse::<Algorithm>().is_err());
    let limiter = LocalLimiter::new(Policy::new(Algorithm::SlidingLog, 5, second).expect("valid"));
    assert!(limiter.check("k", 0).is_err());
    assert!(
        limiter.check("k", 6).is_err(),
        "a cost over the burst can never be admitted"
    );
    assert!(limiter.is_empty(), "refused input counts nothing");
    assert!(
        limiter
            .check("k", 5)
            .is_ok_and(|d| d.allowed && d.remaining == 0)
    );
}

#[test]
fn threads_racing_on_one_key_are_counted_exactly() {
    // The clock stands still, so exactly the burst (or the limit) can be admitted, however the
    // threads interleave: GCRA by compare-and-swap, the others under their key's mutex.
    for algorithm in Algorithm::ALL {
        let policy = Policy::new(algorithm, 1_000, Duration::from_secs(60)).expect("valid");
        let clock = ManualClock::default();
        let limiter = Arc::new(LocalLimiter::with_clock(policy, Arc::new(clock.clone())));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    let mut admitted = 0_u64;
                    for i in 0..2_000 {
                        // Some threads also touch other keys, so that keys are added and swept
                        // while the shared one is checked.
                        if t % 2 == 1 && i % 3 == 0 {
                            let _ = limiter.check(&format!("other-{t}-{i}"), 1);
                        }
                        if limiter.check("shared", 1).is_ok_and(|d| d.allowed) {
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(admitted, 1_000, "{algorithm}");
    }
}
