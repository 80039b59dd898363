//! Conversions between the values Rust code holds and the integers the tables store.
//!
//! Times are stored as Unix milliseconds (`BIGINT`/`INTEGER`) wherever a crate wants one
//! column type on both backends, and counters as the signed integers SQL has. Reading a stored
//! value that does not fit the Rust type (a negative attempt count, a time past the year 9999)
//! means the row was written by something else or the data is damaged: it is an error that
//! names the column, never a silent 0 or `MAX`.
//!
//! ```
//! use onephase_store::convert::{from_unix_ms, narrow, unix_ms};
//! use time::macros::datetime;
//!
//! let at = datetime!(2026-12-06 01:23:45.678 UTC);
//! assert_eq!(from_unix_ms(unix_ms(at))?, at);
//! let attempts: u32 = narrow("attempts", 3_i32)?;
//! assert_eq!(attempts, 3);
//! let err = narrow::<u32, i32>("attempts", -1).unwrap_err();
//! assert_eq!(err.to_string(), "stored attempts -1 is out of range for u32");
//! # Ok::<(), onephase_store::convert::OutOfRange>(())
//! ```

use std::fmt::Display;

use time::OffsetDateTime;

/// A stored value that does not fit the type the code reads it into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored {column} {value} is out of range for {target}")]
pub struct OutOfRange {
    /// The column (or setting) the value came from.
    pub column: &'static str,
    /// The value, as written.
    pub value: String,
    /// The Rust type it had to fit.
    pub target: &'static str,
}

/// Reading a row fails with the column named, like any other decode error.
impl From<OutOfRange> for sqlx::Error {
    fn from(e: OutOfRange) -> Self {
        sqlx::Error::Decode(Box::new(e))
    }
}

/// `at` as Unix milliseconds. Every time `time` can represent fits (years -9999 to 9999 are
/// about ±3.2e14 ms).
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    // In range by the bound above; saturating keeps it total should `time` ever widen.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The time at Unix milliseconds `ms`, or an error naming `column` when it is beyond the range
/// of [`OffsetDateTime`].
pub fn stored_ms(column: &'static str, ms: i64) -> Result<OffsetDateTime, OutOfRange> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|_| OutOfRange {
        column,
        value: ms.to_string(),
        target: "a time",
    })
}

/// [`stored_ms`] for a column that needs no name in the message.
pub fn from_unix_ms(ms: i64) -> Result<OffsetDateTime, OutOfRange> {
    stored_ms("time in milliseconds", ms)
}

/// `value` (read from `column`) converted to `T`, or an error naming both when it does not
/// fit: `narrow::<u32, _>("attempts", row_attempts)?`.
pub fn narrow<T, S>(column: &'static str, value: S) -> Result<T, OutOfRange>
where
    T: TryFrom<S>,
    S: Display + Copy,
{
    T::try_from(value).map_err(|_| OutOfRange {
        column,
        value: value.to_string(),
        target: std::any::type_name::<T>(),
    })
}

/// A duration in whole milliseconds, as stored; saturates at `i64::MAX` ms (292 million years),
/// which no configured duration reaches.
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_out_of_range_values_are_errors() {
        let at = OffsetDateTime::from_unix_timestamp(1_765_000_000).expect("time");
        assert_eq!(from_unix_ms(unix_ms(at)), Ok(at));
        assert_eq!(
            from_unix_ms(-1),
            Ok(OffsetDateTime::UNIX_EPOCH - time::Duration::milliseconds(1))
        );
        let err = stored_ms("expires_at_ms", i64::MAX).expect_err("far future");
        assert_eq!(err.column, "expires_at_ms");
        assert!(narrow::<u32, i64>("attempts", i64::from(u32::MAX) + 1).is_err());
        assert_eq!(narrow::<i32, u32>("max_attempts", 7), Ok(7));
        assert!(matches!(sqlx::Error::from(err), sqlx::Error::Decode(_)));
    }
}
