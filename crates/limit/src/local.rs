//! Limits kept in this process: sharded maps of per-key state, with idle keys forgotten as the
//! limiter is used.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use onephase_core::{SharedClock, SystemClock};

use crate::algorithm::{State, decide};
use crate::{Decision, LimitError, Policy};

/// How many shards a local limiter splits its keys over.
const SHARDS: usize = 64;
/// Every this many checks on a shard, its idle keys are dropped.
const SWEEP_EVERY: u32 = 1024;

struct Shard {
    keys: HashMap<String, State>,
    checks: u32,
    /// The shard's size after its last sweep: a sweep also runs when it doubles.
    swept_len: usize,
}

impl Shard {
    fn sweep(&mut self, policy: &Policy, now: i64) {
        self.keys.retain(|_, state| state.idle_from(policy) > now);
        self.checks = 0;
        self.swept_len = self.keys.len();
    }
}

/// Every this many checks on the limiter, one shard (in turn) is swept as well.
const ROUND_ROBIN_EVERY: usize = 256;

/// A keyed limiter in this process.
///
/// Keys are spread over 64 shards, each behind its own lock, so checks on different keys
/// rarely wait for each other. A key whose state is back to fresh (its window has passed, its
/// bucket refilled) is dropped by the next sweep of its shard, which runs every 1,024 checks
/// on the shard or when the shard has doubled since the last sweep, and every shard in turn
/// is swept every 256 checks on the limiter: memory follows the keys in use, with no
/// maintenance call.
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
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: SharedClock,
    base: Instant,
    /// Checks made, to sweep a shard no one is using every so often.
    checks: AtomicUsize,
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
                    Mutex::new(Shard {
                        keys: HashMap::new(),
                        checks: 0,
                        swept_len: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            clock,
            base,
            checks: AtomicUsize::new(0),
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
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        // Every so often, also sweep a shard in turn, so that shards no key in use lands on
        // let their idle keys go too.
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(ROUND_ROBIN_EVERY) {
            let turn = (n / ROUND_ROBIN_EVERY) % SHARDS;
            if turn != index
                && let Ok(mut other) = self.shards[turn].try_lock()
            {
                other.sweep(&self.policy, now);
            }
        }
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.checks += 1;
        if shard.checks >= SWEEP_EVERY || shard.keys.len() > 2 * shard.swept_len.max(64) {
            shard.sweep(&self.policy, now);
        }
        let decision = match shard.keys.get_mut(key) {
            Some(state) => decide(&self.policy, state, now, cost),
            None => {
                let mut state = State::fresh(self.policy.algorithm());
                let decision = decide(&self.policy, &mut state, now, cost);
                if decision.allowed {
                    shard.keys.insert(key.to_owned(), state);
                }
                decision
            }
        };
        Ok(decision)
    }

    /// Keys held now (including idle ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).keys.len())
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
