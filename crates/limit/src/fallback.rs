//! What a limiter decides when its store cannot answer.

use std::time::Duration;

use crate::{Decision, Fallback, LimitError, Policy};

/// What a limiter backed by a shared store (Redis, a database) does when the store cannot be
/// asked in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Admit, uncounted, and say so ([`Fallback::FailedOpen`]). The default: an outage of
    /// the limiter's store does not become an outage of the service.
    #[default]
    Open,
    /// Refuse, and say so ([`Fallback::FailedClosed`]).
    Closed,
    /// Return [`LimitError::Store`].
    Error,
}

impl FailMode {
    /// The decision (or error) for a store that failed with `failure`.
    #[cfg_attr(not(any(feature = "redis", feature = "store")), allow(dead_code))]
    pub(crate) fn decide(self, policy: &Policy, failure: String) -> Result<Decision, LimitError> {
        tracing::warn!(error = %failure, fail_mode = ?self, "rate-limit store failed");
        let fallback = |allowed, fallback| Decision {
            allowed,
            limit: policy.limit(),
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after: (!allowed).then_some(Duration::from_secs(1)),
            fallback: Some(fallback),
            decided_at_us: None,
        };
        match self {
            Self::Open => Ok(fallback(true, Fallback::FailedOpen)),
            Self::Closed => Ok(fallback(false, Fallback::FailedClosed)),
            Self::Error => Err(LimitError::Store(failure)),
        }
    }
}
