//! Leases in etcd v3: an etcd lease for the expiry, a key attached to it for the holder, and
//! the key's creation revision as the fencing token.
//!
//! A grant is one transaction: create `<prefix><name>` under a fresh etcd lease if the key does
//! not exist. etcd's revision counter is global, only rises, is kept on disk and replicated by
//! Raft before a write is acknowledged, so the creation revision is larger than every earlier
//! grant's, across restarts and leader changes, as long as the cluster keeps its data (a
//! cluster restored from an old snapshot or rebuilt empty starts its revisions again: give a
//! restored cluster's resources new names, or raise their fences).
//!
//! etcd measures TTLs in whole seconds and may raise a short one to its minimum (about
//! 1.5 × the election timeout); a lease never lapses *earlier* than the TTL asked for, and the
//! holder's [`LeaseGuard`](crate::LeaseGuard) keeps the TTL it asked for, so its deadline is
//! never later than etcd's. Renewal is one keep-alive, which restores the TTL granted at
//! acquisition (etcd cannot change it). etcd forgets a name once its key is gone, so
//! renewing or releasing an unknown name reports [`LeaseError::NotHeld`].

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{FencingToken, Grant, LeaseBackend, LeaseError, LeaseInfo};

/// The key prefix unless told otherwise.
pub const DEFAULT_PREFIX: &str = "onephase/lease/";

/// Leases kept in etcd.
#[derive(Clone, derive_more::Debug)]
pub struct EtcdLeases {
    #[debug(skip)]
    client: Client,
    prefix: String,
    /// The etcd lease of each grant made here and not yet released, by name and token, so
    /// that a release is one revoke instead of a read and a revoke. Missing (another
    /// process's grant, or forgotten when full), a release reads the key first.
    #[debug(skip)]
    granted: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, i64), i64>>>,
}

/// Grants remembered for a one-call release, at most.
const REMEMBERED: usize = 4096;

/// What the key holds besides its lease.
#[derive(Serialize, Deserialize)]
struct Holder {
    holder: String,
    ttl_ms: u64,
}

impl EtcdLeases {
    /// Leases under [`DEFAULT_PREFIX`] through `client`.
    pub fn new(client: Client) -> Self {
        Self::with_prefix(client, DEFAULT_PREFIX)
    }

    /// Leases under the key prefix `prefix`.
    pub fn with_prefix(client: Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            granted: std::sync::Arc::default(),
        }
    }

    /// Connects to `endpoints` (`http://host:2379`, ...) with a 5 s request timeout, so that a
    /// lost cluster turns into an error before a holder's deadline rather than a hang.
    pub async fn connect(endpoints: &[String]) -> Result<Self, LeaseError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        Ok(Self::new(Client::connect(endpoints, Some(options)).await?))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The key's holder, token and etcd lease, if it exists.
    async fn current(&self, name: &str) -> Result<Option<(Holder, i64, i64)>, LeaseError> {
        let mut client = self.client.clone();
        let response = client.get(self.key(name), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let holder = serde_json::from_slice(kv.value()).unwrap_or(Holder {
            holder: String::from_utf8_lossy(kv.value()).into_owned(),
            ttl_ms: 0,
        });
        Ok(Some((holder, kv.create_revision(), kv.lease())))
    }

    /// When etcd lease `id` lapses, from `now`, or `None` if it has.
    async fn expires_at(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, LeaseError> {
        let mut client = self.client.clone();
        let ttl = client.lease_time_to_live(id, None).await?.ttl();
        Ok((ttl > 0).then(|| now + time::Duration::seconds(ttl)))
    }

    /// One grant attempt; if the key vanished between the refusal and the look at its holder,
    /// up to `retries` more.
    fn acquire_once<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
        now: OffsetDateTime,
        retries: u8,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>> {
        async move {
            let mut client = self.client.clone();
            let lease = client.lease_grant(ttl_secs(ttl), None).await?.id();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let value = serde_json::to_vec(&Holder {
                holder: holder.to_owned(),
                ttl_ms,
            })
            .map_err(|e| LeaseError::Backend(format!("encoding the holder: {e}")))?;
            let key = self.key(name);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let response = client.txn(txn).await?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
                if granted.len() >= REMEMBERED {
                    granted.clear();
                }
                granted.insert((name.to_owned(), revision), lease);
                return Ok(Grant {
                    name: name.to_owned(),
                    holder: holder.to_owned(),
                    token: FencingToken::from_i64(revision),
                    ttl_ms,
                    expires_at: now + ttl,
                });
            }
            // Not ours: give the unused etcd lease back and say who holds the name.
            if let Err(e) = client.lease_revoke(lease).await {
                tracing::debug!(error = %e, "revoking an unused etcd lease failed; it lapses");
            }
            match self.current(name).await? {
                Some((current, token, id)) => Err(LeaseError::Held {
                    name: name.to_owned(),
                    holder: current.holder,
                    token: FencingToken::from_i64(token),
                    expires_at: self.expires_at(id, now).await?.unwrap_or(now),
                }),
                // Lapsed or released in between: free again, so try again.
                None if retries > 0 => self.acquire_once(name, holder, ttl, now, retries - 1).await,
                None => Err(LeaseError::Held {
                    name: name.to_owned(),
                    holder: "(changing hands)".to_owned(),
                    token: FencingToken::new(0),
                    expires_at: now,
                }),
            }
        }
        .boxed()
    }
}

