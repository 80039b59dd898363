//! The server's rate limits: policies from the `[limit]` settings and from the API, each with
//! its limiter (in this process, in the server's database, or in Redis, per `limit.store`;
//! hybrid when the policy sets a `chunk`), and counts of decisions for the dashboard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};
use onephase_limit::{
    Algorithm, Decision, HybridLimiter, LimitError, Limiter, LocalLimiter, Policy, StoreLimiter,
};
use onephase_store::convert::narrow;
use onephase_store::{Store, on_store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::ConfigError;

/// What to do when the limiter's store (Redis, the database) cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Admit, uncounted, and say so in the decision (the default).
    #[default]
    Open,
    /// Refuse, and say so in the decision.
    Closed,
}

impl FailMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A policy's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `gcra`, `fixed_window`, `sliding_log` or `sliding_window`.
    #[schema(value_type = String, pattern = "^(gcra|fixed_window|sliding_log|sliding_window)$")]
    pub algorithm: String,
    /// Units per period (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u64,
    /// The period in milliseconds (1 to 86,400,000).
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub period_ms: u64,
    /// GCRA's largest burst (default: the limit); ignored by the other algorithms.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<u64>,
    /// When the shared store (Redis, the database) cannot answer: `open` (default) or
    /// `closed`.
    pub fail_mode: Option<FailMode>,
    /// Hybrid: decide in this server on chunks of this many units leased from the shared
    /// store (1 to the burst), admitting at most `chunk + chunk / 2` more per server than the
    /// policy in any interval. Unset: every decision asks the store. Ignored by the local
    /// store.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub chunk: Option<u64>,
}

impl PolicySpec {
    /// Whether `other` defines the same policy: the same rule, fail mode and chunk, whatever
    /// defaults either spells out (`fail_mode` absent is `open`; `burst` absent is the limit).
    pub fn same_as(&self, other: &PolicySpec) -> bool {
        let rule = |s: &PolicySpec| {
            (
                s.algorithm.trim().to_ascii_lowercase(),
                s.limit,
                s.period_ms,
                s.burst.unwrap_or(s.limit),
            )
        };
        rule(self) == rule(other)
            && self.fail_mode.unwrap_or_default() == other.fail_mode.unwrap_or_default()
            && self.chunk == other.chunk
    }

    /// The policy it describes, or why it is invalid.
    pub fn policy(&self) -> Result<Policy, LimitError> {
        let algorithm: Algorithm = self.algorithm.parse()?;
        let policy = Policy::new(algorithm, self.limit, Duration::from_millis(self.period_ms))?;
        let policy = match self.burst {
            Some(burst) => policy.with_burst(burst)?,
            None => policy,
        };
        if let Some(chunk) = self.chunk
            && (chunk == 0 || chunk > policy.burst())
        {
            return Err(LimitError::Invalid(format!(
                "chunk {chunk} is out of range: use 1 to the policy's burst ({})",
                policy.burst()
            )));
        }
        Ok(policy)
    }
}

/// One `[[limit.policy]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPolicy {
    /// The policy's name: 1 to 64 letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// Its definition.
    #[serde(flatten)]
    pub spec: PolicySpec,
}

/// Where a server keeps its rate-limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    /// In this server's memory: each server counts on its own.
    Local,
    /// In the server's database (`onephase_limits`), shared by every server on it.
    Database,
    /// In Redis at `limit.redis_url`, shared by every server using it.
    Redis,
}

impl LimitStore {
    fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Database => "database",
            Self::Redis => "redis",
        }
    }
}

/// The `[limit]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// `local`, `database` or `redis`. Default: `redis` when `redis_url` is set, else `local`.
    pub store: Option<LimitStore>,
    /// The Redis for `store = "redis"` (`redis://host:6379/`).
    pub redis_url: Option<String>,
    /// Policies defined here (read-only through the API).
    #[serde(default)]
    pub policy: Vec<NamedPolicy>,
}

