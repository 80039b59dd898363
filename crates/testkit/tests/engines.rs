//! One short smoke test per engine, through the client crate the capabilities use, proving the
//! ground under the engine suites is real: each test writes something and reads it back.
//!
//! Without the engine variables these skip, loudly; `scripts/test.sh` makes them mandatory.

use std::time::Duration;

use anyhow::{Context, ensure};
use futures::StreamExt;
use onephase_testkit::{Engine, TestDb, engine_url};
use uuid::Uuid;

/// A name no other run uses, so tests never see each other's data.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::now_v7().simple())
}

#[tokio::test]
async fn postgres_round_trip_through_sqlx() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let pool = db.store().as_postgres().context("a PostgreSQL store")?;
    sqlx::query("CREATE TABLE smoke (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        .execute(pool)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO smoke (body) VALUES ($1)")
        .bind("hello")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let body: String = sqlx::query_scalar("SELECT body FROM smoke")
        .fetch_one(pool)
        .await?;
    ensure!(body == "hello");
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await?;
    ensure!(version >= 130000, "PostgreSQL {version} is older than 13");
    db.close().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_round_trip_through_sqlx() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let sqlite = db.store().as_sqlite().context("a SQLite store")?;
    sqlx::query("CREATE TABLE smoke (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(sqlite.writer())
        .await?;
    sqlx::query("INSERT INTO smoke (body) VALUES ($1)")
        .bind("hello")
        .execute(sqlite.writer())
        .await?;
    let body: String = sqlx::query_scalar("SELECT body FROM smoke")
        .fetch_one(sqlite.reader())
        .await?;
    ensure!(body == "hello");
    Ok(())
}

#[tokio::test]
async fn redis_set_get_and_lua() -> anyhow::Result<()> {
    let Some(url) = engine_url(Engine::Redis) else {
        return Ok(());
    };
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = unique("onephase-smoke");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut conn)
        .await?;
    let value: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    ensure!(value == "v");
    // Scripts run atomically on the server, with the server's clock: what the rate limiter needs.
    let script = redis::Script::new("return {redis.call('INCR', KEYS[1]), redis.call('TIME')[1]}");
    let (count, server_secs): (i64, String) = script
        .key(format!("{key}:n"))
        .invoke_async(&mut conn)
        .await?;
    ensure!(count == 1);
    ensure!(server_secs.parse::<u64>()? > 1_600_000_000);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .arg(format!("{key}:n"))
        .query_async(&mut conn)
        .await?;
    Ok(())
}

#[tokio::test]
async fn nats_jetstream_deduplicates_on_message_id() -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};

    let Some(url) = engine_url(Engine::Nats) else {
        return Ok(());
    };
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);
    let name = unique("SMOKE").replace('-', "_");
    let subject = format!("{name}.events");
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;

    let publish = |id: &str| {
        PublishMessage::build()
            .payload("hello".into())
            .message_id(id)
    };
    let first = js
        .send_publish(subject.clone(), publish("msg-1"))
        .await?
        .await?;
    let again = js
        .send_publish(subject.clone(), publish("msg-1"))
        .await?
        .await?;
    ensure!(
        !first.duplicate && again.duplicate,
        "JetStream did not de-duplicate msg-1"
    );
    ensure!(first.sequence == again.sequence);

    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("smoke".to_owned()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await?;
    let mut received = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        received.push(message.payload.clone());
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    ensure!(
        received.len() == 1,
        "expected one message, got {}",
        received.len()
    );
    ensure!(received[0].as_ref() == b"hello");
    js.delete_stream(&name).await?;
    Ok(())
}

#[tokio::test]
async fn rabbitmq_publish_with_confirms_and_consume() -> anyhow::Result<()> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let Some(url) = engine_url(Engine::RabbitMq) else {
        return Ok(());
    };
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = unique("onephase-smoke");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    ensure!(
        confirm.is_ack(),
        "the broker did not confirm the publish: {confirm:?}"
    );

    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "smoke".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .context("no delivery within 10 s")?
        .context("consumer ended")??;
    ensure!(delivery.data == b"hello");
    delivery.ack(BasicAckOptions::default()).await?;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_lease_put_and_revision() -> anyhow::Result<()> {
    use etcd_client::{Client, PutOptions};

    let Some(url) = engine_url(Engine::Etcd) else {
        return Ok(());
    };
    let mut client = Client::connect([url.as_str()], None).await?;
    let lease = client.lease_grant(10, None).await?;
    let key = unique("onephase/smoke");
    let put = client
        .put(
            key.as_str(),
            "holder-a",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await?;
    let put_revision = put.header().context("put header")?.revision();
    let got = client.get(key.as_str(), None).await?;
    let kv = got.kvs().first().context("the key is there")?;
    ensure!(kv.value() == b"holder-a");
    ensure!(
        kv.lease() == lease.id(),
        "the key is not attached to the lease"
    );
    // The key's modification revision is what fenced leases use as the token.
    ensure!(kv.mod_revision() == put_revision && put_revision > 0);
    client.lease_revoke(lease.id()).await?;
    let gone = client.get(key.as_str(), None).await?;
    ensure!(
        gone.kvs().is_empty(),
        "revoking the lease did not delete its key"
    );
    Ok(())
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_lease_put_and_revision() {
    onephase_testkit::engine_not_built(Engine::Etcd, "onephase-testkit", "etcd");
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_produce_consume_commit_in_a_group() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let Some(brokers) = engine_url(Engine::Kafka) else {
        return Ok(());
    };
    let topic = unique("onephase-smoke");
    let group = unique("onephase-smoke-group");
    let timeout = Duration::from_secs(20);

    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await?;
    for result in created {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "20000")
        .create()?;
    let mut partitions = Vec::new();
    for i in 0..3 {
        let delivery = producer
            .send(
                FutureRecord::to(&topic)
                    .key("customer-7")
                    .payload(&format!("event-{i}")),
                timeout,
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
        partitions.push(delivery.partition);
    }
    // One key, one partition: the order-per-key guarantee rests on this.
    ensure!(
        partitions.windows(2).all(|w| w[0] == w[1]),
        "key spread over {partitions:?}"
    );
    let partition = partitions[0];

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut payloads = Vec::new();
    while payloads.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message within 30 s")??;
        ensure!(message.key() == Some(b"customer-7".as_slice()));
        payloads.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        consumer.commit_message(&message, CommitMode::Sync)?;
    }
    ensure!(
        payloads == ["event-0", "event-1", "event-2"],
        "out of order: {payloads:?}"
    );

    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&topic, partition);
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let offset = committed
        .find_partition(&topic, partition)
        .context("committed offset for the partition")?
        .offset();
    ensure!(
        offset == Offset::Offset(3),
        "committed offset is {offset:?}, expected 3"
    );
    Ok(())
}

#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_produce_consume_commit_in_a_group() {
    onephase_testkit::engine_not_built(Engine::Kafka, "onephase-testkit", "kafka");
}
