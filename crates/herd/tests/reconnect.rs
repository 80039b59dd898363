//! `Reconnect` with real clients of real engines: Redis and PostgreSQL connections cut off
//! through the fault proxy, then reconnected once the proxy forwards again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use onephase_core::{Backoff, Jitter};
use onephase_herd::Reconnect;
use onephase_testkit::{Engine, FaultProxy, engine_url};
use sqlx::Connection as _;

fn quick(name: &str) -> Reconnect {
    Reconnect::new(name)
        .spread(Duration::from_millis(300))
        .backoff(
            Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(400),
                Jitter::Full,
            )
            .expect("valid"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_redis_clients_cut_off_together_all_reconnect() -> anyhow::Result<()> {
    const CLIENTS: usize = 40;
    let Some(url) = engine_url(Engine::Redis) else {
        return Ok(());
    };
    let (proxy, through) = FaultProxy::in_front_of(&url).await?;
    let client = redis::Client::open(through.as_str())?;
    let attempts = Arc::new(AtomicU32::new(0));
    let mut connections = Vec::new();
    for _ in 0..CLIENTS {
        connections.push(client.get_multiplexed_async_connection().await?);
    }
    proxy.cut().await;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            let (client, attempts) = (client.clone(), Arc::clone(&attempts));
            tokio::spawn(async move {
                // The cut shows up as a failed command, as it would in a service.
                let lost: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                assert!(lost.is_err(), "the proxy cut the connection");
                let mut fresh = quick("redis-test")
                    .connect(|| {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        let client = client.clone();
                        async move {
                            let mut c = client.get_multiplexed_async_connection().await?;
                            let _: String = redis::cmd("PING").query_async(&mut c).await?;
                            Ok::<_, redis::RedisError>(c)
                        }
                    })
                    .await?;
                let pong: String = redis::cmd("PING").query_async(&mut fresh).await?;
                Ok::<_, redis::RedisError>(pong)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let while_cut = attempts.load(Ordering::SeqCst);
    proxy.restore();
    for task in tasks {
        assert_eq!(task.await??, "PONG");
    }
    assert!(
        while_cut > 0,
        "clients tried while the server was unreachable"
    );
    assert!(attempts.load(Ordering::SeqCst) > while_cut);
    Ok(())
}

#[tokio::test]
async fn a_postgres_connection_reconnects_and_a_bounded_one_gives_up_with_the_error()
-> anyhow::Result<()> {
    let Some(url) = engine_url(Engine::Postgres) else {
        return Ok(());
    };
    let (proxy, through) = FaultProxy::in_front_of(&url).await?;
    proxy.cut().await;
    let refused = quick("pg-test")
        .max_attempts(3)
        .connect(|| sqlx::PgConnection::connect(&through))
        .await;
    let error = refused.expect_err("the database is unreachable");
    assert!(!error.to_string().is_empty());

    let waiting = {
        let through = through.clone();
        tokio::spawn(async move {
            quick("pg-test")
                .connect(|| sqlx::PgConnection::connect(&through))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let mut connection = waiting.await??;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await?;
    assert_eq!(one, 1);
    Ok(())
}
