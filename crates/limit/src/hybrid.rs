//! Local decisions against a shared limit: each node leases allowance from the shared store in
//! chunks and spends it in process.
//!
//! A check that finds enough leased units for its key takes them under a shard lock, without
//! a round trip. When fewer than half a chunk is left, a background task leases the next chunk
//! (a check of `chunk` units, so the shared store counts them the moment they are leased), so
//! that a busy key does not stall on the round trip; a check that finds too few units waits
//! for the one lease in flight per key, or makes it. A refusal is remembered until its
//! `retry_after`, so a refused key costs no round trip either.
//!
//! # The bound
//!
//! Every unit admitted was counted by the shared store when it was leased, and a node holds
//! fewer than `chunk + chunk / 2` unspent units of a key at any moment (or fewer than the
//! cost of one check, if that is larger). So in any interval, the units admitted by `N` nodes
//! are at most what the shared policy admits in that interval plus
//! `N × (chunk + ⌊(chunk − 1) / 2⌋)`: the over-admission is bounded by the leases outstanding
//! when the interval began, whatever the algorithm. Leases lapse after `lease_ttl` unspent, so
//! old allowance is not spent late. The price is under-admission: units leased and not spent
//! before they lapse (at most that many per node and key per `lease_ttl`) are lost to everyone
//! until the shared policy forgets them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};

use crate::{Decision, LimitError, Limiter, Policy};

const SHARDS: usize = 64;
/// Every this many checks on a shard, its lapsed entries are dropped.
const SWEEP_EVERY: u32 = 4096;

#[repr(align(128))]
struct Padded(Mutex<Shard>);

#[derive(Default)]
struct Shard {
    keys: HashMap<Box<str>, Allowance>,
    checks: u32,
}

impl Shard {
    /// `key`'s allowance, made if it has none (it may have been swept while waiting).
    /// Only on the leasing path, where a round trip dwarfs copying the key.
    fn allowance(&mut self, key: &str, now: Instant) -> &mut Allowance {
        self.keys
            .entry(key.into())
            .or_insert_with(|| Allowance::new(now))
    }
}

struct Allowance {
    /// Leased units not yet spent.
    units: u64,
    /// When they lapse.
    lapses_at: Instant,
    /// When the shared state will be back to full, as of the last lease.
    reset_at: Instant,
    /// The shared limiter's last refusal: until when it stands, for costs from which on.
    refused: Option<(Instant, u64, Decision)>,
    /// Held by the one task leasing for this key.
    lease: Arc<tokio::sync::Mutex<()>>,
    /// Whether a lease ahead of need is in flight.
    prefetching: bool,
    /// No lease ahead of need before this (the shared limit refused one).
    quiet_until: Instant,
}

impl Allowance {
    fn new(now: Instant) -> Self {
        Self {
            units: 0,
            lapses_at: now,
            reset_at: now,
            refused: None,
            lease: Arc::new(tokio::sync::Mutex::new(())),
            prefetching: false,
            quiet_until: now,
        }
    }

    /// Whether to lease the next chunk now, ahead of need: fewer than half a chunk is left.
    fn wants_prefetch(&mut self, chunk: u64, now: Instant) -> bool {
        let wants =
            chunk > 1 && self.units * 2 < chunk && !self.prefetching && now >= self.quiet_until;
        if wants {
            self.prefetching = true;
        }
        wants
    }

    /// Spends `cost` leased units, or repeats a standing refusal, if either applies.
    fn local(&mut self, policy: &Policy, now: Instant, cost: u64) -> Option<Decision> {
        if now >= self.lapses_at {
            self.units = 0;
        }
        if self.units >= cost {
            self.units -= cost;
            return Some(Decision {
                allowed: true,
                limit: policy.limit(),
                remaining: self.units,
                reset_after: self.reset_at.saturating_duration_since(now),
                retry_after: None,
                fallback: None,
                decided_at_us: None,
            });
        }
        match &self.refused {
            Some((until, from, refusal)) if now < *until && cost >= *from => Some(Decision {
                retry_after: Some(until.saturating_duration_since(now)),
                reset_after: self.reset_at.saturating_duration_since(now),
                ..refusal.clone()
            }),
            _ => None,
        }
    }

