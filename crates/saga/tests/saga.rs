//! Sagas against real stores and real HTTP participants: the worked order example, operator
//! actions, versions, idempotent starts, bad input, takeover after a crash mid-call, and two
//! orchestrators sharing one PostgreSQL.

mod common;

use onephase_testkit::per_backend;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;
use onephase_core::{Backoff, Classify, ErrorKind, Jitter};
use onephase_saga::{
    Audit, Call, Orchestrator, OrchestratorConfig, RunFilter, RunState, SagaError, SagaSpec,
    StartRequest, StepError, StepStatus, step,
};
use onephase_store::{Db, Store};
use onephase_testkit::TestDb;
use serde_json::{Value, json};
use uuid::Uuid;

async fn migrated(db: &TestDb) -> anyhow::Result<Store> {
    let store = db.store().clone();
    store
        .migrate(&[onephase_outbox::migrations(), onephase_saga::migrations()])
        .await?;
    Ok(store)
}

fn config() -> OrchestratorConfig {
    OrchestratorConfig {
        poll_interval: Some(Duration::from_millis(10)),
        lease_margin: Duration::from_millis(500),
        stored_definitions: true,
        ..OrchestratorConfig::default()
    }
}

/// Drives until no run is running or compensating.
async fn settle(orchestrator: &Orchestrator, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        orchestrator.run_once().await?;
        let counts = orchestrator.admin().counts().await?;
        let active = counts.get(&RunState::Running).copied().unwrap_or(0)
            + counts.get(&RunState::Compensating).copied().unwrap_or(0);
        if active == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "runs still active after {within:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn count(store: &Store, sql: &str) -> anyhow::Result<i64> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    Ok(match store.db() {
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Db::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.reader()).await?,
    })
}

async fn order_saga(store: &Store, participants: &Participants) -> anyhow::Result<Orchestrator> {
    let orchestrator = Orchestrator::new(store.clone(), config()).with_seed(7);
    let spec = SagaSpec::from_json(&order_definition(&participants.base(), 1, 2000))?;
    orchestrator.register_spec(&spec).await?;
    Ok(orchestrator)
}

