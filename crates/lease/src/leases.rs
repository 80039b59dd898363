//! The lease service: validated acquire (once or with a wait), renew, release and list over a
//! [`LeaseBackend`], with time from a [`Clock`](onephase_core::Clock).

use std::sync::Arc;
use std::time::Duration;

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};
use onephase_store::Store;

use crate::guard::LeaseGuard;
use crate::store::StoreLeases;
use crate::{FencingToken, Grant, LeaseBackend, LeaseError, LeaseInfo};

/// The shortest TTL granted.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// The longest TTL granted: a holder that needs longer renews.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest name (bytes, all ASCII) or holder (characters).
pub const MAX_NAME: usize = 255;

/// Hands out leases. Cheap to clone; clones share the backend.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use onephase_lease::{Leases, migrations};
/// use onephase_store::Store;
///
/// let store = Store::connect("sqlite::memory:").await?;
/// store.migrate(&[migrations()]).await?;
/// let leases = Leases::store(store);
///
/// let guard = leases.try_acquire("nightly-report", "worker-1", Duration::from_secs(10)).await?;
/// // Every write the holder makes carries guard.token(); the resource refuses older ones.
/// let token = guard.token();
/// assert!(guard.is_held());
/// guard.release().await?;
///
/// let next = leases.try_acquire("nightly-report", "worker-2", Duration::from_secs(10)).await?;
/// assert!(next.token() > token);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct Leases {
    pub(crate) backend: Arc<dyn LeaseBackend>,
    /// The same leases, reading time from `clock`: the wall clock judges expiry on the SQL
    /// backends, the monotonic clock times each holder's deadline.
    #[setters(generate)]
    pub(crate) clock: SharedClock,
    /// The same leases, with holders' deadlines `margin` before the TTL runs out (by default a
    /// tenth of the TTL). The margin covers the request's flight and clock rate differences;
    /// it cannot cover a pause, which is what the fencing token is for.
    #[setters(generate, strip_option)]
    margin: Option<Duration>,
}

impl Leases {
    /// Leases kept by `backend`.
    pub fn new(backend: impl LeaseBackend + 'static) -> Self {
        Self {
            backend: Arc::new(backend),
            clock: Arc::new(SystemClock),
            margin: None,
        }
    }

    /// Leases kept in a migrated onephase store (SQLite or PostgreSQL).
    pub fn store(store: Store) -> Self {
        Self::new(StoreLeases::new(store))
    }

    /// Leases kept in etcd through `client`.
    #[cfg(feature = "etcd")]
    pub fn etcd(client: etcd_client::Client) -> Self {
        Self::new(crate::EtcdLeases::new(client))
    }

    /// How long before a `ttl` runs out a holder considers its lease gone.
    pub fn margin_for(&self, ttl: Duration) -> Duration {
        self.margin.unwrap_or(ttl / 10).min(ttl / 2)
    }

    /// Grants `name` to `holder` for `ttl` if it is free, or fails at once with
    /// [`LeaseError::Held`].
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseGuard, LeaseError> {
        check_request(name, holder, ttl)?;
        let sent_at = self.clock.monotonic();
        let grant = self
            .backend
            .try_acquire(name, holder, ttl, self.clock.now())
            .await?;
        Ok(LeaseGuard::new(self.clone(), grant, ttl, sent_at))
    }