impl LimitSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for p in &self.policy {
            check_name(&p.name).map_err(|message| ConfigError::Invalid {
                key: "limit.policy.name",
                message,
            })?;
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "limit.policy.name",
                    message: format!("{:?} names two policies", p.name),
                });
            }
            p.spec.policy().map_err(|e| ConfigError::Invalid {
                key: "limit.policy",
                message: format!("{}: {e}", p.name),
            })?;
        }
        match (self.store, &self.redis_url) {
            (Some(LimitStore::Redis), None) => {
                return Err(ConfigError::Invalid {
                    key: "limit.redis_url",
                    message: "store = \"redis\" needs redis_url".to_owned(),
                });
            }
            (Some(LimitStore::Local | LimitStore::Database), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "limit.redis_url",
                    message: "redis_url is set but store is not \"redis\": remove one".to_owned(),
                });
            }
            _ => {}
        }
        if self.redis_url.is_some() && !cfg!(feature = "redis") {
            return Err(ConfigError::Invalid {
                key: "limit.redis_url",
                message: "this server was built without the `redis` feature".to_owned(),
            });
        }
        Ok(())
    }
}

/// Policy names: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "policy name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A policy as the API lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyView {
    /// Its name.
    pub name: String,
    /// `config` or `api`.
    pub source: &'static str,
    /// Its definition.
    pub spec: PolicySpec,
    /// Where counts are kept: `local` (this server), `database` or `redis`.
    pub store: &'static str,
    /// Checks answered by this server since it started.
    pub decisions: u64,
    /// Of which refused.
    pub rejections: u64,
}

struct Entry {
    spec: PolicySpec,
    source: &'static str,
    limiter: Arc<dyn Limiter>,
    decisions: AtomicU64,
    rejections: AtomicU64,
    /// When an API-defined policy was last read from the store.
    checked_at: std::sync::Mutex<std::time::Instant>,
}

/// How long a server trusts its copy of an API-defined policy before reading it again, so that
/// a policy changed or removed through another server takes effect here within this time.
pub const POLICY_REFRESH: Duration = Duration::from_secs(1);

/// Why a policy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No such policy.
    #[error("no rate-limit policy named {0:?}")]
    Unknown(String),
    /// Defined in the configuration file.
    #[error("policy {0:?} is defined in the configuration file; change it there")]
    FromConfig(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
    /// The limiter failed.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The store failed.
    #[error("store failed: {0}")]
    Store(sqlx::Error),
}

/// The server's policies and their limiters.
#[derive(Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct LimitService {
    store: Store,
    kind: LimitStore,
    #[cfg(feature = "redis")]
    redis: Option<redis::aio::ConnectionManager>,
    policies: RwLock<HashMap<String, Arc<Entry>>>,
    /// Times the refresh of cached policies on `clock` (monotonic).
    #[setters(generate)]
    clock: SharedClock,
}

impl std::fmt::Debug for LimitService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitService").finish_non_exhaustive()
    }
}

