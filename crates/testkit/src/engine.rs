use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Set to `1` to make every engine suite mandatory: a missing engine fails instead of skipping.
pub const REQUIRE_ENGINES_VAR: &str = "ONEPHASE_REQUIRE_ENGINES";

/// An engine some test suite needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Engine {
    /// PostgreSQL, the scale-out store.
    Postgres,
    /// A PostgreSQL server with `max_prepared_transactions > 0` (the lab's two-phase commit
    /// scenario); scripts/engines.sh starts a cluster of its own for it.
    PostgresPrepared,
    /// A PostgreSQL primary with two streaming replicas of the project's own
    /// (scripts/pg-replica.sh): the variable lists the primary's URL, then the replicas',
    /// separated by commas. The second replica is the one the failover test promotes.
    PostgresReplicas,
    /// Redis: shared rate limits, Redis Streams.
    Redis,
    /// NATS with JetStream.
    Nats,
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq,
    /// etcd v3: fenced leases.
    Etcd,
    /// A Kafka-compatible broker.
    Kafka,
}

impl Engine {
    /// Every engine, in the order suites report them.
    pub const ALL: [Engine; 8] = [
        Engine::Postgres,
        Engine::PostgresPrepared,
        Engine::PostgresReplicas,
        Engine::Redis,
        Engine::Nats,
        Engine::RabbitMq,
        Engine::Etcd,
        Engine::Kafka,
    ];

    /// The engine's name, as people say it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "PostgreSQL",
            Engine::PostgresPrepared => "PostgreSQL with prepared transactions",
            Engine::PostgresReplicas => "PostgreSQL streaming replicas",
            Engine::Redis => "Redis",
            Engine::Nats => "NATS JetStream",
            Engine::RabbitMq => "RabbitMQ",
            Engine::Etcd => "etcd",
            Engine::Kafka => "Kafka",
        }
    }

    /// The environment variable that tells the tests where the engine is.
    pub fn env_var(self) -> &'static str {
        match self {
            Engine::Postgres => "ONEPHASE_TEST_POSTGRES_URL",
            Engine::PostgresPrepared => "ONEPHASE_TEST_POSTGRES_2PC_URL",
            Engine::PostgresReplicas => "ONEPHASE_TEST_POSTGRES_REPLICAS",
            Engine::Redis => "ONEPHASE_TEST_REDIS_URL",
            Engine::Nats => "ONEPHASE_TEST_NATS_URL",
            Engine::RabbitMq => "ONEPHASE_TEST_AMQP_URL",
            Engine::Etcd => "ONEPHASE_TEST_ETCD_URL",
            Engine::Kafka => "ONEPHASE_TEST_KAFKA_BROKERS",
        }
    }

    /// The value `scripts/engines.sh` exports for a local engine, shown in skip messages.
    pub fn example(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Engine::PostgresPrepared => "postgres://postgres@127.0.0.1:5433/postgres",
            Engine::PostgresReplicas => {
                "postgres://postgres@127.0.0.1:5434/postgres,postgres://postgres@127.0.0.1:5435/postgres,postgres://postgres@127.0.0.1:5436/postgres"
            }
            Engine::Redis => "redis://127.0.0.1:6379",
            Engine::Nats => "nats://127.0.0.1:4222",
            Engine::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Engine::Etcd => "http://127.0.0.1:2379",
            Engine::Kafka => "127.0.0.1:9092",
        }
    }
}

