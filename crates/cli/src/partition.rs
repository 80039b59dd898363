//! `onephase partition ...`: the analyzer, run here on a sample of keys from a file, standard
//! input or a table column; the map, move and status subcommands talk to a running server
//! (`partition_api.rs`).

use std::io::BufRead as _;
use std::path::PathBuf;
use std::str::FromStr as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures::TryStreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use onephase_partition::{Analysis, AnalyzeOptions, analyze, report};

use crate::client::UsageError;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Run a sample of keys through every scheme and partition count, before you choose:
    /// skew, hot keys, where new writes land, and how many keys move when a partition is added.
    ///
    /// Keys are read in the order they were written: one per line from --file (- for standard
    /// input), or a column of a table (--db with --table and --column, in --order-by order).
    Analyze(AnalyzeArgs),
    /// The maps a running server serves (every map, or one with its key ranges), and
    /// publishing a new version (`map set`), a map's history, a key's route.
    Map(crate::partition_api::MapArgs),
    /// Move a partition of a range map to another shard while writers keep writing: backfill,
    /// catch-up, verify, a short fenced cutover, clean-up, driven by the server as a saga.
    Move(crate::partition_api::MoveArgs),
    /// Moves and their progress: every map's, one map's, or one move in detail.
    Status(crate::partition_api::StatusArgs),
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A file of keys, one per line; `-` reads standard input.
    #[arg(long, conflicts_with = "db", required_unless_present = "db")]
    file: Option<PathBuf>,
    /// A database to read keys from, read-only: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, requires_all = ["table", "column"], value_name = "URL")]
    db: Option<String>,
    /// The table (`name` or `schema.name`).
    #[arg(long)]
    table: Option<String>,
    /// The key column; any type, read as text.
    #[arg(long)]
    column: Option<String>,
    /// The column that orders rows as they were written (an id, a creation time).
    #[arg(long)]
    order_by: Option<String>,
    /// Read at most this many keys.
    #[arg(long, default_value_t = onephase_partition::analyze::DEFAULT_SAMPLE_LIMIT)]
    limit: usize,
    /// Partition counts to try, separated by commas.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    partitions: Vec<u32>,
    /// Schemes to try, separated by commas: modulo, jump, rendezvous, ring, range.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "modulo,jump,rendezvous,ring,range"
    )]
    schemes: Vec<String>,
    /// Virtual nodes per partition for the ring.
    #[arg(long, default_value_t = 128)]
    vnodes: u32,
    /// How many hot keys to list.
    #[arg(long, default_value_t = 10)]
    hot_keys: usize,
    /// The newest share of the sample taken as writes made after the choice (0 to 0.9).
    #[arg(long, default_value_t = 0.2)]
    new_share: f64,
    /// Print a histogram of every candidate's partitions.
    #[arg(long)]
    histograms: bool,
    /// Write a chart of every candidate's share per partition to this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// Runs one `partition` subcommand.
pub async fn run(
    command: PartitionCommand,
    server: &crate::client::ServerArgs,
) -> anyhow::Result<()> {
    match command {
        PartitionCommand::Analyze(args) => analyze_command(args, server.json).await,
        PartitionCommand::Map(args) => crate::partition_api::map(args, server).await,
        PartitionCommand::Move(args) => crate::partition_api::start_move(args, server).await,
        PartitionCommand::Status(args) => crate::partition_api::status(args, server).await,
    }
}

async fn analyze_command(args: AnalyzeArgs, json: bool) -> anyhow::Result<()> {
    for &n in &args.partitions {
        if n == 0 || n > onephase_partition::scheme::MAX_PARTITIONS {
            return Err(UsageError(format!(
                "--partitions {n}: use 1 to {}",
                onephase_partition::scheme::MAX_PARTITIONS
            ))
            .into());
        }
    }
    if args.limit == 0 {
        return Err(UsageError("--limit must be at least 1".into()).into());
    }
    let bar = reading_bar();
    let keys = match (&args.file, &args.db) {
        (Some(file), _) => read_lines(file, args.limit, &bar)?,
        (None, Some(url)) => read_column(url, &args, &bar).await?,
        (None, None) => return Err(UsageError("give --file or --db".into()).into()),
    };
    bar.finish_and_clear();
    let options = AnalyzeOptions {
        partitions: args.partitions.clone(),
        schemes: args.schemes.clone(),
        vnodes: args.vnodes,
        hot_keys: args.hot_keys,
        sketch_capacity: 1_000.max(args.hot_keys * 10),
        new_share: args.new_share,
    };
    let analysis = analyze(&keys, &options).map_err(|e| UsageError(e.to_string()))?;
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&analysis).into_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&analysis)?);
    } else {
        outln!("{}", report::text(&analysis, args.histograms).trim_end());
    }
    Ok(())
}

