//! Appends and reads on real stores: expected versions, idempotent retries, atomic
//! multi-stream appends in the caller's transaction, bad input, 16 concurrent writers, the
//! gap-safe global order with a transaction held open, and a model-based property test.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::ensure;
use onephase_core::{Classify, ErrorKind};
use onephase_events::{EventStore, EventsError, ExpectedVersion, NewEvent, StreamAppend};
use onephase_store::{Db, Store, on_store};
use onephase_testkit::{TestDb, per_backend};

async fn events(db: &TestDb) -> anyhow::Result<EventStore> {
    let store = db.store().clone();
    store.migrate(&[onephase_events::migrations()]).await?;
    Ok(EventStore::new(store))
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Counted", &format!(r#"{{"n":{n}}}"#)).expect("valid JSON")
}

async fn count_events(store: &Store) -> anyhow::Result<i64> {
    Ok(on_store!(read store.db(), pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM onephase_events").fetch_one(pool).await?
    }))
}

per_backend! {
    /// Each expectation is checked; a mismatch names the stream and its version and writes
    /// nothing.
    #[tokio::test]
    async fn expected_versions_are_enforced(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let a = events.append("order-1", ExpectedVersion::NoStream, vec![event(1), event(2)]).await?;
        assert_eq!((a.first_position, a.position, a.streams[0].version), (1, 2, 2));
        let err = events.append("order-1", ExpectedVersion::NoStream, vec![event(3)]).await.unwrap_err();
        assert!(matches!(err, EventsError::WrongExpectedVersion { actual: 2, .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("\"order-1\" is at version 2"), "{err}");
        let err = events.append("order-1", ExpectedVersion::Exact(1), vec![event(3)]).await.unwrap_err();
        assert!(matches!(err, EventsError::WrongExpectedVersion { .. }));
        events.append("order-1", ExpectedVersion::Exact(2), vec![event(3)]).await?;
        events.append("order-1", ExpectedVersion::Any, vec![event(4)]).await?;
        let read = events.read_stream("order-1", 0, 100).await?;
        let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
        assert_eq!(versions, [1, 2, 3, 4]);
        assert_eq!(read[3].data.get(), r#"{"n":4}"#);
        assert_eq!(events.read_stream("order-1", 2, 100).await?.len(), 2);
        let err = events.read_stream("order-2", 0, 10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(count_events(events.store()).await?, 4);
        Ok(())
    }

    /// A retried append (same ids) succeeds once; an id reused elsewhere is refused.
    #[tokio::test]
    async fn appends_are_idempotent_on_event_ids(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let batch = vec![event(1), event(2)];
        let first = events.append("cart-1", ExpectedVersion::NoStream, batch.clone()).await?;
        // The answer was lost; the client retries with the same expectation and ids.
        let again = events.append("cart-1", ExpectedVersion::NoStream, batch.clone()).await?;
        assert!(!first.repeated && again.repeated);
        assert_eq!((first.position, &first.streams), (again.position, &again.streams));
        assert_eq!(count_events(events.store()).await?, 2);
        let err = events
            .append("cart-2", ExpectedVersion::Any, vec![batch[0].clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, EventsError::IdReused { .. }), "{err}");
        // Part of an earlier append with a new event is not a retry either.
        let err = events
            .append("cart-1", ExpectedVersion::Any, vec![batch[1].clone(), event(3)])
            .await
            .unwrap_err();
        assert!(matches!(err, EventsError::IdReused { .. }), "{err}");
        assert_eq!(count_events(events.store()).await?, 2);
        Ok(())
    }

    /// Several streams commit together, with the caller's own rows, or not at all.
    #[tokio::test]
    async fn multi_stream_appends_are_atomic_in_the_callers_transaction(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        on_store!(events.store().db(), pool => {
            sqlx::query("CREATE TABLE business (id BIGINT PRIMARY KEY)").execute(pool).await?;
        });
        events.append("account-b", ExpectedVersion::NoStream, vec![event(0)]).await?;
        let transfer = |expected_b| vec![
            StreamAppend::new("account-a", ExpectedVersion::NoStream, vec![event(1)]),
            StreamAppend::new("account-b", expected_b, vec![event(2)]),
        ];
        // One stale expectation: nothing of the append is written.
        let err = events.append_all(&transfer(ExpectedVersion::NoStream)).await.unwrap_err();
        assert!(matches!(err, EventsError::WrongExpectedVersion { .. }));
        assert_eq!(events.stream_version("account-a").await?, None);
        // In the caller's transaction, rolled back: neither the row nor the events.
        on_store!(events.store().db(), pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO business (id) VALUES (1)").execute(&mut *tx).await?;
            events.append_in(&mut tx, &transfer(ExpectedVersion::Exact(1))).await?;
            tx.rollback().await?;
        });
        assert_eq!(count_events(events.store()).await?, 1);
        // A refused append leaves nothing behind, so a caller may go on and commit the rest.
        on_store!(events.store().db(), pool => {
            let mut tx = pool.begin().await?;
            let err = events.append_in(&mut tx, &transfer(ExpectedVersion::Exact(7))).await.unwrap_err();
            assert!(matches!(err, EventsError::WrongExpectedVersion { actual: 1, .. }), "{err}");
            sqlx::query("INSERT INTO business (id) VALUES (2)").execute(&mut *tx).await?;
            tx.commit().await?;
        });
        assert_eq!(events.stream_version("account-a").await?, None);
        assert_eq!(events.stream_version("account-b").await?, Some(1));
        assert_eq!(count_events(events.store()).await?, 1);
        // Committed: both.
        let appended = on_store!(events.store().db(), pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO business (id) VALUES (1)").execute(&mut *tx).await?;
            let appended = events.append_in(&mut tx, &transfer(ExpectedVersion::Exact(1))).await?;
            tx.commit().await?;
            appended
        });
        assert_eq!(appended.streams.len(), 2);
        assert_eq!(events.stream_version("account-b").await?, Some(2));
        let all = events.read_all(0, 100).await?;
        assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(events.read_category("account", 1, 10).await?.len(), 2);
        Ok(())
    }

    /// Bad input is refused with a message that names it, and nothing is written.
    #[tokio::test]
    async fn bad_input_is_refused_and_writes_nothing(db) -> anyhow::Result<()> {
        let events = events(&db).await?.with_max_event_size(1024);
        let err = NewEvent::new("Bad", "{not json").unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        let cases: Vec<(&str, Vec<NewEvent>, &str)> = vec![
            ("order 1", vec![event(1)], "is not a name"),
            ("order-1", vec![], "at least one event"),
            ("order-1", vec![NewEvent::new("Big", &format!(r#"{{"x":"{}"}}"#, "a".repeat(2000)))?], "over the limit of 1024"),
            ("order-1", vec![NewEvent::new("has space", "{}")?], "is not a name"),
            ("order-1", vec![event(1).with_schema_version(0)], "versions start at 1"),
            ("order-1", vec![NewEvent::new("T", r#"{"a":1}"#)?.with_personal_data("s-1", ["email"])], "no such member"),
            ("order-1", vec![NewEvent::new("T", "[1]")?.with_personal_data("s-1", ["email"])], "not a JSON object"),
        ];
        for (stream, batch, message) in cases {
            let err = events.append(stream, ExpectedVersion::Any, batch).await.unwrap_err();
            assert!(err.to_string().contains(message), "{err} should say {message}");
            assert!(matches!(err.kind(), ErrorKind::InvalidInput | ErrorKind::TooLarge), "{err}");
        }
        let same = event(1);
        let err = events.append("order-1", ExpectedVersion::Any, vec![same.clone(), same]).await.unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let err = events
            .append_all(&[
                StreamAppend::new("order-1", ExpectedVersion::Any, vec![event(1)]),
                StreamAppend::new("order-1", ExpectedVersion::Any, vec![event(2)]),
            ])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert_eq!(count_events(events.store()).await?, 0);
        assert_eq!(events.head().await?, 0);
        Ok(())
    }

    /// 16 writers on 100 streams, each reading a stream's version and appending at it: no
    /// version is lost or doubled, every conflict is reported, and the global order holds
    /// every committed event once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sixteen_writers_on_a_hundred_streams(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let writers = 16;
        let per_writer = 60;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut conflicts) = (0u64, 0u64);
                for i in 0..per_writer {
                    let stream = format!("item-{}", (w * 7 + i * 13) % 100);
                    let version = events.stream_version(&stream).await?.unwrap_or(0);
                    let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
                    match events.append(&stream, expected, vec![event(w * 1000 + i)]).await {
                        Ok(_) => ok += 1,
                        Err(EventsError::WrongExpectedVersion { .. }) => conflicts += 1,
                        Err(e) => return Err(anyhow::Error::from(e)),
                    }
                }
                anyhow::Ok((ok, conflicts))
            }));
        }
        let (mut ok, mut conflicts) = (0, 0);
        for task in tasks {
            let (o, c) = task.await??;
            ok += o;
            conflicts += c;
        }
        assert_eq!(ok + conflicts, writers * per_writer);
        let all = events.read_all(0, 10_000).await?;
        assert_eq!(all.len() as u64, ok, "{conflicts} conflicts");
        let mut by_stream: HashMap<String, Vec<u64>> = HashMap::new();
        let mut last = 0;
        for e in &all {
            assert!(e.position > last, "positions increase");
            last = e.position;
            by_stream.entry(e.stream.clone()).or_default().push(e.version);
        }
        for (stream, versions) in by_stream {
            let expected: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(versions, expected, "{stream}");
        }
        Ok(())
    }
}

/// A reader by position never skips an event whose transaction commits late: on PostgreSQL a
/// second append waits for the first's commit, so positions become visible in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_never_skipped_by_a_reader() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await else {
        return Ok(());
    };
    let events = events(&db).await?;
    let Db::Postgres(pool) = events.store().db() else {
        anyhow::bail!("not PostgreSQL");
    };
    // Writer A appends and holds its transaction open.
    let mut slow = pool.begin().await?;
    let a = events
        .append_in(
            &mut slow,
            &[StreamAppend::new(
                "slow-1",
                ExpectedVersion::Any,
                vec![event(1)],
            )],
        )
        .await?;
    // Writer B appends meanwhile.
    let b = tokio::spawn({
        let events = events.clone();
        async move {
            events
                .append("fast-1", ExpectedVersion::Any, vec![event(2)])
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !b.is_finished(),
        "B must wait for A's turn, or it could be read before A"
    );
    // A reader sees nothing yet, and its position stays 0.
    let seen = events.read_all(0, 100).await?;
    assert!(seen.is_empty());
    slow.commit().await?;
    let b = b.await??;
    assert!(a.position < b.position);
    let seen = events.read_all(0, 100).await?;
    assert_eq!(
        seen.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        ["slow-1", "fast-1"]
    );
    Ok(())
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            stream: u8,
            events: u8,
            expect: Expect,
        },
        Retry,
    }

    #[derive(Debug, Clone, Copy)]
    enum Expect {
        Any,
        Right,
        Wrong,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..4, 1u8..4, prop_oneof![Just(Expect::Any), Just(Expect::Right), Just(Expect::Wrong)])
                .prop_map(|(stream, events, expect)| Op::Append { stream, events, expect }),
            1 => Just(Op::Retry),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Appends and reads agree with a model of streams as vectors.
        #[test]
        fn appends_and_reads_match_a_model(ops in proptest::collection::vec(op(), 1..30)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let db = onephase_testkit::per_backend::sqlite().await;
                let events = events(&db).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut model: HashMap<String, Vec<String>> = HashMap::new();
                let mut last: Option<(String, ExpectedVersion, Vec<NewEvent>)> = None;
                let mut n = 0u64;
                for op in ops {
                    let (stream, expected, batch) = match op {
                        Op::Retry => match last.clone() { Some(l) => l, None => continue },
                        Op::Append { stream, events: k, expect } => {
                            let stream = format!("s-{stream}");
                            let version = model.get(&stream).map_or(0, |v| v.len() as u64);
                            let expected = match expect {
                                Expect::Any => ExpectedVersion::Any,
                                Expect::Right => ExpectedVersion::Exact(version),
                                Expect::Wrong => ExpectedVersion::Exact(version + 1),
                            };
                            let batch: Vec<NewEvent> = (0..k).map(|_| { n += 1; event(n) }).collect();
                            (stream, expected, batch)
                        }
                    };
                    let retry = last.as_ref().is_some_and(|l| l.2[0].id() == batch[0].id());
                    let version = model.get(&stream).map_or(0, |v| v.len() as u64);
                    let result = events.append(&stream, expected, batch.clone()).await;
                    if retry {
                        // The same ids again: success without writing if the first succeeded.
                        let first_ok = model.get(&stream).is_some_and(|v| v.contains(&batch[0].data().get().to_owned()));
                        prop_assert_eq!(result.is_ok(), first_ok || expected.admits(version));
                        if result.is_ok() && !first_ok {
                            model.entry(stream.clone()).or_default().extend(batch.iter().map(|e| e.data().get().to_owned()));
                        }
                    } else if expected.admits(version) {
                        let appended = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let stored = model.entry(stream.clone()).or_default();
                        stored.extend(batch.iter().map(|e| e.data().get().to_owned()));
                        prop_assert_eq!(appended.streams[0].version, stored.len() as u64);
                    } else {
                        let wrong = matches!(result, Err(EventsError::WrongExpectedVersion { .. }));
                        prop_assert!(wrong);
                    }
                    last = Some((stream, expected, batch));
                }
                for (stream, expected) in &model {
                    let read = events.read_stream(stream, 0, 1000).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let data: Vec<String> = read.iter().map(|e| e.data.get().to_owned()).collect();
                    prop_assert_eq!(&data, expected);
                }
                Ok(())
            })?;
        }
    }
}
