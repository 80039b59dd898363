//! What can go wrong, for a holder and for a resource.

use std::time::Duration;

use onephase_core::{Classify, ErrorKind, ProblemType};
use time::OffsetDateTime;

use crate::FencingToken;

/// A lease operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// A name, holder or TTL is unusable; nothing was changed.
    #[error("invalid lease request: {0}")]
    Invalid(String),
    /// Someone else holds the lease.
    #[error(
        "lease {name:?} is held by {holder:?} (token {token}) until {expires_at}; \
         retry after it expires or is released, or acquire with a wait"
    )]
    Held {
        /// The lease.
        name: String,
        /// Its holder.
        holder: String,
        /// The holder's token.
        token: FencingToken,
        /// When it lapses unless renewed, on the granting clock.
        expires_at: OffsetDateTime,
    },
    /// The lease was not free within the wait.
    #[error("lease {name:?} was still held by {holder:?} after waiting {waited:?}")]
    Timeout {
        /// The lease.
        name: String,
        /// Who held it last.
        holder: String,
        /// How long the acquire waited.
        waited: Duration,
    },
    /// The token is not the lease's current grant: it lapsed (and may have been granted to
    /// someone else), was released, or was never granted. The caller must stop acting as the
    /// holder and acquire again.
    #[error(
        "lease {name:?} is no longer held with token {token}: it lapsed, was released, or was \
         granted to another holder; stop the work it protects and acquire it again"
    )]
    NotHeld {
        /// The lease.
        name: String,
        /// The token presented.
        token: FencingToken,
    },
    /// The holder's own deadline passed, or the backend said the grant is gone, while work it
    /// protected was running; that work was stopped.
    #[error(
        "lease {name:?} (token {token}) may have lapsed: {reason}; the work it protected was \
         stopped, acquire it again before retrying"
    )]
    Lapsed {
        /// The lease.
        name: String,
        /// The grant's token.
        token: FencingToken,
        /// What the guard saw.
        reason: String,
    },
    /// No lease by that name has ever been granted.
    #[error("no lease named {0:?} has been granted")]
    Unknown(String),
    /// The store (SQLite or PostgreSQL) failed or could not be reached.
    #[error("lease store failed: {0}")]
    Store(sqlx::Error),
    /// etcd failed or could not be reached.
    #[cfg(feature = "etcd")]
    #[error("etcd failed: {0}")]
    Etcd(etcd_client::Error),
    /// The backend answered something it should not have.
    #[error("lease backend failed: {0}")]
    Backend(String),
}

impl Classify for LeaseError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidInput,
            Self::Held { .. } | Self::NotHeld { .. } | Self::Lapsed { .. } => ErrorKind::Conflict,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unknown(_) => ErrorKind::NotFound,
            Self::Store(e) => onephase_store::classify_sqlx(e),
            #[cfg(feature = "etcd")]
            Self::Etcd(_) => ErrorKind::Unavailable,
            Self::Backend(_) => ErrorKind::Internal,
        }
    }

    /// Held (also still held when a wait timed out) and not held are their own problem types.
    fn specific(&self) -> Option<ProblemType> {
        let (slug, title) = match self {
            Self::Held { .. } | Self::Timeout { .. } => ("lease-held", "Lease held"),
            Self::NotHeld { .. } => ("lease-not-held", "Lease not held"),
            _ => return None,
        };
        Some(ProblemType {
            status: 409,
            slug,
            title,
        })
    }
}

impl Classify for FenceError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Stale { .. } => ErrorKind::Conflict,
            Self::OutOfRange(_) => ErrorKind::InvalidInput,
            Self::Store(e) => onephase_store::classify_sqlx(e),
        }
    }
}

/// A fenced write was refused, or the fence could not be checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The resource has accepted a write with a newer token: the writer's lease was granted to
    /// someone else after it was issued. The write was not applied.
    #[error(
        "stale fencing token {token} for {resource:?}: it has accepted token {highest}, so \
         this writer's lease was granted again since; the write was not applied"
    )]
    Stale {
        /// The resource.
        resource: String,
        /// The token presented.
        token: FencingToken,
        /// The highest token the resource has accepted.
        highest: FencingToken,
    },
    /// The token cannot have come from a lease (larger than any backend grants).
    #[error("fencing token {0} is out of range (at most {max})", max = i64::MAX)]
    OutOfRange(FencingToken),
    /// The fence's store failed; nothing was decided.
    #[error("fence store failed: {0}")]
    Store(sqlx::Error),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}

#[cfg(feature = "etcd")]
impl From<etcd_client::Error> for LeaseError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(e)
    }
}

impl From<sqlx::Error> for FenceError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}