fn reading_bar() -> ProgressBar {
    // indicatif draws nothing when standard error is not a terminal.
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} keys read ({per_sec})") {
        bar.set_style(style);
    }
    bar
}

fn read_lines(file: &PathBuf, limit: usize, bar: &ProgressBar) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut keys = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        if keys.len() >= limit {
            break;
        }
        let line = line.map_err(|e| {
            UsageError(format!(
                "{} line {}: {e} (keys are read as UTF-8 text, one per line)",
                file.display(),
                i + 1
            ))
        })?;
        let key = line.strip_suffix('\r').unwrap_or(&line);
        if !key.is_empty() {
            keys.push(key.to_owned());
            bar.inc(1);
        }
    }
    Ok(keys)
}

/// A table or column name, quoted; refused unless it is plain letters, digits and `_`
/// (with one `.` for a table's schema), so nothing from the command line becomes SQL.
fn identifier(what: &str, name: &str, parts: usize) -> Result<String, UsageError> {
    let pieces: Vec<&str> = name.split('.').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if pieces.len() > parts || !pieces.iter().all(plain) {
        return Err(UsageError(format!(
            "--{what} {name:?}: use letters, digits and '_'{}",
            if parts > 1 {
                ", as name or schema.name"
            } else {
                ""
            }
        )));
    }
    Ok(pieces
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

async fn read_column(
    url: &str,
    args: &AnalyzeArgs,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    let table = identifier("table", args.table.as_deref().unwrap_or_default(), 2)?;
    let column = identifier("column", args.column.as_deref().unwrap_or_default(), 1)?;
    let order = match &args.order_by {
        Some(c) => format!(" ORDER BY {}", identifier("order-by", c, 1)?),
        None => String::new(),
    };
    // Every name in this text went through `identifier`; the limit is a number. The alias
    // keeps ORDER BY on the column itself, not on its text (where "10" sorts before "9").
    let sql = format!(
        "SELECT CAST({column} AS TEXT) AS onephase_key FROM {table} WHERE {column} IS NOT NULL{order} LIMIT {}",
        args.limit
    );
    let redacted = onephase_store::redact_url(url);
    let keys: Vec<String> = if url.starts_with("sqlite:") {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map_err(|e| UsageError(format!("--db {redacted}: {e}")))?
            .read_only(true)
            .create_if_missing(false);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .with_context(|| format!("opening {redacted} read-only"))?;
        let keys = collect(
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).fetch(&pool),
            bar,
        )
        .await;
        pool.close().await;
        keys
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                        .execute(conn)
                        .await
                        .map(drop)
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("connecting to {redacted}"))?;
        let keys = collect(
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).fetch(&pool),
            bar,
        )
        .await;
        pool.close().await;
        keys
    } else {
        return Err(UsageError(format!(
            "--db {redacted}: use sqlite://PATH or postgres://USER@HOST/DB"
        ))
        .into());
    }
    .with_context(|| {
        format!(
            "reading {} of {table} in {redacted}",
            args.column.as_deref().unwrap_or_default()
        )
    })?;
    Ok(keys)
}

async fn collect<'a>(
    rows: impl futures::Stream<Item = Result<String, sqlx::Error>> + 'a,
    bar: &ProgressBar,
) -> Result<Vec<String>, sqlx::Error> {
    rows.inspect_ok(|_| bar.inc(1)).try_collect().await
}

/// Each candidate's share per partition, one row of bars each.
fn svg(analysis: &Analysis) -> maud::Markup {
    let labels: Vec<String> = analysis
        .candidates
        .iter()
        .map(|c| {
            format!(
                "{} ×{} (skew {:.2})",
                c.scheme.kind(),
                c.loads.len(),
                c.skew
            )
        })
        .collect();
    let series: Vec<(&str, &str, Vec<f64>)> = analysis
        .candidates
        .iter()
        .zip(&labels)
        .map(|(c, label)| {
            let colour = if c.scheme.kind() == "range" {
                "#d92d20"
            } else {
                "#1570ef"
            };
            let shares = c
                .loads
                .iter()
                .map(|l| *l as f64 * 100.0 / analysis.keys as f64)
                .collect();
            (label.as_str(), colour, shares)
        })
        .collect();
    onephase_chart::bars("Share of keys per partition", "%", &series)
}
