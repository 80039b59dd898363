//! The sending side against real stores and a real HTTP receiver: fan-out, signatures,
//! retries and dead letters, 410 and continuous failure, ordering, concurrency and rate,
//! Retry-After and slow-down, key rotation, idempotency, refused destinations, bad input.

mod common;

use onephase_testkit::per_backend;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{Answer, TestReceiver, header};
use onephase_core::{Clock as _, ManualClock};
use onephase_testkit::TestDb;
use onephase_webhook::destination::AddressPolicy;
use onephase_webhook::policy::RetrySchedule;
use onephase_webhook::signature::{Secret, Verifier};
use onephase_webhook::{
    Dispatcher, DispatcherConfig, EndpointPatch, EndpointSpec, NewMessage, Replay, WebhookError,
    Webhooks,
};
use serde_json::json;
use time::macros::datetime;

struct Setup {
    webhooks: Webhooks,
    dispatcher: Dispatcher,
    clock: ManualClock,
}

fn local() -> AddressPolicy {
    AddressPolicy::default()
        .allow("127.0.0.0/8")
        .expect("a network")
}

async fn setup(db: &TestDb, config: DispatcherConfig) -> anyhow::Result<Setup> {
    let store = db.store().clone();
    store
        .migrate(&[
            onephase_outbox::migrations(),
            onephase_webhook::migrations(),
        ])
        .await?;
    let clock = ManualClock::new(datetime!(2026-11-28 12:00 UTC));
    let webhooks = Webhooks::new(store.clone(), local()).with_clock(Arc::new(clock.clone()));
    let dispatcher = Dispatcher::new(
        store,
        DispatcherConfig {
            policy: local(),
            seed: Some(7),
            attempt_timeout: Duration::from_secs(5),
            ..config
        },
    )?
    .with_clock(Arc::new(clock.clone()));
    Ok(Setup {
        webhooks,
        dispatcher,
        clock,
    })
}

fn immediate(attempts: usize) -> RetrySchedule {
    RetrySchedule::new(vec![Duration::ZERO; attempts], 0.0).expect("a schedule")
}

/// Runs rounds until one makes no attempt.
async fn drain(s: &Setup) -> anyhow::Result<usize> {
    let mut total = 0;
    for _ in 0..100 {
        let round = s.dispatcher.run_once().await?;
        if round.attempts == 0 {
            return Ok(total);
        }
        total += round.attempts;
    }
    anyhow::bail!("still attempting after 100 rounds")
}

per_backend! {
    #[tokio::test]
    async fn messages_fan_out_signed_to_matching_endpoints_once(db) -> anyhow::Result<()> {
        let s = setup(&db, DispatcherConfig::default()).await?;
        let rx = TestReceiver::start().await;
        let all = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("all")))
            .await?;
        let mut only_paid = EndpointSpec::new(rx.url("paid"));
        only_paid.event_types = Some(vec!["invoice.paid".into()]);
        only_paid.key = Some("whsk_".to_owned() + &base64_key());
        let paid = s.webhooks.create_endpoint(only_paid).await?;
        let mut other_app = EndpointSpec::new(rx.url("other"));
        other_app.app = Some("other".into());
        s.webhooks.create_endpoint(other_app).await?;

        let first = s
            .webhooks
            .send(&NewMessage::new("invoice.paid", json!({"n": 1})))
            .await?;
        let second = s
            .webhooks
            .send(&NewMessage::new("invoice.created", json!({"n": 2})))
            .await?;
        ensure!(
            first.endpoints == 2 && second.endpoints == 1,
            "{first:?} {second:?}"
        );
        ensure!(drain(&s).await? == 3);
        ensure!(
            drain(&s).await? == 0,
            "delivered messages are not sent again"
        );

        let at_all = rx.arrivals_at("all");
        let at_paid = rx.arrivals_at("paid");
        ensure!(at_all.len() == 2 && at_paid.len() == 1 && rx.arrivals_at("other").is_empty());
        for (endpoint, arrivals) in [(&all.id, &at_all), (&paid.id, &at_paid)] {
            let keys = s.webhooks.verifying_keys(endpoint).await?;
            let verify_keys = keys
                .iter()
                .map(|k| onephase_webhook::signature::VerifyKey::parse(&k.key))
                .collect::<Result<Vec<_>, _>>()?;
            let verifier = Verifier::new(verify_keys);
            for a in arrivals.iter() {
                verifier.verify_at(
                    &a.id(),
                    &header(&a.headers, "webhook-timestamp"),
                    &header(&a.headers, "webhook-signature"),
                    &a.body,
                    s.clock.now().unix_timestamp(),
                )?;
                let body: serde_json::Value = serde_json::from_slice(&a.body)?;
                ensure!(body["type"].is_string() && body["data"]["n"].is_number());
            }
        }
        ensure!(header(&at_paid[0].headers, "webhook-signature").starts_with("v1a,"));
        ensure!(at_paid[0].id() == first.id);

        let message = s.webhooks.message(&first.id).await?;
        ensure!(message.deliveries.len() == 2);
        ensure!(
            message
                .deliveries
                .iter()
                .all(|d| d.status == "delivered" && d.attempts == 1)
        );
        let attempts = s.webhooks.attempts(Some(&first.id), None, None, 10).await?;
        ensure!(attempts.len() == 2 && attempts.iter().all(|a| a.status_code == Some(200)));
        let stats = s.webhooks.stats(Duration::from_secs(3600)).await?;
        ensure!(
            stats.iter().any(|e| e.endpoint_id == all.id
                && e.delivered == 2
                && e.success_rate == Some(1.0))
        );
        db.close().await?;
        Ok(())
    }
}