per_backend! {
    #[tokio::test]
    async fn shipment_failure_compensates_in_reverse_and_the_books_balance(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let participants = Participants::start().await?;
        let orchestrator = order_saga(&store, &participants).await?;
        let failed = orchestrator
            .start(StartRequest::new(
                "order",
                order_input(1, Some("ship"), None, &[("charge", "action", 1)], 0),
            ))
            .await?;
        let shipped = orchestrator
            .start(StartRequest::new(
                "order",
                order_input(2, None, None, &[], 0),
            ))
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;

        let admin = orchestrator.admin();
        let run = admin.show(failed.id).await?;
        ensure!(
            run.run.state == RunState::Compensated,
            "{}: {:?}",
            db.url(),
            run
        );
        ensure!(
            run.run.error.as_deref().is_some_and(|e| e.contains("ship")),
            "the error names the failed step: {:?}",
            run.run.error
        );
        let done = admin.show(shipped.id).await?;
        ensure!(done.run.state == RunState::Completed, "{done:?}");

        {
            let books = participants.books();
            let net = books.net();
            for service in ["inventory", "payment", "shipping"] {
                ensure!(
                    net.get(&(service.to_owned(), 1)).copied().unwrap_or(0) == 0,
                    "order 1 must balance at {service}: {net:?}"
                );
            }
            ensure!(net.get(&("inventory".to_owned(), 2)) == Some(&2), "{net:?}");
            ensure!(
                net.get(&("payment".to_owned(), 2)) == Some(&1999),
                "{net:?}"
            );
            ensure!(net.get(&("shipping".to_owned(), 2)) == Some(&1), "{net:?}");
            // Reverse order: the refund (charge's compensation) before the release (reserve's).
            let seq = |op: &str| {
                books
                    .applied
                    .values()
                    .find(|e| e.order == 1 && e.op == op)
                    .map(|e| e.seq)
            };
            let (refund, release) = (seq("refund"), seq("release"));
            ensure!(
                refund.is_some() && release.is_some() && refund < release,
                "refund {refund:?} must come before release {release:?}"
            );
            ensure!(books.overlaps.is_empty() && books.repeated_attempts.is_empty());
        }

        // The history tells the story, and every transition went to the outbox in order.
        let events: Vec<&str> = run.history.iter().map(|h| h.event.as_str()).collect();
        ensure!(events.first() == Some(&"run_started"), "{events:?}");
        ensure!(events.last() == Some(&"run_compensated"), "{events:?}");
        ensure!(
            events.contains(&"step_retrying"),
            "charge failed once: {events:?}"
        );
        ensure!(events.contains(&"run_compensating"), "{events:?}");
        let outbox = count(
            &store,
            &format!(
                "SELECT count(*) FROM onephase_outbox WHERE topic = 'onephase.saga' AND key = '{}'",
                failed.id
            ),
        )
        .await?;
        ensure!(
            outbox == i64::try_from(run.history.len())?,
            "{outbox} outbox events for {} history entries",
            run.history.len()
        );
        let timed = run
            .history
            .iter()
            .filter(|h| h.event == "step_succeeded")
            .all(|h| h.elapsed_ms.is_some());
        ensure!(timed, "outcomes carry their timing");
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_compensation_that_keeps_failing_waits_for_an_operator(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let participants = Participants::start().await?;
        let orchestrator = order_saga(&store, &participants).await?;
        let admin = orchestrator.admin();
        let start = |order: i64| {
            StartRequest::new(
                "order",
                order_input(order, Some("ship"), Some("reserve"), &[], 0),
            )
        };
        let stuck = orchestrator.start(start(1)).await?;
        let aborted = orchestrator.start(start(2)).await?;
        // The release fails 8 times: parked after 6, done on the operator's retry.
        let recovers = orchestrator
            .start(StartRequest::new(
                "order",
                order_input(3, Some("ship"), None, &[("reserve", "compensation", 8)], 0),
            ))
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;

        let run = admin.show(stuck.id).await?;
        ensure!(run.run.state == RunState::NeedsOperator, "{run:?}");
        let release = run
            .steps
            .iter()
            .find(|s| s.step == "reserve" && s.phase == onephase_saga::Phase::Compensation)
            .context("the release was attempted")?;
        ensure!(
            release.status == StepStatus::Failed && release.attempts == 6,
            "{release:?}"
        );
        let retries = run
            .history
            .iter()
            .filter(|h| h.event == "step_retrying" && h.step.as_deref() == Some("reserve"))
            .count();
        ensure!(retries == 5, "the error history is kept: {retries} retries");
        // The refund went through; only the release is stuck.
        ensure!(participants.books().net().get(&("payment".into(), 1)) == Some(&0));

        // Listed first for an operator.
        let parked = admin
            .list(&RunFilter {
                state: Some(RunState::NeedsOperator),
                ..RunFilter::default()
            })
            .await?;
        ensure!(parked.len() == 3, "{parked:?}");
        let active = admin.active_counts().await?;
        ensure!(
            active.get(&RunState::NeedsOperator) == Some(&3) && active.len() == 1,
            "only the states runs leave are counted: {active:?}"
        );
        ensure!(
            release
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("(attempt 6 of 6; giving up)")),
            "{release:?}"
        );

        // A retry that succeeds: the run shows what is true now, the history what happened.
        admin
            .retry(recovers.id, &Audit::new("alice", "inventory is back"))
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let run = admin.show(recovers.id).await?;
        ensure!(run.run.state == RunState::Compensated, "{:?}", run.run);
        let error = run.run.error.as_deref().unwrap_or_default();
        ensure!(
            error.starts_with("step \"ship\" failed") && !error.contains("compensation"),
            "a compensated run says why it compensated, not what once parked it: {error}"
        );
        let release = run
            .steps
            .iter()
            .find(|s| s.step == "reserve" && s.phase == onephase_saga::Phase::Compensation)
            .context("release")?;
        ensure!(
            release.status == StepStatus::Succeeded
                && release.attempts == 9
                && release.last_error.is_none(),
            "a succeeded step keeps no error: {release:?}"
        );
        ensure!(
            run.history
                .iter()
                .filter(|h| h.event == "step_retrying" || h.event == "step_failed")
                .count()
                >= 8,
            "the failures stay in the history"
        );

        // Retry: it fails six more times and parks again.
        let audit = Audit::new("alice", "inventory service redeployed");
        admin.retry(stuck.id, &audit).await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let run = admin.show(stuck.id).await?;
        ensure!(run.run.state == RunState::NeedsOperator, "{:?}", run.run);
        let release = run
            .steps
            .iter()
            .find(|s| s.step == "reserve" && s.phase == onephase_saga::Phase::Compensation)
            .context("release")?;
        ensure!(release.attempts == 12, "a fresh budget of 6: {release:?}");
        ensure!(
            release.last_error.as_deref().is_some_and(
                |e| e.contains("(attempt 6 of 6 since the operator's retry; giving up)")
            ),
            "attempts count from the retry: {release:?}"
        );

        // Resolve by hand: the run finishes compensated, with the audit trail.
        let bad_step = admin
            .resolve(stuck.id, "ship", &Audit::new("alice", "x"))
            .await
            .expect_err("ship has no failed compensation");
        ensure!(bad_step.kind() == ErrorKind::NotFound, "{bad_step}");
        let no_note = admin
            .resolve(stuck.id, "reserve", &Audit::new("alice", " "))
            .await
            .expect_err("a note is required");
        ensure!(no_note.kind() == ErrorKind::InvalidInput, "{no_note}");
        admin
            .resolve(
                stuck.id,
                "reserve",
                &Audit::new("alice", "released reservation 1 by hand in the admin UI"),
            )
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let run = admin.show(stuck.id).await?;
        ensure!(run.run.state == RunState::Compensated, "{:?}", run.run);
        let audit_entries: Vec<_> = run
            .history
            .iter()
            .filter(|h| h.actor.is_some())
            .map(|h| (h.event.as_str(), h.actor.as_deref(), h.detail.as_deref()))
            .collect();
        ensure!(
            audit_entries.contains(&(
                "operator_resolve",
                Some("alice"),
                Some("released reservation 1 by hand in the admin UI")
            )),
            "{audit_entries:?}"
        );
        ensure!(audit_entries.iter().any(|e| e.0 == "operator_retry"));

        // Abort ends the other run; acting on a run that is not parked is refused.
        admin
            .abort(aborted.id, &Audit::new("bob", "written off"))
            .await?;
        let run = admin.show(aborted.id).await?;
        ensure!(run.run.state == RunState::Aborted && run.run.finished_at.is_some());
        let again = admin
            .retry(aborted.id, &Audit::new("bob", "again"))
            .await
            .expect_err("not parked");
        ensure!(matches!(again, SagaError::NotParked { .. }), "{again}");
        let unknown = admin
            .retry(Uuid::now_v7(), &Audit::new("bob", "?"))
            .await
            .expect_err("unknown run");
        ensure!(unknown.kind() == ErrorKind::NotFound, "{unknown}");
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn starts_are_idempotent_and_bad_input_starts_nothing(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let participants = Participants::start().await?;
        let orchestrator = order_saga(&store, &participants).await?;
        let input = order_input(1, None, None, &[], 0);
        let first = orchestrator
            .start(StartRequest::new("order", input.clone()).idempotency_key("order-1"))
            .await?;
        let second = orchestrator
            .start(StartRequest::new("order", input.clone()).idempotency_key("order-1"))
            .await?;
        ensure!(first.created && !second.created && first.id == second.id);

        let mismatch = orchestrator
            .start(
                StartRequest::new("order", order_input(9, None, None, &[], 0))
                    .idempotency_key("order-1"),
            )
            .await
            .expect_err("another input under the same key");
        ensure!(
            mismatch.kind() == ErrorKind::Conflict && mismatch.to_string().contains("order-1"),
            "{mismatch}"
        );
        let unknown = orchestrator
            .start(StartRequest::new("nope", json!({})))
            .await
            .expect_err("unknown saga");
        ensure!(unknown.kind() == ErrorKind::NotFound, "{unknown}");
        let unknown_version = orchestrator
            .start(StartRequest::new("order", input.clone()).version(9))
            .await
            .expect_err("unknown version");
        ensure!(
            unknown_version.kind() == ErrorKind::NotFound,
            "{unknown_version}"
        );
        let missing = orchestrator
            .start(StartRequest::new("order", json!({"order": 1})))
            .await
            .expect_err("input without the fields the templates read");
        ensure!(
            missing.kind() == ErrorKind::InvalidInput
                && missing.to_string().contains("input.amount.reserve"),
            "{missing}"
        );
        let runs = count(&store, "SELECT count(*) FROM onephase_saga_runs").await?;
        ensure!(runs == 1, "only the first start created a run: {runs}");
        db.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn invalid_definitions_are_refused_with_the_rule_they_break() -> anyhow::Result<()> {
    let call = json!({"method": "POST", "url": "http://127.0.0.1:9/x"});
    let step = |name: &str, kind: &str, compensation: bool| {
        let mut s = json!({"name": name, "kind": kind, "action": call});
        if compensation {
            s["compensation"] = call.clone();
        }
        s
    };
    let doc = |steps: Value| json!({"name": "order", "version": 1, "steps": steps}).to_string();
    let cases = [
        (
            doc(json!([
                step("ship", "pivot", false),
                step("reserve", "compensatable", true)
            ])),
            "comes after the pivot",
        ),
        (
            doc(json!([step("ship", "pivot", true)])),
            "has a compensation",
        ),
        (
            doc(json!([step("reserve", "compensatable", false)])),
            "has no compensation",
        ),
        (
            doc(json!([
                step("a", "pivot", false),
                step("b", "pivot", false)
            ])),
            "at most one pivot",
        ),
        (
            doc(json!([
                step("a", "retriable", false),
                step("b", "pivot", false)
            ])),
            "after another pivot or a retriable step",
        ),
        (
            doc(json!([
                step("a", "compensatable", true),
                step("a", "compensatable", true)
            ])),
            "used twice",
        ),
        (
            doc(
                json!([{"parallel": [step("a", "compensatable", true), step("b", "pivot", false)]}]),
            ),
            "mixes",
        ),
        (doc(json!([])), "at least one step"),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://x/{{steps.b.output.id}}"}},
                       step("b", "retriable", false)])),
            "has not run yet",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://x/{{nothing}}"}}])),
            "is not input",
        ),
        // Where a call goes is the definition's, never a run's input.
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://{{input.host}}:17879/x"}}])),
            "placeholders may only follow the host",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://api{{input.n}}.shop/x"}}])),
            "placeholders may only follow the host",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://shop:{{input.port}}/x"}}])),
            "placeholders may only follow the host",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://shop{{input.path}}"}}])),
            "placeholders may only follow the host",
        ),
        // A header value with a line break would make every call an invalid request.
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://x/a",
                                   "headers": {"x-note": "a\r\nx-evil: 1"}}}])),
            "HTTP headers do not allow",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://x", "success": [200], "retry": [200]}}])),
            "in both",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "POST", "url": "http://x", "retry": ["6xx"]}}])),
            "class",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot",
                        "action": {"method": "BREW", "url": "http://x"}}])),
            "method",
        ),
        (
            doc(
                json!([{"name": "a", "kind": "pivot", "action": {"method": "GET", "url": "ftp://x"}}]),
            ),
            "http://",
        ),
        (
            doc(json!([{"name": "a", "kind": "pivot", "action": call, "retries": 3}])),
            "unknown field",
        ),
        (doc(json!([step("bad name", "pivot", false)])), "step name"),
        (
            "{\"name\": \"order\", \"version\": 0, \"steps\": []}".to_owned(),
            "version",
        ),
        ("{not json".to_owned(), "not valid JSON"),
    ];
    let db = TestDb::sqlite().await?;
    let store = migrated(&db).await?;
    let orchestrator = Orchestrator::new(store.clone(), config());
    for (document, expected) in &cases {
        let error = match SagaSpec::from_json(document) {
            Err(e) => SagaError::from(e),
            Ok(spec) => orchestrator
                .register_spec(&spec)
                .await
                .expect_err("invalid definition registered"),
        };
        ensure!(
            error.to_string().contains(expected) && error.kind() == ErrorKind::InvalidInput,
            "{document}: expected {expected:?} in {error}"
        );
    }
    ensure!(orchestrator.stored_definitions().await?.is_empty());

    // TOML works too, with the same rules.
    let toml = r#"
        name = "order"
        version = 1
        [[steps]]
        name = "reserve"
        kind = "compensatable"
        action = { method = "POST", url = "http://127.0.0.1:9/reserve" }
        compensation = { method = "POST", url = "http://127.0.0.1:9/release" }
        [[steps]]
        parallel = [
          { name = "charge", kind = "compensatable", action = { method = "POST", url = "http://127.0.0.1:9/c" }, compensation = { method = "POST", url = "http://127.0.0.1:9/r" } },
          { name = "points", kind = "compensatable", action = { method = "POST", url = "http://127.0.0.1:9/p" }, compensation = { method = "POST", url = "http://127.0.0.1:9/u" } },
        ]
        [[steps]]
        name = "ship"
        kind = "pivot"
        action = { method = "POST", url = "http://127.0.0.1:9/ship" }
    "#;
    let spec = SagaSpec::from_toml(toml)?;
    ensure!(orchestrator.register_spec(&spec).await?.created);
    ensure!(
        !orchestrator.register_spec(&spec).await?.created,
        "same document again: no-op"
    );
    let changed = SagaSpec::from_toml(&toml.replace("/ship", "/send"))?;
    let conflict = orchestrator
        .register_spec(&changed)
        .await
        .expect_err("another document under version 1");
    ensure!(
        matches!(conflict, SagaError::VersionConflict { next: 2, .. }),
        "{conflict}"
    );
    db.close().await?;
    Ok(())
}

