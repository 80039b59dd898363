//! Leases in the onephase store: SQLite (embedded) or PostgreSQL.
//!
//! One row per name holds the latest grant and its token. A grant is one upsert that succeeds
//! only if the row is free or lapsed and raises the token by one, so two acquirers racing for
//! a lapsed lease are ordered by the row lock: one gets the new token, the other is told who
//! holds it. Rows are never deleted, so a name's tokens keep rising across releases and
//! restarts (a committed grant is on disk: SQLite runs with `synchronous = FULL`, PostgreSQL
//! with its default synchronous commit).
//!
//! Expiry is judged on the granting process's wall clock (the [`Clock`](onephase_core::Clock)
//! given to [`Leases`](crate::Leases)). Several servers granting from one PostgreSQL need
//! clocks in step to within the margin they can tolerate for *liveness*; safety never depends
//! on it, because a resource that checks the token refuses the older holder however the
//! clocks disagree.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use onephase_store::{Db, Store, on_store};
use time::OffsetDateTime;

use crate::{FencingToken, Grant, LeaseBackend, LeaseError, LeaseInfo, ReleaseSignal};
use onephase_store::convert::{duration_ms, stored_ms, unix_ms as ms};

/// A stored expiry; out of range is an error, never a time in 1970.
fn from_ms(ms: i64) -> Result<OffsetDateTime, LeaseError> {
    Ok(stored_ms("expires_at_ms", ms).map_err(sqlx::Error::from)?)
}

const ACQUIRE: &str = "INSERT INTO onephase_leases \
     (name, holder, token, ttl_ms, acquired_at_ms, expires_at_ms) VALUES ($1, $2, 1, $3, $4, $5) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
       token = onephase_leases.token + 1, ttl_ms = excluded.ttl_ms, \
       acquired_at_ms = excluded.acquired_at_ms, expires_at_ms = excluded.expires_at_ms \
     WHERE onephase_leases.holder IS NULL OR onephase_leases.expires_at_ms <= $4 \
     RETURNING token";

const RENEW: &str = "UPDATE onephase_leases SET ttl_ms = $3, expires_at_ms = $5 \
     WHERE name = $1 AND token = $2 AND holder IS NOT NULL AND expires_at_ms > $4 \
     RETURNING holder";

const RELEASE: &str = "UPDATE onephase_leases SET holder = NULL, \
       expires_at_ms = CASE WHEN expires_at_ms < $3 THEN expires_at_ms ELSE $3 END \
     WHERE name = $1 AND token = $2";

/// The release on PostgreSQL, telling every listening process at commit. The payload is
/// `<sender>/<name>`: a sender has woken its own waiters already and skips its own message.
const RELEASE_AND_NOTIFY: &str = "WITH released AS (UPDATE onephase_leases SET holder = NULL, \
       expires_at_ms = CASE WHEN expires_at_ms < $3 THEN expires_at_ms ELSE $3 END \
     WHERE name = $1 AND token = $2 RETURNING name) \
     SELECT pg_notify('onephase_leases', $4 || '/' || name) FROM released";

/// The channel releases are announced on (PostgreSQL).
const CHANNEL: &str = "onephase_leases";

const CURRENT: &str = "SELECT holder, token, expires_at_ms FROM onephase_leases WHERE name = $1";

const LIST: &str = "SELECT name, holder, token, expires_at_ms FROM onephase_leases ORDER BY name";

/// Leases kept in a migrated onephase store (see [`migrations`](crate::migrations)).
///
/// Releases wake waiters: one made through this value at once, and on PostgreSQL one made
/// by any process through `NOTIFY onephase_leases`, which a connection of its own `LISTEN`s
/// for from the first wait on (and closes when the last clone is dropped).
#[derive(Debug, Clone)]
pub struct StoreLeases {
    store: Store,
    waiters: Arc<Waiters>,
    /// Whether release notifications are relayed yet (PostgreSQL).
    listening: Arc<tokio::sync::Mutex<bool>>,
}

/// The release signal of each name someone in this process waits for, and the name these
/// waiters' releases are announced under.
#[derive(Debug)]
struct Waiters {
    names: Mutex<HashMap<Arc<str>, Arc<ReleaseSignal>>>,
    sender: String,
}

