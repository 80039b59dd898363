//! The server's leases: the `[lease]` settings and the service the routes and the dashboard
//! use.

use std::time::Duration;

use onephase_lease::Leases;
use onephase_store::Store;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `[lease]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// etcd endpoints (`http://host:2379`) to keep leases in; empty (the default) keeps them in
    /// the server's store. etcd needs a server built with the `etcd` feature.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// The longest an acquire request may wait for a held lease, in milliseconds (default
    /// 30,000).
    pub max_wait_ms: Option<u64>,
}

impl LeaseSettings {
    /// The longest wait an acquire request may ask for.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms.unwrap_or(30_000))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.etcd_endpoints.is_empty() && !cfg!(feature = "etcd") {
            return Err(ConfigError::Invalid {
                key: "lease.etcd_endpoints",
                message: "this server was built without the `etcd` feature; rebuild with \
                          `--features etcd` or leave etcd_endpoints empty to keep leases in \
                          the store"
                    .to_owned(),
            });
        }
        if self.max_wait_ms.is_some_and(|ms| ms > 600_000) {
            return Err(ConfigError::Invalid {
                key: "lease.max_wait_ms",
                message: "at most 600000 (10 minutes)".to_owned(),
            });
        }
        Ok(())
    }
}

/// Where the server's leases are kept.
#[derive(Debug, Clone)]
pub struct LeaseService {
    leases: Leases,
    backend: &'static str,
    max_wait: Duration,
}

impl LeaseService {
    /// Leases in etcd if configured, otherwise in `store`.
    pub async fn open(
        store: &Store,
        settings: &LeaseSettings,
    ) -> Result<Self, crate::serve::ServerError> {
        let max_wait = settings.max_wait();
        if settings.etcd_endpoints.is_empty() {
            return Ok(Self {
                leases: Leases::store(store.clone()),
                backend: store.backend().as_str(),
                max_wait,
            });
        }
        #[cfg(feature = "etcd")]
        {
            let etcd = onephase_lease::EtcdLeases::connect(&settings.etcd_endpoints)
                .await
                .map_err(|e| ConfigError::Invalid {
                    key: "lease.etcd_endpoints",
                    message: e.to_string(),
                })?;
            Ok(Self {
                leases: Leases::new(etcd),
                backend: "etcd",
                max_wait,
            })
        }
        #[cfg(not(feature = "etcd"))]
        Err(ConfigError::Invalid {
            key: "lease.etcd_endpoints",
            message: "this server was built without the `etcd` feature".to_owned(),
        }
        .into())
    }

    /// The leases.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// `sqlite`, `postgres` or `etcd`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The longest an acquire request may wait.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
}
