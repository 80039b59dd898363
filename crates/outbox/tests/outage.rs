//! Broker outage: the link to NATS is cut by a fault-injecting proxy for a few seconds while
//! the relay publishes. The relay backs off, resumes, and nothing is lost or reordered.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::*;
use onephase_broker::nats::NatsPublisher;
use onephase_outbox::{Relay, RelayConfig, RoundReport};
use onephase_testkit::{Engine, FaultProxy, TestDb, engine_url};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_rides_out_a_broker_outage() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let Some(nats) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let store = db.store().clone();
    store.migrate(&[onephase_outbox::migrations()]).await?;
    create_effects(&store).await?;

    let NatsChecker { mut sub, stream } =
        NatsChecker::start(&nats, "outage", Duration::from_secs(120)).await?;
    let topic = stream.topic.clone();

    let upstream = nats.trim_start_matches("nats://").to_owned();
    let proxy = FaultProxy::start(&upstream).await?;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(format!("nats://{}", proxy.local_addr()))
        .await?;
    let publisher = NatsPublisher::new(client).with_ack_timeout(Duration::from_millis(500));

    let events = workload(&topic, 3_000, 50);
    let config = RelayConfig {
        batch_size: 100,
        max_attempts: 1_000,
        backoff: onephase_core::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
            onephase_core::Jitter::Full,
        )?,
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), publisher, config);
    let (stop, mut stopped) = watch::channel(false);
    let relay_task = tokio::spawn(async move {
        let mut total = RoundReport::default();
        while !*stopped.borrow() {
            let report = relay.run_once().await?;
            total.published += report.published;
            total.retrying += report.retrying;
            total.dead_lettered += report.dead_lettered;
            if report.claimed == 0 {
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
        anyhow::Ok(total)
    });

    let writer = {
        let store = store.clone();
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(300) {
                enqueue_all(&store, chunk, 30).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.cut().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    writer.await??;
    consume_and_apply(&mut sub, &store, &events, Duration::from_secs(120)).await?;
    stop.send(true)?;
    let total = relay_task.await??;
    eprintln!("relay totals through the outage: {total:?}");
    ensure!(
        total.retrying > 0,
        "the outage caused no failed publish: was the link cut?"
    );
    ensure!(total.dead_lettered == 0, "{total:?}");
    assert_effects_once(&store, &events).await?;
    stream.delete().await?;
    db.close().await?;
    Ok(())
}