impl LimitService {
    /// The policies of `settings`, with counts in Redis if configured.
    pub async fn open(store: &Store, settings: &LimitSettings) -> Result<Self, ConfigError> {
        #[cfg(feature = "redis")]
        let redis = match &settings.redis_url {
            Some(url) => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| ConfigError::Invalid {
                        key: "limit.redis_url",
                        message: e.to_string(),
                    })?;
                Some(
                    redis::aio::ConnectionManager::new(client)
                        .await
                        .map_err(|e| ConfigError::Invalid {
                            key: "limit.redis_url",
                            message: format!("cannot reach {url}: {e}"),
                        })?,
                )
            }
            None => None,
        };
        let kind = settings.store.unwrap_or(if settings.redis_url.is_some() {
            LimitStore::Redis
        } else {
            LimitStore::Local
        });
        let service = Self {
            store: store.clone(),
            kind,
            #[cfg(feature = "redis")]
            redis,
            policies: RwLock::new(HashMap::new()),
            clock: Arc::new(SystemClock),
        };
        for p in &settings.policy {
            let entry = service
                .entry(&p.name, p.spec.clone(), "config")
                .map_err(|e| ConfigError::Invalid {
                    key: "limit.policy",
                    message: e.to_string(),
                })?;
            service.write().insert(p.name.clone(), entry);
        }
        Ok(service)
    }

    /// `local`, `database` or `redis`.
    pub fn store_kind(&self) -> &'static str {
        self.kind.as_str()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        self.policies.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(
        &self,
        name: &str,
        spec: PolicySpec,
        source: &'static str,
    ) -> Result<Arc<Entry>, PolicyError> {
        let policy = spec.policy()?;
        let mode = match spec.fail_mode.unwrap_or_default() {
            FailMode::Open => onephase_limit::FailMode::Open,
            FailMode::Closed => onephase_limit::FailMode::Closed,
        };
        // The definition is part of the prefix: a changed policy starts afresh instead of
        // reading state kept under another algorithm.
        let prefix = format!(
            "onephase:limit:{name}:{}:{}:{}:{}:",
            spec.algorithm,
            spec.limit,
            spec.period_ms,
            spec.burst.unwrap_or(spec.limit)
        );
        let shared: Arc<dyn Limiter> = match self.kind {
            LimitStore::Local => {
                return Ok(self.wrap(spec, Arc::new(LocalLimiter::new(policy)), source));
            }
            LimitStore::Database => Arc::new(
                StoreLimiter::new(self.store.clone(), policy, prefix)?.with_fail_mode(mode),
            ),
            #[cfg(feature = "redis")]
            LimitStore::Redis => match &self.redis {
                Some(conn) => Arc::new(
                    onephase_limit::RedisLimiter::new(conn.clone(), policy, prefix)
                        .with_fail_mode(mode),
                ),
                None => {
                    return Err(PolicyError::Invalid(
                        "limit.store is redis but no Redis is connected".to_owned(),
                    ));
                }
            },
            #[cfg(not(feature = "redis"))]
            LimitStore::Redis => {
                let _ = prefix;
                return Err(PolicyError::Invalid(
                    "this server was built without the `redis` feature".to_owned(),
                ));
            }
        };
        let limiter: Arc<dyn Limiter> = match spec.chunk {
            Some(chunk) => Arc::new(HybridLimiter::new(shared, chunk)?),
            None => shared,
        };
        Ok(self.wrap(spec, limiter, source))
    }

    fn wrap(
        &self,
        spec: PolicySpec,
        limiter: Arc<dyn Limiter>,
        source: &'static str,
    ) -> Arc<Entry> {
        Arc::new(Entry {
            spec,
            source,
            limiter,
            decisions: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            checked_at: std::sync::Mutex::new(self.clock.monotonic()),
        })
    }

    /// The policy named `name`: from the configuration, or the store (cached).
    async fn get(&self, name: &str) -> Result<Arc<Entry>, PolicyError> {
        let cached = self.read().get(name).cloned();
        if let Some(entry) = &cached {
            let fresh = entry.source == "config" || {
                let mut at = entry.checked_at.lock().unwrap_or_else(|e| e.into_inner());
                let now = self.clock.monotonic();
                let fresh = now.saturating_duration_since(*at) < POLICY_REFRESH;
                if !fresh {
                    *at = now;
                }
                fresh
            };
            if fresh {
                return Ok(Arc::clone(entry));
            }
        }
        let Some(spec) = self.load(name).await? else {
            self.write().remove(name);
            return Err(PolicyError::Unknown(name.to_owned()));
        };
        self.install(name, spec)
    }

    /// The entry for API policy `name` defined as `spec`: the one in hand if it defines the
    /// same policy (its counts go on), else a fresh limiter for the new rule. Decided under the
    /// write lock, so that concurrent first checks share one limiter instead of each counting
    /// on its own.
    fn install(&self, name: &str, spec: PolicySpec) -> Result<Arc<Entry>, PolicyError> {
        let mut policies = self.write();
        if let Some(entry) = policies.get(name)
            && entry.spec.same_as(&spec)
        {
            return Ok(Arc::clone(entry));
        }
        let entry = self.entry(name, spec, "api")?;
        policies.insert(name.to_owned(), Arc::clone(&entry));
        Ok(entry)
    }

    async fn load(&self, name: &str) -> Result<Option<PolicySpec>, sqlx::Error> {
        let sql = "SELECT algorithm, units, period_ms, burst, fail_mode, chunk FROM onephase_limit_policies WHERE name = $1";
        #[allow(clippy::type_complexity)]
        let row: Option<(String, i64, i64, Option<i64>, String, Option<i64>)> = on_store!(read self.store.db(), pool => {
            sqlx::query_as(sql).bind(name).fetch_optional(pool).await?
        });
        let Some((algorithm, units, period_ms, burst, fail_mode, chunk)) = row else {
            return Ok(None);
        };
        Ok(Some(PolicySpec {
            algorithm,
            limit: narrow("units", units)?,
            period_ms: narrow("period_ms", period_ms)?,
            burst: burst.map(|b| narrow("burst", b)).transpose()?,
            fail_mode: Some(if fail_mode == "closed" {
                FailMode::Closed
            } else {
                FailMode::Open
            }),
            chunk: chunk.map(|c| narrow("chunk", c)).transpose()?,
        }))
    }

    /// Checks `cost` units for `key` under policy `name`.
    pub async fn check(&self, name: &str, key: &str, cost: u64) -> Result<Decision, PolicyError> {
        if key.is_empty() || key.len() > 512 {
            return Err(PolicyError::Invalid(
                "key must be 1 to 512 bytes".to_owned(),
            ));
        }
        let entry = self.get(name).await?;
        let decision = entry.limiter.check(key, cost).await?;
        entry.decisions.fetch_add(1, Ordering::Relaxed);
        let outcome = if decision.allowed {
            "allowed"
        } else {
            entry.rejections.fetch_add(1, Ordering::Relaxed);
            "refused"
        };
        metrics::counter!("onephase_limit_decisions_total", "policy" => name.to_owned(), "outcome" => outcome)
            .increment(1);
        Ok(decision)
    }

    /// Defines (or redefines) policy `name` through the API. Returns whether it is new.
    pub async fn define(
        &self,
        name: &str,
        spec: PolicySpec,
        now: &str,
    ) -> Result<bool, PolicyError> {
        check_name(name).map_err(PolicyError::Invalid)?;
        if self.read().get(name).is_some_and(|e| e.source == "config") {
            return Err(PolicyError::FromConfig(name.to_owned()));
        }
        // Spelled out as it is stored, so the copy read back later is the same document.
        let spec = PolicySpec {
            fail_mode: Some(spec.fail_mode.unwrap_or_default()),
            ..spec
        };
        spec.policy()?;
        let existed = self.load(name).await?.is_some();
        let sql = "INSERT INTO onephase_limit_policies (name, algorithm, units, period_ms, burst, fail_mode, created_at, chunk) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE SET \
                   algorithm = excluded.algorithm, units = excluded.units, period_ms = excluded.period_ms, \
                   burst = excluded.burst, fail_mode = excluded.fail_mode, chunk = excluded.chunk";
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        on_store!(self.store.db(), pool => {
            sqlx::query(sql)
                .bind(name)
                .bind(&spec.algorithm)
                .bind(to_i64(spec.limit))
                .bind(to_i64(spec.period_ms))
                .bind(spec.burst.map(to_i64))
                .bind(spec.fail_mode.unwrap_or_default().as_str())
                .bind(now)
                .bind(spec.chunk.map(to_i64))
                .execute(pool)
                .await
                .map(drop)?
        });
        self.install(name, spec)?;
        Ok(!existed)
    }

    /// Removes an API-defined policy.
    pub async fn remove(&self, name: &str) -> Result<(), PolicyError> {
        if self.read().get(name).is_some_and(|e| e.source == "config") {
            return Err(PolicyError::FromConfig(name.to_owned()));
        }
        let sql = "DELETE FROM onephase_limit_policies WHERE name = $1";
        let removed = on_store!(self.store.db(), pool => {
            sqlx::query(sql).bind(name).execute(pool).await?.rows_affected()
        });
        self.write().remove(name);
        if removed == 0 {
            return Err(PolicyError::Unknown(name.to_owned()));
        }
        Ok(())
    }

    /// Every policy: configured ones, then the store's.
    pub async fn list(&self) -> Result<Vec<PolicyView>, PolicyError> {
        let sql = "SELECT name FROM onephase_limit_policies ORDER BY name";
        let names: Vec<String> =
            on_store!(read self.store.db(), pool => sqlx::query_scalar(sql).fetch_all(pool).await?);
        for name in names {
            self.get(&name).await?;
        }
        let store = self.store_kind();
        let mut views: Vec<PolicyView> = self
            .read()
            .iter()
            .map(|(name, e)| PolicyView {
                name: name.clone(),
                source: e.source,
                spec: e.spec.clone(),
                store,
                decisions: e.decisions.load(Ordering::Relaxed),
                rejections: e.rejections.load(Ordering::Relaxed),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(views)
    }
}

impl onephase_core::Classify for PolicyError {
    fn kind(&self) -> onephase_core::ErrorKind {
        use onephase_core::ErrorKind;
        match self {
            Self::Unknown(_) => ErrorKind::NotFound,
            Self::FromConfig(_) => ErrorKind::Conflict,
            Self::Invalid(_) => ErrorKind::InvalidInput,
            Self::Limit(e) => e.kind(),
            Self::Store(e) => onephase_store::classify_sqlx(e),
        }
    }
}

impl From<sqlx::Error> for PolicyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e)
    }
}
