use std::sync::Arc;
use std::time::Duration;

use onephase_herd::{Random, Reconnect};

use super::Timeline;
use crate::{Report, SimClock};

const CLIENTS: usize = 1_000;
const DOWN_FOR: Duration = Duration::from_secs(5);

/// A reconnect flood.
///
/// 1,000 clients lose their server at the same instant; it is back 5 s later.
///
/// - **Naive**: reconnect at once, then every second.
/// - **onephase**: [`Reconnect`] with its defaults: a first attempt spread over 1 s, then full
///   jitter from 500 ms, capped at 10 s.
///
/// The figure that matters is the peak after the server returns: that wave hits a server
/// that is just starting, with cold caches and every handshake to do.
pub async fn reconnect_flood(seed: u64) -> Report {
    let mut report = Report::new(
        "reconnect-flood",
        seed,
        "1,000 clients lose the server at once; it is back after 5 s",
    );
    let naive = flood(None).await;
    let clock = SimClock::start();
    let onephase = flood(Some(
        Reconnect::new("lab-reconnect-flood")
            .with_clock(Arc::new(clock))
            .with_random(Random::seeded(seed)),
    ))
    .await;
    report.row(
        "peak reconnects per 100 ms",
        naive.attempts.peak_from(Duration::ZERO) as f64,
        onephase.attempts.peak_from(Duration::ZERO) as f64,
    );
    report.row(
        "peak reconnects per 100 ms once the server is back",
        naive.attempts.peak_from(DOWN_FOR) as f64,
        onephase.attempts.peak_from(DOWN_FOR) as f64,
    );
    report.row(
        "reconnect attempts in all",
        naive
            .attempts
            .sum(Duration::ZERO, Duration::from_secs(3600)) as f64,
        onephase
            .attempts
            .sum(Duration::ZERO, Duration::from_secs(3600)) as f64,
    );
    report.row(
        "all clients connected after, s",
        naive.connected.last().as_secs_f64(),
        onephase.connected.last().as_secs_f64(),
    );
    // Spread over at least a second: no 100 ms holds more than a tenth of the clients.
    let spread = |f: &Flood| f.attempts.peak_from(DOWN_FOR) * 10 <= CLIENTS as u64;
    report.invariant(
        "once the server is back, no 100 ms brings more than a tenth of the clients",
        spread(&naive),
        spread(&onephase),
    );
    super::chart(
        &mut report,
        "reconnect attempts per 100 ms",
        &naive.attempts,
        &onephase.attempts,
    );
    report
}

struct Flood {
    attempts: Timeline,
    connected: Timeline,
}

async fn flood(reconnect: Option<Reconnect>) -> Flood {
    let clock = SimClock::start();
    let attempts = Timeline::default();
    let connected = Timeline::default();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (reconnect, attempts, connected) =
                (reconnect.clone(), attempts.clone(), connected.clone());
            tokio::spawn(async move {
                let connect = || {
                    let now = clock.elapsed();
                    attempts.add(now);
                    std::future::ready(if now >= DOWN_FOR {
                        Ok(())
                    } else {
                        Err("connection refused")
                    })
                };
                match reconnect {
                    Some(r) => {
                        let _ = r.connect(connect).await;
                    }
                    None => naive(connect).await,
                }
                connected.add(clock.elapsed());
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    Flood {
        attempts,
        connected,
    }
}

/// At once, then every second.
async fn naive<F>(mut connect: impl FnMut() -> F)
where
    F: std::future::Future<Output = Result<(), &'static str>>,
{
    while connect().await.is_err() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
