//! Projections on real stores: effects once, parking on a poison event, the consistency wait,
//! explain, blue/green rebuild under write load, upcasters, crypto-shredding and aggregates.

use std::time::Duration;

use onephase_core::{Classify, ErrorKind};
use onephase_events::{
    Aggregate, AsOf, DocumentDefinition, EventStore, EventsError, ExpectedVersion, NewEvent,
    Projections, Projector, Snapshots, Upcasters,
};
use onephase_store::{Db, on_store};
use onephase_testkit::{TestDb, per_backend};
use serde::{Deserialize, Serialize};

async fn events(db: &TestDb) -> anyhow::Result<EventStore> {
    let store = db.store().clone();
    store.migrate(&[onephase_events::migrations()]).await?;
    Ok(EventStore::new(store))
}

fn definition(json: &str) -> DocumentDefinition {
    serde_json::from_str(json).expect("a definition")
}

fn orders() -> DocumentDefinition {
    definition(
        r#"{"category":"order","key":{"field":"customer"},
            "handlers":{"OrderPlaced":"merge","OrderShipped":"merge","CustomerErased":"delete"}}"#,
    )
}

async fn catch_up(projector: &Projector) -> anyhow::Result<()> {
    while projector.run_once().await? {}
    Ok(())
}

per_backend! {
    /// A document projection builds rows, says which events built each, and lets a writer
    /// read its own write through the consistency wait.
    #[tokio::test]
    async fn document_rows_explain_and_read_your_writes(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let projections = Projections::new(events.clone());
        assert_eq!(projections.define("customers", &orders(), "test").await?, 1);
        // The same definition again changes nothing.
        assert_eq!(projections.define("customers", &orders(), "test").await?, 1);
        let projector = Projector::new(events.clone()).with_documents().with_batch(2);
        events.append("order-1", ExpectedVersion::NoStream, vec![
            NewEvent::new("OrderPlaced", r#"{"customer":"c-1","total":10,"ref":{"big":123456789012345678901234567890,"f":1.50}}"#)?,
            NewEvent::new("OrderShipped", r#"{"customer":"c-1","shipped":true}"#)?,
        ]).await?;
        let appended = events.append("order-2", ExpectedVersion::NoStream, vec![
            NewEvent::new("OrderPlaced", r#"{"customer":"c-1","total":25}"#)?,
            NewEvent::new("Unrelated", r#"{}"#)?,
        ]).await?;
        events.append("invoice-1", ExpectedVersion::NoStream, vec![
            NewEvent::new("OrderPlaced", r#"{"customer":"c-1","total":99}"#)?,
        ]).await?;
        // Not yet applied: the wait answers clearly after its bound.
        let err = projections.wait_for("customers", appended.position, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, EventsError::NotYet { reached: 0, .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Timeout);
        catch_up(&projector).await?;
        assert!(projections.wait_for("customers", appended.position, Duration::from_millis(50)).await? >= appended.position);
        let doc = projections.document("customers", "c-1").await?.expect("a row");
        // Merged as text: every digit, and 1.50 as written.
        assert_eq!(
            doc.doc.get(),
            r#"{"customer":"c-1","total":25,"ref":{"big":123456789012345678901234567890,"f":1.50},"shipped":true}"#
        );
        assert_eq!(doc.position, 3);
        let why = projections.explain("customers", "c-1").await?;
        assert_eq!(why.events.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2, 3]);
        let status = projections.status("customers").await?;
        assert_eq!((status[0].position, status[0].lag_events), (5, 0));
        // A plain rebuild (no new definition) keeps building with the live definition, and
        // goes on after the switch.
        assert_eq!(projections.rebuild("customers", "ops", "new disk").await?, 2);
        catch_up(&projector).await?;
        let status = projections.status("customers").await?;
        assert_eq!((status.len(), status[0].generation), (1, 2), "{status:?}");
        assert_eq!(projections.definition("customers").await?, orders());
        events.append("order-3", ExpectedVersion::NoStream, vec![
            NewEvent::new("OrderShipped", r#"{"customer":"c-1","late":true}"#)?,
        ]).await?;
        catch_up(&projector).await?;
        let doc = projections.document("customers", "c-1").await?.expect("a row");
        assert_eq!(doc.doc.to_value()["late"], serde_json::json!(true));
        assert_eq!(projections.explain("customers", "c-1").await?.events.len(), 4);
        Ok(())
    }

    /// An event the projection cannot apply parks it there, with the error; the events
    /// before it are applied; skip moves on and is audited.
    #[tokio::test]
    async fn a_poison_event_parks_the_projection_until_an_operator_acts(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let projections = Projections::new(events.clone());
        projections.define("customers", &orders(), "test").await?;
        let projector = Projector::new(events.clone()).with_documents();
        events.append("order-1", ExpectedVersion::Any, vec![
            NewEvent::new("OrderPlaced", r#"{"customer":"c-1","total":1}"#)?,
            NewEvent::new("OrderPlaced", r#"{"total":2}"#)?, // no customer: poison
            NewEvent::new("OrderPlaced", r#"{"customer":"c-2","total":3}"#)?,
        ]).await?;
        catch_up(&projector).await?;
        let status = &projections.status("customers").await?[0];
        assert_eq!((status.position, status.parked_position), (1, Some(2)));
        assert!(status.parked_error.as_deref().is_some_and(|e| e.contains("no field \"customer\"")), "{status:?}");
        assert!(projections.document("customers", "c-1").await?.is_some());
        let err = projections.wait_for("customers", 3, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, EventsError::Parked { position: 2, .. }), "{err}");
        // Retried without a fix: parks again at the same event.
        projections.retry("customers", "ops", "try again").await?;
        catch_up(&projector).await?;
        assert_eq!(projections.status("customers").await?[0].parked_position, Some(2));
        let err = projections.skip("customers", "", "no actor").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        projections.skip("customers", "ops", "event 2 has no customer; INC-7").await?;
        catch_up(&projector).await?;
        let status = &projections.status("customers").await?[0];
        assert_eq!((status.position, status.parked_position), (3, None));
        assert!(projections.document("customers", "c-2").await?.is_some());
        let audit = projections.audit("customers", 10).await?;
        assert_eq!(audit[0].action, "skip");
        assert_eq!(audit[0].position, Some(2));
        assert_eq!(audit[0].reason, "event 2 has no customer; INC-7");
        let err = projections.skip("customers", "ops", "again").await.unwrap_err();
        assert!(err.to_string().contains("not parked"), "{err}");
        Ok(())
    }

    /// A rebuild runs beside the live generation while writers keep appending, switches when
    /// caught up, and the switched read model equals a fresh single pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_rebuild_under_write_load_misses_no_event(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let projections = Projections::new(events.clone());
        let counting = definition(r#"{"key":"stream","handlers":{"Counted":"merge"}}"#);
        projections.define("counters", &counting, "test").await?;
        let projector = Projector::new(events.clone()).with_documents().with_batch(50);
        for i in 0..300u64 {
            events.append(&format!("counter-{}", i % 10), ExpectedVersion::Any,
                vec![NewEvent::new("Counted", &format!(r#"{{"last":{i}}}"#))?]).await?;
        }
        catch_up(&projector).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn({
            let events = events.clone();
            async move {
                let mut i = 300u64;
                while !*stopped.borrow() {
                    events.append(&format!("counter-{}", i % 10), ExpectedVersion::Any,
                        vec![NewEvent::new("Counted", &format!(r#"{{"last":{i}}}"#))?]).await?;
                    i += 1;
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(i)
            }
        });
        let running = tokio::spawn(projector.clone().run(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }));
        // A new shape: the rebuild replaces the old one once caught up.
        let reshaped = definition(r#"{"key":"stream","handlers":{"Counted":"replace"}}"#);
        assert_eq!(projections.define("counters", &reshaped, "test").await?, 2);
        let err = projections.rebuild("counters", "ops", "second").await.unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
        running.await?;
        stop.send(true)?;
        let written = writer.await??;
        catch_up(&projector).await?;
        let status = projections.status("counters").await?;
        assert_eq!(status.len(), 1, "{status:?}");
        assert_eq!((status[0].generation, status[0].role.as_str()), (2, "live"));
        assert_eq!(status[0].position, events.head().await?);
        // Each counter's row is its last event, as a fresh pass gives.
        for c in 0..10u64 {
            let last = (0..written).filter(|i| i % 10 == c).max().expect("some");
            let doc = projections.document("counters", &format!("counter-{c}")).await?.expect("a row");
            assert_eq!(doc.doc.get(), format!(r#"{{"last":{last}}}"#));
            let why = projections.explain("counters", &format!("counter-{c}")).await?;
            assert_eq!(why.events.len() as u64, (0..written).filter(|i| i % 10 == c).count() as u64);
        }
        // The old generation's rows and lineage are gone.
        let old: i64 = on_store!(read events.store().db(), pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM onephase_events_documents WHERE generation = 1").fetch_one(pool).await?
        });
        assert_eq!(old, 0);
        assert_eq!(projections.audit("counters", 10).await?[0].action, "switch");
        Ok(())
    }

    /// Old events are read through the upcaster chain; what no upcaster covers is an error
    /// that names it, and it parks a projection instead of being skipped.
    #[tokio::test]
    async fn upcasters_bring_old_events_to_the_current_shape(db) -> anyhow::Result<()> {
        let plain = events(&db).await?;
        plain.append("customer-1", ExpectedVersion::Any, vec![
            NewEvent::new("CustomerRegistered", r#"{"name":"Ada Lovelace"}"#)?.with_schema_version(1),
            NewEvent::new("CustomerRegistered", r#"{"full_name":"Alan Turing"}"#)?.with_schema_version(2),
            NewEvent::new("CustomerRegistered", r#"{"full_name":"Grace Hopper","country":"US"}"#)?.with_schema_version(3),
        ]).await?;
        let upcasters = Upcasters::new()
            .step("CustomerRegistered", 1, |mut d| { let n = d["name"].take(); d["full_name"] = n; d.as_object_mut().map(|o| o.remove("name")); Ok(d) })
            .step("CustomerRegistered", 2, |mut d| { d["country"] = serde_json::json!("unknown"); Ok(d) });
        let events = plain.clone().with_upcasters(upcasters.clone());
        let read = events.read_stream("customer-1", 0, 10).await?;
        assert!(read.iter().all(|e| e.schema_version == 3));
        assert_eq!(read[0].data.to_value(), serde_json::json!({"full_name":"Ada Lovelace","country":"unknown"}));
        assert_eq!(read[2].data.get(), r#"{"full_name":"Grace Hopper","country":"US"}"#);
        // New events are written at the current version.
        events.append("customer-2", ExpectedVersion::Any, vec![NewEvent::new("CustomerRegistered", r#"{"full_name":"X","country":"NL"}"#)?]).await?;
        assert_eq!(plain.read_stream("customer-2", 0, 1).await?[0].schema_version, 3);
        // A version newer than the reader knows, a missing step, a failing step, an unknown type.
        let err = events.append("customer-3", ExpectedVersion::Any, vec![NewEvent::new("CustomerRegistered", "{}")?.with_schema_version(4)]).await.unwrap_err();
        assert!(err.to_string().contains("newer than"), "{err}");
        let missing = plain.clone().with_upcasters(Upcasters::new().register("CustomerRegistered", 3).step("CustomerRegistered", 2, Ok));
        let err = missing.read_stream("customer-1", 0, 10).await.unwrap_err();
        assert!(err.to_string().contains("has no upcaster from version 1") && err.to_string().contains("position 1"), "{err}");
        let failing = plain.clone().with_upcasters(upcasters.clone().step("CustomerRegistered", 1, |_| Err("name is not splittable".into())));
        let err = failing.read_stream("customer-1", 0, 10).await.unwrap_err();
        assert!(matches!(err, EventsError::UpcastFailed { from: 1, .. }) && err.to_string().contains("not splittable"), "{err}");
        let strict = plain.clone().with_upcasters(Upcasters::new().strict());
        let err = strict.read_all(0, 10).await.unwrap_err();
        assert!(err.to_string().contains("CustomerRegistered") && err.to_string().contains("not known"), "{err}");
        // A projection reading through the failing chain parks on the event, writing nothing.
        let projections = Projections::new(failing.clone());
        projections.define("names", &definition(r#"{"handlers":{"CustomerRegistered":"replace"}}"#), "test").await?;
        catch_up(&Projector::new(failing.clone()).with_documents()).await?;
        let status = &projections.status("names").await?[0];
        assert_eq!((status.position, status.parked_position), (0, Some(1)));
        assert!(projections.document("names", "customer-1").await?.is_none());
        Ok(())
    }

    /// After a subject is forgotten, its personal fields read as null everywhere and no
    /// plaintext of them is left in any table.
    #[tokio::test]
    async fn forgetting_a_subject_leaves_no_plaintext(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let projections = Projections::new(events.clone());
        projections.define("people", &definition(r#"{"handlers":{"SignedUp":"merge","Moved":"merge"}}"#), "test").await?;
        let email = "ada.lovelace.7731@example.com";
        let street = "12 Analytical Engine Street";
        events.append("person-7", ExpectedVersion::NoStream, vec![
            NewEvent::new("SignedUp", &format!(r#"{{"plan":"pro","email":"{email}"}}"#))?.with_personal_data("person-7", ["email"]),
            NewEvent::new("Moved", &format!(r#"{{"street":"{street}","city":"London"}}"#))?.with_personal_data("person-7", ["street"]),
        ]).await?;
        let stored = raw_text(&events).await?;
        assert!(!stored.contains(email) && !stored.contains(street), "sealed at rest");
        let read = events.read_stream("person-7", 0, 10).await?;
        assert!(read[0].data.get().contains(email));
        catch_up(&Projector::new(events.clone()).with_documents()).await?;
        let doc = projections.document("people", "person-7").await?.expect("row");
        assert!(doc.doc.get().contains(email) && doc.doc.get().contains(street));
        assert!(raw_text(&events).await?.contains(email), "the read model holds the plaintext");
        assert_eq!(events.forget("person-7").await?, 2);
        let read = events.read_stream("person-7", 0, 10).await?;
        assert_eq!(read[0].data.get(), r#"{"plan":"pro","email":null}"#);
        assert_eq!(read[0].redacted, ["email"]);
        assert_eq!(read[1].data.get(), r#"{"street":null,"city":"London"}"#);
        let doc = projections.document("people", "person-7").await?.expect("row");
        assert_eq!(doc.doc.to_value(), serde_json::json!({"plan":"pro","city":"London"}));
        let everything = raw_text(&events).await?;
        assert!(!everything.contains(email) && !everything.contains(street), "plaintext left in a table");
        if let Db::Sqlite(_) = events.store().db() {
            let path = events.store().url().trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_owned();
            for file in [path.clone(), format!("{path}-wal")] {
                if let Ok(bytes) = std::fs::read(&file) {
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(!text.contains(email), "{file} still holds the email");
                }
            }
        }
        let err = events.append("person-7", ExpectedVersion::Any, vec![
            NewEvent::new("Moved", r#"{"street":"x"}"#)?.with_personal_data("person-7", ["street"]),
        ]).await.unwrap_err();
        assert!(matches!(err, EventsError::SubjectForgotten(_)), "{err}");
        Ok(())
    }

    /// Aggregates decide against the version they loaded and retry on conflict; snapshots
    /// and time travel give the same state as a fold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn aggregates_retry_conflicts_and_load_from_snapshots(db) -> anyhow::Result<()> {
        let events = events(&db).await?;
        let mut tasks = Vec::new();
        for i in 0..8i64 {
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..5i64 {
                    events.execute::<Account>("account-1", &Command::Deposit(i * 10 + j), Snapshots::Every(7)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let loaded = events.load::<Account>("account-1").await?;
        let expected: i64 = (0..8).flat_map(|i| (0..5).map(move |j| i * 10 + j)).sum();
        assert_eq!((loaded.state.balance, loaded.version), (expected, 40));
        let snapshot: i64 = on_store!(read events.store().db(), pool => {
            sqlx::query_scalar("SELECT version FROM onephase_events_snapshots WHERE stream = 'account-1'").fetch_one(pool).await?
        });
        assert!(snapshot > 0 && snapshot <= 40);
        let err = events.execute::<Account>("account-1", &Command::Withdraw(expected + 1), Snapshots::Never).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let past = events.load_as_of::<Account>("account-1", AsOf::Position(3)).await?;
        assert_eq!(past.version, 3);
        let first_three: i64 = events.read_stream("account-1", 0, 3).await?.iter()
            .map(|e| e.data.to_value()["amount"].as_i64().unwrap_or(0)).sum();
        assert_eq!(past.state.balance, first_three);
        Ok(())
    }
}

async fn raw_text(events: &EventStore) -> anyhow::Result<String> {
    let tables = [
        ("onephase_events", "data"),
        ("onephase_events_subjects", "COALESCE(key, '')"),
        ("onephase_events_snapshots", "state"),
        ("onephase_events_documents", "doc"),
        ("onephase_events_lineage", "row_key"),
    ];
    let mut all = String::new();
    for (table, column) in tables {
        let sql = format!("SELECT {column} FROM {table}");
        let rows: Vec<String> = on_store!(read events.store().db(), pool => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        all.push_str(&rows.join("\n"));
    }
    Ok(all)
}

#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum AccountEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

enum Command {
    Deposit(i64),
    Withdraw(i64),
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Event = AccountEvent;
    type Command = Command;
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
    fn handle(&self, command: &Command) -> Result<Vec<AccountEvent>, String> {
        match *command {
            Command::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            Command::Withdraw(amount) if amount > self.balance => Err("insufficient funds".into()),
            Command::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }
}
