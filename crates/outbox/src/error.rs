use onephase_core::{Classify, ErrorKind, ValidationError};

/// What can go wrong in the outbox, the relay and the inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The envelope cannot go into the outbox as it is; nothing was written.
    #[error("invalid envelope: {0}")]
    Invalid(ValidationError),
    /// The payload is larger than the configured limit; nothing was written.
    #[error("payload is {size} bytes; the outbox limit is {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A row the operator named does not exist (or is not dead-lettered).
    #[error("no dead-lettered outbox row with id {0}")]
    NotDead(uuid::Uuid),
    /// The database failed.
    #[error("outbox database error: {0}")]
    Database(sqlx::Error),
}

impl Classify for OutboxError {
    fn kind(&self) -> ErrorKind {
        match self {
            OutboxError::Invalid(_) => ErrorKind::InvalidInput,
            OutboxError::PayloadTooLarge { .. } => ErrorKind::TooLarge,
            OutboxError::NotDead(_) => ErrorKind::NotFound,
            OutboxError::Database(e) => onephase_store::classify_sqlx(e),
        }
    }
}

impl From<ValidationError> for OutboxError {
    fn from(e: ValidationError) -> Self {
        Self::Invalid(e)
    }
}

impl From<sqlx::Error> for OutboxError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}
