//! What can go wrong with an append, a read, a projection or a wait.

use std::time::Duration;

use onephase_core::{Classify, ErrorKind, ProblemType};

use crate::ExpectedVersion;

/// An event store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// A stream name, event type, id, data or option is unusable; nothing was written.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// What was rejected (`stream`, `type`, `data`, ...).
        field: String,
        /// Why, and what is accepted.
        message: String,
    },
    /// An event's data or metadata is larger than the store's limit; nothing was written.
    #[error(
        "event {index} is {size} bytes, over the limit of {limit} bytes; store large payloads \
         elsewhere and append a reference to them"
    )]
    TooLarge {
        /// Its index in the append.
        index: usize,
        /// Its size: data plus metadata, in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream's version is not the one the append expected: someone else appended since
    /// the writer read it. Nothing was written; read the stream again, decide again, retry.
    #[error(
        "stream {stream:?} is at version {actual}, but the append expected {expected}; read it \
         again and retry the decision"
    )]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// Its version now (0: no such stream).
        actual: u64,
    },
    /// An event id was already appended, but not as part of this same append (an idempotent
    /// retry repeats every id, in the same streams and order). Nothing was written.
    #[error(
        "event id {id} was already appended to stream {stream:?} at version {version}; a retry \
         must repeat the whole append, and a new event needs a new id"
    )]
    IdReused {
        /// The id.
        id: String,
        /// Where it is.
        stream: String,
        /// At which version.
        version: u64,
    },
    /// No event was ever appended to the stream.
    #[error("stream {0:?} does not exist")]
    NoStream(String),
    /// A stored event's type is not one the reader knows (no upcaster chain, no variant).
    #[error(
        "event type {event_type:?} (schema version {version}) at position {position} is not \
         known to this reader; register the type and its upcasters, or skip the event on \
         purpose"
    )]
    UnknownType {
        /// The stored type.
        event_type: String,
        /// Its stored schema version.
        version: u32,
        /// Its global position.
        position: u64,
    },
    /// A stored event's schema version has no upcaster to the current one, or is newer than
    /// the reader's.
    #[error(
        "event type {event_type:?} at position {position} is stored at schema version \
         {version}, and this reader {problem}"
    )]
    UnknownVersion {
        /// The stored type.
        event_type: String,
        /// Its stored schema version.
        version: u32,
        /// Its global position.
        position: u64,
        /// What is missing (`has no upcaster from it`, `knows only up to 2`).
        problem: String,
    },
    /// An upcaster returned an error.
    #[error(
        "upcasting {event_type:?} from schema version {from} (position {position}) failed: \
         {reason}"
    )]
    UpcastFailed {
        /// The stored type.
        event_type: String,
        /// The version the failing step starts from.
        from: u32,
        /// Its global position.
        position: u64,
        /// The upcaster's message.
        reason: String,
    },
    /// Personal data was appended for a subject that has been forgotten.
    #[error(
        "subject {0:?} has been forgotten; personal data for it cannot be appended again \
         (use a new subject id if this is a new person)"
    )]
    SubjectForgotten(String),
    /// A sealed personal field could not be opened with its subject's key (the stored bytes
    /// were changed): the data is not trusted.
    #[error("personal field {field:?} of event at position {position} does not decrypt: {reason}")]
    Sealed {
        /// The field.
        field: String,
        /// Its global position.
        position: u64,
        /// Why.
        reason: String,
    },
    /// No projection by that name is registered or stored.
    #[error("no projection named {0:?}")]
    UnknownProjection(String),
    /// The projection is parked on an event that failed; it must be retried or skipped by an
    /// operator before it moves on.
    #[error(
        "projection {projection:?} is parked at position {position}: {error}; retry it once \
         the cause is fixed, or skip the event"
    )]
    Parked {
        /// The projection.
        projection: String,
        /// The failing event's position.
        position: u64,
        /// What failed.
        error: String,
    },
    /// The operation does not fit the projection's state (retry of one not parked, a second
    /// rebuild while one runs).
    #[error("projection {projection:?}: {message}")]
    ProjectionState {
        /// The projection.
        projection: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A consistency wait ran out: the projection has not yet applied the position.
    #[error(
        "projection {projection:?} is at position {reached} and had not reached {wanted} \
         after {waited:?}; read again later, or read from the stream itself"
    )]
    NotYet {
        /// The projection.
        projection: String,
        /// The position asked for.
        wanted: u64,
        /// Where the projection is.
        reached: u64,
        /// How long the wait lasted.
        waited: Duration,
    },
    /// A command handler refused the command (the aggregate's own error, as text).
    #[error("command refused: {0}")]
    Refused(String),
    /// Every attempt of a command met a concurrent append.
    #[error(
        "stream {stream:?} changed under each of {attempts} attempts; the stream is contended, \
         retry later"
    )]
    Contended {
        /// The stream.
        stream: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A stored value is not what this version of onephase wrote (a hand-edited row).
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt {
        /// Which value.
        what: String,
        /// Why.
        reason: String,
    },
    /// The store (SQLite or PostgreSQL) failed or could not be reached.
    #[error("event store: {0}")]
    Store(sqlx::Error),
}

impl EventsError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<sqlx::Error> for EventsError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}

impl Classify for EventsError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. } => ErrorKind::InvalidInput,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::WrongExpectedVersion { .. }
            | Self::IdReused { .. }
            | Self::SubjectForgotten(_)
            | Self::Parked { .. }
            | Self::ProjectionState { .. }
            | Self::Refused(_)
            | Self::Contended { .. } => ErrorKind::Conflict,
            Self::NoStream(_) | Self::UnknownProjection(_) => ErrorKind::NotFound,
            Self::UnknownType { .. } | Self::UnknownVersion { .. } | Self::UpcastFailed { .. } => {
                ErrorKind::Internal
            }
            Self::Sealed { .. } | Self::Corrupt { .. } => ErrorKind::Internal,
            Self::NotYet { .. } => ErrorKind::Timeout,
            Self::Store(e) => onephase_store::classify_sqlx(e),
        }
    }

    /// A version conflict and a projection that has not caught up are their own problem
    /// types: a client retries the first after reading again, and reads later after the second.
    fn specific(&self) -> Option<ProblemType> {
        match self {
            Self::WrongExpectedVersion { .. } => Some(ProblemType {
                status: 409,
                slug: "wrong-expected-version",
                title: "Wrong expected version",
            }),
            Self::NotYet { .. } => Some(ProblemType {
                status: 504,
                slug: "projection-not-caught-up",
                title: "Projection not caught up",
            }),
            Self::Parked { .. } => Some(ProblemType {
                status: 409,
                slug: "projection-parked",
                title: "Projection parked",
            }),
            _ => None,
        }
    }
}
