//! `onephase outbox ...`: operate a running server's outbox over its HTTP API.

use crate::output::outln;
use clap::Subcommand;

use crate::client::{Client, ServerArgs, list, print};

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

/// Runs one `outbox` subcommand.
pub async fn run(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Status { server } => {
            let value = Client::new(&server)?
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
            list(
                &server,
                &path,
                &[
                    ("POSITION", "position"),
                    ("ID", "id"),
                    ("KEY", "key"),
                    ("CREATED", "created_at"),
                    ("PAYLOAD", "payload"),
                ],
            )
            .await?;
        }
        OutboxCommand::Dead {
            relay,
            after,
            limit,
            server,
        } => {
            let path = format!("/v1/relays/{relay}/dead?after={after}&limit={limit}");
            list(
                &server,
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
        OutboxCommand::Retry { relay, id, server } => {
            Client::new(&server)?
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/relays/{relay}/dead/{id}/retry"),
                )
                .await?;
            outln!("{id}: pending again on relay {relay}");
        }
        OutboxCommand::Discard { relay, id, server } => {
            Client::new(&server)?
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/relays/{relay}/dead/{id}"),
                )
                .await?;
            outln!("{id}: discarded from relay {relay}");
        }
    }
    Ok(())
}
