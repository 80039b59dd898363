//! `onephase partition map|move|status`: the partition maps a running server serves and the
//! online moves it drives, over its HTTP API.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::client::{ApiError, Client, ServerArgs, answer, cell, encode, print};
use crate::output::outln;

/// `onephase partition map ...`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// The map to show; every map when left out.
    name: Option<String>,
    #[command(subcommand)]
    command: Option<MapCommand>,
}

#[derive(Debug, Subcommand)]
enum MapCommand {
    /// Publish a map, or a new version of one (admin): the version rises by one, and the
    /// server refuses it if someone else changed the map in between.
    Set {
        /// The map's name.
        name: String,
        /// The scheme as JSON: `{"kind":"range","splits":["1000000"]}`, `{"kind":"jump",
        /// "partitions":8}`, `{"kind":"ring","partitions":8,"vnodes":128}`,
        /// `{"kind":"rendezvous","weights":[1,1,2]}` or `{"kind":"modulo","partitions":8}`.
        #[arg(long, value_parser = parse_scheme)]
        scheme: Value,
        /// The owner of each partition, in order, separated by commas (shard names for a map
        /// whose partitions move).
        #[arg(long, value_delimiter = ',', required = true)]
        owners: Vec<String>,
        /// The version to publish; the current one plus one when left out.
        #[arg(long)]
        map_version: Option<u64>,
    },
    /// Every version the map has had, oldest first.
    History {
        /// The map's name.
        name: String,
    },
    /// Where a key goes under the current version.
    Route {
        /// The map's name.
        name: String,
        /// The key.
        key: String,
    },
}

/// `onephase partition move ...`.
#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The map (a range map) whose partition moves.
    map: String,
    /// The partition to move.
    #[arg(long)]
    partition: u32,
    /// The shard that takes it (a name under `[partition.shards]` of the server's
    /// configuration).
    #[arg(long, value_name = "SHARD")]
    to: String,
    /// The table whose rows in the partition's key range move (`name` or `schema.name`, the
    /// same in both shards).
    #[arg(long)]
    table: String,
    /// The table's key column: unique, integer or text; the map's keys are its values.
    #[arg(long)]
    key: String,
    /// Rows per copied chunk (default 10,000).
    #[arg(long)]
    chunk_rows: Option<u32>,
    /// At most this many rows per second while copying (default: no limit).
    #[arg(long)]
    rows_per_second: Option<u32>,
    /// Follow the move until it ends, with its progress on standard error; exits non-zero if
    /// it was rolled back.
    #[arg(long)]
    wait: bool,
}

/// `onephase partition status ...`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The map; every map and its moves in progress when left out.
    map: Option<String>,
    /// A move of the map: its phase and progress in detail.
    id: Option<String>,
}

fn parse_scheme(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not JSON ({e}); write it like {{\"kind\":\"range\",\"splits\":[\"1000\"]}}, in \
             single quotes in a shell"
        )
    })?;
    if !value.is_object() {
        return Err("a scheme is a JSON object with a \"kind\"".to_owned());
    }
    Ok(value)
}

/// `/v1/partitions/{map}`.
fn map_path(map: &str) -> String {
    format!("/v1/partitions/{}", encode(map))
}

