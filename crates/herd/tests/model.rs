//! The circuit breaker and the retry budget against reference models: straightforward
//! restatements of their rules (every event kept in a list, the window recomputed from it),
//! driven by random sequences of calls, outcomes and clock moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use onephase_core::{Clock, ManualClock};
use onephase_herd::{BreakerConfig, BreakerMachine, BreakerState, Outcome, RetryBudget, Ticket};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Circuit breaker

#[derive(Debug, Clone)]
enum Op {
    /// Ask for a permit.
    Admit,
    /// Finish the `n`-th held permit (modulo how many are held) with an outcome after `ms`.
    Finish(usize, Outcome, u64),
    /// Move the clock.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Success),
        3 => Just(Outcome::Failure),
        1 => Just(Outcome::Overloaded),
        1 => Just(Outcome::Ignored),
    ];
    prop_oneof![
        4 => Just(Op::Admit),
        4 => (any::<usize>(), outcome, 0u64..400).prop_map(|(i, o, ms)| Op::Finish(i, o, ms)),
        2 => (0u64..3_000).prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        proptest::option::of(1u32..6),
        proptest::option::of(prop_oneof![Just(0.0), 0.2f64..0.9]),
        1u32..8,
        proptest::option::of(50u64..300),
        1u32..4,
    )
        .prop_map(
            |(consecutive, rate, min_calls, slow_ms, probes)| BreakerConfig {
                consecutive_failures: consecutive,
                failure_rate: rate,
                min_calls,
                window: Duration::from_secs(5),
                slow_call: slow_ms.map(Duration::from_millis),
                open_for: Duration::from_secs(2),
                open_jitter: 0.5,
                probes,
            },
        )
}

/// The rules, restated without buckets or generations stored in tickets: a list of
/// (bucket, failed) per closed period, and a period number per permit.
#[derive(Debug)]
struct ModelBreaker {
    config: BreakerConfig,
    origin: Instant,
    state: ModelState,
    period: u64,
    streak: u32,
    events: Vec<(u64, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed,
    Open(Instant),
    HalfOpen { out: u32, ok: u32 },
}

#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    period: u64,
    probe: bool,
    at: Instant,
}

impl ModelBreaker {
    fn bucket(&self, now: Instant) -> u64 {
        let width = self.config.window / 10;
        ((now - self.origin).as_nanos() / width.as_nanos()) as u64
    }

    fn reset(&mut self, state: ModelState) {
        self.state = state;
        self.period += 1;
        self.streak = 0;
        self.events.clear();
    }

    fn admit(&mut self, now: Instant) -> Option<ModelPermit> {
        if let ModelState::Open(until) = self.state {
            if now < until {
                return None;
            }
            self.reset(ModelState::HalfOpen { out: 0, ok: 0 });
        }
        match &mut self.state {
            ModelState::Closed => Some(ModelPermit {
                period: self.period,
                probe: false,
                at: now,
            }),
            ModelState::HalfOpen { out, .. } if *out < self.config.probes => {
                *out += 1;
                Some(ModelPermit {
                    period: self.period,
                    probe: true,
                    at: now,
                })
            }
            _ => None,
        }
    }

    fn finish(&mut self, p: ModelPermit, outcome: Outcome, now: Instant, draw: f64) {
        if p.period != self.period {
            return;
        }
        let slow = self.config.slow_call.is_some_and(|s| now - p.at >= s);
        let failed = match outcome {
            Outcome::Ignored => {
                if let (true, ModelState::HalfOpen { out, .. }) = (p.probe, &mut self.state) {
                    *out -= 1;
                }
                return;
            }
            Outcome::Success => slow,
            Outcome::Failure | Outcome::Overloaded => true,
        };
        let open_until = now
            + self
                .config
                .open_for
                .mul_f64(1.0 + self.config.open_jitter * draw);
        match self.state {
            ModelState::Closed => {
                let bucket = self.bucket(now);
                self.events.push((bucket, failed));
                self.streak = if failed { self.streak + 1 } else { 0 };
                let recent: Vec<bool> = self
                    .events
                    .iter()
                    .filter(|(b, _)| *b + 10 > bucket)
                    .map(|(_, f)| *f)
                    .collect();
                let failures = recent.iter().filter(|f| **f).count() as f64;
                let by_streak = self
                    .config
                    .consecutive_failures
                    .is_some_and(|n| self.streak >= n);
                let by_rate = self.config.failure_rate.is_some_and(|r| {
                    failures > 0.0
                        && recent.len() as u32 >= self.config.min_calls
                        && failures >= r * recent.len() as f64
                });
                if by_streak || by_rate {
                    self.reset(ModelState::Open(open_until));
                }
            }
            ModelState::HalfOpen { ok, .. } => {
                if failed {
                    self.reset(ModelState::Open(open_until));
                } else if ok + 1 >= self.config.probes {
                    self.reset(ModelState::Closed);
                } else if let ModelState::HalfOpen { ok, .. } = &mut self.state {
                    *ok += 1;
                }
            }
            ModelState::Open(_) => {}
        }
    }

    fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            ModelState::Closed => BreakerState::Closed,
            ModelState::Open(until) if now < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn breaker_matches_the_reference_model(
        config in config(),
        ops in proptest::collection::vec(op(), 1..200),
        draws in proptest::collection::vec(0.0f64..1.0, 200),
    ) {
        let origin = Instant::now();
        let mut now = origin;
        let mut machine = BreakerMachine::new(config, origin);
        let mut model = ModelBreaker {
            config,
            origin,
            state: ModelState::Closed,
            period: 0,
            streak: 0,
            events: Vec::new(),
        };
        let mut held: Vec<(Ticket, ModelPermit)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Admit => {
                    let real = machine.admit(now);
                    let expected = model.admit(now);
                    prop_assert_eq!(real.is_ok(), expected.is_some(), "step {}: admit", step);
                    if let (Ok(t), Some(p)) = (real, expected) {
                        held.push((t, p));
                    }
                }
                Op::Finish(i, outcome, ms) => {
                    if held.is_empty() {
                        continue;
                    }
                    let (ticket, permit) = held.remove(i % held.len());
                    let finished = now + Duration::from_millis(ms);
                    now = finished;
                    let draw = draws[step % draws.len()];
                    machine.record(ticket, outcome, finished - permit.at, now, draw);
                    model.finish(permit, outcome, now, draw);
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
            }
            prop_assert_eq!(machine.state(now), model.state(now), "step {}", step);
        }
    }
}

#[test]
fn a_slow_success_counts_as_a_failure() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        consecutive_failures: Some(2),
        slow_call: Some(Duration::from_secs(1)),
        ..BreakerConfig::default()
    };
    let mut m = BreakerMachine::new(config, t0);
    for i in 0..2 {
        let ticket = m.admit(t0).expect("closed");
        let at = t0 + Duration::from_secs(2 * (i + 1));
        m.record(ticket, Outcome::Success, Duration::from_secs(2), at, 0.0);
    }
    assert_eq!(m.state(t0 + Duration::from_secs(4)), BreakerState::Open);
}

#[test]
fn open_periods_are_jittered_between_open_for_and_its_stretch() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        consecutive_failures: Some(1),
        open_for: Duration::from_secs(10),
        open_jitter: 0.5,
        ..BreakerConfig::default()
    };
    for (draw, reopens_at) in [(0.0, 10_000u64), (0.5, 12_500), (0.999, 14_995)] {
        let mut m = BreakerMachine::new(config, t0);
        let ticket = m.admit(t0).expect("closed");
        m.record(ticket, Outcome::Failure, Duration::ZERO, t0, draw);
        let before = t0 + Duration::from_millis(reopens_at - 1);
        let after = t0 + Duration::from_millis(reopens_at);
        assert!(m.admit(before).is_err(), "draw {draw}");
        assert!(m.admit(after).is_ok(), "draw {draw}");
    }
}

#[test]
fn an_outcome_from_before_a_trip_changes_nothing() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        consecutive_failures: Some(1),
        probes: 1,
        ..BreakerConfig::default()
    };
    let mut m = BreakerMachine::new(config, t0);
    let slow = m.admit(t0).expect("closed");
    let failing = m.admit(t0).expect("closed");
    m.record(failing, Outcome::Failure, Duration::ZERO, t0, 0.0);
    let later = t0 + Duration::from_secs(60);
    let probe = m.admit(later).expect("half-open probe");
    // The call admitted while closed succeeds late: it must not close the breaker.
    m.record(slow, Outcome::Success, Duration::from_secs(60), later, 0.0);
    assert_eq!(m.state(later), BreakerState::HalfOpen);
    m.record(probe, Outcome::Success, Duration::ZERO, later, 0.0);
    assert_eq!(m.state(later), BreakerState::Closed);
}

// ---------------------------------------------------------------------------------------------
// Retry budget

#[derive(Debug, Clone)]
enum BudgetOp {
    Deposit,
    Withdraw,
    Advance(u64),
}

fn budget_op() -> impl Strategy<Value = BudgetOp> {
    prop_oneof![
        4 => Just(BudgetOp::Deposit),
        4 => Just(BudgetOp::Withdraw),
        1 => (0u64..4_000).prop_map(BudgetOp::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn budget_matches_the_reference_model(
        ttl_s in 1u64..20,
        min_per_sec in 0u32..5,
        ratio_pct in 0u32..150,
        ops in proptest::collection::vec(budget_op(), 1..300),
    ) {
        let clock = ManualClock::default();
        let ttl = Duration::from_secs(ttl_s);
        let ratio = f64::from(ratio_pct) / 100.0;
        let budget = RetryBudget::new(ttl, min_per_sec, ratio).map(|b| b.with_clock(Arc::new(clock.clone())))
            .expect("valid");
        let origin = clock.monotonic();
        let width = ttl / 10;
        // Every deposit and withdrawal with its bucket; milli-retries as the budget counts.
        let mut events: Vec<(u64, i64)> = Vec::new();
        let reserve = i64::from(min_per_sec) * ttl_s as i64 * 1000;
        let deposit = i64::from(ratio_pct) * 10;
        for (step, op) in ops.into_iter().enumerate() {
            let bucket = ((clock.monotonic() - origin).as_nanos() / width.as_nanos()) as u64;
            let balance: i64 = reserve
                + events.iter().filter(|(b, _)| *b + 10 > bucket).map(|(_, v)| *v).sum::<i64>();
            match op {
                BudgetOp::Deposit => {
                    budget.deposit();
                    events.push((bucket, deposit));
                }
                BudgetOp::Withdraw => {
                    let expected = balance >= 1000;
                    prop_assert_eq!(budget.withdraw(), expected, "step {}", step);
                    if expected {
                        events.push((bucket, -1000));
                    }
                }
                BudgetOp::Advance(ms) => clock.advance(Duration::from_millis(ms)),
            }
        }
    }
}

#[test]
fn budget_refuses_bad_settings() {
    assert!(RetryBudget::new(Duration::ZERO, 1, 0.2).is_err());
    assert!(RetryBudget::new(Duration::from_secs(61), 1, 0.2).is_err());
    assert!(RetryBudget::new(Duration::from_secs(10), 1, -0.1).is_err());
    assert!(RetryBudget::new(Duration::from_secs(10), 1, f64::NAN).is_err());
}
