//! The consumer runtime: a poll loop that handlers cannot block.
//!
//! ```no_run
//! use onephase_kafka::{Consumer, ConsumerConfig, Message};
//!
//! # async fn demo() -> Result<(), onephase_kafka::KafkaError> {
//! let config = ConsumerConfig::new("127.0.0.1:9092", "billing", ["orders"])
//!     .with_max_in_flight(64)
//!     .with_max_attempts(5);
//! let consumer = Consumer::new(config);
//! // Completes when the service is told to stop (a signal handler sends on `stop`).
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! # drop(stop);
//! consumer
//!     .run(
//!         |message: Message| async move {
//!             // Effects once: record message.id() in the same transaction as the effect
//!             // (onephase_outbox::Inbox::process_id).
//!             let _ = message.payload();
//!             Ok::<_, std::io::Error>(())
//!         },
//!         stopped,
//!     )
//!     .await
//! # }
//! ```

mod message;
mod poll;
mod state;
mod work;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use derive_setters::Setters;
use onephase_core::{Backoff, Jitter, Random, SharedClock, SystemClock};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::FutureProducer;
use tokio::sync::Semaphore;

pub use message::Message;
pub use state::{ConsumerHealth, PartitionHealth};
pub use work::DEAD_LETTER_HEADERS;

use crate::KafkaError;
use poll::Context;
use state::Shared;
use work::Worker;

/// How a [`Consumer`] joins its group and handles messages.
#[derive(Debug, Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct ConsumerConfig {
    brokers: String,
    group: String,
    topics: Vec<String>,
    /// Handlers running at once, over all partitions (default 64).
    #[setters(generate)]
    max_in_flight: usize,
    /// Messages of one partition received and not done before its fetching pauses (default
    /// 256); it resumes at half.
    #[setters(generate)]
    capacity_per_partition: usize,
    /// A handler that has not finished by then failed (default 30 s).
    #[setters(generate)]
    handler_timeout: Duration,
    /// Attempts before a message goes to the dead-letter topic (default 5).
    #[setters(generate)]
    max_attempts: u32,
    /// Delays between attempts (default 100 ms doubling to 10 s, equal jitter).
    #[setters(generate)]
    backoff: Backoff,
    /// A message that keeps failing goes to its topic's name with this suffix (default
    /// `.dlq`), created when the consumer starts if it is missing.
    #[setters(generate, into)]
    dead_letter_suffix: String,
    /// How long a revoke waits for running handlers before giving the partitions up anyway
    /// (default 10 s). Keep it well below `max.poll.interval.ms`.
    #[setters(generate)]
    drain_timeout: Duration,
    /// How often done offsets are committed (default 1 s).
    #[setters(generate)]
    commit_interval: Duration,
    /// A partition with work or lag whose safe offset did not move for this long is reported
    /// stuck by [`Consumer::health`] (default 30 s).
    #[setters(generate)]
    stuck_after: Duration,
    /// Static membership: this member's `group.instance.id`, so that a restart within the
    /// session timeout keeps its partitions without a rebalance.
    #[setters(generate, into, strip_option)]
    instance_id: Option<String>,
    /// `partition.assignment.strategy` (default `cooperative-sticky`: a rebalance moves only
    /// the partitions that change owner, the others keep being consumed).
    #[setters(generate, into)]
    assignment_strategy: String,
    poll_timeout: Duration,
    /// Further librdkafka settings (`session.timeout.ms`, `max.poll.interval.ms`, security).
    #[setters(skip)]
    extra: Vec<(String, String)>,
}

