//! The adaptive throttle's probability as the backend's answers change.

use std::sync::Arc;
use std::time::Duration;

use onephase_core::ManualClock;
use onephase_herd::{AdaptiveThrottle, Random};

fn throttle(clock: &ManualClock) -> AdaptiveThrottle {
    AdaptiveThrottle::new("test")
        .with_k(2.0)
        .with_window(Duration::from_secs(60))
        .with_clock(Arc::new(clock.clone()))
        .with_random(Random::seeded(5))
}

/// Sends `n` requests; the backend accepts each with `accept(i)`. Returns how many the
/// throttle refused locally.
fn send(t: &AdaptiveThrottle, n: usize, accept: impl Fn(usize) -> bool) -> usize {
    let mut refused = 0;
    for i in 0..n {
        match t.admit() {
            Ok(ticket) => t.record(ticket, accept(i)),
            Err(_) => refused += 1,
        }
    }
    refused
}

#[test]
fn a_healthy_backend_is_never_throttled() {
    let clock = ManualClock::default();
    let t = throttle(&clock);
    assert_eq!(send(&t, 10_000, |_| true), 0);
    assert_eq!(t.reject_probability(), 0.0);
}

#[test]
fn half_accepted_is_still_within_k_equals_two() {
    let clock = ManualClock::default();
    let t = throttle(&clock);
    send(&t, 10_000, |i| i % 2 == 0);
    // requests ≈ 2 × accepts: the formula gives (r − 2a) / (r + 1) ≈ 0.
    assert!(t.reject_probability() < 0.01, "{}", t.reject_probability());
}

#[test]
fn a_refusing_backend_is_throttled_locally_then_let_back_in() {
    let clock = ManualClock::default();
    let t = throttle(&clock);
    send(&t, 1_000, |_| true);
    // The backend now refuses everything for overload.
    let refused = send(&t, 10_000, |_| false);
    // Requests r = 11,000, accepts a = 1,000: p = (11,000 − 2,000) / 11,001 ≈ 0.82 at the end.
    let p = t.reject_probability();
    assert!((0.75..0.9).contains(&p), "{p}");
    assert!(
        refused > 5_000,
        "most of the doomed requests never left: {refused}"
    );
    // A minute later the window has forgotten; a recovered backend gets full traffic again.
    clock.advance(Duration::from_secs(61));
    assert_eq!(t.reject_probability(), 0.0);
    assert_eq!(send(&t, 1_000, |_| true), 0);
}
