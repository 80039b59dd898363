//! Fenced leases: mutual exclusion that survives GC pauses and clock drift.
//!
//! A lease with an expiry is a polite hint. The holder checks it, then pauses (a GC, a VM
//! migration, a page fault storm) for longer than the TTL; the lease lapses, another process
//! acquires it and writes; the first wakes up and writes too, over the second's write. No
//! clock, TTL or margin fixes this, because the pause can fall between the check and the
//! write. What fixes it is at the resource: every grant carries a [`FencingToken`] larger than
//! every earlier one for that name, every write carries its holder's token, and the resource
//! refuses a token older than one it has already accepted.
//!
//! - [`Leases`]: acquire (once, or waiting up to a timeout), renew, release and list, over a
//!   [`LeaseBackend`]: [`StoreLeases`] (SQLite or PostgreSQL) or `EtcdLeases` (feature
//!   `etcd`). A grant gives a [`LeaseGuard`], which knows its deadline on the holder's
//!   monotonic clock with a safety margin, renews itself with
//!   [`keep_alive`](LeaseGuard::keep_alive), and cancels work in flight when the lease may have
//!   lapsed ([`run`](LeaseGuard::run)).
//! - [`fence`]: the resource side, which lease services leave to you: a check in the writer's
//!   SQL transaction, an in-process [`FencedResource`](fence::FencedResource), and an HTTP
//!   middleware (feature `http`).
//!
//! # Guarantees
//!
//! - Tokens for a name strictly increase and are never reused: on SQLite and PostgreSQL a
//!   committed grant is durable and rows are never deleted; on etcd the token is the key's
//!   creation revision, which etcd persists and replicates. Limits: a PostgreSQL failover to
//!   an asynchronous replica can lose the latest grants, and the next grant then reuses a
//!   token (use synchronous replication, or raise fences past the old primary's last token);
//!   an etcd cluster restored from an old snapshot restarts revisions from there.
//! - A resource that checks the token accepts writes from one holder at a time in token
//!   order: once it has accepted token `t`, no write with a token below `t` is applied, however
//!   long its writer was paused and whatever the clocks say.
//! - A holder's deadline is never after the backend's expiry, as long as the holder's and the
//!   backend's clocks run at rates within the margin (a tenth of the TTL by default) of each
//!   other. Mutual exclusion of the *holders* is only that good; mutual exclusion of the
//!   *writes* rests on the fence alone.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use onephase_lease::{Leases, fence::FencedResource, migrations};
//! use onephase_store::Store;
//!
//! let store = Store::connect("sqlite::memory:").await?;
//! store.migrate(&[migrations()]).await?;
//! let leases = Leases::store(store);
//! let report = FencedResource::new("report", String::new());
//!
//! let mut guard = leases.try_acquire("report", "worker-1", Duration::from_secs(5)).await?;
//! guard.keep_alive();
//! let token = guard.token();
//! guard
//!     .run(report.write(token, |r| r.push_str("done")))
//!     .await??;
//! guard.release().await?;
//! # Ok(()) }
//! ```

mod backend;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
pub mod fence;
mod guard;
mod leases;
mod store;
mod token;

use onephase_store::{Migrations, sqlx};

pub use backend::{Grant, LeaseBackend, LeaseInfo, ReleaseSignal};
pub use error::{FenceError, LeaseError};
#[cfg(feature = "etcd")]
pub use etcd::{DEFAULT_PREFIX, EtcdLeases};
pub use guard::{Lapse, LeaseGuard};
pub use leases::{Leases, MAX_NAME, MAX_TTL, MIN_TTL};
pub use store::StoreLeases;
pub use token::FencingToken;

/// The HTTP header that carries a fencing token, as decimal digits.
pub const FENCING_TOKEN_HEADER: &str = "fencing-token";

/// The lease and fence tables (`onephase_leases`, `onephase_fences`).
pub fn migrations() -> Migrations {
    Migrations::new(
        "lease",
        sqlx::migrate!("migrations/sqlite"),
        sqlx::migrate!("migrations/postgres"),
    )
}
