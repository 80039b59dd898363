//! The token between services: service A writes and calls service B over HTTP, B reads from a
//! replica that applies WAL a second late; and a consumer of a relayed outbox message reads
//! what the producer wrote.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use common::*;
use onephase_broker::Subscriber;
use onephase_broker::log::{self as embedded, EmbeddedLog};
use onephase_core::Envelope;
use onephase_outbox::{Relay, RelayConfig};
use onephase_replica::layer::{Consistency, ConsistencyLayer};
use onephase_replica::outbox::{WithConsistency, token_of};
use onephase_replica::{HEADER, Policy, Router};
use onephase_store::Store;

const TABLE: &str = "http_orders";

async fn serve(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// Service B: reads the order from a replica, with the request's token when `honour`.
async fn service_b(router: Router, honour: bool) -> anyhow::Result<SocketAddr> {
    async fn show(
        Extract((router, honour)): Extract<(Router, bool)>,
        Extension(consistency): Extension<Consistency>,
    ) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
        let token = if honour { consistency.token() } else { None };
        let policy = Policy::ReadYourWrites {
            token,
            wait: Duration::from_secs(3),
        };
        let route = router
            .route(policy)
            .await
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let v = read(&route.pool, TABLE)
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(Json(serde_json::json!({ "v": v, "server": route.server })))
    }
    let app = axum::Router::new()
        .route("/order", get(show))
        .layer(ConsistencyLayer)
        .with_state((router, honour));
    serve(app).await
}

/// Service A: writes the order on the primary, then asks B for it, handing on the token.
async fn service_a(router: Router, b: SocketAddr) -> anyhow::Result<SocketAddr> {
    async fn place(
        Extract((router, b)): Extract<(Router, SocketAddr)>,
        Extension(consistency): Extension<Consistency>,
        Path(v): Path<i64>,
    ) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
        let fail = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
        write(router.primary(), TABLE, v)
            .await
            .map_err(|e| fail(e.to_string()))?;
        consistency.advance(router.token().await.map_err(|e| fail(e.to_string()))?);
        let mut call = reqwest::Client::new().get(format!("http://{b}/order"));
        if let Some(value) = consistency.header_value() {
            call = call.header(HEADER, value);
        }
        let answer = call.send().await.map_err(|e| fail(e.to_string()))?;
        let body: serde_json::Value = answer.json().await.map_err(|e| fail(e.to_string()))?;
        Ok(Json(body))
    }
    let app = axum::Router::new()
        .route("/order/{v}", post(place))
        .layer(ConsistencyLayer)
        .with_state((router, b));
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_travels_through_an_http_call() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    table(&c.primary, TABLE).await?;
    let router = fast(Router::new(
        "http",
        c.primary.clone(),
        [("r1".to_owned(), c.replica.clone())],
    ))
    .with_config(
        onephase_replica::RouterConfig::default().with_poll_interval(Duration::from_millis(50)),
    );
    let _monitor = monitor(&router);
    // A steady 500 ms delay: inside max_lag, so the replica stays in rotation and takes reads.
    delay(&c.replica, 500).await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let naive_b = service_b(router.clone(), false).await?;
    let b = service_b(router.clone(), true).await?;
    let a_naive = service_a(router.clone(), naive_b).await?;
    let a = service_a(router.clone(), b).await?;
    let client = reqwest::Client::new();
    let (mut stale, mut from_replica) = (0, 0);
    for v in 1..=10i64 {
        for (service, honours) in [(a_naive, false), (a, true)] {
            let answer = client
                .post(format!("http://{service}/order/{v}"))
                .send()
                .await?;
            ensure!(answer.status() == 200, "{}", answer.text().await?);
            let token = answer
                .headers()
                .get(HEADER)
                .context("A's response carries the token")?;
            ensure!(token.to_str()?.parse::<onephase_replica::Token>().is_ok());
            let body: serde_json::Value = answer.json().await?;
            let seen = body["v"].as_i64().context("v")?;
            if honours {
                ensure!(seen == v, "B read {seen} after A wrote {v}: {body}");
                from_replica += u32::from(body["server"] == "r1");
            } else if seen != v {
                stale += 1;
            }
        }
    }
    reset(&c.replica).await?;
    ensure!(
        stale > 0,
        "the naive B never read a stale order: the delay did not take hold"
    );
    ensure!(
        from_replica > 0,
        "B never read from the replica: the token made every read go to the primary"
    );
    // A malformed token: 400, before the handler runs.
    let answer = client
        .get(format!("http://{b}/order"))
        .header(HEADER, "op1.nope")
        .send()
        .await?;
    ensure!(answer.status() == 400);
    ensure!(answer.text().await?.contains("not a consistency token"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_travels_through_an_outbox_message() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    table(&c.primary, "outbox_orders").await?;
    let store = Store::connect(&c.urls[0]).await?;
    store
        .migrate(&[onephase_outbox::migrations(), embedded::migrations()])
        .await?;
    let router = fast(Router::new(
        "outbox",
        c.primary.clone(),
        [("r1".to_owned(), c.replica.clone())],
    ))
    .with_config(
        onephase_replica::RouterConfig::default().with_poll_interval(Duration::from_millis(50)),
    );
    let _monitor = monitor(&router);
    delay(&c.replica, 1_000).await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let topic = format!("orders-{}", std::process::id());
    let log = EmbeddedLog::new(store.clone()).with_poll_interval(Duration::from_millis(20));
    let mut consumer = log.subscribe(&topic, "consumer").await?;
    let relay = Relay::new(
        store.clone(),
        WithConsistency::new(log.publisher(), c.primary.clone()),
        RelayConfig {
            poll_interval: Some(Duration::from_millis(20)),
            ..RelayConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        relay
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });

    for v in 1..=5i64 {
        // The business write and the message in one transaction of the producer.
        let mut tx = c.primary.begin().await?;
        sqlx::query("UPDATE outbox_orders SET v = $1 WHERE id = 1")
            .bind(v)
            .execute(&mut *tx)
            .await?;
        let event = Envelope::builder(topic.as_str(), format!("{{\"v\":{v}}}")).build()?;
        onephase_outbox::enqueue(&mut *tx, &event).await?;
        tx.commit().await?;

        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await??;
        let token = token_of(delivery.envelope())
            .with_context(|| format!("the message carries a token: {:?}", delivery.envelope()))??;
        let naive = read(&c.replica, "outbox_orders").await?;
        let route = router
            .route(Policy::ReadYourWrites {
                token: Some(token),
                wait: Duration::from_secs(3),
            })
            .await?;
        let seen = read(&route.pool, "outbox_orders").await?;
        ensure!(
            seen == v,
            "consumer read {seen} for the message of {v} (via {})",
            route.server
        );
        ensure!(
            naive < v,
            "the replica already had {v}: the delay did not take hold"
        );
        delivery.ack().await?;
    }
    let _ = stop.send(());
    reset(&c.replica).await?;
    Ok(())
}
