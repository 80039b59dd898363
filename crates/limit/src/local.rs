//! Limits kept in this process: sharded maps of per-key state, with idle keys forgotten as the
//! limiter is used.

use std::cell::Cell as ThreadCell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use onephase_core::SharedClock;

use crate::algorithm::{State, decide, decide_gcra};
use crate::{Algorithm, Decision, LimitError, Policy};

/// How many shards a local limiter splits its keys over.
const SHARDS: usize = 64;
/// Every this many checks a thread makes, it may sweep the shard it is on.
const SWEEP_EVERY: u32 = 4096;
/// Every this many checks a thread makes, it may sweep another shard, in turn, so that shards
/// no key in use lands on let their idle keys go too.
const ROUND_ROBIN_EVERY: u32 = 1024;

/// One key in a shard's table. Keys are hashed once per check (SipHash with a random key, so
/// clients cannot aim collisions): the hash picks the shard and the table's bucket. The entry
/// sits in the bucket itself and a short key's text in the entry, so a check of a key that is
/// not in the CPU's cache waits for one load, not three (bucket, list of the keys with that
/// hash, key text: those loads were more than half of a 100,000-key run's time). An entry is
/// 32 bytes on a 32-byte boundary, so it never straddles two cache lines.
#[repr(align(32))]
struct Entry<C> {
    key: Key,
    cell: C,
}

// Two entries per cache line, whatever the algorithm: a longer key kept in place or a larger
// state would round an entry up to 64 bytes, one per line.
const _: () = assert!(
    size_of::<Entry<Tat>>() == 32 && size_of::<Entry<Locked>>() == 32,
    "a shard's entry must stay 32 bytes"
);

/// Longest key kept inside its entry: an IPv4 address, a user id, a short API key.
const SHORT_KEY: usize = 22;

/// A key's text: in place when short, else on the heap.
enum Key {
    Short(u8, [u8; SHORT_KEY]),
    Long(Box<str>),
}

/// A key's text for hashing, as `str` hashes (its bytes, then a terminator, without the
/// length prefix a byte slice writes), whether it came from the caller or from an [`Entry`].
struct Text<'a>(&'a [u8]);

impl std::hash::Hash for Text<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.0);
        state.write_u8(0xff);
    }
}

impl Key {
    fn new(key: &str) -> Self {
        let bytes = key.as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= SHORT_KEY => {
                let mut text = [0; SHORT_KEY];
                text[..bytes.len()].copy_from_slice(bytes);
                Self::Short(len, text)
            }
            _ => Self::Long(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Short(len, text) => &text[..usize::from(*len)],
            Self::Long(text) => text.as_bytes(),
        }
    }
}

/// One key's state, of the one algorithm the limiter's policy names: every entry of a limiter
/// holds the same kind, so none pays for a tag or for the largest kind.
trait Cell: Sized {
    /// The state of a key nothing has been counted against.
    fn fresh(policy: &Policy) -> Self;
    /// From when on the state is the same as a fresh one (so the key can be forgotten).
    fn idle_from(&self, policy: &Policy) -> i64;
    /// Decides `cost` units at `now`, counting them only if admitted.
    fn decide(&self, policy: &Policy, now: i64, cost: u64) -> Decision;
}

/// GCRA's state: one timestamp, updated by compare-and-swap under the shard's read lock, so
/// checks of one key from several threads do not queue on a lock.
struct Tat(AtomicI64);

impl Cell for Tat {
    fn fresh(_: &Policy) -> Self {
        Self(AtomicI64::new(i64::MIN))
    }

    fn idle_from(&self, _: &Policy) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    fn decide(&self, policy: &Policy, now: i64, cost: u64) -> Decision {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let mut new = current;
            let decision = decide_gcra(policy, &mut new, now, cost);
            if !decision.allowed || new == current {
                return decision;
            }
            match self
                .0
                .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return decision,
                Err(seen) => current = seen,
            }
        }
    }
}

/// The other algorithms' state, behind a mutex of its own, boxed so that the entry stays as
/// small as a GCRA one.
struct Locked(Box<Mutex<State>>);

