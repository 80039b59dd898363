//! Limits kept in this process: sharded maps of per-key state, with idle keys forgotten as the
//! limiter is used.

use std::cell::Cell as ThreadCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use onephase_core::{SharedClock, SystemClock};

use crate::algorithm::{State, decide};
use crate::{Decision, LimitError, Policy};

/// How many shards a local limiter splits its keys over.
const SHARDS: usize = 64;
/// Every this many checks a thread makes, it sweeps the shard it is on.
const SWEEP_EVERY: u32 = 4096;
/// Every this many checks a thread makes, it sweeps another shard, in turn, so that shards no
/// key in use lands on let their idle keys go too.
const ROUND_ROBIN_EVERY: u32 = 1024;

/// Keys are hashed once (SipHash with a random key, so clients cannot aim collisions): the
/// hash picks the shard and is the shard map's key, with the few colliding keys side by side.
type Slots = HashMap<u64, Vec<(Box<str>, Cell)>, BuildHasherDefault<Prehashed>>;

/// One key's state. GCRA's is one timestamp, updated by compare-and-swap under the shard's
/// read lock, so checks of one key from several threads do not queue on a lock; the other
/// algorithms' state is behind a mutex of its own.
enum Cell {
    Gcra(AtomicI64),
    Other(Mutex<State>),
}

impl Cell {
    fn new(state: State) -> Self {
        match state {
            State::Gcra { tat } => Self::Gcra(AtomicI64::new(tat)),
            other => Self::Other(Mutex::new(other)),
        }
    }

    fn idle_from(&self, policy: &Policy) -> i64 {
        match self {
            Self::Gcra(tat) => tat.load(Ordering::Relaxed),
            Self::Other(state) => state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .idle_from(policy),
        }
    }

    fn decide(&self, policy: &Policy, now: i64, cost: u64) -> Decision {
        match self {
            Self::Gcra(tat) => {
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    let mut state = State::Gcra { tat: current };
                    let decision = decide(policy, &mut state, now, cost);
                    let State::Gcra { tat: new } = state else {
                        return decision;
                    };
                    if !decision.allowed || new == current {
                        return decision;
                    }
                    match tat.compare_exchange_weak(
                        current,
                        new,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return decision,
                        Err(seen) => current = seen,
                    }
                }
            }
            Self::Other(state) => decide(
                policy,
                &mut state.lock().unwrap_or_else(|p| p.into_inner()),
                now,
                cost,
            ),
        }
    }
}

thread_local! {
    /// Checks this thread has made, for its sweeps.
    static CHECKS: ThreadCell<u32> = const { ThreadCell::new(0) };
}

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
struct Padded(RwLock<Shard>);

impl Padded {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shard> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shard> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Shard {
    keys: Slots,
    len: usize,
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
            slot.retain(|(_, cell)| cell.idle_from(policy).saturating_add(grace) > now);
            !slot.is_empty()
        });
        self.len = self.keys.values().map(Vec::len).sum();
        self.swept_len = self.len;
    }
}

/// A keyed limiter in this process.
///
/// Keys are spread over 64 shards, each behind a read-write lock that a check of a known key
/// takes for reading, so checks on different keys, and GCRA checks on one key, do not wait for
/// each other: GCRA's state is one timestamp updated by compare-and-swap; the other
/// algorithms' state has a mutex per key. A key whose state has been back to fresh (its window
/// passed, its bucket refilled) for the policy's period, or a second if that is shorter, is
/// dropped by a sweep: every 4,096 checks a thread sweeps the shard it is on, every 1,024 it
/// sweeps another shard in turn, and a shard that has doubled since its last sweep is swept
/// when a key is added. Memory follows the keys in use, with no maintenance call.
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
    /// The next shard a round-robin sweep visits.
    turn: AtomicUsize,
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
                .map(|_| Padded(RwLock::new(Shard::default())))
                .collect(),
            turn: AtomicUsize::new(0),
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
        let shard = &self.shards[index];
        let checks = CHECKS.with(|checks| {
            let n = checks.get().wrapping_add(1);
            checks.set(n);
            n
        });
        if checks.is_multiple_of(ROUND_ROBIN_EVERY) {
            if checks.is_multiple_of(SWEEP_EVERY) {
                shard.write().sweep(&self.policy, now);
            }
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) % SHARDS;
            if let Ok(mut other) = self.shards[turn].0.try_write() {
                other.sweep(&self.policy, now);
            }
        }
        // A known key: the read lock, shared with every other check on the shard.
        {
            let keys = shard.read();
            if let Some((_, cell)) = keys
                .keys
                .get(&hash)
                .and_then(|slot| slot.iter().find(|(k, _)| &**k == key))
            {
                return Ok(cell.decide(&self.policy, now, cost));
            }
        }
        // A new key (or one swept meanwhile): the write lock.
        let mut keys = shard.write();
        if keys.len > 2 * keys.swept_len.max(64) {
            keys.sweep(&self.policy, now);
        }
        let slot = keys.keys.entry(hash).or_default();
        if let Some((_, cell)) = slot.iter().find(|(k, _)| &**k == key) {
            return Ok(cell.decide(&self.policy, now, cost));
        }
        let mut state = State::fresh(self.policy.algorithm());
        let decision = decide(&self.policy, &mut state, now, cost);
        if decision.allowed {
            slot.push((key.into(), Cell::new(state)));
            keys.len += 1;
        } else if slot.is_empty() {
            keys.keys.remove(&hash);
        }
        Ok(decision)
    }

    /// Keys held now (including idle ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len).sum()
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
