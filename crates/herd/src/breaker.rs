//! A circuit breaker: stop calling a dependency that is failing, and probe it before trusting
//! it again.
//!
//! ```text
//!            trip: N consecutive failures, or failure rate ≥ r over the window
//!   Closed ───────────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                      │
//!     │ `probes` probes succeed                after open_for (+ jitter)     │
//!     └──────────────────────── HalfOpen ◀───────────────────────────────────┘
//!                                  │ any probe fails
//!                                  └──────────────────────────────▶ Open
//! ```
//!
//! - **Closed**: every call goes through; outcomes are counted. The breaker trips on
//!   `consecutive_failures` failures in a row, or when at least `min_calls` calls in the
//!   sliding `window` failed at a rate of `failure_rate` or more. A call slower than
//!   `slow_call` counts as a failure even if it succeeded: a dependency that answers in 30 s
//!   is failing its callers.
//! - **Open**: calls are refused at once, with the time left, for `open_for` stretched by a
//!   random share of up to `open_jitter`. Without that jitter, every client that tripped at
//!   the same moment probes at the same moment, and the recovering dependency meets its
//!   herd again.
//! - **HalfOpen**: up to `probes` calls are let through; the others are refused. If they all
//!   succeed, the breaker closes with clean counts; if one fails, it opens again.
//!
//! An outcome is counted only in the state that admitted its call: a slow call admitted
//! while closed that fails after the breaker opened changes nothing. A permit dropped
//! without an outcome (the caller gave up) counts nowhere, and frees its probe slot.
//!
//! ```
//! use onephase_herd::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};
//!
//! let breaker = CircuitBreaker::new("inventory", BreakerConfig::default());
//! for _ in 0..5 {
//!     let permit = breaker.admit().unwrap();
//!     breaker.record(permit, Outcome::Failure);
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert!(breaker.admit().is_err());
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use onephase_core::{SharedClock, SystemClock};

use crate::window::{Pair, Window};
use crate::{Outcome, Random};

/// When a [`CircuitBreaker`] trips and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row (`None`: never on a streak).
    pub consecutive_failures: Option<u32>,
    /// Trip when the share of failed calls in the window reaches this (0 to 1; `None`: never on
    /// a rate). At least one call must have failed.
    pub failure_rate: Option<f64>,
    /// The fewest calls in the window before the rate can trip the breaker.
    pub min_calls: u32,
    /// The sliding window the rate is measured over (ten buckets).
    pub window: Duration,
    /// Calls slower than this count as failures.
    pub slow_call: Option<Duration>,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// The open period is stretched by a uniform random share of up to this (0.25: up to 25 %).
    pub open_jitter: f64,
    /// Probes let through when half-open; all must succeed to close.
    pub probes: u32,
}

impl Default for BreakerConfig {
    /// 5 failures in a row, or 50 % of at least 20 calls over 10 s; open for 5 s + up to 25 %;
    /// 3 probes; no slow-call threshold.
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            failure_rate: Some(0.5),
            min_calls: 20,
            window: Duration::from_secs(10),
            slow_call: None,
            open_for: Duration::from_secs(5),
            open_jitter: 0.25,
            probes: 3,
        }
    }
}

/// The three states of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probes go through.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `onephase_herd_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A call refused by an open (or probing) breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {state:?}: the dependency is failing; retry in {retry_in:?}")]
pub struct BreakerOpen {
    /// Open, or half-open with every probe slot taken.
    pub state: BreakerState,
    /// When the breaker will probe again (`None` while half-open: when the probes answer).
    pub retry_in: Option<Duration>,
}

/// The breaker's rules as a pure state machine: time and the jitter draw are arguments.
#[derive(Debug, Clone)]
pub struct BreakerMachine {
    config: BreakerConfig,
    phase: Phase,
    /// Bumped on every transition; a permit from an earlier generation counts nowhere.
    generation: u64,
    consecutive: u32,
    /// (calls, failures)
    window: Window<Pair>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// What [`BreakerMachine::admit`] granted: the generation it belongs to, and whether it is a
/// probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    probe: bool,
}

