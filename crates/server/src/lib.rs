//! The onephase server: every capability over HTTP/JSON, for services in any language.
//!
//! Capability crates expose plain Rust services; this crate only adapts them. Each capability
//! gets a module under `v1` (routes, request and response types, OpenAPI annotations), a
//! dashboard [`Panel`](dashboard::Panel) and an `onephase_<capability>_*` metrics namespace.
//!
//! What every route shares:
//!
//! - **Auth**: `/v1/*` needs `Authorization: Bearer <token>` ([`auth`]). `/healthz`,
//!   `/readyz`, `/metrics`, `/openapi.json` and the dashboard do not; bind to loopback (the
//!   default) or put them behind your proxy if that matters.
//! - **Errors** are RFC 9457 problem documents ([`problem`]), including axum's own rejections
//!   (unknown route, wrong method, malformed JSON, wrong content type, body too large).
//! - **Metrics** in Prometheus text format at `/metrics` ([`metrics`]).
//! - **OpenAPI** at `/openapi.json`, generated from the handlers ([`openapi()`], [`mod@openapi`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), onephase_server::ServerError> {
//! use onephase_server::{Server, ServerConfig, shutdown_signal};
//!
//! let server = Server::bind(ServerConfig::default()).await?;
//! if let Some(token) = server.bootstrap_token() {
//!     println!("admin token: {token}");
//! }
//! server.run_until(shutdown_signal()).await
//! # }
//! ```

pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod json;
pub mod kafka;
pub mod lease;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod partition;
pub mod problem;
pub mod replica;
pub mod saga;
mod serve;
pub mod state;
pub mod traces;
mod unread;
pub mod v1;
pub mod webhook;

pub use app::{openapi, router};
pub use config::{ConfigOverrides, LogFormat, ServerConfig};
pub use serve::{Server, ServerError, migrations, shutdown_signal};
pub use state::{AppState, Services};