/// Whether `ONEPHASE_REQUIRE_ENGINES=1` is set.
pub fn engines_required() -> bool {
    std::env::var(REQUIRE_ENGINES_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Where `engine` is, if its suite should run.
///
/// Returns the value of [`Engine::env_var`] when it is set and the engine accepts a TCP
/// connection. Otherwise the suite is skipped: this returns `None` and writes one line to
/// standard error (once per engine per test binary, past the test harness's output capture)
/// naming the engine, the variable and the reason.
///
/// # Panics
///
/// When [`engines_required`] and the engine is not configured or not reachable: the full suite
/// must fail rather than pass by skipping.
pub fn engine_url(engine: Engine) -> Option<String> {
    let reason = match std::env::var(engine.env_var()) {
        Ok(value) if !value.trim().is_empty() => match probe(&value) {
            Ok(()) => return Some(value),
            Err(why) => format!("{} = {value:?} does not answer ({why})", engine.env_var()),
        },
        _ => format!("{} is not set", engine.env_var()),
    };
    if engines_required() {
        panic!(
            "{REQUIRE_ENGINES_VAR}=1 but the {} suite cannot run: {reason}. Start the engines with \
             scripts/engines.sh (or set {} to a reachable {}, e.g. {})",
            engine.name(),
            engine.env_var(),
            engine.name(),
            engine.example()
        );
    }
    let remedy = format!(
        "Set {}={} (scripts/engines.sh prints every variable) to run it",
        engine.env_var(),
        engine.example()
    );
    announce_skip(engine, &reason, &remedy);
    None
}

/// Skips (or, under [`engines_required`], fails) an engine suite that this build left out: its
/// client needs the cargo feature `feature` of `krate`, off by default because it needs more
/// than cargo to build (protoc, a C toolchain).
///
/// # Panics
///
/// When [`engines_required`]: the full suite must build every engine client.
pub fn engine_not_built(engine: Engine, krate: &str, feature: &str) {
    let reason = format!(
        "{krate} was built without its `{feature}` feature, which the {} client needs",
        engine.name()
    );
    if engines_required() {
        panic!(
            "{REQUIRE_ENGINES_VAR}=1 but {reason}; run the full suite with --all-features \
             (scripts/test.sh does)"
        );
    }
    announce_skip(
        engine,
        &reason,
        &format!("Build with `--features {feature}` (scripts/test.sh builds them all) to run it"),
    );
}

/// Where an outside checking tool is (a validator from another ecosystem, say), if its suite
/// should run: the path in `var`, when that file exists. Otherwise the suite is skipped with a
/// line naming the tool and the variable, or, under [`engines_required`], fails.
///
/// # Panics
///
/// When [`engines_required`] and the tool is not there: the full suite runs every check.
pub fn tool_path(var: &str, tool: &str) -> Option<std::path::PathBuf> {
    let reason = match std::env::var(var) {
        Ok(path) if std::path::Path::new(&path).is_file() => {
            return Some(std::path::PathBuf::from(path));
        }
        Ok(path) => format!("{var} = {path:?} is not a file"),
        Err(_) => format!("{var} is not set"),
    };
    if engines_required() {
        panic!(
            "{REQUIRE_ENGINES_VAR}=1 but the {tool} check cannot run: {reason}. scripts/test.sh installs it and sets {var}"
        );
    }
    announce(
        tool,
        &reason,
        &format!("scripts/test.sh installs it and sets {var} to run it"),
    );
    None
}

fn announce_skip(engine: Engine, reason: &str, remedy: &str) {
    announce(engine.name(), reason, remedy);
}

/// Writes one SKIPPED line per suite and test binary.
fn announce(suite: &str, reason: &str, remedy: &str) {
    static ANNOUNCED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let announced = ANNOUNCED.get_or_init(|| Mutex::new(HashSet::new()));
    let first = announced
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(suite.to_owned());
    if !first {
        return;
    }
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
        .map(|name| match name.rsplit_once('-') {
            // Cargo names test binaries <target>-<16 hex digits>.
            Some((target, hash)) if hash.len() == 16 => target.to_owned(),
            _ => name,
        })
        .unwrap_or_else(|| "tests".to_owned());
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    // Written to the stderr handle rather than with eprintln!, which the test harness captures
    // and hides for passing tests: a skipped suite must never be silent.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {suite} suite in {package} ({binary}): {reason}. {remedy}.",
    );
}

/// Checks that the first host:port in `value` accepts a TCP connection within two seconds.
fn probe(value: &str) -> Result<(), String> {
    let address = host_port(value).ok_or_else(|| "cannot find host:port in it".to_owned())?;
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .collect();
    let mut last = format!("{address} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// The `host:port` of a URL (`scheme://user:pass@host:port/path?query`) or of the first entry
/// of a broker list (`host:port,host:port`).
fn host_port(value: &str) -> Option<String> {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    let first = rest.split(',').next()?;
    let authority = first.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return None;
    }
    if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        return Some(host_port.to_owned());
    }
    let port = match value.split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => 5432,
        Some("redis") => 6379,
        Some("nats") => 4222,
        Some("amqp") => 5672,
        Some("http") => 80,
        _ => return None,
    };
    Some(format!("{host_port}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_host_and_port_in_every_form_the_suites_use() {
        for engine in Engine::ALL {
            let hp = host_port(engine.example()).unwrap();
            assert!(hp.starts_with("127.0.0.1:"), "{hp}");
        }
        assert_eq!(host_port("postgres://u:p@db/x").as_deref(), Some("db:5432"));
        assert_eq!(host_port("b1:9092,b2:9092").as_deref(), Some("b1:9092"));
        assert_eq!(host_port("redis://h:7000/0").as_deref(), Some("h:7000"));
        assert_eq!(host_port("nonsense"), None);
    }

    #[test]
    fn a_closed_port_is_reported_not_hung_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = probe(&format!("redis://{addr}")).unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
