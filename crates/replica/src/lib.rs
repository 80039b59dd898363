//! Reads routed over a PostgreSQL primary and its streaming replicas, without reading the past.
//!
//! A replica shows the primary as it was some time ago. Send a read there right after a write
//! and the write is missing; read two replicas in turn and rows go back in time; let every read
//! fall back to the primary when replicas lag and the primary falls over. This crate makes the
//! staleness a number and every read say what it needs:
//!
//! - [`Token`]: what a writer committed, as a WAL position of the primary
//!   ([`Router::token`], [`take_token`]), with the cluster's identity and timeline. It travels as
//!   text in the [`HEADER`] of HTTP requests and responses ([`layer`], feature `http`) and of
//!   outbox messages ([`outbox`], feature `outbox`), so a service that reads after another
//!   service wrote sees the write.
//! - [`Router`] over sqlx pools, with a [`Policy`] per read: [`Policy::Primary`];
//!   [`Policy::ReadYourWrites`] (a replica that has replayed the token, else wait up to a
//!   bound, else the primary); [`Policy::BoundedStaleness`] (a replica measured to be at most
//!   that stale); and monotonic reads through a [`Session`] ([`Router::route_monotonic`]).
//! - The monitor ([`Router::run`]): a heartbeat row written on the primary with the primary's
//!   clock, a poll of every server, staleness measured on the primary's clock
//!   ([`health`]), replica health with hysteresis, Prometheus gauges.
//! - **No cascade**: reads that could have gone to a replica reach the primary only within a
//!   budget (a share of such reads plus a floor per second, [`onephase_herd::RetryBudget`]);
//!   past it they fail at once with [`ReplicaError::Overloaded`] instead of queueing on the
//!   primary.
//!
//! ```no_run
//! use std::time::Duration;
//! use onephase_replica::{Policy, Router};
//!
//! # async fn f(primary: sqlx::PgPool, replica: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let router = Router::new("orders", primary, [("replica-1".to_owned(), replica)]);
//! let monitor = router.clone();
//! tokio::spawn(async move { monitor.run(std::future::pending()).await });
//!
//! sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 7").execute(router.primary()).await?;
//! let token = router.token().await?; // after the commit
//!
//! let read = router
//!     .route(Policy::ReadYourWrites { token: Some(token), wait: Duration::from_millis(200) })
//!     .await?;
//! let state: String = sqlx::query_scalar("SELECT state FROM orders WHERE id = 7")
//!     .fetch_one(&read.pool)
//!     .await?;
//! assert_eq!(state, "paid");
//! # Ok(()) }
//! ```
//!
//! # Guarantees and limits
//!
//! - A read routed with a token sees every transaction that committed on the primary before the
//!   token was taken, whichever server it lands on: a replica is chosen only once its replay
//!   position (read on that replica, or seen by a poll) is at or past the token, and replay
//!   positions only move forward.
//! - A token taken before a failover (an older timeline) sends the read to the primary; the
//!   writes of the old timeline past the point where the new one forked are lost with the old
//!   primary, and no token can bring them back.
//! - Staleness is an upper bound, within one poll interval of the truth.
//! - A replica is out of rotation as soon as a poll shows it paused, promoted, of another
//!   cluster, stalled or staler than `max_lag`; between polls the router does not know, and a
//!   read-your-writes read still checks the replica it picks, so the guarantee does not depend
//!   on the poll.

mod error;
pub mod health;
#[cfg(feature = "http")]
pub mod layer;
mod monitor;
#[cfg(feature = "outbox")]
pub mod outbox;
mod route;
mod router;
mod session;
mod sql;
mod token;

pub use error::{BadToken, ReplicaError};
pub use health::{State, Thresholds};
pub use route::{Policy, Reason, Route};
pub use router::{ClusterStatus, ReplicaStatus, Router, RouterConfig};
pub use session::Session;
pub use sql::take_token;
pub use token::{HEADER, Lsn, Token};
