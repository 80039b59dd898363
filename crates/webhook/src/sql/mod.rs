//! The webhook tables' SQL. Both backends store the same columns with the same types (times
//! as Unix milliseconds, ids as text, JSON as text), so most statements are written once and
//! run on either; where the dialects differ (`LEAST` and `min`, JSON table functions,
//! PostgreSQL's advisory lock), each backend has its own text.

mod admin;
mod dispatch;

pub use admin::*;
pub use dispatch::*;

use time::OffsetDateTime;

/// Runs `$body` against the store's pool: on SQLite the writer, or with `read` the reader.
/// `$pg` is `true` in the PostgreSQL arm, to pick that backend's text where they differ.
macro_rules! on_store {
    ($db:expr, $pool:ident, $pg:ident => $body:expr) => {
        match $db {
            onephase_store::Db::Postgres($pool) => {
                let $pg = true;
                $body
            }
            onephase_store::Db::Sqlite(store) => {
                let $pool = store.writer();
                let $pg = false;
                $body
            }
        }
    };
    (read $db:expr, $pool:ident, $pg:ident => $body:expr) => {
        match $db {
            onephase_store::Db::Postgres($pool) => {
                let $pg = true;
                $body
            }
            onephase_store::Db::Sqlite(store) => {
                let $pool = store.reader();
                let $pg = false;
                $body
            }
        }
    };
}
pub(crate) use on_store;

/// Unix milliseconds.
pub(crate) fn ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The time at Unix milliseconds `ms`.
pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
