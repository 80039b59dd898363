//! What can go wrong when a scheme or a map is built, or a key sample is read.

use onephase_core::{Classify, ErrorKind};

/// A scheme, a map or an analysis was refused; nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// A scheme's parameters cannot make a partitioner: which parameter and why.
    #[error("invalid partition scheme: {0}")]
    InvalidScheme(String),
    /// A map does not fit its scheme (owners per partition, name, version).
    #[error("invalid partition map: {0}")]
    InvalidMap(String),
    /// The sample to analyze cannot be analyzed (empty, or a parameter out of range).
    #[error("cannot analyze: {0}")]
    InvalidSample(String),
}

impl Classify for PartitionError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}
