//! `onephase outbox ...`: operate a running server's outbox over its HTTP API.

use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the server is and how to authenticate.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "ONEPHASE_SERVER",
        default_value = "http://127.0.0.1:7700",
        value_name = "URL"
    )]
    server: String,
    /// An API token (see `onephase token create`).
    #[arg(
        long,
        env = "ONEPHASE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Each relay's lag, backlog, dead letters and totals.
    Status {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Records of an embedded-log topic, oldest first.
    Tail {
        /// The topic.
        topic: String,
        /// Start after this position.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Dead-lettered rows of a relay's outbox.
    Dead {
        /// The relay's name.
        relay: String,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many rows (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Return a dead-lettered row to pending (admin token).
    Retry {
        /// The relay's name.
        relay: String,
        /// The row's message id.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a dead-lettered row for good, releasing the rows of its key (admin token).
    Discard {
        /// The relay's name.
        relay: String,
        /// The row's message id.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &ServerArgs) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: args.server.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the server at {}: {e}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let detail = problem["detail"].as_str().unwrap_or(text.as_str());
            anyhow::bail!(
                "{} ({status}): {detail}",
                problem["title"].as_str().unwrap_or("request failed")
            );
        }
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&text)?))
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map_or(n.to_string(), |f| format!("{f:.1}")),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], columns: &[(&str, &str)]) {
    let mut lines: Vec<Vec<String>> = vec![
        columns
            .iter()
            .map(|(title, _)| (*title).to_owned())
            .collect(),
    ];
    for row in rows {
        lines.push(
            columns
                .iter()
                .map(|(_, field)| cell(&row[*field]))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    }
}

fn print(json: bool, value: &Value, columns: &[(&str, &str)]) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        let rows = value.as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            println!("(none)");
        } else {
            table(&rows, columns);
        }
    }
}

/// Runs one `outbox` subcommand.
pub async fn run(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Status { server } => {
            let value = Client::new(&server)
                .send(reqwest::Method::GET, "/v1/relays")
                .await?
                .unwrap_or_default();
            print(
                server.json,
                &value,
                &[
                    ("RELAY", "name"),
                    ("SINK", "sink"),
                    ("LAG (s)", "oldest_pending_seconds"),
                    ("PENDING", "pending"),
                    ("DEAD", "dead"),
                    ("PUBLISHED", "published_total"),
                    ("FAILED", "failed_total"),
                ],
            );
        }
        OutboxCommand::Tail {
            topic,
            after,
            limit,
            server,
        } => {
            let path = format!("/v1/outbox/{topic}?after={after}&limit={limit}");
            let value = Client::new(&server)
                .send(reqwest::Method::GET, &path)
                .await?
                .unwrap_or_default();
            print(
                server.json,
                &value,
                &[
                    ("POSITION", "position"),
                    ("ID", "id"),
                    ("KEY", "key"),
                    ("CREATED", "created_at"),
                    ("PAYLOAD", "payload"),
                ],
            );
        }
        OutboxCommand::Dead {
            relay,
            after,
            limit,
            server,
        } => {
            let path = format!("/v1/relays/{relay}/dead?after={after}&limit={limit}");
            let value = Client::new(&server)
                .send(reqwest::Method::GET, &path)
                .await?
                .unwrap_or_default();
            print(
                server.json,
                &value,
                &[
                    ("SEQ", "seq"),
                    ("ID", "id"),
                    ("TOPIC", "topic"),
                    ("KEY", "key"),
                    ("ATTEMPTS", "attempts"),
                    ("LAST ERROR", "last_error"),
                ],
            );
        }
        OutboxCommand::Retry { relay, id, server } => {
            Client::new(&server)
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/relays/{relay}/dead/{id}/retry"),
                )
                .await?;
            println!("{id}: pending again on relay {relay}");
        }
        OutboxCommand::Discard { relay, id, server } => {
            Client::new(&server)
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/relays/{relay}/dead/{id}"),
                )
                .await?;
            println!("{id}: discarded from relay {relay}");
        }
    }
    Ok(())
}