/// Whole seconds, rounded up, at least one.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

impl LeaseBackend for EtcdLeases {
    fn try_acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>> {
        self.acquire_once(name, holder, ttl, now, 5)
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        token: FencingToken,
        _ttl: Duration,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Grant, LeaseError>> {
        async move {
            let not_held = || LeaseError::NotHeld {
                name: name.to_owned(),
                token,
            };
            let Some((holder, revision, id)) = self.current(name).await? else {
                return Err(not_held());
            };
            if Some(revision) != token.as_i64() {
                return Err(not_held());
            }
            let mut client = self.client.clone();
            let (mut keeper, mut answers) = client.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            let ttl = match answers.message().await? {
                Some(answer) if answer.ttl() > 0 => answer.ttl(),
                _ => return Err(not_held()),
            };
            let granted = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
            let ttl_ms = if holder.ttl_ms > 0 {
                holder.ttl_ms
            } else {
                u64::try_from(granted.as_millis()).unwrap_or(u64::MAX)
            };
            Ok(Grant {
                name: name.to_owned(),
                holder: holder.holder,
                token,
                ttl_ms,
                expires_at: now + Duration::from_millis(ttl_ms),
            })
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        token: FencingToken,
        _now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        async move {
            let mine = token.as_i64().and_then(|token| {
                let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
                granted.remove(&(name.to_owned(), token))
            });
            if let Some(id) = mine {
                // The etcd lease is this grant's alone: revoking it deletes the grant's key if
                // it is still there, and nothing else. Not found: the grant has lapsed.
                let mut client = self.client.clone();
                return match client.lease_revoke(id).await {
                    Ok(_) => Ok(()),
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.message().contains("lease not found") =>
                    {
                        Err(LeaseError::NotHeld {
                            name: name.to_owned(),
                            token,
                        })
                    }
                    Err(e) => Err(e.into()),
                };
            }
            match self.current(name).await? {
                Some((_, revision, id)) if Some(revision) == token.as_i64() => {
                    // Revoking the etcd lease deletes the key with it; the lease is this
                    // grant's alone, so nothing else is touched.
                    let mut client = self.client.clone();
                    client.lease_revoke(id).await?;
                    Ok(())
                }
                _ => Err(LeaseError::NotHeld {
                    name: name.to_owned(),
                    token,
                }),
            }
        }
        .boxed()
    }

    fn list(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<Vec<LeaseInfo>, LeaseError>> {
        async move {
            let mut client = self.client.clone();
            let response = client
                .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await?;
            let mut leases = Vec::new();
            for kv in response.kvs() {
                let name = String::from_utf8_lossy(kv.key())
                    .trim_start_matches(self.prefix.as_str())
                    .to_owned();
                let holder: Option<Holder> = serde_json::from_slice(kv.value()).ok();
                let expires_at = self.expires_at(kv.lease(), now).await?;
                leases.push(LeaseInfo {
                    name,
                    holder: holder.map(|h| h.holder).filter(|_| expires_at.is_some()),
                    token: FencingToken::from_i64(kv.create_revision()),
                    expires_at,
                });
            }
            Ok(leases)
        }
        .boxed()
    }
}
