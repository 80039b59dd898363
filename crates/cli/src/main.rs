//! `onephase`: the server, and the commands that run beside it.
//!
//! `serve`, `migrate` and `token` work on a store directly; `lab` runs on its own. Later operational commands
//! (`outbox status`, `saga list`, ...) are HTTP clients of a running server.

mod client;
mod events;
mod kafka;
mod lab;
mod lease;
mod limit;
mod outbox;
mod output;
mod partition;
mod partition_api;
mod progress;
mod replica;
mod saga;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use onephase_core::{Clock as _, SystemClock};
use onephase_server::auth::{Role, Tokens, generate_token, hash_token};
use onephase_server::{
    ConfigOverrides, LogFormat, Server, ServerConfig, migrations, shutdown_signal,
};
use onephase_store::{Store, StoreOptions};
use output::outln;

/// onephase: transactional outbox and inbox, sagas, signed webhooks, fenced leases and rate
/// limits, without two-phase commit.
///
/// Settings come from flags, then ONEPHASE_* environment variables, then the TOML file given
/// by --config, then defaults. With no settings at all, `onephase serve` listens on
/// 127.0.0.1:7700 with its state in ./onephase.db.
#[derive(Debug, Parser)]
#[command(
    name = "onephase",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 done, 1 error (server unreachable or failing, I/O), 2 usage, \
                  3 refused (invalid input, conflict, authentication), 4 not found."
)]
struct Cli {
    #[command(flatten)]
    server: client::ServerArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API, dashboard and metrics until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply every pending migration to the store (or create the outbox tables in an
    /// application's database with --outbox), then exit.
    Migrate(MigrateArgs),
    /// Operate a running server's outbox: status, tail, dead, retry.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Operate a running server's sagas: register, start, list, show, retry, resolve, abort.
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    /// Operate a running server's webhooks: send, endpoints, attempts, dead, replay.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Operate a running server's fenced leases: acquire, renew, release, list.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Operate a running server's event store: append, read, tail, projections, define,
    /// retry, skip, rebuild, explain, wait, forget.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// The replica clusters a running server watches: status (lag, rotation), and a wait for
    /// a consistency token.
    #[command(subcommand)]
    Replica(replica::ReplicaCommand),
    /// Kafka consumer groups: diagnose them against the brokers (doctor), or list what a
    /// running server watches (status).
    #[command(subcommand)]
    Kafka(kafka::KafkaCommand),
    /// Partitioning: analyze a sample of keys (skew, hot keys, new writes, growth) before
    /// choosing a scheme; a running server's maps, and moving a partition online.
    #[command(subcommand)]
    Partition(partition::PartitionCommand),
    /// Check keys against a running server's rate limits, and list its policies.
    #[command(subcommand)]
    Limit(limit::LimitCommand),
    /// Create, list and revoke API tokens in the store.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run failure scenarios locally on a simulated clock (stampede, retry-storm,
    /// reconnect-flood), naive beside onephase, and print the figures.
    Lab(lab::LabArgs),
    /// Print a completion script for a shell: `onephase completions bash >
    /// /etc/bash_completion.d/onephase`, or `source <(onephase completions zsh)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Store URL: sqlite://PATH (default sqlite://onephase.db) or postgres://USER@HOST/DB.
    #[arg(long, env = "ONEPHASE_STORE", value_name = "URL")]
    store: Option<String>,
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "ONEPHASE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Create or update only the outbox and inbox tables, in this application database
    /// (sqlite://PATH or postgres://USER@HOST/DB), instead of migrating the onephase store.
    #[arg(long, value_name = "APP_DB_URL")]
    outbox: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long, env = "ONEPHASE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    #[command(flatten)]
    store: StoreArgs,

    /// Largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "ONEPHASE_BODY_LIMIT", value_name = "BYTES")]
    body_limit: Option<usize>,

    /// Log filter, e.g. `info` or `onephase=debug,tower_http=debug` [default: info].
    #[arg(long, env = "ONEPHASE_LOG", value_name = "FILTER")]
    log: Option<String>,

    /// Log format: text or json [default: text].
    #[arg(long, env = "ONEPHASE_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,

    /// Seconds to wait for requests in flight on shutdown [default: 30].
    #[arg(long, env = "ONEPHASE_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    shutdown_grace_secs: Option<u64>,

    /// Export spans over OTLP/HTTP to this URL, e.g. http://127.0.0.1:4318/v1/traces
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` gives the base URL instead) [default: no export].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// The `service.name` of exported spans [default: onephase].
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    otlp_service_name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (only its hash is kept).
    Create {
        /// Unique name: letters, digits, '.', '_' or '-'.
        #[arg(long)]
        name: String,
        /// admin (may manage tokens) or client.
        #[arg(long, default_value = "client")]
        role: Role,
        /// Print the token and the [[auth.tokens]] entry for a configuration file instead of
        /// storing it.
        #[arg(long)]
        config_only: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token; it stops working at once.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status for `e`: 4 when what was asked for does not exist, 3 when the server or the
/// store refused the request as given, 2 for a command line that cannot be used (as clap's
/// own usage errors), 1 for everything else.
fn exit_status(e: &anyhow::Error) -> u8 {
    const ERROR: u8 = 1;
    const USAGE: u8 = 2;
    const REFUSED: u8 = 3;
    const NOT_FOUND: u8 = 4;
    for cause in e.chain() {
        if cause.is::<client::UsageError>() {
            return USAGE;
        }
        if let Some(api) = cause.downcast_ref::<client::ApiError>() {
            return match api.status.as_u16() {
                404 => NOT_FOUND,
                400..=499 => REFUSED,
                _ => ERROR,
            };
        }
        if let Some(store) = cause.downcast_ref::<onephase_store::StoreError>() {
            return match store {
                onephase_store::StoreError::Missing { .. } => NOT_FOUND,
                onephase_store::StoreError::InvalidUrl { .. } => REFUSED,
                _ => ERROR,
            };
        }
    }
    ERROR
}

/// An error with its causes, each said once: a cause whose text the message already holds
/// (errors often quote their source) is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = &cli.server;
    match cli.command {
        Command::Serve(args) => {
            let config_file = args.store.config.as_deref();
            let overrides = ConfigOverrides {
                listen: args.listen,
                store: args.store.store,
                body_limit: args.body_limit,
                log: args.log,
                log_format: args.log_format,
                shutdown_grace_secs: args.shutdown_grace_secs,
                otlp_endpoint: args.otlp_endpoint.or_else(otlp_base_endpoint),
                service_name: args.otlp_service_name,
            };
            let config = ServerConfig::load(config_file, overrides)?;
            let exporter = init_tracing(&config, true)?;
            let served = serve(config).await;
            if let Some(exporter) = exporter {
                // Sends the spans still queued; blocking, so off the runtime's threads.
                match tokio::task::spawn_blocking(move || exporter.shutdown()).await {
                    Ok(Err(e)) => eprintln!("warning: {e}"),
                    Err(e) => eprintln!("warning: traces: the exporter did not stop: {e}"),
                    Ok(Ok(())) => {}
                }
            }
            served
        }
        Command::Migrate(MigrateArgs {
            outbox: Some(url), ..
        }) => {
            let store = Store::connect(&url).await?;
            store.migrate(&[onephase_outbox::migrations()]).await?;
            outln!("{}: outbox tables are up to date", store.url());
            store.close().await;
            Ok(())
        }
        Command::Outbox(command) => outbox::run(command, server).await,
        Command::Saga(command) => saga::run(command, server).await,
        Command::Webhook(command) => webhook::run(command, server).await,
        Command::Lease(command) => lease::run(command, server).await,
        Command::Limit(command) => limit::run(command, server).await,
        Command::Replica(command) => replica::run(command, server).await,
        Command::Kafka(command) => kafka::run(command, server).await,
        Command::Events(command) => events::run(command, server).await,
        Command::Lab(args) => lab::lab(args),
        Command::Partition(command) => partition::run(command, server).await,
        Command::Migrate(MigrateArgs {
            store,
            outbox: None,
        }) => {
            let config = load_for_store(store)?;
            init_tracing(&config, false)?;
            let store = Store::connect(&config.store).await?;
            store.migrate(&migrations()).await?;
            outln!("{}: migrations applied", store.url());
            store.close().await;
            Ok(())
        }
        Command::Token(command) => token(command, server.json).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "onephase", &mut script);
            outln!("{}", String::from_utf8_lossy(&script).trim_end());
            Ok(())
        }
    }
}

fn load_for_store(args: StoreArgs) -> anyhow::Result<ServerConfig> {
    let overrides = ConfigOverrides {
        store: args.store,
        ..Default::default()
    };
    Ok(ServerConfig::load(args.config.as_deref(), overrides)?)
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is the base URL of every signal: traces go to its
/// `/v1/traces`, as the OpenTelemetry specification says.
fn otlp_base_endpoint() -> Option<String> {
    let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
    let base = base.trim();
    (!base.is_empty()).then(|| format!("{}/v1/traces", base.trim_end_matches('/')))
}

/// Log lines to stderr, filtered by `log`; with `export` and an OTLP endpoint configured, the
/// spans of the onephase crates are also exported (whatever `log` lets through), and the
/// exporter is returned to be shut down at the end.
fn init_tracing(
    config: &ServerConfig,
    export: bool,
) -> anyhow::Result<Option<onephase_trace::otlp::Exporter>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, filter::Targets};
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter {:?}", config.log))?;
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let log = match config.log_format {
        LogFormat::Text => log.with_filter(filter).boxed(),
        LogFormat::Json => log.json().with_filter(filter).boxed(),
    };
    let traces = &config.traces;
    let exporter = match (&traces.otlp_endpoint, export) {
        (Some(endpoint), true) => {
            let mut otlp = onephase_trace::otlp::OtlpConfig::new(endpoint, traces.service_name());
            otlp.sample_ratio = traces.sample_ratio();
            otlp.headers = traces.headers.clone();
            Some(onephase_trace::otlp::Exporter::start(
                &otlp,
                tokio::runtime::Handle::current(),
            )?)
        }
        _ => None,
    };
    // Only onephase's own spans: a trace shows requests, steps, deliveries and publishes,
    // not every query and connection underneath.
    let spans = exporter.as_ref().map(|exporter| {
        exporter
            .layer()
            .with_filter(Targets::new().with_target("onephase", tracing::Level::INFO))
    });
    tracing_subscriber::registry().with(log).with(spans).init();
    if let Some(endpoint) = traces.otlp_endpoint.as_ref().filter(|_| export) {
        tracing::info!(%endpoint, service = traces.service_name(), "exporting spans over OTLP");
    }
    Ok(exporter)
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    if let Some(token) = server.bootstrap_token() {
        outln!(
            "\nonephase created the first admin token. It is shown only this once; keep it now:\n\n    \
             {token}\n\nTry it:  curl -H 'Authorization: Bearer {token}' http://{addr}/v1/whoami\n"
        );
    }
    server.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn token(command: TokenCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            role,
            config_only,
            store,
        } => {
            let token = generate_token(&mut rand::rng());
            if config_only {
                outln!("{token}\n");
                outln!(
                    "[[auth.tokens]]\nname = {}\nrole = \"{role}\"\nsha256 = \"{}\"",
                    serde_json::to_string(&name)?,
                    hash_token(&token)
                );
                return Ok(());
            }
            let tokens = open_tokens(store).await?;
            tokens
                .create(&name, role, &token, SystemClock.now())
                .await?;
            outln!("{token}");
            eprintln!("created {role} token {name:?}; it is shown only this once");
        }
        TokenCommand::List { store } => {
            let tokens = open_tokens(store).await?;
            let rfc3339 = |at: Option<time::OffsetDateTime>| {
                at.and_then(|at| {
                    at.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
            };
            let rows: Vec<serde_json::Value> = tokens
                .list()
                .await?
                .into_iter()
                .map(|t| {
                    serde_json::json!({
                        "name": t.name,
                        "role": t.role.to_string(),
                        "source": t.source.as_str(),
                        "created_at": rfc3339(t.created_at),
                        "revoked_at": rfc3339(t.revoked_at),
                    })
                })
                .collect();
            client::print(
                json,
                &serde_json::Value::Array(rows),
                &[
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("SOURCE", "source"),
                    ("CREATED", "created_at"),
                    ("REVOKED", "revoked_at"),
                ],
            );
        }
        TokenCommand::Revoke { name, store } => {
            let tokens = open_tokens(store).await?;
            tokens.revoke(&name, SystemClock.now()).await?;
            eprintln!("revoked token {name:?}");
        }
    }
    Ok(())
}

/// The tokens of an existing store: a token command never creates one, so that running it in
/// the wrong folder says so rather than creating and listing an empty store. It names the
/// store it opened on standard error.
async fn open_tokens(store: StoreArgs) -> anyhow::Result<Tokens> {
    let config = load_for_store(store)?;
    let mut options = StoreOptions::default();
    options.create_if_missing = false;
    let store = Store::connect_with(&config.store, &options).await?;
    eprintln!("store: {}", store.url());
    store.migrate(&migrations()).await?;
    Ok(Tokens::new(store, config.tokens)?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
