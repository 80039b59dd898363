//! Limits kept in this process: sharded maps of per-key state, with idle keys forgotten as the
//! limiter is used.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

use onephase_core::{SharedClock, SystemClock};

use crate::algorithm::{State, decide};
use crate::{Decision, LimitError, Policy};

/// How many shards a local limiter splits its keys over.
const SHARDS: usize = 64;
/// Every this many checks on a shard, its idle keys are dropped.
const SWEEP_EVERY: u32 = 4096;
/// Every this many checks on a shard, it also sweeps another shard (in turn), so that shards
/// no key in use lands on let their idle keys go too.
const ROUND_ROBIN_EVERY: u32 = 1024;

/// Keys are hashed once (SipHash with a random key, so clients cannot aim collisions): the
/// hash picks the shard and is the shard map's key, with the few colliding keys side by side.
type Slots = HashMap<u64, Vec<(Box<str>, State)>, BuildHasherDefault<Prehashed>>;

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A shard on cache lines of its own, so that threads working on neighbouring shards do not
/// invalidate each other's lines (false sharing halved throughput on two threads).
#[repr(align(128))]
struct Padded(Mutex<Shard>);

struct Shard {
    keys: Slots,
    len: usize,
    checks: u32,
    turn: usize,
    /// The shard's size after its last sweep: a sweep also runs when it doubles.
    swept_len: usize,
}

impl Shard {
    fn sweep(&mut self, policy: &Policy, now: i64) {
        // A key stays for a grace period after its state is back to fresh (the policy's
        // period, at most a second), so that a key checked again soon is not dropped and
        // allocated anew each time.
        let grace = policy.period_us().min(1_000_000);
        self.keys.retain(|_, slot| {
            slot.retain(|(_, state)| state.idle_from(policy).saturating_add(grace) > now);
            !slot.is_empty()
        });
        self.len = self.keys.values().map(Vec::len).sum();
        self.checks = 0;
        self.swept_len = self.len;
    }
}

/// A keyed limiter in this process.
///
/// Keys are spread over 64 shards, each behind its own lock, so checks on different keys
/// rarely wait for each other. A key whose state has been back to fresh (its window passed,
/// its bucket refilled) for the policy's period, or a second if that is shorter, is dropped by
/// the next sweep of its shard, which runs every 4,096 checks
/// on the shard or when the shard has doubled since the last sweep, and every 1,024 checks a
/// shard also sweeps the next one in turn: memory follows the keys in use, with no maintenance
/// call.
///
/// ```
/// use std::time::Duration;
/// use onephase_limit::{Algorithm, LocalLimiter, Policy};
///
/// let policy = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(1))?;
/// let limiter = LocalLimiter::new(policy);
/// let first = limiter.check("client-7", 1)?;
/// assert!(first.allowed);
/// assert_eq!(first.remaining, 9);
/// # Ok::<(), onephase_limit::LimitError>(())
/// ```
pub struct LocalLimiter {
    policy: Policy,
    shards: Box<[Padded]>,
    hasher: RandomState,
    clock: SharedClock,
    base: Instant,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("policy", &self.policy)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl LocalLimiter {
    /// A limiter for `policy`, on the system clock.
    pub fn new(policy: Policy) -> Self {
        Self::with_clock(policy, std::sync::Arc::new(SystemClock))
    }

    /// A limiter for `policy` reading time from `clock` (its monotonic reading).
    pub fn with_clock(policy: Policy, clock: SharedClock) -> Self {
        let base = clock.monotonic();
        Self {
            policy,
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        keys: Slots::default(),
                        len: 0,
                        checks: 0,
                        turn: 0,
                        swept_len: 0,
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
            clock,
            base,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks `cost` units for `key`: admitted and counted, or refused and not counted.
    pub fn check(&self, key: &str, cost: u64) -> Result<Decision, LimitError> {
        self.policy.check_cost(cost)?;
        let now = self.now_us();
        let hash = self.hasher.hash_one(key);
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        let mut shard = self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.checks += 1;
        if shard.checks >= SWEEP_EVERY || shard.len > 2 * shard.swept_len.max(64) {
            shard.sweep(&self.policy, now);
        }
        let other = shard.checks.is_multiple_of(ROUND_ROBIN_EVERY).then(|| {
            shard.turn = shard.turn % (SHARDS - 1) + 1;
            (index + shard.turn) % SHARDS
        });
        let slot = shard.keys.entry(hash).or_default();
        let decision = match slot.iter_mut().find(|(k, _)| &**k == key) {
            Some((_, state)) => decide(&self.policy, state, now, cost),
            None => {
                let mut state = State::fresh(self.policy.algorithm());
                let decision = decide(&self.policy, &mut state, now, cost);
                if decision.allowed {
                    slot.push((key.into(), state));
                    shard.len += 1;
                } else if slot.is_empty() {
                    shard.keys.remove(&hash);
                }
                decision
            }
        };
        drop(shard);
        if let Some(turn) = other
            && let Ok(mut other) = self.shards[turn].0.try_lock()
        {
            other.sweep(&self.policy, now);
        }
        Ok(decision)
    }

    /// Keys held now (including idle ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|p| p.into_inner()).len)
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_us(&self) -> i64 {
        // Offset so that fixed windows do not all start at the limiter's creation.
        let since = self.clock.monotonic().saturating_duration_since(self.base);
        i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
    }
}
