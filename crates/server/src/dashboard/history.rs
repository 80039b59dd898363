//! The last hour, sampled every 30 s, and the charts drawn from it.
//!
//! A task samples what the panels show (each relay's published total and lag, webhook
//! attempts and latency over the interval, saga runs by state, rate-limit decisions) into a
//! ring of 120 samples. The panels draw each series as an inline SVG line: no script, no
//! library, no request to anywhere else. The history is this server's: it starts empty at
//! each start, and the relay and rate-limit series count what this server did.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use maud::Markup;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(30);
/// How many samples are kept: an hour.
const KEPT: usize = 120;
/// How long one sample may wait for the store.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// One relay at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySample {
    /// Its name.
    pub name: String,
    /// Rows it published since this server started.
    pub published: u64,
    /// The oldest pending row's age in seconds, when the source answered.
    pub lag_secs: Option<f64>,
}

/// What the charts need at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// When, on the state's monotonic clock.
    pub at: Option<Instant>,
    /// Each relay.
    pub relays: Vec<RelaySample>,
    /// Webhook attempts over the interval before, and how many delivered.
    pub webhook_attempts: i64,
    /// Of which delivered.
    pub webhook_delivered: i64,
    /// Their mean latency, when there were any.
    pub webhook_latency_ms: Option<f64>,
    /// Saga runs by state (a state without runs is absent), when the store answered.
    pub sagas: Option<BTreeMap<String, i64>>,
    /// Rate-limit decisions and refusals this server made since it started.
    pub limit_decisions: u64,
    /// Of which refused.
    pub limit_refused: u64,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Adds `sample`, dropping the oldest past an hour.
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Takes one sample of `state`. A part whose store does not answer in time is left empty.
pub async fn sample(state: &AppState) -> Sample {
    let mut sample = Sample {
        at: Some(state.clock().monotonic()),
        ..Sample::default()
    };
    for source in state.outbox().sources() {
        let lag = match source.admin() {
            Ok(admin) => match tokio::time::timeout(SAMPLE_TIMEOUT, admin.status()).await {
                Ok(Ok(status)) => Some(status.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64())),
                _ => None,
            },
            Err(_) => None,
        };
        sample.relays.push(RelaySample {
            name: source.name.clone(),
            published: source.stats.published(),
            lag_secs: lag,
        });
    }
    let stats = state.webhook().webhooks().stats(EVERY);
    if let Ok(Ok(stats)) = tokio::time::timeout(SAMPLE_TIMEOUT, stats).await {
        sample.webhook_attempts = stats.iter().map(|e| e.attempts).sum();
        sample.webhook_delivered = stats.iter().map(|e| e.delivered).sum();
        let weighted: f64 = stats
            .iter()
            .filter_map(|e| e.mean_latency_ms.map(|ms| ms * e.attempts as f64))
            .sum();
        sample.webhook_latency_ms =
            (sample.webhook_attempts > 0).then(|| weighted / sample.webhook_attempts as f64);
    }
    let admin = state.saga().orchestrator().admin();
    if let Ok(Ok(counts)) = tokio::time::timeout(SAMPLE_TIMEOUT, admin.counts()).await {
        sample.sagas = Some(
            counts
                .into_iter()
                .map(|(state, n)| (state.as_str().to_owned(), n))
                .collect(),
        );
    }
    if let Ok(Ok(policies)) = tokio::time::timeout(SAMPLE_TIMEOUT, state.limit().list()).await {
        sample.limit_decisions = policies.iter().map(|p| p.decisions).sum();
        sample.limit_refused = policies.iter().map(|p| p.rejections).sum();
    }
    sample
}

/// Samples `state` at once and then every [`EVERY`] until `stop`.
pub fn spawn(state: AppState, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let taken = sample(&state).await;
            state.history().push(taken);
            tokio::select! {
                () = state.clock().sleep(EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// The per-second rate of a running total between consecutive samples.
pub fn rates(totals: &[Option<f64>]) -> Vec<Option<f64>> {
    totals
        .windows(2)
        .map(|w| match (w[0], w[1]) {
            (Some(a), Some(b)) if b >= a => Some((b - a) / EVERY.as_secs_f64()),
            _ => None,
        })
        .collect()
}

/// A line chart of the last hour of `series` (named, each with its CSS colour).
pub fn chart(title: &str, unit: &str, series: &[(&str, &str, Vec<Option<f64>>)]) -> Markup {
    onephase_chart::line(title, "last hour", unit, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_an_hour() {
        let history = History::default();
        for i in 0..(KEPT as u64 + 5) {
            history.push(Sample {
                limit_decisions: i,
                ..Sample::default()
            });
        }
        let samples = history.samples();
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples[0].limit_decisions, 5);
    }

    #[test]
    fn rates_are_per_second_and_skip_resets_and_gaps() {
        let every = EVERY.as_secs_f64();
        let r = rates(&[Some(0.0), Some(every * 2.0), None, Some(10.0), Some(4.0)]);
        assert_eq!(r, vec![Some(2.0), None, None, None]);
    }
}
