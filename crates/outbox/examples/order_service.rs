//! A service that writes an order and its `orders.created` event in one transaction, and a
//! relay that publishes the event to the embedded log, where a consumer reads it.
//!
//! ```text
//! cargo run -p onephase-outbox --example order_service                       # SQLite in a temp dir
//! cargo run -p onephase-outbox --example order_service -- postgres://postgres@127.0.0.1/test
//! ```

use std::time::Duration;

use onephase_broker::Subscriber;
use onephase_broker::log::{self, EmbeddedLog};
use onephase_core::Envelope;
use onephase_outbox::{Relay, RelayConfig};
use onephase_store::{Db, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("onephase-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("orders.db").display()));
    let store = Store::connect(&url).await?;
    store
        .migrate(&[onephase_outbox::migrations(), log::migrations()])
        .await?;

    // The business table.
    let create = "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL)";
    match store.db() {
        Db::Postgres(pool) => sqlx::query(create).execute(pool).await.map(|_| ())?,
        Db::Sqlite(s) => sqlx::query(create).execute(s.writer()).await.map(|_| ())?,
    }

    // 1. The order row and its event commit together, or not at all.
    let order_id = i64::from(std::process::id());
    let event = Envelope::builder(
        "orders.created",
        format!(r#"{{"order":{order_id},"customer":"c-7","total_cents":1999}}"#),
    )
    .key(format!("order-{order_id}"))
    .header("content-type", "application/json")
    .build()?;
    match store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3)")
                .bind(order_id)
                .bind("c-7")
                .bind(1999_i64)
                .execute(&mut *tx)
                .await?;
            onephase_outbox::enqueue(&mut tx, &event).await?;
            tx.commit().await?;
        }
        Db::Sqlite(s) => {
            let mut tx = s.writer().begin().await?;
            sqlx::query("INSERT INTO orders (id, customer, total_cents) VALUES (?1, ?2, ?3)")
                .bind(order_id)
                .bind("c-7")
                .bind(1999_i64)
                .execute(&mut *tx)
                .await?;
            onephase_outbox::enqueue(&mut tx, &event).await?;
            tx.commit().await?;
        }
    }
    println!("committed order {order_id} and event {}", event.id());

    // 2. The relay publishes committed events (here to the embedded log in the same store).
    let log = EmbeddedLog::new(store.clone());
    let relay = Relay::new(store.clone(), log.publisher(), RelayConfig::default());
    let report = relay.run_once().await?;
    println!("relay round: {report:?}");

    // 3. A consumer group reads it.
    let mut consumer = log.subscribe("orders.created", "billing").await?;
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await??;
    println!(
        "billing received {} on {} with key {:?}: {}",
        delivery.envelope().id(),
        delivery.envelope().topic(),
        delivery.envelope().key(),
        String::from_utf8_lossy(delivery.envelope().payload())
    );
    delivery.ack().await?;
    drop(consumer);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
