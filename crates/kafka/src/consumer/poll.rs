//! The poll loop, on a thread of its own: it only polls, hands messages to tasks, pauses and
//! resumes partitions, commits, and runs the rebalance callbacks (which may wait for tasks,
//! since no handler runs here).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use super::Message;
use super::state::{Part, Shared, Tp};
use super::work::Worker;
use crate::progress::Arrival;

/// The consumer's context: rebalance callbacks and statistics.
pub(crate) struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) drain_timeout: Duration,
    pub(crate) clock: onephase_core::SharedClock,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let mut parts = self.shared.lock();
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                let key: Tp = (Arc::from(topic.as_str()), *partition);
                if let Some(part) = parts.get_mut(&key)
                    && p.hi_offset >= 0
                {
                    part.end = Some(p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(%e, "committing offsets failed; they are committed again at the next round");
            let mut parts = self.shared.lock();
            for e in offsets.elements() {
                if let Some(part) = parts.get_mut(&(Arc::from(e.topic()), e.partition())) {
                    part.committed = None;
                }
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) = rebalance
            && tpl.count() > 0
        {
            self.shared
                .counters
                .rebalances
                .fetch_add(1, Ordering::Relaxed);
        }
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let tps: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (Arc::from(e.topic()), e.partition()))
                    .collect();
                tracing::info!(partitions = tps.len(), "partitions revoked: draining");
                self.shared.counters.revoked.fetch_add(
                    u64::try_from(tps.len()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                let lost = consumer.assignment_lost();
                revoke(
                    &self.shared,
                    consumer,
                    &tps,
                    self.drain_timeout,
                    lost,
                    &self.clock,
                );
            }
            Rebalance::Assign(tpl) => {
                let now = self.clock.monotonic();
                let mut parts = self.shared.lock();
                for e in tpl.elements() {
                    let generation = self.shared.next_generation();
                    parts.insert(
                        (Arc::from(e.topic()), e.partition()),
                        Part::new(generation, now),
                    );
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(%e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // librdkafka keeps a partition's pause across a revoke and a later assignment; a
        // partition this member paused, lost and got back would never be fetched again.
        if let Rebalance::Assign(tpl) = rebalance
            && tpl.count() > 0
            && let Err(e) = consumer.resume(tpl)
        {
            tracing::warn!(%e, "resuming newly assigned partitions failed");
        }
    }
}

/// Stops starting messages of `tps`, waits for their running tasks up to `drain`, commits what
/// is done (unless the assignment was lost, when the commit would be refused), and forgets them.
pub(crate) fn revoke(
    shared: &Shared,
    consumer: &BaseConsumer<Context>,
    tps: &[Tp],
    drain: Duration,
    lost: bool,
    clock: &onephase_core::SharedClock,
) {
    let deadline = clock.monotonic() + drain;
    let mut parts = shared.lock();
    for tp in tps {
        if let Some(part) = parts.get_mut(tp) {
            part.revoking = true;
            part.live.store(false, Ordering::Release);
            let dropped = part.progress.drop_queued();
            shared
                .counters
                .abandoned
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
    loop {
        let running: usize = tps
            .iter()
            .filter_map(|tp| parts.get(tp))
            .map(|p| p.running)
            .sum();
        let now = clock.monotonic();
        if running == 0 || now >= deadline {
            if running > 0 {
                tracing::warn!(
                    running,
                    "revoked partitions still have handlers running after the drain timeout; \
                     their messages will be read again by the next owner"
                );
            }
            break;
        }
        let (guard, _) = shared
            .finished
            .wait_timeout(parts, (deadline - now).min(Duration::from_millis(50)))
            .unwrap_or_else(|e| e.into_inner());
        parts = guard;
    }
    let mut tpl = TopicPartitionList::new();
    for tp in tps {
        if let Some(part) = parts.remove(tp)
            && let Some(safe) = part.progress.safe()
            && part.committed.is_none_or(|c| safe > c)
        {
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(safe));
        }
    }
    drop(parts);
    if tpl.count() > 0
        && !lost
        && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
    {
        tracing::warn!(%e, "committing revoked partitions failed; the next owner reads their done messages again");
    }
}

/// The poll loop. Returns when `shared.stop` is set, after draining and committing everything.
pub(crate) fn poll_loop(consumer: &BaseConsumer<Context>, worker: &Arc<Worker>) {
    let shared = &worker.shared;
    let config = &worker.config;
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut last_commit = worker.clock.monotonic();
    let mut burst = Vec::with_capacity(BURST);
    while !shared.stop.load(Ordering::Acquire) {
        // A burst: the first message waits up to the poll timeout, the rest only for what is
        // already fetched, so that one lock and one hand-off to the runtime serve many.
        let mut timeout = config.poll_timeout;
        while burst.len() < BURST {
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    let topic = topics
                        .entry(message.topic().to_owned())
                        .or_insert_with(|| Arc::from(message.topic()))
                        .clone();
                    burst.push(Message::from_borrowed(&message, topic));
                }
                Some(Err(e)) => tracing::warn!(%e, "Kafka consumer error"),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        if !burst.is_empty() {
            arrive(consumer, worker, &mut burst);
        }
        if shared.resume_wanted.swap(false, Ordering::AcqRel) {
            resume(consumer, worker);
        }
        let now = worker.clock.monotonic();
        if now.saturating_duration_since(last_commit) >= config.commit_interval {
            commit(consumer, shared, CommitMode::Async);
            last_commit = now;
        }
    }
    // Shutting down: everything assigned is revoked by us first, so that what is done is
    // committed before the consumer leaves the group.
    let all: Vec<Tp> = shared.lock().keys().cloned().collect();
    revoke(
        shared,
        consumer,
        &all,
        config.drain_timeout,
        false,
        &worker.clock,
    );
}

/// Messages polled in one go at most, before they are handed to the runtime.
const BURST: usize = 512;

/// Books a burst of messages in and hands those that can start to the runtime in one go.
fn arrive(consumer: &BaseConsumer<Context>, worker: &Arc<Worker>, burst: &mut Vec<Message>) {
    let mut start = Vec::with_capacity(burst.len());
    let mut parts = worker.shared.lock();
    for message in burst.drain(..) {
        let tp: Tp = (Arc::clone(&message.topic), message.partition);
        let Some(part) = parts.get_mut(&tp) else {
            continue;
        };
        if part.revoking {
            continue;
        }
        let generation = part.generation;
        let key = message.key.clone();
        if let Arrival::Start(message) =
            part.progress
                .arrive(message.offset, key.as_deref(), message)
        {
            part.running += 1;
            start.push((generation, Arc::clone(&part.live), message));
        }
        if !part.paused && part.progress.in_flight() >= worker.config.capacity_per_partition {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            match consumer.pause(&tpl) {
                Ok(()) => part.paused = true,
                Err(e) => tracing::warn!(%e, "pausing a partition failed"),
            }
        }
    }
    drop(parts);
    if !start.is_empty() {
        worker.start(start);
    }
}

fn resume(consumer: &BaseConsumer<Context>, worker: &Worker) {
    let half = worker.config.capacity_per_partition / 2;
    let mut parts = worker.shared.lock();
    let mut tpl = TopicPartitionList::new();
    for (tp, part) in parts.iter_mut() {
        if part.paused && part.progress.in_flight() <= half {
            tpl.add_partition(&tp.0, tp.1);
            part.paused = false;
        }
    }
    drop(parts);
    if tpl.count() > 0
        && let Err(e) = consumer.resume(&tpl)
    {
        tracing::warn!(%e, "resuming partitions failed");
    }
}

/// Commits every partition whose safe offset moved since its last commit.
pub(crate) fn commit(consumer: &BaseConsumer<Context>, shared: &Shared, mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    let mut parts = shared.lock();
    for (tp, part) in parts.iter_mut() {
        if part.revoking {
            continue;
        }
        if let Some(safe) = part.progress.safe()
            && part.committed.is_none_or(|c| safe > c)
        {
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(safe));
            part.committed = Some(safe);
        }
    }
    drop(parts);
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, mode)
    {
        tracing::warn!(%e, "committing offsets failed; they are committed again at the next change");
        let mut parts = shared.lock();
        for e in tpl.elements() {
            if let Some(part) = parts.get_mut(&(Arc::from(e.topic()), e.partition())) {
                part.committed = None;
            }
        }
    }
}
