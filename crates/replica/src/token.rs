//! Consistency tokens: "what I wrote", as a position in the primary's write-ahead log.
//!
//! A [`Token`] is taken on the primary after a commit ([`Router::token`](crate::Router::token),
//! or the SQL recipe in `docs/replica.md`). It names the cluster (its system identifier), the
//! timeline the primary was on, and a WAL position at or past the commit. A replica whose
//! replay position has reached it shows everything the writer had committed.
//!
//! Its text, `op1.<system id>.<timeline>.<position>` in fixed-width lowercase hex (16, 8 and 16
//! digits), travels in the [`HEADER`] of HTTP requests and responses and of outbox messages.
//! Treat it as opaque: compare nothing in it, just hand it on. Two tokens of one cluster and
//! timeline combine with [`Token::max`].

use std::fmt;
use std::str::FromStr;

use crate::error::BadToken;

/// The header a token travels in, in HTTP requests and responses and in outbox messages
/// (whose `onephase-` names are reserved for the envelope's own fields, hence no prefix).
pub const HEADER: &str = "consistency-token";

const PREFIX: &str = "op1";

/// A position in a PostgreSQL write-ahead log (`pg_lsn`), as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to `self`, 0 when `earlier` is not earlier.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's own text: `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = BadToken;

    /// Parses PostgreSQL's text of a `pg_lsn` (`16/B374D848`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadToken::new(format!("{text:?} is not a WAL position like 16/B374D848"));
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let part = |s: &str| {
            if s.is_empty() || s.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(s, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

/// What a writer committed, as a position in the primary's WAL, with the cluster's system
/// identifier and the primary's timeline. Its text, `op1.<system id>.<timeline>.<position>` in
/// fixed-width lowercase hex (16, 8 and 16 digits), travels in the [`HEADER`]; treat it as
/// opaque and hand it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    system: u64,
    timeline: u32,
    position: Lsn,
}

impl Token {
    /// A token of cluster `system` (its `pg_control_system().system_identifier`), on
    /// `timeline`, at `position`.
    pub fn new(system: u64, timeline: u32, position: Lsn) -> Self {
        Self {
            system,
            timeline,
            position,
        }
    }

    /// The cluster's system identifier.
    pub fn system(&self) -> u64 {
        self.system
    }

    /// The timeline the primary was on when the token was taken.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The WAL position.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The later of two tokens: the one a reader must wait for to see both writes. Tokens of
    /// different clusters do not combine (`None`); of different timelines, the later timeline
    /// wins (its primary has everything that survived the failover).
    pub fn max(self, other: Token) -> Option<Token> {
        if self.system != other.system {
            return None;
        }
        Some(
            if (other.timeline, other.position) > (self.timeline, self.position) {
                other
            } else {
                self
            },
        )
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{:016x}.{:08x}.{:016x}",
            self.system, self.timeline, self.position.0
        )
    }
}

impl FromStr for Token {
    type Err = BadToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = "a consistency token looks like \
                     op1.<16 hex digits>.<8 hex digits>.<16 hex digits>, as onephase wrote it";
        let bad = |what: &str| {
            let shown: String = text.chars().take(80).collect();
            BadToken::new(format!(
                "{shown:?} is not a consistency token: {what}; {shape}"
            ))
        };
        let mut parts = text.trim().split('.');
        match parts.next() {
            Some(PREFIX) => {}
            Some(other) if other.starts_with("op") => {
                return Err(bad("it is of a version this build does not know"));
            }
            _ => return Err(bad("it does not start with op1")),
        }
        let mut hex = |digits: usize, what: &str| -> Result<u64, BadToken> {
            let part = parts
                .next()
                .ok_or_else(|| bad(&format!("the {what} is missing")))?;
            let ok = part.len() == digits
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(bad(&format!(
                    "the {what} is not {digits} lowercase hex digits"
                )));
            }
            u64::from_str_radix(part, 16).map_err(|_| bad(&format!("the {what} is not hex")))
        };
        let system = hex(16, "system identifier")?;
        let timeline = hex(8, "timeline")?;
        let position = hex(16, "position")?;
        if parts.next().is_some() {
            return Err(bad("it has more than four parts"));
        }
        let timeline = u32::try_from(timeline).map_err(|_| bad("the timeline is too large"))?;
        if timeline == 0 {
            return Err(bad("timeline 0 does not exist"));
        }
        Ok(Token::new(system, timeline, Lsn(position)))
    }
}

impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_reads_and_writes_postgres_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "16", "/1", "1/", "x/1", "1/123456789", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = Token::new(7716346150407417706, 1, Lsn(0x6000AF8)).to_string();
        assert_eq!(good, "op1.6b15f7f0dafcaf6a.00000001.0000000006000af8");
        assert_eq!(good.parse::<Token>().unwrap().to_string(), good);
        for (bad, says) in [
            ("", "does not start with op1"),
            ("op2.6b16fc5bd8cfd96a.00000001.0000000006000af8", "version"),
            ("op1.6b16fc5bd8cfd96a.00000001", "position is missing"),
            (
                "op1.6B16FC5BD8CFD96A.00000001.0000000006000af8",
                "lowercase",
            ),
            (
                "op1.6b16fc5bd8cfd96a.00000000.0000000006000af8",
                "timeline 0",
            ),
            (
                "op1.6b16fc5bd8cfd96a.00000001.0000000006000af8.1",
                "more than four",
            ),
            ("op1.6b16fc5bd8cfd96a.0001.0000000006000af8", "8 lowercase"),
        ] {
            let err = bad.parse::<Token>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn max_prefers_the_later_timeline_and_refuses_other_clusters() {
        let a = Token::new(1, 1, Lsn(100));
        let b = Token::new(1, 2, Lsn(50));
        assert_eq!(a.max(b), Some(b));
        assert_eq!(b.max(a), Some(b));
        assert_eq!(a.max(Token::new(1, 1, Lsn(99))), Some(a));
        assert_eq!(a.max(Token::new(2, 1, Lsn(100))), None);
    }

    proptest! {
        #[test]
        fn text_round_trips(system in any::<u64>(), timeline in 1..=u32::MAX, position in any::<u64>()) {
            let token = Token::new(system, timeline, Lsn(position));
            prop_assert_eq!(token.to_string().parse::<Token>().unwrap(), token);
            let lsn = Lsn(position);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }

        #[test]
        fn any_text_is_parsed_or_refused_without_panic(text in ".{0,80}") {
            let _ = text.parse::<Token>();
            let _ = text.parse::<Lsn>();
        }
    }
}
