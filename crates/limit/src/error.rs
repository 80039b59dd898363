//! What can go wrong.

use onephase_core::{Classify, ErrorKind};

/// A limit could not be checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A policy, key or cost is unusable; nothing was counted.
    #[error("invalid rate-limit request: {0}")]
    Invalid(String),
    /// The store could not be reached or failed, and the policy has no fallback for that.
    #[error("rate-limit store failed: {0}")]
    Store(String),
}

impl Classify for LimitError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidInput,
            Self::Store(_) => ErrorKind::Unavailable,
        }
    }
}