fn base64_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7_u8; 32])
}

per_backend! {
    #[tokio::test]
    async fn failures_retry_on_schedule_then_dead_letter_and_replay(db) -> anyhow::Result<()> {
        let config = DispatcherConfig {
            schedule: RetrySchedule::new(
                vec![
                    Duration::ZERO,
                    Duration::from_secs(5),
                    Duration::from_secs(60),
                ],
                0.0,
            )?,
            ..DispatcherConfig::default()
        };
        let s = setup(&db, config).await?;
        let rx = TestReceiver::start().await;
        rx.script(|_, _| Answer::status(500));
        let ep = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("down")))
            .await?;
        let sent = s.webhooks.send(&NewMessage::new("a.b", json!(1))).await?;

        ensure!(s.dispatcher.run_once().await?.attempts == 1);
        ensure!(
            s.dispatcher.run_once().await?.attempts == 0,
            "not due for 5 s"
        );
        let pending = s.webhooks.message(&sent.id).await?.deliveries[0].clone();
        ensure!(pending.status == "pending" && pending.attempts == 1);
        ensure!(pending.next_attempt_at == Some(s.clock.now() + Duration::from_secs(5)));
        s.clock.advance(Duration::from_secs(5));
        s.clock.shift_wall(time::Duration::seconds(5));
        ensure!(s.dispatcher.run_once().await?.attempts == 1);
        s.clock.shift_wall(time::Duration::seconds(60));
        ensure!(s.dispatcher.run_once().await?.attempts == 1);
        ensure!(s.dispatcher.run_once().await?.attempts == 0, "exhausted");

        let dead = s.webhooks.dead_letters(Some(&ep.id), 10).await?;
        ensure!(dead.len() == 1 && dead[0].message_id == sent.id && dead[0].attempts == 3);
        ensure!(dead[0].last_error.as_deref() == Some("the endpoint answered 500"));
        let attempts = s.webhooks.attempts(None, Some(&ep.id), None, 10).await?;
        let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
        ensure!(outcomes == ["dead", "retry", "retry"], "{outcomes:?}");
        ensure!(s.webhooks.endpoint(&ep.id).await?.failing_since.is_some());

        rx.script(|_, _| Answer::status(204));
        let replayed = s
            .webhooks
            .replay(&Replay {
                endpoint_id: Some(ep.id.clone()),
                ..Replay::default()
            })
            .await?;
        ensure!(replayed == 1);
        ensure!(drain(&s).await? == 1);
        ensure!(s.webhooks.message(&sent.id).await?.deliveries[0].status == "delivered");
        ensure!(s.webhooks.endpoint(&ep.id).await?.failing_since.is_none());
        ensure!(
            rx.arrivals().iter().all(|a| a.id() == sent.id),
            "one webhook-id throughout"
        );
        ensure!(s.webhooks.dead_letters(None, 10).await?.is_empty());
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn gone_and_continuous_failure_disable_the_endpoint_and_say_so(db) -> anyhow::Result<()> {
        let config = DispatcherConfig {
            schedule: immediate(50),
            disable_after: Duration::from_secs(3600),
            ..DispatcherConfig::default()
        };
        let s = setup(&db, config).await?;
        let rx = TestReceiver::start().await;
        rx.script(|path, _| Answer::status(if path == "gone" { 410 } else { 503 }));
        let gone = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("gone")))
            .await?;
        let failing = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("failing")))
            .await?;
        for n in 0..3 {
            s.webhooks.send(&NewMessage::new("a.b", json!(n))).await?;
        }
        let round = s.dispatcher.run_once().await?;
        ensure!(round.disabled == vec![gone.id.clone()], "{round:?}");
        let after = s.webhooks.endpoint(&gone.id).await?;
        ensure!(
            !after.enabled
                && after
                    .disabled_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("410"))
        );
        ensure!(s.webhooks.dead_letters(Some(&gone.id), 10).await?.len() == 3);
        // Slowed down by the 503s (concurrency 10 halves to 5) but not disabled yet.
        ensure!(
            s.webhooks
                .endpoint(&failing.id)
                .await?
                .slowed_until
                .is_some()
        );
        s.clock.shift_wall(time::Duration::hours(2));
        let round = s.dispatcher.run_once().await?;
        ensure!(round.disabled == vec![failing.id.clone()], "{round:?}");
        ensure!(s.webhooks.dead_letters(Some(&failing.id), 10).await?.len() == 3);
        // Disabled endpoints get no new messages.
        ensure!(
            s.webhooks
                .send(&NewMessage::new("a.b", json!(9)))
                .await?
                .endpoints
                == 0
        );
        let events = outbox_payloads(&db).await?;
        ensure!(
            events.len() == 2 && events.iter().all(|e| e.contains("endpoint_disabled")),
            "{events:?}"
        );
        // Replay to a disabled endpoint is refused until it is enabled.
        let replay = Replay {
            endpoint_id: Some(gone.id.clone()),
            ..Replay::default()
        };
        ensure!(matches!(
            s.webhooks.replay(&replay).await,
            Err(WebhookError::Conflict(_))
        ));
        s.webhooks.enable(&gone.id).await?;
        ensure!(s.webhooks.replay(&replay).await? == 3);
        db.close().await?;
        Ok(())
    }
}