impl Locked {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cell for Locked {
    fn fresh(policy: &Policy) -> Self {
        Self(Box::new(Mutex::new(State::fresh(policy.algorithm()))))
    }

    fn idle_from(&self, policy: &Policy) -> i64 {
        self.state().idle_from(policy)
    }

    fn decide(&self, policy: &Policy, now: i64, cost: u64) -> Decision {
        decide(policy, &mut self.state(), now, cost)
    }
}

thread_local! {
    /// Checks this thread has made, for its sweeps.
    static CHECKS: ThreadCell<u32> = const { ThreadCell::new(0) };
}

/// A shard on cache lines of its own, so that threads working on neighbouring shards do not
/// invalidate each other's lines (false sharing halved throughput on two threads), with the
/// time of its last sweep outside the lock, so that a check can see no sweep is due without
/// taking it.
#[repr(align(128))]
struct Padded<C>(RwLock<Shard<C>>, AtomicI64);

impl<C: Cell> Padded<C> {
    fn new() -> Self {
        Self(
            RwLock::new(Shard {
                keys: hashbrown::HashTable::new(),
                swept_len: 0,
            }),
            AtomicI64::new(0),
        )
    }

    /// Sweeps the shard if its last sweep is at least `every` µs old and nobody holds it.
    fn sweep_if_due(&self, policy: &Policy, now: i64, every: i64) {
        let last = self.1.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every {
            return;
        }
        if self
            .1
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && let Ok(mut shard) = self.0.try_write()
        {
            shard.sweep(policy, now);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shard<C>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shard<C>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

struct Shard<C> {
    keys: hashbrown::HashTable<Entry<C>>,
    /// The shard's size after its last sweep: a sweep also runs when it doubles.
    swept_len: usize,
}

impl<C: Cell> Shard<C> {
    fn sweep(&mut self, policy: &Policy, now: i64) {
        let grace = grace(policy);
        self.keys
            .retain(|entry| entry.cell.idle_from(policy).saturating_add(grace) > now);
        self.swept_len = self.keys.len();
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
/// sweeps another shard in turn, each shard at most once per that grace period (a sweep
/// sooner could find nothing new to drop, and with 100,000 keys sweeping on every turn cost
/// more than the checks), and a shard that has doubled since its last sweep is swept when a
/// key is added. Memory follows the keys in use, with no maintenance call: an idle key is
/// gone within about two grace periods while the limiter is used.
///
/// Time is the system's monotonic clock read through `quanta` (the TSC where it is
/// invariant), or the clock given to [`with_clock`](Self::with_clock).
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
    shards: Shards,
    /// The next shard a round-robin sweep visits.
    turn: AtomicUsize,
    hasher: RandomState,
    clock: Time,
    /// How old a shard's last sweep must be before it is swept again, in µs: the grace
    /// period, since no key can have become forgettable sooner.
    sweep_every: i64,
}

/// The shards, typed by the policy's algorithm.
enum Shards {
    Gcra(Box<[Padded<Tat>]>),
    Other(Box<[Padded<Locked>]>),
}

impl Shards {
    fn new(policy: &Policy) -> Self {
        fn all<C: Cell>() -> Box<[Padded<C>]> {
            (0..SHARDS).map(|_| Padded::new()).collect()
        }
        match policy.algorithm() {
            Algorithm::Gcra => Self::Gcra(all()),
            _ => Self::Other(all()),
        }
    }
}

/// Where the limiter reads the time.
enum Time {
    /// The system's monotonic time through `quanta` (the TSC where it is invariant, else the
    /// OS's monotonic clock), from the raw reading at creation.
    System(quanta::Clock, u64),
    /// A clock given as an input (tests, the lab), from its reading at creation.
    Given(SharedClock, Instant),
}

impl Time {
    /// Microseconds since the limiter was created.
    fn now_us(&self) -> i64 {
        match self {
            Self::System(clock, base) => {
                i64::try_from(clock.delta_as_nanos(*base, clock.raw()) / 1_000).unwrap_or(i64::MAX)
            }
            Self::Given(clock, base) => {
                let since = clock.monotonic().saturating_duration_since(*base);
                i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
            }
        }
    }
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
    /// A limiter for `policy`, on the system's monotonic clock.
    pub fn new(policy: Policy) -> Self {
        let clock = quanta::Clock::new();
        let base = clock.raw();
        Self::on(policy, Time::System(clock, base))
    }

    /// A limiter for `policy` reading time from `clock` (its monotonic reading).
    pub fn with_clock(policy: Policy, clock: SharedClock) -> Self {
        let base = clock.monotonic();
        Self::on(policy, Time::Given(clock, base))
    }

    fn on(policy: Policy, clock: Time) -> Self {
        Self {
            policy,
            shards: Shards::new(&policy),
            turn: AtomicUsize::new(0),
            hasher: RandomState::new(),
            clock,
            sweep_every: grace(&policy),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks `cost` units for `key`: admitted and counted, or refused and not counted.
    pub fn check(&self, key: &str, cost: u64) -> Result<Decision, LimitError> {
        self.policy.check_cost(cost)?;
        let now = self.clock.now_us();
        let hash = self.hasher.hash_one(Text(key.as_bytes()));
        // The shard from bits the table does not use: its bucket comes from the low bits and
        // its tag from the top seven, and a shard picked by the low bits left every table
        // with one 64th of its buckets to start probing from.
        let index = usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0);
        Ok(match &self.shards {
            Shards::Gcra(shards) => self.check_in(shards, index, hash, key, now, cost),
            Shards::Other(shards) => self.check_in(shards, index, hash, key, now, cost),
        })
    }

    #[inline]
    fn check_in<C: Cell>(
        &self,
        shards: &[Padded<C>],
        index: usize,
        hash: u64,
        key: &str,
        now: i64,
        cost: u64,
    ) -> Decision {
        let shard = &shards[index];
        let checks = CHECKS.with(|checks| {
            let n = checks.get().wrapping_add(1);
            checks.set(n);
            n
        });
        if checks.is_multiple_of(ROUND_ROBIN_EVERY) {
            if checks.is_multiple_of(SWEEP_EVERY) {
                shard.sweep_if_due(&self.policy, now, self.sweep_every);
            }
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shards[turn].sweep_if_due(&self.policy, now, self.sweep_every);
        }
        let same = |entry: &Entry<C>| entry.key.as_bytes() == key.as_bytes();
        // A known key: the read lock, shared with every other check on the shard.
        if let Some(entry) = shard.read().keys.find(hash, same) {
            return entry.cell.decide(&self.policy, now, cost);
        }
        // A new key (or one swept meanwhile): the write lock.
        let mut keys = shard.write();
        if keys.keys.len() > 2 * keys.swept_len.max(64) {
            keys.sweep(&self.policy, now);
            shard.1.store(now, Ordering::Relaxed);
        }
        if let Some(entry) = keys.keys.find(hash, same) {
            return entry.cell.decide(&self.policy, now, cost);
        }
        let cell = C::fresh(&self.policy);
        let decision = cell.decide(&self.policy, now, cost);
        if decision.allowed {
            let entry = Entry {
                key: Key::new(key),
                cell,
            };
            // Growing the table hashes its keys again (rarely: it doubles), which keeps every
            // entry 8 bytes smaller than storing the hash would.
            let hasher = &self.hasher;
            keys.keys.insert_unique(hash, entry, |entry| {
                hasher.hash_one(Text(entry.key.as_bytes()))
            });
        }
        decision
    }

    /// Keys held now (including idle ones not yet swept).
    pub fn len(&self) -> usize {
        match &self.shards {
            Shards::Gcra(shards) => shards.iter().map(|s| s.read().keys.len()).sum(),
            Shards::Other(shards) => shards.iter().map(|s| s.read().keys.len()).sum(),
        }
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a key stays after its state is back to fresh: the policy's period, at most a
/// second, so that a key checked again soon is not dropped and allocated anew each time.
fn grace(policy: &Policy) -> i64 {
    policy.period_us().min(1_000_000)
}
