//! What a lease backend does, whatever keeps the leases.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use time::OffsetDateTime;

use crate::{FencingToken, LeaseError};

/// One grant of a lease: who holds it, with which token, until when (on the granting side's
/// clock; a holder keeps its own deadline on its monotonic clock, see
/// [`LeaseGuard`](crate::LeaseGuard)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    /// The lease.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this grant.
    pub token: FencingToken,
    /// How long the grant lasts from its acquisition or latest renewal, in milliseconds.
    pub ttl_ms: u64,
    /// When it lapses unless renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Where a lease stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseInfo {
    /// The lease.
    pub name: String,
    /// Its holder while held (granted and not lapsed nor released).
    pub holder: Option<String>,
    /// The latest token granted for it.
    pub token: FencingToken,
    /// When the latest grant lapses (or lapsed), if the backend knows.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Wakes the waiters for one lease name in this process, one per release, longest waiting
/// first. See [`LeaseBackend::release_signal`].
#[derive(Debug, Default)]
pub struct ReleaseSignal {
    notify: tokio::sync::Notify,
    waiting: std::sync::atomic::AtomicUsize,
}

impl ReleaseSignal {
    /// Wakes the longest-waiting waiter, or the next one to wait if none does yet.
    pub fn wake_one(&self) {
        self.notify.notify_one();
    }

    /// Whether someone in this process waits for the lease: a newcomer then queues behind
    /// them instead of racing the one a release wakes (which costs both a round trip).
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Until woken (cancellable: a wake-up given to a waiter that leaves passes to the next).
    pub(crate) async fn wait(&self) {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        self.notify.notified().await;
    }
}

/// Keeps leases. Every grant's token is larger than every earlier token for the same name;
/// that is the one property the fence depends on, and each implementation states how far it
/// holds (restarts, failover).
pub trait LeaseBackend: Send + Sync + fmt::Debug {
    /// Grants `name` to `holder` for `ttl` if it is free (never granted, released, or lapsed at
    /// `now`); otherwise fails with [`LeaseError::Held`].
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>>;

    /// Extends the grant with `token` to `ttl` from `now`, if it is still the current grant
    /// and has not lapsed; otherwise fails with [`LeaseError::NotHeld`].
    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: FencingToken,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>>;

    /// Ends the grant with `token`, so that the next acquire need not wait for it to lapse.
    /// Fails with [`LeaseError::NotHeld`] if `token` is not the current grant (it lapsed, or
    /// it is someone else's), or [`LeaseError::Unknown`] if `name` was never granted.
    fn release<'a>(
        &'a self,
        name: &'a str,
        token: FencingToken,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Every lease the backend knows, by name.
    fn list(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<Vec<LeaseInfo>, LeaseError>>;

    /// The signal that wakes one waiter for `name` each time it is released, so that a
    /// waiter tries again at once instead of at its next poll, and one at a time, not all at
    /// once; `None` (the default) when the backend cannot tell, and waiters poll. A wake-up
    /// can be missed (a listening connection is re-made): waiters keep polling too, less often.
    fn release_signal<'a>(
        &'a self,
        _name: &'a str,
    ) -> BoxFuture<'a, Option<std::sync::Arc<ReleaseSignal>>> {
        Box::pin(std::future::ready(None))
    }
}