impl Default for Waiters {
    fn default() -> Self {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            names: Mutex::default(),
            sender: format!(
                "{}-{}",
                std::process::id(),
                MADE.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

impl Waiters {
    fn signal(&self, name: &str) -> Arc<ReleaseSignal> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(names.entry(Arc::from(name)).or_default())
    }

    /// Wakes one waiter for `name`; forgets the name when nobody holds its signal any more.
    fn wake(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signal) = names.get(name) {
            if Arc::strong_count(signal) == 1 {
                names.remove(name);
            } else {
                signal.wake_one();
            }
        }
    }

    /// Wakes one waiter for every name (a release may have been missed).
    fn wake_all(&self) {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        for signal in names.values() {
            signal.wake_one();
        }
    }
}

impl StoreLeases {
    /// Leases in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            waiters: Arc::default(),
            listening: Arc::default(),
        }
    }

    /// Starts relaying PostgreSQL's release notifications to the waiters, once: returns when
    /// the connection listens, so that a release from now on wakes a waiter.
    async fn listen(&self) {
        let Db::Postgres(pool) = self.store.db() else {
            return;
        };
        let mut listening = self.listening.lock().await;
        if *listening {
            return;
        }
        // A pool of one connection of its own: a listener holds its connection for good, which
        // in the store's pool would leave one connection fewer for everything else (none, in a
        // pool of one).
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let listener = match listener(&own).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "lease release notifications: cannot LISTEN; waiters poll");
                return;
            }
        };
        tokio::spawn(relay_notifications(
            listener,
            own,
            pool.clone(),
            Arc::downgrade(&self.waiters),
        ));
        *listening = true;
    }

    async fn current(&self, name: &str) -> Result<Option<Current>, sqlx::Error> {
        on_store!(self.store.db(), pool => {
            sqlx::query_as::<_, Current>(CURRENT).bind(name).fetch_optional(pool).await
        })
    }

    /// Why `token` cannot renew or release `name`.
    async fn not_held(&self, name: &str, token: FencingToken) -> LeaseError {
        match self.current(name).await {
            Ok(Some(_)) => LeaseError::NotHeld {
                name: name.to_owned(),
                token,
            },
            Ok(None) => LeaseError::Unknown(name.to_owned()),
            Err(e) => e.into(),
        }
    }
}

