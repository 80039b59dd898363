//! The test harness every onephase crate shares.
//!
//! Tests run in tiers (see `docs/testing.md`): unit, property and embedded-SQLite tests need
//! nothing and always run; engine suites need a real PostgreSQL, Redis, NATS JetStream,
//! RabbitMQ, etcd or Kafka-compatible broker, and run only when told where it is.
//!
//! - [`engine_url`] answers whether an engine suite runs: it reads the engine's variable
//!   (`ONEPHASE_TEST_POSTGRES_URL`, ...), checks the engine answers, and otherwise skips the
//!   suite *loudly*, naming the engine and the variable, once per test binary. With
//!   `ONEPHASE_REQUIRE_ENGINES=1` (set by `scripts/test.sh`) a missing engine fails the test
//!   instead, so the full suite can never pass by skipping.
//! - [`TestDb`] hands a test its own fresh SQLite file or PostgreSQL database and removes it
//!   afterwards.
//! - [`FaultProxy`] sits between a client and an engine and cuts the link on demand.
//!
//! ```no_run
//! use onephase_testkit::{Engine, engine_url};
//!
//! #[tokio::test]
//! async fn redis_round_trip() {
//!     let Some(url) = engine_url(Engine::Redis) else { return };
//!     // ... talk to the real Redis at `url`
//! }
//! ```

mod db;
mod engine;
pub mod per_backend;
mod proxy;

pub use db::{TestDb, TestDbError};
pub use engine::{
    Engine, REQUIRE_ENGINES_VAR, engine_not_built, engine_url, engines_required, tool_path,
};
pub use proxy::FaultProxy;
