//! What a check answers.

use std::time::Duration;

use serde::Serialize;

/// How a decision was made when the store could not be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The store was unreachable and the policy fails open: admitted without counting.
    FailedOpen,
    /// The store was unreachable and the policy fails closed: refused.
    FailedClosed,
}

/// The answer to one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the units were admitted (and counted).
    pub allowed: bool,
    /// The policy's limit.
    pub limit: u64,
    /// Units that could still be admitted now.
    pub remaining: u64,
    /// How long until the key's state is back to full (nothing counted against it).
    #[serde(with = "duration_ms")]
    pub reset_after: Duration,
    /// When refused: how long until the same check could be admitted.
    #[serde(with = "option_duration_ms")]
    pub retry_after: Option<Duration>,
    /// Set when the store could not be asked and the policy's fallback decided.
    pub fallback: Option<Fallback>,
    /// The store's clock when it decided, in Unix microseconds, for stores that decide on
    /// their own clock (Redis). Every client of one Redis sees the same clock.
    pub decided_at_us: Option<i64>,
}

pub(crate) fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

mod duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

mod option_duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }
}
