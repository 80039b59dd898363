//! Post 2, "the consumer group that stopped consuming": a slow message and a poison message in
//! front of a naive consumer and of the onephase runtime, on a real Kafka-compatible broker,
//! with the doctor watching both groups.
//!
//! - **Naive**: the handler runs inside the poll loop and a failing message is retried in
//!   place (seek back). The slow message (8 s) outlasts `max.poll.interval.ms` (6 s): the
//!   client leaves the group, rejoins, is handed the same message, and leaves again. The
//!   poison message holds its partition for ever.
//! - **onephase**: [`onephase_kafka::Consumer`]: the slow message runs on a task while polls
//!   go on; the poison message is retried 3 times and sent to the dead-letter topic.

use crate::Report;

/// What the scenario needs, said when it cannot run.
pub const NEEDS: &str = "a Kafka-compatible broker (`--kafka HOST:PORT`, or ONEPHASE_LAB_KAFKA) \
     and an onephase built with the feature `kafka`";

/// Healthy messages per run, beside the slow and the poison one.
#[cfg(feature = "kafka")]
const MESSAGES: u32 = 600;

/// The naive consumer and the runtime on the same input for the same 30 s.
pub async fn group_that_stopped(seed: u64, brokers: Option<&str>) -> Report {
    let mut report = Report::new(
        "kafka-group-that-stopped",
        seed,
        "600 keyed messages on 3 partitions, one handled in 8 s (max.poll.interval.ms 6 s) \
         and one that always fails, 30 s per consumer; the doctor observes every second",
    );
    let Some(brokers) = brokers else {
        report.not_run_for_want_of(NEEDS);
        return report;
    };
    #[cfg(feature = "kafka")]
    {
        let Some((naive, onephase)) = report.ran_to_end(run::both(seed, brokers).await) else {
            return report;
        };
        report.row(
            "healthy messages handled",
            naive.handled as f64,
            onephase.handled as f64,
        );
        report.row(
            "seconds to handle them all (30 = not within the run)",
            naive.all_done_s,
            onephase.all_done_s,
        );
        report.row(
            "rebalances seen by the member",
            naive.rebalances as f64,
            onephase.rebalances as f64,
        );
        report.row(
            "poison message in the dead-letter topic",
            0.0,
            onephase.dead_lettered as f64,
        );
        for kind in ["rebalance_storm", "stuck_partition", "healthy"] {
            report.row(
                &format!("doctor finds {kind}"),
                f64::from(u8::from(naive.findings.iter().any(|f| f == kind))),
                f64::from(u8::from(onephase.findings.iter().any(|f| f == kind))),
            );
        }
        report.invariant(
            "every healthy message is handled within the run, and the doctor calls the group healthy",
            naive.handled == u64::from(MESSAGES) && naive.findings.iter().any(|f| f == "healthy"),
            onephase.handled == u64::from(MESSAGES)
                && onephase.findings.iter().any(|f| f == "healthy"),
        );
        report.chart(
            "messages handled per second",
            "messages",
            std::time::Duration::from_secs(1),
            naive.per_second,
            onephase.per_second,
        );
        report
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (seed, brokers);
        report.not_run_for_want_of(NEEDS);
        report
    }
}

