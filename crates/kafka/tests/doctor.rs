//! The doctor against live groups on a real Kafka-compatible broker, one per diagnosis: a
//! healthy group, an empty one, one stuck partition, a group falling behind, a rewind, and a
//! rebalance storm made by a naive consumer whose handler runs inside its poll loop.

#[cfg(feature = "client")]
mod common;

#[cfg(feature = "client")]
mod suite {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use anyhow::{Context as _, ensure};
    use onephase_kafka::diagnosis::{Diagnosis, FindingKind};
    use onephase_kafka::rdkafka;
    use onephase_kafka::rules::Status;
    use onephase_kafka::{Consumer, ConsumerConfig, Doctor, DoctorConfig, Message};
    use onephase_testkit::{Engine, engine_url};
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use tokio::sync::oneshot;

    use super::common::{create_topic, produce, producer, unique};

    /// A Prometheus recorder for this process (one per test process under nextest; under
    /// `cargo test` the first test to ask installs it and the others see it too).
    static RECORDER: std::sync::LazyLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::LazyLock::new(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        });

    fn documented_metrics() -> Vec<String> {
        let page = include_str!("../../../docs/kafka.md");
        let section = &page[page.find("## Metrics").unwrap_or(0)..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    async fn doctor(brokers: &str, group: &str) -> anyhow::Result<Doctor> {
        Ok(Doctor::connect(
            DoctorConfig::new(brokers)
                .with_groups(vec![group.to_owned()])
                .with_interval(Duration::from_millis(500))
                .with_window(Duration::from_secs(40)),
        )
        .await?)
    }

    /// Observes every 500 ms until a diagnosis has `kind` among its findings.
    async fn until(
        doctor: &Doctor,
        kind: FindingKind,
        limit: Duration,
    ) -> anyhow::Result<Diagnosis> {
        let start = std::time::Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            let diagnoses = doctor.observe().await?;
            if let Some(d) = diagnoses.into_iter().next() {
                if d.findings.iter().any(|f| f.kind == kind) {
                    eprintln!("{}", onephase_kafka::doctor::report::text(&d));
                    return Ok(d);
                }
                last = Some(d);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let text = last.as_ref().map(onephase_kafka::doctor::report::text);
        anyhow::bail!(
            "no {kind:?} within {limit:?}; last diagnosis:\n{}",
            text.unwrap_or_default()
        )
    }

    /// Runs the onephase consumer with `handler` until the returned sender fires.
    fn run<F, Fut>(
        config: ConsumerConfig,
        handler: F,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let consumer = Consumer::new(config);
        let task = tokio::spawn(async move {
            let _ = consumer
                .run(handler, async move {
                    let _ = rx.await;
                })
                .await;
        });
        (tx, task)
    }

    /// Produces `per_round` keyed messages to `topic` every `every` until the flag is cleared.
    fn feed(
        brokers: &str,
        topic: &str,
        per_round: u32,
        every: Duration,
    ) -> (Arc<AtomicBool>, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let feeding = Arc::new(AtomicBool::new(true));
        let (brokers, topic, flag) = (brokers.to_owned(), topic.to_owned(), Arc::clone(&feeding));
        let task = tokio::spawn(async move {
            let p = producer(&brokers)?;
            let mut i = 0u32;
            while flag.load(Ordering::Relaxed) {
                produce(
                    &p,
                    &topic,
                    (0..per_round).map(|j| (format!("f{i}-{j}"), "x".to_owned())),
                )
                .await?;
                i += 1;
                tokio::time::sleep(every).await;
            }
            anyhow::Ok(())
        });
        (feeding, task)
    }

    fn commit(brokers: &str, group: &str, topic: &str, offsets: &[i64]) -> anyhow::Result<()> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets.iter().enumerate() {
            tpl.add_partition_offset(topic, i32::try_from(p)?, Offset::Offset(*o))?;
        }
        client
            .commit(&tpl, CommitMode::Sync)
            .context("committing")?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caught_up_group_is_healthy_and_an_idle_topic_is_no_stop() -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let (topic, group) = (unique("doc-ok"), unique("doc-ok-group"));
        create_topic(&brokers, &topic, 2).await?;
        produce(
            &producer(&brokers)?,
            &topic,
            (0..50).map(|i| (format!("k{i}"), "x".into())),
        )
        .await?;
        let (stop, task) = run(ConsumerConfig::new(&brokers, &group, [&topic]), |_| async {
            Ok(())
        });
        let doctor = doctor(&brokers, &group).await?;
        // Caught up, then idle for several observations: still OK, time lag zero.
        let mut healthy = 0;
        let start = std::time::Instant::now();
        while healthy < 6 && start.elapsed() < Duration::from_secs(60) {
            let d = doctor
                .observe()
                .await?
                .into_iter()
                .next()
                .context("a diagnosis")?;
            if d.lag == 0 && !d.members.is_empty() {
                healthy += 1;
                ensure!(d.status == Status::Ok, "{d:?}");
                ensure!(
                    d.findings[0].kind == FindingKind::Healthy || d.observations < 3,
                    "{d:?}"
                );
                ensure!(d.lag_seconds == 0.0);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ensure!(healthy == 6, "the group never settled caught up");
        let _ = stop.send(());
        task.await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_without_members_and_with_lag_is_empty_and_a_lower_commit_is_a_rewind()
    -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let _ = &*RECORDER;
        let (topic, group) = (unique("doc-empty"), unique("doc-empty-group"));
        create_topic(&brokers, &topic, 1).await?;
        produce(
            &producer(&brokers)?,
            &topic,
            (0..200).map(|i| ("k".to_owned(), i.to_string())),
        )
        .await?;
        commit(&brokers, &group, &topic, &[150])?;
        let doctor = doctor(&brokers, &group).await?;
        let d = until(&doctor, FindingKind::EmptyGroup, Duration::from_secs(20)).await?;
        ensure!(d.status == Status::Stop && d.lag == 50, "{d:?}");
        // Every metric docs/kafka.md lists for the doctor is exported by an observation.
        if let Some(handle) = &*RECORDER {
            let text = handle.render();
            for name in documented_metrics() {
                ensure!(
                    text.contains(&format!("{name}{{")),
                    "{name} is documented but not exported:\n{text}"
                );
            }
        }
        ensure!(
            d.lag_seconds >= 0.0 && d.partitions[0].lag_seconds.is_some(),
            "time lag read from the waiting message: {d:?}"
        );
        commit(&brokers, &group, &topic, &[20])?;
        let d = until(&doctor, FindingKind::Rewind, Duration::from_secs(20)).await?;
        let rewind = d
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::Rewind)
            .context("rewind")?;
        ensure!(
            rewind.summary.contains("from 150 to 20"),
            "{}",
            rewind.summary
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_hung_handler_is_a_stuck_partition_named_with_its_offset() -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let (topic, group) = (unique("doc-stuck"), unique("doc-stuck-group"));
        create_topic(&brokers, &topic, 3).await?;
        let p = producer(&brokers)?;
        produce(&p, &topic, (0..30).map(|i| (format!("k{i}"), "x".into()))).await?;
        // The hung message: its key decides its partition; the doctor must name its offset.
        produce(&p, &topic, [("hung".to_owned(), "hang".to_owned())]).await?;
        let config = ConsumerConfig::new(&brokers, &group, [&topic])
            .with_handler_timeout(Duration::from_secs(300));
        let (stop, task) = run(config, |m: Message| async move {
            if m.payload() == b"hang" {
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
            Ok(())
        });
        let (feeding, feeder) = feed(&brokers, &topic, 6, Duration::from_millis(300));
        let doctor = doctor(&brokers, &group).await?;
        let d = until(
            &doctor,
            FindingKind::StuckPartition,
            Duration::from_secs(60),
        )
        .await?;
        feeding.store(false, Ordering::Relaxed);
        feeder.await??;
        let stuck = d
            .partitions
            .iter()
            .find(|p| p.status == Status::Stall)
            .context("a stalled partition")?;
        let finding = d
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::StuckPartition)
            .context("finding")?;
        let offset = stuck.committed.context("committed")?;
        ensure!(
            finding.summary.contains(&format!("offset {offset}")),
            "{}",
            finding.summary
        );
        ensure!(
            d.partitions
                .iter()
                .filter(|p| p.status == Status::Stall)
                .count()
                == 1,
            "{d:?}"
        );
        let _ = stop.send(());
        task.await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_slower_than_its_producers_is_falling_behind() -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let (topic, group) = (unique("doc-slow"), unique("doc-slow-group"));
        create_topic(&brokers, &topic, 2).await?;
        let config = ConsumerConfig::new(&brokers, &group, [&topic])
            .with_max_in_flight(1)
            .with_commit_interval(Duration::from_millis(200));
        let (stop, task) = run(config, |_| async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok(())
        });
        // About 50 messages a second against a consumer that does about 25.
        let (feeding, feeder) = feed(&brokers, &topic, 10, Duration::from_millis(200));
        let doctor = doctor(&brokers, &group).await?;
        let d = until(&doctor, FindingKind::FallingBehind, Duration::from_secs(60)).await?;
        feeding.store(false, Ordering::Relaxed);
        feeder.await??;
        ensure!(d.produce_rate > d.consume_rate, "{d:?}");
        ensure!(d.consume_rate > 0.0, "{d:?}");
        let _ = stop.send(());
        task.await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_inside_the_poll_loop_makes_a_rebalance_storm() -> anyhow::Result<()> {
        let Some(brokers) = engine_url(Engine::Kafka) else {
            return Ok(());
        };
        let (topic, group) = (unique("doc-storm"), unique("doc-storm-group"));
        create_topic(&brokers, &topic, 1).await?;
        produce(
            &producer(&brokers)?,
            &topic,
            (0..100).map(|i| ("k".to_owned(), i.to_string())),
        )
        .await?;
        let running = Arc::new(AtomicBool::new(true));
        // The naive consumer: each message takes 7 s inside the loop, past the 6 s
        // max.poll.interval.ms, so librdkafka leaves the group and rejoins at the next poll.
        let naive = {
            let (brokers, topic, group, running) = (
                brokers.clone(),
                topic.clone(),
                group.clone(),
                Arc::clone(&running),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", &group)
                    .set("session.timeout.ms", "6000")
                    .set("max.poll.interval.ms", "6000")
                    .set("auto.offset.reset", "earliest")
                    .create()?;
                consumer.subscribe(&[&topic])?;
                while running.load(Ordering::Relaxed) {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                        std::thread::sleep(Duration::from_secs(7));
                    }
                }
                Ok(())
            })
        };
        let doctor = doctor(&brokers, &group).await?;
        let result = until(
            &doctor,
            FindingKind::RebalanceStorm,
            Duration::from_secs(90),
        )
        .await;
        running.store(false, Ordering::Relaxed);
        let d = result?;
        naive
            .join()
            .map_err(|_| anyhow::anyhow!("naive consumer panicked"))??;
        ensure!(d.rebalances >= 3, "{d:?}");
        Ok(())
    }
}

#[cfg(not(feature = "client"))]
#[test]
fn kafka_doctor_suite() {
    onephase_testkit::engine_not_built(onephase_testkit::Engine::Kafka, "onephase-kafka", "client");
}
