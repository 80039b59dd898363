//! Shared helpers of the outbox tests: workloads, a checking consumer.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, ensure};
use futures::FutureExt;
use onephase_broker::Subscriber;
use onephase_core::{Envelope, MessageId};
use onephase_outbox::{Inbox, Processed};
use onephase_store::{Db, Store};

/// `count` events spread round-robin over `keys` keys; header `n` numbers each key's events.
pub fn workload(topic: &str, count: usize, keys: usize) -> Vec<Envelope> {
    let mut per_key = vec![0_usize; keys];
    (0..count)
        .map(|i| {
            let k = i % keys;
            per_key[k] += 1;
            Envelope::builder(topic, format!("{{\"i\":{i}}}"))
                .key(format!("key-{k}"))
                .header("n", per_key[k].to_string())
                .build()
                .expect("valid envelope")
        })
        .collect()
}

/// Enqueues `events` in transactions of `per_tx`, committing each.
pub async fn enqueue_all(store: &Store, events: &[Envelope], per_tx: usize) -> anyhow::Result<()> {
    for chunk in events.chunks(per_tx) {
        match store.db() {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for e in chunk {
                    onephase_outbox::enqueue(&mut tx, e).await?;
                }
                tx.commit().await?;
            }
            Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                for e in chunk {
                    onephase_outbox::enqueue(&mut tx, e).await?;
                }
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

/// Creates the consumer's effect table (in the consumer's database).
pub async fn create_effects(store: &Store) -> anyhow::Result<()> {
    let sql =
        "CREATE TABLE effects (message_id TEXT NOT NULL, key TEXT NOT NULL, n BIGINT NOT NULL)";
    match store.db() {
        Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
        Db::Sqlite(s) => sqlx::query(sql).execute(s.writer()).await.map(drop)?,
    }
    Ok(())
}

/// A fresh JetStream stream and a durable subscriber that checks what a relay publishes to it.
pub struct NatsChecker {
    pub sub: onephase_broker::nats::NatsSubscriber,
    pub stream: CheckedStream,
}

/// The stream a [`NatsChecker`] reads; [`delete`](Self::delete) it when done.
pub struct CheckedStream {
    pub publisher: onephase_broker::nats::NatsPublisher,
    pub topic: String,
    pub name: String,
}

impl NatsChecker {
    /// A stream named `<PREFIX>_<uuid>` over the topic `<prefix>.t<uuid>`, keeping messages for
    /// `max_age`.
    pub async fn start(nats: &str, prefix: &str, max_age: Duration) -> anyhow::Result<Self> {
        use onephase_broker::nats::{NatsPublisher, NatsSubscriber, NatsSubscription};
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let topic = format!("{prefix}.t{suffix}");
        let name = format!("{}_{suffix}", prefix.to_uppercase());
        let publisher = NatsPublisher::connect(nats).await?;
        publisher
            .ensure_stream(&name, vec![topic.clone()], max_age)
            .await?;
        let sub = NatsSubscriber::subscribe(
            publisher.jetstream(),
            NatsSubscription {
                stream: name.clone(),
                durable: "checker".into(),
                filter_subject: topic.clone(),
                ack_wait: Duration::from_secs(30),
            },
        )
        .await?;
        Ok(Self {
            sub,
            stream: CheckedStream {
                publisher,
                topic,
                name,
            },
        })
    }
}

impl CheckedStream {
    /// Deletes the stream.
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.publisher
            .jetstream()
            .delete_stream(&self.name)
            .await
            .context("deleting the stream")?;
        Ok(())
    }
}

/// What a checking consumer saw.
#[derive(Debug, Default)]
pub struct Consumed {
    pub deliveries: usize,
    pub duplicates: usize,
}

/// Receives until every id in `expected` has been seen, checking on the way that each key's
/// first deliveries arrive in order (header `n`), and applying each through an inbox into
/// `effects` in `store`. Returns what it saw.
pub async fn consume_and_apply(
    sub: &mut dyn Subscriber,
    store: &Store,
    expected: &[Envelope],
    timeout: Duration,
) -> anyhow::Result<Consumed> {
    let want: HashSet<MessageId> = expected.iter().map(Envelope::id).collect();
    let mut seen: HashSet<MessageId> = HashSet::new();
    let mut last_n: HashMap<String, u64> = HashMap::new();
    let mut consumed = Consumed::default();
    let inbox = Inbox::new("checker");
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.len() < want.len() {
        let delivery = tokio::time::timeout_at(deadline, sub.next())
            .await
            .with_context(|| {
                format!(
                    "only {} of {} events arrived in time",
                    seen.len(),
                    want.len()
                )
            })??;
        consumed.deliveries += 1;
        let e = delivery.envelope().clone();
        ensure!(
            want.contains(&e.id()),
            "received an event nobody enqueued: {e:?}"
        );
        let key = e.key().context("key")?.to_owned();
        let n: u64 = e.header("n").context("header n")?.parse()?;
        if seen.insert(e.id()) {
            let prev = last_n.insert(key.clone(), n).unwrap_or(0);
            ensure!(
                n == prev + 1,
                "key {key}: event {n} arrived first after event {prev}"
            );
        }
        let applied = apply(store, &inbox, &e, &key, n).await?;
        if matches!(applied, Processed::Duplicate) {
            consumed.duplicates += 1;
        }
        delivery.ack().await?;
    }
    Ok(consumed)
}

async fn apply(
    store: &Store,
    inbox: &Inbox,
    e: &Envelope,
    key: &str,
    n: u64,
) -> anyhow::Result<Processed<()>> {
    let id = e.id().to_string();
    let n = i64::try_from(n)?;
    Ok(match store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let out = inbox
                .process(&mut tx, e, |tx| {
                    async move {
                        sqlx::query("INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)")
                            .bind(&id)
                            .bind(key)
                            .bind(n)
                            .execute(&mut **tx)
                            .await?;
                        Ok::<_, anyhow::Error>(())
                    }
                    .boxed()
                })
                .await?;
            tx.commit().await?;
            out
        }
        Db::Sqlite(s) => {
            let mut tx = s.writer().begin().await?;
            let out = inbox
                .process(&mut tx, e, |tx| {
                    async move {
                        sqlx::query("INSERT INTO effects (message_id, key, n) VALUES (?1, ?2, ?3)")
                            .bind(&id)
                            .bind(key)
                            .bind(n)
                            .execute(&mut **tx)
                            .await?;
                        Ok::<_, anyhow::Error>(())
                    }
                    .boxed()
                })
                .await?;
            tx.commit().await?;
            out
        }
    })
}

/// Checks every expected event has exactly one effect row.
pub async fn assert_effects_once(store: &Store, expected: &[Envelope]) -> anyhow::Result<()> {
    let sql = "SELECT message_id, count(*) AS c FROM effects GROUP BY message_id";
    let rows: Vec<(String, i64)> = match store.db() {
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
        Db::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.reader()).await?,
    };
    let counts: HashMap<String, i64> = rows.into_iter().collect();
    for e in expected {
        let c = counts.get(&e.id().to_string()).copied().unwrap_or(0);
        ensure!(
            c == 1,
            "event {} has {c} effects, expected exactly 1",
            e.id()
        );
    }
    ensure!(
        counts.len() == expected.len(),
        "{} effects for {} events",
        counts.len(),
        expected.len()
    );
    Ok(())
}
