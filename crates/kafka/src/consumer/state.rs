//! State shared by the poll thread and the handler tasks: one entry per assigned partition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Message;
use crate::progress::PartitionProgress;

/// A topic and partition, as the runtime keys them.
pub(crate) type Tp = (Arc<str>, i32);

/// One assigned partition.
#[derive(Debug)]
pub(crate) struct Part {
    /// Which assignment this is: a task of an earlier one finds a different number and leaves.
    pub(crate) generation: u64,
    pub(crate) progress: PartitionProgress<Message>,
    /// Tasks started and not finished (waiting for a permit, running, or backing off).
    pub(crate) running: usize,
    pub(crate) revoking: bool,
    /// True while the partition is assigned and not being revoked: what a task checks before
    /// each attempt, without the lock.
    pub(crate) live: Arc<AtomicBool>,
    pub(crate) paused: bool,
    /// The offset last committed by this runtime.
    pub(crate) committed: Option<i64>,
    /// When the safe offset last moved (or the partition was assigned).
    pub(crate) moved_at: Instant,
    /// The log end offset from librdkafka's statistics.
    pub(crate) end: Option<i64>,
    /// The attempt the oldest unfinished message is on.
    pub(crate) oldest_attempt: u32,
}

impl Part {
    pub(crate) fn new(generation: u64, now: Instant) -> Self {
        Self {
            generation,
            progress: PartitionProgress::default(),
            running: 0,
            revoking: false,
            live: Arc::new(AtomicBool::new(true)),
            paused: false,
            committed: None,
            moved_at: now,
            end: None,
            oldest_attempt: 0,
        }
    }
}

/// Everything the poll thread and the tasks share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) parts: Mutex<HashMap<Tp, Part>>,
    /// Signalled whenever a task finishes, for a revoke waiting on running tasks.
    pub(crate) finished: Condvar,
    /// Set by a finishing task when a paused partition fell to half its capacity.
    pub(crate) resume_wanted: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) generation: AtomicU64,
    pub(crate) counters: Counters,
}

/// Totals since the runtime started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) rebalances: AtomicU64,
    pub(crate) revoked: AtomicU64,
    pub(crate) abandoned: AtomicU64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<Tp, Part>> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A partition's state as [`Consumer::health`](super::Consumer::health) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionHealth {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset the runtime will commit (every earlier message is done).
    pub safe_offset: Option<i64>,
    /// The log end offset, from librdkafka's statistics (about once a second).
    pub end: Option<i64>,
    /// Messages received and not done.
    pub in_flight: usize,
    /// Whether fetching is paused because `in_flight` reached the capacity.
    pub paused: bool,
    /// The oldest unfinished offset: the message holding the commit back.
    pub oldest_unfinished: Option<i64>,
    /// The attempt that message is on.
    pub oldest_attempt: u32,
    /// How long the safe offset has not moved, in milliseconds.
    pub unmoved_ms: u64,
    /// Work or lag is waiting and the safe offset has not moved for the configured
    /// `stuck_after`.
    pub stuck: bool,
}

/// The runtime's health: its partitions and totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerHealth {
    /// Assigned partitions, stuck first.
    pub partitions: Vec<PartitionHealth>,
    /// Messages whose handling finished (done or dead-lettered).
    pub handled: u64,
    /// Retries made.
    pub retried: u64,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Assignments and revocations of at least one partition received (the first assignment
    /// counts).
    pub rebalances: u64,
    /// Partitions taken from this member (revoked, lost, or given up when it stopped), counted
    /// once per revocation: each is a handover at which at most the partition's capacity of
    /// messages in flight can be handled again by the next owner.
    pub revoked: u64,
    /// Messages not handled because their partition was revoked first (the next owner reads
    /// them).
    pub abandoned: u64,
}

impl ConsumerHealth {
    pub(crate) fn read(shared: &Shared, now: Instant, stuck_after: Duration) -> Self {
        let parts = shared.lock();
        let mut partitions: Vec<PartitionHealth> = parts
            .iter()
            .map(|((topic, partition), part)| {
                let safe = part.progress.safe().or(part.committed);
                let waiting = part.progress.in_flight() > 0
                    || matches!((part.end, safe), (Some(end), Some(safe)) if end > safe);
                let unmoved = now.saturating_duration_since(part.moved_at);
                PartitionHealth {
                    topic: topic.to_string(),
                    partition: *partition,
                    safe_offset: safe,
                    end: part.end,
                    in_flight: part.progress.in_flight(),
                    paused: part.paused,
                    oldest_unfinished: part.progress.oldest_unfinished(),
                    oldest_attempt: part.oldest_attempt,
                    unmoved_ms: u64::try_from(unmoved.as_millis()).unwrap_or(u64::MAX),
                    stuck: waiting && unmoved >= stuck_after,
                }
            })
            .collect();
        drop(parts);
        partitions.sort_by(|a, b| {
            b.stuck
                .cmp(&a.stuck)
                .then_with(|| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)))
        });
        let c = &shared.counters;
        Self {
            partitions,
            handled: c.handled.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            rebalances: c.rebalances.load(Ordering::Relaxed),
            revoked: c.revoked.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }
}
