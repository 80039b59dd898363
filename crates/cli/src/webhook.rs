//! `onephase webhook ...`: send messages, manage endpoints, inspect attempts and dead letters,
//! and replay, over a running server's HTTP API.

use crate::output::outln;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::client::{Client, ServerArgs, answer, encode, list, print};
use crate::lease::parse_duration;
use crate::progress::Draining;

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Send a message to every matching endpoint.
    Send {
        /// Its event type, like `invoice.paid`.
        event_type: String,
        /// The event's data, as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The application (default `default`).
        #[arg(long)]
        app: Option<String>,
        /// Messages with the same key reach ordered endpoints one after another.
        #[arg(long)]
        partition_key: Option<String>,
        /// Sending again with the same key returns the first message.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Messages, newest first.
    Messages {
        /// Only this application's.
        #[arg(long)]
        app: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One message and where it stands at each endpoint.
    Show {
        /// The message's id (msg_...).
        id: String,
    },
    /// Manage endpoints (admin token for changes).
    #[command(subcommand)]
    Endpoints(EndpointCommand),
    /// Attempts, newest first.
    Attempts {
        /// Only this message's.
        #[arg(long)]
        message: Option<String>,
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Dead letters: deliveries that will not be attempted again.
    Dead {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Deliver again: a message, an endpoint's dead letters, or everything since a time
    /// (admin token).
    Replay {
        /// Only this message.
        #[arg(long)]
        message: Option<String>,
        /// Only to this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only messages sent since this time (RFC 3339, like 2026-11-28T12:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Also what was delivered, not only dead letters.
        #[arg(long)]
        include_delivered: bool,
        /// Then wait until nothing is pending any more (the message's deliveries; with
        /// `--endpoint` that endpoint's queue, else every endpoint's), with a bar of how many
        /// are done. The exit status is 0 only if none went to the dead letters again.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long: `30s`, `5m`, `1h`.
        #[arg(long, default_value = "10m", value_parser = parse_duration, requires = "wait")]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Endpoints by id.
    List {
        /// Only this application's.
        #[arg(long)]
        app: Option<String>,
    },
    /// Create an endpoint; prints its id and the key its receiver verifies with.
    Create {
        /// Where to POST.
        url: String,
        /// The application (default `default`).
        #[arg(long)]
        app: Option<String>,
        /// Only this event type (repeat for several; default every type).
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Deliver messages with the same partition key one after another.
        #[arg(long)]
        ordered: bool,
        /// Attempts in flight at once (default 10).
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// Attempts per second.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// The signing key, whsec_... or whsk_... (default: a new whsec_ secret).
        #[arg(long)]
        key: Option<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// One endpoint.
    Show {
        /// The endpoint's id (ep_...).
        id: String,
    },
    /// Enable: new messages reach it, pending deliveries resume.
    Enable {
        /// The endpoint's id.
        id: String,
    },
    /// Disable: new messages skip it, pending deliveries wait.
    Disable {
        /// The endpoint's id.
        id: String,
        /// Why (shown with the endpoint).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The keys its receiver verifies with (whsec_ secrets, whpk_ public keys).
    Keys {
        /// The endpoint's id.
        id: String,
    },
    /// Start signing with a new key; the old ones keep signing for the overlap.
    Rotate {
        /// The endpoint's id.
        id: String,
        /// The new key (default: a new whsec_ secret).
        #[arg(long)]
        key: Option<String>,
        /// Seconds the old keys keep signing (default 86400).
        #[arg(long)]
        overlap_secs: Option<u64>,
    },
    /// Delete the endpoint with its deliveries.
    Delete {
        /// The endpoint's id.
        id: String,
    },
}

const ENDPOINT_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("APP", "app"),
    ("URL", "url"),
    ("ENABLED", "enabled"),
    ("ORDERED", "ordered"),
    ("CONCURRENCY", "max_concurrency"),
    ("RATE", "rate_limit"),
    ("DISABLED BECAUSE", "disabled_reason"),
];

const DELIVERY_COLUMNS: &[(&str, &str)] = &[
    ("MESSAGE", "message_id"),
    ("ENDPOINT", "endpoint_id"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempts"),
    ("NEXT", "next_attempt_at"),
    ("LAST ERROR", "last_error"),
];

/// `path` with the query parameters that are set.
fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn endpoint_path(id: &str, rest: &str) -> String {
    format!("/v1/webhooks/endpoints/{}{rest}", encode(id))
}

/// A JSON object of the fields that are set.
fn object(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<_, _>>(),
    )
}

fn print_one(json: bool, value: &Value, columns: &[(&str, &str)]) {
    print(json, &Value::Array(vec![value.clone()]), columns);
}

/// Runs one `webhook` subcommand.
pub async fn run(command: WebhookCommand, server: &ServerArgs) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Send {
            event_type,
            payload,
            app,
            partition_key,
            idempotency_key,
        } => {
            let payload: Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let body = object(vec![
                ("event_type", json!(event_type)),
                ("payload", payload),
                ("app", json!(app)),
                ("partition_key", json!(partition_key)),
            ]);
            send(server, &body, idempotency_key.as_deref()).await
        }
        WebhookCommand::Messages { app, limit } => {
            let query = [("app", app), ("limit", Some(limit.to_string()))];
            let path = with_query("/v1/webhooks/messages", &query);
            list(server, &path, MESSAGE_COLUMNS).await
        }
        WebhookCommand::Show { id } => show(server, &id).await,
        WebhookCommand::Endpoints(command) => endpoints(command, server).await,
        WebhookCommand::Attempts {
            message,
            endpoint,
            limit,
        } => {
            let query = [
                ("message_id", message),
                ("endpoint_id", endpoint),
                ("limit", Some(limit.to_string())),
            ];
            let path = with_query("/v1/webhooks/attempts", &query);
            list(server, &path, ATTEMPT_COLUMNS).await
        }
        WebhookCommand::Dead { endpoint, limit } => {
            let query = [
                ("endpoint_id", endpoint),
                ("limit", Some(limit.to_string())),
            ];
            let path = with_query("/v1/webhooks/dead-letters", &query);
            list(server, &path, DELIVERY_COLUMNS).await
        }
        WebhookCommand::Replay {
            message,
            endpoint,
            since,
            include_delivered,
            wait,
            timeout,
        } => {
            let scope = Scope {
                message: message.as_deref(),
                endpoint: endpoint.as_deref(),
            };
            // The newest attempt before the replay: what comes after it is the replay's.
            let marker = match wait {
                true => Some(scope.attempts(&Client::new(server)?, None, 1).await?),
                false => None,
            };
            let body = object(vec![
                ("message_id", json!(message)),
                ("endpoint_id", json!(endpoint)),
                ("since", json!(since)),
                ("include_delivered", json!(include_delivered)),
            ]);
            let replayed = Client::new(server)?
                .send_json(reqwest::Method::POST, "/v1/webhooks/replay", &body)
                .await?
                .unwrap_or_default();
            answer(server.json, &replayed, |a| {
                format!("{} deliveries pending again", a["replayed"])
            });
            let Some(marker) = marker else {
                return Ok(());
            };
            let after = marker.first().and_then(|a| a["id"].as_i64()).unwrap_or(0);
            drained(server, scope, after, timeout).await
        }
    }
}

/// What a replay's wait watches: one message's deliveries (to one endpoint, or all), or the
/// queue of one endpoint or of every endpoint.
#[derive(Clone, Copy)]
struct Scope<'a> {
    message: Option<&'a str>,
    endpoint: Option<&'a str>,
}

impl Scope<'_> {
    /// Deliveries pending now.
    async fn pending(&self, client: &Client) -> anyhow::Result<u64> {
        if let Some(id) = self.message {
            let path = format!("/v1/webhooks/messages/{}", encode(id));
            let message = client
                .send(reqwest::Method::GET, &path)
                .await?
                .unwrap_or_default();
            let rows = message["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let pending = rows
                .iter()
                .filter(|r| self.endpoint.is_none_or(|e| r["endpoint_id"] == e))
                .filter(|r| r["status"] == "pending")
                .count();
            return Ok(pending as u64);
        }
        let stats = client
            .send(reqwest::Method::GET, "/v1/webhooks/stats")
            .await?
            .unwrap_or_default();
        Ok(stats
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| self.endpoint.is_none_or(|e| r["endpoint_id"] == e))
            .map(|r| r["pending"].as_u64().unwrap_or(0))
            .sum())
    }

    /// Up to `limit` attempts, newest first, recorded before attempt `before` (if given).
    async fn attempts(
        &self,
        client: &Client,
        before: Option<i64>,
        limit: u32,
    ) -> anyhow::Result<Vec<Value>> {
        let query = [
            ("message_id", self.message.map(str::to_owned)),
            ("endpoint_id", self.endpoint.map(str::to_owned)),
            ("before", before.map(|b| b.to_string())),
            ("limit", Some(limit.to_string())),
        ];
        let path = with_query("/v1/webhooks/attempts", &query);
        let page = client
            .send(reqwest::Method::GET, &path)
            .await?
            .unwrap_or_default();
        Ok(page.as_array().cloned().unwrap_or_default())
    }

    /// Attempts recorded after attempt `after` that ended a delivery without delivering it
    /// (`dead`, or `gone` for an endpoint that answered 410).
    async fn failed_since(&self, client: &Client, after: i64) -> anyhow::Result<u64> {
        let (mut failed, mut before) = (0, None);
        loop {
            let page = self.attempts(client, before, 1000).await?;
            let newer: Vec<&Value> = page
                .iter()
                .take_while(|a| a["id"].as_i64().is_some_and(|id| id > after))
                .collect();
            failed += newer
                .iter()
                .filter(|a| a["outcome"] == "dead" || a["outcome"] == "gone")
                .count() as u64;
            if newer.len() < 1000 {
                return Ok(failed);
            }
            before = newer.last().and_then(|a| a["id"].as_i64());
        }
    }
}

/// Polls until nothing in `scope` is pending or `timeout` passes, with a bar on standard
/// error; fails on the timeout, or if attempts after attempt `after` sent deliveries to the
/// dead letters.
async fn drained(
    server: &ServerArgs,
    scope: Scope<'_>,
    after: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let deadline = Instant::now() + timeout;
    let mut bar = Draining::new("deliveries");
    let pending = loop {
        let pending = scope.pending(&client).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if pending == 0 || remaining.is_zero() {
            break pending;
        }
        bar.update(pending, remaining);
        tokio::time::sleep(REPLAY_POLL.min(remaining)).await;
    };
    drop(bar);
    let where_ = match (scope.message, scope.endpoint) {
        (Some(id), _) => format!("`onephase webhook show {id}`"),
        (None, Some(id)) => format!("`onephase webhook attempts --endpoint {id}`"),
        (None, None) => "`onephase webhook attempts`".to_owned(),
    };
    anyhow::ensure!(
        pending == 0,
        "{pending} deliveries still pending after {} s; {where_} says why",
        timeout.as_secs()
    );
    let failed = scope.failed_since(&client, after).await?;
    anyhow::ensure!(
        failed == 0,
        "{failed} deliveries went to the dead letters again; {where_} says why"
    );
    eprintln!("nothing pending any more; none went to the dead letters");
    Ok(())
}

const REPLAY_POLL: Duration = Duration::from_millis(500);

const MESSAGE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("APP", "app"),
    ("TYPE", "event_type"),
    ("KEY", "partition_key"),
    ("SENT", "created_at"),
];