#[cfg(feature = "kafka")]
mod run {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use onephase_core::{Backoff, Jitter, Random};
    use onephase_kafka::rdkafka;
    use onephase_kafka::{Consumer, ConsumerConfig, Doctor, DoctorConfig, Message};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, ClientContext, Message as _, Offset};

    use super::MESSAGES;
    use crate::Failed;

    const RUN: Duration = Duration::from_secs(30);
    const SLOW: Duration = Duration::from_secs(8);

    /// What one consumer did.
    pub struct Outcome {
        pub handled: u64,
        pub all_done_s: f64,
        pub rebalances: u64,
        pub dead_lettered: u64,
        pub per_second: Vec<f64>,
        pub findings: BTreeSet<String>,
    }

    /// Handles a message as both consumers do: `Err` for the poison one.
    async fn handle(payload: &[u8]) -> Result<(), String> {
        match payload {
            b"slow" => tokio::time::sleep(SLOW).await,
            b"poison" => return Err("cannot parse \"poison\" as an order".into()),
            _ => {}
        }
        Ok(())
    }

    /// A topic of 3 partitions with the healthy messages, the slow one and the poison one at
    /// seeded places, one message per batch (tansu answers a fetch inside a batch with nothing).
    async fn topic(brokers: &str, name: &str, seed: u64) -> Result<(), Failed> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        for r in admin
            .create_topics(
                &[NewTopic::new(name, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await?
        {
            r.map_err(|(t, code)| format!("creating {t}: {code}"))?;
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()?;
        let random = Random::seeded(seed);
        let slow_at = random.next_u64() % 50;
        let poison_at = 50 + random.next_u64() % 50;
        let mut pending = Vec::new();
        for i in 0..u64::from(MESSAGES) + 2 {
            let (key, payload) = if i == slow_at {
                ("slow".to_owned(), "slow")
            } else if i == poison_at + 1 {
                ("poison".to_owned(), "poison")
            } else {
                (format!("k{i}"), "order")
            };
            let record = FutureRecord::to(name).key(&key).payload(payload);
            pending.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e.to_string())?,
            );
        }
        for p in pending {
            p.await?.map_err(|(e, _)| e.to_string())?;
        }
        Ok(())
    }

    pub async fn both(seed: u64, brokers: &str) -> Result<(Outcome, Outcome), Failed> {
        let stamp = format!(
            "{:x}",
            seed ^ u64::from(std::process::id()) << 20 ^ now_ms()
        );
        let (naive_topic, ours_topic) = (
            format!("lab-naive-{stamp}"),
            format!("lab-onephase-{stamp}"),
        );
        let (naive_group, ours_group) = (
            format!("{naive_topic}-group"),
            format!("{ours_topic}-group"),
        );
        topic(brokers, &naive_topic, seed).await?;
        topic(brokers, &ours_topic, seed).await?;
        let doctor = Doctor::connect(
            DoctorConfig::new(brokers)
                .with_groups(vec![naive_group.clone(), ours_group.clone()])
                .with_interval(Duration::from_secs(1))
                .with_window(Duration::from_secs(20)),
        )
        .await?;

        let start = Instant::now();
        let naive_times: Arc<Mutex<Vec<f64>>> = Arc::default();
        let naive_rebalances = Arc::new(AtomicU64::new(0));
        let naive = {
            let (brokers, topic, group) =
                (brokers.to_owned(), naive_topic.clone(), naive_group.clone());
            let (times, rebalances) = (Arc::clone(&naive_times), Arc::clone(&naive_rebalances));
            std::thread::spawn(move || {
                naive_loop(&brokers, &topic, &group, start, &times, rebalances)
            })
        };
        let ours_times: Arc<Mutex<Vec<f64>>> = Arc::default();
        let consumer = Consumer::new(
            ConsumerConfig::new(brokers, &ours_group, [&ours_topic])
                .with_max_attempts(3)
                .with_backoff(Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_millis(200),
                    Jitter::Equal,
                )?)
                .with_property("session.timeout.ms", "6000")
                .with_property("max.poll.interval.ms", "6000"),
        )
        .with_seed(seed);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = consumer.clone();
        let times = Arc::clone(&ours_times);
        let ours = tokio::spawn(async move {
            runner
                .run(
                    move |m: Message| {
                        let times = Arc::clone(&times);
                        async move {
                            handle(m.payload()).await?;
                            if m.payload() == b"order" {
                                times
                                    .lock()
                                    .map_err(|_| "poisoned lock")?
                                    .push(start.elapsed().as_secs_f64());
                            }
                            Ok::<_, String>(())
                        }
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await
        });
        let mut last = Vec::new();
        while start.elapsed() < RUN {
            match doctor.observe().await {
                Ok(d) => last = d,
                Err(e) => tracing::warn!(%e, "the doctor's observation failed"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Before stopping: leaving the group is one more revoke.
        let health = consumer.health();
        let _ = stop.send(());
        ours.await.map_err(|e| e.to_string())??;
        naive.join().map_err(|_| "the naive consumer panicked")??;
        let findings = |group: &str| -> BTreeSet<String> {
            last.iter()
                .filter(|d| d.group == group)
                .flat_map(|d| d.findings.iter())
                .filter_map(|f| serde_json::to_value(f.kind).ok())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let outcome = |times: &Mutex<Vec<f64>>, rebalances, dead_lettered, findings| {
            let times = times.lock().map(|t| t.clone()).unwrap_or_default();
            let mut per_second = vec![0.0; RUN.as_secs() as usize];
            for t in &times {
                if let Some(slot) = per_second.get_mut(*t as usize) {
                    *slot += 1.0;
                }
            }
            let handled = times.len() as u64;
            Outcome {
                handled,
                all_done_s: if handled >= u64::from(MESSAGES) {
                    times.iter().copied().fold(0.0, f64::max)
                } else {
                    RUN.as_secs_f64()
                },
                rebalances,
                dead_lettered,
                per_second,
                findings,
            }
        };
        Ok((
            outcome(
                &naive_times,
                naive_rebalances.load(Ordering::Relaxed),
                0,
                findings(&naive_group),
            ),
            // The first assignment is not a rebalance.
            outcome(
                &ours_times,
                health.rebalances.saturating_sub(1),
                health.dead_lettered,
                findings(&ours_group),
            ),
        ))
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Counts assignments after the first: each is a rebalance the member went through.
    struct Counting(Arc<AtomicU64>, AtomicBool);

    impl ClientContext for Counting {}

    impl ConsumerContext for Counting {
        fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
            if matches!(rebalance, Rebalance::Assign(_)) && self.1.swap(true, Ordering::Relaxed) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The naive consumer: the handler inside the poll loop, a failure retried in place.
    fn naive_loop(
        brokers: &str,
        topic: &str,
        group: &str,
        start: Instant,
        times: &Mutex<Vec<f64>>,
        rebalances: Arc<AtomicU64>,
    ) -> Result<(), Failed> {
        let consumer: BaseConsumer<Counting> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("max.poll.interval.ms", "6000")
            .create_with_context(Counting(rebalances, AtomicBool::new(false)))?;
        consumer.subscribe(&[topic])?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        while start.elapsed() < RUN {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let payload = m.payload().unwrap_or_default().to_vec();
            match runtime.block_on(handle(&payload)) {
                Ok(()) => {
                    if payload == b"order" {
                        times
                            .lock()
                            .map_err(|_| "poisoned lock")?
                            .push(start.elapsed().as_secs_f64());
                    }
                    // After a slow message this fails: the member was thrown out meanwhile.
                    let _ = consumer.commit_message(&m, CommitMode::Sync);
                }
                Err(_) => {
                    // Retry in place: read the same message again.
                    let _ = consumer.seek(
                        m.topic(),
                        m.partition(),
                        Offset::Offset(m.offset()),
                        Duration::from_secs(5),
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }
}