/// A send that read the endpoint as enabled and commits after the dispatcher disabled it leaves
/// a delivery the disabling could not see; the next claim dead-letters it. An endpoint disabled
/// by hand keeps its pending deliveries for when it is enabled again. Only PostgreSQL runs the
/// two transactions side by side (SQLite has one writer, so the send would hold off the disable).
#[tokio::test]
async fn a_send_racing_a_disable_ends_in_the_dead_letters() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let onephase_store::Db::Postgres(pool) = db.store().db() else {
        anyhow::bail!("not PostgreSQL");
    };
    let pool = pool.clone();
    let config = DispatcherConfig {
        schedule: immediate(5),
        ..DispatcherConfig::default()
    };
    let s = setup(&db, config).await?;
    let rx = TestReceiver::start().await;
    rx.script(|path, _| Answer::status(if path == "gone" { 410 } else { 200 }));
    let gone = s
        .webhooks
        .create_endpoint(EndpointSpec::new(rx.url("gone")))
        .await?;
    s.webhooks.send(&NewMessage::new("a.b", json!(1))).await?;

    // The send reads the endpoint as enabled, then waits while the 410 disables it.
    let mut tx = pool.begin().await?;
    let late =
        onephase_webhook::send(&mut *tx, &NewMessage::new("a.b", json!(2)), s.clock.now()).await?;
    ensure!(late.endpoints == 1);
    let round = s.dispatcher.run_once().await?;
    ensure!(round.disabled == vec![gone.id.clone()], "{round:?}");
    tx.commit().await?;
    let stray = s.webhooks.message(&late.id).await?;
    ensure!(stray.deliveries[0].status == "pending", "{stray:?}");

    // The first claim of a dispatcher sweeps; later ones at most once a second.
    let sweeper = Dispatcher::new(
        db.store().clone(),
        DispatcherConfig {
            policy: local(),
            ..DispatcherConfig::default()
        },
    )?;
    ensure!(sweeper.run_once().await?.attempts == 0);
    let swept = s.webhooks.message(&late.id).await?;
    let delivery = &swept.deliveries[0];
    ensure!(
        delivery.status == "dead"
            && delivery
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("endpoint disabled") && e.contains("410")),
        "{swept:?}"
    );
    ensure!(s.webhooks.dead_letters(Some(&gone.id), 10).await?.len() == 2);

    // Disabled by hand: the pending delivery waits, and goes out once enabled.
    rx.script(|_, _| Answer::status(200));
    s.webhooks.enable(&gone.id).await?;
    s.webhooks.disable(&gone.id, "maintenance").await?;
    let mut tx = pool.begin().await?;
    s.webhooks.enable(&gone.id).await?;
    let held =
        onephase_webhook::send(&mut *tx, &NewMessage::new("a.b", json!(3)), s.clock.now()).await?;
    s.webhooks.disable(&gone.id, "maintenance").await?;
    tx.commit().await?;
    let fresh = Dispatcher::new(
        db.store().clone(),
        DispatcherConfig {
            policy: local(),
            ..DispatcherConfig::default()
        },
    )?;
    ensure!(fresh.run_once().await?.attempts == 0);
    ensure!(s.webhooks.message(&held.id).await?.deliveries[0].status == "pending");
    s.webhooks.enable(&gone.id).await?;
    ensure!(fresh.run_once().await?.delivered == 1);
    ensure!(s.webhooks.message(&held.id).await?.deliveries[0].status == "delivered");
    drop(s);
    db.close().await?;
    Ok(())
}

