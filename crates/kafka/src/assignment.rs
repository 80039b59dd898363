//! Reads the consumer protocol's assignment bytes that DescribeGroups returns for each member
//! (`ConsumerProtocolAssignment`, versions 0 to 3): which partitions of which topics it owns.
//!
//! The layout is Kafka's classic encoding: a version (int16), an array (int32 count) of topics,
//! each a string (int16 length) and an array of int32 partitions, then user data (int32
//! length, -1 for none), which is ignored. Bytes that do not follow it give an error, never a
//! panic; an empty buffer (a broker that does not send assignments) is no partitions.

use crate::diagnosis::TopicPartition;

/// Why assignment bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member assignment is not a consumer protocol assignment: {0}")]
pub struct BadAssignment(&'static str);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BadAssignment> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(BadAssignment("it ends early"))?;
        self.bytes = rest;
        Ok(*head)
    }

    fn i16(&mut self) -> Result<i16, BadAssignment> {
        self.take::<2>().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, BadAssignment> {
        self.take::<4>().map(i32::from_be_bytes)
    }

    fn count(&mut self) -> Result<usize, BadAssignment> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = usize::try_from(n).map_err(|_| BadAssignment("a negative count"))?;
        // Every element takes at least 2 bytes: a count past that is a lie.
        if n > self.bytes.len() / 2 {
            return Err(BadAssignment("a count larger than the bytes that follow"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, BadAssignment> {
        let len = usize::try_from(self.i16()?).map_err(|_| BadAssignment("a null topic name"))?;
        if len > self.bytes.len() {
            return Err(BadAssignment(
                "a topic name longer than the bytes that follow",
            ));
        }
        let (name, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        String::from_utf8(name.to_vec()).map_err(|_| BadAssignment("a topic name not in UTF-8"))
    }
}

/// The partitions an assignment gives its member.
pub fn parse(bytes: &[u8]) -> Result<Vec<TopicPartition>, BadAssignment> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader { bytes };
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(BadAssignment("an unknown version"));
    }
    let mut out = Vec::new();
    for _ in 0..r.count()? {
        let topic = r.string()?;
        let partitions = r.count()?;
        for _ in 0..partitions {
            out.push(TopicPartition::new(topic.clone(), r.i32()?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::diagnosis::TopicPartition;
    use proptest::prelude::*;

    fn encode(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend(i32::try_from(topics.len()).unwrap_or(0).to_be_bytes());
        for (topic, partitions) in topics {
            b.extend(i16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
            b.extend(topic.as_bytes());
            b.extend(i32::try_from(partitions.len()).unwrap_or(0).to_be_bytes());
            for p in *partitions {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn reads_topics_and_partitions() {
        let bytes = encode(1, &[("orders", &[0, 2]), ("refunds", &[1])]);
        assert_eq!(
            parse(&bytes),
            Ok(vec![
                TopicPartition::new("orders", 0),
                TopicPartition::new("orders", 2),
                TopicPartition::new("refunds", 1),
            ])
        );
        assert_eq!(parse(&[]), Ok(vec![]));
        assert!(parse(&bytes[..9]).is_err());
        assert!(parse(&encode(9, &[])).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }
    }
}
