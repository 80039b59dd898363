//! The algorithms as pure functions of a key's state, the time and the cost. The local store
//! runs these; the Redis scripts are the same arithmetic, line for line, on the server.
//!
//! Times are integer microseconds. GCRA's emission interval is rounded up to a whole
//! microsecond and the sliding-window weights are computed in whole microseconds, so every
//! rounding is toward admitting less.

use std::collections::VecDeque;

use crate::decision::micros;
use crate::{Algorithm, Decision, Policy};

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// GCRA: the theoretical arrival time of the next unit.
    Gcra {
        /// In microseconds.
        tat: i64,
    },
    /// Fixed window: which window, and what it has admitted.
    Fixed {
        /// `now / period`.
        window: i64,
        /// Units admitted in it.
        count: u64,
    },
    /// Sliding log: every admission still inside the period, oldest first.
    Log {
        /// (time, cost).
        entries: VecDeque<(i64, u64)>,
    },
    /// Sliding-window counter: the current window's count and the previous one's.
    Sliding {
        /// `now / period`.
        window: i64,
        /// The previous window's count.
        previous: u64,
        /// The current window's count.
        current: u64,
    },
}

impl State {
    /// A key nothing has been counted against.
    pub fn fresh(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Gcra => Self::Gcra { tat: i64::MIN },
            Algorithm::FixedWindow => Self::Fixed {
                window: i64::MIN,
                count: 0,
            },
            Algorithm::SlidingLog => Self::Log {
                entries: VecDeque::new(),
            },
            Algorithm::SlidingWindow => Self::Sliding {
                window: i64::MIN,
                previous: 0,
                current: 0,
            },
        }
    }

    /// From when on this state is the same as a fresh one (so the key can be forgotten).
    pub fn idle_from(&self, policy: &Policy) -> i64 {
        let period = policy.period_us();
        match self {
            Self::Gcra { tat } => *tat,
            Self::Fixed { window, .. } => window.saturating_add(1).saturating_mul(period),
            Self::Log { entries } => entries
                .back()
                .map_or(i64::MIN, |(t, _)| t.saturating_add(period)),
            Self::Sliding { window, .. } => window.saturating_add(2).saturating_mul(period),
        }
    }
}

/// Decides whether `cost` units are admitted at `now` (microseconds), updating `state` only if
/// they are. `cost` must be within the policy's burst (checked by the callers).
pub fn decide(policy: &Policy, state: &mut State, now: i64, cost: u64) -> Decision {
    if !matches!(
        (policy.algorithm(), &*state),
        (Algorithm::Gcra, State::Gcra { .. })
            | (Algorithm::FixedWindow, State::Fixed { .. })
            | (Algorithm::SlidingLog, State::Log { .. })
            | (Algorithm::SlidingWindow, State::Sliding { .. })
    ) {
        *state = State::fresh(policy.algorithm());
    }
    let (allowed, remaining, reset, retry) = match state {
        State::Gcra { tat } => gcra(policy, tat, now, cost),
        State::Fixed { window, count } => fixed_window(policy, window, count, now, cost),
        State::Log { entries } => sliding_log(policy, entries, now, cost),
        State::Sliding {
            window,
            previous,
            current,
        } => sliding_window(policy, (window, previous, current), now, cost),
    };
    Decision {
        allowed,
        limit: policy.limit(),
        remaining,
        reset_after: micros(reset),
        retry_after: retry.map(micros),
        fallback: None,
        decided_at_us: None,
    }
}

/// What one algorithm decided: admitted, units left, µs until the state is fresh again, and
/// (when refused) µs until the same request would be admitted.
type Verdict = (bool, u64, i64, Option<i64>);

/// GCRA on its own, for callers that keep the theoretical arrival time themselves (the local
/// limiter's compare-and-swap): the same arithmetic as [`decide`] on a [`State::Gcra`].
#[inline]
pub fn decide_gcra(policy: &Policy, tat: &mut i64, now: i64, cost: u64) -> Decision {
    let (allowed, remaining, reset, retry) = gcra(policy, tat, now, cost);
    Decision {
        allowed,
        limit: policy.limit(),
        remaining,
        reset_after: micros(reset),
        retry_after: retry.map(micros),
        fallback: None,
        decided_at_us: None,
    }
}