async fn outbox_payloads(db: &TestDb) -> anyhow::Result<Vec<String>> {
    let sql = "SELECT payload FROM onephase_outbox ORDER BY seq";
    let rows: Vec<Vec<u8>> = match db.store().db() {
        onephase_store::Db::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await?,
        onephase_store::Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_all(s.reader()).await?,
    };
    Ok(rows
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .collect())
}

per_backend! {
    #[tokio::test]
    async fn ordered_endpoints_deliver_each_key_in_order(db) -> anyhow::Result<()> {
        let s = setup(
            &db,
            DispatcherConfig {
                schedule: immediate(10),
                ..DispatcherConfig::default()
            },
        )
        .await?;
        let rx = TestReceiver::start().await;
        // Every second request fails, so keys advance unevenly.
        rx.script(|_, n| Answer::status(if n % 2 == 0 { 500 } else { 200 }));
        let mut spec = EndpointSpec::new(rx.url("ordered"));
        spec.ordered = true;
        s.webhooks.create_endpoint(spec).await?;
        let mut ids = std::collections::HashMap::new();
        for n in 0..30 {
            let key = format!("k{}", n % 3);
            let sent = s
                .webhooks
                .send(&NewMessage::new("a.b", json!({"key": key, "n": n})).partition_key(&key))
                .await?;
            ids.insert(sent.id, (key, n));
        }
        drain(&s).await?;
        let mut delivered_order: std::collections::HashMap<String, Vec<i32>> = Default::default();
        let mut last_sent: std::collections::HashMap<String, i32> = Default::default();
        for a in rx.arrivals() {
            let (key, n) = ids.get(&a.id()).context("a known message")?.clone();
            // A key's message is never sent before the previous one of its key was answered
            // with success: so each key's sends never go backwards.
            let last = last_sent.entry(key.clone()).or_insert(-1);
            ensure!(n >= *last, "key {key}: {n} sent after {last}");
            *last = n;
            delivered_order.entry(key).or_default().push(n);
        }
        for messages in s.webhooks.messages(None, None, 100).await? {
            ensure!(s.webhooks.message(&messages.id).await?.deliveries[0].status == "delivered");
        }
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn concurrency_and_rate_limits_hold(db) -> anyhow::Result<()> {
        let s = setup(&db, DispatcherConfig::default()).await?;
        let rx = TestReceiver::start().await;
        rx.script(|_, _| Answer {
            status: 200,
            retry_after: None,
            delay: Duration::from_millis(50),
        });
        let mut narrow = EndpointSpec::new(rx.url("narrow"));
        narrow.max_concurrency = Some(2);
        s.webhooks.create_endpoint(narrow).await?;
        let mut limited = EndpointSpec::new(rx.url("limited"));
        limited.rate_limit = Some(5);
        limited.event_types = Some(vec!["rated".into()]);
        s.webhooks.create_endpoint(limited).await?;
        for n in 0..10 {
            s.webhooks.send(&NewMessage::new("plain", json!(n))).await?;
            s.webhooks.send(&NewMessage::new("rated", json!(n))).await?;
        }
        // The narrow endpoint takes every type (20 messages), 2 per round; the limited one
        // only "rated" (10), its burst of 5 and then nothing while the clock stands still.
        let mut rounds = Vec::new();
        for _ in 0..4 {
            rounds.push(s.dispatcher.run_once().await?.attempts);
        }
        ensure!(rounds == [2 + 5, 2, 2, 2], "{rounds:?}");
        ensure!(rx.max_running("narrow") <= 2);
        s.clock.shift_wall(time::Duration::seconds(1));
        ensure!(drain(&s).await? == 12 + 5);
        ensure!(rx.arrivals_at("limited").len() == 10);
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn retry_after_is_honoured_within_bounds(db) -> anyhow::Result<()> {
        let config = DispatcherConfig {
            schedule: immediate(5),
            max_retry_after: Duration::from_secs(600),
            ..DispatcherConfig::default()
        };
        let s = setup(&db, config).await?;
        let rx = TestReceiver::start().await;
        rx.script(|path, _| Answer {
            status: 429,
            retry_after: Some(if path == "short" { "120" } else { "86400" }),
            delay: Duration::ZERO,
        });
        let short = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("short")))
            .await?;
        let long = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("long")))
            .await?;
        let sent = s.webhooks.send(&NewMessage::new("a.b", json!(1))).await?;
        ensure!(s.dispatcher.run_once().await?.attempts == 2);
        let now = s.clock.now();
        for d in s.webhooks.message(&sent.id).await?.deliveries {
            let expected = if d.endpoint_id == short.id { 120 } else { 600 };
            ensure!(
                d.next_attempt_at == Some(now + Duration::from_secs(expected)),
                "{d:?}"
            );
        }
        for ep in [&short.id, &long.id] {
            ensure!(s.webhooks.endpoint(ep).await?.slowed_until.is_some());
        }
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn rotation_signs_with_old_and_new_keys_for_the_overlap(db) -> anyhow::Result<()> {
        let s = setup(&db, DispatcherConfig::default()).await?;
        let rx = TestReceiver::start().await;
        let ep = s
            .webhooks
            .create_endpoint(EndpointSpec::new(rx.url("r")))
            .await?;
        let old = s.webhooks.verifying_keys(&ep.id).await?[0].key.clone();
        let new = s
            .webhooks
            .rotate_key(&ep.id, None, Duration::from_secs(3600))
            .await?;
        ensure!(s.webhooks.verifying_keys(&ep.id).await?.len() == 2);
        s.webhooks.send(&NewMessage::new("a.b", json!(1))).await?;
        drain(&s).await?;
        let a = &rx.arrivals()[0];
        let signature = header(&a.headers, "webhook-signature");
        ensure!(signature.split(' ').count() == 2, "{signature}");
        for key in [&old, &new.key] {
            Verifier::new(vec![Secret::parse(key)?.into()]).verify_at(
                &a.id(),
                &header(&a.headers, "webhook-timestamp"),
                &signature,
                &a.body,
                s.clock.now().unix_timestamp(),
            )?;
        }
        // After the overlap only the new key signs.
        s.clock.shift_wall(time::Duration::hours(2));
        ensure!(s.webhooks.verifying_keys(&ep.id).await?.len() == 1);
        s.webhooks.send(&NewMessage::new("a.b", json!(2))).await?;
        drain(&s).await?;
        let signature = header(&rx.arrivals()[1].headers, "webhook-signature");
        ensure!(!signature.contains(' '));
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn idempotency_keys_return_the_first_message_and_refuse_reuse(db) -> anyhow::Result<()> {
        let s = setup(&db, DispatcherConfig::default()).await?;
        let rx = TestReceiver::start().await;
        s.webhooks
            .create_endpoint(EndpointSpec::new(rx.url("x")))
            .await?;
        let message = NewMessage::new("a.b", json!({"v": 1})).idempotency_key("k-1");
        let first = s.webhooks.send(&message).await?;
        let again = s.webhooks.send(&message).await?;
        ensure!(again.duplicate && again.id == first.id && again.endpoints == 0);
        let other = NewMessage::new("a.b", json!({"v": 2})).idempotency_key("k-1");
        ensure!(matches!(
            s.webhooks.send(&other).await,
            Err(WebhookError::KeyReused { .. })
        ));
        ensure!(s.webhooks.messages(None, None, 10).await?.len() == 1);
        ensure!(drain(&s).await? == 1);
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn internal_destinations_are_refused_without_traffic() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let store = db.store().clone();
    store
        .migrate(&[
            onephase_outbox::migrations(),
            onephase_webhook::migrations(),
        ])
        .await?;
    let strict = Webhooks::new(store.clone(), AddressPolicy::default());
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/x",
        "http://[::1]:9/x",
    ] {
        let refused = strict.create_endpoint(EndpointSpec::new(url)).await;
        ensure!(
            matches!(refused, Err(WebhookError::Destination(_))),
            "{url}: {refused:?}"
        );
    }
    ensure!(strict.endpoints(None, None, 10).await?.is_empty());
    // An endpoint admitted under a looser policy is still refused at delivery time by a
    // dispatcher under the default one, and the receiver sees nothing.
    let rx = TestReceiver::start().await;
    let loose = Webhooks::new(store.clone(), local());
    let ep = loose
        .create_endpoint(EndpointSpec::new(rx.url("x")))
        .await?;
    loose.send(&NewMessage::new("a.b", json!(1))).await?;
    let dispatcher = Dispatcher::new(store, DispatcherConfig::default())?;
    ensure!(dispatcher.run_once().await?.attempts == 1);
    ensure!(rx.arrivals().is_empty());
    let attempt = &loose.attempts(None, Some(&ep.id), None, 1).await?[0];
    ensure!(
        attempt
            .error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{attempt:?}"
    );
    db.close().await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let s = setup(&db, DispatcherConfig::default()).await?;
    let rx = TestReceiver::start().await;
    let bad_specs = [
        EndpointSpec::new("ftp://127.0.0.1/x"),
        EndpointSpec::new("not a url"),
        EndpointSpec::new(format!("http://user:pw@{}/x", rx.addr)),
        EndpointSpec {
            max_concurrency: Some(0),
            ..EndpointSpec::new(rx.url("x"))
        },
        EndpointSpec {
            rate_limit: Some(0),
            ..EndpointSpec::new(rx.url("x"))
        },
        EndpointSpec {
            event_types: Some(vec![]),
            ..EndpointSpec::new(rx.url("x"))
        },
        EndpointSpec {
            event_types: Some(vec!["has space".into()]),
            ..EndpointSpec::new(rx.url("x"))
        },
        EndpointSpec {
            app: Some("no/slash".into()),
            ..EndpointSpec::new(rx.url("x"))
        },
        EndpointSpec {
            key: Some("whsec_short".into()),
            ..EndpointSpec::new(rx.url("x"))
        },
    ];
    for spec in bad_specs {
        let result = s.webhooks.create_endpoint(spec.clone()).await;
        ensure!(
            matches!(result, Err(WebhookError::Invalid(_))),
            "{spec:?}: {result:?}"
        );
    }
    ensure!(s.webhooks.endpoints(None, None, 10).await?.is_empty());
    let ep = s
        .webhooks
        .create_endpoint(EndpointSpec::new(rx.url("x")))
        .await?;
    let patch = EndpointPatch {
        max_concurrency: Some(5000),
        ..EndpointPatch::default()
    };
    ensure!(matches!(
        s.webhooks.update_endpoint(&ep.id, patch).await,
        Err(WebhookError::Invalid(_))
    ));
    ensure!(s.webhooks.endpoint(&ep.id).await?.max_concurrency == 10);
    // `ordered` is fixed at creation: repeating it is fine, changing it is refused.
    let to_ordered = EndpointPatch {
        ordered: Some(true),
        max_concurrency: Some(7),
        ..EndpointPatch::default()
    };
    let refused = s.webhooks.update_endpoint(&ep.id, to_ordered).await;
    ensure!(
        matches!(&refused, Err(WebhookError::Invalid(m)) if m.contains("fixed when an endpoint is created")),
        "{refused:?}"
    );
    let unchanged = s.webhooks.endpoint(&ep.id).await?;
    ensure!(!unchanged.ordered && unchanged.max_concurrency == 10);
    let same = EndpointPatch {
        ordered: Some(false),
        max_concurrency: Some(7),
        ..EndpointPatch::default()
    };
    ensure!(
        s.webhooks
            .update_endpoint(&ep.id, same)
            .await?
            .max_concurrency
            == 7
    );
    for message in [
        NewMessage::new("", json!(1)),
        NewMessage::new("a b", json!(1)),
        NewMessage::new("a.b", json!("x".repeat(300 * 1024))),
        NewMessage::new("a.b", json!(1)).app("bad app"),
    ] {
        ensure!(s.webhooks.send(&message).await.is_err(), "{message:?}");
    }
    ensure!(s.webhooks.messages(None, None, 10).await?.is_empty());
    ensure!(matches!(
        s.webhooks.endpoint("ep_nope").await,
        Err(WebhookError::NotFound { .. })
    ));
    ensure!(matches!(
        s.webhooks.message("msg_nope").await,
        Err(WebhookError::NotFound { .. })
    ));
    ensure!(matches!(
        s.webhooks.replay(&Replay::default()).await,
        Err(WebhookError::Invalid(_))
    ));
    db.close().await?;
    Ok(())
}

