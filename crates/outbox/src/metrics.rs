//! The relay's metrics, namespace `onephase_outbox_*`.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::relay::RoundReport;
use crate::sql::OutboxStatus;

pub(crate) struct RelayMetrics {
    published: Counter,
    failures: Counter,
    dead_lettered: Counter,
    lost_claims: Counter,
    round_errors: Counter,
    vacuums: Counter,
    round_seconds: Histogram,
    pending: Gauge,
    dead: Gauge,
    oldest_pending_seconds: Gauge,
}

impl RelayMetrics {
    pub(crate) fn new(source: &str, sink: &'static str) -> Self {
        let labels = [("source", source.to_owned()), ("sink", sink.to_owned())];
        let source_label = [("source", source.to_owned())];
        Self {
            published: counter!("onephase_outbox_published_total", &labels),
            failures: counter!("onephase_outbox_publish_failures_total", &labels),
            dead_lettered: counter!("onephase_outbox_dead_lettered_total", &labels),
            lost_claims: counter!("onephase_outbox_lost_claims_total", &labels),
            round_errors: counter!("onephase_outbox_round_errors_total", &labels),
            vacuums: counter!("onephase_outbox_vacuums_total", &labels),
            round_seconds: histogram!("onephase_outbox_round_seconds", &labels),
            pending: gauge!("onephase_outbox_pending", &source_label),
            dead: gauge!("onephase_outbox_dead", &source_label),
            oldest_pending_seconds: gauge!("onephase_outbox_oldest_pending_seconds", &source_label),
        }
    }

    pub(crate) fn round(&self, report: &RoundReport, took: Duration) {
        self.published.increment(report.published as u64);
        self.failures
            .increment((report.retrying + report.dead_lettered) as u64);
        self.dead_lettered.increment(report.dead_lettered as u64);
        self.lost_claims.increment(report.lost_claims as u64);
        self.round_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn vacuumed(&self) {
        self.vacuums.increment(1);
    }

    pub(crate) fn round_error(&self) {
        self.round_errors.increment(1);
    }

    pub(crate) fn status(&self, status: &OutboxStatus) {
        self.pending.set(status.pending as f64);
        self.dead.set(status.dead as f64);
        self.oldest_pending_seconds
            .set(status.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
    }
}