per_backend! {
    #[tokio::test]
    async fn a_run_finishes_on_the_version_it_started_with(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let participants = Participants::start().await?;
        let orchestrator = order_saga(&store, &participants).await?;
        let old = orchestrator
            .start(StartRequest::new(
                "order",
                order_input(1, None, None, &[], 0),
            ))
            .await?;
        // Version 2 ships through another service path; version 1's run must not use it.
        let v2 = order_definition(&participants.base(), 2, 2000).replace("/shipping/", "/courier/");
        orchestrator
            .register_spec(&SagaSpec::from_json(&v2)?)
            .await?;
        let new = orchestrator
            .start(StartRequest::new(
                "order",
                order_input(2, None, None, &[], 0),
            ))
            .await?;
        ensure!(old.version == 1 && new.version == 2);
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let net = participants.books().net();
        ensure!(net.get(&("shipping".to_owned(), 1)) == Some(&1), "{net:?}");
        ensure!(net.get(&("courier".to_owned(), 2)) == Some(&1), "{net:?}");
        ensure!(!net.contains_key(&("courier".to_owned(), 1)), "{net:?}");
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    /// An orchestrator dies mid-call (its future is dropped while the participant holds the
    /// request); after its lease lapses another takes over and repeats the attempt under the same
    /// idempotency key, counted as a new attempt.
    #[tokio::test]
    async fn a_crashed_orchestrators_run_is_taken_over_with_the_same_key(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let calls: Arc<std::sync::Mutex<Vec<(String, u32)>>> = Arc::default();
        let first_call = Arc::new(AtomicU32::new(0));
        let action = {
            let calls = calls.clone();
            let first_call = first_call.clone();
            move |call: Call| {
                let calls = calls.clone();
                let first_call = first_call.clone();
                async move {
                    calls
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((call.idempotency_key.clone(), call.attempt));
                    if first_call.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first attempt hangs, as if the process froze mid-call.
                        std::future::pending::<()>().await;
                    }
                    Ok::<Value, StepError>(json!({"ok": true}))
                }
            }
        };
        let definition = || {
            onephase_saga::Saga::builder("crash", 1)
                .step(step::compensatable(
                    "reserve",
                    action.clone(),
                    |_: Call| async { Ok(Value::Null) },
                ))
                .pivot(
                    step::pivot("ship", |_: Call| async { Ok(json!(1)) })
                        .timeout(Duration::from_secs(1)),
                )
                .build()
        };
        let config = OrchestratorConfig {
            lease_margin: Duration::from_millis(300),
            ..config()
        };
        let a = Orchestrator::new(store.clone(), config.clone());
        a.register(definition()?)?;
        let b = Orchestrator::new(store.clone(), config);
        b.register(definition()?)?;
        let run = a
            .start(StartRequest::new("crash", json!({})).idempotency_key("k"))
            .await?;
        // A claims and calls; we "kill" it by dropping its future mid-call.
        let killed = tokio::time::timeout(Duration::from_millis(300), a.run_once()).await;
        ensure!(killed.is_err(), "the first attempt hangs");
        let detail = a.admin().show(run.id).await?;
        let reserve = &detail.steps[0];
        ensure!(
            reserve.status == StepStatus::Started && reserve.attempts == 1,
            "the start was committed before the call: {reserve:?}"
        );
        // B cannot take it while A's lease (30 s action timeout + margin) holds.
        ensure!(b.run_once().await? == 0, "B must not claim a leased run");
        // Expire the lease as time would: move claimed_until into the past.
        match store.db() {
            Db::Postgres(pool) => {
                sqlx::query(
                    "UPDATE onephase_saga_runs SET claimed_until = now() - interval '1 second'",
                )
                .execute(pool)
                .await?;
            }
            Db::Sqlite(s) => {
                sqlx::query("UPDATE onephase_saga_runs SET claimed_until = 0")
                    .execute(s.writer())
                    .await?;
            }
        }
        settle(&b, Duration::from_secs(10)).await?;
        let detail = b.admin().show(run.id).await?;
        ensure!(detail.run.state == RunState::Completed, "{:?}", detail.run);
        let calls = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let key = format!("{}/reserve/action", run.id);
        ensure!(
            calls == vec![(key.clone(), 1), (key, 2)],
            "same key, next attempt: {calls:?}"
        );
        ensure!(
            detail.history.iter().any(|h| h
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("interrupted"))),
            "the interrupted attempt is in the history"
        );
        db.close().await?;
        Ok(())
    }
}

