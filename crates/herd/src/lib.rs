//! Herd protection: keep synchronized clients from flattening what they depend on.
//!
//! A cache entry expires and a thousand readers recompute it at once; a dependency blips and
//! every client retries on the same schedule; a database restarts and every pool reconnects
//! in the same millisecond. These are one failure: many clients doing the same thing at the
//! same moment. Each tool here breaks the synchrony or bounds the multiplication:
//!
//! - [`SingleFlight`]: concurrent calls for one key share one execution. A cancelled or
//!   panicking leader hands the work to a waiter instead of failing everyone.
//! - [`HerdCache`]: coalesced loads, XFetch probabilistic early refresh and
//!   stale-while-revalidate over a bounded [`moka`] cache.
//! - [`Retry`] and [`RetryBudget`]: jittered backoff, retries limited to a share of requests
//!   (counted from the moment a retry is decided, backoff included), and a server's "do not
//!   retry" respected ([`Verdict::DoNotRetry`]).
//! - [`AdaptiveThrottle`]: Google SRE's client-side throttling, refusing locally what an
//!   overloaded backend would refuse anyway.
//! - [`CircuitBreaker`]: closed, open, half-open; consecutive-failure and failure-rate
//!   triggers, slow calls counted, jittered open periods; [`BreakerMachine`] is its pure core.
//! - [`Reconnect`]: spread and jittered reconnects for clients of brokers and databases.
//! - [`layer`] (feature `tower`): the breaker and throttle as tower middleware, and retries.
//! - [`http`] (feature `tower`): reading `x-envoy-overloaded`, `grpc-retry-pushback-ms` and
//!   `Retry-After`, and sending them.
//!
//! Time and randomness are inputs: every type takes a [`Clock`](onephase_core::Clock) and a
//! seeded [`Random`], so the failure lab replays a stampede or a retry storm exactly.
//!
//! # Metrics
//!
//! Every type is named at construction and reports under `onephase_herd_*`, including what
//! peers leave out: `flight_calls_total{role}` (the coalescing ratio is all calls over leader
//! calls), `retry_attempts` (a histogram whose mean is the load amplification),
//! `budget_balance`, `breaker_state` and `throttle_reject_probability`.

pub mod breaker;
pub mod budget;
pub mod cache;
#[cfg(feature = "tower")]
pub mod http;
#[cfg(feature = "tower")]
pub mod layer;
mod outcome;
pub mod reconnect;
pub mod retry;
pub mod single_flight;
pub mod throttle;
mod window;

pub use breaker::{
    BreakerConfig, BreakerMachine, BreakerOpen, BreakerPermit, BreakerState, CircuitBreaker, Ticket,
};
pub use budget::{InvalidBudget, RetryBudget};
pub use cache::{CacheConfig, CacheStats, HerdCache};
pub use onephase_core::Random;
pub use outcome::Outcome;
pub use reconnect::Reconnect;
pub use retry::{Report, Retry, Stopped, Verdict};
pub use single_flight::{FlightStats, SingleFlight};
pub use throttle::{AdaptiveThrottle, ThrottleTicket, Throttled};

/// The examples of `docs/herd.md`, compiled and run as doc tests.
#[cfg(all(doctest, feature = "tower"))]
#[doc = include_str!("../../../docs/herd.md")]
pub struct DocsHerd;
