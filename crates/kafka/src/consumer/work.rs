//! A message's life on a tokio task: a permit, the handler with a timeout, retries with
//! backoff, the dead-letter topic when they run out, then the bookkeeping that may start the
//! next message of its key.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;

use super::state::{Shared, Tp};
use super::{ConsumerConfig, Message};
use onephase_core::{Random, SharedClock};

/// Headers a dead-lettered record carries beside its own: the error, where it came from, how
/// many attempts were made, and the group that gave up.
pub const DEAD_LETTER_HEADERS: [&str; 6] = [
    "dead-letter-error",
    "dead-letter-topic",
    "dead-letter-partition",
    "dead-letter-offset",
    "dead-letter-attempts",
    "dead-letter-group",
];

/// The handler, type-erased: a message in, `Err(text)` for a failure.
pub(crate) type Handle =
    Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What every task needs.
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handler: Handle,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) producer: FutureProducer,
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) clock: SharedClock,
    pub(crate) random: Arc<Random>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Worker {
    /// Starts each message (of its assignment's generation) on a task of its own. The poll
    /// thread hands a whole burst to the runtime at once: one wake-up of a runtime thread,
    /// whose spawns then stay local.
    pub(crate) fn start(self: &Arc<Self>, messages: Vec<(u64, Arc<AtomicBool>, Message)>) {
        let worker = Arc::clone(self);
        self.runtime.spawn(async move {
            for (generation, live, message) in messages {
                let worker = Arc::clone(&worker);
                tokio::spawn(async move { worker.run(generation, live, message).await });
            }
        });
    }

    async fn run(self: Arc<Self>, generation: u64, live: Arc<AtomicBool>, mut message: Message) {
        let tp: Tp = (Arc::clone(&message.topic), message.partition);
        loop {
            let outcome = self.handle(&live, &tp, &mut message).await;
            let next = self.finish(generation, &tp, &message, outcome);
            match next {
                Some(next) => message = next,
                None => return,
            }
        }
    }

    /// Runs the handler until it succeeds, or dead-letters the message. `false` when the
    /// partition was revoked first and the message was left for the next owner.
    async fn handle(&self, live: &AtomicBool, tp: &Tp, message: &mut Message) -> bool {
        let mut previous = None;
        loop {
            let Ok(permit) = self.permits.acquire().await else {
                return false;
            };
            if !live.load(Ordering::Acquire) {
                return false;
            }
            if message.attempt > 1 {
                self.note_attempt(tp, message);
            }
            let error = match tokio::time::timeout(
                self.config.handler_timeout,
                (self.handler)(message.clone()),
            )
            .await
            {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => error,
                Err(_) => format!(
                    "the handler did not finish within {} ms",
                    self.config.handler_timeout.as_millis()
                ),
            };
            drop(permit);
            if message.attempt >= self.config.max_attempts {
                return self.dead_letter(live, message, &error).await;
            }
            tracing::debug!(
                topic = %message.topic, partition = message.partition, offset = message.offset,
                attempt = message.attempt, %error, "handler failed; retrying"
            );
            self.shared.counters.retried.fetch_add(1, Ordering::Relaxed);
            let delay =
                self.config
                    .backoff
                    .delay(message.attempt - 1, previous, &mut &*self.random);
            previous = Some(delay);
            self.clock.sleep(delay).await;
            message.attempt += 1;
        }
    }

    /// Notes the attempt of a retried message that holds the commit back, for the health
    /// report.
    fn note_attempt(&self, tp: &Tp, message: &Message) {
        if let Some(part) = self.shared.lock().get_mut(tp)
            && part.progress.oldest_unfinished() == Some(message.offset)
        {
            part.oldest_attempt = message.attempt;
        }
    }

    /// Produces `message` to its dead-letter topic, retrying the produce until it is delivered
    /// or the partition is revoked: a message is never both given up and uncommitted-past.
    async fn dead_letter(&self, live: &AtomicBool, message: &Message, error: &str) -> bool {
        let topic = format!("{}{}", message.topic, self.config.dead_letter_suffix);
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        let attempts = message.attempt.to_string();
        let mut failures = 0u32;
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 6);
            for (name, value) in message.headers.iter() {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: Some(value.as_ref()),
                });
            }
            let values = [
                error,
                &message.topic,
                &partition,
                &offset,
                &attempts,
                &self.config.group,
            ];
            for (key, value) in DEAD_LETTER_HEADERS.iter().zip(values) {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
                .payload(message.payload.as_ref())
                .headers(headers);
            if let Some(key) = message.key.as_deref() {
                record = record.key(key);
            }
            if let Some(ts) = message.timestamp_ms {
                record = record.timestamp(ts);
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    tracing::warn!(
                        topic = %message.topic, partition = message.partition,
                        offset = message.offset, attempts = message.attempt, %error,
                        dead_letter = %topic, "message sent to the dead-letter topic"
                    );
                    self.shared
                        .counters
                        .dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("onephase_kafka_dead_lettered_total", "topic" => message.topic.to_string())
                        .increment(1);
                    return true;
                }
                Err((e, _)) => {
                    failures += 1;
                    tracing::warn!(%e, dead_letter = %topic, failures, "producing to the dead-letter topic failed; retrying");
                    if !live.load(Ordering::Acquire) {
                        return false;
                    }
                    let delay = self.config.backoff.ceiling(failures.min(16));
                    self.clock.sleep(delay).await;
                }
            }
        }
    }

    /// Records the outcome; returns the next message of the key to run on this task.
    fn finish(&self, generation: u64, tp: &Tp, message: &Message, done: bool) -> Option<Message> {
        let counters = &self.shared.counters;
        let mut parts = self.shared.lock();
        let part = parts.get_mut(tp).filter(|p| p.generation == generation);
        let Some(part) = part else {
            counters.abandoned.fetch_add(1, Ordering::Relaxed);
            self.shared.finished.notify_all();
            return None;
        };
        if !done || part.revoking {
            if !done {
                counters.abandoned.fetch_add(1, Ordering::Relaxed);
            }
            // Leave it unfinished: the commit stays below it and the next owner reads it.
            if done {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                let _ = part.progress.finish(message.offset, message.key());
            }
            part.running = part.running.saturating_sub(1);
            drop(parts);
            self.shared.finished.notify_all();
            return None;
        }
        counters.handled.fetch_add(1, Ordering::Relaxed);
        let before = part.progress.safe();
        let next = part.progress.finish(message.offset, message.key());
        if part.progress.safe() != before {
            part.moved_at = self.clock.monotonic();
            part.oldest_attempt = 1;
        }
        if part.paused && part.progress.in_flight() <= self.config.capacity_per_partition / 2 {
            self.shared.resume_wanted.store(true, Ordering::Release);
        }
        if next.is_none() {
            part.running = part.running.saturating_sub(1);
        }
        drop(parts);
        self.shared.finished.notify_all();
        next.map(|(_, m)| m)
    }
}

/// Erases a handler's types.
pub(crate) fn erase<H, Fut, E>(handler: H) -> Handle
where
    H: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    Arc::new(move |message| {
        let fut = handler(message);
        Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
    })
}