/// Two orchestrators on one PostgreSQL, each with its own pool, share 300 runs with slow and
/// flaky participants: no invocation is ever in flight twice, no (key, attempt) is made twice,
/// every run ends as its plan says, and both did work.
#[tokio::test]
async fn two_orchestrators_never_run_the_same_attempt_concurrently() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let store = migrated(&db).await?;
    let participants = Participants::start().await?;
    let a = order_saga(&store, &participants).await?;
    let second_store = Store::connect(db.url()).await?;
    let b = Orchestrator::new(
        second_store.clone(),
        OrchestratorConfig {
            concurrency: 32,
            ..config()
        },
    );
    let mut expected = HashMap::new();
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % 100
    };
    for order in 0..300 {
        let refuse = match next() {
            0..10 => Some("ship"),
            10..15 => Some("charge"),
            _ => None,
        };
        let flaky = [
            ("charge", "action", u32::from(next() < 20)),
            ("reserve", "compensation", u32::from(next() < 30) * 2),
        ];
        let delay = next() % 15;
        let run = a
            .start(StartRequest::new(
                "order",
                order_input(order, refuse, None, &flaky, delay),
            ))
            .await?;
        expected.insert(run.id, expected_state(refuse, None));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = |o: Orchestrator| {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            o.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        })
    };
    let (ta, tb) = (run(a.clone()), run(b.clone()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = a.admin().counts().await?;
        let active = counts.get(&RunState::Running).copied().unwrap_or(0)
            + counts.get(&RunState::Compensating).copied().unwrap_or(0);
        if active == 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "still active: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    ta.await?;
    tb.await?;
    {
        let books = participants.books();
        ensure!(
            books.overlaps.is_empty(),
            "{} invocations were in flight twice, e.g. {:?}",
            books.overlaps.len(),
            books.overlaps.iter().take(3).collect::<Vec<_>>()
        );
        ensure!(
            books.repeated_attempts.is_empty(),
            "{} attempts were made twice, e.g. {:?}",
            books.repeated_attempts.len(),
            books.repeated_attempts.iter().take(3).collect::<Vec<_>>()
        );
    }
    for (id, want) in &expected {
        let state = a.admin().show(*id).await?.run.state;
        ensure!(state == *want, "run {id}: {state} but expected {want}");
    }
    ensure!(
        a.stats().attempts() > 100 && b.stats().attempts() > 100,
        "both worked: {} and {} attempts",
        a.stats().attempts(),
        b.stats().attempts()
    );
    second_store.close().await;
    db.close().await?;
    Ok(())
}

/// Calls wait on it until it is given permits.
type Gate = Arc<tokio::sync::Semaphore>;

/// Steps that log every call as (key, attempt, fencing token) and hold the calls `held`
/// names until the test opens their gate.
#[derive(Clone, Default)]
struct Gated {
    calls: Arc<std::sync::Mutex<Vec<(String, u32, u64)>>>,
    gates: Arc<std::sync::Mutex<HashMap<(String, u32), Gate>>>,
}

impl Gated {
    /// Calls of `step` at `attempt` wait until [`open`](Self::open).
    fn hold(&self, step: &str, attempt: u32) {
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (step.to_owned(), attempt),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
    }

    fn open(&self, step: &str, attempt: u32) {
        if let Some(gate) = self
            .gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(step.to_owned(), attempt))
        {
            gate.add_permits(1000);
        }
    }

    fn calls(&self) -> Vec<(String, u32, u64)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn step(
        &self,
        name: &'static str,
    ) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Value, StepError>>
    + Send
    + Sync
    + 'static {
        let this = self.clone();
        move |call: Call| {
            let this = this.clone();
            Box::pin(async move {
                this.calls.lock().unwrap_or_else(|e| e.into_inner()).push((
                    call.idempotency_key.clone(),
                    call.attempt,
                    call.fencing_token,
                ));
                let gate = this
                    .gates
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(name.to_owned(), call.attempt))
                    .cloned();
                if let Some(gate) = gate {
                    let _ = gate.acquire().await;
                }
                Ok(json!({"by": name}))
            })
        }
    }
}