    /// Grants `name` to `holder` for `ttl`, waiting up to `wait` for the current holder to
    /// release it or let it lapse; fails with [`LeaseError::Timeout`] after that. A waiter
    /// tries again as soon as the lease is released where the backend tells (the store: a
    /// release in this process, and on PostgreSQL any release, by `LISTEN`/`NOTIFY`) and
    /// otherwise polls, backing off from 10 ms to 500 ms and never sleeping past
    /// the holder's expiry.
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseGuard, LeaseError> {
        let started = self.clock.monotonic();
        let mut pause = Duration::from_millis(10);
        // A release between a refused try and the wait leaves a permit (or wakes another
        // waiter, who takes the lease instead).
        let signal = self.backend.release_signal(name).await;
        // Behind the waiters already queued in this process, not racing them.
        if let Some(signal) = &signal
            && signal.has_waiters()
        {
            check_request(name, holder, ttl)?;
            let nap = self.clock.sleep(pause.min(wait));
            tokio::select! {
                () = signal.wait() => {}
                () = nap => {}
            }
        }
        loop {
            match self.try_acquire(name, holder, ttl).await {
                Err(LeaseError::Held {
                    expires_at, holder, ..
                }) => {
                    let waited = self.clock.monotonic().saturating_duration_since(started);
                    let Some(left) = wait.checked_sub(waited).filter(|l| !l.is_zero()) else {
                        return Err(LeaseError::Timeout {
                            name: name.to_owned(),
                            holder,
                            waited,
                        });
                    };
                    let until_expiry = Duration::try_from(expires_at - self.clock.now())
                        .unwrap_or(Duration::ZERO)
                        .max(Duration::from_millis(1));
                    let nap = self.clock.sleep(pause.min(until_expiry).min(left));
                    match &signal {
                        Some(signal) => tokio::select! {
                            () = signal.wait() => {}
                            () = nap => pause = (pause * 2).min(MAX_POLL),
                        },
                        None => {
                            nap.await;
                            pause = (pause * 2).min(MAX_POLL);
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Extends the grant of `name` with `token` to `ttl` from now. For holders that keep only
    /// the token (the HTTP API); a [`LeaseGuard`] renews itself.
    pub async fn renew(
        &self,
        name: &str,
        token: FencingToken,
        ttl: Duration,
    ) -> Result<Grant, LeaseError> {
        check_name(name)?;
        check_ttl(ttl)?;
        self.backend.renew(name, token, ttl, self.clock.now()).await
    }

    /// Ends the grant of `name` with `token`. Releasing someone else's grant (any other token)
    /// fails with [`LeaseError::NotHeld`] and changes nothing.
    pub async fn release(&self, name: &str, token: FencingToken) -> Result<(), LeaseError> {
        check_name(name)?;
        self.backend.release(name, token, self.clock.now()).await
    }

    /// Every lease the backend knows: holder (while held), latest token, expiry.
    pub async fn list(&self) -> Result<Vec<LeaseInfo>, LeaseError> {
        self.backend.list(self.clock.now()).await
    }
}

/// The longest pause between a waiter's tries: with release wake-ups, the bound on how late a
/// missed wake-up makes it; without, the poll interval it backs off to.
const MAX_POLL: Duration = Duration::from_millis(500);

fn check_request(name: &str, holder: &str, ttl: Duration) -> Result<(), LeaseError> {
    check_name(name)?;
    if holder.is_empty()
        || holder.chars().count() > MAX_NAME
        || holder.chars().any(char::is_control)
    {
        return Err(LeaseError::Invalid(format!(
            "holder must be 1 to {MAX_NAME} characters without control characters"
        )));
    }
    check_ttl(ttl)
}

/// Names go into URLs and etcd keys: letters, digits and `-_.:@/`, not starting with `/`.
pub(crate) fn check_name(name: &str) -> Result<(), LeaseError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:@/".contains(c);
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.starts_with('/')
        || !name.chars().all(allowed)
    {
        return Err(LeaseError::Invalid(format!(
            "lease name {name:?}: use 1 to {MAX_NAME} letters, digits and -_.:@/ (not starting \
             with /)"
        )));
    }
    Ok(())
}

fn check_ttl(ttl: Duration) -> Result<(), LeaseError> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(LeaseError::Invalid(format!(
            "ttl {} ms is outside {} ms to {} ms",
            ttl.as_millis(),
            MIN_TTL.as_millis(),
            MAX_TTL.as_millis()
        )));
    }
    Ok(())
}