/// GCRA: one theoretical arrival time, pushed `emission × cost` further by each admission.
#[inline]
fn gcra(policy: &Policy, tat: &mut i64, now: i64, cost: u64) -> Verdict {
    let icost = i64::try_from(cost).unwrap_or(i64::MAX);
    let emission = policy.emission_us();
    let tolerance = policy.tolerance_us();
    let base = (*tat).max(now);
    let new_tat = base.saturating_add(emission.saturating_mul(icost));
    let allowed = new_tat - now <= tolerance;
    if allowed {
        *tat = new_tat;
    }
    let used = if allowed { new_tat - now } else { base - now };
    let remaining = u64::try_from((tolerance - used) / emission).unwrap_or(0);
    let retry = (!allowed).then(|| new_tat - now - tolerance);
    (allowed, remaining, used, retry)
}

/// Fixed window: a count per period-aligned window.
fn fixed_window(
    policy: &Policy,
    window: &mut i64,
    count: &mut u64,
    now: i64,
    cost: u64,
) -> Verdict {
    let (limit, period) = (policy.limit(), policy.period_us());
    let current = now.div_euclid(period);
    if *window != current {
        *window = current;
        *count = 0;
    }
    let allowed = *count + cost <= limit;
    if allowed {
        *count += cost;
    }
    let reset = (current + 1) * period - now;
    (allowed, limit - *count, reset, (!allowed).then_some(reset))
}

/// Sliding log: every admission in the last period, with its cost.
fn sliding_log(
    policy: &Policy,
    entries: &mut std::collections::VecDeque<(i64, u64)>,
    now: i64,
    cost: u64,
) -> Verdict {
    let (limit, period) = (policy.limit(), policy.period_us());
    while entries.front().is_some_and(|(t, _)| *t <= now - period) {
        entries.pop_front();
    }
    let used: u64 = entries.iter().map(|(_, c)| c).sum();
    let allowed = used + cost <= limit;
    if allowed {
        entries.push_back((now, cost));
    }
    let used_now = if allowed { used + cost } else { used };
    let retry = (!allowed).then(|| {
        // The oldest admissions whose expiry frees enough room.
        let mut freed = 0;
        let mut at = now;
        for (t, c) in entries.iter() {
            freed += c;
            at = t + period;
            if used - freed + cost <= limit {
                break;
            }
        }
        at - now
    });
    let reset = entries.back().map_or(0, |(t, _)| t + period - now);
    (allowed, limit - used_now, reset, retry)
}

/// Sliding window: this window's count plus the previous one's, weighted by how much of it
/// the sliding period still covers.
fn sliding_window(
    policy: &Policy,
    (window, previous, current): (&mut i64, &mut u64, &mut u64),
    now: i64,
    cost: u64,
) -> Verdict {
    let (limit, period) = (policy.limit(), policy.period_us());
    let now_window = now.div_euclid(period);
    if *window != now_window {
        *previous = if *window == now_window - 1 {
            *current
        } else {
            0
        };
        *current = 0;
        *window = now_window;
    }
    let elapsed = now - now_window * period;
    let previous = *previous;
    // previous × (period − elapsed) / period + current, kept in whole units × period
    // so that nothing is rounded up in the client's favour.
    let weighted = |current: u64| -> i128 {
        i128::from(previous) * i128::from(period - elapsed)
            + i128::from(current) * i128::from(period)
    };
    let room = i128::from(limit) * i128::from(period);
    let allowed = weighted(*current + cost) <= room;
    if allowed {
        *current += cost;
    }
    let used = weighted(*current);
    let remaining = u64::try_from((room - used).max(0) / i128::from(period)).unwrap_or(0);
    let reset = (now_window + 2) * period - now;
    let retry = (!allowed).then(|| {
        // The previous window's weight falls linearly; the current count stays until
        // the window ends. Wait for whichever frees room first.
        let excess = weighted(*current + cost) - room;
        let by_previous = if previous > 0 {
            let step = i128::from(previous);
            let wait = (excess + step - 1) / step;
            let wait = i64::try_from(wait).unwrap_or(i64::MAX);
            (wait <= period - elapsed).then_some(wait)
        } else {
            None
        };
        by_previous.unwrap_or(period - elapsed)
    });
    (allowed, remaining, reset, retry)
}