async fn wait_for_call(gated: &Gated, what: &str, attempt: u32, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gated
        .calls()
        .iter()
        .filter(|(k, a, _)| k.contains(what) && *a == attempt)
        .count()
        < n
    {
        ensure!(
            Instant::now() < deadline,
            "no call {what} #{attempt} within 20 s: {:?}",
            gated.calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

per_backend! {
    /// The pause of a lease holder, applied to the orchestrator itself: its claim on a run lapses
    /// while a call is in flight (here the lapse is written into the store, as a pause of any
    /// length would leave it), and the same orchestrator claims the run again and retries the
    /// step. When the first call returns, its driver must not record an outcome over the new
    /// claim's, nor go on to start the next step a second time: every (key, attempt) is made
    /// once, and a later claim's calls carry a higher fencing token.
    #[tokio::test]
    async fn a_driver_paused_past_its_claim_can_neither_record_nor_start_an_attempt(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let gated = Gated::default();
        gated.hold("reserve", 1);
        gated.hold("charge", 1);
        let orchestrator = Orchestrator::new(store.clone(), config());
        orchestrator.register(
            onephase_saga::Saga::builder("fenced", 1)
                .step(
                    step::compensatable("reserve", gated.step("reserve"), gated.step("release"))
                        // Retried at once after the takeover: the interrupted attempt and the
                        // next one's start go in one transition.
                        .backoff(Backoff::new(
                            Duration::from_nanos(1),
                            Duration::from_nanos(1),
                            Jitter::None,
                        )?),
                )
                .step(step::compensatable(
                    "charge",
                    gated.step("charge"),
                    gated.step("refund"),
                ))
                .build()?,
        )?;
        let run = orchestrator
            .start(StartRequest::new("fenced", json!({})))
            .await?;
        let first = tokio::spawn({
            let o = orchestrator.clone();
            async move { o.run_once().await }
        });
        wait_for_call(&gated, "/reserve/action", 1, 1).await?;
        // The first driver's claim lapses while its call is in flight.
        let lapse = match store.db() {
            Db::Postgres(pool) => sqlx::query(
                "UPDATE onephase_saga_runs SET claimed_until = now() - interval '1 second' WHERE id = $1",
            )
            .bind(run.id)
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Sqlite(s) => sqlx::query(
                "UPDATE onephase_saga_runs SET claimed_until = 0 WHERE id = ?1",
            )
            .bind(run.id.to_string())
            .execute(s.writer())
            .await?
            .rows_affected(),
        };
        ensure!(lapse == 1, "the run's claim was not found");
        // The same orchestrator claims it again (its loop would, with a slot free).
        let second = tokio::spawn({
            let (o, gated) = (orchestrator.clone(), gated.clone());
            async move {
                while !gated
                    .calls()
                    .iter()
                    .any(|(k, _, _)| k.ends_with("/charge/action"))
                {
                    o.run_once().await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                anyhow::Ok(())
            }
        });
        // The second claim takes attempt 1 of reserve for interrupted, succeeds with attempt
        // 2 and holds charge's first attempt.
        wait_for_call(&gated, "/charge/action", 1, 1).await?;
        gated.open("reserve", 1);
        // The first driver's call returns now. Before fences it recorded its outcome over the
        // second claim's (the run still named this orchestrator) and called charge again.
        let finished = tokio::time::timeout(Duration::from_secs(20), first).await;
        gated.open("charge", 1);
        ensure!(
            finished.is_ok(),
            "the first driver did not finish: it is waiting on a second charge call {:?}",
            gated.calls()
        );
        second.await??;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let calls = gated.calls();
        let mut seen = std::collections::HashSet::new();
        for (key, attempt, _) in &calls {
            ensure!(
                seen.insert((key.clone(), *attempt)),
                "{key} attempt {attempt} was made twice: {calls:?}"
            );
        }
        let token = |what: &str, attempt: u32| {
            calls
                .iter()
                .find(|(k, a, _)| k.ends_with(what) && *a == attempt)
                .map(|(_, _, t)| *t)
        };
        ensure!(
            token("/reserve/action", 1) < token("/reserve/action", 2),
            "the second claim's call carries a higher fencing token: {calls:?}"
        );
        let shown = orchestrator.admin().show(run.id).await?;
        ensure!(shown.run.state == RunState::Completed, "{shown:?}");
        let reserve = shown
            .steps
            .iter()
            .find(|s| s.step == "reserve" && s.phase == onephase_saga::Phase::Action)
            .context("reserve's action")?;
        ensure!(
            reserve.attempts == 2,
            "the stale driver's outcome (attempt 1) did not overwrite attempt 2's: {reserve:?}"
        );
        db.close().await?;
        Ok(())
    }
}

fn expected_state(refuse: Option<&str>, stuck: Option<&str>) -> RunState {
    match expected(refuse, stuck) {
        Expect::Completed => RunState::Completed,
        Expect::Compensated => RunState::Compensated,
        Expect::NeedsOperator => RunState::NeedsOperator,
    }
}

per_backend! {
    /// A Rust saga with a parallel group and a retriable step: a refusal in the group compensates
    /// the group's other step and then the first; a refused retriable step after the pivot parks
    /// the run, and resolving it by hand completes the run.
    #[tokio::test]
    async fn parallel_groups_and_retriable_steps_in_rust(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let record = |label: &'static str, refuse_when: &'static str| {
            let log = log.clone();
            move |call: Call| {
                let log = log.clone();
                async move {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{label}:{}", call.input["order"]));
                    if call.input["refuse"] == refuse_when {
                        return Err(StepError::fail(format!("{label} refused")));
                    }
                    Ok::<Value, StepError>(json!({"by": label}))
                }
            }
        };
        let orchestrator = Orchestrator::new(store.clone(), config());
        orchestrator.register(
            onephase_saga::Saga::builder("grouped", 1)
                .step(step::compensatable(
                    "a",
                    record("a", "-"),
                    record("undo-a", "-"),
                ))
                .parallel([
                    step::compensatable("b", record("b", "-"), record("undo-b", "-")),
                    step::compensatable("c", record("c", "c"), record("undo-c", "-")),
                ])
                .pivot(step::pivot("d", record("d", "-")))
                .retriable(step::retriable("e", record("e", "e")).max_attempts(Some(2)))
                .build()?,
        )?;
        let in_group = orchestrator
            .start(StartRequest::new(
                "grouped",
                json!({"order": 1, "refuse": "c"}),
            ))
            .await?;
        let after_pivot = orchestrator
            .start(StartRequest::new(
                "grouped",
                json!({"order": 2, "refuse": "e"}),
            ))
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let admin = orchestrator.admin();
        ensure!(admin.show(in_group.id).await?.run.state == RunState::Compensated);
        let calls: Vec<String> = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.ends_with(":1"))
            .cloned()
            .collect();
        let position = |label: &str| calls.iter().position(|c| c == &format!("{label}:1"));
        ensure!(
            position("undo-c").is_none(),
            "a refused step is not compensated: {calls:?}"
        );
        ensure!(position("d").is_none(), "the pivot never ran: {calls:?}");
        ensure!(
            position("undo-b").is_some() && position("undo-b") < position("undo-a"),
            "the group is undone before the step before it: {calls:?}"
        );

        let parked = admin.show(after_pivot.id).await?;
        ensure!(
            parked.run.state == RunState::NeedsOperator,
            "{:?}",
            parked.run
        );
        ensure!(
            parked
                .run
                .error
                .as_deref()
                .is_some_and(|e| e.contains("cannot go back")),
            "{:?}",
            parked.run.error
        );
        admin
            .resolve(
                after_pivot.id,
                "e",
                &Audit::new("carol", "sent the e-mail by hand"),
            )
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let done = admin.show(after_pivot.id).await?;
        ensure!(done.run.state == RunState::Completed, "{:?}", done.run);
        let compensations = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.ends_with(":2") && c.starts_with("undo"))
            .count();
        ensure!(compensations == 0, "nothing is compensated past the pivot");
        db.close().await?;
        Ok(())
    }
}

/// A participant that echoes what it receives and answers a number no `f64` holds.
async fn echo_participant() -> anyhow::Result<(String, Arc<std::sync::Mutex<Vec<String>>>)> {
    use axum::routing::post;
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let app = axum::Router::new().route(
        "/{op}",
        post({
            let seen = Arc::clone(&seen);
            move |body: String| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(body);
                    (
                        [("content-type", "application/json")],
                        r#"{"id": 98765432109876543210987654321, "neg": -9223372036854775809}"#,
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, seen))
}

per_backend! {
    #[tokio::test]
    async fn inputs_and_outputs_reach_participants_with_every_digit(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let (base, seen) = echo_participant().await?;
        let orchestrator = Orchestrator::new(store.clone(), config()).with_seed(7);
        let spec = SagaSpec::from_json(
            &json!({"name": "exact", "version": 1, "steps": [
                {"name": "create", "kind": "compensatable",
                 "action": {"method": "POST", "url": format!("{base}/create"),
                            "body": {"big": "{{input.big}}", "f": "{{input.f}}"}},
                 "compensation": {"method": "POST", "url": format!("{base}/undo"), "body": {}}},
                {"name": "confirm", "kind": "pivot",
                 "action": {"method": "POST", "url": format!("{base}/confirm"),
                            "body": {"id": "{{steps.create.output.id}}",
                                     "neg": "{{steps.create.output.neg}}"}}}
            ]})
            .to_string(),
        )?;
        orchestrator.register_spec(&spec).await?;
        let input = onephase_core::json::RawJson::parse(
            r#"{"big": 123456789012345678901234567890, "f": 1.50}"#,
        )?;
        let run = orchestrator
            .start(StartRequest::new("exact", input.clone()))
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let detail = orchestrator.admin().show(run.id).await?;
        ensure!(detail.run.state == RunState::Completed, "{:?}", detail.run);
        // Every digit is kept; PostgreSQL's JSONB may order keys and space them its own way.
        ensure!(
            onephase_core::json::canonical(detail.input.as_raw())
                == onephase_core::json::canonical(input.as_raw()),
            "the input is kept: {}",
            detail.input
        );
        let bodies = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ensure!(
            bodies.first().map(String::as_str)
                == Some(r#"{"big":123456789012345678901234567890,"f":1.50}"#),
            "{bodies:?}"
        );
        ensure!(
            bodies.get(1).map(String::as_str)
                == Some(r#"{"id":98765432109876543210987654321,"neg":-9223372036854775809}"#),
            "{bodies:?}"
        );
        let output = detail
            .steps
            .iter()
            .find(|s| s.step == "create")
            .and_then(|s| s.output.as_ref())
            .context("the output")?;
        ensure!(
            output.get().contains("98765432109876543210987654321"),
            "{output}"
        );
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn a_header_value_with_a_line_break_fails_the_step_once_and_sends_nothing(db) -> anyhow::Result<()> {
        let store = migrated(&db).await?;
        let (base, seen) = echo_participant().await?;
        let orchestrator = Orchestrator::new(store.clone(), config()).with_seed(7);
        let spec = SagaSpec::from_json(
            &json!({"name": "headers", "version": 1, "steps": [
                {"name": "call", "kind": "pivot",
                 "action": {"method": "POST", "url": format!("{base}/call"),
                            "headers": {"x-note": "{{input.note}}"}, "max_attempts": 5}}
            ]})
            .to_string(),
        )?;
        orchestrator.register_spec(&spec).await?;
        let run = orchestrator
            .start(StartRequest::new(
                "headers",
                json!({"note": "a\r\nx-evil: 1"}),
            ))
            .await?;
        settle(&orchestrator, Duration::from_secs(20)).await?;
        let detail = orchestrator.admin().show(run.id).await?;
        ensure!(
            detail.run.state == RunState::Compensated,
            "{:?}",
            detail.run
        );
        let step = detail.steps.first().context("the step")?;
        ensure!(
            step.attempts == 1
                && step
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("HTTP headers do not allow")),
            "a definite failure, not retried: {step:?}"
        );
        ensure!(seen.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
        db.close().await?;
        Ok(())
    }
}