#[tokio::test]
async fn https_endpoints_are_reached_over_tls() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let db = TestDb::sqlite().await?;
    let s = setup(&db, DispatcherConfig::default()).await?;
    // A listener that records the first byte of what a client sends: 0x16 opens a TLS
    // handshake record.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let first = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut byte = [0_u8; 1];
        socket.read_exact(&mut byte).await?;
        anyhow::Ok(byte[0])
    });
    let ep = s
        .webhooks
        .create_endpoint(EndpointSpec::new(format!("https://127.0.0.1:{port}/x")))
        .await?;
    s.webhooks.send(&NewMessage::new("a.b", json!(1))).await?;
    ensure!(s.dispatcher.run_once().await?.attempts == 1);
    ensure!(
        first.await?? == 0x16,
        "the dispatcher did not open a TLS handshake"
    );
    let attempt = &s.webhooks.attempts(None, Some(&ep.id), None, 1).await?[0];
    ensure!(
        attempt.status_code.is_none() && attempt.error.is_some(),
        "{attempt:?}"
    );
    db.close().await?;
    Ok(())
}

/// Sends `count` messages in one transaction, message `n` with key `k{n % keys}`; returns each
/// message id's (key, n).
async fn send_backlog(
    s: &Setup,
    count: usize,
    keys: usize,
) -> anyhow::Result<std::collections::HashMap<String, (String, usize)>> {
    let mut ids = std::collections::HashMap::new();
    let now = s.clock.now();
    let store = s.webhooks.store();
    macro_rules! send_all {
        ($tx:expr) => {{
            let mut tx = $tx;
            for n in 0..count {
                let key = format!("k{}", n % keys);
                let message = NewMessage::new("a.b", json!({"n": n})).partition_key(&key);
                let sent = onephase_webhook::send(&mut tx, &message, now).await?;
                ids.insert(sent.id, (key, n));
            }
            tx.commit().await?;
        }};
    }
    match store.db() {
        onephase_store::Db::Sqlite(sqlite) => send_all!(sqlite.writer().begin().await?),
        onephase_store::Db::Postgres(pool) => send_all!(pool.begin().await?),
    }
    Ok(ids)
}

