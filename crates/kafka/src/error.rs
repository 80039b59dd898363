//! What can go wrong talking to Kafka.

use onephase_core::{Classify, ErrorKind};
use rdkafka::error::RDKafkaErrorCode;

/// An error of the consumer runtime or the doctor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The configuration was refused before anything connected.
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// librdkafka refused a call or the brokers answered with an error.
    #[error("Kafka {context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The group is not known to the brokers, or has no committed offsets and no members.
    #[error("consumer group {0} not found: it has no members and no committed offsets")]
    UnknownGroup(String),
    /// A background thread of the runtime stopped unexpectedly.
    #[error("Kafka runtime: {0}")]
    Runtime(String),
}

impl KafkaError {
    pub(crate) fn client(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Client {
            context: context.into(),
            source,
        }
    }
}

impl Classify for KafkaError {
    fn kind(&self) -> ErrorKind {
        match self {
            KafkaError::Config(_) => ErrorKind::InvalidInput,
            KafkaError::UnknownGroup(_) => ErrorKind::NotFound,
            KafkaError::Runtime(_) => ErrorKind::Internal,
            KafkaError::Client { source, .. } => match source.rdkafka_error_code() {
                Some(RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::InvalidGroupId) => {
                    ErrorKind::InvalidInput
                }
                Some(
                    RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::MessageTimedOut,
                ) => ErrorKind::Timeout,
                _ => ErrorKind::Unavailable,
            },
        }
    }
}
