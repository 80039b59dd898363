//! Header names that travel with an [`Envelope`](crate::Envelope) end to end, and the W3C
//! trace context they carry.
//!
//! Every adapter maps these names one to one onto its transport's own headers (Kafka record
//! headers, NATS headers, AMQP properties, HTTP headers), so that a trace started by an HTTP
//! request stays one trace through the outbox, the broker and the consumer.
//!
//! - [`CORRELATION_ID`]: the same for every message caused, directly or not, by one original
//!   request. Search for it to see everything one user action did.
//! - [`CAUSATION_ID`]: the id of the message (or request) that directly caused this one. Follow
//!   it to rebuild the causal chain of a saga or projection.
//! - [`TRACEPARENT`] and [`TRACESTATE`]: W3C Trace Context, parsed and validated by
//!   [`TraceParent`].

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::error::ValidationError;

/// The id shared by every message that one original request caused.
pub const CORRELATION_ID: &str = "correlation-id";
/// The id of the message or request that directly caused this message.
pub const CAUSATION_ID: &str = "causation-id";
/// W3C Trace Context `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context `tracestate` header (vendor data, carried through untouched).
pub const TRACESTATE: &str = "tracestate";

/// A parsed W3C Trace Context `traceparent` (version 00).
///
/// Parsing follows the specification's rules: lowercase hex only, neither the trace id nor the
/// parent id may be all zeros, version `ff` is invalid, and a higher version than 00 is accepted
/// if its first four fields parse (the rest is ignored, as the specification requires).
///
/// ```
/// use onephase_core::headers::TraceParent;
/// use onephase_core::rand::{SeedableRng, rngs::StdRng};
///
/// let parent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert!(parent.sampled());
/// let child = parent.child(&mut StdRng::seed_from_u64(1));
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_ne!(child.parent_id(), parent.parent_id());
/// # Ok::<(), onephase_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Starts a new trace with random ids, sampled.
    pub fn new_root(rng: &mut impl Rng) -> Self {
        let mut trace_id = [0u8; 16];
        while trace_id == [0u8; 16] {
            rng.fill_bytes(&mut trace_id);
        }
        Self {
            trace_id,
            parent_id: random_span_id(rng),
            flags: 0x01,
        }
    }

    /// The context to send downstream from a new span of this trace: same trace id and flags,
    /// a new random parent id.
    pub fn child(&self, rng: &mut impl Rng) -> Self {
        Self {
            parent_id: random_span_id(rng),
            ..*self
        }
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The 8-byte id of the calling span.
    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller sampled this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 0x01
    }
}

fn random_span_id(rng: &mut impl Rng) -> [u8; 8] {
    let mut id = [0u8; 8];
    while id == [0u8; 8] {
        rng.fill_bytes(&mut id);
    }
    id
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex_lower(&self.trace_id),
            hex_lower(&self.parent_id),
            self.flags
        )
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn parse_hex<const N: usize>(field: &str, what: &str) -> Result<[u8; N], ValidationError> {
    let invalid = || {
        ValidationError::new(
            TRACEPARENT,
            format!(
                "{what} must be {} lowercase hex digits, got {field:?}",
                N * 2
            ),
        )
    };
    if field.len() != N * 2
        || !field
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(invalid());
    }
    let mut out = [0u8; N];
    for (i, chunk) in field.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| invalid())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

impl FromStr for TraceParent {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // version-traceid-parentid-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55 characters.
        const LEN: usize = 55;
        let version = s.get(..2).unwrap_or(s);
        let [version] = parse_hex::<1>(version, "the version")?;
        if version == 0xff {
            return Err(ValidationError::new(TRACEPARENT, "version ff is invalid"));
        }
        let fields = match (version, s.len()) {
            (0, LEN) => s,
            (0, _) => {
                return Err(ValidationError::new(
                    TRACEPARENT,
                    format!(
                        "a version 00 traceparent is {LEN} characters, got {}",
                        s.len()
                    ),
                ));
            }
            // Future versions may append fields after a '-'; only the first four are ours.
            (_, n) if n == LEN || (n > LEN && s.as_bytes()[LEN] == b'-') => &s[..LEN],
            _ => {
                return Err(ValidationError::new(
                    TRACEPARENT,
                    format!("expected version-traceid-parentid-flags, got {s:?}"),
                ));
            }
        };
        let parts: Vec<&str> = fields.split('-').collect();
        let [_, trace_id, parent_id, flags] = parts.as_slice() else {
            return Err(ValidationError::new(
                TRACEPARENT,
                format!("expected version-traceid-parentid-flags, got {s:?}"),
            ));
        };
        let trace_id = parse_hex::<16>(trace_id, "the trace id")?;
        let parent_id = parse_hex::<8>(parent_id, "the parent id")?;
        let [flags] = parse_hex::<1>(flags, "the flags")?;
        if trace_id == [0u8; 16] {
            return Err(ValidationError::new(
                TRACEPARENT,
                "the trace id must not be all zeros",
            ));
        }
        if parent_id == [0u8; 8] {
            return Err(ValidationError::new(
                TRACEPARENT,
                "the parent id must not be all zeros",
            ));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_specification_example() {
        let tp: TraceParent = EXAMPLE.parse().unwrap();
        assert_eq!(tp.to_string(), EXAMPLE);
        assert!(tp.sampled());
        assert_eq!(
            tp.parent_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
    }

    #[test]
    fn rejects_what_the_specification_rejects() {
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn future_versions_keep_the_first_four_fields() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        let tp: TraceParent = future.parse().unwrap();
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn roots_and_children_are_valid() {
        let mut rng = StdRng::seed_from_u64(3);
        let root = TraceParent::new_root(&mut rng);
        let child = root.child(&mut rng);
        assert_eq!(child.to_string().parse::<TraceParent>().unwrap(), child);
        assert_eq!(child.trace_id(), root.trace_id());
        assert_eq!(child.flags(), root.flags());
    }
}
