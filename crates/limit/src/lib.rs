//! Rate limits that hold across nodes.
//!
//! A rate limit sounds like a counter. It stops being one when there are many keys (memory),
//! many processes (each with its own counter), clocks that disagree, and windows with edges a
//! client can straddle. This crate gives each algorithm with its semantics and its known
//! failure stated, and stores that make each decision one atomic step:
//!
//! - [`Algorithm`]: GCRA (a token bucket kept as one timestamp), fixed window, sliding log,
//!   sliding-window counter.
//! - [`ConcurrencyLimiter`]: at most N requests in flight per key, released when their
//!   [`Permit`] is dropped.
//! - [`LocalLimiter`]: in process, sharded, idle keys forgotten without a maintenance call.
//! - `RedisLimiter` (feature `redis`): one `EVALSHA` per decision on the Redis server's clock,
//!   failing open, closed or with an error when Redis cannot answer in time.
//! - `StoreLimiter` (feature `store`): in the onephase store, one statement per decision on
//!   PostgreSQL (on the database server's clock), one transaction on SQLite.
//! - [`HybridLimiter`]: decisions in process against a shared limit, leasing allowance from
//!   Redis or the database in chunks, with a stated over-admission bound.
//! - [`layer`] (feature `http`): a tower layer answering 429 with `Retry-After` and the IETF
//!   `RateLimit-Policy` / `RateLimit` headers, keyed by IP, a header or a closure.
//!
//! # Guarantees
//!
//! - GCRA admits at most `burst` units at once and, after that, at most one unit per
//!   `period / limit` (rounded up to a microsecond): never more than `burst + limit × t / period`
//!   in any interval of length `t`.
//! - Fixed window admits at most `limit` per calendar window (`now / period`), so up to
//!   2 × `limit` in one `period` straddling a boundary.
//! - Sliding log admits at most `limit` in any interval of length `period`.
//! - Sliding-window counter admits at most `limit` per calendar window, and less than
//!   2 × `limit` in any interval of length `period`; it is exact when traffic is even.
//! - A refused check counts nothing.

mod algorithm;
mod concurrency;
mod decision;
mod error;
mod fallback;
mod hybrid;
#[cfg(feature = "http")]
pub mod layer;
mod limiter;
mod local;
mod policy;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "store")]
mod store;

pub use algorithm::{State, decide};
pub use concurrency::{ConcurrencyLimiter, Permit, Saturated};
pub use decision::{Decision, Fallback};
pub use error::LimitError;
pub use fallback::FailMode;
pub use hybrid::HybridLimiter;
pub use limiter::Limiter;
pub use local::LocalLimiter;
pub use policy::{Algorithm, MAX_LIMIT, MAX_PERIOD, MIN_PERIOD, Policy};
#[cfg(feature = "redis")]
pub use redis::{RedisConcurrencyLimiter, RedisLimiter, RedisPermit};
#[cfg(feature = "store")]
pub use store::{MAX_STORE_KEY, StoreLimiter, migrations};
