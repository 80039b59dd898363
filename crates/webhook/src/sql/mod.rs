//! The webhook tables' SQL. Both backends store the same columns with the same types (times
//! as Unix milliseconds, ids as text, JSON as text), so most statements are written once and
//! run on either; where the dialects differ (`LEAST` and `min`, JSON table functions,
//! PostgreSQL's advisory lock), each backend has its own text.

mod admin;
mod claim;
mod record;
mod send;

pub use admin::*;
pub(crate) use claim::*;
pub(crate) use record::*;
pub use send::*;

pub(crate) use onephase_store::convert::{narrow, stored_ms, unix_ms as ms};
pub(crate) use onephase_store::on_store;

/// The time at stored Unix milliseconds `ms`; out of range is a decode error.
pub(crate) fn from_ms(ms: i64) -> Result<time::OffsetDateTime, sqlx::Error> {
    Ok(stored_ms("time in milliseconds", ms)?)
}

/// A stored count (attempts, concurrency) read back: negative is damage, not zero.
pub(crate) fn to_u32(v: i32) -> Result<u32, sqlx::Error> {
    Ok(narrow("webhook integer column", v)?)
}

/// A count to store; the configured bounds keep it far below `i32::MAX`.
pub(crate) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
