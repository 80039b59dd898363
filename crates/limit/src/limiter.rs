//! One interface over the stores, for code (like the HTTP layer) that should not care which.

use futures::FutureExt as _;
use futures::future::BoxFuture;

use crate::{Decision, LimitError, LocalLimiter, Policy};

/// A keyed limiter, whatever keeps its state.
pub trait Limiter: Send + Sync {
    /// Checks `cost` units for `key`.
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, LimitError>>;

    /// Its policy.
    fn policy(&self) -> &Policy;
}

impl Limiter for LocalLimiter {
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, LimitError>> {
        futures::future::ready(LocalLimiter::check(self, key, cost)).boxed()
    }

    fn policy(&self) -> &Policy {
        LocalLimiter::policy(self)
    }
}

#[cfg(feature = "redis")]
impl Limiter for crate::RedisLimiter {
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, LimitError>> {
        crate::RedisLimiter::check(self, key, cost).boxed()
    }

    fn policy(&self) -> &Policy {
        crate::RedisLimiter::policy(self)
    }
}

#[cfg(feature = "store")]
impl Limiter for crate::StoreLimiter {
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, LimitError>> {
        crate::StoreLimiter::check(self, key, cost).boxed()
    }

    fn policy(&self) -> &Policy {
        crate::StoreLimiter::policy(self)
    }
}

impl Limiter for crate::HybridLimiter {
    fn check<'a>(&'a self, key: &'a str, cost: u64) -> BoxFuture<'a, Result<Decision, LimitError>> {
        crate::HybridLimiter::check(self, key, cost).boxed()
    }

    fn policy(&self) -> &Policy {
        crate::HybridLimiter::policy(self)
    }
}