/// A backlog of 10,000 deliveries on one endpoint whose receiver fails its first 3 requests,
/// retried on a 0, 1, 2, 4, 8 s schedule: every key must keep moving. Rounds run on a manual
/// clock that moves a second whenever a round finds nothing to do; 20 idle seconds in a row
/// (longer than any retry wait) mean a key is stuck. Keys of ordered endpoints must arrive in
/// send order. With one ordered key the deliveries are strictly one at a time, so that case
/// stops after `one_key_enough` deliveries: by then the key's head has been retried, delivered
/// and followed by the rest in order, which is what a stuck claim window prevented. 100
/// unkeyed messages sent behind the backlog must all be delivered as well.
async fn backlog_keeps_moving(db: &TestDb, ordered: bool) -> anyhow::Result<()> {
    const COUNT: usize = 10_000;
    const UNKEYED: usize = 100;
    let one_key_enough = 300;
    for keys in [1_usize, 100] {
        let s = setup(
            db,
            DispatcherConfig {
                schedule: RetrySchedule::new(
                    [0, 1, 2, 4, 8].map(Duration::from_secs).to_vec(),
                    0.0,
                )?,
                claim_batch: 500,
                max_in_flight: 500,
                ..DispatcherConfig::default()
            },
        )
        .await?;
        let rx = TestReceiver::start().await;
        rx.script(|_, n| Answer::status(if n < 3 { 500 } else { 200 }));
        let path = format!("backlog-{keys}");
        let mut spec = EndpointSpec::new(rx.url(&path));
        spec.ordered = ordered;
        spec.max_concurrency = Some(500);
        let endpoint = s.webhooks.create_endpoint(spec).await?;
        let ids = send_backlog(&s, COUNT, keys).await?;
        // Messages without a key, sent behind the backlog, go without waiting for it.
        let mut unkeyed: std::collections::HashSet<String> = Default::default();
        for n in 0..UNKEYED {
            let sent = s
                .webhooks
                .send(&NewMessage::new("a.b", json!({"unkeyed": n})))
                .await?;
            unkeyed.insert(sent.id);
        }
        let target = if ordered && keys == 1 {
            one_key_enough
        } else {
            COUNT + UNKEYED
        };
        let mut delivered: std::collections::HashSet<String> = Default::default();
        let mut idle = 0;
        while delivered.len() < target || !unkeyed.is_subset(&delivered) {
            let round = s.dispatcher.run_once().await?;
            if round.attempts == 0 {
                idle += 1;
                ensure!(
                    idle < 20,
                    "{keys} key(s), ordered {ordered}: nothing attempted for 20 s with {} of {target} delivered",
                    delivered.len()
                );
                s.clock.advance(Duration::from_secs(1));
                s.clock.shift_wall(time::Duration::seconds(1));
                continue;
            }
            idle = 0;
            delivered = rx
                .arrivals_at(&path)
                .iter()
                .filter(|a| a.status == 200)
                .map(|a| a.id())
                .collect();
        }
        let arrivals = rx.arrivals_at(&path);
        if ordered {
            // Every key's messages arrive in send order (a failed one again before the next).
            let mut last: std::collections::HashMap<&str, usize> = Default::default();
            for a in arrivals.iter().filter(|a| !unkeyed.contains(&a.id())) {
                let (key, n) = ids.get(&a.id()).context("a known message")?;
                if let Some(before) = last.insert(key, *n) {
                    ensure!(
                        *n >= before,
                        "key {key}: message {n} arrived after {before}"
                    );
                }
            }
        }
        if target == COUNT + UNKEYED {
            let stats = s.webhooks.stats(Duration::from_secs(86_400)).await?;
            let e = stats
                .iter()
                .find(|e| e.endpoint_id == endpoint.id)
                .context("the endpoint's stats")?;
            ensure!(e.pending == 0, "{keys} key(s): {} still pending", e.pending);
        }
        // The next case's messages go to its own endpoint only.
        s.webhooks.delete_endpoint(&endpoint.id).await?;
    }
    Ok(())
}

