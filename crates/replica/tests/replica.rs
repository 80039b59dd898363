//! The router against a real PostgreSQL primary and its streaming replicas: replay paused,
//! replay delayed, a replica promoted, and tokens that are wrong.

mod common;

use std::time::{Duration, Instant};

use anyhow::ensure;
use common::*;
use onephase_core::{Classify, ErrorKind};
use onephase_replica::{
    Lsn, Policy, Reason, ReplicaError, Router, RouterConfig, State, Token, take_token,
};

fn state_of(router: &Router, replica: &str) -> State {
    router
        .status()
        .replicas
        .iter()
        .find(|r| r.name == replica)
        .map_or(State::Unknown, |r| r.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_read_your_writes_waits_then_reads_the_primary_and_comes_back()
-> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    table(&c.primary, "ryw_paused").await?;
    let router = fast(Router::new(
        "test",
        c.primary.clone(),
        [("r1".to_owned(), c.replica.clone())],
    ));
    let _monitor = monitor(&router);
    eventually(Duration::from_secs(10), "r1 in rotation", || {
        state_of(&router, "r1") == State::Healthy
    })
    .await?;

    write(&c.primary, "ryw_paused", 1).await?;
    let token = router.token().await?;
    let route = router
        .route(Policy::ReadYourWrites {
            token: Some(token),
            wait: Duration::from_secs(2),
        })
        .await?;
    ensure!(
        route.server == "r1",
        "a replaying replica serves the read: {route:?}"
    );
    ensure!(read(&route.pool, "ryw_paused").await? == 1);

    pause(&c.replica).await?;
    let bound = Duration::from_millis(300);
    for v in 2..=6 {
        write(&c.primary, "ryw_paused", v).await?;
        let token = router.token().await?;
        let started = Instant::now();
        let route = router
            .route(Policy::ReadYourWrites {
                token: Some(token),
                wait: bound,
            })
            .await?;
        let took = started.elapsed();
        let seen = read(&route.pool, "ryw_paused").await?;
        ensure!(
            seen == v,
            "read {seen} after writing {v}, through {route:?}"
        );
        ensure!(
            route.is_primary(),
            "paused replica served a read it had not replayed: {route:?}"
        );
        // The first read waits (the monitor may not have seen the pause yet); once the replica
        // is out of rotation there is nothing to wait for.
        ensure!(
            took < bound + Duration::from_secs(1),
            "a read took {took:?}"
        );
    }
    eventually(Duration::from_secs(5), "r1 paused", || {
        state_of(&router, "r1") == State::Paused
    })
    .await?;
    ensure!(
        router
            .route(Policy::BoundedStaleness(Duration::from_secs(60)))
            .await?
            .is_primary()
    );

    resume(&c.replica).await?;
    eventually(Duration::from_secs(10), "r1 back in rotation", || {
        state_of(&router, "r1") == State::Healthy
    })
    .await?;
    write(&c.primary, "ryw_paused", 7).await?;
    let token = router.token().await?;
    let route = router
        .route(Policy::ReadYourWrites {
            token: Some(token),
            wait: Duration::from_secs(2),
        })
        .await?;
    ensure!(
        route.server == "r1",
        "reads go back to the replica: {route:?}"
    );
    ensure!(read(&route.pool, "ryw_paused").await? == 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_takes_only_its_budget_when_every_replica_is_behind() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    let router = Router::new(
        "test",
        c.primary.clone(),
        [("r1".to_owned(), c.replica.clone())],
    )
    .with_config(
        RouterConfig::default()
            .with_poll_interval(Duration::from_millis(50))
            .with_fallback_ratio(0.0)
            .with_fallback_floor_per_sec(1),
    );
    let _monitor = monitor(&router);
    pause(&c.replica).await?;
    eventually(Duration::from_secs(5), "r1 paused", || {
        state_of(&router, "r1") == State::Paused
    })
    .await?;
    let (mut primary, mut refused) = (0, 0);
    for _ in 0..100 {
        match router
            .route(Policy::BoundedStaleness(Duration::from_millis(100)))
            .await
        {
            Ok(route) if route.is_primary() => primary += 1,
            Ok(route) => anyhow::bail!("a paused replica took a read: {route:?}"),
            Err(e @ ReplicaError::Overloaded { .. }) => {
                refused += 1;
                ensure!(e.kind() == ErrorKind::Unavailable);
                ensure!(e.to_string().contains("fallback budget is spent"), "{e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    resume(&c.replica).await?;
    // A floor of one per second over a ten-second window: ten reads, the rest refused at once.
    ensure!(
        primary == 10 && refused == 90,
        "primary {primary}, refused {refused}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_follows_an_injected_apply_delay() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    let heartbeat = Duration::from_millis(200);
    let router = Router::new(
        "test",
        c.primary.clone(),
        [("r1".to_owned(), c.replica.clone())],
    )
    .with_config(
        RouterConfig::default()
            .with_poll_interval(Duration::from_millis(50))
            .with_heartbeat_interval(heartbeat),
    );
    let _monitor = monitor(&router);
    eventually(Duration::from_secs(10), "r1 in rotation", || {
        state_of(&router, "r1") == State::Healthy
    })
    .await?;
    for delay_ms in [1_500u64, 3_000] {
        delay(&c.replica, delay_ms).await?;
        // Let the delay take hold: records committed before it was set replay at once.
        tokio::time::sleep(Duration::from_millis(delay_ms + 1_000)).await;
        let want = Duration::from_millis(delay_ms).as_secs_f64();
        let mut seen = Vec::new();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(110)).await;
            let status = router.status();
            let lag = status.replicas[0].lag_seconds.unwrap_or(f64::NAN);
            seen.push(lag);
        }
        let slack = heartbeat.as_secs_f64();
        ensure!(
            seen.iter().all(|lag| (lag - want).abs() <= slack),
            "delay {want} s, measured {seen:?}: not within one heartbeat interval ({slack} s)"
        );
        let bounded = router
            .route(Policy::BoundedStaleness(Duration::from_millis(500)))
            .await?;
        ensure!(
            bounded.is_primary(),
            "a replica {want} s behind served a 500 ms bound"
        );
        let loose = router
            .route(Policy::BoundedStaleness(Duration::from_secs(10)))
            .await?;
        ensure!(
            !loose.is_primary(),
            "a replica {want} s behind refused a 10 s bound"
        );
    }
    reset(&c.replica).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_foreign_and_forged_tokens_are_refused_at_once() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    let router = fast(Router::new(
        "test",
        c.primary.clone(),
        [("r1".to_owned(), c.replica.clone())],
    ));
    router.poll(false).await?;
    let real = take_token(&c.primary).await?;
    for text in [
        "",
        "op1",
        "op1.zz.00000001.0000000000000001",
        "op9.0000000000000001.00000001.0000000000000001",
    ] {
        let err = text.parse::<Token>().unwrap_err();
        ensure!(err.kind() == ErrorKind::InvalidInput, "{text:?}: {err}");
    }
    let foreign = Token::new(real.system() ^ 1, real.timeline(), real.position());
    let ahead = Token::new(
        real.system(),
        real.timeline(),
        Lsn(real.position().0 + (1 << 40)),
    );
    let future_timeline = Token::new(real.system(), real.timeline() + 5, real.position());
    let bound = Duration::from_secs(5);
    for (token, what) in [
        (foreign, "another PostgreSQL cluster"),
        (ahead, "ahead of the primary"),
        (future_timeline, "ahead of the primary"),
    ] {
        let started = Instant::now();
        let routed = router
            .route(Policy::ReadYourWrites {
                token: Some(token),
                wait: bound,
            })
            .await;
        let waited = router.wait(&token, bound).await;
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "{token}: took {:?}",
            started.elapsed()
        );
        for err in [routed.err(), waited.err()] {
            let err = err.ok_or_else(|| anyhow::anyhow!("{token} was accepted"))?;
            ensure!(err.kind() == ErrorKind::InvalidInput, "{token}: {err}");
            ensure!(err.to_string().contains(what), "{token}: {err}");
        }
    }
    Ok(())
}

/// Makes the replica on the promote port a streaming standby again (after this test, or a
/// run of it that failed half-way).
fn make_standby() -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-replica.sh");
    let status = std::process::Command::new(script)
        .args(["standby", "5436"])
        .status()?;
    ensure!(status.success(), "{script} standby 5436 failed: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_replica_during_reads_neither_hangs_nor_reads_the_past() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else {
        return Ok(());
    };
    make_standby()?;
    table(&c.primary, "ryw_promote").await?;
    let router = fast(Router::new(
        "test",
        c.primary.clone(),
        [
            ("r1".to_owned(), c.replica.clone()),
            ("r2".to_owned(), c.promote.clone()),
        ],
    ));
    let _monitor = monitor(&router);
    eventually(Duration::from_secs(10), "both replicas in rotation", || {
        state_of(&router, "r1") == State::Healthy && state_of(&router, "r2") == State::Healthy
    })
    .await?;
    let bound = Duration::from_millis(300);
    let (promoted, mut reads, mut slowest, mut on_r2_after) =
        (Instant::now(), 0u32, Duration::ZERO, 0u32);
    let mut promoted_at = None;
    for v in 1..=150i64 {
        write(&c.primary, "ryw_promote", v).await?;
        let token = router.token().await?;
        let started = Instant::now();
        let route = router
            .route(Policy::ReadYourWrites {
                token: Some(token),
                wait: bound,
            })
            .await?;
        let seen = read(&route.pool, "ryw_promote").await?;
        let took = started.elapsed();
        slowest = slowest.max(took);
        reads += 1;
        ensure!(
            seen >= v,
            "read {seen} after writing {v}, through {} ({:?})",
            route.server,
            route.reason
        );
        if promoted_at.is_some() && route.server == "r2" {
            on_r2_after += 1;
        }
        if v == 50 {
            sqlx::query("SELECT pg_promote(true, 10)")
                .execute(&c.promote)
                .await?;
            promoted_at = Some(promoted.elapsed());
        }
    }
    ensure!(
        slowest < bound + Duration::from_secs(1),
        "a read took {slowest:?}"
    );
    eventually(Duration::from_secs(5), "r2 out of rotation", || {
        state_of(&router, "r2") == State::Promoted
    })
    .await?;
    ensure!(
        reads == 150 && on_r2_after == 0,
        "{on_r2_after} reads went to r2 after its promotion"
    );

    // A router whose primary is now the promoted server, given a token from before the
    // failover: the primary, at once, and the wait API says why.
    let old = router.token().await?;
    let after = fast(Router::new(
        "failover",
        c.promote.clone(),
        [("r1".to_owned(), c.replica.clone())],
    ));
    after.poll(false).await?;
    let started = Instant::now();
    let route = after
        .route(Policy::ReadYourWrites {
            token: Some(old),
            wait: bound,
        })
        .await?;
    ensure!(
        route.is_primary() && route.reason == Reason::OlderTimeline,
        "{route:?}"
    );
    let err = after.wait(&old, bound).await.unwrap_err();
    ensure!(matches!(err, ReplicaError::Superseded { .. }), "{err}");
    ensure!(err.kind() == ErrorKind::Conflict && err.to_string().contains("before a failover"));
    ensure!(
        started.elapsed() < bound,
        "the old token was waited for: {:?}",
        started.elapsed()
    );

    make_standby()?;
    Ok(())
}
