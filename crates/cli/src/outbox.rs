//! `onephase outbox ...`: operate a running server's outbox over its HTTP API.

use std::time::Duration;

use clap::Subcommand;

use crate::client::{Client, ServerArgs, cell, encode, list, print};
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Each relay's lag, backlog, dead letters and totals.
    Status,
    /// Records of an embedded-log topic, oldest first.
    Tail {
        /// The topic.
        topic: String,
        /// Start after this position.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many records (1 to 1000; per request with --follow).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Keep printing records as they are appended, one per line (JSON lines with --json),
        /// until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
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
    },
    /// Return a dead-lettered row to pending (admin token).
    Retry {
        /// The relay's name.
        relay: String,
        /// The row's message id.
        id: String,
    },
    /// Delete a dead-lettered row for good, releasing the rows of its key (admin token).
    Discard {
        /// The relay's name.
        relay: String,
        /// The row's message id.
        id: String,
    },
}

const RECORD_COLUMNS: &[(&str, &str); 5] = &[
    ("POSITION", "position"),
    ("ID", "id"),
    ("KEY", "key"),
    ("CREATED", "created_at"),
    ("PAYLOAD", "payload"),
];

/// Prints the records of `topic` after `after` as they are appended, until interrupted: a
/// full page is followed at once by the next, a short one by a second's pause.
async fn follow(
    server: &ServerArgs,
    topic: &str,
    mut after: i64,
    limit: u32,
) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    if !server.json {
        outln!(
            "{:<10}  {:<36}  {:<16}  {:<30}  PAYLOAD",
            "POSITION",
            "ID",
            "KEY",
            "CREATED"
        );
    }
    loop {
        let path = format!("/v1/outbox/{}?after={after}&limit={limit}", encode(topic));
        let page = client
            .send(reqwest::Method::GET, &path)
            .await?
            .unwrap_or_default();
        let records = page.as_array().map(Vec::as_slice).unwrap_or_default();
        for record in records {
            if server.json {
                outln!("{record}");
            } else {
                let [position, id, key, created, payload] =
                    RECORD_COLUMNS.map(|(_, field)| cell(&record[field]));
                outln!("{position:<10}  {id:<36}  {key:<16}  {created:<30}  {payload}");
            }
            after = record["position"].as_i64().unwrap_or(after).max(after);
        }
        if records.len() < limit as usize {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Runs one `outbox` subcommand.
pub async fn run(command: OutboxCommand, server: &ServerArgs) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Status => {
            let value = Client::new(server)?
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
            follow: true,
        } => follow(server, &topic, after, limit).await?,
        OutboxCommand::Tail {
            topic,
            after,
            limit,
            follow: false,
        } => {
            let path = format!("/v1/outbox/{}?after={after}&limit={limit}", encode(&topic));
            list(server, &path, RECORD_COLUMNS).await?;
        }
        OutboxCommand::Dead {
            relay,
            after,
            limit,
        } => {
            let path = format!("/v1/relays/{relay}/dead?after={after}&limit={limit}");
            list(
                server,
                &path,
                &[
                    ("SEQ", "seq"),
                    ("ID", "id"),
                    ("TOPIC", "topic"),
                    ("KEY", "key"),
                    ("ATTEMPTS", "attempts"),
                    ("LAST ERROR", "last_error"),
                ],
            )
            .await?;
        }
        OutboxCommand::Retry { relay, id } => {
            Client::new(server)?
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/relays/{}/dead/{}/retry", encode(&relay), encode(&id)),
                )
                .await?;
            outln!("{id}: pending again on relay {relay}");
        }
        OutboxCommand::Discard { relay, id } => {
            Client::new(server)?
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/relays/{}/dead/{}", encode(&relay), encode(&id)),
                )
                .await?;
            outln!("{id}: discarded from relay {relay}");
        }
    }
    Ok(())
}