    /// Whether nothing is held, nothing refused and nobody is leasing.
    fn idle(&self, now: Instant) -> bool {
        (self.units == 0 || now >= self.lapses_at)
            && self
                .refused
                .as_ref()
                .is_none_or(|(until, ..)| now >= *until)
            && Arc::strong_count(&self.lease) == 1
    }
}

/// A keyed limiter that decides in process against a shared limit, leasing allowance from a
/// shared [`Limiter`] (Redis, the database) in chunks.
///
/// Every admitted unit was counted by the shared store when it was leased, and a process holds
/// fewer than `chunk + chunk / 2` unspent units of a key (or fewer than one check's cost, if
/// larger). So `N` processes admit, in any interval, at most what the shared policy admits in
/// it plus `N × (chunk + ⌊(chunk − 1) / 2⌋)`. Unspent units lapse after `lease_ttl` and are
/// lost to everyone until the shared policy forgets them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use onephase_limit::{Algorithm, HybridLimiter, LocalLimiter, Policy};
///
/// // The shared limiter would be a RedisLimiter or a StoreLimiter; a local one shows the idea.
/// let policy = Policy::new(Algorithm::Gcra, 100, Duration::from_secs(1))?;
/// let shared = Arc::new(LocalLimiter::new(policy));
/// let limiter = HybridLimiter::new(shared, 10)?;
/// let first = limiter.check("tenant-1", 1).await?; // leases 10 units, spends 1
/// assert!(first.allowed);
/// assert_eq!(first.remaining, 9); // left in this process's lease
/// # Ok(()) }
/// ```
#[derive(Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct HybridLimiter {
    shared: Arc<dyn Limiter>,
    chunk: u64,
    lease_ttl: Duration,
    shards: Shards,
    /// The same limiter reading time from `clock` (its monotonic reading).
    #[setters(generate)]
    clock: SharedClock,
}

/// The per-key allowances, shared with the tasks leasing ahead of need.
#[derive(Clone)]
struct Shards {
    shards: Arc<[Padded]>,
    hasher: std::hash::RandomState,
}

impl Shards {
    fn of(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, key);
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for HybridLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridLimiter")
            .field("policy", self.shared.policy())
            .field("chunk", &self.chunk)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl HybridLimiter {
    /// Leases of `chunk` units (1 to the policy's burst) from `shared`, lapsing unspent after
    /// the policy's period or a second, whichever is shorter.
    pub fn new(shared: Arc<dyn Limiter>, chunk: u64) -> Result<Self, LimitError> {
        let policy = *shared.policy();
        if chunk == 0 || chunk > policy.burst() {
            return Err(LimitError::Invalid(format!(
                "chunk {chunk} is out of range: use 1 to the policy's burst ({})",
                policy.burst()
            )));
        }
        Ok(Self {
            shared,
            chunk,
            lease_ttl: policy.period().min(Duration::from_secs(1)),
            shards: Shards {
                shards: (0..SHARDS)
                    .map(|_| Padded(Mutex::new(Shard::default())))
                    .collect(),
                hasher: std::hash::RandomState::new(),
            },
            clock: Arc::new(SystemClock),
        })
    }

    /// The same limiter with leases lapsing unspent after `ttl` (at least 1 ms).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The policy (the shared limiter's).
    pub fn policy(&self) -> &Policy {
        self.shared.policy()
    }

    /// The lease size.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards.of(key)
    }

