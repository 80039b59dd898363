use std::borrow::Cow;
use std::fmt;

/// What kind of failure an error is, independent of which crate raised it.
///
/// Library crates keep their own `thiserror` enums, precise about what went wrong, and
/// implement [`Classify`] to say which kind each variant is. The server maps a kind to an HTTP
/// status once; callers that retry ask [`ErrorKind::is_transient`] instead of matching on
/// strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller sent something malformed or out of range; retrying the same input fails again.
    InvalidInput,
    /// The named thing does not exist.
    NotFound,
    /// The request conflicts with current state (a version mismatch, a duplicate, a stale
    /// fencing token).
    Conflict,
    /// No credentials, or credentials that do not identify anyone.
    Unauthenticated,
    /// Credentials that identify someone who may not do this.
    Forbidden,
    /// The input is larger than the configured limit.
    TooLarge,
    /// A dependency (database, broker, endpoint) cannot be reached right now; retrying later may
    /// succeed.
    Unavailable,
    /// The operation did not finish within its deadline; it may or may not have taken effect.
    Timeout,
    /// A bug or an invariant violation inside onephase.
    Internal,
}

impl ErrorKind {
    /// Every kind, for exhaustive tests and documentation tables.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidInput,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::TooLarge,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Internal,
    ];

    /// Whether retrying the same operation later can succeed without changing the input.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    /// A stable, lowercase identifier for logs, metrics labels and problem-document types.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::TooLarge => "too-large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every onephase error type: which [`ErrorKind`] this error is.
pub trait Classify {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;

    /// A problem type more specific than the kind's, for the few errors a client must tell
    /// apart from others of their kind (a lease held by someone else, a destination the
    /// policy refuses). `None`, the default, means the kind's own type.
    fn specific(&self) -> Option<ProblemType> {
        None
    }
}

/// An HTTP problem type (RFC 9457) that an error asks for instead of its kind's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemType {
    /// The status code.
    pub status: u16,
    /// The slug of its `type` URI (`urn:onephase:problem:<slug>`).
    pub slug: &'static str,
    /// Its title.
    pub title: &'static str,
}

/// A value was rejected before anything was changed: which field, and why.
///
/// The message is written for the person who sent the value: it names the limit or the
/// accepted form, so that they can fix the input without reading the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    field: Cow<'static, str>,
    message: String,
}

impl ValidationError {
    /// A validation error for `field`, explained by `message`.
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The name of the rejected field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Why it was rejected.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Classify for ValidationError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_timeout_are_transient() {
        let transient: Vec<_> = ErrorKind::ALL
            .into_iter()
            .filter(|k| k.is_transient())
            .collect();
        assert_eq!(transient, [ErrorKind::Unavailable, ErrorKind::Timeout]);
    }

    #[test]
    fn validation_error_names_field_and_reason() {
        let err = ValidationError::new("topic", "must not be empty");
        assert_eq!(err.to_string(), "invalid topic: must not be empty");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
