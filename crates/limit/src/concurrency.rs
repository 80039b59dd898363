//! Concurrency limits: at most N requests in flight per key, released when each one ends.
//!
//! A rate limit counts arrivals; it does not notice that requests have become slow and are
//! piling up. A concurrency limit counts what is still running, so a backend that slows down
//! is protected at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::LimitError;

/// A refused acquire: the key has `max` requests in flight already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Saturated {
    /// The limit.
    pub max: u64,
    /// In flight now.
    pub in_flight: u64,
}

/// At most `max` in flight per key, in this process. Keys with nothing in flight take no
/// memory.
///
/// ```
/// use onephase_limit::ConcurrencyLimiter;
///
/// let limiter = ConcurrencyLimiter::new(2)?;
/// let a = limiter.try_acquire("tenant-7")?.expect("room");
/// let b = limiter.try_acquire("tenant-7")?.expect("room");
/// assert!(limiter.try_acquire("tenant-7")?.is_err());
/// drop(a); // the request ended
/// assert!(limiter.try_acquire("tenant-7")?.is_ok());
/// # drop(b);
/// # Ok::<(), onephase_limit::LimitError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    max: u64,
    in_flight: Arc<Mutex<HashMap<String, u64>>>,
}

/// One request in flight; dropping it ends it.
#[derive(Debug)]
pub struct Permit {
    key: String,
    in_flight: Arc<Mutex<HashMap<String, u64>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl ConcurrencyLimiter {
    /// At most `max` (1 to 1,000,000) in flight per key.
    pub fn new(max: u64) -> Result<Self, LimitError> {
        if max == 0 || max > crate::MAX_LIMIT {
            return Err(LimitError::Invalid(format!(
                "max in flight {max} is out of range: use 1 to {}",
                crate::MAX_LIMIT
            )));
        }
        Ok(Self {
            max,
            in_flight: Arc::default(),
        })
    }

    /// A permit for `key` if fewer than `max` are in flight, or how saturated it is.
    pub fn try_acquire(&self, key: &str) -> Result<Result<Permit, Saturated>, LimitError> {
        if key.is_empty() {
            return Err(LimitError::Invalid("the key is empty".to_owned()));
        }
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= self.max {
            return Ok(Err(Saturated {
                max: self.max,
                in_flight: *n,
            }));
        }
        *n += 1;
        Ok(Ok(Permit {
            key: key.to_owned(),
            in_flight: Arc::clone(&self.in_flight),
        }))
    }

    /// In flight for `key` now.
    pub fn in_flight(&self, key: &str) -> u64 {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys with something in flight.
    pub fn keys(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}
