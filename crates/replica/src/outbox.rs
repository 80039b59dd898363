//! The consistency token on outbox messages: a consumer reads at least what the producer had
//! written when the message was sent.
//!
//! The token of a message's own transaction cannot be written into the message: its commit
//! position is not known until the commit. The relay publishes only committed rows, so a token
//! taken by the relay just before it publishes a batch is at or past the commit of every
//! message in it. [`WithConsistency`] wraps a [`Publisher`]: one read of the primary per batch,
//! and each message leaves with the [`HEADER`] set (a token the producer put
//! there itself is kept when it is newer).
//!
//! The consumer parses it ([`token_of`]) and routes its reads with
//! [`Policy::ReadYourWrites`](crate::Policy::ReadYourWrites).

use futures::future::{BoxFuture, FutureExt};
use onephase_broker::{BrokerError, Publisher};
use onephase_core::Envelope;
use sqlx::PgPool;

use crate::sql::take_token;
use crate::token::{HEADER, Token};

/// A publisher that stamps every message with a consistency token of `primary`. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct WithConsistency<P> {
    inner: P,
    primary: PgPool,
}

impl<P> WithConsistency<P> {
    /// Wraps `inner`; tokens are taken on `primary`, the database the outbox rows are in.
    pub fn new(inner: P, primary: PgPool) -> Self {
        Self { inner, primary }
    }
}

/// The token a message carries, if it has a well-formed one.
pub fn token_of(envelope: &Envelope) -> Option<Result<Token, crate::BadToken>> {
    envelope.header(HEADER).map(str::parse)
}

fn stamped(envelope: &Envelope, token: Token) -> Result<Envelope, BrokerError> {
    let token = match token_of(envelope) {
        Some(Ok(own)) => own.max(token).unwrap_or(token),
        _ => token,
    };
    let mut builder = Envelope::builder(envelope.topic(), envelope.payload().clone())
        .id(envelope.id())
        .created_at(envelope.created_at());
    if let Some(key) = envelope.key() {
        builder = builder.key(key);
    }
    for (name, value) in envelope.headers() {
        if name != HEADER {
            builder = builder.header(name, value);
        }
    }
    builder
        .header(HEADER, token.to_string())
        .build()
        .map_err(|e| {
            BrokerError::rejected(
                "consistency",
                format!("cannot add the consistency token: {e}"),
            )
        })
}

impl<P: Publisher> Publisher for WithConsistency<P> {
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }

    fn publish<'a>(&'a self, batch: &'a [Envelope]) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let token = match take_token(&self.primary).await {
                Ok(token) => token,
                Err(e) => {
                    // Without a token the messages would promise nothing: fail the batch so
                    // the relay retries it, rather than publish it unstamped.
                    let message = format!("cannot take a consistency token: {e}");
                    return batch
                        .iter()
                        .map(|_| Err(BrokerError::unavailable(self.inner.transport(), &message)))
                        .collect();
                }
            };
            let stamped: Vec<Result<Envelope, BrokerError>> =
                batch.iter().map(|e| stamped(e, token)).collect();
            let ready: Vec<Envelope> = stamped
                .iter()
                .filter_map(|s| s.as_ref().ok().cloned())
                .collect();
            let mut published = self.inner.publish(&ready).await.into_iter();
            stamped
                .into_iter()
                .map(|s| match s {
                    Ok(_) => published.next().unwrap_or_else(|| {
                        Err(BrokerError::unavailable(
                            self.inner.transport(),
                            "the publisher gave no result",
                        ))
                    }),
                    Err(e) => Err(e),
                })
                .collect()
        }
        .boxed()
    }
}