/// Runs `partition map`.
pub async fn map(args: MapArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    match (args.command, args.name) {
        (None, None) => {
            let list = client
                .send(reqwest::Method::GET, "/v1/partitions")
                .await?
                .context("the server answered without a list")?;
            if server.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let rows: Vec<Value> = list["maps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(map_row)
                .collect();
            print(
                false,
                &Value::Array(rows),
                &[
                    ("MAP", "name"),
                    ("VERSION", "version"),
                    ("SCHEME", "kind"),
                    ("PARTITIONS", "partitions"),
                    ("OWNERS", "owners"),
                ],
            );
            let shards: Vec<String> = list["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .map(cell)
                .collect();
            outln!(
                "shards: {}",
                if shards.is_empty() {
                    "none configured (see [partition.shards] in docs/configuration.md)".to_owned()
                } else {
                    shards.join(", ")
                }
            );
        }
        (None, Some(name)) => {
            let map = client
                .send(reqwest::Method::GET, &map_path(&name))
                .await?
                .context("the server answered without a map")?;
            answer(server.json, &map, describe_map);
        }
        (
            Some(MapCommand::Set {
                name,
                scheme,
                owners,
                map_version,
            }),
            _,
        ) => {
            let version = match map_version {
                Some(v) => v,
                None => match client.send(reqwest::Method::GET, &map_path(&name)).await {
                    Ok(current) => current.and_then(|m| m["version"].as_u64()).unwrap_or(0) + 1,
                    Err(e) if is_not_found(&e) => 1,
                    Err(e) => return Err(e),
                },
            };
            let body = json!({ "version": version, "scheme": scheme, "owners": owners });
            let map = client
                .send_json(reqwest::Method::PUT, &map_path(&name), &body)
                .await?
                .context("the server answered without the map")?;
            answer(server.json, &map, |m| {
                format!("published {}", describe_map(m))
            });
        }
        (Some(MapCommand::History { name }), _) => {
            let history = client
                .send(
                    reqwest::Method::GET,
                    &format!("{}/history", map_path(&name)),
                )
                .await?
                .context("the server answered without a history")?;
            if server.json {
                outln!("{}", serde_json::to_string_pretty(&history)?);
                return Ok(());
            }
            let rows: Vec<Value> = history["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let mut row = map_row(&v["spec"]);
                    row["published_ms"] = v["published_ms"].clone();
                    row
                })
                .collect();
            print(
                false,
                &Value::Array(rows),
                &[
                    ("VERSION", "version"),
                    ("PUBLISHED_MS", "published_ms"),
                    ("SCHEME", "kind"),
                    ("PARTITIONS", "partitions"),
                    ("OWNERS", "owners"),
                ],
            );
        }
        (Some(MapCommand::Route { name, key }), _) => {
            let route = client
                .send(
                    reqwest::Method::GET,
                    &format!("{}/route?key={}", map_path(&name), encode(&key)),
                )
                .await?
                .context("the server answered without a route")?;
            answer(server.json, &route, |r| {
                format!(
                    "{} -> partition {} on {} (map version {})",
                    cell(&r["key"]),
                    r["partition"],
                    cell(&r["owner"]),
                    r["version"]
                )
            });
        }
    }
    Ok(())
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|a| a.status == reqwest::StatusCode::NOT_FOUND)
}

