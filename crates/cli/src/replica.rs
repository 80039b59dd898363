//! `onephase replica ...`: the replica clusters a running server watches, and a wait for a
//! consistency token, over its HTTP API.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, ServerArgs, answer, print};
use crate::lease::parse_duration;
use crate::output::outln;
use crate::progress::counting_down;

#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Every watched cluster: each replica's state, lag in seconds and bytes, replay position.
    Status,
    /// Wait until a replica has replayed a consistency token; exits non-zero when none has
    /// within the timeout (read from the primary then).
    Wait {
        /// The consistency token (`op1....`), as a `consistency-token` header carried it.
        #[arg(value_name = "CONSISTENCY_TOKEN")]
        consistency_token: String,
        /// The cluster; needed only when the server watches several.
        #[arg(long)]
        cluster: Option<String>,
        /// How long to wait: `500ms`, `5s` (at most 30s).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Runs one `replica` subcommand.
pub async fn run(command: ReplicaCommand, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    match command {
        ReplicaCommand::Status => {
            let status = client
                .send(reqwest::Method::GET, "/v1/replicas")
                .await?
                .context("the server answered without a status")?;
            if server.json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            let clusters = status["clusters"].as_array().cloned().unwrap_or_default();
            if clusters.is_empty() {
                outln!(
                    "no replica cluster is watched (configure [[replica]]; see docs/replica.md)"
                );
            }
            for cluster in clusters {
                outln!(
                    "{}: primary at {} (timeline {}){}",
                    cluster["cluster"].as_str().unwrap_or("?"),
                    cluster["primary_position"].as_str().unwrap_or("?"),
                    cluster["timeline"],
                    cluster["primary_error"]
                        .as_str()
                        .map(|e| format!(", primary error: {e}"))
                        .unwrap_or_default()
                );
                print(
                    false,
                    &cluster["replicas"],
                    &[
                        ("REPLICA", "name"),
                        ("STATE", "state"),
                        ("LAG_S", "lag_seconds"),
                        ("LAG_BYTES", "lag_bytes"),
                        ("REPLAYED", "replay_position"),
                        ("ERROR", "error"),
                    ],
                );
            }
        }
        ReplicaCommand::Wait {
            consistency_token: token,
            cluster,
            timeout,
        } => {
            let body = json!({
                "token": token,
                "cluster": cluster,
                "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
            let waiting = client.send_json(reqwest::Method::POST, "/v1/replicas/wait", &body);
            let reached = counting_down("waiting for a replica", timeout, waiting)
                .await?
                .context("the server answered without a result")?;
            answer(server.json, &reached, |r| {
                let names: Vec<&str> = r["replicas"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                    .unwrap_or_default();
                format!(
                    "replayed by {} after {} ms: reads there see the token's writes",
                    names.join(", "),
                    r["waited_ms"]
                )
            });
        }
    }
    Ok(())
}
