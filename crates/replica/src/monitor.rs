//! The monitor: the heartbeat on the primary, a poll of every server, the gauges.

use std::future::Future;
use std::time::Instant;

use futures::future::join_all;

use crate::error::ReplicaError;
use crate::health::staleness;
use crate::router::Router;
use crate::sql;

impl Router {
    /// Reads the primary and every replica once, updates their health and the gauges, and
    /// writes the heartbeat when `beat` is true. A replica that cannot be read is
    /// out of rotation until it answers again; the error is returned only for the primary.
    pub async fn poll(&self, beat: bool) -> Result<(), ReplicaError> {
        let inner = &self.inner;
        let clock = inner.clock.clone();
        let now = move || clock.monotonic();
        let primary = async {
            if beat && inner.config.heartbeat {
                sql::beat(&inner.primary).await?;
            }
            sql::read_primary(&inner.primary, &now).await
        };
        let replicas = join_all(
            inner
                .replicas
                .iter()
                .map(|r| sql::read_replica(&r.name, &r.pool, &now)),
        );
        // The primary first: every replica reading is then compared with a primary reading
        // taken before it, so a replica never looks ahead of the primary.
        let primary = primary.await;
        let replicas = replicas.await;
        let mut view = self.view_mut();
        let (sample, system) = match primary {
            Ok(read) => read,
            Err(e) => {
                view.primary_error = Some(e.to_string());
                metrics::gauge!("onephase_replica_primary_up", "cluster" => inner.cluster.clone())
                    .set(0.0);
                return Err(e);
            }
        };
        view.primary_error = None;
        view.system = Some(system);
        view.history.record(sample);
        metrics::gauge!("onephase_replica_primary_up", "cluster" => inner.cluster.clone()).set(1.0);
        let limits = inner.config.thresholds;
        for ((replica, seen), read) in inner.replicas.iter().zip(0..).zip(replicas) {
            let labels = [
                ("cluster", inner.cluster.clone()),
                ("replica", replica.name.clone()),
            ];
            let stale = read.as_ref().ok().and_then(|r| staleness(&view.history, r));
            let seen = &mut view.replicas[seen];
            let state = match read {
                Ok(read) => {
                    seen.error = None;
                    seen.last = Some(read);
                    seen.staleness = stale;
                    seen.replay = read.replay.unwrap_or_default();
                    seen.lag_bytes = read.replay.map(|r| sample.position.bytes_after(r));
                    seen.health.observe(&read, stale, &sample, system, &limits)
                }
                Err(e) => {
                    seen.error = Some(e.to_string());
                    seen.health.unreachable()
                }
            };
            if let Some(lag) = seen.staleness {
                metrics::gauge!("onephase_replica_lag_seconds", &labels).set(lag.as_secs_f64());
            }
            if let Some(bytes) = seen.lag_bytes {
                metrics::gauge!("onephase_replica_lag_bytes", &labels).set(bytes as f64);
            }
            metrics::gauge!("onephase_replica_in_rotation", &labels)
                .set(f64::from(u8::from(seen.health.in_rotation())));
            tracing::trace!(cluster = %inner.cluster, replica = %replica.name, state = state.as_str(), "polled");
        }
        Ok(())
    }

    /// Creates the heartbeat table (when this router writes the heartbeat), then polls every
    /// `poll_interval` and writes the heartbeat every `heartbeat_interval`, until `shutdown`
    /// completes. Failures are logged once per change and retried at the next poll.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let inner = &self.inner;
        let config = &inner.config;
        tokio::pin!(shutdown);
        let mut table_ready = !config.heartbeat;
        let mut last_beat: Option<Instant> = None;
        let mut failing = false;
        let mut table_failing = false;
        loop {
            if !table_ready {
                match sql::create_heartbeat(&inner.primary).await {
                    Ok(()) => table_ready = true,
                    // Once per failure, not once per poll: a primary that is down for an hour
                    // must not fill the log.
                    Err(e) if !table_failing => {
                        table_failing = true;
                        tracing::warn!(cluster = %inner.cluster, error = %e,
                            "cannot create the heartbeat table on the primary; retrying at every poll");
                    }
                    Err(_) => {}
                }
            }
            let now = inner.clock.monotonic();
            let beat = table_ready
                && last_beat.is_none_or(|at| {
                    now.saturating_duration_since(at) >= config.heartbeat_interval
                });
            match self.poll(beat).await {
                Ok(()) => {
                    if beat {
                        last_beat = Some(now);
                    }
                    if failing {
                        tracing::info!(cluster = %inner.cluster, "primary reachable again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(cluster = %inner.cluster, error = %e, "cannot read the primary");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = inner.clock.sleep(config.poll_interval) => {}
            }
        }
    }
}