impl ConsumerConfig {
    /// Members of `group` on `brokers` (`host:9092,host2:9092`) reading `topics`.
    pub fn new(
        brokers: impl Into<String>,
        group: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            max_in_flight: 64,
            capacity_per_partition: 256,
            handler_timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(10),
                Jitter::Equal,
            )
            .expect("100 ms doubling to 10 s is a valid backoff"),
            dead_letter_suffix: ".dlq".to_owned(),
            drain_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            stuck_after: Duration::from_secs(30),
            instance_id: None,
            assignment_strategy: "cooperative-sticky".to_owned(),
            poll_timeout: Duration::from_millis(50),
            extra: Vec::new(),
        }
    }

    /// Sets a librdkafka property (`session.timeout.ms`, `max.poll.interval.ms`, ...). The
    /// runtime's own (`group.id`, `enable.auto.commit`, `enable.auto.offset.store`) are refused
    /// when the consumer starts.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    fn validate(&self) -> Result<(), KafkaError> {
        let bad = |m: String| Err(KafkaError::Config(m));
        if self.topics.is_empty() {
            return bad("no topics to consume".into());
        }
        if self.group.is_empty() {
            return bad("the group id is empty".into());
        }
        if self.max_in_flight == 0 || self.capacity_per_partition == 0 || self.max_attempts == 0 {
            return bad(
                "max_in_flight, capacity_per_partition and max_attempts must be at least 1".into(),
            );
        }
        for (key, _) in &self.extra {
            if matches!(
                key.as_str(),
                "group.id" | "enable.auto.commit" | "enable.auto.offset.store"
            ) {
                return bad(format!(
                    "{key} is set by the runtime (it commits only offsets whose messages are \
                     done); remove it"
                ));
            }
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", &self.assignment_strategy)
            .set("statistics.interval.ms", "1000");
        if let Some(id) = &self.instance_id {
            config.set("group.instance.id", id);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

/// A member of a consumer group running a handler per message. See the
/// [crate documentation](crate) for what it guarantees.
#[derive(derive_more::Debug, Clone)]
pub struct Consumer {
    config: Arc<ConsumerConfig>,
    shared: Arc<Shared>,
    #[debug(skip)]
    clock: SharedClock,
    #[debug(skip)]
    random: Arc<Random>,
}

impl Consumer {
    /// A consumer with `config`; nothing connects until [`run`](Self::run).
    pub fn new(config: ConsumerConfig) -> Self {
        Self {
            config: Arc::new(config),
            shared: Arc::default(),
            clock: Arc::new(SystemClock),
            random: Arc::new(Random::from_entropy()),
        }
    }

    /// Uses this clock for backoff, drains and stuck detection.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Draws backoff jitter from a sequence seeded with `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.random = Arc::new(Random::seeded(seed));
        self
    }

    /// The partitions this member holds now, with their progress, and its totals.
    pub fn health(&self) -> ConsumerHealth {
        ConsumerHealth::read(
            &self.shared,
            self.clock.monotonic(),
            self.config.stuck_after,
        )
    }

    /// Joins the group and handles messages with `handler` until `shutdown` completes; then
    /// stops starting messages, waits for running ones (up to the drain timeout), commits and
    /// leaves the group.
    ///
    /// A handler's `Err` (or its timeout) is retried with backoff; after `max_attempts` the
    /// message goes to the dead-letter topic and its offset is committed past.
    pub async fn run<H, Fut, E>(
        &self,
        handler: H,
        shutdown: impl Future<Output = impl Sized> + Send,
    ) -> Result<(), KafkaError>
    where
        H: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.config.validate()?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .map_err(|e| KafkaError::client("creating the dead-letter producer", e))?;
        crate::topics::ensure(
            &self.config.brokers,
            self.config
                .topics
                .iter()
                .map(|t| format!("{t}{}", self.config.dead_letter_suffix)),
        )
        .await?;
        let context = Context {
            shared: Arc::clone(&self.shared),
            drain_timeout: self.config.drain_timeout,
            clock: Arc::clone(&self.clock),
        };
        let consumer: BaseConsumer<Context> = self
            .config
            .client_config()
            .create_with_context(context)
            .map_err(|e| KafkaError::client("creating the consumer", e))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| KafkaError::client("subscribing", e))?;
        self.shared.stop.store(false, Ordering::Release);
        let worker = Arc::new(Worker {
            shared: Arc::clone(&self.shared),
            handler: work::erase(handler),
            permits: Arc::new(Semaphore::new(self.config.max_in_flight)),
            producer,
            config: Arc::clone(&self.config),
            clock: Arc::clone(&self.clock),
            random: Arc::clone(&self.random),
            runtime: tokio::runtime::Handle::current(),
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let poller = Arc::clone(&worker);
        std::thread::Builder::new()
            .name(format!("onephase-kafka-poll-{}", self.config.group))
            .spawn(move || {
                poll::poll_loop(&consumer, &poller);
                consumer.unsubscribe();
                drop(consumer);
                let _ = done_tx.send(());
            })
            .map_err(|e| KafkaError::Runtime(format!("starting the poll thread: {e}")))?;
        let mut done_rx = done_rx;
        tokio::select! {
            _ = shutdown => {}
            _ = &mut done_rx => {
                return Err(KafkaError::Runtime("the poll thread stopped by itself".into()));
            }
        }
        self.shared.stop.store(true, Ordering::Release);
        done_rx
            .await
            .map_err(|_| KafkaError::Runtime("the poll thread panicked".into()))
    }
}
