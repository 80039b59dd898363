//! The fencing token.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A number that comes with every grant of a lease and is larger than every token granted for
/// that name before. A resource that remembers the largest token it has accepted and refuses
/// smaller ones cannot be written by a holder whose lease has been given to someone else,
/// however long that holder was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FencingToken(u64);

impl FencingToken {
    /// The token `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// Its value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// As a SQL `BIGINT`, or `None` above `i64::MAX`: no backend grants such a token (they
    /// come from a `BIGINT` or an etcd revision, an `int64`), so it can only be forged.
    pub(crate) fn as_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }

    pub(crate) fn from_i64(n: i64) -> Self {
        Self(u64::try_from(n).unwrap_or(0))
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for FencingToken {
    type Err = std::num::ParseIntError;

    /// Decimal digits, as sent in the [`FENCING_TOKEN_HEADER`](crate::FENCING_TOKEN_HEADER).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(Self)
    }
}

impl From<u64> for FencingToken {
    fn from(n: u64) -> Self {
        Self(n)
    }
}
