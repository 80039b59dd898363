//! What can go wrong when managing endpoints and sending messages.

use onephase_core::{Classify, ErrorKind, ProblemType};

use crate::destination::DestinationError;

/// A webhook operation failed; nothing was changed unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A value was refused: which one and why.
    #[error("{0}")]
    Invalid(String),
    /// The endpoint's URL is not a permitted destination.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// No endpoint or message with this id.
    #[error("no {what} with id {id:?}")]
    NotFound {
        /// `endpoint` or `message`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The idempotency key was used before for a different message.
    #[error(
        "idempotency key {key:?} was already used for message {message} with a different request; use a new key for a new message"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The message that holds it.
        message: String,
    },
    /// The request conflicts with the endpoint's state.
    #[error("{0}")]
    Conflict(String),
    /// The body is over the limit.
    #[error("the message body is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The store failed.
    #[error("webhook store: {0}")]
    Store(sqlx::Error),
    /// The operational event could not be written to the outbox.
    #[error("webhook event: {0}")]
    Outbox(onephase_outbox::OutboxError),
}

impl WebhookError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub(crate) fn not_found(what: &'static str, id: &str) -> Self {
        Self::NotFound {
            what,
            id: id.to_owned(),
        }
    }
}

impl Classify for WebhookError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidInput,
            Self::Destination(e) => e.kind(),
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::KeyReused { .. } | Self::Conflict(_) => ErrorKind::Conflict,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Store(e) => onephase_store::classify_sqlx(e),
            Self::Outbox(e) => e.kind(),
        }
    }

    /// A URL the policy refuses is a well-formed request the server will not carry out.
    fn specific(&self) -> Option<ProblemType> {
        matches!(self, Self::Destination(DestinationError::Forbidden { .. })).then_some(
            ProblemType {
                status: 422,
                slug: "destination-refused",
                title: "Destination refused",
            },
        )
    }
}

impl From<sqlx::Error> for WebhookError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}

impl From<onephase_outbox::OutboxError> for WebhookError {
    fn from(e: onephase_outbox::OutboxError) -> Self {
        Self::Outbox(e)
    }
}
