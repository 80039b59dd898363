use std::fmt;

use onephase_core::{Classify, ErrorKind};

/// Why a publish, a receive or an acknowledgement failed.
///
/// Every adapter reports failures as this one type, so the relay decides between "retry later"
/// and "dead-letter now" by [`BrokerError::kind`] alone: transient kinds
/// ([`ErrorKind::Unavailable`], [`ErrorKind::Timeout`]) are retried with backoff, anything else
/// means the message itself cannot be delivered as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    kind: ErrorKind,
    transport: &'static str,
    message: String,
}

impl BrokerError {
    /// An error of `kind` raised by the `transport` adapter (`"nats"`, `"kafka"`, ...).
    pub fn new(kind: ErrorKind, transport: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            transport,
            message: message.into(),
        }
    }

    /// The broker could not be reached or refused for now; retrying later may succeed.
    pub fn unavailable(transport: &'static str, message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Unavailable, transport, message.to_string())
    }

    /// The broker did not answer within the deadline; the message may or may not have landed.
    pub fn timeout(transport: &'static str, message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Timeout, transport, message.to_string())
    }

    /// The message can never be delivered as it is (too large, a name the broker rejects).
    pub fn rejected(transport: &'static str, message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidInput, transport, message.to_string())
    }

    /// The adapter that raised the error.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// What went wrong, in the broker's words where it gave any.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same message later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

impl Classify for BrokerError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl BrokerError {
    /// The kind of failure (also available through [`Classify`]).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.transport, self.kind, self.message)
    }
}

impl std::error::Error for BrokerError {}