impl BreakerMachine {
    /// A closed breaker whose window starts at `now`.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Self {
            window: Window::new(now, config.window, 10),
            config,
            phase: Phase::Closed,
            generation: 0,
            consecutive: 0,
        }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The state as last entered, before any lapse of time is applied.
    fn phase_state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Admits a call at `now`, or refuses it.
    pub fn admit(&mut self, now: Instant) -> Result<Ticket, BreakerOpen> {
        if let Phase::Open { until } = self.phase {
            if now < until {
                return Err(BreakerOpen {
                    state: BreakerState::Open,
                    retry_in: Some(until - now),
                });
            }
            self.enter(Phase::HalfOpen {
                admitted: 0,
                succeeded: 0,
            });
        }
        let probes = self.config.probes.max(1);
        match &mut self.phase {
            Phase::Closed => Ok(Ticket {
                generation: self.generation,
                probe: false,
            }),
            Phase::HalfOpen { admitted, .. } if *admitted < probes => {
                *admitted += 1;
                Ok(Ticket {
                    generation: self.generation,
                    probe: true,
                })
            }
            _ => Err(BreakerOpen {
                state: BreakerState::HalfOpen,
                retry_in: None,
            }),
        }
    }

    /// Counts the outcome of an admitted call that took `elapsed`. `draw`, uniform in
    /// `[0, 1)`, picks the jitter if this trips the breaker.
    pub fn record(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: Duration,
        now: Instant,
        draw: f64,
    ) {
        if ticket.generation != self.generation {
            return;
        }
        let failed = match outcome {
            Outcome::Ignored => return self.release(ticket),
            Outcome::Failure | Outcome::Overloaded => true,
            Outcome::Success => self.config.slow_call.is_some_and(|slow| elapsed >= slow),
        };
        match &mut self.phase {
            Phase::Closed => {
                self.window.add(now, Pair(1, u64::from(failed)));
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if self.should_trip(now) {
                    self.trip(now, draw);
                }
            }
            Phase::HalfOpen { succeeded, .. } => {
                if failed {
                    self.trip(now, draw);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.probes.max(1) {
                        self.enter(Phase::Closed);
                    }
                }
            }
            Phase::Open { .. } => {}
        }
    }

    /// Frees a permit that will have no outcome.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation || !ticket.probe {
            return;
        }
        if let Phase::HalfOpen { admitted, .. } = &mut self.phase {
            *admitted = admitted.saturating_sub(1);
        }
    }

    fn should_trip(&self, now: Instant) -> bool {
        if self
            .config
            .consecutive_failures
            .is_some_and(|n| self.consecutive >= n.max(1))
        {
            return true;
        }
        let Some(rate) = self.config.failure_rate else {
            return false;
        };
        let Pair(calls, failures) = self.window.sum(now);
        // `failures > 0`: a rate of 0 must not trip a breaker that saw no failure.
        failures > 0
            && calls >= u64::from(self.config.min_calls.max(1))
            && failures as f64 >= rate * calls as f64
    }

    fn trip(&mut self, now: Instant, draw: f64) {
        let stretch = self.config.open_jitter.clamp(0.0, 10.0) * draw.clamp(0.0, 1.0);
        let open_for = self.config.open_for.mul_f64(1.0 + stretch);
        self.enter(Phase::Open {
            until: now + open_for,
        });
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation += 1;
        self.consecutive = 0;
        self.window.clear();
    }
}

/// A circuit breaker shared by every caller of one dependency. Clones share one breaker.
/// See the [module docs](self).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    machine: Mutex<BreakerMachine>,
    clock: SharedClock,
    random: Random,
    state: Gauge,
    rejected: Counter,
    transitions: [[Counter; 3]; 3],
}