const ATTEMPT_COLUMNS: &[(&str, &str)] = &[
    ("MESSAGE", "message_id"),
    ("ENDPOINT", "endpoint_id"),
    ("#", "attempt"),
    ("OUTCOME", "outcome"),
    ("STATUS", "status_code"),
    ("MS", "latency_ms"),
    ("ERROR", "error"),
];

/// Sends a message; says whether its idempotency key made it a repeat.
async fn send(server: &ServerArgs, body: &Value, key: Option<&str>) -> anyhow::Result<()> {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let sent = Client::new(server)?
        .send_json_with(
            reqwest::Method::POST,
            "/v1/webhooks/messages",
            body,
            &headers,
        )
        .await?
        .unwrap_or_default();
    answer(server.json, &sent, |sent| {
        let id = sent["id"].as_str().unwrap_or("?");
        if sent["duplicate"] == json!(true) {
            format!("{id}: already sent with this idempotency key")
        } else {
            format!("{id}: recorded for {} endpoint(s)", sent["endpoints"])
        }
    });
    Ok(())
}

/// Shows a message and its deliveries.
async fn show(server: &ServerArgs, id: &str) -> anyhow::Result<()> {
    let path = format!("/v1/webhooks/messages/{}", encode(id));
    let message = Client::new(server)?
        .send(reqwest::Method::GET, &path)
        .await?
        .unwrap_or_default();
    if server.json {
        outln!("{}", serde_json::to_string_pretty(&message)?);
    } else {
        outln!(
            "{} ({}, app {}): {}",
            message["id"].as_str().unwrap_or("?"),
            message["event_type"].as_str().unwrap_or("?"),
            message["app"].as_str().unwrap_or("?"),
            message["body"].as_str().unwrap_or("")
        );
        outln!();
        print(false, &message["deliveries"], DELIVERY_COLUMNS);
    }
    Ok(())
}

