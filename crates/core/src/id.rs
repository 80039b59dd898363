use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::ValidationError;

/// The identity of one message: a UUID, generated as version 7 (RFC 9562).
///
/// Version 7 puts the Unix time in milliseconds in the leading 48 bits, so ids sort roughly by
/// creation time and index well as B-tree keys. "Roughly": ids from different processes, or from
/// one process whose clock stepped back, are not ordered. Nothing in onephase relies on id order
/// for correctness; ordering comes from the store's sequence and the partition key.
///
/// Consumers de-duplicate on this id, so it must stay the same across every retry of a message.
///
/// Parsing accepts any non-nil UUID, because rows inserted by services in other languages may
/// carry v4 ids; only the ids onephase generates are guaranteed to be v7.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new v7 id from the system clock, monotonic within this process.
    pub fn now_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// A new v7 id from the given clock and RNG, so tests and simulations are reproducible.
    pub fn generate(clock: &dyn Clock, rng: &mut impl Rng) -> Self {
        let millis = clock.now().unix_timestamp_nanos() / 1_000_000;
        let millis = u64::try_from(millis).unwrap_or(0);
        let mut random = [0u8; 10];
        rng.fill_bytes(&mut random);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }

    /// Wraps an existing UUID. Rejects the nil UUID, which is never a real message.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, ValidationError> {
        if uuid.is_nil() {
            return Err(ValidationError::new(
                "id",
                "the nil UUID is not a message id; generate a UUIDv7",
            ));
        }
        Ok(Self(uuid))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The creation time in Unix milliseconds, if this is a v7 id.
    pub fn unix_millis(&self) -> Option<u64> {
        if self.0.get_version_num() != 7 {
            return None;
        }
        let bytes = self.0.as_bytes();
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&bytes[..6]);
        Some(u64::from_be_bytes(millis))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0.hyphenated())
    }
}

impl FromStr for MessageId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uuid = Uuid::try_parse(s).map_err(|e| {
            ValidationError::new(
                "id",
                format!("{s:?} is not a UUID ({e}); expected a UUIDv7"),
            )
        })?;
        Self::from_uuid(uuid)
    }
}

impl From<MessageId> for Uuid {
    fn from(id: MessageId) -> Self {
        id.0
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let uuid = Uuid::deserialize(deserializer)?;
        Self::from_uuid(uuid).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use time::macros::datetime;

    #[test]
    fn generated_ids_are_v7_and_carry_the_clock_time() {
        let clock = ManualClock::new(datetime!(2026-01-02 03:04:05.678 UTC));
        let mut rng = StdRng::seed_from_u64(7);
        let id = MessageId::generate(&clock, &mut rng);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(id.unix_millis(), Some(1_767_323_045_678));
    }

    #[test]
    fn same_seed_same_id() {
        let clock = ManualClock::new(datetime!(2026-01-02 03:04:05 UTC));
        let a = MessageId::generate(&clock, &mut StdRng::seed_from_u64(1));
        let b = MessageId::generate(&clock, &mut StdRng::seed_from_u64(1));
        assert_eq!(a, b);
    }

    #[test]
    fn now_v7_is_monotonic_within_a_process() {
        let ids: Vec<_> = (0..1000).map(|_| MessageId::now_v7()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn parsing_rejects_garbage_and_nil_and_accepts_v4() {
        let err = "not-a-uuid".parse::<MessageId>().unwrap_err();
        assert!(err.to_string().contains("not a UUID"), "{err}");
        let err = Uuid::nil().to_string().parse::<MessageId>().unwrap_err();
        assert!(err.to_string().contains("nil"), "{err}");
        let v4 = "9b2d2b8e-4d3b-4a8e-9f3c-1c2d3e4f5a6b";
        let id: MessageId = v4.parse().unwrap();
        assert_eq!(id.to_string(), v4);
        assert_eq!(id.unix_millis(), None);
    }

    #[test]
    fn serde_round_trip_rejects_nil() {
        let id = MessageId::now_v7();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        let nil = format!("\"{}\"", Uuid::nil());
        assert!(serde_json::from_str::<MessageId>(&nil).is_err());
    }
}