per_backend! {
    #[tokio::test]
    async fn a_retrying_key_never_blocks_an_ordered_endpoint_with_a_long_backlog(db) -> anyhow::Result<()> {
        backlog_keeps_moving(&db, true).await
    }

    #[tokio::test]
    async fn a_long_backlog_keeps_moving_on_an_unordered_endpoint(db) -> anyhow::Result<()> {
        backlog_keeps_moving(&db, false).await
    }
}

per_backend! {
    /// A dispatcher that dies mid-attempt leaves its delivery locked, and the lock is also the
    /// delivery's due time: no claim takes it before the lock's end (however often claims
    /// run), and the first claim after it sends it again with the same `webhook-id`.
    #[tokio::test]
    async fn a_delivery_whose_dispatcher_died_is_sent_again_when_its_lock_ends(db) -> anyhow::Result<()> {
        let s = setup(&db, DispatcherConfig::default()).await?;
        let rx = TestReceiver::start().await;
        // The first request is never answered in time; the dispatcher dies while it waits.
        rx.script(|_, n| Answer {
            delay: if n == 0 { Duration::from_secs(60) } else { Duration::ZERO },
            ..Answer::status(200)
        });
        s.webhooks
            .create_endpoint(EndpointSpec::new(rx.url("hold")))
            .await?;
        let sent = s
            .webhooks
            .send(&NewMessage::new("invoice.paid", json!({"n": 1})))
            .await?;
        let dying = tokio::spawn({
            let dispatcher = s.dispatcher.clone();
            async move { dispatcher.run_once().await }
        });
        for _ in 0..500 {
            if !rx.arrivals().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ensure!(rx.arrivals().len() == 1, "the first attempt never arrived");
        dying.abort();
        let _ = dying.await;

        // attempt_timeout (5 s) + lease_margin (15 s) from the claim.
        let lock = Duration::from_secs(20);
        ensure!(s.dispatcher.run_once().await?.attempts == 0, "taken while locked");
        s.clock.advance(lock - Duration::from_millis(1));
        ensure!(
            s.dispatcher.run_once().await?.attempts == 0,
            "taken a millisecond before the lock ends"
        );
        s.clock.advance(Duration::from_millis(1));
        let round = s.dispatcher.run_once().await?;
        ensure!(round.attempts == 1 && round.delivered == 1, "{round:?}");
        let arrivals = rx.arrivals();
        ensure!(arrivals.len() == 2 && arrivals.iter().all(|a| a.id() == sent.id));
        let message = s.webhooks.message(&sent.id).await?;
        ensure!(
            message.deliveries.len() == 1
                && message.deliveries[0].status == "delivered"
                && message.deliveries[0].attempts == 2,
            "{:?}",
            message.deliveries
        );
        ensure!(drain(&s).await? == 0, "delivered once more");
        db.close().await?;
        Ok(())
    }
}