async fn listener(pool: &sqlx::PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Relays release notifications, listening on `own` (a pool of one), until every
/// [`StoreLeases`] sharing `waiters` is gone or the store's `pool` is closed. The listener re-makes a lost
/// connection itself; a release meanwhile may be missed, so a waiter of every name is woken
/// to look.
async fn relay_notifications(
    mut listener: sqlx::postgres::PgListener,
    own: sqlx::PgPool,
    pool: sqlx::PgPool,
    waiters: Weak<Waiters>,
) {
    let check = Duration::from_secs(1);
    loop {
        let notification = tokio::time::timeout(check, listener.try_recv()).await;
        let Some(waiters) = waiters.upgrade().filter(|_| !pool.is_closed()) else {
            drop(listener);
            own.close().await;
            return;
        };
        match notification {
            Err(_elapsed) => {}
            Ok(Ok(Some(n))) => match n.payload().split_once('/') {
                Some((sender, _)) if sender == waiters.sender => {}
                Some((_, name)) => waiters.wake(name),
                None => waiters.wake_all(),
            },
            Ok(Ok(None)) => waiters.wake_all(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease release notifications failed; listening again");
                waiters.wake_all();
                drop(waiters);
                tokio::time::sleep(check).await;
                match self::listener(&own).await {
                    Ok(again) => listener = again,
                    Err(e) => {
                        tracing::warn!(error = %e, "lease release notifications: cannot LISTEN; waiters poll")
                    }
                }
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct Current {
    holder: Option<String>,
    token: i64,
    expires_at_ms: i64,
}

impl LeaseBackend for StoreLeases {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>> {
        async move {
            let now_ms = ms(now);
            let ttl_ms = duration_ms(ttl);
            let expires_ms = now_ms.saturating_add(ttl_ms);
            // A release between the refused upsert and the look at the holder makes the lease
            // free again: try again. Under heavy contention it can change hands every time;
            // then it is reported held by whoever was seen last, as it was a moment ago.
            let mut seen = None;
            for _ in 0..5 {
                let granted: Option<i64> = on_store!(self.store.db(), pool => {
                    sqlx::query_scalar(ACQUIRE)
                        .bind(name)
                        .bind(holder)
                        .bind(ttl_ms)
                        .bind(now_ms)
                        .bind(expires_ms)
                        .fetch_optional(pool)
                        .await?
                });
                if let Some(token) = granted {
                    return Ok(Grant {
                        name: name.to_owned(),
                        holder: holder.to_owned(),
                        token: FencingToken::from_i64(token),
                        ttl_ms: u64::try_from(ttl_ms).unwrap_or(0),
                        expires_at: from_ms(expires_ms)?,
                    });
                }
                let current = self.current(name).await?;
                if let Some(Current {
                    holder: Some(current),
                    token,
                    expires_at_ms,
                }) = &current
                    && *expires_at_ms > now_ms
                {
                    return Err(LeaseError::Held {
                        name: name.to_owned(),
                        holder: current.clone(),
                        token: FencingToken::from_i64(*token),
                        expires_at: from_ms(*expires_at_ms)?,
                    });
                }
                seen = current;
            }
            Err(LeaseError::Held {
                name: name.to_owned(),
                holder: seen
                    .as_ref()
                    .and_then(|c| c.holder.clone())
                    .unwrap_or_else(|| "(changing hands)".to_owned()),
                token: FencingToken::from_i64(seen.as_ref().map_or(0, |c| c.token)),
                expires_at: now,
            })
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: FencingToken,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>> {
        async move {
            let Some(token_i64) = token.as_i64() else {
                return Err(LeaseError::NotHeld {
                    name: name.to_owned(),
                    token,
                });
            };
            let now_ms = ms(now);
            let ttl_ms = duration_ms(ttl);
            let expires_ms = now_ms.saturating_add(ttl_ms);
            let holder: Option<Option<String>> = on_store!(self.store.db(), pool => {
                sqlx::query_scalar(RENEW)
                    .bind(name)
                    .bind(token_i64)
                    .bind(ttl_ms)
                    .bind(now_ms)
                    .bind(expires_ms)
                    .fetch_optional(pool)
                    .await?
            });
            match holder {
                Some(holder) => Ok(Grant {
                    name: name.to_owned(),
                    holder: holder.unwrap_or_default(),
                    token,
                    ttl_ms: u64::try_from(ttl_ms).unwrap_or(0),
                    expires_at: from_ms(expires_ms)?,
                }),
                None => Err(self.not_held(name, token).await),
            }
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        token: FencingToken,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        async move {
            let Some(token_i64) = token.as_i64() else {
                return Err(self.not_held(name, token).await);
            };
            let released = match self.store.db() {
                Db::Postgres(pool) => sqlx::query(RELEASE_AND_NOTIFY)
                    .bind(name)
                    .bind(token_i64)
                    .bind(ms(now))
                    .bind(&self.waiters.sender)
                    .fetch_all(pool)
                    .await?
                    .len() as u64,
                Db::Sqlite(store) => sqlx::query(RELEASE)
                    .bind(name)
                    .bind(token_i64)
                    .bind(ms(now))
                    .execute(store.writer())
                    .await?
                    .rows_affected(),
            };
            if released == 1 {
                self.waiters.wake(name);
                Ok(())
            } else {
                Err(self.not_held(name, token).await)
            }
        }
        .boxed()
    }

    fn release_signal<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Arc<ReleaseSignal>>> {
        async move {
            self.listen().await;
            Some(self.waiters.signal(name))
        }
        .boxed()
    }

    fn list(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<Vec<LeaseInfo>, LeaseError>> {
        async move {
            let now_ms = ms(now);
            let rows: Vec<(String, Option<String>, i64, i64)> = on_store!(read self.store.db(), pool => {
                sqlx::query_as(LIST).fetch_all(pool).await?
            });
            rows.into_iter()
                .map(|(name, holder, token, expires_at_ms)| {
                    Ok(LeaseInfo {
                        name,
                        holder: holder.filter(|_| expires_at_ms > now_ms),
                        token: FencingToken::from_i64(token),
                        expires_at: Some(from_ms(expires_at_ms)?),
                    })
                })
                .collect()
        }
        .boxed()
    }
}
