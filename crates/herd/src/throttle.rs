//! Client-side adaptive throttling (Google SRE book, *Handling Overload*).
//!
//! When a backend rejects most requests because it is overloaded, sending it more requests
//! only to be rejected still costs it the work of rejecting them. The client keeps two counts
//! over a sliding window: `requests` (every request the application attempted, including
//! those this throttle refused) and `accepts` (requests the backend accepted, that is, did
//! not refuse for overload). It then refuses new requests locally, before they are sent,
//! with probability
//!
//! ```text
//! max(0, (requests − K × accepts) / (requests + 1))
//! ```
//!
//! While the backend accepts everything, the probability is 0. `K` sets how much the client
//! may send beyond what is accepted: with `K = 2` it sends up to twice the accepted rate
//! (the book's value), so the backend still sees enough traffic to show it has recovered.
//!
//! ```
//! use onephase_herd::AdaptiveThrottle;
//!
//! let throttle = AdaptiveThrottle::new("search");
//! for _ in 0..1_000 {
//!     if let Ok(ticket) = throttle.admit() {
//!         throttle.record(ticket, false); // the backend said "overloaded" every time
//!     }
//! }
//! assert!(throttle.reject_probability() > 0.9);
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use onephase_core::{SharedClock, SystemClock};

use crate::Random;
use crate::window::{Pair, Window};

/// A request the throttle refused locally, without sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("throttled locally: the backend has been refusing requests for overload")]
pub struct Throttled;

/// Permission to send one request; hand it back with [`AdaptiveThrottle::record`].
#[derive(Debug)]
#[must_use = "record the backend's answer, or the throttle cannot learn it recovered"]
pub struct ThrottleTicket(());

/// Google SRE's client-side adaptive throttle. See the [module docs](self).
#[derive(Debug)]
pub struct AdaptiveThrottle {
    k: f64,
    /// How long the counts cover.
    window_length: Duration,
    clock: SharedClock,
    random: Random,
    /// (requests, accepts)
    window: Mutex<Window<Pair>>,
    metrics: ThrottleMetrics,
}

#[derive(Debug)]
struct ThrottleMetrics {
    refused: Counter,
    probability: Gauge,
}

impl AdaptiveThrottle {
    /// `K = 2` over a two-minute window (the book's values), on the system clock.
    /// `name` labels its metrics.
    pub fn new(name: &str) -> Self {
        let clock: SharedClock = Arc::new(SystemClock);
        let window = Duration::from_secs(120);
        Self {
            k: 2.0,
            window: Mutex::new(Window::new(clock.monotonic(), window, 60)),
            window_length: window,
            clock,
            random: Random::from_entropy(),
            metrics: ThrottleMetrics {
                refused: metrics::counter!("onephase_herd_throttle_refused_total", "throttle" => name.to_owned()),
                probability: metrics::gauge!("onephase_herd_throttle_reject_probability", "throttle" => name.to_owned()),
            },
        }
    }

    /// The same throttle with multiplier `k` (at least 1; lower values are raised to 1).
    pub fn with_k(mut self, k: f64) -> Self {
        self.k = if k.is_finite() { k.max(1.0) } else { 2.0 };
        self
    }

    /// The same throttle counting over `window`, started afresh.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window_length = window;
        self.window = Mutex::new(Window::new(self.clock.monotonic(), window, 60));
        self
    }

    /// The same throttle on `clock`, started afresh at its now.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        let window = self.window_length;
        self.with_window(window)
    }

    /// The same throttle drawing from `random` (seeded for the lab).
    pub fn with_random(mut self, random: Random) -> Self {
        self.random = random;
        self
    }

    /// Counts a request and decides whether to send it. Refused requests count as requests:
    /// that is what keeps the probability up while the backend is down.
    pub fn admit(&self) -> Result<ThrottleTicket, Throttled> {
        let now = self.clock.monotonic();
        let mut window = self.lock();
        let p = self.probability(&window, now);
        window.add(now, Pair(1, 0));
        drop(window);
        self.metrics.probability.set(p);
        if self.random.chance(p) {
            self.metrics.refused.increment(1);
            return Err(Throttled);
        }
        Ok(ThrottleTicket(()))
    }

    /// Records the backend's answer to an admitted request: `accepted` unless it refused the
    /// request for overload (429, 503, a "do not retry" signal, a connection refused). An
    /// error that is the request's own fault (400, 404) is still an accept.
    pub fn record(&self, ticket: ThrottleTicket, accepted: bool) {
        let ThrottleTicket(()) = ticket;
        if accepted {
            let now = self.clock.monotonic();
            self.lock().add(now, Pair(0, 1));
        }
    }

    /// The probability a request is refused now.
    pub fn reject_probability(&self) -> f64 {
        let now = self.clock.monotonic();
        self.probability(&self.lock(), now)
    }

    fn probability(&self, window: &Window<Pair>, now: Instant) -> f64 {
        let Pair(requests, accepts) = window.sum(now);
        let requests = requests as f64;
        ((requests - self.k * accepts as f64) / (requests + 1.0)).max(0.0)
    }

    fn lock(&self) -> MutexGuard<'_, Window<Pair>> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}