/// A map as one table row.
fn map_row(map: &Value) -> Value {
    let owners: Vec<String> = map["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(cell)
        .collect();
    json!({
        "name": map["name"],
        "version": map["version"],
        "kind": map["scheme"]["kind"],
        "partitions": owners.len(),
        "owners": owners.join(","),
    })
}

/// A map in words, with a range map's key ranges.
fn describe_map(map: &Value) -> String {
    let owners: Vec<String> = map["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(cell)
        .collect();
    let mut text = format!(
        "{} version {}: {} over {} partitions",
        cell(&map["name"]),
        map["version"],
        cell(&map["scheme"]["kind"]),
        owners.len()
    );
    if let Some(splits) = map["scheme"]["splits"].as_array() {
        let splits: Vec<String> = splits.iter().map(cell).collect();
        for (i, owner) in owners.iter().enumerate() {
            let lo = i
                .checked_sub(1)
                .and_then(|j| splits.get(j))
                .map_or("lowest", String::as_str);
            let hi = splits.get(i).map_or("highest", String::as_str);
            text.push_str(&format!("\n  {i}: [{lo}, {hi}) on {owner}"));
        }
    } else {
        for (i, owner) in owners.iter().enumerate() {
            text.push_str(&format!("\n  {i}: {owner}"));
        }
    }
    text
}

/// Runs `partition move`.
pub async fn start_move(args: MoveArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let body = json!({
        "partition": args.partition,
        "to": args.to,
        "table": args.table,
        "key": args.key,
        "chunk_rows": args.chunk_rows,
        "rows_per_second": args.rows_per_second,
    });
    let started = client
        .send_json(
            reqwest::Method::POST,
            &format!("{}/moves", map_path(&args.map)),
            &body,
        )
        .await?
        .context("the server answered without the move")?;
    let id = started["spec"]["id"]
        .as_str()
        .context("the server's answer has no move id")?
        .to_owned();
    if !args.wait {
        answer(server.json, &started, |m| {
            format!(
                "move {id} started: partition {} of {} from {} to {}; follow it with \
                 `onephase partition status {} {id}`",
                m["spec"]["partition"],
                cell(&m["spec"]["map"]),
                cell(&m["spec"]["source"]),
                cell(&m["spec"]["target"]),
                cell(&m["spec"]["map"]),
            )
        });
        return Ok(());
    }
    let path = format!("{}/moves/{}", map_path(&args.map), encode(&id));
    let ended = follow(&client, &path).await?;
    answer(server.json, &ended, describe_move);
    match ended["status"]["phase"].as_str() {
        Some("done") => Ok(()),
        _ => anyhow::bail!(
            "move {id} did not complete: {}",
            ended["status"]["error"]
                .as_str()
                .or(ended["status_error"].as_str())
                .unwrap_or("it was rolled back")
        ),
    }
}

/// Polls a move until it ends, drawing its progress on standard error: rows copied, the rate
/// and time left, then the catch-up lag and the phase.
async fn follow(client: &Client, path: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} rows, {per_sec}, {eta} left; {msg}")
    {
        bar.set_style(style);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let view = client
            .send(reqwest::Method::GET, path)
            .await?
            .context("the server answered without the move")?;
        let status = &view["status"];
        bar.set_length(status["total_rows"].as_u64().unwrap_or(0));
        bar.set_position(status["copied_rows"].as_u64().unwrap_or(0));
        bar.set_message(match status["phase"].as_str() {
            Some(phase) => format!(
                "{phase}, catch-up lag {}{}",
                status["catch_up_lag"],
                status["error"]
                    .as_str()
                    .map(|e| format!(", retrying after: {e}"))
                    .unwrap_or_default()
            ),
            None => "starting".to_owned(),
        });
        if view["ended"].as_bool() == Some(true) {
            bar.finish_and_clear();
            return Ok(view);
        }
    }
}

/// A move in words.
fn describe_move(m: &Value) -> String {
    let spec = &m["spec"];
    let status = &m["status"];
    let mut text = format!(
        "move {}: partition {} of {} [{}, {}) in {}.{} from {} to {}",
        cell(&spec["id"]),
        spec["partition"],
        cell(&spec["map"]),
        spec["lo"].as_str().unwrap_or("lowest"),
        spec["hi"].as_str().unwrap_or("highest"),
        cell(&spec["table"]),
        cell(&spec["key"]),
        cell(&spec["source"]),
        cell(&spec["target"]),
    );
    if status.is_null() {
        text.push_str(&format!(
            "\n  {}",
            m["status_error"]
                .as_str()
                .unwrap_or("not started on the source yet")
        ));
        return text;
    }
    text.push_str(&format!(
        "\n  phase {}{}\n  copied {} of {} rows; catch-up lag {}; chunks verified {}, repaired {}",
        cell(&status["phase"]),
        if m["ended"].as_bool() == Some(true) {
            " (ended)"
        } else {
            ""
        },
        status["copied_rows"],
        status["total_rows"],
        status["catch_up_lag"],
        status["chunks_verified"],
        status["chunks_repaired"],
    ));
    if let Some(pause) = status["pause_ms"].as_u64() {
        text.push_str(&format!(
            "\n  writes to the range paused {pause} ms at the cutover"
        ));
    }
    if let Some(error) = status["error"].as_str() {
        text.push_str(&format!("\n  last error: {error}"));
    }
    text
}

/// Runs `partition status`.
pub async fn status(args: StatusArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    match (args.map, args.id) {
        (Some(map), Some(id)) => {
            let view = client
                .send(
                    reqwest::Method::GET,
                    &format!("{}/moves/{}", map_path(&map), encode(&id)),
                )
                .await?
                .context("the server answered without the move")?;
            answer(server.json, &view, describe_move);
        }
        (map, _) => {
            let maps: Vec<String> = match map {
                Some(map) => vec![map],
                None => client
                    .send(reqwest::Method::GET, "/v1/partitions")
                    .await?
                    .and_then(|l| l["maps"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .map(|m| cell(&m["name"]))
                    .collect(),
            };
            let mut all = Vec::new();
            for map in &maps {
                let moves = client
                    .send(reqwest::Method::GET, &format!("{}/moves", map_path(map)))
                    .await?
                    .and_then(|l| l["moves"].as_array().cloned())
                    .unwrap_or_default();
                all.extend(moves);
            }
            if server.json {
                outln!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let rows: Vec<Value> = all
                .iter()
                .map(|m| {
                    json!({
                        "id": m["spec"]["id"],
                        "map": m["spec"]["map"],
                        "partition": m["spec"]["partition"],
                        "from": m["spec"]["source"],
                        "to": m["spec"]["target"],
                        "phase": m["status"]["phase"],
                        "copied": m["status"]["copied_rows"],
                        "total": m["status"]["total_rows"],
                        "lag": m["status"]["catch_up_lag"],
                        "pause_ms": m["status"]["pause_ms"],
                    })
                })
                .collect();
            print(
                false,
                &Value::Array(rows),
                &[
                    ("MOVE", "id"),
                    ("MAP", "map"),
                    ("PARTITION", "partition"),
                    ("FROM", "from"),
                    ("TO", "to"),
                    ("PHASE", "phase"),
                    ("COPIED", "copied"),
                    ("OF", "total"),
                    ("LAG", "lag"),
                    ("PAUSE_MS", "pause_ms"),
                ],
            );
        }
    }
    Ok(())
}