    /// Leases the next chunk for `key` in the background, so that the checks spending the
    /// last units do not wait for it.
    fn prefetch(&self, key: &str, lease: Arc<tokio::sync::Mutex<()>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Some(allowance) = self.shard(key).keys.get_mut(key) {
                allowance.prefetching = false;
            }
            return;
        };
        let (shared, shards, clock) = (
            Arc::clone(&self.shared),
            self.shards.clone(),
            Arc::clone(&self.clock),
        );
        let (chunk, ttl, key) = (self.chunk, self.lease_ttl, key.to_owned());
        runtime.spawn(async move {
            let _leasing = lease.lock().await;
            let wanted = shards
                .of(&key)
                .keys
                .get(&*key)
                .is_some_and(|a| a.units * 2 < chunk && clock.monotonic() < a.lapses_at);
            let decision = if wanted {
                Some(shared.check(&key, chunk).await)
            } else {
                None
            };
            let now = clock.monotonic();
            let mut shard = shards.of(&key);
            let Some(allowance) = shard.keys.get_mut(&*key) else {
                return;
            };
            allowance.prefetching = false;
            match decision {
                Some(Ok(d)) if d.allowed && d.fallback.is_none() => {
                    if now >= allowance.lapses_at {
                        allowance.units = 0;
                    }
                    allowance.units += chunk;
                    allowance.lapses_at = now + ttl;
                    allowance.reset_at = now + d.reset_after;
                }
                Some(Ok(d)) => {
                    allowance.quiet_until =
                        now + d.retry_after.unwrap_or(Duration::from_millis(100));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "rate-limit lease ahead of need failed");
                    allowance.quiet_until = now + Duration::from_millis(100);
                }
                None => {}
            }
        });
    }

    /// Checks `cost` units for `key`: from this process's lease when it has enough, otherwise
    /// after leasing more from the shared limiter. A decision the shared limiter's fallback
    /// made (its store unreachable) is passed on as it is.
    pub async fn check(&self, key: &str, cost: u64) -> Result<Decision, LimitError> {
        let policy = *self.policy();
        policy.check_cost(cost)?;
        let lease = {
            let now = self.clock.monotonic();
            let mut shard = self.shard(key);
            shard.checks += 1;
            if shard.checks >= SWEEP_EVERY {
                shard.checks = 0;
                shard.keys.retain(|_, a| !a.idle(now));
            }
            match shard.keys.get_mut(key) {
                Some(allowance) => {
                    if let Some(decision) = allowance.local(&policy, now, cost) {
                        if decision.allowed && allowance.wants_prefetch(self.chunk, now) {
                            let lease = Arc::clone(&allowance.lease);
                            drop(shard);
                            self.prefetch(key, lease);
                        }
                        return Ok(decision);
                    }
                    Arc::clone(&allowance.lease)
                }
                None => {
                    let allowance = Allowance::new(now);
                    let lease = Arc::clone(&allowance.lease);
                    shard.keys.insert(key.into(), allowance);
                    lease
                }
            }
        };
        // One lease at a time per key; whoever waited may find it done.
        let _leasing = lease.lock().await;
        let leftover = {
            let now = self.clock.monotonic();
            let mut shard = self.shard(key);
            let allowance = shard.allowance(key, now);
            if let Some(decision) = allowance.local(&policy, now, cost) {
                return Ok(decision);
            }
            allowance.units
        };
        let need = cost - leftover;
        let mut decision = self.shared.check(key, self.chunk.max(need)).await?;
        let mut leased = self.chunk.max(need);
        if !decision.allowed && decision.fallback.is_none() && leased > need {
            // Not a whole chunk left: lease only what this check needs.
            decision = self.shared.check(key, need).await?;
            leased = need;
        }
        if decision.fallback.is_some() {
            return Ok(decision);
        }
        let now = self.clock.monotonic();
        let mut shard = self.shard(key);
        let allowance = shard.allowance(key, now);
        allowance.reset_at = now + decision.reset_after;
        if decision.allowed {
            allowance.units = leftover + leased - cost;
            allowance.lapses_at = now + self.lease_ttl;
            allowance.refused = None;
            Ok(Decision {
                remaining: allowance.units,
                decided_at_us: None,
                ..decision
            })
        } else {
            let until = now + decision.retry_after.unwrap_or_default();
            allowance.refused = Some((until, cost, decision.clone()));
            Ok(decision)
        }
    }

    /// Keys with a lease, a standing refusal or a lease in progress (including lapsed ones not
    /// yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|p| p.into_inner()).keys.len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
