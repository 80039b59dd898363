//! The resource side: refuse writes whose fencing token is older than one already accepted.
//!
//! A lease alone cannot give mutual exclusion. A holder can be paused (a GC, a VM migration, a
//! laptop lid) after it checked its lease and before its write lands; meanwhile the lease
//! lapses and a second holder writes. When the first wakes up, its write goes through and
//! overwrites the second's. The fix is at the resource: it remembers the highest token it
//! has accepted and refuses any lower one. Three ways to get that:
//!
//! - [`check`]: in the same SQL transaction as the write (PostgreSQL or SQLite). The check
//!   takes the resource's fence row, so a concurrent writer with a newer token waits for the
//!   transaction and an older one is refused after it; if the transaction rolls back, so does
//!   the fence.
//! - [`FencedResource`]: anything in one process, behind an async mutex that holds the value
//!   and its highest token together.
//! - [`FenceLayer`] (feature `http`): a tower middleware for services that accept fenced
//!   requests, with the token in the [`FENCING_TOKEN_HEADER`](crate::FENCING_TOKEN_HEADER).
//!
//! Equal tokens are accepted (one holder writes many times under one grant). A fence trusts
//! the tokens it is shown: anyone who can write to the resource can present a huge token and
//! lock every real holder out, so only accept tokens from clients you would let write anyway.

#[cfg(feature = "http")]
mod http;
mod resource;
mod sql;

#[cfg(feature = "http")]
pub use http::{FenceLayer, FenceService};
pub use resource::{FencedGuard, FencedResource, Fences};
pub use sql::{FenceConnection, check, highest};

pub use crate::FenceError;