async fn endpoints(command: EndpointCommand, server: &ServerArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        EndpointCommand::List { app } => {
            let path = with_query("/v1/webhooks/endpoints", &[("app", app)]);
            list(server, &path, ENDPOINT_COLUMNS).await?;
        }
        EndpointCommand::Create {
            url,
            app,
            event_types,
            ordered,
            max_concurrency,
            rate_limit,
            key,
            description,
        } => {
            let event_types = if event_types.is_empty() {
                Value::Null
            } else {
                json!(event_types)
            };
            let body = object(vec![
                ("url", json!(url)),
                ("app", json!(app)),
                ("event_types", event_types),
                ("ordered", json!(ordered)),
                ("max_concurrency", json!(max_concurrency)),
                ("rate_limit", json!(rate_limit)),
                ("key", json!(key)),
                ("description", json!(description)),
            ]);
            create_endpoint(server, &body).await?;
        }
        EndpointCommand::Show { id } => {
            let endpoint = Client::new(server)?
                .send(Method::GET, &endpoint_path(&id, ""))
                .await?
                .unwrap_or_default();
            print_one(server.json, &endpoint, ENDPOINT_COLUMNS);
        }
        EndpointCommand::Enable { id } => {
            let path = endpoint_path(&id, "/enable");
            Client::new(server)?.send(Method::POST, &path).await?;
            outln!("{id}: enabled");
        }
        EndpointCommand::Disable { id, reason } => {
            let body = object(vec![("reason", json!(reason))]);
            let path = endpoint_path(&id, "/disable");
            Client::new(server)?
                .send_json(Method::POST, &path, &body)
                .await?;
            outln!("{id}: disabled");
        }
        EndpointCommand::Keys { id } => {
            list(server, &endpoint_path(&id, "/keys"), KEY_COLUMNS).await?;
        }
        EndpointCommand::Rotate {
            id,
            key,
            overlap_secs,
        } => {
            let body = object(vec![
                ("key", json!(key)),
                ("overlap_secs", json!(overlap_secs)),
            ]);
            let new = Client::new(server)?
                .send_json(Method::POST, &endpoint_path(&id, "/keys/rotate"), &body)
                .await?
                .unwrap_or_default();
            answer(server.json, &new, |new| {
                format!(
                    "{id}: now also signing with {}; the older keys stop after the overlap",
                    new["key"].as_str().unwrap_or("?")
                )
            });
        }
        EndpointCommand::Delete { id } => {
            let path = endpoint_path(&id, "");
            Client::new(server)?.send(Method::DELETE, &path).await?;
            outln!("{id}: deleted");
        }
    }
    Ok(())
}

const KEY_COLUMNS: &[(&str, &str)] = &[
    ("SCHEME", "scheme"),
    ("KEY", "key"),
    ("EXPIRES", "expires_at"),
];

/// Creates an endpoint and shows the key its receiver verifies with.
async fn create_endpoint(server: &ServerArgs, body: &Value) -> anyhow::Result<()> {
    use reqwest::Method;
    let client = Client::new(server)?;
    let endpoint = client
        .send_json(Method::POST, "/v1/webhooks/endpoints", body)
        .await?
        .unwrap_or_default();
    let id = endpoint["id"].as_str().unwrap_or("?").to_owned();
    let keys = client
        .send(Method::GET, &endpoint_path(&id, "/keys"))
        .await?
        .unwrap_or_default();
    if server.json {
        let both = json!({"endpoint": endpoint, "keys": keys});
        outln!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        outln!("{id}: created");
        outln!(
            "the receiver verifies with: {}",
            keys[0]["key"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
