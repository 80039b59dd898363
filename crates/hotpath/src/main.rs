//! The hottest in-process paths of onephase, each run a given number of times.
//!
//! ```text
//! onephase-hotpath <path> <iterations>
//! ```
//!
//! Paths:
//! - `limiter`: [`LocalLimiter::check`] on one key (GCRA), nearly every check admitted.
//! - `limiter-keys`: the same over 100,000 keys visited in turn (for profiles, not the guard:
//!   its count depends on the order the random hash seed gives the map).
//! - `governor`, `governor-keys`: the same checks in `governor`'s keyed limiter, the
//!   benchmark's baseline, for comparing profiles.
//! - `single-flight-hit`: [`HerdCache::get_with`] of a fresh entry: the read that never
//!   reaches the origin, and the one a cache in front of a hot key serves most.
//! - `envelope`: building and validating an [`Envelope`] with a key and two headers, which every
//!   enqueue does.
//!
//! `scripts/instructions.sh` runs each path under `valgrind --tool=callgrind` at two iteration
//! counts and divides the difference in instructions by the difference in iterations: start-up
//! cancels, and what is left is the path's cost per call, which CPU noise cannot change.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Duration;

use onephase_core::{Envelope, MessageId};
use onephase_herd::{CacheConfig, HerdCache};
use onephase_limit::{Algorithm, LocalLimiter, Policy};

const PATHS: &str = "limiter, limiter-keys, governor, governor-keys, single-flight-hit, envelope";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(Ok(iterations))) = (args.first(), args.get(1).map(|n| n.parse::<u64>()))
    else {
        eprintln!("usage: onephase-hotpath <path> <iterations>  (paths: {PATHS})");
        return ExitCode::from(2);
    };
    let result = match path.as_str() {
        "limiter" => limiter(iterations, 1),
        "limiter-keys" => limiter(iterations, 100_000),
        "governor" => governor(iterations, 1),
        "governor-keys" => governor(iterations, 100_000),
        "single-flight-hit" => single_flight_hit(iterations),
        "envelope" => envelope(iterations),
        other => Err(format!("unknown path {other:?}; the paths are {PATHS}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onephase-hotpath: {e}");
            ExitCode::FAILURE
        }
    }
}

fn limiter(iterations: u64, keys: u64) -> Result<(), String> {
    // A burst no run exhausts, so every check does the full work of an admission.
    let policy = Policy::new(Algorithm::Gcra, 1_000_000, Duration::from_secs(86_400))
        .map_err(|e| e.to_string())?;
    let limiter = LocalLimiter::new(policy);
    let names: Vec<String> = (0..keys).map(|n| format!("client-{n}")).collect();
    measure(iterations, |i| {
        let key = &names[(i % keys) as usize];
        let decision = limiter
            .check(black_box(key), 1)
            .map_err(|e| e.to_string())?;
        Ok(black_box(decision.allowed))
    })
}

fn governor(iterations: u64, keys: u64) -> Result<(), String> {
    let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN.saturating_add(999_999));
    let limiter = governor::RateLimiter::<String, _, _>::keyed(quota);
    let names: Vec<String> = (0..keys).map(|n| format!("client-{n}")).collect();
    measure(iterations, |i| {
        let key = &names[(i % keys) as usize];
        Ok(black_box(limiter.check_key(black_box(key)).is_ok()))
    })
}

fn single_flight_hit(iterations: u64) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let config = CacheConfig {
        ttl: Duration::from_secs(3600),
        ..CacheConfig::default()
    };
    let cache: HerdCache<String, u64, String> = HerdCache::new("hotpath", config);
    let key = "user:7".to_owned();
    runtime.block_on(cache.get_with(key.clone(), || async { Ok(7) }))?;
    measure(iterations, |_| {
        let read = cache.get_with(black_box(key.clone()), || async { Ok(7) });
        Ok(black_box(runtime.block_on(read)?))
    })
}

fn envelope(iterations: u64) -> Result<(), String> {
    let id = MessageId::now_v7();
    let created_at = time::OffsetDateTime::UNIX_EPOCH;
    let payload = bytes::Bytes::from_static(br#"{"order":7,"total":"19.99"}"#);
    measure(iterations, |_| {
        let envelope = Envelope::builder(black_box("orders.created"), payload.clone())
            .key("order-7")
            .header("Content-Type", "application/json")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .id(id)
            .created_at(created_at)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(black_box(envelope))
    })
}

/// Runs `path` `iterations` times. Everything the path needs is made before, so that a
/// profile collecting only inside this function (`--toggle-collect=onephase_hotpath::measure*`)
/// sees the path alone: a clock's calibration or a table's first allocations stay outside.
#[inline(never)]
fn measure<T>(
    iterations: u64,
    mut path: impl FnMut(u64) -> Result<T, String>,
) -> Result<(), String> {
    for i in 0..iterations {
        black_box(path(i)?);
    }
    Ok(())
}
