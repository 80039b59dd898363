//! The receiver over real HTTP and real stores: verified webhooks are applied once per
//! `webhook-id` in the receiver's own transaction; everything else is refused with its reason
//! and changes nothing.

use onephase_testkit::per_backend;
use std::sync::Arc;

use anyhow::ensure;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use futures::FutureExt;
use onephase_outbox::{OutboxError, Processed};
use onephase_store::{Db, Store};
use onephase_webhook::receiver::{Receiver, Webhook};
use onephase_webhook::signature::{Secret, Signer, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone)]
struct App {
    receiver: Arc<Receiver>,
    store: Store,
}

impl axum::extract::FromRef<App> for Arc<Receiver> {
    fn from_ref(app: &App) -> Self {
        app.receiver.clone()
    }
}

/// Applies each webhook's amount to a ledger, once per webhook-id.
async fn apply(State(app): State<App>, webhook: Webhook) -> Result<&'static str, StatusCode> {
    let amount: i64 = webhook
        .json::<serde_json::Value>()
        .ok()
        .and_then(|v| v["amount"].as_i64())
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
    let fail = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let outcome = match app.store.db() {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await.map_err(fail)?;
            let outcome = app
                .receiver
                .process(&mut *tx, &webhook, |tx| {
                    async move {
                        sqlx::query("INSERT INTO ledger (amount) VALUES ($1)")
                            .bind(amount)
                            .execute(tx)
                            .await
                            .map_err(OutboxError::from)?;
                        Ok::<_, OutboxError>(())
                    }
                    .boxed()
                })
                .await
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
            tx.commit().await.map_err(fail)?;
            outcome
        }
        Db::Sqlite(s) => {
            let mut tx = s.writer().begin().await.map_err(fail)?;
            let outcome = app
                .receiver
                .process(&mut *tx, &webhook, |tx| {
                    async move {
                        sqlx::query("INSERT INTO ledger (amount) VALUES (?1)")
                            .bind(amount)
                            .execute(tx)
                            .await
                            .map_err(OutboxError::from)?;
                        Ok::<_, OutboxError>(())
                    }
                    .boxed()
                })
                .await
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
            tx.commit().await.map_err(fail)?;
            outcome
        }
    };
    Ok(match outcome {
        Processed::Applied(()) => "applied",
        Processed::Duplicate => "duplicate",
    })
}

async fn ledger_total(store: &Store) -> anyhow::Result<(i64, i64)> {
    let sql = "SELECT count(*), CAST(coalesce(sum(amount), 0) AS BIGINT) FROM ledger";
    Ok(match store.db() {
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_one(pool).await?,
        Db::Sqlite(s) => sqlx::query_as(sql).fetch_one(s.reader()).await?,
    })
}

per_backend! {
    #[tokio::test]
    async fn verified_webhooks_apply_once_and_bad_ones_change_nothing(db) -> anyhow::Result<()> {
        let store = db.store().clone();
        store.migrate(&[onephase_outbox::migrations()]).await?;
        let create = "CREATE TABLE ledger (amount BIGINT NOT NULL)";
        match store.db() {
            Db::Postgres(pool) => sqlx::query(create).execute(pool).await.map(|_| ())?,
            Db::Sqlite(s) => sqlx::query(create).execute(s.writer()).await.map(|_| ())?,
        }
        let secret = Secret::parse(SECRET)?;
        let receiver = Receiver::new("ledger-hooks", Verifier::new(vec![secret.clone().into()]));
        let app = axum::Router::new()
            .route("/hooks", post(apply))
            .with_state(App {
                receiver: Arc::new(receiver),
                store: store.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let signer = Signer::new(vec![secret.into()]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let send = |id: &str, ts: i64, body: &str, signature: Option<String>| {
            let signature = signature.unwrap_or_else(|| signer.sign(id, ts, body.as_bytes()));
            http.post(&url)
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body.to_owned())
                .send()
        };

        let first = send("msg_1", now, r#"{"amount": 5}"#, None).await?;
        ensure!(first.status() == 200 && first.text().await? == "applied");
        // The sender's retry of the same message: acknowledged, not applied again.
        let again = send("msg_1", now, r#"{"amount": 5}"#, None).await?;
        ensure!(again.status() == 200 && again.text().await? == "duplicate");
        let second = send("msg_2", now, r#"{"amount": 7}"#, None).await?;
        ensure!(second.status() == 200);

        // Refusals, each with its reason, none applied.
        let stale = send("msg_3", now - 3600, r#"{"amount": 100}"#, None).await?;
        ensure!(stale.status() == 401);
        let problem: serde_json::Value = stale.json().await?;
        ensure!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("tolerance")),
            "{problem}"
        );
        let forged = send(
            "msg_4",
            now,
            r#"{"amount": 100}"#,
            Some("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=".into()),
        )
        .await?;
        ensure!(forged.status() == 401);
        let garbled = send("msg_5", now, r#"{"amount": 100}"#, Some("v1,%%%".into())).await?;
        ensure!(garbled.status() == 400);
        let unsigned = http.post(&url).body(r#"{"amount": 100}"#).send().await?;
        ensure!(unsigned.status() == 400);
        let problem: serde_json::Value = unsigned.json().await?;
        ensure!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("webhook-id")),
            "{problem}"
        );
        // A signed body that was changed in transit.
        let signature = signer.sign("msg_6", now, br#"{"amount": 1}"#);
        let tampered = send("msg_6", now, r#"{"amount": 1000}"#, Some(signature)).await?;
        ensure!(tampered.status() == 401);

        ensure!(
            ledger_total(&store).await? == (2, 12),
            "only msg_1 and msg_2 applied"
        );
        db.close().await?;
        Ok(())
    }
}

per_backend! {
    #[tokio::test]
    async fn accept_stores_the_webhook_in_the_outbox_for_after_the_ack(db) -> anyhow::Result<()> {
        let store = db.store().clone();
        store.migrate(&[onephase_outbox::migrations()]).await?;
        let secret = Secret::parse(SECRET)?;
        let receiver = Receiver::new("fast", Verifier::new(vec![secret.clone().into()]));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let body = br#"{"amount": 5}"#;
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "msg_fast".parse()?);
        headers.insert("webhook-timestamp", now.to_string().parse()?);
        headers.insert(
            "webhook-signature",
            Signer::new(vec![secret.into()])
                .sign("msg_fast", now, body)
                .parse()?,
        );
        let webhook = receiver.verify(&headers, axum::body::Bytes::from_static(body))?;
        let accepted = |store: Store, webhook: Webhook, receiver: Receiver| async move {
            Ok::<bool, anyhow::Error>(match store.db() {
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    let new = receiver
                        .accept(&mut *tx, &webhook, "hooks.received")
                        .await?;
                    tx.commit().await?;
                    new
                }
                Db::Sqlite(s) => {
                    let mut tx = s.writer().begin().await?;
                    let new = receiver
                        .accept(&mut *tx, &webhook, "hooks.received")
                        .await?;
                    tx.commit().await?;
                    new
                }
            })
        };
        ensure!(accepted(store.clone(), webhook.clone(), receiver.clone()).await?);
        ensure!(
            !accepted(store.clone(), webhook.clone(), receiver.clone()).await?,
            "duplicate"
        );
        let status = onephase_outbox::OutboxAdmin::new(store.clone())
            .status()
            .await?;
        ensure!(status.pending == 1, "stored once: {status:?}");
        db.close().await?;
        Ok(())
    }
}