/// Permission for one call through a [`CircuitBreaker`]. Give it back with
/// [`CircuitBreaker::record`]; dropping it counts the call nowhere.
#[must_use = "record the call's outcome, or the breaker learns nothing from it"]
pub struct BreakerPermit {
    inner: Arc<Inner>,
    ticket: Option<Ticket>,
    started: Instant,
}

impl CircuitBreaker {
    /// A closed breaker on the system clock. `name` labels its metrics.
    pub fn new(name: &str, config: BreakerConfig) -> Self {
        let (clock, random): (SharedClock, _) = (Arc::new(SystemClock), Random::from_entropy());
        let states = [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ];
        let transitions = states.map(|from| {
            states.map(|to| {
                metrics::counter!(
                    "onephase_herd_breaker_transitions_total",
                    "breaker" => name.to_owned(), "from" => from.name(), "to" => to.name()
                )
            })
        });
        let state = metrics::gauge!("onephase_herd_breaker_state", "breaker" => name.to_owned());
        state.set(0.0);
        Self {
            inner: Arc::new(Inner {
                machine: Mutex::new(BreakerMachine::new(config, clock.monotonic())),
                clock,
                random,
                state,
                rejected: metrics::counter!("onephase_herd_breaker_rejected_total", "breaker" => name.to_owned()),
                transitions,
            }),
        }
    }

    /// The same breaker on `clock`, started afresh at its now. Configure before cloning: a
    /// clone keeps what it had.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                let machine = inner.machine.get_mut().unwrap_or_else(|e| e.into_inner());
                *machine = BreakerMachine::new(machine.config, clock.monotonic());
                inner.clock = clock;
            }
            None => {
                tracing::warn!("CircuitBreaker::with_clock on a shared breaker changes nothing")
            }
        }
        self
    }

    /// The same breaker drawing its jitter from `random` (seeded for the lab). Configure before
    /// cloning, like [`with_clock`](Self::with_clock).
    pub fn with_random(mut self, random: Random) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.random = random,
            None => {
                tracing::warn!("CircuitBreaker::with_random on a shared breaker changes nothing")
            }
        }
        self
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        let now = self.inner.clock.monotonic();
        self.inner.lock().state(now)
    }

    /// Admits a call, or refuses it while the breaker is open or its probes are out.
    pub fn admit(&self) -> Result<BreakerPermit, BreakerOpen> {
        let now = self.inner.clock.monotonic();
        let result = self.inner.with_machine(|m| m.admit(now));
        match result {
            Ok(ticket) => Ok(BreakerPermit {
                inner: Arc::clone(&self.inner),
                ticket: Some(ticket),
                started: now,
            }),
            Err(open) => {
                self.inner.rejected.increment(1);
                Err(open)
            }
        }
    }

    /// Counts the outcome of a permitted call; its duration is measured from `admit`.
    pub fn record(&self, mut permit: BreakerPermit, outcome: Outcome) {
        let Some(ticket) = permit.ticket.take() else {
            return;
        };
        let now = self.inner.clock.monotonic();
        let elapsed = now.saturating_duration_since(permit.started);
        let draw = self.inner.random.unit();
        self.inner
            .with_machine(|m| m.record(ticket, outcome, elapsed, now, draw));
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BreakerMachine> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the machine and reports a state change in the metrics.
    fn with_machine<T>(&self, f: impl FnOnce(&mut BreakerMachine) -> T) -> T {
        let mut machine = self.lock();
        let before = machine.phase_state();
        let result = f(&mut machine);
        let after = machine.phase_state();
        drop(machine);
        if before != after {
            self.transitions[before as usize][after as usize].increment(1);
            self.state.set(after.as_gauge());
        }
        result
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.inner.lock().release(ticket);
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

impl std::fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("ticket", &self.ticket)
            .finish()
    }
}
